#ifndef LEGATE_H1_H
#define LEGATE_H1_H

#include <stdint.h>
#include <string.h>
#include <sys/types.h>
#include "legate/h1-t.h"

/* Envoy's response code details (docs: response_code_details.rst) the codec reports. */
#define LG_H1_DETAIL_CODEC_ERROR "http1.codec_error"
#define LG_H1_DETAIL_INVALID_CHARACTERS "http1.invalid_characters"
#define LG_H1_DETAIL_HEADERS_TOO_LARGE "http1.headers_too_large"
#define LG_H1_DETAIL_TOO_MANY_HEADERS "http1.too_many_headers"
#define LG_H1_DETAIL_UNEXPECTED_UNDERSCORE "http1.unexpected_underscore"
#define LG_H1_DETAIL_CHUNKED_CONTENT_LENGTH "http1.content_length_and_chunked_not_allowed"
#define LG_H1_DETAIL_INVALID_TRANSFER_ENCODING "http1.invalid_transfer_encoding"
#define LG_H1_DETAIL_BODY_DISALLOWED "http1.body_disallowed"
#define LG_H1_DETAIL_CONNECTION_HEADER "http1.connection_header_rejected"
#define LG_H1_DETAIL_INVALID_URL "http1.invalid_url"
#define LG_H1_DETAIL_INVALID_SCHEME "http1.invalid_scheme"
#define LG_H1_DETAIL_TRANSFER_ENCODING_NOT_ALLOWED "http1.transfer_encoding_not_allowed"
#define LG_H1_DETAIL_CONTENT_LENGTH_NOT_ALLOWED "http1.content_length_not_allowed"
#define LG_H1_DETAIL_LOW_VERSION "low_version"
#define LG_H1_DETAIL_INVALID_AUTHORITY "http.invalid_authority"
#define LG_H1_DETAIL_MISSING_HOST "missing_host_header"

/* Sets Envoy's defaults: 60 KiB, 100 headers, underscores allowed, absolute URLs allowed,
 * no chunked+Content-Length, no HTTP/1.0, no custom methods. */
void lg_h1_limits_init(lg_h1_limits_t *lim);

/*
 * Parses a request head at the start of buf[0..len).
 *
 * `last_len` is the `len` of the previous call on the same buffer that returned -2
 * (0 otherwise); it only lets the search for the end of the head resume, the result is
 * the same for any split of the input. The head is parsed in place: header names are
 * lower-cased inside buf, and every iovec of `head` points into buf (except values the
 * codec had to rewrite, which are in `pool`), so buf must outlive the head.
 * `head->headers` is allocated from `pool`. Host becomes `authority` and is not kept in
 * `headers`; an absolute-form target sets scheme, authority and path; CONNECT sets
 * authority only. Headers nominated by Connection are removed (Envoy's
 * sanitizeConnectionHeader); hop-by-hop headers are left for lg_h1_strip_hop_by_hop().
 *
 * Returns the length of the head (> 0; any body starts there), -2 when buf does not hold
 * a whole head yet, or -1 with `err` set. A head that does not end within the size limit
 * is an error (431) even when incomplete. The connection manager's own head checks that
 * Envoy runs before any filter (missing Host: 400 missing_host_header; HTTP/1.0 when
 * not accepted: 426 low_version) are made here too.
 */
ssize_t lg_h1_parse_request(h2o_mem_pool_t *pool, char *buf, size_t len, size_t last_len, const lg_h1_limits_t *lim,
                            lg_req_head_t *head, lg_h1_msg_info_t *info, lg_h1_error_t *err);

/* What the client side knows about the request a response answers. */
#define LG_H1_REQ_HEAD 0x1
#define LG_H1_REQ_CONNECT 0x2
#define LG_H1_REQ_UPGRADE 0x4

/*
 * Parses a response head, like lg_h1_parse_request(). `req_flags` (LG_H1_REQ_*) describe
 * the request: responses to HEAD, 1xx, 204 and 304 have no body, a 2xx to CONNECT and a
 * 101 to an upgrade start a tunnel. A 1xx other than 101 sets info->is_interim: parse
 * the next head after it. Errors have status 502.
 */
ssize_t lg_h1_parse_response(h2o_mem_pool_t *pool, char *buf, size_t len, size_t last_len, const lg_h1_limits_t *lim,
                             unsigned req_flags, lg_resp_head_t *head, lg_h1_msg_info_t *info, lg_h1_error_t *err);

/* Prepares a decoder for one chunked body. Trailers are parsed and validated against
 * `lim` in every case; when `trailers` is non-NULL they are appended to it (names and
 * values copied into `pool`), otherwise dropped (Envoy without enable_trailers). */
void lg_h1_chunked_decoder_init(lg_h1_chunked_decoder_t *d, const lg_h1_limits_t *lim, int is_request, h2o_mem_pool_t *pool,
                                lg_headers_t *trailers);

/*
 * Decodes chunked bytes from buf[0..len). Body data is returned as up to *ndata slices
 * of buf in data[] (*ndata: capacity in, at least 1; count out; slices are never empty). Returns how many bytes of buf were
 * consumed (the caller drops them and calls again with what is left plus new bytes), or
 * -1 with err set. Less than len is consumed when data[] is full, when the message ends
 * (*done set; the rest of buf is the next message), or when a trailer line is incomplete
 * (the decoder waits for the whole line, up to the trailer size limit).
 */
ssize_t lg_h1_chunked_decode(lg_h1_chunked_decoder_t *d, const char *buf, size_t len, h2o_iovec_t *data, size_t *ndata, int *done,
                             lg_h1_error_t *err);

/* Envoy's encoder rules (StreamEncoderImpl::encodeHeadersBase): which of
 * LG_H1_ADD_CHUNKED_TE, LG_H1_ADD_CONTENT_LENGTH_ZERO and LG_H1_CHUNK_BODY apply. */
unsigned lg_h1_encode_framing(const lg_h1_encode_ctx_t *ctx);

/*
 * Serializes a request head into one buffer allocated from pool:
 * "METHOD target HTTP/1.1\r\nhost: authority\r\n<headers>[framing headers]\r\n".
 * The target is the path, the authority for CONNECT, or scheme://authority/path with
 * LG_H1_ABSOLUTE_URL. Entries named "host" (requests only) or starting with ':' are skipped;
 * so is transfer-encoding (written only from `flags`) and, when `flags` add framing
 * headers, content-length: a head never leaves with two framings. Returns -1
 * (nothing written) when a method, target, name or value would break the framing
 * (CR, LF, NUL or other control bytes; non-token names): such a head must not be sent.
 */
int lg_h1_flatten_request_head(h2o_mem_pool_t *pool, const lg_req_head_t *head, unsigned flags, h2o_iovec_t *out);

/* Serializes "HTTP/1.1 <status> <Envoy reason>\r\n<headers>[framing headers]\r\n"
 * ("HTTP/1.0" when head->version is LG_HTTP_10). Same validation as above. */
int lg_h1_flatten_response_head(h2o_mem_pool_t *pool, const lg_resp_head_t *head, unsigned flags, h2o_iovec_t *out);

#define LG_H1_CHUNK_HEADER_MAX 19 /* 16 hex digits + CRLF + NUL */
#define LG_H1_CRLF "\r\n"
#define LG_H1_LAST_CHUNK "0\r\n\r\n"

/* Writes "<hex len>\r\n" into buf; returns its length. len must be > 0. */
size_t lg_h1_chunk_header(char buf[LG_H1_CHUNK_HEADER_MAX], size_t len);
/* Serializes the last chunk with trailers, "0\r\n<trailers>\r\n", into pool; trailers
 * named content-length or transfer-encoding are left out. Returns -1 on a trailer that
 * would break the framing. */
int lg_h1_flatten_last_chunk(h2o_mem_pool_t *pool, const lg_headers_t *trailers, h2o_iovec_t *out);

/* Envoy's reason phrase for a status ("Unknown" when it has none). */
const char *lg_h1_reason_phrase(int status);

/* Returns whether a (lower-case) name is hop-by-hop for a proxy: connection, keep-alive,
 * proxy-connection, transfer-encoding, upgrade, te. */
int lg_h1_is_hop_by_hop(h2o_iovec_t name);

/*
 * Removes what a proxy must not forward, as Envoy's connection manager does: the headers
 * named in Connection, then connection, keep-alive, proxy-connection, transfer-encoding,
 * upgrade; te is kept as "te: trailers" when it lists trailers. With keep_upgrade (an
 * upgrade being forwarded) upgrade is kept and connection is set to "upgrade".
 * Returns how many entries were removed.
 */
size_t lg_h1_strip_hop_by_hop(lg_headers_t *headers, int keep_upgrade);

/* Byte classes of RFC 9110, shared with the h2 codec and the filters that build headers. */
#define LG_H1_CHAR_TCHAR 0x1 /* token character */
#define LG_H1_CHAR_VALUE 0x2 /* allowed in a field value: HTAB, SP, VCHAR, obs-text */
#define LG_H1_CHAR_HOST 0x4  /* allowed in a Host value / authority (nghttp2_check_authority) */
#define LG_H1_CHAR_PATH 0x8  /* allowed in a request target: VCHAR ('!'..'~') */
extern const uint8_t lg_h1_char_class[256];

static inline int lg_h1_is_tchar(unsigned char c)
{
    return (lg_h1_char_class[c] & LG_H1_CHAR_TCHAR) != 0;
}

static inline int lg_h1_is_value_char(unsigned char c)
{
    return (lg_h1_char_class[c] & LG_H1_CHAR_VALUE) != 0;
}

/* Field values are checked eight bytes at a time (SWAR): every request parses and
 * writes them. The word test only picks the path; the answer is exact. Shared by the
 * parser and the serializer. */
#define LG_H1_ONES 0x0101010101010101ull
#define LG_H1_HIGHS 0x8080808080808080ull

static inline uint64_t lg_h1_load8(const char *p)
{
    uint64_t x;
    memcpy(&x, p, 8);
    return x;
}

/* Whether the 8 bytes of x hold one below 0x20 or 0x7f (exact as a yes/no: a borrow
 * only runs upwards from a byte that already matched). */
static inline int lg_h1_word_has_ctl(uint64_t x)
{
    const uint64_t del = x ^ (0x7full * LG_H1_ONES);
    return ((((x - 0x20 * LG_H1_ONES) & ~x) | ((del - LG_H1_ONES) & ~del)) & LG_H1_HIGHS) != 0;
}

/* Whether every byte of p[0..len) may be in a field value (HTAB, SP, VCHAR, obs-text):
 * bytewise only from a word that holds a control byte. */
static inline int lg_h1_value_is_valid(const char *p, size_t len)
{
    size_t i = 0;
    for (; len - i >= 8; i += 8)
        if (lg_h1_word_has_ctl(lg_h1_load8(p + i)))
            break;
    for (; i != len; ++i)
        if (!lg_h1_is_value_char(p[i]))
            return 0;
    return 1;
}

/* Internal to src/http/h1_*.c. Parses one field line p[0..len) (its CRLF excluded):
 * lower-cases the name in place, trims the value; returns 0 or -1 with err set. */
int lg__h1_parse_field_line(char *p, size_t len, h2o_iovec_t *name, h2o_iovec_t *value, lg_h1_error_t *err);
int lg__h1_error(lg_h1_error_t *err, int status, const char *details, const char *msg);
int lg__h1_name_has_underscore(h2o_iovec_t name);
/* Iterates the non-empty comma-separated elements of a list value, trimmed of OWS:
 * returns 1 with *tok set and *cur advanced, 0 at the end. */
int lg__h1_next_token(const char **cur, const char *end, h2o_iovec_t *tok);

#endif
