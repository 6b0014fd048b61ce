/*
 * Compiles envoy.config.listener.v3.Listener into an lg_listener_config_t,
 * and matches a new connection to one of its filter chains.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include "legate/access_log.h"
#include "legate/address.h"
#include "legate/listener.h"
#include "legate/pbjson.h"
#include "legate/stats.h"
#include "legate/strmap.h"
#include "legate/tcp_proxy.h"
#include "legate/tls.h"

typedef Envoy__Config__Listener__V3__FilterChain chain_proto_t;
typedef Envoy__Config__Listener__V3__FilterChainMatch match_proto_t;

#define HCM_TYPE "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"

static const lg_stat_def_t listener_stat_defs[] = {LG_LISTENER_STATS(LG_STAT_DEF)};

static int compile_cidrs(Envoy__Config__Core__V3__CidrRange **in, size_t n, lg_cidr_t **out, size_t *nout, const char *field,
                         lg_error_t *err)
{
    *out = lg_calloc(n ? n : 1, sizeof(**out));
    *nout = n;
    for (size_t i = 0; i != n; ++i)
        if (lg_cidr_parse(in[i], *out + i, err) != 0)
            return lg_error_prefix(err, "%s[%zu]", field, i);
    return 0;
}

static char **copy_strings(char **in, size_t n, int lower)
{
    char **out = lg_calloc(n ? n : 1, sizeof(*out));
    for (size_t i = 0; i != n; ++i) {
        out[i] = lg_strdup(in[i]);
        if (lower)
            for (char *p = out[i]; *p; ++p)
                *p = (char)tolower((unsigned char)*p);
    }
    return out;
}

static int compile_match(lg_filter_chain_match_t *o, const match_proto_t *m, lg_error_t *err)
{
    if (m == NULL) {
        o->transport_protocol = lg_strdup("");
        o->server_names = copy_strings(NULL, 0, 0);
        o->application_protocols = copy_strings(NULL, 0, 0);
        o->source_ports = lg_calloc(1, sizeof(uint32_t));
        return compile_cidrs(NULL, 0, &o->prefix_ranges, &o->n_prefix_ranges, "", err) ||
               compile_cidrs(NULL, 0, &o->source_prefix_ranges, &o->n_source_prefix_ranges, "", err) ||
               compile_cidrs(NULL, 0, &o->direct_source_prefix_ranges, &o->n_direct_source_prefix_ranges, "", err);
    }
    if (m->destination_port != NULL) {
        if (m->destination_port->value < 1 || m->destination_port->value > 65535)
            return lg_error(err, "destination_port: value must be inside range [1, 65535]");
        o->has_destination_port = 1;
        o->destination_port = m->destination_port->value;
    }
    o->server_names = copy_strings(m->server_names, m->n_server_names, 1);
    o->n_server_names = m->n_server_names;
    o->application_protocols = copy_strings(m->application_protocols, m->n_application_protocols, 0);
    o->n_application_protocols = m->n_application_protocols;
    o->transport_protocol = lg_strdup(m->transport_protocol != NULL ? m->transport_protocol : "");
    o->source_type = (int)m->source_type;
    o->source_ports = lg_calloc(m->n_source_ports ? m->n_source_ports : 1, sizeof(uint32_t));
    if (m->n_source_ports != 0)
        memcpy(o->source_ports, m->source_ports, m->n_source_ports * sizeof(uint32_t));
    o->n_source_ports = m->n_source_ports;
    for (size_t i = 0; i != o->n_server_names; ++i)
        if ((o->server_names[i][0] != '\0' && strchr(o->server_names[i] + 1, '*') != NULL) ||
            (o->server_names[i][0] == '*' && o->server_names[i][1] != '.'))
            return lg_error(err, "server_names[%zu]: partial wildcards are not supported", i);
    if (compile_cidrs(m->prefix_ranges, m->n_prefix_ranges, &o->prefix_ranges, &o->n_prefix_ranges, "prefix_ranges", err) != 0 ||
        compile_cidrs(m->source_prefix_ranges, m->n_source_prefix_ranges, &o->source_prefix_ranges, &o->n_source_prefix_ranges,
                      "source_prefix_ranges", err) != 0 ||
        compile_cidrs(m->direct_source_prefix_ranges, m->n_direct_source_prefix_ranges, &o->direct_source_prefix_ranges,
                      &o->n_direct_source_prefix_ranges, "direct_source_prefix_ranges", err) != 0)
        return -1;
    return 0;
}

/* The tcp_proxy network filter: terminal, like the HCM. */
static int compile_tcp_proxy(lg_filter_chain_t *o, const Envoy__Config__Listener__V3__Filter *f, size_t i, int is_last,
                             lg_error_t *err)
{
    if (!is_last)
        return lg_error(err, "filters[%zu]: the tcp_proxy filter must be the last network filter", i);
    Envoy__Extensions__Filters__Network__TcpProxy__V3__TcpProxy *tp =
        (void *)lg_any_unpack(f->typed_config, &envoy__extensions__filters__network__tcp_proxy__v3__tcp_proxy__descriptor, err);
    if (tp == NULL)
        return lg_error_prefix(err, "filters[%zu].typed_config", i);
    o->kind = LG_NETWORK_FILTER_TCP_PROXY;
    o->tcp_proxy = lg_tcp_proxy_config_compile(tp, err);
    protobuf_c_message_free_unpacked(&tp->base, NULL);
    if (o->tcp_proxy == NULL)
        return lg_error_prefix(err, "filters[%zu].typed_config", i);
    return 0;
}

/* FNV-1a of the serialized chain (xDS: unchanged chains keep their connections). */
static uint64_t chain_hash(const chain_proto_t *m)
{
    size_t len = protobuf_c_message_get_packed_size(&m->base);
    uint8_t *buf = lg_malloc(len + 1);
    protobuf_c_message_pack(&m->base, buf);
    uint64_t h = lg_fnv1a(LG_FNV1A_INIT, buf, len);
    free(buf);
    return h;
}

/* transport_socket (TLS or raw_buffer) and its connect timeout; ssl stats go under the listener's prefix. */
static int compile_transport_socket(lg_filter_chain_t *o, const chain_proto_t *m, const char *stats_prefix, lg_error_t *err)
{
    if (lg_tls_transport_socket_compile(m->transport_socket, LG_TLS_SERVER, stats_prefix, &o->tls, err) != 0)
        return lg_error_prefix(err, "transport_socket");
    o->transport_socket_connect_timeout_ms = lg_duration_ms(m->transport_socket_connect_timeout, 0);
    return 0;
}

static int compile_chain(lg_filter_chain_t *o, const chain_proto_t *m, const lg_hcm_compile_ctx_t *ctx, const char *stats_prefix,
                         lg_error_t *err)
{
    o->name = lg_strdup(m->name != NULL ? m->name : "");
    o->hash = chain_hash(m);
    if (compile_match(&o->match, m->filter_chain_match, err) != 0)
        return lg_error_prefix(err, "filter_chain_match");
    if (compile_transport_socket(o, m, stats_prefix, err) != 0)
        return -1;
    if (m->n_filters == 0)
        return lg_error(err, "filters: a filter chain needs at least one network filter");
    for (size_t i = 0; i != m->n_filters; ++i) {
        const Envoy__Config__Listener__V3__Filter *f = m->filters[i];
        const char *url =
            f->config_type_case == ENVOY__CONFIG__LISTENER__V3__FILTER__CONFIG_TYPE_TYPED_CONFIG ? f->typed_config->type_url : "";
        const char *slash = strrchr(url, '/');
        const char *type = slash != NULL ? slash + 1 : url;
        if (strcmp(type, LG_TCP_PROXY_TYPE) == 0) {
            if (compile_tcp_proxy(o, f, i, i + 1 == m->n_filters, err) != 0)
                return -1;
            continue;
        }
        if (strcmp(type, HCM_TYPE) != 0)
            return lg_error(err, "filters[%zu]: Didn't find a registered implementation for '%s' with type URL: '%s'", i, f->name,
                            type);
        if (i + 1 != m->n_filters)
            return lg_error(err, "filters[%zu]: the HTTP connection manager must be the last network filter", i);
        Envoy__Extensions__Filters__Network__HttpConnectionManager__V3__HttpConnectionManager *hcm = (void *)lg_any_unpack(
            f->typed_config, &envoy__extensions__filters__network__http_connection_manager__v3__http_connection_manager__descriptor,
            err);
        if (hcm == NULL)
            return lg_error_prefix(err, "filters[%zu].typed_config", i);
        o->kind = LG_NETWORK_FILTER_HCM;
        o->hcm = lg_hcm_config_compile(hcm, ctx, err);
        protobuf_c_message_free_unpacked(&hcm->base, NULL);
        if (o->hcm == NULL)
            return lg_error_prefix(err, "filters[%zu].typed_config", i);
        lg_hcm_config_set_listener(o->hcm, stats_prefix);
    }
    return 0;
}

static void free_chain(lg_filter_chain_t *c)
{
    lg_filter_chain_match_t *m = &c->match;
    for (size_t i = 0; i != m->n_server_names; ++i)
        free(m->server_names[i]);
    for (size_t i = 0; i != m->n_application_protocols; ++i)
        free(m->application_protocols[i]);
    free(m->server_names);
    free(m->application_protocols);
    free(m->transport_protocol);
    free(m->prefix_ranges);
    free(m->source_prefix_ranges);
    free(m->direct_source_prefix_ranges);
    free(m->source_ports);
    lg_hcm_config_free(c->hcm);
    lg_tcp_proxy_config_free(c->tcp_proxy);
    lg_tls_context_release(c->tls);
    free(c->name);
}

/* ---- overlapping matches ----
 * Envoy files a chain in its match tree under every combination of its criteria's
 * values (destination port, destination range, server name, transport protocol,
 * ALPN, direct source range, source type, source range, source port; an empty list
 * is the one value "any") and rejects a listener in which two chains, or one chain
 * twice, land on the same leaf. The leaves are hashed here, so the check costs one
 * pass over them. */

enum { DIM_PORT, DIM_DST, DIM_SNI, DIM_TRANSPORT, DIM_ALPN, DIM_DIRECT_SRC, DIM_TYPE, DIM_SRC, DIM_SRC_PORT, N_DIMS };

/* The number of values of criterion d (an empty list is one: "any"). */
static size_t dim_size(const lg_filter_chain_match_t *m, int d)
{
    size_t n = 1;
    switch (d) {
    case DIM_DST:
        n = m->n_prefix_ranges;
        break;
    case DIM_SNI:
        n = m->n_server_names;
        break;
    case DIM_ALPN:
        n = m->n_application_protocols;
        break;
    case DIM_DIRECT_SRC:
        n = m->n_direct_source_prefix_ranges;
        break;
    case DIM_SRC:
        n = m->n_source_prefix_ranges;
        break;
    case DIM_SRC_PORT:
        n = m->n_source_ports;
        break;
    }
    return n != 0 ? n : 1;
}

/* Value k of criterion d as Envoy keys its tree with it: "any" is the empty key (the
 * empty string, or port 0), "*.x" is ".x". Numbers go through *num. */
static h2o_iovec_t dim_key(const lg_filter_chain_match_t *m, int d, size_t k, uint32_t *num)
{
    const lg_cidr_t *cidrs = NULL;
    size_t n = 0;
    switch (d) {
    case DIM_PORT:
        *num = m->has_destination_port ? m->destination_port : 0;
        return h2o_iovec_init(num, sizeof(*num));
    case DIM_TYPE:
        *num = (uint32_t)m->source_type;
        return h2o_iovec_init(num, sizeof(*num));
    case DIM_SRC_PORT:
        *num = m->n_source_ports != 0 ? m->source_ports[k] : 0;
        return h2o_iovec_init(num, sizeof(*num));
    case DIM_TRANSPORT:
        return h2o_iovec_init(m->transport_protocol, strlen(m->transport_protocol));
    case DIM_SNI:
        if (m->n_server_names == 0)
            return h2o_iovec_init("", 0);
        return h2o_iovec_init(m->server_names[k] + (m->server_names[k][0] == '*'),
                              strlen(m->server_names[k]) - (m->server_names[k][0] == '*'));
    case DIM_ALPN:
        if (m->n_application_protocols == 0)
            return h2o_iovec_init("", 0);
        return h2o_iovec_init(m->application_protocols[k], strlen(m->application_protocols[k]));
    case DIM_DST:
        cidrs = m->prefix_ranges, n = m->n_prefix_ranges;
        break;
    case DIM_DIRECT_SRC:
        cidrs = m->direct_source_prefix_ranges, n = m->n_direct_source_prefix_ranges;
        break;
    default:
        cidrs = m->source_prefix_ranges, n = m->n_source_prefix_ranges;
        break;
    }
    return n != 0 ? h2o_iovec_init(cidrs + k, sizeof(*cidrs)) : h2o_iovec_init("", 0);
}

static int same_key(const lg_filter_chain_match_t *a, size_t ka, const lg_filter_chain_match_t *b, size_t kb, int d)
{
    uint32_t na, nb;
    h2o_iovec_t x = dim_key(a, d, ka, &na), y = dim_key(b, d, kb, &nb);
    return h2o_memis(x.base, x.len, y.base, y.len);
}

/* One leaf: a chain and the index of its value in each criterion. */
typedef struct st_match_leaf_t {
    uint64_t hash;
    uint32_t chain;
    uint32_t k[N_DIMS];
} match_leaf_t;

static uint64_t leaf_hash(const lg_filter_chain_match_t *m, const uint32_t *k)
{
    uint64_t h = LG_FNV1A_INIT;
    for (int d = 0; d != N_DIMS; ++d) {
        uint32_t num;
        h2o_iovec_t v = dim_key(m, d, k[d], &num);
        h = lg_fnv1a(lg_fnv1a(h, &v.len, sizeof(v.len)), v.base, v.len);
    }
    return h;
}

/* Leaves by hash (open addressing; slots hold index + 1). */
struct st_lg_match_tree_t {
    H2O_VECTOR(match_leaf_t) leaves;
    uint32_t *slots;
    size_t mask;
};

lg_match_tree_t *lg_match_tree_new(void)
{
    return lg_calloc(1, sizeof(lg_match_tree_t));
}

static void tree_grow(lg_match_tree_t *t)
{
    size_t cap = t->slots == NULL ? 64 : 2 * (t->mask + 1);
    free(t->slots);
    t->slots = lg_calloc(cap, sizeof(*t->slots));
    t->mask = cap - 1;
    for (size_t i = 0; i != t->leaves.size; ++i) {
        size_t s = (size_t)t->leaves.entries[i].hash & t->mask;
        while (t->slots[s] != 0)
            s = (s + 1) & t->mask;
        t->slots[s] = (uint32_t)i + 1;
    }
}

ssize_t lg_match_tree_add(lg_match_tree_t *t, const lg_filter_chain_t *chains, size_t i)
{
    const lg_filter_chain_match_t *m = &chains[i].match;
    uint32_t k[N_DIMS] = {0};
    for (;;) {
        if (2 * (t->leaves.size + 1) > t->mask + 1 || t->slots == NULL)
            tree_grow(t);
        uint64_t h = leaf_hash(m, k);
        size_t s = (size_t)h & t->mask;
        for (; t->slots[s] != 0; s = (s + 1) & t->mask) {
            const match_leaf_t *o = t->leaves.entries + t->slots[s] - 1;
            int d = 0;
            while (o->hash == h && d != N_DIMS && same_key(&chains[o->chain].match, o->k[d], m, k[d], d))
                ++d;
            if (d == N_DIMS)
                return (ssize_t)o->chain;
        }
        h2o_vector_reserve(NULL, &t->leaves, t->leaves.size + 1);
        match_leaf_t *leaf = t->leaves.entries + t->leaves.size;
        leaf->hash = h;
        leaf->chain = (uint32_t)i;
        memcpy(leaf->k, k, sizeof(k));
        t->slots[s] = (uint32_t)++t->leaves.size;
        int d = N_DIMS - 1; /* the next combination */
        for (; d >= 0 && ++k[d] == dim_size(m, d); --d)
            k[d] = 0;
        if (d < 0)
            return -1;
    }
}

void lg_match_tree_free(lg_match_tree_t *t)
{
    if (t == NULL)
        return;
    free(t->leaves.entries);
    free(t->slots);
    free(t);
}

/* Whether two FilterChainMatch messages are equal (Envoy's duplicate-matcher check
 * compares the messages; their serializations are canonical here). */
static int same_match_proto(const match_proto_t *a, const match_proto_t *b)
{
    size_t la = a != NULL ? protobuf_c_message_get_packed_size(&a->base) : 0;
    size_t lb = b != NULL ? protobuf_c_message_get_packed_size(&b->base) : 0;
    if (la != lb)
        return 0;
    if (la == 0)
        return 1;
    uint8_t *x = lg_malloc(2 * la);
    protobuf_c_message_pack(&a->base, x);
    protobuf_c_message_pack(&b->base, x + la);
    int same = memcmp(x, x + la, la) == 0;
    free(x);
    return same;
}

static const lg_stat_def_t tls_inspector_stat_defs[] = {LG_TLS_INSPECTOR_STATS(LG_STAT_DEF)};

/* Listener filters: only tls_inspector, which the accept path runs itself. */
static int compile_listener_filters(lg_listener_config_t *l, const Envoy__Config__Listener__V3__Listener *m, lg_error_t *err)
{
    for (size_t i = 0; i != m->n_listener_filters; ++i) {
        const char *name = m->listener_filters[i]->name;
        if (strcmp(name, "envoy.filters.listener.tls_inspector") != 0 && strcmp(name, "envoy.listener.tls_inspector") != 0)
            return lg_error(err, "listener_filters[%zu]: '%s' is not supported", i, name);
        l->tls_inspector = 1;
    }
    l->listener_filters_timeout_ms = lg_duration_ms(m->listener_filters_timeout, 15000);
    l->continue_on_listener_filters_timeout = m->continue_on_listener_filters_timeout;
    l->bypass_overload_manager = m->bypass_overload_manager;
    if (l->tls_inspector)
        l->tls_inspector_stats =
            lg_stats_block_new("tls_inspector.", tls_inspector_stat_defs, LG_ARRAY_SIZE(tls_inspector_stat_defs));
    return 0;
}

lg_listener_config_t *lg_listener_config_compile(const Envoy__Config__Listener__V3__Listener *m, const lg_hcm_compile_ctx_t *ctx,
                                                 lg_error_t *err)
{
    lg_listener_config_t *l = lg_calloc(1, sizeof(*l));
    char addr[256];
    l->refcnt = 1;
    if (lg_address_from_proto(m->address, &l->addr, &l->addrlen, err) != 0) {
        lg_error_prefix(err, "address");
        goto fail;
    }
    lg_address_format((struct sockaddr *)&l->addr, l->addrlen, addr, sizeof(addr));
    l->address_str = lg_strdup(addr);
    l->name = lg_strdup(m->name != NULL && m->name[0] != '\0' ? m->name : addr);
    l->connection_limit_key = lg_malloc(strlen(l->name) + sizeof("envoy.resource_limits.listener..connection_limit"));
    sprintf(l->connection_limit_key, "envoy.resource_limits.listener.%s.connection_limit", l->name);
    l->buffer_limit = LG_WRAPPED(m->per_connection_buffer_limit_bytes, 1024 * 1024);
    if (m->api_listener != NULL) {
        lg_error(err, "api_listener: API listeners are not supported");
        goto fail;
    }
    if (m->n_filter_chains == 0 && m->default_filter_chain == NULL) {
        lg_error(err, "error adding listener '%s': no filter chains specified", addr);
        goto fail;
    }
    char prefix[300];
    snprintf(prefix, sizeof(prefix), "listener.%s.", m->stat_prefix != NULL && m->stat_prefix[0] ? m->stat_prefix : addr);
    /* Envoy's stat names have no ':' ("listener.127.0.0.1_10000.") */
    for (char *p = prefix; *p != '\0'; ++p)
        if (*p == ':')
            *p = '_';
    if (compile_listener_filters(l, m, err) != 0)
        goto fail;
    l->chains = lg_calloc(m->n_filter_chains ? m->n_filter_chains : 1, sizeof(*l->chains));
    lg_match_tree_t *tree = lg_match_tree_new();
    for (size_t i = 0; i != m->n_filter_chains; ++i) {
        if (compile_chain(l->chains + i, m->filter_chains[i], ctx, prefix, err) != 0) {
            l->n_chains = i + 1;
            lg_error_prefix(err, "filter_chains[%zu]", i);
            lg_match_tree_free(tree);
            goto fail;
        }
        l->n_chains = i + 1;
        /* an earlier chain with the same match holds every leaf of this one: the first found is it */
        ssize_t j = lg_match_tree_add(tree, l->chains, i);
        if (j >= 0) {
            if ((size_t)j != i &&
                same_match_proto(m->filter_chains[j]->filter_chain_match, m->filter_chains[i]->filter_chain_match))
                lg_error(err, "error adding listener '%s': filter chain '%s' has the same matching rules defined as '%s'", addr,
                         l->chains[i].name, l->chains[j].name);
            else
                lg_error(err, "error adding listener '%s': multiple filter chains with overlapping matching rules are defined",
                         addr);
            lg_match_tree_free(tree);
            goto fail;
        }
    }
    lg_match_tree_free(tree);
    if (m->default_filter_chain != NULL) {
        l->default_chain = lg_calloc(1, sizeof(*l->default_chain));
        if (compile_chain(l->default_chain, m->default_filter_chain, ctx, prefix, err) != 0) {
            lg_error_prefix(err, "default_filter_chain");
            goto fail;
        }
    }
    if (m->n_access_log != 0) {
        l->access_logs = lg_calloc(1, sizeof(*l->access_logs));
        if (lg_access_logs_compile(m->access_log, m->n_access_log, l->access_logs, err) != 0) {
            free(l->access_logs);
            l->access_logs = NULL;
            goto fail;
        }
    }
    lg_listener_index_chains(l);
    l->stats = lg_stats_block_new(prefix, listener_stat_defs, LG_ARRAY_SIZE(listener_stat_defs));
    return l;
fail:
    lg_listener_config_release(l);
    return NULL;
}

lg_listener_config_t *lg_listener_config_addref(lg_listener_config_t *l)
{
    __atomic_add_fetch(&l->refcnt, 1, __ATOMIC_RELAXED);
    return l;
}

void lg_listener_config_release(lg_listener_config_t *l)
{
    if (l == NULL || __atomic_sub_fetch(&l->refcnt, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    for (size_t i = 0; i != l->n_chains; ++i)
        free_chain(l->chains + i);
    free(l->chains);
    lg_listener_sni_index_free(l->sni_index);
    if (l->default_chain != NULL) {
        free_chain(l->default_chain);
        free(l->default_chain);
    }
    if (l->stats != NULL)
        lg_stats_block_release(l->stats);
    if (l->tls_inspector_stats != NULL)
        lg_stats_block_release(l->tls_inspector_stats);
    if (l->access_logs != NULL) {
        lg_access_logs_dispose(l->access_logs);
        free(l->access_logs);
    }
    free(l->name);
    free(l->address_str);
    free(l->connection_limit_key);
    free(l);
}

/* ---- filter chain matching ---- */

static int ip_of(const struct sockaddr *sa)
{
    return sa != NULL && (sa->sa_family == AF_INET || sa->sa_family == AF_INET6);
}

/* Longest matching prefix length among ranges, -1 when none matches; 0 ranges = wildcard (-2). */
static int best_prefix(const lg_cidr_t *r, size_t n, const struct sockaddr *sa)
{
    if (n == 0)
        return -2;
    int best = -1;
    if (!ip_of(sa))
        return -1;
    for (size_t i = 0; i != n; ++i)
        if (lg_cidr_contains(r + i, sa) && (int)r[i].prefix_len > best)
            best = (int)r[i].prefix_len;
    return best;
}

static int server_name_score(const lg_filter_chain_match_t *m, const char *sni)
{
    if (m->n_server_names == 0)
        return 0;
    if (sni == NULL)
        return -1;
    int best = -1;
    for (size_t i = 0; i != m->n_server_names; ++i) {
        const char *n = m->server_names[i];
        if (strcasecmp(n, sni) == 0)
            return 100000;
        if (n[0] == '*') {
            size_t nl = strlen(n) - 1, sl = strlen(sni);
            if (sl > nl && strcasecmp(sni + sl - nl, n + 1) == 0 && (int)nl > best)
                best = (int)nl;
        }
    }
    return best;
}

/* Narrows candidates by one criterion: keeps those with the highest score;
 * a score < 0 never matches. */
typedef int (*score_cb)(const lg_filter_chain_t *c, const lg_conn_match_info_t *info);

static size_t narrow(const lg_filter_chain_t **cand, size_t n, score_cb score, const lg_conn_match_info_t *info)
{
    int best = -1;
    size_t out = 0;
    for (size_t i = 0; i != n; ++i) {
        int s = score(cand[i], info);
        if (s > best) {
            best = s;
            out = 0;
        }
        if (s == best && s >= 0)
            cand[out++] = cand[i];
    }
    return best < 0 ? 0 : out;
}

static int score_port(const lg_filter_chain_t *c, const lg_conn_match_info_t *i)
{
    if (!c->match.has_destination_port)
        return 0;
    return c->match.destination_port == lg_address_port(i->local) ? 1 : -1;
}

static int score_dst_ip(const lg_filter_chain_t *c, const lg_conn_match_info_t *i)
{
    int p = best_prefix(c->match.prefix_ranges, c->match.n_prefix_ranges, i->local);
    return p == -2 ? 0 : p < 0 ? -1 : p + 1;
}

static int score_sni(const lg_filter_chain_t *c, const lg_conn_match_info_t *i)
{
    int s = server_name_score(&c->match, i->server_name);
    return s < 0 ? -1 : s;
}

static int score_transport(const lg_filter_chain_t *c, const lg_conn_match_info_t *i)
{
    if (c->match.transport_protocol[0] == '\0')
        return 0;
    return strcmp(c->match.transport_protocol, i->transport_protocol) == 0 ? 1 : -1;
}

static int score_alpn(const lg_filter_chain_t *c, const lg_conn_match_info_t *i)
{
    if (c->match.n_application_protocols == 0)
        return 0;
    for (size_t a = 0; a != c->match.n_application_protocols; ++a)
        for (size_t b = 0; b != i->n_alpn; ++b)
            if (strcmp(c->match.application_protocols[a], i->alpn[b]) == 0)
                return 1;
    return -1;
}

static int score_direct_src(const lg_filter_chain_t *c, const lg_conn_match_info_t *i)
{
    int p = best_prefix(c->match.direct_source_prefix_ranges, c->match.n_direct_source_prefix_ranges, i->remote);
    return p == -2 ? 0 : p < 0 ? -1 : p + 1;
}

static int score_src_type(const lg_filter_chain_t *c, const lg_conn_match_info_t *i)
{
    if (c->match.source_type == 0)
        return 0;
    int local =
        lg_address_is_loopback(i->remote) ||
        (i->remote->sa_family == i->local->sa_family && i->remote->sa_family == AF_INET &&
         ((const struct sockaddr_in *)i->remote)->sin_addr.s_addr == ((const struct sockaddr_in *)i->local)->sin_addr.s_addr);
    return (c->match.source_type == 1) == local ? 1 : -1;
}

static int score_src_ip(const lg_filter_chain_t *c, const lg_conn_match_info_t *i)
{
    int p = best_prefix(c->match.source_prefix_ranges, c->match.n_source_prefix_ranges, i->remote);
    return p == -2 ? 0 : p < 0 ? -1 : p + 1;
}

static int score_src_port(const lg_filter_chain_t *c, const lg_conn_match_info_t *i)
{
    if (c->match.n_source_ports == 0)
        return 0;
    for (size_t k = 0; k != c->match.n_source_ports; ++k)
        if (c->match.source_ports[k] == lg_address_port(i->remote))
            return 1;
    return -1;
}

/* ---- the server-name index ---- */

#define SNI_INDEX_MIN_CHAINS 16

/* The chains (ascending indexes) listing one server name, or one wildcard's suffix (".x" of "*.x"). */
typedef struct st_sni_entry_t {
    const char *key; /* borrowed from the chain's match */
    uint32_t *chains;
    size_t n;
} sni_entry_t;

struct st_lg_sni_index_t {
    lg_strmap_t exact, wild; /* of sni_entry_t */
    uint32_t *no_names;      /* chains without server_names */
    size_t n_no_names;
};

static const char *sni_key(const void *v)
{
    return ((const sni_entry_t *)v)->key;
}

static void sni_add(lg_strmap_t *m, const char *key, uint32_t chain)
{
    sni_entry_t *e = lg_strmap_get(m, key);
    if (e == NULL) {
        e = lg_calloc(1, sizeof(*e));
        e->key = key;
        lg_strmap_put(m, e);
    }
    if (e->n != 0 && e->chains[e->n - 1] == chain)
        return; /* the chain lists the name twice */
    e->chains = lg_realloc(e->chains, (e->n + 1) * sizeof(*e->chains));
    e->chains[e->n++] = chain;
}

static void sni_map_dispose(lg_strmap_t *m)
{
    for (size_t i = 0; m->slots != NULL && i <= m->mask; ++i)
        if (m->slots[i] != NULL) {
            free(((sni_entry_t *)m->slots[i])->chains);
            free(m->slots[i]);
        }
    lg_strmap_dispose(m);
}

void lg_listener_sni_index_free(struct st_lg_sni_index_t *x)
{
    if (x == NULL)
        return;
    sni_map_dispose(&x->exact);
    sni_map_dispose(&x->wild);
    free(x->no_names);
    free(x);
}

void lg_listener_index_chains(lg_listener_config_t *l)
{
    if (l->n_chains < SNI_INDEX_MIN_CHAINS)
        return;
    for (size_t i = 0; i != l->n_chains; ++i)
        if (l->chains[i].match.has_destination_port || l->chains[i].match.n_prefix_ranges != 0)
            return; /* the server-name step would not see every chain */
    struct st_lg_sni_index_t *x = lg_calloc(1, sizeof(*x));
    lg_strmap_init(&x->exact, sni_key);
    lg_strmap_init(&x->wild, sni_key);
    x->no_names = lg_malloc(l->n_chains * sizeof(*x->no_names));
    for (size_t i = 0; i != l->n_chains; ++i) {
        const lg_filter_chain_match_t *m = &l->chains[i].match;
        if (m->n_server_names == 0)
            x->no_names[x->n_no_names++] = (uint32_t)i;
        for (size_t k = 0; k != m->n_server_names; ++k) {
            const char *name = m->server_names[k]; /* lower-case; a wildcard is "*.x" */
            if (name[0] == '*')
                sni_add(&x->wild, name + 1, (uint32_t)i);
            else
                sni_add(&x->exact, name, (uint32_t)i);
        }
    }
    l->sni_index = x;
}

/* The chains that win the server-name step (as score_sni over every chain
 * would pick them): those naming the SNI, else those with the longest
 * wildcard suffix of it, else those without server_names. 0 when the SNI
 * is too long for the index (the caller matches without it). */
static int sni_candidates(const struct st_lg_sni_index_t *x, const char *sni, const uint32_t **chains, size_t *n)
{
    char buf[256];
    size_t len = sni != NULL ? strlen(sni) : 0;
    if (sni != NULL && (len == 0 || len >= sizeof(buf)))
        return 0;
    *chains = x->no_names;
    *n = x->n_no_names;
    if (sni == NULL)
        return 1;
    for (size_t i = 0; i != len + 1; ++i)
        buf[i] = (char)tolower((unsigned char)sni[i]);
    const sni_entry_t *e = lg_strmap_get(&x->exact, buf);
    for (size_t i = 1; i < len && e == NULL; ++i) /* the longest suffix first: ".b.c" before ".c" of "a.b.c" */
        if (buf[i] == '.')
            e = lg_strmap_get(&x->wild, buf + i);
    if (e != NULL) {
        *chains = e->chains;
        *n = e->n;
    }
    return 1;
}

const lg_filter_chain_t *lg_listener_match_chain(const lg_listener_config_t *l, const lg_conn_match_info_t *info)
{
    static const score_cb order[] = {score_port,       score_dst_ip,   score_sni,    score_transport, score_alpn,
                                     score_direct_src, score_src_type, score_src_ip, score_src_port};
    const uint32_t *idx;
    size_t n = l->n_chains, k = 0;
    if (l->sni_index != NULL && sni_candidates(l->sni_index, info->server_name, &idx, &n))
        k = 3; /* port and address match every chain; the server-name step is done */
    const lg_filter_chain_t *stack[16], **cand = n <= 16 ? stack : lg_malloc(n * sizeof(*cand));
    for (size_t i = 0; i != n; ++i)
        cand[i] = l->chains + (k != 0 ? idx[i] : i);
    for (; k != LG_ARRAY_SIZE(order) && n != 0; ++k)
        n = narrow(cand, n, order[k], info);
    const lg_filter_chain_t *found = n != 0 ? cand[0] : l->default_chain;
    if (cand != stack)
        free((void *)cand);
    return found;
}
