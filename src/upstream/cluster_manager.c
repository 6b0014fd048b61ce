/*
 * The per-worker view of the clusters: a name table over lg_worker_cluster_t
 * objects, each with its hosts, load balancer state and per-host connection
 * pools, built lazily on first use. Everything here runs on the owning
 * worker's thread, except the breaker counts, which are shared atomics.
 */
#include "upstream.h"

struct st_lg_worker_clusters_t {
    lg_worker_t *worker;
    lg_worker_cluster_t **table; /* open addressing by name, `mask + 1` slots */
    size_t mask;
    lg_worker_cluster_t **list; /* in config order */
    size_t n;
};

static uint64_t name_hash(const char *s, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i != len; ++i)
        h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull;
    return h;
}

/* ---- lg_worker_cluster_t ---- */

static lg_worker_cluster_t *worker_cluster_new(lg_worker_t *w, lg_cluster_config_t *cfg)
{
    lg_worker_cluster_t *c = lg_calloc(1, sizeof(*c));
    c->refcnt = 1;
    c->view_refs = 1;
    c->config = lg_cluster_config_addref(cfg);
    c->worker = w;
    c->rng = name_hash(cfg->name, strlen(cfg->name)) ^ (w->index + 1) * 0x9E3779B97F4A7C15ull;
    if (c->rng == 0)
        c->rng = 1;
    return c;
}

static void worker_cluster_free(lg_worker_cluster_t *c)
{
    for (size_t i = 0; c->hosts != NULL && i != c->config->n_hosts; ++i)
        for (size_t j = 0; j != 2; ++j)
            if (c->hosts[i].pools[j] != NULL)
                lg__conn_pool_free(c->hosts[i].pools[j]);
    if (c->lb_healthy != NULL)
        c->config->lb->destroy(c->lb_healthy);
    if (c->lb_all != NULL)
        c->config->lb->destroy(c->lb_all);
    free(c->healthy);
    free(c->all);
    free(c->hosts);
    lg_cluster_config_release(c->config);
    free(c);
}

void lg_worker_cluster_addref(lg_worker_cluster_t *c)
{
    ++c->refcnt;
}

void lg_worker_cluster_release(lg_worker_cluster_t *c)
{
    if (--c->refcnt == 0)
        worker_cluster_free(c);
}

static void worker_cluster_drain(lg_worker_cluster_t *c)
{
    lg_worker_cluster_addref(c);
    for (size_t i = 0; c->hosts != NULL && i != c->config->n_hosts; ++i)
        for (size_t j = 0; j != 2; ++j)
            if (c->hosts[i].pools[j] != NULL)
                lg__conn_pool_drain(c->hosts[i].pools[j]);
    lg_worker_cluster_release(c);
}

static void worker_cluster_release_view(lg_worker_cluster_t *c)
{
    if (--c->view_refs == 0)
        worker_cluster_drain(c);
    lg_worker_cluster_release(c);
}

const char *lg_worker_cluster_name(const lg_worker_cluster_t *c)
{
    return c->config->name;
}

const lg_cluster_config_t *lg_worker_cluster_config(const lg_worker_cluster_t *c)
{
    return c->config;
}

void lg_host_addref(lg_host_t *h)
{
    lg_worker_cluster_addref(h->cluster);
}

void lg_host_release(lg_host_t *h)
{
    lg_worker_cluster_release(h->cluster);
}

/* ---- views ---- */

static lg_worker_cluster_t **table_slot(const lg_worker_clusters_t *v, const char *name, size_t len)
{
    size_t i = name_hash(name, len) & v->mask;
    for (;; i = (i + 1) & v->mask) {
        lg_worker_cluster_t **slot = v->table + i;
        if (*slot == NULL)
            return slot;
        const char *n = (*slot)->config->name;
        if (strncmp(n, name, len) == 0 && n[len] == '\0')
            return slot;
    }
}

lg_worker_clusters_t *lg_worker_clusters_new(lg_worker_t *w, lg_cluster_config_t **cfgs, size_t n, lg_worker_clusters_t *previous)
{
    lg_worker_clusters_t *v = lg_calloc(1, sizeof(*v));
    v->worker = w;
    size_t cap = 8;
    while (cap < n * 2)
        cap *= 2;
    v->table = lg_calloc(cap, sizeof(v->table[0]));
    v->mask = cap - 1;
    v->list = lg_malloc((n != 0 ? n : 1) * sizeof(v->list[0]));
    for (size_t i = 0; i != n; ++i) {
        const char *name = cfgs[i]->name;
        lg_worker_cluster_t *prev = previous != NULL ? lg_worker_clusters_find(previous, name, strlen(name)) : NULL;
        lg_worker_cluster_t *c;
        if (prev != NULL && prev->config == cfgs[i]) {
            c = prev;
            ++c->refcnt;
            ++c->view_refs;
        } else {
            c = worker_cluster_new(w, cfgs[i]);
        }
        lg_worker_cluster_t **slot = table_slot(v, name, strlen(name));
        if (*slot != NULL) { /* duplicate name: the caller broke the contract; keep the first */
            worker_cluster_release_view(c);
            continue;
        }
        *slot = c;
        v->list[v->n++] = c;
    }
    return v;
}

void lg_worker_clusters_free(lg_worker_clusters_t *v)
{
    if (v == NULL)
        return;
    for (size_t i = 0; i != v->n; ++i)
        worker_cluster_release_view(v->list[i]);
    free(v->list);
    free(v->table);
    free(v);
}

lg_worker_cluster_t *lg_worker_clusters_find(const lg_worker_clusters_t *v, const char *name, size_t len)
{
    return *table_slot(v, name, len);
}

/* ---- hosts and load balancing ---- */

static void ensure_hosts(lg_worker_cluster_t *c)
{
    const lg_cluster_config_t *cfg = c->config;
    if (c->hosts != NULL || cfg->n_hosts == 0)
        return;
    c->hosts = lg_calloc(cfg->n_hosts, sizeof(c->hosts[0]));
    c->all = lg_malloc(cfg->n_hosts * sizeof(c->all[0]));
    c->healthy = lg_malloc(cfg->n_hosts * sizeof(c->healthy[0]));
    for (size_t i = 0; i != cfg->n_hosts; ++i) {
        lg_host_t *h = c->hosts + i;
        h->config = cfg->hosts[i];
        h->cluster = c;
        h->weight = cfg->hosts[i]->weight;
        c->all[i] = h;
        if (h->config->healthy)
            c->healthy[c->n_healthy++] = h;
    }
}

/* Envoy's panic rule for one priority: with the overprovisioning factor 1.4,
 * enough healthy hosts never panic; otherwise below the threshold does. */
static int in_panic(const lg_worker_cluster_t *c)
{
    size_t total = c->config->n_hosts;
    if (c->n_healthy == total)
        return 0;
    if (c->n_healthy * 140 >= total * 100)
        return 0;
    return c->n_healthy * 100 < total * (size_t)c->config->healthy_panic_threshold;
}

static lg_lb_t *lb_for(lg_worker_cluster_t *c, lg_lb_t **slot, lg_host_t **hosts, size_t n)
{
    if (*slot == NULL) {
        lg_lb_params_t params = {c->config->lb_choice_count, c->config->lb_active_request_bias, lg_lb_random_next(&c->rng)};
        *slot = c->config->lb->create(hosts, n, &params);
    }
    return *slot;
}

static int is_excluded(const lg_lb_context_t *ctx, const lg_host_t *h)
{
    for (size_t i = 0; ctx != NULL && i != ctx->n_excluded; ++i)
        if (ctx->excluded[i] == h || ctx->excluded[i]->config == h->config)
            return 1;
    return 0;
}

static lg_host_t *choose_host(lg_worker_cluster_t *c, const lg_lb_context_t *ctx)
{
    ensure_hosts(c);
    lg_lb_t *lb;
    if (in_panic(c)) {
        lg__cluster_inc(c, LG_CLUSTER_STAT_lb_healthy_panic);
        lb = lb_for(c, &c->lb_all, c->all, c->config->n_hosts);
    } else if (c->n_healthy != 0) {
        lb = lb_for(c, &c->lb_healthy, c->healthy, c->n_healthy);
    } else {
        return NULL;
    }
    uint32_t attempts = (ctx != NULL ? ctx->host_selection_retry_max_attempts : 0) + 1;
    lg_host_t *h = NULL;
    for (uint32_t i = 0; i != attempts; ++i)
        if (!is_excluded(ctx, h = c->config->lb->pick(lb)))
            break;
    return h;
}

lg_host_t *lg__cluster_choose_host(lg_worker_cluster_t *c, const lg_lb_context_t *ctx)
{
    return choose_host(c, ctx);
}

lg_pool_request_t *lg_cluster_request_stream(lg_worker_cluster_t *c, int downstream_version, const lg_lb_context_t *ctx,
                                             const lg_pool_cbs_t *cbs, void *data)
{
    lg_host_t *h = choose_host(c, ctx);
    if (h == NULL) {
        lg__cluster_inc(c, LG_CLUSTER_STAT_upstream_cx_none_healthy);
        cbs->on_failure(data, LG_POOL_NO_HEALTHY_HOST, NULL, "");
        return NULL;
    }
    int h2 = c->config->protocol == LG_UPSTREAM_HTTP2 ||
             (c->config->protocol == LG_UPSTREAM_USE_DOWNSTREAM && downstream_version >= LG_HTTP_2);
    if (h->pools[h2] == NULL)
        h->pools[h2] = lg__conn_pool_new(h, h2 ? LG_HTTP_2 : LG_HTTP_11);
    return lg__conn_pool_request(h->pools[h2], cbs, data);
}

/* ---- circuit breakers ---- */

static const size_t open_gauges[] = {
    LG_CLUSTER_STAT_circuit_breakers_default_cx_open, LG_CLUSTER_STAT_circuit_breakers_default_rq_pending_open,
    LG_CLUSTER_STAT_circuit_breakers_default_rq_open, LG_CLUSTER_STAT_circuit_breakers_default_rq_retry_open};

static uint64_t *res_count(lg_worker_cluster_t *c, int which)
{
    lg_cb_resources_t *r = &c->config->shared->resources;
    uint64_t *counts[] = {&r->connections, &r->pending_requests, &r->requests, &r->retries};
    return counts[which];
}

static uint64_t res_max(lg_worker_cluster_t *c, int which)
{
    const lg_cb_thresholds_t *t = &c->config->thresholds;
    uint32_t maxes[] = {t->max_connections, t->max_pending_requests, t->max_requests, t->max_retries};
    return maxes[which];
}

/* The open gauge goes up on each step onto the limit and down on each step
 * off it, so that its sum over the worker rows is 1 exactly while the count is
 * at or over the limit. */
void lg__cluster_res_force(lg_worker_cluster_t *c, int which)
{
    if (__atomic_add_fetch(res_count(c, which), 1, __ATOMIC_RELAXED) == res_max(c, which))
        lg__cluster_inc(c, open_gauges[which]);
}

int lg__cluster_res_try(lg_worker_cluster_t *c, int which)
{
    uint64_t n = __atomic_add_fetch(res_count(c, which), 1, __ATOMIC_RELAXED), max = res_max(c, which);
    if (n > max) {
        __atomic_sub_fetch(res_count(c, which), 1, __ATOMIC_RELAXED);
        return 0;
    }
    if (n == max)
        lg__cluster_inc(c, open_gauges[which]);
    return 1;
}

void lg__cluster_res_put(lg_worker_cluster_t *c, int which)
{
    if (__atomic_fetch_sub(res_count(c, which), 1, __ATOMIC_RELAXED) == res_max(c, which))
        lg__cluster_dec(c, open_gauges[which]);
}

int lg__cluster_res_available(lg_worker_cluster_t *c, int which)
{
    return __atomic_load_n(res_count(c, which), __ATOMIC_RELAXED) < res_max(c, which);
}

int lg_cluster_retry_begin(lg_worker_cluster_t *c)
{
    if (lg__cluster_res_try(c, LG__RES_RETRIES))
        return 1;
    lg__cluster_inc(c, LG_CLUSTER_STAT_upstream_rq_retry_overflow);
    return 0;
}

void lg_cluster_retry_end(lg_worker_cluster_t *c)
{
    lg__cluster_res_put(c, LG__RES_RETRIES);
}

/* ---- stats ---- */

void lg_cluster_stat_inc(lg_worker_cluster_t *c, size_t idx)
{
    lg__cluster_inc(c, idx);
}

void lg_cluster_record_response(lg_worker_cluster_t *c, lg_host_t *host, int status)
{
    lg_stats_block_code(lg__cluster_stats(c), c->worker->index, (unsigned)status);
    lg__cluster_inc(c, LG_CLUSTER_STAT_upstream_rq_completed);
    if (host != NULL)
        lg__host_inc(host, status >= 500 ? LG_HOST_STAT_rq_error : LG_HOST_STAT_rq_success);
}

void lg_host_stat_inc(lg_host_t *h, size_t idx)
{
    lg__host_inc(h, idx);
}
