"""The replay report: new failures go to tiproxy_traffic_report.fail (grouped, counted, with a sample),
failures that production had too do not; a backend killed mid-replay gives other_errors rows;
read-only mode filters exactly the writes; the summary files agree with the tables; two runs are told
apart by replay_start_time."""
from __future__ import annotations

import json
import os
import time

import pytest

from fastproxy.constants import COMMAND
from fastproxy.scratch_db import ROOT_PASSWORD

from conftest import start_proxy, stop_proxy
from replay_util import Capture, commands, paced_workload, replay_cli, replay_inprocess, wait_for

mariadb_connector = pytest.importorskip("mariadb")

pytestmark = pytest.mark.timeout(180)

DB = "replay_report"
N_TEXT_FAIL = 7  # SELECT note ...: the column is dropped on the test server
N_PS_FAIL = 5  # prepared INSERT with qty >= 100: a CHECK constraint the test server added
N_PS_OK = 4
N_DUP = 3  # duplicate key in production too: not a new failure
N_TEXT_WRITES_OK = 2
SCHEMA = (f"DROP DATABASE IF EXISTS {DB}; CREATE DATABASE {DB}; USE {DB};"
          "CREATE TABLE items (id INT PRIMARY KEY, qty INT NOT NULL, note VARCHAR(64));"
          "INSERT INTO items SELECT seq, seq, CONCAT('n', seq) FROM seq_1_to_20;"
          "CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(32));"
          "INSERT INTO customers VALUES (1, 'one'), (2, 'two');")
TEST_SIDE_CHANGE = (f"ALTER TABLE {DB}.items DROP COLUMN note;"
                    f"ALTER TABLE {DB}.items ADD CONSTRAINT qty_small CHECK (qty < 100);")
PS_SQL = "INSERT INTO items (id, qty) VALUES (?, ?)"


def _workload(port: int) -> None:
    conn = mariadb_connector.connect(host="127.0.0.1", port=port, user="root", password=ROOT_PASSWORD,
                                     database=DB, autocommit=True)
    cur = conn.cursor()
    ps = conn.cursor(prepared=True)
    for k in range(N_TEXT_FAIL):
        cur.execute(f"SELECT note FROM items WHERE id = {k + 1}")
        cur.fetchall()
        cur.execute(f"SELECT qty FROM items WHERE id = {k + 1}")
        cur.fetchall()
    for k in range(N_PS_OK):
        ps.execute(PS_SQL, (100 + k, k))
    for k in range(N_PS_FAIL):
        ps.execute(PS_SQL, (200 + k, 500 + k))
    for _ in range(N_DUP):
        with pytest.raises(mariadb_connector.IntegrityError):
            cur.execute("INSERT INTO customers VALUES (1, 'dup')")
    for k in range(N_TEXT_WRITES_OK):
        cur.execute(f"UPDATE customers SET name = 'n{k}' WHERE id = 2")
    ps.close()
    cur.close()
    conn.close()


@pytest.fixture(scope="module")
def report_capture(mariadb, mariadb_test, tmp_path_factory):
    mariadb.sql(SCHEMA)
    mariadb_test.sql(SCHEMA + TEST_SIDE_CHANGE)
    out = str(tmp_path_factory.mktemp("report") / "capture")
    proxy = start_proxy([mariadb])
    try:
        with Capture(proxy, out):
            _workload(proxy.port)
    finally:
        stop_proxy(proxy)
    return out


def _rows(db, sql: str) -> list[list[str]]:
    return [line.split("\t") for line in db.sql(sql).splitlines()]


def _fail_rows(db, start: str) -> dict[str, list[str]]:
    rows = _rows(db, "SELECT cmd_type, count, sample_stmt, sample_err_msg, sample_err_code, digest "
                     f"FROM tiproxy_traffic_report.fail WHERE replay_start_time = '{start}'")
    return {r[0]: r for r in rows}


def _written_ps_ids(cmds) -> set[int]:
    return {r.affected_rows for r in cmds if r.payload[0] == COMMAND.COM_STMT_PREPARE
            and r.payload[1:].lstrip().upper().startswith(b"INSERT")}


def _expected_filtered(cmds) -> int:
    """Writes in the capture, classified here from the workload's own statements."""
    writes = _written_ps_ids(cmds)
    n = 0
    for r in cmds:
        cmd, body = r.payload[0], r.payload[1:]
        if cmd in (COMMAND.COM_QUERY, COMMAND.COM_STMT_PREPARE):
            n += body.lstrip().upper().startswith((b"INSERT", b"UPDATE", b"DELETE"))
        elif cmd in (COMMAND.COM_STMT_EXECUTE, COMMAND.COM_STMT_CLOSE, COMMAND.COM_STMT_RESET):
            n += int.from_bytes(r.payload[1:5], "little") in writes
    return n


def test_report_new_failures_and_readonly(report_capture, mariadb_test, tmp_path):
    out = report_capture
    cmds = commands(out)
    report_dir = str(tmp_path / "reports")

    # 1. a full replay (standalone CLI)
    res, s1 = replay_cli(mariadb_test.addr, out, "--speed", "0", "--report-dir", report_dir)
    assert s1["report_tables_error"] == "", s1
    assert s1["commands_failed"] == N_TEXT_FAIL + N_PS_FAIL, s1
    assert s1["commands_failed_same_as_capture"] == N_DUP, s1
    assert s1["other_errors"] == 0 and s1["commands_skipped"] == 0, s1
    assert s1["commands_replayed"] == len(cmds), s1
    rows = _fail_rows(mariadb_test, s1["report_replay_start_time"])
    assert set(rows) == {"Query", "StmtExecute"}, rows  # the duplicate keys are not there
    q, ex = rows["Query"], rows["StmtExecute"]
    assert int(q[1]) == N_TEXT_FAIL and q[2].startswith("SELECT note FROM items WHERE id = "), q
    assert "Unknown column 'note'" in q[3] and q[4] == "1054", q
    assert int(ex[1]) == N_PS_FAIL, ex
    assert ex[2].startswith(PS_SQL) and "params=" in ex[2] and "500" in ex[2], ex  # SQL + the first sample's params
    assert "qty_small" in ex[3] and ex[4] == "4025", ex

    # summary files: JSON + txt + jsonl, consistent with each other and with the tables
    base = s1["_path"][:-len(".json")]
    for ext in (".json", ".txt", "-fail.jsonl", "-other_errors.jsonl"):
        assert os.path.exists(base + ext), base + ext
        assert os.stat(base + ext).st_mode & 0o077 == 0
    with open(base + "-fail.jsonl") as f:
        jl = [json.loads(line) for line in f]
    assert {j["cmd_type"]: j["count"] for j in jl} == {"Query": N_TEXT_FAIL, "StmtExecute": N_PS_FAIL}
    assert {j["digest"] for j in jl} == {q[5], ex[5]}
    with open(base + ".txt") as f:
        txt = f.read()
    assert f"failures (new on replay): {N_TEXT_FAIL + N_PS_FAIL}; failed the same as in production: {N_DUP}" in txt
    assert f"commands: {s1['commands_replayed']} replayed of {s1['commands_in_capture']} captured" in txt
    assert res.stdout.startswith(txt.splitlines()[0])
    assert s1["commands_in_capture"] == len(cmds)

    # 2. read-only: the writes are filtered, the reads replayed (the failing SELECT fails again)
    time.sleep(0.01)  # replay_start_time has microseconds; make sure the runs differ anyway
    _, s2 = replay_cli(mariadb_test.addr, out, "--speed", "0", "--read-only", "--report-dir", report_dir)
    expected = _expected_filtered(cmds)
    assert expected >= N_PS_OK + N_PS_FAIL + N_DUP + N_TEXT_WRITES_OK + 1
    assert s2["commands_filtered"] == expected, s2
    assert s2["commands_replayed"] == len(cmds) - expected, s2
    assert s2["other_errors"] == 0 and s2["commands_skipped"] == 0, s2
    assert s2["commands_failed"] == N_TEXT_FAIL and s2["commands_failed_same_as_capture"] == 0, s2
    assert s2["report_replay_start_time"] != s1["report_replay_start_time"]
    rows2 = _fail_rows(mariadb_test, s2["report_replay_start_time"])
    assert {k: int(v[1]) for k, v in rows2.items()} == {"Query": N_TEXT_FAIL}, rows2
    # run 1's rows are untouched by run 2
    assert {k: int(v[1]) for k, v in _fail_rows(mariadb_test, s1["report_replay_start_time"]).items()} == {
        "Query": N_TEXT_FAIL, "StmtExecute": N_PS_FAIL}


def test_report_backend_killed_mid_replay(mariadb, mariadb_private, tmp_path):
    out = str(tmp_path / "capture")
    proxy = start_proxy([mariadb])
    try:
        with Capture(proxy, out):
            paced_workload(proxy.port, [(5.0, 60.0)], 3)
    finally:
        stop_proxy(proxy)
    cmds = commands(out)

    def kill_then_restart(engine):
        wait_for(lambda: engine.stats.replayed > 40, 20, what="replay under way")
        mariadb_private.kill()
        time.sleep(1.0)
        mariadb_private.restart()

    summary, engine = replay_inprocess(mariadb_private.host, mariadb_private.port, out, speed=1,
                                       report_dir=str(tmp_path / "reports"), write_tables=True,
                                       during=kill_then_restart)
    types = summary["other_error_types"]
    assert types and set(types) <= {"connection lost", "connect failed", "idle connection lost"}, summary
    # each command was replayed, skipped (could not connect) or lost with its connection
    assert (summary["commands_replayed"] + summary["commands_skipped"] + types.get("connection lost", 0)
            == len(cmds)), summary
    assert summary["commands_replayed"] < len(cmds) and summary["reconnects"] > 0, summary
    assert summary["commands_failed"] == 0, summary
    # the report writer survived the outage: the rows in the target add up to the summary
    assert summary["report_tables_error"] == "", summary
    rows = _rows(mariadb_private, "SELECT err_type, count, sample_err_msg FROM tiproxy_traffic_report.other_errors "
                                  f"WHERE replay_start_time = '{summary['report_replay_start_time']}'")
    assert {r[0]: int(r[1]) for r in rows} == types, (rows, summary)
    with open([f for f in summary["summary_files"] if f.endswith("-other_errors.jsonl")][0]) as f:
        assert {j["err_type"]: j["count"] for j in map(json.loads, f)} == types
