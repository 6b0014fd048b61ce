/*
 * Config snapshots: compiled from a Bootstrap (and later from xDS), shared by
 * every worker, freed when the last holder lets go.
 */
#include "legate/cluster.h"
#include "legate/listener.h"
#include "legate/pbjson.h"
#include "legate/server.h"
#include "legate/stats.h"

static lg_snapshot_t *snapshot_new(void)
{
    lg_snapshot_t *s = lg_calloc(1, sizeof(*s));
    s->refcnt = 1;
    s->worker_uses = lg_calloc(lg_stats_nworkers + 1, sizeof(size_t));
    s->last_updated_wall_us = lg_wall_us();
    return s;
}

lg_snapshot_t *lg_snapshot_ref(lg_snapshot_t *s)
{
    __atomic_add_fetch(&s->refcnt, 1, __ATOMIC_RELAXED);
    return s;
}

void lg_snapshot_unref(lg_snapshot_t *s)
{
    if (s == NULL || __atomic_sub_fetch(&s->refcnt, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    for (size_t i = 0; i != s->n_listeners; ++i)
        lg_listener_config_release(s->listeners[i]);
    for (size_t i = 0; i != s->n_clusters; ++i)
        lg_cluster_config_release(s->clusters[i]);
    free(s->listeners);
    free(s->clusters);
    if (s->bootstrap != NULL)
        protobuf_c_message_free_unpacked(s->bootstrap, NULL);
    free(s->worker_uses);
    free(s);
}

void lg_snapshot_hold(lg_worker_t *w, lg_snapshot_t *s)
{
    if (s->worker_uses[w->index]++ == 0)
        lg_snapshot_ref(s);
}

void lg_snapshot_release(lg_worker_t *w, lg_snapshot_t *s)
{
    if (--s->worker_uses[w->index] == 0)
        lg_snapshot_unref(s);
}

const lg_route_table_t *lg_snapshot_route_table(lg_snapshot_t *s, const lg_hcm_config_t *hcm)
{
    return hcm->route_table;
}

static int cluster_exists(void *ctx, const char *name)
{
    lg_snapshot_t *s = ctx;
    for (size_t i = 0; i != s->n_clusters; ++i)
        if (strcmp((s->clusters[i])->name, name) == 0)
            return 1;
    return 0;
}

static int compile_clusters(lg_snapshot_t *s, const Envoy__Config__Bootstrap__V3__Bootstrap__StaticResources *sr, lg_error_t *err)
{
    s->clusters = lg_calloc(sr->n_clusters ? sr->n_clusters : 1, sizeof(*s->clusters));
    for (size_t i = 0; i != sr->n_clusters; ++i) {
        lg_cluster_config_t *c = lg_cluster_config_compile(sr->clusters[i], err);
        if (c == NULL)
            return lg_error_prefix(err, "static_resources.clusters[%zu]", i);
        for (size_t j = 0; j != s->n_clusters; ++j)
            if (strcmp((s->clusters[j])->name, (c)->name) == 0) {
                lg_error(err, "static_resources.clusters[%zu]: cluster manager: duplicate cluster '%s' found", i,
                         (c)->name);
                lg_cluster_config_release(c);
                return -1;
            }
        s->clusters[s->n_clusters++] = c;
    }
    return 0;
}

static int compile_listeners(lg_snapshot_t *s, const Envoy__Config__Bootstrap__V3__Bootstrap__StaticResources *sr, int flags,
                             lg_error_t *err)
{
    lg_hcm_compile_ctx_t ctx = {cluster_exists, s, flags};
    s->listeners = lg_calloc(sr->n_listeners ? sr->n_listeners : 1, sizeof(*s->listeners));
    for (size_t i = 0; i != sr->n_listeners; ++i) {
        lg_listener_config_t *l = lg_listener_config_compile(sr->listeners[i], &ctx, err);
        if (l == NULL)
            return lg_error_prefix(err, "static_resources.listeners[%zu]", i);
        for (size_t j = 0; j != s->n_listeners; ++j) {
            const char *why = strcmp(s->listeners[j]->name, l->name) == 0 ? "a listener with the same name"
                              : (s->listeners[j]->addrlen == l->addrlen && memcmp(&s->listeners[j]->addr, &l->addr, l->addrlen) == 0)
                                  ? "a listener with the same address"
                                  : NULL;
            if (why != NULL) {
                lg_error(err, "static_resources.listeners[%zu]: error adding listener '%s': %s already exists ('%s')", i,
                         l->address_str, why, s->listeners[j]->name);
                lg_listener_config_release(l);
                return -1;
            }
        }
        s->listeners[s->n_listeners++] = l;
    }
    return 0;
}

lg_snapshot_t *lg_snapshot_compile_bootstrap(ProtobufCMessage *msg, const lg_options_t *o, lg_error_t *err)
{
    Envoy__Config__Bootstrap__V3__Bootstrap *b = (Envoy__Config__Bootstrap__V3__Bootstrap *)msg;
    lg_snapshot_t *s = snapshot_new();
    int flags = o->allow_unknown_static_fields ? LG_PBJSON_ALLOW_UNKNOWN_FIELDS : 0;
    if (b->dynamic_resources != NULL) {
        lg_error(err, "dynamic_resources: xDS is not supported yet");
        goto fail;
    }
    if (b->static_resources != NULL) {
        if (b->static_resources->n_secrets != 0) {
            lg_error(err, "static_resources.secrets: secrets are not supported yet");
            goto fail;
        }
        if (compile_clusters(s, b->static_resources, err) != 0 || compile_listeners(s, b->static_resources, flags, err) != 0)
            goto fail;
    }
    s->bootstrap = msg;
    return s;
fail:
    lg_snapshot_unref(s);
    return NULL;
}
