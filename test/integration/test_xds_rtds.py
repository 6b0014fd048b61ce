"""Runtime (Envoy's layered_runtime) and RTDS over ADS: layers from the bootstrap
(static, admin, rtds), GET /runtime, POST /runtime_modify, runtime_fraction routes
whose runtime_key takes its value from the runtime, ACK/NACK of Runtime resources,
and the Resource wrapper's TTL.

Envoy's runtime docs are the specification: later layers override earlier ones; a
runtime_fraction's runtime_key overrides its default_value (an integer is a
percentage); an RTDS layer subscribes the Runtime resource named by rtds_layer.name.
"""
import pytest

from lib.legate import time_scale
from lib.wait import wait_for
from lib.xds import (RUNTIME, ROUTE, ads_bootstrap, ads_source, cla, eds_cluster, rds_listener, route_config,  # noqa: F401
                     upstream_of, wait_stat, wait_upstream, xds_server)

T = time_scale()
KEY = "routing.to_b"


def fraction_routes(name="r1", key=KEY):
    """Route "/" to b while the runtime fraction of `key` (default 0%) admits the request, else to a."""
    to_b = {"match": {"prefix": "/", "runtime_fraction": {
        "default_value": {"numerator": 0, "denominator": "HUNDRED"}, "runtime_key": key}},
        "route": {"cluster": "b"}}
    return route_config(name, [to_b, ("/", "a")])


def layers(static=None, admin=True, rtds=("rtds-layer",), rtds_source=None):
    out = []
    if static is not None:
        out.append({"name": "static", "static_layer": static})
    for n in rtds:
        out.append({"name": n, "rtds_layer": {"name": n, "rtds_config": rtds_source or ads_source()}})
    if admin:
        out.append({"name": "admin", "admin_layer": {}})
    return {"layers": out}


def start(xds_server, legate, ports, upstream, runtime=None, layered=None, api_type="GRPC", ttl=None):
    """A control plane with listener -> r1 (fraction routes) -> clusters a, b, and Runtime
    resources `runtime` ({name: layer}); a Legate with the `layered` runtime (ready)."""
    ups = {n: upstream(n) for n in "ab"}
    xds = xds_server()
    admin_port, port = ports(2)
    v = xds.update(clusters=[eds_cluster(n) for n in "ab"], endpoints=[cla(n, [u.port]) for n, u in ups.items()],
                   listeners=[rds_listener("ingress", port, "r1")], routes=[fraction_routes()],
                   runtimes=[{"name": n, "layer": layer} for n, layer in (runtime or {}).items()])
    if ttl is not None:  # only the Runtime resources carry it
        v[RUNTIME] = xds.set(RUNTIME, [{"name": n, "layer": layer} for n, layer in runtime.items()], ttl=ttl)
    boot = ads_bootstrap(admin_port, xds, api_type=api_type)
    boot["layered_runtime"] = layered if layered is not None else layers()
    lg = legate(boot)
    return xds, lg, port, v


def runtime(lg):
    r = lg.admin.get("/runtime")
    assert r.status == 200 and r.header("content-type", "").startswith("application/json"), r
    return r.json()


def test_rtds_value_steers_runtime_fraction_route(xds_server, legate, ports, upstream):
    xds, lg, port, v = start(xds_server, legate, ports, upstream, runtime={"rtds-layer": {KEY: 0}})
    xds.wait_ack(RUNTIME, v[RUNTIME], timeout=5 * T)
    assert all(upstream_of(port) == "a" for _ in range(5)), "0%: the fraction route never matches"
    m = xds.mark()
    v2 = xds.set(RUNTIME, [{"name": "rtds-layer", "layer": {KEY: 100}}])
    ack = xds.wait_ack(RUNTIME, v2, since=m, timeout=5 * T)
    assert ack["resource_names"] == ["rtds-layer"]
    wait_upstream(port, "b", timeout=5 * T)
    assert all(upstream_of(port) == "b" for _ in range(5)), "100 (a percentage): always"
    rt = runtime(lg)
    assert rt["layers"] == ["rtds-layer", "admin"]
    assert rt["entries"][KEY] == {"final_value": "100", "layer_values": ["100", ""]}
    s = lg.admin.stats()
    assert s["runtime.num_keys"] == 1 and s["runtime.num_layers"] == 2
    assert s["runtime.load_success"] >= 2
    assert s["runtime.update_success"] >= 2, "RTDS subscription stats live under runtime."
    # A fractional percent value, as Envoy's runtime accepts it: 0 of a million.
    m = xds.mark()
    v3 = xds.set(RUNTIME, [{"name": "rtds-layer", "layer": {KEY: {"numerator": 0, "denominator": "MILLION"}}}])
    xds.wait_ack(RUNTIME, v3, since=m, timeout=5 * T)
    wait_upstream(port, "a", timeout=5 * T)


def test_layering_static_rtds_admin_and_runtime_modify(xds_server, legate, ports, upstream):
    static = {KEY: 100, "some": {"nested": {"flag": True}}, "text": "hello"}
    xds, lg, port, v = start(xds_server, legate, ports, upstream, runtime={"rtds-layer": {"text": "from-rtds"}},
                             layered=layers(static=static))
    xds.wait_ack(RUNTIME, v[RUNTIME], timeout=5 * T)
    wait_upstream(port, "b", timeout=5 * T)  # the static layer's 100%
    rt = runtime(lg)
    assert rt["layers"] == ["static", "rtds-layer", "admin"]
    assert rt["entries"]["some.nested.flag"]["final_value"] == "true", "nested structs flatten to dotted keys"
    assert rt["entries"]["text"] == {"final_value": "from-rtds", "layer_values": ["hello", "from-rtds", ""]}
    # The admin layer overrides every layer below it.
    r = lg.admin.post(f"/runtime_modify?{KEY}=0&text=from-admin")
    assert r.status == 200 and r.text.strip() == "OK", r
    rt = runtime(lg)
    assert rt["entries"][KEY] == {"final_value": "0", "layer_values": ["100", "", "0"]}
    assert rt["entries"]["text"]["final_value"] == "from-admin"
    wait_upstream(port, "a", timeout=5 * T)
    assert lg.admin.stats()["runtime.admin_overrides_active"] == 2
    # An empty value removes the override: the static layer's value is back.
    assert lg.admin.post(f"/runtime_modify?{KEY}=").status == 200
    assert runtime(lg)["entries"][KEY]["final_value"] == "100"
    wait_upstream(port, "b", timeout=5 * T)
    assert lg.admin.stats()["runtime.admin_overrides_active"] == 1
    assert lg.admin.get(f"/runtime_modify?{KEY}=1").status == 405, "runtime_modify mutates: POST only"
    assert lg.admin.post("/runtime_modify").status == 400


def test_runtime_modify_without_admin_layer(xds_server, legate, ports, upstream):
    xds, lg, port, v = start(xds_server, legate, ports, upstream, runtime={"rtds-layer": {}},
                             layered=layers(admin=False))
    r = lg.admin.post(f"/runtime_modify?{KEY}=100")
    assert r.status == 503 and "No admin layer specified" in r.text, r
    assert runtime(lg)["entries"] == {}


def test_bad_runtime_nacked_and_previous_values_kept(xds_server, legate, ports, upstream):
    xds, lg, port, v = start(xds_server, legate, ports, upstream, runtime={"rtds-layer": {KEY: 100}})
    wait_upstream(port, "b", timeout=5 * T)
    m = xds.mark()
    xds.set(RUNTIME, [{"name": "rtds-layer", "layer": {KEY: 0, "bad.key": [1, 2]}}])
    nack = xds.wait_nack(RUNTIME, since=m, timeout=5 * T)
    assert nack["version_info"] == v[RUNTIME], "a NACK carries the last good version"
    assert "bad.key" in nack["error_detail"]["message"], nack
    assert runtime(lg)["entries"][KEY]["final_value"] == "100", "a rejected layer changes nothing"
    assert all(upstream_of(port) == "b" for _ in range(5))
    s = lg.admin.stats()
    assert s["runtime.load_error"] >= 1 and s["runtime.update_rejected"] >= 1


def test_rtds_initial_fetch_gates_cds(xds_server, legate, ports, upstream):
    """Envoy starts CDS once RTDS has its first version (or initial_fetch_timeout passed)."""
    ups = {n: upstream(n) for n in "ab"}
    xds = xds_server()
    admin_port, port = ports(2)
    xds.update(clusters=[eds_cluster(n) for n in "ab"], endpoints=[cla(n, [u.port]) for n, u in ups.items()],
               listeners=[rds_listener("ingress", port, "r1")], routes=[fraction_routes()])
    boot = ads_bootstrap(admin_port, xds)
    boot["layered_runtime"] = layers(rtds_source=ads_source(initial_fetch_timeout="30s"))
    lg = legate(boot, wait_ready=False)
    xds.wait_request(lambda r: r["type_url"] == RUNTIME, timeout=5 * T)
    from lib.xds import CLUSTER

    assert not xds.requests(CLUSTER), "no CDS request before RTDS delivered"
    v = xds.set(RUNTIME, [{"name": "rtds-layer", "layer": {KEY: 100}}])
    xds.wait_ack(RUNTIME, v, timeout=5 * T)
    lg.wait_ready(timeout=10 * T)
    wait_upstream(port, "b", timeout=5 * T)


# ---- Resource TTL ----------------------------------------------------------------------------------


@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"], ids=["sotw", "delta"])
def test_ttl_expiry_removes_runtime_and_heartbeats_keep_it(xds_server, legate, ports, upstream, api_type):
    """A resource in a Resource wrapper with a ttl is removed when the ttl passes without a
    refresh; a heartbeat (the wrapper without a body, same version) refreshes it."""
    import time

    xds, lg, port, v = start(xds_server, legate, ports, upstream, runtime={"rtds-layer": {KEY: 100}},
                             api_type=api_type, ttl=1)
    xds.wait_ack(RUNTIME, v[RUNTIME], timeout=5 * T)
    wait_upstream(port, "b", timeout=5 * T)
    # Heartbeats every 0.25 s for 2.5 TTLs keep the layer.
    end = time.monotonic() + 2.5
    while time.monotonic() < end:
        assert xds.heartbeat(RUNTIME) == ["rtds-layer"]
        time.sleep(0.25)
        assert KEY in runtime(lg)["entries"], "a heartbeat refreshes the TTL"
    assert any(r["heartbeat"] for r in xds.responses(RUNTIME))
    # Without them the TTL expires: the layer is emptied, the route's default (0%) is back.
    wait_for(lambda: KEY not in runtime(lg)["entries"], timeout=5 * T, what="the runtime key removed at TTL expiry")
    wait_upstream(port, "a", timeout=5 * T)
    # A new version brings it back.
    m = xds.mark()
    v2 = xds.set(RUNTIME, [{"name": "rtds-layer", "layer": {KEY: 100, "round": 2}}])
    xds.wait_ack(RUNTIME, v2, since=m, timeout=5 * T)
    wait_upstream(port, "b", timeout=5 * T)


def test_ttl_expiry_removes_route_configuration(xds_server, legate, ports, upstream):
    """TTL works for every type: an RDS route configuration that expires is removed (404, as
    Envoy answers without routes)."""
    xds, lg, port, v = start(xds_server, legate, ports, upstream, runtime={"rtds-layer": {}})
    m = xds.mark()
    from lib.xds import wait_status

    v2 = xds.set(ROUTE, [route_config("r1", [("/", "a")])], ttl=1)
    xds.wait_ack(ROUTE, v2, since=m, timeout=5 * T)
    wait_status(port, 404, timeout=10 * T)
