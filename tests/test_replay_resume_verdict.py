"""The verdict carries on across a resume (fastproxy/replay/checkpoint.py): a replay killed with SIGKILL
and resumed with --resume ends with the same report tables (latency counts per digest, mismatch,
nondeterministic, fail, other_errors), the same verdict and the same summary totals as a replay of
the same capture that was never interrupted.

The capture has a quiet gap in the middle (every connection idle, one of them inside a transaction
it commits after the gap); the replay is killed inside that gap, once the checkpoint (or, with
snapshots far apart, its journal) has stopped moving: no command is then waiting for its result, so
nothing of the verdict may be missing, and the open transaction's results (sent again by the resumed
run) must not count twice."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time

import MySQLdb
import pytest

from conftest import start_proxy, stop_proxy
from fastproxy.capture.record import KIND_COMMAND
from fastproxy.replay.journal import read_journal
from fastproxy.report.files import replay_files
from fastproxy.scratch_db import ROOT_PASSWORD
from replay_util import Capture, checksums, dump, newest_summary, records, sigkill_when

DB = "rv"
SETUP = f"""DROP DATABASE IF EXISTS {DB}; CREATE DATABASE {DB}; USE {DB};
CREATE TABLE items (id INT AUTO_INCREMENT PRIMARY KEY, conn INT NOT NULL, v VARCHAR(64) NOT NULL);
CREATE TABLE counters (k INT PRIMARY KEY, n BIGINT NOT NULL);
CREATE TABLE ledger (id INT AUTO_INCREMENT PRIMARY KEY, k INT NOT NULL, amount INT NOT NULL);
CREATE TABLE ref (x INT);
CREATE TABLE gone (x INT);
INSERT INTO counters SELECT seq, 0 FROM seq_0_to_7;
INSERT INTO ref VALUES (1), (2), (3);
"""
MISSING_ON_REPLAY = "INSERT INTO gone VALUES (1)"  # the table is dropped on the target: fail rows
DIFFERS_ON_REPLAY = "SELECT COUNT(*) FROM ref"  # the target has one more row: mismatch rows
PHASE_S = 2.5
GAP_S = 6.0
WORKERS = 5
OPEN_TXN = "SELECT n FROM counters WHERE k = 0 FOR UPDATE"  # the transaction open across the gap
REPORT = "tiproxy_traffic_report"


def _phase(cur, rnd: random.Random, k: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        r = rnd.random()
        if r < 0.3:
            cur.execute("INSERT INTO items (conn, v) VALUES (%s, %s)", (k, f"c{k}-{rnd.randint(0, 999)}"))
        elif r < 0.6:
            cur.execute("BEGIN")
            cur.execute("UPDATE counters SET n = n + 1 WHERE k = %s", (k,))
            cur.execute("SELECT n FROM counters WHERE k = %s", (k,))  # compared inside a transaction
            cur.fetchall()
            cur.execute("INSERT INTO ledger (k, amount) VALUES (%s, %s)", (k, rnd.randint(1, 99)))
            cur.execute("COMMIT" if rnd.random() < 0.8 else "ROLLBACK")
        elif r < 0.7:
            cur.execute(MISSING_ON_REPLAY)
        elif r < 0.8:
            cur.execute(DIFFERS_ON_REPLAY)
            cur.fetchall()
        elif r < 0.9:
            cur.execute("SELECT RAND() < 2, NOW() > 0")  # nondeterministic: counted apart
            cur.fetchall()
        else:
            cur.execute("SELECT COUNT(*) FROM items WHERE conn = %s", (k,))
            cur.fetchall()
        time.sleep(rnd.uniform(0.004, 0.012))


def _worker(port: int, k: int, start: float, quiet: threading.Barrier, resume: threading.Barrier,
            errors: list) -> None:
    rnd = random.Random(k)
    try:
        c = MySQLdb.connect(host="127.0.0.1", port=port, user="root", password=ROOT_PASSWORD, autocommit=True)
        c.select_db(DB)
        cur = c.cursor()
        _phase(cur, rnd, k, start + PHASE_S)
        if k == 0:  # a transaction left open over the gap: the kill must roll it back, the resume redo it
            cur.execute("BEGIN")
            cur.execute("UPDATE counters SET n = n + 100 WHERE k = 0")
            cur.execute(OPEN_TXN)
            cur.fetchall()
        quiet.wait()
        resume.wait()
        if k == 0:
            cur.execute("COMMIT")
        _phase(cur, rnd, k, time.monotonic() + PHASE_S)
        c.close()
    except Exception as e:  # noqa: BLE001 - reported by the fixture
        errors.append(repr(e))


@pytest.fixture(scope="module")
def workload(mariadb, tmp_path_factory):
    """A capture with a gap: WORKERS connections for PHASE_S seconds, all idle for GAP_S, then again."""
    mariadb.sql(SETUP)
    start = dump(mariadb, DB)
    out = str(tmp_path_factory.mktemp("resume-verdict") / "cap")
    proxy = start_proxy([mariadb])
    errors: list = []
    quiet = threading.Barrier(WORKERS + 1)
    resume = threading.Barrier(WORKERS + 1)
    try:
        with Capture(proxy, out):
            t0 = time.monotonic()
            threads = [threading.Thread(target=_worker, args=(proxy.port, k, t0, quiet, resume, errors))
                       for k in range(WORKERS)]
            for t in threads:
                t.start()
            quiet.wait(120)
            gap_start_ns = time.time_ns()
            time.sleep(GAP_S)
            resume.wait(120)
            for t in threads:
                t.join()
    finally:
        stop_proxy(proxy)
    assert not errors, errors
    commands = [r for r in records(out) if r.kind == KIND_COMMAND]
    before_gap = [r for r in commands if r.start_ns < gap_start_ns]
    open_txn = [r for r in before_gap if r.payload == b"\x03" + OPEN_TXN.encode()]
    assert len(open_txn) == 1 and len(before_gap) < len(commands)
    return {"capture": out, "start": start, "commands": len(commands), "before_gap": len(before_gap)}


def _restore(test_db, start: str) -> None:
    test_db.sql(f"DROP DATABASE IF EXISTS {DB};\n" + start + f"\nDROP TABLE {DB}.gone;\nINSERT INTO {DB}.ref VALUES (4);"
                f"\nDROP DATABASE IF EXISTS {REPORT};")


def _replay(target, cap: str, report_dir: str, *extra: str, env: dict | None = None, wait: bool = True):
    args = [sys.executable, "-m", "fastproxy", "replay", "--target", target.addr, "--input", cap, "--username", "root",
            "--password", ROOT_PASSWORD, "--report-dir", report_dir, "--speed", "1", *extra]
    if not wait:
        return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, **(env or {})})
    res = subprocess.run(args, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def _rows(test_db, query: str) -> dict:
    out = test_db.sql(query)
    rows = [line.split("\t") for line in out.strip().splitlines()]
    return {tuple(r[:-1]): r[-1] for r in rows}


def _outcome(test_db, report_dir: str) -> dict:
    """Everything a replay's verdict says, from the report tables and the summary files."""
    summary = newest_summary(report_dir)
    with open(replay_files(report_dir)["verdict"]) as f:
        verdict = json.loads(f.read())
    totals = {k: summary[k] for k in ("commands_read", "commands_replayed", "commands_failed",
                                      "commands_failed_same_as_capture", "commands_fixed", "commands_skipped",
                                      "commands_filtered", "connections")}
    starts = _rows(test_db, f"SELECT 'run', COUNT(DISTINCT replay_start_time) FROM {REPORT}.latency")
    return {
        "latency": _rows(test_db, f"SELECT cmd_type, digest, count FROM {REPORT}.latency"),
        "mismatch": _rows(test_db, f"SELECT cmd_type, digest, kind, count FROM {REPORT}.mismatch"),
        "nondeterministic": _rows(test_db, f"SELECT cmd_type, digest, CONCAT(executions, '/', differed) "
                                           f"FROM {REPORT}.nondeterministic"),
        "fail": _rows(test_db, f"SELECT cmd_type, digest, count FROM {REPORT}.fail"),
        "other_errors": _rows(test_db, f"SELECT err_type, count FROM {REPORT}.other_errors"),
        "runs_in_latency": starts,
        "totals": totals,
        "verdict": {k: summary["verdict"][k] for k in ("new_failures", "failing_statements", "mismatched_commands",
                                                       "mismatched_statements", "mismatch_kinds",
                                                       "nondeterministic_statements", "nondeterministic_differed")},
        "compared": verdict["compared_commands"],
        "latency_file": {(r["cmd_type"], r["digest"]): r["count"] for r in verdict["latency"]},
        "captured_per_second": sum(n for _, n in verdict["timeline"]["captured_per_second"]),
        "replayed_per_second": sum(n for _, n in verdict["timeline"]["replayed_per_second"]),
        # the resumed run's seconds follow the stopped run's (a replay of well under 300 s)
        "seconds": max(k for k, _ in verdict["timeline"]["replayed_per_second"]) < 300,
        "data": checksums(test_db, DB),
    }


@pytest.fixture(scope="module")
def uninterrupted(workload, mariadb_test, tmp_path_factory):
    _restore(mariadb_test, workload["start"])
    report = str(tmp_path_factory.mktemp("whole"))
    _replay(mariadb_test, workload["capture"], report)
    out = _outcome(mariadb_test, report)
    # the capture makes every table of the verdict say something
    assert out["mismatch"] and out["fail"] and out["nondeterministic"] and len(out["latency"]) >= 5, out
    assert out["runs_in_latency"] == {("run",): "1"}
    return out


def _kill_in_the_gap(proc, report: str, quiet) -> None:
    """Wait until `quiet(report)` says the same thing twice, a second apart (the replay is in the gap,
    nothing in flight), then SIGKILL."""
    last = [None]

    def settled():
        try:
            now = quiet(report)
        except (OSError, ValueError, KeyError):
            return None
        same = now is not None and now == last[0]
        last[0] = now
        return same or None

    _sigkill_when(proc, settled, 1.0, "the replay to reach the capture's quiet gap")


def _snapshot_quiet(workload):
    def quiet(report):  # the snapshot every second: phase one done, nothing awaiting its result
        cp = _checkpoint(report)
        if cp.get("awaiting") or cp["stats"]["replayed"] < workload["before_gap"] - 3:
            return None
        return cp["stats"]["replayed"], cp["low_water"]

    return quiet


def _checkpoint(report: str) -> dict:
    with open(os.path.join(report, "replay.checkpoint")) as f:
        return json.load(f)


def _resume_and_compare(workload, uninterrupted, mariadb_test, report: str, env: dict) -> dict:
    res = _replay(mariadb_test, workload["capture"], report, "--resume", env=env)
    resumed = _outcome(mariadb_test, report)
    summary = newest_summary(report)
    r = summary["resume"]
    for key, value in uninterrupted.items():
        assert resumed[key] == value, (key, resumed[key], value, res.stdout)
    assert r["resumes"] == 1 and r["verdict_carried_on"] and r["records_done_before"] > 0, r
    assert r["results_unknown"] == 0, r  # killed in the gap: every result had come back
    assert "verdict_note" not in r
    return summary


def test_kill_9_in_the_gap_then_resume_gives_the_verdict_of_an_uninterrupted_replay(
        workload, uninterrupted, mariadb_test, tmp_path):
    _restore(mariadb_test, workload["start"])
    report = str(tmp_path / "report")
    proc = _replay(mariadb_test, workload["capture"], report, wait=False)
    _kill_in_the_gap(proc, report, _snapshot_quiet(workload))
    cp = _checkpoint(report)
    _resume_and_compare(workload, uninterrupted, mariadb_test, report, {})
    assert cp.get("verdict") and cp["verdict"]["verdict"]["compared"] > 0 and not cp["finished"]


def test_kill_9_with_only_the_journal_then_resume_gives_the_verdict_of_an_uninterrupted_replay(
        workload, uninterrupted, mariadb_test, tmp_path):
    """Snapshots an hour apart: everything after the first is in the journal (results and transactions
    held until they end included), and must carry on from there."""
    _restore(mariadb_test, workload["start"])
    report = str(tmp_path / "report")
    env = {"FASTPROXY_CHECKPOINT_INTERVAL_S": "3600"}
    proc = _replay(mariadb_test, workload["capture"], report, wait=False, env=env)

    def quiet(report):
        cp = _checkpoint(report)
        entries = list(read_journal(os.path.join(report, "replay.checkpoint.journal"), cp["generation"]))
        answered = {e[2] for e in entries if e[0] in ("R", "N")}
        sent = {e[2] for e in entries if e[0] == "S" and not e[3]}
        if len(answered) < workload["before_gap"] - 3 or not sent <= answered:
            return None
        return len(entries)

    _kill_in_the_gap(proc, report, quiet)
    cp = _checkpoint(report)
    assert cp["generation"] == 1 and cp["verdict"]["verdict"]["compared"] == 0  # all of it in the journal
    _resume_and_compare(workload, uninterrupted, mariadb_test, report, env)


def _kill_when(proc, report: str, ready) -> None:
    def check():
        try:
            return ready(_checkpoint(report))
        except (OSError, ValueError, KeyError):
            return None

    _sigkill_when(proc, check, 0.05, "the replay to get far enough")


_sigkill_when = sigkill_when


def test_kill_9_while_commands_are_in_flight_counts_nothing_twice(workload, uninterrupted, mariadb_test, tmp_path):
    """Killed in the middle of the traffic (transactions open, results on their way): the results that
    never came back are counted as run and said; nothing is counted twice, and what is missing from the
    verdict is exactly accounted for."""
    _restore(mariadb_test, workload["start"])
    report = str(tmp_path / "report")
    proc = _replay(mariadb_test, workload["capture"], report, wait=False)
    _kill_when(proc, report, lambda cp: cp["stats"]["replayed"] > workload["before_gap"] // 2)
    _replay(mariadb_test, workload["capture"], report, "--resume")
    resumed = _outcome(mariadb_test, report)
    r = newest_summary(report)["resume"]
    assert r["verdict_carried_on"] and r["results_unknown"] <= WORKERS, r
    assert resumed["data"] == uninterrupted["data"]
    exact = ("commands_read", "commands_replayed", "commands_filtered", "commands_skipped", "connections")
    for key in exact:  # a command whose result was lost was run
        assert resumed["totals"][key] == uninterrupted["totals"][key], key
    for key in set(uninterrupted["totals"]) - set(exact):  # failed, failed the same way, fixed: at most the lost
        assert 0 <= uninterrupted["totals"][key] - resumed["totals"][key] <= r["results_unknown"], key
    missing = 0
    for table in ("latency", "fail", "mismatch"):
        assert set(resumed[table]) <= set(uninterrupted[table]), table
        for key, count in uninterrupted[table].items():
            lost = int(count) - int(resumed[table].get(key, 0))
            assert lost >= 0, (table, key, count, resumed[table].get(key))  # never twice
            if table != "mismatch":  # a compared command is in latency, a failing one in fail
                missing += lost
    assert missing <= r["results_unknown"], (missing, r)
    assert uninterrupted["compared"] - r["results_unknown"] <= resumed["compared"] <= uninterrupted["compared"]


def test_a_checkpoint_without_the_verdict_state_still_resumes_and_says_so(workload, uninterrupted, mariadb_test,
                                                                         tmp_path):
    """A checkpoint of an older fastproxy (no verdict, no results awaited): the replay resumes, its data
    is whole, and the summary says that the verdict covers the resumed part only."""
    _restore(mariadb_test, workload["start"])
    report = str(tmp_path / "report")
    proc = _replay(mariadb_test, workload["capture"], report, wait=False)
    _kill_in_the_gap(proc, report, _snapshot_quiet(workload))
    path = os.path.join(report, "replay.checkpoint")
    cp = _checkpoint(report)
    for key in ("verdict", "replay_seconds", "awaiting", "results", "results_unknown"):
        cp.pop(key, None)
    with open(path, "w") as f:
        json.dump(cp, f)
    res = _replay(mariadb_test, workload["capture"], report, "--resume")
    resumed = _outcome(mariadb_test, report)
    r = newest_summary(report)["resume"]
    assert not r["verdict_carried_on"] and "resumed part only" in r["verdict_note"], r
    assert "resumed part only" in res.stdout + res.stderr or "resumed part only" in open(
        replay_files(report)["summary"][:-len(".json")] + ".txt").read()
    assert resumed["data"] == uninterrupted["data"]
    assert 0 < sum(map(int, resumed["latency"].values())) < sum(map(int, uninterrupted["latency"].values()))


def test_journal_result_entries_round_trip(tmp_path):
    """`R` (a result, its error message cut at MESSAGE_MAX bytes) and `N` entries read back as written;
    a value out of its field's range is not written, never raised into the replay."""
    from fastproxy._packet import CommandResult
    from fastproxy.replay.journal import MESSAGE_MAX, Journal

    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        j = Journal(fd, "j")
        j.restart(5)
        r = CommandResult(3)
        r.outcome, r.err_code, r.sql_state, r.err_msg = 1, 1146, "42S02", "Table 'rv.gone' doesn't exist é" * 100
        r.rows, r.columns, r.hash_ordered, r.hash_unordered, r.affected_rows, r.warnings = 3, 2, 1 << 63, 7, -1, 1
        assert j.result(9, 41, r, 1234, 7, None) and j.no_result(9, 42) and j.result(9, 43, r, 5, 8, 17)
        assert j.result(9, 44, r, 5, 1 << 40, 0) and j.unjournaled == 1  # a replay second past u32
        j.close()
        entries = list(read_journal(str(tmp_path / "j"), 5))
    finally:
        os.close(fd)
    assert [e[:3] for e in entries] == [("R", 9, 41), ("N", 9, 42), ("R", 9, 43)]
    fields = entries[0][3]
    assert fields[:11] == [1, 1146, 3, 2, 1 << 63, 7, -1, 1, 1234, 7, None] and fields[11] == "42S02"
    assert fields[12].startswith("Table 'rv.gone'") and len(fields[12].encode()) <= MESSAGE_MAX
    assert entries[2][3][10] == 17
