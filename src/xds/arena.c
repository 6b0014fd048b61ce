/*
 * A protobuf-c allocator for messages that die together: a response and the
 * resources decoded from it. Bump allocation in chunks mapped from the system
 * and unmapped whole, so the transient messages of a 10,000-resource response
 * neither cost a malloc and a free each nor leave holes among the long-lived
 * objects compiled from them (holes that keep the heap's pages resident).
 * Chunks double in size (a big response takes a few mappings) and are
 * populated when mapped: one system call instead of a page fault per page,
 * which costs most on virtual machines.
 */
#include <sys/mman.h>
#include "xds_internal.h"

#define CHUNK_MIN (64 << 10)
#define CHUNK_MAX (4 << 20)
#define ALIGN 16

typedef struct st_lg__xds_arena_chunk_t {
    struct st_lg__xds_arena_chunk_t *next;
    size_t size; /* of the mapping */
} chunk_t;

#define HEADER ((sizeof(chunk_t) + ALIGN - 1) & ~(size_t)(ALIGN - 1))

static void *arena_alloc(void *data, size_t size)
{
    lg__xds_arena_t *a = data;
    size = (size + ALIGN - 1) & ~(size_t)(ALIGN - 1);
    if (a->chunks == NULL || a->cap - a->used < size) {
        size_t len = a->chunks == NULL ? CHUNK_MIN : a->chunks->size < CHUNK_MAX ? a->chunks->size * 2 : CHUNK_MAX;
        if (len < HEADER + size)
            len = (HEADER + size + 4095) & ~(size_t)4095;
        chunk_t *c = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
        if (c == MAP_FAILED)
            return NULL; /* protobuf-c fails the unpack */
        c->next = a->chunks;
        c->size = len;
        a->chunks = c;
        a->used = HEADER;
        a->cap = len;
    }
    void *p = (char *)a->chunks + a->used;
    a->used += size;
    return p;
}

static void arena_free(void *data, void *p)
{
    (void)data;
    (void)p;
}

void lg__xds_arena_init(lg__xds_arena_t *a)
{
    *a = (lg__xds_arena_t){{arena_alloc, arena_free, a}, NULL, 0, 0};
}

void lg__xds_arena_dispose(lg__xds_arena_t *a)
{
    for (chunk_t *c = a->chunks, *next; c != NULL; c = next) {
        next = c->next;
        munmap(c, c->size);
    }
    lg__xds_arena_init(a);
}
