"""The overload manager's fixed_heap and injected_resource monitors and the actions they trigger, as Envoy's
(docs: configuration/operations/overload_manager): stop_accepting_requests answers new
requests 503 "envoy overloaded", disable_http_keepalive closes connections after their
response, reject_incoming_connections closes new connections on accept, shrink_heap is
accepted; overload.<monitor>.pressure and overload.<action>.active / scale_percent report
them. The heap limits here are 1 byte (always over) or 1 TiB (never); injected_resource (a
pressure read from a file, Envoy's test monitor) drives the changes both ways."""
import copy
import os
import socket

import pytest

from lib import config as cfg
from lib.h2client import H2Client
from lib.legate import run_legate, write_yaml
from lib.ports import free_port
from lib.rawhttp import RawHTTP, assert_refused
from lib.wait import wait_for

HEAP = "envoy.resource_monitors.fixed_heap"
HEAP_CONFIG = "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig"
INJECTED = "envoy.resource_monitors.injected_resource"
INJECTED_CONFIG = "type.googleapis.com/envoy.extensions.resource_monitors.injected_resource.v3.InjectedResourceConfig"
STOP_REQUESTS = "envoy.overload_actions.stop_accepting_requests"
KEEPALIVE = "envoy.overload_actions.disable_http_keepalive"
REJECT = "envoy.overload_actions.reject_incoming_connections"
STOP_CONNECTIONS = "envoy.overload_actions.stop_accepting_connections"
SHRINK = "envoy.overload_actions.shrink_heap"
OVER, UNDER = 1, 1 << 40


def threshold(value):
    return {"name": HEAP, "threshold": {"value": value}}


def overload(max_heap, actions):
    return {"refresh_interval": "0.05s",
            "resource_monitors": [{"name": HEAP, "typed_config": {"@type": HEAP_CONFIG, "max_heap_size_bytes": max_heap}}],
            "actions": [{"name": name, "triggers": [trigger]} for name, trigger in actions]}


def start(legate, ports, upstream, overload_manager, edit=None):
    """Legate proxying to a new upstream with `overload_manager`; edit(boot) changes the rest first."""
    up = upstream()
    boot = cfg.simple_proxy(ports(), ports(), [up.port])
    boot["overload_manager"] = overload_manager
    if edit is not None:
        edit(boot)
    return legate(boot), up


def get(lg, path="/x"):
    with RawHTTP("127.0.0.1", lg.listener_port(), timeout=10) as c:
        c.request("GET", path)
        return c.read_response()


def test_stop_accepting_requests_over_the_heap_limit(legate, ports, upstream):
    """Over the limit a new request is answered 503 "envoy overloaded" before any filter or
    the router runs (with x-envoy-local-overloaded when the HTTP connection manager asks for
    it); the stats say which action is active and why."""
    def append_local_overload(boot):
        boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
            "append_local_overload"] = True
    lg, up = start(legate, ports, upstream, overload(OVER, [(STOP_REQUESTS, threshold(0.95)), (SHRINK, threshold(0.99))]),
                   append_local_overload)
    r = wait_for(lambda: (lambda r: r if r.status == 503 else None)(get(lg)), what="503 from the overloaded proxy")
    assert r.body == b"envoy overloaded"
    assert r.header("x-envoy-local-overloaded") == "true"
    for _ in range(3):
        assert get(lg).status == 503
    assert up.requests == []
    a = lg.admin
    assert a.stat("http.ingress_http.downstream_rq_overload_close") >= 4
    assert a.stat("http.ingress_http.downstream_rq_5xx") >= 4
    assert a.stat(f"overload.{STOP_REQUESTS}.active") == 1
    assert a.stat(f"overload.{STOP_REQUESTS}.scale_percent") == 100
    assert a.stat(f"overload.{SHRINK}.active") == 1
    assert a.stat(f"overload.{SHRINK}.shrink_count") >= 1
    assert a.stat(f"overload.{HEAP}.pressure") > 100


@pytest.mark.parametrize("trigger", [threshold(0.95), {"name": HEAP, "scaled": {"scaling_threshold": 0.9,
                                                                                "saturation_threshold": 0.95}}],
                         ids=["threshold", "scaled"])
def test_under_the_heap_limit_requests_pass(legate, ports, upstream, trigger):
    lg, up = start(legate, ports, upstream, overload(UNDER, [(STOP_REQUESTS, trigger)]))
    a = lg.admin
    wait_for(lambda: f"overload.{STOP_REQUESTS}.scale_percent" in a.stats("usedonly"), what="the first refresh")
    for i in range(5):
        assert get(lg, f"/ok{i}").status == 200
    assert len(up.requests) == 5
    assert a.stat("http.ingress_http.downstream_rq_overload_close") == 0
    assert a.stat(f"overload.{STOP_REQUESTS}.active") == 0
    assert a.stat(f"overload.{STOP_REQUESTS}.scale_percent") == 0
    assert a.stat(f"overload.{HEAP}.pressure") == 0


def test_scaled_trigger_saturated(legate, ports, upstream):
    lg, up = start(legate, ports, upstream, overload(OVER, [
        (STOP_REQUESTS, {"name": HEAP, "scaled": {"scaling_threshold": 0.5, "saturation_threshold": 0.8}})]))
    wait_for(lambda: get(lg).status == 503, what="503 from the overloaded proxy")
    assert lg.admin.stat(f"overload.{STOP_REQUESTS}.scale_percent") == 100


def test_disable_http_keepalive(legate, ports, upstream):
    """HTTP/1.1: the response says connection: close and the connection ends; HTTP/2: GOAWAY."""
    lg, up = start(legate, ports, upstream, overload(OVER, [(KEEPALIVE, threshold(0.5))]))
    a = lg.admin
    wait_for(lambda: a.stat(f"overload.{KEEPALIVE}.active") == 1, what="the action")

    def closes():
        with RawHTTP("127.0.0.1", lg.listener_port(), timeout=10) as c:
            c.request("GET", "/k")
            r = c.read_response()
            return r.status == 200 and r.header("connection") == "close" and c.sock.recv(1) == b""
    wait_for(closes, what="connection: close")
    with H2Client("127.0.0.1", lg.listener_port(), timeout=10) as h2:
        assert h2.get("/h2").status == 200
        assert h2.wait_goaway() is not None
    assert a.stat("http.ingress_http.downstream_cx_overload_disable_keepalive") >= 2
    assert a.stat("http.ingress_http.downstream_cx_drain_close") == 0  # as Envoy: not a drain
    assert len(up.requests) >= 2


def test_reject_incoming_connections(legate, ports, upstream):
    lg, up = start(legate, ports, upstream, overload(OVER, [(REJECT, threshold(0.5))]))
    a = lg.admin
    wait_for(lambda: a.stat(f"overload.{REJECT}.active") == 1, what="the action")
    wait_for(lambda: assert_refused(lg) is None and a.stat(
        f"listener.127.0.0.1_{lg.listener_port()}.downstream_cx_overload_reject") >= 1, what="a rejected connection")
    assert up.requests == []


def test_bypass_overload_manager(legate, ports, upstream):
    """A listener with bypass_overload_manager (Envoy Gateway's readiness listener) keeps
    accepting and serving while the other one turns requests and connections away."""
    port = ports()

    def add_bypass_listener(boot):
        listeners = boot["static_resources"]["listeners"]
        free = copy.deepcopy(listeners[0])
        free["name"] = "bypass"
        free["address"]["socket_address"]["port_value"] = port
        free["bypass_overload_manager"] = True
        listeners.append(free)
    lg, up = start(legate, ports, upstream, overload(OVER, [(STOP_REQUESTS, threshold(0.9)), (STOP_CONNECTIONS, threshold(0.9)),
                                                             (KEEPALIVE, threshold(0.9))]), add_bypass_listener)
    a = lg.admin
    wait_for(lambda: a.stat(f"overload.{STOP_CONNECTIONS}.active") == 1, what="the action")
    with RawHTTP("127.0.0.1", port, timeout=10) as c:
        for i in range(3):
            c.request("GET", f"/free{i}")
            r = c.read_response()
            assert r.status == 200 and r.header("connection") != "close"
    assert [r["path"] for r in up.requests][-3:] == ["/free0", "/free1", "/free2"]
    assert a.stat("http.ingress_http.downstream_rq_overload_close") == 0


def unanswered(lg, wait=0.5):
    """A connection with a request sent that gets no answer within `wait` (returned, open), or None."""
    c = RawHTTP("127.0.0.1", lg.listener_port(), timeout=10)
    c.request("GET", "/probe")
    c.sock.settimeout(wait)
    try:
        c.sock.recv(1, socket.MSG_PEEK)
    except socket.timeout:
        c.sock.settimeout(10)
        return c
    c.close()
    return None


def test_stop_accepting_connections(legate, ports, upstream):
    """The listener stops accepting: a new connection waits in the backlog unanswered and is
    never counted, while the admin listener still serves."""
    lg, up = start(legate, ports, upstream, overload(OVER, [(STOP_CONNECTIONS, threshold(0.9))]))
    a = lg.admin
    wait_for(lambda: a.stat(f"overload.{STOP_CONNECTIONS}.active") == 1, what="the action")
    first = wait_for(lambda: unanswered(lg), what="a connection left unanswered")
    before = a.stat(f"listener.127.0.0.1_{lg.listener_port()}.downstream_cx_total")
    second = unanswered(lg)
    assert second is not None, "the second connection was answered"
    assert a.stat(f"listener.127.0.0.1_{lg.listener_port()}.downstream_cx_total") == before
    assert a.get("/ready").status == 200
    first.close()
    second.close()
    assert all(r["path"] == "/probe" for r in up.requests) and len(up.requests) == before


class PressureFile:
    """The injected_resource file, replaced whole (a rename) so that a refresh never reads it half written."""

    def __init__(self, path, value):
        self.path = path
        self.write_text(value)

    def write_text(self, value):
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(value)
        os.replace(tmp, self.path)

    def __str__(self):
        return str(self.path)


def injected(legate, ports, upstream, tmp_path, actions, pressure="0"):
    f = PressureFile(tmp_path / "pressure", pressure)
    lg, up = start(legate, ports, upstream, {"refresh_interval": "0.05s", "resource_monitors": [
        {"name": INJECTED, "typed_config": {"@type": INJECTED_CONFIG, "filename": str(f)}}],
        "actions": [{"name": name, "triggers": [dict(trigger, name=INJECTED)]} for name, trigger in actions]})
    return lg, up, f


def test_injected_pressure_turns_requests_away_and_back(legate, ports, upstream, tmp_path):
    lg, up, f = injected(legate, ports, upstream, tmp_path, [(STOP_REQUESTS, {"threshold": {"value": 0.9}})])
    a = lg.admin
    wait_for(lambda: f"overload.{INJECTED}.pressure" in a.stats("usedonly"), what="the first refresh")
    assert get(lg, "/before").status == 200
    f.write_text("0.95")
    wait_for(lambda: get(lg).status == 503, what="503 once the pressure is over the threshold")
    assert a.stat(f"overload.{INJECTED}.pressure") == 95
    assert a.stat(f"overload.{STOP_REQUESTS}.active") == 1
    f.write_text("0.5\n")
    wait_for(lambda: get(lg, "/after").status == 200, what="200 once the pressure went down")
    assert a.stat(f"overload.{STOP_REQUESTS}.active") == 0
    assert a.stat(f"overload.{INJECTED}.failed_updates") == 0
    f.write_text("not a number")
    wait_for(lambda: a.stat(f"overload.{INJECTED}.failed_updates") >= 1, what="a failed update")
    f.write_text("2")  # outside [0, 1]: Envoy's "pressure out of range"
    wait_for(lambda: a.stat(f"overload.{INJECTED}.failed_updates") >= 2, what="a second failed update")
    assert a.stat(f"overload.{INJECTED}.pressure") == 50
    assert get(lg, "/still").status == 200
    assert "/before" in [r["path"] for r in up.requests] and "/after" in [r["path"] for r in up.requests]


def test_scaled_trigger_sheds_a_share_of_requests(legate, ports, upstream, tmp_path):
    """Half way between scaling_threshold and saturation_threshold, about half the requests
    are turned away (each with probability 0.5: all 200 alike is a 2^-199 chance)."""
    lg, up, f = injected(legate, ports, upstream, tmp_path,
                         [(STOP_REQUESTS, {"scaled": {"scaling_threshold": 0.5, "saturation_threshold": 1.0}})], "0.75")
    a = lg.admin
    wait_for(lambda: a.stat(f"overload.{STOP_REQUESTS}.scale_percent") == 50, what="the scaled value")
    wait_for(lambda: get(lg).status == 503, what="a shed request")
    with RawHTTP("127.0.0.1", lg.listener_port(), timeout=10) as c:
        codes = []
        for i in range(200):
            c.request("GET", f"/s{i}")
            codes.append(c.read_response().status)
    assert set(codes) == {200, 503}, codes
    assert a.stat(f"overload.{STOP_REQUESTS}.active") == 0


def test_stopped_listener_takes_the_waiting_connection_when_pressure_drops(legate, ports, upstream, tmp_path):
    lg, up, f = injected(legate, ports, upstream, tmp_path, [(STOP_CONNECTIONS, {"threshold": {"value": 0.8}})], "0.9")
    a = lg.admin
    wait_for(lambda: a.stat(f"overload.{STOP_CONNECTIONS}.active") == 1, what="the action")
    c = wait_for(lambda: unanswered(lg), what="a connection left unanswered")
    try:
        f.write_text("0.1")
        assert c.read_response().status == 200
    finally:
        c.close()
    assert up.requests[-1]["path"] == "/probe"


@pytest.mark.parametrize("overload_manager,field", [
    (overload(0, []), "overload_manager.resource_monitors[0].typed_config.max_heap_size_bytes"),
    ({"resource_monitors": [{"name": "heap", "typed_config": {"@type": HEAP_CONFIG, "max_heap_size_bytes": 5}}]},
     "a FixedHeapConfig monitor must be named envoy.resource_monitors.fixed_heap, not heap"),
    (overload(UNDER, [(STOP_REQUESTS, {"name": "envoy.resource_monitors.nope", "threshold": {"value": 0.9}})]),
     "overload_manager.actions[0].triggers[0].name: Unknown trigger resource envoy.resource_monitors.nope"),
    (overload(UNDER, [(STOP_REQUESTS, threshold(1.5))]), "overload_manager.actions[0].triggers[0].threshold.value"),
    (overload(UNDER, [(STOP_REQUESTS, {"name": HEAP, "scaled": {"scaling_threshold": 0.9, "saturation_threshold": 0.8}})]),
     "scaling_threshold must be less than saturation_threshold"),
    (overload(UNDER, [(STOP_REQUESTS, threshold(0.9)), (STOP_REQUESTS, threshold(0.8))]),
     "overload_manager.actions[1]: Duplicate overload action " + STOP_REQUESTS),
    ({"resource_monitors": [{"name": INJECTED, "typed_config": {"@type": INJECTED_CONFIG, "filename": ""}}]},
     "overload_manager.resource_monitors[0].typed_config.filename"),
    ({"resource_monitors": [{"name": HEAP, "typed_config": {"@type": HEAP_CONFIG, "max_heap_size_bytes": 5}},
                            {"name": HEAP, "typed_config": {"@type": HEAP_CONFIG, "max_heap_size_bytes": 6}}]},
     "overload_manager.resource_monitors[1]: Duplicate resource monitor " + HEAP),
    ({"resource_monitors": [{"name": HEAP}]}, "overload_manager.resource_monitors[0].typed_config"),
], ids=["zero_heap", "misnamed", "unknown_trigger", "threshold_range", "scaled_order", "duplicate_action", "empty_filename",
        "duplicate_monitor", "no_typed_config"])
def test_bad_overload_config(tmp_path, overload_manager, field):
    boot = cfg.simple_proxy(free_port(), free_port(), [free_port()])
    boot["overload_manager"] = overload_manager
    r = run_legate(["--mode", "validate", "-c", str(write_yaml(tmp_path / "b.yaml", boot))])
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert field in out, out
