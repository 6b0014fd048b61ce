#ifndef LEGATE_CONFIG_DUMP_H
#define LEGATE_CONFIG_DUMP_H

#include <protobuf-c/protobuf-c.h>
#include "legate/common.h"

/* What /config_dump reads: the bootstrap as loaded (static resources) and
 * when it was applied. */
typedef struct st_lg_config_dump_src_t {
    const ProtobufCMessage *bootstrap;
    uint64_t last_updated_wall_us;
} lg_config_dump_src_t;

/* Appends Envoy's ConfigDump JSON (bootstrap, clusters, listeners, routes). */
void lg_config_dump(lg_strbuf_t *out, const lg_config_dump_src_t *src);

#endif
