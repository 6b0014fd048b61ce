/*
 * The xDS client's internals, shared by the files of src/xds/:
 *
 *   manager.c  lg_xds_t: config sources -> transports (muxes) and
 *              subscriptions, the init phases, the poll loop, timeouts
 *   update.c   a response (SotW or delta) -> a list of changes, with the
 *              protocol's checks and the subscription stats
 *   state.c    the resource stores: applying changes of each type through
 *              the static config compilers, dependencies (RDS names of
 *              listeners, EDS names of clusters), warming, and the new
 *              snapshot that shares every unchanged compiled object
 *   file.c     path_config_source: a DiscoveryResponse file, reloaded on change
 *   grpc.c     gRPC streams (ADS and per-type, SotW and delta) over gRPC core
 *   ttl.c      Resource.ttl: expiry removes a resource, heartbeats refresh it
 *   map.c      a string-keyed hash map
 *
 * Everything runs on the control thread.
 */
#ifndef LEGATE_XDS_INTERNAL_H
#define LEGATE_XDS_INTERNAL_H

#include "legate/cluster.h"
#include "legate/preempt.h"
#include "legate/listener.h"
#include "legate/route.h"
#include "legate/stats.h"
#include "legate/strmap.h"
#include "legate/xds.h"
#include "envoy/config/core/v3/config_source.pb-c.h"
#include "envoy/service/discovery/v3/discovery.pb-c.h"

/* ---- arena.c ---- */

/* A protobuf-c allocator whose messages are freed all at once by
 * lg__xds_arena_dispose() (its free is a no-op): for a response and the
 * resources decoded from it, which die together. Pass &a->allocator. */
typedef struct st_lg__xds_arena_t {
    ProtobufCAllocator allocator;
    struct st_lg__xds_arena_chunk_t *chunks;
    size_t used, cap; /* of the current chunk */
} lg__xds_arena_t;

void lg__xds_arena_init(lg__xds_arena_t *a);
void lg__xds_arena_dispose(lg__xds_arena_t *a);

/* ---- subscriptions and transports ---- */

typedef struct st_lg__xds_mux_t lg__xds_mux_t;
typedef struct st_lg__xds_sub_t lg__xds_sub_t;

/* Envoy's SubscriptionStats (cluster_manager.cds.*, listener_manager.lds.*,
 * http.<prefix>.rds.<name>.*). */
#define LG__XDS_SUB_STATS(X)       \
    X(COUNTER, init_fetch_timeout) \
    X(COUNTER, update_attempt)     \
    X(COUNTER, update_failure)     \
    X(COUNTER, update_rejected)    \
    X(COUNTER, update_success)     \
    X(HISTOGRAM, update_duration)  \
    X(GAUGE, update_time)          \
    X(GAUGE, version)              \
    X(TEXT_READOUT, version_text)
#define LG__XDS_SUB_STAT_ENUM(type, name) LG__XDS_SUB_##name,
enum { LG__XDS_SUB_STATS(LG__XDS_SUB_STAT_ENUM) LG__XDS_SUB__COUNT };
/* An EDS dep counts in its clusters' own blocks (LG_CLUSTER_EDS_STATS in cluster-t.h). */
#define LG__XDS_EDS_STAT_ENUM(type, name) LG__XDS_EDS_##name = LG_CLUSTER_STAT_##name,
enum {
    LG_CLUSTER_EDS_STATS(LG__XDS_EDS_STAT_ENUM) LG__XDS_EDS_update_attempt = LG_CLUSTER_STAT_update_attempt,
    LG__XDS_EDS_update_failure = LG_CLUSTER_STAT_update_failure,
};
/* ECDS: extension_config_discovery.http_filter.<name>.: the subscription stats, then Envoy's ECDS counters. */
#define LG__XDS_ECDS_STATS(X) LG__XDS_SUB_STATS(X) X(COUNTER, config_reload) X(COUNTER, config_fail) X(COUNTER, config_conflict)
#define LG__XDS_ECDS_STAT_ENUM(type, name) LG__XDS_ECDS_##name,
enum { LG__XDS_ECDS_STATS(LG__XDS_ECDS_STAT_ENUM) LG__XDS_ECDS__COUNT };
/* SRDS: http.<stat_prefix>.scoped_rds.<ScopedRoutes.name>.: the subscription stats, then
 * Envoy's ScopedRdsStats (update_empty is declared, and Envoy does not count it either). */
#define LG__XDS_SRDS_STATS(X)                                                                        \
    LG__XDS_SUB_STATS(X)                                                                             \
    X(COUNTER, config_reload)                                                                        \
    X(COUNTER, update_empty) X(GAUGE, all_scopes) X(GAUGE, active_scopes) X(GAUGE, on_demand_scopes) \
        X(GAUGE, config_reload_time_ms)
#define LG__XDS_SRDS_STAT_ENUM(type, name) LG__XDS_SRDS_##name,
enum { LG__XDS_SRDS_STATS(LG__XDS_SRDS_STAT_ENUM) LG__XDS_SRDS__COUNT };
#undef LG__XDS_SRDS_STAT_ENUM
#undef LG__XDS_ECDS_STAT_ENUM
#undef LG__XDS_SUB_STAT_ENUM
#undef LG__XDS_EDS_STAT_ENUM

extern const lg_stat_def_t lg__xds_sub_stat_defs[LG__XDS_SUB__COUNT];
extern const lg_stat_def_t lg__xds_ecds_stat_defs[LG__XDS_ECDS__COUNT];
extern const lg_stat_def_t lg__xds_srds_stat_defs[LG__XDS_SRDS__COUNT];

/* Counts `idx` (LG__XDS_SUB_*) in the subscription stats of `sub`: its own block (CDS,
 * LDS, RTDS), or the blocks of the HCMs using it (SRDS), once per block. */
void lg__xds_sub_count(lg__xds_sub_t *sub, size_t idx);
/* `sub` accepted a response of `version`: update_success, version, version_text,
 * update_time, update_duration; SRDS also config_reload, config_reload_time_ms and the
 * scope gauges. */
void lg__xds_sub_accepted(lg__xds_sub_t *sub, const char *version);

/* One resource type on one transport. */
struct st_lg__xds_sub_t {
    lg_xds_t *xds;
    lg__xds_mux_t *mux;
    lg_xds_type_t type;
    unsigned wildcard : 1;    /* LDS and CDS: every resource of the type */
    unsigned started : 1;     /* requests may go out */
    unsigned initialized : 1; /* the first response was handled, or initial_fetch_timeout passed */
    unsigned interest : 1;    /* the names changed: the transport is told after the update */
    uint64_t init_timeout_ms; /* 0: wait forever */
    uint64_t started_ms;
    char *version_info;      /* the last accepted version, "" before */
    lg_stats_block_t *stats; /* CDS and LDS; RDS and EDS count per resource (lg__xds_dep_t) */
};

typedef struct st_lg__xds_mux_ops_t {
    /* The names of `sub` changed, or it started: send what the protocol
     * needs (a new request, a subscribe/unsubscribe, a file read). */
    void (*interest)(lg__xds_mux_t *m, lg__xds_sub_t *sub);
    /* Timers and non-gRPC events; called from every lg_xds_poll(). */
    void (*tick)(lg__xds_mux_t *m, uint64_t now_ms);
    void (*free)(lg__xds_mux_t *m);
} lg__xds_mux_ops_t;

/* A transport: one ADS stream (several types), one per-type stream or one file. */
struct st_lg__xds_mux_t {
    const lg__xds_mux_ops_t *ops;
    lg_xds_t *xds;
    char *key;
    lg__xds_sub_t *subs[LG_XDS__NTYPES];
};

/* An RDS, EDS or SDS resource known by name: wanted by listeners or
 * clusters, and possibly received. */
typedef struct st_lg__xds_dep_t {
    char *name; /* in the entry's allocation */
    lg_xds_type_t type;
    lg__xds_sub_t *sub;     /* where it is requested */
    lg_xds_resource_t *res; /* received, or NULL */
    void *compiled;         /* RDS: lg_route_table_t *; ECDS: lg_ecds_filter_t *; SDS, RTDS, SRDS: the decoded message;
                               EDS: NULL (the ClusterLoadAssignment is decoded from res when a cluster needs it) */
    uint64_t since_ms;      /* when it was first wanted (initial_fetch_timeout) */
    unsigned wanted : 1;
    unsigned timed_out : 1;
    struct st_lg__xds_cluster_t *user; /* EDS: the first cluster using it (set by the dependency pass) */
    lg_stats_block_t **stats;          /* per-resource stats blocks of the users (rds.<name>., cluster.<name>.) */
    size_t n_stats, cap_stats;
    lg_stats_block_t *stats_one; /* `stats` while one slot is enough (most deps have one user) */
    lg_xds_resource_t *failed;   /* last rejected version and why, for /config_dump */
    char *error;
    char **type_urls; /* ECDS: the type URLs its users accept (the first user's) */
    size_t n_type_urls;
} lg__xds_dep_t;

/* A cluster from CDS or from static_resources. */
typedef struct st_lg__xds_cluster_t {
    char *name; /* in the entry's allocation */
    unsigned is_static : 1;
    lg_xds_resource_t *res; /* the latest accepted version (NULL: static) */
    /* What the CDS resource compiled to; EDS clusters: once active has its
     * endpoints, the same object as active (one compiled config per cluster:
     * activate_with_endpoints() derives the next version from it without its hosts). */
    lg_cluster_config_t *compiled;
    uint64_t compiled_gen;
    lg__xds_sub_t *eds_sub;           /* EDS clusters: where their endpoints come from */
    lg__xds_dep_t *eds;               /* set by the dependency pass */
    lg_stats_block_t *eds_stats;      /* EDS clusters: a reference to the block of `compiled` (its EDS stats) */
    struct st_lg__xds_rds_ref_t *sds; /* the SDS secrets its TLS contexts name with an sds_config */
    size_t n_sds;
    lg_cluster_config_t *active; /* what snapshots use; NULL while warming for the first time */
    lg_xds_resource_t *active_res;
    uint64_t active_gen;             /* compiled_gen of what active derives from */
    lg_xds_resource_t *active_cla;   /* the ClusterLoadAssignment applied to active */
    struct st_lg_dns_cluster_t *dns; /* STRICT_DNS, LOGICAL_DNS: the resolver of compiled's targets */
} lg__xds_cluster_t;

/* A resource a listener's HTTP connection manager names (an RDS route
 * config, an ECDS filter config, an SRDS scope set: sub->type tells), or an
 * SDS secret a listener's or cluster's TLS context names with an sds_config. */
typedef struct st_lg__xds_rds_ref_t {
    char *name;
    lg__xds_sub_t *sub;
    lg_stats_block_t *stats; /* http.<stat_prefix>.rds.<name>., sds.<name>., extension_config_discovery.http_filter.<name>. */
    char **type_urls;        /* ECDS: config_discovery.type_urls */
    size_t n_type_urls;
    unsigned no_warm : 1;   /* ECDS: apply_default_config_without_warming */
    lg__xds_sub_t *rds_sub; /* SRDS: where the scopes' route configurations come from (rds_config_source) */
    ProtobufCBinaryData kb; /* SRDS: the serialized ScopeKeyBuilder (each compiled scope set gets its own) */
    /* SRDS: the HCM's stat_prefix, and the http.<stat_prefix>.rds.<name>. blocks of the route
     * configurations its scopes have named (made on first use, kept while the ref lives) */
    char *stat_prefix;
    lg_stats_block_t **scope_rds_stats;
    size_t n_scope_rds_stats;
} lg__xds_rds_ref_t;

/* A listener from LDS or from static_resources. */
typedef struct st_lg__xds_listener_t {
    char *name;
    unsigned is_static : 1;
    lg_xds_resource_t *res;
    lg_listener_config_t *compiled;
    lg__xds_rds_ref_t *rds; /* what its HTTP connection managers name: RDS, ECDS, SRDS */
    size_t n_rds;
    lg__xds_rds_ref_t *sds; /* SDS secrets of its filter chains' TLS contexts */
    size_t n_sds;
    lg_listener_config_t *active; /* warmed; NULL while the first version warms */
    lg_xds_resource_t *active_res;
    lg_listener_config_t *published; /* in the last published snapshot (restored when a bind fails) */
    lg_xds_resource_t *published_res;
    lg_xds_resource_t *failed; /* the last rejected version and why */
    char *error;
} lg__xds_listener_t;

/* One resource of a response, decoded (update.c -> state.c). */
typedef struct st_lg__xds_change_t {
    char *name;
    lg_xds_resource_t *res; /* NULL: removal */
    ProtobufCMessage *msg;  /* the decoded resource */
    char *ttl_version;      /* the Resource wrapper's version (what heartbeats name), or NULL */
} lg__xds_change_t;

struct st_lg_xds_t {
    const Envoy__Config__Bootstrap__V3__Bootstrap *bootstrap;
    const lg_options_t *opts;
    /* stores (state.c); the vectors keep config order, the maps index them */
    lg__xds_cluster_t **clusters;
    size_t n_clusters, cap_clusters;
    lg_strmap_t cluster_map;
    lg__xds_listener_t **listeners;
    size_t n_listeners, cap_listeners;
    lg_strmap_t listener_map;
    lg_strmap_t deps[LG_XDS__NTYPES];
    lg_strmap_t ttls[LG_XDS__NTYPES]; /* ttl.c: resources delivered with a TTL */
    lg_snapshot_t *published;
    /* transports and subscriptions (manager.c) */
    lg__xds_mux_t **muxes;
    size_t n_muxes;
    lg__xds_mux_t *ads;
    lg__xds_sub_t *cds, *lds;
    lg__xds_sub_t **subs;
    size_t n_subs;
    int phase;               /* 0: clusters initializing, 1: listeners initializing, 2: initialized */
    void *cq;                /* grpc_completion_queue *, NULL until a gRPC transport starts */
    lg__xds_rds_ref_t *rtds; /* the RTDS layers' resources (layered_runtime), in layer order */
    size_t n_rtds;
    uint64_t runtime_gen; /* of the runtime in the last built snapshot */
    /* SRDS: the compiled scope set of each ScopedRoutes.name, rebuilt when scopes change (state.c) */
    struct st_lg_snapshot_scopes_t **scope_sets;
    size_t n_scope_sets;
    uint64_t srds_gen, scope_sets_gen;
    lg_stats_block_t *control_plane;
    lg_strbuf_t *errors;      /* where apply-time errors (bind failures) go during an update, or NULL */
    uint64_t update_start_us; /* when the response being applied arrived (lg_now_us): update_duration */
    unsigned dirty : 1;       /* a new snapshot is due */
    unsigned started : 1;
};

/* Milliseconds since the response being applied arrived: Envoy's update_duration. */
static inline uint64_t lg__xds_update_ms(const lg_xds_t *x)
{
    return x->update_start_us != 0 ? (lg_now_us() - x->update_start_us) / 1000 : 0;
}

/* ---- manager.c ---- */

/* The subscription for `type` on the source `cs` (created on first use).
 * `parent` is the subscription of the resource that names cs (for `self`),
 * NULL for the bootstrap. NULL with err when the source is not usable. */
lg__xds_sub_t *lg__xds_subscribe(lg_xds_t *x, lg_xds_type_t type, const Envoy__Config__Core__V3__ConfigSource *cs,
                                 lg__xds_sub_t *parent, lg_error_t *err);
/* Notes that the names of `sub` changed; its transport is told once the update is done. */
void lg__xds_interest(lg__xds_sub_t *sub);
/* The names wanted on a non-wildcard subscription, sorted (free the array, not the names). */
size_t lg__xds_sub_names(lg__xds_sub_t *sub, const char ***names);
/* After an update or a timeout: new snapshot if due, init phases. */
void lg__xds_after_update(lg_xds_t *x);
/* The stream of the mux is up (1) or down (0): control_plane.connected_state. */
void lg__xds_set_connected(lg_xds_t *x, int up);
/* A response's control_plane.identifier: control_plane.identifier. */
void lg__xds_set_identifier(lg_xds_t *x, const char *id);

/* ---- update.c: the entry points of transports ---- */

/* A DiscoveryResponse's resources (or a file's). Returns 0 when accepted;
 * otherwise `nack` holds the error detail (valid CDS and LDS resources of a
 * rejected response are applied all the same, as Envoy does). */
int lg__xds_sotw_update(lg__xds_sub_t *sub, const char *version_info, Google__Protobuf__Any **resources, size_t n,
                        lg_strbuf_t *nack);
int lg__xds_delta_update(lg__xds_sub_t *sub, const char *system_version_info, Envoy__Service__Discovery__V3__Resource **resources,
                         size_t n, char **removed, size_t n_removed, lg_strbuf_t *nack);
/* The transport failed to deliver (stream closed, unreadable file). */
void lg__xds_update_failed(lg__xds_sub_t *sub);

/* ---- state.c ---- */

void lg__xds_state_init(lg_xds_t *x, lg_snapshot_t *initial);
/* Subscribes static EDS clusters and RDS listeners; errors name the bootstrap field. */
int lg__xds_state_static_deps(lg_xds_t *x, lg_error_t *err);
void lg__xds_state_dispose(lg_xds_t *x);
/* Applies decoded changes of one type; errors are appended to `errors`
 * ("name: message", comma separated) and counted per resource. Returns the
 * number of rejected resources. */
size_t lg__xds_apply(lg__xds_sub_t *sub, lg__xds_change_t *changes, size_t n, lg_strbuf_t *errors);
/* The names of the resources of a wildcard subscription that are not static. */
void lg__xds_foreach_dynamic(lg__xds_sub_t *sub, void (*cb)(void *ctx, const char *name), void *ctx);
/* Recomputes dependencies, warming and the subscriptions' names; publishes
 * a new snapshot when anything changed. */
void lg__xds_refresh(lg_xds_t *x);
/* Whether every cluster (phase 0) or listener (phase 1) has warmed. */
int lg__xds_warmed(lg_xds_t *x, lg_xds_type_t type);
/* Marks deps whose initial fetch timed out; returns non-zero if any did. */
int lg__xds_check_timeouts(lg_xds_t *x, uint64_t now_ms);
lg__xds_dep_t *lg__xds_dep_find(lg_xds_t *x, lg_xds_type_t type, const char *name);
/* Whether every RTDS layer has its first version (or timed out). */
int lg__xds_runtime_ready(lg_xds_t *x);

/* Frees RDS or SDS refs and releases their stats blocks. */
void lg__xds_refs_free(lg__xds_rds_ref_t *refs, size_t n);

/* ---- ttl.c ---- */

void lg__xds_ttl_init(lg_xds_t *x);
void lg__xds_ttl_dispose(lg_xds_t *x);
/* After changes of `sub` were applied: a resource with a TTL expires at
 * now + ttl, one without forgets its TTL, a removal forgets it. */
void lg__xds_ttl_track(lg__xds_sub_t *sub, const lg__xds_change_t *changes, size_t n);
/* A heartbeat (a Resource without a body): refreshes the TTL of `name` when
 * `version` is the version it was delivered with. */
void lg__xds_ttl_heartbeat(lg__xds_sub_t *sub, const char *name, const char *version, uint64_t ttl_ms);
/* Removes the resources whose TTL expired (Envoy: as if the server removed
 * them); returns non-zero if any did. */
int lg__xds_ttl_expire(lg_xds_t *x, uint64_t now_ms);

/* ---- sds.c ---- */

/* The SDS secrets (with an sds_config) that a listener's filter chains or a
 * cluster's transport sockets name, subscribed; err names the field. */
int lg__xds_listener_sds(lg_xds_t *x, lg__xds_sub_t *parent, const Envoy__Config__Listener__V3__Listener *m,
                         lg__xds_rds_ref_t **out, size_t *n, lg_error_t *err);
int lg__xds_cluster_sds(lg_xds_t *x, lg__xds_sub_t *parent, const Envoy__Config__Cluster__V3__Cluster *m, lg__xds_rds_ref_t **out,
                        size_t *n, lg_error_t *err);

/* ---- transports ---- */

lg__xds_mux_t *lg__xds_file_mux_new(lg_xds_t *x, const char *path);
/* ads: the bootstrap's ads_config (one stream for every type); otherwise a
 * per-type stream. NULL with err when the config cannot work. */
lg__xds_mux_t *lg__xds_grpc_mux_new(lg_xds_t *x, const Envoy__Config__Core__V3__ApiConfigSource *api, int ads, lg_error_t *err);
/* Drains gRPC completions for up to max_wait_ms. */
void lg__xds_grpc_poll(lg_xds_t *x, uint64_t max_wait_ms);
void lg__xds_grpc_shutdown(lg_xds_t *x);

/* FNV-1a over bytes. */
uint64_t lg__xds_hash(const void *p, size_t n);

#endif
