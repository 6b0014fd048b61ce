/*
 * Clusters: compile (control thread), per-worker views and the connection
 * pool request the router uses (worker threads), and the admin /clusters
 * output. Types and ownership rules are in cluster-t.h.
 */
#ifndef LEGATE_CLUSTER_H
#define LEGATE_CLUSTER_H

#include "legate/common.h"
#include "legate/cluster-t.h"
#include "legate/h1-t.h"
#include "envoy/config/cluster/v3/cluster.pb-c.h"
#include "envoy/config/endpoint/v3/endpoint.pb-c.h"

/* ---- configuration (control thread) ---- */

/*
 * Compiles a cluster. Returns a config with one reference, or NULL with err
 * naming the field relative to the cluster
 * ("load_assignment.endpoints[0].lb_endpoints[1].endpoint.address: ...");
 * the caller prefixes the resource ("clusters[name=backend]."). Fields that
 * would change behaviour and are not implemented are errors; fields that are
 * safe to ignore (health checks, outlier detection, metadata ...) are
 * accepted with a warning. EDS clusters start with no hosts.
 */
lg_cluster_config_t *lg_cluster_config_compile(const Envoy__Config__Cluster__V3__Cluster *c, lg_error_t *err);
/* A copy of cfg whose hosts come from `cla` (EDS). Stats, breaker counts and
 * the counters of hosts present in both (same address) carry over. Errors
 * are relative to the ClusterLoadAssignment ("endpoints[0]..."). */
lg_cluster_config_t *lg_cluster_config_with_endpoints(const lg_cluster_config_t *cfg,
                                                      const Envoy__Config__Endpoint__V3__ClusterLoadAssignment *cla,
                                                      lg_error_t *err);
/* Makes a freshly compiled cfg continue the per-host counters of `prev` (the
 * version of the same cluster it replaces), matching hosts by address. The
 * cluster's own counters carry over by themselves (stats blocks are shared
 * by prefix). Call before cfg is published. */
void lg_cluster_config_adopt(lg_cluster_config_t *cfg, const lg_cluster_config_t *prev);
lg_cluster_config_t *lg_cluster_config_addref(lg_cluster_config_t *cfg);
void lg_cluster_config_release(lg_cluster_config_t *cfg);

/* The cluster's stats block (prefix "cluster.<stat_name>."), indexed by
 * LG_CLUSTER_STAT_*. */
static inline lg_stats_block_t *lg_cluster_config_stats(const lg_cluster_config_t *cfg)
{
    return cfg->shared->stats;
}

/* A host's counters ([lg_stats_nworkers + 1][LG_HOST_STAT__COUNT]): writers get them
 * with lg_host_config_stats(), which allocates them on first use (any thread; the
 * first one installs them); readers peek and read NULL as all zero. */
uint64_t *lg__host_config_stats_alloc(const lg_host_config_t *h);
static inline uint64_t *lg_host_config_stats(const lg_host_config_t *h)
{
    uint64_t *s = __atomic_load_n(&h->stats, __ATOMIC_ACQUIRE);
    return __builtin_expect(s != NULL, 1) ? s : lg__host_config_stats_alloc(h);
}
static inline const uint64_t *lg_host_config_stats_peek(const lg_host_config_t *h)
{
    return __atomic_load_n(&h->stats, __ATOMIC_ACQUIRE);
}

/* Builds the response of the admin /clusters page for a set of cluster
 * configs: Envoy's text format, or ?format=json (ClusterStatuses). Per-host
 * counters are summed over the worker rows. Admin thread. */
void lg_clusters_admin_text(lg_strbuf_t *out, lg_cluster_config_t *const *cfgs, size_t n);
void lg_clusters_admin_json(lg_strbuf_t *out, lg_cluster_config_t *const *cfgs, size_t n);

/* ---- load balancers (lb_*.c) ---- */

extern const lg_lb_type_t lg_lb_round_robin;
extern const lg_lb_type_t lg_lb_least_request;
extern const lg_lb_type_t lg_lb_random;

/* A small fast PRNG (xorshift64*); state must be non-zero. */
static inline uint64_t lg_lb_random_next(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1Dull;
}

/* ---- per-worker runtime (worker thread) ---- */

/*
 * Builds worker w's view of clusters cfgs[0..n) (names unique). A cluster
 * whose config pointer is also in `previous` is carried over with its hosts,
 * pools and connections. A new config of a cluster in `previous` (same name)
 * takes over the pools of the hosts it keeps (same address), with their
 * connections, in-flight streams, pending requests and breaker slots, unless
 * the change affects connections (protocol or its options, the TLS context,
 * auto_sni keying, the stats name). Call lg_worker_clusters_free(previous)
 * afterwards: what was not taken over then drains (idle connections close,
 * busy ones close when their streams end).
 */
lg_worker_clusters_t *lg_worker_clusters_new(lg_worker_t *w, lg_cluster_config_t **cfgs, size_t n, lg_worker_clusters_t *previous);
void lg_worker_clusters_free(lg_worker_clusters_t *view);
/*
 * Off the worker: the same view as lg_worker_clusters_new(w, cfgs, n, NULL)
 * for a worker yet to be named: every cluster lazy. The control thread builds
 * it so that a worker applying a CDS update of 10,000 clusters does not spend
 * milliseconds hashing names.
 */
lg_worker_clusters_t *lg_worker_clusters_prepare(lg_cluster_config_t **cfgs, size_t n);
/*
 * Worker w takes a prepared view over from `previous` (its current view, or
 * NULL) with what lg_worker_clusters_new() carries over: the clusters w
 * created. Then `previous` holds only config references, and
 * lg_worker_clusters_free(previous) may run on any thread.
 */
void lg_worker_clusters_adopt(lg_worker_t *w, lg_worker_clusters_t *view, lg_worker_clusters_t *previous);
/* NULL when the view has no cluster of that name. */
lg_worker_cluster_t *lg_worker_clusters_find(const lg_worker_clusters_t *view, const char *name, size_t len);
const char *lg_worker_cluster_name(const lg_worker_cluster_t *c);
const lg_cluster_config_t *lg_worker_cluster_config(const lg_worker_cluster_t *c);
/* Keeps a cluster alive past the view that holds it (a stream in flight). */
void lg_worker_cluster_addref(lg_worker_cluster_t *c);
void lg_worker_cluster_release(lg_worker_cluster_t *c);

/*
 * Envoy's newStream: picks a host with the cluster's load balancer (honouring
 * ctx->excluded), applies the circuit breakers, then reuses a ready
 * connection of the host's pool or queues the request and opens one.
 *
 * Returns NULL when a callback has already fired (an idle connection was
 * ready, no host, overflow), else a handle that stays valid until its
 * callback fires or lg_pool_request_cancel() is called. `downstream_version`
 * (LG_HTTP_11 / LG_HTTP_2) picks the codec for use_downstream_protocol.
 *
 * The stream handed to on_ready counts as an active request (upstream_rq_active,
 * max_requests breaker, host rq_active) until the codec reports it done.
 */
lg_pool_request_t *lg_cluster_request_stream(lg_worker_cluster_t *c, int downstream_version, const lg_lb_context_t *ctx,
                                             const lg_pool_cbs_t *cbs, void *data);
/* Cancels a pending request (upstream_rq_cancelled); no callback fires. */
void lg_pool_request_cancel(lg_pool_request_t *req);

/* The max_retries breaker. Returns 0 (and counts upstream_rq_retry_overflow)
 * when a retry may not start; otherwise the retry holds a slot until
 * lg_cluster_retry_end(). */
int lg_cluster_retry_begin(lg_worker_cluster_t *c);
void lg_cluster_retry_end(lg_worker_cluster_t *c);

/* Increments a cluster counter (LG_CLUSTER_STAT_*) in this worker's row. */
void lg_cluster_stat_inc(lg_worker_cluster_t *c, size_t idx);
/* Records a response from `host` (may be NULL): upstream_rq_<class>xx and
 * upstream_rq_<code> (when code_stats: the router's dynamic_stats),
 * upstream_rq_completed and the host's rq_success / rq_error (5xx). */
void lg_cluster_record_response(lg_worker_cluster_t *c, lg_host_t *host, int status, int code_stats);
/* Records a complete upstream response's time in upstream_rq_time (ms). */
void lg_cluster_record_time(lg_worker_cluster_t *c, uint64_t ms);
/* Increments a host counter (LG_HOST_STAT_*) in this worker's row. */
void lg_host_stat_inc(lg_host_t *h, size_t idx);

static inline const char *lg_host_address(const lg_host_t *h)
{
    return h->config->address;
}
/* A host stays valid while its cluster lives: these ref the cluster. */
void lg_host_addref(lg_host_t *h);
void lg_host_release(lg_host_t *h);

/* ---- raw TCP upstream connections (upstream_tcp.c), for tcp_proxy ---- */

/* One connection to one host, from its connect to its close: Envoy's TCP
 * connection pool without reuse (tcp_proxy never gives a connection back).
 * While it lives it counts in upstream_cx_active and holds a slot of the
 * max_connections breaker. */
typedef struct st_lg_upstream_tcp_t lg_upstream_tcp_t;
typedef struct st_lg_upstream_tcp_cbs_t {
    /* Connected: lg_upstream_tcp_socket(u) is the caller's to read and
     * write (set its `data`); close it only with lg_upstream_tcp_close(). */
    void (*on_connect)(lg_upstream_tcp_t *u, void *data);
    /* The connect failed (LG_POOL_CONNECT_FAILURE), timed out
     * (LG_POOL_CONNECT_TIMEOUT), or succeeded while the max_requests breaker
     * was open (LG_POOL_OVERFLOW); u is freed already. `host` and `detail`
     * (Envoy's transport failure reason) are valid during the call only. */
    void (*on_failure)(void *data, lg_pool_failure_t reason, lg_host_t *host, const char *detail);
} lg_upstream_tcp_cbs_t;

/*
 * Picks a host (honouring ctx->excluded), takes a max_connections and a
 * max_pending_requests slot and starts a non-blocking connect bounded by the
 * cluster's connect_timeout. Returns NULL with *failure set
 * (LG_POOL_NO_HEALTHY_HOST, counting upstream_cx_none_healthy, or
 * LG_POOL_OVERFLOW, counting upstream_cx_overflow or
 * upstream_rq_pending_overflow) when no connect starts; no callback fires then.
 * Otherwise exactly one callback fires, never from inside this call, unless
 * lg_upstream_tcp_close() comes first.
 */
lg_upstream_tcp_t *lg_upstream_tcp_connect(lg_worker_cluster_t *c, const lg_lb_context_t *ctx, const lg_upstream_tcp_cbs_t *cbs,
                                           void *data, lg_pool_failure_t *failure);
/* The connected socket; NULL while connecting. */
h2o_socket_t *lg_upstream_tcp_socket(lg_upstream_tcp_t *u);
lg_host_t *lg_upstream_tcp_host(lg_upstream_tcp_t *u);
/* Adds `rx` bytes read to upstream_cx_rx_bytes_total (the caller counts its
 * reads: libh2o 2.2.5 leaves sock->bytes_read at 0 on plain sockets) and the
 * bytes written since the last call to upstream_cx_tx_bytes_total. */
void lg_upstream_tcp_count_bytes(lg_upstream_tcp_t *u, size_t rx);
/* Closes the socket (a connect in progress is abandoned: no callback fires)
 * and frees u. `local` says who closed it (upstream_cx_destroy_local or
 * _remote). */
void lg_upstream_tcp_close(lg_upstream_tcp_t *u, int local);

/* ---- upstream HTTP/1.1 client connection (h1_client.c) ---- */

/*
 * Wraps a connected socket (taken over: the connection closes it). Response
 * heads are parsed with `lim`; `buffer_limit` bounds unconsumed response
 * bytes before reading stops. A received head stays valid until the stream's
 * on_complete / on_reset returns. `loop` and `lim` outlive the connection.
 */
lg_client_conn_t *lg_h1_client_conn_new(lg_loop_t *loop, h2o_socket_t *sock, const lg_h1_limits_t *lim, uint32_t buffer_limit,
                                        const lg_client_conn_cbs_t *cbs, void *ctx);

#endif
