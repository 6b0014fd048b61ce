"""Virtual host and route matching, route actions and header mutations.

Envoy's rules checked here (route_components.proto and route.proto comments):
domain search order exact > suffix wildcard (longest first) > prefix
wildcard > "*"; the port in :authority takes part in matching unless
ignore_port_in_host_matching or strip_any_host_port; routes are tried in
order, first match wins; no matching route is a 404 with an empty body.
"""
import re

import pytest

from lib import config as cfg
from lib.rawhttp import RawHTTP
from lib.upstream import header_value, header_values
from lib.wait import wait_for


def direct(body, status=200):
    return {"direct_response": {"status": status, "body": {"inline_string": body}}}


def droute(body, match):
    return {"match": match, **direct(body)}


def fetch(lg, path, host="example.com", headers=None, method="GET"):
    with RawHTTP("127.0.0.1", lg.listener_port()) as c:
        c.request(method, path, headers=headers or {}, host=host)
        return c.read_response(head=method == "HEAD")


def mismatches(lg, cases):
    """cases: [(host, path, headers, expected_body)] -> list of failures (empty when all matched)."""
    bad = []
    for host, path, headers, want in cases:
        r = fetch(lg, path, host=host, headers=headers)
        got = r.text if r.status == 200 else f"<{r.status}>"
        if got != want:
            bad.append(f"{host}{path} {headers or ''}: got {got!r}, want {want!r}")
    return bad


DOMAIN_VHOSTS = [
    cfg.vhost("exact", [droute("exact", {"prefix": "/"})], domains=["exact.example.com"]),
    cfg.vhost("suffix", [droute("suffix", {"prefix": "/"})], domains=["*.wild.example.com"]),
    cfg.vhost("longer-suffix", [droute("longer-suffix", {"prefix": "/"})], domains=["*.deep.wild.example.com"]),
    cfg.vhost("prefix", [droute("prefix", {"prefix": "/"})], domains=["prefix.*"]),
    cfg.vhost("port", [droute("port", {"prefix": "/"})], domains=["port.example.com:8443"]),
    cfg.vhost("default", [droute("default", {"prefix": "/"})], domains=["*"]),
]


def test_domain_matching_order(legate, ports):
    lg = legate(cfg.bootstrap(ports(), listeners=[cfg.http_listener("l", ports(), cfg.route_config(DOMAIN_VHOSTS))]))
    cases = [
        ("exact.example.com", "exact"),
        ("EXACT.Example.COM", "exact"),
        ("a.wild.example.com", "suffix"),
        ("x.y.wild.example.com", "suffix"),
        ("x.deep.wild.example.com", "longer-suffix"),
        ("wild.example.com", "default"),
        ("prefix.anything.org", "prefix"),
        ("port.example.com:8443", "port"),
        ("port.example.com", "default"),
        ("exact.example.com:9999", "default"),
        ("unknown.org", "default"),
    ]
    assert mismatches(lg, [(h, "/", None, want) for h, want in cases]) == []


def test_ignore_port_in_host_matching(legate, ports):
    rc = cfg.route_config(DOMAIN_VHOSTS, ignore_port_in_host_matching=True)
    lg = legate(cfg.bootstrap(ports(), listeners=[cfg.http_listener("l", ports(), rc)]))
    assert mismatches(lg, [("exact.example.com:9999", "/", None, "exact"),
                           ("a.wild.example.com:1", "/", None, "suffix")]) == []


def test_strip_any_host_port_matches_and_rewrites_host(legate, ports, upstream):
    up = upstream()
    rc = cfg.route_config([cfg.vhost("exact", [cfg.route("backend")], domains=["exact.example.com"])])
    lg = legate(cfg.bootstrap(ports(), listeners=[cfg.http_listener("l", ports(), rc, strip_any_host_port=True)],
                              clusters=[cfg.cluster("backend", [up.port])]))
    r = fetch(lg, "/", host="exact.example.com:9999")
    assert r.status == 200
    assert header_value(r.json(), "host") == "exact.example.com"


def test_no_matching_vhost_or_route_is_404(legate, ports):
    rc = cfg.route_config([cfg.vhost("only", [droute("only", {"prefix": "/only"})], domains=["only.example.com"])])
    lg = legate(cfg.bootstrap(ports(), listeners=[cfg.http_listener("l", ports(), rc)]))
    r1 = fetch(lg, "/only", host="other.example.com")
    r2 = fetch(lg, "/elsewhere", host="only.example.com")
    for r in (r1, r2):
        assert r.status == 404
        assert r.body == b""
    assert fetch(lg, "/only", host="only.example.com").text == "only"
    wait_for(lambda: lg.admin.stat("http.ingress_http.no_route") == 2, timeout=3,
             what="http.ingress_http.no_route == 2")
    assert lg.admin.stat("http.ingress_http.downstream_rq_4xx") == 2


def _hm(name, **kw):
    return {"name": name, **kw}


MATCH_ROUTES = [
    droute("path", {"path": "/exact"}),
    droute("regex", {"safe_regex": {"regex": "^/re/[0-9]+$"}}),
    droute("sep", {"path_separated_prefix": "/sep"}),
    droute("caseless", {"prefix": "/CaseLess", "case_sensitive": False}),
    droute("h-exact", {"prefix": "/hdr/", "headers": [_hm("x-m", string_match={"exact": "yes"})]}),
    droute("h-prefix", {"prefix": "/hdr/", "headers": [_hm("x-p", string_match={"prefix": "abc"})]}),
    droute("h-suffix", {"prefix": "/hdr/", "headers": [_hm("x-s", string_match={"suffix": "xyz"})]}),
    droute("h-contains", {"prefix": "/hdr/", "headers": [_hm("x-c", string_match={"contains": "mid"})]}),
    droute("h-regex", {"prefix": "/hdr/",
                       "headers": [_hm("x-r", string_match={"safe_regex": {"regex": "^v[0-9]+$"}})]}),
    droute("h-present", {"prefix": "/hdr/", "headers": [_hm("x-present", present_match=True)]}),
    droute("h-range", {"prefix": "/hdr/", "headers": [_hm("x-num", range_match={"start": "10", "end": "20"})]}),
    droute("h-none", {"prefix": "/hdr/"}),
    droute("h-invert", {"prefix": "/inv/", "headers": [_hm("x-inv", string_match={"exact": "no"}, invert_match=True)]}),
    droute("inv-none", {"prefix": "/inv/"}),
    droute("q-exact", {"prefix": "/q", "query_parameters": [{"name": "debug", "string_match": {"exact": "1"}}]}),
    droute("q-present", {"prefix": "/q", "query_parameters": [{"name": "flag", "present_match": True}]}),
    droute("q-none", {"prefix": "/q"}),
    droute("prefix", {"prefix": "/pre/"}),
]


def test_route_matchers_first_match_wins(legate, ports):
    rc = cfg.route_config([cfg.vhost("v", MATCH_ROUTES)])
    lg = legate(cfg.bootstrap(ports(), listeners=[cfg.http_listener("l", ports(), rc)]))
    h = "example.com"
    cases = [
        (h, "/exact", None, "path"),
        (h, "/exact?x=1", None, "path"),
        (h, "/exact/more", None, "<404>"),
        (h, "/re/123", None, "regex"),
        (h, "/re/12a", None, "<404>"),
        (h, "/sep", None, "sep"),
        (h, "/sep/x", None, "sep"),
        (h, "/sep?x=1", None, "sep"),
        (h, "/sepx", None, "<404>"),
        (h, "/caseless/a", None, "caseless"),
        (h, "/CASELESS", None, "caseless"),
        (h, "/hdr/a", {"x-m": "yes"}, "h-exact"),
        (h, "/hdr/a", {"x-m": "yes!"}, "h-none"),
        (h, "/hdr/a", {"x-p": "abcdef"}, "h-prefix"),
        (h, "/hdr/a", {"x-s": "wxyz"}, "h-suffix"),
        (h, "/hdr/a", {"x-c": "amidb"}, "h-contains"),
        (h, "/hdr/a", {"x-r": "v42"}, "h-regex"),
        (h, "/hdr/a", {"x-r": "v42x"}, "h-none"),
        (h, "/hdr/a", {"x-present": ""}, "h-present"),
        (h, "/hdr/a", {"x-num": "15"}, "h-range"),
        (h, "/hdr/a", {"x-num": "20"}, "h-none"),
        (h, "/hdr/a", None, "h-none"),
        (h, "/inv/a", {"x-inv": "yes"}, "h-invert"),
        (h, "/inv/a", {"x-inv": "no"}, "inv-none"),
        # A missing header never matches, inverted or not (treat_missing_header_as_empty is false).
        (h, "/inv/a", None, "inv-none"),
        (h, "/q?debug=1", None, "q-exact"),
        (h, "/q?debug=2&flag", None, "q-present"),
        (h, "/q?debug=2", None, "q-none"),
        (h, "/pre/x", None, "prefix"),
        (h, "/pre", None, "<404>"),
    ]
    assert mismatches(lg, cases) == []


def _proxy_with_routes(legate, ports, routes, clusters, vhost_extra=None, rc_extra=None):
    rc = cfg.route_config([cfg.vhost("v", routes, **(vhost_extra or {}))], **(rc_extra or {}))
    return legate(cfg.bootstrap(ports(), listeners=[cfg.http_listener("l", ports(), rc)], clusters=clusters))


def test_weighted_clusters_split(legate, ports, upstream):
    a, b = upstream("a"), upstream("b")
    routes = [cfg.route(weighted_clusters={"clusters": [{"name": "ca", "weight": 50}, {"name": "cb", "weight": 50}]})]
    lg = _proxy_with_routes(legate, ports, routes, [cfg.cluster("ca", [a.port]), cfg.cluster("cb", [b.port])])
    seen = {"a": 0, "b": 0}
    with RawHTTP("127.0.0.1", lg.listener_port()) as c:
        for _ in range(40):
            c.request("GET", "/w")
            seen[c.read_response().json()["server"]] += 1
    assert seen["a"] > 0 and seen["b"] > 0, seen
    wait_for(lambda: lg.admin.stat("cluster.ca.upstream_rq_total") == seen["a"], timeout=3,
             what=f"cluster.ca.upstream_rq_total == {seen['a']}")


def test_cluster_header(legate, ports, upstream):
    a, b = upstream("a"), upstream("b")
    routes = [cfg.route(cluster_header="x-target-cluster")]
    lg = _proxy_with_routes(legate, ports, routes, [cfg.cluster("ca", [a.port]), cfg.cluster("cb", [b.port])])
    assert fetch(lg, "/", headers={"x-target-cluster": "cb"}).json()["server"] == "b"
    assert fetch(lg, "/", headers={"x-target-cluster": "ca"}).json()["server"] == "a"


def test_path_rewrites_and_host_rewrites(legate, ports, upstream):
    up = upstream()
    ep = cfg.endpoint(up.port)
    ep["endpoint"]["hostname"] = "backend-a.internal"
    routes = [
        cfg.route("backend", prefix="/api/", prefix_rewrite="/v2/"),
        cfg.route("backend", prefix="/service/", regex_rewrite={
            "pattern": {"regex": "^/service/([^/]+)(/.*)$"}, "substitution": "\\2/instance/\\1"}),
        cfg.route("backend", prefix="/hostrw", host_rewrite_literal="rewritten.example"),
        cfg.route("backend", prefix="/autohost", auto_host_rewrite=True),
    ]
    lg = _proxy_with_routes(legate, ports, routes, [cfg.cluster("backend", [ep])])
    assert fetch(lg, "/api/users?x=1").json()["path"] == "/v2/users?x=1"
    assert fetch(lg, "/service/foo/v1/api").json()["path"] == "/v1/api/instance/foo"
    rec = fetch(lg, "/hostrw/p", host="orig.example").json()
    assert rec["path"] == "/hostrw/p" and header_value(rec, "host") == "rewritten.example"
    assert header_value(fetch(lg, "/autohost", host="orig.example").json(), "host") == "backend-a.internal"


def test_redirects(legate, ports):
    routes = [
        {"match": {"prefix": "/secure"}, "redirect": {"https_redirect": True}},
        {"match": {"prefix": "/moved"}, "redirect": {"path_redirect": "/new-path", "response_code": "FOUND"}},
        {"match": {"prefix": "/elsewhere"}, "redirect": {"host_redirect": "other.example"}},
    ]
    lg = _proxy_with_routes(legate, ports, routes, [])
    r = fetch(lg, "/secure/x", host="secure.example")
    assert r.status == 301 and r.header("location") == "https://secure.example/secure/x"
    r = fetch(lg, "/moved/old", host="redir.example")
    assert r.status == 302 and r.header("location") == "http://redir.example/new-path"
    r = fetch(lg, "/elsewhere/p", host="redir.example")
    assert r.status == 301 and r.header("location") == "http://other.example/elsewhere/p"


def test_direct_responses(legate, ports):
    routes = [
        {"match": {"prefix": "/hello"}, **direct("hello")},
        {"match": {"prefix": "/down"}, **direct("maintenance", status=503)},
        {"match": {"prefix": "/empty"}, "direct_response": {"status": 204}},
    ]
    lg = _proxy_with_routes(legate, ports, routes, [])
    r = fetch(lg, "/hello")
    assert r.status == 200 and r.body == b"hello" and r.header("content-length") == "5"
    r = fetch(lg, "/down")
    assert r.status == 503 and r.body == b"maintenance"
    assert fetch(lg, "/empty").status == 204


def _hv(key, value, action=None):
    opt = {"header": {"key": key, "value": value}}
    if action:
        opt["append_action"] = action
    return opt


def test_header_mutations_at_every_level(legate, ports, upstream):
    up = upstream()
    routes = [cfg.route("backend", route_extra={
        "request_headers_to_add": [
            _hv("x-client-addr", "%DOWNSTREAM_REMOTE_ADDRESS%"),
            _hv("x-client-ip", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"),
            _hv("x-route", "route"),
            _hv("x-tag", "proxy"),
            _hv("x-over", "proxy", "OVERWRITE_IF_EXISTS_OR_ADD"),
        ],
        "request_headers_to_remove": ["x-remove-me"],
        "response_headers_to_add": [_hv("x-resp-route", "route")],
        "response_headers_to_remove": ["x-upstream"],
    })]
    lg = _proxy_with_routes(
        legate, ports, routes, [cfg.cluster("backend", [up.port])],
        vhost_extra={"request_headers_to_add": [_hv("x-vhost", "vhost")],
                     "response_headers_to_add": [_hv("x-resp-vhost", "vhost")]},
        rc_extra={"request_headers_to_add": [_hv("x-rc", "rc")],
                  "response_headers_to_add": [_hv("x-resp-rc", "rc")]})
    with RawHTTP("127.0.0.1", lg.listener_port()) as c:
        c.request("GET", "/m", headers=[("x-remove-me", "1"), ("x-tag", "client"), ("x-over", "client")])
        r = c.read_response()
        client_port = c.local_port
    assert r.status == 200
    rec = r.json()
    assert header_value(rec, "x-client-addr") == f"127.0.0.1:{client_port}"
    assert header_value(rec, "x-client-ip") == "127.0.0.1"
    assert (header_value(rec, "x-route"), header_value(rec, "x-vhost"), header_value(rec, "x-rc")) == (
        "route", "vhost", "rc")
    assert header_values(rec, "x-remove-me") == []
    tags = [t.strip() for v in header_values(rec, "x-tag") for t in v.split(",")]
    assert sorted(tags) == ["client", "proxy"], tags
    assert header_values(rec, "x-over") == ["proxy"]
    assert (r.header("x-resp-route"), r.header("x-resp-vhost"), r.header("x-resp-rc")) == ("route", "vhost", "rc")
    assert r.header("x-upstream") is None


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_direct_response_any_method(legate, ports, method):
    lg = _proxy_with_routes(legate, ports, [{"match": {"prefix": "/"}, **direct("ok")}], [])
    r = fetch(lg, "/", method=method)
    assert r.status == 200 and r.body == b"ok"
    assert re.match(r"^\d+$", r.header("content-length", ""))
