"""A raw HTTP/1.1 client over a socket: exact bytes out, strict parsing in.

Tests use it where a library would fix up the request (smuggling vectors,
bad chunk sizes, pipelining) or hide the framing of the response.
"""
import socket
import time


def recv_head(sock, chunk=65536):
    """Reads from sock until a blank line ends an HTTP head; returns what was read (the head and
    any bytes after it), or None when the peer closes first. For test servers."""
    data = b""
    while b"\r\n\r\n" not in data:
        d = sock.recv(chunk)
        if not d:
            return None
        data += d
    return data


class RawResponse:
    def __init__(self, version, status, reason, headers, body, trailers, interim):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers  # [(lower-case name, value)] in wire order
        self.body = body
        self.trailers = trailers
        self.interim = interim  # 1xx responses before this one: [(status, headers)]

    def header(self, name, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return default

    def header_all(self, name):
        name = name.lower()
        return [v for k, v in self.headers if k == name]

    def json(self):
        import json

        return json.loads(self.body)

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def __repr__(self):
        return f"RawResponse({self.status} {self.reason!r}, {len(self.body)} bytes)"


class ConnectionClosed(Exception):
    pass


class RawHTTP:
    """One client connection. read_response() parses exactly one response."""

    def __init__(self, host, port, timeout=10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.buf = b""
        self.eof = False

    @property
    def local_port(self):
        return self.sock.getsockname()[1]

    def send(self, data):
        self.sock.sendall(data)

    def request(self, method="GET", path="/", headers=None, body=b"", host="localhost", version="HTTP/1.1"):
        """Sends a well-formed request with Content-Length framing when there is a body."""
        lines = [f"{method} {path} {version}", f"Host: {host}"]
        hdrs = list((headers or {}).items()) if isinstance(headers, dict) else list(headers or [])
        for k, v in hdrs:
            lines.append(f"{k}: {v}")
        if body and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in hdrs):
            lines.append(f"Content-Length: {len(body)}")
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    def _fill(self, deadline):
        if self.eof:
            raise ConnectionClosed("connection closed by peer")
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out reading the response")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(1 << 20)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            raise ConnectionClosed("connection closed by peer")
        self.buf += data

    def _line(self, deadline):
        while b"\r\n" not in self.buf:
            self._fill(deadline)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n, deadline, sink=None):
        out = bytearray()
        while n:
            if not self.buf:
                self._fill(deadline)
            take = self.buf[:n]
            self.buf = self.buf[len(take):]
            n -= len(take)
            if sink:
                sink(take)
            else:
                out += take
        return bytes(out)

    def _headers(self, deadline):
        headers = []
        while True:
            line = self._line(deadline)
            if not line:
                return headers
            k, _, v = line.decode("latin-1").partition(":")
            headers.append((k.strip().lower(), v.strip()))

    def read_response(self, head=False, timeout=None, sink=None, stop_at_interim=False):
        """Parses one response. head=True for a response to HEAD (no body).

        sink(bytes) receives the body instead of the returned object keeping it.
        stop_at_interim returns the first 1xx response itself.
        """
        deadline = time.monotonic() + (timeout or self.timeout)
        interim = []
        while True:
            status_line = self._line(deadline).decode("latin-1")
            version, status, reason = (status_line.split(" ", 2) + [""])[:3]
            status = int(status)
            headers = self._headers(deadline)
            if 100 <= status < 200 and status != 101:
                if stop_at_interim:
                    return RawResponse(version, status, reason, headers, b"", [], [])
                interim.append((status, headers))
                continue
            break
        resp = RawResponse(version, status, reason, headers, b"", [], interim)
        if head or status in (204, 304):
            return resp
        te = ",".join(resp.header_all("transfer-encoding")).lower()
        body = bytearray()
        add = sink or body.extend
        if "chunked" in te:
            while True:
                size = int(self._line(deadline).split(b";")[0].strip(), 16)
                if size == 0:
                    break
                self._exact(size, deadline, add)
                if self._line(deadline) != b"":
                    raise ValueError("bad chunk terminator")
            resp.trailers = self._headers(deadline)
        elif resp.header("content-length") is not None:
            self._exact(int(resp.header("content-length")), deadline, add)
        else:
            while True:
                if self.buf:
                    add(self.buf)
                    self.buf = b""
                try:
                    self._fill(deadline)
                except ConnectionClosed:
                    break
        resp.body = bytes(body)
        return resp

    def closed_by_peer(self, timeout=5.0):
        """True when the peer closes the connection (EOF or RST) within timeout, with no more bytes."""
        if self.buf:
            return False
        deadline = time.monotonic() + timeout
        try:
            self._fill(deadline)
        except ConnectionClosed:
            return True
        except TimeoutError:
            return False
        return False

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def one_shot(port, data, host="127.0.0.1", timeout=10.0, head=False):
    """Sends raw bytes on a new connection and returns (response or None, closed_after)."""
    with RawHTTP(host, port, timeout) as c:
        try:
            c.send(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the peer may answer and close before reading everything
        try:
            r = c.read_response(head=head)
        except ConnectionClosed:
            return None, True
        return r, c.closed_by_peer(timeout)


def assert_refused(lg):
    """A new connection to lg's listener is closed without an answer (over a connection limit,
    or rejected by the overload manager)."""
    with socket.create_connection(("127.0.0.1", lg.listener_port()), timeout=10) as s:
        try:
            s.sendall(b"GET /over HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(4096) == b"", "closed without an answer"
        except ConnectionResetError:
            pass
