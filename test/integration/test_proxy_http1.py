"""HTTP/1.1 downstream to HTTP/1.1 upstream, as Envoy proxies it.

Envoy behaviour checked here (source/common/http/conn_manager_utility.cc,
source/common/router/router.cc, the HCM docs):
- x-forwarded-proto is set to the downstream scheme when absent; with
  use_remote_address it is overwritten.
- x-forwarded-for is only appended with use_remote_address: true.
- x-request-id: a UUID v4 is generated when absent; an edge request (one
  from an untrusted client while use_remote_address is true) gets a new id
  unless preserve_external_request_id is set; generate_request_id: false
  generates none.
- The router sends x-envoy-expected-rq-timeout-ms (15000 by default) upstream
  and adds x-envoy-upstream-service-time to the response.
- The server header is overwritten with "envoy" (or server_name); date is set.
- Expect: 100-continue is answered by the proxy itself and not forwarded.
"""
import email.utils
import hashlib
import json
import re
import subprocess
import time

import pytest

from lib import config as cfg
from lib.clients import curl
from lib.legate import sanitized
from lib.rawhttp import RawHTTP
from lib.upstream import header_value, header_values, pattern, pattern_chunks, pattern_sha256
from lib.wait import wait_for

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def start(legate, ports, upstreams, **kw):
    return legate(cfg.simple_proxy(ports(), ports(), [u.port for u in upstreams], **kw))


def raw(lg):
    return RawHTTP("127.0.0.1", lg.listener_port())


def stats_reach(lg, expected, timeout=3.0):
    """Waits until every stat in expected has exactly that value; returns the stats."""
    def check():
        s = lg.admin.stats()
        return s if all(s.get(k) == v for k, v in expected.items()) else None

    try:
        return wait_for(check, timeout=timeout, what=f"stats {expected}")
    except AssertionError:
        s = lg.admin.stats()
        assert {k: s.get(k) for k in expected} == expected


def test_get_through_with_curl(legate, ports, upstream):
    up = upstream("a")
    lg = start(legate, ports, [up])
    r = curl(lg.url("/hello?x=1"), headers=["X-Custom: value-1"])
    assert r.rc == 0 and r.status == 200, r
    body = r.json()
    assert body["method"] == "GET" and body["path"] == "/hello?x=1"
    assert header_value(body, "x-custom") == "value-1"
    assert header_value(body, "host") == f"127.0.0.1:{lg.listener_port()}"
    assert r.header("x-upstream") == "a"


def test_post_body_with_curl(legate, ports, upstream):
    up = upstream()
    lg = start(legate, ports, [up])
    data = bytes(range(256)) * 40
    r = curl(lg.url("/post"), data=data, headers=["Content-Type: application/octet-stream"])
    assert r.status == 200, r
    body = r.json()
    assert body["method"] == "POST"
    assert body["body_len"] == len(data)
    assert body["body_sha256"] == hashlib.sha256(data).hexdigest()


def test_keepalive_reused_on_both_sides(legate, ports, upstream):
    up = upstream()
    lg = start(legate, ports, [up])
    with raw(lg) as c:
        conn_ids = []
        for i in range(5):
            c.request("GET", f"/ka/{i}")
            r = c.read_response()
            assert r.status == 200
            conn_ids.append(r.json()["conn_id"])
    assert len(set(conn_ids)) == 1, f"upstream connections used: {conn_ids}"
    stats_reach(lg, {
        "http.ingress_http.downstream_cx_total": 1,
        "http.ingress_http.downstream_rq_total": 5,
        "http.ingress_http.downstream_rq_2xx": 5,
        "cluster.backend.upstream_cx_total": 1,
        "cluster.backend.upstream_rq_total": 5,
    })


def test_pipelined_requests_answered_in_order(legate, ports, upstream):
    up = upstream()
    lg = start(legate, ports, [up])
    with raw(lg) as c:
        c.send(b"".join(b"GET /pipe/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(3)))
        paths = [c.read_response().json()["path"] for _ in range(3)]
    assert paths == ["/pipe/0", "/pipe/1", "/pipe/2"]


def test_chunked_request_body(legate, ports, upstream):
    up = upstream()
    lg = start(legate, ports, [up])
    chunks = [b"a" * 100, b"b" * 5000, b"c" * 1]
    wire = b"".join(b"%x\r\n%s\r\n" % (len(ch), ch) for ch in chunks) + b"0\r\n\r\n"
    with raw(lg) as c:
        c.send(b"POST /chunked-up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + wire)
        r = c.read_response()
    assert r.status == 200
    assert r.json()["body_sha256"] == hashlib.sha256(b"".join(chunks)).hexdigest()


def test_chunked_response_body(legate, ports, upstream):
    up = upstream()
    lg = start(legate, ports, [up])
    with raw(lg) as c:
        c.request("GET", "/chunked/300000")
        r = c.read_response()
    assert r.status == 200
    assert r.header("transfer-encoding") == "chunked"
    assert r.header("content-length") is None
    assert r.body == pattern(300000)


def test_expect_100_continue_answered_by_proxy(legate, ports, upstream):
    up = upstream()
    lg = start(legate, ports, [up])
    body = b"x" * 2000
    with raw(lg) as c:
        c.send(b"POST /expect HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\nExpect: 100-continue\r\n\r\n")
        interim = c.read_response(stop_at_interim=True, timeout=5)
        assert interim.status == 100
        c.send(body)
        r = c.read_response()
    assert r.status == 200
    rec = r.json()
    assert rec["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert header_value(rec, "expect") is None


def test_head_has_no_body_and_keeps_framing(legate, ports, upstream):
    up = upstream()
    lg = start(legate, ports, [up])
    with raw(lg) as c:
        c.request("HEAD", "/bytes/1000")
        r = c.read_response(head=True)
        assert r.status == 200 and r.header("content-length") == "1000"
        c.request("GET", "/after-head")
        r = c.read_response()
        assert r.status == 200 and r.json()["path"] == "/after-head"


def test_connection_close_closes(legate, ports, upstream):
    up = upstream()
    lg = start(legate, ports, [up])
    with raw(lg) as c:
        c.request("GET", "/bye", headers={"Connection": "close"})
        r = c.read_response()
        assert r.status == 200
        assert (r.header("connection") or "").lower() == "close"
        assert c.closed_by_peer(timeout=5)


def test_absolute_form_target(legate, ports, upstream):
    up = upstream()
    lg = start(legate, ports, [up])
    with raw(lg) as c:
        c.send(b"GET http://abs.example/abs?q=1 HTTP/1.1\r\nHost: abs.example\r\n\r\n")
        r = c.read_response()
    assert r.status == 200
    rec = r.json()
    assert rec["path"] == "/abs?q=1"
    assert header_value(rec, "host") == "abs.example"


@pytest.mark.deadline(180)
def test_large_upload_streams_64MiB(legate, ports, upstream):
    up = upstream()
    lg = start(legate, ports, [up])
    n = 64 << 20
    with RawHTTP("127.0.0.1", lg.listener_port(), timeout=120) as c:
        c.send(b"PUT /big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % n)
        for chunk in pattern_chunks(n, 1 << 20):
            c.send(chunk)
        r = c.read_response(timeout=120)
    assert r.status == 200
    assert r.json()["body_len"] == n
    assert r.json()["body_sha256"] == pattern_sha256(n)


@pytest.mark.deadline(180)
def test_large_download_streams_64MiB(legate, ports, upstream):
    up = upstream()
    lg = start(legate, ports, [up])
    n = 64 << 20
    h = hashlib.sha256()
    with RawHTTP("127.0.0.1", lg.listener_port(), timeout=120) as c:
        c.request("GET", f"/bytes/{n}")
        r = c.read_response(timeout=120, sink=h.update)
    assert r.status == 200
    assert r.header("content-length") == str(n)
    assert h.hexdigest() == pattern_sha256(n) == r.header("x-body-sha256")


def _peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


@pytest.mark.skipif(sanitized(), reason="ASan's allocator decides the RSS")
@pytest.mark.deadline(180)
def test_streaming_is_buffered_in_bounded_pieces(legate, ports, upstream, tmp_path):
    """64 MiB each way through a fast client: the proxy reads a body at most
    64 KiB at a time and stops at per_connection_buffer_limit_bytes (1 MiB) of
    unconsumed bytes, so its peak RSS grows by about that limit. A proxy that
    reads a socket until EAGAIN (libh2o's default) takes the kernel's whole
    receive buffer per wake-up, several MiB from a fast peer."""
    up = upstream()
    lg = start(legate, ports, [up])
    url = f"http://127.0.0.1:{lg.listener_port()}"
    n = 64 << 20
    assert curl(f"{url}/warm").status == 200
    with open(f"/proc/{lg.proc.pid}/clear_refs", "w") as f:
        f.write("5")  # the peak so far is start-up's: measure from the current RSS
    before = _peak_rss_kib(lg.proc.pid)
    p = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", f"{url}/bytes/{n}"],
                       capture_output=True, text=True, timeout=120)
    assert p.stdout == f"200 {n}"
    body = tmp_path / "zeros"
    with open(body, "wb") as f:
        f.truncate(n)
    p = subprocess.run(["curl", "-s", "-H", "Expect:", "-T", str(body), f"{url}/sink"],
                       capture_output=True, text=True, timeout=120)
    rec = json.loads(p.stdout)
    assert (rec["body_len"], rec["body_sha256"]) == (n, hashlib.sha256(bytes(n)).hexdigest())
    grown = _peak_rss_kib(lg.proc.pid) - before
    assert grown < 4096, f"peak RSS grew by {grown} KiB"


def _upstream_view(lg, headers=None, path="/hdr"):
    with raw(lg) as c:
        c.request("GET", path, headers=headers or {})
        r = c.read_response()
    assert r.status == 200, r
    return r, r.json()


def test_default_forwarding_headers(legate, ports, upstream):
    up = upstream()
    lg = start(legate, ports, [up])
    _, rec = _upstream_view(lg)
    assert header_value(rec, "x-forwarded-proto") == "http"
    assert header_values(rec, "x-forwarded-for") == []  # use_remote_address is false by default
    assert UUID4.match(header_value(rec, "x-request-id", "")), rec["headers"]
    assert header_value(rec, "x-envoy-expected-rq-timeout-ms") == "15000"


def test_client_forwarded_proto_kept_without_use_remote_address(legate, ports, upstream):
    up = upstream()
    lg = start(legate, ports, [up])
    _, rec = _upstream_view(lg, {"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.1"})
    assert header_value(rec, "x-forwarded-proto") == "https"
    assert header_values(rec, "x-forwarded-for") == ["198.51.100.1"]


def test_use_remote_address_appends_xff_and_overwrites_proto(legate, ports, upstream):
    up = upstream()
    lg = start(legate, ports, [up], use_remote_address=True)
    _, rec = _upstream_view(lg, {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"})
    xff = [p.strip() for p in ",".join(header_values(rec, "x-forwarded-for")).split(",")]
    assert xff[0] == "203.0.113.7" and len(xff) == 2, xff
    assert re.match(r"^[0-9.]+$|^[0-9a-f:]+$", xff[1]), xff
    assert header_value(rec, "x-forwarded-proto") == "http"
    assert header_value(rec, "x-envoy-external-address") == "127.0.0.1"


def test_request_id_generated_when_absent_and_unique(legate, ports, upstream):
    up = upstream()
    lg = start(legate, ports, [up])
    ids = [header_value(_upstream_view(lg)[1], "x-request-id") for _ in range(2)]
    assert all(UUID4.match(i or "") for i in ids), ids
    assert ids[0] != ids[1]


def test_request_id_from_internal_client_preserved(legate, ports, upstream):
    up = upstream()
    lg = start(legate, ports, [up])
    _, rec = _upstream_view(lg, {"X-Request-Id": "client-supplied-id"})
    assert header_value(rec, "x-request-id") == "client-supplied-id"


def test_request_id_from_edge_client_regenerated(legate, ports, upstream):
    up = upstream()
    lg = start(legate, ports, [up], use_remote_address=True)
    # A client-supplied XFF makes the request external (more than one address after appending).
    _, rec = _upstream_view(lg, {"X-Request-Id": "client-supplied-id", "X-Forwarded-For": "203.0.113.7"})
    rid = header_value(rec, "x-request-id")
    assert rid != "client-supplied-id" and UUID4.match(rid or ""), rid


def test_request_id_from_edge_client_preserved_when_configured(legate, ports, upstream):
    up = upstream()
    lg = start(legate, ports, [up], use_remote_address=True, preserve_external_request_id=True)
    _, rec = _upstream_view(lg, {"X-Request-Id": "client-supplied-id", "X-Forwarded-For": "203.0.113.7"})
    assert header_value(rec, "x-request-id") == "client-supplied-id"


def test_generate_request_id_false(legate, ports, upstream):
    up = upstream()
    lg = start(legate, ports, [up], generate_request_id=False)
    _, rec = _upstream_view(lg)
    assert header_values(rec, "x-request-id") == []


def test_upstream_service_time_header(legate, ports, upstream):
    up = upstream()
    lg = start(legate, ports, [up])
    r, _ = _upstream_view(lg, path="/delay/200")
    value = r.header("x-envoy-upstream-service-time")
    assert value is not None and value.isdigit(), r.headers
    assert int(value) >= 190


def test_server_header_is_envoy_by_default(legate, ports, upstream):
    up = upstream("a")
    lg = legate(cfg.bootstrap(ports(), listeners=[cfg.http_listener("ingress", ports(), cfg.route_config([
        cfg.vhost("v", [cfg.route("backend", prefix="/proxied")])]))], clusters=[cfg.cluster("backend", [up.port])]))
    with raw(lg) as c:
        c.request("GET", "/proxied")
        proxied = c.read_response()
        c.request("GET", "/no-route")
        local = c.read_response()
    assert proxied.status == 200 and proxied.header_all("server") == ["envoy"]
    assert local.status == 404 and local.header_all("server") == ["envoy"]


def test_server_name_option(legate, ports, upstream):
    up = upstream()
    lg = start(legate, ports, [up], server_name="legate-test")
    r, _ = _upstream_view(lg)
    assert r.header_all("server") == ["legate-test"]


def test_date_header_added(legate, ports, upstream):
    up = upstream()
    lg = start(legate, ports, [up])
    r, _ = _upstream_view(lg, path="/nodate")
    date = r.header("date")
    assert date, r.headers
    when = email.utils.parsedate_to_datetime(date)
    assert abs(when.timestamp() - time.time()) < 60


def test_hop_by_hop_headers_not_forwarded(legate, ports, upstream):
    up = upstream()
    lg = start(legate, ports, [up])
    _, rec = _upstream_view(lg, {"Keep-Alive": "timeout=5", "Proxy-Connection": "keep-alive",
                                 "Connection": "keep-alive"})
    names = {k for k, _ in rec["headers"]}
    assert "keep-alive" not in names and "proxy-connection" not in names, names


def test_body_and_headers_of_upstream_error_pass_through(legate, ports, upstream):
    up = upstream()
    lg = start(legate, ports, [up])
    r = curl(lg.url("/status/503"), headers=["x-echo-set-header: x-from-upstream: yes"])
    assert r.status == 503
    assert r.header("x-from-upstream") == "yes"
    assert json.loads(r.body)["path"] == "/status/503"
