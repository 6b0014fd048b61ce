"""Upgrades and CONNECT through Legate: WebSocket over HTTP/1.1 and HTTP/2, CONNECT tunnels.

Envoy behaviour checked here (source/common/http/conn_manager_impl.cc,
source/extensions/filters/network/http_connection_manager/config.cc
createUpgradeFilterChain, source/common/http/utility.cc transformUpgrade*,
source/common/router/router.cc createConnPool, TcpUpstream):
- an upgrade (Connection: upgrade + Upgrade: x) or a CONNECT is allowed when
  the route's upgrade_configs enable it or, unless the route disables it, the
  HCM's upgrade_configs do; otherwise 403 with details upgrade_failed and
  http.<prefix>.downstream_rq_ws_on_non_ws_route;
- an allowed upgrade is forwarded with its Upgrade/Connection headers, the 101
  comes back and bytes flow both ways until either side closes;
  downstream_cx_upgrades_total / _active count them;
- an HTTP/2 extended CONNECT (RFC 8441, with http2_protocol_options.allow_connect)
  goes to an HTTP/1.1 upstream as a GET upgrade and its 101 returns as 200;
- a CONNECT on a route whose CONNECT upgrade_config has connect_config is
  terminated: a TCP connection to the cluster's host, a 200, then a tunnel;
  without connect_config the CONNECT is proxied upstream as a request;
- the stream idle timeout (or the route's idle_timeout) closes a silent tunnel,
  and a tunnel whose upstream dies closes the downstream connection.
"""
import asyncio
import json
import socket
import struct
import time

import h2.settings
import pytest
import websockets

from lib import config as cfg
from lib.clients import curl
from lib.h2client import H2Client
from lib.wait import wait_for
from lib.wsupstream import H2TunnelUpstream, TcpEcho, WsUpstream

WEBSOCKET = [{"upgrade_type": "websocket"}]


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


@pytest.fixture
def tcp_echo():
    started = []

    def make(**kw):
        u = TcpEcho(**kw)
        started.append(u)
        return u

    yield make
    for u in started:
        u.close()


def proxy(legate, ports, upstream_port, routes=None, **hcm_extra):
    routes = routes or [cfg.route("backend")]
    rc = cfg.route_config([cfg.vhost("backend", routes)])
    return legate(cfg.bootstrap(ports(), listeners=[cfg.http_listener("ingress", ports(), rc, **hcm_extra)],
                                clusters=[cfg.cluster("backend", [upstream_port])]))


def ws_url(lg, path):
    return f"ws://127.0.0.1:{lg.listener_port()}{path}"


def run(coro, timeout=20):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def handshake(url):
    """Connects and closes at once; raises what the handshake raised."""
    async with websockets.connect(url, ping_interval=None):
        pass


def header(rec, name):
    return [v for k, v in rec["headers"] if k == name]


def test_websocket_echo_over_http1(legate, ports, ws_upstream):
    up = ws_upstream()
    lg = proxy(legate, ports, up.port, upgrade_configs=WEBSOCKET)
    big = bytes(range(256)) * 4096

    async def session():
        async with websockets.connect(ws_url(lg, "/echo"), ping_interval=None, max_size=None) as ws:
            hello = json.loads(await ws.recv())
            await ws.send("text message")
            text = await ws.recv()
            await ws.send(big)
            binary = await ws.recv()
            active = lg.admin.stat("http.ingress_http.downstream_cx_upgrades_active")
            return hello, text, binary, active, ws.response_headers

    hello, text, binary, active, resp_headers = run(session())
    assert text == "text message" and binary == big
    assert hello["hello"] == "/echo"
    assert header(hello, "upgrade") == ["websocket"] and header(hello, "connection") == ["upgrade"]
    assert header(hello, "x-forwarded-proto") == ["http"] and header(hello, "sec-websocket-key")
    assert active == 1
    assert resp_headers["server"] == "envoy"
    assert lg.admin.stat("http.ingress_http.downstream_cx_upgrades_total") == 1
    wait_for(lambda: lg.admin.stat("http.ingress_http.downstream_cx_upgrades_active") == 0, what="upgrades_active 0")


def test_upgrade_without_upgrade_configs_is_403(legate, ports, ws_upstream):
    up = ws_upstream()
    lg = proxy(legate, ports, up.port)
    with pytest.raises(websockets.InvalidStatusCode) as ei:
        run(handshake(ws_url(lg, "/echo")))
    assert ei.value.status_code == 403
    assert lg.admin.stat("http.ingress_http.downstream_rq_ws_on_non_ws_route") == 1
    assert up.requests == []


def test_route_disables_and_enables_websocket(legate, ports, ws_upstream):
    up = ws_upstream()
    routes = [
        cfg.route("backend", prefix="/off", upgrade_configs=[{"upgrade_type": "websocket", "enabled": False}]),
        cfg.route("backend", prefix="/", upgrade_configs=[{"upgrade_type": "WebSocket"}]),
    ]
    # the HCM allows websocket on /off but the route's disable wins; the HCM has no
    # CONNECT config, but the last route's websocket enable is enough for it
    lg = proxy(legate, ports, up.port, routes=routes, upgrade_configs=[{"upgrade_type": "websocket"}])
    with pytest.raises(websockets.InvalidStatusCode) as ei:
        run(handshake(ws_url(lg, "/off/x")))
    assert ei.value.status_code == 403

    async def ok():
        async with websockets.connect(ws_url(lg, "/echo"), ping_interval=None) as ws:
            await ws.recv()
            await ws.send("x")
            return await ws.recv()

    assert run(ok()) == "x"
    assert lg.admin.stat("http.ingress_http.downstream_rq_ws_on_non_ws_route") == 1


def test_route_enables_websocket_the_hcm_disables(legate, ports, ws_upstream):
    up = ws_upstream()
    routes = [cfg.route("backend", upgrade_configs=[{"upgrade_type": "websocket", "enabled": True}])]
    lg = proxy(legate, ports, up.port, routes=routes, upgrade_configs=[{"upgrade_type": "websocket", "enabled": False}])

    async def ok():
        async with websockets.connect(ws_url(lg, "/echo"), ping_interval=None) as ws:
            await ws.recv()
            await ws.send("enabled")
            return await ws.recv()

    assert run(ok()) == "enabled"


def test_idle_timeout_closes_a_silent_tunnel(legate, ports, ws_upstream):
    up = ws_upstream()
    routes = [cfg.route("backend", idle_timeout="1s")]
    lg = proxy(legate, ports, up.port, routes=routes, upgrade_configs=WEBSOCKET)

    async def silent():
        async with websockets.connect(ws_url(lg, "/echo"), ping_interval=None) as ws:
            await ws.recv()
            start = time.monotonic()
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            return time.monotonic() - start

    waited = run(silent())
    assert 0.5 < waited < 5, waited
    assert lg.admin.stat("http.ingress_http.downstream_rq_idle_timeout") == 1


def test_upstream_death_closes_the_downstream(legate, ports, ws_upstream):
    up = ws_upstream()
    lg = proxy(legate, ports, up.port, upgrade_configs=WEBSOCKET)

    async def dying():
        async with websockets.connect(ws_url(lg, "/die"), ping_interval=None, close_timeout=2) as ws:
            await ws.recv()
            await ws.send("last words")
            echoed = await ws.recv()
            with pytest.raises(websockets.ConnectionClosed) as ei:
                await ws.recv()
            return echoed, ei.value

    echoed, closed = run(dying())
    assert echoed == "last words"
    assert closed.rcvd is None  # no close frame: the tunnel was cut
    wait_for(lambda: lg.admin.stat("http.ingress_http.downstream_cx_upgrades_active") == 0, what="upgrades_active 0")


# ---- WebSocket over HTTP/2 (RFC 8441) ----

def ws_frame(payload, opcode=1):
    """A masked client frame (payloads under 126 bytes)."""
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


def ws_parse(buf):
    """Unmasked server frames in buf -> ([(opcode, payload)], rest)."""
    frames = []
    while len(buf) >= 2:
        n, off = buf[1] & 0x7F, 2
        if n == 126:
            if len(buf) < 4:
                break
            n, off = struct.unpack(">H", buf[2:4])[0], 4
        elif n == 127:
            if len(buf) < 10:
                break
            n, off = struct.unpack(">Q", buf[2:10])[0], 10
        if len(buf) < off + n:
            break
        frames.append((buf[0] & 0x0F, bytes(buf[off:off + n])))
        buf = buf[off + n:]
    return frames, buf


def test_websocket_over_h2_extended_connect(legate, ports, ws_upstream):
    up = ws_upstream()
    lg = proxy(legate, ports, up.port, upgrade_configs=WEBSOCKET, http2_protocol_options={"allow_connect": True})
    with H2Client("127.0.0.1", lg.listener_port()) as c:
        wait_for(lambda: c.pump(0.1) and c.conn.remote_settings.get(h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL),
                 what="SETTINGS_ENABLE_CONNECT_PROTOCOL")
        sid = c.conn.get_next_available_stream_id()
        c.conn.send_headers(sid, [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "http"),
                                  (":path", "/echo"), (":authority", "ws.example"), ("sec-websocket-version", "13"),
                                  ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")])
        c._flush()
        resp = c._resp(sid)
        wait_for(lambda: c.pump(0.1) and resp.headers, what="response headers")
        assert resp.status == 200, resp.headers
        assert resp.header("upgrade") is None and resp.header("connection") is None
        c.conn.send_data(sid, ws_frame(b"over h2"))
        c._flush()

        def two_frames():
            c.pump(0.1)
            return len(ws_parse(bytes(resp.data))[0]) >= 2

        wait_for(two_frames, what="two websocket frames")
        frames, _ = ws_parse(bytes(resp.data))
    hello = json.loads(frames[0][1])
    assert hello["hello"] == "/echo"
    assert header(hello, "upgrade") == ["websocket"] and header(hello, "host") == ["ws.example"]
    assert frames[1] == (1, b"over h2")
    assert lg.admin.stat("http.ingress_http.downstream_cx_upgrades_total") == 1


def test_h2_extended_connect_not_advertised_without_allow_connect(legate, ports, ws_upstream):
    up = ws_upstream()
    lg = proxy(legate, ports, up.port, upgrade_configs=WEBSOCKET)
    with H2Client("127.0.0.1", lg.listener_port()) as c:
        c.pump(0.5)
        assert not c.conn.remote_settings.get(h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL)


def test_http1_upgrade_to_h2_upstream_as_extended_connect(legate, ports):
    up = H2TunnelUpstream()
    try:
        rc = cfg.route_config([cfg.vhost("backend", [cfg.route("backend")])])
        lg = legate(cfg.bootstrap(ports(), listeners=[cfg.http_listener("ingress", ports(), rc, upgrade_configs=WEBSOCKET)],
                                  clusters=[cfg.cluster("backend", [up.port], http2=True)]))
        with socket.create_connection(("127.0.0.1", lg.listener_port()), timeout=10) as s:
            s.sendall(b"GET /chat HTTP/1.1\r\nHost: chat.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
            head, rest = read_head(s)
            lines = head.lower().split("\r\n")
            assert lines[0].startswith("http/1.1 101 "), head
            assert "upgrade: websocket" in lines and "connection: upgrade" in lines, head
            s.sendall(b"raw bytes both ways")
            assert recv_exactly(s, 19, rest) == b"raw bytes both ways"
        req = dict(up.requests[0])
        assert req[":method"] == "CONNECT" and req[":protocol"] == "websocket" and req[":path"] == "/chat"
        assert req[":authority"] == "chat.example"
        assert "upgrade" not in req and "connection" not in req
    finally:
        up.close()


# ---- CONNECT ----

CONNECT_ROUTE = {"match": {"connect_matcher": {}}, "route": {"cluster": "backend"}}


def connect_route(terminate):
    uc = {"upgrade_type": "CONNECT"}
    if terminate:
        uc["connect_config"] = {}
    r = json.loads(json.dumps(CONNECT_ROUTE))
    r["route"]["upgrade_configs"] = [uc]
    return r


def read_head(s):
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = s.recv(65536)
        if not data:
            raise AssertionError(f"closed before a head: {buf!r}")
        buf += data
    head, rest = buf.split(b"\r\n\r\n", 1)
    return head.decode("latin-1"), rest


def recv_exactly(s, n, initial=b""):
    buf = initial
    while len(buf) < n:
        data = s.recv(65536)
        if not data:
            break
        buf += data
    return buf


def test_connect_terminated_tunnel_with_half_close(legate, ports, tcp_echo):
    up = tcp_echo()
    lg = proxy(legate, ports, up.port, routes=[connect_route(True)])
    with socket.create_connection(("127.0.0.1", lg.listener_port()), timeout=10) as s:
        s.sendall(b"CONNECT db.example:5432 HTTP/1.1\r\nHost: db.example:5432\r\n\r\n")
        head, rest = read_head(s)
        assert head.startswith("HTTP/1.1 200 "), head
        assert "content-length" not in head.lower() and "transfer-encoding" not in head.lower()
        payload = bytes(range(256)) * 1024
        s.sendall(payload)
        got = recv_exactly(s, len(payload), rest)
        assert got == payload
        s.shutdown(socket.SHUT_WR)  # the echo server sees EOF, closes, and so does the tunnel
        assert s.recv(10) == b""
    wait_for(lambda: up.closed == 1, what="upstream connection closed")
    assert lg.admin.stat("http.ingress_http.downstream_cx_upgrades_total") == 1


def test_connect_terminated_with_curl_proxytunnel(legate, ports, upstream):
    up = upstream("behind-connect")
    lg = proxy(legate, ports, up.port, routes=[connect_route(True)])
    r = curl("http://anything.example:8080/through/tunnel", "-p", "-x", f"http://127.0.0.1:{lg.listener_port()}")
    assert r.rc == 0 and r.status == 200, r
    assert r.json()["path"] == "/through/tunnel"
    assert r.json()["server"] == "behind-connect"


def test_connect_proxied_upstream_without_connect_config(legate, ports, tcp_echo):
    up = tcp_echo(connect_proxy=True)
    lg = proxy(legate, ports, up.port, routes=[connect_route(False)])
    with socket.create_connection(("127.0.0.1", lg.listener_port()), timeout=10) as s:
        s.sendall(b"CONNECT target.example:443 HTTP/1.1\r\nHost: target.example:443\r\n\r\n")
        head, rest = read_head(s)
        assert head.startswith("HTTP/1.1 200 "), head
        s.sendall(b"ping through a proxied CONNECT")
        assert recv_exactly(s, 30, rest) == b"ping through a proxied CONNECT"
    assert up.heads and up.heads[0].startswith("CONNECT target.example:443 HTTP/1.1\r\n"), up.heads
    assert "host: target.example:443" in up.heads[0].lower()


def test_connect_not_allowed_is_403(legate, ports, tcp_echo):
    up = tcp_echo()
    lg = proxy(legate, ports, up.port, routes=[CONNECT_ROUTE])
    with socket.create_connection(("127.0.0.1", lg.listener_port()), timeout=10) as s:
        s.sendall(b"CONNECT db.example:5432 HTTP/1.1\r\nHost: db.example:5432\r\n\r\n")
        head, _ = read_head(s)
    assert head.startswith("HTTP/1.1 403 "), head
    assert up.accepted == 0


def test_h2_connect_terminated(legate, ports, tcp_echo):
    up = tcp_echo()
    lg = proxy(legate, ports, up.port, routes=[connect_route(True)])
    with H2Client("127.0.0.1", lg.listener_port()) as c:
        sid = c.conn.get_next_available_stream_id()
        c.conn.config.validate_outbound_headers = False  # python-h2 wants a :path even on a plain CONNECT
        c.conn.send_headers(sid, [(":method", "CONNECT"), (":authority", "db.example:5432")])
        c._flush()
        resp = c._resp(sid)
        wait_for(lambda: c.pump(0.1) and resp.headers, what="response headers")
        assert resp.status == 200
        c.conn.send_data(sid, b"h2 tunnel bytes", end_stream=True)
        c._flush()
        c.wait_response(sid)
    assert resp.body == b"h2 tunnel bytes" and resp.ended
