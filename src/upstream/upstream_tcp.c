/*
 * Raw TCP connections to a cluster's hosts, for tcp_proxy: what Envoy's TCP
 * connection pool does for a connection that is never reused (host choice,
 * the breakers, connect_timeout and the stats), without the pool. As in
 * Envoy, the connection is also a "request": pending (upstream_rq_pending_*,
 * max_pending_requests) while it connects, then active (upstream_rq_total,
 * upstream_rq_active, max_requests, the host's rq_*) until it closes. The
 * caller owns the socket once connected.
 */
#include "upstream.h"

struct st_lg_upstream_tcp_t {
    lg_host_t *host;  /* holds a reference to its cluster */
    lg__connect_t cn; /* cn.sock: the socket, the caller's once connected */
    const lg_upstream_tcp_cbs_t *cbs;
    void *data;
    size_t tx_counted;
    unsigned connected : 1;
};

/* The request side of the connection: pending while connecting, then active. */
static void pending_end(lg_worker_cluster_t *c)
{
    lg__cluster_dec(c, LG_CLUSTER_STAT_upstream_rq_pending_active);
    lg__cluster_res_put(c, LG__RES_PENDING);
}

static int request_begin(lg_upstream_tcp_t *u)
{
    lg_worker_cluster_t *c = u->host->cluster;
    pending_end(c);
    if (!lg__cluster_res_try(c, LG__RES_REQUESTS)) {
        lg__cluster_inc(c, LG_CLUSTER_STAT_upstream_rq_pending_overflow);
        return -1;
    }
    u->connected = 1;
    lg__cluster_inc(c, LG_CLUSTER_STAT_upstream_rq_total);
    lg__cluster_inc(c, LG_CLUSTER_STAT_upstream_rq_active);
    lg__host_inc(u->host, LG_HOST_STAT_rq_total);
    lg__host_inc(u->host, LG_HOST_STAT_rq_active);
    return 0;
}

static void request_end(lg_upstream_tcp_t *u)
{
    lg_worker_cluster_t *c = u->host->cluster;
    lg__cluster_dec(c, LG_CLUSTER_STAT_upstream_rq_active);
    lg__host_dec(u->host, LG_HOST_STAT_rq_active);
    lg__cluster_res_put(c, LG__RES_REQUESTS);
}

h2o_socket_t *lg_upstream_tcp_socket(lg_upstream_tcp_t *u)
{
    return u->connected ? u->cn.sock : NULL;
}

lg_host_t *lg_upstream_tcp_host(lg_upstream_tcp_t *u)
{
    return u->host;
}

void lg_upstream_tcp_count_bytes(lg_upstream_tcp_t *u, size_t rx)
{
    lg_worker_cluster_t *c = u->host->cluster;
    if (rx != 0)
        lg__cluster_add(c, LG_CLUSTER_STAT_upstream_cx_rx_bytes_total, rx);
    if (u->cn.sock == NULL)
        return;
    lg__cluster_add(c, LG_CLUSTER_STAT_upstream_cx_tx_bytes_total, u->cn.sock->bytes_written - u->tx_counted);
    u->tx_counted = u->cn.sock->bytes_written;
}

/* Counts the end of the connection, closes the socket and frees u. */
static void destroy(lg_upstream_tcp_t *u, int local)
{
    lg_worker_cluster_t *c = u->host->cluster;
    lg_upstream_tcp_count_bytes(u, 0);
    lg__cluster_inc(c, LG_CLUSTER_STAT_upstream_cx_destroy);
    lg__cluster_inc(c, local ? LG_CLUSTER_STAT_upstream_cx_destroy_local : LG_CLUSTER_STAT_upstream_cx_destroy_remote);
    lg__cluster_dec(c, LG_CLUSTER_STAT_upstream_cx_active);
    lg__host_dec(u->host, LG_HOST_STAT_cx_active);
    lg__cluster_res_put(c, LG__RES_CONNECTIONS);
    if (u->connected)
        request_end(u);
    lg_timer_stop(&u->cn.timer);
    if (u->cn.sock != NULL)
        h2o_socket_close(u->cn.sock);
    free(u);
    lg_worker_cluster_release(c);
}

void lg_upstream_tcp_close(lg_upstream_tcp_t *u, int local)
{
    if (!u->connected) {
        lg__cluster_inc(u->host->cluster, LG_CLUSTER_STAT_upstream_rq_cancelled);
        pending_end(u->host->cluster);
    }
    destroy(u, local);
}

/* Reports a failed connect; u is gone when the callback runs. A timeout is
 * a local close, a refused connect a remote one, as Envoy counts them. */
static void connect_failed(lg_upstream_tcp_t *u, lg_pool_failure_t reason, const char *detail)
{
    lg_host_t *host = u->host;
    lg_worker_cluster_t *c = host->cluster;
    const lg_upstream_tcp_cbs_t *cbs = u->cbs;
    void *data = u->data;
    LG_DEBUG(pool, "tcp connect to %s failed: %s", host->config->address, detail);
    lg__cluster_inc(c, LG_CLUSTER_STAT_upstream_cx_connect_fail);
    lg__host_inc(host, LG_HOST_STAT_cx_connect_fail);
    lg__cluster_inc(c, LG_CLUSTER_STAT_upstream_rq_pending_failure_eject);
    pending_end(c);
    lg_worker_cluster_addref(c);
    destroy(u, reason == LG_POOL_CONNECT_TIMEOUT);
    cbs->on_failure(data, reason, host, detail);
    lg_worker_cluster_release(c);
}

/* Connected, but the max_requests breaker is open: Envoy fails the stream
 * with an overflow and closes the connection it no longer needs. */
static void overflowed(lg_upstream_tcp_t *u)
{
    lg_host_t *host = u->host;
    lg_worker_cluster_t *c = host->cluster;
    const lg_upstream_tcp_cbs_t *cbs = u->cbs;
    void *data = u->data;
    lg_worker_cluster_addref(c);
    destroy(u, 1);
    cbs->on_failure(data, LG_POOL_OVERFLOW, host, "");
    lg_worker_cluster_release(c);
}

static void on_connect_done(lg__connect_t *cn, lg_pool_failure_t failure, const char *detail)
{
    lg_upstream_tcp_t *u = H2O_STRUCT_FROM_MEMBER(lg_upstream_tcp_t, cn, cn);
    if (detail != NULL) {
        if (failure == LG_POOL_CONNECT_TIMEOUT)
            lg__cluster_inc(u->host->cluster, LG_CLUSTER_STAT_upstream_cx_connect_timeout);
        connect_failed(u, failure, detail);
        return;
    }
    lg_timer_stop(&u->cn.timer);
    u->cn.sock->data = NULL;
    if (request_begin(u) != 0) {
        overflowed(u);
        return;
    }
    u->cbs->on_connect(u, u->data);
}

lg_upstream_tcp_t *lg_upstream_tcp_connect(lg_worker_cluster_t *c, const lg_lb_context_t *ctx, const lg_upstream_tcp_cbs_t *cbs,
                                           void *data, lg_pool_failure_t *failure)
{
    lg_host_t *host = lg__cluster_choose_host(c, ctx);
    if (host == NULL) {
        lg__cluster_inc(c, LG_CLUSTER_STAT_upstream_cx_none_healthy);
        *failure = LG_POOL_NO_HEALTHY_HOST;
        return NULL;
    }
    if (!lg__cluster_res_try(c, LG__RES_CONNECTIONS)) {
        lg__cluster_inc(c, LG_CLUSTER_STAT_upstream_cx_overflow);
        *failure = LG_POOL_OVERFLOW;
        return NULL;
    }
    if (!lg__cluster_res_try(c, LG__RES_PENDING)) {
        lg__cluster_res_put(c, LG__RES_CONNECTIONS);
        lg__cluster_inc(c, LG_CLUSTER_STAT_upstream_rq_pending_overflow);
        *failure = LG_POOL_OVERFLOW;
        return NULL;
    }
    lg__cluster_inc(c, LG_CLUSTER_STAT_upstream_rq_pending_total);
    lg__cluster_inc(c, LG_CLUSTER_STAT_upstream_rq_pending_active);
    lg_upstream_tcp_t *u = lg_calloc(1, sizeof(*u));
    u->host = host;
    u->cbs = cbs;
    u->data = data;
    lg_worker_cluster_addref(c);
    lg__host_inc(host, LG_HOST_STAT_cx_total);
    lg__host_inc(host, LG_HOST_STAT_cx_active);
    lg__cluster_inc(c, LG_CLUSTER_STAT_upstream_cx_total);
    lg__cluster_inc(c, LG_CLUSTER_STAT_upstream_cx_active);
    lg__connect_start(&u->cn, &c->worker->loop, host->config, c->config->connect_timeout_ms, on_connect_done);
    return u;
}
