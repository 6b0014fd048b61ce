/*
 * The server: the config snapshot that workers run on, the workers, and the
 * process lifecycle (start, drain, exit).
 *
 * A snapshot is immutable and refcounted. The control thread builds it (from
 * the bootstrap, then from every accepted xDS update) and posts it to every
 * worker; a worker swaps its pointer between events. A snapshot built from
 * the previous one shares every unchanged compiled object (listener, cluster
 * and route table pointers), so that worker views carry their connection
 * pools over. A connection holds the snapshot it was accepted on through the
 * worker (a worker-local count, no atomics per connection); the worker drops
 * its reference to a replaced snapshot when its last connection on it is gone.
 */
#ifndef LEGATE_SERVER_H
#define LEGATE_SERVER_H

#include <protobuf-c/protobuf-c.h>
#include "legate/hcm-t.h"
#include "legate/listener-t.h"
#include "legate/options.h"
#include "legate/worker-t.h"

typedef struct st_lg_cluster_config_t lg_cluster_config_t;
typedef struct st_lg_xds_dump_t lg_xds_dump_t;
typedef struct st_lg_runtime_t lg_runtime_t;
typedef struct st_lg_ecds_filter_t lg_ecds_filter_t;
typedef struct st_lg_scoped_routes_t lg_scoped_routes_t;

/* The SRDS scopes of one ScopedRoutes.name, compiled (scoped_routes.h) with a
 * key builder of its own: the set and the builder are only touched by the
 * last release of this wrapper, whose count is atomic (snapshots are released
 * on worker threads). */
typedef struct st_lg_snapshot_scopes_t {
    size_t refcnt; /* atomic */
    char *name;    /* ScopedRoutes.name */
    lg_scoped_routes_t *set;
} lg_snapshot_scopes_t;
/* The accept sockets of one listener, one per worker (server.c). */
typedef struct st_lg_listener_socks_t lg_listener_socks_t;
typedef struct st_lg_snapshot_worker_t lg_snapshot_worker_t;

struct st_lg_snapshot_t {
    size_t refcnt; /* atomic: the control thread and one per worker using it */
    uint64_t generation;
    lg_listener_config_t **listeners;
    size_t n_listeners;
    lg_listener_socks_t **listener_socks; /* parallel to listeners; set when published (lg_server_publish) */
    lg_cluster_config_t **clusters;
    size_t n_clusters;
    lg_route_table_t **routes; /* RDS route tables, sorted by name */
    size_t n_routes;
    const ProtobufCMessage *bootstrap; /* as loaded, for /config_dump; owned by the server */
    lg_xds_dump_t *xds;                /* dynamic resources for /config_dump, or NULL */
    lg_runtime_t *runtime;             /* the runtime (layered_runtime) when built, or NULL: defaults */
    lg_ecds_filter_t **ecds;           /* discovered HTTP filter configs (ECDS), sorted by name (xds_ecds.h) */
    size_t n_ecds;
    lg_snapshot_scopes_t **scopes; /* SRDS scope sets, sorted by name */
    size_t n_scopes;
    uint64_t last_updated_wall_us; /* of the static resources */
    /* worker-local use counts and route table pins, a cache line per worker (only that worker touches its slot) */
    lg_snapshot_worker_t *per_worker;
    lg_snapshot_t *_dead_next; /* in the list lg_snapshot_collect() frees */
};

/* An empty snapshot with room for the given numbers of objects; the caller
 * appends references to the arrays, then calls lg_snapshot_seal(). */
lg_snapshot_t *lg_snapshot_new(size_t listeners, size_t clusters, size_t routes);
/* Sorts the route tables for lookups by name. */
void lg_snapshot_seal(lg_snapshot_t *s);
lg_snapshot_t *lg_snapshot_ref(lg_snapshot_t *s);
/* Drops a reference. A worker that drops the last one does not free the
 * snapshot: freeing a large config (10,000 routes or clusters) takes
 * milliseconds and contends with the control thread's allocations, so the
 * snapshot goes on a list that the control thread frees (lg_snapshot_collect). */
void lg_snapshot_unref(lg_snapshot_t *s);
/* Control thread (and once after the workers stopped): frees the snapshots
 * workers dropped. */
void lg_snapshot_collect(void);
/* Per-worker holds (no atomics): a connection takes one for its life. */
void lg_snapshot_hold(lg_worker_t *w, lg_snapshot_t *s);
void lg_snapshot_release(lg_worker_t *w, lg_snapshot_t *s);
/* The holds of worker `w` on `s`. */
size_t lg_snapshot_uses(const lg_snapshot_t *s, const lg_worker_t *w);
/*
 * The route table an HCM uses: its inline table, or for RDS the table of that
 * name in the worker's newest snapshot (new streams on old connections see
 * RDS updates), falling back to `s`, the connection's snapshot. A newer
 * snapshot used on behalf of `s` stays pinned while connections of `s` on
 * this worker have streams (lg_snapshot_sweep_pins). NULL when the table is
 * unknown (not received yet): Envoy answers 404 then.
 */
const lg_route_table_t *lg_snapshot_route_table(lg_snapshot_t *s, const lg_hcm_config_t *hcm);
/* The newest discovered config of the ECDS filter `name`, or NULL. */
lg_ecds_filter_t *lg_snapshot_find_ecds(const lg_snapshot_t *s, const char *name);
/*
 * The route table of a request on an HCM: lg_snapshot_route_table(), or for
 * scoped_routes the table of the scope the request's key selects (inline
 * scopes; SRDS scopes from the worker's newest snapshot, pinned like RDS
 * tables). NULL (Envoy: 404 NR) when no scope matches or its table is unknown.
 */
const lg_route_table_t *lg_snapshot_route_table_for(lg_snapshot_t *s, const lg_hcm_config_t *hcm, const lg_req_head_t *req);
lg_snapshot_scopes_t *lg_snapshot_scopes_new(const char *name, lg_scoped_routes_t *set);
lg_snapshot_scopes_t *lg_snapshot_scopes_ref(lg_snapshot_scopes_t *sc);
void lg_snapshot_scopes_release(lg_snapshot_scopes_t *sc);
/* NULL when the snapshot has no RDS table of that name. */
lg_route_table_t *lg_snapshot_find_routes(const lg_snapshot_t *s, const char *name);
/* Pins: a connection on `s` counts itself busy while it has streams (its
 * first stream starts, its last ends); after each loop iteration the worker
 * sweeps, which drops the pins of every snapshot without busy connections. */
void lg_snapshot_conn_busy(lg_worker_t *w, lg_snapshot_t *s);
void lg_snapshot_conn_idle(lg_worker_t *w, lg_snapshot_t *s);
void lg_snapshot_sweep_pins(lg_worker_t *w);

/* Compiles the static resources of a Bootstrap into a snapshot that borrows
 * the bootstrap; NULL with err naming the field. */
lg_snapshot_t *lg_snapshot_compile_bootstrap(ProtobufCMessage *bootstrap, const lg_options_t *o, lg_error_t *err);

/*
 * Makes `s` the current snapshot (control thread): opens the accept sockets
 * of listeners that are new or moved (a listener with the same name and
 * address as in the current snapshot keeps its sockets), stores the socket
 * sets in s->listener_socks and posts `s` to the workers. On a bind failure
 * nothing changes: returns -1 with err and *failed set to the index of the
 * listener that could not bind. Takes a reference on success.
 */
int lg_server_publish(lg_snapshot_t *s, size_t *failed, lg_error_t *err);
/* The current snapshot with a reference (any thread), or NULL before start. */
lg_snapshot_t *lg_server_current_snapshot(void);
void lg_listener_socks_release(lg_listener_socks_t *socks);

uint64_t lg_server_next_connection_id(void);
/* Envoy's drainClose(), asked by the HCM before each response: whether the
 * connection should drain now (h1 `connection: close` on this response, h2
 * GOAWAY). True while a drain covers it (SIGTERM, /drain_listeners, an LDS
 * update of its chain): always with the immediate strategy, with the gradual
 * one with a probability growing from 0 to 1 over the drain time; and while
 * health checks fail. */
int lg_server_drain_close(const lg_hcm_conn_t *c);
void lg_worker_add_connection(lg_worker_t *w, h2o_linklist_t *link);
void lg_worker_remove_connection(lg_worker_t *w, h2o_linklist_t *link);
/* Access logs (issue: access logs); called when a stream ends. */
void lg_server_log_access(lg_worker_t *w, const lg_listener_config_t *l, const lg_hcm_config_t *hcm, const lg_stream_info_t *info);
/* Whether the listener terminates TLS (x-forwarded-proto). */
int lg_listener_is_tls(const lg_listener_config_t *l);
/* A fast non-cryptographic per-thread random number. */
uint64_t lg_random(void);

/* The worker's view of the clusters of its current snapshot. */
struct st_lg_worker_clusters_t *lg_worker_cluster_view(lg_worker_t *w);

/* Runs the server until it exits; returns the process exit code. */
int lg_server_run(const lg_options_t *o);

#endif
