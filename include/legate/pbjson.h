/*
 * The proto3 JSON mapping over protobuf-c descriptors: YAML/JSON documents
 * (bootstrap files, --config-yaml, xDS resources written as YAML) become
 * protobuf-c messages laid out exactly as protobuf_c_message_unpack() would
 * build them, and messages print back as JSON the way Envoy's /config_dump
 * prints them.
 *
 * Everything here runs on the control thread; the descriptor registry is
 * built once (thread-safe) and is read-only afterwards.
 */
#ifndef LEGATE_PBJSON_H
#define LEGATE_PBJSON_H

#include <protobuf-c/protobuf-c.h>
#include "legate/common.h"
#include "google/protobuf/any.pb-c.h"
#include "legate/pbjson-t.h"

/* ---- document tree ---- */

/* Upper bounds on the nodes that aliases may add to a document (alias bombs; plain
 * nodes are bounded by the input size) and on its nesting. */
#define LG_NODE_MAX_WEIGHT (1u << 22)
#define LG_NODE_MAX_DEPTH 100

/* Parses the first document of a YAML 1.1 stream (JSON is YAML). An empty
 * document yields an empty plain scalar (null). `filename` (may be NULL) is
 * only used in messages. Returns NULL with err set ("envoy.yaml:3: ..."). */
lg_node_t *lg_yaml_parse(const char *buf, size_t len, const char *filename, lg_error_t *err);
/* Releases a reference (NULL is fine). */
void lg_node_free(lg_node_t *node);
/* Merges `over` into `base` with protobuf MergeFrom semantics at the document
 * level: maps merge key by key recursively, sequences concatenate, anything
 * else is replaced by `over`; a null `over` leaves `base` alone. Takes
 * ownership of both and returns the merged tree (either may be NULL). */
lg_node_t *lg_node_merge(lg_node_t *base, lg_node_t *over);
/* True for a plain `~`, `null`, `Null`, `NULL` or empty scalar. */
int lg_node_is_null(const lg_node_t *node);
/* Returns the value under `key` in a map node, or NULL. */
const lg_node_t *lg_node_get(const lg_node_t *map, const char *key);

/* ---- descriptor registry (build/gen/registry.c plus anything reachable from it) ---- */

/* Finds a message descriptor by full proto name ("envoy.config.cluster.v3.Cluster"), or NULL. */
const ProtobufCMessageDescriptor *lg_proto_find(const char *full_name);
/* Same, for a type URL: everything up to the last '/' is ignored. */
const ProtobufCMessageDescriptor *lg_proto_find_by_type_url(const char *url, size_t len);
/* The message name in a type URL: what follows its last '/' (all of it when it has none). */
static inline const char *lg_type_url_name(const char *url)
{
    const char *slash = strrchr(url, '/');
    return slash != NULL ? slash + 1 : url;
}

/* Per-message field info, parallel to desc->fields. Never NULL. */
const lg_pbfield_t *lg__proto_fields(const ProtobufCMessageDescriptor *desc);
/* Looks a field up by proto name or json name; NULL if none. */
const lg_pbfield_t *lg__proto_field(const ProtobufCMessageDescriptor *desc, const char *name, size_t len);

/* ---- decoding ---- */

/* Unknown fields (and unknown enum names) are skipped with a warning instead
 * of failing, as Envoy's --allow-unknown-static-fields does. */
#define LG_PBJSON_ALLOW_UNKNOWN_FIELDS 0x1
/* The document is JSON, not YAML: bare tokens inside a google.protobuf.Value
 * (Struct) are typed as protobuf's JSON parser types them (any number is a
 * number) instead of as Envoy's YAML conversion does (integers beyond int32
 * become strings; yes/no/on/off are booleans). lg_pbjson_load_file() sets it
 * for files that are not .yaml/.yml, as Envoy parses those as JSON. */
#define LG_PBJSON_JSON_INPUT 0x2
/* lg_pbjson_load_file only: every unknown field is reported (one per line in
 * err) instead of only the first, for --mode validate. */
#define LG_PBJSON_COLLECT_UNKNOWN_FIELDS 0x4

/* Decodes a document node into a new message of type `desc`. A null node
 * yields a message with every field at its default. The result is freed with
 * protobuf_c_message_free_unpacked(msg, NULL). On error returns NULL and err
 * names the field path and the line:
 *   static_resources.clusters[0].connect_timeout: invalid duration "5x" (envoy.yaml:12) */
ProtobufCMessage *lg_pbjson_decode(const ProtobufCMessageDescriptor *desc, const lg_node_t *node, int flags, lg_error_t *err);
/* Decodes `node` into an existing message with the JSON parser's merge
 * semantics (singular fields replaced, messages merged, repeated fields
 * appended, map entries replaced by key, a oneof member replacing another).
 * On error the message stays valid (freeable) but partly updated. */
int lg_pbjson_decode_into(ProtobufCMessage *msg, const lg_node_t *node, int flags, lg_error_t *err);

/* Loads a bootstrap the way Envoy does for -c / --config-yaml: `path` is read
 * as YAML (.yaml, .yml), binary proto (.pb) or JSON (anything else); then
 * `override_yaml` is decoded into the result with lg_pbjson_decode_into(),
 * which gives protobuf MergeFrom semantics (repeated fields append, a oneof
 * member replaces another). Either may be NULL, not both. Text protos
 * (.pb_text) are rejected. */
ProtobufCMessage *lg_pbjson_load_file(const ProtobufCMessageDescriptor *desc, const char *path, const char *override_yaml,
                                      int flags, lg_error_t *err);

/* Unpacks an Any holding a `want`; fails when the type URL names another
 * type or the bytes do not parse. Free with protobuf_c_message_free_unpacked(). */
ProtobufCMessage *lg_any_unpack(const Google__Protobuf__Any *any, const ProtobufCMessageDescriptor *want, lg_error_t *err);

/* ---- compacted repeated fields ---- */

/* Replaces the elements of a repeated message field of `msg` by their wire bytes,
 * kept as unknown fields of `msg` under the field's number: a retained config
 * message (the bootstrap's static_resources.clusters: about 1.2 KB unpacked, 80
 * bytes packed per cluster) costs its serialized size. protobuf-c packs unknown
 * fields after the known ones, so `msg` still packs to the same elements (an
 * unpacked copy has them back in the field) and protobuf_c_message_free_unpacked
 * frees them. The field reads empty afterwards: holders read the elements with
 * lg_pb_compacted_next(). Control thread, before other threads read `msg`. */
void lg_pb_compact_repeated(ProtobufCMessage *msg, const char *field);
/* Iterates over the compacted elements of `field` in order: sets *out to the
 * wire bytes of the next one from *pos (0 to start) and returns 1, or returns 0
 * at the end. */
int lg_pb_compacted_next(const ProtobufCMessage *msg, const char *field, size_t *pos, ProtobufCBinaryData *out);

/* ---- encoding ---- */

/* Field names as json_name (lowerCamelCase) instead of the proto names Envoy prints. */
#define LG_PBJSON_JSON_NAMES 0x1

/* Appends `m` as proto3 JSON the way Envoy's admin prints it: proto field
 * names, enums by name, 64-bit integers as strings, Duration as "5s", Any as
 * {"@type": ..., fields} (an Any of a type outside the registry keeps its
 * bytes as "value" in base64), fields at their default omitted. indent == 0
 * prints compactly; otherwise nested levels are indented by `indent` spaces
 * (Envoy's /config_dump uses 1) and a newline ends the text. */
void lg_pbjson_encode(lg_strbuf_t *out, const ProtobufCMessage *m, int indent);
void lg_pbjson_encode_ex(lg_strbuf_t *out, const ProtobufCMessage *m, int indent, int flags);

#endif
