/*
 * The bootstrap's overload_manager: the global downstream connection limit,
 * the fixed_heap and injected_resource monitors and the actions they trigger
 * (src/core/overload.c).
 */
#ifndef LEGATE_OVERLOAD_H
#define LEGATE_OVERLOAD_H

#include <stdint.h>
#include "legate/common.h"
#include "legate/worker-t.h"
#include "envoy/config/overload/v3/overload.pb-c.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LG_OVERLOAD_GLOBAL_CX "envoy.resource_monitors.global_downstream_max_connections"

/* Reads overload_manager (NULL: none): the resource monitors
 * global_downstream_max_connections, fixed_heap and injected_resource, and
 * the actions of lg_overload_action_t (worker-t.h) plus
 * envoy.overload_actions.shrink_heap, with threshold and scaled triggers.
 * Other monitors and actions are logged as not supported and ignored. Creates
 * the overload.* stats. 0, or -1 with err naming the field. */
int lg_overload_configure(const Envoy__Config__Overload__V3__OverloadManager *om, lg_error_t *err);
/* Releases what lg_overload_configure made (stats blocks). */
void lg_overload_shutdown(void);
/* The configured limit, or UINT64_MAX when the monitor is absent (then the
 * runtime key overload.global_downstream_max_connections applies). */
uint64_t lg_overload_max_connections(void);
/* Control thread, from its loop: at each refresh_interval reads the monitors,
 * updates the actions and their stats. Returns 1 when the workers' action
 * values changed (then `values` holds them), else 0. */
int lg_overload_refresh(uint64_t now_ms, double values[LG_OVERLOAD__WORKER_ACTIONS]);
/* A decision for a worker's action value: 1 with probability `value`. */
int lg_overload_decide(double value);

#ifdef __cplusplus
}
#endif

#endif
