"""What the Python end-to-end checks share: named checks with a tally,
bounded waits, and herald's readiness."""

import socket
import time

RESULTS = {"passed": 0, "failed": 0, "figures": {}}


def check(name, fn):
    """Runs one named check; prints "ok"/"FAIL" and counts it."""
    t = time.time()
    try:
        fn()
        RESULTS["passed"] += 1
        print(f"ok   {name} ({int((time.time() - t) * 1000)} ms)", flush=True)
    except Exception as e:  # noqa: BLE001 - any failure is reported
        RESULTS["failed"] += 1
        print(f"FAIL {name}: {e!r}", flush=True)


def until(what, fn, secs=30):
    """fn()'s first truthy value within secs, else TimeoutError(what)."""
    end = time.time() + secs
    while time.time() < end:
        v = fn()
        if v:
            return v
        time.sleep(0.05)
    raise TimeoutError(what)


def herald_ready(port):
    """Whether herald on 127.0.0.1:port answers /readyz with 200."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=1)
        s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False
