/* Cluster compile: defaults, every supported field, every error path, EDS
 * endpoint updates and the /clusters output. */
#include <malloc.h>
#include "test.h"
#include "legate/cluster.h"
#include "legate/address.h"
#include "legate/dns.h"
#include "legate/pbjson.h"
#include "legate/stats.h"
#include "legate/tls.h"

static Envoy__Config__Cluster__V3__Cluster *decode(const char *yaml)
{
    lg_error_t err = {{0}};
    lg_node_t *node = lg_yaml_parse(yaml, strlen(yaml), "test", &err);
    ok(node != NULL, "yaml: %s", err.msg);
    ProtobufCMessage *m = lg_pbjson_decode(&envoy__config__cluster__v3__cluster__descriptor, node, 0, &err);
    ok(m != NULL, "decode: %s", err.msg);
    lg_node_free(node);
    return (Envoy__Config__Cluster__V3__Cluster *)m;
}

static lg_cluster_config_t *compile(const char *yaml, lg_error_t *err)
{
    Envoy__Config__Cluster__V3__Cluster *c = decode(yaml);
    if (c == NULL)
        return NULL;
    lg_cluster_config_t *cfg = lg_cluster_config_compile(c, err);
    protobuf_c_message_free_unpacked(&c->base, NULL);
    return cfg;
}

/* Compiles yaml, expects failure with exactly `want`. */
static void expect_error(const char *yaml, const char *want)
{
    lg_error_t err = {{0}};
    lg_cluster_config_t *cfg = compile(yaml, &err);
    ok(cfg == NULL, "expected an error for: %s", yaml);
    lg_cluster_config_release(cfg);
    ok_str(err.msg, want);
}

static void test_defaults(void)
{
    lg_error_t err = {{0}};
    lg_cluster_config_t *cfg = compile("name: backend\n"
                                       "load_assignment:\n"
                                       "  cluster_name: backend\n"
                                       "  endpoints:\n"
                                       "  - lb_endpoints:\n"
                                       "    - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 8080}}}\n",
                                       &err);
    ok(cfg != NULL, "compile: %s", err.msg);
    if (cfg == NULL)
        return;
    ok_str(cfg->name, "backend");
    ok_str(cfg->stat_name, "backend");
    ok(cfg->discovery == LG_CLUSTER_STATIC, "static by default");
    ok(cfg->lb == &lg_lb_round_robin, "round robin by default");
    ok(cfg->connect_timeout_ms == 5000, "connect_timeout default %u", cfg->connect_timeout_ms);
    ok(cfg->buffer_limit == 1024 * 1024, "buffer limit default %u", cfg->buffer_limit);
    ok(cfg->idle_timeout_ms == 3600 * 1000, "idle timeout default %llu", (unsigned long long)cfg->idle_timeout_ms);
    ok(cfg->max_requests_per_connection == 0, "unlimited requests per connection");
    ok(cfg->protocol == LG_UPSTREAM_HTTP1 && cfg->h2 == NULL, "HTTP/1.1 by default");
    ok(cfg->thresholds.max_connections == 1024 && cfg->thresholds.max_pending_requests == 1024 &&
           cfg->thresholds.max_requests == 1024 && cfg->thresholds.max_retries == 3,
       "Envoy's breaker defaults");
    ok(cfg->healthy_panic_threshold == 50, "panic threshold 50");
    ok(cfg->n_hosts == 1 && cfg->n_healthy == 1, "one host");
    ok_str(cfg->hosts[0]->address, "127.0.0.1:8080");
    ok(cfg->hosts[0]->weight == 1, "weight 1");
    ok(lg_stats_block_value(lg_cluster_config_stats(cfg), LG_CLUSTER_STAT_membership_total) == 1, "membership_total");
    ok(lg_stats_block_value(lg_cluster_config_stats(cfg), LG_CLUSTER_STAT_membership_healthy) == 1, "membership_healthy");
    lg_cluster_config_release(cfg);
}

static void test_full(void)
{
    lg_error_t err = {{0}};
    lg_cluster_config_t *cfg =
        compile("name: 'svc:v1'\n"
                "alt_stat_name: 'svc:alt'\n"
                "type: STATIC\n"
                "lb_policy: LEAST_REQUEST\n"
                "least_request_lb_config: {choice_count: 3, active_request_bias: {default_value: 0.5, runtime_key: x}}\n"
                "connect_timeout: 0.25s\n"
                "per_connection_buffer_limit_bytes: 32768\n"
                "max_requests_per_connection: 7\n"
                "common_lb_config: {healthy_panic_threshold: {value: 25}}\n"
                "circuit_breakers:\n"
                "  thresholds:\n"
                "  - {max_connections: 1, max_pending_requests: 2, max_requests: 3, max_retries: 4}\n"
                "  - {priority: HIGH, max_connections: 10}\n"
                "typed_extension_protocol_options:\n"
                "  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n"
                "    '@type': type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n"
                "    common_http_protocol_options: {idle_timeout: 30s, max_requests_per_connection: 9, max_headers_count: 50}\n"
                "    explicit_http_config:\n"
                "      http2_protocol_options: {max_concurrent_streams: 17, initial_stream_window_size: 65536}\n"
                "health_checks: []\n"
                "load_assignment:\n"
                "  cluster_name: svc\n"
                "  endpoints:\n"
                "  - locality: {zone: a}\n"
                "    lb_endpoints:\n"
                "    - endpoint: {address: {socket_address: {address: '::1', port_value: 80}}, hostname: h1}\n"
                "      load_balancing_weight: 5\n"
                "    - endpoint: {address: {pipe: {path: /tmp/x.sock}}}\n"
                "      health_status: UNHEALTHY\n"
                "    - endpoint: {address: {socket_address: {address: 10.0.0.1, port_value: 81}}}\n"
                "      health_status: DRAINING\n",
                &err);
    ok(cfg != NULL, "compile: %s", err.msg);
    if (cfg == NULL)
        return;
    ok_str(cfg->name, "svc:v1");
    ok_str(cfg->stat_name, "svc_alt");
    ok_str(lg_stats_block_prefix(lg_cluster_config_stats(cfg)), "cluster.svc_alt.");
    ok(cfg->lb == &lg_lb_least_request, "least request");
    ok(cfg->lb_choice_count == 3 && cfg->lb_active_request_bias == 0.5, "least request config");
    ok(cfg->connect_timeout_ms == 250, "connect timeout %u", cfg->connect_timeout_ms);
    ok(cfg->buffer_limit == 32768, "buffer limit");
    ok(cfg->max_requests_per_connection == 9, "common options override the deprecated field: %u", cfg->max_requests_per_connection);
    ok(cfg->idle_timeout_ms == 30000, "idle timeout");
    ok(cfg->h1_limits.max_headers_count == 50, "max headers count");
    ok(cfg->healthy_panic_threshold == 25, "panic threshold");
    ok(cfg->thresholds.max_connections == 1 && cfg->thresholds.max_pending_requests == 2 && cfg->thresholds.max_requests == 3 &&
           cfg->thresholds.max_retries == 4,
       "default thresholds");
    ok(cfg->high_thresholds.max_connections == 10 && cfg->high_thresholds.max_requests == 1024, "high thresholds");
    ok(cfg->protocol == LG_UPSTREAM_HTTP2 && cfg->h2 != NULL, "explicit http2");
    if (cfg->h2 != NULL) {
        ok(cfg->h2->max_concurrent_streams == 17, "h2 max_concurrent_streams");
        ok(cfg->h2->initial_stream_window_size == 65536, "h2 stream window");
        ok(cfg->h2->initial_connection_window_size == 268435456, "h2 connection window default");
        ok(cfg->h2->buffer_limit == 32768, "h2 buffer limit");
        ok(cfg->h2->max_headers_count == 50, "h2 max headers");
    }
    ok(cfg->n_hosts == 3 && cfg->n_healthy == 1, "3 hosts, 1 healthy (%zu, %u)", cfg->n_hosts, cfg->n_healthy);
    if (cfg->n_hosts == 3) {
        ok_str(cfg->hosts[0]->address, "[::1]:80");
        ok_str(cfg->hosts[0]->hostname, "h1");
        ok(cfg->hosts[0]->weight == 5, "weight 5");
        ok_str(cfg->hosts[1]->address, "/tmp/x.sock");
        ok(cfg->hosts[1]->sa->sa_family == AF_UNIX && !cfg->hosts[1]->healthy, "pipe, unhealthy");
        ok(!cfg->hosts[2]->healthy, "draining is not healthy");
    }
    lg_strbuf_t text = {0};
    lg_clusters_admin_text(&text, &cfg, 1);
    ok(strstr(text.base, "svc:v1::default_priority::max_connections::1\n") != NULL, "text breaker: %s", text.base);
    ok(strstr(text.base, "svc:v1::high_priority::max_connections::10\n") != NULL, "text high breaker");
    ok(strstr(text.base, "svc:v1::[::1]:80::cx_active::0\nsvc:v1::[::1]:80::cx_connect_fail::0\n") != NULL, "text host stats");
    ok(strstr(text.base, "svc:v1::[::1]:80::weight::5\n") != NULL, "text weight");
    ok(strstr(text.base, "svc:v1::[::1]:80::hostname::h1\n") != NULL, "text hostname");
    ok(strstr(text.base, "svc:v1::/tmp/x.sock::health_flags::/failed_eds_health\n") != NULL, "text health flags");
    ok(strstr(text.base, "svc:v1::10.0.0.1:81::health_flags::/eds_status_draining\n") != NULL, "draining");
    lg_strbuf_free(&text);
    lg_strbuf_t json = {0};
    lg_clusters_admin_json(&json, &cfg, 1);
    ok(strstr(json.base, "\"address\":{\"socket_address\":{\"address\":\"::1\",\"port_value\":80}}") != NULL, "json: %s",
       json.base);
    ok(strstr(json.base, "{\"type\":\"GAUGE\",\"name\":\"cx_active\"}") != NULL, "json gauge");
    ok(strstr(json.base, "\"eds_health_status\":\"UNHEALTHY\"") != NULL, "json health");
    lg_strbuf_free(&json);
    lg_cluster_config_release(cfg);
}

static void test_protocols(void)
{
    lg_error_t err = {{0}};
    lg_cluster_config_t *cfg = compile("name: a\nhttp2_protocol_options: {}\n", &err);
    ok(cfg != NULL && cfg->protocol == LG_UPSTREAM_HTTP2 && cfg->h2->max_concurrent_streams == 2147483647,
       "deprecated http2_protocol_options: %s", err.msg);
    lg_cluster_config_release(cfg);
    cfg = compile("name: a\n"
                  "typed_extension_protocol_options:\n"
                  "  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n"
                  "    '@type': type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n"
                  "    use_downstream_protocol_config: {}\n",
                  &err);
    ok(cfg != NULL && cfg->protocol == LG_UPSTREAM_USE_DOWNSTREAM && cfg->h2 != NULL, "use_downstream_protocol_config: %s",
       err.msg);
    lg_cluster_config_release(cfg);
    cfg = compile("name: a\n"
                  "typed_extension_protocol_options:\n"
                  "  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n"
                  "    '@type': type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n"
                  "    explicit_http_config: {http_protocol_options: {}}\n",
                  &err);
    ok(cfg != NULL && cfg->protocol == LG_UPSTREAM_HTTP1, "explicit http1: %s", err.msg);
    lg_cluster_config_release(cfg);
    cfg = compile("name: a\nmax_requests_per_connection: 4\nlb_policy: RANDOM\n", &err);
    ok(cfg != NULL && cfg->max_requests_per_connection == 4 && cfg->lb == &lg_lb_random, "deprecated max_requests_per_connection");
    lg_cluster_config_release(cfg);
}

static void test_errors(void)
{
    expect_error("name: ''\n", "name: must not be empty");
    expect_error("name: a\ntype: LOGICAL_DNS\n", "load_assignment: LOGICAL_DNS clusters must have a single host");
    expect_error("name: a\ntype: ORIGINAL_DST\n", "type: ORIGINAL_DST clusters are not supported");
    expect_error("name: a\nlb_policy: RING_HASH\n", "lb_policy: unsupported lb_policy RING_HASH");
    expect_error("name: a\nlb_policy: MAGLEV\n", "lb_policy: unsupported lb_policy MAGLEV");
    expect_error("name: a\nconnect_timeout: 0s\n", "connect_timeout: value must be greater than 0s");
    expect_error("name: a\nlb_policy: LEAST_REQUEST\nleast_request_lb_config: {choice_count: 1}\n",
                 "least_request_lb_config.choice_count: value must be greater than or equal to 2");
    expect_error("name: a\ncommon_lb_config: {healthy_panic_threshold: {value: 101}}\n",
                 "common_lb_config.healthy_panic_threshold: value must be inside range [0, 100]");
    expect_error("name: a\ncircuit_breakers: {thresholds: [{retry_budget: {}}]}\n",
                 "circuit_breakers.thresholds[0].retry_budget: not supported");
    expect_error("name: a\ncircuit_breakers: {per_host_thresholds: [{max_connections: 1}]}\n",
                 "circuit_breakers.per_host_thresholds: not supported");
    expect_error("name: a\ntransport_socket: {name: envoy.transport_sockets.tls}\n",
                 "transport_socket: typed_config: the TLS transport socket needs a typed_config "
                 "(envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext)");
    expect_error(
        "name: a\nload_assignment:\n"
        "  endpoints:\n"
        "  - lb_endpoints:\n"
        "    - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 1}}}\n"
        "    - endpoint: {address: {socket_address: {address: nope, port_value: 1}}}\n",
        "load_assignment.endpoints[0].lb_endpoints[1].endpoint.address.socket_address.address: malformed IP address: nope");
    expect_error("name: a\nload_assignment:\n"
                 "  endpoints:\n"
                 "  - lb_endpoints:\n"
                 "    - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 1}}}\n"
                 "      load_balancing_weight: 0\n",
                 "load_assignment.endpoints[0].lb_endpoints[0].load_balancing_weight: value must be greater than or equal to 1");
    expect_error("name: a\nload_assignment:\n"
                 "  endpoints:\n"
                 "  - lb_endpoints:\n"
                 "    - endpoint: {}\n",
                 "load_assignment.endpoints[0].lb_endpoints[0].endpoint.address: must be set");
    expect_error("name: a\nload_assignment: {endpoints: [{priority: 1}]}\n",
                 "load_assignment.endpoints[0].priority: only priority 0 is supported");
    expect_error("name: a\n"
                 "typed_extension_protocol_options:\n"
                 "  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n"
                 "    '@type': type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n"
                 "    explicit_http_config: {http3_protocol_options: {}}\n",
                 "typed_extension_protocol_options[envoy.extensions.upstreams.http.v3.HttpProtocolOptions]"
                 ".explicit_http_config.http3_protocol_options: HTTP/3 upstreams are not supported");
    expect_error("name: a\n"
                 "typed_extension_protocol_options:\n"
                 "  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n"
                 "    '@type': type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n"
                 "    common_http_protocol_options: {max_connection_duration: 5s}\n",
                 "typed_extension_protocol_options[envoy.extensions.upstreams.http.v3.HttpProtocolOptions]"
                 ".common_http_protocol_options.max_connection_duration: not supported");
    expect_error("name: a\n"
                 "typed_extension_protocol_options:\n"
                 "  envoy.filters.network.thrift_proxy:\n"
                 "    '@type': type.googleapis.com/google.protobuf.Empty\n",
                 "typed_extension_protocol_options[envoy.filters.network.thrift_proxy]: unknown protocol options");
    expect_error("name: a\nhttp2_protocol_options: {max_concurrent_streams: 0}\n",
                 "http2_protocol_options.max_concurrent_streams: value must be inside range [1, 2147483647]");
}

static void test_eds(void)
{
    lg_error_t err = {{0}};
    lg_cluster_config_t *cfg = compile("name: eds\ntype: EDS\neds_cluster_config: {service_name: svc}\n", &err);
    ok(cfg != NULL && cfg->discovery == LG_CLUSTER_EDS && cfg->n_hosts == 0, "EDS starts empty: %s", err.msg);
    if (cfg == NULL)
        return;
    ok_str(cfg->eds_service_name, "svc");
    Envoy__Config__Endpoint__V3__ClusterLoadAssignment cla = ENVOY__CONFIG__ENDPOINT__V3__CLUSTER_LOAD_ASSIGNMENT__INIT;
    Envoy__Config__Endpoint__V3__LocalityLbEndpoints loc = ENVOY__CONFIG__ENDPOINT__V3__LOCALITY_LB_ENDPOINTS__INIT;
    Envoy__Config__Endpoint__V3__LbEndpoint lbe = ENVOY__CONFIG__ENDPOINT__V3__LB_ENDPOINT__INIT;
    Envoy__Config__Endpoint__V3__Endpoint ep = ENVOY__CONFIG__ENDPOINT__V3__ENDPOINT__INIT;
    Envoy__Config__Core__V3__Address addr = ENVOY__CONFIG__CORE__V3__ADDRESS__INIT;
    Envoy__Config__Core__V3__SocketAddress sa = ENVOY__CONFIG__CORE__V3__SOCKET_ADDRESS__INIT;
    Envoy__Config__Endpoint__V3__LbEndpoint *lbes[] = {&lbe};
    Envoy__Config__Endpoint__V3__LocalityLbEndpoints *locs[] = {&loc};
    sa.address = "192.168.1.1";
    sa.port_specifier_case = ENVOY__CONFIG__CORE__V3__SOCKET_ADDRESS__PORT_SPECIFIER_PORT_VALUE;
    sa.port_value = 443;
    addr.address_case = ENVOY__CONFIG__CORE__V3__ADDRESS__ADDRESS_SOCKET_ADDRESS;
    addr.socket_address = &sa;
    ep.address = &addr;
    lbe.host_identifier_case = ENVOY__CONFIG__ENDPOINT__V3__LB_ENDPOINT__HOST_IDENTIFIER_ENDPOINT;
    lbe.endpoint = &ep;
    loc.n_lb_endpoints = 1;
    loc.lb_endpoints = lbes;
    cla.n_endpoints = 1;
    cla.endpoints = locs;
    lg_cluster_config_t *filled = lg_cluster_config_with_endpoints(cfg, &cla, &err);
    ok(filled != NULL && filled->n_hosts == 1, "with endpoints: %s", err.msg);
    if (filled != NULL) {
        ok_str(filled->hosts[0]->address, "192.168.1.1:443");
        ok(filled->shared == cfg->shared, "stats shared with the cluster");
        lg_cluster_config_t *quiet = lg_cluster_config_with_endpoints(filled, &cla, &err);
        ok(quiet != NULL && lg_host_config_stats_peek(filled->hosts[0]) == NULL &&
               lg_host_config_stats_peek(quiet->hosts[0]) == NULL,
           "host counters are allocated by their first write, not carried while unwritten");
        lg_cluster_config_release(quiet);
        lg_host_config_stats(filled->hosts[0])[LG_HOST_STAT_rq_total] = 5;
        lg_cluster_config_t *again = lg_cluster_config_with_endpoints(filled, &cla, &err);
        ok(again != NULL && lg_host_config_stats_peek(again->hosts[0])[LG_HOST_STAT_rq_total] == 5,
           "host counters carry over by address");
        ok(lg_stats_block_value(lg_cluster_config_stats(again), LG_CLUSTER_STAT_update_success) == 3, "update_success");
        lg_cluster_config_release(again);
    }
    /* One block per cluster: the EDS subscription's stats are in it (EDS clusters only). */
    lg_stats_block_t *sb = lg_cluster_config_stats(cfg);
    lg_stats_control_add(sb, LG_CLUSTER_STAT_update_attempt, 1);
    uint64_t v = 0;
    ok(lg_stats_lookup("cluster.eds.update_attempt", &v) == 0 && v == 1 &&
           lg_stats_lookup("cluster.eds.init_fetch_timeout", &v) == 0,
       "an EDS cluster lists its subscription stats");
    ok(malloc_usable_size(sb->rows[lg_stats_nworkers]) < 24 * sizeof(uint64_t),
       "its control row holds the membership and update stats only: %zu bytes", malloc_usable_size(sb->rows[lg_stats_nworkers]));
    lg_cluster_config_t *st = compile("name: eds\ntype: STATIC\n", &err);
    ok(st != NULL && lg_cluster_config_stats(st) == sb && lg_stats_lookup("cluster.eds.update_attempt", &v) == 0 && v == 1,
       "a change of type keeps the block and its counters: %s", err.msg);
    lg_cluster_config_release(st);
    st = compile("name: plain\ntype: STATIC\n", &err);
    ok(st != NULL && lg_stats_lookup("cluster.plain.update_success", &v) == 0 &&
           lg_stats_lookup("cluster.plain.update_attempt", &v) == 0 && lg_stats_lookup("cluster.plain.update_no_rebuild", &v) == 0 &&
           lg_stats_lookup("cluster.plain.update_rejected", &v) != 0 && lg_stats_lookup("cluster.plain.init_fetch_timeout", &v) != 0,
       "a static cluster lists Envoy's config update stats but not the EDS subscription's");
    lg_cluster_config_release(st);
    sa.address = "bad";
    lg_cluster_config_t *bad = lg_cluster_config_with_endpoints(cfg, &cla, &err);
    ok(bad == NULL, "bad endpoint rejected");
    ok_str(err.msg, "endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address: malformed IP address: bad");
    lg_cluster_config_release(filled);
    lg_cluster_config_release(cfg);
}

#define AUTO_SNI_CLUSTER                                                                              \
    "name: tls\n"                                                                                     \
    "type: EDS\n"                                                                                     \
    "%s"                                                                                              \
    "transport_socket:\n"                                                                             \
    "  name: envoy.transport_sockets.tls\n"                                                           \
    "  typed_config:\n"                                                                               \
    "    '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n" \
    "    %s\n"                                                                                        \
    "typed_extension_protocol_options:\n"                                                             \
    "  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n"                                     \
    "    '@type': type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n"       \
    "    explicit_http_config: {http_protocol_options: {}}\n"                                         \
    "    upstream_http_protocol_options: {%s}\n"

static lg_cluster_config_t *compile_fmt(lg_error_t *err, const char *fmt, const char *a, const char *b, const char *c)
{
    char yaml[2048];
    snprintf(yaml, sizeof(yaml), fmt, a, b, c);
    return compile(yaml, err);
}

/* auto_sni, auto_san_validation, override_auto_sni_header; max_session_keys;
 * what tells two versions of a TLS cluster apart. */
static void test_upstream_tls_options(void)
{
    lg_error_t err = {{0}};
    lg_cluster_config_t *cfg = compile_fmt(&err, AUTO_SNI_CLUSTER, "", "sni: a.example.com",
                                           "auto_sni: true, auto_san_validation: true, override_auto_sni_header: X-Name");
    ok(cfg != NULL, "compile: %s", err.msg);
    if (cfg == NULL)
        return;
    ok(cfg->auto_sni && cfg->auto_san_validation, "auto_sni and auto_san_validation");
    ok_str(cfg->override_auto_sni_header, "x-name");
    ok(cfg->tls != NULL && cfg->tls->max_session_keys == 1, "max_session_keys defaults to 1");
    /* an EDS copy owns its own copy of the header name (both are released) */
    Envoy__Config__Endpoint__V3__ClusterLoadAssignment cla = ENVOY__CONFIG__ENDPOINT__V3__CLUSTER_LOAD_ASSIGNMENT__INIT;
    lg_cluster_config_t *filled = lg_cluster_config_with_endpoints(cfg, &cla, &err);
    ok(filled != NULL && filled->override_auto_sni_header != cfg->override_auto_sni_header &&
           strcmp(filled->override_auto_sni_header, "x-name") == 0 && filled->auto_sni,
       "EDS copy keeps the options");
    lg_cluster_config_release(filled);
    /* the same UpstreamTlsContext compiles to "the same" context; another SNI does not */
    lg_cluster_config_t *same =
        compile_fmt(&err, AUTO_SNI_CLUSTER, "connect_timeout: 3s\n", "sni: a.example.com", "auto_sni: true");
    lg_cluster_config_t *other = compile_fmt(&err, AUTO_SNI_CLUSTER, "", "sni: b.example.com", "");
    lg_cluster_config_t *nokeys = compile_fmt(&err, AUTO_SNI_CLUSTER, "", "max_session_keys: 0", "");
    ok(same != NULL && other != NULL && nokeys != NULL, "compile: %s", err.msg);
    if (same != NULL && other != NULL && nokeys != NULL) {
        ok(same->tls != cfg->tls && lg_tls_context_same(same->tls, cfg->tls), "same UpstreamTlsContext");
        ok(!lg_tls_context_same(other->tls, cfg->tls), "another sni");
        ok(!same->auto_san_validation && same->override_auto_sni_header == NULL, "options of the second compile");
        ok(nokeys->tls->max_session_keys == 0, "max_session_keys: 0");
    }
    lg_cluster_config_release(same);
    lg_cluster_config_release(other);
    lg_cluster_config_release(nokeys);
    lg_cluster_config_release(cfg);
    expect_error("name: a\n"
                 "typed_extension_protocol_options:\n"
                 "  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n"
                 "    '@type': type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n"
                 "    upstream_http_protocol_options: {auto_sni: true, override_auto_sni_header: 'x y'}\n",
                 "typed_extension_protocol_options[envoy.extensions.upstreams.http.v3.HttpProtocolOptions]"
                 ".upstream_http_protocol_options.override_auto_sni_header: invalid header name \"x y\"");
}

static void test_dns(void)
{
    lg_error_t err = {{0}};
    lg_cluster_config_t *cfg = compile("name: a\ntype: STRICT_DNS\n", &err);
    ok(cfg != NULL && cfg->discovery == LG_CLUSTER_STRICT_DNS && cfg->dns->n_targets == 0 && cfg->n_hosts == 0,
       "STRICT_DNS without endpoints (initialized at once, as Envoy)");
    ok(cfg != NULL && cfg->dns->refresh_ms == 5000 && cfg->dns->family == LG_DNS_AUTO && cfg->dns->failure_base_ms == 0,
       "defaults: 5 s, AUTO, failures retried at the refresh rate");
    lg_cluster_config_release(cfg);
    cfg = compile("name: a\ntype: STRICT_DNS\ndns_refresh_rate: 0.25s\ndns_lookup_family: V4_PREFERRED\nrespect_dns_ttl: true\n"
                  "dns_failure_refresh_rate: {base_interval: 1s}\n"
                  "typed_dns_resolver_config: {name: envoy.network.dns_resolver.cares, typed_config: {'@type': "
                  "type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig, resolvers: "
                  "[{socket_address: {address: 127.0.0.9, port_value: 5353}}, {socket_address: {address: '::1'}}], "
                  "dns_resolver_options: {use_tcp_for_dns_lookups: true}}}\n"
                  "load_assignment: {endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: a.example, "
                  "port_value: 80}}}}, {endpoint: {address: {socket_address: {address: 10.0.0.1, port_value: 81}}}}]}]}\n",
                  &err);
    ok(cfg != NULL, "STRICT_DNS with settings: %s", err.msg);
    if (cfg != NULL) {
        const lg_dns_spec_t *d = cfg->dns;
        ok(d->refresh_ms == 250 && d->family == LG_DNS_V4_PREFERRED && d->respect_ttl && !d->logical, "refresh, family, ttl");
        ok(d->failure_base_ms == 1000 && d->failure_max_ms == 10000, "failure backoff: base, 10x base by default");
        ok(d->n_resolvers == 2 && d->use_tcp && lg_address_port((const struct sockaddr *)&d->resolvers[0]) == 5353 &&
               lg_address_port((const struct sockaddr *)&d->resolvers[1]) == 53,
           "c-ares resolvers (port 53 by default) and options");
        ok(d->n_targets == 2 && strcmp(d->targets[0].name, "a.example") == 0 && d->targets[0].port == 80 &&
               strcmp(d->targets[1].name, "10.0.0.1") == 0 && d->targets[1].port == 81,
           "one target per lb_endpoint, IP literals too");
        ok(cfg->n_hosts == 0, "no host before an answer");
    }
    lg_cluster_config_release(cfg);
    cfg = compile("name: a\ntype: LOGICAL_DNS\n"
                  "load_assignment: {endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: a.example, "
                  "port_value: 80}}}}]}]}\n",
                  &err);
    ok(cfg != NULL && cfg->discovery == LG_CLUSTER_LOGICAL_DNS && cfg->dns->logical && cfg->dns->n_targets == 1, "LOGICAL_DNS");
    lg_cluster_config_release(cfg);
    expect_error("name: a\ntype: STRICT_DNS\ndns_lookup_family: V4_ONLY\n"
                 "load_assignment: {endpoints: [{priority: 1, lb_endpoints: [{endpoint: {address: {socket_address: {address: "
                 "a.example, port_value: 80}}}}]}]}\n",
                 "load_assignment.endpoints[0].priority: only priority 0 is supported");
    expect_error("name: a\ntype: STRICT_DNS\n"
                 "load_assignment: {endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: a.example, "
                 "port_value: 80, resolver_name: x}}}}]}]}\n",
                 "load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.resolver_name: STRICT_DNS "
                 "clusters must NOT have a custom resolver name set");
    expect_error("name: a\ntype: STRICT_DNS\ndns_failure_refresh_rate: {max_interval: 1s}\n",
                 "dns_failure_refresh_rate.base_interval: value is required");
    expect_error("name: a\ntype: STRICT_DNS\ntyped_dns_resolver_config: {name: x, typed_config: {'@type': "
                 "type.googleapis.com/google.protobuf.Empty}}\n",
                 "typed_dns_resolver_config.typed_config: unsupported DNS resolver type 'google.protobuf.Empty'");
}

int main(void)
{
    lg_stats_init(1);
    test_defaults();
    test_full();
    test_protocols();
    test_errors();
    test_eds();
    test_dns();
    test_upstream_tls_options();
    lg_stats_shutdown();
    return done();
}
