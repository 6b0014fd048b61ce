"""TLS on both sides, as Envoy: DownstreamTlsContext (certificates from files
and inline, RSA and ECDSA, ALPN choosing the codec, SNI choosing the filter
chain through tls_inspector, mTLS, tls_params, session resumption, reload of
certificate files) and UpstreamTlsContext (SNI, ALPN, server certificate
validation with SAN matchers, client certificates).

Envoy behaviour checked in source/common/tls (ssl_socket.cc drainErrorQueue:
the transport failure reason "TLS_error:|<code>:<lib>:<func>:<reason>:TLS_error_end"
with BoringSSL's codes, e.g. 268435581 ... CERTIFICATE_VERIFY_FAILED;
connection_error counts failures other than verification; context_impl.cc:
ssl.handshake, ssl.no_certificate, ssl.versions.<v>, ssl.ciphers.<c>,
ssl.curves.<c>; default_validator.cc: fail_verify_error, fail_verify_san,
fail_verify_no_cert) and source/extensions/filters/listener/tls_inspector
(tls_inspector.tls_found / sni_found / alpn_found). Clients: curl, openssl
s_client and Python's ssl module; upstreams: the echo servers behind
Python's ssl.
"""
import hashlib
import datetime
import json
import os
import shutil
import socket
import ssl
import subprocess
import time

import pytest

from lib import config as cfg
from lib.certs import Pki
from lib.h2upstream import H2Upstream, _Conn
from lib.legate import sanitized
from lib.upstream import EchoUpstream, _TCPServer, _Handler, header_value
from lib.wait import wait_for

DOWNSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
TLS_INSPECTOR = {"name": "envoy.filters.listener.tls_inspector",
                 "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}
VERIFY_FAILED = "TLS_error:|268435581:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:TLS_error_end"


# ---- PKI and helpers -----------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    p = Pki(d / "ca")
    p.server = p.issue("server", dns=["localhost", "a.example.com"], ip=["127.0.0.1"])
    p.server_ec = p.issue("server-ec", dns=["localhost", "a.example.com"], ip=["127.0.0.1"], key="ec")
    p.wild = p.issue("wild", dns=["*.wild.example.com"], key="ec")
    p.upstream = p.issue("upstream", dns=["upstream.example.com"], uri=["spiffe://cluster.local/ns/default/sa/backend"],
                         key="ec")
    p.client = p.issue("client", uri=["spiffe://cluster.local/ns/default/sa/client"], client=True, key="ec")
    p.expired = p.issue("expired-client", uri=["spiffe://cluster.local/ns/default/sa/client"], client=True, expired=True)
    p.other = Pki(d / "other", cn="Untrusted CA")
    p.untrusted = p.other.issue("untrusted-client", uri=["spiffe://cluster.local/ns/default/sa/client"], client=True)
    return p


def tls_cert(c):
    return {"certificate_chain": {"filename": c.cert}, "private_key": {"filename": c.key}}


def downstream_ts(certs, alpn=("h2", "http/1.1"), validation=None, **extra):
    common = {"tls_certificates": [tls_cert(c) if not isinstance(c, dict) else c for c in certs]}
    if alpn:
        common["alpn_protocols"] = list(alpn)
    if validation is not None:
        common["validation_context"] = validation
    ctx = {"@type": DOWNSTREAM_TLS, "common_tls_context": common}
    ctx.update(extra)
    return {"name": "envoy.transport_sockets.tls", "typed_config": ctx}


def upstream_ts(validation=None, cert=None, sni=None, alpn=None):
    common = {}
    if validation is not None:
        common["validation_context"] = validation
    if cert is not None:
        common["tls_certificates"] = [tls_cert(cert)]
    if alpn is not None:
        common["alpn_protocols"] = list(alpn)
    ctx = {"@type": UPSTREAM_TLS, "common_tls_context": common}
    if sni:
        ctx["sni"] = sni
    return {"name": "envoy.transport_sockets.tls", "typed_config": ctx}


def tls_proxy(legate, ports, upstream_port, transport_socket, inspector=True, cluster_extra=None, chain_extra=None,
              extra_chains=(), **listener_extra):
    rc = cfg.route_config([cfg.vhost("v", [cfg.route("backend")])])
    chain = {"filters": [cfg.hcm(rc)], "transport_socket": transport_socket}
    chain.update(chain_extra or {})
    lst = {"name": "tls", "address": cfg.socket_address(ports()), "filter_chains": [chain] + list(extra_chains)}
    if inspector:
        lst["listener_filters"] = [TLS_INSPECTOR]
    lst.update(listener_extra)
    return legate(cfg.bootstrap(ports(), listeners=[lst],
                                clusters=[cfg.cluster("backend", [upstream_port], **(cluster_extra or {}))]))


def curl(args, timeout=20):
    r = subprocess.run(["curl", "-sS", "--max-time", "10"] + list(args), capture_output=True, text=True, timeout=timeout)
    return r


def s_client(port, args=(), data=b"", hold=0.3, timeout=20):
    """openssl s_client: returns (returncode, stdout+stderr). stdin stays open
    for `hold` seconds, so that TLS 1.3 session tickets arrive before it quits."""
    p = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{port}"] + list(args), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        if data:
            p.stdin.write(data)
            p.stdin.flush()
        time.sleep(hold)
        out, _ = p.communicate(timeout=timeout)
    except BaseException:
        p.kill()
        p.wait()
        raise
    return p.returncode, out.decode(errors="replace")


def client_ctx(pki, cert=None, alpn=None, min_version=None, max_version=None):
    ctx = ssl.create_default_context(cafile=pki.ca_cert)
    if cert is not None:
        ctx.load_cert_chain(cert.cert, cert.key)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if min_version:
        ctx.minimum_version = min_version
    if max_version:
        ctx.maximum_version = max_version
    return ctx


def https_get(port, ctx, path="/", host="localhost", sock=None):
    """One HTTP/1.1 GET over TLS; returns (status, body, tls socket) and keeps the connection."""
    if sock is None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock = ctx.wrap_socket(raw, server_hostname=host)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response head")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        k, v = line.split(":", 1)
        if k.strip().lower() == "content-length":
            length = int(v)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, body, sock


def peer_subject(port, servername=None, args=()):
    extra = ["-servername", servername] if servername else ["-noservername"]
    rc, out = s_client(port, extra + list(args))
    for line in out.splitlines():
        if line.startswith("subject="):
            return line
    return None


def handshake_fails(ctx, port, host="localhost"):
    """True when the TLS connection cannot be used (handshake error, or with
    TLS 1.3 client auth the server's alert on the first read)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname=host) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                return s.recv(100) == b""
    except (ssl.SSLError, ConnectionError, OSError):
        return True


# ---- TLS upstreams ---------------------------------------------------------------


class _TLSServer(_TCPServer):
    def get_request(self):
        sock, addr = self.socket.accept()
        # the handshake happens on first use, in the handler's thread
        return self.ssl_ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr


class TlsEchoUpstream(EchoUpstream):
    """EchoUpstream behind TLS; the JSON echo gains "sni" and "peer_cert"."""

    def __init__(self, name, ssl_ctx):
        import itertools
        import threading
        self.name = name
        self.unix_path = None
        self.requests = []
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._conns = {}
        self._conn_ids = itertools.count(1)
        self._inflight = 0
        self._flaky = {}
        self.connections_total = 0
        self.sni = []
        ssl_ctx.sni_callback = lambda sslsock, name, ctx: self.sni.append(name)
        self._server = _TLSServer(("127.0.0.1", 0), _Handler)
        self._server.ssl_ctx = ssl_ctx
        self._server.upstream = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()


class TlsH2Upstream(H2Upstream):
    """H2Upstream behind TLS with ALPN h2."""

    def __init__(self, name, ssl_ctx):
        self.ssl_ctx = ssl_ctx
        super().__init__(name)

    def _accept_loop(self):
        import threading
        while not self._stop:
            try:
                s, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            s.settimeout(5)
            try:
                s = self.ssl_ctx.wrap_socket(s, server_side=True)
            except (ssl.SSLError, OSError):
                s.close()
                continue
            s.settimeout(None)
            with self._lock:
                c = _Conn(s, self, next(self._ids))
                self._conns.add(c)
                self.connections_total += 1
            threading.Thread(target=c.run, daemon=True).start()


def server_ctx(cert, alpn=None, client_ca=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert.cert, cert.key)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if client_ca:
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


@pytest.fixture
def tls_upstream():
    started = []

    def make(cert, **kw):
        u = TlsEchoUpstream("tls-upstream", server_ctx(cert, **kw))
        started.append(u)
        return u

    yield make
    for u in started:
        u.close()


# ---- downstream ----------------------------------------------------------------


def test_alpn_chooses_h2_or_http11(legate, ports, upstream, pki):
    up = upstream("a")
    lg = tls_proxy(legate, ports, up.port, downstream_ts([pki.server, pki.server_ec]))
    port = lg.listener_port()
    for flag, version in (("--http2", "2"), ("--http1.1", "1.1")):
        r = curl([flag, "--cacert", pki.ca_cert, "-w", "\n%{http_version}", f"https://localhost:{port}/alpn"])
        assert r.returncode == 0, r.stderr
        body, got = r.stdout.rsplit("\n", 1)
        assert got == version
        echo = json.loads(body)
        assert echo["path"] == "/alpn"
        assert header_value(echo, "x-forwarded-proto") == "https"
    st = lg.admin.stats()
    prefix = f"listener.127.0.0.1_{port}.ssl."
    assert st[prefix + "handshake"] == 2
    assert st[prefix + "versions.TLSv1.3"] == 2
    assert st[prefix + "no_certificate"] == 2
    assert st["tls_inspector.tls_found"] == 2 and st["tls_inspector.alpn_found"] == 2 and st["tls_inspector.sni_found"] == 2
    assert st["http.ingress_http.downstream_cx_http2_total"] == 1
    assert st["http.ingress_http.downstream_cx_http1_total"] == 1


def test_rsa_and_ecdsa_certificates_by_signature_algorithm(legate, ports, upstream, pki):
    up = upstream("a")
    lg = tls_proxy(legate, ports, up.port, downstream_ts([pki.server, pki.server_ec]))
    port = lg.listener_port()
    rc, out = s_client(port, ["-servername", "localhost", "-sigalgs", "ECDSA+SHA256", "-tls1_2"])
    assert "Peer signature type: ECDSA" in out, out
    rc, out = s_client(port, ["-servername", "localhost", "-sigalgs", "RSA-PSS+SHA256:RSA+SHA256", "-tls1_2"])
    assert "Peer signature type: RSA" in out, out


def test_inline_certificate_and_no_alpn_sniffs_the_codec(legate, ports, upstream, pki):
    up = upstream("a")
    inline = {"certificate_chain": {"inline_string": pki.server.chain_pem()},
              "private_key": {"inline_string": pki.server.key_pem()}}
    lg = tls_proxy(legate, ports, up.port, downstream_ts([inline], alpn=None), inspector=False)
    port = lg.listener_port()
    r = curl(["--http1.1", "--cacert", pki.ca_cert, "-w", "\n%{http_version}", f"https://localhost:{port}/x"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith("\n1.1")
    # without ALPN the HTTP/2 preface still selects HTTP/2
    r = curl(["--http2-prior-knowledge", "--cacert", pki.ca_cert, "-w", "\n%{http_version}", f"https://localhost:{port}/x"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith("\n2")


def test_sni_selects_the_filter_chain(legate, ports, upstream, pki):
    a, b = upstream("exact"), upstream("wild")
    rc_a = cfg.route_config([cfg.vhost("v", [cfg.route("a")])])
    rc_b = cfg.route_config([cfg.vhost("v", [cfg.route("b")])])
    chains = [
        {"filter_chain_match": {"server_names": ["a.example.com"]}, "filters": [cfg.hcm(rc_a, stat_prefix="a")],
         "transport_socket": downstream_ts([pki.server])},
        {"filter_chain_match": {"server_names": ["*.wild.example.com"]}, "filters": [cfg.hcm(rc_b, stat_prefix="b")],
         "transport_socket": downstream_ts([pki.wild])},
    ]
    port = ports()
    lst = {"name": "sni", "address": cfg.socket_address(port), "listener_filters": [TLS_INSPECTOR], "filter_chains": chains}
    lg = legate(cfg.bootstrap(ports(), listeners=[lst], clusters=[cfg.cluster("a", [a.port]), cfg.cluster("b", [b.port])]))
    assert "CN = localhost" in peer_subject(port, "a.example.com")
    assert "CN = *.wild.example.com" in peer_subject(port, "x.wild.example.com")
    assert "CN = *.wild.example.com" in peer_subject(port, "X.Wild.Example.com"), "SNI is case-insensitive"
    r = curl(["--cacert", pki.ca_cert, "--resolve", f"x.wild.example.com:{port}:127.0.0.1",
              f"https://x.wild.example.com:{port}/w"])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["server"] == "wild"
    r = curl(["--cacert", pki.ca_cert, "--resolve", f"a.example.com:{port}:127.0.0.1", f"https://a.example.com:{port}/e"])
    assert json.loads(r.stdout)["server"] == "exact"
    # no chain for other names: the connection is closed before any handshake
    rc, out = s_client(port, ["-servername", "nope.example.com"])
    assert rc != 0
    assert lg.admin.stat(f"listener.127.0.0.1_{port}.no_filter_chain_match") >= 1


def test_tls_and_raw_buffer_chains_on_one_port(legate, ports, upstream, pki):
    up = upstream("a")
    rc = cfg.route_config([cfg.vhost("v", [cfg.route("backend")])])
    raw = {"filter_chain_match": {"transport_protocol": "raw_buffer"}, "filters": [cfg.hcm(rc, stat_prefix="plain")]}
    lg = tls_proxy(legate, ports, up.port, downstream_ts([pki.server]),
                   chain_extra={"filter_chain_match": {"transport_protocol": "tls"}}, extra_chains=[raw])
    port = lg.listener_port()
    r = curl(["--cacert", pki.ca_cert, f"https://localhost:{port}/tls"])
    assert r.returncode == 0 and header_value(json.loads(r.stdout), "x-forwarded-proto") == "https", r.stderr
    r = curl([f"http://127.0.0.1:{port}/plain"])
    assert r.returncode == 0 and header_value(json.loads(r.stdout), "x-forwarded-proto") == "http", r.stderr
    assert lg.admin.stat("tls_inspector.tls_not_found") == 1
    # the connection manager's TLS connections: downstream_cx_ssl_total / _active
    status, _, keep = https_get(port, client_ctx(pki))
    assert status == 200
    wait_for(lambda: lg.admin.stat("http.ingress_http.downstream_cx_ssl_active") == 1, timeout=5, what="one TLS connection")
    keep.close()
    wait_for(lambda: lg.admin.stat("http.ingress_http.downstream_cx_active") == 0, timeout=5, what="TLS connections closed")
    st = lg.admin.stats()
    assert st["http.ingress_http.downstream_cx_ssl_total"] == 2 and st["http.ingress_http.downstream_cx_ssl_active"] == 0
    assert st["http.plain.downstream_cx_total"] == 1 and st["http.plain.downstream_cx_ssl_total"] == 0


def test_listener_filter_timeout(legate, ports, upstream, pki):
    """A client that sends no ClientHello: tls_inspector holds it (listener.<address>.downstream_pre_cx_active)
    until listener_filters_timeout closes it (downstream_pre_cx_timeout), as Envoy."""
    up = upstream("a")
    lg = tls_proxy(legate, ports, up.port, downstream_ts([pki.server]), listener_filters_timeout="0.5s")
    prefix = f"listener.127.0.0.1_{lg.listener_port()}."
    with socket.create_connection(("127.0.0.1", lg.listener_port()), timeout=10) as s:
        wait_for(lambda: lg.admin.stat(prefix + "downstream_pre_cx_active") == 1, timeout=5, what="one socket inspected")
        s.settimeout(10)
        assert s.recv(100) == b"", "closed at the timeout"
    wait_for(lambda: lg.admin.stat(prefix + "downstream_pre_cx_active") == 0, timeout=5, what="no socket inspected")
    assert lg.admin.stat(prefix + "downstream_pre_cx_timeout") == 1
    status, _, keep = https_get(lg.listener_port(), client_ctx(pki))  # a ClientHello in time goes through
    keep.close()
    assert status == 200 and lg.admin.stat(prefix + "downstream_pre_cx_timeout") == 1


def test_mtls(legate, ports, upstream, pki):
    up = upstream("a")
    validation = {"trusted_ca": {"filename": pki.ca_cert},
                  "match_typed_subject_alt_names": [{"san_type": "URI",
                                                     "matcher": {"prefix": "spiffe://cluster.local/ns/default/"}}]}
    lg = tls_proxy(legate, ports, up.port, downstream_ts([pki.server], validation=validation, require_client_certificate=True))
    port = lg.listener_port()
    prefix = f"listener.127.0.0.1_{port}.ssl."
    status, body, s = https_get(port, client_ctx(pki, cert=pki.client), "/mtls")
    s.close()
    assert status == 200
    r = curl(["--cacert", pki.ca_cert, "--cert", pki.client.cert, "--key", pki.client.key, f"https://localhost:{port}/c"])
    assert r.returncode == 0, r.stderr
    assert handshake_fails(client_ctx(pki), port)
    wait_for(lambda: lg.admin.stat(prefix + "fail_verify_no_cert") == 1, what="fail_verify_no_cert")
    assert handshake_fails(client_ctx(pki, cert=pki.untrusted), port)
    wait_for(lambda: lg.admin.stat(prefix + "fail_verify_error") == 1, what="fail_verify_error (untrusted)")
    assert handshake_fails(client_ctx(pki, cert=pki.expired), port)
    wait_for(lambda: lg.admin.stat(prefix + "fail_verify_error") == 2, what="fail_verify_error (expired)")
    # a TLS 1.2 client sees the refusal during the handshake itself
    rc, out = s_client(port, ["-tls1_2", "-CAfile", pki.ca_cert, "-servername", "localhost"], data=b"")
    assert rc != 0
    st = lg.admin.stats()
    assert st[prefix + "handshake"] == 2
    assert st[prefix + "connection_error"] == 0, "verification failures are not connection errors"
    # the other connections were never affected
    status, _, s = https_get(port, client_ctx(pki, cert=pki.client))
    s.close()
    assert status == 200


def test_client_certificate_san_mismatch(legate, ports, upstream, pki):
    up = upstream("a")
    validation = {"trusted_ca": {"filename": pki.ca_cert},
                  "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": "spiffe://other/sa"}}]}
    lg = tls_proxy(legate, ports, up.port, downstream_ts([pki.server], validation=validation, require_client_certificate=True))
    port = lg.listener_port()
    assert handshake_fails(client_ctx(pki, cert=pki.client), port)
    wait_for(lambda: lg.admin.stat(f"listener.127.0.0.1_{port}.ssl.fail_verify_san") == 1, what="fail_verify_san")


def test_minimum_version_is_enforced(legate, ports, upstream, pki):
    up = upstream("a")
    ts = downstream_ts([pki.server])
    ts["typed_config"]["common_tls_context"]["tls_params"] = {"tls_minimum_protocol_version": "TLSv1_3"}
    lg = tls_proxy(legate, ports, up.port, ts)
    port = lg.listener_port()
    rc, out = s_client(port, ["-tls1_2", "-servername", "localhost"])
    assert rc != 0 and "Cipher is (NONE)" in out
    wait_for(lambda: lg.admin.stat(f"listener.127.0.0.1_{port}.ssl.connection_error") == 1, what="connection_error")
    rc, out = s_client(port, ["-tls1_3", "-servername", "localhost"])
    assert "Protocol  : TLSv1.3" in out or "TLSv1.3" in out, out


def test_cipher_suites_and_curves(legate, ports, upstream, pki):
    up = upstream("a")
    ts = downstream_ts([pki.server])
    ts["typed_config"]["common_tls_context"]["tls_params"] = {
        "tls_maximum_protocol_version": "TLSv1_2", "cipher_suites": ["ECDHE-RSA-AES256-GCM-SHA384"], "ecdh_curves": ["P-256"]}
    lg = tls_proxy(legate, ports, up.port, ts)
    port = lg.listener_port()
    rc, out = s_client(port, ["-servername", "localhost"])
    assert "ECDHE-RSA-AES256-GCM-SHA384" in out, out
    prefix = f"listener.127.0.0.1_{port}.ssl."
    wait_for(lambda: lg.admin.stat(prefix + "handshake") == 1, what="handshake")
    st = lg.admin.stats()
    assert st[prefix + "ciphers.ECDHE-RSA-AES256-GCM-SHA384"] == 1
    assert st[prefix + "curves.P-256"] == 1
    assert st[prefix + "versions.TLSv1.2"] == 1
    # no shared cipher: refused, counted, and the port still serves
    rc, out = s_client(port, ["-servername", "localhost", "-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"])
    assert rc != 0
    wait_for(lambda: lg.admin.stat(prefix + "connection_error") == 1, what="connection_error")


def test_session_resumption(legate, ports, upstream, pki, tmp_path):
    up = upstream("a")
    lg = tls_proxy(legate, ports, up.port, downstream_ts([pki.server]))
    port = lg.listener_port()
    sess = str(tmp_path / "sess.pem")
    for version in ("-tls1_2", "-tls1_3"):
        rc, out = s_client(port, [version, "-servername", "localhost", "-sess_out", sess], data=b"")
        assert os.path.getsize(sess) > 0, out
        rc, out = s_client(port, [version, "-servername", "localhost", "-sess_in", sess], data=b"")
        assert "Reused" in out, out
    wait_for(lambda: lg.admin.stat(f"listener.127.0.0.1_{port}.ssl.session_reused") == 2, what="session_reused")


def tls13_handshake(port):
    """A TLS 1.3 handshake and one request closing the connection; returns s_client's -msg output
    (the response arrives after any ticket, so the output holds every ticket sent)."""
    rc, out = s_client(port, ["-tls1_3", "-servername", "localhost", "-msg", "-ign_eof"],
                       data=b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", hold=0)
    assert "HTTP/1.1 200 OK" in out, out
    return out


def test_tls13_defaults_as_boringssl(legate, ports, upstream, pki):
    """TLS 1.3 suites are BoringSSL's (Envoy's cipher_suites applies to TLS <= 1.2 only): AES-128-GCM
    first, where OpenSSL's default prefers AES-256; two tickets, as BoringSSL sends."""
    up = upstream("a")
    lg = tls_proxy(legate, ports, up.port, downstream_ts([pki.server]))
    out = tls13_handshake(lg.listener_port())
    assert "Cipher is TLS_AES_128_GCM_SHA256" in out, out
    assert out.count("NewSessionTicket") == 2, out


def test_session_resumption_disabled(legate, ports, upstream, pki, tmp_path):
    up = upstream("a")
    ts = downstream_ts([pki.server], disable_stateless_session_resumption=True, disable_stateful_session_resumption=True)
    lg = tls_proxy(legate, ports, up.port, ts)
    port = lg.listener_port()
    sess = str(tmp_path / "sess.pem")
    for version in ("-tls1_2", "-tls1_3"):
        s_client(port, [version, "-servername", "localhost", "-sess_out", sess], data=b"")
        if not os.path.exists(sess):
            continue  # nothing resumable was offered at all
        rc, out = s_client(port, [version, "-servername", "localhost", "-sess_in", sess], data=b"")
        assert "Reused" not in out and "New," in out, out
        os.unlink(sess)
    assert lg.admin.stat(f"listener.127.0.0.1_{port}.ssl.session_reused") == 0
    # as BoringSSL: no TLS 1.3 ticket at all (OpenSSL would send two stateful ones)
    assert "NewSessionTicket" not in tls13_handshake(port)


def test_garbage_on_the_tls_port(legate, ports, upstream, pki):
    up = upstream("a")
    lg = tls_proxy(legate, ports, up.port, downstream_ts([pki.server]), inspector=False)
    port = lg.listener_port()
    keep = client_ctx(pki).wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost")
    status, _, keep = https_get(port, None, sock=keep)
    assert status == 200
    # the random junk starts with a header no TLS record has (type 0, version 0): random leading
    # bytes could make a plausible partial record, which waits for more and then sees the EOF
    for junk in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", bytes(5) + os.urandom(2995),
                 b"\x16\x03\x01\x00\x05hello" + os.urandom(64)):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(junk)
            s.shutdown(socket.SHUT_WR)
            try:
                while s.recv(4096):
                    pass
            except ConnectionResetError:
                pass
    wait_for(lambda: lg.admin.stat(f"listener.127.0.0.1_{port}.ssl.connection_error") == 3, what="connection_error == 3")
    status, _, keep = https_get(port, None, sock=keep)
    assert status == 200, "an established connection is not affected"
    keep.close()
    r = curl(["--cacert", pki.ca_cert, f"https://localhost:{port}/after"])
    assert r.returncode == 0, r.stderr


def test_garbage_with_tls_inspector(legate, ports, upstream, pki):
    up = upstream("a")
    lg = tls_proxy(legate, ports, up.port, downstream_ts([pki.server]),
                   chain_extra={"filter_chain_match": {"transport_protocol": "tls"}})
    port = lg.listener_port()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"\x00garbage\r\n\r\n")
        assert s.recv(100) == b""
    wait_for(lambda: lg.admin.stat("tls_inspector.tls_not_found") == 1, what="tls_not_found")
    assert lg.admin.stat(f"listener.127.0.0.1_{port}.no_filter_chain_match") == 1
    r = curl(["--cacert", pki.ca_cert, f"https://localhost:{port}/after"])
    assert r.returncode == 0, r.stderr


def test_static_secrets(legate, ports, upstream, pki):
    up = upstream("a")
    ts = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": DOWNSTREAM_TLS, "require_client_certificate": True,
        "common_tls_context": {"tls_certificate_sds_secret_configs": [{"name": "server"}],
                               "validation_context_sds_secret_config": {"name": "clients"}}}}
    rc = cfg.route_config([cfg.vhost("v", [cfg.route("backend")])])
    port = ports()
    lst = {"name": "tls", "address": cfg.socket_address(port), "filter_chains": [{"filters": [cfg.hcm(rc)], "transport_socket": ts}]}
    b = cfg.bootstrap(ports(), listeners=[lst], clusters=[cfg.cluster("backend", [up.port])])
    b["static_resources"]["secrets"] = [{"name": "server", "tls_certificate": tls_cert(pki.server)},
                                        {"name": "clients", "validation_context": {"trusted_ca": {"filename": pki.ca_cert}}}]
    lg = legate(b)
    status, _, s = https_get(port, client_ctx(pki, cert=pki.client))
    s.close()
    assert status == 200
    assert handshake_fails(client_ctx(pki), port)


def test_certificate_reload(legate, ports, upstream, pki, tmp_path):
    up = upstream("a")
    d = tmp_path / "live"
    d.mkdir()
    shutil.copy(pki.server.cert, d / "cert.pem")
    shutil.copy(pki.server.key, d / "key.pem")
    certs = {"certificate_chain": {"filename": str(d / "cert.pem")}, "private_key": {"filename": str(d / "key.pem")}}
    lg = tls_proxy(legate, ports, up.port, downstream_ts([certs]))
    port = lg.listener_port()
    assert "CN = localhost" in peer_subject(port, "localhost")
    status, _, keep = https_get(port, client_ctx(pki))
    assert status == 200
    fresh = pki.issue("reloaded", dns=["localhost"], cn="reloaded.example.com")
    # replace both files atomically, key first (a mismatched pair is not loaded)
    shutil.copy(fresh.key, d / "key.pem.tmp")
    shutil.copy(fresh.cert, d / "cert.pem.tmp")
    os.rename(d / "key.pem.tmp", d / "key.pem")
    os.rename(d / "cert.pem.tmp", d / "cert.pem")
    wait_for(lambda: "reloaded.example.com" in (peer_subject(port, "localhost") or ""), timeout=10, interval=0.2,
             what="new connections get the new certificate")
    status, _, keep = https_get(port, None, sock=keep)
    assert status == 200, "the existing connection still works"
    keep.close()


DAYS = "server.days_until_first_cert_expiring"


def test_days_until_first_cert_expiring(legate, ports, upstream, pki, tmp_path):
    """Envoy's server gauge: whole days to the earliest expiry among the certificates and first
    trusted CA of every TLS context (listener and cluster); it follows a certificate reload."""
    up = upstream("a")
    d = tmp_path / "live"
    d.mkdir()
    shutil.copy(pki.server.cert, d / "cert.pem")  # 10 days
    shutil.copy(pki.server.key, d / "key.pem")
    certs = {"certificate_chain": {"filename": str(d / "cert.pem")}, "private_key": {"filename": str(d / "key.pem")}}
    lg = tls_proxy(legate, ports, up.port, downstream_ts([certs]),
                   cluster_extra={"transport_socket": upstream_ts({"trusted_ca": {"filename": pki.ca_cert}})})
    assert lg.admin.stat(DAYS) == 9  # 10 days less the seconds since it was issued
    short = pki.issue("short-lived", dns=["localhost"], days=3)
    shutil.copy(short.key, d / "key.pem.tmp")
    shutil.copy(short.cert, d / "cert.pem.tmp")
    os.rename(d / "key.pem.tmp", d / "key.pem")
    os.rename(d / "cert.pem.tmp", d / "cert.pem")
    wait_for(lambda: lg.admin.stat(DAYS) == 2, timeout=10, interval=0.2, what=f"{DAYS} == 2 after the reload")


def test_days_until_first_cert_expiring_expired_or_none(legate, ports, upstream, pki):
    up = upstream("a")
    lg = tls_proxy(legate, ports, up.port, downstream_ts([pki.expired]))
    assert lg.admin.stat(DAYS) == 0, "an expired certificate counts as 0 days"
    plain = legate(cfg.simple_proxy(ports(), ports(), [up.port]))
    assert plain.admin.stat(DAYS) == 4294967295, "no certificate at all: UINT32_MAX, as Envoy"


def cert_details(c):
    """What /certs says of a certificate file, read with openssl."""
    out = subprocess.run(["openssl", "x509", "-in", c, "-noout", "-serial", "-startdate", "-enddate"], capture_output=True,
                         text=True, check=True).stdout
    f = dict(line.split("=", 1) for line in out.strip().splitlines())
    when = lambda s: datetime.datetime.strptime(s, "%b %d %H:%M:%S %Y %Z").strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    return {"serial_number": f["serial"].lower(), "valid_from": when(f["notBefore"]), "expiration_time": when(f["notAfter"])}


def test_admin_certs(legate, ports, pki, tls_upstream):
    """Envoy's /certs: one entry per TLS context, its first trusted CA and its certificates."""
    up = tls_upstream(pki.upstream)
    lg = tls_proxy(legate, ports, up.port, downstream_ts([pki.server, pki.server_ec]),
                   cluster_extra={"transport_socket": upstream_ts({"trusted_ca": {"filename": pki.ca_cert}},
                                                                  cert=pki.client, sni="upstream.example.com")})
    r = lg.admin.get("/certs")
    assert r.status == 200 and r.header("content-type").startswith("application/json")
    certs = sorted(r.json()["certificates"], key=lambda c: len(c["ca_cert"]))
    assert len(certs) == 2, certs
    listener, cluster = certs
    assert listener["ca_cert"] == []
    assert [c["path"] for c in listener["cert_chain"]] == [pki.server.cert, pki.server_ec.cert]
    server = listener["cert_chain"][0]
    assert server["subject_alt_names"] == [{"dns": "localhost"}, {"dns": "a.example.com"}, {"ip_address": "127.0.0.1"}]
    assert server["days_until_expiration"] == "9"
    assert {k: server[k] for k in ("serial_number", "valid_from", "expiration_time")} == cert_details(pki.server.cert)
    [ca] = cluster["ca_cert"]
    assert ca["path"] == pki.ca_cert and ca["days_until_expiration"] == "29" and ca["subject_alt_names"] == []
    [client] = cluster["cert_chain"]
    assert client["path"] == pki.client.cert
    assert client["subject_alt_names"] == [{"uri": "spiffe://cluster.local/ns/default/sa/client"}]
    plain = legate(cfg.simple_proxy(ports(), ports(), [up.port]))
    assert plain.admin.get("/certs").json() == {"certificates": []}


# ---- upstream ------------------------------------------------------------------


def test_upstream_tls_with_san_validation(legate, ports, pki, tls_upstream):
    up = tls_upstream(pki.upstream)
    validation = {"trusted_ca": {"filename": pki.ca_cert},
                  "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": "upstream.example.com"}}]}
    lg = tls_proxy(legate, ports, up.port, downstream_ts([pki.server]),
                   cluster_extra={"transport_socket": upstream_ts(validation, sni="upstream.example.com")})
    port = lg.listener_port()
    r = curl(["--cacert", pki.ca_cert, f"https://localhost:{port}/up"])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["path"] == "/up"
    assert up.sni == ["upstream.example.com"]
    st = lg.admin.stats()
    assert st["cluster.backend.ssl.handshake"] == 1
    assert st["cluster.backend.ssl.versions.TLSv1.2"] == 1, "Envoy's client default is TLS 1.2"


def test_upstream_san_mismatch_is_a_connect_failure(legate, ports, pki, tls_upstream):
    up = tls_upstream(pki.upstream)
    validation = {"trusted_ca": {"filename": pki.ca_cert},
                  "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": "other.example.com"}}]}
    lg = tls_proxy(legate, ports, up.port, downstream_ts([pki.server]),
                   cluster_extra={"transport_socket": upstream_ts(validation)})
    port = lg.listener_port()
    r = curl(["--cacert", pki.ca_cert, "-w", "\n%{http_code}", f"https://localhost:{port}/up"])
    body, code = r.stdout.rsplit("\n", 1)
    assert code == "503"
    assert body.endswith("transport failure reason: " + VERIFY_FAILED), body
    st = lg.admin.stats()
    assert st["cluster.backend.ssl.fail_verify_san"] == 1
    assert st["cluster.backend.upstream_cx_connect_fail"] == 1


def test_upstream_untrusted_server(legate, ports, pki, tls_upstream):
    up = tls_upstream(pki.other.issue("rogue", dns=["upstream.example.com"]))
    lg = tls_proxy(legate, ports, up.port, downstream_ts([pki.server]),
                   cluster_extra={"transport_socket": upstream_ts({"trusted_ca": {"filename": pki.ca_cert}})})
    r = curl(["--cacert", pki.ca_cert, "-w", "\n%{http_code}", f"https://localhost:{lg.listener_port()}/up"])
    body, code = r.stdout.rsplit("\n", 1)
    assert code == "503" and VERIFY_FAILED in body, body
    assert lg.admin.stat("cluster.backend.ssl.fail_verify_error") == 1


def test_upstream_mtls(legate, ports, pki, tls_upstream):
    up = tls_upstream(pki.upstream, client_ca=pki.ca_cert)
    validation = {"trusted_ca": {"filename": pki.ca_cert},
                  "match_typed_subject_alt_names": [{"san_type": "URI",
                                                     "matcher": {"exact": "spiffe://cluster.local/ns/default/sa/backend"}}]}
    lg = tls_proxy(legate, ports, up.port, downstream_ts([pki.server]),
                   cluster_extra={"transport_socket": upstream_ts(validation, cert=pki.client)})
    r = curl(["--cacert", pki.ca_cert, f"https://localhost:{lg.listener_port()}/mtls"])
    assert r.returncode == 0 and json.loads(r.stdout)["path"] == "/mtls", r.stdout + r.stderr
    # without a client certificate the upstream refuses
    lg2 = tls_proxy(legate, ports, up.port, downstream_ts([pki.server]),
                    cluster_extra={"transport_socket": upstream_ts({"trusted_ca": {"filename": pki.ca_cert}})})
    r = curl(["--cacert", pki.ca_cert, "-w", "\n%{http_code}", f"https://localhost:{lg2.listener_port()}/mtls"])
    assert r.stdout.endswith("\n503"), r.stdout


def test_upstream_h2_by_alpn(legate, ports, pki):
    up = TlsH2Upstream("h2tls", server_ctx(pki.upstream, alpn=["h2"]))
    try:
        lg = tls_proxy(legate, ports, up.port, downstream_ts([pki.server]), cluster_extra={
            "http2": True, "transport_socket": upstream_ts({"trusted_ca": {"filename": pki.ca_cert}})})
        r = curl(["--http1.1", "--cacert", pki.ca_cert, f"https://localhost:{lg.listener_port()}/h2up"])
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["protocol"] == "HTTP/2"
        assert lg.admin.stat("cluster.backend.upstream_cx_http2_total") == 1
    finally:
        up.close()


def test_upstream_auto_config_follows_alpn(legate, ports, pki, tls_upstream):
    h2up = TlsH2Upstream("h2tls", server_ctx(pki.upstream, alpn=["h2"]))
    h1up = tls_upstream(pki.upstream, alpn=["http/1.1"])
    try:
        for up, want in ((h2up, "HTTP/2"), (h1up, "HTTP/1.1")):
            lg = tls_proxy(legate, ports, up.port, downstream_ts([pki.server]), cluster_extra={
                "protocol_options": {"auto_config": {}},
                "transport_socket": upstream_ts({"trusted_ca": {"filename": pki.ca_cert}})})
            for _ in range(2):
                r = curl(["--cacert", pki.ca_cert, f"https://localhost:{lg.listener_port()}/auto"])
                assert r.returncode == 0, r.stderr
                assert json.loads(r.stdout)["protocol"] == want
    finally:
        h2up.close()


def test_config_errors(legate, ports, pki, tmp_path):
    from lib.legate import run_legate, write_yaml
    rc = cfg.route_config([cfg.vhost("v", [cfg.route("backend")])])
    ts = downstream_ts([{"certificate_chain": {"filename": str(tmp_path / "missing.pem")},
                         "private_key": {"filename": pki.server.key}}])
    lst = {"name": "tls", "address": cfg.socket_address(ports()), "filter_chains": [{"filters": [cfg.hcm(rc)],
                                                                                       "transport_socket": ts}]}
    path = write_yaml(str(tmp_path / "bad.yaml"), cfg.bootstrap(ports(), listeners=[lst], clusters=[cfg.cluster("backend", [1])]))
    r = run_legate(["-c", path, "--mode", "validate"])
    assert r.returncode != 0
    assert "static_resources.listeners[0]" in r.stderr and "missing.pem" in r.stderr, r.stderr


# ---- TLS alerts on failed downstream handshakes (helper F) ------------------------------------
#
# Envoy (BoringSSL) answers a handshake it refuses with a fatal alert that names the reason;
# libh2o 2.2.5 drops the alert OpenSSL queues, Legate writes it before closing
# (lg_tls_send_pending_alert). openssl s_client prints the alert it received.


def mtls_proxy(legate, ports, upstream, pki, **tls_params):
    up = upstream("a")
    ts = downstream_ts([pki.server], validation={"trusted_ca": {"filename": pki.ca_cert}}, require_client_certificate=True)
    if tls_params:
        ts["typed_config"]["common_tls_context"]["tls_params"] = tls_params
    return tls_proxy(legate, ports, up.port, ts)


def test_alert_no_shared_cipher(legate, ports, upstream, pki):
    up = upstream("a")
    ts = downstream_ts([pki.server])
    ts["typed_config"]["common_tls_context"]["tls_params"] = {
        "tls_maximum_protocol_version": "TLSv1_2", "cipher_suites": ["ECDHE-RSA-AES256-GCM-SHA384"]}
    lg = tls_proxy(legate, ports, up.port, ts)
    rc, out = s_client(lg.listener_port(), ["-servername", "localhost", "-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"])
    assert rc != 0
    assert "alert handshake failure" in out, out


def test_alert_certificate_required_tls13(legate, ports, upstream, pki):
    lg = mtls_proxy(legate, ports, upstream, pki)
    # TLS 1.3: the client's side of the handshake is over before the server refuses its
    # (missing) certificate; -ign_eof keeps s_client reading until the alert and the close
    rc, out = s_client(lg.listener_port(), ["-tls1_3", "-ign_eof", "-CAfile", pki.ca_cert, "-servername", "localhost"])
    assert "alert certificate required" in out, out


def test_alert_no_client_certificate_tls12(legate, ports, upstream, pki):
    lg = mtls_proxy(legate, ports, upstream, pki)
    rc, out = s_client(lg.listener_port(), ["-tls1_2", "-CAfile", pki.ca_cert, "-servername", "localhost"])
    assert rc != 0
    assert "alert handshake failure" in out, out


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_alert_unknown_ca(legate, ports, upstream, pki, version):
    lg = mtls_proxy(legate, ports, upstream, pki)
    rc, out = s_client(lg.listener_port(), [version, "-ign_eof", "-CAfile", pki.ca_cert, "-servername", "localhost",
                                             "-cert", pki.untrusted.cert, "-key", pki.untrusted.key])
    assert "alert unknown ca" in out, out


@pytest.mark.skipif(sanitized(), reason="ASan's allocator decides the RSS")
@pytest.mark.deadline(180)
def test_tls_streaming_is_buffered_in_bounded_pieces(legate, ports, upstream, pki, tmp_path):
    """64 MiB each way over TLS (HTTP/1.1): the proxy reads at most 64 KiB of
    records per wake-up and decrypts them at once, so its peak RSS grows by about
    its buffer limit. libh2o's own TLS reading takes the whole kernel buffer and
    decrypts it into a doubling buffer (+15 MiB, and uploads 10x slower)."""
    up = upstream("a")
    lg = tls_proxy(legate, ports, up.port, downstream_ts([pki.server_ec], alpn=("http/1.1",)))
    url = f"https://localhost:{lg.listener_port()}"
    n = 64 << 20
    assert curl(["--cacert", pki.ca_cert, "-o", "/dev/null", f"{url}/warm"]).returncode == 0
    pid = lg.proc.pid
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # the peak so far is start-up's: measure from the current RSS

    def peak_kib():
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))

    before = peak_kib()
    r = curl(["--cacert", pki.ca_cert, "-o", "/dev/null", "-w", "%{http_code} %{size_download}", f"{url}/bytes/{n}"],
             timeout=120)
    assert r.stdout == f"200 {n}", r.stderr
    body = tmp_path / "zeros"
    with open(body, "wb") as f:
        f.truncate(n)
    r = subprocess.run(["curl", "-sS", "--max-time", "100", "--cacert", pki.ca_cert, "-H", "Expect:", "-T", str(body),
                        f"{url}/sink"], capture_output=True, text=True, timeout=120)
    rec = json.loads(r.stdout)
    assert (rec["body_len"], rec["body_sha256"]) == (n, hashlib.sha256(bytes(n)).hexdigest())
    grown = peak_kib() - before
    assert grown < 4096, f"peak RSS grew by {grown} KiB"


def test_slow_small_records_on_a_retry_route(legate, ports, upstream, pki):
    """A client that sends its request body in small TLS records, one read each (a slow
    stream of lines), on a route with a retry policy (Istio sets one on every route): the body
    is kept for the retry, and each read's plaintext must not pin a buffer of its own, or the
    pinned buffers fill up long before the body reaches the buffer limit (64 KiB here) and the
    request stalls, or a read moves the buffer under them. The body reaches the upstream whole
    on the first try and again on the retry."""
    up = upstream()
    route = cfg.route("backend", retry_policy={"retry_on": "5xx", "num_retries": 1})
    rc = cfg.route_config([cfg.vhost("v", [route])])
    chain = {"filters": [cfg.hcm(rc)], "transport_socket": downstream_ts([pki.server], alpn=("http/1.1",))}
    lst = {"name": "tls", "address": cfg.socket_address(ports()), "filter_chains": [chain],
           "per_connection_buffer_limit_bytes": 65536}
    lg = legate(cfg.bootstrap(ports(), listeners=[lst], clusters=[cfg.cluster("backend", [up.port])]))
    raw = socket.create_connection(("127.0.0.1", lg.listener_port("tls")), timeout=10)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with client_ctx(pki).wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(b"POST /flaky/lines/1 HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n")
        body = b""
        for i in range(120):  # 120 records of ~300 bytes: 36 KB, well within the limit
            line = b"%04d " % i + b"x" * 290 + b"\n"
            s.sendall(b"%x\r\n%s\r\n" % (len(line), line))
            body += line
            time.sleep(0.002)  # the pace of a slow client: Legate reads each record on its own
        s.sendall(b"0\r\n\r\n")
        s.settimeout(10)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(65536)
            assert chunk, "closed before the response"
            head += chunk
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    tries = [r for r in up.requests if r["path"] == "/flaky/lines/1"]
    assert [(r["body_len"], r["body_sha256"]) for r in tries] == [(len(body), hashlib.sha256(body).hexdigest())] * 2


def test_connection_byte_counts_are_decrypted_bytes(legate, ports, upstream, pki):
    """Over TLS, http.<prefix>.downstream_cx_{rx,tx}_bytes_total count the connection's decrypted
    bytes, as Envoy's (its transport socket reports the plaintext it read and wrote): exactly the
    request and the response, heads included; the handshake is not counted."""
    up = upstream()
    lg = tls_proxy(legate, ports, up.port, downstream_ts([pki.server], alpn=("http/1.1",)))
    request = b"GET /bytes/2000 HTTP/1.1\r\nHost: localhost\r\n\r\n"
    raw = socket.create_connection(("127.0.0.1", lg.listener_port()), timeout=10)
    with client_ctx(pki).wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + 2000:
            chunk = s.recv(65536)
            assert chunk, "closed before the whole response"
            data += chunk
        assert data.startswith(b"HTTP/1.1 200")
        for name, want in (("rx", len(request)), ("tx", len(data))):
            stat = f"http.ingress_http.downstream_cx_{name}_bytes_total"
            wait_for(lambda: lg.admin.stat(stat) == want, what=f"{stat} == {want}")
