"""Self-test of the test control plane (tools/xds), with a Python gRPC client and
no Legate: if these fail, the xDS tests' results mean nothing."""
import base64
import os
import tempfile
import time

import yaml

from lib import config as cfg
from lib.xds import (CLUSTER, ENDPOINT, LISTENER, ROUTE, XdsClient, cla, eds_cluster, rds_listener,  # noqa: F401
                     route_config, xds_server)
from xds_control import resources as rs

NODE = {"id": "n1", "cluster": "c1"}


def names(resp, delta=False):
    if delta:
        return sorted(r.name for r in resp.resources)
    return sorted(rs.any_name(a) for a in resp.resources)


def world(xds, ports=(10001,)):
    return xds.update(clusters=[eds_cluster("a"), eds_cluster("b")], endpoints=[cla("a", ports), cla("b", ports)],
                      listeners=[rds_listener("l1", 10000, "r1")], routes=[route_config("r1", [("/", "a")])])


def test_sotw_wildcard_initial_ack_and_push(xds_server):
    xds = xds_server()
    v = world(xds)
    c = XdsClient(xds.address)
    try:
        c.send(type_url=CLUSTER, node=NODE)
        r = c.recv()
        assert r.type_url == CLUSTER and r.version_info == v[CLUSTER] and r.nonce
        assert names(r) == ["a", "b"]
        assert r.control_plane.identifier
        c.send(type_url=CLUSTER, version_info=r.version_info, response_nonce=r.nonce)
        ack = xds.wait_ack(CLUSTER, v[CLUSTER])
        assert ack["node"] is None and ack["response_nonce"] == r.nonce
        first = xds.requests(CLUSTER, kind="initial")[0]
        assert first["node"]["id"] == "n1" and first["node"]["cluster"] == "c1"
        assert c.no_response(), "an ACK must not trigger a response"
        v2 = xds.upsert(CLUSTER, [eds_cluster("c")])
        r2 = c.recv()
        assert r2.version_info == v2 != v[CLUSTER] and names(r2) == ["a", "b", "c"] and r2.nonce != r.nonce
        v3 = xds.remove(CLUSTER, ["a"])
        r3 = c.recv()
        assert r3.version_info == v3 and names(r3) == ["b", "c"], "SotW removal: the cluster is absent"
    finally:
        c.close()


def test_sotw_named_subscription_holds_until_resource_exists(xds_server):
    xds = xds_server()
    world(xds)
    c = XdsClient(xds.address)
    try:
        c.send(type_url=ROUTE, resource_names=["r2"], node=NODE)
        assert c.no_response(0.5), "no response for a route that does not exist (the client keeps warming)"
        v = xds.upsert(ROUTE, [route_config("r2", [("/", "b")])])
        r = c.recv()
        assert names(r) == ["r2"] and r.version_info == v
        c.send(type_url=ROUTE, resource_names=["r1", "r2"], version_info=r.version_info, response_nonce=r.nonce)
        r2 = c.recv()
        assert names(r2) == ["r1", "r2"], "a subscription change is answered with the subscribed resources"
        # Changing only the unsubscribed endpoints of another type does not push routes.
        c.send(type_url=ROUTE, resource_names=["r1", "r2"], version_info=r2.version_info, response_nonce=r2.nonce)
        xds.set(ENDPOINT, [cla("a", [1])])
        assert c.no_response(), "a change of another type is not pushed on RDS"
        xds.upsert(ROUTE, [route_config("r9", [("/", "b")])])
        assert c.no_response(), "a change to an unsubscribed route is not pushed"
    finally:
        c.close()


def test_sotw_nack_recorded_with_error_detail_and_stale_nonce_ignored(xds_server):
    xds = xds_server()
    v = world(xds)
    c = XdsClient(xds.address)
    try:
        c.send(type_url=LISTENER, node=NODE)
        r = c.recv()
        m = xds.mark()
        v2 = xds.upsert(LISTENER, [rds_listener("l2", 10002, "r1")])
        r2 = c.recv()
        c.send(type_url=LISTENER, version_info=r.version_info, response_nonce=r.nonce)  # stale
        c.send(type_url=LISTENER, version_info=v[LISTENER], response_nonce=r2.nonce, error_detail=(13, "bad l2"))
        nack = xds.wait_nack(LISTENER, since=m)
        assert nack["error_detail"] == {"code": 13, "message": "bad l2"} and nack["version_info"] == v[LISTENER]
        assert [q["kind"] for q in xds.requests(LISTENER, since=m)] == ["stale", "nack"]
        try:
            xds.wait_ack(LISTENER, v2, timeout=1)
        except AssertionError as e:
            assert "NACKed" in str(e) and "bad l2" in str(e)
        else:
            raise AssertionError("wait_ack must fail on a NACK")
    finally:
        c.close()


def test_identical_push_resends_with_new_version(xds_server):
    xds = xds_server()
    v = world(xds)
    c = XdsClient(xds.address)
    try:
        c.send(type_url=LISTENER, node=NODE)
        r = c.recv()
        assert xds.set(LISTENER, [rds_listener("l1", 10000, "r1")]) == v[LISTENER], "same content, same version"
        assert c.no_response()
        v2 = xds.push(LISTENER)
        r2 = c.recv()
        assert v2 != v[LISTENER] and r2.version_info == v2 and list(r2.resources) == list(r.resources)
    finally:
        c.close()


def test_delta_subscribe_versions_removal_and_reconnect(xds_server):
    xds = xds_server()
    world(xds)
    c = XdsClient(xds.address, delta=True)
    try:
        c.send(type_url=CLUSTER, node=NODE)
        r = c.recv()
        assert names(r, True) == ["a", "b"] and all(x.version for x in r.resources)
        known = {x.name: x.version for x in r.resources}
        c.send(type_url=CLUSTER, response_nonce=r.nonce)
        xds.wait_ack(CLUSTER)
        xds.upsert(CLUSTER, [eds_cluster("b", service_name="bb")])
        r2 = c.recv()
        assert names(r2, True) == ["b"] and r2.resources[0].version != known["b"], "only the changed resource"
        known["b"] = r2.resources[0].version
        xds.remove(CLUSTER, ["a"])
        r3 = c.recv()
        assert list(r3.removed_resources) == ["a"] and not r3.resources
        c.send(type_url=ENDPOINT, resource_names_subscribe=["a", "zz"])
        r4 = c.recv()
        assert names(r4, True) == ["a"]
        c.send(type_url=ENDPOINT, resource_names_unsubscribe=["a"], response_nonce=r4.nonce)
        xds.wait_request(lambda q: q["unsubscribe"] == ["a"])
        xds.set(ENDPOINT, [cla("a", [7])])
        assert c.no_response(), "an unsubscribed resource is not pushed"
    finally:
        c.close()
    del known["a"]
    c2 = XdsClient(xds.address, delta=True)
    try:
        c2.send(type_url=CLUSTER, node=NODE, initial_resource_versions=known)
        r = c2.recv()
        assert not r.resources and not r.removed_resources, "what the client has is not resent"
        rec = xds.requests(CLUSTER, kind="initial")[-1]
        assert rec["initial_resource_versions"] == known
        xds.push(CLUSTER)
        assert names(c2.recv(), True) == ["b"], "a forced push resends what the client has"
    finally:
        c2.close()


def test_per_type_service_serves_its_type(xds_server):
    xds = xds_server()
    world(xds)
    c = XdsClient(xds.address, service="envoy.service.endpoint.v3.EndpointDiscoveryService")
    try:
        c.send(resource_names=["b"], node=NODE)  # per-type streams may leave type_url empty
        r = c.recv()
        assert r.type_url == ENDPOINT and names(r) == ["b"]
        assert xds.open_streams()[0]["method"] == "StreamEndpoints"
    finally:
        c.close()


def test_raw_anys_garbage_and_stream_faults(xds_server):
    xds = xds_server()
    world(xds)
    c = XdsClient(xds.address)
    try:
        c.send(type_url=LISTENER, node=NODE)
        c.recv()
        unknown = rds_listener("lx", 1, "r1", http_filters=[
            {"name": "nope", "typed_config": {"@type": "type.googleapis.com/does.not.Exist"}}])
        xds.inject(LISTENER, [unknown, {"@type": LISTENER, "@bytes": base64.b64encode(b"\xff\xff").decode()}],
                   names=["lx", "garbage"])
        r = c.recv()
        assert len(r.resources) == 2 and r.resources[1].value == b"\xff\xff"
        lx = rs.message_class(LISTENER).FromString(r.resources[0].value)
        hcm = lx.filter_chains[0].filters[0].typed_config
        inner = rs.message_class(hcm.type_url).FromString(hcm.value)
        assert inner.http_filters[0].typed_config.type_url == "type.googleapis.com/does.not.Exist"
        assert inner.rds.route_config_name == "r1", "the known parts around a raw Any survive"
        xds.close_streams("UNAVAILABLE")
        try:
            c.recv()
        except AssertionError as e:
            assert "UNAVAILABLE" in str(e)
        else:
            raise AssertionError("stream should have ended")
    finally:
        c.close()
    xds.reject_streams("UNAVAILABLE")
    c = XdsClient(xds.address)
    try:
        c.send(type_url=LISTENER, node=NODE)
        try:
            c.recv()
        except AssertionError as e:
            assert "UNAVAILABLE" in str(e)
        assert xds.stream_log[-1]["rejected"]
    finally:
        c.close()


def test_stop_and_restart_on_same_port_keeps_state(xds_server):
    xds = xds_server()
    v = world(xds)
    port = xds.port
    c = XdsClient(xds.address)
    c.send(type_url=CLUSTER, node=NODE)
    c.recv()
    xds.stop()
    try:
        c.recv(timeout=3)
    except AssertionError as e:
        assert "stream ended" in str(e)
    c.close()
    xds.start()
    assert xds.port == port
    c = XdsClient(xds.address)
    try:
        c.send(type_url=CLUSTER, node=NODE, version_info=v[CLUSTER])
        r = c.recv()
        assert r.version_info == v[CLUSTER] and names(r) == ["a", "b"]
    finally:
        c.close()


def test_resources_from_a_watched_file(xds_server):
    d = tempfile.mkdtemp(prefix="lg-xds-")
    path = os.path.join(d, "resources.yaml")
    doc = {"clusters": [cfg.cluster("static1", [10001])],
           "resources": [dict(route_config("r1", [("/", "static1")]), **{"@type": ROUTE})]}
    with open(path, "w") as f:
        yaml.safe_dump(doc, f)
    xds = xds_server(path=path, poll_interval=0.05)
    assert set(xds.resources(CLUSTER)) == {"static1"} and set(xds.resources(ROUTE)) == {"r1"}
    v = xds.version(CLUSTER)
    c = XdsClient(xds.address)
    try:
        c.send(type_url=CLUSTER, node=NODE)
        assert names(c.recv()) == ["static1"]
        doc["clusters"].append(cfg.cluster("static2", [10002]))
        time.sleep(0.02)
        with open(path + ".tmp", "w") as f:
            yaml.safe_dump(doc, f)
        os.replace(path + ".tmp", path)
        r = c.recv(timeout=5)
        assert names(r) == ["static1", "static2"] and r.version_info != v
    finally:
        c.close()


def test_ttl_wraps_resources_and_unknown_types_get_no_answer(xds_server):
    xds = xds_server()
    world(xds)
    xds.set(ROUTE, [route_config("r1", [("/", "a")])], ttl=30)
    c = XdsClient(xds.address)
    try:
        c.send(type_url="type.googleapis.com/envoy.config.foo.v3.Nope", resource_names=["x"], node=NODE)
        c.send(type_url=ROUTE, resource_names=["r1"])
        r = c.recv()
        assert r.type_url == ROUTE and r.resources[0].type_url == rs.RESOURCE_WRAPPER
        wrapped = c.pb.Resource.FromString(r.resources[0].value)
        assert wrapped.name == "r1" and wrapped.ttl.seconds == 30 and wrapped.resource.type_url == ROUTE
        assert wrapped.version == xds.resource_versions(ROUTE)["r1"]
        assert c.no_response(), "nothing for a type the server does not serve"
        assert xds.errors == []
    finally:
        c.close()


def test_unix_socket_server(xds_server):
    path = os.path.join(tempfile.gettempdir(), f"lg-xds-selftest-{os.getpid()}.sock")
    xds = xds_server(unix_path=path)
    world(xds)
    c = XdsClient(xds.address)
    try:
        c.send(type_url=LISTENER, node=NODE)
        assert names(c.recv()) == ["l1"]
    finally:
        c.close()
    xds.close()
    assert not os.path.exists(path)


def test_tls_server(xds_server, tmp_path):
    from lib.xds import make_cert

    key, crt = make_cert(str(tmp_path), "localhost")
    xds = xds_server(host="127.0.0.1", tls=(key.encode(), crt.encode()))
    world(xds)
    c = XdsClient(f"localhost:{xds.port}", root_cert=crt.encode())
    try:
        c.send(type_url=LISTENER, node=NODE)
        assert names(c.recv()) == ["l1"]
    finally:
        c.close()
