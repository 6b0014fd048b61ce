"""Access logs (envoy.access_loggers.file / stdout) through real requests.

Envoy's behaviour checked here (access_log docs, substitution_formatter.cc):
the default format line, custom text formats with %REQ(X?Y):Z%, typed JSON
formats (numbers stay numbers, missing values are null), %RESPONSE_FLAGS%
for an unreachable upstream (UF) and a missing route (NR), access log
filters, several listeners sharing one file, and log rotation by SIGUSR1 and
POST /reopen_logs. Legate runs with a small --file-flush-interval-msec and
the tests poll the files with a deadline.
"""
import json
import os
import re
import signal
import threading
import http.client

from lib import config as cfg
from lib.clients import curl
from lib.legate import run_legate, time_scale, write_yaml
from lib.wait import wait_for

FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
STDOUT_LOG = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
FLUSH_ARGS = ["--file-flush-interval-msec", "100"]


def file_log(path, log_format=None, flt=None, **extra):
    typed = {"@type": FILE_LOG, "path": str(path), **extra}
    if log_format is not None:
        typed["log_format"] = log_format
    log = {"name": "envoy.access_loggers.file", "typed_config": typed}
    if flt is not None:
        log["filter"] = flt
    return log


def text(fmt):
    return {"text_format_source": {"inline_string": fmt}}


def proxy(ports, up_port, access_log, dead_port=None):
    """/dead goes to a cluster nobody listens on, /known and /status to the upstream; anything else has no route."""
    routes = [cfg.route("backend", prefix="/known"), cfg.route("backend", prefix="/status")]
    clusters = [cfg.cluster("backend", [up_port])]
    if dead_port is not None:
        routes.insert(0, cfg.route("dead", prefix="/dead"))
        clusters.append(cfg.cluster("dead", [dead_port]))
    rc = cfg.route_config([cfg.vhost("all", routes)])
    return cfg.bootstrap(ports(), listeners=[cfg.http_listener("ingress", ports(), rc, access_log=access_log)],
                         clusters=clusters)


def read_lines(path):
    try:
        with open(path, "rb") as f:
            data = f.read().decode("utf-8")
    except FileNotFoundError:
        return []
    return data.splitlines()


def wait_lines(path, n, what=None):
    """Waits until `path` holds at least n lines; returns them."""
    return wait_for(lambda: (lambda lines: lines if len(lines) >= n else None)(read_lines(path)),
                    timeout=10 * time_scale(), what=what or f"{n} line(s) in {path}")


def get(lg, path, headers=(), listener=None):
    r = curl(lg.url(path, listener=listener), headers=list(headers))
    assert r.rc == 0, r.stderr
    return r


def stop_cleanly(lg):
    """Stops legate (which writes out every buffered entry) and checks it went well."""
    problems = lg.stop()
    assert not problems, problems


def test_default_format_line(legate, ports, upstream, tmp_path):
    up = upstream()
    log = tmp_path / "access.log"
    lg = legate(proxy(ports, up.port, [file_log(log)]), args=FLUSH_ARGS)
    r = get(lg, "/known/hello?a=1", headers=["x-forwarded-for: 192.0.2.7"])
    assert r.status == 200
    (line,) = wait_lines(log, 1)
    m = re.fullmatch(r'\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)\] "GET /known/hello\?a=1 HTTP/1\.1" 200 - 0 (\d+) (\d+) '
                     r'(\d+|-) "([^"]*)" "(curl/[^"]+)" "([^"]+)" "127\.0\.0\.1:(\d+)" "127\.0\.0\.1:(\d+)"', line)
    assert m, line
    assert int(m.group(2)) == len(r.body)
    assert m.group(5).startswith("192.0.2.7")
    assert int(m.group(8)) == lg.listener_port() and int(m.group(9)) == up.port
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", m.group(7)), m.group(7)


def test_custom_text_format_and_response_flags(legate, ports, upstream, tmp_path):
    up = upstream()
    dead = ports()  # nothing listens there
    log = tmp_path / "custom.log"
    fmt = ("%RESPONSE_CODE% %RESPONSE_FLAGS% [%REQ(X-MISSING?USER-AGENT):4%] [%REQ(X-CUSTOM)%] %UPSTREAM_HOST% "
           "%UPSTREAM_CLUSTER% %PROTOCOL% %REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE_DETAILS%\n")
    lg = legate(proxy(ports, up.port, [file_log(log, text(fmt))], dead_port=dead), args=FLUSH_ARGS)
    assert get(lg, "/known/a", headers=["x-custom: hello", "user-agent: curlish/1"]).status == 200
    (first,) = wait_lines(log, 1)
    assert first == f"200 - [curl] [hello] 127.0.0.1:{up.port} backend HTTP/1.1 GET /known/a via_upstream"
    assert get(lg, "/dead").status == 503
    lines = wait_lines(log, 2)
    code, flags, rest = lines[1].split(" ", 2)
    assert (code, flags) == ("503", "UF"), lines[1]
    # Envoy also names the host it failed to connect to in %UPSTREAM_HOST%; Legate's router does not record it yet
    assert re.search(rf"\] (127\.0\.0\.1:{dead}|-) dead HTTP/1\.1 GET /dead upstream_reset_before_response_started", rest), rest
    assert get(lg, "/nowhere").status == 404
    lines = wait_lines(log, 3)
    assert lines[2].startswith("404 NR [curl] [-] - - HTTP/1.1 GET /nowhere route_not_found"), lines[2]


def test_json_format_is_typed(legate, ports, upstream, tmp_path):
    up = upstream()
    log = tmp_path / "json.log"
    fmt = {"json_format": {
        "code": "%RESPONSE_CODE%",
        "duration": "%DURATION%",
        "bytes": "%BYTES_SENT%",
        "method": "%REQ(:METHOD)%",
        "missing": "%REQ(X-NONE)%",
        "agent": "ua=%REQ(USER-AGENT)%",
        "upstream": {"host": "%UPSTREAM_HOST%", "cluster": "%UPSTREAM_CLUSTER%"},
        "quote": "%REQ(X-QUOTE)%",
    }}
    lg = legate(proxy(ports, up.port, [file_log(log, fmt)]), args=FLUSH_ARGS)
    r = get(lg, "/known/j", headers=['x-quote: a "quoted" \\ value'])
    (line,) = wait_lines(log, 1)
    entry = json.loads(line)
    assert entry["code"] == 200 and entry["bytes"] == len(r.body)
    assert isinstance(entry["duration"], int) and entry["duration"] >= 0
    assert entry["method"] == "GET" and entry["missing"] is None
    assert entry["agent"].startswith("ua=curl/")
    assert entry["upstream"] == {"host": f"127.0.0.1:{up.port}", "cluster": "backend"}
    assert entry["quote"] == 'a "quoted" \\ value'
    assert list(entry) == ["code", "duration", "bytes", "method", "missing", "agent", "upstream", "quote"]


def test_json_omit_empty_values(legate, ports, upstream, tmp_path):
    up = upstream()
    log = tmp_path / "omit.log"
    fmt = {"omit_empty_values": True, "json_format": {"code": "%RESPONSE_CODE%", "missing": "%REQ(X-NONE)%"}}
    lg = legate(proxy(ports, up.port, [file_log(log, fmt)]), args=FLUSH_ARGS)
    get(lg, "/known")
    (line,) = wait_lines(log, 1)
    assert json.loads(line) == {"code": 200}


def test_status_code_filter_logs_only_errors(legate, ports, upstream, tmp_path):
    up = upstream()
    log = tmp_path / "errors.log"
    flt = {"status_code_filter": {"comparison": {"op": "GE", "value": {"default_value": 400,
                                                                     "runtime_key": "access_log.error.status"}}}}
    lg = legate(proxy(ports, up.port, [file_log(log, text("%RESPONSE_CODE% %REQ(:PATH)%\n"), flt)]), args=FLUSH_ARGS)
    assert get(lg, "/known/ok").status == 200
    assert get(lg, "/nowhere").status == 404
    assert get(lg, "/status/500").status == 500
    assert get(lg, "/known/again").status == 200
    stop_cleanly(lg)  # writes out everything that is buffered
    assert sorted(read_lines(log)) == ["404 /nowhere", "500 /status/500"]  # workers flush independently


def test_response_flag_filter(legate, ports, upstream, tmp_path):
    up = upstream()
    log = tmp_path / "flags.log"
    flt = {"response_flag_filter": {"flags": ["NR"]}}
    lg = legate(proxy(ports, up.port, [file_log(log, text("%RESPONSE_FLAGS% %REQ(:PATH)%\n"), flt)],
                      dead_port=ports()), args=FLUSH_ARGS)
    assert get(lg, "/dead").status == 503
    assert get(lg, "/nowhere").status == 404
    assert get(lg, "/known").status == 200
    stop_cleanly(lg)
    assert read_lines(log) == ["NR /nowhere"]


def test_stdout_logger(legate, ports, upstream):
    up = upstream()
    log = {"name": "envoy.access_loggers.stdout",
           "typed_config": {"@type": STDOUT_LOG, "log_format": text("STDOUT %RESPONSE_CODE% %REQ(:PATH)%\n")}}
    lg = legate(proxy(ports, up.port, [log]), args=FLUSH_ARGS)
    get(lg, "/known/out")
    wait_for(lambda: "STDOUT 200 /known/out\n" in lg.stdout(), timeout=10 * time_scale(), what="the entry on stdout")


def test_default_flush_interval_still_writes_at_exit(legate, ports, upstream, tmp_path):
    """Without the flag entries wait for Envoy's 10 s interval, and shutdown writes them out."""
    up = upstream()
    log = tmp_path / "late.log"
    lg = legate(proxy(ports, up.port, [file_log(log, text("%REQ(:PATH)%\n"))]))
    get(lg, "/known/late")
    stop_cleanly(lg)
    assert read_lines(log) == ["/known/late"]


def rotate_and_check(lg, log, reopen):
    get(lg, "/known/before")
    assert wait_lines(log, 1) == ["/known/before"]
    rotated = str(log) + ".1"
    os.rename(log, rotated)
    reopen()
    wait_for(lambda: os.path.exists(log), timeout=10 * time_scale(), what="the reopened log file")
    get(lg, "/known/after")
    assert wait_lines(log, 1) == ["/known/after"]
    assert read_lines(rotated) == ["/known/before"]


def test_sigusr1_reopens_log_files(legate, ports, upstream, tmp_path):
    up = upstream()
    log = tmp_path / "rotate.log"
    lg = legate(proxy(ports, up.port, [file_log(log, text("%REQ(:PATH)%\n"))]), args=FLUSH_ARGS)
    rotate_and_check(lg, log, lambda: lg.signal(signal.SIGUSR1))
    assert lg.alive()


def test_admin_reopen_logs(legate, ports, upstream, tmp_path):
    up = upstream()
    log = tmp_path / "admin-rotate.log"
    lg = legate(proxy(ports, up.port, [file_log(log, text("%REQ(:PATH)%\n"))]), args=FLUSH_ARGS)

    def reopen():
        r = lg.admin.post("/reopen_logs")
        assert r.status == 200 and r.text == "OK\n", r

    rotate_and_check(lg, log, reopen)
    assert lg.admin.get("/reopen_logs").status == 405


def test_listeners_share_one_file_without_torn_lines(legate, ports, upstream, tmp_path):
    """Two listeners, two workers, one file: every entry arrives whole, exactly once."""
    up = upstream()
    log = tmp_path / "shared.log"
    fmt = text("%REQ(X-ID)% %REQ(X-PAD)% end\n")
    rc = cfg.route_config([cfg.vhost("all", [cfg.route("backend")])])
    boot = cfg.bootstrap(ports(), listeners=[
        cfg.http_listener("a", ports(), rc, stat_prefix="a", access_log=[file_log(log, fmt)]),
        cfg.http_listener("b", ports(), rc, stat_prefix="b", access_log=[file_log(log, fmt)]),
    ], clusters=[cfg.cluster("backend", [up.port])])
    lg = legate(boot, args=FLUSH_ARGS)
    pad = "p" * 3000
    per_thread, errors = 40, []

    def client(tid, listener):
        try:
            c = http.client.HTTPConnection("127.0.0.1", lg.listener_port(listener), timeout=10 * time_scale())
            for i in range(per_thread):
                c.request("GET", "/", headers={"x-id": f"{tid}-{i}", "x-pad": pad})
                resp = c.getresponse()
                resp.read()
                assert resp.status == 200
            c.close()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(t, "a" if t % 2 else "b")) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    total = 6 * per_thread
    lines = wait_lines(log, total)
    assert len(lines) == total
    assert all(re.fullmatch(rf"\d+-\d+ {pad} end", line) for line in lines)
    assert sorted(line.split(" ", 1)[0] for line in lines) == sorted(f"{t}-{i}" for t in range(6) for i in range(per_thread))


def validate(tmp_path, access_log):
    boot = cfg.bootstrap(0, listeners=[cfg.http_listener("l", 0, cfg.route_config([cfg.vhost("v", [])]),
                                                         access_log=access_log)])
    path = write_yaml(str(tmp_path / "boot.yaml"), boot)
    return run_legate(["--mode", "validate", "-c", path])


def test_config_errors_name_the_field(tmp_path):
    r = validate(tmp_path, [{"name": "envoy.access_loggers.file", "typed_config": {"@type": FILE_LOG}}])
    assert r.returncode == 1
    assert "access_log[0].typed_config.path: value length must be at least 1 characters" in r.stderr, r.stderr
    r = validate(tmp_path, [file_log(tmp_path / "x.log", text("%NOT_AN_OPERATOR%"))])
    assert r.returncode == 1
    assert "access_log[0].typed_config.log_format.text_format_source: Not supported field in StreamInfo: NOT_AN_OPERATOR" \
        in r.stderr, r.stderr
    r = validate(tmp_path, [file_log(tmp_path / "x.log", flt={"metadata_filter": {}})])
    assert r.returncode == 1 and "access_log[0].filter.metadata_filter" in r.stderr, r.stderr
    r = validate(tmp_path, [{"name": "my.logger", "typed_config": {"@type": "type.googleapis.com/google.protobuf.Empty"}}])
    assert r.returncode == 1
    assert "access_log[0]: Didn't find a registered implementation for 'my.logger'" in r.stderr, r.stderr
    r = validate(tmp_path, [file_log(tmp_path / "no-such-dir" / "x.log")])
    assert r.returncode == 1 and "unable to open file" in r.stderr, r.stderr


def test_response_headers_logged_for_bodiless_responses(legate, ports, upstream, tmp_path):
    """%RESP()% of a response that ends with its headers (204, HEAD): the upstream
    stream may finish before the downstream write does; the logged values must
    still be the upstream's (the ASan run catches a read of freed memory)."""
    up = upstream()
    log = tmp_path / "bodiless.log"
    fmt = "%RESPONSE_CODE% %REQ(:METHOD)% [%RESP(X-UPSTREAM)%] [%RESP(SERVER)%] [%RESP(CONTENT-TYPE)%]\n"
    lg = legate(proxy(ports, up.port, [file_log(log, text(fmt))]), args=FLUSH_ARGS)
    assert get(lg, "/status/204").status == 204
    r = curl(lg.url("/status/200"), "-I")
    assert r.rc == 0, r.stderr
    assert get(lg, "/status/304").status == 304
    # each worker buffers its own entries: the order across connections is not fixed
    assert sorted(wait_lines(log, 3)) == ["200 HEAD [upstream] [envoy] [application/json]",
                                          "204 GET [upstream] [envoy] [-]", "304 GET [upstream] [envoy] [-]"]
