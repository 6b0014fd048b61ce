/*
 * Runtime (Envoy's layered runtime): the types of an immutable runtime
 * snapshot, a key -> value map merged from the bootstrap's layers (static,
 * disk, admin, RTDS), later layers overriding earlier ones.
 */
#ifndef LEGATE_RUNTIME_T_H
#define LEGATE_RUNTIME_T_H

#include <stddef.h>
#include <stdint.h>

/* One value as Envoy's Snapshot::Entry holds it: the raw string (what /runtime
 * shows) and every typed reading that succeeded. */
typedef struct st_lg_runtime_value_t {
    char *raw;
    unsigned has_uint : 1;
    unsigned has_double : 1;
    unsigned has_bool : 1;
    unsigned has_fraction : 1;
    unsigned bool_value : 1;
    uint64_t uint_value;
    double double_value;
    uint32_t numerator, denominator; /* has_fraction: denominator is 100, 10000 or 1000000 */
} lg_runtime_value_t;

typedef struct st_lg_runtime_entry_t {
    char *key;
    lg_runtime_value_t value;
} lg_runtime_entry_t;

/* One layer's content; immutable, refcounted (snapshots share unchanged layers). */
typedef struct st_lg_runtime_layer_t {
    size_t refcnt; /* atomic */
    char *name;
    lg_runtime_entry_t *entries; /* sorted by key, unique */
    size_t n;
} lg_runtime_layer_t;

/* A runtime snapshot: the layers in config order and the merged view. */
typedef struct st_lg_runtime_t {
    size_t refcnt; /* atomic */
    uint64_t generation;
    lg_runtime_layer_t **layers;
    size_t n_layers;
    const lg_runtime_entry_t **merged; /* sorted by key: the entry of the last layer holding it */
    size_t n_merged;
} lg_runtime_t;

#endif
