"""The verdict against real servers: one workload captured through the proxy on "production", replayed
on a target restored from the same starting data,

- identical: zero mismatches, zero slower digests (the nondeterministic statements are listed apart);
- after an "upgrade" that changed a column's collation, added a row, narrowed a column and dropped an
  index: a collation change is reported as `content` (same row count, other value), `rows` (a WHERE
  that matches fewer rows, text and prepared) and `order` (same rows, other ORDER BY order); an UPDATE
  touching one more row as `affected_rows`; an INSERT IGNORE that now truncates as `warnings`; NOW(),
  RAND() and LIMIT without ORDER BY only as nondeterministic; the query whose index was dropped as
  the only *slower* digest, with a plan showing the full scan; all of it also in the
  tiproxy_traffic_report tables, the verdict file, the text summary and `fastproxy traffic report`;
- A/B: the same capture replayed at once against a baseline with the index and a target without it:
  exactly that digest is slower, with both plans (index on the baseline, scan on the target).

The slower thresholds are set well apart from scheduling noise (the dropped index costs a scan of
300,000 rows, hundreds of ms, against well under a millisecond with it), and the other statements run
100 times, so that their p99 is not their single worst execution on a busy machine."""
from __future__ import annotations

import json
import os

import MySQLdb
import pytest

from fastproxy._digest import digest
from fastproxy.constants import COMMAND
from fastproxy.report.verdict import VerdictOptions
from fastproxy.scratch_db import ROOT_PASSWORD

from capture_util import run_cli
from conftest import start_proxy, stop_proxy
from replay_util import Capture, commands

mariadb_connector = pytest.importorskip("mariadb")

pytestmark = pytest.mark.timeout(400)

DB = "verdict"
N = 100  # rounds of the fast statements: p99 of 100 executions is not the worst one
N_SLOW = 12  # executions of the statement whose index the upgrade drops (a full scan each on the target)
SCHEMA = (f"DROP DATABASE IF EXISTS {DB}; CREATE DATABASE {DB}; USE {DB};"
          "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(32) COLLATE utf8mb4_general_ci NOT NULL);"
          "INSERT INTO items VALUES (1, 'abc'), (2, 'ABC'), (3, 'b'), (4, 'a'), (5, 'B');"
          "CREATE TABLE counters (id INT PRIMARY KEY, grp INT NOT NULL, v INT NOT NULL);"
          "INSERT INTO counters VALUES (1, 1, 0), (2, 1, 0), (3, 2, 0);"
          "CREATE TABLE notes (id INT AUTO_INCREMENT PRIMARY KEY, s VARCHAR(10));"
          "CREATE TABLE big (id INT PRIMARY KEY, k INT NOT NULL, pad CHAR(200) NOT NULL, KEY k (k));"
          "INSERT INTO big SELECT seq, seq % 50000, 'x' FROM seq_1_to_300000;")
UPGRADE = (f"USE {DB};"
           "ALTER TABLE items MODIFY name VARCHAR(32) COLLATE utf8mb4_bin NOT NULL;"
           "INSERT INTO counters VALUES (4, 1, 0);"
           "ALTER TABLE notes MODIFY s VARCHAR(4);"
           "ALTER TABLE big DROP KEY k;")
# the dropped index makes a 300k-row scan: ~40-80 ms here, against ~0.2 ms through the index; a
# quiet, fast CI box scanned under 50 ms once (no digest slower), so the floor sits at 25 ms
THRESHOLDS = VerdictOptions(slower_ratio=3.0, slower_min_diff_ms=25.0, slower_min_count=10)

ROWS_SQL = "SELECT id FROM items WHERE name = 'abc'"
CONTENT_SQL = "SELECT COUNT(*) FROM items WHERE name = 'ABC'"
ORDER_SQL = "SELECT name FROM items ORDER BY name, id"
UPDATE_SQL = "UPDATE counters SET v = v + 1 WHERE grp = 1"
WARN_SQL = "INSERT IGNORE INTO notes (s) VALUES ('abcdefgh')"
POINT_SQL = "SELECT id, name FROM items WHERE id = {}"
NONDET = {"SELECT NOW(6)": "time", "SELECT RAND()": "randomness", "SELECT id FROM items LIMIT 2": "LIMIT without ORDER BY"}
PS_SLOW = "SELECT COUNT(*) FROM big WHERE k = ?"
PS_ROWS = "SELECT id FROM items WHERE name = ?"


def _workload(port: int) -> None:
    conn = mariadb_connector.connect(host="127.0.0.1", port=port, user="root", password=ROOT_PASSWORD,
                                     database=DB, autocommit=True)
    text = conn.cursor()
    slow, rows = conn.cursor(binary=True), conn.cursor(binary=True)  # COM_STMT_PREPARE / EXECUTE
    for i in range(N):
        for sql in (ROWS_SQL, CONTENT_SQL, ORDER_SQL, *NONDET, POINT_SQL.format(i % 5 + 1)):
            text.execute(sql)
            text.fetchall()
        text.execute(UPDATE_SQL)
        text.execute(WARN_SQL)
        if i < N_SLOW:
            slow.execute(PS_SLOW, (i,))
            slow.fetchall()
        rows.execute(PS_ROWS, ("abc",))
        rows.fetchall()
    for c in (slow, rows, text):
        c.close()
    conn.close()


@pytest.fixture(scope="module")
def verdict_capture(mariadb, tmp_path_factory):
    mariadb.sql(SCHEMA)
    out = str(tmp_path_factory.mktemp("verdict") / "capture")
    proxy = start_proxy([mariadb])
    try:
        with Capture(proxy, out):
            _workload(proxy.port)
    finally:
        stop_proxy(proxy)
    executes = [r for r in commands(out) if r.payload[0] == COMMAND.COM_STMT_EXECUTE]
    assert len(executes) == N + N_SLOW  # the binary protocol really was used
    return out


def _replay(target, capture: str, report_dir: str, baseline=None) -> tuple[dict, dict, object]:
    """A ReplayRun in this process: (summary, verdict data, run)."""
    import uvloop

    from fastproxy.replay.engine import ReplayOptions
    from fastproxy.replay.job import ReplayRun

    opts = ReplayOptions(host=target.host, port=target.port, username="root", password=ROOT_PASSWORD, speed=0)
    run = ReplayRun(capture, opts, report_dir, write_tables=True, verdict_options=THRESHOLDS,
                    baseline=(baseline.host, baseline.port) if baseline is not None else None)
    summary = uvloop.run(run.run())
    verdict_file = [f for f in summary["summary_files"] if f.endswith("-verdict.jsonl")]
    with open(verdict_file[0]) as f:
        return summary, json.loads(f.readline()), run


def _restore(db, upgrade: bool) -> None:
    db.sql(SCHEMA + (UPGRADE if upgrade else ""))


def _d(sql: str) -> tuple[str, str]:
    """(cmd_type, digest) of a workload statement: `?` placeholders are the prepared ones."""
    return ("StmtExecute" if "?" in sql else "Query"), digest(sql)


def _kinds(data: dict) -> dict[tuple[str, str], set]:
    out: dict[tuple[str, str], set] = {}
    for m in data["mismatches"]:
        out.setdefault((m["cmd_type"], m["digest"]), set()).add(m["kind"])
    return out


def _table(db, sql: str) -> list[tuple]:
    conn = MySQLdb.connect(host=db.host, port=db.port, user="root", password=ROOT_PASSWORD, charset="utf8mb4")
    try:
        cur = conn.cursor()
        cur.execute(sql)
        return list(cur.fetchall())
    finally:
        conn.close()


@pytest.fixture(scope="module")
def identical(verdict_capture, mariadb_test, tmp_path_factory):
    _restore(mariadb_test, upgrade=False)
    return _replay(mariadb_test, verdict_capture, str(tmp_path_factory.mktemp("identical")))


@pytest.fixture(scope="module")
def upgraded(verdict_capture, mariadb_test, tmp_path_factory, identical):  # after `identical`: same server
    _restore(mariadb_test, upgrade=True)
    return _replay(mariadb_test, verdict_capture, str(tmp_path_factory.mktemp("upgraded")))


def test_identical_replay_has_no_mismatch_and_no_slower_digest(identical):
    summary, data, _ = identical
    assert summary["commands_failed"] == 0
    assert data["mismatches"] == [] and data["mismatched_commands"] == 0
    assert [r for r in data["latency"] if r["slower"]] == []
    assert data["compared_commands"] >= N * 10 + N_SLOW  # 10 statements per round, and the slow one
    assert summary["verdict"]["slower_statements"] == 0 and summary["verdict"]["mismatched_commands"] == 0
    # what was compared is all there: every workload digest has a latency row on both sides
    latency = {(r["cmd_type"], r["digest"]): r for r in data["latency"]}
    for sql in (ROWS_SQL, CONTENT_SQL, ORDER_SQL, UPDATE_SQL, PS_SLOW):
        assert latency[_d(sql)]["count"] == (N_SLOW if sql == PS_SLOW else N)
        assert latency[_d(sql)]["replay_p99_us"] > 0


def test_collation_change_is_content_rows_and_order(upgraded):
    _, data, _ = upgraded
    kinds = _kinds(data)
    assert kinds[_d(CONTENT_SQL)] == {"content"}
    assert kinds[_d(ROWS_SQL)] == {"rows"}
    assert kinds[_d(ORDER_SQL)] == {"order"}
    by_key = {((m["cmd_type"], m["digest"]), m["kind"]): m for m in data["mismatches"]}
    rows = by_key[(_d(ROWS_SQL), "rows")]
    assert (rows["count"], rows["sample_capture_value"], rows["sample_replay_value"]) == (N, "2 rows", "1 row")
    ps_rows = by_key[(_d(PS_ROWS), "rows")]  # the binary protocol, with its parameters
    assert ps_rows["cmd_type"] == "StmtExecute" and ps_rows["sample_params"] == "['abc']" and ps_rows["count"] == N
    assert by_key[(_d(CONTENT_SQL), "content")]["sample_capture_value"].startswith("1 row, fingerprint")


def test_update_touching_another_number_of_rows_is_affected_rows(upgraded):
    _, data, _ = upgraded
    kinds = _kinds(data)
    assert kinds[_d(UPDATE_SQL)] == {"affected_rows"}
    m = [m for m in data["mismatches"] if (m["cmd_type"], m["digest"]) == _d(UPDATE_SQL)][0]
    assert (m["sample_capture_value"], m["sample_replay_value"], m["count"]) == ("2 affected rows", "3 affected rows", N)
    assert kinds[_d(WARN_SQL)] == {"warnings"}


def test_nondeterministic_statements_are_only_counted_apart(upgraded, identical):
    for _, data, _ in (identical, upgraded):
        kinds = _kinds(data)
        nondet = {(n["cmd_type"], n["digest"]): n for n in data["nondeterministic"]}
        for sql, reason in NONDET.items():
            assert _d(sql) not in kinds
            assert nondet[_d(sql)]["reasons"] == reason and nondet[_d(sql)]["executions"] == N
        # deterministic statements are never classified so
        assert _d(POINT_SQL.format(1)) not in nondet and _d(POINT_SQL.format(1)) not in kinds
    assert {(m["cmd_type"], m["digest"]) for m in upgraded[1]["mismatches"]} == {
        _d(s) for s in (ROWS_SQL, CONTENT_SQL, ORDER_SQL, UPDATE_SQL, WARN_SQL, PS_ROWS)}


def test_dropped_index_makes_exactly_that_digest_slower_with_its_scan(upgraded):
    _, data, _ = upgraded
    slower = [r for r in data["latency"] if r["slower"]]
    assert [(r["cmd_type"], r["digest"]) for r in slower] == [_d(PS_SLOW)]
    plan = json.loads(slower[0]["plan"])
    assert '"access_type": "ALL"' in json.dumps(plan) and '"table_name": "big"' in json.dumps(plan)
    assert slower[0]["count"] == N_SLOW


def test_the_verdict_reaches_tables_files_and_the_report_command(upgraded, mariadb_test):
    summary, data, run = upgraded
    start = summary["report_replay_start_time"]
    assert summary["report_tables_error"] == ""
    mismatch = _table(mariadb_test, "SELECT cmd_type, digest, kind, count, reference FROM "
                      f"tiproxy_traffic_report.mismatch WHERE replay_start_time = '{start}'")
    assert {(t, d, k, c) for t, d, k, c, _ in mismatch} == {
        (m["cmd_type"], m["digest"], m["kind"], m["count"]) for m in data["mismatches"]}
    assert {ref for *_, ref in mismatch} == {"capture"}
    latency = _table(mariadb_test, "SELECT cmd_type, digest, slower, plan FROM tiproxy_traffic_report.latency "
                     f"WHERE replay_start_time = '{start}'")
    assert [(t, d) for t, d, slower, _ in latency if slower] == [_d(PS_SLOW)]
    assert '"access_type": "ALL"' in [p for t, d, _, p in latency if (t, d) == _d(PS_SLOW)][0]
    nondet = _table(mariadb_test, "SELECT cmd_type, digest, reasons FROM tiproxy_traffic_report.nondeterministic "
                    f"WHERE replay_start_time = '{start}'")
    assert {(t, d) for t, d, _ in nondet} >= {_d(s) for s in NONDET}
    # the page and the text
    assert summary["report_html"].endswith(".html") and os.path.getsize(summary["report_html"]) > 10_000
    txt = [f for f in summary["summary_files"] if f.endswith(".txt")][0]
    with open(txt) as f:
        text = f.read()
    assert "slower statements:   1 " in text and "full scan of big" in text and summary["report_html"] in text
    res = run_cli("traffic", "report", os.path.dirname(summary["report_html"]), "--html",
                  os.path.join(os.path.dirname(summary["report_html"]), "again.html"))
    assert res.returncode == 0, res.stderr
    assert "result mismatches:   " + str(data["mismatched_commands"]) in res.stdout and "again.html" in res.stdout
    assert os.path.getsize(os.path.join(os.path.dirname(summary["report_html"]), "again.html")) > 10_000


def test_ab_against_two_servers_where_only_one_lacks_the_index(verdict_capture, mariadb_test, mariadb_private,
                                                               tmp_path, upgraded):
    _restore(mariadb_private, upgrade=False)  # the baseline: the old version, index and all
    _restore(mariadb_test, upgrade=False)
    mariadb_test.sql(f"ALTER TABLE {DB}.big DROP KEY k")  # the target: only the index is gone
    summary, data, _ = _replay(mariadb_test, verdict_capture, str(tmp_path), baseline=mariadb_private)
    assert data["reference"] == f"baseline {mariadb_private.host}:{mariadb_private.port}"
    assert data["ab"]["paired"] >= N * 10 + N_SLOW and data["ab"]["unpaired"] == 0
    slower = [r for r in data["latency"] if r["slower"]]
    assert [(r["cmd_type"], r["digest"]) for r in slower] == [_d(PS_SLOW)]
    assert '"access_type": "ALL"' in slower[0]["plan"]
    base_plan = json.dumps(json.loads(slower[0]["baseline_plan"]))
    assert '"access_type": "ref"' in base_plan and '"key": "k"' in base_plan
    assert data["mismatches"] == []  # same data on both sides: results agree
    assert summary["verdict"]["new_failures"] == 0 and summary["baseline"]["commands_replayed"] > 0


def test_traffic_report_on_a_directory_without_a_replay_says_so(tmp_path):
    res = run_cli("traffic", "report", str(tmp_path))
    assert res.returncode == 1
    assert f"{tmp_path}: no replay summary (replay-<time>.json) here" in res.stderr
    res = run_cli("traffic", "report", str(tmp_path), "--replay", "20240101T000000.000Z")
    assert res.returncode == 1 and "no replay 20240101T000000.000Z here" in res.stderr
