/*
 * xDS: the types shared by the xDS client (src/xds/) and the readers of what
 * it received (/config_dump).
 *
 * Resource records are immutable and refcounted: the control thread creates
 * them when a response is accepted, and the dump information attached to
 * every snapshot shares them with the admin thread.
 */
#ifndef LEGATE_XDS_T_H
#define LEGATE_XDS_T_H

#include <stddef.h>
#include <stdint.h>
#include <protobuf-c/protobuf-c.h>

/* The resource types, in the order Envoy subscribes to them on ADS (then
 * RTDS: Runtime, ECDS: TypedExtensionConfig, SRDS: ScopedRouteConfiguration). */
typedef enum en_lg_xds_type_t {
    LG_XDS_CDS,
    LG_XDS_EDS,
    LG_XDS_LDS,
    LG_XDS_RDS,
    LG_XDS_SDS,
    LG_XDS_RTDS,
    LG_XDS_ECDS,
    LG_XDS_SRDS,
    LG_XDS__NTYPES
} lg_xds_type_t;

/* One version of one resource as the control plane sent it. */
typedef struct st_lg_xds_resource_t {
    size_t refcnt; /* atomic */
    lg_xds_type_t type;
    char *name;
    char *version;                 /* the response's version_info (SotW) or the resource's version (delta) */
    uint64_t last_updated_wall_us; /* when it was accepted */
    ProtobufCBinaryData bytes;     /* the serialized resource (the value of its Any) */
    uint64_t hash;                 /* of bytes: an identical push is recognised by it */
    uint64_t ttl_ms;               /* Resource.ttl, 0 = none */
} lg_xds_resource_t;

/* What /config_dump shows of one named resource. */
typedef struct st_lg_xds_dump_item_t {
    char *name;
    lg_xds_resource_t *active;  /* in use, or NULL */
    lg_xds_resource_t *warming; /* accepted, waiting for its dependencies, or NULL */
    lg_xds_resource_t *failed;  /* the last rejected version (error_state), or NULL */
    char *error;                /* why `failed` was rejected */
} lg_xds_dump_item_t;

/* The dynamic part of a snapshot's config, for /config_dump. Immutable. */
typedef struct st_lg_xds_dump_t {
    size_t refcnt;                      /* atomic */
    char *version_info[LG_XDS__NTYPES]; /* the last accepted version of each type ("" = none) */
    lg_xds_dump_item_t *items[LG_XDS__NTYPES];
    size_t n_items[LG_XDS__NTYPES];
} lg_xds_dump_t;

typedef struct st_lg_xds_t lg_xds_t;

#endif
