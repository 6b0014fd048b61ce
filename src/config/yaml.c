/*
 * YAML (and so JSON) documents to lg_node_t trees, from libyaml's event
 * stream. Aliases share the anchored node (refcounted) and every node records
 * its alias-expanded weight. What aliases add to the document is capped, so an
 * alias bomb is refused before anything walks it; plain nodes are not capped
 * (the file's size bounds them: 100,000 clusters are ~4M nodes). Keys tagged `!ignore` are dropped (as Envoy does) and YAML merge
 * keys (`<<: *anchor`) are applied.
 */
#include <ctype.h>
#include <sys/mman.h>
#include <yaml.h>
#include "legate/pbjson.h"

/* ---- the document's arena ---- */

struct st_lg_node_chunk_t {
    lg_node_chunk_t *next;
    size_t size; /* bytes, this header included */
    int mapped;  /* from mmap (big chunks go straight back to the system) */
};

#define CHUNK_MIN 4096
#define CHUNK_MAX (1u << 20)
#define CHUNK_MMAP_MIN (64u << 10)

/* Zeroed, 8-byte aligned memory that lives as long as the source. */
static void *arena_alloc(lg_node_source_t *s, size_t bytes)
{
    bytes = (bytes + 7) & ~(size_t)7;
    if ((size_t)(s->end - s->cur) < bytes) {
        size_t header = (sizeof(lg_node_chunk_t) + 7) & ~(size_t)7;
        size_t size = s->chunks == NULL ? CHUNK_MIN : s->chunks->size >= CHUNK_MAX ? CHUNK_MAX : s->chunks->size * 2;
        if (size < header + bytes)
            size = (header + bytes + 4095) & ~(size_t)4095;
        lg_node_chunk_t *c;
        int mapped = size >= CHUNK_MMAP_MIN;
        if (mapped) {
            if ((c = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0)) == MAP_FAILED) {
                fprintf(stderr, "legate: out of memory mapping %zu bytes\n", size);
                abort();
            }
        } else {
            c = lg_calloc(1, size);
        }
        *c = (lg_node_chunk_t){s->chunks, size, mapped};
        s->chunks = c;
        s->cur = (char *)c + header;
        s->end = (char *)c + size;
    }
    void *p = s->cur;
    s->cur += bytes;
    return p;
}

static lg_node_source_t *source_new(const char *name)
{
    size_t len = name != NULL ? strlen(name) : 0;
    lg_node_source_t *s = lg_calloc(1, offsetof(lg_node_source_t, name) + len + 1);
    s->refcnt = 1;
    memcpy(s->name, name != NULL ? name : "", len + 1);
    return s;
}

static void source_release(lg_node_source_t *s)
{
    if (--s->refcnt != 0)
        return;
    for (lg_node_chunk_t *c = s->chunks, *next; c != NULL; c = next) {
        next = c->next;
        if (c->mapped)
            munmap(c, c->size);
        else
            free(c);
    }
    free(s);
}

/* ---- building ---- */

typedef struct st_frame_t {
    lg_node_t *node;
    lg_node_t *key;     /* a map's key waiting for its value */
    int drop_value;     /* the key was tagged !ignore */
    char *anchor;       /* defined when the collection ends, so it cannot contain itself */
    lg_node_t **merges; /* values of `<<` keys, applied at the map's end */
    size_t n_merges;
    size_t merges_cap;
} frame_t;

typedef struct st_anchor_t {
    char *name;
    lg_node_t *node;
} anchor_t;

/* The growing pairs/items array of an open collection, reused for every collection
 * at its depth; a closed collection's array is copied to the arena at its size. */
typedef struct st_scratch_t {
    void *p;
    size_t cap; /* bytes */
} scratch_t;

typedef struct st_builder_t {
    lg_node_source_t *source;
    frame_t stack[LG_NODE_MAX_DEPTH + 1];
    scratch_t scratch[LG_NODE_MAX_DEPTH + 1];
    size_t depth;
    anchor_t *anchors;
    size_t n_anchors, anchors_cap;
    lg_node_t *root;
    size_t alias_weight; /* nodes that aliases add to the expanded document */
    lg_error_t *err;
} builder_t;

static lg_node_t *node_alloc(lg_node_type_t type, unsigned line, lg_node_source_t *source, size_t extra)
{
    lg_node_t *n = arena_alloc(source, sizeof(*n) + extra);
    n->type = type;
    n->line = line;
    n->refcnt = 1;
    n->weight = 1;
    n->source = source;
    ++source->refcnt;
    return n;
}

static lg_node_t *node_new(lg_node_type_t type, unsigned line, lg_node_source_t *source)
{
    return node_alloc(type, line, source, 0);
}

/* A scalar keeps its text in the same allocation (documents are mostly scalars). */
static lg_node_t *scalar_new(unsigned line, lg_node_source_t *source, const char *str, size_t len, lg_scalar_style_t style)
{
    lg_node_t *n = node_alloc(LG_NODE_SCALAR, line, source, len + 1);
    n->scalar.str = (char *)(n + 1);
    memcpy(n->scalar.str, str, len);
    n->scalar.len = len;
    n->scalar.style = style;
    return n;
}

void lg_node_free(lg_node_t *node)
{
    if (node == NULL || --node->refcnt != 0)
        return;
    switch (node->type) {
    case LG_NODE_SCALAR:
        break;
    case LG_NODE_MAP:
        for (size_t i = 0; i != node->map.n; ++i) {
            lg_node_free(node->map.pairs[i].key);
            lg_node_free(node->map.pairs[i].value);
        }
        if (node->_heap_items)
            free(node->map.pairs);
        break;
    case LG_NODE_SEQ:
        for (size_t i = 0; i != node->seq.n; ++i)
            lg_node_free(node->seq.items[i]);
        if (node->_heap_items)
            free(node->seq.items);
        break;
    }
    source_release(node->source); /* the node's memory goes with its document's arena */
}

int lg_node_is_null(const lg_node_t *n)
{
    if (n->type != LG_NODE_SCALAR || n->scalar.style != LG_SCALAR_PLAIN)
        return 0;
    const char *s = n->scalar.str;
    return n->scalar.len == 0 || strcmp(s, "~") == 0 || strcmp(s, "null") == 0 || strcmp(s, "Null") == 0 || strcmp(s, "NULL") == 0;
}

const lg_node_t *lg_node_get(const lg_node_t *map, const char *key)
{
    if (map == NULL || map->type != LG_NODE_MAP)
        return NULL;
    for (size_t i = 0; i != map->map.n; ++i)
        if (strcmp(map->map.pairs[i].key->scalar.str, key) == 0)
            return map->map.pairs[i].value;
    return NULL;
}

static int fail(builder_t *b, unsigned line, const char *msg)
{
    if (b->source->name[0] != '\0')
        return lg_error(b->err, "%s:%u: %s", b->source->name, line, msg);
    return lg_error(b->err, "line %u: %s", line, msg);
}

static scratch_t *scratch_of(builder_t *b, frame_t *f)
{
    return b->scratch + (f - b->stack);
}

static void *scratch_grow(scratch_t *s, size_t bytes)
{
    if (bytes > s->cap) {
        s->cap = bytes > s->cap * 2 ? (bytes > 256 ? bytes : 256) : s->cap * 2;
        s->p = lg_realloc(s->p, s->cap);
    }
    return s->p;
}

/* Appends to the open collection of frame f (its array lives in the scratch). */
static void open_push_pair(builder_t *b, frame_t *f, lg_node_t *key, lg_node_t *value)
{
    lg_node_t *map = f->node;
    map->map.pairs = scratch_grow(scratch_of(b, f), (map->map.n + 1) * sizeof(*map->map.pairs));
    map->map.pairs[map->map.n++] = (lg_node_pair_t){key, value};
}

static void open_push_item(builder_t *b, frame_t *f, lg_node_t *item)
{
    lg_node_t *seq = f->node;
    seq->seq.items = scratch_grow(scratch_of(b, f), (seq->seq.n + 1) * sizeof(*seq->seq.items));
    seq->seq.items[seq->seq.n++] = item;
}

/* Moves a closed collection's array from the scratch to the arena. */
static void seal(builder_t *b, lg_node_t *n)
{
    void **arr = n->type == LG_NODE_MAP ? (void **)&n->map.pairs : (void **)&n->seq.items;
    size_t bytes = n->type == LG_NODE_MAP ? n->map.n * sizeof(*n->map.pairs) : n->seq.n * sizeof(*n->seq.items);
    void *a = bytes != 0 ? arena_alloc(b->source, bytes) : NULL;
    if (bytes != 0)
        memcpy(a, *arr, bytes);
    *arr = a;
}

/* A node's weight is its plain nodes plus what the aliases under it expand to;
 * the second part is capped in on_alias, so weights cannot overflow. */
static void add_weight(lg_node_t *parent, size_t weight)
{
    parent->weight += weight;
}

static int is_merge_key(const lg_node_t *key)
{
    return key->scalar.style == LG_SCALAR_PLAIN && strcmp(key->scalar.str, "<<") == 0;
}

/* Hands a finished node (owned) to the open collection, or makes it the root. */
static int attach(builder_t *b, lg_node_t *node, int ignore_tag)
{
    if (b->depth == 0) {
        b->root = node;
        return 0;
    }
    frame_t *f = b->stack + b->depth - 1;
    lg_node_t *parent = f->node;
    if (parent->type == LG_NODE_SEQ) {
        add_weight(parent, node->weight);
        open_push_item(b, f, node);
        return 0;
    }
    if (f->key == NULL) {
        if (node->type != LG_NODE_SCALAR) {
            fail(b, node->line, "only scalar map keys are supported");
            goto fail;
        }
        f->key = node;
        f->drop_value = ignore_tag;
        return 0;
    }
    lg_node_t *key = f->key;
    f->key = NULL;
    if (f->drop_value) {
        lg_node_free(key);
        lg_node_free(node);
    } else if (is_merge_key(key)) {
        lg_node_free(key);
        if (f->n_merges == f->merges_cap)
            f->merges = lg_realloc(f->merges, (f->merges_cap = f->merges_cap * 2 + 2) * sizeof(*f->merges));
        f->merges[f->n_merges++] = node;
    } else {
        open_push_pair(b, f, key, node);
        add_weight(parent, key->weight + node->weight);
    }
    return 0;
fail:
    lg_node_free(node);
    return -1;
}

static int map_has_key(const lg_node_t *map, const lg_node_t *key)
{
    for (size_t i = 0; i != map->map.n; ++i) {
        const lg_node_t *k = map->map.pairs[i].key;
        if (k->scalar.len == key->scalar.len && memcmp(k->scalar.str, key->scalar.str, k->scalar.len) == 0)
            return 1;
    }
    return 0;
}

/* YAML merge keys: entries of the merged maps that the map does not set itself. */
static int apply_merge(builder_t *b, frame_t *f, const lg_node_t *src)
{
    if (src->type == LG_NODE_SEQ) {
        for (size_t i = 0; i != src->seq.n; ++i)
            if (apply_merge(b, f, src->seq.items[i]) != 0)
                return -1;
        return 0;
    }
    if (src->type != LG_NODE_MAP)
        return fail(b, src->line, "a merge key (<<) needs a map or a list of maps");
    if ((uint64_t)src->map.n * (f->node->map.n + 1) > LG_NODE_MAX_WEIGHT)
        return fail(b, src->line, "merge key (<<) over too many entries");
    for (size_t i = 0; i != src->map.n; ++i) {
        lg_node_pair_t *p = src->map.pairs + i;
        if (map_has_key(f->node, p->key))
            continue;
        add_weight(f->node, p->key->weight + p->value->weight);
        ++p->key->refcnt;
        ++p->value->refcnt;
        open_push_pair(b, f, p->key, p->value);
    }
    return 0;
}

static int close_map(builder_t *b, frame_t *f)
{
    int ret = 0;
    for (size_t i = 0; i != f->n_merges && ret == 0; ++i)
        ret = apply_merge(b, f, f->merges[i]);
    for (size_t i = 0; i != f->n_merges; ++i)
        lg_node_free(f->merges[i]);
    free(f->merges);
    f->merges = NULL;
    f->n_merges = 0;
    return ret;
}

/* Takes ownership of `name` (may be NULL). */
static void define_anchor(builder_t *b, char *name, lg_node_t *node)
{
    if (name == NULL)
        return;
    if (b->n_anchors == b->anchors_cap)
        b->anchors = lg_realloc(b->anchors, (b->anchors_cap = b->anchors_cap * 2 + 4) * sizeof(*b->anchors));
    ++node->refcnt;
    b->anchors[b->n_anchors++] = (anchor_t){name, node};
}

static char *dup_anchor(const yaml_char_t *anchor)
{
    return anchor != NULL ? lg_strdup((const char *)anchor) : NULL;
}

static lg_node_t *find_anchor(builder_t *b, const char *name)
{
    for (size_t i = b->n_anchors; i-- != 0;)
        if (strcmp(b->anchors[i].name, name) == 0)
            return b->anchors[i].node;
    return NULL;
}

static int is_ignore_tag(const yaml_char_t *tag)
{
    return tag != NULL && strcmp((const char *)tag, "!ignore") == 0;
}

static int on_scalar(builder_t *b, yaml_event_t *ev, unsigned line)
{
    const char *tag = (const char *)ev->data.scalar.tag;
    int quoted = ev->data.scalar.style != YAML_PLAIN_SCALAR_STYLE && ev->data.scalar.style != YAML_ANY_SCALAR_STYLE;
    lg_scalar_style_t style =
        quoted || (tag != NULL && (strcmp(tag, YAML_STR_TAG) == 0 || strcmp(tag, "!") == 0)) ? LG_SCALAR_QUOTED : LG_SCALAR_PLAIN;
    lg_node_t *n = scalar_new(line, b->source, (const char *)ev->data.scalar.value, ev->data.scalar.length, style);
    define_anchor(b, dup_anchor(ev->data.scalar.anchor), n);
    return attach(b, n, is_ignore_tag(ev->data.scalar.tag));
}

static int on_start(builder_t *b, lg_node_type_t type, const yaml_char_t *anchor, unsigned line)
{
    if (b->depth == LG_NODE_MAX_DEPTH)
        return fail(b, line, "document nested too deeply");
    b->stack[b->depth++] = (frame_t){.node = node_new(type, line, b->source), .anchor = dup_anchor(anchor)};
    return 0;
}

static int on_end(builder_t *b)
{
    frame_t *f = b->stack + b->depth - 1;
    if (f->node->type == LG_NODE_MAP && close_map(b, f) != 0)
        return -1;
    lg_node_t *n = f->node;
    seal(b, n);
    --b->depth;
    define_anchor(b, f->anchor, n);
    return attach(b, n, 0);
}

static int on_alias(builder_t *b, yaml_event_t *ev, unsigned line)
{
    lg_node_t *n = find_anchor(b, (const char *)ev->data.alias.anchor);
    if (n == NULL) {
        char msg[256];
        snprintf(msg, sizeof(msg), "unknown anchor \"%.200s\"", (const char *)ev->data.alias.anchor);
        return fail(b, line, msg);
    }
    /* Every use of an alias is a copy of the anchored subtree for whoever walks the
     * document, including the aliases inside it: capping the sum of their weights
     * caps what the document expands to beyond its plain nodes (merge keys copy
     * at most what their alias already counted). */
    b->alias_weight += n->weight;
    if (b->alias_weight > LG_NODE_MAX_WEIGHT) {
        char msg[128];
        snprintf(msg, sizeof(msg), "document too large: aliases expand to more than %u nodes", (unsigned)LG_NODE_MAX_WEIGHT);
        return fail(b, line, msg);
    }
    ++n->refcnt;
    return attach(b, n, 0);
}

static void builder_dispose(builder_t *b)
{
    while (b->depth != 0) {
        frame_t *f = b->stack + --b->depth;
        lg_node_free(f->node);
        lg_node_free(f->key);
        for (size_t i = 0; i != f->n_merges; ++i)
            lg_node_free(f->merges[i]);
        free(f->merges);
        free(f->anchor);
    }
    for (size_t i = 0; i != b->n_anchors; ++i) {
        free(b->anchors[i].name);
        lg_node_free(b->anchors[i].node);
    }
    free(b->anchors);
    for (size_t i = 0; i != LG_NODE_MAX_DEPTH + 1; ++i)
        free(b->scratch[i].p);
    source_release(b->source);
}

static int parser_error(builder_t *b, yaml_parser_t *p)
{
    char msg[512];
    snprintf(msg, sizeof(msg), "%s%s%s", p->problem != NULL ? p->problem : "invalid YAML", p->context != NULL ? " " : "",
             p->context != NULL ? p->context : "");
    return fail(b, (unsigned)p->problem_mark.line + 1, msg);
}

/* Feeds one event to the builder; returns 1 when the first document is complete. */
static int on_event(builder_t *b, yaml_event_t *ev)
{
    unsigned line = (unsigned)ev->start_mark.line + 1;
    switch (ev->type) {
    case YAML_SCALAR_EVENT:
        return on_scalar(b, ev, line);
    case YAML_SEQUENCE_START_EVENT:
        return on_start(b, LG_NODE_SEQ, ev->data.sequence_start.anchor, line);
    case YAML_MAPPING_START_EVENT:
        return on_start(b, LG_NODE_MAP, ev->data.mapping_start.anchor, line);
    case YAML_SEQUENCE_END_EVENT:
    case YAML_MAPPING_END_EVENT:
        return on_end(b);
    case YAML_ALIAS_EVENT:
        return on_alias(b, ev, line);
    case YAML_DOCUMENT_END_EVENT:
    case YAML_STREAM_END_EVENT:
        return 1;
    default:
        return 0;
    }
}

/* ---- strict JSON ----
 *
 * JSON files (bootstraps of 100,000 clusters are 40 MB of it) are built by this
 * parser instead of libyaml's, four times as fast. It takes strict JSON in the
 * subset where YAML reads it the same way (printable ASCII in strings, keys on
 * one line with their colon) and
 * builds the tree libyaml's events would; anything else (YAML, invalid JSON,
 * UTF-8 text) returns 0 and goes to libyaml, which gives its own errors. */

typedef struct st_json_in_t {
    const char *p, *end;
    unsigned line;
    lg_strbuf_t tmp; /* an escaped string's decoded text */
} json_in_t;

static void json_ws(json_in_t *in)
{
    for (; in->p != in->end; ++in->p) {
        if (*in->p == '\n')
            ++in->line;
        else if (*in->p != ' ' && *in->p != '\t' && *in->p != '\r')
            break;
    }
}

static int json_hex(json_in_t *in, int digits, unsigned *out)
{
    *out = 0;
    for (int i = 0; i != digits; ++i, ++in->p) {
        if (in->p == in->end)
            return 0;
        char c = *in->p;
        if (c >= '0' && c <= '9')
            *out = *out << 4 | (unsigned)(c - '0');
        else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f')
            *out = *out << 4 | (unsigned)((c | 0x20) - 'a' + 10);
        else
            return 0;
    }
    return 1;
}

static void json_utf8(lg_strbuf_t *b, unsigned cp)
{
    char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (char)cp, n = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xc0 | cp >> 6), u[1] = (char)(0x80 | (cp & 0x3f)), n = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xe0 | cp >> 12), u[1] = (char)(0x80 | (cp >> 6 & 0x3f)), u[2] = (char)(0x80 | (cp & 0x3f)), n = 3;
    } else {
        u[0] = (char)(0xf0 | cp >> 18), u[1] = (char)(0x80 | (cp >> 12 & 0x3f)), u[2] = (char)(0x80 | (cp >> 6 & 0x3f));
        u[3] = (char)(0x80 | (cp & 0x3f)), n = 4;
    }
    lg_strbuf_append(b, u, n);
}

/* One escape after the backslash; \U (8 digits) is what json_fix_surrogates writes. */
static int json_escape(json_in_t *in)
{
    static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
    char c = *in->p++;
    const char *e = c != '\0' ? strchr(from, c) : NULL;
    if (e != NULL) {
        lg_strbuf_append(&in->tmp, to + (e - from), 1);
        return 1;
    }
    unsigned cp;
    if ((c != 'u' && c != 'U') || !json_hex(in, c == 'u' ? 4 : 8, &cp) || (cp >= 0xd800 && cp < 0xe000) || cp > 0x10ffff)
        return 0;
    json_utf8(&in->tmp, cp);
    return 1;
}

/* A string at in->p (its opening quote) as a quoted scalar, or NULL. */
static lg_node_t *json_string(builder_t *b, json_in_t *in)
{
    const char *start = ++in->p;
    while (in->p != in->end && *in->p != '"' && *in->p != '\\' && (unsigned char)*in->p >= 0x20 && (unsigned char)*in->p < 0x7f)
        ++in->p;
    if (in->p != in->end && *in->p == '"')
        return scalar_new(in->line, b->source, start, (size_t)(in->p++ - start), LG_SCALAR_QUOTED);
    in->tmp.len = 0;
    lg_strbuf_append(&in->tmp, start, (size_t)(in->p - start));
    while (in->p != in->end && *in->p != '"') {
        unsigned char c = (unsigned char)*in->p;
        if (c < 0x20 || c >= 0x7f)
            return NULL;
        if (c == '\\') {
            if (++in->p == in->end || !json_escape(in))
                return NULL;
        } else {
            lg_strbuf_append(&in->tmp, in->p++, 1);
        }
    }
    if (in->p == in->end)
        return NULL;
    ++in->p;
    return scalar_new(in->line, b->source, in->tmp.base, in->tmp.len, LG_SCALAR_QUOTED);
}

/* true, false, null or a number, as a plain scalar; NULL for anything else. */
static lg_node_t *json_literal(builder_t *b, json_in_t *in)
{
    const char *s = in->p;
    while (in->p != in->end && (isalnum((unsigned char)*in->p) || *in->p == '-' || *in->p == '+' || *in->p == '.'))
        ++in->p;
    size_t n = (size_t)(in->p - s);
    if (!((n == 4 && (memcmp(s, "true", 4) == 0 || memcmp(s, "null", 4) == 0)) || (n == 5 && memcmp(s, "false", 5) == 0))) {
        const char *q = s + (n != 0 && *s == '-'), *e = s + n;
        if (q == e || !isdigit((unsigned char)*q) || (*q == '0' && q + 1 != e && isdigit((unsigned char)q[1])))
            return NULL;
        while (q != e && isdigit((unsigned char)*q))
            ++q;
        if (q != e && *q == '.' && ++q != e && isdigit((unsigned char)*q))
            while (q != e && isdigit((unsigned char)*q))
                ++q;
        if (q != e && (*q == 'e' || *q == 'E')) {
            ++q;
            if (q != e && (*q == '+' || *q == '-'))
                ++q;
            if (q == e || !isdigit((unsigned char)*q))
                return NULL;
            while (q != e && isdigit((unsigned char)*q))
                ++q;
        }
        if (q != e || s[n - 1] == '.')
            return NULL;
    }
    return scalar_new(in->line, b->source, s, n, LG_SCALAR_PLAIN);
}

static int json_value(builder_t *b, json_in_t *in);

/* The members of an object or the elements of an array, after its opening bracket. */
static int json_members(builder_t *b, json_in_t *in, char close)
{
    json_ws(in);
    if (in->p != in->end && *in->p == close) {
        ++in->p;
        return on_end(b) == 0;
    }
    for (;;) {
        if (close == '}') {
            /* YAML's keys are on one line with their ':' and at most 1024 characters long */
            const char *key_start = in->p;
            lg_node_t *key;
            if (in->p == in->end || *in->p != '"' || (key = json_string(b, in)) == NULL || attach(b, key, 0) != 0)
                return 0;
            while (in->p != in->end && (*in->p == ' ' || *in->p == '\t'))
                ++in->p;
            if (in->p == in->end || *in->p++ != ':' || in->p - key_start > 1000)
                return 0;
            json_ws(in);
        }
        if (!json_value(b, in))
            return 0;
        json_ws(in);
        if (in->p == in->end)
            return 0;
        char c = *in->p++;
        if (c == close)
            return on_end(b) == 0;
        if (c != ',')
            return 0;
        json_ws(in);
    }
}

static int json_value(builder_t *b, json_in_t *in)
{
    if (in->p == in->end)
        return 0;
    if (*in->p == '{' || *in->p == '[') {
        char open = *in->p++;
        if (on_start(b, open == '{' ? LG_NODE_MAP : LG_NODE_SEQ, NULL, in->line) != 0)
            return 0;
        return json_members(b, in, open == '{' ? '}' : ']');
    }
    lg_node_t *n = *in->p == '"' ? json_string(b, in) : json_literal(b, in);
    return n != NULL && attach(b, n, 0) == 0;
}

/* The tree of a strict JSON document, or NULL (not strict JSON: use libyaml). */
static lg_node_t *json_parse(const char *buf, size_t len, const char *filename)
{
    lg_error_t ignored;
    json_in_t in = {buf, buf + len, 1};
    json_ws(&in);
    /* outside the brackets YAML is in block context, where tabs are not whitespace */
    if (in.p == in.end || (*in.p != '{' && *in.p != '[') || memchr(buf, '\t', (size_t)(in.p - buf)) != NULL)
        return NULL;
    builder_t b = {.err = &ignored, .source = source_new(filename)};
    int ok = json_value(&b, &in);
    const char *tail = in.p;
    json_ws(&in);
    lg_node_t *root = ok && in.p == in.end && memchr(tail, '\t', (size_t)(in.p - tail)) == NULL ? b.root : NULL;
    if (root == NULL)
        lg_node_free(b.root);
    builder_dispose(&b);
    lg_strbuf_free(&in.tmp);
    return root;
}

lg_node_t *lg_yaml_parse(const char *buf, size_t len, const char *filename, lg_error_t *err)
{
    lg_node_t *json = json_parse(buf, len, filename);
    if (json != NULL)
        return json;
    builder_t b = {.err = err, .source = source_new(filename)};
    yaml_parser_t parser;
    yaml_parser_initialize(&parser);
    yaml_parser_set_input_string(&parser, (const unsigned char *)buf, len);
    int ret = 0;
    while (ret == 0) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&parser, &ev)) {
            ret = parser_error(&b, &parser);
            break;
        }
        ret = on_event(&b, &ev);
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&parser);
    if (ret > 0 && b.root == NULL)
        b.root = scalar_new(1, b.source, "", 0, LG_SCALAR_PLAIN);
    lg_node_t *root = ret > 0 ? b.root : NULL;
    if (root == NULL)
        lg_node_free(b.root);
    builder_dispose(&b);
    return root;
}

/* Returns a node that the caller may modify: `n` itself or a shallow copy when shared. */
static lg_node_t *unshare(lg_node_t *n)
{
    if (n->refcnt == 1)
        return n;
    lg_node_t *c = node_new(n->type, n->line, n->source);
    c->weight = n->weight;
    c->_heap_items = n->type != LG_NODE_SCALAR;
    switch (n->type) {
    case LG_NODE_SCALAR: /* merging replaces scalars, never modifies them */
        break;
    case LG_NODE_MAP:
        c->map.n = n->map.n;
        c->map.pairs = lg_malloc(n->map.n * sizeof(*c->map.pairs));
        for (size_t i = 0; i != n->map.n; ++i) {
            c->map.pairs[i] = n->map.pairs[i];
            ++c->map.pairs[i].key->refcnt;
            ++c->map.pairs[i].value->refcnt;
        }
        break;
    case LG_NODE_SEQ:
        c->seq.n = n->seq.n;
        c->seq.items = lg_malloc(n->seq.n * sizeof(*c->seq.items));
        for (size_t i = 0; i != n->seq.n; ++i)
            ++(c->seq.items[i] = n->seq.items[i])->refcnt;
        break;
    }
    lg_node_free(n);
    return c;
}

/* Gives a node a malloc'ed array that merging may grow (a parsed node's is in the arena). */
static void own_items(lg_node_t *n)
{
    if (n->_heap_items)
        return;
    size_t bytes = n->type == LG_NODE_MAP ? n->map.n * sizeof(*n->map.pairs) : n->seq.n * sizeof(*n->seq.items);
    void **arr = n->type == LG_NODE_MAP ? (void **)&n->map.pairs : (void **)&n->seq.items;
    void *copy = lg_malloc(bytes != 0 ? bytes : 1);
    if (bytes != 0)
        memcpy(copy, *arr, bytes);
    *arr = copy;
    n->_heap_items = 1;
}

static void heap_map_push(lg_node_t *map, size_t *cap, lg_node_t *key, lg_node_t *value)
{
    if (map->map.n == *cap)
        map->map.pairs = lg_realloc(map->map.pairs, (*cap = *cap * 2 + 4) * sizeof(*map->map.pairs));
    map->map.pairs[map->map.n++] = (lg_node_pair_t){key, value};
}

static void merge_maps(lg_node_t *base, const lg_node_t *over)
{
    size_t cap = base->map.n, base_n = base->map.n;
    for (size_t i = 0; i != over->map.n; ++i) {
        lg_node_pair_t *op = over->map.pairs + i;
        ++op->value->refcnt;
        size_t j;
        for (j = 0; j != base_n; ++j)
            if (strcmp(base->map.pairs[j].key->scalar.str, op->key->scalar.str) == 0)
                break;
        if (j != base_n) {
            base->map.pairs[j].value = lg_node_merge(base->map.pairs[j].value, op->value);
        } else {
            ++op->key->refcnt;
            heap_map_push(base, &cap, op->key, op->value);
        }
    }
}

static void recompute_weight(lg_node_t *n)
{
    n->weight = 1;
    if (n->type == LG_NODE_MAP)
        for (size_t i = 0; i != n->map.n; ++i)
            n->weight += n->map.pairs[i].key->weight + n->map.pairs[i].value->weight;
    else if (n->type == LG_NODE_SEQ)
        for (size_t i = 0; i != n->seq.n; ++i)
            n->weight += n->seq.items[i]->weight;
}

lg_node_t *lg_node_merge(lg_node_t *base, lg_node_t *over)
{
    if (base == NULL)
        return over;
    if (over == NULL || lg_node_is_null(over)) {
        lg_node_free(over);
        return base;
    }
    if (base->type != over->type || base->type == LG_NODE_SCALAR) {
        lg_node_free(base);
        return over;
    }
    base = unshare(base);
    own_items(base);
    if (base->type == LG_NODE_MAP) {
        merge_maps(base, over);
    } else {
        base->seq.items = lg_realloc(base->seq.items, (base->seq.n + over->seq.n) * sizeof(*base->seq.items));
        for (size_t i = 0; i != over->seq.n; ++i)
            ++(base->seq.items[base->seq.n++] = over->seq.items[i])->refcnt;
    }
    recompute_weight(base);
    lg_node_free(over);
    return base;
}
