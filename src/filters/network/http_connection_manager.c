/*
 * Compiles envoy.extensions.filters.network.http_connection_manager.v3.
 * HttpConnectionManager into an immutable lg_hcm_config_t.
 */
#include "legate/address.h"
#include "legate/filters.h"
#include "legate/hcm.h"
#include "legate/h1.h"
#include "legate/pbjson.h"
#include "legate/route.h"
#include "legate/scoped_routes.h"
#include "legate/stats.h"
#include "legate/xds_ecds.h"

typedef Envoy__Extensions__Filters__Network__HttpConnectionManager__V3__HttpConnectionManager hcm_proto_t;
typedef Envoy__Extensions__Filters__Network__HttpConnectionManager__V3__HttpFilter http_filter_proto_t;

static const lg_stat_def_t hcm_stat_defs[] = {LG_HCM_STATS(LG_STAT_DEF)};

static int compile_filters(lg_hcm_config_t *c, const hcm_proto_t *m, lg_error_t *err)
{
    c->filters = lg_calloc(m->n_http_filters ? m->n_http_filters : 1, sizeof(*c->filters));
    for (size_t i = 0; i != m->n_http_filters; ++i) {
        const http_filter_proto_t *f = m->http_filters[i];
        const char *type_url = NULL;
        if (f->config_type_case ==
            ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_FILTER__CONFIG_TYPE_CONFIG_DISCOVERY) {
            /* ECDS: a wrapper that takes the discovered config at stream start (xds_ecds.h) */
            if (f->disabled)
                continue;
            if (lg_ecds_http_filter_config(f, c->filters + c->n_filters, err) != 0)
                return lg_error_prefix(err, "http_filters[%zu]", i);
            ++c->n_filters;
            continue;
        }
        if (f->config_type_case ==
            ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_FILTER__CONFIG_TYPE_TYPED_CONFIG)
            type_url = f->typed_config->type_url;
        const lg_http_filter_type_t *type = lg_http_filter_find(f->name, type_url);
        if (type == NULL) {
            if (f->is_optional) {
                LG_WARN(config,
                        "Didn't find a registered implementation for '%s' with type URL: '%s'; skipped because it is optional",
                        f->name, type_url != NULL ? type_url : "");
                continue;
            }
            return lg_error(err, "http_filters[%zu]: Didn't find a registered implementation for '%s' with type URL: '%s'", i,
                            f->name, type_url != NULL ? type_url : "");
        }
        if (f->disabled)
            continue;
        ProtobufCMessage *cfg = NULL;
        if (type_url != NULL && type->config_type != NULL) {
            cfg = lg_any_unpack(f->typed_config, type->config_type, err);
            if (cfg == NULL)
                return lg_error_prefix(err, "http_filters[%zu].typed_config", i);
        }
        int ok = 1;
        void *compiled = type->compile != NULL ? type->compile(cfg, &ok, err) : NULL;
        if (cfg != NULL)
            protobuf_c_message_free_unpacked(cfg, NULL);
        if (!ok)
            return lg_error_prefix(err, "http_filters[%zu].typed_config", i);
        lg_http_filter_config_t *fc = c->filters + c->n_filters++;
        fc->type = type;
        fc->name = lg_strdup(f->name);
        fc->config = compiled;
    }
    for (size_t i = 0; i != c->n_filters; ++i) {
        const lg_http_filter_config_t *fc = c->filters + i;
        if (fc->type->is_terminal && i + 1 != c->n_filters)
            return lg_error(
                err, "http_filters: Error: terminal filter named %s of type %s must be the last filter in a http filter chain.",
                fc->name, fc->type->name);
    }
    if (c->n_filters == 0 || !c->filters[c->n_filters - 1].type->is_terminal) {
        const lg_http_filter_config_t *last = c->n_filters ? c->filters + c->n_filters - 1 : NULL;
        if (last == NULL)
            return lg_error(err, "http_filters: the chain must end with a terminal filter (envoy.filters.http.router)");
        return lg_error(err,
                        "http_filters: Error: non-terminal filter named %s of type %s is the last filter in a http filter chain.",
                        last->name, last->type->name);
    }
    return 0;
}

static int compile_protocol_options(lg_hcm_config_t *c, const hcm_proto_t *m, lg_error_t *err)
{
    const Envoy__Config__Core__V3__HttpProtocolOptions *common = m->common_http_protocol_options;
    const Envoy__Config__Core__V3__Http1ProtocolOptions *h1 = m->http_protocol_options;
    const Envoy__Config__Core__V3__Http2ProtocolOptions *h2 = m->http2_protocol_options;
    lg_h1_limits_init(&c->h1);
    c->h1.max_headers_kb = LG_WRAPPED(m->max_request_headers_kb, 60);
    if (c->h1.max_headers_kb == 0 || c->h1.max_headers_kb > 8192)
        return lg_error(err, "max_request_headers_kb: value must be inside range (0, 8192]");
    c->idle_timeout_ms = 3600 * 1000;
    if (common != NULL) {
        c->idle_timeout_ms = lg_duration_ms(common->idle_timeout, c->idle_timeout_ms);
        c->h1.max_headers_count = LG_WRAPPED(common->max_headers_count, 100);
        c->max_stream_duration_ms = lg_duration_ms(common->max_stream_duration, 0);
        c->max_connection_duration_ms = lg_duration_ms(common->max_connection_duration, 0);
        c->max_requests_per_connection =
            common->max_requests_per_connection != NULL ? common->max_requests_per_connection->value : 0;
        c->h1.headers_with_underscores_action = (lg_h1_underscores_action_t)common->headers_with_underscores_action;
    }
    if (h1 != NULL) {
        c->h1.allow_chunked_length = h1->allow_chunked_length;
        c->h1.accept_http_10 = h1->accept_http_10;
        c->h1.allow_absolute_url = LG_WRAPPED(h1->allow_absolute_url, 1);
        if (h1->default_host_for_http_10 != NULL && h1->default_host_for_http_10[0] != '\0')
            c->h1.default_host_for_http_10 = h2o_iovec_init(h1->default_host_for_http_10, strlen(h1->default_host_for_http_10));
    }
    c->h2 = (lg_h2_settings_t){.max_concurrent_streams = 2147483647,
                               .initial_stream_window_size = 268435456,
                               .initial_connection_window_size = 268435456,
                               .max_headers_count = c->h1.max_headers_count,
                               .max_header_list_bytes = c->h1.max_headers_kb * 1024,
                               .buffer_limit = 1024 * 1024};
    if (h2 != NULL) {
        c->h2.max_concurrent_streams = LG_WRAPPED(h2->max_concurrent_streams, c->h2.max_concurrent_streams);
        c->h2.initial_stream_window_size = LG_WRAPPED(h2->initial_stream_window_size, c->h2.initial_stream_window_size);
        c->h2.initial_connection_window_size = LG_WRAPPED(h2->initial_connection_window_size, c->h2.initial_connection_window_size);
        c->h2_allow_connect = h2->allow_connect;
        if (c->h2.initial_stream_window_size < 65535 || c->h2.initial_stream_window_size > 2147483647)
            return lg_error(err,
                            "http2_protocol_options.initial_stream_window_size: value must be inside range [65535, 2147483647]");
        if (c->h2.initial_connection_window_size < 65535 || c->h2.initial_connection_window_size > 2147483647)
            return lg_error(
                err, "http2_protocol_options.initial_connection_window_size: value must be inside range [65535, 2147483647]");
    }
    /* Envoy: the HTTP/2 override, else the HCM's setting, else the deprecated HTTP/2 field. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    c->h2_stream_error_on_invalid = h2 != NULL && h2->stream_error_on_invalid_http_messaging;
#pragma GCC diagnostic pop
    if (h2 != NULL && h2->override_stream_error_on_invalid_http_message != NULL)
        c->h2_stream_error_on_invalid = h2->override_stream_error_on_invalid_http_message->value;
    else if (m->stream_error_on_invalid_http_message != NULL)
        c->h2_stream_error_on_invalid = m->stream_error_on_invalid_http_message->value;
    return 0;
}

/* upgrade_configs: Envoy's upgrade_filter_factories_ without per-upgrade filter chains. */
static int compile_upgrades(lg_hcm_config_t *c, const hcm_proto_t *m, lg_error_t *err)
{
    c->upgrades = lg_calloc(m->n_upgrade_configs ? m->n_upgrade_configs : 1, sizeof(*c->upgrades));
    for (size_t i = 0; i != m->n_upgrade_configs; ++i) {
        const Envoy__Extensions__Filters__Network__HttpConnectionManager__V3__HttpConnectionManager__UpgradeConfig *u =
            m->upgrade_configs[i];
        const char *type = u->upgrade_type != NULL ? u->upgrade_type : "";
        if (u->n_filters != 0)
            return lg_error(err, "upgrade_configs[%zu].filters: per-upgrade filter chains are not supported", i);
        size_t len = strlen(type);
        for (size_t j = 0; j != c->n_upgrades; ++j)
            if (h2o_lcstris(type, len, c->upgrades[j].type.base, c->upgrades[j].type.len))
                return lg_error(err, "upgrade_configs[%zu]: Error: multiple upgrade configs with the same name: '%s'", i, type);
        lg_hcm_upgrade_t *up = c->upgrades + c->n_upgrades++;
        up->type = h2o_iovec_init(lg_strndup(type, len), len);
        h2o_strtolower(up->type.base, len);
        up->enabled = LG_WRAPPED(u->enabled, 1);
    }
    return 0;
}

/* ---- scoped_routes (include/legate/scoped_routes.h) ---- */

/* The key builder and, for scoped_route_configurations_list, the compiled scopes
 * with their inline route tables (Envoy validates their clusters by default). For
 * scoped_rds, xDS (src/xds/) compiles the SRDS scopes against c->scope_keys. */
static int compile_scoped_routes(lg_hcm_config_t *c,
                                 const Envoy__Extensions__Filters__Network__HttpConnectionManager__V3__ScopedRoutes *m,
                                 const lg_hcm_compile_ctx_t *ctx, lg_error_t *err)
{
    static const char list_path[] = "scoped_routes.scoped_route_configurations_list.scoped_route_configurations";
    if (m->name == NULL || m->name[0] == '\0')
        return lg_error(err, "scoped_routes.name: value length must be at least 1 characters");
    if ((c->scope_keys = lg_scope_key_builder_compile(m->scope_key_builder, "scoped_routes.scope_key_builder", err)) == NULL)
        return -1;
    c->scoped_routes_name = lg_strdup(m->name);
    c->scoped_rds_config_source = m->rds_config_source != NULL;
    switch (m->config_specifier_case) {
    case ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__SCOPED_ROUTES__CONFIG_SPECIFIER_SCOPED_ROUTE_CONFIGURATIONS_LIST: {
        const Envoy__Extensions__Filters__Network__HttpConnectionManager__V3__ScopedRouteConfigurationsList *l =
            m->scoped_route_configurations_list;
        if (l->n_scoped_route_configurations == 0)
            return lg_error(err, "%s: value must contain at least 1 item(s)", list_path);
        lg_route_compile_opts_t ro = {.validate_clusters = 1, .cluster_exists = ctx->cluster_exists, .ctx = ctx->ctx};
        lg_scoped_routes_opts_t so = {.inline_routes = 1, .route_opts = &ro};
        c->scoped_inline = lg_scoped_routes_compile(c->scope_keys, l->scoped_route_configurations, l->n_scoped_route_configurations,
                                                    &so, list_path, err);
        return c->scoped_inline != NULL ? 0 : -1;
    }
    case ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__SCOPED_ROUTES__CONFIG_SPECIFIER_SCOPED_RDS:
        if (m->scoped_rds->scoped_rds_config_source == NULL)
            return lg_error(err, "scoped_routes.scoped_rds.scoped_rds_config_source: value is required");
        c->scoped_rds = 1;
        return 0;
    default:
        return lg_error(err, "scoped_routes.config_specifier: one of scoped_route_configurations_list or scoped_rds must be set");
    }
}

lg_hcm_config_t *lg_hcm_config_compile(const hcm_proto_t *m, const lg_hcm_compile_ctx_t *ctx, lg_error_t *err)
{
    lg_hcm_config_t *c = lg_calloc(1, sizeof(*c));
    if (m->stat_prefix == NULL || m->stat_prefix[0] == '\0') {
        lg_error(err, "stat_prefix: value length must be at least 1 characters");
        goto fail;
    }
    c->stat_prefix = lg_strdup(m->stat_prefix);
    c->codec_type =
        m->codec_type ==
                ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_CONNECTION_MANAGER__CODEC_TYPE__HTTP1
            ? LG_CODEC_HTTP1
        : m->codec_type ==
                ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_CONNECTION_MANAGER__CODEC_TYPE__HTTP2
            ? LG_CODEC_HTTP2
            : LG_CODEC_AUTO;
    if (m->codec_type ==
        ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_CONNECTION_MANAGER__CODEC_TYPE__HTTP3) {
        lg_error(err, "codec_type: HTTP3 is not supported");
        goto fail;
    }
    const char *server_name = m->server_name != NULL && m->server_name[0] != '\0' ? m->server_name : "envoy";
    c->server_name = h2o_iovec_init(lg_strdup(server_name), strlen(server_name));
    c->server_header_transformation = (lg_server_header_t)m->server_header_transformation;
    c->use_remote_address = LG_WRAPPED(m->use_remote_address, 0);
    c->skip_xff_append = m->skip_xff_append;
    c->xff_num_trusted_hops = m->xff_num_trusted_hops;
    c->generate_request_id = LG_WRAPPED(m->generate_request_id, 1);
    c->preserve_external_request_id = m->preserve_external_request_id;
    c->append_local_overload = m->append_local_overload;
    c->always_set_request_id_in_response = m->always_set_request_id_in_response;
    c->normalize_path = LG_WRAPPED(m->normalize_path, 0);
    c->merge_slashes = m->merge_slashes;
    c->escaped_slashes = m->path_with_escaped_slashes_action <= 1 ? LG_ESCAPED_SLASHES_KEEP
                                                                  : (lg_escaped_slashes_t)(m->path_with_escaped_slashes_action - 1);
    c->strip_matching_host_port = m->strip_matching_host_port;
    c->strip_any_host_port =
        m->strip_port_mode_case ==
            ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_CONNECTION_MANAGER__STRIP_PORT_MODE_STRIP_ANY_HOST_PORT &&
        m->strip_any_host_port;
    if (m->internal_address_config != NULL) {
        const Envoy__Extensions__Filters__Network__HttpConnectionManager__V3__HttpConnectionManager__InternalAddressConfig *ia =
            m->internal_address_config;
        c->internal_unix_sockets = ia->unix_sockets;
        if (ia->n_cidr_ranges != 0) {
            c->internal_cidrs = lg_calloc(ia->n_cidr_ranges, sizeof(*c->internal_cidrs));
            c->n_internal_cidrs = ia->n_cidr_ranges;
            for (size_t i = 0; i != ia->n_cidr_ranges; ++i)
                if (lg_cidr_parse(ia->cidr_ranges[i], c->internal_cidrs + i, err) != 0) {
                    lg_error_prefix(err, "internal_address_config.cidr_ranges[%zu]", i);
                    goto fail;
                }
        }
    }
    c->stream_idle_timeout_ms = lg_duration_ms(m->stream_idle_timeout, 300 * 1000);
    c->request_timeout_ms = lg_duration_ms(m->request_timeout, 0);
    c->request_headers_timeout_ms = lg_duration_ms(m->request_headers_timeout, 0);
    c->drain_timeout_ms = lg_duration_ms(m->drain_timeout, 5000);
    if (compile_protocol_options(c, m, err) != 0)
        goto fail;
    if (compile_upgrades(c, m, err) != 0)
        goto fail;
    if (m->tracing != NULL)
        LG_WARN(config, "tracing: tracing is not supported yet and is ignored");
    switch (m->route_specifier_case) {
    case ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_CONNECTION_MANAGER__ROUTE_SPECIFIER_ROUTE_CONFIG: {
        const Envoy__Config__Route__V3__RouteConfiguration *rc = m->route_config;
        lg_route_compile_opts_t opts = {
            .validate_clusters = LG_WRAPPED(rc->validate_clusters, 1),
            .cluster_exists = ctx->cluster_exists,
            .ctx = ctx->ctx,
        };
        if ((c->route_table = lg_route_table_compile(rc, &opts, err)) == NULL) {
            lg_error_prefix(err, "route_config");
            goto fail;
        }
        break;
    }
    case ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_CONNECTION_MANAGER__ROUTE_SPECIFIER_RDS:
        /* xDS (src/xds/) subscribes to it; requests find the table by name (lg_snapshot_route_table) */
        if (m->rds->config_source == NULL) {
            lg_error(err, "rds.config_source: value is required");
            goto fail;
        }
        c->rds_route_config_name = lg_strdup(m->rds->route_config_name != NULL ? m->rds->route_config_name : "");
        break;
    case ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_CONNECTION_MANAGER__ROUTE_SPECIFIER_SCOPED_ROUTES:
        if (compile_scoped_routes(c, m->scoped_routes, ctx, err) != 0)
            goto fail;
        break;
    default:
        lg_error(err, "route_specifier: one of route_config, rds or scoped_routes must be set");
        goto fail;
    }
    if (compile_filters(c, m, err) != 0)
        goto fail;
    if (lg_access_logs_compile(m->access_log, m->n_access_log, &c->access_logs, err) != 0)
        goto fail;
    char prefix[512];
    snprintf(prefix, sizeof(prefix), "http.%s.", c->stat_prefix);
    c->stats = lg_stats_block_new(prefix, hcm_stat_defs, LG_ARRAY_SIZE(hcm_stat_defs));
    return c;
fail:
    lg_hcm_config_free(c);
    return NULL;
}

static const lg_stat_def_t hcm_listener_stat_defs[] = {LG_HCM_LISTENER_STATS(LG_STAT_DEF)};

void lg_hcm_config_set_listener(lg_hcm_config_t *c, const char *listener_stats_prefix)
{
    char prefix[768];
    snprintf(prefix, sizeof(prefix), "%shttp.%s.", listener_stats_prefix, c->stat_prefix);
    c->listener_stats = lg_stats_block_new(prefix, hcm_listener_stat_defs, LG_ARRAY_SIZE(hcm_listener_stat_defs));
}

void lg_hcm_config_free(lg_hcm_config_t *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i != c->n_filters; ++i) {
        if (c->filters[i].type->free_config != NULL && c->filters[i].config != NULL)
            c->filters[i].type->free_config(c->filters[i].config);
        free(c->filters[i].name);
    }
    free(c->filters);
    if (c->route_table != NULL)
        lg_route_table_free(c->route_table);
    if (c->stats != NULL)
        lg_stats_block_release(c->stats);
    if (c->listener_stats != NULL)
        lg_stats_block_release(c->listener_stats);
    lg_access_logs_dispose(&c->access_logs);
    for (size_t i = 0; i != c->n_upgrades; ++i)
        free(c->upgrades[i].type.base);
    free(c->upgrades);
    free(c->internal_cidrs);
    free(c->stat_prefix);
    free(c->server_name.base);
    free(c->rds_route_config_name);
    lg_scoped_routes_release(c->scoped_inline);
    lg_scope_key_builder_release(c->scope_keys);
    free(c->scoped_routes_name);
    free(c);
}
