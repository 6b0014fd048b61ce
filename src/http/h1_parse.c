/*
 * HTTP/1.1 heads: request and response parsing with Envoy's validation
 * (BalsaParser with Envoy's HttpValidationPolicy, then Http1::ConnectionImpl and the
 * connection manager's own request checks), in Envoy's order so that the first
 * problem found gets Envoy's status and details.
 *
 * Where Envoy is lax in a way that lets two parsers disagree on where a message or a
 * field ends, this parser is strict instead and answers 400: obs-fold, whitespace
 * before a colon, a bare CR inside a line, userinfo in an absolute URL, more than one
 * Host. Everything else Envoy rejects (duplicate Content-Length even with equal
 * values, any Transfer-Encoding but exactly "chunked") is rejected the same way.
 * Bare LF line ends are accepted as Envoy does: heads are always re-serialized.
 */
#include <string.h>
#include <h2o/string_.h>
#include "legate/common.h"
#include "legate/h1.h"
#include "legate/http.h"
#include "legate/stats.h"

/* clang-format off */
const uint8_t lg_h1_char_class[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    2, 15, 10, 11, 15, 15, 15, 15, 14, 14, 15, 15, 14, 15, 15, 10,
    15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 14, 14, 10, 14, 10, 10,
    14, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15,
    15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 14, 10, 14, 11, 15,
    11, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15,
    15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 10, 11, 10, 15, 0,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
};
/* clang-format on */

/* Envoy's BalsaParser method list (used unless allow_custom_methods), the common
 * ones first. */
/* clang-format off */
#define METHOD(s) {s, sizeof(s) - 1}
static const struct {
    const char *name;
    size_t len;
} envoy_methods[] = {
    METHOD("GET"),     METHOD("POST"),       METHOD("PUT"),        METHOD("HEAD"),      METHOD("DELETE"),
    METHOD("OPTIONS"), METHOD("PATCH"),      METHOD("CONNECT"),    METHOD("TRACE"),     METHOD("ACL"),
    METHOD("BIND"),    METHOD("CHECKOUT"),   METHOD("COPY"),       METHOD("LINK"),      METHOD("LOCK"),
    METHOD("MERGE"),   METHOD("MKACTIVITY"), METHOD("MKCALENDAR"), METHOD("MKCOL"),     METHOD("MOVE"),
    METHOD("MSEARCH"), METHOD("NOTIFY"),     METHOD("PROPFIND"),   METHOD("PROPPATCH"), METHOD("PURGE"),
    METHOD("REBIND"),  METHOD("REPORT"),     METHOD("SEARCH"),     METHOD("SOURCE"),    METHOD("SUBSCRIBE"),
    METHOD("UNBIND"),  METHOD("UNLINK"),     METHOD("UNLOCK"),     METHOD("UNSUBSCRIBE"),
};
/* clang-format on */
#undef METHOD

/* Envoy: Utility::sanitizeConnectionHeader limits. */
#define MAX_CONNECTION_TOKENS 10
#define MAX_NOMINATED_TE_SIZE 256

/* Framing-relevant fields seen while reading the field lines of a head. */
typedef struct st_head_fields_t {
    h2o_iovec_t host;
    h2o_iovec_t content_length;
    h2o_iovec_t transfer_encoding;
    unsigned host_count, content_length_count, transfer_encoding_count, upgrade_count, connection_count;
    unsigned conn_close : 1, conn_keep_alive : 1, conn_upgrade : 1;
    unsigned expect_continue : 1;
} head_fields_t;

void lg_h1_limits_init(lg_h1_limits_t *lim)
{
    *lim = (lg_h1_limits_t){.max_headers_kb = 60, .max_headers_count = 100, .allow_absolute_url = 1};
}

int lg__h1_error(lg_h1_error_t *err, int status, const char *details, const char *msg)
{
    err->status = status;
    err->details = details;
    err->msg = msg;
    return -1;
}

int lg__h1_name_has_underscore(h2o_iovec_t name)
{
    return memchr(name.base, '_', name.len) != NULL;
}

static int is_ows(char c)
{
    return c == ' ' || c == '\t';
}

int lg__h1_parse_field_line(char *p, size_t len, h2o_iovec_t *name, h2o_iovec_t *value, lg_h1_error_t *err)
{
    size_t i = 0, v, e;
    if (is_ows(p[0]))
        return lg__h1_error(err, 400, LG_H1_DETAIL_CODEC_ERROR, "obs-fold (line folding) is not allowed");
    for (; i != len && lg_h1_is_tchar(p[i]); ++i)
        if ((unsigned)(p[i] - 'A') < 26)
            p[i] |= 0x20;
    if (i == len)
        return lg__h1_error(err, 400, LG_H1_DETAIL_CODEC_ERROR, "header line has no colon");
    if (p[i] != ':') {
        if (is_ows(p[i]))
            return lg__h1_error(err, 400, LG_H1_DETAIL_CODEC_ERROR, "whitespace between header name and colon");
        if (!lg_h1_is_value_char(p[i]))
            return lg__h1_error(err, 400, LG_H1_DETAIL_INVALID_CHARACTERS, "control character in header name");
        return lg__h1_error(err, 400, LG_H1_DETAIL_CODEC_ERROR, "invalid character in header name");
    }
    if (i == 0)
        return lg__h1_error(err, 400, LG_H1_DETAIL_CODEC_ERROR, "empty header name");
    for (v = i + 1; v != len && is_ows(p[v]); ++v)
        ;
    for (e = len; e != v && is_ows(p[e - 1]); --e)
        ;
    if (!lg_h1_value_is_valid(p + v, e - v))
        return lg__h1_error(err, 400, LG_H1_DETAIL_INVALID_CHARACTERS, "header value contains invalid chars");
    *name = h2o_iovec_init(p, i);
    *value = h2o_iovec_init(p + v, e - v);
    return 0;
}

int lg__h1_next_token(const char **cur, const char *end, h2o_iovec_t *tok)
{
    while (*cur != end) {
        const char *s = *cur, *c = memchr(s, ',', end - s), *e = c != NULL ? c : end;
        *cur = c != NULL ? c + 1 : end;
        while (s != e && is_ows(*s))
            ++s;
        while (e != s && is_ows(e[-1]))
            --e;
        if (e != s) {
            *tok = h2o_iovec_init(s, e - s);
            return 1;
        }
    }
    return 0;
}

static int list_has_token(h2o_iovec_t value, const char *lc, size_t lc_len)
{
    const char *cur = value.base;
    h2o_iovec_t tok;
    while (lg__h1_next_token(&cur, value.base + value.len, &tok))
        if (h2o_lcstris(tok.base, tok.len, lc, lc_len))
            return 1;
    return 0;
}

/* Parses a Content-Length value: digits only, no overflow (Balsa's rules). */
static int parse_content_length(h2o_iovec_t v, uint64_t *out)
{
    uint64_t n = 0;
    if (v.len == 0)
        return -1;
    for (size_t i = 0; i != v.len; ++i) {
        unsigned d = (unsigned char)v.base[i] - '0';
        if (d > 9 || n > (UINT64_MAX - d) / 10)
            return -1;
        n = n * 10 + d;
    }
    *out = n;
    return 0;
}

/* Finds the end of the head: just past the first empty line after `from`, or NULL. */
static const char *find_blank_line(const char *from, const char *end)
{
    const char *p;
    while (from != end && (p = memchr(from, '\n', end - from)) != NULL) {
        if (p + 1 != end && p[1] == '\n')
            return p + 2;
        if (end - p > 2 && p[1] == '\r' && p[2] == '\n')
            return p + 3;
        from = p + 1;
    }
    return NULL;
}

/*
 * Locates a whole head in buf. *start skips the empty lines a client may send before
 * the request line (Balsa skips them too); *end is just past the empty line ending the
 * head. Returns 0, -2 (incomplete) or -1 (too large / malformed). The size limit counts
 * from buf[0], as Balsa counts every byte it had to buffer.
 */
static int locate_head(const char *buf, size_t len, size_t last_len, const lg_h1_limits_t *lim, int skip_empty, size_t *start,
                       const char **end, lg_h1_error_t *err)
{
    size_t max = (size_t)lim->max_headers_kb * 1024, scan = len < max ? len : max, s = 0, from;
    while (skip_empty && s < scan && (buf[s] == '\r' || buf[s] == '\n')) {
        if (buf[s] == '\n') {
            ++s;
            continue;
        }
        if (s + 1 == scan)
            break; /* a CR at the end: its LF has not arrived yet */
        if (buf[s + 1] != '\n')
            return lg__h1_error(err, 400, LG_H1_DETAIL_CODEC_ERROR, "bare CR before the request line");
        s += 2;
    }
    from = last_len > 2 ? last_len - 2 : 0;
    if (from < s)
        from = s;
    if (from > scan)
        from = scan;
    *start = s;
    if (s == scan || (*end = find_blank_line(buf + from, buf + scan)) == NULL) {
        if (len >= max)
            return lg__h1_error(err, 431, LG_H1_DETAIL_HEADERS_TOO_LARGE, "headers size exceeds limit");
        return -2;
    }
    return 0;
}

/* Returns the first line p..(LF) without its line end, and moves *p past it. */
static h2o_iovec_t take_line(char **p, const char *end)
{
    char *lf = memchr(*p, '\n', end - *p), *s = *p;
    size_t n = lf - s;
    *p = lf + 1;
    if (n != 0 && s[n - 1] == '\r')
        --n;
    return h2o_iovec_init(s, n);
}

static int method_is_valid(h2o_iovec_t m, const lg_h1_limits_t *lim)
{
    if (lim->allow_custom_methods)
        return 1; /* already a non-empty token */
    for (size_t i = 0; i != LG_ARRAY_SIZE(envoy_methods); ++i)
        if (h2o_memis(m.base, m.len, envoy_methods[i].name, envoy_methods[i].len))
            return 1;
    return 0;
}

/* Parses "HTTP/d.d" exactly; sets *is_11. */
static int parse_version(h2o_iovec_t v, int *is_11)
{
    if (v.len != 8 || memcmp(v.base, "HTTP/", 5) != 0 || v.base[6] != '.' || (unsigned)(v.base[5] - '0') > 9 ||
        (unsigned)(v.base[7] - '0') > 9)
        return -1;
    *is_11 = v.base[5] == '1' && v.base[7] == '1';
    return 0;
}

/* Parses "METHOD SP target SP version". Whitespace runs (SP, HTAB) separate the
 * three parts and may trail, as RFC 9112 section 3 allows; a missing version is
 * HTTP/0.9, treated as HTTP/1.0 like Envoy does. */
static int parse_request_line(h2o_iovec_t line, const lg_h1_limits_t *lim, lg_req_head_t *head, h2o_iovec_t *target, int *is_11,
                              lg_h1_error_t *err)
{
    char *p = line.base, *end = line.base + line.len, *t;
    while (p != end && lg_h1_is_tchar(*p))
        ++p;
    head->method = h2o_iovec_init(line.base, p - line.base);
    if (head->method.len == 0 || p == end || !is_ows(*p) || !method_is_valid(head->method, lim))
        return lg__h1_error(err, 400, LG_H1_DETAIL_CODEC_ERROR, "HPE_INVALID_METHOD");
    while (p != end && is_ows(*p))
        ++p;
    for (t = p; p != end && (lg_h1_char_class[(unsigned char)*p] & LG_H1_CHAR_PATH) != 0; ++p)
        ;
    *target = h2o_iovec_init(t, p - t);
    if (target->len == 0 || (p != end && !is_ows(*p)))
        return lg__h1_error(err, 400, LG_H1_DETAIL_CODEC_ERROR, "HPE_INVALID_URL");
    while (p != end && is_ows(*p))
        ++p;
    while (end != p && is_ows(end[-1]))
        --end;
    *is_11 = 0;
    if (p != end && parse_version(h2o_iovec_init(p, end - p), is_11) != 0)
        return lg__h1_error(err, 400, LG_H1_DETAIL_CODEC_ERROR, "HPE_INVALID_VERSION");
    head->version = *is_11 ? LG_HTTP_11 : LG_HTTP_10;
    return 0;
}

/* Records what a field means for framing; returns 1 when the field is kept in headers. */
static int note_field(head_fields_t *f, h2o_iovec_t name, h2o_iovec_t value, int is_request)
{
    if (is_request && h2o_memis(name.base, name.len, H2O_STRLIT("host"))) {
        f->host = value;
        ++f->host_count;
        return 0;
    }
    if (h2o_memis(name.base, name.len, H2O_STRLIT("content-length"))) {
        f->content_length = value;
        ++f->content_length_count;
    } else if (h2o_memis(name.base, name.len, H2O_STRLIT("transfer-encoding"))) {
        f->transfer_encoding = value;
        ++f->transfer_encoding_count;
    } else if (h2o_memis(name.base, name.len, H2O_STRLIT("connection"))) {
        ++f->connection_count;
        f->conn_close |= list_has_token(value, H2O_STRLIT("close"));
        f->conn_keep_alive |= list_has_token(value, H2O_STRLIT("keep-alive"));
        f->conn_upgrade |= list_has_token(value, H2O_STRLIT("upgrade"));
    } else if (h2o_memis(name.base, name.len, H2O_STRLIT("upgrade"))) {
        ++f->upgrade_count;
    } else if (is_request && h2o_memis(name.base, name.len, H2O_STRLIT("expect"))) {
        f->expect_continue |= h2o_lcstris(value.base, value.len, H2O_STRLIT("100-continue"));
    }
    return 1;
}

/* Reads the field lines in [p, end) into headers, applying the count limit and (for
 * requests) the underscore action. */
static int parse_fields(h2o_mem_pool_t *pool, char *p, const char *end, const lg_h1_limits_t *lim, int is_request,
                        lg_headers_t *headers, head_fields_t *f, uint32_t *dropped, lg_h1_error_t *err)
{
    size_t count = 0, lines = 0;
    h2o_iovec_t line, name, value;
    for (const char *q = p; (q = memchr(q, '\n', end - q)) != NULL; ++q)
        ++lines;
    /* room for what a proxy adds (x-forwarded-proto, date, server ...) without regrowing the vector */
    h2o_vector_reserve(pool, headers, (lines < lim->max_headers_count ? lines : lim->max_headers_count) + 6);
    while ((line = take_line(&p, end)).len != 0) {
        if (lg__h1_parse_field_line(line.base, line.len, &name, &value, err) != 0)
            return -1;
        if (is_request && lim->headers_with_underscores_action != LG_H1_UNDERSCORES_ALLOW && lg__h1_name_has_underscore(name)) {
            /* Envoy's http1.* codec stats count both outcomes where they happen */
            if (lim->headers_with_underscores_action == LG_H1_UNDERSCORES_REJECT_REQUEST) {
                lg_stats_here_add(lg_stats_http1, LG_HTTP1_STAT_requests_rejected_with_underscores_in_headers, 1);
                return lg__h1_error(err, 400, LG_H1_DETAIL_UNEXPECTED_UNDERSCORE, "header name contains underscores");
            }
            lg_stats_here_add(lg_stats_http1, LG_HTTP1_STAT_dropped_headers_with_underscores, 1);
            ++*dropped;
            continue;
        }
        if (++count > lim->max_headers_count)
            return lg__h1_error(err, 431, LG_H1_DETAIL_TOO_MANY_HEADERS, "headers count exceeds limit");
        if (note_field(f, name, value, is_request))
            lg_headers_add(pool, headers, name, value);
    }
    return 0;
}

/* Removes every header whose name equals tok case-insensitively (names are lower-case). */
static void remove_ci(lg_headers_t *h, h2o_iovec_t tok)
{
    size_t w = 0;
    for (size_t r = 0; r != h->size; ++r)
        if (!h2o_lcstris(tok.base, tok.len, h->entries[r].name.base, h->entries[r].name.len))
            h->entries[w++] = h->entries[r];
    h->size = w;
}

/* Envoy ignores h2c upgrades: Upgrade and HTTP2-Settings go, and so do the upgrade and
 * http2-settings tokens of Connection. */
static void strip_h2c_upgrade(h2o_mem_pool_t *pool, lg_headers_t *h)
{
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (size_t i = 0; i != h->size; ++i)
        if (h2o_memis(h->entries[i].name.base, h->entries[i].name.len, H2O_STRLIT("connection")))
            cap += h->entries[i].value.len + 1;
    if (cap != 0)
        buf = h2o_mem_alloc_pool(pool, cap);
    for (size_t i = 0; i != h->size; ++i) {
        if (!h2o_memis(h->entries[i].name.base, h->entries[i].name.len, H2O_STRLIT("connection")))
            continue;
        const char *cur = h->entries[i].value.base;
        h2o_iovec_t tok;
        while (lg__h1_next_token(&cur, h->entries[i].value.base + h->entries[i].value.len, &tok)) {
            if (h2o_lcstris(tok.base, tok.len, H2O_STRLIT("upgrade")) ||
                h2o_lcstris(tok.base, tok.len, H2O_STRLIT("http2-settings")))
                continue;
            if (len != 0)
                buf[len++] = ',';
            memcpy(buf + len, tok.base, tok.len);
            len += tok.len;
        }
    }
    lg_headers_remove(h, H2O_STRLIT("upgrade"));
    lg_headers_remove(h, H2O_STRLIT("http2-settings"));
    lg_headers_remove(h, H2O_STRLIT("connection"));
    if (len != 0)
        lg_headers_add(pool, h, LG_LIT("connection"), h2o_iovec_init(buf, len));
}

/* Handles a TE header nominated by Connection: kept as "te: trailers" if it lists trailers. */
static int sanitize_nominated_te(lg_headers_t *h, lg_h1_error_t *err)
{
    ssize_t i = lg_headers_find(h, H2O_STRLIT("te"), 0);
    if (i < 0)
        return 0;
    if (h->entries[i].value.len >= MAX_NOMINATED_TE_SIZE)
        return lg__h1_error(err, 400, LG_H1_DETAIL_CONNECTION_HEADER, "TE header nominated by Connection is too long");
    if (!list_has_token(h->entries[i].value, H2O_STRLIT("trailers"))) {
        lg_headers_remove(h, H2O_STRLIT("te"));
        return 0;
    }
    h->entries[i].value = LG_LIT("trailers");
    size_t w = i + 1;
    for (size_t r = i + 1; r != h->size; ++r)
        if (!h2o_memis(h->entries[r].name.base, h->entries[r].name.len, H2O_STRLIT("te")))
            h->entries[w++] = h->entries[r];
    h->size = w;
    return 0;
}

static int connection_token_is_kept(h2o_iovec_t tok)
{
    static const char *const kept[] = {"close",      "keep-alive",     "upgrade",           "http2-settings",
                                       "connection", "content-length", "transfer-encoding", "host"};
    for (size_t i = 0; i != LG_ARRAY_SIZE(kept); ++i)
        if (h2o_lcstris(tok.base, tok.len, kept[i], strlen(kept[i])))
            return 1;
    return 0;
}

/*
 * Envoy's Utility::sanitizeConnectionHeader for non-upgrade requests: 10 or more tokens
 * is a 400; each nominated header is removed (TE kept as "trailers" when it lists it).
 * Unlike Envoy, Content-Length and Transfer-Encoding are never removed this way so that
 * the forwarded head always describes the body that was framed.
 */
static int sanitize_connection(lg_headers_t *h, lg_h1_error_t *err)
{
    h2o_iovec_t tokens[MAX_CONNECTION_TOKENS], tok;
    size_t ntokens = 0;
    for (size_t i = 0; i != h->size; ++i) {
        if (!h2o_memis(h->entries[i].name.base, h->entries[i].name.len, H2O_STRLIT("connection")))
            continue;
        const char *cur = h->entries[i].value.base;
        while (lg__h1_next_token(&cur, h->entries[i].value.base + h->entries[i].value.len, &tok)) {
            if (ntokens == MAX_CONNECTION_TOKENS - 1) /* Envoy refuses 10 or more */
                return lg__h1_error(err, 400, LG_H1_DETAIL_CONNECTION_HEADER, "too many nominated headers in Connection");
            tokens[ntokens++] = tok;
        }
    }
    /* Tokens point into the input, so removing entries below does not move them. */
    for (size_t i = 0; i != ntokens; ++i) {
        if (connection_token_is_kept(tokens[i]))
            continue;
        if (h2o_lcstris(tokens[i].base, tokens[i].len, H2O_STRLIT("te"))) {
            if (sanitize_nominated_te(h, err) != 0)
                return -1;
        } else {
            remove_ci(h, tokens[i]);
        }
    }
    return 0;
}

/* Validates host[:port] of an absolute URL or a CONNECT target (http_parser's rules,
 * minus userinfo which is refused). */
static int authority_form_is_valid(h2o_iovec_t a, int require_port)
{
    const char *p = a.base, *end = a.base + a.len, *host_end;
    if (a.len == 0)
        return 0;
    if (*p == '[') {
        if ((host_end = memchr(p, ']', a.len)) == NULL || host_end == p + 1)
            return 0;
        for (const char *q = p + 1; q != host_end; ++q)
            if (!(('0' <= *q && *q <= '9') || ('a' <= (*q | 0x20) && (*q | 0x20) <= 'f') || *q == ':' || *q == '.'))
                return 0;
        p = host_end + 1;
    } else {
        for (host_end = p; host_end != end && *host_end != ':'; ++host_end)
            if ((lg_h1_char_class[(unsigned char)*host_end] & LG_H1_CHAR_HOST) == 0 || *host_end == '@' || *host_end == '[' ||
                *host_end == ']')
                return 0;
        if (host_end == p)
            return 0;
        p = host_end;
    }
    if (p == end)
        return !require_port;
    if (*p++ != ':' || p == end || end - p > 5)
        return 0;
    unsigned port = 0;
    for (; p != end; ++p) {
        if ((unsigned)(*p - '0') > 9)
            return 0;
        port = port * 10 + (*p - '0');
    }
    return port <= 65535;
}

static int is_scheme_char(char c)
{
    return ('a' <= (c | 0x20) && (c | 0x20) <= 'z') || ('0' <= c && c <= '9') || c == '+' || c == '-' || c == '.';
}

/* Splits an absolute-form target into scheme, authority and path (Envoy's handlePath
 * with Utility::Url). The scheme is lower-cased in place. */
static int parse_absolute_url(h2o_mem_pool_t *pool, h2o_iovec_t t, lg_req_head_t *head, lg_h1_error_t *err)
{
    char *p = t.base, *end = t.base + t.len, *a;
    if (p == end || !(('a' <= (*p | 0x20) && (*p | 0x20) <= 'z')))
        return lg__h1_error(err, 400, LG_H1_DETAIL_INVALID_URL, "invalid url in request line");
    for (; p != end && is_scheme_char(*p); ++p)
        *p = (char)h2o_tolower(*p);
    if (end - p < 3 || memcmp(p, "://", 3) != 0)
        return lg__h1_error(err, 400, LG_H1_DETAIL_INVALID_URL, "invalid url in request line");
    head->scheme = h2o_iovec_init(t.base, p - t.base);
    for (a = p += 3; p != end && *p != '/' && *p != '?' && *p != '#'; ++p)
        ;
    head->authority = h2o_iovec_init(a, p - a);
    if (!authority_form_is_valid(head->authority, 0))
        return lg__h1_error(err, 400, LG_H1_DETAIL_INVALID_URL, "invalid url in request line");
    if (!h2o_memis(head->scheme.base, head->scheme.len, H2O_STRLIT("http")) &&
        !h2o_memis(head->scheme.base, head->scheme.len, H2O_STRLIT("https")))
        return lg__h1_error(err, 400, LG_H1_DETAIL_INVALID_SCHEME, "invalid scheme");
    if (p == end) {
        head->path = LG_LIT("/");
    } else if (*p != '/') {
        char *path = h2o_mem_alloc_pool(pool, end - p + 1);
        path[0] = '/';
        memcpy(path + 1, p, end - p);
        head->path = h2o_iovec_init(path, end - p + 1);
    } else {
        head->path = h2o_iovec_init(p, end - p);
    }
    return 0;
}

/* Sets path, or authority (and scheme) from the request target. *from_url tells
 * whether the authority came from the target, in which case Host is ignored. */
static int apply_target(h2o_mem_pool_t *pool, h2o_iovec_t t, int is_connect, const lg_h1_limits_t *lim, lg_req_head_t *head,
                        int *from_url, lg_h1_error_t *err)
{
    int is_options = h2o_memis(head->method.base, head->method.len, H2O_STRLIT("OPTIONS"));
    *from_url = 0;
    if (is_connect) {
        if (!authority_form_is_valid(t, 1))
            return lg__h1_error(err, 400, LG_H1_DETAIL_INVALID_URL, "invalid url in request line");
        head->authority = t;
        *from_url = 1;
        return 0;
    }
    if (t.base[0] == '/' || (is_options && t.len == 1 && t.base[0] == '*') || !lim->allow_absolute_url) {
        head->path = t;
        return 0;
    }
    *from_url = 1;
    return parse_absolute_url(pool, t, head, err);
}

static int authority_chars_are_valid(h2o_iovec_t a)
{
    for (size_t i = 0; i != a.len; ++i)
        if ((lg_h1_char_class[(unsigned char)a.base[i]] & LG_H1_CHAR_HOST) == 0)
            return 0;
    return 1;
}

/* Framing checks shared by requests and responses (Envoy's onHeadersCompleteImpl after
 * Balsa's Content-Length checks). *chunked is set when the body is chunked. */
static int check_framing(lg_headers_t *h, head_fields_t *f, const lg_h1_limits_t *lim, int is_connect, int status, int *chunked,
                         uint64_t *cl, lg_h1_error_t *err)
{
    int cl_valid = 0;
    *chunked = f->transfer_encoding_count == 1 && h2o_lcstris(f->transfer_encoding.base, f->transfer_encoding.len, "chunked", 7);
    if (f->content_length_count > 1)
        return lg__h1_error(err, status ? status : 400, LG_H1_DETAIL_CODEC_ERROR, "HPE_UNEXPECTED_CONTENT_LENGTH");
    if (f->content_length_count != 0) {
        cl_valid = parse_content_length(f->content_length, cl) == 0;
        if (!cl_valid && f->transfer_encoding_count == 0)
            return lg__h1_error(err, status ? status : 400, LG_H1_DETAIL_CODEC_ERROR, "invalid content-length");
    }
    if (is_connect && f->content_length_count != 0) {
        if (!h2o_memis(f->content_length.base, f->content_length.len, H2O_STRLIT("0")))
            return lg__h1_error(err, 400, LG_H1_DETAIL_BODY_DISALLOWED, "unsupported content length");
        lg_headers_remove(h, H2O_STRLIT("content-length"));
        f->content_length_count = 0;
    }
    if (f->transfer_encoding_count != 0) {
        if (f->content_length_count != 0) {
            if (!(*chunked && lim->allow_chunked_length))
                return lg__h1_error(err, status ? status : 400, LG_H1_DETAIL_CHUNKED_CONTENT_LENGTH,
                                    "both 'Content-Length' and 'Transfer-Encoding' are set");
            lg_headers_remove(h, H2O_STRLIT("content-length"));
            f->content_length_count = 0;
        }
        if (!*chunked || is_connect)
            return lg__h1_error(err, status ? status : 501, LG_H1_DETAIL_INVALID_TRANSFER_ENCODING,
                                "unsupported transfer encoding");
    }
    if (f->content_length_count == 0)
        *cl = 0;
    return 0;
}

/* Connection management, request and response alike. */
static int keeps_alive(const head_fields_t *f, int is_11)
{
    if (f->conn_close)
        return 0;
    return is_11 || f->conn_keep_alive;
}

/* The checks Envoy runs once the request head is complete, in Envoy's order. */
static int finish_request(h2o_mem_pool_t *pool, h2o_iovec_t target, int is_11, const lg_h1_limits_t *lim, lg_req_head_t *head,
                          head_fields_t *f, lg_h1_msg_info_t *info, lg_h1_error_t *err)
{
    int is_connect = h2o_memis(head->method.base, head->method.len, H2O_STRLIT("CONNECT")), chunked, from_url;
    int upgrade = !is_connect && f->upgrade_count != 0 && f->conn_upgrade;
    uint64_t cl = 0;

    if (upgrade && h2o_lcstris(lg_headers_get(&head->headers, H2O_STRLIT("upgrade")).base,
                               lg_headers_get(&head->headers, H2O_STRLIT("upgrade")).len, H2O_STRLIT("h2c"))) {
        strip_h2c_upgrade(pool, &head->headers);
        upgrade = 0;
    }
    if (check_framing(&head->headers, f, lim, is_connect, 0, &chunked, &cl, err) != 0)
        return -1;
    if (!upgrade && !is_connect && f->connection_count != 0 && sanitize_connection(&head->headers, err) != 0)
        return -1;
    if (apply_target(pool, target, is_connect, lim, head, &from_url, err) != 0)
        return -1;
    if (!is_11 && !lim->accept_http_10)
        return lg__h1_error(err, 426, LG_H1_DETAIL_LOW_VERSION, "Upgrade required for HTTP/1.0 or HTTP/0.9");
    if (f->host_count > 1)
        return lg__h1_error(err, 400, LG_H1_DETAIL_INVALID_AUTHORITY, "more than one Host header");
    if (!from_url) {
        if (f->host_count != 0)
            head->authority = f->host;
        else if (!is_11 && lim->default_host_for_http_10.len != 0)
            head->authority = lim->default_host_for_http_10;
        else
            return lg__h1_error(err, 400, LG_H1_DETAIL_MISSING_HOST, "missing Host header");
    }
    if (!authority_chars_are_valid(head->authority))
        return lg__h1_error(err, 400, LG_H1_DETAIL_INVALID_AUTHORITY, "invalid Host header");

    info->is_connect = is_connect;
    info->is_head = h2o_memis(head->method.base, head->method.len, H2O_STRLIT("HEAD"));
    info->upgrade = upgrade || is_connect;
    info->expect_100_continue = f->expect_continue;
    info->content_length = cl;
    info->body = info->upgrade ? LG_H1_BODY_TUNNEL
                 : chunked     ? LG_H1_BODY_CHUNKED
                 : cl != 0     ? LG_H1_BODY_CONTENT_LENGTH
                               : LG_H1_BODY_NONE;
    /* RFC 9112 6.1: Transfer-Encoding in an HTTP/1.0 request is faulty framing; close after it. */
    info->keep_alive = !info->upgrade && keeps_alive(f, is_11) && !(!is_11 && f->transfer_encoding_count != 0);
    info->close_asked = !keeps_alive(f, is_11);
    return 0;
}

ssize_t lg_h1_parse_request(h2o_mem_pool_t *pool, char *buf, size_t len, size_t last_len, const lg_h1_limits_t *lim,
                            lg_req_head_t *head, lg_h1_msg_info_t *info, lg_h1_error_t *err)
{
    size_t start;
    const char *end;
    h2o_iovec_t target;
    head_fields_t f = {{NULL}};
    int is_11, ret;

    if ((ret = locate_head(buf, len, last_len, lim, 1, &start, &end, err)) != 0)
        return ret;
    *head = (lg_req_head_t){{NULL}};
    *info = (lg_h1_msg_info_t){0};
    char *p = buf + start;
    if (parse_request_line(take_line(&p, end), lim, head, &target, &is_11, err) != 0)
        return -1;
    if (parse_fields(pool, p, end, lim, 1, &head->headers, &f, &info->dropped_headers, err) != 0)
        return -1;
    if (finish_request(pool, target, is_11, lim, head, &f, info, err) != 0)
        return -1;
    return end - buf;
}

/* Parses "HTTP/d.d SP 3DIGIT [SP reason]". */
static int parse_status_line(h2o_iovec_t line, lg_resp_head_t *head, int *is_11, lg_h1_error_t *err)
{
    const char *p = line.base + 8, *end = line.base + line.len;
    if (line.len < 8 || parse_version(h2o_iovec_init(line.base, 8), is_11) != 0)
        return lg__h1_error(err, 502, LG_H1_DETAIL_CODEC_ERROR, "HPE_INVALID_VERSION");
    head->version = *is_11 ? LG_HTTP_11 : LG_HTTP_10;
    if (p == end || !is_ows(*p))
        return lg__h1_error(err, 502, LG_H1_DETAIL_CODEC_ERROR, "HPE_INVALID_STATUS");
    while (p != end && is_ows(*p))
        ++p;
    if (end - p < 3 || (unsigned)(p[0] - '1') > 8 || (unsigned)(p[1] - '0') > 9 || (unsigned)(p[2] - '0') > 9 ||
        (end - p > 3 && !is_ows(p[3])))
        return lg__h1_error(err, 502, LG_H1_DETAIL_CODEC_ERROR, "HPE_INVALID_STATUS");
    head->status = (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
    for (p += 3; p != end; ++p)
        if (!lg_h1_is_value_char(*p))
            return lg__h1_error(err, 502, LG_H1_DETAIL_CODEC_ERROR, "HPE_INVALID_STATUS");
    return 0;
}

/* Envoy's ClientConnectionImpl checks and Balsa's body rules for a response. */
static int finish_response(const lg_h1_limits_t *lim, unsigned req_flags, int is_11, lg_resp_head_t *head, head_fields_t *f,
                           lg_h1_msg_info_t *info, lg_h1_error_t *err)
{
    int status = head->status, chunked;
    uint64_t cl = 0;

    if (check_framing(&head->headers, f, lim, 0, 502, &chunked, &cl, err) != 0)
        return -1;
    if (status < 200 || status == 204) {
        if (f->transfer_encoding_count != 0)
            return lg__h1_error(err, 502, LG_H1_DETAIL_TRANSFER_ENCODING_NOT_ALLOWED,
                                "transfer encoding not allowed in 1xx or 204");
        if (f->content_length_count != 0) {
            if (cl != 0)
                return lg__h1_error(err, 502, LG_H1_DETAIL_CONTENT_LENGTH_NOT_ALLOWED, "content length not allowed in 1xx or 204");
            lg_headers_remove(&head->headers, H2O_STRLIT("content-length"));
        }
    }
    info->upgrade = status == 101 && (req_flags & LG_H1_REQ_UPGRADE) != 0;
    info->is_connect = (req_flags & LG_H1_REQ_CONNECT) != 0;
    info->is_head = (req_flags & LG_H1_REQ_HEAD) != 0;
    info->is_interim = status < 200 && status != 101;
    info->content_length = cl;
    if (info->upgrade || (info->is_connect && status >= 200 && status < 300))
        info->body = LG_H1_BODY_TUNNEL;
    else if (status < 200 || status == 204 || status == 304 || info->is_head)
        info->body = LG_H1_BODY_NONE;
    else if (chunked)
        info->body = LG_H1_BODY_CHUNKED;
    else if (f->content_length_count != 0)
        info->body = cl != 0 ? LG_H1_BODY_CONTENT_LENGTH : LG_H1_BODY_NONE;
    else
        info->body = LG_H1_BODY_UNTIL_CLOSE;
    info->keep_alive = info->body != LG_H1_BODY_TUNNEL && info->body != LG_H1_BODY_UNTIL_CLOSE && keeps_alive(f, is_11);
    return 0;
}

ssize_t lg_h1_parse_response(h2o_mem_pool_t *pool, char *buf, size_t len, size_t last_len, const lg_h1_limits_t *lim,
                             unsigned req_flags, lg_resp_head_t *head, lg_h1_msg_info_t *info, lg_h1_error_t *err)
{
    size_t start;
    const char *end;
    head_fields_t f = {{NULL}};
    int is_11, ret;

    if (len != 0 && buf[0] != 'H')
        return lg__h1_error(err, 502, LG_H1_DETAIL_CODEC_ERROR, "HPE_INVALID_CONSTANT");
    if ((ret = locate_head(buf, len, last_len, lim, 0, &start, &end, err)) != 0) {
        if (ret == -1)
            err->status = 502;
        return ret;
    }
    *head = (lg_resp_head_t){0};
    *info = (lg_h1_msg_info_t){0};
    char *p = buf;
    if (parse_status_line(take_line(&p, end), head, &is_11, err) != 0)
        return -1;
    if (parse_fields(pool, p, end, lim, 0, &head->headers, &f, &info->dropped_headers, err) != 0) {
        err->status = 502;
        return -1;
    }
    if (finish_response(lim, req_flags, is_11, head, &f, info, err) != 0)
        return -1;
    return end - buf;
}
