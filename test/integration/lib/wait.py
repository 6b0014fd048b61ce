"""Polling with a deadline: the tests wait for conditions, never for time."""
import time


class WaitTimeout(AssertionError):
    pass


def wait_for(cond, timeout=10.0, interval=0.02, what="condition"):
    """Calls cond() until it returns a truthy value, which is returned.

    Exceptions raised by cond count as "not yet"; the last one is reported
    when the deadline passes. Raises WaitTimeout (an AssertionError).
    """
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = cond()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - any failure means "not yet"
            last_exc = e
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_exc!r})" if last_exc else ""
            raise WaitTimeout(f"timed out after {timeout:.1f}s waiting for {what}{detail}")
        time.sleep(interval)
