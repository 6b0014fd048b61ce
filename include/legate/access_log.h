/*
 * Access logs (envoy.access_loggers.file / stdout / stderr) with Envoy's
 * formats and filters. Compiled once per HCM or tcp_proxy; written from the
 * workers without blocking them.
 */
#ifndef LEGATE_ACCESS_LOG_H
#define LEGATE_ACCESS_LOG_H

#include "legate/common.h"
#include "legate/stream_info-t.h"
#include "envoy/config/accesslog/v3/accesslog.pb-c.h"

typedef struct st_lg_access_log_t lg_access_log_t;

/* A list of compiled access logs (NULL entries never). */
typedef struct st_lg_access_logs_t {
    lg_access_log_t **logs;
    size_t n;
} lg_access_logs_t;

/* Compiles `n` AccessLog messages; errors name the field ("access_log[0].typed_config.path: ..."). */
int lg_access_logs_compile(Envoy__Config__Accesslog__V3__AccessLog *const *m, size_t n, lg_access_logs_t *out, lg_error_t *err);
void lg_access_logs_dispose(lg_access_logs_t *logs);
/* Writes one entry per log whose filter accepts the stream (worker threads). */
void lg_access_logs_emit(const lg_access_logs_t *logs, const lg_stream_info_t *info);

#endif
