#ifndef LEGATE_LISTENER_H
#define LEGATE_LISTENER_H

#include "legate/hcm.h"
#include "legate/listener-t.h"
#include "envoy/config/listener/v3/listener.pb-c.h"

/* Compiles a Listener; errors are relative to the listener message. */
lg_listener_config_t *lg_listener_config_compile(const Envoy__Config__Listener__V3__Listener *m, const lg_hcm_compile_ctx_t *ctx,
                                                 lg_error_t *err);
lg_listener_config_t *lg_listener_config_addref(lg_listener_config_t *l);
void lg_listener_config_release(lg_listener_config_t *l);

/* What a new connection looks like, for filter chain matching. */
typedef struct st_lg_conn_match_info_t {
    const struct sockaddr *local;
    const struct sockaddr *remote;
    const char *server_name;        /* SNI or NULL */
    const char *transport_protocol; /* "raw_buffer" or "tls" */
    const char *const *alpn;        /* offered ALPN protocols */
    size_t n_alpn;
} lg_conn_match_info_t;

/* Envoy's filter chain match: the most specific chain at each criterion in
 * turn; the default chain when none matches; NULL when there is none. */
const lg_filter_chain_t *lg_listener_match_chain(const lg_listener_config_t *l, const lg_conn_match_info_t *info);
/* Indexes the chains by server name (l->sni_index) when there are enough of
 * them and none matches on destination port or address: a connection's
 * server-name step is then a lookup instead of a pass over every chain. */
void lg_listener_index_chains(lg_listener_config_t *l);
void lg_listener_sni_index_free(struct st_lg_sni_index_t *x);

/* Envoy's check for overlapping matches: chains are added in order, and a chain
 * that shares a leaf of the match tree (a value of every criterion) with an
 * earlier chain, or lists one value twice, is refused. lg_match_tree_add returns
 * the chain that holds the leaf already (i itself for a repeat), or -1. */
typedef struct st_lg_match_tree_t lg_match_tree_t;
lg_match_tree_t *lg_match_tree_new(void);
ssize_t lg_match_tree_add(lg_match_tree_t *t, const lg_filter_chain_t *chains, size_t i);
void lg_match_tree_free(lg_match_tree_t *t);

#endif
