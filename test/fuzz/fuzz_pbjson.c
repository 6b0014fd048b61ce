/*
 * Fuzz target for the YAML reader and the proto3 JSON mapping: the input is a
 * bootstrap document. Whatever decodes must print, and what it prints must
 * decode again to the same text (the /config_dump round trip).
 */
#include "legate/pbjson.h"
#include "envoy/config/bootstrap/v3/bootstrap.pb-c.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    lg_log_levels[LG_LOGC_config] = LG_LOG_OFF; /* unknown-field warnings */
    return 0;
}

static void round_trip(const ProtobufCMessage *m)
{
    lg_strbuf_t out = {NULL}, again = {NULL};
    lg_error_t err;
    lg_pbjson_encode(&out, m, 1);
    lg_node_t *n = lg_yaml_parse(out.base, out.len, "dump.json", &err);
    if (n == NULL)
        __builtin_trap();
    ProtobufCMessage *m2 = lg_pbjson_decode(m->descriptor, n, LG_PBJSON_JSON_INPUT, &err);
    if (m2 == NULL)
        __builtin_trap();
    lg_pbjson_encode(&again, m2, 1);
    if (strcmp(out.base, again.base) != 0)
        __builtin_trap();
    protobuf_c_message_free_unpacked(m2, NULL);
    lg_node_free(n);
    lg_strbuf_free(&out);
    lg_strbuf_free(&again);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lg_error_t err;
    lg_node_t *n = lg_yaml_parse((const char *)data, size, "fuzz.yaml", &err);
    if (n == NULL)
        return 0;
    int flags = size != 0 && data[0] == '#' ? LG_PBJSON_ALLOW_UNKNOWN_FIELDS : 0;
    ProtobufCMessage *m = lg_pbjson_decode(&envoy__config__bootstrap__v3__bootstrap__descriptor, n, flags, &err);
    if (m != NULL) {
        round_trip(m);
        protobuf_c_message_free_unpacked(m, NULL);
    }
    /* merging a document over itself goes through the copy-on-write paths */
    ++n->refcnt;
    n = lg_node_merge(n, n);
    lg_node_free(n);
    return 0;
}
