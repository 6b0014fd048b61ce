"""Builders for Envoy v3 bootstrap dicts.

Every builder returns plain dicts/lists in the proto3 JSON shape that Envoy
reads, so a test can still edit the result inline before it is written to a
YAML file. Nothing here is Legate specific: the same files start Envoy.
"""

HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HTTP_PROTOCOL_OPTIONS_TYPE = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
HTTP_PROTOCOL_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def socket_address(port, address="127.0.0.1"):
    return {"socket_address": {"address": address, "port_value": port}}


def admin(port, address="127.0.0.1"):
    return {"address": socket_address(port, address)}


def router_filter():
    return {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}


def hcm(route_config, stat_prefix="ingress_http", codec_type="AUTO", http_filters=None, **extra):
    """An http_connection_manager network filter with an inline route_config."""
    cfg = {
        "@type": HCM_TYPE,
        "stat_prefix": stat_prefix,
        "codec_type": codec_type,
        "route_config": route_config,
        "http_filters": list(http_filters) if http_filters is not None else [router_filter()],
    }
    cfg.update(extra)
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": cfg}


def listener(name, port, filters, address="127.0.0.1", **extra):
    lst = {"name": name, "address": socket_address(port, address), "filter_chains": [{"filters": list(filters)}]}
    lst.update(extra)
    return lst


def http_listener(name, port, route_config, address="127.0.0.1", listener_extra=None, **hcm_extra):
    return listener(name, port, [hcm(route_config, **hcm_extra)], address=address, **(listener_extra or {}))


def route_config(virtual_hosts, name="local_route", **extra):
    rc = {"name": name, "virtual_hosts": list(virtual_hosts)}
    rc.update(extra)
    return rc


def vhost(name, routes, domains=("*",), **extra):
    vh = {"name": name, "domains": list(domains), "routes": list(routes)}
    vh.update(extra)
    return vh


def route(cluster=None, prefix="/", match=None, route_extra=None, **action):
    """A route: match defaults to {"prefix": prefix}; the action to {"cluster": cluster}.

    Keyword arguments go into the RouteAction; route_extra into the Route itself
    (e.g. redirect/direct_response/request_headers_to_add).
    """
    r = {"match": match if match is not None else {"prefix": prefix}}
    if cluster is not None or action:
        act = {}
        if cluster is not None:
            act["cluster"] = cluster
        act.update(action)
        r["route"] = act
    r.update(route_extra or {})
    return r


def endpoint(port, address="127.0.0.1"):
    return {"endpoint": {"address": socket_address(port, address)}}


def pipe_endpoint(path):
    return {"endpoint": {"address": {"pipe": {"path": path}}}}


def cluster(name, endpoints, lb_policy="ROUND_ROBIN", connect_timeout="1s", http2=False, protocol_options=None,
            **extra):
    """A STATIC cluster. endpoints: ports (ints) or lb_endpoint dicts.

    http2=True selects HTTP/2 upstream through the typed HttpProtocolOptions,
    as Envoy v3 configs do; protocol_options is merged into those options.
    """
    lb_endpoints = [endpoint(e) if isinstance(e, int) else e for e in endpoints]
    c = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": connect_timeout,
        "lb_policy": lb_policy,
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": lb_endpoints}]},
    }
    opts = dict(protocol_options or {})
    if http2:
        opts.setdefault("explicit_http_config", {"http2_protocol_options": {}})
    if opts:
        opts["@type"] = HTTP_PROTOCOL_OPTIONS_TYPE
        c["typed_extension_protocol_options"] = {HTTP_PROTOCOL_OPTIONS_KEY: opts}
    c.update(extra)
    return c


def bootstrap(admin_port, listeners=(), clusters=(), **extra):
    b = {"admin": admin(admin_port), "static_resources": {"listeners": list(listeners), "clusters": list(clusters)}}
    b.update(extra)
    return b


def simple_proxy(admin_port, listen_port, upstream_ports, cluster_name="backend", route_extra=None,
                 cluster_extra=None, vhost_extra=None, rc_extra=None, **hcm_extra):
    """One listener routing every path of every host to one cluster."""
    rc = route_config([vhost("backend", [route(cluster_name, **(route_extra or {}))], **(vhost_extra or {}))],
                      **(rc_extra or {}))
    return bootstrap(
        admin_port,
        listeners=[http_listener("ingress", listen_port, rc, **hcm_extra)],
        clusters=[cluster(cluster_name, upstream_ports, **(cluster_extra or {}))],
    )
