/*
 * The message descriptor registry: every generated descriptor (lg_proto_registry,
 * written by tools/gen-protos.sh) and everything reachable from them, indexed
 * by full name, by descriptor and by (descriptor, field name) so that the
 * JSON mapping never scans a field list. Built once on first use; read-only
 * afterwards, so lookups need no lock.
 */
#include <pthread.h>
#include "legate/pbjson.h"

extern const ProtobufCMessageDescriptor *const lg_proto_registry[];

typedef struct st_msginfo_t {
    const ProtobufCMessageDescriptor *desc;
    lg_pbfield_t *fields;
    struct st_msginfo_t *next; /* in the list of descriptors found after init */
} msginfo_t;

typedef struct st_fieldslot_t {
    const ProtobufCMessageDescriptor *desc;
    const char *name;
    size_t len;
    const lg_pbfield_t *field;
} fieldslot_t;

static struct {
    msginfo_t **msgs;
    size_t n_msgs;
    msginfo_t **by_name, **by_desc; /* open addressing, capacity `cap` */
    size_t cap;
    fieldslot_t *by_field;
    size_t field_cap;
} reg;

/* Descriptors that are neither in the registry nor reachable from it (only a
 * caller's own descriptor would be); looked up under a lock, never freed. */
static pthread_mutex_t extra_mutex = PTHREAD_MUTEX_INITIALIZER;
static msginfo_t *extra_msgs;

static uint64_t hash_str(const char *s, size_t len)
{
    uint64_t h = 1469598103934665603u;
    for (size_t i = 0; i != len; ++i)
        h = (h ^ (unsigned char)s[i]) * 1099511628211u;
    return h;
}

static uint64_t hash_ptr(const void *p)
{
    uint64_t h = (uintptr_t)p * 0x9E3779B97F4A7C15u;
    return h ^ (h >> 29);
}

static char *camel(const char *name, int cap_first, const char *suffix)
{
    size_t len = strlen(name);
    char *out = lg_malloc(len + strlen(suffix) + 1), *p = out;
    int cap_next = cap_first;
    for (const char *s = name; *s != '\0'; ++s) {
        if (*s == '_') {
            cap_next = 1;
        } else {
            *p++ = cap_next && *s >= 'a' && *s <= 'z' ? *s - 'a' + 'A' : *s;
            cap_next = 0;
        }
    }
    strcpy(p, suffix);
    return out;
}

/* protoc names the entry message of map field `foo_bar` in message M "M.FooBarEntry". */
static int is_map_field(const ProtobufCMessageDescriptor *parent, const ProtobufCFieldDescriptor *fd)
{
    if (fd->type != PROTOBUF_C_TYPE_MESSAGE || fd->label != PROTOBUF_C_LABEL_REPEATED)
        return 0;
    const ProtobufCMessageDescriptor *e = fd->descriptor;
    if (e->n_fields != 2 || e->fields[0].id != 1 || strcmp(e->fields[0].name, "key") != 0 || e->fields[1].id != 2 ||
        strcmp(e->fields[1].name, "value") != 0)
        return 0;
    size_t plen = strlen(parent->name);
    if (strncmp(e->name, parent->name, plen) != 0 || e->name[plen] != '.')
        return 0;
    char *want = camel(fd->name, 1, "Entry");
    int ret = strcmp(e->name + plen + 1, want) == 0;
    free(want);
    return ret;
}

static msginfo_t *msginfo_new(const ProtobufCMessageDescriptor *desc)
{
    msginfo_t *mi = lg_calloc(1, sizeof(*mi));
    mi->desc = desc;
    mi->fields = lg_calloc(desc->n_fields + 1, sizeof(*mi->fields));
    for (unsigned i = 0; i != desc->n_fields; ++i) {
        lg_pbfield_t *f = mi->fields + i;
        f->fd = desc->fields + i;
        if (strcmp(desc->name, "envoy.config.bootstrap.v3.Runtime") == 0 && strcmp(f->fd->name, "base_layer") == 0) {
            /* renamed at generation: protobuf-c reserves `base` */
            f->name = "base";
            f->json_name = "base";
        } else {
            f->name = f->fd->name;
            f->json_name = camel(f->fd->name, 0, "");
        }
        f->is_map = is_map_field(desc, f->fd);
    }
    return mi;
}

static msginfo_t **slot_by_desc(const ProtobufCMessageDescriptor *desc)
{
    size_t mask = reg.cap - 1;
    for (size_t i = hash_ptr(desc) & mask;; i = (i + 1) & mask)
        if (reg.by_desc[i] == NULL || reg.by_desc[i]->desc == desc)
            return reg.by_desc + i;
}

static msginfo_t **slot_by_name(const char *name, size_t len)
{
    size_t mask = reg.cap - 1;
    for (size_t i = hash_str(name, len) & mask;; i = (i + 1) & mask) {
        msginfo_t *mi = reg.by_name[i];
        if (mi == NULL || (strncmp(mi->desc->name, name, len) == 0 && mi->desc->name[len] == '\0'))
            return reg.by_name + i;
    }
}

static fieldslot_t *slot_by_field(const ProtobufCMessageDescriptor *desc, const char *name, size_t len)
{
    size_t mask = reg.field_cap - 1;
    for (size_t i = (hash_ptr(desc) ^ hash_str(name, len)) & mask;; i = (i + 1) & mask) {
        fieldslot_t *s = reg.by_field + i;
        if (s->desc == NULL || (s->desc == desc && s->len == len && memcmp(s->name, name, len) == 0))
            return s;
    }
}

static void rehash_msgs(size_t cap)
{
    free(reg.by_desc);
    free(reg.by_name);
    reg.cap = cap;
    reg.by_desc = lg_calloc(cap, sizeof(*reg.by_desc));
    reg.by_name = lg_calloc(cap, sizeof(*reg.by_name));
    for (size_t i = 0; i != reg.n_msgs; ++i) {
        msginfo_t *mi = reg.msgs[i];
        *slot_by_desc(mi->desc) = mi;
        *slot_by_name(mi->desc->name, strlen(mi->desc->name)) = mi;
    }
}

/* Adds desc and everything its fields reach (iteratively: the graph has cycles). */
static void add_closure(const ProtobufCMessageDescriptor *root)
{
    const ProtobufCMessageDescriptor **stack = NULL;
    size_t depth = 0, cap = 0;
#define PUSH(d)                                                               \
    do {                                                                      \
        if (depth == cap)                                                     \
            stack = lg_realloc(stack, (cap = cap * 2 + 16) * sizeof(*stack)); \
        stack[depth++] = (d);                                                 \
    } while (0)
    PUSH(root);
    while (depth != 0) {
        const ProtobufCMessageDescriptor *d = stack[--depth];
        if (*slot_by_desc(d) != NULL)
            continue;
        if ((reg.n_msgs + 1) * 2 > reg.cap) {
            reg.msgs = lg_realloc(reg.msgs, reg.cap * 2 * sizeof(*reg.msgs));
            rehash_msgs(reg.cap * 2);
        }
        msginfo_t *mi = msginfo_new(d);
        reg.msgs[reg.n_msgs++] = mi;
        *slot_by_desc(d) = mi;
        msginfo_t **ns = slot_by_name(d->name, strlen(d->name));
        if (*ns == NULL)
            *ns = mi;
        for (unsigned i = 0; i != d->n_fields; ++i)
            if (d->fields[i].type == PROTOBUF_C_TYPE_MESSAGE)
                PUSH(d->fields[i].descriptor);
    }
#undef PUSH
    free(stack);
}

static void index_field(const ProtobufCMessageDescriptor *desc, const char *name, const lg_pbfield_t *f)
{
    fieldslot_t *s = slot_by_field(desc, name, strlen(name));
    if (s->desc == NULL)
        *s = (fieldslot_t){desc, name, strlen(name), f};
}

static void init(void)
{
    reg.cap = 1024;
    reg.msgs = lg_malloc(reg.cap * sizeof(*reg.msgs));
    rehash_msgs(reg.cap);
    for (const ProtobufCMessageDescriptor *const *d = lg_proto_registry; *d != NULL; ++d)
        add_closure(*d);
    size_t n_fields = 0;
    for (size_t i = 0; i != reg.n_msgs; ++i)
        n_fields += reg.msgs[i]->desc->n_fields;
    for (reg.field_cap = 64; reg.field_cap < n_fields * 4; reg.field_cap *= 2)
        ;
    reg.by_field = lg_calloc(reg.field_cap, sizeof(*reg.by_field));
    for (size_t i = 0; i != reg.n_msgs; ++i) {
        msginfo_t *mi = reg.msgs[i];
        for (unsigned j = 0; j != mi->desc->n_fields; ++j) {
            index_field(mi->desc, mi->fields[j].name, mi->fields + j);
            index_field(mi->desc, mi->fields[j].json_name, mi->fields + j);
        }
    }
}

static void ensure_init(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, init);
}

static const msginfo_t *find_extra(const ProtobufCMessageDescriptor *desc)
{
    pthread_mutex_lock(&extra_mutex);
    msginfo_t *mi;
    for (mi = extra_msgs; mi != NULL; mi = mi->next)
        if (mi->desc == desc)
            break;
    if (mi == NULL) {
        mi = msginfo_new(desc);
        mi->next = extra_msgs;
        extra_msgs = mi;
    }
    pthread_mutex_unlock(&extra_mutex);
    return mi;
}

static const msginfo_t *find_info(const ProtobufCMessageDescriptor *desc)
{
    ensure_init();
    const msginfo_t *mi = *slot_by_desc(desc);
    return mi != NULL ? mi : find_extra(desc);
}

const ProtobufCMessageDescriptor *lg_proto_find(const char *full_name)
{
    ensure_init();
    const msginfo_t *mi = *slot_by_name(full_name, strlen(full_name));
    return mi != NULL ? mi->desc : NULL;
}

const ProtobufCMessageDescriptor *lg_proto_find_by_type_url(const char *url, size_t len)
{
    ensure_init();
    size_t start = len;
    while (start != 0 && url[start - 1] != '/')
        --start;
    if (start == len)
        return NULL;
    const msginfo_t *mi = *slot_by_name(url + start, len - start);
    return mi != NULL ? mi->desc : NULL;
}

const lg_pbfield_t *lg__proto_fields(const ProtobufCMessageDescriptor *desc)
{
    return find_info(desc)->fields;
}

const lg_pbfield_t *lg__proto_field(const ProtobufCMessageDescriptor *desc, const char *name, size_t len)
{
    ensure_init();
    if (*slot_by_desc(desc) != NULL)
        return slot_by_field(desc, name, len)->field;
    const msginfo_t *mi = find_extra(desc);
    for (unsigned i = 0; i != desc->n_fields; ++i) {
        const lg_pbfield_t *f = mi->fields + i;
        if ((strncmp(f->name, name, len) == 0 && f->name[len] == '\0') ||
            (strncmp(f->json_name, name, len) == 0 && f->json_name[len] == '\0'))
            return f;
    }
    return NULL;
}
