/*
 * Envoy's small admin endpoints: /, /help, /ready, /server_info, /memory,
 * /hot_restart_version, /healthcheck/fail|ok, /quitquitquit and /logging.
 */
#include <ctype.h>
#include <pthread.h>
#include "legate/stats.h"
#include "legate/tls.h"
#include "admin_internal.h"

static int healthcheck_failed;
static void (*quit_cb)(void);

static pthread_mutex_t info_mutex = PTHREAD_MUTEX_INITIALIZER;
static struct {
    char *version;
    char *hot_restart_version;
    char *command_line_options;
    char *node;
} info;

static const char *const state_names[] = {"LIVE", "DRAINING", "PRE_INITIALIZING", "INITIALIZING"};

int lg_admin_healthcheck_failed(void)
{
    return __atomic_load_n(&healthcheck_failed, __ATOMIC_RELAXED);
}

void lg_admin_set_healthcheck_failed(int failed)
{
    __atomic_store_n(&healthcheck_failed, failed != 0, __ATOMIC_RELAXED);
}

void lg_admin_on_quit(void (*cb)(void))
{
    __atomic_store_n(&quit_cb, cb, __ATOMIC_RELEASE);
}

static void replace(char **slot, const char *value)
{
    free(*slot);
    *slot = value != NULL ? lg_strdup(value) : NULL;
}

void lg_admin_set_server_info(const char *version, const char *hot_restart_version, const char *command_line_options_json,
                              const char *node_json)
{
    pthread_mutex_lock(&info_mutex);
    replace(&info.version, version);
    replace(&info.hot_restart_version, hot_restart_version);
    replace(&info.command_line_options, command_line_options_json);
    replace(&info.node, node_json);
    pthread_mutex_unlock(&info_mutex);
}

void lg__admin_basic_handlers_dispose(void)
{
    lg_admin_set_server_info(NULL, NULL, NULL, NULL);
    lg_admin_set_healthcheck_failed(0);
    lg_admin_on_quit(NULL);
}

/* ---- JSON re-indentation ----------------------------------------------------------------------------------------------------- */

static void newline(lg_strbuf_t *out, int depth)
{
    lg_strbuf_append(out, "\n", 1);
    for (int i = 0; i < depth; ++i)
        lg_strbuf_append(out, " ", 1);
}

static const char *skip_ws(const char *p)
{
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
        ++p;
    return p;
}

/* Copies a string literal starting at the opening quote; returns the position after it. */
static const char *copy_string(lg_strbuf_t *out, const char *p)
{
    const char *start = p++;
    while (*p != '\0' && *p != '"')
        p += *p == '\\' && p[1] != '\0' ? 2 : 1;
    if (*p == '"')
        ++p;
    lg_strbuf_append(out, start, (size_t)(p - start));
    return p;
}

void lg_admin_json_pretty(lg_strbuf_t *out, const char *json, int depth)
{
    for (const char *p = skip_ws(json); *p != '\0'; p = skip_ws(p)) {
        switch (*p) {
        case '"':
            p = copy_string(out, p);
            continue;
        case '{':
        case '[': {
            const char *next = skip_ws(p + 1);
            lg_strbuf_append(out, p, 1);
            if (*next == (*p == '{' ? '}' : ']')) {
                lg_strbuf_append(out, next, 1);
                p = next + 1;
                continue;
            }
            newline(out, ++depth);
        } break;
        case '}':
        case ']':
            newline(out, --depth);
            lg_strbuf_append(out, p, 1);
            break;
        case ',':
            lg_strbuf_append(out, ",", 1);
            newline(out, depth);
            break;
        case ':':
            lg_strbuf_append(out, ": ", 2);
            break;
        default:
            lg_strbuf_append(out, p, 1);
        }
        ++p;
    }
}

/* ---- handlers ---------------------------------------------------------------------------------------------------------------- */

static void handle_home(const lg_admin_request_t *req, lg_admin_response_t *res, void *ctx)
{
    res->content_type = LG_ADMIN_CONTENT_HTML;
    lg__admin_home(&res->body);
}

static void handle_help(const lg_admin_request_t *req, lg_admin_response_t *res, void *ctx)
{
    lg__admin_help(&res->body);
}

static void handle_ready(const lg_admin_request_t *req, lg_admin_response_t *res, void *ctx)
{
    lg_server_state_t state = lg_stats_server_state(lg_admin_healthcheck_failed());
    lg_strbuf_printf(&res->body, "%s\n", state_names[state]);
    res->status = state == LG_SERVER_LIVE ? 200 : 503;
}

static void json_field(lg_strbuf_t *out, const char *name, const char *value, int last)
{
    lg_strbuf_printf(out, " \"%s\": ", name);
    lg_strbuf_json_string(out, value, strlen(value));
    lg_strbuf_puts(out, last ? "\n" : ",\n");
}

static void handle_server_info(const lg_admin_request_t *req, lg_admin_response_t *res, void *ctx)
{
    lg_strbuf_t *b = &res->body;
    lg_server_state_t state = lg_stats_server_state(lg_admin_healthcheck_failed());
    uint64_t uptime = lg_stats_uptime_s();
    char duration[32];
    snprintf(duration, sizeof(duration), "%llus", (unsigned long long)uptime);

    res->content_type = LG_ADMIN_CONTENT_JSON;
    pthread_mutex_lock(&info_mutex);
    lg_strbuf_puts(b, "{\n");
    json_field(b, "version", info.version != NULL ? info.version : "unknown", 0);
    json_field(b, "state", state_names[state], 0);
    json_field(b, "uptime_current_epoch", duration, 0);
    json_field(b, "uptime_all_epochs", duration, 0);
    json_field(b, "hot_restart_version", info.hot_restart_version != NULL ? info.hot_restart_version : "disabled", 0);
    lg_strbuf_puts(b, " \"command_line_options\": ");
    lg_admin_json_pretty(b, info.command_line_options != NULL ? info.command_line_options : "{}", 1);
    lg_strbuf_puts(b, ",\n \"node\": ");
    lg_admin_json_pretty(b, info.node != NULL ? info.node : "{}", 1);
    lg_strbuf_puts(b, "\n}\n");
    pthread_mutex_unlock(&info_mutex);
}

static void handle_hot_restart_version(const lg_admin_request_t *req, lg_admin_response_t *res, void *ctx)
{
    pthread_mutex_lock(&info_mutex);
    lg_strbuf_puts(&res->body, info.hot_restart_version != NULL ? info.hot_restart_version : "disabled");
    pthread_mutex_unlock(&info_mutex);
}

static uint64_t server_gauge(size_t idx)
{
    return lg_stats_server != NULL ? lg_stats_block_value(lg_stats_server, idx) : 0;
}

/* Envoy's /certs: the certificates of every live TLS context. */
static void handle_certs(const lg_admin_request_t *req, lg_admin_response_t *res, void *ctx)
{
    res->content_type = LG_ADMIN_CONTENT_JSON;
    lg_tls_certs_json(&res->body);
}

static void handle_memory(const lg_admin_request_t *req, lg_admin_response_t *res, void *ctx)
{
    lg__admin_refresh_server_stats();
    res->content_type = LG_ADMIN_CONTENT_JSON;
    lg_strbuf_printf(&res->body,
                     "{\n \"allocated\": \"%llu\",\n \"heap_size\": \"%llu\",\n \"pageheap_unmapped\": \"0\",\n"
                     " \"pageheap_free\": \"0\",\n \"total_thread_cache\": \"0\",\n \"total_physical_bytes\": \"%llu\"\n}\n",
                     (unsigned long long)server_gauge(LG_SERVER_STAT_memory_allocated),
                     (unsigned long long)server_gauge(LG_SERVER_STAT_memory_heap_size),
                     (unsigned long long)server_gauge(LG_SERVER_STAT_memory_physical_size));
}

static void handle_healthcheck(const lg_admin_request_t *req, lg_admin_response_t *res, void *ctx)
{
    lg_admin_set_healthcheck_failed(ctx != NULL);
    lg_strbuf_puts(&res->body, "OK\n");
}

static void handle_quit(const lg_admin_request_t *req, lg_admin_response_t *res, void *ctx)
{
    void (*cb)(void) = __atomic_load_n(&quit_cb, __ATOMIC_ACQUIRE);
    LG_INFO(admin, "shutting down from admin handle");
    if (cb != NULL)
        cb();
    lg_strbuf_puts(&res->body, "OK\n");
}

/* ---- /logging ---------------------------------------------------------------------------------------------------------------- */

/* Envoy's /logging accepts spdlog's level names only ("warning", not "warn"). */
static int parse_level(const char *s, size_t len)
{
    for (int l = LG_LOG_TRACE; l <= LG_LOG_OFF; ++l) {
        const char *name = lg_log_level_name((lg_log_level_t)l);
        if (strlen(name) == len && memcmp(name, s, len) == 0)
            return l;
    }
    return -1;
}

static int find_component(const char *s, size_t len)
{
    for (int c = 0; c != LG_LOGC__COUNT; ++c)
        if (strlen(lg_log_component_names[c]) == len && memcmp(lg_log_component_names[c], s, len) == 0)
            return c;
    return -1;
}

static void trim(const char **s, size_t *len)
{
    while (*len != 0 && isspace((unsigned char)**s))
        ++*s, --*len;
    while (*len != 0 && isspace((unsigned char)(*s)[*len - 1]))
        --*len;
}

/* Parses "name1:level1,name2:level2" into levels[] (-1 = unchanged); returns an error or NULL.
 * As in Envoy, every level is checked before any name. */
static const char *parse_paths(const char *v, int *levels)
{
    int unknown_name = 0;
    while (*v != '\0') {
        const char *comma = strchr(v, ','), *end = comma != NULL ? comma : v + strlen(v),
                   *colon = memchr(v, ':', (size_t)(end - v));
        const char *name = v, *level = colon != NULL ? colon + 1 : end;
        size_t name_len = (size_t)((colon != NULL ? colon : end) - v), level_len = (size_t)(end - level);
        v = comma != NULL ? comma + 1 : end;
        trim(&name, &name_len);
        trim(&level, &level_len);
        if (name_len == 0 && level_len == 0 && colon == NULL)
            continue;
        if (name_len == 0 || level_len == 0)
            return "empty logger name or empty logger level";
        int l = parse_level(level, level_len), c = find_component(name, name_len);
        if (l < 0)
            return "unknown logger level";
        if (c < 0)
            unknown_name = 1;
        else
            levels[c] = l;
    }
    return unknown_name ? "unknown logger name" : NULL;
}

static const char *change_levels(const lg_admin_request_t *req)
{
    int levels[LG_LOGC__COUNT];
    if (req->nparams != 1)
        return "invalid number of parameters";
    const char *key = req->params[0].name, *value = req->params[0].value, *err = NULL;
    int l = parse_level(value, strlen(value));
    for (size_t c = 0; c != LG_LOGC__COUNT; ++c)
        levels[c] = strcmp(key, "level") == 0 ? l : -1;
    if (strcmp(key, "paths") == 0) {
        err = parse_paths(value, levels);
    } else if (l < 0) {
        err = "unknown logger level";
    } else if (strcmp(key, "level") != 0) {
        int c = find_component(key, strlen(key));
        if (c < 0)
            return "unknown logger name";
        levels[c] = l;
    }
    if (err != NULL)
        return err;
    if (strcmp(key, "level") == 0)
        LG_INFO(admin, "change all log levels: level='%s'", value);
    for (size_t c = 0; c != LG_LOGC__COUNT; ++c) {
        if (levels[c] < 0)
            continue;
        if (strcmp(key, "level") != 0)
            LG_INFO(admin, "change log level: name='%s' level='%s'", lg_log_component_names[c], lg_log_level_name(levels[c]));
        __atomic_store_n(&lg_log_levels[c], (lg_log_level_t)levels[c], __ATOMIC_RELAXED);
    }
    return NULL;
}

static int component_cmp(const void *a, const void *b)
{
    return strcmp(lg_log_component_names[*(const int *)a], lg_log_component_names[*(const int *)b]);
}

static void handle_logging(const lg_admin_request_t *req, lg_admin_response_t *res, void *ctx)
{
    const char *err = req->nparams != 0 ? change_levels(req) : NULL;
    if (err != NULL) {
        res->status = 400;
        lg_strbuf_printf(&res->body, "error: %s\n\n", err);
        lg_strbuf_puts(&res->body, "usage: /logging?<name>=<level> (change single level)\n"
                                   "usage: /logging?paths=name1:level1,name2:level2,... (change multiple levels)\n"
                                   "usage: /logging?level=<level> (change all levels)\n"
                                   "levels: ");
        for (int l = LG_LOG_TRACE; l <= LG_LOG_OFF; ++l)
            lg_strbuf_printf(&res->body, "%s ", lg_log_level_name((lg_log_level_t)l));
        lg_strbuf_puts(&res->body, "\n");
    }
    int order[LG_LOGC__COUNT];
    for (int c = 0; c != LG_LOGC__COUNT; ++c)
        order[c] = c;
    qsort(order, LG_LOGC__COUNT, sizeof(order[0]), component_cmp);
    lg_strbuf_puts(&res->body, "active loggers:\n");
    for (int i = 0; i != LG_LOGC__COUNT; ++i)
        lg_strbuf_printf(&res->body, "  %s: %s\n", lg_log_component_names[order[i]],
                         lg_log_level_name(__atomic_load_n(&lg_log_levels[order[i]], __ATOMIC_RELAXED)));
    lg_strbuf_puts(&res->body, "\n");
}

void lg__admin_register_basic_handlers(void)
{
    lg_admin_register("/", "Admin home page", 0, handle_home, NULL);
    lg_admin_register("/help", "print out list of admin commands", 0, handle_help, NULL);
    lg_admin_register("/ready", "print server state, return 200 if LIVE, otherwise return 503", 0, handle_ready, NULL);
    lg_admin_register("/server_info", "print server version/status information", 0, handle_server_info, NULL);
    lg_admin_register("/hot_restart_version", "print the hot restart compatibility version", 0, handle_hot_restart_version, NULL);
    lg_admin_register("/memory", "print current allocation/heap usage", 0, handle_memory, NULL);
    lg_admin_register("/certs", "print certs on machine", 0, handle_certs, NULL);
    lg_admin_register("/healthcheck/fail", "cause the server to fail health checks", 1, handle_healthcheck, (void *)1);
    lg_admin_register("/healthcheck/ok", "cause the server to pass health checks", 1, handle_healthcheck, NULL);
    lg_admin_register("/quitquitquit", "exit the server", 1, handle_quit, NULL);
    lg_admin_register("/logging", "query/change logging levels", 1, handle_logging, NULL);
    lg_admin_add_param(
        "/logging", "paths",
        "Change multiple logging levels by setting to <logger_name1>:<desired_level1>,<logger_name2>:<desired_level2>.");
    lg_admin_add_param("/logging", "level",
                       "desired logging level, this will change all loggers's level; One of (, trace, debug, info, warning, error, "
                       "critical, off)");
}
