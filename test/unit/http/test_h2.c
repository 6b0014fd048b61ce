/*
 * The HTTP/2 codec, both sides on one loop over a socketpair: a client codec
 * talks to a server codec; a raw nghttp2 session stands in for misbehaving
 * peers.
 */
#include <fcntl.h>
#include <sys/ioctl.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>
#include <h2o/socket.h>
#include "legate/common.h"
#include "legate/http.h"
#include "legate/h2.h"
#include "test.h"

static h2o_evloop_t *loop;
static lg_loop_t lgloop;

/* Body bytes: byte at offset o is o % 251; any slice of `pattern` from
 * o % 251 holds the right bytes for up to CHUNK_MAX. */
#define CHUNK_MAX 65536
static char pattern[CHUNK_MAX + 251];

/* ---- one stream as its driver sees it (either side) --------------------- */

typedef struct st_tstream_t {
    lg_stream_t *s;
    h2o_mem_pool_t pool;
    lg_req_head_t *req;
    lg_resp_head_t *resp;
    int headers_end, ninfo, info_status, got_end, rx_bad;
    size_t rx_bytes, held;
    int hold; /* do not consume */
    lg_headers_t *rx_trailers;
    size_t tx_total, tx_queued, tx_inflight, tx_sent, chunk, window;
    lg_headers_t *tx_trailers;
    int trailers_sent, completed, resets;
    int paused_edges, resumed_edges; /* on_flow */
    lg_reset_reason_t reason;
} tstream_t;

#define MAX_T 512
static tstream_t *srv_t[MAX_T], *cli_t[MAX_T];
static size_t nsrv, ncli;

static size_t default_chunk = 16384; /* send_data size of new test streams */

static tstream_t *tstream_new(void)
{
    tstream_t *t = lg_calloc(1, sizeof(*t));
    h2o_mem_init_pool(&t->pool);
    t->chunk = default_chunk;
    t->window = 1 << 20;
    return t;
}

static void tstreams_clear(void)
{
    for (size_t i = 0; i != nsrv; ++i) {
        h2o_mem_clear_pool(&srv_t[i]->pool);
        free(srv_t[i]);
    }
    for (size_t i = 0; i != ncli; ++i) {
        h2o_mem_clear_pool(&cli_t[i]->pool);
        free(cli_t[i]);
    }
    nsrv = ncli = 0;
}

static void add_header(tstream_t *t, lg_headers_t *h, const char *name, const char *value)
{
    lg_headers_add(&t->pool, h, h2o_iovec_init(name, strlen(name)), h2o_iovec_init(value, strlen(value)));
}

/* Heads live in the codec's stream: keep copies to check after the stream is gone. */
static h2o_iovec_t copy_iov(tstream_t *t, h2o_iovec_t v)
{
    return v.base == NULL ? v : h2o_strdup(&t->pool, v.base, v.len);
}

static lg_headers_t *dup_headers(tstream_t *t, const lg_headers_t *h)
{
    lg_headers_t *copy = h2o_mem_alloc_pool(&t->pool, sizeof(*copy));
    *copy = (lg_headers_t){NULL};
    for (size_t i = 0; i != h->size; ++i)
        lg_headers_add(&t->pool, copy, copy_iov(t, h->entries[i].name), copy_iov(t, h->entries[i].value));
    return copy;
}

static lg_req_head_t *dup_req(tstream_t *t, const lg_req_head_t *r)
{
    lg_req_head_t *c = h2o_mem_alloc_pool(&t->pool, sizeof(*c));
    *c = (lg_req_head_t){copy_iov(t, r->method),      copy_iov(t, r->scheme),   copy_iov(t, r->authority),
                         copy_iov(t, r->path),        copy_iov(t, r->protocol), r->version,
                         *dup_headers(t, &r->headers)};
    return c;
}

static lg_resp_head_t *dup_resp(tstream_t *t, const lg_resp_head_t *r)
{
    lg_resp_head_t *c = h2o_mem_alloc_pool(&t->pool, sizeof(*c));
    *c = (lg_resp_head_t){r->status, r->version, *dup_headers(t, &r->headers)};
    return c;
}

static void pump(tstream_t *t)
{
    while (t->s != NULL && t->tx_queued < t->tx_total && t->tx_inflight < t->window) {
        size_t n = t->tx_total - t->tx_queued;
        if (n > t->chunk)
            n = t->chunk;
        if (n > t->window - t->tx_inflight)
            n = t->window - t->tx_inflight;
        int end = t->tx_queued + n == t->tx_total && t->tx_trailers == NULL;
        t->tx_queued += n;
        t->tx_inflight += n;
        t->s->ops->send_data(t->s, h2o_iovec_init(pattern + (t->tx_queued - n) % 251, n), end);
    }
    if (t->s != NULL && t->tx_queued == t->tx_total && t->tx_trailers != NULL && !t->trailers_sent) {
        t->trailers_sent = 1;
        t->s->ops->send_trailers(t->s, t->tx_trailers);
    }
}

static void on_data(lg_stream_t *s, h2o_iovec_t data, int end_stream)
{
    tstream_t *t = s->ctx;
    for (size_t i = 0; i != data.len; ++i)
        if ((unsigned char)data.base[i] != (t->rx_bytes + i) % 251)
            t->rx_bad = 1;
    t->rx_bytes += data.len;
    t->got_end |= end_stream;
    if (t->hold)
        t->held += data.len;
    else if (data.len != 0)
        s->ops->consume(s, data.len);
}

static void on_data_sent(lg_stream_t *s, size_t bytes)
{
    tstream_t *t = s->ctx;
    t->tx_inflight -= bytes;
    t->tx_sent += bytes;
    pump(t);
}

static void on_reset(lg_stream_t *s, lg_reset_reason_t reason, const char *details)
{
    tstream_t *t = s->ctx;
    ++t->resets;
    t->reason = reason;
    t->s = NULL;
}

static void on_complete(lg_stream_t *s)
{
    tstream_t *t = s->ctx;
    ++t->completed;
    t->s = NULL;
}

/* ---- the server application --------------------------------------------- */

static struct {
    size_t resp_size;
    int send_1xx, with_trailers, hold, reset_on_headers, no_respond, pause;
    int volatile_head;    /* a response header whose bytes are scribbled over and freed right after send_headers */
    int reset_after_head; /* ops->reset right after send_headers, in the same turn */
    lg_reset_reason_t reset_reason;
    uint32_t window;
} app;

static struct {
    int closed, codec_errors;
    char codec_detail[64];
} srv_conn;

static void respond(tstream_t *t)
{
    if (t->s == NULL || t->resp != NULL || app.no_respond)
        return;
    if (app.send_1xx) {
        lg_resp_head_t *info = h2o_mem_alloc_pool(&t->pool, sizeof(*info));
        *info = (lg_resp_head_t){100, LG_HTTP_2};
        t->s->ops->send_headers(t->s, info, 0);
    }
    t->resp = h2o_mem_alloc_pool(&t->pool, sizeof(*t->resp));
    *t->resp = (lg_resp_head_t){200, LG_HTTP_2};
    char *n = h2o_mem_alloc_pool(&t->pool, 32);
    snprintf(n, 32, "%zu", t->rx_bytes);
    add_header(t, &t->resp->headers, "x-req-bytes", n);
    add_header(t, &t->resp->headers, "connection", "close");
    add_header(t, &t->resp->headers, "transfer-encoding", "chunked");
    add_header(t, &t->resp->headers, "x-test", "yes");
    if (app.with_trailers) {
        t->tx_trailers = h2o_mem_alloc_pool(&t->pool, sizeof(*t->tx_trailers));
        *t->tx_trailers = (lg_headers_t){NULL};
        add_header(t, t->tx_trailers, "grpc-status", "0");
    }
    char *vname = NULL, *vvalue = NULL;
    if (app.volatile_head) { /* upper case: names are lower-cased on the wire */
        vname = strdup("X-Volatile-Name"), vvalue = strdup("kept value");
        lg_headers_add(&t->pool, &t->resp->headers, h2o_iovec_init(vname, strlen(vname)), h2o_iovec_init(vvalue, strlen(vvalue)));
    }
    t->tx_total = app.resp_size;
    int end = t->tx_total == 0 && t->tx_trailers == NULL;
    t->s->ops->send_headers(t->s, t->resp, end);
    if (vname != NULL) {
        memset(vname, 'Z', strlen(vname)), memset(vvalue, 'Z', strlen(vvalue));
        free(vname), free(vvalue);
    }
    if (app.reset_after_head) {
        lg_stream_t *s = t->s;
        t->s = NULL;
        s->ops->reset(s, LG_RESET_LOCAL);
        return;
    }
    if (!end && t->tx_total == 0 && t->tx_trailers == NULL)
        t->s->ops->send_data(t->s, h2o_iovec_init(NULL, 0), 1);
    pump(t);
}

static void srv_on_headers(lg_stream_t *s, void *head, int end_stream)
{
    tstream_t *t = s->ctx;
    t->req = dup_req(t, head);
    t->headers_end = end_stream;
    if (app.pause)
        s->ops->read_pause(s, 1);
    if (app.reset_on_headers) {
        t->s = NULL;
        s->ops->reset(s, app.reset_reason);
        return;
    }
    if (end_stream)
        respond(t);
}

static void srv_on_data(lg_stream_t *s, h2o_iovec_t data, int end_stream)
{
    tstream_t *t = s->ctx;
    on_data(s, data, end_stream);
    if (end_stream)
        respond(t);
}

static void srv_on_trailers(lg_stream_t *s, lg_headers_t *trailers)
{
    tstream_t *t = s->ctx;
    t->rx_trailers = dup_headers(t, trailers);
    t->got_end = 1;
    respond(t);
}

static void srv_on_flow(lg_stream_t *s, int paused)
{
    tstream_t *t = s->ctx;
    if (paused)
        ++t->paused_edges;
    else
        ++t->resumed_edges;
}

static const lg_stream_cbs_t srv_stream_cbs = {srv_on_headers, NULL,     srv_on_data, srv_on_trailers,
                                               on_data_sent,   on_reset, on_complete, srv_on_flow};

static void srv_on_new_stream(lg_server_conn_t *c, lg_stream_t *s)
{
    tstream_t *t = tstream_new();
    t->s = s;
    t->hold = app.hold;
    if (app.window != 0)
        t->window = app.window;
    s->cbs = &srv_stream_cbs;
    s->ctx = t;
    if (nsrv < MAX_T)
        srv_t[nsrv++] = t;
}

static void srv_on_close(lg_server_conn_t *c, unsigned how)
{
    ++srv_conn.closed;
}

static void srv_on_codec_error(lg_server_conn_t *c, int status, const char *details)
{
    ++srv_conn.codec_errors;
    snprintf(srv_conn.codec_detail, sizeof(srv_conn.codec_detail), "%s", details);
}

static const lg_server_conn_cbs_t srv_cbs = {srv_on_new_stream, srv_on_close, srv_on_codec_error};

/* ---- the client application --------------------------------------------- */

static struct {
    int closed, goaways, stream_done;
    lg_reset_reason_t close_reason;
} cli_conn;

static void cli_on_headers(lg_stream_t *s, void *head, int end_stream)
{
    tstream_t *t = s->ctx;
    t->resp = dup_resp(t, head);
    t->headers_end = end_stream;
    t->got_end |= end_stream;
}

static void cli_on_informational(lg_stream_t *s, lg_resp_head_t *head)
{
    tstream_t *t = s->ctx;
    ++t->ninfo;
    t->info_status = head->status;
}

static void cli_on_trailers(lg_stream_t *s, lg_headers_t *trailers)
{
    tstream_t *t = s->ctx;
    t->rx_trailers = dup_headers(t, trailers);
    t->got_end = 1;
}

static const lg_stream_cbs_t cli_stream_cbs = {cli_on_headers, cli_on_informational, on_data, cli_on_trailers, on_data_sent,
                                               on_reset,       on_complete};

static void cli_on_stream_done(lg_client_conn_t *c)
{
    ++cli_conn.stream_done;
}

static void cli_on_goaway(lg_client_conn_t *c)
{
    ++cli_conn.goaways;
}

static void cli_on_close(lg_client_conn_t *c, lg_reset_reason_t reason)
{
    ++cli_conn.closed;
    cli_conn.close_reason = reason;
}

static const lg_client_conn_cbs_t cli_cbs = {cli_on_stream_done, cli_on_goaway, cli_on_close};

/* Starts a request; `body` bytes of pattern, optional trailers. */
static tstream_t *request(lg_client_conn_t *c, const char *method, const char *path, size_t body, int trailers)
{
    lg_stream_t *s = c->ops->new_stream(c);
    if (s == NULL)
        return NULL;
    tstream_t *t = tstream_new();
    t->s = s;
    s->cbs = &cli_stream_cbs;
    s->ctx = t;
    cli_t[ncli++] = t;
    t->req = h2o_mem_alloc_pool(&t->pool, sizeof(*t->req));
    *t->req = (lg_req_head_t){.method = h2o_iovec_init(method, strlen(method)),
                              .scheme = LG_LIT("http"),
                              .authority = LG_LIT("example.com"),
                              .path = h2o_iovec_init(path, strlen(path)),
                              .version = LG_HTTP_2};
    add_header(t, &t->req->headers, "user-agent", "test");
    add_header(t, &t->req->headers, "cookie", "a=1");
    add_header(t, &t->req->headers, "cookie", "b=2");
    add_header(t, &t->req->headers, "connection", "keep-alive");
    if (trailers) {
        t->tx_trailers = h2o_mem_alloc_pool(&t->pool, sizeof(*t->tx_trailers));
        *t->tx_trailers = (lg_headers_t){NULL};
        add_header(t, t->tx_trailers, "x-checksum", "abc");
    }
    t->tx_total = body;
    int end = body == 0 && !trailers;
    s->ops->send_headers(s, t->req, end);
    pump(t);
    return t;
}

/* ---- harness -------------------------------------------------------------- */

static lg_server_conn_t *srv;
static lg_client_conn_t *cli;
static int fds[2];

static void reset_state(void)
{
    tstreams_clear();
    memset(&app, 0, sizeof(app));
    memset(&srv_conn, 0, sizeof(srv_conn));
    memset(&cli_conn, 0, sizeof(cli_conn));
}

static void make_pair(const lg_h2_settings_t *ss, const lg_h2_options_t *so, const lg_h2_settings_t *cs)
{
    reset_state();
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0)
        abort();
    h2o_socket_t *a = h2o_evloop_socket_create(loop, fds[0], 0);
    h2o_socket_t *b = h2o_evloop_socket_create(loop, fds[1], 0);
    srv = lg_h2_server_conn_new_ex(&lgloop, a, ss, so, &srv_cbs, NULL);
    cli = lg_h2_client_conn_new(&lgloop, b, cs, &cli_cbs, NULL);
}

typedef int (*cond_fn)(void);

static int run_until(cond_fn cond, int max_ms)
{
    uint64_t deadline = lg_now_ms() + (uint64_t)max_ms;
    while (!cond()) {
        if (lg_now_ms() > deadline)
            return 0;
        h2o_evloop_run(loop, 10);
    }
    return 1;
}

static void run_for(int ms)
{
    uint64_t deadline = lg_now_ms() + (uint64_t)ms;
    while (lg_now_ms() < deadline)
        h2o_evloop_run(loop, 5);
}

static int all_done(void)
{
    for (size_t i = 0; i != ncli; ++i)
        if (cli_t[i]->s != NULL)
            return 0;
    for (size_t i = 0; i != nsrv; ++i)
        if (srv_t[i]->s != NULL)
            return 0;
    return 1;
}

static int both_closed(void)
{
    return srv_conn.closed && cli_conn.closed;
}

static void close_pair(void)
{
    if (!cli_conn.closed)
        cli->ops->close(cli);
    run_until(both_closed, 2000);
    ok(both_closed(), "both connections closed");
}

static lg_h2_settings_t defaults(void)
{
    lg_h2_settings_t s;
    lg_h2_settings_init(&s);
    return s;
}

static int header_is(const lg_headers_t *h, const char *name, const char *value)
{
    h2o_iovec_t v = lg_headers_get(h, name, strlen(name));
    return v.base != NULL && h2o_memis(v.base, v.len, value, strlen(value));
}

/* ---- tests ---------------------------------------------------------------- */

static void test_get(void)
{
    lg_h2_settings_t s = defaults();
    make_pair(&s, NULL, &s);
    app.resp_size = 5;
    tstream_t *c = request(cli, "GET", "/hello?x=1", 0, 0);
    ok(c != NULL, "new_stream");
    ok(run_until(all_done, 2000), "GET completes");
    ok(nsrv == 1, "one server stream");
    tstream_t *st = srv_t[0];
    ok(st->completed == 1 && c->completed == 1, "on_complete on both sides");
    ok(st->req != NULL && h2o_memis(st->req->method.base, st->req->method.len, H2O_STRLIT("GET")), "method");
    ok(h2o_memis(st->req->path.base, st->req->path.len, H2O_STRLIT("/hello?x=1")), "path");
    ok(h2o_memis(st->req->authority.base, st->req->authority.len, H2O_STRLIT("example.com")), "authority");
    ok(h2o_memis(st->req->scheme.base, st->req->scheme.len, H2O_STRLIT("http")), "scheme");
    ok(st->req->version == LG_HTTP_2 && st->headers_end, "version, end_stream on headers");
    ok(header_is(&st->req->headers, "user-agent", "test"), "regular header");
    ok(header_is(&st->req->headers, "cookie", "a=1; b=2"), "cookies joined");
    ok(lg_headers_find(&st->req->headers, H2O_STRLIT("cookie"), 0) >= 0 &&
           lg_headers_find(&st->req->headers, H2O_STRLIT("cookie"),
                           (size_t)lg_headers_find(&st->req->headers, H2O_STRLIT("cookie"), 0) + 1) < 0,
       "one cookie header");
    ok(lg_headers_get(&st->req->headers, H2O_STRLIT("connection")).base == NULL, "connection header not sent");
    ok(c->resp != NULL && c->resp->status == 200, "status 200");
    ok(header_is(&c->resp->headers, "x-test", "yes"), "response header");
    ok(lg_headers_get(&c->resp->headers, H2O_STRLIT("connection")).base == NULL &&
           lg_headers_get(&c->resp->headers, H2O_STRLIT("transfer-encoding")).base == NULL,
       "connection-specific response headers dropped");
    ok(c->rx_bytes == 5 && !c->rx_bad && c->got_end, "response body");
    ok(cli_conn.stream_done >= 1, "on_stream_done");
    ok(cli->ops->active_streams(cli) == 0, "no active stream");
    close_pair();
}

static void test_big_bodies(void)
{
    lg_h2_settings_t s = defaults();
    s.initial_stream_window_size = 65535;
    s.initial_connection_window_size = 65535;
    make_pair(&s, NULL, &s);
    size_t size = 10 * 1024 * 1024;
    app.resp_size = size;
    app.window = 256 * 1024;
    tstream_t *c = request(cli, "POST", "/upload", size, 0);
    c->window = 256 * 1024;
    ok(run_until(all_done, 20000), "10 MiB both ways completes");
    tstream_t *st = srv_t[0];
    ok(st->rx_bytes == size && !st->rx_bad && st->got_end, "server got 10 MiB intact (%zu)", st->rx_bytes);
    ok(c->rx_bytes == size && !c->rx_bad && c->got_end, "client got 10 MiB intact (%zu)", c->rx_bytes);
    ok(c->tx_sent == size && st->tx_sent == size, "on_data_sent accounts every byte");
    ok(header_is(&c->resp->headers, "x-req-bytes", "10485760"), "response after the whole request");
    ok(st->completed && c->completed, "both complete");
    close_pair();
}

#define BACKPRESSURE_LIMIT (128 * 1024)

static int srv_stream_exists(void)
{
    return nsrv == 1 && srv_t[0]->rx_bytes >= BACKPRESSURE_LIMIT;
}

/* The credit of held bytes goes back while the stream holds less than the buffer
 * limit, then only as they are consumed: a window smaller than the limit does not
 * stop the sender before the limit, and the sender stops within one window past it. */
static void test_backpressure(void)
{
    lg_h2_settings_t s = defaults();
    s.initial_stream_window_size = 65535;
    s.initial_connection_window_size = 65535;
    s.buffer_limit = BACKPRESSURE_LIMIT;
    make_pair(&s, NULL, &s);
    app.hold = 1;
    app.resp_size = 10;
    tstream_t *c = request(cli, "POST", "/slow", 1024 * 1024, 0);
    ok(run_until(srv_stream_exists, 2000), "server receives the buffer limit through a smaller window");
    run_for(100);
    tstream_t *st = srv_t[0];
    ok(st->rx_bytes >= BACKPRESSURE_LIMIT && st->rx_bytes < BACKPRESSURE_LIMIT + 65535,
       "unconsumed data stops the sender within a window past the limit (%zu)", st->rx_bytes);
    ok(st->paused_edges == 1 && st->resumed_edges == 0, "the driver is told of the pause once (%d, %d)", st->paused_edges,
       st->resumed_edges);
    ok(c->tx_sent < BACKPRESSURE_LIMIT + 65535, "client saw only that much sent (%zu)", c->tx_sent);
    /* Consume everything held, then let the rest flow. */
    st->hold = 0;
    st->s->ops->consume(st->s, st->held);
    ok(run_until(all_done, 5000), "request completes once consumed");
    ok(st->rx_bytes == 1024 * 1024 && !st->rx_bad, "all bytes arrive");
    ok(c->completed && st->completed, "both complete");
    ok(st->paused_edges == 1 && st->resumed_edges == 1, "and of the resume once (%d, %d)", st->paused_edges, st->resumed_edges);
    close_pair();
}

/* A driver that consumes every byte as it is delivered never holds the limit, even
 * when one read brings several times the limit: no pause is told (a router keeping a
 * body for a retry gives the retry up on the bytes it sees; Envoy counts no pause). */
static void test_no_pause_when_consumed_at_once(void)
{
    lg_h2_settings_t s = defaults();
    s.initial_stream_window_size = 1024 * 1024;
    s.initial_connection_window_size = 1024 * 1024;
    s.buffer_limit = 16 * 1024;
    make_pair(&s, NULL, &s);
    app.resp_size = 10;
    tstream_t *c = request(cli, "POST", "/fast", 1024 * 1024, 0);
    ok(run_until(all_done, 5000) && c->completed, "1 MiB through a 16 KiB limit completes");
    tstream_t *st = srv_t[0];
    ok(st->rx_bytes == 1024 * 1024 && !st->rx_bad, "all bytes arrive");
    ok(st->paused_edges == 0 && st->resumed_edges == 0, "no pause told (%d, %d)", st->paused_edges, st->resumed_edges);
    close_pair();
}

static int srv_has_head(void)
{
    return nsrv == 1;
}

static void test_read_pause(void)
{
    lg_h2_settings_t s = defaults();
    make_pair(&s, NULL, &s);
    app.no_respond = 1;
    app.pause = 1;
    tstream_t *c = request(cli, "POST", "/pause", 50000, 0);
    ok(run_until(srv_has_head, 2000), "head arrives");
    tstream_t *st = srv_t[0];
    run_for(50);
    ok(st->rx_bytes == 0 && c->tx_sent == 50000, "nothing delivered while paused, the sender is not blocked by the window");
    st->s->ops->read_pause(st->s, 0);
    run_for(50);
    ok(st->rx_bytes == 50000 && st->got_end && !st->rx_bad, "delivered after resume, with end_stream");
    app.no_respond = 0;
    respond(st);
    ok(run_until(all_done, 2000) && c->completed && st->completed, "completes");
    close_pair();
}

static int cli_all_done(void)
{
    for (size_t i = 0; i != ncli; ++i)
        if (cli_t[i]->s != NULL)
            return 0;
    return 1;
}

static void test_goaway_refuses(void)
{
    lg_h2_settings_t s = defaults();
    make_pair(&s, NULL, &s);
    app.no_respond = 1;
    tstream_t *c1 = request(cli, "GET", "/1", 0, 0);
    ok(run_until(srv_has_head, 2000), "first stream processed");
    srv->ops->drain(srv);
    tstream_t *c2 = request(cli, "GET", "/2", 0, 0); /* crosses the GOAWAY */
    run_for(50);
    ok(c2 != NULL && c2->resets == 1 && c2->reason == LG_RESET_REFUSED_STREAM, "stream above last-stream-id refused (retriable)");
    ok(c1->s != NULL && nsrv == 1, "stream below last-stream-id kept");
    ok(cli_conn.goaways == 1, "on_goaway");
    app.no_respond = 0;
    respond(srv_t[0]);
    ok(run_until(cli_all_done, 2000) && c1->completed, "kept stream completes");
    ok(run_until(both_closed, 2000), "both close afterwards");
}

static void test_trailers_and_1xx(void)
{
    lg_h2_settings_t s = defaults();
    make_pair(&s, NULL, &s);
    app.resp_size = 1000;
    app.with_trailers = 1;
    app.send_1xx = 1;
    tstream_t *c = request(cli, "POST", "/grpc", 3000, 1);
    ok(run_until(all_done, 2000), "completes");
    tstream_t *st = srv_t[0];
    ok(st->rx_bytes == 3000 && st->rx_trailers != NULL && header_is(st->rx_trailers, "x-checksum", "abc"), "request trailers");
    ok(c->ninfo == 1 && c->info_status == 100, "1xx delivered through on_informational");
    ok(c->resp != NULL && c->resp->status == 200, "final head after 1xx");
    ok(c->rx_bytes == 1000 && c->rx_trailers != NULL && header_is(c->rx_trailers, "grpc-status", "0"), "response trailers");
    ok(c->completed && st->completed, "both complete");
    /* Trailers right after headers, no body. */
    app.send_1xx = 0;
    app.resp_size = 0;
    tstream_t *c2 = request(cli, "POST", "/t", 0, 1);
    ok(run_until(all_done, 2000), "trailers-only completes");
    ok(c2->completed && c2->rx_trailers != NULL && srv_t[1]->rx_trailers != NULL, "trailers without body both ways");
    close_pair();
}

static void test_many_streams(void)
{
    lg_h2_settings_t s = defaults();
    make_pair(&s, NULL, &s);
    app.resp_size = 20000;
    run_for(20); /* SETTINGS exchange */
    size_t n = 0;
    for (int i = 0; i != 100; ++i)
        if (request(cli, "POST", "/many", (size_t)i * 1000, i % 2) != NULL)
            ++n;
    ok(n == 100, "100 streams opened (%zu)", n);
    ok(run_until(all_done, 10000), "all complete");
    size_t good = 0;
    for (size_t i = 0; i != ncli; ++i)
        good += cli_t[i]->completed && cli_t[i]->rx_bytes == 20000 && !cli_t[i]->rx_bad;
    ok(good == 100, "100 responses intact (%zu)", good);
    good = 0;
    for (size_t i = 0; i != nsrv; ++i)
        good += srv_t[i]->completed && !srv_t[i]->rx_bad;
    ok(nsrv == 100 && good == 100, "100 requests intact");
    close_pair();
}

static int srv_saw_reset(void)
{
    return nsrv == 1 && srv_t[0]->resets == 1;
}

static void test_resets(void)
{
    lg_h2_settings_t s = defaults();
    make_pair(&s, NULL, &s);
    app.hold = 1;
    app.no_respond = 1;
    /* client reset -> server on_reset(REMOTE) */
    tstream_t *c = request(cli, "POST", "/r", 100000, 0);
    ok(run_until(srv_stream_exists, 2000) || nsrv == 1, "server stream open");
    c->s->ops->reset(c->s, LG_RESET_LOCAL);
    c->s = NULL;
    ok(run_until(srv_saw_reset, 2000), "server on_reset");
    ok(srv_t[0]->reason == LG_RESET_REMOTE, "reason REMOTE");
    ok(c->resets == 0 && c->completed == 0, "no callback after ops->reset");
    /* server reset -> client on_reset */
    app.hold = 0;
    app.no_respond = 0;
    app.reset_on_headers = 1;
    app.reset_reason = LG_RESET_LOCAL;
    tstream_t *c2 = request(cli, "GET", "/r2", 0, 0);
    ok(run_until(all_done, 2000), "server reset reaches the client");
    ok(c2->resets == 1 && c2->reason == LG_RESET_REMOTE, "client on_reset(REMOTE)");
    app.reset_reason = LG_RESET_REFUSED_STREAM;
    tstream_t *c3 = request(cli, "GET", "/r3", 0, 0);
    ok(run_until(all_done, 2000), "refused");
    ok(c3->resets == 1 && c3->reason == LG_RESET_REFUSED_STREAM, "REFUSED_STREAM -> LG_RESET_REFUSED_STREAM");
    /* reset before send_headers: nothing on the wire, no callback */
    lg_stream_t *s4 = cli->ops->new_stream(cli);
    size_t before = nsrv;
    s4->ops->reset(s4, LG_RESET_LOCAL);
    run_for(30);
    ok(nsrv == before && cli->ops->active_streams(cli) == 0, "stream reset before its head is forgotten");
    close_pair();
}

static int cli_saw_reset(void)
{
    return ncli != 0 && cli_t[ncli - 1]->resets == 1;
}

/* Outbound heads are copied into the stream when sent and handed to nghttp2 without a
 * copy: nothing the driver does to its strings afterwards shows, and a stream reset or
 * closed before its HEADERS went out frees them without nghttp2 reading them (ASan). */
static void test_head_lifetimes(void)
{
    lg_h2_settings_t s = defaults();
    make_pair(&s, NULL, &s);
    app.volatile_head = 1;
    app.resp_size = 3;
    /* request head strings scribbled over and freed right after send_headers */
    lg_stream_t *cs = cli->ops->new_stream(cli);
    tstream_t *c = tstream_new();
    c->s = cs, cs->cbs = &cli_stream_cbs, cs->ctx = c;
    cli_t[ncli++] = c;
    char *path = strdup("/volatile/path"), *name = strdup("X-Req-Name"), *value = strdup("req value");
    lg_req_head_t req = {.method = LG_LIT("GET"),
                         .scheme = LG_LIT("http"),
                         .authority = LG_LIT("example.com"),
                         .path = h2o_iovec_init(path, strlen(path)),
                         .version = LG_HTTP_2};
    lg_headers_add(&c->pool, &req.headers, h2o_iovec_init(name, strlen(name)), h2o_iovec_init(value, strlen(value)));
    cs->ops->send_headers(cs, &req, 1);
    memset(path, 'Z', strlen(path)), memset(name, 'Z', strlen(name)), memset(value, 'Z', strlen(value));
    free(path), free(name), free(value);
    memset(&req, 0, sizeof(req));
    ok(run_until(all_done, 2000), "request with a volatile head completes");
    ok(nsrv == 1 && srv_t[0]->req != NULL &&
           h2o_memis(srv_t[0]->req->path.base, srv_t[0]->req->path.len, H2O_STRLIT("/volatile/path")),
       "the path sent is the one given to send_headers");
    ok(nsrv == 1 && header_is(&srv_t[0]->req->headers, "x-req-name", "req value"), "request header lower-cased, value kept");
    ok(c->resp != NULL && header_is(&c->resp->headers, "x-volatile-name", "kept value"), "response header lower-cased, value kept");
    ok(c->rx_bytes == 3 && c->completed == 1, "response body");
    /* the server resets in the same turn as its send_headers: the HEADERS never leave */
    app.volatile_head = 0;
    app.reset_after_head = 1;
    tstream_t *c2 = request(cli, "GET", "/reset-after-head", 0, 0);
    ok(run_until(cli_saw_reset, 2000), "server reset after send_headers reaches the client");
    ok(c2->resp == NULL && c2->reason == LG_RESET_REMOTE, "no head before the reset");
    /* the client resets in the same turn as its send_headers: nothing reaches the server */
    app.reset_after_head = 0;
    size_t before = nsrv;
    tstream_t *c3 = request(cli, "GET", "/reset-before-flush", 0, 0);
    c3->s->ops->reset(c3->s, LG_RESET_LOCAL);
    c3->s = NULL;
    tstream_t *c4 = request(cli, "GET", "/after", 0, 0);
    ok(run_until(all_done, 2000) && c4->completed == 1, "the next request completes");
    ok(nsrv == before + 1, "the reset request never reached the server");
    /* the connection closes in the same turn as a send_headers: the stream is reset */
    tstream_t *c5 = request(cli, "GET", "/closed-before-flush", 0, 0);
    cli->ops->close(cli);
    ok(run_until(both_closed, 2000), "connection closed");
    ok(c5->resets == 1 && c5->resp == NULL, "its stream is reset, no response");
}

/* Small and large bodies through the first small block and the ones that follow it. */
static void test_body_blocks(void)
{
    lg_h2_settings_t s = defaults();
    make_pair(&s, NULL, &s);
    size_t sizes[] = {1, 983, 984, 985, 2000, 5000, 40000, 300000};
    for (size_t i = 0; i != sizeof(sizes) / sizeof(sizes[0]); ++i) {
        app.resp_size = sizes[i];
        default_chunk = 700; /* several DATA frames per block */
        tstream_t *c = request(cli, "POST", "/blocks", sizes[i], 0);
        ok(run_until(all_done, 5000), "%zu bytes both ways", sizes[i]);
        ok(c->rx_bytes == sizes[i] && !c->rx_bad && c->completed == 1, "response body of %zu bytes intact", sizes[i]);
        ok(srv_t[nsrv - 1]->rx_bytes == sizes[i] && !srv_t[nsrv - 1]->rx_bad, "request body of %zu bytes intact", sizes[i]);
    }
    default_chunk = 16384;
    close_pair();
}

static void test_drain(void)
{
    lg_h2_settings_t s = defaults();
    make_pair(&s, NULL, &s);
    app.hold = 1;
    app.no_respond = 1;
    app.resp_size = 100;
    tstream_t *c = request(cli, "POST", "/d", 200000, 0);
    ok(run_until(srv_stream_exists, 2000), "stream in flight");
    srv->ops->drain(srv);
    run_for(50);
    ok(cli_conn.goaways == 1, "client on_goaway");
    ok(cli->ops->capacity(cli) == 0 && cli->ops->new_stream(cli) == NULL, "no new stream after GOAWAY");
    ok(!srv_conn.closed && !cli_conn.closed, "connection stays for the stream in flight");
    tstream_t *st = srv_t[0];
    st->hold = 0;
    st->s->ops->consume(st->s, st->held);
    app.no_respond = 0;
    respond(st);
    ok(run_until(all_done, 5000), "in-flight stream completes after GOAWAY");
    ok(c->completed && st->completed && c->rx_bytes == 100, "completed, not reset");
    ok(run_until(both_closed, 2000), "connection closes when the last stream is done");
    ok(srv_conn.codec_errors == 0, "no codec error");
}

static void test_max_concurrent(void)
{
    lg_h2_settings_t ss = defaults(), cs = defaults();
    ss.max_concurrent_streams = 2;
    make_pair(&ss, NULL, &cs);
    run_for(30);
    ok(cli->ops->capacity(cli) == 2, "capacity honours the peer's SETTINGS (%zu)", cli->ops->capacity(cli));
    app.hold = 1;
    ok(request(cli, "POST", "/1", 10, 0) != NULL && request(cli, "POST", "/2", 10, 0) != NULL, "two streams");
    ok(cli->ops->capacity(cli) == 0 && request(cli, "POST", "/3", 10, 0) == NULL, "third refused by the codec");
    close_pair();
    ok(cli_t[0]->resets == 1 && cli_t[0]->reason == LG_RESET_CONNECTION_TERMINATION, "close resets streams");
    ok(cli_conn.close_reason == LG_RESET_LOCAL, "client on_close(LOCAL)");
}

static void test_peer_close(void)
{
    lg_h2_settings_t s = defaults();
    make_pair(&s, NULL, &s);
    app.hold = 1;
    tstream_t *c = request(cli, "POST", "/p", 500000, 0);
    ok(run_until(srv_stream_exists, 2000), "stream in flight");
    shutdown(fds[0], SHUT_RDWR);
    ok(run_until(both_closed, 3000), "both sides close");
    ok(c->resets == 1 && c->reason == LG_RESET_CONNECTION_TERMINATION, "client stream reset (%d)", (int)c->reason);
    ok(srv_t[0]->resets == 1 && srv_t[0]->reason == LG_RESET_CONNECTION_TERMINATION, "server stream reset");
    ok(cli_conn.close_reason == LG_RESET_CONNECTION_TERMINATION, "client on_close reason");
    /* server close with a stream open */
    make_pair(&s, NULL, &s);
    app.hold = 1;
    c = request(cli, "POST", "/p", 500000, 0);
    ok(run_until(srv_stream_exists, 2000), "stream in flight");
    srv->ops->close(srv);
    ok(srv_conn.closed && srv_t[0]->resets == 1, "ops->close resets at once and closes");
    ok(run_until(both_closed, 3000), "client sees the close");
    ok(c->resets == 1, "client stream reset");
}

/* ---- a raw nghttp2 client for what the codec would never send ---------- */

static struct {
    nghttp2_session *session;
    int fd;
    uint32_t rst_code, goaway_code;
    int rsts, goaways, responses, status;
} raw;

static ssize_t raw_send(nghttp2_session *session, const uint8_t *data, size_t length, int flags, void *user_data)
{
    size_t off = 0;
    while (off < length) {
        ssize_t r = write(raw.fd, data + off, length - off);
        if (r <= 0)
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        off += (size_t)r;
    }
    return (ssize_t)length;
}

static int raw_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    if (frame->hd.type == NGHTTP2_RST_STREAM) {
        ++raw.rsts;
        raw.rst_code = frame->rst_stream.error_code;
    } else if (frame->hd.type == NGHTTP2_GOAWAY) {
        ++raw.goaways;
        raw.goaway_code = frame->goaway.error_code;
    } else if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_RESPONSE) {
        ++raw.responses;
    }
    return 0;
}

static void raw_open(const lg_h2_settings_t *ss, const lg_h2_options_t *so)
{
    reset_state();
    memset(&raw, 0, sizeof(raw));
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0)
        abort();
    srv = lg_h2_server_conn_new_ex(&lgloop, h2o_evloop_socket_create(loop, fds[0], 0), ss, so, &srv_cbs, NULL);
    raw.fd = fds[1];
    nghttp2_session_callbacks *cbs;
    nghttp2_session_callbacks_new(&cbs);
    nghttp2_session_callbacks_set_send_callback(cbs, raw_send);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, raw_frame_recv);
    nghttp2_option *opt;
    nghttp2_option_new(&opt);
    nghttp2_option_set_no_http_messaging(opt, 1);
    nghttp2_session_client_new2(&raw.session, cbs, NULL, opt);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cbs);
    nghttp2_submit_settings(raw.session, NGHTTP2_FLAG_NONE, NULL, 0);
}

/* Sends what the raw session has, runs the loop, feeds back the answer. */
static void raw_exchange(void)
{
    nghttp2_session_send(raw.session);
    run_for(30);
    fcntl(raw.fd, F_SETFL, O_NONBLOCK);
    char buf[65536];
    ssize_t r;
    while ((r = read(raw.fd, buf, sizeof(buf))) > 0) {
        ssize_t rr = nghttp2_session_mem_recv(raw.session, (uint8_t *)buf, (size_t)r);
        (void)rr;
    }
    fcntl(raw.fd, F_SETFL, 0);
}

static void raw_close(void)
{
    nghttp2_session_del(raw.session);
    if (!srv_conn.closed)
        srv->ops->close(srv);
    close(raw.fd);
    run_for(10);
}

#define NV(n, v)                                                                                                               \
    {                                                                                                                          \
        (uint8_t *)n, (uint8_t *)v, sizeof(n) - 1, sizeof(v) - 1, NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE \
    }

static void raw_request(const nghttp2_nv *nva, size_t n)
{
    nghttp2_submit_request(raw.session, NULL, nva, n, NULL, NULL);
    raw_exchange();
}

static void test_malformed(void)
{
    lg_h2_settings_t s = defaults();
    lg_h2_options_t stream_errors = {.stream_error_on_invalid_http_messaging = 1};
    static const nghttp2_nv no_path[] = {NV(":method", "GET"), NV(":scheme", "http"), NV(":authority", "a")};
    static const nghttp2_nv upper[] = {NV(":method", "GET"), NV(":scheme", "http"), NV(":authority", "a"), NV(":path", "/"),
                                       NV("X-Upper", "1")};
    static const nghttp2_nv conn_hdr[] = {NV(":method", "GET"), NV(":scheme", "http"), NV(":authority", "a"), NV(":path", "/"),
                                          NV("connection", "close")};
    static const nghttp2_nv good[] = {NV(":method", "GET"), NV(":scheme", "http"), NV(":path", "/ok"), NV("host", "h.example"),
                                      NV("cookie", "x=1")};
    const nghttp2_nv *bad[] = {no_path, upper, conn_hdr};
    size_t nbad[] = {3, 5, 5};
    const char *names[] = {"missing :path", "uppercase name", "connection header"};

    for (size_t i = 0; i != 3; ++i) {
        /* Envoy's default: the connection goes with GOAWAY(PROTOCOL_ERROR). */
        raw_open(&s, NULL);
        raw_request(bad[i], nbad[i]);
        ok(raw.goaways == 1 && raw.goaway_code == NGHTTP2_PROTOCOL_ERROR, "%s: GOAWAY PROTOCOL_ERROR", names[i]);
        ok(srv_conn.closed && srv_conn.codec_errors == 1 && nsrv == 0, "%s: codec error, closed, no stream", names[i]);
        raw_close();
        /* stream_error_on_invalid_http_messaging: only the stream. */
        raw_open(&s, &stream_errors);
        raw_request(bad[i], nbad[i]);
        ok(raw.rsts == 1 && raw.rst_code == NGHTTP2_PROTOCOL_ERROR && raw.goaways == 0, "%s: RST_STREAM PROTOCOL_ERROR", names[i]);
        ok(!srv_conn.closed && srv_conn.codec_errors == 1 && nsrv == 0, "%s: codec error, connection kept", names[i]);
        ok_str(srv_conn.codec_detail, i == 0 ? LG_H2_DETAIL_MESSAGING : LG_H2_DETAIL_INVALID_HEADER);
        raw_request(good, 5);
        ok(raw.responses == 1 && nsrv == 1, "%s: next request served", names[i]);
        if (nsrv == 1) {
            ok(h2o_memis(srv_t[0]->req->authority.base, srv_t[0]->req->authority.len, H2O_STRLIT("h.example")),
               "host becomes the authority");
            ok(lg_headers_get(&srv_t[0]->req->headers, H2O_STRLIT("host")).base == NULL, "host not kept");
        }
        raw_close();
    }

    /* Too many headers: the stream is reset, the connection stays. */
    raw_open(&s, NULL);
    nghttp2_nv many[120];
    memcpy(many, good, sizeof(good));
    for (size_t i = 5; i != 120; ++i)
        many[i] = (nghttp2_nv)NV("x-h", "v");
    raw_request(many, 120);
    ok(raw.rsts == 1 && raw.goaways == 0 && nsrv == 0, "too many headers: stream reset");
    ok_str(srv_conn.codec_detail, LG_H2_DETAIL_TOO_MANY_HEADERS);
    raw_close();

    /* Garbage instead of a preface. */
    raw_open(&s, NULL);
    ok(write(raw.fd, "GET / HTTP/1.1\r\n\r\nxxxxxxxxxxxxxxxxxxxxxxxxxxxx", 46) == 46, "write");
    run_for(30);
    ok(srv_conn.closed && srv_conn.codec_errors == 1, "bad preface closes the connection");
    raw_close();

    /* PING flood from a peer that does not read: the ACKs pile up. */
    raw_open(&s, NULL);
    int small = 4096;
    setsockopt(fds[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
    setsockopt(fds[1], SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    nghttp2_session_send(raw.session);
    fcntl(raw.fd, F_SETFL, O_NONBLOCK);
    static uint8_t ping[17] = {0, 0, 8, 6, 0, 0, 0, 0, 0};
    for (int i = 0; i != 100000 && !srv_conn.closed; ++i) {
        size_t off = 0;
        while (off != sizeof(ping) && !srv_conn.closed) {
            ssize_t w = write(raw.fd, ping + off, sizeof(ping) - off);
            if (w > 0)
                off += (size_t)w;
            else
                run_for(1);
        }
        if (i % 64 == 0)
            h2o_evloop_run(loop, 0);
    }
    run_for(30);
    ok(srv_conn.closed && srv_conn.codec_errors == 1, "PING flood closes the connection (%s)", srv_conn.codec_detail);
    ok_str(srv_conn.codec_detail, LG_H2_DETAIL_OUTBOUND_FLOOD);
    raw_close();
}

static int srv_stream_done(void)
{
    return nsrv == 1 && srv_t[0]->s == NULL;
}

/* Reads what the raw peer has received into its session. */
static void raw_drain(void)
{
    char buf[65536];
    ssize_t r;
    fcntl(raw.fd, F_SETFL, O_NONBLOCK);
    while ((r = read(raw.fd, buf, sizeof(buf))) > 0)
        nghttp2_session_mem_recv(raw.session, (uint8_t *)buf, (size_t)r);
    fcntl(raw.fd, F_SETFL, 0);
}

/* on_data_sent means "the socket took it": a peer that opened its windows wide
 * and reads nothing gets no more reported than its socket holds. Then the
 * idle connection gives its buffers back and still serves the next request. */
static void test_sent_means_written(void)
{
    lg_h2_settings_t s = defaults();
    static const nghttp2_nv get[] = {NV(":method", "GET"), NV(":scheme", "http"), NV(":authority", "a"), NV(":path", "/big")};
    raw_open(&s, NULL);
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, NGHTTP2_MAX_WINDOW_SIZE}};
    nghttp2_submit_settings(raw.session, NGHTTP2_FLAG_NONE, iv, 1);
    nghttp2_submit_window_update(raw.session, NGHTTP2_FLAG_NONE, 0, NGHTTP2_MAX_WINDOW_SIZE - 65535);
    raw_exchange();
    app.resp_size = 8 << 20;
    app.window = 4 << 20;
    nghttp2_submit_request(raw.session, NULL, get, 4, NULL, NULL);
    nghttp2_session_send(raw.session);
    run_for(100);
    int queued = 0;
    ok(nsrv == 1 && ioctl(raw.fd, FIONREAD, &queued) == 0 && queued > 0, "the response fills the peer's socket (%d)", queued);
    tstream_t *st = srv_t[0];
    ok(st->tx_sent <= (size_t)queued, "reported as sent: %zu, no more than the socket holds (%d)", st->tx_sent, queued);
    ok(st->s != NULL && !st->completed, "the response is under way");
    uint64_t deadline = lg_now_ms() + 10000;
    while (!srv_stream_done() && lg_now_ms() < deadline) {
        raw_drain();
        h2o_evloop_run(loop, 5);
    }
    ok(st->completed && st->tx_sent == 8 << 20, "the whole body is reported once read (%zu)", st->tx_sent);
    raw_drain();
    lg__h2_conn_t *conn = H2O_STRUCT_FROM_MEMBER(lg__h2_conn_t, super.server, srv);
    run_for(150);
    ok(conn->batch.buf == NULL && conn->batch.segs == NULL && conn->sock->input->bytes == NULL,
       "an idle connection frees its write batch and input buffer");
    app.resp_size = 100;
    nghttp2_submit_request(raw.session, NULL, get, 4, NULL, NULL);
    int before = raw.responses;
    raw_exchange();
    ok(nsrv == 2 && srv_t[1]->completed && raw.responses == before + 1, "the next request after the trim is served");
    app.window = 0;
    raw_close();
}

/* Finds a frame of `type` on `stream_id` in raw bytes; returns its payload or NULL. */
static const uint8_t *find_frame(const uint8_t *p, size_t n, int type, uint32_t stream_id, size_t *len, int *flags)
{
    while (n >= 9) {
        size_t l = (size_t)p[0] << 16 | (size_t)p[1] << 8 | p[2];
        uint32_t id = ((uint32_t)p[5] << 24 | (uint32_t)p[6] << 16 | (uint32_t)p[7] << 8 | p[8]) & 0x7fffffff;
        if (9 + l > n)
            break;
        if (p[3] == type && id == stream_id) {
            *len = l;
            *flags = p[4];
            return p + 9;
        }
        p += 9 + l;
        n -= 9 + l;
    }
    return NULL;
}

static int has_408(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i + 3 <= n; ++i)
        if (memcmp(p + i, "408", 3) == 0)
            return 1;
    return 0;
}

/* A header block that does not end in request_headers_timeout gets 408 and
 * RST_STREAM(NO_ERROR); the driver never sees the stream. */
static void test_request_headers_timeout(void)
{
    lg_h2_settings_t s = defaults();
    lg_h2_options_t o = {.request_headers_timeout_ms = 50};
    raw_open(&s, &o);
    raw_exchange();
    /* HEADERS (END_STREAM, no END_HEADERS) for stream 1: GET http / and nothing more */
    static const uint8_t partial[] = {0, 0, 3, NGHTTP2_HEADERS, NGHTTP2_FLAG_END_STREAM, 0, 0, 0, 1, 0x82, 0x86, 0x84};
    ok(write(raw.fd, partial, sizeof(partial)) == (ssize_t)sizeof(partial), "partial header block sent");
    run_for(150);
    uint8_t buf[4096];
    fcntl(raw.fd, F_SETFL, O_NONBLOCK);
    ssize_t r = read(raw.fd, buf, sizeof(buf));
    fcntl(raw.fd, F_SETFL, 0);
    size_t len = 0;
    int flags = 0;
    const uint8_t *h = r > 0 ? find_frame(buf, (size_t)r, NGHTTP2_HEADERS, 1, &len, &flags) : NULL;
    ok(h != NULL && (flags & NGHTTP2_FLAG_END_STREAM) && has_408(h, len), "408 with END_STREAM (%zd bytes, %zu, %x)", r, len,
       flags);
    const uint8_t *rst = r > 0 ? find_frame(buf, (size_t)r, NGHTTP2_RST_STREAM, 1, &len, &flags) : NULL;
    ok(rst != NULL && len == 4 && rst[0] == 0 && rst[1] == 0 && rst[2] == 0 && rst[3] == NGHTTP2_NO_ERROR, "RST_STREAM(NO_ERROR)");
    ok(srv_conn.codec_errors == 1, "on_codec_error once");
    ok_str(srv_conn.codec_detail, "request_header_timeout");
    ok(nsrv == 0 && !srv_conn.closed, "the driver never saw the stream; the connection stays");
    raw_close();
    /* headers in time: no timeout */
    static const nghttp2_nv get[] = {NV(":method", "GET"), NV(":scheme", "http"), NV(":authority", "a"), NV(":path", "/")};
    raw_open(&s, &o);
    raw_request(get, 4);
    run_for(100);
    ok(nsrv == 1 && srv_t[0]->completed && srv_conn.codec_errors == 0 && raw.responses == 1, "a whole block in time is served");
    raw_close();
}

static void test_extended_connect(void)
{
    lg_h2_settings_t s = defaults();
    lg_h2_options_t allow = {.allow_connect = 1};
    static const nghttp2_nv ws[] = {NV(":method", "CONNECT"), NV(":protocol", "websocket"), NV(":scheme", "http"),
                                    NV(":authority", "a"), NV(":path", "/chat")};
    raw_open(&s, &allow);
    raw_request(ws, 5);
    ok(nsrv == 1 && h2o_memis(srv_t[0]->req->protocol.base, srv_t[0]->req->protocol.len, H2O_STRLIT("websocket")),
       "extended CONNECT with allow_connect");
    raw_close();
    raw_open(&s, NULL);
    raw_request(ws, 5);
    ok(nsrv == 0 && srv_conn.closed, "extended CONNECT refused without allow_connect");
    raw_close();
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    for (size_t i = 0; i != sizeof(pattern); ++i)
        pattern[i] = (char)(i % 251);
    loop = h2o_evloop_create();
    lg_loop_init(&lgloop, loop);

    test_get();
    test_big_bodies();
    test_backpressure();
    test_no_pause_when_consumed_at_once();
    test_trailers_and_1xx();
    test_read_pause();
    test_goaway_refuses();
    test_many_streams();
    test_resets();
    test_head_lifetimes();
    test_body_blocks();
    test_drain();
    test_max_concurrent();
    test_peer_close();
    test_malformed();
    test_extended_connect();
    test_sent_means_written();
    test_request_headers_timeout();

    run_for(20);
    reset_state();
    lg_loop_dispose(&lgloop);
    return done();
}
