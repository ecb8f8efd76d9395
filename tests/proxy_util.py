"""Helpers shared by the proxy integration tests."""
from __future__ import annotations

import time

from conftest import ProxyProcess


def wait_for(pred, timeout: float = 20, interval: float = 0.05, what: str = "condition"):
    """Poll `pred` until it returns something truthy (no timing assertion: a generous deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def health(p: ProxyProcess) -> dict:
    import json
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{p.api}/api/debug/health", timeout=10) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:  # 503 while shutting down, body still JSON
        return json.loads(e.read())


def sleep_in_flight(p: ProxyProcess):
    """A PyMySQL client through `p` running `SELECT SLEEP(60)` in a thread, once the proxy has it in
    flight. Returns (thread, errors: the OperationalErrors the client got)."""
    import threading

    import pymysql

    from conftest import connect_kwargs

    conn = pymysql.connect(**connect_kwargs(p.port))
    errors: list = []

    def run():
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT SLEEP(60)")
        except pymysql.err.OperationalError as e:
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    wait_for(lambda: any(c["pending_commands"] for c in p.get("/api/debug/connections")), what="the SLEEP to run")
    return t, errors
