/*
 * Access logs: compiling AccessLog configs (loggers, formats, filters),
 * writing entries from the workers, and the process-wide log files with the
 * flusher thread that writes them (see access_log.h for the design).
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include "legate/access_log.h"
#include "legate/admin.h"
#include "legate/format.h"
#include "legate/http.h"
#include "legate/pbjson.h"
#include "legate/route.h"
#include "legate/server.h"
#include "legate/worker-t.h"
#include "envoy/extensions/access_loggers/file/v3/file.pb-c.h"
#include "envoy/extensions/access_loggers/stream/v3/stream.pb-c.h"

/* Envoy still reads the deprecated format fields (text_format, format, json_format, typed_json_format). */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

/* Envoy's default access log format (SubstitutionFormatUtils::DEFAULT_FORMAT). */
static const char default_format[] =
    "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% "
    "%BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" "
    "\"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

#define FLUSH_BYTES (64 * 1024) /* a buffer this full is written at once (Envoy's MIN_FLUSH_SIZE) */
#define SPARE_MAX (1024 * 1024) /* a written buffer larger than this is given back to malloc */

/* Prepends a field path element: "a" + "b: msg" -> "a.b: msg", "a" + "[1]: msg"
 * -> "a[1]: msg", "a" + "a message" -> "a: a message". A message starts with a
 * path when no space comes before its first ": ". */
static int __attribute__((format(printf, 2, 3))) errp(lg_error_t *err, const char *fmt, ...)
{
    char prefix[256], old[LG_ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof(old));
    const char *colon = strstr(old, ": ");
    int has_path = colon != NULL && colon != old && memchr(old, ' ', (size_t)(colon - old)) == NULL;
    const char *sep = !has_path ? ": " : old[0] == '[' ? "" : ".";
    snprintf(err->msg, sizeof(err->msg), "%s%s%.1700s", prefix, sep, old);
    return -1;
}

/* ==== files ==== */

/* One writer's buffer pair. `cur` is what the writer appends to; it borrows
 * it with an exchange (leaving NULL) and puts it back when the entry is
 * complete. The flusher takes `cur` only when it is there, by swapping in
 * `spare` with a compare-and-swap, so neither side ever waits. */
typedef struct st_lg__al_slot_t {
    lg_strbuf_t *cur;
    lg_strbuf_t *spare; /* the flusher's */
    lg_strbuf_t bufs[2];
} lg__al_slot_t;

typedef struct st_lg__al_file_t {
    struct st_lg__al_file_t *next;
    char *path; /* NULL for stdout and stderr */
    int fd;
    int write_error_logged;
    pthread_mutex_t shared_lock; /* held by a non-worker thread while it uses the last slot */
    size_t n_slots;              /* one per worker, plus the shared one */
    lg__al_slot_t slots[];
} lg__al_file_t;

static struct {
    pthread_mutex_t lock; /* the file list, write passes, reopening, the flusher's life */
    lg__al_file_t *files;
    size_t n_workers;
    uint64_t flush_ms; /* read by the flusher with __atomic_load_n */
    int wake_fd;       /* eventfd the flusher polls; -1 before it starts */
    int stop;
    int flusher_running;
    pthread_t flusher;
} al = {PTHREAD_MUTEX_INITIALIZER, NULL, 0, 10000, -1, 0, 0};

static void wake_flusher(void)
{
    uint64_t one = 1;
    if (al.wake_fd >= 0 && write(al.wake_fd, &one, sizeof(one)) < 0) {
        /* the counter is saturated: the flusher is awake anyway */
    }
}

static void write_all(lg__al_file_t *f, const char *p, size_t n)
{
    while (n != 0) {
        ssize_t w = write(f->fd, p, n);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        struct pollfd pfd = {f->fd, POLLOUT, 0};
        if (w < 0 && errno == EAGAIN && poll(&pfd, 1, 1000) > 0)
            continue;
        if (!f->write_error_logged) {
            f->write_error_logged = 1;
            LG_ERROR(main, "access log %s: write failed (%s); entries are dropped", f->path ? f->path : "(stdout/stderr)",
                     w < 0 ? strerror(errno) : "no progress");
        }
        return;
    }
}

/* Writes every buffer that no writer is holding (al.lock held). Returns the
 * number of buffers skipped because their writer was appending. */
static size_t write_pass_locked(void)
{
    size_t busy = 0;
    for (lg__al_file_t *f = al.files; f != NULL; f = f->next) {
        for (size_t i = 0; i != f->n_slots; ++i) {
            lg__al_slot_t *s = &f->slots[i];
            lg_strbuf_t *b = __atomic_load_n(&s->cur, __ATOMIC_ACQUIRE);
            if (b == NULL || !__atomic_compare_exchange_n(&s->cur, &b, s->spare, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
                ++busy;
                continue;
            }
            if (b->len != 0)
                write_all(f, b->base, b->len);
            b->len = 0;
            if (b->cap > SPARE_MAX)
                lg_strbuf_free(b);
            s->spare = b;
        }
    }
    return busy;
}

static void *flusher_main(void *arg)
{
    struct pollfd pfd = {al.wake_fd, POLLIN, 0};
    size_t busy = 0;
    for (;;) {
        /* a buffer skipped while its worker was appending is retried soon, not an interval later */
        uint64_t ms = busy != 0 ? 1 : __atomic_load_n(&al.flush_ms, __ATOMIC_RELAXED), count;
        if (poll(&pfd, 1, ms > INT32_MAX ? INT32_MAX : (int)ms) > 0 && read(al.wake_fd, &count, sizeof(count)) < 0) {
            /* nonblocking: another wake-up raced us to it */
        }
        int stop = __atomic_load_n(&al.stop, __ATOMIC_ACQUIRE);
        pthread_mutex_lock(&al.lock);
        busy = write_pass_locked();
        pthread_mutex_unlock(&al.lock);
        if (stop)
            return NULL;
    }
}

/* Starts the flusher with every signal blocked, so that the process's
 * signals keep going to the thread that waits for them (al.lock held). */
static void flusher_start_locked(void)
{
    if (al.flusher_running)
        return;
    if ((al.wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0) {
        LG_CRITICAL(main, "access log: eventfd failed: %s", strerror(errno));
        abort();
    }
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&al.flusher, NULL, flusher_main, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        LG_CRITICAL(main, "access log: cannot start the flusher thread: %s", strerror(rc));
        abort();
    }
    al.flusher_running = 1;
}

static lg__al_file_t *file_new(const char *path, int fd)
{
    size_t n_slots = al.n_workers + 1;
    lg__al_file_t *f = lg_calloc(1, sizeof(*f) + n_slots * sizeof(f->slots[0]));
    f->path = path != NULL ? lg_strdup(path) : NULL;
    f->fd = fd;
    pthread_mutex_init(&f->shared_lock, NULL);
    f->n_slots = n_slots;
    for (size_t i = 0; i != n_slots; ++i) {
        f->slots[i].cur = &f->slots[i].bufs[0];
        f->slots[i].spare = &f->slots[i].bufs[1];
    }
    return f;
}

static void file_free(lg__al_file_t *f)
{
    if (f->path != NULL)
        close(f->fd);
    for (size_t i = 0; i != f->n_slots; ++i) {
        lg_strbuf_free(&f->slots[i].bufs[0]);
        lg_strbuf_free(&f->slots[i].bufs[1]);
    }
    pthread_mutex_destroy(&f->shared_lock);
    free(f->path);
    free(f);
}

/* The file for `path`, or stdout/stderr (`path` NULL, `std_fd` 1 or 2), opened
 * on first use and shared afterwards. */
static lg__al_file_t *file_get(const char *path, int std_fd, lg_error_t *err)
{
    pthread_mutex_lock(&al.lock);
    lg__al_file_t *f = al.files;
    while (f != NULL && !(path != NULL ? f->path != NULL && strcmp(f->path, path) == 0 : f->path == NULL && f->fd == std_fd))
        f = f->next;
    if (f == NULL) {
        int fd = path != NULL ? open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644) : std_fd;
        if (fd < 0) {
            lg_error(err, "unable to open file '%s': %s", path, strerror(errno));
        } else {
            f = file_new(path, fd);
            f->next = al.files;
            al.files = f;
            flusher_start_locked();
        }
    }
    pthread_mutex_unlock(&al.lock);
    return f;
}

/* Borrows the calling thread's buffer of `f`; give it back with slot_give(). */
static lg_strbuf_t *slot_take(lg__al_file_t *f, lg__al_slot_t **slot)
{
    lg_worker_t *w = lg_current_worker;
    size_t i = f->n_slots - 1;
    if (w != NULL && w->index < i)
        i = w->index;
    else
        pthread_mutex_lock(&f->shared_lock);
    *slot = &f->slots[i];
    lg_strbuf_t *b = __atomic_exchange_n(&f->slots[i].cur, NULL, __ATOMIC_ACQUIRE);
    assert(b != NULL); /* only the flusher swaps it, and never leaves NULL */
    return b;
}

static void slot_give(lg__al_file_t *f, lg__al_slot_t *slot, lg_strbuf_t *b, size_t len_before)
{
    size_t len = b->len;
    __atomic_store_n(&slot->cur, b, __ATOMIC_RELEASE);
    if (slot == &f->slots[f->n_slots - 1])
        pthread_mutex_unlock(&f->shared_lock);
    if (len / FLUSH_BYTES != len_before / FLUSH_BYTES)
        wake_flusher();
}

static void admin_reopen_logs(const lg_admin_request_t *req, lg_admin_response_t *res, void *ctx)
{
    lg_access_log_reopen();
    lg_log_reopen();
    lg_strbuf_puts(&res->body, "OK\n");
}

void lg_access_log_configure(size_t concurrency, uint64_t flush_interval_ms)
{
    pthread_mutex_lock(&al.lock);
    al.n_workers = concurrency;
    __atomic_store_n(&al.flush_ms, flush_interval_ms != 0 ? flush_interval_ms : 1, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&al.lock);
    wake_flusher();
    lg_admin_register("/reopen_logs", "reopen access logs", 1, admin_reopen_logs, NULL);
}

void lg_access_log_start(void)
{
    pthread_mutex_lock(&al.lock);
    flusher_start_locked();
    pthread_mutex_unlock(&al.lock);
}

void lg_access_log_flush(void)
{
    pthread_mutex_lock(&al.lock);
    write_pass_locked();
    pthread_mutex_unlock(&al.lock);
}

void lg_access_log_reopen(void)
{
    pthread_mutex_lock(&al.lock);
    write_pass_locked();
    for (lg__al_file_t *f = al.files; f != NULL; f = f->next) {
        if (f->path == NULL)
            continue;
        int fd = open(f->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0) {
            LG_ERROR(main, "access log %s: cannot reopen (%s); still writing to the old file", f->path, strerror(errno));
            continue;
        }
        /* dup2 swaps the file under the same descriptor */
        dup2(fd, f->fd);
        close(fd);
        f->write_error_logged = 0;
    }
    pthread_mutex_unlock(&al.lock);
}

void lg_access_log_shutdown(void)
{
    if (al.flusher_running) {
        __atomic_store_n(&al.stop, 1, __ATOMIC_RELEASE);
        wake_flusher();
        pthread_join(al.flusher, NULL);
        al.flusher_running = 0;
        al.stop = 0;
    }
    pthread_mutex_lock(&al.lock);
    write_pass_locked();
    while (al.files != NULL) {
        lg__al_file_t *f = al.files;
        al.files = f->next;
        file_free(f);
    }
    if (al.wake_fd >= 0)
        close(al.wake_fd);
    al.wake_fd = -1;
    pthread_mutex_unlock(&al.lock);
    lg_admin_unregister("/reopen_logs");
}

/* ==== filters ==== */

typedef enum en_lg__al_filter_type_t {
    FILTER_STATUS_CODE,
    FILTER_DURATION,
    FILTER_NOT_HEALTH_CHECK,
    FILTER_TRACEABLE,
    FILTER_RUNTIME,
    FILTER_AND,
    FILTER_OR,
    FILTER_HEADER,
    FILTER_RESPONSE_FLAG,
    FILTER_GRPC_STATUS,
    FILTER_LOG_TYPE,
} lg__al_filter_type_t;

typedef struct st_lg__al_filter_t lg__al_filter_t;
struct st_lg__al_filter_t {
    lg__al_filter_type_t type;
    union {
        struct {
            Envoy__Config__Accesslog__V3__ComparisonFilter__Op op;
            uint64_t value;
        } cmp;
        struct {
            uint64_t numerator, denominator;
            int independent;
        } runtime;
        struct {
            lg__al_filter_t *items;
            size_t n;
        } list;
        lg_header_matcher_t header;
        struct {
            uint32_t mask; /* LG_RF bits; for statuses and log types, 1 << value */
            int any;       /* response_flag_filter without flags: any flag */
            int exclude;
        } set;
    };
};

static void filter_dispose(lg__al_filter_t *f)
{
    if (f->type == FILTER_AND || f->type == FILTER_OR) {
        for (size_t i = 0; i != f->list.n; ++i)
            filter_dispose(&f->list.items[i]);
        free(f->list.items);
    } else if (f->type == FILTER_HEADER) {
        lg_header_matcher_dispose(&f->header);
    }
}

/* Runtime values come from the default: Legate has no runtime layer. */
static int compile_comparison(const Envoy__Config__Accesslog__V3__ComparisonFilter *c, lg__al_filter_t *out, lg_error_t *err)
{
    if (c == NULL)
        return lg_error(err, "comparison: value is required");
    if (c->op > ENVOY__CONFIG__ACCESSLOG__V3__COMPARISON_FILTER__OP__LE)
        return lg_error(err, "comparison.op: value must be one of the defined enum values");
    if (c->value == NULL)
        return lg_error(err, "comparison.value: value is required");
    if (c->value->runtime_key[0] == '\0')
        return lg_error(err, "comparison.value.runtime_key: value length must be at least 1 characters");
    out->cmp.op = c->op;
    out->cmp.value = c->value->default_value;
    return 0;
}

static int compile_filter(const Envoy__Config__Accesslog__V3__AccessLogFilter *m, lg__al_filter_t *out, lg_error_t *err);

static int compile_filter_list(Envoy__Config__Accesslog__V3__AccessLogFilter *const *items, size_t n, lg__al_filter_t *out,
                               lg_error_t *err)
{
    if (n < 2)
        return lg_error(err, "filters: value must contain at least 2 item(s)");
    out->list.items = lg_calloc(n, sizeof(*out->list.items));
    for (size_t i = 0; i != n; ++i) {
        if (compile_filter(items[i], &out->list.items[i], err) != 0) {
            out->list.n = i;
            return errp(err, "filters[%zu]", i);
        }
    }
    out->list.n = n;
    return 0;
}

static int compile_response_flags(const Envoy__Config__Accesslog__V3__ResponseFlagFilter *m, lg__al_filter_t *out, lg_error_t *err)
{
#define LG__AL_RF_NAME(name, s) s,
    static const char *const names[] = {LG_RESPONSE_FLAGS(LG__AL_RF_NAME)};
#undef LG__AL_RF_NAME
    out->set.any = m->n_flags == 0;
    for (size_t i = 0; i != m->n_flags; ++i) {
        size_t k = 0;
        while (k != LG_RF__COUNT && strcmp(names[k], m->flags[i]) != 0)
            ++k;
        if (k != LG_RF__COUNT)
            out->set.mask |= UINT32_C(1) << k;
        else if (strcmp(m->flags[i], "DR") != 0) /* DR (downstream remote reset) is valid but never set here */
            return lg_error(err, "flags[%zu]: unknown response flag \"%s\"", i, m->flags[i]);
    }
    return 0;
}

static int compile_enum_set(const int *values, size_t n, int max, lg__al_filter_t *out, lg_error_t *err)
{
    for (size_t i = 0; i != n; ++i) {
        if (values[i] < 0 || values[i] > max)
            return lg_error(err, "[%zu]: value must be one of the defined enum values", i);
        out->set.mask |= UINT32_C(1) << values[i];
    }
    return 0;
}

static int compile_runtime(const Envoy__Config__Accesslog__V3__RuntimeFilter *m, lg__al_filter_t *out, lg_error_t *err)
{
    if (m->runtime_key[0] == '\0')
        return lg_error(err, "runtime_key: value length must be at least 1 characters");
    static const uint64_t denominators[] = {100, 10000, 1000000};
    const Envoy__Type__V3__FractionalPercent *p = m->percent_sampled;
    if (p != NULL && (unsigned)p->denominator >= LG_ARRAY_SIZE(denominators))
        return lg_error(err, "percent_sampled.denominator: value must be one of the defined enum values");
    out->runtime.numerator = p != NULL ? p->numerator : 0;
    out->runtime.denominator = p != NULL ? denominators[p->denominator] : 100;
    out->runtime.independent = m->use_independent_randomness;
    return 0;
}

static int compile_filter(const Envoy__Config__Accesslog__V3__AccessLogFilter *m, lg__al_filter_t *out, lg_error_t *err)
{
    switch (m->filter_specifier_case) {
    case ENVOY__CONFIG__ACCESSLOG__V3__ACCESS_LOG_FILTER__FILTER_SPECIFIER_STATUS_CODE_FILTER:
        out->type = FILTER_STATUS_CODE;
        if (compile_comparison(m->status_code_filter->comparison, out, err) != 0)
            return errp(err, "status_code_filter");
        return 0;
    case ENVOY__CONFIG__ACCESSLOG__V3__ACCESS_LOG_FILTER__FILTER_SPECIFIER_DURATION_FILTER:
        out->type = FILTER_DURATION;
        if (compile_comparison(m->duration_filter->comparison, out, err) != 0)
            return errp(err, "duration_filter");
        return 0;
    case ENVOY__CONFIG__ACCESSLOG__V3__ACCESS_LOG_FILTER__FILTER_SPECIFIER_NOT_HEALTH_CHECK_FILTER:
        out->type = FILTER_NOT_HEALTH_CHECK;
        return 0;
    case ENVOY__CONFIG__ACCESSLOG__V3__ACCESS_LOG_FILTER__FILTER_SPECIFIER_TRACEABLE_FILTER:
        out->type = FILTER_TRACEABLE;
        LG_WARN(config, "access_log traceable_filter: Legate does not trace, so no request is traceable and the filter "
                        "never matches");
        return 0;
    case ENVOY__CONFIG__ACCESSLOG__V3__ACCESS_LOG_FILTER__FILTER_SPECIFIER_RUNTIME_FILTER:
        out->type = FILTER_RUNTIME;
        return compile_runtime(m->runtime_filter, out, err) != 0 ? errp(err, "runtime_filter") : 0;
    case ENVOY__CONFIG__ACCESSLOG__V3__ACCESS_LOG_FILTER__FILTER_SPECIFIER_AND_FILTER:
        out->type = FILTER_AND;
        return compile_filter_list(m->and_filter->filters, m->and_filter->n_filters, out, err) != 0 ? errp(err, "and_filter") : 0;
    case ENVOY__CONFIG__ACCESSLOG__V3__ACCESS_LOG_FILTER__FILTER_SPECIFIER_OR_FILTER:
        out->type = FILTER_OR;
        return compile_filter_list(m->or_filter->filters, m->or_filter->n_filters, out, err) != 0 ? errp(err, "or_filter") : 0;
    case ENVOY__CONFIG__ACCESSLOG__V3__ACCESS_LOG_FILTER__FILTER_SPECIFIER_HEADER_FILTER:
        if (m->header_filter->header == NULL)
            return lg_error(err, "header_filter.header: value is required");
        if (lg_header_matcher_compile(m->header_filter->header, &out->header, err) != 0)
            return errp(err, "header_filter.header");
        out->type = FILTER_HEADER;
        return 0;
    case ENVOY__CONFIG__ACCESSLOG__V3__ACCESS_LOG_FILTER__FILTER_SPECIFIER_RESPONSE_FLAG_FILTER:
        out->type = FILTER_RESPONSE_FLAG;
        return compile_response_flags(m->response_flag_filter, out, err) != 0 ? errp(err, "response_flag_filter") : 0;
    case ENVOY__CONFIG__ACCESSLOG__V3__ACCESS_LOG_FILTER__FILTER_SPECIFIER_GRPC_STATUS_FILTER:
        out->type = FILTER_GRPC_STATUS;
        out->set.exclude = m->grpc_status_filter->exclude;
        return compile_enum_set((const int *)m->grpc_status_filter->statuses, m->grpc_status_filter->n_statuses, 16, out, err) != 0
                   ? errp(err, "grpc_status_filter.statuses")
                   : 0;
    case ENVOY__CONFIG__ACCESSLOG__V3__ACCESS_LOG_FILTER__FILTER_SPECIFIER_LOG_TYPE_FILTER:
        out->type = FILTER_LOG_TYPE;
        out->set.exclude = m->log_type_filter->exclude;
        return compile_enum_set((const int *)m->log_type_filter->types, m->log_type_filter->n_types, 31, out, err) != 0
                   ? errp(err, "log_type_filter.types")
                   : 0;
    case ENVOY__CONFIG__ACCESSLOG__V3__ACCESS_LOG_FILTER__FILTER_SPECIFIER_METADATA_FILTER:
        return lg_error(err, "metadata_filter: metadata filters are not supported");
    case ENVOY__CONFIG__ACCESSLOG__V3__ACCESS_LOG_FILTER__FILTER_SPECIFIER_EXTENSION_FILTER:
        return lg_error(err, "extension_filter: Didn't find a registered implementation for name: '%s'", m->extension_filter->name);
    default:
        return lg_error(err, "filter_specifier: exactly one filter must be set");
    }
}

static int compare(const lg__al_filter_t *f, uint64_t v)
{
    switch (f->cmp.op) {
    case ENVOY__CONFIG__ACCESSLOG__V3__COMPARISON_FILTER__OP__GE:
        return v >= f->cmp.value;
    case ENVOY__CONFIG__ACCESSLOG__V3__COMPARISON_FILTER__OP__LE:
        return v <= f->cmp.value;
    default:
        return v == f->cmp.value;
    }
}

/* Envoy's currentDuration(): to the end of the stream, or to now if it has not ended. */
static uint64_t duration_ms(const lg_stream_info_t *si)
{
    uint64_t end = si->last_downstream_tx_us != 0 ? si->last_downstream_tx_us : lg_now_us();
    return end > si->start_us ? (end - si->start_us) / 1000 : 0;
}

/* The stream id as Envoy's UUID extension turns it into a number (its first 8 hex digits). */
static int request_id_integer(h2o_iovec_t id, uint64_t *out)
{
    if (id.base == NULL || id.len < 8)
        return 0;
    uint64_t v = 0;
    for (size_t i = 0; i != 8; ++i) {
        int c = id.base[i], d = c >= '0' && c <= '9'   ? c - '0'
                                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                                       : -1;
        if (d < 0)
            return 0;
        v = v * 16 + (uint64_t)d;
    }
    *out = v;
    return 1;
}

static int runtime_sampled(const lg__al_filter_t *f, const lg_stream_info_t *si)
{
    uint64_t r;
    if (f->runtime.independent || !request_id_integer(si->request_id, &r))
        r = lg_random();
    return r % f->runtime.denominator < f->runtime.numerator;
}

static int in_set(const lg__al_filter_t *f, int v)
{
    int found = v >= 0 && v < 32 && (f->set.mask >> v & 1) != 0;
    return f->set.exclude ? !found : found;
}

static int filter_eval(const lg__al_filter_t *f, const lg_stream_info_t *si, int log_type)
{
    static const lg_req_head_t no_request;
    switch (f->type) {
    case FILTER_STATUS_CODE:
        return compare(f, (uint64_t)si->response_code);
    case FILTER_DURATION:
        return compare(f, duration_ms(si));
    case FILTER_NOT_HEALTH_CHECK:
        return 1; /* no health check filter marks streams */
    case FILTER_TRACEABLE:
        return 0;
    case FILTER_RUNTIME:
        return runtime_sampled(f, si);
    case FILTER_AND:
    case FILTER_OR:
        for (size_t i = 0; i != f->list.n; ++i)
            if (filter_eval(&f->list.items[i], si, log_type) != (f->type == FILTER_AND))
                return f->type == FILTER_OR;
        return f->type == FILTER_AND;
    case FILTER_HEADER:
        return lg_header_matcher_match_req(&f->header, si->request != NULL ? si->request : &no_request);
    case FILTER_RESPONSE_FLAG:
        return f->set.any ? si->response_flags != 0 : (si->response_flags & f->set.mask) != 0;
    case FILTER_GRPC_STATUS: {
        int64_t status = 2; /* UNKNOWN when there is nothing to go by */
        lg_format_grpc_status(si, 0, &status);
        return in_set(f, (int)status);
    }
    case FILTER_LOG_TYPE:
        return in_set(f, log_type);
    }
    return 0;
}

/* ==== formats ==== */

typedef enum en_lg__al_json_type_t { JSON_FORMAT, JSON_NUMBER, JSON_OBJECT, JSON_LIST } lg__al_json_type_t;

/* A JSON format: objects and lists of format strings and number constants. */
typedef struct st_lg__al_json_t lg__al_json_t;
struct st_lg__al_json_t {
    lg__al_json_type_t type;
    lg_format_t *format; /* JSON_FORMAT */
    double number;       /* JSON_NUMBER */
    char **keys;         /* JSON_OBJECT: each rendered as `"key":` */
    lg__al_json_t *items;
    size_t n;
};

struct st_lg_access_log_t {
    lg__al_filter_t *filter; /* NULL: every stream */
    lg__al_file_t *file;
    lg_format_t *text; /* a text format, or NULL for JSON */
    lg__al_json_t json;
    int typed;      /* JSON values keep their types (not the deprecated json_format) */
    int omit_empty; /* omit_empty_values: null JSON values are left out */
};

static void json_dispose(lg__al_json_t *j)
{
    lg_format_free(j->format);
    for (size_t i = 0; i != j->n; ++i) {
        json_dispose(&j->items[i]);
        if (j->keys != NULL)
            free(j->keys[i]);
    }
    free(j->keys);
    free(j->items);
}

static int compile_json_value(const Google__Protobuf__Value *v, int flags, int sort, lg__al_json_t *out, lg_error_t *err);

static int compare_keys(const void *a, const void *b)
{
    const Google__Protobuf__Struct__FieldsEntry *const *x = a, *const *y = b;
    return strcmp((*x)->key, (*y)->key);
}

static int compile_json_object(const Google__Protobuf__Struct *s, int flags, int sort, lg__al_json_t *out, lg_error_t *err)
{
    out->type = JSON_OBJECT;
    if (s == NULL || s->n_fields == 0)
        return 0;
    Google__Protobuf__Struct__FieldsEntry **fields = lg_malloc(s->n_fields * sizeof(*fields));
    memcpy(fields, s->fields, s->n_fields * sizeof(*fields));
    if (sort)
        qsort(fields, s->n_fields, sizeof(*fields), compare_keys);
    out->keys = lg_calloc(s->n_fields, sizeof(*out->keys));
    out->items = lg_calloc(s->n_fields, sizeof(*out->items));
    int rc = 0;
    for (size_t i = 0; i != s->n_fields && rc == 0; ++i) {
        lg_strbuf_t key = {NULL};
        lg_strbuf_json_string(&key, fields[i]->key, strlen(fields[i]->key));
        lg_strbuf_append(&key, ":", 1);
        out->keys[i] = key.base;
        out->n = i + 1;
        if ((rc = compile_json_value(fields[i]->value, flags, sort, &out->items[i], err)) != 0)
            errp(err, "%s", fields[i]->key);
    }
    free(fields);
    return rc;
}

static int compile_json_value(const Google__Protobuf__Value *v, int flags, int sort, lg__al_json_t *out, lg_error_t *err)
{
    switch (v != NULL ? v->kind_case : GOOGLE__PROTOBUF__VALUE__KIND__NOT_SET) {
    case GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE:
        out->type = JSON_FORMAT;
        out->format = lg_format_compile(v->string_value, strlen(v->string_value), flags, err);
        return out->format != NULL ? 0 : -1;
    case GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE:
        out->type = JSON_NUMBER;
        out->number = v->number_value;
        return 0;
    case GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE:
        return compile_json_object(v->struct_value, flags, sort, out, err);
    case GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE: {
        const Google__Protobuf__ListValue *l = v->list_value;
        out->type = JSON_LIST;
        out->items = lg_calloc(l->n_values ? l->n_values : 1, sizeof(*out->items));
        for (size_t i = 0; i != l->n_values; ++i) {
            out->n = i + 1;
            if (compile_json_value(l->values[i], flags, sort, &out->items[i], err) != 0)
                return errp(err, "[%zu]", i);
        }
        return 0;
    }
    default:
        return lg_error(err, "Only string values, nested structs, list values and number values are supported in structured "
                             "access log format.");
    }
}

static int compile_text(lg_access_log_t *log, const char *fmt, size_t len, lg_error_t *err)
{
    log->text = lg_format_compile(fmt, len, log->omit_empty ? LG_FORMAT_OMIT_EMPTY : 0, err);
    return log->text != NULL ? 0 : -1;
}

static int compile_json(lg_access_log_t *log, const Google__Protobuf__Struct *s, int typed, int sort, lg_error_t *err)
{
    log->typed = typed;
    return compile_json_object(s, log->omit_empty ? LG_FORMAT_OMIT_EMPTY : 0, sort, &log->json, err);
}

/* A DataSource's bytes (text_format_source); malloc'ed, NUL-terminated. */
static char *read_data_source(const Envoy__Config__Core__V3__DataSource *d, size_t *len, lg_error_t *err)
{
    switch (d->specifier_case) {
    case ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_INLINE_STRING:
        *len = strlen(d->inline_string);
        return lg_strdup(d->inline_string);
    case ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_INLINE_BYTES:
        *len = d->inline_bytes.len;
        return lg_strndup((const char *)d->inline_bytes.data, d->inline_bytes.len);
    case ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_FILENAME: {
        char *data = lg_read_file(d->filename, len, err);
        if (data == NULL)
            errp(err, "filename");
        return data;
    }
    case ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_ENVIRONMENT_VARIABLE: {
        const char *v = getenv(d->environment_variable);
        if (v == NULL) {
            lg_error(err, "environment_variable: Environment variable doesn't exist: %s", d->environment_variable);
            return NULL;
        }
        *len = strlen(v);
        return lg_strdup(v);
    }
    default:
        lg_error(err, "specifier: one of filename, inline_bytes, inline_string or environment_variable must be set");
        return NULL;
    }
}

/* A SubstitutionFormatString (log_format). */
static int compile_log_format(lg_access_log_t *log, const Envoy__Config__Core__V3__SubstitutionFormatString *sfs, lg_error_t *err)
{
    log->omit_empty = sfs->omit_empty_values;
    if (sfs->n_formatters != 0)
        return lg_error(err, "formatters: formatter extensions are not supported");
    switch (sfs->format_case) {
    case ENVOY__CONFIG__CORE__V3__SUBSTITUTION_FORMAT_STRING__FORMAT_TEXT_FORMAT:
        return compile_text(log, sfs->text_format, strlen(sfs->text_format), err) != 0 ? errp(err, "text_format") : 0;
    case ENVOY__CONFIG__CORE__V3__SUBSTITUTION_FORMAT_STRING__FORMAT_TEXT_FORMAT_SOURCE: {
        size_t len;
        char *fmt = read_data_source(sfs->text_format_source, &len, err);
        int rc = fmt != NULL ? compile_text(log, fmt, len, err) : -1;
        free(fmt);
        return rc != 0 ? errp(err, "text_format_source") : 0;
    }
    case ENVOY__CONFIG__CORE__V3__SUBSTITUTION_FORMAT_STRING__FORMAT_JSON_FORMAT: {
        int sort = sfs->json_format_options != NULL && sfs->json_format_options->sort_properties;
        return compile_json(log, sfs->json_format, 1, sort, err) != 0 ? errp(err, "json_format") : 0;
    }
    default:
        return lg_error(err, "format: one of text_format, json_format or text_format_source must be set");
    }
}

static int compile_file_logger(lg_access_log_t *log, const Envoy__Extensions__AccessLoggers__File__V3__FileAccessLog *m,
                               lg_error_t *err)
{
    if (m->path[0] == '\0')
        return lg_error(err, "path: value length must be at least 1 characters");
    int rc;
    switch (m->access_log_format_case) {
    case ENVOY__EXTENSIONS__ACCESS_LOGGERS__FILE__V3__FILE_ACCESS_LOG__ACCESS_LOG_FORMAT_FORMAT:
        if (m->format[0] == '\0')
            rc = compile_text(log, default_format, sizeof(default_format) - 1, err);
        else if ((rc = compile_text(log, m->format, strlen(m->format), err)) != 0)
            errp(err, "format");
        break;
    case ENVOY__EXTENSIONS__ACCESS_LOGGERS__FILE__V3__FILE_ACCESS_LOG__ACCESS_LOG_FORMAT_JSON_FORMAT:
        if ((rc = compile_json(log, m->json_format, 0, 0, err)) != 0)
            errp(err, "json_format");
        break;
    case ENVOY__EXTENSIONS__ACCESS_LOGGERS__FILE__V3__FILE_ACCESS_LOG__ACCESS_LOG_FORMAT_TYPED_JSON_FORMAT:
        if ((rc = compile_json(log, m->typed_json_format, 1, 0, err)) != 0)
            errp(err, "typed_json_format");
        break;
    case ENVOY__EXTENSIONS__ACCESS_LOGGERS__FILE__V3__FILE_ACCESS_LOG__ACCESS_LOG_FORMAT_LOG_FORMAT:
        if ((rc = compile_log_format(log, m->log_format, err)) != 0)
            errp(err, "log_format");
        break;
    default:
        rc = compile_text(log, default_format, sizeof(default_format) - 1, err);
        break;
    }
    if (rc != 0)
        return -1;
    if ((log->file = file_get(m->path, -1, err)) == NULL)
        return errp(err, "path");
    return 0;
}

static int compile_stream_logger(lg_access_log_t *log, const Envoy__Config__Core__V3__SubstitutionFormatString *fmt, int fd,
                                 lg_error_t *err)
{
    if (fmt != NULL) {
        if (compile_log_format(log, fmt, err) != 0)
            return errp(err, "log_format");
    } else if (compile_text(log, default_format, sizeof(default_format) - 1, err) != 0) {
        return -1;
    }
    log->file = file_get(NULL, fd, err);
    return 0;
}

typedef enum en_lg__al_logger_t { LOGGER_UNKNOWN, LOGGER_FILE, LOGGER_STDOUT, LOGGER_STDERR } lg__al_logger_t;

/* The logger named by the type URL of typed_config, else by `name` (Envoy's factory lookup). */
static lg__al_logger_t find_logger(const Envoy__Config__Accesslog__V3__AccessLog *m, const char **type_out)
{
    static const struct {
        const char *type, *name;
        lg__al_logger_t logger;
    } loggers[] = {
        {"envoy.extensions.access_loggers.file.v3.FileAccessLog", "envoy.access_loggers.file", LOGGER_FILE},
        {"envoy.extensions.access_loggers.stream.v3.StdoutAccessLog", "envoy.access_loggers.stdout", LOGGER_STDOUT},
        {"envoy.extensions.access_loggers.stream.v3.StderrAccessLog", "envoy.access_loggers.stderr", LOGGER_STDERR},
    };
    const char *type = "";
    if (m->config_type_case == ENVOY__CONFIG__ACCESSLOG__V3__ACCESS_LOG__CONFIG_TYPE_TYPED_CONFIG && m->typed_config != NULL) {
        type = lg_type_url_name(m->typed_config->type_url);
    }
    *type_out = type;
    for (size_t i = 0; i != LG_ARRAY_SIZE(loggers); ++i)
        if (type[0] != '\0' ? strcmp(type, loggers[i].type) == 0 : strcmp(m->name, loggers[i].name) == 0)
            return loggers[i].logger;
    return LOGGER_UNKNOWN;
}

static int compile_logger(lg_access_log_t *log, const Envoy__Config__Accesslog__V3__AccessLog *m, lg_error_t *err)
{
    static const ProtobufCMessageDescriptor *const descs[] = {
        [LOGGER_FILE] = &envoy__extensions__access_loggers__file__v3__file_access_log__descriptor,
        [LOGGER_STDOUT] = &envoy__extensions__access_loggers__stream__v3__stdout_access_log__descriptor,
        [LOGGER_STDERR] = &envoy__extensions__access_loggers__stream__v3__stderr_access_log__descriptor,
    };
    const char *type;
    lg__al_logger_t logger = find_logger(m, &type);
    if (logger == LOGGER_UNKNOWN)
        return lg_error(err, "Didn't find a registered implementation for '%s' with type URL: '%s'", m->name, type);
    ProtobufCMessage *cfg;
    if (type[0] != '\0') {
        if ((cfg = lg_any_unpack(m->typed_config, descs[logger], err)) == NULL)
            return errp(err, "typed_config");
    } else {
        cfg = lg_calloc(1, descs[logger]->sizeof_message);
        protobuf_c_message_init(descs[logger], cfg);
    }
    int rc;
    if (logger == LOGGER_FILE) {
        rc = compile_file_logger(log, (Envoy__Extensions__AccessLoggers__File__V3__FileAccessLog *)cfg, err);
    } else {
        /* StdoutAccessLog and StderrAccessLog have the same layout */
        const Envoy__Extensions__AccessLoggers__Stream__V3__StdoutAccessLog *s = (const void *)cfg;
        rc = compile_stream_logger(log, s->access_log_format_case ? s->log_format : NULL, logger == LOGGER_STDOUT ? 1 : 2, err);
    }
    protobuf_c_message_free_unpacked(cfg, NULL);
    return rc != 0 ? errp(err, "typed_config") : 0;
}

static void access_log_free(lg_access_log_t *log)
{
    if (log->filter != NULL) {
        filter_dispose(log->filter);
        free(log->filter);
    }
    lg_format_free(log->text);
    json_dispose(&log->json);
    free(log);
}

int lg_access_logs_compile(Envoy__Config__Accesslog__V3__AccessLog *const *m, size_t n, lg_access_logs_t *out, lg_error_t *err)
{
    *out = (lg_access_logs_t){NULL, 0};
    if (n == 0)
        return 0;
    out->logs = lg_calloc(n, sizeof(*out->logs));
    for (size_t i = 0; i != n; ++i) {
        lg_access_log_t *log = lg_calloc(1, sizeof(*log));
        out->logs[out->n++] = log;
        int rc = 0;
        if (m[i]->filter != NULL) {
            log->filter = lg_calloc(1, sizeof(*log->filter));
            if ((rc = compile_filter(m[i]->filter, log->filter, err)) != 0)
                errp(err, "filter");
        }
        if (rc == 0)
            rc = compile_logger(log, m[i], err);
        if (rc != 0) {
            errp(err, "access_log[%zu]", i);
            lg_access_logs_dispose(out);
            return -1;
        }
    }
    return 0;
}

void lg_access_logs_dispose(lg_access_logs_t *logs)
{
    for (size_t i = 0; i != logs->n; ++i)
        access_log_free(logs->logs[i]);
    free(logs->logs);
    *logs = (lg_access_logs_t){NULL, 0};
}

/* ==== entries ==== */

static void append_number(lg_strbuf_t *out, double d)
{
    char buf[40];
    if (!isfinite(d)) {
        lg_strbuf_append(out, "null", 4);
        return;
    }
    if (d == floor(d) && fabs(d) < 1e15) {
        lg_strbuf_printf(out, "%.0f", d);
        return;
    }
    for (int prec = 15; prec <= 17; ++prec) {
        snprintf(buf, sizeof(buf), "%.*g", prec, d);
        if (strtod(buf, NULL) == d)
            break;
    }
    lg_strbuf_puts(out, buf);
}

/* Appends a JSON value; returns 0 (writing nothing) when the value is null. */
static int json_value(const lg_access_log_t *log, const lg__al_json_t *j, const lg_stream_info_t *si, lg_strbuf_t *out)
{
    switch (j->type) {
    case JSON_FORMAT:
        return lg_format_append_json(j->format, si, log->typed, out) != LG_FORMAT_VALUE_MISSING;
    case JSON_NUMBER:
        if (!log->typed)
            lg_strbuf_append(out, "\"", 1);
        append_number(out, j->number);
        if (!log->typed)
            lg_strbuf_append(out, "\"", 1);
        return 1;
    default:
        break;
    }
    int object = j->type == JSON_OBJECT;
    size_t written = 0;
    lg_strbuf_append(out, object ? "{" : "[", 1);
    for (size_t i = 0; i != j->n; ++i) {
        size_t mark = out->len;
        if (written != 0)
            lg_strbuf_append(out, ",", 1);
        if (object)
            lg_strbuf_puts(out, j->keys[i]);
        if (!json_value(log, &j->items[i], si, out)) {
            if (log->omit_empty) {
                out->len = mark;
                out->base[mark] = '\0';
                continue;
            }
            lg_strbuf_append(out, "null", 4);
        }
        ++written;
    }
    lg_strbuf_append(out, object ? "}" : "]", 1);
    return 1;
}

static void write_entry(const lg_access_log_t *log, const lg_stream_info_t *si)
{
    lg__al_slot_t *slot;
    lg_strbuf_t *b = slot_take(log->file, &slot);
    size_t before = b->len;
    if (log->text != NULL) {
        lg_format_append(log->text, si, b);
    } else {
        json_value(log, &log->json, si, b);
        lg_strbuf_append(b, "\n", 1);
    }
    slot_give(log->file, slot, b, before);
}

void lg_access_logs_emit_type(const lg_access_logs_t *logs, const lg_stream_info_t *info, int log_type)
{
    for (size_t i = 0; i != logs->n; ++i) {
        const lg_access_log_t *log = logs->logs[i];
        if (log->filter == NULL || filter_eval(log->filter, info, log_type))
            write_entry(log, info);
    }
}

void lg_access_logs_emit(const lg_access_logs_t *logs, const lg_stream_info_t *info)
{
    int tcp = info->request == NULL && info->protocol == 0;
    lg_access_logs_emit_type(logs, info,
                             tcp ? ENVOY__DATA__ACCESSLOG__V3__ACCESS_LOG_TYPE__TcpConnectionEnd
                                 : ENVOY__DATA__ACCESSLOG__V3__ACCESS_LOG_TYPE__DownstreamEnd);
}
