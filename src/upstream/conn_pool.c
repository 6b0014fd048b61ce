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
#include <arpa/inet.h>
#include "legate/h2.h"
#include "legate/timer.h"
#include "legate/tls.h"
#include "upstream.h"

typedef enum en_lg__conn_state_t { CONN_CONNECTING, CONN_READY, CONN_BUSY, CONN_DRAINING } lg__conn_state_t;

typedef struct st_lg__pool_conn_t {
    h2o_linklist_t link; /* pool->connecting, ->ready or ->busy (BUSY and DRAINING) */
    lg_conn_pool_t *pool;
    lg__conn_state_t state;
    /* cn.sock is owned by the codec once connected; cn.timer is the connect
     * timeout, then the idle timeout or the deferred close */
    lg__connect_t cn;
    /* The config the connection was made under (a reference): its codec
     * settings, TLS context and limits, which outlive a cluster update that
     * hands the pool to a new config. */
    lg_cluster_config_t *config;
    lg_client_conn_t *conn;
    uint64_t remaining_streams; /* max_requests_per_connection countdown */
    uint64_t stream_limit;      /* what it counts for in connecting_capacity */
    uint32_t active_streams;
    uint64_t rx_counted, tx_counted;
    uint64_t start_ms; /* when the connect started: upstream_cx_connect_ms, upstream_cx_length_ms */
    lg_timer_t rx_timer; /* the next read of the received byte count */
    SSL_CTX *ssl_ctx;    /* during the TLS handshake */
    union {
        struct sockaddr sa;
        struct sockaddr_in sin;
        struct sockaddr_in6 sin6;
    } local; /* the socket's local address once connected (sa_family 0: unknown or a pipe) */
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
    unsigned tls_name_is_ip : 1;
    /* named pools (host->named_pools) only */
    char *tls_name;
    lg_conn_pool_t *next_named;
    lg_timer_t gc_timer; /* frees the pool once it is empty */
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

static int is_ip_literal(const char *s)
{
    unsigned char buf[16];
    return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

lg_conn_pool_t *lg__conn_pool_new(lg_host_t *host, int version, const char *tls_name, size_t tls_name_len)
{
    lg_conn_pool_t *pool = lg_calloc(1, sizeof(*pool));
    pool->host = host;
    pool->version = version;
    h2o_linklist_init_anchor(&pool->connecting);
    h2o_linklist_init_anchor(&pool->ready);
    h2o_linklist_init_anchor(&pool->busy);
    h2o_linklist_init_anchor(&pool->pending);
    if (tls_name != NULL) {
        pool->tls_name = lg_malloc(tls_name_len + 1);
        memcpy(pool->tls_name, tls_name, tls_name_len);
        pool->tls_name[tls_name_len] = '\0';
        pool->tls_name_is_ip = is_ip_literal(pool->tls_name);
        pool->next_named = host->named_pools;
        host->named_pools = pool;
    }
    return pool;
}

void lg__conn_pool_free(lg_conn_pool_t *pool)
{
    /* connections and pending requests hold the cluster, so an unreferenced cluster's pools are empty */
    lg_timer_stop(&pool->ready_timer);
    lg_timer_stop(&pool->gc_timer);
    free(pool->tls_name);
    free(pool);
}

lg_conn_pool_t *lg__conn_pool_find_named(lg_host_t *host, int version, const char *name, size_t len)
{
    for (lg_conn_pool_t *p = host->named_pools; p != NULL; p = p->next_named)
        if (p->version == version && strncmp(p->tls_name, name, len) == 0 && p->tls_name[len] == '\0')
            return p;
    return NULL;
}

lg_conn_pool_t *lg__conn_pool_next_named(lg_conn_pool_t *pool)
{
    return pool->next_named;
}

static int pool_is_empty(lg_conn_pool_t *pool)
{
    return h2o_linklist_is_empty(&pool->connecting) && h2o_linklist_is_empty(&pool->ready) && h2o_linklist_is_empty(&pool->busy);
}

static void on_gc_timer(lg_timer_t *t)
{
    lg_conn_pool_t *pool = H2O_STRUCT_FROM_MEMBER(lg_conn_pool_t, gc_timer, t);
    if (!pool_is_empty(pool) || pool->n_pending != 0)
        return;
    lg_conn_pool_t **p = &pool->host->named_pools;
    while (*p != pool)
        p = &(*p)->next_named;
    *p = pool->next_named;
    lg__conn_pool_free(pool);
}

/* A named pool goes once it is empty (one per request host name would
 * otherwise pile up), on a later turn: its caller may still be using it. */
static void maybe_gc(lg_conn_pool_t *pool)
{
    if (pool->tls_name != NULL && pool->n_pending == 0 && pool_is_empty(pool) && !lg_timer_is_active(&pool->gc_timer))
        lg_timer_start(&pool->host->cluster->worker->loop, &pool->gc_timer, 0, on_gc_timer);
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
    maybe_gc(pool);
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

/* READY connections go to the front, where streams are taken from: the most recently used
 * one serves the next stream (Envoy's pools: moveIntoList emplaces at the front of
 * ready_clients_, attach takes front()), so that a burst's extra connections stay idle and
 * time out, and steady traffic keeps to a few warm connections instead of cycling through
 * every idle one. */
static void set_state(lg__pool_conn_t *pc, lg__conn_state_t state)
{
    lg_conn_pool_t *pool = pc->pool;
    h2o_linklist_t *lists[] = {&pool->connecting, &pool->ready, &pool->busy, &pool->busy};
    if (lists[pc->state] != lists[state]) {
        h2o_linklist_unlink(&pc->link);
        h2o_linklist_insert(state == CONN_READY ? pool->ready.next : lists[state], &pc->link);
    }
    pc->state = state;
}

static void count_tx(lg__pool_conn_t *pc)
{
    if (pc->cn.sock->bytes_written > pc->tx_counted) {
        lg__cluster_add(pool_cluster(pc->pool), LG_CLUSTER_STAT_upstream_cx_tx_bytes_total,
                        pc->cn.sock->bytes_written - pc->tx_counted);
        pc->tx_counted = pc->cn.sock->bytes_written;
    }
}

/* Received bytes come from the kernel (libh2o 2.2.5's bytes_read is the
 * last read's only), which costs a syscall: at most one per connection per
 * RX_COUNT_MS while it has traffic, and one when it closes. */
#define RX_COUNT_MS 100

static void count_rx(lg__pool_conn_t *pc)
{
    uint64_t rx = lg__socket_rx_bytes(pc->cn.sock);
    if (rx > pc->rx_counted) {
        lg__cluster_add(pool_cluster(pc->pool), LG_CLUSTER_STAT_upstream_cx_rx_bytes_total, rx - pc->rx_counted);
        pc->rx_counted = rx;
    }
}

static void on_rx_timer(lg_timer_t *t)
{
    count_rx(H2O_STRUCT_FROM_MEMBER(lg__pool_conn_t, rx_timer, t));
}

static void count_bytes_later(lg__pool_conn_t *pc)
{
    count_tx(pc);
    if (!lg_timer_is_active(&pc->rx_timer))
        lg_timer_start(pool_loop(pc->pool), &pc->rx_timer, RX_COUNT_MS, on_rx_timer);
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
    lg_stats_histogram_record(lg__cluster_stats(c), c->worker->index, LG_CLUSTER_STAT_upstream_cx_length_ms,
                              lg_now_ms() - pc->start_ms);
    if (pc->state == CONN_CONNECTING)
        pool->connecting_capacity -= pc->stream_limit;
    h2o_linklist_unlink(&pc->link);
    lg_timer_stop(&pc->cn.timer);
    lg_timer_stop(&pc->rx_timer);
    if (pc->ssl_ctx != NULL)
        SSL_CTX_free(pc->ssl_ctx);
    lg__cluster_res_put(c, LG__RES_CONNECTIONS);
    lg__host_dec(pool->host, LG_HOST_STAT_cx_active);
    lg__cluster_dec(c, LG_CLUSTER_STAT_upstream_cx_active);
    lg_cluster_config_release(pc->config);
    free(pc);
    maybe_gc(pool);
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
    lg_timer_stop(&pc->cn.timer);
    pc->conn->ops->close(pc->conn);
}

static void on_close_timer(lg_timer_t *t)
{
    conn_close(H2O_STRUCT_FROM_MEMBER(lg__pool_conn_t, cn.timer, t));
}

static void on_idle_timeout(lg_timer_t *t)
{
    lg__pool_conn_t *pc = H2O_STRUCT_FROM_MEMBER(lg__pool_conn_t, cn.timer, t);
    lg__cluster_inc(pool_cluster(pc->pool), LG_CLUSTER_STAT_upstream_cx_idle_timeout);
    conn_close(pc);
}

/* Called whenever a connected connection may have become idle. */
static void check_idle(lg__pool_conn_t *pc)
{
    if (pc->active_streams != 0 || pc->state == CONN_CONNECTING)
        return;
    if (pc->state == CONN_DRAINING || pc->pool->draining) {
        lg_timer_start(pool_loop(pc->pool), &pc->cn.timer, 0, on_close_timer);
    } else if (pool_config(pc->pool)->idle_timeout_ms != 0) {
        lg_timer_start(pool_loop(pc->pool), &pc->cn.timer, pool_config(pc->pool)->idle_timeout_ms, on_idle_timeout);
    }
}

/* ---- connecting ---- */

static void connect_failed(lg__pool_conn_t *pc, lg_pool_failure_t reason, const char *detail)
{
    lg_conn_pool_t *pool = pc->pool;
    lg_worker_cluster_t *c = pool_cluster(pool);
    lg_worker_cluster_addref(c);
    LG_DEBUG(pool, "connect to %s failed: %s", pool->host->config->address, detail);
    if (reason == LG_POOL_CONNECT_TIMEOUT) {
        lg__cluster_inc(c, LG_CLUSTER_STAT_upstream_cx_connect_timeout);
        pc->timed_out = 1;
    }
    lg__cluster_inc(c, LG_CLUSTER_STAT_upstream_cx_connect_fail);
    lg__host_inc(pool->host, LG_HOST_STAT_cx_connect_fail);
    count_destroy(pc, pc->timed_out);
    if (pc->cn.sock != NULL)
        h2o_socket_close(pc->cn.sock);
    conn_destroy(pc);
    purge_pending(pool, reason, detail);
    if (pool->n_pending != 0)
        try_create_connections(pool);
    lg_worker_cluster_release(c);
}

/* auto_config: the codec ALPN chose (h2 or anything else). */
static int negotiated_h2(h2o_socket_t *sock)
{
    h2o_iovec_t alpn = lg_tls_alpn(sock);
    return h2o_memis(alpn.base, alpn.len, H2O_STRLIT("h2"));
}

/* One getsockname per connection, so that each request's %UPSTREAM_LOCAL_ADDRESS% costs a copy. */
static void save_local_address(lg__pool_conn_t *pc)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    pc->local.sa.sa_family = 0;
    if (getsockname(h2o_socket_get_fd(pc->cn.sock), (struct sockaddr *)&ss, &len) != 0)
        return;
    if (ss.ss_family == AF_INET)
        memcpy(&pc->local.sin, &ss, sizeof(pc->local.sin));
    else if (ss.ss_family == AF_INET6)
        memcpy(&pc->local.sin6, &ss, sizeof(pc->local.sin6));
}

static void on_connected(lg__pool_conn_t *pc)
{
    lg_conn_pool_t *pool = pc->pool;
    const lg_cluster_config_t *cfg = pc->config;
    lg_loop_t *loop = pool_loop(pool);
    lg_timer_stop(&pc->cn.timer);
    pool->connecting_capacity -= pc->stream_limit;
    /* Envoy's connect timer ends with the Connected event: after the TLS handshake */
    lg_stats_histogram_record(lg__cluster_stats(pool_cluster(pool)), pool_cluster(pool)->worker->index,
                              LG_CLUSTER_STAT_upstream_cx_connect_ms, lg_now_ms() - pc->start_ms);
    save_local_address(pc);
    set_state(pc, CONN_READY);
    if (pool->version == LG_HTTP_2 || (cfg->protocol == LG_UPSTREAM_AUTO && negotiated_h2(pc->cn.sock))) {
        pc->conn = lg_h2_client_conn_new(loop, pc->cn.sock, cfg->h2, &conn_cbs, pc);
    } else {
        pc->conn = lg_h1_client_conn_new(loop, pc->cn.sock, &cfg->h1_limits, cfg->buffer_limit, &conn_cbs, pc);
    }
    lg_worker_cluster_t *c = pool_cluster(pool);
    lg_worker_cluster_addref(c);
    on_upstream_ready(pool);
    /* pc may be gone by now (a router reset its stream at once): arm whatever is idle */
    for (h2o_linklist_t *l = pool->ready.next; l != &pool->ready; l = l->next) {
        lg__pool_conn_t *idle = H2O_STRUCT_FROM_MEMBER(lg__pool_conn_t, link, l);
        if (!lg_timer_is_active(&idle->cn.timer))
            check_idle(idle);
    }
    lg_worker_cluster_release(c);
}

/* ---- TLS ---- */

static lg__pool_conn_t *conn_of_socket(h2o_socket_t *sock)
{
    return H2O_STRUCT_FROM_MEMBER(lg__pool_conn_t, cn, sock->data);
}

/* The handshake counts as part of connecting (Envoy raises Connected after
 * it): connect_timeout still runs, a failure is a connect failure. */
static void on_tls_handshake(h2o_socket_t *sock, const char *err)
{
    lg__pool_conn_t *pc = conn_of_socket(sock);
    char reason[512];
    SSL_CTX_free(pc->ssl_ctx);
    pc->ssl_ctx = NULL;
    if (lg_tls_handshake_done(pc->config->tls, sock, err, reason, sizeof(reason)) != 0) {
        connect_failed(pc, LG_POOL_CONNECT_FAILURE, reason[0] != '\0' ? reason : err != NULL ? err : "TLS handshake failed");
        return;
    }
    on_connected(pc);
}

/* ALPN: the context's alpn_protocols, else what the pool speaks. The SNI:
 * the request's name (auto_sni, unless an IP address), else the context's;
 * auto_san_validation checks the certificate against the request's name. */
static void start_tls(lg__pool_conn_t *pc)
{
    const lg_cluster_config_t *cfg = pc->config;
    lg_conn_pool_t *pool = pc->pool;
    h2o_iovec_t alpn = cfg->protocol == LG_UPSTREAM_AUTO ? lg_tls_alpn_auto
                       : pool->version == LG_HTTP_2      ? lg_tls_alpn_h2
                                                         : lg_tls_alpn_http11;
    const char *sni = cfg->tls->sni, *verify_name = NULL;
    if (pool->tls_name != NULL && cfg->auto_sni && !pool->tls_name_is_ip)
        sni = pool->tls_name;
    if (pool->tls_name != NULL && cfg->auto_san_validation)
        verify_name = pool->tls_name;
    pc->ssl_ctx = lg_tls_context_ssl_ctx(cfg->tls);
    lg_tls_client_handshake(cfg->tls, pc->cn.sock, pc->ssl_ctx, sni, verify_name, alpn, on_tls_handshake);
}

static void on_connect_done(lg__connect_t *cn, lg_pool_failure_t failure, const char *detail)
{
    lg__pool_conn_t *pc = H2O_STRUCT_FROM_MEMBER(lg__pool_conn_t, cn, cn);
    if (detail != NULL) {
        connect_failed(pc, failure, detail);
    } else if (pc->config->tls != NULL) {
        start_tls(pc);
    } else {
        on_connected(pc);
    }
}

/* A new connection; the CONNECTIONS resource is already taken. */
static void conn_create(lg_conn_pool_t *pool)
{
    lg_worker_cluster_t *c = pool_cluster(pool);
    const lg_cluster_config_t *cfg = pool_config(pool);
    lg__pool_conn_t *pc = lg_calloc(1, sizeof(*pc));
    pc->pool = pool;
    pc->config = lg_cluster_config_addref(c->config);
    pc->state = CONN_CONNECTING;
    pc->remaining_streams = cfg->max_requests_per_connection != 0 ? cfg->max_requests_per_connection : UINT64_MAX;
    pc->stream_limit = stream_limit_of(pool);
    pc->start_ms = lg_now_ms();
    h2o_linklist_insert(&pool->connecting, &pc->link);
    pool->connecting_capacity += pc->stream_limit;
    lg_worker_cluster_addref(c);
    lg__host_inc(pool->host, LG_HOST_STAT_cx_total);
    lg__host_inc(pool->host, LG_HOST_STAT_cx_active);
    lg__cluster_inc(c, LG_CLUSTER_STAT_upstream_cx_total);
    lg__cluster_inc(c, LG_CLUSTER_STAT_upstream_cx_active);
    lg__cluster_inc(c,
                    pool->version == LG_HTTP_2 ? LG_CLUSTER_STAT_upstream_cx_http2_total : LG_CLUSTER_STAT_upstream_cx_http1_total);
    lg__connect_start(&pc->cn, pool_loop(pool), pool->host->config, cfg->connect_timeout_ms, on_connect_done);
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
    lg_timer_stop(&pc->cn.timer);
    ++pc->active_streams;
    ++host->active_requests;
    lg__host_inc(host, LG_HOST_STAT_rq_total);
    lg__host_inc(host, LG_HOST_STAT_rq_active);
    lg__cluster_inc(c, LG_CLUSTER_STAT_upstream_rq_total);
    lg__cluster_inc(c, LG_CLUSTER_STAT_upstream_rq_active);
    cbs->on_ready(data, s, host, pc->local.sa.sa_family != 0 ? &pc->local.sa : NULL);
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
        lg_worker_cluster_addref(c); /* the callback may drop the last other reference */
        cbs->on_failure(data, LG_POOL_OVERFLOW, pool->host, "");
        maybe_gc(pool);
        lg_worker_cluster_release(c);
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
        if (pc->cn.sock != NULL)
            h2o_socket_close(pc->cn.sock);
        conn_destroy(pc);
    }
}

/* Moves what one holder of the pool holds on `from` to `to`: a cluster
 * reference and, when the two do not share their breaker counts (a CDS
 * update), a slot of resource `which`. */
static void move_hold(lg_worker_cluster_t *from, lg_worker_cluster_t *to, int which)
{
    lg_worker_cluster_addref(to);
    if (from->config->shared != to->config->shared) {
        lg__cluster_res_put(from, which);
        lg__cluster_res_force(to, which);
    }
    lg_worker_cluster_release(from);
}

void lg__conn_pool_move(lg_conn_pool_t *pool, lg_host_t *to)
{
    lg_worker_cluster_t *from = pool_cluster(pool), *c = to->cluster;
    h2o_linklist_t *lists[] = {&pool->connecting, &pool->ready, &pool->busy};
    for (size_t i = 0; i != LG_ARRAY_SIZE(lists); ++i) {
        for (h2o_linklist_t *l = lists[i]->next; l != lists[i]; l = l->next) {
            lg__pool_conn_t *pc = H2O_STRUCT_FROM_MEMBER(lg__pool_conn_t, link, l);
            move_hold(from, c, LG__RES_CONNECTIONS);
            for (uint32_t j = 0; j != pc->active_streams; ++j) {
                if (from->config->shared != c->config->shared) {
                    lg__cluster_res_put(from, LG__RES_REQUESTS);
                    lg__cluster_res_force(c, LG__RES_REQUESTS);
                }
            }
            pool->host->active_requests -= pc->active_streams;
            to->active_requests += pc->active_streams;
        }
    }
    for (size_t i = 0; i != pool->n_pending; ++i)
        move_hold(from, c, LG__RES_PENDING);
    pool->host = to;
}

/* ---- codec callbacks ---- */

/* A codec may report several finished streams with one call (h2 does):
 * the codec's own count is the truth. */
static void on_stream_done(lg_client_conn_t *conn)
{
    lg__pool_conn_t *pc = conn->ctx;
    count_bytes_later(pc);
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
    lg__cluster_inc(pool_cluster(pc->pool), LG_CLUSTER_STAT_upstream_cx_close_notify);
    set_state(pc, CONN_DRAINING);
    check_idle(pc);
}

static void on_conn_close(lg_client_conn_t *conn, lg_reset_reason_t reason)
{
    lg__pool_conn_t *pc = conn->ctx;
    lg_conn_pool_t *pool = pc->pool;
    lg_worker_cluster_t *c = pool_cluster(pool);
    lg_worker_cluster_addref(c);
    /* both codecs close their socket after this callback */
    count_tx(pc);
    count_rx(pc);
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

/* A stream stopped reading the upstream on its buffer limit, or went on (Envoy counts
 * these edges where its router pauses and resumes the upstream for a slow downstream). */
static void on_flow(lg_client_conn_t *conn, int paused)
{
    lg__pool_conn_t *pc = conn->ctx;
    lg__cluster_inc(pool_cluster(pc->pool), paused ? LG_CLUSTER_STAT_upstream_flow_control_paused_reading_total
                                                   : LG_CLUSTER_STAT_upstream_flow_control_resumed_reading_total);
}

static const lg_client_conn_cbs_t conn_cbs = {on_stream_done, on_goaway, on_conn_close, on_flow};
