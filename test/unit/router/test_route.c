#include <arpa/inet.h>
#include <netinet/in.h>
#include <time.h>
#include <h2o/string_.h>
#include "test.h"
#include "legate/http.h"
#include "legate/pbjson.h"
#include "legate/route.h"

static h2o_mem_pool_t pool;

static const char *known_clusters[] = {"a", "b", "c", "backend", "mirror"};

static int cluster_exists(void *ctx, const char *name)
{
    for (size_t i = 0; i != LG_ARRAY_SIZE(known_clusters); ++i)
        if (strcmp(known_clusters[i], name) == 0)
            return 1;
    return 0;
}

static const lg_route_compile_opts_t validate_opts = {1, cluster_exists, NULL};

static Envoy__Config__Route__V3__RouteConfiguration *decode(const char *yaml)
{
    lg_error_t err = {{0}};
    lg_node_t *node = lg_yaml_parse(yaml, strlen(yaml), "test.yaml", &err);
    if (node == NULL) {
        fprintf(stderr, "yaml: %s\n", err.msg);
        return NULL;
    }
    ProtobufCMessage *m = lg_pbjson_decode(&envoy__config__route__v3__route_configuration__descriptor, node, 0, &err);
    lg_node_free(node);
    if (m == NULL)
        fprintf(stderr, "decode: %s\n", err.msg);
    return (Envoy__Config__Route__V3__RouteConfiguration *)m;
}

/* Compiles YAML; on error returns NULL and leaves the message in err. */
static lg_route_table_t *compile_opts(const char *yaml, const lg_route_compile_opts_t *opts, lg_error_t *err)
{
    Envoy__Config__Route__V3__RouteConfiguration *rc = decode(yaml);
    if (rc == NULL) {
        lg_error(err, "bad test yaml");
        return NULL;
    }
    lg_route_table_t *t = lg_route_table_compile(rc, opts, err);
    protobuf_c_message_free_unpacked(&rc->base, NULL);
    return t;
}

static lg_route_table_t *compile(const char *yaml)
{
    lg_error_t err = {{0}};
    lg_route_table_t *t = compile_opts(yaml, NULL, &err);
    if (t == NULL)
        fprintf(stderr, "compile: %s\n", err.msg);
    return t;
}

/* The compile error for a YAML config, or "OK". */
static const char *compile_error(const char *yaml, const lg_route_compile_opts_t *opts)
{
    static lg_error_t err;
    lg_route_table_t *t = compile_opts(yaml, opts, &err);
    if (t != NULL) {
        lg_route_table_free(t);
        return "OK";
    }
    return err.msg;
}

/* A request: "METHOD authority path" plus "name: value" header pairs, NULL-terminated. */
static lg_req_head_t *mkreq(const char *method, const char *authority, const char *path, ...)
{
    lg_req_head_t *r = h2o_mem_alloc_pool(&pool, sizeof(*r));
    memset(r, 0, sizeof(*r));
    r->method = h2o_strdup(&pool, method, SIZE_MAX);
    r->scheme = h2o_strdup(&pool, "http", SIZE_MAX);
    r->authority = authority != NULL ? h2o_strdup(&pool, authority, SIZE_MAX) : h2o_iovec_init(NULL, 0);
    r->path = h2o_strdup(&pool, path, SIZE_MAX);
    r->version = LG_HTTP_11;
    va_list ap;
    va_start(ap, path);
    const char *name;
    while ((name = va_arg(ap, const char *)) != NULL) {
        const char *value = va_arg(ap, const char *);
        lg_headers_add(&pool, &r->headers, h2o_strdup(&pool, name, SIZE_MAX), h2o_strdup(&pool, value, SIZE_MAX));
    }
    va_end(ap);
    return r;
}

/* Name of the route matched, "(none)" or "(ssl)". */
static const char *route_name(const lg_route_table_t *t, const lg_req_head_t *req, uint64_t random)
{
    const lg_route_t *r = lg_route_match(t, req, random, NULL);
    if (r == NULL)
        return "(none)";
    if (r->redirect.ssl_redirect)
        return "(ssl)";
    return r->name.base;
}

static const char *vhost_name(const lg_route_table_t *t, const char *authority)
{
    const lg_vhost_t *vh = lg_route_find_vhost(t, mkreq("GET", authority, "/", NULL));
    return vh != NULL ? vh->name.base : "(none)";
}

/* ---- virtual hosts ---- */

static void test_domains(void)
{
    lg_route_table_t *t = compile("name: rc\n"
                                  "virtual_hosts:\n"
                                  "- {name: exact, domains: [www.foo.com, 'exact.com:8080', '[::1]']}\n"
                                  "- {name: suffix, domains: ['*.foo.com']}\n"
                                  "- {name: longsuffix, domains: ['*-bar.foo.com']}\n"
                                  "- {name: prefix, domains: ['foo.*']}\n"
                                  "- {name: longprefix, domains: ['foo.bar.*']}\n"
                                  "- {name: default, domains: ['*']}\n");
    ok(t != NULL, "compile");
    ok_str(lg_route_table_name(t), "rc");
    ok_str(vhost_name(t, "www.foo.com"), "exact");
    ok_str(vhost_name(t, "WWW.Foo.COM"), "exact");
    ok_str(vhost_name(t, "a.foo.com"), "suffix");
    ok_str(vhost_name(t, "x-bar.foo.com"), "longsuffix");
    ok_str(vhost_name(t, "-bar.foo.com"), "suffix");
    ok_str(vhost_name(t, ".foo.com"), "default");
    ok_str(vhost_name(t, "foo.org"), "prefix");
    ok_str(vhost_name(t, "foo.bar.org"), "longprefix");
    ok_str(vhost_name(t, "foo.bar."), "prefix");
    ok_str(vhost_name(t, "foo.com"), "prefix");
    ok_str(vhost_name(t, "a.foo.org"), "default");
    /* suffix wildcards win over prefix wildcards */
    ok_str(vhost_name(t, "foo.x.foo.com"), "suffix");
    /* ports are part of the host unless ignore_port_in_host_matching */
    ok_str(vhost_name(t, "www.foo.com:80"), "default");
    ok_str(vhost_name(t, "exact.com:8080"), "exact");
    ok_str(vhost_name(t, "exact.com"), "default");
    ok_str(vhost_name(t, "[::1]:80"), "default");
    ok_str(vhost_name(t, NULL), "(none)");
    lg_route_table_free(t);

    t = compile("ignore_port_in_host_matching: true\n"
                "virtual_hosts:\n"
                "- {name: exact, domains: [www.foo.com, '[::1]']}\n"
                "- {name: suffix, domains: ['*.bar.com']}\n");
    ok_str(vhost_name(t, "www.foo.com:80"), "exact");
    ok_str(vhost_name(t, "www.foo.com"), "exact");
    ok_str(vhost_name(t, "[::1]:443"), "exact");
    ok_str(vhost_name(t, "a.bar.com:1"), "suffix");
    ok_str(vhost_name(t, "other:80"), "(none)");
    const lg_vhost_t *vh = (const lg_vhost_t *)1;
    ok(lg_route_match(t, mkreq("GET", "nowhere", "/", NULL), 0, &vh) == NULL && vh == NULL, "no vhost, no route");
    lg_route_table_free(t);

    /* only a default vhost: the host does not matter, even when absent */
    t = compile("virtual_hosts: [{name: d, domains: ['*']}]");
    ok_str(vhost_name(t, NULL), "d");
    lg_route_table_free(t);
}

static void test_many_vhosts(void)
{
    lg_strbuf_t y = {0};
    lg_strbuf_puts(&y, "virtual_hosts:\n");
    for (int i = 0; i != 3000; ++i)
        lg_strbuf_printf(&y, "- {name: v%d, domains: [h%d.example.com, '*.w%d.example.com', 'p%d.*']}\n", i, i, i, i);
    lg_route_table_t *t = compile(y.base);
    ok(t != NULL, "3000 vhosts");
    int good = 1;
    for (int i = 0; i < 3000 && t != NULL; i += 7) {
        char host[64], want[16];
        snprintf(want, sizeof(want), "v%d", i);
        snprintf(host, sizeof(host), "h%d.example.com", i);
        good &= strcmp(vhost_name(t, host), want) == 0;
        snprintf(host, sizeof(host), "x.y.w%d.example.com", i);
        good &= strcmp(vhost_name(t, host), want) == 0;
        snprintf(host, sizeof(host), "p%d.net", i);
        good &= strcmp(vhost_name(t, host), want) == 0;
    }
    ok(good, "3000 vhosts: every kind of domain found");
    lg_route_table_free(t);
    lg_strbuf_free(&y);
}

static void test_domain_errors(void)
{
    ok_str(
        compile_error("name: rc\nvirtual_hosts:\n- {name: a, domains: [Foo.com]}\n- {name: b, domains: [x, foo.COM]}", NULL),
        "virtual_hosts[1].domains[1]: Only unique values for domains are permitted. Duplicate entry of domain foo.com in route rc");
    ok_str(compile_error("name: rc\nvirtual_hosts:\n- {name: a, domains: ['*.a']}\n- {name: b, domains: ['*.a']}", NULL),
           "virtual_hosts[1].domains[0]: Only unique values for domains are permitted. Duplicate entry of domain *.a in route rc");
    ok_str(compile_error("name: rc\nvirtual_hosts:\n- {name: a, domains: ['*']}\n- {name: b, domains: ['*']}", NULL),
           "virtual_hosts[1].domains[0]: Only a single wildcard domain is permitted in route rc");
    ok_str(compile_error(
               "name: rc\nvirtual_hosts:\n- {name: a, domains: [x]}\n- {name: b, domains: [y]}\n- {name: a, domains: [z]}", NULL),
           "virtual_hosts[2].name: Only unique values for virtual host names are permitted. Duplicate entry of a in route rc");
    ok_str(compile_error("virtual_hosts: [{name: a, domains: []}]", NULL),
           "virtual_hosts[0].domains: value must contain at least 1 item(s)");
    ok_str(compile_error("virtual_hosts: [{domains: [a]}]", NULL),
           "virtual_hosts[0].name: value length must be at least 1 characters");
    /* the same domain as exact and wildcard is fine */
    ok_str(compile_error("virtual_hosts: [{name: a, domains: ['*.a', 'a.*', a]}]", NULL), "OK");
}

/* ---- route matching ---- */

static const char matchers_yaml[] =
    "virtual_hosts:\n"
    "- name: v\n"
    "  domains: ['*']\n"
    "  routes:\n"
    "  - {name: exact, match: {path: /exact}, route: {cluster: a}}\n"
    "  - {name: ci, match: {prefix: /CI/, case_sensitive: false}, route: {cluster: a}}\n"
    "  - {name: sep, match: {path_separated_prefix: /api}, route: {cluster: a}}\n"
    "  - {name: regex, match: {safe_regex: {regex: '/re/[0-9]+'}}, route: {cluster: a}}\n"
    "  - {name: hexact, match: {prefix: /h, headers: [{name: X-Exact, string_match: {exact: yes}}]}, route: {cluster: a}}\n"
    "  - {name: hprefix, match: {prefix: /h, headers: [{name: x-p, string_match: {prefix: ab}}]}, route: {cluster: a}}\n"
    "  - {name: hsuffix, match: {prefix: /h, headers: [{name: x-s, string_match: {suffix: yz, ignore_case: true}}]}, route: "
    "{cluster: a}}\n"
    "  - {name: hcontains, match: {prefix: /h, headers: [{name: x-c, contains_match: mid}]}, route: {cluster: a}}\n"
    "  - {name: hregex, match: {prefix: /h, headers: [{name: x-r, safe_regex_match: {regex: 'v[0-9]'}}]}, route: {cluster: a}}\n"
    "  - {name: hrange, match: {prefix: /h, headers: [{name: x-n, range_match: {start: -10, end: 0}}]}, route: {cluster: a}}\n"
    "  - {name: hpresent, match: {prefix: /h, headers: [{name: x-present, present_match: true}]}, route: {cluster: a}}\n"
    "  - {name: hinvert, match: {prefix: /h, headers: [{name: x-inv, string_match: {exact: bad}, invert_match: true}]}, route: "
    "{cluster: a}}\n"
    "  - {name: hinvabsent, match: {prefix: /h2, headers: [{name: x-gone, present_match: true, invert_match: true}]}, route: "
    "{cluster: a}}\n"
    "  - {name: hmissing, match: {prefix: /h3, headers: [{name: x-m, string_match: {exact: ''}, treat_missing_header_as_empty: "
    "true}]}, route: {cluster: a}}\n"
    "  - {name: hnospec, match: {prefix: /h4, headers: [{name: x-any}]}, route: {cluster: a}}\n"
    "  - {name: hmethod, match: {prefix: /h5, headers: [{name: ':method', exact_match: PUT}]}, route: {cluster: a}}\n"
    "  - {name: hauthority, match: {prefix: /h5, headers: [{name: host, suffix_match: .org}]}, route: {cluster: a}}\n"
    "  - {name: hjoined, match: {prefix: /h6, headers: [{name: x-multi, exact_match: 'a,b'}]}, route: {cluster: a}}\n"
    "  - {name: qstring, match: {prefix: /q, query_parameters: [{name: debug, string_match: {exact: 'on'}}]}, route: {cluster: "
    "a}}\n"
    "  - {name: qpresent, match: {prefix: /q, query_parameters: [{name: p, present_match: true}]}, route: {cluster: a}}\n"
    "  - {name: qabsent, match: {prefix: /q, query_parameters: [{name: never, present_match: false}]}, route: {cluster: a}}\n"
    "  - {name: qexists, match: {prefix: /q, query_parameters: [{name: e}]}, route: {cluster: a}}\n"
    "  - {name: grpc, match: {prefix: /svc., grpc: {}}, route: {cluster: a}}\n"
    "  - {name: connect, match: {connect_matcher: {}}, route: {cluster: a}}\n"
    "  - {name: fraction, match: {prefix: /f, runtime_fraction: {default_value: {numerator: 30}, runtime_key: k}}, route: "
    "{cluster: a}}\n"
    "  - {name: catchall, match: {prefix: /}, route: {cluster: b}}\n";

static void test_matchers(void)
{
    lg_route_table_t *t = compile(matchers_yaml);
    ok(t != NULL, "compile");
#define M(want, ...) ok_str(route_name(t, mkreq(__VA_ARGS__, NULL), 0), want)
    M("exact", "GET", "h", "/exact");
    M("exact", "GET", "h", "/exact?x=1");
    M("exact", "GET", "h", "/exact#frag");
    M("catchall", "GET", "h", "/exact/");
    M("catchall", "GET", "h", "/Exact");
    M("ci", "GET", "h", "/ci/x");
    M("ci", "GET", "h", "/Ci/X");
    M("sep", "GET", "h", "/api");
    M("sep", "GET", "h", "/api/");
    M("sep", "GET", "h", "/api?x");
    M("sep", "GET", "h", "/api/v1");
    M("catchall", "GET", "h", "/apix");
    M("regex", "GET", "h", "/re/123");
    M("regex", "GET", "h", "/re/123?q=a");
    M("catchall", "GET", "h", "/re/123x");
    M("catchall", "GET", "h", "/h");
    M("hexact", "GET", "h", "/h", "x-exact", "yes");
    M("catchall", "GET", "h", "/h", "x-exact", "YES");
    M("hprefix", "GET", "h", "/h", "x-p", "abc");
    M("catchall", "GET", "h", "/h", "x-p", "xab");
    M("hsuffix", "GET", "h", "/h", "x-s", "wXYZ");
    M("hcontains", "GET", "h", "/h", "x-c", "amidst");
    M("hregex", "GET", "h", "/h", "x-r", "v1");
    M("catchall", "GET", "h", "/h", "x-r", "v12");
    M("hrange", "GET", "h", "/h", "x-n", "-10");
    M("hrange", "GET", "h", "/h", "x-n", "-1");
    M("catchall", "GET", "h", "/h", "x-n", "0");
    M("catchall", "GET", "h", "/h", "x-n", "-1x");
    M("catchall", "GET", "h", "/h", "x-n", "");
    M("hpresent", "GET", "h", "/h", "x-present", "");
    M("hinvert", "GET", "h", "/h", "x-inv", "good");
    M("catchall", "GET", "h", "/h", "x-inv", "bad");
    /* an inverted value match does not match a missing header */
    M("catchall", "GET", "h", "/h");
    M("hinvabsent", "GET", "h", "/h2");
    M("catchall", "GET", "h", "/h2", "x-gone", "1");
    M("hmissing", "GET", "h", "/h3");
    M("hmissing", "GET", "h", "/h3", "x-m", "");
    M("catchall", "GET", "h", "/h3", "x-m", "v");
    M("hnospec", "GET", "h", "/h4", "x-any", "whatever");
    M("catchall", "GET", "h", "/h4");
    M("hmethod", "PUT", "h", "/h5");
    M("hauthority", "GET", "x.org", "/h5");
    M("catchall", "GET", "x.com", "/h5");
    M("hjoined", "GET", "h", "/h6", "x-multi", "a", "x-multi", "b");
    M("catchall", "GET", "h", "/h6", "x-multi", "a");
    M("qstring", "GET", "h", "/q?a=1&debug=on");
    M("catchall", "GET", "h", "/q?debug=off&debug=on");
    M("qpresent", "GET", "h", "/q?p");
    M("qpresent", "GET", "h", "/q?p=");
    M("qexists", "GET", "h", "/q?e=1&never=1");
    M("catchall", "GET", "h", "/q");
    M("grpc", "POST", "h", "/svc.Foo/Bar", "content-type", "application/grpc");
    M("grpc", "POST", "h", "/svc.Foo/Bar", "content-type", "application/grpc+proto");
    M("catchall", "POST", "h", "/svc.Foo/Bar", "content-type", "application/grpc-web");
    M("catchall", "POST", "h", "/svc.Foo/Bar");
    M("connect", "CONNECT", "h:443", "");
    M("catchall", "GET", "h", "/anything");
#undef M
    /* CONNECT without :path only ever matches connect routes; extended CONNECT is an upgrade */
    lg_req_head_t *ext = mkreq("CONNECT", "h", "/exact", NULL);
    ext->protocol = LG_LIT("websocket");
    ok_str(route_name(t, ext, 0), "exact");
    ok_str(route_name(t, mkreq("CONNECT", "h", "/exact", NULL), 0), "exact");
    /* runtime_fraction: random % 100 < 30 */
    ok_str(route_name(t, mkreq("GET", "h", "/f", NULL), 29), "fraction");
    ok_str(route_name(t, mkreq("GET", "h", "/f", NULL), 30), "catchall");
    ok_str(route_name(t, mkreq("GET", "h", "/f", NULL), 1029), "fraction");
    lg_route_table_free(t);

    t = compile("virtual_hosts: [{name: v, domains: ['*'], routes: [{name: only, match: {prefix: /}, route: {cluster: a}}]}]");
    ok_str(route_name(t, mkreq("CONNECT", "h:443", "", NULL), 0), "(none)");
    lg_route_table_free(t);

    t = compile("ignore_path_parameters_in_path_matching: true\n"
                "virtual_hosts: [{name: v, domains: ['*'], routes: [{name: p, match: {path: /a/b}, route: {cluster: a}}]}]");
    ok_str(route_name(t, mkreq("GET", "h", "/a/b;jsessionid=1", NULL), 0), "p");
    lg_route_table_free(t);
    t = compile("virtual_hosts: [{name: v, domains: ['*'], routes: [{name: p, match: {path: /a/b}, route: {cluster: a}}]}]");
    ok_str(route_name(t, mkreq("GET", "h", "/a/b;jsessionid=1", NULL), 0), "(none)");
    lg_route_table_free(t);
}

static void test_first_match_order(void)
{
    lg_route_table_t *t =
        compile("virtual_hosts:\n"
                "- name: v\n"
                "  domains: ['*']\n"
                "  routes:\n"
                "  - {name: shadow, match: {prefix: /a}, route: {cluster: a}}\n"
                "  - {name: never, match: {path: /a/b}, route: {cluster: a}}\n"
                "  - {name: re, match: {safe_regex: {regex: '/b/.*'}}, route: {cluster: a}}\n"
                "  - {name: bexact, match: {path: /b/c}, route: {cluster: a}}\n"
                "  - {name: hdr, match: {prefix: /c, headers: [{name: x-v, exact_match: '2'}]}, route: {cluster: a}}\n"
                "  - {name: cexact, match: {path: /c/d}, route: {cluster: a}}\n"
                "  - {name: cre, match: {safe_regex: {regex: '/c.*'}}, route: {cluster: a}}\n"
                "  - {name: cprefix, match: {prefix: /c}, route: {cluster: a}}\n"
                "  - {name: ci, match: {prefix: /D, case_sensitive: false}, route: {cluster: a}}\n"
                "  - {name: dcs, match: {prefix: /d}, route: {cluster: a}}\n"
                "  - {name: long, match: {prefix: /e/long/path}, route: {cluster: a}}\n"
                "  - {name: short, match: {prefix: /e}, route: {cluster: a}}\n"
                "  - {name: dup1, match: {path: /p/dup, headers: [{name: x-v, exact_match: '1'}]}, route: {cluster: a}}\n"
                "  - {name: dupci, match: {path: /P/Dup, case_sensitive: false, headers: [{name: x-v, exact_match: '3'}]}, "
                "route: {cluster: a}}\n"
                "  - {name: dup2, match: {path: /p/dup}, route: {cluster: a}}\n"
                "  - {name: dupci2, match: {path: /P/DUP, case_sensitive: false}, route: {cluster: a}}\n"
                "  - {name: zci, match: {path: /p/Zz, case_sensitive: false}, route: {cluster: a}}\n"
                "  - {name: zcs, match: {path: /p/zz}, route: {cluster: a}}\n"
                "  - {name: pprefix, match: {prefix: /p/}, route: {cluster: a}}\n"
                "  - {name: late, match: {path: /p/late}, route: {cluster: a}}\n");
    ok_str(route_name(t, mkreq("GET", "h", "/a/b", NULL), 0), "shadow");
    ok_str(route_name(t, mkreq("GET", "h", "/b/c", NULL), 0), "re");
    ok_str(route_name(t, mkreq("GET", "h", "/c/d", "x-v", "2", NULL), 0), "hdr");
    ok_str(route_name(t, mkreq("GET", "h", "/c/d", NULL), 0), "cexact");
    ok_str(route_name(t, mkreq("GET", "h", "/c/e", NULL), 0), "cre");
    ok_str(route_name(t, mkreq("GET", "h", "/d/x", NULL), 0), "ci");
    /* a longer prefix later in the list does not beat an earlier shorter one, and vice versa */
    ok_str(route_name(t, mkreq("GET", "h", "/e/long/path/x", NULL), 0), "long");
    ok_str(route_name(t, mkreq("GET", "h", "/e/long/pat", NULL), 0), "short");
    ok_str(route_name(t, mkreq("GET", "h", "/zzz", NULL), 0), "(none)");
    /* exact paths: routes with the same path keep their order, across case sensitivity, and
     * against prefix routes before and after them */
    ok_str(route_name(t, mkreq("GET", "h", "/p/dup", "x-v", "1", NULL), 0), "dup1");
    ok_str(route_name(t, mkreq("GET", "h", "/p/dup", "x-v", "3", NULL), 0), "dupci");
    ok_str(route_name(t, mkreq("GET", "h", "/p/dup", NULL), 0), "dup2");
    ok_str(route_name(t, mkreq("GET", "h", "/P/dUP", "x-v", "3", NULL), 0), "dupci");
    ok_str(route_name(t, mkreq("GET", "h", "/P/dUP", "x-v", "1", NULL), 0), "dupci2");
    ok_str(route_name(t, mkreq("GET", "h", "/p/dup?x-v=1", NULL), 0), "dup2");
    ok_str(route_name(t, mkreq("GET", "h", "/p/zz", NULL), 0), "zci");
    ok_str(route_name(t, mkreq("GET", "h", "/p/ZZ", NULL), 0), "zci");
    ok_str(route_name(t, mkreq("GET", "h", "/p/late", NULL), 0), "pprefix");
    ok_str(route_name(t, mkreq("GET", "h", "/p/du", NULL), 0), "pprefix");
    ok_str(route_name(t, mkreq("GET", "h", "/p/dupe", NULL), 0), "pprefix");
    ok_str(route_name(t, mkreq("GET", "h", "/P/dupe", NULL), 0), "(none)");
    lg_route_table_free(t);
}

/* A table of n routes of mixed kinds, built as protobuf-c structs (fast). */
static Envoy__Config__Route__V3__RouteConfiguration *big_table(size_t n, char ***strings, size_t *n_strings)
{
    Envoy__Config__Route__V3__RouteConfiguration *rc = lg_calloc(1, sizeof(*rc));
    envoy__config__route__v3__route_configuration__init(rc);
    Envoy__Config__Route__V3__VirtualHost *vh = lg_calloc(1, sizeof(*vh));
    envoy__config__route__v3__virtual_host__init(vh);
    rc->n_virtual_hosts = 1;
    rc->virtual_hosts = lg_calloc(1, sizeof(*rc->virtual_hosts));
    rc->virtual_hosts[0] = vh;
    vh->name = "big";
    static char *star = "*";
    vh->n_domains = 1;
    vh->domains = &star;
    vh->n_routes = n;
    vh->routes = lg_calloc(n, sizeof(*vh->routes));
    *strings = lg_calloc(n * 2, sizeof(char *));
    for (size_t i = 0; i != n; ++i) {
        Envoy__Config__Route__V3__Route *r = lg_calloc(1, sizeof(*r));
        Envoy__Config__Route__V3__RouteMatch *m = lg_calloc(1, sizeof(*m));
        Envoy__Config__Route__V3__RouteAction *a = lg_calloc(1, sizeof(*a));
        envoy__config__route__v3__route__init(r);
        envoy__config__route__v3__route_match__init(m);
        envoy__config__route__v3__route_action__init(a);
        char buf[64];
        snprintf(buf, sizeof(buf), "r%zu", i);
        r->name = (*strings)[(*n_strings)++] = lg_strdup(buf);
        switch (i % 4) {
        case 0:
            snprintf(buf, sizeof(buf), "/exact/%zu", i);
            m->path_specifier_case = ENVOY__CONFIG__ROUTE__V3__ROUTE_MATCH__PATH_SPECIFIER_PATH;
            m->path = (*strings)[(*n_strings)++] = lg_strdup(buf);
            break;
        case 1:
            snprintf(buf, sizeof(buf), "/prefix/%zu/", i);
            m->path_specifier_case = ENVOY__CONFIG__ROUTE__V3__ROUTE_MATCH__PATH_SPECIFIER_PREFIX;
            m->prefix = (*strings)[(*n_strings)++] = lg_strdup(buf);
            break;
        case 2:
            snprintf(buf, sizeof(buf), "/sep/%zu", i);
            m->path_specifier_case = ENVOY__CONFIG__ROUTE__V3__ROUTE_MATCH__PATH_SPECIFIER_PATH_SEPARATED_PREFIX;
            m->path_separated_prefix = (*strings)[(*n_strings)++] = lg_strdup(buf);
            break;
        default:
            snprintf(buf, sizeof(buf), "/CI/%zu/", i);
            m->path_specifier_case = ENVOY__CONFIG__ROUTE__V3__ROUTE_MATCH__PATH_SPECIFIER_PREFIX;
            m->prefix = (*strings)[(*n_strings)++] = lg_strdup(buf);
            m->case_sensitive = lg_calloc(1, sizeof(*m->case_sensitive));
            google__protobuf__bool_value__init(m->case_sensitive);
            break;
        }
        r->match = m;
        a->cluster_specifier_case = ENVOY__CONFIG__ROUTE__V3__ROUTE_ACTION__CLUSTER_SPECIFIER_CLUSTER;
        a->cluster = "a";
        r->action_case = ENVOY__CONFIG__ROUTE__V3__ROUTE__ACTION_ROUTE;
        r->route = a;
        vh->routes[i] = r;
    }
    return rc;
}

static void free_big_table(Envoy__Config__Route__V3__RouteConfiguration *rc, char **strings, size_t n_strings)
{
    Envoy__Config__Route__V3__VirtualHost *vh = rc->virtual_hosts[0];
    for (size_t i = 0; i != vh->n_routes; ++i) {
        free(vh->routes[i]->match->case_sensitive);
        free(vh->routes[i]->match);
        free(vh->routes[i]->route);
        free(vh->routes[i]);
    }
    for (size_t i = 0; i != n_strings; ++i)
        free(strings[i]);
    free(strings);
    free(vh->routes);
    free(vh);
    free(rc->virtual_hosts);
    free(rc);
}

static void test_big_table(void)
{
    enum { N = 10000 };
    char **strings;
    size_t n_strings = 0;
    Envoy__Config__Route__V3__RouteConfiguration *rc = big_table(N, &strings, &n_strings);
    lg_error_t err;
    lg_route_table_t *t = lg_route_table_compile(rc, NULL, &err);
    ok(t != NULL, "10000 routes compile");
    free_big_table(rc, strings, n_strings);
    if (t == NULL)
        return;
    int good = 1;
    char path[64], want[16];
    for (size_t i = 0; i != N; ++i) {
        snprintf(want, sizeof(want), "r%zu", i);
        switch (i % 4) {
        case 0:
            snprintf(path, sizeof(path), "/exact/%zu?x=1", i);
            break;
        case 1:
            snprintf(path, sizeof(path), "/prefix/%zu/more", i);
            break;
        case 2:
            snprintf(path, sizeof(path), "/sep/%zu/x", i);
            break;
        default:
            snprintf(path, sizeof(path), "/ci/%zu/x", i);
            break;
        }
        const char *got = route_name(t, mkreq("GET", "h", path, NULL), 0);
        if (strcmp(got, want) != 0) {
            good = 0;
            fprintf(stderr, "%s -> %s, want %s\n", path, got, want);
            break;
        }
    }
    ok(good, "10000 routes: each found");
    ok_str(route_name(t, mkreq("GET", "h", "/exact/1", NULL), 0), "(none)");
    ok_str(route_name(t, mkreq("GET", "h", "/sep/22x", NULL), 0), "(none)");
    ok_str(route_name(t, mkreq("GET", "h", "/sep/22", NULL), 0), "r22");
    ok_str(route_name(t, mkreq("GET", "h", "/CI/7/", NULL), 0), "r7");
    ok_str(route_name(t, mkreq("GET", "h", "/sep/2", NULL), 0), "r2");
    lg_route_table_free(t);
}

/* ---- actions ---- */

static void test_weighted(void)
{
    lg_route_table_t *t = compile("virtual_hosts:\n"
                                  "- name: v\n"
                                  "  domains: ['*']\n"
                                  "  routes:\n"
                                  "  - match: {prefix: /}\n"
                                  "    route:\n"
                                  "      weighted_clusters:\n"
                                  "        header_name: x-random\n"
                                  "        clusters:\n"
                                  "        - {name: a, weight: 10}\n"
                                  "        - {name: b, weight: 20, host_rewrite_literal: b.internal}\n"
                                  "        - {cluster_header: x-cluster, weight: 70}\n");
    const lg_route_t *r = lg_route_match(t, mkreq("GET", "h", "/", NULL), 0, NULL);
    ok(r != NULL && r->action.total_weight == 100 && r->action.n_weighted == 3, "weighted");
    int counts[3] = {0};
    lg_req_head_t *req = mkreq("GET", "h", "/", "x-cluster", "c", NULL);
    for (uint64_t rnd = 1000; rnd != 1100; ++rnd) {
        h2o_iovec_t name = lg_route_pick_cluster(r, req, rnd, NULL);
        counts[h2o_memis(name.base, name.len, H2O_STRLIT("a")) ? 0 : h2o_memis(name.base, name.len, H2O_STRLIT("b")) ? 1 : 2]++;
    }
    ok(counts[0] == 10 && counts[1] == 20 && counts[2] == 70, "distribution %d/%d/%d", counts[0], counts[1], counts[2]);
    const lg_weighted_cluster_t *wc;
    h2o_iovec_t name = lg_route_pick_cluster(r, req, 9, &wc);
    ok(h2o_memis(name.base, name.len, H2O_STRLIT("a")) && wc == &r->action.weighted[0], "9 -> a");
    name = lg_route_pick_cluster(r, req, 10, &wc);
    ok(h2o_memis(name.base, name.len, H2O_STRLIT("b")) && wc == &r->action.weighted[1], "10 -> b");
    h2o_iovec_t host = lg_route_host_rewrite(r, wc, req, &pool);
    ok(h2o_memis(host.base, host.len, H2O_STRLIT("b.internal")), "weighted cluster host rewrite");
    name = lg_route_pick_cluster(r, req, 99, &wc);
    ok(h2o_memis(name.base, name.len, H2O_STRLIT("c")) && wc == &r->action.weighted[2], "99 -> header cluster");
    name = lg_route_pick_cluster(r, mkreq("GET", "h", "/", NULL), 99, NULL);
    ok(name.len == 0, "cluster_header absent -> empty name");
    /* the random value header overrides the random value when it is a single valid number */
    name = lg_route_pick_cluster(r, mkreq("GET", "h", "/", "x-random", "115", NULL), 0, NULL);
    ok(h2o_memis(name.base, name.len, H2O_STRLIT("b")), "x-random 115 -> b");
    name = lg_route_pick_cluster(r, mkreq("GET", "h", "/", "x-random", "x", NULL), 0, NULL);
    ok(h2o_memis(name.base, name.len, H2O_STRLIT("a")), "invalid x-random -> random");
    name = lg_route_pick_cluster(r, mkreq("GET", "h", "/", "x-random", "15", "x-random", "15", NULL), 0, NULL);
    ok(h2o_memis(name.base, name.len, H2O_STRLIT("a")), "two x-random -> random");
    lg_route_table_free(t);

    t = compile("virtual_hosts: [{name: v, domains: ['*'], routes: [\n"
                "  {match: {prefix: /h}, route: {cluster_header: X-Target}},\n"
                "  {match: {prefix: /}, route: {cluster: backend}}]}]");
    r = lg_route_match(t, mkreq("GET", "h", "/h", NULL), 0, NULL);
    name = lg_route_pick_cluster(r, mkreq("GET", "h", "/h", "x-target", "t1", NULL), 0, NULL);
    ok(h2o_memis(name.base, name.len, H2O_STRLIT("t1")), "cluster_header");
    r = lg_route_match(t, mkreq("GET", "h", "/x", NULL), 0, NULL);
    name = lg_route_pick_cluster(r, mkreq("GET", "h", "/x", NULL), 0, NULL);
    ok(h2o_memis(name.base, name.len, H2O_STRLIT("backend")), "cluster");
    ok(r->action.cluster_not_found_response_code == 503, "cluster_not_found default 503");
    lg_route_table_free(t);
}

static const char *rewrite(const lg_route_table_t *t, const char *path)
{
    lg_req_head_t *req = mkreq("GET", "h", path, NULL);
    const lg_route_t *r = lg_route_match(t, req, 0, NULL);
    if (r == NULL)
        return "(none)";
    h2o_iovec_t p = lg_route_path_rewrite(r, req->path, &pool);
    return p.base != NULL ? p.base : "(unchanged)";
}

static void test_rewrites(void)
{
    lg_route_table_t *t = compile(
        "virtual_hosts: [{name: v, domains: ['*'], routes: [\n"
        "  {match: {prefix: /prefix/}, route: {cluster: a, prefix_rewrite: /}},\n"
        "  {match: {prefix: /Up/, case_sensitive: false}, route: {cluster: a, prefix_rewrite: /down/}},\n"
        "  {match: {path: /old}, route: {cluster: a, prefix_rewrite: /new}},\n"
        "  {match: {path_separated_prefix: /sep}, route: {cluster: a, prefix_rewrite: /other}},\n"
        "  {match: {safe_regex: {regex: '/re/.*'}}, route: {cluster: a, prefix_rewrite: /whole}},\n"
        "  {match: {prefix: /rx/}, route: {cluster: a, regex_rewrite: {pattern: {regex: '^/rx/([^/]+)/(.*)$'}, "
        "substitution: '/\\2/\\1'}}},\n"
        "  {match: {prefix: /host/}, route: {cluster: a, host_rewrite_path_regex: {pattern: {regex: '^/host/([a-z]+).*$'}, "
        "substitution: '\\1.svc'}}},\n"
        "  {match: {prefix: /hh/}, route: {cluster: a, host_rewrite_header: X-Host}},\n"
        "  {match: {prefix: /lit/}, route: {cluster: a, host_rewrite_literal: lit.example, append_x_forwarded_host: true}},\n"
        "  {match: {prefix: /}, route: {cluster: a}}]}]");
    ok_str(rewrite(t, "/prefix/a/b?q=1"), "/a/b?q=1");
    ok_str(rewrite(t, "/UP/x"), "/down/x");
    ok_str(rewrite(t, "/old?a=b"), "/new?a=b");
    ok_str(rewrite(t, "/sep"), "/other");
    ok_str(rewrite(t, "/sep/x?y"), "/other/x?y");
    ok_str(rewrite(t, "/re/abc?k=v"), "/whole?k=v");
    ok_str(rewrite(t, "/rx/one/two/three?z=1"), "/two/three/one?z=1");
    ok_str(rewrite(t, "/plain"), "(unchanged)");
    lg_req_head_t *req = mkreq("GET", "h", "/host/abc/x?q", "x-host", "from.header", NULL);
    const lg_route_t *r = lg_route_match(t, req, 0, NULL);
    h2o_iovec_t host = lg_route_host_rewrite(r, NULL, req, &pool);
    ok(h2o_memis(host.base, host.len, H2O_STRLIT("abc.svc")), "host_rewrite_path_regex: %.*s", (int)host.len, host.base);
    req = mkreq("GET", "h", "/hh/", "x-host", "from.header", NULL);
    host = lg_route_host_rewrite(lg_route_match(t, req, 0, NULL), NULL, req, &pool);
    ok(h2o_memis(host.base, host.len, H2O_STRLIT("from.header")), "host_rewrite_header");
    req = mkreq("GET", "h", "/hh/", NULL);
    host = lg_route_host_rewrite(lg_route_match(t, req, 0, NULL), NULL, req, &pool);
    ok(host.base == NULL, "host_rewrite_header absent: unchanged");
    req = mkreq("GET", "h", "/lit/", NULL);
    r = lg_route_match(t, req, 0, NULL);
    host = lg_route_host_rewrite(r, NULL, req, &pool);
    ok(h2o_memis(host.base, host.len, H2O_STRLIT("lit.example")) && r->action.append_x_forwarded_host, "host_rewrite_literal");
    lg_route_table_free(t);
}

static const char *redirect(const lg_route_table_t *t, lg_req_head_t *req, int *code)
{
    const lg_route_t *r = lg_route_match(t, req, 0, NULL);
    if (r == NULL || r->kind != LG_ROUTE_REDIRECT)
        return "(not a redirect)";
    *code = r->redirect.response_code;
    return lg_route_redirect_url(r, req, &pool).base;
}

static void test_redirects(void)
{
    lg_route_table_t *t = compile(
        "virtual_hosts: [{name: v, domains: ['*'], routes: [\n"
        "  {match: {prefix: /https}, redirect: {https_redirect: true}},\n"
        "  {match: {prefix: /host}, redirect: {host_redirect: new.example, response_code: FOUND}},\n"
        "  {match: {prefix: /port}, redirect: {port_redirect: 8443, response_code: SEE_OTHER}},\n"
        "  {match: {prefix: /path1}, redirect: {path_redirect: /new1, response_code: TEMPORARY_REDIRECT}},\n"
        "  {match: {prefix: /path2}, redirect: {path_redirect: /new2, strip_query: true, response_code: PERMANENT_REDIRECT}},\n"
        "  {match: {prefix: /path3}, redirect: {path_redirect: '/new3?foo=1', strip_query: true}},\n"
        "  {match: {prefix: /pre/}, redirect: {prefix_rewrite: /post/}},\n"
        "  {match: {prefix: /rx/}, redirect: {regex_rewrite: {pattern: {regex: '^/rx/(.*)$'}, substitution: '/x/\\1'}}},\n"
        "  {match: {prefix: /scheme}, redirect: {scheme_redirect: WS, host_redirect: ws.example}},\n"
        "  {match: {prefix: /strip}, redirect: {strip_query: true}}]}]");
    int code = 0;
    ok_str(redirect(t, mkreq("GET", "foo.com", "/https?a=1", NULL), &code), "https://foo.com/https?a=1");
    ok(code == 301, "301 default");
    ok_str(redirect(t, mkreq("GET", "foo.com:80", "/https", "x-forwarded-proto", "http", NULL), &code), "https://foo.com/https");
    ok_str(redirect(t, mkreq("GET", "foo.com:8080", "/https", "x-forwarded-proto", "http", NULL), &code),
           "https://foo.com:8080/https");
    ok_str(redirect(t, mkreq("GET", "[::1]:80", "/https", "x-forwarded-proto", "http", NULL), &code), "https://[::1]/https");
    ok_str(redirect(t, mkreq("GET", "foo.com:80", "/host/x", NULL), &code), "http://new.example/host/x");
    ok(code == 302, "302");
    ok_str(redirect(t, mkreq("GET", "foo.com:80", "/port", NULL), &code), "http://foo.com:8443/port");
    ok(code == 303, "303");
    ok_str(redirect(t, mkreq("GET", "foo.com", "/path1?bar=1", NULL), &code), "http://foo.com/new1?bar=1");
    ok(code == 307, "307");
    ok_str(redirect(t, mkreq("GET", "foo.com", "/path2?bar=1", NULL), &code), "http://foo.com/new2");
    ok(code == 308, "308");
    ok_str(redirect(t, mkreq("GET", "foo.com", "/path3?bar=1", NULL), &code), "http://foo.com/new3?foo=1");
    ok_str(redirect(t, mkreq("GET", "foo.com", "/pre/a?b", NULL), &code), "http://foo.com/post/a?b");
    ok_str(redirect(t, mkreq("GET", "foo.com", "/rx/a/b?c", NULL), &code), "http://foo.com/x/a/b?c");
    ok_str(redirect(t, mkreq("GET", "foo.com", "/scheme", NULL), &code), "ws://ws.example/scheme");
    ok_str(redirect(t, mkreq("GET", "foo.com", "/strip?x=y", NULL), &code), "http://foo.com/strip");
    lg_route_table_free(t);

    t = compile(
        "ignore_port_in_host_matching: true\n"
        "virtual_hosts:\n"
        "- {name: all, domains: [all.com], require_tls: ALL, routes: [{name: r, match: {prefix: /}, route: {cluster: a}}]}\n"
        "- {name: ext, domains: [ext.com], require_tls: EXTERNAL_ONLY, routes: [{name: r, match: {prefix: /}, route: {cluster: "
        "a}}]}\n");
    lg_req_head_t *req = mkreq("GET", "all.com:80", "/p?q", NULL);
    ok_str(route_name(t, req, 0), "(ssl)");
    ok_str(redirect(t, req, &code), "https://all.com:80/p?q");
    ok(code == 301, "ssl redirect is 301");
    ok_str(route_name(t, mkreq("GET", "all.com", "/", "x-forwarded-proto", "https", NULL), 0), "r");
    ok_str(route_name(t, mkreq("GET", "all.com", "/", "x-envoy-internal", "true", NULL), 0), "(ssl)");
    ok_str(route_name(t, mkreq("GET", "ext.com", "/", NULL), 0), "(ssl)");
    ok_str(route_name(t, mkreq("GET", "ext.com", "/", "x-envoy-internal", "true", NULL), 0), "r");
    lg_route_table_free(t);

    t = compile("virtual_hosts: [{name: v, domains: ['*'], routes: [\n"
                "  {match: {prefix: /d}, direct_response: {status: 200, body: {inline_string: hello}}},\n"
                "  {match: {prefix: /e}, direct_response: {status: 404}},\n"
                "  {match: {prefix: /n}, non_forwarding_action: {}}]}]");
    const lg_route_t *r = lg_route_match(t, mkreq("GET", "h", "/d", NULL), 0, NULL);
    ok(r->kind == LG_ROUTE_DIRECT_RESPONSE && r->direct_status == 200 && r->has_direct_body &&
           h2o_memis(r->direct_body.base, r->direct_body.len, H2O_STRLIT("hello")),
       "direct response with body");
    r = lg_route_match(t, mkreq("GET", "h", "/e", NULL), 0, NULL);
    ok(r->kind == LG_ROUTE_DIRECT_RESPONSE && r->direct_status == 404 && !r->has_direct_body, "direct response without body");
    r = lg_route_match(t, mkreq("GET", "h", "/n", NULL), 0, NULL);
    ok(r->kind == LG_ROUTE_NON_FORWARDING, "non forwarding");
    lg_route_table_free(t);
}

static void test_policies(void)
{
    lg_route_table_t *t =
        compile("virtual_hosts:\n"
                "- name: v\n"
                "  domains: ['*']\n"
                "  retry_policy: {retry_on: 'connect-failure', num_retries: 7}\n"
                "  per_request_buffer_limit_bytes: 1234\n"
                "  routes:\n"
                "  - name: own\n"
                "    match: {prefix: /own}\n"
                "    route:\n"
                "      cluster: a\n"
                "      timeout: 2.5s\n"
                "      idle_timeout: 0s\n"
                "      max_stream_duration: {max_stream_duration: 60s, grpc_timeout_header_max: 5s}\n"
                "      cluster_not_found_response_code: NOT_FOUND\n"
                "      upgrade_configs: [{upgrade_type: WebSocket}, {upgrade_type: CONNECT, connect_config: {allow_post: true}}]\n"
                "      retry_policy:\n"
                "        retry_on: ' 5xx, reset ,retriable-status-codes,unknown,unavailable,retriable-headers'\n"
                "        per_try_timeout: 0.25s\n"
                "        retriable_status_codes: [409, 503]\n"
                "        retry_back_off: {base_interval: 0.1s}\n"
                "        retriable_headers: [{name: x-retry, present_match: true}]\n"
                "        retry_host_predicate: [{name: envoy.retry_host_predicates.previous_hosts}]\n"
                "        host_selection_retry_max_attempts: 3\n"
                "  - name: inherit\n"
                "    per_request_buffer_limit_bytes: 99\n"
                "    match: {prefix: /}\n"
                "    route: {cluster: a, timeout: 0s}\n");
    const lg_route_t *r = lg_route_match(t, mkreq("GET", "h", "/own", NULL), 0, NULL);
    const lg_retry_policy_t *rp = r->action.retry_policy;
    ok(rp != NULL && rp->retry_on == (LG_RETRY_ON_5XX | LG_RETRY_ON_RESET | LG_RETRY_ON_RETRIABLE_STATUS_CODES |
                                      LG_RETRY_ON_GRPC_UNAVAILABLE | LG_RETRY_ON_RETRIABLE_HEADERS),
       "retry_on bits %x", rp != NULL ? rp->retry_on : 0);
    ok(rp->num_retries == 1 && rp->per_try_timeout_ms == 250, "num_retries default 1, per_try_timeout");
    ok(rp->n_retriable_status_codes == 2 && rp->retriable_status_codes[1] == 503, "retriable_status_codes");
    ok(rp->base_interval_ms == 100 && rp->max_interval_ms == 1000, "backoff %llu/%llu", (unsigned long long)rp->base_interval_ms,
       (unsigned long long)rp->max_interval_ms);
    ok(rp->previous_hosts && rp->host_selection_retry_max_attempts == 3, "previous_hosts predicate");
    lg_headers_t resp_headers = {NULL, 0, 0};
    lg_headers_add(&pool, &resp_headers, LG_LIT("x-retry"), LG_LIT("1"));
    ok(rp->n_retriable_headers == 1 && lg_header_matcher_match(&rp->retriable_headers[0], &resp_headers), "retriable_headers");
    ok(r->action.timeout_ms == 2500 && r->action.idle_timeout_ms == 0, "timeouts");
    ok(r->action.max_stream_duration_ms == 60000 && r->action.grpc_timeout_header_max_ms == 5000 &&
           r->action.grpc_timeout_header_offset_ms == -1,
       "max_stream_duration");
    ok(r->action.cluster_not_found_response_code == 404, "cluster_not_found_response_code");
    ok(r->action.n_upgrade_configs == 2 &&
           h2o_memis(r->action.upgrade_configs[0].upgrade_type.base, r->action.upgrade_configs[0].upgrade_type.len,
                     H2O_STRLIT("websocket")) &&
           r->action.upgrade_configs[0].enabled && r->action.upgrade_configs[1].connect_allow_post,
       "upgrade configs");
    ok(r->per_request_buffer_limit_bytes == 1234, "buffer limit from the vhost");
    r = lg_route_match(t, mkreq("GET", "h", "/x", NULL), 0, NULL);
    rp = r->action.retry_policy;
    ok(rp != NULL && rp->retry_on == LG_RETRY_ON_CONNECT_FAILURE && rp->num_retries == 7, "vhost retry policy inherited");
    ok(rp->base_interval_ms == 25 && rp->max_interval_ms == 250, "default backoff 25/250");
    ok(r->action.timeout_ms == 0 && r->action.idle_timeout_ms == -1 && r->action.max_stream_duration_ms == -1,
       "timeout 0 disables");
    ok(r->per_request_buffer_limit_bytes == 99, "route buffer limit");
    lg_route_table_free(t);

    t = compile("virtual_hosts: [{name: v, domains: ['*'], routes: [{match: {prefix: /}, route: {cluster: a}}]}]");
    r = lg_route_match(t, mkreq("GET", "h", "/x", NULL), 0, NULL);
    ok(r->action.timeout_ms == 15000 && r->action.retry_policy == NULL && r->per_request_buffer_limit_bytes == UINT32_MAX,
       "defaults: 15 s timeout, no retries");
    lg_route_table_free(t);
}

/* ---- header mutations ---- */

static const char *header_list(const lg_headers_t *h)
{
    lg_strbuf_t b = {0};
    for (size_t i = 0; i != h->size; ++i)
        lg_strbuf_printf(&b, "%s%.*s=%.*s", i ? " " : "", (int)h->entries[i].name.len, h->entries[i].name.base,
                         (int)h->entries[i].value.len, h->entries[i].value.base);
    h2o_iovec_t v = h2o_strdup(&pool, b.base != NULL ? b.base : "", SIZE_MAX);
    lg_strbuf_free(&b);
    return v.base;
}

static void test_header_mutations(void)
{
    static const char yaml[] =
        "%s"
        "request_headers_to_add: [{header: {key: x-level, value: rc}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}]\n"
        "response_headers_to_add: [{header: {key: x-resp, value: rc}, append: false}]\n"
        "virtual_hosts:\n"
        "- name: v\n"
        "  domains: ['*']\n"
        "  request_headers_to_add: [{header: {key: x-level, value: vhost}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}]\n"
        "  routes:\n"
        "  - match: {prefix: /}\n"
        "    route: {cluster: a}\n"
        "    request_headers_to_remove: [x-remove]\n"
        "    request_headers_to_add:\n"
        "    - {header: {key: X-Level, value: route}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}\n"
        "    - {header: {key: x-append, value: two}}\n"
        "    - {header: {key: x-absent, value: new}, append_action: ADD_IF_ABSENT}\n"
        "    - {header: {key: x-present, value: new}, append_action: ADD_IF_ABSENT}\n"
        "    - {header: {key: x-ow, value: new}, append_action: OVERWRITE_IF_EXISTS}\n"
        "    - {header: {key: x-ow-missing, value: new}, append_action: OVERWRITE_IF_EXISTS}\n"
        "    - {header: {key: x-client, value: '%%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%% %%REQ(x-append)%%'}}\n"
        "    - {header: {key: x-empty, value: '%%REQ(x-nothing)%%'}}\n"
        "    - {header: {key: x-keep, value: '%%REQ(x-nothing)%%'}, keep_empty_value: true}\n"
        "    - {header: {key: x-pct, value: '100%%%%'}}\n";
    char buf[4096];
    snprintf(buf, sizeof(buf), yaml, "");
    lg_route_table_t *t = compile(buf);
    ok(t != NULL, "compile");
    lg_req_head_t *req = mkreq("GET", "h", "/", "x-append", "one", "x-remove", "gone", "x-present", "old", "x-ow", "old", NULL);
    lg_stream_info_t si = {0};
    struct sockaddr_in *sin = (struct sockaddr_in *)&si.downstream_remote;
    sin->sin_family = AF_INET;
    sin->sin_port = htons(1234);
    inet_pton(AF_INET, "10.0.0.7", &sin->sin_addr);
    si.request = req;
    const lg_route_t *r = lg_route_match(t, req, 0, NULL);
    lg_route_apply_request_headers(r, NULL, &req->headers, &si, &pool);
    /* an overwrite removes and appends (Envoy's setReferenceKey); rc is applied last and wins */
    ok_str(header_list(&req->headers), "x-append=one x-present=old x-ow=new x-append=two x-absent=new "
                                       "x-client=10.0.0.7 one x-keep= x-pct=100% x-level=rc");
    lg_resp_head_t resp = {200, LG_HTTP_11, {NULL, 0, 0}};
    lg_headers_add(&pool, &resp.headers, LG_LIT("x-resp"), LG_LIT("upstream"));
    lg_route_apply_response_headers(r, NULL, &resp.headers, &si, &pool);
    ok_str(header_list(&resp.headers), "x-resp=rc");
    lg_route_table_free(t);

    snprintf(buf, sizeof(buf), yaml, "most_specific_header_mutations_wins: true\n");
    t = compile(buf);
    req = mkreq("GET", "h", "/", NULL);
    r = lg_route_match(t, req, 0, NULL);
    lg_route_apply_request_headers(r, NULL, &req->headers, NULL, &pool);
    ok(strstr(header_list(&req->headers), "x-level=route") != NULL, "most specific wins: %s", header_list(&req->headers));
    lg_route_table_free(t);

    /* weighted cluster mutations come first */
    t = compile("virtual_hosts: [{name: v, domains: ['*'], routes: [{match: {prefix: /}, route: {weighted_clusters: {clusters: [\n"
                "  {name: a, weight: 1, request_headers_to_add: [{header: {key: x-wc, value: a}}], response_headers_to_remove: "
                "[x-secret]}]}},\n"
                "  request_headers_to_add: [{header: {key: x-wc, value: route}}]}]}]");
    req = mkreq("GET", "h", "/", NULL);
    r = lg_route_match(t, req, 0, NULL);
    const lg_weighted_cluster_t *wc;
    lg_route_pick_cluster(r, req, 0, &wc);
    lg_route_apply_request_headers(r, wc, &req->headers, NULL, &pool);
    ok_str(header_list(&req->headers), "x-wc=a x-wc=route");
    lg_headers_t h = {NULL, 0, 0};
    lg_headers_add(&pool, &h, LG_LIT("x-secret"), LG_LIT("1"));
    lg_route_apply_response_headers(r, wc, &h, NULL, &pool);
    ok_str(header_list(&h), "");
    lg_route_table_free(t);
}

/* ---- compile errors ---- */

static void test_errors(void)
{
#define VH(routes)                                                                                                        \
    "name: rc\nvirtual_hosts: [{name: v0, domains: [a]}, {name: v, domains: ['*'], routes: [{match: {prefix: /}, route: " \
    "{cluster: a}}, " routes "]}]"
    ok_str(compile_error(VH("{match: {safe_regex: {regex: '('}}, route: {cluster: a}}"), NULL),
           "virtual_hosts[1].routes[1].match.safe_regex.regex: invalid regex '(': missing ): (");
    ok(strstr(compile_error(VH("{match: {safe_regex: {regex: 'a{1000}'}}, route: {cluster: a}}"), NULL),
              "virtual_hosts[1].routes[1].match.safe_regex.regex: regex 'a{1000}' RE2 program size of ") != NULL,
       "program size");
    ok_str(compile_error(VH("{match: {path_separated_prefix: /a/}, route: {cluster: a}}"), NULL),
           "virtual_hosts[1].routes[1].match.path_separated_prefix: value does not match regex pattern \"^[^?#]+[^?#/]$\"");
    ok_str(compile_error(VH("{match: {prefix: /}, route: {cluster: nope}}"), &validate_opts),
           "virtual_hosts[1].routes[1].route.cluster: route: unknown cluster 'nope'");
    ok_str(compile_error("validate_clusters: false\n" VH("{match: {prefix: /}, route: {cluster: nope}}"), &validate_opts), "OK");
    ok_str(compile_error(VH("{match: {prefix: /}, route: {cluster: nope}}"), NULL), "OK");
    ok_str(compile_error("validate_clusters: true\n" VH("{match: {prefix: /}, route: {cluster: nope}}"),
                         &(lg_route_compile_opts_t){0, cluster_exists, NULL}),
           "virtual_hosts[1].routes[1].route.cluster: route: unknown cluster 'nope'");
    ok_str(compile_error(
               VH("{match: {prefix: /}, route: {weighted_clusters: {clusters: [{name: a, weight: 1}, {name: x, weight: 1}]}}}"),
               &validate_opts),
           "virtual_hosts[1].routes[1].route.weighted_clusters.clusters[1].name: route: unknown weighted cluster 'x'");
    ok_str(compile_error(VH("{match: {prefix: /}, route: {weighted_clusters: {clusters: [{name: a, weight: 0}]}}}"), NULL),
           "virtual_hosts[1].routes[1].route.weighted_clusters: Sum of weights in the weighted_cluster must be greater than 0.");
    ok_str(compile_error(
               VH("{match: {prefix: /}, route: {weighted_clusters: {clusters: [{name: a, cluster_header: x, weight: 1}]}}}"), NULL),
           "virtual_hosts[1].routes[1].route.weighted_clusters.clusters[0]: Only one of name or cluster_header can be specified");
    ok_str(
        compile_error(VH("{match: {prefix: /}, route: {cluster: a, request_mirror_policies: [{cluster: nope}]}}"), &validate_opts),
        "virtual_hosts[1].routes[1].route.request_mirror_policies[0].cluster: route: unknown shadow cluster 'nope'");
    ok_str(compile_error(VH("{match: {prefix: /}, route: {cluster: a, prefix_rewrite: /x, regex_rewrite: {pattern: {regex: a}, "
                            "substitution: b}}}"),
                         NULL),
           "virtual_hosts[1].routes[1].route: Specify only one of prefix_rewrite, regex_rewrite or path_rewrite_policy");
    ok_str(compile_error(VH("{match: {prefix: /}, route: {cluster: a, hedge_policy: {}}}"), NULL),
           "virtual_hosts[1].routes[1].route.hedge_policy: unsupported field");
    ok_str(compile_error(VH("{match: {prefix: /, tls_context: {presented: true}}, route: {cluster: a}}"), NULL),
           "virtual_hosts[1].routes[1].match.tls_context: unsupported field");
    ok_str(
        compile_error(VH("{match: {prefix: /}, route: {cluster: a, retry_policy: {retry_back_off: {base_interval: 1s, "
                         "max_interval: 0.5s}}}}"),
                      NULL),
        "virtual_hosts[1].routes[1].route.retry_policy: retry_policy.max_interval must greater than or equal to the base_interval");
    ok_str(compile_error(
               VH("{match: {prefix: /}, route: {cluster: a}, request_headers_to_add: [{header: {key: ':path', value: x}}]}"), NULL),
           "virtual_hosts[1].routes[1].request_headers_to_add[0]: :-prefixed or host headers may not be modified");
    ok_str(compile_error(VH("{match: {prefix: /}, route: {cluster: a}, response_headers_to_remove: [Host]}"), NULL),
           "virtual_hosts[1].routes[1].response_headers_to_remove[0]: :-prefixed or host headers may not be removed");
    ok_str(
        compile_error(
            VH("{match: {prefix: /}, route: {cluster: a}, request_headers_to_add: [{header: {key: x, value: '%NOPE%'}}]}"), NULL),
        "virtual_hosts[1].routes[1].request_headers_to_add[0].header.value: Not supported field in StreamInfo: NOPE");
    ok_str(compile_error(
               VH("{match: {prefix: /}, route: {cluster: a}, request_headers_to_add: [{header: {key: x, value: y}, append: true, "
                  "append_action: ADD_IF_ABSENT}]}"),
               NULL),
           "virtual_hosts[1].routes[1].request_headers_to_add[0]: Both append and append_action are set and it's not allowed");
    ok_str(compile_error(VH("{match: {prefix: /, headers: [{name: x, string_match: {safe_regex: {regex: a}, ignore_case: true}}]}, "
                            "route: {cluster: a}}"),
                         NULL),
           "virtual_hosts[1].routes[1].match.headers[0].string_match: ignore_case has no effect for safe_regex.");
    ok_str(compile_error(VH("{match: {prefix: /, headers: [{name: x, prefix_match: ''}]}, route: {cluster: a}}"), NULL),
           "virtual_hosts[1].routes[1].match.headers[0].prefix_match: value length must be at least 1 characters");
    ok_str(compile_error(VH("{match: {prefix: /}, direct_response: {status: 200, body: {inline_string: '0123456789'}}}"), NULL),
           "OK");
    ok_str(compile_error("max_direct_response_body_size_bytes: 5\n" VH(
                             "{match: {prefix: /}, direct_response: {status: 200, body: {inline_string: '0123456789'}}}"),
                         NULL),
           "virtual_hosts[1].routes[1].direct_response.body: response body size is 10 bytes; maximum is 5");
    ok_str(compile_error(VH("{match: {prefix: /}, direct_response: {status: 600}}"), NULL),
           "virtual_hosts[1].routes[1].direct_response.status: value must be inside range [200, 600)");
    ok_str(compile_error(VH("{match: {prefix: /}, direct_response: {status: 200, body: {filename: /nonexistent/file}}}"), NULL),
           "virtual_hosts[1].routes[1].direct_response.body.filename: response body file /nonexistent/file does not exist");
    ok_str(compile_error(VH("{match: {prefix: /}}"), NULL), "virtual_hosts[1].routes[1].action: value is required");
    ok_str(compile_error(VH("{match: {prefix: /}, route: {}}"), NULL),
           "virtual_hosts[1].routes[1].route.cluster_specifier: value is required");
    ok_str(compile_error(VH("{match: {prefix: /}, route: {cluster: a, upgrade_configs: [{upgrade_type: websocket}, {upgrade_type: "
                            "WebSocket}]}}"),
                         NULL),
           "virtual_hosts[1].routes[1].route.upgrade_configs[1]: Duplicate upgrade WebSocket");
    ok_str(compile_error(VH("{match: {prefix: /}, route: {cluster: a, retry_policy: {retry_host_predicate: [{name: "
                            "envoy.retry_host_predicates.omit_canary_hosts}]}}}"),
                         NULL),
           "virtual_hosts[1].routes[1].route.retry_policy.retry_host_predicate[0]: unsupported retry host predicate "
           "'envoy.retry_host_predicates.omit_canary_hosts'");
    ok_str(compile_error("vhds: {config_source: {ads: {}}}", NULL), "vhds: unsupported field");
    ok_str(compile_error("request_headers_to_add: [{header: {key: host, value: x}}]", NULL),
           "request_headers_to_add[0]: :-prefixed or host headers may not be modified");
#undef VH
}

static void test_misc(void)
{
    lg_route_table_t *t = compile(
        "name: misc\n"
        "internal_only_headers: [X-Internal]\n"
        "request_mirror_policies: [{cluster: mirror}]\n"
        "typed_per_filter_config: {envoy.filters.http.x: {'@type': type.googleapis.com/google.protobuf.StringValue, value: rc}}\n"
        "virtual_hosts:\n"
        "- name: v\n"
        "  domains: ['*']\n"
        "  typed_per_filter_config: {envoy.filters.http.y: {'@type': type.googleapis.com/google.protobuf.StringValue, value: vh}}\n"
        "  routes:\n"
        "  - match: {prefix: /}\n"
        "    route: {cluster: a}\n"
        "    typed_per_filter_config: {envoy.filters.http.x: {'@type': type.googleapis.com/google.protobuf.StringValue, value: "
        "route}}\n");
    ok(t != NULL, "compile");
    const lg_route_t *r = lg_route_match(t, mkreq("GET", "h", "/", NULL), 0, NULL);
    ok(t->n_internal_only_headers == 1 &&
           h2o_memis(t->internal_only_headers[0].base, t->internal_only_headers[0].len, H2O_STRLIT("x-internal")),
       "internal_only_headers lower-cased");
    ok(r->action.n_mirror_policies == 1 &&
           h2o_memis(r->action.mirror_policies[0].cluster.base, r->action.mirror_policies[0].cluster.len, H2O_STRLIT("mirror")) &&
           r->action.mirror_policies[0].numerator == 100,
       "mirror policies inherited from the route config");
    const Google__Protobuf__Any *x = lg_route_per_filter_config(r, NULL, "envoy.filters.http.x");
    const Google__Protobuf__Any *y = lg_route_per_filter_config(r, NULL, "envoy.filters.http.y");
    ok(x != NULL && r->pb->n_typed_per_filter_config == 1 && x == r->pb->typed_per_filter_config[0]->value,
       "route per-filter config wins");
    ok(y != NULL && y == r->vhost->pb->typed_per_filter_config[0]->value, "vhost per-filter config");
    ok(lg_route_per_filter_config(r, NULL, "envoy.filters.http.z") == NULL, "no per-filter config");
    lg_route_table_t *t2 = lg_route_table_retain(t);
    lg_route_table_release(t);
    ok(lg_route_match(t2, mkreq("GET", "h", "/", NULL), 0, NULL) == r, "retained table still usable");
    lg_route_table_release(t2);

    /* standalone matchers */
    Envoy__Type__Matcher__V3__StringMatcher sm = ENVOY__TYPE__MATCHER__V3__STRING_MATCHER__INIT;
    sm.match_pattern_case = ENVOY__TYPE__MATCHER__V3__STRING_MATCHER__MATCH_PATTERN_CONTAINS;
    sm.contains = "AbC";
    sm.ignore_case = 1;
    lg_string_matcher_t m;
    lg_error_t err;
    ok(lg_string_matcher_compile(&sm, &m, &err) == 0, "standalone string matcher");
    ok(lg_string_matcher_match(&m, H2O_STRLIT("xxabcxx")) && !lg_string_matcher_match(&m, H2O_STRLIT("xxabxx")),
       "contains ignore_case");
    lg_string_matcher_dispose(&m);
}

/* lg_route_table_compile_owned: the table keeps the message it was given (no
 * copy) and its strings point into it unless compiling changes them. */
static void test_owned(void)
{
    Envoy__Config__Route__V3__RouteConfiguration *rc = decode("name: rc\n"
                                                              "virtual_hosts:\n"
                                                              "- name: v\n"
                                                              "  domains: ['*']\n"
                                                              "  routes:\n"
                                                              "  - name: r0\n"
                                                              "    match: {prefix: /a/}\n"
                                                              "    route: {cluster_header: X-Cluster, prefix_rewrite: /b/}\n"
                                                              "  - name: r1\n"
                                                              "    match: {path: /p}\n"
                                                              "    route: {cluster_header: x-lower}\n");
    lg_error_t err = {{0}};
    lg_route_table_t *t = rc != NULL ? lg_route_table_compile_owned(rc, NULL, &err) : NULL;
    ok(t != NULL && t->pb == rc, "owned: the table keeps the message");
    if (t == NULL)
        return;
    const Envoy__Config__Route__V3__Route *pb0 = rc->virtual_hosts[0]->routes[0], *pb1 = rc->virtual_hosts[0]->routes[1];
    const lg_route_t *r0 = lg_route_match(t, mkreq("GET", "h", "/a/x?q", NULL), 0, NULL);
    const lg_route_t *r1 = lg_route_match(t, mkreq("GET", "h", "/p", NULL), 0, NULL);
    ok(r0 != NULL && r0->pb == pb0 && r1 != NULL && r1->pb == pb1, "owned: routes found");
    if (r0 == NULL || r1 == NULL) {
        lg_route_table_release(t);
        return;
    }
    ok(r0->name.base == pb0->name && r0->path_value.base == pb0->match->prefix && r0->name.len == 2,
       "owned: name and prefix point into the message");
    ok(h2o_memis(r0->action.cluster_header.base, r0->action.cluster_header.len, H2O_STRLIT("x-cluster")) &&
           r0->action.cluster_header.base != pb0->route->cluster_header,
       "owned: a lower-cased header name is a copy");
    ok(r1->action.cluster_header.base == pb1->route->cluster_header, "owned: an already lower-case header name is not copied");
    h2o_iovec_t p = lg_route_path_rewrite(r0, h2o_iovec_init(H2O_STRLIT("/a/x?q")), &pool);
    ok(h2o_memis(p.base, p.len, H2O_STRLIT("/b/x?q")), "owned: prefix_rewrite from the message");
    lg_route_table_release(t);

    /* a failed compile frees the message (the ASan build checks) */
    rc = decode("virtual_hosts:\n- {name: v, domains: ['*'], routes: [{match: {safe_regex: {regex: '('}}, route: {cluster: a}}]}");
    ok(rc != NULL && lg_route_table_compile_owned(rc, NULL, &err) == NULL, "owned: invalid config rejected");
    ok_str(err.msg, "virtual_hosts[0].routes[0].match.safe_regex.regex: invalid regex '(': missing ): (");
}

/* Tables of every size up to a few chunks: each vhost's routes array and
 * strings must stay intact while later ones are allocated. */
static void test_table_sizes(void)
{
    int good = 1;
    for (int n = 1; n <= 24 && good; ++n) {
        lg_strbuf_t y = {0};
        lg_strbuf_puts(&y, "virtual_hosts:\n");
        for (int v = 0; v != n; ++v) {
            lg_strbuf_printf(&y, "- name: v%d\n  domains: [h%d]\n  routes:\n", v, v);
            for (int r = 0; r != n * 3; ++r)
                lg_strbuf_printf(&y, "  - {name: v%dr%d, match: {prefix: /R%d/}, route: {cluster_header: X-C%d}}\n", v, r, r, r);
        }
        lg_route_table_t *t = compile(y.base);
        good = t != NULL;
        for (int v = 0; v != n && good; ++v)
            for (int r = 0; r != n * 3 && good; ++r) {
                char host[16], path[32], want[32], hdr[16];
                snprintf(host, sizeof(host), "h%d", v);
                snprintf(path, sizeof(path), "/R%d/x", r);
                snprintf(want, sizeof(want), "v%dr%d", v, r);
                snprintf(hdr, sizeof(hdr), "x-c%d", r);
                const lg_route_t *rt = lg_route_match(t, mkreq("GET", host, path, NULL), 0, NULL);
                good = rt != NULL && strcmp(rt->name.base, want) == 0 &&
                       h2o_memis(rt->action.cluster_header.base, rt->action.cluster_header.len, hdr, strlen(hdr));
                if (!good)
                    fprintf(stderr, "%d vhosts: %s%s -> %s\n", n, host, path, rt != NULL ? rt->name.base : "(none)");
            }
        lg_route_table_free(t);
        lg_strbuf_free(&y);
    }
    ok(good, "1 to 24 vhosts of 3 to 72 routes: every route found with its strings");
}

int main(void)
{
    h2o_mem_init_pool(&pool);
    test_domains();
    test_many_vhosts();
    test_domain_errors();
    test_matchers();
    test_first_match_order();
    test_big_table();
    test_owned();
    test_table_sizes();
    test_weighted();
    test_rewrites();
    test_redirects();
    test_policies();
    test_header_mutations();
    test_errors();
    test_misc();
    h2o_mem_clear_pool(&pool);
    return done();
}
