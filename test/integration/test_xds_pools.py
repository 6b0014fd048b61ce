"""Connection pools across xDS cluster updates (issue 4).

Envoy keeps a host's connection pools when a CDS update changes its cluster
in ways that do not affect connections (connect_timeout, lb_policy, breaker
thresholds ...), and lets the requests of a host that an update removes
finish before its connections close. Legate runs with one worker here so
that one upstream connection serves every request and the counts are exact.

How a test knows the worker switched to the update: the update also adds a
cluster "probe" that the route of /probe names from the start; once /probe
answers from upstream "b", the worker's view has the new clusters.
"""
import http.client
import threading

from lib import config as cfg
from lib.legate import time_scale
from lib.wait import wait_for
from lib.xds import (CLUSTER, ENDPOINT, ads_bootstrap, cla, eds_cluster, get, static_cluster,  # noqa: F401
                     wait_upstream, world, xds_server)

T = time_scale()
ROUTES = (("/probe", "probe"), ("/", "a"))


def start(xds_server, legate, ports, upstream):
    ups = {name: upstream(name) for name in "ab"}
    xds = xds_server()
    admin_port, port = ports(2)
    xds.update(**world(port, {"a": [ups["a"].port]}, routes=ROUTES))
    lg = legate(ads_bootstrap(admin_port, xds), args=["--concurrency", "1"])
    wait_upstream(port, "a", timeout=5 * T)
    return xds, lg, port, ups


def update_cluster_a(xds, lg, port, ups, **changes):
    """Replaces cluster a with eds_cluster("a", **changes) (plus the probe cluster) and
    waits until the worker uses it."""
    m = xds.mark()
    v = xds.set(CLUSTER, [eds_cluster("a", **changes), static_cluster("probe", [ups["b"].port])])
    xds.wait_ack(CLUSTER, v, since=m, timeout=5 * T)
    wait_upstream(port, "b", path="/probe", timeout=5 * T)


def keepalive_gets(port, n, path="/"):
    """n GETs over one downstream connection -> [(status, x-upstream)]."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5 * T)
    out = []
    try:
        for _ in range(n):
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            out.append((r.status, r.getheader("x-upstream")))
    finally:
        c.close()
    return out


def wait_received(ups, path):
    """Waits until an upstream has received `path` (a unique query keeps requests apart) and
    returns its name. Its record is made before the reply; the in-flight count is not
    evidence: the upstream drops it only after sending a reply, so a reply the client has
    already read can still count as in flight on a loaded machine."""
    got = wait_for(lambda: [n for n, u in ups.items() if path in u.paths()], timeout=5 * T,
                   what=f"an upstream to receive {path}")
    assert len(got) == 1, f"{path} reached {got}"
    return got[0]


def cx_total(lg, cluster="a"):
    return lg.admin.stats().get(f"cluster.{cluster}.upstream_cx_total", 0)


def test_cds_update_keeps_the_upstream_connection(xds_server, legate, ports, upstream):
    xds, lg, port, ups = start(xds_server, legate, ports, upstream)
    assert keepalive_gets(port, 3) == [(200, "a")] * 3
    assert cx_total(lg) == 1 and ups["a"].connections_total == 1
    update_cluster_a(xds, lg, port, ups, connect_timeout="3s", lb_policy="LEAST_REQUEST",
                     circuit_breakers={"thresholds": [{"max_connections": 10}]})
    assert keepalive_gets(port, 3) == [(200, "a")] * 3
    assert get(port, "/")[0] == 200, "a new downstream connection too"
    assert ups["a"].connections_total == 1, "the upstream accepted no new connection after the CDS update"
    stats = lg.admin.stats()
    assert stats["cluster.a.upstream_cx_total"] == 1 and stats["cluster.a.upstream_cx_active"] == 1
    assert stats["cluster.a.upstream_cx_destroy"] == 0


def test_cds_update_changing_connections_replaces_the_pool(xds_server, legate, ports, upstream):
    """The contrast: a change to the protocol options gives new connections; the old idle one closes."""
    xds, lg, port, ups = start(xds_server, legate, ports, upstream)
    assert keepalive_gets(port, 2) == [(200, "a")] * 2
    assert ups["a"].connections_total == 1
    opts = {cfg.HTTP_PROTOCOL_OPTIONS_KEY: {"@type": cfg.HTTP_PROTOCOL_OPTIONS_TYPE,
                                            "common_http_protocol_options": {"max_headers_count": 50},
                                            "explicit_http_config": {"http_protocol_options": {}}}}
    update_cluster_a(xds, lg, port, ups, typed_extension_protocol_options=opts)
    assert keepalive_gets(port, 2) == [(200, "a")] * 2
    assert ups["a"].connections_total == 2, "a new connection for the new protocol options"
    wait_for(lambda: ups["a"].open_connections == 1, timeout=5 * T, what="the old idle connection to close")
    assert lg.admin.stats()["cluster.a.upstream_cx_destroy_local"] == 1


def test_inflight_request_survives_cds_update_on_its_connection(xds_server, legate, ports, upstream):
    xds, lg, port, ups = start(xds_server, legate, ports, upstream)
    result = {}
    slow = f"/delay/{int(1500 * T)}?inflight"
    t = threading.Thread(target=lambda: result.update(r=get(port, slow, timeout=10 * T)))
    t.start()
    assert wait_received(ups, slow) == "a"
    update_cluster_a(xds, lg, port, ups, connect_timeout="4s")
    t.join(10 * T)
    status, headers, _ = result["r"]
    assert status == 200 and headers["x-upstream"] == "a", "the in-flight request finished"
    conns = ups["a"].connections_total
    assert keepalive_gets(port, 2) == [(200, "a")] * 2
    assert ups["a"].connections_total == conns, "its connection went back to the kept pool and serves again"
    wait_for(lambda: lg.admin.stats()["cluster.a.upstream_rq_active"] == 0, timeout=5 * T, what="upstream_rq_active 0")


def test_eds_update_removing_host_drains_it_after_its_request(xds_server, legate, ports, upstream):
    xds, lg, port, ups = start(xds_server, legate, ports, upstream)
    m = xds.mark()
    v = xds.set(ENDPOINT, [cla("a", [ups["a"].port, ups["b"].port])])
    xds.wait_ack(ENDPOINT, v, since=m, timeout=5 * T)
    wait_for(lambda: {get(port, "/")[1].get("x-upstream") for _ in range(4)} == {"a", "b"}, timeout=5 * T,
             what="both hosts to serve")
    a_conns, b_conns = ups["a"].connections_total, ups["b"].connections_total
    result = {}
    slow = f"/delay/{int(1500 * T)}?removed"
    t = threading.Thread(target=lambda: result.update(r=get(port, slow, timeout=10 * T)))
    t.start()
    removed = wait_received(ups, slow)
    kept = "b" if removed == "a" else "a"
    m = xds.mark()
    v = xds.set(ENDPOINT, [cla("a", [ups[kept].port])])
    xds.wait_ack(ENDPOINT, v, since=m, timeout=5 * T)
    wait_for(lambda: all(get(port, "/")[1].get("x-upstream") == kept for _ in range(4)), timeout=5 * T,
             what="only the kept host to serve")
    assert ups[kept].connections_total == {"a": a_conns, "b": b_conns}[kept], "the kept host's connection carried over"
    t.join(10 * T)
    status, headers, _ = result["r"]
    assert status == 200 and headers["x-upstream"] == removed, "the removed host finished its in-flight request"
    wait_for(lambda: ups[removed].open_connections == 0, timeout=5 * T,
             what="the removed host's connection to close after its request")
