"""--pipeline N at speed 0 (EngineCore._fill_pipeline_c): plain reads go behind the command in
flight without waiting for its answer (inside transactions too, behind their BEGIN or a read). On a capture of reads (text, and sysbench's
prepared point selects), autocommit writes, transactions, reads that fail on replay and reads that
take time, a pipelined replay leaves the data and the verdict of a replay one command at a time; a
connection killed with commands pipelined says each of them and goes on; kill -9 then --resume
ends with the data of an uninterrupted replay; the option is refused where it cannot apply."""
from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time

import MySQLdb
import pytest

from fastproxy.capture.record import KIND_COMMAND
from fastproxy.scratch_db import ROOT_PASSWORD
from proxy_util import wait_for
from replay_util import (Capture, capture_workers, checksums, dump, newest_summary, records, replay_cli,
                         sigkill_at_checkpoint, write_capture)

DB = "pl"
SETUP = f"""DROP DATABASE IF EXISTS {DB}; CREATE DATABASE {DB}; USE {DB};
CREATE TABLE kv (k INT PRIMARY KEY, v BIGINT NOT NULL, note VARCHAR(32) NOT NULL DEFAULT '');
CREATE TABLE log (id INT AUTO_INCREMENT PRIMARY KEY, k INT NOT NULL, v BIGINT NOT NULL);
CREATE TABLE gone (x INT);
INSERT INTO kv (k, v) SELECT seq, seq FROM seq_0_to_99;
"""
SB = ["--db-driver=mysql", "--mysql-host=127.0.0.1", "--mysql-user=root", f"--mysql-password={ROOT_PASSWORD}",
      f"--mysql-db={DB}", "--tables=1", "--table-size=500", "--db-ps-mode=auto"]
SLEEP_READ = "SELECT SLEEP(0.004), k FROM kv WHERE k = 1"  # a read that takes time: a replay lasts


def _worker(port: int, k: int, deadline: float, errors: list) -> None:
    """Runs of reads (most of them pipelined on replay), the connection's own writes read back (the
    server runs a connection's commands in order), transactions (their reads pipelined behind their
    BEGIN, their writes one at a time), reads that fail
    on replay (the table is dropped there), slow reads. Each connection writes its own rows and
    reads those and rows nobody writes: what a read returns does not depend on other connections'
    timing, so the verdict is the same however the replay interleaves them."""
    rnd = random.Random(k)
    own = list(range(30 * k, 30 * k + 30))
    static = list(range(90, 100))
    try:
        c = MySQLdb.connect(host="127.0.0.1", port=port, user="root", password=ROOT_PASSWORD, autocommit=True,
                            database=DB)
        cur = c.cursor()
        while time.monotonic() < deadline:
            r = rnd.random()
            if r < 0.55:
                for _ in range(rnd.randint(2, 8)):
                    cur.execute("SELECT v, note FROM kv WHERE k = %s", (rnd.choice(own + static),))
                    cur.fetchall()
            elif r < 0.7:
                key = rnd.choice(own)
                cur.execute("UPDATE kv SET v = v + 1, note = %s WHERE k = %s", (f"c{k}", key))
                cur.execute("SELECT v, note FROM kv WHERE k = %s", (key,))
                cur.fetchall()
            elif r < 0.8:
                key = rnd.choice(own)
                cur.execute("BEGIN")
                cur.execute("SELECT v FROM kv WHERE k = %s", (key,))
                cur.fetchall()
                for _ in range(rnd.randint(0, 5)):  # pipelined behind the BEGIN and the read before them
                    cur.execute("SELECT v, note FROM kv WHERE k = %s", (rnd.choice(own + static),))
                    cur.fetchall()
                cur.execute("UPDATE kv SET v = MOD(v * 2, 1000003) WHERE k = %s", (key,))
                cur.execute("INSERT INTO log (k, v) SELECT k, v FROM kv WHERE k = %s", (key,))
                cur.execute("COMMIT")
            elif r < 0.87:
                cur.execute("SELECT COUNT(*) FROM gone")  # fails on replay
                cur.fetchall()
            elif r < 0.95:
                cur.execute(SLEEP_READ)
                cur.fetchall()
            else:
                cur.execute("SELECT SUM(v), COUNT(*) FROM kv WHERE k BETWEEN %s AND %s", (own[0], own[-1]))
                cur.fetchall()
        c.close()
    except Exception as e:  # noqa: BLE001 - reported by the fixture
        errors.append(repr(e))


@pytest.fixture(scope="module")
def workload(mariadb, tmp_path_factory):
    """3 text connections and 2 sysbench threads (prepared point selects) for 3 s through a proxy."""
    mariadb.sql(SETUP)
    prep = subprocess.run(["sysbench", "oltp_point_select", *SB, f"--mysql-port={mariadb.port}", "prepare"],
                          capture_output=True, text=True, timeout=120)
    assert prep.returncode == 0, prep.stdout + prep.stderr
    start = dump(mariadb, DB)
    out = str(tmp_path_factory.mktemp("pipeline") / "cap")

    def sysbench(port: int) -> None:
        sb = subprocess.run(["sysbench", "oltp_point_select", *SB, f"--mysql-port={port}", "--threads=2",
                             "--time=3", "run"], capture_output=True, text=True, timeout=120)
        assert sb.returncode == 0, sb.stdout + sb.stderr

    capture_workers(mariadb, out, _worker, 3, 3.0, during=sysbench)
    commands = [r for r in records(out) if r.kind == KIND_COMMAND]
    executes = sum(1 for r in commands if r.payload[:1] == b"\x17")
    gone = sum(1 for r in commands if r.payload == b"\x03SELECT COUNT(*) FROM gone")
    sleeps = sum(1 for r in commands if r.payload == b"\x03" + SLEEP_READ.encode())
    assert executes > 500 and gone > 5 and sleeps > 5, (executes, gone, sleeps)
    return {"capture": out, "start": start, "commands": len(commands), "gone": gone,
            "production": {t: c for t, c in checksums(mariadb, DB).items() if t != f"{DB}.gone"}}  # dropped on replay


def _restore(test_db, start: str) -> None:
    test_db.sql(f"DROP DATABASE IF EXISTS {DB};\n" + start + f"\nDROP TABLE {DB}.gone;")


def _verdict(summary: dict) -> tuple:
    v = summary.get("verdict") or {}
    return v.get("new_failures"), v.get("mismatched_commands"), v.get("mismatch_kinds")


def test_a_pipelined_replay_leaves_the_data_and_verdict_of_one_at_a_time(workload, mariadb_test, tmp_path):
    results = {}
    for depth in (1, 8):
        _restore(mariadb_test, workload["start"])
        report = str(tmp_path / f"report{depth}")
        res, summary = replay_cli(mariadb_test.addr, workload["capture"], "--speed", "0", "--pipeline", str(depth),
                                  "--report-dir", report, "--no-report-tables")
        results[depth] = (summary, checksums(mariadb_test, DB))
        assert ("pipeline: up to 8 commands in flight" in res.stdout) == (depth == 8), res.stdout
    (one, data_one), (piped, data_piped) = results[1], results[8]
    assert data_one == data_piped == workload["production"]
    assert one["pipeline"] == 1 and one["commands_pipelined"] == 0
    assert piped["pipeline"] == 8
    # most of the capture is reads outside transactions: sysbench's executes, the runs of SELECTs
    assert piped["commands_pipelined"] > workload["commands"] // 3, piped["commands_pipelined"]
    assert 0 < piped["commands_pipelined_in_transactions"] < piped["commands_pipelined"], piped
    assert "inside transactions" in res.stdout
    for s in (one, piped):
        assert s["commands_replayed"] == one["commands_replayed"]
        assert s["commands_failed"] == workload["gone"], s["top_failures"]  # the dropped table, and nothing else
        assert s["other_errors"] == 0, s["other_error_types"]
    assert _verdict(piped) == _verdict(one)
    assert not _verdict(piped)[1], piped.get("verdict")  # no read returned other rows


def test_a_connection_killed_with_commands_pipelined_says_each_and_goes_on(mariadb, mariadb_test, proxy, tmp_path):
    """One connection: 40 slow reads, then a write. On replay (pipeline 4) the target kills the
    connection while reads are in flight behind the head: each lost one is said, the rest of the
    connection's commands go out on a new connection, the write among them."""
    mariadb.sql(SETUP)
    out = str(tmp_path / "cap")
    with Capture(proxy, out):
        c = MySQLdb.connect(host="127.0.0.1", port=proxy.port, user="root", password=ROOT_PASSWORD,
                            autocommit=True, database=DB)
        cur = c.cursor()
        for _ in range(40):
            cur.execute("SELECT SLEEP(0.05), 'pipelined-then-killed'")
            cur.fetchall()
        cur.execute("UPDATE kv SET note = 'after the kill' WHERE k = 7")
        c.close()
    mariadb_test.sql(SETUP)
    killed = []

    def kill_one():
        def victim():
            rows = mariadb_test.sql("SELECT id FROM information_schema.processlist "
                                    "WHERE info LIKE 'SELECT SLEEP(0.05), %'").split()
            return rows[0] if rows else None

        vid = wait_for(victim, 60, 0.02, "a pipelined sleep on the target")
        time.sleep(0.12)  # a few answered: the pipeline is full behind the one running
        mariadb_test.sql(f"KILL CONNECTION {vid}")
        killed.append(vid)

    t = threading.Thread(target=kill_one)
    t.start()
    _, summary = replay_cli(mariadb_test.addr, out, "--speed", "0", "--pipeline", "4", "--no-report-tables",
                            "--report-dir", str(tmp_path / "report"))
    t.join()
    assert killed
    lost = summary["other_error_types"].get("connection lost", 0)
    assert 1 <= lost <= 4, summary["other_error_types"]  # the head and what was pipelined behind it
    assert summary["commands_pipelined"] > 0
    captured = sum(1 for r in records(out) if r.kind == KIND_COMMAND)  # with the client's own SETs
    assert summary["commands_replayed"] == captured - lost, summary  # the rest, on a new connection
    assert mariadb_test.sql(f"SELECT note FROM {DB}.kv WHERE k = 7").strip() == "after the kill"


def _replay_args(target, cap: str, report_dir: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fastproxy", "replay", "--target", target.addr, "--input", cap, "--username", "root",
            "--password", ROOT_PASSWORD, "--report-dir", report_dir, "--speed", "0", "--pipeline", "8", *extra]


def test_kill_9_then_resume_of_a_pipelined_replay_gives_the_data_of_an_uninterrupted_one(workload, mariadb_test,
                                                                                          tmp_path):
    _restore(mariadb_test, workload["start"])
    report = str(tmp_path / "report")
    env = dict(os.environ, FASTPROXY_CHECKPOINT_INTERVAL_S="0.05")
    proc = subprocess.Popen(_replay_args(mariadb_test, workload["capture"], report, "--no-report-tables"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    before = sigkill_at_checkpoint(proc, report, lambda cp: cp["stats"]["replayed"] > workload["commands"] // 4,
                                   0.01, "the replay to be a quarter done")
    assert not before["finished"]
    res = subprocess.run(_replay_args(mariadb_test, workload["capture"], report, "--no-report-tables", "--resume"),
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    summary = newest_summary(report)
    assert summary["resume"]["resumes"] == 1 and summary["resume"]["records_done_before"] > 0
    assert checksums(mariadb_test, DB) == workload["production"]


@pytest.mark.parametrize("args, message", [
    (("--speed", "1", "--pipeline", "4"), "needs speed 0"),
    (("--speed", "0", "--pipeline", "0"), "1 .. 64"),
    (("--speed", "0", "--pipeline", "65"), "1 .. 64"),
])
def test_the_pipeline_is_refused_where_it_cannot_apply(mariadb_test, tmp_path, args, message):
    res = subprocess.run([sys.executable, "-m", "fastproxy", "replay", "--target", mariadb_test.addr, "--input",
                          str(tmp_path), "--username", "root", "--password", ROOT_PASSWORD, *args],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and message in res.stderr and "Traceback" not in res.stderr, res.stderr


MS = 1_000_000
AUTOCOMMIT = 2  # SERVER_STATUS_AUTOCOMMIT in a command's captured status


def test_read_only_never_pipelines_what_it_filters(mariadb_test, tmp_path):
    """--read-only filters SELECT ... INTO OUTFILE (it writes a file on the target's host); behind a
    plain read in a pipeline it must be filtered all the same (review of this stop: it was sent)."""
    mariadb_test.sql("DROP DATABASE IF EXISTS plro; CREATE DATABASE plro; CREATE TABLE plro.t (a INT);"
                     "INSERT INTO plro.t VALUES (1), (2)")
    out = tmp_path / "outfile"
    sqls = [b"SELECT a FROM t", b"SELECT a FROM t",
            f"SELECT a FROM t WHERE a > 100 INTO OUTFILE '{out}'".encode(), b"SELECT a FROM t"]
    t0 = time.time_ns() - 10**9
    cmds = [((1, t0 + i * MS, t0 + i * MS + 500, 0, 0, 0, 0 if b"OUTFILE" in s else 2, b"\x03" + s),
             {"status_flags": AUTOCOMMIT}) for i, s in enumerate(sqls)]
    cap = str(tmp_path / "cap")
    write_capture(cap, "plro", [1], cmds, t0)
    _, summary = replay_cli(mariadb_test.addr, cap, "--speed", "0", "--read-only", "--pipeline", "8",
                            "--no-report-tables", "--report-dir", str(tmp_path / "report"))
    assert not out.exists()
    assert summary["commands_filtered"] == 1 and summary["commands_replayed"] == 3, summary


def test_a_select_into_that_may_be_sent_again_is_not_pipelined(mariadb_test, tmp_path):
    """SELECT ... INTO @v answered "1 row" in production; here the row is not there yet (another
    connection's INSERT overlapped it), so it is sent again after that write. With commands pipelined
    behind it, answers went to the wrong records and the connection waited for ever (review of this
    stop). It goes one at a time: the replay ends, as at --pipeline 1."""
    t0 = 1_700_000_000_000_000_000
    recs = [(2, t0, t0 + 500 * MS, 0, 0, 0, 1, b"\x03SELECT SLEEP(0.5)"),
            (2, t0 + 501 * MS, t0 + 600 * MS, 0, 0, 1, 0, b"\x03INSERT INTO t VALUES (5)"),
            (1, t0 + 510 * MS, t0 + 511 * MS, 0, 0, 0, 1, b"\x03SELECT x FROM probe"),
            (1, t0 + 520 * MS, t0 + 521 * MS, 0, 0, 1, 0, b"\x03SELECT a INTO @v FROM t WHERE a = 5"),
            (1, t0 + 530 * MS, t0 + 531 * MS, 0, 0, 0, 1, b"\x03SELECT 'third', @v"),
            (1, t0 + 540 * MS, t0 + 541 * MS, 0, 0, 0, 1, b"\x03SELECT 'fourth'")]
    cap = str(tmp_path / "cap")
    write_capture(cap, "plag", [1, 2], [(r, {"status_flags": AUTOCOMMIT}) for r in sorted(recs, key=lambda r: r[2])],
                  t0)
    results = {}
    for depth in ("1", "8"):
        mariadb_test.sql("DROP DATABASE IF EXISTS plag; CREATE DATABASE plag; CREATE TABLE plag.t (a INT PRIMARY KEY);"
                         "CREATE TABLE plag.probe (x INT); INSERT INTO plag.probe VALUES (42)")
        _, summary = replay_cli(mariadb_test.addr, cap, "--speed", "0", "--pipeline", depth, "--no-report-tables",
                                "--report-dir", str(tmp_path / f"report{depth}"), timeout=60)
        results[depth] = summary
        assert summary["commands_replayed"] == 6 and summary["commands_failed"] == 0, summary
    assert _verdict(results["8"]) == _verdict(results["1"])


def test_a_pipelined_read_that_times_out_on_a_lock_aborts_its_transaction_whole(mariadb_test, tmp_path):
    """A transaction's reads pipelined behind its BEGIN; on the target another session holds LOCK
    TABLES on the first read's table, so that read waits for the metadata lock and fails with 1205
    after lock_wait_timeout (1 s) while the reads behind it are in flight. A retry cannot put them
    back into the transaction: it is reported aborted, once, and its UPDATE and COMMIT are not sent
    (not half a transaction). One at a time the same transaction is retried, then aborted: the same
    data either way."""
    t0 = 1_700_000_000_000_000_000
    in_txn = {"status_flags": AUTOCOMMIT | 1}
    sqls = [(b"SET SESSION lock_wait_timeout = 1", 0, {"status_flags": AUTOCOMMIT}),
            (b"BEGIN", 0, in_txn),
            (b"SELECT a FROM locked", 1, in_txn),
            (b"SELECT a + 1 FROM locked", 1, in_txn),
            (b"SELECT b FROM free", 1, in_txn),
            (b"SELECT b + 1 FROM free", 1, in_txn),
            (b"UPDATE free SET b = b + 100", 1, in_txn),
            (b"COMMIT", 0, {"status_flags": AUTOCOMMIT}),
            (b"SELECT 'after', b FROM free", 1, {"status_flags": AUTOCOMMIT}),
            (b"SELECT 'autocommit', a FROM locked", 1, {"status_flags": AUTOCOMMIT}),
            (b"SELECT 'last', b FROM free", 1, {"status_flags": AUTOCOMMIT})]
    cmds = [((1, t0 + i * MS, t0 + i * MS + 500, 0, 0, 1 if s.startswith(b"UPDATE") else 0, rows, b"\x03" + s), kw)
            for i, (s, rows, kw) in enumerate(sqls)]
    cap = str(tmp_path / "cap")
    write_capture(cap, "plmdl", [1], cmds, t0)
    results = {}
    for depth in ("8", "1"):
        mariadb_test.sql("DROP DATABASE IF EXISTS plmdl; CREATE DATABASE plmdl; CREATE TABLE plmdl.locked (a INT);"
                         "CREATE TABLE plmdl.free (b INT); INSERT INTO plmdl.free VALUES (1)")
        holder = MySQLdb.connect(host="127.0.0.1", port=mariadb_test.port, user="root", password=ROOT_PASSWORD)
        try:
            holder.cursor().execute("LOCK TABLES plmdl.locked WRITE")
            res, summary = replay_cli(mariadb_test.addr, cap, "--speed", "0", "--pipeline", depth,
                                      "--no-report-tables", "--report-dir", str(tmp_path / f"report{depth}"),
                                      timeout=120)
        finally:
            holder.close()
        results[depth] = summary
        assert mariadb_test.sql("SELECT b FROM plmdl.free").strip() == "1"  # the UPDATE never committed
        txn = summary["transactions"]
        # not sent: the UPDATE and the COMMIT; one at a time the three reads after the failed one too
        assert txn["commands_skipped"] == (2 if depth == "8" else 5), (txn, res.stdout)
        assert summary["top_failures"] and "1205" in str(summary["top_failures"]), summary["top_failures"]
    piped, one = results["8"], results["1"]
    assert piped["commands_pipelined_in_transactions"] == 4  # the four reads behind the BEGIN
    # pipelined: the transaction given up once (its second read on `locked`, in flight, fails as any
    # command), and the autocommit read on `locked` with a read behind it is a failure as any (no
    # transaction to give up); one at a time, each is retried, then given up
    assert piped["transactions"]["aborted"] == 1 and piped["transactions"]["retried"] == 0, piped["transactions"]
    assert one["transactions"]["aborted"] == 2 and one["transactions"]["retried"] == 2, one["transactions"]
    assert piped["commands_failed"] == 3 and one["commands_failed"] == 2, (piped["commands_failed"],
                                                                            one["commands_failed"])
