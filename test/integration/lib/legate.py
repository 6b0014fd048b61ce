"""Starting, watching and stopping build/legate.

A Legate object owns one process started from a bootstrap dict written to a
YAML file in the test's temporary directory. Its stdout and stderr go to
files there, so a failing test can show their tail. stop() sends SIGTERM
(Envoy's graceful stop), waits for the exit and check() fails when the
process crashed, exited non-zero, or printed a sanitizer report.
"""
import os
import re
import signal
import subprocess
import time

import yaml

from .admin import Admin
from .wait import wait_for

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))

SANITIZER_PATTERNS = [
    re.compile(r"ERROR: AddressSanitizer"),
    re.compile(r"ERROR: LeakSanitizer"),
    re.compile(r"LeakSanitizer"),
    re.compile(r"runtime error:"),
    re.compile(r"ERROR: ThreadSanitizer|WARNING: ThreadSanitizer"),
]

READY_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0

# Every Legate started in this process, so that a run cut short (deadline,
# Ctrl-C) can still kill what it started: see kill_all().
_started = []


def legate_bin():
    """The binary under test: $LEGATE_BIN, else build/legate in the repo."""
    path = os.environ.get("LEGATE_BIN") or os.path.join(REPO, "build", "legate")
    if not os.path.isabs(path):
        path = os.path.join(REPO, path)
    return path


def sanitized():
    """True when the binary under test is a sanitizer build (set by tools/run-tests.py)."""
    return os.environ.get("LEGATE_SANITIZER") == "1"


def time_scale():
    """Multiplier for deadlines: sanitizer builds run slower."""
    try:
        return float(os.environ.get("LEGATE_TIME_SCALE", "1"))
    except ValueError:
        return 1.0


def sanitizer_reports(text):
    return [p.pattern for p in SANITIZER_PATTERNS if p.search(text)]


def tail(text, lines=40):
    return "\n".join(text.splitlines()[-lines:])


class LegateError(AssertionError):
    pass


def write_yaml(path, doc):
    with open(path, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False, default_flow_style=False)
    return path


def run_legate(args, timeout=20.0, cwd=None, env=None):
    """Runs legate to completion (CLI tests). Returns CompletedProcess with text output.

    The process never outlives the call: on timeout it is killed and the
    test fails.
    """
    cmd = [legate_bin()] + list(args)
    full_env = dict(os.environ)
    full_env.update(env or {})
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout * time_scale(),
                           stdin=subprocess.DEVNULL, cwd=cwd, env=full_env)
    except subprocess.TimeoutExpired as e:
        raise LegateError(f"{' '.join(cmd)} did not finish within {timeout}s; output: {e.stderr!r}") from None
    reports = sanitizer_reports(r.stderr)
    if reports:
        raise LegateError(f"sanitizer report from {' '.join(cmd)}:\n{tail(r.stderr, 60)}")
    return r


class Legate:
    """One legate process.

    bootstrap: dict (written to <workdir>/<name>.yaml) or None with
    config_path given. args: extra command-line flags. Unless args say
    otherwise, the process runs with --concurrency 2 -l info
    --drain-time-s 0 --disable-hot-restart.
    """

    def __init__(self, workdir, bootstrap=None, args=(), name="legate", config_path=None):
        self.workdir = str(workdir)
        self.name = name
        self.bootstrap = bootstrap
        self.config_path = config_path or os.path.join(self.workdir, f"{name}.yaml")
        self.stdout_path = os.path.join(self.workdir, f"{name}.stdout")
        self.stderr_path = os.path.join(self.workdir, f"{name}.stderr")
        self.admin_address_path = os.path.join(self.workdir, f"{name}.admin_address")
        self.args = list(args)
        self.proc = None
        self.returncode = None
        self._admin = None
        self._stopped_by_us = False

    # ---- lifecycle -------------------------------------------------------

    def command(self):
        args = list(self.args)
        defaults = [("--concurrency", "2"), ("-l", "info"), ("--drain-time-s", "0")]
        cmd = [legate_bin(), "-c", self.config_path]
        for flag, value in defaults:
            aliases = {"-l": ("-l", "--log-level")}.get(flag, (flag,))
            if not any(a in args for a in aliases):
                cmd += [flag, value]
        if "--disable-hot-restart" not in args and "--base-id" not in args:
            cmd.append("--disable-hot-restart")
        if self._admin_port_from_config() == 0 and "--admin-address-path" not in args:
            cmd += ["--admin-address-path", self.admin_address_path]
        return cmd + args

    def start(self, wait_ready=True):
        if not os.path.exists(legate_bin()):
            raise LegateError(f"legate binary not found at {legate_bin()} (build it with `make`)")
        if self.bootstrap is not None:
            write_yaml(self.config_path, self.bootstrap)
        self._out = open(self.stdout_path, "wb")
        self._err = open(self.stderr_path, "wb")
        # Same process group as pytest: killing the test run's group kills legate too.
        self.proc = subprocess.Popen(self.command(), stdout=self._out, stderr=self._err, stdin=subprocess.DEVNULL,
                                     cwd=self.workdir)
        _started.append(self)
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=READY_TIMEOUT):
        """Waits for GET /ready to answer 200 LIVE; fails with legate's stderr otherwise."""
        deadline = time.monotonic() + timeout * time_scale()
        while True:
            if self.proc.poll() is not None:
                self.returncode = self.proc.returncode
                self._stopped_by_us = True  # reported here; stop() need not report it again
                raise LegateError(f"legate exited with {self.returncode} before it was ready; stderr:\n"
                                  f"{tail(self.stderr())}")
            try:
                if self._discover_admin_port() and self.admin.ready():
                    return self
            except OSError:
                pass
            if time.monotonic() >= deadline:
                raise LegateError(f"legate not ready (GET /ready != 200 LIVE) within {timeout}s; stderr:\n"
                                  f"{tail(self.stderr())}")
            time.sleep(0.02)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        if self.alive():
            self.proc.send_signal(sig)

    def wait_exit(self, timeout=STOP_TIMEOUT):
        """Waits for the process to exit; returns its exit code or None on timeout."""
        try:
            self.returncode = self.proc.wait(timeout=timeout * time_scale())
        except subprocess.TimeoutExpired:
            return None
        return self.returncode

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM, then wait; SIGKILL if it does not exit. Returns a list of problems (empty when clean)."""
        problems = []
        if self.proc is None:
            return problems
        if self.proc.poll() is not None:
            self.returncode = self.proc.returncode
            if not self._stopped_by_us:
                problems.append(f"legate exited on its own during the test with code {self.returncode}")
        else:
            self._stopped_by_us = True
            self.proc.send_signal(signal.SIGTERM)
            if self.wait_exit(timeout) is None:
                self.proc.kill()
                self.proc.wait(timeout=10)
                self.returncode = self.proc.returncode
                problems.append(f"legate did not exit within {timeout}s of SIGTERM (killed)")
            elif self.returncode != 0:
                problems.append(f"legate exited with code {self.returncode} after SIGTERM")
        self._close_files()
        reports = sanitizer_reports(self.stderr())
        if reports:
            problems.append(f"sanitizer report in legate's stderr ({', '.join(reports)})")
        return problems

    def mark_expected_exit(self):
        """The test itself made legate exit (e.g. /quitquitquit): not a failure at teardown."""
        self._stopped_by_us = True

    def _close_files(self):
        for f in (getattr(self, "_out", None), getattr(self, "_err", None)):
            if f and not f.closed:
                f.close()

    def kill(self):
        if self.alive():
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._close_files()

    # ---- accessors -------------------------------------------------------

    def stderr(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stdout(self):
        try:
            with open(self.stdout_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _admin_port_from_config(self):
        try:
            return self.bootstrap["admin"]["address"]["socket_address"]["port_value"]
        except (KeyError, TypeError):
            return None

    def _discover_admin_port(self):
        """The admin port from the bootstrap, else from --admin-address-path; None while unknown."""
        port = self._admin_port_from_config()
        if port:
            return port
        path = self.args[self.args.index("--admin-address-path") + 1] if "--admin-address-path" in self.args \
            else self.admin_address_path
        text = _read_nonempty(path)
        return int(text.strip().rsplit(":", 1)[1]) if text else None

    @property
    def admin_port(self):
        port = self._discover_admin_port()
        if port is None:
            port = wait_for(self._discover_admin_port, timeout=10 * time_scale(), what="the admin address file")
        return port

    @property
    def admin(self):
        if self._admin is None:
            self._admin = Admin(self.admin_port)
        return self._admin

    def listener_port(self, name=None):
        """The port_value of the named (or first) static listener in the bootstrap."""
        for lst in self.bootstrap["static_resources"]["listeners"]:
            if name is None or lst["name"] == name:
                return lst["address"]["socket_address"]["port_value"]
        raise KeyError(name)

    def url(self, path="/", listener=None, host="127.0.0.1"):
        return f"http://{host}:{self.listener_port(listener)}{path}"


def kill_all():
    """Kills every legate this process started that is still running."""
    for lg in _started:
        lg.kill()
    _started.clear()


def _read_nonempty(path):
    try:
        with open(path) as f:
            text = f.read()
        return text if text.strip() else None
    except OSError:
        return None
