/*
 * The bootstrap's overload_manager: the global downstream connection limit.
 */
#ifndef LEGATE_OVERLOAD_H
#define LEGATE_OVERLOAD_H

#include <stdint.h>
#include "legate/common.h"
#include "envoy/config/overload/v3/overload.pb-c.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LG_OVERLOAD_GLOBAL_CX "envoy.resource_monitors.global_downstream_max_connections"

/* Reads overload_manager (NULL: none). Its resource monitor
 * envoy.resource_monitors.global_downstream_max_connections
 * (DownstreamConnectionsConfig) sets the limit; the other monitors and the
 * actions are logged as not supported and ignored. 0, or -1 with err naming
 * the field. */
int lg_overload_configure(const Envoy__Config__Overload__V3__OverloadManager *om, lg_error_t *err);
/* The configured limit, or UINT64_MAX when the monitor is absent (then the
 * runtime key overload.global_downstream_max_connections applies). */
uint64_t lg_overload_max_connections(void);

#ifdef __cplusplus
}
#endif

#endif
