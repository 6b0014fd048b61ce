"""An HTTP/2 cleartext (prior knowledge) echo upstream built on python3-h2.

Each connection has a reader thread; each finished request is answered from
its own thread, so slow (/delay) streams do not hold up the others. Flow
control is honoured in both directions. Knobs, by path:

  /status/<code>   reply with that status
  /delay/<ms>      wait ms (at most 30 s) before replying
  /bytes/<n>       n bytes of upstream.pattern(), header x-body-sha256
  /trailers        JSON body followed by trailers x-upstream-trailer: present and
                   x-request-trailers: <names of the request's trailers, comma separated>
  /reset           RST_STREAM (CANCEL) instead of a response

The JSON body has the same shape as upstream.EchoUpstream's, with protocol
"HTTP/2" and the request pseudo-headers in "headers".
"""
import hashlib
import itertools
import json
import re
import socket
import threading
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from .upstream import pattern_chunks, pattern_sha256


class _Stream:
    def __init__(self, sid, headers):
        self.sid = sid
        self.headers = headers
        self.sha = hashlib.sha256()
        self.body_len = 0
        self.trailers = []
        self.reset = False


class _Conn:
    def __init__(self, sock, upstream, conn_id):
        self.sock = sock
        self.up = upstream
        self.conn_id = conn_id
        peer = sock.getpeername()
        self.peer = f"{peer[0]}:{peer[1]}"
        cfg = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self.h2 = h2.connection.H2Connection(config=cfg)
        self.cond = threading.Condition(threading.RLock())
        self.streams = {}
        self.closed = False

    def flush(self):
        data = self.h2.data_to_send()
        if data:
            self.sock.sendall(data)

    def run(self):
        try:
            with self.cond:
                self.h2.initiate_connection()
                self.h2.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1000})
                self.flush()
            while True:
                data = self.sock.recv(65536)
                if not data:
                    break
                with self.cond:
                    events = self.h2.receive_data(data)
                    for ev in events:
                        self._event(ev)
                    self.flush()
                    self.cond.notify_all()
                if any(isinstance(ev, h2.events.ConnectionTerminated) for ev in events):
                    break
        except (OSError, h2.exceptions.ProtocolError):
            pass
        finally:
            with self.cond:
                self.closed = True
                self.cond.notify_all()
            try:
                self.sock.close()
            except OSError:
                pass
            self.up._unregister(self)

    def _event(self, ev):
        if isinstance(ev, h2.events.RequestReceived):
            self.streams[ev.stream_id] = _Stream(ev.stream_id, list(ev.headers))
        elif isinstance(ev, h2.events.DataReceived):
            st = self.streams.get(ev.stream_id)
            if st:
                st.sha.update(ev.data)
                st.body_len += len(ev.data)
            self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.TrailersReceived):
            st = self.streams.get(ev.stream_id)
            if st:
                st.trailers = list(ev.headers)
        elif isinstance(ev, h2.events.StreamEnded):
            st = self.streams.get(ev.stream_id)
            if st:
                threading.Thread(target=self._respond_safe, args=(st,), daemon=True).start()
        elif isinstance(ev, h2.events.StreamReset):
            st = self.streams.get(ev.stream_id)
            if st:
                st.reset = True

    def _respond_safe(self, st):
        try:
            self._respond(st)
        except (OSError, h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
            pass

    def _respond(self, st):
        hdrs = dict(st.headers)
        path = hdrs.get(":path", "/").split("?", 1)[0]
        rec = {
            "server": self.up.name,
            "protocol": "HTTP/2",
            "conn_id": self.conn_id,
            "peer": self.peer,
            "stream_id": st.sid,
            "method": hdrs.get(":method"),
            "path": hdrs.get(":path"),
            "version": "HTTP/2",
            "headers": [[k, v] for k, v in st.headers],
            "body_len": st.body_len,
            "body_sha256": st.sha.hexdigest(),
            "trailers": [[k, v] for k, v in st.trailers],
        }
        self.up._record(rec)
        self.up._inflight_add(1)
        try:
            m = re.fullmatch(r"/delay/(\d+)", path)
            if m:
                time.sleep(min(int(m.group(1)), 30000) / 1000.0)
            if path == "/reset":
                with self.cond:
                    self.h2.reset_stream(st.sid, h2.errors.ErrorCodes.CANCEL)
                    self.flush()
                return
            status = 200
            m = re.fullmatch(r"/status/(\d{3})", path)
            if m:
                status = int(m.group(1))
            base = [("server", f"echo-upstream/{self.up.name}"), ("x-upstream", self.up.name)]
            m = re.fullmatch(r"/bytes/(\d+)", path)
            if m:
                n = int(m.group(1))
                headers = [(":status", "200")] + base + [("content-length", str(n)),
                                                          ("x-body-sha256", pattern_sha256(n))]
                self._send(st.sid, headers, pattern_chunks(n, 16384), None)
                return
            body = json.dumps(rec).encode()
            headers = [(":status", str(status))] + base + [("content-type", "application/json"),
                                                           ("content-length", str(len(body)))]
            trailers = None
            if path == "/trailers":
                trailers = [("x-upstream-trailer", "present"),
                            ("x-request-trailers", ",".join(k for k, _ in st.trailers))]
            self._send(st.sid, headers, [body] if hdrs.get(":method") != "HEAD" else [], trailers)
        finally:
            self.up._inflight_add(-1)

    def _send(self, sid, headers, chunks, trailers):
        with self.cond:
            self.h2.send_headers(sid, headers, end_stream=False)
            self.flush()
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                with self.cond:
                    deadline = time.monotonic() + 30
                    while True:
                        if self.closed:
                            return
                        window = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size)
                        if window > 0:
                            break
                        if not self.cond.wait(timeout=max(0.0, deadline - time.monotonic())):
                            return
                    n = min(window, len(view))
                    self.h2.send_data(sid, bytes(view[:n]))
                    self.flush()
                view = view[n:]
        with self.cond:
            if trailers:
                self.h2.send_headers(sid, trailers, end_stream=True)
            else:
                self.h2.end_stream(sid)
            self.flush()


class H2Upstream:
    """HTTP/2 prior-knowledge echo server on 127.0.0.1:<port>."""

    def __init__(self, name="h2upstream", host="127.0.0.1", port=0):
        self.name = name
        self.requests = []
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._inflight = 0
        self._conns = set()
        self._ids = itertools.count(1)
        self.connections_total = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(1024)
        self._sock.settimeout(0.1)
        self._stop = False
        self._thread = threading.Thread(target=self._accept_loop, name=f"h2upstream-{name}", daemon=True)
        self._thread.start()

    @property
    def port(self):
        return self._sock.getsockname()[1]

    def _accept_loop(self):
        while not self._stop:
            try:
                s, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            s.settimeout(None)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                c = _Conn(s, self, next(self._ids))
                self._conns.add(c)
                self.connections_total += 1
            threading.Thread(target=c.run, daemon=True).start()

    def _unregister(self, c):
        with self._lock:
            self._conns.discard(c)

    def _record(self, rec):
        with self._lock:
            self.requests.append(rec)
            self._cond.notify_all()

    def _inflight_add(self, d):
        with self._lock:
            self._inflight += d
            self._cond.notify_all()

    @property
    def inflight(self):
        with self._lock:
            return self._inflight

    def wait_inflight(self, n, timeout=10.0):
        with self._cond:
            if not self._cond.wait_for(lambda: self._inflight >= n, timeout):
                raise AssertionError(f"h2 upstream {self.name}: {self._inflight} in flight, wanted {n}")

    def wait_requests(self, n, timeout=10.0):
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.requests) >= n, timeout):
                raise AssertionError(f"h2 upstream {self.name}: saw {len(self.requests)} requests, wanted {n}")
            return list(self.requests)

    def close(self):
        self._stop = True
        self._thread.join(timeout=5)
        self._sock.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
