#include <math.h>
#include <unistd.h>
#include "test.h"
#include "legate/pbjson.h"
#include "envoy/config/bootstrap/v3/bootstrap.pb-c.h"
#include "envoy/config/cluster/v3/cluster.pb-c.h"
#include "envoy/config/core/v3/socket_option.pb-c.h"
#include "envoy/config/listener/v3/listener.pb-c.h"
#include "envoy/extensions/filters/http/router/v3/router.pb-c.h"
#include "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.pb-c.h"
#include "google/protobuf/duration.pb-c.h"
#include "google/protobuf/struct.pb-c.h"
#include "google/protobuf/timestamp.pb-c.h"
#include "google/protobuf/wrappers.pb-c.h"

typedef Envoy__Config__Bootstrap__V3__Bootstrap bootstrap_t;
typedef Envoy__Extensions__Filters__Network__HttpConnectionManager__V3__HttpConnectionManager hcm_t;

static const char bootstrap_yaml[] = "admin:\n"                                                                  /* 1 */
                                     "  address:\n"                                                              /* 2 */
                                     "    socket_address: { address: 127.0.0.1, port_value: 9901 }\n"            /* 3 */
                                     "node:\n"                                                                   /* 4 */
                                     "  id: node-1\n"                                                            /* 5 */
                                     "  metadata: {team: edge, replicas: 3, canary: true}\n"                     /* 6 */
                                     "static_resources:\n"                                                       /* 7 */
                                     "  listeners:\n"                                                            /* 8 */
                                     "  - name: listener_0\n"                                                    /* 9 */
                                     "    address:\n"                                                            /* 10 */
                                     "      socket_address: {address: 0.0.0.0, port_value: 10000}\n"             /* 11 */
                                     "    filter_chains:\n"                                                      /* 12 */
                                     "    - filters:\n"                                                          /* 13 */
                                     "      - name: envoy.filters.network.http_connection_manager\n"             /* 14 */
                                     "        typed_config:\n"                                                   /* 15 */
                                     "          \"@type\": type.googleapis.com/envoy.extensions.filters.network" /* 16 */
                                     ".http_connection_manager.v3.HttpConnectionManager\n"                       /* 16 */
                                     "          stat_prefix: ingress_http\n"                                     /* 17 */
                                     "          codec_type: AUTO\n"                                              /* 18 */
                                     "          route_config:\n"                                                 /* 19 */
                                     "            name: local_route\n"                                           /* 20 */
                                     "            virtual_hosts:\n"                                              /* 21 */
                                     "            - name: backend\n"                                             /* 22 */
                                     "              domains: [\"*\"]\n"                                          /* 23 */
                                     "              routes:\n"                                                   /* 24 */
                                     "              - match: { prefix: \"/\" }\n"                                /* 25 */
                                     "                route: { cluster: service_a, timeout: 1.5s }\n"            /* 26 */
                                     "          http_filters:\n"                                                 /* 27 */
                                     "          - name: envoy.filters.http.router\n"                             /* 28 */
                                     "            typed_config:\n"                                               /* 29 */
                                     "              \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router\n"
                                     "              suppress_envoy_headers: true\n" /* 31 */
                                     "  clusters:\n"                                /* 32 */
                                     "  - name: service_a\n"                        /* 33 */
                                     "    connect_timeout: 0.25s\n"                 /* 34 */
                                     "    type: STATIC\n"                           /* 35 */
                                     "    lb_policy: LEAST_REQUEST\n"               /* 36 */
                                     "    per_connection_buffer_limit_bytes: 32768\n"
                                     "    load_assignment:\n"
                                     "      cluster_name: service_a\n"
                                     "      endpoints:\n"
                                     "      - lb_endpoints:\n"
                                     "        - endpoint:\n"
                                     "            address:\n"
                                     "              socket_address: { address: 127.0.0.1, port_value: 8080 }\n"
                                     "          metadata:\n"
                                     "            filter_metadata:\n"
                                     "              envoy.lb: {canary: true}\n";

static lg_node_t *parse(const char *yaml, const char *name)
{
    lg_error_t err = {{0}};
    lg_node_t *n = lg_yaml_parse(yaml, strlen(yaml), name, &err);
    ok(n != NULL, "parse failed: %s", err.msg);
    return n;
}

/* Decodes yaml as `desc`; returns NULL and leaves the error in err on failure. */
static ProtobufCMessage *decode_flags(const ProtobufCMessageDescriptor *desc, const char *yaml, int flags, lg_error_t *err)
{
    err->msg[0] = '\0';
    lg_node_t *n = lg_yaml_parse(yaml, strlen(yaml), "envoy.yaml", err);
    if (n == NULL)
        return NULL;
    ProtobufCMessage *m = lg_pbjson_decode(desc, n, flags, err);
    lg_node_free(n);
    return m;
}

static ProtobufCMessage *decode(const ProtobufCMessageDescriptor *desc, const char *yaml, lg_error_t *err)
{
    return decode_flags(desc, yaml, 0, err);
}

static ProtobufCMessage *decode_ok(const ProtobufCMessageDescriptor *desc, const char *yaml)
{
    lg_error_t err;
    ProtobufCMessage *m = decode(desc, yaml, &err);
    ok(m != NULL, "decoding %s failed: %s", yaml, err.msg);
    return m;
}

static void expect_error(const ProtobufCMessageDescriptor *desc, const char *yaml, const char *want)
{
    lg_error_t err;
    ProtobufCMessage *m = decode(desc, yaml, &err);
    ok(m == NULL, "decoding %s should fail", yaml);
    ok_str(err.msg, want);
    if (m != NULL)
        protobuf_c_message_free_unpacked(m, NULL);
}

static void check_bootstrap(const bootstrap_t *b)
{
    ok(b->admin != NULL && b->admin->address->socket_address->port_value == 9901, "admin port");
    ok_str(b->admin->address->socket_address->address, "127.0.0.1");
    ok_str(b->node->id, "node-1");
    Google__Protobuf__Struct *md = b->node->metadata;
    ok(md != NULL && md->n_fields == 3, "node metadata");
    ok_str(md->fields[0]->key, "team");
    ok_str(md->fields[0]->value->string_value, "edge");
    ok(md->fields[1]->value->kind_case == GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE && md->fields[1]->value->number_value == 3,
       "number in Struct");
    ok(md->fields[2]->value->kind_case == GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE && md->fields[2]->value->bool_value, "bool");

    ok(b->static_resources->n_listeners == 1, "one listener");
    Envoy__Config__Listener__V3__Listener *l = b->static_resources->listeners[0];
    ok_str(l->name, "listener_0");
    ok(l->address->socket_address->port_value == 10000, "listener port");
    ok(l->n_filter_chains == 1 && l->filter_chains[0]->n_filters == 1, "filter chain");
    Envoy__Config__Listener__V3__Filter *f = l->filter_chains[0]->filters[0];
    ok_str(f->name, "envoy.filters.network.http_connection_manager");
    ok(f->config_type_case == ENVOY__CONFIG__LISTENER__V3__FILTER__CONFIG_TYPE_TYPED_CONFIG, "typed_config oneof case");
    lg_error_t err;
    hcm_t *hcm = (hcm_t *)lg_any_unpack(
        f->typed_config, &envoy__extensions__filters__network__http_connection_manager__v3__http_connection_manager__descriptor,
        &err);
    ok(hcm != NULL, "unpack hcm: %s", err.msg);
    if (hcm == NULL)
        return;
    ok_str(hcm->stat_prefix, "ingress_http");
    ok(hcm->codec_type ==
           ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_CONNECTION_MANAGER__CODEC_TYPE__AUTO,
       "codec type");
    ok(hcm->route_specifier_case ==
           ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_CONNECTION_MANAGER__ROUTE_SPECIFIER_ROUTE_CONFIG,
       "route_config oneof");
    Envoy__Config__Route__V3__RouteConfiguration *rc = hcm->route_config;
    ok_str(rc->name, "local_route");
    ok(rc->n_virtual_hosts == 1 && rc->virtual_hosts[0]->n_domains == 1, "virtual host");
    ok_str(rc->virtual_hosts[0]->domains[0], "*");
    Envoy__Config__Route__V3__Route *r = rc->virtual_hosts[0]->routes[0];
    ok_str(r->match->prefix, "/");
    ok_str(r->route->cluster, "service_a");
    ok(r->route->timeout->seconds == 1 && r->route->timeout->nanos == 500000000, "route timeout 1.5s");
    ok(hcm->n_http_filters == 1, "one http filter");
    Envoy__Extensions__Filters__Http__Router__V3__Router *router = (void *)lg_any_unpack(
        hcm->http_filters[0]->typed_config, &envoy__extensions__filters__http__router__v3__router__descriptor, &err);
    ok(router != NULL && router->suppress_envoy_headers, "router config");
    protobuf_c_message_free_unpacked(&router->base, NULL);
    protobuf_c_message_free_unpacked(&hcm->base, NULL);

    ok(b->static_resources->n_clusters == 1, "one cluster");
    Envoy__Config__Cluster__V3__Cluster *c = b->static_resources->clusters[0];
    ok_str(c->name, "service_a");
    ok(c->connect_timeout->seconds == 0 && c->connect_timeout->nanos == 250000000, "connect_timeout");
    ok(c->cluster_discovery_type_case == ENVOY__CONFIG__CLUSTER__V3__CLUSTER__CLUSTER_DISCOVERY_TYPE_TYPE &&
           c->type == ENVOY__CONFIG__CLUSTER__V3__CLUSTER__DISCOVERY_TYPE__STATIC,
       "cluster type STATIC");
    ok(c->lb_policy == ENVOY__CONFIG__CLUSTER__V3__CLUSTER__LB_POLICY__LEAST_REQUEST, "lb_policy");
    ok(c->per_connection_buffer_limit_bytes != NULL && c->per_connection_buffer_limit_bytes->value == 32768, "UInt32Value");
    Envoy__Config__Endpoint__V3__LbEndpoint *e = c->load_assignment->endpoints[0]->lb_endpoints[0];
    ok(e->endpoint->address->socket_address->port_value == 8080, "endpoint port");
    ok(e->metadata->n_filter_metadata == 1, "filter_metadata map entry");
    ok_str(e->metadata->filter_metadata[0]->key, "envoy.lb");
    ok(e->metadata->filter_metadata[0]->value->fields[0]->value->bool_value, "map value Struct");
}

static void test_bootstrap(void)
{
    lg_error_t err;
    bootstrap_t *b = (bootstrap_t *)decode(&envoy__config__bootstrap__v3__bootstrap__descriptor, bootstrap_yaml, &err);
    ok(b != NULL, "bootstrap: %s", err.msg);
    if (b == NULL)
        return;
    check_bootstrap(b);

    /* encode -> decode -> encode is stable, and the decoded copy has the same values */
    lg_strbuf_t json = {NULL}, json2 = {NULL};
    lg_pbjson_encode(&json, &b->base, 2);
    ok(strstr(json.base, "\"connect_timeout\": \"0.250s\"") != NULL, "Duration printed: %s", json.base);
    ok(strstr(json.base, "\"@type\": \"type.googleapis.com/envoy.extensions.filters.http.router.v3.Router\",\n") != NULL,
       "Any printed with @type first");
    ok(strstr(json.base, "\"type\": \"STATIC\"") != NULL, "enum by name");
    ok(strstr(json.base, "\"lb_policy\": \"LEAST_REQUEST\"") != NULL, "enum by name");
    ok(strstr(json.base, "\"per_connection_buffer_limit_bytes\": 32768") != NULL, "wrapper bare");
    ok(strstr(json.base, "\"replicas\": 3,") != NULL, "Struct number");
    ok(strstr(json.base, "\"envoy.lb\": {") != NULL, "map as object");
    ok(strstr(json.base, "\"codec_type\"") == NULL, "default enum (AUTO = 0) omitted");
    ok(strncmp(json.base, "{\n  \"node\": {\n    \"id\": \"node-1\",", 31) == 0, "2-space pretty print: %.60s", json.base);
    bootstrap_t *b2 = (bootstrap_t *)decode(&envoy__config__bootstrap__v3__bootstrap__descriptor, json.base, &err);
    ok(b2 != NULL, "re-decode: %s", err.msg);
    if (b2 != NULL) {
        check_bootstrap(b2);
        lg_pbjson_encode(&json2, &b2->base, 2);
        ok_str(json2.base, json.base);
        protobuf_c_message_free_unpacked(&b2->base, NULL);
    }
    /* the compact form and the json-name form decode the same */
    lg_strbuf_free(&json2);
    lg_pbjson_encode_ex(&json2, &b->base, 0, LG_PBJSON_JSON_NAMES);
    ok(strstr(json2.base, "\"connectTimeout\":\"0.250s\"") != NULL, "json names: %s", json2.base);
    ok(strchr(json2.base, '\n') == NULL, "compact");
    b2 = (bootstrap_t *)decode(&envoy__config__bootstrap__v3__bootstrap__descriptor, json2.base, &err);
    ok(b2 != NULL, "decode json names: %s", err.msg);
    if (b2 != NULL) {
        lg_strbuf_t json3 = {NULL};
        lg_pbjson_encode(&json3, &b2->base, 2);
        ok_str(json3.base, json.base);
        lg_strbuf_free(&json3);
        protobuf_c_message_free_unpacked(&b2->base, NULL);
    }
    lg_strbuf_free(&json);
    lg_strbuf_free(&json2);
    protobuf_c_message_free_unpacked(&b->base, NULL);
}

/* Static clusters kept as wire bytes: the bootstrap packs (and so dumps) the same. */
static void test_compact_repeated(void)
{
    lg_error_t err;
    bootstrap_t *b = (bootstrap_t *)decode(&envoy__config__bootstrap__v3__bootstrap__descriptor,
                                           "static_resources:\n  clusters:\n  - {name: a, connect_timeout: 1s}\n"
                                           "  - {name: b, type: STRICT_DNS}\n  - name: c\n  listeners:\n  - name: l\n",
                                           &err);
    lg_strbuf_t before = {NULL}, after = {NULL};
    lg_pbjson_encode(&before, &b->base, 0);
    lg_pb_compact_repeated(&b->static_resources->base, "clusters");
    ok(b->static_resources->n_clusters == 0 && b->static_resources->clusters == NULL, "compacted field reads empty");
    ok(b->static_resources->n_listeners == 1, "other fields untouched");
    const char *names[] = {"a", "b", "c"};
    size_t pos = 0, i = 0;
    ProtobufCBinaryData bytes;
    while (lg_pb_compacted_next(&b->static_resources->base, "clusters", &pos, &bytes)) {
        Envoy__Config__Cluster__V3__Cluster *c = envoy__config__cluster__v3__cluster__unpack(NULL, bytes.len, bytes.data);
        ok(c != NULL && i < 3 && strcmp(c->name, names[i]) == 0, "compacted element %zu in order", i);
        protobuf_c_message_free_unpacked(&c->base, NULL);
        ++i;
    }
    ok(i == 3, "three compacted elements");
    size_t len = protobuf_c_message_get_packed_size(&b->base);
    uint8_t *wire = malloc(len);
    protobuf_c_message_pack(&b->base, wire);
    bootstrap_t *copy =
        (bootstrap_t *)protobuf_c_message_unpack(&envoy__config__bootstrap__v3__bootstrap__descriptor, NULL, len, wire);
    ok(copy != NULL && copy->static_resources->n_clusters == 3, "a packed copy has the elements back");
    lg_pbjson_encode(&after, &copy->base, 0);
    ok_str(after.base, before.base);
    protobuf_c_message_free_unpacked(&copy->base, NULL);
    free(wire);
    lg_strbuf_free(&before);
    lg_strbuf_free(&after);
    protobuf_c_message_free_unpacked(&b->base, NULL);
}

static void test_duration(void)
{
    static const struct {
        const char *in;
        int64_t s;
        int32_t ns;
        const char *out;
    } cases[] = {{"1.5s", 1, 500000000, "\"1.500s\""},
                 {"0.000000001s", 0, 1, "\"0.000000001s\""},
                 {"-1.5s", -1, -500000000, "\"-1.500s\""},
                 {"-0.5s", 0, -500000000, "\"-0.500s\""},
                 {"5s", 5, 0, "\"5s\""},
                 {"\"0.000020s\"", 0, 20000, "\"0.000020s\""},
                 {"315576000000s", 315576000000, 0, "\"315576000000s\""}};
    for (size_t i = 0; i != LG_ARRAY_SIZE(cases); ++i) {
        Google__Protobuf__Duration *d = (void *)decode_ok(&google__protobuf__duration__descriptor, cases[i].in);
        if (d == NULL)
            continue;
        ok(d->seconds == cases[i].s && d->nanos == cases[i].ns, "%s: got %lld %d", cases[i].in, (long long)d->seconds, d->nanos);
        lg_strbuf_t out = {NULL};
        lg_pbjson_encode(&out, &d->base, 0);
        ok_str(out.base, cases[i].out);
        lg_strbuf_free(&out);
        protobuf_c_message_free_unpacked(&d->base, NULL);
    }
    expect_error(&google__protobuf__duration__descriptor, "5x", "invalid duration \"5x\" (envoy.yaml:1)");
    expect_error(&google__protobuf__duration__descriptor, "1.0000000001s", "invalid duration \"1.0000000001s\" (envoy.yaml:1)");
    expect_error(&google__protobuf__duration__descriptor, "5", "invalid duration \"5\" (envoy.yaml:1)");
    expect_error(&google__protobuf__duration__descriptor, "315576000001s", "invalid duration \"315576000001s\" (envoy.yaml:1)");
    expect_error(&envoy__config__bootstrap__v3__bootstrap__descriptor,
                 "static_resources:\n  clusters:\n  - name: a\n  - name: b\n    connect_timeout: 5x\n",
                 "static_resources.clusters[1].connect_timeout: invalid duration \"5x\" (envoy.yaml:5)");
}

static void test_timestamp(void)
{
    Google__Protobuf__Timestamp *t = (void *)decode_ok(&google__protobuf__timestamp__descriptor, "1972-01-01T10:00:20.021Z");
    ok(t != NULL && t->seconds == 63108020 && t->nanos == 21000000, "timestamp");
    lg_strbuf_t out = {NULL};
    lg_pbjson_encode(&out, &t->base, 0);
    ok_str(out.base, "\"1972-01-01T10:00:20.021Z\"");
    protobuf_c_message_free_unpacked(&t->base, NULL);
    t = (void *)decode_ok(&google__protobuf__timestamp__descriptor, "\"2024-02-29T01:00:00+01:00\"");
    ok(t != NULL && t->seconds == 1709164800 && t->nanos == 0, "timestamp with offset");
    lg_strbuf_free(&out);
    lg_pbjson_encode(&out, &t->base, 0);
    ok_str(out.base, "\"2024-02-29T00:00:00Z\"");
    protobuf_c_message_free_unpacked(&t->base, NULL);
    t = (void *)decode_ok(&google__protobuf__timestamp__descriptor, "1969-12-31T23:59:59.5Z");
    ok(t != NULL && t->seconds == -1 && t->nanos == 500000000, "timestamp before the epoch");
    lg_strbuf_free(&out);
    lg_pbjson_encode(&out, &t->base, 0);
    ok_str(out.base, "\"1969-12-31T23:59:59.500Z\"");
    protobuf_c_message_free_unpacked(&t->base, NULL);
    lg_strbuf_free(&out);
    expect_error(&google__protobuf__timestamp__descriptor, "2023-02-29T00:00:00Z",
                 "invalid timestamp \"2023-02-29T00:00:00Z\" (envoy.yaml:1)");
    expect_error(&google__protobuf__timestamp__descriptor, "2023-01-01 00:00:00",
                 "invalid timestamp \"2023-01-01 00:00:00\" (envoy.yaml:1)");
}

static void test_wrappers(void)
{
    Google__Protobuf__UInt32Value *u = (void *)decode_ok(&google__protobuf__uint32_value__descriptor, "\"4294967295\"");
    ok(u != NULL && u->value == 4294967295u, "UInt32Value from string");
    protobuf_c_message_free_unpacked(&u->base, NULL);
    expect_error(&google__protobuf__uint32_value__descriptor, "4294967296", "invalid uint32 \"4294967296\" (envoy.yaml:1)");
    expect_error(&google__protobuf__uint32_value__descriptor, "-1", "invalid uint32 \"-1\" (envoy.yaml:1)");
    Google__Protobuf__BoolValue *bv = (void *)decode_ok(&google__protobuf__bool_value__descriptor, "yes");
    ok(bv != NULL && bv->value, "BoolValue from YAML 1.1 yes");
    protobuf_c_message_free_unpacked(&bv->base, NULL);
    bv = (void *)decode_ok(&google__protobuf__bool_value__descriptor, "\"false\"");
    ok(bv != NULL && !bv->value, "BoolValue from \"false\"");
    protobuf_c_message_free_unpacked(&bv->base, NULL);
    expect_error(&google__protobuf__bool_value__descriptor, "\"yes\"", "invalid bool \"yes\" (envoy.yaml:1)");
    Google__Protobuf__DoubleValue *dv = (void *)decode_ok(&google__protobuf__double_value__descriptor, "\"NaN\"");
    ok(dv != NULL && isnan(dv->value), "DoubleValue NaN");
    protobuf_c_message_free_unpacked(&dv->base, NULL);
    dv = (void *)decode_ok(&google__protobuf__double_value__descriptor, "-.inf");
    ok(dv != NULL && isinf(dv->value) && dv->value < 0, "DoubleValue -.inf");
    lg_strbuf_t out = {NULL};
    lg_pbjson_encode(&out, &dv->base, 0);
    ok_str(out.base, "\"-Infinity\"");
    protobuf_c_message_free_unpacked(&dv->base, NULL);
    dv = (void *)decode_ok(&google__protobuf__double_value__descriptor, "0.1");
    lg_strbuf_free(&out);
    lg_pbjson_encode(&out, &dv->base, 0);
    ok_str(out.base, "0.1");
    protobuf_c_message_free_unpacked(&dv->base, NULL);
    Google__Protobuf__FloatValue *fv = (void *)decode_ok(&google__protobuf__float_value__descriptor, "0.1");
    lg_strbuf_free(&out);
    lg_pbjson_encode(&out, &fv->base, 0);
    ok_str(out.base, "0.1");
    protobuf_c_message_free_unpacked(&fv->base, NULL);
    expect_error(&google__protobuf__float_value__descriptor, "1e39", "float value 1e39 out of range (envoy.yaml:1)");
    Google__Protobuf__StringValue *sv = (void *)decode_ok(&google__protobuf__string_value__descriptor, "'x: y'");
    ok_str(sv->value, "x: y");
    protobuf_c_message_free_unpacked(&sv->base, NULL);
    Google__Protobuf__BytesValue *by = (void *)decode_ok(&google__protobuf__bytes_value__descriptor, "aGVsbG8=");
    ok(by != NULL && by->value.len == 5 && memcmp(by->value.data, "hello", 5) == 0, "bytes base64");
    protobuf_c_message_free_unpacked(&by->base, NULL);
    by = (void *)decode_ok(&google__protobuf__bytes_value__descriptor, "-_8");
    ok(by != NULL && by->value.len == 2 && by->value.data[0] == 0xfb && by->value.data[1] == 0xff, "bytes url-safe, unpadded");
    lg_strbuf_free(&out);
    lg_pbjson_encode(&out, &by->base, 0);
    ok_str(out.base, "\"+/8=\"");
    protobuf_c_message_free_unpacked(&by->base, NULL);
    expect_error(&google__protobuf__bytes_value__descriptor, "a*b", "invalid base64 \"a*b\" (envoy.yaml:1)");
    Google__Protobuf__Int64Value *iv = (void *)decode_ok(&google__protobuf__int64_value__descriptor, "0x10");
    ok(iv != NULL && iv->value == 16, "plain hex int as yaml-cpp reads it");
    protobuf_c_message_free_unpacked(&iv->base, NULL);
    lg_strbuf_free(&out);
}

static void test_struct(void)
{
    Google__Protobuf__Struct *s = (void *)decode_ok(
        &google__protobuf__struct__descriptor, "{a: 1, b: [true, null, 'x', ~], c: {d: 2.5}, e: 12345678901, f: \"7\", g: .nan}");
    if (s == NULL)
        return;
    ok(s->n_fields == 6, "six fields");
    ok(s->fields[0]->value->number_value == 1, "a");
    Google__Protobuf__ListValue *l = s->fields[1]->value->list_value;
    ok(l != NULL && l->n_values == 4, "list");
    ok(l->values[0]->kind_case == GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE, "bool in list");
    ok(l->values[1]->kind_case == GOOGLE__PROTOBUF__VALUE__KIND_NULL_VALUE, "null in list");
    ok(l->values[3]->kind_case == GOOGLE__PROTOBUF__VALUE__KIND_NULL_VALUE, "~ in list");
    ok_str(l->values[2]->string_value, "x");
    ok(s->fields[2]->value->struct_value->fields[0]->value->number_value == 2.5, "nested struct");
    ok_str(s->fields[3]->value->string_value, "12345678901"); /* beyond int32: a string, as Envoy does */
    ok_str(s->fields[4]->value->string_value, "7");
    ok_str(s->fields[5]->value->string_value, "NaN");
    lg_strbuf_t out = {NULL};
    lg_pbjson_encode(&out, &s->base, 0);
    ok_str(out.base, "{\"a\":1,\"b\":[true,null,\"x\",null],\"c\":{\"d\":2.5},\"e\":\"12345678901\",\"f\":\"7\",\"g\":\"NaN\"}");
    lg_strbuf_free(&out);
    protobuf_c_message_free_unpacked(&s->base, NULL);

    /* JSON documents type bare tokens as JSON does */
    lg_error_t err;
    s = (void *)decode_flags(&google__protobuf__struct__descriptor, "{\"e\": 12345678901, \"y\": yes, \"t\": true}",
                             LG_PBJSON_JSON_INPUT, &err);
    ok(s != NULL && s->fields[0]->value->kind_case == GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE &&
           s->fields[0]->value->number_value == 12345678901.0,
       "JSON number beyond int32 stays a number");
    ok(s != NULL && s->fields[1]->value->kind_case == GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE, "yes is not a JSON bool");
    ok(s != NULL && s->fields[2]->value->bool_value, "true is");
    protobuf_c_message_free_unpacked(&s->base, NULL);

    ProtobufCMessage *m = decode_ok(&google__protobuf__empty__descriptor, "{}");
    lg_pbjson_encode(&out, m, 2);
    ok_str(out.base, "{}\n");
    lg_strbuf_free(&out);
    protobuf_c_message_free_unpacked(m, NULL);
    expect_error(&google__protobuf__empty__descriptor, "{x: 1}", "x: unknown field \"x\" in google.protobuf.Empty (envoy.yaml:1)");

    Envoy__Config__Bootstrap__V3__Runtime *rt =
        (void *)decode_ok(&envoy__config__bootstrap__v3__runtime__descriptor, "symlink_root: /srv\nbase: {x: 1}\n");
    ok(rt != NULL && rt->base_layer != NULL && rt->base_layer->n_fields == 1, "Runtime.base is base_layer");
    lg_pbjson_encode(&out, &rt->base, 0);
    ok_str(out.base, "{\"symlink_root\":\"/srv\",\"base\":{\"x\":1}}");
    lg_strbuf_free(&out);
    protobuf_c_message_free_unpacked(&rt->base, NULL);
}

static void test_any(void)
{
    Google__Protobuf__Any *a = (void *)decode_ok(&google__protobuf__any__descriptor,
                                                 "{\"@type\": type.googleapis.com/google.protobuf.Duration, value: 2s}");
    lg_error_t err;
    Google__Protobuf__Duration *d = (void *)lg_any_unpack(a, &google__protobuf__duration__descriptor, &err);
    ok(d != NULL && d->seconds == 2, "Any with a WKT uses value: %s", err.msg);
    protobuf_c_message_free_unpacked(&d->base, NULL);
    lg_strbuf_t out = {NULL};
    lg_pbjson_encode(&out, &a->base, 0);
    ok_str(out.base, "{\"@type\":\"type.googleapis.com/google.protobuf.Duration\",\"value\":\"2s\"}");
    lg_strbuf_free(&out);
    ProtobufCMessage *wrong = lg_any_unpack(a, &google__protobuf__timestamp__descriptor, &err);
    ok(wrong == NULL, "unpack as the wrong type fails");
    ok_str(err.msg, "expected a google.protobuf.Timestamp, got type URL \"type.googleapis.com/google.protobuf.Duration\"");
    protobuf_c_message_free_unpacked(&a->base, NULL);

    /* a type outside the registry: no error, the compiler decides (is_optional) */
    a = (void *)decode_ok(&google__protobuf__any__descriptor, "{\"@type\": type.googleapis.com/acme.Unknown, anything: [1, 2]}");
    ok(a != NULL && strcmp(a->type_url, "type.googleapis.com/acme.Unknown") == 0 && a->value.len == 0, "unknown Any type");
    lg_pbjson_encode(&out, &a->base, 0);
    ok_str(out.base, "{\"@type\":\"type.googleapis.com/acme.Unknown\",\"value\":\"\"}");
    lg_strbuf_free(&out);
    protobuf_c_message_free_unpacked(&a->base, NULL);

    /* an Any whose bytes are not in the registry prints them base64 */
    Google__Protobuf__Any raw = GOOGLE__PROTOBUF__ANY__INIT;
    raw.type_url = "type.googleapis.com/acme.Opaque";
    raw.value.data = (uint8_t *)"\x08\x01";
    raw.value.len = 2;
    lg_pbjson_encode(&out, &raw.base, 0);
    ok_str(out.base, "{\"@type\":\"type.googleapis.com/acme.Opaque\",\"value\":\"CAE=\"}");
    lg_strbuf_free(&out);

    expect_error(&google__protobuf__any__descriptor, "{foo: 1}", "missing \"@type\" in google.protobuf.Any (envoy.yaml:1)");
    expect_error(&envoy__config__listener__v3__filter__descriptor,
                 "name: x\ntyped_config:\n  \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router\n"
                 "  bogus: 1\n",
                 "typed_config.bogus: unknown field \"bogus\" in envoy.extensions.filters.http.router.v3.Router (envoy.yaml:4)");

    ok(lg_proto_find("envoy.config.cluster.v3.Cluster") == &envoy__config__cluster__v3__cluster__descriptor, "lg_proto_find");
    ok(lg_proto_find("envoy.config.cluster.v3.Nope") == NULL, "lg_proto_find miss");
    const char *url = "type.googleapis.com/envoy.config.listener.v3.Listener";
    ok(lg_proto_find_by_type_url(url, strlen(url)) == &envoy__config__listener__v3__listener__descriptor, "by type url");
    ok(lg_proto_find_by_type_url(url, strlen(url) - 1) == NULL, "by type url, length respected");
}

static void test_enums_and_oneofs(void)
{
    const ProtobufCMessageDescriptor *cd = &envoy__config__cluster__v3__cluster__descriptor;
    Envoy__Config__Cluster__V3__Cluster *c = (void *)decode_ok(cd, "name: a\ntype: strict_dns\nlb_policy: 5\n");
    ok(c != NULL && c->type == ENVOY__CONFIG__CLUSTER__V3__CLUSTER__DISCOVERY_TYPE__STRICT_DNS, "enum, case-insensitive");
    ok(c != NULL && c->lb_policy == 5, "enum by number");
    protobuf_c_message_free_unpacked(&c->base, NULL);
    expect_error(cd, "name: a\ntype: STATICK\n",
                 "type: invalid value \"STATICK\" for enum envoy.config.cluster.v3.Cluster.DiscoveryType (envoy.yaml:2)");
    expect_error(cd, "name: a\ntype: STATIC\ncluster_type: {name: envoy.clusters.aggregate}\n",
                 "cluster_type: \"type\" and \"cluster_type\" are in the same oneof: only one may be set (envoy.yaml:3)");
    /* a key given twice (here as proto name and json name): the last one wins */
    c = (void *)decode_ok(cd, "name: a\nconnect_timeout: 1s\nconnectTimeout: 2s\n");
    ok(c != NULL && c->connect_timeout->seconds == 2, "last duplicate wins");
    protobuf_c_message_free_unpacked(&c->base, NULL);
    /* null means unset */
    c = (void *)decode_ok(cd, "name: a\nconnect_timeout: null\ntype: ~\nload_assignment:\n");
    ok(c != NULL && c->connect_timeout == NULL && c->cluster_discovery_type_case == 0 && c->load_assignment == NULL, "null unsets");
    protobuf_c_message_free_unpacked(&c->base, NULL);
    expect_error(cd, "name: [a]\n", "name: expected a scalar value, got a list (envoy.yaml:1)");
    expect_error(cd, "name: a\nhealth_checks: {timeout: 1s}\n", "health_checks: expected a list, got a map (envoy.yaml:2)");
    expect_error(cd, "name: a\nhealth_checks: [null]\n", "health_checks[0]: null is not allowed in a list (envoy.yaml:2)");
    expect_error(cd, "- a\n", "expected a map for envoy.config.cluster.v3.Cluster, got a list (envoy.yaml:1)");
}

static void test_unknown_fields(void)
{
    static const char yaml[] = "static_resources:\n"
                               "  listeners:\n"
                               "  - name: l0\n"
                               "    address: {socket_address: {address: 0.0.0.0, port_value: 1}}\n"
                               "  - name: l1\n"
                               "    fooBar: 1\n"
                               "    address: {socket_address: {address: 0.0.0.0, port_value: 2}}\n";
    expect_error(
        &envoy__config__bootstrap__v3__bootstrap__descriptor, yaml,
        "static_resources.listeners[1].fooBar: unknown field \"fooBar\" in envoy.config.listener.v3.Listener (envoy.yaml:6)");
    lg_error_t err;
    lg_log_level_t saved = lg_log_levels[LG_LOGC_config];
    lg_log_levels[LG_LOGC_config] = LG_LOG_OFF; /* keep the expected warnings out of the test output */
    bootstrap_t *b =
        (void *)decode_flags(&envoy__config__bootstrap__v3__bootstrap__descriptor, yaml, LG_PBJSON_ALLOW_UNKNOWN_FIELDS, &err);
    ok(b != NULL && b->static_resources->n_listeners == 2 &&
           b->static_resources->listeners[1]->address->socket_address->port_value == 2,
       "unknown fields skipped with the flag: %s", err.msg);
    protobuf_c_message_free_unpacked(&b->base, NULL);
    Envoy__Config__Cluster__V3__Cluster *c = (void *)decode_flags(
        &envoy__config__cluster__v3__cluster__descriptor, "name: a\nlb_policy: FANCY\n", LG_PBJSON_ALLOW_UNKNOWN_FIELDS, &err);
    ok(c != NULL && c->lb_policy == 0, "unknown enum names skipped with the flag");
    protobuf_c_message_free_unpacked(&c->base, NULL);
    lg_log_levels[LG_LOGC_config] = saved;
}

static void test_int64(void)
{
    const ProtobufCMessageDescriptor *sd = &envoy__config__core__v3__socket_option__descriptor;
    Envoy__Config__Core__V3__SocketOption *so =
        (void *)decode_ok(sd, "level: 1\nname: \"9223372036854775807\"\nint_value: -9000000000\n");
    ok(so != NULL && so->level == 1 && so->name == INT64_MAX && so->int_value == -9000000000LL, "int64 from strings and numbers");
    ok(so != NULL && so->value_case == ENVOY__CONFIG__CORE__V3__SOCKET_OPTION__VALUE_INT_VALUE, "oneof case");
    lg_strbuf_t out = {NULL};
    lg_pbjson_encode(&out, &so->base, 0);
    ok_str(out.base, "{\"level\":\"1\",\"name\":\"9223372036854775807\",\"int_value\":\"-9000000000\"}");
    lg_strbuf_free(&out);
    protobuf_c_message_free_unpacked(&so->base, NULL);
    so = (void *)decode_ok(sd, "level: 1e3\nname: \"0\"\nint_value: 0\n");
    ok(so != NULL && so->level == 1000 && so->value_case == ENVOY__CONFIG__CORE__V3__SOCKET_OPTION__VALUE_INT_VALUE,
       "oneof set at 0");
    lg_pbjson_encode(&out, &so->base, 0);
    ok_str(out.base, "{\"level\":\"1000\",\"int_value\":\"0\"}"); /* a set oneof member prints even at its default */
    lg_strbuf_free(&out);
    protobuf_c_message_free_unpacked(&so->base, NULL);
    expect_error(sd, "level: \"9223372036854775808\"\n", "level: invalid int64 \"9223372036854775808\" (envoy.yaml:1)");
    expect_error(sd, "level: 1.5\n", "level: invalid int64 \"1.5\" (envoy.yaml:1)");
    expect_error(sd, "level: \"0x10\"\n", "level: invalid int64 \"0x10\" (envoy.yaml:1)");
}

static void test_yaml(void)
{
    lg_error_t err;
    const char bad[] = "a: 1\nb:\n  - x\n  y: 2\n";
    lg_node_t *n = lg_yaml_parse(bad, strlen(bad), "bad.yaml", &err);
    ok(n == NULL, "bad YAML rejected");
    ok(strncmp(err.msg, "bad.yaml:4: ", 12) == 0, "error carries file:line: %s", err.msg);
    n = lg_yaml_parse("{a: [1, 2", 9, NULL, &err);
    ok(n == NULL && strncmp(err.msg, "line ", 5) == 0 && strstr(err.msg, "flow sequence") != NULL, "unterminated flow: %s",
       err.msg);
    n = lg_yaml_parse("a: *nope\n", 9, "x.yaml", &err);
    ok(n == NULL, "unknown alias");
    ok_str(err.msg, "x.yaml:1: unknown anchor \"nope\"");

    /* anchors, aliases, merge keys, !ignore keys */
    static const char doc[] = "defs:\n"
                              "  - &tmo 3s\n"
                              "  - &base {connect_timeout: *tmo, lb_policy: RANDOM}\n"
                              "clusters:\n"
                              "  - <<: *base\n"
                              "    name: a\n"
                              "  - <<: *base\n"
                              "    name: b\n"
                              "    lb_policy: MAGLEV\n"
                              "    !ignore scratch: {anything: goes}\n";
    n = parse(doc, "a.yaml");
    const lg_node_t *clusters = lg_node_get(n, "clusters");
    ok(clusters != NULL && clusters->type == LG_NODE_SEQ && clusters->seq.n == 2, "clusters seq");
    const ProtobufCMessageDescriptor *cd = &envoy__config__cluster__v3__cluster__descriptor;
    Envoy__Config__Cluster__V3__Cluster *a = (void *)lg_pbjson_decode(cd, clusters->seq.items[0], 0, &err);
    Envoy__Config__Cluster__V3__Cluster *b = (void *)lg_pbjson_decode(cd, clusters->seq.items[1], 0, &err);
    ok(a != NULL && b != NULL, "decode merged maps: %s", err.msg);
    if (a != NULL && b != NULL) {
        ok_str(a->name, "a");
        ok(a->connect_timeout->seconds == 3 && a->lb_policy == ENVOY__CONFIG__CLUSTER__V3__CLUSTER__LB_POLICY__RANDOM, "merged a");
        ok(b->connect_timeout->seconds == 3 && b->lb_policy == ENVOY__CONFIG__CLUSTER__V3__CLUSTER__LB_POLICY__MAGLEV,
           "own key wins");
    }
    protobuf_c_message_free_unpacked(&a->base, NULL);
    protobuf_c_message_free_unpacked(&b->base, NULL);
    lg_node_free(n);

    /* scalar styles */
    n = parse("- plain\n- 'single'\n- \"double\"\n- !!str 12\n- |\n  block\n", NULL);
    ok(n->seq.items[0]->scalar.style == LG_SCALAR_PLAIN && n->seq.items[1]->scalar.style == LG_SCALAR_QUOTED &&
           n->seq.items[2]->scalar.style == LG_SCALAR_QUOTED && n->seq.items[3]->scalar.style == LG_SCALAR_QUOTED &&
           n->seq.items[4]->scalar.style == LG_SCALAR_QUOTED,
       "scalar styles");
    ok(n->seq.items[4]->line == 5, "line of a node");
    lg_node_free(n);

    /* strict JSON parses as YAML */
    n = parse("{\"a\":{\"b\":[1,2,{\"c\":\"d\"}]},\"e\":null}", "x.json");
    ok(n->type == LG_NODE_MAP && lg_node_is_null(lg_node_get(n, "e")), "JSON");
    lg_node_free(n);

    /* an alias bomb is refused, not expanded */
    lg_strbuf_t bomb = {NULL};
    lg_strbuf_puts(&bomb, "a0: &a0 [x, x, x, x, x, x, x, x]\n");
    for (int i = 1; i != 12; ++i)
        lg_strbuf_printf(&bomb, "a%d: &a%d [*a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d]\n", i, i, i - 1, i - 1, i - 1, i - 1,
                         i - 1, i - 1, i - 1, i - 1);
    n = lg_yaml_parse(bomb.base, bomb.len, "bomb.yaml", &err);
    ok(n == NULL && strstr(err.msg, "bomb.yaml:") == err.msg && strstr(err.msg, "aliases expand to more than") != NULL,
       "alias bomb: %s", err.msg);
    lg_strbuf_free(&bomb);
    /* the same through merge keys */
    lg_strbuf_puts(&bomb, "a0: &a0 [x, x, x, x, x, x, x, x]\n");
    for (int i = 1; i != 12; ++i)
        lg_strbuf_printf(&bomb,
                         "a%d: &a%d {<<: {k1: *a%d, k2: *a%d, k3: *a%d, k4: *a%d, k5: *a%d, k6: *a%d, k7: *a%d, k8: *a%d}}\n", i, i,
                         i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1);
    n = lg_yaml_parse(bomb.base, bomb.len, "bomb.yaml", &err);
    ok(n == NULL && strstr(err.msg, "too large") != NULL, "merge key bomb: %s", err.msg);
    lg_node_free(n);
    lg_strbuf_free(&bomb);
    /* aliases that expand to just under the cap are fine */
    lg_strbuf_puts(&bomb, "a0: &a0 [x, x, x, x, x, x, x, x]\n");
    for (int i = 1; i != 7; ++i)
        lg_strbuf_printf(&bomb, "a%d: &a%d [*a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d]\n", i, i, i - 1, i - 1, i - 1, i - 1,
                         i - 1, i - 1, i - 1, i - 1);
    n = lg_yaml_parse(bomb.base, bomb.len, "bomb.yaml", &err);
    ok(n != NULL && n->weight > (1u << 21) && n->weight < LG_NODE_MAX_WEIGHT, "aliases under the cap: %s",
       n != NULL ? "" : err.msg);
    lg_node_free(n);
    lg_strbuf_free(&bomb);

    /* plain nodes are bounded by the file size, not by the alias cap (100,000 clusters are ~4M nodes) */
    lg_strbuf_t big = {NULL};
    lg_strbuf_puts(&big, "[");
    for (size_t i = 0; i != LG_NODE_MAX_WEIGHT + 1000; ++i)
        lg_strbuf_puts(&big, "0,");
    lg_strbuf_puts(&big, "1]");
    n = lg_yaml_parse(big.base, big.len, "big.json", &err);
    ok(n != NULL && n->type == LG_NODE_SEQ && n->seq.n == LG_NODE_MAX_WEIGHT + 1001 && n->weight > LG_NODE_MAX_WEIGHT,
       "a plain document above the alias cap loads: %s", n != NULL ? "" : err.msg);
    lg_node_free(n);
    lg_strbuf_free(&big);

    /* deep nesting is refused */
    lg_strbuf_t deep = {NULL};
    for (int i = 0; i != 200; ++i)
        lg_strbuf_puts(&deep, "[");
    n = lg_yaml_parse(deep.base, deep.len, "deep.yaml", &err);
    ok(n == NULL && strstr(err.msg, "nested too deeply") != NULL, "deep: %s", err.msg);
    lg_strbuf_free(&deep);

    n = parse("", "empty.yaml");
    ok(n != NULL && lg_node_is_null(n), "empty document is null");
    lg_node_free(n);
}

/* Same tree, scalar styles, weights and lines (b's lines shifted by `dline`). */
static int same_tree(const lg_node_t *a, const lg_node_t *b, unsigned dline)
{
    if (a->type != b->type || a->weight != b->weight || a->line + dline != b->line)
        return 0;
    switch (a->type) {
    case LG_NODE_SCALAR:
        return a->scalar.len == b->scalar.len && memcmp(a->scalar.str, b->scalar.str, a->scalar.len) == 0 &&
               a->scalar.style == b->scalar.style;
    case LG_NODE_MAP:
        if (a->map.n != b->map.n)
            return 0;
        for (size_t i = 0; i != a->map.n; ++i)
            if (!same_tree(a->map.pairs[i].key, b->map.pairs[i].key, dline) ||
                !same_tree(a->map.pairs[i].value, b->map.pairs[i].value, dline))
                return 0;
        return 1;
    case LG_NODE_SEQ:
        if (a->seq.n != b->seq.n)
            return 0;
        for (size_t i = 0; i != a->seq.n; ++i)
            if (!same_tree(a->seq.items[i], b->seq.items[i], dline))
                return 0;
        return 1;
    }
    return 0;
}

static lg_node_t *parse_str(const char *text, lg_error_t *err)
{
    return lg_yaml_parse(text, strlen(text), "f.json", err);
}

/* Strict JSON takes a faster parser than libyaml's: the trees must be the ones libyaml builds. */
static void test_json_fast_path(void)
{
    static const char *const docs[] = {
        "\n {\"a\" :\t[1,\t2] }\n\n",
        "{\"a\": 1, \"b\": [true, false, null, -0.5e+3, 12], \"c\": {}, \"d\": [], \"e\": \"x\"}",
        "{\n  \"esc\": \"q\\\" b\\\\ s\\/ n\\n t\\t r\\r f\\f b\\b u\\u00e9\\u20ac nul\\u0000\",\n  "
        "\"k\":\n[\n{\"x\":\"y\"},\n[[1],[2]]\n]\n}",
        "[{\"dup\": 1, \"dup\": 2}, \"\", \"<<\", 0, 1E5]",
    };
    lg_error_t err;
    for (size_t i = 0; i != sizeof(docs) / sizeof(docs[0]); ++i) {
        lg_strbuf_t yaml = {NULL};
        lg_strbuf_printf(&yaml, "---\n%s", docs[i]); /* not JSON at its start: libyaml builds it */
        lg_node_t *fast = lg_yaml_parse(docs[i], strlen(docs[i]), "f.json", &err);
        lg_node_t *slow = lg_yaml_parse(yaml.base, yaml.len, "f.json", &err);
        ok(fast != NULL && slow != NULL && same_tree(fast, slow, 1), "JSON fast path builds libyaml's tree (doc %zu)", i);
        lg_node_free(fast);
        lg_node_free(slow);
        lg_strbuf_free(&yaml);
    }
    /* not strict JSON: libyaml's reading and errors */
    lg_node_t *n = parse_str("{a: 1, \"b\": [x y]}", &err);
    ok(n != NULL && n->map.n == 2 && strcmp(lg_node_get(n, "b")->seq.items[0]->scalar.str, "x y") == 0, "YAML flow falls back");
    lg_node_free(n);
    n = parse_str("{\"a\": \"caf\xc3\xa9\"}", &err);
    ok(n != NULL && strcmp(lg_node_get(n, "a")->scalar.str, "caf\xc3\xa9") == 0, "UTF-8 text falls back");
    lg_node_free(n);
    n = parse_str("{\"a\": 1,}", &err);
    ok(n != NULL || strstr(err.msg, "f.json:") != NULL, "invalid JSON goes to libyaml");
    lg_node_free(n);
    n = parse_str("{\"a\": \"\\ud800\"}", &err);
    ok(n == NULL && strstr(err.msg, "f.json:1:") != NULL, "a lone surrogate is libyaml's error: %s", err.msg);
    /* where YAML reads strict JSON otherwise, libyaml decides (found by a differential fuzz) */
    n = parse_str("{\"a\"\n: 1}", &err);
    ok(n == NULL && strstr(err.msg, "f.json:2:") != NULL, "a key's colon on the next line: %s", err.msg);
    n = parse_str("\t{\"a\": 1}", &err);
    ok(n == NULL && strstr(err.msg, "f.json:1:") != NULL, "a tab before the document: %s", err.msg);
    n = parse_str("{\"a\": \"\x7f\"}", &err);
    ok(n == NULL && strstr(err.msg, "control characters") != NULL, "DEL in a string: %s", err.msg);
    n = parse_str("{\"a\": [1, 2}", &err);
    ok(n == NULL && strstr(err.msg, "f.json:1:") != NULL, "unbalanced: libyaml's error: %s", err.msg);
}

static void test_merge(void)
{
    lg_node_t *base = parse("a: {x: 1, y: [1, 2]}\nb: keep\nc: [p]\n", "base.yaml");
    lg_node_t *over = parse("a: {y: [3], z: 4}\nb: new\nc: ~\nd: added\n", "over.yaml");
    ++base->refcnt; /* a shared base must not be modified in place */
    lg_node_t *m = lg_node_merge(base, over);
    ok(m != base, "shared base copied");
    const lg_node_t *a = lg_node_get(m, "a");
    ok(a != NULL && a->map.n == 3, "maps merged recursively");
    ok_str(lg_node_get(a, "x")->scalar.str, "1");
    const lg_node_t *y = lg_node_get(a, "y");
    ok(y->seq.n == 3 && strcmp(y->seq.items[2]->scalar.str, "3") == 0, "sequences concatenated");
    ok_str(lg_node_get(m, "b")->scalar.str, "new");
    ok(lg_node_get(m, "c")->type == LG_NODE_SEQ, "null does not replace");
    ok_str(lg_node_get(m, "d")->scalar.str, "added");
    /* root 1 + a (key 1, map 1 + x 2 + y 1+4 + z 2) + b 2 + c (1 + 2) + d 2 */
    ok(m->weight == 19, "weight recomputed: %zu", m->weight);
    ok(lg_node_get(base, "a")->map.n == 2, "base untouched");
    lg_node_free(base);
    lg_node_free(m);

    /* -c file with --config-yaml on top, as protobuf MergeFrom */
    char path[] = "/tmp/test_pbjson_XXXXXX.yaml";
    int fd = mkstemps(path, 5);
    ok(fd >= 0, "temp file");
    static const char file_yaml[] = "node: {id: from-file, cluster: c1, metadata: {a: 1, b: 2}}\n"
                                    "admin: {address: {socket_address: {address: 1.2.3.4, port_value: 1}}}\n"
                                    "static_resources:\n"
                                    "  clusters:\n"
                                    "  - {name: a, type: STATIC, connect_timeout: 1s}\n"
                                    "  - {name: b, connect_timeout: 1s}\n";
    ok(write(fd, file_yaml, sizeof(file_yaml) - 1) == (ssize_t)sizeof(file_yaml) - 1, "write");
    close(fd);
    lg_error_t err;
    bootstrap_t *b = (void *)lg_pbjson_load_file(&envoy__config__bootstrap__v3__bootstrap__descriptor, path,
                                                 "node: {id: from-flag, metadata: {b: 3, c: 4}}\n"
                                                 "admin: {address: {pipe: {path: /tmp/admin.sock}}}\n"
                                                 "static_resources: {clusters: [{name: c}]}\n",
                                                 0, &err);
    ok(b != NULL, "load_file: %s", err.msg);
    if (b != NULL) {
        ok_str(b->node->id, "from-flag");
        ok_str(b->node->cluster, "c1");
        Google__Protobuf__Struct *md = b->node->metadata;
        ok(md->n_fields == 3 && md->fields[0]->value->number_value == 1 && md->fields[1]->value->number_value == 3 &&
               strcmp(md->fields[2]->key, "c") == 0,
           "Struct merged by key");
        ok(b->admin->address->address_case == ENVOY__CONFIG__CORE__V3__ADDRESS__ADDRESS_PIPE &&
               strcmp(b->admin->address->pipe->path, "/tmp/admin.sock") == 0,
           "a oneof member replaces another");
        ok(b->static_resources->n_clusters == 3, "clusters appended");
        ok_str(b->static_resources->clusters[2]->name, "c");
        protobuf_c_message_free_unpacked(&b->base, NULL);
    }
    b = (void *)lg_pbjson_load_file(&envoy__config__bootstrap__v3__bootstrap__descriptor, path, "static_resources: {clusters: 1}\n",
                                    0, &err);
    ok(b == NULL, "bad override");
    ok_str(err.msg, "static_resources.clusters: expected a list, got 1 (--config-yaml:1)");
    b = (void *)lg_pbjson_load_file(&envoy__config__bootstrap__v3__bootstrap__descriptor, NULL, "node: {id: only-flag}", 0, &err);
    ok(b != NULL && strcmp(b->node->id, "only-flag") == 0, "--config-yaml alone");
    protobuf_c_message_free_unpacked(&b->base, NULL);
    b = (void *)lg_pbjson_load_file(&envoy__config__bootstrap__v3__bootstrap__descriptor, NULL, NULL, 0, &err);
    ok(b == NULL, "neither path nor yaml");
    b = (void *)lg_pbjson_load_file(&envoy__config__bootstrap__v3__bootstrap__descriptor, "/tmp/x.pb_text", NULL, 0, &err);
    ok(b == NULL && strstr(err.msg, ".pb_text") != NULL, "pb_text rejected");
    unlink(path);

    /* other extensions are JSON: numbers stay numbers, surrogate pairs are accepted */
    char jpath[] = "/tmp/test_pbjson_XXXXXX.json";
    fd = mkstemps(jpath, 5);
    static const char json[] = "{\"node\": {\"id\": \"a\\\\ud83d \\ud83d\\ude00\", \"metadata\": {\"big\": 12345678901}}}";
    ok(write(fd, json, sizeof(json) - 1) == (ssize_t)sizeof(json) - 1, "write json");
    close(fd);
    b = (void *)lg_pbjson_load_file(&envoy__config__bootstrap__v3__bootstrap__descriptor, jpath, NULL, 0, &err);
    ok(b != NULL, "JSON bootstrap: %s", err.msg);
    if (b != NULL) {
        ok_str(b->node->id, "a\\ud83d \xf0\x9f\x98\x80");
        ok(b->node->metadata->fields[0]->value->kind_case == GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE, "JSON number in Struct");
        protobuf_c_message_free_unpacked(&b->base, NULL);
    }
    unlink(jpath);

    /* a .pb file is a binary Bootstrap */
    char pbpath[] = "/tmp/test_pbjson_XXXXXX.pb";
    fd = mkstemps(pbpath, 3);
    Envoy__Config__Core__V3__Node node = ENVOY__CONFIG__CORE__V3__NODE__INIT;
    bootstrap_t bs = ENVOY__CONFIG__BOOTSTRAP__V3__BOOTSTRAP__INIT;
    node.id = "binary";
    bs.node = &node;
    uint8_t buf[64];
    size_t len = protobuf_c_message_pack(&bs.base, buf);
    ok(write(fd, buf, len) == (ssize_t)len, "write pb");
    close(fd);
    b = (void *)lg_pbjson_load_file(&envoy__config__bootstrap__v3__bootstrap__descriptor, pbpath, "node: {cluster: x}", 0, &err);
    ok(b != NULL && strcmp(b->node->id, "binary") == 0 && strcmp(b->node->cluster, "x") == 0, "binary bootstrap + override");
    protobuf_c_message_free_unpacked(&b->base, NULL);
    unlink(pbpath);
}

static void test_many_clusters(void)
{
    lg_strbuf_t y = {NULL};
    lg_strbuf_puts(&y, "static_resources:\n  clusters:\n");
    for (int i = 0; i != 10000; ++i)
        lg_strbuf_printf(&y,
                         "  - name: cluster_%d\n    connect_timeout: 0.25s\n    type: STRICT_DNS\n    lb_policy: ROUND_ROBIN\n"
                         "    load_assignment:\n      cluster_name: cluster_%d\n      endpoints:\n      - lb_endpoints:\n"
                         "        - endpoint: {address: {socket_address: {address: host%d.example.com, port_value: 80}}}\n",
                         i, i, i);
    lg_error_t err;
    uint64_t start = lg_now_us();
    lg_node_t *n = lg_yaml_parse(y.base, y.len, "big.yaml", &err);
    uint64_t parsed = lg_now_us();
    bootstrap_t *b = (void *)lg_pbjson_decode(&envoy__config__bootstrap__v3__bootstrap__descriptor, n, 0, &err);
    uint64_t decoded = lg_now_us();
    ok(b != NULL && b->static_resources->n_clusters == 10000, "10000 clusters: %s", err.msg);
#ifndef __SANITIZE_ADDRESS__
    /* bounds loose enough for a loaded machine; the -O2 build takes ~150 ms (YAML) + ~50 ms (decode) */
    ok(decoded - parsed < 1000000, "10000 clusters decoded in %llu ms", (unsigned long long)(decoded - parsed) / 1000);
    ok(parsed - start < 3000000, "10000 clusters parsed in %llu ms", (unsigned long long)(parsed - start) / 1000);
#endif
    printf("# 10000 clusters: YAML %llu ms, decode %llu ms\n", (unsigned long long)(parsed - start) / 1000,
           (unsigned long long)(decoded - parsed) / 1000);
    lg_node_free(n);
    protobuf_c_message_free_unpacked(&b->base, NULL);
    lg_strbuf_free(&y);
}

int main(void)
{
    test_bootstrap();
    test_compact_repeated();
    test_duration();
    test_timestamp();
    test_wrappers();
    test_struct();
    test_any();
    test_enums_and_oneofs();
    test_unknown_fields();
    test_int64();
    test_yaml();
    test_json_fast_path();
    test_merge();
    test_many_clusters();
    return done();
}
