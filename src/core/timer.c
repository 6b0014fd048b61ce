/*
 * Timers: a hierarchical timer wheel per loop, woken by one h2o timeout entry.
 *
 * Level k has 64 slots of 64^k ms. A timer due at `at` is filed by the highest
 * 6-bit digit in which `at` differs from the wheel's time `cur`: at level 0 a
 * slot holds the timers due at one exact millisecond; above, a slot is a range
 * that is cascaded (its timers re-filed lower) when `cur` reaches its start.
 * So the earliest occupied slot is the lowest set bit of the lowest non-empty
 * level, and the loop sleeps until that slot's time (or until the earliest
 * deadline in it, when that is known cheaply). The driver is an entry of
 * a 0 ms h2o_timeout_t whose registered_at is set to that time: h2o fires it
 * once its loop time reaches it, and computes epoll's wait from it.
 *
 * Re-arming is lazy: a timer re-armed to a deadline not before its current one
 * stays in its slot with the new deadline, and is re-filed when the slot comes
 * due. Idle timeouts touched on every event are then a compare and a store.
 * A timer does not store its slot: wheels are WHEEL_ALIGN-aligned, so the
 * anchor of a slot (the next link of the last timer in it) gives the wheel
 * and the slot's index.
 *
 * Timers armed for 0 ms (deferred work) sit in a list of their own, run first
 * in a timer phase.
 */
#include "legate/common.h"
#include "legate/timer.h"

#define WHEEL_BITS 6
#define WHEEL_SLOTS (1u << WHEEL_BITS)
#define WHEEL_LEVELS 11                        /* 66 bits: every 64-bit time */
#define ZERO_SLOT (WHEEL_LEVELS * WHEEL_SLOTS) /* the timers armed for 0 ms */
/* A wheel is allocated at this alignment, so a slot's anchor gives its wheel. */
#define WHEEL_ALIGN 16384

struct st_lg_timer_wheel_t {
    h2o_loop_t *loop;
    uint64_t cur;     /* every timer before cur has fired; every slot's time is >= cur */
    uint64_t wake_at; /* the driver's time (UINT64_MAX: not linked; 0: due, or running) */
    uint64_t occupied[WHEEL_LEVELS];
    h2o_timeout_t driver;
    h2o_timeout_entry_t driver_entry;
    /* last: lg_timer_stop() finds the wheel from a slot. The extra slot holds the
     * timers armed for 0 ms (deferred work); they run first in a timer phase, as
     * h2o's 0 ms list did, before the timeouts that came due meanwhile. */
    h2o_linklist_t slots[WHEEL_LEVELS * WHEEL_SLOTS + 1];
};

__thread lg_worker_t *lg_current_worker;

static void on_driver(h2o_timeout_entry_t *e);

void lg_loop_init(lg_loop_t *l, h2o_loop_t *loop)
{
    _Static_assert(sizeof(lg_timer_wheel_t) <= WHEEL_ALIGN, "a wheel fits its alignment");
    lg_timer_wheel_t *w = aligned_alloc(WHEEL_ALIGN, WHEEL_ALIGN);
    if (w == NULL) {
        fprintf(stderr, "legate: out of memory allocating a timer wheel\n");
        abort();
    }
    memset(w, 0, sizeof(*w));
    w->loop = loop;
    w->cur = h2o_now(loop);
    w->wake_at = UINT64_MAX;
    h2o_timeout_init(loop, &w->driver, 0);
    w->driver_entry.cb = on_driver;
    for (size_t i = 0; i != WHEEL_LEVELS * WHEEL_SLOTS + 1; ++i)
        h2o_linklist_init_anchor(w->slots + i);
    *l = (lg_loop_t){loop, w};
}

void lg_loop_dispose(lg_loop_t *l)
{
    lg_timer_wheel_t *w = l->_wheel;
    if (w == NULL)
        return;
    h2o_timeout_unlink(&w->driver_entry);
    h2o_timeout_dispose(l->loop, &w->driver);
    free(w);
    l->_wheel = NULL;
}

/* The time the slot is looked at: its timers' due time at level 0, the start of its range above. */
static uint64_t slot_time(const lg_timer_wheel_t *w, unsigned slot)
{
    unsigned shift = slot / WHEEL_SLOTS * WHEEL_BITS, above = shift + WHEEL_BITS;
    uint64_t prefix = above >= 64 ? 0 : w->cur >> above << above;
    return prefix | (uint64_t)(slot % WHEEL_SLOTS) << shift;
}

/* The earliest occupied slot (UINT64_MAX if none); its time goes to *at. */
static unsigned next_slot(const lg_timer_wheel_t *w, uint64_t *at)
{
    for (unsigned k = 0; k != WHEEL_LEVELS; ++k) {
        if (w->occupied[k] != 0) {
            unsigned slot = k * WHEEL_SLOTS + (unsigned)__builtin_ctzll(w->occupied[k]);
            *at = slot_time(w, slot);
            return slot;
        }
    }
    *at = UINT64_MAX;
    return 0;
}

/* When the loop must wake: the earliest occupied slot's time; for a range
 * holding a few timers, their earliest deadline (every later slot starts
 * after the range), so that an idle loop does not wake only to cascade. */
static uint64_t wake_time(const lg_timer_wheel_t *w)
{
    uint64_t at;
    if (w->slots[ZERO_SLOT].next != w->slots + ZERO_SLOT)
        return 0; /* due */
    unsigned slot = next_slot(w, &at), n = 0;
    if (slot < WHEEL_SLOTS || at == UINT64_MAX)
        return at;
    uint64_t span = 1ull << (slot / WHEEL_SLOTS * WHEEL_BITS), min = at > UINT64_MAX - span ? UINT64_MAX : at + span;
    for (const h2o_linklist_t *l = w->slots[slot].next; l != w->slots + slot; l = l->next) {
        const lg_timer_t *t = H2O_STRUCT_FROM_MEMBER(lg_timer_t, _link, l);
        if (++n > 8)
            return at;
        if (t->_deadline < min)
            min = t->_deadline;
    }
    return min;
}

__attribute__((noinline)) static void set_wake(lg_timer_wheel_t *w, uint64_t at)
{
    w->wake_at = at;
    if (at == UINT64_MAX) {
        h2o_timeout_unlink(&w->driver_entry);
        return;
    }
    if (!h2o_timeout_is_linked(&w->driver_entry))
        h2o_timeout_link(w->loop, &w->driver, &w->driver_entry);
    w->driver_entry.registered_at = at; /* the entry is alone in its 0 ms list: order holds */
}

/* Files t, due at `at` (>= w->cur), in the wheel. */
static inline void file(lg_timer_wheel_t *w, lg_timer_t *t, uint64_t at)
{
    uint64_t cur = w->cur, diff = at ^ cur;
    unsigned slot = (unsigned)at % WHEEL_SLOTS;
    if (diff >= WHEEL_SLOTS) {
        unsigned level = (63 - (unsigned)__builtin_clzll(diff)) / WHEEL_BITS, shift = level * WHEEL_BITS;
        slot = level * WHEEL_SLOTS + (unsigned)(at >> shift) % WHEEL_SLOTS;
    }
    h2o_linklist_insert(w->slots + slot, &t->_link);
    w->occupied[slot / WHEEL_SLOTS] |= 1ull << slot % WHEEL_SLOTS;
    if (at < w->wake_at)
        set_wake(w, at); /* its own deadline: its slot's time is not after it */
}

void lg__timer_unlink(lg_timer_t *t)
{
    h2o_linklist_t *anchor = t->_link.next; /* the slot's anchor when t is the last timer in it */
    int was_last = anchor == t->_link.prev;
    h2o_linklist_unlink(&t->_link);
    if (!was_last)
        return;
    if (t->_deadline == LG__TIMER_DEFERRED)
        return; /* its wake-up is due: this turn's timer phase recomputes it */
    lg_timer_wheel_t *w = (lg_timer_wheel_t *)((uintptr_t)anchor & ~(uintptr_t)(WHEEL_ALIGN - 1));
    unsigned slot = (unsigned)(anchor - w->slots);
    w->occupied[slot / WHEEL_SLOTS] &= ~(1ull << slot % WHEEL_SLOTS);
    /* a wake-up due now is left alone: the driver runs in this turn's timer phase anyway */
    if (w->wake_at > h2o_now(w->loop))
        set_wake(w, wake_time(w));
}

/* lg__timer_start() on an active timer: in place when it moves later (its slot comes due first), else re-filed. */
__attribute__((noinline)) static void rearm(lg_timer_wheel_t *w, lg_timer_t *t, uint64_t deadline)
{
    if (t->_deadline != LG__TIMER_DEFERRED && deadline >= t->_deadline) {
        t->_deadline = deadline;
        if (deadline < w->wake_at)
            set_wake(w, deadline);
        return;
    }
    lg__timer_unlink(t);
    t->_deadline = deadline;
    file(w, t, deadline);
}

void lg__timer_start(lg_loop_t *l, lg_timer_t *t, uint64_t ms, lg_timer_cb cb)
{
    lg_timer_wheel_t *w = l->_wheel;
    uint64_t now = h2o_now(l->loop), cur = w->cur;
    if (now < cur)
        now = cur; /* h2o's clock is the wall clock: when it goes back, wheel time stands still */
    uint64_t deadline = ms >= LG__TIMER_DEFERRED - now ? LG__TIMER_DEFERRED - 1 : now + ms;
    t->cb = cb;
    if (ms == 0) {
        if (h2o_linklist_is_linked(&t->_link))
            lg__timer_unlink(t);
        t->_deadline = LG__TIMER_DEFERRED; /* no lazy re-arm in lg_timer_start(): re-armed, it leaves this list */
        h2o_linklist_insert(w->slots + ZERO_SLOT, &t->_link);
        if (w->wake_at != 0)
            set_wake(w, 0);
        return;
    }
    if (h2o_linklist_is_linked(&t->_link)) {
        rearm(w, t, deadline);
        return;
    }
    t->_deadline = deadline;
    file(w, t, deadline);
}

/* Fires the 0 ms timers, then fires or re-files every timer whose slot is due at now, in time order. */
static void run(lg_timer_wheel_t *w, uint64_t now)
{
    h2o_linklist_t *zero = w->slots + ZERO_SLOT;
    uint64_t at;
    w->wake_at = 0; /* filing from callbacks leaves the driver alone */
    do {
        while (!h2o_linklist_is_empty(zero)) {
            lg_timer_t *t = H2O_STRUCT_FROM_MEMBER(lg_timer_t, _link, zero->next);
            h2o_linklist_unlink(&t->_link);
            t->cb(t);
        }
        for (unsigned slot = next_slot(w, &at); at <= now; slot = next_slot(w, &at)) {
            h2o_linklist_t *anchor = w->slots + slot;
            w->cur = at;
            do {
                lg_timer_t *t = H2O_STRUCT_FROM_MEMBER(lg_timer_t, _link, anchor->next);
                h2o_linklist_unlink(&t->_link);
                if (h2o_linklist_is_empty(anchor))
                    w->occupied[slot / WHEEL_SLOTS] &= ~(1ull << slot % WHEEL_SLOTS);
                if (t->_deadline <= at)
                    t->cb(t);
                else
                    file(w, t, t->_deadline);
            } while (!h2o_linklist_is_empty(anchor));
        }
    } while (!h2o_linklist_is_empty(zero));
    if (now > w->cur)
        w->cur = now;
    set_wake(w, wake_time(w));
}

static void on_driver(h2o_timeout_entry_t *e)
{
    lg_timer_wheel_t *w = H2O_STRUCT_FROM_MEMBER(lg_timer_wheel_t, driver_entry, e);
    run(w, h2o_now(w->loop));
}
