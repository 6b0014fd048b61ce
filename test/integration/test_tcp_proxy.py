"""envoy.filters.network.tcp_proxy: bytes both ways, half-close, idle timeout,
connect failures and max_connect_attempts, weighted clusters, flow control,
access logs and TLS passthrough by SNI, as Envoy.

Envoy behaviour checked in source/common/tcp_proxy/tcp_proxy.cc: stats under
tcp.<stat_prefix>. (downstream_cx_total, downstream_cx_no_route,
downstream_cx_rx/tx_bytes_total, idle_timeout, upstream_flush_total,
downstream_flow_control_paused_reading_total ...); half-close is enabled on
both connections (a FIN travels on, the connection ends when both directions
have ended); a failed connect is retried up to max_connect_attempts (default
1) and then the downstream is closed with flags UF,URX; the idle timeout
(default 1 h) closes both sides.
"""
import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time

import pytest

from lib import config as cfg
from lib.legate import run_legate, sanitized, time_scale, write_yaml
from lib.ports import free_port
from lib.wait import wait_for

TCP_PROXY_TYPE = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
TLS_INSPECTOR_TYPE = "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
FILE_LOG_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
MIB = 1024 * 1024


# ---- upstream servers ---------------------------------------------------------


class TcpServer:
    """A threaded TCP server on 127.0.0.1; `mode` says what each connection does:

    echo        echo every byte; on EOF, shut down writing and close
    close       close at once after accept
    reset       close at once with an RST (SO_LINGER 0)
    banner      send b"banner\\n", shut down writing, then record what arrives until EOF
    hold        read nothing until release() is called, then echo
    """

    def __init__(self, mode="echo"):
        self.mode = mode
        self.accepted = 0
        self.received = []  # per connection, what arrived (banner mode)
        self.released = threading.Event()
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.closing = False
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    def _accept_loop(self):
        while not self.closing:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.accepted += 1
                self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            getattr(self, "_serve_" + self.mode)(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def _serve_echo(self, conn):
        while True:
            data = conn.recv(256 * 1024)
            if not data:
                conn.shutdown(socket.SHUT_WR)
                return
            conn.sendall(data)

    def _serve_close(self, conn):
        pass

    def _serve_reset(self, conn):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    def _serve_banner(self, conn):
        conn.sendall(b"banner\n")
        conn.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            data = conn.recv(65536)
            if not data:
                break
            got += data
        with self.lock:
            self.received.append(got)

    def _serve_hold(self, conn):
        self.released.wait(30)
        self._serve_echo(conn)

    def release(self):
        self.released.set()

    def close(self):
        self.closing = True
        self.released.set()
        try:
            self.sock.close()
        except OSError:
            pass
        with self.lock:
            for c in self.conns:
                try:
                    c.close()
                except OSError:
                    pass


@pytest.fixture
def tcp_server():
    started = []

    def make(mode="echo"):
        s = TcpServer(mode)
        started.append(s)
        return s

    yield make
    for s in started:
        s.close()


def dead_port():
    """A port nothing listens on (connects are refused)."""
    return free_port()


# ---- config -------------------------------------------------------------------


def tcp_proxy_filter(cluster="backend", stat_prefix="tcp_stats", **extra):
    tc = {"@type": TCP_PROXY_TYPE, "stat_prefix": stat_prefix}
    if cluster is not None:
        tc["cluster"] = cluster
    tc.update(extra)
    return {"name": "envoy.filters.network.tcp_proxy", "typed_config": tc}


def tcp_bootstrap(ports, clusters, listener_extra=None, **tcp_extra):
    lst = cfg.listener("tcp", ports(), [tcp_proxy_filter(**tcp_extra)], **(listener_extra or {}))
    return cfg.bootstrap(ports(), listeners=[lst], clusters=clusters)


def start(legate, ports, endpoints, cluster_extra=None, args=(), **tcp_extra):
    return legate(tcp_bootstrap(ports, [cfg.cluster("backend", endpoints, **(cluster_extra or {}))], **tcp_extra), args=args)


def connect(lg, timeout=10.0):
    s = socket.create_connection(("127.0.0.1", lg.listener_port()), timeout=timeout * time_scale())
    return s


def recv_exact(s, n):
    buf = bytearray()
    while len(buf) < n:
        data = s.recv(min(1 << 20, n - len(buf)))
        if not data:
            break
        buf += data
    return bytes(buf)


def recv_until_eof(s):
    """Everything until EOF; a reset counts as the end too (returns what came before)."""
    buf = bytearray()
    while True:
        try:
            data = s.recv(1 << 16)
        except ConnectionResetError:
            return bytes(buf)
        if not data:
            return bytes(buf)
        buf += data


def closed_by_peer(s, timeout):
    """True when the peer closes (EOF or reset) within timeout, reading and dropping data."""
    s.settimeout(timeout * time_scale())
    try:
        while s.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def stat(lg, name):
    return lg.admin.stat(name)


def stat_reaches(lg, name, n, timeout=5.0):
    wait_for(lambda: stat(lg, name) >= n, timeout=timeout * time_scale(), what=f"{name} >= {n}")


# ---- bytes both ways ------------------------------------------------------------


def test_echo_and_half_close(legate, ports, tcp_server):
    up = tcp_server("echo")
    lg = start(legate, ports, [up.port])
    with connect(lg) as s:
        s.sendall(b"hello")
        assert recv_exact(s, 5) == b"hello"
        s.sendall(b" world")
        assert recv_exact(s, 6) == b" world"
        # our FIN reaches the upstream, which echoes nothing more and closes: we see EOF
        s.shutdown(socket.SHUT_WR)
        assert recv_until_eof(s) == b""
    stat_reaches(lg, "cluster.backend.upstream_cx_destroy", 1)
    st = lg.admin.stats()
    assert st["tcp.tcp_stats.downstream_cx_total"] == 1
    assert st["tcp.tcp_stats.downstream_cx_rx_bytes_total"] == 11
    assert st["tcp.tcp_stats.downstream_cx_tx_bytes_total"] == 11
    assert st["tcp.tcp_stats.downstream_cx_no_route"] == 0
    assert st["cluster.backend.upstream_cx_total"] == 1
    assert st["cluster.backend.upstream_cx_active"] == 0
    assert st["cluster.backend.upstream_cx_rx_bytes_total"] == 11
    # as in Envoy's TCP pool, the connection counts as a request
    assert st["cluster.backend.upstream_rq_pending_total"] == 1
    assert st["cluster.backend.upstream_rq_total"] == 1
    assert st["cluster.backend.upstream_rq_active"] == 0
    assert st["cluster.backend.upstream_cx_tx_bytes_total"] == 11
    assert st["tcp.tcp_stats.downstream_cx_rx_bytes_buffered"] == 0
    assert st["tcp.tcp_stats.downstream_cx_tx_bytes_buffered"] == 0


def test_16mib_both_ways(legate, ports, tcp_server):
    up = tcp_server("echo")
    lg = start(legate, ports, [up.port])
    size = 16 * MIB
    payload = os.urandom(1 << 20) * 16
    with connect(lg, timeout=30) as s:
        def send():
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)

        t = threading.Thread(target=send, daemon=True)
        t.start()
        got = recv_until_eof(s)
        t.join(10)
    assert len(got) == size
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(payload).hexdigest()
    stat_reaches(lg, "tcp.tcp_stats.downstream_cx_tx_bytes_total", size)
    assert stat(lg, "tcp.tcp_stats.downstream_cx_rx_bytes_total") == size


def test_upstream_half_close_keeps_the_other_direction(legate, ports, tcp_server):
    """The upstream's FIN reaches the client, which can still send (Envoy enables half-close)."""
    up = tcp_server("banner")
    lg = start(legate, ports, [up.port])
    with connect(lg) as s:
        assert recv_until_eof(s) == b"banner\n"
        s.sendall(b"after the banner")
        s.shutdown(socket.SHUT_WR)
        wait_for(lambda: up.received, timeout=5 * time_scale(), what="the upstream to see EOF")
    assert up.received == [b"after the banner"]
    stat_reaches(lg, "cluster.backend.upstream_cx_destroy", 1)


def test_many_connections_in_parallel(legate, ports, tcp_server):
    up = tcp_server("echo")
    lg = start(legate, ports, [up.port])
    errors = []

    def one(i):
        try:
            with connect(lg) as s:
                msg = (b"%d:" % i) * 1000
                s.sendall(msg)
                s.shutdown(socket.SHUT_WR)
                if recv_until_eof(s) != msg:
                    errors.append(i)
        except OSError as e:
            errors.append((i, e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert errors == []
    stat_reaches(lg, "cluster.backend.upstream_cx_destroy", 50)
    assert stat(lg, "tcp.tcp_stats.downstream_cx_total") == 50


# ---- flow control ---------------------------------------------------------------


def test_slow_upstream_pauses_downstream_reads(legate, ports, tcp_server):
    """An upstream that does not read: the proxy stops reading the client once
    the cluster's buffer limit is held, and resumes when the upstream reads."""
    up = tcp_server("hold")
    lg = start(legate, ports, [up.port], cluster_extra={"per_connection_buffer_limit_bytes": 65536})
    size = 32 * MIB
    payload = os.urandom(1 << 20) * 32
    with connect(lg, timeout=30) as s:
        def send():
            try:
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        t = threading.Thread(target=send, daemon=True)
        t.start()
        stat_reaches(lg, "tcp.tcp_stats.downstream_flow_control_paused_reading_total", 1)
        # what legate holds for this connection stays near the limits, far below what was sent
        assert stat(lg, "tcp.tcp_stats.downstream_cx_rx_bytes_buffered") <= 16 * MIB
        up.release()
        got = recv_until_eof(s)
        t.join(10)
    assert len(got) == size and got == payload
    assert stat(lg, "tcp.tcp_stats.downstream_flow_control_resumed_reading_total") >= 1


def test_downstream_reset_flushes_upstream(legate, ports, tcp_server):
    """A client that resets while its bytes still wait for a slow upstream:
    the upstream keeps receiving them (Envoy's upstream flush) and is closed
    when it answers, as there is nobody left to answer to."""
    up = tcp_server("hold")
    # a limit above what is sent: legate keeps reading the client, so it sees the reset at once
    lg = start(legate, ports, [up.port], cluster_extra={"per_connection_buffer_limit_bytes": 64 * MIB})
    s = connect(lg, timeout=30)
    s.sendall(os.urandom(1 << 20) * 24)
    stat_reaches(lg, "tcp.tcp_stats.downstream_cx_rx_bytes_total", 24 * MIB)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()
    stat_reaches(lg, "tcp.tcp_stats.upstream_flush_total", 1)
    assert stat(lg, "tcp.tcp_stats.upstream_flush_active") == 1
    assert stat(lg, "cluster.backend.upstream_cx_active") == 1
    up.release()
    wait_for(lambda: stat(lg, "tcp.tcp_stats.upstream_flush_active") == 0, timeout=10 * time_scale(), what="the flush to end")
    stat_reaches(lg, "cluster.backend.upstream_cx_destroy_local", 1)
    assert stat(lg, "cluster.backend.upstream_cx_active") == 0


# ---- timeouts -----------------------------------------------------------------


def test_idle_timeout_closes_both_sides(legate, ports, tcp_server):
    up = tcp_server("echo")
    lg = start(legate, ports, [up.port], idle_timeout="0.3s")
    with connect(lg) as s:
        s.sendall(b"ping")
        assert recv_exact(s, 4) == b"ping"
        t0 = time.monotonic()
        assert closed_by_peer(s, 5)
        assert time.monotonic() - t0 >= 0.2
    stat_reaches(lg, "tcp.tcp_stats.idle_timeout", 1)
    stat_reaches(lg, "cluster.backend.upstream_cx_destroy_local", 1)


def test_activity_defers_the_idle_timeout(legate, ports, tcp_server):
    up = tcp_server("echo")
    lg = start(legate, ports, [up.port], idle_timeout="0.6s")
    with connect(lg) as s:
        for _ in range(6):
            s.sendall(b"x")
            assert recv_exact(s, 1) == b"x"
            time.sleep(0.2)
        assert stat(lg, "tcp.tcp_stats.idle_timeout") == 0
        assert closed_by_peer(s, 5)
    stat_reaches(lg, "tcp.tcp_stats.idle_timeout", 1)


def test_max_downstream_connection_duration(legate, ports, tcp_server):
    up = tcp_server("echo")
    lg = start(legate, ports, [up.port], max_downstream_connection_duration="0.3s")
    with connect(lg) as s:
        s.sendall(b"x")
        assert recv_exact(s, 1) == b"x"
        assert closed_by_peer(s, 5)
    stat_reaches(lg, "tcp.tcp_stats.max_downstream_connection_duration", 1)


# ---- failures -----------------------------------------------------------------


def test_upstream_down_closes_downstream(legate, ports):
    lg = start(legate, ports, [dead_port()])
    with connect(lg) as s:
        assert closed_by_peer(s, 5)
    stat_reaches(lg, "cluster.backend.upstream_cx_connect_fail", 1)
    st = lg.admin.stats()
    assert st["tcp.tcp_stats.downstream_cx_total"] == 1
    assert st["cluster.backend.upstream_cx_total"] == 1
    assert st["cluster.backend.upstream_cx_active"] == 0
    assert st["cluster.backend.upstream_rq_pending_failure_eject"] == 1
    assert st["cluster.backend.upstream_rq_total"] == 0


def test_unknown_cluster_counts_no_route(legate, ports, tcp_server):
    up = tcp_server("echo")
    lg = legate(tcp_bootstrap(ports, [cfg.cluster("backend", [up.port])], cluster="nowhere"))
    with connect(lg) as s:
        assert closed_by_peer(s, 5)
    stat_reaches(lg, "tcp.tcp_stats.downstream_cx_no_route", 1)
    assert up.accepted == 0


def test_max_connect_attempts_tries_the_next_host(legate, ports, tcp_server):
    up = tcp_server("echo")
    lg = start(legate, ports, [dead_port(), up.port], max_connect_attempts=2)
    for i in range(8):
        with connect(lg) as s:
            s.sendall(b"n%d" % i)
            assert recv_exact(s, 2) == b"n%d" % i
    # round robin sends some first attempts to the dead host; each was retried on the live one
    assert stat(lg, "cluster.backend.upstream_cx_connect_fail") >= 1
    assert up.accepted == 8


def test_single_attempt_gives_up(legate, ports, tcp_server):
    """With the default max_connect_attempts (1), a refused connect is not retried."""
    up = tcp_server("echo")
    lg = start(legate, ports, [dead_port(), up.port])
    outcomes = []
    for _ in range(8):
        with connect(lg) as s:
            try:
                s.sendall(b"x")
                outcomes.append(recv_exact(s, 1) == b"x")
            except ConnectionResetError:
                outcomes.append(False)
    assert not all(outcomes) and any(outcomes)
    fails = stat(lg, "cluster.backend.upstream_cx_connect_fail")
    assert fails == outcomes.count(False)


def test_upstream_reset_closes_downstream(legate, ports, tcp_server):
    up = tcp_server("reset")
    lg = start(legate, ports, [up.port])
    with connect(lg) as s:
        assert closed_by_peer(s, 5)
    stat_reaches(lg, "cluster.backend.upstream_cx_destroy_remote", 1)


class Blackhole:
    """A listening socket whose accept queue is full: Linux drops further SYNs,
    so a connect to it neither succeeds nor fails until its timeout."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.fillers = []
        for _ in range(4):
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", self.port))
            self.fillers.append(c)
        time.sleep(0.1)

    def close(self):
        for c in self.fillers:
            c.close()
        self.sock.close()


def test_connect_timeout(legate, ports):
    """A host that never answers the SYN: connect_timeout ends the attempt."""
    hole = Blackhole()
    try:
        lg = start(legate, ports, [hole.port], cluster_extra={"connect_timeout": "0.25s"})
        with connect(lg) as s:
            t0 = time.monotonic()
            assert closed_by_peer(s, 5)
            assert time.monotonic() - t0 >= 0.2
        stat_reaches(lg, "cluster.backend.upstream_cx_connect_timeout", 1)
        assert stat(lg, "cluster.backend.upstream_cx_connect_fail") == 1
        assert stat(lg, "cluster.backend.upstream_cx_destroy_local") == 1
    finally:
        hole.close()


def test_max_connections_breaker(legate, ports, tcp_server):
    up = tcp_server("echo")
    lg = start(legate, ports, [up.port], cluster_extra={"circuit_breakers": {"thresholds": [{"max_connections": 1}]}})
    with connect(lg) as first:
        first.sendall(b"a")
        assert recv_exact(first, 1) == b"a"
        with connect(lg) as second:
            assert closed_by_peer(second, 5)
        stat_reaches(lg, "cluster.backend.upstream_cx_overflow", 1)
        first.sendall(b"b")
        assert recv_exact(first, 1) == b"b"
    assert up.accepted == 1


# ---- weighted clusters --------------------------------------------------------


def test_weighted_clusters_distribution(legate, ports, tcp_server):
    a, b = tcp_server("echo"), tcp_server("echo")
    weighted = {"clusters": [{"name": "a", "weight": 1}, {"name": "b", "weight": 3}]}
    lg = legate(tcp_bootstrap(ports, [cfg.cluster("a", [a.port]), cfg.cluster("b", [b.port])], cluster=None,
                              weighted_clusters=weighted))
    n = 200
    for i in range(n):
        with connect(lg) as s:
            s.sendall(b"w")
            assert recv_exact(s, 1) == b"w"
    wait_for(lambda: a.accepted + b.accepted == n, timeout=5 * time_scale(), what="all connections accepted")
    share_b = b.accepted / n
    assert 0.55 <= share_b <= 0.92, (a.accepted, b.accepted)
    assert stat(lg, "cluster.a.upstream_cx_total") == a.accepted
    assert stat(lg, "cluster.b.upstream_cx_total") == b.accepted


# ---- config -------------------------------------------------------------------


@pytest.mark.parametrize("typed, message", [
    ({"cluster": "backend"}, "stat_prefix"),
    ({"stat_prefix": "x"}, "cluster_specifier"),
    ({"stat_prefix": "x", "weighted_clusters": {"clusters": [{"name": "a", "weight": 0}]}}, "weight"),
    ({"stat_prefix": "x", "cluster": "backend", "max_connect_attempts": 0}, "max_connect_attempts"),
    ({"stat_prefix": "x", "cluster": "backend", "tunneling_config": {"hostname": "h"}}, "tunneling_config"),
])
def test_config_errors_name_the_field(legate, ports, typed, message):
    tc = {"@type": TCP_PROXY_TYPE}
    tc.update(typed)
    lst = cfg.listener("tcp", ports(), [{"name": "envoy.filters.network.tcp_proxy", "typed_config": tc}])
    b = cfg.bootstrap(ports(), listeners=[lst], clusters=[cfg.cluster("backend", [ports()])])
    d = tempfile.mkdtemp(prefix="lg-tcp-")
    try:
        path = write_yaml(os.path.join(d, "b.yaml"), b)
        r = run_legate(["-c", path, "--mode", "validate"])
    finally:
        shutil.rmtree(d, ignore_errors=True)
    assert r.returncode != 0
    assert "filters[0].typed_config" in r.stderr and message in r.stderr, r.stderr


# ---- access log -----------------------------------------------------------------


def test_access_log_fields(legate, ports, tcp_server, tmp_path):
    up = tcp_server("echo")
    log = tmp_path / "tcp.log"
    fmt = "%UPSTREAM_CLUSTER% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %UPSTREAM_HOST% %PROTOCOL%\n"
    access_log = [{"name": "envoy.access_loggers.file",
                   "typed_config": {"@type": FILE_LOG_TYPE, "path": str(log),
                                    "log_format": {"text_format_source": {"inline_string": fmt}}}}]
    lg = start(legate, ports, [up.port], access_log=access_log, args=("--file-flush-interval-msec", "50"))
    with connect(lg) as s:
        s.sendall(b"12345")
        assert recv_exact(s, 5) == b"12345"
        s.shutdown(socket.SHUT_WR)
        recv_until_eof(s)
    wait_for(lambda: log.exists() and log.read_text().count("\n") >= 1, timeout=5 * time_scale(), what="an access log line")
    assert log.read_text().splitlines()[0] == f"backend - 5 5 127.0.0.1:{up.port} -"


def test_access_log_of_a_failed_connect(legate, ports, tmp_path):
    """Envoy logs a refused upstream with UF,URX (the one attempt failed, none left)."""
    log = tmp_path / "tcp.log"
    fmt = "%RESPONSE_FLAGS% %UPSTREAM_HOST% %UPSTREAM_CLUSTER% %BYTES_SENT%\n"
    access_log = [{"name": "envoy.access_loggers.file",
                   "typed_config": {"@type": FILE_LOG_TYPE, "path": str(log),
                                    "log_format": {"text_format_source": {"inline_string": fmt}}}}]
    dead = dead_port()
    lg = start(legate, ports, [dead], access_log=access_log, args=("--file-flush-interval-msec", "50"))
    with connect(lg) as s:
        assert closed_by_peer(s, 5)
    wait_for(lambda: log.exists() and log.read_text().count("\n") >= 1, timeout=5 * time_scale(), what="an access log line")
    assert log.read_text().splitlines()[0] == f"UF,URX 127.0.0.1:{dead} backend 0"
    assert lg.admin.stat("cluster.backend.upstream_cx_connect_attempts_exceeded") == 1


# ---- TLS passthrough by SNI ---------------------------------------------------------


def make_cert(d, cn):
    key, crt = os.path.join(d, f"{cn}.key"), os.path.join(d, f"{cn}.crt")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
                    "-subj", f"/CN={cn}", "-keyout", key, "-out", crt], check=True, capture_output=True)
    return key, crt


class SServer:
    """openssl s_server answering with its certificate; -naccept bounds its life."""

    def __init__(self, d, cn):
        key, crt = make_cert(d, cn)
        self.port = free_port()
        self.proc = subprocess.Popen(["openssl", "s_server", "-accept", f"127.0.0.1:{self.port}", "-key", key, "-cert", crt,
                                      "-www", "-quiet"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_for(self._listening, timeout=10 * time_scale(), what=f"s_server {cn}")

    def _listening(self):
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def close(self):
        self.proc.kill()
        self.proc.wait(10)


def s_client_subject(port, servername):
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", servername],
                       input=b"", capture_output=True, timeout=20 * time_scale())
    out = r.stdout.decode("utf-8", "replace")
    for line in out.splitlines():
        if line.startswith("subject="):
            return line
    return None


@pytest.mark.deadline(90)
def test_tls_passthrough_by_sni(legate, ports, tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    servers = [SServer(str(tmp_path), "alpha.example"), SServer(str(tmp_path), "beta.example")]
    try:
        chains = []
        for name, srv in (("alpha", servers[0]), ("beta", servers[1])):
            chains.append({"filter_chain_match": {"server_names": [f"{name}.example"]},
                           "filters": [tcp_proxy_filter(cluster=name, stat_prefix=f"tls_{name}")]})
        lst = {"name": "tls", "address": cfg.socket_address(ports()), "filter_chains": chains,
               "listener_filters": [{"name": "envoy.filters.listener.tls_inspector",
                                     "typed_config": {"@type": TLS_INSPECTOR_TYPE}}]}
        lg = legate(cfg.bootstrap(ports(), listeners=[lst],
                                  clusters=[cfg.cluster("alpha", [servers[0].port]), cfg.cluster("beta", [servers[1].port])]))
        port = lg.listener_port()
        assert "CN = alpha.example" in (s_client_subject(port, "alpha.example") or "")
        assert "CN = beta.example" in (s_client_subject(port, "beta.example") or "")
        stat_reaches(lg, "tcp.tls_alpha.downstream_cx_total", 1)
        stat_reaches(lg, "tcp.tls_beta.downstream_cx_total", 1)
        # no chain for this name: the connection is closed, no certificate seen
        assert s_client_subject(port, "gamma.example") is None
    finally:
        for s in servers:
            s.close()


# ---- shutdown -------------------------------------------------------------------


def test_shutdown_closes_open_connections(legate, ports, tcp_server):
    """Envoy leaves tcp_proxy connections alone when a drain starts and closes
    them when the drain time is over; the process exits cleanly."""
    up = tcp_server("echo")
    lg = start(legate, ports, [up.port])
    s = connect(lg)
    try:
        s.sendall(b"open")
        assert recv_exact(s, 4) == b"open"
        problems = lg.stop()
        assert problems == []
        assert closed_by_peer(s, 5)
    finally:
        s.close()


def peak_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


@pytest.mark.skipif(sanitized(), reason="ASan's allocator decides the RSS")
@pytest.mark.deadline(180)
def test_relay_is_read_in_bounded_pieces(legate, ports, tcp_server):
    """64 MiB through an echo upstream: each side is read at most 64 KiB per
    wake-up into recycled buffers, so the proxy's peak RSS stays flat. Read
    until EAGAIN (libh2o's way), the relay took megabytes per wake-up."""
    up = tcp_server("echo")
    lg = start(legate, ports, [up.port])
    size = 64 * MIB
    block = bytes(1 << 20)
    pid = lg.proc.pid
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # the peak so far is start-up's: measure from the current RSS
    before = peak_kib(pid)
    with connect(lg, timeout=30) as s:
        def send():
            for _ in range(size // len(block)):
                s.sendall(block)
            s.shutdown(socket.SHUT_WR)

        t = threading.Thread(target=send, daemon=True)
        t.start()
        got = 0
        while True:
            d = s.recv(1 << 20)
            if not d:
                break
            assert d.count(0) == len(d)
            got += len(d)
        t.join(10)
    assert got == size
    grown = peak_kib(pid) - before
    assert grown < 4096, f"peak RSS grew by {grown} KiB"
