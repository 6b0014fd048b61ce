/* The HCM's gRPC timeout helpers (Envoy's Grpc::Common::getGrpcTimeout /
 * toGrpcTimeout) and the compile of upgrade_configs and the HTTP/2 options
 * that tunnels need. */
#include "test.h"
#include "legate/hcm.h"
#include "legate/http.h"
#include "legate/pbjson.h"

typedef Envoy__Extensions__Filters__Network__HttpConnectionManager__V3__HttpConnectionManager hcm_proto_t;

static int64_t timeout_of(const char *value)
{
    h2o_mem_pool_t pool;
    lg_req_head_t req = {0};
    h2o_mem_init_pool(&pool);
    if (value != NULL)
        lg_headers_add(&pool, &req.headers, LG_LIT("grpc-timeout"), h2o_iovec_init(value, strlen(value)));
    int64_t ms = lg_hcm_grpc_timeout_ms(&req);
    h2o_mem_clear_pool(&pool);
    return ms;
}

static void test_grpc_timeout_parse(void)
{
    static const struct {
        const char *value;
        int64_t ms;
    } cases[] = {
        {"1S", 1000},       {"100m", 100}, {"2M", 120000}, {"1H", 3600000}, {"5u", 1},
        {"1500u", 2},       {"1000u", 1},  {"1n", 1},      {"0m", 0},       {"99999999m", 99999999},
        {"100000000m", -1}, {"10", -1},    {"m", -1},      {"", -1},        {"1x", -1},
        {"-1S", -1},        {" 1S", -1},   {"1.5S", -1},   {NULL, -1},
    };
    for (size_t i = 0; i != LG_ARRAY_SIZE(cases); ++i) {
        int64_t got = timeout_of(cases[i].value);
        ok(got == cases[i].ms, "grpc-timeout \"%s\": got %lld, want %lld", cases[i].value ? cases[i].value : "(absent)",
           (long long)got, (long long)cases[i].ms);
    }
}

static void expect_value(uint64_t ms, const char *want)
{
    h2o_mem_pool_t pool;
    h2o_mem_init_pool(&pool);
    h2o_iovec_t v = lg_hcm_grpc_timeout_value(&pool, ms);
    ok(h2o_memis(v.base, v.len, want, strlen(want)), "%llu ms: got \"%.*s\", want \"%s\"", (unsigned long long)ms, (int)v.len,
       v.base, want);
    h2o_mem_clear_pool(&pool);
}

static void test_grpc_timeout_format(void)
{
    expect_value(0, "0m");
    expect_value(300, "300m");
    expect_value(99999999, "99999999m");
    expect_value(100000000, "100000S");
    expect_value(99999999000ull, "99999999S");
    expect_value(100000000000ull, "1666666M");
    expect_value(UINT64_MAX, "99999999H");
}

static int no_cluster_check(void *ctx, const char *name)
{
    return 1;
}

static lg_hcm_config_t *compile(const char *extra, lg_error_t *err)
{
    char yaml[4096];
    snprintf(yaml, sizeof(yaml),
             "stat_prefix: t\n"
             "route_config: {virtual_hosts: [{name: v, domains: ['*'], routes: [{match: {prefix: /}, route: {cluster: c}}]}]}\n"
             "http_filters: [{name: envoy.filters.http.router, typed_config: "
             "{'@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]\n%s",
             extra);
    lg_node_t *node = lg_yaml_parse(yaml, strlen(yaml), "test", err);
    ok(node != NULL, "yaml: %s", err->msg);
    if (node == NULL)
        return NULL;
    hcm_proto_t *m = (hcm_proto_t *)lg_pbjson_decode(
        &envoy__extensions__filters__network__http_connection_manager__v3__http_connection_manager__descriptor, node, 0, err);
    lg_node_free(node);
    ok(m != NULL, "decode: %s", err->msg);
    if (m == NULL)
        return NULL;
    lg_hcm_compile_ctx_t ctx = {.cluster_exists = no_cluster_check};
    lg_hcm_config_t *c = lg_hcm_config_compile(m, &ctx, err);
    protobuf_c_message_free_unpacked(&m->base, NULL);
    return c;
}

static void test_upgrade_configs(void)
{
    lg_error_t err = {{0}};
    lg_hcm_config_t *c = compile("upgrade_configs: [{upgrade_type: WebSocket}, {upgrade_type: CONNECT, enabled: false}]\n", &err);
    ok(c != NULL, "compile: %s", err.msg);
    if (c == NULL)
        return;
    ok(c->n_upgrades == 2, "two upgrades, got %zu", c->n_upgrades);
    ok(h2o_memis(c->upgrades[0].type.base, c->upgrades[0].type.len, H2O_STRLIT("websocket")) && c->upgrades[0].enabled,
       "websocket enabled by default, lower-cased");
    ok(h2o_memis(c->upgrades[1].type.base, c->upgrades[1].type.len, H2O_STRLIT("connect")) && !c->upgrades[1].enabled,
       "CONNECT disabled");
    ok(!c->h2_allow_connect && !c->h2_stream_error_on_invalid, "HTTP/2 defaults");
    lg_hcm_config_free(c);

    c = compile("upgrade_configs: [{upgrade_type: websocket}, {upgrade_type: WEBSOCKET}]\n", &err);
    ok(c == NULL, "duplicate upgrade types are rejected");
    ok_str(err.msg, "upgrade_configs[1]: Error: multiple upgrade configs with the same name: 'WEBSOCKET'");

    c = compile("upgrade_configs: [{upgrade_type: websocket, filters: [{name: envoy.filters.http.router}]}]\n", &err);
    ok(c == NULL, "per-upgrade filters are rejected");
    ok_str(err.msg, "upgrade_configs[0].filters: per-upgrade filter chains are not supported");
}

static void test_http2_options(void)
{
    lg_error_t err = {{0}};
    lg_hcm_config_t *c =
        compile("http2_protocol_options: {allow_connect: true}\nstream_error_on_invalid_http_message: true\n", &err);
    ok(c != NULL && c->h2_allow_connect && c->h2_stream_error_on_invalid, "allow_connect and the HCM's stream error setting");
    lg_hcm_config_free(c);
    c = compile("http2_protocol_options: {override_stream_error_on_invalid_http_message: false}\n"
                "stream_error_on_invalid_http_message: true\n",
                &err);
    ok(c != NULL && !c->h2_stream_error_on_invalid, "the HTTP/2 override wins over the HCM's setting");
    lg_hcm_config_free(c);
}

int main(void)
{
    test_grpc_timeout_parse();
    test_grpc_timeout_format();
    test_upgrade_configs();
    test_http2_options();
    return done();
}
