/*
 * Runtime: Envoy's layered runtime (bootstrap layered_runtime).
 *
 * The process has one loader: the layer specs of the bootstrap and the
 * current content of every layer. Each change (POST /runtime_modify writes
 * the admin layer, an RTDS update replaces an RTDS layer) builds a new
 * immutable lg_runtime_t; the control thread puts the newest one into every
 * snapshot it publishes, so workers read it without locks through their
 * snapshot (lg_runtime_current). The loader itself is guarded by a mutex:
 * the admin thread and the control thread both change it.
 */
#ifndef LEGATE_RUNTIME_H
#define LEGATE_RUNTIME_H

#include "legate/common.h"
#include "legate/runtime-t.h"
#include "envoy/config/bootstrap/v3/bootstrap.pb-c.h"

/* ---- snapshots (any thread) ---- */

lg_runtime_t *lg_runtime_ref(lg_runtime_t *rt);
void lg_runtime_release(lg_runtime_t *rt);
/* The value of `key`, or NULL (also when rt is NULL). */
const lg_runtime_value_t *lg_runtime_get(const lg_runtime_t *rt, const char *key);
/* Envoy's Snapshot::featureEnabled(key, FractionalPercent default, random):
 * the key's fractional percent, or its integer as a percentage (denominator
 * 100), else the default; true when random % denominator < numerator. */
int lg_runtime_feature_enabled(const lg_runtime_t *rt, const char *key, uint32_t def_numerator, uint32_t def_denominator,
                               uint64_t random);
/* Envoy's Snapshot::getInteger. */
uint64_t lg_runtime_get_integer(const lg_runtime_t *rt, const char *key, uint64_t def);
/* The runtime of the calling worker's newest snapshot (no reference: valid
 * until the worker returns to its loop), or the one set by
 * lg_runtime_set_thread_override (tests), or NULL (defaults apply). */
const lg_runtime_t *lg_runtime_current(void);
void lg_runtime_set_thread_override(const lg_runtime_t *rt);

/* Appends Envoy's GET /runtime JSON: {"layers":[names],"entries":{key:
 * {"final_value":..,"layer_values":[..]}}} (keys sorted). */
void lg_runtime_dump_json(const lg_runtime_t *rt, lg_strbuf_t *out);

/* ---- the loader ---- */

/* Compiles `lr` (NULL: Envoy's null runtime, no layers) and loads the first
 * snapshot. Disk layers are read now and again by lg_runtime_poll (a missing
 * directory is an empty layer, counted in runtime.override_dir_not_exists);
 * RTDS layers start empty. err
 * names the field under layered_runtime. Control thread, after
 * lg_stats_init. service_cluster feeds disk_layer.append_service_cluster. */
int lg_runtime_init(const Envoy__Config__Bootstrap__V3__LayeredRuntime *lr, const char *service_cluster, lg_error_t *err);
/* Control thread, periodically: when a disk layer's symlink_root was swapped
 * (replaced or re-pointed: Envoy watches it for a move), reads every disk
 * layer again and loads a new snapshot. Editing files in place below the
 * link is not a change, as in Envoy. */
void lg_runtime_poll(void);
/* Frees the loader (the snapshots it handed out stay valid until released). */
void lg_runtime_shutdown(void);
/* The loader's current snapshot with a reference, or NULL before init. */
lg_runtime_t *lg_runtime_loader_snapshot(void);
/* Changes whenever the loader loads a new snapshot (0 before init). */
uint64_t lg_runtime_loader_generation(void);

/* Replaces the content of every RTDS layer named `resource` with `layer` (a
 * Runtime resource's google.protobuf.Struct; NULL: the resource was removed,
 * the layers become empty) and loads a new snapshot. An invalid value
 * changes nothing: -1 with err naming the key (runtime.load_error). */
int lg_runtime_apply_rtds(const char *resource, const ProtobufCMessage *layer, lg_error_t *err);
/* Validates a Runtime layer Struct without applying it. */
int lg_runtime_validate_layer(const ProtobufCMessage *layer, lg_error_t *err);
/* Envoy's mergeValues: sets admin layer keys (an empty value removes the key).
 * -1 with "No admin layer specified" when there is none. */
int lg_runtime_merge_admin(const char *const *keys, const char *const *values, size_t n, lg_error_t *err);

/* Registers GET /runtime and POST /runtime_modify on the admin server. */
void lg_runtime_register_admin(void);

#endif
