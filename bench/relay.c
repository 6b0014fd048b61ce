/*
 * The least a proxy can do, for workload 6's reference row: accept a
 * connection, connect to the upstream, and copy bytes both ways with
 * recv/send of 64 KiB (one thread per direction, no parsing, no event loop).
 * Pinned to the proxy core, it shows what the extra hop itself costs in the
 * bench's topology (the client and the upstream share the load core).
 *
 *   relay LISTEN_PORT UPSTREAM_PORT
 */
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct {
    int from, to;
} direction_t;

static void *copy_one_way(void *arg)
{
    direction_t *d = arg;
    static __thread char buf[64 * 1024];
    ssize_t n;
    while ((n = recv(d->from, buf, sizeof(buf), 0)) > 0) {
        for (ssize_t off = 0, m; off < n; off += m)
            if ((m = send(d->to, buf + off, n - off, MSG_NOSIGNAL)) <= 0)
                goto done;
    }
done:
    shutdown(d->to, SHUT_WR);
    return NULL;
}

static struct sockaddr_in loopback(int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    return a;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: relay LISTEN_PORT UPSTREAM_PORT\n");
        return 2;
    }
    struct sockaddr_in listen_at = loopback(atoi(argv[1])), upstream = loopback(atoi(argv[2]));
    int l = socket(AF_INET, SOCK_STREAM, 0), on = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
    if (bind(l, (struct sockaddr *)&listen_at, sizeof(listen_at)) != 0 || listen(l, 64) != 0) {
        perror("relay: listen");
        return 1;
    }
    for (;;) {
        int c = accept(l, NULL, NULL), u = socket(AF_INET, SOCK_STREAM, 0);
        if (c < 0 || u < 0 || connect(u, (struct sockaddr *)&upstream, sizeof(upstream)) != 0) {
            perror("relay: connect");
            return 1;
        }
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
        setsockopt(u, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
        direction_t up = {c, u}, down = {u, c};
        pthread_t t;
        pthread_create(&t, NULL, copy_one_way, &up);
        copy_one_way(&down);
        pthread_join(t, NULL);
        close(c);
        close(u);
    }
}
