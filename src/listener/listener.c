/*
 * Listening sockets and accepted connections: one SO_REUSEPORT socket per
 * listener per worker (the kernel spreads connections over the workers),
 * listener filters (tls_inspector), filter chain selection, the TLS
 * handshake, and the codec choice of HTTP connection managers with
 * codec_type AUTO (ALPN over TLS, else the HTTP/2 preface).
 */
#define _GNU_SOURCE /* accept4 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include "legate/access_log.h"
#include "legate/listener.h"
#include "legate/listener_runtime.h"
#include "legate/overload.h"
#include "legate/runtime.h"
#include "legate/server.h"
#include "legate/stats.h"
#include "legate/tcp_proxy.h"
#include "legate/address.h"
#include "legate/timer.h"
#include "legate/tls.h"

#define H2_PREFACE "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

int lg_listen_socket_open(const lg_listener_config_t *l, lg_error_t *err)
{
    int fd = socket(l->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), on = 1;
    if (fd < 0)
        return lg_error(err, "cannot create socket for '%s': %s", l->address_str, strerror(errno));
    if (l->addr.ss_family != AF_UNIX) {
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof(on));
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on)); /* accepted connections inherit it */
        if (l->addr.ss_family == AF_INET6)
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof(on));
    } else {
        const struct sockaddr_un *sun = (const struct sockaddr_un *)&l->addr;
        if (sun->sun_path[0] != '\0')
            unlink(sun->sun_path);
    }
    if (bind(fd, (const struct sockaddr *)&l->addr, l->addrlen) != 0) {
        lg_error(err, "cannot bind '%s': %s", l->address_str, strerror(errno));
        close(fd);
        return -1;
    }
    if (listen(fd, 4096) != 0) {
        lg_error(err, "cannot listen on '%s': %s", l->address_str, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

static void start_hcm(lg_worker_t *w, lg_listener_config_t *l, const lg_filter_chain_t *chain, lg_snapshot_t *snap,
                      h2o_socket_t *sock, int version, const struct sockaddr_storage *local, const struct sockaddr_storage *remote,
                      const uint64_t *counted_start_ms)
{
    lg_hcm_conn_new(w, l, chain->hcm, snap, sock, version, (const struct sockaddr *)local, (const struct sockaddr *)remote,
                    counted_start_ms);
}

/* ---- listener.<address>.downstream_cx_* ---- */

/* A connection as its listener counts it (Envoy's ActiveTcpConnection): from
 * its filter chain match until its socket is disposed, whoever owns the
 * socket by then (HCM, tcp_proxy, or the handshake that failed). It holds a
 * reference to the stats block, as the socket may outlive its listener. */
typedef struct st_counted_conn_t {
    lg_stats_block_t *stats;
    size_t row;
    uint64_t start_ms;
    int logged; /* a logged_conn_t */
} counted_conn_t;

/* A counted connection of a listener with access logs: what its entry needs
 * at close. The snapshot (a reference) keeps the listener and its logs. */
typedef struct st_logged_conn_t {
    counted_conn_t counted;
    lg_worker_t *worker;
    lg_snapshot_t *snapshot;
    const lg_listener_config_t *listener;
    uint64_t start_us, start_wall_us;
    struct sockaddr_storage local, remote;
} logged_conn_t;

/* Envoy's listener access log entry: a connection-level stream info (no request). */
static void emit_listener_log(const lg_listener_config_t *l, const struct sockaddr_storage *local,
                              const struct sockaddr_storage *remote, uint64_t start_us, uint64_t start_wall_us, uint32_t flags)
{
    lg_stream_info_t info;
    memset(&info, 0, sizeof(info));
    info.connection_id = lg_server_next_connection_id();
    info.start_us = start_us;
    info.start_wall_us = start_wall_us;
    info.downstream_local = *local;
    info.downstream_remote = *remote;
    info.downstream_direct_remote = *remote;
    info.response_flags = flags;
    lg_access_logs_emit(l->access_logs, &info);
}

/* this worker's sockets still counted (lg_listener_counted_sockets) */
static __thread size_t n_counted;

static void on_counted_close(void *data)
{
    counted_conn_t *cc = data;
    if (cc->logged) {
        logged_conn_t *lc = (logged_conn_t *)cc;
        emit_listener_log(lc->listener, &lc->local, &lc->remote, lc->start_us, lc->start_wall_us, 0);
        lg_snapshot_release(lc->worker, lc->snapshot);
    }
    LG_STAT_DEC(cc->stats, cc->row, LG_LISTENER_STAT_downstream_cx_active);
    LG_STAT_INC(cc->stats, cc->row, LG_LISTENER_STAT_downstream_cx_destroy);
    LG_STAT_DEC(lg_stats_server, cc->row, LG_SERVER_STAT_total_connections);
    lg_stats_histogram_record(cc->stats, cc->row, LG_LISTENER_STAT_downstream_cx_length_ms, lg_now_ms() - cc->start_ms);
    lg_stats_block_release(cc->stats);
    free(cc);
    --n_counted;
}

/* The start of a count (both ways of counting). */
static void count_start(lg_worker_t *w, lg_listener_config_t *l)
{
    LG_STAT_INC(l->stats, w->index, LG_LISTENER_STAT_downstream_cx_total);
    LG_STAT_INC(l->stats, w->index, LG_LISTENER_STAT_downstream_cx_active);
    LG_STAT_INC(lg_stats_server, w->index, LG_SERVER_STAT_total_connections);
    ++n_counted;
}

void lg_listener_uncount(const lg_listener_config_t *l, lg_worker_t *w, uint64_t start_ms)
{
    LG_STAT_DEC(l->stats, w->index, LG_LISTENER_STAT_downstream_cx_active);
    LG_STAT_INC(l->stats, w->index, LG_LISTENER_STAT_downstream_cx_destroy);
    LG_STAT_DEC(lg_stats_server, w->index, LG_SERVER_STAT_total_connections);
    lg_stats_histogram_record(l->stats, w->index, LG_LISTENER_STAT_downstream_cx_length_ms, lg_now_ms() - start_ms);
    --n_counted;
}

/* Hooks a counted_conn_t on the socket for a count started at `start_ms`. */
static void count_on_socket(lg_worker_t *w, lg_listener_config_t *l, h2o_socket_t *sock, const logged_conn_t *log,
                            uint64_t start_ms);

/* `log` (NULL: the listener has no access log) is the connection's entry to be. */
static void count_conn(lg_worker_t *w, lg_listener_config_t *l, h2o_socket_t *sock, const logged_conn_t *log)
{
    count_start(w, l);
    count_on_socket(w, l, sock, log, lg_now_ms());
}

static void count_on_socket(lg_worker_t *w, lg_listener_config_t *l, h2o_socket_t *sock, const logged_conn_t *log,
                            uint64_t start_ms)
{
    counted_conn_t *cc;
    if (log != NULL) {
        logged_conn_t *lc = lg_malloc(sizeof(*lc));
        *lc = *log;
        lg_snapshot_hold(w, lc->snapshot);
        cc = &lc->counted;
    } else {
        cc = lg_malloc(sizeof(*cc));
    }
    lg_stats_block_retain(l->stats);
    *cc = (counted_conn_t){l->stats, w->index, start_ms, log != NULL};
    sock->on_close.cb = on_counted_close;
    sock->on_close.data = cc;
}

size_t lg_listener_counted_sockets(void)
{
    return n_counted;
}

/* ---- from accept to the network filter ---- */

/* A connection between accept and its network filter: listener filters
 * (tls_inspector), filter chain selection, the TLS handshake and, for an
 * HTTP connection manager with codec_type AUTO, the codec choice. It holds
 * its snapshot (and so its listener and chain) until it is handed over. */
typedef struct st_pending_conn_t {
    lg_worker_t *worker;
    lg_listener_config_t *listener;
    lg_snapshot_t *snapshot;
    h2o_socket_t *sock;
    struct sockaddr_storage local, remote;
    const lg_filter_chain_t *chain;
    lg_tls_context_t *tls;            /* during the handshake */
    SSL_CTX *ssl_ctx;                 /* during the handshake */
    lg_timer_t timer;                 /* listener_filters_timeout, then transport_socket_connect_timeout */
    char server_name[256];            /* what tls_inspector found ("" = none) */
    h2o_linklist_t link;              /* in this worker's pending list */
    uint64_t start_us, start_wall_us; /* the accept, for the listener's access log */
    /* Counted here rather than by a counted_conn_t on the socket (a plain TCP
     * connection to an HCM, no listener access log): the count goes to an
     * HTTP/1.1 connection, which ends it when it closes its socket (at once,
     * without TLS); HTTP/2 gets a counted_conn_t at the hand-over. */
    uint64_t counted_start_ms;
    int counted_inline;
    int inspecting; /* in listener.<address>.downstream_pre_cx_active (tls_inspector at work) */
} pending_conn_t;

/* What tls_inspector may buffer before giving up (Envoy's limit). */
#define CLIENT_HELLO_MAX (64 * 1024)

/* this worker's pending connections (initialized on first use) */
static __thread h2o_linklist_t pending_conns;

/* Freed pending connections kept for the next accepts: each lives only until
 * its hand-over, and freeing it between a connection's long-lived objects
 * would leave a hole per connection in the heap. */
#define PENDING_CACHE_MAX 64
static __thread pending_conn_t *pending_cache[PENDING_CACHE_MAX];
static __thread size_t n_pending_cache;

static pending_conn_t *pending_alloc(void)
{
    if (n_pending_cache == 0)
        return lg_calloc(1, sizeof(pending_conn_t));
    pending_conn_t *p = pending_cache[--n_pending_cache];
    memset(p, 0, sizeof(*p));
    return p;
}

static void pending_dispose(pending_conn_t *p)
{
    if (n_pending_cache == PENDING_CACHE_MAX)
        free(p);
    else
        pending_cache[n_pending_cache++] = p;
}

static void sniff_codec(pending_conn_t *p);

/* The connection's local address without a getsockname when the listener is
 * bound to one address and port (what getsockname would answer; a transparent
 * listener, not supported yet, would need the call: its connections keep their
 * original destination). */
static void local_address(const lg_listener_config_t *l, int fd, struct sockaddr_storage *local)
{
    socklen_t len = sizeof(*local);
    switch (l->addr.ss_family) {
    case AF_UNIX:
        *local = l->addr;
        return;
    case AF_INET: {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)&l->addr;
        if (sin->sin_addr.s_addr != htonl(INADDR_ANY) && sin->sin_port != 0) {
            *local = l->addr;
            return;
        }
        break;
    }
    case AF_INET6: {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&l->addr;
        if (!IN6_IS_ADDR_UNSPECIFIED(&sin6->sin6_addr) && sin6->sin6_port != 0) {
            *local = l->addr;
            return;
        }
        break;
    }
    }
    getsockname(fd, (struct sockaddr *)local, &len);
}

static pending_conn_t *pending_new(lg_worker_t *w, lg_listener_config_t *l, lg_snapshot_t *snap, h2o_socket_t *sock,
                                   const struct sockaddr_storage *remote)
{
    pending_conn_t *p = pending_alloc();
    p->worker = w;
    p->listener = l;
    p->snapshot = snap;
    p->sock = sock;
    if (l->access_logs != NULL) {
        p->start_us = lg_now_us();
        p->start_wall_us = lg_wall_us();
    }
    lg_snapshot_hold(w, snap);
    local_address(l, h2o_socket_get_fd(sock), &p->local);
    p->remote = *remote;
    if (l->addr.ss_family == AF_UNIX)
        p->remote.ss_family = AF_UNIX;
    sock->data = p;
    if (pending_conns.next == NULL)
        h2o_linklist_init_anchor(&pending_conns);
    h2o_linklist_insert(&pending_conns, &p->link);
    return p;
}

/* Forgets p; the socket now belongs to someone else (or is closed when `close_sock`). */
static void end_inspection(pending_conn_t *p);

static void pending_free(pending_conn_t *p, int close_sock)
{
    end_inspection(p);
    lg_timer_stop(&p->timer);
    h2o_linklist_unlink(&p->link);
    if (p->ssl_ctx != NULL)
        SSL_CTX_free(p->ssl_ctx);
    lg_tls_context_release(p->tls);
    if (close_sock) {
        h2o_socket_read_stop(p->sock);
        p->sock->data = NULL;
        h2o_socket_close(p->sock);
        if (p->counted_inline)
            lg_listener_uncount(p->listener, p->worker, p->counted_start_ms);
    }
    lg_snapshot_release(p->worker, p->snapshot);
    pending_dispose(p);
}

void lg_listener_close_pending(void)
{
    lg_hcm_thread_exit(); /* its trim timer must not outlive the loop */
    while (pending_conns.next != NULL && !h2o_linklist_is_empty(&pending_conns))
        pending_free(H2O_STRUCT_FROM_MEMBER(pending_conn_t, link, pending_conns.next), 1);
    while (n_pending_cache != 0)
        free(pending_cache[--n_pending_cache]);
}

static void hand_over_hcm(pending_conn_t *p, int version)
{
    h2o_socket_t *sock = p->sock;
    if (p->counted_inline && version != LG_HTTP_11) {
        /* an HTTP/2 connection lets its socket linger after it closes */
        count_on_socket(p->worker, p->listener, sock, NULL, p->counted_start_ms);
        p->counted_inline = 0;
    }
    h2o_socket_read_stop(sock);
    sock->data = NULL;
    start_hcm(p->worker, p->listener, p->chain, p->snapshot, sock, version, &p->local, &p->remote,
              p->counted_inline ? &p->counted_start_ms : NULL);
    pending_free(p, 0);
}

/* The chain's network filter takes the connection. */
static void start_network_filter(pending_conn_t *p)
{
    const lg_filter_chain_t *chain = p->chain;
    if (chain->kind == LG_NETWORK_FILTER_TCP_PROXY) {
        /* bytes are relayed as they are (TLS passes through when the chain does not terminate it) */
        h2o_socket_t *sock = p->sock;
        h2o_socket_read_stop(sock);
        sock->data = NULL;
        lg_tcp_proxy_conn_new(p->worker, p->listener, chain->tcp_proxy, p->snapshot, sock, &p->local, &p->remote,
                              p->server_name[0] != '\0' ? p->server_name : NULL);
        pending_free(p, 0);
        return;
    }
    switch (chain->hcm->codec_type) {
    case LG_CODEC_HTTP1:
        hand_over_hcm(p, LG_HTTP_11);
        break;
    case LG_CODEC_HTTP2:
        hand_over_hcm(p, LG_HTTP_2);
        break;
    case LG_CODEC_AUTO: {
        /* over TLS, ALPN decides when it was negotiated; otherwise the preface does */
        h2o_iovec_t alpn = lg_tls_alpn(p->sock);
        if (h2o_memis(alpn.base, alpn.len, H2O_STRLIT("h2")))
            hand_over_hcm(p, LG_HTTP_2);
        else if (alpn.len != 0)
            hand_over_hcm(p, LG_HTTP_11);
        else
            sniff_codec(p);
        break;
    }
    }
}

static void on_sniff_read(h2o_socket_t *sock, const char *err)
{
    pending_conn_t *p = sock->data;
    if (err != NULL) {
        pending_free(p, 1);
        return;
    }
    size_t n = sock->input->size < sizeof(H2_PREFACE) - 1 ? sock->input->size : sizeof(H2_PREFACE) - 1;
    int is_h2 = memcmp(sock->input->bytes, H2_PREFACE, n) == 0;
    if (is_h2 && n < sizeof(H2_PREFACE) - 1)
        return; /* could still be either */
    hand_over_hcm(p, is_h2 ? LG_HTTP_2 : LG_HTTP_11);
}

/* Bytes already read (by tls_inspector, or decrypted with the last handshake
 * record) are looked at first: no read event would announce them. */
static void sniff_codec(pending_conn_t *p)
{
    h2o_socket_read_start(p->sock, on_sniff_read);
    if (p->sock->input->size != 0)
        on_sniff_read(p->sock, NULL);
}

static void on_handshake_timeout(lg_timer_t *t)
{
    pending_conn_t *p = H2O_STRUCT_FROM_MEMBER(pending_conn_t, timer, t);
    LG_DEBUG(connection, "closing connection from %s: transport socket connect timeout", p->listener->address_str);
    pending_free(p, 1);
}

static void on_handshake(h2o_socket_t *sock, const char *err)
{
    pending_conn_t *p = sock->data;
    char reason[512];
    lg_timer_stop(&p->timer);
    if (lg_tls_handshake_done(p->tls, sock, err, reason, sizeof(reason)) != 0) {
        char addr[128];
        lg_address_format((struct sockaddr *)&p->remote, sizeof(p->remote), addr, sizeof(addr));
        LG_DEBUG(connection, "remote address:%s,%s", addr, reason[0] != '\0' ? reason : err != NULL ? err : "handshake failed");
        lg_tls_send_pending_alert(sock);
        pending_free(p, 1);
        return;
    }
    SSL_CTX_free(p->ssl_ctx);
    p->ssl_ctx = NULL;
    lg_tls_context_release(p->tls);
    p->tls = NULL;
    start_network_filter(p);
}

/* Terminates TLS with the chain's context; h2o takes the bytes already read
 * as the start of the handshake. on_handshake may run before this returns. */
static void start_handshake(pending_conn_t *p)
{
    p->tls = lg_tls_context_addref(p->chain->tls);
    p->ssl_ctx = lg_tls_context_ssl_ctx(p->tls);
    if (p->chain->transport_socket_connect_timeout_ms != 0)
        lg_timer_start(&p->worker->loop, &p->timer, p->chain->transport_socket_connect_timeout_ms, on_handshake_timeout);
    h2o_socket_ssl_handshake(p->sock, p->ssl_ctx, NULL, on_handshake);
}

/* Matches the filter chain with what is known of the connection, then sets
 * up its transport socket. `hello` is the ClientHello tls_inspector parsed, or NULL. */
/* The listener filters are done with the socket (Envoy's ActiveTcpSocket leaving downstream_pre_cx_active). */
static void end_inspection(pending_conn_t *p)
{
    if (p->inspecting) {
        p->inspecting = 0;
        LG_STAT_DEC(p->listener->stats, p->worker->index, LG_LISTENER_STAT_downstream_pre_cx_active);
    }
}

static void select_chain(pending_conn_t *p, const lg_tls_client_hello_t *hello)
{
    lg_listener_config_t *l = p->listener;
    end_inspection(p);
    h2o_socket_read_stop(p->sock);
    lg_timer_stop(&p->timer);
    lg_conn_match_info_t mi = {(struct sockaddr *)&p->local, (struct sockaddr *)&p->remote, NULL, "raw_buffer", NULL, 0};
    if (hello != NULL) {
        mi.server_name = hello->server_name[0] != '\0' ? hello->server_name : NULL;
        mi.transport_protocol = "tls";
        mi.alpn = hello->alpn;
        mi.n_alpn = hello->n_alpn;
        memcpy(p->server_name, hello->server_name, sizeof(p->server_name));
    }
    if ((p->chain = lg_listener_match_chain(l, &mi)) == NULL) {
        LG_STAT_INC(l->stats, p->worker->index, LG_LISTENER_STAT_no_filter_chain_match);
        LG_DEBUG(conn_handler, "closing connection from %s: no matching filter chain found", l->address_str);
        if (l->access_logs != NULL)
            emit_listener_log(l, &p->local, &p->remote, p->start_us, p->start_wall_us, LG_RF(NO_ROUTE_FOUND));
        pending_free(p, 1);
        return;
    }
    if (l->access_logs != NULL) {
        logged_conn_t log = {.worker = p->worker,
                             .snapshot = p->snapshot,
                             .listener = l,
                             .start_us = p->start_us,
                             .start_wall_us = p->start_wall_us,
                             .local = p->local,
                             .remote = p->remote};
        count_conn(p->worker, l, p->sock, &log);
    } else if (p->chain->kind == LG_NETWORK_FILTER_HCM && p->chain->tls == NULL) {
        count_start(p->worker, l);
        p->counted_start_ms = lg_now_ms();
        p->counted_inline = 1;
    } else {
        count_conn(p->worker, l, p->sock, NULL);
    }
    if (p->chain->tls != NULL)
        start_handshake(p);
    else
        start_network_filter(p);
}

static void inspector_count(pending_conn_t *p, size_t idx)
{
    LG_STAT_INC(p->listener->tls_inspector_stats, p->worker->index, idx);
}

static void on_inspect_read(h2o_socket_t *sock, const char *err)
{
    pending_conn_t *p = sock->data;
    lg_tls_client_hello_t hello;
    if (err != NULL) {
        pending_free(p, 1);
        return;
    }
    switch (lg_tls_client_hello_parse((const uint8_t *)sock->input->bytes, sock->input->size, CLIENT_HELLO_MAX, &hello)) {
    case LG_TLS_HELLO_NEED_MORE:
        if (sock->input->size <= CLIENT_HELLO_MAX + 5 * (CLIENT_HELLO_MAX / 16384 + 1))
            return;
        /* fallthrough */
    case LG_TLS_HELLO_TOO_LARGE:
        inspector_count(p, LG_TLS_INSPECTOR_STAT_client_hello_too_large);
        pending_free(p, 1);
        return;
    case LG_TLS_HELLO_NOT_TLS:
        inspector_count(p, LG_TLS_INSPECTOR_STAT_tls_not_found);
        select_chain(p, NULL);
        return;
    case LG_TLS_HELLO_FOUND:
        inspector_count(p, LG_TLS_INSPECTOR_STAT_tls_found);
        inspector_count(p, hello.n_alpn != 0 ? LG_TLS_INSPECTOR_STAT_alpn_found : LG_TLS_INSPECTOR_STAT_alpn_not_found);
        inspector_count(p, hello.server_name[0] != '\0' ? LG_TLS_INSPECTOR_STAT_sni_found : LG_TLS_INSPECTOR_STAT_sni_not_found);
        select_chain(p, &hello);
        return;
    }
}

static void on_inspect_timeout(lg_timer_t *t)
{
    pending_conn_t *p = H2O_STRUCT_FROM_MEMBER(pending_conn_t, timer, t);
    LG_DEBUG(conn_handler, "listener filter times out after %" PRIu64 " ms", p->listener->listener_filters_timeout_ms);
    LG_STAT_INC(p->listener->stats, p->worker->index, LG_LISTENER_STAT_downstream_pre_cx_timeout);
    if (p->listener->continue_on_listener_filters_timeout)
        select_chain(p, NULL);
    else
        pending_free(p, 1);
}

/* Envoy's connection limits, in its order: the server's (downstream_global_cx_overflow)
 * from the overload manager's global_downstream_max_connections monitor, else the runtime
 * key overload.global_downstream_max_connections; the overload manager's
 * reject_incoming_connections fraction (downstream_cx_overload_reject); the listener's own,
 * from the runtime (envoy.resource_limits.listener.<name>.connection_limit,
 * downstream_cx_overflow). A listener with bypass_overload_manager skips the first two. The
 * counts are the workers' gauges summed (listener.<address>.downstream_cx_active and
 * server.total_connections): other workers' rows are read without a lock
 * (lg_stats_gauge_sum), so a burst on several workers may pass the limit by a few connections. */
static int over_limit(lg_worker_t *w, lg_listener_config_t *l)
{
    const lg_runtime_t *rt = lg_runtime_current();
    uint64_t max = lg_overload_max_connections();
    if (max == UINT64_MAX)
        max = lg_runtime_get_integer(rt, "overload.global_downstream_max_connections", UINT64_MAX);
    if (!l->bypass_overload_manager && max != UINT64_MAX &&
        lg_stats_gauge_sum(lg_stats_server, LG_SERVER_STAT_total_connections) >= max) {
        LG_STAT_INC(l->stats, w->index, LG_LISTENER_STAT_downstream_global_cx_overflow);
        return 1;
    }
    if (!l->bypass_overload_manager && lg_overload_decide(w->overload[LG_OVERLOAD_REJECT_CONNECTIONS])) {
        LG_STAT_INC(l->stats, w->index, LG_LISTENER_STAT_downstream_cx_overload_reject);
        return 1;
    }
    max = lg_runtime_get_integer(rt, l->connection_limit_key, UINT64_MAX);
    if (max != UINT64_MAX && lg_stats_gauge_sum(l->stats, LG_LISTENER_STAT_downstream_cx_active) >= max) {
        LG_STAT_INC(l->stats, w->index, LG_LISTENER_STAT_downstream_cx_overflow);
        return 1;
    }
    return 0;
}

/* One accepted connection with its peer's address: accept4 answers both (h2o's
 * accept asks the kernel for the address again, and sets TCP_NODELAY, which the
 * listening socket passed on already). */
static h2o_socket_t *accept_one(h2o_socket_t *listener, struct sockaddr_storage *remote)
{
    socklen_t len = sizeof(*remote);
    int fd = accept4(h2o_socket_get_fd(listener), (struct sockaddr *)remote, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0)
        return NULL;
    if (len < sizeof(*remote)) /* an unnamed unix-socket peer fills in only its family */
        memset((char *)remote + len, 0, sizeof(*remote) - len);
    return h2o_evloop_socket_create(h2o_socket_get_loop(listener), fd, H2O_SOCKET_FLAG_IS_ACCEPTED_CONNECTION);
}

void lg_accept_backoff_failed(lg_accept_backoff_t *b, const char *listener, int err)
{
    if (b->failures++ == 0)
        LG_WARN(conn_handler, "accept on %s failed: %s; trying again every %d ms", listener, strerror(err), LG_ACCEPT_BACKOFF_MS);
    else
        LG_DEBUG(conn_handler, "accept on %s failed again: %s (attempt %" PRIu64 ")", listener, strerror(err), b->failures);
}

void lg_accept_backoff_worked(lg_accept_backoff_t *b)
{
    if (b->failures != 0)
        LG_INFO(conn_handler, "accepting connections again after %" PRIu64 " failed attempts", b->failures);
    b->failures = 0;
}

size_t lg_listener_accept(lg_worker_t *w, lg_listener_config_t *l, lg_snapshot_t *snap, h2o_socket_t *listener, int *err)
{
    h2o_socket_t *sock;
    struct sockaddr_storage remote;
    size_t n = 0;
    *err = 0;
    /* a bounded batch per wake-up so that one busy listener cannot starve the loop */
    for (; n != 64; ++n) {
        if ((sock = accept_one(listener, &remote)) == NULL) {
            if (lg_accept_out_of_resources(errno))
                *err = errno;
            break;
        }
        if (over_limit(w, l)) {
            LG_DEBUG(conn_handler, "closing connection from %s: connection limit reached", l->address_str);
            h2o_socket_close(sock);
            continue;
        }
        pending_conn_t *p = pending_new(w, l, snap, sock, &remote);
        if (l->tls_inspector) {
            p->inspecting = 1;
            LG_STAT_INC(l->stats, w->index, LG_LISTENER_STAT_downstream_pre_cx_active);
            if (l->listener_filters_timeout_ms != 0)
                lg_timer_start(&w->loop, &p->timer, l->listener_filters_timeout_ms, on_inspect_timeout);
            h2o_socket_read_start(sock, on_inspect_read);
        } else {
            select_chain(p, NULL);
        }
    }
    return n;
}

int lg_listener_is_tls(const lg_listener_config_t *l)
{
    int tls = l->n_chains != 0 || l->default_chain != NULL;
    for (size_t i = 0; i != l->n_chains; ++i)
        tls &= l->chains[i].tls != NULL;
    return tls && (l->default_chain == NULL || l->default_chain->tls != NULL);
}
