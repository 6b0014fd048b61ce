#ifndef LEGATE_SHADOW_H
#define LEGATE_SHADOW_H

/* Envoy's request mirroring (RouteAction.request_mirror_policies): a copy of
 * the request goes to the shadow cluster with "-shadow" added to its host;
 * its response is read and dropped, its failures are only counted by the
 * shadow cluster's stats. The copy owns its head and body (the body is
 * copied, up to a limit), so it outlives the request it copies: it is sent
 * once that request has been received whole, as Envoy's shadowing does
 * without its streaming_shadow feature (which sends the body as it arrives);
 * request trailers are not copied. */

#include "legate/cluster.h"
#include "legate/http-t.h"

typedef struct st_lg_shadow_t lg_shadow_t;

/* A copy of `head` (the request as the router sends it upstream) for
 * `cluster`; the body follows with lg_shadow_data(), which sends it once the
 * request is whole. `body_limit`: a longer body drops the copy. */
lg_shadow_t *lg_shadow_new(lg_worker_cluster_t *cluster, const lg_req_head_t *head, int version, size_t body_limit);
/* Appends request body bytes (copied); with end_stream the copy is sent and
 * the caller lets go of it (it frees itself when its exchange ends). Returns
 * the shadow, or NULL once the caller must forget it; *over_limit is set when
 * that is because the body outgrew the buffer limit (the copy is dropped). */
lg_shadow_t *lg_shadow_data(lg_shadow_t *sh, h2o_iovec_t data, int end_stream, int *over_limit);
/* The request will not be whole (reset, trailers the copy cannot carry): drops the copy. */
void lg_shadow_abandon(lg_shadow_t *sh);
/* Drops this thread's copies still in flight (before its clusters go). */
void lg_shadow_thread_exit(void);

#endif
