/*
 * Types of the proto3 JSON mapping (legate/pbjson.h): the parsed document
 * tree and the per-field facts the mapping keeps beside protobuf-c's descriptors.
 */
#ifndef LEGATE_PBJSON_T_H
#define LEGATE_PBJSON_T_H

#include <stddef.h>
#include <protobuf-c/protobuf-c.h>

/* ---- document tree ---- */

typedef enum en_lg_node_type_t {
    LG_NODE_SCALAR,
    LG_NODE_MAP,
    LG_NODE_SEQ,
} lg_node_type_t;

/* How a scalar was written. A plain scalar is typed by its text (YAML 1.1 as
 * yaml-cpp reads it: `true`, `yes`, `0x10`, `.inf`, `~`); a quoted one (or a
 * block scalar, or one tagged `!!str`) is always a string. */
typedef enum en_lg_scalar_style_t {
    LG_SCALAR_PLAIN,
    LG_SCALAR_QUOTED,
} lg_scalar_style_t;

typedef struct st_lg_node_chunk_t lg_node_chunk_t;

/* The document a node came from, shared by its nodes: its name ("" when it has
 * none) and the arena its nodes and their arrays live in, freed with the last
 * node (a parsed tree is freed as a whole, so nothing is freed node by node and
 * the memory goes back to the system at once). */
typedef struct st_lg_node_source_t {
    unsigned refcnt;
    lg_node_chunk_t *chunks;
    char *cur, *end; /* free space in the newest chunk */
    char name[1];
} lg_node_source_t;

typedef struct st_lg_node_t lg_node_t;

typedef struct st_lg_node_pair_t {
    lg_node_t *key; /* always a scalar */
    lg_node_t *value;
} lg_node_pair_t;

/* A node of a parsed document. Nodes are refcounted because YAML aliases
 * share the anchored node; treat a node with refcnt > 1 as immutable.
 * `weight` is the number of nodes under this one with aliases expanded (it
 * bounds the work of decoding it). */
struct st_lg_node_t {
    lg_node_type_t type;
    unsigned line; /* 1-based */
    unsigned refcnt;
    unsigned _heap_items; /* the pairs/items array is malloc'ed, not in the source's arena */
    size_t weight;
    lg_node_source_t *source; /* NULL when the document has no name */
    union {
        struct {
            char *str; /* NUL-terminated; may contain NULs when quoted with escapes */
            size_t len;
            lg_scalar_style_t style;
        } scalar;
        struct {
            lg_node_pair_t *pairs;
            size_t n;
        } map;
        struct {
            lg_node_t **items;
            size_t n;
        } seq;
    };
};

/* What the JSON mapping knows about one field beyond protobuf-c's descriptor. */
typedef struct st_lg_pbfield_t {
    const ProtobufCFieldDescriptor *fd;
    const char *name;      /* the proto field name ("base" for Runtime.base_layer) */
    const char *json_name; /* lowerCamelCase */
    unsigned is_map : 1;   /* a map<K,V> field (repeated *Entry messages) */
} lg_pbfield_t;

#endif
