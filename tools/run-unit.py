#!/usr/bin/python3
"""Runs the unit-test binaries given on the command line and sums their
"N passed, N failed" lines into one line of the same form."""
import re
import subprocess
import sys

passed = failed = 0
for binary in sys.argv[1:]:
    try:
        r = subprocess.run([binary], capture_output=True, text=True, timeout=120)
        out, rc = r.stdout + r.stderr, r.returncode
    except subprocess.TimeoutExpired:
        out, rc = "timed out", -1
    m = re.search(r"^(\d+) passed, (\d+) failed$", r.stdout if rc != -1 else "", re.M)
    p, f = (int(m.group(1)), int(m.group(2))) if m else (0, 1)
    if rc != 0 and f == 0:
        f = 1
    passed += p
    failed += f
    print(f"{'ok  ' if rc == 0 else 'FAIL'} {binary}: {p} passed, {f} failed")
    if rc != 0:
        sys.stdout.write(out[-4000:])
print(f"unit: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
