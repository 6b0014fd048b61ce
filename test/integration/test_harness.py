"""Self-tests of the harness: the upstream servers, the clients and the
process handling, without legate. If these fail, the other tests' results
mean nothing."""
import hashlib
import http.client
import json
import os
import socket
import sys
import textwrap
import threading
import time

import pytest

from conftest import DeadlineExceeded, _clear_deadline, _run_with_deadline
from lib import config as cfg
from lib.clients import curl, h2load
from lib.h2client import FRAME_SETTINGS, H2Client, raw_connect, read_frames
from lib.legate import Legate
from lib.rawhttp import ConnectionClosed, RawHTTP
from lib.wait import wait_for
from lib.upstream import header_value, pattern, pattern_chunks, pattern_sha256


@pytest.mark.parametrize("size", [1000, 65536, 100000, 1 << 20])
def test_pattern_chunks_concatenate_to_pattern(size):
    n = 3 * (1 << 20) + 12345
    chunks = list(pattern_chunks(n, size))
    assert all(len(c) <= size for c in chunks)
    assert b"".join(chunks) == pattern(n)
    assert hashlib.sha256(pattern(n)).hexdigest() == pattern_sha256(n)


def test_echo_get_describes_request(upstream):
    u = upstream("a")
    c = http.client.HTTPConnection("127.0.0.1", u.port, timeout=5)
    c.request("GET", "/hello?x=1", headers={"X-Test": "yes"})
    r = c.getresponse()
    body = json.loads(r.read())
    assert r.status == 200
    assert r.getheader("server") == "echo-upstream/a"
    assert r.getheader("date")
    assert body["method"] == "GET" and body["path"] == "/hello?x=1" and body["server"] == "a"
    assert header_value(body, "x-test") == "yes"
    assert u.requests[0]["path"] == "/hello?x=1"


def test_echo_keepalive_and_body_hash(upstream):
    u = upstream()
    c = http.client.HTTPConnection("127.0.0.1", u.port, timeout=5)
    data = os.urandom(100000)
    c.request("POST", "/p", body=data)
    first = json.loads(c.getresponse().read())
    c.request("GET", "/q")
    second = json.loads(c.getresponse().read())
    assert first["body_len"] == len(data)
    assert first["body_sha256"] == hashlib.sha256(data).hexdigest()
    assert first["conn_id"] == second["conn_id"]
    assert u.connections_total == 1


def test_echo_chunked_both_ways(upstream):
    u = upstream()
    with RawHTTP("127.0.0.1", u.port) as c:
        c.send(b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-t: 1\r\n\r\n")
        r = c.read_response()
        assert r.status == 200
        assert r.json()["body_sha256"] == hashlib.sha256(b"hello world").hexdigest()
        assert r.json()["trailers"] == [["x-t", "1"]]
        c.request("GET", "/chunked/100000")
        r = c.read_response()
        assert r.header("transfer-encoding") == "chunked"
        assert r.body == pattern(100000)
        assert r.header("x-body-sha256") == pattern_sha256(100000)


def test_echo_knobs(upstream):
    u = upstream()
    with RawHTTP("127.0.0.1", u.port) as c:
        c.request("GET", "/status/503")
        assert c.read_response().status == 503
        c.request("GET", "/flaky/k/2")
        assert c.read_response().status == 503
        c.request("GET", "/flaky/k/2")
        assert c.read_response().status == 503
        c.request("GET", "/flaky/k/2")
        assert c.read_response().status == 200
        c.request("GET", "/nodate", headers={"x-echo-set-header": "x-extra: 1"})
        r = c.read_response()
        assert r.header("date") is None and r.header("x-extra") == "1"
        c.request("HEAD", "/bytes/1000")
        r = c.read_response(head=True)
        assert r.header("content-length") == "1000" and r.body == b""
    with RawHTTP("127.0.0.1", u.port) as c:
        c.request("GET", "/close-before-response")
        with pytest.raises(ConnectionClosed):
            c.read_response()


def test_echo_delay_is_observable_in_flight(upstream):
    u = upstream()
    results = []

    def slow():
        with RawHTTP("127.0.0.1", u.port) as c:
            c.request("GET", "/delay/500")
            results.append(c.read_response().status)

    t = threading.Thread(target=slow)
    t.start()
    u.wait_inflight(1, timeout=5)
    t.join(5)
    assert results == [200]
    # the server counts the request done just after the client has the response
    wait_for(lambda: u.inflight == 0, timeout=5, what="upstream in-flight count back to 0")


def test_unix_socket_upstream(unix_upstream):
    u = unix_upstream("sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(u.unix_path)
    s.sendall(b"GET /via-unix HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert json.loads(body)["path"] == "/via-unix"


def test_h2_upstream_with_h2_client(h2_upstream):
    u = h2_upstream("h2a")
    with H2Client("127.0.0.1", u.port) as c:
        r = c.get("/x")
        assert r.status == 200 and r.header("x-upstream") == "h2a"
        assert json.loads(r.body)["protocol"] == "HTTP/2"
        sid = c.request("POST", "/trailers", body=b"abc" * 1000, trailers=[("x-req-t", "v")])
        r = c.wait_response(sid)
        assert r.trailer("x-upstream-trailer") == "present"
        assert r.trailer("x-request-trailers") == "x-req-t"
        big = c.get("/bytes/3000000")
        assert hashlib.sha256(big.body).hexdigest() == big.header("x-body-sha256")


def test_h2_upstream_with_curl_and_h2load(h2_upstream):
    u = h2_upstream()
    r = curl(f"http://127.0.0.1:{u.port}/c", http2=True)
    assert r.rc == 0 and r.status == 200 and r.http_version == "2"
    res = h2load(f"http://127.0.0.1:{u.port}/", 50, 2, 5)
    assert res.succeeded == 50 and res.s2xx == 50, res


def test_raw_h2_frames(h2_upstream):
    u = h2_upstream()
    s = raw_connect("127.0.0.1", u.port)
    frames = read_frames(s, timeout=3, until=lambda f: f[0] == FRAME_SETTINGS)
    s.close()
    assert frames and frames[0][0] == FRAME_SETTINGS


def test_deadline_interrupts_blocking_call():
    old = _run_with_deadline(0.2, "probe")
    try:
        start = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            threading.Event().wait(5)
        assert time.monotonic() - start < 2
    finally:
        _clear_deadline(old)


FAKE_LEGATE = textwrap.dedent("""\
    #!{python}
    # Stand-in for legate: serves /ready on the bootstrap's admin port.
    import http.server, os, signal, sys, threading, yaml
    args = sys.argv[1:]
    boot = yaml.safe_load(open(args[args.index("-c") + 1]))
    port = boot["admin"]["address"]["socket_address"]["port_value"]
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.send_header("Content-Length", "5"); self.end_headers()
            self.wfile.write(b"LIVE\\n")
        def log_message(self, *a): pass
    srv = http.server.HTTPServer(("127.0.0.1", port), H)
    def term(*a):
        sys.stderr.write(os.environ.get("FAKE_STDERR", "") + "\\n"); sys.stderr.flush()
        os._exit(int(os.environ.get("FAKE_RC", "0")))
    signal.signal(signal.SIGTERM, term)
    srv.serve_forever()
""")


@pytest.mark.parametrize("stderr,rc,expect", [
    ("", 0, []),
    ("==1==ERROR: LeakSanitizer: detected memory leaks", 23, ["code 23", "sanitizer"]),
    ("src/x.c:1:2: runtime error: signed integer overflow", 0, ["sanitizer"]),
])
def test_harness_stop_reports_sanitizer_and_exit_code(tmp_path, monkeypatch, ports, stderr, rc, expect):
    fake = tmp_path / "fake-legate"
    fake.write_text(FAKE_LEGATE.format(python=sys.executable))
    fake.chmod(0o755)
    monkeypatch.setenv("LEGATE_BIN", str(fake))
    monkeypatch.setenv("FAKE_STDERR", stderr)
    monkeypatch.setenv("FAKE_RC", str(rc))
    lg = Legate(tmp_path, cfg.bootstrap(ports()), name="fake").start()
    assert lg.alive()
    problems = lg.stop()
    assert len(problems) == len(expect)
    for p, e in zip(problems, expect):
        assert e in p


def test_harness_reports_early_exit(tmp_path, monkeypatch, ports):
    fake = tmp_path / "fake-legate"
    fake.write_text("#!/bin/sh\necho 'boom: bad config' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("LEGATE_BIN", str(fake))
    lg = Legate(tmp_path, cfg.bootstrap(ports()), name="fake")
    with pytest.raises(AssertionError, match="boom: bad config"):
        lg.start()
    lg.stop()
    assert lg.returncode == 1
