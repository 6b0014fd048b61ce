#include <errno.h>
#include <time.h>
#include "legate/common.h"

int lg_error(lg_error_t *err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    va_end(ap);
    return -1;
}

int lg_error_prefix(lg_error_t *err, const char *fmt, ...)
{
    char prefix[512], old[LG_ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof(old));
    size_t plen = strlen(prefix);
    int room = (int)(sizeof(err->msg) > plen + 3 ? sizeof(err->msg) - plen - 3 : 0);
    snprintf(err->msg, sizeof(err->msg), "%s: %.*s", prefix, room, old);
    return -1;
}

static void *oom(size_t sz)
{
    fprintf(stderr, "legate: out of memory allocating %zu bytes\n", sz);
    abort();
}

void *lg_malloc(size_t sz)
{
    void *p = malloc(sz);
    return p != NULL || sz == 0 ? p : oom(sz);
}

void *lg_calloc(size_t n, size_t sz)
{
    void *p = calloc(n, sz);
    return p != NULL || n * sz == 0 ? p : oom(n * sz);
}

void *lg_aligned_zalloc(size_t align, size_t sz)
{
    void *p = aligned_alloc(align, (sz + align - 1) / align * align);
    if (p == NULL)
        oom(sz);
    return memset(p, 0, sz);
}

void *lg_realloc(void *p, size_t sz)
{
    void *q = realloc(p, sz);
    return q != NULL || sz == 0 ? q : oom(sz);
}

char *lg_strndup(const char *s, size_t n)
{
    char *p = lg_malloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *lg_strdup(const char *s)
{
    return lg_strndup(s, strlen(s));
}

void lg_strbuf_reserve(lg_strbuf_t *b, size_t extra)
{
    if (b->len + extra + 1 <= b->cap)
        return;
    size_t cap = b->cap < 256 ? 256 : b->cap;
    while (cap < b->len + extra + 1)
        cap *= 2;
    b->base = lg_realloc(b->base, cap);
    b->cap = cap;
}

void lg_strbuf_append(lg_strbuf_t *b, const char *s, size_t n)
{
    lg_strbuf_reserve(b, n);
    if (n != 0)
        memcpy(b->base + b->len, s, n);
    b->len += n;
    b->base[b->len] = '\0';
}

void lg_strbuf_puts(lg_strbuf_t *b, const char *s)
{
    lg_strbuf_append(b, s, strlen(s));
}

void lg_strbuf_printf(lg_strbuf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    lg_strbuf_reserve(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->base + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void lg_strbuf_json_string(lg_strbuf_t *b, const char *s, size_t n)
{
    lg_strbuf_reserve(b, n + 2);
    lg_strbuf_append(b, "\"", 1);
    for (size_t i = 0; i != n; ++i) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"':
            lg_strbuf_append(b, "\\\"", 2);
            break;
        case '\\':
            lg_strbuf_append(b, "\\\\", 2);
            break;
        case '\n':
            lg_strbuf_append(b, "\\n", 2);
            break;
        case '\r':
            lg_strbuf_append(b, "\\r", 2);
            break;
        case '\t':
            lg_strbuf_append(b, "\\t", 2);
            break;
        default:
            if (c < 0x20)
                lg_strbuf_printf(b, "\\u%04x", c);
            else
                lg_strbuf_append(b, (const char *)&c, 1);
        }
    }
    lg_strbuf_append(b, "\"", 1);
}

void lg_strbuf_free(lg_strbuf_t *b)
{
    free(b->base);
    *b = (lg_strbuf_t){NULL};
}

char *lg_read_file(const char *path, size_t *len, lg_error_t *err)
{
    FILE *fp = fopen(path, "rb");
    if (fp == NULL) {
        lg_error(err, "unable to read file: %s: %s", path, strerror(errno));
        return NULL;
    }
    lg_strbuf_t b = {NULL};
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), fp)) != 0)
        lg_strbuf_append(&b, chunk, n);
    int failed = ferror(fp);
    fclose(fp);
    if (failed) {
        lg_strbuf_free(&b);
        lg_error(err, "unable to read file: %s", path);
        return NULL;
    }
    if (b.base == NULL)
        lg_strbuf_append(&b, "", 0);
    if (len != NULL)
        *len = b.len;
    return b.base;
}

static uint64_t clock_us(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

uint64_t lg_now_us(void)
{
    return clock_us(CLOCK_MONOTONIC);
}

uint64_t lg_now_ms(void)
{
    return clock_us(CLOCK_MONOTONIC) / 1000;
}

uint64_t lg_wall_us(void)
{
    return clock_us(CLOCK_REALTIME);
}
