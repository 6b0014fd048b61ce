/*
 * Route tables: compile (src/config/route.c) and match (src/router/route_match.c).
 */
#ifndef LEGATE_ROUTE_H
#define LEGATE_ROUTE_H

#include "legate/common.h"
#include "legate/http-t.h"
#include "legate/route-t.h"
#include "legate/stream_info-t.h"

/* ---- compile ---- */

typedef struct st_lg_route_compile_opts_t {
    /* Whether cluster references are checked, unless the config's
     * validate_clusters says otherwise: Envoy's default is true for a
     * route_config inlined in the HCM and false for RDS. */
    int validate_clusters;
    /* Returns non-zero if a cluster of that name exists. Required when
     * clusters are validated. */
    int (*cluster_exists)(void *ctx, const char *name);
    void *ctx;
} lg_route_compile_opts_t;

/* Compiles a RouteConfiguration (the message is copied; the caller keeps
 * ownership of `rc`). `opts` may be NULL (no cluster validation). On error
 * returns NULL and err names the field path, e.g.
 * "virtual_hosts[1].routes[3].match.safe_regex.regex: invalid regex '(': missing ): (".
 * The result holds one reference. */
lg_route_table_t *lg_route_table_compile(const Envoy__Config__Route__V3__RouteConfiguration *rc,
                                         const lg_route_compile_opts_t *opts, lg_error_t *err);
/* Same, without the copy: the table takes `rc` over, an unpacked message
 * (protobuf_c_message_unpack / lg_pbjson_decode with the default allocator),
 * and frees it with the table, or at once when compiling fails. For large
 * configs received over xDS, whose decoded message is otherwise dropped. */
lg_route_table_t *lg_route_table_compile_owned(Envoy__Config__Route__V3__RouteConfiguration *rc,
                                               const lg_route_compile_opts_t *opts, lg_error_t *err);
lg_route_table_t *lg_route_table_retain(lg_route_table_t *t);
/* Drops a reference; the last one frees the table. Not thread-safe against
 * concurrent retains on the same table: snapshots own the references. */
void lg_route_table_release(lg_route_table_t *t);
/* Same as lg_route_table_release (NULL is fine). */
void lg_route_table_free(lg_route_table_t *t);
const char *lg_route_table_name(const lg_route_table_t *t);

/* Standalone matcher compilers for other config compilers (RBAC, retries,
 * rate limits); the results are freed with the *_dispose functions. Errors
 * are relative to the message ("string_match.safe_regex.regex: ..."). */
int lg_string_matcher_compile(const Envoy__Type__Matcher__V3__StringMatcher *m, lg_string_matcher_t *out, lg_error_t *err);
void lg_string_matcher_dispose(lg_string_matcher_t *m);
int lg_header_matcher_compile(const Envoy__Config__Route__V3__HeaderMatcher *m, lg_header_matcher_t *out, lg_error_t *err);
void lg_header_matcher_dispose(lg_header_matcher_t *m);

/* ---- match ---- */

/* Finds the route for a request as Envoy does: virtual host by :authority
 * (exact, then the longest suffix wildcard, then the longest prefix wildcard,
 * then "*"), the vhost's require_tls redirect, then the first route whose
 * match fits. `random` feeds runtime_fraction. Returns NULL when no route
 * matches; *vhost_out (may be NULL) is the vhost found, or NULL. */
const lg_route_t *lg_route_match(const lg_route_table_t *t, const lg_req_head_t *req, uint64_t random,
                                 const lg_vhost_t **vhost_out);
/* The virtual host alone. */
const lg_vhost_t *lg_route_find_vhost(const lg_route_table_t *t, const lg_req_head_t *req);

int lg_string_matcher_match(const lg_string_matcher_t *m, const char *s, size_t len);
/* Matches one HeaderMatcher against a request (pseudo-headers included;
 * several values are joined with ','). */
int lg_header_matcher_match_req(const lg_header_matcher_t *m, const lg_req_head_t *req);
/* Matches against a plain header list (responses, for retriable_headers). */
int lg_header_matcher_match(const lg_header_matcher_t *m, const lg_headers_t *headers);

/* Picks the cluster of a forwarding route: route.cluster, the value of
 * cluster_header (first value; empty if absent), or a weighted cluster chosen
 * by `random % total_weight` (or by the weighted_clusters.header_name value).
 * *wc_out (may be NULL) is the weighted cluster picked, or NULL. The name
 * points into the table or the request. */
h2o_iovec_t lg_route_pick_cluster(const lg_route_t *r, const lg_req_head_t *req, uint64_t random,
                                  const lg_weighted_cluster_t **wc_out);

/* The :path after prefix_rewrite / regex_rewrite of a forwarding route (or a
 * redirect's prefix_rewrite / regex_rewrite), query preserved; returns {NULL,0}
 * when the route rewrites nothing. `path` is the request's :path. */
h2o_iovec_t lg_route_path_rewrite(const lg_route_t *r, h2o_iovec_t path, h2o_mem_pool_t *pool);
/* The host after host_rewrite_literal / host_rewrite_header /
 * host_rewrite_path_regex (weighted cluster's literal first); {NULL,0} if
 * unchanged. auto_host_rewrite is the router's job (it knows the host). */
h2o_iovec_t lg_route_host_rewrite(const lg_route_t *r, const lg_weighted_cluster_t *wc, const lg_req_head_t *req,
                                  h2o_mem_pool_t *pool);
/* The Location of a redirect route (Envoy's newPath), path rewrites included.
 * For a direct_response route (Envoy sets Location on 201 and 3xx) it is the
 * request's own URL. */
h2o_iovec_t lg_route_redirect_url(const lg_route_t *r, const lg_req_head_t *req, h2o_mem_pool_t *pool);

/* Applies one mutation list as Envoy's HeaderParser: removals first, then
 * every value is formatted against `si` (before anything is added, so
 * formatters see the original headers), then overwrites, then appends. */
void lg_header_mutation_apply(const lg_header_mutation_t *m, lg_headers_t *headers, const lg_stream_info_t *si,
                              h2o_mem_pool_t *pool);
/* Applies the request header mutations of a route in Envoy's order: the
 * weighted cluster's, then route, vhost, route config (reversed when
 * most_specific_header_mutations_wins). */
void lg_route_apply_request_headers(const lg_route_t *r, const lg_weighted_cluster_t *wc, lg_headers_t *headers,
                                    const lg_stream_info_t *si, h2o_mem_pool_t *pool);
void lg_route_apply_response_headers(const lg_route_t *r, const lg_weighted_cluster_t *wc, lg_headers_t *headers,
                                     const lg_stream_info_t *si, h2o_mem_pool_t *pool);

/* The most specific typed_per_filter_config for a filter name: weighted
 * cluster, route, vhost, then route configuration; NULL if none. The Any
 * may hold an envoy.config.route.v3.FilterConfig wrapper. */
const Google__Protobuf__Any *lg_route_per_filter_config(const lg_route_t *r, const lg_weighted_cluster_t *wc,
                                                        const char *filter_name);

/* ---- internal (route.c <-> route_match.c) ---- */

/* Zeroed memory that lives as long as the table. */
void *lg__route_alloc(lg_route_table_t *t, size_t sz);
/* The vhost's route index, in the table's memory (nothing to free). */
struct st_lg__route_index_t *lg__route_index_build(lg_route_table_t *t, const lg_vhost_t *vh);
/* Registers a domain; returns -1 with err set on a duplicate. */
int lg__domain_index_add(lg_route_table_t *t, const char *domain, const lg_vhost_t *vh, lg_error_t *err);
void lg__domain_index_free(struct st_lg__domain_index_t *dx);

#endif
