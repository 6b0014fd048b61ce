/*
 * The router filter (envoy.filters.http.router): picks the cluster from the
 * route, gets an upstream stream from the cluster's pool, proxies the
 * request and the response, and applies timeouts and retries as Envoy does.
 *
 * Body bytes are never copied: request chunks stay owned by the downstream
 * codec until the upstream codec has written them (and, while a retry is
 * still possible, until the response is committed); response chunks stay
 * owned by the upstream codec until the downstream codec has written them.
 *
 * Tunnels are streams like any other: an allowed upgrade keeps its Upgrade
 * and Connection headers (and becomes an extended CONNECT towards an HTTP/2
 * upstream), a CONNECT is proxied as a request, or terminated on a TCP
 * connection of the cluster when the route has a connect_config (see
 * legate/router_tcp.h). Tunnels are never retried.
 */
#include "legate/cluster.h"
#include "legate/h1.h"
#include "legate/hcm.h"
#include "legate/http.h"
#include "legate/route.h"
#include "legate/router_tcp.h"
#include "legate/server.h"
#include "legate/shadow.h"
#include "legate/timer.h"

typedef struct st_body_chunk_t {
    h2o_iovec_t data;
    int end_stream;
} body_chunk_t;

typedef struct st_router_t {
    lg_http_filter_t super;
    lg_hcm_stream_t *stream;
    const lg_route_t *route;
    const lg_weighted_cluster_t *wc;
    const lg_retry_policy_t *retry;
    lg_worker_cluster_t *cluster;
    lg_req_head_t upstream_req;
    lg_pool_request_t *pool_req;
    lg_upstream_tcp_t *tcp_connecting; /* a terminated CONNECT's upstream, until connected */
    lg_stream_t *upstream;
    lg_host_t *host;
    const lg_host_t *attempted[8];
    size_t n_attempted;
    H2O_VECTOR(body_chunk_t) body;
    size_t body_sent;      /* chunks handed to the current upstream stream */
    size_t body_retained;  /* bytes of body kept (not consumed downstream) */
    size_t body_in_flight; /* bytes sent upstream, not yet reported written */
    lg_headers_t *request_trailers;
    lg_timer_t global_timer, per_try_timer, backoff_timer;
    lg_timer_t per_try_idle_timer; /* retry_policy.per_try_idle_timeout */
    lg_shadow_t **shadows;         /* request_mirror_policies copies still taking the body */
    size_t n_shadows;
    uint64_t attempt_start_us;
    uint64_t request_end_us; /* when the downstream request ended (0: not yet): upstream_rq_time counts from it */
    uint32_t retries_left;
    uint32_t attempts;
    uint64_t timeout_ms; /* Envoy's global_timeout_ (finalTimeout); 0 = none */
    unsigned downstream_ended : 1;
    unsigned retain_body : 1; /* a retry may still need the body */
    unsigned response_started : 1;
    unsigned upstream_headers_sent : 1;
    unsigned retry_slot : 1;
    unsigned no_retry : 1;      /* retriable_request_headers matched none: no retry state (timeouts still apply) */
    unsigned timeout_retry : 1; /* the retry under way follows a per-try timeout */
    unsigned done : 1;
    unsigned buffering_abandoned : 1; /* retry_or_shadow_abandoned counted */
    unsigned request_sent : 1;        /* end_stream went upstream */
    unsigned response_ended : 1;      /* end_stream came from upstream */
    size_t response_unconsumed;       /* response bytes delivered by the upstream codec, not yet consumed */
    unsigned terminate_connect : 1;   /* CONNECT with the route's connect_config: a TCP tunnel to the host */
    unsigned upgrade_over_h2 : 1;     /* an upgrade sent upstream as an HTTP/2 extended CONNECT */
} router_t;

static const lg_stream_cbs_t upstream_cbs;
static const lg_pool_cbs_t pool_cbs;
static int dynamic_stats(const router_t *r);
static void start_attempt(router_t *r);
static void try_retry_or_fail(router_t *r, uint32_t cause_bit, int status, const char *body, const char *details, uint32_t flags);

static h2o_mem_pool_t *pool_of(router_t *r)
{
    return r->stream->pool;
}

static void cluster_stat(router_t *r, size_t idx)
{
    if (r->cluster != NULL)
        lg_cluster_stat_inc(r->cluster, idx);
}

/* Gives the downstream codec back `n` bytes of request body, oldest first. */
static void consume_downstream(router_t *r, size_t n)
{
    if (n == 0)
        return;
    lg_hcm_consume_request(r->stream, n);
}

/* Once no retry can happen, everything the current attempt wrote upstream is
 * released; the rest (in flight, or not sent yet) as it is written. Between
 * attempts (a retry waiting for its back-off or its connection) nothing is: the
 * next attempt sends the body from its start. */
static void stop_retaining(router_t *r)
{
    if (!r->retain_body)
        return;
    r->retain_body = 0;
    if (r->upstream == NULL)
        return;
    size_t unsent = 0;
    for (size_t i = r->body_sent; i != r->body.size; ++i)
        unsent += r->body.entries[i].data.len;
    size_t written = r->body_retained - r->body_in_flight - unsent;
    r->body_retained = r->body_in_flight + unsent;
    consume_downstream(r, written);
}

/* An upstream stream whose exchange is over but whose codec has not reported
 * completion yet: it is left to finish on its own so that its connection
 * can be reused. */
static void orphan_on_data(lg_stream_t *u, h2o_iovec_t data, int end_stream)
{
    u->ops->consume(u, data.len);
}

static void orphan_noop(lg_stream_t *u)
{
}

static void orphan_on_reset(lg_stream_t *u, lg_reset_reason_t reason, const char *details)
{
}

static const lg_stream_cbs_t orphan_cbs = {
    .on_data = orphan_on_data,
    .on_reset = orphan_on_reset,
    .on_complete = orphan_noop,
};

static void per_try_idle_timeout(lg_timer_t *t);

/* Envoy's resetPerTryIdleTimer: any progress of the attempt, either way, restarts it. */
static void touch_idle(router_t *r)
{
    if (r->retry != NULL && r->retry->per_try_idle_timeout_ms != 0 && r->upstream != NULL)
        lg_timer_touch(&lg_hcm_worker(r->stream)->loop, &r->per_try_idle_timer, r->retry->per_try_idle_timeout_ms,
                       per_try_idle_timeout);
}

static void detach_upstream(router_t *r, int reset)
{
    lg_timer_stop(&r->per_try_timer);
    lg_timer_stop(&r->per_try_idle_timer);
    if (r->pool_req != NULL) {
        lg_pool_request_cancel(r->pool_req);
        r->pool_req = NULL;
    }
    if (r->tcp_connecting != NULL) {
        lg_upstream_tcp_close(r->tcp_connecting, 1);
        r->tcp_connecting = NULL;
    }
    if (r->upstream != NULL) {
        lg_stream_t *u = r->upstream;
        r->upstream = NULL;
        if (r->request_sent && r->response_ended && r->body_in_flight == 0) {
            /* give back what the downstream never wrote, so that the upstream
             * stream can complete and its connection (and breaker slot) return.
             * Not while request body bytes are still to be written: they point
             * into the downstream codec's buffers, freed when its stream ends
             * (Envoy closes an HTTP/1.1 upstream whose response ended first too). */
            if (r->response_unconsumed != 0)
                u->ops->consume(u, r->response_unconsumed);
            r->response_unconsumed = 0;
            u->cbs = &orphan_cbs;
            u->ctx = NULL;
        } else if (reset) {
            cluster_stat(r, LG_CLUSTER_STAT_upstream_rq_tx_reset);
            u->ops->reset(u, LG_RESET_LOCAL);
        }
    }
    if (r->host != NULL) {
        lg_host_release(r->host);
        r->host = NULL;
    }
    r->body_in_flight = 0;
}

static void finish(router_t *r)
{
    r->done = 1;
    lg_timer_stop(&r->global_timer);
    lg_timer_stop(&r->backoff_timer);
    detach_upstream(r, 1);
    if (r->retry_slot) {
        lg_cluster_retry_end(r->cluster);
        r->retry_slot = 0;
    }
}

/* A local reply from the router. Like Envoy, the route's response header
 * mutations apply to it; `extra_name` (may be empty) adds one more header. */
static void reply(router_t *r, int status, h2o_iovec_t body, const char *details, uint32_t flags, h2o_iovec_t extra_name,
                  h2o_iovec_t extra_value)
{
    lg_headers_t *extra = h2o_mem_alloc_pool(pool_of(r), sizeof(*extra));
    memset(extra, 0, sizeof(*extra));
    finish(r);
    if (extra_name.len != 0)
        lg_headers_add(pool_of(r), extra, extra_name, extra_value);
    if (r->route != NULL)
        lg_route_apply_response_headers(r->route, r->wc, extra, &r->stream->info, pool_of(r));
    lg_hcm_send_local_reply_ex(r->stream, status, body, details, flags, extra);
}

static void local_reply(router_t *r, int status, const char *body, const char *details, uint32_t flags)
{
    reply(r, status, h2o_iovec_init(body, body != NULL ? strlen(body) : 0), details, flags, h2o_iovec_init(NULL, 0),
          h2o_iovec_init(NULL, 0));
}

/* ---- request body to upstream ---- */

static void send_pending_body(router_t *r)
{
    while (r->upstream != NULL && r->upstream_headers_sent && r->body_sent < r->body.size) {
        body_chunk_t *c = r->body.entries + r->body_sent++;
        r->body_in_flight += c->data.len;
        if (c->end_stream)
            r->request_sent = 1;
        lg_stream_t *u = r->upstream;
        u->ops->send_data(u, c->data, c->end_stream);
        if (r->upstream != u)
            return;
    }
    if (r->upstream != NULL && r->upstream_headers_sent && r->body_sent == r->body.size && r->request_trailers != NULL &&
        r->downstream_ended && !r->done) {
        lg_headers_t *t = r->request_trailers;
        r->request_trailers = NULL;
        r->request_sent = 1;
        r->upstream->ops->send_trailers(r->upstream, t);
    }
}

/* Envoy's retry_or_shadow_abandoned: once per request, when the body outgrows
 * the buffer limit while a retry or a mirror still needs it. */
static void abandon_buffering(router_t *r)
{
    if (!r->buffering_abandoned) {
        r->buffering_abandoned = 1;
        cluster_stat(r, LG_CLUSTER_STAT_retry_or_shadow_abandoned);
    }
}

/* Envoy's retry_shadow_buffer_limit: the listener's per_connection_buffer_limit_bytes,
 * capped by the route's (else the virtual host's) per_request_buffer_limit_bytes. */
static size_t retry_shadow_limit(router_t *r)
{
    size_t limit = r->stream->conn->listener->buffer_limit;
    return r->route != NULL && r->route->per_request_buffer_limit_bytes < limit ? r->route->per_request_buffer_limit_bytes : limit;
}

/* Feeds the request's body to its mirror copies (end_stream sends them). */
static void feed_shadows(router_t *r, h2o_iovec_t data, int end_stream)
{
    int over_limit = 0;
    for (size_t i = 0; i != r->n_shadows; ++i)
        if (r->shadows[i] != NULL)
            r->shadows[i] = lg_shadow_data(r->shadows[i], data, end_stream, &over_limit);
    if (over_limit)
        abandon_buffering(r);
}

static lg_filter_status_t decode_data(lg_http_filter_t *f, h2o_iovec_t data, int end_stream)
{
    router_t *r = (router_t *)f;
    feed_shadows(r, data, end_stream);
    if (r->done) {
        consume_downstream(r, data.len);
        return LG_FILTER_STOP;
    }
    if (!r->retain_body && r->body_sent == r->body.size) {
        /* nothing kept: reuse the vector from the start */
        r->body.size = 0;
        r->body_sent = 0;
    }
    h2o_vector_reserve(pool_of(r), &r->body, r->body.size + 1);
    r->body.entries[r->body.size++] = (body_chunk_t){data, end_stream};
    r->body_retained += data.len;
    if (end_stream) {
        r->downstream_ended = 1;
        r->request_end_us = lg_now_us();
    }
    if (r->retain_body && (r->body_retained > retry_shadow_limit(r) || (!end_stream && lg_hcm_request_rx_blocked(r->stream)))) {
        /* Envoy: a request body over the buffer limit cannot be retried (the codecs
         * deliver past the limit what the router keeps: h1 one byte, h2 what the
         * stream window allows beyond it). The h1 codec may also hold all it can
         * below the limit (a body mostly chunk framing): kept, it would stall. */
        r->retries_left = 0;
        stop_retaining(r);
        abandon_buffering(r);
        if (lg_timer_is_active(&r->backoff_timer)) {
            /* Envoy: with no attempt in progress (a retry waiting for its back-off)
             * the request cannot go on without the body it gave up. */
            local_reply(r, 507, "exceeded request buffer limit while retrying upstream",
                        "request_payload_exceeded_retry_buffer_limit", 0);
            return LG_FILTER_STOP;
        }
    }
    send_pending_body(r);
    return LG_FILTER_STOP;
}

static void global_timeout(lg_timer_t *t);

static void arm_global_timer(router_t *r)
{
    if (r->timeout_ms != 0 && !lg_timer_is_active(&r->global_timer) && !r->done)
        lg_timer_start(&lg_hcm_worker(r->stream)->loop, &r->global_timer, r->timeout_ms, global_timeout);
}

static lg_filter_status_t decode_trailers(lg_http_filter_t *f, lg_headers_t *trailers)
{
    router_t *r = (router_t *)f;
    feed_shadows(r, h2o_iovec_init(NULL, 0), 1); /* the copies end without the trailers */
    r->downstream_ended = 1;
    r->request_end_us = lg_now_us();
    r->request_trailers = trailers;
    if (!r->done) {
        arm_global_timer(r);
        send_pending_body(r);
    }
    return LG_FILTER_STOP;
}

/* ---- upstream stream callbacks ---- */

static void per_try_timeout(lg_timer_t *t);

/* Envoy's transformUpgradeRequestFromH1toH2: an upgrade goes to an HTTP/2
 * upstream as an extended CONNECT (RFC 8441). */
static void upgrade_request_to_h2(router_t *r)
{
    lg_req_head_t *u = &r->upstream_req;
    u->protocol = lg_headers_get(&u->headers, H2O_STRLIT("upgrade"));
    u->method = LG_LIT("CONNECT");
    lg_headers_remove(&u->headers, H2O_STRLIT("upgrade"));
    lg_headers_remove(&u->headers, H2O_STRLIT("connection"));
    h2o_iovec_t cl = lg_headers_get(&u->headers, H2O_STRLIT("content-length"));
    if (cl.len == 1 && cl.base[0] == '0')
        lg_headers_remove(&u->headers, H2O_STRLIT("content-length"));
    r->upgrade_over_h2 = 1;
}

/* Envoy's transformUpgradeResponseFromH2toH1: the 200 to an extended CONNECT is the 101. */
static void upgrade_response_from_h2(router_t *r, lg_resp_head_t *head)
{
    if (head->status != 200)
        return;
    head->status = 101;
    lg_headers_set(pool_of(r), &head->headers, LG_LIT("upgrade"), r->upstream_req.protocol);
    lg_headers_set(pool_of(r), &head->headers, LG_LIT("connection"), LG_LIT("upgrade"));
}

static void on_upstream_headers(lg_stream_t *u, void *head_, int end_stream);

static void stream_ready(router_t *r, lg_stream_t *stream, lg_host_t *host);

static void on_pool_ready(void *data, lg_stream_t *stream, lg_host_t *host, const struct sockaddr *local)
{
    router_t *r = data;
    struct sockaddr_storage *ul = &r->stream->info.upstream_local;
    if (local != NULL)
        memcpy(ul, local, local->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in));
    else
        ul->ss_family = 0;
    stream_ready(r, stream, host);
}

/* Envoy's append_x_forwarded_host: once a host rewrite changed the authority, the
 * original one goes at the end of x-forwarded-host unless it is already the last value. */
static void append_xfh(router_t *r)
{
    h2o_iovec_t orig = r->stream->req->authority;
    if (!r->route->action.append_x_forwarded_host || orig.len == 0 ||
        h2o_memis(orig.base, orig.len, r->upstream_req.authority.base, r->upstream_req.authority.len))
        return;
    h2o_mem_pool_t *pool = pool_of(r);
    lg_headers_t *h = &r->upstream_req.headers;
    h2o_iovec_t xfh = lg_headers_get(h, H2O_STRLIT("x-forwarded-host"));
    if (xfh.base == NULL) {
        lg_headers_set(pool, h, LG_LIT("x-forwarded-host"), orig);
        return;
    }
    size_t at = xfh.len;
    while (at != 0 && xfh.base[at - 1] != ',')
        --at;
    h2o_iovec_t last = h2o_iovec_init(xfh.base + at, xfh.len - at);
    while (last.len != 0 && (*last.base == ' ' || *last.base == '\t'))
        ++last.base, --last.len;
    if (!h2o_memis(last.base, last.len, orig.base, orig.len))
        lg_headers_set(pool, h, LG_LIT("x-forwarded-host"), h2o_concat(pool, xfh, h2o_iovec_init(H2O_STRLIT(",")), orig));
}

static void stream_ready(router_t *r, lg_stream_t *stream, lg_host_t *host)
{
    r->pool_req = NULL;
    r->upstream = stream;
    r->host = host;
    lg_host_addref(host);
    if (r->n_attempted < LG_ARRAY_SIZE(r->attempted))
        r->attempted[r->n_attempted++] = host;
    stream->cbs = &upstream_cbs;
    stream->ctx = r;
    stream->pool = pool_of(r); /* detach_upstream() orphans a stream only once it cannot need it */
    r->attempt_start_us = lg_now_us();
    lg_stream_info_t *info = &r->stream->info;
    memcpy(&info->upstream_remote, host->config->sa, host->config->salen);
    if (r->route->action.auto_host_rewrite && host->config->hostname != NULL && host->config->hostname[0] != '\0') {
        r->upstream_req.authority = h2o_iovec_init(host->config->hostname, strlen(host->config->hostname));
        append_xfh(r);
    }
    /* Envoy's include_is_timeout_retry_header: on retries, whether a per-try timeout caused it */
    if (r->attempts > 1 && r->route->vhost != NULL && r->route->vhost->include_is_timeout_retry_header)
        lg_headers_set(pool_of(r), &r->upstream_req.headers, LG_LIT("x-envoy-is-timeout-retry"),
                       r->timeout_retry ? LG_LIT("true") : LG_LIT("false"));
    /* Envoy's include_request_attempt_count: this attempt's number, 1 for the first */
    if (r->route->vhost != NULL && r->route->vhost->include_request_attempt_count)
        lg_headers_set(pool_of(r), &r->upstream_req.headers, LG_LIT("x-envoy-attempt-count"),
                       lg_u64_to_dec_pool(pool_of(r), r->attempts));
    if (stream->version == LG_HTTP_2 && r->stream->upgrade && !r->upgrade_over_h2)
        upgrade_request_to_h2(r);
    int end = r->downstream_ended && r->body.size == 0 && r->request_trailers == NULL;
    r->upstream_headers_sent = 1;
    r->body_sent = 0;
    r->request_sent = end;
    r->response_ended = 0;
    r->response_unconsumed = 0;
    if (r->terminate_connect) {
        /* Envoy's TcpUpstream answers the CONNECT itself once connected */
        lg_resp_head_t *ok = h2o_mem_alloc_pool(pool_of(r), sizeof(*ok));
        *ok = (lg_resp_head_t){.status = 200, .version = LG_HTTP_11};
        on_upstream_headers(stream, ok, 0);
        if (r->upstream == NULL || r->done)
            return;
        if (end)
            stream->ops->send_data(stream, h2o_iovec_init(NULL, 0), 1);
    } else {
        stream->ops->send_headers(stream, &r->upstream_req, end);
    }
    if (r->upstream == NULL)
        return;
    if (r->retry != NULL && r->retry->per_try_timeout_ms != 0 && !r->response_started)
        lg_timer_start(&lg_hcm_worker(r->stream)->loop, &r->per_try_timer, r->retry->per_try_timeout_ms, per_try_timeout);
    touch_idle(r);
    send_pending_body(r);
}

static const char *pool_failure_reason(lg_pool_failure_t reason)
{
    switch (reason) {
    case LG_POOL_OVERFLOW:
        return "overflow";
    default:
        return "connection failure";
    }
}

static void on_pool_failure(void *data, lg_pool_failure_t reason, lg_host_t *host, const char *transport_failure_reason)
{
    router_t *r = data;
    char *body;
    r->pool_req = NULL;
    if (host != NULL && r->n_attempted < LG_ARRAY_SIZE(r->attempted))
        r->attempted[r->n_attempted++] = host;
    if (transport_failure_reason != NULL && transport_failure_reason[0] != '\0')
        r->stream->info.upstream_transport_failure_reason =
            h2o_strdup(pool_of(r), transport_failure_reason, strlen(transport_failure_reason));
    switch (reason) {
    case LG_POOL_NO_HEALTHY_HOST:
        local_reply(r, 503, "no healthy upstream", "no_healthy_upstream", LG_RF(NO_HEALTHY_UPSTREAM));
        return;
    case LG_POOL_OVERFLOW:
        reply(r, 503, LG_LIT("upstream connect error or disconnect/reset before headers. reset reason: overflow"),
              "upstream_reset_before_response_started{overflow}", LG_RF(UPSTREAM_OVERFLOW), LG_LIT("x-envoy-overloaded"),
              LG_LIT("true"));
        return;
    default:
        break;
    }
    const char *tfr = transport_failure_reason != NULL && transport_failure_reason[0] != '\0' ? transport_failure_reason : NULL;
    if (tfr != NULL) {
        size_t n = strlen(tfr) + 160;
        body = h2o_mem_alloc_pool(pool_of(r), n);
        snprintf(body, n,
                 "upstream connect error or disconnect/reset before headers. reset reason: %s, transport failure reason: %s",
                 pool_failure_reason(reason), tfr);
    } else {
        body = "upstream connect error or disconnect/reset before headers. reset reason: connection failure";
    }
    char *details = h2o_mem_alloc_pool(pool_of(r), 256);
    snprintf(details, 256, "upstream_reset_before_response_started{connection_failure%s%s}", tfr ? "," : "", tfr ? tfr : "");
    for (char *p = details; *p; ++p)
        if (*p == ' ')
            *p = '_';
    try_retry_or_fail(r, LG_RETRY_ON_CONNECT_FAILURE, 503, body, details, LG_RF(UPSTREAM_CONNECTION_FAILURE));
}

static const lg_pool_cbs_t pool_cbs = {on_pool_ready, on_pool_failure};

static void on_tcp_connect(lg_upstream_tcp_t *u, void *data)
{
    router_t *r = data;
    r->tcp_connecting = NULL;
    lg_stream_t *stream = lg_router_tcp_stream_new(&lg_hcm_worker(r->stream)->loop, u);
    struct sockaddr_storage *local = &r->stream->info.upstream_local;
    socklen_t len = sizeof(*local);
    if (getsockname(h2o_socket_get_fd(lg_upstream_tcp_socket(u)), (struct sockaddr *)local, &len) != 0)
        local->ss_family = 0;
    stream_ready(r, stream, lg_upstream_tcp_host(u));
}

static void on_tcp_failure(void *data, lg_pool_failure_t reason, lg_host_t *host, const char *detail)
{
    router_t *r = data;
    r->tcp_connecting = NULL;
    on_pool_failure(r, reason, host, detail);
}

static const lg_upstream_tcp_cbs_t tcp_cbs = {on_tcp_connect, on_tcp_failure};

static int status_retriable(router_t *r, int status, const lg_resp_head_t *head)
{
    const lg_retry_policy_t *p = r->retry;
    if (p == NULL)
        return 0;
    if ((p->retry_on & LG_RETRY_ON_5XX) && status >= 500)
        return 1;
    if ((p->retry_on & LG_RETRY_ON_GATEWAY_ERROR) && (status == 502 || status == 503 || status == 504))
        return 1;
    if ((p->retry_on & LG_RETRY_ON_RETRIABLE_4XX) && status == 409)
        return 1;
    if (p->retry_on & LG_RETRY_ON_RETRIABLE_STATUS_CODES)
        for (size_t i = 0; i != p->n_retriable_status_codes; ++i)
            if ((int)p->retriable_status_codes[i] == status)
                return 1;
    if ((p->retry_on & LG_RETRY_ON_ENVOY_RATE_LIMITED) &&
        lg_headers_find(&head->headers, H2O_STRLIT("x-envoy-ratelimited"), 0) >= 0)
        return 1;
    if (p->retry_on & LG_RETRY_ON_RETRIABLE_HEADERS)
        for (size_t i = 0; i != p->n_retriable_headers; ++i)
            if (lg_header_matcher_match(p->retriable_headers + i, &head->headers))
                return 1;
    return 0;
}

static void backoff_fired(lg_timer_t *t)
{
    router_t *r = H2O_STRUCT_FROM_MEMBER(router_t, backoff_timer, t);
    start_attempt(r);
}

/* Schedules a retry when the policy allows one for `cause_bit`; otherwise
 * answers with the given local reply. */
static void try_retry_or_fail(router_t *r, uint32_t cause_bit, int status, const char *body, const char *details, uint32_t flags)
{
    const lg_retry_policy_t *p = r->retry;
    int would_retry = p != NULL && !r->no_retry && !r->response_started && (p->retry_on & cause_bit) != 0;
    int retriable = would_retry && r->retries_left != 0;
    if (would_retry && r->retries_left == 0)
        cluster_stat(r, LG_CLUSTER_STAT_upstream_rq_retry_limit_exceeded); /* Envoy's NoRetryLimitExceeded */
    if (retriable && !r->retry_slot) {
        if (!lg_cluster_retry_begin(r->cluster))
            retriable = 0;
        else
            r->retry_slot = 1;
    }
    if (!retriable) {
        if (r->retries_left == 0 && p != NULL && r->attempts > 1)
            flags |= LG_RF(UPSTREAM_RETRY_LIMIT_EXCEEDED);
        local_reply(r, status, body, details, flags);
        return;
    }
    --r->retries_left;
    r->timeout_retry = (flags & LG_RF(UPSTREAM_REQUEST_TIMEOUT)) != 0; /* only the per-try timeouts pass UT here */
    detach_upstream(r, 1);
    cluster_stat(r, LG_CLUSTER_STAT_upstream_rq_retry);
    cluster_stat(r, LG_CLUSTER_STAT_upstream_rq_retry_backoff_exponential);
    /* Envoy's fully jittered exponential back-off */
    uint64_t base = p->base_interval_ms ? p->base_interval_ms : 25, max = p->max_interval_ms ? p->max_interval_ms : base * 10;
    uint64_t ceiling = base << (r->attempts - 1 < 10 ? r->attempts - 1 : 10);
    if (ceiling > max)
        ceiling = max;
    lg_timer_start(&lg_hcm_worker(r->stream)->loop, &r->backoff_timer, lg_random() % (ceiling + 1), backoff_fired);
}

/* The upstream response is complete: Envoy's onUpstreamComplete charges
 * upstream_rq_time, from the end of the downstream request (a response that
 * ends before the request did is not timed). */
static void response_ended(router_t *r)
{
    lg_timer_stop(&r->global_timer);
    r->response_ended = 1;
    if (r->request_end_us != 0 && dynamic_stats(r))
        lg_cluster_record_time(r->cluster, (lg_now_us() - r->request_end_us) / 1000);
}

static void on_upstream_headers(lg_stream_t *u, void *head_, int end_stream)
{
    router_t *r = u->ctx;
    lg_resp_head_t *head = head_;
    lg_stream_info_t *info = &r->stream->info;
    if (info->first_upstream_rx_us == 0)
        info->first_upstream_rx_us = lg_now_us();
    lg_timer_stop(&r->per_try_timer);
    touch_idle(r); /* unlike per_try_timeout, it runs on while the response streams */
    if (r->retry != NULL && !r->no_retry && status_retriable(r, head->status, head)) {
        if (r->retries_left != 0) {
            if (r->host != NULL)
                lg_cluster_record_response(r->cluster, r->host, head->status, dynamic_stats(r));
            try_retry_or_fail(r, ~0u, 0, NULL, NULL, 0);
            return;
        }
        cluster_stat(r, LG_CLUSTER_STAT_upstream_rq_retry_limit_exceeded); /* the response goes downstream */
    }
    r->response_started = 1;
    if (r->attempts > 1)
        cluster_stat(r, LG_CLUSTER_STAT_upstream_rq_retry_success);
    stop_retaining(r);
    lg_cluster_record_response(r->cluster, r->host, head->status, dynamic_stats(r));
    if (r->upgrade_over_h2)
        upgrade_response_from_h2(r, head);
    lg_h1_strip_hop_by_hop(&head->headers, head->status == 101);
    lg_headers_set(pool_of(r), &head->headers, LG_LIT("x-envoy-upstream-service-time"),
                   lg_u64_to_dec_pool(pool_of(r), (lg_now_us() - r->attempt_start_us) / 1000));
    lg_route_apply_response_headers(r->route, r->wc, &head->headers, info, pool_of(r));
    if (r->route->vhost != NULL && r->route->vhost->include_attempt_count_in_response)
        lg_headers_set(pool_of(r), &head->headers, LG_LIT("x-envoy-attempt-count"), lg_u64_to_dec_pool(pool_of(r), r->attempts));
    head->version = r->stream->downstream != NULL ? r->stream->downstream->version : head->version;
    if (end_stream)
        response_ended(r);
    lg_hcm_encode_headers(r->stream, head, end_stream);
}

static void on_upstream_data(lg_stream_t *u, h2o_iovec_t data, int end_stream)
{
    router_t *r = u->ctx;
    touch_idle(r);
    r->response_unconsumed += data.len;
    if (end_stream)
        response_ended(r);
    lg_hcm_encode_data(r->stream, data, end_stream);
}

static void on_upstream_trailers(lg_stream_t *u, lg_headers_t *trailers)
{
    router_t *r = u->ctx;
    touch_idle(r);
    response_ended(r);
    lg_hcm_encode_trailers(r->stream, trailers);
}

static void on_upstream_data_sent(lg_stream_t *u, size_t bytes)
{
    router_t *r = u->ctx;
    touch_idle(r);
    r->body_in_flight -= bytes < r->body_in_flight ? bytes : r->body_in_flight;
    if (!r->retain_body) {
        r->body_retained -= bytes < r->body_retained ? bytes : r->body_retained;
        consume_downstream(r, bytes);
    }
}

static void on_upstream_reset(lg_stream_t *u, lg_reset_reason_t reason, const char *details)
{
    router_t *r = u->ctx;
    r->upstream = NULL;
    lg_timer_stop(&r->per_try_timer);
    lg_timer_stop(&r->per_try_idle_timer);
    cluster_stat(r, LG_CLUSTER_STAT_upstream_rq_rx_reset);
    int termination = reason == LG_RESET_CONNECTION_TERMINATION || reason == LG_RESET_CONNECTION_FAILURE;
    uint32_t flag = termination ? LG_RF(UPSTREAM_CONNECTION_TERMINATION) : LG_RF(UPSTREAM_REMOTE_RESET);
    if (reason == LG_RESET_PROTOCOL_ERROR)
        flag = LG_RF(UPSTREAM_PROTOCOL_ERROR);
    const char *why = reason == LG_RESET_CONNECTION_TERMINATION ? "connection termination"
                      : reason == LG_RESET_PROTOCOL_ERROR       ? "protocol error"
                      : reason == LG_RESET_OVERFLOW             ? "overflow"
                      : reason == LG_RESET_REFUSED_STREAM       ? "remote refused stream reset"
                                                                : "remote reset";
    /* Envoy's onUpstreamReset details: LateUpstreamReset once the response started, else EarlyUpstreamReset */
    char *det = h2o_mem_alloc_pool(pool_of(r), 128);
    snprintf(det, 128, "upstream_reset_%s_response_started{%s}", r->response_started ? "after" : "before", why);
    for (char *p = det; *p; ++p)
        if (*p == ' ')
            *p = '_';
    if (r->response_started) {
        r->stream->info.response_flags |= flag;
        r->stream->info.response_code_details = h2o_iovec_init(det, strlen(det));
        finish(r);
        lg_hcm_reset_stream(r->stream);
        return;
    }
    char *body = h2o_mem_alloc_pool(pool_of(r), 128);
    snprintf(body, 128, "upstream connect error or disconnect/reset before headers. reset reason: %s", why);
    uint32_t cause = LG_RETRY_ON_RESET | LG_RETRY_ON_5XX | LG_RETRY_ON_GATEWAY_ERROR;
    if (reason == LG_RESET_REFUSED_STREAM)
        cause |= LG_RETRY_ON_REFUSED_STREAM;
    try_retry_or_fail(r, cause, reason == LG_RESET_PROTOCOL_ERROR ? 502 : 503, body, det, flag);
}

static void on_upstream_complete(lg_stream_t *u)
{
    router_t *r = u->ctx;
    r->upstream = NULL;
    lg_timer_stop(&r->per_try_timer);
    lg_timer_stop(&r->per_try_idle_timer);
    if (r->host != NULL) {
        lg_host_release(r->host);
        r->host = NULL;
    }
}

static const lg_stream_cbs_t upstream_cbs = {
    .on_headers = on_upstream_headers,
    .on_data = on_upstream_data,
    .on_trailers = on_upstream_trailers,
    .on_data_sent = on_upstream_data_sent,
    .on_reset = on_upstream_reset,
    .on_complete = on_upstream_complete,
};

/* ---- timeouts ---- */

/* A timeout once the response has started: nothing to answer, the stream is reset (UT). */
static void reset_on_timeout(router_t *r, h2o_iovec_t details)
{
    r->stream->info.response_flags |= LG_RF(UPSTREAM_REQUEST_TIMEOUT);
    r->stream->info.response_code_details = details;
    finish(r);
    lg_hcm_reset_stream(r->stream);
}

static void global_timeout(lg_timer_t *t)
{
    router_t *r = H2O_STRUCT_FROM_MEMBER(router_t, global_timer, t);
    cluster_stat(r, LG_CLUSTER_STAT_upstream_rq_timeout);
    if (r->response_started) {
        reset_on_timeout(r, LG_LIT("upstream_response_timeout"));
        return;
    }
    local_reply(r, 504, "upstream request timeout", "upstream_response_timeout", LG_RF(UPSTREAM_REQUEST_TIMEOUT));
}

static void per_try_timeout(lg_timer_t *t)
{
    router_t *r = H2O_STRUCT_FROM_MEMBER(router_t, per_try_timer, t);
    cluster_stat(r, LG_CLUSTER_STAT_upstream_rq_per_try_timeout);
    /* Envoy retries a per-try timeout under 5xx, gateway-error and reset */
    try_retry_or_fail(r, LG_RETRY_ON_5XX | LG_RETRY_ON_GATEWAY_ERROR | LG_RETRY_ON_RESET, 504, "upstream request timeout",
                      "upstream_per_try_timeout", LG_RF(UPSTREAM_REQUEST_TIMEOUT));
}

/* Envoy's onPerTryIdleTimeout: as a per-try timeout (retried under 5xx, gateway-error and
 * reset while no response started); once the response streams, the stream is reset. */
static void per_try_idle_timeout(lg_timer_t *t)
{
    router_t *r = H2O_STRUCT_FROM_MEMBER(router_t, per_try_idle_timer, t);
    cluster_stat(r, LG_CLUSTER_STAT_upstream_rq_per_try_idle_timeout);
    if (r->response_started) {
        reset_on_timeout(r, LG_LIT("upstream_per_try_idle_timeout"));
        return;
    }
    try_retry_or_fail(r, LG_RETRY_ON_5XX | LG_RETRY_ON_GATEWAY_ERROR | LG_RETRY_ON_RESET, 504, "upstream request timeout",
                      "upstream_per_try_idle_timeout", LG_RF(UPSTREAM_REQUEST_TIMEOUT));
}

/* ---- the request ---- */

static void start_attempt(router_t *r)
{
    lg_lb_context_t ctx = {0};
    ctx.request = r->stream->req;
    if (r->retry != NULL && r->retry->previous_hosts) {
        ctx.excluded = r->attempted;
        ctx.n_excluded = r->n_attempted;
        ctx.host_selection_retry_max_attempts = r->retry->host_selection_retry_max_attempts;
    }
    ++r->attempts;
    r->upstream_headers_sent = 0;
    if (r->terminate_connect) {
        lg_pool_failure_t failure;
        if ((r->tcp_connecting = lg_upstream_tcp_connect(r->cluster, &ctx, &tcp_cbs, r, &failure)) == NULL)
            on_pool_failure(r, failure, NULL, "");
        return;
    }
    lg_pool_request_t *req = lg_cluster_request_stream(r->cluster, r->stream->req->version, &ctx, &pool_cbs, r);
    if (req != NULL)
        r->pool_req = req;
}

/* Envoy's FilterUtility::finalTimeout (the x-envoy-upstream-rq-* headers
 * aside): a route with max_stream_duration leaves timeouts to the HCM; a gRPC
 * request on a route with max_grpc_timeout takes its grpc-timeout (0 when
 * absent), less grpc_timeout_offset when that leaves some, capped unless the
 * cap is 0; everything else the route's timeout. */
static uint64_t final_timeout(router_t *r, const lg_req_head_t *req)
{
    const lg_route_action_t *a = &r->route->action;
    if (lg_hcm_route_uses_new_timeouts(r->route))
        return 0;
    if (!r->stream->is_grpc || a->max_grpc_timeout_ms < 0)
        return a->timeout_ms;
    int64_t header = lg_hcm_grpc_timeout_ms(req);
    uint64_t t = header >= 0 ? (uint64_t)header : 0;
    if (a->grpc_timeout_offset_ms >= 0 && (uint64_t)a->grpc_timeout_offset_ms < t)
        t -= (uint64_t)a->grpc_timeout_offset_ms;
    if (a->max_grpc_timeout_ms != 0 && (t == 0 || t > (uint64_t)a->max_grpc_timeout_ms))
        t = (uint64_t)a->max_grpc_timeout_ms;
    return t;
}

/* Envoy's setTimeoutHeaders: x-envoy-expected-rq-timeout-ms is the per-try
 * timeout (unless it is not below the global one) or the global timeout (0:
 * no header); with max_grpc_timeout the upstream's grpc-timeout says the same. */
static uint64_t expected_timeout(router_t *r)
{
    uint64_t per_try = r->retry != NULL ? r->retry->per_try_timeout_ms : 0;
    if (per_try >= r->timeout_ms && r->timeout_ms != 0)
        per_try = 0;
    return per_try != 0 ? per_try : r->timeout_ms;
}

static int sets_grpc_timeout(router_t *r)
{
    return r->stream->is_grpc && !lg_hcm_route_uses_new_timeouts(r->route) && r->route->action.max_grpc_timeout_ms >= 0;
}

enum { DROP_EXPECTED_TIMEOUT = 1, DROP_GRPC_TIMEOUT = 2, DROP_ORIGINAL_PATH = 4 };

/* Appends src's headers to dst (room reserved) but those in `drop`, which the
 * router sets afterwards: one pass instead of an lg_headers_set() scan each. */
static void copy_request_headers(lg_headers_t *dst, const lg_headers_t *src, unsigned drop)
{
    for (size_t i = 0; i != src->size; ++i) {
        const lg_header_t *e = src->entries + i;
        const char *n = e->name.base;
        switch (e->name.len) {
        case sizeof("grpc-timeout") - 1:
            if ((drop & DROP_GRPC_TIMEOUT) && memcmp(n, H2O_STRLIT("grpc-timeout")) == 0)
                continue;
            break;
        case sizeof("x-envoy-original-path") - 1:
            if ((drop & DROP_ORIGINAL_PATH) && memcmp(n, H2O_STRLIT("x-envoy-original-path")) == 0)
                continue;
            break;
        case sizeof("x-envoy-expected-rq-timeout-ms") - 1:
            if ((drop & DROP_EXPECTED_TIMEOUT) && memcmp(n, H2O_STRLIT("x-envoy-expected-rq-timeout-ms")) == 0)
                continue;
            break;
        }
        dst->entries[dst->size++] = *e;
    }
}

/* A CONNECT on a route whose CONNECT upgrade_config has a connect_config is
 * terminated here (Envoy's TCP upstream); any other CONNECT is proxied. */
static int terminates_connect(const lg_route_t *route)
{
    for (size_t i = 0; i != route->action.n_upgrade_configs; ++i) {
        const lg_upgrade_config_t *u = route->action.upgrade_configs + i;
        if (h2o_memis(u->upgrade_type.base, u->upgrade_type.len, H2O_STRLIT("connect")))
            return u->connect_has_config;
    }
    return 0;
}

static void build_upstream_request(router_t *r, lg_req_head_t *req)
{
    lg_req_head_t *u = &r->upstream_req;
    h2o_mem_pool_t *pool = pool_of(r);
    uint64_t expected = expected_timeout(r);
    int grpc_timeout = expected != 0 && sets_grpc_timeout(r);
    h2o_iovec_t path = lg_route_path_rewrite(r->route, req->path, pool);
    unsigned drop = (expected != 0 ? DROP_EXPECTED_TIMEOUT : 0) | (grpc_timeout ? DROP_GRPC_TIMEOUT : 0) |
                    (path.base != NULL ? DROP_ORIGINAL_PATH : 0);
    *u = *req;
    u->headers.entries = NULL;
    u->headers.size = u->headers.capacity = 0;
    h2o_vector_reserve(pool, &u->headers, req->headers.size + 8);
    copy_request_headers(&u->headers, &req->headers, drop);
    lg_h1_strip_hop_by_hop(&u->headers, r->stream->upgrade); /* keeps te as "te: trailers" when it lists trailers */
    if (path.base != NULL) {
        lg_headers_add(pool, &u->headers, LG_LIT("x-envoy-original-path"), req->path);
        u->path = path;
    }
    h2o_iovec_t host = lg_route_host_rewrite(r->route, r->wc, req, pool);
    if (host.base != NULL) {
        u->authority = host;
        append_xfh(r);
    }
    if (expected != 0)
        lg_headers_add(pool, &u->headers, LG_LIT("x-envoy-expected-rq-timeout-ms"), lg_u64_to_dec_pool(pool, expected));
    if (grpc_timeout)
        lg_headers_add(pool, &u->headers, LG_LIT("grpc-timeout"), lg_hcm_grpc_timeout_value(pool, expected));
    lg_route_apply_request_headers(r->route, r->wc, &u->headers, &r->stream->info, pool);
}

/* Envoy's shadowing: a copy of the upstream request per mirror policy whose
 * runtime_fraction lets it through, to its cluster (or the cluster a request
 * header names), sent once the request is whole. */
static void start_shadows(router_t *r, const lg_req_head_t *req, int end_stream)
{
    const lg_route_action_t *a = &r->route->action;
    r->shadows = h2o_mem_alloc_pool(pool_of(r), a->n_mirror_policies * sizeof(*r->shadows));
    for (size_t i = 0; i != a->n_mirror_policies; ++i) {
        const lg_mirror_policy_t *m = a->mirror_policies + i;
        if (m->denominator != 0 && lg_random() % m->denominator >= m->numerator)
            continue;
        h2o_iovec_t name = m->cluster;
        if (name.len == 0 && !lg_req_header_first(req, m->cluster_header.base, m->cluster_header.len, &name))
            continue;
        lg_worker_cluster_t *c = lg_worker_clusters_find(lg_worker_cluster_view(lg_hcm_worker(r->stream)), name.base, name.len);
        if (c == NULL)
            continue;
        lg_shadow_t *sh = lg_shadow_new(c, &r->upstream_req, req->version, retry_shadow_limit(r));
        int over_limit = 0; /* an empty body always fits */
        if (end_stream)
            lg_shadow_data(sh, h2o_iovec_init(NULL, 0), 1, &over_limit);
        else
            r->shadows[r->n_shadows++] = sh;
    }
}

static lg_filter_status_t decode_headers(lg_http_filter_t *f, lg_req_head_t *req, int end_stream)
{
    router_t *r = (router_t *)f;
    lg_hcm_stream_t *s = f->stream;
    r->stream = s;
    r->downstream_ended = end_stream;
    if (end_stream)
        r->request_end_us = r->stream->info.start_us; /* the head is the whole request */
    const lg_route_t *route = lg_hcm_route(s);
    if (route == NULL) {
        lg_hcm_stat_inc(s, LG_HCM_STAT_no_route);
        r->done = 1;
        lg_hcm_send_local_reply(s, 404, h2o_iovec_init(NULL, 0), "route_not_found", LG_RF(NO_ROUTE_FOUND));
        return LG_FILTER_STOP;
    }
    r->route = route;
    switch (route->kind) {
    case LG_ROUTE_DIRECT_RESPONSE:
        lg_hcm_stat_inc(s, LG_HCM_STAT_rq_direct_response);
        r->done = 1;
        reply(r, route->direct_status, route->has_direct_body ? route->direct_body : h2o_iovec_init(NULL, 0), "direct_response", 0,
              h2o_iovec_init(NULL, 0), h2o_iovec_init(NULL, 0));
        return LG_FILTER_STOP;
    case LG_ROUTE_REDIRECT:
        lg_hcm_stat_inc(s, LG_HCM_STAT_rq_redirect);
        r->done = 1;
        reply(r, route->redirect.response_code, h2o_iovec_init(NULL, 0), "redirect", 0, LG_LIT("location"),
              lg_route_redirect_url(route, req, s->pool));
        return LG_FILTER_STOP;
    case LG_ROUTE_NON_FORWARDING:
        r->done = 1;
        lg_hcm_send_local_reply(s, 404, h2o_iovec_init(NULL, 0), "route_not_found", LG_RF(NO_ROUTE_FOUND));
        return LG_FILTER_STOP;
    case LG_ROUTE_FORWARD:
        break;
    }
    h2o_iovec_t name = lg_route_pick_cluster(route, req, lg_random(), &r->wc);
    s->info.upstream_cluster = name;
    r->cluster = name.base != NULL ? lg_worker_clusters_find(lg_worker_cluster_view(lg_hcm_worker(s)), name.base, name.len) : NULL;
    if (r->cluster == NULL) {
        lg_hcm_stat_inc(s, LG_HCM_STAT_no_cluster);
        r->done = 1;
        lg_hcm_send_local_reply(s, route->action.cluster_not_found_response_code, h2o_iovec_init(NULL, 0), "cluster_not_found",
                                LG_RF(NO_CLUSTER_FOUND));
        return LG_FILTER_STOP;
    }
    lg_worker_cluster_addref(r->cluster);
    r->retry = route->action.retry_policy;
    /* a tunnel's bytes are not kept for a retry */
    r->retries_left = r->retry != NULL && !s->upgrade && !s->connect ? r->retry->num_retries : 0;
    if (r->retry != NULL && r->retry->n_retriable_request_headers != 0) {
        /* Envoy's RetryStateImpl::create: retries only for requests that match one of them */
        int match = 0;
        for (size_t i = 0; !match && i != r->retry->n_retriable_request_headers; ++i)
            match = lg_header_matcher_match_req(r->retry->retriable_request_headers + i, req);
        if (!match) {
            r->no_retry = 1;
            r->retries_left = 0;
        }
    }
    r->retain_body = r->retries_left != 0;
    r->terminate_connect = s->connect && terminates_connect(route);
    r->timeout_ms = final_timeout(r, req);
    build_upstream_request(r, req);
    if (route->action.n_mirror_policies != 0 && !s->upgrade && !s->connect)
        start_shadows(r, req, end_stream);
    if (end_stream)
        arm_global_timer(r);
    start_attempt(r);
    return LG_FILTER_STOP;
}

static lg_filter_status_t decode_data_and_arm(lg_http_filter_t *f, h2o_iovec_t data, int end_stream)
{
    router_t *r = (router_t *)f;
    if (end_stream && r->route != NULL && !r->done)
        arm_global_timer(r);
    return decode_data(f, data, end_stream);
}

static void on_encode_data_sent(lg_http_filter_t *f, size_t bytes)
{
    router_t *r = (router_t *)f;
    if (r->upstream != NULL) {
        r->response_unconsumed -= bytes < r->response_unconsumed ? bytes : r->response_unconsumed;
        r->upstream->ops->consume(r->upstream, bytes);
    }
}

/* The downstream stopped reading the request body on the limit the router holds, or
 * reads on: Envoy counts these where its upstream request's buffer crosses the
 * watermarks (the upstream takes the body slower than the client sends it). */
static void on_decode_flow(lg_http_filter_t *f, int paused)
{
    router_t *r = (router_t *)f;
    cluster_stat(r, paused ? LG_CLUSTER_STAT_upstream_flow_control_backed_up_total
                           : LG_CLUSTER_STAT_upstream_flow_control_drained_total);
}

static void on_destroy(lg_http_filter_t *f)
{
    router_t *r = (router_t *)f;
    if (r->stream == NULL)
        return;
    for (size_t i = 0; i != r->n_shadows; ++i)
        lg_shadow_abandon(r->shadows[i]); /* the request never ended */
    r->n_shadows = 0;
    finish(r);
    if (r->cluster != NULL) {
        lg_worker_cluster_release(r->cluster);
        r->cluster = NULL;
    }
}

/* The router's config is one flag: a non-NULL config means dynamic_stats is
 * false (Envoy then charges no upstream_rq_<code>, upstream_rq_<class> or
 * upstream_rq_time); NULL, Envoy's default. Nothing to free either way. */
static const char no_dynamic_stats;

static int dynamic_stats(const router_t *r)
{
    return r->super.config == NULL;
}

static void *compile(const ProtobufCMessage *config, int *ok, lg_error_t *err)
{
    const Envoy__Extensions__Filters__Http__Router__V3__Router *m = (const void *)config;
    *ok = 1;
    if (m != NULL && m->n_upstream_http_filters != 0) {
        *ok = 0;
        lg_error(err, "upstream_http_filters: upstream HTTP filters are not supported");
        return NULL;
    }
    return m != NULL && m->dynamic_stats != NULL && !m->dynamic_stats->value ? (void *)&no_dynamic_stats : NULL;
}

const lg_http_filter_type_t lg_filter_router = {
    .name = "envoy.filters.http.router",
    .config_type = &envoy__extensions__filters__http__router__v3__router__descriptor,
    .is_terminal = 1,
    .compile = compile,
    .state_size = sizeof(router_t) - sizeof(lg_http_filter_t),
    .decode_headers = decode_headers,
    .decode_data = decode_data_and_arm,
    .decode_trailers = decode_trailers,
    .on_encode_data_sent = on_encode_data_sent,
    .on_decode_flow = on_decode_flow,
    .on_destroy = on_destroy,
};
