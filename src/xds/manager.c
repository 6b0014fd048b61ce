/*
 * lg_xds_t: turns the config sources of the bootstrap (and those named by
 * resources: RDS of listeners, EDS of clusters) into transports and
 * subscriptions, runs Envoy's init sequence (clusters, then listeners), and
 * drives everything from the control thread's loop.
 */
#include <time.h>
#include "xds_internal.h"
#include "legate/dns.h"
#include "legate/pbjson.h"
#include "legate/protobuf.h"
#include "legate/runtime.h"

#define CONTROL_PLANE_STATS(X) \
    X(GAUGE, connected_state) X(TEXT_READOUT, identifier) X(GAUGE, pending_requests) X(COUNTER, rate_limit_enforced)
#define CONTROL_PLANE_ENUM(type, name) CONTROL_PLANE_##name,
enum { CONTROL_PLANE_STATS(CONTROL_PLANE_ENUM) CONTROL_PLANE__COUNT };
static const lg_stat_def_t control_plane_defs[] = {CONTROL_PLANE_STATS(LG_STAT_DEF)};

#define DEFAULT_INITIAL_FETCH_TIMEOUT_MS 15000

/* ---- transports and subscriptions ---- */

static lg__xds_mux_t *find_mux(lg_xds_t *x, const char *key)
{
    for (size_t i = 0; i != x->n_muxes; ++i)
        if (strcmp(x->muxes[i]->key, key) == 0)
            return x->muxes[i];
    return NULL;
}

static void add_mux(lg_xds_t *x, lg__xds_mux_t *m, const char *key)
{
    m->key = lg_strdup(key);
    x->muxes = lg_realloc(x->muxes, (x->n_muxes + 1) * sizeof(*x->muxes));
    x->muxes[x->n_muxes++] = m;
}

static lg__xds_mux_t *file_mux(lg_xds_t *x, lg_xds_type_t type, const char *path, lg_error_t *err)
{
    if (path == NULL || path[0] == '\0') {
        lg_error(err, "path: must not be empty");
        return NULL;
    }
    char *key = lg_malloc(strlen(path) + 16);
    sprintf(key, "file:%d:%s", (int)type, path);
    lg__xds_mux_t *m = find_mux(x, key);
    if (m == NULL)
        add_mux(x, m = lg__xds_file_mux_new(x, path), key);
    free(key);
    return m;
}

static lg__xds_mux_t *api_mux(lg_xds_t *x, lg_xds_type_t type, const Envoy__Config__Core__V3__ApiConfigSource *api, lg_error_t *err)
{
    switch (api->api_type) {
    case ENVOY__CONFIG__CORE__V3__API_CONFIG_SOURCE__API_TYPE__GRPC:
    case ENVOY__CONFIG__CORE__V3__API_CONFIG_SOURCE__API_TYPE__DELTA_GRPC:
        break;
    case ENVOY__CONFIG__CORE__V3__API_CONFIG_SOURCE__API_TYPE__REST:
        lg_error(err, "api_config_source.api_type: REST is not supported (use GRPC or DELTA_GRPC)");
        return NULL;
    default:
        lg_error(err, "api_config_source.api_type: AGGREGATED_GRPC and AGGREGATED_DELTA_GRPC are only valid in ads_config");
        return NULL;
    }
    size_t len = protobuf_c_message_get_packed_size(&api->base);
    uint8_t *buf = lg_malloc(len + 1);
    protobuf_c_message_pack(&api->base, buf);
    char key[64];
    snprintf(key, sizeof(key), "grpc:%d:%016llx", (int)type, (unsigned long long)lg__xds_hash(buf, len));
    free(buf);
    lg__xds_mux_t *m = find_mux(x, key);
    if (m == NULL) {
        if ((m = lg__xds_grpc_mux_new(x, api, 0, err)) == NULL) {
            lg_error_prefix(err, "api_config_source");
            return NULL;
        }
        add_mux(x, m, key);
    }
    return m;
}

static lg__xds_mux_t *mux_for(lg_xds_t *x, lg_xds_type_t type, const Envoy__Config__Core__V3__ConfigSource *cs,
                              lg__xds_sub_t *parent, lg_error_t *err)
{
    switch (cs->config_source_specifier_case) {
    case ENVOY__CONFIG__CORE__V3__CONFIG_SOURCE__CONFIG_SOURCE_SPECIFIER_ADS:
        if (x->ads == NULL)
            lg_error(err, "ads: no ads_config in the bootstrap's dynamic_resources");
        return x->ads;
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    case ENVOY__CONFIG__CORE__V3__CONFIG_SOURCE__CONFIG_SOURCE_SPECIFIER_PATH:
        return file_mux(x, type, cs->path, err);
#pragma GCC diagnostic pop
    case ENVOY__CONFIG__CORE__V3__CONFIG_SOURCE__CONFIG_SOURCE_SPECIFIER_PATH_CONFIG_SOURCE:
        return file_mux(x, type, cs->path_config_source->path, err);
    case ENVOY__CONFIG__CORE__V3__CONFIG_SOURCE__CONFIG_SOURCE_SPECIFIER_API_CONFIG_SOURCE:
        return api_mux(x, type, cs->api_config_source, err);
    case ENVOY__CONFIG__CORE__V3__CONFIG_SOURCE__CONFIG_SOURCE_SPECIFIER_SELF:
        /* the transport that delivered the resource naming it; per-type streams and files carry one type */
        if (parent == NULL || parent->mux != x->ads) {
            lg_error(err, "self: only supported in resources delivered over ADS");
            return NULL;
        }
        return x->ads;
    default:
        lg_error(err, "config_source_specifier: one of path, path_config_source, api_config_source, ads or self is required");
        return NULL;
    }
}

static int starts_at_once(const lg__xds_sub_t *sub)
{
    return sub->type != LG_XDS_CDS && sub->type != LG_XDS_LDS;
}

lg__xds_sub_t *lg__xds_subscribe(lg_xds_t *x, lg_xds_type_t type, const Envoy__Config__Core__V3__ConfigSource *cs,
                                 lg__xds_sub_t *parent, lg_error_t *err)
{
    lg__xds_mux_t *m = mux_for(x, type, cs, parent, err);
    if (m == NULL)
        return NULL;
    if (m->subs[type] != NULL)
        return m->subs[type];
    lg__xds_sub_t *sub = lg_calloc(1, sizeof(*sub));
    sub->xds = x;
    sub->mux = m;
    sub->type = type;
    sub->wildcard = type == LG_XDS_CDS || type == LG_XDS_LDS || type == LG_XDS_SRDS;
    sub->init_timeout_ms =
        cs->initial_fetch_timeout != NULL ? lg_duration_ms(cs->initial_fetch_timeout, 0) : DEFAULT_INITIAL_FETCH_TIMEOUT_MS;
    sub->version_info = lg_strdup("");
    if (type == LG_XDS_CDS)
        sub->stats = lg_stats_block_new("cluster_manager.cds.", lg__xds_sub_stat_defs, LG__XDS_SUB__COUNT);
    else if (type == LG_XDS_LDS)
        sub->stats = lg_stats_block_new("listener_manager.lds.", lg__xds_sub_stat_defs, LG__XDS_SUB__COUNT);
    else if (type == LG_XDS_RTDS)
        sub->stats = lg_stats_block_new("runtime.", lg__xds_sub_stat_defs, LG__XDS_SUB__COUNT);
    m->subs[type] = sub;
    x->subs = lg_realloc(x->subs, (x->n_subs + 1) * sizeof(*x->subs));
    x->subs[x->n_subs++] = sub;
    /* RDS, EDS, SRDS... subscriptions made after the start begin at once (LDS and CDS follow the init phases) */
    if (starts_at_once(sub) && x->started) {
        sub->started = 1;
        sub->started_ms = lg_now_ms();
        sub->interest = sub->wildcard; /* SRDS: its wildcard request; named types ask once names are wanted */
    }
    return sub;
}

void lg__xds_interest(lg__xds_sub_t *sub)
{
    sub->interest = 1;
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

size_t lg__xds_sub_names(lg__xds_sub_t *sub, const char ***names)
{
    lg_xds_t *x = sub->xds;
    const lg_strmap_t *m = &x->deps[sub->type];
    size_t n = 0;
    *names = lg_malloc((m->n + 1) * sizeof(**names));
    for (size_t i = 0; m->slots != NULL && i <= m->mask; ++i) {
        const lg__xds_dep_t *d = m->slots[i];
        if (d != NULL && d->wanted && d->sub == sub)
            (*names)[n++] = d->name;
    }
    qsort(*names, n, sizeof(**names), name_cmp);
    return n;
}

static void start_sub(lg__xds_sub_t *sub)
{
    if (sub == NULL || sub->started)
        return;
    sub->started = 1;
    sub->started_ms = lg_now_ms();
    sub->interest = 1;
}

static void flush_interest(lg_xds_t *x)
{
    for (size_t i = 0; i != x->n_subs; ++i) {
        lg__xds_sub_t *sub = x->subs[i];
        if (sub->interest && sub->started) {
            sub->interest = 0;
            sub->mux->ops->interest(sub->mux, sub);
        }
    }
}

void lg__xds_set_connected(lg_xds_t *x, int up)
{
    lg_stats_gauge_set(x->control_plane, CONTROL_PLANE_connected_state, up ? 1 : 0);
}

void lg__xds_set_identifier(lg_xds_t *x, const char *id)
{
    lg_stats_text_set(x->control_plane, CONTROL_PLANE_identifier, id);
}

/* ---- init sequence ---- */

static void advance(lg_xds_t *x)
{
    /* Envoy starts CDS once the RTDS layers have their first version (or timed out) */
    if (x->phase == 0 && x->started && x->cds != NULL && !x->cds->started && lg__xds_runtime_ready(x))
        start_sub(x->cds);
    if (x->phase == 0 && (x->cds == NULL || x->cds->initialized) && lg__xds_warmed(x, LG_XDS_CDS)) {
        LG_INFO(upstream, "cm init: all clusters initialized");
        x->phase = 1;
        start_sub(x->lds);
    }
    if (x->phase == 1 && (x->lds == NULL || x->lds->initialized) && lg__xds_warmed(x, LG_XDS_LDS)) {
        LG_INFO(main, "all dependencies initialized. starting workers");
        x->phase = 2;
    }
}

void lg__xds_after_update(lg_xds_t *x)
{
    lg__xds_refresh(x);
    advance(x);
    flush_interest(x);
}

static int check_sub_timeouts(lg_xds_t *x, uint64_t now)
{
    int any = 0;
    for (size_t i = 0; i != x->n_subs; ++i) {
        lg__xds_sub_t *sub = x->subs[i];
        if (!sub->wildcard || !sub->started || sub->initialized || sub->init_timeout_ms == 0 ||
            now < sub->started_ms + sub->init_timeout_ms)
            continue;
        LG_WARN(config, "%s: initial fetch timed out", lg_xds_type_names[sub->type]);
        sub->initialized = 1;
        lg__xds_sub_count(sub, LG__XDS_SUB_init_fetch_timeout);
        any = 1;
    }
    return any;
}

/* The RTDS layers of the bootstrap's layered_runtime. */
static int subscribe_rtds(lg_xds_t *x, const Envoy__Config__Bootstrap__V3__LayeredRuntime *lr, lg_error_t *err)
{
    for (size_t i = 0; lr != NULL && i != lr->n_layers; ++i) {
        const Envoy__Config__Bootstrap__V3__RuntimeLayer *l = lr->layers[i];
        if (l->layer_specifier_case != ENVOY__CONFIG__BOOTSTRAP__V3__RUNTIME_LAYER__LAYER_SPECIFIER_RTDS_LAYER)
            continue;
        if (l->rtds_layer->rtds_config == NULL)
            return lg_error(err, "layered_runtime.layers[%zu].rtds_layer.rtds_config: value is required", i);
        lg__xds_sub_t *sub = lg__xds_subscribe(x, LG_XDS_RTDS, l->rtds_layer->rtds_config, NULL, err);
        if (sub == NULL)
            return lg_error_prefix(err, "layered_runtime.layers[%zu].rtds_layer.rtds_config", i);
        x->rtds = lg_realloc(x->rtds, (x->n_rtds + 1) * sizeof(*x->rtds));
        x->rtds[x->n_rtds++] = (lg__xds_rds_ref_t){lg_strdup(l->rtds_layer->name), sub, NULL};
    }
    return 0;
}

/* ---- public API ---- */

lg_xds_t *lg_xds_new(const Envoy__Config__Bootstrap__V3__Bootstrap *b, const lg_options_t *o, lg_snapshot_t *initial,
                     lg_error_t *err)
{
    lg_xds_t *x = lg_calloc(1, sizeof(*x));
    const Envoy__Config__Bootstrap__V3__Bootstrap__DynamicResources *dr = b->dynamic_resources;
    x->bootstrap = b;
    x->opts = o;
    x->control_plane = lg_stats_block_new("control_plane.", control_plane_defs, CONTROL_PLANE__COUNT);
    lg__xds_state_init(x, initial);
    lg__xds_ttl_init(x);
    if (dr != NULL && dr->ads_config != NULL) {
        if ((x->ads = lg__xds_grpc_mux_new(x, dr->ads_config, 1, err)) == NULL) {
            lg_error_prefix(err, "dynamic_resources.ads_config");
            goto fail;
        }
        add_mux(x, x->ads, "ads");
    }
    if (dr != NULL && dr->cds_config != NULL && (x->cds = lg__xds_subscribe(x, LG_XDS_CDS, dr->cds_config, NULL, err)) == NULL) {
        lg_error_prefix(err, "dynamic_resources.cds_config");
        goto fail;
    }
    if (dr != NULL && dr->lds_config != NULL && (x->lds = lg__xds_subscribe(x, LG_XDS_LDS, dr->lds_config, NULL, err)) == NULL) {
        lg_error_prefix(err, "dynamic_resources.lds_config");
        goto fail;
    }
    if (lg__xds_state_static_deps(x, err) != 0 || subscribe_rtds(x, b->layered_runtime, err) != 0)
        goto fail;
    return x;
fail:
    lg_xds_free(x);
    return NULL;
}

void lg_xds_start(lg_xds_t *x)
{
    for (size_t i = 0; i != x->n_subs; ++i)
        if (starts_at_once(x->subs[i]))
            start_sub(x->subs[i]);
    x->started = 1;
    lg__xds_after_update(x);
}

void lg_xds_poll(lg_xds_t *x, uint64_t max_wait_ms)
{
    if (max_wait_ms > 5 && lg_dns_busy())
        max_wait_ms = 5; /* DNS answers are read between waits */
    if (x->cq != NULL) {
        lg__xds_grpc_poll(x, max_wait_ms);
    } else {
        struct timespec ts = {(time_t)(max_wait_ms / 1000), (long)(max_wait_ms % 1000) * 1000000};
        nanosleep(&ts, NULL);
    }
    uint64_t now = lg_now_ms();
    for (size_t i = 0; i != x->n_muxes; ++i)
        x->muxes[i]->ops->tick(x->muxes[i], now);
    int a = check_sub_timeouts(x, now), b = lg__xds_check_timeouts(x, now), c = lg__xds_ttl_expire(x, now);
    if (lg_dns_tick(now))
        x->dirty = 1; /* resolved hosts changed: lg__xds_refresh applies them */
    /* /runtime_modify changed the admin layer (admin thread): a new snapshot carries it */
    if (lg_runtime_loader_generation() != x->runtime_gen)
        x->dirty = 1;
    if (a || b || c || x->dirty) {
        lg_preempt_tick_start();
        lg__xds_after_update(x);
    }
}

int lg_xds_initialized(const lg_xds_t *x)
{
    return x->phase == 2;
}

void lg_xds_free(lg_xds_t *x)
{
    if (x == NULL)
        return;
    lg__xds_grpc_shutdown(x);
    for (size_t i = 0; i != x->n_muxes; ++i) {
        free(x->muxes[i]->key);
        x->muxes[i]->ops->free(x->muxes[i]);
    }
    free(x->muxes);
    lg__xds_state_dispose(x);
    lg_dns_shutdown();
    lg__xds_ttl_dispose(x);
    lg__xds_refs_free(x->rtds, x->n_rtds);
    for (size_t i = 0; i != x->n_subs; ++i) {
        if (x->subs[i]->stats != NULL)
            lg_stats_block_release(x->subs[i]->stats);
        free(x->subs[i]->version_info);
        free(x->subs[i]);
    }
    free(x->subs);
    lg_stats_block_release(x->control_plane);
    free(x);
}
