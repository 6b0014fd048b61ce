/*
 * The interface between HTTP codecs (h1, h2; server and client side) and the
 * code that drives a stream (the connection manager downstream, the router
 * upstream). Both sides are the same shape, mirrored: one side sends a head,
 * body chunks and trailers through `ops`; the codec delivers the peer's head,
 * body chunks, trailers and resets through `cbs`.
 *
 * Body bytes are never copied by this interface:
 *  - a chunk delivered by on_data stays valid until the receiver calls
 *    ops->consume() for it (chunks are consumed in order, byte counts may
 *    span chunks). Unconsumed bytes are what applies back-pressure: a codec
 *    stops reading (h1) or stops opening the flow-control window (h2) while
 *    more than its buffer limit is unconsumed;
 *  - a chunk passed to ops->send_data must stay valid until the codec reports
 *    it through cbs->on_data_sent(); the sender then consumes it from where
 *    it came from. A sender must not have more than its buffer limit in flight.
 *
 * After cbs->on_reset() the stream object is gone: the receiver must not call
 * ops again. After the receiver calls ops->reset(), no callback fires again.
 * A stream completes when both directions have ended (end_stream sent and
 * received); the codec then calls cbs->on_complete() and frees the stream.
 */
#ifndef LEGATE_CODEC_T_H
#define LEGATE_CODEC_T_H

#include <stddef.h>
#include <stdint.h>
#include "legate/http-t.h"

typedef enum en_lg_reset_reason_t {
    LG_RESET_LOCAL,                  /* we reset it (ops->reset) */
    LG_RESET_REMOTE,                 /* the peer reset the stream (RST_STREAM) */
    LG_RESET_CONNECTION_FAILURE,     /* upstream connect failed */
    LG_RESET_CONNECTION_TERMINATION, /* the connection closed under the stream */
    LG_RESET_OVERFLOW,               /* limits (circuit breaker, buffer) */
    LG_RESET_PROTOCOL_ERROR,         /* the peer sent something invalid */
    LG_RESET_REFUSED_STREAM,         /* h2 REFUSED_STREAM: safe to retry */
    LG_RESET_TIMEOUT,
} lg_reset_reason_t;

typedef struct st_lg_stream_t lg_stream_t;

/* What the codec calls; implemented by the stream's driver. `ctx` is
 * lg_stream_t.ctx. On a server stream the head is an lg_req_head_t; on a
 * client stream an lg_resp_head_t (1xx heads come through on_informational). */
typedef struct st_lg_stream_cbs_t {
    void (*on_headers)(lg_stream_t *s, void *head, int end_stream);
    void (*on_informational)(lg_stream_t *s, lg_resp_head_t *head); /* client streams: 1xx other than 101 */
    void (*on_data)(lg_stream_t *s, h2o_iovec_t data, int end_stream);
    void (*on_trailers)(lg_stream_t *s, lg_headers_t *trailers);
    void (*on_data_sent)(lg_stream_t *s, size_t bytes);
    void (*on_reset)(lg_stream_t *s, lg_reset_reason_t reason, const char *details);
    void (*on_complete)(lg_stream_t *s);
    /* Server streams, optional: the codec stopped reading the request body because the
     * stream holds its buffer limit of bytes the driver has not consumed (paused), or
     * reads on with the request not yet whole (!paused). */
    void (*on_flow)(lg_stream_t *s, int paused);
} lg_stream_cbs_t;

/* What the driver calls; implemented by the codec. The head passed to
 * send_headers (lg_resp_head_t on server streams, lg_req_head_t on client
 * streams) and its strings must stay valid until the stream completes or is
 * reset (allocate them from the driver's per-stream pool). */
typedef struct st_lg_stream_ops_t {
    void (*send_headers)(lg_stream_t *s, void *head, int end_stream);
    void (*send_data)(lg_stream_t *s, h2o_iovec_t data, int end_stream);
    void (*send_trailers)(lg_stream_t *s, lg_headers_t *trailers);
    void (*consume)(lg_stream_t *s, size_t bytes);
    void (*reset)(lg_stream_t *s, lg_reset_reason_t reason);
    /* Pauses/resumes delivery of on_data (the receiver is over its limit). */
    void (*read_pause)(lg_stream_t *s, int paused);
    /* Server streams, optional: whether the codec will deliver nothing more of the
     * request until some of it is consumed, although less than the buffer limit is
     * delivered (HTTP/1.1: its buffers are full of chunk framing). A receiver that
     * keeps the body whole gives it up then, as past the limit. */
    int (*rx_blocked)(lg_stream_t *s);
} lg_stream_ops_t;

struct st_lg_stream_t {
    const lg_stream_ops_t *ops; /* set by the codec */
    const lg_stream_cbs_t *cbs; /* set by the driver */
    void *ctx;                  /* the driver's */
    uint32_t id;                /* h2 stream id, or the h1 request sequence number */
    int version;                /* LG_HTTP_11 / LG_HTTP_2 ... */
    /* The request's memory pool, so that one request uses one pool (optional,
     * NULL: each side keeps its own).
     *  - server stream: set by the codec before on_new_stream to the pool the
     *    request head lives in; it stays valid until the stream completes or is
     *    reset, and the driver may keep its per-request state in it;
     *  - client stream: set by the driver before send_headers; the codec then
     *    allocates its per-stream memory (heads, decoder state) from it instead
     *    of a pool of its own. The driver keeps it valid until the stream
     *    completes or is reset, or until the stream can no longer need it (the
     *    request was sent and the response ended). */
    h2o_mem_pool_t *pool;
};

/* A server connection (downstream). The codec asks the connection manager
 * for each new stream with `on_new_stream`, which sets s->cbs and s->ctx. */
typedef struct st_lg_server_conn_t lg_server_conn_t;
/* How a server connection closed (on_close): */
#define LG_CONN_CLOSED_REMOTE 1u    /* the peer closed it or its socket failed (Envoy's RemoteClose), else LocalClose */
#define LG_CONN_CLOSED_ACTIVE_RQ 2u /* streams were still open (they were reset) */
#define LG_CONN_CLOSED_DELAYED 4u   /* the delayed close timeout ended it */
typedef struct st_lg_server_conn_cbs_t {
    void (*on_new_stream)(lg_server_conn_t *c, lg_stream_t *s);
    /* The connection closed; no stream remains. `how`: LG_CONN_CLOSED_* flags. */
    void (*on_close)(lg_server_conn_t *c, unsigned how);
    /* A codec-level error that killed the connection or a request before a
     * stream existed (bad request line ...): for stats and access logs. The
     * codec has already answered as Envoy does (400/431 on h1, GOAWAY on h2). */
    void (*on_codec_error)(lg_server_conn_t *c, int status, const char *details);
    /* Bytes read from the socket (TLS: decrypted) and handed to it to write
     * (TLS: before encryption), as they happen: Envoy's connection byte counts.
     * Optional; it must not call into the codec. */
    void (*on_io)(lg_server_conn_t *c, size_t rx, size_t tx);
} lg_server_conn_cbs_t;

typedef struct st_lg_server_conn_ops_t {
    /* Starts draining: h2 sends GOAWAY (graceful: last stream id), h1 adds
     * `connection: close` to the next response and closes after it. */
    void (*drain)(lg_server_conn_t *c);
    /* Closes now, resetting every stream (their on_reset fires). */
    void (*close)(lg_server_conn_t *c);
    int version; /* LG_HTTP_11 or LG_HTTP_2: the codec's, kept here so that the connection need not */
} lg_server_conn_ops_t;

/* 24 bytes: a codec's own fields follow without padding (an idle HTTP/1.1
 * connection is one allocation, see h1_server.c). */
struct st_lg_server_conn_t {
    const lg_server_conn_ops_t *ops;
    const lg_server_conn_cbs_t *cbs;
    void *ctx;
};

static inline int lg_server_conn_version(const lg_server_conn_t *c)
{
    return c->ops->version;
}

/* A client connection (upstream), owned by a connection pool. */
typedef struct st_lg_client_conn_t lg_client_conn_t;
typedef struct st_lg_client_conn_cbs_t {
    /* A stream finished (completed or reset); capacity for a new one may be free. */
    void (*on_stream_done)(lg_client_conn_t *c);
    /* The peer will accept no new streams (h2 GOAWAY, h1 `connection: close`). */
    void (*on_goaway)(lg_client_conn_t *c);
    /* The connection closed; its streams got on_reset first. The pool frees it. */
    void (*on_close)(lg_client_conn_t *c, lg_reset_reason_t reason);
    /* Optional: a stream stopped taking response bytes from the peer (paused) because
     * it holds its buffer limit of bytes the driver has not consumed, or took them
     * again (!paused) with the stream still open: Envoy's
     * upstream_flow_control_{paused,resumed}_reading_total. */
    void (*on_flow)(lg_client_conn_t *c, int paused);
} lg_client_conn_cbs_t;

typedef struct st_lg_client_conn_ops_t {
    /* Opens a stream; NULL when the connection cannot take one now (h1 busy,
     * h2 at max_concurrent_streams or after GOAWAY). The caller sets s->cbs
     * and s->ctx, then calls s->ops->send_headers. */
    lg_stream_t *(*new_stream)(lg_client_conn_t *c);
    /* Streams that may still be opened now (h1: 0 or 1). */
    size_t (*capacity)(lg_client_conn_t *c);
    size_t (*active_streams)(lg_client_conn_t *c);
    /* Closes the connection (resets its streams). Frees it after on_close. */
    void (*close)(lg_client_conn_t *c);
} lg_client_conn_ops_t;

struct st_lg_client_conn_t {
    const lg_client_conn_ops_t *ops;
    const lg_client_conn_cbs_t *cbs;
    void *ctx;
    int version;
};

/* Codec settings, compiled from HttpConnectionManager / HttpProtocolOptions. */
typedef struct st_lg_h2_settings_t {
    uint32_t max_concurrent_streams;         /* Envoy default 2147483647 */
    uint32_t initial_stream_window_size;     /* Envoy default 268435456 */
    uint32_t initial_connection_window_size; /* Envoy default 268435456 */
    uint32_t max_headers_count;              /* default 100 */
    uint32_t max_header_list_bytes;          /* max_request_headers_kb * 1024, default 60 KiB */
    uint32_t buffer_limit;                   /* per_connection_buffer_limit_bytes, default 1 MiB */
} lg_h2_settings_t;

#endif
