/*
 * Listening sockets and accepted connections: one SO_REUSEPORT socket per
 * listener per worker (the kernel spreads connections over the workers),
 * filter chain selection, and the codec choice of HTTP connection managers
 * with codec_type AUTO (the HTTP/2 preface decides on cleartext).
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include "legate/listener.h"
#include "legate/listener_runtime.h"
#include "legate/server.h"
#include "legate/stats.h"

#define H2_PREFACE "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

int lg_listen_socket_open(const lg_listener_config_t *l, lg_error_t *err)
{
    int fd = socket(l->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), on = 1;
    if (fd < 0)
        return lg_error(err, "cannot create socket for '%s': %s", l->address_str, strerror(errno));
    if (l->addr.ss_family != AF_UNIX) {
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof(on));
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

/* A connection whose codec is not chosen yet (AUTO on cleartext). */
typedef struct st_sniff_t {
    lg_worker_t *worker;
    lg_listener_config_t *listener;
    const lg_filter_chain_t *chain;
    lg_snapshot_t *snapshot;
} sniff_t;

static void start_hcm(lg_worker_t *w, lg_listener_config_t *l, const lg_filter_chain_t *chain, lg_snapshot_t *snap, h2o_socket_t *sock,
                      int version)
{
    lg_hcm_conn_new(w, l, chain->hcm, snap, sock, version);
}

static void on_sniff_read(h2o_socket_t *sock, const char *err)
{
    sniff_t *s = sock->data;
    if (err != NULL) {
        lg_snapshot_release(s->worker, s->snapshot);
        free(s);
        h2o_socket_close(sock);
        return;
    }
    size_t n = sock->input->size < sizeof(H2_PREFACE) - 1 ? sock->input->size : sizeof(H2_PREFACE) - 1;
    int is_h2 = memcmp(sock->input->bytes, H2_PREFACE, n) == 0;
    if (is_h2 && n < sizeof(H2_PREFACE) - 1)
        return; /* could still be either */
    h2o_socket_read_stop(sock);
    sock->data = NULL;
    start_hcm(s->worker, s->listener, s->chain, s->snapshot, sock, is_h2 ? LG_HTTP_2 : LG_HTTP_11);
    lg_snapshot_release(s->worker, s->snapshot);
    free(s);
}

void lg_listener_accept(lg_worker_t *w, lg_listener_config_t *l, lg_snapshot_t *snap, h2o_socket_t *listener)
{
    h2o_socket_t *sock;
    /* a bounded batch per wake-up so that one busy listener cannot starve the loop */
    for (int i = 0; i != 64 && (sock = h2o_evloop_socket_accept(listener)) != NULL; ++i) {
        struct sockaddr_storage local, remote;
        socklen_t len = sizeof(local);
        int fd = h2o_socket_get_fd(sock), on = 1;
        LG_STAT_INC(l->stats, w->index, LG_LISTENER_STAT_downstream_cx_total);
        if (l->addr.ss_family != AF_UNIX)
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
        memset(&local, 0, sizeof(local));
        memset(&remote, 0, sizeof(remote));
        getsockname(fd, (struct sockaddr *)&local, &len);
        len = sizeof(remote);
        getpeername(fd, (struct sockaddr *)&remote, &len);
        if (l->addr.ss_family == AF_UNIX) {
            local = l->addr;
            remote.ss_family = AF_UNIX;
        }
        lg_conn_match_info_t mi = {(struct sockaddr *)&local, (struct sockaddr *)&remote, NULL, "raw_buffer", NULL, 0};
        const lg_filter_chain_t *chain = lg_listener_match_chain(l, &mi);
        if (chain == NULL) {
            LG_STAT_INC(l->stats, w->index, LG_LISTENER_STAT_no_filter_chain_match);
            LG_DEBUG(conn_handler, "closing connection from %s: no matching filter chain found", l->address_str);
            h2o_socket_close(sock);
            continue;
        }
        switch (chain->hcm->codec_type) {
        case LG_CODEC_HTTP1:
            start_hcm(w, l, chain, snap, sock, LG_HTTP_11);
            break;
        case LG_CODEC_HTTP2:
            start_hcm(w, l, chain, snap, sock, LG_HTTP_2);
            break;
        case LG_CODEC_AUTO: {
            sniff_t *s = lg_malloc(sizeof(*s));
            *s = (sniff_t){w, l, chain, snap};
            lg_snapshot_hold(w, snap);
            sock->data = s;
            h2o_socket_read_start(sock, on_sniff_read);
            break;
        }
        }
    }
}

int lg_listener_is_tls(const lg_listener_config_t *l)
{
    return 0;
}
