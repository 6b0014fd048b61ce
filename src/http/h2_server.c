/*
 * The HTTP/2 server codec (downstream): connection ops and response heads.
 * Everything else is shared with the client side in h2_common.c.
 */
#include "legate/common.h"
#include "legate/http.h"
#include "legate/h2.h"

static lg__h2_conn_t *conn_of(lg_server_conn_t *c)
{
    return H2O_STRUCT_FROM_MEMBER(lg__h2_conn_t, super.server, c);
}

/* A single GOAWAY naming the last stream we took; the connection closes once
 * those streams are done (Envoy's final GOAWAY, without the notice before it). */
static void conn_drain(lg_server_conn_t *c)
{
    lg__h2_conn_t *conn = conn_of(c);
    if (conn->state != LG__H2_OPEN || conn->drain_sent)
        return;
    conn->drain_sent = 1;
    nghttp2_submit_goaway(conn->session, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(conn->session),
                          NGHTTP2_NO_ERROR, NULL, 0);
    lg__h2_request_run(conn);
}

static void conn_close(lg_server_conn_t *c)
{
    lg__h2_conn_t *conn = conn_of(c);
    if (conn->state != LG__H2_OPEN)
        return;
    lg__h2_request_close(conn, LG_RESET_LOCAL, "closed by the connection manager", NGHTTP2_NO_ERROR);
    if (conn->depth == 0) {
        lg__h2_enter(conn);
        lg__h2_leave(conn);
    }
}

static const lg_server_conn_ops_t server_ops = {conn_drain, conn_close, LG_HTTP_2};

void lg__h2_server_send_head(lg__h2_stream_t *s, lg_resp_head_t *head, int end_stream)
{
    lg__h2_conn_t *conn = s->conn;
    /* An HTTP/1.1 upgrade answer becomes the 200 of an extended CONNECT (Envoy's transformUpgradeResponseFromH1toH2). */
    unsigned status = head->status == 101 ? 200 : (unsigned)head->status % 1000;
    char digits[3] = {(char)('0' + status / 100), (char)('0' + status / 10 % 10), (char)('0' + status % 10)};
    lg__h2_pseudo_t pseudo = LG__H2_PSEUDO(":status", h2o_iovec_init(digits, 3));
    nghttp2_nv *nva;
    size_t n = lg__h2_build_nva(lg__h2_head_pool(s), &nva, &pseudo, 1, &head->headers, 0);
    if (status < 200) {
        nghttp2_submit_headers(conn->session, NGHTTP2_FLAG_NONE, (int32_t)s->super.id, NULL, nva, n, NULL);
        return;
    }
    nghttp2_data_provider prd = lg__h2_data_provider(s);
    if (nghttp2_submit_response(conn->session, (int32_t)s->super.id, nva, n, end_stream ? NULL : &prd) != 0)
        return; /* the stream is already closed; its reset is on its way */
    s->headers_sent = 1;
    if (end_stream)
        s->local_end = 1;
}

lg_server_conn_t *lg_h2_server_conn_new_ex(lg_loop_t *loop, h2o_socket_t *sock, const lg_h2_settings_t *settings,
                                           const lg_h2_options_t *options, const lg_server_conn_cbs_t *cbs, void *ctx)
{
    lg__h2_conn_t *conn = lg_calloc(1, sizeof(*conn));
    conn->super.server = (lg_server_conn_t){&server_ops, cbs, ctx};
    if (lg__h2_conn_init(conn, 1, loop, sock, settings, options) != 0) {
        free(conn);
        return NULL;
    }
    return &conn->super.server;
}

lg_server_conn_t *lg_h2_server_conn_new(lg_loop_t *loop, h2o_socket_t *sock, const lg_h2_settings_t *settings,
                                        const lg_server_conn_cbs_t *cbs, void *ctx)
{
    return lg_h2_server_conn_new_ex(loop, sock, settings, NULL, cbs, ctx);
}
