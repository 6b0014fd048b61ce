"""HTTP/2 cleartext (prior knowledge) downstream and HTTP/2 upstream."""
import hashlib
import json
import os
import threading

import pytest

from lib import config as cfg
from lib.clients import curl, h2load, nghttp
from lib.h2client import H2Client
from lib.upstream import header_value, pattern, pattern_sha256
from lib.wait import wait_for


def start(legate, ports, cluster_ports, http2_upstream=False, **hcm_extra):
    return legate(cfg.simple_proxy(ports(), ports(), cluster_ports, cluster_extra={"http2": http2_upstream},
                                   **hcm_extra))


def client(lg, timeout=10):
    return H2Client("127.0.0.1", lg.listener_port(), timeout=timeout)


def test_h2c_curl_to_http1_upstream(legate, ports, upstream):
    up = upstream("h1")
    lg = start(legate, ports, [up.port])
    r = curl(lg.url("/via-h2?x=1"), http2=True)
    assert r.rc == 0 and r.status == 200 and r.http_version == "2", r
    rec = r.json()
    assert rec["protocol"] == "HTTP/1.1" and rec["version"] == "HTTP/1.1"
    assert rec["path"] == "/via-h2?x=1"
    assert header_value(rec, "host") == f"127.0.0.1:{lg.listener_port()}"
    assert lg.admin.stat("http.ingress_http.downstream_cx_http2_total") >= 1


def test_h2c_only_codec(legate, ports, upstream):
    up = upstream()
    lg = start(legate, ports, [up.port], codec_type="HTTP2")
    r = curl(lg.url("/h2-only"), http2=True)
    assert r.status == 200 and r.http_version == "2", r


def test_concurrent_streams_on_one_connection(legate, ports, upstream):
    up = upstream()
    lg = start(legate, ports, [up.port])
    with client(lg) as c:
        sids = [c.request("GET", f"/delay/100?i={i}") for i in range(20)]
        resps = [c.wait_response(s) for s in sids]
    assert [r.status for r in resps] == [200] * 20
    assert sorted(json.loads(r.body)["path"] for r in resps) == sorted(f"/delay/100?i={i}" for i in range(20))


def test_http1_client_to_h2_upstream(legate, ports, h2_upstream):
    up = h2_upstream("h2up")
    lg = start(legate, ports, [up.port], http2_upstream=True)
    r = curl(lg.url("/to-h2"), headers=["Host: svc.example"])
    assert r.status == 200, r
    rec = r.json()
    assert rec["protocol"] == "HTTP/2" and rec["path"] == "/to-h2"
    assert header_value(rec, ":authority") == "svc.example"
    assert lg.admin.stat("cluster.backend.upstream_cx_http2_total") >= 1


@pytest.mark.deadline(90)
def test_h2_to_h2_bodies_both_ways(legate, ports, h2_upstream):
    up = h2_upstream()
    lg = start(legate, ports, [up.port], http2_upstream=True)
    data = os.urandom(3 << 20)
    with client(lg, timeout=30) as c:
        r = c.wait_response(c.request("POST", "/upload", body=data))
        assert r.status == 200
        rec = json.loads(r.body)
        assert rec["body_len"] == len(data) and rec["body_sha256"] == hashlib.sha256(data).hexdigest()
        n = 8 << 20
        r = c.get(f"/bytes/{n}")
        assert r.status == 200
        assert hashlib.sha256(r.body).hexdigest() == pattern_sha256(n)


def test_trailers_pass_through_h2_to_h2(legate, ports, h2_upstream):
    up = h2_upstream()
    lg = start(legate, ports, [up.port], http2_upstream=True)
    with client(lg) as c:
        sid = c.request("POST", "/trailers", body=b"payload", trailers=[("x-req-trailer", "one")])
        r = c.wait_response(sid)
    assert r.status == 200
    assert r.trailer("x-upstream-trailer") == "present", r.trailers
    assert r.trailer("x-request-trailers") == "x-req-trailer"
    assert up.requests[-1]["trailers"] == [["x-req-trailer", "one"]]


def test_trailers_with_nghttp(legate, ports, h2_upstream, tmp_path):
    up = h2_upstream()
    lg = start(legate, ports, [up.port], http2_upstream=True)
    body = tmp_path / "body"
    body.write_bytes(b"hello trailers")
    p = nghttp(lg.url("/trailers"), "-v", "-d", str(body), "--trailer", "x-nghttp-trailer: yes")
    assert p.returncode == 0, p.stderr
    assert "x-upstream-trailer: present" in p.stdout
    wait_for(lambda: up.requests, what="upstream request")
    assert ["x-nghttp-trailer", "yes"] in up.requests[-1]["trailers"]


@pytest.mark.deadline(90)
def test_h2load_bounded_concurrency_all_2xx(legate, ports, upstream):
    up = upstream()
    lg = start(legate, ports, [up.port])
    res = h2load(lg.url("/load"), 200, 2, 10)
    assert res.succeeded == 200 and res.s2xx == 200 and res.failed == 0 and res.errored == 0, res
    assert len(up.requests) == 200


def test_max_concurrent_streams_advertised(legate, ports, upstream):
    up = upstream()
    lg = start(legate, ports, [up.port], http2_protocol_options={"max_concurrent_streams": 5})
    with client(lg) as c:
        def advertised():
            c.pump(0.2)
            return c.conn.remote_settings.max_concurrent_streams == 5

        wait_for(advertised, what="SETTINGS_MAX_CONCURRENT_STREAMS = 5")
        assert c.get("/ok").status == 200


def test_h2_streams_independent_of_slow_one(legate, ports, upstream):
    """A slow stream does not hold up others on the same connection."""
    up = upstream()
    lg = start(legate, ports, [up.port])
    with client(lg) as c:
        slow = c.request("GET", "/delay/1500")
        up.wait_inflight(1)
        fast = c.wait_response(c.request("GET", "/fast"), timeout=5)
        assert fast.status == 200
        assert not c.responses[slow].ended
        assert c.wait_response(slow).status == 200


def test_h2_download_matches_pattern(legate, ports, upstream):
    up = upstream()
    lg = start(legate, ports, [up.port])
    with client(lg) as c:
        r = c.get("/bytes/1000000")
    assert r.status == 200 and r.body == pattern(1000000)


def test_h2_and_h1_clients_at_once(legate, ports, upstream):
    up = upstream()
    lg = start(legate, ports, [up.port])
    results = []

    def h1():
        results.append(curl(lg.url("/h1")).status)

    t = threading.Thread(target=h1)
    t.start()
    with client(lg) as c:
        results.append(c.get("/h2").status)
    t.join(20)
    assert results == [200, 200]
