"""Upstream TLS per request and across connections (issue 3).

- auto_sni / auto_san_validation / override_auto_sni_header
  (UpstreamHttpProtocolOptions in the cluster's HttpProtocolOptions): the SNI
  of an upstream connection is the request's host (or the override header's
  value), without its port; the server certificate's SANs must cover it; a
  connection made for one name never serves another.
- Session resumption (UpstreamTlsContext.max_session_keys, default 1): a new
  connection offers the session of an earlier one; 0 turns it off.

The upstream is a Python TLS echo server that records, per connection, the
SNI it was sent and whether the session was resumed.
"""
import ssl
import threading

import pytest

from lib import config as cfg
from lib.certs import Pki
from lib.upstream import EchoUpstream, _Handler, _TCPServer
from lib.wait import wait_for
from lib.xds import get

UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
VERIFY_FAILED = "TLS_error:|268435581:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:TLS_error_end"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    p = Pki(tmp_path_factory.mktemp("pki") / "ca")
    p.names = p.issue("names", dns=["a.example.com", "b.example.com", "*.wild.example.com"], ip=["127.0.0.1"], key="ec")
    return p


# ---- the TLS upstream ---------------------------------------------------------------


class _Server(_TCPServer):
    def handle_error(self, request, client_address):
        pass  # a handshake the client broke off (a rejected certificate)

    def get_request(self):
        sock, addr = self.socket.accept()
        return self.ssl_ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr


class _TlsHandler(_Handler):
    def setup(self):
        self.request.settimeout(10)
        self.request.do_handshake()
        self.server.upstream._handshake(self.request)
        super().setup()


class TlsUpstream(EchoUpstream):
    """EchoUpstream behind TLS. .handshakes: [(sni or None, session_reused)] in accept order."""

    def __init__(self, name, cert):
        import itertools
        self.name, self.unix_path = name, None
        self.requests, self._conns, self._flaky = [], {}, {}
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._conn_ids = itertools.count(1)
        self._inflight = 0
        self.connections_total = 0
        self.handshakes = []
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert.cert, cert.key)
        ctx.sni_callback = lambda sock, name, _ctx: setattr(sock, "sni_seen", name)
        self._server = _Server(("127.0.0.1", 0), _TlsHandler)
        self._server.ssl_ctx = ctx
        self._server.upstream = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def _handshake(self, sock):
        with self._lock:
            self.handshakes.append((getattr(sock, "sni_seen", None), sock.session_reused))


@pytest.fixture
def tls_upstream():
    started = []

    def make(cert, **kw):
        u = TlsUpstream("tls", cert, **kw)
        started.append(u)
        return u

    yield make
    for u in started:
        u.close()


# ---- config -----------------------------------------------------------------------------


def upstream_ts(pki, **ctx_extra):
    ctx = {"@type": UPSTREAM_TLS, "common_tls_context": {"validation_context": {"trusted_ca": {"filename": pki.ca_cert}}}}
    ctx.update(ctx_extra)
    return {"name": "envoy.transport_sockets.tls", "typed_config": ctx}


def proxy(legate, ports, up, pki, http_options=None, ts_extra=None, **cluster_extra):
    opts = {"explicit_http_config": {"http_protocol_options": {}}}
    if http_options is not None:
        opts["upstream_http_protocol_options"] = http_options
    extra = {"transport_socket": upstream_ts(pki, **(ts_extra or {})), "protocol_options": opts}
    extra.update(cluster_extra)
    admin_port, port = ports(2)
    lg = legate(cfg.simple_proxy(admin_port, port, [up.port], cluster_extra=extra), args=["--concurrency", "1"])
    return lg, port


def fetch(port, host, headers=None):
    """GET / with that Host over a new downstream connection -> (status, body text)."""
    h = {"Host": host}
    h.update(headers or {})
    status, _, body = get(port, "/", headers=h, timeout=10)
    return status, body.decode(errors="replace")


# ---- auto_sni / auto_san_validation ----------------------------------------------------------


def test_auto_sni_uses_the_request_host_and_keys_the_pool(legate, ports, pki, tls_upstream):
    up = tls_upstream(pki.names)
    lg, port = proxy(legate, ports, up, pki, {"auto_sni": True})
    assert fetch(port, "a.example.com:8443")[0] == 200
    assert fetch(port, "b.example.com")[0] == 200
    assert fetch(port, "a.example.com")[0] == 200, "a.example.com again: its connection is reused"
    assert fetch(port, "b.example.com")[0] == 200
    assert [sni for sni, _ in up.handshakes] == ["a.example.com", "b.example.com"], "the SNI is the host without its port"
    assert up.connections_total == 2, "one connection per name; none serves the other name"
    assert lg.admin.stat("cluster.backend.upstream_cx_total") == 2


def test_auto_sni_with_an_ip_host_sends_the_configured_sni(legate, ports, pki, tls_upstream):
    up = tls_upstream(pki.names)
    lg, port = proxy(legate, ports, up, pki, {"auto_sni": True}, ts_extra={"sni": "b.example.com"})
    assert fetch(port, f"127.0.0.1:{port}")[0] == 200
    assert fetch(port, "a.example.com")[0] == 200
    assert [sni for sni, _ in up.handshakes] == ["b.example.com", "a.example.com"], "an IP address is no SNI"


def test_override_auto_sni_header(legate, ports, pki, tls_upstream):
    up = tls_upstream(pki.names)
    lg, port = proxy(legate, ports, up, pki, {"auto_sni": True, "override_auto_sni_header": "X-Upstream-Name"})
    assert fetch(port, "a.example.com", {"x-upstream-name": "x.wild.example.com"})[0] == 200
    assert fetch(port, "a.example.com", {"x-upstream-name": ""})[0] == 200, "an empty override falls back to the host"
    assert [sni for sni, _ in up.handshakes] == ["x.wild.example.com", "a.example.com"]


def test_auto_san_validation_rejects_a_certificate_without_the_name(legate, ports, pki, tls_upstream):
    up = tls_upstream(pki.names)
    lg, port = proxy(legate, ports, up, pki, {"auto_sni": True, "auto_san_validation": True})
    status, body = fetch(port, "c.example.com")
    assert status == 503
    assert "reset reason: connection failure" in body and body.endswith("transport failure reason: " + VERIFY_FAILED), body
    st = lg.admin.stats()
    assert st["cluster.backend.ssl.fail_verify_san"] == 1 and st["cluster.backend.upstream_cx_connect_fail"] == 1
    # the success path: names the certificate covers, exactly or by its wildcard
    assert fetch(port, "a.example.com")[0] == 200
    assert fetch(port, "deep.wild.example.com")[0] == 200
    status, body = fetch(port, "x.y.wild.example.com")
    assert status == 503, "a wildcard covers one label only"
    assert fetch(port, "b.example.com")[0] == 200
    assert lg.admin.stat("cluster.backend.ssl.fail_verify_san") == 2


def test_auto_san_validation_replaces_the_configured_san_matchers(legate, ports, pki, tls_upstream):
    """Without auto_sni: the configured SNI goes out, the request's name is what the SANs must cover."""
    up = tls_upstream(pki.names)
    validation = {"trusted_ca": {"filename": pki.ca_cert},
                  "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": "nowhere.example.com"}}]}
    lg, port = proxy(legate, ports, up, pki, {"auto_san_validation": True},
                     ts_extra={"sni": "b.example.com", "common_tls_context": {"validation_context": validation}})
    assert fetch(port, "a.example.com")[0] == 200
    assert fetch(port, "127.0.0.1")[0] == 200, "an IP address is checked against the IP SANs"
    assert fetch(port, "c.example.com")[0] == 503
    assert [sni for sni, _ in up.handshakes] == ["b.example.com", "b.example.com"]


def test_auto_sni_config_errors(legate, ports, pki, tmp_path):
    from lib.legate import run_legate, write_yaml
    opts = {"explicit_http_config": {"http_protocol_options": {}},
            "upstream_http_protocol_options": {"auto_sni": True, "override_auto_sni_header": "bad header"}}
    b = cfg.simple_proxy(ports(), ports(), [1], cluster_extra={"protocol_options": opts})
    r = run_legate(["-c", write_yaml(str(tmp_path / "bad.yaml"), b), "--mode", "validate"])
    assert r.returncode != 0
    assert "upstream_http_protocol_options.override_auto_sni_header" in r.stderr, r.stderr


# ---- session resumption --------------------------------------------------------------------


def reused_over(port, up, n):
    for _ in range(n):
        status, body = fetch(port, "a.example.com")
        assert status == 200, body
    return [reused for _, reused in up.handshakes]


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_session_resumption(legate, ports, pki, tls_upstream, version):
    up = tls_upstream(pki.names)
    params = {"tls_minimum_protocol_version": version, "tls_maximum_protocol_version": version}
    ts = {"common_tls_context": {"tls_params": params, "validation_context": {"trusted_ca": {"filename": pki.ca_cert}}}}
    lg, port = proxy(legate, ports, up, pki, ts_extra=ts, max_requests_per_connection=1)
    assert reused_over(port, up, 3) == [False, True, True], "each new connection resumes the last session"
    st = lg.admin.stats()
    assert st["cluster.backend.ssl.handshake"] == 3 and st["cluster.backend.ssl.session_reused"] == 2
    assert st["cluster.backend.upstream_cx_total"] == 3


def test_max_session_keys_zero_disables_resumption(legate, ports, pki, tls_upstream):
    up = tls_upstream(pki.names)
    lg, port = proxy(legate, ports, up, pki, ts_extra={"max_session_keys": 0}, max_requests_per_connection=1)
    assert reused_over(port, up, 3) == [False, False, False]
    assert lg.admin.stat("cluster.backend.ssl.session_reused") == 0


def test_sessions_are_kept_per_name(legate, ports, pki, tls_upstream):
    """With auto_sni a session made for one name is not offered on a connection for another."""
    up = tls_upstream(pki.names)
    lg, port = proxy(legate, ports, up, pki, {"auto_sni": True}, ts_extra={"max_session_keys": 4},
                     max_requests_per_connection=1)
    for host in ("a.example.com", "b.example.com", "a.example.com", "b.example.com"):
        assert fetch(port, host)[0] == 200
    assert up.handshakes == [("a.example.com", False), ("b.example.com", False), ("a.example.com", True),
                             ("b.example.com", True)]


# ---- bytes ----------------------------------------------------------------------------------------


def test_upstream_bytes_are_counted(legate, ports, upstream):
    """upstream_cx_rx_bytes_total / tx_bytes_total of an HTTP pool count every response and request."""
    up = upstream("plain")
    admin_port, port = ports(2)
    lg = legate(cfg.simple_proxy(admin_port, port, [up.port]), args=["--concurrency", "1"])
    sizes = (1000, 5000, 20000)
    for n in sizes:
        status, headers, body = get(port, f"/bytes/{n}")
        assert status == 200 and len(body) == n
    # the received count is read from the kernel a moment after the traffic
    wait_for(lambda: lg.admin.stat("cluster.backend.upstream_cx_rx_bytes_total") >= sum(sizes), timeout=5,
             what="rx bytes of the three bodies")
    rx = lg.admin.stat("cluster.backend.upstream_cx_rx_bytes_total")
    assert rx < sum(sizes) + 3 * 400, f"rx {rx}: the three bodies and their heads"
    tx = lg.admin.stat("cluster.backend.upstream_cx_tx_bytes_total")
    assert 3 * len("GET /bytes/1000 HTTP/1.1\r\n") < tx < 3 * 600, f"tx {tx}: three request heads"
