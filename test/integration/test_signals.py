"""Drains, as Envoy's DrainManager: SIGTERM, POST /drain_listeners and LDS updates
(the chains they change or the listeners they remove). In-flight requests complete,
HTTP/1.1 responses carry `connection: close`, HTTP/2 connections get GOAWAY; what is
still open when --drain-time-s has passed is closed (tcp_proxy connections too, which
a drain otherwise leaves alone), and listener_manager.total_listeners_draining /
total_filter_chains_draining count the listener drains until then. The immediate
strategy tells every connection at once; the gradual one (Envoy's default) tells each
at a time spread over the drain time, and on each response with a probability that
grows from 0 to 1 over it (DrainManagerImpl::drainClose)."""
import signal
import socket
import time

import pytest

from lib import config as cfg
from lib.h2client import H2Client
from lib.legate import time_scale
from lib.rawhttp import ConnectionClosed, RawHTTP
from lib.wait import wait_for
from lib.xds import LISTENER, ads_bootstrap, wait_stat, world, xds_server  # noqa: F401  (xds_server: the fixture)

DRAIN_S = 2


def start(legate, ports, up, drain=DRAIN_S):
    # Envoy's default drain strategy (gradual) closes connections with a probability that grows over the
    # drain time; immediate makes every connection drain at once, so what the tests see is deterministic.
    return legate(cfg.simple_proxy(ports(), ports(), [up.port]),
                  args=["--drain-time-s", str(drain), "--drain-strategy", "immediate"])


def term(lg):
    lg.mark_expected_exit()
    t0 = time.monotonic()
    lg.signal(signal.SIGTERM)
    return t0


def assert_exits_zero(lg, t0, drain=DRAIN_S):
    rc = lg.wait_exit(drain + 8)
    assert rc == 0, f"exit code {rc}; stderr tail:\n{lg.stderr()[-2000:]}"
    assert time.monotonic() - t0 <= (drain + 8) * time_scale()


def test_sigterm_http1_in_flight_completes_with_connection_close(legate, ports, upstream):
    up = upstream()
    lg = start(legate, ports, up)
    with RawHTTP("127.0.0.1", lg.listener_port(), timeout=20) as ka:
        ka.request("GET", "/warm")
        assert ka.read_response().status == 200
        # In flight on the kept-alive connection when SIGTERM arrives; its response is
        # produced a second later, well inside the drain.
        ka.request("GET", "/delay/1000")
        up.wait_inflight(1)
        t0 = term(lg)
        r = ka.read_response()
        assert r.status == 200 and r.json()["path"] == "/delay/1000"
        assert (r.header("connection") or "").lower() == "close", r.headers
        assert ka.closed_by_peer(timeout=5)
    assert_exits_zero(lg, t0)


def test_sigterm_h2_gets_goaway_and_in_flight_stream_completes(legate, ports, upstream):
    up = upstream()
    lg = start(legate, ports, up)
    with H2Client("127.0.0.1", lg.listener_port(), timeout=20) as c:
        assert c.get("/warm").status == 200
        sid = c.request("GET", "/delay/1000")
        up.wait_inflight(1)
        t0 = term(lg)
        ga = c.wait_goaway(timeout=DRAIN_S + 5)
        assert ga is not None, "connection closed without GOAWAY"
        assert ga[0] == 0, f"GOAWAY error code {ga[0]}, want NO_ERROR"
        r = c.wait_response(sid)
        assert r.status == 200
    assert_exits_zero(lg, t0)


def test_sigterm_idle_exits_zero(legate, ports, upstream):
    up = upstream()
    lg = start(legate, ports, up, drain=1)
    t0 = term(lg)
    assert_exits_zero(lg, t0, drain=1)
    assert lg.stop() == []


# ---- the end of the drain time: what is left is closed -------------------------------------------

SLOW = "/delay/8000"  # answered long after the drains below end
T = time_scale()


def drained_away(conn, timeout):
    """The proxy closes `conn` (RawHTTP with a request in flight) without answering it."""
    try:
        r = conn.read_response(timeout=timeout)
    except ConnectionClosed:
        return True
    raise AssertionError(f"answered {r.status} instead of being closed")


def test_drain_listeners_closes_connections_left_at_the_end(legate, ports, upstream):
    up = upstream()
    lg = start(legate, ports, up, drain=1)
    port = lg.listener_port()
    with RawHTTP("127.0.0.1", port, timeout=20) as c:
        c.request("GET", SLOW)
        up.wait_inflight(1)
        assert lg.admin.post("/drain_listeners").text == "OK\n"
        assert drained_away(c, timeout=6 * T)
    wait_for(lambda: lg.admin.stat(f"listener.127.0.0.1_{port}.downstream_cx_active") == 0, timeout=5 * T,
             what="listener downstream_cx_active back to 0")
    assert lg.admin.stat("http.ingress_http.downstream_cx_destroy") == 1
    assert lg.admin.ready(), "/drain_listeners does not stop the server"


def test_drain_listeners_graceful_keeps_listening_until_the_end(legate, ports, upstream):
    up = upstream()
    lg = start(legate, ports, up, drain=2)
    port = lg.listener_port()
    assert lg.admin.post("/drain_listeners?graceful").status == 200
    # still accepting during the drain; told to close on the first response
    with RawHTTP("127.0.0.1", port, timeout=10) as c:
        c.request("GET", "/during")
        r = c.read_response()
        assert r.status == 200 and (r.header("connection") or "").lower() == "close"
    wait_for(lambda: _refused(port), timeout=8 * T, what="listener to close at the end of the drain")


def _refused(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except OSError:
        return True


def tcp_proxy_listener(name, port, cluster, stat_prefix):
    tc = {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
          "stat_prefix": stat_prefix, "cluster": cluster}
    return cfg.listener(name, port, [{"name": "envoy.filters.network.tcp_proxy", "typed_config": tc}])


def lds_world(port, tcp_port, up, http_prefix="ingress", tcp_prefix="tcp_v1", with_tcp=True):
    w = world(port, {"a": [up.port]})
    w["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["stat_prefix"] = http_prefix
    if with_tcp:
        w["listeners"].append(tcp_proxy_listener("tcp", tcp_port, "a", tcp_prefix))
    return w


def lds_start(xds_server, legate, ports, upstream, drain):
    up = upstream("a")
    xds = xds_server()
    admin_port, port, tcp_port = ports(3)
    xds.update(**lds_world(port, tcp_port, up))
    lg = legate(ads_bootstrap(admin_port, xds), args=["--drain-time-s", str(drain), "--drain-strategy", "immediate"])
    wait_for(lambda: not _refused(tcp_port), timeout=5 * T, what="tcp listener")
    return xds, lg, up, port, tcp_port


def tcp_get(s, path):
    """One keep-alive HTTP/1.1 exchange through the tcp_proxy listener (to the echo upstream)."""
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, "closed"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int([ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:")][0])
    while len(body) < length:
        body += s.recv(65536)
    return head.split(b" ")[1]


def closed_by_peer(s, timeout):
    s.settimeout(timeout)
    try:
        while s.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


@pytest.mark.deadline(90)
def test_lds_changed_chains_close_at_the_end_of_the_drain(xds_server, legate, ports, upstream):
    drain = 3
    xds, lg, up, port, tcp_port = lds_start(xds_server, legate, ports, upstream, drain)
    tcp = socket.create_connection(("127.0.0.1", tcp_port), timeout=10)
    try:
        assert tcp_get(tcp, "/before") == b"200"
        with RawHTTP("127.0.0.1", port, timeout=20) as c:
            c.request("GET", SLOW)
            up.wait_inflight(1)
            m = xds.mark()
            v = xds.update(**lds_world(port, tcp_port, up, http_prefix="ingress_v2", tcp_prefix="tcp_v2"))
            xds.wait_ack(LISTENER, v[LISTENER], since=m, timeout=5 * T)
            s = lg.admin.stats()
            assert s["listener_manager.total_filter_chains_draining"] == 2, "both listeners' chains changed in place"
            assert s["listener_manager.listener_in_place_updated"] == 2
            assert s.get("listener_manager.total_listeners_draining", 0) == 0
            assert s["http.ingress.downstream_cx_drain_close"] == 1, "the in-flight request's connection was told"
            # tcp_proxy connections are left alone until the end of the drain
            assert tcp_get(tcp, "/during") == b"200"
            assert drained_away(c, timeout=(drain + 4) * T)
        assert closed_by_peer(tcp, (drain + 4) * T)
    finally:
        tcp.close()
    wait_stat(lg, "listener_manager.total_filter_chains_draining", lambda x: x == 0, timeout=5 * T)
    assert lg.admin.stat(f"listener.127.0.0.1_{port}.downstream_cx_active") == 0
    # the new chains serve
    with RawHTTP("127.0.0.1", port, timeout=10) as c:
        c.request("GET", "/after")
        assert c.read_response().status == 200
    assert lg.admin.stat("http.ingress_v2.downstream_rq_total") == 1


@pytest.mark.deadline(90)
def test_lds_removed_listener_drains_then_closes(xds_server, legate, ports, upstream):
    drain = 2
    xds, lg, up, port, tcp_port = lds_start(xds_server, legate, ports, upstream, drain)
    tcp = socket.create_connection(("127.0.0.1", tcp_port), timeout=10)
    try:
        assert tcp_get(tcp, "/before") == b"200"
        m = xds.mark()
        v = xds.update(**lds_world(port, tcp_port, up, with_tcp=False))
        xds.wait_ack(LISTENER, v[LISTENER], since=m, timeout=5 * T)
        assert lg.admin.stat("listener_manager.total_listeners_draining") == 1
        wait_for(lambda: _refused(tcp_port), timeout=5 * T, what="the removed listener's socket to close")
        assert closed_by_peer(tcp, (drain + 4) * T)
    finally:
        tcp.close()
    wait_stat(lg, "listener_manager.total_listeners_draining", lambda x: x == 0, timeout=5 * T)


def two_chain_listener(port, body_a, body_b):
    """One listener on 0.0.0.0: chain `a` serves 127.0.0.1, chain `b` 127.0.0.2 (destination prefix)."""
    def chain(name, ip, body):
        rc = cfg.route_config([cfg.vhost("v", [{"match": {"prefix": "/"},
                                                "direct_response": {"status": 200, "body": {"inline_string": body}}}])])
        return {"name": name, "filter_chain_match": {"prefix_ranges": [{"address_prefix": ip, "prefix_len": 32}]},
                "filters": [cfg.hcm(rc, stat_prefix=f"chain_{name}")]}
    return {"name": "chains", "address": cfg.socket_address(port, "0.0.0.0"),
            "filter_chains": [chain("a", "127.0.0.1", body_a), chain("b", "127.0.0.2", body_b)]}


def test_lds_drains_a_connection_whose_chain_changes_two_updates_later(xds_server, legate, ports, upstream):
    """A connection outlives an update that recompiles its listener but keeps its chain; a later
    update that changes its chain drains it."""
    up = upstream("a")
    xds = xds_server()
    admin_port, port = ports(2)
    w = world(ports(), {"a": [up.port]})
    xds.update(**dict(w, listeners=[two_chain_listener(port, "A1", "B1")]))
    lg = legate(ads_bootstrap(admin_port, xds), args=["--drain-time-s", "1", "--drain-strategy", "immediate"])
    wait_for(lambda: not _refused(port), timeout=5 * T, what="listener")
    with RawHTTP("127.0.0.1", port, timeout=10) as c:
        c.request("GET", "/")
        assert c.read_response().body == b"A1"
        for bodies, told in ((("A1", "B2"), False), (("A2", "B2"), True)):
            m = xds.mark()
            v = xds.update(**dict(w, listeners=[two_chain_listener(port, *bodies)]))
            xds.wait_ack(LISTENER, v[LISTENER], since=m, timeout=5 * T)
            if not told:
                c.request("GET", "/")
                assert c.read_response().body == b"A1", "chain a did not change: the connection lives on"
        assert c.closed_by_peer(timeout=5 * T), "chain a changed: the idle connection is drained"
    with RawHTTP("127.0.0.1", port, timeout=10) as c:
        c.request("GET", "/")
        assert c.read_response().body == b"A2"


# ---- the gradual strategy ---------------------------------------------------------------------------

GRADUAL_N = 8
GRADUAL_DRAIN = 6


def start_gradual(legate, ports, up):
    return legate(cfg.simple_proxy(ports(), ports(), [up.port]),
                  args=["--drain-time-s", str(GRADUAL_DRAIN), "--drain-strategy", "gradual"])


@pytest.mark.deadline(90)
def test_gradual_http2_goaways_spread_over_the_drain(legate, ports, upstream):
    up = upstream()
    lg = start_gradual(legate, ports, up)
    conns = [H2Client("127.0.0.1", lg.listener_port(), timeout=20) for _ in range(GRADUAL_N)]
    try:
        for c in conns:
            assert c.get("/warm").status == 200
        t0 = time.monotonic()
        assert lg.admin.post("/drain_listeners?graceful").status == 200
        for c in conns:
            c.pump(0.05)
        early = sum(c.goaway is not None or c.closed for c in conns)
        elapsed = time.monotonic() - t0
        # each connection is told at a uniformly random time: all of them within `elapsed`
        # has a probability of (elapsed / drain time) ** N
        if elapsed < GRADUAL_DRAIN / 3:
            assert early < GRADUAL_N, f"all {GRADUAL_N} connections told to drain within {elapsed:.2f}s"
        for c in conns:
            ga = c.wait_goaway(timeout=GRADUAL_DRAIN + 6 * T)
            assert ga is None or ga[0] == 0
    finally:
        for c in conns:
            c.close()


@pytest.mark.deadline(90)
def test_gradual_http1_connection_close_probability_grows(legate, ports, upstream):
    up = upstream()
    lg = start_gradual(legate, ports, up)
    conns = [RawHTTP("127.0.0.1", lg.listener_port(), timeout=20) for _ in range(GRADUAL_N)]
    try:
        for c in conns:
            c.request("GET", "/warm")
            assert c.read_response().status == 200
        t0 = time.monotonic()
        assert lg.admin.post("/drain_listeners?graceful").status == 200
        first = []
        for c in conns:
            c.request("GET", "/first")
            first.append((c.read_response().header("connection") or "").lower() == "close")
        elapsed = time.monotonic() - t0
        if elapsed < GRADUAL_DRAIN / 3:
            assert not all(first), f"every response within {elapsed:.2f}s of the drain start said connection: close"
        # later responses say it more and more often; none is left open after the drain time
        open_conns = [c for c, told in zip(conns, first) if not told]
        deadline = time.monotonic() + GRADUAL_DRAIN + 6 * T
        while open_conns and time.monotonic() < deadline:
            for c in list(open_conns):
                try:
                    c.request("GET", "/again")
                    r = c.read_response()
                except (ConnectionClosed, OSError):
                    open_conns.remove(c)  # closed at the end of the drain
                    continue
                if (r.header("connection") or "").lower() == "close":
                    open_conns.remove(c)
            time.sleep(0.1)
        assert not open_conns, f"{len(open_conns)} connections still open after the drain time"
    finally:
        for c in conns:
            c.close()


def test_failed_health_checks_close_connections_after_responses(legate, ports, upstream):
    """Envoy's drainClose() is true while /healthcheck/fail is in effect."""
    up = upstream()
    lg = start(legate, ports, up)
    with RawHTTP("127.0.0.1", lg.listener_port(), timeout=10) as c:
        c.request("GET", "/ok")
        assert (c.read_response().header("connection") or "").lower() != "close"
        assert lg.admin.post("/healthcheck/fail").status == 200
        c.request("GET", "/failing")
        r = c.read_response()
        assert r.status == 200 and (r.header("connection") or "").lower() == "close"
    assert lg.admin.post("/healthcheck/ok").status == 200
