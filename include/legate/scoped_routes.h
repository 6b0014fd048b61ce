/*
 * Scoped routes: compile (control thread) and lookup (workers), as Envoy's
 * source/common/router/scoped_config_impl.cc.
 *
 * A request's scope key is the tuple of the key builder's fragments, each taken
 * from a request header by a header_value_extractor:
 *  - the first value of header `name` (pseudo-headers and "host" as Envoy's
 *    request header map: see lg_req_header_first);
 *  - split by element_separator (an empty separator keeps the whole value);
 *  - `index`: the index-th element; `element`: the value of the first element
 *    whose part before element.separator equals element.key (an element without
 *    the separator has an empty value).
 * If any fragment cannot be extracted (header absent, index out of range, key not
 * found) the request has no key and matches no scope. A scope matches when its
 * key.fragments[].string_key tuple equals the request's tuple exactly (same
 * count, same bytes, case-sensitive).
 *
 * When no scope matches, Envoy routes the request with an empty route config:
 * the router answers 404 with response flag NR (route_not_found) and counts
 * http.<stat_prefix>.no_route. That is the caller's job (conn_manager).
 */
#ifndef LEGATE_SCOPED_ROUTES_H
#define LEGATE_SCOPED_ROUTES_H

#include "envoy/config/route/v3/scoped_route.pb-c.h"
#include "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.pb-c.h"
#include "legate/common.h"
#include "legate/http-t.h"
#include "legate/route.h"
#include "legate/scoped_routes-t.h"

/* ---- key builder ---- */

/* Compiles a ScopeKeyBuilder. `path` prefixes error messages (e.g.
 * "scoped_routes.scope_key_builder"); errors name the field, e.g.
 * "scoped_routes.scope_key_builder.fragments[1].header_value_extractor.index:
 * Index > 0 for empty string element separator." (Envoy's words). Returns NULL on error; the
 * result holds one reference. The message is not referenced afterwards. */
lg_scope_key_builder_t *
lg_scope_key_builder_compile(const Envoy__Extensions__Filters__Network__HttpConnectionManager__V3__ScopedRoutes__ScopeKeyBuilder *m,
                             const char *path, lg_error_t *err);
lg_scope_key_builder_t *lg_scope_key_builder_retain(lg_scope_key_builder_t *kb);
/* Drops a reference (NULL is fine). */
void lg_scope_key_builder_release(lg_scope_key_builder_t *kb);
/* Same as lg_scope_key_builder_release. */
void lg_scope_key_builder_free(lg_scope_key_builder_t *kb);
size_t lg_scope_key_builder_n_fragments(const lg_scope_key_builder_t *kb);

/* Extracts fragment `i` of the request's key. Returns 1 and the value (pointing
 * into the request), or 0 when it cannot be extracted. Allocation-free. */
int lg_scope_key_fragment(const lg_scope_key_builder_t *kb, size_t i, const lg_req_head_t *req, h2o_iovec_t *out);

/* ---- scope sets ---- */

typedef struct st_lg_scoped_routes_opts_t {
    /* Non-zero for HCM scoped_route_configurations_list: as Envoy, every scope
     * must carry an inline route_configuration and no route_configuration_name.
     * Zero for SRDS resources: every scope must name a route_configuration_name;
     * route_configuration is ignored. */
    int inline_routes;
    /* For the inline route configurations (lg_route_table_compile); may be NULL
     * (no cluster validation). Envoy validates the clusters of inline scopes'
     * tables by default: pass validate_clusters = 1 (a RouteConfiguration's own
     * validate_clusters overrides it). */
    const lg_route_compile_opts_t *route_opts;
} lg_scoped_routes_opts_t;

/* Compiles scopes against a key builder (the set retains `kb`). `opts` NULL
 * means SRDS rules. `path` prefixes errors; scope i is "<path>[i]", e.g.
 * "scoped_routes.scoped_route_configurations_list.scoped_route_configurations[2].key.fragments:
 * value must contain at least 1 item(s)". Errors as Envoy: two scopes of the same
 * name ("duplicate scoped route configuration 'a' found") and two scopes of the
 * same key ("scope key conflict found, first scope is 'a', second scope is 'b'").
 * `n` may be 0 (every lookup misses). Returns NULL on error; the result holds one
 * reference. The messages are not referenced afterwards. */
lg_scoped_routes_t *lg_scoped_routes_compile(const lg_scope_key_builder_t *kb,
                                             Envoy__Config__Route__V3__ScopedRouteConfiguration *const *confs, size_t n,
                                             const lg_scoped_routes_opts_t *opts, const char *path, lg_error_t *err);
lg_scoped_routes_t *lg_scoped_routes_retain(lg_scoped_routes_t *sr);
/* Drops a reference (NULL is fine); the last one frees the set, its scopes and
 * their inline route tables (which may live on if retained elsewhere). */
void lg_scoped_routes_release(lg_scoped_routes_t *sr);

/* Finds the scope of a request, or NULL (no key, or no scope of that key; `sr`
 * may be NULL). The key is built with the builder the set was compiled with: an
 * SRDS resource set shared by HCMs of different builders is compiled once per
 * HCM (against hcm->scope_keys). Allocation-free; safe on any thread while a
 * reference is held. */
const lg_scope_t *lg_scoped_routes_match(const lg_scoped_routes_t *sr, const lg_req_head_t *req);
/* The route_config_name of the matching scope, or NULL. */
const char *lg_scoped_routes_find(const lg_scoped_routes_t *sr, const lg_req_head_t *req);
/* The inline route table of the matching scope, or NULL (no scope, or an SRDS
 * scope whose table is found by name). */
const lg_route_table_t *lg_scoped_routes_find_table(const lg_scoped_routes_t *sr, const lg_req_head_t *req);

/* The scopes in config order (for config_dump and for xDS to subscribe the
 * route_config_name of each scope without a route_table). */
size_t lg_scoped_routes_count(const lg_scoped_routes_t *sr);
const lg_scope_t *lg_scoped_routes_get(const lg_scoped_routes_t *sr, size_t i);
/* The scope of that name, or NULL. */
const lg_scope_t *lg_scoped_routes_by_name(const lg_scoped_routes_t *sr, const char *name);

#endif
