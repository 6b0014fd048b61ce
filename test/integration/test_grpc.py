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


def test_bidi_streaming_in_lockstep(legate, ports, grpc_server):
    srv = grpc_server()
    lg = start(legate, ports, srv.port)
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
def test_16mib_messages_both_ways(legate, ports, grpc_server, buffer_limit):
    srv = grpc_server()
    listener_extra = {"per_connection_buffer_limit_bytes": buffer_limit} if buffer_limit else None
    cx = {"per_connection_buffer_limit_bytes": buffer_limit} if buffer_limit else None
    lg = start(legate, ports, srv.port, cluster_extra=cx, listener_extra=listener_extra)
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
