/*
 * The timer wheel: deterministic runs at chosen loop times (the test includes
 * timer.c to drive run() and set the loop's clock), a randomized comparison
 * against a model, and a few turns of a real loop.
 */
#include "../../../src/core/timer.c"
#include "test.h"
#include <stdlib.h>

static h2o_evloop_t *evloop;
static lg_loop_t loop;

static void set_now(uint64_t now)
{
    evloop->_now = now;
}

static void advance(uint64_t now)
{
    set_now(now);
    run(loop._wheel, now);
}

/* ---- fixed scenarios ---- */

typedef struct {
    lg_timer_t t;
    int id;
} rec_timer_t;

static int order[64], norder;
static uint64_t fired_at[64];

static void on_rec(lg_timer_t *t)
{
    rec_timer_t *r = H2O_STRUCT_FROM_MEMBER(rec_timer_t, t, t);
    fired_at[r->id] = h2o_now(evloop);
    order[norder++] = r->id;
}

static void reset_rec(void)
{
    norder = 0;
    memset(fired_at, 0, sizeof(fired_at));
}

static void test_order_and_deadlines(uint64_t base)
{
    rec_timer_t r[6] = {{.id = 0}, {.id = 1}, {.id = 2}, {.id = 3}, {.id = 4}, {.id = 5}};
    uint64_t ms[6] = {300000, 5, 70, 0, 5000, 64};
    reset_rec();
    set_now(base);
    loop._wheel->cur = base;
    for (int i = 0; i != 6; ++i)
        lg_timer_start(&loop, &r[i].t, ms[i], on_rec);
    advance(base);
    ok(norder == 1 && order[0] == 3, "0 ms fires at the current time (base %llu)", (unsigned long long)base);
    for (uint64_t now = base + 1; now <= base + 300001; now += 1 + now % 7)
        advance(now);
    advance(base + 300001);
    ok(norder == 6, "all fired once (%d)", norder);
    int want[6] = {3, 1, 5, 2, 4, 0};
    for (int i = 0; i != 6; ++i) {
        ok(order[i] == want[i], "order[%d] = %d, want %d", i, order[i], want[i]);
        ok(fired_at[i] >= base + ms[i] && fired_at[i] <= base + ms[i] + 7, "timer %d fired at +%llu (deadline +%llu)", i,
           (unsigned long long)(fired_at[i] - base), (unsigned long long)ms[i]);
        ok(!lg_timer_is_active(&r[i].t), "timer %d stopped after firing", i);
    }
    ok(loop._wheel->wake_at == UINT64_MAX && !h2o_timeout_is_linked(&loop._wheel->driver_entry), "empty wheel: loop not woken");
}

/* The wheel slot holding t: its list's anchor is the one link inside the wheel's slots. */
static unsigned slot_of(lg_timer_wheel_t *w, lg_timer_t *t)
{
    h2o_linklist_t *l = t->_link.next;
    while (l < w->slots || l >= w->slots + ZERO_SLOT + 1)
        l = l->next;
    return (unsigned)(l - w->slots);
}

static void test_rearm(void)
{
    uint64_t base = 1700000000000ull;
    rec_timer_t a = {.id = 0}, b = {.id = 1};
    reset_rec();
    set_now(base);
    loop._wheel->cur = base;
    /* longer: lazily kept in place, fires at the new deadline only */
    lg_timer_start(&loop, &a.t, 100, on_rec);
    unsigned slot = slot_of(loop._wheel, &a.t);
    advance(base + 50);
    lg_timer_start(&loop, &a.t, 100, on_rec);
    ok(slot_of(loop._wheel, &a.t) == slot, "re-arm to a later deadline does not move the timer");
    advance(base + 100);
    ok(norder == 0 && lg_timer_is_active(&a.t), "not fired at the old deadline");
    advance(base + 149);
    ok(norder == 0, "not before the new deadline");
    advance(base + 150);
    ok(norder == 1 && fired_at[0] == base + 150, "fires at the new deadline");
    /* shorter: moved */
    reset_rec();
    lg_timer_start(&loop, &b.t, 10000, on_rec);
    advance(base + 200);
    lg_timer_start(&loop, &b.t, 10, on_rec);
    ok(loop._wheel->wake_at == base + 210, "the loop wakes for the shorter deadline (%llu)",
       (unsigned long long)(loop._wheel->wake_at - base));
    advance(base + 209);
    ok(norder == 0, "not early");
    advance(base + 210);
    ok(norder == 1 && fired_at[1] == base + 210, "fires at the shorter deadline");
    advance(base + 20000);
    ok(norder == 1, "fires once");
    /* shorter again: re-filed, fires at the last deadline */
    reset_rec();
    lg_timer_start(&loop, &a.t, 30, on_rec);
    lg_timer_start(&loop, &a.t, 3000, on_rec);
    lg_timer_start(&loop, &a.t, 40, on_rec);
    advance(base + 20039);
    ok(norder == 0, "not before the last deadline");
    advance(base + 20040);
    ok(norder == 1 && fired_at[0] == base + 20040, "last re-arm wins");
    advance(base + 30000);
    ok(norder == 1, "once");
    ok(loop._wheel->wake_at == UINT64_MAX, "idle wheel");
    /* alone in a range, the loop sleeps until the deadline; a shorter re-arm
     * that stays in the range moves the wake-up too */
    reset_rec();
    lg_timer_start(&loop, &a.t, 300000, on_rec);
    ok(loop._wheel->wake_at == base + 330000, "wakes at the deadline, not the range's start");
    uint64_t start = slot_time(loop._wheel, slot_of(loop._wheel, &a.t));
    ok(start < base + 330000, "filed in a range starting before the deadline");
    uint64_t mid = start + (base + 330000 - start) / 2;
    lg_timer_start(&loop, &a.t, mid - (base + 30000), on_rec);
    ok(loop._wheel->wake_at <= mid, "shorter re-arm: the wake-up moves to %llu (at %llu)",
       (unsigned long long)(mid - base), (unsigned long long)(loop._wheel->wake_at - base));
    advance(mid - 1);
    ok(norder == 0, "not before");
    advance(mid);
    ok(norder == 1 && fired_at[0] == mid, "fires at the shorter deadline");
}

static lg_timer_t *victim;
static int self_restarts;

static void on_stop_other(lg_timer_t *t)
{
    order[norder++] = 100;
    lg_timer_stop(victim);
}

static void on_restart_self(lg_timer_t *t)
{
    order[norder++] = 200;
    if (++self_restarts < 3)
        lg_timer_start(&loop, t, 0, on_restart_self);
}

static void on_free_self(lg_timer_t *t)
{
    order[norder++] = 300;
    free(t);
}

static void test_callbacks(void)
{
    uint64_t base = 1700000100000ull;
    rec_timer_t v = {.id = 5};
    lg_timer_t s = {}, r = {};
    reset_rec();
    set_now(base);
    loop._wheel->cur = base;
    victim = &v.t;
    lg_timer_start(&loop, &s, 10, on_stop_other);
    lg_timer_start(&loop, &v.t, 10, on_rec); /* same slot, after s */
    advance(base + 10);
    ok(norder == 1 && order[0] == 100 && !lg_timer_is_active(&v.t), "a callback stops a timer due in the same run");
    advance(base + 100);
    ok(norder == 1, "the stopped timer never fires");
    /* a 0 ms restart from a callback fires in the same timer phase */
    reset_rec();
    self_restarts = 0;
    lg_timer_start(&loop, &r, 5, on_restart_self);
    advance(base + 105);
    ok(norder == 3 && self_restarts == 3 && !lg_timer_is_active(&r), "0 ms restarts from a callback run in the same phase");
    /* a callback may free its timer; a stopped timer's memory may be freed */
    reset_rec();
    lg_timer_t *f = lg_calloc(1, sizeof(*f)), *g = lg_calloc(1, sizeof(*g));
    lg_timer_start(&loop, f, 1, on_free_self);
    lg_timer_start(&loop, g, 1, on_free_self);
    lg_timer_stop(g);
    free(g);
    advance(base + 106);
    ok(norder == 1 && order[0] == 300, "freed in its callback");
    ok(loop._wheel->wake_at == UINT64_MAX, "idle");
    /* stopping the earliest timer moves the wake-up time, stopping the last unlinks the driver */
    rec_timer_t x = {.id = 1}, y = {.id = 2};
    lg_timer_start(&loop, &x.t, 20, on_rec);
    lg_timer_start(&loop, &y.t, 90000, on_rec);
    ok(loop._wheel->wake_at == base + 126, "wake at the earliest");
    lg_timer_stop(&x.t);
    ok(loop._wheel->wake_at > base + 126 && loop._wheel->wake_at <= base + 106 + 90000, "wake moves to the next (%llu)",
       (unsigned long long)(loop._wheel->wake_at - base));
    lg_timer_stop(&y.t);
    ok(loop._wheel->wake_at == UINT64_MAX && !h2o_timeout_is_linked(&loop._wheel->driver_entry), "no timer: no wake-up");
    lg_timer_stop(&y.t); /* stopping twice is fine */
    /* deferred work (0 ms) armed in this turn runs before a timeout that came due meanwhile */
    reset_rec();
    rec_timer_t late = {.id = 1}, work = {.id = 2};
    set_now(base + 300);
    lg_timer_start(&loop, &late.t, 5, on_rec);
    set_now(base + 310); /* the turn's I/O ran past late's deadline */
    lg_timer_start(&loop, &work.t, 0, on_rec);
    advance(base + 310);
    ok(norder == 2 && order[0] == 2 && order[1] == 1, "0 ms work first, then the overdue timer");
    /* a 0 ms timer re-armed for later leaves the 0 ms list */
    reset_rec();
    lg_timer_start(&loop, &work.t, 0, on_rec);
    lg_timer_start(&loop, &work.t, 7, on_rec);
    advance(base + 310);
    ok(norder == 0, "not run as 0 ms work");
    advance(base + 317);
    ok(norder == 1 && fired_at[2] == base + 317, "fires at its new deadline");
}

/* ---- randomized against a model ---- */

#define NT 1500
typedef struct {
    lg_timer_t t;
    int active;
    uint64_t deadline;
    int fired;
    int zero; /* armed for 0 ms: fires first in its run, before overdue timers */
} mt_t;
static mt_t mts[NT];
static uint64_t run_now, last_fired_deadline;
static int errors, chain_budget, nt = NT;

static uint64_t rnd(uint64_t n)
{
    return ((uint64_t)random() << 31 ^ (uint64_t)random()) % n;
}

static uint64_t rnd_ms(void)
{
    switch (rnd(6)) {
    case 0:
        return 0;
    case 1:
        return rnd(70);
    case 2:
        return rnd(5000);
    case 3:
        return rnd(400000);
    case 4:
        return rnd(1ull << 30);
    default:
        return 1 + rnd(3);
    }
}

static void model_start(mt_t *m, uint64_t ms);

static void on_model(lg_timer_t *t)
{
    mt_t *m = H2O_STRUCT_FROM_MEMBER(mt_t, t, t);
    if (!m->active || m->deadline > run_now || (!m->zero && m->deadline < last_fired_deadline)) {
        if (errors < 5)
            fprintf(stderr, "fire: active %d deadline %llu run_now %llu last %llu\n", m->active, (unsigned long long)m->deadline,
                    (unsigned long long)run_now, (unsigned long long)last_fired_deadline);
        ++errors;
    }
    if (!m->zero)
        last_fired_deadline = m->deadline;
    m->active = 0;
    ++m->fired;
    if (lg_timer_is_active(t))
        ++errors;
    if (chain_budget > 0) {
        --chain_budget;
        switch (rnd(4)) {
        case 0:
            model_start(m, rnd_ms());
            break;
        case 1:
            model_start(mts + rnd(nt), rnd_ms());
            break;
        case 2: {
            mt_t *o = mts + rnd(nt);
            lg_timer_stop(&o->t);
            o->active = 0;
        } break;
        }
    }
}

static void model_start(mt_t *m, uint64_t ms)
{
    lg_timer_start(&loop, &m->t, ms, on_model);
    m->active = 1;
    m->deadline = h2o_now(evloop) + ms;
    m->zero = ms == 0;
    if (m->deadline < last_fired_deadline && run_now == h2o_now(evloop))
        last_fired_deadline = 0; /* a new timer due now may fire after later ones already fired in this run */
}

static void test_model(uint64_t base, unsigned seed, int ntimers)
{
    nt = ntimers;
    srandom(seed);
    memset(mts, 0, sizeof(mts));
    errors = 0;
    uint64_t now = base;
    set_now(now);
    loop._wheel->cur = now;
    for (int step = 0; step != 20000; ++step) {
        int nops = (int)rnd(20);
        for (int i = 0; i != nops; ++i) {
            mt_t *m = mts + rnd(nt);
            if (rnd(4) == 0) {
                lg_timer_stop(&m->t);
                m->active = 0;
            } else {
                model_start(m, rnd_ms());
            }
        }
        uint64_t next = UINT64_MAX;
        for (int i = 0; i != NT; ++i)
            if (mts[i].active && mts[i].deadline < next)
                next = mts[i].deadline;
        /* the loop is woken no later than the earliest deadline, and not later for nothing (a wake-up
         * left at the current time is consumed by this turn's timer phase) */
        uint64_t wake = loop._wheel->wake_at;
        if (next == UINT64_MAX ? wake != UINT64_MAX && wake > now : wake > next) {
            if (errors < 5)
                fprintf(stderr, "wake %llu, next %llu, now %llu\n", (unsigned long long)wake, (unsigned long long)next,
                        (unsigned long long)now);
            ++errors;
        }
        switch (rnd(4)) {
        case 0:
            now += rnd(3);
            break;
        case 1:
            now += rnd(200);
            break;
        case 2:
            now += rnd(70000);
            break;
        default:
            if (next != UINT64_MAX && next > now)
                now = next;
        }
        set_now(now);
        run_now = now;
        last_fired_deadline = 0;
        chain_budget = 50;
        if (loop._wheel->wake_at <= now)
            run(loop._wheel, now);
        for (int i = 0; i != NT; ++i)
            if (mts[i].active != lg_timer_is_active(&mts[i].t) || (mts[i].active && mts[i].deadline <= now))
                ++errors;
    }
    ok(errors == 0, "model (seed %u, base %llu, %d timers): %d errors", seed, (unsigned long long)base, ntimers, errors);
    for (int i = 0; i != NT; ++i)
        lg_timer_stop(&mts[i].t);
    ok(loop._wheel->wake_at == UINT64_MAX, "all stopped: idle");
}

/* ---- a real loop ---- */

static int real_fired;
static void on_real(lg_timer_t *t)
{
    ++real_fired;
}

static void test_real_loop(void)
{
    lg_loop_t rl;
    h2o_evloop_t *el = h2o_evloop_create();
    lg_loop_init(&rl, (h2o_loop_t *)el);
    lg_timer_t z = {}, s = {}, l = {};
    lg_timer_start(&rl, &z, 0, on_real);
    lg_timer_start(&rl, &l, 3600 * 1000, on_real);
    h2o_evloop_run(el, 1000);
    ok(real_fired == 1 && !lg_timer_is_active(&z), "0 ms fires in the first turn");
    uint64_t wake = h2o_timeout_get_wake_at(&el->_timeouts);
    ok(wake > h2o_now(el) && wake <= h2o_now(el) + 3600 * 1000, "the loop sleeps until the long timer's slot");
    uint64_t start = h2o_now(el);
    lg_timer_start(&rl, &s, 15, on_real);
    lg_timer_start(&rl, &z, 5, on_real);
    lg_timer_stop(&z);
    while (real_fired != 2)
        h2o_evloop_run(el, 100);
    ok(h2o_now(el) >= start + 15 && !lg_timer_is_active(&z), "fires after its deadline; the stopped one never");
    lg_timer_stop(&l);
    ok(h2o_timeout_get_wake_at(&el->_timeouts) == UINT64_MAX, "no timer: no wake-up");
    lg_loop_dispose(&rl);
    h2o_evloop_destroy(el);
}

int main(void)
{
    evloop = h2o_evloop_create();
    lg_loop_init(&loop, (h2o_loop_t *)evloop);
    test_order_and_deadlines(1700000000000ull);
    test_order_and_deadlines((1ull << 42) - 3);   /* carries through every level */
    test_order_and_deadlines((1ull << 36) - 100); /* a level-6 boundary */
    test_rearm();
    test_callbacks();
    test_model(1700000000000ull, 1, NT);
    test_model((1ull << 42) - 5000, 2, NT);
    test_model(1763875200000ull + 63, 3, NT);
    test_model(1700000000000ull, 4, 3); /* few timers: the loop wakes at exact deadlines */
    test_model(1763875200000ull + 63, 5, 12);
    test_real_loop();
    lg_loop_dispose(&loop);
    h2o_evloop_destroy(evloop);
    return done();
}
