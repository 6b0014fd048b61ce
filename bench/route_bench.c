/*
 * Route-match cost per request at a given route table size (workload 8).
 *
 *   route_bench <kind> <n> [iterations]
 *
 * kind is "prefix" (routes match prefix "/r<i>/"), "path" (exact path
 * "/r<i>") or "regex" (safe_regex "/r<i>/[a-z]+"). The table has one virtual
 * host with n routes, compiled by the real route compiler; the request hits
 * the last route (the worst case for a linear scan). Prints one line:
 *   kind=<kind> routes=<n> ns_per_match=<x> compile_ms=<y>
 * Exits non-zero if the table does not compile or the request does not reach
 * the last route.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <h2o/string_.h>
#include "legate/http.h"
#include "legate/pbjson.h"
#include "legate/route.h"

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static void append(char **buf, size_t *len, size_t *cap, const char *s)
{
    size_t n = strlen(s);
    if (*len + n + 1 > *cap) {
        *cap = (*len + n + 1) * 2;
        if ((*buf = realloc(*buf, *cap)) == NULL)
            abort();
    }
    memcpy(*buf + *len, s, n + 1);
    *len += n;
}

/* The RouteConfiguration as JSON (JSON is YAML for lg_yaml_parse). */
static char *route_config_json(const char *kind, long n)
{
    char *buf = NULL, item[256];
    size_t len = 0, cap = 0;
    append(&buf, &len, &cap, "{\"name\":\"bench\",\"virtual_hosts\":[{\"name\":\"bench\",\"domains\":[\"*\"],\"routes\":[");
    for (long i = 0; i < n; i++) {
        if (strcmp(kind, "prefix") == 0)
            snprintf(item, sizeof(item), "{\"match\":{\"prefix\":\"/r%ld/\"}", i);
        else if (strcmp(kind, "path") == 0)
            snprintf(item, sizeof(item), "{\"match\":{\"path\":\"/r%ld\"}", i);
        else
            snprintf(item, sizeof(item), "{\"match\":{\"safe_regex\":{\"regex\":\"/r%ld/[a-z]+\"}}", i);
        append(&buf, &len, &cap, i ? "," : "");
        append(&buf, &len, &cap, item);
        snprintf(item, sizeof(item), ",\"route\":{\"cluster\":\"c%ld\"}}", i);
        append(&buf, &len, &cap, item);
    }
    append(&buf, &len, &cap, "]}]}");
    return buf;
}

static lg_route_table_t *compile(const char *kind, long n)
{
    lg_error_t err = {{0}};
    char *json = route_config_json(kind, n);
    lg_node_t *node = lg_yaml_parse(json, strlen(json), "bench.json", &err);
    free(json);
    if (node == NULL) {
        fprintf(stderr, "parse: %s\n", err.msg);
        return NULL;
    }
    ProtobufCMessage *m = lg_pbjson_decode(&envoy__config__route__v3__route_configuration__descriptor, node, 0, &err);
    lg_node_free(node);
    if (m == NULL) {
        fprintf(stderr, "decode: %s\n", err.msg);
        return NULL;
    }
    lg_route_table_t *t = lg_route_table_compile((Envoy__Config__Route__V3__RouteConfiguration *)m, NULL, &err);
    protobuf_c_message_free_unpacked(m, NULL);
    if (t == NULL)
        fprintf(stderr, "compile: %s\n", err.msg);
    return t;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s prefix|path|regex <routes> [iterations]\n", argv[0]);
        return 2;
    }
    const char *kind = argv[1];
    long n = atol(argv[2]), iters = argc > 3 ? atol(argv[3]) : 100000;
    double t0 = now_ns();
    lg_route_table_t *t = compile(kind, n);
    double compile_ms = (now_ns() - t0) / 1e6;
    if (t == NULL || n < 1)
        return 1;

    h2o_mem_pool_t pool;
    h2o_mem_init_pool(&pool);
    char path[64], want[64];
    snprintf(path, sizeof(path), strcmp(kind, "path") == 0 ? "/r%ld" : "/r%ld/abc", n - 1);
    snprintf(want, sizeof(want), "c%ld", n - 1);
    lg_req_head_t req = {.method = h2o_iovec_init(H2O_STRLIT("GET")),
                         .scheme = h2o_iovec_init(H2O_STRLIT("http")),
                         .authority = h2o_iovec_init(H2O_STRLIT("bench.example")),
                         .path = h2o_iovec_init(path, strlen(path)),
                         .version = LG_HTTP_11};
    lg_headers_add(&pool, &req.headers, LG_LIT("user-agent"), LG_LIT("bench"));
    lg_headers_add(&pool, &req.headers, LG_LIT("accept"), LG_LIT("*/*"));

    const lg_route_t *r = lg_route_match(t, &req, 0, NULL);
    h2o_iovec_t cluster = r != NULL ? lg_route_pick_cluster(r, &req, 0, NULL) : h2o_iovec_init(NULL, 0);
    if (cluster.base == NULL || !h2o_memis(cluster.base, cluster.len, want, strlen(want))) {
        fprintf(stderr, "request %s did not reach the last route (%s)\n", path, want);
        return 1;
    }
    /* The fastest of several batches (noise on a shared machine only adds time);
     * a batch stops early after 200 ms so that slow (regex) tables stay short. */
    double best = 0;
    for (int batch = 0; batch < 7; batch++) {
        double t1 = now_ns();
        long done = 0;
        while (done < iters) {
            if (lg_route_match(t, &req, done, NULL) == NULL)
                return 1;
            if ((++done & 255) == 0 && now_ns() - t1 > 2e8)
                break;
        }
        double ns = (now_ns() - t1) / done;
        if (batch == 0 || ns < best)
            best = ns;
    }
    double ns = best;
    printf("kind=%s routes=%ld ns_per_match=%.1f load_ms=%.1f\n", kind, n, ns, compile_ms);
    lg_route_table_free(t);
    h2o_mem_clear_pool(&pool);
    return 0;
}
