#include <ctype.h>
#include <malloc.h>
#include <math.h>
#include <pthread.h>
#include <unistd.h>
#include "legate/stats.h"

/* Rows are 0..nworkers; before lg_stats_init (unit tests of other parts) a block has
 * one worker row and the control row. */
size_t lg_stats_nworkers = 1;
lg_stats_block_t *lg_stats_server, *lg_stats_listener_manager, *lg_stats_cluster_manager;
lg_stats_block_t *lg_stats_http1, *lg_stats_http2;

const uint64_t lg_stats__hist_floor[LG_STATS_HIST_BUCKETS] = {
    0, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000};
static const double hist_bounds[LG_STATS_HIST_BUCKETS] = {0.5,  1,    5,     10,    25,    50,     100,    250,     500,    1000,
                                                          2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000};
const double lg_stats_quantiles[LG_STATS_QUANTILES] = {0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 1};

/* The registry lists every listed block; only control and admin threads take the mutex. */
static pthread_mutex_t registry_mutex = PTHREAD_MUTEX_INITIALIZER;
static lg_stats_block_t *registry_head;
static uint64_t start_ms;
static int server_state = LG_SERVER_PRE_INITIALIZING;

static const lg_stat_def_t server_defs[] = {LG_SERVER_STATS(LG_STAT_DEF)};
static const lg_stat_def_t listener_manager_defs[] = {LG_LISTENER_MANAGER_STATS(LG_STAT_DEF)};
static const lg_stat_def_t cluster_manager_defs[] = {LG_CLUSTER_MANAGER_STATS(LG_STAT_DEF)};
static const lg_stat_def_t http1_defs[] = {LG_HTTP1_CODEC_STATS(LG_STAT_DEF)};
static const lg_stat_def_t http2_defs[] = {LG_HTTP2_CODEC_STATS(LG_STAT_DEF)};

static size_t nrows(void)
{
    return lg_stats_nworkers + 1;
}

/* ---- blocks ---------------------------------------------------------------------------------------------------------------- */

static int same_opts(const lg_stats_block_opts_t *a, const lg_stats_block_opts_t *b)
{
    if ((a->code_prefix == NULL) != (b->code_prefix == NULL))
        return 0;
    if (a->code_prefix != NULL && strcmp(a->code_prefix, b->code_prefix) != 0)
        return 0;
    return a->classes_dynamic == b->classes_dynamic && a->each_code == b->each_code && a->control_from == b->control_from &&
           a->hidden_tail == b->hidden_tail;
}

/* Takes a reference on a live listed block equal to the request (registry mutex held). */
/* The registry indexed by prefix, so that creating N blocks is O(N) and not
 * O(N^2) (10,000 clusters). Guarded by registry_mutex like the list. */
static lg_stats_block_t **index_buckets;
static size_t index_nbuckets, index_count;

static uint32_t prefix_hash(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s != '\0'; ++s)
        h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

static void index_add(lg_stats_block_t *b)
{
    if (index_count + 1 > index_nbuckets) {
        size_t n = index_nbuckets != 0 ? index_nbuckets * 2 : 256;
        lg_stats_block_t **buckets = lg_calloc(n, sizeof(*buckets));
        for (size_t i = 0; i != index_nbuckets; ++i) {
            for (lg_stats_block_t *e = index_buckets[i], *next; e != NULL; e = next) {
                next = e->_hnext;
                e->_hnext = buckets[e->_hash & (n - 1)];
                buckets[e->_hash & (n - 1)] = e;
            }
        }
        free(index_buckets);
        index_buckets = buckets;
        index_nbuckets = n;
    }
    b->_hnext = index_buckets[b->_hash & (index_nbuckets - 1)];
    index_buckets[b->_hash & (index_nbuckets - 1)] = b;
    ++index_count;
}

static void index_remove(lg_stats_block_t *b)
{
    for (lg_stats_block_t **p = &index_buckets[b->_hash & (index_nbuckets - 1)]; *p != NULL; p = &(*p)->_hnext) {
        if (*p == b) {
            *p = b->_hnext;
            --index_count;
            break;
        }
    }
    if (index_count == 0) {
        free(index_buckets);
        index_buckets = NULL;
        index_nbuckets = 0;
    }
}

static lg_stats_block_t *find_shared(const char *prefix, const lg_stat_def_t *defs, size_t ndefs, const lg_stats_block_opts_t *opts)
{
    uint32_t hash = prefix_hash(prefix);
    if (index_nbuckets == 0)
        return NULL;
    for (lg_stats_block_t *b = index_buckets[hash & (index_nbuckets - 1)]; b != NULL; b = b->_hnext) {
        if (b->_hash != hash)
            continue;
        if (b->_defs != defs || b->_ndefs != ndefs || strcmp(b->_prefix, prefix) != 0 || !same_opts(&b->_opts, opts))
            continue;
        /* A block whose count reached zero is being freed by its releaser: leave it. */
        size_t r = __atomic_load_n(&b->_refcnt, __ATOMIC_RELAXED);
        while (r != 0 && !__atomic_compare_exchange_n(&b->_refcnt, &r, r + 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
            ;
        if (r != 0)
            return b;
    }
    return NULL;
}

/* The defs a worker row holds: all, or those before a split block's control part. */
static size_t worker_defs(const lg_stats_block_t *b)
{
    return b->_ctl_from != 0 ? b->_ctl_from : b->_ndefs;
}

/* Words of the control row: a full row, or a split block's control defs and their bitmap. */
static size_t control_words(const lg_stats_block_t *b)
{
    if (b->_ctl_from == 0)
        return b->row_words;
    size_t n = b->_ndefs - b->_ctl_from;
    return n + (n + 63) / 64;
}

/* The histogram offsets of a row layout, shared by every block with that layout
 * (a cluster's block carries no array of its own), kept until lg_stats_shutdown. */
typedef struct st_hist_layout_t {
    struct st_hist_layout_t *next;
    const lg_stat_def_t *defs;
    size_t nw, start, end; /* worker defs; the words before the first histogram; after the last */
    uint16_t off[];
} hist_layout_t;

static hist_layout_t *hist_layouts;
static pthread_mutex_t hist_layouts_mutex = PTHREAD_MUTEX_INITIALIZER;

static const hist_layout_t *hist_layout(const lg_stats_block_t *b, size_t nw, size_t start)
{
    pthread_mutex_lock(&hist_layouts_mutex);
    hist_layout_t *l = hist_layouts;
    while (l != NULL && !(l->defs == b->_defs && l->nw == nw && l->start == start))
        l = l->next;
    if (l == NULL) {
        size_t words = start;
        l = lg_calloc(1, offsetof(hist_layout_t, off) + nw * sizeof(l->off[0]));
        *l = (hist_layout_t){hist_layouts, b->_defs, nw, start, 0};
        for (size_t i = 0; i != nw; ++i) {
            if (b->_defs[i].type != LG_STAT_HISTOGRAM)
                continue;
            if (words > UINT16_MAX - LG_STATS_HIST_WORDS) {
                fprintf(stderr, "legate: stats block %s has too many histograms\n", b->_prefix);
                abort();
            }
            l->off[i] = (uint16_t)words;
            words += LG_STATS_HIST_WORDS;
        }
        l->end = words;
        hist_layouts = l;
    }
    pthread_mutex_unlock(&hist_layouts_mutex);
    return l;
}

/* Lays a worker row out: one word per def it holds, the 5 class counters, the
 * histogram regions, then the gauge-used bitmap; rounded to a cache line. */
static void layout(lg_stats_block_t *b)
{
    size_t nw = worker_defs(b), words = nw;
    b->class_off = UINT32_MAX;
    if (b->_opts.code_prefix != NULL) {
        b->class_off = (uint32_t)words;
        words += 5;
    }
    b->hist_off = NULL;
    for (size_t i = 0; i != nw; ++i) {
        if (b->_defs[i].type == LG_STAT_HISTOGRAM) {
            const hist_layout_t *l = hist_layout(b, nw, words);
            b->hist_off = l->off;
            words = l->end;
            break;
        }
    }
    b->used_off = (uint32_t)words;
    words += (nw + 63) / 64;
    b->row_words = (uint32_t)((words + 7) & ~(size_t)7);
}

/* One allocation: the block, its row pointers, the seen-used bitmap, the prefix. */
static lg_stats_block_t *block_create(const char *prefix, const lg_stat_def_t *defs, size_t ndefs,
                                      const lg_stats_block_opts_t *opts)
{
    size_t rows = nrows(), seen_words = (ndefs + 63) / 64, plen = strlen(prefix);
    lg_stats_block_t *b = lg_calloc(1, sizeof(*b) + rows * sizeof(b->rows[0]) + seen_words * sizeof(uint64_t) + plen + 1);
    b->_seen_used = (uint64_t *)(b->rows + rows);
    char *p = (char *)(b->_seen_used + seen_words);
    memcpy(p, prefix, plen + 1);
    b->_prefix = p;
    b->_defs = defs;
    b->_ndefs = (uint32_t)ndefs;
    b->_nrows = (uint16_t)rows;
    b->_hidden = opts->hidden_tail <= ndefs ? opts->hidden_tail : 0;
    b->_opts = *opts;
    b->_refcnt = 1;
    b->each_code = opts->code_prefix != NULL && opts->each_code;
    b->_ctl_from = opts->control_from < ndefs ? opts->control_from : 0;
    for (size_t i = b->_ctl_from; b->_ctl_from != 0 && i != ndefs; ++i)
        if (defs[i].type == LG_STAT_HISTOGRAM)
            b->_ctl_from = 0; /* histograms live in worker rows: no split */
    layout(b);
    return b;
}

/* Worker rows are cache-line aligned so that two workers never write one line;
 * the control row is written off the request path and needs no alignment. */
uint64_t *lg_stats__row_alloc(lg_stats_block_t *b, size_t row)
{
    size_t bytes = (row == lg_stats_nworkers ? control_words(b) : b->row_words) * sizeof(uint64_t);
    uint64_t *r = row == lg_stats_nworkers ? lg_calloc(1, bytes) : lg_aligned_zalloc(64, bytes), *expected = NULL;
    /* the control row has two writers (control and admin threads): the first one wins */
    if (!__atomic_compare_exchange_n(&b->rows[row], &expected, r, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        free(r);
        r = expected;
    }
    return r;
}

lg_stats_block_t *lg_stats_block_new_ex(const char *prefix, const lg_stat_def_t *defs, size_t ndefs,
                                        const lg_stats_block_opts_t *opts)
{
    static const lg_stats_block_opts_t no_opts;
    if (opts == NULL)
        opts = &no_opts;
    if (opts->unlisted)
        return block_create(prefix, defs, ndefs, opts);

    pthread_mutex_lock(&registry_mutex);
    lg_stats_block_t *b = find_shared(prefix, defs, ndefs, opts);
    if (b == NULL) {
        b = block_create(prefix, defs, ndefs, opts);
        if ((b->_next = registry_head) != NULL)
            registry_head->_pprev = &b->_next;
        registry_head = b;
        b->_pprev = &registry_head;
        b->_hash = prefix_hash(prefix);
        index_add(b);
    }
    pthread_mutex_unlock(&registry_mutex);
    return b;
}

lg_stats_block_t *lg_stats_block_new(const char *prefix, const lg_stat_def_t *defs, size_t ndefs)
{
    return lg_stats_block_new_ex(prefix, defs, ndefs, NULL);
}

void lg_stats_block_retain(lg_stats_block_t *b)
{
    __atomic_add_fetch(&b->_refcnt, 1, __ATOMIC_RELAXED);
}

void lg_stats_block_list_tail(lg_stats_block_t *b)
{
    pthread_mutex_lock(&registry_mutex);
    b->_hidden = 0;
    pthread_mutex_unlock(&registry_mutex);
}

static void extra_free(lg_stats_block_t *b, lg_stats_block_extra_t *x)
{
    if (x == NULL)
        return;
    for (size_t i = 0; x->texts != NULL && i != b->_ndefs; ++i)
        free(x->texts[i]);
    free(x->texts);
    free(x->baseline);
    free(x->code_baseline);
    free(x);
}

static void block_free(lg_stats_block_t *b)
{
    if (b->codes != NULL) {
        for (size_t i = 0; i != (size_t)b->_nrows * 5; ++i)
            free(b->codes[i]);
        free(b->codes);
    }
    for (size_t r = 0; r != b->_nrows; ++r)
        free(b->rows[r]);
    extra_free(b, b->_extra);
    free(b);
}

void lg_stats_block_release(lg_stats_block_t *b)
{
    if (b == NULL || __atomic_sub_fetch(&b->_refcnt, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    if (b->_pprev != NULL) {
        pthread_mutex_lock(&registry_mutex);
        if ((*b->_pprev = b->_next) != NULL)
            b->_next->_pprev = b->_pprev;
        index_remove(b);
        pthread_mutex_unlock(&registry_mutex);
    }
    block_free(b);
}

const char *lg_stats_block_prefix(const lg_stats_block_t *b)
{
    return b->_prefix;
}

/* Installs *slot = fresh unless another thread did first; returns the installed pointer. */
static void *install(void **slot, void *fresh)
{
    void *expected = NULL;
    if (__atomic_compare_exchange_n(slot, &expected, fresh, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        return fresh;
    free(fresh);
    return expected;
}

uint64_t *lg_stats__code_slots(lg_stats_block_t *b, size_t row, size_t cls)
{
    uint64_t **codes = __atomic_load_n(&b->codes, __ATOMIC_ACQUIRE);
    if (codes == NULL)
        codes = install((void **)&b->codes, lg_calloc((size_t)b->_nrows * 5, sizeof(*codes)));
    uint64_t *slots = __atomic_load_n(&codes[row * 5 + cls], __ATOMIC_ACQUIRE);
    if (slots == NULL)
        slots = install((void **)&codes[row * 5 + cls], lg_calloc(100, sizeof(uint64_t)));
    return slots;
}

/* The block's rarely used parts (registry mutex held). */
static lg_stats_block_extra_t *extra_of(lg_stats_block_t *b)
{
    if (b->_extra == NULL)
        b->_extra = lg_calloc(1, sizeof(*b->_extra));
    return b->_extra;
}

/* ---- control-side writes ----------------------------------------------------------------------------------------------------- */

/* Where the control row keeps def `idx`: its word and its "used" bit. */
typedef struct st_control_slot_t {
    uint64_t *word, *used, bit;
} control_slot_t;

static control_slot_t control_slot(lg_stats_block_t *b, size_t idx)
{
    uint64_t *row = lg_stats_block_row(b, lg_stats_nworkers);
    if (b->_ctl_from == 0)
        return (control_slot_t){row + idx, row + b->used_off + idx / 64, (uint64_t)1 << (idx % 64)};
    if (idx < b->_ctl_from || idx >= b->_ndefs) {
        fprintf(stderr, "legate: stat %s%s is not written by the control row\n", b->_prefix, b->_defs[idx].name);
        abort();
    }
    size_t k = idx - b->_ctl_from, n = b->_ndefs - b->_ctl_from;
    return (control_slot_t){row + k, row + n + k / 64, (uint64_t)1 << (k % 64)};
}

void lg_stats_control_add(lg_stats_block_t *b, size_t idx, int64_t delta)
{
    control_slot_t s = control_slot(b, idx);
    __atomic_fetch_add(s.word, (uint64_t)delta, __ATOMIC_RELAXED);
    if (delta < 0 && b->_defs[idx].type == LG_STAT_GAUGE)
        __atomic_fetch_or(s.used, s.bit, __ATOMIC_RELAXED);
}

void lg_stats_gauge_set(lg_stats_block_t *b, size_t idx, uint64_t value)
{
    control_slot_t s = control_slot(b, idx);
    __atomic_store_n(s.word, value, __ATOMIC_RELAXED);
    __atomic_fetch_or(s.used, s.bit, __ATOMIC_RELAXED);
}

void lg_stats_text_set(lg_stats_block_t *b, size_t idx, const char *value)
{
    pthread_mutex_lock(&registry_mutex);
    lg_stats_block_extra_t *x = extra_of(b);
    if (x->texts == NULL)
        x->texts = lg_calloc(b->_ndefs, sizeof(char *));
    free(x->texts[idx]);
    x->texts[idx] = lg_strdup(value);
    pthread_mutex_unlock(&registry_mutex);
}

/* ---- reads ------------------------------------------------------------------------------------------------------------------- */

/* The sum of word `off` of the worker rows, and of the control row unless the block is split. */
static uint64_t sum_word(const lg_stats_block_t *b, size_t off)
{
    uint64_t sum = 0;
    size_t nrows = b->_ctl_from != 0 ? b->_nrows - 1 : b->_nrows;
    for (size_t r = 0; r != nrows; ++r) {
        const uint64_t *row = __atomic_load_n(&b->rows[r], __ATOMIC_ACQUIRE);
        if (row != NULL)
            sum += __atomic_load_n(row + off, __ATOMIC_RELAXED);
    }
    return sum;
}

/* A split block's control row, or NULL. */
static const uint64_t *control_row(const lg_stats_block_t *b)
{
    return b->_ctl_from != 0 ? __atomic_load_n(&b->rows[b->_nrows - 1], __ATOMIC_ACQUIRE) : NULL;
}

/* The sum of a counter or gauge over the rows that hold it. */
static uint64_t sum_def(const lg_stats_block_t *b, size_t idx)
{
    if (b->_ctl_from == 0 || idx < b->_ctl_from)
        return sum_word(b, idx);
    const uint64_t *row = control_row(b);
    return row != NULL ? __atomic_load_n(row + idx - b->_ctl_from, __ATOMIC_RELAXED) : 0;
}

static uint64_t sum_code(const lg_stats_block_t *b, unsigned code)
{
    uint64_t sum = 0;
    size_t cls = code / 100 - 1;
    uint64_t **codes = __atomic_load_n(&b->codes, __ATOMIC_ACQUIRE);
    for (size_t r = 0; codes != NULL && r != b->_nrows; ++r) {
        uint64_t *slots = __atomic_load_n(&codes[r * 5 + cls], __ATOMIC_ACQUIRE);
        if (slots != NULL)
            sum += __atomic_load_n(slots + code % 100, __ATOMIC_RELAXED);
    }
    return sum;
}

static void sum_hist(const lg_stats_block_t *b, size_t idx, uint64_t *out)
{
    for (size_t w = 0; w != LG_STATS_HIST_WORDS; ++w)
        out[w] = sum_word(b, b->hist_off[idx] + w);
}

/* A gauge is used once set, decremented, or seen non-zero (registry mutex held). */
static int gauge_used(lg_stats_block_t *b, size_t idx, uint64_t value)
{
    uint64_t bit = (uint64_t)1 << (idx % 64);
    if ((b->_seen_used[idx / 64] & bit) != 0)
        return 1;
    int used = value != 0;
    if (!used && b->_ctl_from != 0 && idx >= b->_ctl_from) {
        const uint64_t *row = control_row(b);
        size_t k = idx - b->_ctl_from, n = b->_ndefs - b->_ctl_from;
        used = row != NULL && (__atomic_load_n(row + n + k / 64, __ATOMIC_RELAXED) & ((uint64_t)1 << (k % 64))) != 0;
    }
    size_t nrows = b->_ctl_from != 0 ? b->_nrows - 1 : b->_nrows;
    for (size_t r = 0; !used && idx < worker_defs(b) && r != nrows; ++r) {
        const uint64_t *row = __atomic_load_n(&b->rows[r], __ATOMIC_ACQUIRE);
        used = row != NULL && (__atomic_load_n(row + b->used_off + idx / 64, __ATOMIC_RELAXED) & bit) != 0;
    }
    if (used)
        b->_seen_used[idx / 64] |= bit;
    return used;
}

/* Counter sums at the last /reset_counters (registry mutex held). */
static uint64_t baseline(const lg_stats_block_t *b, size_t i)
{
    return b->_extra != NULL && b->_extra->baseline != NULL ? b->_extra->baseline[i] : 0;
}

static uint64_t code_baseline(const lg_stats_block_t *b, unsigned code)
{
    return b->_extra != NULL && b->_extra->code_baseline != NULL ? b->_extra->code_baseline[code - 100] : 0;
}

static uint64_t counter_value(const lg_stats_block_t *b, size_t idx)
{
    return sum_def(b, idx) - baseline(b, idx);
}

uint64_t lg_stats_block_value(lg_stats_block_t *b, size_t idx)
{
    pthread_mutex_lock(&registry_mutex);
    uint64_t v = b->_defs[idx].type == LG_STAT_COUNTER ? counter_value(b, idx) : sum_def(b, idx);
    pthread_mutex_unlock(&registry_mutex);
    return v;
}

uint64_t lg_stats_gauge_sum(const lg_stats_block_t *b, size_t idx)
{
    return sum_def(b, idx); /* rows are only added (atomically) while b lives; gauges have no baseline */
}

uint64_t lg_stats_block_class_value(lg_stats_block_t *b, unsigned cls)
{
    if (b->class_off == UINT32_MAX || cls < 1 || cls > 5)
        return 0;
    pthread_mutex_lock(&registry_mutex);
    uint64_t v = sum_word(b, b->class_off + cls - 1) - baseline(b, b->_ndefs + cls - 1);
    pthread_mutex_unlock(&registry_mutex);
    return v;
}

uint64_t lg_stats_block_code_value(lg_stats_block_t *b, unsigned code)
{
    if (!b->each_code || code < 100 || code > 599)
        return 0;
    pthread_mutex_lock(&registry_mutex);
    uint64_t v = sum_code(b, code) - code_baseline(b, code);
    pthread_mutex_unlock(&registry_mutex);
    return v;
}

/* ---- snapshots --------------------------------------------------------------------------------------------------------------- */

typedef struct st_collect_t {
    lg_stats_snapshot_t *snap;
    lg_stats_filter_cb filter;
    void *ctx;
    lg_strbuf_t name;
    lg_strbuf_t names; /* the kept names, NUL-terminated; samples hold offsets until collected */
} collect_t;

static void set_name(collect_t *c, const lg_stats_block_t *b, const char *mid, const char *suffix)
{
    c->name.len = 0;
    lg_strbuf_puts(&c->name, b->_prefix);
    lg_strbuf_puts(&c->name, mid);
    lg_strbuf_puts(&c->name, suffix);
}

/* Appends a sample named c->name unless filtered out; returns it or NULL. */
static lg_stat_sample_t *push(collect_t *c, lg_stat_type_t type, int used)
{
    if (c->filter != NULL && !c->filter(c->name.base, type, used, c->ctx))
        return NULL;
    lg_stats_snapshot_t *s = c->snap;
    if (s->count == s->cap) {
        s->cap = s->cap == 0 ? 256 : s->cap * 2;
        s->samples = lg_realloc(s->samples, s->cap * sizeof(*s->samples));
    }
    lg_stat_sample_t *x = s->samples + s->count++;
    *x = (lg_stat_sample_t){(char *)(uintptr_t)c->names.len, type, used};
    lg_strbuf_append(&c->names, c->name.base, c->name.len + 1);
    return x;
}

static void collect_def(collect_t *c, lg_stats_block_t *b, size_t i)
{
    const lg_stat_def_t *d = b->_defs + i;
    lg_stat_sample_t *x;
    set_name(c, b, "", d->name);
    switch (d->type) {
    case LG_STAT_COUNTER: {
        uint64_t raw = sum_def(b, i);
        if ((x = push(c, d->type, raw != 0)) != NULL)
            x->value = counter_value(b, i);
    } break;
    case LG_STAT_GAUGE: {
        uint64_t v = sum_def(b, i);
        if ((x = push(c, d->type, gauge_used(b, i, v))) != NULL)
            x->value = v;
    } break;
    case LG_STAT_TEXT_READOUT: {
        const char *t = b->_extra != NULL && b->_extra->texts != NULL ? b->_extra->texts[i] : NULL;
        if ((x = push(c, d->type, t != NULL)) != NULL)
            x->text = lg_strdup(t != NULL ? t : "");
    } break;
    case LG_STAT_HISTOGRAM: {
        uint64_t h[LG_STATS_HIST_WORDS];
        sum_hist(b, i, h);
        if ((x = push(c, d->type, lg_stats_hist_count(h) != 0)) != NULL) {
            x->hist = lg_malloc(sizeof(h));
            memcpy(x->hist, h, sizeof(h));
        }
    } break;
    }
}

static void collect_codes(collect_t *c, lg_stats_block_t *b)
{
    char suffix[8];
    for (unsigned cls = 1; cls <= 5; ++cls) {
        uint64_t raw = sum_word(b, b->class_off + cls - 1);
        if (raw == 0 && b->_opts.classes_dynamic)
            continue;
        snprintf(suffix, sizeof(suffix), "%uxx", cls);
        set_name(c, b, b->_opts.code_prefix, suffix);
        lg_stat_sample_t *x = push(c, LG_STAT_COUNTER, raw != 0);
        if (x != NULL)
            x->value = raw - baseline(b, b->_ndefs + cls - 1);
    }
    for (unsigned code = 100; __atomic_load_n(&b->codes, __ATOMIC_ACQUIRE) != NULL && code != 600; ++code) {
        uint64_t raw = sum_code(b, code);
        if (raw == 0)
            continue;
        snprintf(suffix, sizeof(suffix), "%u", code);
        set_name(c, b, b->_opts.code_prefix, suffix);
        lg_stat_sample_t *x = push(c, LG_STAT_COUNTER, 1);
        if (x != NULL)
            x->value = raw - code_baseline(b, code);
    }
}

static int sample_cmp(const void *a, const void *b)
{
    return strcmp(((const lg_stat_sample_t *)a)->name, ((const lg_stat_sample_t *)b)->name);
}

static void sample_free(lg_stat_sample_t *x)
{
    free(x->text);
    free(x->hist);
}

/* Folds `dup` (same name) into `into`: Envoy would have shared one stat. */
static void sample_merge(lg_stat_sample_t *into, lg_stat_sample_t *dup)
{
    into->used |= dup->used;
    if (into->type == dup->type) {
        into->value += dup->value;
        for (size_t w = 0; into->hist != NULL && dup->hist != NULL && w != LG_STATS_HIST_WORDS; ++w)
            into->hist[w] += dup->hist[w];
    }
    sample_free(dup);
}

static void sort_and_merge(lg_stats_snapshot_t *snap)
{
    if (snap->count == 0)
        return;
    qsort(snap->samples, snap->count, sizeof(*snap->samples), sample_cmp);
    size_t out = 0;
    for (size_t i = 1; i != snap->count; ++i) {
        if (strcmp(snap->samples[out].name, snap->samples[i].name) == 0)
            sample_merge(snap->samples + out, snap->samples + i);
        else
            snap->samples[++out] = snap->samples[i];
    }
    snap->count = out + 1;
}

void lg_stats_snapshot(lg_stats_snapshot_t *snap, lg_stats_filter_cb filter, void *ctx)
{
    collect_t c = {snap, filter, ctx};
    *snap = (lg_stats_snapshot_t){NULL};
    pthread_mutex_lock(&registry_mutex);
    for (lg_stats_block_t *b = registry_head; b != NULL; b = b->_next) {
        for (size_t i = 0; i != b->_ndefs - b->_hidden; ++i)
            collect_def(&c, b, i);
        if (b->class_off != UINT32_MAX)
            collect_codes(&c, b);
    }
    pthread_mutex_unlock(&registry_mutex);
    lg_strbuf_free(&c.name);
    snap->_names = c.names.base;
    for (size_t i = 0; i != snap->count; ++i)
        snap->samples[i].name = snap->_names + (uintptr_t)snap->samples[i].name;
    sort_and_merge(snap);
}

void lg_stats_snapshot_free(lg_stats_snapshot_t *snap)
{
    for (size_t i = 0; i != snap->count; ++i)
        sample_free(snap->samples + i);
    free(snap->samples);
    free(snap->_names);
    *snap = (lg_stats_snapshot_t){NULL};
}

static int lookup_cb(const char *name, lg_stat_type_t type, int used, void *ctx)
{
    return strcmp(name, ctx) == 0;
}

int lg_stats_lookup(const char *name, uint64_t *value)
{
    lg_stats_snapshot_t snap;
    lg_stats_snapshot(&snap, lookup_cb, (void *)name);
    int found = snap.count != 0 && snap.samples[0].type <= LG_STAT_GAUGE;
    if (found)
        *value = snap.samples[0].value;
    lg_stats_snapshot_free(&snap);
    return found ? 0 : -1;
}

void lg_stats_reset_counters(void)
{
    pthread_mutex_lock(&registry_mutex);
    for (lg_stats_block_t *b = registry_head; b != NULL; b = b->_next) {
        lg_stats_block_extra_t *x = extra_of(b);
        if (x->baseline == NULL)
            x->baseline = lg_calloc(b->_ndefs + 5, sizeof(uint64_t));
        for (size_t i = 0; i != b->_ndefs; ++i)
            if (b->_defs[i].type == LG_STAT_COUNTER)
                x->baseline[i] = sum_def(b, i);
        for (size_t cls = 0; b->class_off != UINT32_MAX && cls != 5; ++cls)
            x->baseline[b->_ndefs + cls] = sum_word(b, b->class_off + cls);
        if (__atomic_load_n(&b->codes, __ATOMIC_ACQUIRE) == NULL)
            continue;
        if (x->code_baseline == NULL)
            x->code_baseline = lg_calloc(500, sizeof(uint64_t));
        for (unsigned code = 100; code != 600; ++code)
            x->code_baseline[code - 100] = sum_code(b, code);
    }
    pthread_mutex_unlock(&registry_mutex);
}

/* ---- histograms -------------------------------------------------------------------------------------------------------------- */

double lg_stats_hist_bound(size_t i)
{
    return hist_bounds[i];
}

uint64_t lg_stats_hist_count(const uint64_t *hist)
{
    uint64_t n = 0;
    for (size_t i = 0; i <= LG_STATS_HIST_BUCKETS; ++i)
        n += hist[i];
    return n;
}

uint64_t lg_stats_hist_sum(const uint64_t *hist)
{
    return hist[LG_STATS_HIST_BUCKETS + 1];
}

/* Values are integers, so bucket i holds [floor[i-1] + 1, floor[i]]; a quantile
 * interpolates linearly inside its bucket (the overflow bucket is a point). */
static double quantile(const uint64_t *hist, uint64_t total, double q)
{
    double rank = q * (double)total;
    uint64_t before = 0;
    for (size_t i = 0; i <= LG_STATS_HIST_BUCKETS; ++i) {
        if (hist[i] == 0)
            continue;
        if ((double)(before + hist[i]) >= rank || i == LG_STATS_HIST_BUCKETS) {
            double lo = i == 0 ? 0 : (double)lg_stats__hist_floor[i - 1] + (i == LG_STATS_HIST_BUCKETS ? 0 : 1);
            double hi = i == LG_STATS_HIST_BUCKETS ? lo : (double)lg_stats__hist_floor[i];
            double frac = rank <= (double)before ? 0 : (rank - (double)before) / (double)hist[i];
            return lo + (hi - lo) * frac;
        }
        before += hist[i];
    }
    return NAN;
}

void lg_stats_hist_quantiles(const uint64_t *hist, double out[LG_STATS_QUANTILES])
{
    uint64_t total = lg_stats_hist_count(hist);
    for (size_t i = 0; i != LG_STATS_QUANTILES; ++i)
        out[i] = total == 0 ? NAN : quantile(hist, total, lg_stats_quantiles[i]);
}

/* ---- tag extraction ---------------------------------------------------------------------------------------------------------- */

/* What an extractor matched: the characters to remove from the name, and the tag value. */
typedef struct st_tag_match_t {
    size_t rm_off, rm_len, v_off, v_len;
} tag_match_t;

static int starts_with(const char *n, size_t len, const char *lit)
{
    size_t l = strlen(lit);
    return len >= l && memcmp(n, lit, l) == 0;
}

static const char *find_from(const char *n, size_t len, size_t from, const char *lit)
{
    size_t l = strlen(lit);
    for (size_t i = from; i + l <= len; ++i)
        if (memcmp(n + i, lit, l) == 0)
            return n + i;
    return NULL;
}

static int set_match(tag_match_t *m, size_t v_off, size_t v_len, size_t rm_extra_before, size_t rm_extra_after)
{
    *m = (tag_match_t){v_off - rm_extra_before, v_len + rm_extra_before + rm_extra_after, v_off, v_len};
    return 1;
}

/* _rq(_(\d{3}))$ */
static int x_response_code(const char *n, size_t len, tag_match_t *m)
{
    if (len < 7 || memcmp(n + len - 7, "_rq_", 4) != 0)
        return 0;
    for (size_t i = len - 3; i != len; ++i)
        if (!isdigit((unsigned char)n[i]))
            return 0;
    return set_match(m, len - 3, 3, 1, 0);
}

/* _rq_(\d)xx$ */
static int x_response_code_class(const char *n, size_t len, tag_match_t *m)
{
    if (len < 7 || memcmp(n + len - 7, "_rq_", 4) != 0 || !isdigit((unsigned char)n[len - 3]) || memcmp(n + len - 2, "xx", 2) != 0)
        return 0;
    return set_match(m, len - 3, 1, 0, 0);
}

/* ^<head>\.<segment>\. (Envoy's tokenized "<head>.$.**") */
static int first_segment(const char *n, size_t len, const char *head, tag_match_t *m)
{
    size_t hl = strlen(head);
    if (!starts_with(n, len, head) || len <= hl || n[hl] != '.')
        return 0;
    const char *dot = memchr(n + hl + 1, '.', len - hl - 1);
    if (dot == NULL || dot == n + hl + 1)
        return 0;
    return set_match(m, hl + 1, (size_t)(dot - n) - hl - 1, 0, 1);
}

static int is_word(const char *s, size_t len)
{
    for (size_t i = 0; i != len; ++i)
        if (!isalnum((unsigned char)s[i]) && s[i] != '_')
            return 0;
    return len != 0;
}

/* Index of the last dot in n[from, to), or SIZE_MAX. */
static size_t last_dot(const char *n, size_t from, size_t to)
{
    while (to > from)
        if (n[--to] == '.')
            return to;
    return SIZE_MAX;
}

/* ^<head>(?=\.).*?<mid>((.*?)\.)\w+?$ : everything between <mid> and the last dot. */
static int mid_to_last(const char *n, size_t len, const char *head, const char *mid, tag_match_t *m)
{
    size_t hl = strlen(head);
    if (!starts_with(n, len, head) || len <= hl || n[hl] != '.')
        return 0;
    const char *p = find_from(n, len, hl, mid);
    if (p == NULL)
        return 0;
    size_t start = (size_t)(p - n) + strlen(mid), last = last_dot(n, start, len);
    if (last == SIZE_MAX || !is_word(n + last + 1, len - last - 1))
        return 0;
    return set_match(m, start, last - start, 0, 1);
}

/* ^<head>(?=\.).*?<mid>(\.(.*?))$ : everything after <mid>, with the dot removed. */
static int mid_to_end(const char *n, size_t len, const char *head, const char *mid, tag_match_t *m)
{
    size_t hl = strlen(head);
    if (!starts_with(n, len, head) || len <= hl || n[hl] != '.')
        return 0;
    const char *p = find_from(n, len, hl, mid);
    if (p == NULL)
        return 0;
    size_t start = (size_t)(p - n) + strlen(mid);
    return set_match(m, start, len - start, 1, 0);
}

static int x_virtual_cluster(const char *n, size_t len, tag_match_t *m)
{
    return mid_to_last(n, len, "vhost", ".vcluster.", m);
}

static int x_user_agent(const char *n, size_t len, tag_match_t *m)
{
    return mid_to_last(n, len, "http", ".user_agent.", m);
}

static int x_fault_downstream_cluster(const char *n, size_t len, tag_match_t *m)
{
    return mid_to_last(n, len, "http", ".fault.", m);
}

static int x_rds_route_config(const char *n, size_t len, tag_match_t *m)
{
    return mid_to_last(n, len, "http", ".rds.", m);
}

static int x_ssl_cipher(const char *n, size_t len, tag_match_t *m)
{
    return mid_to_end(n, len, "listener", ".ssl.cipher.", m);
}

static int x_ssl_cipher_suite(const char *n, size_t len, tag_match_t *m)
{
    return mid_to_end(n, len, "cluster", ".ssl.ciphers.", m);
}

/* ^cluster(?=\.).*?\.grpc(?=\.).*\.((.*?)\.)\w+?$ : the segment before the last one. */
static int x_grpc_bridge_method(const char *n, size_t len, tag_match_t *m)
{
    const char *p;
    if (!starts_with(n, len, "cluster.") || (p = find_from(n, len, 7, ".grpc.")) == NULL)
        return 0;
    size_t grpc_dot = (size_t)(p - n) + 5, last = last_dot(n, grpc_dot, len);
    if (last == SIZE_MAX || !is_word(n + last + 1, len - last - 1))
        return 0;
    size_t prev = last_dot(n, grpc_dot, last);
    if (prev == SIZE_MAX)
        return 0;
    return set_match(m, prev + 1, last - prev - 1, 0, 1);
}

/* ^cluster(?=\.).*?\.grpc\.((.*?)\.) */
static int x_grpc_bridge_service(const char *n, size_t len, tag_match_t *m)
{
    const char *p;
    if (!starts_with(n, len, "cluster.") || (p = find_from(n, len, 7, ".grpc.")) == NULL)
        return 0;
    size_t start = (size_t)(p - n) + 6;
    const char *dot = memchr(n + start, '.', len - start);
    return dot != NULL && set_match(m, start, (size_t)(dot - n) - start, 0, 1);
}

static int x_tcp_prefix(const char *n, size_t len, tag_match_t *m)
{
    return first_segment(n, len, "tcp", m);
}

static int x_udp_prefix(const char *n, size_t len, tag_match_t *m)
{
    return first_segment(n, len, "udp", m);
}

static int x_clientssl_prefix(const char *n, size_t len, tag_match_t *m)
{
    return first_segment(n, len, "auth.clientssl", m);
}

static int x_ratelimit_prefix(const char *n, size_t len, tag_match_t *m)
{
    return first_segment(n, len, "ratelimit", m);
}

static int x_cluster_name(const char *n, size_t len, tag_match_t *m)
{
    return first_segment(n, len, "cluster", m);
}

/* ^listener\..*?\.http\.(([^\.]+)\.) */
static int x_listener_http_prefix(const char *n, size_t len, tag_match_t *m)
{
    if (!starts_with(n, len, "listener."))
        return 0;
    for (const char *p = find_from(n, len, 9, ".http."); p != NULL; p = find_from(n, len, (size_t)(p - n) + 1, ".http.")) {
        size_t start = (size_t)(p - n) + 6;
        const char *dot = memchr(n + start, '.', len - start);
        if (dot != NULL && dot != n + start)
            return set_match(m, start, (size_t)(dot - n) - start, 0, 1);
    }
    return 0;
}

static int x_http_prefix(const char *n, size_t len, tag_match_t *m)
{
    return first_segment(n, len, "http", m);
}

/* Longest run of `set` characters from `from` that is followed by a dot. */
static size_t run_before_dot(const char *n, size_t len, size_t from, const char *set)
{
    size_t run = 0;
    while (from + run < len && n[from + run] != '\0' && strchr(set, n[from + run]) != NULL)
        ++run;
    for (;; --run) {
        if (from + run < len && n[from + run] == '.')
            return run;
        if (run == 0)
            return SIZE_MAX;
    }
}

/* ^listener\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.) */
static int x_listener_address(const char *n, size_t len, tag_match_t *m)
{
    if (!starts_with(n, len, "listener."))
        return 0;
    size_t run = run_before_dot(n, len, 9, "_.0123456789");
    if (run == SIZE_MAX)
        run = run_before_dot(n, len, 9, "_[]aAbBcCdDeEfF0123456789");
    return run != SIZE_MAX && set_match(m, 9, run, 0, 1);
}

static int x_virtual_host(const char *n, size_t len, tag_match_t *m)
{
    return first_segment(n, len, "vhost", m);
}

/* ^listener_manager\.((worker_\d+)\.) */
static int x_worker_id(const char *n, size_t len, tag_match_t *m)
{
    static const char head[] = "listener_manager.worker_";
    if (!starts_with(n, len, head))
        return 0;
    size_t i = sizeof(head) - 1;
    while (i < len && isdigit((unsigned char)n[i]))
        ++i;
    if (i == sizeof(head) - 1 || i >= len || n[i] != '.')
        return 0;
    return set_match(m, 17, i - 17, 0, 1);
}

/* Envoy's default extractors, in Envoy's order (those without a fixed prefix first). */
static const struct {
    const char *tag;
    int (*fn)(const char *n, size_t len, tag_match_t *m);
} extractors[] = {
    {"envoy.response_code", x_response_code},
    {"envoy.response_code_class", x_response_code_class},
    {"envoy.grpc_bridge_method", x_grpc_bridge_method},
    {"envoy.http_user_agent", x_user_agent},
    {"envoy.virtual_cluster", x_virtual_cluster},
    {"envoy.fault_downstream_cluster", x_fault_downstream_cluster},
    {"envoy.ssl_cipher", x_ssl_cipher},
    {"envoy.ssl_cipher_suite", x_ssl_cipher_suite},
    {"envoy.grpc_bridge_service", x_grpc_bridge_service},
    {"envoy.tcp_prefix", x_tcp_prefix},
    {"envoy.udp_prefix", x_udp_prefix},
    {"envoy.clientssl_prefix", x_clientssl_prefix},
    {"envoy.ratelimit_prefix", x_ratelimit_prefix},
    {"envoy.cluster_name", x_cluster_name},
    {"envoy.http_conn_manager_prefix", x_listener_http_prefix},
    {"envoy.http_conn_manager_prefix", x_http_prefix},
    {"envoy.listener_address", x_listener_address},
    {"envoy.virtual_host", x_virtual_host},
    {"envoy.rds_route_config", x_rds_route_config},
    {"envoy.worker_id", x_worker_id},
};

size_t lg_stats_extract_tags(const char *name, char *out, lg_stat_tag_t *tags, size_t max)
{
    size_t len = strlen(name), ntags = 0;
    char *removed = lg_calloc(len + 1, 1);
    for (size_t i = 0; i != LG_ARRAY_SIZE(extractors); ++i) {
        tag_match_t m;
        if (ntags == max || !extractors[i].fn(name, len, &m))
            continue;
        int dup = 0;
        for (size_t t = 0; t != ntags; ++t)
            dup |= strcmp(tags[t].name, extractors[i].tag) == 0;
        if (dup)
            continue;
        tags[ntags++] = (lg_stat_tag_t){extractors[i].tag, h2o_iovec_init(name + m.v_off, m.v_len)};
        memset(removed + m.rm_off, 1, m.rm_len);
    }
    size_t o = 0;
    for (size_t i = 0; i != len; ++i)
        if (!removed[i])
            out[o++] = name[i];
    out[o] = '\0';
    free(removed);
    return ntags;
}

/* ---- server-wide ------------------------------------------------------------------------------------------------------------- */

void lg_stats_init(size_t nworkers)
{
    lg_stats_nworkers = nworkers;
    start_ms = lg_now_ms();
    lg_stats_server = lg_stats_block_new("server.", server_defs, LG_ARRAY_SIZE(server_defs));
    lg_stats_listener_manager =
        lg_stats_block_new("listener_manager.", listener_manager_defs, LG_ARRAY_SIZE(listener_manager_defs));
    lg_stats_cluster_manager = lg_stats_block_new("cluster_manager.", cluster_manager_defs, LG_ARRAY_SIZE(cluster_manager_defs));
    lg_stats_http1 = lg_stats_block_new("http1.", http1_defs, LG_ARRAY_SIZE(http1_defs));
    lg_stats_http2 = lg_stats_block_new("http2.", http2_defs, LG_ARRAY_SIZE(http2_defs));
    lg_stats_gauge_set(lg_stats_server, LG_SERVER_STAT_concurrency, nworkers);
    lg_stats_server_refresh(0);
}

void lg_stats_shutdown(void)
{
    lg_stats_block_release(lg_stats_server);
    lg_stats_block_release(lg_stats_listener_manager);
    lg_stats_block_release(lg_stats_cluster_manager);
    lg_stats_block_release(lg_stats_http1);
    lg_stats_block_release(lg_stats_http2);
    lg_stats_server = lg_stats_listener_manager = lg_stats_cluster_manager = lg_stats_http1 = lg_stats_http2 = NULL;
    pthread_mutex_lock(&hist_layouts_mutex);
    while (hist_layouts != NULL) {
        hist_layout_t *l = hist_layouts;
        hist_layouts = l->next;
        free(l);
    }
    pthread_mutex_unlock(&hist_layouts_mutex);
}

void lg_stats_server_set_state(lg_server_state_t state)
{
    /* Envoy's server.initialization_time_ms: from the start to the end of the init manager's wait */
    if (state == LG_SERVER_LIVE && __atomic_load_n(&server_state, __ATOMIC_RELAXED) != LG_SERVER_LIVE && lg_stats_server != NULL)
        lg_stats_histogram_record(lg_stats_server, lg_stats_nworkers, LG_SERVER_STAT_initialization_time_ms,
                                  lg_now_ms() - start_ms);
    __atomic_store_n(&server_state, (int)state, __ATOMIC_RELAXED);
}

lg_server_state_t lg_stats_server_state(int healthcheck_failed)
{
    lg_server_state_t s = (lg_server_state_t)__atomic_load_n(&server_state, __ATOMIC_RELAXED);
    return s == LG_SERVER_LIVE && healthcheck_failed ? LG_SERVER_DRAINING : s;
}

uint64_t lg_stats_uptime_s(void)
{
    return (lg_now_ms() - start_ms) / 1000;
}

static uint64_t resident_bytes(void)
{
    unsigned long size, resident;
    FILE *fp = fopen("/proc/self/statm", "r");
    if (fp == NULL)
        return 0;
    int n = fscanf(fp, "%lu %lu", &size, &resident);
    fclose(fp);
    return n == 2 ? (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE) : 0;
}

void lg_stats_server_refresh(int healthcheck_failed)
{
    lg_stats_block_t *s = lg_stats_server;
    if (s == NULL)
        return;
    struct mallinfo2 mi = mallinfo2();
    lg_server_state_t state = lg_stats_server_state(healthcheck_failed);
    lg_stats_gauge_set(s, LG_SERVER_STAT_uptime, lg_stats_uptime_s());
    lg_stats_gauge_set(s, LG_SERVER_STAT_memory_allocated, mi.uordblks + mi.hblkhd);
    lg_stats_gauge_set(s, LG_SERVER_STAT_memory_heap_size, mi.arena + mi.hblkhd);
    lg_stats_gauge_set(s, LG_SERVER_STAT_memory_physical_size, resident_bytes());
    lg_stats_gauge_set(s, LG_SERVER_STAT_state, state);
    lg_stats_gauge_set(s, LG_SERVER_STAT_live, state == LG_SERVER_LIVE);
}
