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
 * Reactive monitors, read every refresh_interval (default 1 s) on the control
 * thread: envoy.resource_monitors.fixed_heap (FixedHeapConfig), the pressure of
 * the heap in use against max_heap_size_bytes (Envoy reads tcmalloc's mapped
 * heap; glibc's equivalent here is mallinfo2's bytes in use, uordblks +
 * hblkhd), and envoy.resource_monitors.injected_resource
 * (InjectedResourceConfig), a pressure read from a file (Envoy's test monitor:
 * a file that does not hold a number counts in failed_updates and
 * leaves the pressure as it was). Each action's value is the largest of its triggers'
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
 *  - shrink_heap: while saturated, malloc_trim every 10 s (shrink_count).
 * A listener with bypass_overload_manager (and its HTTP connection managers)
 * is exempt from the actions and the global connection limit.
 * The workers get the values as a message when they change and decide with
 * their own random numbers: nothing shared on the request path.
 * Stats, as Envoy's: overload.<monitor>.pressure (percent), .failed_updates,
 * .skipped_updates; overload.<action>.active (1 saturated, else 0),
 * .scale_percent.
 *
 * The other monitors (cpu_utilization, cgroup_memory),
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
#include "envoy/extensions/resource_monitors/injected_resource/v3/injected_resource.pb-c.h"

#define FIXED_HEAP "envoy.resource_monitors.fixed_heap"
#define INJECTED "envoy.resource_monitors.injected_resource"
#define SHRINK_HEAP "envoy.overload_actions.shrink_heap"
#define SHRINK_HEAP_INTERVAL_MS 10000

#define MONITOR_STATS(X)       \
    X(GAUGE, pressure)         \
    X(COUNTER, failed_updates) \
    X(COUNTER, skipped_updates)
#define ACTION_STATS(X)     \
    X(GAUGE, active)        \
    X(GAUGE, scale_percent) \
    X(COUNTER, shrink_count) /* shrink_heap's only */
#define MONITOR_ENUM(type, name) MONITOR_##name,
#define ACTION_ENUM(type, name) ACTION_##name,
enum { MONITOR_STATS(MONITOR_ENUM) };
enum { ACTION_STATS(ACTION_ENUM) };
#undef MONITOR_ENUM
#undef ACTION_ENUM
static const lg_stat_def_t monitor_defs[] = {MONITOR_STATS(LG_STAT_DEF)};
static const lg_stat_def_t action_defs[] = {ACTION_STATS(LG_STAT_DEF)};
#define N_ACTION_DEFS(slot) ((slot) < 0 ? LG_ARRAY_SIZE(action_defs) : (size_t)ACTION_shrink_count)

static const char *const worker_action_names[LG_OVERLOAD__WORKER_ACTIONS] = {
    "envoy.overload_actions.stop_accepting_requests", "envoy.overload_actions.disable_http_keepalive",
    "envoy.overload_actions.reject_incoming_connections", "envoy.overload_actions.stop_accepting_connections"};

/* A reactive monitor: fixed_heap (max_heap != 0) or injected_resource (filename). */
typedef struct st_monitor_t {
    char *name;
    uint64_t max_heap;
    char *filename;
    double pressure;
    lg_stats_block_t *stats;
} monitor_t;

typedef struct st_trigger_t {
    size_t monitor; /* in ov.monitors */
    int scaled;
    double threshold; /* threshold, or scaling_threshold */
    double saturation;
} trigger_t;

typedef struct st_action_t {
    int slot;            /* an lg_overload_action_t, or -1 for shrink_heap */
    trigger_t *triggers; /* those on the reactive monitors */
    size_t n_triggers;
    double value;
    lg_stats_block_t *stats;
} action_t;

static struct {
    uint64_t max_connections; /* set before the workers start, read on accept */
    monitor_t *monitors;
    size_t n_monitors;
    action_t *actions;
    size_t n_actions;
    uint64_t refresh_ms, next_refresh_ms, next_shrink_ms;
    double sent[LG_OVERLOAD__WORKER_ACTIONS];
} ov = {.max_connections = UINT64_MAX};

/* The monitors Legate knows, indexes in known_monitors. */
enum { KNOWN_CONNECTIONS, KNOWN_FIXED_HEAP, KNOWN_INJECTED };
static const struct {
    const char *name, *config;
    const ProtobufCMessageDescriptor *descriptor;
} known_monitors[] = {
    {LG_OVERLOAD_GLOBAL_CX, "DownstreamConnectionsConfig",
     &envoy__extensions__resource_monitors__downstream_connections__v3__downstream_connections_config__descriptor},
    {FIXED_HEAP, "FixedHeapConfig", &envoy__extensions__resource_monitors__fixed_heap__v3__fixed_heap_config__descriptor},
    {INJECTED, "InjectedResourceConfig",
     &envoy__extensions__resource_monitors__injected_resource__v3__injected_resource_config__descriptor},
};

static int is_config(const Google__Protobuf__Any *any, const ProtobufCMessageDescriptor *d)
{
    return any != NULL && any->type_url != NULL && strcmp(lg_type_url_name(any->type_url), d->name) == 0;
}

static int connections_monitor(const ProtobufCMessage *msg, size_t i, uint64_t *max, lg_error_t *err)
{
    int64_t v = ((const Envoy__Extensions__ResourceMonitors__DownstreamConnections__V3__DownstreamConnectionsConfig *)msg)
                    ->max_active_downstream_connections;
    if (v <= 0)
        return lg_error(
            err,
            "overload_manager.resource_monitors[%zu].typed_config.max_active_downstream_connections: value must be greater than 0",
            i);
    *max = (uint64_t)v;
    return 0;
}

/* fixed_heap or injected_resource (k: KNOWN_*). */
static int reactive_monitor(const char *name, const ProtobufCMessage *msg, size_t i, size_t k, lg_error_t *err)
{
    monitor_t x = {0};
    if (k == KNOWN_FIXED_HEAP &&
        (x.max_heap = ((const Envoy__Extensions__ResourceMonitors__FixedHeap__V3__FixedHeapConfig *)msg)->max_heap_size_bytes) == 0)
        return lg_error(
            err, "overload_manager.resource_monitors[%zu].typed_config.max_heap_size_bytes: value must be greater than 0", i);
    const char *file =
        k == KNOWN_INJECTED
            ? ((const Envoy__Extensions__ResourceMonitors__InjectedResource__V3__InjectedResourceConfig *)msg)->filename
            : NULL;
    if (file != NULL && file[0] == '\0')
        return lg_error(
            err, "overload_manager.resource_monitors[%zu].typed_config.filename: value length must be at least 1 characters", i);
    x.filename = file != NULL ? lg_strdup(file) : NULL;
    x.name = lg_strdup(name);
    char prefix[256];
    snprintf(prefix, sizeof(prefix), "overload.%s.", name);
    x.stats = lg_stats_block_new(prefix, monitor_defs, LG_ARRAY_SIZE(monitor_defs));
    ov.monitors[ov.n_monitors++] = x;
    if (k == KNOWN_FIXED_HEAP)
        LG_INFO(main, "heap limit %" PRIu64 " bytes (%s)", x.max_heap, FIXED_HEAP);
    return 0;
}

/* Known monitor k of resource_monitors[i] (its name is not a duplicate). */
static int known_monitor(const Envoy__Config__Overload__V3__ResourceMonitor *m, size_t i, size_t k, uint64_t *max_cx,
                         lg_error_t *err)
{
    if (m->typed_config == NULL)
        return lg_error(err, "overload_manager.resource_monitors[%zu].typed_config: %s needs a %s", i, m->name,
                        known_monitors[k].config);
    ProtobufCMessage *msg = lg_any_unpack(m->typed_config, known_monitors[k].descriptor, err);
    if (msg == NULL)
        return lg_error_prefix(err, "overload_manager.resource_monitors[%zu].typed_config", i);
    int r = k == KNOWN_CONNECTIONS ? connections_monitor(msg, i, max_cx, err) : reactive_monitor(m->name, msg, i, k, err);
    protobuf_c_message_free_unpacked(msg, NULL);
    return r;
}

/* The monitors: the connection limit, the reactive ones, warnings for the others. */
static int configure_monitors(const Envoy__Config__Overload__V3__OverloadManager *om, uint64_t *max_cx, lg_error_t *err)
{
    ov.monitors = lg_calloc(om->n_resource_monitors + 1, sizeof(*ov.monitors));
    for (size_t i = 0; i != om->n_resource_monitors; ++i) {
        const Envoy__Config__Overload__V3__ResourceMonitor *m = om->resource_monitors[i];
        if (m->name == NULL || m->name[0] == '\0')
            return lg_error(err, "overload_manager.resource_monitors[%zu].name: value length must be at least 1 characters", i);
        for (size_t j = 0; j != i; ++j)
            if (strcmp(om->resource_monitors[j]->name, m->name) == 0)
                return lg_error(err, "overload_manager.resource_monitors[%zu]: Duplicate resource monitor %s", i, m->name);
        size_t k = 0;
        while (k != LG_ARRAY_SIZE(known_monitors) && strcmp(m->name, known_monitors[k].name) != 0)
            ++k;
        for (size_t j = 0; j != LG_ARRAY_SIZE(known_monitors); ++j)
            if (j != k && is_config(m->typed_config, known_monitors[j].descriptor))
                return lg_error(err, "overload_manager.resource_monitors[%zu]: a %s monitor must be named %s, not %s", i,
                                known_monitors[j].config, known_monitors[j].name, m->name);
        if (k == LG_ARRAY_SIZE(known_monitors))
            LG_WARN(main, "overload_manager.resource_monitors[%zu]: %s is not supported: ignored", i, m->name);
        else if (known_monitor(m, i, k, max_cx, err) != 0)
            return -1;
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

static int reactive_index(const char *name, size_t *index)
{
    for (size_t k = 0; k != ov.n_monitors; ++k)
        if (strcmp(ov.monitors[k].name, name) == 0) {
            *index = k;
            return 1;
        }
    return 0;
}

static int range_error(lg_error_t *err, size_t i, size_t j, const char *field)
{
    return lg_error(err, "overload_manager.actions[%zu].triggers[%zu].%s: value must be inside range [0, 1]", i, j, field);
}

/* Action i's triggers: validated, and those on the reactive monitors kept in `x`. */
static int configure_triggers(const Envoy__Config__Overload__V3__OverloadManager *om, size_t i, action_t *x, lg_error_t *err)
{
    const Envoy__Config__Overload__V3__OverloadAction *a = om->actions[i];
    if (a->n_triggers == 0)
        return lg_error(err, "overload_manager.actions[%zu].triggers: value must contain at least 1 item(s)", i);
    x->triggers = lg_calloc(a->n_triggers, sizeof(*x->triggers));
    for (size_t j = 0; j != a->n_triggers; ++j) {
        const Envoy__Config__Overload__V3__Trigger *tr = a->triggers[j];
        if (tr->name == NULL || tr->name[0] == '\0')
            return lg_error(err, "overload_manager.actions[%zu].triggers[%zu].name: value length must be at least 1 characters", i,
                            j);
        trigger_t t = {0};
        if (tr->trigger_oneof_case == ENVOY__CONFIG__OVERLOAD__V3__TRIGGER__TRIGGER_ONEOF_THRESHOLD) {
            t.threshold = tr->threshold->value;
            if (!(t.threshold >= 0 && t.threshold <= 1))
                return range_error(err, i, j, "threshold.value");
        } else if (tr->trigger_oneof_case == ENVOY__CONFIG__OVERLOAD__V3__TRIGGER__TRIGGER_ONEOF_SCALED) {
            t.scaled = 1;
            t.threshold = tr->scaled->scaling_threshold;
            t.saturation = tr->scaled->saturation_threshold;
            if (!(t.threshold >= 0 && t.threshold <= 1))
                return range_error(err, i, j, "scaled.scaling_threshold");
            if (!(t.saturation >= 0 && t.saturation <= 1))
                return range_error(err, i, j, "scaled.saturation_threshold");
            if (t.threshold >= t.saturation)
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
        if (reactive_index(tr->name, &t.monitor))
            x->triggers[x->n_triggers++] = t;
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
        action_t *x = &ov.actions[ov.n_actions++];
        if (configure_triggers(om, i, x, err) != 0)
            return -1;
        if ((x->slot = action_slot(a->name)) == -2) {
            LG_WARN(main, "overload_manager.actions[%zu]: %s is not supported: ignored", i, a->name);
            free(x->triggers);
            *x = (action_t){0};
            --ov.n_actions;
            continue;
        }
        char prefix[256];
        snprintf(prefix, sizeof(prefix), "overload.%s.", a->name);
        x->stats = lg_stats_block_new(prefix, action_defs, N_ACTION_DEFS(x->slot));
    }
    return 0;
}

int lg_overload_configure(const Envoy__Config__Overload__V3__OverloadManager *om, lg_error_t *err)
{
    uint64_t max_cx = UINT64_MAX;
    if (om != NULL && (configure_monitors(om, &max_cx, err) != 0 || configure_actions(om, err) != 0)) {
        lg_overload_shutdown();
        return -1;
    }
    for (size_t i = 0; om != NULL && i != om->n_loadshed_points; ++i)
        LG_WARN(main, "overload_manager.loadshed_points[%zu]: %s is not supported: ignored", i, om->loadshed_points[i]->name);
    ov.refresh_ms = om != NULL ? lg_duration_ms(om->refresh_interval, 1000) : 1000;
    if (ov.refresh_ms == 0)
        ov.refresh_ms = 1;
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
    for (size_t i = 0; i != ov.n_actions; ++i) {
        if (ov.actions[i].stats != NULL)
            lg_stats_block_release(ov.actions[i].stats);
        free(ov.actions[i].triggers);
    }
    for (size_t i = 0; i != ov.n_monitors; ++i) {
        lg_stats_block_release(ov.monitors[i].stats);
        free(ov.monitors[i].name);
        free(ov.monitors[i].filename);
    }
    free(ov.actions);
    free(ov.monitors);
    ov.actions = NULL;
    ov.monitors = NULL;
    ov.n_actions = ov.n_monitors = 0;
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

/* The injected pressure: the file's number; -1 when it has none, or one
 * outside [0, 1] (Envoy: "pressure out of range"). */
static double read_injected(const char *path)
{
    char buf[64];
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *end;
    double v = strtod(buf, &end);
    while (*end == ' ' || *end == '\n' || *end == '\r' || *end == '\t')
        ++end;
    return end == buf || *end != '\0' || !(v >= 0 && v <= 1) ? -1 : v;
}

static void update_monitor(monitor_t *m)
{
    double p = m->max_heap != 0 ? (double)heap_in_use() / (double)m->max_heap : read_injected(m->filename);
    if (p < 0) {
        lg_stats_control_add(m->stats, MONITOR_failed_updates, 1);
        return;
    }
    m->pressure = p;
    lg_stats_gauge_set(m->stats, MONITOR_pressure, (uint64_t)(p * 100));
}

static double trigger_value(const trigger_t *t, double pressure)
{
    if (!t->scaled)
        return pressure >= t->threshold ? 1 : 0;
    if (pressure >= t->saturation)
        return 1;
    return pressure <= t->threshold ? 0 : (pressure - t->threshold) / (t->saturation - t->threshold);
}

int lg_overload_refresh(uint64_t now_ms, double values[LG_OVERLOAD__WORKER_ACTIONS])
{
    if (ov.n_monitors == 0 || now_ms < ov.next_refresh_ms)
        return 0;
    ov.next_refresh_ms = now_ms + ov.refresh_ms;
    for (size_t i = 0; i != ov.n_monitors; ++i)
        update_monitor(&ov.monitors[i]);
    double now[LG_OVERLOAD__WORKER_ACTIONS] = {0};
    for (size_t i = 0; i != ov.n_actions; ++i) {
        action_t *a = &ov.actions[i];
        a->value = 0;
        for (size_t j = 0; j != a->n_triggers; ++j) {
            double v = trigger_value(&a->triggers[j], ov.monitors[a->triggers[j].monitor].pressure);
            if (v > a->value)
                a->value = v;
        }
        lg_stats_gauge_set(a->stats, ACTION_active, a->value >= 1);
        lg_stats_gauge_set(a->stats, ACTION_scale_percent, (uint64_t)(a->value * 100));
        if (a->slot >= 0)
            now[a->slot] = a->value;
        else if (a->value >= 1 && now_ms >= ov.next_shrink_ms) {
            malloc_trim(0);
            lg_stats_control_add(a->stats, ACTION_shrink_count, 1);
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
