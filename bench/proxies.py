"""Equivalent configs for each proxy under test, and how to start each one.

Every proxy gets the same shape of config for a variant: one listener on
127.0.0.1, one route (prefix "/") to one upstream, one worker, access logs
off, request ids off (Envoy's benchmarking guide), keep-alive to the upstream,
limits raised so that none of them caps a workload (connections, requests per
connection, body sizes, timeouts).

A variant is a dict:
  down:      "h1" | "h2c" | "tls"   downstream protocol (tls = HTTP/1.1 over TLS)
  up:        "h1" | "h2" | "grpc"   upstream protocol
  up_port:   the upstream's port for that protocol
  port:      the port the proxy listens on
  streaming: bool (no buffering of bodies, no route timeout)
  cert, key: PEM paths for tls
"""
import os
import shutil
import subprocess

import yaml


class Unsupported(Exception):
    """The proxy cannot do this variant; the message goes into the table."""


class Proxy:
    name = "?"
    binary = None
    # What the table says when this proxy cannot do a variant.
    unsupported = {}

    def check(self, variant):
        key = (variant["down"], variant["up"])
        if key in self.unsupported:
            raise Unsupported(self.unsupported[key])

    def version(self):
        return "?"

    def command(self, workdir, variant):
        raise NotImplementedError


# ---- Legate (an Envoy v3 bootstrap) -------------------------------------------------

HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HPO_TYPE = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
HPO_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
TLS_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"


def sockaddr(port, address="127.0.0.1"):
    return {"socket_address": {"address": address, "port_value": port}}


def legate_cluster(name, port, h2=False):
    c = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "lb_policy": "ROUND_ROBIN",
        "circuit_breakers": {"thresholds": [{"max_connections": 1000000, "max_pending_requests": 1000000,
                                             "max_requests": 1000000, "max_retries": 1000000}]},
        "load_assignment": {"cluster_name": name,
                            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": sockaddr(port)}}]}]},
    }
    if h2:
        c["typed_extension_protocol_options"] = {
            HPO_KEY: {"@type": HPO_TYPE, "explicit_http_config": {"http2_protocol_options": {}}}}
    return c


def legate_route(cluster, match=None, streaming=False):
    action = {"cluster": cluster}
    if streaming:
        action["timeout"] = "0s"
    return {"match": match or {"prefix": "/"}, "route": action}


def legate_bootstrap(admin_port, port, clusters, routes, down="h1", cert=None, key=None):
    hcm = {
        "@type": HCM_TYPE,
        "stat_prefix": "bench",
        "codec_type": "AUTO",
        "generate_request_id": False,
        "route_config": {"name": "bench", "virtual_hosts": [{"name": "bench", "domains": ["*"], "routes": routes}]},
        "http_filters": [{"name": "envoy.filters.http.router",
                          "typed_config": {"@type": ROUTER_TYPE, "dynamic_stats": False}}],
    }
    chain = {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
    if down == "tls":
        chain["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": TLS_TYPE,
                "disable_stateless_session_resumption": True,
                "disable_stateful_session_resumption": True,
                "common_tls_context": {
                    "alpn_protocols": ["http/1.1"],
                    "tls_certificates": [{"certificate_chain": {"filename": cert}, "private_key": {"filename": key}}],
                },
            },
        }
    listener = {"name": "bench", "address": sockaddr(port), "filter_chains": [chain]}
    return {
        "admin": {"address": sockaddr(admin_port)},
        "static_resources": {"listeners": [listener], "clusters": clusters},
    }


class Legate(Proxy):
    name = "legate"
    unsupported = {}

    def __init__(self, binary):
        self.binary = binary

    def version(self):
        try:
            rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                 cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
        except OSError:
            rev = ""
        return f"legate {rev or '?'} ({self.binary})"

    def command(self, workdir, variant, bootstrap=None):
        if bootstrap is None:
            h2 = variant["up"] in ("h2", "grpc")
            bootstrap = legate_bootstrap(variant["admin_port"], variant["port"],
                                         [legate_cluster("up", variant["up_port"], h2=h2)],
                                         [legate_route("up", streaming=variant.get("streaming", False))],
                                         down=variant["down"], cert=variant.get("cert"), key=variant.get("key"))
        path = os.path.join(workdir, "legate.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(bootstrap, f, sort_keys=False)
        return [self.binary, "-c", path, "--concurrency", "1", "-l", "warning", "--disable-hot-restart",
                "--drain-time-s", "0"]


# ---- nginx --------------------------------------------------------------------------

class Nginx(Proxy):
    name = "nginx"
    binary = "/usr/sbin/nginx"
    unsupported = {("h2c", "h2"): "no HTTP/2 upstream for plain proxying (only grpc_pass)"}

    def version(self):
        r = subprocess.run([self.binary, "-v"], capture_output=True, text=True)
        return (r.stderr or r.stdout).strip()

    def command(self, workdir, variant):
        down, up = variant["down"], variant["up"]
        listen = f"127.0.0.1:{variant['port']}"
        tls = ""
        if down == "h2c" or up == "grpc":
            listen += " http2"
        if down == "tls":
            listen += " ssl"
            tls = (f"ssl_certificate {variant['cert']}; ssl_certificate_key {variant['key']};\n"
                   "        ssl_session_cache off; ssl_session_tickets off;\n"
                   # the same TLS 1.3 handshake as Legate's: nginx 1.22's default stops at TLS 1.2,
                   # and OpenSSL sends two (stateful) tickets with tickets off and picks AES-256
                   "        ssl_protocols TLSv1.2 TLSv1.3; ssl_conf_command NumTickets 0;\n"
                   "        ssl_prefer_server_ciphers on; ssl_conf_command Ciphersuites "
                   "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256;")
        if up == "grpc":
            location = "grpc_pass grpc://up;"
        else:
            location = 'proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";'
        stream = ""
        if variant.get("streaming"):
            stream = ("proxy_request_buffering off; proxy_buffering off; client_max_body_size 0;\n"
                      "        proxy_read_timeout 300s; proxy_send_timeout 300s;")
        temp = "\n    ".join(f"{k}_temp_path {workdir}/nginx_{k};" for k in
                             ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        conf = f"""
worker_processes 1;
daemon off;
master_process on;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx.error.log warn;
worker_rlimit_nofile 150000;
events {{ worker_connections 60000; }}
http {{
    access_log off;
    {temp}
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    upstream up {{
        server 127.0.0.1:{variant['up_port']};
        keepalive 256;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen {listen};
        {tls}
        location / {{
            {location}
            {stream}
        }}
    }}
}}
"""
        path = os.path.join(workdir, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        return [self.binary, "-c", path, "-p", workdir, "-e", os.path.join(workdir, "nginx.error.log")]


# ---- HAProxy ------------------------------------------------------------------------

def haproxy_maxconn():
    """HAProxy reserves two fds per connection: the most the fd hard limit allows."""
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        return 60000
    return max(1000, min(60000, (hard - 30) // 2))


class Haproxy(Proxy):
    name = "haproxy"
    binary = "/usr/sbin/haproxy"

    def version(self):
        r = subprocess.run([self.binary, "-v"], capture_output=True, text=True)
        return r.stdout.splitlines()[0].strip() if r.stdout else "?"

    def command(self, workdir, variant):
        down, up = variant["down"], variant["up"]
        bind = f"127.0.0.1:{variant['port']}"
        if down == "h2c" or up == "grpc":
            bind += " proto h2"
        if down == "tls":
            pem = os.path.join(workdir, "haproxy.pem")
            with open(pem, "w") as f:
                f.write(open(variant["cert"]).read() + open(variant["key"]).read())
            # Legate's TLS 1.3 suite order (HAProxy 2.6 still sends two stateful tickets: no setting for it)
            bind += (f" ssl crt {pem} alpn http/1.1 no-tls-tickets"
                     " ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256")
        server = f"127.0.0.1:{variant['up_port']}"
        if up in ("h2", "grpc"):
            server += " proto h2"
        conf = f"""
global
    nbthread 1
    maxconn {haproxy_maxconn()}
    tune.ssl.cachesize 0
defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    option http-keep-alive
frontend bench
    bind {bind}
    default_backend up
backend up
    server s1 {server} maxconn 100000
"""
        path = os.path.join(workdir, "haproxy.cfg")
        with open(path, "w") as f:
            f.write(conf)
        return [self.binary, "-f", path, "-db"]


# ---- h2o ----------------------------------------------------------------------------

class H2o(Proxy):
    name = "h2o"
    binary = "/usr/bin/h2o"
    unsupported = {("h2c", "h2"): "proxy upstream is HTTP/1.1 only (h2o 2.2)",
                   ("h2c", "grpc"): "no gRPC proxying (h2o 2.2: no trailers, HTTP/1.1 upstream)"}

    def version(self):
        r = subprocess.run([self.binary, "--version"], capture_output=True, text=True)
        return r.stdout.splitlines()[0].strip() if r.stdout else "?"

    def command(self, workdir, variant):
        listen = {"host": "127.0.0.1", "port": variant["port"]}
        if variant["down"] == "tls":
            listen["ssl"] = {"certificate-file": variant["cert"], "key-file": variant["key"]}
        conf = {
            "num-threads": 1,
            "max-connections": 200000,
            "user": "root",
            "pid-file": os.path.join(workdir, "h2o.pid"),
            "error-log": os.path.join(workdir, "h2o.error.log"),
            "http1-request-timeout": 300,
            "http2-idle-timeout": 300,
            "limit-request-body": 1 << 40,
            "proxy.timeout.io": 300000,
            "proxy.timeout.keepalive": 300000,
            "ssl-session-resumption": {"mode": "off"},
            "temp-buffer-path": workdir,
            "listen": listen,
            "hosts": {"default": {"paths": {"/": {"proxy.reverse.url": f"http://127.0.0.1:{variant['up_port']}/",
                                                  "proxy.preserve-host": "ON"}}}},
        }
        path = os.path.join(workdir, "h2o.conf")
        with open(path, "w") as f:
            yaml.safe_dump(conf, f, sort_keys=False)
        return [self.binary, "-c", path]


def all_proxies(legate_bin):
    return [Legate(legate_bin), Nginx(), Haproxy(), H2o()]


def have(binary):
    return binary is not None and (os.path.exists(binary) or shutil.which(binary) is not None)
