/*
 * Earliest deadline first scheduling, as Envoy's EdfScheduler: each entry is
 * due at current_time + 1/weight; the earliest is picked, time advances to
 * its deadline and it is re-added with its (possibly new) weight. Ties go to
 * the entry added first, which makes the sequence deterministic.
 */
#include "legate/common.h"
#include "upstream.h"

static int edf_less(const lg__edf_entry_t *a, const lg__edf_entry_t *b)
{
    return a->deadline < b->deadline || (a->deadline == b->deadline && a->order < b->order);
}

static void sift_up(lg__edf_t *e, size_t i)
{
    while (i != 0) {
        size_t parent = (i - 1) / 2;
        if (!edf_less(&e->heap[i], &e->heap[parent]))
            break;
        lg__edf_entry_t t = e->heap[i];
        e->heap[i] = e->heap[parent];
        e->heap[parent] = t;
        i = parent;
    }
}

static void sift_down(lg__edf_t *e, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < e->size && edf_less(&e->heap[l], &e->heap[m]))
            m = l;
        if (r < e->size && edf_less(&e->heap[r], &e->heap[m]))
            m = r;
        if (m == i)
            return;
        lg__edf_entry_t t = e->heap[i];
        e->heap[i] = e->heap[m];
        e->heap[m] = t;
        i = m;
    }
}

void lg__edf_init(lg__edf_t *e, size_t capacity)
{
    *e = (lg__edf_t){lg_malloc(capacity * sizeof(e->heap[0])), 0, 0, 0};
}

void lg__edf_dispose(lg__edf_t *e)
{
    free(e->heap);
    e->heap = NULL;
}

void lg__edf_add(lg__edf_t *e, double weight, lg_host_t *host)
{
    /* a zero weight would never be due; Envoy's weights are >= 1, effective ones > 0 */
    if (!(weight > 0))
        weight = 1e-9;
    e->heap[e->size] = (lg__edf_entry_t){e->current_time + 1.0 / weight, e->next_order++, host};
    sift_up(e, e->size++);
}

lg_host_t *lg__edf_pick(lg__edf_t *e)
{
    lg__edf_entry_t top = e->heap[0];
    e->heap[0] = e->heap[--e->size];
    sift_down(e, 0);
    e->current_time = top.deadline;
    return top.host;
}
