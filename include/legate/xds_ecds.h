/*
 * ECDS (extension config discovery) for HTTP filters: an HCM http_filters
 * entry with config_discovery names a TypedExtensionConfig that the xDS
 * client subscribes to; each accepted version is compiled into an
 * lg_ecds_filter_t held by the snapshot. The HCM's filter at that position is
 * a wrapper (src/filters/http/ecds.c) that, at stream start, takes the
 * newest version from the worker's snapshot (or the default_config, or
 * answers 500 NFCF when there is none) and delegates every callback to it:
 * new streams use a new version, running streams keep theirs.
 */
#ifndef LEGATE_XDS_ECDS_H
#define LEGATE_XDS_ECDS_H

#include "legate/filter-t.h"
#include "envoy/config/core/v3/config_source.pb-c.h"
#include "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.pb-c.h"

/* One compiled version of a discovered filter config; immutable, refcounted
 * (a stream using it holds a reference). */
typedef struct st_lg_ecds_filter_t {
    size_t refcnt; /* atomic */
    char *name;
    lg_http_filter_config_t filter; /* type and compiled config */
} lg_ecds_filter_t;

/* Compiles a TypedExtensionConfig's typed_config for the filter `name`:
 * its type URL must be one of `type_urls` (Envoy: "Error: filter config has
 * type URL X but expect Y."), and a registered HTTP filter. NULL with err. */
lg_ecds_filter_t *lg_ecds_filter_compile(const char *name, const Google__Protobuf__Any *typed_config, char *const *type_urls,
                                         size_t n_type_urls, lg_error_t *err);
lg_ecds_filter_t *lg_ecds_filter_ref(lg_ecds_filter_t *f);
void lg_ecds_filter_release(lg_ecds_filter_t *f);

/* For the HCM compiler: the wrapper filter config of an http_filters entry
 * with config_discovery (type URLs checked, default_config compiled). The
 * wrapper is terminal when the filters of its type URLs are. err names the
 * field below http_filters[i]. */
int lg_ecds_http_filter_config(const Envoy__Extensions__Filters__Network__HttpConnectionManager__V3__HttpFilter *f,
                               lg_http_filter_config_t *out, lg_error_t *err);

#endif
