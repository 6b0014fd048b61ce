/*
 * Round robin, as Envoy's RoundRobinLoadBalancer: plain rotation when every
 * host has the same weight, EDF scheduling (each host due every 1/weight)
 * when they differ. `seed` shifts the starting point so that workers do not
 * all start on the first host.
 */
#include "upstream.h"

typedef struct st_lg_lb_round_robin_t {
    lg_host_t **hosts;
    size_t n;
    uint64_t next; /* unweighted rotation */
    lg__edf_t edf; /* weighted; heap NULL when unweighted */
} lg_lb_round_robin_t;

static lg_host_t *rr_pick(lg_lb_t *lb);

static lg_lb_t *rr_create(lg_host_t **hosts, size_t n, const lg_lb_params_t *params)
{
    lg_lb_round_robin_t *rr = lg_calloc(1, sizeof(*rr));
    rr->hosts = hosts;
    rr->n = n;
    rr->next = params->seed % n;
    if (n > 1 && !lg__lb_weights_equal(hosts, n)) {
        lg__edf_init(&rr->edf, n);
        for (size_t i = 0; i != n; ++i)
            lg__edf_add(&rr->edf, hosts[i]->weight, hosts[i]);
        for (uint64_t i = 0; i != params->seed % n; ++i)
            rr_pick((lg_lb_t *)rr);
    }
    return (lg_lb_t *)rr;
}

static lg_host_t *rr_pick(lg_lb_t *lb)
{
    lg_lb_round_robin_t *rr = (lg_lb_round_robin_t *)lb;
    if (rr->edf.heap == NULL)
        return rr->hosts[rr->next++ % rr->n];
    lg_host_t *h = lg__edf_pick(&rr->edf);
    lg__edf_add(&rr->edf, h->weight, h);
    return h;
}

static void rr_destroy(lg_lb_t *lb)
{
    lg_lb_round_robin_t *rr = (lg_lb_round_robin_t *)lb;
    lg__edf_dispose(&rr->edf);
    free(rr);
}

const lg_lb_type_t lg_lb_round_robin = {"ROUND_ROBIN", rr_create, rr_pick, rr_destroy};
