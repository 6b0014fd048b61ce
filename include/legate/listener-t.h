/*
 * Listener configuration compiled from envoy.config.listener.v3.Listener:
 * immutable, refcounted, shared by every worker.
 */
#ifndef LEGATE_LISTENER_T_H
#define LEGATE_LISTENER_T_H

#include <stdint.h>
#include <sys/socket.h>
#include <sys/un.h>

typedef struct st_lg_hcm_config_t lg_hcm_config_t;
typedef struct st_lg_tcp_proxy_config_t lg_tcp_proxy_config_t;
typedef struct st_lg_tls_context_t lg_tls_context_t;

/* listener.<address>.* stats, in this order in the listener's stats block. The
 * downstream_cx_* ones count a connection from its filter chain match until its
 * socket closes, whoever owns it then (Envoy's ActiveTcpConnection). */
#define LG_LISTENER_STATS(X)                  \
    X(COUNTER, downstream_cx_total)           \
    X(GAUGE, downstream_cx_active)            \
    X(COUNTER, downstream_cx_destroy)         \
    X(HISTOGRAM, downstream_cx_length_ms)     \
    X(COUNTER, no_filter_chain_match)         \
    X(COUNTER, downstream_cx_overflow)        \
    X(COUNTER, downstream_global_cx_overflow) \
    X(COUNTER, downstream_cx_overload_reject) \
    X(COUNTER, downstream_pre_cx_timeout)     \
    X(GAUGE, downstream_pre_cx_active)
#define LG__LISTENER_STAT_ENUM(type, name) LG_LISTENER_STAT_##name,
enum { LG_LISTENER_STATS(LG__LISTENER_STAT_ENUM) LG_LISTENER_STAT__COUNT };
#undef LG__LISTENER_STAT_ENUM

/* tls_inspector.* stats (one block for the process, as Envoy's are not per listener). */
#define LG_TLS_INSPECTOR_STATS(X)      \
    X(COUNTER, client_hello_too_large) \
    X(COUNTER, tls_found)              \
    X(COUNTER, tls_not_found)          \
    X(COUNTER, alpn_found)             \
    X(COUNTER, alpn_not_found)         \
    X(COUNTER, sni_found)              \
    X(COUNTER, sni_not_found)
#define LG__TLS_INSPECTOR_STAT_ENUM(type, name) LG_TLS_INSPECTOR_STAT_##name,
enum { LG_TLS_INSPECTOR_STATS(LG__TLS_INSPECTOR_STAT_ENUM) LG_TLS_INSPECTOR_STAT__COUNT };
#undef LG__TLS_INSPECTOR_STAT_ENUM
typedef struct st_lg_stats_block_t lg_stats_block_t;

/* An address prefix (CidrRange) in network byte order. */
typedef struct st_lg_cidr_t {
    int family; /* AF_INET / AF_INET6 */
    uint8_t addr[16];
    unsigned prefix_len;
} lg_cidr_t;

typedef struct st_lg_filter_chain_match_t {
    int has_destination_port;
    uint32_t destination_port;
    lg_cidr_t *prefix_ranges;
    size_t n_prefix_ranges;
    char **server_names; /* lower-case; "*.x" wildcards */
    size_t n_server_names;
    char *transport_protocol; /* "" = any */
    char **application_protocols;
    size_t n_application_protocols;
    int source_type; /* 0 ANY, 1 SAME_IP_OR_LOOPBACK, 2 EXTERNAL */
    lg_cidr_t *direct_source_prefix_ranges;
    size_t n_direct_source_prefix_ranges;
    lg_cidr_t *source_prefix_ranges;
    size_t n_source_prefix_ranges;
    uint32_t *source_ports;
    size_t n_source_ports;
} lg_filter_chain_match_t;

/* The terminal network filter of a chain. */
typedef enum en_lg_network_filter_kind_t {
    LG_NETWORK_FILTER_HCM,
    LG_NETWORK_FILTER_TCP_PROXY,
} lg_network_filter_kind_t;

typedef struct st_lg_filter_chain_t {
    char *name;
    lg_filter_chain_match_t match;
    lg_network_filter_kind_t kind;
    lg_hcm_config_t *hcm;
    lg_tcp_proxy_config_t *tcp_proxy; /* LG_NETWORK_FILTER_TCP_PROXY */
    uint64_t hash;                    /* of the serialized FilterChain: an LDS update drains only the chains whose hash changed */
    lg_tls_context_t *tls;            /* transport_socket: NULL = raw_buffer */
    uint64_t transport_socket_connect_timeout_ms; /* 0 = none */
} lg_filter_chain_t;

typedef struct st_lg_listener_config_t {
    size_t refcnt; /* atomic */
    char *name;
    char *address_str;          /* "127.0.0.1:10000" or the pipe path: the stats name */
    char *connection_limit_key; /* runtime "envoy.resource_limits.listener.<name>.connection_limit" */
    struct sockaddr_storage addr;
    socklen_t addrlen;
    uint32_t buffer_limit; /* per_connection_buffer_limit_bytes */
    lg_filter_chain_t *chains;
    size_t n_chains;
    lg_filter_chain_t *default_chain; /* NULL = none */
    /* The chains by server name, when no chain matches on destination port or
     * address (Envoy's server_names map; see lg_listener_index_chains), or NULL. */
    struct st_lg_sni_index_t *sni_index;
    lg_stats_block_t *stats; /* listener.<address>. */
    /* listener filters: tls_inspector reads the ClientHello before chain selection */
    unsigned tls_inspector : 1;
    unsigned continue_on_listener_filters_timeout : 1;
    unsigned bypass_overload_manager : 1;  /* no overload action or global connection limit applies */
    uint64_t listener_filters_timeout_ms;  /* 0 = none; Envoy's default 15 s */
    lg_stats_block_t *tls_inspector_stats; /* "tls_inspector.", when tls_inspector is set */
    uint64_t hash;                         /* of the serialized Listener proto, for "unchanged" checks */
    /* Listener.access_log (NULL: none): an entry per connection at its close,
     * and per connection no filter chain took (Envoy's listener access log) */
    struct st_lg_access_logs_t *access_logs;
} lg_listener_config_t;

#endif
