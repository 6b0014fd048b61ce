/*
 * The per-worker view of the clusters: a name table over lg_worker_cluster_t
 * objects, each with its hosts, load balancer state and per-host connection
 * pools, built lazily on first use. Everything here runs on the owning
 * worker's thread, except the breaker counts, which are shared atomics.
 */
#include "legate/http.h"
#include "legate/tls.h"
#include "upstream.h"

/* A slot of a view's table: an lg_worker_cluster_t *, or, with the low bit
 * set, the lg_cluster_config_t * (one reference) of a cluster this worker has
 * not looked up yet: lg_worker_clusters_find() creates its lg_worker_cluster_t
 * then, so a worker pays for the clusters it routes to, not for every
 * cluster of the config (10,000 clusters, 2 workers: 1.9 MB less). */
typedef uintptr_t slot_t;
#define SLOT_LAZY ((uintptr_t)1)

struct st_lg_worker_clusters_t {
    lg_worker_t *worker;
    slot_t *table; /* open addressing by name, `mask + 1` slots */
    size_t mask;
};

static int slot_is_lazy(slot_t s)
{
    return (s & SLOT_LAZY) != 0;
}

static lg_cluster_config_t *slot_config(slot_t s)
{
    return slot_is_lazy(s) ? (lg_cluster_config_t *)(s & ~SLOT_LAZY) : ((lg_worker_cluster_t *)s)->config;
}

static uint64_t name_hash(const char *s, size_t len)
{
    return lg_fnv1a(LG_FNV1A_INIT, s, len);
}

/* ---- lg_worker_cluster_t ---- */

/* Takes over the caller's reference to cfg. */
static lg_worker_cluster_t *worker_cluster_new(lg_worker_t *w, lg_cluster_config_t *cfg)
{
    lg_worker_cluster_t *c = lg_calloc(1, sizeof(*c));
    c->refcnt = 1;
    c->view_refs = 1;
    c->config = cfg;
    c->worker = w;
    c->rng = name_hash(cfg->name, strlen(cfg->name)) ^ (w->index + 1) * 0x9E3779B97F4A7C15ull;
    if (c->rng == 0)
        c->rng = 1;
    return c;
}

/* Calls fn on every pool of c's hosts (fn may free the pool). */
static void for_each_pool(lg_worker_cluster_t *c, void (*fn)(lg_conn_pool_t *))
{
    for (size_t i = 0; c->hosts != NULL && i != c->config->n_hosts; ++i) {
        lg_host_t *h = c->hosts + i;
        for (size_t j = 0; j != 2; ++j)
            if (h->pools[j] != NULL)
                fn(h->pools[j]);
        for (lg_conn_pool_t *p = h->named_pools, *next; p != NULL; p = next) {
            next = lg__conn_pool_next_named(p);
            fn(p);
        }
    }
}

static void worker_cluster_free(lg_worker_cluster_t *c)
{
    for_each_pool(c, lg__conn_pool_free);
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
    for_each_pool(c, lg__conn_pool_drain);
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

static void ensure_hosts(lg_worker_cluster_t *c);

/* ---- carrying pools over a cluster update ---- */

static int same_str(const char *a, const char *b)
{
    return a == b || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

/* Whether connections made under `a` can serve `b`, the next version of the
 * same cluster: what a connection is (protocol, codec settings, TLS, the
 * auto_sni keying) and where it counts (the stats block) must not change;
 * timeouts, the load balancer, breaker thresholds and hosts may. */
static int pools_compatible(const lg_cluster_config_t *a, const lg_cluster_config_t *b)
{
    if (lg_cluster_config_stats(a) != lg_cluster_config_stats(b) || a->protocol != b->protocol || a->auto_sni != b->auto_sni ||
        a->auto_san_validation != b->auto_san_validation || !same_str(a->override_auto_sni_header, b->override_auto_sni_header))
        return 0;
    if ((a->h2 == NULL) != (b->h2 == NULL) || (a->h2 != NULL && memcmp(a->h2, b->h2, sizeof(*a->h2)) != 0))
        return 0;
    if (memcmp(&a->h1_limits, &b->h1_limits, sizeof(a->h1_limits)) != 0 || a->buffer_limit != b->buffer_limit)
        return 0;
    if ((a->tls == NULL) != (b->tls == NULL))
        return 0;
    return a->tls == NULL || lg_tls_context_same(a->tls, b->tls);
}

/* Positions of cfg's hosts by address: open addressing, `mask + 1` slots of
 * index + 1 (0 = empty). The first of duplicate addresses wins. */
typedef struct st_host_index_t {
    uint32_t *slots;
    size_t mask;
} host_index_t;

static uint32_t *host_index_slot(const host_index_t *x, const lg_cluster_config_t *cfg, const char *address)
{
    for (size_t i = name_hash(address, strlen(address)) & x->mask;; i = (i + 1) & x->mask)
        if (x->slots[i] == 0 || strcmp(cfg->hosts[x->slots[i] - 1]->address, address) == 0)
            return x->slots + i;
}

static void host_index_init(host_index_t *x, const lg_cluster_config_t *cfg)
{
    size_t cap = 8;
    while (cap < cfg->n_hosts * 2)
        cap *= 2;
    x->slots = lg_calloc(cap, sizeof(x->slots[0]));
    x->mask = cap - 1;
    for (size_t i = 0; i != cfg->n_hosts; ++i) {
        uint32_t *slot = host_index_slot(x, cfg, cfg->hosts[i]->address);
        if (*slot == 0)
            *slot = (uint32_t)i + 1;
    }
}

/* Continues this worker's row of a host's counters (only this worker writes
 * it, so the copy is exact, unlike the control thread's copy made before the
 * worker switched). The gauges follow the connections: they carry over with
 * the pools, else they stay with the old host, where those connections end. */
static void continue_host_row(lg_worker_cluster_t *c, const lg_host_config_t *to, const lg_host_config_t *from, int pools_moved)
{
    size_t row = c->worker->index * LG_HOST_STAT__COUNT;
    const uint64_t *fs = lg_host_config_stats_peek(from);
    uint64_t *ts = (uint64_t *)lg_host_config_stats_peek(to);
    if (fs == NULL && ts == NULL)
        return; /* nothing counted on either side: all zero */
    if (ts == NULL)
        ts = lg_host_config_stats(to);
    for (size_t k = 0; k != LG_HOST_STAT__COUNT; ++k) {
        int gauge = k == LG_HOST_STAT_cx_active || k == LG_HOST_STAT_rq_active;
        uint64_t v = gauge && !pools_moved ? 0 : fs != NULL ? __atomic_load_n(&fs[row + k], __ATOMIC_RELAXED) : 0;
        __atomic_store_n(&ts[row + k], v, __ATOMIC_RELAXED);
    }
}

static void move_host_pools(lg_host_t *from, lg_host_t *to)
{
    for (size_t j = 0; j != 2; ++j) {
        if (from->pools[j] != NULL && to->pools[j] == NULL) {
            lg__conn_pool_move(from->pools[j], to);
            to->pools[j] = from->pools[j];
            from->pools[j] = NULL;
        }
    }
    if (from->named_pools != NULL && to->named_pools == NULL) {
        for (lg_conn_pool_t *p = from->named_pools; p != NULL; p = lg__conn_pool_next_named(p))
            lg__conn_pool_move(p, to);
        to->named_pools = from->named_pools;
        from->named_pools = NULL;
    }
}

/* c replaces prev (same name, another config): the pools of hosts that
 * remain move to c when the change does not affect them (Envoy keeps a
 * host's pools); what stays with prev drains when prev leaves its view. */
static void adopt_pools(lg_worker_cluster_t *c, lg_worker_cluster_t *prev)
{
    const lg_cluster_config_t *cfg = c->config, *old = prev->config;
    if (cfg->n_hosts == 0 || old->n_hosts == 0)
        return;
    int compatible = prev->hosts != NULL && pools_compatible(old, cfg);
    host_index_t index;
    host_index_init(&index, cfg);
    for (size_t j = 0; j != old->n_hosts; ++j) {
        uint32_t i = *host_index_slot(&index, cfg, old->hosts[j]->address);
        if (i-- == 0 || cfg->hosts[i] == old->hosts[j])
            continue;
        lg_host_t *from = compatible ? prev->hosts + j : NULL;
        int moved = from != NULL && (from->pools[0] != NULL || from->pools[1] != NULL || from->named_pools != NULL);
        if (moved) {
            ensure_hosts(c);
            move_host_pools(from, c->hosts + i);
        }
        continue_host_row(c, cfg->hosts[i], old->hosts[j], moved);
    }
    free(index.slots);
}

/* ---- views ---- */

static slot_t *table_slot(const lg_worker_clusters_t *v, const char *name, size_t len)
{
    size_t i = name_hash(name, len) & v->mask;
    for (;; i = (i + 1) & v->mask) {
        slot_t *slot = v->table + i;
        if (*slot == 0)
            return slot;
        const char *n = slot_config(*slot)->name;
        if (strncmp(n, name, len) == 0 && n[len] == '\0')
            return slot;
    }
}

static void slot_release(slot_t s)
{
    if (slot_is_lazy(s))
        lg_cluster_config_release(slot_config(s));
    else
        worker_cluster_release_view((lg_worker_cluster_t *)s);
}

/* What the new view holds for cfg, given the previous view's slot of its name
 * (0: none). A cluster this worker used carries over (same config) or is
 * created now to take over its pools (new config); any other stays lazy. */
static slot_t carry_over(lg_worker_t *w, lg_cluster_config_t *cfg, slot_t prev_slot)
{
    if (prev_slot == 0 || slot_is_lazy(prev_slot))
        return (slot_t)lg_cluster_config_addref(cfg) | SLOT_LAZY;
    lg_worker_cluster_t *prev = (lg_worker_cluster_t *)prev_slot;
    if (prev->config == cfg) {
        ++prev->refcnt;
        ++prev->view_refs;
        return (slot_t)prev;
    }
    lg_worker_cluster_t *c = worker_cluster_new(w, lg_cluster_config_addref(cfg));
    adopt_pools(c, prev);
    return (slot_t)c;
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
    for (size_t i = 0; i != n; ++i) {
        const char *name = cfgs[i]->name;
        size_t len = strlen(name);
        slot_t *slot = table_slot(v, name, len);
        if (*slot != 0) /* duplicate name: the caller broke the contract; keep the first */
            continue;
        *slot = carry_over(w, cfgs[i], previous != NULL ? *table_slot(previous, name, len) : 0);
    }
    return v;
}

lg_worker_clusters_t *lg_worker_clusters_prepare(lg_cluster_config_t **cfgs, size_t n)
{
    return lg_worker_clusters_new(NULL, cfgs, n, NULL); /* without a previous view, no slot needs the worker */
}

void lg_worker_clusters_adopt(lg_worker_t *w, lg_worker_clusters_t *v, lg_worker_clusters_t *previous)
{
    v->worker = w;
    for (size_t i = 0; previous != NULL && i <= previous->mask; ++i) {
        slot_t s = previous->table[i];
        if (s == 0 || slot_is_lazy(s))
            continue;
        lg_worker_cluster_t *c = (lg_worker_cluster_t *)s;
        slot_t *slot = table_slot(v, c->config->name, strlen(c->config->name));
        if (*slot != 0) {
            lg_cluster_config_t *cfg = slot_config(*slot);
            *slot = carry_over(w, cfg, s);
            lg_cluster_config_release(cfg); /* the lazy slot's reference: carry_over holds its own */
        }
        previous->table[i] = (slot_t)lg_cluster_config_addref(c->config) | SLOT_LAZY;
        worker_cluster_release_view(c);
    }
}

void lg_worker_clusters_free(lg_worker_clusters_t *v)
{
    if (v == NULL)
        return;
    for (size_t i = 0; i <= v->mask; ++i)
        if (v->table[i] != 0)
            slot_release(v->table[i]);
    free(v->table);
    free(v);
}

/* Creates a cluster's lg_worker_cluster_t on its first lookup: the view is
 * the worker's own, so the lookup may fill it in although it takes it const. */
lg_worker_cluster_t *lg_worker_clusters_find(const lg_worker_clusters_t *v, const char *name, size_t len)
{
    slot_t *slot = table_slot(v, name, len);
    if (slot_is_lazy(*slot))
        *slot = (slot_t)worker_cluster_new(v->worker, slot_config(*slot)); /* the view's reference moves to it */
    return (lg_worker_cluster_t *)*slot;
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

/* A host name without its port; an IPv6 literal without its brackets
 * ("[::1]:80" -> "::1"). */
static h2o_iovec_t strip_port(h2o_iovec_t v)
{
    if (v.len > 1 && v.base[0] == '[') {
        const char *end = memchr(v.base, ']', v.len);
        return end != NULL ? h2o_iovec_init(v.base + 1, end - v.base - 1) : h2o_iovec_init(NULL, 0);
    }
    const char *colon = memchr(v.base, ':', v.len);
    if (colon != NULL && memchr(colon + 1, ':', v.len - (colon + 1 - v.base)) == NULL)
        v.len = colon - v.base; /* one colon: host:port; more: an IPv6 literal */
    return v;
}

/* Envoy's auto_sni / auto_san_validation name of a request: the
 * override_auto_sni_header's value when present and not empty, else the
 * :authority, without the port. Empty when the cluster uses none. */
static h2o_iovec_t request_tls_name(const lg_cluster_config_t *cfg, const lg_lb_context_t *ctx)
{
    if (cfg->tls == NULL || !(cfg->auto_sni || cfg->auto_san_validation) || ctx == NULL || ctx->request == NULL)
        return h2o_iovec_init(NULL, 0);
    h2o_iovec_t v = ctx->request->authority;
    if (cfg->override_auto_sni_header != NULL) {
        h2o_iovec_t o =
            lg_headers_get(&ctx->request->headers, cfg->override_auto_sni_header, strlen(cfg->override_auto_sni_header));
        if (o.len != 0)
            v = o;
    }
    if (v.base == NULL)
        return h2o_iovec_init(NULL, 0);
    v = strip_port(v);
    return v.len <= 255 ? v : h2o_iovec_init(NULL, 0); /* longer is no DNS name (SNI allows 255) */
}

/* A pool of a cluster that left every view (a retry of a stream that began
 * on it) drains from the start: its connections close once idle. */
static lg_conn_pool_t *pool_new(lg_worker_cluster_t *c, lg_host_t *h, int version, h2o_iovec_t name)
{
    lg_conn_pool_t *pool = lg__conn_pool_new(h, version, name.base, name.len);
    if (c->view_refs == 0)
        lg__conn_pool_drain(pool);
    return pool;
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
    int version = h2 ? LG_HTTP_2 : LG_HTTP_11;
    h2o_iovec_t name = request_tls_name(c->config, ctx);
    if (name.len != 0) {
        lg_conn_pool_t *pool = lg__conn_pool_find_named(h, version, name.base, name.len);
        if (pool == NULL)
            pool = pool_new(c, h, version, name);
        return lg__conn_pool_request(pool, cbs, data);
    }
    if (h->pools[h2] == NULL)
        h->pools[h2] = pool_new(c, h, version, h2o_iovec_init(NULL, 0));
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

void lg_cluster_record_response(lg_worker_cluster_t *c, lg_host_t *host, int status, int code_stats)
{
    if (code_stats)
        lg_stats_block_code(lg__cluster_stats(c), c->worker->index, (unsigned)status);
    lg__cluster_inc(c, LG_CLUSTER_STAT_upstream_rq_completed);
    if (host != NULL)
        lg__host_inc(host, status >= 500 ? LG_HOST_STAT_rq_error : LG_HOST_STAT_rq_success);
}

void lg_cluster_record_time(lg_worker_cluster_t *c, uint64_t ms)
{
    lg_stats_histogram_record(lg__cluster_stats(c), c->worker->index, LG_CLUSTER_STAT_upstream_rq_time, ms);
}

void lg_host_stat_inc(lg_host_t *h, size_t idx)
{
    lg__host_inc(h, idx);
}
