/*
 * Common helpers: errors that carry a message naming what was wrong, logging
 * with Envoy's levels and components, and allocation that aborts on OOM.
 */
#ifndef LEGATE_COMMON_H
#define LEGATE_COMMON_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <h2o/memory.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LG_ERROR_MAX 2048

/* An error message; empty string means "no error". Config errors name the
 * full field path ("static_resources.clusters[0].connect_timeout: ..."). */
typedef struct st_lg_error_t {
    char msg[LG_ERROR_MAX];
} lg_error_t;

/* Formats into err (overwrites). Always returns -1 so that `return lg_error(...)` reads well. */
int lg_error(lg_error_t *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prepends "prefix: " to an existing message (used while unwinding a path). */
int lg_error_prefix(lg_error_t *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Envoy's log levels, in order. */
typedef enum en_lg_log_level_t {
    LG_LOG_TRACE,
    LG_LOG_DEBUG,
    LG_LOG_INFO,
    LG_LOG_WARN,
    LG_LOG_ERROR,
    LG_LOG_CRITICAL,
    LG_LOG_OFF,
} lg_log_level_t;

/* Log components (Envoy's names, subset). --component-log-level and /logging set them. */
#define LG_LOG_COMPONENTS(X)                                                                                                \
    X(main)                                                                                                                 \
    X(config)                                                                                                               \
    X(admin) X(connection) X(http) X(http2) X(router) X(upstream) X(pool) X(client) X(filter) X(runtime) X(misc) X(testing) \
        X(conn_handler) X(dns) X(hc) X(tls) X(upstream_tls) X(xds) X(grpc)
#define LG__LOG_ENUM(n) LG_LOGC_##n,
typedef enum en_lg_log_component_t { LG_LOG_COMPONENTS(LG__LOG_ENUM) LG_LOGC__COUNT } lg_log_component_t;
#undef LG__LOG_ENUM

extern lg_log_level_t lg_log_levels[LG_LOGC__COUNT];
extern const char *const lg_log_component_names[LG_LOGC__COUNT];

const char *lg_log_level_name(lg_log_level_t l);
/* Returns the level for an Envoy level name ("trace".."off", also "warning"), or -1. */
int lg_log_level_parse(const char *name);
/* Sets the format (--log-format, Envoy's %-flags subset) and the sink (--log-path; NULL = stderr). */
int lg_log_configure(const char *format, const char *path, lg_error_t *err);
void lg_log_write(lg_log_component_t c, lg_log_level_t l, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* Reopens the log file (SIGUSR1) and flushes. */
void lg_log_reopen(void);

#define lg_log(comp, level, ...)                                                    \
    do {                                                                            \
        if ((level) >= lg_log_levels[LG_LOGC_##comp])                               \
            lg_log_write(LG_LOGC_##comp, (level), __FILE__, __LINE__, __VA_ARGS__); \
    } while (0)
#define LG_TRACE(comp, ...) lg_log(comp, LG_LOG_TRACE, __VA_ARGS__)
#define LG_DEBUG(comp, ...) lg_log(comp, LG_LOG_DEBUG, __VA_ARGS__)
#define LG_INFO(comp, ...) lg_log(comp, LG_LOG_INFO, __VA_ARGS__)
#define LG_WARN(comp, ...) lg_log(comp, LG_LOG_WARN, __VA_ARGS__)
#define LG_ERROR(comp, ...) lg_log(comp, LG_LOG_ERROR, __VA_ARGS__)
#define LG_CRITICAL(comp, ...) lg_log(comp, LG_LOG_CRITICAL, __VA_ARGS__)

/* FNV-1a: start from LG_FNV1A_INIT, then lg_fnv1a() over each piece. */
#define LG_FNV1A_INIT 0xcbf29ce484222325ull
static inline uint64_t lg_fnv1a(uint64_t h, const void *p, size_t len)
{
    for (size_t i = 0; i != len; ++i)
        h = (h ^ ((const unsigned char *)p)[i]) * 0x100000001b3ull;
    return h;
}

/* Allocation that aborts on out-of-memory (as Envoy does). */
void *lg_malloc(size_t sz);
void *lg_calloc(size_t n, size_t sz);
void *lg_realloc(void *p, size_t sz);
/* Zeroed, at an `align` boundary (a power of two): per-worker data on cache lines of its own. */
void *lg_aligned_zalloc(size_t align, size_t sz);
char *lg_strdup(const char *s);
char *lg_strndup(const char *s, size_t n);

/* A growable, NUL-terminated string used for output that is built once
 * (admin pages, config dumps, error messages): never on the request path. */
typedef struct st_lg_strbuf_t {
    char *base;
    size_t len, cap;
} lg_strbuf_t;

void lg_strbuf_reserve(lg_strbuf_t *b, size_t extra);
void lg_strbuf_append(lg_strbuf_t *b, const char *s, size_t n);
void lg_strbuf_puts(lg_strbuf_t *b, const char *s);
void lg_strbuf_printf(lg_strbuf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends s as a JSON string literal, with quotes and escapes. */
void lg_strbuf_json_string(lg_strbuf_t *b, const char *s, size_t n);
void lg_strbuf_free(lg_strbuf_t *b);

/* Reads a whole file; returns malloc'ed NUL-terminated bytes or NULL with err set. */
char *lg_read_file(const char *path, size_t *len, lg_error_t *err);

/* Monotonic and wall clocks. */
uint64_t lg_now_ms(void);
uint64_t lg_now_us(void);
uint64_t lg_wall_us(void);

#define LG_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#ifdef __cplusplus
}
#endif

#endif
