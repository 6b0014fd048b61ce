"""Command line and bootstrap validation, as Envoy's.

Envoy prints "configuration '<path>' OK" and exits 0 for a valid config in
--mode validate (source/server/config_validation/server.cc), exits 1 with
an error otherwise, and never binds listeners in validate mode.
"""
import json
import os
import re
import socket

import pytest

from lib import config as cfg
from lib.clients import curl
from lib.legate import run_legate, write_yaml
from lib.ports import free_port, is_listening
from lib.wait import wait_for
from lib.xds import CLUSTER, ads_bootstrap, xds_server  # noqa: F401  (the fixture)

ISSUE_FLAGS = [
    "--config-path", "--config-yaml", "--mode", "--concurrency", "--log-level", "--component-log-level",
    "--log-format", "--log-path", "--service-node", "--service-cluster", "--service-zone", "--drain-time-s",
    "--parent-shutdown-time-s", "--drain-strategy", "--local-address-ip-version", "--base-id",
    "--disable-hot-restart", "--allow-unknown-static-fields", "--file-flush-interval-msec", "--version", "--help",
]


def out_of(r):
    return r.stdout + r.stderr


def good_bootstrap(admin_port=None, listen_port=None, upstream_port=None):
    return cfg.simple_proxy(admin_port or free_port(), listen_port or free_port(), [upstream_port or free_port()])


def validate(tmp_path, doc, *extra, name="boot.yaml"):
    path = tmp_path / name
    if isinstance(doc, str):
        path.write_text(doc)
    else:
        write_yaml(path, doc)
    return run_legate(["--mode", "validate", "-c", str(path), *extra]), str(path)


def assert_valid(r, path):
    assert r.returncode == 0, out_of(r)
    assert f"configuration '{path}' OK" in out_of(r), out_of(r)


def line_of(text, needle):
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    raise ValueError(needle)


def mentions_line(out, n):
    return re.search(rf"(line[ :=]*{n}\b|:{n}(:|\b))", out) is not None


def test_version_prints_version_and_exits_0():
    r = run_legate(["--version"])
    assert r.returncode == 0, out_of(r)
    assert re.search(r"version: \S+", r.stdout), r.stdout


def test_help_lists_envoy_flags():
    r = run_legate(["--help"])
    assert r.returncode == 0, out_of(r)
    missing = [f for f in ISSUE_FLAGS if f not in out_of(r)]
    assert not missing, f"--help does not mention {missing}"


def test_unknown_flag_exits_1_with_one_line_error():
    r = run_legate(["--no-such-flag"])
    assert r.returncode == 1, out_of(r)
    lines = [line for line in out_of(r).splitlines() if line.strip()]
    assert len(lines) == 1, f"expected a one-line error, got:\n{out_of(r)}"
    assert "--no-such-flag" in lines[0]


def test_missing_config_file_is_an_error(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    r = run_legate(["--mode", "validate", "-c", missing])
    assert r.returncode == 1
    assert "nope.yaml" in out_of(r)


def test_validate_ok_config_exits_0_without_binding(tmp_path):
    listen = free_port()
    # Validate mode must not bind: the listener port is taken by us and stays so.
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind(("127.0.0.1", listen))
    blocker.listen(1)
    try:
        r, path = validate(tmp_path, good_bootstrap(listen_port=listen))
    finally:
        blocker.close()
    assert_valid(r, path)


def test_validate_accepts_json_bootstrap(tmp_path):
    path = tmp_path / "boot.json"
    path.write_text(json.dumps(good_bootstrap()))
    r = run_legate(["--mode", "validate", "-c", str(path)])
    assert_valid(r, str(path))


def test_validate_bad_yaml(tmp_path):
    text = "static_resources:\n  clusters: [ {name: a\n  listeners: ]\n"
    r, _ = validate(tmp_path, text)
    assert r.returncode == 1, out_of(r)
    assert out_of(r).strip()


UNKNOWN_FIELD_YAML = """\
admin:
  address:
    socket_address: {{address: 127.0.0.1, port_value: {admin}}}
static_resources:
  clusters:
  - name: backend
    connect_timeout: 1s
    type: STATIC
    bogus_field: 1
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{address: 127.0.0.1, port_value: {up}}}
"""


def test_unknown_field_names_path_and_line(tmp_path):
    text = UNKNOWN_FIELD_YAML.format(admin=free_port(), up=free_port())
    r, _ = validate(tmp_path, text)
    out = out_of(r)
    assert r.returncode == 1, out
    assert "bogus_field" in out and "clusters" in out, out
    assert mentions_line(out, line_of(text, "bogus_field")), out


def test_validate_reports_every_error(tmp_path):
    text = UNKNOWN_FIELD_YAML.format(admin=free_port(), up=free_port()).replace(
        "      cluster_name: backend\n", "      cluster_name: backend\n      second_bogus: 2\n")
    r, _ = validate(tmp_path, text)
    out = out_of(r)
    assert r.returncode == 1, out
    assert "bogus_field" in out and "second_bogus" in out, out


def test_allow_unknown_static_fields(tmp_path):
    text = UNKNOWN_FIELD_YAML.format(admin=free_port(), up=free_port())
    r, path = validate(tmp_path, text, "--allow-unknown-static-fields")
    assert_valid(r, path)


def test_wrong_type_names_field(tmp_path):
    doc = good_bootstrap()
    doc["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"][
        "address"]["socket_address"]["port_value"] = "not-a-number"
    r, _ = validate(tmp_path, doc)
    assert r.returncode == 1, out_of(r)
    assert "port_value" in out_of(r)


def _with_filter(doc, http_filter):
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"].insert(0, http_filter)
    return doc


UNKNOWN_FILTER = {"name": "acme.filters.http.mystery",
                  "typed_config": {"@type": "type.googleapis.com/acme.mystery.v1.Mystery"}}


def test_unknown_typed_config_rejected(tmp_path):
    r, _ = validate(tmp_path, _with_filter(good_bootstrap(), dict(UNKNOWN_FILTER)))
    assert r.returncode == 1, out_of(r)
    assert "acme.mystery.v1.Mystery" in out_of(r) or "acme.filters.http.mystery" in out_of(r)


def test_unknown_typed_config_accepted_when_optional(tmp_path):
    r, path = validate(tmp_path, _with_filter(good_bootstrap(), dict(UNKNOWN_FILTER, is_optional=True)))
    assert_valid(r, path)


def test_unimplemented_features_are_refused_or_warned(tmp_path):
    """What the README lists as not implemented behaves as it says: a known Envoy HTTP filter
    that Legate has no implementation of is refused like an unknown one; health checks and
    outlier detection load with a warning; per-host circuit breaker thresholds are refused."""
    cors = {"name": "envoy.filters.http.cors",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}}
    r, _ = validate(tmp_path, _with_filter(good_bootstrap(), cors))
    assert r.returncode == 1, out_of(r)
    assert "Didn't find a registered implementation for 'envoy.filters.http.cors'" in out_of(r)
    doc = good_bootstrap()
    doc["static_resources"]["clusters"][0]["health_checks"] = [
        {"timeout": "1s", "interval": "5s", "unhealthy_threshold": 2, "healthy_threshold": 2,
         "http_health_check": {"path": "/healthz"}}]
    doc["static_resources"]["clusters"][0]["outlier_detection"] = {"consecutive_5xx": 5}
    r, path = validate(tmp_path, doc)
    assert_valid(r, path)
    assert "health_checks are not implemented" in out_of(r) and "outlier_detection is not implemented" in out_of(r)
    doc = good_bootstrap()
    doc["static_resources"]["clusters"][0]["circuit_breakers"] = {"per_host_thresholds": [{"max_connections": 1}]}
    r, _ = validate(tmp_path, doc)
    assert r.returncode == 1 and "per_host_thresholds: not supported" in out_of(r), out_of(r)


def test_route_to_missing_cluster_rejected(tmp_path):
    doc = good_bootstrap()
    rc = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
    rc["virtual_hosts"][0]["routes"][0]["route"]["cluster"] = "no_such_cluster"
    r, _ = validate(tmp_path, doc)
    assert r.returncode == 1, out_of(r)
    assert "no_such_cluster" in out_of(r)


def test_invalid_regex_rejected(tmp_path):
    doc = good_bootstrap()
    rc = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
    rc["virtual_hosts"][0]["routes"][0]["match"] = {"safe_regex": {"regex": "/(unclosed"}}
    r, _ = validate(tmp_path, doc)
    assert r.returncode == 1, out_of(r)
    assert "regex" in out_of(r)


def chains_doc(matches):
    doc = good_bootstrap()
    lst = doc["static_resources"]["listeners"][0]
    proto = lst["filter_chains"][0]
    lst["filter_chains"] = [dict(proto, name=f"c{i}", filter_chain_match=m) for i, m in enumerate(matches)]
    return doc


def test_duplicate_filter_chain_match_rejected(tmp_path):
    """Envoy's "filter chain 'X' has the same matching rules defined as 'Y'", naming the first
    earlier chain with the same match; chains that differ in any criterion (here only in their
    direct source ranges) are accepted. Found by match hash, also among many chains."""
    names = [{"server_names": [f"h{i}.example.com"], "transport_protocol": "tls"} for i in range(40)]
    r, _ = validate(tmp_path, chains_doc(names + [dict(names[7]), dict(names[3])]))
    assert r.returncode == 1, out_of(r)
    assert "filter chain 'c40' has the same matching rules defined as 'c7'" in out_of(r), out_of(r)
    ranges = [{"direct_source_prefix_ranges": [{"address_prefix": f"10.0.{i}.0", "prefix_len": 24}]} for i in range(3)]
    r, path = validate(tmp_path, chains_doc(names + ranges), name="ok.yaml")
    assert_valid(r, path)


OVERLAP = "multiple filter chains with overlapping matching rules are defined"


def cidr(prefix, length=None):
    return {"address_prefix": prefix, **({"prefix_len": length} if length is not None else {})}


@pytest.mark.parametrize("matches,error", [
    # one value in common in one list, the rest equal: Envoy's tree holds both chains at one leaf
    ([{"server_names": ["a.test", "b.test"]}, {"server_names": ["b.test", "c.test"]}], OVERLAP),
    # the same names in another order are not the same message, but the same leaves
    ([{"server_names": ["a.test", "b.test"]}, {"server_names": ["b.test", "a.test"]}], OVERLAP),
    # server names are matched lower-case
    ([{"server_names": ["A.test"]}, {"server_names": ["a.TEST"]}], OVERLAP),
    # a chain naming a server twice lands on its own leaf twice
    ([{"server_names": ["a.test", "a.test"]}], OVERLAP),
    # port 5 is in both; the chain without source ports is another leaf (port "any")
    ([{"source_ports": [1, 2, 3, 4, 5]}, {}, {"source_ports": [5, 6, 7]}], OVERLAP),
    ([{"application_protocols": ["h2", "http/1.1"]}, {"application_protocols": ["http/1.1"]}], OVERLAP),
    # ranges are compared as Envoy prints them: host bits cleared, an unset length is 0
    ([{"prefix_ranges": [cidr("10.1.2.3", 8)]}, {"prefix_ranges": [cidr("10.0.0.0", 8)]}], OVERLAP),
    ([{"source_prefix_ranges": [cidr("10.0.0.1")]}, {"source_prefix_ranges": [cidr("192.168.0.1")]}], OVERLAP),
    # exactly equal matches get the duplicate message, naming the earlier chain
    ([{"server_names": ["x.test"]}, {"server_names": ["a.test", "b.test"]}, {"server_names": ["a.test", "b.test"]}],
     "filter chain 'c2' has the same matching rules defined as 'c1'"),
    # different leaves: a wildcard and a name under it, nested ranges, "any" and a value, source types
    ([{"server_names": ["*.a.test"]}, {"server_names": ["x.a.test"]}, {"server_names": ["*.test"]}, {}], None),
    ([{"prefix_ranges": [cidr("10.0.0.0", 8)]}, {"prefix_ranges": [cidr("10.0.0.0", 16)]}, {}], None),
    ([{"server_names": ["a.test"]}, {"server_names": ["a.test"], "source_type": "SAME_IP_OR_LOOPBACK"},
      {"server_names": ["a.test"], "source_type": "EXTERNAL"}, {"server_names": ["a.test"], "source_ports": [1]}], None),
])
def test_overlapping_filter_chain_matches_rejected(tmp_path, matches, error):
    """Envoy's listener check: two chains whose matches share a value in every criterion
    (an empty list being the value "any") overlap, and the listener is rejected."""
    r, path = validate(tmp_path, chains_doc(matches))
    if error is None:
        assert_valid(r, path)
    else:
        assert r.returncode == 1, out_of(r)
        assert error in out_of(r), out_of(r)


def test_overlap_check_scales_to_many_chains(tmp_path):
    """10,000 server-name chains load (one leaf each); an overlap at the end is still found."""
    names = [{"server_names": [f"h{i}.example.com", f"*.h{i}.example.com"]} for i in range(10000)]
    r, path = validate(tmp_path, chains_doc(names), name="ok.yaml")
    assert_valid(r, path)
    r, _ = validate(tmp_path, chains_doc(names + [{"server_names": ["new.example.com", "*.h9999.example.com"]}]))
    assert r.returncode == 1, out_of(r)
    assert OVERLAP in out_of(r), out_of(r)


def test_serve_with_bad_config_exits_1_and_never_listens(tmp_path):
    admin, listen = free_port(), free_port()
    doc = good_bootstrap(admin_port=admin, listen_port=listen)
    doc["static_resources"]["clusters"][0]["bogus_field"] = True
    path = write_yaml(tmp_path / "bad.yaml", doc)
    r = run_legate(["-c", str(path), "--concurrency", "1", "--disable-hot-restart"])
    assert r.returncode == 1, out_of(r)
    assert "bogus_field" in out_of(r)
    assert not is_listening(admin) and not is_listening(listen)


def test_config_yaml_is_merged_over_file(legate, upstream, tmp_path):
    """--config-yaml overrides scalars (the admin port) and appends to repeated fields (a listener)."""
    up = upstream("merged")
    file_admin, yaml_admin, listen = free_port(), free_port(), free_port()
    doc = cfg.bootstrap(file_admin, clusters=[cfg.cluster("backend", [up.port])])
    rc = cfg.route_config([cfg.vhost("all", [cfg.route("backend")])])
    overlay = {
        "admin": cfg.admin(yaml_admin),
        "static_resources": {"listeners": [cfg.http_listener("from_flag", listen, rc)]},
    }
    addr_path = str(tmp_path / "admin.addr")
    lg = legate(doc, args=["--config-yaml", json.dumps(overlay), "--admin-address-path", addr_path],
                wait_ready=False)
    lg.bootstrap = {k: v for k, v in doc.items() if k != "admin"}  # admin port now comes from the flag
    lg.wait_ready()
    assert lg.admin_port == yaml_admin
    assert not is_listening(file_admin)
    r = curl(f"http://127.0.0.1:{listen}/merged")
    assert r.status == 200, r
    assert r.json()["server"] == "merged"


@pytest.mark.parametrize("flag,value", [
    ("--log-level", "debug"), ("--component-log-level", "upstream:debug,admin:warning"),
    ("--service-node", "node-1"), ("--service-cluster", "cluster-1"), ("--service-zone", "zone-a"),
    ("--parent-shutdown-time-s", "5"), ("--drain-strategy", "immediate"), ("--local-address-ip-version", "v4"),
    ("--base-id", "7"), ("--file-flush-interval-msec", "1000"), ("--log-format", "[%Y] %v"),
])
def test_envoy_flags_accepted_in_validate_mode(tmp_path, flag, value):
    r, path = validate(tmp_path, good_bootstrap(), flag, value)
    assert_valid(r, path)


def test_log_path_receives_logs(legate, upstream, tmp_path):
    up = upstream()
    log = tmp_path / "legate.log"
    lg = legate(cfg.simple_proxy(free_port(), free_port(), [up.port]), args=["--log-path", str(log)])
    assert lg.admin.ready()
    assert lg.stop() == []
    assert log.exists() and log.read_text().strip(), "--log-path file is empty"


def thread_sched(pid, tid):
    """(policy, nice) of one thread of pid."""
    fields = open(f"/proc/{pid}/task/{tid}/stat").read().rsplit(")", 1)[1].split()
    return os.sched_getscheduler(int(tid)), int(fields[16])


@pytest.mark.parametrize("flag,policy,nice", [(None, os.SCHED_OTHER, 10), ("idle", os.SCHED_IDLE, 0),
                                              ("normal", os.SCHED_OTHER, 0)], ids=["default_nice", "idle", "normal"])
def test_control_thread_priority(legate, ports, flag, policy, nice):
    """--control-thread-priority (Legate's own flag): the control thread (the main
    one) yields to the workers by nice +10 (default), SCHED_IDLE, or not at all;
    every other thread (workers, admin, the access log flusher) keeps the
    default, and traffic flows."""
    rc = cfg.route_config([cfg.vhost("local", [cfg.route(route_extra={
        "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}}})])])
    lg = legate(cfg.bootstrap(ports(), listeners=[cfg.http_listener("ingress", ports(), rc)]),
                args=["--control-thread-priority", flag] if flag else [])
    pid = lg.proc.pid
    wait_for(lambda: thread_sched(pid, pid) == (policy, nice), timeout=10,
             what=f"the control thread at {(policy, nice)}, not {thread_sched(pid, pid)}")
    others = {tid: thread_sched(pid, tid) for tid in os.listdir(f"/proc/{pid}/task") if int(tid) != pid}
    assert len(others) >= 3, others  # two workers and the admin thread at least
    assert all(s == (os.SCHED_OTHER, 0) for s in others.values()), others
    r = curl(f"http://127.0.0.1:{lg.listener_port()}/")
    assert (r.status, r.body) == (200, b"ok\n"), (r.status, r.body)


@pytest.mark.parametrize("flag,policy,nice", [(None, os.SCHED_OTHER, 10), ("idle", os.SCHED_IDLE, 0)],
                         ids=["default_nice", "idle"])
def test_control_thread_priority_reaches_grpc_threads(legate, ports, xds_server, flag, policy, nice):
    """gRPC core's threads receive and frame the xDS stream (a 10,000-cluster push
    is megabytes): they run at the control thread's priority, not the workers',
    so that a push competes with traffic no more than the control thread does.
    The workers and the admin thread keep the default."""
    xds = xds_server()
    lg = legate(ads_bootstrap(ports(), xds), args=["--control-thread-priority", flag] if flag else [])
    xds.wait_ack(CLUSTER)
    pid = lg.proc.pid
    names = {tid: open(f"/proc/{pid}/task/{tid}/comm").read().strip() for tid in os.listdir(f"/proc/{pid}/task")}
    ours = {tid for tid, name in names.items() if name in (names[str(pid)], "admin") and int(tid) != pid}
    grpc = {tid: (names[tid], thread_sched(pid, tid)) for tid in names if tid not in ours and int(tid) != pid}
    assert grpc, names  # gRPC core started its threads for the ADS stream
    assert thread_sched(pid, pid) == (policy, nice)
    assert all(s == (policy, nice) for _, s in grpc.values()), grpc
    assert all(thread_sched(pid, tid) == (os.SCHED_OTHER, 0) for tid in ours), \
        {tid: (names[tid], thread_sched(pid, tid)) for tid in ours}


def test_control_thread_priority_rejects_other_values(tmp_path):
    r = run_legate(["--control-thread-priority", "high", "-c", str(tmp_path / "none.yaml")])
    assert r.returncode == 1, out_of(r)
    assert "--control-thread-priority" in out_of(r) and "'high'" in out_of(r), out_of(r)
