/*
 * Least request, as Envoy's LeastRequestLoadBalancer. With equal weights it
 * samples choice_count random hosts and takes the one with the fewest active
 * requests (a full scan when choice_count covers every host); with unequal
 * weights it runs EDF with the effective weight
 * weight / (active_requests + 1) ^ active_request_bias, evaluated each time a
 * host is re-added. Active requests are this worker's (lg_host_t), as each
 * Envoy worker only sees its own.
 */
#include <math.h>
#include "upstream.h"

typedef struct st_lg_lb_least_request_t {
    lg_host_t **hosts;
    size_t n;
    uint32_t choice_count;
    double bias;
    uint64_t rng;
    lg__edf_t edf; /* weighted; heap NULL when unweighted */
} lg_lb_least_request_t;

static double effective_weight(lg_lb_least_request_t *lr, lg_host_t *h)
{
    if (lr->bias == 0)
        return h->weight;
    double load = (double)h->active_requests + 1;
    return h->weight / (lr->bias == 1.0 ? load : pow(load, lr->bias));
}

static lg_lb_t *lr_create(lg_host_t **hosts, size_t n, const lg_lb_params_t *params)
{
    lg_lb_least_request_t *lr = lg_calloc(1, sizeof(*lr));
    lr->hosts = hosts;
    lr->n = n;
    lr->choice_count = params->choice_count >= 2 ? params->choice_count : 2;
    lr->bias = params->active_request_bias;
    lr->rng = params->seed != 0 ? params->seed : 0x9E3779B97F4A7C15ull;
    if (n > 1 && !lg__lb_weights_equal(hosts, n)) {
        lg__edf_init(&lr->edf, n);
        for (size_t i = 0; i != n; ++i)
            lg__edf_add(&lr->edf, effective_weight(lr, hosts[i]), hosts[i]);
    }
    return (lg_lb_t *)lr;
}

/* Every host is a candidate; ties go to a random one among the least loaded. */
static lg_host_t *full_scan(lg_lb_least_request_t *lr)
{
    size_t start = lg_lb_random_next(&lr->rng) % lr->n;
    lg_host_t *best = NULL;
    for (size_t i = 0; i != lr->n; ++i) {
        lg_host_t *h = lr->hosts[(start + i) % lr->n];
        if (best == NULL || h->active_requests < best->active_requests)
            best = h;
    }
    return best;
}

static lg_host_t *lr_pick(lg_lb_t *lb)
{
    lg_lb_least_request_t *lr = (lg_lb_least_request_t *)lb;
    if (lr->edf.heap != NULL) {
        lg_host_t *h = lg__edf_pick(&lr->edf);
        lg__edf_add(&lr->edf, effective_weight(lr, h), h);
        return h;
    }
    if (lr->n <= lr->choice_count)
        return full_scan(lr);
    lg_host_t *best = NULL;
    for (uint32_t i = 0; i != lr->choice_count; ++i) {
        lg_host_t *h = lr->hosts[lg_lb_random_next(&lr->rng) % lr->n];
        if (best == NULL || h->active_requests < best->active_requests)
            best = h;
    }
    return best;
}

static void lr_destroy(lg_lb_t *lb)
{
    lg_lb_least_request_t *lr = (lg_lb_least_request_t *)lb;
    lg__edf_dispose(&lr->edf);
    free(lr);
}

const lg_lb_type_t lg_lb_least_request = {"LEAST_REQUEST", lr_create, lr_pick, lr_destroy};
