/*
 * libFuzzer target for the HTTP/1.1 codec. The first input byte picks what is fuzzed
 * and the settings; the rest is the message. Beyond "no crash", it checks the
 * properties request smuggling would break:
 *  - a head parses the same whole or fed in two parts (the split point comes from the
 *    input), and a prefix of a complete head is always "incomplete";
 *  - what the serializer writes for a parsed head parses back with the same framing;
 *  - a chunked body decodes to the same bytes and the same end whatever the split,
 *    and re-encoding the decoded data decodes back to it.
 *
 * Build: clang -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude -DH2O_USE_LIBUV=0 \
 *          test/fuzz/fuzz_h1.c src/http/h1_parse.c src/http/h1_chunked.c \
 *          src/http/h1_flatten.c src/http/headers.c src/core/common.c -lh2o-evloop -lssl -lcrypto -lm
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <h2o/string_.h>
#include "legate/common.h"
#include "legate/h1.h"
#include "legate/http.h"

#define CHECK(cond)                                                                       \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            fprintf(stderr, "%s:%d: property violated: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                      \
        }                                                                                 \
    } while (0)

static void settings_from_byte(uint8_t b, lg_h1_limits_t *lim)
{
    lg_h1_limits_init(lim);
    lim->allow_chunked_length = (b >> 2) & 1;
    lim->accept_http_10 = (b >> 3) & 1;
    lim->headers_with_underscores_action = ((b >> 4) & 3) % 3;
    lim->allow_custom_methods = (b >> 6) & 1;
    lim->allow_absolute_url = !((b >> 7) & 1);
    if (lim->accept_http_10 && (b & 0x40))
        lim->default_host_for_http_10 = LG_LIT("default");
    lim->max_headers_kb = 4; /* small, so that the limits are reached */
}

static int same_iov(h2o_iovec_t a, h2o_iovec_t b)
{
    return h2o_memis(a.base, a.len, b.base, b.len);
}

static void check_request_error(const lg_h1_error_t *err)
{
    CHECK(err->details != NULL && err->msg != NULL);
    CHECK(err->status == 400 || err->status == 426 || err->status == 431 || err->status == 501);
}

/* Serializes a parsed request and parses it back: the framing must not change. */
static void request_round_trip(h2o_mem_pool_t *pool, const lg_h1_limits_t *orig, const lg_req_head_t *head,
                               const lg_h1_msg_info_t *info)
{
    lg_h1_limits_t lim;
    lg_req_head_t back;
    lg_h1_msg_info_t binfo;
    lg_h1_error_t err;
    h2o_iovec_t out;

    lg_h1_limits_init(&lim);
    lim.max_headers_kb = 1024;
    lim.max_headers_count = 10000;
    lim.allow_chunked_length = 1;
    lim.allow_custom_methods = 1;
    lim.allow_absolute_url = orig->allow_absolute_url;
    CHECK(lg_h1_flatten_request_head(pool, head, info->body == LG_H1_BODY_CHUNKED ? LG_H1_ADD_CHUNKED_TE : 0, &out) == 0);
    char *copy = h2o_mem_alloc_pool(pool, out.len);
    memcpy(copy, out.base, out.len);
    ssize_t r = lg_h1_parse_request(pool, copy, out.len, 0, &lim, &back, &binfo, &err);
    if (r < 0)
        fprintf(stderr, "re-parse failed: %s (%s)\n%.*s\n", err.details, err.msg, (int)out.len, out.base);
    CHECK(r == (ssize_t)out.len);
    CHECK(binfo.body == info->body && binfo.content_length == info->content_length);
    CHECK(same_iov(back.method, head->method) && same_iov(back.authority, head->authority));
    CHECK(back.headers.size + (lg_headers_find(&head->headers, H2O_STRLIT("transfer-encoding"), 0) >= 0) ==
          head->headers.size + (info->body == LG_H1_BODY_CHUNKED));
}

static void fuzz_request(const lg_h1_limits_t *lim, size_t split, const uint8_t *data, size_t size)
{
    h2o_mem_pool_t pool;
    lg_req_head_t head, head2;
    lg_h1_msg_info_t info, info2;
    lg_h1_error_t err, err2;
    char *a = malloc(size + 1), *b = malloc(size + 1);
    memcpy(a, data, size);
    memcpy(b, data, size);
    h2o_mem_init_pool(&pool);

    ssize_t r = lg_h1_parse_request(&pool, a, size, 0, lim, &head, &info, &err);
    CHECK(r == -2 || r == -1 || (r > 0 && (size_t)r <= size));
    if (r == -1)
        check_request_error(&err);
    split = size != 0 ? split % size : 0;
    ssize_t r1 = lg_h1_parse_request(&pool, b, split, 0, lim, &head2, &info2, &err2);
    if (r > 0 && (size_t)r > split)
        CHECK(r1 == -2);
    if (r1 == -2) {
        ssize_t r2 = lg_h1_parse_request(&pool, b, size, split, lim, &head2, &info2, &err2);
        CHECK(r2 == r);
        if (r > 0)
            CHECK(same_iov(head.path, head2.path) && head.headers.size == head2.headers.size && info.body == info2.body &&
                  info.keep_alive == info2.keep_alive);
        if (r == -1)
            CHECK(err.status == err2.status && strcmp(err.details, err2.details) == 0);
    }
    if (r > 0)
        request_round_trip(&pool, lim, &head, &info);
    h2o_mem_clear_pool(&pool);
    free(a);
    free(b);
}

static void fuzz_response(const lg_h1_limits_t *lim, unsigned req_flags, const uint8_t *data, size_t size)
{
    h2o_mem_pool_t pool;
    lg_resp_head_t head, back;
    lg_h1_msg_info_t info, binfo;
    lg_h1_error_t err;
    h2o_iovec_t out;
    char *a = malloc(size + 1);
    memcpy(a, data, size);
    h2o_mem_init_pool(&pool);

    ssize_t r = lg_h1_parse_response(&pool, a, size, 0, lim, req_flags, &head, &info, &err);
    CHECK(r == -2 || r == -1 || (r > 0 && (size_t)r <= size));
    if (r == -1)
        CHECK(err.status == 502 && err.details != NULL);
    if (r > 0) {
        lg_h1_limits_t big = *lim;
        big.max_headers_kb = 1024;
        unsigned flags = info.body == LG_H1_BODY_CHUNKED ? LG_H1_ADD_CHUNKED_TE : 0;
        size_t te = lg_headers_find(&head.headers, H2O_STRLIT("transfer-encoding"), 0) >= 0;
        CHECK(lg_h1_flatten_response_head(&pool, &head, flags, &out) == 0);
        char *copy = h2o_mem_alloc_pool(&pool, out.len);
        memcpy(copy, out.base, out.len);
        CHECK(lg_h1_parse_response(&pool, copy, out.len, 0, &big, req_flags, &back, &binfo, &err) == (ssize_t)out.len);
        CHECK(binfo.body == info.body && back.status == head.status && back.headers.size + te == head.headers.size + (flags != 0));
    }
    h2o_mem_clear_pool(&pool);
    free(a);
}

/* Decodes data fed in pieces of at most `step` bytes; the body goes to out. Returns
 * the total consumed (>= 0, done) or -1 (error) or -2 (input ended first). */
static ssize_t decode_all(const lg_h1_limits_t *lim, h2o_mem_pool_t *pool, const uint8_t *data, size_t size, size_t step, char *out,
                          size_t *out_len, lg_headers_t *trailers)
{
    lg_h1_chunked_decoder_t d;
    h2o_iovec_t vec[3];
    size_t pos = 0, avail = 0;
    int done = 0;
    lg_h1_error_t err;
    lg_h1_chunked_decoder_init(&d, lim, 1, pool, trailers);
    *out_len = 0;
    while (!done) {
        if (avail < size - pos)
            avail = avail + step < size - pos ? avail + step : size - pos;
        size_t n = LG_ARRAY_SIZE(vec);
        ssize_t r = lg_h1_chunked_decode(&d, (const char *)data + pos, avail, vec, &n, &done, &err);
        if (r < 0) {
            CHECK(err.status == 400 || err.status == 431);
            return -1;
        }
        CHECK((size_t)r <= avail);
        for (size_t i = 0; i != n; ++i) {
            CHECK(vec[i].len != 0 && vec[i].base >= (const char *)data + pos &&
                  vec[i].base + vec[i].len <= (const char *)data + pos + avail);
            memcpy(out + *out_len, vec[i].base, vec[i].len);
            *out_len += vec[i].len;
        }
        pos += r;
        avail -= r;
        if (r == 0 && n == 0 && !done && pos + avail == size)
            return -2;
    }
    return (ssize_t)pos;
}

/* Chunk-encodes body (pieces of `piece` bytes) with trailers. */
static h2o_iovec_t encode_chunked(h2o_mem_pool_t *pool, const char *body, size_t len, size_t piece, const lg_headers_t *trailers)
{
    char *buf = h2o_mem_alloc_pool(pool, len + (len / piece + 1) * (LG_H1_CHUNK_HEADER_MAX + 2)), *p = buf;
    for (size_t off = 0; off < len; off += piece) {
        size_t n = len - off < piece ? len - off : piece;
        p += lg_h1_chunk_header(p, n);
        memcpy(p, body + off, n);
        p += n;
        memcpy(p, "\r\n", 2);
        p += 2;
    }
    h2o_iovec_t last;
    CHECK(lg_h1_flatten_last_chunk(pool, trailers, &last) == 0);
    h2o_iovec_t all = h2o_concat(pool, h2o_iovec_init(buf, p - buf), last);
    return all;
}

static void fuzz_chunked(const lg_h1_limits_t *lim, size_t step, const uint8_t *data, size_t size)
{
    h2o_mem_pool_t pool;
    lg_headers_t t1 = {NULL}, t2 = {NULL}, t3 = {NULL};
    char *o1 = malloc(size + 1), *o2 = malloc(size + 1), *o3;
    size_t l1, l2, l3;
    h2o_mem_init_pool(&pool);

    ssize_t r1 = decode_all(lim, &pool, data, size, size + 1, o1, &l1, &t1);
    ssize_t r2 = decode_all(lim, &pool, data, size, step + 1, o2, &l2, &t2);
    CHECK(r1 == r2);
    if (r1 >= 0) {
        CHECK(l1 == l2 && memcmp(o1, o2, l1) == 0 && t1.size == t2.size);
        h2o_iovec_t again = encode_chunked(&pool, o1, l1, step + 1, &t1);
        o3 = malloc(again.len + 1);
        lg_h1_limits_t big = *lim;
        big.max_headers_kb = 1024;
        big.max_headers_count = 100000;
        CHECK(decode_all(&big, &pool, (const uint8_t *)again.base, again.len, again.len, o3, &l3, &t3) == (ssize_t)again.len);
        size_t framing = 0;
        for (size_t i = 0; i != t1.size; ++i)
            framing += h2o_memis(t1.entries[i].name.base, t1.entries[i].name.len, H2O_STRLIT("content-length")) ||
                       h2o_memis(t1.entries[i].name.base, t1.entries[i].name.len, H2O_STRLIT("transfer-encoding"));
        CHECK(l3 == l1 && memcmp(o3, o1, l1) == 0 && t3.size == t1.size - framing);
        free(o3);
    }
    h2o_mem_clear_pool(&pool);
    free(o1);
    free(o2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lg_h1_limits_t lim;
    if (size < 2)
        return 0;
    settings_from_byte(data[0], &lim);
    switch (data[0] & 3) {
    case 0:
    case 3:
        fuzz_request(&lim, data[1], data + 2, size - 2);
        break;
    case 1:
        fuzz_response(&lim, data[1] & 7, data + 2, size - 2);
        break;
    case 2:
        fuzz_chunked(&lim, data[1], data + 2, size - 2);
        break;
    }
    return 0;
}
