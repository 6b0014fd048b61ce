"""Memory of idle HTTP/1.1 keep-alive connections (issue 5: no more than
nginx's, ~680-800 bytes per connection in bench workload 7)."""
import resource
import socket

import pytest

from lib import config as cfg
from lib.legate import sanitized
from lib.wait import wait_for

REQUEST = b"GET /idle HTTP/1.1\r\nHost: idle\r\n\r\n"


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def open_idle_h1(port, n):
    """n keep-alive connections, each after one finished request, left open and silent."""
    conns = []
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            conns.append(s)
            s.sendall(REQUEST)
            got = b""
            while b"\r\n\r\nidle\n" not in got:
                d = s.recv(65536)
                assert d, f"connection closed after {got!r}"
                got += d
            assert got.startswith(b"HTTP/1.1 200"), got
            assert b"connection: close" not in got.lower(), got
    except BaseException:
        for s in conns:
            s.close()
        raise
    return conns


@pytest.mark.skipif(sanitized(), reason="ASan's allocator decides the RSS")
@pytest.mark.deadline(120)
def test_idle_h1_connections_are_small(legate, ports):
    """An idle keep-alive connection keeps the socket and one allocation for the
    codec's and the connection manager's connection objects (the listener's
    count, the idle timer and the addresses included), and nothing else (no
    input buffer, no output state, no stream). ~1.2 KB in session 1, ~670 B
    in session 2, ~530 B in session 3, ~450 B now: a 240-byte chunk for the
    connection objects and libh2o's 224-byte socket."""
    n = 1500
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < n + 200:
        pytest.skip(f"fd hard limit {hard} below {n + 200}")
    if soft != resource.RLIM_INFINITY and soft < n + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by legate too
    rc = cfg.route_config([cfg.vhost("local", [cfg.route(route_extra={
        "direct_response": {"status": 200, "body": {"inline_string": "idle\n"}}})])])
    lg = legate(cfg.bootstrap(ports(), listeners=[cfg.http_listener("ingress", ports(), rc)]),
                args=["--concurrency", "1"])
    pid = lg.proc.pid
    warm = open_idle_h1(lg.listener_port(), 50)
    for s in warm:
        s.close()
    wait_for(lambda: lg.admin.stat("http.ingress_http.downstream_cx_active") == 0, timeout=10,
             what="warm-up connections closed")
    base = rss(pid)
    conns = open_idle_h1(lg.listener_port(), n)
    try:
        per_conn = []

        def small():
            per_conn.append((rss(pid) - base) / n)
            return per_conn[-1] < 500

        try:
            wait_for(small, timeout=10, what="idle HTTP/1.1 connections under 500 bytes each")
        except AssertionError:
            raise AssertionError(f"idle HTTP/1.1 connections cost {per_conn[-1]:.0f} bytes each, not under 500")
        r = lg.admin.stat("http.ingress_http.downstream_cx_active")
        assert r == n, r
    finally:
        for s in conns:
            s.close()
