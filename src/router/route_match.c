/*
 * Matching requests against a compiled route table, exactly as Envoy's
 * RouteMatcher / VirtualHostImpl / RouteEntryImplBase do, but with indexes:
 * domains are hashed, path routes are hashed by their path, and prefix and
 * path_separated_prefix routes sit in a byte trie, so that a lookup costs
 * O(path length) plus the candidates that match by path, whatever the number
 * of routes. First-match order is kept by always taking the smallest route
 * index that fully matches among the exact-path and trie candidates and the
 * routes that are not indexed (regex, connect).
 */
#include <ctype.h>
#include <h2o/string_.h>
#include "legate/format.h"
#include "legate/http.h"
#include "legate/route.h"
#include "legate/runtime.h"

/* ---- domain index ---- */

typedef struct st_lg__dslot_t {
    char *key; /* NULL = empty slot */
    size_t len;
    const lg_vhost_t *vh;
} lg__dslot_t;

typedef struct st_lg__dmap_t {
    lg__dslot_t *slots;
    size_t cap, size;
} lg__dmap_t;

struct st_lg__domain_index_t {
    lg__dmap_t exact, suffix, prefix;
    size_t n_suffix_lens, n_prefix_lens;
    size_t *suffix_lens, *prefix_lens; /* distinct key lengths, longest first */
    const lg_vhost_t *default_vh;
};

/* FNV-1a, of the lowercased bytes when `lower`. */
static uint64_t hash_bytes(const char *s, size_t len, int lower)
{
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i != len; ++i)
        h = (h ^ (unsigned char)(lower ? h2o_tolower(s[i]) : s[i])) * 1099511628211ull;
    return h;
}

static lg__dslot_t *dmap_slot(const lg__dmap_t *m, const char *key, size_t len)
{
    size_t mask = m->cap - 1;
    for (size_t i = hash_bytes(key, len, 0) & mask;; i = (i + 1) & mask) {
        lg__dslot_t *s = &m->slots[i];
        if (s->key == NULL || (s->len == len && memcmp(s->key, key, len) == 0))
            return s;
    }
}

static const lg_vhost_t *dmap_get(const lg__dmap_t *m, const char *key, size_t len)
{
    if (m->size == 0)
        return NULL;
    return dmap_slot(m, key, len)->vh;
}

static void dmap_grow(lg__dmap_t *m)
{
    lg__dmap_t old = *m;
    m->cap = old.cap == 0 ? 16 : old.cap * 2;
    m->slots = lg_calloc(m->cap, sizeof(*m->slots));
    for (size_t i = 0; i != old.cap; ++i)
        if (old.slots[i].key != NULL)
            *dmap_slot(m, old.slots[i].key, old.slots[i].len) = old.slots[i];
    free(old.slots);
}

/* Takes ownership of key; returns 0, or -1 if present (key freed). */
static int dmap_put(lg__dmap_t *m, char *key, size_t len, const lg_vhost_t *vh)
{
    if ((m->size + 1) * 2 > m->cap)
        dmap_grow(m);
    lg__dslot_t *s = dmap_slot(m, key, len);
    if (s->key != NULL) {
        free(key);
        return -1;
    }
    *s = (lg__dslot_t){key, len, vh};
    ++m->size;
    return 0;
}

static void dmap_free(lg__dmap_t *m)
{
    for (size_t i = 0; i != m->cap; ++i)
        free(m->slots[i].key);
    free(m->slots);
}

static void add_len(size_t **lens, size_t *n, size_t len)
{
    size_t i = 0;
    while (i != *n && (*lens)[i] > len)
        ++i;
    if (i != *n && (*lens)[i] == len)
        return;
    *lens = lg_realloc(*lens, (*n + 1) * sizeof(**lens));
    memmove(*lens + i + 1, *lens + i, (*n - i) * sizeof(**lens));
    (*lens)[i] = len;
    ++*n;
}

int lg__domain_index_add(lg_route_table_t *t, const char *domain, const lg_vhost_t *vh, lg_error_t *err)
{
    if (t->_domains == NULL)
        t->_domains = lg_calloc(1, sizeof(*t->_domains));
    struct st_lg__domain_index_t *dx = t->_domains;
    size_t len = strlen(domain);
    char *key = lg_strndup(domain, len), lower[LG_ERROR_MAX / 2];
    for (size_t i = 0; i != len; ++i)
        key[i] = (char)tolower((unsigned char)key[i]);
    snprintf(lower, sizeof(lower), "%s", key);
    int dup;
    if (len == 1 && key[0] == '*') {
        free(key);
        if (dx->default_vh != NULL)
            return lg_error(err, "Only a single wildcard domain is permitted in route %.*s", (int)t->name.len, t->name.base);
        dx->default_vh = vh;
        return 0;
    } else if (len != 0 && key[0] == '*') {
        memmove(key, key + 1, len);
        if ((dup = dmap_put(&dx->suffix, key, len - 1, vh)) == 0)
            add_len(&dx->suffix_lens, &dx->n_suffix_lens, len - 1);
    } else if (len != 0 && key[len - 1] == '*') {
        key[len - 1] = '\0';
        if ((dup = dmap_put(&dx->prefix, key, len - 1, vh)) == 0)
            add_len(&dx->prefix_lens, &dx->n_prefix_lens, len - 1);
    } else {
        dup = dmap_put(&dx->exact, key, len, vh);
    }
    if (dup != 0) {
        return lg_error(err, "Only unique values for domains are permitted. Duplicate entry of domain %s in route %.*s", lower,
                        (int)t->name.len, t->name.base);
    }
    return 0;
}

void lg__domain_index_free(struct st_lg__domain_index_t *dx)
{
    if (dx == NULL)
        return;
    dmap_free(&dx->exact);
    dmap_free(&dx->suffix);
    dmap_free(&dx->prefix);
    free(dx->suffix_lens);
    free(dx->prefix_lens);
    free(dx);
}

/* Envoy's HeaderUtility::getPortStart: the ':' of a port, or -1 (IPv6 literals need brackets). */
static ssize_t port_start(const char *host, size_t len)
{
    ssize_t colon = -1, bracket = -1;
    for (size_t i = 0; i != len; ++i) {
        if (host[i] == ':')
            colon = (ssize_t)i;
        else if (host[i] == ']')
            bracket = (ssize_t)i;
    }
    if (colon < 0 || (bracket >= 0 && bracket > colon))
        return -1;
    return colon;
}

static const lg_vhost_t *find_wildcard(const lg__dmap_t *m, const size_t *lens, size_t n, const char *host, size_t len, int suffix)
{
    for (size_t i = 0; i != n; ++i) {
        /* >= because *.foo.com must not match .foo.com */
        if (lens[i] >= len)
            continue;
        const lg_vhost_t *vh = dmap_get(m, suffix ? host + len - lens[i] : host, lens[i]);
        if (vh != NULL)
            return vh;
    }
    return NULL;
}

static const lg_vhost_t *lookup_host(const struct st_lg__domain_index_t *dx, const char *host, size_t len)
{
    const lg_vhost_t *vh;
    if ((vh = dmap_get(&dx->exact, host, len)) != NULL)
        return vh;
    if ((vh = find_wildcard(&dx->suffix, dx->suffix_lens, dx->n_suffix_lens, host, len, 1)) != NULL)
        return vh;
    if ((vh = find_wildcard(&dx->prefix, dx->prefix_lens, dx->n_prefix_lens, host, len, 0)) != NULL)
        return vh;
    return dx->default_vh;
}

const lg_vhost_t *lg_route_find_vhost(const lg_route_table_t *t, const lg_req_head_t *req)
{
    const struct st_lg__domain_index_t *dx = t->_domains;
    if (dx == NULL)
        return NULL;
    if (dx->exact.size == 0 && dx->suffix.size == 0 && dx->prefix.size == 0)
        return dx->default_vh;
    if (req->authority.base == NULL)
        return NULL;
    size_t len = req->authority.len;
    if (t->ignore_port_in_host_matching) {
        ssize_t p = port_start(req->authority.base, len);
        if (p >= 0)
            len = (size_t)p;
    }
    char stack[256], *host = len <= sizeof(stack) ? stack : lg_malloc(len);
    for (size_t i = 0; i != len; ++i)
        host[i] = (char)tolower((unsigned char)req->authority.base[i]);
    const lg_vhost_t *vh = lookup_host(dx, host, len);
    if (host != stack)
        free(host);
    return vh;
}

/* ---- string / header / query matchers ---- */

static int eq_nocase(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i != n; ++i)
        if (tolower((unsigned char)a[i]) != tolower((unsigned char)b[i]))
            return 0;
    return 1;
}

static int contains(const char *s, size_t len, const char *needle, size_t nlen, int nocase)
{
    if (nlen == 0)
        return 1;
    for (size_t i = 0; i + nlen <= len; ++i)
        if (nocase ? eq_nocase(s + i, needle, nlen) : memcmp(s + i, needle, nlen) == 0)
            return 1;
    return 0;
}

int lg_string_matcher_match(const lg_string_matcher_t *m, const char *s, size_t len)
{
    const h2o_iovec_t v = m->value;
    int ic = m->ignore_case;
    switch (m->kind) {
    case LG_STRING_MATCH_EXACT:
        return len == v.len && (ic ? eq_nocase(s, v.base, len) : memcmp(s, v.base, len) == 0);
    case LG_STRING_MATCH_PREFIX:
        return len >= v.len && (ic ? eq_nocase(s, v.base, v.len) : memcmp(s, v.base, v.len) == 0);
    case LG_STRING_MATCH_SUFFIX:
        return len >= v.len && (ic ? eq_nocase(s + len - v.len, v.base, v.len) : memcmp(s + len - v.len, v.base, v.len) == 0);
    case LG_STRING_MATCH_CONTAINS:
        return contains(s, len, v.base, v.len, ic);
    case LG_STRING_MATCH_REGEX:
        return lg_regex_full_match(m->regex, s, len);
    case LG_STRING_MATCH_ANY:
        return 1;
    }
    return 0;
}

/* absl::SimpleAtoi for int64: optional whitespace and sign around decimal digits. */
static int parse_int64(const char *s, size_t len, int64_t *out)
{
    size_t i = 0;
    while (i < len && isspace((unsigned char)s[i]))
        ++i;
    while (len > i && isspace((unsigned char)s[len - 1]))
        --len;
    int neg = 0;
    if (i < len && (s[i] == '+' || s[i] == '-'))
        neg = s[i++] == '-';
    if (i == len)
        return 0;
    uint64_t v = 0, limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    for (; i < len; ++i) {
        if (!isdigit((unsigned char)s[i]))
            return 0;
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (limit - d) / 10)
            return 0;
        v = v * 10 + d;
    }
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return 1;
}

/* The value-based part of a HeaderMatcher (Envoy's HeaderData*Match). */
static int header_value_matches(const lg_header_matcher_t *m, int present, const char *v, size_t len)
{
    if (m->kind == LG_HEADER_MATCH_PRESENT)
        return (present == m->present) != m->invert;
    if (!present && !m->treat_missing_as_empty)
        return 0;
    int match;
    if (m->kind == LG_HEADER_MATCH_RANGE) {
        int64_t n;
        match = parse_int64(v, len, &n) && n >= m->range_start && n < m->range_end;
    } else {
        match = lg_string_matcher_match(&m->str, present ? v : "", present ? len : 0);
    }
    return match != m->invert;
}

/* Calls header_value_matches with every value named m->name joined by ','. */
static int match_joined(const lg_header_matcher_t *m, const lg_headers_t *h, const h2o_iovec_t *single)
{
    if (single != NULL)
        return header_value_matches(m, 1, single->base, single->len);
    ssize_t first = h != NULL ? lg_headers_find(h, m->name.base, m->name.len, 0) : -1;
    if (first < 0)
        return header_value_matches(m, 0, "", 0);
    ssize_t next = lg_headers_find(h, m->name.base, m->name.len, (size_t)first + 1);
    if (next < 0)
        return header_value_matches(m, 1, h->entries[first].value.base, h->entries[first].value.len);
    size_t total = 0;
    for (ssize_t i = first; i >= 0; i = lg_headers_find(h, m->name.base, m->name.len, (size_t)i + 1))
        total += h->entries[i].value.len + 1;
    char stack[1024], *buf = total <= sizeof(stack) ? stack : lg_malloc(total);
    size_t w = 0;
    for (ssize_t i = first; i >= 0; i = lg_headers_find(h, m->name.base, m->name.len, (size_t)i + 1)) {
        if (w != 0)
            buf[w++] = ',';
        memcpy(buf + w, h->entries[i].value.base, h->entries[i].value.len);
        w += h->entries[i].value.len;
    }
    int r = header_value_matches(m, 1, buf, w);
    if (buf != stack)
        free(buf);
    return r;
}

int lg_header_matcher_match(const lg_header_matcher_t *m, const lg_headers_t *headers)
{
    return match_joined(m, headers, NULL);
}

int lg_header_matcher_match_req(const lg_header_matcher_t *m, const lg_req_head_t *req)
{
    h2o_iovec_t v;
    if ((m->name.len != 0 && m->name.base[0] == ':') || h2o_memis(m->name.base, m->name.len, H2O_STRLIT("host"))) {
        if (lg_req_header_first(req, m->name.base, m->name.len, &v))
            return match_joined(m, NULL, &v);
        return header_value_matches(m, 0, "", 0);
    }
    return match_joined(m, &req->headers, NULL);
}

/* Envoy's legacy parseQueryString: the first value of `name`, not decoded. */
static int query_first(h2o_iovec_t path, h2o_iovec_t name, h2o_iovec_t *value)
{
    const char *q = memchr(path.base, '?', path.len);
    if (q == NULL)
        return 0;
    const char *p = q + 1, *end = path.base + path.len;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *stop = amp != NULL ? amp : end;
        const char *eq = memchr(p, '=', (size_t)(stop - p));
        const char *name_end = eq != NULL ? eq : stop;
        if (h2o_memis(p, (size_t)(name_end - p), name.base, name.len)) {
            *value = eq != NULL ? h2o_iovec_init(eq + 1, (size_t)(stop - eq - 1)) : h2o_iovec_init("", 0);
            return 1;
        }
        p = stop + 1;
    }
    return 0;
}

static int query_matches(const lg_query_matcher_t *m, h2o_iovec_t path)
{
    h2o_iovec_t v;
    if (!query_first(path, m->name, &v))
        return 0;
    switch (m->kind) {
    case LG_QUERY_MATCH_PRESENT:
        return m->present;
    case LG_QUERY_MATCH_STRING:
        return lg_string_matcher_match(&m->str, v.base, v.len);
    default:
        return 1;
    }
}

/* ---- route matching ---- */

static int is_grpc(const lg_req_head_t *req)
{
    h2o_iovec_t ct = lg_headers_get(&req->headers, H2O_STRLIT("content-type"));
    static const char grpc[] = "application/grpc";
    size_t n = sizeof(grpc) - 1;
    return ct.base != NULL && ct.len >= n && memcmp(ct.base, grpc, n) == 0 && (ct.len == n || ct.base[n] == '+');
}

/* HTTP/1.1 CONNECT or plain HTTP/2 CONNECT; extended CONNECT (:protocol) is an upgrade. */
static int is_connect(const lg_req_head_t *req)
{
    return h2o_memis(req->method.base, req->method.len, H2O_STRLIT("CONNECT")) && req->protocol.len == 0;
}

/* runtime_fraction: the runtime value of runtime_key overrides the default (Envoy's featureEnabled). */
static int fraction_matches(const lg_route_t *r, uint64_t random)
{
    const Envoy__Config__Core__V3__RuntimeFractionalPercent *rf =
        r->pb != NULL && r->pb->match != NULL ? r->pb->match->runtime_fraction : NULL;
    if (rf == NULL || rf->runtime_key[0] == '\0')
        return random % r->fraction_denominator < r->fraction_numerator;
    return lg_runtime_feature_enabled(lg_runtime_current(), rf->runtime_key, r->fraction_numerator, r->fraction_denominator,
                                      random);
}

/* Everything but the path (RouteEntryImplBase::matchRoute). */
static int rest_matches(const lg_route_t *r, const lg_req_head_t *req, uint64_t random)
{
    if (r->has_runtime_fraction && !fraction_matches(r, random))
        return 0;
    if (r->grpc && !is_grpc(req))
        return 0;
    for (size_t i = 0; i != r->n_headers; ++i)
        if (!lg_header_matcher_match_req(&r->headers[i], req))
            return 0;
    for (size_t i = 0; i != r->n_query; ++i)
        if (!query_matches(&r->query[i], req->path))
            return 0;
    return 1;
}

/* The index lives in the table's memory (lg__route_alloc): building it for
 * 10,000 routes took some 80,000 malloc/realloc calls (and as many frees)
 * when every node and array was allocated on its own. Arrays hold 0, 1 or a
 * power of two of slots and grow by doubling (what they leave behind goes
 * with the table), so a node needs no capacity fields. */
typedef struct st_lg__trie_t {
    unsigned char *keys; /* sorted */
    struct st_lg__trie_t **kids;
    uint32_t *routes; /* ascending route indexes whose key ends here */
    uint32_t n_kids;
    uint32_t n_routes;
} lg__trie_t;

/* Path (exact) routes by their path: open addressing, one slot per distinct
 * path (lowercased for case-insensitive routes) with its routes. */
typedef struct st_lg__pslot_t {
    const char *key; /* NULL = empty slot */
    size_t len;
    uint32_t *routes; /* ascending route indexes */
    uint32_t n_routes;
} lg__pslot_t;

typedef struct st_lg__pmap_t {
    lg__pslot_t *slots; /* mask + 1 of them; NULL when no route is in the map */
    size_t mask;
} lg__pmap_t;

struct st_lg__route_index_t {
    lg__trie_t *sensitive, *insensitive;
    lg__pmap_t exact, exact_insensitive;
    size_t n_other;
    uint32_t *other; /* ascending indexes of routes not in a trie or a map */
};

static lg__trie_t *trie_child(const lg__trie_t *n, unsigned char c)
{
    uint32_t lo = 0, hi = n->n_kids;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (n->keys[mid] == c)
            return n->kids[mid];
        if (n->keys[mid] < c)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* An array of `n` elements of `size` bytes with room for one more. */
static void *grow(lg_route_table_t *t, void *old, uint32_t n, size_t size)
{
    if (n > 1 && (n & (n - 1)) != 0)
        return old; /* capacity: the next power of two */
    void *p = lg__route_alloc(t, (n != 0 ? (size_t)n * 2 : 1) * size);
    if (n != 0)
        memcpy(p, old, n * size);
    return p;
}

static lg__trie_t *trie_add_child(lg_route_table_t *t, lg__trie_t *n, unsigned char c)
{
    uint32_t i = 0;
    while (i != n->n_kids && n->keys[i] < c)
        ++i;
    n->keys = grow(t, n->keys, n->n_kids, sizeof(*n->keys));
    n->kids = grow(t, n->kids, n->n_kids, sizeof(*n->kids));
    memmove(n->keys + i + 1, n->keys + i, n->n_kids - i);
    memmove(n->kids + i + 1, n->kids + i, (n->n_kids - i) * sizeof(*n->kids));
    n->keys[i] = c;
    n->kids[i] = lg__route_alloc(t, sizeof(lg__trie_t));
    ++n->n_kids;
    return n->kids[i];
}

static void trie_insert(lg_route_table_t *t, lg__trie_t *root, h2o_iovec_t key, int lower, uint32_t route)
{
    lg__trie_t *n = root;
    for (size_t i = 0; i != key.len; ++i) {
        unsigned char c = (unsigned char)key.base[i];
        if (lower)
            c = (unsigned char)tolower(c);
        lg__trie_t *kid = trie_child(n, c);
        n = kid != NULL ? kid : trie_add_child(t, n, c);
    }
    n->routes = grow(t, n->routes, n->n_routes, sizeof(*n->routes));
    n->routes[n->n_routes++] = route;
}

static int indexed(const lg_route_t *r)
{
    return r->path_match == LG_PATH_MATCH_PREFIX || r->path_match == LG_PATH_MATCH_EXACT ||
           r->path_match == LG_PATH_MATCH_SEPARATED_PREFIX;
}

/* The slot of `path` (lowercased first when `lower`: the keys are). */
static const lg__pslot_t *pmap_slot(const lg__pmap_t *m, const char *path, size_t len, int lower)
{
    for (size_t i = hash_bytes(path, len, lower) & m->mask;; i = (i + 1) & m->mask) {
        const lg__pslot_t *s = &m->slots[i];
        if (s->key == NULL || (s->len == len && (lower ? h2o_lcstris(path, len, s->key, len) : memcmp(path, s->key, len) == 0)))
            return s;
    }
}

static void pmap_init(lg_route_table_t *t, lg__pmap_t *m, size_t n)
{
    if (n == 0)
        return;
    size_t cap = 8;
    while (cap < n * 2)
        cap *= 2;
    m->slots = lg__route_alloc(t, cap * sizeof(*m->slots));
    m->mask = cap - 1;
}

static void pmap_add(lg_route_table_t *t, lg__pmap_t *m, h2o_iovec_t path, int lower, uint32_t route)
{
    lg__pslot_t *s = (lg__pslot_t *)pmap_slot(m, path.base, path.len, lower);
    if (s->key == NULL) {
        char *key = lg__route_alloc(t, path.len + 1);
        for (size_t i = 0; i != path.len; ++i)
            key[i] = lower ? (char)h2o_tolower(path.base[i]) : path.base[i];
        s->key = key;
        s->len = path.len;
    }
    s->routes = grow(t, s->routes, s->n_routes, sizeof(*s->routes));
    s->routes[s->n_routes++] = route;
}

struct st_lg__route_index_t *lg__route_index_build(lg_route_table_t *t, const lg_vhost_t *vh)
{
    struct st_lg__route_index_t *ix = lg__route_alloc(t, sizeof(*ix));
    size_t n_exact[2] = {0, 0}; /* case-insensitive, case-sensitive */
    for (size_t i = 0; i != vh->n_routes; ++i) {
        const lg_route_t *r = &vh->routes[i];
        ix->n_other += !indexed(r);
        n_exact[r->case_sensitive != 0] += r->path_match == LG_PATH_MATCH_EXACT;
    }
    ix->other = ix->n_other != 0 ? lg__route_alloc(t, ix->n_other * sizeof(*ix->other)) : NULL;
    pmap_init(t, &ix->exact_insensitive, n_exact[0]);
    pmap_init(t, &ix->exact, n_exact[1]);
    size_t n_other = 0;
    for (size_t i = 0; i != vh->n_routes; ++i) {
        const lg_route_t *r = &vh->routes[i];
        if (!indexed(r)) {
            ix->other[n_other++] = (uint32_t)i;
        } else if (r->path_match == LG_PATH_MATCH_EXACT) {
            pmap_add(t, r->case_sensitive ? &ix->exact : &ix->exact_insensitive, r->path_value, !r->case_sensitive, (uint32_t)i);
        } else {
            lg__trie_t **root = r->case_sensitive ? &ix->sensitive : &ix->insensitive;
            if (*root == NULL)
                *root = lg__route_alloc(t, sizeof(lg__trie_t));
            trie_insert(t, *root, r->path_value, !r->case_sensitive, (uint32_t)i);
        }
    }
    return ix;
}

typedef struct st_lg__match_ctx_t {
    const lg_vhost_t *vh;
    const lg_req_head_t *req;
    uint64_t random;
    h2o_iovec_t path; /* without query and fragment, path parameters cut when configured */
    size_t best;      /* smallest matching route index so far; n_routes = none */
} lg__match_ctx_t;

/* Whether trie route `r` (prefix or separated prefix) whose key is
 * path[0..depth) matches by path kind. */
static int path_kind_fits(const lg_route_t *r, h2o_iovec_t path, size_t depth)
{
    return r->path_match != LG_PATH_MATCH_SEPARATED_PREFIX || depth == path.len || path.base[depth] == '/';
}

static void exact_candidates(lg__match_ctx_t *cx, const lg__pmap_t *m, int lower)
{
    if (m->slots == NULL)
        return;
    const lg__pslot_t *s = pmap_slot(m, cx->path.base, cx->path.len, lower);
    for (uint32_t i = 0; s->key != NULL && i != s->n_routes && s->routes[i] < cx->best; ++i) {
        if (rest_matches(&cx->vh->routes[s->routes[i]], cx->req, cx->random)) {
            cx->best = s->routes[i];
            break;
        }
    }
}

static void trie_candidates(lg__match_ctx_t *cx, const lg__trie_t *n, int lower)
{
    for (size_t depth = 0; n != NULL; ++depth) {
        for (uint32_t i = 0; i != n->n_routes && n->routes[i] < cx->best; ++i) {
            const lg_route_t *r = &cx->vh->routes[n->routes[i]];
            if (path_kind_fits(r, cx->path, depth) && rest_matches(r, cx->req, cx->random)) {
                cx->best = n->routes[i];
                break;
            }
        }
        if (depth == cx->path.len)
            break;
        unsigned char c = (unsigned char)cx->path.base[depth];
        n = trie_child(n, lower ? (unsigned char)tolower(c) : c);
    }
}

static int other_matches(const lg__match_ctx_t *cx, const lg_route_t *r)
{
    if (r->path_match == LG_PATH_MATCH_CONNECT)
        return is_connect(cx->req) && rest_matches(r, cx->req, cx->random);
    if (cx->req->path.len == 0)
        return 0;
    return rest_matches(r, cx->req, cx->random) && lg_regex_full_match(r->path_regex, cx->path.base, cx->path.len);
}

static h2o_iovec_t path_for_matching(const lg_route_table_t *t, h2o_iovec_t path)
{
    size_t n = 0;
    while (n != path.len && path.base[n] != '?' && path.base[n] != '#' &&
           !(t->ignore_path_parameters_in_path_matching && path.base[n] == ';'))
        ++n;
    return h2o_iovec_init(path.base, n);
}

static const lg_route_t *match_routes(const lg_vhost_t *vh, const lg_req_head_t *req, uint64_t random)
{
    const struct st_lg__route_index_t *ix = vh->_index;
    lg__match_ctx_t cx = {vh, req, random, path_for_matching(vh->table, req->path), vh->n_routes};
    /* a request without :path (CONNECT) only matches connect_matcher routes */
    if (req->path.len != 0) {
        exact_candidates(&cx, &ix->exact, 0);
        exact_candidates(&cx, &ix->exact_insensitive, 1);
        trie_candidates(&cx, ix->sensitive, 0);
        trie_candidates(&cx, ix->insensitive, 1);
    }
    for (size_t i = 0; i != ix->n_other && ix->other[i] < cx.best; ++i) {
        if (other_matches(&cx, &vh->routes[ix->other[i]])) {
            cx.best = ix->other[i];
            break;
        }
    }
    return cx.best < vh->n_routes ? &vh->routes[cx.best] : NULL;
}

static h2o_iovec_t forwarded_proto(const lg_req_head_t *req)
{
    h2o_iovec_t v = lg_headers_get(&req->headers, H2O_STRLIT("x-forwarded-proto"));
    return v.base != NULL ? v : req->scheme;
}

const lg_route_t *lg_route_match(const lg_route_table_t *t, const lg_req_head_t *req, uint64_t random, const lg_vhost_t **vhost_out)
{
    const lg_vhost_t *vh = lg_route_find_vhost(t, req);
    if (vhost_out != NULL)
        *vhost_out = vh;
    if (vh == NULL)
        return NULL;
    if (vh->require_tls != LG_REQUIRE_TLS_NONE) {
        h2o_iovec_t proto = forwarded_proto(req);
        if (!h2o_memis(proto.base, proto.len, H2O_STRLIT("https"))) {
            h2o_iovec_t internal = lg_headers_get(&req->headers, H2O_STRLIT("x-envoy-internal"));
            if (vh->require_tls == LG_REQUIRE_TLS_ALL || !h2o_memis(internal.base, internal.len, H2O_STRLIT("true")))
                return &vh->_ssl_redirect;
        }
    }
    return match_routes(vh, req, random);
}

/* ---- actions ---- */

static int count_values(const lg_headers_t *h, h2o_iovec_t name, h2o_iovec_t *first)
{
    int n = 0;
    for (ssize_t i = lg_headers_find(h, name.base, name.len, 0); i >= 0; i = lg_headers_find(h, name.base, name.len, (size_t)i + 1))
        if (n++ == 0)
            *first = h->entries[i].value;
    return n;
}

/* absl::SimpleAtoi for uint64. */
static int parse_uint64(h2o_iovec_t v, uint64_t *out)
{
    size_t i = 0;
    while (i < v.len && isspace((unsigned char)v.base[i]))
        ++i;
    if (i < v.len && v.base[i] == '-')
        return 0;
    if (i < v.len && v.base[i] == '+')
        ++i;
    uint64_t n = 0;
    size_t digits = 0;
    for (; i < v.len && isdigit((unsigned char)v.base[i]); ++i, ++digits) {
        unsigned d = (unsigned)(v.base[i] - '0');
        if (n > (UINT64_MAX - d) / 10)
            return 0;
        n = n * 10 + d;
    }
    while (i < v.len && isspace((unsigned char)v.base[i]))
        ++i;
    if (digits == 0 || i != v.len)
        return 0;
    *out = n;
    return 1;
}

h2o_iovec_t lg_route_pick_cluster(const lg_route_t *r, const lg_req_head_t *req, uint64_t random,
                                  const lg_weighted_cluster_t **wc_out)
{
    const lg_route_action_t *a = &r->action;
    h2o_iovec_t v = {NULL, 0};
    if (wc_out != NULL)
        *wc_out = NULL;
    if (a->cluster.len != 0)
        return a->cluster;
    if (a->cluster_header.len != 0) {
        if (!lg_req_header_first(req, a->cluster_header.base, a->cluster_header.len, &v))
            return h2o_iovec_init("", 0);
        return v;
    }
    if (a->n_weighted == 0)
        return h2o_iovec_init("", 0);
    uint64_t value = random, from_header;
    if (a->random_value_header.len != 0 && count_values(&req->headers, a->random_value_header, &v) == 1 &&
        parse_uint64(v, &from_header))
        value = from_header;
    uint64_t selected = value % a->total_weight, begin = 0;
    for (size_t i = 0; i != a->n_weighted; ++i) {
        const lg_weighted_cluster_t *wc = &a->weighted[i];
        uint64_t end = begin + wc->weight;
        if (selected >= begin && selected < end) {
            if (wc_out != NULL)
                *wc_out = wc;
            if (wc->cluster_header.len != 0 && lg_req_header_first(req, wc->cluster_header.base, wc->cluster_header.len, &v))
                return v;
            return wc->name;
        }
        begin = end;
    }
    return h2o_iovec_init("", 0);
}

static h2o_iovec_t concat(h2o_mem_pool_t *pool, h2o_iovec_t a, h2o_iovec_t b)
{
    char *p = h2o_mem_alloc_pool(pool, a.len + b.len + 1);
    memcpy(p, a.base, a.len);
    memcpy(p + a.len, b.base, b.len);
    p[a.len + b.len] = '\0';
    return h2o_iovec_init(p, a.len + b.len);
}

static size_t path_part_len(h2o_iovec_t path)
{
    size_t n = 0;
    while (n != path.len && path.base[n] != '?' && path.base[n] != '#')
        ++n;
    return n;
}

/* Envoy's currentUrlPathAfterRewriteWithMatchedPath. */
static h2o_iovec_t rewrite_path(const lg_route_t *r, h2o_iovec_t path, h2o_iovec_t prefix_rewrite, const lg_regex_t *regex,
                                h2o_iovec_t substitution, h2o_mem_pool_t *pool)
{
    size_t just = path_part_len(path);
    if (regex != NULL) {
        h2o_iovec_t head = lg_regex_replace_all(regex, path.base, just, substitution.base, substitution.len, pool);
        return concat(pool, head, h2o_iovec_init(path.base + just, path.len - just));
    }
    if (prefix_rewrite.len == 0)
        return h2o_iovec_init(NULL, 0);
    size_t matched = r->path_match == LG_PATH_MATCH_REGEX || r->path_match == LG_PATH_MATCH_CONNECT ? just : r->path_value.len;
    if (matched > path.len)
        matched = path.len;
    return concat(pool, prefix_rewrite, h2o_iovec_init(path.base + matched, path.len - matched));
}

h2o_iovec_t lg_route_path_rewrite(const lg_route_t *r, h2o_iovec_t path, h2o_mem_pool_t *pool)
{
    if (r->kind == LG_ROUTE_REDIRECT)
        return rewrite_path(r, path, r->redirect.prefix_rewrite, r->redirect.regex_rewrite, r->redirect.regex_rewrite_substitution,
                            pool);
    if (r->kind == LG_ROUTE_FORWARD)
        return rewrite_path(r, path, r->action.prefix_rewrite, r->action.regex_rewrite, r->action.regex_rewrite_substitution, pool);
    return h2o_iovec_init(NULL, 0);
}

h2o_iovec_t lg_route_host_rewrite(const lg_route_t *r, const lg_weighted_cluster_t *wc, const lg_req_head_t *req,
                                  h2o_mem_pool_t *pool)
{
    const lg_route_action_t *a = &r->action;
    h2o_iovec_t host = wc != NULL && wc->host_rewrite_literal.len != 0 ? wc->host_rewrite_literal : h2o_iovec_init(NULL, 0), v;
    if (r->kind != LG_ROUTE_FORWARD)
        return host;
    if (a->host_rewrite_literal.len != 0) {
        host = a->host_rewrite_literal;
    } else if (a->host_rewrite_header.len != 0) {
        if (lg_req_header_first(req, a->host_rewrite_header.base, a->host_rewrite_header.len, &v) && v.len != 0)
            host = v;
    } else if (a->host_rewrite_path_regex != NULL) {
        host = lg_regex_replace_all(a->host_rewrite_path_regex, req->path.base, path_part_len(req->path),
                                    a->host_rewrite_path_substitution.base, a->host_rewrite_path_substitution.len, pool);
    }
    return host;
}

/* Envoy's processRequestHost: drops the port of the request's host when the
 * redirect sets one, or when the scheme changes away from its default port. */
static h2o_iovec_t redirect_host(const lg_req_head_t *req, h2o_iovec_t scheme, h2o_iovec_t new_port)
{
    h2o_iovec_t host = req->authority;
    if (host.len == 0)
        return host;
    ssize_t end = -1;
    for (size_t i = host.len; i-- > 0;) {
        if (host.base[i] == ':') {
            end = (ssize_t)i;
            break;
        }
    }
    if (host.base[0] == '[' && (end <= 0 || host.base[end - 1] != ']'))
        end = -1;
    if (end < 0)
        return host;
    h2o_iovec_t port = h2o_iovec_init(host.base + end, host.len - (size_t)end);
    h2o_iovec_t proto = lg_headers_get(&req->headers, H2O_STRLIT("x-forwarded-proto"));
    if (proto.base == NULL)
        proto = req->scheme;
    int remove = new_port.len != 0;
    if (!h2o_memis(scheme.base, scheme.len, proto.base, proto.len)) {
        remove |= h2o_memis(proto.base, proto.len, H2O_STRLIT("https")) && h2o_memis(port.base, port.len, H2O_STRLIT(":443"));
        remove |= h2o_memis(proto.base, proto.len, H2O_STRLIT("http")) && h2o_memis(port.base, port.len, H2O_STRLIT(":80"));
    }
    return remove ? h2o_iovec_init(host.base, (size_t)end) : host;
}

h2o_iovec_t lg_route_redirect_url(const lg_route_t *r, const lg_req_head_t *req, h2o_mem_pool_t *pool)
{
    const lg_redirect_t *rd = &r->redirect;
    if (rd->ssl_redirect)
        return h2o_concat(pool, h2o_iovec_init(H2O_STRLIT("https://")), req->authority, req->path);
    h2o_iovec_t path = req->path, rewritten = lg_route_path_rewrite(r, req->path, pool);
    if (rewritten.base != NULL)
        path = rewritten;
    h2o_iovec_t scheme = rd->scheme.len != 0 ? rd->scheme : req->scheme;
    h2o_iovec_t host = rd->host.len != 0 ? rd->host : redirect_host(req, scheme, rd->port);
    if (rd->path.len != 0) {
        if (rd->path_has_query) {
            path = rd->path;
        } else {
            const char *q = memchr(path.base, '?', path.len);
            path = q != NULL ? concat(pool, rd->path, h2o_iovec_init(q, path.len - (size_t)(q - path.base))) : rd->path;
        }
    }
    h2o_iovec_t slash = path.len == 0 || path.base[0] != '/' ? h2o_iovec_init(H2O_STRLIT("/")) : h2o_iovec_init("", 0);
    if (!rd->path_has_query && rd->strip_query) {
        const char *q = memchr(path.base, '?', path.len);
        if (q != NULL)
            path.len = (size_t)(q - path.base);
    }
    return h2o_concat(pool, scheme, h2o_iovec_init(H2O_STRLIT("://")), host, rd->port, slash, path);
}

/* ---- header mutations ---- */

typedef struct st_lg__pending_t {
    h2o_iovec_t name, value;
} lg__pending_t;

void lg_header_mutation_apply(const lg_header_mutation_t *m, lg_headers_t *headers, const lg_stream_info_t *si,
                              h2o_mem_pool_t *pool)
{
    for (size_t i = 0; i != m->n_remove; ++i)
        lg_headers_remove(headers, m->remove[i].base, m->remove[i].len);
    if (m->n_add == 0)
        return;
    lg__pending_t *add = h2o_mem_alloc_pool(pool, sizeof(*add) * m->n_add),
                  *set = h2o_mem_alloc_pool(pool, sizeof(*set) * m->n_add);
    size_t n_add = 0, n_set = 0;
    for (size_t i = 0; i != m->n_add; ++i) {
        const lg_header_add_t *e = &m->add[i];
        h2o_iovec_t v = lg_format_eval(e->value, si, pool);
        if (v.len == 0 && !e->keep_empty_value)
            continue;
        int exists = lg_headers_find(headers, e->name.base, e->name.len, 0) >= 0;
        switch (e->action) {
        case LG_HEADER_APPEND_IF_EXISTS_OR_ADD:
            add[n_add++] = (lg__pending_t){e->name, v};
            break;
        case LG_HEADER_ADD_IF_ABSENT:
            if (!exists)
                add[n_add++] = (lg__pending_t){e->name, v};
            break;
        case LG_HEADER_OVERWRITE_IF_EXISTS:
            if (exists)
                set[n_set++] = (lg__pending_t){e->name, v};
            break;
        case LG_HEADER_OVERWRITE_IF_EXISTS_OR_ADD:
            set[n_set++] = (lg__pending_t){e->name, v};
            break;
        }
    }
    for (size_t i = 0; i != n_set; ++i)
        lg_headers_set(pool, headers, set[i].name, set[i].value);
    for (size_t i = 0; i != n_add; ++i)
        lg_headers_add(pool, headers, add[i].name, add[i].value);
}

static void apply_levels(const lg_route_t *r, int request, const lg_weighted_cluster_t *wc, lg_headers_t *headers,
                         const lg_stream_info_t *si, h2o_mem_pool_t *pool)
{
    if (r->redirect.ssl_redirect)
        return;
    const lg_vhost_t *vh = r->vhost;
    const lg_route_table_t *t = vh->table;
    if (wc != NULL)
        lg_header_mutation_apply(request ? &wc->request_headers : &wc->response_headers, headers, si, pool);
    const lg_header_mutation_t *levels[3] = {
        request ? &r->request_headers : &r->response_headers,
        request ? &vh->request_headers : &vh->response_headers,
        request ? &t->request_headers : &t->response_headers,
    };
    for (size_t i = 0; i != 3; ++i)
        lg_header_mutation_apply(levels[t->most_specific_header_mutations_wins ? 2 - i : i], headers, si, pool);
}

void lg_route_apply_request_headers(const lg_route_t *r, const lg_weighted_cluster_t *wc, lg_headers_t *headers,
                                    const lg_stream_info_t *si, h2o_mem_pool_t *pool)
{
    apply_levels(r, 1, wc, headers, si, pool);
}

void lg_route_apply_response_headers(const lg_route_t *r, const lg_weighted_cluster_t *wc, lg_headers_t *headers,
                                     const lg_stream_info_t *si, h2o_mem_pool_t *pool)
{
    apply_levels(r, 0, wc, headers, si, pool);
}

/* ---- per-filter config ---- */

#define FIND_PER_FILTER(msg, name)                                                         \
    do {                                                                                   \
        for (size_t i_ = 0; (msg) != NULL && i_ != (msg)->n_typed_per_filter_config; ++i_) \
            if (strcmp((msg)->typed_per_filter_config[i_]->key, (name)) == 0)              \
                return (msg)->typed_per_filter_config[i_]->value;                          \
    } while (0)

const Google__Protobuf__Any *lg_route_per_filter_config(const lg_route_t *r, const lg_weighted_cluster_t *wc,
                                                        const char *filter_name)
{
    if (wc != NULL)
        FIND_PER_FILTER(wc->pb, filter_name);
    FIND_PER_FILTER(r->pb, filter_name);
    FIND_PER_FILTER(r->vhost->pb, filter_name);
    FIND_PER_FILTER(r->vhost->table->pb, filter_name);
    return NULL;
}
