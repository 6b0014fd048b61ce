/*
 * A worker thread: one event loop, its own accept sockets, connection pools
 * and stats row. Everything reachable from a worker's connections is touched
 * by that worker only.
 */
#ifndef LEGATE_WORKER_T_H
#define LEGATE_WORKER_T_H

#include <pthread.h>
#include <h2o/socket.h>
#include <h2o/timeout.h>
#include <h2o/multithread.h>

/* A one-shot timer on a worker's loop (timer.h). A zeroed timer is stopped.
 * Active timers sit in the loop's timer wheel (src/core/timer.c): one h2o
 * timeout entry wakes the loop for the whole wheel. */
typedef struct st_lg_timer_t lg_timer_t;
typedef void (*lg_timer_cb)(lg_timer_t *t);
/* 32 bytes: a timer does not store its wheel slot (the wheel finds it from the
 * slot's anchor, see lg__timer_unlink). */
#define LG__TIMER_DEFERRED UINT64_MAX /* the deadline of a timer armed for 0 ms; others are below */
struct st_lg_timer_t {
    h2o_linklist_t _link; /* in a wheel slot while active */
    lg_timer_cb cb;
    uint64_t _deadline; /* loop time (ms) it fires at, not before its slot's time; LG__TIMER_DEFERRED when armed for 0 ms */
};

typedef struct st_lg_timer_wheel_t lg_timer_wheel_t;

typedef struct st_lg_loop_t {
    h2o_loop_t *loop;
    lg_timer_wheel_t *_wheel;
} lg_loop_t;

/* The overload actions a worker applies (src/core/overload.c), each as a
 * value in [0, 1] that the worker turns into a decision per request or
 * connection (Envoy's bernoulli): 0 never, 1 always (saturated). */
typedef enum en_lg_overload_action_t {
    LG_OVERLOAD_STOP_ACCEPTING_REQUESTS, /* envoy.overload_actions.stop_accepting_requests: 503 */
    LG_OVERLOAD_DISABLE_HTTP_KEEPALIVE,  /* envoy.overload_actions.disable_http_keepalive */
    LG_OVERLOAD_REJECT_CONNECTIONS,      /* envoy.overload_actions.reject_incoming_connections */
    LG_OVERLOAD_STOP_CONNECTIONS,        /* envoy.overload_actions.stop_accepting_connections (when saturated) */
    LG_OVERLOAD__WORKER_ACTIONS
} lg_overload_action_t;

typedef struct st_lg_worker_t lg_worker_t;
struct st_lg_worker_t {
    size_t index; /* 0 .. concurrency-1: the row of every stats block */
    lg_loop_t loop;
    pthread_t thread;
    h2o_multithread_queue_t *queue;
    h2o_multithread_receiver_t config_receiver;
    struct st_lg_snapshot_t *snapshot;            /* current config, refcounted */
    void *data;                                   /* the worker's runtime views (clusters, listeners) */
    double overload[LG_OVERLOAD__WORKER_ACTIONS]; /* this worker's copy, sent by the control thread */
};

/* The worker running on this thread, or NULL on the control/admin threads. */
extern __thread lg_worker_t *lg_current_worker;

#endif
