"""Scoped routes (HttpConnectionManager.scoped_routes) from a static bootstrap, no xDS.

Envoy's rules (source/common/router/scoped_config_impl.cc, scoped_rds.cc): the
scope_key_builder builds a key from request headers, one fragment per
header_value_extractor; the route table is the one of the scope whose
key.fragments tuple equals the request's key exactly. A fragment that cannot
be extracted, or a key no scope has, leaves the request with an empty route
config: 404 with an empty body, response flag NR, http.<prefix>.no_route.
Inline scopes (scoped_route_configurations_list) must carry their own
route_configuration; route_configuration_name is refused there, and two scopes
with the same key are rejected.
"""

import pytest

from lib import config as cfg
from lib.legate import run_legate, write_yaml
from lib.rawhttp import RawHTTP
from lib.upstream import header_value
from lib.wait import wait_for

FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"


def extractor(name, index=None, element_separator=None, element=None):
    e = {"name": name}
    if element_separator is not None:
        e["element_separator"] = element_separator
    if element is not None:
        e["element"] = element
    else:
        e["index"] = index or 0
    return {"header_value_extractor": e}


def scope(name, keys, routes, rc_name=None):
    rc = cfg.route_config([cfg.vhost(f"{name}-vh", routes)], name=rc_name or f"{name}-routes")
    return {"name": name, "key": {"fragments": [{"string_key": k} for k in keys]}, "route_configuration": rc}


def direct(body, status=200, prefix="/"):
    return {"match": {"prefix": prefix}, "direct_response": {"status": status, "body": {"inline_string": body}}}


def scoped_hcm(fragments, scopes, access_log=None):
    typed = {
        "@type": cfg.HCM_TYPE,
        "stat_prefix": "ingress_http",
        "scoped_routes": {
            "name": "tenants",
            "scope_key_builder": {"fragments": fragments},
            "scoped_route_configurations_list": {"scoped_route_configurations": scopes},
        },
        "http_filters": [cfg.router_filter()],
    }
    if access_log is not None:
        typed["access_log"] = access_log
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": typed}


def scoped_bootstrap(ports, fragments, scopes, clusters=(), access_log=None):
    return cfg.bootstrap(ports(), listeners=[cfg.listener("l", ports(), [scoped_hcm(fragments, scopes, access_log)])],
                         clusters=list(clusters))


def fetch(lg, path="/", headers=None):
    with RawHTTP("127.0.0.1", lg.listener_port()) as c:
        c.request("GET", path, headers=headers or {}, host="example.com")
        return c.read_response()


TENANT_ELEMENT = [extractor("x-route", element_separator=";", element={"separator": "=", "key": "tenant"})]


def test_scope_picked_by_header_element(legate, ports, upstream, tmp_path):
    up = upstream()
    log = tmp_path / "access.log"
    access_log = [{"name": "envoy.access_loggers.file",
                   "typed_config": {"@type": FILE_LOG, "path": str(log),
                                    "log_format": {"text_format_source": {
                                        "inline_string": "%RESPONSE_CODE% %RESPONSE_FLAGS%\n"}}}}]
    globex_route = cfg.route("backend", route_extra={
        "request_headers_to_add": [{"header": {"key": "x-scope", "value": "globex"}}]})
    scopes = [scope("acme", ["acme"], [direct("acme")]), scope("globex", ["globex"], [globex_route])]
    lg = legate(scoped_bootstrap(ports, TENANT_ELEMENT, scopes, clusters=[cfg.cluster("backend", [up.port])],
                                 access_log=access_log), args=["--file-flush-interval-msec", "100"])

    r = fetch(lg, headers={"x-route": "tenant=acme"})
    assert (r.status, r.text) == (200, "acme")
    r = fetch(lg, headers={"x-route": "a=1;tenant=globex;tenant=acme"})
    assert r.status == 200
    assert header_value(r.json(), "x-scope") == "globex"
    assert len(up.requests) == 1

    for headers in ({"x-route": "tenant=initech"}, {"x-route": "tenant"}, {"x-route": "Tenant=acme"}, {}):
        r = fetch(lg, headers=headers)
        assert (r.status, r.body) == (404, b""), headers
    wait_for(lambda: lg.admin.stat("http.ingress_http.no_route") == 4, timeout=5,
             what="http.ingress_http.no_route == 4")
    lines = wait_for(lambda: (lambda ls: ls if len(ls) >= 6 else None)(log.read_text().splitlines()
                                                                       if log.exists() else []),
                     timeout=10, what="6 access log lines")
    assert sorted(lines) == ["200 -"] * 2 + ["404 NR"] * 4, lines  # workers flush their own buffers


def test_key_is_the_exact_fragment_tuple(legate, ports):
    fragments = [extractor("x-a"), extractor(":authority", element_separator=".", index=0)]
    scopes = [scope("one-two", ["1", "2"], [direct("one-two")]), scope("two-one", ["2", "1"], [direct("two-one")])]
    lg = legate(scoped_bootstrap(ports, fragments, scopes))

    def get(a, host):
        with RawHTTP("127.0.0.1", lg.listener_port()) as c:
            c.request("GET", "/", headers={"x-a": a} if a is not None else {}, host=host)
            r = c.read_response()
            return r.text if r.status == 200 else f"<{r.status}>"

    assert get("1", "2.example.com") == "one-two"
    assert get("2", "1.example.com") == "two-one"
    assert get("1", "1.example.com") == "<404>"
    assert get(None, "2.example.com") == "<404>"


def validate(tmp_path, doc):
    path = tmp_path / "boot.yaml"
    write_yaml(path, doc)
    r = run_legate(["--mode", "validate", "-c", str(path)])
    return r.returncode, r.stdout + r.stderr


def test_inline_scoped_routes_validate(tmp_path, ports):
    scopes = [scope("acme", ["acme"], [direct("acme")]), scope("globex", ["globex"], [direct("globex")])]
    rc, out = validate(tmp_path, scoped_bootstrap(ports, TENANT_ELEMENT, scopes))
    assert rc == 0, out


@pytest.mark.parametrize("case", ["conflict", "rds_name", "no_route_configuration", "index", "cluster"])
def test_scoped_routes_config_errors(tmp_path, ports, case):
    fragments, scopes = TENANT_ELEMENT, [scope("a", ["k"], [direct("a")]), scope("b", ["j"], [direct("b")])]
    want = None
    if case == "conflict":
        scopes[1]["key"]["fragments"][0]["string_key"] = "k"
        want = "scope key conflict found, first scope is 'a', second scope is 'b'"
    elif case == "rds_name":
        scopes[1]["route_configuration_name"] = "rds-b"
        want = "scoped_route_configurations[1].route_configuration_name: Fetching routes via RDS"
    elif case == "no_route_configuration":
        del scopes[0]["route_configuration"]
        want = "scoped_route_configurations[0].route_configuration: You must specify a route_configuration"
    elif case == "index":
        fragments = [extractor("x-route", index=2)]
        want = "scoped_routes.scope_key_builder.fragments[0].header_value_extractor.index: Index > 0"
    elif case == "cluster":
        scopes[0]["route_configuration"]["virtual_hosts"][0]["routes"] = [cfg.route("nowhere")]
        want = "unknown cluster 'nowhere'"
    rc, out = validate(tmp_path, scoped_bootstrap(ports, fragments, scopes))
    assert rc == 1, out
    assert want in out, out


def test_config_dump_keeps_scoped_routes(legate, ports):
    scopes = [scope("acme", ["acme"], [direct("acme")])]
    lg = legate(scoped_bootstrap(ports, TENANT_ELEMENT, scopes))
    r = lg.admin.get("/config_dump")
    assert r.status == 200
    listeners = next(c for c in r.json()["configs"] if c["@type"].endswith(".ListenersConfigDump"))
    hcm = listeners["static_listeners"][0]["listener"]["filter_chains"][0]["filters"][0]
    scoped = hcm["typed_config"]["scoped_routes"]
    assert scoped["name"] == "tenants"
    assert scoped["scoped_route_configurations_list"]["scoped_route_configurations"][0]["key"] == {
        "fragments": [{"string_key": "acme"}]}
