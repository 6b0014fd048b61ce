"""The admin endpoint: paths, methods and output shapes as Envoy's.

Envoy facts used (source/server/admin/admin.cc, utils.cc, docs
operations/admin): /ready answers "LIVE\\n" with 200, or the state name with
503 (after /healthcheck/fail: "DRAINING"); state-changing endpoints answer
GET with 405 "Method GET not allowed, POST required."; unknown paths are
404; /config_dump lists BootstrapConfigDump, ClustersConfigDump,
ListenersConfigDump and RoutesConfigDump in that order.
"""
import re
import socket

import pytest

from lib import config as cfg
from lib.admin import parse_prometheus
from lib.legate import time_scale
from lib.ports import is_listening
from lib.rawhttp import RawHTTP
from lib.wait import wait_for

POST_ONLY = ["/quitquitquit", "/healthcheck/fail", "/healthcheck/ok", "/drain_listeners", "/logging"]


@pytest.fixture
def proxied(legate, ports, upstream):
    up = upstream()
    lg = legate(cfg.simple_proxy(ports(), ports(), [up.port]))
    return lg, up


def one_request(lg, path="/"):
    with RawHTTP("127.0.0.1", lg.listener_port()) as c:
        c.request("GET", path)
        return c.read_response()


def test_ready_is_live(proxied):
    lg, _ = proxied
    r = lg.admin.get("/ready")
    assert r.status == 200 and r.text == "LIVE\n"


def test_admin_port_zero_with_address_path(legate, ports, upstream):
    up = upstream()
    lg = legate(cfg.simple_proxy(0, ports(), [up.port]))
    text = open(lg.admin_address_path).read().strip()
    assert re.fullmatch(r"127\.0\.0\.1:\d+", text), text
    assert lg.admin.get("/ready").status == 200


def test_server_info_shape(proxied):
    lg, _ = proxied
    info = lg.admin.get("/server_info").json()
    assert isinstance(info["version"], str) and info["version"]
    assert info["state"] == "LIVE"
    assert re.fullmatch(r"\d+(\.\d+)?s", info["uptime_current_epoch"]), info["uptime_current_epoch"]
    assert re.fullmatch(r"\d+(\.\d+)?s", info["uptime_all_epochs"])
    opts = info["command_line_options"]
    assert opts["concurrency"] == 2
    assert opts["config_path"] == lg.config_path
    assert opts["mode"] == "Serve"
    assert "node" in info


def test_server_stats(proxied):
    lg, _ = proxied
    s = lg.admin.stats()
    assert s["server.live"] == 1
    assert s["server.state"] == 0
    assert s["server.concurrency"] == 2
    assert s["listener_manager.workers_started"] == 1
    # Envoy's server.version: the revision's first 6 hex digits; hot_restart_epoch from --restart-epoch
    assert s["server.version"] == int(lg.admin.get("/server_info").json()["version"][:6], 16)
    assert s["server.hot_restart_epoch"] == 0


def test_hot_restart_epoch(legate, ports, upstream):
    up = upstream()
    lg = legate(cfg.simple_proxy(ports(), ports(), [up.port]), args=["--restart-epoch", "3"])
    assert lg.admin.stat("server.hot_restart_epoch") == 3


def test_stats_counters_and_gauges(proxied):
    lg, _ = proxied
    assert one_request(lg, "/one").status == 200
    wait_for(lambda: lg.admin.stat("cluster.backend.upstream_rq_total") == 1, timeout=3, what="upstream_rq_total")
    s = lg.admin.stats()
    assert s["http.ingress_http.downstream_rq_total"] == 1
    assert s["http.ingress_http.downstream_rq_2xx"] == 1
    assert s["cluster.backend.upstream_rq_200"] == 1
    assert s["cluster.backend.upstream_cx_total"] == 1
    with RawHTTP("127.0.0.1", lg.listener_port()) as c:
        c.request("GET", "/held")
        c.read_response()
        wait_for(lambda: lg.admin.stat("http.ingress_http.downstream_cx_active") == 1, timeout=3,
                 what="downstream_cx_active == 1")
    wait_for(lambda: lg.admin.stat("http.ingress_http.downstream_cx_active") == 0, timeout=3,
             what="downstream_cx_active back to 0")
    assert lg.admin.stat("http.ingress_http.downstream_cx_total") == 2


# Every cluster's stats in Envoy (include/envoy/upstream/upstream.h: ALL_CLUSTER_TRAFFIC_STATS,
# ALL_CLUSTER_LB_STATS, ALL_CLUSTER_ENDPOINT_STATS, ALL_CLUSTER_CONFIG_UPDATE_STATS and the default
# and high circuit breaker gauges; the remaining_* gauges only with track_remaining).
ENVOY_CLUSTER_STATS = """
bind_errors original_dst_host_invalid retry_or_shadow_abandoned upstream_cx_close_notify
upstream_cx_connect_attempts_exceeded upstream_cx_connect_fail upstream_cx_connect_timeout
upstream_cx_connect_with_0_rtt upstream_cx_destroy upstream_cx_destroy_local
upstream_cx_destroy_local_with_active_rq upstream_cx_destroy_remote upstream_cx_destroy_remote_with_active_rq
upstream_cx_destroy_with_active_rq upstream_cx_http1_total upstream_cx_http2_total upstream_cx_http3_total
upstream_cx_idle_timeout upstream_cx_max_duration_reached upstream_cx_max_requests upstream_cx_none_healthy
upstream_cx_overflow upstream_cx_pool_overflow upstream_cx_protocol_error upstream_cx_rx_bytes_total
upstream_cx_total upstream_cx_tx_bytes_total upstream_flow_control_backed_up_total
upstream_flow_control_drained_total upstream_flow_control_paused_reading_total
upstream_flow_control_resumed_reading_total upstream_internal_redirect_failed_total
upstream_internal_redirect_succeeded_total upstream_rq_cancelled upstream_rq_completed
upstream_rq_maintenance_mode upstream_rq_max_duration_reached upstream_rq_pending_failure_eject
upstream_rq_pending_overflow upstream_rq_pending_total upstream_rq_0rtt upstream_rq_per_try_timeout
upstream_rq_per_try_idle_timeout upstream_rq_retry upstream_rq_retry_backoff_exponential
upstream_rq_retry_backoff_ratelimited upstream_rq_retry_limit_exceeded upstream_rq_retry_overflow
upstream_rq_retry_success upstream_rq_rx_reset upstream_rq_timeout upstream_rq_total upstream_rq_tx_reset
upstream_http3_broken upstream_cx_active upstream_cx_rx_bytes_buffered upstream_cx_tx_bytes_buffered
upstream_rq_active upstream_rq_pending_active
lb_healthy_panic lb_local_cluster_not_ok lb_recalculate_zone_structures lb_subsets_created lb_subsets_fallback
lb_subsets_fallback_panic lb_subsets_removed lb_subsets_selected lb_zone_cluster_too_small
lb_zone_no_capacity_left lb_zone_number_differs lb_zone_routing_all_directly lb_zone_routing_cross_zone
lb_zone_routing_sampled lb_subsets_active
max_host_weight membership_change membership_degraded membership_excluded membership_healthy membership_total
assignment_stale assignment_timeout_received assignment_use_cached update_attempt update_empty update_failure
update_no_rebuild update_success version warming_state
""".split() + [f"circuit_breakers.{p}.{g}" for p in ("default", "high")
               for g in ("cx_open", "cx_pool_open", "rq_open", "rq_pending_open", "rq_retry_open")]


def test_every_envoy_cluster_stat_is_listed(proxied):
    """A dashboard or an alert written for Envoy finds each of a cluster's counters and gauges
    (histograms are checked in test_request_time_histograms)."""
    lg, _ = proxied
    listed = lg.admin.stats(r"filter=^cluster\.backend\.")
    missing = [n for n in ENVOY_CLUSTER_STATS if f"cluster.backend.{n}" not in listed]
    assert missing == [], missing
    assert listed["cluster.backend.membership_total"] == 1 and listed["cluster.backend.warming_state"] == 0
    prom = lg.admin.get("/stats/prometheus").text
    assert "envoy_cluster_membership_excluded{envoy_cluster_name=\"backend\"} 0" in prom


def test_stats_filter_and_usedonly(proxied):
    lg, _ = proxied
    assert one_request(lg).status == 200
    wait_for(lambda: lg.admin.stat("cluster.backend.upstream_rq_total") == 1, timeout=3, what="upstream_rq_total")
    filtered = lg.admin.stats(r"filter=^cluster\.backend\.")
    assert filtered and all(k.startswith("cluster.backend.") for k in filtered), list(filtered)[:10]
    assert "cluster.backend.upstream_rq_retry" in filtered
    used = lg.admin.stats("usedonly")
    assert used["cluster.backend.upstream_rq_total"] == 1
    assert "cluster.backend.upstream_rq_retry" not in used
    both = lg.admin.stats(r"usedonly&filter=upstream_rq_total")
    assert "cluster.backend.upstream_rq_total" in both and all("upstream_rq_total" in k for k in both)


def test_stats_prometheus(proxied):
    lg, _ = proxied
    assert one_request(lg).status == 200
    wait_for(lambda: lg.admin.stat("cluster.backend.upstream_rq_total") == 1, timeout=3, what="upstream_rq_total")
    r = lg.admin.get("/stats/prometheus")
    assert r.status == 200
    types, samples = parse_prometheus(r.text)
    assert types.get("envoy_cluster_upstream_rq_total") == "counter"
    assert types.get("envoy_http_downstream_cx_active") == "gauge"
    rq = [v for n, lab, v in samples
          if n == "envoy_cluster_upstream_rq_total" and lab.get("envoy_cluster_name") == "backend"]
    assert rq == ["1"], rq
    http = [v for n, lab, v in samples
            if n == "envoy_http_downstream_rq_total" and lab.get("envoy_http_conn_manager_prefix") == "ingress_http"]
    assert http == ["1"], http


def test_request_time_histograms(proxied):
    """Envoy's latency histograms, as dashboards read them: http.<prefix>.downstream_rq_time
    (request start to the end of the response) and cluster.<name>.upstream_rq_time (end of the
    request to the end of the upstream response), in ms. Two quick requests and one the
    upstream answers after 300 ms: three samples each, one of them in (250, 500]."""
    lg, _ = proxied
    for path in ("/a", "/b", "/delay/300"):
        assert one_request(lg, path).status == 200
    wait_for(lambda: lg.admin.stat("http.ingress_http.downstream_rq_completed") == 3, timeout=3,
             what="downstream_rq_completed 3")
    types, samples = parse_prometheus(lg.admin.get("/stats/prometheus").text)

    def hist(metric, label, value):
        assert types.get(metric) == "histogram"
        got = {lab.get("le", n.rsplit("_", 1)[1]): float(v) for n, lab, v in samples
               if n.startswith(metric + "_") and lab.get(label) == value}
        assert got["count"] == 3, got
        assert got["250"] == 2 and got["500"] == 3, f"the slow request in (250, 500] ms: {got}"
        assert 300 <= got["sum"] < 1500, got

    hist("envoy_http_downstream_rq_time", "envoy_http_conn_manager_prefix", "ingress_http")
    hist("envoy_cluster_upstream_rq_time", "envoy_cluster_name", "backend")
    text = [line for line in lg.admin.get("/stats").text.splitlines()
            if line.startswith(("cluster.backend.upstream_rq_time:", "http.ingress_http.downstream_rq_time:"))]
    assert len(text) == 2 and all(" P50(nan," in line and " P100(nan," in line for line in text), text

    # each request had a connection of its own: http.<prefix>.downstream_cx_length_ms has one sample per close
    wait_for(lambda: lg.admin.stat("http.ingress_http.downstream_cx_destroy") == 3, timeout=3, what="3 closes")
    _, samples = parse_prometheus(lg.admin.get("/stats/prometheus").text)
    assert [v for n, lab, v in samples if n == "envoy_http_downstream_cx_length_ms_count"
            and lab.get("envoy_http_conn_manager_prefix") == "ingress_http"] == ["3"]

    # cluster.<name>.upstream_cx_connect_ms: one sample per connection made; upstream_cx_length_ms:
    # one per connection gone (the upstream closes one here, without answering)
    assert one_request(lg, "/close-before-response").status == 503
    wait_for(lambda: lg.admin.stat("cluster.backend.upstream_cx_destroy") == 1, timeout=3, what="an upstream close")
    _, samples = parse_prometheus(lg.admin.get("/stats/prometheus").text)
    count = {n: int(v) for n, lab, v in samples if lab.get("envoy_cluster_name") == "backend" and n.endswith("_count")}
    s = lg.admin.stats()
    assert count["envoy_cluster_upstream_cx_connect_ms_count"] == s["cluster.backend.upstream_cx_total"] >= 1, count
    assert count["envoy_cluster_upstream_cx_length_ms_count"] == 1, count


def test_router_dynamic_stats_false(legate, ports, upstream):
    """Envoy's router with dynamic_stats: false charges no upstream_rq_<code>, upstream_rq_<class>
    or upstream_rq_time; upstream_rq_completed and the host's counters still count."""
    up = upstream()
    router = dict(cfg.router_filter(), typed_config={"@type": cfg.ROUTER_TYPE, "dynamic_stats": False})
    lg = legate(cfg.simple_proxy(ports(), ports(), [up.port], http_filters=[router]))
    assert one_request(lg).status == 200
    wait_for(lambda: lg.admin.stat("cluster.backend.upstream_rq_completed") == 1, timeout=3, what="upstream_rq_completed")
    s = lg.admin.stats()
    assert s.get("cluster.backend.upstream_rq_2xx", 0) == 0 and "cluster.backend.upstream_rq_200" not in s
    assert s["http.ingress_http.downstream_rq_2xx"] == 1, "the HCM's codes are not dynamic stats"
    assert "cluster.backend.upstream_rq_time: No recorded values" in lg.admin.get("/stats").text.splitlines()
    host = f"backend::127.0.0.1:{up.port}"
    assert f"{host}::rq_success::1" in lg.admin.get("/clusters").text.splitlines()


def test_clusters_text_and_json(proxied):
    lg, up = proxied
    for i in range(3):
        assert one_request(lg, f"/c{i}").status == 200
    host = f"backend::127.0.0.1:{up.port}"
    wait_for(lambda: f"{host}::rq_total::3" in lg.admin.get("/clusters").text.splitlines(), timeout=3,
             what="rq_total::3 in /clusters")
    lines = lg.admin.get("/clusters").text.splitlines()
    for want in ["backend::default_priority::max_connections::1024", "backend::added_via_api::false",
                 f"{host}::health_flags::healthy", f"{host}::weight::1", f"{host}::rq_total::3"]:
        assert want in lines, f"{want!r} not in /clusters:\n" + "\n".join(lines[:40])
    js = lg.admin.get("/clusters?format=json").json()
    cl = [c for c in js["cluster_statuses"] if c["name"] == "backend"]
    assert len(cl) == 1
    hs = cl[0]["host_statuses"]
    assert hs[0]["address"]["socket_address"]["port_value"] == up.port
    assert hs[0]["health_status"]["eds_health_status"] == "HEALTHY"


def test_listeners_text_and_json(proxied):
    lg, _ = proxied
    lines = lg.admin.get("/listeners").text.splitlines()
    assert f"ingress::127.0.0.1:{lg.listener_port()}" in lines, lines
    js = lg.admin.get("/listeners?format=json").json()
    st = [x for x in js["listener_statuses"] if x["name"] == "ingress"]
    assert st and st[0]["local_address"]["socket_address"]["port_value"] == lg.listener_port()


def test_config_dump_shape(proxied):
    lg, _ = proxied
    dump = lg.admin.get("/config_dump").json()
    types = [c["@type"] for c in dump["configs"]]
    prefix = "type.googleapis.com/envoy.admin.v3."
    wanted = ["BootstrapConfigDump", "ClustersConfigDump", "ListenersConfigDump", "RoutesConfigDump"]
    idx = [types.index(prefix + w) for w in wanted]
    assert idx == sorted(idx), types
    by = {c["@type"][len(prefix):]: c for c in dump["configs"]}
    boot = by["BootstrapConfigDump"]["bootstrap"]
    assert boot["static_resources"]["clusters"][0]["name"] == "backend"
    clusters = [c["cluster"] for c in by["ClustersConfigDump"]["static_clusters"]]
    assert any(c["name"] == "backend" and c["@type"] == "type.googleapis.com/envoy.config.cluster.v3.Cluster"
               for c in clusters), clusters
    listeners = [x["listener"] for x in by["ListenersConfigDump"]["static_listeners"]]
    ing = [x for x in listeners if x["name"] == "ingress"]
    assert ing and ing[0]["@type"] == "type.googleapis.com/envoy.config.listener.v3.Listener"
    hcm = ing[0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["@type"] == cfg.HCM_TYPE
    routes = [x["route_config"] for x in by["RoutesConfigDump"]["static_route_configs"]]
    assert any(r["name"] == "local_route" and
               r["@type"] == "type.googleapis.com/envoy.config.route.v3.RouteConfiguration" for r in routes), routes


def test_quitquitquit_stops_process(proxied):
    lg, _ = proxied
    r = lg.admin.post("/quitquitquit")
    assert r.status == 200 and r.text == "OK\n"
    lg.mark_expected_exit()
    assert lg.wait_exit(10) == 0, lg.stderr()[-2000:]


@pytest.mark.parametrize("path", POST_ONLY)
def test_get_on_post_only_endpoint_is_405(proxied, path):
    lg, _ = proxied
    r = lg.admin.get(path)
    assert r.status == 405
    assert r.text.strip() == "Method GET not allowed, POST required."
    assert lg.alive() and lg.admin.ready()


def test_unknown_admin_path_is_404(proxied):
    lg, _ = proxied
    assert lg.admin.get("/no/such/admin/path").status == 404


def test_healthcheck_fail_then_ok(proxied):
    lg, _ = proxied
    assert lg.admin.post("/healthcheck/fail").status == 200
    r = lg.admin.get("/ready")
    assert r.status == 503 and r.text == "DRAINING\n"
    assert lg.admin.stat("server.live") == 0
    assert one_request(lg).status == 200  # traffic still flows
    assert lg.admin.post("/healthcheck/ok").status == 200
    assert lg.admin.get("/ready").text == "LIVE\n"
    assert lg.admin.stat("server.live") == 1


def _logger_levels(text):
    return dict(re.findall(r"^\s+([\w.]+): (\w+)$", text, re.M))


def test_logging_post_changes_levels(proxied):
    lg, _ = proxied
    r = lg.admin.post("/logging?level=debug")
    assert r.status == 200 and "active loggers:" in r.text
    levels = _logger_levels(r.text)
    assert levels and set(levels.values()) == {"debug"}, r.text
    levels = _logger_levels(lg.admin.post("/logging?level=warning").text)
    assert levels and set(levels.values()) == {"warning"}
    assert set(_logger_levels(lg.admin.post("/logging").text).values()) == {"warning"}


def test_drain_listeners_stops_accepting(proxied):
    lg, _ = proxied
    assert one_request(lg).status == 200
    r = lg.admin.post("/drain_listeners")
    assert r.status == 200 and r.text == "OK\n"
    wait_for(lambda: not is_listening(lg.listener_port()), timeout=5 * time_scale(), what="listener to close")
    assert lg.admin.ready()


def test_admin_served_while_workers_busy(proxied):
    lg, up = proxied
    socks = []
    try:
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", lg.listener_port()))
            s.sendall(b"GET /delay/1000 HTTP/1.1\r\nHost: x\r\n\r\n")
            socks.append(s)
        up.wait_inflight(5)
        assert lg.admin.get("/ready").status == 200
    finally:
        for s in socks:
            s.close()
