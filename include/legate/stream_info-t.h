/*
 * What is known about one HTTP stream (or TCP connection) for access logs,
 * header formatters (%DOWNSTREAM_REMOTE_ADDRESS% ...) and response flags. It
 * lives in the stream and is filled in as the stream progresses; pointers
 * stay valid for the life of the stream.
 */
#ifndef LEGATE_STREAM_INFO_T_H
#define LEGATE_STREAM_INFO_T_H

#include <stdint.h>
#include <sys/socket.h>
#include "legate/http-t.h"

/* Envoy's response flags, in the order Envoy prints them (%RESPONSE_FLAGS%). */
#define LG_RESPONSE_FLAGS(X)                                                                                                       \
    X(FAILED_LOCAL_HEALTHCHECK, "LH")                                                                                              \
    X(NO_HEALTHY_UPSTREAM, "UH")                                                                                                   \
    X(UPSTREAM_REQUEST_TIMEOUT, "UT")                                                                                              \
    X(LOCAL_RESET, "LR")                                                                                                           \
    X(UPSTREAM_REMOTE_RESET, "UR")                                                                                                 \
    X(UPSTREAM_CONNECTION_FAILURE, "UF")                                                                                           \
    X(UPSTREAM_CONNECTION_TERMINATION, "UC")                                                                                       \
    X(UPSTREAM_OVERFLOW, "UO")                                                                                                     \
    X(NO_ROUTE_FOUND, "NR")                                                                                                        \
    X(DELAY_INJECTED, "DI")                                                                                                        \
    X(FAULT_INJECTED, "FI")                                                                                                        \
    X(RATE_LIMITED, "RL")                                                                                                          \
    X(UNAUTHORIZED_EXTERNAL_SERVICE, "UAEX")                                                                                       \
    X(RATELIMIT_SERVICE_ERROR, "RLSE")                                                                                             \
    X(DOWNSTREAM_CONNECTION_TERMINATION, "DC")                                                                                     \
    X(UPSTREAM_RETRY_LIMIT_EXCEEDED, "URX")                                                                                        \
    X(STREAM_IDLE_TIMEOUT, "SI")                                                                                                   \
    X(INVALID_ENVOY_REQUEST_HEADERS, "IH")                                                                                         \
    X(DOWNSTREAM_PROTOCOL_ERROR, "DPE")                                                                                            \
    X(UPSTREAM_MAX_STREAM_DURATION_REACHED, "UMSDR")                                                                               \
    X(RESPONSE_FROM_CACHE_FILTER, "RFCF")                                                                                          \
    X(NO_FILTER_CONFIG_FOUND, "NFCF")                                                                                              \
    X(DURATION_TIMEOUT, "DT")                                                                                                      \
    X(UPSTREAM_PROTOCOL_ERROR, "UPE")                                                                                              \
    X(NO_CLUSTER_FOUND, "NC")                                                                                                      \
    X(OVERLOAD_MANAGER, "OM")                                                                                                      \
    X(DNS_RESOLUTION_FAILURE, "DF")                                                                                                \
    X(DROP_OVERLOAD, "DO")

#define LG__RF_ENUM(name, str) LG_RF_BIT_##name,
enum { LG_RESPONSE_FLAGS(LG__RF_ENUM) LG_RF__COUNT };
#undef LG__RF_ENUM
#define LG_RF(name) (UINT32_C(1) << LG_RF_BIT_##name)

typedef struct st_lg_stream_info_t {
    uint64_t connection_id;
    uint64_t start_wall_us;            /* wall clock, for %START_TIME% */
    uint64_t start_us;                 /* monotonic */
    uint64_t last_downstream_rx_us;    /* request fully received (0 = not yet) */
    uint64_t first_upstream_rx_us;     /* first response byte from upstream */
    uint64_t last_downstream_tx_us;    /* response fully sent */
    struct sockaddr_storage downstream_remote;  /* after x-forwarded-for handling */
    struct sockaddr_storage downstream_direct_remote;
    struct sockaddr_storage downstream_local;
    struct sockaddr_storage upstream_remote;    /* ss_family 0 = none */
    struct sockaddr_storage upstream_local;
    h2o_iovec_t requested_server_name;  /* SNI */
    h2o_iovec_t upstream_cluster;
    h2o_iovec_t route_name;
    h2o_iovec_t response_code_details; /* e.g. "via_upstream", "route_not_found" */
    h2o_iovec_t upstream_transport_failure_reason;
    int protocol;                      /* LG_HTTP_10 / 11 / 2, 0 for TCP */
    int response_code;                 /* 0 = none sent */
    uint32_t response_flags;           /* LG_RF(...) bits */
    uint64_t bytes_received, bytes_sent;
    const lg_req_head_t *request;      /* NULL for TCP */
    const lg_resp_head_t *response;
    const lg_headers_t *response_trailers;
    h2o_iovec_t request_id;
} lg_stream_info_t;

/* Writes the flags as Envoy prints them ("UH,UF"), or "-" when none; returns the length. */
size_t lg_response_flags_format(uint32_t flags, char *buf, size_t cap);

#endif
