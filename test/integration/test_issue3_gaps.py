"""Issue 3 items that no other integration test proved (audit by helper H).

- gRPC through TLS on both sides: a python3-grpcio client over TLS (ALPN h2)
  to Legate, Legate over mTLS (ALPN h2, SNI, SAN check) to a grpcio server
  that requires a client certificate; all four call kinds.
- The "bad input" list: a WebSocket upgrade on a route that does not allow it
  (403, stat, access log entry, the open tunnels unaffected); a tunnel whose
  upstream dies (WebSocket and CONNECT: the downstream is cut, an access log
  entry, UC for the CONNECT tunnel's reset, the other tunnels unaffected); a
  ClientHello with no shared cipher (established connections unaffected); a
  gRPC message over the configured limit (the server's or the client's max
  message length: the status passes through, the connection's other calls go on).
- Access log command operators that only unit tests covered: %START_TIME(..)%
  with strftime forms, %TRAILER()%, %REQUEST_DURATION%, %RESPONSE_DURATION%,
  %BYTES_RECEIVED% on HTTP, %DOWNSTREAM_REMOTE_ADDRESS%, %DOWNSTREAM_LOCAL_ADDRESS%,
  %ROUTE_NAME%, %CONNECTION_ID%, %UPSTREAM_TRANSPORT_FAILURE_REASON% (Envoy writes
  its spaces as '_'), %REQUESTED_SERVER_NAME% and %UPSTREAM_LOCAL_ADDRESS% on HTTP
  (every stream of an HTTP/2 connection) and on tcp_proxy; Listener.access_log (an
  entry per connection at its close, a failed TLS handshake included, and NR for no
  filter chain match); the duration and not_health_check filters; stderr.
- Downstream TLS: inline_bytes, verify_certificate_spki / _hash pins, reload
  through a watched_directory (Kubernetes' ..data symlink swap) and of the
  trusted CA file, the debug log line of a failed handshake; CONNECT idle timeout.

Envoy's answers checked in source/common/http/conn_manager_impl.cc (403
upgrade_failed, downstream_rq_ws_on_non_ws_route), source/common/router/router.cc
(onUpstreamReset after the response started: the flag of the reset reason,
details upstream_reset_after_response_started{...}, the downstream reset),
source/common/tls (ssl.connection_error, ssl.handshake, ssl.fail_verify_cert_hash,
the "remote address:..,TLS_error:.." debug line).
"""
import asyncio
import os
import re
import socket
import ssl
import time
from concurrent import futures

import grpc
import pytest
import websockets

from lib import config as cfg
from lib.certs import Pki
from lib.clients import curl
from lib.grpcsvc import OPTIONS, SERVICE, EchoService, GrpcClient
from lib.legate import time_scale
from lib.wait import wait_for
from lib.wsupstream import WsUpstream

DOWNSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
TLS_INSPECTOR = {"name": "envoy.filters.listener.tls_inspector",
                 "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}
VERIFY_FAILED = "TLS_error:|268435581:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:TLS_error_end"
FLUSH_ARGS = ["--file-flush-interval-msec", "50"]
MIB = 1 << 20


# ---- shared helpers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    p = Pki(tmp_path_factory.mktemp("pki") / "ca")
    p.server = p.issue("server", dns=["localhost", "a.example.com"], ip=["127.0.0.1"])
    p.upstream = p.issue("upstream", dns=["upstream.example.com"], uri=["spiffe://cluster.local/ns/default/sa/backend"],
                         key="ec")
    p.client = p.issue("client", uri=["spiffe://cluster.local/ns/default/sa/client"], client=True, key="ec")
    p.other = Pki(tmp_path_factory.mktemp("other") / "ca", cn="Untrusted CA")
    return p


def read(path):
    with open(path, "rb") as f:
        return f.read()


def tls_cert(c):
    return {"certificate_chain": {"filename": c.cert}, "private_key": {"filename": c.key}}


def downstream_ts(certs, alpn=("h2", "http/1.1"), common_extra=None, **extra):
    common = {"tls_certificates": [tls_cert(c) if not isinstance(c, dict) else c for c in certs],
              "alpn_protocols": list(alpn)}
    common.update(common_extra or {})
    ctx = {"@type": DOWNSTREAM_TLS, "common_tls_context": common}
    ctx.update(extra)
    return {"name": "envoy.transport_sockets.tls", "typed_config": ctx}


def upstream_ts(pki, cert=None, sni=None, alpn=None, san=None):
    validation = {"trusted_ca": {"filename": pki.ca_cert}}
    if san:
        validation["match_typed_subject_alt_names"] = [{"san_type": "URI", "matcher": {"exact": san}}]
    common = {"validation_context": validation}
    if cert is not None:
        common["tls_certificates"] = [tls_cert(cert)]
    if alpn:
        common["alpn_protocols"] = list(alpn)
    ctx = {"@type": UPSTREAM_TLS, "common_tls_context": common}
    if sni:
        ctx["sni"] = sni
    return {"name": "envoy.transport_sockets.tls", "typed_config": ctx}


def file_log(path, fmt):
    return {"name": "envoy.access_loggers.file",
            "typed_config": {"@type": FILE_LOG, "path": str(path), "log_format": {"text_format_source": {"inline_string": fmt}}}}


def read_lines(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8").splitlines()
    except FileNotFoundError:
        return []


def wait_lines(path, n):
    return wait_for(lambda: (lambda lines: lines if len(lines) >= n else None)(read_lines(path)),
                    timeout=10 * time_scale(), what=f"{n} access log line(s)")


def listener(port, rc, transport_socket=None, access_log=None, inspector=False, **hcm_extra):
    if access_log is not None:
        hcm_extra["access_log"] = access_log
    chain = {"filters": [cfg.hcm(rc, **hcm_extra)]}
    if transport_socket is not None:
        chain["transport_socket"] = transport_socket
    lst = {"name": "ingress", "address": cfg.socket_address(port), "filter_chains": [chain]}
    if inspector:
        lst["listener_filters"] = [TLS_INSPECTOR]
    return lst


class TlsGrpcServer:
    """A grpcio server with EchoService behind TLS that requires a client certificate from the test CA."""

    def __init__(self, pki, cert):
        self.service = svc = EchoService()
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(svc.unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(svc.server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(svc.client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(svc.bidi),
        }
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=OPTIONS)
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        creds = grpc.ssl_server_credentials([(read(cert.key), read(cert.cert))], root_certificates=read(pki.ca_cert),
                                            require_client_auth=True)
        self.port = self.server.add_secure_port("127.0.0.1:0", creds)
        self.server.start()

    def close(self):
        self.server.stop(None).wait(10)


class LimitedGrpcServer:
    """A plaintext grpcio server with EchoService whose max message length is `limit` bytes both ways."""

    def __init__(self, limit):
        self.service = svc = EchoService()
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(svc.unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(svc.server_stream),
        }
        opts = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", 64 * MIB)]
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=opts)
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def close(self):
        self.server.stop(None).wait(10)


# ---- gRPC over TLS, both sides --------------------------------------------------------


def test_grpc_all_call_kinds_over_tls_and_upstream_mtls(legate, ports, pki, tmp_path):
    srv = TlsGrpcServer(pki, pki.upstream)
    try:
        port = ports()
        log = tmp_path / "grpc-tls.log"
        rc = cfg.route_config([cfg.vhost("v", [cfg.route("backend")])])
        ts = upstream_ts(pki, cert=pki.client, sni="upstream.example.com", alpn=["h2"],
                         san="spiffe://cluster.local/ns/default/sa/backend")
        cluster = cfg.cluster("backend", [srv.port], http2=True, transport_socket=ts)
        access_log = [file_log(log, "%PROTOCOL% %REQ(:PATH)% %GRPC_STATUS%\n")]
        lg = legate(cfg.bootstrap(ports(), listeners=[listener(port, rc, downstream_ts([pki.server]), inspector=True,
                                                              access_log=access_log)],
                                  clusters=[cluster]), args=FLUSH_ARGS)
        creds = grpc.ssl_channel_credentials(root_certificates=read(pki.ca_cert))
        channel = grpc.secure_channel(f"127.0.0.1:{port}", creds,
                                      options=OPTIONS + [("grpc.ssl_target_name_override", "localhost")])
        try:
            m = f"/{SERVICE}/"
            binval = bytes(range(256))
            resp, call = channel.unary_unary(m + "Unary").with_call(b"over tls", metadata=[("x-blob-bin", binval)],
                                                                     timeout=10)
            assert resp == b"over tls"
            assert dict(call.trailing_metadata())["trail-x-blob-bin"] == binval
            msgs = list(channel.unary_stream(m + "ServerStream")(b"50:2000", timeout=20))
            assert len(msgs) == 50 and all(len(x) == 2000 for x in msgs)
            out = channel.stream_unary(m + "ClientStream")(iter([b"a" * 10, b"b" * 20]), timeout=20)
            assert out.decode().startswith("2:30:")
            echoed = list(channel.stream_stream(m + "Bidi")(iter([b"x%d" % i for i in range(30)]), timeout=20))
            assert echoed == [b"x%d" % i for i in range(30)]
            with pytest.raises(grpc.RpcError) as ei:
                channel.unary_unary(m + "Unary")(b"abort:NOT_FOUND:nothing here", timeout=10)
            assert ei.value.code() == grpc.StatusCode.NOT_FOUND and ei.value.details() == "nothing here"
        finally:
            channel.close()
        st = lg.admin.stats()
        assert st[f"listener.127.0.0.1_{port}.ssl.handshake"] == 1, "one TLS connection carried every call"
        assert st["http.ingress_http.downstream_cx_http2_total"] == 1
        assert st["cluster.backend.ssl.handshake"] >= 1 and st["cluster.backend.upstream_cx_http2_total"] >= 1
        assert st["cluster.backend.ssl.fail_verify_san"] == 0
        lines = wait_lines(log, 5)
        assert sorted(lines) == sorted([
            f"HTTP/2 /{SERVICE}/Unary OK", f"HTTP/2 /{SERVICE}/ServerStream OK", f"HTTP/2 /{SERVICE}/ClientStream OK",
            f"HTTP/2 /{SERVICE}/Bidi OK", f"HTTP/2 /{SERVICE}/Unary NotFound"]), lines
    finally:
        srv.close()


# ---- WebSocket: a route that does not allow it, a tunnel whose upstream dies ---------------


def run(coro, timeout=20):
    return asyncio.run(asyncio.wait_for(coro, timeout * time_scale()))


WS_LOG_FORMAT = "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\n"


def ws_proxy(legate, ports, up, log):
    """/ws/* allows websocket (route upgrade_configs), everything else does not."""
    routes = [cfg.route("backend", prefix="/ws/", upgrade_configs=[{"upgrade_type": "websocket"}]),
              cfg.route("backend", prefix="/die", upgrade_configs=[{"upgrade_type": "websocket"}]),
              cfg.route("backend", prefix="/")]
    rc = cfg.route_config([cfg.vhost("v", routes)])
    port = ports()
    lg = legate(cfg.bootstrap(ports(), listeners=[listener(port, rc, access_log=[file_log(log, WS_LOG_FORMAT)])],
                              clusters=[cfg.cluster("backend", [up.port])]), args=FLUSH_ARGS)
    return lg, f"ws://127.0.0.1:{port}"


@pytest.fixture
def ws_upstream():
    started = []

    def make():
        u = WsUpstream()
        started.append(u)
        return u

    yield make
    for u in started:
        u.close()


def test_websocket_on_a_route_that_does_not_allow_it(legate, ports, ws_upstream, tmp_path):
    up = ws_upstream()
    log = tmp_path / "ws.log"
    lg, base = ws_proxy(legate, ports, up, log)

    async def scenario():
        async with websockets.connect(base + "/ws/open", ping_interval=None) as ws:
            await ws.recv()
            await ws.send("before")
            before = await ws.recv()
            with pytest.raises(websockets.InvalidStatusCode) as ei:
                async with websockets.connect(base + "/plain", ping_interval=None):
                    pass
            await ws.send("after")
            after = await ws.recv()
            return before, ei.value.status_code, after

    before, status, after = run(scenario())
    assert (before, status, after) == ("before", 403, "after"), "the open tunnel is not affected"
    assert lg.admin.stat("http.ingress_http.downstream_rq_ws_on_non_ws_route") == 1
    assert [r["path"] for r in up.requests] == ["/ws/open"], "the refused upgrade never reached the upstream"
    lines = wait_lines(log, 2)
    assert "/plain 403 - upgrade_failed" in lines, lines
    assert "/ws/open 101 - via_upstream" in lines, lines


def test_websocket_tunnel_whose_upstream_dies(legate, ports, ws_upstream, tmp_path):
    up = ws_upstream()
    log = tmp_path / "ws-die.log"
    lg, base = ws_proxy(legate, ports, up, log)

    async def scenario():
        async with websockets.connect(base + "/ws/survivor", ping_interval=None) as other:
            await other.recv()
            async with websockets.connect(base + "/die", ping_interval=None, close_timeout=2) as dying:
                await dying.recv()
                await dying.send("last words")
                echoed = await dying.recv()
                with pytest.raises(websockets.ConnectionClosed) as ei:
                    await dying.recv()
            for i in range(3):
                await other.send(f"still here {i}")
                assert await other.recv() == f"still here {i}"
            return echoed, ei.value

    echoed, closed = run(scenario())
    assert echoed == "last words"
    assert closed.rcvd is None, "no close frame: the tunnel was cut"
    wait_for(lambda: lg.admin.stat("http.ingress_http.downstream_cx_upgrades_active") == 0, what="upgrades_active 0")
    assert lg.admin.stat("http.ingress_http.downstream_cx_upgrades_total") == 2
    assert lg.admin.stat("cluster.backend.upstream_cx_destroy_with_active_rq") == 2
    lines = wait_lines(log, 2)
    # one entry each; Envoy flags the cut one UC (upstream_reset_after_response_started), Legate
    # ends it as a normal end of stream: the flags are not asserted (see the audit report)
    assert sorted(line.split(" ")[:2] for line in lines) == [["/die", "101"], ["/ws/survivor", "101"]], lines


# ---- TLS: no shared cipher ---------------------------------------------------------------


def get_on(sock, path):
    """One GET on an open (TLS) connection; returns the status after reading the whole response."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the connection was closed"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "the connection was closed mid-body"
        body += chunk
    return int(head.split()[1])


def test_no_shared_cipher_leaves_established_connections_alone(legate, ports, upstream, pki):
    up = upstream("a")
    port = ports()
    ts = downstream_ts([pki.server], common_extra={"tls_params": {"tls_maximum_protocol_version": "TLSv1_2",
                                                                   "cipher_suites": ["ECDHE-RSA-AES256-GCM-SHA384"]}})
    rc = cfg.route_config([cfg.vhost("v", [cfg.route("backend")])])
    lg = legate(cfg.bootstrap(ports(), listeners=[listener(port, rc, ts)], clusters=[cfg.cluster("backend", [up.port])]))
    ctx = ssl.create_default_context(cafile=pki.ca_cert)
    keep = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost")

    def get_on_keep():
        return get_on(keep, "/keep")

    try:
        assert get_on_keep() == 200
        bad = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        bad.load_verify_locations(pki.ca_cert)
        bad.maximum_version = ssl.TLSVersion.TLSv1_2
        bad.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256")
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                with pytest.raises(ssl.SSLError):
                    bad.wrap_socket(raw, server_hostname="localhost")
        prefix = f"listener.127.0.0.1_{port}.ssl."
        wait_for(lambda: lg.admin.stat(prefix + "connection_error") == 3, what="connection_error == 3")
        assert get_on_keep() == 200, "the established connection is not affected"
        assert lg.admin.stat(prefix + "handshake") == 1
        r = curl(f"https://localhost:{port}/new", "--cacert", pki.ca_cert)
        assert r.rc == 0 and r.status == 200, r.stderr
        assert lg.alive()
    finally:
        keep.close()


# ---- gRPC: a message over the configured limit ---------------------------------------------------


def test_grpc_message_over_the_servers_limit(legate, ports, tmp_path):
    """The upstream's max_receive_message_length refuses a 2 MiB request: RESOURCE_EXHAUSTED
    reaches the client, the access log records it, and the channel's next call works."""
    srv = LimitedGrpcServer(1 * MIB)
    try:
        log = tmp_path / "grpc-limit.log"
        port = ports()
        rc = cfg.route_config([cfg.vhost("v", [cfg.route("backend")])])
        lg = legate(cfg.bootstrap(ports(), listeners=[listener(port, rc, access_log=[
            file_log(log, "%REQ(:PATH)% %RESPONSE_CODE% %GRPC_STATUS% %RESPONSE_FLAGS%\n")])],
                                  clusters=[cfg.cluster("backend", [srv.port], http2=True)]), args=FLUSH_ARGS)
        with GrpcClient(port) as c:
            other = c.server_stream(b"200:1000", timeout=30)  # a stream open on the same connection
            first = next(other)
            with pytest.raises(grpc.RpcError) as ei:
                c.unary(os.urandom(2 * MIB), timeout=20)
            assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, ei.value
            rest = list(other)
            assert [first] + rest == [bytes([i % 251]) * 1000 for i in range(200)]
            assert c.unary(b"small", timeout=10) == b"small"
        assert lg.admin.stat("http.ingress_http.downstream_cx_http2_total") == 1
        lines = wait_lines(log, 3)
        assert f"/{SERVICE}/Unary 200 ResourceExhausted -" in lines, lines
        assert f"/{SERVICE}/Unary 200 OK -" in lines and f"/{SERVICE}/ServerStream 200 OK -" in lines, lines
        assert lg.alive()
    finally:
        srv.close()


def test_grpc_message_over_the_clients_limit(legate, ports, grpc_server_plain):
    """The client's max_receive_message_length refuses a 2 MiB response: the call fails in the
    client with RESOURCE_EXHAUSTED and the next call on the same connection works."""
    srv = grpc_server_plain
    port = ports()
    lg = legate(cfg.simple_proxy(ports(), port, [srv.port], cluster_extra={"http2": True}))
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", MIB)])
    try:
        big = channel.unary_stream(f"/{SERVICE}/ServerStream")
        with pytest.raises(grpc.RpcError) as ei:
            list(big(f"1:{2 * MIB}".encode(), timeout=20))
        assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, ei.value
        assert channel.unary_unary(f"/{SERVICE}/Unary")(b"next", timeout=10) == b"next"
        assert lg.admin.stat("http.ingress_http.downstream_cx_http2_total") == 1
    finally:
        channel.close()


@pytest.fixture
def grpc_server_plain():
    from lib.grpcsvc import GrpcServer
    s = GrpcServer()
    yield s
    s.close(0)


# ---- access log command operators --------------------------------------------------------


OPS_FORMAT = ("[%START_TIME(%Y-%m-%dT%H:%M:%S.%3f|%s)%] %PROTOCOL% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% "
              "rx=%BYTES_RECEIVED% tx=%BYTES_SENT% d=%DURATION% rqd=%REQUEST_DURATION% rsd=%RESPONSE_DURATION% "
              "up=%UPSTREAM_HOST% cl=%UPSTREAM_CLUSTER% dr=%DOWNSTREAM_REMOTE_ADDRESS% "
              "dl=%DOWNSTREAM_LOCAL_ADDRESS% sni=%REQUESTED_SERVER_NAME% route=%ROUTE_NAME% cx=%CONNECTION_ID% "
              "tr=%TRAILER(GRPC-STATUS)%/%TRAILER(TRAIL-X-TEXT)% resp=%RESP(ECHO-X-TEXT)% "
              "utf=%UPSTREAM_TRANSPORT_FAILURE_REASON% path=%REQ(:PATH)%\n")
OPS_RE = re.compile(
    r"\[(?P<date>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})\|(?P<epoch>\d+)\] (?P<proto>\S+) (?P<code>\d+) (?P<flags>\S+) "
    r"(?P<details>\S+) rx=(?P<rx>\d+) tx=(?P<tx>\d+) d=(?P<d>\d+) rqd=(?P<rqd>\d+|-) rsd=(?P<rsd>\d+|-) up=(?P<up>\S+) "
    r"cl=(?P<cl>\S+) dr=(?P<dr>\S+) dl=(?P<dl>\S+) sni=(?P<sni>\S+) route=(?P<route>\S+) cx=(?P<cx>\d+) "
    r"tr=(?P<tr>\S+) resp=(?P<resp>\S+) utf=(?P<utf>\S+) path=(?P<path>\S+)")


def test_access_log_operators_on_grpc_calls(legate, ports, grpc_server_plain, tmp_path):
    srv = grpc_server_plain
    log = tmp_path / "ops.log"
    port = ports()
    rc = cfg.route_config([cfg.vhost("v", [cfg.route("backend", route_extra={"name": "grpc-route"})])])
    legate(cfg.bootstrap(ports(), listeners=[listener(port, rc, access_log=[file_log(log, OPS_FORMAT)])],
                         clusters=[cfg.cluster("backend", [srv.port], http2=True)]), args=FLUSH_ARGS)
    before = int(time.time())
    payload = b"p" * 1000
    with GrpcClient(port) as c:
        assert c.unary(payload, metadata=[("x-text", "v1")], timeout=10) == payload
        assert c.sleep(b"300", timeout=10) == b"slept"
    with GrpcClient(port) as c:
        assert c.unary(b"q", timeout=10) == b"q"
    after = int(time.time())
    entries = [OPS_RE.fullmatch(line) for line in wait_lines(log, 3)]
    assert all(entries), read_lines(log)
    by_path = {}
    for e in entries:
        by_path.setdefault(e["path"], []).append(e)
    (echo, small), (slept,) = by_path[f"/{SERVICE}/Unary"], by_path[f"/{SERVICE}/Sleep"]
    if echo["rx"] != str(5 + len(payload)):
        echo, small = small, echo
    for e in (echo, small, slept):
        assert (e["proto"], e["code"], e["flags"], e["details"]) == ("HTTP/2", "200", "-", "via_upstream")
        assert before <= int(e["epoch"]) <= after
        assert time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(e["epoch"]))) == e["date"][:19], "one instant, two forms"
        assert e["up"] == f"127.0.0.1:{srv.port}" and e["cl"] == "backend" and e["route"] == "grpc-route"
        assert re.fullmatch(r"127\.0\.0\.1:\d+", e["dr"]) and e["dl"] == f"127.0.0.1:{port}"
        assert e["sni"] == "-" and e["utf"] == "-", "plaintext, and no transport failure"
        assert int(e["rqd"]) <= int(e["rsd"]) <= int(e["d"])
    # the gRPC frame: 5 bytes of prefix and the message, each way
    assert echo["rx"] == echo["tx"] == str(5 + len(payload))
    assert echo["tr"] == "0/v1" and echo["resp"] == "v1"
    assert small["tr"] == "0/-" and small["resp"] == "-"
    assert int(slept["rsd"]) >= 250, "the response started after the server's 300 ms sleep"
    # one connection for the first channel's calls, another for the second channel
    assert echo["cx"] == slept["cx"] and echo["dr"] == slept["dr"]
    assert small["cx"] != echo["cx"] and small["dr"] != echo["dr"]


def test_access_log_tls_operators(legate, ports, pki, upstream, tmp_path):
    """%UPSTREAM_TRANSPORT_FAILURE_REASON% names the failed upstream handshake in Envoy's form
    (spaces become '_'); "-" when nothing failed. %REQUESTED_SERVER_NAME% is the SNI of the downstream
    TLS connection on every request; %UPSTREAM_LOCAL_ADDRESS% the proxy's side of the upstream connection."""
    good = upstream("good")
    rogue_cert = pki.other.issue("rogue", dns=["localhost"])
    rogue_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    rogue_ctx.load_cert_chain(rogue_cert.cert, rogue_cert.key)
    rogue = _TlsSink(rogue_ctx)
    try:
        log = tmp_path / "tls-ops.log"
        port = ports()
        routes = [cfg.route("rogue", prefix="/rogue", route_extra={"name": "to-rogue"}),
                  cfg.route("good", prefix="/", route_extra={"name": "to-good"})]
        rc = cfg.route_config([cfg.vhost("v", routes)])
        fmt = ("%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %ROUTE_NAME% %UPSTREAM_TRANSPORT_FAILURE_REASON% "
               "sni=%REQUESTED_SERVER_NAME% ul=%UPSTREAM_LOCAL_ADDRESS% cx=%CONNECTION_ID%\n")
        lg = legate(cfg.bootstrap(ports(), listeners=[listener(port, rc, downstream_ts([pki.server]), inspector=True,
                                                              access_log=[file_log(log, fmt)])],
                                  clusters=[cfg.cluster("good", [good.port]),
                                            cfg.cluster("rogue", [rogue.port], transport_socket=upstream_ts(pki))]),
                    args=FLUSH_ARGS)
        resolve = ["--resolve", f"a.example.com:{port}:127.0.0.1", "--cacert", pki.ca_cert]
        assert curl(f"https://a.example.com:{port}/ok", *resolve).status == 200
        assert curl(f"https://a.example.com:{port}/rogue", *resolve).status == 503
        # two requests on one HTTP/2 connection with another SNI: each stream carries it
        both = curl(f"https://localhost:{port}/ok1", "--cacert", pki.ca_cert, "--http2", f"https://localhost:{port}/ok2")
        assert both.rc == 0 and both.status == 200, both.stderr
        lines = wait_lines(log, 4)
        by_path = {line.split(" ", 1)[0]: line.rsplit(" cx=", 1)[0] for line in lines}
        cx = {line.split(" ", 1)[0]: line.rsplit(" cx=", 1)[1] for line in lines}
        assert cx["/ok1"] == cx["/ok2"] != cx["/ok"], "one HTTP/2 connection for /ok1 and /ok2"
        ok = re.fullmatch(r"/ok 200 - to-good - sni=a\.example\.com ul=127\.0\.0\.1:(\d+)", by_path["/ok"])
        assert ok, lines
        assert int(ok[1]) not in (0, port, good.port), "the upstream connection's ephemeral port"
        assert by_path["/rogue"] == f"/rogue 503 UF to-rogue {VERIFY_FAILED.replace(' ', '_')} sni=a.example.com ul=-", lines
        for path in ("/ok1", "/ok2"):
            assert re.fullmatch(path + r" 200 - to-good - sni=localhost ul=127\.0\.0\.1:\d+", by_path[path]), lines
        assert lg.admin.stat("cluster.rogue.ssl.fail_verify_error") == 1
    finally:
        rogue.close()


def test_listener_access_log(legate, ports, pki, upstream, tmp_path):
    """Listener.access_log (Envoy's listener access log): one entry per connection at its close, including a
    connection whose TLS handshake failed, and one (response flag NR) per connection no filter chain took."""
    good = upstream("good")
    log = tmp_path / "listener.log"
    port = ports()
    rc = cfg.route_config([cfg.vhost("v", [cfg.route("good")])])
    lst = listener(port, rc, downstream_ts([pki.server]), inspector=True)
    lst["filter_chains"][0]["filter_chain_match"] = {"server_names": ["a.example.com"]}
    lst["access_log"] = [file_log(log, "%DOWNSTREAM_REMOTE_ADDRESS% %RESPONSE_FLAGS% %DOWNSTREAM_LOCAL_ADDRESS% %PROTOCOL%\n")]
    lg = legate(cfg.bootstrap(ports(), listeners=[lst], clusters=[cfg.cluster("good", [good.port])]), args=FLUSH_ARGS)

    def handshake(sni, ca):
        ctx = ssl.create_default_context(cafile=ca)
        raw = socket.create_connection(("127.0.0.1", port), timeout=10 * time_scale())
        client = raw.getsockname()
        try:
            with ctx.wrap_socket(raw, server_hostname=sni):
                pass
            return client, None
        except (ssl.SSLError, OSError) as e:
            return client, e
        finally:
            raw.close()

    no_match, err = handshake("nomatch.example.com", pki.ca_cert)
    assert err is not None, "no filter chain: the connection is closed"
    wait_lines(log, 1)
    bad_ca, err = handshake("a.example.com", pki.other.ca_cert)
    assert isinstance(err, ssl.SSLCertVerificationError), err
    wait_lines(log, 2)
    resolve = ["--resolve", f"a.example.com:{port}:127.0.0.1", "--cacert", pki.ca_cert]
    assert curl(f"https://a.example.com:{port}/", *resolve).status == 200
    lines = wait_lines(log, 3)
    assert len(lines) == 3, lines
    assert lines[0] == f"127.0.0.1:{no_match[1]} NR 127.0.0.1:{port} -", lines
    assert lines[1] == f"127.0.0.1:{bad_ca[1]} - 127.0.0.1:{port} -", lines
    assert re.fullmatch(rf"127\.0\.0\.1:\d+ - 127\.0\.0\.1:{port} -", lines[2]), lines
    assert lg.admin.stat(f"listener.127.0.0.1_{port}.no_filter_chain_match") == 1
    # a connection still open at shutdown: its entry's state (a snapshot reference) goes cleanly
    ctx = ssl.create_default_context(cafile=pki.ca_cert)
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10 * time_scale()),
                         server_hostname="a.example.com"):
        assert lg.stop() == []


class _TlsSink:
    """Accepts connections and runs the TLS handshake in a thread; nothing else."""

    def __init__(self, ctx):
        import threading
        self.ctx = ctx
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = False
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self):
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            c.settimeout(5)
            try:
                s = self.ctx.wrap_socket(c, server_side=True)
                s.recv(1)
                s.close()
            except (ssl.SSLError, OSError):
                c.close()

    def close(self):
        self._stop = True
        self._thread.join(5)
        self.sock.close()


# ---- CONNECT: a tunnel whose upstream dies ------------------------------------------------------


class ResettingTcpServer:
    """Accepts connections; on "die" it answers "bye" and resets the connection (SO_LINGER 0),
    otherwise it echoes."""

    def __init__(self):
        import threading
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = False
        self._threads = []
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self):
        import threading
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(c,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, c):
        import struct
        c.settimeout(10)
        try:
            while True:
                data = c.recv(65536)
                if not data:
                    break
                if b"die" in data:
                    c.sendall(b"bye")
                    time.sleep(0.1)
                    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    break
                c.sendall(data)
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self._stop = True
        self._thread.join(5)
        self.sock.close()
        for t in self._threads:
            t.join(5)


def connect_tunnel(port, target):
    s = socket.create_connection(("127.0.0.1", port), timeout=10 * time_scale())
    s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = s.recv(65536)
        assert data, buf
        buf += data
    head, rest = buf.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert rest == b""
    return s


def test_connect_tunnel_whose_upstream_resets(legate, ports, tmp_path):
    """A terminated CONNECT tunnel whose upstream resets: the downstream connection ends, the access
    log has the tunnel's entry (flag UC: Envoy's TcpUpstream resets the stream on the upstream's
    RemoteClose), and another tunnel through the same listener goes on."""
    up = ResettingTcpServer()
    try:
        log = tmp_path / "connect.log"
        port = ports()
        route = {"match": {"connect_matcher": {}},
                 "route": {"cluster": "backend", "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}]}}
        rc = cfg.route_config([cfg.vhost("v", [route])])
        lg = legate(cfg.bootstrap(ports(), listeners=[listener(port, rc, access_log=[file_log(log, WS_LOG_FORMAT.replace(
            "%REQ(:PATH)%", "%REQ(:AUTHORITY)%"))])], clusters=[cfg.cluster("backend", [up.port])]), args=FLUSH_ARGS)
        survivor = connect_tunnel(port, "survivor.example:1")
        dying = connect_tunnel(port, "dying.example:2")
        try:
            survivor.sendall(b"one")
            assert survivor.recv(3) == b"one"
            dying.sendall(b"die")
            got = b""
            try:
                while True:
                    data = dying.recv(65536)
                    if not data:
                        break
                    got += data
            except ConnectionResetError:
                pass
            assert got == b"bye", got
            survivor.sendall(b"two")
            assert survivor.recv(3) == b"two", "the other tunnel is not affected"
        finally:
            dying.close()
            survivor.close()
        wait_for(lambda: lg.admin.stat("http.ingress_http.downstream_cx_upgrades_active") == 0, what="upgrades_active 0")
        lines = wait_lines(log, 2)
        died = [line for line in lines if line.startswith("dying.example:2 ")]
        assert died == ["dying.example:2 200 UC upstream_reset_after_response_started{connection_termination}"], lines
        assert "survivor.example:1 200 - via_upstream" in lines, lines
        assert lg.alive()
    finally:
        up.close()


# ---- access log filters and the stderr logger --------------------------------------------------


def test_duration_and_not_health_check_filters(legate, ports, upstream, tmp_path):
    """duration_filter compares %DURATION%; not_health_check passes every request that no health
    check filter marked (Legate has none, so all of them)."""
    up = upstream("a")
    slow_log, all_log = tmp_path / "slow.log", tmp_path / "all.log"
    slow = file_log(slow_log, "%REQ(:PATH)%\n")
    slow["filter"] = {"and_filter": {"filters": [
        {"not_health_check_filter": {}},
        {"duration_filter": {"comparison": {"op": "GE", "value": {"default_value": 300, "runtime_key": "k.slow"}}}}]}}
    every = file_log(all_log, "%REQ(:PATH)%\n")
    every["filter"] = {"not_health_check_filter": {}}
    port = ports()
    rc = cfg.route_config([cfg.vhost("v", [cfg.route("backend")])])
    lg = legate(cfg.bootstrap(ports(), listeners=[listener(port, rc, access_log=[slow, every])],
                              clusters=[cfg.cluster("backend", [up.port])]), args=FLUSH_ARGS)
    for path in ("/fast", "/delay/600", "/fast2"):
        assert curl(f"http://127.0.0.1:{port}{path}").status == 200
    assert sorted(wait_lines(all_log, 3)) == ["/delay/600", "/fast", "/fast2"]
    assert lg.stop() == []
    assert read_lines(slow_log) == ["/delay/600"]


def test_stderr_logger(legate, ports, upstream):
    up = upstream("a")
    port = ports()
    log = {"name": "envoy.access_loggers.stderr", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog",
        "log_format": {"text_format_source": {"inline_string": "STDERR-LOG %RESPONSE_CODE% %REQ(:PATH)%\n"}}}}
    rc = cfg.route_config([cfg.vhost("v", [cfg.route("backend")])])
    lg = legate(cfg.bootstrap(ports(), listeners=[listener(port, rc, access_log=[log])],
                              clusters=[cfg.cluster("backend", [up.port])]), args=FLUSH_ARGS)
    assert curl(f"http://127.0.0.1:{port}/to-stderr").status == 200
    wait_for(lambda: "STDERR-LOG 200 /to-stderr\n" in lg.stderr(), timeout=10 * time_scale(), what="the entry on stderr")
    assert "STDERR-LOG" not in lg.stdout()


# ---- downstream TLS: inline_bytes, certificate pins --------------------------------------------------


def https_status(port, ctx, host="localhost"):
    """GET / over a new TLS connection: the status, or None when the handshake or the first read failed."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname=host) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                data = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                return int(data.split()[1]) if data else None
    except (ssl.SSLError, ConnectionError, OSError):
        return None


def client_ctx(pki, cert=None):
    ctx = ssl.create_default_context(cafile=pki.ca_cert)
    if cert is not None:
        ctx.load_cert_chain(cert.cert, cert.key)
    return ctx


@pytest.mark.parametrize("pin", ["verify_certificate_spki", "verify_certificate_hash"])
def test_client_certificate_pins(legate, ports, upstream, pki, pin):
    """validation_context pins: a client certificate from the trusted CA is accepted only when its
    SPKI / certificate hash is listed; a mismatch is ssl.fail_verify_cert_hash, as Envoy."""
    up = upstream("a")
    other = pki.issue("other-client", uri=["spiffe://cluster.local/ns/default/sa/other"], client=True, key="ec")
    value = pki.client.spki_sha256_b64() if pin == "verify_certificate_spki" else pki.client.fingerprint_sha256()
    validation = {"trusted_ca": {"filename": pki.ca_cert}, pin: [value]}
    ts = downstream_ts([pki.server], common_extra={"validation_context": validation}, require_client_certificate=True)
    port = ports()
    rc = cfg.route_config([cfg.vhost("v", [cfg.route("backend")])])
    lg = legate(cfg.bootstrap(ports(), listeners=[listener(port, rc, ts)], clusters=[cfg.cluster("backend", [up.port])]))
    assert https_status(port, client_ctx(pki, pki.client)) == 200
    assert https_status(port, client_ctx(pki, other)) is None
    prefix = f"listener.127.0.0.1_{port}.ssl."
    wait_for(lambda: lg.admin.stat(prefix + "fail_verify_cert_hash") == 1, what="fail_verify_cert_hash")
    assert lg.admin.stat(prefix + "handshake") == 1
    assert https_status(port, client_ctx(pki, pki.client)) == 200


def test_inline_bytes_certificate_and_key(legate, ports, upstream, pki):
    import base64
    up = upstream("a")
    inline = {"certificate_chain": {"inline_bytes": base64.b64encode(read(pki.server.cert)).decode()},
              "private_key": {"inline_bytes": base64.b64encode(read(pki.server.key)).decode()}}
    port = ports()
    rc = cfg.route_config([cfg.vhost("v", [cfg.route("backend")])])
    legate(cfg.bootstrap(ports(), listeners=[listener(port, rc, downstream_ts([inline]))],
                         clusters=[cfg.cluster("backend", [up.port])]))
    assert https_status(port, client_ctx(pki)) == 200


# ---- certificate reload through a watched_directory (Kubernetes' symlink swap) ----------------------------


def subject_cn(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                der = s.getpeercert(binary_form=True)
    except OSError:
        return None
    import subprocess
    out = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-subject"], input=der, capture_output=True,
                         timeout=20).stdout.decode()
    m = re.search(r"CN ?= ?([^,/\n]+)", out)
    return m.group(1).strip() if m else None


def test_watched_directory_symlink_swap(legate, ports, upstream, pki, tmp_path):
    """Secrets mounted the Kubernetes way: cert.pem -> ..data/cert.pem, ..data -> a timestamped
    directory, replaced by renaming a new ..data link over it. New connections get the new
    certificate; an open connection keeps working."""
    import shutil
    up = upstream("a")
    d = tmp_path / "mount"
    d.mkdir()

    def publish(cert, name):
        ts_dir = d / name
        ts_dir.mkdir()
        shutil.copy(cert.cert, ts_dir / "cert.pem")
        shutil.copy(cert.key, ts_dir / "key.pem")
        os.symlink(name, d / "..data_tmp")
        os.rename(d / "..data_tmp", d / "..data")

    publish(pki.server, "..2026_01")
    for f in ("cert.pem", "key.pem"):
        os.symlink(f"..data/{f}", d / f)
    certs = {"certificate_chain": {"filename": str(d / "cert.pem")}, "private_key": {"filename": str(d / "key.pem")},
             "watched_directory": {"path": str(d)}}
    port = ports()
    rc = cfg.route_config([cfg.vhost("v", [cfg.route("backend")])])
    legate(cfg.bootstrap(ports(), listeners=[listener(port, rc, downstream_ts([certs]))],
                         clusters=[cfg.cluster("backend", [up.port])]))
    assert subject_cn(port) == "localhost"
    keep = client_ctx(pki).wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost")
    try:
        assert get_on(keep, "/before") == 200
        fresh = pki.issue("swapped", dns=["localhost"], cn="swapped.example.com")
        publish(fresh, "..2026_02")
        wait_for(lambda: subject_cn(port) == "swapped.example.com", timeout=10 * time_scale(), interval=0.2,
                 what="new connections get the swapped certificate")
        assert get_on(keep, "/after") == 200, "the open connection keeps working"
    finally:
        keep.close()


# ---- handshake failures are logged at debug, and never fatal ------------------------------------------


def send_garbage(port):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        s.shutdown(socket.SHUT_WR)
        try:
            while s.recv(4096):
                pass
        except ConnectionResetError:
            pass


@pytest.mark.parametrize("level", ["debug", "info"])
def test_handshake_failure_is_logged_at_debug(legate, ports, upstream, pki, level):
    """Envoy logs a failed downstream handshake at debug in the connection logger:
    "remote address:<peer>,TLS_error:|...:TLS_error_end"; at info it says nothing."""
    up = upstream("a")
    port = ports()
    rc = cfg.route_config([cfg.vhost("v", [cfg.route("backend")])])
    lg = legate(cfg.bootstrap(ports(), listeners=[listener(port, rc, downstream_ts([pki.server]))],
                              clusters=[cfg.cluster("backend", [up.port])]), args=["-l", level])
    send_garbage(port)
    wait_for(lambda: lg.admin.stat(f"listener.127.0.0.1_{port}.ssl.connection_error") == 1, what="connection_error")
    pattern = r"\]\[debug\]\[connection\] .*remote address:127\.0\.0\.1:\d+,TLS_error:\|\d+:[^\n]*:TLS_error_end"
    if level == "debug":
        wait_for(lambda: re.search(pattern, lg.stderr()), timeout=10 * time_scale(), what="the debug line")
    else:
        assert "TLS_error" not in lg.stderr()
    r = curl(f"https://localhost:{port}/after", "--cacert", pki.ca_cert)
    assert r.rc == 0 and r.status == 200, r.stderr


# ---- trusted CA reload; CONNECT tunnel idle timeout ------------------------------------------------------


def test_trusted_ca_file_reload(legate, ports, upstream, pki, tmp_path):
    """validation_context.trusted_ca from a file follows the file: after it is replaced with another
    CA, client certificates of the new CA are accepted and those of the old one refused."""
    import shutil
    up = upstream("a")
    ca_file = tmp_path / "clients-ca.pem"
    shutil.copy(pki.ca_cert, ca_file)
    new_client = pki.other.issue("new-client", client=True, key="ec")
    ts = downstream_ts([pki.server], common_extra={"validation_context": {"trusted_ca": {"filename": str(ca_file)}}},
                       require_client_certificate=True)
    port = ports()
    rc = cfg.route_config([cfg.vhost("v", [cfg.route("backend")])])
    legate(cfg.bootstrap(ports(), listeners=[listener(port, rc, ts)], clusters=[cfg.cluster("backend", [up.port])]))
    assert https_status(port, client_ctx(pki, pki.client)) == 200
    assert https_status(port, client_ctx(pki, new_client)) is None
    shutil.copy(pki.other.ca_cert, str(ca_file) + ".tmp")
    os.rename(str(ca_file) + ".tmp", ca_file)
    wait_for(lambda: https_status(port, client_ctx(pki, new_client)) == 200, timeout=10 * time_scale(), interval=0.2,
             what="the new CA's client accepted")
    assert https_status(port, client_ctx(pki, pki.client)) is None


def test_connect_tunnel_idle_timeout(legate, ports):
    """The route's idle_timeout closes a silent terminated CONNECT tunnel (Envoy's stream idle timer)."""
    up = ResettingTcpServer()
    try:
        port = ports()
        route = {"match": {"connect_matcher": {}},
                 "route": {"cluster": "backend", "idle_timeout": "0.5s",
                           "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}]}}
        rc = cfg.route_config([cfg.vhost("v", [route])])
        lg = legate(cfg.bootstrap(ports(), listeners=[listener(port, rc)], clusters=[cfg.cluster("backend", [up.port])]))
        s = connect_tunnel(port, "idle.example:1")
        try:
            s.sendall(b"ping")
            assert s.recv(4) == b"ping"
            s.settimeout(10 * time_scale())
            try:
                assert s.recv(10) == b""
            except ConnectionResetError:
                pass
        finally:
            s.close()
        wait_for(lambda: lg.admin.stat("http.ingress_http.downstream_rq_idle_timeout") == 1, what="downstream_rq_idle_timeout")
        wait_for(lambda: lg.admin.stat("http.ingress_http.downstream_cx_upgrades_active") == 0, what="upgrades_active 0")
    finally:
        up.close()


# ---- tcp_proxy: connection operators --------------------------------------------------------------------


def test_tcp_proxy_access_log_connection_operators(legate, ports, pki, tmp_path):
    """tcp_proxy behind tls_inspector (TLS passed through, not terminated): %REQUESTED_SERVER_NAME% is
    the ClientHello's SNI, %UPSTREAM_LOCAL_ADDRESS% the proxy's side of the upstream connection."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.server.cert, pki.server.key)
    sink = _TlsSink(ctx)
    try:
        log = tmp_path / "tcp.log"
        fmt = ("%REQUESTED_SERVER_NAME% %UPSTREAM_HOST% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% "
               "%DOWNSTREAM_REMOTE_ADDRESS% %CONNECTION_ID% %BYTES_RECEIVED%\n")
        tcp = {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": "tls_pass", "cluster": "backend", "access_log": [file_log(log, fmt)]}}
        port = ports()
        lst = {"name": "pass", "address": cfg.socket_address(port), "listener_filters": [TLS_INSPECTOR],
               "filter_chains": [{"filter_chain_match": {"server_names": ["a.example.com"]}, "filters": [tcp]}]}
        lg = legate(cfg.bootstrap(ports(), listeners=[lst], clusters=[cfg.cluster("backend", [sink.port])]), args=FLUSH_ARGS)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            local = raw.getsockname()
            with client_ctx(pki).wrap_socket(raw, server_hostname="a.example.com") as s:
                s.sendall(b"x")
                s.recv(1)
        (line,) = wait_lines(log, 1)
        sni, up_host, up_local, dl, dr, cx, rx = line.split(" ")
        assert sni == "a.example.com" and up_host == f"127.0.0.1:{sink.port}"
        assert re.fullmatch(r"127\.0\.0\.1:\d+", up_local) and up_local != up_host
        assert dl == f"127.0.0.1:{port}" and dr == f"{local[0]}:{local[1]}"
        assert int(cx) >= 0 and int(rx) > 100, "the ClientHello and the rest passed through"
        assert lg.admin.stat("tcp.tls_pass.downstream_cx_total") == 1
    finally:
        sink.close()
