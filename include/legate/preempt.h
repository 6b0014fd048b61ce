/*
 * The control thread's preemption tick: while it decodes and compiles an
 * update, a timer interrupts it every LG_PREEMPT_TICK_US and lets the
 * scheduler hand the core to a worker that is waiting for it.
 */
#ifndef LEGATE_PREEMPT_H
#define LEGATE_PREEMPT_H

#ifdef __cplusplus
extern "C" {
#endif

#define LG_PREEMPT_TICK_US 200

/* Gives the calling thread its tick (stopped). 0, or -1 with errno set. */
int lg_preempt_tick_init(void);
/* Starts and stops the calling thread's tick; no-ops on a thread without one,
 * and when it already runs or is already stopped. */
void lg_preempt_tick_start(void);
void lg_preempt_tick_stop(void);
/* How many times the calling thread's tick has fired. */
unsigned long lg_preempt_tick_count(void);

#ifdef __cplusplus
}
#endif

#endif
