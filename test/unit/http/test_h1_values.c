/*
 * Field value validation checks eight bytes at a time (h1_parse.c and
 * h1_flatten.c): every byte value at every position of values 1..24 bytes long,
 * so that each lane of the word and the bytewise tail are covered, must be
 * accepted or refused exactly as the per-byte rule (lg_h1_is_value_char) says,
 * by the parser and by the serializer.
 */
#include <string.h>
#include <h2o/string_.h>
#include "legate/common.h"
#include "legate/h1.h"
#include "legate/http.h"
#include "test.h"

static lg_h1_limits_t lim;
static h2o_mem_pool_t pool;

/* Parses "GET / HTTP/1.1\r\nHost: a\r\nX: <value>\r\n\r\n"; returns 1 when accepted. */
static int parse_accepts(const char *value, size_t len)
{
    char buf[128];
    size_t n = 0;
    memcpy(buf, "GET / HTTP/1.1\r\nHost: a\r\nX: ", 28);
    n = 28;
    memcpy(buf + n, value, len);
    n += len;
    memcpy(buf + n, "\r\n\r\n", 4);
    n += 4;
    lg_req_head_t head = {0};
    lg_h1_msg_info_t info;
    lg_h1_error_t err;
    return lg_h1_parse_request(&pool, buf, n, 0, &lim, &head, &info, &err) > 0;
}

static int flatten_accepts(const char *value, size_t len)
{
    lg_resp_head_t resp = {.status = 200, .version = LG_HTTP_11};
    h2o_iovec_t out;
    lg_headers_add(&pool, &resp.headers, LG_LIT("x"), h2o_iovec_init(value, len));
    return lg_h1_flatten_response_head(&pool, &resp, 0, &out) == 0;
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
    return done();
}
