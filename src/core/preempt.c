/*
 * The control thread's preemption tick.
 *
 * Decoding and compiling a large xDS push keeps the control thread on a CPU
 * for tens of milliseconds. Where it shares a core with a worker (a pod with
 * one CPU, more workers than cores), a worker woken by a request should get
 * the core at once, and nice +10 was meant to see to that. It does not on
 * Linux's EEVDF scheduler (6.6 and later): a waking thread does not preempt
 * one that is inside its protected slice (RUN_TO_PARITY, ~1.4 ms here), and
 * the end of the protection is noticed only at the next scheduler tick (4 ms
 * at HZ=250). On the bench machine the worker waited 4-5 ms at a time behind
 * the control thread during back-to-back 10,000-route pushes; its run-queue
 * wait was 75-120 ms per 4 s window (bench/README.md, "The worker behind the
 * control thread").
 *
 * So, while it works on an update, the control thread runs a timer of its own
 * (CLOCK_MONOTONIC, delivered to this thread only) every LG_PREEMPT_TICK_US;
 * its handler calls sched_yield(), which makes the scheduler pick again: a
 * runnable worker gets the core within a tick, and with nothing else runnable
 * the call returns at once. The tick is stopped while the thread waits for
 * work, so an idle proxy takes no signals. The handler is installed with
 * SA_RESTART, so the thread's interrupted reads and writes resume.
 */
#define _GNU_SOURCE /* SIGEV_THREAD_ID */
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include "legate/preempt.h"

#ifndef sigev_notify_thread_id
#define sigev_notify_thread_id _sigev_un._tid
#endif

static __thread struct {
    timer_t timer;
    unsigned char created, running;
    volatile unsigned long fired;
} tick;

static void on_tick(int sig)
{
    (void)sig;
    int saved = errno;
    ++tick.fired;
    sched_yield();
    errno = saved;
}

int lg_preempt_tick_init(void)
{
    if (tick.created)
        return 0;
    int signo = SIGRTMIN + 1;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_tick;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(signo, &sa, NULL) != 0)
        return -1;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, signo);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    struct sigevent sev;
    memset(&sev, 0, sizeof(sev));
    sev.sigev_notify = SIGEV_THREAD_ID;
    sev.sigev_signo = signo;
    sev.sigev_notify_thread_id = (pid_t)syscall(SYS_gettid);
    if (timer_create(CLOCK_MONOTONIC, &sev, &tick.timer) != 0)
        return -1;
    tick.created = 1;
    return 0;
}

static void set_tick(int on)
{
    struct itimerspec its;
    memset(&its, 0, sizeof(its));
    if (on)
        its.it_value.tv_nsec = its.it_interval.tv_nsec = LG_PREEMPT_TICK_US * 1000L;
    if (timer_settime(tick.timer, 0, &its, NULL) == 0)
        tick.running = (unsigned char)on;
}

void lg_preempt_tick_start(void)
{
    if (tick.created && !tick.running)
        set_tick(1);
}

void lg_preempt_tick_stop(void)
{
    if (tick.running)
        set_tick(0);
}

unsigned long lg_preempt_tick_count(void)
{
    return tick.fired;
}
