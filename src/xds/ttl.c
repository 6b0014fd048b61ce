/*
 * Resource TTLs (xds_protocol "TTL"): a resource delivered in a Resource
 * wrapper with a ttl is removed when the ttl passes without a refresh, as if
 * the control plane had removed it; a new version or a heartbeat (a wrapper
 * without a body and with the same version) refreshes it. Works for every
 * type, SotW and delta.
 */
#include "xds_internal.h"

typedef struct st_ttl_entry_t {
    char *name;
    char *version;
    lg__xds_sub_t *sub;
    uint64_t expires_ms;
} ttl_entry_t;

static const char *ttl_key(const void *v)
{
    return ((const ttl_entry_t *)v)->name;
}

static void entry_free(ttl_entry_t *e)
{
    if (e == NULL)
        return;
    free(e->name);
    free(e->version);
    free(e);
}

void lg__xds_ttl_init(lg_xds_t *x)
{
    for (size_t t = 0; t != LG_XDS__NTYPES; ++t)
        lg_strmap_init(&x->ttls[t], ttl_key);
}

void lg__xds_ttl_dispose(lg_xds_t *x)
{
    for (size_t t = 0; t != LG_XDS__NTYPES; ++t) {
        for (size_t i = 0; x->ttls[t].slots != NULL && i <= x->ttls[t].mask; ++i)
            entry_free(x->ttls[t].slots[i]);
        lg_strmap_dispose(&x->ttls[t]);
    }
}

void lg__xds_ttl_track(lg__xds_sub_t *sub, const lg__xds_change_t *changes, size_t n)
{
    lg_strmap_t *m = &sub->xds->ttls[sub->type];
    uint64_t now = lg_now_ms();
    for (size_t i = 0; i != n; ++i) {
        const lg__xds_change_t *c = changes + i;
        if (c->res == NULL || c->res->ttl_ms == 0) {
            entry_free(lg_strmap_del(m, c->name));
            continue;
        }
        ttl_entry_t *e = lg_strmap_get(m, c->name);
        if (e == NULL) {
            e = lg_calloc(1, sizeof(*e));
            e->name = lg_strdup(c->name);
            lg_strmap_put(m, e);
        }
        free(e->version);
        e->version = lg_strdup(c->ttl_version != NULL ? c->ttl_version : c->res->version);
        e->sub = sub;
        e->expires_ms = now + c->res->ttl_ms;
    }
}

void lg__xds_ttl_heartbeat(lg__xds_sub_t *sub, const char *name, const char *version, uint64_t ttl_ms)
{
    ttl_entry_t *e = lg_strmap_get(&sub->xds->ttls[sub->type], name);
    if (e == NULL || strcmp(e->version, version != NULL ? version : "") != 0) {
        LG_DEBUG(xds, "%s: ignoring a heartbeat for '%s' (version '%s'): not held with a TTL at that version",
                 lg_xds_type_names[sub->type], name, version != NULL ? version : "");
        return;
    }
    if (ttl_ms != 0)
        e->expires_ms = lg_now_ms() + ttl_ms;
    else
        entry_free(lg_strmap_del(&sub->xds->ttls[sub->type], name));
}

int lg__xds_ttl_expire(lg_xds_t *x, uint64_t now_ms)
{
    int any = 0;
    for (size_t t = 0; t != LG_XDS__NTYPES; ++t) {
        for (size_t i = 0; x->ttls[t].slots != NULL && i <= x->ttls[t].mask; ++i) {
            ttl_entry_t *e = x->ttls[t].slots[i];
            if (e == NULL || now_ms < e->expires_ms)
                continue;
            LG_INFO(xds, "%s: the TTL of '%s' expired: removing it", lg_xds_type_names[t], e->name);
            lg__xds_change_t ch = {e->name, NULL, NULL, NULL};
            lg_strbuf_t errors = {NULL};
            lg_strbuf_reserve(&errors, 1);
            lg__xds_apply(e->sub, &ch, 1, &errors);
            lg_strbuf_free(&errors);
            lg_strmap_del(&x->ttls[t], e->name);
            entry_free(e);
            any = 1;
            i = (size_t)-1; /* the map changed: rescan */
            if (x->ttls[t].slots == NULL)
                break;
        }
    }
    return any;
}
