#ifndef LEGATE_TIMER_H
#define LEGATE_TIMER_H

#include "legate/worker-t.h"

void lg_loop_init(lg_loop_t *l, h2o_loop_t *loop);
void lg_loop_dispose(lg_loop_t *l);
/* (Re)arms t to fire once after ms milliseconds; ms == 0 fires on the next loop turn. */
void lg_timer_start(lg_loop_t *l, lg_timer_t *t, uint64_t ms, lg_timer_cb cb);
void lg_timer_stop(lg_timer_t *t);
static inline int lg_timer_is_active(lg_timer_t *t)
{
    return h2o_timeout_is_linked(&t->_entry);
}

#endif
