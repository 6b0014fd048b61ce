"""A real xDS v3 management server over gRPC, for tests and demos.

It serves the aggregated service (ADS) and every per-type discovery service,
each in SotW and delta form, from a resource store that tests change in
process (set/update/remove/push) or that follows YAML files (watch). Every
request it receives and every response it sends is recorded, so a test can
assert what a client ACKed or NACKed, with which version, nonce and error.

    srv = XdsServer().start()           # 127.0.0.1, a free port
    v = srv.set(CLUSTER, [{...}])        # new version pushed to subscribed streams
    srv.wait_ack(CLUSTER, v)             # the client accepted it (AssertionError on NACK)
    srv.stop(); srv.start()              # killed and back on the same port, state kept

Faults for the bad input tests: inject() sends arbitrary Anys as a response
without touching the store, send_raw() a gRPC message that is not a
DiscoveryResponse, close_streams() ends every stream with a status, and
reject_streams() refuses new streams.
"""
import collections
import os
import threading
import time
from concurrent import futures

import grpc

from . import resources as rs
from .streams import Stream, abort_code


class Entry:
    """One resource in the store: its packed Any, name, content version and optional TTL (seconds)."""

    __slots__ = ("name", "any", "version", "ttl")

    def __init__(self, name, any_msg, version, ttl=None):
        self.name, self.any, self.version, self.ttl = name, any_msg, version, ttl

    def _resource(self, discovery_pb2, heartbeat=False):
        r = discovery_pb2.Resource(name=self.name, version=self.version)
        if not heartbeat:
            r.resource.CopyFrom(self.any)
        if self.ttl is not None:
            r.ttl.FromNanoseconds(int(self.ttl * 1e9))
        return r

    def heartbeat_any(self, discovery_pb2):
        """A TTL heartbeat: the Resource wrapper with name, version and ttl but no resource."""
        a = type(self.any)()
        a.Pack(self._resource(discovery_pb2, heartbeat=True))
        return a

    def heartbeat_resource(self, discovery_pb2):
        return self._resource(discovery_pb2, heartbeat=True)

    def sotw_any(self, discovery_pb2):
        """SotW sends the bare resource, or the Resource wrapper when a TTL is set."""
        if self.ttl is None:
            return self.any
        a = type(self.any)()
        a.Pack(self._resource(discovery_pb2))
        return a

    def delta_resource(self, discovery_pb2):
        return self._resource(discovery_pb2)


def _serialize(msg):
    return msg if isinstance(msg, (bytes, bytearray)) else msg.SerializeToString()


class XdsServer:
    """The management server. Thread safe; every public method may be called from any thread.

    host/port: TCP address (port 0 picks a free one, kept across restarts);
    unix_path: listen on a unix socket instead. path: a resource file or
    directory loaded at start and reloaded when it changes. log: callable
    taking one line (None: quiet). tls: (private key PEM, certificate chain
    PEM) as bytes to serve gRPC over TLS (google_grpc ssl_credentials tests).
    """

    def __init__(self, port=0, host="127.0.0.1", unix_path=None, path=None, poll_interval=0.2, log=None,
                 identifier="legate-test-xds", max_workers=64, tls=None):
        rs.load_protos()
        self.pb, _, _ = rs.pb()
        self.host, self.port, self.unix_path = host, port, unix_path
        self.path, self.poll_interval, self.log = path, poll_interval, log
        self.identifier, self.max_workers, self.tls = identifier, max_workers, tls
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._store = {t: collections.OrderedDict() for t in rs.PUSH_ORDER}
        self._versions = {t: 0 for t in rs.PUSH_ORDER}
        self._streams = {}
        self._stream_ids = 0
        self._nonces = 0
        self._injected = 0
        self._grpc = None
        self._reject = None
        self._watch_thread = None
        self._watch_stop = threading.Event()
        self.records = []  # requests received, oldest first (dicts, see _record_request)
        self.sent = []  # responses sent (dicts, see _record_sent)
        self.stream_log = []  # every stream opened: id, service, method, delta, opened, closed
        self.errors = []  # exceptions raised while handling requests: a test should see none
        self._seq = 0

    # ---- lifecycle ---------------------------------------------------------------

    @property
    def address(self):
        return f"unix:{self.unix_path}" if self.unix_path else f"{self.host}:{self.port}"

    @property
    def running(self):
        return self._grpc is not None

    def start(self):
        """Starts serving (again, on the same address after stop()). Returns self."""
        with self._lock:
            if self._grpc is not None:
                return self
            if self.path and self._watch_thread is None:
                self.load(self.path)
                self._start_watch()
            server = grpc.server(futures.ThreadPoolExecutor(max_workers=self.max_workers,
                                                            thread_name_prefix="xds-grpc"),
                                 handlers=self._handlers(), options=self._options())
            if self.unix_path and os.path.exists(self.unix_path):
                os.unlink(self.unix_path)
            addr = self.address if self.unix_path else f"{self.host}:{self.port}"
            if self.tls:
                creds = grpc.ssl_server_credentials([(self.tls[0], self.tls[1])])
                bound = server.add_secure_port(addr, creds)
            else:
                bound = server.add_insecure_port(addr)
            if not bound and not self.unix_path:
                raise OSError(f"xds server: cannot bind {addr}")
            if not self.unix_path:
                self.port = bound
            server.start()
            self._grpc = server
        self._log(f"xds server listening on {self.address}")
        return self

    def _options(self):
        # Tolerate clients that ping often (gRPC's default answers them with GOAWAY),
        # and never share the port with a leftover server (SO_REUSEADDR is still set).
        return [("grpc.so_reuseport", 0), ("grpc.http2.min_ping_interval_without_data_ms", 1000),
                ("grpc.http2.max_ping_strikes", 0), ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", 64 << 20)]

    def stop(self, grace=None):
        """Stops serving: every stream ends at once (grace None) and the port is closed.

        The store, versions and records are kept: start() brings the same
        control plane back, as a restarted process with persistent state would.
        """
        with self._lock:
            server, self._grpc = self._grpc, None
        if server is None:
            return
        server.stop(grace).wait(10)
        deadline = time.monotonic() + 5
        with self._cond:
            self._cond.wait_for(lambda: not self._streams, max(0.0, deadline - time.monotonic()))
        self._log("xds server stopped")

    def close(self):
        """stop() and end the file watcher."""
        self._watch_stop.set()
        self.stop()
        if self.unix_path and os.path.exists(self.unix_path):
            os.unlink(self.unix_path)
        if self._watch_thread is not None:
            self._watch_thread.join(timeout=5)
            self._watch_thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def _log(self, line):
        if self.log:
            self.log(line)

    # ---- the store -----------------------------------------------------------------

    def version(self, type_url):
        """The current version_info of a type (what the next response carries)."""
        with self._lock:
            return f"v{self._versions.get(type_url, 0)}"

    def resources(self, type_url):
        """{name: decoded message} of a type as the store holds it now."""
        with self._lock:
            entries = list(self._store[type_url].values())
        cls = rs.message_class(type_url)
        return {e.name: cls.FromString(e.any.value) for e in entries}

    def resource_versions(self, type_url):
        """{name: per-resource version} of a type (the versions delta responses carry)."""
        with self._lock:
            return {n: e.version for n, e in self._resources(type_url).items()}

    def _resources(self, type_url):
        return self._store.setdefault(type_url, collections.OrderedDict())

    def set(self, type_url, resources, ttl=None):
        """Replaces every resource of a type; pushes the change. Returns the new version."""
        return self.update({type_url: resources}, ttl=ttl)[type_url]

    def update(self, changes=None, ttl=None, **kinds):
        """Replaces whole types at once: update({CLUSTER: [...]}) or update(clusters=[...], endpoints=[...]).

        Resources are dicts in Envoy's YAML form, messages or Anys. Types are
        pushed in xDS order (CDS, EDS, SDS, ..., LDS, RDS) and only to the
        streams whose view changed. A type whose content did not change keeps
        its version. Returns {type_url: version}.
        """
        changes = dict(changes or {})
        for key, value in kinds.items():
            if key not in rs.KINDS:
                raise ValueError(f"unknown resource kind {key!r} (expected one of {', '.join(rs.KINDS)})")
            changes[rs.KINDS[key]] = value
        built = {t: self._entries(t, res, ttl) for t, res in changes.items()}
        with self._lock:
            changed = [t for t in self._order(built) if self._replace(t, built[t])]
            for t in changed:
                self._push_locked(t)
            return {t: f"v{self._versions.get(t, 0)}" for t in built}

    def upsert(self, type_url, resources, ttl=None):
        """Adds or replaces some resources of a type, keeping the others. Returns the version."""
        with self._lock:
            merged = collections.OrderedDict(self._resources(type_url))
            for e in self._entries(type_url, resources, ttl):
                merged[e.name] = e
            if self._replace(type_url, list(merged.values())):
                self._push_locked(type_url)
            return f"v{self._versions.get(type_url, 0)}"

    def remove(self, type_url, names):
        """Removes resources by name. Returns the version."""
        with self._lock:
            kept = [e for n, e in self._resources(type_url).items() if n not in set(names)]
            if self._replace(type_url, kept):
                self._push_locked(type_url)
            return f"v{self._versions.get(type_url, 0)}"

    def push(self, type_url, force=True):
        """Bumps the version of a type and resends its resources unchanged (an identical push)."""
        with self._lock:
            self._versions[type_url] = self._versions.get(type_url, 0) + 1
            self._push_locked(type_url, force=force)
            return f"v{self._versions[type_url]}"

    def heartbeat(self, type_url, names=None):
        """Sends TTL heartbeats (Resource wrappers without a body, same version and ttl) for the
        named resources of a type (default: every one stored with a TTL) on every stream
        subscribed to them, without changing the store. Returns the names sent."""
        with self._lock:
            entries = [e for n, e in self._resources(type_url).items()
                       if (names is None and e.ttl is not None) or (names is not None and n in names)]
            for s in list(self._streams.values()):
                if type_url in s.types:
                    s.heartbeat(type_url, entries)
            return [e.name for e in entries]

    def _entries(self, type_url, resources, ttl):
        out = []
        for r in resources:
            a = rs.to_any(r, type_url)
            name = rs.any_name(a)
            if name is None:
                raise ValueError(f"resource of {type_url} without a decodable name")
            out.append(Entry(name, a, rs.content_version(a), ttl))
        return out

    def _replace(self, type_url, entries):
        """Installs entries as the whole type; True (and a new version) when anything changed.

        Names are unique in the store (a later entry replaces an earlier one):
        responses with duplicate names are sent with inject().
        """
        store = collections.OrderedDict((e.name, e) for e in entries)
        old = self._resources(type_url)
        if [(e.name, e.version, e.ttl) for e in store.values()] == [(e.name, e.version, e.ttl) for e in old.values()]:
            return False
        self._store[type_url] = store
        self._versions[type_url] = self._versions.get(type_url, 0) + 1
        return True

    @staticmethod
    def _order(types):
        return sorted(types, key=lambda t: rs.PUSH_ORDER.index(t) if t in rs.PUSH_ORDER else len(rs.PUSH_ORDER))

    def _push_locked(self, type_url, force=False):
        for s in list(self._streams.values()):
            try:
                s.push(type_url, force=force)
            except Exception as e:  # noqa: BLE001 - kept for the test to see
                self.errors.append(repr(e))
                raise

    # ---- files ---------------------------------------------------------------------------

    def load(self, path):
        """Replaces the whole store with a file's or directory's resources (absent types become empty)."""
        found = rs.load_path(path)
        for t in rs.PUSH_ORDER:
            found.setdefault(t, [])
        versions = self.update(found)
        self._log("loaded " + path + ": " + ", ".join(
            f"{rs.SHORT.get(t, t)} {versions[t]} ({len(found[t])})" for t in self._order(found) if found[t]))
        return versions

    def _start_watch(self):
        def mtimes():
            files = rs.resource_files(self.path)
            return {f: os.stat(f).st_mtime_ns for f in files if os.path.exists(f)}

        def loop(last):
            while not self._watch_stop.wait(self.poll_interval):
                try:
                    now = mtimes()
                    if now != last:
                        last = now
                        self.load(self.path)
                except Exception as e:  # noqa: BLE001 - a half-written file: keep the old config
                    self._log(f"reload of {self.path} failed, keeping the previous resources: {e}")

        self._watch_thread = threading.Thread(target=loop, args=(mtimes(),), daemon=True, name="xds-watch")
        self._watch_thread.start()

    # ---- faults ------------------------------------------------------------------------

    def inject(self, type_url, resources, names=None, version=None, response_type_url=None):
        """Sends resources (dicts with the @type/@bytes escapes, messages or Anys) as a response
        for response_type_url (default type_url) on every stream subscribed to type_url,
        without changing the store. Returns the version_info sent."""
        anys = [rs.to_any(r, type_url) for r in resources]
        if names is None:
            names = [rs.any_name(a) or f"injected-{i}" for i, a in enumerate(anys)]
        with self._lock:
            self._injected += 1
            version = version or f"injected-{self._injected}"
            for s in list(self._streams.values()):
                if type_url in s.types:
                    s.inject(response_type_url or type_url, anys, names, version)
        return version

    def send_raw(self, payload=b"\xff\x00garbage\x01\x02"):
        """Sends bytes that are not a valid response as one gRPC message on every stream."""
        with self._lock:
            for s in self._streams.values():
                s.send_raw(payload)

    def close_streams(self, code="UNAVAILABLE", details="closed by the test control plane", method=None):
        """Ends every open stream (or those of one gRPC method) with that status; the server keeps listening."""
        with self._lock:
            for s in self._streams.values():
                if method is None or s.method == method:
                    s.abort(abort_code(code), details)

    def reject_streams(self, code="UNAVAILABLE"):
        """New streams end at once with that status (None: accept them again)."""
        with self._lock:
            self._reject = abort_code(code) if code else None

    # ---- gRPC handlers -------------------------------------------------------------------

    def _handlers(self):
        handlers = []
        for service, (served, sotw, delta) in rs.SERVICES.items():
            methods = {
                sotw: grpc.stream_stream_rpc_method_handler(
                    self._handler(service, sotw, served, False),
                    request_deserializer=self.pb.DiscoveryRequest.FromString, response_serializer=_serialize),
                delta: grpc.stream_stream_rpc_method_handler(
                    self._handler(service, delta, served, True),
                    request_deserializer=self.pb.DeltaDiscoveryRequest.FromString, response_serializer=_serialize),
            }
            handlers.append(grpc.method_handlers_generic_handler(service, methods))
        return handlers

    def _handler(self, service, method, served, delta):
        def handle(requests, context):
            with self._lock:
                self._stream_ids += 1
                sid = self._stream_ids
                info = {"id": sid, "service": service, "method": method, "delta": delta, "peer": context.peer(),
                        "opened": time.monotonic(), "closed": None, "rejected": self._reject is not None}
                self.stream_log.append(info)
                self._cond.notify_all()
                if self._reject is not None:
                    context.set_code(self._reject)
                    context.set_details("rejected by the test control plane")
                    info["closed"] = info["opened"]
                    return iter(())
                stream = Stream(self, sid, service, method, served, delta, context)
                stream.info = info
                self._streams[sid] = stream
            self._log(f"stream {sid} opened: {method} from {context.peer()}")
            return stream.serve(requests)

        return handle

    def _stream_closed(self, stream):
        with self._lock:
            if self._streams.pop(stream.id, None) is not None:
                stream.info["closed"] = time.monotonic()
                self._cond.notify_all()
        self._log(f"stream {stream.id} closed")

    def _next_nonce(self):
        self._nonces += 1
        return str(self._nonces)

    def _on_request(self, stream, req):
        with self._lock:
            try:
                type_url, kind = stream.handle(req)
            except Exception as e:  # noqa: BLE001 - recorded; the stream goes on
                self.errors.append(repr(e))
                type_url, kind = stream.type_of(req), "error"
            rec = self._record_request(stream, req, type_url, kind)
        if kind in ("ack", "nack", "initial"):
            detail = f": {rec['error_detail']['message']}" if kind == "nack" else ""
            self._log(f"stream {stream.id} {rs.SHORT.get(type_url, type_url)} {kind.upper()} "
                      f"version={rec['version_info']!r} nonce={req.response_nonce!r}{detail}")

    def _record_request(self, stream, req, type_url, kind):
        from google.protobuf import json_format

        self._seq += 1
        rec = {
            "seq": self._seq, "time": time.monotonic(), "stream": stream.id, "service": stream.service,
            "method": stream.method, "delta": stream.delta, "type_url": type_url, "kind": kind,
            "node": json_format.MessageToDict(req.node, preserving_proto_field_name=True)
            if req.HasField("node") else None,
            "response_nonce": req.response_nonce,
            "error_detail": {"code": req.error_detail.code, "message": req.error_detail.message}
            if req.HasField("error_detail") else None,
        }
        if stream.delta:
            rec.update(version_info=None, subscribe=list(req.resource_names_subscribe),
                       unsubscribe=list(req.resource_names_unsubscribe),
                       initial_resource_versions=dict(req.initial_resource_versions), resource_names=None)
        else:
            rec.update(version_info=req.version_info, resource_names=list(req.resource_names), subscribe=None,
                       unsubscribe=None, initial_resource_versions=None)
        self.records.append(rec)
        self._cond.notify_all()
        return rec

    def _record_sent(self, stream, type_url, version, nonce, names, removed, injected=False, heartbeat=False):
        self._seq += 1
        self.sent.append({"seq": self._seq, "time": time.monotonic(), "stream": stream.id, "delta": stream.delta,
                          "type_url": type_url, "version_info": version, "nonce": nonce, "resources": names,
                          "removed": removed, "injected": injected, "heartbeat": heartbeat})
        self._cond.notify_all()

    # ---- queries for tests -------------------------------------------------------------------

    def mark(self):
        """A position in the records: pass it as since= to look only at what came later."""
        with self._lock:
            return self._seq

    def requests(self, type_url=None, kind=None, since=0):
        with self._lock:
            return [r for r in self.records if r["seq"] > since and (type_url is None or r["type_url"] == type_url)
                    and (kind is None or r["kind"] == kind)]

    def responses(self, type_url=None, since=0):
        with self._lock:
            return [r for r in self.sent if r["seq"] > since and (type_url is None or r["type_url"] == type_url)]

    def open_streams(self):
        """Info dicts of the streams open now."""
        with self._lock:
            return [s.info for s in self._streams.values()]

    def wait(self, cond, timeout=10.0, what="condition"):
        """Waits (on the server's own events) until cond() returns a truthy value, which is returned."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = cond()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"xds server: timed out after {timeout:.1f}s waiting for {what}")
                self._cond.wait(min(left, 0.1))

    def wait_streams(self, n=1, timeout=10.0):
        return self.wait(lambda: len(self._streams) >= n and self.open_streams(), timeout, f"{n} open stream(s)")

    def _answers(self, type_url, since, pred=None):
        """Pairs (response, ack/nack record) for responses of type_url sent after since."""
        sent = {r["nonce"]: r for r in self.sent if r["seq"] > since and r["type_url"] == type_url
                and (pred is None or pred(r))}
        return [(sent[r["response_nonce"]], r) for r in self.records
                if r["kind"] in ("ack", "nack") and r["type_url"] == type_url and r["response_nonce"] in sent]

    def wait_ack(self, type_url, version=None, since=0, timeout=10.0):
        """Waits for the ACK of a response of type_url (with that version, sent after since).

        Returns the ACK record; raises AssertionError at once when the client
        NACKs that response instead, quoting its error_detail.
        """
        def check():
            for resp, rec in self._answers(type_url, since, lambda r: version is None or r["version_info"] == version):
                if rec["kind"] == "nack":
                    raise AssertionError(f"{rs.SHORT.get(type_url, type_url)} version {resp['version_info']} was "
                                         f"NACKed: {rec['error_detail']}")
                return rec
            return None

        return self.wait(check, timeout, f"ACK of {type_url} version {version}")

    def wait_nack(self, type_url, since=0, timeout=10.0):
        """Waits for a NACK of a response of type_url sent after since; returns the record.

        Raises AssertionError at once when such a response is ACKed instead.
        """
        def check():
            for resp, rec in self._answers(type_url, since):
                if rec["kind"] == "ack":
                    raise AssertionError(f"{rs.SHORT.get(type_url, type_url)} version {resp['version_info']} was "
                                         f"ACKed, expected a NACK")
                return rec
            return None

        return self.wait(check, timeout, f"NACK of {type_url}")

    def wait_request(self, pred, since=0, timeout=10.0, what="a request"):
        """Waits for a recorded request (dict) matching pred, received after since."""
        return self.wait(lambda: next((r for r in self.records if r["seq"] > since and pred(r)), None),
                         timeout, what)
