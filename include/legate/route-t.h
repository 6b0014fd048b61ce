/*
 * Compiled route tables (envoy.config.route.v3.RouteConfiguration). A table is
 * built once on the control thread by lg_route_table_compile() and is
 * immutable afterwards: workers only read it. It is refcounted; every pointer
 * into it (virtual hosts, routes, matchers, the `pb` messages) stays valid
 * while a reference is held.
 *
 * The table owns a RouteConfiguration message (a copy, or the one handed
 * over to lg_route_table_compile_owned); `pb` members and most compiled
 * strings point into it, so that filters can read their per-route parts
 * (typed_per_filter_config, rate_limits, cors, hash_policy, ...).
 */
#ifndef LEGATE_ROUTE_T_H
#define LEGATE_ROUTE_T_H

#include <stdint.h>
#include <h2o/memory.h>
#include "envoy/config/route/v3/route.pb-c.h"
#include "envoy/config/route/v3/route_components.pb-c.h"
#include "legate/format.h"
#include "legate/regex.h"

typedef struct st_lg_route_table_t lg_route_table_t;
typedef struct st_lg_vhost_t lg_vhost_t;
typedef struct st_lg_route_t lg_route_t;

/* ---- matchers ---- */

typedef enum en_lg_string_match_kind_t {
    LG_STRING_MATCH_EXACT,
    LG_STRING_MATCH_PREFIX,
    LG_STRING_MATCH_SUFFIX,
    LG_STRING_MATCH_CONTAINS,
    LG_STRING_MATCH_REGEX, /* full match */
    LG_STRING_MATCH_ANY,   /* the deprecated exact_match: "" of HeaderMatcher: any value */
} lg_string_match_kind_t;

/* envoy.type.matcher.v3.StringMatcher. With ignore_case, `value` is lower-case. */
typedef struct st_lg_string_matcher_t {
    lg_string_match_kind_t kind;
    int ignore_case;
    h2o_iovec_t value;
    lg_regex_t *regex;
} lg_string_matcher_t;

typedef enum en_lg_header_match_kind_t {
    LG_HEADER_MATCH_STRING,
    LG_HEADER_MATCH_PRESENT,
    LG_HEADER_MATCH_RANGE,
} lg_header_match_kind_t;

/* envoy.config.route.v3.HeaderMatcher. `name` is lower-case. */
typedef struct st_lg_header_matcher_t {
    h2o_iovec_t name;
    lg_header_match_kind_t kind;
    int invert;
    int treat_missing_as_empty;
    int present;         /* LG_HEADER_MATCH_PRESENT */
    int64_t range_start; /* LG_HEADER_MATCH_RANGE: [start, end) */
    int64_t range_end;
    lg_string_matcher_t str; /* LG_HEADER_MATCH_STRING */
} lg_header_matcher_t;

typedef enum en_lg_query_match_kind_t {
    LG_QUERY_MATCH_EXISTS,  /* no specifier: the parameter is there */
    LG_QUERY_MATCH_PRESENT, /* present_match: `present` (false never matches, as Envoy) */
    LG_QUERY_MATCH_STRING,
} lg_query_match_kind_t;

typedef struct st_lg_query_matcher_t {
    h2o_iovec_t name;
    lg_query_match_kind_t kind;
    int present;
    lg_string_matcher_t str;
} lg_query_matcher_t;

/* ---- header mutations ---- */

/* HeaderValueOption.append_action; the deprecated `append` maps onto it. */
typedef enum en_lg_header_append_t {
    LG_HEADER_APPEND_IF_EXISTS_OR_ADD,
    LG_HEADER_ADD_IF_ABSENT,
    LG_HEADER_OVERWRITE_IF_EXISTS_OR_ADD,
    LG_HEADER_OVERWRITE_IF_EXISTS,
} lg_header_append_t;

typedef struct st_lg_header_add_t {
    h2o_iovec_t name; /* lower-case */
    lg_format_t *value;
    lg_header_append_t action;
    int keep_empty_value;
} lg_header_add_t;

/* One level's *_headers_to_add / *_headers_to_remove (Envoy's HeaderParser). */
typedef struct st_lg_header_mutation_t {
    size_t n_add;
    lg_header_add_t *add;
    size_t n_remove;
    h2o_iovec_t *remove; /* lower-case */
} lg_header_mutation_t;

/* ---- actions ---- */

/* retry_on conditions (Envoy's RetryPolicy bits). Unknown names are ignored, as Envoy. */
#define LG_RETRY_ON_5XX (1u << 0)
#define LG_RETRY_ON_GATEWAY_ERROR (1u << 1)
#define LG_RETRY_ON_CONNECT_FAILURE (1u << 2)
#define LG_RETRY_ON_RETRIABLE_4XX (1u << 3)
#define LG_RETRY_ON_REFUSED_STREAM (1u << 4)
#define LG_RETRY_ON_RETRIABLE_STATUS_CODES (1u << 5)
#define LG_RETRY_ON_RESET (1u << 6)
#define LG_RETRY_ON_RETRIABLE_HEADERS (1u << 7)
#define LG_RETRY_ON_ENVOY_RATE_LIMITED (1u << 8)
#define LG_RETRY_ON_RESET_BEFORE_REQUEST (1u << 9)
#define LG_RETRY_ON_HTTP3_POST_CONNECT_FAILURE (1u << 10)
#define LG_RETRY_ON_GRPC_CANCELLED (1u << 16)
#define LG_RETRY_ON_GRPC_DEADLINE_EXCEEDED (1u << 17)
#define LG_RETRY_ON_GRPC_RESOURCE_EXHAUSTED (1u << 18)
#define LG_RETRY_ON_GRPC_UNAVAILABLE (1u << 19)
#define LG_RETRY_ON_GRPC_INTERNAL (1u << 20)

typedef struct st_lg_retry_policy_t {
    uint32_t retry_on;
    uint32_t num_retries;        /* default 1 */
    uint64_t per_try_timeout_ms; /* 0 = none */
    uint64_t per_try_idle_timeout_ms;
    uint64_t base_interval_ms; /* 25 unless retry_back_off says otherwise */
    uint64_t max_interval_ms;  /* 10 x base unless set */
    size_t n_retriable_status_codes;
    uint32_t *retriable_status_codes;
    size_t n_retriable_headers; /* response headers that make a retry */
    lg_header_matcher_t *retriable_headers;
    size_t n_retriable_request_headers;
    lg_header_matcher_t *retriable_request_headers;
    int previous_hosts; /* retry_host_predicate envoy.retry_host_predicates.previous_hosts */
    uint32_t host_selection_retry_max_attempts;
} lg_retry_policy_t;

typedef struct st_lg_weighted_cluster_t {
    h2o_iovec_t name;           /* empty when cluster_header is used */
    h2o_iovec_t cluster_header; /* lower-case */
    uint32_t weight;
    h2o_iovec_t host_rewrite_literal;
    lg_header_mutation_t request_headers, response_headers;
    const Envoy__Config__Route__V3__WeightedCluster__ClusterWeight *pb;
} lg_weighted_cluster_t;

typedef struct st_lg_upgrade_config_t {
    h2o_iovec_t upgrade_type; /* lower-case ("websocket", "connect") */
    int enabled;
    int connect_allow_post;
    int connect_has_config; /* connect_config was given */
} lg_upgrade_config_t;

typedef struct st_lg_mirror_policy_t {
    h2o_iovec_t cluster;
    h2o_iovec_t cluster_header;
    uint32_t numerator, denominator; /* default 100/100 */
    int trace_sampled;               /* default true */
} lg_mirror_policy_t;

/* envoy.config.route.v3.RouteAction */
typedef struct st_lg_route_action_t {
    /* exactly one of cluster, cluster_header, weighted_clusters */
    h2o_iovec_t cluster;
    h2o_iovec_t cluster_header; /* lower-case */
    size_t n_weighted;
    lg_weighted_cluster_t *weighted;
    uint64_t total_weight;
    h2o_iovec_t random_value_header;     /* weighted_clusters.header_name, lower-case */
    int cluster_not_found_response_code; /* 503, 404 or 500 */

    h2o_iovec_t prefix_rewrite;
    lg_regex_t *regex_rewrite;
    h2o_iovec_t regex_rewrite_substitution;

    h2o_iovec_t host_rewrite_literal;
    int auto_host_rewrite;
    h2o_iovec_t host_rewrite_header; /* lower-case */
    lg_regex_t *host_rewrite_path_regex;
    h2o_iovec_t host_rewrite_path_substitution;
    int append_x_forwarded_host;

    uint64_t timeout_ms;            /* 15000 by default; 0 = disabled */
    int64_t idle_timeout_ms;        /* -1 = not set (the HCM's stream idle timeout applies); 0 = disabled */
    int64_t max_stream_duration_ms; /* -1 = not set */
    int64_t grpc_timeout_header_max_ms;
    int64_t grpc_timeout_header_offset_ms;
    int64_t max_grpc_timeout_ms; /* deprecated fields, -1 = not set */
    int64_t grpc_timeout_offset_ms;

    const lg_retry_policy_t *retry_policy; /* the route's, else the vhost's, else NULL */
    size_t n_upgrade_configs;
    lg_upgrade_config_t *upgrade_configs;
    size_t n_mirror_policies; /* the route's, else the vhost's, else the table's */
    const lg_mirror_policy_t *mirror_policies;
    int include_vh_rate_limits;
    uint32_t priority; /* core.v3.RoutingPriority */
} lg_route_action_t;

typedef struct st_lg_redirect_t {
    int ssl_redirect;   /* the vhost's require_tls redirect: https://host/path */
    h2o_iovec_t scheme; /* scheme_redirect, or "https" for https_redirect; empty = keep */
    h2o_iovec_t host;
    h2o_iovec_t port; /* ":8080", empty = none */
    h2o_iovec_t path; /* path_redirect */
    int path_has_query;
    h2o_iovec_t prefix_rewrite;
    lg_regex_t *regex_rewrite;
    h2o_iovec_t regex_rewrite_substitution;
    int response_code; /* 301, 302, 303, 307, 308 */
    int strip_query;
} lg_redirect_t;

typedef enum en_lg_route_kind_t {
    LG_ROUTE_FORWARD,
    LG_ROUTE_REDIRECT,
    LG_ROUTE_DIRECT_RESPONSE,
    LG_ROUTE_NON_FORWARDING,
} lg_route_kind_t;

typedef enum en_lg_path_match_t {
    LG_PATH_MATCH_PREFIX,
    LG_PATH_MATCH_EXACT,
    LG_PATH_MATCH_REGEX,
    LG_PATH_MATCH_SEPARATED_PREFIX,
    LG_PATH_MATCH_CONNECT,
} lg_path_match_t;

struct st_lg_route_t {
    h2o_iovec_t name;
    const lg_vhost_t *vhost;
    size_t index; /* position in the vhost */

    /* match */
    lg_path_match_t path_match;
    h2o_iovec_t path_value; /* prefix / path / path_separated_prefix as configured */
    lg_regex_t *path_regex;
    int case_sensitive;
    int grpc;
    int has_runtime_fraction;
    uint32_t fraction_numerator, fraction_denominator;
    size_t n_headers;
    lg_header_matcher_t *headers;
    size_t n_query;
    lg_query_matcher_t *query;

    /* action */
    lg_route_kind_t kind;
    lg_route_action_t action; /* LG_ROUTE_FORWARD */
    lg_redirect_t redirect;   /* LG_ROUTE_REDIRECT */
    int direct_status;        /* LG_ROUTE_DIRECT_RESPONSE */
    int has_direct_body;
    h2o_iovec_t direct_body;
    lg_header_mutation_t request_headers, response_headers;
    uint32_t per_request_buffer_limit_bytes; /* route's, else vhost's, else UINT32_MAX */

    const Envoy__Config__Route__V3__Route *pb; /* NULL for the ssl redirect */
};

typedef enum en_lg_require_tls_t {
    LG_REQUIRE_TLS_NONE,
    LG_REQUIRE_TLS_EXTERNAL_ONLY,
    LG_REQUIRE_TLS_ALL,
} lg_require_tls_t;

struct st_lg_vhost_t {
    h2o_iovec_t name;
    const lg_route_table_t *table;
    lg_require_tls_t require_tls;
    size_t n_routes;
    lg_route_t *routes;
    lg_header_mutation_t request_headers, response_headers;
    const lg_retry_policy_t *retry_policy;
    size_t n_mirror_policies; /* the vhost's, else the table's */
    const lg_mirror_policy_t *mirror_policies;
    int include_request_attempt_count;
    int include_attempt_count_in_response;
    int include_is_timeout_retry_header;
    const Envoy__Config__Route__V3__VirtualHost *pb;
    lg_route_t _ssl_redirect;
    struct st_lg__route_index_t *_index;
};

struct st_lg_route_table_t {
    h2o_iovec_t name;
    size_t n_vhosts;
    lg_vhost_t *vhosts;
    lg_header_mutation_t request_headers, response_headers;
    int most_specific_header_mutations_wins;
    int ignore_port_in_host_matching;
    int ignore_path_parameters_in_path_matching;
    size_t n_internal_only_headers;
    h2o_iovec_t *internal_only_headers; /* lower-case */
    size_t n_mirror_policies;
    lg_mirror_policy_t *mirror_policies;
    uint32_t max_direct_response_body_size_bytes;
    const Envoy__Config__Route__V3__RouteConfiguration *pb;

    /* private */
    size_t _refcnt;
    struct st_lg__route_chunk_t *_chunks; /* every compiled object (lg__route_alloc) */
    char *_cur, *_end;                    /* the free part of the newest small chunk */
    size_t _small_total;                  /* bytes in small chunks, to size the next one */
    Envoy__Config__Route__V3__RouteConfiguration *_pb;
    size_t _n_regexes, _n_formats;
    lg_regex_t **_regexes;
    lg_format_t **_formats;
    struct st_lg__domain_index_t *_domains;
};

#endif
