"""SIGTERM drains, as issue 2 specifies: in-flight requests complete, HTTP/1.1
responses carry `connection: close`, HTTP/2 connections get GOAWAY, and the
process exits 0 once --drain-time-s has passed."""
import signal
import time

from lib import config as cfg
from lib.h2client import H2Client
from lib.legate import time_scale
from lib.rawhttp import RawHTTP

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
