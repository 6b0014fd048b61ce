/*
 * A string-keyed open-addressing hash map of entries that carry their own
 * key (linear probing, backward-shift deletion): xDS state on the control
 * thread, and listeners' server-name indexes (built once, then read).
 */
#include <string.h>
#include "legate/common.h"
#include "legate/strmap.h"

static uint64_t hash_str(const char *s)
{
    return lg_fnv1a(LG_FNV1A_INIT, s, strlen(s));
}

void lg_strmap_init(lg_strmap_t *m, const char *(*key_of)(const void *v))
{
    *m = (lg_strmap_t){NULL, 0, 0, key_of};
}

void lg_strmap_dispose(lg_strmap_t *m)
{
    free(m->slots);
    m->slots = NULL;
    m->mask = m->n = 0;
}

static size_t find_slot(const lg_strmap_t *m, const char *key)
{
    size_t i = hash_str(key) & m->mask;
    while (m->slots[i] != NULL && strcmp(m->key_of(m->slots[i]), key) != 0)
        i = (i + 1) & m->mask;
    return i;
}

void *lg_strmap_get(const lg_strmap_t *m, const char *key)
{
    return m->slots != NULL ? m->slots[find_slot(m, key)] : NULL;
}

static void grow(lg_strmap_t *m)
{
    void **old = m->slots;
    size_t old_cap = old != NULL ? m->mask + 1 : 0, cap = old_cap ? old_cap * 2 : 16;
    m->slots = lg_calloc(cap, sizeof(*m->slots));
    m->mask = cap - 1;
    for (size_t i = 0; i != old_cap; ++i)
        if (old[i] != NULL)
            m->slots[find_slot(m, m->key_of(old[i]))] = old[i];
    free(old);
}

void *lg_strmap_put(lg_strmap_t *m, void *v)
{
    if (m->slots == NULL || (m->n + 1) * 4 > (m->mask + 1) * 3)
        grow(m);
    size_t i = find_slot(m, m->key_of(v));
    void *prev = m->slots[i];
    m->slots[i] = v;
    if (prev == NULL)
        ++m->n;
    return prev;
}

void *lg_strmap_del(lg_strmap_t *m, const char *key)
{
    if (m->slots == NULL)
        return NULL;
    size_t i = find_slot(m, key);
    void *v = m->slots[i];
    if (v == NULL)
        return NULL;
    m->slots[i] = NULL;
    --m->n;
    /* backward shift: re-place the rest of the cluster */
    for (size_t j = (i + 1) & m->mask; m->slots[j] != NULL; j = (j + 1) & m->mask) {
        void *e = m->slots[j];
        m->slots[j] = NULL;
        m->slots[find_slot(m, m->key_of(e))] = e;
    }
    return v;
}
