#include <arpa/inet.h>
#include <netinet/in.h>
#include <unistd.h>
#include <h2o/string_.h>
#include "test.h"
#include "legate/format.h"
#include "legate/http.h"
#include "legate/regex.h"

static h2o_mem_pool_t pool;

static void set_v4(struct sockaddr_storage *ss, const char *ip, uint16_t port)
{
    struct sockaddr_in *sin = (struct sockaddr_in *)ss;
    memset(ss, 0, sizeof(*ss));
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    inet_pton(AF_INET, ip, &sin->sin_addr);
}

static void set_v6(struct sockaddr_storage *ss, const char *ip, uint16_t port)
{
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
    memset(ss, 0, sizeof(*ss));
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(port);
    inet_pton(AF_INET6, ip, &sin6->sin6_addr);
}

/* Formats `fmt` against `si`; returns a pool string, or the error message prefixed with "ERR:". */
static const char *fmt_flags(const char *fmt, const lg_stream_info_t *si, int flags)
{
    lg_error_t err = {{0}};
    lg_format_t *f = lg_format_compile(fmt, strlen(fmt), flags, &err);
    if (f == NULL)
        return h2o_concat(&pool, h2o_iovec_init(H2O_STRLIT("ERR:")), h2o_iovec_init(err.msg, strlen(err.msg))).base;
    h2o_iovec_t v = lg_format_eval(f, si, &pool);
    v = h2o_strdup(&pool, v.base, v.len);
    lg_format_free(f);
    return v.base;
}

static const char *fmt(const char *f, const lg_stream_info_t *si)
{
    return fmt_flags(f, si, 0);
}

static lg_req_head_t req;
static lg_resp_head_t resp;
static lg_headers_t trailers;
static lg_stream_info_t si;

static void setup(void)
{
    req.method = LG_LIT("POST");
    req.scheme = LG_LIT("https");
    req.authority = LG_LIT("example.com:8443");
    req.path = LG_LIT("/a/b?x=1");
    req.version = LG_HTTP_11;
    lg_headers_add(&pool, &req.headers, LG_LIT("x-foo"), LG_LIT("foo-value"));
    lg_headers_add(&pool, &req.headers, LG_LIT("x-bar"), LG_LIT("bar-value"));
    lg_headers_add(&pool, &req.headers, LG_LIT("x-foo"), LG_LIT("second"));
    lg_headers_add(&pool, &req.headers, LG_LIT("x-empty"), LG_LIT(""));
    resp.status = 503;
    lg_headers_add(&pool, &resp.headers, LG_LIT("content-type"), LG_LIT("text/plain"));
    lg_headers_add(&pool, &trailers, LG_LIT("grpc-status"), LG_LIT("14"));

    si.connection_id = 42;
    si.start_wall_us = 1700000000123456ull; /* 2023-11-14T22:13:20.123456Z */
    si.start_us = 1000000;
    si.last_downstream_rx_us = 1005000;
    si.first_upstream_rx_us = 1012000;
    si.last_downstream_tx_us = 1020999;
    set_v4(&si.downstream_remote, "10.1.2.3", 5555);
    set_v4(&si.downstream_direct_remote, "192.168.0.9", 4444);
    set_v6(&si.downstream_local, "::1", 10000);
    set_v4(&si.upstream_remote, "127.0.0.1", 8080);
    si.requested_server_name = LG_LIT("sni.example.com");
    si.upstream_cluster = LG_LIT("backend");
    si.route_name = LG_LIT("r1");
    si.response_code_details = LG_LIT("via_upstream");
    si.protocol = LG_HTTP_2;
    si.response_code = 503;
    si.response_flags = LG_RF(NO_HEALTHY_UPSTREAM) | LG_RF(UPSTREAM_CONNECTION_FAILURE);
    si.bytes_received = 12;
    si.bytes_sent = 345;
    si.request = &req;
    si.response = &resp;
    si.response_trailers = &trailers;
    si.request_id = LG_LIT("req-id-1");
}

static void test_literals(void)
{
    ok_str(fmt("plain text", &si), "plain text");
    ok_str(fmt("", &si), "");
    ok_str(fmt("100%% sure %%", &si), "100% sure %");
    ok_str(fmt("%%%%", &si), "%%");
    ok_str(fmt("%%PROTOCOL%%", &si), "%PROTOCOL%");
    lg_error_t err;
    lg_format_t *f = lg_format_compile(H2O_STRLIT("const %% value"), 0, &err);
    ok(f != NULL && lg_format_is_constant(f), "constant format");
    ok(f != NULL && h2o_memis(lg_format_constant(f).base, lg_format_constant(f).len, H2O_STRLIT("const % value")),
       "constant value");
    lg_format_free(f);
    f = lg_format_compile(H2O_STRLIT("a %PROTOCOL%"), 0, &err);
    ok(f != NULL && !lg_format_is_constant(f), "format with operator is not constant");
    lg_format_free(f);
}

static void test_operators(void)
{
    ok_str(fmt("%PROTOCOL% %RESPONSE_CODE% %RESPONSE_CODE_DETAILS%", &si), "HTTP/2 503 via_upstream");
    ok_str(fmt("%RESPONSE_FLAGS%", &si), "UH,UF");
    ok_str(fmt("%BYTES_RECEIVED%/%BYTES_SENT%", &si), "12/345");
    ok_str(fmt("%DURATION% %REQUEST_DURATION% %RESPONSE_DURATION% %RESPONSE_TX_DURATION%", &si), "20 5 12 8");
    ok_str(fmt("%UPSTREAM_HOST% %UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS%", &si), "127.0.0.1:8080 backend -");
    ok_str(fmt("%DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", &si), "10.1.2.3:5555 10.1.2.3");
    ok_str(fmt("%DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%", &si), "[::1]:10000 ::1");
    ok_str(fmt("%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%", &si), "192.168.0.9:4444");
    ok_str(fmt("%DOWNSTREAM_REMOTE_PORT% %UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", &si), "5555 127.0.0.1");
    ok_str(fmt("%REQUESTED_SERVER_NAME% %ROUTE_NAME% %CONNECTION_ID%", &si), "sni.example.com r1 42");
    ok_str(fmt("[%UPSTREAM_TRANSPORT_FAILURE_REASON%]", &si), "[-]");
    ok_str(fmt("%STREAM_ID%", &si), "req-id-1");
    char host[256] = "";
    gethostname(host, sizeof(host) - 1);
    ok_str(fmt("%HOSTNAME%", &si), host);
}

static void test_headers(void)
{
    ok_str(fmt("%REQ(X-FOO)%", &si), "foo-value");
    ok_str(fmt("%REQ(x-missing?X-BAR)%", &si), "bar-value");
    ok_str(fmt("%REQ(x-foo?X-BAR)%", &si), "foo-value");
    ok_str(fmt("%REQ(x-missing?x-other)%", &si), "-");
    ok_str(fmt("[%REQ(x-empty)%]", &si), "[]");
    ok_str(fmt("%REQ(X-FOO):3%", &si), "foo");
    ok_str(fmt("%REQ(:AUTHORITY)% %REQ(host)% %REQ(:PATH)% %REQ(:METHOD)% %REQ(:scheme)%", &si),
           "example.com:8443 example.com:8443 /a/b?x=1 POST https");
    ok_str(fmt("%REQ_WITHOUT_QUERY(:PATH)%", &si), "/a/b");
    ok_str(fmt("%REQ(:protocol)%", &si), "-");
    ok_str(fmt("%RESP(Content-Type)% %RESP(:status)% %RESP(x-none)%", &si), "text/plain 503 -");
    ok_str(fmt("%TRAILER(grpc-status)% %TRAILER(grpc-message)%", &si), "14 -");
    ok_str(fmt("%RESPONSE_CODE:1%", &si), "5");
}

static void test_missing(void)
{
    lg_stream_info_t empty = {0};
    ok_str(fmt("%REQ(x-foo)% %PROTOCOL% %RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_HOST% %DURATION% %ROUTE_NAME% %START_TIME%",
               &empty),
           "- - 0 - - - - -");
    ok_str(fmt_flags("a%REQ(x-foo)%b%UPSTREAM_CLUSTER%c", &empty, LG_FORMAT_OMIT_EMPTY), "abc");
    ok_str(fmt("%REQ(x-foo)%", NULL), "-");
    ok_str(fmt_flags("%REQ(x-foo)%", NULL, LG_FORMAT_OMIT_EMPTY), "");
}

static void test_start_time(void)
{
    ok_str(fmt("%START_TIME%", &si), "2023-11-14T22:13:20.123Z");
    ok_str(fmt("%START_TIME(%Y/%m/%d %H:%M:%S)%", &si), "2023/11/14 22:13:20");
    ok_str(fmt("%START_TIME(%s.%3f)%", &si), "1700000000.123");
    ok_str(fmt("%START_TIME(%f)%", &si), "123456000");
    ok_str(fmt("%START_TIME(%6f|%1f|%9f)%", &si), "123456|1|123456000");
    ok_str(fmt("%START_TIME(%E6S|%E*S|%E0S)%", &si), "20.123456|20.123456|20");
    ok_str(fmt("%START_TIME(%Ez %%)%", &si), "+00:00 %");
    char buf[64];
    lg_format_time(H2O_STRLIT("%E*S"), 1700000000000000ull, buf, sizeof(buf));
    ok_str(buf, "20");
    lg_format_time(H2O_STRLIT("%Y-%m-%dT%H:%M:%E3SZ"), 1700000000120000ull, buf, sizeof(buf));
    ok_str(buf, "2023-11-14T22:13:20.120Z");
    size_t n = lg_format_time(H2O_STRLIT("%Y-%m-%d"), 1700000000000000ull, buf, 5);
    ok(n == 4 && strcmp(buf, "2023") == 0, "cut at cap: %zu %s", n, buf);
}

static void test_errors(void)
{
    ok_str(fmt("%FOO%", &si), "ERR:Not supported field in StreamInfo: FOO");
    ok_str(fmt("x %REQ% y", &si), "ERR:REQ requires parameters");
    ok_str(fmt("%PROTOCOL(x)%", &si), "ERR:PROTOCOL does not take any parameters or length");
    ok_str(fmt("abc %", &si), "ERR:Incorrect configuration: abc %. Couldn't find valid command at position 4");
    ok_str(fmt("%REQ(x)", &si), "ERR:Incorrect configuration: %REQ(x). Couldn't find valid command at position 0");
    ok_str(fmt("%protocol%", &si), "ERR:Incorrect configuration: %protocol%. Couldn't find valid command at position 0");
    ok_str(fmt("%REQ(x):a%", &si), "ERR:Incorrect configuration: %REQ(x):a%. Couldn't find valid command at position 0");
    ok_str(fmt("%REQ(a?b?c)%", &si), "ERR:More than 1 alternative header specified in token: a?b?c");
    ok_str(fmt("%7C", &si), "ERR:Incorrect configuration: %7C. Couldn't find valid command at position 0");
    ok_str(fmt("%7C%", &si), "ERR:Not supported field in StreamInfo: 7C");
    /* the argument is the shortest one followed by a valid tail */
    ok_str(fmt("%REQ(a)b)%", &si), "-");
    /* Envoy operators Legate does not track parse and print as missing */
    ok_str(fmt("%DYNAMIC_METADATA(a:b)%", &si), "-");
}

static void test_typed(void)
{
    lg_error_t err;
    h2o_iovec_t v;
    lg_format_t *f = lg_format_compile(H2O_STRLIT("%RESPONSE_CODE%"), 0, &err);
    ok(lg_format_eval_typed(f, &si, &pool, &v) == LG_FORMAT_VALUE_NUMBER && h2o_memis(v.base, v.len, H2O_STRLIT("503")), "number");
    lg_format_free(f);
    f = lg_format_compile(H2O_STRLIT("%UPSTREAM_TRANSPORT_FAILURE_REASON%"), 0, &err);
    ok(lg_format_eval_typed(f, &si, &pool, &v) == LG_FORMAT_VALUE_MISSING, "missing");
    lg_format_free(f);
    f = lg_format_compile(H2O_STRLIT("code=%RESPONSE_CODE%"), 0, &err);
    ok(lg_format_eval_typed(f, &si, &pool, &v) == LG_FORMAT_VALUE_STRING && h2o_memis(v.base, v.len, H2O_STRLIT("code=503")),
       "string");
    lg_format_free(f);
    lg_strbuf_t sb = {0};
    f = lg_format_compile(H2O_STRLIT("%PROTOCOL% %BYTES_SENT%\n"), 0, &err);
    lg_format_append(f, &si, &sb);
    lg_format_append(f, &si, &sb);
    ok_str(sb.base, "HTTP/2 345\nHTTP/2 345\n");
    lg_strbuf_free(&sb);
    lg_format_free(f);
}

static void test_response_flags(void)
{
    char buf[256];
    ok(lg_response_flags_format(0, buf, sizeof(buf)) == 1 && strcmp(buf, "-") == 0, "no flags");
    lg_response_flags_format(LG_RF(NO_ROUTE_FOUND), buf, sizeof(buf));
    ok_str(buf, "NR");
    lg_response_flags_format(LG_RF(DROP_OVERLOAD) | LG_RF(FAILED_LOCAL_HEALTHCHECK) | LG_RF(UPSTREAM_RETRY_LIMIT_EXCEEDED), buf,
                             sizeof(buf));
    ok_str(buf, "LH,URX,DO");
    size_t n = lg_response_flags_format(LG_RF(NO_HEALTHY_UPSTREAM) | LG_RF(UPSTREAM_REQUEST_TIMEOUT), buf, 4);
    ok(n == 3 && strcmp(buf, "UH,") == 0, "truncated to cap: %s", buf);
}

static void test_regex(void)
{
    lg_error_t err;
    lg_regex_t *re = lg_regex_compile(H2O_STRLIT("/api/v[0-9]+/(.*)"), NULL, &err);
    ok(re != NULL, "compile");
    ok(lg_regex_full_match(re, H2O_STRLIT("/api/v1/users")), "full match");
    ok(!lg_regex_full_match(re, H2O_STRLIT("x/api/v1/users")), "full match is anchored");
    ok(lg_regex_partial_match(re, H2O_STRLIT("x/api/v1/users")), "partial match");
    ok(lg_regex_groups(re) == 1, "groups");
    h2o_iovec_t out = lg_regex_replace_all(re, H2O_STRLIT("/api/v2/items"), H2O_STRLIT("/\\1"), &pool);
    ok_str(out.base, "/items");
    ok(lg_regex_check_rewrite(re, H2O_STRLIT("\\1"), &err) == 0, "rewrite ok");
    ok(lg_regex_check_rewrite(re, H2O_STRLIT("\\2"), &err) != 0, "rewrite names a missing group");
    lg_regex_free(re);
    re = lg_regex_compile(H2O_STRLIT("o"), NULL, &err);
    out = lg_regex_replace_all(re, H2O_STRLIT("foo boo"), H2O_STRLIT("0"), &pool);
    ok_str(out.base, "f00 b00");
    out = lg_regex_replace_all(re, H2O_STRLIT("xyz"), H2O_STRLIT("0"), &pool);
    ok_str(out.base, "xyz");
    lg_regex_free(re);
    ok(lg_regex_compile(H2O_STRLIT("(abc"), NULL, &err) == NULL, "bad regex");
    ok_str(err.msg, "invalid regex '(abc': missing ): (abc");
    ok(lg_regex_compile(H2O_STRLIT("a{1000}"), NULL, &err) == NULL, "program too large for the default limit");
    ok(strstr(err.msg, "RE2 program size of ") != NULL &&
           strstr(err.msg, "> max program size of 100 set for the error level threshold") != NULL,
       "%s", err.msg);
    uint32_t max = 5;
    ok(lg_regex_compile(H2O_STRLIT("abcdefgh"), &max, &err) == NULL, "explicit limit");
    ok(strstr(err.msg, "> max program size of 5. Increase configured max program size if necessary.") != NULL, "%s", err.msg);
    max = 100000;
    re = lg_regex_compile(H2O_STRLIT("a{1000}"), &max, &err);
    ok(re != NULL, "explicit limit allows larger programs");
    lg_regex_free(re);
}

int main(void)
{
    h2o_mem_init_pool(&pool);
    setup();
    test_literals();
    test_operators();
    test_headers();
    test_missing();
    test_start_time();
    test_errors();
    test_typed();
    test_response_flags();
    test_regex();
    h2o_mem_clear_pool(&pool);
    return done();
}
