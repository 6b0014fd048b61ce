#include <stdarg.h>
#include <h2o/string_.h>
#include "test.h"
#include "legate/http.h"
#include "legate/pbjson.h"
#include "legate/scoped_routes.h"

typedef Envoy__Extensions__Filters__Network__HttpConnectionManager__V3__ScopedRoutes scoped_routes_pb_t;

static h2o_mem_pool_t pool;

static int cluster_exists(void *ctx, const char *name)
{
    return strcmp(name, "backend") == 0;
}

static const lg_route_compile_opts_t route_opts = {1, cluster_exists, NULL};
static const lg_scoped_routes_opts_t inline_opts = {1, &route_opts};

static scoped_routes_pb_t *decode(const char *yaml)
{
    lg_error_t err = {{0}};
    lg_node_t *node = lg_yaml_parse(yaml, strlen(yaml), "test.yaml", &err);
    if (node == NULL) {
        fprintf(stderr, "yaml: %s\n", err.msg);
        return NULL;
    }
    ProtobufCMessage *m = lg_pbjson_decode(
        &envoy__extensions__filters__network__http_connection_manager__v3__scoped_routes__descriptor, node, 0, &err);
    lg_node_free(node);
    if (m == NULL)
        fprintf(stderr, "decode: %s\n", err.msg);
    return (scoped_routes_pb_t *)m;
}

/* Compiles a ScopedRoutes YAML (key builder + scoped_route_configurations_list,
 * which may be absent). On error returns NULL with err set. */
static lg_scoped_routes_t *compile_ex(const char *yaml, const lg_scoped_routes_opts_t *opts, lg_error_t *err)
{
    scoped_routes_pb_t *m = decode(yaml);
    if (m == NULL) {
        lg_error(err, "bad test yaml");
        return NULL;
    }
    lg_scoped_routes_t *sr = NULL;
    lg_scope_key_builder_t *kb = lg_scope_key_builder_compile(m->scope_key_builder, "scoped_routes.scope_key_builder", err);
    if (kb != NULL) {
        size_t n =
            m->scoped_route_configurations_list != NULL ? m->scoped_route_configurations_list->n_scoped_route_configurations : 0;
        sr = lg_scoped_routes_compile(kb, n != 0 ? m->scoped_route_configurations_list->scoped_route_configurations : NULL, n, opts,
                                      "scoped_routes.scoped_route_configurations_list.scoped_route_configurations", err);
        lg_scope_key_builder_release(kb); /* the set keeps its own reference */
    }
    protobuf_c_message_free_unpacked(&m->base, NULL);
    return sr;
}

static lg_scoped_routes_t *compile(const char *yaml)
{
    lg_error_t err = {{0}};
    lg_scoped_routes_t *sr = compile_ex(yaml, NULL, &err);
    if (sr == NULL)
        fprintf(stderr, "compile: %s\n", err.msg);
    return sr;
}

static const char *compile_error(const char *yaml, const lg_scoped_routes_opts_t *opts)
{
    static lg_error_t err;
    lg_scoped_routes_t *sr = compile_ex(yaml, opts, &err);
    if (sr != NULL) {
        lg_scoped_routes_release(sr);
        return "OK";
    }
    return err.msg;
}

/* A GET request with "name", "value" header pairs, NULL-terminated. */
static lg_req_head_t *mkreq(const char *authority, ...)
{
    lg_req_head_t *r = h2o_mem_alloc_pool(&pool, sizeof(*r));
    memset(r, 0, sizeof(*r));
    r->method = h2o_iovec_init(H2O_STRLIT("GET"));
    r->scheme = h2o_iovec_init(H2O_STRLIT("http"));
    r->authority = h2o_strdup(&pool, authority, SIZE_MAX);
    r->path = h2o_iovec_init(H2O_STRLIT("/"));
    r->version = LG_HTTP_11;
    va_list ap;
    va_start(ap, authority);
    const char *name;
    while ((name = va_arg(ap, const char *)) != NULL) {
        const char *value = va_arg(ap, const char *);
        lg_headers_add(&pool, &r->headers, h2o_strdup(&pool, name, SIZE_MAX), h2o_strdup(&pool, value, SIZE_MAX));
    }
    va_end(ap);
    return r;
}

/* The scope name matched, or "(none)". */
static const char *scope_of(const lg_scoped_routes_t *sr, const lg_req_head_t *req)
{
    const lg_scope_t *s = lg_scoped_routes_match(sr, req);
    return s != NULL ? s->name : "(none)";
}

/* Fragment 0 of the request under a one-fragment builder, or "(none)". */
static const char *fragment0(const char *builder_yaml, const lg_req_head_t *req)
{
    static char buf[256];
    lg_error_t err = {{0}};
    scoped_routes_pb_t *m = decode(builder_yaml);
    lg_scope_key_builder_t *kb = m != NULL ? lg_scope_key_builder_compile(m->scope_key_builder, "kb", &err) : NULL;
    if (m != NULL)
        protobuf_c_message_free_unpacked(&m->base, NULL);
    if (kb == NULL)
        return "(bad builder)";
    h2o_iovec_t v;
    const char *r = "(none)";
    if (lg_scope_key_fragment(kb, 0, req, &v)) {
        snprintf(buf, sizeof(buf), "[%.*s]", (int)v.len, v.base);
        r = buf;
    }
    lg_scope_key_builder_release(kb);
    return r;
}

static void test_index(void)
{
    const char *by_index1 =
        "scope_key_builder: {fragments: [{header_value_extractor: {name: X-Addr, element_separator: ';', index: 1}}]}";
    const char *whole = "scope_key_builder: {fragments: [{header_value_extractor: {name: x-addr, index: 0}}]}";
    ok_str(fragment0(by_index1, mkreq("h", "x-addr", "a;b;c", NULL)), "[b]");
    ok_str(fragment0(by_index1, mkreq("h", "x-addr", "a;;c", NULL)), "[]");
    ok_str(fragment0(by_index1, mkreq("h", "x-addr", "a", NULL)), "(none)");
    ok_str(fragment0(by_index1, mkreq("h", "x-other", "a;b", NULL)), "(none)");
    /* the first value of a repeated header, as Envoy */
    ok_str(fragment0(by_index1, mkreq("h", "x-addr", "a;first", "x-addr", "b;second", NULL)), "[first]");
    ok_str(fragment0(whole, mkreq("h", "x-addr", "a;b;c", NULL)), "[a;b;c]");
    ok_str(fragment0(whole, mkreq("h", "x-addr", "", NULL)), "[]");
    /* a multi-byte separator splits on the whole string */
    const char *multi =
        "scope_key_builder: {fragments: [{header_value_extractor: {name: x-addr, element_separator: '::', index: 2}}]}";
    ok_str(fragment0(multi, mkreq("h", "x-addr", "a::b:c::d", NULL)), "[d]");
    ok_str(fragment0(multi, mkreq("h", "x-addr", "a::b:c:d", NULL)), "(none)");
    /* pseudo-headers and the host alias come from the request head */
    const char *authority =
        "scope_key_builder: {fragments: [{header_value_extractor: {name: ':authority', element_separator: '.', index: 0}}]}";
    const char *host = "scope_key_builder: {fragments: [{header_value_extractor: {name: Host, element_separator: '.', index: 1}}]}";
    ok_str(fragment0(authority, mkreq("tenant.example.com", NULL)), "[tenant]");
    ok_str(fragment0(host, mkreq("tenant.example.com", NULL)), "[example]");
}

static void test_element(void)
{
    const char *kv = "scope_key_builder: {fragments: [{header_value_extractor: {name: x-kv, element_separator: ';', element: "
                     "{separator: '=', key: "
                     "b}}}]}";
    ok_str(fragment0(kv, mkreq("h", "x-kv", "a=1;b=2;b=3", NULL)), "[2]");
    ok_str(fragment0(kv, mkreq("h", "x-kv", "a=1;b", NULL)), "[]");        /* no separator: empty value */
    ok_str(fragment0(kv, mkreq("h", "x-kv", "b=x=y", NULL)), "[x=y]");     /* split once */
    ok_str(fragment0(kv, mkreq("h", "x-kv", "a=1; b=2", NULL)), "(none)"); /* " b" is not "b" */
    ok_str(fragment0(kv, mkreq("h", "x-kv", "bb=1;a=b", NULL)), "(none)");
    ok_str(fragment0(kv, mkreq("h", NULL)), "(none)");
    /* without element_separator the whole value is the only element */
    const char *one =
        "scope_key_builder: {fragments: [{header_value_extractor: {name: x-kv, element: {separator: ':', key: id}}}]}";
    ok_str(fragment0(one, mkreq("h", "x-kv", "id:42;x", NULL)), "[42;x]");
    ok_str(fragment0(one, mkreq("h", "x-kv", "x;id:42", NULL)), "(none)");
}

static const char *two_fragments =
    "scope_key_builder:\n"
    "  fragments:\n"
    "  - header_value_extractor: {name: x-tenant, index: 0}\n"
    "  - header_value_extractor: {name: x-kv, element_separator: ',', element: {separator: '=', key: env}}\n"
    "scoped_route_configurations_list:\n"
    "  scoped_route_configurations:\n"
    "  - {name: acme-prod, route_configuration_name: rc-acme-prod, key: {fragments: [{string_key: acme}, "
    "{string_key: prod}]}}\n"
    "  - {name: acme-dev, route_configuration_name: rc-acme-dev, key: {fragments: [{string_key: acme}, "
    "{string_key: dev}]}}\n"
    "  - {name: swapped, route_configuration_name: rc-swapped, key: {fragments: [{string_key: prod}, "
    "{string_key: acme}]}}\n"
    "  - {name: short, route_configuration_name: rc-short, key: {fragments: [{string_key: acme}]}}\n"
    "  - {name: empty, on_demand: true, route_configuration_name: rc-empty, key: {fragments: [{string_key: "
    "''}, {string_key: ''}]}}\n";

static void test_lookup(void)
{
    lg_scoped_routes_t *sr = compile(two_fragments);
    ok(sr != NULL, "two-fragment set compiles");
    if (sr == NULL)
        return;
    ok(lg_scoped_routes_count(sr) == 5, "5 scopes");
    ok_str(scope_of(sr, mkreq("h", "x-tenant", "acme", "x-kv", "a=1,env=prod", NULL)), "acme-prod");
    ok_str(scope_of(sr, mkreq("h", "x-kv", "env=dev", "x-tenant", "acme", NULL)), "acme-dev");
    ok_str(lg_scoped_routes_find(sr, mkreq("h", "x-tenant", "acme", "x-kv", "env=dev", NULL)), "rc-acme-dev");
    ok(lg_scoped_routes_find_table(sr, mkreq("h", "x-tenant", "acme", "x-kv", "env=dev", NULL)) == NULL,
       "SRDS scopes have no table");
    /* the tuple is compared in order, exactly */
    ok_str(scope_of(sr, mkreq("h", "x-tenant", "prod", "x-kv", "env=acme", NULL)), "swapped");
    ok_str(scope_of(sr, mkreq("h", "x-tenant", "ACME", "x-kv", "env=prod", NULL)), "(none)");
    ok_str(scope_of(sr, mkreq("h", "x-tenant", "acme", "x-kv", "env=staging", NULL)), "(none)");
    /* a missing fragment means no key: not even the one-fragment scope matches */
    ok_str(scope_of(sr, mkreq("h", "x-tenant", "acme", NULL)), "(none)");
    ok_str(scope_of(sr, mkreq("h", "x-tenant", "acme", "x-kv", "a=1", NULL)), "(none)");
    ok(lg_scoped_routes_find(sr, mkreq("h", NULL)) == NULL, "no headers: no scope");
    /* empty fragments are values like any other */
    ok_str(scope_of(sr, mkreq("h", "x-tenant", "", "x-kv", "env", NULL)), "empty");
    const lg_scope_t *e = lg_scoped_routes_by_name(sr, "empty");
    ok(e != NULL && e->on_demand && e->n_fragments == 2, "by_name finds the on_demand scope");
    ok(lg_scoped_routes_by_name(sr, "nope") == NULL, "by_name misses");
    ok_str(lg_scoped_routes_get(sr, 0)->name, "acme-prod");
    ok(lg_scoped_routes_get(sr, 5) == NULL, "get out of range");
    /* a retained set outlives one release */
    lg_scoped_routes_retain(sr);
    lg_scoped_routes_release(sr);
    ok_str(scope_of(sr, mkreq("h", "x-tenant", "acme", "x-kv", "env=prod", NULL)), "acme-prod");
    lg_scoped_routes_release(sr);
}

/* ("ab","c") and ("a","bc") are different keys; many scopes all resolve. */
static void test_many_and_boundaries(void)
{
    const char *yaml = "scope_key_builder:\n"
                       "  fragments:\n"
                       "  - header_value_extractor: {name: x-a, index: 0}\n"
                       "  - header_value_extractor: {name: x-b, index: 0}\n"
                       "scoped_route_configurations_list:\n"
                       "  scoped_route_configurations:\n"
                       "  - {name: s1, route_configuration_name: r1, key: {fragments: [{string_key: ab}, {string_key: c}]}}\n"
                       "  - {name: s2, route_configuration_name: r2, key: {fragments: [{string_key: a}, {string_key: bc}]}}\n";
    lg_scoped_routes_t *sr = compile(yaml);
    ok(sr != NULL, "boundary set compiles");
    if (sr != NULL) {
        ok_str(scope_of(sr, mkreq("h", "x-a", "ab", "x-b", "c", NULL)), "s1");
        ok_str(scope_of(sr, mkreq("h", "x-a", "a", "x-b", "bc", NULL)), "s2");
        ok_str(scope_of(sr, mkreq("h", "x-a", "abc", "x-b", "", NULL)), "(none)");
        lg_scoped_routes_release(sr);
    }

    enum { N = 500 };
    size_t cap = 256 + N * 96;
    char *big = malloc(cap);
    size_t w = (size_t)snprintf(big, cap,
                                "scope_key_builder: {fragments: [{header_value_extractor: {name: x-id, index: 0}}]}\n"
                                "scoped_route_configurations_list:\n  scoped_route_configurations:\n");
    for (int i = 0; i != N; ++i)
        w += (size_t)snprintf(big + w, cap - w,
                              "  - {name: s%d, route_configuration_name: r%d, key: {fragments: [{string_key: k%d}]}}\n", i, i, i);
    sr = compile(big);
    free(big);
    ok(sr != NULL, "500 scopes compile");
    if (sr == NULL)
        return;
    int found = 0;
    for (int i = 0; i != N; ++i) {
        char id[16], want[16];
        snprintf(id, sizeof(id), "k%d", i);
        snprintf(want, sizeof(want), "r%d", i);
        const char *got = lg_scoped_routes_find(sr, mkreq("h", "x-id", id, NULL));
        found += got != NULL && strcmp(got, want) == 0;
    }
    ok(found == N, "every scope found (%d/%d)", found, N);
    ok(lg_scoped_routes_find(sr, mkreq("h", "x-id", "k500", NULL)) == NULL, "k500 misses");
    lg_scoped_routes_release(sr);

    /* an empty set misses everything */
    sr = compile("scope_key_builder: {fragments: [{header_value_extractor: {name: x-id, index: 0}}]}");
    ok(sr != NULL && lg_scoped_routes_count(sr) == 0 && lg_scoped_routes_find(sr, mkreq("h", "x-id", "k", NULL)) == NULL,
       "empty set");
    lg_scoped_routes_release(sr);
}

static const char *inline_yaml =
    "name: tenants\n"
    "scope_key_builder: {fragments: [{header_value_extractor: {name: x-tenant, index: 0}}]}\n"
    "scoped_route_configurations_list:\n"
    "  scoped_route_configurations:\n"
    "  - name: acme\n"
    "    key: {fragments: [{string_key: acme}]}\n"
    "    route_configuration:\n"
    "      name: acme-routes\n"
    "      virtual_hosts: [{name: acme-vh, domains: ['*'], routes: [{name: acme-route, match: {prefix: /}, route: {cluster: "
    "backend}}]}]\n"
    "  - name: globex\n"
    "    key: {fragments: [{string_key: globex}]}\n"
    "    route_configuration:\n"
    "      virtual_hosts: [{name: globex-vh, domains: ['*'], routes: [{name: globex-route, match: {prefix: /g}, direct_response: "
    "{status: 204}}]}]\n";

static void test_inline(void)
{
    lg_error_t err = {{0}};
    lg_scoped_routes_t *sr = compile_ex(inline_yaml, &inline_opts, &err);
    ok(sr != NULL, "inline set compiles: %s", err.msg);
    if (sr == NULL)
        return;
    lg_req_head_t *acme = mkreq("h", "x-tenant", "acme", NULL);
    const lg_route_table_t *t = lg_scoped_routes_find_table(sr, acme);
    ok(t != NULL, "acme has an inline table");
    ok_str(lg_scoped_routes_find(sr, acme), "acme-routes");
    const lg_route_t *r = t != NULL ? lg_route_match(t, acme, 0, NULL) : NULL;
    ok(r != NULL && strcmp(r->name.base, "acme-route") == 0, "acme request routes through acme's table");
    lg_req_head_t *globex = mkreq("h", "x-tenant", "globex", NULL);
    t = lg_scoped_routes_find_table(sr, globex);
    ok(t != NULL && lg_route_match(t, globex, 0, NULL) == NULL, "globex's table has no route for /");
    ok_str(lg_scoped_routes_find(sr, globex), ""); /* the inline RouteConfiguration has no name */
    ok(lg_scoped_routes_find_table(sr, mkreq("h", "x-tenant", "initech", NULL)) == NULL, "unknown tenant: no table");
    lg_scoped_routes_release(sr);
}

static void test_errors(void)
{
    const char *kb_index1 = "scope_key_builder: {fragments: [{header_value_extractor: {name: x, index: 1}}]}";
    ok_str(
        compile_error(kb_index1, NULL),
        "scoped_routes.scope_key_builder.fragments[0].header_value_extractor.index: Index > 0 for empty string element separator.");
    ok_str(compile_error("scope_key_builder: {fragments: [{header_value_extractor: {name: x, index: 0}}, "
                         "{header_value_extractor: {name: y}}]}",
                         NULL),
           "scoped_routes.scope_key_builder.fragments[1].header_value_extractor.extract_type: HeaderValueExtractor extract_type "
           "not set.");
    ok_str(compile_error("scope_key_builder: {fragments: [{header_value_extractor: {index: 0}}]}", NULL),
           "scoped_routes.scope_key_builder.fragments[0].header_value_extractor.name: value must be a valid HTTP header name");
    ok_str(compile_error("scope_key_builder: {fragments: [{header_value_extractor: {name: x, element: {key: k}}}]}", NULL),
           "scoped_routes.scope_key_builder.fragments[0].header_value_extractor.element.separator: value length must be at least 1 "
           "characters");
    ok_str(compile_error("scope_key_builder: {fragments: [{header_value_extractor: {name: x, element: {separator: '='}}}]}", NULL),
           "scoped_routes.scope_key_builder.fragments[0].header_value_extractor.element.key: value length must be at least 1 "
           "characters");
    ok_str(compile_error("scope_key_builder: {fragments: [{}]}", NULL),
           "scoped_routes.scope_key_builder.fragments[0].type: value is required");
    ok_str(compile_error("scope_key_builder: {}", NULL),
           "scoped_routes.scope_key_builder.fragments: value must contain at least 1 item(s)");
    ok_str(compile_error("name: x", NULL), "scoped_routes.scope_key_builder: value is required");

    const char *kb = "scope_key_builder: {fragments: [{header_value_extractor: {name: x, index: 0}}]}\n"
                     "scoped_route_configurations_list:\n  scoped_route_configurations:\n";
    char yaml[2048];
#define SCOPES(s) (snprintf(yaml, sizeof(yaml), "%s%s", kb, s), yaml)
    ok_str(
        compile_error(SCOPES("  - {name: a, route_configuration_name: r, key: {fragments: [{string_key: k}]}}\n"
                             "  - {name: b, route_configuration_name: r, key: {fragments: [{string_key: j}]}}\n"
                             "  - {name: c, route_configuration_name: r2, key: {fragments: [{string_key: k}]}}\n"),
                      NULL),
        "scoped_routes.scoped_route_configurations_list.scoped_route_configurations: scope key conflict found, first scope is 'a', "
        "second scope is 'c'");
    ok_str(compile_error(SCOPES("  - {name: a, route_configuration_name: r, key: {fragments: [{string_key: k}]}}\n"
                                "  - {name: a, route_configuration_name: r, key: {fragments: [{string_key: j}]}}\n"),
                         NULL),
           "scoped_routes.scoped_route_configurations_list.scoped_route_configurations: duplicate scoped route configuration 'a' "
           "found");
    ok_str(compile_error(SCOPES("  - {name: a, route_configuration_name: r, key: {fragments: [{string_key: k}]}}\n"
                                "  - {route_configuration_name: r, key: {fragments: [{string_key: j}]}}\n"),
                         NULL),
           "scoped_routes.scoped_route_configurations_list.scoped_route_configurations[1].name: value length must be at least 1 "
           "characters");
    ok_str(compile_error(SCOPES("  - {name: a, route_configuration_name: r}\n"), NULL),
           "scoped_routes.scoped_route_configurations_list.scoped_route_configurations[0].key: value is required");
    ok_str(compile_error(SCOPES("  - {name: a, route_configuration_name: r, key: {}}\n"), NULL),
           "scoped_routes.scoped_route_configurations_list.scoped_route_configurations[0].key.fragments: value must contain at "
           "least 1 "
           "item(s)");
    ok_str(
        compile_error(SCOPES("  - {name: a, route_configuration_name: r, key: {fragments: [{string_key: k}, {}]}}\n"), NULL),
        "scoped_routes.scoped_route_configurations_list.scoped_route_configurations[0].key.fragments[1].type: value is required");
    ok_str(compile_error(SCOPES("  - {name: a, key: {fragments: [{string_key: k}]}}\n"), NULL),
           "scoped_routes.scoped_route_configurations_list.scoped_route_configurations[0].route_configuration_name: "
           "route_configuration_name is empty.");
    /* inline lists: route_configuration required, route_configuration_name refused (Envoy) */
    ok_str(compile_error(SCOPES("  - {name: a, route_configuration_name: r, key: {fragments: [{string_key: k}]}}\n"), &inline_opts),
           "scoped_routes.scoped_route_configurations_list.scoped_route_configurations[0].route_configuration_name: Fetching "
           "routes via "
           "RDS (route_configuration_name) is not supported with inline scoped routes.");
    ok_str(compile_error(SCOPES("  - {name: a, key: {fragments: [{string_key: k}]}}\n"), &inline_opts),
           "scoped_routes.scoped_route_configurations_list.scoped_route_configurations[0].route_configuration: You must specify a "
           "route_configuration with inline scoped routes.");
    ok_str(compile_error(
               SCOPES("  - name: a\n    key: {fragments: [{string_key: k}]}\n"
                      "    route_configuration: {virtual_hosts: [{name: v, domains: ['*'], routes: [{match: {prefix: /}, route: "
                      "{cluster: nope}}]}]}\n"),
               &inline_opts),
           "scoped_routes.scoped_route_configurations_list.scoped_route_configurations[0].route_configuration: "
           "virtual_hosts[0].routes[0].route.cluster: route: unknown cluster 'nope'");
    ok_str(compile_error(
               SCOPES("  - name: a\n    key: {fragments: [{string_key: k}]}\n"
                      "    route_configuration: {validate_clusters: false, virtual_hosts: [{name: v, domains: ['*'], routes: "
                      "[{match: {prefix: /}, route: {cluster: nope}}]}]}\n"),
               &inline_opts),
           "OK");
#undef SCOPES
}

int main(void)
{
    h2o_mem_init_pool(&pool);
    test_index();
    test_element();
    test_lookup();
    test_many_and_boundaries();
    test_inline();
    test_errors();
    h2o_mem_clear_pool(&pool);
    return done();
}
