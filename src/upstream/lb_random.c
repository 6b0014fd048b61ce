/*
 * Random, as Envoy's RandomLoadBalancer: a uniformly random host; weights are
 * not considered.
 */
#include "upstream.h"

typedef struct st_lg_lb_random_t {
    lg_host_t **hosts;
    size_t n;
    uint64_t rng;
} lg_lb_random_t;

static lg_lb_t *random_create(lg_host_t **hosts, size_t n, const lg_lb_params_t *params)
{
    lg_lb_random_t *r = lg_calloc(1, sizeof(*r));
    r->hosts = hosts;
    r->n = n;
    r->rng = params->seed != 0 ? params->seed : 0x9E3779B97F4A7C15ull;
    return (lg_lb_t *)r;
}

static lg_host_t *random_pick(lg_lb_t *lb)
{
    lg_lb_random_t *r = (lg_lb_random_t *)lb;
    return r->hosts[lg_lb_random_next(&r->rng) % r->n];
}

static void random_destroy(lg_lb_t *lb)
{
    free(lb);
}

const lg_lb_type_t lg_lb_random = {"RANDOM", random_create, random_pick, random_destroy};
