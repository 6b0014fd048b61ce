/*
 * Upstream clusters: the immutable configuration compiled from
 * envoy.config.cluster.v3.Cluster (shared by every worker), and each
 * worker's runtime view of it (hosts, load balancer state, connection
 * pools). See cluster.h for the functions and their contracts.
 *
 * Ownership at a glance:
 *  - lg_cluster_config_t: refcounted, immutable after compile except for the
 *    counters reached through it (stats block rows, per-host stat rows,
 *    circuit breaker resource counts), which are written with atomics or by
 *    one worker per row.
 *  - lg_worker_clusters_t: one per worker per config snapshot; it refers to
 *    lg_worker_cluster_t objects that may be carried over into the next view.
 *  - lg_worker_cluster_t: refcounted by views, connections, pending pool
 *    requests and lg_host_addref() holders; it owns its lg_host_t array and
 *    their connection pools.
 */
#ifndef LEGATE_CLUSTER_T_H
#define LEGATE_CLUSTER_T_H

#include <stdint.h>
#include <sys/socket.h>
#include <h2o/linklist.h>
#include "legate/codec-t.h"
#include "legate/h1-t.h"
#include "legate/worker-t.h"

typedef struct st_lg_stats_block_t lg_stats_block_t;

typedef enum en_lg_cluster_discovery_t {
    LG_CLUSTER_STATIC,
    LG_CLUSTER_EDS,         /* hosts come from lg_cluster_config_with_endpoints() */
    LG_CLUSTER_STRICT_DNS,  /* hosts: every address of every target (dns.h), the same way */
    LG_CLUSTER_LOGICAL_DNS, /* one host: the first address of the single target */
} lg_cluster_discovery_t;

/* Which codec upstream connections speak. */
typedef enum en_lg_upstream_protocol_t {
    LG_UPSTREAM_HTTP1,
    LG_UPSTREAM_HTTP2,
    LG_UPSTREAM_USE_DOWNSTREAM, /* HTTP/2 when the downstream request is HTTP/2, else HTTP/1.1 */
    LG_UPSTREAM_AUTO,           /* auto_config: ALPN picks h2 or http/1.1 over TLS; HTTP/1.1 in cleartext */
} lg_upstream_protocol_t;

/* Circuit breaker thresholds (CircuitBreakers.Thresholds), Envoy's defaults
 * 1024/1024/1024/3. */
typedef struct st_lg_cb_thresholds_t {
    uint32_t max_connections;
    uint32_t max_pending_requests;
    uint32_t max_requests;
    uint32_t max_retries;
} lg_cb_thresholds_t;

/* What the thresholds are compared against: Envoy's ResourceManager, shared
 * by all workers (updated with __atomic builtins). */
typedef struct st_lg_cb_resources_t {
    uint64_t connections;
    uint64_t pending_requests;
    uint64_t requests;
    uint64_t retries;
} lg_cb_resources_t;

/* Per-host counters shown by /clusters, in the order it prints them. Each
 * host has one row per worker; a worker writes only its own row. cx_active
 * and rq_active are gauges. */
#define LG_HOST_STATS(X) \
    X(cx_active) X(cx_connect_fail) X(cx_total) X(rq_active) X(rq_error) X(rq_success) X(rq_timeout) X(rq_total)
#define LG__HOST_STAT_ENUM(n) LG_HOST_STAT_##n,
enum { LG_HOST_STATS(LG__HOST_STAT_ENUM) LG_HOST_STAT__COUNT };
#undef LG__HOST_STAT_ENUM

/* One endpoint of a cluster, as configured. Immutable except for `stats`
 * (lg_host_config_stats() allocates it on the first write: most hosts of a
 * large config never see a request). */
typedef struct st_lg_host_config_t {
    const char *address; /* printed form: "127.0.0.1:8080", "[::1]:80", "/path/to/socket" */
    const struct sockaddr *sa;
    socklen_t salen;
    uint32_t weight;       /* load_balancing_weight, default 1 */
    uint8_t health_status; /* envoy.config.core.v3.HealthStatus */
    uint8_t healthy;       /* usable outside panic mode */
    const char *hostname;  /* Endpoint.hostname, "" when unset */
    uint64_t *stats;       /* [lg_stats_nworkers + 1][LG_HOST_STAT__COUNT] (the last row: control), or NULL */
} lg_host_config_t;

/* Counters and gauges of a cluster (block prefix "cluster.<stat_name>."),
 * indexed by LG_CLUSTER_STAT_*. X(type, name) entries are named `name`,
 * XN(type, ident, "name") entries carry Envoy's dotted name. The block is
 * split (lg_stats_block_opts_t.control_from): the stats up to
 * lb_healthy_panic are written by workers in their rows (gauges as deltas);
 * the ones from membership_healthy on only by the control thread, in the
 * control row. update_attempt ... version are Envoy's config update stats, which
 * every cluster lists (EDS and DNS clusters count them). The last
 * LG_CLUSTER_EDS_STAT__COUNT stats are those of the EDS subscription (Envoy's
 * SubscriptionStats in the cluster's scope) that only EDS clusters list (the
 * block's hidden tail, lg_stats_block_list_tail). The block
 * also counts upstream_rq_<code> and upstream_rq_<class>xx
 * (lg_stats_block_code), which the router increments through
 * lg_cluster_record_response(). */
#define LG_CLUSTER_STATS(X, XN)                                                                     \
    X(COUNTER, upstream_cx_total)                                                                   \
    X(GAUGE, upstream_cx_active)                                                                    \
    X(COUNTER, upstream_cx_http1_total)                                                             \
    X(COUNTER, upstream_cx_http2_total)                                                             \
    X(COUNTER, upstream_cx_connect_fail)                                                            \
    X(COUNTER, upstream_cx_connect_timeout)                                                         \
    X(COUNTER, upstream_cx_connect_attempts_exceeded)                                               \
    X(COUNTER, upstream_cx_close_notify)                                                            \
    X(COUNTER, upstream_cx_idle_timeout)                                                            \
    X(COUNTER, upstream_cx_destroy)                                                                 \
    X(COUNTER, upstream_cx_destroy_local)                                                           \
    X(COUNTER, upstream_cx_destroy_remote)                                                          \
    X(COUNTER, upstream_cx_destroy_with_active_rq)                                                  \
    X(COUNTER, upstream_cx_destroy_local_with_active_rq)                                            \
    X(COUNTER, upstream_cx_destroy_remote_with_active_rq)                                           \
    X(COUNTER, upstream_cx_overflow)                                                                \
    X(COUNTER, upstream_cx_max_requests)                                                            \
    X(COUNTER, upstream_cx_none_healthy)                                                            \
    X(COUNTER, upstream_cx_protocol_error)                                                          \
    X(COUNTER, upstream_cx_rx_bytes_total)                                                          \
    X(COUNTER, upstream_cx_tx_bytes_total)                                                          \
    X(HISTOGRAM, upstream_cx_connect_ms)                                                            \
    X(HISTOGRAM, upstream_cx_length_ms)                                                             \
    X(COUNTER, upstream_rq_total)                                                                   \
    X(GAUGE, upstream_rq_active)                                                                    \
    X(COUNTER, upstream_rq_completed)                                                               \
    X(HISTOGRAM, upstream_rq_time)                                                                  \
    X(COUNTER, upstream_rq_pending_total)                                                           \
    X(GAUGE, upstream_rq_pending_active)                                                            \
    X(COUNTER, upstream_rq_pending_overflow)                                                        \
    X(COUNTER, upstream_rq_pending_failure_eject)                                                   \
    X(COUNTER, upstream_rq_cancelled)                                                               \
    X(COUNTER, upstream_rq_timeout)                                                                 \
    X(COUNTER, upstream_rq_per_try_timeout)                                                         \
    X(COUNTER, upstream_rq_per_try_idle_timeout)                                                    \
    X(COUNTER, upstream_rq_retry)                                                                   \
    X(COUNTER, upstream_rq_retry_success)                                                           \
    X(COUNTER, upstream_rq_retry_overflow)                                                          \
    X(COUNTER, upstream_rq_retry_limit_exceeded)                                                    \
    X(COUNTER, upstream_rq_retry_backoff_exponential)                                               \
    X(COUNTER, upstream_rq_rx_reset)                                                                \
    X(COUNTER, upstream_rq_tx_reset)                                                                \
    XN(GAUGE, circuit_breakers_default_cx_open, "circuit_breakers.default.cx_open")                 \
    XN(GAUGE, circuit_breakers_default_rq_pending_open, "circuit_breakers.default.rq_pending_open") \
    XN(GAUGE, circuit_breakers_default_rq_open, "circuit_breakers.default.rq_open")                 \
    XN(GAUGE, circuit_breakers_default_rq_retry_open, "circuit_breakers.default.rq_retry_open")     \
    X(COUNTER, lb_healthy_panic)                                                                    \
    X(COUNTER, retry_or_shadow_abandoned)                                                           \
    LG_CLUSTER_STATS_AT_ZERO(X, XN)                                                                 \
    X(GAUGE, membership_healthy)                                                                    \
    X(GAUGE, membership_degraded)                                                                   \
    X(GAUGE, membership_excluded)                                                                   \
    X(GAUGE, membership_total)                                                                      \
    X(COUNTER, membership_change)                                                                   \
    X(GAUGE, max_host_weight)                                                                       \
    X(COUNTER, update_attempt)                                                                      \
    X(COUNTER, update_success)                                                                      \
    X(COUNTER, update_failure)                                                                      \
    X(COUNTER, update_empty)                                                                        \
    X(COUNTER, update_no_rebuild)                                                                   \
    X(GAUGE, version)                                                                               \
    X(GAUGE, warming_state)                                                                         \
    X(COUNTER, assignment_stale)                                                                    \
    X(COUNTER, assignment_timeout_received)                                                         \
    X(COUNTER, assignment_use_cached)                                                               \
    LG_CLUSTER_EDS_STATS(X)

/* Stats of every Envoy cluster (ALL_CLUSTER_TRAFFIC_STATS, ALL_CLUSTER_LB_STATS,
 * the circuit breakers' gauges) for what Legate does not do: HTTP/3 and 0-RTT,
 * zone-aware routing and subsets (refused at config), ORIGINAL_DST and
 * upstream_bind_config (refused), connection pool limits, maximum connection and
 * stream durations on clusters (refused), internal redirects and rate-limited
 * retry back-off (refused), maintenance mode, HIGH priority routing. They are
 * listed, as Envoy lists them, so that dashboards and alerts find them; nothing
 * moves them. Not counted yet although Legate does the thing: the flow control
 * counts (reads are paused and resumed, uncounted) and the buffered-byte gauges. */
#define LG_CLUSTER_STATS_AT_ZERO(X, XN)                                                       \
    X(COUNTER, bind_errors)                                                                   \
    X(COUNTER, original_dst_host_invalid)                                                     \
    X(COUNTER, upstream_cx_connect_with_0_rtt)                                                \
    X(COUNTER, upstream_cx_http3_total)                                                       \
    X(COUNTER, upstream_cx_max_duration_reached)                                              \
    X(COUNTER, upstream_cx_pool_overflow)                                                     \
    X(GAUGE, upstream_cx_rx_bytes_buffered)                                                   \
    X(GAUGE, upstream_cx_tx_bytes_buffered)                                                   \
    X(COUNTER, upstream_flow_control_backed_up_total)                                         \
    X(COUNTER, upstream_flow_control_drained_total)                                           \
    X(COUNTER, upstream_flow_control_paused_reading_total)                                    \
    X(COUNTER, upstream_flow_control_resumed_reading_total)                                   \
    X(COUNTER, upstream_http3_broken)                                                         \
    X(COUNTER, upstream_internal_redirect_failed_total)                                       \
    X(COUNTER, upstream_internal_redirect_succeeded_total)                                    \
    X(COUNTER, upstream_rq_0rtt)                                                              \
    X(COUNTER, upstream_rq_maintenance_mode)                                                  \
    X(COUNTER, upstream_rq_max_duration_reached)                                              \
    X(COUNTER, upstream_rq_retry_backoff_ratelimited)                                         \
    X(COUNTER, lb_local_cluster_not_ok)                                                       \
    X(COUNTER, lb_recalculate_zone_structures)                                                \
    X(COUNTER, lb_subsets_created)                                                            \
    X(COUNTER, lb_subsets_fallback)                                                           \
    X(COUNTER, lb_subsets_fallback_panic)                                                     \
    X(COUNTER, lb_subsets_removed)                                                            \
    X(COUNTER, lb_subsets_selected)                                                           \
    X(GAUGE, lb_subsets_active)                                                               \
    X(COUNTER, lb_zone_cluster_too_small)                                                     \
    X(COUNTER, lb_zone_no_capacity_left)                                                      \
    X(COUNTER, lb_zone_number_differs)                                                        \
    X(COUNTER, lb_zone_routing_all_directly)                                                  \
    X(COUNTER, lb_zone_routing_cross_zone)                                                    \
    X(COUNTER, lb_zone_routing_sampled)                                                       \
    XN(GAUGE, circuit_breakers_default_cx_pool_open, "circuit_breakers.default.cx_pool_open") \
    XN(GAUGE, circuit_breakers_high_cx_open, "circuit_breakers.high.cx_open")                 \
    XN(GAUGE, circuit_breakers_high_cx_pool_open, "circuit_breakers.high.cx_pool_open")       \
    XN(GAUGE, circuit_breakers_high_rq_pending_open, "circuit_breakers.high.rq_pending_open") \
    XN(GAUGE, circuit_breakers_high_rq_open, "circuit_breakers.high.rq_open")                 \
    XN(GAUGE, circuit_breakers_high_rq_retry_open, "circuit_breakers.high.rq_retry_open")

/* The EDS subscription's stats that the other clusters do not list. */
#define LG_CLUSTER_EDS_STATS(X) X(COUNTER, update_rejected) X(COUNTER, init_fetch_timeout)

#define LG__CLUSTER_STAT_ENUM(type, name) LG_CLUSTER_STAT_##name,
#define LG__CLUSTER_STAT_ENUM_N(type, name, str) LG_CLUSTER_STAT_##name,
#define LG__CLUSTER_STAT_ONE(type, name) +1
enum { LG_CLUSTER_STATS(LG__CLUSTER_STAT_ENUM, LG__CLUSTER_STAT_ENUM_N) LG_CLUSTER_STAT__COUNT };
enum {
    /* the first stat of the control row */
    LG_CLUSTER_STAT__CONTROL_FROM = LG_CLUSTER_STAT_membership_healthy,
    LG_CLUSTER_EDS_STAT__COUNT = 0 LG_CLUSTER_EDS_STATS(LG__CLUSTER_STAT_ONE),
};
#undef LG__CLUSTER_STAT_ENUM
#undef LG__CLUSTER_STAT_ENUM_N
#undef LG__CLUSTER_STAT_ONE

/* Compiled cluster. Immutable after compile; see the file comment for the
 * counters it leads to. */
typedef struct st_lg_cluster_config_t {
    uint32_t _refcnt;
    lg_cluster_discovery_t discovery;
    const char *name;
    const char *stat_name;        /* alt_stat_name or name, ':' replaced by '_' */
    const char *eds_service_name; /* EDS only (else NULL): eds_cluster_config.service_name, or name */
    const struct st_lg_lb_type_t *lb;
    uint32_t lb_choice_count;             /* least request, default 2 */
    double lb_active_request_bias;        /* least request, default 1.0 */
    uint32_t healthy_panic_threshold;     /* percent, default 50 */
    uint32_t connect_timeout_ms;          /* default 5000 */
    uint32_t buffer_limit;                /* per_connection_buffer_limit_bytes, default 1 MiB */
    uint32_t max_requests_per_connection; /* 0 = unlimited */
    uint64_t idle_timeout_ms;             /* 0 = none; default 1 h */
    lg_upstream_protocol_t protocol;
    lg_cb_thresholds_t thresholds;      /* DEFAULT priority */
    lg_cb_thresholds_t high_thresholds; /* HIGH priority (printed by /clusters) */
    lg_h2_settings_t *h2;               /* non-NULL when protocol is not HTTP1 */
    lg_h1_limits_t h1_limits;           /* response parsing (max_headers_count ...) */
    struct st_lg_tls_context_t *tls;    /* transport_socket: UpstreamTlsContext, NULL = raw_buffer */
    struct st_lg_dns_spec_t *dns;       /* STRICT_DNS and LOGICAL_DNS: what to resolve, how (shared by derived configs) */
    lg_host_config_t **hosts;
    size_t n_hosts;
    uint32_t n_healthy;
    uint32_t added_via_api : 1;
    /* UpstreamHttpProtocolOptions: the TLS name of a connection comes from the
     * request (override_auto_sni_header's value, else :authority, without the
     * port): auto_sni sends it as the SNI (unless it is an IP address),
     * auto_san_validation checks the server certificate's SANs against it. */
    uint32_t auto_sni : 1;
    uint32_t auto_san_validation : 1;
    char *override_auto_sni_header; /* lower case; NULL when unset */
    /* Shared, mutable: see the file comment. */
    struct st_lg_cluster_shared_t *shared;
} lg_cluster_config_t;

/* What EDS updates of a cluster share (lg_cluster_config_with_endpoints):
 * the stats block reference and the breaker counts. */
typedef struct st_lg_cluster_shared_t {
    uint32_t _refcnt;
    lg_stats_block_t *stats;
    lg_cb_resources_t resources;
} lg_cluster_shared_t;

typedef struct st_lg_worker_cluster_t lg_worker_cluster_t;
typedef struct st_lg_conn_pool_t lg_conn_pool_t;

/* A host as one worker sees it. */
typedef struct st_lg_host_t {
    const lg_host_config_t *config;
    lg_worker_cluster_t *cluster;
    uint32_t weight;
    uint32_t active_requests; /* this worker's streams on this host (least request) */
    lg_conn_pool_t *pools[2]; /* [0] HTTP/1.1, [1] HTTP/2; created on first use */
    /* auto_sni / auto_san_validation: pools keyed by the request's TLS name
     * (a connection made for one name never serves another); a list, each
     * pool freed once it has no connection left. */
    lg_conn_pool_t *named_pools;
} lg_host_t;

/*
 * A load balancing policy: one vtable, one file each (lb_round_robin.c ...).
 * An lg_lb_t balances over a fixed array of hosts for one worker; it is
 * rebuilt when the host set changes.
 */
typedef struct st_lg_lb_t lg_lb_t;
typedef struct st_lg_lb_params_t {
    uint32_t choice_count;      /* least request */
    double active_request_bias; /* least request */
    uint64_t seed;              /* varies the starting point and the random sequence; tests pass a fixed one */
} lg_lb_params_t;

typedef struct st_lg_lb_type_t {
    const char *name; /* "ROUND_ROBIN" ... */
    /* hosts[0..n) (n >= 1) outlive the state. */
    lg_lb_t *(*create)(lg_host_t **hosts, size_t n, const lg_lb_params_t *params);
    /* Returns the next host; never NULL. */
    lg_host_t *(*pick)(lg_lb_t *lb);
    void (*destroy)(lg_lb_t *lb);
} lg_lb_type_t;

/* What the router tells the load balancer about a request. */
typedef struct st_lg_lb_context_t {
    /* Hosts to avoid (retry host predicate previous_hosts): the balancer
     * picks again, up to host_selection_retry_max_attempts times, while it
     * lands on one of them. */
    const lg_host_t *const *excluded;
    size_t n_excluded;
    uint32_t host_selection_retry_max_attempts;
    int priority; /* 0 DEFAULT, 1 HIGH (only DEFAULT thresholds are enforced for now) */
    /* The downstream request (NULL: none), for auto_sni / auto_san_validation. */
    const struct st_lg_req_head_t *request;
} lg_lb_context_t;

/* Why lg_cluster_request_stream() could not produce a stream. */
typedef enum en_lg_pool_failure_t {
    LG_POOL_NO_HEALTHY_HOST, /* UH */
    LG_POOL_OVERFLOW,        /* UO: a circuit breaker is open */
    LG_POOL_CONNECT_FAILURE, /* UF */
    LG_POOL_CONNECT_TIMEOUT, /* UF, connect_timeout elapsed */
} lg_pool_failure_t;

/* Exactly one of these fires per request (unless it is cancelled first). */
typedef struct st_lg_pool_cbs_t {
    /* `stream` is ready for send_headers: set stream->cbs and ->ctx first.
     * `host` is valid while the stream lives; lg_host_addref() keeps it longer.
     * `local` is the upstream connection's local address (Envoy's upstream local
     * address), valid during the call; NULL when unknown (a pipe). */
    void (*on_ready)(void *data, lg_stream_t *stream, lg_host_t *host, const struct sockaddr *local);
    /* `host` is NULL for NO_HEALTHY_HOST and for overflow before a host was
     * involved; transport_failure_reason is "" or Envoy's text ("delayed
     * connect error: 111"). Both are valid during the call only. */
    void (*on_failure)(void *data, lg_pool_failure_t reason, lg_host_t *host, const char *transport_failure_reason);
} lg_pool_cbs_t;

typedef struct st_lg_pool_request_t lg_pool_request_t;
typedef struct st_lg_worker_clusters_t lg_worker_clusters_t;

#endif
