/*
 * The HTTP connection manager at run time: one lg_hcm_conn_t per downstream
 * connection, one lg_hcm_stream_t per request. It turns codec events into
 * the filter chain's decode direction, runs the encode direction back to the
 * codec, owns the stream's timers and local replies, and mutates request
 * headers as Envoy's ConnectionManagerUtility does (x-forwarded-for,
 * x-forwarded-proto, x-request-id, path normalization). It also decides
 * which upgrades and CONNECTs may become tunnels (upgrade_configs), and
 * answers gRPC requests with trailers-only local replies.
 */
#include <assert.h>
#include <arpa/inet.h>
#include <malloc.h>
#include <sys/random.h>
#include <h2o/string_.h>
#include <h2o/time_.h>
#include <h2o/url.h>
#include "legate/address.h"
#include "legate/h1_server.h"
#include "legate/h2.h"
#include "legate/hcm.h"
#include "legate/http.h"
#include "legate/listener_runtime.h"
#include "legate/overload.h"
#include "legate/route.h"
#include "legate/runtime.h"
#include "legate/server.h"
#include "legate/stats.h"
#include "legate/timer.h"
#include "legate/tls.h"

#define STAT_INC(c, name) LG_STAT_INC((c)->config->stats, (c)->worker->index, LG_HCM_STAT_##name)
#define STAT_DEC(c, name) LG_STAT_DEC((c)->config->stats, (c)->worker->index, LG_HCM_STAT_##name)
#define STAT_ADD(c, name, n) LG_STAT_ADD((c)->config->stats, (c)->worker->index, LG_HCM_STAT_##name, n)

static const lg_stream_cbs_t downstream_cbs;
static const lg_server_conn_cbs_t conn_cbs;
static void stream_destroy(lg_hcm_stream_t *s);
static void decode_headers_from(lg_hcm_stream_t *s, size_t index);

static __thread uint64_t rng_state[2];

static uint64_t rng_next(void)
{
    if (rng_state[0] == 0 && rng_state[1] == 0) {
        if (getrandom(rng_state, sizeof(rng_state), 0) != sizeof(rng_state) || (rng_state[0] | rng_state[1]) == 0)
            rng_state[0] = lg_now_us() | 1;
    }
    uint64_t s1 = rng_state[0];
    const uint64_t s0 = rng_state[1];
    rng_state[0] = s0;
    s1 ^= s1 << 23;
    rng_state[1] = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
    return rng_state[1] + s0;
}

uint64_t lg_random(void)
{
    return rng_next();
}

/* x-request-id: a UUID v4 as Envoy's uuid extension generates. */
static h2o_iovec_t uuid4(h2o_mem_pool_t *pool)
{
    static const char hex[] = "0123456789abcdef";
    uint8_t b[16];
    uint64_t r0 = rng_next(), r1 = rng_next();
    memcpy(b, &r0, 8);
    memcpy(b + 8, &r1, 8);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    char *p = h2o_mem_alloc_pool(pool, 36);
    for (size_t i = 0, o = 0; i != 16; ++i) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            p[o++] = '-';
        p[o++] = hex[b[i] >> 4];
        p[o++] = hex[b[i] & 15];
    }
    return h2o_iovec_init(p, 36);
}

/* The Date header, formatted once a second per thread. */
static h2o_iovec_t date_header(void)
{
    static __thread char buf[H2O_TIMESTR_RFC1123_LEN + 1];
    static __thread time_t last;
    time_t now = time(NULL);
    if (now != last) {
        struct tm gmt;
        gmtime_r(&now, &gmt);
        h2o_time2str_rfc1123(buf, &gmt);
        last = now;
    }
    return h2o_iovec_init(buf, H2O_TIMESTR_RFC1123_LEN);
}

/* ---- connections ---- */

/* The start of an HTTP/2 connection's tail (the tail is raw memory: no aliasing of its words). */
static lg_hcm_h2_part_t *h2_part(lg_hcm_conn_t *c)
{
    return (lg_hcm_h2_part_t *)(void *)c->tail;
}

/* HTTP/2 only (HTTP/1.1: the codec's timer runs it) */
static lg_timer_t *conn_idle_timer(lg_hcm_conn_t *c)
{
    return &h2_part(c)->idle_timer;
}

static lg_server_conn_t *conn_codec(lg_hcm_conn_t *c)
{
    if (c->with_codec)
        return (lg_server_conn_t *)((char *)c - lg_h1_server_ctx_offset);
    return h2_part(c)->codec;
}

lg_server_conn_t *lg_hcm_conn_codec(lg_hcm_conn_t *c)
{
    return conn_codec(c);
}

void lg_hcm_conn_close(lg_hcm_conn_t *c)
{
    lg_server_conn_t *codec = conn_codec(c);
    codec->ops->close(codec);
}

static void idle_timeout(lg_hcm_conn_t *c)
{
    lg_server_conn_t *codec = conn_codec(c);
    STAT_INC(c, downstream_cx_idle_timeout);
    codec->ops->close(codec);
}

static void h2_idle_timeout(lg_timer_t *t)
{
    lg_hcm_conn_t *c = (lg_hcm_conn_t *)((char *)t - offsetof(lg_hcm_conn_t, tail));
    if (!h2_part(c)->premature_close) {
        idle_timeout(c);
        return;
    }
    STAT_INC(c, downstream_rq_too_many_premature_resets);
    LG_DEBUG(http, "closing the connection: too_many_premature_resets");
    lg_hcm_conn_close(c);
}

static void h1_idle_timeout(lg_server_conn_t *codec)
{
    idle_timeout(codec->ctx);
}

/* HTTP/2; HTTP/1.1 codecs run the idle timeout themselves (lg_h1_server_settings_t). */
static void conn_arm_idle(lg_hcm_conn_t *c)
{
    if (c->with_codec || c->n_streams != 0 || c->config->idle_timeout_ms == 0 || c->closed || h2_part(c)->premature_close)
        return;
    lg_timer_start(&c->worker->loop, conn_idle_timer(c), c->config->idle_timeout_ms, h2_idle_timeout);
}

static void conn_stop_idle(lg_hcm_conn_t *c)
{
    if (!c->with_codec && !h2_part(c)->premature_close)
        lg_timer_stop(conn_idle_timer(c));
}

/* Envoy's protection against HTTP/2 rapid resets (CVE-2023-44487,
 * maybeDrainDueToPrematureResets): a stream the client resets within
 * overload.premature_reset_min_stream_lifetime_seconds (1) is premature; once
 * they are half of overload.premature_reset_total_stream_count (500), or half
 * of the closed streams past that many, the connection is closed at once
 * (downstream_rq_too_many_premature_resets). Closing waits for the end of the
 * codec's callback: the idle timer fires with 0 ms. HTTP/1.1 closes on a reset
 * anyway. */
static void count_stream_close(lg_hcm_conn_t *c, const lg_hcm_stream_t *s, int remote_reset)
{
    if (c->with_codec || c->closed)
        return;
    lg_hcm_h2_part_t *p = h2_part(c);
    ++p->closed_streams;
    if ((!remote_reset && p->premature_resets == 0) || p->premature_close)
        return; /* the usual case: no reset on this connection, no runtime lookup */
    const lg_runtime_t *rt = lg_runtime_current();
    if (remote_reset && lg_now_us() - s->info.start_us <
                            lg_runtime_get_integer(rt, "overload.premature_reset_min_stream_lifetime_seconds", 1) * 1000000)
        ++p->premature_resets;
    if (p->premature_resets == 0)
        return;
    uint64_t limit = lg_runtime_get_integer(rt, "overload.premature_reset_total_stream_count", 500);
    if ((uint64_t)p->premature_resets * 2 < (p->closed_streams < limit ? limit : p->closed_streams))
        return;
    p->premature_close = 1;
    lg_timer_start(&c->worker->loop, &p->idle_timer, 0, h2_idle_timeout);
}

/* Bytes an address takes in lg_hcm_conn_t.tail. */
static size_t addr_size(const struct sockaddr *sa)
{
    return sa->sa_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
}

static void addr_store(uint32_t *to, const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET || sa->sa_family == AF_INET6)
        memcpy(to, sa, addr_size(sa));
    else
        ((struct sockaddr *)to)->sa_family = sa->sa_family; /* the rest stays zero */
}

static int addr_is_listener(const lg_listener_config_t *l, const struct sockaddr *sa)
{
    if (sa->sa_family != l->addr.ss_family)
        return 0;
    if (sa->sa_family == AF_INET || sa->sa_family == AF_INET6)
        return memcmp(sa, &l->addr, addr_size(sa)) == 0;
    return sa->sa_family == AF_UNIX; /* a pipe's local address is its listener's */
}

/* The tail past the HTTP/2 part: the limits (has_limits), then the addresses. */
static char *tail_after_codec(const lg_hcm_conn_t *c)
{
    return (char *)c->tail + (c->with_codec ? 0 : sizeof(lg_hcm_h2_part_t));
}

static lg_hcm_conn_limits_t *conn_limits(const lg_hcm_conn_t *c)
{
    return c->has_limits ? (lg_hcm_conn_limits_t *)(void *)tail_after_codec(c) : NULL;
}

static const struct sockaddr *conn_peer(const lg_hcm_conn_t *c)
{
    return (const struct sockaddr *)(tail_after_codec(c) + (c->has_limits ? sizeof(lg_hcm_conn_limits_t) : 0));
}

/* The stored local address (!local_is_listener) or where it would be. */
static const struct sockaddr *conn_local_stored(const lg_hcm_conn_t *c)
{
    const struct sockaddr *peer = conn_peer(c);
    return (const struct sockaddr *)((const char *)peer + addr_size(peer));
}

static const struct sockaddr *conn_local(const lg_hcm_conn_t *c)
{
    if (c->local_is_listener)
        return (const struct sockaddr *)&c->listener->addr;
    return conn_local_stored(c);
}

static const char *conn_sni(const lg_hcm_conn_t *c)
{
    if (!c->has_sni)
        return NULL;
    const struct sockaddr *local = conn_local_stored(c);
    return (const char *)local + (c->local_is_listener ? 0 : addr_size(local));
}

/* The connection's addresses into a new stream's info (zeroed). */
static void addr_copy(struct sockaddr_storage *out, const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET)
        memcpy(out, sa, sizeof(struct sockaddr_in));
    else
        memcpy(out, sa, sizeof(struct sockaddr_in6)); /* a pipe: its family only, the rest is zero */
}

static void addrs_get(const lg_hcm_conn_t *c, lg_stream_info_t *info)
{
    addr_copy(&info->downstream_remote, conn_peer(c));
    info->downstream_direct_remote = info->downstream_remote;
    if (!c->local_is_listener)
        addr_copy(&info->downstream_local, conn_local_stored(c));
    else if (c->listener->addr.ss_family == AF_UNIX)
        info->downstream_local = c->listener->addr;
    else
        addr_copy(&info->downstream_local, (const struct sockaddr *)&c->listener->addr);
}

static int has_limits(const lg_hcm_config_t *cfg)
{
    return cfg->max_connection_duration_ms != 0 || cfg->max_requests_per_connection != 0;
}

/* Envoy's startDrainSequence: HTTP/1.1 closes after the response in progress,
 * HTTP/2 sends GOAWAY and closes once its streams end. Unlike Envoy, an idle
 * HTTP/1.1 connection closes at once (Envoy leaves it open for drain_timeout,
 * 5 s, first), and HTTP/2 gets one GOAWAY without the shutdown notice before
 * it: what Legate's listener drain already does. */
static void conn_start_drain(lg_hcm_conn_t *c)
{
    if (c->draining || c->closed)
        return;
    c->draining = 1;
    lg_server_conn_t *codec = conn_codec(c);
    codec->ops->drain(codec);
}

/* common_http_protocol_options.max_connection_duration */
static void max_duration_reached(lg_timer_t *t)
{
    lg_hcm_conn_t *c = H2O_STRUCT_FROM_MEMBER(lg_hcm_conn_limits_t, max_duration_timer, t)->conn;
    STAT_INC(c, downstream_cx_max_duration_reached);
    conn_start_drain(c);
}

static void conn_init(lg_hcm_conn_t *c, lg_worker_t *w, const lg_listener_config_t *l, const lg_hcm_config_t *cfg,
                      lg_snapshot_t *snap, h2o_socket_t *sock, const struct sockaddr *local, const struct sockaddr *peer,
                      const char *sni, const uint64_t *listener_start_ms)
{
    c->tls = sock->ssl != NULL;
    c->worker = w;
    c->listener = l;
    c->config = cfg;
    c->snapshot = snap;
    lg_snapshot_hold(w, snap);
    c->id = lg_server_next_connection_id();
    c->listener_counted = listener_start_ms != NULL;
    c->start_ms = listener_start_ms != NULL ? *listener_start_ms : lg_now_ms();
    c->local_is_listener = addr_is_listener(l, local);
    c->has_sni = sni != NULL;
    c->has_limits = has_limits(cfg);
    if (c->has_limits) {
        lg_hcm_conn_limits_t *lim = conn_limits(c);
        lim->conn = c;
        if (cfg->max_connection_duration_ms != 0)
            lg_timer_start(&w->loop, &lim->max_duration_timer, cfg->max_connection_duration_ms, max_duration_reached);
    }
    addr_store((uint32_t *)conn_peer(c), peer);
    if (!c->local_is_listener)
        addr_store((uint32_t *)conn_local_stored(c), local);
    if (sni != NULL)
        strcpy((char *)conn_sni(c), sni);
    h2o_linklist_init_anchor(&c->streams);
    lg_worker_add_connection(w, &c->worker_link);
    STAT_INC(c, downstream_cx_total);
    STAT_INC(c, downstream_cx_active);
    if (c->tls) {
        STAT_INC(c, downstream_cx_ssl_total);
        STAT_INC(c, downstream_cx_ssl_active);
    }
}

lg_hcm_conn_t *lg_hcm_conn_new(lg_worker_t *w, const lg_listener_config_t *l, const lg_hcm_config_t *cfg, lg_snapshot_t *snap,
                               h2o_socket_t *sock, int version, const struct sockaddr *local, const struct sockaddr *peer,
                               const uint64_t *listener_start_ms)
{
    const char *sni = sock->ssl != NULL ? lg_tls_server_name(sock) : NULL;
    if (sni != NULL && sni[0] == '\0')
        sni = NULL;
    size_t size = sizeof(lg_hcm_conn_t) + (has_limits(cfg) ? sizeof(lg_hcm_conn_limits_t) : 0) + addr_size(peer) +
                  (addr_is_listener(l, local) ? 0 : addr_size(local)) + (sni != NULL ? strlen(sni) + 1 : 0);
    lg_hcm_conn_t *c;
    size_t read_before = sock->input->size; /* by protocol detection, before the codec */
    if (version == LG_HTTP_2) {
        c = lg_calloc(1, size + sizeof(lg_hcm_h2_part_t));
        conn_init(c, w, l, cfg, snap, sock, local, peer, sni, listener_start_ms);
        STAT_INC(c, downstream_cx_http2_total);
        STAT_INC(c, downstream_cx_http2_active);
        lg_h2_options_t opts = {.allow_connect = cfg->h2_allow_connect,
                                .stream_error_on_invalid_http_messaging = cfg->h2_stream_error_on_invalid,
                                .request_headers_timeout_ms = (uint32_t)cfg->request_headers_timeout_ms,
                                .headers_with_underscores_action = cfg->h1.headers_with_underscores_action};
        lg_h2_settings_t settings = cfg->h2;
        settings.buffer_limit = l->buffer_limit;
        h2_part(c)->codec = lg_h2_server_conn_new_ex(&w->loop, sock, &settings, &opts, &conn_cbs, c);
    } else {
        lg_h1_server_settings_t s;
        lg_h1_server_settings_init(&s);
        s.limits = cfg->h1;
        s.buffer_limit = l->buffer_limit;
        s.server_name = cfg->server_name;
        s.request_headers_timeout_ms = (uint32_t)cfg->request_headers_timeout_ms;
        s.idle_timeout_ms = cfg->idle_timeout_ms;
        s.on_idle_timeout = h1_idle_timeout;
        /* no callback fires from inside lg_h1_server_conn_new_with_ctx() */
        lg_server_conn_t *codec = lg_h1_server_conn_new_with_ctx(&w->loop, sock, &s, &conn_cbs, size);
        c = codec->ctx;
        c->with_codec = 1;
        conn_init(c, w, l, cfg, snap, sock, local, peer, sni, listener_start_ms);
        STAT_INC(c, downstream_cx_http1_total);
        STAT_INC(c, downstream_cx_http1_active);
    }
    if (read_before != 0)
        STAT_ADD(c, downstream_cx_rx_bytes_total, read_before);
    conn_arm_idle(c);
    return c;
}

void lg_hcm_conn_drain(lg_hcm_conn_t *c)
{
    if (c->draining || c->closed)
        return;
    STAT_INC(c, downstream_cx_drain_close);
    conn_start_drain(c);
}

static void on_conn_close(lg_server_conn_t *codec, unsigned how)
{
    int remote = (how & LG_CONN_CLOSED_REMOTE) != 0;
    lg_hcm_conn_t *c = codec->ctx;
    c->closed = 1;
    if (!c->with_codec)
        lg_timer_stop(conn_idle_timer(c));
    if (c->has_limits)
        lg_timer_stop(&conn_limits(c)->max_duration_timer);
    STAT_INC(c, downstream_cx_destroy);
    if (remote)
        STAT_INC(c, downstream_cx_destroy_remote);
    else
        STAT_INC(c, downstream_cx_destroy_local);
    if (how & LG_CONN_CLOSED_DELAYED)
        STAT_INC(c, downstream_cx_delayed_close_timeout);
    if (how & LG_CONN_CLOSED_ACTIVE_RQ) {
        STAT_INC(c, downstream_cx_destroy_active_rq);
        if (remote)
            STAT_INC(c, downstream_cx_destroy_remote_active_rq);
        else
            STAT_INC(c, downstream_cx_destroy_local_active_rq);
    }
    lg_stats_histogram_record(c->config->stats, c->worker->index, LG_HCM_STAT_downstream_cx_length_ms, lg_now_ms() - c->start_ms);
    STAT_DEC(c, downstream_cx_active);
    if (c->tls)
        STAT_DEC(c, downstream_cx_ssl_active);
    if (lg_server_conn_version(codec) == LG_HTTP_2)
        STAT_DEC(c, downstream_cx_http2_active);
    else
        STAT_DEC(c, downstream_cx_http1_active);
    assert(c->n_streams == 0); /* the codec resets its streams first */
    lg_worker_remove_connection(c->worker, &c->worker_link);
    if (c->listener_counted)
        lg_listener_uncount(c->listener, c->worker, c->start_ms);
    lg_snapshot_release(c->worker, c->snapshot);
    if (!c->with_codec)
        free(c);
}

_Static_assert(LG_HCM_STAT_downstream_rq_5xx - LG_HCM_STAT_downstream_rq_1xx == 4 &&
                   LG_HCM_LISTENER_STAT_downstream_rq_5xx - LG_HCM_LISTENER_STAT_downstream_rq_1xx == 4,
               "the status classes are consecutive");

static void count_completed(lg_hcm_conn_t *c)
{
    STAT_INC(c, downstream_rq_completed);
    if (c->config->listener_stats != NULL)
        LG_STAT_INC(c->config->listener_stats, c->worker->index, LG_HCM_LISTENER_STAT_downstream_rq_completed);
}

/* downstream_rq_<N>xx, in http.<prefix>. and listener.<address>.http.<prefix>. (other statuses count as 5xx) */
static void count_class(lg_hcm_conn_t *c, int status)
{
    int k = status / 100 - 1;
    if (k < 0 || k > 4)
        k = 4;
    LG_STAT_INC(c->config->stats, c->worker->index, LG_HCM_STAT_downstream_rq_1xx + k);
    if (c->config->listener_stats != NULL)
        LG_STAT_INC(c->config->listener_stats, c->worker->index, LG_HCM_LISTENER_STAT_downstream_rq_1xx + k);
}

/* A response (from the upstream or local) starts: Envoy's encodeHeaders counts one that comes
 * before the whole request (on HTTP/1.1 the codec then closes the connection after it). */
static void count_response_start(lg_hcm_stream_t *s, int status)
{
    count_class(s->conn, status);
    if (!s->request_ended)
        STAT_INC(s->conn, downstream_rq_response_before_rq_complete);
}

static void on_codec_error(lg_server_conn_t *codec, int status, const char *details)
{
    lg_hcm_conn_t *c = codec->ctx;
    if (status == 408)
        STAT_INC(c, downstream_rq_header_timeout);
    else
        STAT_INC(c, downstream_cx_protocol_error);
    if (status >= 400) {
        STAT_INC(c, downstream_rq_total);
        if (status == 431 || status == 413)
            STAT_INC(c, downstream_rq_too_large);
        count_class(c, status);
        count_completed(c); /* the codec answered it (Envoy sends the local reply through a stream) */
    }
    LG_DEBUG(http, "[C%llu] codec error: %d %s", (unsigned long long)c->id, status, details != NULL ? details : "");
}

/* ---- streams ---- */

static void stream_idle_timeout(lg_timer_t *t);
static void request_timeout(lg_timer_t *t);
static void duration_timeout(lg_timer_t *t);

static void stream_touch(lg_hcm_stream_t *s)
{
    if (s->idle_timeout_ms != 0 && !s->destroyed)
        lg_timer_touch(&s->conn->worker->loop, &s->idle_timer, s->idle_timeout_ms, stream_idle_timeout);
}

/* ---- the memory of a burst ----
 *
 * A burst of concurrent requests leaves its transient memory (socket input
 * buffers of 8 KB, request pools, streams: one or two touched pages per
 * request) free in the middle of the heap, where it stays resident until
 * something reuses it: after a burst of new keep-alive connections that is
 * most of what the burst cost beyond the connections themselves (~400-700 KB
 * after 200 concurrent requests). So within BURST_TAIL_MS of a worker having
 * BURST_STREAMS concurrent streams, each time it has none left after at least
 * TRIM_MIN_STREAMS streams since the last trim, the free pages go back to the
 * system (malloc_trim) once no stream has started for BURST_SETTLE_MS, at most every
 * BURST_TRIM_SPACING_MS; the stream caches keep TRIM_CACHE_KEEP objects of
 * each class. A trim takes 0.3-7 ms on the bench machine (one
 * madvise per free run of pages). Traffic that never reaches BURST_STREAMS
 * concurrent streams on a worker never trims, and no request waits for it. */
#define BURST_STREAMS 128
#define BURST_TAIL_MS 2000
#define TRIM_MIN_STREAMS 32
#define BURST_SETTLE_MS 100
#define BURST_TRIM_SPACING_MS 250
#define TRIM_CACHE_KEEP 32 /* stream objects kept per class (the caches keep up to 256) */

static __thread uint32_t worker_streams, streams_since_trim; /* the latter up to TRIM_MIN_STREAMS */
static __thread uint64_t burst_ms, last_trim_ms;             /* burst_ms: the last time of BURST_STREAMS (0: none) */
static __thread lg_timer_t trim_timer;                       /* stopped by lg_hcm_thread_exit() */
static __thread int trim_off;                                /* the worker is exiting */

static void on_trim(lg_timer_t *t)
{
    streams_since_trim = 0;
    last_trim_ms = lg_now_ms();
    lg_http_cache_trim(TRIM_CACHE_KEEP); /* what the burst left in the stream caches */
    malloc_trim(0);
}

static void burst_stream_started(void)
{
    if (lg_timer_is_active(&trim_timer))
        lg_timer_stop(&trim_timer); /* not settled: a trim would stall these streams for milliseconds */
    if (++worker_streams >= BURST_STREAMS)
        burst_ms = lg_now_ms();
    streams_since_trim += streams_since_trim < TRIM_MIN_STREAMS;
}

static void burst_stream_ended(lg_worker_t *w)
{
    if (--worker_streams != 0 || burst_ms == 0 || streams_since_trim < TRIM_MIN_STREAMS || lg_timer_is_active(&trim_timer))
        return;
    if (trim_off)
        return;
    uint64_t now = lg_now_ms(), at = last_trim_ms + BURST_TRIM_SPACING_MS;
    if (now - burst_ms > BURST_TAIL_MS) {
        burst_ms = 0;
        return;
    }
    lg_timer_start(&w->loop, &trim_timer, at > now + BURST_SETTLE_MS ? at - now : BURST_SETTLE_MS, on_trim);
}

void lg_hcm_thread_exit(void)
{
    trim_off = 1;
    lg_timer_stop(&trim_timer);
}

static void on_new_stream(lg_server_conn_t *codec, lg_stream_t *ds)
{
    lg_hcm_conn_t *c = codec->ctx;
    const lg_hcm_config_t *cfg = c->config;
    lg_hcm_stream_t *s = lg_http_cache_alloc(LG_HTTP_CACHE_HCM_STREAM, sizeof(*s));
    burst_stream_started();
    if (ds->pool != NULL) {
        s->pool = ds->pool;
    } else {
        h2o_mem_init_pool(&s->own_pool);
        s->pool = &s->own_pool;
    }
    s->conn = c;
    s->downstream = ds;
    ds->cbs = &downstream_cbs;
    ds->ctx = s;
    lg_hcm_conn_limits_t *lim = conn_limits(c);
    if (lim != NULL && cfg->max_requests_per_connection != 0 && ++lim->requests >= cfg->max_requests_per_connection) {
        STAT_INC(c, downstream_cx_max_requests_reached); /* as Envoy, for every stream past the limit */
        conn_start_drain(c);                             /* HTTP/1.1: this response says connection: close */
    }
    s->info.connection_id = c->id;
    s->info.start_us = lg_now_us();
    s->info.start_wall_us = lg_wall_us();
    addrs_get(c, &s->info);
    s->info.protocol = ds->version;
    if (c->has_sni) {
        const char *sni = conn_sni(c);
        s->info.requested_server_name = h2o_iovec_init(sni, strlen(sni));
    }
    s->idle_timeout_ms = cfg->stream_idle_timeout_ms;
    s->n_filters = cfg->n_filters;
    s->filters = h2o_mem_alloc_pool(s->pool, sizeof(*s->filters) * (cfg->n_filters ? cfg->n_filters : 1));
    for (size_t i = 0; i != cfg->n_filters; ++i) {
        const lg_http_filter_type_t *type = cfg->filters[i].type;
        lg_http_filter_t *f = h2o_mem_alloc_pool(s->pool, sizeof(*f) + type->state_size);
        memset(f, 0, sizeof(*f) + type->state_size);
        *f = (lg_http_filter_t){type, cfg->filters[i].config, s, i};
        s->filters[i] = f;
    }
    s->encode_index = cfg->n_filters;
    /* Envoy's ActiveStream: the HCM's max_stream_duration runs from the start; a route may change it */
    if (cfg->max_stream_duration_ms != 0)
        lg_timer_start(&c->worker->loop, &s->duration_timer, cfg->max_stream_duration_ms, duration_timeout);
    h2o_linklist_insert(&c->streams, &s->link);
    if (c->n_streams++ == 0) {
        conn_stop_idle(c);
        lg_snapshot_conn_busy(c->worker, c->snapshot);
    }
    STAT_INC(c, downstream_rq_total);
    STAT_INC(c, downstream_rq_active);
    if (ds->version == LG_HTTP_2)
        STAT_INC(c, downstream_rq_http2_total);
    else
        STAT_INC(c, downstream_rq_http1_total);
    stream_touch(s);
}

/* Envoy's internal address check: internal_address_config's ranges, or by
 * default RFC 1918 and RFC 4193 addresses (loopback is not internal). */
static int is_internal_address(const lg_hcm_config_t *cfg, const struct sockaddr *sa)
{
    if (sa->sa_family == AF_UNIX)
        return cfg->internal_unix_sockets;
    if (cfg->internal_cidrs != NULL) {
        for (size_t i = 0; i != cfg->n_internal_cidrs; ++i)
            if (lg_cidr_contains(cfg->internal_cidrs + i, sa))
                return 1;
        return 0;
    }
    if (sa->sa_family == AF_INET) {
        uint32_t a = ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr);
        return (a >> 24) == 10 || (a >> 20) == (172 << 4 | 1) || (a >> 16) == (192 << 8 | 168);
    }
    if (sa->sa_family == AF_INET6)
        return (((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr[0] & 0xfe) == 0xfc;
    return 0;
}

/* Parses the n-th address from the right of x-forwarded-for into ss. */
static int xff_address(h2o_iovec_t xff, uint32_t hops, struct sockaddr_storage *ss)
{
    const char *end = xff.base + xff.len;
    for (uint32_t i = 0;; ++i) {
        const char *comma = end;
        while (comma > xff.base && comma[-1] != ',')
            --comma;
        if (i == hops) {
            const char *b = comma, *e = end;
            while (b < e && (*b == ' ' || *b == '\t'))
                ++b;
            while (e > b && (e[-1] == ' ' || e[-1] == '\t'))
                --e;
            char buf[INET6_ADDRSTRLEN];
            if ((size_t)(e - b) >= sizeof(buf))
                return -1;
            memcpy(buf, b, e - b);
            buf[e - b] = '\0';
            memset(ss, 0, sizeof(*ss));
            if (inet_pton(AF_INET, buf, &((struct sockaddr_in *)ss)->sin_addr) == 1) {
                ss->ss_family = AF_INET;
                return 0;
            }
            if (inet_pton(AF_INET6, buf, &((struct sockaddr_in6 *)ss)->sin6_addr) == 1) {
                ss->ss_family = AF_INET6;
                return 0;
            }
            return -1;
        }
        if (comma == xff.base)
            return -1;
        end = comma - 1;
    }
}

/* Envoy's ConnectionManagerUtility::mutateRequestHeaders, for what exists here. */
static void mutate_request_headers(lg_hcm_stream_t *s, lg_req_head_t *req)
{
    lg_hcm_conn_t *c = s->conn;
    const lg_hcm_config_t *cfg = c->config;
    int internal;
    h2o_iovec_t xff = lg_headers_get(&req->headers, H2O_STRLIT("x-forwarded-for"));

    if (cfg->use_remote_address) {
        char ip[INET6_ADDRSTRLEN + 8];
        size_t n = lg_address_format_ip(conn_peer(c), ip, sizeof(ip));
        if (!cfg->skip_xff_append && conn_peer(c)->sa_family != AF_UNIX) {
            h2o_iovec_t v = xff.base == NULL ? h2o_strdup(s->pool, ip, n)
                                             : h2o_concat(s->pool, xff, h2o_iovec_init(H2O_STRLIT(",")), h2o_iovec_init(ip, n));
            lg_headers_set(s->pool, &req->headers, LG_LIT("x-forwarded-for"), v);
        }
        internal = is_internal_address(cfg, conn_peer(c));
    } else {
        struct sockaddr_storage ss;
        if (xff.base != NULL && xff_address(xff, cfg->xff_num_trusted_hops, &ss) == 0) {
            s->info.downstream_remote = ss;
            internal = is_internal_address(cfg, (struct sockaddr *)&ss);
        } else {
            internal = 0;
        }
    }
    s->internal = internal != 0;
    int edge = cfg->use_remote_address && !internal;
    if (cfg->use_remote_address) {
        if (internal)
            lg_headers_set(s->pool, &req->headers, LG_LIT("x-envoy-internal"), LG_LIT("true"));
        else
            lg_headers_remove(&req->headers, H2O_STRLIT("x-envoy-internal"));
    }
    if (edge) {
        /* Envoy's edge clean-up of headers only trusted from internal hops. */
        static const char *const strip[] = {"x-envoy-decorator-operation",
                                            "x-envoy-downstream-service-cluster",
                                            "x-envoy-downstream-service-node",
                                            "x-envoy-expected-rq-timeout-ms",
                                            "x-envoy-external-address",
                                            "x-envoy-force-trace",
                                            "x-envoy-hedge-on-per-try-timeout",
                                            "x-envoy-ip-tags",
                                            "x-envoy-max-retries",
                                            "x-envoy-original-path",
                                            "x-envoy-retriable-header-names",
                                            "x-envoy-retriable-status-codes",
                                            "x-envoy-retry-grpc-on",
                                            "x-envoy-retry-on",
                                            "x-envoy-upstream-alt-stat-name",
                                            "x-envoy-upstream-rq-per-try-timeout-ms",
                                            "x-envoy-upstream-rq-timeout-alt-response",
                                            "x-envoy-upstream-rq-timeout-ms"};
        for (size_t i = 0; i != LG_ARRAY_SIZE(strip); ++i)
            lg_headers_remove(&req->headers, strip[i], strlen(strip[i]));
        char ip[INET6_ADDRSTRLEN + 8];
        size_t n = lg_address_format_ip(conn_peer(c), ip, sizeof(ip));
        lg_headers_set(s->pool, &req->headers, LG_LIT("x-envoy-external-address"), h2o_strdup(s->pool, ip, n));
    }
    /* x-forwarded-proto: overwritten at the edge, defaulted elsewhere. */
    h2o_iovec_t scheme = c->tls ? LG_LIT("https") : LG_LIT("http");
    if (cfg->use_remote_address || lg_headers_find(&req->headers, H2O_STRLIT("x-forwarded-proto"), 0) < 0)
        lg_headers_set(s->pool, &req->headers, LG_LIT("x-forwarded-proto"), scheme);
    if (req->scheme.base == NULL || req->scheme.len == 0)
        req->scheme = scheme;
    /* x-request-id */
    if (cfg->generate_request_id) {
        ssize_t i = lg_headers_find(&req->headers, H2O_STRLIT("x-request-id"), 0);
        if (i < 0 || (edge && !cfg->preserve_external_request_id)) {
            h2o_iovec_t id = uuid4(s->pool);
            lg_headers_set(s->pool, &req->headers, LG_LIT("x-request-id"), id);
            s->info.request_id = id;
        } else {
            s->info.request_id = req->headers.entries[i].value;
        }
    } else {
        s->info.request_id = lg_headers_get(&req->headers, H2O_STRLIT("x-request-id"));
    }
}

/* strip_any_host_port / strip_matching_host_port: drops ":port" from the
 * authority (IPv6 literals keep their brackets). */
static void strip_host_port(lg_hcm_stream_t *s, lg_req_head_t *req)
{
    const lg_hcm_config_t *cfg = s->conn->config;
    h2o_iovec_t a = req->authority;
    if (!cfg->strip_any_host_port && !cfg->strip_matching_host_port)
        return;
    size_t i = a.len;
    while (i != 0 && a.base[i - 1] >= '0' && a.base[i - 1] <= '9')
        --i;
    if (i == 0 || i == a.len || a.base[i - 1] != ':' || (a.base[0] == '[' && a.base[i - 2] != ']'))
        return;
    if (!cfg->strip_any_host_port) {
        unsigned port = 0;
        for (size_t k = i; k != a.len; ++k)
            port = port * 10 + (unsigned)(a.base[k] - '0');
        if (port != lg_address_port(conn_local(s->conn)))
            return;
    }
    req->authority.len = i - 1;
}

/* Removes dot segments and, when configured, merges slashes. Returns 0, or
 * -1 when the path cannot be normalized (Envoy answers 400). */
static int normalize_path(lg_hcm_stream_t *s, lg_req_head_t *req)
{
    const lg_hcm_config_t *cfg = s->conn->config;
    h2o_iovec_t path = req->path;
    size_t qpos = 0;
    while (qpos != path.len && path.base[qpos] != '?')
        ++qpos;
    h2o_iovec_t p = h2o_iovec_init(path.base, qpos), q = h2o_iovec_init(path.base + qpos, path.len - qpos);
    if (cfg->escaped_slashes != LG_ESCAPED_SLASHES_KEEP) {
        for (size_t i = 0; i + 2 < p.len; ++i)
            if (p.base[i] == '%' && (p.base[i + 1] == '2') && (p.base[i + 2] == 'f' || p.base[i + 2] == 'F')) {
                if (cfg->escaped_slashes == LG_ESCAPED_SLASHES_REJECT)
                    return -1;
                /* UNESCAPE_AND_FORWARD (and REDIRECT, which is forwarded unescaped here) */
                char *b = h2o_mem_alloc_pool(s->pool, p.len);
                size_t o = 0;
                for (size_t j = 0; j < p.len; ++j) {
                    if (j + 2 < p.len && p.base[j] == '%' && p.base[j + 1] == '2' && (p.base[j + 2] | 0x20) == 'f') {
                        b[o++] = '/';
                        j += 2;
                    } else if (j + 2 < p.len && p.base[j] == '%' && p.base[j + 1] == '5' && (p.base[j + 2] | 0x20) == 'c') {
                        b[o++] = '\\';
                        j += 2;
                    } else {
                        b[o++] = p.base[j];
                    }
                }
                p = h2o_iovec_init(b, o);
                break;
            }
    }
    if (cfg->normalize_path) {
        if (p.len == 0 || p.base[0] != '/')
            return -1;
        size_t qat;
        p = h2o_url_normalize_path(s->pool, p.base, p.len, &qat, NULL);
    }
    if (cfg->merge_slashes) {
        char *b = h2o_mem_alloc_pool(s->pool, p.len + 1);
        size_t o = 0;
        for (size_t i = 0; i != p.len; ++i)
            if (!(p.base[i] == '/' && o != 0 && b[o - 1] == '/'))
                b[o++] = p.base[i];
        p = h2o_iovec_init(b, o);
    }
    if (p.base != path.base || p.len != qpos)
        req->path = q.len == 0 ? p : h2o_concat(s->pool, p, q);
    return 0;
}

const lg_route_t *lg_hcm_route(lg_hcm_stream_t *s)
{
    if (!s->route_resolved) {
        s->route_resolved = 1;
        const lg_route_table_t *t = lg_snapshot_route_table_for(s->conn->snapshot, s->conn->config, s->req);
        /* Envoy's cleanInternalHeaders: the route configuration's internal_only_headers leave
         * requests that are not internal, before the route is chosen */
        for (size_t i = 0; t != NULL && !s->internal && i != t->n_internal_only_headers; ++i)
            lg_headers_remove(&s->req->headers, t->internal_only_headers[i].base, t->internal_only_headers[i].len);
        s->route = t != NULL ? lg_route_match(t, s->req, lg_random(), &s->vhost) : NULL;
        if (s->route != NULL)
            s->info.route_name = s->route->name;
    }
    return s->route;
}

lg_worker_t *lg_hcm_worker(lg_hcm_stream_t *s)
{
    return s->conn->worker;
}

/* ---- gRPC, upgrades and per-route stream timers ---- */

int lg_hcm_route_uses_new_timeouts(const lg_route_t *r)
{
    return r->pb != NULL && r->pb->route != NULL && r->pb->route->max_stream_duration != NULL;
}

/* Envoy's Grpc::Common::isGrpcRequestHeaders: a :path and a content-type of
 * exactly "application/grpc" or "application/grpc+..." (not grpc-web). */
static int is_grpc_request(const lg_req_head_t *req)
{
    static const char grpc[] = "application/grpc";
    size_t n = sizeof(grpc) - 1;
    h2o_iovec_t ct = lg_headers_get(&req->headers, H2O_STRLIT("content-type"));
    return req->path.len != 0 && ct.len >= n && memcmp(ct.base, grpc, n) == 0 && (ct.len == n || ct.base[n] == '+');
}

int64_t lg_hcm_grpc_timeout_ms(const lg_req_head_t *req)
{
    h2o_iovec_t v = lg_headers_get(&req->headers, H2O_STRLIT("grpc-timeout"));
    uint64_t n = 0;
    if (v.len < 2 || v.len > 20)
        return -1;
    for (size_t i = 0; i + 1 < v.len; ++i) {
        if (v.base[i] < '0' || v.base[i] > '9')
            return -1;
        n = n * 10 + (uint64_t)(v.base[i] - '0');
    }
    if (n > LG_GRPC_TIMEOUT_MAX)
        return -1;
    switch (v.base[v.len - 1]) {
    case 'H':
        return (int64_t)(n * 3600000);
    case 'M':
        return (int64_t)(n * 60000);
    case 'S':
        return (int64_t)(n * 1000);
    case 'm':
        return (int64_t)n;
    case 'u':
        return (int64_t)((n + 999) / 1000);
    case 'n':
        return (int64_t)((n + 999999) / 1000000);
    default:
        return -1;
    }
}

h2o_iovec_t lg_hcm_grpc_timeout_value(h2o_mem_pool_t *pool, uint64_t ms)
{
    static const char units[] = "mSMH";
    const char *unit = units;
    if (ms > LG_GRPC_TIMEOUT_MAX) {
        ms /= 1000;
        ++unit;
    }
    while (ms > LG_GRPC_TIMEOUT_MAX) {
        if (*unit == 'H') {
            ms = LG_GRPC_TIMEOUT_MAX;
            break;
        }
        ms /= 60;
        ++unit;
    }
    char *buf = h2o_mem_alloc_pool(pool, 24);
    size_t n = lg_u64_to_dec(buf, ms);
    buf[n++] = *unit;
    return h2o_iovec_init(buf, n);
}

/* grpc-message is percent-encoded (PROTOCOL-HTTP2.md), as Envoy's PercentEncoding::encode:
 * bytes outside ' '..'}' and '%' become %XX. */
static h2o_iovec_t grpc_message_encode(h2o_mem_pool_t *pool, h2o_iovec_t v)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t extra = 0;
    for (size_t i = 0; i != v.len; ++i) {
        unsigned char c = (unsigned char)v.base[i];
        if (c < ' ' || c >= '~' || c == '%')
            extra += 2;
    }
    if (extra == 0)
        return v;
    char *out = h2o_mem_alloc_pool(pool, v.len + extra), *o = out;
    for (size_t i = 0; i != v.len; ++i) {
        unsigned char c = (unsigned char)v.base[i];
        if (c < ' ' || c >= '~' || c == '%') {
            *o++ = '%';
            *o++ = hex[c >> 4];
            *o++ = hex[c & 15];
        } else {
            *o++ = (char)c;
        }
    }
    return h2o_iovec_init(out, v.len + extra);
}

/* Envoy's Utility::isUpgrade: an Upgrade header and a Connection header listing "upgrade". */
static int is_upgrade_request(const lg_req_head_t *req)
{
    if (lg_headers_find(&req->headers, H2O_STRLIT("upgrade"), 0) < 0)
        return 0;
    for (ssize_t i = -1; (i = lg_headers_find(&req->headers, H2O_STRLIT("connection"), i + 1)) >= 0;) {
        h2o_iovec_t v = req->headers.entries[i].value;
        if (h2o_contains_token(v.base, v.len, H2O_STRLIT("upgrade"), ','))
            return 1;
    }
    return 0;
}

/* Envoy's createUpgradeFilterChain: the route's upgrade_configs decide first
 * (an explicit disable wins), then the HCM's. */
static int upgrade_allowed(lg_hcm_stream_t *s, h2o_iovec_t type)
{
    const lg_hcm_config_t *cfg = s->conn->config;
    const lg_route_t *r = s->route;
    int route_enabled = 0;
    if (r != NULL && r->kind == LG_ROUTE_FORWARD) {
        for (size_t i = 0; i != r->action.n_upgrade_configs; ++i) {
            const lg_upgrade_config_t *u = r->action.upgrade_configs + i;
            if (h2o_lcstris(type.base, type.len, u->upgrade_type.base, u->upgrade_type.len)) {
                if (!u->enabled)
                    return 0;
                route_enabled = 1;
                break;
            }
        }
    }
    for (size_t i = 0; i != cfg->n_upgrades; ++i)
        if (h2o_lcstris(type.base, type.len, cfg->upgrades[i].type.base, cfg->upgrades[i].type.len))
            return cfg->upgrades[i].enabled || route_enabled;
    return route_enabled;
}

/* RFC 8441: an HTTP/2 extended CONNECT reaches the rest of the proxy as an
 * HTTP/1.1 upgrade (Envoy's transformUpgradeRequestFromH2toH1). */
static void h2_ext_connect_to_upgrade(lg_hcm_stream_t *s, lg_req_head_t *req)
{
    lg_headers_set(s->pool, &req->headers, LG_LIT("upgrade"), req->protocol);
    lg_headers_set(s->pool, &req->headers, LG_LIT("connection"), LG_LIT("upgrade"));
    req->method = LG_LIT("GET");
    req->protocol = h2o_iovec_init(NULL, 0);
    s->h2_ext_connect = 1;
}

/* Returns 0 when the request may go on; otherwise it was answered (403). */
static int check_upgrade(lg_hcm_stream_t *s, lg_req_head_t *req)
{
    int upgrade = is_upgrade_request(req);
    int connect = !upgrade && h2o_memis(req->method.base, req->method.len, H2O_STRLIT("CONNECT"));
    if (!upgrade && !connect)
        return 0;
    h2o_iovec_t type = upgrade ? lg_headers_get(&req->headers, H2O_STRLIT("upgrade")) : req->method;
    if (!upgrade_allowed(s, type)) {
        STAT_INC(s->conn, downstream_rq_ws_on_non_ws_route);
        lg_hcm_send_local_reply(s, 403, h2o_iovec_init(NULL, 0), "upgrade_failed", 0);
        return -1;
    }
    s->upgrade = upgrade;
    s->connect = connect;
    STAT_INC(s->conn, downstream_cx_upgrades_total);
    STAT_INC(s->conn, downstream_cx_upgrades_active);
    return 0;
}

/* Envoy's refreshIdleTimeout: the route's idle_timeout replaces the HCM's
 * stream_idle_timeout; 0 disables the timer. */
static void refresh_idle_timeout(lg_hcm_stream_t *s)
{
    const lg_route_t *r = s->route;
    if (r == NULL || r->kind != LG_ROUTE_FORWARD || r->action.idle_timeout_ms < 0)
        return;
    s->idle_timeout_ms = (uint64_t)r->action.idle_timeout_ms;
    if (s->idle_timeout_ms == 0)
        lg_timer_stop(&s->idle_timer);
    else if (!s->destroyed) /* the duration changed: a full re-arm */
        lg_timer_start(&s->conn->worker->loop, &s->idle_timer, s->idle_timeout_ms, stream_idle_timeout);
}

/* Envoy's refreshDurationTimeout: with the route's grpc_timeout_header_max the
 * grpc-timeout header (capped unless the cap is 0, minus the offset) limits
 * the stream; otherwise the route's max_stream_duration (0: none), else the
 * HCM's. With the route's MaxStreamDuration a gRPC request carries that limit
 * upstream in its grpc-timeout header. */
static void refresh_duration_timeout(lg_hcm_stream_t *s)
{
    const lg_route_t *r = s->route;
    if (r == NULL || r->kind != LG_ROUTE_FORWARD)
        return;
    const lg_route_action_t *a = &r->action;
    int64_t grpc = lg_hcm_grpc_timeout_ms(s->req);
    uint64_t timeout;
    if (grpc < 0 || a->grpc_timeout_header_max_ms < 0) {
        if (a->max_stream_duration_ms >= 0)
            timeout = (uint64_t)a->max_stream_duration_ms;
        else
            timeout = s->conn->config->max_stream_duration_ms;
        if (timeout == 0) {
            lg_timer_stop(&s->duration_timer);
            return;
        }
    } else {
        timeout = (uint64_t)grpc;
        if (a->grpc_timeout_header_max_ms != 0 && timeout > (uint64_t)a->grpc_timeout_header_max_ms)
            timeout = (uint64_t)a->grpc_timeout_header_max_ms;
        if (timeout != 0 && a->grpc_timeout_header_offset_ms >= 0)
            timeout =
                (uint64_t)a->grpc_timeout_header_offset_ms < timeout ? timeout - (uint64_t)a->grpc_timeout_header_offset_ms : 0;
    }
    if (lg_hcm_route_uses_new_timeouts(r) && s->is_grpc)
        lg_headers_set(s->pool, &s->req->headers, LG_LIT("grpc-timeout"), lg_hcm_grpc_timeout_value(s->pool, timeout));
    uint64_t used = (lg_now_us() - s->info.start_us) / 1000;
    lg_timer_start(&s->conn->worker->loop, &s->duration_timer, timeout > used ? timeout - used : 0, duration_timeout);
}

static void on_headers(lg_stream_t *ds, void *head, int end_stream)
{
    lg_hcm_stream_t *s = ds->ctx;
    lg_req_head_t *req = head;
    lg_hcm_conn_t *c = s->conn;
    s->req = req;
    s->info.request = req;
    s->request_headers_done = 1;
    s->request_ended = end_stream;
    if (end_stream)
        s->info.last_downstream_rx_us = lg_now_us();
    stream_touch(s);
    if (c->config->request_timeout_ms != 0 && !end_stream)
        lg_timer_start(&c->worker->loop, &s->request_timer, c->config->request_timeout_ms, request_timeout);
    s->is_grpc = is_grpc_request(req);
    /* Envoy drops new requests as soon as their headers are decoded, before
     * any filter runs (overload manager: stop_accepting_requests) */
    if (!c->listener->bypass_overload_manager && lg_overload_decide(c->worker->overload[LG_OVERLOAD_STOP_ACCEPTING_REQUESTS])) {
        STAT_INC(c, downstream_rq_overload_close);
        lg_headers_t *extra = NULL;
        if (c->config->append_local_overload) {
            extra = h2o_mem_alloc_pool(s->pool, sizeof(*extra));
            memset(extra, 0, sizeof(*extra));
            lg_headers_add(s->pool, extra, LG_LIT("x-envoy-local-overloaded"), LG_LIT("true"));
        }
        lg_hcm_send_local_reply_ex(s, 503, LG_LIT("envoy overloaded"), "overload", 0, extra);
        return;
    }

    int is_connect = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("CONNECT"));
    if (is_connect && req->protocol.len != 0) {
        h2_ext_connect_to_upgrade(s, req);
        is_connect = 0;
    }
    if (!is_connect && !(req->path.len == 1 && req->path.base[0] == '*') && (req->path.len == 0 || req->path.base[0] != '/')) {
        STAT_INC(c, downstream_rq_non_relative_path);
        lg_hcm_send_local_reply(s, 404, h2o_iovec_init(NULL, 0), "absolute_path_rejected", 0);
        return;
    }
    if (!is_connect && req->path.len != 0 && req->path.base[0] == '/' && normalize_path(s, req) != 0) {
        STAT_INC(c, downstream_rq_failed_path_normalization);
        lg_hcm_send_local_reply(s, 400, h2o_iovec_init(NULL, 0), "path_normalization_failed", 0);
        return;
    }
    strip_host_port(s, req);
    mutate_request_headers(s, req);
    lg_hcm_route(s);
    refresh_idle_timeout(s);
    refresh_duration_timeout(s);
    if (check_upgrade(s, req) != 0)
        return;
    decode_headers_from(s, 0);
}

static void decode_headers_from(lg_hcm_stream_t *s, size_t index)
{
    for (s->decode_index = index; s->decode_index < s->n_filters; ++s->decode_index) {
        lg_http_filter_t *f = s->filters[s->decode_index];
        if (f->type->decode_headers == NULL)
            continue;
        if (f->type->decode_headers(f, s->req, s->request_ended) != LG_FILTER_CONTINUE || s->local_reply || s->destroyed)
            return;
    }
}

void lg_hcm_continue_decoding(lg_http_filter_t *f)
{
    lg_hcm_stream_t *s = f->stream;
    decode_headers_from(s, f->index + 1);
}

void lg_hcm_continue_encoding(lg_http_filter_t *f)
{
    /* Encode filters that stop are not used yet: the encode chain runs straight through. */
    (void)f;
}

static void on_data(lg_stream_t *ds, h2o_iovec_t data, int end_stream)
{
    lg_hcm_stream_t *s = ds->ctx;
    stream_touch(s);
    s->info.bytes_received += data.len;
    if (end_stream) {
        s->request_ended = 1;
        s->info.last_downstream_rx_us = lg_now_us();
        lg_timer_stop(&s->request_timer);
    }
    if (s->local_reply || s->decode_index >= s->n_filters) {
        /* nobody takes the body (local reply sent): drop it */
        ds->ops->consume(ds, data.len);
        return;
    }
    for (size_t i = 0; i != s->n_filters; ++i) {
        lg_http_filter_t *f = s->filters[i];
        if (f->type->decode_data != NULL && f->type->decode_data(f, data, end_stream) != LG_FILTER_CONTINUE)
            return;
        if (s->destroyed || s->local_reply)
            return;
    }
}

static void on_trailers(lg_stream_t *ds, lg_headers_t *trailers)
{
    lg_hcm_stream_t *s = ds->ctx;
    s->request_ended = 1;
    s->info.last_downstream_rx_us = lg_now_us();
    lg_timer_stop(&s->request_timer);
    if (s->local_reply)
        return;
    for (size_t i = 0; i != s->n_filters; ++i) {
        lg_http_filter_t *f = s->filters[i];
        if (f->type->decode_trailers != NULL && f->type->decode_trailers(f, trailers) != LG_FILTER_CONTINUE)
            return;
        if (s->destroyed || s->local_reply)
            return;
    }
}

static void on_data_sent(lg_stream_t *ds, size_t bytes)
{
    lg_hcm_stream_t *s = ds->ctx;
    stream_touch(s);
    if (s->local_reply || s->n_filters == 0)
        return;
    lg_http_filter_t *last = s->filters[s->n_filters - 1];
    if (last->type->on_encode_data_sent != NULL)
        last->type->on_encode_data_sent(last, bytes);
}

/* Envoy's downstream_flow_control_{paused,resumed}_reading_total, and the terminal
 * filter's part of it (the router counts its cluster's upstream_flow_control_backed_up_total). */
static void on_flow(lg_stream_t *ds, int paused)
{
    lg_hcm_stream_t *s = ds->ctx;
    if (paused)
        STAT_INC(s->conn, downstream_flow_control_paused_reading_total);
    else
        STAT_INC(s->conn, downstream_flow_control_resumed_reading_total);
    if (s->local_reply || s->n_filters == 0)
        return;
    lg_http_filter_t *last = s->filters[s->n_filters - 1];
    if (last->type->on_decode_flow != NULL)
        last->type->on_decode_flow(last, paused);
}

static void on_reset(lg_stream_t *ds, lg_reset_reason_t reason, const char *details)
{
    lg_hcm_stream_t *s = ds->ctx;
    if (reason == LG_RESET_LOCAL)
        STAT_INC(s->conn, downstream_rq_tx_reset);
    else
        STAT_INC(s->conn, downstream_rq_rx_reset);
    count_stream_close(s->conn, s, reason != LG_RESET_LOCAL);
    if (!s->response_ended)
        s->info.response_flags |= LG_RF(DOWNSTREAM_CONNECTION_TERMINATION);
    s->downstream = NULL;
    stream_destroy(s);
}

static void on_complete(lg_stream_t *ds)
{
    lg_hcm_stream_t *s = ds->ctx;
    s->downstream = NULL;
    count_completed(s->conn);
    count_stream_close(s->conn, s, 0);
    lg_stats_histogram_record(s->conn->config->stats, s->conn->worker->index, LG_HCM_STAT_downstream_rq_time,
                              (lg_now_us() - s->info.start_us) / 1000); /* Envoy: when the codec finished the response */
    stream_destroy(s);
}

static const lg_stream_cbs_t downstream_cbs = {
    .on_headers = on_headers,
    .on_data = on_data,
    .on_trailers = on_trailers,
    .on_data_sent = on_data_sent,
    .on_reset = on_reset,
    .on_complete = on_complete,
    .on_flow = on_flow,
};

/* Envoy's downstream_cx_{rx,tx}_bytes_total: the connection's bytes, heads and
 * framing included (TLS: decrypted), counted as the codec reads and writes. */
static void on_conn_io(lg_server_conn_t *codec, size_t rx, size_t tx)
{
    lg_hcm_conn_t *c = codec->ctx;
    if (rx != 0)
        STAT_ADD(c, downstream_cx_rx_bytes_total, rx);
    if (tx != 0)
        STAT_ADD(c, downstream_cx_tx_bytes_total, tx);
}

static const lg_server_conn_cbs_t conn_cbs = {
    .on_new_stream = on_new_stream,
    .on_close = on_conn_close,
    .on_codec_error = on_codec_error,
    .on_io = on_conn_io,
};

static void stream_destroy(lg_hcm_stream_t *s)
{
    lg_hcm_conn_t *c = s->conn;
    if (s->destroyed)
        return;
    s->destroyed = 1;
    lg_timer_stop(&s->idle_timer);
    lg_timer_stop(&s->request_timer);
    lg_timer_stop(&s->duration_timer);
    if (s->upgrade || s->connect)
        STAT_DEC(c, downstream_cx_upgrades_active);
    for (size_t i = 0; i != s->n_filters; ++i)
        if (s->filters[i]->type->on_destroy != NULL)
            s->filters[i]->type->on_destroy(s->filters[i]);
    lg_stream_t *ds = s->downstream;
    s->downstream = NULL;
    lg_reset_reason_t why = LG_RESET_LOCAL;
    if (ds != NULL) {
        STAT_INC(c, downstream_rq_tx_reset);
        /* RFC 9113 8.5: a CONNECT whose TCP connection failed is reset with CONNECT_ERROR (Envoy's doEndStream) */
        if ((s->connect || s->h2_ext_connect) &&
            (s->info.response_flags & (LG_RF(UPSTREAM_CONNECTION_FAILURE) | LG_RF(UPSTREAM_CONNECTION_TERMINATION))))
            why = LG_RESET_CONNECTION_FAILURE;
    }
    lg_server_log_access(c->worker, c->listener, c->config, &s->info);
    h2o_linklist_unlink(&s->link);
    if (--c->n_streams == 0)
        lg_snapshot_conn_idle(c->worker, c->snapshot);
    STAT_DEC(c, downstream_rq_active);
    if (s->pool == &s->own_pool)
        h2o_mem_clear_pool(&s->own_pool);
    lg_http_cache_free(LG_HTTP_CACHE_HCM_STREAM, s);
    burst_stream_ended(c->worker);
    conn_arm_idle(c);
    /* Last: resetting an HTTP/1 stream closes its connection, which frees c. */
    if (ds != NULL)
        ds->ops->reset(ds, why);
}

void lg_hcm_reset_stream(lg_hcm_stream_t *s)
{
    if (s->destroyed)
        return;
    if (s->response_started)
        STAT_INC(s->conn, rq_reset_after_downstream_response_started);
    /* no LR here: Envoy sets LocalReset only for an upstream stream reset locally, the caller sets the cause */
    stream_destroy(s);
}

void lg_hcm_consume_request(lg_hcm_stream_t *s, size_t bytes)
{
    if (s->downstream != NULL && bytes != 0)
        s->downstream->ops->consume(s->downstream, bytes);
}

int lg_hcm_request_rx_blocked(lg_hcm_stream_t *s)
{
    lg_stream_t *d = s->downstream;
    return d != NULL && d->ops->rx_blocked != NULL && d->ops->rx_blocked(d);
}

void lg_hcm_pause_request(lg_hcm_stream_t *s, int paused)
{
    if (s->downstream != NULL && s->downstream->ops->read_pause != NULL)
        s->downstream->ops->read_pause(s->downstream, paused);
}

/* ---- the encode direction ---- */

static void finalize_response_head(lg_hcm_stream_t *s, lg_resp_head_t *head)
{
    const lg_hcm_config_t *cfg = s->conn->config;
    int has_server = 0, has_date = 0, has_request_id = 0;
    for (size_t i = 0; i != head->headers.size; ++i) { /* one pass for the three lookups */
        h2o_iovec_t n = head->headers.entries[i].name;
        if (h2o_memis(n.base, n.len, H2O_STRLIT("server")))
            has_server = 1;
        else if (h2o_memis(n.base, n.len, H2O_STRLIT("date")))
            has_date = 1;
        else if (h2o_memis(n.base, n.len, H2O_STRLIT("x-request-id")))
            has_request_id = 1;
    }
    switch (cfg->server_header_transformation) {
    case LG_SERVER_OVERWRITE:
        if (has_server)
            lg_headers_set(s->pool, &head->headers, LG_LIT("server"), cfg->server_name);
        else
            lg_headers_add(s->pool, &head->headers, LG_LIT("server"), cfg->server_name);
        break;
    case LG_SERVER_APPEND_IF_ABSENT:
        if (!has_server)
            lg_headers_add(s->pool, &head->headers, LG_LIT("server"), cfg->server_name);
        break;
    case LG_SERVER_PASS_THROUGH:
        break;
    }
    if (!has_date)
        lg_headers_add(s->pool, &head->headers, LG_LIT("date"), h2o_strdup(s->pool, date_header().base, H2O_TIMESTR_RFC1123_LEN));
    if (cfg->always_set_request_id_in_response && s->info.request_id.base != NULL && !has_request_id)
        lg_headers_add(s->pool, &head->headers, LG_LIT("x-request-id"), s->info.request_id);
}

/* The rest of Envoy's transformUpgradeResponseFromH1toH2 (the codec turns 101 into 200). */
static void upgrade_response_to_h2(lg_resp_head_t *head)
{
    lg_headers_remove(&head->headers, H2O_STRLIT("upgrade"));
    lg_headers_remove(&head->headers, H2O_STRLIT("connection"));
    h2o_iovec_t cl = lg_headers_get(&head->headers, H2O_STRLIT("content-length"));
    if (cl.len == 1 && cl.base[0] == '0')
        lg_headers_remove(&head->headers, H2O_STRLIT("content-length"));
}

void lg_hcm_encode_headers(lg_hcm_stream_t *s, lg_resp_head_t *head, int end_stream)
{
    if (s->destroyed || s->downstream == NULL)
        return;
    for (size_t i = s->n_filters; i-- != 0;) {
        lg_http_filter_t *f = s->filters[i];
        if (f->type->encode_headers != NULL && !f->type->is_terminal)
            f->type->encode_headers(f, head, end_stream);
    }
    if (s->h2_ext_connect)
        upgrade_response_to_h2(head);
    finalize_response_head(s, head);
    /* Envoy's request_timeout ends when the response starts. */
    lg_timer_stop(&s->request_timer);
    s->resp = head;
    s->info.response = head;
    s->info.response_code = head->status;
    if (s->info.response_code_details.base == NULL)
        s->info.response_code_details = LG_LIT("via_upstream");
    s->response_started = 1;
    s->response_ended = end_stream;
    count_response_start(s, head->status);
    stream_touch(s);
    if (end_stream)
        s->info.last_downstream_tx_us = lg_now_us();
    /* Envoy's encodeHeaders, in its order: the drainClose() check (src/core/server.c,
     * downstream_cx_drain_close), then the overload manager's disable_http_keepalive, which ends
     * the connection after this response counting only downstream_cx_overload_disable_keepalive */
    if (!s->conn->draining && lg_server_drain_close(s->conn))
        lg_hcm_conn_drain(s->conn);
    if (!s->conn->draining && !s->conn->listener->bypass_overload_manager &&
        lg_overload_decide(s->conn->worker->overload[LG_OVERLOAD_DISABLE_HTTP_KEEPALIVE])) {
        STAT_INC(s->conn, downstream_cx_overload_disable_keepalive);
        conn_start_drain(s->conn);
    }
    s->downstream->ops->send_headers(s->downstream, head, end_stream);
}

void lg_hcm_encode_data(lg_hcm_stream_t *s, h2o_iovec_t data, int end_stream)
{
    if (s->destroyed || s->downstream == NULL)
        return;
    for (size_t i = s->n_filters; i-- != 0;) {
        lg_http_filter_t *f = s->filters[i];
        if (f->type->encode_data != NULL && !f->type->is_terminal)
            f->type->encode_data(f, data, end_stream);
    }
    s->info.bytes_sent += data.len;
    s->response_ended = end_stream;
    if (end_stream)
        s->info.last_downstream_tx_us = lg_now_us();
    stream_touch(s);
    s->downstream->ops->send_data(s->downstream, data, end_stream);
}

void lg_hcm_encode_trailers(lg_hcm_stream_t *s, lg_headers_t *trailers)
{
    if (s->destroyed || s->downstream == NULL)
        return;
    for (size_t i = s->n_filters; i-- != 0;) {
        lg_http_filter_t *f = s->filters[i];
        if (f->type->encode_trailers != NULL && !f->type->is_terminal)
            f->type->encode_trailers(f, trailers);
    }
    s->info.response_trailers = trailers;
    s->response_ended = 1;
    s->info.last_downstream_tx_us = lg_now_us();
    s->downstream->ops->send_trailers(s->downstream, trailers);
}

/* gRPC status for an HTTP status, as Envoy's Grpc::Utility::httpToGrpcStatus. */
static int http_to_grpc_status(int status)
{
    switch (status) {
    case 400:
        return 13; /* INTERNAL */
    case 401:
        return 16; /* UNAUTHENTICATED */
    case 403:
        return 7; /* PERMISSION_DENIED */
    case 404:
        return 12; /* UNIMPLEMENTED */
    case 429:
    case 502:
    case 503:
    case 504:
        return 14; /* UNAVAILABLE */
    default:
        return 2; /* UNKNOWN */
    }
}

void lg_hcm_send_local_reply(lg_hcm_stream_t *s, int status, h2o_iovec_t body, const char *details, uint32_t flags)
{
    lg_hcm_send_local_reply_ex(s, status, body, details, flags, NULL);
}

void lg_hcm_stat_inc(lg_hcm_stream_t *s, size_t idx)
{
    LG_STAT_INC(s->conn->config->stats, s->conn->worker->index, idx);
}

static void send_local_reply(lg_hcm_stream_t *s, int status, h2o_iovec_t body, const char *details, uint32_t flags,
                             const lg_headers_t *extra, int grpc_status);

void lg_hcm_send_local_reply_ex(lg_hcm_stream_t *s, int status, h2o_iovec_t body, const char *details, uint32_t flags,
                                const lg_headers_t *extra)
{
    send_local_reply(s, status, body, details, flags, extra, -1);
}

/* Envoy's Utility::sendLocalReply; grpc_status -1 derives it from `status`. */
static void send_local_reply(lg_hcm_stream_t *s, int status, h2o_iovec_t body, const char *details, uint32_t flags,
                             const lg_headers_t *extra, int grpc_status)
{
    if (s->destroyed)
        return;
    s->info.response_flags |= flags;
    s->info.response_code_details = h2o_iovec_init(details, strlen(details));
    if (s->response_started) {
        /* Too late for a reply: Envoy resets the stream. */
        lg_hcm_reset_stream(s);
        return;
    }
    s->local_reply = 1;
    lg_resp_head_t *head = h2o_mem_alloc_pool(s->pool, sizeof(*head));
    *head = (lg_resp_head_t){.status = status, .version = s->downstream->version};
    int head_only = s->req != NULL && h2o_memis(s->req->method.base, s->req->method.len, H2O_STRLIT("HEAD"));
    if (s->is_grpc) {
        /* Trailers-only gRPC response, as Envoy's local replies to gRPC requests. */
        char *code = h2o_mem_alloc_pool(s->pool, 8);
        int n = snprintf(code, 8, "%d", grpc_status >= 0 ? grpc_status : http_to_grpc_status(status));
        head->status = 200;
        lg_headers_add(s->pool, &head->headers, LG_LIT("content-type"), LG_LIT("application/grpc"));
        lg_headers_add(s->pool, &head->headers, LG_LIT("grpc-status"), h2o_iovec_init(code, n));
        if (body.len != 0 && !head_only)
            lg_headers_add(s->pool, &head->headers, LG_LIT("grpc-message"), grpc_message_encode(s->pool, body));
        body = h2o_iovec_init(NULL, 0);
    } else if (body.len != 0) {
        lg_headers_add(s->pool, &head->headers, LG_LIT("content-length"), lg_u64_to_dec_pool(s->pool, body.len));
        lg_headers_add(s->pool, &head->headers, LG_LIT("content-type"), LG_LIT("text/plain"));
    } else if (status >= 200 && status != 204 && status != 304) {
        lg_headers_add(s->pool, &head->headers, LG_LIT("content-length"), LG_LIT("0"));
    }
    for (size_t i = 0; extra != NULL && i != extra->size; ++i)
        lg_headers_add(s->pool, &head->headers, extra->entries[i].name, extra->entries[i].value);
    if (head_only)
        body = h2o_iovec_init(NULL, 0);
    /* The encode filters see local replies too (Envoy runs them). */
    for (size_t i = s->n_filters; i-- != 0;) {
        lg_http_filter_t *f = s->filters[i];
        if (f->type->encode_headers != NULL && !f->type->is_terminal)
            f->type->encode_headers(f, head, body.len == 0);
    }
    finalize_response_head(s, head);
    s->resp = head;
    s->info.response = head;
    s->info.response_code = head->status;
    s->response_started = 1;
    count_response_start(s, status);
    lg_stream_t *ds = s->downstream;
    if (body.len == 0) {
        s->response_ended = 1;
        ds->ops->send_headers(ds, head, 1);
    } else {
        ds->ops->send_headers(ds, head, 0);
        if (s->destroyed)
            return;
        s->response_ended = 1;
        s->info.bytes_sent += body.len;
        ds->ops->send_data(ds, body, 1);
    }
}

/* Envoy's maybeRequestTimeoutCode: 504 once the request is complete, else 408. */
static int timeout_status(lg_hcm_stream_t *s)
{
    return s->request_ended ? 504 : 408;
}

static void stream_idle_timeout(lg_timer_t *t)
{
    lg_hcm_stream_t *s = H2O_STRUCT_FROM_MEMBER(lg_hcm_stream_t, idle_timer, t);
    STAT_INC(s->conn, downstream_rq_idle_timeout);
    lg_hcm_send_local_reply(s, timeout_status(s), LG_LIT("stream timeout"), "stream_idle_timeout", LG_RF(STREAM_IDLE_TIMEOUT));
}

static void request_timeout(lg_timer_t *t)
{
    lg_hcm_stream_t *s = H2O_STRUCT_FROM_MEMBER(lg_hcm_stream_t, request_timer, t);
    STAT_INC(s->conn, downstream_rq_timeout);
    lg_hcm_send_local_reply(s, timeout_status(s), LG_LIT("request timeout"), "request_overall_timeout", 0);
}

static void duration_timeout(lg_timer_t *t)
{
    lg_hcm_stream_t *s = H2O_STRUCT_FROM_MEMBER(lg_hcm_stream_t, duration_timer, t);
    STAT_INC(s->conn, downstream_rq_max_duration_reached);
    send_local_reply(s, timeout_status(s), LG_LIT("downstream duration timeout"), "max_duration_timeout", 0, NULL,
                     4 /* DEADLINE_EXCEEDED */);
}
