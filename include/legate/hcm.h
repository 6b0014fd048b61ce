#ifndef LEGATE_HCM_H
#define LEGATE_HCM_H

#include "legate/hcm-t.h"
#include "legate/protobuf.h"

/* Compiles an HttpConnectionManager typed_config. `validate_clusters` is the
 * cluster-existence check for inline route configs. */
typedef struct st_lg_hcm_compile_ctx_t {
    int (*cluster_exists)(void *ctx, const char *name);
    void *ctx;
    int flags; /* LG_PBJSON_* for nested Anys */
} lg_hcm_compile_ctx_t;
lg_hcm_config_t *
lg_hcm_config_compile(const Envoy__Extensions__Filters__Network__HttpConnectionManager__V3__HttpConnectionManager *m,
                      const lg_hcm_compile_ctx_t *ctx, lg_error_t *err);
/* Gives a compiled config its listener's stats (Envoy's ConnectionManagerListenerStats under
 * <listener_stats_prefix>http.<stat_prefix>., e.g. listener.0.0.0.0_80.http.ingress_http.). */
void lg_hcm_config_set_listener(lg_hcm_config_t *c, const char *listener_stats_prefix);
void lg_hcm_config_free(lg_hcm_config_t *c);

/* Takes over an accepted socket; `version` is the codec chosen by the
 * listener (LG_HTTP_11 or LG_HTTP_2). `local` and `peer` are the socket's
 * addresses as the listener found them (AF_UNSPEC when unknown).
 * `listener_start_ms` (NULL: the listener counts the socket itself) hands the
 * listener's count of the connection over: lg_listener_uncount() when the
 * connection closes (plain TCP only, where the socket closes with it). */
lg_hcm_conn_t *lg_hcm_conn_new(lg_worker_t *w, const lg_listener_config_t *l, const lg_hcm_config_t *c, lg_snapshot_t *snap,
                               h2o_socket_t *sock, int version, const struct sockaddr *local, const struct sockaddr *peer,
                               const uint64_t *listener_start_ms);
/* The connection's codec. */
lg_server_conn_t *lg_hcm_conn_codec(lg_hcm_conn_t *c);
/* Closes the connection now (its streams are reset). */
void lg_hcm_conn_close(lg_hcm_conn_t *c);
/* Stops this worker thread's HCM timer (the memory trim after a burst of
 * streams) for good: call on the worker's thread before its loop goes. */
void lg_hcm_thread_exit(void);
/* Starts draining the connection (GOAWAY / connection: close). */
void lg_hcm_conn_drain(lg_hcm_conn_t *c);

/* ---- for filters ---- */
void lg_hcm_continue_decoding(lg_http_filter_t *f);
void lg_hcm_continue_encoding(lg_http_filter_t *f);
/* Sends a local reply (Envoy's sendLocalReply): text/plain `body`, response
 * code details and flags recorded for logs. Stops the decode chain. */
void lg_hcm_send_local_reply(lg_hcm_stream_t *s, int status, h2o_iovec_t body, const char *details, uint32_t flags);
/* Same, with extra response headers (appended after the reply's own). */
void lg_hcm_send_local_reply_ex(lg_hcm_stream_t *s, int status, h2o_iovec_t body, const char *details, uint32_t flags,
                                const lg_headers_t *extra);
/* Increments one of the HCM's stats (LG_HCM_STAT_*) in this worker's row. */
void lg_hcm_stat_inc(lg_hcm_stream_t *s, size_t idx);
/* Response from the terminal filter, through the encode chain. */
void lg_hcm_encode_headers(lg_hcm_stream_t *s, lg_resp_head_t *head, int end_stream);
void lg_hcm_encode_data(lg_hcm_stream_t *s, h2o_iovec_t data, int end_stream);
void lg_hcm_encode_trailers(lg_hcm_stream_t *s, lg_headers_t *trailers);
/* The terminal filter is done with `bytes` of request body. */
void lg_hcm_consume_request(lg_hcm_stream_t *s, size_t bytes);
/* Whether the downstream codec holds all of the request it may until some is
 * consumed (lg_stream_ops_t.rx_blocked). */
int lg_hcm_request_rx_blocked(lg_hcm_stream_t *s);
void lg_hcm_pause_request(lg_hcm_stream_t *s, int paused);
/* Resets the downstream stream (after the response started, or on errors). */
void lg_hcm_reset_stream(lg_hcm_stream_t *s);
/* The route for the stream (matched once, cached), or NULL. */
const lg_route_t *lg_hcm_route(lg_hcm_stream_t *s);
lg_worker_t *lg_hcm_worker(lg_hcm_stream_t *s);

/* ---- gRPC timeouts (Envoy's Grpc::Common) ---- */
#define LG_GRPC_TIMEOUT_MAX 99999999 /* a grpc-timeout value has at most 8 digits */
/* The request's grpc-timeout in milliseconds (rounded up), or -1 when absent or malformed. */
int64_t lg_hcm_grpc_timeout_ms(const lg_req_head_t *req);
/* A grpc-timeout value for `ms` (in the pool), in the smallest unit that fits 8 digits. */
h2o_iovec_t lg_hcm_grpc_timeout_value(h2o_mem_pool_t *pool, uint64_t ms);
/* Envoy's usingNewTimeouts(): the route has a max_stream_duration message, so
 * the HCM (not the router) applies timeouts from grpc-timeout. */
int lg_hcm_route_uses_new_timeouts(const lg_route_t *r);

#endif
