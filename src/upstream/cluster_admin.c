/*
 * The admin /clusters page: Envoy's text lines and its ClusterStatuses JSON
 * (snake_case field names, zero values omitted, uint64 as strings). Host
 * counters are summed over the per-worker rows with relaxed loads.
 */
#include <netinet/in.h>
#include <sys/un.h>
#include "legate/address.h"
#include "upstream.h"
#include "envoy/config/core/v3/health_check.pb-c.h"

#define LG__HOST_STAT_NAME(n) #n,
static const char *const host_stat_names[] = {LG_HOST_STATS(LG__HOST_STAT_NAME)};
#undef LG__HOST_STAT_NAME

static int host_stat_is_gauge(size_t idx)
{
    return idx == LG_HOST_STAT_cx_active || idx == LG_HOST_STAT_rq_active;
}

static uint64_t host_stat_sum(const lg_host_config_t *h, size_t idx)
{
    const uint64_t *s = lg_host_config_stats_peek(h);
    uint64_t sum = 0;
    for (size_t row = 0; s != NULL && row != lg_stats_nworkers + 1; ++row)
        sum += __atomic_load_n(&s[row * LG_HOST_STAT__COUNT + idx], __ATOMIC_RELAXED);
    return sum;
}

/* Envoy's health flag string for what the config knows (EDS health status). */
static const char *health_flags(const lg_host_config_t *h)
{
    switch (h->health_status) {
    case ENVOY__CONFIG__CORE__V3__HEALTH_STATUS__UNHEALTHY:
    case ENVOY__CONFIG__CORE__V3__HEALTH_STATUS__TIMEOUT:
        return "/failed_eds_health";
    case ENVOY__CONFIG__CORE__V3__HEALTH_STATUS__DRAINING:
        return "/eds_status_draining";
    case ENVOY__CONFIG__CORE__V3__HEALTH_STATUS__DEGRADED:
        return "/degraded_eds_health";
    default:
        return "healthy";
    }
}

/* As Envoy's Host::edsHealthStatus(): what the flags say, HEALTHY when none. */
static const char *eds_health_name(const lg_host_config_t *h)
{
    switch (h->health_status) {
    case ENVOY__CONFIG__CORE__V3__HEALTH_STATUS__UNHEALTHY:
    case ENVOY__CONFIG__CORE__V3__HEALTH_STATUS__TIMEOUT:
        return "UNHEALTHY";
    case ENVOY__CONFIG__CORE__V3__HEALTH_STATUS__DRAINING:
        return "DRAINING";
    case ENVOY__CONFIG__CORE__V3__HEALTH_STATUS__DEGRADED:
        return "DEGRADED";
    default:
        return "HEALTHY";
    }
}

static void text_thresholds(lg_strbuf_t *out, const char *name, const char *prio, const lg_cb_thresholds_t *t)
{
    lg_strbuf_printf(out, "%s::%s_priority::max_connections::%u\n", name, prio, t->max_connections);
    lg_strbuf_printf(out, "%s::%s_priority::max_pending_requests::%u\n", name, prio, t->max_pending_requests);
    lg_strbuf_printf(out, "%s::%s_priority::max_requests::%u\n", name, prio, t->max_requests);
    lg_strbuf_printf(out, "%s::%s_priority::max_retries::%u\n", name, prio, t->max_retries);
}

static void text_host(lg_strbuf_t *out, const char *name, const lg_host_config_t *h)
{
    const char *a = h->address;
    for (size_t i = 0; i != LG_HOST_STAT__COUNT; ++i)
        lg_strbuf_printf(out, "%s::%s::%s::%llu\n", name, a, host_stat_names[i], (unsigned long long)host_stat_sum(h, i));
    lg_strbuf_printf(out, "%s::%s::hostname::%s\n", name, a, h->hostname);
    lg_strbuf_printf(out, "%s::%s::health_flags::%s\n", name, a, health_flags(h));
    lg_strbuf_printf(out, "%s::%s::weight::%u\n", name, a, h->weight);
    lg_strbuf_printf(out, "%s::%s::region::\n", name, a);
    lg_strbuf_printf(out, "%s::%s::zone::\n", name, a);
    lg_strbuf_printf(out, "%s::%s::sub_zone::\n", name, a);
    lg_strbuf_printf(out, "%s::%s::canary::false\n", name, a);
    lg_strbuf_printf(out, "%s::%s::priority::0\n", name, a);
    lg_strbuf_printf(out, "%s::%s::success_rate::-1\n", name, a);
    lg_strbuf_printf(out, "%s::%s::local_origin_success_rate::-1\n", name, a);
}

void lg_clusters_admin_text(lg_strbuf_t *out, lg_cluster_config_t *const *cfgs, size_t n)
{
    for (size_t i = 0; i != n; ++i) {
        const lg_cluster_config_t *c = cfgs[i];
        lg_strbuf_printf(out, "%s::observability_name::%s\n", c->name, c->stat_name);
        text_thresholds(out, c->name, "default", &c->thresholds);
        text_thresholds(out, c->name, "high", &c->high_thresholds);
        lg_strbuf_printf(out, "%s::added_via_api::%s\n", c->name, c->added_via_api ? "true" : "false");
        if (c->discovery == LG_CLUSTER_EDS)
            lg_strbuf_printf(out, "%s::eds_service_name::%s\n", c->name, c->eds_service_name);
        for (size_t j = 0; j != c->n_hosts; ++j)
            text_host(out, c->name, c->hosts[j]);
    }
}

static void json_thresholds(lg_strbuf_t *out, const lg_cb_thresholds_t *t, int high)
{
    lg_strbuf_printf(out, "{%s\"max_connections\":%u,\"max_pending_requests\":%u,\"max_requests\":%u,\"max_retries\":%u}",
                     high ? "\"priority\":\"HIGH\"," : "", t->max_connections, t->max_pending_requests, t->max_requests,
                     t->max_retries);
}

static void json_address(lg_strbuf_t *out, const lg_host_config_t *h)
{
    char ip[INET6_ADDRSTRLEN + 2 + sizeof(struct sockaddr_un)];
    if (h->sa->sa_family == AF_UNIX) {
        lg_strbuf_puts(out, "{\"pipe\":{\"path\":");
        lg_strbuf_json_string(out, h->address, strlen(h->address));
        lg_strbuf_puts(out, "}}");
        return;
    }
    lg_address_format_ip(h->sa, ip, sizeof(ip));
    lg_strbuf_puts(out, "{\"socket_address\":{\"address\":");
    lg_strbuf_json_string(out, ip, strlen(ip));
    lg_strbuf_printf(out, ",\"port_value\":%u}}", lg_address_port(h->sa));
}

static void json_host(lg_strbuf_t *out, const lg_host_config_t *h)
{
    lg_strbuf_puts(out, "{\"address\":");
    json_address(out, h);
    lg_strbuf_puts(out, ",\"stats\":[");
    for (size_t i = 0; i != LG_HOST_STAT__COUNT; ++i) {
        uint64_t v = host_stat_sum(h, i);
        lg_strbuf_printf(out, "%s{", i != 0 ? "," : "");
        if (v != 0)
            lg_strbuf_printf(out, "\"value\":\"%llu\",", (unsigned long long)v);
        if (host_stat_is_gauge(i))
            lg_strbuf_puts(out, "\"type\":\"GAUGE\",");
        lg_strbuf_printf(out, "\"name\":\"%s\"}", host_stat_names[i]);
    }
    lg_strbuf_printf(out, "],\"health_status\":{\"eds_health_status\":\"%s\"},\"weight\":%u", eds_health_name(h), h->weight);
    if (h->hostname[0] != '\0') {
        lg_strbuf_puts(out, ",\"hostname\":");
        lg_strbuf_json_string(out, h->hostname, strlen(h->hostname));
    }
    lg_strbuf_puts(out, ",\"locality\":{}}");
}

void lg_clusters_admin_json(lg_strbuf_t *out, lg_cluster_config_t *const *cfgs, size_t n)
{
    lg_strbuf_puts(out, "{\"cluster_statuses\":[");
    for (size_t i = 0; i != n; ++i) {
        const lg_cluster_config_t *c = cfgs[i];
        lg_strbuf_puts(out, i != 0 ? ",{\"name\":" : "{\"name\":");
        lg_strbuf_json_string(out, c->name, strlen(c->name));
        if (c->added_via_api)
            lg_strbuf_puts(out, ",\"added_via_api\":true");
        lg_strbuf_puts(out, ",\"circuit_breakers\":{\"thresholds\":[");
        json_thresholds(out, &c->thresholds, 0);
        lg_strbuf_puts(out, ",");
        json_thresholds(out, &c->high_thresholds, 1);
        lg_strbuf_puts(out, "]},\"observability_name\":");
        lg_strbuf_json_string(out, c->stat_name, strlen(c->stat_name));
        if (c->discovery == LG_CLUSTER_EDS) {
            lg_strbuf_puts(out, ",\"eds_service_name\":");
            lg_strbuf_json_string(out, c->eds_service_name, strlen(c->eds_service_name));
        }
        if (c->n_hosts != 0) {
            lg_strbuf_puts(out, ",\"host_statuses\":[");
            for (size_t j = 0; j != c->n_hosts; ++j) {
                if (j != 0)
                    lg_strbuf_puts(out, ",");
                json_host(out, c->hosts[j]);
            }
            lg_strbuf_puts(out, "]");
        }
        lg_strbuf_puts(out, "}");
    }
    lg_strbuf_puts(out, "]}\n");
}
