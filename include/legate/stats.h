#ifndef LEGATE_STATS_H
#define LEGATE_STATS_H

#include "legate/common.h"
#include "legate/stats-t.h"
#include "legate/worker-t.h"

/* Number of workers (rows 0..n-1); row n is the control row. Fixed by lg_stats_init. */
extern size_t lg_stats_nworkers;

/* The server-wide blocks ("server.", "listener_manager.", "cluster_manager."), indexed
 * by LG_SERVER_STAT_*, LG_LISTENER_MANAGER_STAT_*, LG_CLUSTER_MANAGER_STAT_*. */
extern lg_stats_block_t *lg_stats_server;
extern lg_stats_block_t *lg_stats_listener_manager;
extern lg_stats_block_t *lg_stats_cluster_manager;
/* The downstream codecs' blocks ("http1.", "http2."), indexed by LG_HTTP1_STAT_* and
 * LG_HTTP2_STAT_*. */
extern lg_stats_block_t *lg_stats_http1, *lg_stats_http2;

/* Fixes the number of workers, records the start time and creates the server-wide
 * blocks (server.concurrency = nworkers). Call once, before any other thread starts. */
void lg_stats_init(size_t nworkers);
/* Releases the server-wide blocks; every other block must have been released. */
void lg_stats_shutdown(void);

/* Creates (control thread) a block whose stats are named <prefix><def.name>, with one
 * reference. A live block with the same prefix, defs pointer, ndefs and opts is
 * shared instead (a cluster updated by CDS keeps its counters, two HTTP connection
 * managers with one stat_prefix share http.<prefix>.*, as in Envoy). */
lg_stats_block_t *lg_stats_block_new(const char *prefix, const lg_stat_def_t *defs, size_t ndefs);
lg_stats_block_t *lg_stats_block_new_ex(const char *prefix, const lg_stat_def_t *defs, size_t ndefs,
                                        const lg_stats_block_opts_t *opts);
void lg_stats_block_retain(lg_stats_block_t *b);
/* Lists the block's hidden tail (opts.hidden_tail) from now on; control thread. */
void lg_stats_block_list_tail(lg_stats_block_t *b);
/* Drops a reference from any thread; the last one unlists and frees the block. */
void lg_stats_block_release(lg_stats_block_t *b);
const char *lg_stats_block_prefix(const lg_stats_block_t *b);

uint64_t *lg_stats__row_alloc(lg_stats_block_t *b, size_t row);

/* The row of a writer (allocated on its first write). Workers, and the control
 * and admin threads for the control row, only. */
static inline uint64_t *lg_stats_block_row(lg_stats_block_t *b, size_t row)
{
    uint64_t *r = __atomic_load_n(&b->rows[row], __ATOMIC_ACQUIRE);
    if (__builtin_expect(r == NULL, 0))
        r = lg_stats__row_alloc(b, row);
    return r;
}

/* The word of stat `idx` (a counter or gauge) in `row`. Only the owner of the row writes it. */
static inline uint64_t *lg_stats_block_counter(lg_stats_block_t *b, size_t row, size_t idx)
{
    return lg_stats_block_row(b, row) + idx;
}

/* A single-writer increment: a plain load and a relaxed store, no locked instruction.
 * The relaxed store pairs with the reader's relaxed load, so a concurrent read sees
 * either the old or the new value and the program has no data race. */
static inline void lg_stats__add(uint64_t *p, uint64_t n)
{
    __atomic_store_n(p, *p + n, __ATOMIC_RELAXED);
}

/* Gauges may go down; the first decrement of a row marks the gauge used (so a
 * connection opened and closed between two reads still shows in usedonly). */
static inline void lg_stats_gauge_sub(lg_stats_block_t *b, size_t row, size_t idx, uint64_t n)
{
    uint64_t *r = lg_stats_block_row(b, row), *u = r + b->used_off + idx / 64, bit = (uint64_t)1 << (idx % 64);
    lg_stats__add(r + idx, (uint64_t)0 - n);
    if ((*u & bit) == 0)
        __atomic_store_n(u, *u | bit, __ATOMIC_RELAXED);
}

/* For code that does not know its worker (the codecs): adds n to stat idx of b in
 * the calling thread's row (a worker's, else the control row). Nothing happens
 * before lg_stats_init (unit tests of the codecs). Gauges go down with n < 0. */
static inline void lg_stats_here_add(lg_stats_block_t *b, size_t idx, int64_t n)
{
    if (b == NULL)
        return;
    size_t row = lg_current_worker != NULL ? lg_current_worker->index : lg_stats_nworkers;
    if (n >= 0)
        lg_stats__add(lg_stats_block_counter(b, row, idx), (uint64_t)n);
    else
        lg_stats_gauge_sub(b, row, idx, (uint64_t)-n);
}

#define LG_STAT_ADD(block, row, idx, n) lg_stats__add(lg_stats_block_counter((block), (row), (idx)), (n))
#define LG_STAT_INC(block, row, idx) LG_STAT_ADD(block, row, idx, 1)
#define LG_STAT_DEC(block, row, idx) lg_stats_gauge_sub((block), (row), (idx), 1)
#define LG_STAT_SUB(block, row, idx, n) lg_stats_gauge_sub((block), (row), (idx), (n))

/* Integer floors of the bucket bounds: an integer v falls in bucket i when v <= floor[i]. */
extern const uint64_t lg_stats__hist_floor[LG_STATS_HIST_BUCKETS];

/* Records a histogram value (milliseconds, bytes, ...) into `row`. */
static inline void lg_stats_histogram_record(lg_stats_block_t *b, size_t row, size_t idx, uint64_t value)
{
    uint64_t *h = lg_stats_block_row(b, row) + b->hist_off[idx];
    size_t i = 0;
    while (i != LG_STATS_HIST_BUCKETS && value > lg_stats__hist_floor[i])
        ++i;
    lg_stats__add(h + i, 1);
    lg_stats__add(h + LG_STATS_HIST_BUCKETS + 1, value);
}

/* The code counters of class `cls` in `row`, allocated on first use. */
uint64_t *lg_stats__code_slots(lg_stats_block_t *b, size_t row, size_t cls);

/* Counts a response code: the class counter <code_prefix>Nxx, and <code_prefix><code>
 * when the block counts each code. Codes outside 100..599 are ignored. */
static inline void lg_stats_block_code(lg_stats_block_t *b, size_t row, unsigned code)
{
    if (code < 100 || code > 599 || b->class_off == UINT32_MAX)
        return;
    size_t cls = code / 100 - 1;
    lg_stats__add(lg_stats_block_row(b, row) + b->class_off + cls, 1);
    if (b->each_code) {
        uint64_t **codes = __atomic_load_n(&b->codes, __ATOMIC_ACQUIRE);
        uint64_t *slots = codes != NULL ? __atomic_load_n(&codes[row * 5 + cls], __ATOMIC_ACQUIRE) : NULL;
        if (slots == NULL)
            slots = lg_stats__code_slots(b, row, cls);
        lg_stats__add(slots + code % 100, 1);
    }
}

/* Control and admin threads share the control row, so they change it with atomic
 * read-modify-writes (off the request path). */
void lg_stats_control_add(lg_stats_block_t *b, size_t idx, int64_t delta);
/* Sets a gauge that only the control row holds (server.state, *_active counts kept by
 * the control thread). Workers must never inc/dec a set gauge. */
void lg_stats_gauge_set(lg_stats_block_t *b, size_t idx, uint64_t value);
/* Sets a text readout (copied). */
void lg_stats_text_set(lg_stats_block_t *b, size_t idx, const char *value);

/* Reads (admin/control thread) the summed value of a counter (since the last reset)
 * or gauge, the code counter <code> (100..599) or the class counter (1..5). */
uint64_t lg_stats_block_value(lg_stats_block_t *b, size_t idx);
/* A gauge's value summed over the rows, without the registry lock (any thread;
 * a row being written may be read mid-update: for decisions, not for output). */
uint64_t lg_stats_gauge_sum(const lg_stats_block_t *b, size_t idx);
uint64_t lg_stats_block_code_value(lg_stats_block_t *b, unsigned code);
uint64_t lg_stats_block_class_value(lg_stats_block_t *b, unsigned cls);
/* Finds a listed stat by full name; returns 0 and its value, or -1. */
int lg_stats_lookup(const char *name, uint64_t *value);

/* Collects every listed stat that `filter` keeps (NULL keeps all), sorted by name;
 * stats of the same name in several blocks are summed into one. */
void lg_stats_snapshot(lg_stats_snapshot_t *snap, lg_stats_filter_cb filter, void *ctx);
void lg_stats_snapshot_free(lg_stats_snapshot_t *snap);
/* Envoy's /reset_counters: counters read zero from now on (gauges and histograms stay). */
void lg_stats_reset_counters(void);

/* Histogram helpers over LG_STATS_HIST_WORDS words: the upper bound of bucket i,
 * the sample count, the sum, and Envoy's supported quantiles (NAN when empty). */
double lg_stats_hist_bound(size_t i);
uint64_t lg_stats_hist_count(const uint64_t *hist);
uint64_t lg_stats_hist_sum(const uint64_t *hist);
void lg_stats_hist_quantiles(const uint64_t *hist, double out[LG_STATS_QUANTILES]);
extern const double lg_stats_quantiles[LG_STATS_QUANTILES];

/* Applies Envoy's default tag extractors to `name`: writes the tag-extracted name
 * into `out` (at least strlen(name) + 1 bytes) and up to `max` tags in Envoy's order;
 * returns the number of tags. */
size_t lg_stats_extract_tags(const char *name, char *out, lg_stat_tag_t *tags, size_t max);

/* Sets the server's own state (PRE_INITIALIZING -> INITIALIZING -> LIVE; DRAINING on
 * shutdown). The effective state is DRAINING while health checks are failed. */
void lg_stats_server_set_state(lg_server_state_t state);
lg_server_state_t lg_stats_server_state(int healthcheck_failed);
/* Refreshes server.uptime, server.memory_*, server.state and server.live. */
void lg_stats_server_refresh(int healthcheck_failed);
/* Seconds since lg_stats_init. */
uint64_t lg_stats_uptime_s(void);

#endif
