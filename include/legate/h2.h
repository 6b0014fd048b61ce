/*
 * The HTTP/2 codec (nghttp2), server side (downstream h2 and h2c with prior
 * knowledge) and client side (upstream). Both implement codec-t.h; see there
 * for the stream contract. What this codec adds to it:
 *
 *  - Inbound DATA is copied once, into per-stream blocks that never move, and
 *    delivered as slices of them. As in Envoy's codec, the flow-control credit
 *    of received bytes goes back at once while the stream holds less than
 *    settings.buffer_limit (per_connection_buffer_limit_bytes), and past it only
 *    as ops->consume() releases them: a stream holds at most the limit plus one
 *    initial_stream_window_size, and a window smaller than the limit does not
 *    stop a body that the driver keeps whole (a router keeping it for a retry
 *    gives up at the limit).
 *  - Outbound DATA is not copied when the socket takes it at once: the frame
 *    header and the caller's bytes are written with one sendmsg(). What the
 *    kernel does not take (or everything, on TLS sockets, where h2o encrypts
 *    into its own buffer) is copied before the write call returns, so the
 *    codec never holds a caller's bytes past its own return. on_data_sent is
 *    reported only once the socket took every byte of that write, and a
 *    stream's bytes are only taken while no write is in flight (and as far as
 *    the peer's flow-control windows allow), so a slow peer pushes back on
 *    the sender: it never has more than its own limit unreported.
 *  - on_complete fires once both END_STREAMs are through *and* every
 *    delivered byte has been consumed (delivered chunks live in the stream).
 *  - No driver callback runs from inside nghttp2 or from inside an op: ops
 *    called outside the codec's own callbacks are acted on at the next loop
 *    turn (a 0 ms timer), so callbacks never nest into the caller.
 *  - Malformed messages (nghttp2's HTTP messaging checks) close the whole
 *    connection with GOAWAY(PROTOCOL_ERROR) as Envoy does by default; with
 *    options.stream_error_on_invalid_http_messaging only the stream is reset
 *    (RST_STREAM PROTOCOL_ERROR). Either way on_codec_error() reports it with
 *    Envoy's details ("http2.invalid.header.field", ...). Too many headers or
 *    too large a header list resets the stream (INTERNAL_ERROR,
 *    "http2.too_many_headers"), as Envoy does.
 *  - Idle memory: 100 ms after a connection went idle (no stream, nothing
 *    being written) it frees its write batch and the socket's input buffer,
 *    and drops the pages of nghttp2's frame buffer and empty stream map
 *    (nghttp2 gets them from mmap through the connection's nghttp2_mem).
 *    What stays is nghttp2's session and HPACK tables (~6 KB).
 *  - Per-request memory: nghttp2's small blocks and the codec's stream objects
 *    come from a bounded per-thread cache, and a server stream's pool gets its
 *    first chunk from one (glibc's and h2o's own caches are too small for tens
 *    of streams in flight). Outbound heads are copied once, into the head
 *    pool, and nghttp2 does not copy them again (NO_COPY).
 *  - Flood protection: nghttp2's own limits (queued SETTINGS/PING ACKs, the
 *    RST_STREAM rate limit, CONTINUATION count) plus Envoy's defaults for
 *    queued outbound frames (10000), consecutive empty DATA frames (1),
 *    PRIORITY frames (100 per stream) and WINDOW_UPDATE frames (10 per DATA
 *    frame sent). A flood closes the connection with GOAWAY.
 */
#ifndef LEGATE_H2_H
#define LEGATE_H2_H

#include <nghttp2/nghttp2.h>
#include "legate/codec-t.h"
#include "legate/timer.h"

/* Details reported through on_codec_error and on_reset (Envoy's names). */
#define LG_H2_DETAIL_INVALID_HEADER "http2.invalid.header.field"
#define LG_H2_DETAIL_MESSAGING "http2.violation.of.messaging.rule"
#define LG_H2_DETAIL_UNKNOWN "http2.unknown.nghttp2.error"
#define LG_H2_DETAIL_TOO_MANY_HEADERS "http2.too_many_headers"
#define LG_H2_DETAIL_UNEXPECTED_UNDERSCORE "http2.unexpected_underscore"
#define LG_H2_DETAIL_OUTBOUND_FLOOD "http2.outbound_frames_flood"
#define LG_H2_DETAIL_INBOUND_FLOOD "http2.inbound_empty_frames_flood"
#define LG_H2_DETAIL_REMOTE_REFUSED "http2.remote_refuse"
#define LG_H2_DETAIL_REMOTE_RESET "http2.remote_reset"
#define LG_H2_DETAIL_CODEC_ERROR "http2.codec_error"
#define LG_H2_DETAIL_CONNECTION_TERMINATION "http2.connection_termination"

/* Http2ProtocolOptions fields that lg_h2_settings_t does not carry (yet). */
typedef struct st_lg_h2_options_t {
    int allow_connect;                          /* advertise SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441) */
    int stream_error_on_invalid_http_messaging; /* reset the stream instead of closing the connection */
    /* HttpConnectionManager.request_headers_timeout (0: none). A request whose
     * header block has not ended this long after it began is answered 408 and
     * reset (NO_ERROR), and reported as on_codec_error(408,
     * "request_header_timeout"), as Envoy's onRequestHeaderTimeout. */
    uint32_t request_headers_timeout_ms;
    /* headers_with_underscores_action (lg_h1_underscores_action_t) for request
     * headers and trailers: a dropped header counts in
     * http2.dropped_headers_with_underscores; a rejected request is reset
     * (RST_STREAM) and counts in http2.requests_rejected_with_underscores_in_headers. */
    int headers_with_underscores_action;
} lg_h2_options_t;

/* Envoy's defaults (Http2ProtocolOptions and HttpConnectionManager). */
void lg_h2_settings_init(lg_h2_settings_t *settings);

/* Takes over `sock` (its read callback and `data`). Bytes already in
 * sock->input (the preface the listener peeked at) are processed first, on the
 * next loop turn, so no callback runs before this returns. `options` may be
 * NULL (Envoy's defaults). The connection frees itself after cbs->on_close. */
lg_server_conn_t *lg_h2_server_conn_new(lg_loop_t *loop, h2o_socket_t *sock, const lg_h2_settings_t *settings,
                                        const lg_server_conn_cbs_t *cbs, void *ctx);
lg_server_conn_t *lg_h2_server_conn_new_ex(lg_loop_t *loop, h2o_socket_t *sock, const lg_h2_settings_t *settings,
                                           const lg_h2_options_t *options, const lg_server_conn_cbs_t *cbs, void *ctx);

/* `sock` is connected (and past its TLS handshake). Sends the preface and
 * SETTINGS at once. Frees itself after cbs->on_close. */
lg_client_conn_t *lg_h2_client_conn_new(lg_loop_t *loop, h2o_socket_t *sock, const lg_h2_settings_t *settings,
                                        const lg_client_conn_cbs_t *cbs, void *ctx);
lg_client_conn_t *lg_h2_client_conn_new_ex(lg_loop_t *loop, h2o_socket_t *sock, const lg_h2_settings_t *settings,
                                           const lg_h2_options_t *options, const lg_client_conn_cbs_t *cbs, void *ctx);

/*
 * Internals shared by src/http/h2_common.c, h2_server.c and h2_client.c only.
 */
typedef struct st_lg__h2_conn_t lg__h2_conn_t;
typedef struct st_lg__h2_stream_t lg__h2_stream_t;
typedef struct st_lg__h2_block_t lg__h2_block_t;

/* Inbound DATA: appended at the tail, never moved; freed once consumed. */
struct st_lg__h2_block_t {
    lg__h2_block_t *next;
    size_t consumed, delivered, len, cap;
    char bytes[];
};

/* One piece of a gathered write: copied bytes (at `off` in the batch buffer)
 * or the caller's bytes (`ext`). */
typedef struct st_lg__h2_seg_t {
    const char *ext;
    size_t off, len;
} lg__h2_seg_t;

/* A block nghttp2 allocated through the connection's nghttp2_mem on pages of
 * its own (mmap: the frame buffer, the stream map), whose pages an idle
 * connection gives back to the kernel. */
#define LG__H2_MAX_BIG 6
typedef struct st_lg__h2_big_t {
    void *p;
    size_t size;
} lg__h2_big_t;

typedef struct st_lg__h2_batch_t {
    char *buf;
    size_t len, cap;
    lg__h2_seg_t *segs;
    h2o_iovec_t *vecs; /* segcap entries, filled when written */
    size_t nsegs, segcap;
    size_t total;
} lg__h2_batch_t;

struct st_lg__h2_stream_t {
    lg_stream_t super;
    lg__h2_conn_t *conn;
    h2o_linklist_t link;  /* conn->streams, then conn->graveyard */
    h2o_linklist_t dirty; /* conn->dirty: has something to deliver */
    h2o_mem_pool_t pool;
    struct st_h2o_mem_pool_chunk_t *seed; /* pool's first chunk, from the codec's cache (server streams) */
    /* the head being received, then delivered */
    union {
        lg_req_head_t req;
        lg_resp_head_t resp;
    } head;
    lg_headers_t *building; /* headers of the HEADERS frame being received */
    h2o_iovec_t cookie;     /* crumbs joined with "; " */
    char *scratch;          /* room left in lg__h2_head_pool(s) for received names and values */
    size_t scratch_left;
    size_t header_count, header_bytes;
    H2O_VECTOR(lg_resp_head_t *) informational;
    size_t informational_delivered;
    lg_headers_t *trailers;
    /* inbound body */
    lg__h2_block_t *first, *last, *cursor; /* cursor: the first block not wholly delivered */
    size_t undelivered, unconsumed;
    size_t credited; /* of those, the oldest bytes whose flow-control credit went back early */
    /* outbound body: the caller's chunks not yet framed / written */
    h2o_iovec_t *sendq;
    size_t sendq_head, sendq_size, sendq_cap, sendq_off;
    size_t queued, framed;  /* bytes queued by send_data / reserved for DATA frames by nghttp2 */
    size_t sent_writing;    /* framed into the write in flight (or being built): reported once it completes */
    size_t sent_unreported; /* written, on_data_sent due */
    h2o_linklist_t writing; /* conn->writing while sent_writing != 0 */
    lg_headers_t *send_trailers;
    lg_timer_t headers_timer; /* request_headers_timeout (server streams) */
    /* terminal state */
    uint32_t close_error;
    const char *detail;
    int reason_override; /* lg_reset_reason_t + 1, or 0 */
    /* visible: the driver knows the stream (server: after on_new_stream); closed: nghttp2 closed it;
     * local_end: the driver ended its side; done: terminal callback given or ops->reset called;
     * timed_out: answered 408 by request_headers_timeout (RST_STREAM follows the 408). */
    unsigned visible : 1, head_ready : 1, head_delivered : 1, remote_end : 1, remote_end_delivered : 1, headers_sent : 1,
        local_end : 1, local_end_sent : 1, deferred : 1, paused : 1, closed : 1, rst_received : 1, done : 1, timed_out : 1;
    unsigned at_limit : 1; /* holds the buffer limit: credit only as bytes are consumed (client: on_flow told) */
};

typedef enum en_lg__h2_state_t {
    LG__H2_OPEN,
    LG__H2_CLOSED, /* the driver was told; lingering until the last write ends */
} lg__h2_state_t;

struct st_lg__h2_conn_t {
    union {
        lg_server_conn_t server;
        lg_client_conn_t client;
    } super;
    int is_server;
    lg_loop_t *loop;
    h2o_socket_t *sock;
    nghttp2_session *session;
    lg_h2_settings_t settings;
    lg_h2_options_t options;
    lg_timer_t run_timer;
    lg_timer_t linger_timer; /* open: the idle trim; closed: the linger before the free */
    unsigned depth;
    lg__h2_state_t state;
    int close_requested, peer_gone, write_in_flight, pending_read, goaway_received, goaway_notified, drain_sent, done_pending;
    int streams_at_close; /* streams were open when the connection started closing (active_rq) */
    lg_reset_reason_t close_reason;
    const char *close_detail; /* why the connection closed */
    const char *codec_error;  /* set when on_codec_error is due */
    int final_goaway;         /* error code of the GOAWAY to write on close, or -1 */
    lg__h2_batch_t batch;
    char *tail;                       /* bytes the socket did not take, in flight */
    lg__h2_stream_t *hdr_stream;      /* the stream whose header block is being received (on_header's lookup) */
    lg__h2_big_t big[LG__H2_MAX_BIG]; /* nghttp2's blocks on pages of their own */
    size_t nbig;
    h2o_linklist_t streams, dirty, graveyard, writing;
    size_t num_streams;
    uint64_t trim_armed_at; /* flood.streams_opened when the idle trim was armed */
    struct {
        uint64_t streams_opened, data_frames_sent, priority_frames, window_update_frames;
        uint32_t empty_frames;
    } flood;
};

/* Side-specific, in h2_server.c and h2_client.c. */
void lg__h2_server_send_head(lg__h2_stream_t *s, lg_resp_head_t *head, int end_stream);
void lg__h2_client_send_head(lg__h2_stream_t *s, lg_req_head_t *head, int end_stream);

/* Shared plumbing, in h2_common.c. */
extern const lg_stream_ops_t lg__h2_stream_ops;
int lg__h2_conn_init(lg__h2_conn_t *conn, int is_server, lg_loop_t *loop, h2o_socket_t *sock, const lg_h2_settings_t *settings,
                     const lg_h2_options_t *options);
/* Creates a stream; `stream_id` 0 for a client stream not submitted yet. */
lg__h2_stream_t *lg__h2_stream_new(lg__h2_conn_t *conn, int32_t stream_id);
/* The data provider of a stream whose head is sent without END_STREAM. */
nghttp2_data_provider lg__h2_data_provider(lg__h2_stream_t *s);
/* Marks a stream closed by the codec itself (submit failed ...); it is reset on the next run. */
void lg__h2_stream_fail(lg__h2_stream_t *s, lg_reset_reason_t reason, const char *detail);
/* Every entry point (socket callbacks, timers, ops) runs between enter and
 * leave; the outermost leave delivers callbacks, writes and closes. */
void lg__h2_enter(lg__h2_conn_t *conn);
void lg__h2_leave(lg__h2_conn_t *conn);
/* Gets the outermost leave to run: the running one inside the codec, else one
 * on the next loop turn (a 0 ms timer), so that ops never call back into their caller. */
void lg__h2_request_run(lg__h2_conn_t *conn);
void lg__h2_request_close(lg__h2_conn_t *conn, lg_reset_reason_t reason, const char *detail, int goaway_code);
/* The driver's request pool when it lends one (lg_stream_t.pool), else the stream's own: where
 * received heads live, and outbound heads are built. The driver keeps it valid until the stream
 * completes or is reset (codec-t.h), which is as long as nghttp2 may read an outbound head. */
h2o_mem_pool_t *lg__h2_head_pool(lg__h2_stream_t *s);
/* A pseudo-header of an outbound head: a static name and the caller's value. */
typedef struct st_lg__h2_pseudo_t {
    const char *name;
    size_t name_len;
    h2o_iovec_t value;
} lg__h2_pseudo_t;
#define LG__H2_PSEUDO(name, value) ((lg__h2_pseudo_t){name, sizeof(name) - 1, (value)})
/* Builds the name/value pairs of a head in `pool` (lg__h2_head_pool): the pseudo-headers, then
 * `headers` without connection-specific ones. Strings are copied into `pool` and marked
 * NO_COPY for nghttp2, so `pool` must outlive the frame (see h2_common.c). Returns the count. */
size_t lg__h2_build_nva(h2o_mem_pool_t *pool, nghttp2_nv **nva, const lg__h2_pseudo_t *pseudo, size_t npseudo,
                        const lg_headers_t *headers, int is_request);

#endif
