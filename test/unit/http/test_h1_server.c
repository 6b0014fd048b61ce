/*
 * The downstream HTTP/1.1 connection over a socketpair: raw client bytes on
 * one end, lg_h1_server_conn_t on an h2o evloop on the other, and a test
 * driver standing in for the connection manager (it echoes request bodies).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>
#include <h2o/socket.h>
#include "legate/common.h"
#include "legate/h1.h"
#include "legate/h1_server.h"
#include "legate/http.h"
#include "legate/timer.h"
#include "test.h"

enum { MODE_ECHO, MODE_CHUNKED, MODE_BIG, MODE_UPGRADE, MODE_EARLY, MODE_HEAD_BODY, MODE_TRAILERS };

#define BIG_TOTAL (10 * 1024 * 1024)
#define BIG_PIECE (26 * 2048)
#define BIG_WINDOW (1024 * 1024)

typedef struct st_tstream_t {
    lg_stream_t *s;
    h2o_mem_pool_t pool;
    lg_resp_head_t resp;
    lg_strbuf_t body;
    char **echoes; /* tunnel echo copies, alive until the stream ends */
    size_t n_echoes;
    size_t big_sent, big_acked;
    int responded;
} tstream_t;

static struct {
    int mode;
    int hold; /* the test calls respond() itself */
    int pause_on_headers;
    int manual_consume;
    size_t to_consume;
    size_t delivered, consumed, max_unconsumed;
    int streams, completes, resets, reset_reason, codec_errors, codec_status, closed;
    const char *codec_details;
    char events[512];
    char last_path[128];
    int saw_expect, head_version;
    size_t data_sent;
    tstream_t *cur;
} drv;

static h2o_evloop_t *evloop;
static lg_loop_t loop;
static int cfd = -1;
static h2o_socket_t *ssock;
static lg_server_conn_t *conn;
static lg_strbuf_t rx;
static size_t rx_off;
static int client_eof;
static char big_piece[BIG_PIECE];

/* The driver */

static void event(const char *fmt, unsigned id)
{
    size_t len = strlen(drv.events);
    snprintf(drv.events + len, sizeof(drv.events) - len, fmt, id);
}

static void tstream_free(tstream_t *ts)
{
    for (size_t i = 0; i != ts->n_echoes; ++i)
        free(ts->echoes[i]);
    free(ts->echoes);
    lg_strbuf_free(&ts->body);
    h2o_mem_clear_pool(&ts->pool);
    if (drv.cur == ts)
        drv.cur = NULL;
    free(ts);
}

static void set_header(tstream_t *ts, const char *name, const char *value)
{
    lg_headers_add(&ts->pool, &ts->resp.headers, h2o_strdup(&ts->pool, name, SIZE_MAX), h2o_strdup(&ts->pool, value, SIZE_MAX));
}

static void big_send_more(tstream_t *ts)
{
    while (ts->big_sent < BIG_TOTAL && ts->big_sent - ts->big_acked < BIG_WINDOW) {
        size_t n = BIG_TOTAL - ts->big_sent < BIG_PIECE ? BIG_TOTAL - ts->big_sent : BIG_PIECE;
        ts->big_sent += n;
        ts->s->ops->send_data(ts->s, h2o_iovec_init(big_piece, n), ts->big_sent == BIG_TOTAL);
    }
}

static void respond(tstream_t *ts)
{
    char num[32];
    ts->responded = 1;
    ts->resp = (lg_resp_head_t){200, LG_HTTP_11};
    set_header(ts, "x-path", drv.last_path);
    switch (drv.mode) {
    case MODE_CHUNKED:
        ts->s->ops->send_headers(ts->s, &ts->resp, 0);
        ts->s->ops->send_data(ts->s, LG_LIT("hello"), 0);
        ts->s->ops->send_data(ts->s, LG_LIT(", "), 0);
        ts->s->ops->send_data(ts->s, LG_LIT("world"), 1);
        break;
    case MODE_TRAILERS: {
        lg_headers_t trailers = {NULL};
        lg_headers_add(&ts->pool, &trailers, LG_LIT("grpc-status"), LG_LIT("0"));
        ts->s->ops->send_headers(ts->s, &ts->resp, 0);
        ts->s->ops->send_data(ts->s, LG_LIT("abc"), 0);
        ts->s->ops->send_trailers(ts->s, &trailers);
        break;
    }
    case MODE_BIG:
        snprintf(num, sizeof(num), "%d", BIG_TOTAL);
        set_header(ts, "content-length", num);
        ts->s->ops->send_headers(ts->s, &ts->resp, 0);
        big_send_more(ts);
        break;
    case MODE_HEAD_BODY:
        set_header(ts, "content-length", "5");
        ts->s->ops->send_headers(ts->s, &ts->resp, 0);
        ts->s->ops->send_data(ts->s, LG_LIT("hello"), 1);
        break;
    default:
        if (drv.mode == MODE_EARLY)
            ts->resp.status = 413;
        snprintf(num, sizeof(num), "%zu", ts->body.len);
        set_header(ts, "content-length", num);
        ts->s->ops->send_headers(ts->s, &ts->resp, ts->body.len == 0);
        if (ts->body.len != 0)
            ts->s->ops->send_data(ts->s, h2o_iovec_init(ts->body.base, ts->body.len), 1);
        break;
    }
}

static void on_headers(lg_stream_t *s, void *_head, int end_stream)
{
    tstream_t *ts = s->ctx;
    lg_req_head_t *head = _head;
    snprintf(drv.last_path, sizeof(drv.last_path), "%.*s", (int)head->path.len, head->path.base);
    drv.saw_expect = lg_headers_find(&head->headers, H2O_STRLIT("expect"), 0) >= 0;
    drv.head_version = head->version;
    if (drv.pause_on_headers)
        s->ops->read_pause(s, 1);
    if (drv.mode == MODE_UPGRADE && h2o_memis(head->method.base, head->method.len, H2O_STRLIT("CONNECT"))) {
        ts->resp = (lg_resp_head_t){200, LG_HTTP_11};
        ts->responded = 1;
        s->ops->send_headers(s, &ts->resp, 0);
    } else if (drv.mode == MODE_UPGRADE && lg_headers_find(&head->headers, H2O_STRLIT("upgrade"), 0) >= 0) {
        ts->resp = (lg_resp_head_t){101, LG_HTTP_11};
        set_header(ts, "connection", "upgrade");
        set_header(ts, "upgrade", "websocket");
        ts->responded = 1;
        s->ops->send_headers(s, &ts->resp, 0);
    } else if (drv.mode == MODE_EARLY) {
        respond(ts);
    } else if (end_stream && !drv.hold) {
        respond(ts);
    }
}

static void on_data(lg_stream_t *s, h2o_iovec_t data, int end_stream)
{
    tstream_t *ts = s->ctx;
    drv.delivered += data.len;
    if (drv.delivered - drv.consumed > drv.max_unconsumed)
        drv.max_unconsumed = drv.delivered - drv.consumed;
    if (drv.mode == MODE_UPGRADE) {
        if (data.len != 0) {
            char *copy = lg_malloc(data.len);
            memcpy(copy, data.base, data.len);
            ts->echoes = lg_realloc(ts->echoes, sizeof(*ts->echoes) * (ts->n_echoes + 1));
            ts->echoes[ts->n_echoes++] = copy;
            s->ops->send_data(s, h2o_iovec_init(copy, data.len), end_stream);
        } else if (end_stream) {
            s->ops->send_data(s, h2o_iovec_init(NULL, 0), 1);
        }
    } else {
        lg_strbuf_append(&ts->body, data.base, data.len);
    }
    if (drv.manual_consume) {
        drv.to_consume += data.len;
    } else {
        drv.consumed += data.len;
        s->ops->consume(s, data.len);
    }
    if (end_stream && drv.mode != MODE_UPGRADE && !ts->responded && !drv.hold)
        respond(ts);
}

static void on_data_sent(lg_stream_t *s, size_t bytes)
{
    tstream_t *ts = s->ctx;
    drv.data_sent += bytes;
    if (drv.mode == MODE_BIG) {
        ts->big_acked += bytes;
        big_send_more(ts);
    }
}

static void on_reset(lg_stream_t *s, lg_reset_reason_t reason, const char *details)
{
    ++drv.resets;
    drv.reset_reason = reason;
    event("R%u ", s->id);
    tstream_free(s->ctx);
}

static void on_complete(lg_stream_t *s)
{
    ++drv.completes;
    event("C%u ", s->id);
    tstream_free(s->ctx);
}

static const lg_stream_cbs_t stream_cbs = {
    .on_headers = on_headers,
    .on_data = on_data,
    .on_data_sent = on_data_sent,
    .on_reset = on_reset,
    .on_complete = on_complete,
};

static void on_new_stream(lg_server_conn_t *c, lg_stream_t *s)
{
    tstream_t *ts = lg_calloc(1, sizeof(*ts));
    h2o_mem_init_pool(&ts->pool);
    ts->s = s;
    s->cbs = &stream_cbs;
    s->ctx = ts;
    drv.cur = ts;
    ++drv.streams;
    event("N%u ", s->id);
}

static void on_close(lg_server_conn_t *c, unsigned how)
{
    ++drv.closed;
    conn = NULL;
}

static void on_codec_error(lg_server_conn_t *c, int status, const char *details)
{
    ++drv.codec_errors;
    drv.codec_status = status;
    drv.codec_details = details;
}

static const lg_server_conn_cbs_t conn_cbs = {on_new_stream, on_close, on_codec_error};

/* The client end */

static void pump(void)
{
    char buf[65536];
    ssize_t r;
    while ((r = read(cfd, buf, sizeof(buf))) > 0)
        lg_strbuf_append(&rx, buf, (size_t)r);
    if (r == 0)
        client_eof = 1;
}

static void step(void)
{
    h2o_evloop_run(evloop, 1);
    pump();
}

#define RUN_UNTIL(cond)                    \
    ({                                     \
        uint64_t t0_ = lg_now_ms();        \
        int ok_ = 0;                       \
        while (lg_now_ms() - t0_ < 5000) { \
            step();                        \
            if (cond) {                    \
                ok_ = 1;                   \
                break;                     \
            }                              \
        }                                  \
        ok_;                               \
    })

static void run_for(uint64_t ms)
{
    uint64_t t0 = lg_now_ms();
    while (lg_now_ms() - t0 < ms)
        step();
}

static void client_send(const char *p, size_t len)
{
    while (len != 0) {
        ssize_t r = write(cfd, p, len);
        if (r > 0) {
            p += r;
            len -= (size_t)r;
        } else if (r < 0 && errno == EAGAIN) {
            step();
        } else {
            return;
        }
    }
}

#define SEND(s) client_send(s, strlen(s))

typedef struct st_resp_t {
    int status;
    char head[8192];
    lg_strbuf_t body;
} resp_t;

static void resp_free(resp_t *r)
{
    lg_strbuf_free(&r->body);
}

/* The value of a (lower-case) header in r->head, or NULL. */
static const char *hdr(resp_t *r, const char *name)
{
    static char value[256];
    char needle[128];
    snprintf(needle, sizeof(needle), "\r\n%s: ", name);
    const char *p = strstr(r->head, needle);
    if (p == NULL)
        return NULL;
    p += strlen(needle);
    size_t n = strcspn(p, "\r");
    snprintf(value, sizeof(value), "%.*s", (int)n, p);
    return value;
}

/* Decodes a chunked body from p[0..len); returns bytes used or 0 when incomplete. */
static size_t dechunk(const char *p, size_t len, lg_strbuf_t *out)
{
    size_t off = 0;
    for (;;) {
        const char *eol = memmem(p + off, len - off, "\r\n", 2);
        if (eol == NULL)
            return 0;
        size_t n = strtoul(p + off, NULL, 16), at = eol + 2 - p;
        if (n == 0)
            return at + 2 <= len ? at + 2 : 0;
        if (at + n + 2 > len)
            return 0;
        lg_strbuf_append(out, p + at, n);
        off = at + n + 2;
    }
}

/* Takes the next whole response from rx; `no_body` for HEAD. */
static int next_response(resp_t *r, int no_body)
{
    const char *p = rx.base + rx_off, *end = p + (rx.len - rx_off);
    const char *eoh = rx.len > rx_off ? memmem(p, end - p, "\r\n\r\n", 4) : NULL;
    if (eoh == NULL)
        return 0;
    size_t head_len = eoh + 4 - p, used = 0;
    resp_free(r);
    *r = (resp_t){.status = atoi(p + 9)};
    snprintf(r->head, sizeof(r->head), "%.*s", (int)head_len, p);
    const char *cl = hdr(r, "content-length"), *te = hdr(r, "transfer-encoding");
    if (no_body || r->status < 200 || r->status == 204 || r->status == 304) {
    } else if (cl != NULL) {
        size_t n = strtoul(cl, NULL, 10);
        if (head_len + n > (size_t)(end - p))
            return 0;
        lg_strbuf_append(&r->body, p + head_len, n);
        used = n;
    } else if (te != NULL) {
        if ((used = dechunk(p + head_len, end - p - head_len, &r->body)) == 0) {
            resp_free(r);
            return 0;
        }
    } else {
        if (!client_eof)
            return 0;
        used = end - p - head_len;
        lg_strbuf_append(&r->body, p + head_len, used);
    }
    rx_off += head_len + used;
    return 1;
}

/* ctx_size != 0: lg_h1_server_conn_new_with_ctx() */
static void setup_ex(const lg_h1_server_settings_t *settings, size_t ctx_size)
{
    int fds[2];
    lg_h1_server_settings_t defaults;
    if (settings == NULL) {
        lg_h1_server_settings_init(&defaults);
        settings = &defaults;
    }
    memset(&drv, 0, sizeof(drv));
    lg_strbuf_free(&rx);
    rx_off = 0;
    client_eof = 0;
    socketpair(AF_UNIX, SOCK_STREAM, 0, fds);
    fcntl(fds[0], F_SETFL, O_NONBLOCK);
    fcntl(fds[1], F_SETFL, O_NONBLOCK);
    cfd = fds[0];
    ssock = h2o_evloop_socket_create(evloop, fds[1], 0);
    conn = ctx_size != 0 ? lg_h1_server_conn_new_with_ctx(&loop, ssock, settings, &conn_cbs, ctx_size)
                         : lg_h1_server_conn_new(&loop, ssock, settings, &conn_cbs, NULL);
}

static void setup(const lg_h1_server_settings_t *settings)
{
    setup_ex(settings, 0);
}

static void teardown(void)
{
    if (conn != NULL)
        conn->ops->close(conn);
    if (cfd >= 0)
        close(cfd);
    cfd = -1;
    run_for(5);
}

/* The tests */

static void test_keep_alive(void)
{
    resp_t r = {0};
    setup(NULL);
    SEND("GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
    ok(RUN_UNTIL(next_response(&r, 0)), "first response");
    ok(r.status == 200, "status %d", r.status);
    ok(strncmp(r.head, "HTTP/1.1 200 OK\r\n", 17) == 0, "status line: %s", r.head);
    ok(hdr(&r, "connection") == NULL, "no connection header");
    ok_str(hdr(&r, "x-path"), "/a");
    ok_str(hdr(&r, "content-length"), "0");
    ok(RUN_UNTIL(drv.completes == 1), "first completes");
    ok(lg_h1_server_conn_is_idle(conn), "idle between requests");

    SEND("POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
    ok(RUN_UNTIL(next_response(&r, 0)), "second response");
    ok_str(hdr(&r, "x-path"), "/b");
    ok(r.body.len == 5 && memcmp(r.body.base, "hello", 5) == 0, "echoed body");
    ok(RUN_UNTIL(drv.completes == 2), "second completes");
    ok_str(drv.events, "N1 C1 N2 C2 ");
    ok(!client_eof && drv.closed == 0, "still open");
    resp_free(&r);
    teardown();
    ok(drv.closed == 1, "on_close once");
}

static void test_pipelined(void)
{
    resp_t r = {0};
    setup(NULL);
    SEND("GET /1 HTTP/1.1\r\nHost: x\r\n\r\nPOST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /3 HTTP/1.1\r\nHost: "
         "x\r\n\r\n");
    for (int i = 1; i <= 3; ++i) {
        char want[16];
        snprintf(want, sizeof(want), "/%d", i);
        ok(RUN_UNTIL(next_response(&r, 0)), "response %d", i);
        ok_str(hdr(&r, "x-path"), want);
    }
    ok(r.body.len == 0, "third body empty");
    ok(RUN_UNTIL(drv.completes == 3), "three completes");
    ok_str(drv.events, "N1 C1 N2 C2 N3 C3 ");
    resp_free(&r);
    teardown();
}

static void test_chunked_backpressure(void)
{
    resp_t r = {0};
    lg_h1_server_settings_t st;
    lg_h1_server_settings_init(&st);
    st.buffer_limit = 1024;
    setup(&st);
    drv.manual_consume = 1;
    SEND("POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    ok(RUN_UNTIL(drv.streams == 1), "stream started");

    /* 40 chunks of 700 bytes, each written in two pieces, consumed slowly */
    lg_strbuf_t want = {0};
    int stopped_reading = 0;
    for (int i = 0; i < 40; ++i) {
        char chunk[800];
        int n = snprintf(chunk, sizeof(chunk), "2bc\r\n");
        memset(chunk + n, 'a' + i % 26, 700);
        memcpy(chunk + n + 700, "\r\n", 2);
        lg_strbuf_append(&want, chunk + n, 700);
        client_send(chunk, 100);
        run_for(1);
        client_send(chunk + 100, n + 702 - 100);
        run_for(2);
        if (drv.to_consume != 0) {
            stopped_reading |= !h2o_socket_is_reading(ssock);
            size_t n = drv.to_consume;
            drv.to_consume = 0;
            drv.consumed += n;
            drv.cur->s->ops->consume(drv.cur->s, n);
        }
    }
    /* the input buffer holding the slices is pinned and reading goes on into a fresh one */
    ok(!stopped_reading, "reading goes on while less than the buffer limit is unconsumed");
    ok(drv.max_unconsumed <= 1025, "unconsumed bounded by one past the buffer limit: %zu", drv.max_unconsumed);

    /* a burst larger than the limit is delivered in steps of one past the limit (a
     * receiver keeping the body sees it pass the limit) */
    lg_strbuf_t burst = {0};
    for (int i = 0; i < 8; ++i) {
        lg_strbuf_puts(&burst, "400\r\n");
        for (int j = 0; j < 1024; ++j)
            lg_strbuf_append(&burst, "0123456789" + (i + j) % 10, 1);
        lg_strbuf_append(&want, burst.base + burst.len - 1024, 1024);
        lg_strbuf_puts(&burst, "\r\n");
    }
    lg_strbuf_puts(&burst, "0\r\nx-trailer: dropped\r\n\r\n");
    client_send(burst.base, burst.len);
    int rounds = 0;
    while (drv.cur != NULL && !drv.cur->responded && rounds < 1000) {
        run_for(1);
        if (drv.cur == NULL)
            break;
        if (drv.to_consume != 0) {
            ok(drv.to_consume <= 1025, "one step within one past the limit: %zu", drv.to_consume);
            ok(!h2o_socket_is_reading(ssock), "not reading while unconsumed");
            size_t n = drv.to_consume;
            drv.to_consume = 0;
            drv.consumed += n;
            drv.cur->s->ops->consume(drv.cur->s, n);
        }
        ++rounds;
    }
    ok(drv.max_unconsumed == 1025, "still bounded, and the limit is passed: %zu", drv.max_unconsumed);
    ok(RUN_UNTIL(next_response(&r, 0)), "response");
    ok(r.body.len == want.len && memcmp(r.body.base, want.base, want.len) == 0, "body intact (%zu of %zu)", r.body.len, want.len);
    ok(RUN_UNTIL(drv.completes == 1), "completes");
    lg_strbuf_free(&want);
    lg_strbuf_free(&burst);
    resp_free(&r);
    teardown();
}

static void test_100_continue(void)
{
    resp_t r = {0};
    setup(NULL);
    SEND("PUT /c HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n");
    ok(RUN_UNTIL(next_response(&r, 0)), "interim response");
    ok(r.status == 100, "100 first: %d", r.status);
    ok(strcmp(r.head, "HTTP/1.1 100 Continue\r\n\r\n") == 0, "exact 100 Continue: %s", r.head);
    ok(drv.streams == 1 && !drv.saw_expect, "expect removed before the head is passed on");
    SEND("data");
    ok(RUN_UNTIL(next_response(&r, 0)), "final response");
    ok(r.status == 200 && r.body.len == 4, "final %d %zu", r.status, r.body.len);
    resp_free(&r);
    teardown();
}

static void test_head(void)
{
    resp_t r = {0};
    setup(NULL);
    drv.mode = MODE_HEAD_BODY;
    SEND("HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n");
    ok(RUN_UNTIL(next_response(&r, 1)), "head response");
    ok_str(hdr(&r, "content-length"), "5");
    ok(RUN_UNTIL(drv.completes == 1), "head completes");
    ok(drv.data_sent == 5, "dropped body still reported sent: %zu", drv.data_sent);
    SEND("GET /g HTTP/1.1\r\nHost: x\r\n\r\n");
    ok(RUN_UNTIL(next_response(&r, 0)), "next response");
    ok(rx_off == rx.len, "no body bytes after the HEAD response");
    ok_str(hdr(&r, "x-path"), "/g");
    ok(r.body.len == 5 && memcmp(r.body.base, "hello", 5) == 0, "GET body");
    resp_free(&r);
    teardown();
}

static void test_http10(void)
{
    resp_t r = {0};
    lg_h1_server_settings_t st;
    lg_h1_server_settings_init(&st);

    setup(NULL);
    SEND("GET / HTTP/1.0\r\n\r\n");
    ok(RUN_UNTIL(next_response(&r, 0) && client_eof), "426 without accept_http_10");
    ok(r.status == 426 && strcmp(r.body.base, "Upgrade Required") == 0, "426 Upgrade Required");
    ok(drv.codec_status == 426 && drv.streams == 0, "codec error reported");
    teardown();

    st.limits.accept_http_10 = 1;
    setup(&st);
    SEND("GET /k HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n");
    ok(RUN_UNTIL(next_response(&r, 0)), "1.0 keep-alive response");
    ok(strncmp(r.head, "HTTP/1.0 200 OK\r\n", 17) == 0, "HTTP/1.0 status line: %s", r.head);
    ok_str(hdr(&r, "connection"), "keep-alive");
    ok(drv.head_version == LG_HTTP_10, "request version");
    ok(RUN_UNTIL(drv.completes == 1), "completes");
    run_for(5);
    ok(!client_eof, "kept open");
    SEND("GET /s HTTP/1.0\r\nHost: x\r\n\r\n");
    drv.mode = MODE_CHUNKED;
    ok(RUN_UNTIL(client_eof && next_response(&r, 0)), "1.0 response framed by close");
    ok_str(hdr(&r, "connection"), "close");
    ok(hdr(&r, "transfer-encoding") == NULL && hdr(&r, "content-length") == NULL, "no framing headers");
    ok(r.body.len == 12 && memcmp(r.body.base, "hello, world", 12) == 0, "raw body until close");
    ok(RUN_UNTIL(drv.closed == 1), "closed");
    resp_free(&r);
    teardown();
}

static void test_connection_close(void)
{
    resp_t r = {0};
    setup(NULL);
    SEND("GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /ignored HTTP/1.1\r\nHost: x\r\n\r\n");
    ok(RUN_UNTIL(next_response(&r, 0)), "response");
    ok_str(hdr(&r, "connection"), "close");
    ok(RUN_UNTIL(client_eof), "server closes (FIN)");
    ok(RUN_UNTIL(drv.closed == 1), "on_close after the client closes");
    ok(drv.streams == 1 && drv.completes == 1, "the pipelined request is not served");
    ok(rx_off == rx.len, "nothing after the response");
    resp_free(&r);
    teardown();
}

static void test_malformed(void)
{
    resp_t r = {0};
    setup(NULL);
    SEND("GET / HTTP/1.1\r\nHost: x\r\nbad header line\r\n\r\n");
    ok(RUN_UNTIL(next_response(&r, 0)), "error reply");
    ok(r.status == 400, "400: %d", r.status);
    ok(strncmp(r.head, "HTTP/1.1 400 Bad Request\r\ncontent-length: 11\r\ncontent-type: text/plain\r\n", 72) == 0, "head: %s",
       r.head);
    ok_str(hdr(&r, "connection"), "close");
    ok_str(hdr(&r, "server"), "envoy");
    ok(r.body.len == 11 && memcmp(r.body.base, "Bad Request", 11) == 0, "body");
    ok(drv.codec_errors == 1 && drv.codec_status == 400 && drv.streams == 0, "on_codec_error, no stream");
    ok(RUN_UNTIL(client_eof), "closed after the reply");
    close(cfd);
    ok(RUN_UNTIL(drv.closed == 1), "on_close");
    cfd = -1;
    resp_free(&r);
    teardown();
}

static void test_headers_too_large(void)
{
    resp_t r = {0};
    lg_h1_server_settings_t st;
    lg_h1_server_settings_init(&st);
    st.limits.max_headers_kb = 1;
    setup(&st);
    SEND("GET / HTTP/1.1\r\nHost: x\r\nx-big: ");
    char big[2048];
    memset(big, 'b', sizeof(big));
    client_send(big, sizeof(big));
    ok(RUN_UNTIL(next_response(&r, 0)), "error reply before the head ends");
    ok(r.status == 431, "431: %d", r.status);
    ok(strcmp(r.body.base, "Request Header Fields Too Large") == 0, "body: %s", r.body.base);
    ok(drv.codec_status == 431, "reported");
    ok(RUN_UNTIL(client_eof), "closed");
    resp_free(&r);
    teardown();
}

static void test_client_close_mid_body(void)
{
    setup(NULL);
    SEND("POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789");
    ok(RUN_UNTIL(drv.delivered == 10), "partial body delivered");
    close(cfd);
    cfd = -1;
    ok(RUN_UNTIL(drv.closed == 1), "closed");
    ok(drv.resets == 1 && drv.reset_reason == LG_RESET_CONNECTION_TERMINATION, "on_reset(connection termination)");
    ok_str(drv.events, "N1 R1 ");
    teardown();
}

static void test_upgrade(void)
{
    resp_t r = {0};
    setup(NULL);
    drv.mode = MODE_UPGRADE;
    SEND("GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    ok(RUN_UNTIL(next_response(&r, 1)), "101");
    ok(r.status == 101, "status %d", r.status);
    ok(hdr(&r, "transfer-encoding") == NULL && hdr(&r, "content-length") == NULL, "no framing");
    ok(hdr(&r, "upgrade") != NULL, "upgrade header kept");
    SEND("ping");
    ok(RUN_UNTIL(rx.len - rx_off == 4), "echo");
    ok(memcmp(rx.base + rx_off, "ping", 4) == 0, "raw bytes back");
    rx_off += 4;
    SEND("GET / HTTP/1.1\r\n\r\n");
    ok(RUN_UNTIL(rx.len - rx_off == 18), "opaque bytes echoed, not parsed");
    rx_off = rx.len;
    shutdown(cfd, SHUT_WR);
    ok(RUN_UNTIL(client_eof), "server side ends");
    ok(RUN_UNTIL(drv.closed == 1), "closed");
    ok(drv.completes == 1 && drv.resets == 0, "tunnel completes");
    resp_free(&r);
    teardown();
}

static void test_connect(void)
{
    resp_t r = {0};
    setup(NULL);
    drv.mode = MODE_UPGRADE;
    SEND("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n");
    ok(RUN_UNTIL(next_response(&r, 1)), "200 to CONNECT");
    ok(r.status == 200, "status %d", r.status);
    ok(hdr(&r, "transfer-encoding") == NULL && hdr(&r, "content-length") == NULL, "no framing for a CONNECT tunnel");
    SEND("\x16\x03\x01 raw");
    ok(RUN_UNTIL(rx.len - rx_off == 7), "raw echo");
    ok(memcmp(rx.base + rx_off, "\x16\x03\x01 raw", 7) == 0, "bytes intact");
    rx_off = rx.len;
    shutdown(cfd, SHUT_WR);
    ok(RUN_UNTIL(client_eof && drv.closed == 1), "closed");
    ok(drv.completes == 1, "completes");
    resp_free(&r);
    teardown();
}

static void test_read_pause(void)
{
    resp_t r = {0};
    setup(NULL);
    drv.pause_on_headers = 1;
    SEND("POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n");
    ok(RUN_UNTIL(drv.streams == 1), "headers");
    SEND("body");
    run_for(20);
    ok(drv.delivered == 0, "no on_data while paused");
    ok(!h2o_socket_is_reading(ssock), "not reading while paused");
    drv.cur->s->ops->read_pause(drv.cur->s, 0);
    ok(drv.delivered == 0, "resumes on the next loop turn, not inside the op");
    ok(RUN_UNTIL(next_response(&r, 0)), "response after resume");
    ok(r.body.len == 4 && memcmp(r.body.base, "body", 4) == 0, "body");
    resp_free(&r);
    teardown();
}

static void test_chunked_response(void)
{
    resp_t r = {0};
    setup(NULL);
    drv.mode = MODE_CHUNKED;
    SEND("GET /c HTTP/1.1\r\nHost: x\r\n\r\n");
    ok(RUN_UNTIL(next_response(&r, 0)), "response");
    ok_str(hdr(&r, "transfer-encoding"), "chunked");
    ok(strstr(rx.base, "\r\n\r\n5\r\nhello\r\n2\r\n, \r\n5\r\nworld\r\n0\r\n\r\n") != NULL, "chunks on the wire");
    ok(r.body.len == 12, "decoded");
    ok(RUN_UNTIL(drv.completes == 1), "completes");
    ok(drv.data_sent == 12, "on_data_sent counts body bytes only: %zu", drv.data_sent);

    drv.mode = MODE_TRAILERS;
    SEND("GET /t HTTP/1.1\r\nHost: x\r\n\r\n");
    ok(RUN_UNTIL(next_response(&r, 0)), "response with trailers");
    ok(memcmp(rx.base + rx.len - 13, "3\r\nabc\r\n0\r\n\r\n", 13) == 0 && strstr(rx.base, "grpc-status") == NULL,
       "trailers dropped, last chunk sent");
    ok(RUN_UNTIL(drv.completes == 2), "completes");
    resp_free(&r);
    teardown();
}

static void test_big_response(void)
{
    resp_t r = {0};
    for (size_t i = 0; i != BIG_PIECE; ++i)
        big_piece[i] = 'a' + i % 26;
    setup(NULL);
    drv.mode = MODE_BIG;
    SEND("GET /big HTTP/1.1\r\nHost: x\r\n\r\n");
    ok(RUN_UNTIL(next_response(&r, 0)), "10 MiB response");
    ok(r.body.len == BIG_TOTAL, "length %zu", r.body.len);
    int same = 1;
    for (size_t i = 0; i < r.body.len && same; ++i)
        same = r.body.base[i] == (char)('a' + (i % BIG_PIECE) % 26);
    ok(same, "content");
    ok(RUN_UNTIL(drv.completes == 1), "completes");
    ok(drv.data_sent == BIG_TOTAL, "all reported sent: %zu", drv.data_sent);
    resp_free(&r);
    teardown();
}

static void test_early_response(void)
{
    resp_t r = {0};
    setup(NULL);
    drv.mode = MODE_EARLY;
    SEND("POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc");
    ok(RUN_UNTIL(next_response(&r, 0)), "early reply");
    ok(r.status == 413, "status %d", r.status);
    ok_str(hdr(&r, "connection"), "close");
    ok(RUN_UNTIL(client_eof), "closes after the reply");
    ok(drv.completes == 1, "completes");
    resp_free(&r);
    teardown();
}

static void test_drain_and_reset(void)
{
    resp_t r = {0};
    setup(NULL);
    drv.hold = 1;
    SEND("POST /d HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab");
    ok(RUN_UNTIL(drv.delivered == 2), "request");
    conn->ops->drain(conn);
    respond(drv.cur);
    ok(RUN_UNTIL(next_response(&r, 0)), "response");
    ok(RUN_UNTIL(client_eof && drv.closed), "closed after the draining response");
    teardown();

    setup(NULL);
    conn->ops->drain(conn);
    ok(drv.closed == 1, "idle connection closes at once on drain");
    ok(RUN_UNTIL(client_eof), "EOF");
    teardown();

    setup(NULL);
    drv.mode = MODE_UPGRADE;
    SEND("GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    ok(RUN_UNTIL(next_response(&r, 1)), "101");
    drv.cur->s->ops->reset(drv.cur->s, LG_RESET_LOCAL);
    ok(drv.closed == 1 && drv.resets == 0, "reset closes the connection without on_reset");
    ok(RUN_UNTIL(client_eof), "EOF");
    tstream_free(drv.cur);
    resp_free(&r);
    teardown();
}

/* A head sent without end_stream waits for its first body bytes, so that both
 * leave in one write; with no body it still goes out at the end of the loop turn.
 * Also: the stream lends its pool (the request head lives there). */
static void test_head_waits_for_body(void)
{
    resp_t r = {0};
    setup(NULL);
    drv.hold = 1;
    SEND("GET /w HTTP/1.1\r\nHost: x\r\n\r\n");
    ok(RUN_UNTIL(drv.cur != NULL), "request");
    tstream_t *ts = drv.cur;
    ok(ts->s->pool != NULL, "the stream lends its pool");
    ts->responded = 1;
    ts->resp = (lg_resp_head_t){200, LG_HTTP_11};
    set_header(ts, "content-length", "5");
    size_t before = rx.len;
    ts->s->ops->send_headers(ts->s, &ts->resp, 0);
    pump();
    ok(rx.len == before, "the head is not written on its own");
    ts->s->ops->send_data(ts->s, LG_LIT("hello"), 1);
    pump();
    ok(rx.len > before + 5 && memcmp(rx.base + rx.len - 9, "\r\n\r\nhello", 9) == 0, "head and body written together");
    ok(RUN_UNTIL(next_response(&r, 0)) && r.status == 200 && r.body.len == 5, "response");
    ok(RUN_UNTIL(drv.completes == 1), "completes");

    drv.cur = NULL;
    SEND("GET /w2 HTTP/1.1\r\nHost: x\r\n\r\n");
    ok(RUN_UNTIL(drv.cur != NULL), "second request");
    ts = drv.cur;
    ts->responded = 1;
    ts->resp = (lg_resp_head_t){200, LG_HTTP_11};
    set_header(ts, "content-length", "3");
    ts->s->ops->send_headers(ts->s, &ts->resp, 0);
    ok(RUN_UNTIL(memmem(rx.base + rx_off, rx.len - rx_off, "\r\n\r\n", 4) != NULL),
       "a head without body goes out at the end of the turn");
    ts->s->ops->send_data(ts->s, LG_LIT("abc"), 1);
    ok(RUN_UNTIL(next_response(&r, 0)) && r.body.len == 3, "body follows");
    ok(RUN_UNTIL(drv.completes == 2), "completes");
    resp_free(&r);
    teardown();
}

static void test_preread_input(void)
{
    resp_t r = {0};
    int fds[2];
    lg_h1_server_settings_t st;
    lg_h1_server_settings_init(&st);
    memset(&drv, 0, sizeof(drv));
    lg_strbuf_free(&rx);
    rx_off = 0;
    client_eof = 0;
    socketpair(AF_UNIX, SOCK_STREAM, 0, fds);
    fcntl(fds[0], F_SETFL, O_NONBLOCK);
    cfd = fds[0];
    ssock = h2o_evloop_socket_create(evloop, fds[1], 0);
    const char req[] = "GET /pre HTTP/1.1\r\nHost: x\r\n\r\n";
    memcpy(h2o_buffer_reserve(&ssock->input, 64).base, req, sizeof(req) - 1);
    ssock->input->size += sizeof(req) - 1;
    conn = lg_h1_server_conn_new(&loop, ssock, &st, &conn_cbs, NULL);
    ok(drv.streams == 0, "no callback from the constructor");
    ok(RUN_UNTIL(next_response(&r, 0)), "bytes already read are served");
    ok_str(hdr(&r, "x-path"), "/pre");
    resp_free(&r);
    teardown();
}

static int idle_fired;

static void on_idle_timeout(lg_server_conn_t *c)
{
    ++idle_fired;
    ok(c == conn, "idle timeout of this connection");
    c->ops->close(c);
}

/* The owner's idle timeout runs on the codec's timer while no request is in
 * progress; the owner's area comes with the connection. */
static void test_idle_timeout(void)
{
    lg_h1_server_settings_t st;
    lg_h1_server_settings_init(&st);
    st.idle_timeout_ms = 100;
    st.on_idle_timeout = on_idle_timeout;

    /* a connection that never sends anything */
    setup(&st);
    idle_fired = 0;
    uint64_t t0 = lg_now_ms();
    ok(RUN_UNTIL(idle_fired == 1), "idle timeout fired");
    ok(lg_now_ms() - t0 >= 90, "not before its time (%d ms)", (int)(lg_now_ms() - t0));
    ok(RUN_UNTIL(drv.closed == 1 && client_eof), "closed by the owner");
    teardown();

    /* a request in progress holds it off; it starts again once the request is done */
    setup_ex(&st, 24);
    char *ctx = conn->ctx;
    ok(ctx != NULL && (uintptr_t)ctx % 8 == 0, "ctx area, aligned");
    ok(ctx[0] == 0 && ctx[23] == 0, "zeroed");
    memset(ctx, 0xab, 24); /* ASan: all of it is usable */
    idle_fired = 0;
    SEND("POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhe");
    ok(RUN_UNTIL(drv.streams == 1), "request started");
    run_for(250);
    ok(idle_fired == 0 && drv.closed == 0, "no idle timeout while a request is in progress");
    SEND("llo");
    resp_t r = {0};
    ok(RUN_UNTIL(next_response(&r, 0)), "response");
    ok(RUN_UNTIL(drv.completes == 1), "request done");
    t0 = lg_now_ms();
    ok(RUN_UNTIL(idle_fired == 1), "idle timeout after the request");
    ok(lg_now_ms() - t0 >= 90, "a full period after the request (%d ms)", (int)(lg_now_ms() - t0));
    ok(RUN_UNTIL(drv.closed == 1), "closed");
    resp_free(&r);
    teardown();
}

int main(void)
{
    evloop = h2o_evloop_create();
    lg_loop_init(&loop, evloop);
    test_keep_alive();
    test_pipelined();
    test_chunked_backpressure();
    test_100_continue();
    test_head();
    test_http10();
    test_connection_close();
    test_malformed();
    test_headers_too_large();
    test_client_close_mid_body();
    test_upgrade();
    test_connect();
    test_read_pause();
    test_chunked_response();
    test_big_response();
    test_early_response();
    test_drain_and_reset();
    test_preread_input();
    test_head_waits_for_body();
    test_idle_timeout();
    lg_strbuf_free(&rx);
    lg_loop_dispose(&loop);
    h2o_evloop_destroy(evloop);
    return done();
}
