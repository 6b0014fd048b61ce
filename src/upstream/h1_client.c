/*
 * The upstream HTTP/1.1 client connection: one stream at a time over a
 * connected socket, framing from include/legate/h1.h.
 *
 * Sending: the request head is flattened into the stream's pool; body chunks
 * go to h2o_socket_write as iovecs (with chunk headers around them when the
 * length is unknown) and are never copied. One write is in flight at a time;
 * what arrives meanwhile waits in `queue`. on_data_sent reports a chunk once
 * the write that carried it is done.
 *
 * Receiving: heads and body chunks are delivered as slices of the socket's
 * input buffer. h2o moves that buffer when it grows, so before reading into
 * it again while delivered bytes are unconsumed (or a head is still in use),
 * the buffer is detached into a "pin" and the socket gets a fresh one (only
 * the unparsed tail is copied: framing bytes, never delivered data). A pin is
 * freed when its bytes are consumed and the stream that parsed heads in it
 * has ended. Reading stops while more than buffer_limit bytes are unconsumed
 * or the receiver paused delivery.
 *
 * Callbacks never run from inside an op: whatever an op makes due (resumed
 * delivery, completion, a reset) runs from a 0 ms timer.
 */
#include <errno.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include "legate/h1.h"
#include "legate/http.h"
#include "legate/sock.h"
#include "legate/timer.h"
#include "legate/cluster.h"

typedef struct st_lg__h1c_pin_t {
    struct st_lg__h1c_pin_t *next;
    h2o_buffer_t *buf;
    size_t unconsumed;
    int has_head; /* a head parsed in it may be in use until the stream ends */
} lg__h1c_pin_t;

/* A write batch: iovecs plus the pool their chunk headers live in. */
typedef struct st_lg__h1c_batch_t {
    h2o_iovec_t *bufs;
    size_t size, cap;
    size_t body_bytes; /* caller bytes in it, for on_data_sent */
    int has_end;       /* carries the end of the request */
    h2o_mem_pool_t pool;
} lg__h1c_batch_t;

typedef enum en_lg__h1c_rx_t {
    RX_HEAD,
    RX_BODY_LENGTH,
    RX_BODY_CHUNKED,
    RX_BODY_UNTIL_CLOSE,
    RX_DONE,
} lg__h1c_rx_t;

typedef struct st_lg__h1c_conn_t lg__h1c_conn_t;

typedef struct st_lg__h1c_stream_t {
    lg_stream_t super;
    lg__h1c_conn_t *conn;
    h2o_mem_pool_t pool; /* used when the driver lends none */
    lg_resp_head_t head;
    lg_h1_msg_info_t info;
    lg_h1_chunked_decoder_t chunked;
    uint64_t body_remaining;
    unsigned req_flags;
    lg__h1c_rx_t rx;
    unsigned chunk_body : 1, headers_sent : 1, end_queued : 1, request_done : 1, paused : 1, keep_alive : 1;
    unsigned tunnel : 1;   /* CONNECT 2xx or 101: the socket carries raw bytes */
    unsigned at_limit : 1; /* reading stopped on the buffer limit (on_flow told) */
} lg__h1c_stream_t;

struct st_lg__h1c_conn_t {
    lg_client_conn_t super;
    lg_loop_t *loop;
    h2o_socket_t *sock;
    const lg_h1_limits_t *lim;
    uint32_t buffer_limit;
    lg__h1c_stream_t *stream;
    uint32_t seq;
    /* input */
    size_t parse_off;      /* bytes of sock->input already handled */
    size_t last_len;       /* lg_h1_parse_response resume hint */
    size_t cur_unconsumed; /* delivered from sock->input, not consumed */
    int cur_pinned;        /* sock->input holds a head in use */
    lg__h1c_pin_t *pins, **pins_tail;
    size_t unconsumed; /* all delivered, not consumed */
    /* output */
    lg__h1c_batch_t batches[2];
    lg__h1c_batch_t *queue, *inflight;
    /* deferred work */
    lg_timer_t timer;
    unsigned depth;
    lg_reset_reason_t close_reason;
    lg_reset_reason_t stream_reset_reason;
    const char *stream_reset_detail;
    unsigned reading : 1, run_due : 1, close_due : 1, closed : 1, peer_closed : 1, stream_failed : 1, write_done_due : 1,
        write_failed : 1, half_closed : 1;
};

static const lg_stream_ops_t stream_ops;
static void process(lg__h1c_conn_t *conn);
static void on_read(h2o_socket_t *sock, const char *err);

/* ---- entering, leaving, deferring ---- */

static void on_timer(lg_timer_t *t);

static void schedule(lg__h1c_conn_t *conn)
{
    if (!lg_timer_is_active(&conn->timer))
        lg_timer_start(conn->loop, &conn->timer, 0, on_timer);
}

static void batch_dispose(lg__h1c_batch_t *b)
{
    free(b->bufs);
    h2o_mem_clear_pool(&b->pool);
}

static void pins_free(lg__h1c_conn_t *conn)
{
    while (conn->pins != NULL) {
        lg__h1c_pin_t *p = conn->pins;
        conn->pins = p->next;
        h2o_buffer_dispose(&p->buf);
        free(p);
    }
    conn->pins_tail = &conn->pins;
    conn->cur_unconsumed = 0;
    conn->cur_pinned = 0;
    conn->unconsumed = 0;
}

static void conn_free(lg__h1c_conn_t *conn)
{
    lg_timer_stop(&conn->timer);
    pins_free(conn);
    batch_dispose(&conn->batches[0]);
    batch_dispose(&conn->batches[1]);
    free(conn);
}

/* ---- streams ---- */

/* Frees a stream that is no longer conn->stream; its heads and data are
 * no longer referenced, so nothing needs pinning. */
static void stream_free(lg__h1c_stream_t *s)
{
    pins_free(s->conn);
    h2o_mem_clear_pool(&s->pool);
    lg_http_cache_free(LG_HTTP_CACHE_H1_CLIENT_STREAM, s);
}

/* The driver's request pool when it lends one (lg_stream_t.pool), else the stream's own. */
static h2o_mem_pool_t *stream_pool(lg__h1c_stream_t *s)
{
    return s->super.pool != NULL ? s->super.pool : &s->pool;
}

/* Starts closing the connection with `reason` for the pool; a live stream is
 * reset with stream_reason (and its callback fires unless `silent`). */
static void conn_close(lg__h1c_conn_t *conn, lg_reset_reason_t reason, lg_reset_reason_t stream_reason, const char *detail)
{
    if (conn->closed)
        return;
    conn->closed = 1;
    conn->close_reason = reason;
    if (conn->sock != NULL && conn->sock->ssl == NULL && h2o_socket_is_writing(conn->sock))
        shutdown(h2o_socket_get_fd(conn->sock), SHUT_RDWR); /* see write_now */
    if (conn->reading) {
        conn->reading = 0;
        h2o_socket_read_stop(conn->sock);
    }
    lg__h1c_stream_t *s = conn->stream;
    if (s != NULL) {
        conn->stream = NULL;
        s->super.cbs->on_reset(&s->super, stream_reason, detail);
        stream_free(s);
    }
    conn->close_due = 1;
    schedule(conn);
}

/* The end of a connection: tell the pool, then free. Only at depth 0. */
static void conn_finish(lg__h1c_conn_t *conn)
{
    lg_timer_stop(&conn->timer);
    conn->super.cbs->on_close(&conn->super, conn->close_reason);
    if (conn->sock != NULL)
        h2o_socket_close(conn->sock);
    conn_free(conn);
}

static void enter(lg__h1c_conn_t *conn)
{
    ++conn->depth;
}

/* Returns 0 when the connection is gone. */
static int leave(lg__h1c_conn_t *conn)
{
    if (--conn->depth == 0 && conn->close_due) {
        conn_finish(conn);
        return 0;
    }
    return 1;
}

/* Completes the stream when both directions ended and every delivered byte
 * was consumed; the connection is reused when the response allowed it. */
static int maybe_complete(lg__h1c_conn_t *conn)
{
    lg__h1c_stream_t *s = conn->stream;
    if (s == NULL || s->rx != RX_DONE || !s->request_done || conn->unconsumed != 0)
        return 0;
    /* Bytes past the end of the response would be read as the next request's
     * response (response queue poisoning): the connection is not reused and
     * counts as a protocol error, as Envoy's codec client does. */
    int extra = conn->sock->input->size != conn->parse_off;
    int keep = s->keep_alive && !extra && !conn->peer_closed && !conn->closed;
    conn->stream = NULL;
    s->super.cbs->on_complete(&s->super);
    stream_free(s);
    conn->super.cbs->on_stream_done(&conn->super);
    if (extra)
        conn_close(conn, LG_RESET_PROTOCOL_ERROR, LG_RESET_LOCAL, NULL);
    else if (!keep)
        conn_close(conn, conn->peer_closed ? LG_RESET_CONNECTION_TERMINATION : LG_RESET_LOCAL, LG_RESET_LOCAL, NULL);
    return 1;
}

/* ---- output ---- */

static void batch_push(lg__h1c_batch_t *b, h2o_iovec_t v)
{
    if (v.len == 0)
        return;
    if (b->size == b->cap) {
        b->cap = b->cap != 0 ? b->cap * 2 : 8;
        b->bufs = lg_realloc(b->bufs, b->cap * sizeof(b->bufs[0]));
    }
    b->bufs[b->size++] = v;
}

/* Writes what the kernel takes now; h2o writes the rest from the caller's
 * bytes (TLS: h2o encrypts them into its own buffer at once). The batch
 * completes when that write does, or on the next turn when everything went out
 * at once. A reset lets the sender free its bytes: conn_close() shuts a plain
 * socket down first, so that h2o's pending writev fails before the kernel
 * reads them. */
static void on_write_complete(h2o_socket_t *sock, const char *err);

static size_t write_now(lg__h1c_conn_t *conn, h2o_iovec_t *bufs, size_t cnt, size_t *first_off)
{
    *first_off = 0;
    if (conn->sock->ssl != NULL)
        return 0;
    int failed = 0;
    size_t done = lg_sock_send_now(conn->sock, bufs, cnt, first_off, &failed);
    if (failed)
        conn->write_failed = 1;
    return done;
}

/* A batch the kernel took at once, with nothing for on_data_sent: the end
 * of the request is recorded now; completion or a half-close (which may not
 * run from inside an op) waits for the timer. */
static void batch_complete_quietly(lg__h1c_conn_t *conn, lg__h1c_batch_t *b)
{
    int end = b->has_end;
    conn->inflight = NULL;
    b->size = 0;
    b->has_end = 0;
    h2o_mem_clear_pool(&b->pool);
    lg__h1c_stream_t *s = conn->stream;
    if (s != NULL && end) {
        s->request_done = 1;
        if (s->rx == RX_DONE || s->tunnel)
            schedule(conn);
    }
}

static void flush(lg__h1c_conn_t *conn)
{
    if (conn->inflight != NULL || conn->queue->size == 0 || conn->closed)
        return;
    lg__h1c_batch_t *b = conn->queue;
    conn->inflight = b;
    conn->queue = b == &conn->batches[0] ? &conn->batches[1] : &conn->batches[0];
    size_t off, done = write_now(conn, b->bufs, b->size, &off);
    if (done == b->size && !conn->write_failed && b->body_bytes == 0) {
        /* all written and no caller bytes to report: done here, without a deferred completion */
        batch_complete_quietly(conn, b);
        return;
    }
    if (done == b->size || conn->write_failed) {
        conn->write_done_due = 1;
        schedule(conn);
        return;
    }
    b->bufs[done].base += off; /* h2o copies the iovecs, not the bytes */
    b->bufs[done].len -= off;
    h2o_socket_write(conn->sock, b->bufs + done, b->size - done, on_write_complete);
}

/* A tunnel's request side ended and everything was written: the upstream
 * sees EOF (Envoy half-closes CONNECT and TCP tunnels the same way). h2o has
 * no half-close for TLS, so a TLS tunnel stays open until either side closes. */
static void maybe_half_close(lg__h1c_conn_t *conn)
{
    lg__h1c_stream_t *s = conn->stream;
    if (s == NULL || !s->tunnel || !s->request_done || conn->half_closed || conn->closed || conn->inflight != NULL ||
        conn->queue->size != 0 || conn->sock->ssl != NULL)
        return;
    conn->half_closed = 1;
    shutdown(h2o_socket_get_fd(conn->sock), SHUT_WR);
}

static void write_done(lg__h1c_conn_t *conn, const char *err)
{
    lg__h1c_batch_t *b = conn->inflight;
    conn->inflight = NULL;
    if (err != NULL || conn->write_failed) {
        conn->peer_closed = 1;
        conn_close(conn, LG_RESET_CONNECTION_TERMINATION, LG_RESET_CONNECTION_TERMINATION, "upstream write failed");
        return;
    }
    size_t sent = b->body_bytes;
    int end = b->has_end;
    b->size = 0;
    b->body_bytes = 0;
    b->has_end = 0;
    h2o_mem_clear_pool(&b->pool);
    lg__h1c_stream_t *s = conn->stream;
    if (s != NULL && end)
        s->request_done = 1;
    if (s != NULL && sent != 0)
        s->super.cbs->on_data_sent(&s->super, sent);
    if (s != NULL && conn->stream == s)
        maybe_complete(conn);
    flush(conn);
    maybe_half_close(conn);
}

static void on_write_complete(h2o_socket_t *sock, const char *err)
{
    lg__h1c_conn_t *conn = sock->data;
    enter(conn);
    write_done(conn, err);
    leave(conn);
}

/* One pass over the request headers: content-length present; an upgrade (an
 * upgrade header and "upgrade" in a connection header). */
static void scan_request(const lg_headers_t *h, lg_h1_encode_ctx_t *ctx)
{
    int upgrade = 0, conn_upgrade = 0;
    for (size_t i = 0; i != h->size; ++i) {
        h2o_iovec_t n = h->entries[i].name, v = h->entries[i].value;
        if (h2o_memis(n.base, n.len, H2O_STRLIT("content-length")))
            ctx->has_content_length = 1;
        else if (h2o_memis(n.base, n.len, H2O_STRLIT("upgrade")))
            upgrade = 1;
        else if (h2o_memis(n.base, n.len, H2O_STRLIT("connection")) &&
                 h2o_contains_token(v.base, v.len, H2O_STRLIT("upgrade"), ','))
            conn_upgrade = 1;
    }
    ctx->is_upgrade = upgrade && conn_upgrade;
}

static int is_method(const lg_req_head_t *head, const char *m)
{
    return h2o_memis(head->method.base, head->method.len, m, strlen(m));
}

static void send_headers(lg_stream_t *_s, void *_head, int end_stream)
{
    lg__h1c_stream_t *s = (lg__h1c_stream_t *)_s;
    lg__h1c_conn_t *conn = s->conn;
    const lg_req_head_t *head = _head;
    lg_h1_encode_ctx_t ctx = {0};
    scan_request(&head->headers, &ctx);
    ctx.end_stream = end_stream != 0;
    ctx.is_connect = is_method(head, "CONNECT");
    ctx.is_bodiless_method = is_method(head, "GET") || is_method(head, "HEAD") || is_method(head, "DELETE") ||
                             is_method(head, "TRACE") || ctx.is_connect;
    unsigned flags = lg_h1_encode_framing(&ctx);
    s->chunk_body = (flags & LG_H1_CHUNK_BODY) != 0;
    s->req_flags = (is_method(head, "HEAD") ? LG_H1_REQ_HEAD : 0) | (ctx.is_connect ? LG_H1_REQ_CONNECT : 0) |
                   (ctx.is_upgrade ? LG_H1_REQ_UPGRADE : 0);
    s->headers_sent = 1;
    h2o_iovec_t out;
    if (lg_h1_flatten_request_head(stream_pool(s), head, flags & (LG_H1_ADD_CHUNKED_TE | LG_H1_ADD_CONTENT_LENGTH_ZERO), &out) !=
        0) {
        /* the head would break the framing: nothing was sent; reset from the timer */
        conn->stream_failed = 1;
        conn->stream_reset_reason = LG_RESET_LOCAL;
        conn->stream_reset_detail = "invalid upstream request headers";
        schedule(conn);
        return;
    }
    batch_push(conn->queue, out);
    if (end_stream) {
        s->end_queued = 1;
        conn->queue->has_end = 1;
        flush(conn);
    } else {
        /* the head waits for the first body bytes (one write for both), at the latest until the timer */
        schedule(conn);
    }
}

static void send_data(lg_stream_t *_s, h2o_iovec_t data, int end_stream)
{
    lg__h1c_stream_t *s = (lg__h1c_stream_t *)_s;
    lg__h1c_conn_t *conn = s->conn;
    lg__h1c_batch_t *b = conn->queue;
    if (s->end_queued || conn->stream_failed)
        return;
    if (data.len != 0) {
        if (s->chunk_body) {
            char *hdr = h2o_mem_alloc_pool(&b->pool, LG_H1_CHUNK_HEADER_MAX);
            batch_push(b, h2o_iovec_init(hdr, lg_h1_chunk_header(hdr, data.len)));
        }
        batch_push(b, data);
        if (s->chunk_body)
            batch_push(b, h2o_iovec_init(H2O_STRLIT(LG_H1_CRLF)));
        b->body_bytes += data.len;
    }
    if (end_stream) {
        if (s->chunk_body)
            batch_push(b, h2o_iovec_init(H2O_STRLIT(LG_H1_LAST_CHUNK)));
        s->end_queued = 1;
        b->has_end = 1;
        if (b->size == 0) { /* nothing to write: the request ends here */
            s->request_done = 1;
            b->has_end = 0;
            schedule(conn);
            return;
        }
    }
    flush(conn);
}

static void send_trailers(lg_stream_t *_s, lg_headers_t *trailers)
{
    lg__h1c_stream_t *s = (lg__h1c_stream_t *)_s;
    lg__h1c_conn_t *conn = s->conn;
    h2o_iovec_t last;
    if (s->end_queued || conn->stream_failed)
        return;
    if (!s->chunk_body || lg_h1_flatten_last_chunk(&conn->queue->pool, trailers, &last) != 0) {
        /* a Content-Length body cannot carry trailers (Envoy drops them); invalid ones are dropped too */
        send_data(_s, h2o_iovec_init(NULL, 0), 1);
        return;
    }
    batch_push(conn->queue, last);
    s->end_queued = 1;
    conn->queue->has_end = 1;
    flush(conn);
}

/* ---- input ---- */

static void update_reading(lg__h1c_conn_t *conn);

/* Frees the pins whose bytes were all consumed, except those holding a head
 * (freed when the stream ends): a long body keeps no more than what is unconsumed. */
static void release_pins(lg__h1c_conn_t *conn)
{
    for (lg__h1c_pin_t **p = &conn->pins; *p != NULL;) {
        lg__h1c_pin_t *pin = *p;
        if (pin->unconsumed != 0 || pin->has_head) {
            p = &pin->next;
            continue;
        }
        *p = pin->next;
        if (conn->pins_tail == &pin->next)
            conn->pins_tail = p;
        h2o_buffer_dispose(&pin->buf);
        free(pin);
    }
}

static void consume(lg_stream_t *_s, size_t bytes)
{
    lg__h1c_stream_t *s = (lg__h1c_stream_t *)_s;
    lg__h1c_conn_t *conn = s->conn;
    if (bytes > conn->unconsumed)
        bytes = conn->unconsumed;
    conn->unconsumed -= bytes;
    for (lg__h1c_pin_t **p = &conn->pins; bytes != 0 && *p != NULL;) {
        size_t n = (*p)->unconsumed < bytes ? (*p)->unconsumed : bytes;
        (*p)->unconsumed -= n;
        bytes -= n;
        p = &(*p)->next;
    }
    conn->cur_unconsumed -= bytes;
    release_pins(conn);
    if (conn->depth == 0) {
        conn->run_due = 1;
        schedule(conn);
    }
}

static void read_pause(lg_stream_t *_s, int paused)
{
    lg__h1c_stream_t *s = (lg__h1c_stream_t *)_s;
    s->paused = paused != 0;
    if (s->conn->depth == 0) {
        s->conn->run_due = 1;
        schedule(s->conn);
    }
}

static void reset(lg_stream_t *_s, lg_reset_reason_t reason)
{
    lg__h1c_stream_t *s = (lg__h1c_stream_t *)_s;
    lg__h1c_conn_t *conn = s->conn;
    /* a write in flight may reference the caller's bytes: conn_close() shuts the socket down (see write_now) */
    conn->stream = NULL;
    stream_free(s);
    conn_close(conn, LG_RESET_LOCAL, reason, NULL);
}

/* Detaches sock->input (it holds delivered or pinned bytes) so that reading
 * can go on into a fresh buffer. */
static void detach_input(lg__h1c_conn_t *conn)
{
    lg__h1c_pin_t *pin = lg_malloc(sizeof(*pin));
    *pin = (lg__h1c_pin_t){NULL, lg_sock_detach_input(&conn->sock->input, conn->parse_off), conn->cur_unconsumed, conn->cur_pinned};
    *conn->pins_tail = pin;
    conn->pins_tail = &pin->next;
    conn->parse_off = 0;
    conn->cur_unconsumed = 0;
    conn->cur_pinned = 0;
}

/* Drops handled bytes from sock->input when nothing in it is referenced. */
static void compact_input(lg__h1c_conn_t *conn)
{
    if (conn->cur_unconsumed == 0 && !conn->cur_pinned && conn->parse_off != 0) {
        h2o_buffer_consume(&conn->sock->input, conn->parse_off);
        conn->parse_off = 0;
    }
}

static int want_read(lg__h1c_conn_t *conn)
{
    lg__h1c_stream_t *s = conn->stream;
    if (conn->closed || conn->peer_closed)
        return 0;
    if (s == NULL)
        return 1; /* idle: notice the peer closing */
    return !s->paused && s->rx != RX_DONE && conn->unconsumed < conn->buffer_limit;
}

/* Tells the pool when reading stops on the buffer limit and when it goes on with the
 * stream still open (Envoy's upstream flow-control counters). */
static void note_flow(lg__h1c_conn_t *conn)
{
    lg__h1c_stream_t *s = conn->stream;
    if (s == NULL)
        return;
    int at_limit = !conn->closed && !conn->peer_closed && s->rx != RX_DONE && conn->unconsumed >= conn->buffer_limit;
    if (at_limit == s->at_limit)
        return;
    s->at_limit = at_limit;
    if (conn->super.cbs->on_flow != NULL)
        conn->super.cbs->on_flow(&conn->super, at_limit);
}

static void update_reading(lg__h1c_conn_t *conn)
{
    if (conn->sock == NULL)
        return;
    note_flow(conn);
    compact_input(conn);
    if (want_read(conn)) {
        if (conn->cur_unconsumed != 0 || conn->cur_pinned)
            detach_input(conn);
        if (!conn->reading) {
            conn->reading = 1;
            h2o_socket_read_start(conn->sock, on_read);
        }
    } else if (conn->reading) {
        conn->reading = 0;
        h2o_socket_read_stop(conn->sock);
    }
}

static void deliver_data(lg__h1c_stream_t *s, h2o_iovec_t data, int end_stream)
{
    lg__h1c_conn_t *conn = s->conn;
    conn->cur_unconsumed += data.len;
    conn->unconsumed += data.len;
    if (end_stream)
        s->rx = RX_DONE;
    s->super.cbs->on_data(&s->super, data, end_stream);
}

static void protocol_error(lg__h1c_conn_t *conn, const lg_h1_error_t *err)
{
    LG_DEBUG(client, "upstream response rejected: %s", err->msg != NULL ? err->msg : err->details);
    conn_close(conn, LG_RESET_PROTOCOL_ERROR, LG_RESET_PROTOCOL_ERROR, err->details);
}

/* Handles a parsed head of `len` bytes at the parse offset. */
static void on_head(lg__h1c_stream_t *s, lg_resp_head_t *head, size_t len)
{
    lg__h1c_conn_t *conn = s->conn;
    conn->parse_off += len;
    conn->last_len = 0;
    conn->cur_pinned = 1;
    if (s->info.is_interim) {
        if (s->super.cbs->on_informational != NULL)
            s->super.cbs->on_informational(&s->super, head);
        return;
    }
    s->keep_alive = s->info.keep_alive;
    /* connection: close (or HTTP/1.0 without keep-alive): the pool takes no new
     * request on it, as after an HTTP/2 GOAWAY (Envoy counts upstream_cx_close_notify) */
    if (!s->info.keep_alive && conn->super.cbs->on_goaway != NULL)
        conn->super.cbs->on_goaway(&conn->super);
    switch (s->info.body) {
    case LG_H1_BODY_NONE:
        s->rx = RX_DONE;
        break;
    case LG_H1_BODY_CONTENT_LENGTH:
        s->rx = RX_BODY_LENGTH;
        s->body_remaining = s->info.content_length;
        break;
    case LG_H1_BODY_CHUNKED:
        s->rx = RX_BODY_CHUNKED;
        lg_h1_chunked_decoder_init(&s->chunked, conn->lim, 0, stream_pool(s), NULL);
        break;
    default: /* until close, tunnel */
        s->rx = RX_BODY_UNTIL_CLOSE;
        s->keep_alive = 0;
        s->tunnel = s->info.body == LG_H1_BODY_TUNNEL;
        break;
    }
    s->super.cbs->on_headers(&s->super, head, s->rx == RX_DONE);
}

/* One step of parsing; returns 0 when more input is needed (or nothing can be done). */
static int parse_step(lg__h1c_stream_t *s)
{
    lg__h1c_conn_t *conn = s->conn;
    char *buf = conn->sock->input->bytes + conn->parse_off;
    size_t avail = conn->sock->input->size - conn->parse_off;
    lg_h1_error_t err = {0};
    switch (s->rx) {
    case RX_HEAD: {
        lg_resp_head_t *head = s->head.status == 0 ? &s->head : h2o_mem_alloc_pool(stream_pool(s), sizeof(*head));
        *head = (lg_resp_head_t){0};
        ssize_t r = lg_h1_parse_response(stream_pool(s), buf, avail, conn->last_len, conn->lim, s->req_flags, head, &s->info, &err);
        if (r == -2) {
            conn->last_len = avail;
            return 0;
        }
        if (r < 0) {
            protocol_error(conn, &err);
            return 0;
        }
        if (s->info.is_interim && head == &s->head) { /* keep s->head for the final response */
            lg_resp_head_t *copy = h2o_mem_alloc_pool(stream_pool(s), sizeof(*copy));
            *copy = *head;
            *head = (lg_resp_head_t){0};
            head = copy;
        }
        on_head(s, head, (size_t)r);
        return 1;
    }
    case RX_BODY_LENGTH: {
        size_t n = avail < s->body_remaining ? avail : (size_t)s->body_remaining;
        s->body_remaining -= n;
        conn->parse_off += n;
        deliver_data(s, h2o_iovec_init(buf, n), s->body_remaining == 0);
        return 1;
    }
    case RX_BODY_CHUNKED: {
        h2o_iovec_t data[16];
        size_t ndata = LG_ARRAY_SIZE(data);
        int done = 0;
        ssize_t used = lg_h1_chunked_decode(&s->chunked, buf, avail, data, &ndata, &done, &err);
        if (used < 0) {
            protocol_error(conn, &err);
            return 0;
        }
        conn->parse_off += (size_t)used;
        for (size_t i = 0; i != ndata && conn->stream == s; ++i)
            deliver_data(s, data[i], done && i + 1 == ndata);
        if (done && ndata == 0 && conn->stream == s)
            deliver_data(s, h2o_iovec_init(NULL, 0), 1);
        return used != 0 || ndata != 0;
    }
    case RX_BODY_UNTIL_CLOSE:
        conn->parse_off += avail;
        deliver_data(s, h2o_iovec_init(buf, avail), 0);
        return 1;
    default:
        return 0;
    }
}

/* Delivers what sock->input holds, as far as the stream can take it. */
static void process(lg__h1c_conn_t *conn)
{
    if (conn->stream == NULL && conn->sock->input->size != conn->parse_off) {
        lg_h1_error_t err = {502, "upstream_data_while_idle", "the upstream sent bytes with no request outstanding"};
        protocol_error(conn, &err);
        return;
    }
    lg__h1c_stream_t *s;
    while ((s = conn->stream) != NULL && !conn->closed && !s->paused && s->rx != RX_DONE &&
           conn->sock->input->size != conn->parse_off && conn->unconsumed < conn->buffer_limit) {
        if (!parse_step(s))
            break;
    }
}

/* After the upstream closed its side: an until-close body ends once its
 * bytes are delivered; any other unfinished response was cut short. */
static void check_peer_closed(lg__h1c_conn_t *conn)
{
    lg__h1c_stream_t *s = conn->stream;
    if (s == NULL) {
        conn_close(conn, LG_RESET_CONNECTION_TERMINATION, LG_RESET_CONNECTION_TERMINATION, NULL);
        return;
    }
    if (s->rx == RX_DONE || conn->sock->input->size != conn->parse_off)
        return; /* complete once consumed; or bytes still to deliver */
    if (s->rx == RX_BODY_UNTIL_CLOSE) {
        deliver_data(s, h2o_iovec_init(NULL, 0), 1);
        return;
    }
    conn_close(conn, LG_RESET_CONNECTION_TERMINATION, LG_RESET_CONNECTION_TERMINATION,
               "upstream connection closed before the response ended");
}

/* Parses, completes and adjusts reading; the body of every entry point. */
static void run(lg__h1c_conn_t *conn)
{
    conn->run_due = 0;
    if (conn->write_done_due) {
        conn->write_done_due = 0;
        write_done(conn, NULL);
        if (conn->closed)
            return;
    }
    if (conn->stream_failed && conn->stream != NULL) {
        conn->stream_failed = 0;
        conn_close(conn, LG_RESET_LOCAL, conn->stream_reset_reason, conn->stream_reset_detail);
        return;
    }
    flush(conn);
    if (!conn->closed)
        process(conn);
    if (!conn->closed && conn->peer_closed)
        check_peer_closed(conn);
    if (!conn->closed)
        maybe_complete(conn);
    if (!conn->closed)
        maybe_half_close(conn);
    if (!conn->closed)
        update_reading(conn);
}

/* How much one read should take: a head fits the recycled 8 KiB buffer; a
 * body is read in buffers of its size, up to LG_SOCK_READ_MAX. */
static size_t read_want(lg__h1c_conn_t *conn)
{
    lg__h1c_stream_t *s = conn->stream;
    if (s == NULL || s->rx == RX_HEAD || s->rx == RX_DONE)
        return LG_SOCK_READ_MIN;
    return s->rx == RX_BODY_LENGTH ? s->body_remaining : LG_SOCK_READ_MAX;
}

static void on_read(h2o_socket_t *sock, const char *err)
{
    lg__h1c_conn_t *conn = sock->data;
    err = lg_sock_read(sock, err, read_want(conn));
    enter(conn);
    if (err != NULL)
        conn->peer_closed = 1;
    run(conn);
    leave(conn);
}

static void on_timer(lg_timer_t *t)
{
    lg__h1c_conn_t *conn = H2O_STRUCT_FROM_MEMBER(lg__h1c_conn_t, timer, t);
    enter(conn);
    if (!conn->closed)
        run(conn);
    leave(conn);
}

/* ---- connection ops ---- */

static lg_stream_t *new_stream(lg_client_conn_t *_conn)
{
    lg__h1c_conn_t *conn = (lg__h1c_conn_t *)_conn;
    if (conn->stream != NULL || conn->closed || conn->peer_closed)
        return NULL;
    lg__h1c_stream_t *s = lg_http_cache_alloc(LG_HTTP_CACHE_H1_CLIENT_STREAM, sizeof(*s));
    s->super.ops = &stream_ops;
    s->super.id = ++conn->seq;
    s->super.version = LG_HTTP_11;
    s->conn = conn;
    h2o_mem_init_pool(&s->pool);
    conn->stream = s;
    return &s->super;
}

static size_t capacity(lg_client_conn_t *_conn)
{
    lg__h1c_conn_t *conn = (lg__h1c_conn_t *)_conn;
    return conn->stream == NULL && !conn->closed && !conn->peer_closed;
}

static size_t active_streams(lg_client_conn_t *_conn)
{
    return ((lg__h1c_conn_t *)_conn)->stream != NULL;
}

static void close_op(lg_client_conn_t *_conn)
{
    lg__h1c_conn_t *conn = (lg__h1c_conn_t *)_conn;
    conn_close(conn, LG_RESET_LOCAL, LG_RESET_CONNECTION_TERMINATION, "upstream connection closed by the pool");
}

static const lg_stream_ops_t stream_ops = {send_headers, send_data, send_trailers, consume, reset, read_pause};
static const lg_client_conn_ops_t conn_ops = {new_stream, capacity, active_streams, close_op};

lg_client_conn_t *lg_h1_client_conn_new(lg_loop_t *loop, h2o_socket_t *sock, const lg_h1_limits_t *lim, uint32_t buffer_limit,
                                        const lg_client_conn_cbs_t *cbs, void *ctx)
{
    lg__h1c_conn_t *conn = lg_calloc(1, sizeof(*conn));
    conn->super = (lg_client_conn_t){&conn_ops, cbs, ctx, LG_HTTP_11};
    conn->loop = loop;
    conn->sock = sock;
    conn->lim = lim;
    conn->buffer_limit = buffer_limit != 0 ? buffer_limit : 1;
    conn->pins_tail = &conn->pins;
    conn->queue = &conn->batches[0];
    h2o_mem_init_pool(&conn->batches[0].pool);
    h2o_mem_init_pool(&conn->batches[1].pool);
    sock->data = conn;
    lg_sock_read_bounded(sock);
    update_reading(conn);
    return &conn->super;
}
