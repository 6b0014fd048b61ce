"""Free TCP ports chosen at run time.

A port is found by binding to port 0 on loopback and closing the socket; the
kernel does not hand the same ephemeral port out again right away, so the
caller can pass it to legate. Ports handed out in this process are remembered
so that two calls never return the same one.
"""
import socket
import threading

_lock = threading.Lock()
_given = set()


def free_port(host="127.0.0.1"):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with _lock:
        for _ in range(100):
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
            if port not in _given:
                _given.add(port)
                return port
    raise RuntimeError("no free port found")


def free_ports(n, host="127.0.0.1"):
    return [free_port(host) for _ in range(n)]


def is_listening(port, host="127.0.0.1", timeout=0.5):
    """True when a TCP connect to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
