#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/stat.h>
#include <unistd.h>
#include "test.h"
#include "legate/access_log.h"
#include "legate/format.h"
#include "legate/http.h"
#include "legate/pbjson.h"
#include "legate/worker-t.h"

static h2o_mem_pool_t pool;
static char dir[64];
static lg_req_head_t req;
static lg_resp_head_t resp;
static lg_stream_info_t si;

static void set_v4(struct sockaddr_storage *ss, const char *ip, uint16_t port)
{
    struct sockaddr_in *sin = (struct sockaddr_in *)ss;
    memset(ss, 0, sizeof(*ss));
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    inet_pton(AF_INET, ip, &sin->sin_addr);
}

static void setup(void)
{
    req.method = LG_LIT("GET");
    req.scheme = LG_LIT("http");
    req.authority = LG_LIT("example.com");
    req.path = LG_LIT("/a/b?x=1");
    req.version = LG_HTTP_11;
    lg_headers_add(&pool, &req.headers, LG_LIT("user-agent"), LG_LIT("curl/8.0"));
    lg_headers_add(&pool, &req.headers, LG_LIT("x-request-id"), LG_LIT("0000002a-aaaa-4bbb-8ccc-dddddddddddd"));
    lg_headers_add(&pool, &req.headers, LG_LIT("x-foo"), LG_LIT("foo \"quoted\"\n"));
    resp.status = 200;
    lg_headers_add(&pool, &resp.headers, LG_LIT("x-envoy-upstream-service-time"), LG_LIT("7"));
    si.start_wall_us = 1700000000123456ull; /* 2023-11-14T22:13:20.123Z */
    si.start_us = 1000000;
    si.last_downstream_rx_us = 1001000;
    si.first_upstream_rx_us = 1010000;
    si.last_downstream_tx_us = 1025000;
    set_v4(&si.downstream_remote, "10.0.0.1", 5000);
    set_v4(&si.downstream_local, "127.0.0.1", 10000);
    set_v4(&si.upstream_remote, "127.0.0.1", 8080);
    si.protocol = LG_HTTP_11;
    si.response_code = 200;
    si.bytes_received = 3;
    si.bytes_sent = 11;
    si.request = &req;
    si.response = &resp;
    si.request_id = LG_LIT("0000002a-aaaa-4bbb-8ccc-dddddddddddd");
}

static char *path_of(const char *name)
{
    char *p = h2o_mem_alloc_pool(&pool, strlen(dir) + strlen(name) + 2);
    sprintf(p, "%s/%s", dir, name);
    return p;
}

/* The whole file as a pool string ("" when absent). */
static const char *slurp(const char *name)
{
    lg_error_t err;
    size_t len;
    char *data = lg_read_file(path_of(name), &len, &err);
    if (data == NULL)
        return "";
    char *copy = h2o_mem_alloc_pool(&pool, len + 1);
    memcpy(copy, data, len + 1);
    free(data);
    return copy;
}

/* Compiles one AccessLog written in YAML; returns 0 or -1 with err set. */
static int compile(const char *yaml, lg_access_logs_t *out, lg_error_t *err)
{
    *out = (lg_access_logs_t){NULL, 0};
    lg_node_t *node = lg_yaml_parse(yaml, strlen(yaml), "test", err);
    if (node == NULL)
        return -1;
    ProtobufCMessage *m = lg_pbjson_decode(&envoy__config__accesslog__v3__access_log__descriptor, node, 0, err);
    lg_node_free(node);
    if (m == NULL)
        return -1;
    Envoy__Config__Accesslog__V3__AccessLog *al = (Envoy__Config__Accesslog__V3__AccessLog *)m;
    int rc = lg_access_logs_compile(&al, 1, out, err);
    protobuf_c_message_free_unpacked(m, NULL);
    return rc;
}

/* A file access log on <dir>/<name> with `rest` appended to its typed_config (indented 2). */
static const char *file_log(const char *name, const char *rest, const char *filter)
{
    char *y = h2o_mem_alloc_pool(&pool, 4096);
    snprintf(y, 4096,
             "name: envoy.access_loggers.file\n"
             "%s"
             "typed_config:\n"
             "  \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n"
             "  path: %s\n"
             "%s",
             filter ? filter : "", path_of(name), rest ? rest : "");
    return y;
}

/* Emits `s` once through a log compiled from `yaml`, flushes, and returns what the file got. */
static const char *emit_one(const char *name, const char *yaml, const lg_stream_info_t *s)
{
    lg_access_logs_t logs;
    lg_error_t err = {{0}};
    if (compile(yaml, &logs, &err) != 0) {
        ok(0, "compile: %s", err.msg);
        return "ERR";
    }
    size_t before = strlen(slurp(name));
    lg_access_logs_emit(&logs, s);
    lg_access_log_flush();
    lg_access_logs_dispose(&logs);
    return slurp(name) + before;
}

static const char *compile_error(const char *yaml)
{
    lg_access_logs_t logs;
    lg_error_t err = {{0}};
    if (compile(yaml, &logs, &err) == 0) {
        lg_access_logs_dispose(&logs);
        return "(compiled)";
    }
    char *copy = h2o_mem_alloc_pool(&pool, strlen(err.msg) + 1);
    strcpy(copy, err.msg);
    return copy;
}

static void test_default_format(void)
{
    ok_str(emit_one("default.log", file_log("default.log", NULL, NULL), &si),
           "[2023-11-14T22:13:20.123Z] \"GET /a/b?x=1 HTTP/1.1\" 200 - 3 11 25 7 \"-\" \"curl/8.0\" "
           "\"0000002a-aaaa-4bbb-8ccc-dddddddddddd\" \"example.com\" \"127.0.0.1:8080\"\n");
    /* the deprecated `format` field, empty, is the default too; x-envoy-original-path wins over :path */
    lg_req_head_t r2 = req;
    r2.headers = (lg_headers_t){0};
    lg_headers_add(&pool, &r2.headers, LG_LIT("x-envoy-original-path"), LG_LIT("/orig"));
    lg_stream_info_t s2 = si;
    s2.request = &r2;
    s2.response = NULL;
    s2.response_code = 0;
    s2.upstream_remote.ss_family = 0;
    s2.response_flags = LG_RF(NO_ROUTE_FOUND);
    ok_str(emit_one("default.log", file_log("default.log", "  format: \"\"\n", NULL), &s2),
           "[2023-11-14T22:13:20.123Z] \"GET /orig HTTP/1.1\" 0 NR 3 11 25 - \"-\" \"-\" \"-\" \"example.com\" \"-\"\n");
}

static void test_text_formats(void)
{
    ok_str(emit_one("text.log",
                    file_log("text.log",
                             "  log_format:\n"
                             "    text_format_source:\n"
                             "      inline_string: \"%REQ(X-MISSING?USER-AGENT):4% %RESP(X-NONE)% %UPSTREAM_HOST%\\n\"\n",
                             NULL),
                    &si),
           "curl - 127.0.0.1:8080\n");
    ok_str(emit_one("text.log",
                    file_log("text.log",
                             "  log_format:\n"
                             "    omit_empty_values: true\n"
                             "    text_format: \"[%RESP(X-NONE)%] %RESPONSE_CODE%\\n\"\n",
                             NULL),
                    &si),
           "[] 200\n");
    ok_str(emit_one("text.log", file_log("text.log", "  format: \"%PROTOCOL% %START_TIME(%s)%\\n\"\n", NULL), &si),
           "HTTP/1.1 1700000000\n");
    /* text_format_source from a file */
    int fd = open(path_of("fmt.txt"), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ok(fd >= 0 && write(fd, "from file %RESPONSE_CODE%\n", 26) == 26, "format file written");
    close(fd);
    char rest[512];
    snprintf(rest, sizeof(rest), "  log_format:\n    text_format_source:\n      filename: %s\n", path_of("fmt.txt"));
    ok_str(emit_one("text.log", file_log("text.log", rest, NULL), &si), "from file 200\n");
}

static void test_json_formats(void)
{
    const char *typed = "  log_format:\n"
                        "    json_format:\n"
                        "      code: \"%RESPONSE_CODE%\"\n"
                        "      duration: \"%DURATION%\"\n"
                        "      method: \"%REQ(:METHOD)%\"\n"
                        "      missing: \"%RESP(X-NONE)%\"\n"
                        "      mixed: \"%RESPONSE_CODE% %RESP(X-NONE)%\"\n"
                        "      foo: \"%REQ(X-FOO)%\"\n"
                        "      const: 1.5\n"
                        "      nested: {up: \"%UPSTREAM_HOST%\", port: \"%DOWNSTREAM_REMOTE_PORT%\"}\n"
                        "      list: [\"%PROTOCOL%\", \"%RESP(X-NONE)%\", 7]\n"
                        "      text: literal\n";
    ok_str(emit_one("json.log", file_log("json.log", typed, NULL), &si),
           "{\"code\":200,\"duration\":25,\"method\":\"GET\",\"missing\":null,\"mixed\":\"200 -\","
           "\"foo\":\"foo \\\"quoted\\\"\\n\",\"const\":1.5,\"nested\":{\"up\":\"127.0.0.1:8080\",\"port\":5000},"
           "\"list\":[\"HTTP/1.1\",null,7],\"text\":\"literal\"}\n");
    /* omit_empty_values drops null values (not strings with missing parts); sort_properties sorts keys */
    ok_str(emit_one("json.log",
                    file_log("json.log",
                             "  log_format:\n"
                             "    omit_empty_values: true\n"
                             "    json_format_options: {sort_properties: true}\n"
                             "    json_format:\n"
                             "      z: \"%RESP(X-NONE)%\"\n"
                             "      b: \"%RESPONSE_CODE% [%RESP(X-NONE)%]\"\n"
                             "      a: {y: \"%RESP(X-NONE)%\", x: \"%BYTES_SENT%\"}\n"
                             "      l: [\"%RESP(X-NONE)%\"]\n",
                             NULL),
                    &si),
           "{\"a\":{\"x\":11},\"b\":\"200 []\",\"l\":[]}\n");
    /* the deprecated untyped json_format: every value is a string, missing is "-" */
    ok_str(emit_one("json.log",
                    file_log("json.log", "  json_format: {code: \"%RESPONSE_CODE%\", none: \"%RESP(X-NONE)%\"}\n", NULL), &si),
           "{\"code\":\"200\",\"none\":\"-\"}\n");
    ok_str(emit_one("json.log", file_log("json.log", "  typed_json_format: {code: \"%RESPONSE_CODE%\"}\n", NULL), &si),
           "{\"code\":200}\n");
    /* bytes that are not UTF-8 stay parseable; valid UTF-8 passes through */
    lg_req_head_t r2 = req;
    r2.headers = (lg_headers_t){0};
    lg_headers_add(&pool, &r2.headers, LG_LIT("x-foo"), LG_LIT("\xc3\xa9\xff\x01"));
    lg_stream_info_t s2 = si;
    s2.request = &r2;
    ok_str(emit_one("json.log", file_log("json.log", "  log_format: {json_format: {foo: \"%REQ(X-FOO)%\"}}\n", NULL), &s2),
           "{\"foo\":\"\xc3\xa9\\u00ff\\u0001\"}\n");
}

static void test_grpc_status(void)
{
    const char *fmt = "  log_format:\n"
                      "    json_format: {camel: \"%GRPC_STATUS%\", snake: \"%GRPC_STATUS(SNAKE_STRING)%\", "
                      "num: \"%GRPC_STATUS_NUMBER%\", n2: \"%GRPC_STATUS(NUMBER)%\"}\n";
    lg_req_head_t r = req;
    r.method = LG_LIT("POST");
    r.headers = (lg_headers_t){0};
    lg_headers_add(&pool, &r.headers, LG_LIT("content-type"), LG_LIT("application/grpc+proto"));
    lg_headers_t t = {0};
    lg_headers_add(&pool, &t, LG_LIT("grpc-status"), LG_LIT("14"));
    lg_stream_info_t s = si;
    s.request = &r;
    s.response_trailers = &t;
    ok_str(emit_one("grpc.log", file_log("grpc.log", fmt, NULL), &s),
           "{\"camel\":\"Unavailable\",\"snake\":\"UNAVAILABLE\",\"num\":14,\"n2\":14}\n");
    s.response_trailers = NULL;
    s.response_code = 404; /* a trailers-less reply maps from the HTTP status */
    ok_str(emit_one("grpc.log", file_log("grpc.log", fmt, NULL), &s),
           "{\"camel\":\"Unimplemented\",\"snake\":\"UNIMPLEMENTED\",\"num\":12,\"n2\":12}\n");
    s.request = &req; /* not a gRPC request: no status */
    ok_str(emit_one("grpc.log", file_log("grpc.log", fmt, NULL), &s), "{\"camel\":null,\"snake\":null,\"num\":null,\"n2\":null}\n");
    ok_str(compile_error(file_log("grpc.log", "  format: \"%GRPC_STATUS(LOUD)%\"\n", NULL)),
           "access_log[0].typed_config.format: GrpcStatusFormatter only supports CAMEL_STRING, SNAKE_STRING or NUMBER.");
}

static int logged(const char *filter, const lg_stream_info_t *s)
{
    const char *got = emit_one("filter.log", file_log("filter.log", "  format: \"x\\n\"\n", filter), s);
    return strcmp(got, "x\n") == 0;
}

static void test_filters(void)
{
    const char *ge400 = "filter:\n  status_code_filter:\n    comparison: {op: GE, value: {default_value: 400, runtime_key: k}}\n";
    lg_stream_info_t s = si;
    ok(!logged(ge400, &s), "200 is not >= 400");
    s.response_code = 404;
    ok(logged(ge400, &s), "404 is >= 400");
    s.response_code = 0;
    ok(!logged(ge400, &s), "no response counts as 0");
    ok(logged("filter:\n  status_code_filter:\n    comparison: {value: {default_value: 0, runtime_key: k}}\n", &s),
       "EQ 0 matches no response");

    s = si; /* 25 ms */
    ok(logged("filter:\n  duration_filter:\n    comparison: {op: GE, value: {default_value: 25, runtime_key: k}}\n", &s),
       "duration 25 >= 25");
    ok(!logged("filter:\n  duration_filter:\n    comparison: {op: LE, value: {default_value: 24, runtime_key: k}}\n", &s),
       "duration 25 is not <= 24");

    ok(logged("filter:\n  not_health_check_filter: {}\n", &s), "not a health check");
    ok(!logged("filter:\n  traceable_filter: {}\n", &s), "nothing is traceable");

    const char *any_flag = "filter:\n  response_flag_filter: {}\n";
    const char *uf_nr = "filter:\n  response_flag_filter: {flags: [UF, NR, DR]}\n";
    ok(!logged(any_flag, &s), "no flag set");
    s.response_flags = LG_RF(UPSTREAM_CONNECTION_FAILURE);
    ok(logged(any_flag, &s), "any flag");
    ok(logged(uf_nr, &s), "UF listed");
    s.response_flags = LG_RF(NO_HEALTHY_UPSTREAM);
    ok(!logged(uf_nr, &s), "UH not listed");

    s = si;
    ok(logged("filter:\n  header_filter:\n    header: {name: user-agent, string_match: {prefix: curl}}\n", &s), "header matches");
    ok(!logged("filter:\n  header_filter:\n    header: {name: x-none, present_match: true}\n", &s), "header absent");
    s.request = NULL;
    ok(logged("filter:\n  header_filter:\n    header: {name: x-none, present_match: true, invert_match: true}\n", &s),
       "no request: no headers");

    s = si;
    const char *and_f = "filter:\n  and_filter:\n    filters:\n"
                        "    - status_code_filter: {comparison: {op: GE, value: {default_value: 500, runtime_key: k}}}\n"
                        "    - response_flag_filter: {flags: [UF]}\n";
    const char *or_f = "filter:\n  or_filter:\n    filters:\n"
                       "    - status_code_filter: {comparison: {op: GE, value: {default_value: 500, runtime_key: k}}}\n"
                       "    - response_flag_filter: {flags: [UF]}\n";
    s.response_code = 503;
    ok(!logged(and_f, &s), "and: one of two");
    ok(logged(or_f, &s), "or: one of two");
    s.response_flags = LG_RF(UPSTREAM_CONNECTION_FAILURE);
    ok(logged(and_f, &s), "and: both");
    s.response_code = 200;
    s.response_flags = 0;
    ok(!logged(or_f, &s), "or: neither");

    /* runtime: the default percentage; the request id (0x2a = 42) picks the sample */
    s = si;
    ok(!logged("filter:\n  runtime_filter: {runtime_key: k}\n", &s), "runtime: default 0%%");
    ok(logged("filter:\n  runtime_filter: {runtime_key: k, percent_sampled: {numerator: 43}}\n", &s), "42 %% 100 < 43");
    ok(!logged("filter:\n  runtime_filter: {runtime_key: k, percent_sampled: {numerator: 42}}\n", &s), "42 %% 100 >= 42");
    ok(logged("filter:\n  runtime_filter: {runtime_key: k, percent_sampled: {numerator: 100}, use_independent_randomness: true}\n",
              &s),
       "100%% with independent randomness");

    /* gRPC status: trailers, headers, then mapped from the HTTP status */
    const char *unavailable = "filter:\n  grpc_status_filter: {statuses: [UNAVAILABLE]}\n";
    lg_headers_t t = {0};
    lg_headers_add(&pool, &t, LG_LIT("grpc-status"), LG_LIT("14"));
    s.response_trailers = &t;
    ok(logged(unavailable, &s), "grpc-status 14 in trailers");
    s.response_trailers = NULL;
    ok(!logged(unavailable, &s), "200 maps to UNKNOWN");
    ok(logged("filter:\n  grpc_status_filter: {statuses: [UNAVAILABLE], exclude: true}\n", &s), "exclude");
    s.response_code = 503;
    ok(logged(unavailable, &s), "503 maps to UNAVAILABLE");
    s.response_code = 200;

    ok(logged("filter:\n  log_type_filter: {types: [DownstreamEnd]}\n", &s), "HTTP streams log at DownstreamEnd");
    s.request = NULL;
    s.protocol = 0;
    ok(!logged("filter:\n  log_type_filter: {types: [DownstreamEnd]}\n", &s), "TCP logs at TcpConnectionEnd");

    lg_access_logs_t logs;
    lg_error_t err;
    ok(compile(file_log("filter.log", "  format: \"periodic\\n\"\n", "filter:\n  log_type_filter: {types: [TcpPeriodic]}\n"), &logs,
               &err) == 0,
       "compile");
    size_t before = strlen(slurp("filter.log"));
    lg_access_logs_emit(&logs, &s);
    lg_access_logs_emit_type(&logs, &s, ENVOY__DATA__ACCESSLOG__V3__ACCESS_LOG_TYPE__TcpPeriodic);
    lg_access_log_flush();
    ok_str(slurp("filter.log") + before, "periodic\n");
    lg_access_logs_dispose(&logs);
}

static void test_errors(void)
{
    const char *e =
        compile_error("name: envoy.access_loggers.file\n"
                      "typed_config:\n  \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n");
    ok_str(e, "access_log[0].typed_config.path: value length must be at least 1 characters");
    e = compile_error("name: custom\ntyped_config:\n  \"@type\": type.googleapis.com/google.protobuf.Empty\n");
    ok_str(e, "access_log[0]: Didn't find a registered implementation for 'custom' with type URL: 'google.protobuf.Empty'");
    e = compile_error(file_log("bad.log", "  log_format: {text_format: \"%NOPE%\"}\n", NULL));
    ok_str(e, "access_log[0].typed_config.log_format.text_format: Not supported field in StreamInfo: NOPE");
    e = compile_error(file_log("bad.log", "  log_format: {json_format: {a: {b: true}}}\n", NULL));
    ok(strncmp(e, "access_log[0].typed_config.log_format.json_format.a.b: Only string values", 54) == 0, "%s", e);
    e = compile_error(file_log("bad.log", "  log_format: {content_type: text/plain}\n", NULL));
    ok_str(e, "access_log[0].typed_config.log_format.format: one of text_format, json_format or text_format_source must be set");
    e = compile_error(
        file_log("bad.log", NULL, "filter:\n  status_code_filter: {comparison: {op: GE, value: {default_value: 1}}}\n"));
    ok_str(e, "access_log[0].filter.status_code_filter.comparison.value.runtime_key: value length must be at least 1 characters");
    e = compile_error(file_log("bad.log", NULL, "filter:\n  and_filter: {filters: [{not_health_check_filter: {}}]}\n"));
    ok_str(e, "access_log[0].filter.and_filter.filters: value must contain at least 2 item(s)");
    e = compile_error(
        file_log("bad.log", NULL,
                 "filter:\n  or_filter: {filters: [{not_health_check_filter: {}}, {response_flag_filter: {flags: [XX]}}]}\n"));
    ok_str(e, "access_log[0].filter.or_filter.filters[1].response_flag_filter.flags[0]: unknown response flag \"XX\"");
    e = compile_error(file_log("bad.log", NULL, "filter: {}\n"));
    ok_str(e, "access_log[0].filter.filter_specifier: exactly one filter must be set");
    e = compile_error(file_log("bad.log", NULL, "filter:\n  metadata_filter: {}\n"));
    ok_str(e, "access_log[0].filter.metadata_filter: metadata filters are not supported");
    e = compile_error(file_log("no/such/dir/x.log", NULL, NULL));
    ok(strstr(e, "access_log[0].typed_config.path: unable to open file '") == e && strstr(e, "No such file or directory"), "%s", e);
    ok(access(path_of("bad.log"), F_OK) != 0, "a log whose format fails opens no file");
}

/* Two logs naming one path share the file; entries stay whole and in order per writer. */
static void test_shared_file(void)
{
    lg_access_logs_t a, b;
    lg_error_t err;
    ok(compile(file_log("shared.log", "  format: \"a %RESPONSE_CODE%\\n\"\n", NULL), &a, &err) == 0, "a");
    ok(compile(file_log("shared.log", "  format: \"b %RESPONSE_CODE%\\n\"\n", NULL), &b, &err) == 0, "b");
    lg_access_logs_emit(&a, &si);
    lg_access_logs_emit(&b, &si);
    lg_access_logs_emit(&a, &si);
    lg_access_log_flush();
    ok_str(slurp("shared.log"), "a 200\nb 200\na 200\n");
    lg_access_logs_dispose(&a);
    lg_access_logs_dispose(&b);
}

/* A worker's entries wait in its own buffer until a write pass (or 64 KiB). */
static void test_worker_buffer(void)
{
    lg_worker_t w = {.index = 1};
    lg_access_logs_t logs;
    lg_error_t err;
    ok(compile(file_log("worker.log", "  format: \"%RESPONSE_CODE% 0123456789012345678901234567890123456789\\n\"\n", NULL), &logs,
               &err) == 0,
       "compile: %s", err.msg);
    lg_current_worker = &w;
    lg_access_logs_emit(&logs, &si);
    lg_current_worker = NULL;
    ok_str(slurp("worker.log"), "");
    lg_access_log_flush();
    ok_str(slurp("worker.log"), "200 0123456789012345678901234567890123456789\n");

    /* past 64 KiB the flusher is woken (the interval here is an hour) */
    lg_current_worker = &w;
    for (int i = 0; i != 2000; ++i)
        lg_access_logs_emit(&logs, &si);
    lg_current_worker = NULL;
    struct stat st = {0};
    for (int i = 0; i != 500 && (stat(path_of("worker.log"), &st) != 0 || st.st_size < 65536); ++i)
        usleep(10000);
    ok(st.st_size >= 65536 && st.st_size % 45 == 0, "flushed whole lines past 64 KiB without a pass: %lld", (long long)st.st_size);
    lg_access_log_flush();
    ok(stat(path_of("worker.log"), &st) == 0 && st.st_size == 2001 * 45, "every line written once: %lld", (long long)st.st_size);
    lg_access_logs_dispose(&logs);
}

static void test_reopen(void)
{
    lg_access_logs_t logs;
    lg_error_t err;
    ok(compile(file_log("rotate.log", "  format: \"%BYTES_SENT%\\n\"\n", NULL), &logs, &err) == 0, "compile");
    lg_access_logs_emit(&logs, &si);
    ok(rename(path_of("rotate.log"), path_of("rotate.log.1")) == 0, "rename");
    lg_stream_info_t s = si;
    s.bytes_sent = 99;
    lg_access_logs_emit(&logs, &s); /* buffered: written to the old file before reopening */
    lg_access_log_reopen();
    ok_str(slurp("rotate.log"), "");
    s.bytes_sent = 100;
    lg_access_logs_emit(&logs, &s);
    lg_access_log_flush();
    ok_str(slurp("rotate.log.1"), "11\n99\n");
    ok_str(slurp("rotate.log"), "100\n");
    lg_access_logs_dispose(&logs);
}

static void test_stdout(void)
{
    fflush(stdout);
    int saved = dup(1), fd = open(path_of("stdout.txt"), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 1);
    close(fd);
    lg_access_logs_t logs;
    lg_error_t err = {{0}};
    int rc = compile("name: envoy.access_loggers.stdout\n"
                     "typed_config:\n"
                     "  \"@type\": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog\n"
                     "  log_format: {text_format_source: {inline_string: \"out %RESPONSE_CODE%\\n\"}}\n",
                     &logs, &err);
    if (rc == 0) {
        lg_access_logs_emit(&logs, &si);
        lg_access_log_flush();
        lg_access_logs_dispose(&logs);
    }
    dup2(saved, 1);
    close(saved);
    ok(rc == 0, "stdout compile: %s", err.msg);
    ok_str(slurp("stdout.txt"), "out 200\n");
    /* stderr by name alone, with the default format */
    ok_str(compile_error("name: envoy.access_loggers.stderr\n"), "(compiled)");
}

/* Shutdown writes what workers left buffered. */
static void test_shutdown(void)
{
    lg_worker_t w = {.index = 0};
    lg_access_logs_t logs;
    lg_error_t err;
    ok(compile(file_log("last.log", "  format: \"last\\n\"\n", NULL), &logs, &err) == 0, "compile");
    lg_current_worker = &w;
    lg_access_logs_emit(&logs, &si);
    lg_current_worker = NULL;
    lg_access_log_shutdown();
    ok_str(slurp("last.log"), "last\n");
    lg_access_logs_dispose(&logs);
}

int main(void)
{
    h2o_mem_init_pool(&pool);
    strcpy(dir, "/tmp/lg-access-log-XXXXXX");
    if (mkdtemp(dir) == NULL)
        return 1;
    lg_log_levels[LG_LOGC_config] = LG_LOG_ERROR;
    lg_access_log_configure(2, 3600 * 1000);
    setup();
    test_default_format();
    test_text_formats();
    test_json_formats();
    test_grpc_status();
    test_filters();
    test_errors();
    test_shared_file();
    test_worker_buffer();
    test_reopen();
    test_stdout();
    test_shutdown();
    h2o_mem_clear_pool(&pool);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (system(cmd) != 0)
        return 1;
    return done();
}
