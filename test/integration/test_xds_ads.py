"""Legate driven over SotW ADS by the repo's control plane (tools/xds_control):
listeners, routes, clusters, endpoints and secrets arrive over one gRPC stream,
each update is checked with a real HTTP client, each ACK/NACK on the server.

Envoy's xds_protocol document is the specification: ACK = version_info of the
response + its nonce; NACK = the previous good version + the nonce +
error_detail; LDS/CDS are wildcard and SotW-complete (a missing listener or
cluster is removed); RDS/EDS/SDS subscribe by name.
"""
import os
import re
import tempfile
import threading

import pytest

from lib import config as cfg
from lib.legate import time_scale
from lib.xds import (CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, ads_bootstrap, ads_source,  # noqa: F401
                     cla, config_dump, dynamic_clusters, dynamic_listeners, eds_cluster, get, make_cert,
                     peer_cert_der, rds_listener, refused, route_config, stat_text, upstream_of, wait_stat,
                     wait_status, wait_upstream, world, xds_server)

T = time_scale()


def start(xds_server, legate, ports, upstream, grpc="envoy", n_upstreams=2, unix=False, **boot):
    """A control plane serving world() for upstreams a, b..., and a Legate on it (ready)."""
    ups = {name: upstream(name) for name in "abc"[:n_upstreams]}
    kw = {}
    if unix:  # sun_path holds 108 bytes: not under pytest's long tmp_path; close() unlinks it
        kw["unix_path"] = os.path.join(tempfile.gettempdir(), f"lg-xds-{os.getpid()}-{ports()}.sock")
    xds = xds_server(**kw)
    admin_port, listen_port = ports(2)
    versions = xds.update(**world(listen_port, {n: [u.port] for n, u in ups.items()}))
    lg = legate(ads_bootstrap(admin_port, xds, grpc=grpc, **boot))
    return xds, lg, listen_port, ups, versions


# ---- initial fetch ----------------------------------------------------------------------------


@pytest.mark.parametrize("grpc,unix", [("envoy", False), ("envoy", True), ("google", False)],
                         ids=["envoy_grpc", "envoy_grpc_unix", "google_grpc"])
def test_initial_fetch_then_ready_and_traffic_flows(xds_server, legate, ports, upstream, grpc, unix):
    xds, lg, port, ups, v = start(xds_server, legate, ports, upstream, grpc=grpc, unix=unix)
    assert lg.admin.ready()
    assert upstream_of(port) == "a", "listener (LDS) -> route (RDS) -> cluster (CDS) -> endpoint (EDS) -> upstream"
    assert ups["a"].requests[-1]["path"] == "/"
    for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE):
        xds.wait_ack(t, v[t], timeout=5 * T)
    first = {t: xds.requests(t, kind="initial")[0] for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE)}
    for t in (CLUSTER, LISTENER):
        assert first[t]["resource_names"] in ([], ["*"]), "LDS/CDS: wildcard"
    assert sorted(first[ENDPOINT]["resource_names"]) == ["a", "b"], "EDS subscribes the EDS clusters by name"
    assert first[ROUTE]["resource_names"] == ["r1"], "RDS subscribes the names the HCMs reference"
    assert len({r["stream"] for r in xds.requests()}) == 1, "one ADS stream carries every type"
    assert xds.open_streams()[0]["method"] == "StreamAggregatedResources"
    assert wait_stat(lg, "control_plane.connected_state", lambda x: x == 1) == 1


def test_google_grpc_with_tls_channel_credentials(xds_server, legate, ports, upstream, tmp_path):
    key, crt = make_cert(str(tmp_path), "localhost")
    a = upstream("a")
    xds = xds_server(tls=(key.encode(), crt.encode()))
    admin_port, port = ports(2)
    v = xds.update(**world(port, {"a": [a.port]}))
    legate(ads_bootstrap(admin_port, xds, grpc="google"))  # ssl_credentials with the server's certificate
    xds.wait_ack(ROUTE, v[ROUTE], timeout=5 * T)
    assert upstream_of(port) == "a"


def test_node_sent_on_first_message_only(xds_server, legate, ports, upstream):
    xds, lg, port, ups, v = start(
        xds_server, legate, ports, upstream, ads_extra={"set_node_on_first_message_only": True},
        node_extra={"locality": {"region": "eu", "zone": "eu-1"}, "metadata": {"team": "edge", "n": 3}})
    xds.wait_ack(ROUTE, v[ROUTE], timeout=5 * T)
    reqs = xds.requests()
    node = reqs[0]["node"]
    assert node["id"] == "legate-test" and node["cluster"] == "test-cluster"
    assert node["locality"] == {"region": "eu", "zone": "eu-1"}
    assert node["metadata"] == {"team": "edge", "n": 3}
    assert node.get("user_agent_name"), "Envoy identifies itself with user_agent_name"
    assert all(r["node"] is None for r in reqs[1:]), "set_node_on_first_message_only: node only once per stream"


def test_node_on_every_message_and_cli_overrides(xds_server, legate, ports, upstream):
    ups = {"a": upstream("a")}
    xds = xds_server()
    admin_port, listen_port = ports(2)
    v = xds.update(**world(listen_port, {"a": [ups["a"].port]}))
    legate(ads_bootstrap(admin_port, xds), args=["--service-node", "cli-node", "--service-cluster", "cli-cluster"])
    xds.wait_ack(ROUTE, v[ROUTE], timeout=5 * T)
    reqs = xds.requests()
    assert len(reqs) >= 4
    for r in reqs:
        assert r["node"] is not None, "without set_node_on_first_message_only every request carries the node"
        assert (r["node"]["id"], r["node"]["cluster"]) == ("cli-node", "cli-cluster")


# ---- updates -----------------------------------------------------------------------------------


def test_route_update_changes_routing_and_ack_carries_version_and_nonce(xds_server, legate, ports, upstream):
    xds, lg, port, ups, v = start(xds_server, legate, ports, upstream)
    assert upstream_of(port) == "a"
    m = xds.mark()
    v2 = xds.set(ROUTE, [route_config("r1", [("/", "b")])])
    ack = xds.wait_ack(ROUTE, v2, since=m, timeout=5 * T)
    sent = xds.responses(ROUTE, since=m)
    assert len(sent) == 1 and sent[0]["version_info"] == v2
    assert ack["version_info"] == v2 and ack["response_nonce"] == sent[0]["nonce"] and ack["error_detail"] is None
    assert ack["resource_names"] == ["r1"], "an ACK restates the subscription"
    wait_upstream(port, "b", timeout=5 * T)
    assert all(upstream_of(port) == "b" for _ in range(10))


def test_cluster_and_endpoint_update(xds_server, legate, ports, upstream):
    xds, lg, port, ups, v = start(xds_server, legate, ports, upstream, n_upstreams=3)
    m = xds.mark()
    # A new cluster, its endpoints and a route to it in one go, pushed CDS -> EDS -> RDS.
    v2 = xds.update(clusters=[eds_cluster(n) for n in "abc"] + [eds_cluster("d", service_name="svc-d")],
                    endpoints=[cla(n, [ups[n].port]) for n in "abc"] + [cla("svc-d", [ups["c"].port])],
                    routes=[route_config("r1", [("/d", "d"), ("/", "a")])])
    for t in (CLUSTER, ENDPOINT, ROUTE):
        xds.wait_ack(t, v2[t], since=m, timeout=5 * T)
    wait_upstream(port, "c", path="/d", timeout=5 * T)
    eds = [r for r in xds.requests(ENDPOINT, since=m) if r["kind"] in ("ack", "request")]
    assert "svc-d" in eds[-1]["resource_names"], "EDS subscribes by eds_cluster_config.service_name"
    assert "d" not in eds[-1]["resource_names"]
    # Endpoint change only.
    m = xds.mark()
    v3 = xds.set(ENDPOINT, [cla(n, [ups[n].port]) for n in "abc"] + [cla("svc-d", [ups["b"].port])])
    xds.wait_ack(ENDPOINT, v3, since=m, timeout=5 * T)
    wait_upstream(port, "b", path="/d", timeout=5 * T)
    assert upstream_of(port, "/") == "a"


def test_eds_update_removing_host_lets_inflight_requests_finish(xds_server, legate, ports, upstream):
    xds, lg, port, ups, v = start(xds_server, legate, ports, upstream)
    result = {}

    def slow():
        result["r"] = get(port, "/delay/1500", timeout=10 * T)

    t = threading.Thread(target=slow)
    t.start()
    ups["a"].wait_inflight(1, timeout=5 * T)
    m = xds.mark()
    v2 = xds.set(ENDPOINT, [cla("a", [ups["b"].port]), cla("b", [ups["b"].port])])
    xds.wait_ack(ENDPOINT, v2, since=m, timeout=5 * T)
    wait_upstream(port, "b", timeout=5 * T)
    t.join(10 * T)
    status, headers, _ = result["r"]
    assert status == 200 and headers["x-upstream"] == "a", "the removed host finishes its in-flight request"


def test_rds_update_does_not_reset_inflight_request(xds_server, legate, ports, upstream):
    xds, lg, port, ups, v = start(xds_server, legate, ports, upstream)
    result = {}

    def slow():
        result["r"] = get(port, "/delay/1500", timeout=10 * T)

    t = threading.Thread(target=slow)
    t.start()
    ups["a"].wait_inflight(1, timeout=5 * T)
    m = xds.mark()
    v2 = xds.set(ROUTE, [route_config("r1", [("/", "b")])])
    xds.wait_ack(ROUTE, v2, since=m, timeout=5 * T)
    wait_upstream(port, "b", timeout=5 * T)
    t.join(10 * T)
    status, headers, _ = result["r"]
    assert status == 200 and headers["x-upstream"] == "a"


def test_identical_push_keeps_connections_open(xds_server, legate, ports, upstream):
    import http.client

    xds, lg, port, ups, v = start(xds_server, legate, ports, upstream)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5 * T)
    conn.request("GET", "/")
    r = conn.getresponse()
    r.read()
    assert r.status == 200
    sock = conn.sock
    before = lg.admin.stats()
    result = {}
    t = threading.Thread(target=lambda: result.update(r=get(port, "/delay/1000", timeout=10 * T)))
    t.start()
    ups["a"].wait_inflight(1, timeout=5 * T)
    m = xds.mark()
    pushed = {tp: xds.push(tp) for tp in (CLUSTER, ENDPOINT, LISTENER, ROUTE)}
    for tp, ver in pushed.items():
        xds.wait_ack(tp, ver, since=m, timeout=5 * T)
    conn.request("GET", "/")
    r = conn.getresponse()
    r.read()
    assert r.status == 200 and conn.sock is sock, "the keep-alive connection survived the identical push"
    conn.close()
    t.join(10 * T)
    assert result["r"][0] == 200
    after = lg.admin.stats()
    for name in ("listener_manager.listener_modified", "cluster_manager.cluster_modified",
                 "listener_manager.total_filter_chains_draining"):
        assert after.get(name, 0) == before.get(name, 0), f"{name}: an identical push changes nothing"
    assert after["listener_manager.lds.update_success"] > before["listener_manager.lds.update_success"]


# ---- rejected updates ----------------------------------------------------------------------------


def test_bad_regex_route_nacked_and_old_routes_kept(xds_server, legate, ports, upstream):
    xds, lg, port, ups, v = start(xds_server, legate, ports, upstream)
    m = xds.mark()
    bad = route_config("r1", [{"match": {"safe_regex": {"regex": "(["}}, "route": {"cluster": "b"}}])
    xds.set(ROUTE, [bad])
    nack = xds.wait_nack(ROUTE, since=m, timeout=5 * T)
    assert nack["version_info"] == v[ROUTE], "a NACK carries the last good version"
    assert nack["response_nonce"] == xds.responses(ROUTE, since=m)[0]["nonce"]
    msg = nack["error_detail"]["message"]
    assert nack["error_detail"]["code"] != 0
    assert "r1" in msg and ("regex" in msg.lower() or "([" in msg), msg
    assert all(upstream_of(port) == "a" for _ in range(5)), "the rejected routes are not used"
    assert wait_stat(lg, "http.ingress.rds.r1.update_rejected", lambda x: x >= 1) >= 1
    # The next good version is accepted.
    m = xds.mark()
    v3 = xds.set(ROUTE, [route_config("r1", [("/", "b")])])
    xds.wait_ack(ROUTE, v3, since=m, timeout=5 * T)
    wait_upstream(port, "b", timeout=5 * T)


def unknown_filter(optional=False):
    f = {"name": "envoy.filters.http.nope",
         "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.nope.v3.Nope"}}
    if optional:
        f["is_optional"] = True
    return f


def test_unknown_http_filter_nacked_listener_kept(xds_server, legate, ports, upstream):
    xds, lg, port, ups, v = start(xds_server, legate, ports, upstream)
    m = xds.mark()
    xds.set(LISTENER, [rds_listener("ingress", port, "r1", http_filters=[unknown_filter(), cfg.router_filter()])])
    nack = xds.wait_nack(LISTENER, since=m, timeout=5 * T)
    msg = nack["error_detail"]["message"]
    assert nack["version_info"] == v[LISTENER]
    assert "ingress" in msg and ("nope" in msg.lower()), msg
    assert upstream_of(port) == "a", "the listener keeps serving with its old config"
    assert wait_stat(lg, "listener_manager.lds.update_rejected", lambda x: x >= 1) >= 1
    # The same filter marked optional is skipped, as Envoy does.
    m = xds.mark()
    v2 = xds.set(LISTENER, [rds_listener("ingress", port, "r1",
                                         http_filters=[unknown_filter(optional=True), cfg.router_filter()])])
    xds.wait_ack(LISTENER, v2, since=m, timeout=5 * T)
    wait_upstream(port, "a", timeout=5 * T)


@pytest.mark.parametrize("kind", ["listeners", "clusters"])
def test_duplicate_resource_names_nacked(xds_server, legate, ports, upstream, kind):
    xds, lg, port, ups, v = start(xds_server, legate, ports, upstream)
    t = {"listeners": LISTENER, "clusters": CLUSTER}[kind]
    current = list(xds.resources(t).values())
    dup = current[0]
    m = xds.mark()
    xds.inject(t, current + [dup])
    nack = xds.wait_nack(t, since=m, timeout=5 * T)
    msg = nack["error_detail"]["message"]
    name = dup.name
    assert nack["version_info"] == v[t]
    assert "duplicate" in msg.lower() and name in msg, msg
    assert upstream_of(port) == "a"
    # The control plane's next real version is applied.
    m = xds.mark()
    v2 = xds.push(t)
    xds.wait_ack(t, v2, since=m, timeout=5 * T)


def test_valid_clusters_applied_even_when_others_rejected(xds_server, legate, ports, upstream):
    """Envoy applies the good CDS resources of a response one by one and NACKs the bad one."""
    xds, lg, port, ups, v = start(xds_server, legate, ports, upstream)
    ups["c"] = upstream("c")
    bad = cfg.cluster("bad", [cfg.endpoint(1, address="not-an-ip")])
    m = xds.mark()
    xds.update(clusters=[eds_cluster(n) for n in "abc"] + [bad],
               endpoints=[cla(n, [ups[n].port]) for n in "abc"])
    nack = xds.wait_nack(CLUSTER, since=m, timeout=5 * T)
    assert nack["version_info"] == v[CLUSTER]
    assert "bad" in nack["error_detail"]["message"]
    m = xds.mark()
    v2 = xds.set(ROUTE, [route_config("r1", [("/c", "c"), ("/", "a")])])
    xds.wait_ack(ROUTE, v2, since=m, timeout=5 * T)
    wait_upstream(port, "c", path="/c", timeout=5 * T)
    assert "c" in dynamic_clusters(lg) and "bad" not in dynamic_clusters(lg)
    assert lg.admin.stats()["cluster_manager.cds.update_rejected"] >= 1


def test_eds_cluster_subscription_stats(xds_server, legate, ports, upstream):
    """An EDS cluster lists its subscription's stats with its own (cluster.<name>.update_attempt,
    update_rejected ...); a static cluster lists Envoy's config update stats (update_attempt,
    update_success, update_failure, update_empty, update_no_rebuild), not the subscription's. A rejected load
    assignment counts there; a CDS update that makes the cluster static keeps its counters."""
    xds, lg, port, ups, v = start(xds_server, legate, ports, upstream)
    xds.wait_ack(ENDPOINT, v[ENDPOINT], timeout=5 * T)
    s = lg.admin.stats()
    a = {k[len("cluster.a."):]: val for k, val in s.items() if k.startswith("cluster.a.")}
    assert a["update_attempt"] >= 1 and a["update_success"] >= 1, a
    assert a["update_rejected"] == 0 and a["update_failure"] == 0 and a["init_fetch_timeout"] == 0
    assert a["membership_total"] == 1 and a["membership_healthy"] == 1
    assert "cluster.xds_cluster.update_success" in s and "cluster.xds_cluster.membership_total" in s
    for name in ("update_attempt", "update_failure", "update_no_rebuild"):
        assert f"cluster.xds_cluster.{name}" in s, f"every cluster lists {name}"
    for name in ("update_rejected", "init_fetch_timeout"):
        assert f"cluster.xds_cluster.{name}" not in s, f"a static cluster does not list {name}"

    m = xds.mark()
    bad = {"cluster_name": "a", "endpoints": [{"lb_endpoints": [cfg.endpoint(1, address="not-an-ip")]}]}
    xds.set(ENDPOINT, [bad, cla("b", [ups["b"].port])])
    xds.wait_nack(ENDPOINT, since=m, timeout=5 * T)
    s2 = lg.admin.stats()
    assert s2["cluster.a.update_rejected"] == 1 and s2["cluster.a.update_attempt"] == a["update_attempt"] + 1
    assert s2["cluster.a.update_success"] == a["update_success"] and s2["cluster.a.membership_total"] == 1
    assert upstream_of(port) == "a", "the cluster keeps its endpoints"

    m = xds.mark()
    v3 = xds.set(CLUSTER, [cfg.cluster("a", [ups["a"].port]), eds_cluster("b")])
    xds.wait_ack(CLUSTER, v3, since=m, timeout=5 * T)
    s3 = lg.admin.stats()
    assert s3["cluster.a.update_rejected"] == 1 and s3["cluster.a.update_attempt"] == s2["cluster.a.update_attempt"], \
        "one block per cluster name: a change of type keeps the counters"
    assert upstream_of(port) == "a"


# ---- SotW removal -----------------------------------------------------------------------------------


def test_sotw_removal_of_listener_and_cluster(xds_server, legate, ports, upstream):
    xds, lg, port, ups, v = start(xds_server, legate, ports, upstream)
    port2 = ports()
    m = xds.mark()
    v2 = xds.update(listeners=[rds_listener("ingress", port, "r1"), rds_listener("second", port2, "r2")],
                    routes=[route_config("r1", [("/b", "b"), ("/", "a")]), route_config("r2", [("/", "b")])])
    xds.wait_ack(LISTENER, v2[LISTENER], since=m, timeout=5 * T)
    wait_upstream(port2, "b", timeout=5 * T)
    wait_upstream(port, "b", path="/b", timeout=5 * T)
    # The second listener is missing from the next LDS response: it is removed.
    m = xds.mark()
    v3 = xds.remove(LISTENER, ["second"])
    xds.wait_ack(LISTENER, v3, since=m, timeout=5 * T)
    from lib.wait import wait_for

    wait_for(lambda: refused(port2), timeout=5 * T, what=f"listener on {port2} closed")
    assert "second" not in dynamic_listeners(lg)
    # Cluster b is missing from the next CDS response: removed, its route answers 503.
    m = xds.mark()
    v4 = xds.remove(CLUSTER, ["b"])
    xds.wait_ack(CLUSTER, v4, since=m, timeout=5 * T)
    wait_status(port, 503, path="/b", timeout=5 * T)
    assert "b" not in dynamic_clusters(lg)
    assert upstream_of(port, "/") == "a"
    xds.wait_request(lambda r: r["type_url"] == ENDPOINT and r["resource_names"] == ["a"], since=m,
                     timeout=5 * T, what="EDS request without the removed cluster")


# ---- warming -----------------------------------------------------------------------------------------


def test_listener_waits_for_rds_until_initial_fetch_timeout(xds_server, legate, ports, upstream):
    ups = upstream("a")
    xds = xds_server()
    admin_port, port = ports(2)
    src = ads_source(initial_fetch_timeout="2s")
    xds.update(clusters=[eds_cluster("a")], endpoints=[cla("a", [ups.port])],
               listeners=[rds_listener("ingress", port, "never-sent", config_source=src)])
    lg = legate(ads_bootstrap(admin_port, xds), wait_ready=False)
    xds.wait_request(lambda r: r["type_url"] == ROUTE and r["resource_names"] == ["never-sent"], timeout=5 * T)
    from lib.wait import wait_for

    wait_for(lambda: lg.admin.get("/ready").status == 503, timeout=2,
             what="/ready 503: initialization waits for the listener's routes")
    assert refused(port), "a warming listener does not accept connections"
    lg.wait_ready(timeout=10)
    wait_status(port, 404, timeout=5 * T)  # no routes arrived: every request is a route miss


def test_new_listener_and_cluster_warm_until_their_resources_arrive(xds_server, legate, ports, upstream):
    xds, lg, port, ups, v = start(xds_server, legate, ports, upstream)
    ups["c"] = upstream("c")
    port2 = ports()
    m = xds.mark()
    xds.update(listeners=[rds_listener("ingress", port, "r1"), rds_listener("late", port2, "r-late")],
               clusters=[eds_cluster(n) for n in "abc"])  # no endpoints for c yet, no route r-late
    xds.wait_ack(LISTENER, since=m, timeout=5 * T)
    xds.wait_ack(CLUSTER, since=m, timeout=5 * T)
    assert wait_stat(lg, "listener_manager.total_listeners_warming", lambda x: x == 1) == 1
    assert wait_stat(lg, "cluster_manager.warming_clusters", lambda x: x == 1) == 1
    assert lg.admin.stat("cluster.c.warming_state") == 1 and lg.admin.stat("cluster.a.warming_state") == 0
    assert refused(port2)
    assert "warming_state" in dynamic_listeners(lg)["late"]
    assert "c" in dynamic_clusters(lg, "dynamic_warming_clusters")
    m = xds.mark()
    xds.update(endpoints=[cla(n, [ups[n].port]) for n in "abc"], routes=[
        route_config("r1", [("/", "a")]), route_config("r-late", [("/", "c")])])
    xds.wait_ack(ROUTE, since=m, timeout=5 * T)
    wait_upstream(port2, "c", timeout=5 * T)
    assert lg.admin.stats()["listener_manager.total_listeners_warming"] == 0
    assert lg.admin.stats()["cluster_manager.warming_clusters"] == 0
    assert lg.admin.stat("cluster.c.warming_state", default=None) == 0
    assert "active_state" in dynamic_listeners(lg)["late"]


# ---- observability -----------------------------------------------------------------------------------


def duration_samples_and_successes(lg):
    """{"cds": (samples of update_duration, update_success), "lds": ..., "rds <name>": ...}, from one
    /stats/prometheus read (a push arriving between two reads would make them disagree)."""
    out = {}
    for line in lg.admin.get("/stats/prometheus").text.splitlines():
        m = re.match(r'envoy_(cluster_manager_cds|listener_manager_lds|http_rds)_(update_duration_count|update_success)'
                     r'\{(.*)\} (\d+)$', line)
        if m:
            route = re.search(r'envoy_rds_route_config="([^"]*)"', m.group(3))
            key = m.group(1)[-3:] + (" " + route.group(1) if route else "")
            pair = out.setdefault(key, [None, None])
            pair[m.group(2) == "update_success"] = int(m.group(4))
    return {k: tuple(v) for k, v in out.items()}


def test_stats_and_config_dump_follow_versions(xds_server, legate, ports, upstream):
    xds, lg, port, ups, v = start(xds_server, legate, ports, upstream)
    xds.wait_ack(ROUTE, v[ROUTE], timeout=5 * T)
    s = lg.admin.stats()
    assert s["cluster_manager.cds.update_success"] >= 1 and s["listener_manager.lds.update_success"] >= 1
    assert s["cluster_manager.cds.update_attempt"] >= s["cluster_manager.cds.update_success"]
    assert s["http.ingress.rds.r1.update_success"] >= 1
    assert s["cluster.a.update_success"] >= 1, "EDS stats live under cluster.<name>."
    assert s["control_plane.connected_state"] == 1
    assert stat_text(lg, "cluster_manager.cds.version_text") == v[CLUSTER]
    assert stat_text(lg, "listener_manager.lds.version_text") == v[LISTENER]
    assert stat_text(lg, "control_plane.identifier") == xds.identifier
    cds_hash = s["cluster_manager.cds.version"]
    assert cds_hash != 0, "version: a hash of the last accepted version_info"
    pairs = duration_samples_and_successes(lg)
    assert set(pairs) == {"cds", "lds", "rds r1"} and all(n == ok >= 1 for n, ok in pairs.values()), \
        f"one update_duration sample per accepted update: {pairs}"

    dls = dynamic_listeners(lg)
    act = dls["ingress"]["active_state"]
    assert act["version_info"] == v[LISTENER] and act["listener"]["name"] == "ingress" and act["last_updated"]
    dump = config_dump(lg)
    cds = dump["ClustersConfigDump"]
    assert cds["version_info"] == v[CLUSTER]
    active = {c["cluster"]["name"]: c for c in cds["dynamic_active_clusters"]}
    assert set(active) == {"a", "b"}
    assert all(c["version_info"] == v[CLUSTER] and c["last_updated"] for c in active.values())
    assert "xds_cluster" in {c["cluster"]["name"] for c in cds["static_clusters"]}
    routes = {r["route_config"]["name"]: r for r in dump["RoutesConfigDump"]["dynamic_route_configs"]}
    assert routes["r1"]["version_info"] == v[ROUTE]
    eps = config_dump(lg, "include_eds")["EndpointsConfigDump"]["dynamic_endpoint_configs"]
    assert {e["endpoint_config"]["cluster_name"] for e in eps} == {"a", "b"}
    only = lg.admin.get("/config_dump?resource=dynamic_active_clusters").json()["configs"]
    assert {c["cluster"]["name"] for c in only} == {"a", "b"}

    m = xds.mark()
    v2 = xds.upsert(CLUSTER, [eds_cluster("b", connect_timeout="2s")])
    xds.wait_ack(CLUSTER, v2, since=m, timeout=5 * T)
    s2 = lg.admin.stats()
    assert s2["cluster_manager.cds.update_success"] == s["cluster_manager.cds.update_success"] + 1
    assert s2["cluster_manager.cds.version"] != cds_hash
    assert stat_text(lg, "cluster_manager.cds.version_text") == v2
    assert s2["cluster_manager.cluster_modified"] >= s.get("cluster_manager.cluster_modified", 0) + 1
    assert dynamic_clusters(lg)["b"]["version_info"] == v2
    assert dynamic_clusters(lg)["a"]["version_info"] == v[CLUSTER], "an unchanged cluster keeps its version"

    m = xds.mark()
    # SotW is complete: the bad cluster is sent with the good ones (a lone one would remove them).
    xds.inject(CLUSTER, list(xds.resources(CLUSTER).values()) + [cfg.cluster("x", [cfg.endpoint(1, "not-an-ip")])])
    xds.wait_nack(CLUSTER, since=m, timeout=5 * T)
    s3 = lg.admin.stats()
    assert s3["cluster_manager.cds.update_rejected"] == s2.get("cluster_manager.cds.update_rejected", 0) + 1
    assert stat_text(lg, "cluster_manager.cds.version_text") == v2, "a rejected update keeps the version"
    samples, successes = duration_samples_and_successes(lg)["cds"]
    assert samples == successes, "no update_duration sample for a rejected update"


# ---- SDS over ADS -------------------------------------------------------------------------------------


def tls_listener(name, port, route_name, secret_name):
    lst = rds_listener(name, port, route_name)
    lst["filter_chains"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "common_tls_context": {"tls_certificate_sds_secret_configs": [
                {"name": secret_name, "sds_config": ads_source()}]}}}
    return lst


def secret(name, key_pem, cert_pem):
    return {"name": name, "tls_certificate": {"certificate_chain": {"inline_string": cert_pem},
                                              "private_key": {"inline_string": key_pem}}}


def test_sds_secret_over_ads_and_rotation(xds_server, legate, ports, upstream, tmp_path):
    import ssl

    key1, crt1 = make_cert(str(tmp_path), "one.example")
    key2, crt2 = make_cert(str(tmp_path), "two.example")
    xds, lg, port, ups, v = start(xds_server, legate, ports, upstream)
    tls_port = ports()
    m = xds.mark()
    v2 = xds.update(secrets=[secret("server-cert", key1, crt1)],
                    listeners=[rds_listener("ingress", port, "r1"), tls_listener("tls", tls_port, "r1", "server-cert")])
    xds.wait_ack(LISTENER, v2[LISTENER], since=m, timeout=5 * T)
    xds.wait_ack(SECRET, v2[SECRET], since=m, timeout=5 * T)
    sds = xds.requests(SECRET, since=m)[0]
    assert sds["resource_names"] == ["server-cert"], "SDS subscribes the names the TLS contexts reference"
    from lib.wait import wait_for

    wait_for(lambda: peer_cert_der(tls_port) == ssl.PEM_cert_to_DER_cert(crt1), timeout=5 * T,
             what="the SDS certificate served")
    m = xds.mark()
    v3 = xds.set(SECRET, [secret("server-cert", key2, crt2)])
    xds.wait_ack(SECRET, v3, since=m, timeout=5 * T)
    wait_for(lambda: peer_cert_der(tls_port) == ssl.PEM_cert_to_DER_cert(crt2), timeout=5 * T,
             what="the rotated certificate served")


# ---- Resource wrapper, RTDS ---------------------------------------------------------------------------


def test_resources_wrapped_with_ttl_are_applied(xds_server, legate, ports, upstream):
    """SotW resources may come in the envoy.service.discovery.v3.Resource wrapper (with a TTL)."""
    xds, lg, port, ups, v = start(xds_server, legate, ports, upstream)
    m = xds.mark()
    v2 = xds.set(ROUTE, [route_config("r1", [("/", "b")])], ttl=300)
    xds.wait_ack(ROUTE, v2, since=m, timeout=5 * T)
    wait_upstream(port, "b", timeout=5 * T)


def test_rtds_layer_over_ads(xds_server, legate, ports, upstream):
    from lib.xds import RUNTIME

    xds = xds_server()
    admin_port = ports()
    v = xds.set(RUNTIME, [{"name": "rtds", "layer": {"legate.test.key": "from-rtds"}}])
    boot = ads_bootstrap(admin_port, xds, lds=False, cds=False)
    layer = {"name": "rtds", "rtds_layer": {"name": "rtds", "rtds_config": ads_source()}}
    boot["layered_runtime"] = {"layers": [layer]}
    lg = legate(boot)
    rec = xds.wait_ack(RUNTIME, v, timeout=5 * T)
    assert rec["resource_names"] == ["rtds"], "RTDS subscribes the layer's name"
    entries = lg.admin.get("/runtime").json()["entries"]
    assert entries["legate.test.key"]["final_value"] == "from-rtds"
