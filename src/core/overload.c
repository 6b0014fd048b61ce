/*
 * The bootstrap's overload_manager.
 *
 * What Legate takes from it is Envoy's proactive resource
 * envoy.resource_monitors.global_downstream_max_connections: a
 * DownstreamConnectionsConfig whose max_active_downstream_connections caps the
 * connections open on every listener but the admin's. Istio and Envoy Gateway
 * put it in their bootstraps. Envoy prefers it to the runtime key
 * overload.global_downstream_max_connections when both are set; so does the
 * listener here (over_limit in src/listener/listener.c). A connection over the
 * limit is closed on accept and counted in the listener's
 * downstream_global_cx_overflow, as in Envoy.
 *
 * The reactive monitors (fixed_heap, injected_resource, cpu_utilization,
 * cgroup_memory), the actions and the load shed points are not implemented:
 * each is named in a warning at start-up and ignored, so that a bootstrap
 * written for Envoy still starts.
 */
#include <inttypes.h>
#include "legate/overload.h"
#include "legate/pbjson.h"
#include "legate/runtime.h"
#include "envoy/extensions/resource_monitors/downstream_connections/v3/downstream_connections.pb-c.h"

static uint64_t max_connections = UINT64_MAX; /* set before the workers start, read on accept */

static int is_connections_config(const Google__Protobuf__Any *any)
{
    const char *want =
        envoy__extensions__resource_monitors__downstream_connections__v3__downstream_connections_config__descriptor.name;
    return any != NULL && any->type_url != NULL && strcmp(lg_type_url_name(any->type_url), want) == 0;
}

static int connections_monitor(const Envoy__Config__Overload__V3__ResourceMonitor *m, size_t i, uint64_t *max, lg_error_t *err)
{
    if (*max != UINT64_MAX)
        return lg_error(err, "overload_manager.resource_monitors[%zu]: Duplicate resource monitor %s", i, m->name);
    ProtobufCMessage *msg = lg_any_unpack(
        m->typed_config,
        &envoy__extensions__resource_monitors__downstream_connections__v3__downstream_connections_config__descriptor, err);
    if (msg == NULL)
        return lg_error_prefix(err, "overload_manager.resource_monitors[%zu].typed_config", i);
    int64_t v = ((Envoy__Extensions__ResourceMonitors__DownstreamConnections__V3__DownstreamConnectionsConfig *)msg)
                    ->max_active_downstream_connections;
    protobuf_c_message_free_unpacked(msg, NULL);
    if (v <= 0)
        return lg_error(
            err,
            "overload_manager.resource_monitors[%zu].typed_config.max_active_downstream_connections: value must be greater than 0",
            i);
    *max = (uint64_t)v;
    return 0;
}

int lg_overload_configure(const Envoy__Config__Overload__V3__OverloadManager *om, lg_error_t *err)
{
    uint64_t max = UINT64_MAX;
    for (size_t i = 0; om != NULL && i != om->n_resource_monitors; ++i) {
        const Envoy__Config__Overload__V3__ResourceMonitor *m = om->resource_monitors[i];
        if (m->name == NULL || m->name[0] == '\0')
            return lg_error(err, "overload_manager.resource_monitors[%zu].name: value length must be at least 1 characters", i);
        int ours = strcmp(m->name, LG_OVERLOAD_GLOBAL_CX) == 0;
        if (ours || is_connections_config(m->typed_config)) {
            if (!ours)
                return lg_error(
                    err, "overload_manager.resource_monitors[%zu]: a DownstreamConnectionsConfig monitor must be named %s, not %s",
                    i, LG_OVERLOAD_GLOBAL_CX, m->name);
            if (connections_monitor(m, i, &max, err) != 0)
                return -1;
            continue;
        }
        LG_WARN(main, "overload_manager.resource_monitors[%zu]: %s is not supported: ignored", i, m->name);
    }
    for (size_t i = 0; om != NULL && i != om->n_actions; ++i)
        LG_WARN(main, "overload_manager.actions[%zu]: %s is not supported: ignored", i, om->actions[i]->name);
    for (size_t i = 0; om != NULL && i != om->n_loadshed_points; ++i)
        LG_WARN(main, "overload_manager.loadshed_points[%zu]: %s is not supported: ignored", i, om->loadshed_points[i]->name);
    max_connections = max;
    if (max == UINT64_MAX)
        return 0;
    LG_INFO(main, "at most %" PRIu64 " downstream connections (%s)", max, LG_OVERLOAD_GLOBAL_CX);
    lg_runtime_t *rt = lg_runtime_loader_snapshot();
    uint64_t from_runtime = lg_runtime_get_integer(rt, "overload.global_downstream_max_connections", UINT64_MAX);
    lg_runtime_release(rt);
    if (from_runtime != UINT64_MAX)
        LG_WARN(main,
                "Global downstream connections limits is configured via runtime key overload.global_downstream_max_connections "
                "and in %s. Using overload manager config.",
                LG_OVERLOAD_GLOBAL_CX);
    return 0;
}

uint64_t lg_overload_max_connections(void)
{
    return max_connections;
}
