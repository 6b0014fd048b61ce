/*
 * The router's TCP upstream for terminated CONNECTs (see legate/router_tcp.h).
 *
 * Reentrancy: socket callbacks and the deferred-work timer run between
 * enter() and leave(); the driver may reset the stream from any callback, and
 * the stream is freed only when the outermost leave() returns. Ops never call
 * the driver back: what they make due (the end of the response, completion)
 * runs from a 0 ms timer.
 */
#include <sys/socket.h>
#include "legate/router_tcp.h"
#include "legate/sock.h"
#include "legate/timer.h"

typedef struct st_lg_router_tcp_stream_t {
    lg_stream_t super;
    lg_loop_t *loop;
    lg_upstream_tcp_t *u;
    h2o_socket_t *sock;
    lg_timer_t timer;
    H2O_VECTOR(h2o_iovec_t) queue; /* chunks waiting for the write in flight */
    size_t queued_bytes, inflight_bytes;
    size_t unconsumed; /* delivered bytes at the front of sock->input */
    unsigned depth;
    unsigned writing : 1, local_end : 1, shut : 1, remote_eof : 1, remote_end_delivered : 1, paused : 1, dead : 1;
} lg_router_tcp_stream_t;

static const lg_stream_ops_t tcp_ops;
static void on_read(h2o_socket_t *sock, const char *err);
static void on_write_complete(h2o_socket_t *sock, const char *err);

static void enter(lg_router_tcp_stream_t *s)
{
    ++s->depth;
}

static void leave(lg_router_tcp_stream_t *s)
{
    if (--s->depth != 0 || !s->dead)
        return;
    lg_timer_stop(&s->timer);
    free(s->queue.entries);
    free(s);
}

/* Closes the connection; no callback fires afterwards. */
static void kill(lg_router_tcp_stream_t *s, int local)
{
    if (s->dead)
        return;
    s->dead = 1;
    s->sock = NULL;
    lg_upstream_tcp_close(s->u, local);
}

static void fail(lg_router_tcp_stream_t *s, const char *detail)
{
    kill(s, 0);
    s->super.cbs->on_reset(&s->super, LG_RESET_CONNECTION_TERMINATION, detail);
}

static void update_reading(lg_router_tcp_stream_t *s)
{
    if (s->dead)
        return;
    int want = !s->paused && s->unconsumed == 0 && !s->remote_eof;
    if (want && !h2o_socket_is_reading(s->sock))
        h2o_socket_read_start(s->sock, on_read);
    else if (!want && h2o_socket_is_reading(s->sock))
        h2o_socket_read_stop(s->sock);
}

static void flush(lg_router_tcp_stream_t *s)
{
    if (s->dead || s->writing)
        return;
    if (s->queue.size != 0) {
        s->writing = 1;
        s->inflight_bytes = s->queued_bytes;
        s->queued_bytes = 0;
        h2o_socket_write(s->sock, s->queue.entries, s->queue.size, on_write_complete);
        s->queue.size = 0;
    } else if (s->local_end && !s->shut) {
        s->shut = 1;
        shutdown(h2o_socket_get_fd(s->sock), SHUT_WR);
    }
}

/* Delivers the end of the response once every byte before it was consumed,
 * and completes the stream when the request side is through as well. */
static void run(lg_router_tcp_stream_t *s)
{
    if (!s->dead && s->remote_eof && !s->remote_end_delivered && s->unconsumed == 0 && !s->paused) {
        s->remote_end_delivered = 1;
        s->super.cbs->on_data(&s->super, h2o_iovec_init(NULL, 0), 1);
    }
    if (!s->dead && s->remote_end_delivered && s->shut && !s->writing && s->unconsumed == 0) {
        kill(s, 0);
        s->super.cbs->on_complete(&s->super);
    }
}

static void on_timer(lg_timer_t *t)
{
    lg_router_tcp_stream_t *s = H2O_STRUCT_FROM_MEMBER(lg_router_tcp_stream_t, timer, t);
    enter(s);
    run(s);
    leave(s);
}

static void schedule(lg_router_tcp_stream_t *s)
{
    if (!s->dead && !lg_timer_is_active(&s->timer))
        lg_timer_start(s->loop, &s->timer, 0, on_timer);
}

static void on_read(h2o_socket_t *sock, const char *err)
{
    lg_router_tcp_stream_t *s = sock->data;
    err = lg_sock_read(sock, err, LG_SOCK_READ_MAX);
    enter(s);
    size_t fresh = sock->input->size - s->unconsumed;
    if (err != NULL) {
        s->remote_eof = 1;
        if (err != h2o_socket_error_closed) {
            fail(s, err);
            leave(s);
            return;
        }
    }
    if (fresh != 0) {
        h2o_iovec_t data = h2o_iovec_init(sock->input->bytes + s->unconsumed, fresh);
        s->unconsumed += fresh;
        s->super.cbs->on_data(&s->super, data, 0);
    }
    if (!s->dead) {
        update_reading(s);
        run(s);
    }
    leave(s);
}

static void on_write_complete(h2o_socket_t *sock, const char *err)
{
    lg_router_tcp_stream_t *s = sock->data;
    enter(s);
    s->writing = 0;
    if (err != NULL) {
        fail(s, "upstream write failed");
    } else {
        size_t n = s->inflight_bytes;
        s->inflight_bytes = 0;
        if (n != 0)
            s->super.cbs->on_data_sent(&s->super, n);
        flush(s);
        run(s);
    }
    leave(s);
}

/* ---- ops ---- */

static void op_send_data(lg_stream_t *_s, h2o_iovec_t data, int end_stream)
{
    lg_router_tcp_stream_t *s = (lg_router_tcp_stream_t *)_s;
    if (s->dead || s->local_end)
        return;
    if (data.len != 0) {
        h2o_vector_reserve(NULL, &s->queue, s->queue.size + 1);
        s->queue.entries[s->queue.size++] = data;
        s->queued_bytes += data.len;
    }
    s->local_end = end_stream != 0;
    flush(s);
    if (s->shut)
        schedule(s);
}

static void op_send_headers(lg_stream_t *_s, void *head, int end_stream)
{
    if (end_stream)
        op_send_data(_s, h2o_iovec_init(NULL, 0), 1);
}

/* A tunnel has no trailers: they only end the request side. */
static void op_send_trailers(lg_stream_t *_s, lg_headers_t *trailers)
{
    op_send_data(_s, h2o_iovec_init(NULL, 0), 1);
}

static void op_consume(lg_stream_t *_s, size_t bytes)
{
    lg_router_tcp_stream_t *s = (lg_router_tcp_stream_t *)_s;
    if (s->dead || bytes == 0)
        return;
    if (bytes > s->unconsumed)
        bytes = s->unconsumed;
    s->unconsumed -= bytes;
    if (s->unconsumed == 0) {
        h2o_buffer_consume(&s->sock->input, s->sock->input->size);
        update_reading(s);
        schedule(s);
    }
}

static void op_reset(lg_stream_t *_s, lg_reset_reason_t reason)
{
    lg_router_tcp_stream_t *s = (lg_router_tcp_stream_t *)_s;
    enter(s);
    kill(s, 1);
    leave(s);
}

static void op_read_pause(lg_stream_t *_s, int paused)
{
    lg_router_tcp_stream_t *s = (lg_router_tcp_stream_t *)_s;
    if (s->dead)
        return;
    s->paused = paused != 0;
    update_reading(s);
    if (!s->paused)
        schedule(s);
}

static const lg_stream_ops_t tcp_ops = {op_send_headers, op_send_data, op_send_trailers, op_consume, op_reset, op_read_pause};

lg_stream_t *lg_router_tcp_stream_new(lg_loop_t *loop, lg_upstream_tcp_t *u)
{
    lg_router_tcp_stream_t *s = lg_calloc(1, sizeof(*s));
    s->super = (lg_stream_t){.ops = &tcp_ops, .id = 1, .version = LG_HTTP_11};
    s->loop = loop;
    s->u = u;
    s->sock = lg_upstream_tcp_socket(u);
    lg_sock_read_bounded(s->sock);
    s->sock->data = s;
    update_reading(s);
    return &s->super;
}
