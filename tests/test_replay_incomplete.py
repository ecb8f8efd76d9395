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

import pymysql
import pytest

from conftest import connect_kwargs
from fastproxy._ringbuf import RingBuffer
from fastproxy.capture.crypto import generate_key_file
from fastproxy.capture.record import KIND_CONN_CLOSE, KIND_CONN_OPEN
from fastproxy.capture.writer import CaptureWriter
from fastproxy.scratch_db import ROOT_PASSWORD, free_port
from replay_util import Capture, newest_summary, replay_inprocess
from session_util import users_file

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


# ---- item 1(b): the replay's own user cannot reach the target ------------------------------------
def test_a_target_that_refuses_the_replay_user_stops_the_replay_at_once(mariadb_test, tmp_path):
    cap = str(tmp_path / "cap")
    _capture(cap, ["root", "root"])
    reports = str(tmp_path / "r")
    before = _aborted(mariadb_test)
    res = _replay(mariadb_test.addr, cap, "--report-dir", reports, password="wrong-pw")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "cannot log in" in res.stderr and "1045" in res.stderr and "wrong-pw" not in res.stderr, res.stderr
    assert "VERDICT" not in res.stdout, res.stdout
    assert _aborted(mariadb_test) - before <= 2, "one refused login, not one per command"

    # TLS asked of a server that does not offer it
    res = _replay(mariadb_test.addr, cap, "--report-dir", reports, "--tls-skip-verify")
    assert res.returncode == 1 and "does not offer it" in res.stderr, res.stdout + res.stderr

    port = free_port()  # nothing listens there
    res = _replay(f"127.0.0.1:{port}", cap, "--report-dir", reports)
    assert res.returncode == 1 and "cannot connect" in res.stderr, res.stdout + res.stderr
    assert not any(n.startswith("replay-2") for n in os.listdir(reports)), os.listdir(reports)


def test_a_refused_replay_user_fails_the_api_job(proxy_factory, mariadb_test, tmp_path):
    from replay_util import wait_job

    cap = str(tmp_path / "cap")
    _capture(cap, ["root"])
    proxy = proxy_factory([mariadb_test])
    status, text = proxy.post("/api/traffic/replay", {"input": cap, "username": "root", "password": "wrong-pw",
                                                      "speed": "0", "report-dir": str(tmp_path / "r")})
    assert status == 200, text
    job = wait_job(proxy, "replay")
    assert job["status"] != "done" and "cannot log in" in job["error"] and job["replayed"] == 0, job
    assert "wrong-pw" not in json.dumps(job)


# ---- items 2 and 1(c): a captured user whose login is refused ------------------------------------
def test_a_refused_user_is_tried_once_and_the_verdict_says_incomplete(mariadb_test, tmp_path):
    mariadb_test.sql("CREATE OR REPLACE USER rinc_bob@'127.0.0.1' IDENTIFIED BY 'Bob-right-pw';"
                     "GRANT USAGE ON *.* TO rinc_bob@'127.0.0.1'")
    cap = str(tmp_path / "cap")
    _capture(cap, ["root", "rinc_bob"])
    path = users_file(tmp_path / "users.toml", {"rinc_bob": "Bob-wrong-pw"})
    reports = str(tmp_path / "r")
    before = _aborted(mariadb_test)
    res = _replay(mariadb_test.addr, cap, "--report-dir", reports, "--users-file", path)
    assert res.returncode == 3, res.stdout + res.stderr
    assert _aborted(mariadb_test) - before == 1, "bob's login is tried once"
    s = newest_summary(reports)
    assert s["commands_replayed"] == PER_CONN and s["commands_skipped"] == PER_CONN, s
    assert s["commands_not_replayed"] == PER_CONN, s
    assert s["other_error_types"] == {"login refused: rinc_bob": PER_CONN}, s
    others = open(s["_path"].replace(".json", "-other_errors.jsonl")).read()
    assert "1045" in others and "Bob-wrong-pw" not in others, others
    v = s["verdict"]
    assert v["incomplete"] and f"{PER_CONN} commands not replayed" in v["incomplete"][0], v
    assert "INCOMPLETE" in res.stdout and f"{PER_CONN} commands not replayed" in res.stdout, res.stdout
    html = open(s["report_html"]).read()
    assert 'class="verdict incomplete"' in html and 'class="verdict good"' not in html
    rep = subprocess.run([sys.executable, "-m", "fastproxy", "traffic", "report", reports], capture_output=True,
                         text=True, timeout=60)
    assert "INCOMPLETE" in rep.stdout and f"{PER_CONN} commands not replayed" in rep.stdout, rep.stdout + rep.stderr

    # with the right password: complete, clean, exit 0
    path = users_file(tmp_path / "ok.toml", {"rinc_bob": "Bob-right-pw"})
    res = _replay(mariadb_test.addr, cap, "--report-dir", reports, "--users-file", path)
    assert res.returncode == 0, res.stdout + res.stderr
    s = newest_summary(reports)
    assert s["commands_replayed"] == 2 * PER_CONN and s["commands_not_replayed"] == 0, s
    assert s["verdict"]["incomplete"] == [] and "INCOMPLETE" not in res.stdout, res.stdout
    assert 'class="verdict good"' in open(s["report_html"]).read()


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


# ---- item 3: a mismatch on a session that could not be rebuilt -----------------------------------
def test_a_mismatch_on_a_session_not_rebuilt_is_set_apart(mariadb, mariadb_test, proxy, tmp_path):
    for db in (mariadb, mariadb_test):
        db.sql(f"DROP DATABASE IF EXISTS {DB}; CREATE DATABASE {DB}; CREATE TABLE {DB}.t (id INT)")
    a = pymysql.connect(**connect_kwargs(proxy.port, database=DB), autocommit=True)
    cur = a.cursor()
    cur.execute("CREATE TEMPORARY TABLE tmpx (id INT)")
    cur.execute("INSERT INTO tmpx VALUES (1), (2)")
    out = str(tmp_path / "cap")
    with Capture(proxy, out) as cap:
        cur.execute("SELECT COUNT(*) FROM tmpx")
        assert cur.fetchall() == ((2,),)
        cur.execute("SELECT COUNT(*) FROM t")
    a.close()
    assert cap.job["sessions_not_rebuilt"] == 1, cap.job
    # replay rebuilds the temporary table empty: COUNT(*) differs, but production's session was not there
    summary, _ = replay_inprocess(mariadb_test.host, mariadb_test.port, out, speed=0, report_dir=str(tmp_path / "r"))
    assert summary["sessions_not_rebuilt"] == 1, summary
    v = summary["verdict"]
    assert v["mismatched_commands"] == 0 and v["mismatched_commands_not_rebuilt"] == 1, v
    assert summary["other_error_types"].get("mismatch on a session not rebuilt") == 1, summary
    text = open([f for f in summary["summary_files"] if f.endswith(".txt")][0]).read()
    assert "result mismatches:   0 commands" in text and "on sessions not rebuilt: 1 command" in text, text
