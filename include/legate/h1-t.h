/*
 * HTTP/1.1 codec types. The codec is a set of pure functions over buffers:
 * the downstream connection feeds it request bytes, the upstream pool feeds
 * it response bytes, and both write what the flatten functions return.
 * Envoy's http1 codec (BalsaParser + ConnectionImpl) is the reference for
 * what is accepted, what is rejected and with which status and details.
 */
#ifndef LEGATE_H1_T_H
#define LEGATE_H1_T_H

#include <stdint.h>
#include <h2o/memory.h>
#include "legate/http-t.h"

/* HttpProtocolOptions.HeadersWithUnderscoresAction, same order as the proto enum. */
typedef enum en_lg_h1_underscores_action_t {
    LG_H1_UNDERSCORES_ALLOW,
    LG_H1_UNDERSCORES_REJECT_REQUEST,
    LG_H1_UNDERSCORES_DROP_HEADER,
} lg_h1_underscores_action_t;

/* Per-listener (requests) or per-cluster (responses) parsing settings, compiled from
 * HttpProtocolOptions / Http1ProtocolOptions. lg_h1_limits_init() sets Envoy's defaults. */
typedef struct st_lg_h1_limits_t {
    /* Bytes of a head (request line or status line, header lines, CRLFs) allowed, in KiB;
     * also bounds a trailer section. Envoy: max_request_headers_kb, default 60. */
    uint32_t max_headers_kb;
    /* Header (or trailer) fields allowed. Envoy: max_headers_count, default 100. */
    uint32_t max_headers_count;
    /* Only applied to requests and request trailers, as in Envoy. */
    lg_h1_underscores_action_t headers_with_underscores_action;
    /* Http1ProtocolOptions.allow_chunked_length: a chunked message with a Content-Length
     * is accepted and its Content-Length removed, instead of 400. Default false. */
    unsigned allow_chunked_length : 1;
    /* Http1ProtocolOptions.accept_http_10 (default false: any version but 1.1 gets 426). */
    unsigned accept_http_10 : 1;
    /* Http1ProtocolOptions.allow_absolute_url (default true): absolute-form targets set
     * scheme/authority/path; when false the target is kept verbatim as the path. */
    unsigned allow_absolute_url : 1;
    /* Http1ProtocolOptions.allow_custom_methods (default false: Envoy's fixed method list). */
    unsigned allow_custom_methods : 1;
    /* Http1ProtocolOptions.default_host_for_http_10 (empty: none). Not copied. */
    h2o_iovec_t default_host_for_http_10;
} lg_h1_limits_t;

/* How the body that follows a head is delimited. */
typedef enum en_lg_h1_body_t {
    LG_H1_BODY_NONE,           /* no body: the next byte starts the next message */
    LG_H1_BODY_CONTENT_LENGTH, /* exactly `content_length` bytes (> 0) */
    LG_H1_BODY_CHUNKED,        /* chunked coding: feed lg_h1_chunked_decode() */
    LG_H1_BODY_UNTIL_CLOSE,    /* response body ends when the upstream closes */
    LG_H1_BODY_TUNNEL,         /* CONNECT / upgrade: every later byte is opaque stream data */
} lg_h1_body_t;

/* What a parsed head says about the message around it. */
typedef struct st_lg_h1_msg_info_t {
    lg_h1_body_t body;
    uint64_t content_length;
    /* The connection may carry another message after this one. */
    unsigned keep_alive : 1;
    /* Request: the client asked for the close (`connection: close`, HTTP/1.0
     * without keep-alive: Envoy's HeaderUtility::shouldCloseConnection). */
    unsigned close_asked : 1;
    /* Request carried `Expect: 100-continue` (the header is left in place). */
    unsigned expect_100_continue : 1;
    /* Request: Connection: upgrade + Upgrade (h2c excepted), or CONNECT.
     * Response: 101 to an upgrade request. */
    unsigned upgrade : 1;
    unsigned is_connect : 1;
    /* Request method is HEAD. */
    unsigned is_head : 1;
    /* Response is 1xx other than 101: a final response head follows. */
    unsigned is_interim : 1;
    /* Headers dropped by LG_H1_UNDERSCORES_DROP_HEADER (Envoy counts them in
     * http1.dropped_headers_with_underscores as it drops them). */
    uint32_t dropped_headers;
} lg_h1_msg_info_t;

/* Why a message was rejected. `status` is what the proxy answers downstream: Envoy's
 * codec status for requests (400, 426, 431, 501), 502 for a malformed upstream response.
 * `details` is Envoy's response code details string (%RESPONSE_CODE_DETAILS%);
 * `msg` a description for logs. Both are static strings. */
typedef struct st_lg_h1_error_t {
    int status;
    const char *details;
    const char *msg;
} lg_h1_error_t;

/* Streaming decoder of the chunked transfer coding. It never moves or copies body
 * bytes: decoded data comes out as slices of the caller's input. */
typedef struct st_lg_h1_chunked_decoder_t {
    const lg_h1_limits_t *_lim;
    h2o_mem_pool_t *_pool;
    lg_headers_t *_trailers;
    uint64_t _remaining;  /* data bytes left in the current chunk, or the chunk size being read */
    uint32_t _line_bytes; /* length of the chunk-size line being read */
    uint32_t _trailer_bytes;
    uint32_t _trailer_count;
    uint8_t _state;
    uint8_t _is_request;
} lg_h1_chunked_decoder_t;

/* Flags for the flatten functions; lg_h1_encode_framing() computes the first two. */
#define LG_H1_ADD_CHUNKED_TE 0x1          /* append "transfer-encoding: chunked" */
#define LG_H1_ADD_CONTENT_LENGTH_ZERO 0x2 /* append "content-length: 0" */
#define LG_H1_ABSOLUTE_URL 0x4            /* request: absolute-form target (send_fully_qualified_url) */
/* Returned by lg_h1_encode_framing() only: frame body data with chunk headers. */
#define LG_H1_CHUNK_BODY 0x8

/* What lg_h1_encode_framing() needs to know, Envoy's StreamEncoderImpl state. */
typedef struct st_lg_h1_encode_ctx_t {
    int status; /* response status; 0 for a request */
    unsigned has_content_length : 1;
    unsigned end_stream : 1;         /* the head is the whole message */
    unsigned is_http10 : 1;          /* response to an HTTP/1.0 request */
    unsigned is_head_response : 1;   /* response to HEAD */
    unsigned is_connect : 1;         /* CONNECT request, or its response */
    unsigned is_upgrade : 1;         /* Connection: upgrade + Upgrade present */
    unsigned is_bodiless_method : 1; /* request method is GET, HEAD, DELETE, TRACE or CONNECT */
} lg_h1_encode_ctx_t;

#endif
