/*
 * /config_dump: Envoy's envoy.admin.v3.ConfigDump, built as a message and
 * printed by the proto3 JSON encoder so that its shape is Envoy's: the
 * bootstrap, then clusters, endpoints (?include_eds), listeners and routes,
 * then secrets (private keys and passwords redacted as Envoy does),
 * each an Any; the static resources come from the bootstrap, the dynamic
 * ones (with their version_info, last_updated, warming and error states)
 * from the xDS dump of the snapshot.
 */
#include "legate/admin.h"
#include "legate/config_dump.h"
#include "legate/pbjson.h"
#include "legate/xds.h"
#include "envoy/admin/v3/config_dump.pb-c.h"
#include "envoy/admin/v3/config_dump_shared.pb-c.h"
#include "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.pb-c.h"
#include "envoy/extensions/transport_sockets/tls/v3/secret.pb-c.h"
#include "google/protobuf/timestamp.pb-c.h"

#define TYPE_PREFIX "type.googleapis.com/"

static Google__Protobuf__Any *any_of(const ProtobufCMessage *m)
{
    Google__Protobuf__Any *a = lg_malloc(sizeof(*a));
    google__protobuf__any__init(a);
    size_t n = strlen(m->descriptor->name);
    a->type_url = lg_malloc(sizeof(TYPE_PREFIX) + n);
    memcpy(a->type_url, TYPE_PREFIX, sizeof(TYPE_PREFIX) - 1);
    memcpy(a->type_url + sizeof(TYPE_PREFIX) - 1, m->descriptor->name, n + 1);
    a->value.len = protobuf_c_message_get_packed_size(m);
    a->value.data = lg_malloc(a->value.len ? a->value.len : 1);
    protobuf_c_message_pack(m, a->value.data);
    return a;
}

static Google__Protobuf__Timestamp *timestamp(uint64_t wall_us)
{
    Google__Protobuf__Timestamp *t = lg_malloc(sizeof(*t));
    google__protobuf__timestamp__init(t);
    t->seconds = (int64_t)(wall_us / 1000000);
    t->nanos = (int32_t)(wall_us % 1000000) * 1000;
    return t;
}

/* An Any of a message's wire bytes (copied). */
static Google__Protobuf__Any *any_of_bytes(const ProtobufCMessageDescriptor *desc, ProtobufCBinaryData bytes)
{
    Google__Protobuf__Any *a = lg_malloc(sizeof(*a));
    google__protobuf__any__init(a);
    size_t n = strlen(desc->name);
    a->type_url = lg_malloc(sizeof(TYPE_PREFIX) + n);
    memcpy(a->type_url, TYPE_PREFIX, sizeof(TYPE_PREFIX) - 1);
    memcpy(a->type_url + sizeof(TYPE_PREFIX) - 1, desc->name, n + 1);
    a->value.len = bytes.len;
    a->value.data = lg_malloc(bytes.len + 1);
    memcpy(a->value.data, bytes.data, bytes.len);
    return a;
}

/* The Any of a resource as the control plane sent it. */
static Google__Protobuf__Any *any_of_res(const lg_xds_resource_t *r)
{
    Google__Protobuf__Any *a = lg_malloc(sizeof(*a));
    google__protobuf__any__init(a);
    a->type_url = lg_strdup(lg_xds_type_urls[r->type]);
    a->value.len = r->bytes.len;
    a->value.data = lg_malloc(r->bytes.len + 1);
    memcpy(a->value.data, r->bytes.data, r->bytes.len);
    return a;
}

static Envoy__Admin__V3__UpdateFailureState *failure_state(const lg_xds_dump_item_t *it)
{
    if (it->failed == NULL)
        return NULL;
    Envoy__Admin__V3__UpdateFailureState *f = lg_malloc(sizeof(*f));
    envoy__admin__v3__update_failure_state__init(f);
    f->failed_configuration = any_of_res(it->failed);
    f->last_update_attempt = timestamp(it->failed->last_updated_wall_us);
    f->details = lg_strdup(it->error != NULL ? it->error : "");
    f->version_info = lg_strdup(it->failed->version);
    return f;
}

#define APPEND(arr, n, v)                                      \
    do {                                                       \
        (arr) = lg_realloc((arr), sizeof(*(arr)) * ((n) + 1)); \
        (arr)[(n)++] = (v);                                    \
    } while (0)

static Envoy__Admin__V3__ClustersConfigDump__DynamicCluster *dynamic_cluster(const lg_xds_resource_t *r)
{
    Envoy__Admin__V3__ClustersConfigDump__DynamicCluster *c = lg_malloc(sizeof(*c));
    envoy__admin__v3__clusters_config_dump__dynamic_cluster__init(c);
    c->version_info = lg_strdup(r->version);
    c->cluster = any_of_res(r);
    c->last_updated = timestamp(r->last_updated_wall_us);
    return c;
}

static void dynamic_clusters(Envoy__Admin__V3__ClustersConfigDump *d, const lg_xds_dump_t *x)
{
    d->version_info = lg_strdup(x->version_info[LG_XDS_CDS]);
    for (size_t i = 0; i != x->n_items[LG_XDS_CDS]; ++i) {
        const lg_xds_dump_item_t *it = x->items[LG_XDS_CDS] + i;
        if (it->active != NULL)
            APPEND(d->dynamic_active_clusters, d->n_dynamic_active_clusters, dynamic_cluster(it->active));
        if (it->warming != NULL)
            APPEND(d->dynamic_warming_clusters, d->n_dynamic_warming_clusters, dynamic_cluster(it->warming));
    }
}

static Envoy__Admin__V3__ListenersConfigDump__DynamicListenerState *listener_state(const lg_xds_resource_t *r)
{
    if (r == NULL)
        return NULL;
    Envoy__Admin__V3__ListenersConfigDump__DynamicListenerState *s = lg_malloc(sizeof(*s));
    envoy__admin__v3__listeners_config_dump__dynamic_listener_state__init(s);
    s->version_info = lg_strdup(r->version);
    s->listener = any_of_res(r);
    s->last_updated = timestamp(r->last_updated_wall_us);
    return s;
}

static void dynamic_listeners(Envoy__Admin__V3__ListenersConfigDump *d, const lg_xds_dump_t *x)
{
    d->version_info = lg_strdup(x->version_info[LG_XDS_LDS]);
    for (size_t i = 0; i != x->n_items[LG_XDS_LDS]; ++i) {
        const lg_xds_dump_item_t *it = x->items[LG_XDS_LDS] + i;
        Envoy__Admin__V3__ListenersConfigDump__DynamicListener *l = lg_malloc(sizeof(*l));
        envoy__admin__v3__listeners_config_dump__dynamic_listener__init(l);
        l->name = lg_strdup(it->name);
        l->active_state = listener_state(it->active);
        l->warming_state = listener_state(it->warming);
        l->error_state = failure_state(it);
        APPEND(d->dynamic_listeners, d->n_dynamic_listeners, l);
    }
}

static void dynamic_routes(Envoy__Admin__V3__RoutesConfigDump *d, const lg_xds_dump_t *x)
{
    for (size_t i = 0; i != x->n_items[LG_XDS_RDS]; ++i) {
        const lg_xds_dump_item_t *it = x->items[LG_XDS_RDS] + i;
        const lg_xds_resource_t *r = it->active != NULL ? it->active : it->failed;
        Envoy__Admin__V3__RoutesConfigDump__DynamicRouteConfig *rc = lg_malloc(sizeof(*rc));
        envoy__admin__v3__routes_config_dump__dynamic_route_config__init(rc);
        rc->version_info = lg_strdup(r->version);
        rc->route_config = any_of_res(r);
        rc->last_updated = timestamp(r->last_updated_wall_us);
        rc->error_state = failure_state(it);
        APPEND(d->dynamic_route_configs, d->n_dynamic_route_configs, rc);
    }
}

static ProtobufCMessage *endpoints_dump(const lg_config_dump_src_t *src)
{
    Envoy__Admin__V3__EndpointsConfigDump *d = lg_malloc(sizeof(*d));
    envoy__admin__v3__endpoints_config_dump__init(d);
    for (size_t i = 0; src->xds != NULL && i != src->xds->n_items[LG_XDS_EDS]; ++i) {
        const lg_xds_dump_item_t *it = src->xds->items[LG_XDS_EDS] + i;
        const lg_xds_resource_t *r = it->active != NULL ? it->active : it->failed;
        Envoy__Admin__V3__EndpointsConfigDump__DynamicEndpointConfig *e = lg_malloc(sizeof(*e));
        envoy__admin__v3__endpoints_config_dump__dynamic_endpoint_config__init(e);
        e->version_info = lg_strdup(r->version);
        e->endpoint_config = any_of_res(r);
        e->last_updated = timestamp(r->last_updated_wall_us);
        e->error_state = failure_state(it);
        APPEND(d->dynamic_endpoint_configs, d->n_dynamic_endpoint_configs, e);
    }
    return &d->base;
}

static ProtobufCMessage *bootstrap_dump(const lg_config_dump_src_t *src)
{
    Envoy__Admin__V3__BootstrapConfigDump *d = lg_malloc(sizeof(*d));
    envoy__admin__v3__bootstrap_config_dump__init(d);
    /* a deep copy through the wire format keeps ownership simple */
    Google__Protobuf__Any *a = any_of(src->bootstrap);
    d->bootstrap = (void *)protobuf_c_message_unpack(src->bootstrap->descriptor, NULL, a->value.len, a->value.data);
    protobuf_c_message_free_unpacked(&a->base, NULL);
    d->last_updated = timestamp(src->last_updated_wall_us);
    return &d->base;
}

static Envoy__Admin__V3__ClustersConfigDump__StaticCluster *static_cluster(Google__Protobuf__Any *any,
                                                                           const lg_config_dump_src_t *src)
{
    Envoy__Admin__V3__ClustersConfigDump__StaticCluster *c = lg_malloc(sizeof(*c));
    envoy__admin__v3__clusters_config_dump__static_cluster__init(c);
    c->cluster = any;
    c->last_updated = timestamp(src->last_updated_wall_us);
    return c;
}

static ProtobufCMessage *clusters_dump(const lg_config_dump_src_t *src)
{
    const Envoy__Config__Bootstrap__V3__Bootstrap *b = (const void *)src->bootstrap;
    Envoy__Admin__V3__ClustersConfigDump *d = lg_malloc(sizeof(*d));
    envoy__admin__v3__clusters_config_dump__init(d);
    const Envoy__Config__Bootstrap__V3__Bootstrap__StaticResources *sr = b->static_resources;
    /* the server keeps static clusters compacted once compiled (lg_pb_compact_repeated) */
    size_t n = sr != NULL ? sr->n_clusters : 0, pos = 0;
    ProtobufCBinaryData bytes;
    while (sr != NULL && lg_pb_compacted_next(&sr->base, "clusters", &pos, &bytes))
        ++n;
    d->static_clusters = lg_calloc(n ? n : 1, sizeof(*d->static_clusters));
    for (size_t i = 0; sr != NULL && i != sr->n_clusters; ++i)
        d->static_clusters[d->n_static_clusters++] = static_cluster(any_of(&sr->clusters[i]->base), src);
    for (pos = 0; sr != NULL && lg_pb_compacted_next(&sr->base, "clusters", &pos, &bytes);)
        d->static_clusters[d->n_static_clusters++] =
            static_cluster(any_of_bytes(&envoy__config__cluster__v3__cluster__descriptor, bytes), src);
    if (src->xds != NULL)
        dynamic_clusters(d, src->xds);
    return &d->base;
}

static ProtobufCMessage *listeners_dump(const lg_config_dump_src_t *src)
{
    const Envoy__Config__Bootstrap__V3__Bootstrap *b = (const void *)src->bootstrap;
    Envoy__Admin__V3__ListenersConfigDump *d = lg_malloc(sizeof(*d));
    envoy__admin__v3__listeners_config_dump__init(d);
    size_t n = b->static_resources != NULL ? b->static_resources->n_listeners : 0;
    d->static_listeners = lg_calloc(n ? n : 1, sizeof(*d->static_listeners));
    for (size_t i = 0; i != n; ++i) {
        Envoy__Admin__V3__ListenersConfigDump__StaticListener *l = lg_malloc(sizeof(*l));
        envoy__admin__v3__listeners_config_dump__static_listener__init(l);
        l->listener = any_of(&b->static_resources->listeners[i]->base);
        l->last_updated = timestamp(src->last_updated_wall_us);
        d->static_listeners[d->n_static_listeners++] = l;
    }
    if (src->xds != NULL)
        dynamic_listeners(d, src->xds);
    return &d->base;
}

/* Inline route configs of every HTTP connection manager are Envoy's static route configs. */
static void add_route_configs(Envoy__Admin__V3__RoutesConfigDump *d, const Envoy__Config__Listener__V3__FilterChain *fc,
                              uint64_t wall_us)
{
    for (size_t k = 0; fc != NULL && k != fc->n_filters; ++k) {
        const Envoy__Config__Listener__V3__Filter *f = fc->filters[k];
        if (f->config_type_case != ENVOY__CONFIG__LISTENER__V3__FILTER__CONFIG_TYPE_TYPED_CONFIG)
            continue;
        lg_error_t err;
        Envoy__Extensions__Filters__Network__HttpConnectionManager__V3__HttpConnectionManager *hcm = (void *)lg_any_unpack(
            f->typed_config, &envoy__extensions__filters__network__http_connection_manager__v3__http_connection_manager__descriptor,
            &err);
        if (hcm == NULL)
            continue;
        if (hcm->route_specifier_case ==
            ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_CONNECTION_MANAGER__ROUTE_SPECIFIER_ROUTE_CONFIG) {
            Envoy__Admin__V3__RoutesConfigDump__StaticRouteConfig *r = lg_malloc(sizeof(*r));
            envoy__admin__v3__routes_config_dump__static_route_config__init(r);
            r->route_config = any_of(&hcm->route_config->base);
            r->last_updated = timestamp(wall_us);
            d->static_route_configs =
                lg_realloc(d->static_route_configs, sizeof(*d->static_route_configs) * (d->n_static_route_configs + 1));
            d->static_route_configs[d->n_static_route_configs++] = r;
        }
        protobuf_c_message_free_unpacked(&hcm->base, NULL);
    }
}

static ProtobufCMessage *routes_dump(const lg_config_dump_src_t *src)
{
    const Envoy__Config__Bootstrap__V3__Bootstrap *b = (const void *)src->bootstrap;
    Envoy__Admin__V3__RoutesConfigDump *d = lg_malloc(sizeof(*d));
    envoy__admin__v3__routes_config_dump__init(d);
    size_t n = b->static_resources != NULL ? b->static_resources->n_listeners : 0;
    for (size_t i = 0; i != n; ++i) {
        const Envoy__Config__Listener__V3__Listener *l = b->static_resources->listeners[i];
        for (size_t j = 0; j != l->n_filter_chains; ++j)
            add_route_configs(d, l->filter_chains[j], src->last_updated_wall_us);
        add_route_configs(d, l->default_filter_chain, src->last_updated_wall_us);
    }
    if (src->xds != NULL)
        dynamic_routes(d, src->xds);
    return &d->base;
}

/* ---- secrets ---- */

typedef Envoy__Extensions__TransportSockets__Tls__V3__Secret secret_proto_t;

/* Envoy's redactSecret: inline key material becomes "[redacted]"; file names stay. */
static void redact_source(Envoy__Config__Core__V3__DataSource *ds)
{
    if (ds == NULL || ds->specifier_case == ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_FILENAME)
        return;
    if (ds->specifier_case == ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_INLINE_BYTES)
        free(ds->inline_bytes.data);
    else if (ds->specifier_case != ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER__NOT_SET)
        free(ds->inline_string); /* inline_string and environment_variable share the union */
    ds->specifier_case = ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_INLINE_STRING;
    ds->inline_string = lg_strdup("[redacted]");
}

/* The Any of a secret with its key material redacted. */
static Google__Protobuf__Any *redacted_secret(const secret_proto_t *in)
{
    Google__Protobuf__Any *a = any_of(&in->base);
    secret_proto_t *s = (void *)protobuf_c_message_unpack(in->base.descriptor, NULL, a->value.len, a->value.data);
    protobuf_c_message_free_unpacked(&a->base, NULL);
    switch (s->type_case) {
    case ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__SECRET__TYPE_TLS_CERTIFICATE:
        redact_source(s->tls_certificate->private_key);
        redact_source(s->tls_certificate->password);
        break;
    case ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__SECRET__TYPE_SESSION_TICKET_KEYS:
        for (size_t i = 0; i != s->session_ticket_keys->n_keys; ++i)
            redact_source(s->session_ticket_keys->keys[i]);
        break;
    case ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__SECRET__TYPE_GENERIC_SECRET:
        redact_source(s->generic_secret->secret);
        break;
    default:
        break;
    }
    a = any_of(&s->base);
    protobuf_c_message_free_unpacked(&s->base, NULL);
    return a;
}

static Envoy__Admin__V3__SecretsConfigDump__DynamicSecret *dynamic_secret(const lg_xds_dump_item_t *it)
{
    Envoy__Admin__V3__SecretsConfigDump__DynamicSecret *d = lg_malloc(sizeof(*d));
    envoy__admin__v3__secrets_config_dump__dynamic_secret__init(d);
    d->name = lg_strdup(it->name);
    secret_proto_t *s = NULL;
    if (it->active != NULL) {
        d->version_info = lg_strdup(it->active->version);
        d->last_updated = timestamp(it->active->last_updated_wall_us);
        s = (void *)protobuf_c_message_unpack(&envoy__extensions__transport_sockets__tls__v3__secret__descriptor, NULL,
                                              it->active->bytes.len, it->active->bytes.data);
    } else {
        d->version_info = lg_strdup("");
        d->last_updated = timestamp(0);
    }
    if (s == NULL) { /* warming: Envoy shows a secret with the name only */
        s = lg_malloc(sizeof(*s));
        envoy__extensions__transport_sockets__tls__v3__secret__init(s);
        s->name = lg_strdup(it->name);
    }
    d->secret = redacted_secret(s);
    protobuf_c_message_free_unpacked(&s->base, NULL);
    return d;
}

static ProtobufCMessage *secrets_dump(const lg_config_dump_src_t *src)
{
    const Envoy__Config__Bootstrap__V3__Bootstrap *b = (const void *)src->bootstrap;
    Envoy__Admin__V3__SecretsConfigDump *d = lg_malloc(sizeof(*d));
    envoy__admin__v3__secrets_config_dump__init(d);
    size_t n = b->static_resources != NULL ? b->static_resources->n_secrets : 0;
    for (size_t i = 0; i != n; ++i) {
        const secret_proto_t *m = b->static_resources->secrets[i];
        Envoy__Admin__V3__SecretsConfigDump__StaticSecret *s = lg_malloc(sizeof(*s));
        envoy__admin__v3__secrets_config_dump__static_secret__init(s);
        s->name = lg_strdup(m->name);
        s->last_updated = timestamp(src->last_updated_wall_us);
        s->secret = redacted_secret(m);
        APPEND(d->static_secrets, d->n_static_secrets, s);
    }
    for (size_t i = 0; src->xds != NULL && i != src->xds->n_items[LG_XDS_SDS]; ++i) {
        const lg_xds_dump_item_t *it = src->xds->items[LG_XDS_SDS] + i;
        if (it->active != NULL)
            APPEND(d->dynamic_active_secrets, d->n_dynamic_active_secrets, dynamic_secret(it));
        else
            APPEND(d->dynamic_warming_secrets, d->n_dynamic_warming_secrets, dynamic_secret(it));
    }
    return &d->base;
}

/* ECDS: Envoy's ecds_filter_http, present only when HTTP filters use config_discovery. */
static ProtobufCMessage *ecds_dump(const lg_config_dump_src_t *src)
{
    if (src->xds == NULL || src->xds->n_items[LG_XDS_ECDS] == 0)
        return NULL;
    Envoy__Admin__V3__EcdsConfigDump *d = lg_malloc(sizeof(*d));
    envoy__admin__v3__ecds_config_dump__init(d);
    for (size_t i = 0; i != src->xds->n_items[LG_XDS_ECDS]; ++i) {
        const lg_xds_dump_item_t *it = src->xds->items[LG_XDS_ECDS] + i;
        const lg_xds_resource_t *r = it->active != NULL ? it->active : it->failed;
        Envoy__Admin__V3__EcdsConfigDump__EcdsFilterConfig *f = lg_malloc(sizeof(*f));
        envoy__admin__v3__ecds_config_dump__ecds_filter_config__init(f);
        f->version_info = lg_strdup(r->version);
        f->ecds_filter = any_of_res(r);
        f->last_updated = timestamp(r->last_updated_wall_us);
        f->error_state = failure_state(it);
        APPEND(d->ecds_filters, d->n_ecds_filters, f);
    }
    return &d->base;
}

/* SRDS: Envoy's scoped_routes, one DynamicScopedRouteConfigs per ScopedRoutes.name. */
static ProtobufCMessage *scoped_routes_dump(const lg_config_dump_src_t *src)
{
    if (src->xds == NULL || src->xds->n_items[LG_XDS_SRDS] == 0)
        return NULL;
    Envoy__Admin__V3__ScopedRoutesConfigDump *d = lg_malloc(sizeof(*d));
    envoy__admin__v3__scoped_routes_config_dump__init(d);
    Envoy__Admin__V3__ScopedRoutesConfigDump__DynamicScopedRouteConfigs *g = NULL;
    for (size_t i = 0; i != src->xds->n_items[LG_XDS_SRDS]; ++i) {
        const lg_xds_dump_item_t *it = src->xds->items[LG_XDS_SRDS] + i;
        if (g == NULL || strcmp(g->name, it->name) != 0) {
            g = lg_malloc(sizeof(*g));
            envoy__admin__v3__scoped_routes_config_dump__dynamic_scoped_route_configs__init(g);
            g->name = lg_strdup(it->name);
            g->version_info = lg_strdup(src->xds->version_info[LG_XDS_SRDS]);
            g->last_updated = timestamp(it->active->last_updated_wall_us);
            APPEND(d->dynamic_scoped_route_configs, d->n_dynamic_scoped_route_configs, g);
        }
        APPEND(g->scoped_route_configs, g->n_scoped_route_configs, any_of_res(it->active));
    }
    return &d->base;
}

/* ---- ?mask= and ?resource= ---- */

static void put_varint(lg_strbuf_t *b, uint64_t v)
{
    char buf[10];
    size_t n = 0;
    do {
        buf[n++] = (char)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
        v >>= 7;
    } while (v != 0);
    lg_strbuf_append(b, buf, n);
}

static int get_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    *v = 0;
    for (int shift = 0; *p < end && shift < 64; shift += 7) {
        uint8_t c = *(*p)++;
        *v |= (uint64_t)(c & 0x7f) << shift;
        if ((c & 0x80) == 0)
            return 0;
    }
    return -1;
}

/* The paths under `name` ("name.x" -> "x"); returns 1 when `name` itself is one. */
static int sub_paths(char **paths, size_t n, const char *name, char **out, size_t *nout)
{
    size_t len = strlen(name);
    *nout = 0;
    for (size_t i = 0; i != n; ++i) {
        if (strcmp(paths[i], name) == 0)
            return 1;
        if (strncmp(paths[i], name, len) == 0 && paths[i][len] == '.')
            out[(*nout)++] = paths[i] + len + 1;
    }
    return 0;
}

/* Envoy's FieldMaskUtil::TrimMessage on the wire format: keeps the fields on
 * `paths` (dotted, from message `d`) and drops the rest. */
static void trim(const uint8_t *p, size_t n, const ProtobufCMessageDescriptor *d, char **paths, size_t npaths, lg_strbuf_t *out)
{
    const uint8_t *end = p + n;
    char **sub = lg_malloc((npaths + 1) * sizeof(*sub));
    while (p < end) {
        const uint8_t *start = p;
        uint64_t key, len = 0;
        if (get_varint(&p, end, &key) != 0)
            break;
        switch (key & 7) {
        case 0:
            if (get_varint(&p, end, &len) != 0)
                goto done;
            len = 0;
            break;
        case 1:
            len = 8;
            break;
        case 2:
            if (get_varint(&p, end, &len) != 0)
                goto done;
            break;
        case 5:
            len = 4;
            break;
        default:
            goto done;
        }
        if (len > (uint64_t)(end - p))
            break;
        const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field(d, (unsigned)(key >> 3));
        size_t nsub = 0;
        if (f != NULL && sub_paths(paths, npaths, f->name, sub, &nsub)) {
            lg_strbuf_append(out, (const char *)start, (size_t)(p - start) + len);
        } else if (f != NULL && nsub != 0 && (key & 7) == 2 && f->type == PROTOBUF_C_TYPE_MESSAGE) {
            lg_strbuf_t inner = {NULL};
            lg_strbuf_reserve(&inner, 1);
            trim(p, len, f->descriptor, sub, nsub, &inner);
            put_varint(out, key);
            put_varint(out, inner.len);
            lg_strbuf_append(out, inner.base, inner.len);
            lg_strbuf_free(&inner);
        }
        p += len;
    }
done:
    free(sub);
}

/* An Any of `m` (not freed), trimmed to `mask` (comma-separated paths) when given. */
static Google__Protobuf__Any *any_masked(const ProtobufCMessage *m, const char *mask)
{
    Google__Protobuf__Any *a = any_of(m);
    if (mask == NULL)
        return a;
    char *copy = lg_strdup(mask), **paths = NULL, *save = NULL;
    size_t n = 0;
    for (char *t = strtok_r(copy, ",", &save); t != NULL; t = strtok_r(NULL, ",", &save)) {
        paths = lg_realloc(paths, (n + 1) * sizeof(*paths));
        paths[n++] = t;
    }
    lg_strbuf_t out = {NULL};
    lg_strbuf_reserve(&out, 1);
    trim(a->value.data, a->value.len, m->descriptor, paths, n, &out);
    free(a->value.data);
    a->value.data = (uint8_t *)out.base;
    a->value.len = out.len;
    free(paths);
    free(copy);
    return a;
}

/* ?resource=: the elements of the repeated message field of that name, from every part. */
static void add_resources(Envoy__Admin__V3__ConfigDump *dump, const ProtobufCMessage *m, const char *resource, const char *mask)
{
    const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field_by_name(m->descriptor, resource);
    if (f == NULL || f->label != PROTOBUF_C_LABEL_REPEATED || f->type != PROTOBUF_C_TYPE_MESSAGE)
        return;
    size_t n = *(const size_t *)((const char *)m + f->quantifier_offset);
    ProtobufCMessage *const *items = *(ProtobufCMessage *const *const *)((const char *)m + f->offset);
    for (size_t i = 0; i != n; ++i)
        APPEND(dump->configs, dump->n_configs, any_masked(items[i], mask));
}

void lg_config_dump(lg_strbuf_t *out, const lg_config_dump_src_t *src)
{
    ProtobufCMessage *(*const parts[])(const lg_config_dump_src_t *) = {
        bootstrap_dump, clusters_dump, ecds_dump, endpoints_dump, listeners_dump, scoped_routes_dump, routes_dump, secrets_dump};
    Envoy__Admin__V3__ConfigDump dump;
    envoy__admin__v3__config_dump__init(&dump);
    for (size_t i = 0; i != LG_ARRAY_SIZE(parts); ++i) {
        if (parts[i] == endpoints_dump && !src->include_eds)
            continue;
        ProtobufCMessage *m = parts[i](src);
        if (m == NULL)
            continue;
        if (src->resource != NULL)
            add_resources(&dump, m, src->resource, src->mask);
        else
            APPEND(dump.configs, dump.n_configs, any_masked(m, src->mask));
        protobuf_c_message_free_unpacked(m, NULL);
    }
    lg_pbjson_encode(out, &dump.base, 1);
    for (size_t i = 0; i != dump.n_configs; ++i)
        protobuf_c_message_free_unpacked(&dump.configs[i]->base, NULL);
    free(dump.configs);
}
