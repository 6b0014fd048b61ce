/*
 * gRPC transports over gRPC core's C API: one bidirectional stream per mux,
 * either ADS (every type on one stream) or a per-type service
 * (ClusterDiscoveryService/StreamClusters, ...), SotW or delta.
 *
 * The control thread drives it all through one completion queue (drained by
 * lg__xds_grpc_poll). A mux has at most one call; each call has at most one
 * operation of each kind in flight (start, status, receive, send), whose
 * tags are embedded in the mux. Requests are not queued as bytes: a type
 * that needs a request is flagged, and the request is built from the
 * current state when the stream can send, as Envoy's GrpcMux does (so a
 * burst of changes yields one request with the latest names, version and
 * nonce).
 *
 * A stream that closes is retried with Envoy's jittered exponential backoff
 * (base 500 ms, max 30 s, reset by a received response); the config it
 * delivered stays in use meanwhile. On a new stream SotW requests carry the
 * last accepted versions, delta requests the versions of every resource
 * held (initial_resource_versions).
 */
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include "xds_internal.h"
#include "legate/pbjson.h"
#include "legate/protobuf.h"
#include "google/rpc/status.pb-c.h"

#define BACKOFF_BASE_MS 500
#define BACKOFF_MAX_MS 30000
#define GRPC_STATUS_INTERNAL 13
/* Control planes (istiod, Envoy Gateway) key behaviour off the node's
 * user_agent_name: Legate speaks Envoy's protocol and says "envoy", with
 * user_agent_build_version from its Envoy-compatible version (1.28.0). */
#define USER_AGENT_NAME "envoy"

enum { OP_START, OP_STATUS, OP_RECV, OP_SEND, OP__COUNT };

typedef struct st_grpc_mux_t grpc_mux_t;

typedef struct st_op_tag_t {
    grpc_mux_t *mux;
    int kind;
} op_tag_t;

/* A name -> version entry of the delta state. */
typedef struct st_version_t {
    char *name;
    char *version;
} version_t;

typedef struct st_type_state_t {
    unsigned pending : 1;      /* a request is due */
    unsigned sent_initial : 1; /* the first request of this stream went out */
    char *nonce;               /* of the last response */
    char *nack;                /* error_detail for the next request, or NULL */
    /* delta */
    lg_strmap_t versions;   /* version_t: what we hold */
    lg_strmap_t subscribed; /* version_t (version unused): names the server knows we want */
} type_state_t;

struct st_grpc_mux_t {
    lg__xds_mux_t super;
    unsigned ads : 1;
    unsigned delta : 1;
    unsigned node_on_first_only : 1;
    unsigned node_sent : 1;
    unsigned shutting_down : 1;
    unsigned holding : 1;
    char *target;
    char *target_desc;                           /* for logs: the cluster name or target URI */
    char *root_certs, *private_key, *cert_chain; /* google_grpc ssl_credentials, or NULL: insecure */
    int tls;
    grpc_metadata *metadata; /* GrpcService.initial_metadata */
    size_t n_metadata;
    grpc_channel *channel;
    grpc_call *call;
    size_t in_flight; /* operations of `call` not completed yet */
    op_tag_t tags[OP__COUNT];
    grpc_metadata_array recv_md, trailing_md;
    grpc_status_code status;
    grpc_slice status_details;
    grpc_byte_buffer *recv_buf, *send_buf;
    unsigned sending : 1;
    unsigned up : 1;
    uint64_t retry_at_ms; /* 0: no retry scheduled */
    uint64_t stream_start_ms;
    unsigned backoff_retry;
    uint64_t rng;
    type_state_t types[LG_XDS__NTYPES];
    Envoy__Config__Core__V3__Node *node;
};

static const char *const sotw_methods[LG_XDS__NTYPES] = {
    "/envoy.service.cluster.v3.ClusterDiscoveryService/StreamClusters",
    "/envoy.service.endpoint.v3.EndpointDiscoveryService/StreamEndpoints",
    "/envoy.service.listener.v3.ListenerDiscoveryService/StreamListeners",
    "/envoy.service.route.v3.RouteDiscoveryService/StreamRoutes",
    "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets",
    "/envoy.service.runtime.v3.RuntimeDiscoveryService/StreamRuntime",
    "/envoy.service.extension.v3.ExtensionConfigDiscoveryService/StreamExtensionConfigs",
    "/envoy.service.route.v3.ScopedRoutesDiscoveryService/StreamScopedRoutes",
};
static const char *const delta_methods[LG_XDS__NTYPES] = {
    "/envoy.service.cluster.v3.ClusterDiscoveryService/DeltaClusters",
    "/envoy.service.endpoint.v3.EndpointDiscoveryService/DeltaEndpoints",
    "/envoy.service.listener.v3.ListenerDiscoveryService/DeltaListeners",
    "/envoy.service.route.v3.RouteDiscoveryService/DeltaRoutes",
    "/envoy.service.secret.v3.SecretDiscoveryService/DeltaSecrets",
    "/envoy.service.runtime.v3.RuntimeDiscoveryService/DeltaRuntime",
    "/envoy.service.extension.v3.ExtensionConfigDiscoveryService/DeltaExtensionConfigs",
    "/envoy.service.route.v3.ScopedRoutesDiscoveryService/DeltaScopedRoutes",
};
#define ADS_SOTW "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
#define ADS_DELTA "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"

static void start_call(grpc_mux_t *m);
static void pump(grpc_mux_t *m);

static const char *version_key(const void *v)
{
    return ((const version_t *)v)->name;
}

static void versions_clear(lg_strmap_t *map)
{
    for (size_t i = 0; map->slots != NULL && i <= map->mask; ++i) {
        version_t *v = map->slots[i];
        if (v != NULL) {
            free(v->name);
            free(v->version);
            free(v);
        }
    }
    lg_strmap_dispose(map);
}

static void versions_set(lg_strmap_t *map, const char *name, const char *version)
{
    version_t *v = lg_strmap_get(map, name);
    if (v == NULL) {
        v = lg_calloc(1, sizeof(*v));
        v->name = lg_strdup(name);
        lg_strmap_put(map, v);
    }
    free(v->version);
    v->version = lg_strdup(version != NULL ? version : "");
}

static void versions_del(lg_strmap_t *map, const char *name)
{
    version_t *v = lg_strmap_del(map, name);
    if (v != NULL) {
        free(v->name);
        free(v->version);
        free(v);
    }
}

/* ---- the node, as Envoy sends it ---- */

static Envoy__Config__Core__V3__Node *build_node(const Envoy__Config__Bootstrap__V3__Bootstrap *b)
{
    Envoy__Config__Core__V3__Node *n;
    if (b->node != NULL) {
        size_t len = protobuf_c_message_get_packed_size(&b->node->base);
        uint8_t *buf = lg_malloc(len + 1);
        protobuf_c_message_pack(&b->node->base, buf);
        n = (void *)protobuf_c_message_unpack(&envoy__config__core__v3__node__descriptor, NULL, len, buf);
        free(buf);
    } else {
        n = lg_malloc(sizeof(*n));
        envoy__config__core__v3__node__init(n);
    }
    if (n->user_agent_name != protobuf_c_empty_string)
        free(n->user_agent_name);
    n->user_agent_name = lg_strdup(USER_AGENT_NAME);
    if (n->user_agent_version_type_case == ENVOY__CONFIG__CORE__V3__NODE__USER_AGENT_VERSION_TYPE_USER_AGENT_VERSION)
        free(n->user_agent_version);
    else if (n->user_agent_version_type_case == ENVOY__CONFIG__CORE__V3__NODE__USER_AGENT_VERSION_TYPE_USER_AGENT_BUILD_VERSION)
        protobuf_c_message_free_unpacked(&n->user_agent_build_version->base, NULL);
    Envoy__Config__Core__V3__BuildVersion *bv = lg_malloc(sizeof(*bv));
    envoy__config__core__v3__build_version__init(bv);
    bv->version = lg_malloc(sizeof(*bv->version));
    envoy__type__v3__semantic_version__init(bv->version);
    unsigned major = 0, minor = 0, patch = 0;
    const char *v = strchr(lg_version_string, '/');
    if (v != NULL)
        sscanf(v + 1, "%u.%u.%u", &major, &minor, &patch);
    bv->version->major_number = major;
    bv->version->minor_number = minor;
    bv->version->patch = patch;
    n->user_agent_build_version = bv;
    n->user_agent_version_type_case = ENVOY__CONFIG__CORE__V3__NODE__USER_AGENT_VERSION_TYPE_USER_AGENT_BUILD_VERSION;
    static const char *const features[] = {"envoy.config.require-any-fields-contain-struct",
                                           "envoy.lb.does_not_support_overprovisioning", "envoy.lrs.supports_send_all_clusters"};
    for (size_t i = 0; i != n->n_client_features; ++i)
        free(n->client_features[i]);
    free(n->client_features);
    n->client_features = lg_malloc(sizeof(features));
    n->n_client_features = LG_ARRAY_SIZE(features);
    for (size_t i = 0; i != LG_ARRAY_SIZE(features); ++i)
        n->client_features[i] = lg_strdup(features[i]);
    return n;
}

/* ---- targets and credentials ---- */

static char *read_data_source(const Envoy__Config__Core__V3__DataSource *d, lg_error_t *err)
{
    switch (d->specifier_case) {
    case ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_FILENAME:
        return lg_read_file(d->filename, NULL, err);
    case ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_INLINE_STRING:
        return lg_strdup(d->inline_string);
    case ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_INLINE_BYTES:
        return lg_strndup((const char *)d->inline_bytes.data, d->inline_bytes.len);
    default:
        lg_error(err, "unsupported data source");
        return NULL;
    }
}

/* The first endpoint of a static cluster as a gRPC target URI, or NULL. */
static char *target_of(const Envoy__Config__Cluster__V3__Cluster *c)
{
    const Envoy__Config__Endpoint__V3__ClusterLoadAssignment *la = c->load_assignment;
    if (la == NULL || la->n_endpoints == 0 || la->endpoints[0]->n_lb_endpoints == 0 ||
        la->endpoints[0]->lb_endpoints[0]->endpoint == NULL || la->endpoints[0]->lb_endpoints[0]->endpoint->address == NULL)
        return NULL;
    const Envoy__Config__Core__V3__Address *a = la->endpoints[0]->lb_endpoints[0]->endpoint->address;
    char *t = NULL;
    if (a->address_case == ENVOY__CONFIG__CORE__V3__ADDRESS__ADDRESS_PIPE) {
        t = lg_malloc(strlen(a->pipe->path) + sizeof("unix:"));
        sprintf(t, "unix:%s", a->pipe->path);
    } else if (a->address_case == ENVOY__CONFIG__CORE__V3__ADDRESS__ADDRESS_SOCKET_ADDRESS) {
        const char *host = a->socket_address->address;
        t = lg_malloc(strlen(host) + 32);
        if (strchr(host, ':') != NULL)
            sprintf(t, "ipv6:[%s]:%u", host, a->socket_address->port_value);
        else if (c->type == ENVOY__CONFIG__CLUSTER__V3__CLUSTER__DISCOVERY_TYPE__STATIC)
            sprintf(t, "ipv4:%s:%u", host, a->socket_address->port_value);
        else
            sprintf(t, "dns:///%s:%u", host, a->socket_address->port_value);
    }
    return t;
}

/* envoy_grpc: the first endpoint of a static cluster, as a gRPC target URI. The
 * server compacts the static clusters once started (lg_pb_compact_repeated). */
static char *cluster_target(lg_xds_t *x, const char *name, lg_error_t *err)
{
    const Envoy__Config__Bootstrap__V3__Bootstrap__StaticResources *sr = x->bootstrap->static_resources;
    char *t = NULL;
    int found = 0;
    for (size_t i = 0; sr != NULL && !found && i != sr->n_clusters; ++i)
        if ((found = strcmp(sr->clusters[i]->name, name) == 0))
            t = target_of(sr->clusters[i]);
    ProtobufCBinaryData bytes;
    for (size_t pos = 0; sr != NULL && !found && lg_pb_compacted_next(&sr->base, "clusters", &pos, &bytes);) {
        Envoy__Config__Cluster__V3__Cluster *c = envoy__config__cluster__v3__cluster__unpack(NULL, bytes.len, bytes.data);
        if (c == NULL)
            continue;
        if ((found = strcmp(c->name, name) == 0))
            t = target_of(c);
        protobuf_c_message_free_unpacked(&c->base, NULL);
    }
    if (t == NULL)
        lg_error(err, "envoy_grpc.cluster_name: unknown gRPC client cluster '%s' (a static cluster with an endpoint is required)",
                 name);
    return t;
}

static int configure_service(grpc_mux_t *m, const Envoy__Config__Core__V3__GrpcService *gs, lg_error_t *err)
{
    if (gs->target_specifier_case == ENVOY__CONFIG__CORE__V3__GRPC_SERVICE__TARGET_SPECIFIER_ENVOY_GRPC) {
        if ((m->target = cluster_target(m->super.xds, gs->envoy_grpc->cluster_name, err)) == NULL)
            return -1;
        m->target_desc = lg_strdup(gs->envoy_grpc->cluster_name);
    } else if (gs->target_specifier_case == ENVOY__CONFIG__CORE__V3__GRPC_SERVICE__TARGET_SPECIFIER_GOOGLE_GRPC) {
        const Envoy__Config__Core__V3__GrpcService__GoogleGrpc *g = gs->google_grpc;
        m->target = lg_strdup(g->target_uri);
        m->target_desc = lg_strdup(g->target_uri);
        const Envoy__Config__Core__V3__GrpcService__GoogleGrpc__ChannelCredentials *cc = g->channel_credentials;
        if (cc != NULL &&
            cc->credential_specifier_case ==
                ENVOY__CONFIG__CORE__V3__GRPC_SERVICE__GOOGLE_GRPC__CHANNEL_CREDENTIALS__CREDENTIAL_SPECIFIER_SSL_CREDENTIALS) {
            const Envoy__Config__Core__V3__GrpcService__GoogleGrpc__SslCredentials *ssl = cc->ssl_credentials;
            m->tls = 1;
            if ((ssl->root_certs != NULL && (m->root_certs = read_data_source(ssl->root_certs, err)) == NULL) ||
                (ssl->private_key != NULL && (m->private_key = read_data_source(ssl->private_key, err)) == NULL) ||
                (ssl->cert_chain != NULL && (m->cert_chain = read_data_source(ssl->cert_chain, err)) == NULL))
                return lg_error_prefix(err, "google_grpc.channel_credentials.ssl_credentials");
        } else if (
            cc != NULL &&
            cc->credential_specifier_case ==
                ENVOY__CONFIG__CORE__V3__GRPC_SERVICE__GOOGLE_GRPC__CHANNEL_CREDENTIALS__CREDENTIAL_SPECIFIER_GOOGLE_DEFAULT) {
            return lg_error(err, "google_grpc.channel_credentials.google_default: not supported");
        }
        if (g->n_call_credentials != 0)
            return lg_error(err, "google_grpc.call_credentials: not supported");
    } else {
        return lg_error(err, "grpc_services[0]: one of envoy_grpc or google_grpc is required");
    }
    m->metadata = lg_calloc(gs->n_initial_metadata + 1, sizeof(*m->metadata));
    for (size_t i = 0; i != gs->n_initial_metadata; ++i) {
        const Envoy__Config__Core__V3__HeaderValue *h = gs->initial_metadata[i];
        m->metadata[m->n_metadata].key = grpc_slice_from_copied_string(h->key);
        m->metadata[m->n_metadata++].value = grpc_slice_from_copied_string(h->value);
    }
    return 0;
}

static grpc_channel *channel_new(grpc_mux_t *m)
{
    grpc_arg args[4];
    args[0] = (grpc_arg){GRPC_ARG_INTEGER, GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, {.integer = -1}};
    args[1] = (grpc_arg){GRPC_ARG_INTEGER, GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, {.integer = BACKOFF_BASE_MS}};
    args[2] = (grpc_arg){GRPC_ARG_INTEGER, GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, {.integer = BACKOFF_BASE_MS}};
    args[3] = (grpc_arg){GRPC_ARG_INTEGER, GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, {.integer = BACKOFF_MAX_MS}};
    grpc_channel_args ca = {LG_ARRAY_SIZE(args), args};
    grpc_channel_credentials *creds;
    if (m->tls) {
        grpc_ssl_pem_key_cert_pair pair = {m->private_key, m->cert_chain};
        creds = grpc_ssl_credentials_create(m->root_certs, m->private_key != NULL ? &pair : NULL, NULL, NULL);
    } else {
        creds = grpc_insecure_credentials_create();
    }
    grpc_channel *ch = grpc_channel_create(m->target, creds, &ca);
    grpc_channel_credentials_release(creds);
    return ch;
}

/* ---- requests ---- */

static lg_xds_type_t the_type(grpc_mux_t *m)
{
    for (size_t t = 0; t != LG_XDS__NTYPES; ++t)
        if (m->super.subs[t] != NULL)
            return (lg_xds_type_t)t;
    return LG_XDS_CDS;
}

static Envoy__Config__Core__V3__Node *node_for_request(grpc_mux_t *m)
{
    if (m->node_on_first_only && m->node_sent)
        return NULL;
    m->node_sent = 1;
    return m->node;
}

static Google__Rpc__Status *error_detail(const char *msg, Google__Rpc__Status *st)
{
    google__rpc__status__init(st);
    st->code = GRPC_STATUS_INTERNAL;
    st->message = (char *)msg;
    return st;
}

static grpc_byte_buffer *pack(const ProtobufCMessage *msg)
{
    size_t len = protobuf_c_message_get_packed_size(msg);
    grpc_slice s = grpc_slice_malloc(len);
    protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(s));
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

static grpc_byte_buffer *sotw_request(grpc_mux_t *m, lg__xds_sub_t *sub, type_state_t *ts)
{
    Envoy__Service__Discovery__V3__DiscoveryRequest r;
    Google__Rpc__Status st;
    const char **names = NULL;
    envoy__service__discovery__v3__discovery_request__init(&r);
    r.version_info = sub->version_info;
    r.node = node_for_request(m);
    r.type_url = (char *)lg_xds_type_urls[sub->type];
    r.response_nonce = ts->nonce != NULL ? ts->nonce : "";
    if (!sub->wildcard)
        r.n_resource_names = lg__xds_sub_names(sub, &names);
    r.resource_names = (char **)names;
    if (ts->nack != NULL)
        r.error_detail = error_detail(ts->nack, &st);
    LG_DEBUG(xds, "%s: sending request version='%s' nonce='%s' names=%zu%s", lg_xds_type_names[sub->type], r.version_info,
             r.response_nonce, r.n_resource_names, ts->nack != NULL ? " (NACK)" : "");
    grpc_byte_buffer *bb = pack(&r.base);
    free(names);
    return bb;
}

static void add_name(char ***arr, size_t *n, const char *name)
{
    *arr = lg_realloc(*arr, (*n + 1) * sizeof(**arr));
    (*arr)[(*n)++] = (char *)name;
}

static grpc_byte_buffer *delta_request(grpc_mux_t *m, lg__xds_sub_t *sub, type_state_t *ts)
{
    Envoy__Service__Discovery__V3__DeltaDiscoveryRequest r;
    Google__Rpc__Status st;
    const char **names = NULL;
    size_t n = sub->wildcard ? 0 : lg__xds_sub_names(sub, &names);
    Envoy__Service__Discovery__V3__DeltaDiscoveryRequest__InitialResourceVersionsEntry *entries = NULL, **eptrs = NULL;
    envoy__service__discovery__v3__delta_discovery_request__init(&r);
    r.node = node_for_request(m);
    r.type_url = (char *)lg_xds_type_urls[sub->type];
    r.response_nonce = ts->nonce != NULL ? ts->nonce : "";
    if (ts->nack != NULL)
        r.error_detail = error_detail(ts->nack, &st);
    /* subscribe what the server does not know yet, unsubscribe what we no longer want */
    lg_strmap_t wanted;
    lg_strmap_init(&wanted, version_key);
    version_t *tmp = lg_calloc(n + 1, sizeof(*tmp));
    for (size_t i = 0; i != n; ++i) {
        tmp[i].name = (char *)names[i];
        lg_strmap_put(&wanted, tmp + i);
        if (lg_strmap_get(&ts->subscribed, names[i]) == NULL)
            add_name(&r.resource_names_subscribe, &r.n_resource_names_subscribe, names[i]);
    }
    for (size_t i = 0; ts->subscribed.slots != NULL && i <= ts->subscribed.mask; ++i) {
        version_t *v = ts->subscribed.slots[i];
        if (v != NULL && lg_strmap_get(&wanted, v->name) == NULL)
            add_name(&r.resource_names_unsubscribe, &r.n_resource_names_unsubscribe, v->name);
    }
    if (!ts->sent_initial && ts->versions.n != 0) {
        entries = lg_calloc(ts->versions.n, sizeof(*entries));
        eptrs = lg_calloc(ts->versions.n, sizeof(*eptrs));
        for (size_t i = 0; i <= ts->versions.mask; ++i) {
            version_t *v = ts->versions.slots[i];
            if (v == NULL)
                continue;
            envoy__service__discovery__v3__delta_discovery_request__initial_resource_versions_entry__init(
                entries + r.n_initial_resource_versions);
            entries[r.n_initial_resource_versions].key = v->name;
            entries[r.n_initial_resource_versions].value = v->version;
            eptrs[r.n_initial_resource_versions] = entries + r.n_initial_resource_versions;
            ++r.n_initial_resource_versions;
        }
        r.initial_resource_versions = eptrs;
    }
    LG_DEBUG(xds, "%s: sending delta request nonce='%s' +%zu -%zu initial=%zu%s", lg_xds_type_names[sub->type], r.response_nonce,
             r.n_resource_names_subscribe, r.n_resource_names_unsubscribe, r.n_initial_resource_versions,
             ts->nack != NULL ? " (NACK)" : "");
    grpc_byte_buffer *bb = pack(&r.base);
    /* the server now knows exactly `wanted` */
    for (size_t i = 0; i != r.n_resource_names_unsubscribe; ++i)
        versions_del(&ts->subscribed, r.resource_names_unsubscribe[i]);
    for (size_t i = 0; i != r.n_resource_names_subscribe; ++i)
        versions_set(&ts->subscribed, r.resource_names_subscribe[i], "");
    lg_strmap_dispose(&wanted);
    free(tmp);
    free(r.resource_names_subscribe);
    free(r.resource_names_unsubscribe);
    free(entries);
    free(eptrs);
    free(names);
    return bb;
}

static int has_names(lg__xds_sub_t *sub)
{
    const char **names;
    size_t n = lg__xds_sub_names(sub, &names);
    free(names);
    return n != 0;
}

/* Sends the next due request, if the stream is up and idle (and not in the
 * middle of applying a response: its ACK goes out before what it caused). */
static void pump(grpc_mux_t *m)
{
    if (m->call == NULL || m->sending || m->shutting_down || m->holding)
        return;
    for (size_t t = 0; t != LG_XDS__NTYPES; ++t) {
        type_state_t *ts = m->types + t;
        lg__xds_sub_t *sub = m->super.subs[t];
        if (!ts->pending || sub == NULL)
            continue;
        ts->pending = 0;
        /* a non-wildcard subscription never opens with an empty list: that would mean "everything" */
        if (!sub->wildcard && !ts->sent_initial && !has_names(sub))
            continue;
        m->send_buf = m->delta ? delta_request(m, sub, ts) : sotw_request(m, sub, ts);
        ts->sent_initial = 1;
        free(ts->nack);
        ts->nack = NULL;
        grpc_op op = {0};
        op.op = GRPC_OP_SEND_MESSAGE;
        op.data.send_message.send_message = m->send_buf;
        m->sending = 1;
        ++m->in_flight;
        if (grpc_call_start_batch(m->call, &op, 1, m->tags + OP_SEND, NULL) != GRPC_CALL_OK) {
            --m->in_flight;
            m->sending = 0;
            grpc_byte_buffer_destroy(m->send_buf);
            m->send_buf = NULL;
        }
        return;
    }
}

static void request(grpc_mux_t *m, lg_xds_type_t t)
{
    m->types[t].pending = 1;
    pump(m);
}

/* ---- responses ---- */

static int unpack_bytes(grpc_byte_buffer *bb, const ProtobufCMessageDescriptor *d, ProtobufCAllocator *al, ProtobufCMessage **out)
{
    grpc_byte_buffer_reader reader;
    if (!grpc_byte_buffer_reader_init(&reader, bb))
        return -1;
    grpc_slice s = grpc_byte_buffer_reader_readall(&reader);
    grpc_byte_buffer_reader_destroy(&reader);
    *out = protobuf_c_message_unpack(d, al, GRPC_SLICE_LENGTH(s), GRPC_SLICE_START_PTR(s));
    grpc_slice_unref(s);
    return *out != NULL ? 0 : -1;
}

/* The subscription a response is for, or NULL (logged) when none. */
static lg__xds_sub_t *sub_of(grpc_mux_t *m, const char *type_url)
{
    int t = lg_xds_type_of_url(type_url);
    if (t < 0 || m->super.subs[t] == NULL) {
        LG_WARN(xds, "ignoring a response for type %s: not subscribed on this stream", type_url);
        return NULL;
    }
    return m->super.subs[t];
}

static void set_nonce(type_state_t *ts, const char *nonce, const char *nack)
{
    free(ts->nonce);
    ts->nonce = lg_strdup(nonce != NULL ? nonce : "");
    free(ts->nack);
    ts->nack = nack != NULL && nack[0] != '\0' ? lg_strdup(nack) : NULL;
}

static void on_sotw_response(grpc_mux_t *m, Envoy__Service__Discovery__V3__DiscoveryResponse *r)
{
    if (r->control_plane != NULL)
        lg__xds_set_identifier(m->super.xds, r->control_plane->identifier);
    lg__xds_sub_t *sub = sub_of(m, r->type_url);
    if (sub == NULL)
        return;
    LG_DEBUG(xds, "%s: received version '%s' nonce '%s' with %zu resources", lg_xds_type_names[sub->type], r->version_info,
             r->nonce, r->n_resources);
    lg_strbuf_t nack = {NULL};
    lg_strbuf_reserve(&nack, 1);
    m->holding = 1;
    int rc = lg__xds_sotw_update(sub, r->version_info, r->resources, r->n_resources, &nack);
    m->holding = 0;
    if (m->shutting_down) {
        lg_strbuf_free(&nack);
        return;
    }
    set_nonce(m->types + sub->type, r->nonce, rc != 0 ? nack.base : NULL);
    lg_strbuf_free(&nack);
    request(m, sub->type);
}

static void on_delta_response(grpc_mux_t *m, Envoy__Service__Discovery__V3__DeltaDiscoveryResponse *r)
{
    if (r->control_plane != NULL)
        lg__xds_set_identifier(m->super.xds, r->control_plane->identifier);
    lg__xds_sub_t *sub = sub_of(m, r->type_url);
    if (sub == NULL)
        return;
    LG_DEBUG(xds, "%s: received delta nonce '%s' +%zu -%zu", lg_xds_type_names[sub->type], r->nonce, r->n_resources,
             r->n_removed_resources);
    lg_strbuf_t nack = {NULL};
    lg_strbuf_reserve(&nack, 1);
    m->holding = 1;
    int rc = lg__xds_delta_update(sub, r->system_version_info, r->resources, r->n_resources, r->removed_resources,
                                  r->n_removed_resources, &nack);
    m->holding = 0;
    if (m->shutting_down) {
        lg_strbuf_free(&nack);
        return;
    }
    type_state_t *ts = m->types + sub->type;
    if (rc == 0) {
        for (size_t i = 0; i != r->n_resources; ++i)
            if (r->resources[i]->resource != NULL && r->resources[i]->name[0] != '\0')
                versions_set(&ts->versions, r->resources[i]->name, r->resources[i]->version);
        for (size_t i = 0; i != r->n_removed_resources; ++i)
            versions_del(&ts->versions, r->removed_resources[i]);
    }
    set_nonce(ts, r->nonce, rc != 0 ? nack.base : NULL);
    lg_strbuf_free(&nack);
    request(m, sub->type);
}

/* The response and everything decoded from it live in an arena (arena.c),
 * unmapped once the response is handled. */
static void on_message(grpc_mux_t *m, grpc_byte_buffer *bb)
{
    ProtobufCMessage *msg;
    const ProtobufCMessageDescriptor *d = m->delta ? &envoy__service__discovery__v3__delta_discovery_response__descriptor
                                                   : &envoy__service__discovery__v3__discovery_response__descriptor;
    lg__xds_arena_t arena;
    lg__xds_arena_init(&arena);
    if (unpack_bytes(bb, d, &arena.allocator, &msg) != 0) {
        lg__xds_arena_dispose(&arena);
        LG_WARN(xds, "%s: cannot parse a response (%zu bytes) from %s: closing the stream", m->super.key,
                grpc_byte_buffer_length(bb), m->target_desc);
        grpc_call_cancel_with_status(m->call, GRPC_STATUS_INTERNAL, "failed to parse the response", NULL);
        return;
    }
    m->backoff_retry = 0;
    if (!m->up) {
        m->up = 1;
        lg__xds_set_connected(m->super.xds, 1);
    }
    if (m->delta)
        on_delta_response(m, (void *)msg);
    else
        on_sotw_response(m, (void *)msg);
    lg__xds_arena_dispose(&arena);
}

/* ---- the call ---- */

static void start_recv(grpc_mux_t *m)
{
    grpc_op op = {0};
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &m->recv_buf;
    ++m->in_flight;
    if (grpc_call_start_batch(m->call, &op, 1, m->tags + OP_RECV, NULL) != GRPC_CALL_OK)
        --m->in_flight;
}

static const char *method_of(grpc_mux_t *m)
{
    if (m->ads)
        return m->delta ? ADS_DELTA : ADS_SOTW;
    return (m->delta ? delta_methods : sotw_methods)[the_type(m)];
}

static void start_call(grpc_mux_t *m)
{
    lg_xds_t *x = m->super.xds;
    if (m->channel == NULL)
        m->channel = channel_new(m);
    grpc_slice method = grpc_slice_from_static_string(method_of(m));
    m->call = grpc_channel_create_call(m->channel, NULL, GRPC_PROPAGATE_DEFAULTS, x->cq, method, NULL,
                                       gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    m->stream_start_ms = lg_now_ms();
    m->node_sent = 0;
    m->up = 0;
    grpc_metadata_array_init(&m->recv_md);
    grpc_metadata_array_init(&m->trailing_md);
    grpc_op ops[2] = {{0}, {0}};
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].data.send_initial_metadata.count = m->n_metadata;
    ops[0].data.send_initial_metadata.metadata = m->metadata;
    ops[1].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[1].data.recv_initial_metadata.recv_initial_metadata = &m->recv_md;
    ++m->in_flight;
    grpc_call_start_batch(m->call, ops, 2, m->tags + OP_START, NULL);
    grpc_op st = {0};
    st.op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    st.data.recv_status_on_client.trailing_metadata = &m->trailing_md;
    st.data.recv_status_on_client.status = &m->status;
    st.data.recv_status_on_client.status_details = &m->status_details;
    ++m->in_flight;
    grpc_call_start_batch(m->call, &st, 1, m->tags + OP_STATUS, NULL);
    start_recv(m);
    LG_DEBUG(xds, "%s: stream to %s (%s) started", m->super.key, m->target_desc, method_of(m));
    for (size_t t = 0; t != LG_XDS__NTYPES; ++t) {
        type_state_t *ts = m->types + t;
        ts->sent_initial = 0;
        free(ts->nonce);
        ts->nonce = NULL;
        free(ts->nack);
        ts->nack = NULL;
        versions_clear(&ts->subscribed);
        lg_strmap_init(&ts->subscribed, version_key);
        lg__xds_sub_t *sub = m->super.subs[t];
        ts->pending = sub != NULL && sub->started;
    }
    pump(m);
}

/* Envoy's JitteredExponentialBackOffStrategy. */
static uint64_t next_backoff(grpc_mux_t *m)
{
    uint64_t multiplier = ((uint64_t)1 << (m->backoff_retry + 1)) - 1, base = multiplier * BACKOFF_BASE_MS;
    if (base <= BACKOFF_MAX_MS)
        ++m->backoff_retry;
    uint64_t r = lg_lb_random_next(&m->rng) % base;
    return r < BACKOFF_MAX_MS ? r : BACKOFF_MAX_MS;
}

static void call_done(grpc_mux_t *m)
{
    grpc_call_unref(m->call);
    m->call = NULL;
    grpc_metadata_array_destroy(&m->recv_md);
    grpc_metadata_array_destroy(&m->trailing_md);
    grpc_slice_unref(m->status_details);
    m->status_details = grpc_empty_slice();
    if (m->shutting_down)
        return;
    uint64_t delay = next_backoff(m);
    m->retry_at_ms = lg_now_ms() + delay;
    LG_DEBUG(xds, "%s: retrying the stream in %llu ms", m->super.key, (unsigned long long)delay);
}

static void on_status(grpc_mux_t *m)
{
    char *details = grpc_slice_to_c_string(m->status_details);
    uint64_t age = (lg_now_ms() - m->stream_start_ms) / 1000;
    if (!m->shutting_down) {
        LG_WARN(xds, "%s gRPC config stream to %s closed since %llus ago: %d, %s", strrchr(method_of(m), '/') + 1, m->target_desc,
                (unsigned long long)age, (int)m->status, details);
        for (size_t t = 0; t != LG_XDS__NTYPES; ++t)
            if (m->super.subs[t] != NULL && m->super.subs[t]->started)
                lg__xds_update_failed(m->super.subs[t]);
    }
    gpr_free(details);
    if (m->up) {
        m->up = 0;
        lg__xds_set_connected(m->super.xds, 0);
    }
}

static void on_event(grpc_event ev)
{
    op_tag_t *tag = ev.tag;
    grpc_mux_t *m = tag->mux;
    --m->in_flight;
    switch (tag->kind) {
    case OP_START:
        if (ev.success && !m->up && !m->shutting_down) {
            m->up = 1;
            lg__xds_set_connected(m->super.xds, 1);
        }
        break;
    case OP_STATUS:
        on_status(m);
        break;
    case OP_RECV: {
        grpc_byte_buffer *bb = m->recv_buf;
        m->recv_buf = NULL;
        if (bb != NULL) {
            if (!m->shutting_down)
                on_message(m, bb);
            grpc_byte_buffer_destroy(bb);
            if (ev.success && !m->shutting_down && m->call != NULL)
                start_recv(m);
        }
        break;
    }
    case OP_SEND:
        grpc_byte_buffer_destroy(m->send_buf);
        m->send_buf = NULL;
        m->sending = 0;
        if (ev.success)
            pump(m);
        break;
    }
    if (m->in_flight == 0 && m->call != NULL)
        call_done(m);
}

/* ---- mux ops ---- */

static void grpc_interest(lg__xds_mux_t *mux, lg__xds_sub_t *sub)
{
    grpc_mux_t *m = (grpc_mux_t *)mux;
    lg_xds_t *x = mux->xds;
    if (x->cq == NULL) {
        grpc_init();
        x->cq = grpc_completion_queue_create_for_next(NULL);
    }
    if (m->call == NULL && m->retry_at_ms == 0) {
        start_call(m);
        return;
    }
    request(m, sub->type);
}

static void grpc_tick(lg__xds_mux_t *mux, uint64_t now_ms)
{
    grpc_mux_t *m = (grpc_mux_t *)mux;
    if (m->call == NULL && m->retry_at_ms != 0 && now_ms >= m->retry_at_ms && !m->shutting_down) {
        m->retry_at_ms = 0;
        start_call(m);
    }
}

static void grpc_free(lg__xds_mux_t *mux)
{
    grpc_mux_t *m = (grpc_mux_t *)mux;
    for (size_t t = 0; t != LG_XDS__NTYPES; ++t) {
        free(m->types[t].nonce);
        free(m->types[t].nack);
        versions_clear(&m->types[t].versions);
        versions_clear(&m->types[t].subscribed);
    }
    for (size_t i = 0; i != m->n_metadata; ++i) {
        grpc_slice_unref(m->metadata[i].key);
        grpc_slice_unref(m->metadata[i].value);
    }
    free(m->metadata);
    if (m->node != NULL)
        protobuf_c_message_free_unpacked(&m->node->base, NULL);
    free(m->target);
    free(m->target_desc);
    free(m->root_certs);
    free(m->private_key);
    free(m->cert_chain);
    free(m);
}

static const lg__xds_mux_ops_t grpc_ops = {grpc_interest, grpc_tick, grpc_free};

lg__xds_mux_t *lg__xds_grpc_mux_new(lg_xds_t *x, const Envoy__Config__Core__V3__ApiConfigSource *api, int ads, lg_error_t *err)
{
    if (api->n_grpc_services == 0) {
        lg_error(err, "grpc_services: API configs must have a gRPC service");
        return NULL;
    }
    grpc_mux_t *m = lg_calloc(1, sizeof(*m));
    m->super.ops = &grpc_ops;
    m->super.xds = x;
    m->ads = ads;
    m->delta = api->api_type == ENVOY__CONFIG__CORE__V3__API_CONFIG_SOURCE__API_TYPE__DELTA_GRPC ||
               api->api_type == ENVOY__CONFIG__CORE__V3__API_CONFIG_SOURCE__API_TYPE__AGGREGATED_DELTA_GRPC;
    m->node_on_first_only = api->set_node_on_first_message_only;
    m->status_details = grpc_empty_slice();
    m->rng = lg__xds_hash(&m, sizeof(m)) | 1;
    for (size_t k = 0; k != OP__COUNT; ++k)
        m->tags[k] = (op_tag_t){m, (int)k};
    for (size_t t = 0; t != LG_XDS__NTYPES; ++t) {
        lg_strmap_init(&m->types[t].versions, version_key);
        lg_strmap_init(&m->types[t].subscribed, version_key);
    }
    if (ads && api->api_type == ENVOY__CONFIG__CORE__V3__API_CONFIG_SOURCE__API_TYPE__REST) {
        lg_error(err, "api_type: REST is not supported for ADS");
        grpc_free(&m->super);
        return NULL;
    }
    if (configure_service(m, api->grpc_services[0], err) != 0) {
        lg_error_prefix(err, "grpc_services[0]");
        grpc_free(&m->super);
        return NULL;
    }
    m->node = build_node(x->bootstrap);
    return &m->super;
}

void lg__xds_grpc_poll(lg_xds_t *x, uint64_t max_wait_ms)
{
    gpr_timespec deadline = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis((int64_t)max_wait_ms, GPR_TIMESPAN));
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(x->cq, deadline, NULL);
        if (ev.type != GRPC_OP_COMPLETE)
            return;
        lg_preempt_tick_start(); /* work: the control thread's loop stops it */
        on_event(ev);
        deadline = gpr_time_0(GPR_CLOCK_MONOTONIC); /* then whatever else is ready */
    }
}

static int is_grpc(const lg__xds_mux_t *m)
{
    return m->ops == &grpc_ops;
}

void lg__xds_grpc_shutdown(lg_xds_t *x)
{
    if (x->cq == NULL)
        return;
    size_t busy = 0;
    for (size_t i = 0; i != x->n_muxes; ++i) {
        if (!is_grpc(x->muxes[i]))
            continue;
        grpc_mux_t *m = (grpc_mux_t *)x->muxes[i];
        m->shutting_down = 1;
        if (m->call != NULL) {
            grpc_call_cancel(m->call, NULL);
            ++busy;
        }
    }
    while (busy != 0) {
        grpc_event ev = grpc_completion_queue_next(x->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
        if (ev.type != GRPC_OP_COMPLETE)
            break;
        grpc_mux_t *m = ((op_tag_t *)ev.tag)->mux;
        on_event(ev);
        if (m->call == NULL)
            --busy;
    }
    for (size_t i = 0; i != x->n_muxes; ++i)
        if (is_grpc(x->muxes[i]) && ((grpc_mux_t *)x->muxes[i])->channel != NULL) {
            grpc_channel_destroy(((grpc_mux_t *)x->muxes[i])->channel);
            ((grpc_mux_t *)x->muxes[i])->channel = NULL;
        }
    grpc_completion_queue_shutdown(x->cq);
    while (grpc_completion_queue_next(x->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL).type != GRPC_QUEUE_SHUTDOWN)
        ;
    grpc_completion_queue_destroy(x->cq);
    x->cq = NULL;
    grpc_shutdown_blocking();
}
