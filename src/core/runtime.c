/*
 * Runtime: Envoy's layered runtime. Layers are parsed into sorted entry
 * arrays; a snapshot references its layers and merges them (the last layer
 * holding a key wins), so that a worker's lookup is one binary search.
 *
 * Value parsing follows Envoy's SnapshotImpl: a Struct number is a double,
 * and a uint when non-negative, and a bool when integral; a Struct string,
 * an admin value or a disk file is a bool ("true"/"false"), else a number
 * when it parses as one; a Struct with numerator/denominator is a
 * FractionalPercent; nested Structs flatten to dotted keys.
 */
#include <dirent.h>
#include <math.h>
#include <pthread.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#include "legate/admin.h"
#include "legate/runtime.h"
#include "legate/server.h"
#include "legate/stats.h"
#include "legate/worker-t.h"
#include "google/protobuf/struct.pb-c.h"

#define RUNTIME_STATS(X)                                  \
    X(COUNTER, deprecated_feature_use)                    \
    X(COUNTER, load_error)                                \
    X(COUNTER, load_success)                              \
    X(COUNTER, override_dir_exists)                       \
    X(COUNTER, override_dir_not_exists)                   \
    X(GAUGE, admin_overrides_active)                      \
    X(GAUGE, deprecated_feature_seen_since_process_start) \
    X(GAUGE, num_keys)                                    \
    X(GAUGE, num_layers)
#define RUNTIME_STAT_ENUM(type, name) STAT_##name,
enum { RUNTIME_STATS(RUNTIME_STAT_ENUM) STAT__COUNT };
static const lg_stat_def_t stat_defs[] = {RUNTIME_STATS(LG_STAT_DEF)};

#define MAX_WALK_DEPTH 16

typedef enum en_layer_kind_t { LAYER_STATIC, LAYER_DISK, LAYER_ADMIN, LAYER_RTDS } layer_kind_t;

/* A disk layer's source, and what its symlink_root was when last read: Envoy
 * reloads on a symbolic link swap (`ln -s v2 new && mv -Tf new current`),
 * which gives the link a new inode and target. */
typedef struct st_disk_source_t {
    char *symlink_root, *subdirectory;
    unsigned append_service_cluster : 1;
    struct {
        dev_t dev;
        ino_t ino;
        struct timespec mtime;
        char target[256];
    } seen;
} disk_source_t;

/* An entry list under construction. */
typedef struct st_entries_t {
    lg_runtime_entry_t *items;
    size_t n, cap;
} entries_t;

static struct {
    pthread_mutex_t mutex;
    int initialized;
    layer_kind_t *kinds;
    char **rtds_names; /* per layer: the RTDS resource name, or NULL */
    disk_source_t *disks; /* per layer: where a disk layer comes from (zeroed for other kinds) */
    char *service_cluster;
    lg_runtime_layer_t **layers;
    size_t n_layers;
    lg_runtime_t *current;
    uint64_t generation;
    lg_stats_block_t *stats;
} loader = {.mutex = PTHREAD_MUTEX_INITIALIZER};

static __thread const lg_runtime_t *thread_override;

/* ---- values ---- */

static void value_dispose(lg_runtime_value_t *v)
{
    free(v->raw);
}

/* Envoy's setNumberValue. */
static void set_number(lg_runtime_value_t *v, double d)
{
    v->has_double = 1;
    v->double_value = d;
    if (d < 2147483647.0 && d > -2147483648.0 && d == (double)(int)d) {
        v->has_bool = 1;
        v->bool_value = d != 0;
    }
    if (d >= 0 && d <= 18446744073709551615.0) {
        v->has_uint = 1;
        v->uint_value = (uint64_t)d;
    }
}

/* A raw string (admin layer, disk file, Struct string). */
static lg_runtime_value_t value_from_string(const char *s)
{
    lg_runtime_value_t v = {lg_strdup(s)};
    if (strcasecmp(s, "true") == 0 || strcasecmp(s, "false") == 0) {
        v.has_bool = 1;
        v.bool_value = strcasecmp(s, "true") == 0;
        return v;
    }
    char *end;
    double d = strtod(s, &end);
    if (s[0] != '\0' && *end == '\0' && isfinite(d))
        set_number(&v, d);
    return v;
}

static uint32_t denominator_of(const Google__Protobuf__Value *d, int *ok)
{
    static const struct {
        const char *name;
        uint32_t value;
    } names[] = {{"HUNDRED", 100}, {"TEN_THOUSAND", 10000}, {"MILLION", 1000000}};
    *ok = 1;
    if (d == NULL)
        return 100;
    if (d->kind_case == GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE)
        for (size_t i = 0; i != LG_ARRAY_SIZE(names); ++i)
            if (strcmp(d->string_value, names[i].name) == 0)
                return names[i].value;
    if (d->kind_case == GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE && d->number_value >= 0 && d->number_value <= 2 &&
        d->number_value == (int)d->number_value)
        return (uint32_t[]){100, 10000, 1000000}[(int)d->number_value];
    *ok = 0;
    return 0;
}

/* A Struct holding a FractionalPercent (Envoy's parseEntryFractionalPercentValue). */
static int fraction_from_struct(const Google__Protobuf__Struct *s, lg_runtime_value_t *v, const char *key, lg_error_t *err)
{
    const Google__Protobuf__Value *num = NULL, *den = NULL;
    for (size_t i = 0; i != s->n_fields; ++i) {
        if (strcmp(s->fields[i]->key, "numerator") == 0)
            num = s->fields[i]->value;
        else if (strcmp(s->fields[i]->key, "denominator") == 0)
            den = s->fields[i]->value;
        else
            return lg_error(err, "Invalid runtime entry value for %s: unknown FractionalPercent field '%s'", key,
                            s->fields[i]->key);
    }
    int ok;
    uint32_t d = denominator_of(den, &ok);
    if (!ok || (num != NULL && (num->kind_case != GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE || num->number_value < 0 ||
                                num->number_value > 4294967295.0 || num->number_value != floor(num->number_value))))
        return lg_error(err, "Invalid runtime entry value for %s: not a FractionalPercent", key);
    *v = (lg_runtime_value_t){lg_strdup("")};
    v->has_fraction = 1;
    v->numerator = num != NULL ? (uint32_t)num->number_value : 0;
    v->denominator = d;
    return 0;
}

static void entries_add(entries_t *e, const char *key, lg_runtime_value_t v)
{
    if (e->n == e->cap) {
        e->cap = e->cap ? e->cap * 2 : 16;
        e->items = lg_realloc(e->items, e->cap * sizeof(*e->items));
    }
    e->items[e->n++] = (lg_runtime_entry_t){lg_strdup(key), v};
}

static void entries_dispose(entries_t *e)
{
    for (size_t i = 0; i != e->n; ++i) {
        free(e->items[i].key);
        value_dispose(&e->items[i].value);
    }
    free(e->items);
    *e = (entries_t){NULL};
}

/* Envoy's ProtoLayer::walkProtoValue. */
static int walk_value(const Google__Protobuf__Value *v, const char *key, entries_t *out, lg_error_t *err)
{
    char num[64];
    switch (v->kind_case) {
    case GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE:
        entries_add(out, key, value_from_string(v->string_value));
        return 0;
    case GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE: {
        snprintf(num, sizeof(num), "%.6g", v->number_value);
        lg_runtime_value_t e = {lg_strdup(num)};
        set_number(&e, v->number_value);
        entries_add(out, key, e);
        return 0;
    }
    case GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE: {
        lg_runtime_value_t e = {lg_strdup(v->bool_value ? "true" : "false")};
        e.has_bool = 1;
        e.bool_value = v->bool_value != 0;
        entries_add(out, key, e);
        return 0;
    }
    case GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE: {
        const Google__Protobuf__Struct *s = v->struct_value;
        int is_fraction = s->n_fields == 0;
        for (size_t i = 0; i != s->n_fields; ++i)
            is_fraction |= strcmp(s->fields[i]->key, "numerator") == 0 || strcmp(s->fields[i]->key, "denominator") == 0;
        if (is_fraction) {
            lg_runtime_value_t e;
            if (fraction_from_struct(s, &e, key, err) != 0)
                return -1;
            entries_add(out, key, e);
            return 0;
        }
        for (size_t i = 0; i != s->n_fields; ++i) {
            char *sub = lg_malloc(strlen(key) + strlen(s->fields[i]->key) + 2);
            sprintf(sub, "%s%s%s", key, key[0] != '\0' ? "." : "", s->fields[i]->key);
            int rc = s->fields[i]->value != NULL ? walk_value(s->fields[i]->value, sub, out, err)
                                                 : lg_error(err, "Invalid runtime entry value for %s", sub);
            free(sub);
            if (rc != 0)
                return -1;
        }
        return 0;
    }
    default:
        return lg_error(err, "Invalid runtime entry value for %s", key);
    }
}

static int walk_struct(const Google__Protobuf__Struct *s, entries_t *out, lg_error_t *err)
{
    for (size_t i = 0; s != NULL && i != s->n_fields; ++i) {
        const Google__Protobuf__Value *v = s->fields[i]->value;
        if (v == NULL)
            return lg_error(err, "Invalid runtime entry value for %s", s->fields[i]->key);
        if (walk_value(v, s->fields[i]->key, out, err) != 0)
            return -1;
    }
    return 0;
}

/* ---- layers ---- */

static int entry_cmp(const void *a, const void *b)
{
    return strcmp(((const lg_runtime_entry_t *)a)->key, ((const lg_runtime_entry_t *)b)->key);
}

typedef struct st_ordered_t {
    lg_runtime_entry_t *e;
    size_t pos;
} ordered_t;

static int ordered_cmp(const void *a, const void *b)
{
    const ordered_t *x = a, *y = b;
    int c = strcmp(x->e->key, y->e->key);
    return c != 0 ? c : (x->pos < y->pos ? -1 : x->pos > y->pos);
}

/* Takes the entries; of duplicate keys the one added last stays. */
static lg_runtime_layer_t *layer_new(const char *name, entries_t *e)
{
    lg_runtime_layer_t *l = lg_calloc(1, sizeof(*l));
    ordered_t *o = lg_malloc((e->n + 1) * sizeof(*o));
    l->refcnt = 1;
    l->name = lg_strdup(name);
    l->entries = lg_malloc((e->n + 1) * sizeof(*l->entries));
    for (size_t i = 0; i != e->n; ++i)
        o[i] = (ordered_t){e->items + i, i};
    qsort(o, e->n, sizeof(*o), ordered_cmp);
    for (size_t i = 0; i != e->n; ++i) {
        if (i + 1 != e->n && strcmp(o[i].e->key, o[i + 1].e->key) == 0) {
            free(o[i].e->key);
            value_dispose(&o[i].e->value);
            continue;
        }
        l->entries[l->n++] = *o[i].e;
    }
    free(o);
    free(e->items);
    *e = (entries_t){NULL};
    return l;
}

static lg_runtime_layer_t *layer_ref(lg_runtime_layer_t *l)
{
    __atomic_add_fetch(&l->refcnt, 1, __ATOMIC_RELAXED);
    return l;
}

static void layer_release(lg_runtime_layer_t *l)
{
    if (l == NULL || __atomic_sub_fetch(&l->refcnt, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    for (size_t i = 0; i != l->n; ++i) {
        free(l->entries[i].key);
        value_dispose(&l->entries[i].value);
    }
    free(l->entries);
    free(l->name);
    free(l);
}

static lg_runtime_layer_t *empty_layer(const char *name)
{
    entries_t e = {NULL};
    return layer_new(name, &e);
}

/* ---- snapshots ---- */

/* References the layers; a key's value is that of the last layer holding it. */
static lg_runtime_t *snapshot_new(lg_runtime_layer_t **layers, size_t n, uint64_t generation)
{
    lg_runtime_t *rt = lg_calloc(1, sizeof(*rt));
    size_t total = 0, k = 0;
    rt->refcnt = 1;
    rt->generation = generation;
    rt->layers = lg_calloc(n + 1, sizeof(*rt->layers));
    for (size_t i = 0; i != n; ++i) {
        rt->layers[rt->n_layers++] = layer_ref(layers[i]);
        total += layers[i]->n;
    }
    ordered_t *o = lg_malloc((total + 1) * sizeof(*o));
    for (size_t i = 0; i != n; ++i)
        for (size_t j = 0; j != layers[i]->n; ++j)
            o[k++] = (ordered_t){layers[i]->entries + j, i};
    qsort(o, total, sizeof(*o), ordered_cmp);
    rt->merged = lg_malloc((total + 1) * sizeof(*rt->merged));
    for (size_t i = 0; i != total; ++i)
        if (i + 1 == total || strcmp(o[i].e->key, o[i + 1].e->key) != 0)
            rt->merged[rt->n_merged++] = o[i].e;
    free(o);
    return rt;
}

lg_runtime_t *lg_runtime_ref(lg_runtime_t *rt)
{
    if (rt != NULL)
        __atomic_add_fetch(&rt->refcnt, 1, __ATOMIC_RELAXED);
    return rt;
}

void lg_runtime_release(lg_runtime_t *rt)
{
    if (rt == NULL || __atomic_sub_fetch(&rt->refcnt, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    for (size_t i = 0; i != rt->n_layers; ++i)
        layer_release(rt->layers[i]);
    free(rt->layers);
    free(rt->merged);
    free(rt);
}

const lg_runtime_value_t *lg_runtime_get(const lg_runtime_t *rt, const char *key)
{
    size_t lo = 0, hi = rt != NULL ? rt->n_merged : 0;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(key, rt->merged[mid]->key);
        if (c == 0)
            return &rt->merged[mid]->value;
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

int lg_runtime_feature_enabled(const lg_runtime_t *rt, const char *key, uint32_t numerator, uint32_t denominator, uint64_t random)
{
    const lg_runtime_value_t *v = key != NULL && key[0] != '\0' ? lg_runtime_get(rt, key) : NULL;
    if (v != NULL && v->has_fraction) {
        numerator = v->numerator;
        denominator = v->denominator;
    } else if (v != NULL && v->has_uint) {
        numerator = v->uint_value > UINT32_MAX ? UINT32_MAX : (uint32_t)v->uint_value;
        denominator = 100;
    }
    if (denominator == 0)
        return 0;
    if (numerator > denominator)
        numerator = denominator;
    return random % denominator < numerator;
}

uint64_t lg_runtime_get_integer(const lg_runtime_t *rt, const char *key, uint64_t def)
{
    const lg_runtime_value_t *v = lg_runtime_get(rt, key);
    return v != NULL && v->has_uint ? v->uint_value : def;
}

const lg_runtime_t *lg_runtime_current(void)
{
    if (thread_override != NULL)
        return thread_override;
    lg_worker_t *w = lg_current_worker;
    return w != NULL && w->snapshot != NULL ? w->snapshot->runtime : NULL;
}

void lg_runtime_set_thread_override(const lg_runtime_t *rt)
{
    thread_override = rt;
}

/* ---- disk layers (read at start and on a swap of their symlink_root) ---- */

/* Envoy's DiskLayer::walkDirectory: a file's path below the root, with '/'
 * as '.', is its key; its content without '#' comment lines, trimmed, the value. */
static void walk_dir(const char *path, const char *prefix, unsigned depth, entries_t *out)
{
    DIR *d = depth <= MAX_WALK_DEPTH ? opendir(path) : NULL;
    struct dirent *de;
    if (d == NULL)
        return;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        char *full = lg_malloc(strlen(path) + strlen(de->d_name) + 2), *key = lg_malloc(strlen(prefix) + strlen(de->d_name) + 2);
        struct stat st;
        sprintf(full, "%s/%s", path, de->d_name);
        sprintf(key, "%s%s%s", prefix, prefix[0] != '\0' ? "." : "", de->d_name);
        if (stat(full, &st) == 0 && S_ISDIR(st.st_mode)) {
            walk_dir(full, key, depth + 1, out);
        } else if (stat(full, &st) == 0 && S_ISREG(st.st_mode)) {
            char *text = lg_read_file(full, NULL, &(lg_error_t){{0}});
            if (text != NULL) {
                lg_strbuf_t v = {NULL};
                lg_strbuf_reserve(&v, 1);
                for (char *line = text, *nl; line != NULL && *line != '\0'; line = nl != NULL ? nl + 1 : NULL) {
                    nl = strchr(line, '\n');
                    if (line[0] != '#')
                        lg_strbuf_append(&v, line, nl != NULL ? (size_t)(nl - line + 1) : strlen(line));
                }
                size_t n = v.len, s = 0;
                while (n != 0 && strchr(" \t\r\n", v.base[n - 1]) != NULL)
                    --n;
                while (s < n && strchr(" \t\r\n", v.base[s]) != NULL)
                    ++s;
                v.base[n] = '\0';
                entries_add(out, key, value_from_string(v.base + s));
                lg_strbuf_free(&v);
                free(text);
            }
        }
        free(full);
        free(key);
    }
    closedir(d);
}

/* The identity of a symlink_root: lstat of the link itself plus its target. */
static void disk_identity(const char *root, dev_t *dev, ino_t *ino, struct timespec *mtime, char *target, size_t size)
{
    struct stat st;
    ssize_t n;
    *dev = 0;
    *ino = 0;
    *mtime = (struct timespec){0};
    target[0] = '\0';
    if (lstat(root, &st) != 0)
        return;
    *dev = st.st_dev;
    *ino = st.st_ino;
    *mtime = st.st_mtim;
    if (S_ISLNK(st.st_mode) && (n = readlink(root, target, size - 1)) > 0)
        target[n] = '\0';
}

static lg_runtime_layer_t *disk_layer(const char *name, disk_source_t *src, const char *service_cluster)
{
    entries_t e = {NULL};
    size_t size = strlen(src->symlink_root) + strlen(src->subdirectory) + strlen(service_cluster) + 3;
    char *path = lg_malloc(size);
    struct stat st;
    disk_identity(src->symlink_root, &src->seen.dev, &src->seen.ino, &src->seen.mtime, src->seen.target,
                  sizeof(src->seen.target));
    snprintf(path, size, "%s/%s%s%s", src->symlink_root, src->subdirectory, src->append_service_cluster ? "/" : "",
             src->append_service_cluster ? service_cluster : "");
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        lg_stats_control_add(loader.stats, STAT_override_dir_exists, 1);
        walk_dir(path, "", 0, &e);
    } else {
        LG_INFO(runtime, "runtime: disk layer '%s': %s does not exist; the layer is empty", name, path);
        lg_stats_control_add(loader.stats, STAT_override_dir_not_exists, 1);
    }
    free(path);
    return layer_new(name, &e);
}

static void load_locked(void);

static int disk_changed(const disk_source_t *src)
{
    dev_t dev;
    ino_t ino;
    struct timespec mtime;
    char target[sizeof(src->seen.target)];
    disk_identity(src->symlink_root, &dev, &ino, &mtime, target, sizeof(target));
    return dev != src->seen.dev || ino != src->seen.ino || mtime.tv_sec != src->seen.mtime.tv_sec ||
           mtime.tv_nsec != src->seen.mtime.tv_nsec || strcmp(target, src->seen.target) != 0;
}

void lg_runtime_poll(void)
{
    pthread_mutex_lock(&loader.mutex);
    int changed = 0;
    for (size_t i = 0; loader.initialized && !changed && i != loader.n_layers; ++i)
        changed = loader.kinds[i] == LAYER_DISK && disk_changed(loader.disks + i);
    if (changed) {
        /* Envoy's loadNewSnapshot: every disk layer is read again */
        for (size_t i = 0; i != loader.n_layers; ++i) {
            if (loader.kinds[i] != LAYER_DISK)
                continue;
            lg_runtime_layer_t *l = disk_layer(loader.layers[i]->name, loader.disks + i, loader.service_cluster);
            layer_release(loader.layers[i]);
            loader.layers[i] = l;
        }
        LG_INFO(runtime, "runtime: disk layers reloaded");
        load_locked();
    }
    pthread_mutex_unlock(&loader.mutex);
}

/* ---- the loader ---- */

/* With the mutex held: a new snapshot of the current layers. */
static void load_locked(void)
{
    size_t keys;
    lg_runtime_t *rt = snapshot_new(loader.layers, loader.n_layers, ++loader.generation);
    lg_runtime_release(loader.current);
    loader.current = rt;
    keys = rt->n_merged;
    lg_stats_control_add(loader.stats, STAT_load_success, 1);
    lg_stats_gauge_set(loader.stats, STAT_num_keys, keys);
    lg_stats_gauge_set(loader.stats, STAT_num_layers, loader.n_layers);
}

static int compile_layer(const Envoy__Config__Bootstrap__V3__RuntimeLayer *l, size_t i, const char *service_cluster,
                         lg_error_t *err)
{
    entries_t e = {NULL};
    switch (l->layer_specifier_case) {
    case ENVOY__CONFIG__BOOTSTRAP__V3__RUNTIME_LAYER__LAYER_SPECIFIER_STATIC_LAYER:
        if (walk_struct(l->static_layer, &e, err) != 0) {
            entries_dispose(&e);
            return lg_error_prefix(err, "layered_runtime.layers[%zu].static_layer", i);
        }
        loader.kinds[i] = LAYER_STATIC;
        loader.layers[i] = layer_new(l->name, &e);
        return 0;
    case ENVOY__CONFIG__BOOTSTRAP__V3__RUNTIME_LAYER__LAYER_SPECIFIER_DISK_LAYER:
        loader.kinds[i] = LAYER_DISK;
        loader.disks[i].symlink_root = lg_strdup(l->disk_layer->symlink_root);
        loader.disks[i].subdirectory = lg_strdup(l->disk_layer->subdirectory);
        loader.disks[i].append_service_cluster = l->disk_layer->append_service_cluster != 0;
        loader.layers[i] = disk_layer(l->name, loader.disks + i, service_cluster);
        return 0;
    case ENVOY__CONFIG__BOOTSTRAP__V3__RUNTIME_LAYER__LAYER_SPECIFIER_ADMIN_LAYER:
        for (size_t k = 0; k != i; ++k)
            if (loader.kinds[k] == LAYER_ADMIN)
                return lg_error(
                    err,
                    "layered_runtime.layers[%zu]: Too many admin layers specified in LayeredRuntime, at most one may be specified",
                    i);
        loader.kinds[i] = LAYER_ADMIN;
        loader.layers[i] = empty_layer(l->name);
        return 0;
    case ENVOY__CONFIG__BOOTSTRAP__V3__RUNTIME_LAYER__LAYER_SPECIFIER_RTDS_LAYER:
        if (l->rtds_layer->name[0] == '\0')
            return lg_error(err, "layered_runtime.layers[%zu].rtds_layer.name: value length must be at least 1 characters", i);
        loader.kinds[i] = LAYER_RTDS;
        loader.rtds_names[i] = lg_strdup(l->rtds_layer->name);
        loader.layers[i] = empty_layer(l->name);
        return 0;
    default:
        return lg_error(err, "layered_runtime.layers[%zu].layer_specifier: value is required", i);
    }
}

int lg_runtime_init(const Envoy__Config__Bootstrap__V3__LayeredRuntime *lr, const char *service_cluster, lg_error_t *err)
{
    size_t n = lr != NULL ? lr->n_layers : 0;
    pthread_mutex_lock(&loader.mutex);
    loader.stats = lg_stats_block_new("runtime.", stat_defs, STAT__COUNT);
    loader.kinds = lg_calloc(n + 1, sizeof(*loader.kinds));
    loader.rtds_names = lg_calloc(n + 1, sizeof(*loader.rtds_names));
    loader.layers = lg_calloc(n + 1, sizeof(*loader.layers));
    loader.disks = lg_calloc(n + 1, sizeof(*loader.disks));
    loader.service_cluster = lg_strdup(service_cluster != NULL ? service_cluster : "");
    loader.initialized = 1;
    for (size_t i = 0; i != n; ++i) {
        loader.n_layers = i;
        if (compile_layer(lr->layers[i], i, service_cluster != NULL ? service_cluster : "", err) != 0) {
            lg_stats_control_add(loader.stats, STAT_load_error, 1);
            pthread_mutex_unlock(&loader.mutex);
            lg_runtime_shutdown();
            return -1;
        }
    }
    loader.n_layers = n;
    load_locked();
    pthread_mutex_unlock(&loader.mutex);
    return 0;
}

void lg_runtime_shutdown(void)
{
    pthread_mutex_lock(&loader.mutex);
    if (loader.initialized) {
        for (size_t i = 0; i != loader.n_layers; ++i) {
            layer_release(loader.layers[i]);
            free(loader.rtds_names[i]);
            free(loader.disks[i].symlink_root);
            free(loader.disks[i].subdirectory);
        }
        free(loader.layers);
        free(loader.disks);
        free(loader.service_cluster);
        free(loader.rtds_names);
        free(loader.kinds);
        lg_runtime_release(loader.current);
        lg_stats_block_release(loader.stats);
    }
    uint64_t generation = loader.generation;
    loader.initialized = 0;
    loader.layers = NULL;
    loader.rtds_names = NULL;
    loader.disks = NULL;
    loader.service_cluster = NULL;
    loader.kinds = NULL;
    loader.n_layers = 0;
    loader.current = NULL;
    loader.stats = NULL;
    loader.generation = generation; /* keeps growing: a later init is a change */
    pthread_mutex_unlock(&loader.mutex);
}

lg_runtime_t *lg_runtime_loader_snapshot(void)
{
    pthread_mutex_lock(&loader.mutex);
    lg_runtime_t *rt = lg_runtime_ref(loader.current);
    pthread_mutex_unlock(&loader.mutex);
    return rt;
}

uint64_t lg_runtime_loader_generation(void)
{
    pthread_mutex_lock(&loader.mutex);
    uint64_t g = loader.initialized ? loader.generation : 0;
    pthread_mutex_unlock(&loader.mutex);
    return g;
}

int lg_runtime_validate_layer(const ProtobufCMessage *layer, lg_error_t *err)
{
    entries_t e = {NULL};
    int rc = walk_struct((const Google__Protobuf__Struct *)layer, &e, err);
    entries_dispose(&e);
    return rc;
}

int lg_runtime_apply_rtds(const char *resource, const ProtobufCMessage *layer, lg_error_t *err)
{
    entries_t e = {NULL};
    if (walk_struct((const Google__Protobuf__Struct *)layer, &e, err) != 0) {
        entries_dispose(&e);
        pthread_mutex_lock(&loader.mutex);
        if (loader.initialized)
            lg_stats_control_add(loader.stats, STAT_load_error, 1);
        pthread_mutex_unlock(&loader.mutex);
        return -1;
    }
    pthread_mutex_lock(&loader.mutex);
    int found = 0;
    for (size_t i = 0; i != loader.n_layers; ++i) {
        if (loader.kinds[i] != LAYER_RTDS || strcmp(loader.rtds_names[i], resource) != 0)
            continue;
        entries_t copy = {NULL};
        for (size_t k = 0; k != e.n; ++k) {
            lg_runtime_value_t v = e.items[k].value;
            v.raw = lg_strdup(v.raw);
            entries_add(&copy, e.items[k].key, v);
        }
        lg_runtime_layer_t *l = layer_new(loader.layers[i]->name, &copy);
        layer_release(loader.layers[i]);
        loader.layers[i] = l;
        found = 1;
    }
    if (found)
        load_locked();
    pthread_mutex_unlock(&loader.mutex);
    entries_dispose(&e);
    return 0;
}

int lg_runtime_merge_admin(const char *const *keys, const char *const *values, size_t n, lg_error_t *err)
{
    pthread_mutex_lock(&loader.mutex);
    size_t a = 0;
    while (a != loader.n_layers && loader.kinds[a] != LAYER_ADMIN)
        ++a;
    if (a == loader.n_layers) {
        pthread_mutex_unlock(&loader.mutex);
        return lg_error(err, "No admin layer specified");
    }
    const lg_runtime_layer_t *old = loader.layers[a];
    entries_t e = {NULL};
    for (size_t i = 0; i != old->n; ++i) {
        size_t k = 0;
        while (k != n && strcmp(keys[k], old->entries[i].key) != 0)
            ++k;
        if (k == n)
            entries_add(&e, old->entries[i].key, value_from_string(old->entries[i].value.raw));
    }
    for (size_t k = 0; k != n; ++k)
        if (values[k][0] != '\0')
            entries_add(&e, keys[k], value_from_string(values[k]));
    lg_runtime_layer_t *l = layer_new(old->name, &e);
    layer_release(loader.layers[a]);
    loader.layers[a] = l;
    lg_stats_gauge_set(loader.stats, STAT_admin_overrides_active, l->n);
    load_locked();
    pthread_mutex_unlock(&loader.mutex);
    return 0;
}

/* ---- admin ---- */

void lg_runtime_dump_json(const lg_runtime_t *rt, lg_strbuf_t *out)
{
    size_t n = rt != NULL ? rt->n_layers : 0;
    lg_strbuf_puts(out, "{\"entries\":{");
    for (size_t m = 0; rt != NULL && m != rt->n_merged; ++m) {
        const char *key = rt->merged[m]->key, *final = "";
        lg_strbuf_puts(out, m != 0 ? "," : "");
        lg_strbuf_json_string(out, key, strlen(key));
        lg_strbuf_puts(out, ":{\"layer_values\":[");
        for (size_t i = 0; i != n; ++i) {
            const lg_runtime_entry_t probe = {(char *)key},
                                     *hit = bsearch(&probe, rt->layers[i]->entries, rt->layers[i]->n, sizeof(probe), entry_cmp);
            const char *raw = hit != NULL ? hit->value.raw : "";
            if (raw[0] != '\0')
                final = raw;
            lg_strbuf_puts(out, i != 0 ? "," : "");
            lg_strbuf_json_string(out, raw, strlen(raw));
        }
        lg_strbuf_puts(out, "],\"final_value\":");
        lg_strbuf_json_string(out, final, strlen(final));
        lg_strbuf_puts(out, "}");
    }
    lg_strbuf_puts(out, "},\"layers\":[");
    for (size_t i = 0; i != n; ++i) {
        lg_strbuf_puts(out, i != 0 ? "," : "");
        lg_strbuf_json_string(out, rt->layers[i]->name, strlen(rt->layers[i]->name));
    }
    lg_strbuf_puts(out, "]}");
}

static void admin_runtime(const lg_admin_request_t *req, lg_admin_response_t *res, void *ctx)
{
    lg_runtime_t *rt = lg_runtime_loader_snapshot();
    lg_strbuf_t json = {NULL};
    lg_runtime_dump_json(rt, &json);
    res->content_type = LG_ADMIN_CONTENT_JSON;
    lg_admin_json_pretty(&res->body, json.base, 0);
    lg_strbuf_puts(&res->body, "\n");
    lg_strbuf_free(&json);
    lg_runtime_release(rt);
}

/* key=value pairs of an application/x-www-form-urlencoded body (no decoding of %XX: Envoy's keys are plain). */
static size_t form_params(h2o_iovec_t body, char ***keys, char ***values)
{
    char *copy = lg_strndup(body.base != NULL ? body.base : "", body.len), *save = NULL;
    size_t n = 0;
    *keys = NULL;
    *values = NULL;
    for (char *tok = strtok_r(copy, "&", &save); tok != NULL; tok = strtok_r(NULL, "&", &save)) {
        char *eq = strchr(tok, '=');
        *keys = lg_realloc(*keys, (n + 1) * sizeof(**keys));
        *values = lg_realloc(*values, (n + 1) * sizeof(**values));
        (*keys)[n] = eq != NULL ? lg_strndup(tok, (size_t)(eq - tok)) : lg_strdup(tok);
        (*values)[n++] = lg_strdup(eq != NULL ? eq + 1 : "");
    }
    free(copy);
    return n;
}

static void admin_runtime_modify(const lg_admin_request_t *req, lg_admin_response_t *res, void *ctx)
{
    char **keys = NULL, **values = NULL;
    size_t n = 0;
    if (req->nparams != 0) {
        keys = lg_malloc(req->nparams * sizeof(*keys));
        values = lg_malloc(req->nparams * sizeof(*values));
        for (size_t i = 0; i != req->nparams; ++i) {
            keys[n] = lg_strdup(req->params[i].name);
            values[n++] = lg_strdup(req->params[i].value);
        }
    } else {
        n = form_params(req->body, &keys, &values);
    }
    if (n == 0) {
        res->status = 400;
        lg_strbuf_puts(&res->body, "usage: /runtime_modify?key1=value1&key2=value2&keyN=valueN\n"
                                   "       or send the parameters as form values\n"
                                   "use an empty value to remove a previously added override");
    } else {
        lg_error_t err = {{0}};
        if (lg_runtime_merge_admin((const char *const *)keys, (const char *const *)values, n, &err) != 0) {
            res->status = 503;
            lg_strbuf_puts(&res->body, err.msg);
        } else {
            lg_strbuf_puts(&res->body, "OK\n");
        }
    }
    for (size_t i = 0; i != n; ++i) {
        free(keys[i]);
        free(values[i]);
    }
    free(keys);
    free(values);
}

void lg_runtime_register_admin(void)
{
    lg_admin_register("/runtime", "print runtime values", 0, admin_runtime, NULL);
    lg_admin_add_param("/runtime", "format", "File format to use; json");
    lg_admin_register("/runtime_modify",
                      "Adds or modifies runtime values as passed in query parameters. To delete a previously added key, use an "
                      "empty string as the value. Note that deletion only applies to overrides added via this endpoint; values "
                      "loaded from disk can be modified via override but not deleted. E.g. ?key1=value1&key2=value2...",
                      1, admin_runtime_modify, NULL);
}
