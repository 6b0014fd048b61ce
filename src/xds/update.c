/*
 * One response of a transport, SotW or delta, turned into decoded changes:
 * the Resource wrapper is unwrapped, type URLs are checked, duplicate names
 * reject the whole response, and SotW removes the wildcard resources a
 * response leaves out. Counts the subscription stats Envoy counts.
 */
#include "xds_internal.h"
#include "legate/pbjson.h"
#include "envoy/config/core/v3/extension.pb-c.h"
#include "envoy/config/route/v3/scoped_route.pb-c.h"
#include "envoy/extensions/transport_sockets/tls/v3/secret.pb-c.h"
#include "envoy/service/runtime/v3/rtds.pb-c.h"

#define RESOURCE_URL "type.googleapis.com/envoy.service.discovery.v3.Resource"

const lg_stat_def_t lg__xds_sub_stat_defs[LG__XDS_SUB__COUNT] = {LG__XDS_SUB_STATS(LG_STAT_DEF)};
const lg_stat_def_t lg__xds_ecds_stat_defs[LG__XDS_ECDS__COUNT] = {LG__XDS_ECDS_STATS(LG_STAT_DEF)};
const lg_stat_def_t lg__xds_srds_stat_defs[LG__XDS_SRDS__COUNT] = {LG__XDS_SRDS_STATS(LG_STAT_DEF)};

static const ProtobufCMessageDescriptor *const descriptors[LG_XDS__NTYPES] = {
    &envoy__config__cluster__v3__cluster__descriptor,
    &envoy__config__endpoint__v3__cluster_load_assignment__descriptor,
    &envoy__config__listener__v3__listener__descriptor,
    &envoy__config__route__v3__route_configuration__descriptor,
    &envoy__extensions__transport_sockets__tls__v3__secret__descriptor,
    &envoy__service__runtime__v3__runtime__descriptor,
    &envoy__config__core__v3__typed_extension_config__descriptor,
    &envoy__config__route__v3__scoped_route_configuration__descriptor,
};

/* What Envoy calls each type in its duplicate-name errors. */
static const char *const nouns[LG_XDS__NTYPES] = {
    "cluster",          "cluster load assignment",   "listener", "route configuration", "secret", "runtime",
    "extension config", "scoped route configuration"};

uint64_t lg__xds_hash(const void *p, size_t n)
{
    return lg_fnv1a(LG_FNV1A_INIT, p, n);
}

static const char *resource_name(lg_xds_type_t type, const ProtobufCMessage *m)
{
    switch (type) {
    case LG_XDS_CDS:
        return ((const Envoy__Config__Cluster__V3__Cluster *)m)->name;
    case LG_XDS_EDS:
        return ((const Envoy__Config__Endpoint__V3__ClusterLoadAssignment *)m)->cluster_name;
    case LG_XDS_LDS:
        return ((const Envoy__Config__Listener__V3__Listener *)m)->name;
    case LG_XDS_RDS:
        return ((const Envoy__Config__Route__V3__RouteConfiguration *)m)->name;
    case LG_XDS_SDS:
        return ((const Envoy__Extensions__TransportSockets__Tls__V3__Secret *)m)->name;
    case LG_XDS_RTDS:
        return ((const Envoy__Service__Runtime__V3__Runtime *)m)->name;
    case LG_XDS_ECDS:
        return ((const Envoy__Config__Core__V3__TypedExtensionConfig *)m)->name;
    default:
        return ((const Envoy__Config__Route__V3__ScopedRouteConfiguration *)m)->name;
    }
}

static lg_xds_resource_t *resource_new(lg_xds_type_t type, const char *name, const char *version, const ProtobufCBinaryData *bytes,
                                       uint64_t ttl_ms)
{
    /* one allocation: the record, its bytes, its name, its version (lg_xds_resource_release frees it) */
    if (version == NULL)
        version = "";
    size_t nlen = strlen(name), vlen = strlen(version);
    lg_xds_resource_t *r = lg_calloc(1, sizeof(*r) + bytes->len + 1 + nlen + 1 + vlen + 1);
    uint8_t *p = (uint8_t *)(r + 1);
    r->refcnt = 1;
    r->type = type;
    r->bytes.len = bytes->len;
    r->bytes.data = p;
    memcpy(p, bytes->data, bytes->len);
    p += bytes->len + 1;
    r->name = memcpy(p, name, nlen + 1);
    p += nlen + 1;
    r->version = memcpy(p, version, vlen + 1);
    r->last_updated_wall_us = lg_wall_us();
    r->hash = lg__xds_hash(bytes->data, bytes->len);
    r->ttl_ms = ttl_ms;
    return r;
}

/* The allocator of the decoded resources of one response (update.c owns the
 * arena): an arena for the types whose apply never keeps the message (the
 * messages die with the changes), NULL (the heap) for the others. */
static ProtobufCAllocator *changes_allocator(lg__xds_sub_t *sub, lg__xds_arena_t *arena)
{
    if (sub->type != LG_XDS_CDS && sub->type != LG_XDS_EDS && sub->type != LG_XDS_LDS)
        return NULL;
    lg__xds_arena_init(arena);
    return &arena->allocator;
}

/* Decodes `any` (a resource of sub's type) into *out, with allocator `al`. */
static int decode(lg__xds_sub_t *sub, const Google__Protobuf__Any *any, const char *version, uint64_t ttl_ms, lg__xds_change_t *out,
                  ProtobufCAllocator *al, lg_error_t *err)
{
    if (strcmp(any->type_url, lg_xds_type_urls[sub->type]) != 0)
        return lg_error(err, "%s does not match the message-wide type URL %s in DiscoveryResponse", any->type_url,
                        lg_xds_type_urls[sub->type]);
    ProtobufCMessage *m = protobuf_c_message_unpack(descriptors[sub->type], al, any->value.len, any->value.data);
    if (m == NULL)
        return lg_error(err, "cannot parse a %s resource (%zu bytes)", nouns[sub->type], any->value.len);
    const char *name = resource_name(sub->type, m);
    out->name = lg_strdup(name);
    out->msg = m;
    out->res = resource_new(sub->type, name, version, &any->value, ttl_ms);
    return 0;
}

static uint64_t ttl_of(const Google__Protobuf__Duration *d)
{
    return d != NULL ? (uint64_t)d->seconds * 1000 + (uint64_t)d->nanos / 1000000 : 0;
}

/* A SotW resource: the type itself, or a Resource wrapping it (TTL). Sets
 * out->name NULL for a wrapper without a body (a TTL heartbeat, applied here). */
static int decode_sotw(lg__xds_sub_t *sub, const Google__Protobuf__Any *any, const char *version, lg__xds_change_t *out,
                       ProtobufCAllocator *al, lg_error_t *err)
{
    if (strcmp(any->type_url, RESOURCE_URL) != 0)
        return decode(sub, any, version, 0, out, al, err);
    Envoy__Service__Discovery__V3__Resource *r = (void *)protobuf_c_message_unpack(
        &envoy__service__discovery__v3__resource__descriptor, NULL, any->value.len, any->value.data);
    if (r == NULL)
        return lg_error(err, "cannot parse a Resource wrapper");
    int rc = 0;
    if (r->resource != NULL) {
        if ((rc = decode(sub, r->resource, version, ttl_of(r->ttl), out, al, err)) == 0 && r->version[0] != '\0')
            out->ttl_version = lg_strdup(r->version);
    } else if (r->name[0] != '\0') {
        lg__xds_ttl_heartbeat(sub, r->name, r->version, ttl_of(r->ttl));
    }
    protobuf_c_message_free_unpacked(&r->base, NULL);
    return rc;
}

/* Frees the changes and their messages (`arena`: where changes_allocator() put them, or NULL). */
static void changes_free(lg__xds_change_t *c, size_t n, lg__xds_arena_t *arena)
{
    for (size_t i = 0; i != n; ++i) {
        free(c[i].name);
        free(c[i].ttl_version);
        lg_xds_resource_release(c[i].res);
        if (c[i].msg != NULL && arena == NULL)
            protobuf_c_message_free_unpacked(c[i].msg, NULL);
    }
    free(c);
    if (arena != NULL)
        lg__xds_arena_dispose(arena);
}

static const char *change_key(const void *v)
{
    return ((const lg__xds_change_t *)v)->name;
}

/* Drops heartbeats (no name); fails on a name that appears twice. */
static int check_names(lg__xds_sub_t *sub, lg__xds_change_t *c, size_t *n, lg_error_t *err)
{
    lg_strmap_t seen;
    size_t o = 0;
    int rc = 0;
    lg_strmap_init(&seen, change_key);
    for (size_t i = 0; i != *n; ++i) {
        if (c[i].name == NULL)
            continue;
        if (rc == 0 && lg_strmap_get(&seen, c[i].name) != NULL)
            rc = lg_error(err, "duplicate %s %s found", nouns[sub->type], c[i].name);
        c[o++] = c[i];
        lg_strmap_put(&seen, c + o - 1);
    }
    *n = o;
    lg_strmap_dispose(&seen);
    return rc;
}

typedef struct st_removals_t {
    const lg_strmap_t *present;
    char **names;
    size_t n;
} removals_t;

static void add_removal(void *ctx, const char *name)
{
    removals_t *r = ctx;
    if (lg_strmap_get(r->present, name) != NULL)
        return;
    r->names = lg_realloc(r->names, (r->n + 1) * sizeof(*r->names));
    r->names[r->n++] = lg_strdup(name);
}

/* SotW for LDS, CDS and SRDS: what the response leaves out is removed. */
static lg__xds_change_t *add_removals(lg__xds_sub_t *sub, lg__xds_change_t *c, size_t *n)
{
    lg_strmap_t present;
    lg_strmap_init(&present, change_key);
    for (size_t i = 0; i != *n; ++i)
        lg_strmap_put(&present, c + i);
    removals_t r = {&present, NULL, 0};
    lg__xds_foreach_dynamic(sub, add_removal, &r);
    lg_strmap_dispose(&present);
    c = lg_realloc(c, (*n + r.n + 1) * sizeof(*c));
    for (size_t i = 0; i != r.n; ++i)
        c[(*n)++] = (lg__xds_change_t){r.names[i], NULL, NULL};
    free(r.names);
    return c;
}

static void count(lg__xds_sub_t *sub, size_t idx)
{
    lg__xds_sub_count(sub, idx);
}

/* Applies the changes and accounts for the outcome; takes `c` (and `arena`'s messages). */
static int finish(lg__xds_sub_t *sub, const char *version, lg__xds_change_t *c, size_t n, lg__xds_arena_t *arena, lg_strbuf_t *nack)
{
    lg_xds_t *x = sub->xds;
    size_t rejected = lg__xds_apply(sub, c, n, nack);
    lg__xds_ttl_track(sub, c, n);
    changes_free(c, n, arena);
    x->errors = nack;
    lg__xds_refresh(x);
    x->errors = NULL;
    sub->initialized = 1;
    if (rejected != 0 || nack->len != 0) {
        count(sub, LG__XDS_SUB_update_rejected);
        if (sub->type == LG_XDS_CDS || sub->type == LG_XDS_LDS) {
            /* Envoy's message for partially applied cluster and listener updates */
            char *detail = lg_strdup(nack->base);
            nack->len = 0;
            lg_strbuf_printf(nack, "Error adding/updating %s(s) %s", sub->type == LG_XDS_CDS ? "cluster" : "listener", detail);
            free(detail);
        }
    } else {
        free(sub->version_info);
        sub->version_info = lg_strdup(version);
        lg__xds_sub_accepted(sub, version);
    }
    lg__xds_after_update(x);
    return nack->len != 0 ? -1 : 0;
}

static int reject(lg__xds_sub_t *sub, lg__xds_change_t *c, size_t n, lg__xds_arena_t *arena, const lg_error_t *err,
                  lg_strbuf_t *nack)
{
    LG_WARN(config, "%s: rejected a response: %s", lg_xds_type_names[sub->type], err->msg);
    changes_free(c, n, arena);
    lg_strbuf_puts(nack, err->msg);
    count(sub, LG__XDS_SUB_update_rejected);
    sub->initialized = 1;
    lg__xds_after_update(sub->xds);
    return -1;
}

int lg__xds_sotw_update(lg__xds_sub_t *sub, const char *version_info, Google__Protobuf__Any **resources, size_t n,
                        lg_strbuf_t *nack)
{
    sub->xds->update_start_us = lg_now_us();
    lg_error_t err = {{0}};
    lg__xds_change_t *c = lg_calloc(n + 1, sizeof(*c));
    size_t nc = 0;
    lg__xds_arena_t arena_s, *arena = &arena_s;
    ProtobufCAllocator *al = changes_allocator(sub, arena);
    if (al == NULL)
        arena = NULL;
    count(sub, LG__XDS_SUB_update_attempt);
    for (; nc != n; ++nc)
        if (decode_sotw(sub, resources[nc], version_info, c + nc, al, &err) != 0)
            return reject(sub, c, nc + 1, arena, &err, nack);
    if (check_names(sub, c, &nc, &err) != 0)
        return reject(sub, c, nc, arena, &err, nack);
    if (sub->wildcard)
        c = add_removals(sub, c, &nc);
    return finish(sub, version_info, c, nc, arena, nack);
}

int lg__xds_delta_update(lg__xds_sub_t *sub, const char *system_version_info, Envoy__Service__Discovery__V3__Resource **resources,
                         size_t n, char **removed, size_t n_removed, lg_strbuf_t *nack)
{
    sub->xds->update_start_us = lg_now_us();
    lg_error_t err = {{0}};
    lg__xds_change_t *c = lg_calloc(n + n_removed + 1, sizeof(*c));
    size_t nc = 0;
    lg__xds_arena_t arena_s, *arena = &arena_s;
    ProtobufCAllocator *al = changes_allocator(sub, arena);
    if (al == NULL)
        arena = NULL;
    count(sub, LG__XDS_SUB_update_attempt);
    for (size_t i = 0; i != n; ++i, ++nc) {
        const Envoy__Service__Discovery__V3__Resource *r = resources[i];
        if (r->resource == NULL) {
            if (r->name[0] != '\0')
                lg__xds_ttl_heartbeat(sub, r->name, r->version, ttl_of(r->ttl));
            continue; /* its slot stays empty: check_names drops it */
        }
        if (decode(sub, r->resource, r->version, ttl_of(r->ttl), c + nc, al, &err) != 0)
            return reject(sub, c, nc + 1, arena, &err, nack);
        if (r->name != NULL && r->name[0] != '\0' && strcmp(r->name, c[nc].name) != 0) {
            lg_error(&err, "resource name %s does not match the name %s in the %s", r->name, c[nc].name, nouns[sub->type]);
            return reject(sub, c, nc + 1, arena, &err, nack);
        }
    }
    for (size_t i = 0; i != n_removed; ++i)
        c[nc++] = (lg__xds_change_t){lg_strdup(removed[i]), NULL, NULL};
    if (check_names(sub, c, &nc, &err) != 0)
        return reject(sub, c, nc, arena, &err, nack);
    return finish(sub, system_version_info != NULL ? system_version_info : "", c, nc, arena, nack);
}

void lg__xds_update_failed(lg__xds_sub_t *sub)
{
    count(sub, LG__XDS_SUB_update_failure);
    lg_xds_t *x = sub->xds;
    for (size_t i = 0; x->deps[sub->type].slots != NULL && i <= x->deps[sub->type].mask; ++i) {
        lg__xds_dep_t *d = x->deps[sub->type].slots[i];
        if (d == NULL || d->sub != sub)
            continue;
        for (size_t k = 0; k != d->n_stats; ++k)
            lg_stats_control_add(d->stats[k], sub->type == LG_XDS_EDS ? LG__XDS_EDS_update_failure : LG__XDS_SUB_update_failure, 1);
    }
}
