"""A threaded HTTP/1.1 echo upstream (TCP or unix socket).

Every request is recorded (method, path, headers in wire order, body length
and sha256, trailers, connection id, peer) and, unless a knob says otherwise,
answered with a JSON description of itself. Knobs, by path:

  /status/<code>            reply with that status (JSON body unless 1xx/204/304)
  /delay/<ms>               wait ms (at most 30 s) before replying
  /bytes/<n>                stream n bytes of pattern(), content-length framed;
                            header x-body-sha256 carries their sha256
  /chunked/<n>              the same bytes, chunked framing, no content-length
  /close-before-response    read the request, close the connection silently
  /reset                    read the request, close with a TCP RST
  /flaky/<key>/<n>          the first n requests for key get 503, later ones 200
  /nodate                   reply without a Date header

and by request header:

  x-echo-set-header: name: value   add that header to the response (repeatable)

Every response carries `server: echo-upstream/<name>` and `x-upstream: <name>`.
"""
import hashlib
import http.client
import http.server
import itertools
import json
import os
import re
import socket
import socketserver
import sys
import struct
import threading
import time

# Envoy forwards up to 100 client headers plus its own; Python's default
# limit of 100 would make the upstream, not the proxy, reject such requests.
http.client._MAXHEADERS = 1000

_BLOCK = bytes((i * 31 + 7) & 0xFF for i in range(65536))


def pattern(n):
    """n deterministic bytes (the same on every call)."""
    full, rest = divmod(n, len(_BLOCK))
    return _BLOCK * full + _BLOCK[:rest]


def pattern_chunks(n, size=65536):
    """pattern(n) as consecutive chunks of at most size bytes."""
    block_len = len(_BLOCK)
    sent = 0
    while sent < n:
        k = min(size, n - sent)
        off = sent % block_len
        reps = (off + k + block_len - 1) // block_len
        yield (_BLOCK * reps)[off:off + k]
        sent += k


_sha_cache = {}


def pattern_sha256(n):
    if n not in _sha_cache:
        h = hashlib.sha256()
        for chunk in pattern_chunks(n):
            h.update(chunk)
        _sha_cache[n] = h.hexdigest()
    return _sha_cache[n]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "echo-upstream"

    def setup(self):
        super().setup()
        up = self.server.upstream
        self.conn_id = up._register_conn(self.connection)
        peer = self.client_address
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unix"

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.upstream._unregister_conn(self.connection)

    def log_message(self, fmt, *args):
        pass

    def _read_body(self):
        h = hashlib.sha256()
        n = 0
        trailers = []
        te = ",".join(self.headers.get_all("Transfer-Encoding") or []).lower()
        if "chunked" in te:
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise ConnectionError("eof before a chunk size")
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    break
                remaining = size
                while remaining:
                    data = self.rfile.read(min(remaining, 1 << 20))
                    if not data:
                        raise ConnectionError("eof in chunk")
                    h.update(data)
                    n += len(data)
                    remaining -= len(data)
                self.rfile.readline(3)
            while True:
                line = self.rfile.readline(65537)
                if line in (b"\r\n", b"\n", b""):
                    break
                k, _, v = line.decode("latin-1").partition(":")
                trailers.append((k.strip().lower(), v.strip()))
        elif self.headers.get("Content-Length"):
            remaining = int(self.headers["Content-Length"])
            while remaining:
                data = self.rfile.read(min(remaining, 1 << 20))
                if not data:
                    raise ConnectionError("eof in body")
                h.update(data)
                n += len(data)
                remaining -= len(data)
        return n, h.hexdigest(), trailers

    def _handle(self):
        up = self.server.upstream
        body_len, body_sha, trailers = self._read_body()
        rec = {
            "server": up.name,
            "protocol": "HTTP/1.1",
            "conn_id": self.conn_id,
            "peer": self.peer,
            "method": self.command,
            "path": self.path,
            "version": self.request_version,
            "headers": [[k.lower(), v] for k, v in self.headers.items()],
            "body_len": body_len,
            "body_sha256": body_sha,
            "trailers": [list(t) for t in trailers],
        }
        up._record(rec)
        up._inflight_add(1)
        try:
            self._respond(rec)
        finally:
            up._inflight_add(-1)

    def _respond(self, rec):
        up = self.server.upstream
        path = self.path.split("?", 1)[0]
        extra = []
        for v in self.headers.get_all("x-echo-set-header") or []:
            k, _, val = v.partition(":")
            extra.append((k.strip(), val.strip()))
        if path == "/close-before-response":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if path == "/reset":
            self.close_connection = True
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            return
        m = re.fullmatch(r"/delay/(\d+)", path)
        if m:
            time.sleep(min(int(m.group(1)), 30000) / 1000.0)
        status = 200
        m = re.fullmatch(r"/status/(\d{3})", path)
        if m:
            status = int(m.group(1))
        m = re.fullmatch(r"/flaky/([^/]+)/(\d+)", path)
        if m:
            status = 503 if up._flaky_hit(m.group(1)) <= int(m.group(2)) else 200
        m = re.fullmatch(r"/(bytes|chunked)/(\d+)", path)
        if m:
            self._send_pattern(int(m.group(2)), chunked=m.group(1) == "chunked", extra=extra)
            return
        body = json.dumps(rec).encode() if status not in (204, 304) and status >= 200 else b""
        self.send_response_only(status)
        self._common_headers(date=path != "/nodate")
        for k, v in extra:
            self.send_header(k, v)
        if status not in (204, 304):
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        self.wfile.flush()

    def _common_headers(self, date=True):
        self.send_header("Server", f"echo-upstream/{self.server.upstream.name}")
        self.send_header("x-upstream", self.server.upstream.name)
        if date:
            self.send_header("Date", self.date_time_string())
        if self.close_connection:
            self.send_header("Connection", "close")

    def _send_pattern(self, n, chunked, extra):
        self.send_response_only(200)
        self._common_headers()
        for k, v in extra:
            self.send_header(k, v)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("x-body-sha256", pattern_sha256(n))
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(n))
        self.end_headers()
        if self.command == "HEAD":
            return
        for chunk in pattern_chunks(n, 65536 if not chunked else 10000):
            if chunked:
                self.wfile.write(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            else:
                self.wfile.write(chunk)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _handle


class _QuietOnDisconnect:
    """A peer that goes away mid-request (a reset or timeout under test) is not an error of the upstream."""

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _TCPServer(_QuietOnDisconnect, socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 1024  # the default of 5 drops SYNs when a proxy opens many connections at once

    def server_bind(self):
        socketserver.TCPServer.server_bind(self)  # skip HTTPServer's getfqdn()
        host, port = self.server_address[:2]
        self.server_name, self.server_port = host, port


class _TCPServer6(_TCPServer):
    address_family = socket.AF_INET6


class _UnixServer(_QuietOnDisconnect, socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024


class EchoUpstream:
    """An echo upstream. Use as a context manager or call close().

    unix_path: listen on that unix socket path instead of TCP 127.0.0.1:<port>.
    """

    def __init__(self, name="upstream", host="127.0.0.1", port=0, unix_path=None):
        self.name = name
        self.unix_path = unix_path
        self.requests = []
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._conns = {}
        self._conn_ids = itertools.count(1)
        self._inflight = 0
        self._flaky = {}
        self.connections_total = 0
        if unix_path:
            if os.path.exists(unix_path):
                os.unlink(unix_path)
            self._server = _UnixServer(unix_path, _Handler)
        else:
            self._server = (_TCPServer6 if ":" in host else _TCPServer)((host, port), _Handler)
        self._server.upstream = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"upstream-{name}", daemon=True)
        self._thread.start()

    @property
    def port(self):
        return self._server.server_address[1]

    @property
    def address(self):
        return self.unix_path or f"127.0.0.1:{self.port}"

    # ---- bookkeeping used by the handler ----------------------------------

    def _register_conn(self, sock):
        with self._lock:
            cid = next(self._conn_ids)
            self._conns[sock] = cid
            self.connections_total += 1
            return cid

    def _unregister_conn(self, sock):
        with self._lock:
            self._conns.pop(sock, None)
            self._cond.notify_all()

    def _record(self, rec):
        with self._lock:
            self.requests.append(rec)
            self._cond.notify_all()

    def _inflight_add(self, d):
        with self._lock:
            self._inflight += d
            self._cond.notify_all()

    def _flaky_hit(self, key):
        with self._lock:
            self._flaky[key] = self._flaky.get(key, 0) + 1
            return self._flaky[key]

    # ---- queries for tests -------------------------------------------------

    @property
    def inflight(self):
        with self._lock:
            return self._inflight

    @property
    def open_connections(self):
        with self._lock:
            return len(self._conns)

    def wait_inflight(self, n, timeout=10.0):
        """Waits until at least n requests are being handled (delayed) at once."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._inflight >= n, timeout):
                raise AssertionError(f"upstream {self.name}: {self._inflight} in flight, wanted {n}")

    def wait_requests(self, n, timeout=10.0):
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.requests) >= n, timeout):
                raise AssertionError(f"upstream {self.name}: saw {len(self.requests)} requests, wanted {n}")
            return list(self.requests)

    def paths(self):
        with self._lock:
            return [r["path"] for r in self.requests]

    def close(self):
        self._server.shutdown()
        with self._lock:
            socks = list(self._conns)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.server_close()
        self._thread.join(timeout=5)
        if self.unix_path and os.path.exists(self.unix_path):
            os.unlink(self.unix_path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def header_values(rec, name):
    """All values of a request header as the upstream saw it (rec from the echo JSON)."""
    name = name.lower()
    return [v for k, v in rec["headers"] if k == name]


def header_value(rec, name, default=None):
    vals = header_values(rec, name)
    return vals[0] if vals else default
