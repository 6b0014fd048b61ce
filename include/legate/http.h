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

#endif
