/*
 * tls_inspector's ClientHello parser: finds the SNI and the offered ALPN
 * protocols in the first bytes of a connection, which may hold the ClientHello
 * split over several TLS records. A pure function over the bytes read so far:
 * the caller keeps them and hands them to the TLS handshake (or to the
 * plaintext codec) afterwards, so nothing is consumed.
 */
#include <ctype.h>
#include <string.h>
#include "legate/tls.h"

#define TLS_RECORD_HANDSHAKE 0x16
#define TLS_HANDSHAKE_CLIENT_HELLO 1
#define TLS_EXT_SERVER_NAME 0
#define TLS_EXT_ALPN 16
#define TLS_MAX_RECORD (16384 + 2048)

/* Reads handshake bytes across record boundaries. An error sticks in `status`
 * and every later read returns zeros. */
typedef struct st_reader_t {
    const uint8_t *buf;
    size_t len, pos, record_left;
    size_t consumed; /* handshake bytes read so far */
    lg_tls_hello_status_t status;
    int ok;
} reader_t;

static int next_byte(reader_t *r, uint8_t *out)
{
    if (!r->ok)
        return 0;
    if (r->record_left == 0) {
        if (r->pos + 5 > r->len) {
            r->ok = 0;
            r->status = LG_TLS_HELLO_NEED_MORE;
            return 0;
        }
        const uint8_t *h = r->buf + r->pos;
        size_t rec_len = (size_t)h[3] << 8 | h[4];
        if (h[0] != TLS_RECORD_HANDSHAKE || h[1] != 3 || rec_len == 0 || rec_len > TLS_MAX_RECORD) {
            r->ok = 0;
            r->status = LG_TLS_HELLO_NOT_TLS;
            return 0;
        }
        r->pos += 5;
        r->record_left = rec_len;
    }
    if (r->pos >= r->len) {
        r->ok = 0;
        r->status = LG_TLS_HELLO_NEED_MORE;
        return 0;
    }
    *out = r->buf[r->pos++];
    --r->record_left;
    ++r->consumed;
    return 1;
}

static uint32_t read_uint(reader_t *r, int bytes)
{
    uint32_t v = 0;
    uint8_t b = 0;
    for (int i = 0; i != bytes; ++i) {
        next_byte(r, &b);
        v = v << 8 | b;
    }
    return r->ok ? v : 0;
}

static void read_bytes(reader_t *r, size_t n, char *dst, size_t cap)
{
    uint8_t b;
    for (size_t i = 0; i != n && next_byte(r, &b); ++i)
        if (dst != NULL && i < cap)
            dst[i] = (char)b;
}

static void fail(reader_t *r)
{
    if (r->ok) {
        r->ok = 0;
        r->status = LG_TLS_HELLO_NOT_TLS;
    }
}

/* Skips a vector with a `bytes`-long length prefix that must end by `end`. */
static void skip_vector(reader_t *r, int bytes, size_t end)
{
    size_t n = read_uint(r, bytes);
    if (r->consumed + n > end)
        return fail(r);
    read_bytes(r, n, NULL, 0);
}

static void parse_sni(reader_t *r, size_t ext_end, lg_tls_client_hello_t *out)
{
    size_t list_len = read_uint(r, 2), list_end = r->consumed + list_len;
    if (list_end > ext_end)
        return fail(r);
    while (r->ok && r->consumed < list_end) {
        uint8_t type = (uint8_t)read_uint(r, 1);
        size_t n = read_uint(r, 2);
        if (r->consumed + n > list_end)
            return fail(r);
        if (type == 0 && out->server_name[0] == '\0' && n < sizeof(out->server_name)) {
            read_bytes(r, n, out->server_name, n);
            out->server_name[r->ok ? n : 0] = '\0';
            for (char *p = out->server_name; *p; ++p)
                *p = (char)tolower((unsigned char)*p);
        } else {
            read_bytes(r, n, NULL, 0);
        }
    }
}

static void parse_alpn(reader_t *r, size_t ext_end, lg_tls_client_hello_t *out)
{
    size_t list_len = read_uint(r, 2), list_end = r->consumed + list_len, used = 0;
    if (list_end > ext_end)
        return fail(r);
    while (r->ok && r->consumed < list_end) {
        size_t n = read_uint(r, 1);
        if (n == 0 || r->consumed + n > list_end)
            return fail(r);
        if (out->n_alpn < LG_TLS_HELLO_MAX_ALPN && used + n + 1 <= sizeof(out->_alpn_buf)) {
            char *dst = out->_alpn_buf + used;
            read_bytes(r, n, dst, n);
            dst[n] = '\0';
            out->alpn[out->n_alpn++] = dst;
            used += n + 1;
        } else {
            read_bytes(r, n, NULL, 0);
        }
    }
}

static void parse_extensions(reader_t *r, size_t body_end, lg_tls_client_hello_t *out)
{
    if (r->consumed == body_end)
        return; /* no extensions */
    size_t ext_len = read_uint(r, 2), ext_end = r->consumed + ext_len;
    if (ext_end > body_end)
        return fail(r);
    while (r->ok && r->consumed < ext_end) {
        uint32_t type = read_uint(r, 2);
        size_t n = read_uint(r, 2), end = r->consumed + n;
        if (end > ext_end)
            return fail(r);
        if (type == TLS_EXT_SERVER_NAME)
            parse_sni(r, end, out);
        else if (type == TLS_EXT_ALPN)
            parse_alpn(r, end, out);
        else
            read_bytes(r, n, NULL, 0);
        if (r->ok && r->consumed != end)
            return fail(r);
    }
}

lg_tls_hello_status_t lg_tls_client_hello_parse(const uint8_t *buf, size_t len, size_t max_size, lg_tls_client_hello_t *out)
{
    reader_t r = {buf, len, 0, 0, 0, LG_TLS_HELLO_FOUND, 1};
    out->server_name[0] = '\0';
    out->n_alpn = 0;
    if (len == 0)
        return LG_TLS_HELLO_NEED_MORE;
    if (buf[0] != TLS_RECORD_HANDSHAKE)
        return LG_TLS_HELLO_NOT_TLS;
    uint32_t type = read_uint(&r, 1);
    size_t body_len = read_uint(&r, 3);
    if (!r.ok)
        return r.status;
    if (type != TLS_HANDSHAKE_CLIENT_HELLO)
        return LG_TLS_HELLO_NOT_TLS;
    if (body_len + 4 > max_size)
        return LG_TLS_HELLO_TOO_LARGE;
    size_t body_end = r.consumed + body_len;
    if (body_len < 2 + 32 + 1)
        return LG_TLS_HELLO_NOT_TLS;
    read_bytes(&r, 2 + 32, NULL, 0); /* legacy_version, random */
    skip_vector(&r, 1, body_end);    /* legacy_session_id */
    skip_vector(&r, 2, body_end);    /* cipher_suites */
    skip_vector(&r, 1, body_end);    /* legacy_compression_methods */
    parse_extensions(&r, body_end, out);
    if (r.ok && r.consumed != body_end)
        fail(&r);
    if (!r.ok) {
        out->server_name[0] = '\0';
        out->n_alpn = 0;
        return r.status;
    }
    return LG_TLS_HELLO_FOUND;
}
