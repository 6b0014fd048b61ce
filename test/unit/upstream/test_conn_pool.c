/*
 * The connection pool and the HTTP/1.1 client against a small HTTP/1.1
 * server written here, on the same h2o event loop: keep-alive reuse,
 * max_requests_per_connection, connect failure, unix sockets, chunked
 * responses under consume back-pressure (checking the bytes at consume time,
 * which catches a moved buffer), request bodies, circuit breakers and config
 * updates.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <sys/un.h>
#include <unistd.h>
#include "test.h"
#include "legate/cluster.h"
#include "legate/h2.h"
#include "legate/http.h"
#include "legate/pbjson.h"
#include "legate/stats.h"
#include "legate/timer.h"

static h2o_evloop_t *loop;
static lg_worker_t worker;

/* ---- the test server ---- */

#define CHUNK_SIZE 8192
#define CHUNK_COUNT 128

typedef struct st_server_t {
    int fd;
    uint16_t port;
    char path[108];
    h2o_socket_t *listener;
    int accepted;
    int closed; /* connections the client closed */
} server_t;

typedef struct st_sconn_t {
    server_t *server;
    h2o_socket_t *sock;
    char *out;
    int close_after_write;
    lg_timer_t timer;
} sconn_t;

static server_t tcp_server, unix_server, h2_server;

static uint8_t pattern(size_t off)
{
    return (uint8_t)(off * 7 + 3);
}

static void sconn_close(sconn_t *c)
{
    lg_timer_stop(&c->timer);
    h2o_socket_close(c->sock);
    free(c->out);
    free(c);
}

static void on_server_written(h2o_socket_t *sock, const char *err)
{
    sconn_t *c = sock->data;
    free(c->out);
    c->out = NULL;
    if (err != NULL || c->close_after_write)
        sconn_close(c);
}

static void server_send(sconn_t *c, const char *bytes, size_t len, int close_after)
{
    c->out = lg_malloc(len);
    memcpy(c->out, bytes, len);
    c->close_after_write = close_after;
    h2o_iovec_t v = h2o_iovec_init(c->out, len);
    h2o_socket_write(c->sock, &v, 1, on_server_written);
}

#define SEND_LIT(c, s, close) server_send((c), s, sizeof(s) - 1, (close))

static void send_chunked(sconn_t *c)
{
    lg_strbuf_t b = {0};
    lg_strbuf_puts(&b, "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
    for (size_t i = 0; i != CHUNK_COUNT; ++i) {
        lg_strbuf_printf(&b, "%x\r\n", CHUNK_SIZE);
        lg_strbuf_reserve(&b, CHUNK_SIZE);
        for (size_t j = 0; j != CHUNK_SIZE; ++j)
            b.base[b.len++] = (char)pattern(i * CHUNK_SIZE + j);
        lg_strbuf_puts(&b, "\r\n");
    }
    lg_strbuf_puts(&b, "0\r\n\r\n");
    server_send(c, b.base, b.len, 0);
    lg_strbuf_free(&b);
}

static void on_slow(lg_timer_t *t)
{
    sconn_t *c = H2O_STRUCT_FROM_MEMBER(sconn_t, timer, t);
    SEND_LIT(c, "HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nslow", 0);
}

/* Parses a request body ("content-length" or chunked) at p; returns the body
 * length and sets *used, or -1 when incomplete. Bodies are copied to out. */
static ssize_t read_body(const char *head, const char *p, size_t len, size_t *used, lg_strbuf_t *out)
{
    const char *cl = strstr(head, "content-length: ");
    if (cl != NULL) {
        size_t n = strtoul(cl + 16, NULL, 10);
        if (len < n)
            return -1;
        lg_strbuf_append(out, p, n);
        *used = n;
        return (ssize_t)n;
    }
    if (strstr(head, "transfer-encoding: chunked") == NULL) {
        *used = 0;
        return 0;
    }
    size_t pos = 0;
    for (;;) {
        const char *eol = memmem(p + pos, len - pos, "\r\n", 2);
        if (eol == NULL)
            return -1;
        size_t n = strtoul(p + pos, NULL, 16);
        size_t data = eol + 2 - p;
        if (n == 0) {
            if (len < data + 2)
                return -1;
            *used = data + 2;
            return (ssize_t)out->len;
        }
        if (len < data + n + 2)
            return -1;
        lg_strbuf_append(out, p + data, n);
        pos = data + n + 2;
    }
}

static void respond(sconn_t *c, const char *path, const char *body, size_t body_len)
{
    if (strcmp(path, "/cl") == 0) {
        SEND_LIT(c, "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", 0);
    } else if (strcmp(path, "/chunked") == 0) {
        send_chunked(c);
    } else if (strcmp(path, "/close") == 0) {
        SEND_LIT(c, "HTTP/1.1 200 OK\r\n\r\nbye", 1);
    } else if (strcmp(path, "/premature") == 0) {
        SEND_LIT(c, "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789", 1);
    } else if (strcmp(path, "/garbage") == 0) {
        SEND_LIT(c, "HTXP/1.1 200 OK\r\n\r\n", 0);
    } else if (strcmp(path, "/100") == 0) {
        SEND_LIT(c, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", 0);
    } else if (strcmp(path, "/slow") == 0) {
        lg_timer_start(&worker.loop, &c->timer, 100, on_slow);
    } else if (strcmp(path, "/echo") == 0) {
        char head[64];
        int n = snprintf(head, sizeof(head), "HTTP/1.1 200 OK\r\ncontent-length: %zu\r\n\r\n", body_len);
        char *all = lg_malloc(n + body_len);
        memcpy(all, head, n);
        memcpy(all + n, body, body_len);
        server_send(c, all, n + body_len, 0);
        free(all);
    } else {
        SEND_LIT(c, "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n", 0);
    }
}

static void on_server_read(h2o_socket_t *sock, const char *err)
{
    sconn_t *c = sock->data;
    if (err != NULL) {
        ++c->server->closed;
        sconn_close(c);
        return;
    }
    for (;;) {
        h2o_buffer_t *in = sock->input;
        char *end = memmem(in->bytes, in->size, "\r\n\r\n", 4);
        if (end == NULL)
            return;
        size_t head_len = end + 4 - in->bytes, used = 0;
        char *head = lg_strndup(in->bytes, head_len);
        lg_strbuf_t body = {0};
        if (read_body(head, in->bytes + head_len, in->size - head_len, &used, &body) < 0) {
            free(head);
            lg_strbuf_free(&body);
            return;
        }
        char path[64] = "";
        sscanf(head, "%*s %63s", path);
        h2o_buffer_consume(&sock->input, head_len + used);
        respond(c, path, body.base, body.len);
        free(head);
        lg_strbuf_free(&body);
        if (sock->input->size == 0)
            return;
    }
}

/* The HTTP/2 server: every response ("h2ok") is sent 50 ms after its request, so that streams overlap. */
typedef struct st_h2_sstream_t {
    lg_stream_t *stream;
    lg_timer_t timer;
} h2_sstream_t;

static lg_h2_settings_t h2_server_settings;

static void h2_respond(lg_timer_t *t)
{
    static lg_resp_head_t resp = {200, LG_HTTP_2, {NULL}};
    h2_sstream_t *ss = H2O_STRUCT_FROM_MEMBER(h2_sstream_t, timer, t);
    ss->stream->ops->send_headers(ss->stream, &resp, 0);
    ss->stream->ops->send_data(ss->stream, LG_LIT("h2ok"), 1);
}

static void h2s_on_headers(lg_stream_t *s, void *head, int end_stream)
{
    h2_sstream_t *ss = s->ctx;
    lg_timer_start(&worker.loop, &ss->timer, 50, h2_respond);
}

static void h2s_on_data(lg_stream_t *s, h2o_iovec_t data, int end_stream)
{
    s->ops->consume(s, data.len);
}

static void h2s_on_data_sent(lg_stream_t *s, size_t bytes)
{
}

static void h2s_done(lg_stream_t *s)
{
    h2_sstream_t *ss = s->ctx;
    lg_timer_stop(&ss->timer);
    free(ss);
}

static void h2s_on_reset(lg_stream_t *s, lg_reset_reason_t reason, const char *details)
{
    h2s_done(s);
}

static const lg_stream_cbs_t h2s_cbs = {h2s_on_headers, NULL, h2s_on_data, NULL, h2s_on_data_sent, h2s_on_reset, h2s_done};

static void h2s_on_new_stream(lg_server_conn_t *c, lg_stream_t *s)
{
    h2_sstream_t *ss = lg_calloc(1, sizeof(*ss));
    ss->stream = s;
    s->cbs = &h2s_cbs;
    s->ctx = ss;
}

static void h2s_on_close(lg_server_conn_t *c, unsigned how)
{
    ++h2_server.closed;
}

static const lg_server_conn_cbs_t h2s_conn_cbs = {h2s_on_new_stream, h2s_on_close, NULL};

static void on_accept(h2o_socket_t *listener, const char *err)
{
    server_t *server = listener->data;
    h2o_socket_t *sock;
    while ((sock = h2o_evloop_socket_accept(listener)) != NULL) {
        sconn_t *c = lg_calloc(1, sizeof(*c));
        c->server = server;
        c->sock = sock;
        sock->data = c;
        ++server->accepted;
        if (server == &h2_server) {
            free(c);
            lg_h2_server_conn_new(&worker.loop, sock, &h2_server_settings, &h2s_conn_cbs, NULL);
            continue;
        }
        h2o_socket_read_start(sock, on_server_read);
    }
}

static void server_start(server_t *s, const struct sockaddr *sa, socklen_t len)
{
    s->fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int on = 1;
    setsockopt(s->fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
    ok(bind(s->fd, sa, len) == 0 && listen(s->fd, 128) == 0, "listen: %s", strerror(errno));
    if (sa->sa_family == AF_INET) {
        struct sockaddr_in sin;
        socklen_t l = sizeof(sin);
        getsockname(s->fd, (struct sockaddr *)&sin, &l);
        s->port = ntohs(sin.sin_port);
    }
    s->listener = h2o_evloop_socket_create(loop, s->fd, H2O_SOCKET_FLAG_DONT_READ);
    s->listener->data = s;
    h2o_socket_read_start(s->listener, on_accept);
}

/* ---- the client side ---- */

typedef struct st_req_t {
    const char *path;
    const char *method;
    h2o_iovec_t body[2]; /* sent with send_data, the second with end_stream */
    int chunked_body;    /* no content-length */
    int manual_consume;
    /* results */
    int ready, failed, headers, complete, reset, informational, data_sent;
    lg_pool_failure_t failure;
    char detail[128];
    lg_reset_reason_t reset_reason;
    lg_stream_t *stream;
    int status;
    lg_strbuf_t received;
    h2o_iovec_t slices[256];
    size_t nslices, unconsumed, delivered, checked;
    int content_ok;
    lg_req_head_t head;
    h2o_mem_pool_t pool;
} req_t;

static void on_headers(lg_stream_t *s, void *_head, int end_stream)
{
    req_t *r = s->ctx;
    lg_resp_head_t *head = _head;
    r->headers = 1;
    r->status = head->status;
}

static void on_informational(lg_stream_t *s, lg_resp_head_t *head)
{
    req_t *r = s->ctx;
    r->informational = head->status;
}

static void on_data(lg_stream_t *s, h2o_iovec_t data, int end_stream)
{
    req_t *r = s->ctx;
    r->delivered += data.len;
    if (!r->manual_consume) {
        if (data.len != 0)
            lg_strbuf_append(&r->received, data.base, data.len);
        s->ops->consume(s, data.len);
        return;
    }
    if (data.len != 0) {
        if (r->nslices == LG_ARRAY_SIZE(r->slices))
            ok(0, "slice queue overflow");
        else
            r->slices[r->nslices++] = data;
        r->unconsumed += data.len;
    }
}

static void on_data_sent(lg_stream_t *s, size_t bytes)
{
    ((req_t *)s->ctx)->data_sent += (int)bytes;
}

static void on_reset(lg_stream_t *s, lg_reset_reason_t reason, const char *details)
{
    req_t *r = s->ctx;
    r->reset = 1;
    r->reset_reason = reason;
    r->stream = NULL;
}

static void on_complete(lg_stream_t *s)
{
    req_t *r = s->ctx;
    r->complete = 1;
    r->stream = NULL;
}

static const lg_stream_cbs_t stream_cbs = {on_headers, on_informational, on_data, NULL, on_data_sent, on_reset, on_complete};

static void on_ready(void *data, lg_stream_t *s, lg_host_t *host, const struct sockaddr *local)
{
    req_t *r = data;
    r->ready = 1;
    r->stream = s;
    s->cbs = &stream_cbs;
    s->ctx = r;
    h2o_mem_init_pool(&r->pool);
    r->head = (lg_req_head_t){0};
    r->head.method = r->method != NULL ? h2o_iovec_init(r->method, strlen(r->method)) : LG_LIT("GET");
    r->head.authority = LG_LIT("backend");
    r->head.path = h2o_iovec_init(r->path, strlen(r->path));
    r->head.version = LG_HTTP_11;
    size_t body_len = r->body[0].len + r->body[1].len;
    if (r->body[0].base != NULL && !r->chunked_body) {
        char *cl = h2o_mem_alloc_pool(&r->pool, 24);
        lg_headers_add(&r->pool, &r->head.headers, LG_LIT("content-length"), h2o_iovec_init(cl, sprintf(cl, "%zu", body_len)));
    }
    s->ops->send_headers(s, &r->head, r->body[0].base == NULL);
    if (r->body[0].base != NULL) {
        s->ops->send_data(s, r->body[0], 0);
        s->ops->send_data(s, r->body[1], 1);
    }
}

static void on_failure(void *data, lg_pool_failure_t reason, lg_host_t *host, const char *detail)
{
    req_t *r = data;
    r->failed = 1;
    r->failure = reason;
    snprintf(r->detail, sizeof(r->detail), "%s", detail);
}

static const lg_pool_cbs_t pool_cbs = {on_ready, on_failure};

static void run_until(int *flag, int ms)
{
    uint64_t deadline = lg_now_ms() + ms;
    while ((flag == NULL || !*flag) && lg_now_ms() < deadline)
        h2o_evloop_run(loop, 10);
}

static void req_dispose(req_t *r)
{
    if (r->ready)
        h2o_mem_clear_pool(&r->pool);
    lg_strbuf_free(&r->received);
}

/* Runs one GET through the cluster to completion (or failure). */
static void fetch(lg_worker_cluster_t *c, req_t *r)
{
    lg_pool_request_t *pr = lg_cluster_request_stream(c, LG_HTTP_11, NULL, &pool_cbs, r);
    (void)pr;
    uint64_t deadline = lg_now_ms() + 3000;
    while (!r->failed && !r->complete && !r->reset && lg_now_ms() < deadline)
        h2o_evloop_run(loop, 10);
}

static lg_cluster_config_t *compile(const char *fmt, ...)
{
    char yaml[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(yaml, sizeof(yaml), fmt, ap);
    va_end(ap);
    lg_error_t err = {{0}};
    lg_node_t *node = lg_yaml_parse(yaml, strlen(yaml), "test", &err);
    ProtobufCMessage *m = node != NULL ? lg_pbjson_decode(&envoy__config__cluster__v3__cluster__descriptor, node, 0, &err) : NULL;
    lg_cluster_config_t *cfg = m != NULL ? lg_cluster_config_compile((void *)m, &err) : NULL;
    ok(cfg != NULL, "compile: %s", err.msg);
    if (m != NULL)
        protobuf_c_message_free_unpacked(m, NULL);
    lg_node_free(node);
    return cfg;
}

#define TCP_CLUSTER         \
    "name: %s\n"            \
    "connect_timeout: 1s\n" \
    "%s"                    \
    "load_assignment:\n"    \
    "  endpoints:\n"        \
    "  - lb_endpoints:\n"   \
    "    - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: %u}}}\n"

static uint64_t stat(lg_worker_cluster_t *c, size_t idx)
{
    return lg_stats_block_value(lg_cluster_config_stats(lg_worker_cluster_config(c)), idx);
}

/* A view over one cluster; *cfg keeps the caller's reference. */
static lg_worker_clusters_t *view_of(lg_cluster_config_t *cfg, lg_worker_cluster_t **c)
{
    lg_worker_clusters_t *v = lg_worker_clusters_new(&worker, &cfg, 1, NULL);
    *c = lg_worker_clusters_find(v, cfg->name, strlen(cfg->name));
    ok(*c != NULL, "cluster %s in the view", cfg->name);
    return v;
}

static void finish_view(lg_worker_clusters_t *v, lg_cluster_config_t *cfg)
{
    lg_worker_clusters_free(v);
    run_until(NULL, 50); /* idle connections close on the next turns */
    lg_cluster_config_release(cfg);
}

static void test_keepalive(void)
{
    lg_cluster_config_t *cfg = compile(TCP_CLUSTER, "keepalive", "", tcp_server.port);
    lg_worker_cluster_t *c;
    lg_worker_clusters_t *v = view_of(cfg, &c);
    int accepted = tcp_server.accepted;
    for (int i = 0; i != 3; ++i) {
        req_t r = {.path = "/cl"};
        fetch(c, &r);
        ok(r.complete && r.status == 200, "request %d completed (%d, status %d)", i, r.complete, r.status);
        ok(r.received.len == 5 && memcmp(r.received.base, "hello", 5) == 0, "body %d", i);
        req_dispose(&r);
    }
    ok(stat(c, LG_CLUSTER_STAT_upstream_cx_total) == 1, "one connection for 3 requests: %llu",
       (unsigned long long)stat(c, LG_CLUSTER_STAT_upstream_cx_total));
    ok(tcp_server.accepted - accepted == 1, "the server accepted one connection");
    ok(stat(c, LG_CLUSTER_STAT_upstream_rq_total) == 3, "upstream_rq_total");
    ok(stat(c, LG_CLUSTER_STAT_upstream_rq_active) == 0, "upstream_rq_active back to 0");
    ok(stat(c, LG_CLUSTER_STAT_upstream_cx_active) == 1, "the connection is kept");
    ok(stat(c, LG_CLUSTER_STAT_upstream_cx_http1_total) == 1, "http1 connection");
    /* every response counts, not the last read only; received bytes are read within 100 ms */
    run_until(NULL, 150);
    size_t response_len = sizeof("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello") - 1;
    ok(stat(c, LG_CLUSTER_STAT_upstream_cx_rx_bytes_total) == 3 * response_len, "rx bytes: %llu",
       (unsigned long long)stat(c, LG_CLUSTER_STAT_upstream_cx_rx_bytes_total));
    ok(stat(c, LG_CLUSTER_STAT_upstream_cx_tx_bytes_total) > 3 * sizeof("GET /cl HTTP/1.1\r\n"), "tx bytes");
    ok(cfg->hosts[0]->stats[LG_HOST_STAT_rq_total] == 3 && cfg->hosts[0]->stats[LG_HOST_STAT_cx_total] == 1, "host stats");
    /* the same config in the next view: the cluster and its connection carry over */
    lg_worker_clusters_t *v2 = lg_worker_clusters_new(&worker, &cfg, 1, v);
    lg_worker_clusters_free(v);
    ok(lg_worker_clusters_find(v2, "keepalive", 9) == c, "unchanged cluster carried over");
    req_t r = {.path = "/cl"};
    fetch(c, &r);
    ok(r.complete && stat(c, LG_CLUSTER_STAT_upstream_cx_total) == 1, "connection survived the update");
    req_dispose(&r);
    /* a changed config that leaves connections alone (connect_timeout, lb_policy):
     * a new cluster object that takes over the host's pool */
    lg_cluster_config_t *cfg2 =
        compile(TCP_CLUSTER, "keepalive", "connect_timeout: 2s\nlb_policy: LEAST_REQUEST\n", tcp_server.port);
    int closed = tcp_server.closed;
    lg_worker_clusters_t *v3 = lg_worker_clusters_new(&worker, &cfg2, 1, v2);
    lg_worker_clusters_free(v2);
    run_until(NULL, 50);
    lg_worker_cluster_t *c3 = lg_worker_clusters_find(v3, "keepalive", 9);
    ok(c3 != NULL && c3 != c, "a new cluster object");
    ok(tcp_server.closed == closed, "the idle connection was kept");
    r = (req_t){.path = "/cl"};
    fetch(c3, &r);
    ok(r.complete && stat(c3, LG_CLUSTER_STAT_upstream_cx_total) == 1 && tcp_server.accepted - accepted == 1,
       "the kept connection serves the new config");
    ok(cfg2->hosts[0]->stats[LG_HOST_STAT_cx_active] == 1 && cfg2->hosts[0]->stats[LG_HOST_STAT_rq_total] == 5,
       "the host's counters continue (cx_active %llu, rq_total %llu)",
       (unsigned long long)cfg2->hosts[0]->stats[LG_HOST_STAT_cx_active],
       (unsigned long long)cfg2->hosts[0]->stats[LG_HOST_STAT_rq_total]);
    req_dispose(&r);
    lg_cluster_config_release(cfg);
    /* a change that affects connections (HTTP/2 to the same address): the old pool drains */
    lg_cluster_config_t *cfg3 = compile(TCP_CLUSTER, "keepalive", "http2_protocol_options: {}\n", tcp_server.port);
    lg_worker_clusters_t *v4 = lg_worker_clusters_new(&worker, &cfg3, 1, v3);
    lg_worker_clusters_free(v3);
    run_until(NULL, 50);
    ok(tcp_server.closed - closed == 1, "the idle connection of the replaced pool closed");
    lg_worker_cluster_t *c4 = lg_worker_clusters_find(v4, "keepalive", 9);
    ok(c4 != NULL && stat(c4, LG_CLUSTER_STAT_upstream_cx_destroy_local) == 1, "destroy_local counted (stats shared by name)");
    ok(stat(c4, LG_CLUSTER_STAT_upstream_cx_active) == 0, "upstream_cx_active back to 0");
    lg_cluster_config_release(cfg2);
    finish_view(v4, cfg3);
}

/* A view holds a config reference per cluster and creates a worker's
 * cluster object on its first lookup; a later view carries over the objects
 * this worker created, and leaves the others lazy. */
static void test_lazy_view(void)
{
    lg_cluster_config_t *cfgs[3] = {compile(TCP_CLUSTER, "la", "", tcp_server.port),
                                    compile(TCP_CLUSTER, "lb", "", tcp_server.port),
                                    compile(TCP_CLUSTER, "la", "connect_timeout: 3s\n", tcp_server.port)};
    lg_worker_clusters_t *v = lg_worker_clusters_new(&worker, cfgs, 3, NULL);
    ok(cfgs[0]->_refcnt == 2 && cfgs[1]->_refcnt == 2, "the view references each config");
    ok(cfgs[2]->_refcnt == 1, "a duplicate name is left out (the first is kept)");
    lg_worker_cluster_t *a = lg_worker_clusters_find(v, "la", 2);
    ok(a != NULL && lg_worker_cluster_config(a) == cfgs[0], "the first lookup creates the cluster, with its config");
    ok(lg_worker_clusters_find(v, "la", 2) == a, "later lookups find the same object");
    ok(cfgs[0]->_refcnt == 2, "the view's reference moved to the cluster object");
    ok(lg_worker_clusters_find(v, "zz", 2) == NULL && lg_worker_clusters_find(v, "l", 1) == NULL, "unknown names: NULL");
    req_t r = {.path = "/cl"};
    fetch(a, &r);
    ok(r.complete && r.status == 200, "the created cluster serves a request");
    req_dispose(&r);
    /* the next view: `la` (used) carries over with its pool, `lb` (never looked up) stays lazy */
    lg_worker_clusters_t *v2 = lg_worker_clusters_new(&worker, cfgs, 2, v);
    lg_worker_clusters_free(v);
    ok(cfgs[1]->_refcnt == 2, "the old view's reference to lb is gone, the new view holds one");
    ok(lg_worker_clusters_find(v2, "la", 2) == a, "a used cluster carries over");
    int accepted = tcp_server.accepted;
    r = (req_t){.path = "/cl"};
    fetch(a, &r);
    ok(r.complete && tcp_server.accepted == accepted, "with its connection");
    req_dispose(&r);
    lg_worker_cluster_t *b = lg_worker_clusters_find(v2, "lb", 2);
    ok(b != NULL && lg_worker_cluster_config(b) == cfgs[1], "a lazy cluster is created in the later view");
    /* a new config of the used cluster: created at once, taking over the pool */
    lg_worker_clusters_t *v3 = lg_worker_clusters_new(&worker, cfgs + 2, 1, v2);
    lg_worker_clusters_free(v2);
    lg_worker_cluster_t *a3 = lg_worker_clusters_find(v3, "la", 2);
    ok(a3 != NULL && a3 != a && lg_worker_cluster_config(a3) == cfgs[2], "the changed cluster is a new object");
    r = (req_t){.path = "/cl"};
    fetch(a3, &r);
    ok(r.complete && tcp_server.accepted == accepted, "the kept connection serves the new config");
    req_dispose(&r);
    lg_worker_clusters_free(v3);
    run_until(NULL, 50);
    ok(cfgs[0]->_refcnt == 1 && cfgs[1]->_refcnt == 1 && cfgs[2]->_refcnt == 1, "freed views release every reference");
    for (size_t i = 0; i != 3; ++i)
        lg_cluster_config_release(cfgs[i]);
}

/* The same with views prepared off the worker (lg_worker_clusters_prepare)
 * and taken over by it (lg_worker_clusters_adopt): what the worker created
 * carries over, and the replaced view then holds only config references. */
static void test_prepared_view(void)
{
    lg_cluster_config_t *cfgs[3] = {compile(TCP_CLUSTER, "pa", "", tcp_server.port),
                                    compile(TCP_CLUSTER, "pb", "", tcp_server.port),
                                    compile(TCP_CLUSTER, "pa", "connect_timeout: 3s\n", tcp_server.port)};
    lg_worker_clusters_t *v = lg_worker_clusters_prepare(cfgs, 2);
    lg_worker_clusters_adopt(&worker, v, NULL);
    lg_worker_cluster_t *a = lg_worker_clusters_find(v, "pa", 2);
    ok(a != NULL && lg_worker_cluster_config(a) == cfgs[0], "a prepared view creates clusters on lookup");
    req_t r = {.path = "/cl"};
    fetch(a, &r);
    ok(r.complete && r.status == 200, "the cluster serves a request");
    req_dispose(&r);
    int accepted = tcp_server.accepted;
    /* same configs: the used cluster carries over with its connection */
    size_t refs_a = cfgs[0]->_refcnt, refs_b = cfgs[1]->_refcnt;
    lg_worker_clusters_t *v2 = lg_worker_clusters_prepare(cfgs, 2);
    ok(cfgs[0]->_refcnt == refs_a + 1 && cfgs[1]->_refcnt == refs_b + 1, "the prepared view holds a lazy reference to each");
    lg_worker_clusters_adopt(&worker, v2, v);
    ok(cfgs[0]->_refcnt == refs_a + 1, "adopted: the lazy slot's reference moved to the old view (%zu)", (size_t)cfgs[0]->_refcnt);
    ok(lg_worker_clusters_find(v2, "pa", 2) == a, "the used cluster carried over");
    lg_worker_clusters_free(v); /* only config references are left in it */
    ok(cfgs[0]->_refcnt == refs_a && cfgs[1]->_refcnt == refs_b, "freeing the replaced view drops its references");
    r = (req_t){.path = "/cl"};
    fetch(a, &r);
    ok(r.complete && tcp_server.accepted == accepted, "with its connection");
    req_dispose(&r);
    /* a new config of the used cluster: a new object takes over the pool */
    lg_worker_clusters_t *v3 = lg_worker_clusters_prepare(cfgs + 2, 1);
    lg_worker_clusters_adopt(&worker, v3, v2);
    lg_worker_clusters_free(v2);
    lg_worker_cluster_t *a3 = lg_worker_clusters_find(v3, "pa", 2);
    ok(a3 != NULL && a3 != a && lg_worker_cluster_config(a3) == cfgs[2], "the changed cluster is a new object");
    ok(lg_worker_clusters_find(v3, "pb", 2) == NULL, "a cluster left out of the update is gone");
    r = (req_t){.path = "/cl"};
    fetch(a3, &r);
    ok(r.complete && tcp_server.accepted == accepted, "the kept connection serves the new config");
    req_dispose(&r);
    lg_worker_clusters_free(v3);
    run_until(NULL, 50);
    ok(cfgs[0]->_refcnt == 1 && cfgs[1]->_refcnt == 1 && cfgs[2]->_refcnt == 1, "freed views release every reference");
    for (size_t i = 0; i != 3; ++i)
        lg_cluster_config_release(cfgs[i]);
}

/* TCP_CLUSTER and a second host: the unix server */
#define TWO_HOST_CLUSTER TCP_CLUSTER "    - endpoint: {address: {pipe: {path: %s}}}\n"

/* A cluster update while requests are in flight: a host that remains keeps
 * its busy connection (the request finishes on it, later ones reuse it, the
 * breaker slots follow it); a removed host's request finishes, then its
 * connection closes. */
static void test_update_in_flight(void)
{
    lg_cluster_config_t *cfg = compile(TWO_HOST_CLUSTER, "inflight", "circuit_breakers: {thresholds: [{max_connections: 2}]}\n",
                                       tcp_server.port, unix_server.path);
    lg_worker_cluster_t *c;
    lg_worker_clusters_t *v = view_of(cfg, &c);
    req_t a = {.path = "/slow"}, b = {.path = "/slow"};
    lg_cluster_request_stream(c, LG_HTTP_11, NULL, &pool_cbs, &a);
    lg_cluster_request_stream(c, LG_HTTP_11, NULL, &pool_cbs, &b);
    run_until(&b.ready, 1000);
    run_until(&a.ready, 1000);
    ok(a.ready && b.ready, "two slow requests on two hosts");
    int accepted = tcp_server.accepted, closed = unix_server.closed;
    /* the update keeps the TCP host and drops the unix one; max_connections 1 */
    lg_cluster_config_t *cfg2 =
        compile(TCP_CLUSTER, "inflight", "circuit_breakers: {thresholds: [{max_connections: 1}]}\n", tcp_server.port);
    lg_worker_clusters_t *v2 = lg_worker_clusters_new(&worker, &cfg2, 1, v);
    lg_worker_cluster_addref(c); /* as a router that retries on the cluster its stream began on */
    lg_worker_clusters_free(v);
    lg_worker_cluster_t *c2 = lg_worker_clusters_find(v2, "inflight", 8);
    ok(stat(c2, LG_CLUSTER_STAT_circuit_breakers_default_cx_open) == 1, "the kept connection holds the new breaker's slot");
    uint64_t deadline = lg_now_ms() + 3000;
    while (!(a.complete && b.complete) && lg_now_ms() < deadline)
        h2o_evloop_run(loop, 10);
    ok(a.complete && a.status == 200 && b.complete && b.status == 200, "both in-flight requests finished");
    run_until(NULL, 50);
    ok(unix_server.closed - closed == 1, "the removed host's connection closed after its request");
    ok(stat(c2, LG_CLUSTER_STAT_upstream_cx_active) == 1 && stat(c2, LG_CLUSTER_STAT_upstream_rq_active) == 0, "gauges");
    req_t r = {.path = "/cl"};
    fetch(c2, &r);
    ok(r.complete && r.status == 200 && tcp_server.accepted == accepted, "the kept connection serves the next request");
    ok(stat(c2, LG_CLUSTER_STAT_upstream_cx_overflow) == 0, "no breaker overflow: one connection, one slot");
    /* the replaced cluster still serves a retry, on a connection of its own that closes once done */
    int tcp_closed = tcp_server.closed;
    req_t retry = {.path = "/cl"};
    lg_host_t unix_host = {.config = cfg->hosts[1]};
    const lg_host_t *excluded[] = {&unix_host};
    lg_lb_context_t only_tcp = {.excluded = excluded, .n_excluded = 1, .host_selection_retry_max_attempts = 5};
    lg_cluster_request_stream(c, LG_HTTP_11, &only_tcp, &pool_cbs, &retry);
    deadline = lg_now_ms() + 3000;
    while (!retry.complete && !retry.failed && lg_now_ms() < deadline)
        h2o_evloop_run(loop, 10);
    ok(retry.complete && retry.status == 200, "a request on the replaced cluster");
    run_until(NULL, 50);
    ok(tcp_server.closed - tcp_closed == 1, "its connection closed once idle (the replaced cluster drains)");
    req_dispose(&retry);
    lg_worker_cluster_release(c);
    req_dispose(&a);
    req_dispose(&b);
    req_dispose(&r);
    lg_cluster_config_release(cfg);
    finish_view(v2, cfg2);
}

static void test_max_requests_per_connection(void)
{
    lg_cluster_config_t *cfg = compile(TCP_CLUSTER, "maxreq", "max_requests_per_connection: 2\n", tcp_server.port);
    lg_worker_cluster_t *c;
    lg_worker_clusters_t *v = view_of(cfg, &c);
    for (int i = 0; i != 3; ++i) {
        req_t r = {.path = "/cl"};
        fetch(c, &r);
        ok(r.complete && r.status == 200, "request %d", i);
        req_dispose(&r);
    }
    ok(stat(c, LG_CLUSTER_STAT_upstream_cx_total) == 2, "two connections: %llu",
       (unsigned long long)stat(c, LG_CLUSTER_STAT_upstream_cx_total));
    ok(stat(c, LG_CLUSTER_STAT_upstream_cx_max_requests) == 1, "upstream_cx_max_requests");
    run_until(NULL, 30);
    ok(stat(c, LG_CLUSTER_STAT_upstream_cx_active) == 1, "the drained connection closed");
    finish_view(v, cfg);
}

static void test_connect_failure(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof(sin);
    bind(fd, (struct sockaddr *)&sin, sizeof(sin));
    getsockname(fd, (struct sockaddr *)&sin, &l);
    close(fd); /* nothing listens there now */
    lg_cluster_config_t *cfg = compile(TCP_CLUSTER, "refused", "", ntohs(sin.sin_port));
    lg_worker_cluster_t *c;
    lg_worker_clusters_t *v = view_of(cfg, &c);
    req_t r = {.path = "/cl"}, r2 = {.path = "/cl"};
    lg_cluster_request_stream(c, LG_HTTP_11, NULL, &pool_cbs, &r);
    lg_cluster_request_stream(c, LG_HTTP_11, NULL, &pool_cbs, &r2);
    run_until(&r2.failed, 2000);
    ok(r.failed && r.failure == LG_POOL_CONNECT_FAILURE, "connect failure (%d, %d)", r.failed, r.failure);
    ok(r2.failed && r2.failure == LG_POOL_CONNECT_FAILURE, "pending requests are failed too");
    ok(strstr(r.detail, "connect error: Connection refused") != NULL, "transport failure reason: %s", r.detail);
    run_until(NULL, 50);
    /* one connection per pending HTTP/1.1 request, as Envoy: both fail */
    ok(stat(c, LG_CLUSTER_STAT_upstream_cx_connect_fail) == 2, "upstream_cx_connect_fail %llu",
       (unsigned long long)stat(c, LG_CLUSTER_STAT_upstream_cx_connect_fail));
    ok(stat(c, LG_CLUSTER_STAT_upstream_rq_pending_failure_eject) == 2, "upstream_rq_pending_failure_eject");
    ok(stat(c, LG_CLUSTER_STAT_upstream_cx_active) == 0 && stat(c, LG_CLUSTER_STAT_upstream_rq_pending_active) == 0, "gauges");
    ok(cfg->hosts[0]->stats[LG_HOST_STAT_cx_connect_fail] == 2, "host cx_connect_fail");
    finish_view(v, cfg);
}

static void test_connect_timeout(void)
{
    /* a listener whose accept queue is full drops SYNs: the connect hangs */
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof(sin);
    bind(lfd, (struct sockaddr *)&sin, sizeof(sin));
    listen(lfd, 0);
    getsockname(lfd, (struct sockaddr *)&sin, &l);
    int fillers[4];
    for (int i = 0; i != 4; ++i) {
        fillers[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        connect(fillers[i], (struct sockaddr *)&sin, sizeof(sin));
    }
    usleep(50000);
    lg_cluster_config_t *cfg = compile("name: timeout\nconnect_timeout: 0.2s\n"
                                       "load_assignment: {endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: "
                                       "{address: 127.0.0.1, port_value: %u}}}}]}]}\n",
                                       ntohs(sin.sin_port));
    lg_worker_cluster_t *c;
    lg_worker_clusters_t *v = view_of(cfg, &c);
    req_t r = {.path = "/cl"};
    lg_cluster_request_stream(c, LG_HTTP_11, NULL, &pool_cbs, &r);
    run_until(&r.failed, 2000);
    ok(r.failed && r.failure == LG_POOL_CONNECT_TIMEOUT, "connect timeout (%d, %d: %s)", r.failed, r.failure, r.detail);
    ok(stat(c, LG_CLUSTER_STAT_upstream_cx_connect_timeout) == 1 && stat(c, LG_CLUSTER_STAT_upstream_cx_connect_fail) == 1,
       "upstream_cx_connect_timeout");
    for (int i = 0; i != 4; ++i)
        close(fillers[i]);
    close(lfd);
    finish_view(v, cfg);
}

static void test_unix_socket(void)
{
    lg_cluster_config_t *cfg = compile("name: unix\nload_assignment: {endpoints: [{lb_endpoints: [{endpoint: {address: {pipe: "
                                       "{path: '%s'}}}}]}]}\n",
                                       unix_server.path);
    lg_worker_cluster_t *c;
    lg_worker_clusters_t *v = view_of(cfg, &c);
    int accepted = unix_server.accepted;
    req_t r = {.path = "/cl"};
    fetch(c, &r);
    ok(r.complete && r.status == 200 && r.received.len == 5, "request over a unix socket");
    ok(unix_server.accepted - accepted == 1, "unix server accepted");
    req_dispose(&r);
    finish_view(v, cfg);
}

/* Checks delivered slices against the pattern at consume time, then consumes them. */
static void consume_all(req_t *r)
{
    for (size_t i = 0; i != r->nslices; ++i) {
        for (size_t j = 0; j != r->slices[i].len; ++j)
            if ((uint8_t)r->slices[i].base[j] != pattern(r->checked + j))
                r->content_ok = 0;
        r->checked += r->slices[i].len;
    }
    r->nslices = 0;
    if (r->stream != NULL && r->unconsumed != 0)
        r->stream->ops->consume(r->stream, r->unconsumed);
    r->unconsumed = 0;
}

static void test_chunked_backpressure(void)
{
    lg_cluster_config_t *cfg = compile(TCP_CLUSTER, "chunked", "per_connection_buffer_limit_bytes: 16384\n", tcp_server.port);
    lg_worker_cluster_t *c;
    lg_worker_clusters_t *v = view_of(cfg, &c);
    for (int round = 0; round != 2; ++round) {
        req_t r = {.path = "/chunked", .manual_consume = 1, .content_ok = 1};
        lg_cluster_request_stream(c, LG_HTTP_11, NULL, &pool_cbs, &r);
        run_until(&r.headers, 2000);
        ok(r.headers && r.status == 200, "chunked response head");
        size_t prev;
        uint64_t stall_deadline = lg_now_ms() + 2000;
        do {
            prev = r.delivered;
            run_until(NULL, 50);
        } while (r.delivered != prev && lg_now_ms() < stall_deadline);
        ok(r.delivered == prev, "delivery stalls without consume");
        ok(r.delivered < CHUNK_SIZE * CHUNK_COUNT, "before the end of the body (%zu delivered)", r.delivered);
        ok(r.unconsumed <= 16384 + 16 * CHUNK_SIZE, "unconsumed bounded by the limit (%zu)", r.unconsumed);
        uint64_t deadline = lg_now_ms() + 5000;
        while (!r.complete && !r.reset && lg_now_ms() < deadline) {
            consume_all(&r);
            h2o_evloop_run(loop, 10);
        }
        consume_all(&r);
        run_until(&r.complete, 100);
        ok(r.complete, "complete after consuming");
        ok(r.checked == CHUNK_SIZE * CHUNK_COUNT, "every byte delivered (%zu)", r.checked);
        ok(r.content_ok, "bytes intact at consume time");
        req_dispose(&r);
    }
    ok(stat(c, LG_CLUSTER_STAT_upstream_cx_total) == 1, "chunked responses keep the connection");
    finish_view(v, cfg);
}

static void test_request_body(void)
{
    lg_cluster_config_t *cfg = compile(TCP_CLUSTER, "body", "", tcp_server.port);
    lg_worker_cluster_t *c;
    lg_worker_clusters_t *v = view_of(cfg, &c);
    for (int chunked = 0; chunked != 2; ++chunked) {
        req_t r = {.path = "/echo", .method = "POST", .chunked_body = chunked};
        r.body[0] = LG_LIT("hello ");
        r.body[1] = LG_LIT("world");
        fetch(c, &r);
        ok(r.complete && r.status == 200, "echo %s", chunked ? "chunked" : "content-length");
        ok(r.received.len == 11 && memcmp(r.received.base, "hello world", 11) == 0, "echoed body");
        ok(r.data_sent == 11, "on_data_sent reported %d bytes", r.data_sent);
        req_dispose(&r);
    }
    ok(stat(c, LG_CLUSTER_STAT_upstream_cx_total) == 1, "body requests keep the connection");
    finish_view(v, cfg);
}

static void test_responses(void)
{
    lg_cluster_config_t *cfg = compile(TCP_CLUSTER, "responses", "", tcp_server.port);
    lg_worker_cluster_t *c;
    lg_worker_clusters_t *v = view_of(cfg, &c);
    req_t r = {.path = "/close"};
    fetch(c, &r);
    ok(r.complete && r.received.len == 3 && memcmp(r.received.base, "bye", 3) == 0, "until-close body");
    req_dispose(&r);
    run_until(NULL, 20);
    ok(stat(c, LG_CLUSTER_STAT_upstream_cx_active) == 0, "until-close connection not reused");
    r = (req_t){.path = "/premature"};
    fetch(c, &r);
    ok(r.reset && r.reset_reason == LG_RESET_CONNECTION_TERMINATION, "premature close resets (%d, %d)", r.reset, r.reset_reason);
    ok(r.received.len == 10, "the bytes before the close were delivered");
    req_dispose(&r);
    r = (req_t){.path = "/garbage"};
    fetch(c, &r);
    ok(r.reset && r.reset_reason == LG_RESET_PROTOCOL_ERROR, "malformed response: protocol error (%d)", r.reset_reason);
    req_dispose(&r);
    run_until(NULL, 20);
    ok(stat(c, LG_CLUSTER_STAT_upstream_cx_protocol_error) == 1, "upstream_cx_protocol_error");
    r = (req_t){.path = "/100"};
    fetch(c, &r);
    ok(r.complete && r.informational == 100 && r.status == 200, "1xx then the response");
    ok(r.received.len == 2, "body after 1xx");
    req_dispose(&r);
    finish_view(v, cfg);
}

static void test_circuit_breakers(void)
{
    lg_cluster_config_t *cfg = compile(
        TCP_CLUSTER, "cb", "circuit_breakers: {thresholds: [{max_pending_requests: 1, max_connections: 1}]}\n", tcp_server.port);
    lg_worker_cluster_t *c;
    lg_worker_clusters_t *v = view_of(cfg, &c);
    req_t a = {.path = "/cl"}, b = {.path = "/cl"};
    ok(lg_cluster_request_stream(c, LG_HTTP_11, NULL, &pool_cbs, &a) != NULL, "first request pending");
    ok(lg_cluster_request_stream(c, LG_HTTP_11, NULL, &pool_cbs, &b) == NULL, "second request: callback already fired");
    ok(b.failed && b.failure == LG_POOL_OVERFLOW, "max_pending_requests overflow");
    ok(stat(c, LG_CLUSTER_STAT_upstream_rq_pending_overflow) == 1, "upstream_rq_pending_overflow");
    ok(stat(c, LG_CLUSTER_STAT_circuit_breakers_default_rq_pending_open) == 1, "rq_pending_open while at the limit");
    run_until(&a.complete, 2000);
    ok(a.complete, "first request served");
    ok(stat(c, LG_CLUSTER_STAT_circuit_breakers_default_rq_pending_open) == 0, "rq_pending_open closed again");
    req_dispose(&a);
    req_dispose(&b);
    finish_view(v, cfg);

    /* max_connections: the second request waits for the first connection */
    cfg = compile(TCP_CLUSTER, "cb2", "circuit_breakers: {thresholds: [{max_connections: 1}]}\n", tcp_server.port);
    v = view_of(cfg, &c);
    a = (req_t){.path = "/slow"}, b = (req_t){.path = "/cl"};
    lg_cluster_request_stream(c, LG_HTTP_11, NULL, &pool_cbs, &a);
    run_until(&a.ready, 1000);
    lg_cluster_request_stream(c, LG_HTTP_11, NULL, &pool_cbs, &b);
    ok(stat(c, LG_CLUSTER_STAT_upstream_cx_overflow) == 1, "upstream_cx_overflow");
    run_until(&b.complete, 2000);
    ok(a.complete && b.complete, "both served over one connection");
    ok(stat(c, LG_CLUSTER_STAT_upstream_cx_total) == 1, "one connection");
    req_dispose(&a);
    req_dispose(&b);
    finish_view(v, cfg);

    /* max_requests: a second connection comes up but may not take the stream */
    cfg = compile(TCP_CLUSTER, "cb3", "circuit_breakers: {thresholds: [{max_requests: 1}]}\n", tcp_server.port);
    v = view_of(cfg, &c);
    a = (req_t){.path = "/slow"}, b = (req_t){.path = "/cl"};
    lg_cluster_request_stream(c, LG_HTTP_11, NULL, &pool_cbs, &a);
    run_until(&a.ready, 1000);
    lg_cluster_request_stream(c, LG_HTTP_11, NULL, &pool_cbs, &b);
    run_until(&b.failed, 1000);
    ok(b.failed && b.failure == LG_POOL_OVERFLOW, "max_requests overflow");
    ok(stat(c, LG_CLUSTER_STAT_upstream_rq_pending_overflow) == 1, "counted as upstream_rq_pending_overflow");
    run_until(&a.complete, 2000);
    req_dispose(&a);
    req_dispose(&b);
    /* retries */
    lg_cluster_config_t *cfg4 = compile(TCP_CLUSTER, "cb4", "circuit_breakers: {thresholds: [{max_retries: 1}]}\n", 1);
    lg_worker_cluster_t *c4;
    lg_worker_clusters_t *v4 = view_of(cfg4, &c4);
    ok(lg_cluster_retry_begin(c4) == 1 && lg_cluster_retry_begin(c4) == 0, "max_retries");
    ok(stat(c4, LG_CLUSTER_STAT_upstream_rq_retry_overflow) == 1, "upstream_rq_retry_overflow");
    lg_cluster_retry_end(c4);
    ok(lg_cluster_retry_begin(c4) == 1, "retry slot released");
    lg_cluster_retry_end(c4);
    finish_view(v4, cfg4);
    finish_view(v, cfg);
}

static void test_h2(void)
{
    lg_cluster_config_t *cfg = compile(TCP_CLUSTER, "h2", "http2_protocol_options: {}\n", h2_server.port);
    lg_worker_cluster_t *c;
    lg_worker_clusters_t *v = view_of(cfg, &c);
    /* one request first, so that the server's SETTINGS (2 streams at most) are known */
    req_t first = {.path = "/"};
    fetch(c, &first);
    ok(first.complete && first.status == 200, "h2 request");
    req_dispose(&first);
    req_t r[3] = {{.path = "/a"}, {.path = "/b"}, {.path = "/c"}};
    for (int i = 0; i != 3; ++i)
        lg_cluster_request_stream(c, LG_HTTP_11, NULL, &pool_cbs, &r[i]);
    uint64_t deadline = lg_now_ms() + 3000;
    while (!(r[0].complete && r[1].complete && r[2].complete) && lg_now_ms() < deadline)
        h2o_evloop_run(loop, 10);
    for (int i = 0; i != 3; ++i) {
        ok(r[i].complete && r[i].status == 200, "h2 request %d (%d %d %d)", i, r[i].complete, r[i].reset, r[i].failed);
        ok(r[i].received.len == 4 && memcmp(r[i].received.base, "h2ok", 4) == 0, "h2 body %d", i);
        req_dispose(&r[i]);
    }
    /* two streams share the first connection; the third needs a second one */
    ok(stat(c, LG_CLUSTER_STAT_upstream_cx_total) == 2 && stat(c, LG_CLUSTER_STAT_upstream_cx_http2_total) == 2,
       "multiplexed up to the peer's limit (%llu connections)", (unsigned long long)stat(c, LG_CLUSTER_STAT_upstream_cx_total));
    ok(stat(c, LG_CLUSTER_STAT_upstream_rq_total) == 4, "upstream_rq_total");
    ok(stat(c, LG_CLUSTER_STAT_upstream_rq_active) == 0, "upstream_rq_active back to 0");
    finish_view(v, cfg);
}

static void test_no_host(void)
{
    lg_cluster_config_t *cfg = compile("name: empty\ntype: EDS\n");
    lg_worker_cluster_t *c;
    lg_worker_clusters_t *v = view_of(cfg, &c);
    req_t r = {.path = "/"};
    ok(lg_cluster_request_stream(c, LG_HTTP_11, NULL, &pool_cbs, &r) == NULL && r.failed && r.failure == LG_POOL_NO_HEALTHY_HOST,
       "no host: NO_HEALTHY_HOST at once");
    ok(stat(c, LG_CLUSTER_STAT_upstream_cx_none_healthy) == 1, "upstream_cx_none_healthy");
    finish_view(v, cfg);
}

static void test_cancel(void)
{
    lg_cluster_config_t *cfg = compile(TCP_CLUSTER, "cancel", "", tcp_server.port);
    lg_worker_cluster_t *c;
    lg_worker_clusters_t *v = view_of(cfg, &c);
    req_t r = {.path = "/cl"};
    lg_pool_request_t *pr = lg_cluster_request_stream(c, LG_HTTP_11, NULL, &pool_cbs, &r);
    ok(pr != NULL, "pending");
    lg_pool_request_cancel(pr);
    run_until(NULL, 50);
    ok(!r.ready && !r.failed, "no callback after cancel");
    ok(stat(c, LG_CLUSTER_STAT_upstream_rq_cancelled) == 1, "upstream_rq_cancelled");
    ok(stat(c, LG_CLUSTER_STAT_upstream_rq_pending_active) == 0, "pending gauge back to 0");
    /* the connection opened for it stays for the next request */
    req_t r2 = {.path = "/cl"};
    fetch(c, &r2);
    ok(r2.complete && stat(c, LG_CLUSTER_STAT_upstream_cx_total) == 1, "connection reused after a cancel");
    req_dispose(&r2);
    /* a reset mid-response closes the connection */
    req_t r3 = {.path = "/slow"};
    lg_cluster_request_stream(c, LG_HTTP_11, NULL, &pool_cbs, &r3);
    run_until(&r3.ready, 1000);
    r3.stream->ops->reset(r3.stream, LG_RESET_LOCAL);
    run_until(NULL, 50);
    ok(stat(c, LG_CLUSTER_STAT_upstream_cx_destroy_local_with_active_rq) == 1, "destroy_local_with_active_rq");
    ok(stat(c, LG_CLUSTER_STAT_upstream_rq_active) == 0 && stat(c, LG_CLUSTER_STAT_upstream_cx_active) == 0, "gauges after reset");
    req_dispose(&r3);
    finish_view(v, cfg);
}

int main(void)
{
    lg_stats_init(1);
    loop = h2o_evloop_create();
    lg_loop_init(&worker.loop, loop);
    lg_current_worker = &worker;
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    server_start(&tcp_server, (struct sockaddr *)&sin, sizeof(sin));
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    snprintf(unix_server.path, sizeof(unix_server.path), "/tmp/legate-test-pool-%d.sock", (int)getpid());
    snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", unix_server.path);
    unlink(unix_server.path);
    server_start(&unix_server, (struct sockaddr *)&sun, sizeof(sun));
    lg_h2_settings_init(&h2_server_settings);
    h2_server_settings.max_concurrent_streams = 2;
    server_start(&h2_server, (struct sockaddr *)&sin, sizeof(sin));

    test_keepalive();
    test_lazy_view();
    test_prepared_view();
    test_update_in_flight();
    test_max_requests_per_connection();
    test_connect_failure();
    test_connect_timeout();
    test_unix_socket();
    test_chunked_backpressure();
    test_request_body();
    test_responses();
    test_circuit_breakers();
    test_no_host();
    test_cancel();
    test_h2();

    h2o_socket_close(tcp_server.listener);
    h2o_socket_close(unix_server.listener);
    h2o_socket_close(h2_server.listener);
    unlink(unix_server.path);
    run_until(NULL, 20);
    lg_loop_dispose(&worker.loop);
    lg_stats_shutdown();
    return done();
}
