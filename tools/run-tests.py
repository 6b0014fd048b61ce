#!/usr/bin/python3
"""Runs the integration suite on the normal build, then on the AddressSanitizer build.

    tools/run-tests.py --bin build/legate --asan-bin build/asan/legate [-- PYTEST_ARGS...]

Each run is `/usr/bin/python3 -m pytest test/integration` with LEGATE_BIN set.
The sanitizer run also sets ASAN_OPTIONS (leaks detected, exit code 23) and
LEGATE_SANITIZER=1; the harness then fails any test whose legate exits
non-zero or prints a sanitizer report. pytest's own summary of each run is
printed, and the last line is the sum over both runs as
"N passed, N failed" (errors count as failed). Exits non-zero when anything
failed, when a run collected no test (pytest's exit code 5), or when a
binary is missing.
"""
import argparse
import os
import re
import signal
import subprocess
import sys
import threading

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
PYTHON = "/usr/bin/python3"
# Per run, so that both runs and the builds fit in CI's 90 minutes even when legate hangs.
RUN_TIMEOUT_S = {"normal": 30 * 60, "asan": 35 * 60}
ASAN_OPTIONS = "detect_leaks=1:abort_on_error=0:exitcode=23"
SUMMARY = re.compile(r"^=*\s*((?:\d+ \w+(?:, )?)+) in [\d.]+s")
COUNT = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected|warnings?)")


def parse_summary(lines):
    """pytest's final summary line -> (line, {kind: n})."""
    for line in reversed(lines):
        m = SUMMARY.search(line.strip())
        if m:
            counts = {}
            for n, kind in COUNT.findall(m.group(1)):
                kind = {"error": "errors", "warning": "warnings"}.get(kind, kind)
                counts[kind] = counts.get(kind, 0) + int(n)
            return line.strip().strip("= "), counts
    return None, {}


def run_suite(label, binary, sanitizer, pytest_args):
    """Runs pytest once; streams its output; returns (ok, counts, summary line)."""
    if not os.path.exists(binary):
        print(f"integration ({label}): binary {binary} not found")
        return False, {"failed": 1}, f"{binary} not found"
    env = dict(os.environ)
    env["LEGATE_BIN"] = os.path.abspath(binary)
    env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    if sanitizer:
        env["ASAN_OPTIONS"] = ASAN_OPTIONS
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
        supp = os.path.join(REPO, "tools", "lsan.supp")
        if os.path.exists(supp) and "LSAN_OPTIONS" not in env:
            env["LSAN_OPTIONS"] = f"suppressions={supp}:print_suppressions=0"
        env["LEGATE_SANITIZER"] = "1"
        env.setdefault("LEGATE_TIME_SCALE", "2")
    cmd = [PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", "test/integration", *pytest_args]
    print(f"==> integration ({label}): LEGATE_BIN={binary} {' '.join(cmd[1:])}", flush=True)
    # Its own process group: on timeout the whole group (pytest, legate, clients) is killed.
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, errors="replace", start_new_session=True)
    timed_out = threading.Event()

    def kill_group():
        timed_out.set()
        os.killpg(proc.pid, signal.SIGKILL)

    watchdog = threading.Timer(RUN_TIMEOUT_S[label], kill_group)
    watchdog.start()
    lines = []
    try:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            lines.append(line.rstrip("\n"))
            del lines[:-200]
        rc = proc.wait()
    finally:
        watchdog.cancel()
    if timed_out.is_set():
        print(f"integration ({label}): killed after {RUN_TIMEOUT_S[label]}s")
        return False, {"failed": 1}, "timed out"
    summary, counts = parse_summary(lines)
    if rc == 5:
        print(f"integration ({label}): pytest collected no test (exit code 5)")
        counts["failed"] = counts.get("failed", 0) + 1
        return False, counts, summary or "no tests ran"
    if summary is None:
        counts = {"failed": 1}
        summary = f"no pytest summary (exit code {rc})"
    ok = rc == 0 and not counts.get("failed") and not counts.get("errors")
    if rc != 0 and not counts.get("failed") and not counts.get("errors"):
        counts["failed"] = 1
    return ok, counts, summary


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default="build/legate", help="normal build of legate")
    ap.add_argument("--asan-bin", default=None, help="AddressSanitizer build of legate (run second)")
    ap.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = ap.parse_args()

    runs = [("normal", args.bin, False)]
    if args.asan_bin:
        runs.append(("asan", args.asan_bin, True))
    results = []
    for label, binary, sanitizer in runs:
        results.append((label, *run_suite(label, binary, sanitizer, args.pytest_args)))

    passed = failed = skipped = 0
    print()
    for label, ok, counts, summary in results:
        print(f"integration ({label}): {summary}")
        passed += counts.get("passed", 0)
        failed += counts.get("failed", 0) + counts.get("errors", 0)
        skipped += counts.get("skipped", 0)
    all_ok = all(ok for _, ok, _, _ in results)
    print(f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
    sys.exit(0 if all_ok and failed == 0 else 1)


if __name__ == "__main__":
    main()
