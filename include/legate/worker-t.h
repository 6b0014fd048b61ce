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

/* A one-shot timer on a worker's loop. Any duration may be used: the worker
 * keeps one h2o_timeout_t per distinct duration (config has few). */
typedef struct st_lg_timer_t lg_timer_t;
typedef void (*lg_timer_cb)(lg_timer_t *t);
struct st_lg_timer_t {
    h2o_timeout_entry_t _entry;
    lg_timer_cb cb;
};

typedef struct st_lg_timeout_slot_t {
    uint64_t ms;
    h2o_timeout_t *timeout;
} lg_timeout_slot_t;

typedef struct st_lg_loop_t {
    h2o_loop_t *loop;
    lg_timeout_slot_t *_slots; /* open addressing by ms */
    size_t _nslots, _used;
} lg_loop_t;

typedef struct st_lg_worker_t lg_worker_t;
struct st_lg_worker_t {
    size_t index; /* 0 .. concurrency-1: the row of every stats block */
    lg_loop_t loop;
    pthread_t thread;
    h2o_multithread_queue_t *queue;
    h2o_multithread_receiver_t config_receiver;
    struct st_lg_snapshot_t *snapshot; /* current config, refcounted */
    void *data;                        /* the worker's runtime views (clusters, listeners) */
};

/* The worker running on this thread, or NULL on the control/admin threads. */
extern __thread lg_worker_t *lg_current_worker;

#endif
