/*
 * Compiles envoy.config.cluster.v3.Cluster into an immutable
 * lg_cluster_config_t. Runs on the control thread.
 */
#include <ctype.h>
#include <sys/un.h>
#include "legate/address.h"
#include "legate/cluster.h"
#include "legate/dns.h"
#include "legate/h1.h"
#include "legate/pbjson.h"
#include "legate/protobuf.h"
#include "legate/stats.h"
#include "legate/tls.h"
#include "envoy/config/core/v3/health_check.pb-c.h"

/* Deprecated Cluster fields (http2_protocol_options, max_requests_per_connection ...)
 * are still what many control planes send: Envoy honours them, so do we. */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

#define HTTP_PROTOCOL_OPTIONS_KEY "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
#define DEFAULT_IDLE_TIMEOUT_MS (3600 * 1000)

#define LG__DEF(type, name) {#name, LG_STAT_##type},
#define LG__DEF_N(type, name, str) {str, LG_STAT_##type},
static const lg_stat_def_t cluster_stat_defs[] = {LG_CLUSTER_STATS(LG__DEF, LG__DEF_N)};
#undef LG__DEF
#undef LG__DEF_N

static size_t stat_rows(void)
{
    return lg_stats_nworkers + 1;
}

/* ---- stats and shared state ---- */

/* The cluster's block: an EDS cluster's lists its subscription stats too (and keeps
 * listing them if a CDS update makes the cluster static: the block, hence its
 * counters, outlives a change of type, as Envoy's stats do). */
static lg_cluster_shared_t *shared_new(const char *stat_name, lg_cluster_discovery_t discovery)
{
    static const lg_stats_block_opts_t opts = {.code_prefix = "upstream_rq_",
                                               .classes_dynamic = 1,
                                               .each_code = 1,
                                               .control_from = LG_CLUSTER_STAT__CONTROL_FROM,
                                               .hidden_tail = LG_CLUSTER_EDS_STAT__COUNT};
    _Static_assert(LG_ARRAY_SIZE(cluster_stat_defs) == LG_CLUSTER_STAT__COUNT, "cluster stats");
    lg_cluster_shared_t *s = lg_calloc(1, sizeof(*s));
    s->_refcnt = 1;
    char *prefix = lg_malloc(strlen(stat_name) + sizeof("cluster.."));
    sprintf(prefix, "cluster.%s.", stat_name);
    s->stats = lg_stats_block_new_ex(prefix, cluster_stat_defs, LG_CLUSTER_STAT__COUNT, &opts);
    if (discovery == LG_CLUSTER_EDS)
        lg_stats_block_list_tail(s->stats);
    free(prefix);
    return s;
}

static lg_cluster_shared_t *shared_addref(lg_cluster_shared_t *s)
{
    __atomic_add_fetch(&s->_refcnt, 1, __ATOMIC_RELAXED);
    return s;
}

static void shared_release(lg_cluster_shared_t *s)
{
    if (__atomic_sub_fetch(&s->_refcnt, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    lg_stats_block_release(s->stats);
    free(s);
}

/* Prepends "prefix." to err, whose message starts with a field path. */
static int __attribute__((format(printf, 2, 3))) path_prefix(lg_error_t *err, const char *fmt, ...)
{
    char prefix[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);
    size_t plen = strlen(prefix), olen = strlen(err->msg);
    if (plen + 1 + olen >= sizeof(err->msg))
        olen = sizeof(err->msg) - plen - 2;
    memmove(err->msg + plen + 1, err->msg, olen);
    err->msg[plen + 1 + olen] = '\0';
    memcpy(err->msg, prefix, plen);
    err->msg[plen] = '.';
    return -1;
}

/* ---- hosts ---- */

static void host_free(lg_host_config_t *h)
{
    if (h == NULL)
        return;
    free(h->stats);
    free(h);
}

uint64_t *lg__host_config_stats_alloc(const lg_host_config_t *h)
{
    uint64_t *fresh = lg_calloc(stat_rows() * LG_HOST_STAT__COUNT, sizeof(uint64_t)), *expected = NULL;
    if (__atomic_compare_exchange_n(&((lg_host_config_t *)h)->stats, &expected, fresh, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        return fresh;
    free(fresh);
    return expected;
}

/* One allocation: the struct, the sockaddr, the printed address, the hostname (the
 * counters come with the first write). */
static lg_host_config_t *host_new(const struct sockaddr_storage *ss, socklen_t salen, const char *hostname)
{
    char addr[sizeof(struct sockaddr_un) + 16];
    size_t addrlen = lg_address_format((const struct sockaddr *)ss, salen, addr, sizeof(addr));
    size_t hlen = strlen(hostname);
    size_t sa_space = (salen + 7) & ~(size_t)7; /* sockaddr fields want their natural alignment */
    lg_host_config_t *h = lg_calloc(1, sizeof(*h) + sa_space + addrlen + 1 + hlen + 1);
    char *p = (char *)(h + 1);
    memcpy(p, ss, salen);
    h->sa = (const struct sockaddr *)p;
    h->salen = salen;
    p += sa_space;
    memcpy(p, addr, addrlen + 1);
    h->address = p;
    p += addrlen + 1;
    memcpy(p, hostname, hlen + 1);
    h->hostname = p;
    return h;
}

static int health_is_healthy(int status)
{
    switch (status) {
    case ENVOY__CONFIG__CORE__V3__HEALTH_STATUS__UNHEALTHY:
    case ENVOY__CONFIG__CORE__V3__HEALTH_STATUS__DRAINING:
    case ENVOY__CONFIG__CORE__V3__HEALTH_STATUS__TIMEOUT:
        return 0;
    default:
        return 1;
    }
}

static lg_host_config_t *compile_lb_endpoint(const Envoy__Config__Endpoint__V3__LbEndpoint *e, lg_error_t *err)
{
    if (e->host_identifier_case == ENVOY__CONFIG__ENDPOINT__V3__LB_ENDPOINT__HOST_IDENTIFIER_ENDPOINT_NAME) {
        lg_error(err, "endpoint_name: named endpoints are not supported");
        return NULL;
    }
    if (e->host_identifier_case != ENVOY__CONFIG__ENDPOINT__V3__LB_ENDPOINT__HOST_IDENTIFIER_ENDPOINT || e->endpoint == NULL) {
        lg_error(err, "endpoint: must be set");
        return NULL;
    }
    const Envoy__Config__Endpoint__V3__Endpoint *ep = e->endpoint;
    if (ep->n_additional_addresses != 0) {
        lg_error(err, "endpoint.additional_addresses: not supported");
        return NULL;
    }
    if (e->load_balancing_weight != NULL && e->load_balancing_weight->value == 0) {
        lg_error(err, "load_balancing_weight: value must be greater than or equal to 1");
        return NULL;
    }
    struct sockaddr_storage ss;
    socklen_t salen;
    if (ep->address == NULL) {
        lg_error(err, "endpoint.address: must be set");
        return NULL;
    }
    if (lg_address_from_proto(ep->address, &ss, &salen, err) != 0) {
        path_prefix(err, "endpoint.address");
        return NULL;
    }
    lg_host_config_t *h = host_new(&ss, salen, ep->hostname != NULL ? ep->hostname : "");
    h->weight = LG_WRAPPED(e->load_balancing_weight, 1);
    h->health_status = (uint8_t)e->health_status;
    h->healthy = (uint8_t)health_is_healthy(e->health_status);
    return h;
}

typedef H2O_VECTOR(lg_host_config_t *) host_vector_t;

static void host_vector_free(host_vector_t *v)
{
    for (size_t i = 0; i != v->size; ++i)
        host_free(v->entries[i]);
    free(v->entries);
}

static void host_vector_push(host_vector_t *v, lg_host_config_t *h)
{
    if (v->size == v->capacity) {
        v->capacity = v->capacity != 0 ? v->capacity * 2 : 4;
        v->entries = lg_realloc(v->entries, v->capacity * sizeof(v->entries[0]));
    }
    v->entries[v->size++] = h;
}

/* Hosts of a ClusterLoadAssignment. Errors are relative to it. */
static int compile_endpoints(const Envoy__Config__Endpoint__V3__ClusterLoadAssignment *cla, host_vector_t *out, lg_error_t *err)
{
    if (cla->n_named_endpoints != 0)
        return lg_error(err, "named_endpoints: not supported");
    for (size_t i = 0; i != cla->n_endpoints; ++i) {
        const Envoy__Config__Endpoint__V3__LocalityLbEndpoints *l = cla->endpoints[i];
        if (l->priority != 0)
            return lg_error(err, "endpoints[%zu].priority: only priority 0 is supported", i);
        if (l->lb_config_case == ENVOY__CONFIG__ENDPOINT__V3__LOCALITY_LB_ENDPOINTS__LB_CONFIG_LEDS_CLUSTER_LOCALITY_CONFIG)
            return lg_error(err, "endpoints[%zu].leds_cluster_locality_config: LEDS is not supported", i);
        for (size_t j = 0; j != l->n_lb_endpoints; ++j) {
            lg_host_config_t *h = compile_lb_endpoint(l->lb_endpoints[j], err);
            if (h == NULL)
                return path_prefix(err, "endpoints[%zu].lb_endpoints[%zu]", i, j);
            host_vector_push(out, h);
        }
    }
    if (cla->policy != NULL && cla->policy->n_drop_overloads != 0)
        return lg_error(err, "policy.drop_overloads: not supported");
    return 0;
}

static void set_hosts(lg_cluster_config_t *cfg, host_vector_t *v)
{
    cfg->hosts = v->entries;
    cfg->n_hosts = v->size;
    cfg->n_healthy = 0;
    for (size_t i = 0; i != v->size; ++i)
        cfg->n_healthy += v->entries[i]->healthy;
    *v = (host_vector_t){NULL};
}

/* Sets the membership gauges (control row) for a new host set. */
static void publish_membership(lg_cluster_config_t *cfg, int changed)
{
    lg_stats_block_t *b = cfg->shared->stats;
    uint64_t degraded = 0, max_weight = 0;
    for (size_t i = 0; i != cfg->n_hosts; ++i) {
        degraded += cfg->hosts[i]->health_status == ENVOY__CONFIG__CORE__V3__HEALTH_STATUS__DEGRADED;
        if (cfg->hosts[i]->weight > max_weight)
            max_weight = cfg->hosts[i]->weight;
    }
    lg_stats_gauge_set(b, LG_CLUSTER_STAT_membership_total, cfg->n_hosts);
    lg_stats_gauge_set(b, LG_CLUSTER_STAT_membership_healthy, cfg->n_healthy);
    lg_stats_gauge_set(b, LG_CLUSTER_STAT_membership_degraded, degraded);
    lg_stats_gauge_set(b, LG_CLUSTER_STAT_max_host_weight, max_weight);
    if (changed)
        lg_stats_control_add(b, LG_CLUSTER_STAT_membership_change, 1);
}

static int same_hosts(const lg_cluster_config_t *a, const lg_cluster_config_t *b)
{
    if (a->n_hosts != b->n_hosts)
        return 0;
    for (size_t i = 0; i != a->n_hosts; ++i)
        if (strcmp(a->hosts[i]->address, b->hosts[i]->address) != 0 || a->hosts[i]->weight != b->hosts[i]->weight ||
            a->hosts[i]->healthy != b->hosts[i]->healthy)
            return 0;
    return 1;
}

/* Carries per-host counters of hosts that keep their address. */
static void carry_host_stats(lg_cluster_config_t *cfg, const lg_cluster_config_t *prev)
{
    for (size_t i = 0; i != cfg->n_hosts; ++i) {
        lg_host_config_t *h = cfg->hosts[i];
        for (size_t j = 0; j != prev->n_hosts; ++j) {
            if (strcmp(prev->hosts[j]->address, h->address) == 0) {
                const uint64_t *from = lg_host_config_stats_peek(prev->hosts[j]);
                uint64_t *to = from != NULL ? lg_host_config_stats(h) : NULL;
                for (size_t k = 0; from != NULL && k != stat_rows() * LG_HOST_STAT__COUNT; ++k)
                    to[k] = __atomic_load_n(&from[k], __ATOMIC_RELAXED);
                break;
            }
        }
    }
}

/* ---- protocol options ---- */

static int compile_h2(lg_cluster_config_t *cfg, const Envoy__Config__Core__V3__Http2ProtocolOptions *o, const char *path,
                      lg_error_t *err)
{
    lg_h2_settings_t *s = cfg->h2 != NULL ? cfg->h2 : lg_calloc(1, sizeof(*s));
    cfg->h2 = s;
    s->max_concurrent_streams = 2147483647;
    s->initial_stream_window_size = 268435456;
    s->initial_connection_window_size = 268435456;
    s->max_headers_count = cfg->h1_limits.max_headers_count;
    s->max_header_list_bytes = cfg->h1_limits.max_headers_kb * 1024;
    s->buffer_limit = cfg->buffer_limit;
    if (o == NULL)
        return 0;
    s->max_concurrent_streams = LG_WRAPPED(o->max_concurrent_streams, s->max_concurrent_streams);
    s->initial_stream_window_size = LG_WRAPPED(o->initial_stream_window_size, s->initial_stream_window_size);
    s->initial_connection_window_size = LG_WRAPPED(o->initial_connection_window_size, s->initial_connection_window_size);
    if (s->max_concurrent_streams == 0)
        return lg_error(err, "%s.max_concurrent_streams: value must be inside range [1, 2147483647]", path);
    if (s->initial_stream_window_size < 65535 || s->initial_stream_window_size > 2147483647)
        return lg_error(err, "%s.initial_stream_window_size: value must be inside range [65535, 2147483647]", path);
    if (s->initial_connection_window_size < 65535 || s->initial_connection_window_size > 2147483647)
        return lg_error(err, "%s.initial_connection_window_size: value must be inside range [65535, 2147483647]", path);
    if (o->n_custom_settings_parameters != 0)
        return lg_error(err, "%s.custom_settings_parameters: not supported", path);
    return 0;
}

static int compile_common_http(lg_cluster_config_t *cfg, const Envoy__Config__Core__V3__HttpProtocolOptions *o, const char *path,
                               lg_error_t *err)
{
    if (o == NULL)
        return 0;
    if (o->max_connection_duration != NULL && lg_duration_ms(o->max_connection_duration, 0) != 0)
        return lg_error(err, "%s.max_connection_duration: not supported", path);
    if (o->max_stream_duration != NULL && lg_duration_ms(o->max_stream_duration, 0) != 0)
        return lg_error(err, "%s.max_stream_duration: not supported", path);
    if (o->idle_timeout != NULL)
        cfg->idle_timeout_ms = lg_duration_ms(o->idle_timeout, 0);
    if (o->max_requests_per_connection != NULL)
        cfg->max_requests_per_connection = o->max_requests_per_connection->value;
    if (o->max_headers_count != NULL) {
        if (o->max_headers_count->value == 0)
            return lg_error(err, "%s.max_headers_count: value must be greater than or equal to 1", path);
        cfg->h1_limits.max_headers_count = o->max_headers_count->value;
    }
    return 0;
}

/* ---- TLS (transport_socket, ALPN) ---- */

/* auto_config: h2 when ALPN negotiates it (TLS), else HTTP/1.1. */
typedef Envoy__Extensions__Upstreams__Http__V3__HttpProtocolOptions__AutoHttpConfig auto_config_proto_t;

static int compile_auto_config(lg_cluster_config_t *cfg, const auto_config_proto_t *a, const char *path, lg_error_t *err)
{
    char sub[256];
    if (a->http3_protocol_options != NULL || a->alternate_protocols_cache_options != NULL)
        return lg_error(err, "%s.auto_config.http3_protocol_options: HTTP/3 upstreams are not supported", path);
    cfg->protocol = LG_UPSTREAM_AUTO;
    snprintf(sub, sizeof(sub), "%s.auto_config.http2_protocol_options", path);
    return compile_h2(cfg, a->http2_protocol_options, sub, err);
}

/* auto_sni, auto_san_validation, override_auto_sni_header (the pools key
 * connections by the request's name). */
static int compile_upstream_http_options(lg_cluster_config_t *cfg, const Envoy__Config__Core__V3__UpstreamHttpProtocolOptions *u,
                                         const char *path, lg_error_t *err)
{
    if (u == NULL)
        return 0;
    cfg->auto_sni = u->auto_sni != 0;
    cfg->auto_san_validation = u->auto_san_validation != 0;
    free(cfg->override_auto_sni_header);
    cfg->override_auto_sni_header = NULL;
    if (u->override_auto_sni_header != NULL && u->override_auto_sni_header[0] != '\0') {
        const char *h = u->override_auto_sni_header;
        for (const char *p = h; *p != '\0'; ++p)
            if (*p <= ' ' || *p == ':' || *p >= 0x7f)
                return lg_error(err, "%s.upstream_http_protocol_options.override_auto_sni_header: invalid header name \"%s\"", path,
                                h);
        cfg->override_auto_sni_header = lg_strdup(h);
        for (char *p = cfg->override_auto_sni_header; *p != '\0'; ++p)
            *p = (char)tolower((unsigned char)*p);
    }
    return 0;
}

static int compile_transport_socket(lg_cluster_config_t *cfg, const Envoy__Config__Cluster__V3__Cluster *c, lg_error_t *err)
{
    char prefix[300];
    snprintf(prefix, sizeof(prefix), "cluster.%s.", cfg->stat_name);
    if (lg_tls_transport_socket_compile(c->transport_socket, LG_TLS_CLIENT, prefix, &cfg->tls, err) != 0)
        return lg_error_prefix(err, "transport_socket");
    return 0;
}

/* typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"] */
static int compile_http_protocol_options(lg_cluster_config_t *cfg, const Google__Protobuf__Any *any, lg_error_t *err)
{
    static const char path[] = "typed_extension_protocol_options[" HTTP_PROTOCOL_OPTIONS_KEY "]";
    if (any == NULL)
        return lg_error(err, "%s: missing value", path);
    if (strcmp(lg_type_url_name(any->type_url), HTTP_PROTOCOL_OPTIONS_KEY) != 0)
        return lg_error(err, "%s: unexpected type %s", path, any->type_url);
    Envoy__Extensions__Upstreams__Http__V3__HttpProtocolOptions *o = (void *)protobuf_c_message_unpack(
        &envoy__extensions__upstreams__http__v3__http_protocol_options__descriptor, NULL, any->value.len, any->value.data);
    if (o == NULL)
        return lg_error(err, "%s: cannot decode the Any", path);
    int ret = -1;
    char sub[256];
    snprintf(sub, sizeof(sub), "%s.common_http_protocol_options", path);
    if (compile_common_http(cfg, o->common_http_protocol_options, sub, err) != 0)
        goto Exit;
    if (o->n_http_filters != 0) {
        lg_error(err, "%s.http_filters: upstream HTTP filters are not supported", path);
        goto Exit;
    }
    switch (o->upstream_protocol_options_case) {
    case ENVOY__EXTENSIONS__UPSTREAMS__HTTP__V3__HTTP_PROTOCOL_OPTIONS__UPSTREAM_PROTOCOL_OPTIONS_EXPLICIT_HTTP_CONFIG: {
        const Envoy__Extensions__Upstreams__Http__V3__HttpProtocolOptions__ExplicitHttpConfig *e = o->explicit_http_config;
        snprintf(sub, sizeof(sub), "%s.explicit_http_config.http2_protocol_options", path);
        switch (e->protocol_config_case) {
        case ENVOY__EXTENSIONS__UPSTREAMS__HTTP__V3__HTTP_PROTOCOL_OPTIONS__EXPLICIT_HTTP_CONFIG__PROTOCOL_CONFIG_HTTP_PROTOCOL_OPTIONS:
            cfg->protocol = LG_UPSTREAM_HTTP1;
            break;
        case ENVOY__EXTENSIONS__UPSTREAMS__HTTP__V3__HTTP_PROTOCOL_OPTIONS__EXPLICIT_HTTP_CONFIG__PROTOCOL_CONFIG_HTTP2_PROTOCOL_OPTIONS:
            cfg->protocol = LG_UPSTREAM_HTTP2;
            if (compile_h2(cfg, e->http2_protocol_options, sub, err) != 0)
                goto Exit;
            break;
        case ENVOY__EXTENSIONS__UPSTREAMS__HTTP__V3__HTTP_PROTOCOL_OPTIONS__EXPLICIT_HTTP_CONFIG__PROTOCOL_CONFIG_HTTP3_PROTOCOL_OPTIONS:
            lg_error(err, "%s.explicit_http_config.http3_protocol_options: HTTP/3 upstreams are not supported", path);
            goto Exit;
        default:
            lg_error(err, "%s.explicit_http_config: one of http_protocol_options or http2_protocol_options must be set", path);
            goto Exit;
        }
        break;
    }
    case ENVOY__EXTENSIONS__UPSTREAMS__HTTP__V3__HTTP_PROTOCOL_OPTIONS__UPSTREAM_PROTOCOL_OPTIONS_USE_DOWNSTREAM_PROTOCOL_CONFIG: {
        const Envoy__Extensions__Upstreams__Http__V3__HttpProtocolOptions__UseDownstreamHttpConfig *u =
            o->use_downstream_protocol_config;
        if (u->http3_protocol_options != NULL) {
            lg_error(err, "%s.use_downstream_protocol_config.http3_protocol_options: HTTP/3 upstreams are not supported", path);
            goto Exit;
        }
        cfg->protocol = LG_UPSTREAM_USE_DOWNSTREAM;
        snprintf(sub, sizeof(sub), "%s.use_downstream_protocol_config.http2_protocol_options", path);
        if (compile_h2(cfg, u->http2_protocol_options, sub, err) != 0)
            goto Exit;
        break;
    }
    case ENVOY__EXTENSIONS__UPSTREAMS__HTTP__V3__HTTP_PROTOCOL_OPTIONS__UPSTREAM_PROTOCOL_OPTIONS_AUTO_CONFIG:
        if (compile_auto_config(cfg, o->auto_config, path, err) != 0)
            goto Exit;
        break;
    default:
        break;
    }
    if (compile_upstream_http_options(cfg, o->upstream_http_protocol_options, path, err) != 0)
        goto Exit;
    ret = 0;
Exit:
    protobuf_c_message_free_unpacked(&o->base, NULL);
    return ret;
}

static int compile_protocol_options(lg_cluster_config_t *cfg, const Envoy__Config__Cluster__V3__Cluster *c, lg_error_t *err)
{
    /* the deprecated cluster-level fields first: the extension overrides them */
    if (compile_common_http(cfg, c->common_http_protocol_options, "common_http_protocol_options", err) != 0)
        return -1;
    if (c->max_requests_per_connection != NULL &&
        (c->common_http_protocol_options == NULL || c->common_http_protocol_options->max_requests_per_connection == NULL))
        cfg->max_requests_per_connection = c->max_requests_per_connection->value;
    if (c->http2_protocol_options != NULL) {
        cfg->protocol = LG_UPSTREAM_HTTP2;
        if (compile_h2(cfg, c->http2_protocol_options, "http2_protocol_options", err) != 0)
            return -1;
    }
    if (c->protocol_selection == ENVOY__CONFIG__CLUSTER__V3__CLUSTER__CLUSTER_PROTOCOL_SELECTION__USE_DOWNSTREAM_PROTOCOL) {
        cfg->protocol = LG_UPSTREAM_USE_DOWNSTREAM;
        if (cfg->h2 == NULL && compile_h2(cfg, NULL, "http2_protocol_options", err) != 0)
            return -1;
    }
    for (size_t i = 0; i != c->n_typed_extension_protocol_options; ++i) {
        const Envoy__Config__Cluster__V3__Cluster__TypedExtensionProtocolOptionsEntry *e = c->typed_extension_protocol_options[i];
        if (strcmp(e->key, HTTP_PROTOCOL_OPTIONS_KEY) == 0) {
            if (compile_http_protocol_options(cfg, e->value, err) != 0)
                return -1;
        } else if (strcmp(e->key, "envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions") != 0) {
            return lg_error(err, "typed_extension_protocol_options[%s]: unknown protocol options", e->key);
        }
    }
    return 0;
}

/* ---- the rest of the cluster ---- */

/* A DNS cluster's load_assignment as it will be once resolved: its errors at config time. */
static int check_endpoints(void *ctx, const Envoy__Config__Endpoint__V3__ClusterLoadAssignment *cla, lg_error_t *err)
{
    host_vector_t hosts = {NULL};
    int rc = compile_endpoints(cla, &hosts, err);
    host_vector_free(&hosts);
    return rc != 0 ? path_prefix(err, "load_assignment") : 0;
}

static int compile_type(lg_cluster_config_t *cfg, const Envoy__Config__Cluster__V3__Cluster *c, lg_error_t *err)
{
    if (c->cluster_discovery_type_case == ENVOY__CONFIG__CLUSTER__V3__CLUSTER__CLUSTER_DISCOVERY_TYPE_CLUSTER_TYPE)
        return lg_error(err, "cluster_type: custom cluster types are not supported");
    switch (c->cluster_discovery_type_case == ENVOY__CONFIG__CLUSTER__V3__CLUSTER__CLUSTER_DISCOVERY_TYPE_TYPE
                ? c->type
                : ENVOY__CONFIG__CLUSTER__V3__CLUSTER__DISCOVERY_TYPE__STATIC) {
    case ENVOY__CONFIG__CLUSTER__V3__CLUSTER__DISCOVERY_TYPE__STATIC:
        cfg->discovery = LG_CLUSTER_STATIC;
        return 0;
    case ENVOY__CONFIG__CLUSTER__V3__CLUSTER__DISCOVERY_TYPE__EDS:
        cfg->discovery = LG_CLUSTER_EDS;
        return 0;
    case ENVOY__CONFIG__CLUSTER__V3__CLUSTER__DISCOVERY_TYPE__STRICT_DNS:
    case ENVOY__CONFIG__CLUSTER__V3__CLUSTER__DISCOVERY_TYPE__LOGICAL_DNS: {
        int logical = c->type == ENVOY__CONFIG__CLUSTER__V3__CLUSTER__DISCOVERY_TYPE__LOGICAL_DNS;
        cfg->discovery = logical ? LG_CLUSTER_LOGICAL_DNS : LG_CLUSTER_STRICT_DNS;
        if ((cfg->dns = lg_dns_spec_compile(c, logical, err)) == NULL)
            return -1;
        return lg_dns_spec_check(cfg->dns, check_endpoints, NULL, err);
    }
    case ENVOY__CONFIG__CLUSTER__V3__CLUSTER__DISCOVERY_TYPE__ORIGINAL_DST:
        return lg_error(err, "type: ORIGINAL_DST clusters are not supported");
    default:
        return lg_error(err, "type: unknown discovery type %d", (int)c->type);
    }
}

static const char *lb_policy_name(int p)
{
    const ProtobufCEnumValue *v =
        protobuf_c_enum_descriptor_get_value(&envoy__config__cluster__v3__cluster__lb_policy__descriptor, p);
    return v != NULL ? v->name : "?";
}

static int compile_lb(lg_cluster_config_t *cfg, const Envoy__Config__Cluster__V3__Cluster *c, lg_error_t *err)
{
    if (c->load_balancing_policy != NULL)
        return lg_error(err, "load_balancing_policy: not supported, use lb_policy");
    switch (c->lb_policy) {
    case ENVOY__CONFIG__CLUSTER__V3__CLUSTER__LB_POLICY__ROUND_ROBIN:
        cfg->lb = &lg_lb_round_robin;
        break;
    case ENVOY__CONFIG__CLUSTER__V3__CLUSTER__LB_POLICY__LEAST_REQUEST:
        cfg->lb = &lg_lb_least_request;
        break;
    case ENVOY__CONFIG__CLUSTER__V3__CLUSTER__LB_POLICY__RANDOM:
        cfg->lb = &lg_lb_random;
        break;
    default:
        return lg_error(err, "lb_policy: unsupported lb_policy %s", lb_policy_name(c->lb_policy));
    }
    cfg->lb_choice_count = 2;
    cfg->lb_active_request_bias = 1.0;
    if (c->lb_config_case == ENVOY__CONFIG__CLUSTER__V3__CLUSTER__LB_CONFIG_LEAST_REQUEST_LB_CONFIG) {
        const Envoy__Config__Cluster__V3__Cluster__LeastRequestLbConfig *l = c->least_request_lb_config;
        cfg->lb_choice_count = LG_WRAPPED(l->choice_count, 2);
        if (cfg->lb_choice_count < 2)
            return lg_error(err, "least_request_lb_config.choice_count: value must be greater than or equal to 2");
        if (l->active_request_bias != NULL) {
            cfg->lb_active_request_bias = l->active_request_bias->default_value;
            if (!(cfg->lb_active_request_bias >= 0))
                return lg_error(err, "least_request_lb_config.active_request_bias: must be a non-negative number");
        }
        if (l->slow_start_config != NULL)
            return lg_error(err, "least_request_lb_config.slow_start_config: not supported");
    } else if (c->lb_config_case == ENVOY__CONFIG__CLUSTER__V3__CLUSTER__LB_CONFIG_ROUND_ROBIN_LB_CONFIG) {
        if (c->round_robin_lb_config->slow_start_config != NULL)
            return lg_error(err, "round_robin_lb_config.slow_start_config: not supported");
    }
    cfg->healthy_panic_threshold = 50;
    if (c->common_lb_config != NULL) {
        const Envoy__Config__Cluster__V3__Cluster__CommonLbConfig *l = c->common_lb_config;
        if (l->healthy_panic_threshold != NULL) {
            double v = l->healthy_panic_threshold->value;
            if (!(v >= 0 && v <= 100))
                return lg_error(err, "common_lb_config.healthy_panic_threshold: value must be inside range [0, 100]");
            cfg->healthy_panic_threshold = (uint32_t)v;
        }
        if (l->locality_config_specifier_case ==
            ENVOY__CONFIG__CLUSTER__V3__CLUSTER__COMMON_LB_CONFIG__LOCALITY_CONFIG_SPECIFIER_LOCALITY_WEIGHTED_LB_CONFIG)
            return lg_error(err, "common_lb_config.locality_weighted_lb_config: not supported");
        if (l->override_host_status != NULL)
            return lg_error(err, "common_lb_config.override_host_status: not supported");
    }
    return 0;
}

static int compile_thresholds(lg_cluster_config_t *cfg, const Envoy__Config__Cluster__V3__CircuitBreakers *cb, lg_error_t *err)
{
    static const lg_cb_thresholds_t defaults = {1024, 1024, 1024, 3};
    cfg->thresholds = defaults;
    cfg->high_thresholds = defaults;
    if (cb == NULL)
        return 0;
    if (cb->n_per_host_thresholds != 0)
        return lg_error(err, "circuit_breakers.per_host_thresholds: not supported");
    for (size_t i = 0; i != cb->n_thresholds; ++i) {
        const Envoy__Config__Cluster__V3__CircuitBreakers__Thresholds *t = cb->thresholds[i];
        if (t->retry_budget != NULL)
            return lg_error(err, "circuit_breakers.thresholds[%zu].retry_budget: not supported", i);
        lg_cb_thresholds_t *dst =
            t->priority == ENVOY__CONFIG__CORE__V3__ROUTING_PRIORITY__HIGH ? &cfg->high_thresholds : &cfg->thresholds;
        dst->max_connections = LG_WRAPPED(t->max_connections, defaults.max_connections);
        dst->max_pending_requests = LG_WRAPPED(t->max_pending_requests, defaults.max_pending_requests);
        dst->max_requests = LG_WRAPPED(t->max_requests, defaults.max_requests);
        dst->max_retries = LG_WRAPPED(t->max_retries, defaults.max_retries);
    }
    return 0;
}

/* Fields that would change what goes on the wire are errors; the rest warn. */
static int check_unsupported(const Envoy__Config__Cluster__V3__Cluster *c, lg_error_t *err)
{
    if (c->n_transport_socket_matches != 0)
        return lg_error(err, "transport_socket_matches: not supported");
    if (c->lb_subset_config != NULL && c->lb_subset_config->n_subset_selectors != 0)
        return lg_error(err, "lb_subset_config: not supported");
    if (c->upstream_bind_config != NULL)
        return lg_error(err, "upstream_bind_config: not supported");
    if (c->n_filters != 0)
        return lg_error(err, "filters: upstream network filters are not supported");
    if (c->upstream_config != NULL)
        return lg_error(err, "upstream_config: not supported");
    if (c->http_protocol_options != NULL && c->http_protocol_options->header_key_format != NULL)
        return lg_error(err, "http_protocol_options.header_key_format: not supported");
    if (c->n_health_checks != 0)
        LG_WARN(config, "cluster %s: health_checks are not implemented; all hosts are considered healthy", c->name);
    if (c->outlier_detection != NULL)
        LG_WARN(config, "cluster %s: outlier_detection is not implemented and is ignored", c->name);
    return 0;
}

static char *stat_name_of(const char *name)
{
    char *s = lg_strdup(name);
    for (char *p = s; *p != '\0'; ++p)
        if (*p == ':')
            *p = '_';
    return s;
}

static lg_cluster_config_t *config_new(void)
{
    lg_cluster_config_t *cfg = lg_calloc(1, sizeof(*cfg));
    cfg->_refcnt = 1;
    cfg->connect_timeout_ms = 5000;
    cfg->buffer_limit = 1024 * 1024;
    cfg->idle_timeout_ms = DEFAULT_IDLE_TIMEOUT_MS;
    cfg->protocol = LG_UPSTREAM_HTTP1;
    lg_h1_limits_init(&cfg->h1_limits);
    return cfg;
}

static int compile_body(lg_cluster_config_t *cfg, const Envoy__Config__Cluster__V3__Cluster *c, lg_error_t *err)
{
    if (compile_type(cfg, c, err) != 0 || compile_lb(cfg, c, err) != 0 || check_unsupported(c, err) != 0)
        return -1;
    if (c->connect_timeout != NULL) {
        if (c->connect_timeout->seconds < 0 || (c->connect_timeout->seconds == 0 && c->connect_timeout->nanos <= 0))
            return lg_error(err, "connect_timeout: value must be greater than 0s");
        uint64_t ms = lg_duration_ms(c->connect_timeout, 5000);
        cfg->connect_timeout_ms = ms == 0 ? 1 : ms > UINT32_MAX ? UINT32_MAX : (uint32_t)ms;
    }
    cfg->buffer_limit = LG_WRAPPED(c->per_connection_buffer_limit_bytes, cfg->buffer_limit);
    if (compile_thresholds(cfg, c->circuit_breakers, err) != 0 || compile_protocol_options(cfg, c, err) != 0 ||
        compile_transport_socket(cfg, c, err) != 0)
        return -1;
    if (cfg->h2 != NULL)
        cfg->h2->buffer_limit = cfg->buffer_limit;
    host_vector_t hosts = {NULL};
    if (cfg->discovery == LG_CLUSTER_STATIC && c->load_assignment != NULL &&
        compile_endpoints(c->load_assignment, &hosts, err) != 0) {
        host_vector_free(&hosts);
        return path_prefix(err, "load_assignment");
    }
    set_hosts(cfg, &hosts);
    return 0;
}

lg_cluster_config_t *lg_cluster_config_compile(const Envoy__Config__Cluster__V3__Cluster *c, lg_error_t *err)
{
    if (c->name == NULL || c->name[0] == '\0') {
        lg_error(err, "name: must not be empty");
        return NULL;
    }
    lg_cluster_config_t *cfg = config_new();
    cfg->name = lg_strdup(c->name);
    cfg->stat_name = stat_name_of(c->alt_stat_name != NULL && c->alt_stat_name[0] != '\0' ? c->alt_stat_name : c->name);
    if (compile_body(cfg, c, err) != 0) {
        lg_cluster_config_release(cfg);
        return NULL;
    }
    if (cfg->discovery == LG_CLUSTER_EDS) {
        const char *eds_name = c->eds_cluster_config != NULL ? c->eds_cluster_config->service_name : NULL;
        cfg->eds_service_name = lg_strdup(eds_name != NULL && eds_name[0] != '\0' ? eds_name : c->name);
    }
    cfg->shared = shared_new(cfg->stat_name, cfg->discovery);
    publish_membership(cfg, cfg->n_hosts != 0);
    return cfg;
}

lg_cluster_config_t *lg_cluster_config_with_endpoints(const lg_cluster_config_t *cfg,
                                                      const Envoy__Config__Endpoint__V3__ClusterLoadAssignment *cla,
                                                      lg_error_t *err)
{
    host_vector_t hosts = {NULL};
    if (compile_endpoints(cla, &hosts, err) != 0) {
        host_vector_free(&hosts);
        return NULL;
    }
    lg_cluster_config_t *n = lg_malloc(sizeof(*n));
    *n = *cfg;
    n->_refcnt = 1;
    n->name = lg_strdup(cfg->name);
    n->stat_name = lg_strdup(cfg->stat_name);
    n->eds_service_name = cfg->eds_service_name != NULL ? lg_strdup(cfg->eds_service_name) : NULL;
    if (cfg->h2 != NULL) {
        n->h2 = lg_malloc(sizeof(*n->h2));
        *n->h2 = *cfg->h2;
    }
    set_hosts(n, &hosts);
    if (n->dns != NULL)
        lg_dns_spec_addref(n->dns);
    if (n->tls != NULL)
        lg_tls_context_addref(n->tls);
    n->override_auto_sni_header = cfg->override_auto_sni_header != NULL ? lg_strdup(cfg->override_auto_sni_header) : NULL;
    n->shared = shared_addref(cfg->shared);
    carry_host_stats(n, cfg);
    publish_membership(n, !same_hosts(n, cfg));
    if (n->discovery == LG_CLUSTER_EDS) /* DNS clusters count their answers (dns.c) */
        lg_stats_control_add(n->shared->stats, n->n_hosts != 0 ? LG_CLUSTER_STAT_update_success : LG_CLUSTER_STAT_update_empty, 1);
    return n;
}

void lg_cluster_config_adopt(lg_cluster_config_t *cfg, const lg_cluster_config_t *prev)
{
    if (prev != NULL && prev != cfg)
        carry_host_stats(cfg, prev);
}

lg_cluster_config_t *lg_cluster_config_addref(lg_cluster_config_t *cfg)
{
    __atomic_add_fetch(&cfg->_refcnt, 1, __ATOMIC_RELAXED);
    return cfg;
}

void lg_cluster_config_release(lg_cluster_config_t *cfg)
{
    if (cfg == NULL || __atomic_sub_fetch(&cfg->_refcnt, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    for (size_t i = 0; i != cfg->n_hosts; ++i)
        host_free(cfg->hosts[i]);
    free(cfg->hosts);
    free(cfg->h2);
    lg_dns_spec_release(cfg->dns);
    lg_tls_context_release(cfg->tls);
    free(cfg->override_auto_sni_header);
    free((char *)cfg->name);
    free((char *)cfg->stat_name);
    free((char *)cfg->eds_service_name);
    if (cfg->shared != NULL)
        shared_release(cfg->shared);
    free(cfg);
}
