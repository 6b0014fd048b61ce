/*
 * The bench's upstream: one single-threaded epoll server, fast enough that the
 * proxy under test (on the other core) is what saturates.
 *
 *   upstream --h1-port P1 --h2-port P2 [--addr 127.0.0.1]
 *
 * HTTP/1.1 on P1 (keep-alive, pipelining, Content-Length or chunked bodies):
 *   GET /big/<n>   n zero bytes (streaming download)
 *   any other GET  a 13-byte body ("hello, world\n")
 *   a request with a body: the body is read and dropped; 200 "ok <bytes>\n"
 *
 * HTTP/2 prior knowledge (h2c) on P2, nghttp2 server session:
 *   content-type application/grpc*: the request body echoed back, then the
 *     trailers grpc-status: 0 (a gRPC unary echo whatever the method)
 *   any other request: the same 13-byte body as on P1
 *
 * Prints "ready" on stdout once both sockets listen; runs until killed.
 * Untrusted input is handled by closing the connection, never by asserting.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>
#include <nghttp2/nghttp2.h>

#define SMALL_BODY "hello, world\n"
#define H1_BUF 65536
#define ZERO_CHUNK (256 * 1024)
#define ECHO_MAX (4 * 1024 * 1024)

enum { KIND_H1_LISTEN, KIND_H2_LISTEN, KIND_H1, KIND_H2 };

typedef struct conn {
    int kind;
    int fd;
    /* input (h1: request bytes not yet consumed) */
    char in[H1_BUF];
    size_t in_len;
    /* output bytes not yet written */
    char *out;
    size_t out_len, out_cap, out_off;
    /* h1 request body state */
    int in_body;       /* 1 while a body is being read */
    int chunked;       /* body uses chunked transfer coding */
    uint64_t body_left; /* bytes left of the body (or of the current chunk) */
    uint64_t body_total;
    int chunk_state; /* 0 size line, 1 data, 2 CRLF after data, 3 trailers */
    int close_after;
    int responded; /* a response was queued and not yet fully written */
    uint32_t events; /* what epoll watches for this fd */
    /* h1 download in progress */
    uint64_t zeros_left;
    nghttp2_session *h2;
} conn_t;

typedef struct h2_stream {
    int grpc;
    char *body;
    size_t len, cap, sent;
} h2_stream_t;

static int epfd;
static char zeros[ZERO_CHUNK];

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static void set_nonblock(int fd)
{
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

static int listen_on(const char *addr, int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (fd < 0)
        die("socket");
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1)
        die("inet_pton");
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(fd, 4096) != 0)
        die("bind/listen");
    set_nonblock(fd);
    return fd;
}

static void watch_add(conn_t *c)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    c->events = EPOLLIN;
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
}

static void watch(conn_t *c, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (c->events != events) {
        c->events = events;
        epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    }
}

static void conn_close(conn_t *c)
{
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    if (c->h2 != NULL)
        nghttp2_session_del(c->h2);
    free(c->out);
    free(c);
}

static void out_append(conn_t *c, const void *p, size_t n)
{
    if (c->out_len + n > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 4096;
        while (cap < c->out_len + n)
            cap *= 2;
        if ((c->out = realloc(c->out, cap)) == NULL)
            die("realloc");
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, p, n);
    c->out_len += n;
}

/* Writes pending output (buffer, then zeros for a download). Returns 1 when all
 * is written, 0 when the socket is full, -1 on error. */
static int flush_out(conn_t *c)
{
    while (c->out_off < c->out_len || c->zeros_left > 0) {
        struct iovec iov[2];
        int n = 0;
        if (c->out_off < c->out_len)
            iov[n++] = (struct iovec){c->out + c->out_off, c->out_len - c->out_off};
        if (c->zeros_left > 0)
            iov[n++] = (struct iovec){zeros, c->zeros_left < ZERO_CHUNK ? c->zeros_left : ZERO_CHUNK};
        ssize_t w = writev(c->fd, iov, n);
        if (w < 0)
            return errno == EAGAIN ? 0 : -1;
        size_t buffered = c->out_len - c->out_off;
        if ((size_t)w <= buffered) {
            c->out_off += w;
        } else {
            c->out_off = c->out_len;
            c->zeros_left -= w - buffered;
        }
    }
    c->out_off = c->out_len = 0;
    return 1;
}

/* ---- HTTP/1.1 ---------------------------------------------------------- */

static const char *find_header(const char *head, size_t len, const char *name)
{
    size_t nl = strlen(name);
    const char *p = head, *end = head + len;
    while (p < end) {
        const char *eol = memchr(p, '\n', end - p);
        if (eol == NULL)
            return NULL;
        if ((size_t)(eol - p) > nl && strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            p += nl + 1;
            while (*p == ' ' || *p == '\t')
                p++;
            return p;
        }
        p = eol + 1;
    }
    return NULL;
}

static void h1_respond(conn_t *c, const char *body, size_t body_len, uint64_t zeros_len)
{
    char head[256];
    uint64_t clen = zeros_len ? zeros_len : body_len;
    int n = snprintf(head, sizeof(head), "HTTP/1.1 200 OK\r\nServer: bench-upstream\r\nContent-Type: text/plain\r\n%s"
                                         "Content-Length: %llu\r\n\r\n",
                     c->close_after ? "Connection: close\r\n" : "", (unsigned long long)clen);
    out_append(c, head, n);
    out_append(c, body, body_len);
    c->zeros_left = zeros_len;
    c->responded = 1;
}

static void h1_finish_body(conn_t *c)
{
    char body[64];
    int n = snprintf(body, sizeof(body), "ok %llu\n", (unsigned long long)c->body_total);
    c->in_body = 0;
    h1_respond(c, body, n, 0);
}

/* Parses one request head at c->in. Returns bytes consumed, 0 when incomplete, -1 when bad. */
static long h1_head(conn_t *c)
{
    char *end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
    if (end == NULL)
        return c->in_len >= sizeof(c->in) ? -1 : 0;
    size_t head_len = end + 4 - c->in;
    const char *sp = memchr(c->in, ' ', head_len);
    if (sp == NULL)
        return -1;
    const char *path = sp + 1;
    const char *eol = memchr(c->in, '\n', head_len);
    const char *conn = find_header(c->in, head_len, "connection");
    const char *te = find_header(c->in, head_len, "transfer-encoding");
    const char *cl = find_header(c->in, head_len, "content-length");
    c->close_after = (conn != NULL && strncasecmp(conn, "close", 5) == 0) || (eol != NULL && eol - c->in >= 9 &&
                                                                                memcmp(eol - 9, "HTTP/1.0", 8) == 0);
    c->body_total = 0;
    if (te != NULL && strncasecmp(te, "chunked", 7) == 0) {
        c->in_body = 1, c->chunked = 1, c->chunk_state = 0;
    } else if (cl != NULL && strtoull(cl, NULL, 10) > 0) {
        c->in_body = 1, c->chunked = 0, c->body_left = strtoull(cl, NULL, 10);
    } else if (strncmp(path, "/big/", 5) == 0) {
        h1_respond(c, "", 0, strtoull(path + 5, NULL, 10));
    } else {
        h1_respond(c, SMALL_BODY, sizeof(SMALL_BODY) - 1, 0);
    }
    return head_len;
}

/* Consumes chunked body bytes. Returns bytes consumed, -1 when bad. */
static long h1_chunked(conn_t *c, const char *p, size_t len)
{
    size_t used = 0;
    while (used < len && c->in_body) {
        if (c->chunk_state == 1) {
            size_t n = len - used < c->body_left ? len - used : c->body_left;
            used += n, c->body_left -= n, c->body_total += n;
            if (c->body_left == 0)
                c->chunk_state = 2;
            continue;
        }
        const char *eol = memchr(p + used, '\n', len - used);
        if (eol == NULL)
            return len - used > 1024 ? -1 : (long)used;
        size_t line_len = eol - (p + used);
        if (c->chunk_state == 0) {
            c->body_left = strtoull(p + used, NULL, 16);
            c->chunk_state = c->body_left == 0 ? 3 : 1;
        } else if (c->chunk_state == 2) {
            c->chunk_state = 0;
        } else if (line_len <= 1) { /* empty line ends the trailers */
            h1_finish_body(c);
        }
        used = eol + 1 - p;
    }
    return used;
}

static int h1_process(conn_t *c)
{
    size_t off = 0;
    while (off < c->in_len && !c->responded) {
        long n;
        if (c->in_body && !c->chunked) {
            n = c->in_len - off < c->body_left ? c->in_len - off : c->body_left;
            c->body_left -= n, c->body_total += n;
            if (c->body_left == 0)
                h1_finish_body(c);
        } else if (c->in_body) {
            n = h1_chunked(c, c->in + off, c->in_len - off);
        } else {
            memmove(c->in, c->in + off, c->in_len - off);
            c->in_len -= off, off = 0;
            n = h1_head(c);
        }
        if (n < 0)
            return -1;
        if (n == 0)
            break;
        off += n;
    }
    memmove(c->in, c->in + off, c->in_len - off);
    c->in_len -= off;
    return 0;
}

static void h1_event(conn_t *c, uint32_t events)
{
    for (;;) {
        int f = flush_out(c);
        if (f < 0)
            goto close;
        if (f == 0) {
            watch(c, EPOLLIN | EPOLLOUT);
            return;
        }
        if (c->responded) {
            c->responded = 0;
            if (c->close_after)
                goto close;
            if (h1_process(c) != 0) /* requests already buffered (pipelining) */
                goto close;
            if (c->responded)
                continue;
        }
        ssize_t r = read(c->fd, c->in + c->in_len, sizeof(c->in) - c->in_len);
        if (r == 0 || (r < 0 && errno != EAGAIN))
            goto close;
        if (r < 0) {
            watch(c, EPOLLIN);
            return;
        }
        c->in_len += r;
        if (h1_process(c) != 0)
            goto close;
    }
close:
    conn_close(c);
}

/* ---- HTTP/2 ------------------------------------------------------------ */

static ssize_t h2_read_body(nghttp2_session *s, int32_t sid, uint8_t *buf, size_t len, uint32_t *flags,
                            nghttp2_data_source *src, void *ud)
{
    h2_stream_t *st = src->ptr;
    size_t n = st->len - st->sent < len ? st->len - st->sent : len;
    memcpy(buf, st->body + st->sent, n);
    st->sent += n;
    if (st->sent == st->len) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        if (st->grpc) {
            nghttp2_nv trailer = {(uint8_t *)"grpc-status", (uint8_t *)"0", 11, 1, NGHTTP2_NV_FLAG_NONE};
            *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
            nghttp2_submit_trailer(s, sid, &trailer, 1);
        }
    }
    return n;
}

#define NV(n, v) {(uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, strlen(v), NGHTTP2_NV_FLAG_NONE}

static int h2_respond(nghttp2_session *s, int32_t sid, h2_stream_t *st)
{
    nghttp2_data_provider prd = {.source.ptr = st, .read_callback = h2_read_body};
    if (!st->grpc) {
        free(st->body);
        st->body = strdup(SMALL_BODY);
        st->len = sizeof(SMALL_BODY) - 1;
        nghttp2_nv nv[] = {NV(":status", "200"), NV("content-type", "text/plain"), NV("content-length", "13")};
        return nghttp2_submit_response(s, sid, nv, 3, &prd);
    }
    nghttp2_nv nv[] = {NV(":status", "200"), NV("content-type", "application/grpc")};
    return nghttp2_submit_response(s, sid, nv, 2, &prd);
}

static int h2_on_begin_headers(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    if (f->hd.type == NGHTTP2_HEADERS && f->headers.cat == NGHTTP2_HCAT_REQUEST) {
        h2_stream_t *st = calloc(1, sizeof(*st));
        nghttp2_session_set_stream_user_data(s, f->hd.stream_id, st);
    }
    return 0;
}

static int h2_on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nlen, const uint8_t *value,
                        size_t vlen, uint8_t flags, void *ud)
{
    h2_stream_t *st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    if (st != NULL && nlen == 12 && memcmp(name, "content-type", 12) == 0 && vlen >= 16 &&
        memcmp(value, "application/grpc", 16) == 0)
        st->grpc = 1;
    return 0;
}

static int h2_on_data(nghttp2_session *s, uint8_t flags, int32_t sid, const uint8_t *data, size_t len, void *ud)
{
    h2_stream_t *st = nghttp2_session_get_stream_user_data(s, sid);
    if (st == NULL || !st->grpc || st->len + len > ECHO_MAX)
        return 0; /* non-gRPC bodies are dropped */
    if (st->len + len > st->cap) {
        st->cap = (st->len + len) * 2;
        if ((st->body = realloc(st->body, st->cap)) == NULL)
            die("realloc");
    }
    memcpy(st->body + st->len, data, len);
    st->len += len;
    return 0;
}

static int h2_on_frame(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    if ((f->hd.type == NGHTTP2_HEADERS || f->hd.type == NGHTTP2_DATA) && (f->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        h2_stream_t *st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
        if (st != NULL)
            h2_respond(s, f->hd.stream_id, st);
    }
    return 0;
}

static int h2_on_close(nghttp2_session *s, int32_t sid, uint32_t err, void *ud)
{
    h2_stream_t *st = nghttp2_session_get_stream_user_data(s, sid);
    if (st != NULL) {
        free(st->body);
        free(st);
        nghttp2_session_set_stream_user_data(s, sid, NULL);
    }
    return 0;
}

static nghttp2_session_callbacks *h2_callbacks(void)
{
    static nghttp2_session_callbacks *cbs;
    if (cbs == NULL) {
        nghttp2_session_callbacks_new(&cbs);
        nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, h2_on_begin_headers);
        nghttp2_session_callbacks_set_on_header_callback(cbs, h2_on_header);
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, h2_on_data);
        nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, h2_on_frame);
        nghttp2_session_callbacks_set_on_stream_close_callback(cbs, h2_on_close);
    }
    return cbs;
}

static void h2_start(conn_t *c)
{
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 1024},
                                   {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 16 << 20}};
    nghttp2_session_server_new(&c->h2, h2_callbacks(), c);
    nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, iv, 2);
    nghttp2_session_set_local_window_size(c->h2, NGHTTP2_FLAG_NONE, 0, 64 << 20);
}

static void h2_event(conn_t *c, uint32_t events)
{
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        for (;;) {
            ssize_t r = read(c->fd, c->in, sizeof(c->in));
            if (r == 0 || (r < 0 && errno != EAGAIN)) {
                conn_close(c);
                return;
            }
            if (r < 0)
                break;
            if (nghttp2_session_mem_recv(c->h2, (uint8_t *)c->in, r) < 0) {
                conn_close(c);
                return;
            }
        }
    }
    for (;;) {
        const uint8_t *data;
        while (c->out_len < 65536) {
            ssize_t n = nghttp2_session_mem_send(c->h2, &data);
            if (n <= 0)
                break;
            out_append(c, data, n);
        }
        int f = flush_out(c);
        if (f < 0) {
            conn_close(c);
            return;
        }
        if (f == 0 || !nghttp2_session_want_write(c->h2))
            break;
    }
    if (!nghttp2_session_want_read(c->h2) && !nghttp2_session_want_write(c->h2) && c->out_len == 0) {
        conn_close(c);
        return;
    }
    watch(c, c->out_len > 0 ? EPOLLIN | EPOLLOUT : EPOLLIN);
}

/* ---- main loop --------------------------------------------------------- */

static void accept_all(conn_t *l)
{
    for (;;) {
        int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK), one = 1;
        if (fd < 0)
            return;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        conn_t *c = calloc(1, sizeof(*c));
        c->fd = fd;
        c->kind = l->kind == KIND_H1_LISTEN ? KIND_H1 : KIND_H2;
        if (c->kind == KIND_H2)
            h2_start(c);
        watch_add(c);
        if (c->kind == KIND_H2)
            h2_event(c, 0); /* send our SETTINGS */
    }
}

int main(int argc, char **argv)
{
    const char *addr = "127.0.0.1";
    int h1_port = 0, h2_port = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--h1-port") == 0)
            h1_port = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--h2-port") == 0)
            h2_port = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--addr") == 0)
            addr = argv[i + 1];
    }
    if (h1_port == 0 || h2_port == 0) {
        fprintf(stderr, "usage: %s --h1-port P --h2-port P [--addr A]\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    if ((epfd = epoll_create1(0)) < 0)
        die("epoll_create1");
    conn_t l1 = {.kind = KIND_H1_LISTEN, .fd = listen_on(addr, h1_port)};
    conn_t l2 = {.kind = KIND_H2_LISTEN, .fd = listen_on(addr, h2_port)};
    watch_add(&l1);
    watch_add(&l2);
    printf("ready\n");
    fflush(stdout);
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(epfd, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (c->kind == KIND_H1_LISTEN || c->kind == KIND_H2_LISTEN)
                accept_all(c);
            else if (c->kind == KIND_H1)
                h1_event(c, evs[i].events);
            else
                h2_event(c, evs[i].events);
        }
    }
}
