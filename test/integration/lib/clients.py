"""Real command-line clients: curl, nghttp and h2load, each bounded in time."""
import os
import re
import subprocess
import tempfile

from .legate import time_scale


class CurlResult:
    def __init__(self, rc, status, http_version, headers, body, stderr, all_headers):
        self.rc = rc
        self.status = status
        self.http_version = http_version
        self.headers = headers  # last response's [(lower name, value)]
        self.all_headers = all_headers  # every response block, 1xx included
        self.body = body
        self.stderr = stderr

    def header(self, name, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return default

    def header_all(self, name):
        return [v for k, v in self.headers if k == name.lower()]

    def json(self):
        import json

        return json.loads(self.body)

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def __repr__(self):
        return (f"CurlResult(rc={self.rc}, status={self.status}, body={self.body[:120]!r}, "
                f"stderr={self.stderr[-200:]!r})")


def _parse_header_blocks(raw):
    blocks = []
    for block in re.split(rb"\r\n\r\n", raw):
        lines = block.decode("latin-1").split("\r\n")
        if not lines or not lines[0].startswith("HTTP/"):
            continue
        hdrs = []
        for line in lines[1:]:
            k, sep, v = line.partition(":")
            if sep:
                hdrs.append((k.strip().lower(), v.strip()))
        blocks.append((lines[0], hdrs))
    return blocks


def curl(url, *args, method=None, headers=(), data=None, data_file=None, http2=False, timeout=15.0):
    """Runs curl once. data: bytes sent as the body (--data-binary @file).

    Returns CurlResult; rc is curl's exit code (0 unless the transfer failed).
    """
    with tempfile.TemporaryDirectory(prefix="curl-") as d:
        hdr, out = os.path.join(d, "h"), os.path.join(d, "b")
        cmd = ["curl", "-sS", "--max-time", str(timeout * time_scale()), "-D", hdr, "-o", out,
               "-w", "%{http_code} %{http_version}"]
        if http2:
            cmd.append("--http2-prior-knowledge")
        if method:
            cmd += ["-X", method]
        for h in headers:
            cmd += ["-H", h]
        if data is not None:
            body_path = os.path.join(d, "req")
            with open(body_path, "wb") as f:
                f.write(data)
            cmd += ["--data-binary", "@" + body_path]
        if data_file is not None:
            cmd += ["--data-binary", "@" + data_file]
        cmd += list(args) + [url]
        p = subprocess.run(cmd, capture_output=True, timeout=timeout * time_scale() + 10, stdin=subprocess.DEVNULL)
        raw = open(hdr, "rb").read() if os.path.exists(hdr) else b""
        body = open(out, "rb").read() if os.path.exists(out) else b""
    code, _, ver = p.stdout.decode().partition(" ")
    blocks = _parse_header_blocks(raw)
    return CurlResult(p.returncode, int(code or 0), ver.strip(), blocks[-1][1] if blocks else [], body,
                      p.stderr.decode("utf-8", "replace"), blocks)


def nghttp(url, *args, timeout=15.0):
    """Runs nghttp (HTTP/2 prior knowledge for http:// URLs). Returns CompletedProcess (text)."""
    cmd = ["nghttp", "-t", str(int(timeout * time_scale())), *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout * time_scale() + 10,
                          stdin=subprocess.DEVNULL)


class H2LoadResult:
    def __init__(self, rc, out):
        self.rc = rc
        self.out = out
        m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                      r"(\d+) errored, (\d+) timeout", out)
        self.total, self.started, self.done, self.succeeded, self.failed, self.errored, self.timeout = (
            map(int, m.groups()) if m else (0,) * 7)
        m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
        self.s2xx, self.s3xx, self.s4xx, self.s5xx = map(int, m.groups()) if m else (0,) * 4

    def __repr__(self):
        return f"H2LoadResult(rc={self.rc}, {self.out[-600:]!r})"


def h2load(url, n, c, m, *args, timeout=30.0):
    """Runs h2load (h2c prior knowledge): n requests over c connections, m streams each."""
    cmd = ["h2load", "-n", str(n), "-c", str(c), "-m", str(m), "-T", str(int(timeout * time_scale())),
           "-N", str(int(timeout * time_scale())), *args, url]
    p = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout * time_scale() + 10,
                       stdin=subprocess.DEVNULL)
    return H2LoadResult(p.returncode, p.stdout + p.stderr)
