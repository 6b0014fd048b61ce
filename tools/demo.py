#!/usr/bin/python3
"""`make run`: a demo upstream plus legate on tools/demo/envoy-demo.yaml.

The upstream (an echo server answering JSON that describes each request)
listens on 127.0.0.1:10001, or on a free port written into a copy of the
config when 10001 is taken. Legate listens on 127.0.0.1:10000 with its admin
endpoint on 127.0.0.1:9901. Ctrl-C stops both.

    tools/demo.py [--bin build/legate] [--check] [--listen-port N] [--admin-port N]

--check sends two requests through legate, prints the answers and stops:
a non-interactive self-test of the demo.
"""
import argparse
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import yaml

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(REPO, "test", "integration"))

from lib.upstream import EchoUpstream  # noqa: E402

DEMO_CONFIG = os.path.join(REPO, "tools", "demo", "envoy-demo.yaml")


def port_free(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def get(port, path, timeout=5):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read().decode("utf-8", "replace")
    finally:
        c.close()


def load_config(args):
    with open(args.config) as f:
        doc = yaml.safe_load(f)
    listener = doc["static_resources"]["listeners"][0]["address"]["socket_address"]
    admin = doc["admin"]["address"]["socket_address"]
    endpoint = (doc["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
                ["endpoint"]["address"]["socket_address"])
    if args.listen_port:
        listener["port_value"] = args.listen_port
    if args.admin_port:
        admin["port_value"] = args.admin_port
    return doc, listener, admin, endpoint


def wait_ready(proc, admin_port, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            status, body = get(admin_port, "/ready", timeout=1)
            if status == 200 and body.strip() == "LIVE":
                return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main():
    ap = argparse.ArgumentParser(description="Run legate's demo: an upstream and legate in front of it.")
    ap.add_argument("--bin", default=os.environ.get("LEGATE_BIN", os.path.join(REPO, "build", "legate")))
    ap.add_argument("--config", default=DEMO_CONFIG)
    ap.add_argument("--listen-port", type=int, default=0, help="override the listener port (default from config)")
    ap.add_argument("--admin-port", type=int, default=0, help="override the admin port (default from config)")
    ap.add_argument("--check", action="store_true", help="send two requests through legate, then stop")
    args = ap.parse_args()

    if not os.path.exists(args.bin):
        sys.exit(f"demo: {args.bin} not found; build it with `make`")
    doc, listener, admin, endpoint = load_config(args)
    for what, addr in (("listener", listener), ("admin", admin)):
        if not port_free(addr["port_value"]):
            sys.exit(f"demo: port {addr['port_value']} for the {what} is in use (another `make run`?)")
    up_port = endpoint["port_value"] if port_free(endpoint["port_value"]) else 0
    upstream = EchoUpstream("demo", port=up_port)
    endpoint["port_value"] = upstream.port

    workdir = tempfile.mkdtemp(prefix="legate-demo-")
    cfg_path = os.path.join(workdir, "envoy-demo.yaml")
    with open(cfg_path, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    out = open(os.path.join(workdir, "legate.log"), "wb") if args.check else None
    cmd = [args.bin, "-c", cfg_path, "--concurrency", "2", "-l", "info", "--drain-time-s", "1"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    lport, aport = listener["port_value"], admin["port_value"]
    try:
        if not wait_ready(proc, aport):
            if out:
                out.flush()
                sys.stderr.write(open(out.name, errors="replace").read()[-4000:])
            sys.exit(f"demo: legate did not become ready (exit code {proc.poll()})")
        print(f"demo upstream on 127.0.0.1:{upstream.port}; legate on 127.0.0.1:{lport}, admin on 127.0.0.1:{aport}")
        print(f"  curl -v http://127.0.0.1:{lport}/hello")
        print(f"  curl http://127.0.0.1:{lport}/legate")
        print(f"  curl http://127.0.0.1:{aport}/stats?filter=demo")
        sys.stdout.flush()
        if args.check:
            ok = True
            for path in ("/hello", "/legate"):
                status, body = get(lport, path)
                print(f"GET {path} -> {status}\n{body.strip()}")
                ok = ok and status == 200
            stop(proc)
            out.flush()
            if proc.returncode != 0:
                sys.stderr.write(open(out.name, errors="replace").read()[-4000:])
                print(f"demo: legate exited with code {proc.returncode} after SIGTERM")
                ok = False
            sys.exit(0 if ok else 1)
        print("Ctrl-C stops legate and the upstream.")
        done = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: done.set())
        while not done.is_set() and proc.poll() is None:
            done.wait(0.2)
        if proc.poll() is not None:
            print(f"demo: legate exited with code {proc.returncode}")
    finally:
        stop(proc)
        upstream.close()
        if out:
            out.close()


if __name__ == "__main__":
    main()
