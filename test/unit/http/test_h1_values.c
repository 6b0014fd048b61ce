/*
 * Field values are checked eight bytes at a time (lg_h1_value_is_valid, used by
 * h1_parse.c and h1_flatten.c): every byte value at every position of values
 * 1..24 bytes long, so that each lane of the word and the bytewise tail are
 * covered, must be accepted or refused exactly as the per-byte rule
 * (lg_h1_is_value_char) says, by the parser and by the serializer. Names get the
 * same sweep against lg_h1_is_tchar, and the parser must lower-case every name
 * it accepts.
 */
#include <string.h>
#include <h2o/string_.h>
#include "legate/common.h"
#include "legate/h1.h"
#include "legate/http.h"
#include "test.h"

static lg_h1_limits_t lim;
static h2o_mem_pool_t pool;

/* Parses "GET / HTTP/1.1\r\nHost: a\r\n<before><middle><after>\r\n\r\n"; returns 1 when
 * accepted, with the name of its last field in *name. */
static int parse_field(const char *before, const char *middle, size_t len, const char *after, h2o_iovec_t *name)
{
    char buf[128];
    size_t n = sizeof("GET / HTTP/1.1\r\nHost: a\r\n") - 1;
    memcpy(buf, "GET / HTTP/1.1\r\nHost: a\r\n", n);
    memcpy(buf + n, before, strlen(before));
    n += strlen(before);
    memcpy(buf + n, middle, len);
    n += len;
    memcpy(buf + n, after, strlen(after));
    n += strlen(after);
    memcpy(buf + n, "\r\n\r\n", 4);
    n += 4;
    lg_req_head_t head = {0};
    lg_h1_msg_info_t info;
    lg_h1_error_t err;
    if (lg_h1_parse_request(&pool, buf, n, 0, &lim, &head, &info, &err) <= 0)
        return 0;
    *name = head.headers.size != 0 ? head.headers.entries[head.headers.size - 1].name : h2o_iovec_init(NULL, 0);
    return 1;
}

static int parse_accepts(const char *value, size_t len)
{
    h2o_iovec_t name;
    return parse_field("X: ", value, len, "", &name);
}

static int flatten_accepts(const char *value, size_t len)
{
    lg_resp_head_t resp = {.status = 200, .version = LG_HTTP_11};
    h2o_iovec_t out;
    lg_headers_add(&pool, &resp.headers, LG_LIT("x"), h2o_iovec_init(value, len));
    return lg_h1_flatten_response_head(&pool, &resp, 0, &out) == 0;
}

static int flatten_name_accepts(const char *name, size_t len)
{
    lg_resp_head_t resp = {.status = 200, .version = LG_HTTP_11};
    h2o_iovec_t out;
    lg_headers_add(&pool, &resp.headers, h2o_iovec_init(name, len), LG_LIT("v"));
    return lg_h1_flatten_response_head(&pool, &resp, 0, &out) == 0;
}

/* Lower-case and mixed-case names, every byte at every position. */
static void test_names(void)
{
    static const char *const bases[] = {"x-forwarded-for-0123456789", "X-Forwarded-For-ABCDEFGHIJ"};
    char name[24], lower[24];
    int parse_mismatch = 0, flatten_mismatch = 0, case_mismatch = 0;
    for (size_t b = 0; b != LG_ARRAY_SIZE(bases); ++b) {
        for (size_t len = 1; len <= sizeof(name); ++len) {
            for (size_t pos = 0; pos != len; ++pos) {
                for (int c = 0; c != 256; ++c) {
                    memcpy(name, bases[b], len);
                    name[pos] = (char)c;
                    int want = lg_h1_is_tchar((unsigned char)c);
                    h2o_iovec_t parsed = {NULL, 0};
                    /* a colon ends the name and CR/LF the line: the rest would be another field */
                    if (c != ':' && c != '\n' && c != '\r') {
                        int got = parse_field("", name, len, ": v", &parsed);
                        if (got != want && parse_mismatch++ < 5)
                            ok(0, "parse: name byte 0x%02x at %zu of %zu: accepted=%d", c, pos, len, got);
                        if (got) {
                            for (size_t i = 0; i != len; ++i)
                                lower[i] = (char)((unsigned)(name[i] - 'A') < 26 ? name[i] | 0x20 : name[i]);
                            if (!h2o_memis(parsed.base, parsed.len, lower, len) && case_mismatch++ < 5)
                                ok(0, "parse: name %.*s read as %.*s", (int)len, name, (int)parsed.len, parsed.base);
                        }
                    }
                    /* a name starting with ':' is a pseudo-header: never written, so not refused */
                    if (!(c == ':' && pos == 0) && flatten_name_accepts(name, len) != want && flatten_mismatch++ < 5)
                        ok(0, "flatten: name byte 0x%02x at %zu of %zu: accepted=%d", c, pos, len, !want);
                }
                h2o_mem_clear_pool(&pool);
            }
        }
    }
    ok(parse_mismatch == 0, "parser: each name byte at each position judged as lg_h1_is_tchar says");
    ok(case_mismatch == 0, "parser: every accepted name lower-cased");
    ok(flatten_mismatch == 0, "serializer: each name byte at each position judged as lg_h1_is_tchar says");
    ok(!flatten_name_accepts("x-envoy-expected-rq\r\nx", 24), "CRLF in a long name refused");
}

int main(void)
{
    char value[24];
    int parse_mismatch = 0, flatten_mismatch = 0;
    lg_h1_limits_init(&lim);
    h2o_mem_init_pool(&pool);
    for (size_t len = 1; len <= sizeof(value); ++len) {
        for (size_t pos = 0; pos != len; ++pos) {
            for (int c = 0; c != 256; ++c) {
                memset(value, 'v', len);
                value[pos] = (char)c;
                int want = lg_h1_is_value_char((unsigned char)c);
                /* the parser trims OWS and ends a line at CR/LF: only test what stays inside the value */
                int inner = pos != 0 && pos != len - 1;
                if (inner && c != '\n' && c != '\r' && parse_accepts(value, len) != want && parse_mismatch++ < 5)
                    ok(0, "parse: byte 0x%02x at %zu of %zu: accepted=%d", c, pos, len, !want);
                if (flatten_accepts(value, len) != want && flatten_mismatch++ < 5)
                    ok(0, "flatten: byte 0x%02x at %zu of %zu: accepted=%d", c, pos, len, !want);
            }
            h2o_mem_clear_pool(&pool);
        }
    }
    ok(parse_mismatch == 0, "parser: each byte at each position judged as lg_h1_is_value_char says");
    ok(flatten_mismatch == 0, "serializer: each byte at each position judged as lg_h1_is_value_char says");
    ok(!flatten_accepts("aaaaaaa\r\nset-cookie: x", 22), "CRLF injection past the first word refused");
    ok(!flatten_accepts("aaaaaaaaaaaaaaa\x7f", 16), "DEL in the last lane refused");
    static const char good[] = "tab\there and obs-text \xff\x80 ok";
    ok(flatten_accepts(good, sizeof(good) - 1), "HTAB and obs-text accepted");
    h2o_mem_clear_pool(&pool);
    test_names();
    return done();
}
