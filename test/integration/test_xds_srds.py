"""SRDS (scoped routes discovery) over ADS: an HCM with scoped_routes.scoped_rds subscribes
ScopedRouteConfiguration (a wildcard subscription, as Envoy does), then RDS for the
route_configuration_name of each scope (on rds_config_source); a request's scope key
(built from a header by the scope_key_builder) selects the scope, hence the route table.
No matching scope: Envoy's 404 with response flag NR.
"""
import pytest

from lib import config as cfg
from lib.legate import time_scale
from lib.xds import (ROUTE, SCOPED_ROUTE, ads_bootstrap, ads_source, cla, eds_cluster, get, route_config,  # noqa: F401
                     wait_status, wait_upstream, xds_server)

T = time_scale()
HEADER = "x-tenant"


def scoped_listener(name, port, scopes_name="scopes"):
    """A listener whose HCM takes its scopes from SRDS: the key is the value of t= in x-tenant."""
    h = {
        "@type": cfg.HCM_TYPE,
        "stat_prefix": name,
        "codec_type": "AUTO",
        "scoped_routes": {
            "name": scopes_name,
            "scope_key_builder": {"fragments": [{"header_value_extractor": {
                "name": HEADER, "element_separator": ";", "element": {"key": "t", "separator": "="}}}]},
            "rds_config_source": ads_source(),
            "scoped_rds": {"scoped_rds_config_source": ads_source()},
        },
        "http_filters": [cfg.router_filter()],
    }
    return cfg.listener(name, port, [{"name": "envoy.filters.network.http_connection_manager", "typed_config": h}])


def scope(name, key, route):
    return {"name": name, "route_configuration_name": route, "key": {"fragments": [{"string_key": key}]}}


def tenant(port, t, path="/"):
    status, headers, _ = get(port, path, headers={HEADER: f"x=1;t={t}"})
    return headers.get("x-upstream") if status == 200 else f"status {status}"


def wait_tenant(port, t, want, timeout):
    from lib.wait import wait_for

    wait_for(lambda: tenant(port, t) == want, timeout=timeout, what=f"tenant {t} -> {want}")


def start(xds_server, legate, ports, upstream, api_type="GRPC"):
    ups = {n: upstream(n) for n in "ab"}
    xds = xds_server()
    admin_port, port = ports(2)
    v = xds.update(clusters=[eds_cluster(n) for n in "ab"], endpoints=[cla(n, [u.port]) for n, u in ups.items()],
                   listeners=[scoped_listener("ingress", port)],
                   routes=[route_config("ra", [("/", "a")]), route_config("rb", [("/", "b")])],
                   scoped_routes=[scope("scope-a", "a", "ra"), scope("scope-b", "b", "rb")])
    lg = legate(ads_bootstrap(admin_port, xds, api_type=api_type))
    return xds, lg, port, v


@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"], ids=["sotw", "delta"])
def test_scopes_select_route_configurations(xds_server, legate, ports, upstream, api_type):
    xds, lg, port, v = start(xds_server, legate, ports, upstream, api_type)
    if api_type == "GRPC":
        xds.wait_ack(SCOPED_ROUTE, v[SCOPED_ROUTE], timeout=5 * T)
        first = xds.requests(SCOPED_ROUTE, kind="initial")[0]
        assert first["resource_names"] in ([], ["*"]), "SRDS subscribes by wildcard"
        xds.wait_request(lambda r: r["type_url"] == ROUTE and sorted(r["resource_names"] or []) == ["ra", "rb"],
                         timeout=5 * T, what="RDS for every scope's route configuration")
    assert tenant(port, "a") == "a"
    assert tenant(port, "b") == "b"
    status, headers, _ = get(port, "/", headers={HEADER: "t=c"})
    assert status == 404, "no scope for the key: Envoy routes with an empty config (NR)"
    assert get(port, "/")[0] == 404, "no key at all: no scope"
    assert lg.admin.stats()["http.ingress.no_route"] >= 2
    from lib.xds import config_dump

    dyn = config_dump(lg)["ScopedRoutesConfigDump"]["dynamic_scoped_route_configs"]
    assert [g["name"] for g in dyn] == ["scopes"], "grouped by ScopedRoutes.name"
    assert sorted(c["name"] for c in dyn[0]["scoped_route_configs"]) == ["scope-a", "scope-b"]
    assert dyn[0]["version_info"] == v[SCOPED_ROUTE] or api_type != "GRPC"


def test_scope_update_moves_traffic_and_removal(xds_server, legate, ports, upstream):
    xds, lg, port, v = start(xds_server, legate, ports, upstream)
    assert tenant(port, "b") == "b"
    # scope-b now names ra: tenant b moves to a.
    m = xds.mark()
    v2 = xds.set(SCOPED_ROUTE, [scope("scope-a", "a", "ra"), scope("scope-b", "b", "ra")])
    xds.wait_ack(SCOPED_ROUTE, v2, since=m, timeout=5 * T)
    wait_tenant(port, "b", "a", timeout=5 * T)
    # A new scope whose route configuration arrives later: its key matches once RDS delivers it.
    m = xds.mark()
    v3 = xds.update(scoped_routes=[scope("scope-a", "a", "ra"), scope("scope-b", "b", "ra"), scope("scope-c", "c", "rc")],
                    routes=[route_config("ra", [("/", "a")]), route_config("rb", [("/", "b")]),
                            route_config("rc", [("/", "b")])])
    xds.wait_ack(SCOPED_ROUTE, v3[SCOPED_ROUTE], since=m, timeout=5 * T)
    wait_tenant(port, "c", "b", timeout=5 * T)
    # SotW: a scope missing from the response is removed.
    m = xds.mark()
    v4 = xds.set(SCOPED_ROUTE, [scope("scope-a", "a", "ra")])
    xds.wait_ack(SCOPED_ROUTE, v4, since=m, timeout=5 * T)
    wait_tenant(port, "b", "status 404", timeout=5 * T)
    wait_tenant(port, "c", "status 404", timeout=5 * T)
    assert tenant(port, "a") == "a"


def test_conflicting_scope_keys_nacked(xds_server, legate, ports, upstream):
    xds, lg, port, v = start(xds_server, legate, ports, upstream)
    m = xds.mark()
    xds.set(SCOPED_ROUTE, [scope("scope-a", "a", "ra"), scope("scope-b", "b", "rb"), scope("scope-x", "a", "rb")])
    nack = xds.wait_nack(SCOPED_ROUTE, since=m, timeout=5 * T)
    assert nack["version_info"] == v[SCOPED_ROUTE]
    assert "scope key conflict" in nack["error_detail"]["message"], nack
    assert tenant(port, "a") == "a" and tenant(port, "b") == "b"


SRDS_STATS = "http.ingress.scoped_rds.scopes."


def srds_stats(lg):
    s = lg.admin.stats()
    return {k[len(SRDS_STATS):]: v for k, v in s.items() if k.startswith(SRDS_STATS)}


def test_srds_subscription_stats(xds_server, legate, ports, upstream):
    """Envoy's http.<stat_prefix>.scoped_rds.<name>. stats: the subscription's (update_attempt,
    update_success, update_rejected, version_text ...) and ScopedRdsStats (config_reload,
    all_scopes, active_scopes, on_demand_scopes, config_reload_time_ms)."""
    xds, lg, port, v = start(xds_server, legate, ports, upstream)
    xds.wait_ack(SCOPED_ROUTE, v[SCOPED_ROUTE], timeout=5 * T)
    s = srds_stats(lg)
    assert set(s) >= {"init_fetch_timeout", "update_attempt", "update_failure", "update_rejected", "update_success",
                      "update_time", "version", "version_text", "config_reload", "update_empty", "all_scopes",
                      "active_scopes", "on_demand_scopes", "config_reload_time_ms"}, sorted(s)
    assert s["update_success"] >= 1 and s["update_rejected"] == 0 and s["update_failure"] == 0
    assert s["update_attempt"] == s["update_success"], s
    assert s["config_reload"] == s["update_success"], "each accepted response reloads the scopes"
    assert (s["all_scopes"], s["active_scopes"], s["on_demand_scopes"]) == (2, 2, 0)
    assert s["version_text"].strip('"') == v[SCOPED_ROUTE] and s["version"] != 0
    assert s["update_time"] > 0 and s["config_reload_time_ms"] > 0
    accepted = s["update_success"]

    # A rejected response (two scopes with one key) counts as rejected and changes nothing else.
    m = xds.mark()
    xds.set(SCOPED_ROUTE, [scope("scope-a", "a", "ra"), scope("scope-b", "b", "rb"), scope("scope-x", "a", "rb")])
    xds.wait_nack(SCOPED_ROUTE, since=m, timeout=5 * T)
    s = srds_stats(lg)
    assert s["update_rejected"] == 1 and s["update_success"] == accepted and s["config_reload"] == accepted, s
    assert s["update_attempt"] == accepted + 1
    assert s["version_text"].strip('"') == v[SCOPED_ROUTE], "a rejected version is not taken"
    assert s["all_scopes"] == 2

    # An accepted response with an on-demand scope: the gauges follow the scope set.
    m = xds.mark()
    lazy = dict(scope("scope-c", "c", "rb"), on_demand=True)
    v2 = xds.set(SCOPED_ROUTE, [scope("scope-a", "a", "ra"), scope("scope-b", "b", "rb"), lazy])
    xds.wait_ack(SCOPED_ROUTE, v2, since=m, timeout=5 * T)
    s = srds_stats(lg)
    assert s["update_success"] == accepted + 1 and s["config_reload"] == accepted + 1 and s["update_rejected"] == 1, s
    assert (s["all_scopes"], s["active_scopes"], s["on_demand_scopes"]) == (3, 2, 1)
    assert s["version_text"].strip('"') == v2
    prom = lg.admin.get("/stats/prometheus").text
    want = 'envoy_http_scoped_rds_scopes_config_reload{envoy_http_conn_manager_prefix="ingress"} %d' % (accepted + 1)
    assert want in prom.splitlines(), "Prometheus: the stat prefix is a tag, the rest the name"


def test_scope_route_configurations_count_in_rds_stats(xds_server, legate, ports, upstream):
    """The route configurations that scopes name count in http.<stat_prefix>.rds.<name>., as
    Envoy's scoped RDS makes their RDS providers with the HCM's stat prefix."""
    xds, lg, port, v = start(xds_server, legate, ports, upstream)
    xds.wait_ack(ROUTE, v[ROUTE], timeout=5 * T)
    wait_tenant(port, "a", "a", 5 * T)
    s = lg.admin.stats()
    for rc in ("ra", "rb"):
        assert s[f"http.ingress.rds.{rc}.update_success"] >= 1, sorted(k for k in s if ".rds." in k)
        assert s[f"http.ingress.rds.{rc}.update_rejected"] == 0
    before = s["http.ingress.rds.ra.update_success"]
    m = xds.mark()
    v2 = xds.upsert(ROUTE, [route_config("ra", [("/", "b")])])
    xds.wait_ack(ROUTE, v2, since=m, timeout=5 * T)
    wait_tenant(port, "a", "b", 5 * T)
    s = lg.admin.stats()
    assert s["http.ingress.rds.ra.update_success"] == before + 1
    text = lg.admin.get("/stats?filter=http.ingress.rds.ra.version_text").text
    assert f'"{v2}"' in text, text
