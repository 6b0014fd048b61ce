/*
 * protobuf-c message -> proto3 JSON text, as protobuf's JSON printer writes
 * it for Envoy's admin endpoints (preserve_proto_field_names, fields without
 * presence omitted when at their default, add_whitespace for pretty output).
 * Fields print in field-number order: protobuf-c keeps no declaration order.
 */
#include <math.h>
#include "legate/pbjson.h"
#include "google/protobuf/duration.pb-c.h"
#include "google/protobuf/struct.pb-c.h"
#include "google/protobuf/timestamp.pb-c.h"
#include "google/protobuf/wrappers.pb-c.h"

#define MEMBER(type, msg, off) (*(const type *)((const char *)(msg) + (off)))

typedef struct st_enc_t {
    lg_strbuf_t *out;
    int indent;
    int flags;
    int depth;
} enc_t;

static void encode_message(enc_t *e, const ProtobufCMessage *m);

static void newline(enc_t *e)
{
    if (e->indent == 0)
        return;
    size_t n = (size_t)e->depth * (size_t)e->indent;
    lg_strbuf_reserve(e->out, n + 1);
    e->out->base[e->out->len++] = '\n';
    memset(e->out->base + e->out->len, ' ', n);
    e->out->len += n;
    e->out->base[e->out->len] = '\0';
}

/* Starts the next member of an object or array; `*first` tracks the first. */
static void next_member(enc_t *e, int *first)
{
    if (!*first)
        lg_strbuf_append(e->out, ",", 1);
    *first = 0;
    newline(e);
}

static void write_key(enc_t *e, const char *key, size_t len)
{
    lg_strbuf_json_string(e->out, key, len);
    lg_strbuf_puts(e->out, e->indent != 0 ? ": " : ":");
}

static void open_block(enc_t *e, char c)
{
    lg_strbuf_append(e->out, &c, 1);
    ++e->depth;
}

static void close_block(enc_t *e, char c, int empty)
{
    --e->depth;
    if (!empty)
        newline(e);
    lg_strbuf_append(e->out, &c, 1);
}

static void write_base64(lg_strbuf_t *out, const uint8_t *p, size_t len)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    lg_strbuf_reserve(out, (len + 2) / 3 * 4 + 2);
    char *w = out->base + out->len;
    *w++ = '"';
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < len ? (uint32_t)p[i + 1] << 8 : 0) | (i + 2 < len ? p[i + 2] : 0);
        *w++ = tbl[v >> 18];
        *w++ = tbl[(v >> 12) & 63];
        *w++ = i + 1 < len ? tbl[(v >> 6) & 63] : '=';
        *w++ = i + 2 < len ? tbl[v & 63] : '=';
    }
    *w++ = '"';
    *w = '\0';
    out->len = (size_t)(w - out->base);
}

/* Shortest text that reads back as the same value (protobuf's SimpleDtoa/SimpleFtoa). */
static void write_double(lg_strbuf_t *out, double v, int is_float)
{
    if (isnan(v)) {
        lg_strbuf_puts(out, "\"NaN\"");
        return;
    }
    if (isinf(v)) {
        lg_strbuf_puts(out, v > 0 ? "\"Infinity\"" : "\"-Infinity\"");
        return;
    }
    char buf[64];
    if (is_float) {
        snprintf(buf, sizeof(buf), "%.6g", v);
        if (strtof(buf, NULL) != (float)v)
            snprintf(buf, sizeof(buf), "%.9g", v);
    } else {
        snprintf(buf, sizeof(buf), "%.15g", v);
        if (strtod(buf, NULL) != v)
            snprintf(buf, sizeof(buf), "%.17g", v);
    }
    lg_strbuf_puts(out, buf);
}

/* Seconds and nanos as "1.500s" / "-0.000000001s" (0, 3, 6 or 9 fraction digits). */
static void write_fraction(lg_strbuf_t *out, int32_t nanos)
{
    if (nanos == 0)
        return;
    if (nanos % 1000000 == 0)
        lg_strbuf_printf(out, ".%03d", nanos / 1000000);
    else if (nanos % 1000 == 0)
        lg_strbuf_printf(out, ".%06d", nanos / 1000);
    else
        lg_strbuf_printf(out, ".%09d", nanos);
}

static void write_duration(lg_strbuf_t *out, const Google__Protobuf__Duration *d)
{
    int neg = d->seconds < 0 || d->nanos < 0;
    uint64_t sec = d->seconds < 0 ? (uint64_t)0 - (uint64_t)d->seconds : (uint64_t)d->seconds;
    lg_strbuf_printf(out, "\"%s%llu", neg ? "-" : "", (unsigned long long)sec);
    write_fraction(out, d->nanos < 0 ? -d->nanos : d->nanos);
    lg_strbuf_puts(out, "s\"");
}

static void write_timestamp(lg_strbuf_t *out, const Google__Protobuf__Timestamp *t)
{
    int64_t days = t->seconds / 86400, rem = t->seconds % 86400;
    if (rem < 0) {
        rem += 86400;
        --days;
    }
    /* Howard Hinnant's civil_from_days */
    int64_t z = days + 719468, era = (z >= 0 ? z : z - 146096) / 146097, doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365, doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153, day = doy - (153 * mp + 2) / 5 + 1, month = mp < 10 ? mp + 3 : mp - 9;
    int64_t year = yoe + era * 400 + (month <= 2);
    lg_strbuf_printf(out, "\"%04lld-%02lld-%02lldT%02lld:%02lld:%02lld", (long long)year, (long long)month, (long long)day,
                     (long long)(rem / 3600), (long long)(rem / 60 % 60), (long long)(rem % 60));
    write_fraction(out, t->nanos);
    lg_strbuf_puts(out, "Z\"");
}

static void write_enum(lg_strbuf_t *out, const ProtobufCEnumDescriptor *ed, int32_t v)
{
    if (strcmp(ed->name, "google.protobuf.NullValue") == 0) {
        lg_strbuf_puts(out, "null");
        return;
    }
    const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(ed, v);
    if (ev != NULL)
        lg_strbuf_json_string(out, ev->name, strlen(ev->name));
    else
        lg_strbuf_printf(out, "%d", v);
}

/* One value of a field (an element, for a repeated field) at `p`. */
static void encode_value(enc_t *e, const ProtobufCFieldDescriptor *fd, const void *p)
{
    lg_strbuf_t *out = e->out;
    switch (fd->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        lg_strbuf_printf(out, "%d", *(const int32_t *)p);
        break;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        lg_strbuf_printf(out, "%u", *(const uint32_t *)p);
        break;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        lg_strbuf_printf(out, "\"%lld\"", (long long)*(const int64_t *)p);
        break;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        lg_strbuf_printf(out, "\"%llu\"", (unsigned long long)*(const uint64_t *)p);
        break;
    case PROTOBUF_C_TYPE_FLOAT:
        write_double(out, *(const float *)p, 1);
        break;
    case PROTOBUF_C_TYPE_DOUBLE:
        write_double(out, *(const double *)p, 0);
        break;
    case PROTOBUF_C_TYPE_BOOL:
        lg_strbuf_puts(out, *(const protobuf_c_boolean *)p ? "true" : "false");
        break;
    case PROTOBUF_C_TYPE_ENUM:
        write_enum(out, fd->descriptor, *(const int32_t *)p);
        break;
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(char *const *)p;
        s = s != NULL ? s : "";
        lg_strbuf_json_string(out, s, strlen(s));
        break;
    }
    case PROTOBUF_C_TYPE_BYTES:
        write_base64(out, ((const ProtobufCBinaryData *)p)->data, ((const ProtobufCBinaryData *)p)->len);
        break;
    case PROTOBUF_C_TYPE_MESSAGE:
        encode_message(e, *(ProtobufCMessage *const *)p);
        break;
    }
}

static int is_zero(const ProtobufCFieldDescriptor *fd, const void *p)
{
    switch (fd->type) {
    case PROTOBUF_C_TYPE_STRING:
        return *(char *const *)p == NULL || **(char *const *)p == '\0';
    case PROTOBUF_C_TYPE_BYTES:
        return ((const ProtobufCBinaryData *)p)->len == 0;
    case PROTOBUF_C_TYPE_MESSAGE:
        return *(ProtobufCMessage *const *)p == NULL;
    case PROTOBUF_C_TYPE_FLOAT:
        return *(const float *)p == 0 && !signbit(*(const float *)p);
    case PROTOBUF_C_TYPE_DOUBLE:
        return *(const double *)p == 0 && !signbit(*(const double *)p);
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        return *(const uint64_t *)p == 0;
    default:
        return *(const uint32_t *)p == 0;
    }
}

/* protobuf's printer silently drops a Value with no kind set. */
static int value_is_empty(const Google__Protobuf__Value *v)
{
    return v == NULL || v->kind_case == GOOGLE__PROTOBUF__VALUE__KIND__NOT_SET;
}

/* Whether protobuf's printer would print this field (no always_print_primitive_fields). */
static int field_present(const ProtobufCMessage *m, const ProtobufCFieldDescriptor *fd)
{
    const void *p = (const char *)m + fd->offset;
    if (fd->label == PROTOBUF_C_LABEL_REPEATED)
        return MEMBER(size_t, m, fd->quantifier_offset) != 0;
    if ((fd->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) != 0)
        return MEMBER(uint32_t, m, fd->quantifier_offset) == fd->id;
    if (fd->label == PROTOBUF_C_LABEL_REQUIRED)
        return 1;
    if (fd->type == PROTOBUF_C_TYPE_MESSAGE && fd->descriptor == &google__protobuf__value__descriptor)
        return !value_is_empty(*(const Google__Protobuf__Value *const *)p);
    if (fd->label == PROTOBUF_C_LABEL_OPTIONAL) {
        if (fd->type == PROTOBUF_C_TYPE_STRING || fd->type == PROTOBUF_C_TYPE_MESSAGE)
            return *(void *const *)p != NULL && *(void *const *)p != fd->default_value;
        return fd->quantifier_offset != 0 && MEMBER(protobuf_c_boolean, m, fd->quantifier_offset);
    }
    return !is_zero(fd, p);
}

static void encode_map(enc_t *e, const ProtobufCFieldDescriptor *fd, const ProtobufCMessage *const *entries, size_t n)
{
    const ProtobufCMessageDescriptor *ed = fd->descriptor;
    const ProtobufCFieldDescriptor *kf = ed->fields, *vf = kf + 1;
    int first = 1;
    open_block(e, '{');
    for (size_t i = 0; i != n; ++i) {
        const char *k = (const char *)entries[i] + kf->offset;
        next_member(e, &first);
        if (kf->type == PROTOBUF_C_TYPE_STRING) {
            encode_value(e, kf, k);
        } else {
            lg_strbuf_t tmp = {NULL};
            enc_t sub = {&tmp, 0, e->flags, 0};
            encode_value(&sub, kf, k);
            if (tmp.base[0] == '"')
                lg_strbuf_puts(e->out, tmp.base);
            else
                lg_strbuf_json_string(e->out, tmp.base, tmp.len);
            lg_strbuf_free(&tmp);
        }
        lg_strbuf_puts(e->out, e->indent != 0 ? ": " : ":");
        encode_value(e, vf, (const char *)entries[i] + vf->offset);
    }
    close_block(e, '}', first);
}

static void encode_field(enc_t *e, const ProtobufCMessage *m, const lg_pbfield_t *f)
{
    const ProtobufCFieldDescriptor *fd = f->fd;
    const char *name = (e->flags & LG_PBJSON_JSON_NAMES) != 0 ? f->json_name : f->name;
    write_key(e, name, strlen(name));
    if (fd->label != PROTOBUF_C_LABEL_REPEATED) {
        encode_value(e, fd, (const char *)m + fd->offset);
        return;
    }
    size_t n = MEMBER(size_t, m, fd->quantifier_offset);
    const char *arr = MEMBER(char *, m, fd->offset);
    if (f->is_map) {
        encode_map(e, fd, (const ProtobufCMessage *const *)arr, n);
        return;
    }
    static const size_t sizes[] = {[PROTOBUF_C_TYPE_INT32] = 4,
                                   [PROTOBUF_C_TYPE_SINT32] = 4,
                                   [PROTOBUF_C_TYPE_SFIXED32] = 4,
                                   [PROTOBUF_C_TYPE_INT64] = 8,
                                   [PROTOBUF_C_TYPE_SINT64] = 8,
                                   [PROTOBUF_C_TYPE_SFIXED64] = 8,
                                   [PROTOBUF_C_TYPE_UINT32] = 4,
                                   [PROTOBUF_C_TYPE_FIXED32] = 4,
                                   [PROTOBUF_C_TYPE_UINT64] = 8,
                                   [PROTOBUF_C_TYPE_FIXED64] = 8,
                                   [PROTOBUF_C_TYPE_FLOAT] = sizeof(float),
                                   [PROTOBUF_C_TYPE_DOUBLE] = sizeof(double),
                                   [PROTOBUF_C_TYPE_BOOL] = sizeof(protobuf_c_boolean),
                                   [PROTOBUF_C_TYPE_ENUM] = 4,
                                   [PROTOBUF_C_TYPE_STRING] = sizeof(char *),
                                   [PROTOBUF_C_TYPE_BYTES] = sizeof(ProtobufCBinaryData),
                                   [PROTOBUF_C_TYPE_MESSAGE] = sizeof(ProtobufCMessage *)};
    int first = 1;
    open_block(e, '[');
    for (size_t i = 0; i != n; ++i) {
        next_member(e, &first);
        encode_value(e, fd, arr + i * sizes[fd->type]);
    }
    close_block(e, ']', first);
}

/* Writes m's present fields as members of the object being written. */
static void encode_fields(enc_t *e, const ProtobufCMessage *m, int *first)
{
    const ProtobufCMessageDescriptor *desc = m->descriptor;
    const lg_pbfield_t *fields = lg__proto_fields(desc);
    for (unsigned i = 0; i != desc->n_fields; ++i) {
        if (!field_present(m, desc->fields + i))
            continue;
        next_member(e, first);
        encode_field(e, m, fields + i);
    }
}

static void encode_struct(enc_t *e, const Google__Protobuf__Struct *s)
{
    int first = 1;
    open_block(e, '{');
    for (size_t i = 0; i != s->n_fields; ++i) {
        if (value_is_empty(s->fields[i]->value))
            continue;
        next_member(e, &first);
        const char *k = s->fields[i]->key != NULL ? s->fields[i]->key : "";
        write_key(e, k, strlen(k));
        encode_message(e, &s->fields[i]->value->base);
    }
    close_block(e, '}', first);
}

static void encode_list(enc_t *e, const Google__Protobuf__ListValue *l)
{
    int first = 1;
    open_block(e, '[');
    for (size_t i = 0; i != l->n_values; ++i) {
        if (value_is_empty(l->values[i]))
            continue;
        next_member(e, &first);
        encode_message(e, &l->values[i]->base);
    }
    close_block(e, ']', first);
}

static void encode_struct_value(enc_t *e, const Google__Protobuf__Value *v)
{
    switch (v->kind_case) {
    case GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE:
        write_double(e->out, v->number_value, 0);
        break;
    case GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE:
        lg_strbuf_json_string(e->out, v->string_value, strlen(v->string_value));
        break;
    case GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE:
        lg_strbuf_puts(e->out, v->bool_value ? "true" : "false");
        break;
    case GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE:
        encode_message(e, &v->struct_value->base);
        break;
    case GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE:
        encode_message(e, &v->list_value->base);
        break;
    default:
        lg_strbuf_puts(e->out, "null");
        break;
    }
}

static int is_wrapper(const ProtobufCMessageDescriptor *desc)
{
    return desc == &google__protobuf__double_value__descriptor || desc == &google__protobuf__float_value__descriptor ||
           desc == &google__protobuf__int64_value__descriptor || desc == &google__protobuf__uint64_value__descriptor ||
           desc == &google__protobuf__int32_value__descriptor || desc == &google__protobuf__uint32_value__descriptor ||
           desc == &google__protobuf__bool_value__descriptor || desc == &google__protobuf__string_value__descriptor ||
           desc == &google__protobuf__bytes_value__descriptor;
}

static int has_special_json(const ProtobufCMessageDescriptor *desc)
{
    return desc == &google__protobuf__duration__descriptor || desc == &google__protobuf__timestamp__descriptor ||
           desc == &google__protobuf__struct__descriptor || desc == &google__protobuf__list_value__descriptor ||
           desc == &google__protobuf__value__descriptor || desc == &google__protobuf__any__descriptor || is_wrapper(desc);
}

/* Writes a well-known type's special JSON form (has_special_json). */
static void encode_special(enc_t *e, const ProtobufCMessage *m);

/* {"@type": url, fields of the packed message...}; a type outside the
 * registry (or bytes that do not parse) keeps its bytes under "value". */
static void encode_any(enc_t *e, const Google__Protobuf__Any *any)
{
    const char *url = any->type_url != NULL ? any->type_url : "";
    int first = 1;
    open_block(e, '{');
    if (*url != '\0' || any->value.len != 0) {
        next_member(e, &first);
        write_key(e, "@type", 5);
        lg_strbuf_json_string(e->out, url, strlen(url));
        const ProtobufCMessageDescriptor *desc = lg_proto_find_by_type_url(url, strlen(url));
        ProtobufCMessage *inner = desc != NULL ? protobuf_c_message_unpack(desc, NULL, any->value.len, any->value.data) : NULL;
        if (inner == NULL || has_special_json(desc)) {
            next_member(e, &first);
            write_key(e, "value", 5);
            if (inner != NULL)
                encode_special(e, inner);
            else
                write_base64(e->out, any->value.data, any->value.len);
        } else {
            encode_fields(e, inner, &first);
        }
        protobuf_c_message_free_unpacked(inner, NULL);
    }
    close_block(e, '}', first);
}

static void encode_special(enc_t *e, const ProtobufCMessage *m)
{
    const ProtobufCMessageDescriptor *desc = m->descriptor;
    if (desc == &google__protobuf__duration__descriptor)
        write_duration(e->out, (const void *)m);
    else if (desc == &google__protobuf__timestamp__descriptor)
        write_timestamp(e->out, (const void *)m);
    else if (desc == &google__protobuf__struct__descriptor)
        encode_struct(e, (const void *)m);
    else if (desc == &google__protobuf__list_value__descriptor)
        encode_list(e, (const void *)m);
    else if (desc == &google__protobuf__value__descriptor)
        encode_struct_value(e, (const void *)m);
    else if (desc == &google__protobuf__any__descriptor)
        encode_any(e, (const void *)m);
    else
        encode_value(e, desc->fields, (const char *)m + desc->fields->offset);
}

static void encode_message(enc_t *e, const ProtobufCMessage *m)
{
    if (has_special_json(m->descriptor)) {
        encode_special(e, m);
        return;
    }
    int first = 1;
    open_block(e, '{');
    encode_fields(e, m, &first);
    close_block(e, '}', first);
}
void lg_pbjson_encode_ex(lg_strbuf_t *out, const ProtobufCMessage *m, int indent, int flags)
{
    enc_t e = {out, indent < 0 ? 0 : indent, flags, 0};
    encode_message(&e, m);
    if (indent > 0)
        lg_strbuf_append(out, "\n", 1);
}

void lg_pbjson_encode(lg_strbuf_t *out, const ProtobufCMessage *m, int indent)
{
    lg_pbjson_encode_ex(out, m, indent, 0);
}
