"""ECDS (extension config discovery) for HTTP filters over ADS: an http_filters entry
with config_discovery subscribes the TypedExtensionConfig of its name; the listener warms
until it arrives (unless apply_default_config_without_warming); a version whose type is not
in type_urls is NACKed; a stream without any config gets Envoy's 500 (NFCF); /config_dump
shows ecds_filters.

The only HTTP filter Legate has is the router, so the discovered filter is a router: what
is observable is the subscription, warming, ACK/NACK, stats and the dump, and that traffic
flows through the discovered config.
"""
from lib import config as cfg
from lib.legate import time_scale
from lib.wait import wait_for
from lib.xds import (EXTENSION_CONFIG, LISTENER, ads_bootstrap, ads_source, cla, config_dump, eds_cluster,  # noqa: F401
                     get, rds_listener, refused, route_config, upstream_of, wait_stat, wait_upstream, xds_server)

T = time_scale()
NAME = "dyn-router"


def dyn_filter(name=NAME, default=False, without_warming=False, source=None, type_urls=(cfg.ROUTER_TYPE,)):
    cd = {"config_source": source or ads_source(), "type_urls": list(type_urls)}
    if default:
        cd["default_config"] = {"@type": cfg.ROUTER_TYPE}
    if without_warming:
        cd["apply_default_config_without_warming"] = True
    return {"name": name, "config_discovery": cd}


def ext(name=NAME, type_url=cfg.ROUTER_TYPE, **fields):
    return {"name": name, "typed_config": {"@type": type_url, **fields}}


def start(xds_server, legate, ports, upstream, filt, extensions=None, wait_ready=True):
    a = upstream("a")
    xds = xds_server()
    admin_port, port = ports(2)
    v = xds.update(clusters=[eds_cluster("a")], endpoints=[cla("a", [a.port])],
                   listeners=[rds_listener("ingress", port, "r1", http_filters=[filt])],
                   routes=[route_config("r1", [("/", "a")])],
                   extension_configs=list(extensions or []))
    lg = legate(ads_bootstrap(admin_port, xds), wait_ready=wait_ready)
    return xds, lg, port, v


def test_listener_warms_until_extension_config_arrives(xds_server, legate, ports, upstream):
    xds, lg, port, v = start(xds_server, legate, ports, upstream, dyn_filter(), wait_ready=False)
    req = xds.wait_request(lambda r: r["type_url"] == EXTENSION_CONFIG, timeout=5 * T)
    assert req["resource_names"] == [NAME], "ECDS subscribes the filter's name"
    wait_for(lambda: lg.admin.get("/ready").status == 503, timeout=5 * T, what="not ready while the filter warms")
    assert refused(port), "the listener warms until its filter config arrives"
    v2 = xds.set(EXTENSION_CONFIG, [ext()])
    xds.wait_ack(EXTENSION_CONFIG, v2, timeout=5 * T)
    lg.wait_ready(timeout=10 * T)
    wait_upstream(port, "a", timeout=5 * T)
    s = lg.admin.stats()
    assert s[f"extension_config_discovery.http_filter.{NAME}.config_reload"] == 1
    assert s[f"extension_config_discovery.http_filter.{NAME}.update_success"] >= 1
    dump = config_dump(lg)["EcdsConfigDump"]["ecds_filters"]
    assert len(dump) == 1 and dump[0]["version_info"] == v2
    assert dump[0]["ecds_filter"]["name"] == NAME
    assert dump[0]["ecds_filter"]["typed_config"]["@type"] == cfg.ROUTER_TYPE


def test_new_version_applied_and_wrong_type_nacked(xds_server, legate, ports, upstream):
    xds, lg, port, v = start(xds_server, legate, ports, upstream, dyn_filter(), extensions=[ext()])
    xds.wait_ack(EXTENSION_CONFIG, v[EXTENSION_CONFIG], timeout=5 * T)
    wait_upstream(port, "a", timeout=5 * T)
    m = xds.mark()
    v2 = xds.set(EXTENSION_CONFIG, [ext(suppress_envoy_headers=True)])
    xds.wait_ack(EXTENSION_CONFIG, v2, since=m, timeout=5 * T)
    assert wait_stat(lg, f"extension_config_discovery.http_filter.{NAME}.config_reload", lambda x: x == 2) == 2
    assert upstream_of(port) == "a"
    # A config whose type is not in type_urls is rejected; the previous one stays in use.
    m = xds.mark()
    xds.set(EXTENSION_CONFIG, [ext(type_url="type.googleapis.com/envoy.extensions.filters.http.router.v3.Nope")])
    nack = xds.wait_nack(EXTENSION_CONFIG, since=m, timeout=5 * T)
    msg = nack["error_detail"]["message"]
    assert nack["version_info"] == v2
    assert NAME in msg and "but expect envoy.extensions.filters.http.router.v3.Router" in msg, msg
    assert all(upstream_of(port) == "a" for _ in range(5))
    s = lg.admin.stats()
    assert s[f"extension_config_discovery.http_filter.{NAME}.config_fail"] >= 1
    dump = config_dump(lg)["EcdsConfigDump"]["ecds_filters"][0]
    assert dump["version_info"] == v2 and "error_state" in dump


def test_default_config_without_warming(xds_server, legate, ports, upstream):
    xds, lg, port, v = start(xds_server, legate, ports, upstream, dyn_filter(default=True, without_warming=True))
    wait_upstream(port, "a", timeout=5 * T)  # the default config serves before any ECDS response
    assert "EcdsConfigDump" not in config_dump(lg)


def test_no_config_after_initial_fetch_timeout_is_500_nfcf(xds_server, legate, ports, upstream):
    filt = dyn_filter(source=ads_source(initial_fetch_timeout="1s"))
    xds, lg, port, v = start(xds_server, legate, ports, upstream, filt, wait_ready=False)
    lg.wait_ready(timeout=10 * T)
    wait_for(lambda: not refused(port), timeout=5 * T, what="the listener active after the timeout")
    status, headers, _ = get(port)
    assert status == 500, "Envoy's MissingConfigFilter: no config, no default"
    assert lg.admin.stats()[f"extension_config_discovery.http_filter.{NAME}.init_fetch_timeout"] == 1
    # Once a config arrives, new streams use it.
    v2 = xds.set(EXTENSION_CONFIG, [ext()])
    xds.wait_ack(EXTENSION_CONFIG, v2, timeout=5 * T)
    wait_upstream(port, "a", timeout=5 * T)


def test_bad_config_discovery_rejects_listener(xds_server, legate, ports, upstream):
    xds, lg, port, v = start(xds_server, legate, ports, upstream, dyn_filter(), extensions=[ext()])
    m = xds.mark()
    bad = dyn_filter(type_urls=["type.googleapis.com/envoy.extensions.filters.http.nope.v3.Nope"])
    xds.set(LISTENER, [rds_listener("ingress", port, "r1", http_filters=[bad])])
    nack = xds.wait_nack(LISTENER, since=m, timeout=5 * T)
    assert "no factory found for a required type URL" in nack["error_detail"]["message"], nack
    assert upstream_of(port) == "a"
