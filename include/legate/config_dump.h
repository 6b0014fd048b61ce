#ifndef LEGATE_CONFIG_DUMP_H
#define LEGATE_CONFIG_DUMP_H

#include <protobuf-c/protobuf-c.h>
#include "legate/common.h"
#include "legate/xds-t.h"

/* What /config_dump reads: the bootstrap as loaded (static resources), when
 * it was applied, and what xDS delivered (NULL without xDS). */
typedef struct st_lg_config_dump_src_t {
    const ProtobufCMessage *bootstrap;
    uint64_t last_updated_wall_us;
    const lg_xds_dump_t *xds;
    int include_eds;      /* ?include_eds: the EndpointsConfigDump too */
    const char *resource; /* ?resource=: only the elements of that repeated field (dynamic_active_clusters ...) */
    const char *mask;     /* ?mask=: comma-separated field paths each dumped message is trimmed to */
} lg_config_dump_src_t;

/* Appends Envoy's ConfigDump JSON (bootstrap, clusters, [endpoints,] listeners, routes). */
void lg_config_dump(lg_strbuf_t *out, const lg_config_dump_src_t *src);

#endif
