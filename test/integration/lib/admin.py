"""Client for the admin endpoint: plain requests, /stats as a dict, /ready."""
import http.client
import json


class AdminResponse:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # list of (lower-case name, value)
        self.body = body

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.body)

    def header(self, name, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return default

    def __repr__(self):
        return f"AdminResponse({self.status}, {self.text[:200]!r})"


class Admin:
    def __init__(self, port, host="127.0.0.1", timeout=10.0):
        self.host = host
        self.port = port
        self.timeout = timeout

    @property
    def url(self):
        return f"http://{self.host}:{self.port}"

    def request(self, method, path, body=None, headers=None):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            data = r.read()
            return AdminResponse(r.status, [(k.lower(), v) for k, v in r.getheaders()], data)
        finally:
            conn.close()

    def get(self, path):
        return self.request("GET", path)

    def post(self, path, body=b""):
        return self.request("POST", path, body=body)

    def ready(self):
        """True when GET /ready answers 200 with body LIVE."""
        r = self.get("/ready")
        return r.status == 200 and r.text.strip() == "LIVE"

    def stats(self, query=""):
        """GET /stats[?query] parsed into {name: value}.

        Counters and gauges become ints; histogram lines keep their text.
        """
        r = self.get("/stats" + (("?" + query) if query else ""))
        if r.status != 200:
            raise AssertionError(f"/stats answered {r.status}: {r.text[:200]}")
        return parse_stats(r.text)

    def stat(self, name, default=0):
        return self.stats().get(name, default)


def parse_stats(text):
    out = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        name, sep, value = line.partition(": ")
        if not sep:
            continue
        value = value.strip()
        try:
            out[name] = int(value)
        except ValueError:
            out[name] = value
    return out


def parse_prometheus(text):
    """Prometheus text exposition -> ({metric: type}, [(metric, {label: value}, value_str)])."""
    types = {}
    samples = []
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
            continue
        if not line or line.startswith("#"):
            continue
        if "{" in line:
            name, rest = line.split("{", 1)
            labels_text, value = rest.rsplit("}", 1)
            labels = {}
            for part in _split_labels(labels_text):
                k, v = part.split("=", 1)
                labels[k] = v.strip('"')
        else:
            name, value = line.split(" ", 1)
            labels = {}
        samples.append((name, labels, value.strip()))
    return types, samples


def _split_labels(text):
    parts, cur, quoted = [], "", False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        parts.append(cur)
    return parts
