#include <stdlib.h>
#include <string.h>
#include <h2o/string_.h>
#include "legate/common.h"
#include "legate/h1.h"
#include "legate/http.h"
#include "test.h"

static lg_h1_limits_t lim;
static h2o_mem_pool_t pool;

/* One parse of a request, rendered as a string so that runs can be compared. */
typedef struct st_req_result_t {
    ssize_t ret;
    lg_req_head_t head;
    lg_h1_msg_info_t info;
    lg_h1_error_t err;
    char *buf;
    char summary[2048];
} req_result_t;

static void summarize_req(req_result_t *r)
{
    int n;
    if (r->ret < 0) {
        snprintf(r->summary, sizeof(r->summary), "ret=%zd status=%d details=%s", r->ret, r->ret == -1 ? r->err.status : 0,
                 r->ret == -1 ? r->err.details : "");
        return;
    }
    n = snprintf(r->summary, sizeof(r->summary),
                 "ret=%zd %.*s scheme=%.*s authority=%.*s path=%.*s v=%x body=%d cl=%llu ka=%d up=%d", r->ret,
                 (int)r->head.method.len, r->head.method.base, (int)r->head.scheme.len, r->head.scheme.base,
                 (int)r->head.authority.len, r->head.authority.base, (int)r->head.path.len, r->head.path.base, r->head.version,
                 r->info.body, (unsigned long long)r->info.content_length, r->info.keep_alive, r->info.upgrade);
    for (size_t i = 0; i != r->head.headers.size && n < (int)sizeof(r->summary); ++i)
        n += snprintf(r->summary + n, sizeof(r->summary) - n, "|%.*s:%.*s", (int)r->head.headers.entries[i].name.len,
                      r->head.headers.entries[i].name.base, (int)r->head.headers.entries[i].value.len,
                      r->head.headers.entries[i].value.base);
}

/* Parses s (copied: the parser writes into its input) in one call. */
static void parse_req(req_result_t *r, const char *s, size_t len)
{
    free(r->buf);
    r->buf = lg_malloc(len + 1);
    memcpy(r->buf, s, len);
    r->ret = lg_h1_parse_request(&pool, r->buf, len, 0, &lim, &r->head, &r->info, &r->err);
    summarize_req(r);
}

/* Parses s fed one more byte at a time, as a connection would; every prefix must say
 * "incomplete" until the whole head is there. Returns 0 when consistent. */
static int parse_req_bytewise(req_result_t *r, const char *s, size_t len)
{
    free(r->buf);
    r->buf = lg_malloc(len + 1);
    memcpy(r->buf, s, len);
    for (size_t k = 0; k <= len; ++k) {
        r->ret = lg_h1_parse_request(&pool, r->buf, k, k == 0 ? 0 : k - 1, &lim, &r->head, &r->info, &r->err);
        if (r->ret != -2 || k == len)
            break;
    }
    summarize_req(r);
    return 0;
}

static void free_result(req_result_t *r)
{
    free(r->buf);
    r->buf = NULL;
}

typedef struct st_valid_case_t {
    const char *in;
    const char *method, *scheme, *authority, *path;
    lg_h1_body_t body;
    unsigned long long cl;
    int keep_alive, upgrade;
    const char *headers; /* "name:value|..." after sanitization */
} valid_case_t;

static const valid_case_t valid_cases[] = {
    {"GET / HTTP/1.1\r\nHost: a.b\r\n\r\n", "GET", "", "a.b", "/", LG_H1_BODY_NONE, 0, 1, 0, ""},
    {"GET /x?y=1 HTTP/1.1\r\nHOST: a.b:8080\r\nX-Foo: Bar \r\nx-e:\r\n\r\n", "GET", "", "a.b:8080", "/x?y=1", LG_H1_BODY_NONE, 0, 1,
     0, "x-foo:Bar|x-e:"},
    {"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", "GET", "", "a", "/", LG_H1_BODY_NONE, 0, 1, 0, ""},
    {"GET / HTTP/1.1\nHost: a\n\n", "GET", "", "a", "/", LG_H1_BODY_NONE, 0, 1, 0, ""},
    {"GET  /  HTTP/1.1 \r\nHost: a\r\n\r\n", "GET", "", "a", "/", LG_H1_BODY_NONE, 0, 1, 0, ""},
    {"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello", "POST", "", "a", "/p", LG_H1_BODY_CONTENT_LENGTH, 5, 1, 0,
     "content-length:5"},
    {"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", "POST", "", "a", "/p", LG_H1_BODY_NONE, 0, 1, 0,
     "content-length:0"},
    {"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n", "POST", "", "a", "/p", LG_H1_BODY_CHUNKED, 0, 1, 0,
     "transfer-encoding:Chunked"},
    {"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", "GET", "", "a", "/", LG_H1_BODY_NONE, 0, 0, 0, "connection:close"},
    {"GET / HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive, CLOSE\r\n\r\n", "GET", "", "a", "/", LG_H1_BODY_NONE, 0, 0, 0,
     "connection:Keep-Alive, CLOSE"},
    {"GET http://Ex.com:81/a?b HTTP/1.1\r\nHost: other\r\n\r\n", "GET", "http", "Ex.com:81", "/a?b", LG_H1_BODY_NONE, 0, 1, 0, ""},
    {"GET HTTPS://ex.com HTTP/1.1\r\n\r\n", "GET", "https", "ex.com", "/", LG_H1_BODY_NONE, 0, 1, 0, ""},
    {"GET http://ex.com?q HTTP/1.1\r\nHost: ex.com\r\n\r\n", "GET", "http", "ex.com", "/?q", LG_H1_BODY_NONE, 0, 1, 0, ""},
    {"GET http://[::1]:80/ HTTP/1.1\r\n\r\n", "GET", "http", "[::1]:80", "/", LG_H1_BODY_NONE, 0, 1, 0, ""},
    {"CONNECT ex.com:443 HTTP/1.1\r\nHost: ex.com:443\r\n\r\n", "CONNECT", "", "ex.com:443", "", LG_H1_BODY_TUNNEL, 0, 0, 1, ""},
    {"CONNECT ex.com:443 HTTP/1.1\r\nContent-Length: 0\r\n\r\n", "CONNECT", "", "ex.com:443", "", LG_H1_BODY_TUNNEL, 0, 0, 1, ""},
    {"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", "OPTIONS", "", "a", "*", LG_H1_BODY_NONE, 0, 1, 0, ""},
    {"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", "GET", "", "a", "/chat",
     LG_H1_BODY_TUNNEL, 0, 0, 1, "connection:Upgrade|upgrade:websocket"},
    {"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings, keep-alive\r\nUpgrade: h2c\r\nHTTP2-Settings: AAA\r\n\r\n",
     "GET", "", "a", "/", LG_H1_BODY_NONE, 0, 1, 0, "connection:keep-alive"},
    {"GET / HTTP/1.1\r\nHost: a\r\nConnection: x-drop, te\r\nX-Drop: 1\r\nTE: gzip, Trailers\r\nX-Keep: 2\r\n\r\n", "GET", "", "a",
     "/", LG_H1_BODY_NONE, 0, 1, 0, "connection:x-drop, te|te:trailers|x-keep:2"},
    {"GET / HTTP/1.1\r\nHost: a\r\nConnection: te\r\nTE: gzip\r\n\r\n", "GET", "", "a", "/", LG_H1_BODY_NONE, 0, 1, 0,
     "connection:te"},
    {"GET / HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\nContent-Length: 3\r\n\r\n", "GET", "", "a", "/",
     LG_H1_BODY_CONTENT_LENGTH, 3, 1, 0, "connection:content-length|content-length:3"},
    {"GET / HTTP/1.1\r\nHost: a\r\nX_Under: 1\r\n\r\n", "GET", "", "a", "/", LG_H1_BODY_NONE, 0, 1, 0, "x_under:1"},
    {"GET / HTTP/1.1\r\nHost: a\r\nX: caf\xc3\xa9\t tab\r\n\r\n", "GET", "", "a", "/", LG_H1_BODY_NONE, 0, 1, 0,
     "x:caf\xc3\xa9\t tab"},
    {"GET / HTTP/1.1\r\nHost:\r\n\r\n", "GET", "", "", "/", LG_H1_BODY_NONE, 0, 1, 0, ""},
    {"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\n\r\n", "GET", "", "a", "/", LG_H1_BODY_NONE, 0, 1, 0,
     "expect:100-Continue"},
};

static void test_valid_requests(void)
{
    req_result_t r = {0}, inc = {0};
    for (size_t i = 0; i != LG_ARRAY_SIZE(valid_cases); ++i) {
        const valid_case_t *c = valid_cases + i;
        char want[1024] = "";
        size_t len = strlen(c->in);
        parse_req(&r, c->in, len);
        ok(r.ret > 0, "case %zu: %s", i, r.summary);
        if (r.ret <= 0)
            continue;
        ok(h2o_memis(r.head.method.base, r.head.method.len, c->method, strlen(c->method)), "case %zu method", i);
        ok(h2o_memis(r.head.scheme.base, r.head.scheme.len, c->scheme, strlen(c->scheme)), "case %zu scheme: %s", i, r.summary);
        ok(h2o_memis(r.head.authority.base, r.head.authority.len, c->authority, strlen(c->authority)), "case %zu authority: %s", i,
           r.summary);
        ok(h2o_memis(r.head.path.base, r.head.path.len, c->path, strlen(c->path)), "case %zu path: %s", i, r.summary);
        ok(r.info.body == c->body && r.info.content_length == c->cl, "case %zu body: %s", i, r.summary);
        ok(r.info.keep_alive == (unsigned)c->keep_alive && r.info.upgrade == (unsigned)c->upgrade, "case %zu ka/up: %s", i,
           r.summary);
        for (size_t j = 0, n = 0; j != r.head.headers.size; ++j)
            n += snprintf(want + n, sizeof(want) - n, "%s%.*s:%.*s", j ? "|" : "", (int)r.head.headers.entries[j].name.len,
                          r.head.headers.entries[j].name.base, (int)r.head.headers.entries[j].value.len,
                          r.head.headers.entries[j].value.base);
        ok_str(want, c->headers);
        /* The head ends where the body begins. */
        const char *body =
            strstr(c->in, "\r\n\r\n") ? strstr(strstr(c->in, "HTTP/1.1"), "\r\n\r\n") + 4 : strstr(c->in, "\n\n") + 2;
        ok((size_t)r.ret == (size_t)(body - c->in), "case %zu consumed %zd", i, r.ret);
        /* Any split gives the same result. */
        parse_req_bytewise(&inc, c->in, len);
        ok_str(inc.summary, r.summary);
    }
    ok(strstr(valid_cases[0].in, "Host") != NULL, "inputs are not modified");
    free_result(&r);
    free_result(&inc);
}

typedef struct st_invalid_case_t {
    const char *in;
    size_t len;
    int status;
    const char *details;
} invalid_case_t;

#define CODEC LG_H1_DETAIL_CODEC_ERROR
#define CHARS LG_H1_DETAIL_INVALID_CHARACTERS
#define IC(s, st, d)            \
    {                           \
        s, sizeof(s) - 1, st, d \
    }

static const invalid_case_t invalid_cases[] = {
    /* request line */
    IC("get / HTTP/1.1\r\nHost: a\r\n\r\n", 400, CODEC),
    IC("FOO / HTTP/1.1\r\nHost: a\r\n\r\n", 400, CODEC),
    IC("GET\r\nHost: a\r\n\r\n", 400, CODEC),
    IC("GET / HTTP/1.1 x\r\nHost: a\r\n\r\n", 400, CODEC),
    IC("GET / HTTP/1.10\r\nHost: a\r\n\r\n", 400, CODEC),
    IC("GET / http/1.1\r\nHost: a\r\n\r\n", 400, CODEC),
    IC("GET /a\x01 HTTP/1.1\r\nHost: a\r\n\r\n", 400, CODEC),
    IC("GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", 400, CODEC),
    IC("GET /a\rb HTTP/1.1\r\nHost: a\r\n\r\n", 400, CODEC),
    IC(" GET / HTTP/1.1\r\nHost: a\r\n\r\n", 400, CODEC),
    IC("\rGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400, CODEC),
    /* versions: anything but 1.1 is HTTP/1.0 to Envoy, refused unless accept_http_10 */
    IC("GET / HTTP/1.0\r\nHost: a\r\n\r\n", 426, LG_H1_DETAIL_LOW_VERSION),
    IC("GET / HTTP/1.2\r\nHost: a\r\n\r\n", 426, LG_H1_DETAIL_LOW_VERSION),
    IC("GET / HTTP/2.0\r\nHost: a\r\n\r\n", 426, LG_H1_DETAIL_LOW_VERSION),
    IC("GET /\r\n\r\n", 426, LG_H1_DETAIL_LOW_VERSION),
    /* field lines */
    IC("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400, CODEC),
    IC("GET / HTTP/1.1\r\n X: a\r\nHost: a\r\n\r\n", 400, CODEC),
    IC("GET / HTTP/1.1\r\nHost: a\r\nX : a\r\n\r\n", 400, CODEC),
    IC("GET / HTTP/1.1\r\nHost: a\r\nX\t: a\r\n\r\n", 400, CODEC),
    IC("GET / HTTP/1.1\r\nHost: a\r\nNo colon\r\n\r\n", 400, CODEC),
    IC("GET / HTTP/1.1\r\nHost: a\r\n: empty\r\n\r\n", 400, CODEC),
    IC("GET / HTTP/1.1\r\nHost: a\r\nX(y): a\r\n\r\n", 400, CODEC),
    IC("GET / HTTP/1.1\r\nHost: a\r\nX\xc3\xa9: a\r\n\r\n", 400, CODEC),
    IC("GET / HTTP/1.1\r\nHost: a\r\nX\x01y: a\r\n\r\n", 400, CHARS),
    IC("GET / HTTP/1.1\r\nHost: a\r\nX: a\x00z\r\n\r\n", 400, CHARS),
    IC("GET / HTTP/1.1\r\nHost: a\r\nX: a\rz\r\n\r\n", 400, CHARS),
    IC("GET / HTTP/1.1\r\nHost: a\r\nX: a\x7f\r\n\r\n", 400, CHARS),
    IC("GET / HTTP/1.1\r\nHost: a\r\nX: a\x1b[0m\r\n\r\n", 400, CHARS),
    /* Content-Length */
    IC("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400, CODEC),
    IC("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", 400, CODEC),
    IC("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", 400, CODEC),
    IC("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", 400, CODEC),
    IC("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400, CODEC),
    IC("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", 400, CODEC),
    IC("POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", 400, CODEC),
    IC("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551616\r\n\r\n", 400, CODEC),
    IC("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 2\r\n\r\n", 400, CODEC),
    /* Transfer-Encoding (CL.TE, TE.CL, TE.TE) */
    IC("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n", 400,
       LG_H1_DETAIL_CHUNKED_CONTENT_LENGTH),
    IC("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n", 400,
       LG_H1_DETAIL_CHUNKED_CONTENT_LENGTH),
    IC("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\nContent-Length: 4\r\n\r\n", 400,
       LG_H1_DETAIL_CHUNKED_CONTENT_LENGTH),
    IC("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", 501, LG_H1_DETAIL_INVALID_TRANSFER_ENCODING),
    IC("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n", 501, LG_H1_DETAIL_INVALID_TRANSFER_ENCODING),
    IC("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", 501, LG_H1_DETAIL_INVALID_TRANSFER_ENCODING),
    IC("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501, LG_H1_DETAIL_INVALID_TRANSFER_ENCODING),
    IC("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 501, LG_H1_DETAIL_INVALID_TRANSFER_ENCODING),
    IC("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 501,
       LG_H1_DETAIL_INVALID_TRANSFER_ENCODING),
    IC("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n", 501,
       LG_H1_DETAIL_INVALID_TRANSFER_ENCODING),
    IC("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n", 501, LG_H1_DETAIL_INVALID_TRANSFER_ENCODING),
    IC("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \"chunked\"\r\n\r\n", 501, LG_H1_DETAIL_INVALID_TRANSFER_ENCODING),
    IC("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n", 400, CODEC),
    IC("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\x0b"
       "chunked\r\n\r\n",
       400, CHARS),
    IC("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\x0b\r\n\r\n", 400, CHARS),
    IC("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n", 400, CODEC),
    IC("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding\r\n : chunked\r\n\r\n", 400, CODEC),
    IC("POST / HTTP/1.1\r\nHost: a\r\nTransfer_Encoding: chunked\r\nContent-Length: 3\r\n\r\n", -400,
       LG_H1_DETAIL_UNEXPECTED_UNDERSCORE), /* rejected only with REJECT_REQUEST, see below */
    IC("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\nTransfer-Encoding: chunked\r\n\r\n", 501, LG_H1_DETAIL_INVALID_TRANSFER_ENCODING),
    IC("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\nContent-Length: 1\r\n\r\n", 400, LG_H1_DETAIL_BODY_DISALLOWED),
    /* targets */
    IC("CONNECT a HTTP/1.1\r\nHost: a\r\n\r\n", 400, LG_H1_DETAIL_INVALID_URL),
    IC("CONNECT /a HTTP/1.1\r\nHost: a\r\n\r\n", 400, LG_H1_DETAIL_INVALID_URL),
    IC("CONNECT a:99999 HTTP/1.1\r\nHost: a\r\n\r\n", 400, LG_H1_DETAIL_INVALID_URL),
    IC("GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400, LG_H1_DETAIL_INVALID_URL),
    IC("GET a.b/c HTTP/1.1\r\nHost: a\r\n\r\n", 400, LG_H1_DETAIL_INVALID_URL),
    IC("GET http:/a.b/c HTTP/1.1\r\nHost: a\r\n\r\n", 400, LG_H1_DETAIL_INVALID_URL),
    IC("GET http:///c HTTP/1.1\r\nHost: a\r\n\r\n", 400, LG_H1_DETAIL_INVALID_URL),
    IC("GET http://u@evil/c HTTP/1.1\r\nHost: a\r\n\r\n", 400, LG_H1_DETAIL_INVALID_URL),
    IC("GET ftp://a.b/c HTTP/1.1\r\nHost: a\r\n\r\n", 400, LG_H1_DETAIL_INVALID_SCHEME),
    /* Host */
    IC("GET / HTTP/1.1\r\n\r\n", 400, LG_H1_DETAIL_MISSING_HOST),
    IC("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, LG_H1_DETAIL_INVALID_AUTHORITY),
    IC("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, LG_H1_DETAIL_INVALID_AUTHORITY),
    IC("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400, LG_H1_DETAIL_INVALID_AUTHORITY),
    IC("GET / HTTP/1.1\r\nHost: a\"b\r\n\r\n", 400, LG_H1_DETAIL_INVALID_AUTHORITY),
    /* Connection */
    IC("GET / HTTP/1.1\r\nHost: a\r\nConnection: a,b,c,d,e,f,g,h,i,j\r\n\r\n", 400, LG_H1_DETAIL_CONNECTION_HEADER),
    IC("GET / HTTP/1.1\r\nHost: a\r\nConnection: a,b,c,d,e\r\nConnection: f,g,h,i,j\r\n\r\n", 400, LG_H1_DETAIL_CONNECTION_HEADER),
};

static void test_invalid_requests(void)
{
    req_result_t r = {0}, inc = {0};
    for (size_t i = 0; i != LG_ARRAY_SIZE(invalid_cases); ++i) {
        const invalid_case_t *c = invalid_cases + i;
        size_t len = c->len;
        parse_req(&r, c->in, len);
        if (c->status < 0) {
            ok(r.ret > 0, "case %zu passes with underscores allowed: %s", i, r.summary);
            lim.headers_with_underscores_action = LG_H1_UNDERSCORES_REJECT_REQUEST;
            parse_req(&r, c->in, len);
            lim.headers_with_underscores_action = LG_H1_UNDERSCORES_ALLOW;
        }
        ok(r.ret == -1, "case %zu rejected: %s", i, r.summary);
        if (r.ret != -1)
            continue;
        ok(r.err.status == abs(c->status), "case %zu status %d want %d (%s)", i, r.err.status, abs(c->status), r.err.msg);
        ok_str(r.err.details, c->details);
        if (c->status > 0) {
            parse_req_bytewise(&inc, c->in, len);
            ok_str(inc.summary, r.summary);
        }
    }
    free_result(&r);
    free_result(&inc);
}

static void test_versions_and_options(void)
{
    req_result_t r = {0};

    lim.accept_http_10 = 1;
    parse_req(&r, H2O_STRLIT("GET / HTTP/1.0\r\nHost: a\r\n\r\n"));
    ok(r.ret > 0 && r.head.version == LG_HTTP_10 && !r.info.keep_alive && r.info.close_asked, "1.0 closes by default: %s",
       r.summary);
    parse_req(&r, H2O_STRLIT("GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n"));
    ok(r.ret > 0 && r.info.keep_alive && !r.info.close_asked, "1.0 keep-alive: %s", r.summary);
    parse_req(&r, H2O_STRLIT("GET / HTTP/1.0\r\n\r\n"));
    ok(r.ret == -1 && r.err.status == 400, "1.0 without Host and no default host: %s", r.summary);
    ok_str(r.err.details, LG_H1_DETAIL_MISSING_HOST);
    lim.default_host_for_http_10 = LG_LIT("default.host");
    parse_req(&r, H2O_STRLIT("GET / HTTP/1.0\r\n\r\n"));
    ok(r.ret > 0 && h2o_memis(r.head.authority.base, r.head.authority.len, H2O_STRLIT("default.host")), "default host: %s",
       r.summary);
    parse_req(&r, H2O_STRLIT("GET / HTTP/1.1\r\n\r\n"));
    ok(r.ret == -1 && r.err.status == 400, "default host is for 1.0 only");
    parse_req(&r, H2O_STRLIT("GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Close\r\n\r\n"));
    ok(r.ret > 0 && !r.info.keep_alive && r.info.close_asked, "1.1 connection: close is asked: %s", r.summary);
    parse_req(&r, H2O_STRLIT("GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"));
    ok(r.ret > 0 && !r.info.keep_alive && !r.info.close_asked, "an upgrade does not ask for the close: %s", r.summary);
    parse_req(&r, H2O_STRLIT("POST / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"));
    ok(r.ret > 0 && r.info.body == LG_H1_BODY_CHUNKED && !r.info.keep_alive, "TE in 1.0 closes the connection: %s", r.summary);
    ok(!r.info.close_asked, "... which the client did not ask for (Envoy lingers after it)");
    parse_req(&r, H2O_STRLIT("GET / HTTP/2.0\r\nHost: a\r\n\r\n"));
    ok(r.ret > 0 && r.head.version == LG_HTTP_10, "HTTP/2.0 over h1 is 1.0 to Envoy");
    lim.default_host_for_http_10 = h2o_iovec_init(NULL, 0);
    lim.accept_http_10 = 0;

    parse_req(&r, H2O_STRLIT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"));
    ok(r.ret == -1 && r.err.status == 400, "CL+TE refused by default");
    lim.allow_chunked_length = 1;
    parse_req(&r, H2O_STRLIT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"));
    ok(r.ret > 0 && r.info.body == LG_H1_BODY_CHUNKED && lg_headers_find(&r.head.headers, H2O_STRLIT("content-length"), 0) < 0,
       "allow_chunked_length drops Content-Length: %s", r.summary);
    parse_req(&r, H2O_STRLIT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: gzip\r\n\r\n"));
    ok(r.ret == -1 && r.err.status == 400, "allow_chunked_length needs chunked: %s", r.summary);
    lim.allow_chunked_length = 0;

    lim.headers_with_underscores_action = LG_H1_UNDERSCORES_DROP_HEADER;
    parse_req(&r, H2O_STRLIT("GET / HTTP/1.1\r\nHost: a\r\nX_A: 1\r\nX-B: 2\r\nX_C: 3\r\n\r\n"));
    ok(r.ret > 0 && r.head.headers.size == 1 && r.info.dropped_headers == 2, "underscores dropped: %s", r.summary);
    lim.headers_with_underscores_action = LG_H1_UNDERSCORES_REJECT_REQUEST;
    parse_req(&r, H2O_STRLIT("GET / HTTP/1.1\r\nHost: a\r\nX_A: 1\r\n\r\n"));
    ok(r.ret == -1 && r.err.status == 400, "underscores rejected");
    ok_str(r.err.details, LG_H1_DETAIL_UNEXPECTED_UNDERSCORE);
    lim.headers_with_underscores_action = LG_H1_UNDERSCORES_ALLOW;

    lim.allow_absolute_url = 0;
    parse_req(&r, H2O_STRLIT("GET http://x/y HTTP/1.1\r\nHost: a\r\n\r\n"));
    ok(r.ret > 0 && h2o_memis(r.head.path.base, r.head.path.len, H2O_STRLIT("http://x/y")) &&
           h2o_memis(r.head.authority.base, r.head.authority.len, H2O_STRLIT("a")),
       "allow_absolute_url=false keeps the target: %s", r.summary);
    lim.allow_absolute_url = 1;

    parse_req(&r, H2O_STRLIT("FOO / HTTP/1.1\r\nHost: a\r\n\r\n"));
    ok(r.ret == -1, "custom method refused");
    lim.allow_custom_methods = 1;
    parse_req(&r, H2O_STRLIT("FOO / HTTP/1.1\r\nHost: a\r\n\r\n"));
    ok(r.ret > 0, "custom method allowed");
    lim.allow_custom_methods = 0;

    parse_req(&r, H2O_STRLIT("HEAD / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n"));
    ok(r.ret > 0 && r.info.is_head && r.info.expect_100_continue, "HEAD and Expect flags");
    free_result(&r);
}

/* Builds "GET / HTTP/1.1\r\nHost: a\r\n" + n headers of `vlen` value bytes + CRLF. */
static char *big_request(size_t n, size_t vlen, size_t *len)
{
    lg_strbuf_t b = {0};
    lg_strbuf_puts(&b, "GET / HTTP/1.1\r\nHost: a\r\n");
    for (size_t i = 0; i != n; ++i) {
        lg_strbuf_printf(&b, "x-h%zu: ", i);
        for (size_t j = 0; j != vlen; ++j)
            lg_strbuf_append(&b, "v", 1);
        lg_strbuf_puts(&b, "\r\n");
    }
    lg_strbuf_puts(&b, "\r\n");
    *len = b.len;
    return b.base;
}

static void test_limits(void)
{
    req_result_t r = {0};
    size_t len;
    char *s;

    s = big_request(99, 1, &len); /* 99 + Host = 100 fields */
    parse_req(&r, s, len);
    ok(r.ret > 0, "100 headers accepted: %s", r.summary);
    free(s);
    s = big_request(100, 1, &len);
    parse_req(&r, s, len);
    ok(r.ret == -1 && r.err.status == 431, "101 headers refused");
    ok_str(r.err.details, LG_H1_DETAIL_TOO_MANY_HEADERS);
    free(s);

    s = big_request(1, 60 * 1024, &len);
    parse_req(&r, s, len);
    ok(r.ret == -1 && r.err.status == 431, "61 KiB head refused");
    ok_str(r.err.details, LG_H1_DETAIL_HEADERS_TOO_LARGE);
    r.ret = lg_h1_parse_request(&pool, r.buf, 60 * 1024 + 1, 0, &lim, &r.head, &r.info, &r.err);
    ok(r.ret == -1 && r.err.status == 431, "incomplete head past the limit is refused at once");
    r.ret = lg_h1_parse_request(&pool, r.buf, 60 * 1024 - 1, 0, &lim, &r.head, &r.info, &r.err);
    ok(r.ret == -2, "incomplete head under the limit waits");
    free(s);

    s = big_request(1, 60 * 1024 - 45, &len);
    ok(len <= 60 * 1024, "fits: %zu", len);
    parse_req(&r, s, len);
    ok(r.ret == (ssize_t)len, "head of %zu bytes accepted: %s", len, r.summary);
    free(s);

    lim.max_headers_kb = 1;
    parse_req(&r,
              "GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
              "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
              200);
    ok(r.ret == -2, "short line waits");
    s = lg_malloc(2048);
    memset(s, '\n', 2048);
    parse_req(&r, s, 2048);
    ok(r.ret == -1 && r.err.status == 431, "endless empty lines hit the limit");
    free(s);
    lim.max_headers_kb = 60;
    free_result(&r);
}

static void test_pipelined(void)
{
    static const char in[] = "POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
                             "GET /2 HTTP/1.1\r\nHost: b\r\n\r\n"
                             "\r\nGET /3 HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n"
                             "GET /4 HTTP/1.1\r\n";
    char *buf = lg_strndup(in, sizeof(in) - 1);
    size_t off = 0, len = sizeof(in) - 1;
    lg_req_head_t head;
    lg_h1_msg_info_t info;
    lg_h1_error_t err;
    ssize_t n;

    n = lg_h1_parse_request(&pool, buf, len, 0, &lim, &head, &info, &err);
    ok(n > 0 && info.body == LG_H1_BODY_CONTENT_LENGTH && info.content_length == 3, "first request");
    ok(memcmp(buf + n, "abc", 3) == 0, "body follows the head");
    off = n + 3;
    n = lg_h1_parse_request(&pool, buf + off, len - off, 0, &lim, &head, &info, &err);
    ok(n > 0 && h2o_memis(head.path.base, head.path.len, H2O_STRLIT("/2")) && info.body == LG_H1_BODY_NONE, "second request");
    off += n;
    n = lg_h1_parse_request(&pool, buf + off, len - off, 0, &lim, &head, &info, &err);
    ok(n > 0 && h2o_memis(head.path.base, head.path.len, H2O_STRLIT("/3")) && !info.keep_alive, "third request after CRLF");
    off += n;
    n = lg_h1_parse_request(&pool, buf + off, len - off, 0, &lim, &head, &info, &err);
    ok(n == -2, "fourth is incomplete");
    free(buf);
}

/* Decodes `in` split into pieces of `step` bytes (0: at every split point in two
 * parts), with a data[] of `cap`, and checks the body and trailers. */
static int decode_chunked(const char *in, size_t len, size_t split, size_t cap, char *body, size_t *body_len,
                          lg_headers_t *trailers, size_t *consumed, lg_h1_error_t *err)
{
    lg_h1_chunked_decoder_t d;
    char *pending = lg_malloc(len + 1); /* what the caller keeps between calls */
    size_t plen = 0, fed = 0;
    int done = 0;
    h2o_iovec_t data[4];

    lg_h1_chunked_decoder_init(&d, &lim, 1, &pool, trailers);
    *body_len = 0;
    *consumed = 0;
    while (!done) {
        size_t add = fed < split ? split - fed : len - fed;
        memcpy(pending + plen, in + fed, add);
        plen += add;
        fed += add;
        for (;;) {
            size_t n = cap;
            ssize_t r = lg_h1_chunked_decode(&d, pending, plen, data, &n, &done, err);
            if (r < 0) {
                free(pending);
                return -1;
            }
            for (size_t i = 0; i != n; ++i) {
                if (data[i].len == 0 || data[i].base < pending || data[i].base + data[i].len > pending + plen)
                    err->msg = "slice outside the input";
                memcpy(body + *body_len, data[i].base, data[i].len);
                *body_len += data[i].len;
            }
            memmove(pending, pending + r, plen - r);
            plen -= r;
            *consumed += r;
            if (done || (r == 0 && n == 0))
                break;
        }
        if (fed == len && !done)
            break;
    }
    free(pending);
    return done ? 0 : -2;
}

static void test_chunked(void)
{
    static const char in[] = "5\r\nhello\r\n1A;ext=\"v\" ; e2\r\nabcdefghijklmnopqrstuvwxyz\r\n000\r\n"
                             "X-Trailer: yes\r\nGrpc-Status: 0\r\n\r\nNEXT";
    size_t len = sizeof(in) - 1, body_len, consumed;
    char body[256];
    lg_headers_t trailers = {NULL};
    lg_h1_error_t err = {0};
    int all_ok = 1;

    for (size_t split = 0; split <= len; ++split) {
        for (size_t cap = 1; cap <= 4; cap += 3) {
            trailers = (lg_headers_t){NULL};
            err.msg = NULL;
            int r = decode_chunked(in, len, split, cap, body, &body_len, &trailers, &consumed, &err);
            if (r != 0 || body_len != 31 || memcmp(body, "helloabcdefghijklmnopqrstuvwxyz", 31) != 0 || consumed != len - 4 ||
                trailers.size != 2 || err.msg != NULL) {
                all_ok = 0;
                fprintf(stderr, "split %zu cap %zu: r=%d body=%zu consumed=%zu trailers=%zu %s\n", split, cap, r, body_len,
                        consumed, trailers.size, err.msg ? err.msg : "");
            }
        }
    }
    ok(all_ok, "chunked body decodes identically at every split point");
    ok(h2o_memis(trailers.entries[0].name.base, trailers.entries[0].name.len, H2O_STRLIT("x-trailer")) &&
           h2o_memis(trailers.entries[1].value.base, trailers.entries[1].value.len, H2O_STRLIT("0")),
       "trailers parsed and lower-cased");

    /* Byte by byte, through a data[] of one slice. */
    lg_h1_chunked_decoder_t d;
    int done = 0;
    size_t total = 0, nbody = 0;
    lg_h1_chunked_decoder_init(&d, &lim, 0, &pool, NULL);
    for (size_t i = 0; i < len && !done;) {
        h2o_iovec_t data[1];
        size_t n = 1, avail = len - i;
        ssize_t r = lg_h1_chunked_decode(&d, in + i, avail < 1 + (i % 3) ? avail : 1 + (i % 3), data, &n, &done, &err);
        if (r < 0)
            break;
        nbody += n ? data[0].len : 0;
        i += r;
        total = i;
        if (r == 0 && n == 0 && avail >= 1 + (i % 3) && !done) {
            /* a trailer line is waiting for more input: offer all of it */
            n = 1;
            r = lg_h1_chunked_decode(&d, in + i, len - i, data, &n, &done, &err);
            if (r <= 0)
                break;
            i += r;
            total = i;
        }
    }
    ok(done && total == len - 4 && nbody == 31, "small reads: done=%d total=%zu body=%zu", done, total, nbody);
}

typedef struct st_chunk_case_t {
    const char *in;
    int status;
    const char *details;
} chunk_case_t;

static void test_chunked_errors(void)
{
    static const chunk_case_t cases[] = {
        {"g\r\n", 400, CODEC},
        {"\r\n", 400, CODEC},
        {";ext\r\n", 400, CODEC},
        {"5\nhello\r\n0\r\n\r\n", 400, CODEC},
        {"5\r\nhello\n0\r\n\r\n", 400, CODEC},
        {"5\r\nhelloX\r\n0\r\n\r\n", 400, CODEC},
        {"5\r\nhello\r\r\n", 400, CODEC},
        {"5 5\r\n", 400, CODEC},
        {"5;a\rb\r\n", 400, CODEC},
        {"5;a\x01\r\n", 400, CODEC},
        {"-5\r\n", 400, CODEC},
        {"0x5\r\n", 400, CODEC},
        {"+5\r\n", 400, CODEC},
        {"10000000000000000\r\n", 400, CODEC},
        {"ffffffffffffffff0\r\n", 400, CODEC},
        {"0\r\nbad trailer\r\n\r\n", 400, CODEC},
        {"0\r\nX: a\n\r\n", 400, CODEC},
        {"0\r\nX: a\x01\r\n\r\n", 400, CHARS},
        {"0\r\n\n", 400, CODEC},
        {"0\r\nX_Y: 1\r\n\r\n", 400, LG_H1_DETAIL_UNEXPECTED_UNDERSCORE},
    };
    for (size_t i = 0; i != LG_ARRAY_SIZE(cases); ++i) {
        lg_h1_chunked_decoder_t d;
        h2o_iovec_t data[4];
        size_t n = 4;
        int done = 0;
        lg_h1_error_t err = {0};
        lim.headers_with_underscores_action = LG_H1_UNDERSCORES_REJECT_REQUEST;
        lg_h1_chunked_decoder_init(&d, &lim, 1, &pool, NULL);
        ssize_t r = lg_h1_chunked_decode(&d, cases[i].in, strlen(cases[i].in), data, &n, &done, &err);
        lim.headers_with_underscores_action = LG_H1_UNDERSCORES_ALLOW;
        ok(r == -1 && err.status == cases[i].status, "chunk case %zu rejected (r=%zd)", i, r);
        if (r == -1)
            ok_str(err.details, cases[i].details);
    }
    /* The largest chunk size that fits, and one that does not. */
    {
        lg_h1_chunked_decoder_t d;
        h2o_iovec_t data[1];
        size_t n = 1;
        int done;
        lg_h1_error_t err;
        lg_h1_chunked_decoder_init(&d, &lim, 1, &pool, NULL);
        ok(lg_h1_chunked_decode(&d, H2O_STRLIT("FFFFFFFFFFFFFFFF\r\nab"), data, &n, &done, &err) == 20 && n == 1 &&
               data[0].len == 2,
           "2^64-1 chunk size accepted");
    }
    /* Trailers: size and count limits. */
    {
        lg_strbuf_t b = {0};
        lg_h1_chunked_decoder_t d;
        h2o_iovec_t data[1];
        size_t n = 1;
        int done;
        lg_h1_error_t err;
        lg_strbuf_puts(&b, "0\r\n");
        for (int i = 0; i != 101; ++i)
            lg_strbuf_printf(&b, "t%d: v\r\n", i);
        lg_strbuf_puts(&b, "\r\n");
        lg_h1_chunked_decoder_init(&d, &lim, 0, &pool, NULL);
        ok(lg_h1_chunked_decode(&d, b.base, b.len, data, &n, &done, &err) == -1 && err.status == 431, "101 trailers refused");
        lg_strbuf_free(&b);
        char *big = lg_malloc(61 * 1024);
        memcpy(big, "0\r\nx: ", 6);
        memset(big + 6, 'v', 61 * 1024 - 6);
        lg_h1_chunked_decoder_init(&d, &lim, 0, &pool, NULL);
        n = 1;
        ok(lg_h1_chunked_decode(&d, big, 61 * 1024, data, &n, &done, &err) == -1 && err.status == 431,
           "oversized trailer refused before its end");
        lg_h1_chunked_decoder_init(&d, &lim, 0, &pool, NULL);
        n = 1;
        ok(lg_h1_chunked_decode(&d, big, 1024, data, &n, &done, &err) == 3 && !done, "partial trailer line waits");
        free(big);
    }
}

typedef struct st_resp_case_t {
    const char *in;
    unsigned req_flags;
    ssize_t ret; /* -1: error, else > 0 */
    lg_h1_body_t body;
    int keep_alive, interim;
    const char *details;
} resp_case_t;

static void test_responses(void)
{
    static const resp_case_t cases[] = {
        {"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", 0, 1, LG_H1_BODY_CONTENT_LENGTH, 1, 0, NULL},
        {"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 0, 1, LG_H1_BODY_NONE, 1, 0, NULL},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 0, 1, LG_H1_BODY_CHUNKED, 1, 0, NULL},
        {"HTTP/1.1 200 OK\r\n\r\n", 0, 1, LG_H1_BODY_UNTIL_CLOSE, 0, 0, NULL},
        {"HTTP/1.1 200\r\nContent-Length: 3\r\nConnection: close\r\n\r\n", 0, 1, LG_H1_BODY_CONTENT_LENGTH, 0, 0, NULL},
        {"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n", 0, 1, LG_H1_BODY_CONTENT_LENGTH, 0, 0, NULL},
        {"HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\n", 0, 1, LG_H1_BODY_CONTENT_LENGTH, 1, 0, NULL},
        {"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", LG_H1_REQ_HEAD, 1, LG_H1_BODY_NONE, 1, 0, NULL},
        {"HTTP/1.1 204 No Content\r\n\r\n", 0, 1, LG_H1_BODY_NONE, 1, 0, NULL},
        {"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", 0, 1, LG_H1_BODY_NONE, 1, 0, NULL},
        {"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", 0, 1, LG_H1_BODY_NONE, 1, 0, NULL},
        {"HTTP/1.1 100 Continue\r\n\r\n", 0, 1, LG_H1_BODY_NONE, 1, 1, NULL},
        {"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", 0, 1, LG_H1_BODY_NONE, 1, 1, NULL},
        {"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n", LG_H1_REQ_UPGRADE, 1,
         LG_H1_BODY_TUNNEL, 0, 0, NULL},
        {"HTTP/1.1 200 Connection established\r\n\r\n", LG_H1_REQ_CONNECT, 1, LG_H1_BODY_TUNNEL, 0, 0, NULL},
        {"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\n", LG_H1_REQ_CONNECT, 1, LG_H1_BODY_CONTENT_LENGTH, 1, 0, NULL},
        {"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n", 0, -1, 0, 0, 0,
         LG_H1_DETAIL_TRANSFER_ENCODING_NOT_ALLOWED},
        {"HTTP/1.1 204 No Content\r\nContent-Length: 1\r\n\r\n", 0, -1, 0, 0, 0, LG_H1_DETAIL_CONTENT_LENGTH_NOT_ALLOWED},
        {"HTTP/1.1 100 Continue\r\nContent-Length: 1\r\n\r\n", 0, -1, 0, 0, 0, LG_H1_DETAIL_CONTENT_LENGTH_NOT_ALLOWED},
        {"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 0, -1, 0, 0, 0,
         LG_H1_DETAIL_CHUNKED_CONTENT_LENGTH},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", 0, -1, 0, 0, 0, LG_H1_DETAIL_INVALID_TRANSFER_ENCODING},
        {"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 0, -1, 0, 0, 0, CODEC},
        {"HTTP/1.1 200 OK\r\nX: a\x01\r\n\r\n", 0, -1, 0, 0, 0, CHARS},
        {"HTTP/1.1 20 OK\r\n\r\n", 0, -1, 0, 0, 0, CODEC},
        {"HTTP/1.1 2000 OK\r\n\r\n", 0, -1, 0, 0, 0, CODEC},
        {"HTTP/1.1 099 OK\r\n\r\n", 0, -1, 0, 0, 0, CODEC},
        {"HTTP/1.1 200 O\x01K\r\n\r\n", 0, -1, 0, 0, 0, CODEC},
        {"HTTP/1.1200 OK\r\n\r\n", 0, -1, 0, 0, 0, CODEC},
        {"HTTP/x.1 200 OK\r\n\r\n", 0, -1, 0, 0, 0, CODEC},
        {"\r\nHTTP/1.1 200 OK\r\n\r\n", 0, -1, 0, 0, 0, CODEC},
        {"ICY 200 OK\r\n\r\n", 0, -1, 0, 0, 0, CODEC},
    };
    for (size_t i = 0; i != LG_ARRAY_SIZE(cases); ++i) {
        const resp_case_t *c = cases + i;
        size_t len = strlen(c->in);
        char *buf = lg_strndup(c->in, len);
        lg_resp_head_t head;
        lg_h1_msg_info_t info;
        lg_h1_error_t err;
        ssize_t r = -2;
        for (size_t k = 0; k <= len && r == -2; ++k)
            r = lg_h1_parse_response(&pool, buf, k, k ? k - 1 : 0, &lim, c->req_flags, &head, &info, &err);
        if (c->ret > 0) {
            ok(r == (ssize_t)len, "response %zu parsed (r=%zd %s)", i, r, r == -1 ? err.msg : "");
            if (r > 0)
                ok(info.body == c->body && info.keep_alive == (unsigned)c->keep_alive && info.is_interim == (unsigned)c->interim,
                   "response %zu: body=%d ka=%d interim=%d", i, info.body, info.keep_alive, info.is_interim);
        } else {
            ok(r == -1 && err.status == 502, "response %zu rejected (r=%zd)", i, r);
            if (r == -1)
                ok_str(err.details, c->details);
        }
        free(buf);
    }
    {
        char buf[] = "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nX-A: b\r\n\r\n";
        lg_resp_head_t head;
        lg_h1_msg_info_t info;
        lg_h1_error_t err;
        ok(lg_h1_parse_response(&pool, buf, sizeof(buf) - 1, 0, &lim, 0, &head, &info, &err) > 0 && head.status == 204 &&
               head.headers.size == 1 && head.version == LG_HTTP_11,
           "204 Content-Length: 0 is dropped");
    }
}

static void test_interim_then_final(void)
{
    char buf[] = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    lg_resp_head_t head;
    lg_h1_msg_info_t info;
    lg_h1_error_t err;
    ssize_t n = lg_h1_parse_response(&pool, buf, sizeof(buf) - 1, 0, &lim, 0, &head, &info, &err);
    ok(n == 25 && head.status == 100 && info.is_interim && info.body == LG_H1_BODY_NONE, "interim head");
    n = lg_h1_parse_response(&pool, buf + 25, sizeof(buf) - 1 - 25, 0, &lim, 0, &head, &info, &err);
    ok(n == 38 && head.status == 200 && !info.is_interim && info.body == LG_H1_BODY_CONTENT_LENGTH && info.content_length == 2,
       "final head after it (n=%zd)", n);
}

static void test_defaults(void)
{
    lg_h1_limits_t d;
    memset(&d, 0xff, sizeof(d));
    lg_h1_limits_init(&d);
    ok(d.max_headers_kb == 60 && d.max_headers_count == 100 && d.headers_with_underscores_action == LG_H1_UNDERSCORES_ALLOW &&
           !d.allow_chunked_length && !d.accept_http_10 && d.allow_absolute_url && !d.allow_custom_methods &&
           d.default_host_for_http_10.len == 0,
       "Envoy's defaults");
}

static void test_flatten(void)
{
    lg_req_head_t req = {.method = LG_LIT("POST"), .authority = LG_LIT("a.b"), .path = LG_LIT("/p?q"), .scheme = LG_LIT("https")};
    lg_resp_head_t resp = {.status = 404, .version = LG_HTTP_11};
    h2o_iovec_t out;
    char chunk[LG_H1_CHUNK_HEADER_MAX];

    lg_headers_add(&pool, &req.headers, LG_LIT("x-a"), LG_LIT("1"));
    lg_headers_add(&pool, &req.headers, LG_LIT(":internal"), LG_LIT("skip"));
    lg_headers_add(&pool, &req.headers, LG_LIT("host"), LG_LIT("dup"));
    lg_headers_add(&pool, &req.headers, LG_LIT("transfer-encoding"), LG_LIT("gzip"));
    lg_headers_add(&pool, &req.headers, LG_LIT("content-length"), LG_LIT("7"));
    ok(lg_h1_flatten_request_head(&pool, &req, LG_H1_ADD_CHUNKED_TE, &out) == 0, "request flattened");
    ok(h2o_memis(out.base, out.len, H2O_STRLIT("POST /p?q HTTP/1.1\r\nhost: a.b\r\nx-a: 1\r\ntransfer-encoding: chunked\r\n\r\n")),
       "request head: %.*s", (int)out.len, out.base);
    ok(lg_h1_flatten_request_head(&pool, &req, LG_H1_ABSOLUTE_URL | LG_H1_ADD_CONTENT_LENGTH_ZERO, &out) == 0 &&
           h2o_memis(out.base, out.len,
                     H2O_STRLIT("POST https://a.b/p?q HTTP/1.1\r\nhost: a.b\r\nx-a: 1\r\ncontent-length: 0\r\n\r\n")),
       "absolute url: %.*s", (int)out.len, out.base);
    req.method = LG_LIT("CONNECT");
    ok(lg_h1_flatten_request_head(&pool, &req, 0, &out) == 0 &&
           h2o_memis(out.base, out.len, H2O_STRLIT("CONNECT a.b HTTP/1.1\r\nhost: a.b\r\nx-a: 1\r\ncontent-length: 7\r\n\r\n")),
       "connect: %.*s", (int)out.len, out.base);
    req.method = LG_LIT("GET");
    lg_headers_add(&pool, &req.headers, LG_LIT("x-evil"), LG_LIT("a\r\nTransfer-Encoding: chunked"));
    ok(lg_h1_flatten_request_head(&pool, &req, 0, &out) == -1, "CRLF injection in a value refused");
    req.headers.size = 1;
    lg_headers_add(&pool, &req.headers, LG_LIT("x evil"), LG_LIT("a"));
    ok(lg_h1_flatten_request_head(&pool, &req, 0, &out) == -1, "space in a name refused");
    req.headers.size = 1;
    req.path = LG_LIT("/a b");
    ok(lg_h1_flatten_request_head(&pool, &req, 0, &out) == -1, "space in the path refused");
    req.path = LG_LIT("/");
    req.authority = LG_LIT("a\r\nb");
    ok(lg_h1_flatten_request_head(&pool, &req, 0, &out) == -1, "CRLF in the authority refused");

    lg_headers_add(&pool, &resp.headers, LG_LIT("content-length"), LG_LIT("3"));
    ok(lg_h1_flatten_response_head(&pool, &resp, 0, &out) == 0 &&
           h2o_memis(out.base, out.len, H2O_STRLIT("HTTP/1.1 404 Not Found\r\ncontent-length: 3\r\n\r\n")),
       "response: %.*s", (int)out.len, out.base);
    resp.status = 299;
    resp.version = LG_HTTP_10;
    resp.headers.size = 0;
    ok(lg_h1_flatten_response_head(&pool, &resp, LG_H1_ADD_CHUNKED_TE, &out) == 0 &&
           h2o_memis(out.base, out.len, H2O_STRLIT("HTTP/1.0 299 Unknown\r\ntransfer-encoding: chunked\r\n\r\n")),
       "response 1.0: %.*s", (int)out.len, out.base);

    ok(lg_h1_chunk_header(chunk, 0x1a) == 4 && memcmp(chunk, "1a\r\n", 4) == 0, "chunk header");
    ok(lg_h1_chunk_header(chunk, SIZE_MAX) == 18 && memcmp(chunk, "ffffffffffffffff\r\n", 18) == 0, "largest chunk header");
    lg_headers_t trailers = {NULL};
    ok(lg_h1_flatten_last_chunk(&pool, NULL, &out) == 0 && h2o_memis(out.base, out.len, H2O_STRLIT(LG_H1_LAST_CHUNK)),
       "last chunk");
    lg_headers_add(&pool, &trailers, LG_LIT("grpc-status"), LG_LIT("0"));
    lg_headers_add(&pool, &trailers, LG_LIT("content-length"), LG_LIT("0"));
    ok(lg_h1_flatten_last_chunk(&pool, &trailers, &out) == 0 &&
           h2o_memis(out.base, out.len, H2O_STRLIT("0\r\ngrpc-status: 0\r\n\r\n")),
       "last chunk with trailers");
    lg_headers_add(&pool, &trailers, LG_LIT("x"), LG_LIT("\n"));
    ok(lg_h1_flatten_last_chunk(&pool, &trailers, &out) == -1, "bad trailer refused");
    ok_str(lg_h1_reason_phrase(431), "Request Header Fields Too Large");
    ok_str(lg_h1_reason_phrase(418), "Unknown");
}

/* Round trip: what the serializer writes, the parser reads back the same. */
static void test_round_trip(void)
{
    lg_req_head_t req = {.method = LG_LIT("PUT"), .authority = LG_LIT("svc:8080"), .path = LG_LIT("/x")}, back;
    lg_h1_msg_info_t info;
    lg_h1_error_t err;
    h2o_iovec_t out;
    lg_headers_add(&pool, &req.headers, LG_LIT("x-a"), LG_LIT("b c"));
    ok(lg_h1_flatten_request_head(&pool, &req, LG_H1_ADD_CHUNKED_TE, &out) == 0, "flatten");
    char *buf = lg_strndup(out.base, out.len);
    ok(lg_h1_parse_request(&pool, buf, out.len, 0, &lim, &back, &info, &err) == (ssize_t)out.len &&
           info.body == LG_H1_BODY_CHUNKED && h2o_memis(back.authority.base, back.authority.len, H2O_STRLIT("svc:8080")) &&
           back.headers.size == 2,
       "round trip");
    free(buf);
}

static void test_encode_framing(void)
{
    ok(lg_h1_encode_framing(&(lg_h1_encode_ctx_t){.status = 200}) == (LG_H1_ADD_CHUNKED_TE | LG_H1_CHUNK_BODY), "200 streaming");
    ok(lg_h1_encode_framing(&(lg_h1_encode_ctx_t){.status = 200, .has_content_length = 1}) == 0, "200 with CL");
    ok(lg_h1_encode_framing(&(lg_h1_encode_ctx_t){.status = 200, .end_stream = 1}) == LG_H1_ADD_CONTENT_LENGTH_ZERO,
       "200 headers only");
    ok(lg_h1_encode_framing(&(lg_h1_encode_ctx_t){.status = 204, .end_stream = 1}) == 0, "204");
    ok(lg_h1_encode_framing(&(lg_h1_encode_ctx_t){.status = 304}) == 0, "304");
    ok(lg_h1_encode_framing(&(lg_h1_encode_ctx_t){.status = 101}) == 0, "101");
    ok(lg_h1_encode_framing(&(lg_h1_encode_ctx_t){.status = 200, .end_stream = 1, .is_head_response = 1}) == LG_H1_ADD_CHUNKED_TE,
       "HEAD, end: Envoy sends an informational TE");
    ok(lg_h1_encode_framing(&(lg_h1_encode_ctx_t){.status = 200, .is_head_response = 1}) == LG_H1_ADD_CHUNKED_TE, "HEAD streaming");
    ok(lg_h1_encode_framing(&(lg_h1_encode_ctx_t){.status = 200, .is_http10 = 1}) == 0, "1.0 client: read until close");
    ok(lg_h1_encode_framing(&(lg_h1_encode_ctx_t){.status = 200, .is_connect = 1}) == 0, "CONNECT 200");
    ok(lg_h1_encode_framing(&(lg_h1_encode_ctx_t){.status = 403, .is_connect = 1}) == (LG_H1_ADD_CHUNKED_TE | LG_H1_CHUNK_BODY),
       "CONNECT refused");
    ok(lg_h1_encode_framing(&(lg_h1_encode_ctx_t){.end_stream = 1, .is_bodiless_method = 1}) == 0, "GET");
    ok(lg_h1_encode_framing(&(lg_h1_encode_ctx_t){.end_stream = 1}) == LG_H1_ADD_CONTENT_LENGTH_ZERO, "POST without body");
    ok(lg_h1_encode_framing(&(lg_h1_encode_ctx_t){0}) == (LG_H1_ADD_CHUNKED_TE | LG_H1_CHUNK_BODY), "POST streaming");
    ok(lg_h1_encode_framing(&(lg_h1_encode_ctx_t){.is_upgrade = 1}) == 0, "upgrade request");
}

static void test_strip(void)
{
    lg_headers_t h = {NULL};
    const char *want = "x-a:1|te:trailers|x-c:3";
    char got[256] = "";
    lg_headers_add(&pool, &h, LG_LIT("x-a"), LG_LIT("1"));
    lg_headers_add(&pool, &h, LG_LIT("connection"), LG_LIT("X-B, keep-alive, content-length"));
    lg_headers_add(&pool, &h, LG_LIT("x-b"), LG_LIT("2"));
    lg_headers_add(&pool, &h, LG_LIT("keep-alive"), LG_LIT("timeout=5"));
    lg_headers_add(&pool, &h, LG_LIT("proxy-connection"), LG_LIT("close"));
    lg_headers_add(&pool, &h, LG_LIT("transfer-encoding"), LG_LIT("chunked"));
    lg_headers_add(&pool, &h, LG_LIT("upgrade"), LG_LIT("websocket"));
    lg_headers_add(&pool, &h, LG_LIT("te"), LG_LIT("deflate, trailers"));
    lg_headers_add(&pool, &h, LG_LIT("x-c"), LG_LIT("3"));
    ok(lg_h1_strip_hop_by_hop(&h, 0) == 6, "six removed");
    for (size_t i = 0, n = 0; i != h.size; ++i)
        n += snprintf(got + n, sizeof(got) - n, "%s%.*s:%.*s", i ? "|" : "", (int)h.entries[i].name.len, h.entries[i].name.base,
                      (int)h.entries[i].value.len, h.entries[i].value.base);
    ok_str(got, want);

    h.size = 0;
    lg_headers_add(&pool, &h, LG_LIT("connection"), LG_LIT("Upgrade, x-b"));
    lg_headers_add(&pool, &h, LG_LIT("upgrade"), LG_LIT("websocket"));
    lg_headers_add(&pool, &h, LG_LIT("x-b"), LG_LIT("2"));
    lg_headers_add(&pool, &h, LG_LIT("te"), LG_LIT("gzip"));
    ok(lg_h1_strip_hop_by_hop(&h, 1) == 2 && h.size == 2 &&
           h2o_memis(h.entries[0].value.base, h.entries[0].value.len, H2O_STRLIT("upgrade")),
       "upgrade kept");
    ok(lg_h1_is_hop_by_hop(LG_LIT("keep-alive")) && !lg_h1_is_hop_by_hop(LG_LIT("x-keep-alive")), "is_hop_by_hop");
}

int main(void)
{
    lg_h1_limits_init(&lim);
    h2o_mem_init_pool(&pool);
    test_valid_requests();
    test_invalid_requests();
    test_versions_and_options();
    test_limits();
    test_pipelined();
    test_chunked();
    test_chunked_errors();
    test_responses();
    test_interim_then_final();
    test_defaults();
    test_flatten();
    test_round_trip();
    test_encode_framing();
    test_strip();
    h2o_mem_clear_pool(&pool);
    return done();
}
