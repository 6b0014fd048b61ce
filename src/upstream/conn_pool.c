/*
 * Connection pool of one host, one protocol, one worker, as Envoy's
 * ConnPoolImplBase: connections are CONNECTING, READY (can take a stream),
 * BUSY (at their stream limit) or DRAINING (no new streams; close when the
 * last one ends). Requests that find no READY connection wait in `pending`
 * (FIFO) while enough connections are opened to serve them, subject to the
 * cluster's circuit breakers.
 *
 * Callbacks into the router never run from inside a codec callback: work
 * that a codec event makes possible (a stream slot freed) is done on the
 * next loop turn.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <unistd.h>
#include "legate/h2.h"
#include "legate/timer.h"
#include "legate/tls.h"
#include "upstream.h"

typedef enum en_lg__conn_state_t { CONN_CONNECTING, CONN_READY, CONN_BUSY, CONN_DRAINING } lg__conn_state_t;

typedef struct st_lg__pool_conn_t {
    h2o_linklist_t link; /* pool->connecting, ->ready or ->busy (BUSY and DRAINING) */
    lg_conn_pool_t *pool;
    lg__conn_state_t state;
    h2o_socket_t *sock; /* owned by the codec once connected */
    lg_client_conn_t *conn;
    lg_timer_t timer;           /* connect timeout; then idle timeout or deferred close */
    uint64_t remaining_streams; /* max_requests_per_connection countdown */
    uint64_t stream_limit;      /* what it counts for in connecting_capacity */
    uint32_t active_streams;
    size_t rx_counted, tx_counted;
    int connect_errno;
    SSL_CTX *ssl_ctx; /* during the TLS handshake */
    unsigned timed_out : 1, closing_local : 1;
} lg__pool_conn_t;

struct st_lg_conn_pool_t {
    lg_host_t *host;
    int version;
    h2o_linklist_t connecting, ready, busy;
    h2o_linklist_t pending;
    size_t n_pending;
    uint64_t connecting_capacity; /* streams the CONNECTING connections will take */
    lg_timer_t ready_timer;       /* deferred attach of pending requests */
    unsigned draining : 1;
};

struct st_lg_pool_request_t {
    h2o_linklist_t link;
    lg_conn_pool_t *pool;
    const lg_pool_cbs_t *cbs;
    void *data;
};

static void try_create_connections(lg_conn_pool_t *pool);
static void on_upstream_ready(lg_conn_pool_t *pool);
static void on_ready_timer(lg_timer_t *t);
static const lg_client_conn_cbs_t conn_cbs;

static lg_worker_cluster_t *pool_cluster(lg_conn_pool_t *pool)
{
    return pool->host->cluster;
}

static const lg_cluster_config_t *pool_config(lg_conn_pool_t *pool)
{
    return pool->host->cluster->config;
}

static lg_loop_t *pool_loop(lg_conn_pool_t *pool)
{
    return &pool->host->cluster->worker->loop;
}

lg_conn_pool_t *lg__conn_pool_new(lg_host_t *host, int version)
{
    lg_conn_pool_t *pool = lg_calloc(1, sizeof(*pool));
    pool->host = host;
    pool->version = version;
    h2o_linklist_init_anchor(&pool->connecting);
    h2o_linklist_init_anchor(&pool->ready);
    h2o_linklist_init_anchor(&pool->busy);
    h2o_linklist_init_anchor(&pool->pending);
    return pool;
}

void lg__conn_pool_free(lg_conn_pool_t *pool)
{
    /* connections and pending requests hold the cluster, so an unreferenced cluster's pools are empty */
    lg_timer_stop(&pool->ready_timer);
    free(pool);
}

static void schedule_upstream_ready(lg_conn_pool_t *pool)
{
    if (!lg_timer_is_active(&pool->ready_timer))
        lg_timer_start(pool_loop(pool), &pool->ready_timer, 0, on_ready_timer);
}

/* ---- pending requests ---- */

static lg_pool_request_t *pending_new(lg_conn_pool_t *pool, const lg_pool_cbs_t *cbs, void *data)
{
    lg_worker_cluster_t *c = pool_cluster(pool);
    lg_pool_request_t *req = lg_malloc(sizeof(*req));
    *req = (lg_pool_request_t){{NULL}, pool, cbs, data};
    h2o_linklist_insert(&pool->pending, &req->link);
    ++pool->n_pending;
    lg_worker_cluster_addref(c);
    lg__cluster_inc(c, LG_CLUSTER_STAT_upstream_rq_pending_total);
    lg__cluster_inc(c, LG_CLUSTER_STAT_upstream_rq_pending_active);
    return req;
}

/* Unlinks and frees req; the caller still holds its callbacks. The cluster
 * reference of the request moves to the caller (release it when done). */
static void pending_remove(lg_pool_request_t *req)
{
    lg_conn_pool_t *pool = req->pool;
    lg_worker_cluster_t *c = pool_cluster(pool);
    h2o_linklist_unlink(&req->link);
    --pool->n_pending;
    lg__cluster_dec(c, LG_CLUSTER_STAT_upstream_rq_pending_active);
    lg__cluster_res_put(c, LG__RES_PENDING);
    free(req);
}

void lg_pool_request_cancel(lg_pool_request_t *req)
{
    lg_worker_cluster_t *c = pool_cluster(req->pool);
    pending_remove(req);
    lg__cluster_inc(c, LG_CLUSTER_STAT_upstream_rq_cancelled);
    lg_worker_cluster_release(c);
}

/* Fails every pending request (a connect failure): Envoy's purgePendingStreams.
 * The list is detached first so that a retry queued from a callback is not
 * failed with it. */
static void purge_pending(lg_conn_pool_t *pool, lg_pool_failure_t reason, const char *detail)
{
    lg_worker_cluster_t *c = pool_cluster(pool);
    while (!h2o_linklist_is_empty(&pool->pending)) {
        h2o_linklist_t purge;
        h2o_linklist_init_anchor(&purge);
        h2o_linklist_insert_list(&purge, &pool->pending);
        /* pending_remove unlinks from whichever list holds the request */
        while (!h2o_linklist_is_empty(&purge)) {
            lg_pool_request_t *req = H2O_STRUCT_FROM_MEMBER(lg_pool_request_t, link, purge.next);
            const lg_pool_cbs_t *cbs = req->cbs;
            void *data = req->data;
            pending_remove(req);
            lg__cluster_inc(c, LG_CLUSTER_STAT_upstream_rq_pending_failure_eject);
            cbs->on_failure(data, reason, pool->host, detail);
            lg_worker_cluster_release(c);
        }
    }
}

/* ---- connection accounting ---- */

static uint64_t stream_limit_of(lg_conn_pool_t *pool)
{
    const lg_cluster_config_t *cfg = pool_config(pool);
    uint64_t limit = 1;
    if (pool->version == LG_HTTP_2)
        limit = cfg->h2 != NULL ? cfg->h2->max_concurrent_streams : 2147483647;
    if (cfg->max_requests_per_connection != 0 && cfg->max_requests_per_connection < limit)
        limit = cfg->max_requests_per_connection;
    return limit;
}

static void set_state(lg__pool_conn_t *pc, lg__conn_state_t state)
{
    lg_conn_pool_t *pool = pc->pool;
    h2o_linklist_t *lists[] = {&pool->connecting, &pool->ready, &pool->busy, &pool->busy};
    if (lists[pc->state] != lists[state]) {
        h2o_linklist_unlink(&pc->link);
        h2o_linklist_insert(lists[state], &pc->link);
    }
    pc->state = state;
}

static void count_bytes(lg__pool_conn_t *pc)
{
    if (pc->sock == NULL)
        return;
    lg_worker_cluster_t *c = pool_cluster(pc->pool);
    lg__cluster_add(c, LG_CLUSTER_STAT_upstream_cx_rx_bytes_total, pc->sock->bytes_read - pc->rx_counted);
    lg__cluster_add(c, LG_CLUSTER_STAT_upstream_cx_tx_bytes_total, pc->sock->bytes_written - pc->tx_counted);
    pc->rx_counted = pc->sock->bytes_read;
    pc->tx_counted = pc->sock->bytes_written;
}

/* A stream of pc ended (or its connection went away under it). */
static void stream_closed(lg__pool_conn_t *pc)
{
    lg_conn_pool_t *pool = pc->pool;
    lg_worker_cluster_t *c = pool_cluster(pool);
    --pc->active_streams;
    --pool->host->active_requests;
    lg__host_dec(pool->host, LG_HOST_STAT_rq_active);
    lg__cluster_dec(c, LG_CLUSTER_STAT_upstream_rq_active);
    lg__cluster_res_put(c, LG__RES_REQUESTS);
}

/* Releases what a connection holds and frees it. */
static void conn_destroy(lg__pool_conn_t *pc)
{
    lg_conn_pool_t *pool = pc->pool;
    lg_worker_cluster_t *c = pool_cluster(pool);
    if (pc->state == CONN_CONNECTING)
        pool->connecting_capacity -= pc->stream_limit;
    h2o_linklist_unlink(&pc->link);
    lg_timer_stop(&pc->timer);
    if (pc->ssl_ctx != NULL)
        SSL_CTX_free(pc->ssl_ctx);
    lg__cluster_res_put(c, LG__RES_CONNECTIONS);
    lg__host_dec(pool->host, LG_HOST_STAT_cx_active);
    lg__cluster_dec(c, LG_CLUSTER_STAT_upstream_cx_active);
    free(pc);
    lg_worker_cluster_release(c);
}

static void count_destroy(lg__pool_conn_t *pc, int local)
{
    lg_worker_cluster_t *c = pool_cluster(pc->pool);
    lg__cluster_inc(c, LG_CLUSTER_STAT_upstream_cx_destroy);
    lg__cluster_inc(c, local ? LG_CLUSTER_STAT_upstream_cx_destroy_local : LG_CLUSTER_STAT_upstream_cx_destroy_remote);
    if (pc->active_streams != 0) {
        lg__cluster_inc(c, LG_CLUSTER_STAT_upstream_cx_destroy_with_active_rq);
        lg__cluster_inc(c, local ? LG_CLUSTER_STAT_upstream_cx_destroy_local_with_active_rq
                                 : LG_CLUSTER_STAT_upstream_cx_destroy_remote_with_active_rq);
    }
}

/* Closes a connected connection; its on_close does the rest (maybe at once). */
static void conn_close(lg__pool_conn_t *pc)
{
    set_state(pc, CONN_DRAINING);
    pc->closing_local = 1;
    lg_timer_stop(&pc->timer);
    pc->conn->ops->close(pc->conn);
}

static void on_close_timer(lg_timer_t *t)
{
    conn_close(H2O_STRUCT_FROM_MEMBER(lg__pool_conn_t, timer, t));
}

static void on_idle_timeout(lg_timer_t *t)
{
    lg__pool_conn_t *pc = H2O_STRUCT_FROM_MEMBER(lg__pool_conn_t, timer, t);
    lg__cluster_inc(pool_cluster(pc->pool), LG_CLUSTER_STAT_upstream_cx_idle_timeout);
    conn_close(pc);
}

/* Called whenever a connected connection may have become idle. */
static void check_idle(lg__pool_conn_t *pc)
{
    if (pc->active_streams != 0 || pc->state == CONN_CONNECTING)
        return;
    if (pc->state == CONN_DRAINING || pc->pool->draining) {
        lg_timer_start(pool_loop(pc->pool), &pc->timer, 0, on_close_timer);
    } else if (pool_config(pc->pool)->idle_timeout_ms != 0) {
        lg_timer_start(pool_loop(pc->pool), &pc->timer, pool_config(pc->pool)->idle_timeout_ms, on_idle_timeout);
    }
}

/* ---- connecting ---- */

static void connect_failed(lg__pool_conn_t *pc, lg_pool_failure_t reason, const char *detail)
{
    lg_conn_pool_t *pool = pc->pool;
    lg_worker_cluster_t *c = pool_cluster(pool);
    lg_worker_cluster_addref(c);
    LG_DEBUG(pool, "connect to %s failed: %s", pool->host->config->address, detail);
    lg__cluster_inc(c, LG_CLUSTER_STAT_upstream_cx_connect_fail);
    lg__host_inc(pool->host, LG_HOST_STAT_cx_connect_fail);
    count_destroy(pc, pc->timed_out);
    if (pc->sock != NULL)
        h2o_socket_close(pc->sock);
    conn_destroy(pc);
    purge_pending(pool, reason, detail);
    if (pool->n_pending != 0)
        try_create_connections(pool);
    lg_worker_cluster_release(c);
}

static void on_connect_timeout(lg_timer_t *t)
{
    lg__pool_conn_t *pc = H2O_STRUCT_FROM_MEMBER(lg__pool_conn_t, timer, t);
    lg__cluster_inc(pool_cluster(pc->pool), LG_CLUSTER_STAT_upstream_cx_connect_timeout);
    pc->timed_out = 1;
    connect_failed(pc, LG_POOL_CONNECT_TIMEOUT, "");
}

static void on_immediate_failure(lg_timer_t *t)
{
    lg__pool_conn_t *pc = H2O_STRUCT_FROM_MEMBER(lg__pool_conn_t, timer, t);
    char detail[128];
    snprintf(detail, sizeof(detail), "immediate connect error: %s", strerror(pc->connect_errno));
    connect_failed(pc, LG_POOL_CONNECT_FAILURE, detail);
}

/* auto_config: the codec ALPN chose (h2 or anything else). */
static int negotiated_h2(h2o_socket_t *sock)
{
    h2o_iovec_t alpn = lg_tls_alpn(sock);
    return h2o_memis(alpn.base, alpn.len, H2O_STRLIT("h2"));
}

static void on_connected(lg__pool_conn_t *pc)
{
    lg_conn_pool_t *pool = pc->pool;
    const lg_cluster_config_t *cfg = pool_config(pool);
    lg_loop_t *loop = pool_loop(pool);
    lg_timer_stop(&pc->timer);
    pool->connecting_capacity -= pc->stream_limit;
    pc->state = CONN_READY;
    h2o_linklist_unlink(&pc->link);
    h2o_linklist_insert(&pool->ready, &pc->link);
    if (pool->version == LG_HTTP_2 || (cfg->protocol == LG_UPSTREAM_AUTO && negotiated_h2(pc->sock))) {
        pc->conn = lg_h2_client_conn_new(loop, pc->sock, cfg->h2, &conn_cbs, pc);
    } else {
        pc->conn = lg_h1_client_conn_new(loop, pc->sock, &cfg->h1_limits, cfg->buffer_limit, &conn_cbs, pc);
    }
    lg_worker_cluster_t *c = pool_cluster(pool);
    lg_worker_cluster_addref(c);
    on_upstream_ready(pool);
    /* pc may be gone by now (a router reset its stream at once): arm whatever is idle */
    for (h2o_linklist_t *l = pool->ready.next; l != &pool->ready; l = l->next) {
        lg__pool_conn_t *idle = H2O_STRUCT_FROM_MEMBER(lg__pool_conn_t, link, l);
        if (!lg_timer_is_active(&idle->timer))
            check_idle(idle);
    }
    lg_worker_cluster_release(c);
}

/* ---- TLS ---- */

/* The handshake counts as part of connecting (Envoy raises Connected after
 * it): connect_timeout still runs, a failure is a connect failure. */
static void on_tls_handshake(h2o_socket_t *sock, const char *err)
{
    lg__pool_conn_t *pc = sock->data;
    char reason[512];
    SSL_CTX_free(pc->ssl_ctx);
    pc->ssl_ctx = NULL;
    if (lg_tls_handshake_done(pool_config(pc->pool)->tls, sock, err, reason, sizeof(reason)) != 0) {
        connect_failed(pc, LG_POOL_CONNECT_FAILURE, reason[0] != '\0' ? reason : err != NULL ? err : "TLS handshake failed");
        return;
    }
    on_connected(pc);
}

/* ALPN: the context's alpn_protocols, else what the pool speaks. */
static void start_tls(lg__pool_conn_t *pc)
{
    const lg_cluster_config_t *cfg = pool_config(pc->pool);
    h2o_iovec_t alpn = cfg->protocol == LG_UPSTREAM_AUTO ? lg_tls_alpn_auto
                       : pc->pool->version == LG_HTTP_2  ? lg_tls_alpn_h2
                                                         : lg_tls_alpn_http11;
    pc->ssl_ctx = lg_tls_context_ssl_ctx(cfg->tls);
    lg_tls_client_handshake(cfg->tls, pc->sock, pc->ssl_ctx, cfg->tls->sni, alpn, on_tls_handshake);
}

static void on_connect_ready(h2o_socket_t *sock, const char *err)
{
    lg__pool_conn_t *pc = sock->data;
    int so_err = 0;
    socklen_t l = sizeof(so_err);
    if (err == NULL && getsockopt(h2o_socket_get_fd(sock), SOL_SOCKET, SO_ERROR, &so_err, &l) != 0)
        so_err = errno;
    if (err != NULL || so_err != 0) {
        char detail[128];
        snprintf(detail, sizeof(detail), "delayed connect error: %s", err != NULL ? err : strerror(so_err));
        connect_failed(pc, LG_POOL_CONNECT_FAILURE, detail);
        return;
    }
    if (pool_config(pc->pool)->tls != NULL)
        start_tls(pc);
    else
        on_connected(pc);
}

/* Starts a non-blocking connect. The socket is created without
 * H2O_SOCKET_FLAG_IS_CONNECTING so that the completion callback can read
 * SO_ERROR itself (h2o would consume it and report a generic error). */
static void start_connect(lg__pool_conn_t *pc)
{
    const lg_host_config_t *h = pc->pool->host->config;
    lg_loop_t *loop = pool_loop(pc->pool);
    int fd = socket(h->sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd != -1 && h->sa->sa_family != AF_UNIX) {
        int on = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
    }
    if (fd == -1 || (connect(fd, h->sa, h->salen) != 0 && errno != EINPROGRESS)) {
        pc->connect_errno = errno;
        if (fd != -1)
            close(fd);
        lg_timer_start(loop, &pc->timer, 0, on_immediate_failure);
        return;
    }
    pc->sock = h2o_evloop_socket_create(loop->loop, fd, 0);
    pc->sock->data = pc;
    h2o_socket_notify_write(pc->sock, on_connect_ready);
    lg_timer_start(loop, &pc->timer, pool_config(pc->pool)->connect_timeout_ms, on_connect_timeout);
}

/* A new connection; the CONNECTIONS resource is already taken. */
static void conn_create(lg_conn_pool_t *pool)
{
    lg_worker_cluster_t *c = pool_cluster(pool);
    const lg_cluster_config_t *cfg = pool_config(pool);
    lg__pool_conn_t *pc = lg_calloc(1, sizeof(*pc));
    pc->pool = pool;
    pc->state = CONN_CONNECTING;
    pc->remaining_streams = cfg->max_requests_per_connection != 0 ? cfg->max_requests_per_connection : UINT64_MAX;
    pc->stream_limit = stream_limit_of(pool);
    h2o_linklist_insert(&pool->connecting, &pc->link);
    pool->connecting_capacity += pc->stream_limit;
    lg_worker_cluster_addref(c);
    lg__host_inc(pool->host, LG_HOST_STAT_cx_total);
    lg__host_inc(pool->host, LG_HOST_STAT_cx_active);
    lg__cluster_inc(c, LG_CLUSTER_STAT_upstream_cx_total);
    lg__cluster_inc(c, LG_CLUSTER_STAT_upstream_cx_active);
    lg__cluster_inc(c,
                    pool->version == LG_HTTP_2 ? LG_CLUSTER_STAT_upstream_cx_http2_total : LG_CLUSTER_STAT_upstream_cx_http1_total);
    start_connect(pc);
}

static int pool_is_empty(lg_conn_pool_t *pool)
{
    return h2o_linklist_is_empty(&pool->connecting) && h2o_linklist_is_empty(&pool->ready) && h2o_linklist_is_empty(&pool->busy);
}

/* Opens connections while the pending requests outnumber what the connecting
 * ones will take (at most 3 at a time, as Envoy). Over max_connections a
 * pool with no connection at all still gets one, so that its requests are
 * not stranded. */
static void try_create_connections(lg_conn_pool_t *pool)
{
    lg_worker_cluster_t *c = pool_cluster(pool);
    for (int i = 0; i != 3 && pool->n_pending > pool->connecting_capacity; ++i) {
        int can = lg__cluster_res_try(c, LG__RES_CONNECTIONS);
        if (!can) {
            lg__cluster_inc(c, LG_CLUSTER_STAT_upstream_cx_overflow);
            if (!pool_is_empty(pool))
                return;
            lg__cluster_res_force(c, LG__RES_CONNECTIONS);
        }
        conn_create(pool);
        if (!can)
            return;
    }
}

/* ---- streams ---- */

/* Envoy's attachStreamToClient: the stream counts against max_requests. */
static void attach(lg__pool_conn_t *pc, const lg_pool_cbs_t *cbs, void *data)
{
    lg_conn_pool_t *pool = pc->pool;
    lg_worker_cluster_t *c = pool_cluster(pool);
    lg_host_t *host = pool->host;
    if (!lg__cluster_res_try(c, LG__RES_REQUESTS)) {
        lg__cluster_inc(c, LG_CLUSTER_STAT_upstream_rq_pending_overflow);
        cbs->on_failure(data, LG_POOL_OVERFLOW, host, "");
        return;
    }
    lg_stream_t *s = pc->conn->ops->new_stream(pc->conn);
    if (s == NULL) {
        lg__cluster_res_put(c, LG__RES_REQUESTS);
        set_state(pc, CONN_BUSY);
        cbs->on_failure(data, LG_POOL_CONNECT_FAILURE, host, "upstream connection refused a new stream");
        return;
    }
    if (--pc->remaining_streams == 0) {
        lg__cluster_inc(c, LG_CLUSTER_STAT_upstream_cx_max_requests);
        set_state(pc, CONN_DRAINING);
    } else if (pc->conn->ops->capacity(pc->conn) == 0) {
        set_state(pc, CONN_BUSY);
    }
    lg_timer_stop(&pc->timer);
    ++pc->active_streams;
    ++host->active_requests;
    lg__host_inc(host, LG_HOST_STAT_rq_total);
    lg__host_inc(host, LG_HOST_STAT_rq_active);
    lg__cluster_inc(c, LG_CLUSTER_STAT_upstream_rq_total);
    lg__cluster_inc(c, LG_CLUSTER_STAT_upstream_rq_active);
    cbs->on_ready(data, s, host);
}

/* A READY connection that can take a stream now, or NULL. */
static lg__pool_conn_t *ready_conn(lg_conn_pool_t *pool)
{
    while (!h2o_linklist_is_empty(&pool->ready)) {
        lg__pool_conn_t *pc = H2O_STRUCT_FROM_MEMBER(lg__pool_conn_t, link, pool->ready.next);
        if (pc->conn->ops->capacity(pc->conn) != 0)
            return pc;
        set_state(pc, CONN_BUSY);
    }
    return NULL;
}

static void on_upstream_ready(lg_conn_pool_t *pool)
{
    lg_worker_cluster_t *c = pool_cluster(pool);
    lg__pool_conn_t *pc;
    while (!h2o_linklist_is_empty(&pool->pending) && (pc = ready_conn(pool)) != NULL) {
        lg_pool_request_t *req = H2O_STRUCT_FROM_MEMBER(lg_pool_request_t, link, pool->pending.next);
        const lg_pool_cbs_t *cbs = req->cbs;
        void *data = req->data;
        pending_remove(req);
        attach(pc, cbs, data);
        lg_worker_cluster_release(c);
    }
}

static void on_ready_timer(lg_timer_t *t)
{
    lg_conn_pool_t *pool = H2O_STRUCT_FROM_MEMBER(lg_conn_pool_t, ready_timer, t);
    lg_worker_cluster_t *c = pool_cluster(pool);
    lg_worker_cluster_addref(c);
    on_upstream_ready(pool);
    lg_worker_cluster_release(c);
}

lg_pool_request_t *lg__conn_pool_request(lg_conn_pool_t *pool, const lg_pool_cbs_t *cbs, void *data)
{
    lg_worker_cluster_t *c = pool_cluster(pool);
    lg__pool_conn_t *pc;
    if ((pc = ready_conn(pool)) != NULL) {
        attach(pc, cbs, data);
        return NULL;
    }
    if (!lg__cluster_res_try(c, LG__RES_PENDING)) {
        lg__cluster_inc(c, LG_CLUSTER_STAT_upstream_rq_pending_overflow);
        cbs->on_failure(data, LG_POOL_OVERFLOW, pool->host, "");
        return NULL;
    }
    lg_pool_request_t *req = pending_new(pool, cbs, data);
    try_create_connections(pool);
    return req;
}

void lg__conn_pool_drain(lg_conn_pool_t *pool)
{
    pool->draining = 1;
    while (!h2o_linklist_is_empty(&pool->ready))
        set_state(H2O_STRUCT_FROM_MEMBER(lg__pool_conn_t, link, pool->ready.next), CONN_DRAINING);
    /* idle ones close on the next turn: a codec may call on_close from inside close() or later */
    for (h2o_linklist_t *l = pool->busy.next; l != &pool->busy; l = l->next) {
        lg__pool_conn_t *pc = H2O_STRUCT_FROM_MEMBER(lg__pool_conn_t, link, l);
        pc->state = CONN_DRAINING;
        check_idle(pc);
    }
    while (pool->n_pending == 0 && !h2o_linklist_is_empty(&pool->connecting)) {
        lg__pool_conn_t *pc = H2O_STRUCT_FROM_MEMBER(lg__pool_conn_t, link, pool->connecting.next);
        count_destroy(pc, 1);
        if (pc->sock != NULL)
            h2o_socket_close(pc->sock);
        conn_destroy(pc);
    }
}

/* ---- codec callbacks ---- */

/* A codec may report several finished streams with one call (h2 does):
 * the codec's own count is the truth. */
static void on_stream_done(lg_client_conn_t *conn)
{
    lg__pool_conn_t *pc = conn->ctx;
    count_bytes(pc);
    size_t active = conn->ops->active_streams(conn);
    while (pc->active_streams > active)
        stream_closed(pc);
    if (pc->state == CONN_BUSY && conn->ops->capacity(conn) != 0)
        set_state(pc, CONN_READY);
    if (pc->state == CONN_READY && pc->pool->n_pending != 0)
        schedule_upstream_ready(pc->pool);
    check_idle(pc);
}

static void on_goaway(lg_client_conn_t *conn)
{
    lg__pool_conn_t *pc = conn->ctx;
    set_state(pc, CONN_DRAINING);
    check_idle(pc);
}

static void on_conn_close(lg_client_conn_t *conn, lg_reset_reason_t reason)
{
    lg__pool_conn_t *pc = conn->ctx;
    lg_conn_pool_t *pool = pc->pool;
    lg_worker_cluster_t *c = pool_cluster(pool);
    lg_worker_cluster_addref(c);
    if (pool->version == LG_HTTP_11)
        count_bytes(pc); /* the h1 client still has its socket here */
    if (reason == LG_RESET_PROTOCOL_ERROR)
        lg__cluster_inc(c, LG_CLUSTER_STAT_upstream_cx_protocol_error);
    count_destroy(pc, pc->closing_local || reason == LG_RESET_LOCAL);
    while (pc->active_streams != 0)
        stream_closed(pc);
    conn_destroy(pc);
    if (pool->n_pending != 0)
        try_create_connections(pool);
    lg_worker_cluster_release(c);
}

static const lg_client_conn_cbs_t conn_cbs = {on_stream_done, on_goaway, on_conn_close};
