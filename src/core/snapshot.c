/*
 * Config snapshots: compiled from a Bootstrap and from xDS, shared by every
 * worker, freed when the last holder lets go.
 */
#include "legate/cluster.h"
#include "legate/listener.h"
#include "legate/pbjson.h"
#include "legate/route.h"
#include "legate/server.h"
#include "legate/stats.h"
#include "legate/tls.h"
#include "legate/xds.h"

/* The newer snapshots whose route tables streams on connections of one
 * snapshot use, on one worker (see lg_snapshot_route_table). */
struct st_lg_snapshot_pins_t {
    lg_snapshot_t **items;
    size_t n, cap;
    int busy;
};

/* Snapshots with pins on this worker thread. */
static __thread struct {
    lg_snapshot_t **items;
    size_t n, cap;
} pinned_here;

lg_snapshot_t *lg_snapshot_new(size_t listeners, size_t clusters, size_t routes)
{
    lg_snapshot_t *s = lg_calloc(1, sizeof(*s));
    s->refcnt = 1;
    s->listeners = lg_calloc(listeners + 1, sizeof(*s->listeners));
    s->listener_socks = lg_calloc(listeners + 1, sizeof(*s->listener_socks));
    s->clusters = lg_calloc(clusters + 1, sizeof(*s->clusters));
    s->routes = lg_calloc(routes + 1, sizeof(*s->routes));
    s->worker_uses = lg_calloc(lg_stats_nworkers + 1, sizeof(size_t));
    s->pins = lg_calloc(lg_stats_nworkers + 1, sizeof(*s->pins));
    s->last_updated_wall_us = lg_wall_us();
    return s;
}

static int route_cmp(const void *a, const void *b)
{
    return strcmp(lg_route_table_name(*(lg_route_table_t *const *)a), lg_route_table_name(*(lg_route_table_t *const *)b));
}

void lg_snapshot_seal(lg_snapshot_t *s)
{
    qsort(s->routes, s->n_routes, sizeof(*s->routes), route_cmp);
}

lg_snapshot_t *lg_snapshot_ref(lg_snapshot_t *s)
{
    __atomic_add_fetch(&s->refcnt, 1, __ATOMIC_RELAXED);
    return s;
}

void lg_snapshot_unref(lg_snapshot_t *s)
{
    if (s == NULL || __atomic_sub_fetch(&s->refcnt, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    for (size_t i = 0; i != s->n_listeners; ++i) {
        lg_listener_config_release(s->listeners[i]);
        if (s->listener_socks[i] != NULL)
            lg_listener_socks_release(s->listener_socks[i]);
    }
    for (size_t i = 0; i != s->n_clusters; ++i)
        lg_cluster_config_release(s->clusters[i]);
    for (size_t i = 0; i != s->n_routes; ++i)
        lg_route_table_release(s->routes[i]);
    for (size_t i = 0; i != lg_stats_nworkers + 1; ++i)
        free(s->pins[i].items);
    lg_xds_dump_release(s->xds);
    free(s->listeners);
    free(s->listener_socks);
    free(s->clusters);
    free(s->routes);
    free(s->worker_uses);
    free(s->pins);
    free(s);
}

void lg_snapshot_hold(lg_worker_t *w, lg_snapshot_t *s)
{
    if (s->worker_uses[w->index]++ == 0)
        lg_snapshot_ref(s);
}

static void unpin(lg_worker_t *w, lg_snapshot_t *s)
{
    lg_snapshot_pins_t *p = s->pins + w->index;
    if (p->n == 0)
        return;
    lg_snapshot_t **items = p->items;
    size_t n = p->n;
    *p = (lg_snapshot_pins_t){NULL};
    for (size_t i = 0; i != pinned_here.n; ++i)
        if (pinned_here.items[i] == s) {
            pinned_here.items[i] = pinned_here.items[--pinned_here.n];
            break;
        }
    for (size_t i = 0; i != n; ++i)
        lg_snapshot_release(w, items[i]);
    free(items);
}

void lg_snapshot_release(lg_worker_t *w, lg_snapshot_t *s)
{
    if (--s->worker_uses[w->index] != 0)
        return;
    unpin(w, s);
    lg_snapshot_unref(s);
}

static void pin(lg_worker_t *w, lg_snapshot_t *s, lg_snapshot_t *newer)
{
    lg_snapshot_pins_t *p = s->pins + w->index;
    if (p->n != 0 && p->items[p->n - 1] == newer)
        return;
    if (p->n == p->cap) {
        p->cap = p->cap ? p->cap * 2 : 4;
        p->items = lg_realloc(p->items, p->cap * sizeof(*p->items));
    }
    p->items[p->n++] = newer;
    lg_snapshot_hold(w, newer);
    if (p->n == 1) {
        if (pinned_here.n == pinned_here.cap) {
            pinned_here.cap = pinned_here.cap ? pinned_here.cap * 2 : 8;
            pinned_here.items = lg_realloc(pinned_here.items, pinned_here.cap * sizeof(*pinned_here.items));
        }
        pinned_here.items[pinned_here.n++] = s;
    }
}

void lg_snapshot_mark_busy(lg_worker_t *w, lg_snapshot_t *s)
{
    s->pins[w->index].busy = 1;
}

void lg_snapshot_sweep_pins(lg_worker_t *w)
{
    for (size_t i = 0; i < pinned_here.n;) {
        lg_snapshot_t *s = pinned_here.items[i];
        if (s->pins[w->index].busy) {
            s->pins[w->index].busy = 0;
            ++i;
        } else {
            unpin(w, s); /* removes s from pinned_here */
        }
    }
    if (pinned_here.n == 0 && pinned_here.items != NULL) {
        free(pinned_here.items);
        pinned_here.items = NULL;
        pinned_here.cap = 0;
    }
}

lg_route_table_t *lg_snapshot_find_routes(const lg_snapshot_t *s, const char *name)
{
    size_t lo = 0, hi = s->n_routes;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(name, lg_route_table_name(s->routes[mid]));
        if (c == 0)
            return s->routes[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

const lg_route_table_t *lg_snapshot_route_table(lg_snapshot_t *s, const lg_hcm_config_t *hcm)
{
    if (hcm->rds_route_config_name == NULL)
        return hcm->route_table;
    lg_worker_t *w = lg_current_worker;
    if (w != NULL && w->snapshot != s) {
        lg_route_table_t *t = lg_snapshot_find_routes(w->snapshot, hcm->rds_route_config_name);
        if (t != NULL) {
            pin(w, s, w->snapshot);
            return t;
        }
    }
    return lg_snapshot_find_routes(s, hcm->rds_route_config_name);
}

/* ---- static resources ---- */

static int cluster_exists(void *ctx, const char *name)
{
    lg_snapshot_t *s = ctx;
    for (size_t i = 0; i != s->n_clusters; ++i)
        if (strcmp((s->clusters[i])->name, name) == 0)
            return 1;
    return 0;
}

static int compile_clusters(lg_snapshot_t *s, const Envoy__Config__Bootstrap__V3__Bootstrap__StaticResources *sr, lg_error_t *err)
{
    for (size_t i = 0; i != sr->n_clusters; ++i) {
        lg_cluster_config_t *c = lg_cluster_config_compile(sr->clusters[i], err);
        if (c == NULL)
            return lg_error_prefix(err, "static_resources.clusters[%zu]", i);
        for (size_t j = 0; j != s->n_clusters; ++j)
            if (strcmp((s->clusters[j])->name, (c)->name) == 0) {
                lg_error(err, "static_resources.clusters[%zu]: cluster manager: duplicate cluster '%s' found", i, (c)->name);
                lg_cluster_config_release(c);
                return -1;
            }
        s->clusters[s->n_clusters++] = c;
    }
    return 0;
}

static int compile_listeners(lg_snapshot_t *s, const Envoy__Config__Bootstrap__V3__Bootstrap__StaticResources *sr, int flags,
                             lg_error_t *err)
{
    lg_hcm_compile_ctx_t ctx = {cluster_exists, s, flags};
    for (size_t i = 0; i != sr->n_listeners; ++i) {
        lg_listener_config_t *l = lg_listener_config_compile(sr->listeners[i], &ctx, err);
        if (l == NULL)
            return lg_error_prefix(err, "static_resources.listeners[%zu]", i);
        for (size_t j = 0; j != s->n_listeners; ++j) {
            const char *why =
                strcmp(s->listeners[j]->name, l->name) == 0 ? "a listener with the same name"
                : (s->listeners[j]->addrlen == l->addrlen && memcmp(&s->listeners[j]->addr, &l->addr, l->addrlen) == 0)
                    ? "a listener with the same address"
                    : NULL;
            if (why != NULL) {
                lg_error(err, "static_resources.listeners[%zu]: error adding listener '%s': %s already exists ('%s')", i,
                         l->address_str, why, s->listeners[j]->name);
                lg_listener_config_release(l);
                return -1;
            }
        }
        s->listeners[s->n_listeners++] = l;
    }
    return 0;
}

lg_snapshot_t *lg_snapshot_compile_bootstrap(ProtobufCMessage *msg, const lg_options_t *o, lg_error_t *err)
{
    Envoy__Config__Bootstrap__V3__Bootstrap *b = (Envoy__Config__Bootstrap__V3__Bootstrap *)msg;
    const Envoy__Config__Bootstrap__V3__Bootstrap__StaticResources *sr = b->static_resources;
    lg_snapshot_t *s = lg_snapshot_new(sr != NULL ? sr->n_listeners : 0, sr != NULL ? sr->n_clusters : 0, 0);
    int flags = o->allow_unknown_static_fields ? LG_PBJSON_ALLOW_UNKNOWN_FIELDS : 0;
    if (sr != NULL) {
        /* before clusters and listeners: their TLS contexts refer to secrets by name */
        if (lg_tls_secrets_install(sr->secrets, sr->n_secrets, err) != 0) {
            lg_error_prefix(err, "static_resources");
            goto fail;
        }
        if (compile_clusters(s, sr, err) != 0 || compile_listeners(s, sr, flags, err) != 0)
            goto fail;
    }
    s->bootstrap = msg;
    return s;
fail:
    lg_snapshot_unref(s);
    return NULL;
}
