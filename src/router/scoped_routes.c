/*
 * Scoped routes (Envoy's scoped_config_impl.cc): scope key builders and the
 * immutable scope sets they index. See include/legate/scoped_routes.h.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <h2o/string_.h>
#include "legate/format.h"
#include "legate/scoped_routes.h"

typedef Envoy__Extensions__Filters__Network__HttpConnectionManager__V3__ScopedRoutes__ScopeKeyBuilder key_builder_pb_t;
typedef Envoy__Extensions__Filters__Network__HttpConnectionManager__V3__ScopedRoutes__ScopeKeyBuilder__FragmentBuilder__HeaderValueExtractor
    extractor_pb_t;
typedef Envoy__Config__Route__V3__ScopedRouteConfiguration scope_pb_t;

#define EXTRACT_INDEX \
    ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__SCOPED_ROUTES__SCOPE_KEY_BUILDER__FRAGMENT_BUILDER__HEADER_VALUE_EXTRACTOR__EXTRACT_TYPE_INDEX
#define EXTRACT_ELEMENT \
    ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__SCOPED_ROUTES__SCOPE_KEY_BUILDER__FRAGMENT_BUILDER__HEADER_VALUE_EXTRACTOR__EXTRACT_TYPE_ELEMENT
#define FRAGMENT_HEADER_VALUE_EXTRACTOR \
    ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__SCOPED_ROUTES__SCOPE_KEY_BUILDER__FRAGMENT_BUILDER__TYPE_HEADER_VALUE_EXTRACTOR
#define KEY_FRAGMENT_STRING_KEY ENVOY__CONFIG__ROUTE__V3__SCOPED_ROUTE_CONFIGURATION__KEY__FRAGMENT__TYPE_STRING_KEY

/* One header_value_extractor. Strings are owned; `name` is lower-case. */
typedef struct st_lg_scope_fragment_builder_t {
    h2o_iovec_t name;
    h2o_iovec_t element_separator; /* empty: the whole value is the only element */
    int by_element;                /* element {separator, key} rather than index */
    uint32_t index;
    h2o_iovec_t kv_separator, kv_key;
} lg_scope_fragment_builder_t;

struct st_lg_scope_key_builder_t {
    int refcnt;
    size_t n;
    lg_scope_fragment_builder_t *fragments;
};

struct st_lg_scoped_routes_t {
    int refcnt;
    lg_scope_key_builder_t *kb;
    size_t n;
    lg_scope_t *scopes;
    /* Open addressing over the key hashes: scope index + 1, 0 = empty; capacity
     * is a power of two at least twice n, so probes end. */
    uint32_t *slots;
    size_t mask;
    const lg_scope_t **by_name; /* sorted by name */
};

static h2o_iovec_t dup_iov(const char *s, size_t len)
{
    char *p = lg_malloc(len + 1);
    memcpy(p, s, len);
    p[len] = '\0';
    return h2o_iovec_init(p, len);
}

static h2o_iovec_t dup_str(const char *s)
{
    return dup_iov(s != NULL ? s : "", s != NULL ? strlen(s) : 0);
}

/* ---- key builder ---- */

/* PGV's HTTP_HEADER_NAME with strict: false: no NUL, CR or LF. */
static int valid_header_name(const char *s)
{
    return s[0] != '\0' && strpbrk(s, "\r\n") == NULL;
}

static int compile_extractor(lg_scope_fragment_builder_t *f, const extractor_pb_t *m, const char *path, lg_error_t *err)
{
    if (m->name == NULL || !valid_header_name(m->name))
        return lg_error(err, "%s.name: value must be a valid HTTP header name", path);
    if (m->extract_type_case == EXTRACT_INDEX) {
        if (m->index != 0 && (m->element_separator == NULL || m->element_separator[0] == '\0'))
            return lg_error(err, "%s.index: Index > 0 for empty string element separator.", path);
        f->index = m->index;
    } else if (m->extract_type_case == EXTRACT_ELEMENT) {
        if (m->element->separator == NULL || m->element->separator[0] == '\0')
            return lg_error(err, "%s.element.separator: value length must be at least 1 characters", path);
        if (m->element->key == NULL || m->element->key[0] == '\0')
            return lg_error(err, "%s.element.key: value length must be at least 1 characters", path);
        f->by_element = 1;
        f->kv_separator = dup_str(m->element->separator);
        f->kv_key = dup_str(m->element->key);
    } else {
        return lg_error(err, "%s.extract_type: HeaderValueExtractor extract_type not set.", path);
    }
    f->name = dup_str(m->name);
    for (size_t i = 0; i != f->name.len; ++i)
        f->name.base[i] = h2o_tolower(f->name.base[i]);
    f->element_separator = dup_str(m->element_separator);
    return 0;
}

lg_scope_key_builder_t *lg_scope_key_builder_compile(const key_builder_pb_t *m, const char *path, lg_error_t *err)
{
    if (m == NULL) {
        lg_error(err, "%s: value is required", path);
        return NULL;
    }
    if (m->n_fragments == 0) {
        lg_error(err, "%s.fragments: value must contain at least 1 item(s)", path);
        return NULL;
    }
    lg_scope_key_builder_t *kb = lg_calloc(1, sizeof(*kb));
    kb->refcnt = 1;
    kb->fragments = lg_calloc(m->n_fragments, sizeof(*kb->fragments));
    kb->n = m->n_fragments;
    for (size_t i = 0; i != m->n_fragments; ++i) {
        const Envoy__Extensions__Filters__Network__HttpConnectionManager__V3__ScopedRoutes__ScopeKeyBuilder__FragmentBuilder *fb =
            m->fragments[i];
        if (fb->type_case != FRAGMENT_HEADER_VALUE_EXTRACTOR) {
            lg_error(err, "%s.fragments[%zu].type: value is required", path, i);
            goto fail;
        }
        char fpath[512];
        snprintf(fpath, sizeof(fpath), "%s.fragments[%zu].header_value_extractor", path, i);
        if (compile_extractor(kb->fragments + i, fb->header_value_extractor, fpath, err) != 0)
            goto fail;
    }
    return kb;
fail:
    lg_scope_key_builder_release(kb);
    return NULL;
}

lg_scope_key_builder_t *lg_scope_key_builder_retain(lg_scope_key_builder_t *kb)
{
    ++kb->refcnt;
    return kb;
}

void lg_scope_key_builder_release(lg_scope_key_builder_t *kb)
{
    if (kb == NULL || --kb->refcnt != 0)
        return;
    for (size_t i = 0; i != kb->n; ++i) {
        lg_scope_fragment_builder_t *f = kb->fragments + i;
        free(f->name.base);
        free(f->element_separator.base);
        free(f->kv_separator.base);
        free(f->kv_key.base);
    }
    free(kb->fragments);
    free(kb);
}

void lg_scope_key_builder_free(lg_scope_key_builder_t *kb)
{
    lg_scope_key_builder_release(kb);
}

size_t lg_scope_key_builder_n_fragments(const lg_scope_key_builder_t *kb)
{
    return kb->n;
}

/* Finds `sep` in [p, end); returns its start or NULL. */
static const char *find_sep(const char *p, const char *end, h2o_iovec_t sep)
{
    if (sep.len == 0 || (size_t)(end - p) < sep.len)
        return NULL;
    for (const char *last = end - sep.len; p <= last; ++p) {
        if ((p = memchr(p, sep.base[0], (size_t)(last - p) + 1)) == NULL)
            return NULL;
        if (memcmp(p, sep.base, sep.len) == 0)
            return p;
    }
    return NULL;
}

/* Envoy's StrSplit(element, MaxSplits(separator, 1)): the value after the first
 * separator, or "" when there is none. */
static int element_value(const lg_scope_fragment_builder_t *f, h2o_iovec_t el, h2o_iovec_t *out)
{
    const char *end = el.base + el.len, *s = find_sep(el.base, end, f->kv_separator);
    const char *key_end = s != NULL ? s : end;
    if (!h2o_memis(el.base, (size_t)(key_end - el.base), f->kv_key.base, f->kv_key.len))
        return 0;
    *out = s != NULL ? h2o_iovec_init(s + f->kv_separator.len, (size_t)(end - s - f->kv_separator.len)) : h2o_iovec_init("", 0);
    return 1;
}

int lg_scope_key_fragment(const lg_scope_key_builder_t *kb, size_t i, const lg_req_head_t *req, h2o_iovec_t *out)
{
    const lg_scope_fragment_builder_t *f = kb->fragments + i;
    h2o_iovec_t v;
    if (!lg_req_header_first(req, f->name.base, f->name.len, &v))
        return 0;
    const char *p = v.base, *end = v.base + v.len;
    for (uint32_t idx = 0;; ++idx) {
        const char *s = find_sep(p, end, f->element_separator);
        h2o_iovec_t el = h2o_iovec_init(p, (size_t)((s != NULL ? s : end) - p));
        if (f->by_element) {
            if (element_value(f, el, out))
                return 1;
        } else if (idx == f->index) {
            *out = el;
            return 1;
        }
        if (s == NULL)
            return 0;
        p = s + f->element_separator.len;
    }
}

/* ---- scope sets ---- */

/* FNV-1a over each fragment's length (8 bytes, little-endian) and bytes, so
 * that ("ab","c") and ("a","bc") differ. */
static uint64_t hash_fragment(uint64_t h, h2o_iovec_t f)
{
    uint8_t len[8];
    for (size_t i = 0; i != sizeof(len); ++i)
        len[i] = (uint8_t)((uint64_t)f.len >> (8 * i));
    return lg_fnv1a(lg_fnv1a(h, len, sizeof(len)), f.base, f.len);
}

static void free_scope(lg_scope_t *s)
{
    free(s->name);
    free(s->route_config_name);
    if (s->route_table != NULL)
        lg_route_table_release(s->route_table);
    for (size_t i = 0; i != s->n_fragments; ++i)
        free(s->fragments[i].base);
    free(s->fragments);
}

static int compile_key(lg_scope_t *s, const Envoy__Config__Route__V3__ScopedRouteConfiguration__Key *key, const char *path,
                       lg_error_t *err)
{
    if (key == NULL)
        return lg_error(err, "%s.key: value is required", path);
    if (key->n_fragments == 0)
        return lg_error(err, "%s.key.fragments: value must contain at least 1 item(s)", path);
    s->fragments = lg_calloc(key->n_fragments, sizeof(*s->fragments));
    s->hash = LG_FNV1A_INIT;
    for (size_t i = 0; i != key->n_fragments; ++i) {
        if (key->fragments[i]->type_case != KEY_FRAGMENT_STRING_KEY)
            return lg_error(err, "%s.key.fragments[%zu].type: value is required", path, i);
        s->fragments[i] = dup_str(key->fragments[i]->string_key);
        s->n_fragments = i + 1;
        s->hash = hash_fragment(s->hash, s->fragments[i]);
    }
    return 0;
}

static int compile_route_config(lg_scope_t *s, const scope_pb_t *m, const lg_scoped_routes_opts_t *opts, const char *path,
                                lg_error_t *err)
{
    if (!opts->inline_routes) {
        if (m->route_configuration_name == NULL || m->route_configuration_name[0] == '\0')
            return lg_error(err, "%s.route_configuration_name: route_configuration_name is empty.", path);
        s->route_config_name = lg_strdup(m->route_configuration_name);
        return 0;
    }
    if (m->route_configuration_name != NULL && m->route_configuration_name[0] != '\0')
        return lg_error(err,
                        "%s.route_configuration_name: Fetching routes via RDS (route_configuration_name) is not supported with "
                        "inline scoped routes.",
                        path);
    if (m->route_configuration == NULL)
        return lg_error(err, "%s.route_configuration: You must specify a route_configuration with inline scoped routes.", path);
    if ((s->route_table = lg_route_table_compile(m->route_configuration, opts->route_opts, err)) == NULL)
        return lg_error_prefix(err, "%s.route_configuration", path);
    s->route_config_name = lg_strdup(lg_route_table_name(s->route_table));
    return 0;
}

static int compile_scope(lg_scope_t *s, const scope_pb_t *m, const lg_scoped_routes_opts_t *opts, const char *path, lg_error_t *err)
{
    if (m->name == NULL || m->name[0] == '\0')
        return lg_error(err, "%s.name: value length must be at least 1 characters", path);
    s->name = lg_strdup(m->name);
    s->on_demand = m->on_demand;
    if (compile_key(s, m->key, path, err) != 0)
        return -1;
    return compile_route_config(s, m, opts, path, err);
}

static int same_key(const lg_scope_t *a, const lg_scope_t *b)
{
    if (a->hash != b->hash || a->n_fragments != b->n_fragments)
        return 0;
    for (size_t i = 0; i != a->n_fragments; ++i)
        if (!h2o_memis(a->fragments[i].base, a->fragments[i].len, b->fragments[i].base, b->fragments[i].len))
            return 0;
    return 1;
}

static int by_name_cmp(const void *a, const void *b)
{
    return strcmp((*(const lg_scope_t *const *)a)->name, (*(const lg_scope_t *const *)b)->name);
}

/* Sorts the name index; a duplicate name is an error, as Envoy's SRDS. */
static int index_names(lg_scoped_routes_t *sr, lg_error_t *err)
{
    sr->by_name = lg_malloc(sr->n * sizeof(*sr->by_name) + 1);
    for (size_t i = 0; i != sr->n; ++i)
        sr->by_name[i] = sr->scopes + i;
    qsort(sr->by_name, sr->n, sizeof(*sr->by_name), by_name_cmp);
    for (size_t i = 1; i < sr->n; ++i)
        if (strcmp(sr->by_name[i - 1]->name, sr->by_name[i]->name) == 0)
            return lg_error(err, "duplicate scoped route configuration '%s' found", sr->by_name[i]->name);
    return 0;
}

/* Builds the key index in config order; a second scope with a key already
 * present is an error naming both. Envoy's SRDS rejects such a set with this
 * message; its inline provider instead lets the later scope silently shadow
 * the earlier one. Legate rejects both: a scope that can never match is a
 * config mistake, and one rule for both sources keeps them interchangeable. */
static int index_keys(lg_scoped_routes_t *sr, lg_error_t *err)
{
    size_t cap = 2;
    while (cap < 2 * sr->n)
        cap *= 2;
    sr->slots = lg_calloc(cap, sizeof(*sr->slots));
    sr->mask = cap - 1;
    for (size_t i = 0; i != sr->n; ++i) {
        const lg_scope_t *s = sr->scopes + i;
        size_t at = s->hash & sr->mask;
        for (; sr->slots[at] != 0; at = (at + 1) & sr->mask) {
            const lg_scope_t *other = sr->scopes + sr->slots[at] - 1;
            if (same_key(other, s))
                return lg_error(err, "scope key conflict found, first scope is '%s', second scope is '%s'", other->name, s->name);
        }
        sr->slots[at] = (uint32_t)i + 1;
    }
    return 0;
}

lg_scoped_routes_t *lg_scoped_routes_compile(const lg_scope_key_builder_t *kb, scope_pb_t *const *confs, size_t n,
                                             const lg_scoped_routes_opts_t *opts, const char *path, lg_error_t *err)
{
    static const lg_scoped_routes_opts_t srds = {0};
    if (opts == NULL)
        opts = &srds;
    lg_scoped_routes_t *sr = lg_calloc(1, sizeof(*sr));
    sr->refcnt = 1;
    sr->kb = lg_scope_key_builder_retain((lg_scope_key_builder_t *)kb);
    sr->scopes = lg_calloc(n + 1, sizeof(*sr->scopes));
    for (; sr->n != n; ++sr->n) {
        char spath[512];
        snprintf(spath, sizeof(spath), "%s[%zu]", path, sr->n);
        if (compile_scope(sr->scopes + sr->n, confs[sr->n], opts, spath, err) != 0) {
            ++sr->n; /* the half-built scope is freed with the others */
            goto fail;
        }
    }
    if (index_names(sr, err) != 0 || index_keys(sr, err) != 0) {
        lg_error_prefix(err, "%s", path);
        goto fail;
    }
    return sr;
fail:
    lg_scoped_routes_release(sr);
    return NULL;
}

lg_scoped_routes_t *lg_scoped_routes_retain(lg_scoped_routes_t *sr)
{
    ++sr->refcnt;
    return sr;
}

void lg_scoped_routes_release(lg_scoped_routes_t *sr)
{
    if (sr == NULL || --sr->refcnt != 0)
        return;
    for (size_t i = 0; i != sr->n; ++i)
        free_scope(sr->scopes + i);
    free(sr->scopes);
    free(sr->slots);
    free(sr->by_name);
    lg_scope_key_builder_release(sr->kb);
    free(sr);
}

/* Whether the request's key equals the scope's (fragments re-extracted: no
 * buffer, and rare since hashes must collide first). */
static int request_has_key(const lg_scope_key_builder_t *kb, const lg_req_head_t *req, const lg_scope_t *s)
{
    if (s->n_fragments != kb->n)
        return 0;
    for (size_t i = 0; i != kb->n; ++i) {
        h2o_iovec_t v;
        if (!lg_scope_key_fragment(kb, i, req, &v) || !h2o_memis(v.base, v.len, s->fragments[i].base, s->fragments[i].len))
            return 0;
    }
    return 1;
}

const lg_scope_t *lg_scoped_routes_match(const lg_scoped_routes_t *sr, const lg_req_head_t *req)
{
    if (sr == NULL || sr->n == 0)
        return NULL;
    uint64_t h = LG_FNV1A_INIT;
    for (size_t i = 0; i != sr->kb->n; ++i) {
        h2o_iovec_t v;
        if (!lg_scope_key_fragment(sr->kb, i, req, &v))
            return NULL;
        h = hash_fragment(h, v);
    }
    for (size_t at = h & sr->mask; sr->slots[at] != 0; at = (at + 1) & sr->mask) {
        const lg_scope_t *s = sr->scopes + sr->slots[at] - 1;
        if (s->hash == h && request_has_key(sr->kb, req, s))
            return s;
    }
    return NULL;
}

const char *lg_scoped_routes_find(const lg_scoped_routes_t *sr, const lg_req_head_t *req)
{
    const lg_scope_t *s = lg_scoped_routes_match(sr, req);
    return s != NULL ? s->route_config_name : NULL;
}

const lg_route_table_t *lg_scoped_routes_find_table(const lg_scoped_routes_t *sr, const lg_req_head_t *req)
{
    const lg_scope_t *s = lg_scoped_routes_match(sr, req);
    return s != NULL ? s->route_table : NULL;
}

size_t lg_scoped_routes_count(const lg_scoped_routes_t *sr)
{
    return sr->n;
}

const lg_scope_t *lg_scoped_routes_get(const lg_scoped_routes_t *sr, size_t i)
{
    return i < sr->n ? sr->scopes + i : NULL;
}

const lg_scope_t *lg_scoped_routes_by_name(const lg_scoped_routes_t *sr, const char *name)
{
    size_t lo = 0, hi = sr->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(name, sr->by_name[mid]->name);
        if (c == 0)
            return sr->by_name[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}
