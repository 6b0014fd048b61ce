/*
 * Document tree -> protobuf-c message, following the proto3 JSON mapping as
 * Envoy applies it to YAML: plain scalars are typed the way yaml-cpp types
 * them (Envoy converts YAML to JSON with yaml-cpp), quoted ones are strings,
 * and the message is then filled the way protobuf's JSON parser fills it
 * (field or json names, enums by name or number, 64-bit integers from
 * strings, the well-known types' special forms, Any by "@type").
 *
 * Messages are malloc'ed in exactly the layout protobuf_c_message_unpack()
 * produces, so protobuf_c_message_free_unpacked(m, NULL) frees them; every
 * step leaves the message freeable, so an error just frees what was built.
 */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include "legate/pbjson.h"
#include "google/protobuf/duration.pb-c.h"
#include "google/protobuf/struct.pb-c.h"
#include "google/protobuf/timestamp.pb-c.h"
#include "google/protobuf/wrappers.pb-c.h"

#define MEMBER(type, msg, off) (*(type *)((char *)(msg) + (off)))

typedef struct st_dec_t {
    int flags;
    lg_error_t *err;
    lg_strbuf_t path; /* the field path to the node being decoded */
} dec_t;

static int decode_message_into(dec_t *d, ProtobufCMessage *m, const lg_node_t *node);
static int decode_field(dec_t *d, ProtobufCMessage *m, const lg_pbfield_t *f, const lg_node_t *node);

static void location(const lg_node_t *n, char *buf, size_t size)
{
    if (n->source != NULL && n->source->name[0] != '\0')
        snprintf(buf, size, "%s:%u", n->source->name, n->line);
    else
        snprintf(buf, size, "line %u", n->line);
}

static int fail(dec_t *d, const lg_node_t *n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(dec_t *d, const lg_node_t *n, const char *fmt, ...)
{
    char msg[1024], loc[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    location(n, loc, sizeof(loc));
    if (d->path.len != 0)
        return lg_error(d->err, "%s: %s (%s)", d->path.base, msg, loc);
    return lg_error(d->err, "%s (%s)", msg, loc);
}

static size_t path_push_key(dec_t *d, const char *key)
{
    size_t mark = d->path.len;
    if (mark != 0)
        lg_strbuf_append(&d->path, ".", 1);
    lg_strbuf_puts(&d->path, key);
    return mark;
}

static size_t path_push_index(dec_t *d, size_t i)
{
    size_t mark = d->path.len;
    lg_strbuf_printf(&d->path, "[%zu]", i);
    return mark;
}

static size_t path_push_map_key(dec_t *d, const char *key)
{
    size_t mark = d->path.len;
    lg_strbuf_printf(&d->path, "[%s]", key);
    return mark;
}

static void path_pop(dec_t *d, size_t mark)
{
    d->path.len = mark;
    if (d->path.base != NULL)
        d->path.base[mark] = '\0';
}

/* A short rendering of a node for messages. */
static const char *show(const lg_node_t *n)
{
    switch (n->type) {
    case LG_NODE_MAP:
        return "a map";
    case LG_NODE_SEQ:
        return "a list";
    default:
        return n->scalar.str;
    }
}

/* ---- message memory ---- */

static ProtobufCMessage *message_new(const ProtobufCMessageDescriptor *desc)
{
    ProtobufCMessage *m = lg_malloc(desc->sizeof_message);
    protobuf_c_message_init(desc, m);
    return m;
}

static size_t elem_size(ProtobufCType type)
{
    switch (type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_ENUM:
        return 4;
    case PROTOBUF_C_TYPE_FLOAT:
        return sizeof(float);
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_STRING:
        return sizeof(char *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(ProtobufCMessage *);
    default:
        return 8;
    }
}

static void elem_free(const ProtobufCFieldDescriptor *fd, void *slot)
{
    switch (fd->type) {
    case PROTOBUF_C_TYPE_STRING:
        free(*(char **)slot);
        break;
    case PROTOBUF_C_TYPE_BYTES:
        free(((ProtobufCBinaryData *)slot)->data);
        break;
    case PROTOBUF_C_TYPE_MESSAGE:
        protobuf_c_message_free_unpacked(*(ProtobufCMessage **)slot, NULL);
        break;
    default:
        break;
    }
}

static int is_oneof(const ProtobufCFieldDescriptor *fd)
{
    return (fd->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) != 0;
}

/* True when the field holds something that clearing it would release. */
static int field_is_set_oneof(const ProtobufCMessage *m, const ProtobufCFieldDescriptor *fd)
{
    return MEMBER(uint32_t, m, fd->quantifier_offset) == fd->id;
}

/* Puts a field back to its initial state (as message_init left it), releasing what it held. */
static void field_clear(ProtobufCMessage *m, const ProtobufCFieldDescriptor *fd)
{
    void *slot = (char *)m + fd->offset;
    if (fd->label == PROTOBUF_C_LABEL_REPEATED) {
        size_t *n = &MEMBER(size_t, m, fd->quantifier_offset);
        char *arr = *(char **)slot;
        for (size_t i = 0; i != *n; ++i)
            elem_free(fd, arr + i * elem_size(fd->type));
        free(arr);
        *(void **)slot = NULL;
        *n = 0;
        return;
    }
    if (is_oneof(fd)) {
        if (!field_is_set_oneof(m, fd))
            return;
        elem_free(fd, slot);
        memset(slot, 0, elem_size(fd->type));
        MEMBER(uint32_t, m, fd->quantifier_offset) = 0;
        return;
    }
    switch (fd->type) {
    case PROTOBUF_C_TYPE_STRING:
        if (*(char **)slot != fd->default_value)
            free(*(char **)slot);
        *(char **)slot = (char *)fd->default_value;
        break;
    case PROTOBUF_C_TYPE_BYTES: {
        const ProtobufCBinaryData *def = fd->default_value;
        ProtobufCBinaryData *bd = slot;
        if (bd->data != NULL && (def == NULL || def->data != bd->data))
            free(bd->data);
        *bd = def != NULL ? *def : (ProtobufCBinaryData){0, NULL};
        break;
    }
    case PROTOBUF_C_TYPE_MESSAGE:
        protobuf_c_message_free_unpacked(*(ProtobufCMessage **)slot, NULL);
        *(ProtobufCMessage **)slot = NULL;
        break;
    default:
        if (fd->default_value != NULL)
            memcpy(slot, fd->default_value, elem_size(fd->type));
        else
            memset(slot, 0, elem_size(fd->type));
        break;
    }
    if (fd->label == PROTOBUF_C_LABEL_OPTIONAL && fd->quantifier_offset != 0)
        MEMBER(protobuf_c_boolean, m, fd->quantifier_offset) = 0;
}

/* Records that a singular field now holds a value. */
static void field_mark_set(ProtobufCMessage *m, const ProtobufCFieldDescriptor *fd)
{
    if (is_oneof(fd))
        MEMBER(uint32_t, m, fd->quantifier_offset) = fd->id;
    else if (fd->label == PROTOBUF_C_LABEL_OPTIONAL && fd->quantifier_offset != 0 && fd->type != PROTOBUF_C_TYPE_STRING &&
             fd->type != PROTOBUF_C_TYPE_MESSAGE)
        MEMBER(protobuf_c_boolean, m, fd->quantifier_offset) = 1;
}

/* ---- scalars ---- */

/* yaml-cpp's convert<bool>: y/n, yes/no, true/false, on/off, each lower, UPPER or Capitalized. */
static int parse_yaml_bool(const char *s, protobuf_c_boolean *out)
{
    static const char *const names[][2] = {{"y", "n"}, {"yes", "no"}, {"true", "false"}, {"on", "off"}};
    for (size_t i = 0; i != LG_ARRAY_SIZE(names); ++i) {
        for (int v = 0; v != 2; ++v) {
            const char *name = names[i][v];
            size_t len = strlen(name);
            if (strlen(s) != len)
                continue;
            int lower = 1, upper = 1, cap = 1;
            for (size_t j = 0; j != len; ++j) {
                char c = s[j], up = (char)(name[j] - 'a' + 'A');
                lower &= c == name[j];
                upper &= c == up;
                cap &= j == 0 ? c == up : c == name[j];
            }
            if (lower || upper || cap) {
                *out = v == 0;
                return 1;
            }
        }
    }
    return 0;
}

/* An integer literal as yaml-cpp reads a plain scalar (C++ stream, base from the prefix: 0x.., 0..). */
static int parse_yaml_int(const char *s, int64_t *out)
{
    if (*s == '\0' || *s == ' ' || *s == '\t')
        return 0;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 0);
    if (*end != '\0' || errno != 0)
        return 0;
    *out = v;
    return 1;
}

/* A decimal number as JSON and YAML write them: no hex floats, inf or nan words. */
static int parse_decimal(const char *s, double *out)
{
    if (*s == '\0' || strspn(s, "0123456789+-.eE") != strlen(s))
        return 0;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (*end != '\0' || end == s || (errno == ERANGE && isinf(v)))
        return 0;
    *out = v;
    return 1;
}

/* An integer as yaml-cpp reads a plain scalar (C++ stream, base from the prefix: 0x.., 0..) or as
 * protobuf reads a quoted one (decimal); integral numbers written as decimals (1e3) count too. */
static int parse_i64(const lg_node_t *n, int64_t *out)
{
    const char *s = n->scalar.str;
    if (*s == '\0' || *s == ' ' || *s == '\t')
        return 0;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, n->scalar.style == LG_SCALAR_PLAIN ? 0 : 10);
    if (*end == '\0' && errno == 0) {
        *out = v;
        return 1;
    }
    double dv;
    if (errno == ERANGE || !parse_decimal(s, &dv) || dv != floor(dv) || dv < -9223372036854775808.0 || dv >= 9223372036854775808.0)
        return 0;
    *out = (int64_t)dv;
    return 1;
}

static int parse_u64(const lg_node_t *n, uint64_t *out)
{
    const char *s = n->scalar.str;
    if (*s == '\0' || *s == ' ' || *s == '\t' || *s == '-')
        return 0;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, n->scalar.style == LG_SCALAR_PLAIN ? 0 : 10);
    if (*end == '\0' && errno == 0) {
        *out = v;
        return 1;
    }
    double dv;
    if (errno == ERANGE || !parse_decimal(s, &dv) || dv != floor(dv) || dv < 0 || dv >= 18446744073709551616.0)
        return 0;
    *out = (uint64_t)dv;
    return 1;
}

static int parse_double(const lg_node_t *n, double *out)
{
    const char *s = n->scalar.str;
    if (n->scalar.style == LG_SCALAR_PLAIN) {
        static const char *const specials[] = {".inf",  ".Inf",  ".INF",  "+.inf", "+.Inf", "+.INF",
                                               "-.inf", "-.Inf", "-.INF", ".nan",  ".NaN",  ".NAN"};
        for (size_t i = 0; i != LG_ARRAY_SIZE(specials); ++i) {
            if (strcmp(s, specials[i]) == 0) {
                *out = i >= 9 ? NAN : i >= 6 ? -INFINITY : INFINITY;
                return 1;
            }
        }
        int64_t iv;
        if (strpbrk(s, "xX") != NULL && parse_i64(n, &iv)) {
            *out = (double)iv;
            return 1;
        }
    }
    if (strcmp(s, "NaN") == 0) {
        *out = NAN;
        return 1;
    }
    if (strcmp(s, "Infinity") == 0 || strcmp(s, "-Infinity") == 0) {
        *out = *s == '-' ? -INFINITY : INFINITY;
        return 1;
    }
    return parse_decimal(s, out);
}

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+' || c == '-')
        return 62;
    if (c == '/' || c == '_')
        return 63;
    return -1;
}

/* Standard or URL-safe base64, padding optional (as protobuf accepts). */
static int parse_base64(const char *s, size_t len, ProtobufCBinaryData *out)
{
    while (len != 0 && s[len - 1] == '=')
        --len;
    if (len % 4 == 1)
        return 0;
    uint8_t *buf = lg_malloc(len * 3 / 4 + 1), *p = buf;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i != len; ++i) {
        int v = b64_value((unsigned char)s[i]);
        if (v < 0) {
            free(buf);
            return 0;
        }
        acc = acc << 6 | (uint32_t)v;
        if ((bits += 6) >= 8) {
            bits -= 8;
            *p++ = (uint8_t)(acc >> bits);
        }
    }
    out->len = (size_t)(p - buf);
    out->data = out->len != 0 ? buf : (free(buf), NULL);
    return 1;
}

static int decode_enum(dec_t *d, const ProtobufCFieldDescriptor *fd, const lg_node_t *n, int32_t *out)
{
    const ProtobufCEnumDescriptor *ed = fd->descriptor;
    const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value_by_name(ed, n->scalar.str);
    if (ev == NULL && n->scalar.len < 256) {
        char upper[256];
        for (size_t i = 0; i <= n->scalar.len; ++i)
            upper[i] = n->scalar.str[i] >= 'a' && n->scalar.str[i] <= 'z' ? n->scalar.str[i] - 'a' + 'A' : n->scalar.str[i];
        ev = protobuf_c_enum_descriptor_get_value_by_name(ed, upper);
    }
    if (ev != NULL) {
        *out = ev->value;
        return 0;
    }
    int64_t v;
    if (parse_i64(n, &v) && v >= INT32_MIN && v <= INT32_MAX) {
        *out = (int32_t)v;
        return 0;
    }
    if ((d->flags & LG_PBJSON_ALLOW_UNKNOWN_FIELDS) != 0) {
        char loc[512];
        location(n, loc, sizeof(loc));
        LG_WARN(config, "%s: ignoring unknown value \"%s\" for enum %s (%s)", d->path.base, n->scalar.str, ed->name, loc);
        return 1;
    }
    return fail(d, n, "invalid value \"%s\" for enum %s", n->scalar.str, ed->name);
}

static const char *int_type_name(ProtobufCType t)
{
    switch (t) {
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        return "int64";
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        return "uint64";
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        return "uint32";
    default:
        return "int32";
    }
}

static int decode_number(dec_t *d, const ProtobufCFieldDescriptor *fd, const lg_node_t *n, void *slot)
{
    int64_t i;
    uint64_t u;
    double v;
    switch (fd->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        if (!parse_i64(n, &i) || i < INT32_MIN || i > INT32_MAX)
            break;
        *(int32_t *)slot = (int32_t)i;
        return 0;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        if (!parse_i64(n, &i))
            break;
        *(int64_t *)slot = i;
        return 0;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        if (!parse_u64(n, &u) || u > UINT32_MAX)
            break;
        *(uint32_t *)slot = (uint32_t)u;
        return 0;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        if (!parse_u64(n, &u))
            break;
        *(uint64_t *)slot = u;
        return 0;
    case PROTOBUF_C_TYPE_FLOAT:
        if (!parse_double(n, &v))
            return fail(d, n, "invalid float \"%s\"", n->scalar.str);
        if (isfinite(v) && fabs(v) > FLT_MAX)
            return fail(d, n, "float value %s out of range", n->scalar.str);
        *(float *)slot = (float)v;
        return 0;
    default:
        if (!parse_double(n, &v))
            return fail(d, n, "invalid double \"%s\"", n->scalar.str);
        *(double *)slot = v;
        return 0;
    }
    return fail(d, n, "invalid %s \"%s\"", int_type_name(fd->type), n->scalar.str);
}

/* Decodes a scalar node into one non-message value. Returns 0, or 1 when the
 * value is skipped (an unknown enum name under ALLOW_UNKNOWN_FIELDS), or -1. */
static int decode_scalar(dec_t *d, const ProtobufCFieldDescriptor *fd, const lg_node_t *n, void *slot)
{
    if (n->type != LG_NODE_SCALAR)
        return fail(d, n, "expected a scalar value, got %s", show(n));
    switch (fd->type) {
    case PROTOBUF_C_TYPE_STRING:
        *(char **)slot = lg_strndup(n->scalar.str, n->scalar.len);
        return 0;
    case PROTOBUF_C_TYPE_BYTES:
        if (!parse_base64(n->scalar.str, n->scalar.len, slot))
            return fail(d, n, "invalid base64 \"%s\"", n->scalar.str);
        return 0;
    case PROTOBUF_C_TYPE_BOOL:
        if (n->scalar.style == LG_SCALAR_PLAIN ? parse_yaml_bool(n->scalar.str, slot)
                                               : strcmp(n->scalar.str, "true") == 0 || strcmp(n->scalar.str, "false") == 0) {
            if (n->scalar.style != LG_SCALAR_PLAIN)
                *(protobuf_c_boolean *)slot = n->scalar.str[0] == 't';
            return 0;
        }
        return fail(d, n, "invalid bool \"%s\"", n->scalar.str);
    case PROTOBUF_C_TYPE_ENUM:
        return decode_enum(d, fd, n, slot);
    default:
        return decode_number(d, fd, n, slot);
    }
}

/* ---- well-known types ---- */

/* An optional fraction of a second, ".5" to ".123456789", as nanoseconds. */
static int parse_fraction(const char **s, int32_t *nanos)
{
    int digits = 0;
    *nanos = 0;
    if (**s != '.')
        return 1;
    for (++*s; **s >= '0' && **s <= '9'; ++*s, ++digits) {
        if (digits == 9)
            return 0;
        *nanos = *nanos * 10 + (**s - '0');
    }
    for (int i = digits; i < 9; ++i)
        *nanos *= 10;
    return digits != 0;
}

/* protobuf's Duration syntax: -?seconds(.fraction{1,9})?s, within +-10000 years. */
static int parse_duration(const char *s, int64_t *seconds, int32_t *nanos)
{
    int neg = *s == '-';
    s += neg;
    if (*s < '0' || *s > '9')
        return 0;
    uint64_t sec = 0;
    for (; *s >= '0' && *s <= '9'; ++s) {
        sec = sec * 10 + (uint64_t)(*s - '0');
        if (sec > 315576000000u)
            return 0;
    }
    int32_t ns;
    if (!parse_fraction(&s, &ns) || s[0] != 's' || s[1] != '\0')
        return 0;
    *seconds = neg ? -(int64_t)sec : (int64_t)sec;
    *nanos = neg ? -ns : ns;
    return 1;
}

static int parse_digits(const char **s, int n, int *out)
{
    *out = 0;
    for (int i = 0; i != n; ++i, ++*s) {
        if (**s < '0' || **s > '9')
            return 0;
        *out = *out * 10 + (**s - '0');
    }
    return 1;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil). */
static int64_t days_from_civil(int y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/* RFC 3339 as protobuf accepts it: 1972-01-01T10:00:20.021Z or with a +hh:mm/-hh:mm offset. */
static int parse_timestamp(const char *s, int64_t *seconds, int32_t *nanos)
{
    int Y, M, D, h, m, sec;
    if (!parse_digits(&s, 4, &Y) || *s++ != '-' || !parse_digits(&s, 2, &M) || *s++ != '-' || !parse_digits(&s, 2, &D) ||
        (*s != 'T' && *s != 't'))
        return 0;
    ++s;
    if (!parse_digits(&s, 2, &h) || *s++ != ':' || !parse_digits(&s, 2, &m) || *s++ != ':' || !parse_digits(&s, 2, &sec))
        return 0;
    static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (Y < 1 || M < 1 || M > 12 || D < 1 || D > mdays[M - 1] ||
        (M == 2 && D == 29 && (Y % 4 != 0 || (Y % 100 == 0 && Y % 400 != 0))) || h > 23 || m > 59 || sec > 59)
        return 0;
    int32_t ns;
    if (!parse_fraction(&s, &ns))
        return 0;
    int64_t offset = 0;
    if (*s == 'Z' || *s == 'z') {
        ++s;
    } else if (*s == '+' || *s == '-') {
        int sign = *s++ == '-' ? -1 : 1, oh, om;
        if (!parse_digits(&s, 2, &oh) || *s++ != ':' || !parse_digits(&s, 2, &om) || oh > 23 || om > 59)
            return 0;
        offset = sign * (oh * 3600 + om * 60);
    } else {
        return 0;
    }
    if (*s != '\0')
        return 0;
    *seconds = days_from_civil(Y, M, D) * 86400 + h * 3600 + m * 60 + sec - offset;
    *nanos = ns;
    return 1;
}

static int decode_duration(dec_t *d, Google__Protobuf__Duration *m, const lg_node_t *n)
{
    if (n->type != LG_NODE_SCALAR || !parse_duration(n->scalar.str, &m->seconds, &m->nanos))
        return fail(d, n, "invalid duration \"%s\"", show(n));
    return 0;
}

static int decode_timestamp(dec_t *d, Google__Protobuf__Timestamp *m, const lg_node_t *n)
{
    if (n->type != LG_NODE_SCALAR || !parse_timestamp(n->scalar.str, &m->seconds, &m->nanos))
        return fail(d, n, "invalid timestamp \"%s\"", show(n));
    return 0;
}

static int decode_value(dec_t *d, Google__Protobuf__Value *v, const lg_node_t *n);

static int decode_map_field(dec_t *d, ProtobufCMessage *m, const ProtobufCFieldDescriptor *fd, const lg_node_t *node);

/* A Struct is its map<string, Value>; merging replaces entries by key. */
static int decode_struct(dec_t *d, Google__Protobuf__Struct *s, const lg_node_t *n)
{
    if (lg_node_is_null(n))
        return 0;
    return decode_map_field(d, &s->base, s->base.descriptor->fields, n);
}

static int decode_list_value(dec_t *d, Google__Protobuf__ListValue *l, const lg_node_t *n)
{
    if (lg_node_is_null(n))
        return 0;
    if (n->type != LG_NODE_SEQ)
        return fail(d, n, "expected a list, got %s", show(n));
    l->values = lg_realloc(l->values, (l->n_values + n->seq.n) * sizeof(*l->values));
    for (size_t i = 0; i != n->seq.n; ++i) {
        Google__Protobuf__Value *v = (void *)message_new(&google__protobuf__value__descriptor);
        l->values[l->n_values++] = v;
        size_t mark = path_push_index(d, i);
        int ret = decode_value(d, v, n->seq.items[i]);
        path_pop(d, mark);
        if (ret != 0)
            return -1;
    }
    return 0;
}

static void set_number(Google__Protobuf__Value *v, double number)
{
    v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE;
    v->number_value = number;
}

static void set_string(Google__Protobuf__Value *v, const char *s, size_t len)
{
    v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE;
    v->string_value = lg_strndup(s, len);
}

/* A plain scalar typed as Envoy's yaml-cpp conversion types it (parseYamlNode):
 * YAML 1.1 booleans, integers within int32 as numbers and beyond as strings,
 * non-finite floats as the strings protobuf uses for them. */
static void decode_yaml_plain_value(Google__Protobuf__Value *v, const lg_node_t *n)
{
    protobuf_c_boolean b;
    int64_t i;
    double dv;
    char buf[32];
    if (parse_yaml_bool(n->scalar.str, &b)) {
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE;
        v->bool_value = b;
    } else if (parse_yaml_int(n->scalar.str, &i)) {
        if (i >= INT32_MIN && i <= INT32_MAX) {
            set_number(v, (double)i);
        } else {
            snprintf(buf, sizeof(buf), "%lld", (long long)i);
            set_string(v, buf, strlen(buf));
        }
    } else if (parse_double(n, &dv) && strcmp(n->scalar.str, "NaN") != 0 && strstr(n->scalar.str, "Infinity") == NULL) {
        if (isfinite(dv))
            set_number(v, dv);
        else
            set_string(v, isnan(dv) ? "NaN" : dv > 0 ? "Infinity" : "-Infinity", isnan(dv) ? 3 : dv > 0 ? 8 : 9);
    } else {
        set_string(v, n->scalar.str, n->scalar.len);
    }
}

/* A bare JSON token: true, false or a number (protobuf's JSON parser). */
static void decode_json_plain_value(Google__Protobuf__Value *v, const lg_node_t *n)
{
    double dv;
    if (strcmp(n->scalar.str, "true") == 0 || strcmp(n->scalar.str, "false") == 0) {
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE;
        v->bool_value = n->scalar.str[0] == 't';
    } else if (parse_decimal(n->scalar.str, &dv)) {
        set_number(v, dv);
    } else {
        set_string(v, n->scalar.str, n->scalar.len);
    }
}

static void value_clear(Google__Protobuf__Value *v)
{
    for (unsigned i = 0; i != v->base.descriptor->n_fields; ++i)
        field_clear(&v->base, v->base.descriptor->fields + i);
}

static int decode_value(dec_t *d, Google__Protobuf__Value *v, const lg_node_t *n)
{
    value_clear(v);
    if (lg_node_is_null(n)) {
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_NULL_VALUE;
        v->null_value = GOOGLE__PROTOBUF__NULL_VALUE__NULL_VALUE;
        return 0;
    }
    switch (n->type) {
    case LG_NODE_MAP:
        v->struct_value = (void *)message_new(&google__protobuf__struct__descriptor);
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE;
        return decode_struct(d, v->struct_value, n);
    case LG_NODE_SEQ:
        v->list_value = (void *)message_new(&google__protobuf__list_value__descriptor);
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE;
        return decode_list_value(d, v->list_value, n);
    default:
        if (n->scalar.style != LG_SCALAR_PLAIN)
            set_string(v, n->scalar.str, n->scalar.len);
        else if ((d->flags & LG_PBJSON_JSON_INPUT) != 0)
            decode_json_plain_value(v, n);
        else
            decode_yaml_plain_value(v, n);
        return 0;
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

/* Types whose JSON form is not an object; inside an Any they sit under "value". */
static int has_special_json(const ProtobufCMessageDescriptor *desc)
{
    return is_wrapper(desc) || desc == &google__protobuf__duration__descriptor ||
           desc == &google__protobuf__timestamp__descriptor || desc == &google__protobuf__struct__descriptor ||
           desc == &google__protobuf__value__descriptor || desc == &google__protobuf__list_value__descriptor ||
           desc == &google__protobuf__any__descriptor || strcmp(desc->name, "google.protobuf.FieldMask") == 0;
}

/* Well-known types that a merge replaces rather than merges into (Struct
 * merges by key and ListValue appends, like the map and list they are). */
static int replaced_on_merge(const ProtobufCMessageDescriptor *desc)
{
    return has_special_json(desc) && desc != &google__protobuf__struct__descriptor &&
           desc != &google__protobuf__list_value__descriptor;
}

static int decode_map_into(dec_t *d, ProtobufCMessage *m, const lg_node_t *node, int skip_type_key);

static int decode_any(dec_t *d, Google__Protobuf__Any *any, const lg_node_t *n)
{
    if (n->type != LG_NODE_MAP)
        return fail(d, n, "expected a map with \"@type\", got %s", show(n));
    const lg_node_t *type = lg_node_get(n, "@type");
    if (type == NULL) {
        if (n->map.n == 0)
            return 0;
        return fail(d, n, "missing \"@type\" in google.protobuf.Any");
    }
    if (type->type != LG_NODE_SCALAR || type->scalar.len == 0)
        return fail(d, type, "invalid \"@type\"");
    for (unsigned i = 0; i != any->base.descriptor->n_fields; ++i)
        field_clear(&any->base, any->base.descriptor->fields + i);
    any->type_url = lg_strndup(type->scalar.str, type->scalar.len);
    const ProtobufCMessageDescriptor *desc = lg_proto_find_by_type_url(type->scalar.str, type->scalar.len);
    if (desc == NULL)
        return 0; /* the config compiler decides whether an unknown type is fatal, as Envoy does */
    ProtobufCMessage *inner = message_new(desc);
    int ret;
    if (has_special_json(desc)) {
        const lg_node_t *value = lg_node_get(n, "value");
        ret = value != NULL ? decode_message_into(d, inner, value) : 0;
    } else {
        ret = decode_map_into(d, inner, n, 1);
    }
    if (ret == 0) {
        size_t size = protobuf_c_message_get_packed_size(inner);
        any->value.data = lg_malloc(size + 1);
        any->value.len = protobuf_c_message_pack(inner, any->value.data);
    }
    protobuf_c_message_free_unpacked(inner, NULL);
    return ret;
}

static int decode_wrapper(dec_t *d, ProtobufCMessage *m, const lg_node_t *n)
{
    const ProtobufCFieldDescriptor *fd = m->descriptor->fields;
    field_clear(m, fd);
    return decode_scalar(d, fd, n, (char *)m + fd->offset) < 0 ? -1 : 0;
}

/* ---- messages ---- */

static int decode_message_into(dec_t *d, ProtobufCMessage *m, const lg_node_t *node)
{
    const ProtobufCMessageDescriptor *desc = m->descriptor;
    if (desc == &google__protobuf__value__descriptor)
        return decode_value(d, (void *)m, node);
    if (lg_node_is_null(node))
        return 0;
    if (desc == &google__protobuf__duration__descriptor)
        return decode_duration(d, (void *)m, node);
    if (desc == &google__protobuf__timestamp__descriptor)
        return decode_timestamp(d, (void *)m, node);
    if (desc == &google__protobuf__any__descriptor)
        return decode_any(d, (void *)m, node);
    if (desc == &google__protobuf__struct__descriptor)
        return decode_struct(d, (void *)m, node);
    if (desc == &google__protobuf__list_value__descriptor)
        return decode_list_value(d, (void *)m, node);
    if (is_wrapper(desc))
        return decode_wrapper(d, m, node);
    return decode_map_into(d, m, node, 0);
}

static int decode_repeated(dec_t *d, ProtobufCMessage *m, const ProtobufCFieldDescriptor *fd, const lg_node_t *node)
{
    if (node->type != LG_NODE_SEQ)
        return fail(d, node, "expected a list, got %s", show(node));
    size_t *n = &MEMBER(size_t, m, fd->quantifier_offset), es = elem_size(fd->type);
    char **arr = &MEMBER(char *, m, fd->offset);
    if (node->seq.n == 0)
        return 0;
    *arr = lg_realloc(*arr, (*n + node->seq.n) * es);
    for (size_t i = 0; i != node->seq.n; ++i) {
        const lg_node_t *item = node->seq.items[i];
        size_t mark = path_push_index(d, i);
        void *slot = *arr + *n * es;
        int ret;
        if (lg_node_is_null(item)) {
            ret = fail(d, item, "null is not allowed in a list");
        } else if (fd->type == PROTOBUF_C_TYPE_MESSAGE) {
            ProtobufCMessage *sub = message_new(fd->descriptor);
            *(ProtobufCMessage **)slot = sub;
            ++*n;
            ret = decode_message_into(d, sub, item);
        } else if ((ret = decode_scalar(d, fd, item, slot)) == 0) {
            ++*n;
        }
        path_pop(d, mark);
        if (ret < 0)
            return -1;
    }
    return 0;
}

static int map_keys_equal(const ProtobufCFieldDescriptor *kf, const ProtobufCMessage *a, const ProtobufCMessage *b)
{
    const void *ka = (const char *)a + kf->offset, *kb = (const char *)b + kf->offset;
    if (kf->type == PROTOBUF_C_TYPE_STRING)
        return strcmp(*(char *const *)ka, *(char *const *)kb) == 0;
    return memcmp(ka, kb, elem_size(kf->type)) == 0;
}

/* map<K,V>: a YAML map whose entries become K/V entry messages; an entry that
 * was already in the message (merging) is replaced by key, as protobuf does. */
static int decode_map_field(dec_t *d, ProtobufCMessage *m, const ProtobufCFieldDescriptor *fd, const lg_node_t *node)
{
    if (node->type != LG_NODE_MAP)
        return fail(d, node, "expected a map, got %s", show(node));
    const ProtobufCMessageDescriptor *ed = fd->descriptor;
    const ProtobufCFieldDescriptor *kf = ed->fields;
    const lg_pbfield_t *vf = lg__proto_fields(ed) + 1;
    size_t *n = &MEMBER(size_t, m, fd->quantifier_offset), old_n = *n;
    ProtobufCMessage ***arr = &MEMBER(ProtobufCMessage **, m, fd->offset);
    if (node->map.n == 0)
        return 0;
    *arr = lg_realloc(*arr, (*n + node->map.n) * sizeof(**arr));
    for (size_t i = 0; i != node->map.n; ++i) {
        const lg_node_pair_t *p = node->map.pairs + i;
        size_t mark = path_push_map_key(d, p->key->scalar.str);
        ProtobufCMessage *e = message_new(ed);
        (*arr)[(*n)++] = e;
        int ret = decode_scalar(d, kf, p->key, (char *)e + kf->offset);
        if (ret == 0 && (!lg_node_is_null(p->value) || vf->fd->type == PROTOBUF_C_TYPE_MESSAGE))
            ret = decode_field(d, e, vf, p->value);
        for (size_t j = 0; ret == 0 && j != old_n; ++j) {
            if (map_keys_equal(kf, (*arr)[j], e)) {
                protobuf_c_message_free_unpacked((*arr)[j], NULL);
                (*arr)[j] = e;
                --*n;
                break;
            }
        }
        path_pop(d, mark);
        if (ret < 0)
            return -1;
    }
    return 0;
}

static int decode_field(dec_t *d, ProtobufCMessage *m, const lg_pbfield_t *f, const lg_node_t *node)
{
    const ProtobufCFieldDescriptor *fd = f->fd;
    if (fd->label == PROTOBUF_C_LABEL_REPEATED)
        return f->is_map ? decode_map_field(d, m, fd, node) : decode_repeated(d, m, fd, node);
    void *slot = (char *)m + fd->offset;
    if (fd->type == PROTOBUF_C_TYPE_MESSAGE) {
        ProtobufCMessage *sub = is_oneof(fd) && !field_is_set_oneof(m, fd) ? NULL : *(ProtobufCMessage **)slot;
        if (sub != NULL && replaced_on_merge(fd->descriptor)) {
            field_clear(m, fd);
            sub = NULL;
        }
        if (sub == NULL) {
            sub = message_new(fd->descriptor);
            *(ProtobufCMessage **)slot = sub;
            field_mark_set(m, fd);
        }
        return decode_message_into(d, sub, node);
    }
    field_clear(m, fd);
    int ret = decode_scalar(d, fd, node, slot);
    if (ret == 0)
        field_mark_set(m, fd);
    return ret < 0 ? -1 : 0;
}

/* Unknown fields noted under LG_PBJSON_COLLECT_UNKNOWN_FIELDS, one per line. */
static __thread lg_strbuf_t collected_unknown;

static int unknown_field(dec_t *d, const ProtobufCMessage *m, const lg_node_t *key)
{
    if ((d->flags & LG_PBJSON_COLLECT_UNKNOWN_FIELDS) != 0 && (d->flags & LG_PBJSON_ALLOW_UNKNOWN_FIELDS) == 0) {
        char loc[512];
        location(key, loc, sizeof(loc));
        lg_strbuf_printf(&collected_unknown, "%s%s%s: unknown field \"%s\" in %s (%s)", collected_unknown.len ? "\n" : "",
                         d->path.base, d->path.len ? "." : "", key->scalar.str, m->descriptor->name, loc);
        return 0;
    }
    if ((d->flags & LG_PBJSON_ALLOW_UNKNOWN_FIELDS) == 0)
        return fail(d, key, "unknown field \"%s\" in %s", key->scalar.str, m->descriptor->name);
    char loc[512];
    location(key, loc, sizeof(loc));
    LG_WARN(config, "%s: ignoring unknown field \"%s\" in %s (%s)", d->path.base, key->scalar.str, m->descriptor->name, loc);
    return 0;
}

#define BIT_TEST(bits, i) ((bits)[(i) / 8] & (1u << ((i) % 8)))
#define BIT_SET(bits, i) ((bits)[(i) / 8] |= (uint8_t)(1u << ((i) % 8)))

/* The member of fd's oneof (if any) that this same map already set. */
static const ProtobufCFieldDescriptor *oneof_seen(const ProtobufCMessageDescriptor *desc, const ProtobufCFieldDescriptor *fd,
                                                  const uint8_t *seen)
{
    for (unsigned i = 0; i != desc->n_fields; ++i) {
        const ProtobufCFieldDescriptor *o = desc->fields + i;
        if (o != fd && is_oneof(o) && o->quantifier_offset == fd->quantifier_offset && BIT_TEST(seen, i))
            return o;
    }
    return NULL;
}

static int decode_pair(dec_t *d, ProtobufCMessage *m, const lg_node_pair_t *p, uint8_t *seen)
{
    const ProtobufCMessageDescriptor *desc = m->descriptor;
    const lg_pbfield_t *f = lg__proto_field(desc, p->key->scalar.str, p->key->scalar.len);
    if (f == NULL)
        return unknown_field(d, m, p->key);
    if (lg_node_is_null(p->value))
        return 0;
    const ProtobufCFieldDescriptor *fd = f->fd;
    unsigned idx = (unsigned)(fd - desc->fields);
    if (BIT_TEST(seen, idx)) {
        field_clear(m, fd); /* the same field twice in one map: the last one wins */
    } else if (is_oneof(fd)) {
        const ProtobufCFieldDescriptor *other = oneof_seen(desc, fd, seen);
        if (other != NULL)
            return fail(d, p->key, "\"%s\" and \"%s\" are in the same oneof: only one may be set",
                        lg__proto_fields(desc)[other - desc->fields].name, f->name);
        uint32_t cur = MEMBER(uint32_t, m, fd->quantifier_offset);
        if (cur != 0 && cur != fd->id)
            field_clear(m, protobuf_c_message_descriptor_get_field(desc, cur));
    }
    BIT_SET(seen, idx);
    return decode_field(d, m, f, p->value);
}

/* protobuf-c cannot pack a required string or message that is absent. */
static int check_required(dec_t *d, const ProtobufCMessage *m, const lg_node_t *node)
{
    const ProtobufCMessageDescriptor *desc = m->descriptor;
    for (unsigned i = 0; i != desc->n_fields; ++i) {
        const ProtobufCFieldDescriptor *fd = desc->fields + i;
        if (fd->label == PROTOBUF_C_LABEL_REQUIRED && (fd->type == PROTOBUF_C_TYPE_STRING || fd->type == PROTOBUF_C_TYPE_MESSAGE) &&
            MEMBER(void *, m, fd->offset) == NULL)
            return fail(d, node, "missing required field \"%s\" in %s", fd->name, desc->name);
    }
    return 0;
}

static int decode_map_into(dec_t *d, ProtobufCMessage *m, const lg_node_t *node, int skip_type_key)
{
    const ProtobufCMessageDescriptor *desc = m->descriptor;
    if (node->type != LG_NODE_MAP)
        return fail(d, node, "expected a map for %s, got %s", desc->name, show(node));
    uint8_t seen_buf[64], *seen = desc->n_fields <= sizeof(seen_buf) * 8 ? seen_buf : lg_malloc((desc->n_fields + 7) / 8);
    memset(seen, 0, (desc->n_fields + 7) / 8);
    int ret = 0;
    for (size_t i = 0; i != node->map.n && ret == 0; ++i) {
        const lg_node_pair_t *p = node->map.pairs + i;
        if (skip_type_key && strcmp(p->key->scalar.str, "@type") == 0)
            continue;
        size_t mark = path_push_key(d, p->key->scalar.str);
        ret = decode_pair(d, m, p, seen);
        path_pop(d, mark);
    }
    if (ret == 0)
        ret = check_required(d, m, node);
    if (seen != seen_buf)
        free(seen);
    return ret;
}

/* ---- API ---- */

int lg_pbjson_decode_into(ProtobufCMessage *m, const lg_node_t *node, int flags, lg_error_t *err)
{
    dec_t d = {.flags = flags, .err = err};
    lg_strbuf_reserve(&d.path, 128);
    d.path.base[0] = '\0';
    int ret = decode_message_into(&d, m, node);
    lg_strbuf_free(&d.path);
    return ret;
}

ProtobufCMessage *lg_pbjson_decode(const ProtobufCMessageDescriptor *desc, const lg_node_t *node, int flags, lg_error_t *err)
{
    ProtobufCMessage *m = message_new(desc);
    if (node != NULL && lg_pbjson_decode_into(m, node, flags, err) != 0) {
        protobuf_c_message_free_unpacked(m, NULL);
        return NULL;
    }
    return m;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* Parses YAML text and merges it into m; Envoy requires a map at the top. */
static int load_yaml_into(ProtobufCMessage *m, const char *text, size_t len, const char *name, int flags, lg_error_t *err)
{
    lg_node_t *root = lg_yaml_parse(text, len, name, err);
    if (root == NULL)
        return -1;
    int ret;
    if (root->type != LG_NODE_MAP)
        ret = lg_error(err, "%s: unable to convert YAML as JSON: the document is not a map", name);
    else
        ret = lg_pbjson_decode_into(m, root, flags, err);
    lg_node_free(root);
    return ret;
}

static int hex4(const char *p, unsigned *out)
{
    *out = 0;
    for (int i = 0; i != 4; ++i) {
        char c = p[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')))
            return 0;
        *out = *out << 4 | (unsigned)(c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
    }
    return 1;
}

/* JSON escapes characters beyond the BMP as UTF-16 surrogate pairs
 * ("\ud83d\ude00"), which YAML does not accept; rewrites each pair in place
 * as YAML's "\U0001f600". Only for JSON, where every string is double-quoted. */
static size_t json_fix_surrogates(char *buf, size_t len)
{
    size_t r = 0, w = 0;
    int in_string = 0;
    while (r < len) {
        char c = buf[r];
        unsigned hi, lo;
        if (in_string && c == '\\' && r + 12 <= len && buf[r + 1] == 'u' && hex4(buf + r + 2, &hi) && hi >= 0xd800 && hi < 0xdc00 &&
            buf[r + 6] == '\\' && buf[r + 7] == 'u' && hex4(buf + r + 8, &lo) && lo >= 0xdc00 && lo < 0xe000) {
            char tmp[11];
            snprintf(tmp, sizeof(tmp), "\\U%08x", 0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00));
            memcpy(buf + w, tmp, 10);
            w += 10;
            r += 12;
            continue;
        }
        if (in_string && c == '\\' && r + 1 < len) {
            buf[w++] = buf[r++];
        } else if (c == '"') {
            in_string = !in_string;
        }
        buf[w++] = buf[r++];
    }
    return w;
}

static ProtobufCMessage *load_path(const ProtobufCMessageDescriptor *desc, const char *path, int flags, lg_error_t *err)
{
    if (ends_with(path, ".pb_text"))
        return lg_error(err, "%s: text proto files (.pb_text) are not supported; use YAML, JSON or binary (.pb)", path), NULL;
    size_t len;
    char *buf = lg_read_file(path, &len, err);
    if (buf == NULL)
        return NULL;
    ProtobufCMessage *m;
    if (ends_with(path, ".pb")) {
        if ((m = protobuf_c_message_unpack(desc, NULL, len, (const uint8_t *)buf)) == NULL)
            lg_error(err, "%s: unable to parse as binary %s", path, desc->name);
    } else {
        if (!ends_with(path, ".yaml") && !ends_with(path, ".yml")) {
            flags |= LG_PBJSON_JSON_INPUT;
            len = json_fix_surrogates(buf, len);
        }
        m = message_new(desc);
        if (load_yaml_into(m, buf, len, path, flags, err) != 0) {
            protobuf_c_message_free_unpacked(m, NULL);
            m = NULL;
        }
    }
    free(buf);
    return m;
}

ProtobufCMessage *lg_pbjson_load_file(const ProtobufCMessageDescriptor *desc, const char *path, const char *override_yaml,
                                      int flags, lg_error_t *err)
{
    if (path == NULL && override_yaml == NULL)
        return lg_error(err, "At least one of --config-path or --config-yaml should be non-empty"), NULL;
    lg_strbuf_free(&collected_unknown);
    ProtobufCMessage *m = path != NULL ? load_path(desc, path, flags, err) : message_new(desc);
    if (m != NULL && override_yaml != NULL &&
        load_yaml_into(m, override_yaml, strlen(override_yaml), "--config-yaml", flags, err) != 0) {
        protobuf_c_message_free_unpacked(m, NULL);
        m = NULL;
    }
    if (m != NULL && collected_unknown.len != 0) {
        lg_error(err, "%s", collected_unknown.base);
        protobuf_c_message_free_unpacked(m, NULL);
        m = NULL;
    }
    lg_strbuf_free(&collected_unknown);
    return m;
}

ProtobufCMessage *lg_any_unpack(const Google__Protobuf__Any *any, const ProtobufCMessageDescriptor *want, lg_error_t *err)
{
    const char *url = any->type_url != NULL ? any->type_url : "", *name = strrchr(url, '/');
    name = name != NULL ? name + 1 : url;
    if (strcmp(name, want->name) != 0)
        return lg_error(err, "expected a %s, got type URL \"%s\"", want->name, url), NULL;
    ProtobufCMessage *m = protobuf_c_message_unpack(want, NULL, any->value.len, any->value.data);
    if (m == NULL)
        lg_error(err, "unable to unpack %s from its Any", want->name);
    return m;
}

/* ---- compacted repeated fields ---- */

static const ProtobufCFieldDescriptor *repeated_message_field(const ProtobufCMessage *msg, const char *field)
{
    const ProtobufCFieldDescriptor *fd = protobuf_c_message_descriptor_get_field_by_name(msg->descriptor, field);
    if (fd == NULL || fd->label != PROTOBUF_C_LABEL_REPEATED || fd->type != PROTOBUF_C_TYPE_MESSAGE) {
        fprintf(stderr, "legate: %s.%s is not a repeated message field\n", msg->descriptor->name, field);
        abort();
    }
    return fd;
}

void lg_pb_compact_repeated(ProtobufCMessage *msg, const char *field)
{
    const ProtobufCFieldDescriptor *fd = repeated_message_field(msg, field);
    size_t *n = &MEMBER(size_t, msg, fd->quantifier_offset);
    ProtobufCMessage **items = MEMBER(ProtobufCMessage **, msg, fd->offset);
    if (*n == 0)
        return;
    msg->unknown_fields = lg_realloc(msg->unknown_fields, (msg->n_unknown_fields + *n) * sizeof(*msg->unknown_fields));
    for (size_t i = 0; i != *n; ++i) {
        /* protobuf-c keeps (and packs) an unknown field as the bytes after its tag:
         * for a length-delimited one, the varint length and the bytes */
        size_t len = protobuf_c_message_get_packed_size(items[i]), prefix = 0;
        uint8_t *data = lg_malloc(10 + len);
        for (size_t v = len; v >= 0x80; v >>= 7)
            data[prefix++] = (uint8_t)(v | 0x80);
        data[prefix] = (uint8_t)(len >> (7 * prefix));
        ++prefix;
        protobuf_c_message_pack(items[i], data + prefix);
        msg->unknown_fields[msg->n_unknown_fields++] =
            (ProtobufCMessageUnknownField){fd->id, PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED, prefix + len, data};
    }
    /* freed only once all are packed: the bytes do not land in the holes of the
     * messages, whose memory is then contiguous and can go back to the system */
    for (size_t i = 0; i != *n; ++i)
        protobuf_c_message_free_unpacked(items[i], NULL);
    free(items);
    MEMBER(ProtobufCMessage **, msg, fd->offset) = NULL;
    *n = 0;
}

int lg_pb_compacted_next(const ProtobufCMessage *msg, const char *field, size_t *pos, ProtobufCBinaryData *out)
{
    const ProtobufCFieldDescriptor *fd = repeated_message_field(msg, field);
    for (; *pos < msg->n_unknown_fields; ++*pos) {
        const ProtobufCMessageUnknownField *u = msg->unknown_fields + *pos;
        if (u->tag != fd->id || u->wire_type != PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED)
            continue;
        size_t prefix = 0;
        while (prefix < u->len && (u->data[prefix] & 0x80) != 0)
            ++prefix;
        ++prefix; /* the varint length written by lg_pb_compact_repeated */
        *out = (ProtobufCBinaryData){u->len - prefix, u->data + prefix};
        ++*pos;
        return 1;
    }
    return 0;
}
