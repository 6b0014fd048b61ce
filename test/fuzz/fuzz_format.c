/*
 * Fuzz target for the substitution formatter (access logs, header values):
 * the input up to the first newline is a format string, the rest is the value
 * of request header x-f, response header x-f and the path, so that untrusted
 * bytes reach every printer (text, JSON typed and untyped, cut to :N). The
 * format string also goes through lg_format_time (START_TIME). Checks: no
 * crash, no sanitizer report, JSON output holds no raw control byte.
 *
 * Build: clang -g -O1 -std=gnu11 -fsanitize=fuzzer,address,undefined -Iinclude -Ibuild/gen -DH2O_USE_LIBUV=0 \
 *          test/fuzz/fuzz_format.c src/core/format.c src/http/headers.c src/core/common.c src/core/log.c src/config/address.c \
 *          -lh2o-evloop -lssl -lcrypto -lpthread -lm -o build/fuzz_format
 *        build/fuzz_format -max_total_time=60 test/fuzz/corpus/format
 */
#include <arpa/inet.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "legate/format.h"
#include "legate/http.h"

static void fill_info(lg_stream_info_t *si, lg_req_head_t *req, lg_resp_head_t *resp, h2o_mem_pool_t *pool, h2o_iovec_t v)
{
    struct sockaddr_in *sin = (struct sockaddr_in *)&si->downstream_remote;
    sin->sin_family = AF_INET;
    sin->sin_port = htons(1234);
    sin->sin_addr.s_addr = htonl(0x7f000001);
    si->downstream_local = si->downstream_remote;
    si->start_wall_us = 1700000000123456ull;
    si->start_us = 1000;
    si->last_downstream_tx_us = 5000;
    si->protocol = LG_HTTP_11;
    si->response_code = 200;
    si->response_flags = LG_RF(UPSTREAM_PROTOCOL_ERROR) | LG_RF(LOCAL_RESET);
    si->upstream_cluster = v;
    si->response_code_details = v;
    *req = (lg_req_head_t){LG_LIT("GET"), LG_LIT("http"), v, v};
    lg_headers_add(pool, &req->headers, LG_LIT("x-f"), v);
    *resp = (lg_resp_head_t){200, LG_HTTP_11};
    lg_headers_add(pool, &resp->headers, LG_LIT("x-f"), v);
    si->request = req;
    si->response = resp;
    si->response_trailers = &resp->headers;
    si->request_id = v;
}

static void check_json(const lg_strbuf_t *b)
{
    for (size_t i = 0; i != b->len; ++i)
        if ((unsigned char)b->base[i] < 0x20)
            __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *nl = memchr(data, '\n', size);
    size_t flen = nl != NULL ? (size_t)(nl - (const char *)data) : size;
    h2o_iovec_t value = nl != NULL ? h2o_iovec_init(nl + 1, size - flen - 1) : h2o_iovec_init("", 0);
    char tbuf[256];
    lg_format_time((const char *)data, flen, 1700000000123456ull, tbuf, sizeof(tbuf));
    for (int flags = 0; flags != 2; ++flags) {
        lg_error_t err;
        lg_format_t *f = lg_format_compile((const char *)data, flen, flags, &err);
        if (f == NULL)
            continue;
        h2o_mem_pool_t pool;
        h2o_mem_init_pool(&pool);
        lg_stream_info_t si = {0};
        lg_req_head_t req;
        lg_resp_head_t resp;
        fill_info(&si, &req, &resp, &pool, value);
        lg_format_eval(f, &si, &pool);
        lg_format_eval(f, NULL, &pool);
        lg_strbuf_t text = {NULL}, typed = {NULL}, untyped = {NULL};
        lg_format_append(f, &si, &text);
        lg_format_append_json(f, &si, 1, &typed);
        lg_format_append_json(f, NULL, 0, &untyped);
        check_json(&typed);
        check_json(&untyped);
        lg_strbuf_free(&text);
        lg_strbuf_free(&typed);
        lg_strbuf_free(&untyped);
        h2o_mem_clear_pool(&pool);
        lg_format_free(f);
    }
    return 0;
}
