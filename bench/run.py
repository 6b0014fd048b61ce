#!/usr/bin/python3
"""Legate against nginx, HAProxy and h2o on this machine (issue 5).

    bench/run.py                      every workload, 3 rounds (make bench)
    bench/run.py --only 1,2a,8        some workloads
    bench/run.py --proxies legate,nginx
    BENCH_QUICK=1 bench/run.py        short runs, small sizes (a smoke run)
    bench/run.py --self-test          workload 1 only, ~5 s per proxy, checks the table

Each proxy runs one worker pinned to core 0; the load generator (h2load), the
upstream (bench/upstream.c) and this script run on core 1. Workloads run per
proxy interleaved (A B C A B C ...) for several rounds and the table shows the
median of the rounds. Proxy CPU per request is the utime+stime delta of the
proxy's processes (/proc/<pid>/stat, all threads and worker processes)
divided by the requests h2load completed, also shown split into user and
system time. Latency is measured open-loop at a fixed rate (h2load --rps, half
the slowest proxy's saturated rate) from h2load's per-request log. Peak RSS is
VmHWM summed over the proxy's processes. Workload 8 also measures the p99 of
live traffic through Legate while the test control plane pushes 10,000-cluster
CDS+EDS and 10,000-route RDS updates, against the idle p99 (bench/README.md,
"Method").

The table goes to bench/results/<date>.md (and .json) with the machine's
description. The exit status is non-zero only when the harness itself fails
(a tool or the Legate binary missing, a crash here); a slow figure or a proxy
that fails one workload is reported in the table, never in the exit status.
"""
import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import idle  # noqa: E402
import proxies  # noqa: E402

PROXY_CPU = "0"
LOAD_CPU = "1"
DEB_TOOLS = {"nginx": "/usr/sbin/nginx", "haproxy": "/usr/sbin/haproxy", "h2o": "/usr/bin/h2o",
             "wrk": "/usr/bin/wrk", "nghttp2-client": "/usr/bin/h2load", "curl": "/usr/bin/curl",
             "openssl": "/usr/bin/openssl", "libnghttp2-dev": "/usr/include/nghttp2/nghttp2.h",
             "python3-yaml": "/usr/lib/python3/dist-packages/yaml/__init__.py"}
# Same link line as the Makefile's LDLIBS (route_bench links liblegate.a).
LDLIBS = ["-lh2o-evloop", "-lnghttp2", "-lprotobuf-c", "-lgrpc", "-lgpr", "-lssl", "-lcrypto", "-lcares", "-lyaml",
          "-lre2", "-lstdc++", "-lpthread", "-lm"]
CLK_TCK = os.sysconf("SC_CLK_TCK")
GRPC_FRAME = b"\x00\x00\x00\x00\x0c" + b"\x0a\x0abench-ping"  # one length-prefixed message, 12 bytes


class HarnessError(Exception):
    """The harness cannot go on (missing tool, broken setup): exit non-zero."""


class ProxyFailed(Exception):
    """One proxy failed one run: reported in the table, the bench goes on."""


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---- processes ---------------------------------------------------------------------

class Procs:
    """Every process the bench starts, each in its own session (process group),
    so that stop() and stop_all() also reach nginx's workers."""

    def __init__(self):
        self.live = []

    def start(self, cmd, cpu, logdir, name, env=None):
        out = open(os.path.join(logdir, f"{name}.log"), "ab")
        full_env = dict(os.environ)
        full_env.update(env or {})
        p = subprocess.Popen(on_cpu(cpu) + list(cmd), stdout=out, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True, env=full_env, cwd=logdir)
        out.close()
        p.bench_log = os.path.join(logdir, f"{name}.log")
        self.live.append(p)
        return p

    def stop(self, p, grace=3.0):
        if p in self.live:
            self.live.remove(p)
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(p.pid, signal.SIGKILL)  # leftovers of the group (workers) too
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def stop_all(self):
        for p in list(self.live):
            self.stop(p, grace=1.0)


PROCS = Procs()


def on_signal(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


# ---- /proc accounting ---------------------------------------------------------------

def tree(pid):
    """pid and all its descendants."""
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_split(pids):
    """(user, system) CPU seconds of processes (each with all its threads), from /proc/<pid>/stat."""
    user = system = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user += int(fields[11])  # utime
            system += int(fields[12])  # stime
        except (OSError, IndexError, ValueError):
            pass
    return user / CLK_TCK, system / CLK_TCK


def cpu_seconds(pids):
    return sum(cpu_split(pids))


def mem_kib(pids, field):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


# ---- tools --------------------------------------------------------------------------

def ensure_tools(names):
    missing = [pkg for pkg in names if not os.path.exists(DEB_TOOLS[pkg])]
    if not missing:
        return
    if os.geteuid() != 0:
        raise HarnessError(f"missing Debian packages {missing} and not root to install them")
    log(f"installing from Debian: {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # policy-rc.d keeps the packages' services from starting (they would hold ports 80/443).
    policy = "/usr/sbin/policy-rc.d"
    made_policy = not os.path.exists(policy)
    if made_policy:
        with open(policy, "w") as f:
            f.write("#!/bin/sh\nexit 101\n")
        os.chmod(policy, 0o755)
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends"] + missing, check=True, env=env,
                       stdout=subprocess.DEVNULL)
    except subprocess.CalledProcessError as e:
        raise HarnessError(f"apt-get failed: {e}") from None
    finally:
        if made_policy:
            os.unlink(policy)
    still = [pkg for pkg in names if not os.path.exists(DEB_TOOLS[pkg])]
    if still:
        raise HarnessError(f"still missing after apt-get: {still}")


def build_helpers(build_dir):
    """Compiles bench/upstream.c (and route_bench.c when liblegate.a exists)."""
    os.makedirs(build_dir, exist_ok=True)
    up = os.path.join(build_dir, "upstream")
    src = os.path.join(HERE, "upstream.c")
    if not os.path.exists(up) or os.path.getmtime(up) < os.path.getmtime(src):
        subprocess.run(["cc", "-O2", "-g", "-Wall", "-o", up, src, "-lnghttp2"], check=True)
    rb = os.path.join(build_dir, "route_bench")
    lib = os.path.join(REPO, "build", "liblegate.a")
    rsrc = os.path.join(HERE, "route_bench.c")
    if os.path.exists(lib) and (not os.path.exists(rb) or os.path.getmtime(rb) < max(os.path.getmtime(rsrc),
                                                                                          os.path.getmtime(lib))):
        r = subprocess.run(["cc", "-O2", "-g", "-std=gnu11", "-pthread", "-Iinclude", "-Ibuild/gen",
                            "-DH2O_USE_LIBUV=0", "-o", rb, rsrc, "build/liblegate.a", "build/libenvoyapi.a"] + LDLIBS,
                           cwd=REPO, capture_output=True, text=True)
        if r.returncode != 0:
            log(f"route_bench did not build (route-match micro-benchmark skipped): {r.stderr[-400:]}")
            return up, None
    return up, (rb if os.path.exists(rb) else None)


def build_relay(build_dir):
    """Compiles bench/relay.c, workload 6's reference row."""
    relay, src = os.path.join(build_dir, "relay"), os.path.join(HERE, "relay.c")
    if not os.path.exists(relay) or os.path.getmtime(relay) < os.path.getmtime(src):
        subprocess.run(["cc", "-O2", "-g", "-Wall", "-pthread", "-o", relay, src], check=True)
    return relay


def make_cert(workdir):
    cert, key = os.path.join(workdir, "cert.pem"), os.path.join(workdir, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "30", "-subj", "/CN=localhost"],
                   check=True, capture_output=True)
    return cert, key


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.02)
    return False


def tail(path, n=600):
    try:
        with open(path, "rb") as f:
            return f.read()[-n:].decode("utf-8", "replace").strip()
    except OSError:
        return ""


def wait_quiet(pids, timeout=10.0):
    """Waits until processes used no CPU over 100 ms (or `timeout` passed)."""
    deadline = time.monotonic() + timeout
    last = sum(cpu_split(pids))
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = sum(cpu_split(pids))
        if now == last:
            return
        last = now


def cpu_per_request(user_s, sys_s, requests):
    """CPU µs per request, total and split into user and system (kernel) time."""
    return {"cpu_us": (user_s + sys_s) * 1e6 / requests, "user_us": user_s * 1e6 / requests,
            "sys_us": sys_s * 1e6 / requests}


# ---- load --------------------------------------------------------------------------

def percentile(sorted_values, q):
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[i]


def on_cpu(cpu, rt=False):
    """The prefix that runs a command on `cpu` with the normal policy: while the test control plane
    (this process) is SCHED_IDLE, its children would inherit SCHED_IDLE (SCHED_RESET_ON_FORK resets
    only real-time policies and negative nice values)."""
    rt = rt and os.geteuid() == 0  # SCHED_RR needs root: without it, the instruments stay SCHED_OTHER
    return (["chrt", "--rr", "1"] if rt else ["chrt", "--other", "0"]) + ["taskset", "-c", cpu]


def h2load(url, clients, streams=1, duration=None, n=None, rps=None, h1=False, headers=(), data=None, logfile=None,
           timeout=120, raw_log=False, rt=False):
    """Runs h2load on the load core. Returns {done, ok, failed, rps, elapsed, lat_us (sorted) or None};
    with raw_log, also "log": [(start µs since the epoch, status or -1, duration µs)] per request."""
    cmd = on_cpu(LOAD_CPU, rt) + ["h2load", "-t", "1", "-c", str(clients), "-m", str(streams)]
    if h1:
        cmd.append("--h1")
    if duration is not None:
        cmd += ["-D", str(max(1, round(duration)))]  # whole seconds: h2load rejects "5.0"
    if n is not None:
        cmd += ["-n", str(n)]
    if rps is not None:
        cmd += ["--rps", str(rps)]
    for h in headers:
        cmd += ["-H", h]
    if data is not None:
        cmd += ["-d", data]
    if logfile is not None:
        cmd += ["--log-file", logfile]
    cmd.append(url)
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    PROCS.live.append(p)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        PROCS.stop(p, grace=0.5)
        raise ProxyFailed(f"h2load did not finish within {timeout}s")
    finally:
        if p in PROCS.live:
            PROCS.live.remove(p)
    res = {"done": 0, "ok": 0, "failed": 0, "rps": 0.0, "elapsed": 0.0, "lat_us": None}
    for line in out.splitlines():
        if line.startswith("finished in"):
            parts = line.replace(",", "").split()
            res["elapsed"] = float(parts[2].rstrip("ms")) / (1000.0 if parts[2].endswith("ms") else 1.0)
            res["rps"] = float(parts[3])
        elif line.startswith("requests:"):
            nums = [int(w) for w in line.replace(",", " ").split() if w.isdigit()]
            # total, started, done, succeeded, failed, errored, timeout
            res["done"], res["ok"] = nums[2], nums[3]
            res["failed"] = nums[4] + nums[5] + nums[6]
    if "requests:" not in out:
        raise ProxyFailed(f"h2load produced no result: {out.strip()[-300:]}")
    if logfile is not None and os.path.exists(logfile):
        lat, raw = [], []
        with open(logfile) as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) >= 3 and parts[1] == "200":
                    lat.append(int(parts[2]))
                if raw_log and len(parts) >= 3:
                    raw.append((int(parts[0]), int(parts[1]), int(parts[2])))
        lat.sort()
        res["lat_us"] = lat
        if raw_log:
            res["log"] = raw
        os.unlink(logfile)
    return res


# ---- one proxy run -------------------------------------------------------------------

class Bench:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.build_dir = os.path.join(REPO, "build", "bench")
        self.workdir = None
        self.upstream = None
        self.up_ports = {}
        self.results = {}  # workload id -> result dict
        self.legate_bin = os.path.abspath(os.environ.get("LEGATE_BIN") or os.path.join(REPO, "build", "legate"))
        self.route_bench = None

    # -- setup ------------------------------------------------------------------------

    def setup(self):
        if not os.path.exists(self.legate_bin):
            raise HarnessError(f"{self.legate_bin} not found: run `make` first")
        ensure_tools(list(DEB_TOOLS))
        if len(os.sched_getaffinity(0)) < 2 or os.cpu_count() < 2:
            raise HarnessError("the bench needs 2 cores (proxy on core 0, load on core 1)")
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        os.sched_setaffinity(0, {int(LOAD_CPU)})
        up_bin, self.route_bench = build_helpers(self.build_dir)
        self.workdir = tempfile.mkdtemp(prefix="run-", dir=self.build_dir)
        os.chmod(self.workdir, 0o755)
        self.cert, self.key = make_cert(self.workdir)
        self.up_ports = {"h1": free_port(), "h2": free_port()}
        self.up_ports["grpc"] = self.up_ports["h2"]
        self.upstream = PROCS.start([up_bin, "--h1-port", str(self.up_ports["h1"]), "--h2-port",
                                     str(self.up_ports["h2"])], LOAD_CPU, self.workdir, "upstream")
        if not wait_port(self.up_ports["h1"], proc=self.upstream) or not wait_port(self.up_ports["h2"]):
            raise HarnessError(f"upstream did not start: {tail(self.upstream.bench_log)}")
        self.grpc_file = os.path.join(self.workdir, "grpc-request.bin")
        with open(self.grpc_file, "wb") as f:
            f.write(GRPC_FRAME)
        all_p = proxies.all_proxies(self.legate_bin)
        wanted = self.args.proxies.split(",") if self.args.proxies else [p.name for p in all_p]
        self.proxies = [p for p in all_p if p.name in wanted]
        if not self.proxies:
            raise HarnessError(f"no proxy selected from {wanted}")

    def variant(self, down, up, streaming=False):
        return {"down": down, "up": up, "up_port": self.up_ports[up], "port": free_port(), "admin_port": free_port(),
                "cert": self.cert, "key": self.key, "streaming": streaming}

    def url(self, v, path="/"):
        scheme = "https" if v["down"] == "tls" else "http"
        return f"{scheme}://127.0.0.1:{v['port']}{path}"

    def probe(self, v):
        """One request through the proxy; True when it answered 200."""
        cmd = ["curl", "-s", "-k", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2"]
        if v["down"] == "h2c":
            cmd.append("--http2-prior-knowledge")
        if v["up"] == "grpc":
            cmd += ["-H", "content-type: application/grpc", "-H", "te: trailers", "--data-binary",
                    "@" + self.grpc_file]
        r = subprocess.run(cmd + [self.url(v, "/bench.Echo/Ping" if v["up"] == "grpc" else "/")],
                           capture_output=True, text=True)
        return r.stdout.strip() == "200"

    def start_proxy(self, proxy, v, bootstrap=None):
        """Starts the proxy pinned to the proxy core and waits until a request passes.
        Returns (process, pids). Raises Unsupported or ProxyFailed."""
        proxy.check(v)
        rundir = os.path.join(self.workdir, proxy.name)
        os.makedirs(rundir, exist_ok=True)
        cmd = proxy.command(rundir, v, bootstrap) if bootstrap is not None else proxy.command(rundir, v)
        p = PROCS.start(cmd, PROXY_CPU, rundir, proxy.name)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if p.poll() is not None:
                break
            if wait_port(v["port"], timeout=0.2, proc=p) and self.probe(v):
                time.sleep(0.1)  # nginx/h2o: let the workers finish starting
                return p, tree(p.pid)
            time.sleep(0.05)
        msg = tail(p.bench_log)
        PROCS.stop(p)
        if proxy.name == "legate" and "not supported" in msg:
            raise proxies.Unsupported("not supported yet: " + msg.splitlines()[-1][-160:] if msg else "not supported")
        raise ProxyFailed(f"{proxy.name} did not start or does not proxy: {msg[-300:]}")

    # -- request/response workloads ---------------------------------------------------------

    def load_args(self, w, v):
        a = {"clients": w["clients"], "streams": w.get("streams", 1), "h1": v["down"] in ("h1", "tls")}
        if v["up"] == "grpc":
            a["headers"] = ["content-type: application/grpc", "te: trailers"]
            a["data"] = self.grpc_file
        return a

    def url_for(self, w, v):
        return self.url(v, "/bench.Echo/Ping" if v["up"] == "grpc" else "/")

    def run_saturation(self, w, proxy, v):
        p, pids = self.start_proxy(proxy, v)
        try:
            a = self.load_args(w, v)
            url = self.url_for(w, v)
            h2load(url, duration=self.args.warmup, **a)
            pids = tree(p.pid)
            (u0, s0), t0 = cpu_split(pids), time.monotonic()
            r = h2load(url, duration=self.args.duration, **a)
            (u1, s1), t1 = cpu_split(pids), time.monotonic()
            if p.poll() is not None:
                raise ProxyFailed(f"{proxy.name} exited during the run: {tail(p.bench_log)}")
            if r["ok"] == 0:
                raise ProxyFailed(f"no successful request ({r['failed']} failed)")
            return dict(cpu_per_request(u1 - u0, s1 - s0, r["ok"]), rps=r["rps"],
                        busy=(u1 - u0 + s1 - s0) / (t1 - t0), hwm_kib=mem_kib(pids, "VmHWM"), failed=r["failed"])
        finally:
            PROCS.stop(p)

    def run_latency(self, w, proxy, v, rate):
        p, pids = self.start_proxy(proxy, v)
        try:
            a = self.load_args(w, v)
            url = self.url_for(w, v)
            h2load(url, duration=self.args.warmup, **a)
            per_client = max(1, int(rate / a["clients"]))
            logf = os.path.join(self.workdir, "latency.tsv")
            pids = tree(p.pid)
            u0, s0 = cpu_split(pids)
            r = h2load(url, duration=self.args.duration, rps=per_client, logfile=logf, **a)
            u1, s1 = cpu_split(pids)
            lat = r["lat_us"] or []
            # CPU per request at the same offered load for every proxy (information beside the
            # saturated figure, where a proxy that idles waiting for the load core pays more wake-ups)
            fixed = cpu_per_request(u1 - u0, s1 - s0, r["ok"]) if r["ok"] else {}
            return {"rate": per_client * a["clients"], "p50_ms": (percentile(lat, 0.5) or 0) / 1000.0,
                    "p99_ms": (percentile(lat, 0.99) or 0) / 1000.0, "lat_failed": r["failed"],
                    "lat_rps": r["rps"], **{"fixed_" + k: v for k, v in fixed.items()}}
        finally:
            PROCS.stop(p)

    def run_churn(self, w, proxy, v):
        p, pids = self.start_proxy(proxy, v)
        try:
            url = self.url(v)
            hdr = ["Connection: close"]
            h2load(url, n=w["n"] // 10, clients=w["clients"], h1=True, headers=hdr)
            pids = tree(p.pid)
            logf = os.path.join(self.workdir, "churn.tsv")
            (u0, s0), t0 = cpu_split(pids), time.monotonic()
            r = h2load(url, n=w["n"], clients=w["clients"], h1=True, headers=hdr, logfile=logf)
            (u1, s1), t1 = cpu_split(pids), time.monotonic()
            if r["ok"] == 0:
                raise ProxyFailed(f"no successful request ({r['failed']} failed)")
            lat = r["lat_us"] or []
            return dict(cpu_per_request(u1 - u0, s1 - s0, r["ok"]), rps=r["rps"],
                        busy=(u1 - u0 + s1 - s0) / (t1 - t0), hwm_kib=mem_kib(pids, "VmHWM"), failed=r["failed"],
                        p50_ms=(percentile(lat, 0.5) or 0) / 1000.0, p99_ms=(percentile(lat, 0.99) or 0) / 1000.0)
        finally:
            PROCS.stop(p)

    def each_proxy(self, w, fn, rounds):
        """Runs fn(proxy, variant) for every proxy, interleaved over rounds.
        Returns {proxy: [result per round] | {"skip": why} | {"error": why}}."""
        out = {}
        for rnd in range(rounds):
            for proxy in self.proxies:
                if isinstance(out.get(proxy.name), dict):
                    continue  # unsupported or failed before
                v = self.variant(*w["variant"])
                try:
                    res = fn(proxy, v)
                    out.setdefault(proxy.name, []).append(res)
                except proxies.Unsupported as e:
                    out[proxy.name] = {"skip": str(e)}
                except ProxyFailed as e:
                    log(f"  {proxy.name}: {e}")
                    out[proxy.name] = {"error": str(e)}
        return out

    def workload_rr(self, w):
        sat = self.each_proxy(w, lambda proxy, v: self.run_saturation(w, proxy, v), self.args.rounds)
        rates = [statistics.median(r["rps"] for r in runs) for runs in sat.values() if isinstance(runs, list)]
        rate = int(0.5 * min(rates)) if rates else 0
        lat = {}
        if rate > 0:
            lat = self.each_proxy(w, lambda proxy, v: self.run_latency(w, proxy, v, rate), self.args.rounds)
        rows = {}
        for name, runs in sat.items():
            if not isinstance(runs, list):
                rows[name] = runs
                continue
            row = median_row(runs)
            lruns = lat.get(name)
            if isinstance(lruns, list):
                row.update(median_row(lruns))
            elif isinstance(lruns, dict):
                row["lat_note"] = lruns.get("error") or lruns.get("skip")
            rows[name] = row
        return {"rows": rows, "rate": rate}

    def workload_churn(self, w):
        return {"rows": finish_rows(self.each_proxy(w, lambda proxy, v: self.run_churn(w, proxy, v),
                                                    self.args.rounds))}

    # -- streaming ---------------------------------------------------------------------

    def transfer(self, base_url, size, upload_file):
        """Downloads and uploads `size` bytes through base_url; returns MB/s for each."""
        out = {}
        r = subprocess.run(on_cpu(LOAD_CPU) + ["curl", "-s", "-o", "/dev/null", "--max-time", "300", "-w",
                            "%{http_code} %{size_download} %{time_total}", f"{base_url}/big/{size}"],
                           capture_output=True, text=True)
        code, got, secs = (r.stdout.split() + ["0", "0", "0"])[:3]
        if code != "200" or int(got) != size:
            raise ProxyFailed(f"download: status {code}, {got} of {size} bytes")
        out["down_mbs"] = size / float(secs) / 1e6
        r = subprocess.run(on_cpu(LOAD_CPU) + ["curl", "-s", "--max-time", "300", "-H", "Expect:", "-T",
                            upload_file, "-w",
                            " %{http_code} %{time_total}", f"{base_url}/sink"], capture_output=True, text=True)
        parts = r.stdout.split()
        if len(parts) < 4 or parts[-2] != "200" or parts[1] != str(size):
            raise ProxyFailed(f"upload: {r.stdout.strip()[-200:]!r}")
        out["up_mbs"] = size / float(parts[-1]) / 1e6
        return out

    def workload_stream(self, w):
        size = w["size"]
        upload_file = os.path.join(self.workdir, "upload.bin")
        with open(upload_file, "wb") as f:
            f.truncate(size)  # sparse: reading it costs no disk
        with open(upload_file, "rb") as f:  # but the first read fills the page cache: not in a measured run
            while f.read(1 << 20):
                pass
        relay_bin = build_relay(self.build_dir)
        direct_runs, relay_runs = [], []

        def direct(rnd):
            direct_runs.append(self.transfer(f"http://127.0.0.1:{self.up_ports['h1']}", size, upload_file))

        def relay(rnd):
            """The reference row: a failure drops it, not the workload."""
            port = free_port()
            p = PROCS.start([relay_bin, str(port), str(self.up_ports["h1"])], PROXY_CPU, self.workdir, "relay")
            try:
                if not wait_port(port, proc=p):
                    raise ProxyFailed(f"relay did not start: {tail(p.bench_log)}")
                relay_runs.append(self.transfer(f"http://127.0.0.1:{port}", size, upload_file))
            except ProxyFailed as e:
                log(f"  relay.c: {e}")
            finally:
                PROCS.stop(p)

        def through(proxy, v):
            p, pids = self.start_proxy(proxy, v)
            try:
                rss0 = mem_kib(tree(p.pid), "VmRSS")
                res = self.transfer(f"http://127.0.0.1:{v['port']}", size, upload_file)
                pids = tree(p.pid)
                res["growth_kib"] = mem_kib(pids, "VmHWM") - rss0
                res["hwm_kib"] = mem_kib(pids, "VmHWM")
                return res
            finally:
                PROCS.stop(p)

        out = {}
        for rnd in range(self.args.rounds):
            direct(rnd)
            relay(rnd)
            part = self.each_proxy(dict(w, variant=("h1", "h1", True)), through, 1)
            for name, runs in part.items():
                if isinstance(runs, list):
                    if not isinstance(out.get(name), dict):
                        out.setdefault(name, []).extend(runs)
                else:
                    out[name] = runs
        os.unlink(upload_file)
        rows = finish_rows(out)
        d, r = median_row(direct_runs), (median_row(relay_runs) if relay_runs else {})
        for row in list(rows.values()) + [r]:
            if "down_mbs" in row:
                row["down_ratio"] = row["down_mbs"] / d["down_mbs"]
                row["up_ratio"] = row["up_mbs"] / d["up_mbs"]
        return {"rows": rows, "direct": d, "relay": r, "size": size}

    # -- idle connections -----------------------------------------------------------------

    def beside(self, p, v, h2, tag):
        """Requests at a fixed rate (BESIDE_RPS over 16 connections, open-loop) to the proxy `p`:
        with the idle connections open and again without them, so that a cost that grows with a
        proxy's connections (a walk over them per loop iteration or per request) shows."""
        pids = tree(p.pid)
        logf = os.path.join(self.workdir, "beside.tsv")
        u0, s0 = cpu_split(pids)
        try:
            r = h2load(self.url(v), clients=16, h1=not h2, duration=self.args.duration, rps=BESIDE_RPS // 16,
                       logfile=logf)
        except ProxyFailed as e:  # the memory figures of the row stay
            return {f"{tag}_note": str(e)}
        u1, s1 = cpu_split(pids)
        if r["ok"] == 0:
            return {f"{tag}_note": f"no successful request ({r['failed']} failed)"}
        lat = r["lat_us"] or []
        return {f"{tag}_cpu_us": (u1 - u0 + s1 - s0) * 1e6 / r["ok"],
                f"{tag}_p50_ms": (percentile(lat, 0.5) or 0) / 1000.0,
                f"{tag}_p99_ms": (percentile(lat, 0.99) or 0) / 1000.0, f"{tag}_failed": r["failed"]}

    def workload_idle(self, w):
        count = w["count"]

        def one(proxy, v, h2):
            p, pids = self.start_proxy(proxy, v)
            conns = []
            try:
                time.sleep(0.2)
                pids = tree(p.pid)
                rss0 = mem_kib(pids, "VmRSS")
                t0 = time.monotonic()
                conns, failures = idle.open_idle(v["port"], count, h2=h2)
                opened = time.monotonic() - t0
                time.sleep(0.5)
                pids = tree(p.pid)
                rss1 = mem_kib(pids, "VmRSS")
                if p.poll() is not None:
                    raise ProxyFailed(f"{proxy.name} exited: {tail(p.bench_log)}")
                good = count - failures
                if good < count * 0.95:
                    raise ProxyFailed(f"only {good} of {count} idle connections were set up")
                row = {"bytes_per_conn": (rss1 - rss0) * 1024.0 / good, "conns": good, "open_s": opened,
                       "rss_mib": rss1 / 1024.0}
                row.update(self.beside(p, v, h2, "busy"))
                idle.close_all(conns)
                conns = []
                wait_quiet(pids)  # the proxy has closed its side of them
                row.update(self.beside(p, v, h2, "alone"))
                return row
            finally:
                idle.close_all(conns)
                PROCS.stop(p)

        h1 = finish_rows(self.each_proxy(dict(w, variant=("h1", "h1")), lambda pr, v: one(pr, v, False), 1))
        h2 = finish_rows(self.each_proxy(dict(w, variant=("h2c", "h1")), lambda pr, v: one(pr, v, True), 1))
        return {"h1": h1, "h2": h2, "count": count}

    # -- config scale (Legate alone) ---------------------------------------------------------

    def legate_start_timed(self, bootstrap_doc, admin_port, tag, concurrency=1):
        """Starts Legate on a generated bootstrap (JSON); returns (seconds to /ready, RSS KiB, HWM KiB)."""
        rundir = os.path.join(self.workdir, "scale")
        os.makedirs(rundir, exist_ok=True)
        path = os.path.join(rundir, f"{tag}.json")
        with open(path, "w") as f:
            json.dump(bootstrap_doc, f)
        cmd = [self.legate_bin, "-c", path, "--concurrency", str(concurrency), "-l", "warning", "--disable-hot-restart"]
        t0 = time.monotonic()
        p = PROCS.start(cmd, PROXY_CPU, rundir, f"legate-{tag}")
        try:
            deadline = t0 + 120
            while time.monotonic() < deadline:
                if p.poll() is not None:
                    raise ProxyFailed(f"legate exited: {tail(p.bench_log)}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/ready", timeout=1) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                time.sleep(0.005)
            else:
                raise ProxyFailed("legate not ready within 120 s")
            ready = time.monotonic() - t0
            cpu = cpu_seconds(tree(p.pid))
            time.sleep(0.3)
            pids = tree(p.pid)
            stats_t0 = time.monotonic()
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/stats", timeout=60) as r:
                stats_lines = r.read().count(b"\n")
            stats_s = time.monotonic() - stats_t0
            return {"ready_s": ready, "cpu_s": cpu, "rss_kib": mem_kib(pids, "VmRSS"), "hwm_kib": mem_kib(pids, "VmHWM"),
                    "stats_lines": stats_lines, "stats_s": stats_s, "proc": p, "pids": pids}
        except BaseException:
            PROCS.stop(p)
            raise

    def scale_clusters(self, counts):
        """Static clusters at concurrency 2 (the bar's setting: per-worker state counts twice)."""
        out = {}
        base = None
        for n in [1] + list(counts):
            admin_port, port = free_port(), free_port()
            clusters = [proxies.legate_cluster(f"c{i}", self.up_ports["h1"]) for i in range(n)]
            doc = proxies.legate_bootstrap(admin_port, port, clusters, [proxies.legate_route("c0")])
            try:
                r = self.legate_start_timed(doc, admin_port, f"clusters-{n}", concurrency=2)
                PROCS.stop(r.pop("proc"))
                r.pop("pids")
            except ProxyFailed as e:
                out[n] = {"error": str(e)}
                continue
            if n == 1:
                base = r
                continue
            if base is not None:
                r["bytes_per_cluster"] = (r["rss_kib"] - base["rss_kib"]) * 1024.0 / (n - 1)
            out[n] = r
            log(f"  {n} clusters: ready in {r['ready_s']:.2f} s, RSS {r['rss_kib'] / 1024:.1f} MiB")
        return out

    def scale_routes(self, sizes):
        """End-to-end: proxy CPU per request with N routes (the request hits the last one)."""
        out = {}
        for kind in ("prefix", "path"):
            for n in sizes:
                admin_port, port = free_port(), free_port()
                if kind == "prefix":
                    routes = [proxies.legate_route("up", match={"prefix": f"/r{i}/"}) for i in range(n)]
                    target = f"/r{n - 1}/x"
                else:
                    routes = [proxies.legate_route("up", match={"path": f"/r{i}"}) for i in range(n)]
                    target = f"/r{n - 1}"
                doc = proxies.legate_bootstrap(admin_port, port, [proxies.legate_cluster("up", self.up_ports["h1"])],
                                               routes)
                try:
                    r = self.legate_start_timed(doc, admin_port, f"routes-{kind}-{n}")
                except ProxyFailed as e:
                    out[f"{kind}/{n}"] = {"error": str(e)}
                    continue
                p, pids = r.pop("proc"), r.pop("pids")
                try:
                    url = f"http://127.0.0.1:{port}{target}"
                    h2load(url, clients=32, h1=True, duration=self.args.warmup)
                    c0 = cpu_seconds(pids)
                    res = h2load(url, clients=32, h1=True, duration=self.args.route_duration)
                    c1 = cpu_seconds(pids)
                    if res["ok"] == 0:
                        raise ProxyFailed(f"no successful request to {target} ({res['failed']} failed)")
                    out[f"{kind}/{n}"] = {"cpu_us": (c1 - c0) * 1e6 / res["ok"], "rps": res["rps"],
                                          "ready_s": r["ready_s"], "rss_kib": r["rss_kib"]}
                except ProxyFailed as e:
                    out[f"{kind}/{n}"] = {"error": str(e)}
                finally:
                    PROCS.stop(p)
        return out

    def route_micro(self, sizes):
        out = {}
        if self.route_bench is None:
            return out
        for kind in ("prefix", "path", "regex"):
            for n in sizes:
                if kind == "regex" and n > 1000:
                    continue  # linear by design (Envoy too); 10k regexes take seconds per match
                r = subprocess.run(on_cpu(PROXY_CPU) + [self.route_bench, kind, str(n)], capture_output=True,
                                   text=True, timeout=120)
                if r.returncode != 0:
                    out[f"{kind}/{n}"] = {"error": (r.stderr or r.stdout).strip()[-200:]}
                    continue
                kv = dict(item.split("=", 1) for item in r.stdout.split())
                out[f"{kind}/{n}"] = {"ns": float(kv["ns_per_match"]), "load_ms": float(kv["load_ms"])}
        return out

    def scale_xds(self, n_clusters, n_routes):
        """N EDS clusters pushed over ADS (CDS then EDS), then an RDS update of M routes, from the
        test control plane (tools/xds_control) in this process. Apply time = from the control
        plane's send of a response to Legate's ACK of it (Legate ACKs once the update is compiled
        and published); the control plane's own time to build and serialize is left out."""
        sys.path.insert(0, os.path.join(REPO, "tools"))
        from xds_control import resources as rs
        from xds_control.server import XdsServer
        srv = XdsServer(port=0).start()
        admin_port = free_port()
        doc = self.xds_bootstrap(srv.port, admin_port)
        ads = {"ads": {}, "resource_api_version": "V3"}
        out = {}
        r = None
        try:
            srv.update(clusters=[], listeners=[])
            r = self.legate_start_timed(doc, admin_port, "xds", concurrency=2)
            srv.wait_ack(rs.CLUSTER, timeout=30)
            up = {"socket_address": {"address": "127.0.0.1", "port_value": self.up_ports["h1"]}}
            clusters = [{"name": f"c{i}", "type": "EDS", "connect_timeout": "1s", "eds_cluster_config": {"eds_config": ads}}
                        for i in range(n_clusters)]
            clas = [{"cluster_name": f"c{i}", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": up}}]}]}
                    for i in range(n_clusters)]
            mark = srv.mark()
            vs = srv.update(clusters=clusters, endpoints=clas)
            cds = srv.wait_ack(rs.CLUSTER, version=vs[rs.CLUSTER], since=mark, timeout=120)
            eds = srv.wait_ack(rs.ENDPOINT, version=vs[rs.ENDPOINT], since=mark, timeout=120)
            sent = [s for s in srv.sent if s["seq"] > mark]
            cds_sent = max(s["time"] for s in sent if s["type_url"] == rs.CLUSTER and s["version_info"] == vs[rs.CLUSTER])
            eds_sent = max(s["time"] for s in sent if s["type_url"] == rs.ENDPOINT and s["version_info"] == vs[rs.ENDPOINT])
            out["cds_s"], out["eds_s"] = cds["time"] - cds_sent, eds["time"] - eds_sent
            out["clusters"] = n_clusters
            out["rss_kib"] = mem_kib(r["pids"], "VmRSS")
            listener = {"name": "l", "address": proxies.sockaddr(free_port()), "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager", "typed_config": {
                    "@type": proxies.HCM_TYPE, "stat_prefix": "l", "rds": {"route_config_name": "r", "config_source": ads},
                    "http_filters": [{"name": "envoy.filters.http.router",
                                      "typed_config": {"@type": proxies.ROUTER_TYPE}}]}}]}]}

            def route_config(n, tag):
                routes = [proxies.legate_route("c0", match={"prefix": f"/r{i}/"}) for i in range(n)]
                routes.append(proxies.legate_route("c0", match={"prefix": f"/{tag}"}))
                return {"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": routes}]}

            srv.update(listeners=[listener], routes=[route_config(1, "first")])
            srv.wait_ack(rs.ROUTE, timeout=30)
            times = []
            for k in range(3):  # the first update replaces a one-route table, the next ones a full one
                mark = srv.mark()
                v = srv.update(routes=[route_config(n_routes, f"u{k}")])[rs.ROUTE]
                ack = srv.wait_ack(rs.ROUTE, version=v, since=mark, timeout=60)
                times.append(ack["time"] - max(s["time"] for s in srv.sent if s["seq"] > mark and s["type_url"] == rs.ROUTE))
            out["rds_ms"] = statistics.median(times) * 1000
            out["routes"] = n_routes
        except (ProxyFailed, AssertionError) as e:
            out["error"] = str(e)[:300]
        finally:
            if r is not None:
                PROCS.stop(r["proc"])
            srv.close()
        log(f"  xDS: {out}")
        return out

    # -- live traffic during xDS updates (issue 4: p99 during a 10k update <= 2x idle p99) ------------

    LIVE_CLIENTS = 16
    LIVE_RPS_PER_CLIENT = 250  # 4,000 req/s in all, a fraction of Legate's saturated h1 rate

    def xds_bootstrap(self, srv_port, admin_port):
        """Legate on ADS (CDS + LDS) from the test control plane at srv_port."""
        sa = {"socket_address": {"address": "127.0.0.1", "port_value": srv_port}}
        ads = {"ads": {}, "resource_api_version": "V3"}
        return {"admin": {"address": proxies.sockaddr(admin_port)}, "node": {"id": "bench", "cluster": "bench"},
                "static_resources": {"clusters": [{
                    "name": "xds", "type": "STATIC", "connect_timeout": "1s",
                    "typed_extension_protocol_options": {proxies.HPO_KEY: {
                        "@type": proxies.HPO_TYPE, "explicit_http_config": {"http2_protocol_options": {}}}},
                    "load_assignment": {"cluster_name": "xds", "endpoints": [{"lb_endpoints": [
                        {"endpoint": {"address": sa}}]}]}}]},
                "dynamic_resources": {"ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
                                                     "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]},
                                      "cds_config": ads, "lds_config": ads}}

    def live_resources(self, rs, n_clusters, n_routes, port):
        """Two versions (A, B) of everything the live run pushes, packed once up front so that the
        control plane (on the load core) does little work inside a measured window. The cluster
        "live" (with its endpoint) and the route "/live" are the same in both versions: they carry
        the traffic; every other cluster, endpoint set and the route table differ between A and B,
        so each push is a full update of 10,000 resources (or a 10,000-route table)."""
        ads = {"ads": {}, "resource_api_version": "V3"}
        up = {"socket_address": {"address": "127.0.0.1", "port_value": self.up_ports["h1"]}}

        def cluster(name, timeout):
            return rs.to_any({"name": name, "type": "EDS", "connect_timeout": timeout,
                              "eds_cluster_config": {"eds_config": ads}}, rs.CLUSTER)

        def cla(name, weight):
            return rs.to_any({"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": up}, "load_balancing_weight": weight}]}]}, rs.ENDPOINT)

        def route_config(tag):
            routes = [proxies.legate_route(f"c{i % n_clusters}", match={"prefix": f"/r{i}/"}) for i in range(n_routes)]
            routes.append(proxies.legate_route("live", match={"prefix": "/live"}))
            routes.append(proxies.legate_route("c0", match={"prefix": f"/{tag}"}))
            return rs.to_any({"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": routes}]},
                             rs.ROUTE)

        live_c, live_e = cluster("live", "1s"), cla("live", 1)
        out = {}
        for tag, timeout, weight in (("a", "1s", 1), ("b", "2s", 2)):
            out[tag] = {"clusters": [live_c] + [cluster(f"c{i}", timeout) for i in range(n_clusters)],
                        "endpoints": [live_e] + [cla(f"c{i}", weight) for i in range(n_clusters)],
                        "routes": [route_config(tag)]}
        out["listener"] = rs.to_any({"name": "l", "address": proxies.sockaddr(port), "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager", "typed_config": {
                "@type": proxies.HCM_TYPE, "stat_prefix": "l", "rds": {"route_config_name": "r", "config_source": ads},
                "http_filters": [{"name": "envoy.filters.http.router",
                                  "typed_config": {"@type": proxies.ROUTER_TYPE}}]}}]}]}, rs.LISTENER)
        return out

    @staticmethod
    def thread_cpu(pid):
        """{tid: CPU seconds (user+system)} for every thread of pid."""
        out = {}
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            return out
        for t in tids:
            try:
                with open(f"/proc/{pid}/task/{t}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                out[int(t)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
            except (OSError, IndexError, ValueError):
                pass
        return out

    def live_window(self, url, seconds, push=None):
        """Open-loop HTTP/1.1 load (h2load --rps, per-request log) through Legate for `seconds`; when
        push is given, calls push(k) back to back while the load runs (each returns the update's
        (start, end) in wall-clock seconds) and stops before a push would outlast the load."""
        logf = os.path.join(self.workdir, "live.tsv")
        box = {}

        def load():
            try:
                box["r"] = h2load(url, clients=self.LIVE_CLIENTS, h1=True, duration=seconds,
                                  rps=self.LIVE_RPS_PER_CLIENT, logfile=logf, raw_log=True, timeout=seconds + 60,
                                  rt=True)
            except ProxyFailed as e:
                box["error"] = str(e)

        th = threading.Thread(target=load, daemon=True)
        t_end = time.time() + seconds
        th.start()
        intervals = []
        cp0 = time.process_time()
        if push is not None:
            time.sleep(0.3)  # h2load connects and settles before the first update
            last = 0.0
            while th.is_alive() and time.time() + 1.2 * last + 0.1 < t_end:
                a, b = push(len(intervals))
                intervals.append((a, b))
                last = b - a
        cp_cpu = time.process_time() - cp0  # this process: the control plane's threads (h2load's log is read later)
        th.join()
        if "error" in box:
            raise ProxyFailed(box["error"])
        box["r"]["cp_cpu_s"] = cp_cpu
        return box["r"], intervals

    @staticmethod
    def live_figures(r, intervals=None):
        """p50/p99 and failures of a window's requests; with intervals, only the requests whose
        [start, start + duration] overlaps an update's [send, ACK] count."""
        rows = r["log"]
        if intervals is not None:
            iv = [(int(a * 1e6), int(b * 1e6)) for a, b in intervals]
            rows = [x for x in rows if any(x[0] < b and x[0] + x[2] > a for a, b in iv)]
        lat = sorted(x[2] for x in rows if 200 <= x[1] < 300)
        out = {"requests": len(rows), "non2xx": sum(1 for x in rows if not 200 <= x[1] < 300),
               "p50_ms": (percentile(lat, 0.5) or 0) / 1000.0, "p99_ms": (percentile(lat, 0.99) or 0) / 1000.0,
               "max_ms": (lat[-1] if lat else 0) / 1000.0}
        if intervals is not None and r["log"]:
            t0 = min(x[0] for x in r["log"]) / 1e6
            t1 = max(x[0] + x[2] for x in r["log"]) / 1e6
            out["coverage"] = sum(b - a for a, b in intervals) / max(1e-9, t1 - t0)
        return out

    def find_worker(self, pid, url):
        """Legate's worker thread (--concurrency 1): the one that gains the most CPU under a short load."""
        before = self.thread_cpu(pid)
        h2load(url, clients=self.LIVE_CLIENTS, h1=True, duration=1)
        after = self.thread_cpu(pid)
        return max(after, key=lambda t: after[t] - before.get(t, 0.0))

    @staticmethod
    def pin_split(pid, worker):
        """Leaves the worker on the proxy core and moves every other thread of pid (the control thread,
        admin, the xDS client's) to the load core."""
        for t in os.listdir(f"/proc/{pid}/task"):
            try:
                os.sched_setaffinity(int(t), {int(PROXY_CPU)} if int(t) == worker else {int(LOAD_CPU)})
            except OSError:
                pass

    @staticmethod
    def pin_idle(pid, worker):
        """Every thread of pid back on the proxy core, the control thread (the main one) SCHED_IDLE, as
        `--control-thread-priority idle` sets it (set here on the running process: the modes share it)."""
        for t in os.listdir(f"/proc/{pid}/task"):
            try:
                os.sched_setaffinity(int(t), {int(PROXY_CPU)})
            except OSError:
                pass
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))

    def quiet_control_plane(self, quiet):
        """The test control plane runs in this process, on the load core beside h2load and the upstream;
        in production it is on another machine. During the live windows it is SCHED_IDLE and the
        instruments, h2load (on_cpu(rt=True)) and the upstream, are SCHED_RR: under EEVDF SCHED_IDLE is
        only a small weight, and a Python thread building a 10,000-resource response kept a runnable
        h2load or upstream off the core for up to a tick (4 ms: perf sched), which put the p99 of
        requests that never touched Legate at 2-4x idle. Real-time instruments are never delayed by
        it; Legate's core is left as it is."""
        for t in os.listdir(f"/proc/{os.getpid()}/task"):
            try:
                os.sched_setscheduler(int(t), os.SCHED_IDLE if quiet else os.SCHED_OTHER, os.sched_param(0))
            except OSError:
                pass
        for t in os.listdir(f"/proc/{self.upstream.pid}/task"):
            try:
                os.sched_setscheduler(int(t), os.SCHED_RR if quiet else os.SCHED_OTHER, os.sched_param(int(quiet)))
            except OSError:
                pass  # not root: on_cpu() leaves h2load SCHED_OTHER as well

    @staticmethod
    def run_queue_wait(pid, tid):
        """Seconds the thread has spent runnable but waiting for a CPU (/proc/<pid>/task/<tid>/schedstat)."""
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                return int(f.read().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            return 0.0

    @staticmethod
    def push_prepared(srv, prepared):
        """XdsServer.update() for resources already turned into the server's entries (XdsServer._entries,
        done once up front): the control plane shares the load core with h2load, so a push should cost
        it no more than building and sending the response. Returns {type_url: version}."""
        with srv._lock:
            for t in srv._order(prepared):
                if srv._replace(t, prepared[t]):
                    srv._push_locked(t)
            return {t: f"v{srv._versions.get(t, 0)}" for t in prepared}

    def xds_pusher(self, srv, rs, prepared):
        """push(kinds) -> a function that pushes the other version (A/B) of those kinds, waits for every
        ACK and returns (send of the first response, last ACK) in wall-clock seconds."""
        off = time.time() - time.monotonic()  # the control plane records monotonic times
        state = {}  # kinds -> pushes so far (version A is installed, then B, A, ...)

        def push(kinds):
            types = [rs.KINDS[kind] for kind in kinds]

            def one(_):
                state[kinds] = state.get(kinds, 0) + 1
                v = prepared["b" if state[kinds] % 2 else "a"]
                mark = srv.mark()
                vs = self.push_prepared(srv, {t: v[t] for t in types})
                last = None
                for t in types:
                    last = srv.wait_ack(t, version=vs[t], since=mark, timeout=120)
                sent = min(x["time"] for x in srv.responses(types[0], since=mark) if x["version_info"] == vs[types[0]])
                return sent + off, last["time"] + off
            return one
        return push

    def live_mode(self, proc, url, seconds, mode, push, m):
        """One pinning mode: the idle window, then a CDS+EDS and an RDS window; figures go into m. Mode
        "direct" is the control: the same load straight to the upstream while Legate (whole process
        on core 0) takes the same pushes, so what the pushes cost the load core shows on its own."""
        pid = proc.pid
        worker = m["worker_tid"] = self.find_worker(pid, url)
        if mode == "direct":
            url = f"http://127.0.0.1:{self.up_ports['h1']}/live/x"
        if mode == "split":
            self.pin_split(pid, worker)
        elif mode == "idle":
            self.pin_idle(pid, worker)
        h2load(url, clients=self.LIVE_CLIENTS, h1=True, duration=1, rps=self.LIVE_RPS_PER_CLIENT)
        cpu0, wait0 = self.thread_cpu(pid), self.run_queue_wait(pid, worker)
        win, _ = self.live_window(url, seconds)
        m["idle"] = dict(self.live_figures(win), h2load_failed=win["failed"],
                         worker_wait_ms=(self.run_queue_wait(pid, worker) - wait0) * 1e3,
                         worker_cpu_s=self.thread_cpu(pid).get(worker, 0.0) - cpu0.get(worker, 0.0))
        for name, kinds in (("cds_eds", ("clusters", "endpoints")), ("rds", ("routes",))):
            m[name] = self.live_update(pid, worker, url, seconds, push, kinds, m["idle"])
            if proc.poll() is not None:
                raise ProxyFailed(f"legate exited: {tail(proc.bench_log)}")
        # a second idle window after the updates: this machine's idle p99 moves between runs (1.0 to
        # 3.1 ms seen), so the ratios use the lower of the two idle p99s (the stricter baseline)
        win, _ = self.live_window(url, seconds)
        m["idle_after"] = dict(self.live_figures(win), h2load_failed=win["failed"])
        base = min(x for x in (m["idle"]["p99_ms"], m["idle_after"]["p99_ms"]) if x) if m["idle"]["p99_ms"] else None
        m["idle"]["p99_base_ms"] = base
        for name in ("cds_eds", "rds"):
            m[name]["ratio"] = ratio(m[name]["p99_ms"], base)

    def live_update(self, pid, worker, url, seconds, push, kinds, idle):
        """One window of pushes of `kinds` under load; returns its figures."""
        rss0 = mem_kib([pid], "VmRSS")
        cpu0, wait0 = self.thread_cpu(pid), self.run_queue_wait(pid, worker)
        win, iv = self.live_window(url, seconds, push(kinds))
        cpu1, wait1 = self.thread_cpu(pid), self.run_queue_wait(pid, worker)
        rss1 = mem_kib([pid], "VmRSS")
        # h2load's connections are closed now; the snapshots they kept alive go at the worker's next
        # apply: one unmeasured RDS push, so that the next window starts clean
        push(("routes",))(0)
        time.sleep(0.3)
        cpu2 = self.thread_cpu(pid)
        f = self.live_figures(win, iv)
        whole = self.live_figures(win)
        f.update(window_p99_ms=whole["p99_ms"], window_non2xx=whole["non2xx"], h2load_failed=win["failed"],
                 cp_cpu_s=win["cp_cpu_s"], pushes=len(iv), apply_s=[round(b - a, 4) for a, b in iv],
                 ratio=ratio(f["p99_ms"], idle["p99_ms"]),
                 rss_mib=[rss0 / 1024.0, rss1 / 1024.0, mem_kib([pid], "VmRSS") / 1024.0],
                 cleanup_worker_ms=(cpu2.get(worker, 0.0) - cpu1.get(worker, 0.0)) * 1e3,
                 worker_wait_ms=(wait1 - wait0) * 1e3, worker_cpu_s=cpu1.get(worker, 0.0) - cpu0.get(worker, 0.0),
                 control_cpu_s=sum(c - cpu0.get(t, 0.0) for t, c in cpu1.items() if t != worker))
        if iv:
            # the worker's CPU beyond what the same number of requests cost it in the idle window: what
            # it spends on the updates themselves (a pointer swap would cost ~0)
            per_request = idle["worker_cpu_s"] / max(1, idle["requests"])
            f["worker_ms_per_push"] = (f["worker_cpu_s"] - per_request * len(win["log"])) * 1e3 / len(iv)
        return f

    def scale_xds_live(self, n_clusters, n_routes):
        """Issue 4's bar: request p99 while Legate applies 10,000-cluster CDS+EDS pushes and 10,000-route
        RDS pushes, against the idle p99 of the same load, with the whole process on the proxy core
        (as every other workload), then with only the worker there and the other threads on the load core."""
        sys.path.insert(0, os.path.join(REPO, "tools"))
        from xds_control import resources as rs
        from xds_control.server import XdsServer
        seconds = 4 if self.quick else 8
        port, admin_port = free_port(), free_port()
        t0 = time.monotonic()
        res = self.live_resources(rs, n_clusters, n_routes, port)
        out = {"clusters": n_clusters, "routes": n_routes, "seconds": seconds,
               "rate": self.LIVE_CLIENTS * self.LIVE_RPS_PER_CLIENT, "pack_s": time.monotonic() - t0, "modes": {}}
        srv = XdsServer(port=0).start()
        r = None
        try:
            a = res["a"]
            srv.update(clusters=a["clusters"], endpoints=a["endpoints"], listeners=[res["listener"]],
                       routes=a["routes"])
            r = self.legate_start_timed(self.xds_bootstrap(srv.port, admin_port), admin_port, "xds-live")
            srv.wait_ack(rs.ROUTE, timeout=120)
            url = f"http://127.0.0.1:{port}/live/x"
            deadline = time.monotonic() + 30
            while True:
                try:
                    with urllib.request.urlopen(url, timeout=2) as resp:
                        if resp.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise ProxyFailed(f"no 200 from {url} after the initial push")
                time.sleep(0.05)
            prepared = {tag: {rs.KINDS[kind]: srv._entries(rs.KINDS[kind], res[tag][kind], None)
                              for kind in ("clusters", "endpoints", "routes")} for tag in ("a", "b")}
            push = self.xds_pusher(srv, rs, prepared)
            self.quiet_control_plane(True)
            modes = os.environ.get("BENCH_LIVE_MODES", "direct,core0,split,idle").split(",")
            for mode in modes:  # idle last: the control thread stays SCHED_IDLE
                out["modes"][mode] = m = {}
                self.live_mode(r["proc"], url, seconds, mode, push, m)
                log(f"  live {mode}: idle p99 {m['idle']['p99_ms']:.2f} / {m['idle_after']['p99_ms']:.2f} ms, "
                    f"CDS+EDS {m['cds_eds']['p99_ms']:.2f} ms "
                    f"({m['cds_eds']['pushes']} pushes), RDS {m['rds']['p99_ms']:.2f} ms ({m['rds']['pushes']} pushes)")
        except (ProxyFailed, AssertionError) as e:
            out["error"] = str(e)[:300]
            log(f"  live: {out['error']}")
        finally:
            self.quiet_control_plane(False)
            if r is not None:
                PROCS.stop(r["proc"])
            srv.close()
        return out

    def workload_scale(self, w):
        if not any(p.name == "legate" for p in self.proxies):
            return {"skip": "legate not selected"}
        log("  clusters")
        clusters = self.scale_clusters(w["clusters"])
        log("  clusters and routes over xDS")
        xds = self.scale_xds(w["xds_clusters"], w["xds_routes"])
        log("  live traffic during xDS updates")
        xds["live"] = self.scale_xds_live(w["xds_clusters"], w["xds_routes"])
        log("  routes (end to end)")
        routes = self.scale_routes(w["routes"])
        log("  routes (micro-benchmark)")
        micro = self.route_micro(w["routes"])
        return {"clusters": clusters, "xds": xds, "routes": routes, "micro": micro}

    # -- driver ----------------------------------------------------------------------------

    def run(self, workloads):
        for w in workloads:
            log(f"workload {w['id']}: {w['title']}")
            t0 = time.monotonic()
            kind = w["kind"]
            res = getattr(self, f"workload_{kind}")(w)
            res["seconds"] = time.monotonic() - t0
            self.results[w["id"]] = res
            log(f"workload {w['id']} done in {res['seconds']:.0f} s")


def median_row(runs):
    row = {}
    for k in runs[0]:
        vals = [r[k] for r in runs if isinstance(r.get(k), (int, float))]
        if vals:
            row[k] = statistics.median(vals)
    row["rounds"] = len(runs)
    return row


def finish_rows(per_proxy):
    return {name: (median_row(runs) if isinstance(runs, list) else runs) for name, runs in per_proxy.items()}


# ---- workloads -------------------------------------------------------------------------

def workloads(quick):
    return [
        {"id": "1", "kind": "rr", "title": "HTTP/1.1 keep-alive, small GET, HTTP/1.1 upstream",
         "variant": ("h1", "h1"), "clients": 32},
        {"id": "2a", "kind": "rr", "title": "h2c downstream (10 streams/conn), HTTP/1.1 upstream",
         "variant": ("h2c", "h1"), "clients": 8, "streams": 10},
        {"id": "2b", "kind": "rr", "title": "h2c downstream (10 streams/conn), HTTP/2 upstream",
         "variant": ("h2c", "h2"), "clients": 8, "streams": 10},
        {"id": "3", "kind": "rr", "title": "gRPC unary, h2c both sides (echo upstream)",
         "variant": ("h2c", "grpc"), "clients": 8, "streams": 10},
        {"id": "4", "kind": "churn", "title": "new connection per request (HTTP/1.1, Connection: close)",
         "variant": ("h1", "h1"), "clients": 16, "n": 3000 if quick else 20000},
        {"id": "5a", "kind": "churn", "title": "TLS full handshake per request (ECDSA P-256, no resumption)",
         "variant": ("tls", "h1"), "clients": 16, "n": 1000 if quick else 5000},
        {"id": "5b", "kind": "rr", "title": "TLS keep-alive, small GET (HTTP/1.1 over TLS)",
         "variant": ("tls", "h1"), "clients": 32},
        {"id": "6", "kind": "stream", "title": "streaming upload and download through the proxy",
         "size": (64 << 20) if quick else (1 << 30)},
        {"id": "7", "kind": "idle", "title": "idle connections (HTTP/1.1 and h2c)",
         "count": 1000 if quick else idle_count()},
        {"id": "8", "kind": "scale", "title": "config scale (Legate alone)",
         "clusters": [1000, 10000] if quick else [1000, 10000, 100000], "routes": [10, 1000, 10000],
         "xds_clusters": 10000, "xds_routes": 10000},
    ]


BESIDE_RPS = 4000  # workload 7's requests beside the idle connections


def idle_count():
    """10,000 unless the fd hard limit is lower (HAProxy needs two fds per connection)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY or hard >= 20300:
        return 10000
    return max(100, (proxies.haproxy_maxconn() - 100) // 100 * 100)


# ---- report ----------------------------------------------------------------------------

def fmt(v, spec):
    return format(v, spec) if isinstance(v, (int, float)) else "-"


def note_of(row):
    return row.get("skip") or row.get("error") or ""


def ratio(a, b):
    return a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > 0 else None


def best_peer(rows, key, peers=("nginx", "haproxy"), lower=True):
    vals = [(rows[p][key], p) for p in peers if p in rows and isinstance(rows[p].get(key), (int, float))]
    if not vals:
        return None, None
    return (min(vals) if lower else max(vals))


def report_rr(w, res, lines, bar):
    rows = res["rows"]
    lines.append(f"\nFixed rate for latency: {res['rate']} req/s (half the slowest proxy's saturated rate).\n")
    lines.append("| proxy | req/s (saturated) | CPU µs/req | user µs/req | sys µs/req | proxy core busy | "
                 "CPU µs/req at fixed rate | p50 ms | p99 ms | peak RSS MiB | Legate/peer CPU | note |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    lg = rows.get("legate", {})
    for name, row in rows.items():
        note = note_of(row) or row.get("lat_note", "")
        if row.get("failed"):
            note += f" {int(row['failed'])} failed requests"
        r = ratio(lg.get("cpu_us"), row.get("cpu_us")) if name != "legate" else None
        lines.append(f"| {name} | {fmt(row.get('rps'), ',.0f')} | {fmt(row.get('cpu_us'), '.2f')} | "
                     f"{fmt(row.get('user_us'), '.2f')} | {fmt(row.get('sys_us'), '.2f')} | "
                     f"{fmt(row.get('busy', 0) * 100 if 'busy' in row else None, '.0f')}% | "
                     f"{fmt(row.get('fixed_cpu_us'), '.2f')} | "
                     f"{fmt(row.get('p50_ms'), '.3f')} | {fmt(row.get('p99_ms'), '.3f')} | "
                     f"{fmt(row.get('hwm_kib', 0) / 1024 if 'hwm_kib' in row else None, '.1f')} | "
                     f"{fmt(r, '.2f')} | {note.strip()} |")
    if w["id"] in ("1", "2a", "2b", "3"):
        peers = ("nginx",) if w["id"] == "3" else ("nginx", "haproxy")
        best, who = best_peer(rows, "cpu_us", peers)
        r = ratio(lg.get("cpu_us"), best)
        bp99, pwho = best_peer(rows, "p99_ms", peers)
        if r is None:
            bar.append(f"| {w['id']} CPU/req vs best of {'/'.join(peers)} | ≤ 0.80 | - | no figure |")
        else:
            bar.append(f"| {w['id']} CPU/req vs best of {'/'.join(peers)} ({who}) | ≤ 0.80 | {r:.2f} | "
                       f"{'met' if r <= 0.8 else 'NOT met'} |")
            bar.append(user_cpu_line(w["id"], lg, rows[who], who))
            bar.append(fixed_rate_cpu_line(w["id"], res["rate"], lg, rows, peers))
        if lg.get("p99_ms") is not None and bp99 is not None:
            bar.append(f"| {w['id']} p99 at fixed rate vs {pwho} | ≤ 1.00 | {lg['p99_ms'] / bp99:.2f} | "
                       f"{'met' if lg['p99_ms'] <= bp99 else 'NOT met'} |")


def fixed_rate_cpu_line(wid, rate, lg, rows, peers):
    """Information under a CPU bar: CPU per request in the fixed-rate run, where every proxy gets the
    same offered load. At saturation the load core is usually the bottleneck, and a proxy that waits
    for it more often sleeps and is woken more often per request."""
    best, who = best_peer(rows, "fixed_cpu_us", peers)
    r = ratio(lg.get("fixed_cpu_us"), best)
    return (f"| {wid} CPU/req at the fixed rate ({rate:,} req/s) vs best of {'/'.join(peers)} ({who or '-'}) "
            f"(information) | - | {fmt(r, '.2f')} | information |")


def report_churn(w, res, lines, bar):
    rows = res["rows"]
    lines.append("\nClosed loop, 16 concurrent clients (h2load cannot pace reconnecting clients), so the "
                 "latencies are at saturation.\n")
    lines.append("| proxy | conn+req/s | CPU µs/req | user µs/req | sys µs/req | proxy core busy | p50 ms | p99 ms | "
                 "peak RSS MiB | Legate/peer CPU | note |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    lg = rows.get("legate", {})
    for name, row in rows.items():
        r = ratio(lg.get("cpu_us"), row.get("cpu_us")) if name != "legate" else None
        note = note_of(row) + (f" {int(row['failed'])} failed" if row.get("failed") else "")
        lines.append(f"| {name} | {fmt(row.get('rps'), ',.0f')} | {fmt(row.get('cpu_us'), '.2f')} | "
                     f"{fmt(row.get('user_us'), '.2f')} | {fmt(row.get('sys_us'), '.2f')} | "
                     f"{fmt(row.get('busy', 0) * 100 if 'busy' in row else None, '.0f')}% | "
                     f"{fmt(row.get('p50_ms'), '.3f')} | {fmt(row.get('p99_ms'), '.3f')} | "
                     f"{fmt(row.get('hwm_kib', 0) / 1024 if 'hwm_kib' in row else None, '.1f')} | "
                     f"{fmt(r, '.2f')} | {note.strip()} |")


def user_cpu_line(wid, lg, peer, who):
    """Information under a CPU bar: the same ratio over user-space CPU only (the kernel's share is
    mostly the same syscalls for every proxy on this VM, so this shows where a difference comes from)."""
    r = ratio(lg.get("user_us"), peer.get("user_us"))
    return (f"| {wid} user-space CPU/req vs {who} (information; user µs {fmt(lg.get('user_us'), '.2f')} vs "
            f"{fmt(peer.get('user_us'), '.2f')}, system µs {fmt(lg.get('sys_us'), '.2f')} vs "
            f"{fmt(peer.get('sys_us'), '.2f')}) | - | {fmt(r, '.2f')} | information |")


def report_stream(w, res, lines, bar):
    d = res["direct"]
    lines.append(f"\n{res['size'] >> 20} MiB each way with curl; direct path (no proxy): download "
                 f"{d['down_mbs']:.0f} MB/s, upload {d['up_mbs']:.0f} MB/s.\n")
    lines.append("| proxy | download MB/s | vs direct | upload MB/s | vs direct | RSS growth MiB | note |")
    lines.append("|---|---:|---:|---:|---:|---:|---|")
    r = res.get("relay") or {}
    if "down_ratio" in r:
        lines.append(f"| relay.c (reference) | {r['down_mbs']:.0f} | {r['down_ratio']:.2f} | {r['up_mbs']:.0f} | "
                     f"{r['up_ratio']:.2f} | - | recv/send copy loop on the proxy core: the hop's own cost |")
    for name, row in res["rows"].items():
        lines.append(f"| {name} | {fmt(row.get('down_mbs'), '.0f')} | {fmt(row.get('down_ratio'), '.2f')} | "
                     f"{fmt(row.get('up_mbs'), '.0f')} | {fmt(row.get('up_ratio'), '.2f')} | "
                     f"{fmt(row.get('growth_kib', 0) / 1024 if 'growth_kib' in row else None, '.1f')} | "
                     f"{note_of(row)} |")
    lg = res["rows"].get("legate", {})
    if "down_ratio" in lg:
        worst = min(lg["down_ratio"], lg["up_ratio"])
        bar.append(f"| 6 throughput vs direct path (worse direction) | ≥ 0.90 | {worst:.2f} | "
                   f"{'met' if worst >= 0.9 else 'NOT met'} |")
        if "down_ratio" in r:
            rel = min(lg["down_mbs"] / r["down_mbs"], lg["up_mbs"] / r["up_mbs"])
            bar.append(f"| 6 throughput vs bench/relay.c on the proxy core (information; worse direction) | - | "
                       f"{rel:.2f} | information |")
        g = lg["growth_kib"] / 1024
        bar.append(f"| 6 RSS growth MiB | < 16 | {g:.1f} | {'met' if g < 16 else 'NOT met'} |")


def report_beside(res, lines):
    lines.append(f"\nRequests at {BESIDE_RPS:,}/s over 16 more connections (open-loop, h2load --rps, the "
                 "idle connections' protocol) while the idle connections stay open, and again after they "
                 "closed: a cost that grows with a proxy's connections shows as the difference.\n")
    lines.append("| proxy | protocol | CPU µs/req with idle conns | without | p50 ms with | without | p99 ms with "
                 "| without |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|")
    for proto in ("h1", "h2"):
        for name, a in res[proto].items():
            if "busy_cpu_us" not in a:
                if a.get("busy_note") or a.get("alone_note"):
                    lines.append(f"| {name} | {proto} | {a.get('busy_note') or a.get('alone_note')} ||||||")
                continue
            lines.append(f"| {name} | {'HTTP/1.1' if proto == 'h1' else 'h2c'} | {fmt(a['busy_cpu_us'], '.1f')} | "
                         f"{fmt(a.get('alone_cpu_us'), '.1f')} | {fmt(a['busy_p50_ms'], '.2f')} | "
                         f"{fmt(a.get('alone_p50_ms'), '.2f')} | {fmt(a['busy_p99_ms'], '.2f')} | "
                         f"{fmt(a.get('alone_p99_ms'), '.2f')} |")


def report_idle(w, res, lines, bar):
    lines.append(f"\n{res['count']:,} connections, each after one request; RSS delta over the proxy's processes.\n")
    lines.append("| proxy | HTTP/1.1 bytes/conn | h2c bytes/conn | RSS with h1 conns MiB | RSS with h2 conns MiB "
                 "| note |")
    lines.append("|---|---:|---:|---:|---:|---|")
    names = list(dict.fromkeys(list(res["h1"]) + list(res["h2"])))
    for name in names:
        a, b = res["h1"].get(name, {}), res["h2"].get(name, {})
        note = "; ".join(f"{proto}: {note_of(x)}" for proto, x in (("h1", a), ("h2", b)) if note_of(x))
        lines.append(f"| {name} | {fmt(a.get('bytes_per_conn'), ',.0f')} | {fmt(b.get('bytes_per_conn'), ',.0f')} | "
                     f"{fmt(a.get('rss_mib'), '.1f')} | {fmt(b.get('rss_mib'), '.1f')} | {note} |")
    lg1, lg2 = res["h1"].get("legate", {}), res["h2"].get("legate", {})
    ng = res["h1"].get("nginx", {})
    if "bytes_per_conn" in lg1 and "bytes_per_conn" in ng:
        met = lg1["bytes_per_conn"] <= ng["bytes_per_conn"]
        bar.append(f"| 7 idle HTTP/1.1 bytes/conn vs nginx | ≤ {ng['bytes_per_conn']:,.0f} | "
                   f"{lg1['bytes_per_conn']:,.0f} | {'met' if met else 'NOT met'} |")
    if "bytes_per_conn" in lg2:
        met = lg2["bytes_per_conn"] < 8192
        bar.append(f"| 7 idle h2 bytes/conn | < 8,192 | {lg2['bytes_per_conn']:,.0f} | {'met' if met else 'NOT met'} |")
    report_beside(res, lines)


def report_scale(w, res, lines, bar):
    if "skip" in res:
        lines.append(f"\nskipped: {res['skip']}")
        return
    lines.append("\nStatic clusters (one endpoint each), one listener, --concurrency 2; start-up = exec to GET /ready "
                 "200 (CPU s: Legate's CPU time until then); RSS after one GET /stats. Envoy's published figures: "
                 "35-42 KB per cluster, seconds for 10k clusters.\n")
    lines.append("| clusters | start-up s | CPU s | RSS MiB | bytes/cluster | /stats lines | /stats s | note |")
    lines.append("|---:|---:|---:|---:|---:|---:|---:|---|")
    for n, r in res["clusters"].items():
        lines.append(f"| {int(n):,} | {fmt(r.get('ready_s'), '.2f')} | {fmt(r.get('cpu_s'), '.2f')} | "
                     f"{fmt(r.get('rss_kib', 0) / 1024 if 'rss_kib' in r else None, '.1f')} | "
                     f"{fmt(r.get('bytes_per_cluster'), ',.0f')} | {fmt(r.get('stats_lines'), ',')} | "
                     f"{fmt(r.get('stats_s'), '.2f')} | {note_of(r)} |")
    c10k = res["clusters"].get(10000) or res["clusters"].get("10000") or {}
    if "ready_s" in c10k:
        bar.append(f"| 8 10k clusters start-up s | < 1.0 | {c10k['ready_s']:.2f} | "
                   f"{'met' if c10k['ready_s'] < 1.0 else 'NOT met'} |")
        if "bytes_per_cluster" in c10k:
            b = c10k["bytes_per_cluster"]
            bar.append(f"| 8 bytes per cluster (10k, with stats) | < 2,048 | {b:,.0f} | "
                       f"{'met' if b < 2048 else 'NOT met'} |")
    c100k = res["clusters"].get(100000) or res["clusters"].get("100000")
    if c100k is not None:
        bar.append(f"| 8 100k static clusters load | loads | {'yes' if 'ready_s' in c100k else 'no'} | "
                   f"{'met' if 'ready_s' in c100k else 'NOT met'} |")
    x = res.get("xds") or {}
    lines.append("\nOver ADS (--concurrency 2): N EDS clusters in one CDS response, then their endpoints in one EDS "
                 "response; then RDS updates of one route table. Apply = control plane's send of the response to "
                 "Legate's ACK (median of 3 for RDS).\n")
    lines.append("| clusters | CDS apply s | EDS apply s | RSS MiB | routes | RDS apply ms | note |")
    lines.append("|---:|---:|---:|---:|---:|---:|---|")
    lines.append(f"| {fmt(x.get('clusters'), ',')} | {fmt(x.get('cds_s'), '.3f')} | {fmt(x.get('eds_s'), '.3f')} | "
                 f"{fmt(x.get('rss_kib', 0) / 1024 if 'rss_kib' in x else None, '.1f')} | {fmt(x.get('routes'), ',')} | "
                 f"{fmt(x.get('rds_ms'), '.0f')} | {note_of(x)} |")
    if "eds_s" in x:
        t = x["cds_s"] + x["eds_s"]
        bar.append(f"| 8 10k clusters over CDS+EDS s | < 1.0 | {t:.2f} | {'met' if t < 1.0 else 'NOT met'} |")
    if "rds_ms" in x:
        bar.append(f"| 8 10k-route RDS update ms | < 200 | {x['rds_ms']:.0f} | {'met' if x['rds_ms'] < 200 else 'NOT met'} |")
    report_live(x.get("live"), lines, bar)
    lines.append("\nRoutes: one virtual host with N routes; the request hits the last route. End to end = "
                 "Legate CPU per request (h2load, HTTP/1.1, 32 connections); micro = lg_route_match() alone "
                 "(bench/route_bench.c, same compiler).\n")
    lines.append("| match | routes | end-to-end CPU µs/req | vs 10 routes | micro ns/match | vs 10 routes | "
                 "config load ms | note |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---|")
    for kind in ("prefix", "path", "regex"):
        base_e = res["routes"].get(f"{kind}/10", {}).get("cpu_us")
        base_m = res["micro"].get(f"{kind}/10", {}).get("ns")
        for key in sorted({k for k in list(res["routes"]) + list(res["micro"]) if k.startswith(kind + "/")},
                          key=lambda k: int(k.split("/")[1])):
            e, m = res["routes"].get(key, {}), res["micro"].get(key, {})
            n = int(key.split("/")[1])
            lines.append(f"| {kind} | {n:,} | {fmt(e.get('cpu_us'), '.2f')} | "
                         f"{fmt(ratio(e.get('cpu_us'), base_e), '.2f')} | {fmt(m.get('ns'), '.0f')} | "
                         f"{fmt(ratio(m.get('ns'), base_m), '.2f')} | {fmt(m.get('load_ms'), '.0f')} | "
                         f"{'; '.join(x for x in (note_of(e), note_of(m)) if x)} |")
        m10k = res["micro"].get(f"{kind}/10000", {}).get("ns")
        if kind != "regex" and m10k is not None and base_m:
            r = m10k / base_m
            bar.append(f"| 8 {kind} route match 10k vs 10 routes | ≤ 2.00 | {r:.2f} | {'met' if r <= 2 else 'NOT met'} |")


LIVE_MODES = {"direct": "control: load straight to the upstream, pushes to Legate on core 0",
              "core0": "whole process on core 0", "split": "worker on core 0, other threads on core 1",
              "idle": "whole process on core 0, --control-thread-priority idle"}
LIVE_UPDATES = {"cds_eds": "CDS+EDS", "rds": "RDS"}


def report_live(live, lines, bar):
    """Issue 4: request p99 during 10k-resource pushes against the idle p99 of the same load."""
    if not live:
        return
    lines.append(f"\nLive traffic during xDS updates, --concurrency 1: open-loop HTTP/1.1 at "
                 f"{fmt(live.get('rate'), ',')} req/s (h2load --rps, 16 connections) to a route and cluster that "
                 f"stay the same in every push, {fmt(live.get('seconds'), 'd')} s idle, then {fmt(live.get('seconds'), 'd')}"
                 f" s while the control plane pushes back to back: {fmt(live.get('clusters'), ',')} changed clusters "
                 f"(CDS) with their endpoints (EDS), or a changed {fmt(live.get('routes'), ',')}-route table (RDS), "
                 f"then {fmt(live.get('seconds'), 'd')} s idle again; the ratio uses the lower of the two idle p99s. "
                 "\"During\" counts the requests whose lifetime overlaps a push (send to ACK); \"in updates\" is the "
                 "share of the window spent between a send and its ACK; non-2xx as during / whole window / idle "
                 "window (plus h2load's failed requests). The test control plane runs in the bench process on the "
                 "load core, SCHED_IDLE, and the instruments there (h2load, the upstream) SCHED_RR, so that building "
                 "and sending a push cannot delay them: the control row (load straight to the upstream) checks it.\n")
    if "error" in live:
        lines.append(f"error: {live['error']}\n")
    lines.append("| Legate threads | update | pushes | apply s (median) | in updates | requests during | "
                 "idle p99 ms, before / after | during p99 ms | during/idle (the lower idle) | during max ms | non-2xx |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    where = []
    for mode, m in live.get("modes", {}).items():
        idle = m.get("idle", {})
        for upd, label in LIVE_UPDATES.items():
            f = m.get(upd)
            if not f:
                continue
            apply = statistics.median(f["apply_s"]) if f.get("apply_s") else None
            bad = (f"{f['non2xx']} / {f['window_non2xx']} / {idle.get('non2xx', '-')}"
                   f" (+{f['h2load_failed']} / {idle.get('h2load_failed', '-')} failed)")
            lines.append(f"| {LIVE_MODES[mode]} | {label} | {f['pushes']} | {fmt(apply, '.3f')} | "
                         f"{fmt(f.get('coverage', 0) * 100, '.0f')}% | {fmt(f['requests'], ',')} | "
                         f"{fmt(idle.get('p99_ms'), '.3f')} / {fmt(m.get('idle_after', {}).get('p99_ms'), '.3f')} | "
                         f"{fmt(f['p99_ms'], '.3f')} | {fmt(f.get('ratio'), '.2f')} | "
                         f"{fmt(f['max_ms'], '.1f')} | {bad} |")
            where.append(f"| {LIVE_MODES[mode]} | {label} | {fmt(f.get('cp_cpu_s'), '.2f')} | "
                         f"{fmt(f.get('control_cpu_s'), '.2f')} | "
                         f"{fmt(idle.get('worker_cpu_s'), '.2f')} / {fmt(f.get('worker_cpu_s'), '.2f')} | "
                         f"{fmt(f.get('worker_ms_per_push'), '.1f')} | "
                         f"{fmt(idle.get('worker_wait_ms'), '.0f')} / {fmt(f.get('worker_wait_ms'), '.0f')} | "
                         f"{' / '.join(fmt(x, '.0f') for x in f.get('rss_mib', []))} | "
                         f"{fmt(f.get('cleanup_worker_ms'), '.0f')} |")
            if f.get("ratio") is not None:
                # the bar uses the pinning of every other workload; the split one is information (its
                # control thread shares the load core with h2load and the upstream)
                met = f["ratio"] <= 2.0 and f["non2xx"] == 0
                verdict = ("met" if met else "NOT met") if mode in ("core0", "idle") else "information"
                failed = f" ({f['non2xx']} non-2xx)" if f["non2xx"] else ""
                size = f"{live['clusters']:,} clusters" if upd == "cds_eds" else f"{live['routes']:,}-route"
                bar.append(f"| 8 p99 during {size} {label} pushes vs idle ({LIVE_MODES[mode]}) | "
                           f"{'≤ 2.00' if mode in ('core0', 'idle') else '-'} | {f['ratio']:.2f} | {verdict}{failed} |")
    if where:
        lines.append("\nWhere the time went in those windows: control plane CPU = the test control plane's (this "
                     "process, on the load core with h2load); Legate control CPU = Legate's threads other than the "
                     "worker; worker extra CPU = the worker's CPU in the update window minus what the same number of "
                     "requests cost it in the idle window, per push (what the worker spends on an update: a pointer "
                     "swap would be ~0; /proc counts 10 ms ticks, so it is coarse); run-queue wait = time the worker "
                     "was runnable but not running (/proc/<pid>/task/<tid>/schedstat). After each update window "
                     "(h2load's connections closed) one unmeasured RDS push lets the worker drop what those "
                     "connections kept alive: the last column is the worker's CPU for it.\n")
        lines.append("| Legate threads | update | control plane CPU s | Legate control CPU s | worker CPU s, idle / update "
                     "window | worker extra CPU ms/push | worker run-queue wait ms, idle / update window | "
                     "RSS MiB before / after window / after cleanup | cleanup push: worker CPU ms |")
        lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        lines += where


def machine_description():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 1048576:.1f} GiB"
    except (OSError, ValueError):
        pass
    distro = "?"
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    distro = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    h2v = subprocess.run(["h2load", "--version"], capture_output=True, text=True).stdout.strip()
    return {"host": platform.node(), "kernel": platform.release(), "cpu": cpu, "cores": os.cpu_count(), "memory": mem,
            "distro": distro, "h2load": h2v, "python": platform.python_version()}


def write_report(bench, workload_list, started, out_dir):
    m = machine_description()
    la0, la1 = getattr(bench, "loadavg_start", (0, 0, 0)), os.getloadavg()
    lines = [f"# Legate bench, {started:%Y-%m-%d %H:%M:%S}", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory']}, {m['distro']}, kernel {m['kernel']}.",
             f"Load: {m['h2load']} (1 thread), curl; upstream: bench/upstream.c (epoll, nghttp2). "
             f"Proxy pinned to core {PROXY_CPU}; load generator and upstream to core {LOAD_CPU}. "
             f"One worker per proxy. Rounds: {bench.args.rounds} (median), {bench.args.duration} s per run"
             f"{' (BENCH_QUICK)' if bench.quick else ''}.",
             f"Load average (1 min) at start {la0[0]:.2f}, at end {la1[0]:.2f}: anything above ~1 means other work "
             f"shared the cores and the figures are noisy{f'; bench ran at nice {bench.args.nice}' if bench.args.nice else ''}.",
             "", "Proxies:"]
    for p in bench.proxies:
        lines.append(f"- {p.version()}")
    bar = ["| bar | target | Legate | |", "|---|---:|---:|---|"]
    by_id = {w["id"]: w for w in workload_list}
    for wid, res in bench.results.items():
        w = by_id[wid]
        lines.append(f"\n## {wid}. {w['title']}")
        globals()[f"report_{w['kind']}"](w, res, lines, bar)
    if len(bar) > 2:
        lines += ["\n## The bar (issue 5), Legate against the best peer in this run", ""] + bar
    text = "\n".join(lines) + "\n"
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"{started:%Y%m%d-%H%M%S}")
    with open(stem + ".md", "w") as f:
        f.write(text)
    with open(stem + ".json", "w") as f:
        json.dump({"machine": m, "args": vars(bench.args), "results": bench.results}, f, indent=1, default=str)
    return stem + ".md", text


# ---- main -------------------------------------------------------------------------------

def self_test_check(bench, text):
    """The table for workload 1 must hold a figure for every proxy that ran."""
    rows = bench.results.get("1", {}).get("rows", {})
    problems = []
    for p in bench.proxies:
        row = rows.get(p.name)
        if row is None:
            problems.append(f"{p.name}: no row")
        elif "error" in row:
            problems.append(f"{p.name}: {row['error']}")
        elif not (row.get("cpu_us", 0) > 0 and row.get("rps", 0) > 0 and row.get("p99_ms", 0) > 0
                  and "user_us" in row and "sys_us" in row):
            problems.append(f"{p.name}: incomplete row {row}")
        elif f"| {p.name} |" not in text:
            problems.append(f"{p.name}: not in the table")
    return problems


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated workload ids (1,2a,2b,3,4,5a,5b,6,7,8)")
    ap.add_argument("--proxies", help="comma-separated: legate,nginx,haproxy,h2o")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--duration", type=float, help="seconds per measured run")
    ap.add_argument("--quick", action="store_true", default=os.environ.get("BENCH_QUICK") == "1")
    ap.add_argument("--self-test", action="store_true", help="workload 1 only, short runs; checks the table")
    ap.add_argument("--out", help="results directory (default bench/results, build/bench for --self-test)")
    ap.add_argument("--nice", type=int, default=int(os.environ.get("BENCH_NICE", "0")),
                    help="nice value for the bench and everything it starts (e.g. -5 on a shared machine; root only)")
    args = ap.parse_args()
    if args.self_test:
        args.quick = True
        args.only = args.only or "1"
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (2 if args.quick else 5)
    args.warmup = 1 if args.quick else 1
    args.route_duration = 2 if args.quick else 3
    out_dir = args.out or (os.path.join(REPO, "build", "bench") if args.self_test else os.path.join(HERE, "results"))

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    started = datetime.datetime.now()
    all_w = workloads(args.quick)
    chosen = all_w if not args.only else [w for w in all_w if w["id"] in args.only.split(",")]
    if not chosen:
        print(f"no workload matches --only {args.only}", file=sys.stderr)
        return 2
    if args.nice:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, args.nice)
        except OSError as e:
            log(f"cannot set nice {args.nice}: {e}")
    bench = Bench(args)
    bench.loadavg_start = os.getloadavg()
    try:
        bench.setup()
        bench.run(chosen)
        path, text = write_report(bench, all_w, started, out_dir)
    except HarnessError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f"bench: interrupted ({e})", file=sys.stderr)
        return 130
    finally:
        PROCS.stop_all()
        if bench.workdir and not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(bench.workdir, ignore_errors=True)
    print(text)
    log(f"table written to {os.path.relpath(path, REPO)} in {(datetime.datetime.now() - started).seconds} s")
    if args.self_test:
        problems = self_test_check(bench, text)
        if problems:
            print("self-test FAILED:\n  " + "\n  ".join(problems), file=sys.stderr)
            return 1
        print("self-test: table produced for " + ", ".join(p.name for p in bench.proxies))
    return 0


if __name__ == "__main__":
    sys.exit(main())
