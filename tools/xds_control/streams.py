"""One xDS stream as the server sees it: SotW (DiscoveryRequest) or delta.

A stream owns a queue of responses that the gRPC handler thread drains (the
generator in serve()) and a reader thread that hands every request to the
server, which calls handle() under its lock. handle() and push() decide what
to send; they only enqueue, so they never block on the network.

Protocol, as Envoy's xds_protocol document describes the server side:
- per type, a request whose response_nonce is the latest nonce sent for that
  type is an ACK (version_info = the version sent) or, with error_detail, a
  NACK; an older nonce is stale and ignored; the first request of a type
  subscribes;
- SotW: LDS, CDS and SRDS subscribe by wildcard (no names); other types by
  resource_names. A response carries every subscribed resource that exists;
  nothing is sent for a non-wildcard subscription none of whose resources
  exist yet (so the client keeps warming), and a response is only sent when
  the set of (name, version) the client would get changed;
- delta: resource_names_subscribe/unsubscribe change the subscription ("*"
  is the wildcard, and an initial LDS/CDS/SRDS request without names is the
  legacy wildcard); initial_resource_versions says what the client already
  has; each response carries the resources whose version differs from what
  the client has and removed_resources for those it has that are gone.
"""
import queue
import threading
import time

import grpc

from . import resources as rs

_CLOSE = object()


class _Abort:
    def __init__(self, code, details):
        self.code = code
        self.details = details


class _TypeState:
    """Per type: subscription and what was last sent on this stream."""

    def __init__(self):
        self.wildcard = False
        self.names = set()
        self.nonce = None  # latest nonce sent for this type
        self.version = None  # version_info of that response
        self.digest = None  # SotW: ((name, version), ...) last sent; None before any
        self.known = {}  # delta: name -> version the client has
        self.resend = False  # an injected response replaced the client's view: resend in full


class Stream:
    def __init__(self, server, stream_id, service, method, served_type, delta, context):
        self.server = server
        self.id = stream_id
        self.service = service
        self.method = method
        self.served_type = served_type  # None on ADS: requests name their type
        self.delta = delta
        self.context = context
        self.peer = context.peer()
        self.opened = time.monotonic()
        self.types = {}
        self._queue = queue.Queue()

    # ---- gRPC plumbing -------------------------------------------------------

    def serve(self, requests):
        """The response iterator gRPC drains; ends when the RPC ends either way."""
        self.context.add_callback(lambda: self._queue.put(_CLOSE))
        reader = threading.Thread(target=self._read, args=(requests,), daemon=True, name=f"xds-read-{self.id}")
        reader.start()
        try:
            while True:
                item = self._queue.get()
                if item is _CLOSE:
                    return
                if isinstance(item, _Abort):
                    self.context.set_code(item.code)
                    self.context.set_details(item.details)
                    return
                yield item
        finally:
            self.server._stream_closed(self)

    def _read(self, requests):
        try:
            for req in requests:
                self.server._on_request(self, req)
        except grpc.RpcError:
            pass  # the stream was cancelled or broke: the reader ends
        except Exception as e:  # noqa: BLE001 - a harness bug: kept for the test to see
            self.server.errors.append(f"stream {self.id}: {e!r}")
        finally:
            self._queue.put(_CLOSE)

    def abort(self, code, details):
        self._queue.put(_Abort(code, details))

    def send_raw(self, payload):
        """Queues bytes sent as one gRPC message as they are (not a DiscoveryResponse)."""
        self._queue.put(payload)

    # ---- protocol --------------------------------------------------------------

    def type_of(self, req):
        return req.type_url or self.served_type

    def classify(self, st, req, first):
        if first:
            return "initial"
        if not req.response_nonce:
            return "request"
        if req.response_nonce != st.nonce:
            return "stale"
        return "nack" if (req.error_detail.code or req.error_detail.message) else "ack"

    def handle(self, req):
        """Applies a request (under the server lock); returns (type_url, kind)."""
        type_url = self.type_of(req)
        first = type_url not in self.types
        st = self.types.setdefault(type_url, _TypeState())
        kind = self.classify(st, req, first)
        if kind == "stale":
            return type_url, kind
        if self.delta:
            self._delta_subscribe(st, type_url, req, first)
        else:
            self._sotw_subscribe(st, type_url, req)
        self.respond(type_url, initial=first)
        return type_url, kind

    def push(self, type_url, force=False):
        """The resources of type_url changed (or force: resend them as they are)."""
        if type_url in self.types:
            self.respond(type_url, force=force)

    def respond(self, type_url, initial=False, force=False):
        if self.delta:
            self._delta_respond(type_url, initial, force)
        else:
            self._sotw_respond(type_url, initial, force)

    # ---- SotW --------------------------------------------------------------------

    def _sotw_subscribe(self, st, type_url, req):
        names = set(req.resource_names)
        st.wildcard = "*" in names or (not names and type_url in rs.WILDCARD_TYPES)
        st.names = names - {"*"}

    def _sotw_respond(self, type_url, initial, force):
        st = self.types[type_url]
        entries = [e for name, e in self.server._resources(type_url).items() if st.wildcard or name in st.names]
        digest = tuple((e.name, e.version) for e in entries)
        if not entries and not st.wildcard and not st.digest:
            return  # nothing the client asked for exists yet: it keeps waiting
        if not (initial or force) and digest == st.digest:
            return
        discovery_pb2 = self.server.pb
        resp = discovery_pb2.DiscoveryResponse(version_info=self.server.version(type_url), type_url=type_url,
                                               nonce=self.server._next_nonce())
        resp.control_plane.identifier = self.server.identifier
        for e in entries:
            resp.resources.append(e.sotw_any(discovery_pb2))
        st.nonce, st.version, st.digest = resp.nonce, resp.version_info, digest
        self.server._record_sent(self, type_url, resp.version_info, resp.nonce, [e.name for e in entries], [])
        self._queue.put(resp)

    # ---- delta -------------------------------------------------------------------

    def _delta_subscribe(self, st, type_url, req, first):
        sub, unsub = set(req.resource_names_subscribe), set(req.resource_names_unsubscribe)
        if first:
            st.known = dict(req.initial_resource_versions)
            st.wildcard = not sub and type_url in rs.WILDCARD_TYPES
        if "*" in sub:
            st.wildcard = True
        if "*" in unsub:
            st.wildcard = False
        st.names |= sub - {"*"}
        st.names -= unsub
        for name in unsub:
            st.known.pop(name, None)

    def _delta_respond(self, type_url, initial, force):
        st = self.types[type_url]
        force, st.resend = force or st.resend, False
        current = self.server._resources(type_url)
        send = [e for name, e in current.items()
                if (st.wildcard or name in st.names) and (force or st.known.get(name) != e.version)]
        removed = [name for name in st.known if name not in current and (st.wildcard or name in st.names)]
        if not send and not removed and not (initial and st.wildcard):
            return
        discovery_pb2 = self.server.pb
        resp = discovery_pb2.DeltaDiscoveryResponse(system_version_info=self.server.version(type_url),
                                                    type_url=type_url, nonce=self.server._next_nonce(),
                                                    removed_resources=removed)
        resp.control_plane.identifier = self.server.identifier
        for e in send:
            resp.resources.append(e.delta_resource(discovery_pb2))
            st.known[e.name] = e.version
        for name in removed:
            del st.known[name]
        st.nonce, st.version = resp.nonce, resp.system_version_info
        self.server._record_sent(self, type_url, resp.system_version_info, resp.nonce, [e.name for e in send],
                                 removed)
        self._queue.put(resp)

    # ---- TTL heartbeats ---------------------------------------------------------

    def heartbeat(self, type_url, entries):
        """Sends heartbeats for the entries this stream subscribes to (xds_protocol "TTL"):
        SotW: a response with the current version_info whose resources are body-less
        Resource wrappers; delta: body-less Resources. Nothing when none is subscribed."""
        st = self.types[type_url]
        entries = [e for e in entries if st.wildcard or e.name in st.names]
        if not entries:
            return
        discovery_pb2 = self.server.pb
        nonce = self.server._next_nonce()
        version = st.version if st.version is not None else self.server.version(type_url)
        if self.delta:
            resp = discovery_pb2.DeltaDiscoveryResponse(system_version_info=version, type_url=type_url, nonce=nonce)
            for e in entries:
                resp.resources.append(e.heartbeat_resource(discovery_pb2))
        else:
            resp = discovery_pb2.DiscoveryResponse(version_info=version, type_url=type_url, nonce=nonce)
            for e in entries:
                resp.resources.append(e.heartbeat_any(discovery_pb2))
        resp.control_plane.identifier = self.server.identifier
        st.nonce, st.version = nonce, version
        self.server._record_sent(self, type_url, version, nonce, [e.name for e in entries], [], heartbeat=True)
        self._queue.put(resp)

    # ---- injected responses (bad input tests) ----------------------------------

    def inject(self, type_url, anys, names, version):
        """Sends anys as a response for type_url without touching the store.

        The stream's state for the type forgets what it last sent, so that the
        next real change is pushed in full.
        """
        discovery_pb2 = self.server.pb
        nonce = self.server._next_nonce()
        if self.delta:
            resp = discovery_pb2.DeltaDiscoveryResponse(system_version_info=version, type_url=type_url, nonce=nonce)
            for a, name in zip(anys, names):
                resp.resources.add(name=name, version=version, resource=a)
        else:
            resp = discovery_pb2.DiscoveryResponse(version_info=version, type_url=type_url, nonce=nonce)
            resp.resources.extend(anys)
        st = self.types.setdefault(type_url, _TypeState())
        st.nonce, st.version, st.digest, st.resend = nonce, version, None, True
        self.server._record_sent(self, type_url, version, nonce, list(names), [], injected=True)
        self._queue.put(resp)


def abort_code(name):
    """grpc.StatusCode by name ("UNAVAILABLE")."""
    return getattr(grpc.StatusCode, name) if isinstance(name, str) else name
