/*
 * The bootstrap's overload_manager.
 *
 * Proactive resource: envoy.resource_monitors.global_downstream_max_connections,
 * a DownstreamConnectionsConfig whose max_active_downstream_connections caps
 * the connections open on every listener but the admin's. Istio and Envoy
 * Gateway put it in their bootstraps. Envoy prefers it to the runtime key
 * overload.global_downstream_max_connections when both are set; so does the
 * listener here (over_limit in src/listener/listener.c). A connection over the
 * limit is closed on accept and counted in the listener's
 * downstream_global_cx_overflow, as in Envoy.
 *
 * Reactive monitor: envoy.resource_monitors.fixed_heap (FixedHeapConfig), the
 * pressure of the heap in use against max_heap_size_bytes. Envoy reads
 * tcmalloc's mapped heap; glibc's equivalent here is mallinfo2's bytes in use
 * (uordblks + hblkhd), read every refresh_interval (default 1 s) on the
 * control thread. Each action's value is the largest of its triggers'
 * (threshold: 0 or 1; scaled: 0 below scaling_threshold, 1 from
 * saturation_threshold, linear between). Actions:
 *  - stop_accepting_requests: a new request gets 503 "envoy overloaded" with
 *    probability = the value (http.<prefix>.downstream_rq_overload_close);
 *  - disable_http_keepalive: a response ends its connection (HTTP/1.1
 *    connection: close, HTTP/2 GOAWAY) with that probability
 *    (downstream_cx_overload_disable_keepalive);
 *  - reject_incoming_connections: an accepted connection is closed with that
 *    probability (listener.<addr>.downstream_cx_overload_reject);
 *  - stop_accepting_connections: while saturated, the workers stop accepting
 *    (new connections wait in the listen backlog);
 *  - shrink_heap: while saturated, malloc_trim every 10 s.
 * The workers get the values as a message when they change and decide with
 * their own random numbers: nothing shared on the request path.
 * Stats, as Envoy's: overload.<monitor>.pressure (percent), .failed_updates,
 * .skipped_updates; overload.<action>.active (1 saturated, else 0),
 * .scale_percent.
 *
 * The other monitors (injected_resource, cpu_utilization, cgroup_memory),
 * the other actions (reduce_timeouts, reset_high_memory_stream, ...) and
 * the load shed points are each named in a warning at start-up and ignored,
 * so that a bootstrap written for Envoy still starts.
 */
#include <inttypes.h>
#include <malloc.h>
#include "legate/overload.h"
#include "legate/pbjson.h"
#include "legate/protobuf.h"
#include "legate/runtime.h"
#include "legate/server.h"
#include "legate/stats.h"
#include "envoy/extensions/resource_monitors/downstream_connections/v3/downstream_connections.pb-c.h"
#include "envoy/extensions/resource_monitors/fixed_heap/v3/fixed_heap.pb-c.h"

#define FIXED_HEAP "envoy.resource_monitors.fixed_heap"
#define SHRINK_HEAP "envoy.overload_actions.shrink_heap"
#define SHRINK_HEAP_INTERVAL_MS 10000

#define MONITOR_STATS(X)       \
    X(GAUGE, pressure)         \
    X(COUNTER, failed_updates) \
    X(COUNTER, skipped_updates)
#define ACTION_STATS(X) \
    X(GAUGE, active)    \
    X(GAUGE, scale_percent)
#define MONITOR_ENUM(type, name) MONITOR_##name,
#define ACTION_ENUM(type, name) ACTION_##name,
enum { MONITOR_STATS(MONITOR_ENUM) };
enum { ACTION_STATS(ACTION_ENUM) };
#undef MONITOR_ENUM
#undef ACTION_ENUM
static const lg_stat_def_t monitor_defs[] = {MONITOR_STATS(LG_STAT_DEF)};
static const lg_stat_def_t action_defs[] = {ACTION_STATS(LG_STAT_DEF)};

static const char *const worker_action_names[LG_OVERLOAD__WORKER_ACTIONS] = {
    "envoy.overload_actions.stop_accepting_requests", "envoy.overload_actions.disable_http_keepalive",
    "envoy.overload_actions.reject_incoming_connections", "envoy.overload_actions.stop_accepting_connections"};

typedef struct st_trigger_t {
    int scaled;
    double threshold; /* threshold, or scaling_threshold */
    double saturation;
} trigger_t;

typedef struct st_action_t {
    int slot;          /* an lg_overload_action_t, or -1 for shrink_heap */
    trigger_t trigger; /* of the fixed_heap monitor: the only reactive one */
    double value;
    lg_stats_block_t *stats;
} action_t;

static struct {
    uint64_t max_connections; /* set before the workers start, read on accept */
    uint64_t max_heap;        /* 0: no fixed_heap monitor */
    lg_stats_block_t *heap_stats;
    action_t *actions;
    size_t n_actions;
    uint64_t refresh_ms, next_refresh_ms, next_shrink_ms;
    double sent[LG_OVERLOAD__WORKER_ACTIONS];
} ov = {.max_connections = UINT64_MAX};

static int is_config(const Google__Protobuf__Any *any, const ProtobufCMessageDescriptor *d)
{
    return any != NULL && any->type_url != NULL && strcmp(lg_type_url_name(any->type_url), d->name) == 0;
}

/* The monitor's typed_config as `d`, or NULL with err set. */
static ProtobufCMessage *monitor_config(const Envoy__Config__Overload__V3__ResourceMonitor *m, size_t i,
                                        const ProtobufCMessageDescriptor *d, lg_error_t *err)
{
    ProtobufCMessage *msg = lg_any_unpack(m->typed_config, d, err);
    if (msg == NULL)
        lg_error_prefix(err, "overload_manager.resource_monitors[%zu].typed_config", i);
    return msg;
}

static int connections_monitor(const Envoy__Config__Overload__V3__ResourceMonitor *m, size_t i, uint64_t *max, lg_error_t *err)
{
    if (*max != UINT64_MAX)
        return lg_error(err, "overload_manager.resource_monitors[%zu]: Duplicate resource monitor %s", i, m->name);
    ProtobufCMessage *msg = monitor_config(
        m, i, &envoy__extensions__resource_monitors__downstream_connections__v3__downstream_connections_config__descriptor, err);
    if (msg == NULL)
        return -1;
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

static int heap_monitor(const Envoy__Config__Overload__V3__ResourceMonitor *m, size_t i, uint64_t *max, lg_error_t *err)
{
    if (*max != 0)
        return lg_error(err, "overload_manager.resource_monitors[%zu]: Duplicate resource monitor %s", i, m->name);
    ProtobufCMessage *msg =
        monitor_config(m, i, &envoy__extensions__resource_monitors__fixed_heap__v3__fixed_heap_config__descriptor, err);
    if (msg == NULL)
        return -1;
    uint64_t v = ((Envoy__Extensions__ResourceMonitors__FixedHeap__V3__FixedHeapConfig *)msg)->max_heap_size_bytes;
    protobuf_c_message_free_unpacked(msg, NULL);
    if (v == 0)
        return lg_error(
            err, "overload_manager.resource_monitors[%zu].typed_config.max_heap_size_bytes: value must be greater than 0", i);
    *max = v;
    return 0;
}

/* The monitors: the limits of the two known ones, warnings for the others. */
static int configure_monitors(const Envoy__Config__Overload__V3__OverloadManager *om, uint64_t *max_cx, uint64_t *max_heap,
                              lg_error_t *err)
{
    for (size_t i = 0; i != om->n_resource_monitors; ++i) {
        const Envoy__Config__Overload__V3__ResourceMonitor *m = om->resource_monitors[i];
        if (m->name == NULL || m->name[0] == '\0')
            return lg_error(err, "overload_manager.resource_monitors[%zu].name: value length must be at least 1 characters", i);
        int cx = strcmp(m->name, LG_OVERLOAD_GLOBAL_CX) == 0, heap = strcmp(m->name, FIXED_HEAP) == 0;
        if (!cx &&
            is_config(m->typed_config,
                      &envoy__extensions__resource_monitors__downstream_connections__v3__downstream_connections_config__descriptor))
            return lg_error(
                err, "overload_manager.resource_monitors[%zu]: a DownstreamConnectionsConfig monitor must be named %s, not %s", i,
                LG_OVERLOAD_GLOBAL_CX, m->name);
        if (!heap &&
            is_config(m->typed_config, &envoy__extensions__resource_monitors__fixed_heap__v3__fixed_heap_config__descriptor))
            return lg_error(err, "overload_manager.resource_monitors[%zu]: a FixedHeapConfig monitor must be named %s, not %s", i,
                            FIXED_HEAP, m->name);
        if (cx ? connections_monitor(m, i, max_cx, err) != 0 : heap ? heap_monitor(m, i, max_heap, err) != 0 : 0)
            return -1;
        if (!cx && !heap)
            LG_WARN(main, "overload_manager.resource_monitors[%zu]: %s is not supported: ignored", i, m->name);
    }
    return 0;
}

static int has_monitor(const Envoy__Config__Overload__V3__OverloadManager *om, const char *name)
{
    for (size_t i = 0; i != om->n_resource_monitors; ++i)
        if (strcmp(om->resource_monitors[i]->name, name) == 0)
            return 1;
    return 0;
}

static int range_error(lg_error_t *err, size_t i, size_t j, const char *field)
{
    return lg_error(err, "overload_manager.actions[%zu].triggers[%zu].%s: value must be inside range [0, 1]", i, j, field);
}

/* Action i's triggers: validated, and the fixed_heap one kept in `t` (t->scaled = -1: none). */
static int configure_triggers(const Envoy__Config__Overload__V3__OverloadManager *om, size_t i, trigger_t *t, lg_error_t *err)
{
    const Envoy__Config__Overload__V3__OverloadAction *a = om->actions[i];
    t->scaled = -1;
    if (a->n_triggers == 0)
        return lg_error(err, "overload_manager.actions[%zu].triggers: value must contain at least 1 item(s)", i);
    for (size_t j = 0; j != a->n_triggers; ++j) {
        const Envoy__Config__Overload__V3__Trigger *tr = a->triggers[j];
        if (tr->name == NULL || tr->name[0] == '\0')
            return lg_error(err, "overload_manager.actions[%zu].triggers[%zu].name: value length must be at least 1 characters", i,
                            j);
        trigger_t x = {0};
        if (tr->trigger_oneof_case == ENVOY__CONFIG__OVERLOAD__V3__TRIGGER__TRIGGER_ONEOF_THRESHOLD) {
            x.threshold = tr->threshold->value;
            if (!(x.threshold >= 0 && x.threshold <= 1))
                return range_error(err, i, j, "threshold.value");
        } else if (tr->trigger_oneof_case == ENVOY__CONFIG__OVERLOAD__V3__TRIGGER__TRIGGER_ONEOF_SCALED) {
            x.scaled = 1;
            x.threshold = tr->scaled->scaling_threshold;
            x.saturation = tr->scaled->saturation_threshold;
            if (!(x.threshold >= 0 && x.threshold <= 1))
                return range_error(err, i, j, "scaled.scaling_threshold");
            if (!(x.saturation >= 0 && x.saturation <= 1))
                return range_error(err, i, j, "scaled.saturation_threshold");
            if (x.threshold >= x.saturation)
                return lg_error(
                    err,
                    "overload_manager.actions[%zu].triggers[%zu].scaled: scaling_threshold must be less than saturation_threshold",
                    i, j);
        } else {
            return lg_error(err, "overload_manager.actions[%zu].triggers[%zu]: value is required (threshold or scaled)", i, j);
        }
        if (!has_monitor(om, tr->name))
            return lg_error(err,
                            "overload_manager.actions[%zu].triggers[%zu].name: Unknown trigger resource %s for overload action %s",
                            i, j, tr->name, a->name);
        for (size_t k = 0; k != j; ++k)
            if (strcmp(a->triggers[k]->name, tr->name) == 0)
                return lg_error(err,
                                "overload_manager.actions[%zu].triggers[%zu]: Duplicate trigger resource for overload action %s", i,
                                j, a->name);
        if (strcmp(tr->name, FIXED_HEAP) == 0)
            *t = x;
        else
            LG_WARN(main, "overload_manager.actions[%zu].triggers[%zu]: %s is not supported: the trigger never fires", i, j,
                    tr->name);
    }
    return 0;
}

static int action_slot(const char *name)
{
    for (int k = 0; k != LG_OVERLOAD__WORKER_ACTIONS; ++k)
        if (strcmp(name, worker_action_names[k]) == 0)
            return k;
    return strcmp(name, SHRINK_HEAP) == 0 ? -1 : -2;
}

static int configure_actions(const Envoy__Config__Overload__V3__OverloadManager *om, lg_error_t *err)
{
    ov.actions = lg_calloc(om->n_actions + 1, sizeof(*ov.actions));
    for (size_t i = 0; i != om->n_actions; ++i) {
        const Envoy__Config__Overload__V3__OverloadAction *a = om->actions[i];
        if (a->name == NULL || a->name[0] == '\0')
            return lg_error(err, "overload_manager.actions[%zu].name: value length must be at least 1 characters", i);
        for (size_t k = 0; k != i; ++k)
            if (strcmp(om->actions[k]->name, a->name) == 0)
                return lg_error(err, "overload_manager.actions[%zu]: Duplicate overload action %s", i, a->name);
        trigger_t t;
        if (configure_triggers(om, i, &t, err) != 0)
            return -1;
        int slot = action_slot(a->name);
        if (slot == -2) {
            LG_WARN(main, "overload_manager.actions[%zu]: %s is not supported: ignored", i, a->name);
            continue;
        }
        action_t *x = &ov.actions[ov.n_actions++];
        x->slot = slot;
        x->trigger = t;
        char prefix[256];
        snprintf(prefix, sizeof(prefix), "overload.%s.", a->name);
        x->stats = lg_stats_block_new(prefix, action_defs, LG_ARRAY_SIZE(action_defs));
    }
    return 0;
}

int lg_overload_configure(const Envoy__Config__Overload__V3__OverloadManager *om, lg_error_t *err)
{
    uint64_t max_cx = UINT64_MAX, max_heap = 0;
    if (om != NULL && configure_monitors(om, &max_cx, &max_heap, err) != 0)
        return -1;
    ov.max_heap = max_heap;
    if (om != NULL && configure_actions(om, err) != 0) {
        lg_overload_shutdown();
        return -1;
    }
    for (size_t i = 0; om != NULL && i != om->n_loadshed_points; ++i)
        LG_WARN(main, "overload_manager.loadshed_points[%zu]: %s is not supported: ignored", i, om->loadshed_points[i]->name);
    ov.refresh_ms = om != NULL ? lg_duration_ms(om->refresh_interval, 1000) : 1000;
    if (ov.refresh_ms == 0)
        ov.refresh_ms = 1;
    if (max_heap != 0) {
        char prefix[128];
        snprintf(prefix, sizeof(prefix), "overload.%s.", FIXED_HEAP);
        ov.heap_stats = lg_stats_block_new(prefix, monitor_defs, LG_ARRAY_SIZE(monitor_defs));
        LG_INFO(main, "heap limit %" PRIu64 " bytes (%s), refreshed every %" PRIu64 " ms", max_heap, FIXED_HEAP, ov.refresh_ms);
    }
    ov.max_connections = max_cx;
    if (max_cx == UINT64_MAX)
        return 0;
    LG_INFO(main, "at most %" PRIu64 " downstream connections (%s)", max_cx, LG_OVERLOAD_GLOBAL_CX);
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

void lg_overload_shutdown(void)
{
    for (size_t i = 0; i != ov.n_actions; ++i)
        lg_stats_block_release(ov.actions[i].stats);
    free(ov.actions);
    if (ov.heap_stats != NULL)
        lg_stats_block_release(ov.heap_stats);
    ov.actions = NULL;
    ov.n_actions = 0;
    ov.heap_stats = NULL;
}

uint64_t lg_overload_max_connections(void)
{
    return ov.max_connections;
}

/* Under AddressSanitizer the heap is the sanitizer's: glibc's counters stay 0. */
extern size_t __sanitizer_get_current_allocated_bytes(void) __attribute__((weak));

static uint64_t heap_in_use(void)
{
    if (__sanitizer_get_current_allocated_bytes != NULL)
        return __sanitizer_get_current_allocated_bytes();
    struct mallinfo2 mi = mallinfo2();
    return mi.uordblks + mi.hblkhd;
}

static double trigger_value(const trigger_t *t, double pressure)
{
    if (t->scaled < 0)
        return 0;
    if (!t->scaled)
        return pressure >= t->threshold ? 1 : 0;
    if (pressure >= t->saturation)
        return 1;
    return pressure <= t->threshold ? 0 : (pressure - t->threshold) / (t->saturation - t->threshold);
}

int lg_overload_refresh(uint64_t now_ms, double values[LG_OVERLOAD__WORKER_ACTIONS])
{
    if (ov.max_heap == 0 || now_ms < ov.next_refresh_ms)
        return 0;
    ov.next_refresh_ms = now_ms + ov.refresh_ms;
    double pressure = (double)heap_in_use() / (double)ov.max_heap;
    lg_stats_gauge_set(ov.heap_stats, MONITOR_pressure, (uint64_t)(pressure * 100));
    double now[LG_OVERLOAD__WORKER_ACTIONS] = {0};
    for (size_t i = 0; i != ov.n_actions; ++i) {
        action_t *a = &ov.actions[i];
        a->value = trigger_value(&a->trigger, pressure);
        lg_stats_gauge_set(a->stats, ACTION_active, a->value >= 1);
        lg_stats_gauge_set(a->stats, ACTION_scale_percent, (uint64_t)(a->value * 100));
        if (a->slot >= 0)
            now[a->slot] = a->value;
        else if (a->value >= 1 && now_ms >= ov.next_shrink_ms) {
            malloc_trim(0);
            ov.next_shrink_ms = now_ms + SHRINK_HEAP_INTERVAL_MS;
        }
    }
    if (memcmp(now, ov.sent, sizeof(now)) == 0)
        return 0;
    memcpy(ov.sent, now, sizeof(now));
    memcpy(values, now, sizeof(now));
    return 1;
}

int lg_overload_decide(double value)
{
    if (value <= 0)
        return 0;
    return value >= 1 || (double)(lg_random() >> 11) * 0x1p-53 < value;
}
