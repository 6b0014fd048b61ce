"""Listener connection stats, as Envoy counts them (source/server/active_tcp_listener.cc,
ActiveTcpConnection): listener.<address>.downstream_cx_total and downstream_cx_active go up
when a connection has matched a filter chain; when its socket closes, downstream_cx_active
goes down, downstream_cx_destroy up and downstream_cx_length_ms records its life;
server.total_connections counts the open ones of every listener (not the admin's). The HTTP
connection manager's http.<stat_prefix>.downstream_cx_active / downstream_cx_destroy follow
the same connections."""
import os
import resource
import socket
import time

import pytest

from lib import config as cfg
from lib.admin import parse_prometheus
from lib.h2client import H2Client, frame
from lib.legate import run_legate, time_scale, write_yaml
from lib.ports import free_port
from lib.rawhttp import RawHTTP, assert_refused
from lib.wait import wait_for

N = 4
T = time_scale()


@pytest.fixture
def proxied(legate, ports, upstream):
    up = upstream()
    lg = legate(cfg.simple_proxy(ports(), ports(), [up.port]))
    return lg, up


def lstat(lg, name):
    return f"listener.127.0.0.1_{lg.listener_port()}.{name}"


def wait_stats(lg, want, what):
    """Waits until every stat in `want` has its value; returns the last /stats read."""
    seen = {}

    def check():
        seen.update(lg.admin.stats())
        return all(seen.get(k, 0) == v for k, v in want.items())

    try:
        wait_for(check, timeout=5 * T, what=what)
    except AssertionError:
        raise AssertionError(f"{what}: want {want}, have {({k: seen.get(k) for k in want})}")
    return seen


def check_open_then_closed(lg, open_conns, close_conns):
    conns = open_conns()
    try:
        wait_stats(lg, {lstat(lg, "downstream_cx_total"): N, lstat(lg, "downstream_cx_active"): N,
                        "http.ingress_http.downstream_cx_active": N, "server.total_connections": N},
                   f"{N} connections active")
    finally:
        close_conns(conns)
    s = wait_stats(lg, {lstat(lg, "downstream_cx_active"): 0, lstat(lg, "downstream_cx_destroy"): N,
                        "http.ingress_http.downstream_cx_active": 0, "http.ingress_http.downstream_cx_destroy": N,
                        "server.total_connections": 0},
                   "every connection closed")
    assert s[lstat(lg, "downstream_cx_total")] == N
    assert s["http.ingress_http.downstream_cx_total"] == N


def test_http1_connections_counted_until_closed(proxied):
    lg, _ = proxied

    def open_conns():
        conns = []
        for i in range(N):
            c = RawHTTP("127.0.0.1", lg.listener_port(), timeout=10)
            conns.append(c)
            c.request("GET", f"/c{i}")
            assert c.read_response().status == 200
        return conns

    check_open_then_closed(lg, open_conns, lambda conns: [c.close() for c in conns])


def test_http2_connections_counted_until_closed(proxied):
    lg, _ = proxied

    def open_conns():
        conns = []
        for i in range(N):
            c = H2Client("127.0.0.1", lg.listener_port(), timeout=10)
            conns.append(c)
            assert c.get(f"/c{i}").status == 200
        return conns

    check_open_then_closed(lg, open_conns, lambda conns: [c.close() for c in conns])
    assert lg.admin.stat("http.ingress_http.downstream_cx_http2_active") == 0
    assert lg.admin.stat("http.ingress_http.downstream_cx_http2_total") == N


def test_connection_closed_by_proxy_is_destroyed(proxied):
    """A connection the proxy closes (a request it refuses) counts the same way."""
    lg, _ = proxied
    for _ in range(N):
        with socket.create_connection(("127.0.0.1", lg.listener_port()), timeout=10) as s:
            s.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            s.settimeout(10)
            while s.recv(4096):
                pass
    wait_stats(lg, {lstat(lg, "downstream_cx_total"): N, lstat(lg, "downstream_cx_active"): 0,
                    lstat(lg, "downstream_cx_destroy"): N, "http.ingress_http.downstream_cx_destroy": N},
               "refused connections destroyed")


def one_request_each(lg, n):
    """n HTTP/1.1 connections, one request each, closed by the client."""
    for i in range(n):
        with RawHTTP("127.0.0.1", lg.listener_port(), timeout=10) as c:
            c.request("GET", f"/c{i}")
            assert c.read_response().status == 200


def test_connection_length_histogram(proxied):
    lg, _ = proxied
    one_request_each(lg, N)
    wait_stats(lg, {lstat(lg, "downstream_cx_destroy"): N}, "connections destroyed")
    _, samples = parse_prometheus(lg.admin.get("/stats/prometheus").text)
    addr = f"127.0.0.1_{lg.listener_port()}"
    counts = [v for name, labels, v in samples
              if name == "envoy_listener_downstream_cx_length_ms_count" and labels.get("envoy_listener_address") == addr]
    assert counts == [str(N)], counts


def test_admin_listener_counted(proxied):
    """Envoy's admin listener has the same stats under listener.admin.* (and http.admin.*)."""
    lg, _ = proxied
    socks = [socket.create_connection(("127.0.0.1", lg.admin_port), timeout=10) for _ in range(N)]
    try:
        # the /stats request that reads them is on one more connection
        wait_stats(lg, {"listener.admin.downstream_cx_active": N + 1, "http.admin.downstream_cx_active": N + 1},
                   "admin connections active")
    finally:
        for s in socks:
            s.close()
    s = wait_stats(lg, {"listener.admin.downstream_cx_active": 1}, "admin connections closed")
    assert s["listener.admin.downstream_cx_destroy"] == s["listener.admin.downstream_cx_total"] - 1 >= N
    assert s["http.admin.downstream_cx_destroy"] == s["listener.admin.downstream_cx_destroy"]


# Who closed a connection, and whether requests were still open on it (Envoy's
# ConnectionManagerImpl::onEvent / doConnectionClose): downstream_cx_destroy_remote or
# downstream_cx_destroy_local, and downstream_cx_destroy_active_rq with its _remote_ / _local_
# variant when streams had to be reset.
DESTROY = ("downstream_cx_destroy_remote", "downstream_cx_destroy_local", "downstream_cx_destroy_active_rq",
           "downstream_cx_destroy_remote_active_rq", "downstream_cx_destroy_local_active_rq",
           "downstream_cx_delayed_close_timeout")


def destroy_stats(lg, **want):
    full = {f"http.ingress_http.{k}": want.get(k, 0) for k in DESTROY}
    full["http.ingress_http.downstream_cx_destroy"] = want.get("downstream_cx_destroy_remote", 0) + \
        want.get("downstream_cx_destroy_local", 0)
    return wait_stats(lg, full, "connection destroy stats")


def test_client_closes_idle_connections(proxied):
    lg, _ = proxied
    one_request_each(lg, N)
    with H2Client("127.0.0.1", lg.listener_port(), timeout=10) as c:
        assert c.get("/h2").status == 200
    destroy_stats(lg, downstream_cx_destroy_remote=N + 1)


def test_client_closes_with_requests_in_flight(proxied):
    """A client that goes away while its request waits on the upstream: the request is reset
    and the upstream request with it (upstream_rq_tx_reset)."""
    lg, up = proxied
    c1 = RawHTTP("127.0.0.1", lg.listener_port(), timeout=10)
    c1.request("GET", "/delay/20000")
    c2 = H2Client("127.0.0.1", lg.listener_port(), timeout=10)
    c2.request("GET", "/delay/20000")
    c2.request("GET", "/delay/20000")
    up.wait_inflight(3, timeout=10 * T)
    c1.close()
    c2.close()
    destroy_stats(lg, downstream_cx_destroy_remote=2, downstream_cx_destroy_active_rq=2,
                  downstream_cx_destroy_remote_active_rq=2)
    wait_for(lambda: lg.admin.stat("cluster.backend.upstream_rq_tx_reset") == 3, timeout=5 * T,
             what="the upstream requests reset")


def test_proxy_closes_connections(proxied):
    """Closes Legate decides: a malformed request answered with 400 (no stream left), the client
    keeping its side open until the delayed close timeout ends it; and an HTTP/2 connection error
    while a stream waits on the upstream (GOAWAY, the stream reset)."""
    lg, up = proxied
    with socket.create_connection(("127.0.0.1", lg.listener_port()), timeout=10) as s:
        s.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        answer = b""
        while (data := s.recv(4096)):  # Legate shuts its side after the 400
            answer += data
        assert answer.startswith(b"HTTP/1.1 400 ")
        wait_stats(lg, {"http.ingress_http.downstream_cx_destroy_local": 1,
                        "http.ingress_http.downstream_cx_delayed_close_timeout": 1}, "closed at the delayed close timeout")
    with H2Client("127.0.0.1", lg.listener_port(), timeout=10) as c:
        c.request("GET", "/delay/20000")
        up.wait_inflight(1, timeout=10 * T)
        c.sock.sendall(frame(0x8, 0, 0, b"\0\0\0\0"))  # WINDOW_UPDATE of 0 on the connection: PROTOCOL_ERROR
        assert c.wait_goaway(timeout=10 * T)[0] == 1
    destroy_stats(lg, downstream_cx_destroy_local=2, downstream_cx_destroy_active_rq=1,
                  downstream_cx_destroy_local_active_rq=1, downstream_cx_delayed_close_timeout=1)


def test_close_asked_by_client_is_not_delayed(proxied):
    """Envoy's doEndStream since 1.22: a request that asked for the close (`connection: close`)
    and was read whole gets its response and the close at once (FlushWrite), a local close; no
    delayed close waits for the client's FIN. The clients here keep their side open until
    Legate's connection is gone."""
    lg, _ = proxied
    heads = (b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
             b"POST /b HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, close\r\nContent-Length: 5\r\n\r\nhello")
    socks = []
    try:
        for head in heads:
            s = socket.create_connection(("127.0.0.1", lg.listener_port()), timeout=10)
            socks.append(s)
            s.sendall(head)
            answer = b""
            while (data := s.recv(4096)):
                answer += data
            assert answer.split(b"\r\n", 1)[0].endswith(b" 200 OK"), answer
            assert b"\r\nconnection: close\r\n" in answer.lower()
        wait_stats(lg, {"http.ingress_http.downstream_cx_active": 0, lstat(lg, "downstream_cx_active"): 0},
                   "connections closed while their clients still hold them")
        destroy_stats(lg, downstream_cx_destroy_local=2)
    finally:
        for s in socks:
            s.close()


def test_response_before_request_complete(legate, ports):
    """Envoy's downstream_rq_response_before_rq_complete: a response (here a direct response)
    starts while the request is still coming. HTTP/1.1 closes the connection after it (the rest
    of the request cannot be told from the next one); a request without a body keeps it."""
    rc = cfg.route_config([cfg.vhost("v", [{"match": {"prefix": "/"},
                                            "direct_response": {"status": 200, "body": {"inline_string": "early\n"}}}])])
    lg = legate(cfg.bootstrap(ports(), listeners=[cfg.http_listener("ingress", ports(), rc)]))
    with RawHTTP("127.0.0.1", lg.listener_port(), timeout=10) as c:
        c.request("GET", "/whole")
        r = c.read_response()
        assert r.status == 200 and r.header("connection") is None
        c.send(b"POST /part HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello")
        r = c.read_response()
        assert r.status == 200 and r.header("connection") == "close"
        assert c.closed_by_peer()
    with H2Client("127.0.0.1", lg.listener_port(), timeout=10) as h:
        sid = h.conn.get_next_available_stream_id()
        h.conn.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":authority", "x"), (":path", "/h2")])
        h._flush()
        assert h.wait_response(sid).status == 200
    wait_stats(lg, {"http.ingress_http.downstream_rq_response_before_rq_complete": 2,
                    "http.ingress_http.downstream_rq_2xx": 3}, "responses before their requests ended")


def test_listener_http_stats(proxied):
    """Envoy's per-listener connection manager stats: listener.<address>.http.<stat_prefix>.downstream_rq_<N>xx
    and downstream_rq_completed, beside the connection manager's own."""
    lg, _ = proxied
    with RawHTTP("127.0.0.1", lg.listener_port(), timeout=10) as c:
        for path, status in (("/ok", 200), ("/status/404", 404), ("/status/503", 503), ("/also-ok", 200)):
            c.request("GET", path)
            assert c.read_response().status == status
    with socket.create_connection(("127.0.0.1", lg.listener_port()), timeout=10) as s:
        s.sendall(b"NOT HTTP AT ALL\r\n\r\n")  # the codec's 400
        while s.recv(4096):
            pass
    prefix = lstat(lg, "http.ingress_http.")
    want = {"downstream_rq_2xx": 2, "downstream_rq_4xx": 2, "downstream_rq_5xx": 1, "downstream_rq_completed": 5}
    s = wait_stats(lg, {prefix + k: v for k, v in want.items()}, "listener http stats")
    assert s[prefix + "downstream_rq_1xx"] == s[prefix + "downstream_rq_3xx"] == 0
    for k, v in want.items():
        assert s["http.ingress_http." + k] == v


def runtime(values):
    return {"layers": [{"name": "static", "static_layer": values}]}


GLOBAL_CX = "envoy.resource_monitors.global_downstream_max_connections"
CX_CONFIG = "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"


def overload_manager(max_connections, extra_monitors=()):
    return {"refresh_interval": "0.25s", "resource_monitors": list(extra_monitors) + [{
        "name": GLOBAL_CX, "typed_config": {"@type": CX_CONFIG, "max_active_downstream_connections": max_connections}}]}


@pytest.mark.parametrize("runtime_values,overload,stat", [
    ({"envoy.resource_limits.listener.ingress.connection_limit": 2}, None, "downstream_cx_overflow"),
    ({"overload.global_downstream_max_connections": 2}, None, "downstream_global_cx_overflow"),
    (None, overload_manager(2), "downstream_global_cx_overflow"),
    # Envoy Gateway's and Istio's bootstraps: the monitor wins over the runtime key
    ({"overload.global_downstream_max_connections": 100}, overload_manager(2), "downstream_global_cx_overflow"),
], ids=["listener_runtime", "global_runtime", "overload_manager", "overload_manager_over_runtime"])
def test_connection_limit(legate, ports, upstream, runtime_values, overload, stat):
    """Envoy's connection limits from the runtime and the overload manager's
    global_downstream_max_connections monitor: past the limit a new connection is closed at
    once and counted; once one closes, the next is taken."""
    up = upstream()
    boot = cfg.simple_proxy(ports(), ports(), [up.port])
    if runtime_values:
        boot["layered_runtime"] = runtime(runtime_values)
    if overload:
        boot["overload_manager"] = overload
    lg = legate(boot)
    held = [RawHTTP("127.0.0.1", lg.listener_port(), timeout=10) for _ in range(2)]
    try:
        for c in held:
            c.request("GET", "/held")
            assert c.read_response().status == 200
        assert_refused(lg)
        wait_stats(lg, {lstat(lg, stat): 1}, "the refused connection counted")
    finally:
        held.pop().close()
    wait_stats(lg, {lstat(lg, "downstream_cx_active"): 1}, "one connection left")
    with RawHTTP("127.0.0.1", lg.listener_port(), timeout=10) as c:
        c.request("GET", "/after")
        assert c.read_response().status == 200
    for c in held:
        c.close()
    assert [r["path"] for r in up.requests] == ["/held", "/held", "/after"]
    both = "Using overload manager config" in lg.stderr()
    assert both == bool(overload and runtime_values and "overload.global_downstream_max_connections" in runtime_values)


@pytest.mark.parametrize("value", [0, -5])
def test_overload_manager_connection_limit_must_be_positive(tmp_path, value):
    boot = cfg.simple_proxy(free_port(), free_port(), [free_port()])
    boot["overload_manager"] = overload_manager(value)
    r = run_legate(["--mode", "validate", "-c", str(write_yaml(tmp_path / "b.yaml", boot))])
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "overload_manager.resource_monitors[0].typed_config.max_active_downstream_connections" in out, out


def test_overload_manager_unsupported_parts_are_named_and_ignored(legate, ports, upstream):
    """A bootstrap written for Envoy starts: the monitors and actions Legate does not implement are
    each named in a warning; the connection limit still applies."""
    up = upstream()
    boot = cfg.simple_proxy(ports(), ports(), [up.port])
    cpu = {"name": "envoy.resource_monitors.cpu_utilization", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.resource_monitors.cpu_utilization.v3.CpuUtilizationConfig"}}
    boot["overload_manager"] = overload_manager(1, [cpu])
    boot["overload_manager"]["actions"] = [{"name": "envoy.overload_actions.reduce_timeouts", "triggers": [
        {"name": "envoy.resource_monitors.cpu_utilization", "scaled": {"scaling_threshold": 0.8,
                                                                       "saturation_threshold": 0.95}}]}]
    lg = legate(boot)
    with RawHTTP("127.0.0.1", lg.listener_port(), timeout=10) as c:
        c.request("GET", "/one")
        assert c.read_response().status == 200
        assert_refused(lg)
    log = lg.stderr()
    assert "overload_manager.resource_monitors[0]: envoy.resource_monitors.cpu_utilization is not supported" in log, log
    assert "overload_manager.actions[0]: envoy.overload_actions.reduce_timeouts is not supported" in log, log
    assert [r["path"] for r in up.requests] == ["/one"]


def cpu_ticks(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def tcp_open_on(port):
    """Whether a socket on local port `port` is established or waits for its owner's close."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(table).read().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if int(local.rsplit(":", 1)[1], 16) == port and state in ("01", "08"):  # ESTABLISHED, CLOSE_WAIT
                return True
    return False


def test_out_of_descriptors(legate, ports):
    """An accept that fails for want of descriptors (EMFILE) leaves the connection in the listen
    backlog and its socket readable: the worker, and the admin thread, rest their accept
    sockets and try again every 100 ms (as nginx and HAProxy do) instead of retrying at once,
    which would spin them on a core until a descriptor frees up. Connections already open keep
    being served; once a descriptor frees up, the waiting connections are taken and answered."""
    direct = cfg.route(route_extra={"direct_response": {"status": 200, "body": {"inline_string": "ok"}}})
    boot = cfg.bootstrap(ports(), listeners=[cfg.http_listener("ingress", ports(), cfg.route_config([cfg.vhost("all", [direct])]))])
    lg = legate(boot, args=("--concurrency", "1", "--component-log-level", "conn_handler:debug"))
    pid, port = lg.proc.pid, lg.listener_port()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wait_for(lambda: not tcp_open_on(lg.admin_port), timeout=10 * T, what="the readiness check's admin connection closed")
    held = []
    try:
        fds = sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd"))
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (fds[-1] + 3, hard))
        for _ in range(fds[-1] + 3 - len(fds)):  # the free numbers under the limit: at least 2
            held.append(RawHTTP("127.0.0.1", port, timeout=10))
            held[-1].request("GET", "/held")
            assert held[-1].read_response().status == 200
        waiting = RawHTTP("127.0.0.1", port, timeout=10)
        waiting.request("GET", "/waiting")
        admin = RawHTTP("127.0.0.1", lg.admin_port, timeout=10)
        admin.request("GET", "/ready")

        def attempts():
            return lg.stderr().count(f"accept on 127.0.0.1:{port} failed again: Too many open files")

        wait_for(lambda: f"accept on 127.0.0.1:{port} failed: Too many open files; trying again every 100 ms" in lg.stderr()
                 and attempts() >= 1 and "accept on the admin listener failed: Too many open files" in lg.stderr(),
                 timeout=10 * T, what="the failed accepts logged")
        wall0, cpu0, seen0 = time.monotonic(), cpu_ticks(pid), attempts()
        wait_for(lambda: attempts() >= seen0 + 4, timeout=10 * T, what="four more attempts")
        wall, cpu = time.monotonic() - wall0, (cpu_ticks(pid) - cpu0) / os.sysconf("SC_CLK_TCK")
        assert wall >= 0.25, f"four attempts in {wall:.3f} s: not 100 ms apart"
        assert cpu < wall / 2, f"{cpu:.2f} s of CPU in {wall:.2f} s while out of descriptors"
        held[0].request("GET", "/held-again")
        assert held[0].read_response().status == 200
        held.pop(0).close()
        held.pop(0).close()
        assert waiting.read_response(timeout=10 * T).status == 200
        waiting.close()
        assert admin.read_response(timeout=10 * T).status == 200
        admin.close()
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
        with RawHTTP("127.0.0.1", port, timeout=10) as c:
            c.request("GET", "/after")
            assert c.read_response().status == 200
        assert "accepting connections again after" in lg.stderr()
    finally:
        for c in held:
            c.close()
        if lg.alive():
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
