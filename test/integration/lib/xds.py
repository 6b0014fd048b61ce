"""xDS test support: the control plane fixture, bootstrap and resource builders,
traffic helpers, and a minimal Python xDS client for the server's self-test.

The control plane is tools/xds (XdsServer), run in the test process on a free
port; a test changes its resources with set()/update()/remove()/push() and
reads what Legate ACKed or NACKed with wait_ack()/wait_nack()/requests().

    from lib.xds import xds_server  # noqa: F401  (the fixture)

    def test_x(xds_server, legate, ports):
        xds = xds_server()
        xds.update(clusters=[...], endpoints=[...], listeners=[...], routes=[...])
        lg = legate(ads_bootstrap(admin_port, xds))
"""
import http.client
import os
import queue
import sys
import threading
import time

import pytest

from . import config as cfg

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
if os.path.join(REPO, "tools") not in sys.path:
    sys.path.insert(0, os.path.join(REPO, "tools"))

from xds_control import resources as rs  # noqa: E402
from xds_control.server import XdsServer  # noqa: E402

LISTENER, ROUTE, CLUSTER, ENDPOINT, SECRET = rs.LISTENER, rs.ROUTE, rs.CLUSTER, rs.ENDPOINT, rs.SECRET
SCOPED_ROUTE, RUNTIME, EXTENSION_CONFIG = rs.SCOPED_ROUTE, rs.RUNTIME, rs.EXTENSION_CONFIG
XDS_CLUSTER = "xds_cluster"
ADS = "envoy.service.discovery.v3.AggregatedDiscoveryService"


# ---- the fixture --------------------------------------------------------------------


@pytest.fixture
def xds_server():
    """Factory: xds_server(start=True, **XdsServer kwargs) -> an XdsServer (started unless
    start=False), closed at teardown.

    Teardown fails the test when the server hit an internal error while
    handling a request (a harness bug, not Legate's).
    """
    started = []

    def make(start=True, **kw):
        srv = XdsServer(**kw)
        started.append(srv)
        return srv.start() if start else srv

    yield make
    errors = []
    for srv in started:
        srv.close()
        errors += srv.errors
    if errors:
        pytest.fail(f"xds server errors: {errors}", pytrace=False)


# ---- bootstrap builders ----------------------------------------------------------------


def xds_cluster(xds, name=XDS_CLUSTER):
    """A STATIC HTTP/2 cluster pointing at the control plane (TCP or its unix socket)."""
    ep = cfg.pipe_endpoint(xds.unix_path) if xds.unix_path else cfg.endpoint(xds.port)
    return cfg.cluster(name, [ep], http2=True)


def grpc_service(xds, grpc="envoy", cluster=XDS_CLUSTER):
    """envoy_grpc through the static cluster, or google_grpc straight to the server: insecure,
    or with ssl_credentials trusting the server's own certificate when it serves TLS (the
    target is then localhost:<port>, the name its certificate carries)."""
    if grpc == "envoy":
        return {"envoy_grpc": {"cluster_name": cluster}}
    if xds.tls:
        return {"google_grpc": {"target_uri": f"localhost:{xds.port}", "stat_prefix": "xds", "channel_credentials": {
            "ssl_credentials": {"root_certs": {"inline_string": xds.tls[1].decode()}}}}}
    target = xds.address if xds.unix_path else f"127.0.0.1:{xds.port}"
    return {"google_grpc": {"target_uri": target, "stat_prefix": "xds"}}


def api_config_source(xds, api_type="GRPC", grpc="envoy", **extra):
    src = {"api_type": api_type, "transport_api_version": "V3", "grpc_services": [grpc_service(xds, grpc)]}
    src.update(extra)
    return src


def ads_source(**extra):
    """A ConfigSource that says: over the ADS stream."""
    src = {"ads": {}, "resource_api_version": "V3"}
    src.update(extra)
    return src


def node(node_id="legate-test", cluster="test-cluster", **extra):
    n = {"id": node_id, "cluster": cluster}
    n.update(extra)
    return n


def ads_bootstrap(admin_port, xds, api_type="GRPC", grpc="envoy", static_clusters=(), static_listeners=(),
                  lds=True, cds=True, lds_extra=None, cds_extra=None, ads_extra=None, node_extra=None, **extra):
    """A bootstrap whose listeners and clusters come over ADS (GRPC or DELTA_GRPC)."""
    b = cfg.bootstrap(admin_port, listeners=static_listeners,
                      clusters=[xds_cluster(xds)] + list(static_clusters), **extra)
    b["node"] = node(**(node_extra or {}))
    dyn = {"ads_config": api_config_source(xds, api_type, grpc, **(ads_extra or {}))}
    if lds:
        dyn["lds_config"] = ads_source(**(lds_extra or {}))
    if cds:
        dyn["cds_config"] = ads_source(**(cds_extra or {}))
    b["dynamic_resources"] = dyn
    return b


def pertype_bootstrap(admin_port, xds, api_type="GRPC", grpc="envoy", lds_extra=None, cds_extra=None, **extra):
    """A bootstrap with LDS and CDS on their own streams (no ADS); resources reference
    their RDS/EDS config sources through pertype_source()."""
    b = cfg.bootstrap(admin_port, clusters=[xds_cluster(xds)], **extra)
    b["node"] = node()
    b["dynamic_resources"] = {
        "lds_config": {"api_config_source": api_config_source(xds, api_type, grpc), "resource_api_version": "V3",
                       **(lds_extra or {})},
        "cds_config": {"api_config_source": api_config_source(xds, api_type, grpc), "resource_api_version": "V3",
                       **(cds_extra or {})},
    }
    return b


def pertype_source(xds, api_type="GRPC", grpc="envoy", **extra):
    src = {"api_config_source": api_config_source(xds, api_type, grpc), "resource_api_version": "V3"}
    src.update(extra)
    return src


# ---- resource builders -------------------------------------------------------------------


def rds_listener(name, port, route_name, config_source=None, stat_prefix=None, http_filters=None, **listener_extra):
    """A listener whose HTTP connection manager takes its routes from RDS (over ADS by default)."""
    h = {
        "@type": cfg.HCM_TYPE,
        "stat_prefix": stat_prefix or name,
        "codec_type": "AUTO",
        "rds": {"route_config_name": route_name, "config_source": config_source or ads_source()},
        "http_filters": list(http_filters) if http_filters is not None else [cfg.router_filter()],
    }
    return cfg.listener(name, port, [{"name": "envoy.filters.network.http_connection_manager", "typed_config": h}],
                        **listener_extra)


def route_config(name, routes, domains=("*",)):
    """A RouteConfiguration with one virtual host. routes: [(prefix, cluster)] or route dicts."""
    rl = [cfg.route(r[1], prefix=r[0]) if isinstance(r, tuple) else r for r in routes]
    return cfg.route_config([cfg.vhost(name + "_vh", rl, domains=domains)], name=name)


def eds_cluster(name, service_name=None, config_source=None, **extra):
    """An EDS cluster (endpoints over ADS by default)."""
    c = {"name": name, "type": "EDS", "connect_timeout": "1s", "lb_policy": "ROUND_ROBIN",
         "eds_cluster_config": {"eds_config": config_source or ads_source()}}
    if service_name:
        c["eds_cluster_config"]["service_name"] = service_name
    c.update(extra)
    return c


def cla(cluster_name, ports):
    """A ClusterLoadAssignment with one locality holding 127.0.0.1:<port> for each port."""
    return {"cluster_name": cluster_name, "endpoints": [{"lb_endpoints": [cfg.endpoint(p) for p in ports]}]}


def static_cluster(name, ports):
    return cfg.cluster(name, ports)


def world(listen_port, backends, routes=(("/", None),), listener="ingress", route_name="r1"):
    """The usual xDS world as update() kwargs: one listener (RDS route_name) on listen_port,
    one EDS cluster per backend ({cluster: [ports]}), routes [(prefix, cluster)] (cluster
    None: the first backend)."""
    first = next(iter(backends))
    return {
        "clusters": [eds_cluster(name) for name in backends],
        "endpoints": [cla(name, ports) for name, ports in backends.items()],
        "listeners": [rds_listener(listener, listen_port, route_name)],
        "routes": [route_config(route_name, [(p, c or first) for p, c in routes])],
    }


def make_cert(directory, cn):
    """A self-signed P-256 certificate for cn -> (key_pem, cert_pem) as text."""
    import subprocess

    key, crt = os.path.join(directory, f"{cn}.key"), os.path.join(directory, f"{cn}.crt")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "1", "-subj", f"/CN={cn}", "-addext", f"subjectAltName=DNS:{cn}", "-keyout", key,
                    "-out", crt], check=True, capture_output=True)
    with open(key) as k, open(crt) as c:
        return k.read(), c.read()


def peer_cert_der(port, server_name="localhost", timeout=5.0):
    """The DER certificate a TLS server on 127.0.0.1:port presents (no verification)."""
    import socket
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as s:
            return s.getpeercert(binary_form=True)


# ---- traffic ---------------------------------------------------------------------------------


def get(port, path="/", headers=None, timeout=5.0):
    """GET over a new connection -> (status, {lower-case header: value}, body bytes)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def upstream_of(port, path="/", timeout=5.0):
    """The x-upstream header of a GET (the echo upstream's name), or the status as text."""
    status, headers, _ = get(port, path, timeout=timeout)
    return headers.get("x-upstream") if status == 200 else f"status {status}"


def wait_upstream(port, name, path="/", timeout=10.0):
    """Waits until GETs on the port are answered by the named upstream."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = upstream_of(port, path)
            if last == name:
                return
        except OSError as e:
            last = repr(e)
        if time.monotonic() >= deadline:
            raise AssertionError(f"port {port} {path}: wanted upstream {name!r}, last answer {last!r}")
        time.sleep(0.05)


def wait_status(port, status, path="/", timeout=10.0):
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = get(port, path)[0]
            if last == status:
                return
        except OSError as e:
            last = repr(e)
        if time.monotonic() >= deadline:
            raise AssertionError(f"port {port} {path}: wanted status {status}, last answer {last!r}")
        time.sleep(0.05)


def refused(port):
    """True when nothing accepts TCP connections on 127.0.0.1:port."""
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


class Traffic:
    """Background GETs in a loop (a new connection each, or one keep-alive connection),
    counting successes and failures. A failure is anything but the expected status."""

    def __init__(self, port, path="/", expect=200, keepalive=False, interval=0.005):
        self.port, self.path, self.expect, self.keepalive, self.interval = port, path, expect, keepalive, interval
        self.ok = 0
        self.failures = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="traffic")

    def start(self):
        self._thread.start()
        return self

    def _run(self):
        conn = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", self.path)
                r = conn.getresponse()
                r.read()
                if r.status == self.expect:
                    self.ok += 1
                else:
                    self.failures.append(f"status {r.status}")
                if not self.keepalive or r.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except Exception as e:  # noqa: BLE001 - every error is a counted failure
                self.failures.append(repr(e))
                if conn is not None:
                    conn.close()
                conn = None
            time.sleep(self.interval)
        if conn is not None:
            conn.close()

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=15)
        return self.ok, self.failures


# ---- Legate's view ---------------------------------------------------------------------------


def config_dump(lg, query=""):
    """/config_dump as {short @type name: config}: "ListenersConfigDump" -> {...}."""
    r = lg.admin.get("/config_dump" + (("?" + query) if query else ""))
    assert r.status == 200, r
    return {c["@type"].rsplit(".", 1)[-1]: c for c in r.json().get("configs", [])}


def dynamic_listeners(lg):
    """{name: DynamicListener} from /config_dump."""
    dump = config_dump(lg).get("ListenersConfigDump", {})
    return {dl["name"]: dl for dl in dump.get("dynamic_listeners", [])}


def dynamic_clusters(lg, which="dynamic_active_clusters"):
    """{name: DynamicCluster} from /config_dump (which: dynamic_active_clusters or dynamic_warming_clusters)."""
    dump = config_dump(lg).get("ClustersConfigDump", {})
    return {dc["cluster"]["name"]: dc for dc in dump.get(which, [])}


def stat_text(lg, name):
    """A text readout from /stats (Envoy prints them quoted), None when absent."""
    v = lg.admin.stats().get(name)
    return v.strip('"') if isinstance(v, str) else v


def wait_stat(lg, name, pred, timeout=10.0):
    """Waits until pred(value of the stat, 0 when absent) holds; returns the value."""
    deadline = time.monotonic() + timeout
    while True:
        value = lg.admin.stats().get(name, 0)
        if pred(value):
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"stat {name} = {value!r}: condition not met within {timeout}s")
        time.sleep(0.05)


# ---- a minimal xDS client (the server's self-test) ------------------------------------------------


class XdsClient:
    """One xDS stream from Python: send() requests, recv() responses.

    service/method default to ADS SotW; delta=True picks the delta method and
    message types of the same service.
    """

    def __init__(self, target, service=ADS, delta=False, root_cert=None, server_name=None):
        import grpc

        discovery_pb2, _, _ = rs.pb()
        self.pb = discovery_pb2
        self.delta = delta
        served, sotw, dmethod = rs.SERVICES[service]
        req_cls = discovery_pb2.DeltaDiscoveryRequest if delta else discovery_pb2.DiscoveryRequest
        resp_cls = discovery_pb2.DeltaDiscoveryResponse if delta else discovery_pb2.DiscoveryResponse
        if root_cert:
            opts = [("grpc.ssl_target_name_override", server_name)] if server_name else []
            self.channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_cert), options=opts)
        else:
            self.channel = grpc.insecure_channel(target)
        call = self.channel.stream_stream(f"/{service}/{dmethod if delta else sotw}",
                                          request_serializer=req_cls.SerializeToString,
                                          response_deserializer=resp_cls.FromString)
        self._out = queue.Queue()
        self._in = queue.Queue()
        self.error = None
        self._responses = call(iter(self._out.get, None))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        try:
            for r in self._responses:
                self._in.put(r)
        except Exception as e:  # noqa: BLE001 - the stream's end, reported by recv()
            self.error = e
        self._in.put(None)

    def send(self, **fields):
        req_cls = self.pb.DeltaDiscoveryRequest if self.delta else self.pb.DiscoveryRequest
        node = fields.pop("node", None)
        error = fields.pop("error_detail", None)
        req = req_cls(**fields)
        if node:
            req.node.id, req.node.cluster = node.get("id", ""), node.get("cluster", "")
        if error:
            req.error_detail.code, req.error_detail.message = error
        self._out.put(req)

    def recv(self, timeout=5.0):
        """The next response; raises AssertionError on timeout or when the stream ended."""
        try:
            r = self._in.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no response within {timeout}s") from None
        if r is None:
            self._in.put(None)
            raise AssertionError(f"stream ended: {self.error!r}")
        return r

    def no_response(self, wait=0.3):
        """True when nothing arrives within wait seconds."""
        try:
            r = self._in.get(timeout=wait)
        except queue.Empty:
            return True
        self._in.put(r)
        return False

    def close(self):
        self._out.put(None)
        self.channel.close()
