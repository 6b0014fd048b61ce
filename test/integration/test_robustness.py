"""Hostile peers on both sides: Legate stays up, answers as Envoy does, frees
what the exchange held, and other connections never notice.

- An upstream that breaks HTTP/1 framing before the response head (garbage,
  a bad status line, conflicting Content-Length/Transfer-Encoding, invalid
  header bytes, an oversized head) is a protocol error: Envoy answers 502
  with "upstream connect error or disconnect/reset before headers. reset
  reason: protocol error" (flag UPE) and counts
  cluster.<name>.upstream_cx_protocol_error.
- An upstream that closes before the head: 503, reset reason "connection
  termination" (flag UC).
- Bytes after a complete response are never taken for the next request's
  response: the connection is dropped as a protocol error.
- An HTTP/2 upstream that breaks the protocol, resets, floods or goes away
  mid-body never takes the proxy down or leaves a request active.
- Downstream HTTP/2 floods and invalid frames end in GOAWAY or a closed
  connection; clients that vanish mid-request or mid-response leave no
  active request behind.

"""
import fcntl
import socket
import struct
import termios
import threading

import pytest

from lib import config as cfg
from lib.h2client import (FLAG_ACK, FLAG_END_HEADERS, FLAG_END_STREAM, FRAME_CONTINUATION, FRAME_DATA, FRAME_GOAWAY,
                          FRAME_HEADERS, FRAME_PING, FRAME_RST_STREAM, FRAME_SETTINGS, FRAME_WINDOW_UPDATE, PREFACE,
                          H2Client, frame, goaway_of, hpack_headers, raw_connect, read_frames)
from lib.rawhttp import RawHTTP, one_shot
from lib.wait import wait_for

PROTO_ERR = "http.ingress_http.downstream_cx_protocol_error"
UP_PROTO_ERR = "cluster.backend.upstream_cx_protocol_error"
UP_RQ_ACTIVE = "cluster.backend.upstream_rq_active"
DS_RQ_ACTIVE = "http.ingress_http.downstream_rq_active"
OK_RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


class ScriptedUpstream:
    """A raw HTTP/1.1 upstream on 127.0.0.1: for each request (head plus a
    Content-Length body), the actions listed under its path run in order;
    other paths get OK_RESPONSE. Actions: ("send", bytes), ("close",)
    (FIN), ("rst",) (close with a TCP RST), ("wait", event) (blocks until
    the threading.Event is set). The connection then serves the next request."""

    def __init__(self, script):
        self.script = script
        self.paths = []
        self._lock = threading.Lock()
        self._conns = []
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self._conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    @staticmethod
    def _read_request(c, buf):
        while b"\r\n\r\n" not in buf:
            data = c.recv(65536)
            if not data:
                return None, None
            buf += data
        head, buf = buf.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(buf) < length:
            data = c.recv(65536)
            if not data:
                return None, None
            buf += data
        return lines[0].split(b" ")[1].decode(), buf[length:]

    def _serve(self, c):
        buf = b""
        try:
            while True:
                path, buf = self._read_request(c, buf)
                if path is None:
                    return
                with self._lock:
                    self.paths.append(path)
                for action in self.script.get(path, [("send", OK_RESPONSE)]):
                    if action[0] == "send":
                        c.sendall(action[1])
                    elif action[0] == "wait":
                        action[1].wait(30)
                    elif action[0] == "rst":
                        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        return
                    else:
                        return
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self._sock.close()
        with self._lock:
            for c in self._conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture
def scripted():
    started = []

    def make(script):
        u = ScriptedUpstream(script)
        started.append(u)
        return u

    yield make
    for u in started:
        u.close()


def proxy(legate, ports, port, **kw):
    """One worker, so that consecutive requests share the upstream pool."""
    return legate(cfg.simple_proxy(ports(), ports(), [port], **kw), args=["--concurrency", "1"])


def get(lg, path):
    r, _ = one_shot(lg.listener_port(), b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path.encode())
    return r


BAD_UPSTREAM = {
    "garbage": b"THIS IS NOT HTTP\r\n\r\n",
    "status_not_a_number": b"HTTP/1.1 abc OK\r\ncontent-length: 0\r\n\r\n",
    "status_two_digits": b"HTTP/1.1 99 Weird\r\ncontent-length: 0\r\n\r\n",
    "cl_and_te": b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    "two_content_lengths": b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
    "negative_content_length": b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
    "content_length_overflow": b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999999\r\n\r\n",
    "te_not_chunked": b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nabc",
    "nul_in_value": b"HTTP/1.1 200 OK\r\nx-a: a\x00b\r\ncontent-length: 0\r\n\r\n",
    "space_in_name": b"HTTP/1.1 200 OK\r\nx a: b\r\ncontent-length: 0\r\n\r\n",
    "http09": b"hello world\n",
    "oversized_head": b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * 200000 + b"\r\ncontent-length: 0\r\n\r\n",
    "too_many_headers": b"HTTP/1.1 200 OK\r\n" + b"".join(b"x-h%d: v\r\n" % i for i in range(500)) +
                        b"content-length: 0\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(BAD_UPSTREAM))
def test_bad_upstream_response_is_502_protocol_error(legate, ports, scripted, name):
    up = scripted({"/bad": [("send", BAD_UPSTREAM[name]), ("close",)]})
    lg = proxy(legate, ports, up.port)
    r = get(lg, "/bad")
    assert r is not None and r.status == 502, f"got {r}"
    assert r.body == b"upstream connect error or disconnect/reset before headers. reset reason: protocol error"
    wait_for(lambda: lg.admin.stat(UP_PROTO_ERR) >= 1, timeout=5, what=UP_PROTO_ERR)
    assert get(lg, "/after").status == 200
    wait_for(lambda: lg.admin.stat(UP_RQ_ACTIVE) == 0, timeout=5, what=f"{UP_RQ_ACTIVE} == 0")


@pytest.mark.parametrize("action", ["close", "rst"])
def test_upstream_gone_before_headers_is_503_connection_termination(legate, ports, scripted, action):
    up = scripted({"/gone": [(action,)]})
    lg = proxy(legate, ports, up.port)
    r = get(lg, "/gone")
    assert r.status == 503
    assert r.body == b"upstream connect error or disconnect/reset before headers. reset reason: connection termination"
    assert get(lg, "/after").status == 200


def test_upstream_bytes_after_response_are_not_the_next_response(legate, ports, scripted):
    """A response followed by a forged second one in the same write: the
    forgery must not answer the next request on the pooled connection."""
    forged = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nFORGED"
    up = scripted({"/first": [("send", OK_RESPONSE + forged)]})
    lg = proxy(legate, ports, up.port)
    with RawHTTP("127.0.0.1", lg.listener_port()) as c:
        c.request("GET", "/first")
        r = c.read_response()
        assert (r.status, r.body) == (200, b"ok")
        c.request("GET", "/second")
        r = c.read_response()
        assert (r.status, r.body) == (200, b"ok")
    assert up.paths == ["/first", "/second"]
    wait_for(lambda: lg.admin.stat(UP_PROTO_ERR) == 1, timeout=5, what=UP_PROTO_ERR)


def test_upstream_slow_client_gives_up(legate, ports, scripted):
    """The client leaves while the upstream has not answered: the upstream
    request is reset and nothing stays active."""
    release = threading.Event()
    up = scripted({"/slow": [("wait", release), ("send", OK_RESPONSE)]})
    lg = proxy(legate, ports, up.port)
    try:
        with RawHTTP("127.0.0.1", lg.listener_port()) as c:
            c.request("GET", "/slow")
            wait_for(lambda: up.paths == ["/slow"], timeout=5, what="the upstream to get the request")
        wait_for(lambda: lg.admin.stat(UP_RQ_ACTIVE) == 0 and lg.admin.stat(DS_RQ_ACTIVE) == 0, timeout=5,
                 what="no active request")
        assert lg.admin.stat("cluster.backend.upstream_rq_tx_reset") == 1
    finally:
        release.set()
    assert get(lg, "/after").status == 200


def test_stalled_upload_timed_out_closes_the_upstream(legate, ports):
    """The upstream takes no body bytes, so the proxy's write to it waits on
    the client's bytes (they are not copied) and reading from the client stops
    at the buffer limit. The stream idle timeout then answers 408 and resets
    the upstream request: its connection is shut down before those bytes are
    freed, and nothing stays active."""
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # inherited: the upstream side fills at once
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    accepted = []
    threading.Thread(target=lambda: accepted.append(lsock.accept()[0]), daemon=True).start()
    lg = legate(cfg.simple_proxy(ports(), ports(), [lsock.getsockname()[1]], stream_idle_timeout="1s"),
                args=["--concurrency", "1"])
    c = socket.create_connection(("127.0.0.1", lg.listener_port()), timeout=5)
    try:
        c.sendall(b"PUT /stalled HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (64 << 20))
        wait_for(lambda: accepted, timeout=5, what="the upstream connection")
        up = accepted[0]
        c.setblocking(False)
        block = b"u" * 65536
        idle_polls = [0]

        def stalled():
            """Twice in a row the client could send nothing: every buffer on the way is full."""
            sent = 0
            try:
                while True:
                    sent += c.send(block)
            except BlockingIOError:
                pass
            idle_polls[0] = idle_polls[0] + 1 if sent == 0 else 0
            queued = struct.unpack("i", fcntl.ioctl(up, termios.FIONREAD, b"\0" * 4))[0]
            return idle_polls[0] >= 2 and queued > 0

        wait_for(stalled, timeout=10, what="the upload to stall at the upstream")
        c.setblocking(True)
        got = b""
        while b"\r\n\r\n" not in got:
            data = c.recv(4096)
            assert data, f"closed after {got!r}"
            got += data
        assert got.startswith(b"HTTP/1.1 408 "), got
    finally:
        c.close()
    up.settimeout(10)
    try:
        while up.recv(1 << 20):
            pass  # what the proxy had sent, then its close
    except ConnectionResetError:
        pass
    finally:
        up.close()
        lsock.close()
    wait_for(lambda: lg.admin.stat(UP_RQ_ACTIVE) == 0 and lg.admin.stat(DS_RQ_ACTIVE) == 0, timeout=5,
             what="no active request")
    assert lg.admin.stat("cluster.backend.upstream_rq_tx_reset") == 1
    assert lg.admin.stat("http.ingress_http.downstream_rq_idle_timeout") == 1
    assert lg.alive()


@pytest.mark.parametrize("script", [
    [("send", b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n" + b"x" * 5000), ("rst",)],
    [("send", b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n" + b"x" * 5000), ("close",)],
    [("send", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nQ\r\n"), ("close",)],
], ids=["reset_mid_body", "close_mid_body", "bad_chunk_mid_body"])
def test_upstream_fails_mid_body_h1_downstream(legate, ports, scripted, script):
    """The response started, then the upstream failed: the h1 downstream
    connection is closed (the client sees a cut response). Regression: the
    downstream reset closes the h1 connection and frees the HCM connection
    inside the call, which stream_destroy must not touch afterwards."""
    up = scripted({"/mid": script})
    lg = proxy(legate, ports, up.port)
    with RawHTTP("127.0.0.1", lg.listener_port()) as c:
        c.request("GET", "/mid")
        with pytest.raises(Exception):
            c.read_response()
    assert lg.alive()
    assert get(lg, "/after").status == 200


def test_downstream_gone_after_upstream_response_ended_frees_upstream(legate, ports, upstream):
    """router.c detach_upstream: an upstream stream whose response has ended
    is orphaned without consuming the bytes it delivered that the downstream
    never took; the h1 client never completes it, so the connection and a
    max_requests slot leak for good (later requests: 503 overflow)."""
    up = upstream()
    lg = proxy(legate, ports, up.port,
               cluster_extra={"circuit_breakers": {"thresholds": [{"max_requests": 1}]}})
    block = hpack_headers([(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", "/bytes/30000")])
    s = socket.create_connection(("127.0.0.1", lg.listener_port()), timeout=5)
    # a 100-byte stream window: Legate reads the whole response but can send only 100 bytes of it
    s.sendall(PREFACE + frame(FRAME_SETTINGS, 0, 0, struct.pack(">HI", 4, 100)) +
              frame(FRAME_HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 1, block))
    assert any(f[0] == FRAME_DATA for f in read_frames(s, timeout=5, until=lambda f: f[0] == FRAME_DATA))
    wait_for(lambda: up.requests and up.inflight == 0, timeout=5, what="the upstream to finish its response")
    s.sendall(frame(FRAME_PING, 0, 0, b"12345678"))
    read_frames(s, timeout=5, until=lambda f: f[0] == FRAME_PING and f[1] & FLAG_ACK)
    s.close()
    wait_for(lambda: lg.admin.stat(UP_RQ_ACTIVE) == 0, timeout=5, what=f"{UP_RQ_ACTIVE} == 0")
    assert get(lg, "/after").status == 200


class RawH2Upstream:
    """A raw HTTP/2 (prior knowledge) upstream on 127.0.0.1: it answers
    SETTINGS, and for each request HEADERS frame sends script[path](sid)
    (raw frames; other paths get a 200 with body "ok"). A script ending in
    b"CLOSE" closes the connection after the bytes before it."""

    def __init__(self, script):
        self.script = script
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self._conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self._sock.accept()
            except OSError:
                return
            self._conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _answer(self, c, sid, path):
        out = self.script.get(path, lambda i: h2_head(i, 200) + frame(FRAME_DATA, FLAG_END_STREAM, i, b"ok"))(sid)
        if out.endswith(b"CLOSE"):
            c.sendall(out[:-5])
            c.close()
            return False
        c.sendall(out)
        return True

    def _serve(self, c):
        import hpack

        decoder = hpack.Decoder()
        buf = b""
        try:
            c.sendall(frame(FRAME_SETTINGS, 0, 0))
            while True:
                data = c.recv(65536)
                if not data:
                    return
                buf += data
                if buf.startswith(PREFACE):
                    buf = buf[len(PREFACE):]
                while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
                    n = int.from_bytes(buf[:3], "big")
                    ftype, flags, sid, payload = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF, buf[9:9 + n]
                    buf = buf[9 + n:]
                    if ftype == FRAME_SETTINGS and not flags & FLAG_ACK:
                        c.sendall(frame(FRAME_SETTINGS, FLAG_ACK, 0))
                    elif ftype == FRAME_HEADERS and not self._answer(c, sid, dict(decoder.decode(payload)).get(":path")):
                        return
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self._sock.close()
        for c in self._conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def h2_head(sid, status, end=False, extra=()):
    flags = FLAG_END_HEADERS | (FLAG_END_STREAM if end else 0)
    return frame(FRAME_HEADERS, flags, sid, hpack_headers([(":status", str(status))] + list(extra)))


H2_BAD_UPSTREAM = {
    "garbage": lambda sid: b"\x00\x00\x04\xff\xff\xff\xff\xff\xffgarbage" * 3,
    "uppercase_header": lambda sid: h2_head(sid, 200, True, [("X-Bad", "1")]),
    "no_status": lambda sid: frame(FRAME_HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, sid, hpack_headers([("x-a", "1")])),
    "status_not_a_number": lambda sid: frame(FRAME_HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, sid,
                                              hpack_headers([(":status", "abc")])),
    "data_before_headers": lambda sid: frame(FRAME_DATA, FLAG_END_STREAM, sid, b"x"),
    "trailers_without_end_stream": lambda sid: h2_head(sid, 200) + h2_head(sid, 200),
    "window_update_overflow": lambda sid: frame(FRAME_WINDOW_UPDATE, 0, 0, struct.pack(">I", 0x7FFFFFFF)) * 2,
}

H2_UPSTREAM_FAILURES = dict(H2_BAD_UPSTREAM, **{
    "rst_before_headers": lambda sid: frame(FRAME_RST_STREAM, 0, sid, struct.pack(">I", 2)),
    "rst_mid_body": lambda sid: h2_head(sid, 200) + frame(FRAME_DATA, 0, sid, b"x" * 100) + frame(
        FRAME_RST_STREAM, 0, sid, struct.pack(">I", 2)),
    "goaway_mid_body": lambda sid: h2_head(sid, 200) + frame(FRAME_DATA, 0, sid, b"x" * 100) + frame(
        FRAME_GOAWAY, 0, 0, struct.pack(">II", 0, 2)) + b"CLOSE",
    "close_mid_body": lambda sid: h2_head(sid, 200) + frame(FRAME_DATA, 0, sid, b"x" * 100) + b"CLOSE",
    "close_before_headers": lambda sid: b"CLOSE",
    "content_length_mismatch": lambda sid: h2_head(sid, 200, extra=[("content-length", "10")]) + frame(
        FRAME_DATA, FLAG_END_STREAM, sid, b"x" * 20),
    "thousand_1xx": lambda sid: h2_head(sid, 100) * 1000 + h2_head(sid, 200, True),
    "settings_flood": lambda sid: frame(FRAME_SETTINGS, 0, 0, struct.pack(">HI", 3, 100)) * 5000,
    "ping_flood": lambda sid: frame(FRAME_PING, 0, 0, b"12345678") * 5000,
})


@pytest.fixture
def raw_h2_upstream():
    started = []

    def make(script):
        u = RawH2Upstream(script)
        started.append(u)
        return u

    yield make
    for u in started:
        u.close()


@pytest.mark.parametrize("name", sorted(H2_UPSTREAM_FAILURES))
def test_h2_upstream_misbehaving_leaves_proxy_healthy(legate, ports, raw_h2_upstream, name):
    up = raw_h2_upstream({"/bad": H2_UPSTREAM_FAILURES[name]})
    lg = proxy(legate, ports, up.port, route_extra={"timeout": "5s"}, cluster_extra={"http2_protocol_options": {}})
    with H2Client("127.0.0.1", lg.listener_port()) as c:
        try:
            c.get("/bad")
        except Exception:  # noqa: BLE001 - a cut response is a fine answer here
            pass
    with RawHTTP("127.0.0.1", lg.listener_port()) as c:
        c.request("GET", "/bad")
        try:
            c.read_response()
        except Exception:  # noqa: BLE001
            pass
    assert get(lg, "/after").status == 200
    wait_for(lambda: lg.admin.stat(UP_RQ_ACTIVE) == 0 and lg.admin.stat(DS_RQ_ACTIVE) == 0, timeout=5,
             what="no active request")


@pytest.mark.parametrize("name", sorted(H2_BAD_UPSTREAM))
def test_h2_upstream_protocol_error_is_502(legate, ports, raw_h2_upstream, name):
    """h2_common.c close_now / check_finished retire every stream with
    LG_RESET_CONNECTION_TERMINATION even when the connection dies of a
    protocol error, so the router answers 503 "connection termination"
    where Envoy answers 502 "protocol error" (UPE)."""
    up = raw_h2_upstream({"/bad": H2_BAD_UPSTREAM[name]})
    lg = proxy(legate, ports, up.port, cluster_extra={"http2_protocol_options": {}})
    r = get(lg, "/bad")
    assert r.status == 502, f"got {r}: {r.body!r}"
    assert r.body == b"upstream connect error or disconnect/reset before headers. reset reason: protocol error"


def h2_get(path):
    return hpack_headers([(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", path)])


H2_FLOODS = {
    "settings_flood": lambda: b"".join(frame(FRAME_SETTINGS, 0, 0, struct.pack(">HI", 3, 100)) for _ in range(20000)),
    "ping_flood": lambda: frame(FRAME_PING, 0, 0, b"12345678") * 20000,
    "rst_stream_flood": lambda: b"".join(
        frame(FRAME_HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, sid, h2_get("/r")) +
        frame(FRAME_RST_STREAM, 0, sid, struct.pack(">I", 8)) for sid in range(1, 4000, 2)),
    "continuation_flood": lambda: frame(FRAME_HEADERS, 0, 1, h2_get("/c")) + b"".join(
        frame(FRAME_CONTINUATION, 0, 1, hpack_headers([("x-a", "b" * 100)])) for _ in range(5000)),
    "empty_continuation_flood": lambda: frame(FRAME_HEADERS, 0, 1, h2_get("/c")) + frame(FRAME_CONTINUATION, 0, 1) * 20000,
    "window_update_zero_on_connection": lambda: frame(FRAME_WINDOW_UPDATE, 0, 0, struct.pack(">I", 0)),
    "window_update_overflow_on_connection": lambda: frame(FRAME_WINDOW_UPDATE, 0, 0, struct.pack(">I", 0x7FFFFFFF)) * 2,
    "window_update_overflow_on_stream": lambda: frame(FRAME_HEADERS, FLAG_END_HEADERS, 1, h2_get("/w")) + frame(
        FRAME_WINDOW_UPDATE, 0, 1, struct.pack(">I", 0x7FFFFFFF)) * 2,
    "hpack_garbage": lambda: frame(FRAME_HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 1, b"\xff" * 7 + b"\x7f"),
    "zero_length_data_flood": lambda: frame(FRAME_HEADERS, FLAG_END_HEADERS, 1, hpack_headers(
        [(":method", "POST"), (":scheme", "http"), (":authority", "x"), (":path", "/z")])) + frame(FRAME_DATA, 0, 1) * 20000,
}


H2_FLOOD_STATS = {"settings_flood": "outbound_control_flood", "ping_flood": "outbound_control_flood",
                  "zero_length_data_flood": "inbound_empty_frames_flood"}


@pytest.mark.parametrize("name", sorted(H2_FLOODS))
def test_h2_flood_or_invalid_frame_ends_in_goaway(legate, ports, upstream, name):
    up = upstream()
    lg = proxy(legate, ports, up.port)
    with H2Client("127.0.0.1", lg.listener_port()) as other:
        s = raw_connect("127.0.0.1", lg.listener_port())
        try:
            s.sendall(H2_FLOODS[name]())
        except OSError:
            pass  # Legate may close before reading everything
        frames = read_frames(s, timeout=10, until=lambda f: f[0] == FRAME_GOAWAY)
        s.close()
        ga = goaway_of(frames)
        assert ga is not None and ga[0] != 0, f"no GOAWAY with an error; frames: {[f[0] for f in frames[-10:]]}"
        assert other.get("/still-fine").status == 200
    wait_for(lambda: lg.admin.stat(PROTO_ERR) >= 1, timeout=5, what=PROTO_ERR)
    wait_for(lambda: lg.admin.stat(DS_RQ_ACTIVE) == 0, timeout=5, what=f"{DS_RQ_ACTIVE} == 0")
    # Envoy's codec stats: the flood that was detected (the others are protocol errors), and the GOAWAY
    stats = lg.admin.stats()
    assert {k: v for k, v in stats.items() if k.startswith("http2.") and k.endswith("_flood") and v} == \
        ({f"http2.{H2_FLOOD_STATS[name]}": 1} if name in H2_FLOOD_STATS else {})
    assert stats["http2.goaway_sent"] >= 1


def h1_abort(port, kind):
    """One client that leaves early; returns once it has closed."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        if kind == "partial_head":
            s.sendall(b"GET /bytes/100 HTTP/1.1\r\nHost: x\r\nX-A: ")
        elif kind == "partial_body":
            s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"x" * 30000)
        elif kind == "partial_chunk":
            s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n" + b"x" * 100)
        elif kind == "mid_response":
            s.sendall(b"GET /bytes/2000000 HTTP/1.1\r\nHost: x\r\n\r\n")
            s.recv(1000)
        elif kind == "pipelined":
            s.sendall(b"GET /bytes/10000 HTTP/1.1\r\nHost: x\r\n\r\n" * 50)
            s.recv(1000)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        s.close()


@pytest.mark.parametrize("kind", ["partial_head", "partial_body", "partial_chunk", "mid_response", "pipelined"])
def test_h1_clients_leaving_early_leave_nothing_active(legate, ports, upstream, kind):
    up = upstream()
    lg = proxy(legate, ports, up.port)
    with RawHTTP("127.0.0.1", lg.listener_port()) as other:
        for _ in range(20):
            h1_abort(lg.listener_port(), kind)
        other.request("GET", "/still-fine")
        assert other.read_response().status == 200
    wait_for(lambda: lg.admin.stat(DS_RQ_ACTIVE) == 0, timeout=10, what=f"{DS_RQ_ACTIVE} == 0")
    wait_for(lambda: lg.admin.stat("http.ingress_http.downstream_cx_active") == 0, timeout=10,
             what="no active downstream connection")


def test_pipelined_flood_answered_in_order(legate, ports, upstream):
    up = upstream()
    lg = proxy(legate, ports, up.port)
    n = 300
    with RawHTTP("127.0.0.1", lg.listener_port(), timeout=30) as c:
        c.send(b"".join(b"GET /p%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(n)))
        for i in range(n):
            r = c.read_response()
            assert r.status == 200 and r.json()["path"] == f"/p{i}"
