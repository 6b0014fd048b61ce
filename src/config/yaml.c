/*
 * YAML (and so JSON) documents to lg_node_t trees, from libyaml's event
 * stream. Aliases share the anchored node (refcounted) and every node records
 * its alias-expanded weight, so an alias bomb is refused before anything
 * walks it. Keys tagged `!ignore` are dropped (as Envoy does) and YAML merge
 * keys (`<<: *anchor`) are applied.
 */
#include <yaml.h>
#include "legate/pbjson.h"

typedef struct st_frame_t {
    lg_node_t *node;
    lg_node_t *key;     /* a map's key waiting for its value */
    int drop_value;     /* the key was tagged !ignore */
    size_t cap;         /* of the node's pairs/items */
    char *anchor;       /* defined when the collection ends, so it cannot contain itself */
    lg_node_t **merges; /* values of `<<` keys, applied at the map's end */
    size_t n_merges;
    size_t merges_cap;
} frame_t;

typedef struct st_anchor_t {
    char *name;
    lg_node_t *node;
} anchor_t;

typedef struct st_builder_t {
    lg_node_source_t *source;
    frame_t stack[LG_NODE_MAX_DEPTH + 1];
    size_t depth;
    anchor_t *anchors;
    size_t n_anchors, anchors_cap;
    lg_node_t *root;
    lg_error_t *err;
} builder_t;

static lg_node_t *node_alloc(lg_node_type_t type, unsigned line, lg_node_source_t *source, size_t extra)
{
    lg_node_t *n = lg_calloc(1, sizeof(*n) + extra);
    n->type = type;
    n->line = line;
    n->refcnt = 1;
    n->weight = 1;
    n->source = source;
    if (source != NULL)
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

static void source_release(lg_node_source_t *s)
{
    if (s != NULL && --s->refcnt == 0)
        free(s);
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
        free(node->map.pairs);
        break;
    case LG_NODE_SEQ:
        for (size_t i = 0; i != node->seq.n; ++i)
            lg_node_free(node->seq.items[i]);
        free(node->seq.items);
        break;
    }
    source_release(node->source);
    free(node);
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
    if (b->source != NULL)
        return lg_error(b->err, "%s:%u: %s", b->source->name, line, msg);
    return lg_error(b->err, "line %u: %s", line, msg);
}

static void map_push(lg_node_t *map, size_t *cap, lg_node_t *key, lg_node_t *value)
{
    if (map->map.n == *cap)
        map->map.pairs = lg_realloc(map->map.pairs, (*cap = *cap * 2 + 4) * sizeof(*map->map.pairs));
    map->map.pairs[map->map.n++] = (lg_node_pair_t){key, value};
}

static int add_weight(builder_t *b, lg_node_t *parent, size_t weight)
{
    parent->weight += weight;
    if (parent->weight > LG_NODE_MAX_WEIGHT)
        return fail(b, parent->line, "document too large (aliases expand to too many nodes)");
    return 0;
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
        if (add_weight(b, parent, node->weight) != 0)
            goto fail;
        if (parent->seq.n == f->cap)
            parent->seq.items = lg_realloc(parent->seq.items, (f->cap = f->cap * 2 + 4) * sizeof(*parent->seq.items));
        parent->seq.items[parent->seq.n++] = node;
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
        map_push(parent, &f->cap, key, node);
        if (add_weight(b, parent, key->weight + node->weight) != 0)
            return -1;
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
        if (add_weight(b, f->node, p->key->weight + p->value->weight) != 0)
            return -1;
        ++p->key->refcnt;
        ++p->value->refcnt;
        map_push(f->node, &f->cap, p->key, p->value);
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

lg_node_t *lg_yaml_parse(const char *buf, size_t len, const char *filename, lg_error_t *err)
{
    builder_t b = {.err = err};
    if (filename != NULL) {
        b.source = lg_malloc(offsetof(lg_node_source_t, name) + strlen(filename) + 1);
        b.source->refcnt = 1;
        strcpy(b.source->name, filename);
    }
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
            map_push(base, &cap, op->key, op->value);
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
