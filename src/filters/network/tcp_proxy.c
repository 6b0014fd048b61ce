/*
 * envoy.filters.network.tcp_proxy: config compile and the byte relay.
 *
 * A connection has two sides, downstream and upstream. Bytes read from one
 * side go to the other without copies: the reader's input buffer is swapped
 * with the writer's (empty) out buffer and written from there, so the socket
 * keeps reading into a fresh buffer while the write is in flight. Sockets are
 * read at most 64 KiB per wake-up (legate/sock.h). Reading a
 * side pauses once what waits for the other side reaches that side's limit
 * (per_connection_buffer_limit_bytes of the listener for downstream, of the
 * cluster for upstream), and resumes when the write completes.
 *
 * Closing follows Envoy's tcp_proxy, which enables half-close on both
 * connections: a FIN read on one side is passed on as a FIN (shutdown) to the
 * other once what was read before it is written; the proxy is done when both
 * directions have ended. A side that fails (reset, read or write error) is
 * closed at once, and the other side is closed after its pending bytes are
 * written (Envoy's FlushWrite; for the upstream this is upstream_flush_*).
 */
#include <sys/socket.h>
#include "legate/cluster.h"
#include "legate/protobuf.h"
#include "legate/server.h"
#include "legate/sock.h"
#include "legate/stats.h"
#include "legate/tcp_proxy.h"
#include "legate/timer.h"
#include "envoy/data/accesslog/v3/accesslog.pb-c.h"

/* The deprecated access_log_flush_interval and flush_access_log_on_connected
 * are honoured, as Envoy does. */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

typedef Envoy__Extensions__Filters__Network__TcpProxy__V3__TcpProxy tcp_proxy_proto_t;
typedef Envoy__Extensions__Filters__Network__TcpProxy__V3__TcpProxy__WeightedCluster weighted_proto_t;

static const lg_stat_def_t stat_defs[] = {LG_TCP_PROXY_STATS(LG_STAT_DEF)};

/* ---- config ---- */

static int compile_weighted(lg_tcp_proxy_config_t *c, const weighted_proto_t *w, lg_error_t *err)
{
    if (w->n_clusters == 0)
        return lg_error(err, "weighted_clusters.clusters: value must contain at least 1 item(s)");
    c->weighted = lg_calloc(w->n_clusters, sizeof(*c->weighted));
    for (size_t i = 0; i != w->n_clusters; ++i) {
        const Envoy__Extensions__Filters__Network__TcpProxy__V3__TcpProxy__WeightedCluster__ClusterWeight *cw = w->clusters[i];
        if (cw->name == NULL || cw->name[0] == '\0')
            return lg_error(err, "weighted_clusters.clusters[%zu].name: value length must be at least 1 characters", i);
        if (cw->weight < 1)
            return lg_error(err, "weighted_clusters.clusters[%zu].weight: value must be greater than or equal to 1", i);
        if (cw->metadata_match != NULL)
            LG_WARN(config, "tcp_proxy weighted_clusters.clusters[%zu].metadata_match is ignored (no subset load balancing)", i);
        c->weighted[c->n_weighted++] = (lg_tcp_proxy_weighted_t){lg_strdup(cw->name), cw->weight};
        c->total_weight += cw->weight;
    }
    return 0;
}

static int check_duration_min_1ms(const Google__Protobuf__Duration *d, const char *field, lg_error_t *err)
{
    if (d != NULL && (d->seconds < 0 || (d->seconds == 0 && d->nanos < 1000000)))
        return lg_error(err, "%s: value must be greater than or equal to 0.001s", field);
    return 0;
}

/* Fields whose absence of support would change behaviour are errors; the
 * others are accepted with a warning. */
static int check_unsupported(const tcp_proxy_proto_t *m, lg_error_t *err)
{
    if (m->tunneling_config != NULL)
        return lg_error(err, "tunneling_config: tunneling TCP over HTTP is not supported");
    if (m->on_demand != NULL)
        return lg_error(err, "on_demand: on-demand cluster discovery is not supported");
    if (m->metadata_match != NULL)
        LG_WARN(config, "tcp_proxy metadata_match is ignored (no subset load balancing)");
    if (m->n_hash_policy != 0)
        LG_WARN(config, "tcp_proxy hash_policy is ignored (no hash-based load balancer)");
    return 0;
}

static int compile_access_log_options(lg_tcp_proxy_config_t *c, const tcp_proxy_proto_t *m, lg_error_t *err)
{
    const Envoy__Extensions__Filters__Network__TcpProxy__V3__TcpProxy__TcpAccessLogOptions *o = m->access_log_options;
    if (o != NULL) {
        if (m->flush_access_log_on_connected)
            return lg_error(err, "Only one of flush_access_log_on_connected or access_log_options can be specified.");
        if (m->access_log_flush_interval != NULL)
            return lg_error(err, "Only one of access_log_flush_interval or access_log_options can be specified.");
        if (check_duration_min_1ms(o->access_log_flush_interval, "access_log_options.access_log_flush_interval", err) != 0)
            return -1;
        c->flush_access_log_on_connected = o->flush_access_log_on_connected;
        c->access_log_flush_interval_ms = lg_duration_ms(o->access_log_flush_interval, 0);
        return 0;
    }
    if (check_duration_min_1ms(m->access_log_flush_interval, "access_log_flush_interval", err) != 0)
        return -1;
    c->flush_access_log_on_connected = m->flush_access_log_on_connected;
    c->access_log_flush_interval_ms = lg_duration_ms(m->access_log_flush_interval, 0);
    return 0;
}

lg_tcp_proxy_config_t *lg_tcp_proxy_config_compile(const tcp_proxy_proto_t *m, lg_error_t *err)
{
    lg_tcp_proxy_config_t *c = lg_calloc(1, sizeof(*c));
    if (m->stat_prefix == NULL || m->stat_prefix[0] == '\0') {
        lg_error(err, "stat_prefix: value length must be at least 1 characters");
        goto fail;
    }
    c->stat_prefix = lg_strdup(m->stat_prefix);
    switch (m->cluster_specifier_case) {
    case ENVOY__EXTENSIONS__FILTERS__NETWORK__TCP_PROXY__V3__TCP_PROXY__CLUSTER_SPECIFIER_CLUSTER:
        c->cluster = lg_strdup(m->cluster);
        break;
    case ENVOY__EXTENSIONS__FILTERS__NETWORK__TCP_PROXY__V3__TCP_PROXY__CLUSTER_SPECIFIER_WEIGHTED_CLUSTERS:
        if (compile_weighted(c, m->weighted_clusters, err) != 0)
            goto fail;
        break;
    default:
        lg_error(err, "cluster_specifier: value is required (cluster or weighted_clusters)");
        goto fail;
    }
    if (m->max_connect_attempts != NULL && m->max_connect_attempts->value < 1) {
        lg_error(err, "max_connect_attempts: value must be greater than or equal to 1");
        goto fail;
    }
    c->max_connect_attempts = LG_WRAPPED(m->max_connect_attempts, 1);
    c->idle_timeout_ms = lg_duration_ms(m->idle_timeout, 3600 * 1000);
    if (check_duration_min_1ms(m->max_downstream_connection_duration, "max_downstream_connection_duration", err) != 0)
        goto fail;
    c->max_connection_duration_ms = lg_duration_ms(m->max_downstream_connection_duration, 0);
    if (check_unsupported(m, err) != 0 || compile_access_log_options(c, m, err) != 0)
        goto fail;
    if (lg_access_logs_compile(m->access_log, m->n_access_log, &c->access_logs, err) != 0)
        goto fail;
    char prefix[512];
    snprintf(prefix, sizeof(prefix), "tcp.%s.", c->stat_prefix);
    c->stats = lg_stats_block_new(prefix, stat_defs, LG_ARRAY_SIZE(stat_defs));
    return c;
fail:
    lg_tcp_proxy_config_free(c);
    return NULL;
}

void lg_tcp_proxy_config_free(lg_tcp_proxy_config_t *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i != c->n_weighted; ++i)
        free(c->weighted[i].name);
    free(c->weighted);
    free(c->cluster);
    free(c->stat_prefix);
    lg_access_logs_dispose(&c->access_logs);
    if (c->stats != NULL)
        lg_stats_block_release(c->stats);
    free(c);
}

/* Envoy's WeightedClusterUtil::pickCluster. */
const char *lg_tcp_proxy_pick_cluster(const lg_tcp_proxy_config_t *c, uint64_t random)
{
    if (c->cluster != NULL)
        return c->cluster;
    uint64_t selected = random % c->total_weight, begin = 0;
    for (size_t i = 0; i != c->n_weighted; ++i) {
        begin += c->weighted[i].weight;
        if (selected < begin)
            return c->weighted[i].name;
    }
    return c->weighted[c->n_weighted - 1].name;
}

/* ---- runtime ---- */

enum { DOWN, UP };

typedef struct st_side_t {
    h2o_socket_t *sock; /* NULL before the upstream connects and once closed */
    h2o_buffer_t *out;  /* bytes read from the other side, being written to this one */
    uint32_t limit;     /* bytes held for this side before reading the other side pauses */
    size_t input_seen;  /* bytes of sock->input already counted as read */
    unsigned writing : 1;
    unsigned read_eof : 1;          /* this side sent its FIN */
    unsigned write_shut : 1;        /* our FIN went to this side */
    unsigned read_paused : 1;       /* the other side is behind */
    unsigned close_after_flush : 1; /* the other side failed: close once `out` is written */
} side_t;

struct st_lg_tcp_proxy_conn_t {
    lg_worker_t *worker;
    const lg_tcp_proxy_config_t *config;
    lg_snapshot_t *snapshot; /* held: keeps the config alive */
    side_t sides[2];
    lg_worker_cluster_t *cluster; /* of the current (or last) attempt, referenced */
    lg_upstream_tcp_t *upstream;  /* connecting or connected */
    lg_host_t **tried;            /* referenced hosts whose connect failed: later attempts avoid them */
    size_t n_tried;
    uint32_t connect_attempts;
    lg_timer_t idle_timer, duration_timer, log_timer;
    lg_stream_info_t info;
    char *server_name;
    char failure_reason[128];
    uint64_t rx_buffered, tx_buffered; /* this connection's part of the *_bytes_buffered gauges */
    uint64_t down_rx_total;            /* counted as reads arrive: libh2o 2.2.5 leaves bytes_read at 0 on plain sockets */
    size_t down_tx_counted;
    h2o_linklist_t live_link;
    unsigned flushing_upstream : 1; /* counted in upstream_flush_active */
};

/* The connections of this thread's worker (a connection never changes worker). */
static __thread h2o_linklist_t live_conns;
static __thread size_t n_live_conns;

size_t lg_tcp_proxy_active_connections(void)
{
    return n_live_conns;
}

void lg_tcp_proxy_close_all(void)
{
    while (n_live_conns != 0)
        lg_tcp_proxy_conn_close(H2O_STRUCT_FROM_MEMBER(lg_tcp_proxy_conn_t, live_link, live_conns.next));
}

#define STAT_ADD(c, name, n) LG_STAT_ADD((c)->config->stats, (c)->worker->index, LG_TCP_PROXY_STAT_##name, (n))
#define STAT_INC(c, name) STAT_ADD(c, name, 1)
#define STAT_DEC(c, name) LG_STAT_DEC((c)->config->stats, (c)->worker->index, LG_TCP_PROXY_STAT_##name)

static void on_read(h2o_socket_t *sock, const char *err);
static void on_written(h2o_socket_t *sock, const char *err);
static void on_idle_timeout(lg_timer_t *t);

static int side_of(lg_tcp_proxy_conn_t *c, h2o_socket_t *sock)
{
    return sock == c->sides[UP].sock ? UP : DOWN;
}

static void count_down_bytes(lg_tcp_proxy_conn_t *c)
{
    h2o_socket_t *sock = c->sides[DOWN].sock;
    if (sock == NULL)
        return;
    STAT_ADD(c, downstream_cx_tx_bytes_total, sock->bytes_written - c->down_tx_counted);
    c->down_tx_counted = sock->bytes_written;
}

/* Counts what the last read of side i added to its input. */
static void count_read(lg_tcp_proxy_conn_t *c, int i)
{
    side_t *s = &c->sides[i];
    size_t n = s->sock->input->size - s->input_seen;
    s->input_seen = s->sock->input->size;
    if (i == DOWN) {
        STAT_ADD(c, downstream_cx_rx_bytes_total, n);
        c->down_rx_total += n;
    } else {
        lg_upstream_tcp_count_bytes(c->upstream, n);
    }
}

static void gauge_set(lg_tcp_proxy_conn_t *c, size_t idx, uint64_t *held, uint64_t value)
{
    if (value > *held)
        LG_STAT_ADD(c->config->stats, c->worker->index, idx, value - *held);
    else if (value < *held)
        LG_STAT_SUB(c->config->stats, c->worker->index, idx, *held - value);
    *held = value;
}

/* rx: read from downstream, not handed to the upstream yet; tx: on its way to downstream. */
static void update_gauges(lg_tcp_proxy_conn_t *c)
{
    h2o_socket_t *down = c->sides[DOWN].sock, *up = c->sides[UP].sock;
    uint64_t rx = down != NULL ? down->input->size : 0;
    uint64_t tx = (c->sides[DOWN].writing ? c->sides[DOWN].out->size : 0) + (up != NULL ? up->input->size : 0);
    gauge_set(c, LG_TCP_PROXY_STAT_downstream_cx_rx_bytes_buffered, &c->rx_buffered, rx);
    gauge_set(c, LG_TCP_PROXY_STAT_downstream_cx_tx_bytes_buffered, &c->tx_buffered, tx);
}

/* `log_type`: Envoy's AccessLogType of the entry (TcpUpstreamConnected,
 * TcpPeriodic, TcpConnectionEnd). */
static void emit_access_log(lg_tcp_proxy_conn_t *c, int log_type)
{
    if (c->config->access_logs.n == 0)
        return;
    count_down_bytes(c);
    c->info.bytes_received = c->down_rx_total;
    c->info.bytes_sent = c->down_tx_counted;
    lg_access_logs_emit_type(&c->config->access_logs, &c->info, log_type);
}

/* Envoy arms the idle timer once the upstream is connected and re-arms it on
 * every read and write of either side. */
static void touch_idle(lg_tcp_proxy_conn_t *c)
{
    if (c->config->idle_timeout_ms != 0 && c->sides[UP].sock != NULL)
        lg_timer_start(&c->worker->loop, &c->idle_timer, c->config->idle_timeout_ms, on_idle_timeout);
}

/* ---- flow control ---- */

static void pause_reading(lg_tcp_proxy_conn_t *c, int i)
{
    side_t *s = &c->sides[i];
    if (s->read_paused)
        return;
    h2o_socket_read_stop(s->sock);
    s->read_paused = 1;
    if (i == DOWN)
        STAT_INC(c, downstream_flow_control_paused_reading_total);
}

static void resume_reading(lg_tcp_proxy_conn_t *c, int i)
{
    side_t *s = &c->sides[i];
    if (!s->read_paused)
        return;
    s->read_paused = 0;
    if (s->read_eof || s->sock == NULL)
        return;
    h2o_socket_read_start(s->sock, on_read);
    if (i == DOWN)
        STAT_INC(c, downstream_flow_control_resumed_reading_total);
}

/* Writes what the other side has read to side `to` (nothing in flight to it):
 * the reader's input becomes the writer's buffer, and the reader goes on
 * reading into the emptied one. */
static void start_write(lg_tcp_proxy_conn_t *c, int to)
{
    side_t *s = &c->sides[to];
    h2o_socket_t *from = c->sides[!to].sock;
    h2o_buffer_t *t = from->input;
    from->input = s->out;
    s->out = t;
    c->sides[!to].input_seen = from->input->size;
    s->writing = 1;
    h2o_iovec_t buf = h2o_iovec_init(s->out->bytes, s->out->size);
    h2o_socket_write(s->sock, &buf, 1, on_written);
    resume_reading(c, !to);
}

/* ---- closing ---- */

/* Closes one side now; an unfinished write to it is dropped. `local`: the
 * proxy closes it (else it failed or was reset). */
static void close_side(lg_tcp_proxy_conn_t *c, int i, int local)
{
    side_t *s = &c->sides[i];
    if (i == UP) {
        if (c->upstream != NULL)
            lg_upstream_tcp_close(c->upstream, local);
        c->upstream = NULL;
        if (c->flushing_upstream)
            STAT_DEC(c, upstream_flush_active);
        c->flushing_upstream = 0;
    } else if (s->sock != NULL) {
        count_down_bytes(c);
        h2o_socket_close(s->sock);
    }
    s->sock = NULL;
    s->writing = 0;
}

/* Closes whatever is still open, logs and frees the connection. */
static void finish(lg_tcp_proxy_conn_t *c)
{
    count_down_bytes(c);
    close_side(c, DOWN, 1);
    close_side(c, UP, 1);
    lg_timer_stop(&c->idle_timer);
    lg_timer_stop(&c->duration_timer);
    lg_timer_stop(&c->log_timer);
    c->info.last_downstream_tx_us = lg_now_us();
    emit_access_log(c, ENVOY__DATA__ACCESSLOG__V3__ACCESS_LOG_TYPE__TcpConnectionEnd);
    update_gauges(c);
    for (size_t i = 0; i != c->n_tried; ++i)
        lg_host_release(c->tried[i]);
    free(c->tried);
    if (c->cluster != NULL)
        lg_worker_cluster_release(c->cluster);
    h2o_buffer_dispose(&c->sides[DOWN].out);
    h2o_buffer_dispose(&c->sides[UP].out);
    h2o_linklist_unlink(&c->live_link);
    --n_live_conns;
    lg_snapshot_release(c->worker, c->snapshot);
    free(c->server_name);
    free(c);
}

void lg_tcp_proxy_conn_close(lg_tcp_proxy_conn_t *c)
{
    finish(c);
}

/* Side i failed (reset, read or write error): Envoy's RemoteClose on it. The
 * other side is closed once the bytes already on their way to it are
 * written. A downstream closed that way stops being read; an upstream (Envoy's
 * upstream flush, its Drainer) is still read, and closed if it sends more. */
static void side_failed(lg_tcp_proxy_conn_t *c, int i)
{
    side_t *o = &c->sides[!i];
    h2o_socket_t *failed = c->sides[i].sock;
    LG_DEBUG(filter, "[C%llu] tcp_proxy: %s connection closed", (unsigned long long)c->info.connection_id,
             i == DOWN ? "downstream" : "upstream");
    if (o->sock != NULL && !o->writing && failed != NULL && failed->input->size != 0) {
        c->sides[i].read_paused = 0; /* it is closed next, not resumed */
        start_write(c, !i);
    }
    close_side(c, i, 0);
    if (o->sock == NULL || !o->writing) {
        finish(c);
        return;
    }
    o->close_after_flush = 1;
    if (i == UP) {
        h2o_socket_read_stop(o->sock);
    } else {
        STAT_INC(c, upstream_flush_total);
        STAT_INC(c, upstream_flush_active);
        c->flushing_upstream = 1;
        h2o_buffer_consume(&o->sock->input, o->sock->input->size); /* was on its way to the closed downstream */
        o->input_seen = 0;
        resume_reading(c, !i);
    }
    update_gauges(c);
}

/* Passes a FIN on to side `to` (all that preceded it is written). The proxy
 * is done once both directions have ended. */
static void shut_write(lg_tcp_proxy_conn_t *c, int to)
{
    side_t *s = &c->sides[to];
    if (s->write_shut)
        return;
    if (s->sock->ssl != NULL) {
        /* a terminated TLS connection cannot half-close: close it, with its close_notify */
        finish(c);
        return;
    }
    shutdown(h2o_socket_get_fd(s->sock), SHUT_WR);
    s->write_shut = 1;
    if (c->sides[!to].write_shut)
        finish(c);
}

/* ---- relaying ---- */

static void on_eof(lg_tcp_proxy_conn_t *c, int i)
{
    side_t *s = &c->sides[i], *o = &c->sides[!i];
    s->read_eof = 1;
    h2o_socket_read_stop(s->sock);
    if (o->sock != NULL && !o->writing && s->sock->input->size == 0)
        shut_write(c, !i);
}

static void on_read(h2o_socket_t *sock, const char *err)
{
    lg_tcp_proxy_conn_t *c = sock->data;
    err = lg_sock_read(sock, err, LG_SOCK_READ_MAX);
    int i = side_of(c, sock);
    side_t *o = &c->sides[!i];
    if (err != NULL) {
        if (err == h2o_socket_error_closed)
            on_eof(c, i);
        else
            side_failed(c, i);
        return;
    }
    count_read(c, i);
    if (c->flushing_upstream) {
        /* bytes for a downstream that is gone: close, as the kernel would */
        finish(c);
        return;
    }
    if (i == UP && c->info.first_upstream_rx_us == 0)
        c->info.first_upstream_rx_us = lg_now_us();
    touch_idle(c);
    if (sock->input->size == 0) /* a partial TLS record */
        return;
    if (o->sock != NULL && !o->writing)
        start_write(c, !i);
    else if (sock->input->size >= o->limit)
        pause_reading(c, i);
    update_gauges(c);
}

static void on_written(h2o_socket_t *sock, const char *err)
{
    lg_tcp_proxy_conn_t *c = sock->data;
    int to = side_of(c, sock);
    side_t *s = &c->sides[to], *from = &c->sides[!to];
    s->writing = 0;
    h2o_buffer_consume(&s->out, s->out->size);
    if (to == UP)
        lg_upstream_tcp_count_bytes(c->upstream, 0);
    else
        count_down_bytes(c);
    if (err != NULL) {
        side_failed(c, to);
        return;
    }
    touch_idle(c);
    if (from->sock != NULL && from->sock->input->size != 0) {
        start_write(c, to);
    } else if (s->close_after_flush) {
        finish(c);
        return;
    } else if (from->read_eof) {
        shut_write(c, to); /* may finish c */
        return;
    }
    update_gauges(c);
}

static void on_idle_timeout(lg_timer_t *t)
{
    lg_tcp_proxy_conn_t *c = H2O_STRUCT_FROM_MEMBER(lg_tcp_proxy_conn_t, idle_timer, t);
    LG_DEBUG(filter, "[C%llu] tcp_proxy: session timed out", (unsigned long long)c->info.connection_id);
    STAT_INC(c, idle_timeout);
    finish(c);
}

static void on_duration_timeout(lg_timer_t *t)
{
    lg_tcp_proxy_conn_t *c = H2O_STRUCT_FROM_MEMBER(lg_tcp_proxy_conn_t, duration_timer, t);
    STAT_INC(c, max_downstream_connection_duration);
    finish(c);
}

static void on_log_timer(lg_timer_t *t)
{
    lg_tcp_proxy_conn_t *c = H2O_STRUCT_FROM_MEMBER(lg_tcp_proxy_conn_t, log_timer, t);
    emit_access_log(c, ENVOY__DATA__ACCESSLOG__V3__ACCESS_LOG_TYPE__TcpPeriodic);
    lg_timer_start(&c->worker->loop, &c->log_timer, c->config->access_log_flush_interval_ms, on_log_timer);
}

/* ---- connecting ---- */

static void set_upstream_host(lg_tcp_proxy_conn_t *c, const lg_host_t *h)
{
    memset(&c->info.upstream_remote, 0, sizeof(c->info.upstream_remote));
    if (h->config->salen <= sizeof(c->info.upstream_remote))
        memcpy(&c->info.upstream_remote, h->config->sa, h->config->salen);
}

static void on_upstream_connect(lg_upstream_tcp_t *u, void *data)
{
    lg_tcp_proxy_conn_t *c = data;
    h2o_socket_t *sock = lg_upstream_tcp_socket(u);
    side_t *up = &c->sides[UP], *down = &c->sides[DOWN];
    socklen_t len = sizeof(c->info.upstream_local);
    sock->data = c;
    up->sock = sock;
    up->limit = lg_worker_cluster_config(c->cluster)->buffer_limit;
    if (getsockname(h2o_socket_get_fd(sock), (struct sockaddr *)&c->info.upstream_local, &len) != 0)
        c->info.upstream_local.ss_family = 0;
    set_upstream_host(c, lg_upstream_tcp_host(u));
    LG_DEBUG(filter, "[C%llu] tcp_proxy: connected to %s", (unsigned long long)c->info.connection_id,
             lg_host_address(lg_upstream_tcp_host(u)));
    touch_idle(c);
    if (c->config->flush_access_log_on_connected)
        emit_access_log(c, ENVOY__DATA__ACCESSLOG__V3__ACCESS_LOG_TYPE__TcpUpstreamConnected);
    lg_sock_read_bounded(sock);
    h2o_socket_read_start(sock, on_read);
    if (down->sock->input->size != 0) {
        start_write(c, UP);
    } else if (down->read_eof) {
        shut_write(c, UP);
        return;
    }
    update_gauges(c);
}

static void connect_upstream(lg_tcp_proxy_conn_t *c);

static void on_upstream_failure(void *data, lg_pool_failure_t reason, lg_host_t *host, const char *detail)
{
    lg_tcp_proxy_conn_t *c = data;
    c->upstream = NULL;
    c->info.response_flags |= reason == LG_POOL_OVERFLOW ? LG_RF(UPSTREAM_OVERFLOW) : LG_RF(UPSTREAM_CONNECTION_FAILURE);
    snprintf(c->failure_reason, sizeof(c->failure_reason), "%s", detail);
    c->info.upstream_transport_failure_reason = h2o_iovec_init(c->failure_reason, strlen(c->failure_reason));
    set_upstream_host(c, host);
    lg_host_addref(host);
    c->tried = lg_realloc(c->tried, (c->n_tried + 1) * sizeof(c->tried[0]));
    c->tried[c->n_tried++] = host;
    connect_upstream(c);
}

static const lg_upstream_tcp_cbs_t upstream_cbs = {on_upstream_connect, on_upstream_failure};

static void set_cluster(lg_tcp_proxy_conn_t *c, lg_worker_cluster_t *wc)
{
    lg_worker_cluster_addref(wc);
    if (c->cluster != NULL)
        lg_worker_cluster_release(c->cluster);
    c->cluster = wc;
    const char *name = lg_worker_cluster_name(wc);
    c->info.upstream_cluster = h2o_iovec_init(name, strlen(name));
}

/* Envoy's initializeUpstreamConnection: each attempt picks the cluster again;
 * a failure to start one closes the downstream without flushing. */
static void connect_upstream(lg_tcp_proxy_conn_t *c)
{
    const char *name = lg_tcp_proxy_pick_cluster(c->config, lg_random());
    lg_worker_clusters_t *view = lg_worker_cluster_view(c->worker);
    lg_worker_cluster_t *wc = view != NULL ? lg_worker_clusters_find(view, name, strlen(name)) : NULL;
    if (wc == NULL) {
        LG_DEBUG(filter, "[C%llu] tcp_proxy: no cluster '%s'", (unsigned long long)c->info.connection_id, name);
        STAT_INC(c, downstream_cx_no_route);
        c->info.response_flags |= LG_RF(NO_ROUTE_FOUND);
        finish(c);
        return;
    }
    set_cluster(c, wc);
    if (c->connect_attempts >= c->config->max_connect_attempts) {
        lg_cluster_stat_inc(wc, LG_CLUSTER_STAT_upstream_cx_connect_attempts_exceeded);
        c->info.response_flags |= LG_RF(UPSTREAM_RETRY_LIMIT_EXCEEDED);
        finish(c);
        return;
    }
    lg_lb_context_t ctx = {(const lg_host_t *const *)c->tried, c->n_tried, (uint32_t)c->n_tried + 3, 0};
    lg_pool_failure_t failure;
    if ((c->upstream = lg_upstream_tcp_connect(wc, &ctx, &upstream_cbs, c, &failure)) == NULL) {
        c->info.response_flags |= failure == LG_POOL_OVERFLOW ? LG_RF(UPSTREAM_OVERFLOW) : LG_RF(NO_HEALTHY_UPSTREAM);
        finish(c);
        return;
    }
    ++c->connect_attempts;
}

static void init_info(lg_tcp_proxy_conn_t *c, const struct sockaddr_storage *local, const struct sockaddr_storage *remote,
                      const char *server_name)
{
    lg_stream_info_t *info = &c->info;
    info->connection_id = lg_server_next_connection_id();
    info->start_wall_us = lg_wall_us();
    info->start_us = lg_now_us();
    info->downstream_local = *local;
    info->downstream_remote = *remote;
    info->downstream_direct_remote = *remote;
    if (server_name != NULL) {
        c->server_name = lg_strdup(server_name);
        info->requested_server_name = h2o_iovec_init(c->server_name, strlen(c->server_name));
    }
}

void lg_tcp_proxy_conn_new(lg_worker_t *w, const lg_listener_config_t *l, const lg_tcp_proxy_config_t *cfg, lg_snapshot_t *snap,
                           h2o_socket_t *sock, const struct sockaddr_storage *local, const struct sockaddr_storage *remote,
                           const char *server_name)
{
    lg_tcp_proxy_conn_t *c = lg_calloc(1, sizeof(*c));
    c->worker = w;
    c->config = cfg;
    c->snapshot = snap;
    lg_snapshot_hold(w, snap);
    init_info(c, local, remote, server_name);
    for (int i = 0; i != 2; ++i) {
        h2o_buffer_init(&c->sides[i].out, &h2o_socket_buffer_prototype);
        c->sides[i].limit = l->buffer_limit;
    }
    c->sides[DOWN].sock = sock;
    sock->data = c;
    if (live_conns.next == NULL)
        h2o_linklist_init_anchor(&live_conns);
    h2o_linklist_insert(&live_conns, &c->live_link);
    ++n_live_conns;
    count_read(c, DOWN); /* what listener filters read already (a ClientHello) */
    STAT_INC(c, downstream_cx_total);
    LG_DEBUG(filter, "[C%llu] new tcp proxy session", (unsigned long long)c->info.connection_id);
    if (cfg->max_connection_duration_ms != 0)
        lg_timer_start(&w->loop, &c->duration_timer, cfg->max_connection_duration_ms, on_duration_timeout);
    if (cfg->access_log_flush_interval_ms != 0)
        lg_timer_start(&w->loop, &c->log_timer, cfg->access_log_flush_interval_ms, on_log_timer);
    /* downstream bytes are read (up to the limit) while the upstream connects, so that a reset is noticed */
    lg_sock_read_bounded(sock);
    h2o_socket_read_start(sock, on_read);
    connect_upstream(c);
}

/* ---- drains (src/core/server.c) ---- */

size_t lg_tcp_proxy_on_config(const lg_tcp_proxy_config_t *cfg, int close)
{
    size_t n = 0;
    if (n_live_conns == 0)
        return 0;
    for (h2o_linklist_t *l = live_conns.next, *next; l != &live_conns; l = next) {
        next = l->next;
        lg_tcp_proxy_conn_t *c = H2O_STRUCT_FROM_MEMBER(lg_tcp_proxy_conn_t, live_link, l);
        if (c->config == cfg) {
            ++n;
            if (close)
                lg_tcp_proxy_conn_close(c);
        }
    }
    return n;
}
