/*
 * The SDS secrets that listeners and clusters name: every SdsSecretConfig
 * with an sds_config in a TLS transport socket (tls_certificate_sds_secret_configs,
 * validation_context_sds_secret_config, combined_validation_context) becomes a
 * subscription to that secret name, which the listener or cluster warms on.
 * SdsSecretConfigs without an sds_config name static secrets and need nothing.
 */
#include "xds_internal.h"
#include "legate/pbjson.h"
#include "envoy/extensions/transport_sockets/tls/v3/tls.pb-c.h"

#define TLS_TYPE_DOWNSTREAM "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
#define TLS_TYPE_UPSTREAM "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"

typedef Envoy__Extensions__TransportSockets__Tls__V3__CommonTlsContext common_proto_t;
typedef Envoy__Extensions__TransportSockets__Tls__V3__SdsSecretConfig sds_proto_t;

typedef struct st_refs_t {
    lg_xds_t *x;
    lg__xds_sub_t *parent;
    lg__xds_rds_ref_t *refs;
    size_t n;
} refs_t;

static int add_ref(refs_t *r, const sds_proto_t *sds, lg_error_t *err)
{
    if (sds == NULL || sds->sds_config == NULL)
        return 0;
    for (size_t i = 0; i != r->n; ++i)
        if (strcmp(r->refs[i].name, sds->name) == 0)
            return 0;
    if (sds->name[0] == '\0')
        return lg_error(err, "name: an SdsSecretConfig with an sds_config needs a name");
    lg__xds_sub_t *sub = lg__xds_subscribe(r->x, LG_XDS_SDS, sds->sds_config, r->parent, err);
    if (sub == NULL)
        return lg_error_prefix(err, "sds_config");
    char *prefix = lg_malloc(strlen(sds->name) + sizeof("sds.."));
    sprintf(prefix, "sds.%s.", sds->name);
    lg_stats_block_t *stats = lg_stats_block_new(prefix, lg__xds_sub_stat_defs, LG__XDS_SUB__COUNT);
    free(prefix);
    r->refs = lg_realloc(r->refs, (r->n + 1) * sizeof(*r->refs));
    r->refs[r->n++] = (lg__xds_rds_ref_t){lg_strdup(sds->name), sub, stats};
    return 0;
}

static int common_refs(refs_t *r, const common_proto_t *c, lg_error_t *err)
{
    for (size_t i = 0; i != c->n_tls_certificate_sds_secret_configs; ++i)
        if (add_ref(r, c->tls_certificate_sds_secret_configs[i], err) != 0)
            return lg_error_prefix(err, "common_tls_context.tls_certificate_sds_secret_configs[%zu]", i);
    if (add_ref(r, c->validation_context_sds_secret_config, err) != 0)
        return lg_error_prefix(err, "common_tls_context.validation_context_sds_secret_config");
    if (c->combined_validation_context != NULL &&
        add_ref(r, c->combined_validation_context->validation_context_sds_secret_config, err) != 0)
        return lg_error_prefix(err, "common_tls_context.combined_validation_context.validation_context_sds_secret_config");
    return 0;
}

/* The refs of one transport_socket; anything but a TLS context has none
 * (and a malformed one is left to the TLS compiler to report). */
static int transport_refs(refs_t *r, const Envoy__Config__Core__V3__TransportSocket *ts, lg_error_t *err)
{
    if (ts == NULL || ts->config_type_case != ENVOY__CONFIG__CORE__V3__TRANSPORT_SOCKET__CONFIG_TYPE_TYPED_CONFIG)
        return 0;
    const char *type = lg_type_url_name(ts->typed_config->type_url);
    const ProtobufCMessageDescriptor *desc;
    if (strcmp(type, TLS_TYPE_DOWNSTREAM) == 0)
        desc = &envoy__extensions__transport_sockets__tls__v3__downstream_tls_context__descriptor;
    else if (strcmp(type, TLS_TYPE_UPSTREAM) == 0)
        desc = &envoy__extensions__transport_sockets__tls__v3__upstream_tls_context__descriptor;
    else
        return 0;
    lg_error_t ignored;
    ProtobufCMessage *m = lg_any_unpack(ts->typed_config, desc, &ignored);
    if (m == NULL)
        return 0;
    const common_proto_t *c = desc == &envoy__extensions__transport_sockets__tls__v3__downstream_tls_context__descriptor
                                  ? ((Envoy__Extensions__TransportSockets__Tls__V3__DownstreamTlsContext *)m)->common_tls_context
                                  : ((Envoy__Extensions__TransportSockets__Tls__V3__UpstreamTlsContext *)m)->common_tls_context;
    int rc = c != NULL ? common_refs(r, c, err) : 0;
    protobuf_c_message_free_unpacked(m, NULL);
    return rc != 0 ? lg_error_prefix(err, "transport_socket.typed_config") : 0;
}

static int fail(refs_t *r)
{
    lg__xds_refs_free(r->refs, r->n);
    return -1;
}

int lg__xds_listener_sds(lg_xds_t *x, lg__xds_sub_t *parent, const Envoy__Config__Listener__V3__Listener *m,
                         lg__xds_rds_ref_t **out, size_t *n, lg_error_t *err)
{
    refs_t r = {x, parent, NULL, 0};
    for (size_t i = 0; i != m->n_filter_chains; ++i)
        if (transport_refs(&r, m->filter_chains[i]->transport_socket, err) != 0) {
            lg_error_prefix(err, "filter_chains[%zu]", i);
            return fail(&r);
        }
    if (m->default_filter_chain != NULL && transport_refs(&r, m->default_filter_chain->transport_socket, err) != 0) {
        lg_error_prefix(err, "default_filter_chain");
        return fail(&r);
    }
    *out = r.refs;
    *n = r.n;
    return 0;
}

int lg__xds_cluster_sds(lg_xds_t *x, lg__xds_sub_t *parent, const Envoy__Config__Cluster__V3__Cluster *m, lg__xds_rds_ref_t **out,
                        size_t *n, lg_error_t *err)
{
    refs_t r = {x, parent, NULL, 0};
    if (transport_refs(&r, m->transport_socket, err) != 0)
        return fail(&r);
    for (size_t i = 0; i != m->n_transport_socket_matches; ++i)
        if (transport_refs(&r, m->transport_socket_matches[i]->transport_socket, err) != 0) {
            lg_error_prefix(err, "transport_socket_matches[%zu]", i);
            return fail(&r);
        }
    *out = r.refs;
    *n = r.n;
    return 0;
}
