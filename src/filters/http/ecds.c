/*
 * The ECDS wrapper filter: stands in the HCM's chain for an http_filters
 * entry with config_discovery. At the first callback of a stream it resolves
 * the filter's config (the newest discovered version in the worker's
 * snapshot, else the default_config, else a 500 with NFCF as Envoy's
 * MissingConfigFilter answers), holds a reference to it for the stream's
 * life, and delegates every callback to a filter of that type allocated from
 * the stream's pool with the wrapper's stream and index (so that
 * lg_hcm_continue_decoding() on it resumes the chain after the wrapper).
 */
#include "legate/filters.h"
#include "legate/hcm-t.h"
#include "legate/hcm.h"
#include "legate/pbjson.h"
#include "legate/server.h"
#include "legate/worker-t.h"
#include "legate/xds_ecds.h"

typedef Envoy__Extensions__Filters__Network__HttpConnectionManager__V3__HttpFilter http_filter_proto_t;

/* The wrapper's compiled config. */
typedef struct st_ecds_config_t {
    char *name;
    lg_ecds_filter_t *def;             /* default_config, or NULL */
    const lg_http_filter_type_t *type; /* the wrapper type (terminal or not) */
} ecds_config_t;

typedef struct st_ecds_state_t {
    lg_http_filter_t super;
    lg_ecds_filter_t *held;
    lg_http_filter_t *inner;
    unsigned resolved : 1;
} ecds_state_t;

/* ---- discovered configs ---- */

static int type_allowed(const char *url, char *const *type_urls, size_t n)
{
    for (size_t i = 0; i != n; ++i)
        if (strcmp(url, type_urls[i]) == 0)
            return 1;
    return 0;
}

static void expected(lg_strbuf_t *b, char *const *type_urls, size_t n)
{
    for (size_t i = 0; i != n; ++i)
        lg_strbuf_printf(b, "%s%s", i ? ", " : "", lg_type_url_name(type_urls[i]));
}

lg_ecds_filter_t *lg_ecds_filter_compile(const char *name, const Google__Protobuf__Any *typed_config, char *const *type_urls,
                                         size_t n_type_urls, lg_error_t *err)
{
    if (typed_config == NULL) {
        lg_error(err, "typed_config: value is required");
        return NULL;
    }
    if (!type_allowed(typed_config->type_url, type_urls, n_type_urls)) {
        lg_strbuf_t b = {NULL};
        lg_strbuf_reserve(&b, 1);
        expected(&b, type_urls, n_type_urls);
        lg_error(err, "Error: filter config has type URL %s but expect %s.", lg_type_url_name(typed_config->type_url), b.base);
        lg_strbuf_free(&b);
        return NULL;
    }
    const lg_http_filter_type_t *type = lg_http_filter_find(name, typed_config->type_url);
    if (type == NULL) {
        lg_error(err, "Didn't find a registered implementation for '%s' with type URL: '%s'", name, typed_config->type_url);
        return NULL;
    }
    ProtobufCMessage *msg = NULL;
    if (type->config_type != NULL && (msg = lg_any_unpack(typed_config, type->config_type, err)) == NULL) {
        lg_error_prefix(err, "typed_config");
        return NULL;
    }
    int ok = 1;
    void *compiled = type->compile != NULL ? type->compile(msg, &ok, err) : NULL;
    if (msg != NULL)
        protobuf_c_message_free_unpacked(msg, NULL);
    if (!ok) {
        lg_error_prefix(err, "typed_config");
        return NULL;
    }
    lg_ecds_filter_t *f = lg_calloc(1, sizeof(*f));
    f->refcnt = 1;
    f->name = lg_strdup(name);
    f->filter = (lg_http_filter_config_t){type, lg_strdup(name), compiled};
    return f;
}

lg_ecds_filter_t *lg_ecds_filter_ref(lg_ecds_filter_t *f)
{
    if (f != NULL)
        __atomic_add_fetch(&f->refcnt, 1, __ATOMIC_RELAXED);
    return f;
}

void lg_ecds_filter_release(lg_ecds_filter_t *f)
{
    if (f == NULL || __atomic_sub_fetch(&f->refcnt, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    if (f->filter.type->free_config != NULL && f->filter.config != NULL)
        f->filter.type->free_config(f->filter.config);
    free(f->filter.name);
    free(f->name);
    free(f);
}

/* ---- the wrapper ---- */

static lg_ecds_filter_t *current_config(const ecds_config_t *c)
{
    lg_worker_t *w = lg_current_worker;
    lg_ecds_filter_t *f = w != NULL && w->snapshot != NULL ? lg_snapshot_find_ecds(w->snapshot, c->name) : NULL;
    return lg_ecds_filter_ref(f != NULL ? f : c->def);
}

/* Resolves the config at the stream's first callback; NULL when the stream got a 500. */
static lg_http_filter_t *inner_of(lg_http_filter_t *f)
{
    ecds_state_t *st = (ecds_state_t *)f;
    if (st->resolved)
        return st->inner;
    st->resolved = 1;
    const ecds_config_t *c = f->config;
    if ((st->held = current_config(c)) == NULL) {
        LG_DEBUG(filter, "ecds: no config for filter '%s' yet: 500", c->name);
        lg_hcm_send_local_reply(f->stream, 500, h2o_iovec_init(NULL, 0), "filter_config_not_found", LG_RF(NO_FILTER_CONFIG_FOUND));
        return NULL;
    }
    const lg_http_filter_type_t *type = st->held->filter.type;
    lg_http_filter_t *in = h2o_mem_alloc_pool(f->stream->pool, sizeof(*in) + type->state_size);
    memset(in, 0, sizeof(*in) + type->state_size);
    *in = (lg_http_filter_t){type, st->held->filter.config, f->stream, f->index};
    st->inner = in;
    return in;
}

static lg_filter_status_t decode_headers(lg_http_filter_t *f, lg_req_head_t *head, int end_stream)
{
    lg_http_filter_t *in = inner_of(f);
    if (in == NULL)
        return LG_FILTER_STOP;
    return in->type->decode_headers != NULL ? in->type->decode_headers(in, head, end_stream) : LG_FILTER_CONTINUE;
}

static lg_filter_status_t decode_data(lg_http_filter_t *f, h2o_iovec_t data, int end_stream)
{
    lg_http_filter_t *in = inner_of(f);
    if (in == NULL)
        return LG_FILTER_STOP;
    return in->type->decode_data != NULL ? in->type->decode_data(in, data, end_stream) : LG_FILTER_CONTINUE;
}

static lg_filter_status_t decode_trailers(lg_http_filter_t *f, lg_headers_t *trailers)
{
    lg_http_filter_t *in = inner_of(f);
    if (in == NULL)
        return LG_FILTER_STOP;
    return in->type->decode_trailers != NULL ? in->type->decode_trailers(in, trailers) : LG_FILTER_CONTINUE;
}

static lg_filter_status_t encode_headers(lg_http_filter_t *f, lg_resp_head_t *head, int end_stream)
{
    lg_http_filter_t *in = ((ecds_state_t *)f)->inner;
    return in != NULL && in->type->encode_headers != NULL ? in->type->encode_headers(in, head, end_stream) : LG_FILTER_CONTINUE;
}

static lg_filter_status_t encode_data(lg_http_filter_t *f, h2o_iovec_t data, int end_stream)
{
    lg_http_filter_t *in = ((ecds_state_t *)f)->inner;
    return in != NULL && in->type->encode_data != NULL ? in->type->encode_data(in, data, end_stream) : LG_FILTER_CONTINUE;
}

static lg_filter_status_t encode_trailers(lg_http_filter_t *f, lg_headers_t *trailers)
{
    lg_http_filter_t *in = ((ecds_state_t *)f)->inner;
    return in != NULL && in->type->encode_trailers != NULL ? in->type->encode_trailers(in, trailers) : LG_FILTER_CONTINUE;
}

static void on_encode_data_sent(lg_http_filter_t *f, size_t bytes)
{
    lg_http_filter_t *in = ((ecds_state_t *)f)->inner;
    if (in != NULL && in->type->on_encode_data_sent != NULL)
        in->type->on_encode_data_sent(in, bytes);
}

static void on_destroy(lg_http_filter_t *f)
{
    ecds_state_t *st = (ecds_state_t *)f;
    if (st->inner != NULL && st->inner->type->on_destroy != NULL)
        st->inner->type->on_destroy(st->inner);
    st->inner = NULL;
    lg_ecds_filter_release(st->held);
    st->held = NULL;
}

static void free_config(void *p)
{
    ecds_config_t *c = p;
    lg_ecds_filter_release(c->def);
    free(c->name);
    free(c);
}

#define WRAPPER(terminal)                                                                                           \
    {                                                                                                               \
        .name = "envoy.extension_config_discovery", .is_terminal = terminal, .free_config = free_config,            \
        .state_size = sizeof(ecds_state_t) - sizeof(lg_http_filter_t), .decode_headers = decode_headers,            \
        .decode_data = decode_data, .decode_trailers = decode_trailers, .encode_headers = encode_headers,           \
        .encode_data = encode_data, .encode_trailers = encode_trailers, .on_encode_data_sent = on_encode_data_sent, \
        .on_destroy = on_destroy,                                                                                   \
    }
static const lg_http_filter_type_t wrapper_types[2] = {WRAPPER(0), WRAPPER(1)};

/* ---- the HCM's side ---- */

int lg_ecds_http_filter_config(const http_filter_proto_t *f, lg_http_filter_config_t *out, lg_error_t *err)
{
    const Envoy__Config__Core__V3__ExtensionConfigSource *cd = f->config_discovery;
    if (cd->config_source == NULL)
        return lg_error(err, "config_discovery.config_source: value is required");
    if (cd->n_type_urls == 0)
        return lg_error(err, "config_discovery.type_urls: value must contain at least 1 item(s)");
    int terminal = -1;
    for (size_t i = 0; i != cd->n_type_urls; ++i) {
        const lg_http_filter_type_t *t = lg_http_filter_find(f->name, cd->type_urls[i]);
        if (t == NULL)
            return lg_error(err, "config_discovery.type_urls[%zu]: Error: no factory found for a required type URL %s.", i,
                            cd->type_urls[i]);
        if (terminal >= 0 && terminal != t->is_terminal)
            return lg_error(err, "config_discovery.type_urls: Error: filter config %s has both terminal and non-terminal types",
                            f->name);
        terminal = t->is_terminal;
    }
    lg_ecds_filter_t *def = NULL;
    if (cd->default_config != NULL &&
        (def = lg_ecds_filter_compile(f->name, cd->default_config, cd->type_urls, cd->n_type_urls, err)) == NULL)
        return lg_error_prefix(err, "config_discovery.default_config");
    if (cd->apply_default_config_without_warming && def == NULL)
        return lg_error(err, "config_discovery: Error: filter config %s applied without warming but has no default config.",
                        f->name);
    ecds_config_t *c = lg_calloc(1, sizeof(*c));
    c->name = lg_strdup(f->name);
    c->def = def;
    c->type = wrapper_types + terminal;
    *out = (lg_http_filter_config_t){c->type, lg_strdup(f->name), c};
    return 0;
}
