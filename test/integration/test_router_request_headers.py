"""The request headers the router replaces or reads (src/filters/http/router.c,
one pass over the downstream request's headers), as Envoy's router does:
- x-envoy-expected-rq-timeout-ms sent by the client is replaced by the
  router's own value, never duplicated;
- x-envoy-original-path is set to the downstream path when the route
  rewrites it (a client-sent one is replaced) and passed through otherwise;
- te is hop-by-hop: only "te: trailers" goes upstream.
"""
from lib import config as cfg
from lib.rawhttp import RawHTTP
from lib.upstream import header_values


def upstream_view(lg, path, headers):
    with RawHTTP("127.0.0.1", lg.listener_port()) as c:
        c.request("GET", path, headers=headers)
        r = c.read_response()
    assert r.status == 200, r
    return r.json()


def start(legate, ports, up):
    routes = [cfg.route("backend", prefix="/api/", prefix_rewrite="/v2/"), cfg.route("backend", timeout="7s")]
    boot = cfg.simple_proxy(ports(), ports(), [up.port])
    boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"][
        "virtual_hosts"][0]["routes"] = routes
    return legate(boot)


def test_client_timeout_header_is_replaced(legate, ports, upstream):
    lg = start(legate, ports, upstream())
    rec = upstream_view(lg, "/x", {"x-envoy-expected-rq-timeout-ms": "1", "x-other": "kept"})
    assert header_values(rec, "x-envoy-expected-rq-timeout-ms") == ["7000"]
    assert header_values(rec, "x-other") == ["kept"]


def test_original_path_set_on_rewrite_and_passed_otherwise(legate, ports, upstream):
    lg = start(legate, ports, upstream())
    rec = upstream_view(lg, "/api/users?a=1", {"x-envoy-original-path": "/forged"})
    assert rec["path"] == "/v2/users?a=1"
    assert header_values(rec, "x-envoy-original-path") == ["/api/users?a=1"]
    rec = upstream_view(lg, "/plain", {"x-envoy-original-path": "/client"})
    assert rec["path"] == "/plain" and header_values(rec, "x-envoy-original-path") == ["/client"]


def test_te_only_trailers_goes_upstream(legate, ports, upstream):
    lg = start(legate, ports, upstream())
    rec = upstream_view(lg, "/x", {"te": "trailers, deflate", "connection": "te"})
    assert header_values(rec, "te") == ["trailers"]
    rec = upstream_view(lg, "/x", {"te": "deflate", "connection": "te"})
    assert header_values(rec, "te") == []
