/*
 * The resource stores of the xDS client: what each accepted resource
 * compiled to, what depends on what (listeners name RDS route configs,
 * clusters name EDS load assignments), warming, and the snapshots built
 * from it all.
 *
 * Compiled objects are never rebuilt for an unchanged resource (same
 * serialized bytes), and a snapshot takes references to the objects of its
 * predecessor, so a worker's view of an unchanged cluster keeps its pools
 * and an unchanged listener keeps its sockets and connections.
 */
#include "xds_internal.h"
#include "legate/dns.h"
#include "legate/pbjson.h"
#include "legate/runtime.h"
#include "legate/scoped_routes.h"
#include "legate/tls.h"
#include "legate/xds_ecds.h"
#include "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.pb-c.h"
#include "envoy/service/runtime/v3/rtds.pb-c.h"

#define HCM_TYPE "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"

typedef Envoy__Extensions__Filters__Network__HttpConnectionManager__V3__HttpConnectionManager hcm_proto_t;

static const char *cluster_key(const void *v)
{
    return ((const lg__xds_cluster_t *)v)->name;
}

static const char *listener_key(const void *v)
{
    return ((const lg__xds_listener_t *)v)->name;
}

static const char *dep_key(const void *v)
{
    return ((const lg__xds_dep_t *)v)->name;
}

static void replace_res(lg_xds_resource_t **slot, lg_xds_resource_t *r)
{
    lg_xds_resource_ref(r);
    lg_xds_resource_release(*slot);
    *slot = r;
}

static void replace_cluster(lg_cluster_config_t **slot, lg_cluster_config_t *c)
{
    if (c != NULL)
        lg_cluster_config_addref(c);
    lg_cluster_config_release(*slot);
    *slot = c;
}

static void replace_listener(lg_listener_config_t **slot, lg_listener_config_t *l)
{
    if (l != NULL)
        lg_listener_config_addref(l);
    lg_listener_config_release(*slot);
    *slot = l;
}

static void set_error(lg_xds_resource_t **failed, char **error, lg_xds_resource_t *res, const char *msg)
{
    replace_res(failed, res);
    free(*error);
    *error = msg != NULL ? lg_strdup(msg) : NULL;
}

/* ---- entries ---- */

/* A zeroed entry of `size` bytes followed by its name (one allocation; the
 * entry's `char *name` at `name_off` points at it). */
static void *entry_new(size_t size, size_t name_off, const char *name)
{
    size_t len = strlen(name);
    char *e = lg_calloc(1, size + len + 1);
    memcpy(e + size, name, len + 1);
    *(char **)(e + name_off) = e + size;
    return e;
}

static lg__xds_cluster_t *cluster_add(lg_xds_t *x, const char *name)
{
    lg__xds_cluster_t *c = entry_new(sizeof(*c), offsetof(lg__xds_cluster_t, name), name);
    if (x->n_clusters == x->cap_clusters) {
        x->cap_clusters = x->cap_clusters ? x->cap_clusters * 2 : 16;
        x->clusters = lg_realloc(x->clusters, x->cap_clusters * sizeof(*x->clusters));
    }
    x->clusters[x->n_clusters++] = c;
    lg_strmap_put(&x->cluster_map, c);
    return c;
}

static void cluster_free(lg__xds_cluster_t *c)
{
    lg_xds_resource_release(c->res);
    lg_xds_resource_release(c->active_res);
    lg_xds_resource_release(c->active_cla);
    lg_cluster_config_release(c->compiled);
    lg_cluster_config_release(c->active);
    if (c->eds_stats != NULL)
        lg_stats_block_release(c->eds_stats);
    lg_dns_cluster_free(c->dns);
    lg__xds_refs_free(c->sds, c->n_sds);
    free(c);
}

/* Unlists the entry; the vector slot is compacted by lg__xds_refresh(). */
static void cluster_remove(lg_xds_t *x, lg__xds_cluster_t *c)
{
    lg_strmap_del(&x->cluster_map, c->name);
    if (c->eds != NULL && c->eds->user == c)
        c->eds->user = NULL;
    for (size_t i = 0; i != x->n_clusters; ++i)
        if (x->clusters[i] == c)
            x->clusters[i] = NULL;
    cluster_free(c);
    lg_stats_control_add(lg_stats_cluster_manager, LG_CLUSTER_MANAGER_STAT_cluster_removed, 1);
    x->dirty = 1;
}

static lg__xds_listener_t *listener_add(lg_xds_t *x, const char *name)
{
    lg__xds_listener_t *l = lg_calloc(1, sizeof(*l));
    l->name = lg_strdup(name);
    if (x->n_listeners == x->cap_listeners) {
        x->cap_listeners = x->cap_listeners ? x->cap_listeners * 2 : 16;
        x->listeners = lg_realloc(x->listeners, x->cap_listeners * sizeof(*x->listeners));
    }
    x->listeners[x->n_listeners++] = l;
    lg_strmap_put(&x->listener_map, l);
    return l;
}

void lg__xds_refs_free(lg__xds_rds_ref_t *refs, size_t n)
{
    for (size_t i = 0; i != n; ++i) {
        free(refs[i].name);
        if (refs[i].stats != NULL)
            lg_stats_block_release(refs[i].stats);
        for (size_t k = 0; k != refs[i].n_type_urls; ++k)
            free(refs[i].type_urls[k]);
        free(refs[i].type_urls);
        free(refs[i].kb.data);
        free(refs[i].stat_prefix);
        for (size_t k = 0; k != refs[i].n_scope_rds_stats; ++k)
            lg_stats_block_release(refs[i].scope_rds_stats[k]);
        free(refs[i].scope_rds_stats);
    }
    free(refs);
}

static void listener_free(lg__xds_listener_t *l)
{
    lg_xds_resource_release(l->res);
    lg_xds_resource_release(l->active_res);
    lg_xds_resource_release(l->published_res);
    lg_xds_resource_release(l->failed);
    lg_listener_config_release(l->compiled);
    lg_listener_config_release(l->active);
    lg_listener_config_release(l->published);
    lg__xds_refs_free(l->rds, l->n_rds);
    lg__xds_refs_free(l->sds, l->n_sds);
    free(l->error);
    free(l->name);
    free(l);
}

static void listener_remove(lg_xds_t *x, lg__xds_listener_t *l)
{
    lg_strmap_del(&x->listener_map, l->name);
    for (size_t i = 0; i != x->n_listeners; ++i)
        if (x->listeners[i] == l)
            x->listeners[i] = NULL;
    listener_free(l);
    x->dirty = 1;
}

static void dep_set_type_urls(lg__xds_dep_t *d, char *const *urls, size_t n)
{
    for (size_t i = 0; i != d->n_type_urls; ++i)
        free(d->type_urls[i]);
    free(d->type_urls);
    d->type_urls = n != 0 ? lg_malloc(n * sizeof(*d->type_urls)) : NULL;
    d->n_type_urls = n;
    for (size_t i = 0; i != n; ++i)
        d->type_urls[i] = lg_strdup(urls[i]);
}

/* Whether a dep's resource arrived and was accepted (EDS keeps only its record). */
static int dep_has_value(const lg__xds_dep_t *d)
{
    return d->type == LG_XDS_EDS ? d->res != NULL : d->compiled != NULL;
}

static void dep_compiled_free(lg__xds_dep_t *d)
{
    if (d->compiled == NULL)
        return;
    if (d->type == LG_XDS_RDS)
        lg_route_table_release(d->compiled);
    else if (d->type == LG_XDS_ECDS)
        lg_ecds_filter_release(d->compiled);
    else
        protobuf_c_message_free_unpacked(d->compiled, NULL);
    d->compiled = NULL;
}

static void dep_free(lg__xds_dep_t *d)
{
    dep_compiled_free(d);
    dep_set_type_urls(d, NULL, 0);
    lg_xds_resource_release(d->res);
    lg_xds_resource_release(d->failed);
    free(d->error);
    if (d->stats != &d->stats_one)
        free(d->stats);
    free(d);
}

lg__xds_dep_t *lg__xds_dep_find(lg_xds_t *x, lg_xds_type_t type, const char *name)
{
    return lg_strmap_get(&x->deps[type], name);
}

static lg__xds_dep_t *dep_get(lg_xds_t *x, lg_xds_type_t type, const char *name)
{
    lg__xds_dep_t *d = lg_strmap_get(&x->deps[type], name);
    if (d == NULL) {
        d = entry_new(sizeof(*d), offsetof(lg__xds_dep_t, name), name);
        d->type = type;
        lg_strmap_put(&x->deps[type], d);
    }
    return d;
}

static void dep_add_stats(lg__xds_dep_t *d, lg_stats_block_t *b)
{
    if (b == NULL)
        return;
    for (size_t i = 0; i != d->n_stats; ++i)
        if (d->stats[i] == b)
            return;
    if (d->stats == NULL) {
        d->stats = &d->stats_one;
        d->cap_stats = 1;
    }
    if (d->n_stats == d->cap_stats) {
        lg_stats_block_t **n = lg_malloc(d->cap_stats * 2 * sizeof(*n));
        memcpy(n, d->stats, d->n_stats * sizeof(*n));
        if (d->stats != &d->stats_one)
            free(d->stats);
        d->stats = n;
        d->cap_stats *= 2;
    }
    d->stats[d->n_stats++] = b;
}

static void dep_count(lg__xds_dep_t *d, size_t idx)
{
    for (size_t i = 0; i != d->n_stats; ++i)
        lg_stats_control_add(d->stats[i], idx, 1);
}

/* The wanted dep a change of a named type (EDS, RDS, SDS, RTDS, ECDS) is for, or NULL: not requested. */
static lg__xds_dep_t *wanted_dep(lg__xds_sub_t *sub, const lg__xds_change_t *ch)
{
    lg__xds_dep_t *d = lg__xds_dep_find(sub->xds, sub->type, ch->name);
    if (d == NULL || !d->wanted) {
        LG_DEBUG(xds, "%s: ignoring unrequested resource '%s'", lg_xds_type_names[sub->type], ch->name);
        return NULL;
    }
    return d;
}

/* A new version of a dep is in use: its record, error state and Envoy's
 * subscription stats (update_success, version, version_text, update_time). */
/* `compiled` (the route table, filter or kept message of res) replaces the dep's. */
static void dep_accept(lg_xds_t *x, lg__xds_dep_t *d, lg_xds_resource_t *res, void *compiled)
{
    dep_compiled_free(d);
    d->compiled = compiled;
    replace_res(&d->res, res);
    set_error(&d->failed, &d->error, NULL, NULL);
    dep_count(d, LG__XDS_SUB_update_success);
    uint64_t took_ms = lg__xds_update_ms(x);
    for (size_t i = 0; i != d->n_stats; ++i) {
        lg_stats_histogram_record(d->stats[i], lg_stats_nworkers, LG__XDS_SUB_update_duration, took_ms);
        lg_stats_text_set(d->stats[i], LG__XDS_SUB_version_text, res->version);
        lg_stats_gauge_set(d->stats[i], LG__XDS_SUB_version, lg__xds_hash(res->version, strlen(res->version)));
        lg_stats_gauge_set(d->stats[i], LG__XDS_SUB_update_time, lg_wall_us() / 1000);
    }
    x->dirty = 1;
}

/* A version of a dep was rejected: counted, and kept for /config_dump's error_state. */
static void dep_reject(lg__xds_dep_t *d, lg_xds_resource_t *res, const char *msg)
{
    dep_count(d, d->type == LG_XDS_EDS ? LG__XDS_EDS_update_rejected : LG__XDS_SUB_update_rejected);
    set_error(&d->failed, &d->error, res, msg);
}

static int same_res(const lg_xds_resource_t *a, const lg_xds_resource_t *b);

/* 1 when `res` is the version the dep holds: a re-send, or a heartbeat that
 * refreshes a TTL. The newer record is kept and, as Envoy's subscriptions
 * count every accepted response, the update counts as a success (EDS: on the
 * cluster's stats, where Envoy keeps them). */
static int dep_unchanged(lg__xds_dep_t *d, lg_xds_resource_t *res)
{
    if (!same_res(d->res, res))
        return 0;
    replace_res(&d->res, res);
    if (d->type != LG_XDS_EDS) {
        dep_count(d, LG__XDS_SUB_update_success);
        uint64_t took_ms = lg__xds_update_ms(d->sub->xds);
        for (size_t i = 0; i != d->n_stats; ++i)
            lg_stats_histogram_record(d->stats[i], lg_stats_nworkers, LG__XDS_SUB_update_duration, took_ms);
    } else if (d->user != NULL && d->user->active != NULL)
        lg_stats_control_add(d->user->active->shared->stats, LG_CLUSTER_STAT_update_success, 1);
    return 1;
}

/* ---- init and dispose ---- */

/* The block an EDS cluster's subscription counts in: the cluster's own (one block per
 * cluster), referenced so that a dep never counts into a freed block. */
static lg_stats_block_t *eds_stats_of(lg_cluster_config_t *cfg)
{
    lg_stats_block_t *b = lg_cluster_config_stats(cfg);
    lg_stats_block_retain(b);
    return b;
}

static int cluster_exists(void *ctx, const char *name)
{
    lg_xds_t *x = ctx;
    return lg_strmap_get(&x->cluster_map, name) != NULL;
}

static uint64_t listener_hash(Envoy__Config__Listener__V3__Listener *m);
static int extract_rds(lg_xds_t *x, lg__xds_sub_t *parent, const Envoy__Config__Listener__V3__Listener *m, lg__xds_rds_ref_t **out,
                       size_t *n, lg_error_t *err);

void lg__xds_state_init(lg_xds_t *x, lg_snapshot_t *initial)
{
    lg_strmap_init(&x->cluster_map, cluster_key);
    lg_strmap_init(&x->listener_map, listener_key);
    for (size_t t = 0; t != LG_XDS__NTYPES; ++t)
        lg_strmap_init(&x->deps[t], dep_key);
    for (size_t i = 0; i != initial->n_clusters; ++i) {
        lg__xds_cluster_t *c = cluster_add(x, initial->clusters[i]->name);
        c->is_static = 1;
        replace_cluster(&c->compiled, initial->clusters[i]);
        replace_cluster(&c->active, initial->clusters[i]);
        c->compiled_gen = c->active_gen = 1;
    }
    for (size_t i = 0; i != initial->n_listeners; ++i) {
        lg__xds_listener_t *l = listener_add(x, initial->listeners[i]->name);
        l->is_static = 1;
        replace_listener(&l->compiled, initial->listeners[i]);
        replace_listener(&l->active, initial->listeners[i]);
        replace_listener(&l->published, initial->listeners[i]);
    }
    x->published = lg_snapshot_ref(initial);
    x->runtime_gen = initial->runtime != NULL ? initial->runtime->generation : lg_runtime_loader_generation();
}

/* Static EDS clusters and RDS listeners subscribe like dynamic ones do; their
 * config sources are read from the bootstrap. Errors name the bootstrap field. */
int lg__xds_state_static_deps(lg_xds_t *x, lg_error_t *err)
{
    const Envoy__Config__Bootstrap__V3__Bootstrap__StaticResources *sr = x->bootstrap->static_resources;
    for (size_t i = 0; sr != NULL && i != sr->n_clusters; ++i) {
        const Envoy__Config__Cluster__V3__Cluster *m = sr->clusters[i];
        lg__xds_cluster_t *c = lg_strmap_get(&x->cluster_map, m->name);
        if (c == NULL)
            continue;
        if (c->sds == NULL && lg__xds_cluster_sds(x, NULL, m, &c->sds, &c->n_sds, err) != 0)
            return lg_error_prefix(err, "static_resources.clusters[%zu]", i);
        if (c->compiled->dns != NULL && c->dns == NULL)
            c->dns = lg_dns_cluster_new(c->compiled->dns, lg_cluster_config_stats(c->compiled), c->name);
        if (c->compiled->discovery != LG_CLUSTER_EDS)
            continue;
        const Envoy__Config__Core__V3__ConfigSource *cs = m->eds_cluster_config != NULL ? m->eds_cluster_config->eds_config : NULL;
        if (cs == NULL)
            return lg_error(err, "static_resources.clusters[%zu].eds_cluster_config.eds_config: value is required", i);
        if ((c->eds_sub = lg__xds_subscribe(x, LG_XDS_EDS, cs, NULL, err)) == NULL)
            return lg_error_prefix(err, "static_resources.clusters[%zu].eds_cluster_config.eds_config", i);
        c->eds_stats = eds_stats_of(c->compiled);
    }
    for (size_t i = 0; sr != NULL && i != sr->n_listeners; ++i) {
        const Envoy__Config__Listener__V3__Listener *m = sr->listeners[i];
        lg__xds_listener_t *l = i < x->n_listeners ? x->listeners[i] : NULL;
        if (l == NULL || !l->is_static)
            continue;
        if (extract_rds(x, NULL, m, &l->rds, &l->n_rds, err) != 0 || lg__xds_listener_sds(x, NULL, m, &l->sds, &l->n_sds, err) != 0)
            return lg_error_prefix(err, "static_resources.listeners[%zu]", i);
    }
    return 0;
}

void lg__xds_state_dispose(lg_xds_t *x)
{
    for (size_t i = 0; i != x->n_clusters; ++i)
        if (x->clusters[i] != NULL)
            cluster_free(x->clusters[i]);
    for (size_t i = 0; i != x->n_listeners; ++i)
        if (x->listeners[i] != NULL)
            listener_free(x->listeners[i]);
    for (size_t t = 0; t != LG_XDS__NTYPES; ++t) {
        for (size_t i = 0; x->deps[t].slots != NULL && i <= x->deps[t].mask; ++i)
            if (x->deps[t].slots[i] != NULL)
                dep_free(x->deps[t].slots[i]);
        lg_strmap_dispose(&x->deps[t]);
    }
    free(x->clusters);
    free(x->listeners);
    lg_strmap_dispose(&x->cluster_map);
    lg_strmap_dispose(&x->listener_map);
    lg_snapshot_unref(x->published);
}

void lg__xds_foreach_dynamic(lg__xds_sub_t *sub, void (*cb)(void *ctx, const char *name), void *ctx)
{
    lg_xds_t *x = sub->xds;
    lg_xds_type_t type = sub->type;
    if (type == LG_XDS_SRDS) {
        for (size_t i = 0; x->deps[type].slots != NULL && i <= x->deps[type].mask; ++i) {
            const lg__xds_dep_t *d = x->deps[type].slots[i];
            if (d != NULL && d->sub == sub && d->res != NULL)
                cb(ctx, d->name);
        }
    } else if (type == LG_XDS_CDS) {
        for (size_t i = 0; i != x->n_clusters; ++i)
            if (x->clusters[i] != NULL && !x->clusters[i]->is_static && x->clusters[i]->res != NULL)
                cb(ctx, x->clusters[i]->name);
    } else if (type == LG_XDS_LDS) {
        for (size_t i = 0; i != x->n_listeners; ++i)
            if (x->listeners[i] != NULL && !x->listeners[i]->is_static && x->listeners[i]->compiled != NULL)
                cb(ctx, x->listeners[i]->name);
    }
}

/* ---- CDS ---- */

static int same_res(const lg_xds_resource_t *a, const lg_xds_resource_t *b)
{
    return a != NULL && b != NULL && a->hash == b->hash && a->bytes.len == b->bytes.len &&
           memcmp(a->bytes.data, b->bytes.data, a->bytes.len) == 0;
}

static int apply_cluster(lg__xds_sub_t *sub, lg__xds_change_t *ch, lg_error_t *err)
{
    lg_xds_t *x = sub->xds;
    lg__xds_cluster_t *c = lg_strmap_get(&x->cluster_map, ch->name);
    if (c != NULL && c->is_static) {
        LG_WARN(upstream, "cds: ignoring cluster '%s': a static cluster of that name exists", ch->name);
        return 0;
    }
    if (ch->res == NULL) {
        if (c != NULL) {
            LG_INFO(upstream, "cds: removing cluster %s", ch->name);
            cluster_remove(x, c);
        }
        return 0;
    }
    if (c != NULL && same_res(c->res, ch->res)) {
        LG_DEBUG(upstream, "cds: cluster %s unchanged", ch->name);
        return 0;
    }
    const Envoy__Config__Cluster__V3__Cluster *m = (const void *)ch->msg;
    lg__xds_rds_ref_t *sds;
    size_t n_sds;
    if (lg__xds_cluster_sds(x, sub, m, &sds, &n_sds, err) != 0)
        return -1;
    lg_cluster_config_t *cfg = lg_cluster_config_compile(m, err);
    if (cfg == NULL) {
        lg__xds_refs_free(sds, n_sds);
        return -1;
    }
    lg__xds_sub_t *eds_sub = NULL;
    if (cfg->discovery == LG_CLUSTER_EDS) {
        const Envoy__Config__Core__V3__ConfigSource *cs = m->eds_cluster_config != NULL ? m->eds_cluster_config->eds_config : NULL;
        if (cs == NULL)
            lg_error(err, "eds_cluster_config.eds_config: value is required");
        else if ((eds_sub = lg__xds_subscribe(x, LG_XDS_EDS, cs, sub, err)) == NULL)
            lg_error_prefix(err, "eds_cluster_config.eds_config");
        if (eds_sub == NULL) {
            lg_cluster_config_release(cfg);
            lg__xds_refs_free(sds, n_sds);
            return -1;
        }
    }
    cfg->added_via_api = 1;
    if (c == NULL) {
        c = cluster_add(x, ch->name);
        LG_INFO(upstream, "cds: add cluster %s", ch->name);
        lg_stats_control_add(lg_stats_cluster_manager, LG_CLUSTER_MANAGER_STAT_cluster_added, 1);
    } else {
        LG_INFO(upstream, "cds: update cluster %s", ch->name);
        lg_stats_control_add(lg_stats_cluster_manager, LG_CLUSTER_MANAGER_STAT_cluster_modified, 1);
    }
    replace_res(&c->res, ch->res);
    lg_cluster_config_release(c->compiled);
    c->compiled = cfg;
    ++c->compiled_gen;
    c->eds_sub = eds_sub;
    lg_dns_cluster_free(c->dns);
    c->dns = cfg->dns != NULL ? lg_dns_cluster_new(cfg->dns, lg_cluster_config_stats(cfg), c->name) : NULL;
    lg__xds_refs_free(c->sds, c->n_sds);
    c->sds = sds;
    c->n_sds = n_sds;
    if (c->eds_stats != NULL)
        lg_stats_block_release(c->eds_stats);
    c->eds_stats = eds_sub != NULL ? eds_stats_of(cfg) : NULL;
    x->dirty = 1;
    return 0;
}

/* ---- EDS ---- */

/* Makes c->active the cluster with the endpoints of `cla` (c's current compiled version),
 * and c->compiled that same object: the CDS resource's config without hosts is
 * not kept. The new config derives from a hostless view of c->compiled, so
 * that it is what lg_cluster_config_with_endpoints() makes of the config the
 * resource compiled to (the membership counters included) whether or not
 * c->compiled already carries the previous endpoints. */
static int activate_with_endpoints(lg__xds_cluster_t *c, const Envoy__Config__Endpoint__V3__ClusterLoadAssignment *cla,
                                   lg_xds_resource_t *cla_res, lg_error_t *err)
{
    lg_cluster_config_t base = *c->compiled;
    base.hosts = NULL;
    base.n_hosts = 0;
    base.n_healthy = 0;
    lg_cluster_config_t *n = lg_cluster_config_with_endpoints(&base, cla, err);
    if (n == NULL)
        return -1;
    if (c->active != NULL)
        lg_cluster_config_adopt(n, c->active);
    lg_cluster_config_release(c->active);
    c->active = n;
    replace_cluster(&c->compiled, n);
    replace_res(&c->active_res, c->res);
    replace_res(&c->active_cla, cla_res);
    c->active_gen = c->compiled_gen;
    return 0;
}

/* The ClusterLoadAssignment of an EDS dep, decoded from its record (the
 * decoded message is not kept: 10,000 of them cost ~0.5 KB each). */
static int activate_from_dep(lg__xds_cluster_t *c, lg__xds_dep_t *d, lg_error_t *err)
{
    Envoy__Config__Endpoint__V3__ClusterLoadAssignment *cla = (void *)protobuf_c_message_unpack(
        &envoy__config__endpoint__v3__cluster_load_assignment__descriptor, NULL, d->res->bytes.len, d->res->bytes.data);
    if (cla == NULL)
        return lg_error(err, "cannot parse the cluster load assignment %s", d->name);
    int rc = activate_with_endpoints(c, cla, d->res, err);
    protobuf_c_message_free_unpacked(&cla->base, NULL);
    return rc;
}

static int apply_cla(lg__xds_sub_t *sub, lg__xds_change_t *ch, lg_error_t *err)
{
    lg_xds_t *x = sub->xds;
    lg__xds_dep_t *d = wanted_dep(sub, ch);
    if (d == NULL)
        return 0;
    if (ch->res == NULL) {
        LG_DEBUG(upstream, "eds: load assignment '%s' removed; its clusters keep their endpoints", ch->name);
        return 0;
    }
    dep_count(d, LG__XDS_EDS_update_attempt);
    if (dep_unchanged(d, ch->res))
        return 0;
    lg__xds_cluster_t *user = d->user;
    if (user != NULL && activate_with_endpoints(user, (const void *)ch->msg, ch->res, err) != 0) {
        dep_reject(d, ch->res, err->msg);
        return -1;
    }
    replace_res(&d->res, ch->res);
    set_error(&d->failed, &d->error, NULL, NULL);
    x->dirty = 1;
    return 0;
}

/* ---- DNS clusters ---- */

static int activate_cb(void *ctx, const Envoy__Config__Endpoint__V3__ClusterLoadAssignment *cla, lg_error_t *err)
{
    return activate_with_endpoints(ctx, cla, NULL, err);
}

/* A DNS cluster takes the hosts of its resolver's answers once every target
 * has had one, and again whenever they change (the resolver runs from
 * lg_xds_poll: lg_dns_tick). */
static void warm_dns_cluster(lg_xds_t *x, lg__xds_cluster_t *c)
{
    /* wait_for_warm_on_init false: active at once, with the hosts answered so far */
    int now = lg_dns_cluster_warm(c->dns) && !lg_dns_cluster_ready(c->dns) && c->active_gen != c->compiled_gen;
    if (!lg_dns_cluster_take_change(c->dns) && !now)
        return;
    lg_error_t err;
    if (lg_dns_cluster_with_assignment(c->dns, activate_cb, c, &err) != 0)
        LG_WARN(upstream, "cluster %s: cannot apply its resolved hosts: %s", c->name, err.msg);
    x->dirty = 1;
}

/* ---- LDS ---- */

static uint64_t listener_hash(Envoy__Config__Listener__V3__Listener *m)
{
    size_t n_chains = m->n_filter_chains;
    Envoy__Config__Listener__V3__FilterChain *def = m->default_filter_chain;
    m->n_filter_chains = 0;
    m->default_filter_chain = NULL;
    size_t len = protobuf_c_message_get_packed_size(&m->base);
    uint8_t *buf = lg_malloc(len + 1);
    protobuf_c_message_pack(&m->base, buf);
    m->n_filter_chains = n_chains;
    m->default_filter_chain = def;
    uint64_t h = lg__xds_hash(buf, len);
    free(buf);
    return h;
}

static int add_rds_ref(lg_xds_t *x, lg__xds_sub_t *parent, const hcm_proto_t *hcm, lg__xds_rds_ref_t **out, size_t *n,
                       lg_error_t *err)
{
    const char *name = hcm->rds->route_config_name != NULL ? hcm->rds->route_config_name : "";
    if (hcm->rds->config_source == NULL)
        return lg_error(err, "rds.config_source: value is required");
    lg__xds_sub_t *sub = lg__xds_subscribe(x, LG_XDS_RDS, hcm->rds->config_source, parent, err);
    if (sub == NULL)
        return lg_error_prefix(err, "rds.config_source");
    char *prefix = lg_malloc(strlen(hcm->stat_prefix) + strlen(name) + sizeof("http..rds.."));
    sprintf(prefix, "http.%s.rds.%s.", hcm->stat_prefix, name);
    lg_stats_block_t *stats = lg_stats_block_new(prefix, lg__xds_sub_stat_defs, LG__XDS_SUB__COUNT);
    free(prefix);
    *out = lg_realloc(*out, (*n + 1) * sizeof(**out));
    (*out)[(*n)++] = (lg__xds_rds_ref_t){lg_strdup(name), sub, stats};
    return 0;
}

/* SRDS: the HCM's scoped_rds subscription (wildcard: every scope of its
 * source) and where the scopes' route configurations come from. */
static int add_srds_ref(lg_xds_t *x, lg__xds_sub_t *parent, const hcm_proto_t *hcm, lg__xds_rds_ref_t **out, size_t *n,
                        lg_error_t *err)
{
    const Envoy__Extensions__Filters__Network__HttpConnectionManager__V3__ScopedRoutes *sr = hcm->scoped_routes;
    if (sr->config_specifier_case !=
        ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__SCOPED_ROUTES__CONFIG_SPECIFIER_SCOPED_RDS)
        return 0;
    if (sr->scoped_rds->scoped_rds_config_source == NULL)
        return lg_error(err, "scoped_routes.scoped_rds.scoped_rds_config_source: value is required");
    if (sr->rds_config_source == NULL)
        return lg_error(err, "scoped_routes.rds_config_source: value is required");
    if (sr->scope_key_builder == NULL)
        return lg_error(err, "scoped_routes.scope_key_builder: value is required");
    lg__xds_sub_t *sub = lg__xds_subscribe(x, LG_XDS_SRDS, sr->scoped_rds->scoped_rds_config_source, parent, err);
    if (sub == NULL)
        return lg_error_prefix(err, "scoped_routes.scoped_rds.scoped_rds_config_source");
    lg__xds_sub_t *rds_sub = lg__xds_subscribe(x, LG_XDS_RDS, sr->rds_config_source, parent, err);
    if (rds_sub == NULL)
        return lg_error_prefix(err, "scoped_routes.rds_config_source");
    char *prefix = lg_malloc(strlen(hcm->stat_prefix) + strlen(sr->name) + sizeof("http..scoped_rds.."));
    sprintf(prefix, "http.%s.scoped_rds.%s.", hcm->stat_prefix, sr->name);
    lg__xds_rds_ref_t r = {lg_strdup(sr->name), sub, lg_stats_block_new(prefix, lg__xds_srds_stat_defs, LG__XDS_SRDS__COUNT)};
    free(prefix);
    r.rds_sub = rds_sub;
    r.stat_prefix = lg_strdup(hcm->stat_prefix);
    r.kb.len = protobuf_c_message_get_packed_size(&sr->scope_key_builder->base);
    r.kb.data = lg_malloc(r.kb.len + 1);
    protobuf_c_message_pack(&sr->scope_key_builder->base, r.kb.data);
    *out = lg_realloc(*out, (*n + 1) * sizeof(**out));
    (*out)[(*n)++] = r;
    return 0;
}

/* The ECDS filter configs of the HCM's http_filters with config_discovery. */
static int add_ecds_refs(lg_xds_t *x, lg__xds_sub_t *parent, const hcm_proto_t *hcm, lg__xds_rds_ref_t **out, size_t *n,
                         lg_error_t *err)
{
    for (size_t i = 0; i != hcm->n_http_filters; ++i) {
        const Envoy__Extensions__Filters__Network__HttpConnectionManager__V3__HttpFilter *f = hcm->http_filters[i];
        if (f->config_type_case !=
                ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_FILTER__CONFIG_TYPE_CONFIG_DISCOVERY ||
            f->disabled)
            continue;
        const Envoy__Config__Core__V3__ExtensionConfigSource *cd = f->config_discovery;
        if (cd->config_source == NULL)
            return lg_error(err, "http_filters[%zu].config_discovery.config_source: value is required", i);
        lg__xds_sub_t *sub = lg__xds_subscribe(x, LG_XDS_ECDS, cd->config_source, parent, err);
        if (sub == NULL)
            return lg_error_prefix(err, "http_filters[%zu].config_discovery.config_source", i);
        char *prefix = lg_malloc(strlen(f->name) + sizeof("extension_config_discovery.http_filter.."));
        sprintf(prefix, "extension_config_discovery.http_filter.%s.", f->name);
        lg__xds_rds_ref_t r = {lg_strdup(f->name), sub, lg_stats_block_new(prefix, lg__xds_ecds_stat_defs, LG__XDS_ECDS__COUNT)};
        free(prefix);
        r.type_urls = lg_calloc(cd->n_type_urls + 1, sizeof(*r.type_urls));
        for (size_t k = 0; k != cd->n_type_urls; ++k)
            r.type_urls[r.n_type_urls++] = lg_strdup(cd->type_urls[k]);
        r.no_warm = cd->apply_default_config_without_warming && cd->default_config != NULL;
        *out = lg_realloc(*out, (*n + 1) * sizeof(**out));
        (*out)[(*n)++] = r;
    }
    return 0;
}

static int chain_rds(lg_xds_t *x, lg__xds_sub_t *parent, const Envoy__Config__Listener__V3__FilterChain *fc,
                     lg__xds_rds_ref_t **out, size_t *n, lg_error_t *err)
{
    for (size_t k = 0; fc != NULL && k != fc->n_filters; ++k) {
        const Envoy__Config__Listener__V3__Filter *f = fc->filters[k];
        if (f->config_type_case != ENVOY__CONFIG__LISTENER__V3__FILTER__CONFIG_TYPE_TYPED_CONFIG)
            continue;
        if (strcmp(lg_type_url_name(f->typed_config->type_url), HCM_TYPE) != 0)
            continue;
        hcm_proto_t *hcm = (void *)lg_any_unpack(
            f->typed_config, &envoy__extensions__filters__network__http_connection_manager__v3__http_connection_manager__descriptor,
            err);
        if (hcm == NULL)
            return lg_error_prefix(err, "filters[%zu].typed_config", k);
        int rc = 0;
        if (hcm->route_specifier_case ==
                ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_CONNECTION_MANAGER__ROUTE_SPECIFIER_RDS &&
            add_rds_ref(x, parent, hcm, out, n, err) != 0)
            rc = lg_error_prefix(err, "filters[%zu].typed_config", k);
        else if (
            hcm->route_specifier_case ==
                ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_CONNECTION_MANAGER__ROUTE_SPECIFIER_SCOPED_ROUTES &&
            add_srds_ref(x, parent, hcm, out, n, err) != 0)
            rc = lg_error_prefix(err, "filters[%zu].typed_config", k);
        else if (add_ecds_refs(x, parent, hcm, out, n, err) != 0)
            rc = lg_error_prefix(err, "filters[%zu].typed_config", k);
        protobuf_c_message_free_unpacked(&hcm->base, NULL);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* What the listener's connection managers name: RDS route configs, ECDS filter configs. */
static int extract_rds(lg_xds_t *x, lg__xds_sub_t *parent, const Envoy__Config__Listener__V3__Listener *m, lg__xds_rds_ref_t **out,
                       size_t *n, lg_error_t *err)
{
    *out = NULL;
    *n = 0;
    for (size_t i = 0; i != m->n_filter_chains; ++i)
        if (chain_rds(x, parent, m->filter_chains[i], out, n, err) != 0) {
            lg__xds_refs_free(*out, *n);
            return lg_error_prefix(err, "filter_chains[%zu]", i);
        }
    if (chain_rds(x, parent, m->default_filter_chain, out, n, err) != 0) {
        lg__xds_refs_free(*out, *n);
        return lg_error_prefix(err, "default_filter_chain");
    }
    return 0;
}

static int check_address(lg_xds_t *x, const lg__xds_listener_t *self, const lg_listener_config_t *l, lg_error_t *err)
{
    for (size_t i = 0; i != x->n_listeners; ++i) {
        const lg__xds_listener_t *o = x->listeners[i];
        if (o == NULL || o == self || o->compiled == NULL)
            continue;
        const lg_listener_config_t *ol = o->compiled;
        if (ol->addrlen == l->addrlen && memcmp(&ol->addr, &l->addr, l->addrlen) == 0)
            return lg_error(err, "error adding listener '%s': a listener with the same address already exists ('%s')",
                            l->address_str, o->name);
    }
    return 0;
}

static int apply_listener(lg__xds_sub_t *sub, lg__xds_change_t *ch, lg_error_t *err)
{
    lg_xds_t *x = sub->xds;
    lg__xds_listener_t *e = lg_strmap_get(&x->listener_map, ch->name);
    if (e != NULL && e->is_static) {
        LG_WARN(config, "lds: ignoring listener '%s': a static listener of that name exists", ch->name);
        return 0;
    }
    if (ch->res == NULL) {
        if (e != NULL) {
            LG_INFO(config, "lds: removing listener '%s'", ch->name);
            lg_stats_control_add(lg_stats_listener_manager, LG_LISTENER_MANAGER_STAT_listener_removed, 1);
            listener_remove(x, e);
        }
        return 0;
    }
    if (e != NULL && same_res(e->res, ch->res))
        return 0;
    Envoy__Config__Listener__V3__Listener *m = (void *)ch->msg;
    lg__xds_rds_ref_t *rds;
    size_t n_rds;
    lg__xds_rds_ref_t *sds;
    size_t n_sds;
    if (extract_rds(x, sub, m, &rds, &n_rds, err) != 0)
        goto fail;
    if (lg__xds_listener_sds(x, sub, m, &sds, &n_sds, err) != 0) {
        lg__xds_refs_free(rds, n_rds);
        goto fail;
    }
    lg_hcm_compile_ctx_t ctx = {cluster_exists, x, 0};
    lg_listener_config_t *l = lg_listener_config_compile(m, &ctx, err);
    if (l == NULL || check_address(x, e, l, err) != 0) {
        lg_listener_config_release(l);
        lg__xds_refs_free(rds, n_rds);
        lg__xds_refs_free(sds, n_sds);
        goto fail;
    }
    l->hash = listener_hash(m);
    if (e == NULL) {
        e = listener_add(x, ch->name);
        LG_INFO(config, "lds: add listener '%s'", ch->name);
        lg_stats_control_add(lg_stats_listener_manager, LG_LISTENER_MANAGER_STAT_listener_added, 1);
    } else if (e->compiled != NULL) {
        LG_INFO(config, "lds: update listener '%s'", ch->name);
        lg_stats_control_add(lg_stats_listener_manager, LG_LISTENER_MANAGER_STAT_listener_modified, 1);
    }
    replace_res(&e->res, ch->res);
    lg_listener_config_release(e->compiled);
    e->compiled = l;
    lg__xds_refs_free(e->rds, e->n_rds);
    e->rds = rds;
    e->n_rds = n_rds;
    lg__xds_refs_free(e->sds, e->n_sds);
    e->sds = sds;
    e->n_sds = n_sds;
    set_error(&e->failed, &e->error, NULL, NULL);
    x->dirty = 1;
    return 0;
fail:
    lg_stats_control_add(lg_stats_listener_manager, LG_LISTENER_MANAGER_STAT_listener_create_failure, 1);
    if (e == NULL)
        e = listener_add(x, ch->name);
    set_error(&e->failed, &e->error, ch->res, err->msg);
    x->dirty = 1;
    return -1;
}

/* ---- RDS ---- */

static int apply_routes(lg__xds_sub_t *sub, lg__xds_change_t *ch, lg_error_t *err)
{
    lg_xds_t *x = sub->xds;
    lg__xds_dep_t *d = wanted_dep(sub, ch);
    if (d == NULL)
        return 0;
    if (ch->res == NULL) {
        /* Envoy falls back to an empty route configuration */
        if (d->compiled != NULL) {
            dep_compiled_free(d);
            replace_res(&d->res, NULL);
            x->dirty = 1;
        }
        return 0;
    }
    dep_count(d, LG__XDS_SUB_update_attempt);
    if (dep_unchanged(d, ch->res))
        return 0;
    lg_route_compile_opts_t opts = {.validate_clusters = 0, .cluster_exists = cluster_exists, .ctx = x};
    /* the table takes the decoded message over (no copy); /config_dump shows ch->res */
    lg_route_table_t *t = lg_route_table_compile_owned((void *)ch->msg, &opts, err);
    ch->msg = NULL;
    if (t == NULL) {
        dep_reject(d, ch->res, err->msg);
        return -1;
    }
    dep_accept(x, d, ch->res, t);
    return 0;
}

/* ---- SDS ---- */

/* A secret goes into the TLS secret store, which rebuilds the SSL_CTX of
 * every context naming it: connections keep theirs, new handshakes use it. */
static int apply_secret(lg__xds_sub_t *sub, lg__xds_change_t *ch, lg_error_t *err)
{
    lg_xds_t *x = sub->xds;
    lg__xds_dep_t *d = wanted_dep(sub, ch);
    if (d == NULL)
        return 0;
    if (ch->res == NULL) {
        LG_DEBUG(config, "sds: secret '%s' removed; its contexts keep it", ch->name);
        return 0;
    }
    dep_count(d, LG__XDS_SUB_update_attempt);
    if (dep_unchanged(d, ch->res))
        return 0;
    if (lg_tls_secret_upsert((const void *)ch->msg, err) != 0) {
        dep_reject(d, ch->res, err->msg);
        return -1;
    }
    LG_INFO(config, "sds: secret '%s' updated (version %s)", ch->name, ch->res->version);
    dep_accept(x, d, ch->res, ch->msg);
    ch->msg = NULL;
    return 0;
}

/* ---- RTDS ---- */

static int dep_ready(const lg__xds_dep_t *d);

/* A Runtime resource replaces the content of the RTDS layers subscribed to
 * it (Envoy's RtdsSubscription); its removal empties them. */
static int apply_runtime(lg__xds_sub_t *sub, lg__xds_change_t *ch, lg_error_t *err)
{
    lg_xds_t *x = sub->xds;
    lg__xds_dep_t *d = wanted_dep(sub, ch);
    if (d == NULL)
        return 0;
    if (ch->res == NULL) {
        if (d->res != NULL) {
            LG_INFO(runtime, "rtds: runtime '%s' removed: its layers are empty", ch->name);
            lg_runtime_apply_rtds(ch->name, NULL, err);
            replace_res(&d->res, NULL);
            x->dirty = 1;
        }
        return 0;
    }
    if (dep_unchanged(d, ch->res))
        return 0;
    const Envoy__Service__Runtime__V3__Runtime *rt = (const void *)ch->msg;
    if (lg_runtime_apply_rtds(ch->name, rt->layer != NULL ? &rt->layer->base : NULL, err) != 0) {
        dep_reject(d, ch->res, err->msg);
        return -1;
    }
    LG_INFO(runtime, "rtds: runtime '%s' updated (version %s)", ch->name, ch->res->version);
    dep_accept(x, d, ch->res, ch->msg);
    ch->msg = NULL;
    return 0;
}

int lg__xds_runtime_ready(lg_xds_t *x)
{
    for (size_t i = 0; i != x->n_rtds; ++i)
        if (!dep_ready(lg__xds_dep_find(x, LG_XDS_RTDS, x->rtds[i].name)))
            return 0;
    return 1;
}

/* ---- ECDS ---- */

/* A TypedExtensionConfig compiles into the filter config that new streams of
 * the HCMs naming it use; its removal leaves them the default_config. */
static int apply_extension(lg__xds_sub_t *sub, lg__xds_change_t *ch, lg_error_t *err)
{
    lg_xds_t *x = sub->xds;
    lg__xds_dep_t *d = wanted_dep(sub, ch);
    if (d == NULL)
        return 0;
    if (ch->res == NULL) {
        if (d->res != NULL) {
            LG_INFO(config, "ecds: extension config '%s' removed: its filters use their default config", ch->name);
            dep_compiled_free(d);
            replace_res(&d->res, NULL);
            x->dirty = 1;
        }
        return 0;
    }
    dep_count(d, LG__XDS_SUB_update_attempt);
    if (dep_unchanged(d, ch->res))
        return 0;
    const Envoy__Config__Core__V3__TypedExtensionConfig *m = (const void *)ch->msg;
    lg_ecds_filter_t *f = lg_ecds_filter_compile(ch->name, m->typed_config, d->type_urls, d->n_type_urls, err);
    if (f == NULL) {
        dep_reject(d, ch->res, err->msg);
        dep_count(d, LG__XDS_ECDS_config_fail);
        x->dirty = 1; /* /config_dump shows the error_state */
        return -1;
    }
    LG_INFO(config, "ecds: extension config '%s' updated (version %s)", ch->name, ch->res->version);
    dep_accept(x, d, ch->res, f);
    dep_count(d, LG__XDS_ECDS_config_reload);
    return 0;
}

/* ---- SRDS ---- */

static void want(lg_xds_t *x, lg_xds_type_t type, const char *name, lg__xds_sub_t *sub, lg_stats_block_t *stats, uint64_t now);

typedef Envoy__Config__Route__V3__ScopedRouteConfiguration scope_proto_t;

static int scope_cmp(const void *a, const void *b)
{
    return strcmp((*(scope_proto_t *const *)a)->name, (*(scope_proto_t *const *)b)->name);
}

/* The scopes held for `sub` (sorted by name), with `extra` in place of the
 * scope of its name. Free the array, not the scopes. */
static size_t scopes_of(lg_xds_t *x, const lg__xds_sub_t *sub, scope_proto_t *extra, scope_proto_t ***out)
{
    const lg_strmap_t *m = &x->deps[LG_XDS_SRDS];
    size_t n = 0;
    *out = lg_malloc((m->n + 2) * sizeof(**out));
    for (size_t i = 0; m->slots != NULL && i <= m->mask; ++i) {
        const lg__xds_dep_t *d = m->slots[i];
        if (d != NULL && d->sub == sub && d->compiled != NULL && (extra == NULL || strcmp(d->name, extra->name) != 0))
            (*out)[n++] = d->compiled;
    }
    if (extra != NULL)
        (*out)[n++] = extra;
    qsort(*out, n, sizeof(**out), scope_cmp);
    return n;
}

/* Compiles scopes with the key builder of an SRDS ref (a builder of the set's own). */
static lg_scoped_routes_t *compile_scopes(const lg__xds_rds_ref_t *ref, scope_proto_t *const *confs, size_t n, lg_error_t *err)
{
    ProtobufCMessage *m = protobuf_c_message_unpack(
        &envoy__extensions__filters__network__http_connection_manager__v3__scoped_routes__scope_key_builder__descriptor, NULL,
        ref->kb.len, ref->kb.data);
    if (m == NULL) {
        lg_error(err, "scope_key_builder: cannot decode");
        return NULL;
    }
    lg_scope_key_builder_t *kb = lg_scope_key_builder_compile((const void *)m, "scope_key_builder", err);
    protobuf_c_message_free_unpacked(m, NULL);
    if (kb == NULL)
        return NULL;
    lg_scoped_routes_t *set = lg_scoped_routes_compile(kb, confs, n, NULL, "scoped_route_configurations", err);
    lg_scope_key_builder_release(kb);
    return set;
}

/* Whether every HCM using `sub` accepts its scopes with `extra`. */
static int check_scopes(lg_xds_t *x, lg__xds_sub_t *sub, scope_proto_t *extra, lg_error_t *err)
{
    scope_proto_t **confs;
    size_t n = scopes_of(x, sub, extra, &confs);
    int rc = 0;
    for (size_t i = 0; rc == 0 && i != x->n_listeners; ++i) {
        const lg__xds_listener_t *l = x->listeners[i];
        for (size_t j = 0; rc == 0 && l != NULL && j != l->n_rds; ++j) {
            if (l->rds[j].sub != sub)
                continue;
            lg_scoped_routes_t *set = compile_scopes(l->rds + j, confs, n, err);
            rc = set != NULL ? 0 : -1;
            lg_scoped_routes_release(set);
        }
    }
    free(confs);
    return rc;
}

/* A ScopedRouteConfiguration joins the scope set of its source; the route
 * configuration it names is subscribed on the HCM's rds_config_source. */
static int apply_scoped(lg__xds_sub_t *sub, lg__xds_change_t *ch, lg_error_t *err)
{
    lg_xds_t *x = sub->xds;
    lg__xds_dep_t *d = lg__xds_dep_find(x, LG_XDS_SRDS, ch->name);
    if (ch->res == NULL) {
        if (d != NULL && d->sub == sub) {
            LG_INFO(config, "srds: removing scope '%s'", ch->name);
            lg_strmap_del(&x->deps[LG_XDS_SRDS], ch->name);
            dep_free(d);
            ++x->srds_gen;
            x->dirty = 1;
        }
        return 0;
    }
    if (d != NULL && d->sub == sub && same_res(d->res, ch->res)) {
        replace_res(&d->res, ch->res);
        return 0;
    }
    scope_proto_t *m = (void *)ch->msg;
    if (m->route_configuration_name[0] == '\0')
        return lg_error(err, "route_configuration_name: value length must be at least 1 characters");
    if (m->key == NULL || m->key->n_fragments == 0)
        return lg_error(err, "key.fragments: value must contain at least 1 item(s)");
    if (d != NULL && d->sub != sub && d->res != NULL)
        return lg_error(err, "scope '%s' is already delivered by another scoped RDS source", ch->name);
    if (check_scopes(x, sub, m, err) != 0)
        return -1;
    LG_INFO(config, "srds: scope '%s' -> route configuration '%s' (version %s)", ch->name, m->route_configuration_name,
            ch->res->version);
    if (d == NULL)
        d = dep_get(x, LG_XDS_SRDS, ch->name);
    d->sub = sub;
    d->wanted = 1;
    dep_compiled_free(d);
    d->compiled = ch->msg;
    ch->msg = NULL;
    replace_res(&d->res, ch->res);
    set_error(&d->failed, &d->error, NULL, NULL);
    ++x->srds_gen;
    x->dirty = 1;
    return 0;
}

/* The SRDS scope sets of the snapshot: one per ScopedRoutes.name (its first HCM's key builder). */
static void build_scope_sets(lg_xds_t *x, lg_snapshot_t *s)
{
    for (size_t i = 0; i != x->n_listeners; ++i) {
        const lg__xds_listener_t *l = x->listeners[i];
        for (size_t j = 0; j != l->n_rds; ++j) {
            const lg__xds_rds_ref_t *r = l->rds + j;
            int seen = r->sub->type != LG_XDS_SRDS;
            for (size_t k = 0; !seen && k != s->n_scopes; ++k)
                seen = strcmp(s->scopes[k]->name, r->name) == 0;
            if (seen)
                continue;
            scope_proto_t **confs;
            size_t n = scopes_of(x, r->sub, NULL, &confs);
            lg_error_t err = {{0}};
            lg_scoped_routes_t *set = compile_scopes(r, confs, n, &err);
            free(confs);
            if (set == NULL) {
                LG_WARN(config, "srds: scoped routes '%s': %s", r->name, err.msg);
                continue;
            }
            s->scopes = lg_realloc(s->scopes, (s->n_scopes + 1) * sizeof(*s->scopes));
            s->scopes[s->n_scopes++] = lg_snapshot_scopes_new(r->name, set);
        }
    }
}

/* SRDS deps stay while an HCM uses their source; the route configurations of their scopes are wanted. */
/* The http.<stat_prefix>.rds.<name>. block an SRDS ref counts a scope's route configuration in,
 * as Envoy's scoped RDS makes its RDS providers with the HCM's stat prefix. */
static lg_stats_block_t *scope_rds_stats(lg__xds_rds_ref_t *r, const char *name)
{
    char *prefix = lg_malloc(strlen(r->stat_prefix) + strlen(name) + sizeof("http..rds.."));
    sprintf(prefix, "http.%s.rds.%s.", r->stat_prefix, name);
    lg_stats_block_t *b = NULL;
    for (size_t i = 0; b == NULL && i != r->n_scope_rds_stats; ++i)
        if (strcmp(lg_stats_block_prefix(r->scope_rds_stats[i]), prefix) == 0)
            b = r->scope_rds_stats[i];
    if (b == NULL) {
        b = lg_stats_block_new(prefix, lg__xds_sub_stat_defs, LG__XDS_SUB__COUNT);
        r->scope_rds_stats = lg_realloc(r->scope_rds_stats, (r->n_scope_rds_stats + 1) * sizeof(*r->scope_rds_stats));
        r->scope_rds_stats[r->n_scope_rds_stats++] = b;
    }
    free(prefix);
    return b;
}

static void want_scopes(lg_xds_t *x, uint64_t now)
{
    lg_strmap_t *m = &x->deps[LG_XDS_SRDS];
    for (size_t i = 0; i != x->n_listeners; ++i) {
        lg__xds_listener_t *l = x->listeners[i];
        for (size_t j = 0; l != NULL && j != l->n_rds; ++j) {
            lg__xds_rds_ref_t *r = l->rds + j;
            if (r->sub->type != LG_XDS_SRDS)
                continue;
            for (size_t k = 0; m->slots != NULL && k <= m->mask; ++k) {
                lg__xds_dep_t *d = m->slots[k];
                if (d == NULL || d->sub != r->sub || d->compiled == NULL)
                    continue;
                d->wanted = 1;
                const char *rc = ((scope_proto_t *)d->compiled)->route_configuration_name;
                want(x, LG_XDS_RDS, rc, r->rds_sub, scope_rds_stats(r, rc), now);
            }
        }
    }
}

/* ---- subscription stats ---- */

/* Calls cb once for each stats block of the SRDS refs using `sub`. */
static void srds_blocks(lg__xds_sub_t *sub, void (*cb)(lg__xds_sub_t *, lg_stats_block_t *, void *), void *ctx)
{
    lg_xds_t *x = sub->xds;
    H2O_VECTOR(lg_stats_block_t *) seen = {NULL};
    for (size_t i = 0; i != x->n_listeners; ++i) {
        const lg__xds_listener_t *l = x->listeners[i];
        for (size_t j = 0; l != NULL && j != l->n_rds; ++j) {
            lg_stats_block_t *b = l->rds[j].sub == sub ? l->rds[j].stats : NULL;
            size_t k = 0;
            while (b != NULL && k != seen.size && seen.entries[k] != b)
                ++k;
            if (b == NULL || k != seen.size)
                continue;
            if (seen.size == seen.capacity) {
                seen.capacity = seen.capacity != 0 ? seen.capacity * 2 : 4;
                seen.entries = lg_realloc(seen.entries, seen.capacity * sizeof(*seen.entries));
            }
            seen.entries[seen.size++] = b;
            cb(sub, b, ctx);
        }
    }
    free(seen.entries);
}

static void srds_count_cb(lg__xds_sub_t *sub, lg_stats_block_t *b, void *ctx)
{
    lg_stats_control_add(b, *(size_t *)ctx, 1);
}

void lg__xds_sub_count(lg__xds_sub_t *sub, size_t idx)
{
    if (sub->stats != NULL)
        lg_stats_control_add(sub->stats, idx, 1);
    else if (sub->type == LG_XDS_SRDS)
        srds_blocks(sub, srds_count_cb, &idx);
}

static void sub_version_set(lg_stats_block_t *b, const char *version, uint64_t now_ms, uint64_t took_ms)
{
    lg_stats_control_add(b, LG__XDS_SUB_update_success, 1);
    lg_stats_histogram_record(b, lg_stats_nworkers, LG__XDS_SUB_update_duration, took_ms);
    lg_stats_text_set(b, LG__XDS_SUB_version_text, version);
    lg_stats_gauge_set(b, LG__XDS_SUB_version, lg__xds_hash(version, strlen(version)));
    lg_stats_gauge_set(b, LG__XDS_SUB_update_time, now_ms);
}

/* Envoy's ScopedRdsConfigSubscription::onConfigUpdate: the subscription stats, then
 * all_scopes, config_reload and config_reload_time_ms; active_scopes and
 * on_demand_scopes count the scopes that load their routes eagerly / on demand. */
static void srds_accepted_cb(lg__xds_sub_t *sub, lg_stats_block_t *b, void *ctx)
{
    const lg_strmap_t *m = &sub->xds->deps[LG_XDS_SRDS];
    uint64_t now_ms = lg_wall_us() / 1000, eager = 0, on_demand = 0;
    for (size_t k = 0; m->slots != NULL && k <= m->mask; ++k) {
        const lg__xds_dep_t *d = m->slots[k];
        if (d != NULL && d->sub == sub && d->compiled != NULL) {
            if (((const scope_proto_t *)d->compiled)->on_demand)
                ++on_demand;
            else
                ++eager;
        }
    }
    sub_version_set(b, ctx, now_ms, lg__xds_update_ms(sub->xds));
    lg_stats_gauge_set(b, LG__XDS_SRDS_all_scopes, eager + on_demand);
    lg_stats_gauge_set(b, LG__XDS_SRDS_active_scopes, eager);
    lg_stats_gauge_set(b, LG__XDS_SRDS_on_demand_scopes, on_demand);
    lg_stats_control_add(b, LG__XDS_SRDS_config_reload, 1);
    lg_stats_gauge_set(b, LG__XDS_SRDS_config_reload_time_ms, now_ms);
}

void lg__xds_sub_accepted(lg__xds_sub_t *sub, const char *version)
{
    if (sub->stats != NULL)
        sub_version_set(sub->stats, version, lg_wall_us() / 1000, lg__xds_update_ms(sub->xds));
    else if (sub->type == LG_XDS_SRDS)
        srds_blocks(sub, srds_accepted_cb, (void *)version);
}

/* An SRDS ref is ready once its source answered (or timed out) and every scope's routes arrived. */
static int scopes_ready(lg_xds_t *x, const lg__xds_rds_ref_t *r)
{
    const lg_strmap_t *m = &x->deps[LG_XDS_SRDS];
    if (!r->sub->initialized)
        return 0;
    for (size_t k = 0; m->slots != NULL && k <= m->mask; ++k) {
        const lg__xds_dep_t *d = m->slots[k];
        if (d != NULL && d->sub == r->sub && d->compiled != NULL &&
            !dep_ready(lg__xds_dep_find(x, LG_XDS_RDS, ((scope_proto_t *)d->compiled)->route_configuration_name)))
            return 0;
    }
    return 1;
}

/* ---- dispatch ---- */

size_t lg__xds_apply(lg__xds_sub_t *sub, lg__xds_change_t *changes, size_t n, lg_strbuf_t *errors)
{
    static int (*const apply[LG_XDS__NTYPES])(lg__xds_sub_t *, lg__xds_change_t *, lg_error_t *) = {
        apply_cluster, apply_cla, apply_listener, apply_routes, apply_secret, apply_runtime, apply_extension, apply_scoped};
    size_t rejected = 0;
    for (size_t i = 0; i != n; ++i) {
        lg_error_t err = {{0}};
        if (apply[sub->type] == NULL || apply[sub->type](sub, changes + i, &err) == 0)
            continue;
        LG_WARN(config, "%s: rejected '%s': %s", lg_xds_type_names[sub->type], changes[i].name, err.msg);
        lg_strbuf_printf(errors, "%s%s: %s", rejected++ ? ", " : "", changes[i].name, err.msg);
    }
    return rejected;
}

/* ---- dependencies, warming, snapshots ---- */

static void want(lg_xds_t *x, lg_xds_type_t type, const char *name, lg__xds_sub_t *sub, lg_stats_block_t *stats, uint64_t now)
{
    lg__xds_dep_t *d = dep_get(x, type, name);
    if (!d->wanted) {
        d->wanted = 1;
        if (d->sub != sub) {
            if (d->sub != NULL)
                lg__xds_interest(d->sub);
            d->sub = sub;
            d->since_ms = 0;
            d->timed_out = 0;
            lg__xds_interest(sub);
            /* a new secret name is listed as warming in /config_dump */
            if (type == LG_XDS_SDS)
                x->dirty = 1;
        }
        if (d->since_ms == 0)
            d->since_ms = now;
    }
    dep_add_stats(d, stats);
}

/* Marks what listeners and clusters name; forgets what nothing names. */
static void update_deps(lg_xds_t *x)
{
    uint64_t now = lg_now_ms();
    for (size_t t = 0; t != LG_XDS__NTYPES; ++t)
        for (size_t i = 0; x->deps[t].slots != NULL && i <= x->deps[t].mask; ++i) {
            lg__xds_dep_t *d = x->deps[t].slots[i];
            if (d != NULL) {
                d->wanted = 0;
                d->n_stats = 0;
                d->user = NULL;
                dep_set_type_urls(d, NULL, 0);
            }
        }
    for (size_t i = 0; i != x->n_listeners; ++i) {
        lg__xds_listener_t *l = x->listeners[i];
        for (size_t j = 0; l != NULL && j != l->n_rds; ++j) {
            lg__xds_rds_ref_t *r = l->rds + j;
            if (r->sub->type == LG_XDS_SRDS)
                continue; /* want_scopes() */
            want(x, r->sub->type, r->name, r->sub, r->stats, now);
            lg__xds_dep_t *d = lg__xds_dep_find(x, r->sub->type, r->name);
            if (r->n_type_urls != 0 && d->type_urls == NULL)
                dep_set_type_urls(d, r->type_urls, r->n_type_urls);
        }
        for (size_t j = 0; l != NULL && j != l->n_sds; ++j)
            want(x, LG_XDS_SDS, l->sds[j].name, l->sds[j].sub, l->sds[j].stats, now);
    }
    want_scopes(x, now);
    for (size_t i = 0; i != x->n_rtds; ++i)
        want(x, LG_XDS_RTDS, x->rtds[i].name, x->rtds[i].sub, NULL, now);
    for (size_t i = 0; i != x->n_clusters; ++i) {
        lg__xds_cluster_t *c = x->clusters[i];
        if (c == NULL)
            continue;
        for (size_t j = 0; j != c->n_sds; ++j)
            want(x, LG_XDS_SDS, c->sds[j].name, c->sds[j].sub, c->sds[j].stats, now);
        c->eds = NULL;
        if (c->eds_sub != NULL) {
            want(x, LG_XDS_EDS, c->compiled->eds_service_name, c->eds_sub, c->eds_stats, now);
            c->eds = lg__xds_dep_find(x, LG_XDS_EDS, c->compiled->eds_service_name);
            if (c->eds->user == NULL)
                c->eds->user = c;
        }
    }
    for (size_t t = 0; t != LG_XDS__NTYPES; ++t) {
        lg__xds_dep_t **gone = NULL;
        size_t n = 0;
        for (size_t i = 0; x->deps[t].slots != NULL && i <= x->deps[t].mask; ++i) {
            lg__xds_dep_t *d = x->deps[t].slots[i];
            if (d != NULL && !d->wanted) {
                gone = lg_realloc(gone, (n + 1) * sizeof(*gone));
                gone[n++] = d;
            }
        }
        for (size_t i = 0; i != n; ++i) {
            lg_strmap_del(&x->deps[t], gone[i]->name);
            if (gone[i]->sub != NULL)
                lg__xds_interest(gone[i]->sub);
            if (dep_has_value(gone[i]))
                x->dirty = 1;
            dep_free(gone[i]);
        }
        free(gone);
    }
}

static int dep_ready(const lg__xds_dep_t *d)
{
    return d != NULL && (dep_has_value(d) || d->timed_out);
}

/* Whether every ref (of its subscription's type) has arrived or timed out. */
static int refs_ready(lg_xds_t *x, const lg__xds_rds_ref_t *refs, size_t n)
{
    for (size_t i = 0; i != n; ++i) {
        if (refs[i].sub->type == LG_XDS_SRDS) {
            if (!scopes_ready(x, refs + i))
                return 0;
        } else if (!refs[i].no_warm && !dep_ready(lg__xds_dep_find(x, refs[i].sub->type, refs[i].name))) {
            return 0;
        }
    }
    return 1;
}

static void warm_clusters(lg_xds_t *x)
{
    for (size_t i = 0; i != x->n_clusters; ++i) {
        lg__xds_cluster_t *c = x->clusters[i];
        if (c == NULL || c->compiled == NULL || !refs_ready(x, c->sds, c->n_sds))
            continue;
        if (c->dns != NULL) {
            warm_dns_cluster(x, c);
            continue;
        }
        if (c->eds_sub == NULL) {
            if (c->active_gen != c->compiled_gen) {
                if (c->active != NULL)
                    lg_cluster_config_adopt(c->compiled, c->active);
                replace_cluster(&c->active, c->compiled);
                replace_res(&c->active_res, c->res);
                c->active_gen = c->compiled_gen;
                x->dirty = 1;
            }
            continue;
        }
        lg__xds_dep_t *d = c->eds;
        if (d != NULL && d->res != NULL) {
            if (c->active_gen != c->compiled_gen || c->active_cla != d->res) {
                lg_error_t err;
                if (activate_from_dep(c, d, &err) != 0)
                    LG_WARN(upstream, "cluster %s: cannot apply its endpoints: %s", c->name, err.msg);
                x->dirty = 1;
            }
        } else if (dep_ready(d) && c->active_gen != c->compiled_gen) {
            LG_INFO(upstream, "cluster %s: initial fetch of its endpoints timed out; it starts without hosts", c->name);
            replace_cluster(&c->active, c->compiled);
            replace_res(&c->active_res, c->res);
            replace_res(&c->active_cla, NULL);
            c->active_gen = c->compiled_gen;
            x->dirty = 1;
        }
    }
}

static void warm_listeners(lg_xds_t *x)
{
    for (size_t i = 0; i != x->n_listeners; ++i) {
        lg__xds_listener_t *l = x->listeners[i];
        if (l == NULL || l->compiled == NULL || l->active == l->compiled)
            continue;
        if (!refs_ready(x, l->rds, l->n_rds) || !refs_ready(x, l->sds, l->n_sds))
            continue;
        replace_listener(&l->active, l->compiled);
        replace_res(&l->active_res, l->res);
        x->dirty = 1;
    }
}

int lg__xds_warmed(lg_xds_t *x, lg_xds_type_t type)
{
    if (type == LG_XDS_CDS) {
        for (size_t i = 0; i != x->n_clusters; ++i) {
            const lg__xds_cluster_t *c = x->clusters[i];
            if (c != NULL && c->compiled != NULL && c->active_gen != c->compiled_gen)
                return 0;
            if (c != NULL && c->eds_sub != NULL && !dep_ready(c->eds))
                return 0;
            if (c != NULL && c->dns != NULL && !lg_dns_cluster_warm(c->dns))
                return 0;
            if (c != NULL && !refs_ready(x, c->sds, c->n_sds))
                return 0;
        }
    } else {
        for (size_t i = 0; i != x->n_listeners; ++i) {
            const lg__xds_listener_t *l = x->listeners[i];
            if (l != NULL && l->compiled != NULL && l->active != l->compiled)
                return 0;
            if (l != NULL && (!refs_ready(x, l->rds, l->n_rds) || !refs_ready(x, l->sds, l->n_sds)))
                return 0;
        }
    }
    return 1;
}

int lg__xds_check_timeouts(lg_xds_t *x, uint64_t now)
{
    int any = 0;
    for (size_t t = 0; t != LG_XDS__NTYPES; ++t)
        for (size_t i = 0; x->deps[t].slots != NULL && i <= x->deps[t].mask; ++i) {
            lg__xds_dep_t *d = x->deps[t].slots[i];
            if (d == NULL || !d->wanted || d->res != NULL || d->timed_out || d->sub == NULL || !d->sub->started ||
                d->sub->init_timeout_ms == 0 || now < d->since_ms + d->sub->init_timeout_ms)
                continue;
            LG_WARN(config, "%s: initial fetch of '%s' timed out", lg_xds_type_names[t], d->name);
            d->timed_out = 1;
            dep_count(d, t == LG_XDS_EDS ? LG__XDS_EDS_init_fetch_timeout : LG__XDS_SUB_init_fetch_timeout);
            any = 1;
        }
    return any;
}

static void compact(lg_xds_t *x)
{
    size_t o = 0;
    for (size_t i = 0; i != x->n_clusters; ++i)
        if (x->clusters[i] != NULL)
            x->clusters[o++] = x->clusters[i];
    x->n_clusters = o;
    o = 0;
    for (size_t i = 0; i != x->n_listeners; ++i)
        if (x->listeners[i] != NULL)
            x->listeners[o++] = x->listeners[i];
    x->n_listeners = o;
}

/* ---- the dump (for /config_dump) ---- */

/* Sizes the item array of type t for `n` items (the count of its store: no slack). */
static void dump_reserve(lg_xds_dump_t *d, lg_xds_type_t t, size_t *cap, size_t n)
{
    if (n > *cap) {
        *cap = n;
        d->items[t] = lg_realloc(d->items[t], *cap * sizeof(*d->items[t]));
    }
}

/* Adds an item; set its records, then dump_name(). */
static lg_xds_dump_item_t *dump_add(lg_xds_dump_t *d, lg_xds_type_t t, size_t *cap)
{
    if (d->n_items[t] == *cap)
        dump_reserve(d, t, cap, *cap ? *cap * 2 : 16);
    lg_xds_dump_item_t *it = d->items[t] + d->n_items[t]++;
    *it = (lg_xds_dump_item_t){NULL};
    return it;
}

/* The item's name: a record's name when one of its records has it (see
 * lg_xds_dump_release), else a copy. */
static void dump_name(lg_xds_dump_item_t *it, const char *name)
{
    lg_xds_resource_t *recs[] = {it->active, it->warming, it->failed};
    for (size_t i = 0; i != LG_ARRAY_SIZE(recs); ++i)
        if (recs[i] != NULL && strcmp(recs[i]->name, name) == 0) {
            it->name = recs[i]->name;
            return;
        }
    it->name = lg_strdup(name);
}

static void dump_version(lg_xds_t *x, lg_xds_dump_t *d, lg_xds_type_t t)
{
    const char *v = "";
    for (size_t i = 0; i != x->n_subs; ++i)
        if (x->subs[i]->type == t && x->subs[i]->version_info[0] != '\0') {
            v = x->subs[i]->version_info;
            break;
        }
    d->version_info[t] = lg_strdup(v);
}

/* SRDS: one item per scope, named by its ScopedRoutes.name (config_dump groups them). */
static void dump_scopes(lg_xds_t *x, lg_xds_dump_t *d, size_t *cap)
{
    const lg_strmap_t *m = &x->deps[LG_XDS_SRDS];
    for (size_t i = 0; i != x->n_listeners; ++i) {
        const lg__xds_listener_t *l = x->listeners[i];
        for (size_t j = 0; l != NULL && j != l->n_rds; ++j) {
            const lg__xds_rds_ref_t *r = l->rds + j;
            int seen = r->sub->type != LG_XDS_SRDS;
            for (size_t k = 0; !seen && k != d->n_items[LG_XDS_SRDS]; ++k)
                seen = strcmp(d->items[LG_XDS_SRDS][k].name, r->name) == 0;
            for (size_t k = 0; !seen && m->slots != NULL && k <= m->mask; ++k) {
                const lg__xds_dep_t *dep = m->slots[k];
                if (dep != NULL && dep->sub == r->sub && dep->res != NULL) {
                    lg_xds_dump_item_t *it = dump_add(d, LG_XDS_SRDS, cap);
                    it->active = lg_xds_resource_ref(dep->res);
                    dump_name(it, r->name);
                }
            }
        }
    }
}

static lg_xds_dump_t *build_dump(lg_xds_t *x)
{
    lg_xds_dump_t *d = lg_calloc(1, sizeof(*d));
    size_t cap[LG_XDS__NTYPES] = {0};
    d->refcnt = 1;
    for (size_t t = 0; t != LG_XDS__NTYPES; ++t)
        dump_version(x, d, t);
    dump_reserve(d, LG_XDS_CDS, cap + LG_XDS_CDS, x->n_clusters);
    for (size_t i = 0; i != x->n_clusters; ++i) {
        const lg__xds_cluster_t *c = x->clusters[i];
        if (c == NULL || c->is_static || c->res == NULL)
            continue;
        lg_xds_dump_item_t *it = dump_add(d, LG_XDS_CDS, cap + LG_XDS_CDS);
        it->active = c->active != NULL ? lg_xds_resource_ref(c->active_res) : NULL;
        it->warming = c->active_res != c->res ? lg_xds_resource_ref(c->res) : NULL;
        dump_name(it, c->name);
    }
    dump_reserve(d, LG_XDS_LDS, cap + LG_XDS_LDS, x->n_listeners);
    for (size_t i = 0; i != x->n_listeners; ++i) {
        const lg__xds_listener_t *l = x->listeners[i];
        if (l == NULL || l->is_static)
            continue;
        lg_xds_dump_item_t *it = dump_add(d, LG_XDS_LDS, cap + LG_XDS_LDS);
        it->active = l->active != NULL ? lg_xds_resource_ref(l->active_res) : NULL;
        it->warming = l->compiled != NULL && l->active != l->compiled ? lg_xds_resource_ref(l->res) : NULL;
        it->failed = lg_xds_resource_ref(l->failed);
        it->error = l->error != NULL ? lg_strdup(l->error) : NULL;
        dump_name(it, l->name);
    }
    dump_scopes(x, d, cap + LG_XDS_SRDS);
    static const lg_xds_type_t dep_types[] = {LG_XDS_EDS, LG_XDS_RDS, LG_XDS_SDS, LG_XDS_ECDS};
    for (size_t k = 0; k != LG_ARRAY_SIZE(dep_types); ++k) {
        lg_xds_type_t t = dep_types[k];
        dump_reserve(d, t, cap + t, x->deps[t].n);
        for (size_t i = 0; x->deps[t].slots != NULL && i <= x->deps[t].mask; ++i) {
            const lg__xds_dep_t *dep = x->deps[t].slots[i];
            /* a wanted secret not received yet is Envoy's dynamic_warming_secrets */
            if (dep == NULL || (dep->res == NULL && dep->failed == NULL && !(t == LG_XDS_SDS && dep->wanted)))
                continue;
            lg_xds_dump_item_t *it = dump_add(d, t, cap + t);
            it->active = lg_xds_resource_ref(dep->res);
            it->failed = lg_xds_resource_ref(dep->failed);
            it->error = dep->error != NULL ? lg_strdup(dep->error) : NULL;
            dump_name(it, dep->name);
        }
    }
    return d;
}

/* ---- snapshots ---- */

static lg_snapshot_t *build_snapshot(lg_xds_t *x)
{
    size_t nl = 0, nc = 0, nr = 0;
    for (size_t i = 0; i != x->n_listeners; ++i)
        nl += x->listeners[i]->active != NULL;
    for (size_t i = 0; i != x->n_clusters; ++i)
        nc += x->clusters[i]->active != NULL;
    nr = x->deps[LG_XDS_RDS].n;
    lg_snapshot_t *s = lg_snapshot_new(nl, nc, nr);
    s->ecds = lg_calloc(x->deps[LG_XDS_ECDS].n + 1, sizeof(*s->ecds));
    for (size_t i = 0; x->deps[LG_XDS_ECDS].slots != NULL && i <= x->deps[LG_XDS_ECDS].mask; ++i) {
        lg__xds_dep_t *d = x->deps[LG_XDS_ECDS].slots[i];
        if (d != NULL && d->compiled != NULL)
            s->ecds[s->n_ecds++] = lg_ecds_filter_ref(d->compiled);
    }
    for (size_t i = 0; i != x->n_listeners; ++i)
        if (x->listeners[i]->active != NULL)
            s->listeners[s->n_listeners++] = lg_listener_config_addref(x->listeners[i]->active);
    for (size_t i = 0; i != x->n_clusters; ++i)
        if (x->clusters[i]->active != NULL)
            s->clusters[s->n_clusters++] = lg_cluster_config_addref(x->clusters[i]->active);
    for (size_t i = 0; x->deps[LG_XDS_RDS].slots != NULL && i <= x->deps[LG_XDS_RDS].mask; ++i) {
        lg__xds_dep_t *d = x->deps[LG_XDS_RDS].slots[i];
        if (d != NULL && d->compiled != NULL)
            s->routes[s->n_routes++] = lg_route_table_retain(d->compiled);
    }
    build_scope_sets(x, s);
    lg_snapshot_seal(s);
    s->bootstrap = &x->bootstrap->base;
    s->last_updated_wall_us = x->published->last_updated_wall_us;
    s->xds = build_dump(x);
    s->runtime = lg_runtime_loader_snapshot();
    x->runtime_gen = s->runtime != NULL ? s->runtime->generation : 0;
    return s;
}

/* A listener whose sockets cannot be opened goes back to the version that was published. */
static void unbind_listener(lg_xds_t *x, const lg_listener_config_t *failed, const char *msg)
{
    for (size_t i = 0; i != x->n_listeners; ++i) {
        lg__xds_listener_t *l = x->listeners[i];
        if (l->active != failed)
            continue;
        LG_WARN(config, "lds: listener '%s': %s", l->name, msg);
        lg_stats_control_add(lg_stats_listener_manager, LG_LISTENER_MANAGER_STAT_listener_create_failure, 1);
        if (x->errors != NULL)
            lg_strbuf_printf(x->errors, "%s%s: %s", x->errors->len ? ", " : "", l->name, msg);
        set_error(&l->failed, &l->error, l->res, msg);
        replace_listener(&l->compiled, l->published);
        replace_listener(&l->active, l->published);
        replace_res(&l->res, l->published_res);
        replace_res(&l->active_res, l->published_res);
        if (l->published == NULL) {
            lg__xds_refs_free(l->rds, l->n_rds);
            l->rds = NULL;
            l->n_rds = 0;
            lg__xds_refs_free(l->sds, l->n_sds);
            l->sds = NULL;
            l->n_sds = 0;
        }
        return;
    }
}

static void update_gauges(lg_xds_t *x)
{
    size_t warming_c = 0, warming_l = 0, active_l = 0;
    for (size_t i = 0; i != x->n_clusters; ++i) {
        int warming = x->clusters[i]->compiled != NULL && x->clusters[i]->active_gen != x->clusters[i]->compiled_gen;
        warming_c += warming;
        if (x->clusters[i]->compiled != NULL) /* Envoy's per-cluster warming_state */
            lg_stats_gauge_set(lg_cluster_config_stats(x->clusters[i]->compiled), LG_CLUSTER_STAT_warming_state, warming);
    }
    for (size_t i = 0; i != x->n_listeners; ++i) {
        warming_l += x->listeners[i]->compiled != NULL && x->listeners[i]->active != x->listeners[i]->compiled;
        active_l += x->listeners[i]->active != NULL;
    }
    lg_stats_gauge_set(lg_stats_cluster_manager, LG_CLUSTER_MANAGER_STAT_warming_clusters, warming_c);
    lg_stats_gauge_set(lg_stats_cluster_manager, LG_CLUSTER_MANAGER_STAT_active_clusters, x->published->n_clusters);
    lg_stats_gauge_set(lg_stats_listener_manager, LG_LISTENER_MANAGER_STAT_total_listeners_warming, warming_l);
    lg_stats_gauge_set(lg_stats_listener_manager, LG_LISTENER_MANAGER_STAT_total_listeners_active, active_l);
}

static void publish(lg_xds_t *x)
{
    for (size_t attempt = 0; attempt <= x->n_listeners; ++attempt) {
        lg_snapshot_t *s = build_snapshot(x);
        size_t failed;
        lg_error_t err = {{0}};
        if (lg_server_publish(s, &failed, &err) == 0) {
            lg_snapshot_unref(x->published);
            x->published = s;
            for (size_t i = 0; i != x->n_listeners; ++i) {
                replace_listener(&x->listeners[i]->published, x->listeners[i]->active);
                replace_res(&x->listeners[i]->published_res, x->listeners[i]->active_res);
            }
            return;
        }
        unbind_listener(x, s->listeners[failed], err.msg);
        lg_snapshot_unref(s);
    }
}

void lg__xds_refresh(lg_xds_t *x)
{
    update_deps(x);
    warm_clusters(x);
    warm_listeners(x);
    compact(x);
    if (x->dirty) {
        x->dirty = 0;
        publish(x);
    }
    update_gauges(x);
}
