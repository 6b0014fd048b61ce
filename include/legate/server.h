/*
 * The server: the config snapshot that workers run on, the workers, and the
 * process lifecycle (start, drain, exit).
 *
 * A snapshot is immutable and refcounted. The control thread builds it and
 * posts it to every worker; a worker swaps its pointer between events. A
 * connection holds its snapshot through the worker (a worker-local count,
 * no atomics per connection); the worker drops its reference to a replaced
 * snapshot when its last connection on it is gone.
 */
#ifndef LEGATE_SERVER_H
#define LEGATE_SERVER_H

#include <protobuf-c/protobuf-c.h>
#include "legate/hcm-t.h"
#include "legate/listener-t.h"
#include "legate/options.h"
#include "legate/worker-t.h"

typedef struct st_lg_cluster_config_t lg_cluster_config_t;

struct st_lg_snapshot_t {
    size_t refcnt; /* atomic: the control thread and one per worker using it */
    uint64_t generation;
    lg_listener_config_t **listeners;
    size_t n_listeners;
    lg_cluster_config_t **clusters;
    size_t n_clusters;
    ProtobufCMessage *bootstrap; /* as loaded, for /config_dump */
    uint64_t last_updated_wall_us;
    /* worker-local use counts, one per worker (only that worker touches its slot) */
    size_t *worker_uses;
};

lg_snapshot_t *lg_snapshot_ref(lg_snapshot_t *s);
void lg_snapshot_unref(lg_snapshot_t *s);
/* Per-worker holds (no atomics): a connection takes one for its life. */
void lg_snapshot_hold(lg_worker_t *w, lg_snapshot_t *s);
void lg_snapshot_release(lg_worker_t *w, lg_snapshot_t *s);
/* The route table an HCM uses in this snapshot (inline now; RDS later). */
const lg_route_table_t *lg_snapshot_route_table(lg_snapshot_t *s, const lg_hcm_config_t *hcm);

/* Compiles a Bootstrap into a snapshot; NULL with err naming the field. */
lg_snapshot_t *lg_snapshot_compile_bootstrap(ProtobufCMessage *bootstrap, const lg_options_t *o, lg_error_t *err);

uint64_t lg_server_next_connection_id(void);
void lg_worker_add_connection(lg_worker_t *w, h2o_linklist_t *link);
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
