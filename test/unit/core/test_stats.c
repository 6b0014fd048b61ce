#include <malloc.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include "legate/stats.h"
#include "test.h"

#define CLUSTER_STATS(X) \
    X(COUNTER, upstream_rq_total) X(GAUGE, upstream_cx_active) X(HISTOGRAM, upstream_rq_time) X(TEXT_READOUT, note)
#define CLUSTER_ENUM(type, name) C_##name,
enum { CLUSTER_STATS(CLUSTER_ENUM) C__COUNT };
static const lg_stat_def_t cluster_defs[] = {CLUSTER_STATS(LG_STAT_DEF)};
static const lg_stats_block_opts_t cluster_opts = {.code_prefix = "upstream_rq_", .classes_dynamic = 1, .each_code = 1};

static const lg_stat_def_t http_defs[] = {{"downstream_rq_total", LG_STAT_COUNTER}, {"downstream_cx_active", LG_STAT_GAUGE}};
static const lg_stat_def_t other_defs[] = {{"downstream_rq_total", LG_STAT_COUNTER}};

static uint64_t value_of(const char *name)
{
    uint64_t v = UINT64_MAX;
    lg_stats_lookup(name, &v);
    return v;
}

/* Finds a stat in a fresh snapshot; returns a copy of its sample fields. */
static int find_sample(const char *name, lg_stat_sample_t *out)
{
    lg_stats_snapshot_t snap;
    lg_stats_snapshot(&snap, NULL, NULL);
    int found = 0, sorted = 1;
    for (size_t i = 0; i != snap.count; ++i) {
        if (strcmp(snap.samples[i].name, name) == 0) {
            *out = (lg_stat_sample_t){NULL, snap.samples[i].type, snap.samples[i].used, snap.samples[i].value};
            found = 1;
        }
        sorted &= i == 0 || strcmp(snap.samples[i - 1].name, snap.samples[i].name) < 0;
    }
    ok(sorted, "snapshot sorted with unique names");
    lg_stats_snapshot_free(&snap);
    return found;
}

static void test_rows_and_sums(lg_stats_block_t *b)
{
    ok(((uintptr_t)lg_stats_block_row(b, 0) & 63) == 0 && ((uintptr_t)lg_stats_block_row(b, 1) & 63) == 0,
       "rows cache-line aligned");
    LG_STAT_INC(b, 0, C_upstream_rq_total);
    LG_STAT_INC(b, 1, C_upstream_rq_total);
    LG_STAT_ADD(b, 2, C_upstream_rq_total, 5);
    ok(lg_stats_block_value(b, C_upstream_rq_total) == 7, "counter summed over rows: %llu",
       (unsigned long long)lg_stats_block_value(b, C_upstream_rq_total));
    ok(value_of("cluster.backend.upstream_rq_total") == 7, "lookup by full name");

    LG_STAT_INC(b, 0, C_upstream_cx_active);
    LG_STAT_INC(b, 1, C_upstream_cx_active);
    LG_STAT_DEC(b, 0, C_upstream_cx_active);
    ok(value_of("cluster.backend.upstream_cx_active") == 1, "gauge deltas summed");
    /* a gauge may go up on one row and down on another */
    LG_STAT_DEC(b, 2, C_upstream_cx_active);
    ok(value_of("cluster.backend.upstream_cx_active") == 0, "cross-row gauge deltas sum to zero");
}

static void test_usedonly(void)
{
    lg_stats_block_t *b = lg_stats_block_new("http.u.", http_defs, LG_ARRAY_SIZE(http_defs));
    lg_stat_sample_t s;
    ok(find_sample("http.u.downstream_rq_total", &s) && !s.used && s.value == 0, "fresh counter listed but unused");
    ok(find_sample("http.u.downstream_cx_active", &s) && !s.used, "fresh gauge unused");
    LG_STAT_INC(b, 1, 1);
    LG_STAT_DEC(b, 1, 1);
    ok(find_sample("http.u.downstream_cx_active", &s) && s.used && s.value == 0, "gauge up and down between reads is used");
    LG_STAT_INC(b, 0, 0);
    ok(find_sample("http.u.downstream_rq_total", &s) && s.used && s.value == 1, "incremented counter used");
    lg_stats_block_release(b);
}

static void test_codes(lg_stats_block_t *b)
{
    lg_stat_sample_t s;
    ok(!find_sample("cluster.backend.upstream_rq_2xx", &s), "dynamic class not listed before use");
    lg_stats_block_code(b, 0, 200);
    lg_stats_block_code(b, 1, 200);
    lg_stats_block_code(b, 2, 503);
    lg_stats_block_code(b, 0, 99);
    lg_stats_block_code(b, 0, 600);
    ok(lg_stats_block_code_value(b, 200) == 2, "per-code counter summed");
    ok(lg_stats_block_class_value(b, 2) == 2 && lg_stats_block_class_value(b, 5) == 1, "class counters");
    ok(find_sample("cluster.backend.upstream_rq_200", &s) && s.value == 2 && s.type == LG_STAT_COUNTER, "upstream_rq_200 listed");
    ok(find_sample("cluster.backend.upstream_rq_2xx", &s) && s.value == 2, "upstream_rq_2xx listed");
    ok(find_sample("cluster.backend.upstream_rq_503", &s) && s.value == 1, "upstream_rq_503 listed");
    ok(!find_sample("cluster.backend.upstream_rq_404", &s) && !find_sample("cluster.backend.upstream_rq_4xx", &s),
       "unused codes and classes not listed");

    lg_stats_block_t *h = lg_stats_block_new_ex("http.ingress.", http_defs, LG_ARRAY_SIZE(http_defs),
                                                &(lg_stats_block_opts_t){.code_prefix = "downstream_rq_"});
    ok(find_sample("http.ingress.downstream_rq_4xx", &s) && s.value == 0 && !s.used, "static classes always listed");
    lg_stats_block_code(h, 0, 404);
    ok(find_sample("http.ingress.downstream_rq_4xx", &s) && s.value == 1, "static class counted");
    ok(!find_sample("http.ingress.downstream_rq_404", &s), "no per-code counters without each_code");
    lg_stats_block_release(h);
}

static void test_histogram(lg_stats_block_t *b)
{
    lg_stat_sample_t s;
    double q[LG_STATS_QUANTILES];
    ok(find_sample("cluster.backend.upstream_rq_time", &s) && s.type == LG_STAT_HISTOGRAM && !s.used, "empty histogram unused");
    lg_stats_histogram_record(b, 0, C_upstream_rq_time, 0);
    lg_stats_histogram_record(b, 1, C_upstream_rq_time, 1);
    lg_stats_histogram_record(b, 1, C_upstream_rq_time, 3);
    lg_stats_histogram_record(b, 2, C_upstream_rq_time, 7);
    lg_stats_histogram_record(b, 2, C_upstream_rq_time, 100);
    lg_stats_histogram_record(b, 2, C_upstream_rq_time, 10000000);

    lg_stats_snapshot_t snap;
    lg_stats_snapshot(&snap, NULL, NULL);
    const uint64_t *h = NULL;
    for (size_t i = 0; i != snap.count; ++i)
        if (strcmp(snap.samples[i].name, "cluster.backend.upstream_rq_time") == 0)
            h = snap.samples[i].hist;
    ok(h != NULL, "histogram in snapshot");
    if (h != NULL) {
        ok(lg_stats_hist_count(h) == 6 && lg_stats_hist_sum(h) == 10000111, "count and sum");
        ok(h[0] == 1 && h[1] == 1 && h[2] == 1 && h[3] == 1 && h[6] == 1 && h[LG_STATS_HIST_BUCKETS] == 1, "bucket placement");
        lg_stats_hist_quantiles(h, q);
        ok(q[0] == 0, "P0 is the minimum bucket: %g", q[0]);
        ok(q[LG_STATS_QUANTILES - 1] == 3600000, "P100 in the overflow bucket: %g", q[LG_STATS_QUANTILES - 1]);
        ok(q[2] >= 2 && q[2] <= 5, "P50 within the [2,5] bucket: %g", q[2]);
    }
    lg_stats_snapshot_free(&snap);
    uint64_t empty[LG_STATS_HIST_WORDS] = {0};
    lg_stats_hist_quantiles(empty, q);
    ok(isnan(q[0]) && isnan(q[9]), "empty quantiles are NaN");
}

static void test_refcount_and_sharing(lg_stats_block_t *b)
{
    lg_stats_block_t *again = lg_stats_block_new_ex("cluster.backend.", cluster_defs, C__COUNT, &cluster_opts);
    ok(again == b, "same prefix and defs share the block");
    lg_stats_block_t *other = lg_stats_block_new_ex("cluster.other.", cluster_defs, C__COUNT, &cluster_opts);
    ok(other != b, "another prefix gets its own block");
    lg_stats_block_release(again);
    ok(value_of("cluster.backend.upstream_rq_total") == 7, "still listed after one release");
    lg_stats_block_release(other);
    ok(value_of("cluster.other.upstream_rq_total") == UINT64_MAX, "released block unlisted");

    /* two blocks with different defs produce the same name: one stat, summed */
    lg_stats_block_t *x = lg_stats_block_new("http.dup.", http_defs, LG_ARRAY_SIZE(http_defs));
    lg_stats_block_t *y = lg_stats_block_new("http.dup.", other_defs, LG_ARRAY_SIZE(other_defs));
    LG_STAT_INC(x, 0, 0);
    LG_STAT_ADD(y, 1, 0, 2);
    ok(value_of("http.dup.downstream_rq_total") == 3, "duplicate names merged");
    lg_stats_block_release(x);
    lg_stats_block_release(y);

    lg_stats_block_t *u = lg_stats_block_new_ex("host.", other_defs, 1, &(lg_stats_block_opts_t){.unlisted = 1});
    LG_STAT_INC(u, 0, 0);
    ok(value_of("host.downstream_rq_total") == UINT64_MAX && lg_stats_block_value(u, 0) == 1,
       "unlisted block readable, not listed");
    lg_stats_block_release(u);
}

static void test_reset_and_text(lg_stats_block_t *b)
{
    lg_stat_sample_t s;
    LG_STAT_INC(b, 0, C_upstream_cx_active);
    lg_stats_reset_counters();
    ok(value_of("cluster.backend.upstream_rq_total") == 0, "counter reset");
    ok(lg_stats_block_code_value(b, 200) == 0 && lg_stats_block_class_value(b, 2) == 0, "code counters reset");
    ok(value_of("cluster.backend.upstream_cx_active") == 1, "gauge not reset");
    ok(find_sample("cluster.backend.upstream_rq_total", &s) && s.used, "reset counter stays used");
    LG_STAT_INC(b, 1, C_upstream_rq_total);
    ok(value_of("cluster.backend.upstream_rq_total") == 1, "counts from the reset");

    lg_stats_text_set(b, C_note, "hello");
    lg_stats_snapshot_t snap;
    lg_stats_snapshot(&snap, NULL, NULL);
    int seen = 0;
    for (size_t i = 0; i != snap.count; ++i)
        if (strcmp(snap.samples[i].name, "cluster.backend.note") == 0)
            seen = snap.samples[i].type == LG_STAT_TEXT_READOUT && strcmp(snap.samples[i].text, "hello") == 0;
    ok(seen, "text readout");
    lg_stats_snapshot_free(&snap);
}

static void check_tags(const char *name, const char *want_name, const char *want_tags)
{
    char out[256];
    lg_stat_tag_t tags[LG_STATS_MAX_TAGS];
    size_t n = lg_stats_extract_tags(name, out, tags, LG_STATS_MAX_TAGS);
    lg_strbuf_t got = {NULL};
    lg_strbuf_puts(&got, "");
    for (size_t i = 0; i != n; ++i)
        lg_strbuf_printf(&got, "%s%s=%.*s", i == 0 ? "" : ",", tags[i].name, (int)tags[i].value.len, tags[i].value.base);
    ok(strcmp(out, want_name) == 0, "%s: extracted name %s, want %s", name, out, want_name);
    ok(strcmp(got.base, want_tags) == 0, "%s: tags %s, want %s", name, got.base, want_tags);
    lg_strbuf_free(&got);
}

static void test_tags(void)
{
    check_tags("cluster.backend.upstream_rq_200", "cluster.upstream_rq", "envoy.response_code=200,envoy.cluster_name=backend");
    check_tags("cluster.backend.upstream_rq_2xx", "cluster.upstream_rq_xx",
               "envoy.response_code_class=2,envoy.cluster_name=backend");
    check_tags("cluster.backend.upstream_rq_total", "cluster.upstream_rq_total", "envoy.cluster_name=backend");
    check_tags("http.ingress.downstream_rq_total", "http.downstream_rq_total", "envoy.http_conn_manager_prefix=ingress");
    check_tags("listener.0.0.0.0_10000.downstream_cx_total", "listener.downstream_cx_total",
               "envoy.listener_address=0.0.0.0_10000");
    check_tags("listener.[__1]_80.http.in.downstream_rq_5xx", "listener.http.downstream_rq_xx",
               "envoy.response_code_class=5,envoy.http_conn_manager_prefix=in,envoy.listener_address=[__1]_80");
    check_tags("listener.admin.downstream_cx_total", "listener.admin.downstream_cx_total", "");
    check_tags("server.uptime", "server.uptime", "");
    check_tags("vhost.vh.vcluster.vc.upstream_rq_total", "vhost.vcluster.upstream_rq_total",
               "envoy.virtual_cluster=vc,envoy.virtual_host=vh");
    check_tags("listener_manager.worker_0.dispatcher.loop_duration_us", "listener_manager.dispatcher.loop_duration_us",
               "envoy.worker_id=worker_0");
    check_tags("http.ingress.rds.route_cfg.config_reload", "http.rds.config_reload",
               "envoy.http_conn_manager_prefix=ingress,envoy.rds_route_config=route_cfg");
    check_tags("cluster.c.grpc.svc.method.success", "cluster.grpc.success",
               "envoy.grpc_bridge_method=method,envoy.grpc_bridge_service=svc,envoy.cluster_name=c");
    check_tags("tcp.db.downstream_cx_total", "tcp.downstream_cx_total", "envoy.tcp_prefix=db");
}

static void test_server(void)
{
    ok(value_of("server.concurrency") == 2, "server.concurrency");
    ok(lg_stats_server_state(0) == LG_SERVER_PRE_INITIALIZING, "starts pre-initializing");
    lg_stats_server_set_state(LG_SERVER_LIVE);
    lg_stats_server_refresh(0);
    ok(value_of("server.state") == 0 && value_of("server.live") == 1, "live");
    ok(lg_stats_server_state(1) == LG_SERVER_DRAINING, "failed health checks drain");
    lg_stats_server_refresh(1);
    ok(value_of("server.state") == 1, "server.state draining");
    /* mallinfo2 reads zero under AddressSanitizer; the resident size never does */
    ok(value_of("server.memory_physical_size") > 0 && value_of("server.memory_allocated") != UINT64_MAX, "memory gauges");
    lg_stats_control_add(lg_stats_cluster_manager, LG_CLUSTER_MANAGER_STAT_cluster_added, 2);
    lg_stats_gauge_set(lg_stats_cluster_manager, LG_CLUSTER_MANAGER_STAT_active_clusters, 4);
    ok(value_of("cluster_manager.cluster_added") == 2 && value_of("cluster_manager.active_clusters") == 4, "cluster_manager stats");
    ok(value_of("listener_manager.workers_started") == 0, "listener_manager stats listed");
}

typedef struct st_writer_t {
    lg_stats_block_t *block;
    size_t row;
} writer_t;

static void *writer_main(void *arg)
{
    writer_t *w = arg;
    for (int i = 0; i != 200000; ++i) {
        LG_STAT_INC(w->block, w->row, 0);
        lg_stats_block_code(w->block, w->row, 200);
    }
    return NULL;
}

/* Workers write their rows while the reader sums them: no lock, no lost update. */
static void test_concurrent_rows(void)
{
    lg_stats_block_t *b = lg_stats_block_new_ex("cluster.busy.", cluster_defs, C__COUNT, &cluster_opts);
    writer_t w[2] = {{b, 0}, {b, 1}};
    pthread_t t[2];
    for (int i = 0; i != 2; ++i)
        pthread_create(&t[i], NULL, writer_main, &w[i]);
    uint64_t prev = 0;
    int monotonic = 1;
    for (int i = 0; i != 50; ++i) {
        uint64_t v = value_of("cluster.busy.upstream_rq_total");
        monotonic &= v >= prev;
        prev = v;
    }
    for (int i = 0; i != 2; ++i)
        pthread_join(t[i], NULL);
    ok(monotonic, "concurrent reads never go backwards");
    ok(value_of("cluster.busy.upstream_rq_total") == 400000 && lg_stats_block_code_value(b, 200) == 400000, "no lost updates");
    lg_stats_block_release(b);
}

/* Rows and code arrays exist only once written: an idle block is one allocation. */
static void test_lazy_rows(void)
{
    lg_stats_block_t *b = lg_stats_block_new_ex("cluster.idle.", cluster_defs, C__COUNT, &cluster_opts);
    ok(b->rows[0] == NULL && b->rows[1] == NULL && b->rows[2] == NULL && b->codes == NULL, "fresh block has no rows");
    lg_stats_snapshot_t snap;
    lg_stats_snapshot(&snap, NULL, NULL);
    lg_stats_snapshot_free(&snap);
    ok(value_of("cluster.idle.upstream_rq_total") == 0 && lg_stats_block_code_value(b, 200) == 0, "unwritten block reads zero");
    ok(b->rows[0] == NULL && b->rows[1] == NULL && b->rows[2] == NULL && b->codes == NULL, "reading allocates nothing");
    LG_STAT_INC(b, 1, C_upstream_rq_total);
    ok(b->rows[0] == NULL && b->rows[1] != NULL && b->rows[2] == NULL, "a write allocates its own row only");
    lg_stats_gauge_set(b, C_upstream_cx_active, 3);
    ok(b->rows[0] == NULL && b->rows[2] != NULL, "a control write allocates the control row");
    lg_stats_block_code(b, 0, 503);
    ok(b->codes != NULL && b->codes[0 * 5 + 4] != NULL && b->codes[1 * 5 + 4] == NULL && b->codes[0 * 5 + 1] == NULL,
       "code counters allocated per row and class on first use");
    ok(value_of("cluster.idle.upstream_rq_total") == 1 && value_of("cluster.idle.upstream_cx_active") == 3 &&
           lg_stats_block_code_value(b, 503) == 1 && lg_stats_block_class_value(b, 5) == 1,
       "lazily allocated rows are summed");
    lg_stats_block_release(b);
}

/* A split block: workers write [0, S_membership_total), the control row the rest; a
 * block made with fewer defs does not list the tail (a static cluster's). */
#define SPLIT_STATS(X)            \
    X(COUNTER, upstream_rq_total) \
    X(GAUGE, upstream_cx_active) X(GAUGE, membership_total) X(COUNTER, update_success) X(COUNTER, update_attempt)
#define SPLIT_ENUM(type, name) S_##name,
enum { SPLIT_STATS(SPLIT_ENUM) S__COUNT };
static const lg_stat_def_t split_defs[] = {SPLIT_STATS(LG_STAT_DEF)};

static void test_split_block(void)
{
    lg_stats_block_opts_t opts = cluster_opts;
    opts.control_from = S_membership_total;
    lg_stats_block_t *eds = lg_stats_block_new_ex("cluster.split.", split_defs, S__COUNT, &opts);
    lg_stats_block_t *whole = lg_stats_block_new_ex("cluster.whole.", split_defs, S__COUNT, &cluster_opts);
    ok(eds->row_words == 8 && whole->row_words == 16, "worker rows hold the worker stats only: %u vs %u", eds->row_words,
       whole->row_words);
    lg_stats_gauge_set(eds, S_membership_total, 0);
    lg_stats_control_add(eds, S_update_attempt, 2);
    LG_STAT_INC(eds, 0, S_upstream_rq_total);
    LG_STAT_INC(eds, 1, S_upstream_cx_active);
    lg_stats_block_code(eds, 1, 200);
    ok(malloc_usable_size(eds->rows[2]) < 64, "the control row holds 3 words and a bitmap: %zu bytes",
       malloc_usable_size(eds->rows[2]));
    lg_stat_sample_t x;
    ok(find_sample("cluster.split.membership_total", &x) && x.used && x.value == 0, "a set gauge is used, even at zero");
    ok(find_sample("cluster.split.upstream_cx_active", &x) && x.used && x.value == 1, "worker gauge");
    ok(value_of("cluster.split.update_attempt") == 2 && value_of("cluster.split.update_success") == 0 &&
           value_of("cluster.split.upstream_rq_total") == 1 && value_of("cluster.split.upstream_rq_2xx") == 1,
       "control and worker stats summed from their rows");
    lg_stats_control_add(eds, S_membership_total, 5);
    lg_stats_control_add(eds, S_membership_total, -2);
    ok(lg_stats_block_value(eds, S_membership_total) == 3 && lg_stats_block_value(eds, S_update_attempt) == 2, "control values");
    lg_stats_reset_counters();
    lg_stats_control_add(eds, S_update_attempt, 1);
    ok(value_of("cluster.split.update_attempt") == 1 && value_of("cluster.split.upstream_rq_total") == 0 &&
           value_of("cluster.split.membership_total") == 3,
       "reset_counters: control counters from their baseline, gauges kept");

    lg_stats_block_t *st = lg_stats_block_new_ex("cluster.split.", split_defs, S_update_attempt, &opts);
    ok(st != eds, "a block with fewer stats is its own");
    lg_stats_block_release(eds);
    ok(find_sample("cluster.split.update_success", &x) && !find_sample("cluster.split.update_attempt", &x),
       "the shorter block does not list the others");

    lg_stats_block_opts_t hopts = opts;
    hopts.hidden_tail = 1;
    lg_stats_block_t *h = lg_stats_block_new_ex("cluster.hidden.", split_defs, S__COUNT, &hopts);
    lg_stats_control_add(h, S_update_attempt, 1);
    ok(find_sample("cluster.hidden.update_success", &x) && !find_sample("cluster.hidden.update_attempt", &x),
       "a hidden tail is not listed, even when written");
    ok(lg_stats_block_new_ex("cluster.hidden.", split_defs, S__COUNT, &hopts) == h && h->_refcnt == 2, "shared as usual");
    lg_stats_block_list_tail(h);
    ok(find_sample("cluster.hidden.update_attempt", &x) && x.value == 1, "listed once asked, with what it counted");
    lg_stats_block_release(h);
    lg_stats_block_release(h);
    lg_stats_gauge_set(st, S_membership_total, 4);
    ok(malloc_usable_size(st->rows[2]) < 32 && value_of("cluster.split.membership_total") == 4, "its control row is shorter");
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        freopen("/dev/null", "w", stderr);
        lg_stats_control_add(st, S_upstream_rq_total, 1);
        _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    ok(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT, "a worker stat written by the control thread aborts");
    lg_stats_block_release(st);
    lg_stats_block_release(whole);
}

int main(void)
{
    lg_stats_init(2);
    ok(lg_stats_nworkers == 2, "workers");
    lg_stats_block_t *b = lg_stats_block_new_ex("cluster.backend.", cluster_defs, C__COUNT, &cluster_opts);
    test_rows_and_sums(b);
    test_usedonly();
    test_codes(b);
    test_histogram(b);
    test_refcount_and_sharing(b);
    test_reset_and_text(b);
    test_tags();
    test_server();
    test_concurrent_rows();
    test_lazy_rows();
    test_split_block();
    lg_stats_block_release(b);
    ok(value_of("cluster.backend.upstream_rq_total") == UINT64_MAX, "last release unlists");
    lg_stats_shutdown();
    return done();
}
