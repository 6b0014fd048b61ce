#ifndef LEGATE_TIMER_H
#define LEGATE_TIMER_H

#include "legate/worker-t.h"

void lg_loop_init(lg_loop_t *l, h2o_loop_t *loop);
/* Frees the timer wheel; timers still active are dropped (stopping one afterwards is undefined). */
void lg_loop_dispose(lg_loop_t *l);

static inline int lg_timer_is_active(lg_timer_t *t)
{
    return h2o_linklist_is_linked(&t->_link);
}

void lg__timer_start(lg_loop_t *l, lg_timer_t *t, uint64_t ms, lg_timer_cb cb);
void lg__timer_unlink(lg_timer_t *t);

/* (Re)arms t to fire once, ms milliseconds after the loop's current time, and
 * not before. ms == 0 fires in the loop's next timer phase: the current
 * turn's, after its I/O callbacks (armed from a timer callback: in the same
 * phase). Timers fire in deadline order (1 ms resolution). A fired timer is
 * stopped before cb runs; cb may restart or stop it or any other timer, and
 * free it. Re-arming an active timer to a later deadline only stores the
 * deadline (the timer is re-filed when its old slot comes due), so touching
 * idle timeouts on every event costs a few instructions. */
static inline void lg_timer_start(lg_loop_t *l, lg_timer_t *t, uint64_t ms, lg_timer_cb cb)
{
    uint64_t deadline;
    if (lg_timer_is_active(t) && !__builtin_add_overflow(h2o_now(l->loop), ms, &deadline) && deadline != LG__TIMER_DEFERRED &&
        deadline >= t->_deadline) {
        t->_deadline = deadline;
        t->cb = cb;
        return;
    }
    lg__timer_start(l, t, ms, cb);
}

/* The same as lg_timer_start(), for timers touched on every event (idle timeouts). */
static inline void lg_timer_touch(lg_loop_t *l, lg_timer_t *t, uint64_t ms, lg_timer_cb cb)
{
    lg_timer_start(l, t, ms, cb);
}

/* Stops t if active; afterwards t's memory may be freed. */
static inline void lg_timer_stop(lg_timer_t *t)
{
    if (lg_timer_is_active(t))
        lg__timer_unlink(t);
}

#endif
