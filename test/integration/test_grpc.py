"""gRPC through Legate: python3-grpcio client -> legate (h2c) -> python3-grpcio server (h2c).

Envoy behaviour checked here (source/common/http/utility.cc sendLocalReply,
source/common/grpc/common.cc, source/common/router/router.cc finalTimeout,
source/common/http/conn_manager_impl.cc refreshDurationTimeout):
- every call kind passes through with its metadata, -bin metadata and
  trailers (grpc-status, grpc-message) intact;
- a local reply to a gRPC request is a trailers-only response (HTTP 200,
  content-type application/grpc, grpc-status from Grpc::Utility::
  httpToGrpcStatus: 404 -> UNIMPLEMENTED, 503/504 -> UNAVAILABLE) with the
  reply body as a percent-encoded grpc-message;
- route max_stream_duration.grpc_timeout_header_max makes grpc-timeout the
  stream's duration limit: on expiry the HCM answers 504 (or 408 while the
  request is still open) with grpc-status DEADLINE_EXCEEDED and grpc-message
  "downstream duration timeout"; the deprecated max_grpc_timeout makes it the
  router's timeout: "upstream request timeout", UNAVAILABLE;
- client cancellation resets the upstream stream; an upstream reset before
  the response becomes UNAVAILABLE, after it a reset of the downstream stream.
"""
import hashlib
import os
import re
import socket
import threading
import time

import grpc
import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest

from lib import config as cfg
from lib.grpcsvc import GrpcClient, GrpcServer, stream_message
from lib.h2client import H2Client
from lib.wait import wait_for


class RawUpstream:
    """An h2c upstream (python-h2) that breaks gRPC calls by method:

    /test.Echo/ResetBefore  RST_STREAM(INTERNAL_ERROR) instead of a response
    /test.Echo/ResetAfter   response headers and one message, then RST_STREAM(INTERNAL_ERROR)
    /test.Echo/DropAfter    response headers and one message, then the connection is dropped
    anything else           never answered (unlike grpcio, it ignores grpc-timeout)

    `requests` keeps every request's headers, `resets_received` the stream ids the proxy reset.
    """

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.resets_sent = 0
        self.requests = []
        self.resets_received = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, sock):
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        paths = {}
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    return
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        paths[ev.stream_id] = dict(ev.headers)[":path"]
                        self.requests.append(dict(ev.headers))
                    elif isinstance(ev, h2.events.StreamReset):
                        self.resets_received.append(ev.stream_id)
                    elif isinstance(ev, h2.events.DataReceived):
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.StreamEnded):
                        if self._answer(conn, sock, ev.stream_id, paths[ev.stream_id]):
                            return
                sock.sendall(conn.data_to_send())
        except OSError:
            pass
        finally:
            sock.close()

    def _answer(self, conn, sock, sid, path):
        """Returns True when the connection is to be dropped."""
        if path.endswith("/ResetBefore"):
            conn.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
            self.resets_sent += 1
            return False
        if not path.endswith("After"):
            return False
        conn.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc")])
        conn.send_data(sid, b"\x00\x00\x00\x00\x07partial")
        sock.sendall(conn.data_to_send())
        time.sleep(0.2)  # the message reaches the client before the end
        if path.endswith("/DropAfter"):
            sock.shutdown(socket.SHUT_RDWR)
            return True
        conn.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
        self.resets_sent += 1
        return False

    def close(self):
        self.sock.close()


@pytest.fixture
def grpc_server():
    started = []

    def make():
        s = GrpcServer()
        started.append(s)
        return s

    yield make
    for s in started:
        s.close(0)


def start(legate, ports, upstream_port, route_extra=None, cluster_extra=None, **hcm_extra):
    cx = {"http2": True}
    cx.update(cluster_extra or {})
    return legate(cfg.simple_proxy(ports(), ports(), [upstream_port], route_extra=route_extra, cluster_extra=cx,
                                   **hcm_extra))


def client(lg):
    return GrpcClient(lg.listener_port())


def test_unary_with_metadata_and_trailers(legate, ports, grpc_server):
    srv = grpc_server()
    lg = start(legate, ports, srv.port)
    binval = bytes(range(256))
    with client(lg) as c:
        resp, call = c.unary.with_call(b"hello", metadata=[("x-text", "v1"), ("x-blob-bin", binval)], timeout=10)
    assert resp == b"hello"
    initial = dict(call.initial_metadata())
    trailing = dict(call.trailing_metadata())
    assert initial["echo-x-text"] == "v1" and initial["echo-x-blob-bin"] == binval
    assert trailing["trail-x-text"] == "v1" and trailing["trail-x-blob-bin"] == binval
    assert call.code() == grpc.StatusCode.OK
    assert lg.admin.stat("cluster.backend.upstream_cx_http2_total") >= 1


def test_error_status_and_message_pass_through(legate, ports, grpc_server):
    srv = grpc_server()
    lg = start(legate, ports, srv.port)
    with client(lg) as c:
        with pytest.raises(grpc.RpcError) as ei:
            c.unary(b"abort:FAILED_PRECONDITION:no luck % here \xe2\x9c\x93".decode("latin-1").encode("latin-1"),
                    timeout=10)
    assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert ei.value.details().startswith("no luck % here")


def test_server_streaming(legate, ports, grpc_server):
    srv = grpc_server()
    lg = start(legate, ports, srv.port)
    with client(lg) as c:
        msgs = list(c.server_stream(b"100:1000", timeout=20))
    assert len(msgs) == 100
    assert all(m == stream_message(i, 1000) for i, m in enumerate(msgs))


def test_client_streaming(legate, ports, grpc_server):
    srv = grpc_server()
    lg = start(legate, ports, srv.port)
    msgs = [os.urandom(100 + i) for i in range(50)]
    sha = hashlib.sha256(b"".join(msgs)).hexdigest()
    with client(lg) as c:
        resp = c.client_stream(iter(msgs), timeout=20)
    assert resp.decode() == f"50:{sum(len(m) for m in msgs)}:{sha}"


# Istio's default retry policy on every route: the router keeps the request body for a retry
# until the response starts (or the body outgrows the buffer limit), and streams must flow anyway.
ISTIO_RETRY = {"retry_policy": {"retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
                                "num_retries": 2}}


@pytest.mark.parametrize("route_extra", [None, ISTIO_RETRY], ids=["no-retry", "istio-retry"])
def test_bidi_streaming_in_lockstep(legate, ports, grpc_server, route_extra):
    srv = grpc_server()
    lg = start(legate, ports, srv.port, route_extra=route_extra)
    with client(lg) as c:
        out = []
        cond = threading.Condition()

        def requests():
            for i in range(20):
                msg = f"ping-{i}".encode()
                yield msg
                with cond:  # the next message only after the echo of this one: a real round trip
                    assert cond.wait_for(lambda: len(out) > i, timeout=10)

        for resp in c.bidi(requests(), timeout=20):
            with cond:
                out.append(resp)
                cond.notify_all()
    assert out == [f"ping-{i}".encode() for i in range(20)]


@pytest.mark.deadline(120)
@pytest.mark.parametrize("buffer_limit", [None, 32768])
@pytest.mark.parametrize("route_extra", [None, ISTIO_RETRY], ids=["no-retry", "istio-retry"])
def test_16mib_messages_both_ways(legate, ports, grpc_server, buffer_limit, route_extra):
    srv = grpc_server()
    listener_extra = {"per_connection_buffer_limit_bytes": buffer_limit} if buffer_limit else None
    cx = {"per_connection_buffer_limit_bytes": buffer_limit} if buffer_limit else None
    lg = start(legate, ports, srv.port, cluster_extra=cx, listener_extra=listener_extra, route_extra=route_extra)
    big = os.urandom(16 << 20)
    with client(lg) as c:
        assert c.unary(big, timeout=60) == big
        resp = c.client_stream(iter([big[: 8 << 20], big]), timeout=60)
        assert resp.decode() == f"2:{(8 << 20) + len(big)}:{hashlib.sha256(big[: 8 << 20] + big).hexdigest()}"
        msgs = list(c.server_stream(f"2:{16 << 20}".encode(), timeout=60))
        assert [len(m) for m in msgs] == [16 << 20] * 2 and msgs[1] == stream_message(1, 16 << 20)


@pytest.mark.deadline(120)
def test_10000_message_streams(legate, ports, grpc_server):
    srv = grpc_server()
    lg = start(legate, ports, srv.port)
    n = 10000
    with client(lg) as c:
        msgs = list(c.server_stream(f"{n}:64".encode(), timeout=60))
        assert len(msgs) == n and all(m == stream_message(i, 64) for i, m in enumerate(msgs))
        sent = [i.to_bytes(4, "big") * 8 for i in range(n)]
        resp = c.client_stream(iter(sent), timeout=60)
        assert resp.decode() == f"{n}:{32 * n}:{hashlib.sha256(b''.join(sent)).hexdigest()}"
        echoed = list(c.bidi(iter(sent), timeout=60))
        assert echoed == sent


def test_client_cancel_resets_upstream(legate, ports, grpc_server):
    srv = grpc_server()
    lg = start(legate, ports, srv.port)
    with client(lg) as c:
        fut = c.hang.future(b"cancel-me", timeout=20)
        assert srv.service.hang_started(b"cancel-me").wait(10)
        assert fut.cancel()
        assert srv.service.cancelled(b"cancel-me").wait(10), "the upstream call never saw the cancellation"
        with pytest.raises(grpc.FutureCancelledError):
            fut.result()
    wait_for(lambda: lg.admin.stat("cluster.backend.upstream_rq_tx_reset") >= 1, what="upstream_rq_tx_reset")
    wait_for(lambda: lg.admin.stat("http.ingress_http.downstream_rq_rx_reset") >= 1, what="downstream_rq_rx_reset")


def test_client_deadline_cancels_upstream(legate, ports, grpc_server):
    srv = grpc_server()
    lg = start(legate, ports, srv.port)
    with client(lg) as c:
        with pytest.raises(grpc.RpcError) as ei:
            c.hang(b"deadline", timeout=0.5)
    assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert srv.service.cancelled(b"deadline").wait(10)


# ---- local replies to gRPC requests ----

def grpc_frame(payload):
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


def raw_grpc_call(lg, path, headers=(), payload=b"x", timeout=10):
    """One gRPC call with python-h2, to look at the response headers as sent."""
    with H2Client("127.0.0.1", lg.listener_port(), timeout=timeout) as c:
        hdrs = [("content-type", "application/grpc"), ("te", "trailers")] + list(headers)
        return c.wait_response(c.request("POST", path, headers=hdrs, body=grpc_frame(payload)))


def assert_trailers_only(resp, grpc_status, message=None):
    assert resp.status == 200, resp.headers
    assert resp.header("content-type") == "application/grpc"
    assert resp.header("grpc-status") == str(grpc_status), resp.headers
    assert resp.header("grpc-message") == message, resp.headers
    assert resp.body == b"" and resp.trailers == [] and resp.ended


def test_no_route_is_unimplemented(legate, ports, grpc_server):
    srv = grpc_server()
    lg = start(legate, ports, srv.port, route_extra={"prefix": "/elsewhere"})
    with client(lg) as c:
        with pytest.raises(grpc.RpcError) as ei:
            c.unary(b"x", timeout=10)
    assert ei.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert_trailers_only(raw_grpc_call(lg, "/test.Echo/Unary"), 12)
    assert lg.admin.stat("http.ingress_http.no_route") == 2


def test_no_healthy_upstream_is_unavailable(legate, ports, grpc_server):
    lg = legate(cfg.bootstrap(ports(), listeners=[cfg.http_listener("ingress", ports(), cfg.route_config(
        [cfg.vhost("v", [cfg.route("empty")])]))], clusters=[cfg.cluster("empty", [], http2=True)]))
    with client(lg) as c:
        with pytest.raises(grpc.RpcError) as ei:
            c.unary(b"x", timeout=10)
    assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
    assert ei.value.details() == "no healthy upstream"
    assert_trailers_only(raw_grpc_call(lg, "/test.Echo/Unary"), 14, "no healthy upstream")


@pytest.fixture
def refused_port():
    """A port bound without listening: a connect to it is refused, and nobody else gets it."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    yield s.getsockname()[1]
    s.close()


def test_upstream_unreachable_is_unavailable(legate, ports, refused_port):
    lg = start(legate, ports, refused_port)
    with client(lg) as c:
        with pytest.raises(grpc.RpcError) as ei:
            c.unary(b"x", timeout=10)
    assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
    assert ei.value.details().startswith(
        "upstream connect error or disconnect/reset before headers. reset reason: connection failure"), ei.value.details()
    resp = raw_grpc_call(lg, "/test.Echo/Unary")
    assert resp.header("grpc-status") == "14" and resp.header("grpc-message").startswith("upstream connect error")


def test_grpc_web_content_type_is_not_grpc(legate, ports, refused_port):
    lg = start(legate, ports, refused_port, route_extra={"prefix": "/elsewhere"})
    with H2Client("127.0.0.1", lg.listener_port()) as c:
        resp = c.get("/x", headers=[("content-type", "application/grpc-web")])
    assert resp.status == 404 and resp.header("grpc-status") is None


def test_route_match_grpc(legate, ports, grpc_server, upstream):
    srv = grpc_server()
    rc = cfg.route_config([cfg.vhost("v", [cfg.route("grpc", match={"prefix": "/", "grpc": {}})])])
    lg = legate(cfg.bootstrap(ports(), listeners=[cfg.http_listener("ingress", ports(), rc)],
                              clusters=[cfg.cluster("grpc", [srv.port], http2=True)]))
    with client(lg) as c:
        assert c.unary(b"matched", timeout=10) == b"matched"
    with H2Client("127.0.0.1", lg.listener_port()) as c:
        assert c.get("/test.Echo/Unary").status == 404  # no application/grpc content-type: no match
        assert c.get("/test.Echo/Unary", headers=[("content-type", "application/grpc-web")]).status == 404
    assert lg.admin.stat("http.ingress_http.no_route") == 2


# ---- grpc-timeout ----

def grpc_timeout_ms(value):
    m = re.fullmatch(r"(\d+)m", value or "")
    assert m, value
    return int(m.group(1))


def test_grpc_timeout_header_max_limits_the_stream(legate, ports, raw_upstream):
    lg = start(legate, ports, raw_upstream.port,
               route_extra={"max_stream_duration": {"grpc_timeout_header_max": "0s",
                                                    "grpc_timeout_header_offset": "2.5s"}})
    with client(lg) as c:
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as ei:
            c.hang(b"x", timeout=3)
        took = time.monotonic() - t0
    # legate's limit (3 s - 2.5 s) fires long before the client's own deadline
    assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert ei.value.details() == "downstream duration timeout"
    assert took < 2.5, took
    # the upstream was told the limit in grpc-timeout, and was reset at its end
    assert 400 <= grpc_timeout_ms(raw_upstream.requests[0].get("grpc-timeout")) <= 500
    wait_for(lambda: raw_upstream.resets_received, what="upstream stream reset")
    assert lg.admin.stat("http.ingress_http.downstream_rq_max_duration_reached") == 1


def test_grpc_timeout_capped_by_grpc_timeout_header_max(legate, ports, raw_upstream):
    lg = start(legate, ports, raw_upstream.port, route_extra={"max_stream_duration": {"grpc_timeout_header_max": "0.3s"}})
    t0 = time.monotonic()
    resp = raw_grpc_call(lg, "/test.Echo/Hang", headers=[("grpc-timeout", "20S")])
    took = time.monotonic() - t0
    assert_trailers_only(resp, 4, "downstream duration timeout")
    assert took < 3, took
    assert raw_upstream.requests[0]["grpc-timeout"] == "300m"


def test_grpcio_server_sees_the_capped_deadline(legate, ports, grpc_server):
    srv = grpc_server()
    lg = start(legate, ports, srv.port, route_extra={"max_stream_duration": {"grpc_timeout_header_max": "0.3s"}})
    with client(lg) as c:
        with pytest.raises(grpc.RpcError) as ei:
            c.sleep(b"5000", timeout=20)
    # legate and the server both time out at 300 ms; either answer is DEADLINE_EXCEEDED
    assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert srv.service.cancelled(b"5000").wait(10)
    assert 0 < srv.service.time_remaining[b"5000"] <= 0.3


def test_hcm_max_stream_duration(legate, ports, raw_upstream):
    lg = start(legate, ports, raw_upstream.port, common_http_protocol_options={"max_stream_duration": "0.3s"})
    resp = raw_grpc_call(lg, "/test.Echo/Hang", headers=[("grpc-timeout", "20S")])
    assert_trailers_only(resp, 4, "downstream duration timeout")
    assert raw_upstream.requests[0]["grpc-timeout"] == "20S"  # only the route's settings rewrite it
    wait_for(lambda: raw_upstream.resets_received, what="upstream stream reset")


def test_deprecated_max_grpc_timeout_is_the_router_timeout(legate, ports, raw_upstream):
    lg = start(legate, ports, raw_upstream.port, route_extra={"max_grpc_timeout": "0s", "grpc_timeout_offset": "1.7s"})
    with client(lg) as c:
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as ei:
            c.hang(b"x", timeout=2)
        took = time.monotonic() - t0
    # the router's timeout (2 s - 1.7 s) is Envoy's "upstream request timeout", a 504: UNAVAILABLE
    assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
    assert ei.value.details() == "upstream request timeout"
    assert took < 1.7, took
    assert lg.admin.stat("cluster.backend.upstream_rq_timeout") == 1
    # Envoy rewrites grpc-timeout (and x-envoy-expected-rq-timeout-ms) to the router's timeout
    req = raw_upstream.requests[0]
    assert 200 <= grpc_timeout_ms(req.get("grpc-timeout")) <= 300
    assert str(grpc_timeout_ms(req["grpc-timeout"])) == req["x-envoy-expected-rq-timeout-ms"]


def test_without_grpc_timeout_config_the_route_timeout_applies(legate, ports, grpc_server):
    srv = grpc_server()
    lg = start(legate, ports, srv.port, route_extra={"timeout": "0.3s"})
    resp = raw_grpc_call(lg, "/test.Echo/Sleep", headers=[("grpc-timeout", "20S")], payload=b"3000")
    assert_trailers_only(resp, 14, "upstream request timeout")


# ---- upstream resets ----

@pytest.fixture
def raw_upstream():
    u = RawUpstream()
    yield u
    u.close()


def test_upstream_reset_before_response_is_unavailable(legate, ports, raw_upstream):
    lg = start(legate, ports, raw_upstream.port)
    with client(lg) as c:
        with pytest.raises(grpc.RpcError) as ei:
            c.method("/test.Echo/ResetBefore")(b"x", timeout=10)
    assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
    assert ei.value.details() == "upstream connect error or disconnect/reset before headers. reset reason: remote reset"
    assert lg.admin.stat("cluster.backend.upstream_rq_rx_reset") == 1


@pytest.mark.parametrize("method", ["ResetAfter", "DropAfter"])
def test_upstream_reset_mid_stream_resets_the_client(legate, ports, raw_upstream, method):
    lg = start(legate, ports, raw_upstream.port)
    with client(lg) as c:
        call = c.channel.unary_stream(f"/test.Echo/{method}")(b"x", timeout=10)
        got = []
        with pytest.raises(grpc.RpcError) as ei:
            for msg in call:
                got.append(msg)
    assert got == [b"partial"]
    # the response had started: Legate resets the downstream stream (RST_STREAM NO_ERROR),
    # which grpc-core reports as INTERNAL
    assert ei.value.code() == grpc.StatusCode.INTERNAL, ei.value
    wait_for(lambda: lg.admin.stat("http.ingress_http.downstream_rq_tx_reset") >= 1, what="downstream_rq_tx_reset")
