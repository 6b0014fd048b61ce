/*
 * HTTP filters. A filter type is a vtable; its config is compiled once from
 * the filter's typed_config and is immutable; per-stream state is allocated
 * from the stream's pool.
 *
 * Contract of the callbacks (Envoy's FilterHeadersStatus & co):
 *  - LG_FILTER_CONTINUE: the next filter runs now.
 *  - LG_FILTER_STOP: the chain stops at this filter; the filter later calls
 *    lg_filter_continue_decoding() / lg_filter_continue_encoding(), or sends
 *    a local reply with lg_filter_send_local_reply().
 * decode_data/encode_data see body chunks in order; the chunk belongs to the
 * stream's codec (see codec-t.h): a non-terminal filter only looks at it. The
 * terminal filter (the router) takes the chunk and consumes it later.
 * A filter that sent a local reply returns LG_FILTER_STOP.
 */
#ifndef LEGATE_FILTER_T_H
#define LEGATE_FILTER_T_H

#include <protobuf-c/protobuf-c.h>
#include "legate/common.h"
#include "legate/http-t.h"

typedef enum en_lg_filter_status_t {
    LG_FILTER_CONTINUE,
    LG_FILTER_STOP,
} lg_filter_status_t;

typedef struct st_lg_http_filter_t lg_http_filter_t;
typedef struct st_lg_hcm_stream_t lg_hcm_stream_t;

typedef struct st_lg_http_filter_type_t {
    const char *name;                              /* canonical name, "envoy.filters.http.router" */
    const ProtobufCMessageDescriptor *config_type; /* typed_config's type */
    int is_terminal;
    /* Compiles the unpacked typed_config (NULL when the filter has none).
     * Returns the immutable config (may be NULL for stateless filters) or
     * NULL with err set; *ok tells the two NULLs apart. */
    void *(*compile)(const ProtobufCMessage *config, int *ok, lg_error_t *err);
    void (*free_config)(void *config);
    size_t state_size; /* zeroed per-stream state after lg_http_filter_t */
    lg_filter_status_t (*decode_headers)(lg_http_filter_t *f, lg_req_head_t *head, int end_stream);
    lg_filter_status_t (*decode_data)(lg_http_filter_t *f, h2o_iovec_t data, int end_stream);
    lg_filter_status_t (*decode_trailers)(lg_http_filter_t *f, lg_headers_t *trailers);
    lg_filter_status_t (*encode_headers)(lg_http_filter_t *f, lg_resp_head_t *head, int end_stream);
    lg_filter_status_t (*encode_data)(lg_http_filter_t *f, h2o_iovec_t data, int end_stream);
    lg_filter_status_t (*encode_trailers)(lg_http_filter_t *f, lg_headers_t *trailers);
    /* The downstream side consumed `bytes` of what this (terminal) filter sent. */
    void (*on_encode_data_sent)(lg_http_filter_t *f, size_t bytes);
    /* Optional, terminal filter: the downstream codec stopped reading the request body
     * because this filter holds the buffer limit of it unconsumed (paused), or reads on. */
    void (*on_decode_flow)(lg_http_filter_t *f, int paused);
    /* The stream is going away (completed or reset): release everything. */
    void (*on_destroy)(lg_http_filter_t *f);
} lg_http_filter_type_t;

typedef struct st_lg_http_filter_config_t {
    const lg_http_filter_type_t *type;
    char *name; /* as configured */
    void *config;
} lg_http_filter_config_t;

struct st_lg_http_filter_t {
    const lg_http_filter_type_t *type;
    void *config;
    lg_hcm_stream_t *stream;
    size_t index;
};

#endif
