/*
 * DNS clusters: settings (lg_dns_spec_t) and their resolution with c-ares on
 * the control thread. See include/legate/dns.h.
 *
 * Each resolver owns a c-ares channel (its cluster's resolvers and options).
 * lg_dns_tick() starts the targets' queries that are due, polls the channels'
 * sockets without waiting, and lets c-ares handle answers and timeouts; the
 * answers land in on_answer(), which updates the target's addresses and
 * schedules its next query. The xDS state picks the changes up after each
 * tick (lg_dns_cluster_take_change) and rebuilds the cluster's hosts, as for
 * an EDS update.
 */
#include <ares.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include "legate/address.h"
#include "legate/dns.h"
#include "legate/server.h"
#include "legate/stats.h"
#include "legate/timer.h"
#include "legate/cluster-t.h"
#include "envoy/extensions/network/dns_resolver/cares/v3/cares_dns_resolver.pb-c.h"
#include "envoy/extensions/network/dns_resolver/getaddrinfo/v3/getaddrinfo_dns_resolver.pb-c.h"

#define CARES_TYPE "envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig"
#define GETADDRINFO_TYPE "envoy.extensions.network.dns_resolver.getaddrinfo.v3.GetAddrInfoDnsResolverConfig"

typedef char ip_text_t[INET6_ADDRSTRLEN];

typedef struct st_target_state_t {
    lg_dns_cluster_t *owner;
    size_t index;
    ip_text_t *addrs; /* current addresses, in the order of the last answer */
    size_t n_addrs;
    uint64_t due_ms;
    unsigned inflight : 1;
    unsigned fallback : 1; /* the query for the other family (AUTO, V4_PREFERRED) */
    unsigned answered : 1; /* had an answer or a failure once */
    unsigned first_ok : 1; /* the first family's query succeeded, without addresses */
} target_state_t;

struct st_lg_dns_cluster_t {
    lg_dns_spec_t *spec;
    lg_stats_block_t *stats;
    char *name;
    ares_channel channel;
    unsigned has_channel : 1;
    unsigned changed : 1;
    unsigned destroying : 1; /* ares_destroy() may still call back, even with a success */
    uint64_t backoff_ms;     /* the next failure backoff's upper bound: one per cluster, as Envoy */
    size_t n_answered, n_inflight;
    target_state_t *targets;
    lg_dns_cluster_t *next, **prevp; /* every resolver, for lg_dns_tick */
};

static lg_dns_cluster_t *all_resolvers;
static int ares_ready;
static int tick_changed; /* some cluster's hosts changed (or became ready) during this lg_dns_tick */

/* ---- spec ---- */

static int resolver_list(lg_dns_spec_t *s, Envoy__Config__Core__V3__Address *const *addrs, size_t n, const char *path,
                         lg_error_t *err)
{
    s->resolvers = lg_calloc(n ? n : 1, sizeof(*s->resolvers));
    for (size_t i = 0; i != n; ++i) {
        socklen_t len;
        if (addrs[i]->address_case != ENVOY__CONFIG__CORE__V3__ADDRESS__ADDRESS_SOCKET_ADDRESS)
            return lg_error(err, "%s[%zu]: a resolver must be a socket address", path, i);
        if (lg_address_from_proto(addrs[i], s->resolvers + i, &len, err) != 0)
            return lg_error_prefix(err, "%s[%zu]", path, i);
        struct sockaddr_in *sin = (struct sockaddr_in *)(s->resolvers + i);
        if (sin->sin_port == 0)
            sin->sin_port = htons(53); /* sin6_port is at the same offset */
        s->n_resolvers = i + 1;
    }
    return 0;
}

static int resolver_options(lg_dns_spec_t *s, const Envoy__Config__Core__V3__DnsResolverOptions *o)
{
    if (o != NULL) {
        s->use_tcp = o->use_tcp_for_dns_lookups != 0;
        s->no_search = o->no_default_search_domain != 0;
    }
    return 0;
}

static int compile_resolver(lg_dns_spec_t *s, const Envoy__Config__Cluster__V3__Cluster *c, lg_error_t *err)
{
    const Envoy__Config__Core__V3__TypedExtensionConfig *t = c->typed_dns_resolver_config;
    if (t != NULL) {
        const char *url = t->typed_config != NULL ? t->typed_config->type_url : "";
        const char *slash = strrchr(url, '/');
        const char *type = slash != NULL ? slash + 1 : url;
        if (strcmp(type, GETADDRINFO_TYPE) == 0)
            return 0; /* the system's configuration, which c-ares reads too */
        if (strcmp(type, CARES_TYPE) != 0)
            return lg_error(err, "typed_dns_resolver_config.typed_config: unsupported DNS resolver type '%s'", type);
        Envoy__Extensions__Network__DnsResolver__Cares__V3__CaresDnsResolverConfig *cc = (void *)protobuf_c_message_unpack(
            &envoy__extensions__network__dns_resolver__cares__v3__cares_dns_resolver_config__descriptor, NULL,
            t->typed_config->value.len, t->typed_config->value.data);
        if (cc == NULL)
            return lg_error(err, "typed_dns_resolver_config.typed_config: cannot decode the Any");
        int rc = resolver_list(s, cc->resolvers, cc->n_resolvers, "typed_dns_resolver_config.typed_config.resolvers", err);
        resolver_options(s, cc->dns_resolver_options);
        protobuf_c_message_free_unpacked(&cc->base, NULL);
        return rc;
    }
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    if (c->dns_resolution_config != NULL) {
        resolver_options(s, c->dns_resolution_config->dns_resolver_options);
        return resolver_list(s, c->dns_resolution_config->resolvers, c->dns_resolution_config->n_resolvers,
                             "dns_resolution_config.resolvers", err);
    }
    s->use_tcp = c->use_tcp_for_dns_lookups != 0;
    return resolver_list(s, c->dns_resolvers, c->n_dns_resolvers, "dns_resolvers", err);
#pragma GCC diagnostic pop
}

static int positive_ms(const Google__Protobuf__Duration *d, const char *path, uint64_t *out, lg_error_t *err)
{
    if (d->seconds < 0 || (d->seconds == 0 && d->nanos <= 1000000))
        return lg_error(err, "%s: value must be greater than 1ms", path);
    *out = lg_duration_ms(d, 0);
    return 0;
}

static int compile_targets(lg_dns_spec_t *s, const Envoy__Config__Endpoint__V3__ClusterLoadAssignment *la, lg_error_t *err)
{
    size_t n = 0;
    for (size_t i = 0; la != NULL && i != la->n_endpoints; ++i)
        n += la->endpoints[i]->n_lb_endpoints;
    if (s->logical && (la == NULL || la->n_endpoints != 1 || n != 1))
        return lg_error(err, la != NULL ? "load_assignment: LOGICAL_DNS clusters must have a single locality_lb_endpoint and a "
                                          "single lb_endpoint"
                                        : "load_assignment: LOGICAL_DNS clusters must have a single host");
    s->targets = lg_calloc(n ? n : 1, sizeof(*s->targets));
    for (size_t i = 0; la != NULL && i != la->n_endpoints; ++i) {
        for (size_t j = 0; j != la->endpoints[i]->n_lb_endpoints; ++j) {
            const Envoy__Config__Endpoint__V3__LbEndpoint *e = la->endpoints[i]->lb_endpoints[j];
            const Envoy__Config__Core__V3__Address *a = e->endpoint != NULL ? e->endpoint->address : NULL;
            const char *kind = s->logical ? "LOGICAL_DNS" : "STRICT_DNS";
            if (a == NULL || a->address_case != ENVOY__CONFIG__CORE__V3__ADDRESS__ADDRESS_SOCKET_ADDRESS)
                return lg_error(err, "load_assignment.endpoints[%zu].lb_endpoints[%zu].endpoint.address: %s clusters need a "
                                     "socket_address",
                                i, j, kind);
            const Envoy__Config__Core__V3__SocketAddress *sa = a->socket_address;
            if (sa->resolver_name != NULL && sa->resolver_name[0] != '\0')
                return lg_error(err,
                                "load_assignment.endpoints[%zu].lb_endpoints[%zu].endpoint.address.socket_address.resolver_name: "
                                "%s clusters must NOT have a custom resolver name set",
                                i, j, kind);
            if (sa->address == NULL || sa->address[0] == '\0')
                return lg_error(err, "load_assignment.endpoints[%zu].lb_endpoints[%zu].endpoint.address.socket_address.address: "
                                     "value is required",
                                i, j);
            if (sa->port_specifier_case != ENVOY__CONFIG__CORE__V3__SOCKET_ADDRESS__PORT_SPECIFIER_PORT_VALUE)
                return lg_error(err, "load_assignment.endpoints[%zu].lb_endpoints[%zu].endpoint.address.socket_address: "
                                     "port_value is required",
                                i, j);
            s->targets[s->n_targets++] = (lg_dns_target_t){lg_strdup(sa->address), sa->port_value};
        }
    }
    if (la != NULL) {
        s->assignment.len = protobuf_c_message_get_packed_size(&la->base);
        s->assignment.data = lg_malloc(s->assignment.len + 1);
        protobuf_c_message_pack(&la->base, s->assignment.data);
    }
    return 0;
}

lg_dns_spec_t *lg_dns_spec_compile(const Envoy__Config__Cluster__V3__Cluster *c, int logical, lg_error_t *err)
{
    lg_dns_spec_t *s = lg_calloc(1, sizeof(*s));
    s->_refcnt = 1;
    s->logical = logical != 0;
    s->respect_ttl = c->respect_dns_ttl != 0;
    s->no_warm = c->wait_for_warm_on_init != NULL && !c->wait_for_warm_on_init->value;
    s->refresh_ms = 5000;
    static const lg_dns_family_t families[] = {LG_DNS_AUTO, LG_DNS_V4_ONLY, LG_DNS_V6_ONLY, LG_DNS_V4_PREFERRED, LG_DNS_ALL};
    if ((unsigned)c->dns_lookup_family >= LG_ARRAY_SIZE(families)) {
        lg_error(err, "dns_lookup_family: unknown value %d", (int)c->dns_lookup_family);
        goto Fail;
    }
    s->family = families[c->dns_lookup_family];
    if (c->dns_refresh_rate != NULL && positive_ms(c->dns_refresh_rate, "dns_refresh_rate", &s->refresh_ms, err) != 0)
        goto Fail;
    if (c->dns_failure_refresh_rate != NULL) {
        const Envoy__Config__Cluster__V3__Cluster__RefreshRate *r = c->dns_failure_refresh_rate;
        if (r->base_interval == NULL) {
            lg_error(err, "dns_failure_refresh_rate.base_interval: value is required");
            goto Fail;
        }
        if (positive_ms(r->base_interval, "dns_failure_refresh_rate.base_interval", &s->failure_base_ms, err) != 0)
            goto Fail;
        s->failure_max_ms = s->failure_base_ms * 10;
        if (r->max_interval != NULL &&
            positive_ms(r->max_interval, "dns_failure_refresh_rate.max_interval", &s->failure_max_ms, err) != 0)
            goto Fail;
        if (s->failure_max_ms < s->failure_base_ms) {
            lg_error(err, "dns_failure_refresh_rate.max_interval: must be greater than or equal to the base_interval");
            goto Fail;
        }
    }
    if (compile_resolver(s, c, err) != 0 || compile_targets(s, c->load_assignment, err) != 0)
        goto Fail;
    return s;
Fail:
    lg_dns_spec_release(s);
    return NULL;
}

lg_dns_spec_t *lg_dns_spec_addref(lg_dns_spec_t *s)
{
    __atomic_add_fetch(&s->_refcnt, 1, __ATOMIC_RELAXED);
    return s;
}

void lg_dns_spec_release(lg_dns_spec_t *s)
{
    if (s == NULL || __atomic_sub_fetch(&s->_refcnt, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    for (size_t i = 0; i != s->n_targets; ++i)
        free(s->targets[i].name);
    free(s->targets);
    free(s->resolvers);
    free(s->assignment.data);
    free(s);
}

/* ---- the assignment with addresses ---- */

typedef struct st_addr_source_t {
    size_t (*count)(const struct st_addr_source_t *src, size_t target);
    const char *(*addr)(const struct st_addr_source_t *src, size_t target, size_t k);
    const lg_dns_cluster_t *d;
} addr_source_t;

/* Unpacks the assignment, repeats each target's lb_endpoint per address, calls use, frees. */
static int build_assignment(const lg_dns_spec_t *s, const addr_source_t *src,
                            int (*use)(void *, const Envoy__Config__Endpoint__V3__ClusterLoadAssignment *, lg_error_t *),
                            void *ctx, lg_error_t *err)
{
    Envoy__Config__Endpoint__V3__ClusterLoadAssignment *cla =
        s->assignment.data != NULL
            ? envoy__config__endpoint__v3__cluster_load_assignment__unpack(NULL, s->assignment.len, s->assignment.data)
            : NULL;
    Envoy__Config__Endpoint__V3__ClusterLoadAssignment empty = ENVOY__CONFIG__ENDPOINT__V3__CLUSTER_LOAD_ASSIGNMENT__INIT;
    if (cla == NULL && s->assignment.data != NULL)
        return lg_error(err, "load_assignment: cannot decode");
    if (cla == NULL)
        return use(ctx, &empty, err);
    typedef struct {
        Envoy__Config__Endpoint__V3__LbEndpoint e;
        Envoy__Config__Endpoint__V3__Endpoint ep;
        Envoy__Config__Core__V3__Address a;
        Envoy__Config__Core__V3__SocketAddress sa;
    } made_t;
    size_t total = 0, target = 0;
    for (size_t i = 0; i != cla->n_endpoints; ++i)
        for (size_t j = 0; j != cla->endpoints[i]->n_lb_endpoints; ++j)
            total += src->count(src, target++);
    made_t *made = lg_calloc(total ? total : 1, sizeof(*made));
    Envoy__Config__Endpoint__V3__LbEndpoint **lists = lg_calloc(total ? total : 1, sizeof(*lists));
    Envoy__Config__Endpoint__V3__LbEndpoint ***saved = lg_calloc(cla->n_endpoints ? cla->n_endpoints : 1, sizeof(*saved));
    size_t *saved_counts = lg_calloc(cla->n_endpoints ? cla->n_endpoints : 1, sizeof(*saved_counts));
    size_t m = 0;
    target = 0;
    for (size_t i = 0; i != cla->n_endpoints; ++i) {
        Envoy__Config__Endpoint__V3__LocalityLbEndpoints *l = cla->endpoints[i];
        Envoy__Config__Endpoint__V3__LbEndpoint **out = lists + m;
        size_t n_out = 0;
        for (size_t j = 0; j != l->n_lb_endpoints; ++j, ++target) {
            const Envoy__Config__Endpoint__V3__LbEndpoint *orig = l->lb_endpoints[j];
            for (size_t k = 0, n = src->count(src, target); k != n; ++k, ++m) {
                made_t *x = made + m;
                x->e = *orig;
                x->ep = *orig->endpoint;
                x->a = *orig->endpoint->address;
                x->sa = *orig->endpoint->address->socket_address;
                x->sa.address = (char *)src->addr(src, target, k);
                x->a.socket_address = &x->sa;
                x->ep.address = &x->a;
                if (x->ep.hostname == NULL || x->ep.hostname[0] == '\0')
                    x->ep.hostname = s->targets[target].name;
                x->e.endpoint = &x->ep;
                out[n_out++] = &x->e;
            }
        }
        saved[i] = l->lb_endpoints;
        saved_counts[i] = l->n_lb_endpoints;
        l->lb_endpoints = out;
        l->n_lb_endpoints = n_out;
    }
    int rc = use(ctx, cla, err);
    for (size_t i = 0; i != cla->n_endpoints; ++i) {
        cla->endpoints[i]->lb_endpoints = saved[i];
        cla->endpoints[i]->n_lb_endpoints = saved_counts[i];
    }
    free(saved);
    free(saved_counts);
    free(lists);
    free(made);
    protobuf_c_message_free_unpacked(&cla->base, NULL);
    return rc;
}

static size_t current_count(const addr_source_t *src, size_t target)
{
    size_t n = src->d->targets[target].n_addrs;
    return src->d->spec->logical && n > 1 ? 1 : n;
}

static const char *current_addr(const addr_source_t *src, size_t target, size_t k)
{
    return src->d->targets[target].addrs[k];
}

int lg_dns_cluster_with_assignment(lg_dns_cluster_t *d,
                                   int (*use)(void *ctx, const Envoy__Config__Endpoint__V3__ClusterLoadAssignment *cla,
                                              lg_error_t *err),
                                   void *ctx, lg_error_t *err)
{
    addr_source_t src = {current_count, current_addr, d};
    return build_assignment(d->spec, &src, use, ctx, err);
}

static size_t one_count(const addr_source_t *src, size_t target)
{
    return 1;
}

static const char *placeholder_addr(const addr_source_t *src, size_t target, size_t k)
{
    return "127.0.0.1";
}

int lg_dns_spec_check(const lg_dns_spec_t *s,
                      int (*use)(void *ctx, const Envoy__Config__Endpoint__V3__ClusterLoadAssignment *cla, lg_error_t *err),
                      void *ctx, lg_error_t *err)
{
    addr_source_t src = {one_count, placeholder_addr, NULL};
    return build_assignment(s, &src, use, ctx, err);
}

/* ---- resolution ---- */

static void query(target_state_t *t, int family);

static int family_of(lg_dns_family_t f, int fallback)
{
    switch (f) {
    case LG_DNS_V4_ONLY:
        return AF_INET;
    case LG_DNS_V6_ONLY:
        return AF_INET6;
    case LG_DNS_ALL:
        return AF_UNSPEC;
    case LG_DNS_V4_PREFERRED:
        return fallback ? AF_INET6 : AF_INET;
    case LG_DNS_AUTO:
    default:
        return fallback ? AF_INET : AF_INET6;
    }
}

static int same_set(const ip_text_t *a, size_t na, const ip_text_t *b, size_t nb)
{
    if (na != nb)
        return 0;
    for (size_t i = 0; i != na; ++i) {
        size_t j = 0;
        while (j != nb && strcmp(a[i], b[j]) != 0)
            ++j;
        if (j == nb)
            return 0;
    }
    return 1;
}

static uint64_t failure_delay(lg_dns_cluster_t *d)
{
    const lg_dns_spec_t *s = d->spec;
    if (s->failure_base_ms == 0)
        return s->refresh_ms;
    /* Envoy's JitteredExponentialBackOffStrategy: a random delay below the
     * bound, which doubles per failure up to max_interval */
    if (d->backoff_ms == 0)
        d->backoff_ms = s->failure_base_ms;
    uint64_t bound = d->backoff_ms;
    d->backoff_ms = d->backoff_ms > s->failure_max_ms / 2 ? s->failure_max_ms : d->backoff_ms * 2;
    uint64_t delay = lg_random() % bound;
    return delay != 0 ? delay : 1;
}

static void finish(target_state_t *t, int ok, ip_text_t *addrs, size_t n, uint64_t ttl_s)
{
    lg_dns_cluster_t *d = t->owner;
    const lg_dns_spec_t *s = d->spec;
    t->inflight = 0;
    t->fallback = 0;
    t->first_ok = 0;
    --d->n_inflight;
    uint64_t now = lg_now_ms(), delay = s->refresh_ms;
    if (ok && s->logical && n == 0)
        ok = 0; /* LOGICAL_DNS keeps its address when an answer has none */
    if (ok) {
        lg_stats_control_add(d->stats, LG_CLUSTER_STAT_update_success, 1);
        int same = s->logical ? t->n_addrs != 0 && strcmp(t->addrs[0], addrs[0]) == 0 : same_set(t->addrs, t->n_addrs, addrs, n);
        if (same) {
            if (!s->logical)
                lg_stats_control_add(d->stats, LG_CLUSTER_STAT_update_no_rebuild, 1);
            free(addrs);
        } else {
            LG_DEBUG(dns, "cluster %s: %s now has %zu address(es)", d->name, s->targets[t->index].name, n);
            free(t->addrs);
            t->addrs = addrs;
            t->n_addrs = n;
            d->changed = 1;
            tick_changed = 1;
        }
        d->backoff_ms = 0;
        if (s->respect_ttl && n != 0 && ttl_s != 0)
            delay = ttl_s * 1000;
    } else {
        lg_stats_control_add(d->stats, LG_CLUSTER_STAT_update_failure, 1);
        free(addrs);
        delay = failure_delay(d);
    }
    t->due_ms = now + delay;
    if (!t->answered) {
        t->answered = 1;
        if (++d->n_answered == s->n_targets)
            d->changed = tick_changed = 1; /* ready: the hosts are built for the first time */
    }
}

static void on_answer(void *arg, int status, int timeouts, struct ares_addrinfo *res)
{
    target_state_t *t = arg;
    lg_dns_cluster_t *d = t->owner;
    if (d->destroying || status == ARES_EDESTRUCTION || status == ARES_ECANCELLED) { /* the resolver is being freed */
        if (res != NULL)
            ares_freeaddrinfo(res);
        return;
    }
    size_t n = 0, cap = 0;
    ip_text_t *addrs = NULL;
    /* respect_dns_ttl: the smallest TTL (STRICT_DNS), the first address's (LOGICAL_DNS); 0 means the refresh rate */
    uint64_t ttl = UINT64_MAX;
    for (struct ares_addrinfo_node *a = res != NULL ? res->nodes : NULL; a != NULL; a = a->ai_next) {
        ip_text_t text;
        if (a->ai_family == AF_INET)
            inet_ntop(AF_INET, &((struct sockaddr_in *)a->ai_addr)->sin_addr, text, sizeof(text));
        else if (a->ai_family == AF_INET6)
            inet_ntop(AF_INET6, &((struct sockaddr_in6 *)a->ai_addr)->sin6_addr, text, sizeof(text));
        else
            continue;
        size_t i = 0;
        while (i != n && strcmp(addrs[i], text) != 0)
            ++i;
        if (i != n)
            continue; /* once per address */
        if (n == cap) {
            cap = cap ? cap * 2 : 4;
            addrs = lg_realloc(addrs, cap * sizeof(*addrs));
        }
        memcpy(addrs[n++], text, sizeof(text));
        uint64_t a_ttl = a->ai_ttl > 0 ? (uint64_t)a->ai_ttl : 0;
        if (d->spec->logical ? n == 1 : a_ttl < ttl)
            ttl = a_ttl;
    }
    if (res != NULL)
        ares_freeaddrinfo(res);
    int none = status == ARES_ENODATA || status == ARES_ENOTFOUND || (status == ARES_SUCCESS && n == 0);
    if (n == 0 && !t->fallback && (d->spec->family == LG_DNS_AUTO || d->spec->family == LG_DNS_V4_PREFERRED)) {
        /* as Envoy's c-ares resolver: the other family after no address or any failure */
        free(addrs);
        t->fallback = 1;
        t->first_ok = none;
        query(t, family_of(d->spec->family, 1));
        return;
    }
    if (status != ARES_SUCCESS && !none)
        LG_DEBUG(dns, "cluster %s: resolving %s failed: %s", d->name, d->spec->targets[t->index].name, ares_strerror(status));
    finish(t, status == ARES_SUCCESS || none || (t->fallback && t->first_ok), addrs, n, ttl == UINT64_MAX ? 0 : ttl);
}

static void query(target_state_t *t, int family)
{
    lg_dns_cluster_t *d = t->owner;
    struct ares_addrinfo_hints hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = family;
    hints.ai_flags = ARES_AI_NOSORT; /* the servers' order: LOGICAL_DNS takes the first */
    ares_getaddrinfo(d->channel, d->spec->targets[t->index].name, NULL, &hints, on_answer, t);
}

static void start(target_state_t *t)
{
    lg_dns_cluster_t *d = t->owner;
    lg_stats_control_add(d->stats, LG_CLUSTER_STAT_update_attempt, 1);
    if (!d->has_channel) {
        ++d->n_inflight;
        t->inflight = 1;
        finish(t, 0, NULL, 0, 0);
        return;
    }
    t->inflight = 1;
    ++d->n_inflight;
    query(t, family_of(d->spec->family, 0)); /* may answer at once (an IP literal, /etc/hosts) */
}

static int channel_init(lg_dns_cluster_t *d)
{
    if (!ares_ready) {
        if (ares_library_init(ARES_LIB_INIT_ALL) != ARES_SUCCESS)
            return -1;
        ares_ready = 1;
    }
    struct ares_options o;
    memset(&o, 0, sizeof(o));
    o.flags = (d->spec->use_tcp ? ARES_FLAG_USEVC : 0) | (d->spec->no_search ? ARES_FLAG_NOSEARCH : 0);
    int rc = ares_init_options(&d->channel, &o, ARES_OPT_FLAGS);
    if (rc != ARES_SUCCESS) {
        LG_WARN(dns, "cluster %s: cannot start a DNS resolver: %s", d->name, ares_strerror(rc));
        return -1;
    }
    if (d->spec->n_resolvers != 0) {
        struct ares_addr_port_node *nodes = lg_calloc(d->spec->n_resolvers, sizeof(*nodes));
        for (size_t i = 0; i != d->spec->n_resolvers; ++i) {
            const struct sockaddr_storage *ss = d->spec->resolvers + i;
            struct ares_addr_port_node *n = nodes + i;
            n->next = i + 1 != d->spec->n_resolvers ? n + 1 : NULL;
            n->family = ss->ss_family;
            if (ss->ss_family == AF_INET) {
                n->addr.addr4 = ((const struct sockaddr_in *)ss)->sin_addr;
                n->udp_port = n->tcp_port = ntohs(((const struct sockaddr_in *)ss)->sin_port);
            } else {
                memcpy(&n->addr.addr6, &((const struct sockaddr_in6 *)ss)->sin6_addr, 16);
                n->udp_port = n->tcp_port = ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
            }
        }
        rc = ares_set_servers_ports(d->channel, nodes);
        free(nodes);
        if (rc != ARES_SUCCESS) {
            LG_WARN(dns, "cluster %s: cannot set the DNS resolvers: %s", d->name, ares_strerror(rc));
            ares_destroy(d->channel);
            return -1;
        }
    }
    return 0;
}

lg_dns_cluster_t *lg_dns_cluster_new(lg_dns_spec_t *spec, lg_stats_block_t *stats, const char *cluster_name)
{
    lg_dns_cluster_t *d = lg_calloc(1, sizeof(*d));
    d->spec = lg_dns_spec_addref(spec);
    lg_stats_block_retain(stats);
    d->stats = stats;
    d->name = lg_strdup(cluster_name);
    d->has_channel = channel_init(d) == 0;
    d->targets = lg_calloc(spec->n_targets ? spec->n_targets : 1, sizeof(*d->targets));
    for (size_t i = 0; i != spec->n_targets; ++i)
        d->targets[i] = (target_state_t){.owner = d, .index = i};
    d->changed = spec->n_targets == 0; /* nothing to resolve: ready at once */
    d->next = all_resolvers;
    if (all_resolvers != NULL)
        all_resolvers->prevp = &d->next;
    d->prevp = &all_resolvers;
    all_resolvers = d;
    return d;
}

void lg_dns_cluster_free(lg_dns_cluster_t *d)
{
    if (d == NULL)
        return;
    *d->prevp = d->next;
    if (d->next != NULL)
        d->next->prevp = d->prevp;
    d->destroying = 1;
    if (d->has_channel)
        ares_destroy(d->channel); /* its pending callbacks run, and return at once */
    for (size_t i = 0; i != d->spec->n_targets; ++i)
        free(d->targets[i].addrs);
    free(d->targets);
    lg_stats_block_release(d->stats);
    lg_dns_spec_release(d->spec);
    free(d->name);
    free(d);
}

int lg_dns_cluster_ready(const lg_dns_cluster_t *d)
{
    return d->n_answered == d->spec->n_targets;
}

int lg_dns_cluster_warm(const lg_dns_cluster_t *d)
{
    return d->spec->no_warm || lg_dns_cluster_ready(d);
}

int lg_dns_cluster_take_change(lg_dns_cluster_t *d)
{
    if (!lg_dns_cluster_ready(d) || !d->changed)
        return 0;
    d->changed = 0;
    return 1;
}

int lg_dns_busy(void)
{
    for (lg_dns_cluster_t *d = all_resolvers; d != NULL; d = d->next)
        if (d->n_inflight != 0)
            return 1;
    return 0;
}

int lg_dns_tick(uint64_t now_ms)
{
    tick_changed = 0;
    static struct pollfd *pfds;
    static lg_dns_cluster_t **owners;
    static size_t cap;
    size_t n = 0;
    for (lg_dns_cluster_t *d = all_resolvers; d != NULL; d = d->next) {
        for (size_t i = 0; i != d->spec->n_targets; ++i)
            if (!d->targets[i].inflight && now_ms >= d->targets[i].due_ms)
                start(d->targets + i);
        if (d->n_inflight == 0 || !d->has_channel)
            continue;
        ares_socket_t socks[ARES_GETSOCK_MAXNUM];
        /* c-ares' ARES_GETSOCK_WRITABLE shifts a signed 1 into the sign bit */
        unsigned bits = (unsigned)ares_getsock(d->channel, socks, ARES_GETSOCK_MAXNUM);
        for (unsigned i = 0; i != ARES_GETSOCK_MAXNUM; ++i) {
            unsigned readable = bits & (1u << i), writable = bits & (1u << (i + ARES_GETSOCK_MAXNUM));
            if (!readable && !writable)
                continue;
            if (n == cap) {
                cap = cap ? cap * 2 : 16;
                pfds = lg_realloc(pfds, cap * sizeof(*pfds));
                owners = lg_realloc(owners, cap * sizeof(*owners));
            }
            pfds[n] = (struct pollfd){socks[i], (short)((readable ? POLLIN : 0) | (writable ? POLLOUT : 0)), 0};
            owners[n++] = d;
        }
    }
    if (n != 0 && poll(pfds, n, 0) > 0) {
        for (size_t i = 0; i != n; ++i) {
            short ev = pfds[i].revents;
            if (ev == 0)
                continue;
            ares_process_fd(owners[i]->channel, ev & (POLLIN | POLLERR | POLLHUP) ? pfds[i].fd : ARES_SOCKET_BAD,
                            ev & POLLOUT ? pfds[i].fd : ARES_SOCKET_BAD);
        }
    }
    for (lg_dns_cluster_t *d = all_resolvers; d != NULL; d = d->next)
        if (d->n_inflight != 0 && d->has_channel)
            ares_process_fd(d->channel, ARES_SOCKET_BAD, ARES_SOCKET_BAD); /* timeouts and retries */
    /* only this tick's changes: one that waits (a secret not there yet) is taken by a later refresh */
    int changed = tick_changed;
    tick_changed = 0;
    if (all_resolvers == NULL && cap != 0) {
        free(pfds);
        free(owners);
        pfds = NULL;
        owners = NULL;
        cap = 0;
    }
    return changed;
}

void lg_dns_shutdown(void)
{
    if (ares_ready && all_resolvers == NULL) {
        ares_library_cleanup();
        ares_ready = 0;
    }
}
