"""A control plane that dies, disappears, misbehaves or floods: Legate keeps
serving its last good config, NACKs what it cannot use with a precise error,
reconnects with backoff, converges again, and never crashes (these tests
also run on the sanitizer build, where a leak fails them)."""
import base64
import time

import pytest

from lib import config as cfg
from lib.admin import parse_prometheus
from lib.legate import time_scale
from lib.wait import wait_for
from lib.xds import (CLUSTER, ENDPOINT, LISTENER, ROUTE, Traffic, ads_bootstrap,  # noqa: F401
                     cla, dynamic_clusters, eds_cluster, rds_listener, route_config, upstream_of, wait_stat,
                     wait_status, wait_upstream, world, xds_server)

T = time_scale()


def start(xds_server, legate, ports, upstream, api_type="GRPC", **boot):
    ups = {n: upstream(n) for n in "ab"}
    xds = xds_server()
    admin_port, port = ports(2)
    v = xds.update(**world(port, {n: [u.port] for n, u in ups.items()}))
    lg = legate(ads_bootstrap(admin_port, xds, api_type=api_type, **boot))
    for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE):
        xds.wait_ack(t, v[t], timeout=5 * T)
    return xds, lg, port, ups, v


def wait_served(traffic, n, timeout=10.0):
    """Waits until the traffic loop has completed n more successful requests."""
    target = traffic.ok + n
    wait_for(lambda: traffic.ok >= target, timeout=timeout * T, what=f"{n} more requests served")


# ---- control plane killed, restarted, unreachable ------------------------------------------------

# After an outage of several seconds the next retry may be up to Envoy's backoff maximum away
# (jittered exponential, base 0.5 s, max 30 s: src/xds/grpc.c), so a reconnection is waited for
# that long plus a margin.
RECONNECT_S = 30 + 10


@pytest.mark.deadline(90)
@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"])
def test_control_plane_restart_under_traffic_zero_failures(xds_server, legate, ports, upstream, api_type):
    xds, lg, port, ups, v = start(xds_server, legate, ports, upstream, api_type)
    assert wait_stat(lg, "control_plane.connected_state", lambda x: x == 1) == 1
    traffic = Traffic(port).start()
    try:
        wait_served(traffic, 20)
        xds.stop()
        wait_stat(lg, "control_plane.connected_state", lambda x: x == 0, timeout=5 * T)
        wait_served(traffic, 100)  # serving the last good config without a control plane
        m = xds.mark()
        xds.start()
        wait_stat(lg, "control_plane.connected_state", lambda x: x == 1, timeout=RECONNECT_S * T)
        for t in (CLUSTER, LISTENER):
            rec = xds.wait_request(lambda r, t=t: r["type_url"] == t and r["kind"] == "initial", since=m,
                                   timeout=5 * T, what=f"resubscription of {t}")
            if api_type == "GRPC":
                assert rec["version_info"] == v[t], "a SotW resubscription carries the last accepted version"
        m = xds.mark()
        v2 = xds.set(ROUTE, [route_config("r1", [("/", "b")])])
        xds.wait_ack(ROUTE, v2, since=m, timeout=10 * T)
        wait_upstream(port, "b", timeout=5 * T)
        wait_served(traffic, 20)
    finally:
        ok, failures = traffic.stop()
    assert failures == [], f"{len(failures)} failed requests of {ok + len(failures)}: {failures[:5]}"
    assert ok > 140


@pytest.mark.deadline(90)
def test_fresh_control_plane_on_same_port_converges(xds_server, legate, ports, upstream):
    """A control plane restarted without its state (versions start over) still converges Legate."""
    xds, lg, port, ups, v = start(xds_server, legate, ports, upstream)
    traffic = Traffic(port, keepalive=True).start()
    try:
        wait_served(traffic, 20)
        xds.close()
        wait_stat(lg, "control_plane.connected_state", lambda x: x == 0, timeout=5 * T)
        fresh = xds_server(port=xds.port)
        # Same listener, both clusters, routes to b: nothing that is in use disappears.
        v2 = fresh.update(**world(port, {"b": [ups["b"].port], "a": [ups["a"].port]}))
        wait_stat(lg, "control_plane.connected_state", lambda x: x == 1, timeout=RECONNECT_S * T)
        for t in (CLUSTER, LISTENER, ROUTE):
            fresh.wait_ack(t, v2[t], timeout=10 * T)
        wait_upstream(port, "b", timeout=5 * T)
        wait_served(traffic, 20)
    finally:
        ok, failures = traffic.stop()
    # The listener was updated in place (same name, same address): no request may fail.
    assert failures == [], f"{len(failures)} failed requests of {ok + len(failures)}: {failures[:5]}"


def test_unreachable_control_plane_at_start(xds_server, legate, ports, upstream):
    ups = upstream("a")
    xds = xds_server(start=False, port=ports())
    admin_port, port = ports(2)
    boot = ads_bootstrap(admin_port, xds, lds_extra={"initial_fetch_timeout": "1s"},
                         cds_extra={"initial_fetch_timeout": "1s"})
    lg = legate(boot, wait_ready=False)
    lg.wait_ready(timeout=10)  # initial_fetch_timeout ends the wait for the unreachable server
    # server.initialization_time_ms: one sample, at least the 1 s the init manager waited
    _, samples = parse_prometheus(lg.admin.get("/stats/prometheus").text)
    init = {name: float(v) for name, _, v in samples if name.startswith("envoy_server_initialization_time_ms_")}
    assert init["envoy_server_initialization_time_ms_count"] == 1
    assert init["envoy_server_initialization_time_ms_sum"] >= 1000
    assert lg.admin.stats().get("control_plane.connected_state", 0) == 0
    assert lg.admin.stats().get("listener_manager.total_listeners_active", 0) == 0
    v = xds.update(**world(port, {"a": [ups.port]}))
    xds.start()
    xds.wait_ack(ROUTE, v[ROUTE], timeout=RECONNECT_S * T)
    wait_upstream(port, "a", timeout=5 * T)
    assert wait_stat(lg, "control_plane.connected_state", lambda x: x == 1) == 1


def test_stream_closed_by_server_reconnects(xds_server, legate, ports, upstream):
    xds, lg, port, ups, v = start(xds_server, legate, ports, upstream)
    first = xds.open_streams()[0]["id"]
    m = xds.mark()
    xds.close_streams("UNAVAILABLE")
    xds.wait_request(lambda r: r["stream"] != first and r["kind"] == "initial" and r["type_url"] == CLUSTER,
                     since=m, timeout=15 * T, what="a new ADS stream")
    assert upstream_of(port) == "a"
    m = xds.mark()
    v2 = xds.set(ROUTE, [route_config("r1", [("/", "b")])])
    xds.wait_ack(ROUTE, v2, since=m, timeout=5 * T)
    wait_upstream(port, "b", timeout=5 * T)


@pytest.mark.deadline(90)
def test_reconnect_backoff(xds_server, legate, ports, upstream):
    """Envoy retries a failed stream with jittered exponential backoff (base 500 ms)."""
    xds, lg, port, ups, v = start(xds_server, legate, ports, upstream)
    xds.reject_streams("UNAVAILABLE")
    n0 = len(xds.stream_log)
    xds.close_streams("UNAVAILABLE")
    xds.wait(lambda: len(xds.stream_log) > n0, timeout=10 * T, what="a reconnect attempt")
    t0 = time.monotonic()
    wait_served_for(port, 3.0)
    attempts = [s for s in xds.stream_log[n0:] if s["opened"] <= t0 + 3.0]
    assert 1 <= len(attempts) <= 12, f"{len(attempts)} attempts in 3 s: no backoff"
    xds.reject_streams(None)
    # Envoy's backoff is capped at 30 s; after 3 s of failures the next try comes within ~8 s.
    wait_stat(lg, "control_plane.connected_state", lambda x: x == 1, timeout=30)


def wait_served_for(port, seconds):
    """Sends requests for that long (the proxy must keep serving); each must succeed."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert upstream_of(port) == "a"
        time.sleep(0.05)


# ---- bad input -----------------------------------------------------------------------------------------

GARBAGE = base64.b64encode(b"\xff\xff\xff\xff\x0f garbage").decode()


def test_garbage_resource_bytes_nacked(xds_server, legate, ports, upstream):
    xds, lg, port, ups, v = start(xds_server, legate, ports, upstream)
    m = xds.mark()
    xds.inject(CLUSTER, [{"@type": CLUSTER, "@bytes": GARBAGE}], names=["garbage"])
    nack = xds.wait_nack(CLUSTER, since=m, timeout=5 * T)
    assert nack["version_info"] == v[CLUSTER] and nack["error_detail"]["message"]
    assert upstream_of(port) == "a"
    m = xds.mark()
    xds.inject(ROUTE, [{"@type": ROUTE, "@bytes": GARBAGE}], names=["r1"])
    nack = xds.wait_nack(ROUTE, since=m, timeout=5 * T)
    assert nack["version_info"] == v[ROUTE]
    assert upstream_of(port) == "a"
    m = xds.mark()
    v2 = xds.push(CLUSTER)
    xds.wait_ack(CLUSTER, v2, since=m, timeout=5 * T)


def test_wrong_type_url_nacked(xds_server, legate, ports, upstream):
    xds, lg, port, ups, v = start(xds_server, legate, ports, upstream)
    listener = rds_listener("ingress", port, "r1")
    listener["@type"] = LISTENER
    m = xds.mark()
    xds.inject(CLUSTER, [listener], names=["ingress"])  # a CDS response holding a Listener
    nack = xds.wait_nack(CLUSTER, since=m, timeout=5 * T)
    msg = nack["error_detail"]["message"]
    assert "Listener" in msg or "type" in msg.lower(), msg
    assert upstream_of(port) == "a"
    assert "a" in dynamic_clusters(lg) and "ingress" not in dynamic_clusters(lg)
    # A response for a type nobody subscribed to is ignored (Envoy neither ACKs nor NACKs it).
    m = xds.mark()
    xds.inject(LISTENER, [], response_type_url="type.googleapis.com/envoy.config.foo.v3.Nope", version="x1")
    v2 = xds.set(ROUTE, [route_config("r1", [("/", "b")])])
    xds.wait_ack(ROUTE, v2, since=m, timeout=5 * T)
    wait_upstream(port, "b", timeout=5 * T)


def test_non_protobuf_message_on_stream(xds_server, legate, ports, upstream):
    xds, lg, port, ups, v = start(xds_server, legate, ports, upstream)
    first = xds.open_streams()[0]["id"]
    m = xds.mark()
    xds.send_raw(b"\xff\xfe\xfd not a DiscoveryResponse")
    xds.wait_request(lambda r: r["stream"] != first and r["kind"] == "initial", since=m, timeout=15 * T,
                     what="a new stream after the undecodable message")
    assert upstream_of(port) == "a"
    m = xds.mark()
    v2 = xds.set(ROUTE, [route_config("r1", [("/", "b")])])
    xds.wait_ack(ROUTE, v2, since=m, timeout=10 * T)
    wait_upstream(port, "b", timeout=5 * T)


@pytest.mark.parametrize("what", ["unknown_cluster_type", "bad_address", "listener_without_address",
                                  "overlapping_filter_chains"])
def test_invalid_resources_nacked_with_name(xds_server, legate, ports, upstream, what):
    xds, lg, port, ups, v = start(xds_server, legate, ports, upstream)
    detail = None
    if what == "unknown_cluster_type":
        t, res, name = CLUSTER, dict(eds_cluster("weird"), type=77), "weird"
    elif what == "bad_address":
        t, res, name = CLUSTER, cfg.cluster("badaddr", [cfg.endpoint(80, address="300.1.1.1")]), "badaddr"
    elif what == "listener_without_address":
        t, name = LISTENER, "noaddr"
        res = rds_listener("noaddr", 1, "r1")
        del res["address"]
    else:  # Envoy: two chains both matching SNI "b.test" (the rest of their match is equal)
        t, name, detail = LISTENER, "overlap", "multiple filter chains with overlapping matching rules are defined"
        res = rds_listener(name, ports(1)[0], "r1")
        chain = res["filter_chains"][0]
        res["filter_chains"] = [dict(chain, name="ab", filter_chain_match={"server_names": ["a.test", "b.test"]}),
                                dict(chain, name="bc", filter_chain_match={"server_names": ["b.test", "c.test"]})]
    m = xds.mark()
    xds.upsert(t, [res])
    nack = xds.wait_nack(t, since=m, timeout=5 * T)
    assert name in nack["error_detail"]["message"], nack
    assert detail is None or detail in nack["error_detail"]["message"], nack
    assert nack["version_info"] == v[t]
    assert upstream_of(port) == "a"
    m = xds.mark()
    v2 = xds.remove(t, [name])
    xds.wait_ack(t, v2, since=m, timeout=5 * T)


def test_route_to_cluster_never_sent(xds_server, legate, ports, upstream):
    """RDS does not check clusters (validate_clusters defaults to false for RDS): ACK, then 503."""
    xds, lg, port, ups, v = start(xds_server, legate, ports, upstream)
    m = xds.mark()
    v2 = xds.set(ROUTE, [route_config("r1", [("/ghost", "ghost"), ("/", "a")])])
    xds.wait_ack(ROUTE, v2, since=m, timeout=5 * T)
    wait_status(port, 503, path="/ghost", timeout=5 * T)
    assert upstream_of(port) == "a"


@pytest.mark.deadline(90)
def test_flood_of_updates_converges_to_last(xds_server, legate, ports, upstream):
    xds, lg, port, ups, v = start(xds_server, legate, ports, upstream)
    traffic = Traffic(port, path="/").start()
    try:
        last = None
        for i in range(200):
            target = "ab"[i % 2]
            last = xds.set(ROUTE, [route_config("r1", [("/", target), ("/n%d" % i, "a")])])
            a_hosts = [ups["a"].port] if i % 2 else [ups["a"].port, ups["b"].port]
            xds.set(ENDPOINT, [cla("a", a_hosts), cla("b", [ups["b"].port])])
        xds.wait_ack(ROUTE, last, timeout=20 * T)
        wait_upstream(port, "b", timeout=5 * T)
    finally:
        ok, failures = traffic.stop()
    assert failures == [], failures[:5]
    assert lg.alive()
    assert lg.admin.stats()["http.ingress.rds.r1.update_success"] >= 2
