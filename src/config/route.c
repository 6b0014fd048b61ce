/*
 * Compiles envoy.config.route.v3.RouteConfiguration into an immutable
 * lg_route_table_t, validating it as Envoy does (PGV rules and the checks of
 * Envoy's config_impl.cc). Errors name the field path relative to the
 * RouteConfiguration: "virtual_hosts[1].routes[3].match.safe_regex.regex: ...".
 *
 * Fields that would change behaviour and that Legate does not implement are
 * rejected with "<path>: unsupported field"; fields that only feed stats,
 * tracing or other filters are kept (reachable through the `pb` members).
 */
#include <ctype.h>
#include <stdarg.h>
#include <sys/mman.h>
#include <h2o/string_.h>
#include "legate/route.h"

/* Deprecated fields (HeaderMatcher.exact_match, RouteAction.max_grpc_timeout,
 * google_re2.max_program_size, ...) are still honoured, as Envoy does. */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

typedef struct st_lg__rc_t {
    lg_route_table_t *t; /* NULL when compiling a standalone matcher */
    int validate_clusters;
    const lg_route_compile_opts_t *opts;
    lg_error_t *err;
} lg__rc_t;

/* Whether a message already starts with a field path ("a.b[2]: ..."). */
static int starts_with_path(const char *msg)
{
    const char *p = msg;
    while (islower((unsigned char)*p) || isdigit((unsigned char)*p) || *p == '_' || *p == '.' || *p == '[' || *p == ']')
        ++p;
    return p != msg && *p == ':';
}

/* Prepends a path element: "a" + "b: msg" -> "a.b: msg", "a" + "[1].b: msg" ->
 * "a[1].b: msg", "a" + "msg" -> "a: msg". */
static int errp(lg_error_t *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int errp(lg_error_t *err, const char *fmt, ...)
{
    char prefix[256], old[LG_ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof(old));
    const char *sep = !starts_with_path(old) ? ": " : old[0] == '[' ? "" : ".";
    snprintf(err->msg, sizeof(err->msg), "%s%s%.1700s", prefix, sep, old);
    return -1;
}

static int unsupported(lg_error_t *err, const char *field)
{
    return lg_error(err, "%s: unsupported field", field);
}

/* ---- memory ----
 *
 * A table's compiled objects are bump-allocated from zeroed chunks that are
 * freed with the table: one allocation per chunk, not one (plus a memset) per
 * object. An array too large for a small chunk (a vhost's routes) gets a chunk
 * of its own, mapped from 256 KiB on: first touches of fresh pages dominated a
 * 10,000-route compile (6.5 MB of routes) on virtual machines, ~15 us per
 * 4 KiB page faulted in, ~4 us populated (MAP_POPULATE), and ~0.1 ms per
 * 2 MiB transparent huge page, so chunks from 2 MiB on are 2 MiB-aligned,
 * advised MADV_HUGEPAGE and populated in one call (where the kernel lacks
 * either, pages fault in as usual). Under ASan every chunk comes from calloc
 * so that it stays checked. */

#define LG__ROUTE_CHUNK_MIN 2048u
#define LG__ROUTE_CHUNK_MAX (128u << 10)
#define LG__ROUTE_OWN_CHUNK (16u << 10) /* larger requests get a chunk of their own */
#define LG__ROUTE_MAP_MIN (256u << 10)  /* own chunks from this size on are mmapped */
#define LG__ROUTE_HUGE ((size_t)2 << 20)
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif

#if defined(__SANITIZE_ADDRESS__)
#define LG__ROUTE_USE_MMAP 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define LG__ROUTE_USE_MMAP 0
#endif
#endif
#ifndef LG__ROUTE_USE_MMAP
#define LG__ROUTE_USE_MMAP 1
#endif

struct st_lg__route_chunk_t {
    struct st_lg__route_chunk_t *next;
    size_t mapped;            /* length of the mapping, 0 when calloc'd */
    _Alignas(16) char data[]; /* as malloc's */
};

/* `len` bytes of zeroed, populated memory (a multiple of the page size), or MAP_FAILED. */
static void *map_chunk(size_t len)
{
    if (len < LG__ROUTE_HUGE)
        return mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    char *p = mmap(NULL, len + LG__ROUTE_HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return p;
    char *a = (char *)(((uintptr_t)p + LG__ROUTE_HUGE - 1) & ~(uintptr_t)(LG__ROUTE_HUGE - 1));
    if (a != p)
        munmap(p, (size_t)(a - p));
    munmap(a + len, (size_t)(p + LG__ROUTE_HUGE - a));
    madvise(a, len, MADV_HUGEPAGE);
    madvise(a, len, MADV_POPULATE_WRITE);
    return a;
}

static struct st_lg__route_chunk_t *chunk_new(lg_route_table_t *t, size_t payload)
{
    struct st_lg__route_chunk_t *ch = MAP_FAILED;
    size_t total = sizeof(*ch) + payload, mapped = (total + 4095) & ~(size_t)4095;
    if (LG__ROUTE_USE_MMAP && payload >= LG__ROUTE_MAP_MIN)
        ch = map_chunk(mapped);
    if (ch != MAP_FAILED) {
        ch->mapped = mapped;
    } else {
        ch = lg_calloc(1, total); /* aborts on out-of-memory */
    }
    ch->next = t->_chunks;
    t->_chunks = ch;
    return ch;
}

void *lg__route_alloc(lg_route_table_t *t, size_t sz)
{
    sz = sz == 0 ? 8 : (sz + 7) & ~(size_t)7; /* nothing compiled needs more than 8-byte alignment */
    if (sz > (size_t)(t->_end - t->_cur)) {
        if (sz > LG__ROUTE_OWN_CHUNK)
            return chunk_new(t, sz)->data;
        /* small chunks grow with the table: few chunks for a large one, little slack for a small one */
        size_t size = t->_small_total < LG__ROUTE_CHUNK_MIN   ? LG__ROUTE_CHUNK_MIN
                      : t->_small_total > LG__ROUTE_CHUNK_MAX ? LG__ROUTE_CHUNK_MAX
                                                              : t->_small_total;
        if (size < sz)
            size = sz;
        t->_cur = chunk_new(t, size)->data;
        t->_end = t->_cur + size;
        t->_small_total += size;
    }
    void *p = t->_cur;
    t->_cur += sz;
    return p;
}

static void chunks_free(lg_route_table_t *t)
{
    struct st_lg__route_chunk_t *ch, *next;
    for (ch = t->_chunks; ch != NULL; ch = next) {
        next = ch->next;
        if (ch->mapped != 0)
            munmap(ch, ch->mapped);
        else
            free(ch);
    }
    t->_chunks = NULL;
}

static void *c_alloc(lg__rc_t *c, size_t sz)
{
    return c->t != NULL ? lg__route_alloc(c->t, sz) : lg_calloc(1, sz);
}

static h2o_iovec_t c_dup(lg__rc_t *c, const char *s, size_t len, int lower)
{
    char *p = c_alloc(c, len + 1);
    memcpy(p, s, len);
    if (lower)
        for (size_t i = 0; i != len; ++i)
            p[i] = (char)tolower((unsigned char)p[i]);
    return h2o_iovec_init(p, len);
}

static int has_upper(const char *s, size_t len)
{
    for (size_t i = 0; i != len; ++i)
        if (isupper((unsigned char)s[i]))
            return 1;
    return 0;
}

/* A string of the table's message, which lives as long as the table: referenced
 * unless lower-casing changes it. Standalone matchers own theirs (dispose frees). */
static h2o_iovec_t c_str(lg__rc_t *c, const char *s, int lower)
{
    size_t len = strlen(s);
    if (c->t != NULL && !(lower && has_upper(s, len)))
        return h2o_iovec_init(s, len);
    return c_dup(c, s, len, lower);
}

static lg_regex_t *c_own_regex(lg__rc_t *c, lg_regex_t *re)
{
    if (c->t != NULL && re != NULL) {
        c->t->_regexes = lg_realloc(c->t->_regexes, (c->t->_n_regexes + 1) * sizeof(*c->t->_regexes));
        c->t->_regexes[c->t->_n_regexes++] = re;
    }
    return re;
}

/* ---- small validators ---- */

/* PGV's HTTP_HEADER_NAME (strict: false): no NUL, CR or LF. */
static int valid_header_chars(const char *s)
{
    for (; *s != '\0'; ++s)
        if (*s == '\r' || *s == '\n')
            return 0;
    return 1;
}

static int check_header_name(const char *name, lg_error_t *err)
{
    if (name[0] == '\0')
        return lg_error(err, "value length must be at least 1 characters");
    if (!valid_header_chars(name))
        return lg_error(err, "value does not match regex pattern for HTTP header names");
    return 0;
}

static int duration_ms(const Google__Protobuf__Duration *d, uint64_t *out, lg_error_t *err)
{
    if (d->seconds < 0 || d->nanos < 0 || d->nanos > 999999999 || d->seconds > 315576000000LL)
        return lg_error(err, "invalid duration");
    *out = (uint64_t)d->seconds * 1000 + (uint64_t)d->nanos / 1000000;
    return 0;
}

/* Optional duration: -1 when absent. */
static int opt_duration_ms(const Google__Protobuf__Duration *d, int64_t *out, const char *field, lg_error_t *err)
{
    uint64_t ms = 0;
    *out = -1;
    if (d == NULL)
        return 0;
    if (duration_ms(d, &ms, err) != 0)
        return errp(err, "%s", field);
    *out = (int64_t)ms;
    return 0;
}

static uint32_t fraction_denominator(Envoy__Type__V3__FractionalPercent__DenominatorType d)
{
    switch (d) {
    case ENVOY__TYPE__V3__FRACTIONAL_PERCENT__DENOMINATOR_TYPE__TEN_THOUSAND:
        return 10000;
    case ENVOY__TYPE__V3__FRACTIONAL_PERCENT__DENOMINATOR_TYPE__MILLION:
        return 1000000;
    default:
        return 100;
    }
}

/* ---- matchers ---- */

static int compile_regex(lg__rc_t *c, const Envoy__Type__Matcher__V3__RegexMatcher *m, lg_regex_t **out)
{
    const uint32_t *max = NULL;
    if (m->engine_type_case == ENVOY__TYPE__MATCHER__V3__REGEX_MATCHER__ENGINE_TYPE_GOOGLE_RE2 && m->google_re2 != NULL &&
        m->google_re2->max_program_size != NULL)
        max = &m->google_re2->max_program_size->value;
    if ((*out = lg_regex_compile(m->regex, strlen(m->regex), max, c->err)) == NULL)
        return errp(c->err, "regex");
    c_own_regex(c, *out);
    return 0;
}

static int compile_string_matcher(lg__rc_t *c, const Envoy__Type__Matcher__V3__StringMatcher *m, lg_string_matcher_t *out)
{
    const char *s = NULL, *field = NULL;
    memset(out, 0, sizeof(*out));
    out->ignore_case = m->ignore_case;
    switch (m->match_pattern_case) {
    case ENVOY__TYPE__MATCHER__V3__STRING_MATCHER__MATCH_PATTERN_EXACT:
        out->kind = LG_STRING_MATCH_EXACT, s = m->exact;
        break;
    case ENVOY__TYPE__MATCHER__V3__STRING_MATCHER__MATCH_PATTERN_PREFIX:
        out->kind = LG_STRING_MATCH_PREFIX, s = m->prefix, field = "prefix";
        break;
    case ENVOY__TYPE__MATCHER__V3__STRING_MATCHER__MATCH_PATTERN_SUFFIX:
        out->kind = LG_STRING_MATCH_SUFFIX, s = m->suffix, field = "suffix";
        break;
    case ENVOY__TYPE__MATCHER__V3__STRING_MATCHER__MATCH_PATTERN_CONTAINS:
        out->kind = LG_STRING_MATCH_CONTAINS, s = m->contains, field = "contains";
        break;
    case ENVOY__TYPE__MATCHER__V3__STRING_MATCHER__MATCH_PATTERN_SAFE_REGEX:
        if (m->ignore_case)
            return lg_error(c->err, "ignore_case has no effect for safe_regex.");
        out->kind = LG_STRING_MATCH_REGEX;
        if (m->safe_regex == NULL)
            return lg_error(c->err, "safe_regex: value is required");
        if (compile_regex(c, m->safe_regex, &out->regex) != 0)
            return errp(c->err, "safe_regex");
        return 0;
    case ENVOY__TYPE__MATCHER__V3__STRING_MATCHER__MATCH_PATTERN_CUSTOM:
        return unsupported(c->err, "custom");
    default:
        return lg_error(c->err, "match_pattern: value is required");
    }
    if (field != NULL && s[0] == '\0')
        return lg_error(c->err, "%s: value length must be at least 1 characters", field);
    out->value = c_str(c, s, out->ignore_case);
    return 0;
}

/* A deprecated HeaderMatcher field as a case-sensitive string matcher. */
static int legacy_string(lg__rc_t *c, lg_header_matcher_t *out, lg_string_match_kind_t kind, const char *s, const char *field)
{
    if (kind != LG_STRING_MATCH_EXACT && s[0] == '\0')
        return lg_error(c->err, "%s: value length must be at least 1 characters", field);
    out->str.kind = kind == LG_STRING_MATCH_EXACT && s[0] == '\0' ? LG_STRING_MATCH_ANY : kind;
    out->str.value = c_str(c, s, 0);
    return 0;
}

static int compile_header_matcher(lg__rc_t *c, const Envoy__Config__Route__V3__HeaderMatcher *m, lg_header_matcher_t *out)
{
    memset(out, 0, sizeof(*out));
    if (check_header_name(m->name, c->err) != 0)
        return errp(c->err, "name");
    out->name = c_str(c, m->name, 1);
    out->invert = m->invert_match;
    out->treat_missing_as_empty = m->treat_missing_header_as_empty;
    out->kind = LG_HEADER_MATCH_STRING;
    switch (m->header_match_specifier_case) {
    case ENVOY__CONFIG__ROUTE__V3__HEADER_MATCHER__HEADER_MATCH_SPECIFIER_EXACT_MATCH:
        return legacy_string(c, out, LG_STRING_MATCH_EXACT, m->exact_match, "exact_match");
    case ENVOY__CONFIG__ROUTE__V3__HEADER_MATCHER__HEADER_MATCH_SPECIFIER_PREFIX_MATCH:
        return legacy_string(c, out, LG_STRING_MATCH_PREFIX, m->prefix_match, "prefix_match");
    case ENVOY__CONFIG__ROUTE__V3__HEADER_MATCHER__HEADER_MATCH_SPECIFIER_SUFFIX_MATCH:
        return legacy_string(c, out, LG_STRING_MATCH_SUFFIX, m->suffix_match, "suffix_match");
    case ENVOY__CONFIG__ROUTE__V3__HEADER_MATCHER__HEADER_MATCH_SPECIFIER_CONTAINS_MATCH:
        return legacy_string(c, out, LG_STRING_MATCH_CONTAINS, m->contains_match, "contains_match");
    case ENVOY__CONFIG__ROUTE__V3__HEADER_MATCHER__HEADER_MATCH_SPECIFIER_SAFE_REGEX_MATCH:
        out->str.kind = LG_STRING_MATCH_REGEX;
        if (m->safe_regex_match == NULL)
            return lg_error(c->err, "safe_regex_match: value is required");
        return compile_regex(c, m->safe_regex_match, &out->str.regex) != 0 ? errp(c->err, "safe_regex_match") : 0;
    case ENVOY__CONFIG__ROUTE__V3__HEADER_MATCHER__HEADER_MATCH_SPECIFIER_STRING_MATCH:
        if (m->string_match == NULL)
            return lg_error(c->err, "string_match: value is required");
        return compile_string_matcher(c, m->string_match, &out->str) != 0 ? errp(c->err, "string_match") : 0;
    case ENVOY__CONFIG__ROUTE__V3__HEADER_MATCHER__HEADER_MATCH_SPECIFIER_RANGE_MATCH:
        out->kind = LG_HEADER_MATCH_RANGE;
        if (m->range_match != NULL) {
            out->range_start = m->range_match->start;
            out->range_end = m->range_match->end;
        }
        return 0;
    case ENVOY__CONFIG__ROUTE__V3__HEADER_MATCHER__HEADER_MATCH_SPECIFIER_PRESENT_MATCH:
        out->kind = LG_HEADER_MATCH_PRESENT;
        out->present = m->present_match;
        return 0;
    default:
        /* no specifier: the header must be present (Envoy's HeaderDataPresentMatch) */
        out->kind = LG_HEADER_MATCH_PRESENT;
        out->present = 1;
        return 0;
    }
}

static int compile_header_matchers(lg__rc_t *c, size_t n, Envoy__Config__Route__V3__HeaderMatcher **in, lg_header_matcher_t **out,
                                   const char *field)
{
    *out = n != 0 ? c_alloc(c, n * sizeof(**out)) : NULL;
    for (size_t i = 0; i != n; ++i)
        if (compile_header_matcher(c, in[i], &(*out)[i]) != 0)
            return errp(c->err, "%s[%zu]", field, i);
    return 0;
}

static int compile_query_matcher(lg__rc_t *c, const Envoy__Config__Route__V3__QueryParameterMatcher *m, lg_query_matcher_t *out)
{
    size_t len = strlen(m->name);
    if (len == 0 || len > 1024)
        return lg_error(c->err, "name: value length must be between 1 and 1024 bytes");
    out->name = c_dup(c, m->name, len, 0);
    switch (m->query_parameter_match_specifier_case) {
    case ENVOY__CONFIG__ROUTE__V3__QUERY_PARAMETER_MATCHER__QUERY_PARAMETER_MATCH_SPECIFIER_STRING_MATCH:
        out->kind = LG_QUERY_MATCH_STRING;
        if (m->string_match == NULL)
            return lg_error(c->err, "string_match: value is required");
        return compile_string_matcher(c, m->string_match, &out->str) != 0 ? errp(c->err, "string_match") : 0;
    case ENVOY__CONFIG__ROUTE__V3__QUERY_PARAMETER_MATCHER__QUERY_PARAMETER_MATCH_SPECIFIER_PRESENT_MATCH:
        out->kind = LG_QUERY_MATCH_PRESENT;
        out->present = m->present_match;
        return 0;
    default:
        out->kind = LG_QUERY_MATCH_EXISTS;
        return 0;
    }
}

/* ---- standalone matchers ---- */

int lg_string_matcher_compile(const Envoy__Type__Matcher__V3__StringMatcher *m, lg_string_matcher_t *out, lg_error_t *err)
{
    lg__rc_t c = {NULL, 0, NULL, err};
    if (compile_string_matcher(&c, m, out) != 0) {
        lg_string_matcher_dispose(out);
        return -1;
    }
    return 0;
}

void lg_string_matcher_dispose(lg_string_matcher_t *m)
{
    free(m->value.base);
    lg_regex_free(m->regex);
    memset(m, 0, sizeof(*m));
}

int lg_header_matcher_compile(const Envoy__Config__Route__V3__HeaderMatcher *m, lg_header_matcher_t *out, lg_error_t *err)
{
    lg__rc_t c = {NULL, 0, NULL, err};
    if (compile_header_matcher(&c, m, out) != 0) {
        lg_header_matcher_dispose(out);
        return -1;
    }
    return 0;
}

void lg_header_matcher_dispose(lg_header_matcher_t *m)
{
    free(m->name.base);
    lg_string_matcher_dispose(&m->str);
    memset(m, 0, sizeof(*m));
}

/* ---- header mutations (Envoy's HeaderParser::configure) ---- */

static int modifiable_header(const char *name)
{
    return name[0] != ':' && strcasecmp(name, "host") != 0;
}

static int compile_header_add(lg__rc_t *c, const Envoy__Config__Core__V3__HeaderValueOption *o, lg_header_add_t *out)
{
    if (o->header == NULL)
        return lg_error(c->err, "header: value is required");
    if (check_header_name(o->header->key, c->err) != 0)
        return errp(c->err, "header.key");
    if (!modifiable_header(o->header->key))
        return lg_error(c->err, ":-prefixed or host headers may not be modified");
    if (o->append != NULL) {
        if (o->append_action != ENVOY__CONFIG__CORE__V3__HEADER_VALUE_OPTION__HEADER_APPEND_ACTION__APPEND_IF_EXISTS_OR_ADD)
            return lg_error(c->err, "Both append and append_action are set and it's not allowed");
        out->action = o->append->value ? LG_HEADER_APPEND_IF_EXISTS_OR_ADD : LG_HEADER_OVERWRITE_IF_EXISTS_OR_ADD;
    } else {
        switch (o->append_action) {
        case ENVOY__CONFIG__CORE__V3__HEADER_VALUE_OPTION__HEADER_APPEND_ACTION__ADD_IF_ABSENT:
            out->action = LG_HEADER_ADD_IF_ABSENT;
            break;
        case ENVOY__CONFIG__CORE__V3__HEADER_VALUE_OPTION__HEADER_APPEND_ACTION__OVERWRITE_IF_EXISTS_OR_ADD:
            out->action = LG_HEADER_OVERWRITE_IF_EXISTS_OR_ADD;
            break;
        case ENVOY__CONFIG__CORE__V3__HEADER_VALUE_OPTION__HEADER_APPEND_ACTION__OVERWRITE_IF_EXISTS:
            out->action = LG_HEADER_OVERWRITE_IF_EXISTS;
            break;
        default:
            out->action = LG_HEADER_APPEND_IF_EXISTS_OR_ADD;
            break;
        }
    }
    out->name = c_str(c, o->header->key, 1);
    out->keep_empty_value = o->keep_empty_value;
    const char *v = o->header->value;
    size_t vlen = strlen(v);
    if (vlen == 0 && o->header->raw_value.len != 0)
        v = (const char *)o->header->raw_value.data, vlen = o->header->raw_value.len;
    if ((out->value = lg_format_compile(v, vlen, LG_FORMAT_OMIT_EMPTY, c->err)) == NULL)
        return errp(c->err, "header.value");
    c->t->_formats = lg_realloc(c->t->_formats, (c->t->_n_formats + 1) * sizeof(*c->t->_formats));
    c->t->_formats[c->t->_n_formats++] = out->value;
    return 0;
}

static int compile_mutation(lg__rc_t *c, size_t n_add, Envoy__Config__Core__V3__HeaderValueOption **add, size_t n_remove,
                            char **remove, lg_header_mutation_t *out, const char *kind)
{
    out->n_add = n_add;
    out->add = n_add != 0 ? c_alloc(c, n_add * sizeof(*out->add)) : NULL;
    for (size_t i = 0; i != n_add; ++i)
        if (compile_header_add(c, add[i], &out->add[i]) != 0)
            return errp(c->err, "%s_headers_to_add[%zu]", kind, i);
    out->n_remove = n_remove;
    out->remove = n_remove != 0 ? c_alloc(c, n_remove * sizeof(*out->remove)) : NULL;
    for (size_t i = 0; i != n_remove; ++i) {
        if (check_header_name(remove[i], c->err) != 0)
            return errp(c->err, "%s_headers_to_remove[%zu]", kind, i);
        if (!modifiable_header(remove[i]))
            return lg_error(c->err, "%s_headers_to_remove[%zu]: :-prefixed or host headers may not be removed", kind, i);
        out->remove[i] = c_str(c, remove[i], 1);
    }
    return 0;
}

#define COMPILE_MUTATIONS(c, msg, req, resp)                                                                                      \
    (compile_mutation((c), (msg)->n_request_headers_to_add, (msg)->request_headers_to_add, (msg)->n_request_headers_to_remove,    \
                      (msg)->request_headers_to_remove, (req), "request") != 0 ||                                                 \
     compile_mutation((c), (msg)->n_response_headers_to_add, (msg)->response_headers_to_add, (msg)->n_response_headers_to_remove, \
                      (msg)->response_headers_to_remove, (resp), "response") != 0)

/* ---- retry policy ---- */

static const struct {
    const char *name;
    uint32_t bit;
} retry_on_names[] = {
    {"5xx", LG_RETRY_ON_5XX},
    {"gateway-error", LG_RETRY_ON_GATEWAY_ERROR},
    {"connect-failure", LG_RETRY_ON_CONNECT_FAILURE},
    {"retriable-4xx", LG_RETRY_ON_RETRIABLE_4XX},
    {"refused-stream", LG_RETRY_ON_REFUSED_STREAM},
    {"retriable-status-codes", LG_RETRY_ON_RETRIABLE_STATUS_CODES},
    {"reset", LG_RETRY_ON_RESET},
    {"retriable-headers", LG_RETRY_ON_RETRIABLE_HEADERS},
    {"envoy-ratelimited", LG_RETRY_ON_ENVOY_RATE_LIMITED},
    {"reset-before-request", LG_RETRY_ON_RESET_BEFORE_REQUEST},
    {"http3-post-connect-failure", LG_RETRY_ON_HTTP3_POST_CONNECT_FAILURE},
    {"cancelled", LG_RETRY_ON_GRPC_CANCELLED},
    {"deadline-exceeded", LG_RETRY_ON_GRPC_DEADLINE_EXCEEDED},
    {"resource-exhausted", LG_RETRY_ON_GRPC_RESOURCE_EXHAUSTED},
    {"unavailable", LG_RETRY_ON_GRPC_UNAVAILABLE},
    {"internal", LG_RETRY_ON_GRPC_INTERNAL},
};

/* Envoy's parseRetryOn + parseRetryGrpcOn: comma-separated, trimmed, unknown names ignored. */
static uint32_t parse_retry_on(const char *s)
{
    uint32_t bits = 0;
    while (*s != '\0') {
        const char *end = strchr(s, ',');
        size_t len = end != NULL ? (size_t)(end - s) : strlen(s);
        const char *b = s, *e = s + len;
        while (b < e && isspace((unsigned char)*b))
            ++b;
        while (e > b && isspace((unsigned char)e[-1]))
            --e;
        for (size_t i = 0; i != LG_ARRAY_SIZE(retry_on_names); ++i)
            if (strlen(retry_on_names[i].name) == (size_t)(e - b) && memcmp(retry_on_names[i].name, b, (size_t)(e - b)) == 0)
                bits |= retry_on_names[i].bit;
        s += len + (end != NULL);
    }
    return bits;
}

static int is_previous_hosts(const Envoy__Config__Route__V3__RetryPolicy__RetryHostPredicate *p)
{
    if (strcmp(p->name, "envoy.retry_host_predicates.previous_hosts") == 0)
        return 1;
    if (p->config_type_case == ENVOY__CONFIG__ROUTE__V3__RETRY_POLICY__RETRY_HOST_PREDICATE__CONFIG_TYPE_TYPED_CONFIG &&
        p->typed_config != NULL) {
        const char *url = p->typed_config->type_url, *slash = strrchr(url, '/');
        return strcmp(slash != NULL ? slash + 1 : url, "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate") == 0;
    }
    return 0;
}

static int compile_retry_backoff(lg__rc_t *c, const Envoy__Config__Route__V3__RetryPolicy__RetryBackOff *b, lg_retry_policy_t *rp)
{
    if (b->base_interval == NULL)
        return lg_error(c->err, "retry_back_off.base_interval: value is required");
    if (duration_ms(b->base_interval, &rp->base_interval_ms, c->err) != 0)
        return errp(c->err, "retry_back_off.base_interval");
    if (rp->base_interval_ms < 1)
        rp->base_interval_ms = 1;
    rp->max_interval_ms = rp->base_interval_ms * 10;
    if (b->max_interval != NULL) {
        if (duration_ms(b->max_interval, &rp->max_interval_ms, c->err) != 0)
            return errp(c->err, "retry_back_off.max_interval");
        if (rp->max_interval_ms < 1)
            rp->max_interval_ms = 1;
        if (rp->max_interval_ms < rp->base_interval_ms)
            return lg_error(c->err, "retry_policy.max_interval must greater than or equal to the base_interval");
    }
    return 0;
}

static int compile_retry_policy(lg__rc_t *c, const Envoy__Config__Route__V3__RetryPolicy *p, const lg_retry_policy_t **out)
{
    lg_retry_policy_t *rp = c_alloc(c, sizeof(*rp));
    *out = rp;
    if (p->retry_priority != NULL && p->retry_priority->name[0] != '\0')
        return unsupported(c->err, "retry_priority");
    if (p->n_retry_options_predicates != 0)
        return unsupported(c->err, "retry_options_predicates");
    if (p->rate_limited_retry_back_off != NULL)
        return unsupported(c->err, "rate_limited_retry_back_off");
    for (size_t i = 0; i != p->n_retry_host_predicate; ++i) {
        if (!is_previous_hosts(p->retry_host_predicate[i]))
            return lg_error(c->err, "retry_host_predicate[%zu]: unsupported retry host predicate '%s'", i,
                            p->retry_host_predicate[i]->name);
        rp->previous_hosts = 1;
    }
    rp->retry_on = parse_retry_on(p->retry_on);
    rp->num_retries = p->num_retries != NULL ? p->num_retries->value : 1;
    if (p->per_try_timeout != NULL && duration_ms(p->per_try_timeout, &rp->per_try_timeout_ms, c->err) != 0)
        return errp(c->err, "per_try_timeout");
    if (p->per_try_idle_timeout != NULL && duration_ms(p->per_try_idle_timeout, &rp->per_try_idle_timeout_ms, c->err) != 0)
        return errp(c->err, "per_try_idle_timeout");
    rp->host_selection_retry_max_attempts =
        p->host_selection_retry_max_attempts > 0 ? (uint32_t)p->host_selection_retry_max_attempts : 1;
    rp->n_retriable_status_codes = p->n_retriable_status_codes;
    rp->retriable_status_codes = c_alloc(c, p->n_retriable_status_codes * sizeof(uint32_t) + 1);
    if (p->n_retriable_status_codes != 0)
        memcpy(rp->retriable_status_codes, p->retriable_status_codes, p->n_retriable_status_codes * sizeof(uint32_t));
    rp->base_interval_ms = 25;
    rp->max_interval_ms = 250;
    if (p->retry_back_off != NULL && compile_retry_backoff(c, p->retry_back_off, rp) != 0)
        return -1;
    rp->n_retriable_headers = p->n_retriable_headers;
    if (compile_header_matchers(c, p->n_retriable_headers, p->retriable_headers, &rp->retriable_headers, "retriable_headers") != 0)
        return -1;
    rp->n_retriable_request_headers = p->n_retriable_request_headers;
    return compile_header_matchers(c, p->n_retriable_request_headers, p->retriable_request_headers, &rp->retriable_request_headers,
                                   "retriable_request_headers");
}

/* ---- mirror policies ---- */

static int compile_mirrors(lg__rc_t *c, size_t n, Envoy__Config__Route__V3__RouteAction__RequestMirrorPolicy **in,
                           lg_mirror_policy_t **out)
{
    *out = n != 0 ? c_alloc(c, n * sizeof(**out)) : NULL;
    for (size_t i = 0; i != n; ++i) {
        const Envoy__Config__Route__V3__RouteAction__RequestMirrorPolicy *m = in[i];
        lg_mirror_policy_t *mp = &(*out)[i];
        if (m->cluster[0] != '\0' && m->cluster_header[0] != '\0')
            return lg_error(
                c->err,
                "request_mirror_policies[%zu]: Only one of cluster '%s' or cluster_header '%s' in request mirror policy "
                "can be specified",
                i, m->cluster, m->cluster_header);
        if (m->cluster[0] == '\0' && m->cluster_header[0] == '\0')
            return lg_error(
                c->err,
                "request_mirror_policies[%zu]: Exactly one of cluster or cluster_header in request mirror policy need to "
                "be specified",
                i);
        if (m->cluster[0] != '\0' && c->validate_clusters && !c->opts->cluster_exists(c->opts->ctx, m->cluster))
            return lg_error(c->err, "request_mirror_policies[%zu].cluster: route: unknown shadow cluster '%s'", i, m->cluster);
        mp->cluster = c_str(c, m->cluster, 0);
        mp->cluster_header = c_str(c, m->cluster_header, 1);
        mp->numerator = 100, mp->denominator = 100;
        if (m->runtime_fraction != NULL) {
            const Envoy__Type__V3__FractionalPercent *d = m->runtime_fraction->default_value;
            mp->numerator = d != NULL ? d->numerator : 0;
            mp->denominator = fraction_denominator(d != NULL ? d->denominator : 0);
        }
        mp->trace_sampled = m->trace_sampled != NULL ? m->trace_sampled->value : 1;
    }
    return 0;
}

/* ---- route match ---- */

static int compile_path_specifier(lg__rc_t *c, const Envoy__Config__Route__V3__RouteMatch *m, lg_route_t *r)
{
    switch (m->path_specifier_case) {
    case ENVOY__CONFIG__ROUTE__V3__ROUTE_MATCH__PATH_SPECIFIER_PREFIX:
        r->path_match = LG_PATH_MATCH_PREFIX;
        r->path_value = c_str(c, m->prefix, 0);
        return 0;
    case ENVOY__CONFIG__ROUTE__V3__ROUTE_MATCH__PATH_SPECIFIER_PATH:
        r->path_match = LG_PATH_MATCH_EXACT;
        r->path_value = c_str(c, m->path, 0);
        return 0;
    case ENVOY__CONFIG__ROUTE__V3__ROUTE_MATCH__PATH_SPECIFIER_SAFE_REGEX:
        r->path_match = LG_PATH_MATCH_REGEX;
        if (m->safe_regex == NULL)
            return lg_error(c->err, "safe_regex: value is required");
        return compile_regex(c, m->safe_regex, &r->path_regex) != 0 ? errp(c->err, "safe_regex") : 0;
    case ENVOY__CONFIG__ROUTE__V3__ROUTE_MATCH__PATH_SPECIFIER_CONNECT_MATCHER:
        r->path_match = LG_PATH_MATCH_CONNECT;
        return 0;
    case ENVOY__CONFIG__ROUTE__V3__ROUTE_MATCH__PATH_SPECIFIER_PATH_SEPARATED_PREFIX: {
        const char *p = m->path_separated_prefix;
        size_t len = strlen(p);
        /* PGV: ^[^?#]+[^?#/]$ */
        if (len < 2 || strpbrk(p, "?#") != NULL || p[len - 1] == '/')
            return lg_error(c->err, "path_separated_prefix: value does not match regex pattern \"^[^?#]+[^?#/]$\"");
        r->path_match = LG_PATH_MATCH_SEPARATED_PREFIX;
        r->path_value = c_dup(c, p, len, 0);
        return 0;
    }
    case ENVOY__CONFIG__ROUTE__V3__ROUTE_MATCH__PATH_SPECIFIER_PATH_MATCH_POLICY:
        return unsupported(c->err, "path_match_policy");
    default:
        return lg_error(c->err, "path_specifier: value is required");
    }
}

static int compile_match(lg__rc_t *c, const Envoy__Config__Route__V3__RouteMatch *m, lg_route_t *r)
{
    if (compile_path_specifier(c, m, r) != 0)
        return -1;
    if (m->tls_context != NULL)
        return unsupported(c->err, "tls_context");
    if (m->n_dynamic_metadata != 0)
        return unsupported(c->err, "dynamic_metadata");
    r->case_sensitive = m->case_sensitive != NULL ? m->case_sensitive->value : 1;
    r->grpc = m->grpc != NULL;
    if (m->runtime_fraction != NULL) {
        const Envoy__Type__V3__FractionalPercent *d = m->runtime_fraction->default_value;
        r->has_runtime_fraction = 1;
        r->fraction_numerator = d != NULL ? d->numerator : 0;
        r->fraction_denominator = fraction_denominator(d != NULL ? d->denominator : 0);
    }
    r->n_headers = m->n_headers;
    if (compile_header_matchers(c, m->n_headers, m->headers, &r->headers, "headers") != 0)
        return -1;
    r->n_query = m->n_query_parameters;
    r->query = m->n_query_parameters != 0 ? c_alloc(c, m->n_query_parameters * sizeof(*r->query)) : NULL;
    for (size_t i = 0; i != m->n_query_parameters; ++i)
        if (compile_query_matcher(c, m->query_parameters[i], &r->query[i]) != 0)
            return errp(c->err, "query_parameters[%zu]", i);
    return 0;
}

/* ---- route action ---- */

/* Envoy's validateClusters; the message carries its field since it reads like a path. */
static int check_cluster(lg__rc_t *c, const char *name, const char *field, const char *what)
{
    if (c->validate_clusters && !c->opts->cluster_exists(c->opts->ctx, name))
        return lg_error(c->err, "%s: route: unknown %s '%s'", field, what, name);
    return 0;
}

static int compile_weighted_cluster(lg__rc_t *c, const Envoy__Config__Route__V3__WeightedCluster__ClusterWeight *cw,
                                    lg_weighted_cluster_t *wc)
{
    if (cw->name[0] != '\0' && cw->cluster_header[0] != '\0')
        return lg_error(c->err, "Only one of name or cluster_header can be specified");
    if (cw->name[0] == '\0' && cw->cluster_header[0] == '\0')
        return lg_error(c->err, "At least one of name or cluster_header need to be specified");
    if (cw->weight == NULL)
        return lg_error(c->err, "weight: value is required");
    if (cw->metadata_match != NULL)
        return unsupported(c->err, "metadata_match");
    if (cw->name[0] != '\0' && check_cluster(c, cw->name, "name", "weighted cluster") != 0)
        return -1;
    wc->pb = cw;
    wc->name = c_str(c, cw->name, 0);
    wc->cluster_header = c_str(c, cw->cluster_header, 1);
    wc->weight = cw->weight->value;
    if (cw->host_rewrite_specifier_case ==
        ENVOY__CONFIG__ROUTE__V3__WEIGHTED_CLUSTER__CLUSTER_WEIGHT__HOST_REWRITE_SPECIFIER_HOST_REWRITE_LITERAL)
        wc->host_rewrite_literal = c_str(c, cw->host_rewrite_literal, 0);
    return COMPILE_MUTATIONS(c, cw, &wc->request_headers, &wc->response_headers) ? -1 : 0;
}

static int compile_weighted(lg__rc_t *c, const Envoy__Config__Route__V3__WeightedCluster *w, lg_route_action_t *a)
{
    if (w->n_clusters == 0)
        return lg_error(c->err, "clusters: value must contain at least 1 item(s)");
    a->n_weighted = w->n_clusters;
    a->weighted = c_alloc(c, w->n_clusters * sizeof(*a->weighted));
    for (size_t i = 0; i != w->n_clusters; ++i) {
        if (compile_weighted_cluster(c, w->clusters[i], &a->weighted[i]) != 0)
            return errp(c->err, "clusters[%zu]", i);
        a->total_weight += a->weighted[i].weight;
    }
    if (a->total_weight == 0)
        return lg_error(c->err, "Sum of weights in the weighted_cluster must be greater than 0.");
    if (w->random_value_specifier_case == ENVOY__CONFIG__ROUTE__V3__WEIGHTED_CLUSTER__RANDOM_VALUE_SPECIFIER_HEADER_NAME)
        a->random_value_header = c_str(c, w->header_name, 1);
    return 0;
}

static int compile_cluster_specifier(lg__rc_t *c, const Envoy__Config__Route__V3__RouteAction *ra, lg_route_action_t *a)
{
    switch (ra->cluster_specifier_case) {
    case ENVOY__CONFIG__ROUTE__V3__ROUTE_ACTION__CLUSTER_SPECIFIER_CLUSTER:
        if (ra->cluster[0] == '\0')
            return lg_error(c->err, "cluster: value length must be at least 1 characters");
        if (check_cluster(c, ra->cluster, "cluster", "cluster") != 0)
            return -1;
        a->cluster = c_str(c, ra->cluster, 0);
        return 0;
    case ENVOY__CONFIG__ROUTE__V3__ROUTE_ACTION__CLUSTER_SPECIFIER_CLUSTER_HEADER:
        if (check_header_name(ra->cluster_header, c->err) != 0)
            return errp(c->err, "cluster_header");
        a->cluster_header = c_str(c, ra->cluster_header, 1);
        return 0;
    case ENVOY__CONFIG__ROUTE__V3__ROUTE_ACTION__CLUSTER_SPECIFIER_WEIGHTED_CLUSTERS:
        return compile_weighted(c, ra->weighted_clusters, a) != 0 ? errp(c->err, "weighted_clusters") : 0;
    case ENVOY__CONFIG__ROUTE__V3__ROUTE_ACTION__CLUSTER_SPECIFIER_CLUSTER_SPECIFIER_PLUGIN:
        return unsupported(c->err, "cluster_specifier_plugin");
    case ENVOY__CONFIG__ROUTE__V3__ROUTE_ACTION__CLUSTER_SPECIFIER_INLINE_CLUSTER_SPECIFIER_PLUGIN:
        return unsupported(c->err, "inline_cluster_specifier_plugin");
    default:
        return lg_error(c->err, "cluster_specifier: value is required");
    }
}

static int compile_host_rewrite(lg__rc_t *c, const Envoy__Config__Route__V3__RouteAction *ra, lg_route_action_t *a)
{
    switch (ra->host_rewrite_specifier_case) {
    case ENVOY__CONFIG__ROUTE__V3__ROUTE_ACTION__HOST_REWRITE_SPECIFIER_HOST_REWRITE_LITERAL:
        a->host_rewrite_literal = c_str(c, ra->host_rewrite_literal, 0);
        return 0;
    case ENVOY__CONFIG__ROUTE__V3__ROUTE_ACTION__HOST_REWRITE_SPECIFIER_AUTO_HOST_REWRITE:
        a->auto_host_rewrite = ra->auto_host_rewrite != NULL && ra->auto_host_rewrite->value;
        return 0;
    case ENVOY__CONFIG__ROUTE__V3__ROUTE_ACTION__HOST_REWRITE_SPECIFIER_HOST_REWRITE_HEADER:
        a->host_rewrite_header = c_str(c, ra->host_rewrite_header, 1);
        return 0;
    case ENVOY__CONFIG__ROUTE__V3__ROUTE_ACTION__HOST_REWRITE_SPECIFIER_HOST_REWRITE_PATH_REGEX:
        if (ra->host_rewrite_path_regex == NULL || ra->host_rewrite_path_regex->pattern == NULL)
            return lg_error(c->err, "host_rewrite_path_regex.pattern: value is required");
        if (compile_regex(c, ra->host_rewrite_path_regex->pattern, &a->host_rewrite_path_regex) != 0)
            return errp(c->err, "host_rewrite_path_regex.pattern");
        a->host_rewrite_path_substitution = c_str(c, ra->host_rewrite_path_regex->substitution, 0);
        return 0;
    default:
        return 0;
    }
}

static int compile_rewrites(lg__rc_t *c, const Envoy__Config__Route__V3__RouteAction *ra, lg_route_action_t *a)
{
    if (ra->path_rewrite_policy != NULL)
        return unsupported(c->err, "path_rewrite_policy");
    if (ra->prefix_rewrite[0] != '\0' && ra->regex_rewrite != NULL)
        return lg_error(c->err, "Specify only one of prefix_rewrite, regex_rewrite or path_rewrite_policy");
    a->prefix_rewrite = c_str(c, ra->prefix_rewrite, 0);
    if (ra->regex_rewrite != NULL) {
        if (ra->regex_rewrite->pattern == NULL)
            return lg_error(c->err, "regex_rewrite.pattern: value is required");
        if (compile_regex(c, ra->regex_rewrite->pattern, &a->regex_rewrite) != 0)
            return errp(c->err, "regex_rewrite.pattern");
        a->regex_rewrite_substitution = c_str(c, ra->regex_rewrite->substitution, 0);
    }
    return compile_host_rewrite(c, ra, a);
}

static int compile_timeouts(lg__rc_t *c, const Envoy__Config__Route__V3__RouteAction *ra, lg_route_action_t *a)
{
    a->timeout_ms = 15000;
    if (ra->timeout != NULL && duration_ms(ra->timeout, &a->timeout_ms, c->err) != 0)
        return errp(c->err, "timeout");
    if (opt_duration_ms(ra->idle_timeout, &a->idle_timeout_ms, "idle_timeout", c->err) != 0 ||
        opt_duration_ms(ra->max_grpc_timeout, &a->max_grpc_timeout_ms, "max_grpc_timeout", c->err) != 0 ||
        opt_duration_ms(ra->grpc_timeout_offset, &a->grpc_timeout_offset_ms, "grpc_timeout_offset", c->err) != 0)
        return -1;
    const Envoy__Config__Route__V3__RouteAction__MaxStreamDuration *msd = ra->max_stream_duration;
    if (opt_duration_ms(msd != NULL ? msd->max_stream_duration : NULL, &a->max_stream_duration_ms,
                        "max_stream_duration.max_stream_duration", c->err) != 0 ||
        opt_duration_ms(msd != NULL ? msd->grpc_timeout_header_max : NULL, &a->grpc_timeout_header_max_ms,
                        "max_stream_duration.grpc_timeout_header_max", c->err) != 0 ||
        opt_duration_ms(msd != NULL ? msd->grpc_timeout_header_offset : NULL, &a->grpc_timeout_header_offset_ms,
                        "max_stream_duration.grpc_timeout_header_offset", c->err) != 0)
        return -1;
    return 0;
}

static int compile_upgrades(lg__rc_t *c, const Envoy__Config__Route__V3__RouteAction *ra, lg_route_action_t *a)
{
    a->n_upgrade_configs = ra->n_upgrade_configs;
    a->upgrade_configs = ra->n_upgrade_configs != 0 ? c_alloc(c, ra->n_upgrade_configs * sizeof(*a->upgrade_configs)) : NULL;
    for (size_t i = 0; i != ra->n_upgrade_configs; ++i) {
        const Envoy__Config__Route__V3__RouteAction__UpgradeConfig *u = ra->upgrade_configs[i];
        lg_upgrade_config_t *uc = &a->upgrade_configs[i];
        uc->upgrade_type = c_str(c, u->upgrade_type, 1);
        for (size_t j = 0; j != i; ++j)
            if (h2o_memis(a->upgrade_configs[j].upgrade_type.base, a->upgrade_configs[j].upgrade_type.len, uc->upgrade_type.base,
                          uc->upgrade_type.len))
                return lg_error(c->err, "upgrade_configs[%zu]: Duplicate upgrade %s", i, u->upgrade_type);
        if (u->connect_config != NULL && strcmp(u->upgrade_type, "CONNECT") != 0)
            return lg_error(c->err, "upgrade_configs[%zu]: Non-CONNECT upgrade type %s has ConnectConfig", i, u->upgrade_type);
        if (u->connect_config != NULL && u->connect_config->proxy_protocol_config != NULL) {
            unsupported(c->err, "connect_config.proxy_protocol_config");
            return errp(c->err, "upgrade_configs[%zu]", i);
        }
        uc->enabled = u->enabled != NULL ? u->enabled->value : 1;
        uc->connect_has_config = u->connect_config != NULL;
        uc->connect_allow_post = u->connect_config != NULL && u->connect_config->allow_post;
    }
    return 0;
}

static int reject_route_action_fields(lg__rc_t *c, const Envoy__Config__Route__V3__RouteAction *ra)
{
    if (ra->metadata_match != NULL)
        return unsupported(c->err, "metadata_match");
    if (ra->retry_policy_typed_config != NULL)
        return unsupported(c->err, "retry_policy_typed_config");
    if (ra->internal_redirect_policy != NULL)
        return unsupported(c->err, "internal_redirect_policy");
    if (ra->internal_redirect_action == ENVOY__CONFIG__ROUTE__V3__ROUTE_ACTION__INTERNAL_REDIRECT_ACTION__HANDLE_INTERNAL_REDIRECT)
        return unsupported(c->err, "internal_redirect_action");
    if (ra->hedge_policy != NULL)
        return unsupported(c->err, "hedge_policy");
    return 0;
}

static int compile_route_action(lg__rc_t *c, const Envoy__Config__Route__V3__RouteAction *ra, lg_route_t *r)
{
    lg_route_action_t *a = &r->action;
    if (reject_route_action_fields(c, ra) != 0 || compile_cluster_specifier(c, ra, a) != 0 || compile_rewrites(c, ra, a) != 0 ||
        compile_timeouts(c, ra, a) != 0 || compile_upgrades(c, ra, a) != 0)
        return -1;
    switch (ra->cluster_not_found_response_code) {
    case ENVOY__CONFIG__ROUTE__V3__ROUTE_ACTION__CLUSTER_NOT_FOUND_RESPONSE_CODE__NOT_FOUND:
        a->cluster_not_found_response_code = 404;
        break;
    case ENVOY__CONFIG__ROUTE__V3__ROUTE_ACTION__CLUSTER_NOT_FOUND_RESPONSE_CODE__INTERNAL_SERVER_ERROR:
        a->cluster_not_found_response_code = 500;
        break;
    default:
        a->cluster_not_found_response_code = 503;
        break;
    }
    a->append_x_forwarded_host = ra->append_x_forwarded_host;
    a->include_vh_rate_limits = ra->include_vh_rate_limits != NULL && ra->include_vh_rate_limits->value;
    a->priority = (uint32_t)ra->priority;
    a->retry_policy = r->vhost->retry_policy;
    if (ra->retry_policy != NULL && compile_retry_policy(c, ra->retry_policy, &a->retry_policy) != 0)
        return errp(c->err, "retry_policy");
    lg_mirror_policy_t *mirrors;
    if (compile_mirrors(c, ra->n_request_mirror_policies, ra->request_mirror_policies, &mirrors) != 0)
        return -1;
    a->n_mirror_policies = ra->n_request_mirror_policies != 0 ? ra->n_request_mirror_policies : r->vhost->n_mirror_policies;
    a->mirror_policies = ra->n_request_mirror_policies != 0 ? mirrors : r->vhost->mirror_policies;
    return 0;
}

/* ---- redirect / direct response ---- */

static int compile_redirect(lg__rc_t *c, const Envoy__Config__Route__V3__RedirectAction *ra, lg_redirect_t *rd)
{
    static const int codes[] = {301, 302, 303, 307, 308};
    if ((unsigned)ra->response_code >= LG_ARRAY_SIZE(codes))
        return lg_error(c->err, "response_code: value must be one of the defined enum values");
    rd->response_code = codes[ra->response_code];
    if (ra->scheme_rewrite_specifier_case == ENVOY__CONFIG__ROUTE__V3__REDIRECT_ACTION__SCHEME_REWRITE_SPECIFIER_SCHEME_REDIRECT)
        rd->scheme = c_str(c, ra->scheme_redirect, 1);
    else if (ra->scheme_rewrite_specifier_case ==
                 ENVOY__CONFIG__ROUTE__V3__REDIRECT_ACTION__SCHEME_REWRITE_SPECIFIER_HTTPS_REDIRECT &&
             ra->https_redirect)
        rd->scheme = h2o_iovec_init(H2O_STRLIT("https"));
    rd->host = c_str(c, ra->host_redirect, 0);
    if (ra->port_redirect != 0) {
        char port[16];
        rd->port = c_dup(c, port, (size_t)snprintf(port, sizeof(port), ":%u", ra->port_redirect), 0);
    }
    rd->strip_query = ra->strip_query;
    switch (ra->path_rewrite_specifier_case) {
    case ENVOY__CONFIG__ROUTE__V3__REDIRECT_ACTION__PATH_REWRITE_SPECIFIER_PATH_REDIRECT:
        rd->path = c_str(c, ra->path_redirect, 0);
        rd->path_has_query = strchr(ra->path_redirect, '?') != NULL;
        break;
    case ENVOY__CONFIG__ROUTE__V3__REDIRECT_ACTION__PATH_REWRITE_SPECIFIER_PREFIX_REWRITE:
        rd->prefix_rewrite = c_str(c, ra->prefix_rewrite, 0);
        break;
    case ENVOY__CONFIG__ROUTE__V3__REDIRECT_ACTION__PATH_REWRITE_SPECIFIER_REGEX_REWRITE:
        if (ra->regex_rewrite == NULL || ra->regex_rewrite->pattern == NULL)
            return lg_error(c->err, "regex_rewrite.pattern: value is required");
        if (compile_regex(c, ra->regex_rewrite->pattern, &rd->regex_rewrite) != 0)
            return errp(c->err, "regex_rewrite.pattern");
        rd->regex_rewrite_substitution = c_str(c, ra->regex_rewrite->substitution, 0);
        break;
    default:
        break;
    }
    return 0;
}

static int read_body_file(lg__rc_t *c, const char *filename, lg_route_t *r)
{
    uint32_t max = c->t->max_direct_response_body_size_bytes;
    size_t len;
    lg_error_t ferr;
    char *data = lg_read_file(filename, &len, &ferr);
    if (data == NULL)
        return lg_error(c->err, "response body file %s does not exist", filename);
    if (len > max) {
        free(data);
        return lg_error(c->err, "response body file %s size is %zu bytes; maximum is %u", filename, len, max);
    }
    r->direct_body = c_dup(c, data, len, 0);
    free(data);
    return 0;
}

static int compile_direct_response(lg__rc_t *c, const Envoy__Config__Route__V3__DirectResponseAction *d, lg_route_t *r)
{
    if (d->status < 200 || d->status >= 600)
        return lg_error(c->err, "status: value must be inside range [200, 600)");
    r->direct_status = (int)d->status;
    const Envoy__Config__Core__V3__DataSource *b = d->body;
    if (b == NULL)
        return 0;
    r->has_direct_body = 1;
    const char *data = "";
    size_t len = 0;
    switch (b->specifier_case) {
    case ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_FILENAME:
        return read_body_file(c, b->filename, r) != 0 ? errp(c->err, "body.filename") : 0;
    case ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_INLINE_BYTES:
        data = (const char *)b->inline_bytes.data, len = b->inline_bytes.len;
        break;
    case ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_INLINE_STRING:
        data = b->inline_string, len = strlen(data);
        break;
    case ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_ENVIRONMENT_VARIABLE:
        if ((data = getenv(b->environment_variable)) == NULL)
            return lg_error(c->err, "body.environment_variable: Environment variable doesn't exist: %s", b->environment_variable);
        len = strlen(data);
        break;
    default:
        break;
    }
    if (len > c->t->max_direct_response_body_size_bytes)
        return lg_error(c->err, "body: response body size is %zu bytes; maximum is %u", len,
                        c->t->max_direct_response_body_size_bytes);
    r->direct_body = c_dup(c, data, len, 0);
    return 0;
}

/* ---- route ---- */

static int compile_action(lg__rc_t *c, const Envoy__Config__Route__V3__Route *rt, lg_route_t *r)
{
    switch (rt->action_case) {
    case ENVOY__CONFIG__ROUTE__V3__ROUTE__ACTION_ROUTE:
        r->kind = LG_ROUTE_FORWARD;
        return compile_route_action(c, rt->route, r) != 0 ? errp(c->err, "route") : 0;
    case ENVOY__CONFIG__ROUTE__V3__ROUTE__ACTION_REDIRECT:
        r->kind = LG_ROUTE_REDIRECT;
        return compile_redirect(c, rt->redirect, &r->redirect) != 0 ? errp(c->err, "redirect") : 0;
    case ENVOY__CONFIG__ROUTE__V3__ROUTE__ACTION_DIRECT_RESPONSE:
        r->kind = LG_ROUTE_DIRECT_RESPONSE;
        return compile_direct_response(c, rt->direct_response, r) != 0 ? errp(c->err, "direct_response") : 0;
    case ENVOY__CONFIG__ROUTE__V3__ROUTE__ACTION_NON_FORWARDING_ACTION:
        r->kind = LG_ROUTE_NON_FORWARDING;
        return 0;
    case ENVOY__CONFIG__ROUTE__V3__ROUTE__ACTION_FILTER_ACTION:
        return unsupported(c->err, "filter_action");
    default:
        return lg_error(c->err, "action: value is required");
    }
}

static int compile_route(lg__rc_t *c, const Envoy__Config__Route__V3__Route *rt, lg_route_t *r)
{
    r->pb = rt;
    r->name = c_str(c, rt->name, 0);
    if (rt->match == NULL)
        return lg_error(c->err, "match: value is required");
    if (compile_match(c, rt->match, r) != 0)
        return errp(c->err, "match");
    if (compile_action(c, rt, r) != 0)
        return -1;
    r->per_request_buffer_limit_bytes =
        rt->per_request_buffer_limit_bytes != NULL ? rt->per_request_buffer_limit_bytes->value : r->per_request_buffer_limit_bytes;
    return COMPILE_MUTATIONS(c, rt, &r->request_headers, &r->response_headers) ? -1 : 0;
}

/* ---- virtual host ---- */

static int reject_vhost_fields(lg__rc_t *c, const Envoy__Config__Route__V3__VirtualHost *v)
{
    if (v->matcher != NULL)
        return unsupported(c->err, "matcher");
    if (v->retry_policy_typed_config != NULL)
        return unsupported(c->err, "retry_policy_typed_config");
    if (v->hedge_policy != NULL)
        return unsupported(c->err, "hedge_policy");
    if ((unsigned)v->require_tls > ENVOY__CONFIG__ROUTE__V3__VIRTUAL_HOST__TLS_REQUIREMENT_TYPE__ALL)
        return lg_error(c->err, "require_tls: value must be one of the defined enum values");
    return 0;
}

static void init_ssl_redirect(lg_vhost_t *vh)
{
    lg_route_t *r = &vh->_ssl_redirect;
    r->vhost = vh;
    r->index = SIZE_MAX;
    r->kind = LG_ROUTE_REDIRECT;
    r->redirect.ssl_redirect = 1;
    r->redirect.response_code = 301;
    r->per_request_buffer_limit_bytes = UINT32_MAX;
}

static int compile_vhost_policies(lg__rc_t *c, const Envoy__Config__Route__V3__VirtualHost *v, lg_vhost_t *vh)
{
    if (v->retry_policy != NULL && compile_retry_policy(c, v->retry_policy, &vh->retry_policy) != 0)
        return errp(c->err, "retry_policy");
    lg_mirror_policy_t *mirrors;
    if (compile_mirrors(c, v->n_request_mirror_policies, v->request_mirror_policies, &mirrors) != 0)
        return -1;
    vh->n_mirror_policies = v->n_request_mirror_policies != 0 ? v->n_request_mirror_policies : c->t->n_mirror_policies;
    vh->mirror_policies = v->n_request_mirror_policies != 0 ? mirrors : c->t->mirror_policies;
    return COMPILE_MUTATIONS(c, v, &vh->request_headers, &vh->response_headers) ? -1 : 0;
}

static int compile_vhost(lg__rc_t *c, const Envoy__Config__Route__V3__VirtualHost *v, lg_vhost_t *vh)
{
    vh->pb = v;
    vh->table = c->t;
    if (v->name[0] == '\0')
        return lg_error(c->err, "name: value length must be at least 1 characters");
    if (v->n_domains == 0)
        return lg_error(c->err, "domains: value must contain at least 1 item(s)");
    if (reject_vhost_fields(c, v) != 0 || compile_vhost_policies(c, v, vh) != 0)
        return -1;
    vh->name = c_str(c, v->name, 0);
    vh->require_tls = (lg_require_tls_t)v->require_tls;
    vh->include_request_attempt_count = v->include_request_attempt_count;
    vh->include_attempt_count_in_response = v->include_attempt_count_in_response;
    vh->include_is_timeout_retry_header = v->include_is_timeout_retry_header;
    init_ssl_redirect(vh);
    uint32_t buffer_limit = v->per_request_buffer_limit_bytes != NULL ? v->per_request_buffer_limit_bytes->value : UINT32_MAX;
    vh->n_routes = v->n_routes;
    vh->routes = v->n_routes != 0 ? c_alloc(c, v->n_routes * sizeof(*vh->routes)) : NULL;
    for (size_t i = 0; i != v->n_routes; ++i) {
        lg_route_t *r = &vh->routes[i];
        r->vhost = vh;
        r->index = i;
        r->per_request_buffer_limit_bytes = buffer_limit;
        if (compile_route(c, v->routes[i], r) != 0)
            return errp(c->err, "routes[%zu]", i);
    }
    vh->_index = lg__route_index_build(c->t, vh);
    return 0;
}

static int add_domains(lg__rc_t *c, const Envoy__Config__Route__V3__VirtualHost *v, const lg_vhost_t *vh)
{
    for (size_t i = 0; i != v->n_domains; ++i) {
        if (!valid_header_chars(v->domains[i]))
            return lg_error(c->err, "domains[%zu]: value does not match regex pattern for HTTP header values", i);
        if (lg__domain_index_add(c->t, v->domains[i], vh, c->err) != 0)
            return lg_error_prefix(c->err, "domains[%zu]", i);
    }
    return 0;
}

/* ---- table ---- */

static int reject_table_fields(lg__rc_t *c, const Envoy__Config__Route__V3__RouteConfiguration *rc)
{
    if (rc->vhds != NULL)
        return unsupported(c->err, "vhds");
    if (rc->n_cluster_specifier_plugins != 0)
        return unsupported(c->err, "cluster_specifier_plugins");
    return 0;
}

static int compile_table_fields(lg__rc_t *c, const Envoy__Config__Route__V3__RouteConfiguration *rc)
{
    lg_route_table_t *t = c->t;
    t->name = c_str(c, rc->name, 0);
    t->most_specific_header_mutations_wins = rc->most_specific_header_mutations_wins;
    t->ignore_port_in_host_matching = rc->ignore_port_in_host_matching;
    t->ignore_path_parameters_in_path_matching = rc->ignore_path_parameters_in_path_matching;
    t->max_direct_response_body_size_bytes =
        rc->max_direct_response_body_size_bytes != NULL ? rc->max_direct_response_body_size_bytes->value : 4096;
    t->n_internal_only_headers = rc->n_internal_only_headers;
    t->internal_only_headers = c_alloc(c, (rc->n_internal_only_headers + 1) * sizeof(*t->internal_only_headers));
    for (size_t i = 0; i != rc->n_internal_only_headers; ++i) {
        if (check_header_name(rc->internal_only_headers[i], c->err) != 0)
            return errp(c->err, "internal_only_headers[%zu]", i);
        t->internal_only_headers[i] = c_str(c, rc->internal_only_headers[i], 1);
    }
    t->n_mirror_policies = rc->n_request_mirror_policies;
    if (compile_mirrors(c, rc->n_request_mirror_policies, rc->request_mirror_policies, &t->mirror_policies) != 0)
        return -1;
    return COMPILE_MUTATIONS(c, rc, &t->request_headers, &t->response_headers) ? -1 : 0;
}

static const Envoy__Config__Route__V3__RouteConfiguration *sort_rc;

static int cmp_vhost_name(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    int r = strcmp(sort_rc->virtual_hosts[x]->name, sort_rc->virtual_hosts[y]->name);
    return r != 0 ? r : (x > y) - (x < y);
}

/* Sorting by name keeps this O(n log n) for tables with thousands of vhosts. */
static int check_unique_vhost_names(lg__rc_t *c, const Envoy__Config__Route__V3__RouteConfiguration *rc)
{
    size_t n = rc->n_virtual_hosts, *order = lg_malloc((n + 1) * sizeof(*order)), dup = SIZE_MAX;
    for (size_t i = 0; i != n; ++i)
        order[i] = i;
    sort_rc = rc;
    qsort(order, n, sizeof(*order), cmp_vhost_name);
    for (size_t i = 1; i < n; ++i)
        if (strcmp(rc->virtual_hosts[order[i - 1]]->name, rc->virtual_hosts[order[i]]->name) == 0 && order[i] < dup)
            dup = order[i];
    free(order);
    if (dup == SIZE_MAX || rc->virtual_hosts[dup]->name[0] == '\0')
        return 0;
    return lg_error(
        c->err,
        "virtual_hosts[%zu].name: Only unique values for virtual host names are permitted. Duplicate entry of %s in route %s", dup,
        rc->virtual_hosts[dup]->name, rc->name);
}

static int compile_table(lg__rc_t *c, const Envoy__Config__Route__V3__RouteConfiguration *rc)
{
    lg_route_table_t *t = c->t;
    if (reject_table_fields(c, rc) != 0 || compile_table_fields(c, rc) != 0)
        return -1;
    t->n_vhosts = rc->n_virtual_hosts;
    t->vhosts = c_alloc(c, (rc->n_virtual_hosts + 1) * sizeof(*t->vhosts));
    if (check_unique_vhost_names(c, rc) != 0)
        return -1;
    for (size_t i = 0; i != rc->n_virtual_hosts; ++i) {
        const Envoy__Config__Route__V3__VirtualHost *v = rc->virtual_hosts[i];
        if (compile_vhost(c, v, &t->vhosts[i]) != 0 || add_domains(c, v, &t->vhosts[i]) != 0)
            return errp(c->err, "virtual_hosts[%zu]", i);
    }
    return 0;
}

static Envoy__Config__Route__V3__RouteConfiguration *copy_message(const Envoy__Config__Route__V3__RouteConfiguration *rc)
{
    size_t len = protobuf_c_message_get_packed_size(&rc->base);
    uint8_t *buf = lg_malloc(len + 1);
    protobuf_c_message_pack(&rc->base, buf);
    Envoy__Config__Route__V3__RouteConfiguration *copy = envoy__config__route__v3__route_configuration__unpack(NULL, len, buf);
    free(buf);
    return copy;
}

lg_route_table_t *lg_route_table_compile_owned(Envoy__Config__Route__V3__RouteConfiguration *rc,
                                               const lg_route_compile_opts_t *opts, lg_error_t *err)
{
    static const lg_route_compile_opts_t no_opts = {0};
    lg_route_table_t *t = lg_calloc(1, sizeof(*t));
    t->_refcnt = 1;
    t->pb = t->_pb = rc;
    if (opts == NULL)
        opts = &no_opts;
    lg__rc_t c = {t, opts->validate_clusters, opts, err};
    if (rc->validate_clusters != NULL)
        c.validate_clusters = rc->validate_clusters->value;
    if (opts->cluster_exists == NULL)
        c.validate_clusters = 0;
    if (compile_table(&c, rc) != 0) {
        lg_route_table_free(t);
        return NULL;
    }
    return t;
}

lg_route_table_t *lg_route_table_compile(const Envoy__Config__Route__V3__RouteConfiguration *rc,
                                         const lg_route_compile_opts_t *opts, lg_error_t *err)
{
    Envoy__Config__Route__V3__RouteConfiguration *copy = copy_message(rc);
    if (copy == NULL) {
        lg_error(err, "cannot copy the route configuration");
        return NULL;
    }
    return lg_route_table_compile_owned(copy, opts, err);
}

lg_route_table_t *lg_route_table_retain(lg_route_table_t *t)
{
    __atomic_add_fetch(&t->_refcnt, 1, __ATOMIC_RELAXED);
    return t;
}

static void destroy(lg_route_table_t *t)
{
    lg__domain_index_free(t->_domains);
    for (size_t i = 0; i != t->_n_regexes; ++i)
        lg_regex_free(t->_regexes[i]);
    for (size_t i = 0; i != t->_n_formats; ++i)
        lg_format_free(t->_formats[i]);
    free(t->_regexes);
    free(t->_formats);
    if (t->_pb != NULL)
        protobuf_c_message_free_unpacked(&t->_pb->base, NULL);
    chunks_free(t);
    free(t);
}

void lg_route_table_release(lg_route_table_t *t)
{
    if (t != NULL && __atomic_sub_fetch(&t->_refcnt, 1, __ATOMIC_ACQ_REL) == 0)
        destroy(t);
}

void lg_route_table_free(lg_route_table_t *t)
{
    lg_route_table_release(t);
}

const char *lg_route_table_name(const lg_route_table_t *t)
{
    return t->name.base != NULL ? t->name.base : "";
}
