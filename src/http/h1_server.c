/*
 * Downstream HTTP/1.1 connection (see legate/h1_server.h for the contract).
 *
 * Input: requests are parsed from sock->input in place. A head is copied once
 * into its stream's pool and dropped from the buffer; body bytes are handed
 * out as slices of the buffer. h2o may move the buffer when it reads more, so
 * while a slice of it is unconsumed and the body goes on (a router keeping the
 * body for a retry consumes nothing until the request ends or fills the buffer
 * limit), the buffer is detached: it is pinned until its slices are consumed
 * and reading goes on into a fresh one. `parsed` counts the bytes at the front
 * of the buffer that belong to the current request and were decoded (delivered
 * or framing), and they are dropped once every slice of it is consumed.
 *
 * Output: one write in flight. Everything sent meanwhile is queued in the
 * pending batch (h2o copies a write's iovecs, so one array serves every
 * batch); the caller's body bytes are referenced, never copied, and reported
 * through on_data_sent when the batch that carried them completes. Heads live
 * in the stream's pool (a stream outlives its response's write), codec error
 * replies in the spare stream's, chunk headers in the batch's scratch blocks.
 *
 * Memory: an idle keep-alive connection holds this struct only (no stream, no
 * output state, settings shared); h2o frees the socket's input buffer once it
 * is consumed. The output state (lg_h1_out_t: the batches and their iovecs)
 * comes from the thread's cache when something is queued and goes back once
 * everything is written and no stream runs.
 *
 * Reentrancy: every entry point (socket and timer callbacks, ops) holds
 * `depth`; a closed connection and detached streams are freed when it drops
 * to zero, so a callback may close or reset anything.
 */
#include <assert.h>
#include <sys/socket.h>
#include <time.h>
#include <h2o/string_.h>
#include <h2o/time_.h>
#include "legate/common.h"
#include "legate/h1.h"
#include "legate/h1_server.h"
#include "legate/http.h"
#include "legate/sock.h"
#include "legate/timer.h"

typedef struct st_lg_h1_server_conn_t lg_h1_server_conn_t;
typedef struct st_lg_h1_server_stream_t lg_h1_server_stream_t;

/* Chunk headers of one batch, freed when the batch is written. */
typedef struct st_lg_h1_scratch_t {
    struct st_lg_h1_scratch_t *next;
    size_t used;
    char bytes[8 * LG_H1_CHUNK_HEADER_MAX];
} lg_h1_scratch_t;

/* A batch of output: the pending one collects, the inflight one is being written. */
typedef struct st_lg_h1_batch_t {
    lg_h1_scratch_t *scratch;
    size_t body_bytes; /* caller bytes in this batch, reported by on_data_sent */
} lg_h1_batch_t;

/* The output state, held only while something is queued or being written. */
typedef struct st_lg_h1_out_t {
    /* the pending batch's iovecs: bufs_inline, or an array while a response needs more */
    h2o_iovec_t *bufs;
    uint32_t nbufs;         /* iovecs in bufs */
    uint32_t bufs_cap_log2; /* bufs holds 1 << bufs_cap_log2 iovecs */
    lg_h1_batch_t pending, inflight;
    h2o_iovec_t bufs_inline[4]; /* 1 << 2 */
} lg_h1_out_t;

/* A detached input buffer that delivered slices still point into. */
typedef struct st_lg_h1_pin_t {
    struct st_lg_h1_pin_t *next;
    h2o_buffer_t *buf;
    size_t unconsumed;
} lg_h1_pin_t;

struct st_lg_h1_server_stream_t {
    lg_stream_t super;
    lg_h1_server_conn_t *conn;
    h2o_mem_pool_t pool;
    lg_req_head_t head;
    lg_h1_msg_info_t info;
    lg_h1_chunked_decoder_t chunked;
    uint64_t body_left;      /* Content-Length bytes not delivered yet */
    lg_h1_pin_t *pins;       /* detached buffers, oldest first (see the top of the file) */
    uint32_t cur_unconsumed; /* of the connection's unconsumed bytes, those in sock->input */
    uint32_t pinned_cap;     /* the pins' capacity (bounded in want_read) */
    lg_h1_server_stream_t *next_zombie;
    unsigned req_done : 1;     /* end_stream delivered */
    unsigned resp_started : 1; /* final head queued */
    unsigned resp_done : 1;    /* end of the response queued */
    unsigned chunk_out : 1;    /* response body is chunk-encoded */
    unsigned no_body_out : 1;  /* response body bytes are dropped (HEAD, 204, 304) */
    unsigned will_close : 1;   /* the connection closes after this response */
    unsigned close_framed : 1; /* no delayed close even if the request is unfinished (see finish_stream) */
    unsigned paused : 1;       /* read_pause */
    unsigned sent_100 : 1;
    unsigned detached : 1; /* no longer the connection's: no op or callback applies */
    unsigned at_limit : 1; /* reading stopped on the held bytes (on_flow told) */
};

struct st_lg_h1_server_conn_t {
    lg_server_conn_t super;
    h2o_socket_t *sock;
    const lg_h1_server_settings_t *settings; /* shared, with the loop (see settings_intern) */
    lg_h1_server_stream_t *stream;           /* the request in progress (announced) */
    lg_h1_server_stream_t *spare;            /* pool for parsing the next head */
    lg_h1_server_stream_t *zombies;          /* detached, freed at depth 0 */
    uint32_t seq;
    uint16_t depth;
    unsigned peer_eof : 1;
    unsigned draining : 1;
    unsigned close_after_write : 1; /* no new request: close once the output is flushed */
    unsigned no_delay_close : 1;    /* ... and then at once (Envoy's FlushWrite), not lingering */
    unsigned lingering : 1;         /* write side shut, draining input until EOF or timeout */
    unsigned closed : 1;
    unsigned resume_due : 1;     /* parse again (input was held back) */
    unsigned flush_due : 1;      /* a response head waits for its first body bytes */
    unsigned dirty : 1;          /* the pending batch has something to write or to report (bufs may be empty) */
    unsigned writing : 1;        /* the inflight batch is being written */
    unsigned write_done_due : 1; /* the kernel took it all (or refused it) at once: on_defer completes it */
    unsigned write_failed : 1;
    uint32_t unconsumed; /* delivered body bytes not consumed yet (at most held_cap) */
    uint32_t last_len;   /* input length at the last incomplete head (< the head size limit) */
    uint32_t parsed;     /* see the top of the file (< buffer_limit + one read) */
    lg_h1_out_t *out;    /* while dirty, writing or a stream runs (see out_get) */
    /* One timer, by its callback: on_defer (0 ms: work for the end of this loop
     * turn, resume_due / flush_due / write_done_due; only while a stream runs,
     * before the first parse, or while a codec reply is written), on_headers_timeout (request_headers_timeout while a head is
     * incomplete: no stream), on_linger_timeout (delayed_close_timeout once
     * lingering, when nothing else is due), on_idle (the owner's idle timeout,
     * while no request is in progress and the codec needs the timer for
     * nothing else: any of the others replaces it, and it is armed again when
     * they are done; armed when a request starts, it fires for nothing). */
    lg_timer_t timer;
};

static const lg_stream_ops_t stream_ops;
static void process_input(lg_h1_server_conn_t *c);
static void on_read(h2o_socket_t *sock, const char *err);

void lg_h1_server_settings_init(lg_h1_server_settings_t *s)
{
    *s = (lg_h1_server_settings_t){.buffer_limit = 1024 * 1024, .delayed_close_timeout_ms = 1000, .server_name = LG_LIT("envoy")};
    lg_h1_limits_init(&s->limits);
}

/* Settings are shared by the connections of a thread that have equal ones
 * (strings compared by content and copied) and the same loop, which is kept
 * here too: most connections come from a few listeners, and an idle
 * connection should cost little. */
typedef struct st_lg_h1_shared_settings_t {
    lg_h1_server_settings_t s; /* first: connections point at it */
    lg_loop_t *loop;
    struct st_lg_h1_shared_settings_t *next;
    size_t refcnt;
    char strings[];
} lg_h1_shared_settings_t;

static __thread lg_h1_shared_settings_t *shared_settings;

/* The settings without their string pointers, for a byte comparison (a
 * difference in padding only costs a second copy, never a wrong match). */
static void settings_key(const lg_h1_server_settings_t *s, lg_h1_server_settings_t *key)
{
    memcpy(key, s, sizeof(*key));
    key->server_name.base = NULL;
    key->limits.default_host_for_http_10.base = NULL;
}

static int settings_equal(const lg_h1_server_settings_t *a, const lg_h1_server_settings_t *b)
{
    lg_h1_server_settings_t ka, kb;
    settings_key(a, &ka);
    settings_key(b, &kb);
    return memcmp(&ka, &kb, sizeof(ka)) == 0 &&
           h2o_memis(a->server_name.base, a->server_name.len, b->server_name.base, b->server_name.len) &&
           h2o_memis(a->limits.default_host_for_http_10.base, a->limits.default_host_for_http_10.len,
                     b->limits.default_host_for_http_10.base, b->limits.default_host_for_http_10.len);
}

static h2o_iovec_t copy_string(char **to, h2o_iovec_t v)
{
    if (v.len == 0)
        return v;
    memcpy(*to, v.base, v.len);
    v.base = *to;
    *to += v.len;
    return v;
}

static const lg_h1_server_settings_t *settings_intern(const lg_h1_server_settings_t *s, lg_loop_t *loop)
{
    lg_h1_shared_settings_t *e;
    for (e = shared_settings; e != NULL; e = e->next) {
        if (e->loop == loop && settings_equal(&e->s, s)) {
            ++e->refcnt;
            return &e->s;
        }
    }
    e = lg_malloc(sizeof(*e) + s->server_name.len + s->limits.default_host_for_http_10.len);
    char *p = e->strings;
    memcpy(&e->s, s, sizeof(*s));
    e->s.server_name = copy_string(&p, s->server_name);
    e->s.limits.default_host_for_http_10 = copy_string(&p, s->limits.default_host_for_http_10);
    e->loop = loop;
    e->refcnt = 1;
    e->next = shared_settings;
    shared_settings = e;
    return &e->s;
}

static void settings_release(const lg_h1_server_settings_t *s)
{
    lg_h1_shared_settings_t *e = (lg_h1_shared_settings_t *)s;
    if (--e->refcnt != 0)
        return;
    lg_h1_shared_settings_t **p = &shared_settings;
    while (*p != e)
        p = &(*p)->next;
    *p = e->next;
    free(e);
}

static lg_loop_t *conn_loop(lg_h1_server_conn_t *c)
{
    return ((const lg_h1_shared_settings_t *)c->settings)->loop;
}

/* The owner's idle timeout */

static void on_idle(lg_timer_t *t);

/* The timer is not needed by the codec itself. */
static int timer_free(lg_h1_server_conn_t *c)
{
    return !lg_timer_is_active(&c->timer) || c->timer.cb == on_idle;
}

/* Arms the owner's idle timeout when no request is in progress and the timer is free. */
static void idle_rearm(lg_h1_server_conn_t *c)
{
    if (c->stream == NULL && !c->closed && !c->lingering && !c->close_after_write && !lg_timer_is_active(&c->timer) &&
        c->settings->idle_timeout_ms != 0)
        lg_timer_start(conn_loop(c), &c->timer, c->settings->idle_timeout_ms, on_idle);
}

/* Lifetime */

static void enter(lg_h1_server_conn_t *c)
{
    ++c->depth;
}

static void stream_free(lg_h1_server_stream_t *s)
{
    h2o_mem_clear_pool(&s->pool);
    lg_http_cache_free(LG_HTTP_CACHE_H1_SERVER_STREAM, s);
}

static void batch_reset(lg_h1_batch_t *b)
{
    while (b->scratch != NULL) {
        lg_h1_scratch_t *next = b->scratch->next;
        free(b->scratch);
        b->scratch = next;
    }
    b->body_bytes = 0;
}

static lg_h1_out_t *out_get(lg_h1_server_conn_t *c)
{
    if (c->out == NULL) {
        lg_h1_out_t *o = lg_http_cache_alloc(LG_HTTP_CACHE_H1_SERVER_OUT, sizeof(*o));
        o->bufs = o->bufs_inline;
        o->bufs_cap_log2 = 2;
        c->out = o;
    }
    return c->out;
}

/* Gives the output state back to the thread's cache; nothing may be queued or in flight. */
static void out_put(lg_h1_server_conn_t *c)
{
    lg_h1_out_t *o = c->out;
    if (o == NULL)
        return;
    batch_reset(&o->pending);
    batch_reset(&o->inflight);
    if (o->bufs != o->bufs_inline)
        free(o->bufs);
    lg_http_cache_free(LG_HTTP_CACHE_H1_SERVER_OUT, o);
    c->out = NULL;
}

static void destroy(lg_h1_server_conn_t *c)
{
    settings_release(c->settings);
    if (c->spare != NULL)
        stream_free(c->spare);
    out_put(c);
    free(c);
}

static void leave(lg_h1_server_conn_t *c)
{
    if (--c->depth != 0)
        return;
    while (c->zombies != NULL) {
        lg_h1_server_stream_t *s = c->zombies;
        c->zombies = s->next_zombie;
        stream_free(s);
    }
    if (c->closed)
        destroy(c);
}

static void on_idle(lg_timer_t *t)
{
    lg_h1_server_conn_t *c = H2O_STRUCT_FROM_MEMBER(lg_h1_server_conn_t, timer, t);
    if (c->closed || c->stream != NULL || c->lingering || c->close_after_write || c->settings->on_idle_timeout == NULL)
        return; /* a request started meanwhile: armed again when it is done */
    enter(c);
    c->settings->on_idle_timeout(&c->super);
    leave(c);
}

/* Drops the request bytes no slice points into any more. */
static void release_parsed(lg_h1_server_conn_t *c)
{
    if (c->parsed != 0 && c->sock != NULL)
        h2o_buffer_consume(&c->sock->input, c->parsed);
    c->parsed = 0;
}

/* The connection's byte counts (lg_server_conn_cbs_t.on_io). */
static void report_io(lg_h1_server_conn_t *c, size_t rx, size_t tx)
{
    if ((rx | tx) != 0 && c->super.cbs->on_io != NULL)
        c->super.cbs->on_io(&c->super, rx, tx);
}

/* Frees the pins whose slices were all consumed (all of them with `all`). */
static void release_pins(lg_h1_server_stream_t *s, int all)
{
    while (s->pins != NULL && (all || s->pins->unconsumed == 0)) {
        lg_h1_pin_t *p = s->pins;
        s->pins = p->next;
        s->pinned_cap -= (uint32_t)p->buf->capacity;
        h2o_buffer_dispose(&p->buf);
        free(p);
    }
}

/* The room after the bytes in sock->input that the next read may fill without
 * moving them: a read reserves LG_SOCK_READ_MIN, and h2o moves or grows a buffer
 * only when the room after its bytes is smaller. TLS decrypts one read (and the
 * rest of a record OpenSSL holds) into as many reservations as it takes, so a TLS
 * read is kept that much smaller than the room. */
static size_t tail_room(lg_h1_server_conn_t *c)
{
    const h2o_buffer_t *b = c->sock->input;
    if (b->bytes == NULL)
        return 0;
    size_t room = b->capacity - b->size - (size_t)(b->bytes - b->_buf),
           margin = c->sock->ssl != NULL ? LG_SOCK_READ_MIN + LG_TLS_HELD_MAX : 0;
    return room > margin ? room - margin : 0;
}

/* Whether the next read can go after the bytes in sock->input without moving them.
 * A slow client's small reads (plain or TLS) thus share one buffer, and a pin is
 * full but for less than LG_SOCK_READ_MIN (TLS: plus the margin). */
static int has_tail_room(lg_h1_server_conn_t *c)
{
    return tail_room(c) >= LG_SOCK_READ_MIN;
}

/* Pins sock->input (it holds unconsumed slices) so that reading can go on into
 * a fresh buffer; the bytes not decoded yet move to the new one. */
static void detach_input(lg_h1_server_conn_t *c, lg_h1_server_stream_t *s)
{
    lg_h1_pin_t *pin = lg_malloc(sizeof(*pin)), **tail = &s->pins;
    *pin = (lg_h1_pin_t){NULL, lg_sock_detach_input(&c->sock->input, c->parsed), s->cur_unconsumed};
    s->pinned_cap += (uint32_t)pin->buf->capacity;
    while (*tail != NULL)
        tail = &(*tail)->next;
    *tail = pin;
    c->parsed = 0;
    s->cur_unconsumed = 0;
}

/* Unlinks the current stream; the receiver's slices are forgotten with it. */
static lg_h1_server_stream_t *detach_stream(lg_h1_server_conn_t *c)
{
    lg_h1_server_stream_t *s = c->stream;
    c->stream = NULL;
    s->detached = 1;
    s->next_zombie = c->zombies;
    c->zombies = s;
    c->unconsumed = 0;
    s->cur_unconsumed = 0;
    release_pins(s, 1);
    release_parsed(c);
    return s;
}

/* Closes the socket at once: queued output is dropped, the stream (if any) is
 * reset. `how`: LG_CONN_CLOSED_REMOTE / _DELAYED (_ACTIVE_RQ is added here). */
static void close_now(lg_h1_server_conn_t *c, unsigned how, lg_reset_reason_t reason, const char *details)
{
    if (c->closed)
        return;
    lg_h1_server_stream_t *s = c->stream != NULL ? detach_stream(c) : NULL;
    c->closed = 1;
    lg_timer_stop(&c->timer);
    h2o_socket_close(c->sock);
    c->sock = NULL;
    c->writing = 0;
    if (s != NULL)
        s->super.cbs->on_reset(&s->super, reason, details);
    c->super.cbs->on_close(&c->super, how | (s != NULL ? LG_CONN_CLOSED_ACTIVE_RQ : 0));
}

static void on_linger_timeout(lg_timer_t *t)
{
    lg_h1_server_conn_t *c = H2O_STRUCT_FROM_MEMBER(lg_h1_server_conn_t, timer, t);
    enter(c);
    close_now(c, LG_CONN_CLOSED_DELAYED, LG_RESET_CONNECTION_TERMINATION, "delayed_close_timeout");
    leave(c);
}

/* Envoy's FlushWriteAndDelay, plus a FIN so that a client reading until close
 * does not wait for the timeout. Called once the output is flushed. */
static void start_linger(lg_h1_server_conn_t *c)
{
    if (c->lingering || c->closed)
        return;
    if (c->settings->delayed_close_timeout_ms == 0 || c->sock->ssl != NULL || c->peer_eof || c->no_delay_close) {
        close_now(c, 0, LG_RESET_CONNECTION_TERMINATION, "downstream_local_disconnect");
        return;
    }
    c->lingering = 1;
    c->resume_due = c->flush_due = 0; /* a deferred parse or flush would do nothing any more */
    shutdown(h2o_socket_get_fd(c->sock), SHUT_WR);
    h2o_buffer_consume(&c->sock->input, c->sock->input->size);
    lg_timer_start(conn_loop(c), &c->timer, c->settings->delayed_close_timeout_ms,
                   on_linger_timeout); /* replaces a headers timeout */
    if (!h2o_socket_is_reading(c->sock))
        h2o_socket_read_start(c->sock, on_read);
}

/* Reading */

/* Delivered and unconsumed body bytes stop at one past the buffer limit: a
 * receiver that keeps the body (a router keeping it for a retry) sees it pass the
 * limit, as Envoy's router must to give the retry up, and a body of exactly the
 * limit still gets its end read and delivered. */
static size_t held_cap(const lg_h1_server_conn_t *c)
{
    return c->settings->buffer_limit < UINT32_MAX ? (size_t)c->settings->buffer_limit + 1 : UINT32_MAX;
}

/* What the pinned buffers of one request may hold: twice the limit, and a read. */
static size_t pin_cap(const lg_h1_server_conn_t *c)
{
    return 2 * (size_t)c->settings->buffer_limit + LG_SOCK_READ_MAX;
}

/* The stream holds all the codec lets it hold: the limit unconsumed, or pins at their cap. */
static int holds_cap(const lg_h1_server_conn_t *c, const lg_h1_server_stream_t *s)
{
    return c->unconsumed >= held_cap(c) || s->pinned_cap >= pin_cap(c);
}

static int want_read(lg_h1_server_conn_t *c)
{
    lg_h1_server_stream_t *s = c->stream;
    if (c->lingering)
        return 1;
    if (c->peer_eof)
        return 0;
    if (s == NULL)
        return 1;
    /* the body goes on until the buffer limit is unconsumed, and while the pinned
     * buffers hold less than twice the limit (only small TLS reads come near it);
     * past the request, its slices are consumed before the next one is read */
    if ((s->paused && !s->req_done) || holds_cap(c, s) || (s->req_done && c->unconsumed != 0))
        return 0;
    return c->sock->input->size - c->parsed < c->settings->buffer_limit;
}

/* Tells the driver when reading stops on the bytes it holds (the buffer limit, or the
 * pins' cap) and when it goes on with the request not yet whole. */
static void note_flow(lg_h1_server_conn_t *c, lg_h1_server_stream_t *s)
{
    int at_limit = !s->req_done && !s->detached && holds_cap(c, s);
    if (at_limit == s->at_limit || s->super.cbs == NULL)
        return;
    s->at_limit = at_limit;
    if (s->super.cbs->on_flow != NULL)
        s->super.cbs->on_flow(&s->super, at_limit);
}

static void update_reading(lg_h1_server_conn_t *c)
{
    if (c->closed)
        return;
    lg_h1_server_stream_t *s = c->stream;
    if (s != NULL)
        note_flow(c, s);
    if (s != NULL && s->cur_unconsumed == 0)
        release_parsed(c);
    int want = want_read(c);
    if (want && s != NULL && s->cur_unconsumed != 0 && !has_tail_room(c))
        detach_input(c, s);
    if (want && !h2o_socket_is_reading(c->sock))
        h2o_socket_read_start(c->sock, on_read);
    else if (!want && h2o_socket_is_reading(c->sock))
        h2o_socket_read_stop(c->sock);
}

static void flush(lg_h1_server_conn_t *c);

static void write_completed(lg_h1_server_conn_t *c, const char *err);

static void on_defer(lg_timer_t *t)
{
    lg_h1_server_conn_t *c = H2O_STRUCT_FROM_MEMBER(lg_h1_server_conn_t, timer, t);
    enter(c);
    if (c->write_done_due) {
        c->write_done_due = 0;
        write_completed(c, c->write_failed ? h2o_socket_error_io : NULL);
    }
    if (c->flush_due)
        flush(c);
    if (c->resume_due && !c->closed) {
        c->resume_due = 0;
        process_input(c);
    }
    if (c->stream == NULL)
        idle_rearm(c);
    leave(c);
}

static void defer(lg_h1_server_conn_t *c)
{
    if (c->lingering)
        return;
    if (!lg_timer_is_active(&c->timer) || c->timer.cb != on_defer)
        lg_timer_start(conn_loop(c), &c->timer, 0, on_defer);
}

/* Parsing resumes on the next loop turn, never inside the caller's op. */
static void schedule_resume(lg_h1_server_conn_t *c)
{
    if (c->closed)
        return;
    c->resume_due = 1;
    defer(c);
}

/* Output */

static void out_push(lg_h1_server_conn_t *c, h2o_iovec_t v)
{
    lg_h1_out_t *o = out_get(c);
    if (o->nbufs == 1u << o->bufs_cap_log2) {
        uint32_t log2 = o->bufs_cap_log2 + 1, cap = 1u << log2;
        h2o_iovec_t *bufs = lg_malloc(cap * sizeof(*bufs));
        memcpy(bufs, o->bufs, o->nbufs * sizeof(*bufs));
        if (o->bufs != o->bufs_inline)
            free(o->bufs);
        o->bufs = bufs;
        o->bufs_cap_log2 = log2;
    }
    o->bufs[o->nbufs++] = v;
    c->dirty = 1;
}

static char *scratch_alloc(lg_h1_batch_t *b, size_t len)
{
    lg_h1_scratch_t *s = b->scratch;
    if (s == NULL || s->used + len > sizeof(s->bytes)) {
        s = lg_malloc(sizeof(*s));
        s->next = b->scratch;
        s->used = 0;
        b->scratch = s;
    }
    s->used += len;
    return s->bytes + s->used - len;
}

/* The pool of the codec's own error reply: the spare stream's, which lives
 * until the connection is destroyed (no head is parsed after an error). */
static h2o_mem_pool_t *reply_pool(lg_h1_server_conn_t *c)
{
    if (c->spare == NULL) {
        c->spare = lg_http_cache_alloc(LG_HTTP_CACHE_H1_SERVER_STREAM, sizeof(*c->spare));
        h2o_mem_init_pool(&c->spare->pool);
    }
    return &c->spare->pool;
}

static void on_write_complete(h2o_socket_t *sock, const char *err);

static void flush(lg_h1_server_conn_t *c)
{
    if (c->flush_due) { /* whatever happens below, nothing waits for the timer any more */
        c->flush_due = 0;
        if (!c->resume_due && !c->write_done_due && c->timer.cb == on_defer)
            lg_timer_stop(&c->timer); /* a stream runs: no idle timeout */
    }
    if (c->closed || c->lingering || c->writing || !c->dirty)
        return;
    lg_h1_out_t *o = out_get(c);
    o->inflight = o->pending;
    o->pending = (lg_h1_batch_t){NULL, 0};
    c->writing = 1;
    c->dirty = 0;
    size_t n = o->nbufs, done = 0, off = 0, written_before = c->sock->bytes_written;
    o->nbufs = 0; /* h2o copies the iovecs it still needs */
    int failed = 0;
    if (c->sock->ssl == NULL)
        done = lg_sock_send_now(c->sock, o->bufs, n, &off, &failed); /* send/sendmsg, not h2o's writev */
    if (done == n || failed) {
        report_io(c, 0, c->sock->bytes_written - written_before);
        /* completed at once (or refused): the completion runs at the end of the turn, as h2o's would */
        c->write_done_due = 1;
        c->write_failed = failed;
        defer(c);
        return;
    }
    o->bufs[done].base += off;
    o->bufs[done].len -= off;
    h2o_socket_write(c->sock, o->bufs + done, n - done, on_write_complete);
    report_io(c, 0, c->sock->bytes_written - written_before);
}

/* A response head without end_stream waits for the first body bytes (or
 * trailers), so that both leave in one write; at the latest it goes at the
 * end of this loop turn (a 0 ms timer runs after the turn's I/O callbacks). */
static void flush_later(lg_h1_server_conn_t *c)
{
    if (c->closed)
        return;
    c->flush_due = 1;
    defer(c);
}

static void finish_stream(lg_h1_server_conn_t *c)
{
    lg_h1_server_stream_t *s = c->stream;
    int keep_alive = !s->will_close && s->req_done && !c->draining;
    /* Envoy's doEndStream: the close skips the delay when the client asked for it and sent its
     * whole request (nothing of it can race the FIN), or when the close frames the response */
    int no_delay = s->close_framed || (s->info.close_asked && s->req_done);
    detach_stream(c);
    out_put(c); /* everything is written */
    s->super.cbs->on_complete(&s->super);
    if (c->closed)
        return;
    if (!keep_alive || c->draining) {
        c->close_after_write = 1;
        c->no_delay_close = no_delay;
        start_linger(c);
        return;
    }
    process_input(c);
    if (c->stream == NULL)
        idle_rearm(c);
}

/* Everything queued has been written. */
static void on_flushed(lg_h1_server_conn_t *c)
{
    if (c->stream != NULL) {
        if (c->stream->resp_done)
            finish_stream(c);
    } else if (c->close_after_write) {
        start_linger(c);
    }
}

static void on_write_complete(h2o_socket_t *sock, const char *err)
{
    lg_h1_server_conn_t *c = sock->data;
    enter(c);
    write_completed(c, err);
    leave(c);
}

static void write_completed(lg_h1_server_conn_t *c, const char *err)
{
    size_t sent = c->out->inflight.body_bytes;
    batch_reset(&c->out->inflight);
    c->writing = 0;
    if (err != NULL) {
        close_now(c, LG_CONN_CLOSED_REMOTE, LG_RESET_CONNECTION_TERMINATION, "downstream_remote_disconnect");
    } else {
        if (c->stream != NULL && sent != 0)
            c->stream->super.cbs->on_data_sent(&c->stream->super, sent);
        flush(c);
        if (!c->closed && !c->writing)
            on_flushed(c);
        if (!c->closed && !c->writing && !c->dirty && c->stream == NULL)
            out_put(c); /* a codec reply written, or a stream finished: nothing queued */
    }
}

/* One pass over a response head: whether it has a content-length, and whether it
 * is an upgrade (an upgrade header, and "upgrade" in the first connection header). */
static void scan_head(const lg_headers_t *headers, int *has_cl, int *is_upgrade)
{
    const h2o_iovec_t *conn = NULL;
    int upgrade = 0;
    *has_cl = 0;
    for (size_t i = 0; i != headers->size; ++i) {
        h2o_iovec_t n = headers->entries[i].name;
        if (h2o_memis(n.base, n.len, H2O_STRLIT("content-length")))
            *has_cl = 1;
        else if (h2o_memis(n.base, n.len, H2O_STRLIT("upgrade")))
            upgrade = 1;
        else if (conn == NULL && h2o_memis(n.base, n.len, H2O_STRLIT("connection")))
            conn = &headers->entries[i].value;
    }
    *is_upgrade =
        upgrade && conn != NULL && conn->base != NULL && h2o_contains_token(conn->base, conn->len, H2O_STRLIT("upgrade"), ',');
}

/* Copies `head` as it goes on the wire: HTTP version of the request, no
 * transfer-encoding (the codec frames), `connection` replaced when given. */
static void wire_head(h2o_mem_pool_t *pool, const lg_resp_head_t *head, int version, const char *connection, lg_resp_head_t *out)
{
    *out = (lg_resp_head_t){head->status, version};
    h2o_vector_reserve(pool, &out->headers, head->headers.size + 1);
    for (size_t i = 0; i != head->headers.size; ++i) {
        h2o_iovec_t name = head->headers.entries[i].name;
        if (h2o_memis(name.base, name.len, H2O_STRLIT("transfer-encoding")) ||
            (connection != NULL && h2o_memis(name.base, name.len, H2O_STRLIT("connection"))))
            continue;
        out->headers.entries[out->headers.size++] = head->headers.entries[i];
    }
    if (connection != NULL)
        out->headers.entries[out->headers.size++] =
            (lg_header_t){LG_LIT("connection"), h2o_iovec_init(connection, strlen(connection))};
}

/* Queues a flattened head; a head that would break the framing kills the connection. */
static int queue_head(lg_h1_server_conn_t *c, h2o_mem_pool_t *pool, const lg_resp_head_t *head, unsigned flags)
{
    h2o_iovec_t out;
    if (lg_h1_flatten_response_head(pool, head, flags, &out) != 0) {
        LG_ERROR(http, "h1: response head with a status %d would break the framing; closing the connection", head->status);
        close_now(c, 0, LG_RESET_LOCAL, "invalid_response_header");
        return -1;
    }
    out_push(c, out);
    return 0;
}

/* 1xx other than 101: written as given, the final head follows. An HTTP/1.0
 * client gets none, and a 100 after the codec's own is dropped. */
static void send_interim(lg_h1_server_conn_t *c, lg_h1_server_stream_t *s, const lg_resp_head_t *head)
{
    if (s->resp_started || s->head.version == LG_HTTP_10 || (head->status == 100 && s->sent_100))
        return;
    lg_resp_head_t wire;
    wire_head(&s->pool, head, LG_HTTP_11, NULL, &wire);
    if (queue_head(c, &s->pool, &wire, 0) == 0 && head->status == 100)
        s->sent_100 = 1;
}

/* Envoy's ActiveStream::encodeHeaders (connection close / keep-alive) plus
 * StreamEncoderImpl::encodeHeadersBase (framing). */
static void send_final_head(lg_h1_server_conn_t *c, lg_h1_server_stream_t *s, const lg_resp_head_t *head, int end_stream)
{
    int status = head->status, http10 = s->head.version == LG_HTTP_10;
    int tunnel = s->info.is_connect ? status >= 200 && status < 300 : s->info.upgrade && status == 101;
    int has_cl, is_upgrade;
    scan_head(&head->headers, &has_cl, &is_upgrade);
    lg_h1_encode_ctx_t ectx = {.status = status,
                               .has_content_length = has_cl,
                               .end_stream = end_stream,
                               .is_http10 = http10,
                               .is_head_response = s->info.is_head,
                               .is_connect = s->info.is_connect && status < 300,
                               .is_upgrade = is_upgrade};
    unsigned flags = lg_h1_encode_framing(&ectx);

    s->resp_started = 1;
    s->chunk_out = (flags & LG_H1_CHUNK_BODY) != 0;
    s->no_body_out = !tunnel && (s->info.is_head || status == 204 || status == 304 || status < 200);
    /* A tunnel or an unfinished request cannot be followed by another request;
     * an HTTP/1.0 body without a length is delimited by the close. */
    s->will_close = !s->info.keep_alive || c->draining || tunnel || !s->req_done || (http10 && !has_cl);
    /* upgrades and CONNECT (Envoy's no_delay_close_for_upgrades); an HTTP/1.0 response
     * without a length, which Envoy's encodeHeaders turns into a close */
    s->close_framed = tunnel || (http10 && !has_cl);
    const char *connection = NULL;
    if (s->will_close && !tunnel)
        connection = "close";
    else if (http10 && !s->will_close)
        connection = "keep-alive";

    /* the stream's pool: the head is written before the stream completes, and a
     * reset closes the connection (queued output is dropped) */
    lg_resp_head_t wire;
    wire_head(&s->pool, head, s->head.version, connection, &wire);
    if (queue_head(c, &s->pool, &wire, flags & (LG_H1_ADD_CHUNKED_TE | LG_H1_ADD_CONTENT_LENGTH_ZERO)) != 0)
        return;
    if (end_stream)
        s->resp_done = 1;
}

static void send_codec_error_reply(lg_h1_server_conn_t *c, int status)
{
    h2o_mem_pool_t *pool = reply_pool(c);
    const char *reason = lg_h1_reason_phrase(status);
    lg_resp_head_t head = {status, LG_HTTP_11};
    char *len = h2o_mem_alloc_pool(pool, 24), *date = h2o_mem_alloc_pool(pool, H2O_TIMESTR_RFC1123_LEN + 1);
    time_t now = time(NULL);
    struct tm gmt;

    snprintf(len, 24, "%zu", strlen(reason));
    gmtime_r(&now, &gmt);
    h2o_time2str_rfc1123(date, &gmt);
    lg_headers_add(pool, &head.headers, LG_LIT("content-length"), h2o_iovec_init(len, strlen(len)));
    lg_headers_add(pool, &head.headers, LG_LIT("content-type"), LG_LIT("text/plain"));
    lg_headers_add(pool, &head.headers, LG_LIT("date"), h2o_iovec_init(date, H2O_TIMESTR_RFC1123_LEN));
    if (c->settings->server_name.len != 0)
        lg_headers_add(pool, &head.headers, LG_LIT("server"), c->settings->server_name);
    lg_headers_add(pool, &head.headers, LG_LIT("connection"), LG_LIT("close"));
    if (queue_head(c, pool, &head, 0) == 0)
        out_push(c, h2o_iovec_init(reason, strlen(reason)));
}

/* A request that cannot be parsed, with no stream left: Envoy's codec answers
 * with a local reply whose body is the reason phrase, then closes. */
static void codec_error(lg_h1_server_conn_t *c, const lg_h1_error_t *err)
{
    LG_DEBUG(http, "h1: request rejected with %d (%s): %s", err->status, err->details, err->msg);
    c->close_after_write = 1;
    h2o_buffer_consume(&c->sock->input, c->sock->input->size);
    send_codec_error_reply(c, err->status);
    flush(c);
    if (!c->closed)
        c->super.cbs->on_codec_error(&c->super, err->status, err->details);
}

/* A malformed body: the stream is reset; the client gets the error reply if
 * no response has started, otherwise the connection just closes. */
static void body_error(lg_h1_server_conn_t *c, const lg_h1_error_t *err)
{
    if (c->stream->resp_started) {
        c->super.cbs->on_codec_error(&c->super, err->status, err->details);
        close_now(c, 0, LG_RESET_PROTOCOL_ERROR, err->details);
        return;
    }
    lg_h1_server_stream_t *s = detach_stream(c);
    s->super.cbs->on_reset(&s->super, LG_RESET_PROTOCOL_ERROR, err->details);
    if (!c->closed)
        codec_error(c, err);
}

/* Input */

static lg_h1_server_stream_t *spare_stream(lg_h1_server_conn_t *c)
{
    if (c->spare == NULL) {
        c->spare = lg_http_cache_alloc(LG_HTTP_CACHE_H1_SERVER_STREAM, sizeof(*c->spare));
        h2o_mem_init_pool(&c->spare->pool);
    } else {
        h2o_mem_clear_pool(&c->spare->pool);
    }
    lg_h1_server_stream_t *s = c->spare;
    s->head = (lg_req_head_t){};
    s->info = (lg_h1_msg_info_t){};
    return s;
}

static void rebase(h2o_iovec_t *v, const char *from, size_t len, char *to)
{
    if (v->base != NULL && (uintptr_t)v->base >= (uintptr_t)from && (uintptr_t)v->base < (uintptr_t)from + len)
        v->base = to + (v->base - from);
}

/* Moves the head out of the input buffer into the stream's pool (one copy). */
static void own_head(lg_h1_server_stream_t *s, const char *from, size_t len)
{
    char *to = h2o_mem_alloc_pool(&s->pool, len);
    lg_req_head_t *h = &s->head;
    memcpy(to, from, len);
    rebase(&h->method, from, len, to);
    rebase(&h->scheme, from, len, to);
    rebase(&h->authority, from, len, to);
    rebase(&h->path, from, len, to);
    rebase(&h->protocol, from, len, to);
    for (size_t i = 0; i != h->headers.size; ++i) {
        rebase(&h->headers.entries[i].name, from, len, to);
        rebase(&h->headers.entries[i].value, from, len, to);
    }
}

static void start_stream(lg_h1_server_conn_t *c, lg_h1_server_stream_t *s, size_t head_len)
{
    c->spare = NULL;
    own_head(s, c->sock->input->bytes, head_len);
    h2o_buffer_consume(&c->sock->input, head_len);
    s->super = (lg_stream_t){&stream_ops, NULL, NULL, ++c->seq, s->head.version, &s->pool};
    s->conn = c;
    switch (s->info.body) {
    case LG_H1_BODY_CONTENT_LENGTH:
        s->body_left = s->info.content_length;
        break;
    case LG_H1_BODY_CHUNKED:
        lg_h1_chunked_decoder_init(&s->chunked, &c->settings->limits, 1, &s->pool, NULL);
        break;
    case LG_H1_BODY_TUNNEL:
        break;
    default:
        s->req_done = 1;
        break;
    }
    if (s->info.expect_100_continue) {
        lg_headers_remove(&s->head.headers, H2O_STRLIT("expect"));
        if (!s->req_done && s->head.version != LG_HTTP_10) {
            out_push(c, LG_LIT("HTTP/1.1 100 Continue\r\n\r\n"));
            s->sent_100 = 1;
            flush(c);
        }
    }
    c->stream = s;
    c->super.cbs->on_new_stream(&c->super, &s->super);
    if (c->stream != s)
        return;
    s->super.cbs->on_headers(&s->super, &s->head, s->req_done);
}

static void on_headers_timeout(lg_timer_t *t)
{
    lg_h1_server_conn_t *c = H2O_STRUCT_FROM_MEMBER(lg_h1_server_conn_t, timer, t);
    lg_h1_error_t err = {408, "request_header_timeout", "request headers not received in time"};
    if (c->closed || c->stream != NULL)
        return;
    enter(c);
    codec_error(c, &err);
    leave(c);
}

/* Returns whether a stream was started. */
static int parse_head(lg_h1_server_conn_t *c)
{
    h2o_buffer_t *in = c->sock->input;
    if (in->size == 0)
        return 0;
    lg_h1_server_stream_t *s = spare_stream(c);
    lg_h1_error_t err;
    ssize_t r = lg_h1_parse_request(&s->pool, in->bytes, in->size, c->last_len, &c->settings->limits, &s->head, &s->info, &err);
    if (r == -2) {
        c->last_len = (uint32_t)in->size;
        if (c->settings->request_headers_timeout_ms != 0) {
            if (timer_free(c))
                lg_timer_start(conn_loop(c), &c->timer, c->settings->request_headers_timeout_ms, on_headers_timeout);
            else if (c->timer.cb == on_defer)
                c->resume_due = 1; /* parsed again at the end of the turn, which arms the timeout */
        }
        return 0;
    }
    c->last_len = 0;
    if (c->timer.cb == on_headers_timeout)
        lg_timer_stop(&c->timer); /* a stream or an error follows: no idle timeout */
    if (r < 0) {
        codec_error(c, &err);
        return 0;
    }
    start_stream(c, s, (size_t)r);
    return 1;
}

static void deliver(lg_h1_server_conn_t *c, lg_h1_server_stream_t *s, h2o_iovec_t data, int end_stream)
{
    c->unconsumed += data.len;
    s->cur_unconsumed += (uint32_t)data.len;
    if (end_stream)
        s->req_done = 1;
    s->super.cbs->on_data(&s->super, data, end_stream);
}

static int deliver_raw(lg_h1_server_conn_t *c, lg_h1_server_stream_t *s, size_t avail, size_t budget)
{
    int tunnel = s->info.body == LG_H1_BODY_TUNNEL;
    size_t n = avail < budget ? avail : budget;
    if (!tunnel && n > s->body_left)
        n = s->body_left;
    if (n == 0) {
        if (!(tunnel && c->peer_eof && avail == 0))
            return 0;
        deliver(c, s, h2o_iovec_init(NULL, 0), 1);
        return 1;
    }
    h2o_iovec_t data = h2o_iovec_init(c->sock->input->bytes + c->parsed, n);
    c->parsed += (uint32_t)n;
    if (!tunnel)
        s->body_left -= n;
    deliver(c, s, data, !tunnel && s->body_left == 0);
    return 1;
}

/* One slice at a time, so that a read_pause from on_data takes effect at once. */
static int deliver_chunked(lg_h1_server_conn_t *c, lg_h1_server_stream_t *s, size_t avail, size_t budget)
{
    if (avail == 0)
        return 0;
    const char *p = c->sock->input->bytes + c->parsed;
    size_t len = avail < budget ? avail : budget, ndata = 1;
    h2o_iovec_t data;
    int done = 0;
    lg_h1_error_t err;
    ssize_t r = lg_h1_chunked_decode(&s->chunked, p, len, &data, &ndata, &done, &err);
    if (r == 0 && ndata == 0 && !done && len < avail) {
        /* a trailer line is waiting for bytes beyond the budget: trailers are not body */
        ndata = 1;
        r = lg_h1_chunked_decode(&s->chunked, p, avail, &data, &ndata, &done, &err);
    }
    if (r < 0) {
        body_error(c, &err);
        return 0;
    }
    c->parsed += (uint32_t)r;
    if (ndata == 0 && !done)
        return r != 0;
    deliver(c, s, ndata != 0 ? data : h2o_iovec_init(NULL, 0), done);
    return 1;
}

/* Returns whether progress was made. */
static int deliver_body(lg_h1_server_conn_t *c)
{
    lg_h1_server_stream_t *s = c->stream;
    if (s->req_done || s->paused || c->unconsumed >= held_cap(c))
        return 0;
    size_t avail = c->sock->input->size - c->parsed, budget = held_cap(c) - c->unconsumed;
    if (s->info.body == LG_H1_BODY_CHUNKED)
        return deliver_chunked(c, s, avail, budget);
    return deliver_raw(c, s, avail, budget);
}

static void process_input(lg_h1_server_conn_t *c)
{
    while (!c->closed && !c->lingering && !(c->close_after_write && c->stream == NULL)) {
        if (!(c->stream == NULL ? parse_head(c) : deliver_body(c)))
            break;
    }
    update_reading(c);
}

/* The client closed (or its side failed). HTTP/1 downstream has no half-close
 * (Envoy closes too), except that a tunnel's request side simply ends. */
static void on_peer_eof(lg_h1_server_conn_t *c)
{
    lg_h1_server_stream_t *s = c->stream;
    if (s != NULL && s->info.body == LG_H1_BODY_TUNNEL)
        return; /* end_stream is delivered once the buffered bytes are */
    if (c->close_after_write && s == NULL && c->writing)
        return;
    close_now(c, LG_CONN_CLOSED_REMOTE, LG_RESET_CONNECTION_TERMINATION, "downstream_remote_disconnect");
}

/* How much one read should take: a head fits the recycled 8 KiB buffer; a
 * body is read in buffers of its size, up to LG_SOCK_READ_MAX. */
static size_t read_want(lg_h1_server_conn_t *c)
{
    lg_h1_server_stream_t *s = c->stream;
    if (s == NULL || s->req_done || c->lingering)
        return LG_SOCK_READ_MIN;
    size_t want = s->info.body == LG_H1_BODY_CONTENT_LENGTH ? s->body_left : LG_SOCK_READ_MAX;
    if (s->cur_unconsumed != 0 && c->sock->ssl != NULL) { /* slices point into the buffer: it must not move */
        size_t room = tail_room(c);
        if (want > room)
            want = room;
    }
    return want;
}

static void on_read(h2o_socket_t *sock, const char *err)
{
    lg_h1_server_conn_t *c = sock->data;
    size_t before = sock->input->size;
    err = lg_sock_read(sock, err, read_want(c));
    report_io(c, sock->input->size - before, 0);
    enter(c);
    if (err != NULL)
        c->peer_eof = 1;
    if (c->lingering || (c->close_after_write && c->stream == NULL)) {
        h2o_buffer_consume(&sock->input, sock->input->size);
        if (c->lingering && err != NULL)
            close_now(c, LG_CONN_CLOSED_REMOTE, LG_RESET_CONNECTION_TERMINATION, "downstream_remote_disconnect");
        else
            update_reading(c);
    } else {
        process_input(c);
        if (err != NULL && !c->closed)
            on_peer_eof(c);
    }
    leave(c);
}

/* Stream ops */

static void stream_send_headers(lg_stream_t *_s, void *_head, int end_stream)
{
    lg_h1_server_stream_t *s = (lg_h1_server_stream_t *)_s;
    lg_h1_server_conn_t *c = s->conn;
    lg_resp_head_t *head = _head;
    if (s->detached)
        return;
    enter(c);
    if (head->status < 200 && head->status != 101) {
        send_interim(c, s, head);
        flush(c);
    } else {
        assert(!s->resp_started);
        send_final_head(c, s, head, end_stream);
        if (end_stream)
            flush(c);
        else
            flush_later(c);
    }
    leave(c);
}

static void end_response(lg_h1_server_conn_t *c, lg_h1_server_stream_t *s)
{
    if (s->chunk_out && !s->no_body_out)
        out_push(c, LG_LIT(LG_H1_LAST_CHUNK));
    s->resp_done = 1;
    c->dirty = 1;
}

static void stream_send_data(lg_stream_t *_s, h2o_iovec_t data, int end_stream)
{
    lg_h1_server_stream_t *s = (lg_h1_server_stream_t *)_s;
    lg_h1_server_conn_t *c = s->conn;
    if (s->detached)
        return;
    assert(s->resp_started && !s->resp_done);
    enter(c);
    if (data.len != 0) {
        lg_h1_batch_t *o = &out_get(c)->pending;
        o->body_bytes += data.len;
        c->dirty = 1;
        if (s->no_body_out) {
            /* dropped, still reported as sent */
        } else if (s->chunk_out) {
            char hdr[LG_H1_CHUNK_HEADER_MAX];
            size_t n = lg_h1_chunk_header(hdr, data.len);
            out_push(c, h2o_iovec_init(memcpy(scratch_alloc(o, n), hdr, n), n));
            out_push(c, data);
            out_push(c, LG_LIT(LG_H1_CRLF));
        } else {
            out_push(c, data);
        }
    }
    if (end_stream)
        end_response(c, s);
    flush(c);
    leave(c);
}

/* Envoy drops response trailers on HTTP/1 unless enable_trailers: the body just ends. */
static void stream_send_trailers(lg_stream_t *_s, lg_headers_t *trailers)
{
    lg_h1_server_stream_t *s = (lg_h1_server_stream_t *)_s;
    lg_h1_server_conn_t *c = s->conn;
    if (s->detached)
        return;
    assert(s->resp_started && !s->resp_done);
    enter(c);
    end_response(c, s);
    flush(c);
    leave(c);
}

static void stream_consume(lg_stream_t *_s, size_t bytes)
{
    lg_h1_server_stream_t *s = (lg_h1_server_stream_t *)_s;
    lg_h1_server_conn_t *c = s->conn;
    if (s->detached)
        return;
    enter(c);
    if (bytes > c->unconsumed)
        bytes = c->unconsumed;
    c->unconsumed -= bytes;
    for (lg_h1_pin_t *p = s->pins; bytes != 0 && p != NULL; p = p->next) { /* oldest slices first */
        size_t n = p->unconsumed < bytes ? p->unconsumed : bytes;
        p->unconsumed -= n;
        bytes -= n;
    }
    s->cur_unconsumed -= bytes < s->cur_unconsumed ? (uint32_t)bytes : s->cur_unconsumed;
    release_pins(s, 0);
    if (s->cur_unconsumed == 0)
        release_parsed(c);
    if (c->unconsumed == 0 || !h2o_socket_is_reading(c->sock))
        schedule_resume(c);
    leave(c);
}

/* HTTP/1 cannot reset one stream: the connection goes. */
static void stream_reset(lg_stream_t *_s, lg_reset_reason_t reason)
{
    lg_h1_server_stream_t *s = (lg_h1_server_stream_t *)_s;
    lg_h1_server_conn_t *c = s->conn;
    if (s->detached)
        return;
    enter(c);
    detach_stream(c);
    close_now(c, 0, reason, "stream_reset");
    leave(c);
}

static void stream_read_pause(lg_stream_t *_s, int paused)
{
    lg_h1_server_stream_t *s = (lg_h1_server_stream_t *)_s;
    lg_h1_server_conn_t *c = s->conn;
    if (s->detached)
        return;
    enter(c);
    s->paused = paused != 0;
    if (paused)
        update_reading(c);
    else
        schedule_resume(c);
    leave(c);
}

/* The pins, with the one update_reading is about to add, reach their cap while the
 * request goes on: reading stops although less than the limit is delivered. */
static int stream_rx_blocked(lg_stream_t *_s)
{
    lg_h1_server_stream_t *s = (lg_h1_server_stream_t *)_s;
    lg_h1_server_conn_t *c = s->conn;
    if (s->detached || s->req_done || c->closed)
        return 0;
    size_t pinned = s->pinned_cap;
    if (s->cur_unconsumed != 0 && !has_tail_room(c))
        pinned += c->sock->input->capacity;
    return pinned >= pin_cap(c);
}

static const lg_stream_ops_t stream_ops = {
    .send_headers = stream_send_headers,
    .send_data = stream_send_data,
    .send_trailers = stream_send_trailers,
    .consume = stream_consume,
    .reset = stream_reset,
    .read_pause = stream_read_pause,
    .rx_blocked = stream_rx_blocked,
};

/* Connection ops */

static void conn_drain(lg_server_conn_t *_c)
{
    lg_h1_server_conn_t *c = (lg_h1_server_conn_t *)_c;
    if (c->closed)
        return;
    enter(c);
    c->draining = 1;
    if (c->stream == NULL && !c->close_after_write)
        close_now(c, 0, LG_RESET_CONNECTION_TERMINATION, "drain");
    leave(c);
}

static void conn_close(lg_server_conn_t *_c)
{
    lg_h1_server_conn_t *c = (lg_h1_server_conn_t *)_c;
    if (c->closed)
        return;
    enter(c);
    close_now(c, 0, LG_RESET_CONNECTION_TERMINATION, "downstream_local_disconnect");
    leave(c);
}

static const lg_server_conn_ops_t conn_ops = {.drain = conn_drain, .close = conn_close, .version = LG_HTTP_11};

/* The owner's area follows the connection, aligned for pointers and 64-bit integers. */
#define CTX_OFFSET ((sizeof(lg_h1_server_conn_t) + 7) & ~(size_t)7)
const size_t lg_h1_server_ctx_offset = CTX_OFFSET;

static lg_server_conn_t *conn_new(lg_loop_t *loop, h2o_socket_t *sock, const lg_h1_server_settings_t *settings,
                                  const lg_server_conn_cbs_t *cbs, void *ctx, size_t ctx_size)
{
    lg_h1_server_conn_t *c = lg_calloc(1, CTX_OFFSET + ctx_size);
    c->super = (lg_server_conn_t){&conn_ops, cbs, ctx_size != 0 ? (char *)c + CTX_OFFSET : ctx};
    c->sock = sock;
    c->settings = settings_intern(settings, loop);
    sock->data = c;
    if (h2o_socket_is_reading(sock))
        h2o_socket_read_stop(sock); /* a listener filter's callback */
    lg_sock_read_bounded(sock);
    if (sock->input->size != 0) {
        schedule_resume(c);
    } else {
        update_reading(c);
        idle_rearm(c);
    }
    return &c->super;
}

lg_server_conn_t *lg_h1_server_conn_new(lg_loop_t *loop, h2o_socket_t *sock, const lg_h1_server_settings_t *settings,
                                        const lg_server_conn_cbs_t *cbs, void *ctx)
{
    return conn_new(loop, sock, settings, cbs, ctx, 0);
}

lg_server_conn_t *lg_h1_server_conn_new_with_ctx(lg_loop_t *loop, h2o_socket_t *sock, const lg_h1_server_settings_t *settings,
                                                 const lg_server_conn_cbs_t *cbs, size_t ctx_size)
{
    assert(ctx_size != 0);
    return conn_new(loop, sock, settings, cbs, NULL, ctx_size);
}

int lg_h1_server_conn_is_idle(lg_server_conn_t *_c)
{
    lg_h1_server_conn_t *c = (lg_h1_server_conn_t *)_c;
    return c->stream == NULL && (c->closed || c->sock->input->size == 0);
}
