/*
 * The xDS client: subscriptions from the bootstrap's dynamic_resources (ADS
 * or per-type gRPC streams, SotW or delta, and path_config_source files),
 * and the application of what they deliver. Every resource is compiled by
 * the same functions as static config into a new snapshot that shares the
 * unchanged objects of the previous one, then published with
 * lg_server_publish().
 *
 * Threads: everything here runs on the control thread, which calls
 * lg_xds_poll() in its loop (it also handles signals between polls). gRPC
 * core runs its own threads; its completion queue is drained by
 * lg_xds_poll() only.
 */
#ifndef LEGATE_XDS_H
#define LEGATE_XDS_H

#include "legate/common.h"
#include "legate/options.h"
#include "legate/server.h"
#include "legate/xds-t.h"
#include "envoy/config/bootstrap/v3/bootstrap.pb-c.h"

/* Type URLs ("type.googleapis.com/envoy.config.cluster.v3.Cluster") and
 * short names ("cds") of the resource types. */
extern const char *const lg_xds_type_urls[LG_XDS__NTYPES];
extern const char *const lg_xds_type_names[LG_XDS__NTYPES];
/* The type of a type URL, or -1. */
int lg_xds_type_of_url(const char *url);

/*
 * Takes over the resources of `initial` (the static snapshot, already
 * published) and prepares the subscriptions of `b->dynamic_resources`
 * (nothing is sent yet). `b` outlives the client. NULL with err naming the
 * bootstrap field when the config sources are invalid.
 */
lg_xds_t *lg_xds_new(const Envoy__Config__Bootstrap__V3__Bootstrap *b, const lg_options_t *o, lg_snapshot_t *initial,
                     lg_error_t *err);
/* Starts the subscriptions (Envoy's order: CDS first, LDS once clusters are initialized). */
void lg_xds_start(lg_xds_t *x);
/* Waits up to max_wait_ms for xDS events (gRPC completions, file changes,
 * timers) and handles them; returns sooner when something happened. */
void lg_xds_poll(lg_xds_t *x, uint64_t max_wait_ms);
/* Non-zero once the initial fetches are done or timed out and what they
 * delivered has warmed (Envoy's init manager): the server may go LIVE. */
int lg_xds_initialized(const lg_xds_t *x);
/* Closes the streams and frees everything (gRPC is shut down). */
void lg_xds_free(lg_xds_t *x);

/* ---- resource records and dumps (any thread) ---- */
lg_xds_resource_t *lg_xds_resource_ref(lg_xds_resource_t *r);
void lg_xds_resource_release(lg_xds_resource_t *r);
lg_xds_dump_t *lg_xds_dump_ref(lg_xds_dump_t *d);
void lg_xds_dump_release(lg_xds_dump_t *d);

#endif
