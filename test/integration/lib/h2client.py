"""HTTP/2 cleartext (prior knowledge) clients.

H2Client drives python3-h2 over one blocking socket: several streams at
once, request trailers, GOAWAY and RST_STREAM observation, flow control.
The raw_* helpers write hand-made frames for protocol-error tests, where a
well-behaved library would refuse to send them.
"""
import socket
import struct
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

FRAME_DATA, FRAME_HEADERS, FRAME_PRIORITY, FRAME_RST_STREAM, FRAME_SETTINGS = 0, 1, 2, 3, 4
FRAME_PUSH_PROMISE, FRAME_PING, FRAME_GOAWAY, FRAME_WINDOW_UPDATE, FRAME_CONTINUATION = 5, 6, 7, 8, 9
FLAG_END_STREAM, FLAG_ACK, FLAG_END_HEADERS = 0x1, 0x1, 0x4
PROTOCOL_ERROR = 0x1


class H2Response:
    def __init__(self, sid):
        self.stream_id = sid
        self.headers = []
        self.data = bytearray()
        self.trailers = []
        self.ended = False
        self.reset_code = None
        self.informational = []

    @property
    def status(self):
        return int(self.header(":status")) if self.header(":status") else None

    def header(self, name, default=None):
        for k, v in self.headers:
            if k == name:
                return v
        return default

    def trailer(self, name, default=None):
        for k, v in self.trailers:
            if k == name:
                return v
        return default

    @property
    def body(self):
        return bytes(self.data)

    def __repr__(self):
        return f"H2Response(sid={self.stream_id}, status={self.status}, ended={self.ended}, reset={self.reset_code})"


class H2Client:
    def __init__(self, host, port, timeout=10.0):
        self.host = host
        self.port = port
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=cfg)
        self.conn.initiate_connection()
        self.responses = {}
        self.goaway = None  # (error_code, last_stream_id)
        self.closed = False
        self._inbuf = bytearray()
        self.bytes_sent = 0  # everything written to the socket
        self._flush()

    def _flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)
            self.bytes_sent += len(data)

    def pump(self, timeout=None):
        """Reads once (up to timeout) and processes the events. Returns False on EOF."""
        if self.closed:
            return False
        self.sock.settimeout(timeout if timeout is not None else self.timeout)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return True
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
            return False
        data = self._strip_goaway(data)
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.closed = True
            return False
        for ev in events:
            self._event(ev)
        try:
            self._flush()
        except OSError:
            self.closed = True
        return True

    def _strip_goaway(self, data):
        """Records GOAWAY frames and keeps them from python-h2, whose state
        machine refuses every frame after a GOAWAY, although RFC 9113 lets the
        streams up to last_stream_id finish (Envoy and Legate finish them)."""
        self._inbuf += data
        out = bytearray()
        while len(self._inbuf) >= 9:
            length = int.from_bytes(self._inbuf[:3], "big")
            if len(self._inbuf) < 9 + length:
                break
            frame = bytes(self._inbuf[:9 + length])
            del self._inbuf[:9 + length]
            if frame[3] == FRAME_GOAWAY and length >= 8:
                last = int.from_bytes(frame[9:13], "big") & 0x7FFFFFFF
                self.goaway = (int.from_bytes(frame[13:17], "big"), last)
                continue
            out += frame
        return bytes(out)

    def _resp(self, sid):
        return self.responses.setdefault(sid, H2Response(sid))

    def _event(self, ev):
        if isinstance(ev, h2.events.InformationalResponseReceived):
            self._resp(ev.stream_id).informational.append(list(ev.headers))
        elif isinstance(ev, h2.events.ResponseReceived):
            self._resp(ev.stream_id).headers = list(ev.headers)
        elif isinstance(ev, h2.events.DataReceived):
            self._resp(ev.stream_id).data += ev.data
            self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.TrailersReceived):
            self._resp(ev.stream_id).trailers = list(ev.headers)
        elif isinstance(ev, h2.events.StreamEnded):
            self._resp(ev.stream_id).ended = True
        elif isinstance(ev, h2.events.StreamReset):
            self._resp(ev.stream_id).reset_code = int(ev.error_code)
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.goaway = (int(ev.error_code), ev.last_stream_id)

    def request(self, method="GET", path="/", authority=None, headers=(), body=b"", trailers=None):
        """Starts a request; returns its stream id. Bodies are sent within flow control."""
        sid = self.conn.get_next_available_stream_id()
        hdrs = [(":method", method), (":scheme", "http"), (":authority", authority or f"{self.host}:{self.port}"),
                (":path", path)] + list(headers)
        end_on_headers = not body and not trailers
        self.conn.send_headers(sid, hdrs, end_stream=end_on_headers)
        self._resp(sid)
        self._flush()
        if body:
            self._send_body(sid, body, end_stream=not trailers)
        if trailers:
            self.conn.send_headers(sid, list(trailers), end_stream=True)
            self._flush()
        return sid

    def _send_body(self, sid, body, end_stream):
        view = memoryview(body)
        deadline = time.monotonic() + self.timeout
        while view:
            window = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if window <= 0:
                if time.monotonic() > deadline:
                    raise TimeoutError("no flow-control window from the peer")
                if not self.pump(0.5):
                    raise ConnectionError("connection closed while sending the body")
                resp = self.responses.get(sid)
                if resp and (resp.reset_code is not None or resp.ended):
                    return
                continue
            n = min(window, len(view))
            self.conn.send_data(sid, bytes(view[:n]), end_stream=end_stream and n == len(view))
            self._flush()
            view = view[n:]

    def wait_response(self, sid, timeout=None):
        """Waits until the stream ended or was reset (or the connection closed)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        resp = self._resp(sid)
        while not (resp.ended or resp.reset_code is not None):
            if self.closed:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no complete response on stream {sid} within {timeout or self.timeout}s")
            self.pump(min(left, 0.5))
        return resp

    def get(self, path="/", **kw):
        timeout = kw.pop("timeout", None)
        return self.wait_response(self.request("GET", path, **kw), timeout)

    def wait_goaway(self, timeout=None):
        """Waits for a GOAWAY (returns (error_code, last_stream_id)) or EOF (returns None)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while self.goaway is None and not self.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no GOAWAY")
            self.pump(min(left, 0.5))
        return self.goaway

    def close(self):
        try:
            self.conn.close_connection()
            self._flush()
        except Exception:  # noqa: BLE001 - best effort on a possibly dead connection
            pass
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def frame(ftype, flags, stream_id, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream_id) + payload


def raw_connect(host, port, timeout=5.0):
    """Opens a TCP connection and sends the client preface and an empty SETTINGS frame."""
    s = socket.create_connection((host, port), timeout=timeout)
    s.sendall(PREFACE + frame(FRAME_SETTINGS, 0, 0))
    return s


def read_frames(sock, timeout=5.0, until=None):
    """Reads frames until EOF, the timeout, or until(frame) is true. Returns [(type, flags, sid, payload)]."""
    frames = []
    buf = b""
    deadline = time.monotonic() + timeout
    while True:
        while len(buf) >= 9:
            length = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + length:
                break
            f = (buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF, buf[9:9 + length])
            buf = buf[9 + length:]
            frames.append(f)
            if until and until(f):
                return frames
        left = deadline - time.monotonic()
        if left <= 0:
            return frames
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except socket.timeout:
            return frames
        except ConnectionResetError:
            return frames
        if not data:
            return frames
        buf += data


def goaway_of(frames):
    """(error_code, last_stream_id) of the first GOAWAY in frames, or None."""
    for ftype, _, _, payload in frames:
        if ftype == FRAME_GOAWAY and len(payload) >= 8:
            last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            return int.from_bytes(payload[4:8], "big"), last
    return None


def rst_of(frames, sid):
    for ftype, _, fsid, payload in frames:
        if ftype == FRAME_RST_STREAM and fsid == sid and len(payload) >= 4:
            return int.from_bytes(payload[:4], "big")
    return None


def hpack_headers(headers):
    """HPACK-encodes headers without validation (names may be invalid on purpose)."""
    import hpack

    enc = hpack.Encoder()
    return enc.encode([(k.encode() if isinstance(k, str) else k, v.encode() if isinstance(v, str) else v)
                       for k, v in headers])
