#ifndef LEGATE_LISTENER_RUNTIME_H
#define LEGATE_LISTENER_RUNTIME_H

#include <errno.h>
#include "legate/common.h"
#include "legate/listener-t.h"
#include "legate/worker-t.h"

typedef struct st_lg_snapshot_t lg_snapshot_t;

/* Opens a bound, listening, non-blocking socket (SO_REUSEPORT); -1 with err. */
int lg_listen_socket_open(const lg_listener_config_t *l, lg_error_t *err);
/* Whether accept failed for want of a resource (EMFILE, ENFILE, ENOBUFS,
 * ENOMEM): the connection stays in the backlog and the socket readable, so
 * the caller backs off instead of trying again at once (Linux checks the
 * descriptor table before the backlog: EMFILE also when nothing is pending). */
static inline int lg_accept_out_of_resources(int e)
{
    return e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM;
}
/* The listeners and the admin's rest this long after such a failure. */
#define LG_ACCEPT_BACKOFF_MS 100
/* The accept failures of one accept loop (a worker's, the admin's): a warning
 * when they start, debug lines while they go on, and an info line when a
 * batch of accepts works again. */
typedef struct st_lg_accept_backoff_t {
    uint64_t failures; /* since accepts last worked */
} lg_accept_backoff_t;
void lg_accept_backoff_failed(lg_accept_backoff_t *b, const char *listener, int err);
void lg_accept_backoff_worked(lg_accept_backoff_t *b);
/* Accepts what is pending on a worker's listening socket; returns how many.
 * *err: the errno of an accept that failed for want of a resource, else 0. */
size_t lg_listener_accept(lg_worker_t *w, lg_listener_config_t *l, lg_snapshot_t *snap, h2o_socket_t *listener, int *err);
/* Closes this worker's connections that have not reached their network filter
 * yet (in tls_inspector, the TLS handshake or codec sniffing): call on the
 * worker's thread before it exits, so that they release their snapshot (and
 * the thread's cache of pending connection objects is freed), and the HCM's
 * timer of the thread is stopped for good (lg_hcm_thread_exit). */
void lg_listener_close_pending(void);
/* Ends the listener's count of a connection whose network filter took it
 * over (downstream_cx_active, _destroy, _length_ms; see lg_hcm_conn_new):
 * call on the worker `w` when its socket is closed, while the listener's
 * snapshot is still held. `start_ms` is the lg_now_ms() the count began. */
void lg_listener_uncount(const lg_listener_config_t *l, lg_worker_t *w, uint64_t start_ms);
/* This worker's accepted sockets not yet disposed (their owners may have let
 * them go already: a socket lingers a little after its close). */
size_t lg_listener_counted_sockets(void);

#endif
