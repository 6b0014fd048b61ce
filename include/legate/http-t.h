/*
 * HTTP message heads as every codec (h1, h2, upstream and downstream) hands
 * them to the connection manager, the filters and the router. Names and values
 * point into the stream's pool or into the connection's read buffer (pinned
 * until the head is consumed); header names are lower-case.
 */
#ifndef LEGATE_HTTP_T_H
#define LEGATE_HTTP_T_H

#include <h2o/memory.h>

typedef struct st_lg_header_t {
    h2o_iovec_t name;
    h2o_iovec_t value;
} lg_header_t;

typedef H2O_VECTOR(lg_header_t) lg_headers_t;

/* HTTP versions as h2o encodes them. */
#define LG_HTTP_10 0x100
#define LG_HTTP_11 0x101
#define LG_HTTP_2 0x200

/* A request head. `authority` is :authority (or Host on HTTP/1.1, which is
 * then not in `headers`); `path` is the origin-form path with its query. For
 * CONNECT, `authority` is the target and `path` is empty unless `protocol`
 * (RFC 8441 :protocol) is set. */
typedef struct st_lg_req_head_t {
    h2o_iovec_t method;
    h2o_iovec_t scheme;
    h2o_iovec_t authority;
    h2o_iovec_t path;
    h2o_iovec_t protocol;
    int version;
    lg_headers_t headers;
} lg_req_head_t;

typedef struct st_lg_resp_head_t {
    int status;
    int version;
    lg_headers_t headers;
} lg_resp_head_t;

#endif
