/*
 * Resource records and the dump information snapshots carry: immutable,
 * refcounted, released from any thread.
 */
#include "legate/xds.h"

const char *const lg_xds_type_urls[LG_XDS__NTYPES] = {
    "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
    "type.googleapis.com/envoy.config.listener.v3.Listener",
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
    "type.googleapis.com/envoy.service.runtime.v3.Runtime",
    "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
    "type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration",
};

const char *const lg_xds_type_names[LG_XDS__NTYPES] = {"cds", "eds", "lds", "rds", "sds", "rtds", "ecds", "srds"};

int lg_xds_type_of_url(const char *url)
{
    for (int t = 0; t != LG_XDS__NTYPES; ++t)
        if (strcmp(url, lg_xds_type_urls[t]) == 0)
            return t;
    return -1;
}

lg_xds_resource_t *lg_xds_resource_ref(lg_xds_resource_t *r)
{
    if (r != NULL)
        __atomic_add_fetch(&r->refcnt, 1, __ATOMIC_RELAXED);
    return r;
}

void lg_xds_resource_release(lg_xds_resource_t *r)
{
    if (r == NULL || __atomic_sub_fetch(&r->refcnt, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    free(r); /* name, version and bytes live in the record's allocation (update.c) */
}

lg_xds_dump_t *lg_xds_dump_ref(lg_xds_dump_t *d)
{
    if (d != NULL)
        __atomic_add_fetch(&d->refcnt, 1, __ATOMIC_RELAXED);
    return d;
}

void lg_xds_dump_release(lg_xds_dump_t *d)
{
    if (d == NULL || __atomic_sub_fetch(&d->refcnt, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    for (size_t t = 0; t != LG_XDS__NTYPES; ++t) {
        for (size_t i = 0; i != d->n_items[t]; ++i) {
            lg_xds_dump_item_t *it = d->items[t] + i;
            /* the name is one of its records' names, or its own copy (state.c) */
            if (!((it->active != NULL && it->name == it->active->name) || (it->warming != NULL && it->name == it->warming->name) ||
                  (it->failed != NULL && it->name == it->failed->name)))
                free(it->name);
            lg_xds_resource_release(it->active);
            lg_xds_resource_release(it->warming);
            lg_xds_resource_release(it->failed);
            free(it->error);
        }
        free(d->items[t]);
        free(d->version_info[t]);
    }
    free(d);
}
