"""Clusters, load balancing, connection pools, local replies for upstream
failures, retries and circuit breakers, as Envoy.

Envoy texts checked in source/common/router/router.cc (onUpstreamReset,
onUpstreamTimeoutAbort) and source/common/http/utility.cc
(resetReasonToString):
- connect failure: 503, "upstream connect error or disconnect/reset before
  headers. reset reason: connection failure, transport failure reason:
  delayed connect error: 111" (Envoy >= 1.29 says "remote connection failure"
  and "Connection refused"; both are accepted);
- no healthy host: 503 "no healthy upstream";
- route timeout: 504 "upstream request timeout";
- circuit breaker overflow: 503 with x-envoy-overloaded: true and
  "... reset reason: overflow";
- upstream closed before headers: 503 "... reset reason: connection termination".
"""
import re
import socket
import threading

import pytest

from lib import config as cfg
from lib.clients import curl
from lib.h2client import H2Client
from lib.ports import free_port
from lib.rawhttp import RawHTTP, recv_head
from lib.wait import wait_for

CONNECT_FAILURE_BODY = re.compile(
    r"^upstream connect error or disconnect/reset before headers\. reset reason: (remote )?connection failure, "
    r"transport failure reason: delayed connect error: (111|Connection refused)$")
PREFIX = "upstream connect error or disconnect/reset before headers. "


def proxy(legate, ports, endpoints, route_action=None, listener_extra=None, **cluster_kw):
    rc = cfg.route_config([cfg.vhost("v", [cfg.route("backend", **(route_action or {}))])])
    return legate(cfg.bootstrap(ports(), listeners=[cfg.http_listener("ingress", ports(), rc, listener_extra=listener_extra)],
                                clusters=[cfg.cluster("backend", endpoints, **cluster_kw)]))


def get(lg, path, headers=None):
    with RawHTTP("127.0.0.1", lg.listener_port(), timeout=20) as c:
        c.request("GET", path, headers=headers or {})
        return c.read_response()


def stat_at_least(lg, name, n, timeout=3.0):
    wait_for(lambda: lg.admin.stat(name) >= n, timeout=timeout, what=f"{name} >= {n}")


def test_round_robin_alternates(legate, ports, upstream):
    a, b = upstream("a"), upstream("b")
    lg = proxy(legate, ports, [a.port, b.port])
    with RawHTTP("127.0.0.1", lg.listener_port()) as c:
        servers = []
        for _ in range(10):
            c.request("GET", "/rr")
            servers.append(c.read_response().json()["server"])
    assert all(x != y for x, y in zip(servers, servers[1:])), servers
    assert servers.count("a") == 5 and servers.count("b") == 5


def test_least_request_avoids_busy_host(legate, ports, upstream):
    a, b = upstream("a"), upstream("b")
    lg = proxy(legate, ports, [a.port, b.port], lb_policy="LEAST_REQUEST",
               least_request_lb_config={"choice_count": 20})
    # One HTTP/2 connection keeps every stream on one worker.
    with H2Client("127.0.0.1", lg.listener_port()) as c:
        slow = c.request("GET", "/delay/2000")
        wait_for(lambda: a.inflight + b.inflight == 1, what="slow request at an upstream")
        busy = "a" if a.inflight else "b"
        fast = [c.wait_response(c.request("GET", f"/fast/{i}")) for i in range(10)]
        servers = [r.header("x-upstream") for r in fast]
        assert c.wait_response(slow).status == 200
    assert busy not in servers, f"busy host {busy} got requests: {servers}"


def test_empty_cluster_is_503_no_healthy_upstream(legate, ports):
    lg = proxy(legate, ports, [])
    r = get(lg, "/")
    assert r.status == 503
    assert r.body == b"no healthy upstream"
    stat_at_least(lg, "cluster.backend.upstream_cx_none_healthy", 1)


def test_connect_failure_is_503_with_envoy_body(legate, ports):
    dead = free_port()  # nothing listens there
    lg = proxy(legate, ports, [dead])
    r = get(lg, "/")
    assert r.status == 503
    assert CONNECT_FAILURE_BODY.match(r.text), r.text
    stat_at_least(lg, "cluster.backend.upstream_cx_connect_fail", 1)


def test_upstream_closing_before_headers_is_503(legate, ports, upstream):
    up = upstream()
    lg = proxy(legate, ports, [up.port])
    r = get(lg, "/close-before-response")
    assert r.status == 503
    assert r.text == PREFIX + "reset reason: connection termination"


def test_route_timeout_is_504(legate, ports, upstream):
    up = upstream()
    lg = proxy(legate, ports, [up.port], route_action={"timeout": "0.3s"})
    r = get(lg, "/delay/3000")
    assert r.status == 504
    assert r.body == b"upstream request timeout"
    stat_at_least(lg, "cluster.backend.upstream_rq_timeout", 1)
    stat_at_least(lg, "http.ingress_http.downstream_rq_5xx", 1)


def test_upstream_status_counted(legate, ports, upstream):
    up = upstream()
    lg = proxy(legate, ports, [up.port])
    assert get(lg, "/status/503").status == 503
    assert get(lg, "/status/201").status == 201
    stat_at_least(lg, "cluster.backend.upstream_rq_503", 1)
    stat_at_least(lg, "cluster.backend.upstream_rq_5xx", 1)
    stat_at_least(lg, "cluster.backend.upstream_rq_201", 1)
    stat_at_least(lg, "cluster.backend.upstream_rq_2xx", 1)


def test_retry_on_5xx_makes_flaky_upstream_succeed(legate, ports, upstream):
    up = upstream()
    lg = proxy(legate, ports, [up.port], route_action={"retry_policy": {"retry_on": "5xx", "num_retries": 3}})
    r = get(lg, "/flaky/k1/2")
    assert r.status == 200
    assert up.paths().count("/flaky/k1/2") == 3
    stat_at_least(lg, "cluster.backend.upstream_rq_retry", 2)
    stat_at_least(lg, "cluster.backend.upstream_rq_retry_backoff_exponential", 2)
    assert lg.admin.stat("cluster.backend.upstream_rq_retry_limit_exceeded") == 0


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("http2", [False, True])
def test_retry_keeps_a_large_request_body(legate, ports, upstream, framing, http2):
    """A route with a retry policy keeps the request body until the response (Envoy buffers it
    up to the buffer limit): a body that arrives over many reads reaches the upstream whole on
    the first try and again on the retry; one over the listener's buffer limit (64 KiB here)
    still goes through, without a retry, counted in retry_or_shadow_abandoned."""
    if http2 and framing == "chunked":
        pytest.skip("HTTP/2 has no chunked framing")
    up = upstream()
    lg = proxy(legate, ports, [up.port], route_action={"retry_policy": {"retry_on": "5xx", "num_retries": 1}},
               listener_extra={"per_connection_buffer_limit_bytes": 65536})
    headers = ["Expect:"] + (["Transfer-Encoding: chunked"] if framing == "chunked" else [])
    url = f"http://127.0.0.1:{lg.listener_port()}"
    body = bytes(range(256)) * 200  # 51,200 bytes: within the limit, over several reads
    r = curl(f"{url}/flaky/{framing}{http2}/1", headers=headers, data=body, http2=http2)
    assert r.rc == 0 and r.status == 200, r
    tries = [rec for rec in up.requests if rec["path"] == f"/flaky/{framing}{http2}/1"]
    assert [rec["body_len"] for rec in tries] == [len(body)] * 2
    big = b"x" * (3 * 65536)
    r = curl(f"{url}/flaky/big{framing}{http2}/1", headers=headers, data=big, http2=http2)
    assert r.rc == 0 and r.status == 503, r  # the first try's answer: no retry without the body
    assert [rec["body_len"] for rec in up.requests if rec["path"] == f"/flaky/big{framing}{http2}/1"] == [len(big)]
    assert lg.admin.stat("cluster.backend.retry_or_shadow_abandoned") == 1


def test_h2_window_smaller_than_the_buffer_limit_on_a_retry_route(legate, ports, upstream):
    """A downstream HTTP/2 stream window (64 KiB) smaller than the listener's buffer limit (the
    default 1 MiB), on a route with a retry policy: Envoy's codec returns flow-control credit
    as bytes arrive while the stream holds less than the limit, so a body kept for the retry
    goes on past one window. A 200 KB body reaches the upstream whole on both tries; a 3 MB
    one goes through once, without a retry, counted in retry_or_shadow_abandoned."""
    up = upstream()
    rc = cfg.route_config([cfg.vhost("v", [cfg.route("backend", retry_policy={"retry_on": "5xx", "num_retries": 1})])])
    lg = legate(cfg.bootstrap(ports(), listeners=[cfg.http_listener(
        "ingress", ports(), rc, http2_protocol_options={"initial_stream_window_size": 65535})],
        clusters=[cfg.cluster("backend", [up.port])]))
    url = f"http://127.0.0.1:{lg.listener_port()}"
    for size, want, tries in ((200000, 200, 2), (3000000, 503, 1)):
        r = curl(f"{url}/flaky/w{size}/1", headers=["Expect:"], data=b"w" * size, http2=True)
        assert r.rc == 0 and r.status == want, (size, r)
        assert [x["body_len"] for x in up.requests if x["path"] == f"/flaky/w{size}/1"] == [size] * tries
    assert lg.admin.stat("cluster.backend.retry_or_shadow_abandoned") == 1


@pytest.mark.parametrize("http2", [False, True])
def test_body_of_exactly_the_limit_ending_apart_keeps_its_retry(legate, ports, upstream, http2):
    """A request body of exactly the buffer limit (64 KiB here) whose end comes on its own
    once the bytes are in (HTTP/1.1: the last chunk; HTTP/2: an empty DATA frame with
    END_STREAM) is within the limit: Envoy keeps it and retries it. Only a body past the limit
    gives the retry up."""
    up = upstream()
    lg = proxy(legate, ports, [up.port], route_action={"retry_policy": {"retry_on": "5xx", "num_retries": 1}},
               listener_extra={"per_connection_buffer_limit_bytes": 65536})
    body = bytes(i % 253 for i in range(65536))
    path = f"/flaky/exact{int(http2)}/1"
    read = lambda n: lambda: lg.admin.stat("http.ingress_http.downstream_cx_rx_bytes_total") >= n  # bytes off the wire
    if http2:
        with H2Client("127.0.0.1", lg.listener_port(), timeout=20) as c:
            sid = c.conn.get_next_available_stream_id()
            c.conn.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":authority", "localhost"),
                                      (":path", path)])
            c._resp(sid)
            c._send_body(sid, body, end_stream=False)
            wait_for(read(c.bytes_sent), what="the body's bytes in Legate")
            c.conn.end_stream(sid)
            c._flush()
            status = c.wait_response(sid, timeout=10).status
    else:
        with RawHTTP("127.0.0.1", lg.listener_port(), timeout=20) as c:
            first = (f"POST {path} HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n\r\n%x\r\n".encode()
                     % len(body) + body + b"\r\n")
            c.send(first)
            wait_for(read(len(first)), what="the body's bytes in Legate")
            c.send(b"0\r\n\r\n")
            status = c.read_response().status
    assert status == 200
    assert [r["body_len"] for r in up.requests if r["path"] == path] == [len(body)] * 2
    assert lg.admin.stat("cluster.backend.retry_or_shadow_abandoned") == 0


@pytest.mark.parametrize("where", ["route", "virtual_host"])
def test_per_request_buffer_limit_caps_the_retry_buffer(legate, ports, upstream, where):
    """per_request_buffer_limit_bytes (the route's, else the virtual host's) caps what the router
    keeps for a retry below the listener's limit (Envoy's retry_shadow_buffer_limit): a body
    within it is retried, one past it goes through once, without a retry."""
    up = upstream()
    route = cfg.route("backend", retry_policy={"retry_on": "5xx", "num_retries": 1})
    vh_extra = {}
    if where == "route":
        route["per_request_buffer_limit_bytes"] = 16384
    else:
        vh_extra["per_request_buffer_limit_bytes"] = 16384
    rc = cfg.route_config([cfg.vhost("v", [route], **vh_extra)])
    lg = legate(cfg.bootstrap(ports(), listeners=[cfg.http_listener("ingress", ports(), rc)],
                              clusters=[cfg.cluster("backend", [up.port])]))
    url = f"http://127.0.0.1:{lg.listener_port()}"
    for size, want, tries in ((16384, 200, 2), (16385, 503, 1)):
        r = curl(f"{url}/flaky/p{size}/1", headers=["Expect:"], data=b"p" * size)
        assert r.rc == 0 and r.status == want, (size, r)
        assert [x["body_len"] for x in up.requests if x["path"] == f"/flaky/p{size}/1"] == [size] * tries
    assert lg.admin.stat("cluster.backend.retry_or_shadow_abandoned") == 1


def test_tiny_chunks_on_a_retry_route_give_the_retry_up(legate, ports, upstream):
    """A chunked body of one-byte chunks is six wire bytes per body byte: the buffers holding a
    kept body of 60,000 bytes would be five times the buffer limit (64 KiB here). The codec
    keeps at most twice the limit (plus a read) in buffers, so it tells the router it holds all
    it may, and the router gives the retry up, as it does past the limit, rather than the
    request waiting for bytes the codec will not read. The body goes through once, whole."""
    up = upstream()
    lg = proxy(legate, ports, [up.port], route_action={"retry_policy": {"retry_on": "5xx", "num_retries": 1}},
               listener_extra={"per_connection_buffer_limit_bytes": 65536})
    with RawHTTP("127.0.0.1", lg.listener_port(), timeout=20) as c:
        c.send(b"POST /flaky/tiny/1 HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n\r\n" +
               b"1\r\nx\r\n" * 60000 + b"0\r\n\r\n")
        r = c.read_response()
    assert r.status == 503, r  # the first try's answer: no retry without the body
    assert [x["body_len"] for x in up.requests if x["path"] == "/flaky/tiny/1"] == [60000]
    assert lg.admin.stat("cluster.backend.retry_or_shadow_abandoned") == 1


def test_body_over_the_limit_during_a_retry_back_off_is_answered_507(legate, ports):
    """The first try fails before the request body is complete and the retry waits out its
    back-off (an hour's ceiling, so it does not end during the test). When the rest of the body
    takes the kept bytes past the buffer limit, no attempt is in progress to carry it: Envoy
    answers 507 "exceeded request buffer limit while retrying upstream" and counts
    retry_or_shadow_abandoned; no second try reaches the upstream."""
    srv = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def serve():  # answers 503 as soon as a request head is in, without reading the body
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            accepted.append(conn)
            recv_head(conn)
            conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    policy = {"retry_on": "5xx", "num_retries": 2, "retry_back_off": {"base_interval": "3600s"}}
    lg = proxy(legate, ports, [srv.getsockname()[1]], route_action={"retry_policy": policy},
               listener_extra={"per_connection_buffer_limit_bytes": 65536})
    with RawHTTP("127.0.0.1", lg.listener_port(), timeout=20) as c:
        c.send(b"POST /big HTTP/1.1\r\nhost: localhost\r\ncontent-length: 200000\r\n\r\n" + b"a" * 40000)
        wait_for(lambda: lg.admin.stat("cluster.backend.upstream_rq_retry") == 1, what="the retry's back-off")
        c.send(b"a" * 60000)
        r = c.read_response()
    assert r.status == 507, r
    assert r.body == b"exceeded request buffer limit while retrying upstream"
    assert lg.admin.stat("cluster.backend.retry_or_shadow_abandoned") == 1
    assert len(accepted) == 1
    srv.close()
    for conn in accepted:
        conn.close()


@pytest.mark.parametrize("size", [200000, 3000000])  # over one read; over the 1 MiB buffer limit
@pytest.mark.parametrize("http2", [False, True])
@pytest.mark.parametrize("upstream_h2", [False, True])
@pytest.mark.parametrize("policy", ["retry", "mirror", "retry+mirror", "none"])
def test_request_bodies_through_retries_and_mirrors(legate, ports, upstream, h2_upstream, size, http2, upstream_h2,
                                                    policy):
    """Every pairing of downstream and upstream codecs streams a request body whole, whether the
    route keeps it for a retry, copies it to a mirror, both or neither: the retry resends it
    whole while it fits the buffer limit, and beyond the limit the request goes on without a
    retry and without a mirror copy."""
    main, shadow = (h2_upstream("main") if upstream_h2 else upstream("main")), upstream("shadow")
    route = {}
    retry, mirror = "retry" in policy, "mirror" in policy
    if retry:
        route["retry_policy"] = {"retry_on": "5xx", "num_retries": 1}
    if mirror:
        route["request_mirror_policies"] = [{"cluster": "shadow"}]
    rc = cfg.route_config([cfg.vhost("v", [cfg.route("backend", **route)])])
    lg = legate(cfg.bootstrap(ports(), listeners=[cfg.http_listener("ingress", ports(), rc)],
                              clusters=[cfg.cluster("backend", [main.port], http2=upstream_h2),
                                        cfg.cluster("shadow", [shadow.port])]))
    fits = size <= 1 << 20
    body = b"b" * size
    failing = "/status/503" if upstream_h2 else "/flaky/k/1"  # the h2 upstream has no /flaky
    for path, want in (("/ok", 200), (failing, 200 if retry and fits and not upstream_h2 else 503)):
        r = curl(f"http://127.0.0.1:{lg.listener_port()}{path}", headers=["Expect:"], data=body, http2=http2)
        assert r.rc == 0 and r.status == want, (path, r)
    assert [rec["body_len"] for rec in main.requests] == [size] * (3 if retry and fits else 2)
    if mirror and fits:
        shadow.wait_requests(2, timeout=5)
        assert [rec["body_len"] for rec in shadow.requests] == [size] * 2
    wait_for(lambda: lg.admin.stat("cluster.backend.retry_or_shadow_abandoned") == (0 if fits or policy == "none" else 2),
             timeout=3, what="retry_or_shadow_abandoned")
    assert shadow.requests == [] or fits


def test_response_before_the_request_body_is_written(legate, ports):
    """An upstream that answers before reading the request body. Body bytes Legate still has to
    write once the response has ended point into the downstream codec's buffers, which go with
    the downstream stream: Legate then closes that upstream connection (Envoy closes it too)
    rather than finish the write later from freed memory. Whether bytes were left depends on
    how much the kernel took, so the test checks what holds either way: the upstream reads the
    body's bytes in order and nothing else (the sanitizer build catches a write from freed
    buffers)."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the body waits in Legate, not here
    body = bytes(i % 251 for i in range(400000))
    got = {}

    def serve():
        conn, _ = srv.accept()
        with conn:
            head = recv_head(conn)
            data = head.partition(b"\r\n\r\n")[2]
            while True:  # until body bytes arrive
                peek = conn.recv(65536, socket.MSG_PEEK)
                if not peek or len(data) + len(peek) >= 2048:
                    break
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            conn.settimeout(10)
            while len(data) < len(body):  # until Legate closes, or the whole body is here
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            got["body"] = data

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    lg = proxy(legate, ports, [srv.getsockname()[1]])
    with RawHTTP("127.0.0.1", lg.listener_port(), timeout=20) as c:
        c.request("POST", "/early", body=body)
        r = c.read_response()
    assert r.status == 200 and r.body == b"ok", r
    t.join(15)
    assert not t.is_alive()
    assert got["body"] == body[:len(got["body"])], "the upstream read other bytes than the body's"
    srv.close()


@pytest.mark.deadline(120)
@pytest.mark.parametrize("http2", [False, True], ids=["h1", "h2c"])
def test_slow_upstream_pauses_the_request_body(legate, ports, http2):
    """An upstream that reads nothing of a 16 MiB upload until Legate has stopped reading it:
    Envoy's counters of that, the HCM's downstream_flow_control_{paused,resumed}_reading_total
    and the cluster's upstream_flow_control_{backed_up,drained}_total, go up together, and once
    the upstream reads, every pause is followed by a resume and the body arrives whole."""
    size = 16 << 20
    body = bytes(i % 251 for i in range(size))
    srv = socket.create_server(("127.0.0.1", 0))  # (a 4 KiB receive buffer here would slow TCP to a crawl)
    may_read, got = threading.Event(), {}

    def serve():
        conn, _ = srv.accept()
        with conn:
            head = recv_head(conn)
            data = head.partition(b"\r\n\r\n")[2]
            may_read.wait(60)
            conn.settimeout(30)
            while len(data) < size:
                chunk = conn.recv(1 << 20)
                if not chunk:
                    break
                data += chunk
            got["body"] = data
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    lg = proxy(legate, ports, [srv.getsockname()[1]], route_action={"timeout": "0s"})
    hcm, cl = "http.ingress_http.downstream_flow_control_", "cluster.backend.upstream_flow_control_"
    result = {}
    client = threading.Thread(target=lambda: result.update(r=curl(
        f"http://127.0.0.1:{lg.listener_port()}/upload", headers=["Expect:"], data=body, http2=http2, timeout=90)))
    client.start()
    try:
        wait_for(lambda: lg.admin.stat(hcm + "paused_reading_total") >= 1, timeout=60, what="downstream reading paused")
        assert lg.admin.stat(cl + "backed_up_total") >= 1
        assert "body" not in got
    finally:
        may_read.set()
    client.join(100)
    t.join(30)
    r = result["r"]
    assert r.rc == 0 and r.status == 200, r
    assert got["body"] == body
    st = lg.admin.stats()
    assert st[hcm + "resumed_reading_total"] == st[hcm + "paused_reading_total"] >= 1
    assert st[cl + "drained_total"] == st[cl + "backed_up_total"] == st[hcm + "paused_reading_total"]
    srv.close()


def test_retries_exhausted_returns_last_response(legate, ports, upstream):
    up = upstream()
    lg = proxy(legate, ports, [up.port], route_action={"retry_policy": {"retry_on": "5xx", "num_retries": 1}})
    r = get(lg, "/flaky/k2/5")
    assert r.status == 503
    assert up.paths().count("/flaky/k2/5") == 2
    stat_at_least(lg, "cluster.backend.upstream_rq_retry_limit_exceeded", 1)  # Envoy's NoRetryLimitExceeded


def test_retriable_status_codes(legate, ports, upstream):
    up = upstream()
    policy = {"retry_on": "retriable-status-codes", "retriable_status_codes": [409], "num_retries": 2}
    lg = proxy(legate, ports, [up.port], route_action={"retry_policy": policy})
    assert get(lg, "/status/409").status == 409
    assert up.paths().count("/status/409") == 3


def test_retry_on_connect_failure_reaches_live_host(legate, ports, upstream):
    up = upstream("live")
    dead = free_port()
    lg = proxy(legate, ports, [dead, up.port],
               route_action={"retry_policy": {"retry_on": "connect-failure", "num_retries": 2}})
    statuses = [get(lg, f"/r{i}").status for i in range(6)]
    assert statuses == [200] * 6
    stat_at_least(lg, "cluster.backend.upstream_rq_retry", 1)


def test_per_try_timeout_retries(legate, ports, upstream):
    up = upstream()
    policy = {"retry_on": "5xx", "num_retries": 1, "per_try_timeout": "0.3s"}
    lg = proxy(legate, ports, [up.port], route_action={"timeout": "5s", "retry_policy": policy})
    r = get(lg, "/delay/2000")
    assert r.status == 504
    assert up.paths().count("/delay/2000") == 2


def test_circuit_breaker_max_pending_requests(legate, ports, upstream):
    up = upstream()
    thresholds = {"thresholds": [{"max_connections": 1, "max_pending_requests": 1}]}
    lg = proxy(legate, ports, [up.port], circuit_breakers=thresholds)
    # One HTTP/2 downstream connection: all streams share one worker and its pool.
    with H2Client("127.0.0.1", lg.listener_port(), timeout=20) as c:
        first = c.request("GET", "/delay/1500")
        up.wait_inflight(1)
        second = c.request("GET", "/after-first")
        wait_for(lambda: lg.admin.stat("cluster.backend.upstream_rq_pending_active") == 1, what="one pending request")
        r = c.wait_response(c.request("GET", "/overflow"), timeout=5)
        assert r.status == 503
        assert r.header("x-envoy-overloaded") == "true"
        assert r.body.decode() == PREFIX + "reset reason: overflow"
        assert c.wait_response(first).status == 200
        assert c.wait_response(second).status == 200
    stat_at_least(lg, "cluster.backend.upstream_rq_pending_overflow", 1)
    assert "/overflow" not in up.paths()


def test_circuit_breaker_max_requests(legate, ports, h2_upstream):
    up = h2_upstream()
    thresholds = {"thresholds": [{"max_requests": 1}]}
    lg = proxy(legate, ports, [up.port], circuit_breakers=thresholds, http2=True)
    with H2Client("127.0.0.1", lg.listener_port(), timeout=20) as c:
        first = c.request("GET", "/delay/1500")
        up.wait_inflight(1)
        r = c.wait_response(c.request("GET", "/second"), timeout=5)
        assert r.status == 503
        assert r.header("x-envoy-overloaded") == "true"
        assert c.wait_response(first).status == 200
    assert all(rec["path"] != "/second" for rec in up.requests)


def test_max_requests_per_connection(legate, ports, upstream):
    up = upstream()
    opts = {"common_http_protocol_options": {"max_requests_per_connection": 2},
            "explicit_http_config": {"http_protocol_options": {}}}
    lg = proxy(legate, ports, [up.port], protocol_options=opts)
    with RawHTTP("127.0.0.1", lg.listener_port()) as c:
        conns = []
        for i in range(6):
            c.request("GET", f"/m{i}")
            conns.append(c.read_response().json()["conn_id"])
    assert [conns.count(x) for x in dict.fromkeys(conns)] == [2, 2, 2], conns
    stat_at_least(lg, "cluster.backend.upstream_cx_total", 3)


def test_connect_timeout(legate, ports):
    # A listener whose accept queue is full drops further SYNs, so legate's
    # connect hangs until connect_timeout.
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(0)
    fillers = []
    try:
        for _ in range(2):
            f = socket.socket()
            f.setblocking(False)
            f.connect_ex(blackhole.getsockname())
            fillers.append(f)
        lg = proxy(legate, ports, [blackhole.getsockname()[1]], connect_timeout="0.25s")
        r = get(lg, "/")
        assert r.status == 503 and r.text.startswith(PREFIX), r.text
        stat_at_least(lg, "cluster.backend.upstream_cx_connect_timeout", 1)
    finally:
        for f in fillers:
            f.close()
        blackhole.close()


def test_unix_socket_upstream(legate, ports, unix_upstream):
    up = unix_upstream("pipe")
    lg = proxy(legate, ports, [cfg.pipe_endpoint(up.unix_path)])
    r = get(lg, "/over-unix")
    assert r.status == 200
    assert r.json()["server"] == "pipe" and r.json()["path"] == "/over-unix"


def test_random_lb_uses_all_hosts(legate, ports, upstream):
    a, b = upstream("a"), upstream("b")
    lg = proxy(legate, ports, [a.port, b.port], lb_policy="RANDOM")
    servers = {get(lg, f"/x{i}").json()["server"] for i in range(40)}
    assert servers == {"a", "b"}


def test_idle_upstream_connection_reused_across_downstream_connections(legate, ports, upstream):
    up = upstream()
    lg = legate(cfg.simple_proxy(ports(), ports(), [up.port]), args=["--concurrency", "1"])
    conn_ids = [get(lg, f"/c{i}").json()["conn_id"] for i in range(3)]
    assert len(set(conn_ids)) == 1, conn_ids


def test_most_recently_used_upstream_connection_serves_next(legate, ports, upstream):
    """As Envoy's pools: a connection that finishes a stream goes to the front of the ready
    list and serves the next one, so after a burst of three concurrent requests (three
    connections) sequential requests keep to one warm connection instead of cycling through
    all three (the others idle and time out)."""
    up = upstream()
    lg = legate(cfg.simple_proxy(ports(), ports(), [up.port]), args=["--concurrency", "1"])
    burst = [RawHTTP("127.0.0.1", lg.listener_port(), timeout=20) for _ in range(3)]
    for i, c in enumerate(burst):
        c.request("GET", f"/delay/{500 * (i + 1)}")
    ids = [c.read_response().json()["conn_id"] for c in burst]
    for c in burst:
        c.close()
    assert len(set(ids)) == 3, ids
    conn_ids = [get(lg, f"/after{i}").json()["conn_id"] for i in range(6)]
    assert conn_ids == [ids[-1]] * 6, (ids, conn_ids)


def test_upstream_connection_close_is_counted_and_not_reused(legate, ports, upstream):
    """An upstream response with `connection: close`: its connection takes no other request
    (cluster.<name>.upstream_cx_close_notify, as Envoy), the next request opens a new one."""
    up = upstream()
    lg = proxy(legate, ports, [up.port])
    with RawHTTP("127.0.0.1", lg.listener_port(), timeout=10) as c:
        c.request("GET", "/a", headers=[("x-echo-set-header", "connection: close")])
        r = c.read_response()
        assert r.status == 200 and r.header("connection") is None  # hop-by-hop: not passed on
        c.request("GET", "/b")
        assert c.read_response().status == 200
    stat_at_least(lg, "cluster.backend.upstream_cx_close_notify", 1)
    assert lg.admin.stat("cluster.backend.upstream_cx_close_notify") == 1
    assert lg.admin.stat("cluster.backend.upstream_cx_total") == 2
    first, second = (r["conn_id"] for r in up.requests)
    assert first != second


class TricklingUpstream:
    """Answers every request with a 200 head and a 10-byte body sent in `pieces` pieces, `gap` s
    apart; with pieces=0 it sends the head and then nothing (a stalled body)."""

    def __init__(self, pieces, gap):
        self.pieces, self.gap = pieces, gap
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port = self.srv.getsockname()[1]
        self.requests = 0
        self.stop = threading.Event()
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stop.is_set():
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        if recv_head(c) is None:
            return
        self.requests += 1
        try:
            c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n")
            for i in range(self.pieces):
                if self.stop.wait(self.gap):
                    return
                c.sendall(b"x" * (10 // self.pieces if i < self.pieces - 1 else 10 - (10 // self.pieces) * i))
            self.stop.wait(30 if self.pieces == 0 else 0)
        except OSError:
            pass

    def close(self):
        self.stop.set()
        self.srv.close()
        for c in self.conns:
            c.close()


def test_per_try_idle_timeout_before_the_response(legate, ports, upstream):
    """retry_policy.per_try_idle_timeout: an attempt with no progress for that long is timed out
    (and retried, retry_on 5xx): 504 "upstream request timeout" once none is left."""
    up = upstream()
    policy = {"retry_on": "5xx", "num_retries": 1, "per_try_idle_timeout": "0.3s"}
    lg = proxy(legate, ports, [up.port], route_action={"timeout": "10s", "retry_policy": policy})
    r = get(lg, "/delay/5000")
    assert r.status == 504 and r.body == b"upstream request timeout"
    assert up.paths().count("/delay/5000") == 2
    assert lg.admin.stat("cluster.backend.upstream_rq_per_try_idle_timeout") == 2
    assert lg.admin.stat("cluster.backend.upstream_rq_retry") == 1


def test_per_try_idle_timeout_during_the_response(legate, ports):
    """Unlike per_try_timeout it runs on while the response streams: a body that keeps coming is
    let through, a body that stalls resets the stream."""
    policy = {"retry_on": "5xx", "num_retries": 1, "per_try_idle_timeout": "0.5s"}
    trickle = TricklingUpstream(pieces=5, gap=0.2)  # 1 s in all, never 0.5 s without a byte
    stalled = TricklingUpstream(pieces=0, gap=0)
    try:
        lg = proxy(legate, ports, [trickle.port], route_action={"timeout": "10s", "retry_policy": policy})
        r = get(lg, "/trickle")
        assert r.status == 200 and r.body == b"x" * 10
        lg2 = proxy(legate, ports, [stalled.port], route_action={"timeout": "10s", "retry_policy": policy})
        with RawHTTP("127.0.0.1", lg2.listener_port(), timeout=20) as c:
            c.request("GET", "/stall")
            with pytest.raises(Exception):  # the head came, the body never will: the stream is reset
                c.read_response()
        assert stalled.requests == 1, "a response that started is not retried"
        wait_for(lambda: lg2.admin.stat("cluster.backend.upstream_rq_per_try_idle_timeout") == 1, timeout=5,
                 what="upstream_rq_per_try_idle_timeout")
        assert lg.admin.stat("cluster.backend.upstream_rq_per_try_idle_timeout") == 0
    finally:
        trickle.close()
        stalled.close()


def test_retriable_request_headers(legate, ports, upstream):
    """retry_policy.retriable_request_headers: only requests matching one of them are retried."""
    up = upstream()
    policy = {"retry_on": "5xx", "num_retries": 2,
              "retriable_request_headers": [{"name": ":method", "string_match": {"exact": "GET"}},
                                            {"name": "x-retry-me", "present_match": True}]}
    lg = proxy(legate, ports, [up.port], route_action={"retry_policy": policy})
    assert get(lg, "/flaky/get/1").status == 200  # GET: retried
    with RawHTTP("127.0.0.1", lg.listener_port(), timeout=20) as c:
        c.request("POST", "/flaky/post/1", body=b"x")
        assert c.read_response().status == 503  # no header matches: not retried
        c.request("POST", "/flaky/post2/1", body=b"x", headers={"x-retry-me": "1"})
        assert c.read_response().status == 200
    assert up.paths().count("/flaky/get/1") == 2
    assert up.paths().count("/flaky/post/1") == 1
    assert up.paths().count("/flaky/post2/1") == 2
    assert lg.admin.stat("cluster.backend.upstream_rq_retry_limit_exceeded") == 0
