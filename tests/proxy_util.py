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
