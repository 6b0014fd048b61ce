/*
 * Config snapshots: compiled from a Bootstrap and from xDS, shared by every
 * worker, freed when the last holder lets go.
 */
#include "legate/cluster.h"
#include "legate/listener.h"
#include "legate/pbjson.h"
#include "legate/route.h"
#include "legate/runtime.h"
#include "legate/scoped_routes.h"
#include "legate/server.h"
#include "legate/stats.h"
#include "legate/tls.h"
#include "legate/xds.h"
#include "legate/xds_ecds.h"

/* A worker's part of a snapshot, on a cache line of its own (busy_conns changes
 * on every request, uses on every connection): its holds, how many of its
 * connections on the snapshot have streams, and the newer snapshots whose route
 * tables streams on connections of this one use (pins, see lg_snapshot_route_table). */
struct st_lg_snapshot_worker_t {
    size_t uses;
    size_t busy_conns;
    lg_snapshot_t **pins;
    size_t n_pins, pins_cap;
    char pad_[64 - sizeof(void *) - 4 * sizeof(size_t)];
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
    _Static_assert(sizeof(*s->per_worker) == 64, "a worker's part fills a cache line");
    s->per_worker = lg_aligned_zalloc(64, (lg_stats_nworkers + 1) * sizeof(*s->per_worker));
    s->last_updated_wall_us = lg_wall_us();
    return s;
}

static int route_cmp(const void *a, const void *b)
{
    return strcmp(lg_route_table_name(*(lg_route_table_t *const *)a), lg_route_table_name(*(lg_route_table_t *const *)b));
}

static int scopes_cmp(const void *a, const void *b)
{
    return strcmp((*(lg_snapshot_scopes_t *const *)a)->name, (*(lg_snapshot_scopes_t *const *)b)->name);
}

static int ecds_cmp(const void *a, const void *b)
{
    return strcmp((*(lg_ecds_filter_t *const *)a)->name, (*(lg_ecds_filter_t *const *)b)->name);
}

void lg_snapshot_seal(lg_snapshot_t *s)
{
    qsort(s->routes, s->n_routes, sizeof(*s->routes), route_cmp);
    if (s->n_ecds != 0)
        qsort(s->ecds, s->n_ecds, sizeof(*s->ecds), ecds_cmp);
    if (s->n_scopes != 0)
        qsort(s->scopes, s->n_scopes, sizeof(*s->scopes), scopes_cmp);
}

/* Binary search for `name` in items sorted by name_of(). */
static void *find_sorted(void *const *items, size_t n, const char *name, const char *(*name_of)(const void *))
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(name, name_of(items[mid]));
        if (c == 0)
            return items[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

static const char *ecds_name(const void *p)
{
    return ((const lg_ecds_filter_t *)p)->name;
}

static const char *routes_name(const void *p)
{
    return lg_route_table_name(p);
}

static const char *scopes_name(const void *p)
{
    return ((const lg_snapshot_scopes_t *)p)->name;
}

lg_ecds_filter_t *lg_snapshot_find_ecds(const lg_snapshot_t *s, const char *name)
{
    return find_sorted((void *const *)s->ecds, s->n_ecds, name, ecds_name);
}

lg_snapshot_t *lg_snapshot_ref(lg_snapshot_t *s)
{
    __atomic_add_fetch(&s->refcnt, 1, __ATOMIC_RELAXED);
    return s;
}

static lg_snapshot_t *dead; /* atomic: pushed by workers, taken by the control thread */

static void snapshot_free(lg_snapshot_t *s)
{
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
        free(s->per_worker[i].pins);
    lg_xds_dump_release(s->xds);
    lg_runtime_release(s->runtime);
    for (size_t i = 0; i != s->n_ecds; ++i)
        lg_ecds_filter_release(s->ecds[i]);
    free(s->ecds);
    for (size_t i = 0; i != s->n_scopes; ++i)
        lg_snapshot_scopes_release(s->scopes[i]);
    free(s->scopes);
    free(s->listeners);
    free(s->listener_socks);
    free(s->clusters);
    free(s->routes);
    free(s->per_worker);
    free(s);
}

void lg_snapshot_unref(lg_snapshot_t *s)
{
    if (s == NULL || __atomic_sub_fetch(&s->refcnt, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    if (lg_current_worker == NULL) {
        snapshot_free(s);
        return;
    }
    s->_dead_next = __atomic_load_n(&dead, __ATOMIC_RELAXED);
    while (!__atomic_compare_exchange_n(&dead, &s->_dead_next, s, 1, __ATOMIC_RELEASE, __ATOMIC_RELAXED))
        ;
}

void lg_snapshot_collect(void)
{
    lg_snapshot_t *s = __atomic_exchange_n(&dead, NULL, __ATOMIC_ACQUIRE);
    while (s != NULL) {
        lg_snapshot_t *next = s->_dead_next;
        snapshot_free(s);
        s = next;
    }
}

void lg_snapshot_hold(lg_worker_t *w, lg_snapshot_t *s)
{
    if (s->per_worker[w->index].uses++ == 0)
        lg_snapshot_ref(s);
}

size_t lg_snapshot_uses(const lg_snapshot_t *s, const lg_worker_t *w)
{
    return s->per_worker[w->index].uses;
}

static void unpin(lg_worker_t *w, lg_snapshot_t *s)
{
    lg_snapshot_worker_t *p = s->per_worker + w->index;
    if (p->n_pins == 0)
        return;
    lg_snapshot_t **items = p->pins;
    size_t n = p->n_pins;
    p->pins = NULL;
    p->n_pins = p->pins_cap = 0;
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
    if (--s->per_worker[w->index].uses != 0)
        return;
    unpin(w, s);
    lg_snapshot_unref(s);
}

static void pin(lg_worker_t *w, lg_snapshot_t *s, lg_snapshot_t *newer)
{
    lg_snapshot_worker_t *p = s->per_worker + w->index;
    if (p->n_pins != 0 && p->pins[p->n_pins - 1] == newer)
        return;
    if (p->n_pins == p->pins_cap) {
        p->pins_cap = p->pins_cap ? p->pins_cap * 2 : 4;
        p->pins = lg_realloc(p->pins, p->pins_cap * sizeof(*p->pins));
    }
    p->pins[p->n_pins++] = newer;
    lg_snapshot_hold(w, newer);
    if (p->n_pins == 1) {
        if (pinned_here.n == pinned_here.cap) {
            pinned_here.cap = pinned_here.cap ? pinned_here.cap * 2 : 8;
            pinned_here.items = lg_realloc(pinned_here.items, pinned_here.cap * sizeof(*pinned_here.items));
        }
        pinned_here.items[pinned_here.n++] = s;
    }
}

void lg_snapshot_conn_busy(lg_worker_t *w, lg_snapshot_t *s)
{
    ++s->per_worker[w->index].busy_conns;
}

void lg_snapshot_conn_idle(lg_worker_t *w, lg_snapshot_t *s)
{
    --s->per_worker[w->index].busy_conns;
}

void lg_snapshot_sweep_pins(lg_worker_t *w)
{
    for (size_t i = 0; i < pinned_here.n;) {
        lg_snapshot_t *s = pinned_here.items[i];
        if (s->per_worker[w->index].busy_conns != 0)
            ++i;
        else
            unpin(w, s); /* removes s from pinned_here */
    }
    if (pinned_here.n == 0 && pinned_here.items != NULL) {
        free(pinned_here.items);
        pinned_here.items = NULL;
        pinned_here.cap = 0;
    }
}

lg_route_table_t *lg_snapshot_find_routes(const lg_snapshot_t *s, const char *name)
{
    return find_sorted((void *const *)s->routes, s->n_routes, name, routes_name);
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

/* ---- scoped routes ---- */

lg_snapshot_scopes_t *lg_snapshot_scopes_new(const char *name, lg_scoped_routes_t *set)
{
    lg_snapshot_scopes_t *sc = lg_calloc(1, sizeof(*sc));
    sc->refcnt = 1;
    sc->name = lg_strdup(name);
    sc->set = set;
    return sc;
}

lg_snapshot_scopes_t *lg_snapshot_scopes_ref(lg_snapshot_scopes_t *sc)
{
    __atomic_add_fetch(&sc->refcnt, 1, __ATOMIC_RELAXED);
    return sc;
}

void lg_snapshot_scopes_release(lg_snapshot_scopes_t *sc)
{
    if (sc == NULL || __atomic_sub_fetch(&sc->refcnt, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    lg_scoped_routes_release(sc->set);
    free(sc->name);
    free(sc);
}

static const lg_snapshot_scopes_t *find_scopes(const lg_snapshot_t *s, const char *name)
{
    return find_sorted((void *const *)s->scopes, s->n_scopes, name, scopes_name);
}

/* SRDS: the scope set and the route table of the same snapshot. */
static const lg_route_table_t *scoped_table(const lg_snapshot_t *s, const lg_hcm_config_t *hcm, const lg_req_head_t *req,
                                            int *known)
{
    const lg_snapshot_scopes_t *sc = find_scopes(s, hcm->scoped_routes_name);
    *known = sc != NULL;
    const char *name = sc != NULL ? lg_scoped_routes_find(sc->set, req) : NULL;
    return name != NULL ? lg_snapshot_find_routes(s, name) : NULL;
}

const lg_route_table_t *lg_snapshot_route_table_for(lg_snapshot_t *s, const lg_hcm_config_t *hcm, const lg_req_head_t *req)
{
    if (hcm->scope_keys == NULL)
        return lg_snapshot_route_table(s, hcm);
    if (!hcm->scoped_rds)
        return hcm->scoped_inline != NULL ? lg_scoped_routes_find_table(hcm->scoped_inline, req) : NULL;
    lg_worker_t *w = lg_current_worker;
    int known;
    if (w != NULL && w->snapshot != s) {
        const lg_route_table_t *t = scoped_table(w->snapshot, hcm, req, &known);
        if (known) {
            if (t != NULL)
                pin(w, s, w->snapshot);
            return t;
        }
    }
    return scoped_table(s, hcm, req, &known);
}

/* ---- static resources ---- */

/* The static clusters by name: an open-addressing set over s->clusters, so that
 * 100,000 clusters compile without a quadratic duplicate check or lookup. */
typedef struct st_cluster_set_t {
    const lg_cluster_config_t **slots;
    size_t mask;
} cluster_set_t;

static uint32_t name_hash(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s != '\0'; ++s)
        h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

/* Returns the slot of `name`: the cluster of that name, or the empty slot for it. */
static const lg_cluster_config_t **cluster_set_slot(const cluster_set_t *set, const char *name)
{
    for (size_t i = name_hash(name) & set->mask;; i = (i + 1) & set->mask)
        if (set->slots[i] == NULL || strcmp(set->slots[i]->name, name) == 0)
            return set->slots + i;
}

static int cluster_exists(void *ctx, const char *name)
{
    return *cluster_set_slot(ctx, name) != NULL;
}

static int compile_clusters(lg_snapshot_t *s, const Envoy__Config__Bootstrap__V3__Bootstrap__StaticResources *sr,
                            cluster_set_t *set, lg_error_t *err)
{
    for (size_t i = 0; i != sr->n_clusters; ++i) {
        lg_cluster_config_t *c = lg_cluster_config_compile(sr->clusters[i], err);
        if (c == NULL)
            return lg_error_prefix(err, "static_resources.clusters[%zu]", i);
        const lg_cluster_config_t **slot = cluster_set_slot(set, c->name);
        if (*slot != NULL) {
            lg_error(err, "static_resources.clusters[%zu]: cluster manager: duplicate cluster '%s' found", i, c->name);
            lg_cluster_config_release(c);
            return -1;
        }
        *slot = c;
        s->clusters[s->n_clusters++] = c;
    }
    return 0;
}

static int compile_listeners(lg_snapshot_t *s, const Envoy__Config__Bootstrap__V3__Bootstrap__StaticResources *sr,
                             cluster_set_t *set, int flags, lg_error_t *err)
{
    lg_hcm_compile_ctx_t ctx = {cluster_exists, set, flags};
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
        size_t cap = 16;
        while (cap < sr->n_clusters * 2)
            cap *= 2;
        cluster_set_t set = {lg_calloc(cap, sizeof(*set.slots)), cap - 1};
        int ret = compile_clusters(s, sr, &set, err) != 0 || compile_listeners(s, sr, &set, flags, err) != 0 ? -1 : 0;
        free(set.slots);
        if (ret != 0)
            goto fail;
    }
    s->bootstrap = msg;
    s->runtime = lg_runtime_loader_snapshot();
    return s;
fail:
    lg_snapshot_unref(s);
    return NULL;
}
