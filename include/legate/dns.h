/*
 * DNS clusters (STRICT_DNS, LOGICAL_DNS): the resolution settings compiled
 * from a Cluster, and their resolution on the control thread with c-ares.
 *
 * A spec (lg_dns_spec_t) is immutable and refcounted; the cluster configs
 * derived from one compiled Cluster share it. A resolver (lg_dns_cluster_t)
 * is the control thread's state for one cluster entry: a c-ares channel, the
 * addresses of each target (an lb_endpoint's DNS name and port), and when each
 * target is resolved next. lg_dns_tick() drives all of them from the control
 * loop; nothing here runs on a worker.
 *
 * As Envoy: each target is resolved every dns_refresh_rate (default 5 s), or
 * after the smallest TTL of its answer with respect_dns_ttl; a failure retries
 * after dns_failure_refresh_rate (jittered exponential backoff between its
 * base and max), or dns_refresh_rate when unset. STRICT_DNS hosts are every
 * address of every target (an answer without addresses removes the target's
 * hosts); LOGICAL_DNS has one host, the first address of its single target,
 * and an answer without addresses changes nothing. AUTO and V4_PREFERRED ask
 * for the other family when the first query gives no address or fails.
 * Stats, in the cluster's
 * block: update_attempt per query, update_success or update_failure per
 * answer, update_no_rebuild when an answer changes no host.
 */
#ifndef LEGATE_DNS_H
#define LEGATE_DNS_H

#include <stdint.h>
#include <sys/socket.h>
#include "legate/common.h"
#include "legate/protobuf.h"

typedef enum en_lg_dns_family_t {
    LG_DNS_AUTO,         /* IPv6, then IPv4 when there is no IPv6 address (Envoy's AUTO) */
    LG_DNS_V4_ONLY,
    LG_DNS_V6_ONLY,
    LG_DNS_V4_PREFERRED, /* IPv4, then IPv6 when there is no IPv4 address */
    LG_DNS_ALL,          /* both */
} lg_dns_family_t;

typedef struct st_lg_dns_target_t {
    char *name;    /* socket_address.address */
    uint32_t port; /* socket_address.port_value */
} lg_dns_target_t;

typedef struct st_lg_dns_spec_t {
    uint32_t _refcnt;
    unsigned logical : 1; /* LOGICAL_DNS */
    unsigned respect_ttl : 1;
    unsigned use_tcp : 1;
    unsigned no_search : 1; /* no_default_search_domain */
    unsigned no_warm : 1;   /* wait_for_warm_on_init: false (init and warming do not wait for answers) */
    lg_dns_family_t family;
    uint64_t refresh_ms;                      /* dns_refresh_rate */
    uint64_t failure_base_ms, failure_max_ms; /* dns_failure_refresh_rate; 0: refresh_ms */
    struct sockaddr_storage *resolvers;       /* none: /etc/resolv.conf */
    size_t n_resolvers;
    /* In the order of load_assignment's lb_endpoints, locality by locality. */
    lg_dns_target_t *targets;
    size_t n_targets;
    ProtobufCBinaryData assignment; /* load_assignment, packed: the hosts are built from it */
} lg_dns_spec_t;

/* The DNS settings of a STRICT_DNS (logical = 0) or LOGICAL_DNS cluster, or
 * NULL and an error naming the field (relative to the Cluster). */
lg_dns_spec_t *lg_dns_spec_compile(const Envoy__Config__Cluster__V3__Cluster *c, int logical, lg_error_t *err);
/* Calls `use` with the spec's load_assignment as it will be with one address
 * per target (a placeholder), so that compile errors show at config time. */
int lg_dns_spec_check(const lg_dns_spec_t *s,
                      int (*use)(void *ctx, const Envoy__Config__Endpoint__V3__ClusterLoadAssignment *cla, lg_error_t *err),
                      void *ctx, lg_error_t *err);
lg_dns_spec_t *lg_dns_spec_addref(lg_dns_spec_t *s);
void lg_dns_spec_release(lg_dns_spec_t *s);

typedef struct st_lg_dns_cluster_t lg_dns_cluster_t;
typedef struct st_lg_stats_block_t lg_stats_block_t;

/* Starts resolving the spec's targets (at the next lg_dns_tick). `stats` is
 * the cluster's block (referenced). */
lg_dns_cluster_t *lg_dns_cluster_new(lg_dns_spec_t *spec, lg_stats_block_t *stats, const char *cluster_name);
/* Cancels its queries and frees it. */
void lg_dns_cluster_free(lg_dns_cluster_t *d);
/* Whether every target has had an answer or a failure once (Envoy's
 * initialization of the cluster; without targets at once). */
int lg_dns_cluster_ready(const lg_dns_cluster_t *d);
/* Whether init and warming may go on: ready, or wait_for_warm_on_init is false. */
int lg_dns_cluster_warm(const lg_dns_cluster_t *d);
/* Whether the hosts changed since the last call (the first time: whether it is
 * ready); clears the flag. */
int lg_dns_cluster_take_change(lg_dns_cluster_t *d);
/* Calls `use` with the spec's load_assignment in which each target's
 * lb_endpoint is repeated once per current address (LOGICAL_DNS: its first),
 * with the target's name as the endpoint's hostname when it has none; returns
 * what `use` returns. */
int lg_dns_cluster_with_assignment(lg_dns_cluster_t *d,
                                   int (*use)(void *ctx, const Envoy__Config__Endpoint__V3__ClusterLoadAssignment *cla,
                                              lg_error_t *err),
                                   void *ctx, lg_error_t *err);

/* Starts the queries that are due and processes the answers that came.
 * Returns non-zero when some cluster's hosts changed (or became ready). */
int lg_dns_tick(uint64_t now_ms);
/* Whether a query is in flight (the control loop then polls more often). */
int lg_dns_busy(void);
/* Frees c-ares' global state (at exit, once every resolver is freed). */
void lg_dns_shutdown(void);

#endif
