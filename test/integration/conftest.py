"""Fixtures for Legate's integration tests.

- Every test phase runs under a deadline (SIGALRM in the main thread): 60 s
  for the test body unless @pytest.mark.deadline(seconds) says otherwise,
  30 s for setup and for teardown, all scaled by $LEGATE_TIME_SCALE.
- `legate` starts build/legate (or $LEGATE_BIN) from a bootstrap dict and
  stops every process it started at teardown with SIGTERM; a crash, a
  non-zero exit or a sanitizer report in stderr fails the test.
- `upstream`, `unix_upstream` and `h2_upstream` start echo servers that are
  closed at teardown.
"""
import os
import shutil
import signal
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from lib.h2upstream import H2Upstream  # noqa: E402
from lib.legate import Legate, kill_all, tail, time_scale  # noqa: E402
from lib.ports import free_port  # noqa: E402
from lib.upstream import EchoUpstream  # noqa: E402

DEFAULT_DEADLINE = 60.0
PHASE_DEADLINE = 30.0


class DeadlineExceeded(Exception):
    pass


def pytest_configure(config):
    config.addinivalue_line("markers", "deadline(seconds): time limit for the test body (default 60 s)")


def _run_with_deadline(seconds, what):
    seconds *= time_scale()

    def on_alarm(signum, frame):
        raise DeadlineExceeded(f"{what} exceeded its deadline of {seconds:.0f}s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    return old


def _clear_deadline(old):
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)


def pytest_sessionfinish(session, exitstatus):
    kill_all()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    old = _run_with_deadline(PHASE_DEADLINE, "setup")
    try:
        yield
    finally:
        _clear_deadline(old)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    marker = item.get_closest_marker("deadline")
    seconds = float(marker.args[0]) if marker else DEFAULT_DEADLINE
    old = _run_with_deadline(seconds, "test")
    try:
        yield
    finally:
        _clear_deadline(old)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item):
    old = _run_with_deadline(PHASE_DEADLINE, "teardown")
    try:
        yield
    finally:
        _clear_deadline(old)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attaches the tail of every legate's stderr to a failing test's report."""
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for lg in getattr(item, "_legates", []):
            rep.sections.append((f"legate stderr ({lg.name}, tail)", tail(lg.stderr(), 60)))


class LegateFactory:
    def __init__(self, tmp_path, item):
        self.tmp_path = tmp_path
        self.item = item
        self.started = []

    def __call__(self, bootstrap, args=(), wait_ready=True, name=None):
        """Starts legate from a bootstrap dict; waits for /ready unless told not to."""
        name = name or f"legate{len(self.started) + 1}"
        lg = Legate(self.tmp_path, bootstrap, args=args, name=name)
        self.started.append(lg)
        self.item._legates = self.started
        return lg.start(wait_ready=wait_ready)

    def stop_all(self):
        problems = []
        for lg in self.started:
            found = lg.stop()
            if found:
                problems.append("\n".join(f"{lg.name}: {p}" for p in found) +
                                f"\n--- {lg.name} stderr tail ---\n{tail(lg.stderr(), 60)}")
        return problems


@pytest.fixture
def legate(tmp_path, request):
    """Factory: legate(bootstrap_dict, args=(), wait_ready=True) -> lib.legate.Legate."""
    factory = LegateFactory(tmp_path, request.node)
    yield factory
    problems = factory.stop_all()
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def upstream():
    """Factory: upstream(name) -> a started EchoUpstream on 127.0.0.1."""
    started = []

    def make(name="upstream"):
        u = EchoUpstream(name)
        started.append(u)
        return u

    yield make
    for u in started:
        u.close()


@pytest.fixture
def unix_upstream():
    """Factory: unix_upstream(name) -> a started EchoUpstream on a unix socket.

    The socket lives in a short temporary directory: sun_path holds 108 bytes.
    """
    started = []
    d = tempfile.mkdtemp(prefix="lg-")

    def make(name="unix"):
        u = EchoUpstream(name, unix_path=os.path.join(d, f"{name}.sock"))
        started.append(u)
        return u

    yield make
    for u in started:
        u.close()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def h2_upstream():
    """Factory: h2_upstream(name) -> a started H2Upstream (h2c prior knowledge)."""
    started = []

    def make(name="h2"):
        u = H2Upstream(name)
        started.append(u)
        return u

    yield make
    for u in started:
        u.close()


@pytest.fixture
def ports():
    """Factory: ports(n) -> n free TCP ports on 127.0.0.1; ports() -> one port."""

    def pick(n=None):
        return free_port() if n is None else [free_port() for _ in range(n)]

    return pick
