/*
 * The router's TCP upstream (Envoy's TcpUpstream): a CONNECT terminated by
 * the route's connect_config goes to a raw TCP connection of the cluster
 * (lg_upstream_tcp_connect), which this wraps as a client stream of
 * codec-t.h so that the router drives it like any HTTP upstream.
 *
 * The stream has no head to send (send_headers and send_trailers only end
 * the request side when asked to); its response head is the router's own
 * synthetic 200. Body bytes are the socket's: what is read is delivered by
 * on_data as slices of the socket's input buffer (reading stops until they
 * are consumed), what is sent is written as is. The end of the request
 * half-closes the socket; the peer's EOF ends the response. The stream
 * completes when both are done.
 */
#ifndef LEGATE_ROUTER_TCP_H
#define LEGATE_ROUTER_TCP_H

#include "legate/cluster.h"
#include "legate/codec-t.h"
#include "legate/worker-t.h"

/* Takes over the connected `u`; the caller sets s->cbs and s->ctx. No
 * callback fires before this returns. */
lg_stream_t *lg_router_tcp_stream_new(lg_loop_t *loop, lg_upstream_tcp_t *u);

#endif
