"""Envoy's per-codec stats of downstream connections (http1.* and http2.*, Http1::CodecStats and
Http2::CodecStats), and headers_with_underscores_action on both codecs: DROP_HEADER drops the
header and counts it, REJECT_REQUEST answers 400 on HTTP/1.1 and resets the stream on HTTP/2
(Envoy's ServerConnectionImpl::checkHeaderNameForUnderscores), other streams unharmed."""
import socket

import pytest

from lib import config as cfg
from lib.h2client import H2Client
from lib.legate import time_scale
from lib.rawhttp import RawHTTP
from lib.upstream import header_values
from lib.wait import wait_for

T = time_scale()


def proxy(legate, ports, up, action=None):
    extra = {}
    if action is not None:
        extra["common_http_protocol_options"] = {"headers_with_underscores_action": action}
    return legate(cfg.simple_proxy(ports(), ports(), [up.port], **extra))


def wait_stat(lg, name, value):
    wait_for(lambda: lg.admin.stat(name) == value, timeout=5 * T, what=f"{name} == {value}")


def last_request(up, path):
    return [r for r in up.requests if r["path"] == path][-1]


def test_underscore_headers_dropped(legate, ports, upstream):
    up = upstream()
    lg = proxy(legate, ports, up, "DROP_HEADER")
    with RawHTTP("127.0.0.1", lg.listener_port(), timeout=10) as c:
        c.request("GET", "/h1", headers=[("x_under", "1"), ("x-dash", "2"), ("another_one", "3")])
        assert c.read_response().status == 200
    with H2Client("127.0.0.1", lg.listener_port(), timeout=10) as c:
        assert c.get("/h2", headers=[("x_under", "1"), ("x-dash", "2")]).status == 200
    for path in ("/h1", "/h2"):
        rec = last_request(up, path)
        assert header_values(rec, "x_under") == [] and header_values(rec, "x-dash") == ["2"], rec["headers"]
    assert header_values(last_request(up, "/h1"), "another_one") == []
    wait_stat(lg, "http1.dropped_headers_with_underscores", 2)
    wait_stat(lg, "http2.dropped_headers_with_underscores", 1)
    assert lg.admin.stat("http1.requests_rejected_with_underscores_in_headers") == 0


def test_underscore_headers_rejected(legate, ports, upstream):
    up = upstream()
    lg = proxy(legate, ports, up, "REJECT_REQUEST")
    with RawHTTP("127.0.0.1", lg.listener_port(), timeout=10) as c:
        c.request("GET", "/h1", headers=[("x_under", "1")])
        assert c.read_response().status == 400
    with H2Client("127.0.0.1", lg.listener_port(), timeout=10) as c:
        bad = c.request("GET", "/h2", headers=[("x_under", "1")])
        good = c.request("GET", "/fine", headers=[("x-dash", "1")])
        assert c.wait_response(good).status == 200
        r = c.wait_response(bad)
        assert r.reset_code is not None and r.status is None, r
    assert [r["path"] for r in up.requests] == ["/fine"]
    wait_stat(lg, "http1.requests_rejected_with_underscores_in_headers", 1)
    wait_stat(lg, "http2.requests_rejected_with_underscores_in_headers", 1)
    assert lg.admin.stat("http2.tx_reset") == 1


def test_underscore_headers_allowed_by_default(legate, ports, upstream):
    up = upstream()
    lg = proxy(legate, ports, up)
    with H2Client("127.0.0.1", lg.listener_port(), timeout=10) as c:
        assert c.get("/h2", headers=[("x_under", "1")]).status == 200
    assert header_values(last_request(up, "/h2"), "x_under") == ["1"]
    assert lg.admin.stat("http2.dropped_headers_with_underscores") == 0


def test_http2_stream_stats(legate, ports, upstream):
    """streams_active follows the open streams; rx_reset counts the client's RST_STREAM, trailers
    the requests that carry them, goaway_sent Legate's GOAWAY."""
    up = upstream()
    lg = proxy(legate, ports, up)
    with H2Client("127.0.0.1", lg.listener_port(), timeout=10) as c:
        slow = c.request("GET", "/delay/20000")
        other = c.request("GET", "/delay/20000")
        up.wait_inflight(2, timeout=10 * T)
        wait_stat(lg, "http2.streams_active", 2)
        c.conn.reset_stream(slow)
        c._flush()
        wait_stat(lg, "http2.rx_reset", 1)
        wait_stat(lg, "http2.streams_active", 1)
        sid = c.request("POST", "/t", body=b"abc", trailers=[("x-trailer", "1")])
        assert c.wait_response(sid).status == 200
        wait_stat(lg, "http2.trailers", 1)
        assert lg.admin.post("/drain_listeners?graceful").status == 200
        goaway = c.wait_goaway(timeout=10 * T)
        assert goaway is not None and goaway[0] == 0
        wait_for(lambda: lg.admin.stat("http2.goaway_sent") >= 1, timeout=5 * T, what="http2.goaway_sent")
        assert other is not None
    wait_stat(lg, "http2.streams_active", 0)
    assert lg.admin.stat("http2.tx_reset") == 0


@pytest.mark.parametrize("headers,stat", [
    ([("x-big", "v" * 70000)], "http2.header_overflow"),
    ([("connection", "close")], "http2.rx_messaging_error"),
])
def test_http2_bad_headers_counted(legate, ports, upstream, headers, stat):
    up = upstream()
    lg = legate(cfg.simple_proxy(ports(), ports(), [up.port],
                                 http2_protocol_options={"override_stream_error_on_invalid_http_message": True}))
    with H2Client("127.0.0.1", lg.listener_port(), timeout=10) as c:
        c.conn.config.validate_outbound_headers = False  # send what a broken client sends
        c.conn.config.normalize_outbound_headers = False
        bad = c.request("GET", "/bad", headers=headers)
        assert c.wait_response(bad).reset_code is not None
        assert c.get("/fine").status == 200
    wait_stat(lg, stat, 1)
    assert [r["path"] for r in up.requests] == ["/fine"]


def test_underscore_trailers_dropped(legate, ports, upstream):
    up = upstream()
    lg = proxy(legate, ports, up, "DROP_HEADER")
    with RawHTTP("127.0.0.1", lg.listener_port(), timeout=10) as c:
        c.send(b"POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"3\r\nabc\r\n0\r\nx_trail: 1\r\nx-kept: 2\r\n\r\n")
        assert c.read_response().status == 200
    wait_stat(lg, "http1.dropped_headers_with_underscores", 1)


def exchange(sock, request):
    """Writes one HTTP/1.1 request and reads its content-length framed response; returns the
    response's bytes as they came off the socket."""
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "closed before the response head"
        data += chunk
    head = data.split(b"\r\n\r\n", 1)[0]
    length = [int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")[1:]
              if line.split(b":", 1)[0].strip().lower() == b"content-length"][0]
    while len(data) < len(head) + 4 + length:
        chunk = sock.recv(65536)
        assert chunk, "closed before the response body"
        data += chunk
    return data


def test_connection_byte_counts_are_wire_bytes(legate, ports, upstream):
    """http.<prefix>.downstream_cx_{rx,tx}_bytes_total count what the connection read and wrote,
    heads and framing included, as Envoy's connection stats do: a GET without a body moves the
    counts too (they counted body bytes only before). HTTP/1.1 figures are exact; HTTP/2 ones
    include the preface, SETTINGS and the frame headers."""
    up = upstream()
    lg = proxy(legate, ports, up)
    rx, tx = "http.ingress_http.downstream_cx_rx_bytes_total", "http.ingress_http.downstream_cx_tx_bytes_total"
    get = b"GET /bytes/1000 HTTP/1.1\r\nHost: x\r\n\r\n"
    post = b"POST /p HTTP/1.1\r\nHost: x\r\ncontent-length: 5000\r\n\r\n" + b"p" * 5000
    with socket.create_connection(("127.0.0.1", lg.listener_port()), timeout=10) as s:
        got = exchange(s, get)
        wait_stat(lg, rx, len(get))
        wait_stat(lg, tx, len(got))
        got += exchange(s, post)
        wait_stat(lg, rx, len(get) + len(post))
        wait_stat(lg, tx, len(got))
    before_rx, before_tx = lg.admin.stat(rx), lg.admin.stat(tx)
    with H2Client("127.0.0.1", lg.listener_port(), timeout=10) as c:
        r = c.get("/bytes/3000")
        assert r.status == 200 and len(r.body) == 3000
        wait_for(lambda: lg.admin.stat(rx) >= before_rx + 24 + 9 and lg.admin.stat(tx) >= before_tx + 3000 + 9 * 3,
                 timeout=5 * T, what="the h2 connection's bytes counted")
