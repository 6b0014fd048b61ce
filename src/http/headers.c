#include <sys/types.h>
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
    size_t w = 0, n = h->size;
    for (size_t r = 0; r != n; ++r)
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
