/*
 * Request mirroring (include/legate/shadow.h).
 */
#include <stdlib.h>
#include <string.h>
#include "legate/common.h"
#include "legate/http.h"
#include "legate/shadow.h"

struct st_lg_shadow_t {
    h2o_linklist_t link; /* in this thread's list */
    h2o_mem_pool_t pool; /* the head's strings; the upstream stream's pool */
    lg_worker_cluster_t *cluster;
    lg_pool_request_t *pool_req;
    lg_stream_t *stream;
    lg_req_head_t head;
    int version;
    char *body;
    size_t body_len, body_cap, body_limit;
    unsigned sending : 1; /* inside send_headers/send_data: a terminal callback only marks `ended` */
    unsigned ended : 1;
};

static __thread h2o_linklist_t live = {NULL, NULL};

static h2o_iovec_t dup(h2o_mem_pool_t *pool, h2o_iovec_t v)
{
    return v.base != NULL ? h2o_strdup(pool, v.base, v.len) : v;
}

/* Envoy's shadowAppendedHost: "-shadow" goes before the port, if any. */
static h2o_iovec_t shadow_host(h2o_mem_pool_t *pool, h2o_iovec_t host)
{
    size_t at = host.len;
    for (size_t i = host.len; i != 0; --i) {
        char c = host.base[i - 1];
        if (c == ':') {
            at = i - 1;
            break;
        }
        if (c < '0' || c > '9')
            break;
    }
    char *out = h2o_mem_alloc_pool(pool, host.len + sizeof("-shadow"));
    memcpy(out, host.base, at);
    memcpy(out + at, "-shadow", 7);
    memcpy(out + at + 7, host.base + at, host.len - at);
    out[host.len + 7] = '\0';
    return h2o_iovec_init(out, host.len + 7);
}

static void shadow_free(lg_shadow_t *sh)
{
    h2o_linklist_unlink(&sh->link);
    if (sh->pool_req != NULL)
        lg_pool_request_cancel(sh->pool_req);
    lg_worker_cluster_release(sh->cluster);
    h2o_mem_clear_pool(&sh->pool);
    free(sh->body);
    free(sh);
}

lg_shadow_t *lg_shadow_new(lg_worker_cluster_t *cluster, const lg_req_head_t *head, int version, size_t body_limit)
{
    lg_shadow_t *sh = lg_calloc(1, sizeof(*sh));
    if (live.next == NULL)
        h2o_linklist_init_anchor(&live);
    h2o_linklist_insert(&live, &sh->link);
    h2o_mem_init_pool(&sh->pool);
    lg_worker_cluster_addref(cluster);
    sh->cluster = cluster;
    sh->version = version;
    sh->body_limit = body_limit;
    sh->head = *head;
    sh->head.method = dup(&sh->pool, head->method);
    sh->head.scheme = dup(&sh->pool, head->scheme);
    sh->head.path = dup(&sh->pool, head->path);
    sh->head.protocol = dup(&sh->pool, head->protocol);
    sh->head.authority = shadow_host(&sh->pool, head->authority);
    sh->head.headers = (lg_headers_t){NULL};
    h2o_vector_reserve(&sh->pool, &sh->head.headers, head->headers.size);
    for (size_t i = 0; i != head->headers.size; ++i)
        lg_headers_add(&sh->pool, &sh->head.headers, dup(&sh->pool, head->headers.entries[i].name),
                       dup(&sh->pool, head->headers.entries[i].value));
    return sh;
}

/* ---- the copy's own exchange ---- */

/* The copy's exchange is over; ctx is NULL for a stream dropped at thread exit. */
static void end(lg_shadow_t *sh)
{
    if (sh == NULL)
        return;
    sh->stream = NULL;
    if (sh->sending)
        sh->ended = 1;
    else
        shadow_free(sh);
}

static void on_headers(lg_stream_t *s, void *head, int end_stream)
{
}

static void on_data(lg_stream_t *s, h2o_iovec_t data, int end_stream)
{
    s->ops->consume(s, data.len); /* read and dropped */
}

static void on_trailers(lg_stream_t *s, lg_headers_t *trailers)
{
}

static void on_data_sent(lg_stream_t *s, size_t bytes)
{
}

static void on_reset(lg_stream_t *s, lg_reset_reason_t reason, const char *details)
{
    end(s->ctx);
}

static void on_complete(lg_stream_t *s)
{
    end(s->ctx);
}

static const lg_stream_cbs_t stream_cbs = {.on_headers = on_headers,
                                           .on_data = on_data,
                                           .on_trailers = on_trailers,
                                           .on_data_sent = on_data_sent,
                                           .on_reset = on_reset,
                                           .on_complete = on_complete};

static void on_ready(void *data, lg_stream_t *stream, lg_host_t *host, const struct sockaddr *local)
{
    lg_shadow_t *sh = data;
    sh->pool_req = NULL;
    sh->stream = stream;
    stream->cbs = &stream_cbs;
    stream->ctx = sh;
    stream->pool = &sh->pool;
    sh->sending = 1;
    stream->ops->send_headers(stream, &sh->head, sh->body_len == 0);
    if (sh->stream != NULL && sh->body_len != 0)
        stream->ops->send_data(stream, h2o_iovec_init(sh->body, sh->body_len), 1);
    sh->sending = 0;
    if (sh->ended)
        shadow_free(sh);
}

static void on_failure(void *data, lg_pool_failure_t reason, lg_host_t *host, const char *transport_failure_reason)
{
    lg_shadow_t *sh = data;
    sh->pool_req = NULL;
    shadow_free(sh);
}

static const lg_pool_cbs_t pool_cbs = {on_ready, on_failure};

static void start(lg_shadow_t *sh)
{
    lg_lb_context_t ctx = {0};
    ctx.request = &sh->head;
    lg_pool_request_t *req = lg_cluster_request_stream(sh->cluster, sh->version, &ctx, &pool_cbs, sh);
    if (req != NULL) /* else a callback has fired (and may have freed sh) */
        sh->pool_req = req;
}

lg_shadow_t *lg_shadow_data(lg_shadow_t *sh, h2o_iovec_t data, int end_stream, int *over_limit)
{
    if (sh->body_len + data.len > sh->body_limit) {
        *over_limit = 1;
        shadow_free(sh); /* Envoy does not mirror what it cannot buffer */
        return NULL;
    }
    if (data.len != 0) {
        if (sh->body_len + data.len > sh->body_cap) {
            sh->body_cap = sh->body_cap * 2 > sh->body_len + data.len ? sh->body_cap * 2 : sh->body_len + data.len;
            sh->body = lg_realloc(sh->body, sh->body_cap);
        }
        memcpy(sh->body + sh->body_len, data.base, data.len);
        sh->body_len += data.len;
    }
    if (!end_stream)
        return sh;
    start(sh);
    return NULL;
}

void lg_shadow_abandon(lg_shadow_t *sh)
{
    if (sh != NULL)
        shadow_free(sh);
}

void lg_shadow_thread_exit(void)
{
    while (live.next != NULL && !h2o_linklist_is_empty(&live)) {
        lg_shadow_t *sh = H2O_STRUCT_FROM_MEMBER(lg_shadow_t, link, live.next);
        if (sh->stream != NULL) {
            lg_stream_t *s = sh->stream;
            sh->stream = NULL;
            s->ctx = NULL; /* its terminal callback, if any, finds no copy */
            s->ops->reset(s, LG_RESET_LOCAL);
        }
        shadow_free(sh);
    }
}
