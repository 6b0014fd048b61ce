/*
 * Fuzz target: arbitrary bytes from a client into an HTTP/2 server connection
 * (socketpair, one h2o loop). A minimal driver answers every request and
 * consumes every body, so streams reach all their states. Checks: no crash,
 * no sanitizer report, every stream ends with one terminal callback, the
 * connection closes once the peer has shut down.
 *
 * Build and run (clang, libFuzzer):
 *   clang -g -O1 -std=gnu11 -fsanitize=fuzzer,address,undefined -Iinclude -Ibuild/gen -DH2O_USE_LIBUV=0 \
 *     test/fuzz/fuzz_h2.c src/http/h2_common.c src/http/h2_server.c src/http/h2_client.c src/http/headers.c \
 *     src/core/timer.c src/core/common.c -lh2o-evloop -lnghttp2 -lssl -lcrypto -lpthread -o build/fuzz_h2
 *   build/fuzz_h2 -max_total_time=60 test/fuzz/corpus/h2
 * With FUZZ_H2_STANDALONE defined, it replays the files named on the command line instead.
 */
#include <assert.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>
#include <h2o/socket.h>
#include "legate/common.h"
#include "legate/http.h"
#include "legate/h2.h"

static h2o_evloop_t *loop;
static lg_loop_t lgloop;
static int closed, live_streams;

typedef struct st_fstream_t {
    lg_stream_t *s;
    int responded;
} fstream_t;

static void respond(fstream_t *f)
{
    static lg_resp_head_t head = {200, LG_HTTP_2};
    static lg_headers_t trailers;
    if (f->responded)
        return;
    f->responded = 1;
    f->s->ops->send_headers(f->s, &head, 0);
    f->s->ops->send_data(f->s, h2o_iovec_init(H2O_STRLIT("hello")), 0);
    f->s->ops->send_trailers(f->s, &trailers);
}

static void on_headers(lg_stream_t *s, void *head, int end_stream)
{
    if (end_stream)
        respond(s->ctx);
}

static void on_data(lg_stream_t *s, h2o_iovec_t data, int end_stream)
{
    if (data.len != 0)
        s->ops->consume(s, data.len);
    if (end_stream)
        respond(s->ctx);
}

static void on_trailers(lg_stream_t *s, lg_headers_t *trailers)
{
    respond(s->ctx);
}

static void on_data_sent(lg_stream_t *s, size_t bytes)
{
}

static void on_end(lg_stream_t *s)
{
    fstream_t *f = s->ctx;
    assert(f->s == s);
    f->s = NULL;
    free(f);
    --live_streams;
}

static void on_reset(lg_stream_t *s, lg_reset_reason_t reason, const char *details)
{
    on_end(s);
}

static const lg_stream_cbs_t stream_cbs = {on_headers, NULL, on_data, on_trailers, on_data_sent, on_reset, on_end};

static void on_new_stream(lg_server_conn_t *c, lg_stream_t *s)
{
    fstream_t *f = lg_calloc(1, sizeof(*f));
    f->s = s;
    s->cbs = &stream_cbs;
    s->ctx = f;
    ++live_streams;
}

static void on_close(lg_server_conn_t *c)
{
    assert(live_streams == 0);
    closed = 1;
}

static void on_codec_error(lg_server_conn_t *c, int status, const char *details)
{
}

static const lg_server_conn_cbs_t conn_cbs = {on_new_stream, on_close, on_codec_error};

static void drain_peer(int fd)
{
    char buf[16384];
    while (read(fd, buf, sizeof(buf)) > 0)
        ;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (loop == NULL) {
        signal(SIGPIPE, SIG_IGN);
        loop = h2o_evloop_create();
        lg_loop_init(&lgloop, loop);
    }
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0)
        abort();
    fcntl(fds[1], F_SETFL, O_NONBLOCK);
    lg_h2_settings_t settings;
    lg_h2_settings_init(&settings);
    settings.initial_stream_window_size = 65535;
    settings.max_concurrent_streams = 50;
    lg_h2_options_t options = {.allow_connect = size % 2, .stream_error_on_invalid_http_messaging = size % 3 == 0};
    closed = 0;
    lg_server_conn_t *conn =
        lg_h2_server_conn_new_ex(&lgloop, h2o_evloop_socket_create(loop, fds[0], 0), &settings, &options, &conn_cbs, NULL);
    size_t off = 0;
    for (int turns = 0; off < size && !closed && turns < 10000; ++turns) {
        size_t n = size - off < 4096 ? size - off : 4096;
        ssize_t w = write(fds[1], data + off, n);
        if (w > 0)
            off += (size_t)w;
        h2o_evloop_run(loop, 0);
        drain_peer(fds[1]);
    }
    if (!closed && size % 5 == 0) {
        conn->ops->drain(conn);
        h2o_evloop_run(loop, 0);
    }
    shutdown(fds[1], SHUT_WR);
    for (int turns = 0; !closed && turns < 100; ++turns) {
        h2o_evloop_run(loop, 1);
        drain_peer(fds[1]);
    }
    if (!closed)
        conn->ops->close(conn);
    assert(closed && live_streams == 0);
    close(fds[1]);
    /* Let lingering writes and the socket's disposal finish. */
    for (int turns = 0; turns < 3; ++turns)
        h2o_evloop_run(loop, 0);
    return 0;
}

#ifdef FUZZ_H2_STANDALONE
int main(int argc, char **argv)
{
    for (int i = 1; i < argc; ++i) {
        size_t len;
        lg_error_t err;
        char *bytes = lg_read_file(argv[i], &len, &err);
        if (bytes == NULL)
            return 1;
        LLVMFuzzerTestOneInput((const uint8_t *)bytes, len);
        free(bytes);
    }
    return 0;
}
#endif
