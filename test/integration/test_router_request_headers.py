"""The request headers the router replaces or reads (src/filters/http/router.c,
one pass over the downstream request's headers), as Envoy's router does:
- x-envoy-expected-rq-timeout-ms sent by the client is replaced by the
  router's own value, never duplicated;
- x-envoy-original-path is set to the downstream path when the route
  rewrites it (a client-sent one is replaced) and passed through otherwise;
- te is hop-by-hop: only "te: trailers" goes upstream.
"""
import socket

from lib import config as cfg
from lib.ports import free_port
from lib.rawhttp import RawHTTP
from lib.upstream import header_values
from lib.wait import wait_for


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


def proxy_with(legate, ports, up, routes, vhost_extra=None, rc_extra=None, **hcm_extra):
    rc = cfg.route_config([cfg.vhost("v", routes, **(vhost_extra or {}))], **(rc_extra or {}))
    return legate(cfg.bootstrap(ports(), listeners=[cfg.http_listener("ingress", ports(), rc, **hcm_extra)],
                                clusters=[cfg.cluster("backend", [up.port])]))


def test_attempt_count_headers(legate, ports, upstream):
    """include_request_attempt_count: each attempt carries x-envoy-attempt-count (1, 2, ...);
    include_attempt_count_in_response: the response says how many there were."""
    up = upstream()
    routes = [cfg.route("backend", retry_policy={"retry_on": "5xx", "num_retries": 2})]
    lg = proxy_with(legate, ports, up, routes,
                    vhost_extra={"include_request_attempt_count": True, "include_attempt_count_in_response": True})
    with RawHTTP("127.0.0.1", lg.listener_port()) as c:
        c.request("GET", "/flaky/attempts/1", headers={"x-envoy-attempt-count": "forged"})
        r = c.read_response()
    assert r.status == 200 and r.header("x-envoy-attempt-count") == "2"
    assert [header_values(rec, "x-envoy-attempt-count") for rec in up.requests] == [["1"], ["2"]]
    plain = proxy_with(legate, ports, up, [cfg.route("backend")])
    rec = upstream_view(plain, "/x", {})
    assert header_values(rec, "x-envoy-attempt-count") == []


def test_internal_only_headers_leave_external_requests(legate, ports, upstream):
    """The route configuration's internal_only_headers are removed from requests that are not
    internal (Envoy's cleanInternalHeaders), kept on internal ones (x-envoy-internal: true)."""
    up = upstream()
    rc_extra = {"internal_only_headers": ["x-internal-secret"]}
    routes = [cfg.route("backend")]
    external = proxy_with(legate, ports, up, routes, rc_extra=rc_extra)  # no use_remote_address, no XFF
    rec = upstream_view(external, "/x", {"x-internal-secret": "1", "x-other": "2"})
    assert header_values(rec, "x-internal-secret") == [] and header_values(rec, "x-other") == ["2"]
    internal = proxy_with(legate, ports, up, routes, rc_extra=rc_extra, use_remote_address=True,
                          internal_address_config={"cidr_ranges": [{"address_prefix": "127.0.0.0", "prefix_len": 8}]})
    rec = upstream_view(internal, "/x", {"x-internal-secret": "1"})
    assert header_values(rec, "x-envoy-internal") == ["true"]
    assert header_values(rec, "x-internal-secret") == ["1"]


def test_append_x_forwarded_host(legate, ports, upstream):
    """append_x_forwarded_host: a host rewrite appends the original host to x-forwarded-host."""
    up = upstream()
    routes = [cfg.route("backend", prefix="/keep", host_rewrite_literal="rewritten.example"),
              cfg.route("backend", host_rewrite_literal="rewritten.example", append_x_forwarded_host=True)]
    lg = proxy_with(legate, ports, up, routes)
    with RawHTTP("127.0.0.1", lg.listener_port()) as c:
        for path, headers in (("/a", {}), ("/b", {"x-forwarded-host": "first.example"}), ("/keep", {})):
            c.request("GET", path, headers=headers, host="orig.example")
            assert c.read_response().status == 200
    xfh = {rec["path"]: header_values(rec, "x-forwarded-host") for rec in up.requests}
    assert xfh == {"/a": ["orig.example"], "/b": ["first.example,orig.example"], "/keep": []}
    assert all(header_values(rec, "host") == ["rewritten.example"] for rec in up.requests)


def test_request_mirroring(legate, ports, upstream):
    """request_mirror_policies: a copy of each request (body included) goes to the shadow cluster
    with "-shadow" added to its host; the client gets the primary's response only, and a shadow
    that fails does not touch it."""
    main, shadow = upstream("main"), upstream("shadow")
    hang = socket.create_server(("127.0.0.1", 0))  # takes connections, never answers: a copy in flight at exit
    rc = cfg.route_config([cfg.vhost("v", [
        cfg.route("backend", prefix="/off", request_mirror_policies=[
            {"cluster": "shadow", "runtime_fraction": {"default_value": {"numerator": 0}}}]),
        cfg.route("backend", prefix="/dead", request_mirror_policies=[{"cluster": "dead"}]),
        cfg.route("backend", prefix="/hang", request_mirror_policies=[{"cluster": "hang"}]),
        cfg.route("backend", request_mirror_policies=[{"cluster": "shadow"}]),
    ])])
    lg = legate(cfg.bootstrap(ports(), listeners=[cfg.http_listener("ingress", ports(), rc)],
                              clusters=[cfg.cluster("backend", [main.port]), cfg.cluster("shadow", [shadow.port]),
                                        cfg.cluster("dead", [free_port()]), cfg.cluster("hang", [hang.getsockname()[1]])]))
    body = b"mirrored body " * 1000
    with RawHTTP("127.0.0.1", lg.listener_port()) as c:
        c.request("GET", "/get", host="svc.example:8080")
        r = c.read_response()
        assert r.status == 200 and r.header("x-upstream") == "main"
        c.request("POST", "/post", body=body, host="svc.example")
        assert c.read_response().status == 200
        c.request("GET", "/off", host="svc.example")
        assert c.read_response().status == 200
        c.request("GET", "/dead", host="svc.example")
        assert c.read_response().status == 200
        c.request("GET", "/hang", host="svc.example")
        assert c.read_response().status == 200
    shadow.wait_requests(2, timeout=10)
    seen = {rec["path"]: rec for rec in shadow.requests}
    assert sorted(seen) == ["/get", "/post"]
    assert header_values(seen["/get"], "host") == ["svc.example-shadow:8080"]
    assert header_values(seen["/post"], "host") == ["svc.example-shadow"]
    assert seen["/post"]["body_len"] == len(body) and seen["/post"]["method"] == "POST"
    assert sorted(rec["path"] for rec in main.requests) == ["/dead", "/get", "/hang", "/off", "/post"]
    wait_for(lambda: lg.admin.stat("cluster.dead.upstream_cx_connect_fail") == 1, timeout=5, what="the dead shadow tried")
    wait_for(lambda: lg.admin.stat("cluster.hang.upstream_rq_active") == 1, timeout=5, what="the hanging copy sent")
    assert lg.stop() == []  # drops the copy still in flight: a clean exit (no leak under the sanitizer)
    hang.close()


def test_retry_or_shadow_abandoned(legate, ports, upstream):
    """A request body over the listener's buffer limit cannot be kept for a retry or a mirror:
    the request still goes through, the copy is dropped, and Envoy's
    cluster.<name>.retry_or_shadow_abandoned counts it once per request."""
    main, shadow = upstream("main"), upstream("shadow")
    policy = {"retry_on": "5xx", "num_retries": 1}
    rc = cfg.route_config([cfg.vhost("v", [
        cfg.route("backend", prefix="/retry", retry_policy=policy),
        cfg.route("backend", retry_policy=policy, request_mirror_policies=[{"cluster": "shadow"}]),
    ])])
    listener = cfg.http_listener("ingress", ports(), rc, listener_extra={"per_connection_buffer_limit_bytes": 16384})
    lg = legate(cfg.bootstrap(ports(), listeners=[listener],
                              clusters=[cfg.cluster("backend", [main.port]), cfg.cluster("shadow", [shadow.port])]))
    with RawHTTP("127.0.0.1", lg.listener_port()) as c:
        c.request("POST", "/small", body=b"s" * 1000)
        assert c.read_response().status == 200
        c.request("POST", "/large", body=b"l" * 100000)
        assert c.read_response().status == 200
        c.request("POST", "/retry/large", body=b"r" * 100000)
        assert c.read_response().status == 200
    shadow.wait_requests(1, timeout=10)
    assert [rec["path"] for rec in shadow.requests] == ["/small"]
    assert {rec["path"]: rec["body_len"] for rec in main.requests} == {"/small": 1000, "/large": 100000,
                                                                      "/retry/large": 100000}
    s = lg.admin.stats()
    assert s["cluster.backend.retry_or_shadow_abandoned"] == 2, s["cluster.backend.retry_or_shadow_abandoned"]
    assert s["cluster.shadow.retry_or_shadow_abandoned"] == 0


def test_is_timeout_retry_header(legate, ports, upstream):
    """include_is_timeout_retry_header: each retry says whether a per-try timeout caused it."""
    up = upstream()
    policy = {"retry_on": "5xx", "num_retries": 1, "per_try_timeout": "0.3s"}
    routes = [cfg.route("backend", timeout="10s", retry_policy=policy)]
    lg = proxy_with(legate, ports, up, routes, vhost_extra={"include_is_timeout_retry_header": True})
    with RawHTTP("127.0.0.1", lg.listener_port()) as c:
        c.request("GET", "/flaky/itr/1")
        assert c.read_response().status == 200
        c.request("GET", "/delay/2000")
        assert c.read_response().status == 504
    up.wait_requests(4, timeout=10)
    seen = [(rec["path"], header_values(rec, "x-envoy-is-timeout-retry")) for rec in up.requests]
    assert seen == [("/flaky/itr/1", []), ("/flaky/itr/1", ["false"]), ("/delay/2000", []), ("/delay/2000", ["true"])]
