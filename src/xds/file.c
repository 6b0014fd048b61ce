/*
 * path_config_source: a file holding a DiscoveryResponse (YAML, JSON or
 * binary proto, by extension, as Envoy reads them) whose resources are the
 * whole state of one type. The file is read when the subscription starts
 * and again whenever it changes (inode, size or modification time: an
 * atomic rename, as Envoy expects, or an edit in place). There is nothing
 * to acknowledge.
 */
#include <sys/stat.h>
#include "xds_internal.h"
#include "legate/pbjson.h"

#define CHECK_INTERVAL_MS 100

typedef struct st_file_mux_t {
    lg__xds_mux_t super;
    char *path;
    uint64_t next_check_ms;
    struct stat seen;
    unsigned have_seen : 1;
    unsigned missing_reported : 1;
    unsigned loading : 1;
    unsigned again : 1;
} file_mux_t;

static int differs(const file_mux_t *f, const struct stat *st)
{
    return !f->have_seen || st->st_ino != f->seen.st_ino || st->st_dev != f->seen.st_dev || st->st_size != f->seen.st_size ||
           st->st_mtim.tv_sec != f->seen.st_mtim.tv_sec || st->st_mtim.tv_nsec != f->seen.st_mtim.tv_nsec;
}

static void load(file_mux_t *f, lg__xds_sub_t *sub)
{
    lg_error_t err = {{0}};
    int flags = f->super.xds->opts->reject_unknown_dynamic_fields ? 0 : LG_PBJSON_ALLOW_UNKNOWN_FIELDS;
    Envoy__Service__Discovery__V3__DiscoveryResponse *r =
        (void *)lg_pbjson_load_file(&envoy__service__discovery__v3__discovery_response__descriptor, f->path, NULL, flags, &err);
    if (r == NULL) {
        LG_WARN(config, "%s: cannot load %s: %s", lg_xds_type_names[sub->type], f->path, err.msg);
        lg__xds_update_failed(sub);
        return;
    }
    lg_strbuf_t nack = {NULL};
    lg_strbuf_reserve(&nack, 1);
    if (lg__xds_sotw_update(sub, r->version_info, r->resources, r->n_resources, &nack) != 0)
        LG_WARN(config, "%s: %s (version %s) rejected: %s", lg_xds_type_names[sub->type], f->path, r->version_info, nack.base);
    else
        LG_INFO(config, "%s: applied %s (version %s)", lg_xds_type_names[sub->type], f->path, r->version_info);
    lg_strbuf_free(&nack);
    protobuf_c_message_free_unpacked(&r->base, NULL);
}

static lg__xds_sub_t *the_sub(file_mux_t *f)
{
    for (size_t t = 0; t != LG_XDS__NTYPES; ++t)
        if (f->super.subs[t] != NULL)
            return f->super.subs[t];
    return NULL;
}

/* Loads the file when it changed, or when `force` (new names were
 * subscribed: like a control plane, the file delivers them again). A load
 * may subscribe more names of the same file: that reload runs after it. */
static void check(file_mux_t *f, int force)
{
    lg__xds_sub_t *sub = the_sub(f);
    struct stat st;
    if (sub == NULL || !sub->started)
        return;
    if (f->loading) {
        f->again |= force;
        return;
    }
    do {
        f->again = 0;
        if (stat(f->path, &st) != 0) {
            if (!f->missing_reported)
                lg__xds_update_failed(sub);
            f->missing_reported = 1;
            return;
        }
        if (!force && !differs(f, &st))
            return;
        f->seen = st;
        f->have_seen = 1;
        f->missing_reported = 0;
        f->loading = 1;
        lg_preempt_tick_start(); /* the control thread's loop stops it */
        load(f, sub);
        f->loading = 0;
        force = 1;
    } while (f->again);
}

static void file_interest(lg__xds_mux_t *m, lg__xds_sub_t *sub)
{
    check((file_mux_t *)m, 1);
}

static void file_tick(lg__xds_mux_t *m, uint64_t now_ms)
{
    file_mux_t *f = (file_mux_t *)m;
    if (now_ms < f->next_check_ms)
        return;
    f->next_check_ms = now_ms + CHECK_INTERVAL_MS;
    check(f, 0);
}

static void file_free(lg__xds_mux_t *m)
{
    file_mux_t *f = (file_mux_t *)m;
    free(f->path);
    free(f);
}

static const lg__xds_mux_ops_t file_ops = {file_interest, file_tick, file_free};

lg__xds_mux_t *lg__xds_file_mux_new(lg_xds_t *x, const char *path)
{
    file_mux_t *f = lg_calloc(1, sizeof(*f));
    f->super.ops = &file_ops;
    f->super.xds = x;
    f->path = lg_strdup(path);
    return &f->super;
}
