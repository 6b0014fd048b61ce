#include <arpa/inet.h>
#include <netinet/in.h>
#include <regex.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#include "legate/admin.h"
#include "legate/stats.h"
#include "test.h"

/* A plain-socket HTTP/1.1 client that keeps unread bytes for pipelined responses. */
typedef struct st_client_t {
    int fd;
    lg_strbuf_t buf;
} client_t;

typedef struct st_reply_t {
    int status;
    char *headers;
    lg_strbuf_t body;
} reply_t;

static int quit_called;

static void on_quit(void)
{
    quit_called = 1;
}

static client_t client_open(void)
{
    client_t c = {socket(AF_INET, SOCK_STREAM, 0)};
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(lg_admin_port()), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct timeval tv = {5, 0};
    setsockopt(c.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (connect(c.fd, (struct sockaddr *)&sin, sizeof(sin)) != 0)
        perror("connect");
    return c;
}

static void client_close(client_t *c)
{
    close(c->fd);
    lg_strbuf_free(&c->buf);
}

static void client_send(client_t *c, const char *s)
{
    size_t len = strlen(s), off = 0;
    while (off < len) {
        ssize_t n = write(c->fd, s + off, len - off);
        if (n <= 0)
            return;
        off += (size_t)n;
    }
}

static int fill(client_t *c)
{
    char tmp[4096];
    ssize_t n = read(c->fd, tmp, sizeof(tmp));
    if (n <= 0)
        return -1;
    lg_strbuf_append(&c->buf, tmp, (size_t)n);
    return 0;
}

/* Reads one response; returns -1 on a closed connection or timeout. */
static int client_read(client_t *c, reply_t *r, int head)
{
    char *end;
    *r = (reply_t){0};
    while (c->buf.base == NULL || (end = strstr(c->buf.base, "\r\n\r\n")) == NULL)
        if (fill(c) != 0)
            return -1;
    size_t head_len = (size_t)(end - c->buf.base) + 4, body_len = 0;
    r->headers = lg_strndup(c->buf.base, head_len);
    sscanf(r->headers, "HTTP/1.1 %d", &r->status);
    const char *cl = strstr(r->headers, "content-length: ");
    if (cl != NULL)
        body_len = strtoul(cl + 16, NULL, 10);
    if (head)
        body_len = 0;
    while (c->buf.len < head_len + body_len)
        if (fill(c) != 0)
            return -1;
    lg_strbuf_append(&r->body, c->buf.base + head_len, body_len);
    if (r->body.base == NULL)
        lg_strbuf_puts(&r->body, "");
    memmove(c->buf.base, c->buf.base + head_len + body_len, c->buf.len - head_len - body_len + 1);
    c->buf.len -= head_len + body_len;
    return 0;
}

static void reply_free(reply_t *r)
{
    free(r->headers);
    lg_strbuf_free(&r->body);
}

/* One request on a fresh connection. */
static reply_t request(const char *method, const char *path, const char *body)
{
    client_t c = client_open();
    char req[2048];
    snprintf(req, sizeof(req), "%s %s HTTP/1.1\r\nHost: admin\r\nContent-Length: %zu\r\n\r\n%s", method, path, strlen(body), body);
    client_send(&c, req);
    reply_t r;
    if (client_read(&c, &r, strcmp(method, "HEAD") == 0) != 0)
        r = (reply_t){-1, lg_strdup(""), {lg_strdup(""), 0, 1}};
    client_close(&c);
    return r;
}

static void expect(const char *method, const char *path, int status, const char *body)
{
    reply_t r = request(method, path, "");
    ok(r.status == status, "%s %s: status %d, want %d", method, path, r.status, status);
    ok(strcmp(r.body.base, body) == 0, "%s %s: body \"%s\", want \"%s\"", method, path, r.body.base, body);
    reply_free(&r);
}

static void test_basic_endpoints(void)
{
    expect("GET", "/ready", 200, "LIVE\n");
    expect("POST", "/healthcheck/fail", 200, "OK\n");
    ok(lg_admin_healthcheck_failed(), "health checks failed");
    expect("GET", "/ready", 503, "DRAINING\n");
    expect("POST", "/healthcheck/ok", 200, "OK\n");
    expect("GET", "/ready", 200, "LIVE\n");
    expect("GET", "/healthcheck/fail", 405, "Method GET not allowed, POST required.");
    expect("GET", "/quitquitquit", 405, "Method GET not allowed, POST required.");
    expect("GET", "/reset_counters", 405, "Method GET not allowed, POST required.");
    expect("GET", "/logging", 405, "Method GET not allowed, POST required.");
    ok(!quit_called, "GET did not quit");
    expect("POST", "/quitquitquit", 200, "OK\n");
    ok(quit_called, "quit callback called");

    reply_t r = request("GET", "/nope", "");
    ok(r.status == 404 && strncmp(r.body.base, "invalid path. admin commands are:\n", 34) == 0, "404 with help: %s", r.body.base);
    ok(strstr(r.body.base, "  /quitquitquit (POST): exit the server\n") != NULL, "help marks POST endpoints");
    ok(strstr(r.body.base, "  /ready: print server state") != NULL, "help lists /ready");
    ok(strstr(r.body.base, "      usedonly: Only include stats") != NULL, "help lists params");
    reply_free(&r);
    r = request("GET", "/help", "");
    ok(r.status == 200 && strncmp(r.body.base, "admin commands are:\n  /: Admin home page\n", 41) == 0, "/help sorted: %s",
       r.body.base);
    reply_free(&r);
    r = request("GET", "/", "");
    ok(r.status == 200 && strstr(r.headers, "content-type: text/html") != NULL && strstr(r.body.base, "<a href='stats'>") != NULL,
       "home page");
    reply_free(&r);
    r = request("HEAD", "/ready", "");
    ok(r.status == 200 && strstr(r.headers, "content-length: 5\r\n") != NULL && r.body.len == 0, "HEAD has no body");
    reply_free(&r);
}

static void test_stats_endpoints(void)
{
    expect("GET", "/stats?filter=%5Eserver%5C.concurrency$", 200, "server.concurrency: 2\n");
    expect("GET", "/stats?filter=^server.concurrency$&format=json", 200,
           "{\"stats\":[{\"name\":\"server.concurrency\",\"value\":2}]}");
    expect("GET", "/stats?filter=(", 400, "Invalid re2 regex");
    expect("GET", "/stats?type=Bogus", 400, "invalid &type= param");
    expect("GET", "/stats?format=xml", 400, "usage: /stats?format=(html|active-html|json|prometheus|text)\n\n");
    expect("GET", "/stats/prometheus?filter=^server.concurrency$", 200,
           "# TYPE envoy_server_concurrency gauge\nenvoy_server_concurrency{} 2\n\n");
    expect("GET", "/stats?filter=^server.concurrency$&format=prometheus", 200,
           "# TYPE envoy_server_concurrency gauge\nenvoy_server_concurrency{} 2\n\n");

    static const lg_stat_def_t defs[] = {{"upstream_rq_total", LG_STAT_COUNTER}, {"upstream_rq_time", LG_STAT_HISTOGRAM}};
    lg_stats_block_t *b = lg_stats_block_new_ex(
        "cluster.web.", defs, 2, &(lg_stats_block_opts_t){.code_prefix = "upstream_rq_", .classes_dynamic = 1, .each_code = 1});
    LG_STAT_ADD(b, 0, 0, 3);
    lg_stats_block_code(b, 1, 200);
    lg_stats_histogram_record(b, 0, 1, 1);
    expect("GET", "/stats?filter=cluster.web.upstream_rq_(200|total)&type=Counters", 200,
           "cluster.web.upstream_rq_200: 1\ncluster.web.upstream_rq_total: 3\n");
    expect("GET", "/stats?filter=cluster.web.upstream_rq_time", 200,
           "cluster.web.upstream_rq_time: P0(nan,1) P25(nan,1) P50(nan,1) P75(nan,1) P90(nan,1) P95(nan,1) P99(nan,1) "
           "P99.5(nan,1) P99.9(nan,1) P100(nan,1)\n");
    expect("GET", "/stats/prometheus?filter=cluster.web.upstream_rq_2", 200,
           "# TYPE envoy_cluster_upstream_rq "
           "counter\nenvoy_cluster_upstream_rq{envoy_response_code=\"200\",envoy_cluster_name=\"web\"} 1\n\n"
           "# TYPE envoy_cluster_upstream_rq_xx counter\n"
           "envoy_cluster_upstream_rq_xx{envoy_response_code_class=\"2\",envoy_cluster_name=\"web\"} 1\n\n");
    reply_t r = request("GET", "/stats/prometheus?filter=cluster.web.upstream_rq_time", "");
    ok(strstr(r.body.base, "# TYPE envoy_cluster_upstream_rq_time histogram\n") != NULL &&
           strstr(r.body.base, "envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=\"web\",le=\"0.5\"} 0\n") != NULL &&
           strstr(r.body.base, "envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=\"web\",le=\"1\"} 1\n") != NULL &&
           strstr(r.body.base, "envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=\"web\",le=\"+Inf\"} 1\n") != NULL &&
           strstr(r.body.base, "envoy_cluster_upstream_rq_time_sum{envoy_cluster_name=\"web\"} 1\n") != NULL &&
           strstr(r.body.base, "envoy_cluster_upstream_rq_time_count{envoy_cluster_name=\"web\"} 1\n") != NULL,
       "prometheus histogram: %s", r.body.base);
    reply_free(&r);
    r = request("GET", "/stats?usedonly&filter=^cluster.web", "");
    ok(strstr(r.body.base, "upstream_rq_total: 3") != NULL && strstr(r.body.base, "upstream_rq_2xx: 1") != NULL,
       "usedonly keeps used");
    reply_free(&r);
    r = request("GET", "/stats?usedonly&filter=^listener_manager", "");
    ok(strcmp(r.body.base, "") == 0, "usedonly drops unused: %s", r.body.base);
    reply_free(&r);

    expect("POST", "/reset_counters", 200, "OK\n");
    expect("GET", "/stats?filter=cluster.web.upstream_rq_total", 200, "cluster.web.upstream_rq_total: 0\n");
    lg_stats_block_release(b);
}

static void test_keepalive(void)
{
    client_t c = client_open();
    reply_t r1, r2, r3;
    client_send(&c, "GET /ready HTTP/1.1\r\nHost: a\r\n\r\n");
    ok(client_read(&c, &r1, 0) == 0 && r1.status == 200, "first request on the connection");
    client_send(&c, "GET /stats?filter=server.concurrency HTTP/1.1\r\nHost: a\r\n\r\n");
    ok(client_read(&c, &r2, 0) == 0 && strcmp(r2.body.base, "server.concurrency: 2\n") == 0,
       "second request on the same connection");
    /* two pipelined requests in one write; the second asks to close */
    client_send(&c, "GET /ready HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\nConnection: close\r\n\r\n");
    ok(client_read(&c, &r3, 0) == 0 && r3.status == 200, "pipelined first");
    reply_free(&r3);
    ok(client_read(&c, &r3, 0) == 0 && r3.status == 404 && strstr(r3.headers, "connection: close") != NULL, "pipelined second");
    char byte;
    ok(read(c.fd, &byte, 1) == 0, "server closed after connection: close");
    reply_free(&r1);
    reply_free(&r2);
    reply_free(&r3);
    client_close(&c);

    c = client_open();
    client_send(&c, "POST /stats HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n");
    ok(client_read(&c, &r1, 0) == 0 && r1.status == 100, "100 Continue before the body");
    client_send(&c, "{}");
    ok(client_read(&c, &r2, 0) == 0 && r2.status == 200, "then the response");
    reply_free(&r1);
    reply_free(&r2);
    client_close(&c);

    c = client_open();
    client_send(&c, "BAD\r\n\r\n");
    ok(client_read(&c, &r1, 0) == 0 && r1.status == 400, "malformed request: 400");
    reply_free(&r1);
    client_close(&c);
}

static void echo(const lg_admin_request_t *req, lg_admin_response_t *res, void *ctx)
{
    const char *x = lg_admin_param(req, "x"), *y = lg_admin_param(req, "y");
    lg_strbuf_printf(&res->body, "%.*s x=[%s] y=[%s] z=%s body=[%.*s]", (int)req->method.len, req->method.base, x ? x : "(null)",
                     y ? y : "(null)", lg_admin_param(req, "z") ? "set" : "unset", (int)req->body.len, req->body.base);
    res->status = 201;
}

static void test_custom_handler(void)
{
    ok(lg_admin_register("/echo", "echo", 0, echo, NULL) == 0, "register");
    ok(lg_admin_register("/echo", "echo", 0, echo, NULL) == -1, "duplicate rejected");
    expect("GET", "/echo?x=a%20b+c&y", 201, "GET x=[a b+c] y=[] z=unset body=[]");
    reply_t r = request("POST", "/echo?x=1&x=2", "payload");
    ok(r.status == 201 && strcmp(r.body.base, "POST x=[1] y=[(null)] z=unset body=[payload]") == 0, "body and first param: %s",
       r.body.base);
    reply_free(&r);
    lg_admin_response_t res;
    lg_admin_request("GET", "/echo?z", h2o_iovec_init(NULL, 0), &res);
    ok(res.status == 201 && strcmp(res.body.base, "GET x=[(null)] y=[(null)] z=set body=[]") == 0, "in-process request");
    lg_strbuf_free(&res.body);
    ok(lg_admin_unregister("/echo") == 0, "unregister");
    r = request("GET", "/echo", "");
    ok(r.status == 404, "unregistered path: 404");
    reply_free(&r);
}

static void test_logging(void)
{
    reply_t r = request("POST", "/logging?level=debug", "");
    ok(r.status == 200 && strncmp(r.body.base, "active loggers:\n  admin: debug\n", 31) == 0, "level=debug: %s", r.body.base);
    reply_free(&r);
    ok(lg_log_levels[LG_LOGC_router] == LG_LOG_DEBUG && lg_log_levels[LG_LOGC_upstream] == LG_LOG_DEBUG, "all levels set");
    r = request("POST", "/logging?router=warning", "");
    ok(r.status == 200 && strstr(r.body.base, "  router: warning\n") != NULL, "one logger");
    reply_free(&r);
    ok(lg_log_levels[LG_LOGC_router] == LG_LOG_WARN && lg_log_levels[LG_LOGC_http] == LG_LOG_DEBUG, "only router changed");
    r = request("POST", "/logging?paths=http:error,%20upstream:trace", "");
    ok(r.status == 200 && lg_log_levels[LG_LOGC_http] == LG_LOG_ERROR && lg_log_levels[LG_LOGC_upstream] == LG_LOG_TRACE, "paths");
    reply_free(&r);
    r = request("POST", "/logging?bogus=info", "");
    ok(r.status == 400 && strncmp(r.body.base, "error: unknown logger name\n\nusage: /logging?<name>=<level>", 58) == 0,
       "unknown logger: %s", r.body.base);
    ok(strstr(r.body.base, "levels: trace debug info warning error critical off \n") != NULL, "levels listed");
    reply_free(&r);
    r = request("POST", "/logging?paths=http:info,bogus:debug", "");
    ok(r.status == 400 && lg_log_levels[LG_LOGC_http] == LG_LOG_ERROR, "paths with an unknown name change nothing");
    reply_free(&r);
    r = request("POST", "/logging?level=loud", "");
    ok(r.status == 400 && strncmp(r.body.base, "error: unknown logger level\n", 28) == 0, "unknown level");
    reply_free(&r);
    r = request("POST", "/logging?level=info&http=debug", "");
    ok(r.status == 400 && strncmp(r.body.base, "error: invalid number of parameters\n", 36) == 0, "two params");
    reply_free(&r);
    r = request("POST", "/logging?level=info", "");
    reply_free(&r);
}

static void test_server_info(void)
{
    lg_admin_set_server_info("abc/1.0.0/Clean/RELEASE/OpenSSL", "disabled", "{\"concurrency\":2,\"log_level\":\"info\"}",
                             "{\"id\":\"n1\",\"cluster\":\"c\",\"metadata\":{},\"extensions\":[]}");
    reply_t r = request("GET", "/server_info", "");
    ok(r.status == 200 && strstr(r.headers, "content-type: application/json") != NULL, "server_info json");
    static const char head[] =
        "{\n \"version\": \"abc/1.0.0/Clean/RELEASE/OpenSSL\",\n \"state\": \"LIVE\",\n \"uptime_current_epoch\": \"";
    ok(strncmp(r.body.base, head, sizeof(head) - 1) == 0, "server_info head: %s", r.body.base);
    ok(strstr(r.body.base, " \"hot_restart_version\": \"disabled\",\n \"command_line_options\": {\n  \"concurrency\": 2,\n"
                           "  \"log_level\": \"info\"\n },\n \"node\": {\n  \"id\": \"n1\",\n  \"cluster\": \"c\",\n"
                           "  \"metadata\": {},\n  \"extensions\": []\n }\n}\n") != NULL,
       "server_info tail: %s", r.body.base);
    reply_free(&r);

    lg_strbuf_t b = {NULL};
    lg_admin_json_pretty(&b, " { \"a\" : [1, \"x,{y\"] , \"b\":{ } }", 0);
    ok_str(b.base, "{\n \"a\": [\n  1,\n  \"x,{y\"\n ],\n \"b\": {}\n}");
    lg_strbuf_free(&b);
    r = request("GET", "/memory", "");
    ok(r.status == 200 && strstr(r.body.base, "\"allocated\": \"") != NULL, "memory");
    reply_free(&r);
}

static void test_address_file(void)
{
    char path[] = "/tmp/legate-admin-addrXXXXXX", want[64];
    int fd = mkstemp(path);
    close(fd);
    lg_error_t err;
    ok(lg_admin_write_address_file(path, &err) == 0, "address file written");
    char *got = lg_read_file(path, NULL, &err);
    snprintf(want, sizeof(want), "127.0.0.1:%u", lg_admin_port());
    ok(got != NULL && strcmp(got, want) == 0, "address file: %s", got ? got : "(null)");
    free(got);
    unlink(path);
}

static char *log_once(const char *format)
{
    char path[] = "/tmp/legate-logXXXXXX";
    int fd = mkstemp(path);
    close(fd);
    lg_error_t err;
    ok(lg_log_configure(format, path, &err) == 0, "log configured");
    LG_WARN(router, "a\nb \"q\"");
    LG_DEBUG(router, "not logged");
    lg_log_reopen();
    LG_INFO(admin, "after reopen %d", 7);
    char *got = lg_read_file(path, NULL, &err);
    unlink(path);
    return got;
}

static void test_log(void)
{
    ok(lg_log_level_parse("warning") == LG_LOG_WARN && lg_log_level_parse("warn") == LG_LOG_WARN, "warning levels");
    ok(lg_log_level_parse("trace") == LG_LOG_TRACE && lg_log_level_parse("off") == LG_LOG_OFF, "trace, off");
    ok(lg_log_level_parse("loud") == -1, "unknown level");
    ok_str(lg_log_level_name(LG_LOG_CRITICAL), "critical");
    ok_str(lg_log_component_names[LG_LOGC_upstream], "upstream");

    char *got = log_once("%l|%L|%n|%v|%s|%%|%_|%j");
    char want[512];
    snprintf(want, sizeof(want),
             "warning|W|router|a\nb \"q\"|test_admin.c|%%|a\\nb \"q\"|a\\nb \\\"q\\\"\n"
             "info|I|admin|after reopen 7|test_admin.c|%%|after reopen 7|after reopen 7\n");
    ok(got != NULL && strcmp(got, want) == 0, "custom format: %s", got);
    free(got);

    got = log_once(NULL);
    regex_t re;
    regcomp(&re,
            "^\\[[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}\\]\\[[0-9]+\\]\\[warning\\]\\[router\\] "
            "\\[test/unit/admin/test_admin.c:[0-9]+\\] a\nb \"q\"\n",
            REG_EXTENDED);
    ok(got != NULL && regexec(&re, got, 0, NULL, 0) == 0, "Envoy's default format: %s", got);
    regfree(&re);
    free(got);
}

int main(void)
{
    lg_error_t err;
    lg_stats_init(2);
    lg_stats_server_set_state(LG_SERVER_LIVE);
    lg_admin_on_quit(on_quit);
    ok(lg_admin_register("/early", "registered before start", 0, echo, NULL) == 0, "register before start");
    ok(lg_admin_start("127.0.0.1", 0, &err) == 0, "admin started");
    expect("GET", "/early?x=1", 201, "GET x=[1] y=[(null)] z=unset body=[]");
    ok(lg_admin_port() != 0, "ephemeral port bound");
    ok(lg_admin_start("not-an-ip", 0, &err) == -1 && strstr(err.msg, "not-an-ip") != NULL, "bad address: %s", err.msg);

    test_basic_endpoints();
    test_stats_endpoints();
    test_keepalive();
    test_custom_handler();
    test_logging();
    test_server_info();
    test_address_file();

    lg_admin_stop();
    ok(lg_admin_port() == 0, "stopped");
    ok(lg_admin_start_pipe("/tmp/legate-admin-test.sock", 0600, &err) == 0, "pipe admin started");
    lg_admin_stop();
    unlink("/tmp/legate-admin-test.sock");
    lg_stats_shutdown();
    test_log();
    return done();
}
