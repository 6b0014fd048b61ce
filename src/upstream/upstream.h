/*
 * Internals shared by the files of src/upstream: the per-worker cluster object, the
 * connection pool entry points the cluster manager calls, and the EDF
 * scheduler the weighted load balancers share. Not a public interface.
 */
#ifndef LEGATE_UPSTREAM_INTERNAL_H
#define LEGATE_UPSTREAM_INTERNAL_H

#include "legate/cluster.h"
#include "legate/stats.h"
#include "legate/timer.h"

/* ---- EDF scheduler (edf.c) ---- */

typedef struct st_lg__edf_entry_t {
    double deadline;
    uint64_t order;
    lg_host_t *host;
} lg__edf_entry_t;

typedef struct st_lg__edf_t {
    lg__edf_entry_t *heap;
    size_t size;
    uint64_t next_order;
    double current_time;
} lg__edf_t;

void lg__edf_init(lg__edf_t *e, size_t capacity);
void lg__edf_dispose(lg__edf_t *e);
/* Adds host, due 1/weight after the current time. At most `capacity` entries. */
void lg__edf_add(lg__edf_t *e, double weight, lg_host_t *host);
/* Removes and returns the entry due first (the heap must not be empty). */
lg_host_t *lg__edf_pick(lg__edf_t *e);

/* Returns whether all hosts have the same weight. */
static inline int lg__lb_weights_equal(lg_host_t **hosts, size_t n)
{
    for (size_t i = 1; i < n; ++i)
        if (hosts[i]->weight != hosts[0]->weight)
            return 0;
    return 1;
}

/* ---- the per-worker cluster (cluster_manager.c) ---- */

struct st_lg_worker_cluster_t {
    uint32_t refcnt;    /* views, connections, pending requests, lg_host_addref() */
    uint32_t view_refs; /* views only: at zero the pools drain */
    lg_cluster_config_t *config;
    lg_worker_t *worker;
    /* Built on first use (a view of 10,000 clusters costs little until used). */
    lg_host_t *hosts;
    lg_host_t **healthy;
    size_t n_healthy;
    lg_host_t **all;
    lg_lb_t *lb_healthy;
    lg_lb_t *lb_all;
    uint64_t rng;
};

static inline lg_stats_block_t *lg__cluster_stats(lg_worker_cluster_t *c)
{
    return c->config->shared->stats;
}

static inline void lg__cluster_inc(lg_worker_cluster_t *c, size_t idx)
{
    LG_STAT_INC(lg__cluster_stats(c), c->worker->index, idx);
}

static inline void lg__cluster_add(lg_worker_cluster_t *c, size_t idx, uint64_t n)
{
    LG_STAT_ADD(lg__cluster_stats(c), c->worker->index, idx, n);
}

static inline void lg__cluster_dec(lg_worker_cluster_t *c, size_t idx)
{
    LG_STAT_DEC(lg__cluster_stats(c), c->worker->index, idx);
}

static inline uint64_t *lg__host_stat(lg_host_t *h, size_t idx)
{
    return lg_host_config_stats(h->config) + h->cluster->worker->index * LG_HOST_STAT__COUNT + idx;
}

static inline void lg__host_inc(lg_host_t *h, size_t idx)
{
    lg_stats__add(lg__host_stat(h, idx), 1);
}

static inline void lg__host_dec(lg_host_t *h, size_t idx)
{
    lg_stats__add(lg__host_stat(h, idx), (uint64_t)-1);
}

/* Picks a host with the cluster's load balancer (panic mode, ctx->excluded), or
 * NULL when the cluster has no usable host; counts lb_healthy_panic. */
lg_host_t *lg__cluster_choose_host(lg_worker_cluster_t *c, const lg_lb_context_t *ctx);

/* The DEFAULT priority breakers. `which` is one of the LG__RES_* below. Returns
 * 0 when the resource is at its limit (nothing taken). */
enum { LG__RES_CONNECTIONS, LG__RES_PENDING, LG__RES_REQUESTS, LG__RES_RETRIES };
int lg__cluster_res_try(lg_worker_cluster_t *c, int which);
/* Takes the resource even over the limit (Envoy: the first connection of a pool). */
void lg__cluster_res_force(lg_worker_cluster_t *c, int which);
void lg__cluster_res_put(lg_worker_cluster_t *c, int which);
int lg__cluster_res_available(lg_worker_cluster_t *c, int which);

/* ---- connecting (connect.c) ---- */

/* A connect in progress; embedded in what connects (a pool connection, a
 * raw TCP connection). */
typedef struct st_lg__connect_t lg__connect_t;
/* failure 0 and detail NULL: connected (the timer still runs: a TLS
 * handshake counts as connecting; stop it when done). Otherwise
 * LG_POOL_CONNECT_FAILURE / LG_POOL_CONNECT_TIMEOUT with Envoy's
 * transport failure reason ("" for a timeout); `sock` (maybe NULL) is still
 * open then: the callee closes it. */
typedef void (*lg__connect_cb)(lg__connect_t *cn, lg_pool_failure_t failure, const char *detail);
struct st_lg__connect_t {
    h2o_socket_t *sock; /* NULL until connect() started; sock->data is the connect while connecting */
    lg_timer_t timer;   /* the connect timeout; free for other uses once connected */
    lg__connect_cb cb;
    int connect_errno;
};
/* Starts connecting to h; cb fires later (never from inside this call). */
void lg__connect_start(lg__connect_t *cn, lg_loop_t *loop, const lg_host_config_t *h, uint32_t timeout_ms, lg__connect_cb cb);
/* Bytes received on a TCP socket so far (TCP_INFO; 0 for unix sockets):
 * libh2o 2.2.5 does not count sock->bytes_read on plain sockets. */
uint64_t lg__socket_rx_bytes(h2o_socket_t *sock);

/* ---- connection pools (conn_pool.c) ---- */

/* `tls_name` (copied; NULL for the cluster's own pools) is the per-request
 * TLS name of auto_sni / auto_san_validation pools. */
lg_conn_pool_t *lg__conn_pool_new(lg_host_t *host, int version, const char *tls_name, size_t tls_name_len);
/* Frees an empty pool (no connection, no pending request). */
void lg__conn_pool_free(lg_conn_pool_t *pool);
/* The next pool of host->named_pools. */
lg_conn_pool_t *lg__conn_pool_next_named(lg_conn_pool_t *pool);
/* The named pool of host for (version, name), or NULL. */
lg_conn_pool_t *lg__conn_pool_find_named(lg_host_t *host, int version, const char *name, size_t len);
/* Gives `pool` (of a host of one worker cluster) to host `to` of another
 * (a cluster update that keeps the host): the cluster references, breaker
 * slots and host counts its connections, streams and pending requests hold
 * move with it. */
void lg__conn_pool_move(lg_conn_pool_t *pool, lg_host_t *to);
/* Envoy's newStream on a picked host; see lg_cluster_request_stream(). */
lg_pool_request_t *lg__conn_pool_request(lg_conn_pool_t *pool, const lg_pool_cbs_t *cbs, void *data);
/* Closes idle connections; the others close once their streams end. */
void lg__conn_pool_drain(lg_conn_pool_t *pool);

#endif
