/* The generated Envoy API headers the config compilers use. */
#ifndef LEGATE_PROTOBUF_H
#define LEGATE_PROTOBUF_H

#include <protobuf-c/protobuf-c.h>
#include "envoy/config/bootstrap/v3/bootstrap.pb-c.h"
#include "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.pb-c.h"
#include "envoy/extensions/filters/http/router/v3/router.pb-c.h"
#include "envoy/extensions/upstreams/http/v3/http_protocol_options.pb-c.h"
#include "google/protobuf/duration.pb-c.h"
#include "google/protobuf/wrappers.pb-c.h"

/* Duration in milliseconds (rounded down, negative clamped to 0); `def` when absent. */
static inline uint64_t lg_duration_ms(const Google__Protobuf__Duration *d, uint64_t def)
{
    if (d == NULL)
        return def;
    if (d->seconds < 0)
        return 0;
    return (uint64_t)d->seconds * 1000 + (uint64_t)(d->nanos > 0 ? d->nanos : 0) / 1000000;
}
#define LG_WRAPPED(w, def) ((w) != NULL ? (w)->value : (def))

#endif
