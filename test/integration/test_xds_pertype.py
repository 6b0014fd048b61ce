"""Legate with one xDS stream per resource type (no ADS): lds_config and
cds_config name their own api_config_source, and so do the RDS, EDS and SDS
config sources inside the resources. Each type then has its own gRPC method
(ListenerDiscoveryService/StreamListeners, ...), SotW (GRPC) or delta
(DELTA_GRPC)."""
import pytest

from lib.legate import time_scale
from lib.xds import (CLUSTER, ENDPOINT, LISTENER, ROUTE, cla, eds_cluster, pertype_bootstrap,  # noqa: F401
                     pertype_source, rds_listener, route_config, upstream_of, wait_stat, wait_upstream, xds_server)

T = time_scale()

METHODS = {
    "GRPC": {LISTENER: "StreamListeners", CLUSTER: "StreamClusters", ROUTE: "StreamRoutes",
             ENDPOINT: "StreamEndpoints"},
    "DELTA_GRPC": {LISTENER: "DeltaListeners", CLUSTER: "DeltaClusters", ROUTE: "DeltaRoutes",
                   ENDPOINT: "DeltaEndpoints"},
}


def start(xds_server, legate, ports, upstream, api_type, grpc="envoy"):
    ups = {n: upstream(n) for n in "ab"}
    xds = xds_server()
    admin_port, port = ports(2)
    src = pertype_source(xds, api_type, grpc)
    xds.update(clusters=[eds_cluster(n, config_source=src) for n in "ab"],
               endpoints=[cla(n, [u.port]) for n, u in ups.items()],
               listeners=[rds_listener("ingress", port, "r1", config_source=src)],
               routes=[route_config("r1", [("/", "a")])])
    lg = legate(pertype_bootstrap(admin_port, xds, api_type, grpc))
    return xds, lg, port, ups, src


@pytest.mark.parametrize("api_type,grpc", [("GRPC", "envoy"), ("DELTA_GRPC", "envoy"), ("GRPC", "google")])
def test_per_type_streams_serve_and_update(xds_server, legate, ports, upstream, api_type, grpc):
    xds, lg, port, ups, src = start(xds_server, legate, ports, upstream, api_type, grpc)
    assert upstream_of(port) == "a"
    for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE):
        xds.wait_ack(t, timeout=5 * T)
    by_type = {}
    for r in xds.requests():
        by_type.setdefault(r["type_url"], set()).add((r["stream"], r["service"], r["method"]))
    for t, method in METHODS[api_type].items():
        assert len(by_type[t]) == 1, f"{t}: one stream"
        (stream, service, got), = by_type[t]
        assert got == method and service != "envoy.service.discovery.v3.AggregatedDiscoveryService"
    assert len({next(iter(s))[0] for s in by_type.values()}) == 4, "four streams, one per type"

    m = xds.mark()
    xds.set(ROUTE, [route_config("r1", [("/", "b")])])
    xds.wait_ack(ROUTE, since=m, timeout=5 * T)
    wait_upstream(port, "b", timeout=5 * T)
    m = xds.mark()
    xds.set(ENDPOINT, [cla("a", [ups["a"].port]), cla("b", [ups["a"].port])])
    xds.wait_ack(ENDPOINT, since=m, timeout=5 * T)
    wait_upstream(port, "a", timeout=5 * T)
    m = xds.mark()
    xds.update(clusters=[eds_cluster("a", config_source=src)], routes=[route_config("r1", [("/", "a")])])
    xds.wait_ack(CLUSTER, since=m, timeout=5 * T)
    wait_stat(lg, "cluster_manager.active_clusters", lambda x: x == 2, timeout=5 * T)  # xds_cluster and a


def test_per_type_stream_break_resubscribes_only_that_type(xds_server, legate, ports, upstream):
    xds, lg, port, ups, src = start(xds_server, legate, ports, upstream, "GRPC")
    for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE):
        xds.wait_ack(t, timeout=5 * T)
    route_stream = next(s for s in xds.open_streams() if s["method"] == "StreamRoutes")
    m = xds.mark()
    xds.close_streams("UNAVAILABLE", method="StreamRoutes")
    rec = xds.wait_request(lambda r: r["type_url"] == ROUTE and r["kind"] == "initial", since=m, timeout=15 * T,
                           what="RDS resubscription")
    assert rec["resource_names"] == ["r1"] and rec["stream"] != route_stream["id"]
    assert rec["version_info"], "a resubscription carries the version the client has"
    assert upstream_of(port) == "a"
    others = [r for r in xds.requests(since=m) if r["type_url"] != ROUTE and r["kind"] == "initial"]
    assert others == [], "the other types' streams were not touched"
