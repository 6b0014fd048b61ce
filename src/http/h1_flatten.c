/*
 * HTTP/1.1 serialization: heads into one pool buffer each, chunk framing as small
 * pieces for writev (body bytes are never copied), and the header hygiene a proxy
 * applies before forwarding. Every byte that goes out is checked so that a filter or
 * an h2 peer cannot inject CR/LF into an HTTP/1 head.
 */
#include <string.h>
#include <h2o/string_.h>
#include "legate/common.h"
#include "legate/h1.h"
#include "legate/http.h"

unsigned lg_h1_encode_framing(const lg_h1_encode_ctx_t *c)
{
    int is_response = c->status != 0;
    int to_connect = is_response && c->is_connect && c->status < 300; /* Envoy drops CONNECT handling on >= 300 */
    unsigned flags = 0;

    /* Requests: CONNECT and upgrades disable chunk encoding (RequestEncoderImpl). */
    if (c->has_content_length || (!is_response && (c->is_connect || c->is_upgrade)))
        return 0;
    if (is_response && (c->status < 200 || c->status == 204 || c->status == 304))
        return 0;
    if (c->end_stream && !c->is_head_response) {
        if ((!is_response || c->status != 204) && !(!is_response && c->is_bodiless_method))
            return LG_H1_ADD_CONTENT_LENGTH_ZERO;
        return 0;
    }
    if (c->is_http10)
        return 0;
    if (!to_connect)
        flags |= LG_H1_ADD_CHUNKED_TE;
    if (!c->is_upgrade && !c->is_head_response && !to_connect)
        flags |= LG_H1_CHUNK_BODY;
    return flags;
}

/* Bytes allowed in a request target or an authority sent on the wire: no whitespace,
 * no control bytes (obs-text is passed through as Envoy does). */
static int is_wire_token(h2o_iovec_t v, int allow_empty)
{
    if (v.len == 0)
        return allow_empty;
    for (size_t i = 0; i != v.len; ++i) {
        unsigned char c = (unsigned char)v.base[i];
        if (c <= 0x20 || c == 0x7f)
            return 0;
    }
    return 1;
}

static int is_token(h2o_iovec_t v)
{
    if (v.len == 0)
        return 0;
    for (size_t i = 0; i != v.len; ++i)
        if (!lg_h1_is_tchar(v.base[i]))
            return 0;
    return 1;
}

/* Pseudo-headers never go out; a request's host line is written from `authority`. The
 * codec owns the framing: Transfer-Encoding is only ever written from `flags`, and a
 * Content-Length is dropped when `flags` frame the body otherwise, so that no head
 * leaves with two framings. Names are lower-case: dispatch on the first byte. */
static int header_is_sent(const lg_header_t *h, int is_request, unsigned flags)
{
    if (h->name.len == 0)
        return 1;
    switch (h->name.base[0]) {
    case ':':
        return 0;
    case 'h':
        return !(is_request && h2o_memis(h->name.base, h->name.len, H2O_STRLIT("host")));
    case 't':
        return !h2o_memis(h->name.base, h->name.len, H2O_STRLIT("transfer-encoding"));
    case 'c':
        return !((flags & (LG_H1_ADD_CHUNKED_TE | LG_H1_ADD_CONTENT_LENGTH_ZERO)) != 0 &&
                 h2o_memis(h->name.base, h->name.len, H2O_STRLIT("content-length")));
    default:
        return 1;
    }
}

/* Validates the headers that will be sent and returns their serialized size, or -1. */
static ssize_t fields_size(const lg_headers_t *headers, int is_request, unsigned flags)
{
    size_t n = 0;
    for (size_t i = 0; i != headers->size; ++i) {
        const lg_header_t *h = headers->entries + i;
        if (!header_is_sent(h, is_request, flags))
            continue;
        if (!is_token(h->name) || !lg_h1_value_is_valid(h->value.base, h->value.len))
            return -1;
        n += h->name.len + h->value.len + 4;
    }
    return (ssize_t)n;
}

static char *append(char *p, const void *s, size_t n)
{
    memcpy(p, s, n);
    return p + n;
}

static char *append_field(char *p, h2o_iovec_t name, h2o_iovec_t value)
{
    p = append(p, name.base, name.len);
    p = append(p, ": ", 2);
    p = append(p, value.base, value.len);
    return append(p, "\r\n", 2);
}

#define FRAMING_MAX (sizeof("transfer-encoding: chunked\r\ncontent-length: 0\r\n") - 1)

/* Writes the headers, the framing headers of `flags` and the final CRLF. */
static char *append_fields_and_end(char *p, const lg_headers_t *headers, int is_request, unsigned flags)
{
    for (size_t i = 0; i != headers->size; ++i)
        if (header_is_sent(headers->entries + i, is_request, flags))
            p = append_field(p, headers->entries[i].name, headers->entries[i].value);
    if ((flags & LG_H1_ADD_CHUNKED_TE) != 0)
        p = append(p, H2O_STRLIT("transfer-encoding: chunked\r\n"));
    if ((flags & LG_H1_ADD_CONTENT_LENGTH_ZERO) != 0)
        p = append(p, H2O_STRLIT("content-length: 0\r\n"));
    return append(p, "\r\n", 2);
}

int lg_h1_flatten_request_head(h2o_mem_pool_t *pool, const lg_req_head_t *head, unsigned flags, h2o_iovec_t *out)
{
    int is_connect = h2o_memis(head->method.base, head->method.len, H2O_STRLIT("CONNECT"));
    int absolute = (flags & LG_H1_ABSOLUTE_URL) != 0 && !is_connect;
    ssize_t fields = fields_size(&head->headers, 1, flags);
    h2o_iovec_t target = is_connect ? head->authority : head->path;

    if (fields < 0 || !is_token(head->method) || !is_wire_token(target, 0) || !is_wire_token(head->authority, !is_connect) ||
        (absolute && !is_token(head->scheme)))
        return -1;
    size_t size = head->method.len + 1 + target.len + sizeof(" HTTP/1.1\r\nhost: \r\n") - 1 + head->authority.len + fields +
                  FRAMING_MAX + 2 + (absolute ? head->scheme.len + 3 + head->authority.len : 0);
    char *buf = h2o_mem_alloc_pool(pool, size), *p = buf;
    p = append(p, head->method.base, head->method.len);
    p = append(p, " ", 1);
    if (absolute) {
        p = append(p, head->scheme.base, head->scheme.len);
        p = append(p, "://", 3);
        p = append(p, head->authority.base, head->authority.len);
    }
    p = append(p, target.base, target.len);
    p = append(p, H2O_STRLIT(" HTTP/1.1\r\n"));
    p = append_field(p, LG_LIT("host"), head->authority);
    p = append_fields_and_end(p, &head->headers, 1, flags);
    *out = h2o_iovec_init(buf, p - buf);
    return 0;
}

int lg_h1_flatten_response_head(h2o_mem_pool_t *pool, const lg_resp_head_t *head, unsigned flags, h2o_iovec_t *out)
{
    ssize_t fields = fields_size(&head->headers, 0, flags);
    const char *reason = lg_h1_reason_phrase(head->status);
    if (fields < 0 || head->status < 100 || head->status > 999)
        return -1;
    size_t reason_len = strlen(reason), size = sizeof("HTTP/1.1 200 \r\n") - 1 + reason_len + fields + FRAMING_MAX + 2;
    char *buf = h2o_mem_alloc_pool(pool, size), *p = buf;
    p = append(p, head->version == LG_HTTP_10 ? "HTTP/1.0 " : "HTTP/1.1 ", 9);
    *p++ = (char)('0' + head->status / 100);
    *p++ = (char)('0' + head->status / 10 % 10);
    *p++ = (char)('0' + head->status % 10);
    *p++ = ' ';
    p = append(p, reason, reason_len);
    p = append(p, "\r\n", 2);
    p = append_fields_and_end(p, &head->headers, 0, flags);
    *out = h2o_iovec_init(buf, p - buf);
    return 0;
}

size_t lg_h1_chunk_header(char buf[LG_H1_CHUNK_HEADER_MAX], size_t len)
{
    char digits[sizeof(size_t) * 2];
    size_t n = 0;
    do {
        digits[n++] = "0123456789abcdef"[len & 0xf];
        len >>= 4;
    } while (len != 0);
    for (size_t i = 0; i != n; ++i)
        buf[i] = digits[n - 1 - i];
    buf[n] = '\r';
    buf[n + 1] = '\n';
    buf[n + 2] = '\0';
    return n + 2;
}

/* Framing fields are not forwarded as trailers (RFC 9110 section 6.5.1): a lax parser
 * downstream might merge them into the head. */
#define TRAILER_FLAGS LG_H1_ADD_CHUNKED_TE

int lg_h1_flatten_last_chunk(h2o_mem_pool_t *pool, const lg_headers_t *trailers, h2o_iovec_t *out)
{
    ssize_t fields = trailers != NULL ? fields_size(trailers, 0, TRAILER_FLAGS) : 0;
    if (fields < 0)
        return -1;
    char *buf = h2o_mem_alloc_pool(pool, fields + 5), *p = buf;
    p = append(p, "0\r\n", 3);
    if (trailers != NULL)
        for (size_t i = 0; i != trailers->size; ++i)
            if (header_is_sent(trailers->entries + i, 0, TRAILER_FLAGS))
                p = append_field(p, trailers->entries[i].name, trailers->entries[i].value);
    p = append(p, "\r\n", 2);
    *out = h2o_iovec_init(buf, p - buf);
    return 0;
}

const char *lg_h1_reason_phrase(int status)
{
    switch (status) {
    /* clang-format off */
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 203: return "Non-Authoritative Information";
    case 204: return "No Content";
    case 205: return "Reset Content";
    case 206: return "Partial Content";
    case 207: return "Multi-Status";
    case 208: return "Already Reported";
    case 226: return "IM Used";
    case 300: return "Multiple Choices";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 305: return "Use Proxy";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 402: return "Payment Required";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 407: return "Proxy Authentication Required";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Payload Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 416: return "Range Not Satisfiable";
    case 417: return "Expectation Failed";
    case 421: return "Misdirected Request";
    case 422: return "Unprocessable Entity";
    case 423: return "Locked";
    case 424: return "Failed Dependency";
    case 426: return "Upgrade Required";
    case 428: return "Precondition Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    case 506: return "Variant Also Negotiates";
    case 507: return "Insufficient Storage";
    case 508: return "Loop Detected";
    case 510: return "Not Extended";
    case 511: return "Network Authentication Required";
    /* clang-format on */
    default:
        return "Unknown";
    }
}

int lg_h1_is_hop_by_hop(h2o_iovec_t name)
{
    switch (name.len) {
    case 2:
        return memcmp(name.base, "te", 2) == 0;
    case 7:
        return memcmp(name.base, "upgrade", 7) == 0;
    case 10:
        return memcmp(name.base, "connection", 10) == 0 || memcmp(name.base, "keep-alive", 10) == 0;
    case 16:
        return memcmp(name.base, "proxy-connection", 16) == 0;
    case 17:
        return memcmp(name.base, "transfer-encoding", 17) == 0;
    default:
        return 0;
    }
}

/* Whether a header nominated by Connection is left to the fixed rules below (te,
 * upgrade) or kept: Content-Length must describe the body that is forwarded. */
static int nominated_is_exempt(h2o_iovec_t tok)
{
    return h2o_lcstris(tok.base, tok.len, H2O_STRLIT("te")) || h2o_lcstris(tok.base, tok.len, H2O_STRLIT("upgrade")) ||
           h2o_lcstris(tok.base, tok.len, H2O_STRLIT("content-length")) || h2o_lcstris(tok.base, tok.len, H2O_STRLIT("host"));
}

/* Marks (by emptying the name) every header nominated by a Connection header. */
static void mark_nominated(lg_headers_t *h)
{
    h2o_iovec_t tok;
    for (size_t i = 0; i != h->size; ++i) {
        if (!h2o_memis(h->entries[i].name.base, h->entries[i].name.len, H2O_STRLIT("connection")))
            continue;
        const char *cur = h->entries[i].value.base, *end = cur + h->entries[i].value.len;
        while (lg__h1_next_token(&cur, end, &tok)) {
            if (nominated_is_exempt(tok))
                continue;
            for (size_t j = 0; j != h->size; ++j)
                if (j != i && h2o_lcstris(tok.base, tok.len, h->entries[j].name.base, h->entries[j].name.len))
                    h->entries[j].name.len = 0;
        }
    }
}

static int lists_trailers(h2o_iovec_t value)
{
    const char *cur = value.base;
    h2o_iovec_t tok;
    while (lg__h1_next_token(&cur, value.base + value.len, &tok))
        if (h2o_lcstris(tok.base, tok.len, H2O_STRLIT("trailers")))
            return 1;
    return 0;
}

/* The fixed rules: returns whether entry e is kept (and may rewrite its value). */
static int keep_after_strip(lg_header_t *e, int keep_upgrade, int *connection_seen)
{
    if (e->name.len == 0)
        return 0;
    if (h2o_memis(e->name.base, e->name.len, H2O_STRLIT("te"))) {
        if (!lists_trailers(e->value))
            return 0;
        e->value = LG_LIT("trailers");
        return 1;
    }
    if (keep_upgrade && h2o_memis(e->name.base, e->name.len, H2O_STRLIT("upgrade")))
        return 1;
    if (keep_upgrade && h2o_memis(e->name.base, e->name.len, H2O_STRLIT("connection")) && !*connection_seen) {
        *connection_seen = 1;
        e->value = LG_LIT("upgrade");
        return 1;
    }
    return !lg_h1_is_hop_by_hop(e->name);
}

size_t lg_h1_strip_hop_by_hop(lg_headers_t *h, int keep_upgrade)
{
    size_t w = 0, n = h->size;
    int connection_seen = 0;
    mark_nominated(h);
    for (size_t r = 0; r != n; ++r)
        if (keep_after_strip(h->entries + r, keep_upgrade, &connection_seen))
            h->entries[w++] = h->entries[r];
    h->size = w;
    return n - w;
}
