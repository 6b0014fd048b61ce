/*
 * Scoped routes (Envoy's SRDS data plane): the HCM's ScopedRoutes.scope_key_builder
 * compiled into an lg_scope_key_builder_t, and a set of ScopedRouteConfiguration
 * messages compiled into an immutable lg_scoped_routes_t that maps a request's
 * scope key to the scope's route configuration.
 *
 * Both objects are built on the control thread and only read afterwards; the
 * refcounts are not atomic (snapshots and HCM configs own the references, as for
 * lg_route_table_t).
 */
#ifndef LEGATE_SCOPED_ROUTES_T_H
#define LEGATE_SCOPED_ROUTES_T_H

#include <stddef.h>
#include <h2o/memory.h>

typedef struct st_lg_route_table_t lg_route_table_t;
typedef struct st_lg_scope_key_builder_t lg_scope_key_builder_t;
typedef struct st_lg_scoped_routes_t lg_scoped_routes_t;

/* One routing scope (a compiled ScopedRouteConfiguration). */
typedef struct st_lg_scope_t {
    char *name;
    /* The RouteConfiguration to use: route_configuration_name for SRDS scopes,
     * the inline route_configuration's own name for inline scopes. */
    char *route_config_name;
    /* The inline route_configuration (scoped_route_configurations_list), or NULL
     * when the table is found by route_config_name (RDS). */
    lg_route_table_t *route_table;
    int on_demand; /* recorded only: Legate loads every scope's routes eagerly */
    size_t n_fragments;
    h2o_iovec_t *fragments; /* key.fragments[].string_key, in order */
    uint64_t hash;          /* of the fragment tuple, for the set's index */
} lg_scope_t;

#endif
