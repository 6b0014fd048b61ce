/*
 * Envoy's substitution format strings ("%REQ(X-FOO?X-BAR):10% %RESPONSE_CODE%"),
 * used by access logs and by header values in route configs. A format is
 * compiled once into segments and is immutable afterwards; evaluating it
 * against an lg_stream_info_t allocates only from the given pool.
 *
 * As in Envoy: `%%` is a literal '%'; an unknown operator is a compile error
 * "Not supported field in StreamInfo: NAME"; a value that is not known prints
 * "-" (or nothing with LG_FORMAT_OMIT_EMPTY, as header values do); ":N" cuts
 * a value to N bytes.
 */
#ifndef LEGATE_FORMAT_H
#define LEGATE_FORMAT_H

#include <h2o/memory.h>
#include "legate/common.h"
#include "legate/stream_info-t.h"

typedef struct st_lg_format_t lg_format_t;

/* Missing values print as "" instead of "-" (Envoy's omit_empty_values, which
 * header formatters always use). */
#define LG_FORMAT_OMIT_EMPTY 0x1

/* Compiles `len` bytes of `fmt`. Returns NULL with err set to Envoy's message
 * (callers prefix the field path). */
lg_format_t *lg_format_compile(const char *fmt, size_t len, int flags, lg_error_t *err);
void lg_format_free(lg_format_t *f);

/* True if the format has no operators; then lg_format_constant() is its value. */
int lg_format_is_constant(const lg_format_t *f);
h2o_iovec_t lg_format_constant(const lg_format_t *f);

/* Evaluates into a NUL-terminated string allocated from `pool`; for a
 * constant format the result points into `f` instead (valid while f is).
 * `si` may be NULL (every operator is then missing). */
h2o_iovec_t lg_format_eval(const lg_format_t *f, const lg_stream_info_t *si, h2o_mem_pool_t *pool);
/* Same, appending to a malloc'ed buffer (for access log lines). */
void lg_format_append(const lg_format_t *f, const lg_stream_info_t *si, lg_strbuf_t *out);

/* For typed (JSON) output: the kind of value a format produces when it is a
 * single operator. Formats with literal text are always strings. */
typedef enum en_lg_format_value_kind_t {
    LG_FORMAT_VALUE_MISSING, /* the value is not known (printed "-" in text) */
    LG_FORMAT_VALUE_STRING,
    LG_FORMAT_VALUE_NUMBER, /* the bytes are a decimal integer */
} lg_format_value_kind_t;

/* Evaluates like lg_format_eval and tells the kind of value. */
lg_format_value_kind_t lg_format_eval_typed(const lg_format_t *f, const lg_stream_info_t *si, h2o_mem_pool_t *pool,
                                            h2o_iovec_t *out);

/* Appends the value as one JSON value the way Envoy's JSON formats print it:
 * a single operator keeps its type when `typed` (numbers print bare) and is
 * null when missing; with literal text or several operators the value is a
 * string (missing parts print as "-", or "" with LG_FORMAT_OMIT_EMPTY).
 * Untyped (the deprecated json_format of FileAccessLog), a missing single
 * operator prints "-" unless LG_FORMAT_OMIT_EMPTY makes it null. For a null
 * value nothing is written and LG_FORMAT_VALUE_MISSING is returned: the
 * caller writes null or omits the key. Strings are JSON-escaped; bytes that
 * are not UTF-8 print as \u00XX. */
lg_format_value_kind_t lg_format_append_json(const lg_format_t *f, const lg_stream_info_t *si, int typed, lg_strbuf_t *out);

/* The stream's gRPC status as Envoy's Grpc::Common::getGrpcStatus finds it:
 * grpc-status from the trailers, else from the response headers, else
 * mapped from the HTTP status (404 UNIMPLEMENTED, 503 UNAVAILABLE, ...).
 * A value that is not a number, or above 16 unless `allow_user_defined`,
 * is -1. Returns 0 when there is no status at all. */
int lg_format_grpc_status(const lg_stream_info_t *si, int allow_user_defined, int64_t *status);

/* Formats a wall-clock time (µs since the epoch, UTC) with an Envoy START_TIME
 * format: strftime plus %f / %1f..%9f (fractional seconds), %s (epoch
 * seconds) and %E1S..%E9S / %E*S; an empty format is Envoy's default
 * "%Y-%m-%dT%H:%M:%E3SZ". Returns the length written (output is cut at cap-1). */
size_t lg_format_time(const char *fmt, size_t fmt_len, uint64_t wall_us, char *buf, size_t cap);

/* Looks a request header up the way Envoy's request header map does: the
 * pseudo-headers (":authority", ":path", ":method", ":scheme", ":protocol")
 * come from the head's fields, "host" is an alias of ":authority", other
 * names are looked up in req->headers (name lower-case). Returns 1 and the
 * first value, or 0 if absent. */
int lg_req_header_first(const lg_req_head_t *req, const char *name, size_t len, h2o_iovec_t *value);

#endif
