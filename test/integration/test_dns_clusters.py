"""STRICT_DNS and LOGICAL_DNS clusters, resolved with c-ares as Envoy does.

The names are answered by lib/dns.DNSServer on loopback (the cluster's
typed_dns_resolver_config points at it), or by /etc/hosts ("localhost").
Envoy's behaviour (source/extensions/clusters/strict_dns and logical_dns):
- STRICT_DNS: every address of every target is a host; an answer without
  addresses removes the target's hosts; a failed query keeps them and retries
  after dns_failure_refresh_rate (or dns_refresh_rate);
- LOGICAL_DNS: one host, the first address of the single target; an answer
  without addresses changes nothing;
- update_attempt per query, update_success / update_failure per answer,
  update_no_rebuild when an answer changes no host;
- the server is not LIVE until the DNS clusters had their first answers;
- dns_lookup_family AUTO asks for IPv6, then IPv4 when there is none.
"""
import pytest

from lib import config as cfg
from lib.dns import SERVFAIL, TYPE_A, TYPE_AAAA, DNSServer
from lib.legate import run_legate, time_scale, write_yaml
from lib.upstream import EchoUpstream
from lib.wait import wait_for
from lib.xds import ads_bootstrap, get, rds_listener, route_config, upstream_of, xds_server  # noqa: F401

T = time_scale()
NAME = "web.legate.test"


@pytest.fixture
def dns():
    servers = []

    def make(**kw):
        s = DNSServer(**kw)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


@pytest.fixture
def pair():
    """Two echo upstreams on one port, at 127.0.0.2 ("a") and 127.0.0.3 ("b")."""
    started = []
    for _ in range(5):
        a = EchoUpstream("a", host="127.0.0.2")
        try:
            b = EchoUpstream("b", host="127.0.0.3", port=a.port)
        except OSError:  # the port is taken on 127.0.0.3: another one
            a.close()
            continue
        started = [a, b]
        break
    assert started, "no port free on both 127.0.0.2 and 127.0.0.3"
    yield started
    for u in started:
        u.close()


def dns_cluster(name, hosts, port, dns_server=None, kind="STRICT_DNS", refresh="0.2s", family="V4_ONLY", **extra):
    c = cfg.cluster(name, [cfg.endpoint(port, h) for h in hosts], type=kind, dns_refresh_rate=refresh,
                    dns_lookup_family=family, **extra)
    if dns_server is not None:
        c["typed_dns_resolver_config"] = dns_server.resolver()
    return c


def proxy(legate, ports, cluster, **kw):
    admin_port, listen_port = ports(2)
    rc = cfg.route_config([cfg.vhost("v", [cfg.route(cluster["name"])])])
    return legate(cfg.bootstrap(admin_port, listeners=[cfg.http_listener("ingress", listen_port, rc)],
                                clusters=[cluster]), **kw), listen_port


def servers_seen(port, n=8):
    return [upstream_of(port) for _ in range(n)]


def stat(lg, name):
    return lg.admin.stat(name)


def hosts_of(lg, cluster):
    """{address: hostname} of the cluster in /clusters?format=json."""
    for c in lg.admin.get("/clusters?format=json").json()["cluster_statuses"]:
        if c["name"] == cluster:
            return {f"{h['address']['socket_address']['address']}:{h['address']['socket_address']['port_value']}":
                    h.get("hostname", "") for h in c.get("host_statuses", [])}
    raise AssertionError(f"no cluster {cluster} in /clusters")


def test_strict_dns_hosts_follow_the_answers(legate, ports, dns, pair):
    a, b = pair
    d = dns()
    d.set(NAME, "127.0.0.2", "127.0.0.3")
    lg, port = proxy(legate, ports, dns_cluster("web", [NAME], a.port, d))
    assert hosts_of(lg, "web") == {f"127.0.0.2:{a.port}": NAME, f"127.0.0.3:{a.port}": NAME}
    assert sorted(set(servers_seen(port))) == ["a", "b"], "round robin over both resolved addresses"
    assert stat(lg, "cluster.web.membership_total") == 2

    d.set(NAME, "127.0.0.3")
    wait_for(lambda: set(servers_seen(port, 4)) == {"b"}, timeout=5 * T, what="only the new answer's host serves")
    assert hosts_of(lg, "web") == {f"127.0.0.3:{a.port}": NAME}
    assert stat(lg, "cluster.web.membership_total") == 1

    # the same answer again: a success without a rebuild
    s = lg.admin.stats()
    wait_for(lambda: stat(lg, "cluster.web.update_no_rebuild") > s.get("cluster.web.update_no_rebuild", 0),
             timeout=5 * T, what="update_no_rebuild after the change")
    s = lg.admin.stats()
    assert s["cluster.web.update_attempt"] >= s["cluster.web.update_success"] >= 3
    assert s["cluster.web.update_failure"] == 0
    assert s["cluster.web.membership_change"] >= 2


def test_strict_dns_failure_keeps_hosts_and_an_empty_answer_removes_them(legate, ports, dns, pair):
    a, b = pair
    d = dns()
    d.set(NAME, "127.0.0.2")
    lg, port = proxy(legate, ports, dns_cluster("web", [NAME], a.port, d))
    assert set(servers_seen(port, 3)) == {"a"}

    d.fail(NAME, SERVFAIL)
    wait_for(lambda: stat(lg, "cluster.web.update_failure") >= 2, timeout=5 * T, what="failed resolutions")
    assert set(servers_seen(port, 3)) == {"a"}, "a failed resolution keeps the hosts"
    assert stat(lg, "cluster.web.membership_total") == 1

    d.set(NAME)  # the name exists with no address
    wait_for(lambda: get(port)[0] == 503, timeout=5 * T, what="hosts removed")
    status, _, body = get(port)
    assert (status, body) == (503, b"no healthy upstream")
    assert stat(lg, "cluster.web.membership_total") == 0

    d.set(NAME, "127.0.0.3")
    wait_for(lambda: upstream_of(port) == "b", timeout=5 * T, what="the new address serves")


def test_strict_dns_targets_each_keep_their_endpoint_settings(legate, ports, dns, pair):
    a, b = pair
    d = dns()
    d.set("a.legate.test", "127.0.0.2")
    d.set("b.legate.test", "127.0.0.3")
    c = dns_cluster("web", [], a.port, d)
    c["load_assignment"]["endpoints"][0]["lb_endpoints"] = [
        {"endpoint": {"address": cfg.socket_address(a.port, "a.legate.test"), "hostname": "alpha"},
         "load_balancing_weight": 3},
        {"endpoint": {"address": cfg.socket_address(a.port, "b.legate.test")}, "load_balancing_weight": 1},
    ]
    lg, port = proxy(legate, ports, c)
    assert hosts_of(lg, "web") == {f"127.0.0.2:{a.port}": "alpha", f"127.0.0.3:{a.port}": "b.legate.test"}
    seen = servers_seen(port, 40)
    assert seen.count("a") >= 25 and seen.count("b") >= 5, f"weights 3:1 (equal weights would give ~20 each): {seen}"


def test_logical_dns_uses_the_first_address(legate, ports, dns, pair):
    a, b = pair
    d = dns()
    d.set(NAME, "127.0.0.2", "127.0.0.3")
    lg, port = proxy(legate, ports, dns_cluster("web", [NAME], a.port, d, kind="LOGICAL_DNS"))
    assert set(servers_seen(port, 6)) == {"a"}
    assert hosts_of(lg, "web") == {f"127.0.0.2:{a.port}": NAME}

    d.set(NAME, "127.0.0.3", "127.0.0.2")
    wait_for(lambda: set(servers_seen(port, 4)) == {"b"}, timeout=5 * T, what="the new first address")

    failures = stat(lg, "cluster.web.update_failure")
    d.set(NAME)  # no address: LOGICAL_DNS keeps the one it has
    wait_for(lambda: stat(lg, "cluster.web.update_failure") >= failures + 2, timeout=5 * T, what="empty answers")
    assert set(servers_seen(port, 4)) == {"b"}
    assert stat(lg, "cluster.web.membership_total") == 1


def test_server_is_live_only_after_the_first_answer(legate, ports, dns, pair):
    a, b = pair
    d = dns()
    d.set(NAME, "127.0.0.2")
    d.hold = True
    lg, port = proxy(legate, ports, dns_cluster("web", [NAME], a.port, d), wait_ready=False)
    wait_for(lambda: d.count(NAME) >= 1, timeout=10 * T, what="the first question")
    wait_for(lambda: lg.admin.get("/ready").status == 503, timeout=10 * T, what="the admin answering")
    assert lg.admin.stat("server.state") != 0, "not LIVE while the answer is held"
    assert d.count(NAME) >= 1 and not lg.admin.ready()
    d.release()
    lg.wait_ready()
    assert upstream_of(port) == "a"


@pytest.mark.parametrize("aaaa_fails", [False, True], ids=["no_ipv6_address", "ipv6_query_fails"])
def test_auto_family_asks_for_ipv6_then_ipv4(legate, ports, dns, pair, aaaa_fails):
    a, b = pair
    d = dns()
    d.set(NAME, "127.0.0.2")
    if aaaa_fails:
        d.fail(NAME, SERVFAIL, qtype=TYPE_AAAA)
    lg, port = proxy(legate, ports, dns_cluster("web", [NAME], a.port, d, family="AUTO"))
    assert upstream_of(port) == "a"
    assert d.count(NAME, TYPE_AAAA) >= 1 and d.count(NAME, TYPE_A) >= 1
    assert stat(lg, "cluster.web.update_failure") == 0


def test_v4_preferred_uses_ipv6_when_there_is_no_ipv4(legate, ports, dns):
    u = EchoUpstream("six", host="::1")
    try:
        d = dns()
        d.set(NAME, "::1")
        lg, port = proxy(legate, ports, dns_cluster("web", [NAME], u.port, d, family="V4_PREFERRED"))
        assert upstream_of(port) == "six"
        assert hosts_of(lg, "web") == {f"::1:{u.port}": NAME}
        assert d.count(NAME, TYPE_A) >= 1 and d.count(NAME, TYPE_AAAA) >= 1
    finally:
        u.close()


def test_wait_for_warm_on_init_false_goes_live_without_answers(legate, ports, dns, pair):
    a, b = pair
    d = dns()
    d.set(NAME, "127.0.0.2")
    d.hold = True
    lg, port = proxy(legate, ports, dns_cluster("web", [NAME], a.port, d, wait_for_warm_on_init=False))
    assert lg.admin.ready()
    assert get(port)[0] == 503, "no host before the answer"
    d.release()
    wait_for(lambda: upstream_of(port) == "a", timeout=5 * T, what="the answer's host")


def test_respect_dns_ttl_refreshes_at_the_ttl(legate, ports, dns, pair):
    a, b = pair
    d = dns(ttl=1)
    d.set(NAME, "127.0.0.2")
    lg, port = proxy(legate, ports, dns_cluster("web", [NAME], a.port, d, refresh="3600s", respect_dns_ttl=True))
    assert upstream_of(port) == "a"
    d.set(NAME, "127.0.0.3")
    wait_for(lambda: upstream_of(port) == "b", timeout=10 * T, what="a refresh after the 1 s TTL, not the 1 h rate")


def test_localhost_resolves_from_etc_hosts(legate, ports, upstream):
    u = upstream("local")
    lg, port = proxy(legate, ports, dns_cluster("web", ["localhost"], u.port))
    assert upstream_of(port) == "local"
    assert hosts_of(lg, "web") == {f"127.0.0.1:{u.port}": "localhost"}


@pytest.mark.parametrize("change,message", [
    (lambda c: c["load_assignment"]["endpoints"][0]["lb_endpoints"].append(cfg.endpoint(80, "b.test")),
     "load_assignment: LOGICAL_DNS clusters must have a single locality_lb_endpoint and a single lb_endpoint"),
    (lambda c: c.update(dns_refresh_rate="0s"), "dns_refresh_rate: value must be greater than 1ms"),
    (lambda c: c.update(dns_failure_refresh_rate={"base_interval": "2s", "max_interval": "1s"}),
     "dns_failure_refresh_rate.max_interval: must be greater than or equal to the base_interval"),
    (lambda c: c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"].update(
        address={"pipe": {"path": "/tmp/x"}}),
     "load_assignment.endpoints[0].lb_endpoints[0].endpoint.address: LOGICAL_DNS clusters need a socket_address"),
    (lambda c: c.update(typed_dns_resolver_config={"name": "x", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig",
        "resolvers": [{"socket_address": {"address": "resolver.example", "port_value": 53}}]}}),
     "typed_dns_resolver_config.typed_config.resolvers[0]"),
], ids=["two_hosts", "refresh_rate", "failure_rate", "pipe", "resolver_name"])
def test_bad_dns_cluster_config_names_the_field(tmp_path, change, message):
    c = dns_cluster("web", ["a.test"], 80, kind="LOGICAL_DNS")
    change(c)
    path = str(tmp_path / "bad.yaml")
    write_yaml(path, cfg.bootstrap(9, clusters=[c]))
    r = run_legate(["--mode", "validate", "-c", path])
    assert r.returncode != 0
    assert "static_resources.clusters[0]" in r.stderr and message in r.stderr, r.stderr


def test_control_plane_behind_a_strict_dns_cluster_serves_a_dns_cluster(xds_server, legate, ports, upstream):
    """Envoy Gateway's bootstrap: the xds_cluster is STRICT_DNS (the gRPC channel resolves its
    name itself; the cluster must load and not hold init back), and the clusters it sends may be
    STRICT_DNS too."""
    u = upstream("a")
    xds = xds_server()
    admin_port, listen_port = ports(2)
    web = dns_cluster("web", ["localhost"], u.port)
    xds.update(clusters=[web],
               listeners=[rds_listener("ingress", listen_port, "r1")], routes=[route_config("r1", [("/", "web")])])
    b = ads_bootstrap(admin_port, xds)
    xc = b["static_resources"]["clusters"][0]
    ep = xc["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    if "socket_address" not in ep:
        pytest.skip("the test control plane listens on a unix socket")
    ep["socket_address"]["address"] = "localhost"
    xc.update(type="STRICT_DNS", dns_lookup_family="V4_ONLY")
    lg = legate(b, wait_ready=False)
    wait_for(lambda: stat(lg, "cluster_manager.cds.update_success") >= 1, timeout=10 * T, what="CDS over the DNS cluster")
    wait_for(lambda: upstream_of(listen_port) == "a", timeout=10 * T, what="traffic through the CDS DNS cluster")
    assert hosts_of(lg, "web") == {f"127.0.0.1:{u.port}": "localhost"}


def test_cds_update_re_resolves_and_removal_stops_the_cluster(xds_server, legate, ports, dns, pair):
    """A CDS update of a DNS cluster warms with its own answers while the old version serves; a
    removed DNS cluster is gone from /clusters and its route answers 503, as for any cluster."""
    a, b = pair
    d = dns()
    d.set(NAME, "127.0.0.2")
    d.set("other.legate.test", "127.0.0.3")
    xds = xds_server()
    admin_port, listen_port = ports(2)
    routes = dict(listeners=[rds_listener("ingress", listen_port, "r1")], routes=[route_config("r1", [("/", "web")])])
    xds.update(clusters=[dns_cluster("web", [NAME], a.port, d)], **routes)
    lg = legate(ads_bootstrap(admin_port, xds))
    wait_for(lambda: upstream_of(listen_port) == "a", timeout=10 * T, what="the first DNS cluster version")

    d.hold = True  # the new version's first answer waits: the old version keeps serving
    xds.update(clusters=[dns_cluster("web", ["other.legate.test"], a.port, d)], **routes)
    wait_for(lambda: d.count("other.legate.test") >= 1, timeout=10 * T, what="the new version's question")
    assert stat(lg, "cluster_manager.warming_clusters") == 1
    assert set(servers_seen(listen_port, 4)) == {"a"}, "the active version serves while the new one warms"
    d.release()
    wait_for(lambda: set(servers_seen(listen_port, 4)) == {"b"}, timeout=10 * T, what="the new version's host")
    assert stat(lg, "cluster_manager.warming_clusters") == 0

    xds.update(clusters=[], **routes)
    wait_for(lambda: "web" not in {c["name"] for c in lg.admin.get("/clusters?format=json").json()["cluster_statuses"]},
             timeout=10 * T, what="the cluster removed")
    wait_for(lambda: get(listen_port)[0] == 503, timeout=10 * T, what="its route without a cluster")
