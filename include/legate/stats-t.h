/*
 * Stats: per-worker rows of 64-bit words, summed by the reader.
 *
 * Every stats-owning object (a cluster, a listener, an HTTP connection
 * manager's stat_prefix, the server) owns a block compiled on the control
 * thread from a static list of definitions. A block has one row per worker
 * plus one control row (index lg_stats_nworkers) shared by the control and
 * admin threads. A worker only ever writes its own row, with a plain load
 * followed by a relaxed atomic store (no locked instruction); the admin
 * thread sums the rows with relaxed atomic loads. That keeps the request path
 * free of locks and read-modify-write atomics while staying free of data races
 * in the C11 sense.
 */
#ifndef LEGATE_STATS_T_H
#define LEGATE_STATS_T_H

#include <stddef.h>
#include <stdint.h>
#include <h2o/memory.h>

typedef enum en_lg_stat_type_t {
    LG_STAT_COUNTER,
    LG_STAT_GAUGE,
    LG_STAT_TEXT_READOUT,
    LG_STAT_HISTOGRAM,
} lg_stat_type_t;

/* One stat of a block: `name` is the suffix after the block's prefix
 * ("upstream_rq_total"); it must outlive the block (string literals). */
typedef struct st_lg_stat_def_t {
    const char *name;
    lg_stat_type_t type;
} lg_stat_def_t;

/* Builds lg_stat_def_t initialisers and index enums from one X-macro list of
 * X(TYPE, name) entries, TYPE one of COUNTER, GAUGE, TEXT_READOUT, HISTOGRAM:
 *
 *   #define MY_STATS(X) X(COUNTER, upstream_rq_total) X(GAUGE, upstream_cx_active)
 *   #define MY_ENUM(type, name) MY_##name,
 *   enum { MY_STATS(MY_ENUM) MY__COUNT };
 *   static const lg_stat_def_t my_defs[] = {MY_STATS(LG_STAT_DEF)};
 */
#define LG_STAT_DEF(type, name) {#name, LG_STAT_##type},

/* Envoy's default histogram buckets (upper bounds, inclusive). */
#define LG_STATS_HIST_BUCKETS 19
/* Words a histogram takes in a row: one count per bucket, the overflow count, the sum. */
#define LG_STATS_HIST_WORDS (LG_STATS_HIST_BUCKETS + 2)
/* Envoy's supported quantiles: P0 P25 P50 P75 P90 P95 P99 P99.5 P99.9 P100. */
#define LG_STATS_QUANTILES 10

/* Response code counters of a block (lg_stats_block_code):
 * <prefix><code_prefix>1xx .. 5xx and optionally <prefix><code_prefix><code>. */
typedef struct st_lg_stats_block_opts_t {
    /* "upstream_rq_" or "downstream_rq_"; NULL: the block has no code counters. */
    const char *code_prefix;
    /* Class counters are listed only once non-zero (Envoy creates cluster.*.upstream_rq_2xx
     * on first use) rather than always (http.*.downstream_rq_2xx are declared stats). */
    unsigned classes_dynamic : 1;
    /* Also count each code 100..599 (listed once non-zero); the 100-slot arrays of a
     * class are allocated per row on first use. */
    unsigned each_code : 1;
    /* Keep the block out of the registry: /stats does not list it (per-host stats
     * that only /clusters prints). */
    unsigned unlisted : 1;
    /* Non-zero: a split block. Stats [control_from, ndefs) are written only through the
     * control row (lg_stats_control_add, lg_stats_gauge_set) and stats [0, control_from)
     * only by workers in their rows; each row holds only its part (the control row a few
     * words instead of a full row, the worker rows no control-only words). Histograms and
     * code counters go to worker rows. Zero: every row holds every stat. */
    uint16_t control_from;
    /* The last hidden_tail defs are not listed until lg_stats_block_list_tail() (the EDS
     * subscription stats of a cluster block: one block whether or not the cluster uses EDS). */
    uint16_t hidden_tail;
} lg_stats_block_opts_t;

typedef struct st_lg_stats_block_t lg_stats_block_t;

/* What a block's set of stats needs beyond the per-row words: baselines of
 * /reset_counters and text readouts. Allocated on first use (most blocks never
 * have either); guarded by the registry mutex. */
typedef struct st_lg_stats_block_extra_t {
    uint64_t *baseline;      /* counter sums at the last /reset_counters (ndefs + 5), or NULL */
    uint64_t *code_baseline; /* 500, or NULL */
    char **texts;            /* text readouts (ndefs), or NULL */
} lg_stats_block_extra_t;

/* A block costs one allocation (this struct, its row pointers, the seen-used
 * bitmap and the prefix) until a thread writes a stat: each row is allocated by
 * the first write into it, so 10,000 clusters that no request reaches hold no
 * worker rows. */
struct st_lg_stats_block_t {
    /* Read on the request path; immutable after creation. */
    uint32_t row_words;       /* multiple of 8 */
    uint32_t class_off;       /* first of 5 class counters, or UINT32_MAX */
    uint32_t used_off;        /* gauge "used" bitmap words (of the defs a worker row holds) */
    uint32_t each_code : 1;   /* counts each response code (codes) */
    const uint16_t *hist_off; /* per def: first word of a histogram's region; NULL without histograms */
    uint64_t **codes;         /* nrows * 5 lazily allocated arrays of 100 words; the array itself lazily too */
    /* Control side: immutable, or guarded by the registry mutex. */
    const char *_prefix; /* in the block's allocation */
    const lg_stat_def_t *_defs;
    uint32_t _ndefs;
    uint16_t _nrows;  /* lg_stats_nworkers + 1 when created */
    uint16_t _hidden; /* trailing defs not listed (opts.hidden_tail until lg_stats_block_list_tail) */
    uint32_t _hash;
    uint32_t _ctl_from; /* _opts.control_from: the first def of the control row (0: the control row is a full row) */
    lg_stats_block_opts_t _opts;
    size_t _refcnt; /* atomic */
    lg_stats_block_extra_t *_extra;
    uint64_t *_seen_used; /* gauges seen non-zero by a reader (bitmap, in the block's allocation) */
    struct st_lg_stats_block_t *_next, **_pprev;
    struct st_lg_stats_block_t *_hnext; /* the registry's by-prefix index chain */
    /* Row r (0..nworkers; nworkers is the control row), NULL until written: owned by
     * its writer, published with a release store (lg_stats__row_alloc). A split block's
     * control row holds the words of defs [_ctl_from, ndefs), then their "used" bitmap. */
    uint64_t *rows[];
};

/* One stat as read by the admin thread (lg_stats_snapshot). */
typedef struct st_lg_stat_sample_t {
    char *name; /* in the snapshot's name buffer */
    lg_stat_type_t type;
    int used;
    uint64_t value; /* counters (minus the reset baseline) and gauges */
    char *text;     /* text readouts */
    uint64_t *hist; /* histograms: LG_STATS_HIST_WORDS words summed over rows */
} lg_stat_sample_t;

typedef struct st_lg_stats_snapshot_t {
    lg_stat_sample_t *samples;
    size_t count, cap;
    char *_names; /* every sample's name, one allocation (10,000 clusters make 470,000 samples) */
} lg_stats_snapshot_t;

/* Returns non-zero to keep a stat in a snapshot. */
typedef int (*lg_stats_filter_cb)(const char *name, lg_stat_type_t type, int used, void *ctx);

/* A tag produced by Envoy's default tag extractors: `name` is Envoy's tag name
 * ("envoy.cluster_name"), `value` points into the stat name. */
typedef struct st_lg_stat_tag_t {
    const char *name;
    h2o_iovec_t value;
} lg_stat_tag_t;

#define LG_STATS_MAX_TAGS 8

/* Envoy's ServerInfo.State, the value of server.state. */
typedef enum en_lg_server_state_t {
    LG_SERVER_LIVE = 0,
    LG_SERVER_DRAINING = 1,
    LG_SERVER_PRE_INITIALIZING = 2,
    LG_SERVER_INITIALIZING = 3,
} lg_server_state_t;

/* server.* stats. Set gauges (written by lg_stats_gauge_set from the control thread
 * or refreshed by lg_stats_server_refresh): concurrency, days_until_first_cert_expiring,
 * hot_restart_epoch, live, memory_*, state, uptime, version. total_connections and
 * parent_connections are per-worker delta gauges (workers inc/dec them). */
#define LG_SERVER_STATS(X)                               \
    X(GAUGE, concurrency)                                \
    X(GAUGE, days_until_first_cert_expiring)             \
    X(COUNTER, debug_assertion_failures)                 \
    X(COUNTER, dynamic_unknown_fields)                   \
    X(COUNTER, envoy_bug_failures)                       \
    X(GAUGE, hot_restart_epoch)                          \
    X(GAUGE, hot_restart_generation)                     \
    X(HISTOGRAM, initialization_time_ms)                 \
    X(GAUGE, live)                                       \
    X(GAUGE, memory_allocated)                           \
    X(GAUGE, memory_heap_size)                           \
    X(GAUGE, memory_physical_size)                       \
    X(GAUGE, parent_connections)                         \
    X(GAUGE, seconds_until_first_ocsp_response_expiring) \
    X(GAUGE, state)                                      \
    X(COUNTER, static_unknown_fields)                    \
    X(GAUGE, stats_recent_lookups)                       \
    X(GAUGE, total_connections)                          \
    X(GAUGE, uptime)                                     \
    X(GAUGE, version)                                    \
    X(COUNTER, wip_protos)

/* listener_manager.* stats (the LDS subscription's lds.* stats live in their own block). */
#define LG_LISTENER_MANAGER_STATS(X)       \
    X(COUNTER, listener_added)             \
    X(COUNTER, listener_create_failure)    \
    X(COUNTER, listener_create_success)    \
    X(COUNTER, listener_in_place_updated)  \
    X(COUNTER, listener_modified)          \
    X(COUNTER, listener_removed)           \
    X(COUNTER, listener_stopped)           \
    X(GAUGE, total_filter_chains_draining) \
    X(GAUGE, total_listeners_active)       \
    X(GAUGE, total_listeners_draining)     \
    X(GAUGE, total_listeners_warming)      \
    X(GAUGE, workers_started)

/* cluster_manager.* stats (cds.* live in the CDS subscription's block). */
#define LG_CLUSTER_MANAGER_STATS(X)        \
    X(GAUGE, active_clusters)              \
    X(COUNTER, cluster_added)              \
    X(COUNTER, cluster_modified)           \
    X(COUNTER, cluster_removed)            \
    X(COUNTER, cluster_updated)            \
    X(COUNTER, cluster_updated_via_merge)  \
    X(COUNTER, update_merge_cancelled)     \
    X(COUNTER, update_out_of_merge_window) \
    X(GAUGE, warming_clusters)

/* Envoy's codec stats of downstream connections (Http1::CodecStats under
 * http1.*, Http2::CodecStats under http2.*), the ones Legate's codecs keep. */
#define LG_HTTP1_CODEC_STATS(X)                  \
    X(COUNTER, dropped_headers_with_underscores) \
    X(COUNTER, requests_rejected_with_underscores_in_headers)

#define LG_HTTP2_CODEC_STATS(X)                               \
    X(COUNTER, dropped_headers_with_underscores)              \
    X(COUNTER, goaway_sent)                                   \
    X(COUNTER, header_overflow)                               \
    X(COUNTER, inbound_empty_frames_flood)                    \
    X(COUNTER, inbound_priority_frames_flood)                 \
    X(COUNTER, inbound_window_update_frames_flood)            \
    X(COUNTER, outbound_control_flood)                        \
    X(COUNTER, outbound_flood)                                \
    X(COUNTER, requests_rejected_with_underscores_in_headers) \
    X(COUNTER, rx_messaging_error)                            \
    X(COUNTER, rx_reset)                                      \
    X(COUNTER, trailers)                                      \
    X(COUNTER, tx_reset)                                      \
    X(GAUGE, streams_active)

#define LG__SERVER_STAT_ENUM(type, name) LG_SERVER_STAT_##name,
#define LG__LISTENER_MANAGER_STAT_ENUM(type, name) LG_LISTENER_MANAGER_STAT_##name,
#define LG__CLUSTER_MANAGER_STAT_ENUM(type, name) LG_CLUSTER_MANAGER_STAT_##name,
enum { LG_SERVER_STATS(LG__SERVER_STAT_ENUM) LG_SERVER_STAT__COUNT };
enum { LG_LISTENER_MANAGER_STATS(LG__LISTENER_MANAGER_STAT_ENUM) LG_LISTENER_MANAGER_STAT__COUNT };
enum { LG_CLUSTER_MANAGER_STATS(LG__CLUSTER_MANAGER_STAT_ENUM) LG_CLUSTER_MANAGER_STAT__COUNT };
#define LG__HTTP1_STAT_ENUM(type, name) LG_HTTP1_STAT_##name,
#define LG__HTTP2_STAT_ENUM(type, name) LG_HTTP2_STAT_##name,
enum { LG_HTTP1_CODEC_STATS(LG__HTTP1_STAT_ENUM) LG_HTTP1_STAT__COUNT };
enum { LG_HTTP2_CODEC_STATS(LG__HTTP2_STAT_ENUM) LG_HTTP2_STAT__COUNT };

#endif
