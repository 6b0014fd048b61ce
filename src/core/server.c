/*
 * The process: loads the bootstrap, starts the admin thread and the workers,
 * handles signals, drains and exits.
 *
 * Threads: the main thread is the control thread: it runs the xDS client
 * (lg_xds_poll waits up to 50 ms on gRPC's completion queue or the file
 * sources) and handles signals between polls. Each worker runs its own
 * loop; the admin server runs on its own thread. Config reaches workers
 * only as snapshots posted through their message queues; a worker opens and
 * closes its accept sockets to match each snapshot's listeners.
 */
#define _GNU_SOURCE /* SCHED_IDLE */
#include <errno.h>
#include <malloc.h>
#include <semaphore.h>
#include <signal.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "legate/address.h"
#include "legate/admin.h"
#include "legate/cluster.h"
#include "legate/config_dump.h"
#include "legate/hcm.h"
#include "legate/listener.h"
#include "legate/listener_runtime.h"
#include "legate/overload.h"
#include "legate/pbjson.h"
#include "legate/preempt.h"
#include "legate/runtime.h"
#include "legate/server.h"
#include "legate/shadow.h"
#include "legate/sock.h"
#include "legate/stats.h"
#include "legate/tcp_proxy.h"
#include "legate/timer.h"
#include "legate/tls.h"
#include "legate/xds.h"

/* MSG_DRAIN stops the listeners at once, MSG_DRAIN_GRACEFUL at the end of the drain. */
typedef enum en_msg_type_t { MSG_SNAPSHOT, MSG_DRAIN, MSG_DRAIN_GRACEFUL, MSG_STOP, MSG_OVERLOAD } msg_type_t;

typedef struct st_worker_msg_t {
    h2o_multithread_message_t super;
    msg_type_t type;
    lg_snapshot_t *snapshot;
    lg_worker_clusters_t *clusters; /* MSG_SNAPSHOT: the worker's cluster view, prepared when the clusters changed */
    uint64_t drain_end_ms;          /* MSG_SNAPSHOT (for the chains it drains) and MSG_DRAIN*: when what drains is closed */
    double overload[LG_OVERLOAD__WORKER_ACTIONS]; /* MSG_OVERLOAD: the actions' new values */
} worker_msg_t;

/* Cluster views a worker replaced, freed by the control thread (they hold
 * only config references then: lg_worker_clusters_adopt). */
typedef struct st_retired_view_t {
    struct st_retired_view_t *next;
    lg_worker_clusters_t *view;
} retired_view_t;
static retired_view_t *retired_views; /* atomic */

static void retire_view(lg_worker_clusters_t *v)
{
    retired_view_t *r = lg_malloc(sizeof(*r));
    r->view = v;
    r->next = __atomic_load_n(&retired_views, __ATOMIC_RELAXED);
    while (!__atomic_compare_exchange_n(&retired_views, &r->next, r, 1, __ATOMIC_RELEASE, __ATOMIC_RELAXED))
        ;
}

static void free_retired_views(void)
{
    retired_view_t *r = __atomic_exchange_n(&retired_views, NULL, __ATOMIC_ACQUIRE);
    while (r != NULL) {
        retired_view_t *next = r->next;
        lg_worker_clusters_free(r->view);
        free(r);
        r = next;
    }
}

/* The accept sockets of a listener: opened on the control thread, one per
 * worker (a unix socket is shared through dup), each taken over by its
 * worker when a snapshot with the listener arrives. */
struct st_lg_listener_socks_t {
    size_t refcnt; /* atomic */
    int *fds;      /* per worker; -1 once taken */
};

typedef struct st_worker_listener_t {
    lg_listener_config_t *config;
    lg_listener_socks_t *socks; /* identity: same socks, same socket */
    h2o_socket_t *sock;
    lg_worker_t *worker;
} worker_listener_t;

typedef struct st_worker_state_t {
    lg_worker_t *worker;
    worker_listener_t **listeners;
    size_t n_listeners;
    h2o_linklist_t conns;
    size_t n_conns;     /* written by the worker, read by the control thread */
    size_t n_hcm_conns; /* the length of `conns` */
    lg_worker_clusters_t *clusters;
    int stop;
    int draining;           /* listeners stay closed */
    lg_snapshot_t *initial; /* the snapshot the worker starts on (applied on its thread) */
    /* The snapshots applied here that connections may still be on, each held
     * once more: an update drains the chains of all of them that it changes. */
    H2O_VECTOR(lg_snapshot_t *) applied;
    h2o_linklist_t drains; /* drain_t */
    lg_timer_t drain_timer;
    /* Out of descriptors (or socket memory): the accept sockets rest for
     * LG_ACCEPT_BACKOFF_MS, as nginx's and HAProxy's do, instead of failing
     * again on every turn of the loop (the backlog keeps them readable). */
    lg_timer_t accept_timer;
    lg_accept_backoff_t accept_backoff;
} worker_state_t;

/* A drain sequence on one worker (Envoy's DrainManager, for the server or for
 * the chains an LDS update changed or removed). Its HTTP connections are told
 * to drain (GOAWAY, or `connection: close` on the next response): with the
 * immediate strategy at once; with the gradual one each at a time spread
 * evenly over the drain time, and on each response with a probability that
 * grows from 0 to 1 over it (lg_server_drain_close). What it covers is closed
 * at its end, tcp_proxy connections included. */
typedef struct st_drain_t {
    h2o_linklist_t link;
    uint64_t start_ms, end_ms, last_tick_ms;
    uint64_t first_new_id; /* connections from this id on came during the drain: no proactive drain */
    /* The drained chains (unless `all`), and the snapshots that own them,
     * held so that no new chain can take one of their addresses. */
    unsigned all : 1; /* SIGTERM, /drain_listeners: every connection */
    const lg_filter_chain_t **chains;
    size_t n_chains;
    lg_snapshot_t **snapshots;
    size_t n_snapshots;
    unsigned stop_listening_at_end : 1;
} drain_t;

/* The pending drops of listener_manager.total_{listeners,filter_chains}_draining (control thread). */
typedef struct st_gauge_drain_t {
    uint64_t end_ms;
    size_t listeners, chains;
} gauge_drain_t;

static struct {
    lg_options_t opts;
    lg_worker_t *workers;
    size_t n_workers;
    sem_t workers_ready;            /* start_workers waits for every worker's loop */
    lg_snapshot_t *snapshot;        /* current; control thread */
    pthread_mutex_t snapshot_mutex; /* guards `snapshot` for the admin thread */
    lg_xds_t *xds;
    volatile sig_atomic_t quit;
    uint64_t next_conn_id;
    lg_stats_block_t *server_stats, *listener_manager_stats, *cluster_manager_stats;
    uint64_t start_wall_us;
    H2O_VECTOR(gauge_drain_t) gauge_drains;
    int drain_started; /* atomic: SIGTERM or /drain_listeners */
} srv = {.snapshot_mutex = PTHREAD_MUTEX_INITIALIZER};

uint64_t lg_server_next_connection_id(void)
{
    return __atomic_fetch_add(&srv.next_conn_id, 1, __ATOMIC_RELAXED);
}

static worker_state_t *state_of(lg_worker_t *w)
{
    return w->data;
}

void lg_worker_add_connection(lg_worker_t *w, h2o_linklist_t *link)
{
    worker_state_t *st = state_of(w);
    h2o_linklist_insert(&st->conns, link);
    ++st->n_hcm_conns;
    __atomic_store_n(&st->n_conns, st->n_conns + 1, __ATOMIC_RELAXED);
}

void lg_worker_remove_connection(lg_worker_t *w, h2o_linklist_t *link)
{
    h2o_linklist_unlink(link);
    --state_of(w)->n_hcm_conns;
}

static void prune_applied(lg_worker_t *w);

/* After every loop iteration: the connection count for the control thread,
 * and the route table pins of snapshots whose connections are all idle. No
 * walk over the connections: with 8,000 idle keep-alive connections one cost
 * ~50 µs per iteration, and requests paid it (CPU per request 28 -> 77-106 µs
 * at 4,000 requests/s). */
static void count_conns(lg_worker_t *w)
{
    worker_state_t *st = state_of(w);
    lg_snapshot_sweep_pins(w);
    prune_applied(w);
    __atomic_store_n(&st->n_conns, st->n_hcm_conns + lg_tcp_proxy_active_connections(), __ATOMIC_RELAXED);
}

void lg_server_log_access(lg_worker_t *w, const lg_listener_config_t *l, const lg_hcm_config_t *hcm, const lg_stream_info_t *info)
{
    lg_access_logs_emit(&hcm->access_logs, info);
}

lg_worker_clusters_t *lg_worker_cluster_view(lg_worker_t *w)
{
    return state_of(w)->clusters;
}

/* ---- workers ---- */

static void worker_pause_listening(lg_worker_t *w);

static void on_accept_timer(lg_timer_t *t)
{
    worker_state_t *st = H2O_STRUCT_FROM_MEMBER(worker_state_t, accept_timer, t);
    worker_pause_listening(st->worker);
}

static void on_listener_accept(h2o_socket_t *sock, const char *err)
{
    worker_listener_t *wl = sock->data;
    worker_state_t *st = state_of(wl->worker);
    if (err != NULL)
        return;
    int e;
    size_t n = lg_listener_accept(wl->worker, wl->config, wl->worker->snapshot, sock, &e);
    if (e == 0) {
        if (n != 0)
            lg_accept_backoff_worked(&st->accept_backoff);
        return;
    }
    lg_accept_backoff_failed(&st->accept_backoff, wl->config->address_str, e);
    lg_timer_start(&wl->worker->loop, &st->accept_timer, LG_ACCEPT_BACKOFF_MS, on_accept_timer);
    worker_pause_listening(wl->worker);
}

void lg_listener_socks_release(lg_listener_socks_t *socks)
{
    if (__atomic_sub_fetch(&socks->refcnt, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    for (size_t k = 0; k != srv.n_workers; ++k)
        if (socks->fds[k] >= 0)
            close(socks->fds[k]);
    free(socks->fds);
    free(socks);
}

static lg_listener_socks_t *socks_open(const lg_listener_config_t *l, lg_error_t *err)
{
    lg_listener_socks_t *socks = lg_calloc(1, sizeof(*socks));
    size_t n = l->addr.ss_family == AF_UNIX ? 1 : srv.n_workers;
    socks->refcnt = 1;
    socks->fds = lg_malloc(srv.n_workers * sizeof(int));
    for (size_t k = 0; k != srv.n_workers; ++k)
        socks->fds[k] = -1;
    for (size_t k = 0; k != n; ++k)
        if ((socks->fds[k] = lg_listen_socket_open(l, err)) < 0) {
            lg_listener_socks_release(socks);
            return NULL;
        }
    for (size_t k = n; k != srv.n_workers; ++k)
        socks->fds[k] = dup(socks->fds[0]);
    return socks;
}

static int same_address(const lg_listener_config_t *a, const lg_listener_config_t *b)
{
    return a->addrlen == b->addrlen && memcmp(&a->addr, &b->addr, a->addrlen) == 0;
}

static void worker_listener_close(worker_listener_t *wl)
{
    if (wl->sock != NULL) {
        h2o_socket_read_stop(wl->sock);
        h2o_socket_close(wl->sock);
    }
    free(wl);
}

/* Whether the accept back-off or the overload manager's stop_accepting_connections
 * holds this accept socket. */
static int listener_paused(lg_worker_t *w, const lg_listener_config_t *l)
{
    return lg_timer_is_active(&state_of(w)->accept_timer) ||
           (w->overload[LG_OVERLOAD_STOP_CONNECTIONS] >= 1 && !l->bypass_overload_manager);
}

/* Stops or resumes reading the accept sockets as the overload manager and the
 * accept back-off say (Envoy's disableListeners / enableListeners): the
 * connections wait in the listen backlog meanwhile. */
static void worker_pause_listening(lg_worker_t *w)
{
    worker_state_t *st = state_of(w);
    for (size_t i = 0; i != st->n_listeners; ++i) {
        h2o_socket_t *sock = st->listeners[i]->sock;
        if (sock != NULL && listener_paused(w, st->listeners[i]->config))
            h2o_socket_read_stop(sock);
        else if (sock != NULL && !h2o_socket_is_reading(sock))
            h2o_socket_read_start(sock, on_listener_accept);
    }
}

/* Makes the worker's accept sockets those of the snapshot's listeners. */
static void worker_sync_listeners(lg_worker_t *w, lg_snapshot_t *snap)
{
    worker_state_t *st = state_of(w);
    worker_listener_t **next = lg_calloc(snap->n_listeners + 1, sizeof(*next));
    for (size_t i = 0; i != snap->n_listeners; ++i) {
        for (size_t j = 0; j != st->n_listeners; ++j)
            if (st->listeners[j] != NULL && st->listeners[j]->socks == snap->listener_socks[i]) {
                next[i] = st->listeners[j];
                st->listeners[j] = NULL;
                break;
            }
        if (next[i] == NULL) {
            next[i] = lg_calloc(1, sizeof(*next[i]));
            next[i]->socks = snap->listener_socks[i];
            next[i]->worker = w;
            int fd = __atomic_exchange_n(&snap->listener_socks[i]->fds[w->index], -1, __ATOMIC_ACQ_REL);
            if (fd >= 0 && !st->draining) {
                next[i]->sock = h2o_evloop_socket_create((h2o_evloop_t *)w->loop.loop, fd, H2O_SOCKET_FLAG_DONT_READ);
                next[i]->sock->data = next[i];
                if (!listener_paused(w, snap->listeners[i]))
                    h2o_socket_read_start(next[i]->sock, on_listener_accept);
            } else if (fd >= 0) {
                close(fd);
            }
        }
        next[i]->config = snap->listeners[i];
    }
    for (size_t j = 0; j != st->n_listeners; ++j)
        if (st->listeners[j] != NULL)
            worker_listener_close(st->listeners[j]);
    free(st->listeners);
    st->listeners = next;
    st->n_listeners = snap->n_listeners;
}

static void worker_stop_listening(lg_worker_t *w)
{
    worker_state_t *st = state_of(w);
    for (size_t i = 0; i != st->n_listeners; ++i) {
        worker_listener_t *wl = st->listeners[i];
        if (wl->sock != NULL) {
            h2o_socket_read_stop(wl->sock);
            h2o_socket_close(wl->sock);
            wl->sock = NULL;
        }
    }
}

/* The listener of `snap` that takes over from `old` (same name), or NULL. */
static const lg_listener_config_t *successor(const lg_listener_config_t *old, const lg_snapshot_t *snap)
{
    for (size_t i = 0; i != snap->n_listeners; ++i)
        if (strcmp(snap->listeners[i]->name, old->name) == 0)
            return snap->listeners[i];
    return NULL;
}

/* Whether `snap` keeps `old` as a listener (address and all but its filter
 * chains unchanged), so that an update only drains the chains it changed. */
static int listener_kept(const lg_listener_config_t *old, const lg_listener_config_t *now)
{
    return now != NULL && same_address(now, old) && now->hash == old->hash;
}

static int has_chain(const lg_listener_config_t *l, uint64_t hash)
{
    for (size_t i = 0; i != l->n_chains; ++i)
        if (l->chains[i].hash == hash)
            return 1;
    return l->default_chain != NULL && l->default_chain->hash == hash;
}

/* Envoy's listener update rules for the connections on chain `c` of `old`:
 * they live on while the listener is kept and the chain is still there
 * unchanged; otherwise they drain. */
static int chain_survives(const lg_listener_config_t *old, const lg_filter_chain_t *c, const lg_snapshot_t *snap)
{
    const lg_listener_config_t *now = successor(old, snap);
    return now == old || (listener_kept(old, now) && has_chain(now, c->hash));
}

static int drain_covers(const drain_t *d, lg_network_filter_kind_t kind, const void *config)
{
    if (d->all)
        return 1;
    for (size_t i = 0; i != d->n_chains; ++i)
        if (d->chains[i]->kind == kind &&
            (kind == LG_NETWORK_FILTER_HCM ? (const void *)d->chains[i]->hcm : (const void *)d->chains[i]->tcp_proxy) == config)
            return 1;
    return 0;
}

/* Frees `d` (not or no longer in the worker's list). */
static void drain_release(lg_worker_t *w, drain_t *d)
{
    for (size_t i = 0; i != d->n_snapshots; ++i)
        lg_snapshot_release(w, d->snapshots[i]);
    free(d->snapshots);
    free(d->chains);
    free(d);
}

static void drain_free(lg_worker_t *w, drain_t *d)
{
    h2o_linklist_unlink(&d->link);
    drain_release(w, d);
}

static void drain_conn(lg_hcm_conn_t *c, const char *why)
{
    LG_DEBUG(conn_handler, "[C%llu] draining: %s", (unsigned long long)c->id, why);
    lg_hcm_conn_drain(c);
}

/* The end of a drain: what it still covers is closed. */
static void drain_finish(lg_worker_t *w, drain_t *d)
{
    worker_state_t *st = state_of(w);
    if (d->stop_listening_at_end) {
        st->draining = 1;
        worker_stop_listening(w);
    }
    for (h2o_linklist_t *l = st->conns.next, *next; l != &st->conns; l = next) {
        next = l->next;
        lg_hcm_conn_t *c = H2O_STRUCT_FROM_MEMBER(lg_hcm_conn_t, worker_link, l);
        if (!c->closed && drain_covers(d, LG_NETWORK_FILTER_HCM, c->config)) {
            LG_DEBUG(conn_handler, "[C%llu] closing: the drain time is over", (unsigned long long)c->id);
            lg_hcm_conn_close(c);
        }
    }
    if (d->all)
        lg_tcp_proxy_close_all();
    for (size_t i = 0; i != d->n_chains; ++i)
        if (d->chains[i]->kind == LG_NETWORK_FILTER_TCP_PROXY)
            lg_tcp_proxy_on_config(d->chains[i]->tcp_proxy, 1);
    drain_free(w, d);
}

/* Whether a connection is still on one of the chains `d` drains: one that
 * covers none is dropped early, with the snapshots it holds. */
static int drain_in_use(lg_worker_t *w, const drain_t *d)
{
    worker_state_t *st = state_of(w);
    if (d->all)
        return 1;
    for (h2o_linklist_t *l = st->conns.next; l != &st->conns; l = l->next)
        if (drain_covers(d, LG_NETWORK_FILTER_HCM, H2O_STRUCT_FROM_MEMBER(lg_hcm_conn_t, worker_link, l)->config))
            return 1;
    for (size_t i = 0; i != d->n_chains; ++i)
        if (d->chains[i]->kind == LG_NETWORK_FILTER_TCP_PROXY && lg_tcp_proxy_on_config(d->chains[i]->tcp_proxy, 0) != 0)
            return 1;
    return 0;
}

/* The gradual strategy's proactive part: between two ticks, a connection not
 * told yet is told with probability (now - last) / (end - last), so that the
 * chance it has been told by time t is (t - start) / (end - start). An idle
 * HTTP/1.1 connection is left to its next response (telling it would close
 * it under a client that may be sending a request) or to the end. */
static void drain_tick(lg_worker_t *w, drain_t *d, uint64_t now)
{
    worker_state_t *st = state_of(w);
    uint64_t left = d->end_ms - d->last_tick_ms, step = now - d->last_tick_ms;
    d->last_tick_ms = now;
    for (h2o_linklist_t *l = st->conns.next, *next; l != &st->conns; l = next) {
        next = l->next;
        lg_hcm_conn_t *c = H2O_STRUCT_FROM_MEMBER(lg_hcm_conn_t, worker_link, l);
        if (!c->draining && c->id < d->first_new_id &&
            (lg_server_conn_version(lg_hcm_conn_codec(c)) == LG_HTTP_2 || c->n_streams != 0) &&
            drain_covers(d, LG_NETWORK_FILTER_HCM, c->config) && lg_random() % left < step)
            drain_conn(c, "gradual drain");
    }
}

static void on_drain_timer(lg_timer_t *t);

/* The next tick: a drain's end, the gradual strategy's next step, or at
 * least once a second the check that a chain drain still covers something. */
static void drain_arm(worker_state_t *st, uint64_t now)
{
    uint64_t next = UINT64_MAX;
    for (h2o_linklist_t *l = st->drains.next; l != &st->drains; l = l->next) {
        drain_t *d = H2O_STRUCT_FROM_MEMBER(drain_t, link, l);
        uint64_t step = (d->end_ms - d->start_ms) / 32;
        step = srv.opts.drain_strategy_immediate || step > 1000 ? 1000 : step < 20 ? 20 : step;
        uint64_t at = d->all && srv.opts.drain_strategy_immediate ? d->end_ms : now + step;
        if (d->end_ms < at)
            at = d->end_ms;
        if (at < next)
            next = at;
    }
    if (next != UINT64_MAX)
        lg_timer_start(&st->worker->loop, &st->drain_timer, next > now ? next - now : 0, on_drain_timer);
    else
        lg_timer_stop(&st->drain_timer);
}

static void on_drain_timer(lg_timer_t *t)
{
    worker_state_t *st = H2O_STRUCT_FROM_MEMBER(worker_state_t, drain_timer, t);
    uint64_t now = lg_now_ms();
    for (h2o_linklist_t *l = st->drains.next, *next; l != &st->drains; l = next) {
        next = l->next;
        drain_t *d = H2O_STRUCT_FROM_MEMBER(drain_t, link, l);
        if (now >= d->end_ms)
            drain_finish(st->worker, d);
        else if (!drain_in_use(st->worker, d))
            drain_free(st->worker, d);
        else if (!srv.opts.drain_strategy_immediate)
            drain_tick(st->worker, d, now);
    }
    drain_arm(st, now);
}

/* Starts `d` (its chains, snapshots and end set); with the immediate strategy
 * every connection it covers is told now. */
static void drain_start(lg_worker_t *w, drain_t *d, const char *why)
{
    worker_state_t *st = state_of(w);
    uint64_t now = lg_now_ms();
    d->start_ms = d->last_tick_ms = now;
    if (d->end_ms < now)
        d->end_ms = now;
    d->first_new_id = __atomic_load_n(&srv.next_conn_id, __ATOMIC_RELAXED);
    h2o_linklist_insert(&st->drains, &d->link);
    if (srv.opts.drain_strategy_immediate || d->end_ms == now)
        for (h2o_linklist_t *l = st->conns.next, *next; l != &st->conns; l = next) {
            next = l->next;
            lg_hcm_conn_t *c = H2O_STRUCT_FROM_MEMBER(lg_hcm_conn_t, worker_link, l);
            if (!c->draining && drain_covers(d, LG_NETWORK_FILTER_HCM, c->config))
                drain_conn(c, why);
        }
    drain_arm(st, now);
}

int lg_server_drain_close(const lg_hcm_conn_t *c)
{
    if (lg_admin_healthcheck_failed())
        return 1; /* Envoy's drainClose() while health checks fail (drain_type DEFAULT) */
    worker_state_t *st = state_of(c->worker);
    uint64_t now = 0;
    for (h2o_linklist_t *l = st->drains.next; l != &st->drains; l = l->next) {
        drain_t *d = H2O_STRUCT_FROM_MEMBER(drain_t, link, l);
        if (!drain_covers(d, LG_NETWORK_FILTER_HCM, c->config))
            continue;
        if (now == 0)
            now = lg_now_ms();
        if (srv.opts.drain_strategy_immediate || now >= d->end_ms || lg_random() % (d->end_ms - d->start_ms) < now - d->start_ms)
            return 1;
    }
    return 0;
}

static void add_chain(drain_t *d, const lg_filter_chain_t *c)
{
    for (size_t i = 0; i != d->n_chains; ++i)
        if (d->chains[i] == c)
            return;
    d->chains = lg_realloc(d->chains, (d->n_chains + 1) * sizeof(*d->chains));
    d->chains[d->n_chains++] = c;
}

/* Adds the chains of `s` that do not survive in `snap`; 1 when there was one. */
static int add_changed_chains(drain_t *d, const lg_snapshot_t *s, const lg_snapshot_t *snap)
{
    size_t n = d->n_chains;
    for (size_t i = 0; i != s->n_listeners; ++i) {
        const lg_listener_config_t *l = s->listeners[i];
        for (size_t j = 0; j != l->n_chains; ++j)
            if (!chain_survives(l, l->chains + j, snap))
                add_chain(d, l->chains + j);
        if (l->default_chain != NULL && !chain_survives(l, l->default_chain, snap))
            add_chain(d, l->default_chain);
    }
    return d->n_chains != n;
}

/* An update to `snap`: connections on the chains it changes or removes drain
 * until `end_ms`. They may be on any snapshot applied since they came. */
static void worker_drain_changed(lg_worker_t *w, lg_snapshot_t *snap, uint64_t end_ms)
{
    worker_state_t *st = state_of(w);
    drain_t *d = lg_calloc(1, sizeof(*d));
    d->end_ms = end_ms;
    for (size_t i = 0; i != st->applied.size; ++i)
        if (add_changed_chains(d, st->applied.entries[i], snap)) {
            d->snapshots = lg_realloc(d->snapshots, (d->n_snapshots + 1) * sizeof(*d->snapshots));
            d->snapshots[d->n_snapshots++] = st->applied.entries[i];
            lg_snapshot_hold(w, st->applied.entries[i]);
        }
    if (!drain_in_use(w, d)) {
        drain_release(w, d);
        return;
    }
    drain_start(w, d, "its listener changed");
}

/* Drops the applied snapshots (but the current one) that only the list holds. */
static void prune_applied(lg_worker_t *w)
{
    worker_state_t *st = state_of(w);
    for (size_t i = 0; i != st->applied.size;) {
        lg_snapshot_t *s = st->applied.entries[i];
        if (s != w->snapshot && lg_snapshot_uses(s, w) == 1) {
            st->applied.entries[i] = st->applied.entries[--st->applied.size];
            lg_snapshot_release(w, s);
        } else {
            ++i;
        }
    }
}

static int same_clusters(const lg_snapshot_t *a, const lg_snapshot_t *b)
{
    return a != NULL && b != NULL && a->n_clusters == b->n_clusters &&
           memcmp(a->clusters, b->clusters, a->n_clusters * sizeof(a->clusters[0])) == 0;
}

/* `clusters`: the view prepared by the control thread, or NULL. The worker's
 * part of an update stays a pointer swap whatever the number of clusters: an
 * update that leaves every cluster as it was (RDS, LDS, runtime) keeps the
 * view, another one comes prepared, and the replaced view is freed by the
 * control thread. */
static void worker_apply_snapshot(lg_worker_t *w, lg_snapshot_t *snap, lg_worker_clusters_t *clusters, uint64_t drain_end_ms)
{
    worker_state_t *st = state_of(w);
    lg_worker_clusters_t *prev = st->clusters;
    lg_snapshot_t *old = w->snapshot;
    if (clusters != NULL) {
        lg_worker_clusters_adopt(w, clusters, prev);
        st->clusters = clusters;
        if (prev != NULL)
            retire_view(prev);
    } else if (prev == NULL || !same_clusters(old, snap)) {
        st->clusters = lg_worker_clusters_new(w, snap->clusters, snap->n_clusters, prev);
        if (prev != NULL)
            lg_worker_clusters_free(prev);
    }
    worker_sync_listeners(w, snap);
    w->snapshot = snap;
    lg_snapshot_hold(w, snap);
    if (old != NULL) {
        worker_drain_changed(w, snap, drain_end_ms);
        lg_snapshot_release(w, old);
    }
    h2o_vector_reserve(NULL, &st->applied, st->applied.size + 1);
    st->applied.entries[st->applied.size++] = snap;
    lg_snapshot_hold(w, snap);
    prune_applied(w);
}

/* SIGTERM or /drain_listeners: every connection drains; the listeners close
 * now, or at the end when `graceful`. */
static void worker_drain(lg_worker_t *w, uint64_t end_ms, int graceful)
{
    worker_state_t *st = state_of(w);
    drain_t *d = lg_calloc(1, sizeof(*d));
    d->all = 1;
    d->end_ms = end_ms;
    d->stop_listening_at_end = graceful;
    if (!graceful) {
        st->draining = 1;
        worker_stop_listening(w);
    }
    drain_start(w, d, "the server drains");
}

static void on_worker_message(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages)
{
    lg_worker_t *w = H2O_STRUCT_FROM_MEMBER(lg_worker_t, config_receiver, receiver);
    while (!h2o_linklist_is_empty(messages)) {
        worker_msg_t *m = H2O_STRUCT_FROM_MEMBER(worker_msg_t, super.link, messages->next);
        h2o_linklist_unlink(&m->super.link);
        switch (m->type) {
        case MSG_SNAPSHOT:
            worker_apply_snapshot(w, m->snapshot, m->clusters, m->drain_end_ms);
            lg_snapshot_unref(m->snapshot);
            break;
        case MSG_DRAIN:
        case MSG_DRAIN_GRACEFUL:
            worker_drain(w, m->drain_end_ms, m->type == MSG_DRAIN_GRACEFUL);
            break;
        case MSG_STOP:
            state_of(w)->stop = 1;
            break;
        case MSG_OVERLOAD:
            memcpy(w->overload, m->overload, sizeof(w->overload));
            worker_pause_listening(w);
            break;
        }
        free(m);
    }
}

static void post_with(lg_worker_t *w, msg_type_t type, lg_snapshot_t *snap, lg_worker_clusters_t *clusters, uint64_t drain_end_ms)
{
    worker_msg_t *m = lg_calloc(1, sizeof(*m));
    m->type = type;
    m->snapshot = snap != NULL ? lg_snapshot_ref(snap) : NULL;
    m->clusters = clusters;
    m->drain_end_ms = drain_end_ms;
    h2o_multithread_send_message(&w->config_receiver, &m->super);
}

static void post(lg_worker_t *w, msg_type_t type, lg_snapshot_t *snap, uint64_t drain_end_ms)
{
    post_with(w, type, snap, NULL, drain_end_ms);
}

/* When the drain that starts now ends. */
static uint64_t drain_end(void)
{
    return lg_now_ms() + (uint64_t)srv.opts.drain_time_s * 1000;
}

/* After the stop, the sockets its connections let go of get a little time to
 * finish closing (a TLS close_notify, a final GOAWAY). */
static int sockets_closing(uint64_t *until)
{
    if (lg_listener_counted_sockets() == 0)
        return 0;
    if (*until == 0)
        *until = lg_now_ms() + 2000;
    return lg_now_ms() < *until;
}

/* Releases what the worker holds for drains, before its last snapshot. */
static void worker_drop_drains(lg_worker_t *w)
{
    worker_state_t *st = state_of(w);
    lg_timer_stop(&st->drain_timer);
    lg_timer_stop(&st->accept_timer);
    while (!h2o_linklist_is_empty(&st->drains))
        drain_free(w, H2O_STRUCT_FROM_MEMBER(drain_t, link, st->drains.next));
    for (size_t i = 0; i != st->applied.size; ++i)
        lg_snapshot_release(w, st->applied.entries[i]);
    free(st->applied.entries);
    memset(&st->applied, 0, sizeof(st->applied));
}

static void *worker_main(void *arg)
{
    lg_worker_t *w = arg;
    worker_state_t *st = state_of(w);
    lg_current_worker = w;
    /* The loop, its message queue and the first snapshot's sockets are made on
     * this thread: libh2o binds a socket's buffers to the thread-local
     * allocator of the thread that creates it (the queue's wake-up pipe is a
     * socket that this thread reads), and those allocators are not shared. */
    lg_loop_init(&w->loop, (h2o_loop_t *)h2o_evloop_create());
    w->queue = h2o_multithread_create_queue(w->loop.loop);
    h2o_multithread_register_receiver(w->queue, &w->config_receiver, on_worker_message);
    worker_apply_snapshot(w, st->initial, NULL, 0);
    st->initial = NULL;
    sem_post(&srv.workers_ready);
    uint64_t closing_until = 0;
    while (!st->stop || !h2o_linklist_is_empty(&st->conns) || lg_tcp_proxy_active_connections() != 0 ||
           sockets_closing(&closing_until)) {
        h2o_evloop_run(w->loop.loop, st->stop ? 10 : INT32_MAX);
        count_conns(w);
        if (st->stop) {
            /* hard stop: close what is left */
            for (h2o_linklist_t *l = st->conns.next, *next; l != &st->conns; l = next) {
                next = l->next;
                lg_hcm_conn_t *c = H2O_STRUCT_FROM_MEMBER(lg_hcm_conn_t, worker_link, l);
                lg_hcm_conn_close(c);
            }
            lg_tcp_proxy_close_all();
            lg_listener_close_pending();
        }
    }
    /* connections still in the TLS inspector or handshake hold a snapshot */
    lg_listener_close_pending();
    lg_shadow_thread_exit(); /* mirror copies in flight hold their clusters */
    worker_drop_drains(w);
    worker_stop_listening(w);
    /* let closed sockets' callbacks run */
    for (int i = 0; i != 4; ++i)
        h2o_evloop_run(w->loop.loop, 0);
    lg_worker_clusters_free(st->clusters);
    st->clusters = NULL;
    for (int i = 0; i != 4; ++i)
        h2o_evloop_run(w->loop.loop, 0);
    if (w->snapshot != NULL)
        lg_snapshot_release(w, w->snapshot);
    /* libh2o keeps recycled socket buffers in a thread-local list that dies with the thread */
    while (h2o_socket_buffer_prototype.allocator.cnt != 0)
        free(h2o_mem_alloc_recycle(&h2o_socket_buffer_prototype.allocator, 0));
    lg_sock_thread_exit();
    return NULL;
}

/* Workers start on the current snapshot (applied here, before their threads run). */
static void start_workers(lg_snapshot_t *snap)
{
    srv.workers = lg_calloc(srv.n_workers, sizeof(*srv.workers));
    for (size_t k = 0; k != srv.n_workers; ++k) {
        lg_worker_t *w = srv.workers + k;
        worker_state_t *st = lg_calloc(1, sizeof(*st));
        w->index = k;
        w->data = st;
        h2o_linklist_init_anchor(&st->conns);
        h2o_linklist_init_anchor(&st->drains);
        st->worker = w;
        st->initial = snap;
    }
    sem_init(&srv.workers_ready, 0, 0);
    for (size_t k = 0; k != srv.n_workers; ++k)
        pthread_create(&srv.workers[k].thread, NULL, worker_main, srv.workers + k);
    /* nothing is posted to a worker before its queue exists */
    for (size_t k = 0; k != srv.n_workers; ++k)
        while (sem_wait(&srv.workers_ready) != 0)
            ;
    sem_destroy(&srv.workers_ready);
}

static void stop_workers(void)
{
    for (size_t k = 0; k != srv.n_workers; ++k)
        post(srv.workers + k, MSG_STOP, NULL, 0);
    for (size_t k = 0; k != srv.n_workers; ++k) {
        lg_worker_t *w = srv.workers + k;
        worker_state_t *st = state_of(w);
        pthread_join(w->thread, NULL);
        h2o_multithread_unregister_receiver(w->queue, &w->config_receiver);
        h2o_multithread_destroy_queue(w->queue);
        free(w->queue); /* libh2o 2.2.5's evloop build does not free it */
        lg_loop_dispose(&w->loop);
        h2o_evloop_destroy((h2o_evloop_t *)w->loop.loop);
        for (size_t i = 0; i != st->n_listeners; ++i)
            free(st->listeners[i]);
        free(st->listeners);
        free(w->data);
    }
    free(srv.workers);
    srv.workers = NULL;
}

/* ---- publishing snapshots ---- */

/* listener_manager's view of an update from `old` to `now` (Envoy's
 * ListenerManagerImpl): a listener removed or changed beyond its filter
 * chains drains as a whole; one changed in place drains the chains that
 * changed. The gauges drop when the drain ends (expire_listener_drains). */
static void count_listener_drains(const lg_snapshot_t *old, const lg_snapshot_t *now, uint64_t end_ms)
{
    gauge_drain_t g = {end_ms, 0, 0};
    for (size_t i = 0; i != old->n_listeners; ++i) {
        const lg_listener_config_t *l = old->listeners[i], *next = successor(l, now);
        if (next == l)
            continue;
        if (!listener_kept(l, next)) {
            ++g.listeners;
            continue;
        }
        lg_stats_control_add(srv.listener_manager_stats, LG_LISTENER_MANAGER_STAT_listener_in_place_updated, 1);
        for (size_t j = 0; j != l->n_chains; ++j)
            g.chains += !has_chain(next, l->chains[j].hash);
        if (l->default_chain != NULL)
            g.chains += !has_chain(next, l->default_chain->hash);
    }
    if (g.listeners == 0 && g.chains == 0)
        return;
    lg_stats_control_add(srv.listener_manager_stats, LG_LISTENER_MANAGER_STAT_total_listeners_draining, (int64_t)g.listeners);
    lg_stats_control_add(srv.listener_manager_stats, LG_LISTENER_MANAGER_STAT_total_filter_chains_draining, (int64_t)g.chains);
    h2o_vector_reserve(NULL, &srv.gauge_drains, srv.gauge_drains.size + 1);
    srv.gauge_drains.entries[srv.gauge_drains.size++] = g;
}

static void expire_listener_drains(uint64_t now)
{
    for (size_t i = 0; i != srv.gauge_drains.size;) {
        gauge_drain_t *g = srv.gauge_drains.entries + i;
        if (now < g->end_ms) {
            ++i;
            continue;
        }
        lg_stats_control_add(srv.listener_manager_stats, LG_LISTENER_MANAGER_STAT_total_listeners_draining, -(int64_t)g->listeners);
        lg_stats_control_add(srv.listener_manager_stats, LG_LISTENER_MANAGER_STAT_total_filter_chains_draining,
                             -(int64_t)g->chains);
        *g = srv.gauge_drains.entries[--srv.gauge_drains.size];
    }
}

/* The sockets of a listener of the current snapshot with the same name and address, if any. */
static lg_listener_socks_t *current_socks(const lg_listener_config_t *l)
{
    lg_snapshot_t *cur = srv.snapshot;
    for (size_t j = 0; cur != NULL && j != cur->n_listeners; ++j)
        if (strcmp(cur->listeners[j]->name, l->name) == 0 && same_address(cur->listeners[j], l) && cur->listener_socks[j] != NULL) {
            __atomic_add_fetch(&cur->listener_socks[j]->refcnt, 1, __ATOMIC_RELAXED);
            return cur->listener_socks[j];
        }
    return NULL;
}

int lg_server_publish(lg_snapshot_t *s, size_t *failed, lg_error_t *err)
{
    for (size_t i = 0; i != s->n_listeners; ++i) {
        if ((s->listener_socks[i] = current_socks(s->listeners[i])) != NULL)
            continue;
        if ((s->listener_socks[i] = socks_open(s->listeners[i], err)) == NULL) {
            *failed = i;
            for (size_t j = 0; j != i; ++j) {
                lg_listener_socks_release(s->listener_socks[j]);
                s->listener_socks[j] = NULL;
            }
            return lg_error_prefix(err, "listener '%s'", s->listeners[i]->name);
        }
    }
    s->generation = srv.snapshot != NULL ? srv.snapshot->generation + 1 : 1;
    uint64_t end_ms = drain_end();
    if (srv.snapshot != NULL)
        count_listener_drains(srv.snapshot, s, end_ms);
    pthread_mutex_lock(&srv.snapshot_mutex);
    lg_snapshot_t *old = srv.snapshot;
    srv.snapshot = lg_snapshot_ref(s);
    pthread_mutex_unlock(&srv.snapshot_mutex);
    int clusters_changed = !same_clusters(old, s);
    for (size_t k = 0; srv.workers != NULL && k != srv.n_workers; ++k)
        post_with(srv.workers + k, MSG_SNAPSHOT, s,
                  clusters_changed ? lg_worker_clusters_prepare(s->clusters, s->n_clusters) : NULL, end_ms);
    lg_snapshot_unref(old);
    lg_stats_gauge_set(lg_stats_listener_manager, LG_LISTENER_MANAGER_STAT_total_listeners_active, s->n_listeners);
    lg_stats_gauge_set(lg_stats_cluster_manager, LG_CLUSTER_MANAGER_STAT_active_clusters, s->n_clusters);
    return 0;
}

lg_snapshot_t *lg_server_current_snapshot(void)
{
    pthread_mutex_lock(&srv.snapshot_mutex);
    lg_snapshot_t *s = srv.snapshot != NULL ? lg_snapshot_ref(srv.snapshot) : NULL;
    pthread_mutex_unlock(&srv.snapshot_mutex);
    return s;
}

static size_t total_connections(void)
{
    size_t n = 0;
    for (size_t k = 0; k != srv.n_workers; ++k)
        n += __atomic_load_n(&state_of(srv.workers + k)->n_conns, __ATOMIC_RELAXED);
    return n;
}

/* ---- admin endpoints that read the config ---- */

static void admin_clusters(const lg_admin_request_t *req, lg_admin_response_t *res, void *ctx)
{
    lg_snapshot_t *s = lg_server_current_snapshot();
    const char *format = lg_admin_param(req, "format");
    if (format != NULL && strcmp(format, "json") == 0) {
        res->content_type = LG_ADMIN_CONTENT_JSON;
        lg_clusters_admin_json(&res->body, s->clusters, s->n_clusters);
    } else {
        lg_clusters_admin_text(&res->body, s->clusters, s->n_clusters);
    }
    lg_snapshot_unref(s);
}

static void admin_listeners(const lg_admin_request_t *req, lg_admin_response_t *res, void *ctx)
{
    lg_snapshot_t *s = lg_server_current_snapshot();
    const char *format = lg_admin_param(req, "format");
    if (format != NULL && strcmp(format, "json") == 0) {
        res->content_type = LG_ADMIN_CONTENT_JSON;
        lg_strbuf_puts(&res->body, "{\"listener_statuses\":[");
        for (size_t i = 0; i != s->n_listeners; ++i) {
            const lg_listener_config_t *l = s->listeners[i];
            char ip[128];
            lg_address_format_ip((const struct sockaddr *)&l->addr, ip, sizeof(ip));
            lg_strbuf_puts(&res->body, i ? ",{\"name\":" : "{\"name\":");
            lg_strbuf_json_string(&res->body, l->name, strlen(l->name));
            if (l->addr.ss_family == AF_UNIX) {
                lg_strbuf_puts(&res->body, ",\"local_address\":{\"pipe\":{\"path\":");
                lg_strbuf_json_string(&res->body, ip, strlen(ip));
                lg_strbuf_puts(&res->body, "}}}");
            } else {
                lg_strbuf_puts(&res->body, ",\"local_address\":{\"socket_address\":{\"address\":");
                lg_strbuf_json_string(&res->body, ip, strlen(ip));
                lg_strbuf_printf(&res->body, ",\"port_value\":%u}}}", lg_address_port((const struct sockaddr *)&l->addr));
            }
        }
        lg_strbuf_puts(&res->body, "]}");
    } else {
        for (size_t i = 0; i != s->n_listeners; ++i)
            lg_strbuf_printf(&res->body, "%s::%s\n", s->listeners[i]->name, s->listeners[i]->address_str);
    }
    lg_snapshot_unref(s);
}

/* Envoy's ConfigDump: bootstrap, clusters, listeners, routes, in this order. */
static void admin_config_dump(const lg_admin_request_t *req, lg_admin_response_t *res, void *ctx)
{
    lg_snapshot_t *s = lg_server_current_snapshot();
    lg_config_dump_src_t src = {s->bootstrap,
                                s->last_updated_wall_us,
                                s->xds,
                                lg_admin_param(req, "include_eds") != NULL,
                                lg_admin_param(req, "resource"),
                                lg_admin_param(req, "mask")};
    res->content_type = LG_ADMIN_CONTENT_JSON;
    lg_config_dump(&res->body, &src);
    lg_snapshot_unref(s);
}

/* Envoy's /drain_listeners: the listeners stop now, or with `graceful` after
 * a drain (ignored when a drain has started already). Either way the
 * connections drain and what is left at the end of the drain time closes. */
static void admin_drain_listeners(const lg_admin_request_t *req, lg_admin_response_t *res, void *ctx)
{
    int graceful = lg_admin_param(req, "graceful") != NULL;
    int started = __atomic_exchange_n(&srv.drain_started, 1, __ATOMIC_ACQ_REL);
    if (!graceful || !started) {
        uint64_t end_ms = drain_end();
        for (size_t k = 0; k != srv.n_workers; ++k)
            post(srv.workers + k, graceful ? MSG_DRAIN_GRACEFUL : MSG_DRAIN, NULL, end_ms);
    }
    lg_strbuf_puts(&res->body, "OK\n");
}

static void on_quit(void)
{
    srv.quit = 2;
}

static void register_admin(void)
{
    lg_admin_register("/clusters", "upstream cluster status", 0, admin_clusters, NULL);
    lg_admin_add_param("/clusters", "format", "File format to use; text or json");
    lg_admin_register("/listeners", "print listener info", 0, admin_listeners, NULL);
    lg_admin_add_param("/listeners", "format", "File format to use; text or json");
    lg_admin_register("/config_dump", "dump current Envoy configs (experimental)", 0, admin_config_dump, NULL);
    lg_admin_add_param("/config_dump", "resource", "The resource to dump");
    lg_admin_add_param(
        "/config_dump", "mask",
        "The mask to apply. When both resource and mask are specified, the mask is applied to every element in the desired "
        "repeated field so that only a subset of fields are returned. The mask is parsed as a ProtobufWkt::FieldMask");
    lg_admin_add_param("/config_dump", "include_eds",
                       "Dump currently loaded configuration including EDS. See the response definition for more information");
    lg_admin_register("/drain_listeners", "drain listeners", 1, admin_drain_listeners, NULL);
    lg_admin_add_param("/drain_listeners", "graceful", "When draining listeners, enter a graceful drain period prior to closing");
    lg_admin_on_quit(on_quit);
    lg_runtime_register_admin(); /* /runtime, /runtime_modify */
}

/* ---- startup ---- */

static int start_admin(const Envoy__Config__Bootstrap__V3__Bootstrap *b, lg_error_t *err)
{
    if (b->admin == NULL || b->admin->address == NULL)
        return 0; /* Envoy runs without an admin listener when none is configured */
    const Envoy__Config__Core__V3__Address *a = b->admin->address;
    if (a->address_case == ENVOY__CONFIG__CORE__V3__ADDRESS__ADDRESS_PIPE) {
        if (lg_admin_start_pipe(a->pipe->path, a->pipe->mode, err) != 0)
            return -1;
    } else {
        struct sockaddr_storage ss;
        socklen_t len;
        if (lg_address_from_proto(a, &ss, &len, err) != 0)
            return lg_error_prefix(err, "admin.address");
        if (lg_admin_start(a->socket_address->address, (uint16_t)a->socket_address->port_value, err) != 0)
            return -1;
    }
    if (srv.opts.admin_address_path != NULL && lg_admin_write_address_file(srv.opts.admin_address_path, err) != 0)
        return -1;
    return 0;
}

static ProtobufCMessage *load_bootstrap(const lg_options_t *o, lg_error_t *err)
{
    int flags = (o->allow_unknown_static_fields ? LG_PBJSON_ALLOW_UNKNOWN_FIELDS : 0) |
                (o->mode == LG_MODE_VALIDATE ? LG_PBJSON_COLLECT_UNKNOWN_FIELDS : 0);
    return lg_pbjson_load_file(&envoy__config__bootstrap__v3__bootstrap__descriptor, o->config_path, o->config_yaml, flags, err);
}

static int apply_component_levels(const char *spec, lg_error_t *err)
{
    char *copy = lg_strdup(spec), *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
        char *colon = strchr(tok, ':');
        int level = colon != NULL ? lg_log_level_parse(colon + 1) : -1;
        size_t c;
        if (colon != NULL)
            *colon = '\0';
        for (c = 0; c != LG_LOGC__COUNT; ++c)
            if (strcmp(lg_log_component_names[c], tok) == 0)
                break;
        if (level < 0 || c == LG_LOGC__COUNT) {
            lg_error(err, "error: invalid component specified '%s'", tok);
            free(copy);
            return -1;
        }
        lg_log_levels[c] = (lg_log_level_t)level;
    }
    free(copy);
    return 0;
}

static void server_info_json(const lg_options_t *o, const Envoy__Config__Bootstrap__V3__Bootstrap *b)
{
    lg_strbuf_t cli = {NULL}, node = {NULL};
    lg_strbuf_puts(&cli, "{\"concurrency\":");
    lg_strbuf_printf(&cli, "%u,\"config_path\":", o->concurrency);
    lg_strbuf_json_string(&cli, o->config_path ? o->config_path : "", o->config_path ? strlen(o->config_path) : 0);
    lg_strbuf_puts(&cli, ",\"config_yaml\":");
    lg_strbuf_json_string(&cli, o->config_yaml ? o->config_yaml : "", o->config_yaml ? strlen(o->config_yaml) : 0);
    lg_strbuf_printf(&cli, ",\"log_level\":\"%s\",\"drain_time\":\"%us\",\"parent_shutdown_time\":\"%us\",\"mode\":\"%s\"",
                     lg_log_level_name(o->log_level), o->drain_time_s, o->parent_shutdown_time_s,
                     o->mode == LG_MODE_SERVE      ? "Serve"
                     : o->mode == LG_MODE_VALIDATE ? "Validate"
                                                   : "InitOnly");
    lg_strbuf_printf(&cli, ",\"disable_hot_restart\":%s,\"file_flush_interval\":\"%.3fs\"}",
                     o->disable_hot_restart ? "true" : "false", o->file_flush_interval_msec / 1000.0);
    if (b->node != NULL)
        lg_pbjson_encode(&node, &b->node->base, 0);
    else
        lg_strbuf_puts(&node, "{}");
    lg_admin_set_server_info(lg_version_string, "disabled", cli.base, node.base);
    lg_strbuf_free(&cli);
    lg_strbuf_free(&node);
}

/* Envoy's node fields from the command line override the bootstrap's. */
static void apply_node_flags(const lg_options_t *o, Envoy__Config__Bootstrap__V3__Bootstrap *b)
{
    if (o->service_node == NULL && o->service_cluster == NULL && o->service_zone == NULL)
        return;
    if (b->node == NULL) {
        b->node = lg_malloc(sizeof(*b->node));
        envoy__config__core__v3__node__init(b->node);
    }
    if (o->service_node != NULL) {
        if (b->node->id != protobuf_c_empty_string)
            free(b->node->id);
        b->node->id = lg_strdup(o->service_node);
    }
    if (o->service_cluster != NULL) {
        if (b->node->cluster != protobuf_c_empty_string)
            free(b->node->cluster);
        b->node->cluster = lg_strdup(o->service_cluster);
    }
    if (o->service_zone != NULL) {
        if (b->node->locality == NULL) {
            b->node->locality = lg_malloc(sizeof(*b->node->locality));
            envoy__config__core__v3__locality__init(b->node->locality);
        }
        if (b->node->locality->zone != protobuf_c_empty_string)
            free(b->node->locality->zone);
        b->node->locality->zone = lg_strdup(o->service_zone);
    }
}

static void go_live(void)
{
    lg_stats_gauge_set(srv.listener_manager_stats, LG_LISTENER_MANAGER_STAT_workers_started, 1);
    lg_stats_server_set_state(LG_SERVER_LIVE);
    LG_INFO(main, "server live");
}

/* The control thread decodes and compiles config updates; when it shares a
 * core with a worker (a pod with one CPU), a 10,000-cluster push keeps it busy
 * for a tenth of a second. By default it runs at nice +10, so that a contended
 * core goes mostly to traffic while updates still get about a tenth of it when
 * every worker is saturated (Envoy's main thread runs at the workers'
 * priority: --control-thread-priority normal). With `idle` it runs SCHED_IDLE:
 * a worker that wakes preempts it at once. On the bench machine that lowers
 * the p99 of requests during back-to-back 10,000-route RDS pushes on a shared
 * core from ~4.4 ms to 2.0-2.8 ms (idle p99 1.0-1.5 ms; bench/README.md,
 * "Control thread priority (session 6)"), but a saturated core leaves the
 * control thread ~0.3% of it, so updates wait while every worker is busy.
 * In the other modes a waking worker would still wait for the end of the
 * control thread's time slice (EEVDF), up to 5 ms: while the control thread
 * works on an update, its preemption tick (preempt.c) lets the scheduler pick
 * again every 200 µs. Scheduling is per thread: workers, the admin thread and the access log
 * flusher started earlier keep theirs; threads started later by this one
 * inherit it (gRPC core's, which receive and frame the xDS streams: a 10,000-
 * cluster push is megabytes of them), and an unprivileged thread cannot take
 * it back. */
static void yield_to_workers(lg_control_priority_t prio)
{
    pid_t tid = (pid_t)syscall(SYS_gettid);
    /* SCHED_IDLE is preempted by a waking worker at once; the others need the tick (preempt.c) */
    if (prio != LG_CONTROL_PRIORITY_IDLE && lg_preempt_tick_init() != 0)
        LG_WARN(main, "the control thread's preemption tick: %s", strerror(errno));
    if (prio == LG_CONTROL_PRIORITY_IDLE) {
        struct sched_param param = {0};
        lg_access_log_start(); /* the flusher must not inherit SCHED_IDLE */
        if (sched_setscheduler(0, SCHED_IDLE, &param) != 0)
            LG_WARN(main, "--control-thread-priority idle: sched_setscheduler: %s", strerror(errno));
        return;
    }
    if (prio != LG_CONTROL_PRIORITY_NICE)
        return;
    errno = 0;
    int nice = getpriority(PRIO_PROCESS, (id_t)tid);
    if (errno == 0 && setpriority(PRIO_PROCESS, (id_t)tid, nice + 10 > 19 ? 19 : nice + 10) != 0)
        LG_DEBUG(main, "setpriority: %s", strerror(errno));
}

/* The overload actions' values, to every worker when they changed. */
static void post_overload(void)
{
    double values[LG_OVERLOAD__WORKER_ACTIONS];
    if (!lg_overload_refresh(lg_now_ms(), values))
        return;
    for (size_t k = 0; k != srv.n_workers; ++k) {
        worker_msg_t *m = lg_calloc(1, sizeof(*m));
        m->type = MSG_OVERLOAD;
        memcpy(m->overload, values, sizeof(values));
        h2o_multithread_send_message(&srv.workers[k].config_receiver, &m->super);
    }
}

/* The control thread's loop: xDS (up to 50 ms per poll), then signals. */
static void control_loop(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGHUP);
    uint64_t drain_deadline = 0, next_tls_check = 0;
    int live = 0;
    for (;;) {
        struct timespec ts = {0, 0};
        lg_preempt_tick_stop(); /* the xDS code starts it when there is work */
        lg_runtime_poll();      /* before the xDS poll, which publishes a new runtime */
        lg_xds_poll(srv.xds, 50);
        lg_snapshot_collect();
        free_retired_views();
        if (lg_now_ms() >= next_tls_check) {
            lg_tls_reload_poll(); /* certificate files that changed */
            next_tls_check = lg_now_ms() + 1000;
        }
        if (!live && drain_deadline == 0 && lg_xds_initialized(srv.xds)) {
            live = 1;
            go_live();
        }
        int sig = sigtimedwait(&set, NULL, &ts);
        if (sig == SIGUSR1) {
            lg_log_reopen();
            lg_access_log_reopen();
        } else if ((sig == SIGTERM || sig == SIGINT) && drain_deadline == 0) {
            LG_INFO(main, "caught %s: draining for up to %us", sig == SIGTERM ? "SIGTERM" : "SIGINT", srv.opts.drain_time_s);
            lg_stats_server_set_state(LG_SERVER_DRAINING);
            __atomic_store_n(&srv.drain_started, 1, __ATOMIC_RELEASE);
            drain_deadline = drain_end();
            for (size_t k = 0; k != srv.n_workers; ++k)
                post(srv.workers + k, MSG_DRAIN, NULL, drain_deadline);
        } else if (sig == SIGTERM || sig == SIGINT) {
            LG_INFO(main, "caught a second signal: exiting now");
            return;
        }
        expire_listener_drains(lg_now_ms());
        post_overload();
        if (srv.quit) {
            LG_INFO(main, "shutting down: /quitquitquit");
            return;
        }
        if (drain_deadline != 0 && (total_connections() == 0 || lg_now_ms() >= drain_deadline))
            return;
    }
}

int lg_server_run(const lg_options_t *o)
{
    lg_error_t err = {{0}};
    srv.opts = *o;
    signal(SIGPIPE, SIG_IGN);
    /* before any thread starts: gRPC core (xDS) reads it at grpc_init; its
     * c-ares resolver leaks a few bytes per process, getaddrinfo does not */
    setenv("GRPC_DNS_RESOLVER", "native", 0);
    srv.n_workers = o->concurrency;
    srv.start_wall_us = lg_wall_us();
    lg_log_levels[0] = o->log_level;
    for (size_t c = 0; c != LG_LOGC__COUNT; ++c)
        lg_log_levels[c] = o->log_level;
    if (o->component_log_level != NULL && apply_component_levels(o->component_log_level, &err) != 0)
        goto fail_early;
    if (lg_log_configure(o->log_format, o->log_path, &err) != 0)
        goto fail_early;
    lg_access_log_configure(srv.n_workers, o->file_flush_interval_msec); /* access logs: before any config compiles */
    lg_stats_init(srv.n_workers);
    /* a fixed threshold: big transient buffers (config files, /stats of 10,000 clusters)
     * are mmapped and go back to the system when freed, instead of glibc raising the
     * threshold after the first one and keeping the next ones in the heap */
    mallopt(M_MMAP_THRESHOLD, 256 << 10);

    ProtobufCMessage *bootstrap = load_bootstrap(o, &err);
    if (bootstrap == NULL)
        goto fail_config;
    Envoy__Config__Bootstrap__V3__Bootstrap *b = (Envoy__Config__Bootstrap__V3__Bootstrap *)bootstrap;
    apply_node_flags(o, b);
    /* runtime (layered_runtime): before the snapshot, which carries it */
    if (lg_runtime_init(b->layered_runtime, b->node != NULL ? b->node->cluster : NULL, &err) != 0) {
        protobuf_c_message_free_unpacked(bootstrap, NULL);
        goto fail_config;
    }
    if (lg_overload_configure(b->overload_manager, &err) != 0) {
        lg_runtime_shutdown();
        protobuf_c_message_free_unpacked(bootstrap, NULL);
        goto fail_config;
    }
    lg_snapshot_t *snap = lg_snapshot_compile_bootstrap(bootstrap, o, &err);
    if (snap == NULL) {
        lg_runtime_shutdown();
        protobuf_c_message_free_unpacked(bootstrap, NULL);
        goto fail_config;
    }
    if (o->mode == LG_MODE_VALIDATE) {
        lg_xds_t *x = lg_xds_new(b, o, snap, &err);
        lg_xds_free(x);
        lg_snapshot_unref(snap);
        lg_runtime_shutdown();
        protobuf_c_message_free_unpacked(bootstrap, NULL);
        if (x == NULL)
            goto fail_config;
        printf("configuration '%s' OK\n", o->config_path != NULL ? o->config_path : "(--config-yaml)");
        lg_access_log_shutdown();
        lg_overload_shutdown();
        lg_stats_shutdown();
        return 0;
    }
    srv.server_stats = lg_stats_server;
    srv.listener_manager_stats = lg_stats_listener_manager;
    srv.cluster_manager_stats = lg_stats_cluster_manager;
    lg_stats_gauge_set(srv.server_stats, LG_SERVER_STAT_concurrency, srv.n_workers);
    lg_stats_gauge_set(srv.server_stats, LG_SERVER_STAT_hot_restart_epoch, o->restart_epoch);
    /* Envoy's server.version: the first 6 hex digits of the build's revision as a number */
    char rev[7];
    memcpy(rev, lg_version_string, 6);
    rev[6] = '\0';
    lg_stats_gauge_set(srv.server_stats, LG_SERVER_STAT_version, strtoull(rev, NULL, 16));
    lg_stats_server_set_state(LG_SERVER_PRE_INITIALIZING);
    server_info_json(o, b);
    size_t failed;
    if (lg_server_publish(snap, &failed, &err) != 0)
        goto fail_early_config;
    lg_snapshot_unref(snap);
    if ((srv.xds = lg_xds_new(b, o, snap, &err)) == NULL)
        goto fail_early_config;
    /* compiled and subscribed: the static clusters are kept as their wire bytes
     * (/config_dump, envoy_grpc targets), not as ~1.2 KB unpacked messages each */
    if (b->static_resources != NULL)
        lg_pb_compact_repeated(&b->static_resources->base, "clusters");
    malloc_trim(0); /* the pages of what loading and compiling freed */
    /* blocked in every thread (admin, workers, gRPC's) before any starts: the control loop takes them */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    register_admin();
    if (start_admin(b, &err) != 0)
        goto fail_running;

    lg_stats_server_set_state(LG_SERVER_INITIALIZING);
    start_workers(snap);
    for (size_t i = 0; i != snap->n_listeners; ++i) {
        lg_stats_control_add(srv.listener_manager_stats, LG_LISTENER_MANAGER_STAT_listener_added, 1);
        lg_stats_control_add(srv.listener_manager_stats, LG_LISTENER_MANAGER_STAT_listener_create_success, srv.n_workers);
    }
    lg_stats_control_add(srv.cluster_manager_stats, LG_CLUSTER_MANAGER_STAT_cluster_added, (int64_t)snap->n_clusters);
    /* before the first subscription starts gRPC core, whose threads (they read
     * and frame the xDS streams) inherit this thread's priority */
    yield_to_workers(o->control_thread_priority);
    lg_xds_start(srv.xds);
    control_loop();
    lg_preempt_tick_stop();

    lg_stats_server_set_state(LG_SERVER_DRAINING);
    stop_workers();
    lg_snapshot_collect();
    free_retired_views();
    lg_admin_stop();
    lg_xds_free(srv.xds);
    lg_access_log_shutdown(); /* access logs: after the workers, which write them, and xDS, which compiles them */
    pthread_mutex_lock(&srv.snapshot_mutex);
    lg_snapshot_unref(srv.snapshot);
    srv.snapshot = NULL;
    pthread_mutex_unlock(&srv.snapshot_mutex);
    lg_runtime_shutdown();
    protobuf_c_message_free_unpacked(bootstrap, NULL);
    free(srv.gauge_drains.entries);
    lg_overload_shutdown();
    lg_stats_shutdown();
    LG_INFO(main, "exiting");
    return 0;

fail_early_config:
    LG_CRITICAL(main, "error initializing configuration '%s': %s", o->config_path ? o->config_path : "", err.msg);
    fprintf(stderr, "error initializing configuration '%s': %s\n", o->config_path ? o->config_path : "", err.msg);
    _exit(1);
fail_running:
    LG_CRITICAL(main, "error initializing configuration '%s': %s", o->config_path ? o->config_path : "", err.msg);
    fprintf(stderr, "error initializing configuration '%s': %s\n", o->config_path ? o->config_path : "", err.msg);
    lg_admin_stop();
    _exit(1);
fail_config:
    fprintf(stderr, "error initializing configuration '%s': %s\n", o->config_path ? o->config_path : "", err.msg);
    lg_access_log_shutdown();
    lg_overload_shutdown();
    lg_stats_shutdown();
    return 1;
fail_early:
    fprintf(stderr, "%s\n", err.msg);
    return 1;
}
