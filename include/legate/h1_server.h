/*
 * The downstream HTTP/1.1 server connection: an lg_server_conn_t over an
 * h2o_socket_t, built on the pure parse/serialize functions of legate/h1.h.
 *
 * It plays the part of Envoy's http1 ServerConnectionImpl plus the pieces of
 * the connection manager that only make sense on HTTP/1: one stream at a time
 * (pipelined requests wait in the input buffer until the previous response
 * is written), `100 Continue` sent by the codec (proxy_100_continue false),
 * `connection: close` / `connection: keep-alive` on responses, codec errors
 * answered with a local reply (400, 426, 431, 501 ...), and Upgrade / CONNECT
 * tunnels once a 101 (or a 2xx to CONNECT) has been sent.
 *
 * Ownership: the connection owns the socket from lg_h1_server_conn_new() on
 * and closes it. cbs->on_close() is called exactly once; the connection frees
 * itself after it returns, so the caller must not use the lg_server_conn_t
 * afterwards. No callback fires from inside lg_h1_server_conn_new().
 */
#ifndef LEGATE_H1_SERVER_H
#define LEGATE_H1_SERVER_H

#include <h2o/socket.h>
#include "legate/codec-t.h"
#include "legate/h1-t.h"
#include "legate/worker-t.h"

typedef struct st_lg_h1_server_settings_t {
    /* Request parsing (HttpProtocolOptions / Http1ProtocolOptions). Strings are
     * not copied: they must outlive the connection (they live in config). */
    lg_h1_limits_t limits;
    /* per_connection_buffer_limit_bytes (Envoy default 1 MiB): reading stops
     * while more than this many request bytes are delivered and unconsumed (one
     * byte past it, so that a receiver keeping the body sees it pass the limit),
     * or this many are buffered and not delivered. */
    uint32_t buffer_limit;
    /* HttpConnectionManager.delayed_close_timeout (default 1000 ms): after the
     * last response of a connection that closes, the write side is shut down
     * and input is drained for up to this long, so that a client still sending
     * does not get a TCP RST that destroys the response. 0: close at once. */
    uint32_t delayed_close_timeout_ms;
    /* HttpConnectionManager.request_headers_timeout (default 0: none): from the
     * first byte of a request head until its end; on expiry the codec answers
     * 408 and closes, reporting "request_header_timeout" to on_codec_error. */
    uint32_t request_headers_timeout_ms;
    /* `server` header of the codec's own error replies (400, 431 ...), which no
     * connection manager sees: HttpConnectionManager.server_name. Empty: none.
     * Not copied. Every other response gets its headers from the caller. */
    h2o_iovec_t server_name;
    /* The owner's idle timeout (the HCM's idle_timeout), run on the codec's
     * own timer while no request is in progress (a partial head counts as
     * none) and the codec does not need the timer itself (deferred work,
     * request headers timeout, delayed close): an HTTP/1.1 connection then
     * needs one timer. The period starts when the connection is created and
     * when a request is done or the codec gives the timer back. On expiry
     * on_idle_timeout(conn) is called (the owner closes the connection); 0 /
     * NULL: none. */
    uint64_t idle_timeout_ms;
    void (*on_idle_timeout)(lg_server_conn_t *c);
} lg_h1_server_settings_t;

/* Envoy's defaults: lg_h1_limits_init(), 1 MiB, 1000 ms, "envoy". */
void lg_h1_server_settings_init(lg_h1_server_settings_t *s);

/*
 * Wraps an accepted (and, for TLS, handshaken) socket. Bytes already in
 * sock->input are parsed first (on the next loop turn). `settings` is copied.
 * c->ctx is set to `ctx`, c->version to LG_HTTP_11.
 *
 * Stream contract beyond codec-t.h:
 *  - the request head passed to on_headers lives in the stream's pool until the
 *    stream ends; `Expect: 100-continue` has been answered and removed;
 *  - on_data slices point into the socket's input buffer: reading stops while
 *    any of them is unconsumed (or read_pause is on), so consume promptly;
 *  - on_complete fires once the whole response has been written (after the
 *    last on_data_sent). If the request had not ended by the time the response
 *    headers were sent (early reply), the response carries `connection: close`,
 *    on_complete still fires and the connection closes;
 *  - a request that fails to parse mid-body gets on_reset(LG_RESET_PROTOCOL_ERROR),
 *    and a 400 when no response was started; the client closing mid-request or
 *    before the response is written gets on_reset(LG_RESET_CONNECTION_TERMINATION);
 *  - HTTP/1 has no stream reset: ops->reset() closes the connection at once
 *    (bytes still queued are dropped, as the sender may free them);
 *  - response trailers are dropped (Envoy without enable_trailers); request
 *    trailers are validated and dropped;
 *  - a response head that would break the framing (CR/LF in a value ...) is not
 *    sent: the connection closes and on_reset fires from inside send_headers.
 * Once the last response of a closing connection is written, on_close follows
 * after the delayed close (client EOF or delayed_close_timeout_ms).
 */
lg_server_conn_t *lg_h1_server_conn_new(lg_loop_t *loop, h2o_socket_t *sock, const lg_h1_server_settings_t *settings,
                                        const lg_server_conn_cbs_t *cbs, void *ctx);

/* The same, with `ctx_size` zeroed bytes for the caller allocated with the
 * connection (one allocation instead of two): c->ctx points at them (aligned
 * for pointers and 64-bit integers). They are freed with the connection, after
 * cbs->on_close() returns: the caller must not free them and may use them until
 * then (its streams' callbacks included). */
extern const size_t lg_h1_server_ctx_offset; /* from the connection to its ctx area */
lg_server_conn_t *lg_h1_server_conn_new_with_ctx(lg_loop_t *loop, h2o_socket_t *sock, const lg_h1_server_settings_t *settings,
                                                 const lg_server_conn_cbs_t *cbs, size_t ctx_size);

/* True when no request is in progress: the connection manager's idle timeout
 * applies. A partially received request head counts as in progress. */
int lg_h1_server_conn_is_idle(lg_server_conn_t *c);

#endif
