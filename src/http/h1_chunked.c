/*
 * Chunked transfer coding (RFC 9112 section 7.1) as a streaming decoder that hands
 * out slices of its input and never buffers body bytes.
 *
 * The grammar is enforced strictly, more strictly than Balsa (which skips anything up
 * to an LF after chunk data): chunk-size is HEXDIG+ without overflow, then optional
 * BWS and chunk extensions of field-value characters, then CRLF; chunk data is
 * followed by exactly CRLF; trailer lines end in CRLF. A bare LF or CR anywhere in
 * the framing is an error, so no other parser can see a different chunk boundary.
 */
#include <string.h>
#include "legate/common.h"
#include "legate/h1.h"
#include "legate/http.h"
#include "legate/stats.h"

enum {
    ST_SIZE_FIRST, /* expecting the first hex digit of a chunk size */
    ST_SIZE,       /* reading hex digits */
    ST_SIZE_BWS,   /* whitespace after the size, before ';' or CR */
    ST_EXT,        /* inside chunk extensions, up to CR */
    ST_SIZE_LF,    /* CR of the size line seen */
    ST_DATA,
    ST_DATA_CR,
    ST_DATA_LF,
    ST_TRAILER, /* at the start of a trailer line or of the final empty line */
    ST_DONE,
};

void lg_h1_chunked_decoder_init(lg_h1_chunked_decoder_t *d, const lg_h1_limits_t *lim, int is_request, h2o_mem_pool_t *pool,
                                lg_headers_t *trailers)
{
    *d = (lg_h1_chunked_decoder_t){
        ._lim = lim, ._pool = pool, ._trailers = trailers, ._state = ST_SIZE_FIRST, ._is_request = is_request != 0};
}

static int chunk_error(lg_h1_error_t *err, const char *msg)
{
    return lg__h1_error(err, 400, LG_H1_DETAIL_CODEC_ERROR, msg);
}

static int hex_value(char c)
{
    if ('0' <= c && c <= '9')
        return c - '0';
    c |= 0x20;
    if ('a' <= c && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Ends the chunk-size line: a zero size starts the trailer section. */
static void size_line_done(lg_h1_chunked_decoder_t *d)
{
    d->_state = d->_remaining != 0 ? ST_DATA : ST_TRAILER;
    d->_line_bytes = 0;
}

/* Consumes one byte of a chunk-size line. Returns 0 or -1. */
static int size_line_byte(lg_h1_chunked_decoder_t *d, char c, lg_h1_error_t *err)
{
    int h;
    if (++d->_line_bytes > d->_lim->max_headers_kb * 1024)
        return chunk_error(err, "chunk size line too long");
    switch (d->_state) {
    case ST_SIZE_FIRST:
    case ST_SIZE:
        if ((h = hex_value(c)) >= 0) {
            if (d->_remaining > (UINT64_MAX >> 4))
                return chunk_error(err, "chunk size overflow");
            d->_remaining = d->_remaining << 4 | (uint64_t)h;
            d->_state = ST_SIZE;
            return 0;
        }
        if (d->_state == ST_SIZE_FIRST)
            return chunk_error(err, "HPE_INVALID_CHUNK_SIZE");
        /* fallthrough */
    case ST_SIZE_BWS:
        if (c == ' ' || c == '\t') {
            d->_state = ST_SIZE_BWS;
        } else if (c == ';') {
            d->_state = ST_EXT;
        } else if (c == '\r') {
            d->_state = ST_SIZE_LF;
        } else {
            return chunk_error(err, "HPE_INVALID_CHUNK_SIZE");
        }
        return 0;
    case ST_EXT:
        if (c == '\r')
            d->_state = ST_SIZE_LF;
        else if (!lg_h1_is_value_char(c))
            return chunk_error(err, "invalid character in chunk extension");
        return 0;
    case ST_SIZE_LF:
        if (c != '\n')
            return chunk_error(err, "chunk size line not ended by CRLF");
        size_line_done(d);
        return 0;
    }
    return chunk_error(err, "chunk decoder state");
}

/* Adds a parsed trailer field, applying the count limit and underscore action. */
static int add_trailer(lg_h1_chunked_decoder_t *d, h2o_iovec_t name, h2o_iovec_t value, lg_h1_error_t *err)
{
    if (d->_is_request && lg__h1_name_has_underscore(name)) {
        if (d->_lim->headers_with_underscores_action == LG_H1_UNDERSCORES_REJECT_REQUEST) {
            lg_stats_here_add(lg_stats_http1, LG_HTTP1_STAT_requests_rejected_with_underscores_in_headers, 1);
            return lg__h1_error(err, 400, LG_H1_DETAIL_UNEXPECTED_UNDERSCORE, "trailer name contains underscores");
        }
        if (d->_lim->headers_with_underscores_action == LG_H1_UNDERSCORES_DROP_HEADER) {
            lg_stats_here_add(lg_stats_http1, LG_HTTP1_STAT_dropped_headers_with_underscores, 1);
            return 0;
        }
    }
    if (++d->_trailer_count > d->_lim->max_headers_count)
        return lg__h1_error(err, 431, LG_H1_DETAIL_TOO_MANY_HEADERS, "trailers count exceeds limit");
    if (d->_trailers != NULL)
        lg_headers_add(d->_pool, d->_trailers, name, value);
    return 0;
}

/*
 * Consumes one whole trailer line (or the final empty line) from p[0..len).
 * Returns its length with the CRLF, 0 when the line is not complete yet, or -1.
 */
static ssize_t take_trailer_line(lg_h1_chunked_decoder_t *d, const char *p, size_t len, lg_h1_error_t *err)
{
    size_t max = (size_t)d->_lim->max_headers_kb * 1024;
    const char *lf = memchr(p, '\n', len);
    size_t line_len = lf != NULL ? (size_t)(lf - p) + 1 : len;
    if (d->_trailer_bytes + line_len > max)
        return lg__h1_error(err, 431, LG_H1_DETAIL_HEADERS_TOO_LARGE, "trailers size exceeds limit");
    if (lf == NULL)
        return 0;
    if (line_len < 2 || lf[-1] != '\r')
        return chunk_error(err, "trailer line not ended by CRLF");
    d->_trailer_bytes += line_len;
    if (line_len == 2) {
        d->_state = ST_DONE;
        return 2;
    }
    /* Copied so that trailers outlive the input and can be lower-cased in place. */
    char *copy = h2o_mem_alloc_pool(d->_pool, line_len - 2);
    h2o_iovec_t name, value;
    memcpy(copy, p, line_len - 2);
    if (lg__h1_parse_field_line(copy, line_len - 2, &name, &value, err) != 0 || add_trailer(d, name, value, err) != 0)
        return -1;
    return line_len;
}

/* Consumes chunk data; returns the bytes taken (0 when data[] is full). */
static size_t take_data(lg_h1_chunked_decoder_t *d, const char *p, size_t len, h2o_iovec_t *data, size_t cap, size_t *n)
{
    size_t take = d->_remaining < len ? (size_t)d->_remaining : len;
    if (*n == cap)
        return 0;
    data[(*n)++] = h2o_iovec_init(p, take);
    if ((d->_remaining -= take) == 0)
        d->_state = ST_DATA_CR;
    return take;
}

/* Consumes the CRLF after chunk data; returns 0 or -1. */
static int data_end_byte(lg_h1_chunked_decoder_t *d, char c, lg_h1_error_t *err)
{
    if (d->_state == ST_DATA_CR) {
        if (c != '\r')
            return chunk_error(err, "chunk data not followed by CRLF");
        d->_state = ST_DATA_LF;
        return 0;
    }
    if (c != '\n')
        return chunk_error(err, "chunk data not followed by CRLF");
    d->_state = ST_SIZE_FIRST;
    return 0;
}

ssize_t lg_h1_chunked_decode(lg_h1_chunked_decoder_t *d, const char *buf, size_t len, h2o_iovec_t *data, size_t *ndata, int *done,
                             lg_h1_error_t *err)
{
    size_t pos = 0, cap = *ndata, taken;
    ssize_t line;
    *ndata = 0;
    while (pos != len && d->_state != ST_DONE) {
        switch (d->_state) {
        case ST_DATA:
            if ((taken = take_data(d, buf + pos, len - pos, data, cap, ndata)) == 0)
                goto Exit;
            pos += taken;
            break;
        case ST_DATA_CR:
        case ST_DATA_LF:
            if (data_end_byte(d, buf[pos++], err) != 0)
                return -1;
            break;
        case ST_TRAILER:
            if ((line = take_trailer_line(d, buf + pos, len - pos, err)) < 0)
                return -1;
            if (line == 0)
                goto Exit;
            pos += line;
            break;
        default:
            if (size_line_byte(d, buf[pos++], err) != 0)
                return -1;
            break;
        }
    }
Exit:
    *done = d->_state == ST_DONE;
    return (ssize_t)pos;
}
