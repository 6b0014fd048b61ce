#ifndef LEGATE_STRMAP_H
#define LEGATE_STRMAP_H

#include <stddef.h>

/* A string-keyed open-addressing hash map of entries that carry their own key
 * (src/core/strmap.c). One writer; lookups need no lock once it stops changing. */
typedef struct st_lg_strmap_t {
    void **slots;
    size_t mask, n;
    const char *(*key_of)(const void *v);
} lg_strmap_t;

void lg_strmap_init(lg_strmap_t *m, const char *(*key_of)(const void *v));
void lg_strmap_dispose(lg_strmap_t *m);
void *lg_strmap_get(const lg_strmap_t *m, const char *key);
/* Inserts v, returning the entry it replaced (same key) or NULL. */
void *lg_strmap_put(lg_strmap_t *m, void *v);
/* Removes and returns the entry of that key, or NULL. */
void *lg_strmap_del(lg_strmap_t *m, const char *key);

#endif
