/* Load balancers: exact round robin sequences, least request preferences and
 * random coverage, over hand-built host arrays. */
#include "test.h"
#include "legate/cluster.h"

#define N 4

static lg_host_t hosts[N];
static lg_host_t *ptrs[N];

static void setup(const uint32_t *weights, size_t n)
{
    for (size_t i = 0; i != n; ++i) {
        hosts[i] = (lg_host_t){0};
        hosts[i].weight = weights[i];
        ptrs[i] = &hosts[i];
    }
}

/* Picks `count` hosts and writes them as letters (A = hosts[0]). */
static void sequence(const lg_lb_type_t *type, const lg_lb_params_t *params, size_t n, size_t count, char *out)
{
    lg_lb_t *lb = type->create(ptrs, n, params);
    for (size_t i = 0; i != count; ++i)
        out[i] = (char)('A' + (type->pick(lb) - hosts));
    out[count] = '\0';
    type->destroy(lb);
}

static void test_round_robin(void)
{
    char seq[64];
    lg_lb_params_t params = {2, 1.0, 0};
    setup((uint32_t[]){1, 1, 1}, 3);
    sequence(&lg_lb_round_robin, &params, 3, 7, seq);
    ok_str(seq, "ABCABCA");
    /* EDF: each host is due every 1/weight, ties to the earliest added */
    setup((uint32_t[]){1, 2, 4}, 3);
    sequence(&lg_lb_round_robin, &params, 3, 14, seq);
    ok_str(seq, "CBCCABCCBCCABC");
    setup((uint32_t[]){4, 1}, 2);
    sequence(&lg_lb_round_robin, &params, 2, 9, seq);
    ok_str(seq, "AAABAAAAB");
    /* a seed only moves the starting point */
    params.seed = 1;
    setup((uint32_t[]){1, 1, 1}, 3);
    sequence(&lg_lb_round_robin, &params, 3, 4, seq);
    ok_str(seq, "BCAB");
    setup((uint32_t[]){1, 2, 4}, 3);
    sequence(&lg_lb_round_robin, &params, 3, 7, seq);
    ok_str(seq, "BCCABCC");
    setup((uint32_t[]){5}, 1);
    sequence(&lg_lb_round_robin, &params, 1, 3, seq);
    ok_str(seq, "AAA");
}

static void test_least_request(void)
{
    lg_lb_params_t params = {2, 1.0, 42};
    size_t counts[N] = {0};
    /* power of two choices: the idle host wins whenever it is sampled, 1 - (3/4)^2 of the time */
    setup((uint32_t[]){1, 1, 1, 1}, 4);
    hosts[0].active_requests = 5, hosts[1].active_requests = 0, hosts[2].active_requests = 5, hosts[3].active_requests = 5;
    lg_lb_t *lb = lg_lb_least_request.create(ptrs, 4, &params);
    for (int i = 0; i != 4000; ++i)
        ++counts[lg_lb_least_request.pick(lb) - hosts];
    lg_lb_least_request.destroy(lb);
    ok(counts[1] > 1500 && counts[1] < 2000, "idle host picked %zu/4000 times (expected ~1750)", counts[1]);
    ok(counts[0] < counts[1] && counts[2] < counts[1] && counts[3] < counts[1], "busy hosts picked less");
    /* choice_count covering every host: a full scan, the least loaded always wins */
    setup((uint32_t[]){1, 1}, 2);
    hosts[0].active_requests = 3, hosts[1].active_requests = 1;
    lb = lg_lb_least_request.create(ptrs, 2, &params);
    int all_b = 1;
    for (int i = 0; i != 100; ++i)
        all_b &= lg_lb_least_request.pick(lb) == &hosts[1];
    ok(all_b, "full scan picks the least loaded host");
    hosts[1].active_requests = 3;
    memset(counts, 0, sizeof(counts));
    for (int i = 0; i != 1000; ++i)
        ++counts[lg_lb_least_request.pick(lb) - hosts];
    ok(counts[0] > 300 && counts[1] > 300, "ties are broken randomly (%zu/%zu)", counts[0], counts[1]);
    lg_lb_least_request.destroy(lb);
    /* weighted: EDF over weight / (active + 1) */
    setup((uint32_t[]){1, 2}, 2);
    lb = lg_lb_least_request.create(ptrs, 2, &params);
    memset(counts, 0, sizeof(counts));
    for (int i = 0; i != 300; ++i)
        ++counts[lg_lb_least_request.pick(lb) - hosts];
    ok(counts[0] == 100 && counts[1] == 200, "idle weighted hosts share by weight (%zu/%zu)", counts[0], counts[1]);
    hosts[1].active_requests = 3; /* effective weight 2/4 against 1/1 */
    memset(counts, 0, sizeof(counts));
    for (int i = 0; i != 300; ++i)
        ++counts[lg_lb_least_request.pick(lb) - hosts];
    ok(counts[0] > 180 && counts[1] < 120, "a loaded heavy host gets less (%zu/%zu)", counts[0], counts[1]);
    lg_lb_least_request.destroy(lb);
}

static void test_random(void)
{
    lg_lb_params_t params = {2, 1.0, 7};
    size_t counts[N] = {0};
    setup((uint32_t[]){1, 1, 100}, 3);
    lg_lb_t *lb = lg_lb_random.create(ptrs, 3, &params);
    for (int i = 0; i != 3000; ++i)
        ++counts[lg_lb_random.pick(lb) - hosts];
    lg_lb_random.destroy(lb);
    for (int i = 0; i != 3; ++i)
        ok(counts[i] > 850 && counts[i] < 1150, "host %d picked %zu/3000 times (weights ignored)", i, counts[i]);
}

int main(void)
{
    test_round_robin();
    test_least_request();
    test_random();
    return done();
}
