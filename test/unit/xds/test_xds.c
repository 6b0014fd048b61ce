/*
 * The xDS client's apply path without a transport: responses go straight to
 * lg__xds_sotw_update / lg__xds_delta_update and the published snapshot is
 * inspected. Also the string map and the snapshot's RDS lookup.
 */
#include "test.h"
#include "../../../src/xds/xds_internal.h"
#include "legate/pbjson.h"
#include "legate/server.h"

static lg_options_t opts;

static ProtobufCMessage *decode_yaml(const ProtobufCMessageDescriptor *d, const char *yaml)
{
    lg_error_t err = {{0}};
    lg_node_t *n = lg_yaml_parse(yaml, strlen(yaml), "test", &err);
    ProtobufCMessage *m = n != NULL ? lg_pbjson_decode(d, n, 0, &err) : NULL;
    lg_node_free(n);
    if (m == NULL)
        fprintf(stderr, "decode: %s\n", err.msg);
    return m;
}

static Google__Protobuf__Any *any_yaml(lg_xds_type_t type, const ProtobufCMessageDescriptor *d, const char *yaml)
{
    ProtobufCMessage *m = decode_yaml(d, yaml);
    Google__Protobuf__Any *a = lg_malloc(sizeof(*a));
    google__protobuf__any__init(a);
    a->type_url = lg_strdup(lg_xds_type_urls[type]);
    a->value.len = protobuf_c_message_get_packed_size(m);
    a->value.data = lg_malloc(a->value.len + 1);
    protobuf_c_message_pack(m, a->value.data);
    protobuf_c_message_free_unpacked(m, NULL);
    return a;
}

static Google__Protobuf__Any *cluster(const char *name, const char *type)
{
    char yaml[512];
    snprintf(yaml, sizeof(yaml),
             "{name: %s, type: %s, connect_timeout: 1s, eds_cluster_config: {eds_config: {path_config_source: {path: "
             "/nonexistent/eds}}},"
             " load_assignment: {cluster_name: %s, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: "
             "127.0.0.1, port_value: 1}}}}]}]}}",
             name, type, name);
    return any_yaml(LG_XDS_CDS, &envoy__config__cluster__v3__cluster__descriptor, yaml);
}

static Google__Protobuf__Any *cla(const char *name, int port)
{
    char yaml[512];
    snprintf(
        yaml, sizeof(yaml),
        "{cluster_name: %s, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: "
        "%d}}}}]}]}",
        name, port);
    return any_yaml(LG_XDS_EDS, &envoy__config__endpoint__v3__cluster_load_assignment__descriptor, yaml);
}

static void free_anys(Google__Protobuf__Any **a, size_t n)
{
    for (size_t i = 0; i != n; ++i)
        protobuf_c_message_free_unpacked(&a[i]->base, NULL);
}

static const lg_cluster_config_t *find_cluster(lg_snapshot_t *s, const char *name)
{
    for (size_t i = 0; i != s->n_clusters; ++i)
        if (strcmp(s->clusters[i]->name, name) == 0)
            return s->clusters[i];
    return NULL;
}

/* Sends one SotW response; returns the NACK text ("" when accepted). */
static char *sotw(lg__xds_sub_t *sub, const char *version, Google__Protobuf__Any **a, size_t n)
{
    lg_strbuf_t nack = {NULL};
    lg_strbuf_reserve(&nack, 1);
    lg__xds_sotw_update(sub, version, a, n, &nack);
    free_anys(a, n);
    lg_strbuf_append(&nack, "", 1); /* NUL-terminated even when empty */
    return nack.base;
}

static const char *key_of(const void *v)
{
    return v;
}

static void test_map(void)
{
    lg_strmap_t m;
    char names[500][8];
    lg_strmap_init(&m, key_of);
    for (int i = 0; i != 500; ++i) {
        snprintf(names[i], sizeof(names[i]), "n%d", i);
        lg_strmap_put(&m, names[i]);
    }
    ok(m.n == 500, "500 entries, got %zu", m.n);
    for (int i = 0; i < 500; i += 2)
        ok(lg_strmap_del(&m, names[i]) == names[i], "delete %s", names[i]);
    int good = 1;
    for (int i = 0; i != 500; ++i)
        good &= (lg_strmap_get(&m, names[i]) != NULL) == (i % 2 == 1);
    ok(good && m.n == 250, "odd names remain after deletions (backward shift keeps probes intact)");
    lg_strmap_dispose(&m);
}

static void test_cds_sotw(lg_xds_t *x)
{
    char *nack;
    Google__Protobuf__Any *a[3];

    a[0] = cluster("a", "STATIC");
    a[1] = cluster("b", "STATIC");
    nack = sotw(x->cds, "1", a, 2);
    ok_str(nack, "");
    free(nack);
    lg_snapshot_t *s1 = lg_server_current_snapshot();
    ok(find_cluster(s1, "a") != NULL && find_cluster(s1, "b") != NULL, "both clusters published");
    ok_str(x->cds->version_info, "1");

    /* identical push: the compiled objects are kept (pools carry over on workers) */
    a[0] = cluster("a", "STATIC");
    a[1] = cluster("b", "STATIC");
    nack = sotw(x->cds, "2", a, 2);
    ok_str(nack, "");
    free(nack);
    lg_snapshot_t *s2 = lg_server_current_snapshot();
    ok(find_cluster(s2, "a") == find_cluster(s1, "a"), "an unchanged cluster keeps its compiled config");
    ok_str(x->cds->version_info, "2");
    lg_snapshot_unref(s2);

    /* a duplicate name rejects the whole response */
    a[0] = cluster("c", "STATIC");
    a[1] = cluster("c", "STATIC");
    nack = sotw(x->cds, "3", a, 2);
    ok_str(nack, "duplicate cluster c found");
    free(nack);
    ok_str(x->cds->version_info, "2");
    s2 = lg_server_current_snapshot();
    ok(find_cluster(s2, "c") == NULL && find_cluster(s2, "a") != NULL, "nothing of a rejected response is applied");
    lg_snapshot_unref(s2);

    /* one bad cluster: the others are applied, the response is NACKed, `b` (left out) is removed */
    a[0] = cluster("a", "STATIC");
    a[1] = cluster("bad", "ORIGINAL_DST");
    a[2] = cluster("d", "STATIC");
    nack = sotw(x->cds, "4", a, 3);
    ok(strncmp(nack, "Error adding/updating cluster(s) bad: type: ORIGINAL_DST", 56) == 0, "NACK detail: %s", nack);
    free(nack);
    ok_str(x->cds->version_info, "2");
    s2 = lg_server_current_snapshot();
    ok(find_cluster(s2, "d") != NULL, "valid clusters of a rejected response are applied");
    ok(find_cluster(s2, "b") == NULL, "a cluster missing from a SotW response is removed");
    ok(find_cluster(s2, "bad") == NULL, "the bad cluster is not");
    lg_snapshot_unref(s2);
    lg_snapshot_unref(s1);
}

static void test_eds_warming(lg_xds_t *x)
{
    Google__Protobuf__Any *a[2];
    a[0] = cluster("e", "EDS");
    char *nack = sotw(x->cds, "5", a, 1);
    ok_str(nack, "");
    free(nack);
    lg_snapshot_t *s = lg_server_current_snapshot();
    ok(find_cluster(s, "e") == NULL, "an EDS cluster warms until its endpoints arrive");
    ok(find_cluster(s, "a") == NULL, "SotW: `a` was left out");
    lg_snapshot_unref(s);
    lg__xds_dep_t *d = lg__xds_dep_find(x, LG_XDS_EDS, "e");
    ok(d != NULL && d->wanted, "the cluster subscribes its load assignment");
    ok(lg_stats_block_value(lg_stats_cluster_manager, LG_CLUSTER_MANAGER_STAT_warming_clusters) == 1,
       "cluster_manager.warming_clusters counts it");

    a[0] = cla("e", 9000);
    nack = sotw(d->sub, "e1", a, 1);
    ok_str(nack, "");
    free(nack);
    s = lg_server_current_snapshot();
    const lg_cluster_config_t *e = find_cluster(s, "e");
    ok(e != NULL && e->n_hosts == 1 && strcmp(e->hosts[0]->address, "127.0.0.1:9000") == 0, "warmed with its endpoint");
    lg_snapshot_unref(s);

    /* an unrequested load assignment is ignored; a bad one is rejected and changes nothing */
    a[0] = cla("zzz", 1);
    a[1] = any_yaml(LG_XDS_EDS, &envoy__config__endpoint__v3__cluster_load_assignment__descriptor,
                    "{cluster_name: e, endpoints: [{lb_endpoints: [{endpoint: {address: {pipe: {path: ''}}}}]}]}");
    nack = sotw(d->sub, "e2", a, 2);
    ok(strncmp(nack, "e: ", 3) == 0, "EDS NACK names the resource: %s", nack);
    free(nack);
    s = lg_server_current_snapshot();
    ok(find_cluster(s, "e") == e, "the rejected update left the cluster alone");
    lg_snapshot_unref(s);
}

/* An EDS cluster keeps one compiled config (its CDS version with the endpoints)
 * and no decoded ClusterLoadAssignment: a CDS update of the cluster
 * re-applies the endpoints decoded from the stored resource. */
static void test_eds_one_config(lg_xds_t *x)
{
    lg__xds_cluster_t *c = lg_strmap_get(&x->cluster_map, "e");
    lg__xds_dep_t *d = lg__xds_dep_find(x, LG_XDS_EDS, "e");
    ok(c != NULL && c->compiled == c->active, "one compiled config once the endpoints are applied");
    ok(d != NULL && d->res != NULL && d->compiled == NULL, "the load assignment is kept serialized only");
    lg_stats_block_t *st = lg_cluster_config_stats(c->active);
    uint64_t changes = lg_stats_block_value(st, LG_CLUSTER_STAT_membership_change);

    Google__Protobuf__Any *a[1];
    a[0] = any_yaml(LG_XDS_CDS, &envoy__config__cluster__v3__cluster__descriptor,
                    "{name: e, type: EDS, connect_timeout: 3s, eds_cluster_config: {eds_config: {path_config_source: {path: "
                    "/nonexistent/eds}}}}");
    char *nack = sotw(x->cds, "6", a, 1);
    ok_str(nack, "");
    free(nack);
    lg_snapshot_t *s = lg_server_current_snapshot();
    const lg_cluster_config_t *e = find_cluster(s, "e");
    ok(e != NULL && e->connect_timeout_ms == 3000 && e->n_hosts == 1 && strcmp(e->hosts[0]->address, "127.0.0.1:9000") == 0,
       "a CDS update keeps the endpoints (decoded again from the stored resource)");
    ok(c->compiled == c->active && c->active == e, "still one compiled config");
    ok(lg_stats_block_value(st, LG_CLUSTER_STAT_membership_change) == changes + 1,
       "membership_change counts the new version's hosts, as before");
    lg_snapshot_unref(s);

    a[0] = cla("e", 9001);
    nack = sotw(d->sub, "e3", a, 1);
    ok_str(nack, "");
    free(nack);
    s = lg_server_current_snapshot();
    e = find_cluster(s, "e");
    ok(e != NULL && e->connect_timeout_ms == 3000 && e->n_hosts == 1 && strcmp(e->hosts[0]->address, "127.0.0.1:9001") == 0,
       "an EDS update derives from the CDS version, with the new endpoints only");
    ok(c->compiled == e && c->active == e && d->compiled == NULL, "one config, no decoded message");

    /* /config_dump's items name themselves with their records' names */
    const lg_xds_dump_t *dump = s->xds;
    int aliased = dump->n_items[LG_XDS_CDS] == 1 && dump->n_items[LG_XDS_EDS] == 1;
    for (size_t t = 0; aliased && t != 2; ++t) {
        const lg_xds_dump_item_t *it = dump->items[t == 0 ? LG_XDS_CDS : LG_XDS_EDS];
        aliased = it->active != NULL && it->name == it->active->name && strcmp(it->name, "e") == 0;
    }
    ok(aliased, "dump items share their resource's name");
    ok(strcmp(dump->items[LG_XDS_EDS][0].active->version, "e3") == 0 && dump->items[LG_XDS_EDS][0].active->bytes.len > 0,
       "the EDS record: version and bytes");
    lg_snapshot_unref(s);
}

static void test_delta(lg_xds_t *x)
{
    Envoy__Service__Discovery__V3__Resource r, *rs[1] = {&r};
    envoy__service__discovery__v3__resource__init(&r);
    r.name = "f";
    r.version = "7";
    r.resource = cluster("f", "STATIC");
    lg_strbuf_t nack = {NULL};
    lg_strbuf_reserve(&nack, 1);
    ok(lg__xds_delta_update(x->cds, "sys1", rs, 1, NULL, 0, &nack) == 0, "delta add accepted: %s", nack.base);
    protobuf_c_message_free_unpacked(&r.resource->base, NULL);
    lg_snapshot_t *s = lg_server_current_snapshot();
    ok(find_cluster(s, "f") != NULL && find_cluster(s, "e") != NULL, "delta adds without removing the others");
    lg_snapshot_unref(s);
    ok(s->xds != NULL, "the snapshot carries the dump");
    char *removed[] = {"f"};
    ok(lg__xds_delta_update(x->cds, "sys2", NULL, 0, removed, 1, &nack) == 0, "delta removal accepted");
    s = lg_server_current_snapshot();
    ok(find_cluster(s, "f") == NULL, "removed_resources removes");
    lg_snapshot_unref(s);
    lg_strbuf_free(&nack);
}

static void test_routes_lookup(void)
{
    lg_error_t err;
    lg_snapshot_t *s = lg_snapshot_new(0, 0, 2);
    const char *names[] = {"zeta", "alpha"};
    for (size_t i = 0; i != 2; ++i) {
        char yaml[128];
        snprintf(yaml, sizeof(yaml), "{name: %s, virtual_hosts: [{name: v, domains: ['*']}]}", names[i]);
        ProtobufCMessage *m = decode_yaml(&envoy__config__route__v3__route_configuration__descriptor, yaml);
        s->routes[s->n_routes++] = lg_route_table_compile((void *)m, NULL, &err);
        protobuf_c_message_free_unpacked(m, NULL);
    }
    lg_snapshot_seal(s);
    ok(lg_snapshot_find_routes(s, "alpha") != NULL &&
           strcmp(lg_route_table_name(lg_snapshot_find_routes(s, "alpha")), "alpha") == 0,
       "RDS tables are found by name");
    ok(lg_snapshot_find_routes(s, "zeta") != NULL && lg_snapshot_find_routes(s, "beta") == NULL, "and only by their name");
    lg_hcm_config_t hcm = {0};
    hcm.rds_route_config_name = "zeta";
    ok(lg_snapshot_route_table(s, &hcm) == lg_snapshot_find_routes(s, "zeta"),
       "an RDS HCM gets its table off the thread of a worker");
    lg_snapshot_unref(s);
}

static lg_snapshot_t *snapshot_with_routes(const char *name)
{
    lg_error_t err;
    lg_snapshot_t *s = lg_snapshot_new(0, 0, 1);
    char yaml[128];
    snprintf(yaml, sizeof(yaml), "{name: %s, virtual_hosts: [{name: v, domains: ['*']}]}", name);
    ProtobufCMessage *m = decode_yaml(&envoy__config__route__v3__route_configuration__descriptor, yaml);
    s->routes[s->n_routes++] = lg_route_table_compile((void *)m, NULL, &err);
    protobuf_c_message_free_unpacked(m, NULL);
    lg_snapshot_seal(s);
    return s;
}

/* A stream on a connection of an older snapshot takes the worker's newest RDS table and
 * pins the newer snapshot to the old one until no connection of the old one has streams:
 * counted as connections go busy and idle, swept after each loop iteration. */
static void test_route_pins(void)
{
    lg_worker_t w = {.index = 0};
    lg_snapshot_t *old = snapshot_with_routes("r"), *newer = snapshot_with_routes("r");
    lg_hcm_config_t hcm = {0};
    hcm.rds_route_config_name = "r";
    lg_snapshot_hold(&w, old);   /* a connection */
    lg_snapshot_hold(&w, newer); /* the worker's current snapshot */
    w.snapshot = newer;
    lg_current_worker = &w;
    lg_snapshot_conn_busy(&w, old);
    ok(lg_snapshot_route_table(old, &hcm) == lg_snapshot_find_routes(newer, "r"),
       "a new stream on an old connection takes the newest table");
    ok(lg_snapshot_uses(newer, &w) == 2, "which pins the newer snapshot");
    lg_snapshot_conn_busy(&w, old); /* a second connection of the old snapshot */
    lg_snapshot_conn_idle(&w, old);
    lg_snapshot_sweep_pins(&w);
    ok(lg_snapshot_uses(newer, &w) == 2, "the pin stays while a connection of the old snapshot has streams");
    lg_snapshot_conn_idle(&w, old);
    lg_snapshot_sweep_pins(&w);
    ok(lg_snapshot_uses(newer, &w) == 1, "and goes when none has");
    lg_snapshot_conn_busy(&w, old);
    lg_snapshot_route_table(old, &hcm);
    lg_snapshot_conn_idle(&w, old);
    lg_snapshot_sweep_pins(&w);
    ok(lg_snapshot_uses(newer, &w) == 1, "a stream that ends within the iteration leaves no pin");
    lg_current_worker = NULL;
    lg_snapshot_release(&w, newer);
    lg_snapshot_release(&w, old);
    lg_snapshot_unref(newer);
    lg_snapshot_unref(old);
    lg_snapshot_collect();
}

int main(void)
{
    lg_error_t err = {{0}};
    lg_stats_init(1);
    test_map();
    test_routes_lookup();
    test_route_pins();
    const char *boot = "{node: {id: n1}, dynamic_resources: {cds_config: {path_config_source: {path: /nonexistent/cds.yaml}}}}";
    ProtobufCMessage *b = decode_yaml(&envoy__config__bootstrap__v3__bootstrap__descriptor, boot);
    lg_snapshot_t *snap = lg_snapshot_compile_bootstrap(b, &opts, &err);
    size_t failed;
    ok(snap != NULL && lg_server_publish(snap, &failed, &err) == 0, "static snapshot published: %s", err.msg);
    lg_xds_t *x = lg_xds_new((void *)b, &opts, snap, &err);
    lg_snapshot_unref(snap);
    ok(x != NULL && x->cds != NULL, "xDS client created: %s", err.msg);
    lg_xds_start(x);
    test_cds_sotw(x);
    test_eds_warming(x);
    test_eds_one_config(x);
    test_delta(x);
    lg_xds_free(x);
    lg_snapshot_t *last = lg_server_current_snapshot();
    /* drop the server's reference too (what lg_server_run does at exit) */
    lg_snapshot_unref(last);
    lg_snapshot_unref(last);
    protobuf_c_message_free_unpacked(b, NULL);
    lg_stats_shutdown();
    return done();
}
