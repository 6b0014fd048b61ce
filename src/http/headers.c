#include <pthread.h>
#include <stdlib.h>
#include <sys/types.h>
#include "legate/common.h"
#include "legate/http.h"

ssize_t lg_headers_find(const lg_headers_t *h, const char *name, size_t name_len, size_t from)
{
    for (size_t i = from; i < h->size; ++i)
        if (h2o_memis(h->entries[i].name.base, h->entries[i].name.len, name, name_len))
            return (ssize_t)i;
    return -1;
}

h2o_iovec_t lg_headers_get(const lg_headers_t *h, const char *name, size_t name_len)
{
    ssize_t i = lg_headers_find(h, name, name_len, 0);
    return i < 0 ? h2o_iovec_init(NULL, 0) : h->entries[i].value;
}

void lg_headers_add(h2o_mem_pool_t *pool, lg_headers_t *h, h2o_iovec_t name, h2o_iovec_t value)
{
    h2o_vector_reserve(pool, h, h->size + 1);
    h->entries[h->size++] = (lg_header_t){name, value};
}

size_t lg_headers_remove(lg_headers_t *h, const char *name, size_t name_len)
{
    ssize_t first = lg_headers_find(h, name, name_len, 0);
    if (first < 0)
        return 0; /* the common case: nothing moves */
    size_t w = (size_t)first, n = h->size;
    for (size_t r = w + 1; r != n; ++r)
        if (!h2o_memis(h->entries[r].name.base, h->entries[r].name.len, name, name_len))
            h->entries[w++] = h->entries[r];
    h->size = w;
    return n - w;
}

void lg_headers_set(h2o_mem_pool_t *pool, lg_headers_t *h, h2o_iovec_t name, h2o_iovec_t value)
{
    lg_headers_remove(h, name.base, name.len);
    lg_headers_add(pool, h, name, value);
}

size_t lg_u64_to_dec(char *buf, uint64_t v)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[sizeof(tmp) - ++n] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    memcpy(buf, tmp + sizeof(tmp) - n, n);
    return n;
}

h2o_iovec_t lg_u64_to_dec_pool(h2o_mem_pool_t *pool, uint64_t v)
{
    char *p = h2o_mem_alloc_pool(pool, 20);
    return h2o_iovec_init(p, lg_u64_to_dec(p, v));
}

/* ---- per-thread object caches ---- */

#define CACHE_MAX 256 /* objects kept per class and thread */

typedef struct st_cache_obj_t {
    struct st_cache_obj_t *next;
} cache_obj_t;

typedef struct st_cache_t {
    cache_obj_t *head;
    unsigned count;
} cache_t;

static __thread cache_t caches[LG_HTTP_CACHE_NUM_CLASSES];
static __thread int cache_registered;
static pthread_key_t cache_key;
static pthread_once_t cache_once = PTHREAD_ONCE_INIT;

static void cache_thread_exit(void *arg)
{
    cache_t *c = arg;
    for (size_t i = 0; i != LG_HTTP_CACHE_NUM_CLASSES; ++i) {
        while (c[i].head != NULL) {
            cache_obj_t *o = c[i].head;
            c[i].head = o->next;
            free(o);
        }
        c[i].count = 0;
    }
}

static void cache_key_init(void)
{
    pthread_key_create(&cache_key, cache_thread_exit);
}

void *lg_http_cache_alloc(lg_http_cache_class_t cls, size_t size)
{
    cache_t *c = caches + cls;
    cache_obj_t *o = c->head;
    if (o == NULL)
        return lg_calloc(1, size < sizeof(cache_obj_t) ? sizeof(cache_obj_t) : size);
    c->head = o->next;
    --c->count;
    memset(o, 0, size);
    return o;
}

/* Frees what this thread keeps beyond `keep` objects per class (after a burst). */
void lg_http_cache_trim(size_t keep)
{
    for (size_t i = 0; i != LG_HTTP_CACHE_NUM_CLASSES; ++i) {
        cache_t *c = caches + i;
        while (c->count > keep) {
            cache_obj_t *o = c->head;
            c->head = o->next;
            --c->count;
            free(o);
        }
    }
}

void lg_http_cache_free(lg_http_cache_class_t cls, void *p)
{
    cache_t *c = caches + cls;
    if (p == NULL)
        return;
    if (c->count == CACHE_MAX) {
        free(p);
        return;
    }
    if (!cache_registered) {
        /* the key's destructor frees what this thread keeps when it exits */
        pthread_once(&cache_once, cache_key_init);
        pthread_setspecific(cache_key, caches);
        cache_registered = 1;
    }
    cache_obj_t *o = p;
    o->next = c->head;
    c->head = o;
    ++c->count;
}
