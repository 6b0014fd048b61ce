/*
 * Envoy substitution format strings: compiled into a segment list once,
 * evaluated per stream into pool memory.
 */
#include <ctype.h>
#include <time.h>
#include <unistd.h>
#include <h2o/string_.h>
#include "legate/address.h"
#include "legate/format.h"
#include "legate/http.h"

typedef enum en_lg__fmt_op_t {
    OP_LITERAL,
    OP_START_TIME,
    OP_REQ,
    OP_RESP,
    OP_TRAILER,
    OP_REQ_WITHOUT_QUERY,
    OP_PROTOCOL,
    OP_RESPONSE_CODE,
    OP_RESPONSE_CODE_DETAILS,
    OP_RESPONSE_FLAGS,
    OP_BYTES_RECEIVED,
    OP_BYTES_SENT,
    OP_DURATION,
    OP_REQUEST_DURATION,
    OP_RESPONSE_DURATION,
    OP_RESPONSE_TX_DURATION,
    OP_UPSTREAM_HOST,
    OP_UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT,
    OP_UPSTREAM_REMOTE_PORT,
    OP_UPSTREAM_CLUSTER,
    OP_UPSTREAM_LOCAL_ADDRESS,
    OP_UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT,
    OP_UPSTREAM_LOCAL_PORT,
    OP_DOWNSTREAM_REMOTE_ADDRESS,
    OP_DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT,
    OP_DOWNSTREAM_REMOTE_PORT,
    OP_DOWNSTREAM_DIRECT_REMOTE_ADDRESS,
    OP_DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT,
    OP_DOWNSTREAM_DIRECT_REMOTE_PORT,
    OP_DOWNSTREAM_LOCAL_ADDRESS,
    OP_DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT,
    OP_DOWNSTREAM_LOCAL_PORT,
    OP_REQUESTED_SERVER_NAME,
    OP_ROUTE_NAME,
    OP_CONNECTION_ID,
    OP_UPSTREAM_TRANSPORT_FAILURE_REASON,
    OP_HOSTNAME,
    OP_STREAM_ID,
    OP_GRPC_STATUS,
    OP_UNSUPPORTED, /* an Envoy operator Legate does not track: always missing */
} lg__fmt_op_t;

enum { ARG_NONE, ARG_OPTIONAL, ARG_REQUIRED };

typedef struct st_lg__fmt_cmd_t {
    const char *name;
    lg__fmt_op_t op;
    int arg;
} lg__fmt_cmd_t;

static const lg__fmt_cmd_t commands[] = {
    {"START_TIME", OP_START_TIME, ARG_OPTIONAL},
    {"REQ", OP_REQ, ARG_REQUIRED},
    {"RESP", OP_RESP, ARG_REQUIRED},
    {"TRAILER", OP_TRAILER, ARG_REQUIRED},
    {"REQ_WITHOUT_QUERY", OP_REQ_WITHOUT_QUERY, ARG_REQUIRED},
    {"PROTOCOL", OP_PROTOCOL, ARG_NONE},
    {"RESPONSE_CODE", OP_RESPONSE_CODE, ARG_NONE},
    {"RESPONSE_CODE_DETAILS", OP_RESPONSE_CODE_DETAILS, ARG_NONE},
    {"RESPONSE_FLAGS", OP_RESPONSE_FLAGS, ARG_NONE},
    {"BYTES_RECEIVED", OP_BYTES_RECEIVED, ARG_NONE},
    {"BYTES_SENT", OP_BYTES_SENT, ARG_NONE},
    {"DURATION", OP_DURATION, ARG_NONE},
    {"REQUEST_DURATION", OP_REQUEST_DURATION, ARG_NONE},
    {"RESPONSE_DURATION", OP_RESPONSE_DURATION, ARG_NONE},
    {"RESPONSE_TX_DURATION", OP_RESPONSE_TX_DURATION, ARG_NONE},
    {"UPSTREAM_HOST", OP_UPSTREAM_HOST, ARG_NONE},
    {"UPSTREAM_REMOTE_ADDRESS", OP_UPSTREAM_HOST, ARG_NONE},
    {"UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT", OP_UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT, ARG_NONE},
    {"UPSTREAM_REMOTE_PORT", OP_UPSTREAM_REMOTE_PORT, ARG_NONE},
    {"UPSTREAM_CLUSTER", OP_UPSTREAM_CLUSTER, ARG_NONE},
    {"UPSTREAM_LOCAL_ADDRESS", OP_UPSTREAM_LOCAL_ADDRESS, ARG_NONE},
    {"UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT", OP_UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT, ARG_NONE},
    {"UPSTREAM_LOCAL_PORT", OP_UPSTREAM_LOCAL_PORT, ARG_NONE},
    {"DOWNSTREAM_REMOTE_ADDRESS", OP_DOWNSTREAM_REMOTE_ADDRESS, ARG_NONE},
    {"DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT", OP_DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT, ARG_NONE},
    {"DOWNSTREAM_REMOTE_PORT", OP_DOWNSTREAM_REMOTE_PORT, ARG_NONE},
    {"DOWNSTREAM_DIRECT_REMOTE_ADDRESS", OP_DOWNSTREAM_DIRECT_REMOTE_ADDRESS, ARG_NONE},
    {"DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT", OP_DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT, ARG_NONE},
    {"DOWNSTREAM_DIRECT_REMOTE_PORT", OP_DOWNSTREAM_DIRECT_REMOTE_PORT, ARG_NONE},
    {"DOWNSTREAM_LOCAL_ADDRESS", OP_DOWNSTREAM_LOCAL_ADDRESS, ARG_NONE},
    {"DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT", OP_DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT, ARG_NONE},
    {"DOWNSTREAM_LOCAL_PORT", OP_DOWNSTREAM_LOCAL_PORT, ARG_NONE},
    {"REQUESTED_SERVER_NAME", OP_REQUESTED_SERVER_NAME, ARG_NONE},
    {"ROUTE_NAME", OP_ROUTE_NAME, ARG_NONE},
    {"CONNECTION_ID", OP_CONNECTION_ID, ARG_NONE},
    {"UPSTREAM_TRANSPORT_FAILURE_REASON", OP_UPSTREAM_TRANSPORT_FAILURE_REASON, ARG_NONE},
    {"HOSTNAME", OP_HOSTNAME, ARG_NONE},
    {"STREAM_ID", OP_STREAM_ID, ARG_NONE},
    {"GRPC_STATUS", OP_GRPC_STATUS, ARG_OPTIONAL},
    {"GRPC_STATUS_NUMBER", OP_GRPC_STATUS, ARG_NONE},
    /* Envoy operators whose data Legate does not keep; they print as missing
     * rather than failing configs that Envoy accepts. */
    {"DYNAMIC_METADATA", OP_UNSUPPORTED, ARG_REQUIRED},
    {"CLUSTER_METADATA", OP_UNSUPPORTED, ARG_REQUIRED},
    {"UPSTREAM_METADATA", OP_UNSUPPORTED, ARG_REQUIRED},
    {"ROUTE_METADATA", OP_UNSUPPORTED, ARG_REQUIRED},
    {"FILTER_STATE", OP_UNSUPPORTED, ARG_REQUIRED},
    {"UPSTREAM_FILTER_STATE", OP_UNSUPPORTED, ARG_REQUIRED},
    {"DOWNSTREAM_PEER_URI_SAN", OP_UNSUPPORTED, ARG_NONE},
    {"DOWNSTREAM_LOCAL_URI_SAN", OP_UNSUPPORTED, ARG_NONE},
    {"DOWNSTREAM_PEER_SUBJECT", OP_UNSUPPORTED, ARG_NONE},
    {"DOWNSTREAM_LOCAL_SUBJECT", OP_UNSUPPORTED, ARG_NONE},
    {"DOWNSTREAM_PEER_ISSUER", OP_UNSUPPORTED, ARG_NONE},
    {"DOWNSTREAM_TLS_SESSION_ID", OP_UNSUPPORTED, ARG_NONE},
    {"DOWNSTREAM_TLS_CIPHER", OP_UNSUPPORTED, ARG_NONE},
    {"DOWNSTREAM_TLS_VERSION", OP_UNSUPPORTED, ARG_NONE},
    {"DOWNSTREAM_PEER_FINGERPRINT_256", OP_UNSUPPORTED, ARG_NONE},
    {"DOWNSTREAM_PEER_FINGERPRINT_1", OP_UNSUPPORTED, ARG_NONE},
    {"DOWNSTREAM_PEER_SERIAL", OP_UNSUPPORTED, ARG_NONE},
    {"DOWNSTREAM_PEER_CERT", OP_UNSUPPORTED, ARG_NONE},
    {"VIRTUAL_CLUSTER_NAME", OP_UNSUPPORTED, ARG_NONE},
    {"CONNECTION_TERMINATION_DETAILS", OP_UNSUPPORTED, ARG_NONE},
    {"UPSTREAM_REQUEST_ATTEMPT_COUNT", OP_UNSUPPORTED, ARG_NONE},
};

typedef struct st_lg__fmt_seg_t {
    lg__fmt_op_t op;
    h2o_iovec_t text; /* literal, START_TIME format, or the main header name (lower-case) */
    h2o_iovec_t alt;  /* REQ/RESP/TRAILER alternative header */
    size_t max_len;   /* SIZE_MAX = no limit */
    int grpc_form;    /* GRPC_STATUS: GRPC_FORM_* */
} lg__fmt_seg_t;

struct st_lg_format_t {
    int flags;
    size_t n_segs;
    lg__fmt_seg_t *segs;
    char *hostname;
};

/* ---- compile ---- */

static void add_seg(lg_format_t *f, lg__fmt_seg_t seg)
{
    f->segs = lg_realloc(f->segs, (f->n_segs + 1) * sizeof(*f->segs));
    f->segs[f->n_segs++] = seg;
}

static void add_literal(lg_format_t *f, const char *s, size_t n)
{
    if (n == 0)
        return;
    if (f->n_segs != 0 && f->segs[f->n_segs - 1].op == OP_LITERAL) {
        lg__fmt_seg_t *last = &f->segs[f->n_segs - 1];
        last->text.base = lg_realloc(last->text.base, last->text.len + n + 1);
        memcpy(last->text.base + last->text.len, s, n);
        last->text.len += n;
        last->text.base[last->text.len] = '\0';
        return;
    }
    add_seg(f, (lg__fmt_seg_t){OP_LITERAL, h2o_iovec_init(lg_strndup(s, n), n), {NULL, 0}, SIZE_MAX});
}

/* Matches `:[0-9]+%` or `%` at s[i]; returns the index after '%' or 0. */
static size_t parse_tail(const char *s, size_t len, size_t i, size_t *max_len, int *has_len)
{
    *has_len = 0;
    if (i < len && s[i] == ':') {
        size_t j = i + 1, v = 0;
        while (j < len && isdigit((unsigned char)s[j])) {
            if (v > (SIZE_MAX - 9) / 10)
                return 0;
            v = v * 10 + (size_t)(s[j++] - '0');
        }
        if (j == i + 1)
            return 0;
        *max_len = v;
        *has_len = 1;
        i = j;
    }
    return i < len && s[i] == '%' ? i + 1 : 0;
}

/* Parses `%CMD(ARG):LEN%` at s[pos] like Envoy's regex
 * ^%([A-Z0-9_]+)(?:\((.*?)\))?(?::([0-9]+))?% ; returns the end or 0. */
static size_t parse_command(const char *s, size_t len, size_t pos, h2o_iovec_t *cmd, h2o_iovec_t *arg, int *has_arg,
                            size_t *max_len, int *has_len)
{
    size_t i = pos + 1;
    while (i < len && (isupper((unsigned char)s[i]) || isdigit((unsigned char)s[i]) || s[i] == '_'))
        ++i;
    if (i == pos + 1)
        return 0;
    *cmd = h2o_iovec_init(s + pos + 1, i - pos - 1);
    *has_arg = 0;
    size_t end;
    if (i < len && s[i] == '(') {
        for (size_t j = i + 1; j < len && s[j] != '\n'; ++j) {
            if (s[j] == ')' && (end = parse_tail(s, len, j + 1, max_len, has_len)) != 0) {
                *arg = h2o_iovec_init(s + i + 1, j - i - 1);
                *has_arg = 1;
                return end;
            }
        }
    }
    return parse_tail(s, len, i, max_len, has_len);
}

static const lg__fmt_cmd_t *find_command(h2o_iovec_t name)
{
    for (size_t i = 0; i != LG_ARRAY_SIZE(commands); ++i)
        if (h2o_memis(name.base, name.len, commands[i].name, strlen(commands[i].name)))
            return &commands[i];
    return NULL;
}

static h2o_iovec_t dup_lower(const char *s, size_t n)
{
    char *p = lg_strndup(s, n);
    for (size_t i = 0; i != n; ++i)
        p[i] = (char)tolower((unsigned char)p[i]);
    return h2o_iovec_init(p, n);
}

static int valid_header_string(h2o_iovec_t v)
{
    for (size_t i = 0; i != v.len; ++i)
        if (v.base[i] == '\0' || v.base[i] == '\r' || v.base[i] == '\n')
            return 0;
    return 1;
}

/* REQ(X?Y) as Envoy's parseSubcommandHeaders. */
static int parse_header_arg(h2o_iovec_t arg, lg__fmt_seg_t *seg, lg_error_t *err)
{
    const char *q = memchr(arg.base, '?', arg.len);
    size_t main_len = q != NULL ? (size_t)(q - arg.base) : arg.len;
    h2o_iovec_t main = h2o_iovec_init(arg.base, main_len), alt = {NULL, 0};
    if (q != NULL) {
        alt = h2o_iovec_init(q + 1, arg.len - main_len - 1);
        if (memchr(alt.base, '?', alt.len) != NULL)
            return lg_error(err, "More than 1 alternative header specified in token: %.*s", (int)arg.len, arg.base);
    }
    if (!valid_header_string(main) || !valid_header_string(alt))
        return lg_error(err, "Invalid header configuration. Format string contains null or newline.");
    seg->text = dup_lower(main.base, main.len);
    seg->alt = alt.len != 0 ? dup_lower(alt.base, alt.len) : h2o_iovec_init(NULL, 0);
    return 0;
}

enum { GRPC_FORM_CAMEL, GRPC_FORM_SNAKE, GRPC_FORM_NUMBER };

/* GRPC_STATUS(CAMEL_STRING | SNAKE_STRING | NUMBER) and GRPC_STATUS_NUMBER. */
static int parse_grpc_form(h2o_iovec_t name, h2o_iovec_t arg, lg__fmt_seg_t *seg, lg_error_t *err)
{
    int form = GRPC_FORM_CAMEL;
    if (h2o_memis(name.base, name.len, H2O_STRLIT("GRPC_STATUS_NUMBER")) || h2o_memis(arg.base, arg.len, H2O_STRLIT("NUMBER")))
        form = GRPC_FORM_NUMBER;
    else if (h2o_memis(arg.base, arg.len, H2O_STRLIT("SNAKE_STRING")))
        form = GRPC_FORM_SNAKE;
    else if (arg.len != 0 && !h2o_memis(arg.base, arg.len, H2O_STRLIT("CAMEL_STRING")))
        return lg_error(err, "GrpcStatusFormatter only supports CAMEL_STRING, SNAKE_STRING or NUMBER.");
    seg->grpc_form = form;
    return 0;
}

static int compile_command(lg_format_t *f, h2o_iovec_t name, h2o_iovec_t arg, int has_arg, size_t max_len, int has_len,
                           lg_error_t *err)
{
    const lg__fmt_cmd_t *c = find_command(name);
    if (c == NULL)
        return lg_error(err, "Not supported field in StreamInfo: %.*s", (int)name.len, name.base);
    if (c->arg == ARG_NONE && has_arg)
        return lg_error(err, "%s does not take any parameters or length", c->name);
    if (c->arg == ARG_REQUIRED && arg.len == 0)
        return lg_error(err, "%s requires parameters", c->name);
    lg__fmt_seg_t seg = {c->op, {NULL, 0}, {NULL, 0}, has_len ? max_len : SIZE_MAX};
    switch (c->op) {
    case OP_REQ:
    case OP_RESP:
    case OP_TRAILER:
    case OP_REQ_WITHOUT_QUERY:
        if (parse_header_arg(arg, &seg, err) != 0)
            return -1;
        break;
    case OP_START_TIME:
        seg.text = h2o_iovec_init(lg_strndup(arg.len != 0 ? arg.base : "", arg.len), arg.len);
        break;
    case OP_GRPC_STATUS:
        if (parse_grpc_form(name, arg, &seg, err) != 0)
            return -1;
        break;
    case OP_HOSTNAME:
        if (f->hostname == NULL) {
            char host[256] = "";
            if (gethostname(host, sizeof(host) - 1) != 0)
                host[0] = '\0';
            f->hostname = lg_strdup(host);
        }
        break;
    case OP_UNSUPPORTED:
        LG_WARN(config, "format operator %s is not supported; it will print as missing", c->name);
        break;
    default:
        break;
    }
    add_seg(f, seg);
    return 0;
}

lg_format_t *lg_format_compile(const char *fmt, size_t len, int flags, lg_error_t *err)
{
    lg_format_t *f = lg_calloc(1, sizeof(*f));
    f->flags = flags;
    size_t lit_start = 0, pos = 0;
    while (pos < len) {
        if (fmt[pos] != '%') {
            ++pos;
            continue;
        }
        add_literal(f, fmt + lit_start, pos - lit_start);
        if (pos + 1 < len && fmt[pos + 1] == '%') {
            add_literal(f, "%", 1);
            lit_start = pos += 2;
            continue;
        }
        h2o_iovec_t name, arg = {NULL, 0};
        size_t max_len = 0;
        int has_arg, has_len;
        size_t end = parse_command(fmt, len, pos, &name, &arg, &has_arg, &max_len, &has_len);
        if (end == 0) {
            lg_error(err, "Incorrect configuration: %.*s. Couldn't find valid command at position %zu", (int)len, fmt, pos);
            goto fail;
        }
        if (compile_command(f, name, arg, has_arg, max_len, has_len, err) != 0)
            goto fail;
        lit_start = pos = end;
    }
    add_literal(f, fmt + lit_start, pos - lit_start);
    return f;
fail:
    lg_format_free(f);
    return NULL;
}

void lg_format_free(lg_format_t *f)
{
    if (f == NULL)
        return;
    for (size_t i = 0; i != f->n_segs; ++i) {
        free(f->segs[i].text.base);
        free(f->segs[i].alt.base);
    }
    free(f->segs);
    free(f->hostname);
    free(f);
}

int lg_format_is_constant(const lg_format_t *f)
{
    return f->n_segs == 0 || (f->n_segs == 1 && f->segs[0].op == OP_LITERAL);
}

h2o_iovec_t lg_format_constant(const lg_format_t *f)
{
    return f->n_segs == 0 ? h2o_iovec_init("", 0) : f->segs[0].text;
}

/* ---- time ---- */

static size_t put(char *buf, size_t cap, size_t w, const char *s, size_t n)
{
    if (w + 1 >= cap)
        return w;
    if (n > cap - 1 - w)
        n = cap - 1 - w;
    memcpy(buf + w, s, n);
    return w + n;
}

/* Writes `digits` digits of the fraction of a second (µs precision, then zeros). */
static size_t put_fraction(char *buf, size_t cap, size_t w, uint64_t wall_us, int digits)
{
    char frac[16];
    snprintf(frac, sizeof(frac), "%06u000", (unsigned)(wall_us % 1000000));
    return put(buf, cap, w, frac, (size_t)digits);
}

/* %E#S / %E*S: seconds with a fraction. */
static size_t put_seconds(char *buf, size_t cap, size_t w, const struct tm *tm, uint64_t wall_us, int digits)
{
    char sec[8];
    snprintf(sec, sizeof(sec), "%02d", tm->tm_sec);
    w = put(buf, cap, w, sec, 2);
    if (digits < 0) {
        /* full precision, trailing zeros dropped, as absl's %E*S */
        char frac[8];
        int n = snprintf(frac, sizeof(frac), "%06u", (unsigned)(wall_us % 1000000));
        while (n > 0 && frac[n - 1] == '0')
            --n;
        if (n == 0)
            return w;
        w = put(buf, cap, w, ".", 1);
        return put(buf, cap, w, frac, (size_t)n);
    }
    if (digits == 0)
        return w;
    w = put(buf, cap, w, ".", 1);
    return put_fraction(buf, cap, w, wall_us, digits);
}

size_t lg_format_time(const char *fmt, size_t fmt_len, uint64_t wall_us, char *buf, size_t cap)
{
    static const char default_fmt[] = "%Y-%m-%dT%H:%M:%E3SZ";
    if (fmt_len == 0) {
        fmt = default_fmt;
        fmt_len = sizeof(default_fmt) - 1;
    }
    time_t secs = (time_t)(wall_us / 1000000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    size_t w = 0;
    for (size_t i = 0; i < fmt_len; ++i) {
        const char *p = fmt + i;
        size_t rest = fmt_len - i;
        if (*p != '%' || rest == 1) {
            w = put(buf, cap, w, p, 1);
        } else if (p[1] == 'f') {
            w = put_fraction(buf, cap, w, wall_us, 9);
            i += 1;
        } else if (rest >= 3 && p[1] >= '1' && p[1] <= '9' && p[2] == 'f') {
            w = put_fraction(buf, cap, w, wall_us, p[1] - '0');
            i += 2;
        } else if (p[1] == 's') {
            char n[24];
            w = put(buf, cap, w, n, (size_t)snprintf(n, sizeof(n), "%llu", (unsigned long long)secs));
            i += 1;
        } else if (rest >= 4 && p[1] == 'E' && ((p[2] >= '0' && p[2] <= '9') || p[2] == '*') && p[3] == 'S') {
            w = put_seconds(buf, cap, w, &tm, wall_us, p[2] == '*' ? -1 : p[2] - '0');
            i += 3;
        } else if (rest >= 3 && p[1] == 'E' && p[2] == 'z') {
            w = put(buf, cap, w, "+00:00", 6);
            i += 2;
        } else {
            /* one strftime conversion, with an optional E/O modifier */
            size_t n = (p[1] == 'E' || p[1] == 'O') && rest >= 3 ? 3 : 2;
            char spec[4] = {0}, out[128];
            memcpy(spec, p, n);
            size_t got = strftime(out, sizeof(out), spec, &tm);
            w = put(buf, cap, w, out, got);
            i += n - 1;
        }
    }
    if (cap != 0)
        buf[w] = '\0';
    return w;
}

/* ---- evaluate ---- */

int lg_req_header_first(const lg_req_head_t *req, const char *name, size_t len, h2o_iovec_t *value)
{
    if (len != 0 && name[0] == ':') {
        const h2o_iovec_t *field = NULL;
        if (h2o_memis(name, len, H2O_STRLIT(":authority")))
            field = &req->authority;
        else if (h2o_memis(name, len, H2O_STRLIT(":path")))
            field = &req->path;
        else if (h2o_memis(name, len, H2O_STRLIT(":method")))
            field = &req->method;
        else if (h2o_memis(name, len, H2O_STRLIT(":scheme")))
            field = &req->scheme;
        else if (h2o_memis(name, len, H2O_STRLIT(":protocol")))
            field = &req->protocol;
        if (field == NULL || field->base == NULL || (field->len == 0 && field != &req->authority))
            return 0;
        *value = *field;
        return 1;
    }
    if (h2o_memis(name, len, H2O_STRLIT("host")))
        return lg_req_header_first(req, H2O_STRLIT(":authority"), value);
    ssize_t i = lg_headers_find(&req->headers, name, len, 0);
    if (i < 0)
        return 0;
    *value = req->headers.entries[i].value;
    return 1;
}

static int headers_first(const lg_headers_t *h, h2o_iovec_t name, h2o_iovec_t *value)
{
    ssize_t i = h != NULL ? lg_headers_find(h, name.base, name.len, 0) : -1;
    if (i < 0)
        return 0;
    *value = h->entries[i].value;
    return 1;
}

static int resp_header(const lg_resp_head_t *resp, h2o_iovec_t name, h2o_iovec_t *value, char *scratch)
{
    if (resp == NULL)
        return 0;
    if (h2o_memis(name.base, name.len, H2O_STRLIT(":status"))) {
        if (resp->status == 0)
            return 0;
        *value = h2o_iovec_init(scratch, (size_t)sprintf(scratch, "%d", resp->status));
        return 1;
    }
    return headers_first(&resp->headers, name, value);
}

typedef struct st_lg__fmt_value_t {
    h2o_iovec_t v;
    lg_format_value_kind_t kind;
} lg__fmt_value_t;

#define SCRATCH_SIZE 512

static lg_format_value_kind_t num(uint64_t n, char *scratch, h2o_iovec_t *out)
{
    *out = h2o_iovec_init(scratch, (size_t)sprintf(scratch, "%llu", (unsigned long long)n));
    return LG_FORMAT_VALUE_NUMBER;
}

static lg_format_value_kind_t str(h2o_iovec_t s, h2o_iovec_t *out)
{
    if (s.base == NULL || s.len == 0)
        return LG_FORMAT_VALUE_MISSING;
    *out = s;
    return LG_FORMAT_VALUE_STRING;
}

/* Envoy's UPSTREAM_TRANSPORT_FAILURE_REASON: spaces become '_' (a reason longer than the scratch is cut). */
static lg_format_value_kind_t str_no_spaces(h2o_iovec_t s, char *scratch, h2o_iovec_t *out)
{
    if (str(s, out) == LG_FORMAT_VALUE_MISSING)
        return LG_FORMAT_VALUE_MISSING;
    size_t n = s.len < SCRATCH_SIZE ? s.len : SCRATCH_SIZE;
    for (size_t i = 0; i != n; ++i)
        scratch[i] = s.base[i] == ' ' ? '_' : s.base[i];
    *out = h2o_iovec_init(scratch, n);
    return LG_FORMAT_VALUE_STRING;
}

static lg_format_value_kind_t since(uint64_t from, uint64_t to, char *scratch, h2o_iovec_t *out)
{
    if (from == 0 || to == 0 || to < from)
        return LG_FORMAT_VALUE_MISSING;
    return num((to - from) / 1000, scratch, out);
}

enum { ADDR_FULL, ADDR_IP, ADDR_PORT };

static lg_format_value_kind_t addr(const struct sockaddr_storage *ss, int form, char *scratch, h2o_iovec_t *out)
{
    const struct sockaddr *sa = (const struct sockaddr *)ss;
    if (ss->ss_family == 0)
        return LG_FORMAT_VALUE_MISSING;
    if (form == ADDR_PORT) {
        if (ss->ss_family != AF_INET && ss->ss_family != AF_INET6)
            return LG_FORMAT_VALUE_MISSING;
        return num(lg_address_port(sa), scratch, out);
    }
    size_t n = form == ADDR_FULL ? lg_address_format(sa, sizeof(*ss), scratch, SCRATCH_SIZE)
                                 : lg_address_format_ip(sa, scratch, SCRATCH_SIZE);
    *out = h2o_iovec_init(scratch, n);
    return LG_FORMAT_VALUE_STRING;
}

static lg_format_value_kind_t header_value(const lg__fmt_seg_t *seg, const lg_stream_info_t *si, char *scratch, h2o_iovec_t *out)
{
    int found = 0;
    switch (seg->op) {
    case OP_REQ:
    case OP_REQ_WITHOUT_QUERY:
        if (si->request != NULL) {
            found = lg_req_header_first(si->request, seg->text.base, seg->text.len, out) ||
                    (seg->alt.len != 0 && lg_req_header_first(si->request, seg->alt.base, seg->alt.len, out));
        }
        if (found && seg->op == OP_REQ_WITHOUT_QUERY) {
            const char *q = memchr(out->base, '?', out->len);
            if (q != NULL)
                out->len = (size_t)(q - out->base);
        }
        break;
    case OP_RESP:
        found = resp_header(si->response, seg->text, out, scratch) ||
                (seg->alt.len != 0 && resp_header(si->response, seg->alt, out, scratch));
        break;
    default: /* OP_TRAILER */
        found = headers_first(si->response_trailers, seg->text, out) ||
                (seg->alt.len != 0 && headers_first(si->response_trailers, seg->alt, out));
        break;
    }
    return found ? LG_FORMAT_VALUE_STRING : LG_FORMAT_VALUE_MISSING;
}

static lg_format_value_kind_t protocol(int p, h2o_iovec_t *out)
{
    switch (p) {
    case LG_HTTP_10:
        *out = LG_LIT("HTTP/1.0");
        break;
    case LG_HTTP_11:
        *out = LG_LIT("HTTP/1.1");
        break;
    case LG_HTTP_2:
        *out = LG_LIT("HTTP/2");
        break;
    default:
        return LG_FORMAT_VALUE_MISSING;
    }
    return LG_FORMAT_VALUE_STRING;
}

static int is_grpc_request(const lg_req_head_t *req)
{
    h2o_iovec_t ct;
    if (req == NULL || !h2o_memis(req->method.base, req->method.len, H2O_STRLIT("POST")) ||
        !lg_req_header_first(req, H2O_STRLIT("content-type"), &ct))
        return 0;
    static const char grpc[] = "application/grpc";
    size_t n = sizeof(grpc) - 1;
    return ct.len >= n && memcmp(ct.base, grpc, n) == 0 && (ct.len == n || ct.base[n] == '+');
}

int lg_format_grpc_status(const lg_stream_info_t *si, int allow_user_defined, int64_t *status)
{
    const lg_headers_t *sources[] = {si->response_trailers, si->response != NULL ? &si->response->headers : NULL};
    for (size_t i = 0; i != LG_ARRAY_SIZE(sources); ++i) {
        h2o_iovec_t v;
        if (!headers_first(sources[i], h2o_iovec_init(H2O_STRLIT("grpc-status")), &v))
            continue;
        int64_t n = 0;
        for (size_t j = 0; j != v.len && n >= 0; ++j)
            n = v.base[j] >= '0' && v.base[j] <= '9' && n < INT32_MAX ? n * 10 + (v.base[j] - '0') : -1;
        *status = v.len != 0 && n >= 0 && (allow_user_defined || n <= 16) ? n : -1;
        return 1;
    }
    static const struct {
        int http, grpc;
    } map[] = {{400, 13}, {401, 16}, {403, 7}, {404, 12}, {429, 14}, {502, 14}, {503, 14}, {504, 14}};
    if (si->response_code == 0)
        return 0;
    *status = 2; /* UNKNOWN */
    for (size_t i = 0; i != LG_ARRAY_SIZE(map); ++i)
        if (map[i].http == si->response_code)
            *status = map[i].grpc;
    return 1;
}

static lg_format_value_kind_t grpc_status_value(const lg__fmt_seg_t *seg, const lg_stream_info_t *si, char *scratch,
                                                h2o_iovec_t *out)
{
    static const char *const camel[] = {"OK",       "Canceled",       "Unknown",          "InvalidArgument",   "DeadlineExceeded",
                                        "NotFound", "AlreadyExists",  "PermissionDenied", "ResourceExhausted", "FailedPrecondition",
                                        "Aborted",  "OutOfRange",     "Unimplemented",    "Internal",          "Unavailable",
                                        "DataLoss", "Unauthenticated"};
    static const char *const snake[] = {
        "OK",        "CANCELLED",      "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
        "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
        "ABORTED",   "OUT_OF_RANGE",   "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
        "DATA_LOSS", "UNAUTHENTICATED"};
    int64_t status;
    if (!is_grpc_request(si->request) || !lg_format_grpc_status(si, 1, &status))
        return LG_FORMAT_VALUE_MISSING;
    if (seg->grpc_form == GRPC_FORM_NUMBER || status < 0 || status > 16) {
        /* Envoy's invalid code is uint64 -1 */
        *out = h2o_iovec_init(scratch, (size_t)sprintf(scratch, "%llu", (unsigned long long)(uint64_t)status));
        return seg->grpc_form == GRPC_FORM_NUMBER ? LG_FORMAT_VALUE_NUMBER : LG_FORMAT_VALUE_STRING;
    }
    const char *name = (seg->grpc_form == GRPC_FORM_SNAKE ? snake : camel)[status];
    *out = h2o_iovec_init(name, strlen(name));
    return LG_FORMAT_VALUE_STRING;
}

/* Produces one operator's value; `scratch` holds SCRATCH_SIZE bytes. */
static lg_format_value_kind_t eval_seg(const lg_format_t *f, const lg__fmt_seg_t *seg, const lg_stream_info_t *si, char *scratch,
                                       h2o_iovec_t *out)
{
    if (seg->op == OP_LITERAL)
        return str(seg->text, out);
    if (seg->op == OP_HOSTNAME)
        return str(h2o_iovec_init(f->hostname, strlen(f->hostname)), out);
    if (si == NULL)
        return LG_FORMAT_VALUE_MISSING;
    switch (seg->op) {
    case OP_START_TIME:
        if (si->start_wall_us == 0)
            return LG_FORMAT_VALUE_MISSING;
        *out = h2o_iovec_init(scratch, lg_format_time(seg->text.base, seg->text.len, si->start_wall_us, scratch, SCRATCH_SIZE));
        return LG_FORMAT_VALUE_STRING;
    case OP_REQ:
    case OP_RESP:
    case OP_TRAILER:
    case OP_REQ_WITHOUT_QUERY:
        return header_value(seg, si, scratch, out);
    case OP_PROTOCOL:
        return protocol(si->protocol, out);
    case OP_RESPONSE_CODE:
        return num((uint64_t)si->response_code, scratch, out);
    case OP_RESPONSE_CODE_DETAILS:
        return str(si->response_code_details, out);
    case OP_RESPONSE_FLAGS:
        *out = h2o_iovec_init(scratch, lg_response_flags_format(si->response_flags, scratch, SCRATCH_SIZE));
        return LG_FORMAT_VALUE_STRING;
    case OP_BYTES_RECEIVED:
        return num(si->bytes_received, scratch, out);
    case OP_BYTES_SENT:
        return num(si->bytes_sent, scratch, out);
    case OP_DURATION:
        return since(si->start_us, si->last_downstream_tx_us, scratch, out);
    case OP_REQUEST_DURATION:
        return since(si->start_us, si->last_downstream_rx_us, scratch, out);
    case OP_RESPONSE_DURATION:
        return since(si->start_us, si->first_upstream_rx_us, scratch, out);
    case OP_RESPONSE_TX_DURATION:
        return since(si->first_upstream_rx_us, si->last_downstream_tx_us, scratch, out);
    case OP_UPSTREAM_HOST:
        return addr(&si->upstream_remote, ADDR_FULL, scratch, out);
    case OP_UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT:
        return addr(&si->upstream_remote, ADDR_IP, scratch, out);
    case OP_UPSTREAM_REMOTE_PORT:
        return addr(&si->upstream_remote, ADDR_PORT, scratch, out);
    case OP_UPSTREAM_CLUSTER:
        return str(si->upstream_cluster, out);
    case OP_UPSTREAM_LOCAL_ADDRESS:
        return addr(&si->upstream_local, ADDR_FULL, scratch, out);
    case OP_UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT:
        return addr(&si->upstream_local, ADDR_IP, scratch, out);
    case OP_UPSTREAM_LOCAL_PORT:
        return addr(&si->upstream_local, ADDR_PORT, scratch, out);
    case OP_DOWNSTREAM_REMOTE_ADDRESS:
        return addr(&si->downstream_remote, ADDR_FULL, scratch, out);
    case OP_DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT:
        return addr(&si->downstream_remote, ADDR_IP, scratch, out);
    case OP_DOWNSTREAM_REMOTE_PORT:
        return addr(&si->downstream_remote, ADDR_PORT, scratch, out);
    case OP_DOWNSTREAM_DIRECT_REMOTE_ADDRESS:
        return addr(&si->downstream_direct_remote, ADDR_FULL, scratch, out);
    case OP_DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT:
        return addr(&si->downstream_direct_remote, ADDR_IP, scratch, out);
    case OP_DOWNSTREAM_DIRECT_REMOTE_PORT:
        return addr(&si->downstream_direct_remote, ADDR_PORT, scratch, out);
    case OP_DOWNSTREAM_LOCAL_ADDRESS:
        return addr(&si->downstream_local, ADDR_FULL, scratch, out);
    case OP_DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT:
        return addr(&si->downstream_local, ADDR_IP, scratch, out);
    case OP_DOWNSTREAM_LOCAL_PORT:
        return addr(&si->downstream_local, ADDR_PORT, scratch, out);
    case OP_REQUESTED_SERVER_NAME:
        return str(si->requested_server_name, out);
    case OP_ROUTE_NAME:
        return str(si->route_name, out);
    case OP_CONNECTION_ID:
        return num(si->connection_id, scratch, out);
    case OP_UPSTREAM_TRANSPORT_FAILURE_REASON:
        return str_no_spaces(si->upstream_transport_failure_reason, scratch, out);
    case OP_STREAM_ID:
        return str(si->request_id, out);
    case OP_GRPC_STATUS:
        return grpc_status_value(seg, si, scratch, out);
    default:
        return LG_FORMAT_VALUE_MISSING;
    }
}

/* Output that grows inside a pool or a strbuf (JSON-escaped when `json`). */
typedef struct st_lg__fmt_sink_t {
    h2o_mem_pool_t *pool;
    lg_strbuf_t *sb;
    char *base;
    size_t len, cap;
    int json;
} lg__fmt_sink_t;

/* Length of the valid UTF-8 sequence at s (1..4), or 0 if it is not one. */
static size_t utf8_seq_len(const unsigned char *s, size_t n)
{
    size_t len = s[0] < 0xc2 ? 0 : s[0] < 0xe0 ? 2 : s[0] < 0xf0 ? 3 : s[0] < 0xf5 ? 4 : 0;
    if (len == 0 || len > n)
        return 0;
    for (size_t i = 1; i != len; ++i)
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    if ((s[0] == 0xe0 && s[1] < 0xa0) || (s[0] == 0xed && s[1] > 0x9f) || (s[0] == 0xf0 && s[1] < 0x90) ||
        (s[0] == 0xf4 && s[1] > 0x8f))
        return 0; /* overlong, surrogate, or beyond U+10FFFF */
    return len;
}

/* Appends bytes as the inside of a JSON string. Bytes that are not UTF-8
 * become the code point of the same value (\u00XX), so the line always parses. */
static void json_escape(lg_strbuf_t *b, const char *p, size_t n)
{
    const unsigned char *s = (const unsigned char *)p;
    lg_strbuf_reserve(b, n + 2);
    for (size_t i = 0; i < n;) {
        unsigned char c = s[i];
        size_t run = i;
        while (run < n && s[run] >= 0x20 && s[run] < 0x7f && s[run] != '"' && s[run] != '\\')
            ++run;
        if (run != i) {
            lg_strbuf_append(b, p + i, run - i);
            i = run;
            continue;
        }
        size_t seq = c >= 0x80 ? utf8_seq_len(s + i, n - i) : 0;
        if (seq != 0) {
            lg_strbuf_append(b, p + i, seq);
            i += seq;
            continue;
        }
        static const char short_esc[] = {'\b', 'b', '\f', 'f', '\n', 'n', '\r', 'r', '\t', 't', '"', '"', '\\', '\\'};
        const char *e = NULL;
        for (size_t k = 0; k != sizeof(short_esc); k += 2)
            if (short_esc[k] == (char)c)
                e = short_esc + k + 1;
        if (e != NULL) {
            char esc[2] = {'\\', *e};
            lg_strbuf_append(b, esc, 2);
        } else {
            lg_strbuf_printf(b, "\\u%04x", c);
        }
        ++i;
    }
}

static void sink_append(lg__fmt_sink_t *s, const char *p, size_t n)
{
    if (s->sb != NULL) {
        if (s->json)
            json_escape(s->sb, p, n);
        else
            lg_strbuf_append(s->sb, p, n);
        return;
    }
    if (s->len + n + 1 > s->cap) {
        size_t cap = s->cap < 128 ? 128 : s->cap * 2;
        while (cap < s->len + n + 1)
            cap *= 2;
        char *nb = h2o_mem_alloc_pool(s->pool, cap);
        if (s->len != 0)
            memcpy(nb, s->base, s->len);
        s->base = nb;
        s->cap = cap;
    }
    memcpy(s->base + s->len, p, n);
    s->len += n;
}

static lg_format_value_kind_t eval_into(const lg_format_t *f, const lg_stream_info_t *si, lg__fmt_sink_t *sink)
{
    char scratch[SCRATCH_SIZE];
    lg_format_value_kind_t kind = LG_FORMAT_VALUE_STRING;
    for (size_t i = 0; i != f->n_segs; ++i) {
        const lg__fmt_seg_t *seg = &f->segs[i];
        h2o_iovec_t v = {NULL, 0};
        lg_format_value_kind_t k = eval_seg(f, seg, si, scratch, &v);
        if (k == LG_FORMAT_VALUE_MISSING) {
            if ((f->flags & LG_FORMAT_OMIT_EMPTY) == 0)
                sink_append(sink, "-", 1);
        } else {
            sink_append(sink, v.base, v.len < seg->max_len ? v.len : seg->max_len);
        }
        kind = f->n_segs == 1 ? k : LG_FORMAT_VALUE_STRING;
    }
    return kind;
}

lg_format_value_kind_t lg_format_eval_typed(const lg_format_t *f, const lg_stream_info_t *si, h2o_mem_pool_t *pool,
                                            h2o_iovec_t *out)
{
    if (lg_format_is_constant(f)) {
        *out = lg_format_constant(f);
        return LG_FORMAT_VALUE_STRING;
    }
    lg__fmt_sink_t sink = {pool, NULL, NULL, 0, 0, 0};
    lg_format_value_kind_t kind = eval_into(f, si, &sink);
    sink_append(&sink, "", 0);
    sink.base[sink.len] = '\0';
    *out = h2o_iovec_init(sink.base, sink.len);
    return kind;
}

h2o_iovec_t lg_format_eval(const lg_format_t *f, const lg_stream_info_t *si, h2o_mem_pool_t *pool)
{
    h2o_iovec_t out;
    lg_format_eval_typed(f, si, pool, &out);
    return out;
}

void lg_format_append(const lg_format_t *f, const lg_stream_info_t *si, lg_strbuf_t *out)
{
    lg__fmt_sink_t sink = {NULL, out, NULL, 0, 0, 0};
    lg_strbuf_reserve(out, 0);
    eval_into(f, si, &sink);
}

lg_format_value_kind_t lg_format_append_json(const lg_format_t *f, const lg_stream_info_t *si, int typed, lg_strbuf_t *out)
{
    lg__fmt_sink_t sink = {NULL, out, NULL, 0, 0, 1};
    if (f->n_segs == 1 && f->segs[0].op != OP_LITERAL) {
        char scratch[SCRATCH_SIZE];
        h2o_iovec_t v = {NULL, 0};
        lg_format_value_kind_t kind = eval_seg(f, f->segs, si, scratch, &v);
        if (kind == LG_FORMAT_VALUE_MISSING) {
            if (typed || (f->flags & LG_FORMAT_OMIT_EMPTY) != 0)
                return LG_FORMAT_VALUE_MISSING;
            v = h2o_iovec_init(H2O_STRLIT("-"));
        } else if (kind == LG_FORMAT_VALUE_NUMBER && typed) {
            lg_strbuf_append(out, v.base, v.len);
            return LG_FORMAT_VALUE_NUMBER;
        }
        lg_strbuf_append(out, "\"", 1);
        sink_append(&sink, v.base, v.len < f->segs[0].max_len ? v.len : f->segs[0].max_len);
        lg_strbuf_append(out, "\"", 1);
        return LG_FORMAT_VALUE_STRING;
    }
    lg_strbuf_append(out, "\"", 1);
    eval_into(f, si, &sink);
    lg_strbuf_append(out, "\"", 1);
    return LG_FORMAT_VALUE_STRING;
}

size_t lg_response_flags_format(uint32_t flags, char *buf, size_t cap)
{
#define LG__RF_STR(name, s) s,
    static const char *const names[] = {LG_RESPONSE_FLAGS(LG__RF_STR)};
#undef LG__RF_STR
    size_t w = 0;
    for (size_t i = 0; i != LG_RF__COUNT; ++i) {
        if ((flags & (UINT32_C(1) << i)) == 0)
            continue;
        if (w != 0)
            w = put(buf, cap, w, ",", 1);
        w = put(buf, cap, w, names[i], strlen(names[i]));
    }
    if (w == 0)
        w = put(buf, cap, w, "-", 1);
    if (cap != 0)
        buf[w] = '\0';
    return w;
}
