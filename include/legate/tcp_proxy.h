/*
 * The tcp_proxy network filter (envoy.filters.network.tcp_proxy): its
 * config, compiled from TcpProxy, and the runtime that relays the bytes of
 * one downstream connection to one upstream connection of a cluster.
 */
#ifndef LEGATE_TCP_PROXY_H
#define LEGATE_TCP_PROXY_H

#include "legate/access_log.h"
#include "legate/listener-t.h"
#include "legate/worker-t.h"
#include "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.pb-c.h"

#define LG_TCP_PROXY_TYPE "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"

/* tcp.<stat_prefix>.* stats (Envoy's ALL_TCP_PROXY_STATS), in block order. */
#define LG_TCP_PROXY_STATS(X)                                 \
    X(COUNTER, downstream_cx_no_route)                        \
    X(COUNTER, downstream_cx_rx_bytes_total)                  \
    X(COUNTER, downstream_cx_total)                           \
    X(COUNTER, downstream_cx_tx_bytes_total)                  \
    X(COUNTER, downstream_flow_control_paused_reading_total)  \
    X(COUNTER, downstream_flow_control_resumed_reading_total) \
    X(COUNTER, idle_timeout)                                  \
    X(COUNTER, max_downstream_connection_duration)            \
    X(COUNTER, upstream_flush_total)                          \
    X(GAUGE, downstream_cx_rx_bytes_buffered)                 \
    X(GAUGE, downstream_cx_tx_bytes_buffered)                 \
    X(GAUGE, upstream_flush_active)
#define LG__TCP_PROXY_STAT_ENUM(type, name) LG_TCP_PROXY_STAT_##name,
enum { LG_TCP_PROXY_STATS(LG__TCP_PROXY_STAT_ENUM) LG_TCP_PROXY_STAT__COUNT };
#undef LG__TCP_PROXY_STAT_ENUM

typedef struct st_lg_stats_block_t lg_stats_block_t;
typedef struct st_lg_snapshot_t lg_snapshot_t;

typedef struct st_lg_tcp_proxy_weighted_t {
    char *name;
    uint32_t weight; /* >= 1 */
} lg_tcp_proxy_weighted_t;

/* Compiled TcpProxy; immutable, owned by its filter chain. */
struct st_lg_tcp_proxy_config_t {
    char *stat_prefix;
    char *cluster; /* NULL when weighted_clusters is used */
    lg_tcp_proxy_weighted_t *weighted;
    size_t n_weighted;
    uint64_t total_weight;
    uint64_t idle_timeout_ms;            /* 0 disables; default 1 h */
    uint64_t max_connection_duration_ms; /* max_downstream_connection_duration; 0 = none */
    uint32_t max_connect_attempts;       /* default 1 */
    lg_access_logs_t access_logs;
    uint64_t access_log_flush_interval_ms; /* 0 = log only at the end */
    int flush_access_log_on_connected;
    lg_stats_block_t *stats; /* tcp.<stat_prefix>. */
};
typedef struct st_lg_tcp_proxy_config_t lg_tcp_proxy_config_t;

/* Compiles a TcpProxy typed_config; errors name the field relative to it
 * ("weighted_clusters.clusters[1].weight: ..."). */
lg_tcp_proxy_config_t *lg_tcp_proxy_config_compile(const Envoy__Extensions__Filters__Network__TcpProxy__V3__TcpProxy *m,
                                                   lg_error_t *err);
void lg_tcp_proxy_config_free(lg_tcp_proxy_config_t *c);
/* The cluster name for a new connection (weighted by `random` when weighted_clusters is set). */
const char *lg_tcp_proxy_pick_cluster(const lg_tcp_proxy_config_t *c, uint64_t random);

/*
 * Takes over an accepted downstream socket on worker w and proxies it to the
 * config's cluster until either side is done. Bytes already in sock->input
 * (read by listener filters, e.g. a TLS ClientHello) are relayed first.
 * `server_name` is the SNI seen by tls_inspector, or NULL (copied).
 * The listener, config and snapshot stay alive through the connection's
 * hold on `snap`.
 */
typedef struct st_lg_tcp_proxy_conn_t lg_tcp_proxy_conn_t;
void lg_tcp_proxy_conn_new(lg_worker_t *w, const lg_listener_config_t *l, const lg_tcp_proxy_config_t *c, lg_snapshot_t *snap,
                           h2o_socket_t *sock, const struct sockaddr_storage *local, const struct sockaddr_storage *remote,
                           const char *server_name);
/* Closes both sides now, without flushing. */
void lg_tcp_proxy_conn_close(lg_tcp_proxy_conn_t *c);
/* For the worker's shutdown, on the worker's thread: its live tcp_proxy
 * connections, and closing them all. Envoy does not close tcp_proxy
 * connections when a drain starts, only when the drain time is over. */
size_t lg_tcp_proxy_active_connections(void);
void lg_tcp_proxy_close_all(void);
/* The number of this worker's connections on the chain of `cfg`; with
 * `close` they are closed too (the end of the chain's drain). */
size_t lg_tcp_proxy_on_config(const lg_tcp_proxy_config_t *cfg, int close);

#endif
