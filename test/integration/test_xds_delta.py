"""Legate over delta (incremental) ADS: api_type DELTA_GRPC.

Envoy's xds_protocol, incremental variants: the client subscribes with
resource_names_subscribe (LDS/CDS wildcard), each response carries only the
resources that changed, with per-resource versions, and removed_resources
for those that are gone; on reconnect the first request of each type lists
what the client has in initial_resource_versions.
"""
import pytest

from lib.legate import time_scale
from lib.wait import wait_for
from lib.xds import (CLUSTER, ENDPOINT, LISTENER, ROUTE, ads_bootstrap, cla, dynamic_clusters,  # noqa: F401
                     dynamic_listeners, rds_listener, refused, route_config, upstream_of, wait_stat,
                     wait_status, wait_upstream, world, xds_server)

T = time_scale()


def start(xds_server, legate, ports, upstream, grpc="envoy", names="ab"):
    ups = {n: upstream(n) for n in names}
    xds = xds_server()
    admin_port, port = ports(2)
    v = xds.update(**world(port, {n: [u.port] for n, u in ups.items()},
                           routes=[("/" + n, n) for n in names[1:]] + [("/", names[0])]))
    lg = legate(ads_bootstrap(admin_port, xds, api_type="DELTA_GRPC", grpc=grpc))
    return xds, lg, port, ups, v


@pytest.mark.parametrize("grpc", ["envoy", "google"])
def test_delta_initial_subscriptions_and_traffic(xds_server, legate, ports, upstream, grpc):
    xds, lg, port, ups, v = start(xds_server, legate, ports, upstream, grpc=grpc)
    assert upstream_of(port) == "a" and upstream_of(port, "/b") == "b"
    assert xds.open_streams()[0]["method"] == "DeltaAggregatedResources"
    for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE):
        xds.wait_ack(t, timeout=5 * T)
    first = {t: xds.requests(t, kind="initial")[0] for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE)}
    assert first[CLUSTER]["subscribe"] in ([], ["*"]), "CDS: wildcard"
    assert first[LISTENER]["subscribe"] in ([], ["*"]), "LDS: wildcard"
    assert sorted(first[ENDPOINT]["subscribe"]) == ["a", "b"]
    assert first[ROUTE]["subscribe"] == ["r1"]
    assert first[CLUSTER]["initial_resource_versions"] == {}, "a fresh client has nothing"
    assert first[CLUSTER]["node"]["id"] == "legate-test"
    assert all(r["version_info"] is None for r in xds.requests()), "delta requests have no version_info"


def test_delta_update_sends_only_the_changed_resource(xds_server, legate, ports, upstream):
    xds, lg, port, ups, v = start(xds_server, legate, ports, upstream)
    m = xds.mark()
    xds.set(ENDPOINT, [cla("a", [ups["b"].port]), cla("b", [ups["b"].port])])
    ack = xds.wait_ack(ENDPOINT, since=m, timeout=5 * T)
    sent = xds.responses(ENDPOINT, since=m)
    assert len(sent) == 1 and sent[0]["resources"] == ["a"], "only the changed resource is sent"
    assert ack["response_nonce"] == sent[0]["nonce"] and ack["error_detail"] is None
    wait_upstream(port, "b", timeout=5 * T)
    assert upstream_of(port, "/b") == "b"
    s = lg.admin.stats()
    assert s["control_plane.connected_state"] == 1
    assert s["cluster.a.update_success"] >= 2


def test_delta_removed_resources(xds_server, legate, ports, upstream):
    xds, lg, port, ups, v = start(xds_server, legate, ports, upstream)
    port2 = ports()
    m = xds.mark()
    xds.update(listeners=[rds_listener("ingress", port, "r1"), rds_listener("second", port2, "r2")],
               routes=[route_config("r1", [("/b", "b"), ("/", "a")]), route_config("r2", [("/", "b")])])
    xds.wait_ack(LISTENER, since=m, timeout=5 * T)
    xds.wait_request(lambda r: r["type_url"] == ROUTE and r["subscribe"] == ["r2"], since=m, timeout=5 * T,
                     what="delta RDS subscribe for the new listener's routes")
    wait_upstream(port2, "b", timeout=5 * T)

    m = xds.mark()
    xds.remove(LISTENER, ["second"])
    xds.wait_ack(LISTENER, since=m, timeout=5 * T)
    assert xds.responses(LISTENER, since=m)[0]["removed"] == ["second"]
    wait_for(lambda: refused(port2), timeout=5 * T, what="the removed listener closed")
    xds.wait_request(lambda r: r["type_url"] == ROUTE and r["unsubscribe"] == ["r2"], since=m, timeout=5 * T,
                     what="delta RDS unsubscribe of the removed listener's routes")
    assert "second" not in dynamic_listeners(lg)

    m = xds.mark()
    xds.remove(CLUSTER, ["b"])
    xds.wait_ack(CLUSTER, since=m, timeout=5 * T)
    assert xds.responses(CLUSTER, since=m)[0]["removed"] == ["b"]
    wait_status(port, 503, path="/b", timeout=5 * T)
    assert "b" not in dynamic_clusters(lg)
    xds.wait_request(lambda r: r["type_url"] == ENDPOINT and r["unsubscribe"] == ["b"], since=m, timeout=5 * T,
                     what="delta EDS unsubscribe of the removed cluster")
    assert upstream_of(port) == "a"


def test_delta_nack_keeps_old_config(xds_server, legate, ports, upstream):
    xds, lg, port, ups, v = start(xds_server, legate, ports, upstream)
    m = xds.mark()
    xds.set(ROUTE, [route_config("r1", [{"match": {"safe_regex": {"regex": "(["}}, "route": {"cluster": "b"}}])])
    nack = xds.wait_nack(ROUTE, since=m, timeout=5 * T)
    assert nack["error_detail"]["message"] and "r1" in nack["error_detail"]["message"]
    assert upstream_of(port) == "a" and upstream_of(port, "/b") == "b"
    m = xds.mark()
    xds.set(ROUTE, [route_config("r1", [("/", "b")])])
    xds.wait_ack(ROUTE, since=m, timeout=5 * T)
    wait_upstream(port, "b", timeout=5 * T)


def test_delta_reconnect_sends_initial_resource_versions(xds_server, legate, ports, upstream):
    xds, lg, port, ups, v = start(xds_server, legate, ports, upstream)
    for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE):
        xds.wait_ack(t, timeout=5 * T)
    expect_versions = {t: xds.resource_versions(t) for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE)}
    old_stream = xds.open_streams()[0]["id"]
    m = xds.mark()
    xds.close_streams("UNAVAILABLE")
    for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE):
        rec = xds.wait_request(lambda r, t=t: r["type_url"] == t and r["kind"] == "initial" and
                               r["stream"] != old_stream, since=m, timeout=15 * T, what=f"resubscription of {t}")
        assert rec["initial_resource_versions"] == expect_versions[t], t
    assert upstream_of(port) == "a", "nothing changed: traffic as before"
    wait_stat(lg, "control_plane.connected_state", lambda x: x == 1, timeout=5 * T)
    # What the client already has is not resent; a real change is.
    resent = [r for r in xds.responses(since=m) if r["resources"]]
    assert resent == [], f"resources resent after reconnect: {resent}"
    m = xds.mark()
    xds.set(ROUTE, [route_config("r1", [("/", "b")])])
    xds.wait_ack(ROUTE, since=m, timeout=5 * T)
    wait_upstream(port, "b", timeout=5 * T)
