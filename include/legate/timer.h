#ifndef LEGATE_TIMER_H
#define LEGATE_TIMER_H

#include "legate/worker-t.h"

void lg_loop_init(lg_loop_t *l, h2o_loop_t *loop);
void lg_loop_dispose(lg_loop_t *l);
/* (Re)arms t to fire once after ms milliseconds; ms == 0 fires on the next loop turn. */
void lg_timer_start(lg_loop_t *l, lg_timer_t *t, uint64_t ms, lg_timer_cb cb);
void lg_timer_stop(lg_timer_t *t);
/* lg_timer_start() for timers that are re-armed often with the same ms and cb
 * (idle timeouts touched on every event): a no-op when t is active and was
 * armed at the current loop time, since re-arming would give the same
 * deadline. The caller uses lg_timer_start() whenever ms or cb changes. */
void lg_timer_touch(lg_loop_t *l, lg_timer_t *t, uint64_t ms, lg_timer_cb cb);
static inline int lg_timer_is_active(lg_timer_t *t)
{
    return h2o_timeout_is_linked(&t->_entry);
}

#endif
