"""Checkpoint and resume (fastproxy/replay/checkpoint.py): a replay killed with SIGKILL, or canceled,
then resumed with --resume, leaves the same data as a replay that was never interrupted, and its
report rows carry on; a checkpoint of another replay is refused with a clear error."""
from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import time

import MySQLdb
import pytest

from conftest import start_proxy, stop_proxy
from fastproxy.capture.record import KIND_COMMAND
from fastproxy.scratch_db import ROOT_PASSWORD
from proxy_util import wait_for
from replay_util import (Capture, capture_workers, checksums, dump, newest_summary, records, sigkill_at_checkpoint,
                         wait_job)

DB = "rs"
SETUP = f"""DROP DATABASE IF EXISTS {DB}; CREATE DATABASE {DB}; USE {DB};
CREATE TABLE items (id INT AUTO_INCREMENT PRIMARY KEY, conn INT NOT NULL, v VARCHAR(64) NOT NULL);
CREATE TABLE counters (k INT PRIMARY KEY, n BIGINT NOT NULL);
CREATE TABLE ledger (id INT AUTO_INCREMENT PRIMARY KEY, k INT NOT NULL, amount INT NOT NULL, note VARCHAR(32));
CREATE TABLE gone (x INT);
INSERT INTO counters SELECT seq, 0 FROM seq_0_to_7;
"""
MISSING_ON_REPLAY = "INSERT INTO gone VALUES (1)"  # fails on replay (the table is dropped there): fail rows
WORKLOAD_S = 5.0


def _worker(port: int, k: int, deadline: float, errors: list) -> None:
    """Session state the resume must rebuild (the database chosen with COM_INIT_DB, a session
    variable, a user variable used in writes), autocommit inserts and updates, transactions
    committed and rolled back."""
    rnd = random.Random(k)
    try:
        c = MySQLdb.connect(host="127.0.0.1", port=port, user="root", password=ROOT_PASSWORD, autocommit=True)
        c.select_db(DB)  # COM_INIT_DB
        cur = c.cursor()
        cur.execute("SET SESSION sql_mode = CONCAT(@@sql_mode, ',PAD_CHAR_TO_FULL_LENGTH')")
        cur.execute("SET @prefix = %s", (f"conn{k}-",))
        while time.monotonic() < deadline:
            r = rnd.random()
            if r < 0.4:
                cur.execute("INSERT INTO items (conn, v) VALUES (%s, CONCAT(@prefix, %s))", (k, rnd.randint(0, 999)))
                if rnd.random() < 0.5:
                    cur.execute("UPDATE items SET v = CONCAT(v, '!') WHERE id = %s", (cur.lastrowid,))
            elif r < 0.8:
                cur.execute("BEGIN")
                cur.execute("UPDATE counters SET n = n + 1 WHERE k = %s", (k,))
                cur.execute("INSERT INTO ledger (k, amount, note) VALUES (%s, %s, @prefix)", (k, rnd.randint(1, 99)))
                cur.execute("COMMIT" if rnd.random() < 0.8 else "ROLLBACK")
            elif r < 0.9:
                cur.execute(MISSING_ON_REPLAY)
            else:
                cur.execute("SELECT COUNT(*) FROM items WHERE conn = %s", (k,))
                cur.fetchall()
            time.sleep(rnd.uniform(0.004, 0.012))
        c.close()
    except Exception as e:  # noqa: BLE001 - reported by the fixture
        errors.append(repr(e))


@pytest.fixture(scope="module")
def workload(mariadb, tmp_path_factory):
    """A capture of 6 connections for WORKLOAD_S seconds, through a real proxy, and the start data."""
    mariadb.sql(SETUP)
    start = dump(mariadb, DB)
    out = str(tmp_path_factory.mktemp("resume") / "cap")
    capture_workers(mariadb, out, _worker, 6, WORKLOAD_S)
    commands = [r for r in records(out) if r.kind == KIND_COMMAND]
    missing = sum(1 for r in commands if r.payload == b"\x03" + MISSING_ON_REPLAY.encode())
    assert missing > 10
    return {"capture": out, "start": start, "commands": len(commands), "missing": missing}


def _restore(test_db, start: str) -> None:
    test_db.sql(f"DROP DATABASE IF EXISTS {DB};\n" + start + f"\nDROP TABLE {DB}.gone;")


def _replay_args(target, cap: str, report_dir: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fastproxy", "replay", "--target", target.addr, "--input", cap, "--username", "root",
            "--password", ROOT_PASSWORD, "--report-dir", report_dir, *extra]


def _fail_rows(test_db) -> list[tuple]:
    out = test_db.sql("SELECT replay_start_time, count FROM tiproxy_traffic_report.fail "
                      f"WHERE sample_stmt = '{MISSING_ON_REPLAY}' ORDER BY replay_start_time")
    return [tuple(line.split("\t")) for line in out.strip().splitlines()]


def _checkpoint(report_dir) -> dict:
    with open(os.path.join(report_dir, "replay.checkpoint")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def uninterrupted(workload, mariadb_test, tmp_path_factory):
    """The checksums an uninterrupted replay of the capture leaves on the test server."""
    _restore(mariadb_test, workload["start"])
    report = str(tmp_path_factory.mktemp("whole"))
    mariadb_test.sql("DROP DATABASE IF EXISTS tiproxy_traffic_report")
    res = subprocess.run(_replay_args(mariadb_test, workload["capture"], report, "--speed", "1"),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = _fail_rows(mariadb_test)
    assert len(rows) == 1 and int(rows[0][1]) == workload["missing"], rows  # every one, counted once
    return checksums(mariadb_test, DB)


def test_kill_9_then_resume_gives_the_data_of_an_uninterrupted_replay(workload, uninterrupted, mariadb_test,
                                                                       tmp_path):
    _restore(mariadb_test, workload["start"])
    mariadb_test.sql("DROP DATABASE IF EXISTS tiproxy_traffic_report")
    report = str(tmp_path / "report")
    proc = subprocess.Popen(_replay_args(mariadb_test, workload["capture"], report, "--speed", "1"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # mid-way: the checkpoint has seen a good part of the capture replayed, not all of it
    before = sigkill_at_checkpoint(proc, report, lambda cp: cp["stats"]["replayed"] > workload["commands"] // 3,
                                   0.05, "the replay to be a third done")
    assert not before["finished"] and before["stats"]["replayed"] < workload["commands"]
    rows_at_kill = _fail_rows(mariadb_test)

    res = subprocess.run(_replay_args(mariadb_test, workload["capture"], report, "--speed", "1", "--resume"),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    summary = newest_summary(report)
    assert summary["resume"]["resumes"] == 1 and summary["resume"]["records_done_before"] > 0
    assert summary["commands_failed"] <= workload["missing"]
    assert checksums(mariadb_test, DB) == uninterrupted

    # the report carries on: one row, the run's, with every failure at most once
    rows = _fail_rows(mariadb_test)
    assert len(rows) == 1, rows
    if rows_at_kill:
        assert rows[0][0] == rows_at_kill[0][0] and int(rows[0][1]) >= int(rows_at_kill[0][1])
    # a failing statement sent just before the kill counts as run (its outcome never came back)
    assert workload["missing"] - 6 <= int(rows[0][1]) <= workload["missing"]
    assert _checkpoint(report)["finished"]
    assert not os.path.exists(os.path.join(report, "replay.checkpoint.journal"))
    assert oct(os.stat(os.path.join(report, "replay.checkpoint")).st_mode & 0o777) == "0o600"


def test_a_resumed_replay_killed_again_and_resumed_gives_the_data_of_an_uninterrupted_replay(
        workload, uninterrupted, mariadb_test, tmp_path):
    """The resumed replay is killed too, as soon as it wrote its first checkpoint (before it met the
    records the stopped run had done): that checkpoint still has them done."""
    _restore(mariadb_test, workload["start"])
    report = str(tmp_path / "report")
    args = _replay_args(mariadb_test, workload["capture"], report, "--speed", "1", "--no-report-tables")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sigkill_at_checkpoint(proc, report, lambda cp: cp["stats"]["replayed"] > workload["commands"] // 2, 0.05,
                          "the replay to be half done")
    proc = subprocess.Popen(args + ["--resume"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sigkill_at_checkpoint(proc, report, lambda cp: cp["resumes"] == 1, 0.01, "the resumed replay's first checkpoint")

    res = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert newest_summary(report)["resume"]["resumes"] == 2
    assert checksums(mariadb_test, DB) == uninterrupted


def test_cancel_then_resume_through_the_api(workload, uninterrupted, mariadb_test, tmp_path):
    _restore(mariadb_test, workload["start"])
    report = str(tmp_path / "report")
    proxy = start_proxy([mariadb_test])
    try:
        form = {"input": workload["capture"], "username": "root", "password": ROOT_PASSWORD, "speed": "1",
                "report-dir": report}
        status, body = proxy.post("/api/traffic/replay", form)
        assert status == 200, body

        def midway():
            jobs = [j for j in proxy.get("/api/traffic/show") if j["type"] == "replay"]
            return jobs and jobs[-1]["replayed"] > workload["commands"] // 3

        wait_for(midway, 120, 0.05, "the replay to be a third done")
        status, body = proxy.post("/api/traffic/cancel", {"type": "replay"})
        assert status == 200, body
        job = wait_job(proxy, "replay")
        assert job["status"] == "canceled", job
        assert not _checkpoint(report)["finished"] and _checkpoint(report)["canceled"]

        status, body = proxy.post("/api/traffic/replay", {**form, "resume": "true"})
        assert status == 200, body
        job = wait_job(proxy, "replay", timeout=300)
        assert job["status"] == "done" and not job["error"], job
    finally:
        stop_proxy(proxy)
    assert checksums(mariadb_test, DB) == uninterrupted
    assert _checkpoint(report)["finished"]


@pytest.fixture(scope="module")
def slow_capture(mariadb, tmp_path_factory):
    """Two connections: one inside a transaction for 1.5 s between its two inserts, one running an
    autocommit insert that takes a second. No key: an insert sent twice would make two rows."""
    mariadb.sql("DROP DATABASE IF EXISTS rs2; CREATE DATABASE rs2; "
                "CREATE TABLE rs2.t (what VARCHAR(16))")
    out = str(tmp_path_factory.mktemp("slow") / "cap")
    proxy = start_proxy([mariadb])
    try:
        with Capture(proxy, out):
            a = MySQLdb.connect(host="127.0.0.1", port=proxy.port, user="root", password=ROOT_PASSWORD, db="rs2",
                                autocommit=True)
            b = MySQLdb.connect(host="127.0.0.1", port=proxy.port, user="root", password=ROOT_PASSWORD, db="rs2",
                                autocommit=True)
            ca, cb = a.cursor(), b.cursor()
            ca.execute("BEGIN")
            ca.execute("INSERT INTO t (what) VALUES ('txn-1')")
            cb.execute("INSERT INTO t (what) SELECT 'slow' FROM DUAL WHERE SLEEP(1) = 0")
            time.sleep(0.5)
            ca.execute("INSERT INTO t (what) VALUES ('txn-2')")
            ca.execute("COMMIT")
            cb.execute("INSERT INTO t (what) VALUES ('after')")
            a.close()
            b.close()
    finally:
        stop_proxy(proxy)
    return out


def _run_canceled(host: str, port: int, cap: str, report: str, cancel_when) -> dict:
    """A replay in this process, canceled (not gracefully) as soon as cancel_when(engine) holds."""
    import uvloop

    from fastproxy.replay.engine import ReplayOptions
    from fastproxy.replay.job import ReplayRun

    run = ReplayRun(cap, ReplayOptions(host=host, port=port, username="root", password=ROOT_PASSWORD, speed=1.0),
                    report, write_tables=False)

    async def main():
        async def watch():
            while not cancel_when(run.engine):
                await asyncio.sleep(0.005)
            run.cancel()

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            return await run.run()
        finally:
            watcher.cancel()

    return uvloop.run(main())


def _in_flight(engine, text: bytes) -> bool:
    return any(c.inflight is not None and text in c.inflight.payload for c in engine.conns.values())


def test_cancel_inside_a_transaction_resumes_it_from_its_start_and_never_repeats_a_sent_statement(
        slow_capture, mariadb_test, tmp_path):
    """At the cancel: connection a is inside its transaction (the server rolls it back when the
    connection goes), connection b's slow autocommit insert is out (the server completes it)."""
    mariadb_test.sql("DROP DATABASE IF EXISTS rs2; CREATE DATABASE rs2; "
                     "CREATE TABLE rs2.t (what VARCHAR(16))")
    report = str(tmp_path / "report")
    summary = _run_canceled("127.0.0.1", mariadb_test.port, slow_capture, report,
                            lambda e: _in_flight(e, b"SLEEP(1)") and not _in_flight(e, b"txn-1")
                            and e.stats.replayed >= 2)
    assert summary["canceled"]
    wait_for(lambda: mariadb_test.sql("SELECT COUNT(*) FROM rs2.t WHERE what = 'slow'").strip() == "1", 30, 0.1,
             "the slow insert to complete on the server")
    assert mariadb_test.sql("SELECT what FROM rs2.t").split() == ["slow"]  # txn-1 rolled back

    res = subprocess.run(_replay_args(mariadb_test, slow_capture, report, "--speed", "0", "--resume",
                                      "--no-report-tables"), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    # the transaction again from its BEGIN; the slow insert not twice
    assert sorted(mariadb_test.sql("SELECT what FROM rs2.t").split()) == ["after", "slow", "txn-1", "txn-2"]


def _capture_statements(mariadb, tmp_path_factory, db: str, statements) -> str:
    """A capture of one connection to `db` running `statements` (SQL, or (SQL, parameters)) in turn."""
    out = str(tmp_path_factory.mktemp(db) / "cap")
    proxy = start_proxy([mariadb])
    try:
        with Capture(proxy, out):
            conn = MySQLdb.connect(host="127.0.0.1", port=proxy.port, user="root", password=ROOT_PASSWORD, db=db,
                                   autocommit=True)
            cur = conn.cursor()
            for sql in statements:
                cur.execute(*((sql,) if isinstance(sql, str) else sql))
            conn.close()
    finally:
        stop_proxy(proxy)
    return out


@pytest.fixture(scope="module")
def commit_capture(mariadb, tmp_path_factory):
    """One connection, three transactions that each add 1 to a counter and a row to a table with no key."""
    mariadb.sql("DROP DATABASE IF EXISTS rs3; CREATE DATABASE rs3; CREATE TABLE rs3.c (n INT NOT NULL); "
                "INSERT INTO rs3.c VALUES (0); CREATE TABLE rs3.t (what VARCHAR(16))")
    return _capture_statements(mariadb, tmp_path_factory, "rs3", [
        step for i in (1, 2, 3) for step in (
            "BEGIN", "UPDATE c SET n = n + 1", ("INSERT INTO t (what) VALUES (%s)", (f"txn-{i}",)), "COMMIT")])


# the replay CLI, SIGKILLed by itself as the second COMMIT's bytes are handed to its client's write
# (ReplayClient.write, in front of ClientCore.write), before they reach the socket: a kill landing
# after the engine started the COMMIT and before it went out
KILL_AT_SECOND_COMMIT = """
import os, signal, sys
from fastproxy.replay._client import ClientCore
from fastproxy.replay.client import ReplayClient
commits = []
def write(self, data):
    if b"\\x03COMMIT" in data:
        commits.append(data)
        if len(commits) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    ClientCore.write(self, data)
ReplayClient.write = write
sys.argv[0] = "fastproxy"
from fastproxy.cli import entry
entry()
"""


def test_a_commit_killed_before_its_bytes_left_is_not_counted_as_run(commit_capture, mariadb_test, tmp_path):
    """The second transaction's COMMIT is started but has not reached the socket at the kill: the
    server rolls that transaction back, so the resumed replay sends it again from its BEGIN."""
    mariadb_test.sql("DROP DATABASE IF EXISTS rs3; CREATE DATABASE rs3; CREATE TABLE rs3.c (n INT NOT NULL); "
                     "INSERT INTO rs3.c VALUES (0); CREATE TABLE rs3.t (what VARCHAR(16))")
    report = str(tmp_path / "report")
    args = _replay_args(mariadb_test, commit_capture, report, "--speed", "0", "--no-report-tables")
    res = subprocess.run([sys.executable, "-c", KILL_AT_SECOND_COMMIT, *args[3:]], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == -9, res.stdout + res.stderr
    assert mariadb_test.sql("SELECT what FROM rs3.t").split() == ["txn-1"]  # the second one never committed

    res = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert mariadb_test.sql("SELECT n FROM rs3.c").strip() == "3"
    assert sorted(mariadb_test.sql("SELECT what FROM rs3.t").split()) == ["txn-1", "txn-2", "txn-3"]


CHAIN_SETUP = ("DROP DATABASE IF EXISTS rs4; CREATE DATABASE rs4; CREATE TABLE rs4.c (n INT NOT NULL); "
               "INSERT INTO rs4.c VALUES (0); CREATE TABLE rs4.t (what VARCHAR(16))")


@pytest.fixture(scope="module")
def chain_capture(mariadb, tmp_path_factory):
    """A transaction COMMIT AND CHAIN ends; the chained one changes a counter and a table, then production
    rolls it back; then an autocommit insert."""
    mariadb.sql(CHAIN_SETUP)
    out = _capture_statements(mariadb, tmp_path_factory, "rs4", [
        "BEGIN", "INSERT INTO t (what) VALUES ('first')", "COMMIT AND CHAIN", "UPDATE c SET n = n + 1",
        "INSERT INTO t (what) VALUES ('chained')", "ROLLBACK", "INSERT INTO t (what) VALUES ('after')"])
    assert mariadb.sql("SELECT n FROM rs4.c").strip() == "0"
    return out


def test_a_chained_transaction_resumed_is_sent_inside_a_transaction(chain_capture, mariadb_test, tmp_path):
    """Killed inside the transaction COMMIT AND CHAIN opened: the resumed replay's new session opens it
    again (ROLLBACK AND CHAIN) before its first statement, so production's ROLLBACK still undoes it
    (sent in autocommit, the counter and the row would stay)."""
    mariadb_test.sql(CHAIN_SETUP)
    report = str(tmp_path / "report")
    args = _replay_args(mariadb_test, chain_capture, report, "--speed", "0", "--no-report-tables")
    kill_at_chained_insert = KILL_AT_SECOND_COMMIT.replace('b"\\x03COMMIT" in data', "b\"'chained'\" in data").replace(
        "len(commits) == 2", "len(commits) == 1")
    assert "chained" in kill_at_chained_insert and "== 1" in kill_at_chained_insert
    res = subprocess.run([sys.executable, "-c", kill_at_chained_insert, *args[3:]], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == -9, res.stdout + res.stderr
    assert mariadb_test.sql("SELECT what FROM rs4.t").split() == ["first"]

    res = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert mariadb_test.sql("SELECT n FROM rs4.c").strip() == "0"
    assert sorted(mariadb_test.sql("SELECT what FROM rs4.t").split()) == ["after", "first"]


def test_a_checkpoint_of_another_replay_is_refused(workload, slow_capture, mariadb_test, tmp_path):
    report = str(tmp_path / "report")
    mariadb_test.sql("DROP DATABASE IF EXISTS rs2; CREATE DATABASE rs2; "
                     "CREATE TABLE rs2.t (what VARCHAR(16))")

    def replay(*args):
        return subprocess.run(_replay_args(mariadb_test, *args, "--no-report-tables"), capture_output=True,
                              text=True, timeout=120)

    res = replay(slow_capture, report, "--resume")
    assert res.returncode != 0 and "no checkpoint at" in res.stderr, res.stderr
    _run_canceled("127.0.0.1", mariadb_test.port, slow_capture, report, lambda e: e.stats.replayed >= 2)
    written = open(os.path.join(report, "replay.checkpoint"), "rb").read()

    res = replay(slow_capture, report, "--resume", "--class", "write")
    assert res.returncode != 0, res.stdout
    assert "belongs to another replay" in res.stderr and "filters" in res.stderr, res.stderr
    res = replay(workload["capture"], report, "--resume")  # another capture, the same report directory
    assert res.returncode != 0 and "belongs to another replay" in res.stderr and "input" in res.stderr, res.stderr
    copy = str(tmp_path / "copy")
    shutil.copytree(slow_capture, copy)
    res = replay(copy, report, "--resume")
    assert res.returncode != 0 and "belongs to another replay" in res.stderr, res.stderr
    # the same capture read in another order (its meta's reorder window changed): the checkpoint's
    # record count means other records
    meta_path = os.path.join(slow_capture, "meta")
    meta_raw = open(meta_path, "rb").read()
    meta = json.loads(meta_raw)
    try:
        meta["reorder_window_ns"] = int(meta.get("reorder_window_ns") or 0) + 5_000_000
        open(meta_path, "w").write(json.dumps(meta))
        res = replay(slow_capture, report, "--resume")
    finally:
        open(meta_path, "wb").write(meta_raw)
    assert res.returncode != 0 and "reorder_window_ns" in res.stderr, res.stderr
    assert open(os.path.join(report, "replay.checkpoint"), "rb").read() == written  # refused, nothing lost

    res = replay(slow_capture, report, "--resume", "--speed", "0")  # the speed may change
    assert res.returncode == 0, res.stdout + res.stderr
    res = replay(slow_capture, report, "--resume")
    assert res.returncode != 0 and "nothing to resume" in res.stderr, res.stderr


def test_journal_is_readable_while_its_writer_lives_and_only_for_its_checkpoint(tmp_path):
    """The journal is what a killed replayer leaves: entries are in the file as soon as they are
    made (no close, no flush); one that follows another checkpoint is not applied."""
    from fastproxy.replay.journal import SIZE, Journal, read_journal

    fd = os.open(str(tmp_path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        j = Journal(fd, "j")
        j.restart(7)
        assert j.sent(42, 1000, False, 9) and j.text(b"F", b'["Query", "d"]') and j.sent(43, 1001, True, 10)
        path = str(tmp_path / "j")
        assert list(read_journal(path, 7)) == [("S", 42, 1000, False, 9), ("F", b'["Query", "d"]'),
                                               ("S", 43, 1001, True, 10)]
        assert list(read_journal(path, 6)) == []  # written after checkpoint 7: nothing for checkpoint 6
        j.restart(8)
        assert list(read_journal(path, 8)) == [] and list(read_journal(path, 7)) == []
        assert oct(os.stat(path).st_mode & 0o777) == "0o600"
        n = 0
        while j.sent(1, n, False, 0):
            n += 1
        assert n > 1000 and j.pos < SIZE  # full: the caller writes a checkpoint, which empties it
        j.close()
    finally:
        os.close(fd)


def test_a_resumed_connection_sends_its_session_sets_again_but_not_its_global_ones():
    from fastproxy.replay.checkpoint import _of_the_session
    from fastproxy.replay.stmtinfo import Classifier

    classify = Classifier()
    for sql in (b"SET GLOBAL max_connections = 500", b"SET @@global.max_connections = 500", b"SET\tGLOBAL x = 1",
                b"SET PERSIST max_connections = 500", b"set @@GLOBAL.x = 1, @@session.y = 2"):
        assert not _of_the_session(classify, sql), sql
    for sql in (b"SET @m = 'a global thing'", b"SET SESSION sql_mode = CONCAT(@@GLOBAL.sql_mode, ',ANSI_QUOTES')",
                b"SET NAMES utf8mb4", b"SET @@session.wait_timeout = 10"):
        assert _of_the_session(classify, sql), sql


# (statement, what a resumed connection sends again of it: its session assignments, or None)
MIXED_SCOPE_SETS = [
    (b"SET SESSION sql_mode = 'ANSI_QUOTES', GLOBAL max_connections = 500", b"SET SESSION sql_mode = 'ANSI_QUOTES'"),
    (b"SET GLOBAL max_connections = 500, wait_timeout = 7, SESSION wait_timeout = 9, @x := (1 + 2)",
     b"SET SESSION wait_timeout = 9, @x := (1 + 2)"),  # GLOBAL holds for wait_timeout = 7 too
    (b"set @@GLOBAL.max_connections = 500, @@session.wait_timeout = 11, @@lock_wait_timeout = 12",
     b"SET @@session.wait_timeout = 11, @@lock_wait_timeout = 12"),
    (b"SET GLOBAL max_connections = 500, @m = CONCAT('a,', (SELECT 'b')), @@session.lock_wait_timeout = 13",
     b"SET @m = CONCAT('a,', (SELECT 'b')), @@session.lock_wait_timeout = 13"),
    (b"SET GLOBAL max_connections = 500, @@lock_wait_timeout = 12", None),  # bare @@x after GLOBAL: unsure
    (b"SET GLOBAL max_connections = 500", None),
    (b"SET PERSIST max_connections = 500, wait_timeout = 7", None),
    (b"SET /*!40101 GLOBAL */ max_connections = 500, @x = 1", None),  # a comment: not rewritten
    (b"SET GLOBAL max_connections = 500; SET @x = 1", None),
    (b"SET PASSWORD = PASSWORD('secret')", None),
]


@pytest.mark.parametrize("sql, expected", MIXED_SCOPE_SETS)
def test_a_resumed_connection_sends_the_session_part_of_a_set_that_also_sets_globals(sql, expected):
    from fastproxy.replay.checkpoint import session_part
    from fastproxy.replay.stmtinfo import Classifier

    assert session_part(Classifier(), sql) == expected


def test_the_session_part_of_a_mixed_set_sets_the_session_on_a_real_server_and_no_global(mariadb_test):
    from fastproxy.replay.checkpoint import session_part
    from fastproxy.replay.stmtinfo import Classifier

    classify = Classifier()
    db = MySQLdb.connect(host=mariadb_test.host, port=mariadb_test.port, user="root", password=ROOT_PASSWORD)
    try:
        cur = db.cursor()
        cur.execute("SELECT @@global.max_connections, @@global.wait_timeout")
        globals_before = cur.fetchone()
        for sql, expected in MIXED_SCOPE_SETS:
            if expected is not None:
                cur.execute(session_part(classify, sql))
        cur.execute("SELECT @@session.sql_mode, @@session.wait_timeout, @x, @@session.lock_wait_timeout, @m")
        assert cur.fetchone() == ("ANSI_QUOTES", 11, 3, 13, "a,b")
        cur.execute("SELECT @@global.max_connections, @@global.wait_timeout")
        assert cur.fetchone() == globals_before
    finally:
        db.close()


def test_a_checkpoint_from_before_the_reorder_window_resumes_what_is_read_as_written(tmp_path):
    """A checkpoint written before its identity named the reorder window still applies where the
    records are read as written (no window: a slow log, a capture without one); not where they are
    now read in another order."""
    from fastproxy.errors import JobError
    from fastproxy.replay.checkpoint import CHECKPOINT_VERSION, Checkpoint

    ident = {"input": ["/x"], "order": "causal"}
    with open(tmp_path / "replay.checkpoint", "w") as f:
        json.dump({"version": CHECKPOINT_VERSION, "identity": ident, "finished": False}, f)
    cp = Checkpoint(str(tmp_path), "f", "replay.checkpoint", dict(ident, reorder_window_ns=[0]), resume=True)
    assert cp.restored is not None
    try:
        Checkpoint(str(tmp_path), "f", "replay.checkpoint", dict(ident, reorder_window_ns=[5_000_000]), resume=True)
    except JobError as e:
        assert "reorder_window_ns" in str(e)
    else:
        raise AssertionError("a checkpoint counted in another order must be refused")
