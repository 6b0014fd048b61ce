/*
 * Logging with Envoy's levels, component names and --log-format flags (a subset
 * of spdlog's pattern language). Each line goes out in one write() so that lines
 * from different threads never interleave.
 */
#include <errno.h>
#include <fcntl.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include "legate/common.h"

#define DEFAULT_FORMAT "[%Y-%m-%d %T.%e][%t][%l][%n] [%g:%#] %v"

lg_log_level_t lg_log_levels[LG_LOGC__COUNT] = {[0 ... LG_LOGC__COUNT - 1] = LG_LOG_INFO};

#define LG__LOG_NAME(n) #n,
const char *const lg_log_component_names[LG_LOGC__COUNT] = {LG_LOG_COMPONENTS(LG__LOG_NAME)};
#undef LG__LOG_NAME

static const char *const level_names[] = {"trace", "debug", "info", "warning", "error", "critical", "off"};
static const char level_short[] = "TDIWECO";

/* The pattern as literal runs and flags; set by lg_log_configure before threads start. */
typedef struct st_log_token_t {
    char flag; /* '\0' for a literal */
    char *literal;
} log_token_t;

/* DEFAULT_FORMAT, compiled by hand so that logging works before lg_log_configure. */
static log_token_t default_tokens[] = {
    {0, "["}, {'Y'},     {0, "-"}, {'m'},     {0, "-"}, {'d'},      {0, " "}, {'T'},    {0, "."}, {'e'},     {0, "]["},
    {'t'},    {0, "]["}, {'l'},    {0, "]["}, {'n'},    {0, "] ["}, {'g'},    {0, ":"}, {'#'},    {0, "] "}, {'v'},
};
static log_token_t *tokens = default_tokens;
static size_t ntokens = LG_ARRAY_SIZE(default_tokens);
static int log_fd = 2;
static char *log_path;

const char *lg_log_level_name(lg_log_level_t l)
{
    return (unsigned)l < LG_ARRAY_SIZE(level_names) ? level_names[l] : "unknown";
}

int lg_log_level_parse(const char *name)
{
    for (size_t i = 0; i != LG_ARRAY_SIZE(level_names); ++i)
        if (strcmp(name, level_names[i]) == 0)
            return (int)i;
    return strcmp(name, "warn") == 0 ? LG_LOG_WARN : -1;
}

static void add_token(char flag, const char *lit, size_t len)
{
    if (tokens == default_tokens) {
        tokens = NULL;
        ntokens = 0;
    }
    tokens = lg_realloc(tokens, (ntokens + 1) * sizeof(*tokens));
    tokens[ntokens++] = (log_token_t){flag, flag == '\0' ? lg_strndup(lit, len) : NULL};
}

static void free_tokens(void)
{
    if (tokens == default_tokens)
        return;
    for (size_t i = 0; i != ntokens; ++i)
        free(tokens[i].literal);
    free(tokens);
    tokens = default_tokens;
    ntokens = LG_ARRAY_SIZE(default_tokens);
}

static void compile_format(const char *fmt)
{
    const char *lit = fmt;
    for (const char *p = fmt; *p != '\0'; ++p) {
        if (*p != '%' || p[1] == '\0')
            continue;
        if (p != lit)
            add_token('\0', lit, (size_t)(p - lit));
        ++p;
        if (*p == '%')
            add_token('\0', "%", 1);
        else
            add_token(*p, NULL, 0);
        lit = p + 1;
    }
    if (*lit != '\0')
        add_token('\0', lit, strlen(lit));
}

int lg_log_configure(const char *format, const char *path, lg_error_t *err)
{
    if (path != NULL) {
        int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (fd == -1)
            return lg_error(err, "unable to open log file %s: %s", path, strerror(errno));
        if (log_fd != 2)
            close(log_fd);
        log_fd = fd;
        free(log_path);
        log_path = lg_strdup(path);
    }
    free_tokens();
    if (format != NULL && strcmp(format, DEFAULT_FORMAT) != 0)
        compile_format(format);
    return 0;
}

void lg_log_reopen(void)
{
    if (log_path == NULL)
        return;
    int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd == -1)
        return;
    /* dup2 swaps the file under the same descriptor, so writers never see a closed fd. */
    dup2(fd, log_fd);
    close(fd);
}

static long thread_id(void)
{
    static __thread long tid;
    if (tid == 0)
        tid = syscall(SYS_gettid);
    return tid;
}

/* Appends the message with newlines escaped (%_) or JSON-escaped without quotes (%j). */
static void append_escaped(lg_strbuf_t *b, const char *msg, int json)
{
    if (json) {
        size_t start = b->len;
        lg_strbuf_json_string(b, msg, strlen(msg));
        memmove(b->base + start, b->base + start + 1, b->len - start - 2);
        b->len -= 2;
        b->base[b->len] = '\0';
        return;
    }
    for (const char *p = msg; *p != '\0'; ++p) {
        if (*p == '\n')
            lg_strbuf_append(b, "\\n", 2);
        else if (*p == '\r')
            lg_strbuf_append(b, "\\r", 2);
        else
            lg_strbuf_append(b, p, 1);
    }
}

typedef struct st_log_line_t {
    lg_log_component_t comp;
    lg_log_level_t level;
    const char *file;
    int line;
    const char *msg;
    struct timeval tv;
    struct tm tm;
} log_line_t;

static int append_time_flag(lg_strbuf_t *b, char flag, const log_line_t *l)
{
    const struct tm *tm = &l->tm;
    char buf[64];
    switch (flag) {
    case 'Y':
        lg_strbuf_printf(b, "%04d", tm->tm_year + 1900);
        break;
    case 'y':
        lg_strbuf_printf(b, "%02d", tm->tm_year % 100);
        break;
    case 'm':
        lg_strbuf_printf(b, "%02d", tm->tm_mon + 1);
        break;
    case 'd':
        lg_strbuf_printf(b, "%02d", tm->tm_mday);
        break;
    case 'H':
        lg_strbuf_printf(b, "%02d", tm->tm_hour);
        break;
    case 'M':
        lg_strbuf_printf(b, "%02d", tm->tm_min);
        break;
    case 'S':
        lg_strbuf_printf(b, "%02d", tm->tm_sec);
        break;
    case 'T':
        lg_strbuf_printf(b, "%02d:%02d:%02d", tm->tm_hour, tm->tm_min, tm->tm_sec);
        break;
    case 'D':
        lg_strbuf_printf(b, "%02d/%02d/%02d", tm->tm_mon + 1, tm->tm_mday, tm->tm_year % 100);
        break;
    case 'e':
        lg_strbuf_printf(b, "%03ld", (long)l->tv.tv_usec / 1000);
        break;
    case 'f':
        lg_strbuf_printf(b, "%06ld", (long)l->tv.tv_usec);
        break;
    case 'F':
        lg_strbuf_printf(b, "%09ld", (long)l->tv.tv_usec * 1000);
        break;
    case 'E':
        lg_strbuf_printf(b, "%lld", (long long)l->tv.tv_sec);
        break;
    case 'z':
        strftime(buf, sizeof(buf), "%z", tm);
        lg_strbuf_printf(b, "%.3s:%s", buf, buf + 3);
        break;
    default:
        return 0;
    }
    return 1;
}

static void append_flag(lg_strbuf_t *b, char flag, const log_line_t *l)
{
    if (append_time_flag(b, flag, l))
        return;
    switch (flag) {
    case 'l':
        lg_strbuf_puts(b, lg_log_level_name(l->level));
        break;
    case 'L':
        lg_strbuf_append(b, level_short + l->level, 1);
        break;
    case 'n':
        lg_strbuf_puts(b, lg_log_component_names[l->comp]);
        break;
    case 'v':
        lg_strbuf_puts(b, l->msg);
        break;
    case '_':
        append_escaped(b, l->msg, 0);
        break;
    case 'j':
        append_escaped(b, l->msg, 1);
        break;
    case 't':
        lg_strbuf_printf(b, "%ld", thread_id());
        break;
    case 'P':
        lg_strbuf_printf(b, "%ld", (long)getpid());
        break;
    case 'g':
        lg_strbuf_puts(b, l->file);
        break;
    case 's': {
        const char *slash = strrchr(l->file, '/');
        lg_strbuf_puts(b, slash != NULL ? slash + 1 : l->file);
    } break;
    case '#':
        lg_strbuf_printf(b, "%d", l->line);
        break;
    case '!':
        break;
    default:
        lg_strbuf_printf(b, "%%%c", flag);
        break;
    }
}

void lg_log_write(lg_log_component_t c, lg_log_level_t level, const char *file, int line, const char *fmt, ...)
{
    char stackmsg[1024], *msg = stackmsg;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(stackmsg, sizeof(stackmsg), fmt, ap);
    va_end(ap);
    if (n >= (int)sizeof(stackmsg)) {
        msg = lg_malloc((size_t)n + 1);
        va_start(ap, fmt);
        vsnprintf(msg, (size_t)n + 1, fmt, ap);
        va_end(ap);
    }

    log_line_t l = {c, level, file, line, msg};
    gettimeofday(&l.tv, NULL);
    localtime_r(&l.tv.tv_sec, &l.tm);
    lg_strbuf_t b = {NULL};
    for (size_t i = 0; i != ntokens; ++i) {
        if (tokens[i].flag == '\0')
            lg_strbuf_puts(&b, tokens[i].literal);
        else
            append_flag(&b, tokens[i].flag, &l);
    }
    lg_strbuf_append(&b, "\n", 1);
    ssize_t wret = write(log_fd, b.base, b.len);
    (void)wret;
    lg_strbuf_free(&b);
    if (msg != stackmsg)
        free(msg);
}
