"""Helpers shared by the capture integration tests (test_capture_*.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

from fastproxy.capture.reader import TrafficReader
from fastproxy.capture.record import KIND_COMMAND
from fastproxy.constants import command_name

from proxy_util import wait_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """`python -m fastproxy ARGS` in a subprocess, output captured as text."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "fastproxy", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


def start_capture(proxy, output, duration: str = "60s", **form) -> None:
    status, body = proxy.post("/api/traffic/capture", {"output": str(output), "duration": duration, **form})
    assert status == 200, f"capture refused: HTTP {status}: {body}"


def captures(proxy) -> list[dict]:
    return [j for j in proxy.get("/api/traffic/show") if j["type"] == "capture"]


def last_capture(proxy) -> dict:
    jobs = captures(proxy)
    assert jobs, "no capture job in traffic show"
    return jobs[-1]


def cancel_capture(proxy) -> dict:
    status, body = proxy.post("/api/traffic/cancel", {"type": "capture"})
    assert status == 200, body
    return wait_for_capture_end(proxy)


def wait_for_capture_end(proxy, timeout: float = 60) -> dict:
    return wait_for(lambda: (lambda j: j if j["status"] != "running" else None)(last_capture(proxy)),
                    timeout=timeout, what="the capture to end")


def read_capture(path, key: bytes | None = None):
    """(meta, records) of a capture directory, read with TrafficReader."""
    reader = TrafficReader(path, key)
    records = list(reader)
    return reader.meta, records, reader


def cmd(rec) -> str:
    return command_name(rec.payload[0]) if rec.kind == KIND_COMMAND and rec.payload else ""


def count_commands(records) -> Counter:
    return Counter(cmd(r) for r in records if r.kind == KIND_COMMAND)


def global_status(cur) -> dict[str, int]:
    cur.execute("SHOW GLOBAL STATUS")
    return {k: int(v) for k, v in cur.fetchall() if str(v).lstrip("-").isdigit()}


__all__ = ["run_cli", "start_capture", "captures", "last_capture", "cancel_capture", "wait_for_capture_end",
           "read_capture", "cmd", "count_commands", "global_status", "wait_for"]
