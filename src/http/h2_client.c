/*
 * The HTTP/2 client codec (upstream): stream admission against the peer's
 * SETTINGS_MAX_CONCURRENT_STREAMS and GOAWAY, and request heads. Everything
 * else is shared with the server side in h2_common.c.
 */
#include "legate/common.h"
#include "legate/http.h"
#include "legate/h2.h"

static lg__h2_conn_t *conn_of(lg_client_conn_t *c)
{
    return H2O_STRUCT_FROM_MEMBER(lg__h2_conn_t, super.client, c);
}

static size_t conn_capacity(lg_client_conn_t *c)
{
    lg__h2_conn_t *conn = conn_of(c);
    if (conn->state != LG__H2_OPEN || conn->close_requested || conn->goaway_received || conn->peer_gone)
        return 0;
    uint32_t max = nghttp2_session_get_remote_settings(conn->session, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
    return max > conn->num_streams ? max - conn->num_streams : 0;
}

static size_t conn_active_streams(lg_client_conn_t *c)
{
    return conn_of(c)->num_streams;
}

static lg_stream_t *conn_new_stream(lg_client_conn_t *c)
{
    lg__h2_conn_t *conn = conn_of(c);
    if (conn_capacity(c) == 0)
        return NULL;
    lg__h2_stream_t *s = lg__h2_stream_new(conn, 0);
    s->visible = 1;
    return &s->super;
}

static void conn_close(lg_client_conn_t *c)
{
    lg__h2_conn_t *conn = conn_of(c);
    if (conn->state != LG__H2_OPEN)
        return;
    lg__h2_request_close(conn, LG_RESET_LOCAL, "closed by the connection pool", NGHTTP2_NO_ERROR);
    if (conn->depth == 0) {
        lg__h2_enter(conn);
        lg__h2_leave(conn);
    }
}

static const lg_client_conn_ops_t client_ops = {conn_new_stream, conn_capacity, conn_active_streams, conn_close};

/* RFC 9113 8.3.1 and RFC 8441 4: CONNECT carries :method and :authority only,
 * an extended CONNECT (with :protocol) the full set. */
void lg__h2_client_send_head(lg__h2_stream_t *s, lg_req_head_t *head, int end_stream)
{
    lg__h2_conn_t *conn = s->conn;
    if (s->headers_sent)
        return;
    int plain_connect = h2o_memis(head->method.base, head->method.len, H2O_STRLIT("CONNECT")) && head->protocol.len == 0;
    lg__h2_pseudo_t pseudo[5] = {LG__H2_PSEUDO(":method", head->method), LG__H2_PSEUDO(":authority", head->authority)};
    size_t npseudo = 2;
    if (!plain_connect) {
        h2o_iovec_t scheme = head->scheme;
        if (scheme.len == 0)
            scheme = conn->sock->ssl != NULL ? LG_LIT("https") : LG_LIT("http");
        pseudo[npseudo++] = LG__H2_PSEUDO(":scheme", scheme);
        pseudo[npseudo++] = LG__H2_PSEUDO(":path", head->path.len != 0 ? head->path : LG_LIT("/"));
        if (head->protocol.len != 0)
            pseudo[npseudo++] = LG__H2_PSEUDO(":protocol", head->protocol);
    }
    nghttp2_nv *nva;
    size_t n = lg__h2_build_nva(lg__h2_head_pool(s), &nva, pseudo, npseudo, &head->headers, 1);
    nghttp2_data_provider prd = lg__h2_data_provider(s);
    int32_t id = nghttp2_submit_request(conn->session, NULL, nva, n, end_stream ? NULL : &prd, s);
    s->headers_sent = 1;
    if (id < 0) {
        /* Out of stream ids: the request never left, so it may be retried elsewhere. */
        lg__h2_stream_fail(s, LG_RESET_REFUSED_STREAM, nghttp2_strerror(id));
        return;
    }
    s->super.id = (uint32_t)id;
    if (end_stream)
        s->local_end = 1;
    ++conn->flood.streams_opened;
}

lg_client_conn_t *lg_h2_client_conn_new_ex(lg_loop_t *loop, h2o_socket_t *sock, const lg_h2_settings_t *settings,
                                           const lg_h2_options_t *options, const lg_client_conn_cbs_t *cbs, void *ctx)
{
    lg__h2_conn_t *conn = lg_calloc(1, sizeof(*conn));
    conn->super.client = (lg_client_conn_t){&client_ops, cbs, ctx, LG_HTTP_2};
    if (lg__h2_conn_init(conn, 0, loop, sock, settings, options) != 0) {
        free(conn);
        return NULL;
    }
    return &conn->super.client;
}

lg_client_conn_t *lg_h2_client_conn_new(lg_loop_t *loop, h2o_socket_t *sock, const lg_h2_settings_t *settings,
                                        const lg_client_conn_cbs_t *cbs, void *ctx)
{
    return lg_h2_client_conn_new_ex(loop, sock, settings, NULL, cbs, ctx);
}
