"""Tunnel upstreams: a python3-websockets echo server and a plain TCP echo server.

WsUpstream runs websockets.serve on its own asyncio loop in a thread. By path:

  /echo      echoes every message; the first message is "hello <path>" and
             carries the upgrade request's headers as JSON
  /die       echoes one message, then drops the TCP connection without a
             close frame (an upstream that dies)

TcpEcho echoes bytes on every accepted connection until the peer closes its
side, then closes; `closed` counts finished connections. With
connect_proxy=True it first reads an HTTP/1.1 CONNECT head (kept in `heads`)
and answers it with 200, like a forward proxy would.
"""
import asyncio
import json
import socket
import threading

import websockets

from .rawhttp import recv_head


class WsUpstream:
    def __init__(self, host="127.0.0.1"):
        self.requests = []
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop = None
        self.port = None
        self._thread = threading.Thread(target=self._run, args=(host,), daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("websocket upstream did not start")

    def _run(self, host):
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._main(host))

    async def _main(self, host):
        self._stop = asyncio.Event()
        async with websockets.serve(self._handler, host, 0, ping_interval=None, max_size=None) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop.wait()

    async def _handler(self, ws):
        path = ws.path
        headers = [[k.lower(), v] for k, v in ws.request_headers.raw_items()]
        self.requests.append({"path": path, "headers": headers})
        await ws.send(json.dumps({"hello": path, "headers": headers}))
        try:
            async for msg in ws:
                await ws.send(msg)
                if path == "/die":
                    ws.transport.abort()
                    return
        except websockets.ConnectionClosed:
            pass

    def close(self):
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self.loop.close()


class TcpEcho:
    def __init__(self, host="127.0.0.1", connect_proxy=False):
        self.connect_proxy = connect_proxy
        self.heads = []
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.closed = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            if self.connect_proxy:
                head = recv_head(c)
                if head is None:
                    return
                head, rest = head.split(b"\r\n\r\n", 1)
                self.heads.append(head.decode("latin-1"))
                c.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n" + rest)
            while True:
                data = c.recv(65536)
                if not data:
                    break
                c.sendall(data)
        except OSError:
            pass
        finally:
            c.close()
            with self._lock:
                self.closed += 1

    def close(self):
        self.sock.close()


class H2TunnelUpstream:
    """An h2c upstream (python-h2) that accepts extended CONNECT (RFC 8441):
    it advertises SETTINGS_ENABLE_CONNECT_PROTOCOL, answers a CONNECT with
    200 and echoes the stream's DATA; `requests` keeps the request headers."""

    def __init__(self, host="127.0.0.1"):
        import h2.config
        import h2.connection
        import h2.events
        import h2.settings

        self._h2 = h2
        self.requests = []
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, sock):
        h2 = self._h2
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        conn.update_settings({h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL: 1})
        sock.sendall(conn.data_to_send())
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    return
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        self.requests.append(list(ev.headers))
                        conn.send_headers(ev.stream_id, [(":status", "200")])
                    elif isinstance(ev, h2.events.DataReceived):
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                        conn.send_data(ev.stream_id, ev.data)
                    elif isinstance(ev, h2.events.StreamEnded):
                        conn.end_stream(ev.stream_id)
                sock.sendall(conn.data_to_send())
        except (OSError, h2.exceptions.ProtocolError):
            pass
        finally:
            sock.close()

    def close(self):
        self.sock.close()
