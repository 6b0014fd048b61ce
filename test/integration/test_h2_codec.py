"""HTTP/2 codec: back-pressure towards a slow HTTP/2 client and memory per connection.

A client that opens a large flow-control window and then does not read must
not make Legate buffer the response: the codec reports bytes as sent only
once the socket took them, so the router stops consuming the upstream, the
upstream codec stops reading and the upstream's socket fills up.
"""
import hashlib
import json
import os
import select
import socket
import subprocess
import threading

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from lib import config as cfg
from lib.h2client import H2Client
from lib.legate import sanitized
from lib.rawhttp import recv_head
from lib.upstream import pattern_chunks, pattern_sha256
from lib.wait import wait_for

BIG = int(os.environ.get("BIG", 256 << 20))
MAX_GROWTH = 64 << 20
STALL_S = 1.0  # the upstream counts as blocked once its socket stayed full this long


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class StreamingUpstream:
    """An HTTP/1.1 upstream that answers every request with `size` pattern
    bytes (content-length framed), written with non-blocking sends. `blocked`
    is set when its socket stayed unwritable for STALL_S (the proxy stopped
    reading), `done` when the whole body went out."""

    def __init__(self, size):
        self.size = size
        self.sent = 0
        self.blocked = threading.Event()
        self.done = threading.Event()
        self.stop = threading.Event()
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(8)
        self.port = self.lsock.getsockname()[1]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            conn, _ = self.lsock.accept()
        except OSError:
            return
        with conn:
            if recv_head(conn) is None:
                return
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: %d\r\n\r\n"
                         % self.size)
            conn.setblocking(False)
            for chunk in pattern_chunks(self.size):
                view = memoryview(chunk)
                while view:
                    if self.stop.is_set():
                        return
                    _, w, _ = select.select([], [conn], [], STALL_S)
                    if not w:
                        self.blocked.set()
                        continue
                    try:
                        n = conn.send(view)
                    except BlockingIOError:
                        continue
                    except OSError:
                        return
                    self.sent += n
                    view = view[n:]
            self.done.set()
            self.stop.wait(30)

    def close(self):
        self.stop.set()
        self.lsock.close()
        self.thread.join(10)


class H2StreamingUpstream:
    """An HTTP/2 (prior knowledge) upstream that answers every stream with
    `size` pattern bytes, as fast as the flow-control windows allow. `blocked`
    is set when a stream's send window stayed closed for STALL_S (the proxy
    stopped consuming), `done` when a whole body went out."""

    def __init__(self, size):
        self.size = size
        self.blocked = threading.Event()
        self.done = threading.Event()
        self.stop = threading.Event()
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(8)
        self.port = self.lsock.getsockname()[1]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            sock, _ = self.lsock.accept()
        except OSError:
            return
        with sock:
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
            conn.initiate_connection()
            sock.sendall(conn.data_to_send())
            sid, chunks, view = None, None, b""
            while not self.stop.is_set():
                while sid is not None and view is not None:
                    if not view:
                        view = memoryview(next(chunks, b"")) or None
                        if view is None:
                            conn.end_stream(sid)
                            self.done.set()
                            break
                    n = min(len(view), conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                    if n <= 0:
                        break
                    conn.send_data(sid, bytes(view[:n]))
                    view = view[n:]
                out = conn.data_to_send()
                if out:
                    sock.sendall(out)
                r, _, _ = select.select([sock], [], [], STALL_S)
                if not r:
                    if sid is not None and view is not None:
                        self.blocked.set()
                    continue
                data = sock.recv(65536)
                if not data:
                    return
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived) and sid is None:
                        sid = ev.stream_id
                        conn.send_headers(sid, [(":status", "200"), ("content-length", str(self.size))])
                        chunks = pattern_chunks(self.size)
                    elif isinstance(ev, h2.events.DataReceived):
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                out = conn.data_to_send()
                if out:
                    sock.sendall(out)

    def close(self):
        self.stop.set()
        self.lsock.close()
        self.thread.join(10)


class RawH2:
    """python-h2 client with a 2^31-1 window on the connection and on every stream,
    so that only Legate's own back-pressure can stop the download."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.h2.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1,
            h2.settings.SettingCodes.MAX_FRAME_SIZE: 16384})
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(2**31 - 1 - 65535)
        self.flush()
        self.status = None
        self.ended = False
        self.sha = hashlib.sha256()
        self.received = 0

    def flush(self):
        d = self.h2.data_to_send()
        if d:
            self.sock.sendall(d)

    def get(self, path, authority):
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, [(":method", "GET"), (":path", path), (":scheme", "http"),
                                   (":authority", authority)], end_stream=True)
        self.flush()
        return sid

    def read_some(self, n=65536):
        d = self.sock.recv(n)
        if not d:
            raise AssertionError("connection closed")
        for ev in self.h2.receive_data(d):
            if isinstance(ev, h2.events.ResponseReceived):
                self.status = dict(ev.headers)[":status"]
            elif isinstance(ev, h2.events.DataReceived):
                self.sha.update(ev.data)
                self.received += len(ev.data)
            elif isinstance(ev, h2.events.StreamEnded):
                self.ended = True
            elif isinstance(ev, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                raise AssertionError(f"unexpected {ev}")
        self.flush()

    def close(self):
        self.sock.close()


def slow_download(lg, up):
    """A client that first reads nothing, then reads the whole body."""
    c = RawH2(lg.listener_port())
    try:
        pid = lg.proc.pid
        base = rss(pid)
        c.get(f"/bytes/{BIG}", f"127.0.0.1:{lg.listener_port()}")
        # Read nothing: Legate must stop reading the upstream long before the end.
        wait_for(lambda: up.blocked.is_set() or up.done.is_set(), timeout=120, what="upstream blocked or done")
        assert not up.done.is_set(), "Legate read the whole body although the client read nothing"
        # Envoy's counters of the router pausing the upstream for a slow downstream
        flow = "cluster.backend.upstream_flow_control_"
        wait_for(lambda: lg.admin.stat(flow + "paused_reading_total") >= 1, timeout=30, what="paused_reading_total")
        grown = rss(pid) - base
        # ASan's quarantine keeps freed memory resident: only the blocking is checked there.
        assert grown < MAX_GROWTH or sanitized(), f"RSS grew by {grown >> 20} MiB with a client that reads nothing"
        # Now read it all, checking the growth as we go.
        peak, next_check = 0, 0
        while not c.ended:
            c.read_some()
            if c.received >= next_check:
                peak = max(peak, rss(pid) - base)
                next_check += 4 << 20
        assert c.status == "200"
        assert c.received == BIG and c.sha.hexdigest() == pattern_sha256(BIG)
        # every pause was followed by a resume while the stream was open
        wait_for(lambda: lg.admin.stat(flow + "resumed_reading_total") == lg.admin.stat(flow + "paused_reading_total"),
                 timeout=30, what="as many resumes as pauses")
        assert lg.admin.stat(flow + "paused_reading_total") >= 1
        assert peak < MAX_GROWTH or sanitized(), f"RSS grew by {peak >> 20} MiB during a slow download"
    finally:
        c.close()


@pytest.mark.deadline(240)
def test_slow_h2_client_back_pressures_h1_upstream(legate, ports):
    up = StreamingUpstream(BIG)
    try:
        slow_download(legate(cfg.simple_proxy(ports(), ports(), [up.port], route_extra={"timeout": "0s"})), up)
    finally:
        up.close()


@pytest.mark.deadline(240)
def test_slow_h2_client_back_pressures_h2_upstream(legate, ports):
    """The gRPC streaming path: h2 upstream to h2 downstream. The upstream's
    window is Envoy's 256 MiB by default, which lets it fill that much of
    Legate's memory (as in Envoy) before flow control stops it: the test
    uses a 1 MiB window, as an edge configuration would."""
    up = H2StreamingUpstream(BIG)
    window = {"initial_stream_window_size": 1 << 20, "initial_connection_window_size": 1 << 20}
    try:
        b = cfg.simple_proxy(ports(), ports(), [up.port], route_extra={"timeout": "0s"},
                             cluster_extra={"protocol_options": {
                                 "explicit_http_config": {"http2_protocol_options": window}}})
        slow_download(legate(b), up)
    finally:
        up.close()


def open_idle_h2c(port, n):
    """n connections, each after one finished request, left open and silent."""
    conns = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        c.initiate_connection()
        c.send_headers(1, [(":method", "GET"), (":path", "/idle"), (":scheme", "http"), (":authority", "idle")],
                       end_stream=True)
        s.sendall(c.data_to_send())
        ended = False
        while not ended:
            d = s.recv(65536)
            assert d, "connection closed"
            for ev in c.receive_data(d):
                if isinstance(ev, h2.events.StreamEnded):
                    ended = True
            s.sendall(c.data_to_send())
        conns.append(s)
    return conns


@pytest.mark.skipif(sanitized(), reason="ASan's allocator decides the RSS")
@pytest.mark.deadline(120)
def test_idle_h2c_connections_give_their_buffers_back(legate, ports):
    """An idle h2c connection drops its write buffers and nghttp2's frame
    buffer (it cost 23 KB before, over 16 KiB of them buffers)."""
    rc = cfg.route_config([cfg.vhost("local", [cfg.route(route_extra={
        "direct_response": {"status": 200, "body": {"inline_string": "idle\n"}}})])])
    lg = legate(cfg.bootstrap(ports(), listeners=[cfg.http_listener("ingress", ports(), rc)]),
                args=["--concurrency", "1"])
    pid = lg.proc.pid
    n = 400
    warm = open_idle_h2c(lg.listener_port(), 50)
    for s in warm:
        s.close()
    base = rss(pid)
    conns = open_idle_h2c(lg.listener_port(), n)
    try:
        wait_for(lambda: (rss(pid) - base) / n < 12 * 1024, timeout=10,
                 what="idle h2c connections under 12 KiB each")
        r = lg.admin.stat("http.ingress_http.downstream_cx_active")
        assert r == n, r
    finally:
        for s in conns:
            s.close()


@pytest.mark.skipif(sanitized(), reason="ASan's allocator decides the RSS")
@pytest.mark.deadline(180)
def test_h2c_upload_is_read_in_bounded_pieces(legate, ports, upstream, tmp_path):
    """A 64 MiB h2c upload: the codec reads at most 64 KiB per wake-up into a
    recycled buffer and nghttp2 takes it at once, so the proxy's peak RSS stays
    flat. libh2o's reading (until EAGAIN, into a doubling buffer) grew it by
    ~14 MiB and ran 9x slower than HAProxy."""
    up = upstream()
    lg = legate(cfg.simple_proxy(ports(), ports(), [up.port], route_extra={"timeout": "0s"}))
    url = f"http://127.0.0.1:{lg.listener_port()}"
    n = 64 << 20
    body = tmp_path / "zeros"
    with open(body, "wb") as f:
        f.truncate(n)
    warm = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code}", f"{url}/warm"],
                          capture_output=True, text=True, timeout=30)
    assert warm.stdout == "200"
    pid = lg.proc.pid
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # the peak so far is start-up's: measure from the current RSS
    before = peak_kib(pid)
    r = subprocess.run(["curl", "-sS", "--max-time", "100", "--http2-prior-knowledge", "-T", str(body), f"{url}/sink"],
                       capture_output=True, text=True, timeout=120)
    rec = json.loads(r.stdout)
    assert (rec["body_len"], rec["body_sha256"]) == (n, hashlib.sha256(bytes(n)).hexdigest())
    grown = peak_kib(pid) - before
    assert grown < 4096, f"peak RSS grew by {grown} KiB"


def peak_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def premature_proxy(legate, ports, upstream, count):
    up = upstream()
    boot = cfg.simple_proxy(ports(), ports(), [up.port])
    boot["layered_runtime"] = {"layers": [{"name": "static", "static_layer": {
        "overload.premature_reset_total_stream_count": count}}]}
    return legate(boot), up


def reset_streams(c, n):
    """Opens n requests (bodies still to come) and resets each at once (RST_STREAM CANCEL)."""
    for _ in range(n):
        sid = c.conn.get_next_available_stream_id()
        c.conn.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":authority", "x"), (":path", "/rst")])
        c.conn.reset_stream(sid)
    c._flush()


def test_rapid_resets_close_the_connection(legate, ports, upstream):
    """Envoy's premature reset protection (HTTP/2 rapid reset, CVE-2023-44487): streams the
    client resets within a second are premature; once they are half of
    overload.premature_reset_total_stream_count the connection is closed and counted.
    Another connection is untouched."""
    lg, up = premature_proxy(legate, ports, upstream, 20)
    with H2Client("127.0.0.1", lg.listener_port(), timeout=10) as other, \
            H2Client("127.0.0.1", lg.listener_port(), timeout=10) as c:
        assert other.get("/before").status == 200
        reset_streams(c, 10)
        wait_for(lambda: not c.pump(0.2), what="the connection closed")
        assert lg.admin.stat("http.ingress_http.downstream_rq_too_many_premature_resets") == 1
        assert other.get("/after").status == 200


def test_resets_among_many_completed_streams_are_tolerated(legate, ports, upstream):
    """Past the stream count, resets are premature only when they are half of all closed
    streams: 30 completed requests and 10 resets keep the connection."""
    lg, up = premature_proxy(legate, ports, upstream, 20)
    with H2Client("127.0.0.1", lg.listener_port(), timeout=10) as c:
        for i in range(30):
            assert c.get(f"/ok{i}").status == 200
        reset_streams(c, 10)
        assert c.get("/still").status == 200
        assert lg.admin.stat("http.ingress_http.downstream_rq_too_many_premature_resets") == 0
        reset_streams(c, 30)  # now 40 of 71 closed streams were reset within a second
        wait_for(lambda: not c.pump(0.2), what="the connection closed")
        assert lg.admin.stat("http.ingress_http.downstream_rq_too_many_premature_resets") == 1
