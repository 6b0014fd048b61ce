#include "legate/common.h"
#include "legate/timer.h"

__thread lg_worker_t *lg_current_worker;

void lg_loop_init(lg_loop_t *l, h2o_loop_t *loop)
{
    *l = (lg_loop_t){loop};
    l->_nslots = 16;
    l->_slots = lg_calloc(l->_nslots, sizeof(*l->_slots));
}

void lg_loop_dispose(lg_loop_t *l)
{
    for (size_t i = 0; i != l->_nslots; ++i) {
        if (l->_slots[i].timeout != NULL) {
            h2o_timeout_dispose(l->loop, l->_slots[i].timeout);
            free(l->_slots[i].timeout);
        }
    }
    free(l->_slots);
    l->_slots = NULL;
}

static lg_timeout_slot_t *find_slot(lg_timeout_slot_t *slots, size_t n, uint64_t ms)
{
    size_t i = (size_t)(ms * 0x9E3779B97F4A7C15ull >> 32) & (n - 1);
    while (slots[i].timeout != NULL && slots[i].ms != ms)
        i = (i + 1) & (n - 1);
    return slots + i;
}

static h2o_timeout_t *timeout_for(lg_loop_t *l, uint64_t ms)
{
    lg_timeout_slot_t *s = find_slot(l->_slots, l->_nslots, ms);
    if (s->timeout != NULL)
        return s->timeout;
    if ((l->_used + 1) * 2 > l->_nslots) {
        size_t n = l->_nslots * 2;
        lg_timeout_slot_t *slots = lg_calloc(n, sizeof(*slots));
        for (size_t i = 0; i != l->_nslots; ++i)
            if (l->_slots[i].timeout != NULL)
                *find_slot(slots, n, l->_slots[i].ms) = l->_slots[i];
        free(l->_slots);
        l->_slots = slots;
        l->_nslots = n;
        s = find_slot(slots, n, ms);
    }
    s->ms = ms;
    s->timeout = lg_malloc(sizeof(*s->timeout));
    h2o_timeout_init(l->loop, s->timeout, ms);
    ++l->_used;
    return s->timeout;
}

static void on_entry(h2o_timeout_entry_t *e)
{
    lg_timer_t *t = H2O_STRUCT_FROM_MEMBER(lg_timer_t, _entry, e);
    t->cb(t);
}

void lg_timer_start(lg_loop_t *l, lg_timer_t *t, uint64_t ms, lg_timer_cb cb)
{
    lg_timer_stop(t);
    t->cb = cb;
    t->_entry.cb = on_entry;
    h2o_timeout_link(l->loop, timeout_for(l, ms), &t->_entry);
}

void lg_timer_touch(lg_loop_t *l, lg_timer_t *t, uint64_t ms, lg_timer_cb cb)
{
    if (h2o_linklist_is_linked(&t->_entry._link) && t->cb == cb && t->_entry.registered_at == h2o_now(l->loop))
        return;
    lg_timer_start(l, t, ms, cb);
}

void lg_timer_stop(lg_timer_t *t)
{
    if (h2o_linklist_is_linked(&t->_entry._link))
        h2o_timeout_unlink(&t->_entry);
}
