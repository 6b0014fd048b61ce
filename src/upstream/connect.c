/*
 * The non-blocking connect to one host, bounded by connect_timeout, that the
 * HTTP connection pools (conn_pool.c) and the raw TCP connections of
 * tcp_proxy (upstream_tcp.c) share: socket, TCP_NODELAY, connect(), SO_ERROR
 * and Envoy's failure texts ("immediate connect error: ...", "delayed
 * connect error: ...").
 */
#include <errno.h>
#include <netinet/in.h>
#include <linux/tcp.h> /* struct tcp_info with tcpi_bytes_received */
#include <unistd.h>
#include "legate/timer.h"
#include "upstream.h"

static void on_timeout(lg_timer_t *t)
{
    lg__connect_t *cn = H2O_STRUCT_FROM_MEMBER(lg__connect_t, timer, t);
    cn->cb(cn, LG_POOL_CONNECT_TIMEOUT, "");
}

static void on_immediate_failure(lg_timer_t *t)
{
    lg__connect_t *cn = H2O_STRUCT_FROM_MEMBER(lg__connect_t, timer, t);
    char detail[128];
    snprintf(detail, sizeof(detail), "immediate connect error: %s", strerror(cn->connect_errno));
    cn->cb(cn, LG_POOL_CONNECT_FAILURE, detail);
}

static void on_connect_ready(h2o_socket_t *sock, const char *err)
{
    lg__connect_t *cn = sock->data;
    int so_err = 0;
    socklen_t l = sizeof(so_err);
    if (err == NULL && getsockopt(h2o_socket_get_fd(sock), SOL_SOCKET, SO_ERROR, &so_err, &l) != 0)
        so_err = errno;
    if (err != NULL || so_err != 0) {
        char detail[128];
        snprintf(detail, sizeof(detail), "delayed connect error: %s", err != NULL ? err : strerror(so_err));
        cn->cb(cn, LG_POOL_CONNECT_FAILURE, detail);
        return;
    }
    cn->cb(cn, 0, NULL);
}

/* The socket is created without H2O_SOCKET_FLAG_IS_CONNECTING so that the
 * completion callback reads SO_ERROR itself (h2o would consume it and report
 * a generic error). */
void lg__connect_start(lg__connect_t *cn, lg_loop_t *loop, const lg_host_config_t *h, uint32_t timeout_ms, lg__connect_cb cb)
{
    cn->cb = cb;
    cn->sock = NULL;
    int fd = socket(h->sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd != -1 && h->sa->sa_family != AF_UNIX) {
        int on = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
    }
    if (fd == -1 || (connect(fd, h->sa, h->salen) != 0 && errno != EINPROGRESS)) {
        cn->connect_errno = errno;
        if (fd != -1)
            close(fd);
        lg_timer_start(loop, &cn->timer, 0, on_immediate_failure);
        return;
    }
    cn->sock = h2o_evloop_socket_create(loop->loop, fd, 0);
    cn->sock->data = cn;
    h2o_socket_notify_write(cn->sock, on_connect_ready);
    lg_timer_start(loop, &cn->timer, timeout_ms, on_timeout);
}

uint64_t lg__socket_rx_bytes(h2o_socket_t *sock)
{
    struct tcp_info ti;
    socklen_t len = sizeof(ti);
    memset(&ti, 0, sizeof(ti));
    if (getsockopt(h2o_socket_get_fd(sock), IPPROTO_TCP, TCP_INFO, &ti, &len) == 0 &&
        len >= offsetof(struct tcp_info, tcpi_bytes_received) + sizeof(ti.tcpi_bytes_received))
        return ti.tcpi_bytes_received;
    return 0;
}
