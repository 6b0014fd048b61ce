#ifndef LEGATE_HTTP_H
#define LEGATE_HTTP_H

#include <sys/types.h>
#include <h2o/string_.h>
#include "legate/http-t.h"

/* Returns the index of the first header named `name` (lower-case) at or after
 * `from`, or -1. */
ssize_t lg_headers_find(const lg_headers_t *h, const char *name, size_t name_len, size_t from);
/* Returns the value of the first header named `name`, or {NULL, 0}. */
h2o_iovec_t lg_headers_get(const lg_headers_t *h, const char *name, size_t name_len);
/* Appends a header; the iovecs are not copied. */
void lg_headers_add(h2o_mem_pool_t *pool, lg_headers_t *h, h2o_iovec_t name, h2o_iovec_t value);
/* Replaces every header named `name` with one header of `value`. */
void lg_headers_set(h2o_mem_pool_t *pool, lg_headers_t *h, h2o_iovec_t name, h2o_iovec_t value);
/* Removes every header named `name`; returns how many were removed. */
size_t lg_headers_remove(lg_headers_t *h, const char *name, size_t name_len);

#define LG_LIT(s) h2o_iovec_init(H2O_STRLIT(s))

/* Writes `v` in decimal to buf (at least 20 bytes, not NUL-terminated); returns the length. */
size_t lg_u64_to_dec(char *buf, uint64_t v);
/* `v` in decimal, allocated from the pool. */
h2o_iovec_t lg_u64_to_dec_pool(h2o_mem_pool_t *pool, uint64_t v);

/* Per-thread caches of per-request objects (streams of the connection manager
 * and of the h1 codecs), so that a request does not go through malloc for
 * them. An object's class fixes its size; lg_http_cache_alloc() returns it
 * zeroed. What a thread keeps is freed when it exits. */
typedef enum en_lg_http_cache_class_t {
    LG_HTTP_CACHE_HCM_STREAM,
    LG_HTTP_CACHE_H1_SERVER_STREAM,
    LG_HTTP_CACHE_H1_CLIENT_STREAM,
    LG_HTTP_CACHE_H1_SERVER_OUT, /* an h1 server connection's output state while it writes */
    LG_HTTP_CACHE_NUM_CLASSES
} lg_http_cache_class_t;
void *lg_http_cache_alloc(lg_http_cache_class_t cls, size_t size);
void lg_http_cache_free(lg_http_cache_class_t cls, void *p);
/* Frees what this thread's caches keep beyond `keep` objects per class (after a burst). */
void lg_http_cache_trim(size_t keep);

#endif
