/*
 * The admin HTTP server: Envoy's admin endpoints on their own thread and event
 * loop, so that a slow /stats or /config_dump never blocks traffic or /ready.
 * Handlers run on the admin thread; anything they read from other threads must
 * be safe to read there (stats are; config snapshots are refcounted).
 */
#ifndef LEGATE_ADMIN_H
#define LEGATE_ADMIN_H

#include "legate/common.h"

/* One query parameter, url-decoded (%XX; '+' is kept, as Envoy does). A parameter
 * without '=' has an empty value. */
typedef struct st_lg_admin_param_t {
    char *name;
    char *value;
} lg_admin_param_t;

typedef struct st_lg_admin_request_t {
    h2o_iovec_t method;
    h2o_iovec_t path;  /* without the query */
    h2o_iovec_t query; /* raw, without '?' */
    lg_admin_param_t *params;
    size_t nparams;
    h2o_iovec_t body;
} lg_admin_request_t;

/* Filled in by a handler: status defaults to 200, content_type (a static string)
 * to "text/plain; charset=UTF-8". */
typedef struct st_lg_admin_response_t {
    int status;
    const char *content_type;
    lg_strbuf_t body;
} lg_admin_response_t;

typedef void (*lg_admin_handler_cb)(const lg_admin_request_t *req, lg_admin_response_t *res, void *ctx);

#define LG_ADMIN_CONTENT_TEXT "text/plain; charset=UTF-8"
#define LG_ADMIN_CONTENT_JSON "application/json"
#define LG_ADMIN_CONTENT_HTML "text/html; charset=UTF-8"

/* Returns the value of the first parameter named `name`, or NULL. */
const char *lg_admin_param(const lg_admin_request_t *req, const char *name);

/* Binds the admin listener (port 0 = ephemeral) and starts the admin thread.
 * The built-in endpoints are registered by the first start. */
int lg_admin_start(const char *address, uint16_t port, lg_error_t *err);
/* Same on a unix socket (Envoy's admin address `pipe`); mode 0 keeps the default. */
int lg_admin_start_pipe(const char *path, uint32_t mode, lg_error_t *err);
/* The bound port (0 for a pipe or before start). */
uint16_t lg_admin_port(void);
/* Writes the bound address as Envoy does for --admin-address-path ("127.0.0.1:9901",
 * "[::1]:9901", or the pipe path). */
int lg_admin_write_address_file(const char *path, lg_error_t *err);
/* Stops the thread, closes every connection, and forgets every registered handler. */
void lg_admin_stop(void);

/* Registers an endpoint matched on the exact path (Envoy's prefix semantics).
 * `mutates_state` endpoints answer 405 to anything but POST. May be called from
 * any thread, before or after start. Returns -1 when the path is taken. */
int lg_admin_register(const char *prefix, const char *help, int mutates_state, lg_admin_handler_cb cb, void *ctx);
/* Documents a query parameter of a registered endpoint in /help. */
void lg_admin_add_param(const char *prefix, const char *name, const char *help);
int lg_admin_unregister(const char *prefix);

/* Runs the handler for `method path?query` in the calling thread, as a request to
 * the listener would (tests, and Envoy's in-process admin requests). */
void lg_admin_request(const char *method, const char *path_and_query, h2o_iovec_t body, lg_admin_response_t *res);

/* /healthcheck/fail and /healthcheck/ok: the flag that health check filters and
 * /ready read. */
int lg_admin_healthcheck_failed(void);
void lg_admin_set_healthcheck_failed(int failed);

/* Called (on the admin thread) by POST /quitquitquit; must only schedule the exit. */
void lg_admin_on_quit(void (*cb)(void));

/* What /server_info reports besides state and uptime. The JSON fragments are the
 * proto3 JSON of envoy.admin.v3.CommandLineOptions and envoy.config.core.v3.Node
 * (compact or pretty; they are re-indented); NULL prints {}. Copied. */
void lg_admin_set_server_info(const char *version, const char *hot_restart_version, const char *command_line_options_json,
                              const char *node_json);

/* Appends `json` re-indented the way protobuf's JSON printer pretty-prints (one space
 * per level), as if nested `depth` levels deep. */
void lg_admin_json_pretty(lg_strbuf_t *out, const char *json, int depth);

#endif
