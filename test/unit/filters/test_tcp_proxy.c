/* tcp_proxy config compile: defaults, fields, errors naming the field, and
 * the weighted cluster pick. The relay itself is covered by
 * test/integration/test_tcp_proxy.py. */
#include "test.h"
#include "legate/pbjson.h"
#include "legate/stats.h"
#include "legate/tcp_proxy.h"

static lg_tcp_proxy_config_t *compile(const char *yaml, lg_error_t *err)
{
    lg_node_t *node = lg_yaml_parse(yaml, strlen(yaml), "test", err);
    ok(node != NULL, "yaml: %s", err->msg);
    ProtobufCMessage *m =
        lg_pbjson_decode(&envoy__extensions__filters__network__tcp_proxy__v3__tcp_proxy__descriptor, node, 0, err);
    lg_node_free(node);
    ok(m != NULL, "decode: %s", err->msg);
    if (m == NULL)
        return NULL;
    lg_tcp_proxy_config_t *c = lg_tcp_proxy_config_compile((void *)m, err);
    protobuf_c_message_free_unpacked(m, NULL);
    return c;
}

static void expect_error(const char *yaml, const char *want)
{
    lg_error_t err = {{0}};
    lg_tcp_proxy_config_t *c = compile(yaml, &err);
    ok(c == NULL, "expected an error for: %s", yaml);
    lg_tcp_proxy_config_free(c);
    ok_str(err.msg, want);
}

static void test_defaults(void)
{
    lg_error_t err = {{0}};
    lg_tcp_proxy_config_t *c = compile("stat_prefix: tcp\ncluster: backend\n", &err);
    ok(c != NULL, "compile: %s", err.msg);
    if (c == NULL)
        return;
    ok_str(c->stat_prefix, "tcp");
    ok_str(c->cluster, "backend");
    ok(c->n_weighted == 0, "not weighted");
    ok(c->idle_timeout_ms == 3600 * 1000, "idle timeout defaults to 1 h: %llu", (unsigned long long)c->idle_timeout_ms);
    ok(c->max_connect_attempts == 1, "one connect attempt by default");
    ok(c->max_connection_duration_ms == 0, "no max duration by default");
    ok(c->access_logs.n == 0, "no access log");
    ok(c->access_log_flush_interval_ms == 0 && !c->flush_access_log_on_connected, "log at the end only");
    ok_str(lg_stats_block_prefix(c->stats), "tcp.tcp.");
    ok_str(lg_tcp_proxy_pick_cluster(c, 12345), "backend");
    lg_tcp_proxy_config_free(c);
}

static void test_fields(void)
{
    lg_error_t err = {{0}};
    lg_tcp_proxy_config_t *c = compile("stat_prefix: t2\n"
                                       "cluster: b\n"
                                       "idle_timeout: 0s\n"
                                       "max_connect_attempts: 3\n"
                                       "max_downstream_connection_duration: 2.5s\n"
                                       "access_log_options: {access_log_flush_interval: 1s, flush_access_log_on_connected: true}\n",
                                       &err);
    ok(c != NULL, "compile: %s", err.msg);
    if (c == NULL)
        return;
    ok(c->idle_timeout_ms == 0, "idle_timeout 0s disables it");
    ok(c->max_connect_attempts == 3, "max_connect_attempts");
    ok(c->max_connection_duration_ms == 2500, "max duration %llu", (unsigned long long)c->max_connection_duration_ms);
    ok(c->access_log_flush_interval_ms == 1000 && c->flush_access_log_on_connected, "access log options");
    lg_tcp_proxy_config_free(c);

    c = compile("stat_prefix: t3\ncluster: b\naccess_log_flush_interval: 0.5s\nflush_access_log_on_connected: true\n", &err);
    ok(c != NULL && c->access_log_flush_interval_ms == 500 && c->flush_access_log_on_connected, "deprecated log fields: %s",
       err.msg);
    lg_tcp_proxy_config_free(c);
}

static void test_weighted(void)
{
    lg_error_t err = {{0}};
    lg_tcp_proxy_config_t *c = compile("stat_prefix: w\n"
                                       "weighted_clusters:\n"
                                       "  clusters:\n"
                                       "  - {name: a, weight: 1}\n"
                                       "  - {name: b, weight: 3}\n",
                                       &err);
    ok(c != NULL, "compile: %s", err.msg);
    if (c == NULL)
        return;
    ok(c->cluster == NULL && c->n_weighted == 2 && c->total_weight == 4, "two weighted clusters, total 4");
    /* Envoy's pickCluster: random % total picks the entry whose range holds it */
    ok_str(lg_tcp_proxy_pick_cluster(c, 0), "a");
    ok_str(lg_tcp_proxy_pick_cluster(c, 1), "b");
    ok_str(lg_tcp_proxy_pick_cluster(c, 3), "b");
    ok_str(lg_tcp_proxy_pick_cluster(c, 4), "a");
    ok_str(lg_tcp_proxy_pick_cluster(c, 4000003), "b");
    size_t as = 0;
    for (uint64_t r = 0; r != 4000; ++r)
        as += strcmp(lg_tcp_proxy_pick_cluster(c, r), "a") == 0;
    ok(as == 1000, "weights 1:3 give a a quarter of the values: %zu", as);
    lg_tcp_proxy_config_free(c);
}

static void test_errors(void)
{
    expect_error("cluster: b\n", "stat_prefix: value length must be at least 1 characters");
    expect_error("stat_prefix: x\n", "cluster_specifier: value is required (cluster or weighted_clusters)");
    expect_error("stat_prefix: x\nweighted_clusters: {clusters: []}\n",
                 "weighted_clusters.clusters: value must contain at least 1 item(s)");
    expect_error("stat_prefix: x\nweighted_clusters: {clusters: [{name: a, weight: 1}, {name: b, weight: 0}]}\n",
                 "weighted_clusters.clusters[1].weight: value must be greater than or equal to 1");
    expect_error("stat_prefix: x\nweighted_clusters: {clusters: [{weight: 2}]}\n",
                 "weighted_clusters.clusters[0].name: value length must be at least 1 characters");
    expect_error("stat_prefix: x\ncluster: b\nmax_connect_attempts: 0\n",
                 "max_connect_attempts: value must be greater than or equal to 1");
    expect_error("stat_prefix: x\ncluster: b\nmax_downstream_connection_duration: 0s\n",
                 "max_downstream_connection_duration: value must be greater than or equal to 0.001s");
    expect_error("stat_prefix: x\ncluster: b\ntunneling_config: {hostname: h}\n",
                 "tunneling_config: tunneling TCP over HTTP is not supported");
    expect_error("stat_prefix: x\ncluster: b\non_demand: {}\n", "on_demand: on-demand cluster discovery is not supported");
    expect_error("stat_prefix: x\ncluster: b\nflush_access_log_on_connected: true\naccess_log_options: {}\n",
                 "Only one of flush_access_log_on_connected or access_log_options can be specified.");
    expect_error("stat_prefix: x\ncluster: b\naccess_log_options: {access_log_flush_interval: 0.0001s}\n",
                 "access_log_options.access_log_flush_interval: value must be greater than or equal to 0.001s");
}

/* Two configs with one stat_prefix share tcp.<prefix>.* as in Envoy. */
static void test_shared_stats(void)
{
    lg_error_t err = {{0}};
    lg_tcp_proxy_config_t *a = compile("stat_prefix: same\ncluster: a\n", &err),
                          *b = compile("stat_prefix: same\ncluster: b\n", &err);
    ok(a != NULL && b != NULL && a->stats == b->stats, "one block per stat_prefix");
    lg_tcp_proxy_config_free(a);
    lg_tcp_proxy_config_free(b);
}

int main(void)
{
    lg_stats_init(1);
    test_defaults();
    test_fields();
    test_weighted();
    test_errors();
    test_shared_stats();
    lg_stats_shutdown();
    return done();
}
