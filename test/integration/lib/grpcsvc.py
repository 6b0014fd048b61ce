"""A python3-grpcio test service without protoc-generated code.

Messages are raw bytes (identity serializers). Service "test.Echo":

  Unary          echoes the request; the invocation metadata comes back as
                 initial metadata (keys prefixed "echo-") and as trailing
                 metadata (keys prefixed "trail-"), -bin values included.
                 A request "abort:<code>:<message>" ends the call with that
                 status instead.
  ServerStream   request "<count>:<size>": count messages of size bytes,
                 message i filled with byte i % 251.
  ClientStream   answers "<count>:<total bytes>:<sha256 of all bytes>".
  Bidi           echoes every message as it arrives.
  Hang           never answers; records the call's cancellation (an Event
                 per request payload, see cancelled()).
  Sleep          request "<ms>": answers "slept" after ms milliseconds,
                 unless cancelled first; records the call's deadline.
"""
import hashlib
import threading
from concurrent import futures

import grpc

SERVICE = "test.Echo"
MAX_MESSAGE = 64 << 20
OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)]


def stream_message(i, size):
    return bytes([i % 251]) * size


class EchoService:
    def __init__(self):
        self._lock = threading.Lock()
        self._cancelled = {}
        self.started = {}
        self.calls = []
        self.time_remaining = {}  # Sleep payload -> the call's time left on arrival (None: no deadline)

    def _event(self, table, key):
        with self._lock:
            return table.setdefault(key, threading.Event())

    def cancelled(self, key):
        """An Event set when the Hang/Sleep call with payload `key` saw its cancellation."""
        return self._event(self._cancelled, key)

    def hang_started(self, key):
        return self._event(self.started, key)

    def _record(self, method, context):
        with self._lock:
            self.calls.append((method, list(context.invocation_metadata())))

    def unary(self, request, context):
        self._record("Unary", context)
        if request.startswith(b"abort:"):
            _, code, message = request.decode().split(":", 2)
            context.abort(grpc.StatusCode[code], message)
        md = [(k, v) for k, v in context.invocation_metadata() if k.startswith("x-")]
        context.send_initial_metadata([("echo-" + k, v) for k, v in md])
        context.set_trailing_metadata([("trail-" + k, v) for k, v in md])
        return request

    def server_stream(self, request, context):
        self._record("ServerStream", context)
        count, size = (int(x) for x in request.decode().split(":"))
        for i in range(count):
            yield stream_message(i, size)

    def client_stream(self, request_iterator, context):
        self._record("ClientStream", context)
        sha = hashlib.sha256()
        count = total = 0
        for msg in request_iterator:
            count += 1
            total += len(msg)
            sha.update(msg)
        return f"{count}:{total}:{sha.hexdigest()}".encode()

    def bidi(self, request_iterator, context):
        self._record("Bidi", context)
        for msg in request_iterator:
            yield msg

    def _wait_cancel(self, key, context, seconds):
        done = self.cancelled(key)
        context.add_callback(done.set)
        self.hang_started(key).set()
        return done.wait(seconds)

    def hang(self, request, context):
        self._record("Hang", context)
        self._wait_cancel(request, context, 30)
        return b"late"

    def sleep(self, request, context):
        self._record("Sleep", context)
        with self._lock:
            self.time_remaining[request] = context.time_remaining()
        if self._wait_cancel(request, context, int(request.decode()) / 1000.0):
            return b"cancelled"
        return b"slept"


class GrpcServer:
    """A grpc.server on 127.0.0.1 with EchoService; close() stops it."""

    def __init__(self, workers=16):
        self.service = svc = EchoService()
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(svc.unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(svc.server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(svc.client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(svc.bidi),
            "Hang": grpc.unary_unary_rpc_method_handler(svc.hang),
            "Sleep": grpc.unary_unary_rpc_method_handler(svc.sleep),
        }
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=OPTIONS)
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def close(self, grace=None):
        self.server.stop(grace).wait(10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class GrpcClient:
    """A channel to host:port with bytes stubs for every EchoService method."""

    def __init__(self, port, host="127.0.0.1"):
        self.channel = grpc.insecure_channel(f"{host}:{port}", options=OPTIONS)
        m = f"/{SERVICE}/"
        self.unary = self.channel.unary_unary(m + "Unary")
        self.server_stream = self.channel.unary_stream(m + "ServerStream")
        self.client_stream = self.channel.stream_unary(m + "ClientStream")
        self.bidi = self.channel.stream_stream(m + "Bidi")
        self.hang = self.channel.unary_unary(m + "Hang")
        self.sleep = self.channel.unary_unary(m + "Sleep")

    def method(self, name):
        return self.channel.unary_unary(name)

    def close(self):
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
