"""Opens many idle client connections to a proxy (workload 7).

Each connection makes one request (HTTP/1.1 keep-alive GET, or an HTTP/2
prior-knowledge GET with the SETTINGS exchange done) and then stays open and
silent, so the proxy holds a fully set-up idle connection, as a browser or a
mobile client leaves it. Everything runs in this process with non-blocking
sockets and one selector; the caller measures the proxy between open_idle()
and close_all().
"""
import selectors
import socket
import struct
import time

H1_REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# HPACK: :method GET (2), :scheme http (6), :path / (4), :authority "bench" (literal with indexing, name 1).
H2_HEADERS_BLOCK = b"\x82\x86\x84\x41\x05bench"
FRAME_DATA, FRAME_HEADERS, FRAME_SETTINGS, FRAME_GOAWAY = 0, 1, 4, 7
FLAG_END_STREAM, FLAG_ACK = 0x1, 0x1


def h2_frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", ftype, flags, stream) + payload


H2_REQUEST = (H2_PREFACE + h2_frame(FRAME_SETTINGS, 0, 0) +
              h2_frame(FRAME_HEADERS, 0x4 | FLAG_END_STREAM, 1, H2_HEADERS_BLOCK))


class _Conn:
    def __init__(self, sock, h2):
        self.sock = sock
        self.h2 = h2
        self.out = H2_REQUEST if h2 else H1_REQUEST
        self.inbuf = b""
        self.done = False
        self.failed = None

    def on_read(self, data):
        if not self.h2:
            self.inbuf += data
            head_end = self.inbuf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.inbuf[:head_end].decode("latin-1").lower()
            if not head.startswith("http/1.1 200"):
                self.failed = head.splitlines()[0] if head else "empty response"
                return
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip() == "content-length":
                    length = int(value.strip())
            if len(self.inbuf) - head_end - 4 >= length:
                self.done = True
                self.inbuf = b""
            return
        self.inbuf += data
        while len(self.inbuf) >= 9:
            length = int.from_bytes(self.inbuf[:3], "big")
            if len(self.inbuf) < 9 + length:
                break
            ftype, flags, stream = self.inbuf[3], self.inbuf[4], int.from_bytes(self.inbuf[5:9], "big") & 0x7FFFFFFF
            self.inbuf = self.inbuf[9 + length:]
            if ftype == FRAME_SETTINGS and not flags & FLAG_ACK:
                self.out += h2_frame(FRAME_SETTINGS, FLAG_ACK, 0)
            elif ftype == FRAME_GOAWAY:
                self.failed = "GOAWAY"
            elif ftype in (FRAME_DATA, FRAME_HEADERS) and stream == 1 and flags & FLAG_END_STREAM:
                self.done = True


def open_idle(port, count, h2=False, host="127.0.0.1", batch=200, timeout=60.0):
    """Opens `count` connections, each with one finished request. Returns the
    list of connections (pass it to close_all) and a count of failures."""
    sel = selectors.DefaultSelector()
    conns, failures = [], 0
    deadline = time.monotonic() + timeout
    pending = 0
    started = 0
    try:
        while (started < count or pending > 0) and time.monotonic() < deadline:
            while started < count and pending < batch:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                s.connect_ex((host, port))
                c = _Conn(s, h2)
                conns.append(c)
                sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
                started += 1
                pending += 1
            for key, ev in sel.select(timeout=1.0):
                c = key.data
                try:
                    if ev & selectors.EVENT_WRITE and c.out:
                        n = c.sock.send(c.out)
                        c.out = c.out[n:]
                    if ev & selectors.EVENT_READ:
                        data = c.sock.recv(65536)
                        if not data:
                            c.failed = c.failed or "closed by proxy"
                        else:
                            c.on_read(data)
                except OSError as e:
                    c.failed = str(e)
                if c.failed or (c.done and not c.out):
                    sel.unregister(c.sock)
                    pending -= 1
                    if c.failed:
                        failures += 1
                else:
                    want = selectors.EVENT_READ | (selectors.EVENT_WRITE if c.out else 0)
                    if key.events != want:
                        sel.modify(c.sock, want, c)
        failures += pending  # timed out
    finally:
        sel.close()
    return conns, failures


def close_all(conns):
    for c in conns:
        try:
            c.sock.close()
        except OSError:
            pass
