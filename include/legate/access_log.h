/*
 * Access logs (envoy.access_loggers.file / stdout / stderr) with Envoy's
 * formats and filters. Compiled once per HCM or tcp_proxy; written from the
 * workers without blocking them.
 *
 * Writing: every log file (one per distinct path, shared by every listener
 * that names it, open for the life of the process as in Envoy) has one
 * buffer per worker. A worker appends whole entries to its own buffer with
 * no lock (it borrows the buffer with an atomic exchange); a flusher thread
 * swaps each buffer for an empty one and write(2)s it every
 * --file-flush-interval-msec, or as soon as a buffer passes 64 KiB. Entries
 * are never split or interleaved. Threads other than workers share one more
 * buffer under a mutex.
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

/* Compiles `n` AccessLog messages; errors name the field ("access_log[0].typed_config.path: ...").
 * Opens the files (control thread). */
int lg_access_logs_compile(Envoy__Config__Accesslog__V3__AccessLog *const *m, size_t n, lg_access_logs_t *out, lg_error_t *err);
void lg_access_logs_dispose(lg_access_logs_t *logs);
/* Writes one entry per log whose filter accepts the stream (worker threads;
 * other threads work too, through a shared locked buffer). */
void lg_access_logs_emit(const lg_access_logs_t *logs, const lg_stream_info_t *info);
/* Same, for an entry that is not the end of the stream (tcp_proxy's periodic
 * and on-connected entries): `log_type` is an Envoy AccessLogType
 * (ENVOY__DATA__ACCESSLOG__V3__ACCESS_LOG_TYPE__TcpPeriodic ...) for
 * log_type_filter. lg_access_logs_emit() uses DownstreamEnd, or
 * TcpConnectionEnd when `info` has no request and no protocol. */
void lg_access_logs_emit_type(const lg_access_logs_t *logs, const lg_stream_info_t *info, int log_type);

/* Process settings, before any access log is compiled: the number of workers
 * (each gets its own buffer per file) and --file-flush-interval-msec (0 is
 * taken as 1 ms). Registers the admin endpoint POST /reopen_logs. Without a
 * call, logs run with no worker buffers (every thread shares the locked one)
 * and Envoy's default interval of 10 s. */
void lg_access_log_configure(size_t concurrency, uint64_t flush_interval_ms);
/* Writes what is buffered to the current files, then reopens every access
 * log file by path (log rotation: SIGUSR1, POST /reopen_logs). stdout and
 * stderr are left alone. Not from a worker. */
void lg_access_log_reopen(void);
/* Writes what is buffered now. Not from a worker. */
/* Starts the flusher thread now rather than with the first file (before the
 * caller changes its scheduling, which threads it starts later inherit). */
void lg_access_log_start(void);
void lg_access_log_flush(void);
/* Stops the flusher, writes what is left, closes and frees every file and
 * unregisters /reopen_logs. Call once the workers have stopped: compiled logs
 * may still be disposed afterwards, but no longer emitted to. */
void lg_access_log_shutdown(void);

#endif
