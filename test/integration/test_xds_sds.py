"""SDS on its own stream, as Istio's agent serves it: a static TLS listener names its
certificate by an SdsSecretConfig whose sds_config is an api_config_source (GRPC,
envoy_grpc) to a static cluster on a unix socket. Envoy's secret.rst is the
specification: the listener warms until the secret arrives; after
initial_fetch_timeout it goes active and its connections are reset; a new version
of the secret is used by new handshakes while open connections carry on; a secret
that cannot be loaded is NACKed with its name.
"""
import http.client
import os
import socket
import ssl
import tempfile

import pytest

from lib import config as cfg
from lib.legate import time_scale
from lib.wait import wait_for
from lib.xds import SECRET, api_config_source, make_cert, node, peer_cert_der, xds_cluster, xds_server  # noqa: F401

T = time_scale()


def sds_source(xds, **extra):
    src = {"api_config_source": api_config_source(xds), "resource_api_version": "V3"}
    src.update(extra)
    return src


def secret(name, key_pem, cert_pem):
    return {"name": name, "tls_certificate": {"certificate_chain": {"inline_string": cert_pem},
                                              "private_key": {"inline_string": key_pem}}}


def start(xds_server, legate, ports, upstream, secret_name="default", wait_ready=True, **source_extra):
    """A unix-socket SDS server and a Legate whose static TLS listener names `secret_name`."""
    up = upstream("a")
    xds = xds_server(unix_path=os.path.join(tempfile.gettempdir(), f"lg-sds-{os.getpid()}-{ports()}.sock"))
    admin_port, port = ports(2)
    lst = cfg.http_listener("tls", port, cfg.route_config([cfg.vhost("v", [cfg.route("backend")])]))
    lst["filter_chains"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "common_tls_context": {"tls_certificate_sds_secret_configs": [
                {"name": secret_name, "sds_config": sds_source(xds, **source_extra)}]}}}
    boot = cfg.bootstrap(admin_port, listeners=[lst], clusters=[xds_cluster(xds), cfg.cluster("backend", [cfg.endpoint(up.port)])])
    boot["node"] = node()
    return xds, port, boot


def der(pem):
    return ssl.PEM_cert_to_DER_cert(pem)


def https(port):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5 * T)


def secrets_dump(lg):
    dump = lg.admin.get("/config_dump").json()
    return next(c for c in dump["configs"] if c["@type"].endswith("SecretsConfigDump"))


def test_unix_socket_sds_rotation_keeps_open_connections(xds_server, legate, ports, upstream, tmp_path):
    key1, crt1 = make_cert(str(tmp_path), "one.example")
    key2, crt2 = make_cert(str(tmp_path), "two.example")
    xds, port, boot = start(xds_server, legate, ports, upstream)
    v1 = xds.set(SECRET, [secret("default", key1, crt1)])
    lg = legate(boot)
    ack = xds.wait_ack(SECRET, v1, timeout=5 * T)
    assert ack["resource_names"] == ["default"], "SDS subscribes the name the TLS context references"
    assert [s["method"] for s in xds.open_streams()] == ["StreamSecrets"], "its own SDS stream, not ADS"
    assert peer_cert_der(port) == der(crt1)

    stats = lg.admin.stats()
    assert stats["sds.default.update_success"] >= 1
    assert stats.get("sds.default.update_rejected", 0) == 0
    assert stats[f"listener.127.0.0.1_{port}.server_ssl_socket_factory.ssl_context_update_by_sds"] >= 1
    dump = secrets_dump(lg)
    active = dump["dynamic_active_secrets"]
    assert [s["name"] for s in active] == ["default"] and active[0]["version_info"] == v1
    cert = active[0]["secret"]["tls_certificate"]
    assert cert["private_key"] == {"inline_string": "[redacted]"}, "private keys are redacted as Envoy does"
    assert cert["certificate_chain"]["inline_string"] == crt1

    conn = https(port)
    conn.request("GET", "/")
    r = conn.getresponse()
    r.read()
    assert r.status == 200
    assert conn.sock.getpeercert(binary_form=True) == der(crt1)

    m = xds.mark()
    v2 = xds.set(SECRET, [secret("default", key2, crt2)])
    xds.wait_ack(SECRET, v2, since=m, timeout=5 * T)
    wait_for(lambda: peer_cert_der(port) == der(crt2), timeout=5 * T, what="the rotated certificate served")
    conn.request("GET", "/")
    r = conn.getresponse()
    r.read()
    assert r.status == 200, "a connection opened before the rotation carries on"
    conn.close()
    assert secrets_dump(lg)["dynamic_active_secrets"][0]["version_info"] == v2
    factory = f"listener.127.0.0.1_{port}.server_ssl_socket_factory."
    assert lg.admin.stats()[factory + "ssl_context_update_by_sds"] == stats[factory + "ssl_context_update_by_sds"] + 1


def test_bad_secret_is_nacked_with_its_name(xds_server, legate, ports, upstream, tmp_path):
    key1, crt1 = make_cert(str(tmp_path), "one.example")
    xds, port, boot = start(xds_server, legate, ports, upstream)
    v1 = xds.set(SECRET, [secret("default", key1, crt1)])
    lg = legate(boot)
    xds.wait_ack(SECRET, v1, timeout=5 * T)
    m = xds.mark()
    xds.set(SECRET, [secret("default", key1, "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")])
    nack = xds.wait_nack(SECRET, since=m, timeout=5 * T)
    assert nack["version_info"] == v1, "a NACK restates the last good version"
    assert nack["error_detail"]["message"].startswith("default: Failed to load certificate chain"), nack["error_detail"]
    assert lg.admin.stats()["sds.default.update_rejected"] == 1
    assert peer_cert_der(port) == der(crt1), "the rejected secret changed nothing"


def test_missing_secret_times_out_then_connections_are_reset(xds_server, legate, ports, upstream):
    xds, port, boot = start(xds_server, legate, ports, upstream, secret_name="never", initial_fetch_timeout="0.5s")
    lg = legate(boot)  # ready once initial_fetch_timeout passed
    assert lg.admin.stats()["sds.never.init_fetch_timeout"] == 1
    with pytest.raises((ssl.SSLError, ConnectionError, socket.timeout)):
        peer_cert_der(port, timeout=2 * T)
    stats = lg.admin.stats()
    assert stats[f"listener.127.0.0.1_{port}.server_ssl_socket_factory.downstream_context_secrets_not_ready"] >= 1
    dump = secrets_dump(lg)
    assert [s["name"] for s in dump.get("dynamic_warming_secrets", [])] == ["never"]
    assert not dump.get("dynamic_active_secrets")
