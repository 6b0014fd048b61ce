"""HTTP connection manager timeouts on the downstream side."""
from lib import config as cfg
from lib.h2client import H2Client
from lib.rawhttp import RawHTTP
from lib.wait import wait_for


def test_request_headers_timeout_answers_408_and_counts(legate, ports, upstream):
    """request_headers_timeout: a head that never completes gets 408 and the
    connection closes; a complete head on another connection is unaffected."""
    up = upstream()
    lg = legate(cfg.simple_proxy(ports(), ports(), [up.port], request_headers_timeout="0.3s"))
    with RawHTTP("127.0.0.1", lg.listener_port(), timeout=10) as slow:
        slow.send(b"GET /never-finished HTTP/1.1\r\nHost: x\r\n")
        with RawHTTP("127.0.0.1", lg.listener_port(), timeout=10) as fast:
            fast.request("GET", "/ok")
            assert fast.read_response().status == 200
        r = slow.read_response(timeout=10)
        assert r.status == 408
        assert (r.header("connection") or "").lower() == "close"
        assert slow.closed_by_peer(timeout=5)
    assert lg.admin.stat("http.ingress_http.downstream_rq_header_timeout") == 1
    assert [x["path"] for x in up.requests] == ["/ok"]


def test_request_headers_timeout_off_by_default(legate, ports, upstream):
    """Without request_headers_timeout a slow head still completes."""
    up = upstream()
    lg = legate(cfg.simple_proxy(ports(), ports(), [up.port], stream_idle_timeout="30s"))
    with RawHTTP("127.0.0.1", lg.listener_port(), timeout=10) as c:
        c.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n")
        # a full request on another connection proves legate had time to act on the partial one
        with RawHTTP("127.0.0.1", lg.listener_port(), timeout=10) as other:
            other.request("GET", "/other")
            assert other.read_response().status == 200
        c.send(b"\r\n")
        assert c.read_response().status == 200
    assert lg.admin.stat("http.ingress_http.downstream_rq_header_timeout") == 0


def test_request_headers_timeout_on_http2(legate, ports, upstream):
    """request_headers_timeout on an HTTP/2 stream whose header block never ends
    (HEADERS without END_HEADERS, no CONTINUATION): Envoy answers that stream 408
    and counts downstream_rq_header_timeout; other connections are unaffected."""
    import hpack
    from lib.h2client import FRAME_HEADERS, FRAME_RST_STREAM, H2Client, frame, hpack_headers, raw_connect, read_frames

    up = upstream()
    lg = legate(cfg.simple_proxy(ports(), ports(), [up.port], codec_type="HTTP2", request_headers_timeout="0.3s"))
    s = raw_connect("127.0.0.1", lg.listener_port())
    try:
        block = hpack_headers([(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", "/never")])
        s.sendall(frame(FRAME_HEADERS, 0x1, 1, block))  # END_STREAM, no END_HEADERS
        with H2Client("127.0.0.1", lg.listener_port()) as other:
            assert other.get("/ok").status == 200
        frames = read_frames(s, timeout=10, until=lambda f: f[0] == FRAME_RST_STREAM or
                             (f[0] == FRAME_HEADERS and f[2] == 1 and f[1] & 0x1))
    finally:
        s.close()
    heads = [dict(hpack.Decoder().decode(p)) for t, _, sid, p in frames if t == FRAME_HEADERS and sid == 1]
    resets = [sid for t, _, sid, _ in frames if t == FRAME_RST_STREAM]
    assert heads or resets, frames
    if heads:
        assert heads[0].get(":status") == "408", heads
    assert lg.admin.stat("http.ingress_http.downstream_rq_header_timeout") == 1
    assert [x["path"] for x in up.requests] == ["/ok"]


def limited(legate, ports, up, **common):
    return legate(cfg.simple_proxy(ports(), ports(), [up.port], common_http_protocol_options=common))


def test_max_requests_per_connection_http1(legate, ports, upstream):
    """The request that reaches the limit is answered with connection: close and the connection
    closes after it (Envoy's downstream_cx_max_requests_reached)."""
    up = upstream()
    lg = limited(legate, ports, up, max_requests_per_connection=2)
    with RawHTTP("127.0.0.1", lg.listener_port(), timeout=10) as c:
        c.request("GET", "/1")
        r = c.read_response()
        assert r.status == 200 and (r.header("connection") or "").lower() != "close"
        c.request("GET", "/2")
        r = c.read_response()
        assert r.status == 200 and (r.header("connection") or "").lower() == "close"
        assert c.closed_by_peer(timeout=5)
    # unlike a request that asked for the close, the client promised nothing: Legate keeps its side
    # for the delayed close (Envoy's FlushWriteAndDelay), so the client's close ends the connection
    wait_for(lambda: lg.admin.stat("http.ingress_http.downstream_cx_destroy_remote") == 1, timeout=5,
             what="the client's close ended the connection")
    assert lg.admin.stat("http.ingress_http.downstream_cx_destroy_local") == 0
    assert lg.admin.stat("http.ingress_http.downstream_cx_max_requests_reached") == 1


def test_max_requests_per_connection_http2(legate, ports, upstream):
    """HTTP/2: the stream that reaches the limit starts the drain: GOAWAY (NO_ERROR) naming it, its
    response still delivered."""
    up = upstream()
    lg = limited(legate, ports, up, max_requests_per_connection=2)
    with H2Client("127.0.0.1", lg.listener_port(), timeout=10) as c:
        assert c.get("/1").status == 200
        assert c.goaway is None
        assert c.get("/2").status == 200
        assert c.wait_goaway(timeout=5) == (0, 3)
    assert lg.admin.stat("http.ingress_http.downstream_cx_max_requests_reached") == 1


def test_max_connection_duration(legate, ports, upstream):
    """After max_connection_duration an idle HTTP/1.1 connection is closed, and an HTTP/2 one
    gets GOAWAY while its stream in flight still completes (Envoy's drain sequence)."""
    up = upstream()
    lg = limited(legate, ports, up, max_connection_duration="1s")
    with RawHTTP("127.0.0.1", lg.listener_port(), timeout=10) as h1, \
            H2Client("127.0.0.1", lg.listener_port(), timeout=10) as h2:
        h1.request("GET", "/first")
        assert h1.read_response().status == 200
        slow = h2.request("GET", "/delay/2500")
        assert h1.closed_by_peer(timeout=10)
        assert h2.wait_goaway(timeout=10) == (0, slow)
        assert h2.wait_response(slow, timeout=10).status == 200
    assert lg.admin.stat("http.ingress_http.downstream_cx_max_duration_reached") == 2
    assert lg.admin.stat("http.ingress_http.downstream_cx_drain_close") == 0
