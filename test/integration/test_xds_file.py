"""File-based xDS (path_config_source): each file holds a DiscoveryResponse whose
resources are the whole state of one type; Legate reloads a file when it changes
(an atomic rename, as Envoy expects). This drives the same apply path as the
gRPC transports without a control plane: compile, warm, publish a snapshot that
keeps unchanged objects, open and close listener sockets, drain what changed.
"""
import http.client
import os
import socket
import time

import pytest

from lib import config as cfg
from lib.legate import time_scale
from lib.xds import cla, config_dump, eds_cluster, get, refused, route_config, stat_text, upstream_of, wait_stat, \
    wait_status, wait_upstream

T = time_scale()
TYPES = {
    "lds": "type.googleapis.com/envoy.config.listener.v3.Listener",
    "cds": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    "rds": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
    "eds": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
}


class Files:
    """One DiscoveryResponse file per type in a directory; write() replaces one atomically."""

    def __init__(self, directory):
        self.dir = str(directory)
        self.versions = {}

    def path(self, kind):
        return os.path.join(self.dir, f"{kind}.yaml")

    def source(self, kind, **extra):
        s = {"path_config_source": {"path": self.path(kind)}, "resource_api_version": "V3"}
        s.update(extra)
        return s

    def write(self, kind, resources, version=None):
        if version is None:
            version = str(self.versions.get(kind, 0) + 1)
        self.versions[kind] = int(version) if str(version).isdigit() else self.versions.get(kind, 0) + 1
        doc = {"version_info": str(version), "type_url": TYPES[kind],
               "resources": [dict(r, **{"@type": TYPES[kind]}) for r in resources]}
        tmp = self.path(kind) + ".tmp"
        cfg_write(tmp, doc)
        os.rename(tmp, self.path(kind))
        return str(version)


def cfg_write(path, doc):
    import yaml
    with open(path, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)


def rds_listener(files, name, port, route_name, stat_prefix=None, **extra):
    h = {"@type": cfg.HCM_TYPE, "stat_prefix": stat_prefix or name, "codec_type": "AUTO",
         "rds": {"route_config_name": route_name, "config_source": files.source("rds")},
         "http_filters": [cfg.router_filter()]}
    return cfg.listener(name, port, [{"name": "envoy.filters.network.http_connection_manager", "typed_config": h}], **extra)


def bootstrap(admin_port, files, **extra):
    b = {"admin": cfg.admin(admin_port), "node": {"id": "file-test", "cluster": "test"},
         "dynamic_resources": {"lds_config": files.source("lds"), "cds_config": files.source("cds")}}
    b.update(extra)
    return b


def world(files, port, backends, route_to=None):
    """Listener `ingress` on port -> RDS `r1` -> EDS clusters (backends: {name: [ports]})."""
    first = route_to or next(iter(backends))
    files.write("eds", [cla(n, p) for n, p in backends.items()])
    files.write("cds", [eds_cluster(n, config_source=files.source("eds")) for n in backends])
    files.write("rds", [route_config("r1", [("/", first)])])
    files.write("lds", [rds_listener(files, "ingress", port, "r1")])


@pytest.fixture
def setup(tmp_path, legate, ports, upstream):
    def make(n_upstreams=2, **boot):
        ups = {n: upstream(n) for n in "abc"[:n_upstreams]}
        files = Files(tmp_path)
        admin_port, port = ports(2)
        world(files, port, {n: [u.port] for n, u in ups.items()})
        lg = legate(bootstrap(admin_port, files, **boot))
        return lg, files, port, ups
    return make


def keepalive_get(conn, path="/"):
    conn.request("GET", path)
    r = conn.getresponse()
    r.read()
    return r.status, r.getheader("x-upstream")


def test_initial_files_then_ready_and_traffic(setup):
    lg, files, port, ups = setup()
    assert lg.admin.ready()
    assert upstream_of(port) == "a"
    stats = lg.admin.stats()
    assert stats["listener_manager.lds.update_success"] >= 1
    assert stats["cluster_manager.cds.update_success"] >= 1
    assert stats["http.ingress.rds.r1.update_success"] >= 1
    assert stats["cluster.a.update_success"] >= 1
    assert stat_text(lg, "listener_manager.lds.version_text") == "1"
    assert stats["server.state"] == 0


def test_rds_update_applies_to_new_requests_on_open_connections(setup):
    lg, files, port, ups = setup()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    assert keepalive_get(conn) == (200, "a")
    files.write("rds", [route_config("r1", [("/", "b")])])
    wait_stat(lg, "http.ingress.rds.r1.update_success", lambda v: v >= 2, timeout=5 * T)
    # the same connection (never closed: an RDS update drains nothing) sees the new route
    assert keepalive_get(conn) == (200, "b")
    conn.close()
    assert lg.admin.stats()["http.ingress.downstream_cx_drain_close"] == 0


def test_eds_update_moves_traffic(setup):
    lg, files, port, ups = setup()
    files.write("eds", [cla("a", [ups["b"].port]), cla("b", [ups["b"].port])])
    wait_upstream(port, "b", timeout=5 * T)
    assert lg.admin.stats()["cluster.a.membership_total"] == 1


def test_lds_adds_and_removes_listeners(setup, ports):
    lg, files, port, ups = setup()
    port2 = ports()
    files.write("lds", [rds_listener(files, "ingress", port, "r1"), rds_listener(files, "second", port2, "r1")])
    wait_upstream(port2, "a", timeout=5 * T)
    assert lg.admin.stats()["listener_manager.total_listeners_active"] == 2
    files.write("lds", [rds_listener(files, "second", port2, "r1")])
    deadline = time.monotonic() + 5 * T
    while not refused(port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert refused(port), "a listener missing from the LDS response is removed and its socket closed"
    assert upstream_of(port2) == "a"


def test_rejected_listener_keeps_last_good_config(setup):
    lg, files, port, ups = setup()
    bad = rds_listener(files, "ingress", port, "r1")
    bad["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"] = [
        {"name": "no.such.filter", "typed_config": {"@type": "type.googleapis.com/google.protobuf.Empty"}}]
    files.write("lds", [bad])
    wait_stat(lg, "listener_manager.lds.update_rejected", lambda v: v >= 1, timeout=5 * T)
    assert upstream_of(port) == "a", "the last good listener keeps serving"
    assert stat_text(lg, "listener_manager.lds.version_text") == "1", "a rejected version is not taken"
    dl = {d["name"]: d for d in config_dump(lg)["ListenersConfigDump"]["dynamic_listeners"]}["ingress"]
    assert dl["active_state"]["version_info"] == "1"
    assert "no.such.filter" in dl["error_state"]["details"]
    assert dl["error_state"]["version_info"] == "2"


def test_bad_route_config_is_rejected(setup):
    lg, files, port, ups = setup()
    files.write("rds", [{"name": "r1", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
        {"match": {"safe_regex": {"regex": "("}}, "route": {"cluster": "b"}}]}]}])
    wait_stat(lg, "http.ingress.rds.r1.update_rejected", lambda v: v >= 1, timeout=5 * T)
    assert upstream_of(port) == "a"


def test_cds_removal_and_readdition(setup):
    lg, files, port, ups = setup()
    files.write("rds", [route_config("r1", [("/", "b")])])
    wait_upstream(port, "b", timeout=5 * T)
    files.write("cds", [eds_cluster("a", config_source=files.source("eds"))])
    wait_status(port, 503, timeout=5 * T)  # route to a cluster that is gone: no_cluster
    files.write("cds", [eds_cluster(n, config_source=files.source("eds")) for n in ("a", "b")])
    wait_upstream(port, "b", timeout=5 * T)


def test_identical_push_drops_nothing(setup):
    lg, files, port, ups = setup()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    assert keepalive_get(conn) == (200, "a")
    before = lg.admin.stats()
    listener = rds_listener(files, "ingress", port, "r1")
    files.write("lds", [listener])
    files.write("cds", [eds_cluster(n, config_source=files.source("eds")) for n in ("a", "b")])
    wait_stat(lg, "listener_manager.lds.update_success", lambda v: v > before["listener_manager.lds.update_success"],
              timeout=5 * T)
    wait_stat(lg, "cluster_manager.cds.update_success", lambda v: v > before["cluster_manager.cds.update_success"],
              timeout=5 * T)
    assert keepalive_get(conn) == (200, "a"), "the connection survives an identical push"
    after = lg.admin.stats()
    assert after["cluster.a.upstream_cx_total"] == before["cluster.a.upstream_cx_total"], "the pool is kept"
    assert after["listener_manager.listener_modified"] == before["listener_manager.listener_modified"]
    assert after["http.ingress.downstream_cx_drain_close"] == 0
    conn.close()


def two_chain_listener(files, port, body_a, body_b):
    """One listener on 0.0.0.0: chain `a` serves 127.0.0.1, chain `b` 127.0.0.2 (destination prefix)."""
    def chain(name, ip, body):
        rc = cfg.route_config([cfg.vhost("v", [{"match": {"prefix": "/"},
                                                "direct_response": {"status": 200, "body": {"inline_string": body}}}])])
        f = cfg.hcm(rc, stat_prefix=f"chain_{name}")
        return {"name": name, "filter_chain_match": {"prefix_ranges": [{"address_prefix": ip, "prefix_len": 32}]},
                "filters": [f]}
    return {"name": "chains", "address": cfg.socket_address(port, "0.0.0.0"),
            "filter_chains": [chain("a", "127.0.0.1", body_a), chain("b", "127.0.0.2", body_b)]}


def test_lds_update_of_one_chain_drains_only_its_connections(setup, ports):
    lg, files, port, ups = setup()
    port2 = ports()
    files.write("lds", [rds_listener(files, "ingress", port, "r1"), two_chain_listener(files, port2, "A1", "B1")])
    wait_status(port2, 200, timeout=5 * T)
    ca = http.client.HTTPConnection("127.0.0.1", port2, timeout=5)
    cb = http.client.HTTPConnection("127.0.0.2", port2, timeout=5)
    for c, body in ((ca, b"A1"), (cb, b"B1")):
        c.request("GET", "/")
        assert c.getresponse().read() == body
    files.write("lds", [rds_listener(files, "ingress", port, "r1"), two_chain_listener(files, port2, "A1", "B2")])
    wait_stat(lg, "listener_manager.lds.update_success", lambda v: v >= 3, timeout=5 * T)
    time.sleep(0.3)
    ca.request("GET", "/")
    assert ca.getresponse().read() == b"A1", "the unchanged chain's connection is untouched"
    with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
        cb.request("GET", "/")
        cb.getresponse().read()
    ca.close()
    cb.close()
    c = http.client.HTTPConnection("127.0.0.2", port2, timeout=5)
    c.request("GET", "/")
    assert c.getresponse().read() == b"B2"
    c.close()
    stats = lg.admin.stats()
    assert stats.get("http.chain_a.downstream_cx_drain_close", 0) == 0
    assert stats["http.chain_b.downstream_cx_drain_close"] == 1


def test_missing_route_config_waits_for_initial_fetch_timeout(tmp_path, legate, ports, upstream):
    u = upstream("a")
    files = Files(tmp_path)
    admin_port, port = ports(2)
    files.write("eds", [cla("a", [u.port])])
    files.write("cds", [eds_cluster("a", config_source=files.source("eds"))])
    lst = rds_listener(files, "ingress", port, "r1")
    lst["filter_chains"][0]["filters"][0]["typed_config"]["rds"]["config_source"] = files.source(
        "rds", initial_fetch_timeout="1s")
    files.write("lds", [lst])
    start = time.monotonic()
    lg = legate(bootstrap(admin_port, files), wait_ready=False)
    lg.wait_ready(timeout=10)
    assert time.monotonic() - start >= 0.9, "not ready before the route config's initial fetch timed out"
    assert get(port)[0] == 404, "no route configuration yet: every request is a 404"
    files.write("rds", [route_config("r1", [("/", "a")])])
    wait_upstream(port, "a", timeout=5 * T)


def test_config_dump_has_dynamic_sections(setup):
    lg, files, port, ups = setup()
    dump = config_dump(lg, "include_eds")
    clusters = {c["cluster"]["name"]: c for c in dump["ClustersConfigDump"]["dynamic_active_clusters"]}
    assert set(clusters) == {"a", "b"}
    assert clusters["a"]["version_info"] == "1" and "last_updated" in clusters["a"]
    assert dump["ClustersConfigDump"]["version_info"] == "1"
    listeners = dump["ListenersConfigDump"]["dynamic_listeners"]
    assert [l["name"] for l in listeners] == ["ingress"]
    assert listeners[0]["active_state"]["listener"]["name"] == "ingress"
    routes = dump["RoutesConfigDump"]["dynamic_route_configs"]
    assert routes[0]["route_config"]["name"] == "r1" and routes[0]["version_info"] == "1"
    eps = dump["EndpointsConfigDump"]["dynamic_endpoint_configs"]
    assert sorted(e["endpoint_config"]["cluster_name"] for e in eps) == ["a", "b"]
    assert "EndpointsConfigDump" not in config_dump(lg)


def test_bind_failure_rejects_only_that_listener(setup):
    lg, files, port, ups = setup()
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    busy_port = busy.getsockname()[1]
    try:
        files.write("lds", [rds_listener(files, "ingress", port, "r1"), rds_listener(files, "clash", busy_port, "r1")])
        wait_stat(lg, "listener_manager.lds.update_rejected", lambda v: v >= 1, timeout=5 * T)
        assert upstream_of(port) == "a"
        assert lg.admin.stats()["listener_manager.listener_create_failure"] >= 1
    finally:
        busy.close()
