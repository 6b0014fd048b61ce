/*
 * The control thread's preemption tick: it fires only on a thread that has
 * one and only while started, and a blocking read it interrupts resumes.
 */
#include "legate/preempt.h"
#include "test.h"
#include <pthread.h>
#include <time.h>
#include <unistd.h>

static double thread_cpu_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Runs on the CPU for `ms` of this thread's CPU time. */
static void spin(double ms)
{
    double end = thread_cpu_ms() + ms;
    while (thread_cpu_ms() < end)
        ;
}

/* Spins until the tick fired `n` times, for at most 10 s of CPU. */
static int spin_until_fired(unsigned long n)
{
    double end = thread_cpu_ms() + 10000;
    while (lg_preempt_tick_count() < n)
        if (thread_cpu_ms() > end)
            return 0;
    return 1;
}

static void test_fires_while_started(void)
{
    lg_preempt_tick_start(); /* no tick yet: nothing happens */
    spin(20);
    ok(lg_preempt_tick_count() == 0, "fired %lu times without a tick", lg_preempt_tick_count());
    ok(lg_preempt_tick_init() == 0, "init");
    ok(lg_preempt_tick_init() == 0, "a second init keeps the tick");
    spin(20);
    ok(lg_preempt_tick_count() == 0, "fired %lu times before the start", lg_preempt_tick_count());
    lg_preempt_tick_start();
    lg_preempt_tick_start(); /* already running */
    ok(spin_until_fired(5), "fired %lu times in 10 s of CPU", lg_preempt_tick_count());
    lg_preempt_tick_stop();
    unsigned long n = lg_preempt_tick_count();
    spin(20);
    ok(lg_preempt_tick_count() == n, "fired %lu times after the stop", lg_preempt_tick_count() - n);
    lg_preempt_tick_stop(); /* already stopped */
}

static int fds[2];

static void *writer(void *arg)
{
    (void)arg;
    struct timespec ts = {0, 30 * 1000000}; /* the reader blocks meanwhile, through ~150 ticks */
    nanosleep(&ts, NULL);
    ok(write(fds[1], "x", 1) == 1, "write");
    return NULL;
}

static void test_interrupted_read_resumes(void)
{
    ok(pipe(fds) == 0, "pipe");
    unsigned long before = lg_preempt_tick_count();
    pthread_t t;
    lg_preempt_tick_start();
    pthread_create(&t, NULL, writer, NULL);
    char c = 0;
    ssize_t r = read(fds[0], &c, 1);
    lg_preempt_tick_stop();
    pthread_join(t, NULL);
    ok(r == 1 && c == 'x', "read returned %zd", r);
    ok(lg_preempt_tick_count() > before, "the tick fired during the read");
    close(fds[0]);
    close(fds[1]);
}

static void *other_thread(void *arg)
{
    (void)arg;
    lg_preempt_tick_start(); /* this thread has no tick */
    spin(20);
    ok(lg_preempt_tick_count() == 0, "another thread's tick fired %lu times here", lg_preempt_tick_count());
    return NULL;
}

int main(void)
{
    test_fires_while_started();
    test_interrupted_read_resumes();
    lg_preempt_tick_start();
    pthread_t t;
    pthread_create(&t, NULL, other_thread, NULL);
    pthread_join(t, NULL);
    lg_preempt_tick_stop();
    return done();
}
