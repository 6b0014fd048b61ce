"""`make run`'s demo works: tools/demo.py --check starts the demo upstream and
legate on tools/demo/envoy-demo.yaml and sends requests through it. Free
ports replace 10000/9901 so that a running demo does not break the test."""
import os
import subprocess

from lib.legate import REPO, legate_bin, run_legate, time_scale
from lib.ports import free_port


def test_demo_config_validates():
    path = os.path.join(REPO, "tools", "demo", "envoy-demo.yaml")
    r = run_legate(["--mode", "validate", "-c", path])
    assert r.returncode == 0 and f"configuration '{path}' OK" in r.stdout + r.stderr, r.stdout + r.stderr


def test_demo_check_proxies_requests():
    cmd = ["/usr/bin/python3", os.path.join(REPO, "tools", "demo.py"), "--bin", legate_bin(), "--check",
           "--listen-port", str(free_port()), "--admin-port", str(free_port())]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60 * time_scale(), stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "GET /hello -> 200" in p.stdout and '"server": "demo"' in p.stdout
    assert "GET /legate -> 200" in p.stdout and "Hello from legate" in p.stdout
