/*
 * The admin server: a small HTTP/1.1 server (picohttpparser, keep-alive,
 * Content-Length bodies) on its own thread and h2o event loop, dispatching to
 * handlers registered by exact path as Envoy's AdminImpl does.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <h2o/multithread.h>
#include <h2o/socket.h>
#include <h2o/time_.h>
#include "legate/listener-t.h"
#include "legate/listener_runtime.h"
#include "legate/stats.h"
#include "legate/tls.h"
#include "admin_internal.h"

/* picohttpparser ships inside libh2o-evloop without a header. */
struct phr_header {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
};
int phr_parse_request(const char *buf, size_t len, const char **method, size_t *method_len, const char **path, size_t *path_len,
                      int *minor_version, struct phr_header *headers, size_t *num_headers, size_t last_len);

#define MAX_HEAD_SIZE (64 * 1024)
#define MAX_BODY_SIZE (1024 * 1024)
#define MAX_HEADERS 100
#define ACCEPT_BATCH 16

typedef struct st_handler_t {
    char *prefix;
    char *help;
    int mutates;
    lg_admin_handler_cb cb;
    void *ctx;
    lg_strbuf_t params; /* "      name: help\n" lines for /help */
} handler_t;

static pthread_mutex_t handlers_mutex = PTHREAD_MUTEX_INITIALIZER;
static handler_t *handlers;
static size_t nhandlers;
static int builtins_registered;

/* http.admin.* (written by the admin thread only, into the control row). */
#define ADMIN_STATS(X) \
    X(COUNTER, downstream_cx_total) X(GAUGE, downstream_cx_active) X(COUNTER, downstream_cx_destroy) X(COUNTER, downstream_rq_total)
#define ADMIN_STAT_ENUM(type, name) ADMIN_STAT_##name,
enum { ADMIN_STATS(ADMIN_STAT_ENUM) ADMIN_STAT__COUNT };
static const lg_stat_def_t admin_stat_defs[] = {ADMIN_STATS(LG_STAT_DEF)};
/* listener.admin.*: Envoy counts the admin listener like any other (admin thread only). */
static const lg_stat_def_t admin_listener_stat_defs[] = {LG_LISTENER_STATS(LG_STAT_DEF)};

typedef struct st_conn_t {
    h2o_socket_t *sock;
    h2o_linklist_t link;
    lg_strbuf_t out;
    size_t consumed; /* input bytes of the request being answered */
    int writing;
    int close_after;
    int continue_sent; /* "100 Continue" answered the current request's Expect */
    uint64_t start_ms;
} conn_t;

static struct {
    int listen_fd;
    sem_t ready; /* the thread has made its loop and queue */
    h2o_evloop_t *loop;
    h2o_socket_t *listener;
    h2o_timeout_t accept_backoff; /* out of descriptors: the listener rests (as a worker's) */
    h2o_timeout_entry_t accept_retry;
    lg_accept_backoff_t accept_failures;
    h2o_multithread_queue_t *queue;
    h2o_multithread_receiver_t receiver;
    h2o_multithread_message_t stop_message;
    pthread_t thread;
    int running;
    int stopping; /* admin thread only */
    h2o_linklist_t conns;
    uint16_t port;
    char *bound; /* what --admin-address-path receives */
    lg_stats_block_t *stats;
    lg_stats_block_t *listener_stats;
} admin;

/* ---- handler registry -------------------------------------------------------------------------------------------------------- */

static handler_t *find_handler(const char *path, size_t len)
{
    for (size_t i = 0; i != nhandlers; ++i)
        if (strlen(handlers[i].prefix) == len && memcmp(handlers[i].prefix, path, len) == 0)
            return handlers + i;
    return NULL;
}

int lg_admin_register(const char *prefix, const char *help, int mutates_state, lg_admin_handler_cb cb, void *ctx)
{
    pthread_mutex_lock(&handlers_mutex);
    int ret = -1;
    if (find_handler(prefix, strlen(prefix)) == NULL) {
        handlers = lg_realloc(handlers, (nhandlers + 1) * sizeof(*handlers));
        handlers[nhandlers++] = (handler_t){lg_strdup(prefix), lg_strdup(help), mutates_state, cb, ctx};
        ret = 0;
    }
    pthread_mutex_unlock(&handlers_mutex);
    return ret;
}

void lg_admin_add_param(const char *prefix, const char *name, const char *help)
{
    pthread_mutex_lock(&handlers_mutex);
    handler_t *h = find_handler(prefix, strlen(prefix));
    if (h != NULL)
        lg_strbuf_printf(&h->params, "      %s: %s\n", name, help);
    pthread_mutex_unlock(&handlers_mutex);
}

static void handler_dispose(handler_t *h)
{
    free(h->prefix);
    free(h->help);
    lg_strbuf_free(&h->params);
}

int lg_admin_unregister(const char *prefix)
{
    pthread_mutex_lock(&handlers_mutex);
    handler_t *h = find_handler(prefix, strlen(prefix));
    if (h != NULL) {
        handler_dispose(h);
        *h = handlers[--nhandlers];
    }
    pthread_mutex_unlock(&handlers_mutex);
    return h != NULL ? 0 : -1;
}

static void unregister_all(void)
{
    pthread_mutex_lock(&handlers_mutex);
    for (size_t i = 0; i != nhandlers; ++i)
        handler_dispose(handlers + i);
    free(handlers);
    handlers = NULL;
    nhandlers = 0;
    builtins_registered = 0;
    pthread_mutex_unlock(&handlers_mutex);
}

static int handler_cmp(const void *a, const void *b)
{
    return strcmp((*(const handler_t *const *)a)->prefix, (*(const handler_t *const *)b)->prefix);
}

/* Calls cb for each handler in path order, with the registry locked. */
static void for_each_sorted(void (*cb)(const handler_t *h, lg_strbuf_t *out), lg_strbuf_t *out)
{
    pthread_mutex_lock(&handlers_mutex);
    const handler_t **sorted = lg_malloc((nhandlers + 1) * sizeof(*sorted));
    for (size_t i = 0; i != nhandlers; ++i)
        sorted[i] = handlers + i;
    qsort(sorted, nhandlers, sizeof(*sorted), handler_cmp);
    for (size_t i = 0; i != nhandlers; ++i)
        cb(sorted[i], out);
    free(sorted);
    pthread_mutex_unlock(&handlers_mutex);
}

static void help_line(const handler_t *h, lg_strbuf_t *out)
{
    lg_strbuf_printf(out, "  %s%s: %s\n", h->prefix, h->mutates ? " (POST)" : "", h->help);
    if (h->params.len != 0)
        lg_strbuf_append(out, h->params.base, h->params.len);
}

void lg__admin_help(lg_strbuf_t *out)
{
    lg_strbuf_puts(out, "admin commands are:\n");
    for_each_sorted(help_line, out);
}

static void html_escaped(lg_strbuf_t *out, const char *s)
{
    for (; *s != '\0'; ++s) {
        switch (*s) {
        case '&':
            lg_strbuf_puts(out, "&amp;");
            break;
        case '<':
            lg_strbuf_puts(out, "&lt;");
            break;
        case '>':
            lg_strbuf_puts(out, "&gt;");
            break;
        case '\'':
            lg_strbuf_puts(out, "&#39;");
            break;
        case '"':
            lg_strbuf_puts(out, "&quot;");
            break;
        default:
            lg_strbuf_append(out, s, 1);
        }
    }
}

static void home_row(const handler_t *h, lg_strbuf_t *out)
{
    if (strcmp(h->prefix, "/") == 0)
        return;
    lg_strbuf_puts(out, "<tr class='home-row'><td class='home-data'>");
    if (h->mutates) {
        lg_strbuf_puts(out, "<form action='");
        html_escaped(out, h->prefix + 1);
        lg_strbuf_puts(out, "' method='post' class='home-form'><button class='button-as-link'>");
        html_escaped(out, h->prefix + 1);
        lg_strbuf_puts(out, "</button></form>");
    } else {
        lg_strbuf_puts(out, "<a href='");
        html_escaped(out, h->prefix + 1);
        lg_strbuf_puts(out, "'>");
        html_escaped(out, h->prefix + 1);
        lg_strbuf_puts(out, "</a>");
    }
    lg_strbuf_puts(out, "</td><td class='home-data'>");
    html_escaped(out, h->help);
    lg_strbuf_puts(out, "</td></tr>\n");
}

void lg__admin_home(lg_strbuf_t *out)
{
    lg_strbuf_puts(out, "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<title>Envoy Admin</title>\n</head>\n<body>\n"
                        "<table class='home-table'>\n<thead><tr><th class='home-data'>Command</th>"
                        "<th class='home-data'>Description</th></tr></thead>\n<tbody>\n");
    for_each_sorted(home_row, out);
    lg_strbuf_puts(out, "</tbody>\n</table>\n</body>\n</html>\n");
}

/* ---- requests ---------------------------------------------------------------------------------------------------------------- */

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Decodes %XX (Envoy keeps '+' as is); a malformed escape is kept literally. */
static char *url_decode(const char *s, size_t len)
{
    char *out = lg_malloc(len + 1), *o = out;
    for (size_t i = 0; i != len; ++i) {
        int hi, lo;
        if (s[i] == '%' && i + 2 < len && (hi = hex_value(s[i + 1])) >= 0 && (lo = hex_value(s[i + 2])) >= 0) {
            *o++ = (char)(hi * 16 + lo);
            i += 2;
        } else {
            *o++ = s[i];
        }
    }
    *o = '\0';
    return out;
}

static void parse_query(lg_admin_request_t *req)
{
    const char *p = req->query.base, *end = p + req->query.len;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        if (amp == NULL)
            amp = end;
        if (amp != p) {
            const char *eq = memchr(p, '=', (size_t)(amp - p));
            const char *name_end = eq != NULL ? eq : amp;
            req->params = lg_realloc(req->params, (req->nparams + 1) * sizeof(*req->params));
            req->params[req->nparams++] = (lg_admin_param_t){
                url_decode(p, (size_t)(name_end - p)), eq != NULL ? url_decode(eq + 1, (size_t)(amp - eq - 1)) : lg_strdup("")};
        }
        p = amp + 1;
    }
}

const char *lg_admin_param(const lg_admin_request_t *req, const char *name)
{
    for (size_t i = 0; i != req->nparams; ++i)
        if (strcmp(req->params[i].name, name) == 0)
            return req->params[i].value;
    return NULL;
}

void lg__admin_respond_text(lg_admin_response_t *res, int status, const char *body)
{
    res->status = status;
    res->content_type = LG_ADMIN_CONTENT_TEXT;
    res->body.len = 0;
    lg_strbuf_puts(&res->body, body);
}

static int is_method(h2o_iovec_t m, const char *name)
{
    return m.len == strlen(name) && memcmp(m.base, name, m.len) == 0;
}

static void dispatch(h2o_iovec_t method, h2o_iovec_t target, h2o_iovec_t body, lg_admin_response_t *res)
{
    *res = (lg_admin_response_t){200, LG_ADMIN_CONTENT_TEXT};
    const char *q = memchr(target.base, '?', target.len);
    size_t path_len = q != NULL ? (size_t)(q - target.base) : target.len;
    lg_admin_request_t req = {method, h2o_iovec_init(target.base, path_len)};
    if (q != NULL)
        req.query = h2o_iovec_init(q + 1, target.len - path_len - 1);
    req.body = body;
    parse_query(&req);

    pthread_mutex_lock(&handlers_mutex);
    handler_t *h = find_handler(target.base, path_len), found = h != NULL ? *h : (handler_t){NULL};
    pthread_mutex_unlock(&handlers_mutex);

    if (found.cb == NULL) {
        lg__admin_respond_text(res, 404, "invalid path. ");
        lg__admin_help(&res->body);
    } else if (found.mutates && !is_method(method, "POST")) {
        LG_ERROR(admin, "admin path \"%.*s\" mutates state, method=%.*s rather than POST", (int)path_len, target.base,
                 (int)method.len, method.base);
        res->status = 405;
        lg_strbuf_printf(&res->body, "Method %.*s not allowed, POST required.", (int)method.len, method.base);
    } else {
        found.cb(&req, res, found.ctx);
    }
    for (size_t i = 0; i != req.nparams; ++i) {
        free(req.params[i].name);
        free(req.params[i].value);
    }
    free(req.params);
}

void lg_admin_request(const char *method, const char *path_and_query, h2o_iovec_t body, lg_admin_response_t *res)
{
    dispatch(h2o_iovec_init(method, strlen(method)), h2o_iovec_init(path_and_query, strlen(path_and_query)), body, res);
}

/* ---- connections ------------------------------------------------------------------------------------------------------------- */

static const char *reason_phrase(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 411:
        return "Length Required";
    case 413:
        return "Payload Too Large";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    default:
        return "Unknown";
    }
}

static void close_conn(conn_t *c)
{
    uint64_t start_ms = c->start_ms;
    h2o_linklist_unlink(&c->link);
    h2o_socket_close(c->sock);
    lg_strbuf_free(&c->out);
    free(c);
    LG_STAT_DEC(admin.stats, lg_stats_nworkers, ADMIN_STAT_downstream_cx_active);
    LG_STAT_INC(admin.stats, lg_stats_nworkers, ADMIN_STAT_downstream_cx_destroy);
    LG_STAT_DEC(admin.listener_stats, lg_stats_nworkers, LG_LISTENER_STAT_downstream_cx_active);
    LG_STAT_INC(admin.listener_stats, lg_stats_nworkers, LG_LISTENER_STAT_downstream_cx_destroy);
    lg_stats_histogram_record(admin.listener_stats, lg_stats_nworkers, LG_LISTENER_STAT_downstream_cx_length_ms,
                              lg_now_ms() - start_ms);
}

static void handle_input(conn_t *c);

static void on_write(h2o_socket_t *sock, const char *err)
{
    conn_t *c = sock->data;
    c->writing = 0;
    lg_strbuf_free(&c->out);
    if (err != NULL || c->close_after) {
        close_conn(c);
        return;
    }
    h2o_buffer_consume(&sock->input, c->consumed);
    handle_input(c);
}

static void send_response(conn_t *c, lg_admin_response_t *res, int head_only, int keepalive, size_t consumed)
{
    char date[H2O_TIMESTR_RFC1123_LEN + 1];
    time_t now = time(NULL);
    struct tm gmt;
    gmtime_r(&now, &gmt);
    h2o_time2str_rfc1123(date, &gmt);

    lg_strbuf_printf(&c->out,
                     "HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncache-control: no-cache, max-age=0\r\n"
                     "x-content-type-options: nosniff\r\ndate: %s\r\nserver: envoy\r\ncontent-length: %zu\r\n%s\r\n",
                     res->status, reason_phrase(res->status), res->content_type, date, res->body.len,
                     keepalive ? "" : "connection: close\r\n");
    if (!head_only && res->body.len != 0)
        lg_strbuf_append(&c->out, res->body.base, res->body.len);
    lg_strbuf_free(&res->body);
    c->consumed = consumed;
    c->close_after = !keepalive;
    c->continue_sent = 0;
    c->writing = 1;
    h2o_iovec_t buf = h2o_iovec_init(c->out.base, c->out.len);
    h2o_socket_write(c->sock, &buf, 1, on_write);
}

static void on_continue_written(h2o_socket_t *sock, const char *err)
{
    conn_t *c = sock->data;
    c->writing = 0;
    if (err != NULL) {
        close_conn(c);
        return;
    }
    handle_input(c);
}

/* curl waits for "100 Continue" before sending a body larger than 1 KiB. */
static void send_continue(conn_t *c)
{
    static const char msg[] = "HTTP/1.1 100 Continue\r\n\r\n";
    h2o_iovec_t buf = h2o_iovec_init(msg, sizeof(msg) - 1);
    c->continue_sent = 1;
    c->writing = 1;
    h2o_socket_write(c->sock, &buf, 1, on_continue_written);
}

static void send_error(conn_t *c, int status, const char *body)
{
    lg_admin_response_t res = {0};
    lg__admin_respond_text(&res, status, body);
    send_response(c, &res, 0, 0, 0);
}

static int header_is(const struct phr_header *h, const char *name)
{
    return h->name_len == strlen(name) && strncasecmp(h->name, name, h->name_len) == 0;
}

static int value_has_token(const struct phr_header *h, const char *token)
{
    size_t tl = strlen(token);
    for (size_t i = 0; i + tl <= h->value_len; ++i)
        if (strncasecmp(h->value + i, token, tl) == 0)
            return 1;
    return 0;
}

/* The parts of a request head that framing and keep-alive depend on. */
typedef struct st_head_info_t {
    int keepalive;
    int expect_continue;
    int chunked;
    int bad_length;
    size_t content_length;
} head_info_t;

static head_info_t read_head(int minor, const struct phr_header *hdrs, size_t nh)
{
    head_info_t info = {minor >= 1};
    for (size_t i = 0; i != nh; ++i) {
        const struct phr_header *h = hdrs + i;
        if (header_is(h, "connection")) {
            if (value_has_token(h, "close"))
                info.keepalive = 0;
            else if (value_has_token(h, "keep-alive"))
                info.keepalive = 1;
        } else if (header_is(h, "expect")) {
            info.expect_continue = value_has_token(h, "100-continue");
        } else if (header_is(h, "transfer-encoding")) {
            info.chunked = 1;
        } else if (header_is(h, "content-length")) {
            size_t v = 0;
            for (size_t j = 0; j != h->value_len; ++j) {
                if (h->value[j] < '0' || h->value[j] > '9' || v > MAX_BODY_SIZE)
                    info.bad_length = 1;
                else
                    v = v * 10 + (size_t)(h->value[j] - '0');
            }
            info.bad_length |= h->value_len == 0;
            info.content_length = v;
        }
    }
    return info;
}

static void handle_input(conn_t *c)
{
    h2o_buffer_t *in = c->sock->input;
    const char *method, *path;
    size_t method_len, path_len, nh = MAX_HEADERS;
    int minor;
    struct phr_header hdrs[MAX_HEADERS];

    if (c->writing || in->size == 0)
        return;
    int hl = phr_parse_request(in->bytes, in->size, &method, &method_len, &path, &path_len, &minor, hdrs, &nh, 0);
    if (hl == -2) {
        if (in->size > MAX_HEAD_SIZE)
            send_error(c, 431, "request headers too large\n");
        return;
    }
    head_info_t info = hl >= 0 ? read_head(minor, hdrs, nh) : (head_info_t){0};
    if (hl < 0 || info.chunked || info.bad_length) {
        if (hl < 0)
            send_error(c, 400, "bad request\n");
        else if (info.chunked)
            send_error(c, 411, "a request body needs a content-length\n");
        else
            send_error(c, info.content_length > MAX_BODY_SIZE ? 413 : 400, "bad content-length\n");
        return;
    }
    if (in->size < (size_t)hl + info.content_length) {
        if (info.expect_continue && !c->continue_sent)
            send_continue(c);
        return;
    }

    LG_STAT_INC(admin.stats, lg_stats_nworkers, ADMIN_STAT_downstream_rq_total);
    h2o_iovec_t m = h2o_iovec_init(method, method_len);
    int head_only = is_method(m, "HEAD");
    lg_admin_response_t res;
    dispatch(head_only ? h2o_iovec_init(H2O_STRLIT("GET")) : m, h2o_iovec_init(path, path_len),
             h2o_iovec_init(in->bytes + hl, info.content_length), &res);
    lg_stats_block_code(admin.stats, lg_stats_nworkers, (unsigned)res.status);
    send_response(c, &res, head_only, info.keepalive, (size_t)hl + info.content_length);
}

static void on_read(h2o_socket_t *sock, const char *err)
{
    conn_t *c = sock->data;
    if (err != NULL) {
        close_conn(c);
        return;
    }
    handle_input(c);
}

static void on_accept(h2o_socket_t *listener, const char *err);

static void on_accept_retry(h2o_timeout_entry_t *entry)
{
    h2o_socket_read_start(admin.listener, on_accept);
}

static void on_accept(h2o_socket_t *listener, const char *err)
{
    if (err != NULL)
        return;
    h2o_socket_t *sock;
    int i = 0;
    for (; i != ACCEPT_BATCH && (sock = h2o_evloop_socket_accept(listener)) != NULL; ++i) {
        conn_t *c = lg_calloc(1, sizeof(*c));
        c->sock = sock;
        sock->data = c;
        h2o_linklist_insert(&admin.conns, &c->link);
        LG_STAT_INC(admin.stats, lg_stats_nworkers, ADMIN_STAT_downstream_cx_total);
        LG_STAT_INC(admin.stats, lg_stats_nworkers, ADMIN_STAT_downstream_cx_active);
        LG_STAT_INC(admin.listener_stats, lg_stats_nworkers, LG_LISTENER_STAT_downstream_cx_total);
        LG_STAT_INC(admin.listener_stats, lg_stats_nworkers, LG_LISTENER_STAT_downstream_cx_active);
        c->start_ms = lg_now_ms();
        h2o_socket_read_start(sock, on_read);
    }
    if (i != ACCEPT_BATCH && lg_accept_out_of_resources(errno)) { /* errno of the accept that ended the loop */
        lg_accept_backoff_failed(&admin.accept_failures, "the admin listener", errno);
        h2o_socket_read_stop(listener);
        h2o_timeout_link(admin.loop, &admin.accept_backoff, &admin.accept_retry);
    } else if (i != 0) {
        lg_accept_backoff_worked(&admin.accept_failures);
    }
}

/* ---- the thread -------------------------------------------------------------------------------------------------------------- */

static void on_stop_message(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages)
{
    while (!h2o_linklist_is_empty(messages))
        h2o_linklist_unlink(messages->next);
    admin.stopping = 1;
}

static void *admin_main(void *unused)
{
    /* The loop, the listener and the queue (whose wake-up pipe is a socket
     * this thread reads) are made here: libh2o binds a socket's buffers to
     * the thread-local allocator of the thread that creates it. */
    admin.loop = h2o_evloop_create();
    admin.listener = h2o_evloop_socket_create(admin.loop, admin.listen_fd, H2O_SOCKET_FLAG_DONT_READ);
    h2o_socket_read_start(admin.listener, on_accept);
    h2o_timeout_init(admin.loop, &admin.accept_backoff, LG_ACCEPT_BACKOFF_MS);
    admin.accept_retry.cb = on_accept_retry;
    admin.queue = h2o_multithread_create_queue(admin.loop);
    h2o_multithread_register_receiver(admin.queue, &admin.receiver, on_stop_message);
    sem_post(&admin.ready);
    while (!admin.stopping)
        h2o_evloop_run(admin.loop, INT32_MAX);
    while (!h2o_linklist_is_empty(&admin.conns))
        close_conn(H2O_STRUCT_FROM_MEMBER(conn_t, link, admin.conns.next));
    h2o_socket_close(admin.listener);
    if (h2o_timeout_is_linked(&admin.accept_retry))
        h2o_timeout_unlink(&admin.accept_retry);
    h2o_timeout_dispose(admin.loop, &admin.accept_backoff);
    h2o_multithread_unregister_receiver(admin.queue, &admin.receiver);
    h2o_multithread_destroy_queue(admin.queue);
    free(admin.queue); /* libh2o-evloop 2.2.5 frees the queue only in its libuv build */
    h2o_evloop_run(admin.loop, 0);
    h2o_evloop_destroy(admin.loop);
    /* Socket buffers are recycled into a thread-local list that dies with the thread. */
    while (h2o_socket_buffer_prototype.allocator.cnt != 0)
        free(h2o_mem_alloc_recycle(&h2o_socket_buffer_prototype.allocator, 0));
    return NULL;
}

static int start_on_fd(int fd, lg_error_t *err)
{
    if (!builtins_registered) {
        lg__admin_register_basic_handlers();
        lg__admin_register_stats_handlers();
        builtins_registered = 1;
    }
    admin.stats = lg_stats_block_new_ex("http.admin.", admin_stat_defs, ADMIN_STAT__COUNT,
                                        &(lg_stats_block_opts_t){.code_prefix = "downstream_rq_"});
    admin.listener_stats = lg_stats_block_new("listener.admin.", admin_listener_stat_defs, LG_ARRAY_SIZE(admin_listener_stat_defs));
    admin.listen_fd = fd;
    h2o_linklist_init_anchor(&admin.conns);
    admin.stopping = 0;
    sem_init(&admin.ready, 0, 0);
    /* The thread starts with the process signals blocked, whatever the
     * caller's mask: they are for the control thread's sigtimedwait, and one
     * delivered here would kill the process without a drain. */
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGUSR1);
    sigaddset(&block, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    int r = pthread_create(&admin.thread, NULL, admin_main, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (r != 0) {
        lg_error(err, "admin: cannot start the admin thread: %s", strerror(r));
        admin.stopping = 1;
        admin_main(NULL);
        return -1;
    }
    pthread_setname_np(admin.thread, "admin");
    /* lg_admin_stop posts to the queue the thread creates */
    while (sem_wait(&admin.ready) != 0)
        ;
    sem_destroy(&admin.ready);
    admin.running = 1;
    LG_INFO(admin, "admin address: %s", admin.bound);
    return 0;
}

static void format_bound(const struct sockaddr *sa)
{
    char host[INET6_ADDRSTRLEN];
    free(admin.bound);
    admin.bound = lg_malloc(INET6_ADDRSTRLEN + 16);
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const void *)sa;
        inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
        admin.port = ntohs(sin6->sin6_port);
        sprintf(admin.bound, "[%s]:%u", host, admin.port);
    } else {
        const struct sockaddr_in *sin = (const void *)sa;
        inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
        admin.port = ntohs(sin->sin_port);
        sprintf(admin.bound, "%s:%u", host, admin.port);
    }
}

int lg_admin_start(const char *address, uint16_t port, lg_error_t *err)
{
    struct addrinfo hints = {.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE, .ai_socktype = SOCK_STREAM}, *ai;
    char portstr[8];
    snprintf(portstr, sizeof(portstr), "%u", port);
    int r = getaddrinfo(address, portstr, &hints, &ai);
    if (r != 0)
        return lg_error(err, "admin.address: malformed IP address: %s", address);
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), on = 1;
    struct sockaddr_storage ss;
    socklen_t sslen = sizeof(ss);
    if (fd == -1 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) != 0 || bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 ||
        listen(fd, 128) != 0 || getsockname(fd, (struct sockaddr *)&ss, &sslen) != 0) {
        lg_error(err, "cannot bind '%s%s%s:%u': %s", ai->ai_family == AF_INET6 ? "[" : "", address,
                 ai->ai_family == AF_INET6 ? "]" : "", port, strerror(errno));
        if (fd != -1)
            close(fd);
        freeaddrinfo(ai);
        return -1;
    }
    freeaddrinfo(ai);
    format_bound((struct sockaddr *)&ss);
    return start_on_fd(fd, err);
}

int lg_admin_start_pipe(const char *path, uint32_t mode, lg_error_t *err)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    size_t len = strlen(path);
    if (len == 0 || len >= sizeof(sun.sun_path))
        return lg_error(err, "admin.address.pipe.path: invalid unix socket path: %s", path);
    memcpy(sun.sun_path, path, len);
    int abstract = path[0] == '@';
    if (abstract)
        sun.sun_path[0] = '\0';
    else
        unlink(path);
    socklen_t salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + (abstract ? 0 : 1));
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1 || bind(fd, (struct sockaddr *)&sun, salen) != 0 || (!abstract && mode != 0 && chmod(path, mode) != 0) ||
        listen(fd, 128) != 0) {
        lg_error(err, "cannot bind '%s': %s", path, strerror(errno));
        if (fd != -1)
            close(fd);
        return -1;
    }
    free(admin.bound);
    admin.bound = lg_strdup(path);
    admin.port = 0;
    return start_on_fd(fd, err);
}

uint16_t lg_admin_port(void)
{
    return admin.port;
}

int lg_admin_write_address_file(const char *path, lg_error_t *err)
{
    FILE *fp = fopen(path, "w");
    if (fp == NULL)
        return lg_error(err, "cannot open admin address output file %s for writing.", path);
    fputs(admin.bound != NULL ? admin.bound : "", fp);
    return fclose(fp) == 0 ? 0 : lg_error(err, "cannot write admin address output file %s.", path);
}

void lg_admin_stop(void)
{
    if (admin.running) {
        h2o_multithread_send_message(&admin.receiver, &admin.stop_message);
        pthread_join(admin.thread, NULL);
        admin.running = 0;
    }
    unregister_all();
    lg__admin_basic_handlers_dispose();
    lg_stats_block_release(admin.stats);
    admin.stats = NULL;
    lg_stats_block_release(admin.listener_stats);
    admin.listener_stats = NULL;
    free(admin.bound);
    admin.bound = NULL;
    admin.port = 0;
}

void lg__admin_refresh_server_stats(void)
{
    lg_stats_server_refresh(lg_admin_healthcheck_failed());
    if (lg_stats_server != NULL)
        lg_stats_gauge_set(lg_stats_server, LG_SERVER_STAT_days_until_first_cert_expiring, lg_tls_days_until_first_cert_expiring());
}
