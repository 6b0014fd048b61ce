/*
 * The HTTP connection manager (envoy.filters.network.http_connection_manager):
 * its compiled config, and the runtime objects of one downstream connection
 * and of each of its streams.
 */
#ifndef LEGATE_HCM_T_H
#define LEGATE_HCM_T_H

#include <netinet/in.h>
#include <h2o/linklist.h>
#include "legate/codec-t.h"
#include "legate/filter-t.h"
#include "legate/h1-t.h"
#include "legate/stream_info-t.h"
#include "legate/worker-t.h"
#include "legate/listener-t.h"
#include "legate/access_log.h"

typedef struct st_lg_route_table_t lg_route_table_t;
typedef struct st_lg_route_t lg_route_t;
typedef struct st_lg_vhost_t lg_vhost_t;
typedef struct st_lg_stats_block_t lg_stats_block_t;
typedef struct st_lg_snapshot_t lg_snapshot_t;
typedef struct st_lg_scope_key_builder_t lg_scope_key_builder_t;
typedef struct st_lg_scoped_routes_t lg_scoped_routes_t;

typedef enum en_lg_codec_type_t { LG_CODEC_AUTO, LG_CODEC_HTTP1, LG_CODEC_HTTP2 } lg_codec_type_t;
typedef enum en_lg_server_header_t { LG_SERVER_OVERWRITE, LG_SERVER_APPEND_IF_ABSENT, LG_SERVER_PASS_THROUGH } lg_server_header_t;
typedef enum en_lg_escaped_slashes_t {
    LG_ESCAPED_SLASHES_KEEP,
    LG_ESCAPED_SLASHES_REJECT,
    LG_ESCAPED_SLASHES_REDIRECT,
    LG_ESCAPED_SLASHES_UNESCAPE,
} lg_escaped_slashes_t;

/* http.<stat_prefix>.* counters and gauges, in this order in the stats block. */
#define LG_HCM_STATS(X)                                       \
    X(COUNTER, downstream_cx_total)                           \
    X(GAUGE, downstream_cx_active)                            \
    X(COUNTER, downstream_cx_http1_total)                     \
    X(GAUGE, downstream_cx_http1_active)                      \
    X(COUNTER, downstream_cx_http2_total)                     \
    X(GAUGE, downstream_cx_http2_active)                      \
    X(COUNTER, downstream_cx_http3_total) /* no HTTP/3: 0 */  \
    X(GAUGE, downstream_cx_http3_active)                      \
    X(COUNTER, downstream_cx_ssl_total)                       \
    X(GAUGE, downstream_cx_ssl_active)                        \
    X(COUNTER, downstream_cx_destroy)                         \
    X(HISTOGRAM, downstream_cx_length_ms)                     \
    X(COUNTER, downstream_cx_destroy_remote)                  \
    X(COUNTER, downstream_cx_destroy_local)                   \
    X(COUNTER, downstream_cx_destroy_active_rq)               \
    X(COUNTER, downstream_cx_destroy_local_active_rq)         \
    X(COUNTER, downstream_cx_destroy_remote_active_rq)        \
    X(COUNTER, downstream_cx_protocol_error)                  \
    X(COUNTER, downstream_cx_idle_timeout)                    \
    X(COUNTER, downstream_cx_drain_close)                     \
    X(COUNTER, downstream_cx_delayed_close_timeout)           \
    X(COUNTER, downstream_cx_max_duration_reached)            \
    X(COUNTER, downstream_cx_max_requests_reached)            \
    X(COUNTER, downstream_cx_rx_bytes_total)                  \
    X(COUNTER, downstream_cx_tx_bytes_total)                  \
    X(COUNTER, downstream_cx_upgrades_total)                  \
    X(COUNTER, downstream_flow_control_paused_reading_total)  \
    X(COUNTER, downstream_flow_control_resumed_reading_total) \
    X(GAUGE, downstream_cx_upgrades_active)                   \
    X(COUNTER, downstream_rq_total)                           \
    X(GAUGE, downstream_rq_active)                            \
    X(COUNTER, downstream_rq_http1_total)                     \
    X(COUNTER, downstream_rq_http2_total)                     \
    X(COUNTER, downstream_rq_http3_total)                     \
    X(COUNTER, downstream_rq_completed)                       \
    X(HISTOGRAM, downstream_rq_time)                          \
    X(COUNTER, downstream_rq_1xx)                             \
    X(COUNTER, downstream_rq_2xx)                             \
    X(COUNTER, downstream_rq_3xx)                             \
    X(COUNTER, downstream_rq_4xx)                             \
    X(COUNTER, downstream_rq_5xx)                             \
    X(COUNTER, downstream_rq_response_before_rq_complete)     \
    X(COUNTER, downstream_rq_rx_reset)                        \
    X(COUNTER, downstream_rq_tx_reset)                        \
    X(COUNTER, downstream_rq_non_relative_path)               \
    X(COUNTER, downstream_rq_too_large)                       \
    X(COUNTER, downstream_rq_timeout)                         \
    X(COUNTER, downstream_rq_idle_timeout)                    \
    X(COUNTER, downstream_rq_header_timeout)                  \
    X(COUNTER, downstream_rq_max_duration_reached)            \
    X(COUNTER, downstream_rq_failed_path_normalization)       \
    X(COUNTER, downstream_rq_redirected_with_normalized_path) \
    X(COUNTER, downstream_rq_ws_on_non_ws_route)              \
    X(COUNTER, downstream_rq_overload_close)                  \
    X(COUNTER, downstream_rq_too_many_premature_resets)       \
    X(COUNTER, downstream_cx_overload_disable_keepalive)      \
    X(COUNTER, rs_too_large)                                  \
    X(COUNTER, no_route)                                      \
    X(COUNTER, no_cluster)                                    \
    X(COUNTER, rq_redirect)                                   \
    X(COUNTER, rq_direct_response)                            \
    X(COUNTER, rq_total)                                      \
    X(COUNTER, rq_reset_after_downstream_response_started)

#define LG__HCM_STAT_ENUM(type, name) LG_HCM_STAT_##name,
enum { LG_HCM_STATS(LG__HCM_STAT_ENUM) LG_HCM_STAT__COUNT };
#undef LG__HCM_STAT_ENUM

/* Envoy's ConnectionManagerListenerStats: listener.<address>.http.<stat_prefix>.*,
 * one block per listener and connection manager (the classes in the order of
 * downstream_rq_1xx..5xx above). */
#define LG_HCM_LISTENER_STATS(X)  \
    X(COUNTER, downstream_rq_1xx) \
    X(COUNTER, downstream_rq_2xx) \
    X(COUNTER, downstream_rq_3xx) \
    X(COUNTER, downstream_rq_4xx) \
    X(COUNTER, downstream_rq_5xx) \
    X(COUNTER, downstream_rq_completed)
#define LG__HCM_LISTENER_STAT_ENUM(type, name) LG_HCM_LISTENER_STAT_##name,
enum { LG_HCM_LISTENER_STATS(LG__HCM_LISTENER_STAT_ENUM) LG_HCM_LISTENER_STAT__COUNT };
#undef LG__HCM_LISTENER_STAT_ENUM

/* One of the HCM's upgrade_configs (without a filter chain of its own). */
typedef struct st_lg_hcm_upgrade_t {
    h2o_iovec_t type; /* lower-case: "websocket", "connect" */
    int enabled;      /* default true */
} lg_hcm_upgrade_t;

struct st_lg_hcm_config_t {
    char *stat_prefix;
    lg_codec_type_t codec_type;
    lg_route_table_t *route_table; /* inline route_config */
    char *rds_route_config_name;   /* rds (xDS); NULL when inline */
    h2o_iovec_t server_name;       /* default "envoy" */
    lg_server_header_t server_header_transformation;
    unsigned use_remote_address : 1;
    unsigned skip_xff_append : 1;
    unsigned generate_request_id : 1;
    unsigned preserve_external_request_id : 1;
    unsigned always_set_request_id_in_response : 1;
    unsigned normalize_path : 1;
    unsigned merge_slashes : 1;
    unsigned strip_any_host_port : 1;
    unsigned append_local_overload : 1; /* x-envoy-local-overloaded: true on the overload manager's 503 */
    unsigned strip_matching_host_port : 1;
    unsigned internal_unix_sockets : 1;
    lg_escaped_slashes_t escaped_slashes;
    /* internal_address_config: NULL = Envoy's default (RFC 1918 / RFC 4193) */
    lg_cidr_t *internal_cidrs;
    size_t n_internal_cidrs;
    uint32_t xff_num_trusted_hops;
    uint64_t stream_idle_timeout_ms; /* default 5 min; 0 disables */
    uint64_t request_timeout_ms;     /* default 0 (disabled) */
    uint64_t request_headers_timeout_ms;
    uint64_t idle_timeout_ms; /* connection, default 1 h */
    uint64_t max_stream_duration_ms;
    /* common_http_protocol_options: max_connection_duration (0: none) and
     * max_requests_per_connection (0: no limit); either one gives each
     * connection an lg_hcm_conn_limits_t */
    uint64_t max_connection_duration_ms;
    uint32_t max_requests_per_connection;
    uint64_t drain_timeout_ms; /* default 5 s */
    lg_h1_limits_t h1;
    lg_h2_settings_t h2;
    unsigned h2_allow_connect : 1;           /* http2_protocol_options.allow_connect (RFC 8441) */
    unsigned h2_stream_error_on_invalid : 1; /* stream_error_on_invalid_http_message(ing) for HTTP/2 */
    lg_hcm_upgrade_t *upgrades;
    size_t n_upgrades;
    lg_http_filter_config_t *filters;
    size_t n_filters;
    lg_stats_block_t *stats;          /* http.<stat_prefix>. */
    lg_stats_block_t *listener_stats; /* listener.<address>.http.<stat_prefix>. (NULL outside a listener) */
    lg_access_logs_t access_logs;

    /* ---- scoped_routes (include/legate/scoped_routes.h); scope_keys is set iff the
     * route_specifier is scoped_routes, and then route_table and rds_route_config_name
     * are NULL. ---- */
    lg_scope_key_builder_t *scope_keys;
    lg_scoped_routes_t *scoped_inline;     /* scoped_route_configurations_list; NULL with scoped_rds */
    char *scoped_routes_name;              /* ScopedRoutes.name */
    unsigned scoped_rds : 1;               /* scopes come from SRDS (ScopedRoutes.scoped_rds) */
    unsigned scoped_rds_config_source : 1; /* ScopedRoutes.rds_config_source is set (SRDS scopes' RDS) */
};

/* One downstream connection handled by an HCM. HTTP/1.1 connections are
 * allocated with their codec (lg_h1_server_conn_new_with_ctx), which frees
 * them and runs their idle timeout on its own timer; HTTP/2 ones on their own. */
typedef struct st_lg_hcm_conn_t {
    lg_worker_t *worker;
    const lg_hcm_config_t *config;
    const lg_listener_config_t *listener;
    lg_snapshot_t *snapshot; /* reference: keeps config alive */
    uint64_t id;
    /* when the connection started (ms): for downstream_cx_length_ms, and for the
     * listener's count of this connection when the listener left it to the
     * connection (lg_listener_uncount at close; plain TCP HTTP/1.1: the socket
     * closes with it) */
    uint64_t start_ms;
    uint32_t n_streams;
    unsigned draining : 1;
    unsigned closed : 1;
    unsigned tls : 1;               /* the connection terminated TLS (x-forwarded-proto: https) */
    unsigned with_codec : 1;        /* HTTP/1.1: allocated with its codec, idle timeout on its timer */
    unsigned listener_counted : 1;  /* see start_ms */
    unsigned local_is_listener : 1; /* the local address is the listener's (none stored) */
    unsigned has_sni : 1;           /* the TLS connection's SNI is stored (requested_server_name) */
    unsigned has_limits : 1;        /* an lg_hcm_conn_limits_t is in the tail */
    h2o_linklist_t streams;
    h2o_linklist_t worker_link; /* in the worker's connection list, for draining */
    /* Sized per connection, in this order: unless with_codec, the idle timer
     * and the codec (lg_hcm_h2_part_t; with_codec: the codec precedes the
     * connection, see lg_h1_server_conn_new_with_ctx); lg_hcm_conn_limits_t
     * when has_limits; the peer address (a sockaddr_in for IPv4, 28 bytes otherwise:
     * a sockaddr_in6, or a pipe's family only); the local address the same way
     * unless local_is_listener; the SNI, NUL-terminated, when has_sni. */
    uint64_t tail[];
} lg_hcm_conn_t;

/* The start of an HTTP/2 connection's tail. */
typedef struct st_lg_hcm_h2_part_t {
    lg_timer_t idle_timer; /* also closes the connection at once when premature_close */
    lg_server_conn_t *codec;
    uint32_t closed_streams, premature_resets; /* Envoy's premature reset protection */
    unsigned premature_close : 1;
} lg_hcm_h2_part_t;

/* In the tail of a connection whose HCM limits connections. */
typedef struct st_lg_hcm_conn_limits_t {
    lg_timer_t max_duration_timer;
    struct st_lg_hcm_conn_t *conn;
    uint64_t requests; /* streams started */
} lg_hcm_conn_limits_t;

struct st_lg_hcm_stream_t {
    /* The request's pool: the downstream codec's (lg_stream_t.pool) when it lends
     * one, else own_pool. Upstream codecs borrow it too (see the router). */
    h2o_mem_pool_t *pool;
    h2o_mem_pool_t own_pool;
    lg_hcm_conn_t *conn;
    lg_stream_t *downstream;
    lg_req_head_t *req;
    lg_resp_head_t *resp;
    lg_stream_info_t info;
    const lg_route_t *route;
    const lg_vhost_t *vhost;
    int route_resolved;
    lg_http_filter_t **filters;
    size_t n_filters;
    size_t decode_index;      /* next filter to run in the decode direction */
    size_t encode_index;      /* encode runs from n_filters-1 down to 0 */
    h2o_iovec_t pending_body; /* local reply body not yet written */
    lg_timer_t idle_timer;
    lg_timer_t request_timer;
    lg_timer_t duration_timer; /* max_stream_duration / grpc-timeout (Envoy's refreshDurationTimeout) */
    uint64_t idle_timeout_ms;  /* the HCM's stream_idle_timeout, or the route's idle_timeout */
    h2o_linklist_t link;
    unsigned request_headers_done : 1;
    unsigned request_ended : 1;
    unsigned response_started : 1;
    unsigned response_ended : 1;
    unsigned local_reply : 1;
    unsigned is_grpc : 1;
    unsigned upgrade : 1;        /* an allowed Upgrade request (h2 extended CONNECT arrives as one) */
    unsigned connect : 1;        /* an allowed CONNECT request */
    unsigned h2_ext_connect : 1; /* the upgrade arrived as an HTTP/2 extended CONNECT */
    unsigned destroyed : 1;
    unsigned internal : 1; /* Envoy's internal request (internal_address_config): keeps internal_only_headers */
};

#endif
