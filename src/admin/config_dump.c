/*
 * /config_dump: Envoy's envoy.admin.v3.ConfigDump, built as a message and
 * printed by the proto3 JSON encoder so that its shape is Envoy's: the
 * bootstrap, then clusters, listeners and routes, each an Any.
 */
#include "legate/admin.h"
#include "legate/config_dump.h"
#include "legate/pbjson.h"
#include "envoy/admin/v3/config_dump.pb-c.h"
#include "envoy/admin/v3/config_dump_shared.pb-c.h"
#include "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.pb-c.h"
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

/* Packs `m` into an Any and frees it. */
static Google__Protobuf__Any *any_take(ProtobufCMessage *m)
{
    Google__Protobuf__Any *a = any_of(m);
    protobuf_c_message_free_unpacked(m, NULL);
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

static ProtobufCMessage *clusters_dump(const lg_config_dump_src_t *src)
{
    const Envoy__Config__Bootstrap__V3__Bootstrap *b = (const void *)src->bootstrap;
    Envoy__Admin__V3__ClustersConfigDump *d = lg_malloc(sizeof(*d));
    envoy__admin__v3__clusters_config_dump__init(d);
    size_t n = b->static_resources != NULL ? b->static_resources->n_clusters : 0;
    d->static_clusters = lg_calloc(n ? n : 1, sizeof(*d->static_clusters));
    for (size_t i = 0; i != n; ++i) {
        Envoy__Admin__V3__ClustersConfigDump__StaticCluster *c = lg_malloc(sizeof(*c));
        envoy__admin__v3__clusters_config_dump__static_cluster__init(c);
        c->cluster = any_of(&b->static_resources->clusters[i]->base);
        c->last_updated = timestamp(src->last_updated_wall_us);
        d->static_clusters[d->n_static_clusters++] = c;
    }
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
            f->typed_config, &envoy__extensions__filters__network__http_connection_manager__v3__http_connection_manager__descriptor, &err);
        if (hcm == NULL)
            continue;
        if (hcm->route_specifier_case ==
            ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_CONNECTION_MANAGER__ROUTE_SPECIFIER_ROUTE_CONFIG) {
            Envoy__Admin__V3__RoutesConfigDump__StaticRouteConfig *r = lg_malloc(sizeof(*r));
            envoy__admin__v3__routes_config_dump__static_route_config__init(r);
            r->route_config = any_of(&hcm->route_config->base);
            r->last_updated = timestamp(wall_us);
            d->static_route_configs = lg_realloc(d->static_route_configs, sizeof(*d->static_route_configs) * (d->n_static_route_configs + 1));
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
    return &d->base;
}

void lg_config_dump(lg_strbuf_t *out, const lg_config_dump_src_t *src)
{
    ProtobufCMessage *(*const parts[])(const lg_config_dump_src_t *) = {bootstrap_dump, clusters_dump, listeners_dump, routes_dump};
    Envoy__Admin__V3__ConfigDump dump;
    envoy__admin__v3__config_dump__init(&dump);
    dump.configs = lg_calloc(LG_ARRAY_SIZE(parts), sizeof(*dump.configs));
    for (size_t i = 0; i != LG_ARRAY_SIZE(parts); ++i)
        dump.configs[dump.n_configs++] = any_take(parts[i](src));
    lg_pbjson_encode(out, &dump.base, 1);
    for (size_t i = 0; i != dump.n_configs; ++i)
        protobuf_c_message_free_unpacked(&dump.configs[i]->base, NULL);
    free(dump.configs);
}
