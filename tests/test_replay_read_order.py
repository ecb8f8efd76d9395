"""What a read saw in production, it sees on replay: a commit production ran after a read (or after the
snapshot a transaction took with its first read) waits for that read on replay, and a transaction's
snapshot waits for every commit that ended before it, whatever table (fastproxy/replay/_causal.pyx,
"read events"). Without this, replay as fast as possible reports result mismatches on an identical
server that are only artifacts of replay order.

Each capture is real (a proxy in front of a scratch MariaDB, clients taking turns), and each holds a
connection up on replay with `SELECT SLEEP(0.4)`: a statement that took as long in production but
left the other connection's step after it there; at speed 0 the other connection goes at once unless
the order holds it back. So each case fails when the order is missing: checked with `--order
connection`, which keeps each connection's order only. And a read a commit overlapped in production
(which came first is unknown) that differs is counted apart in every report.
"""
from __future__ import annotations

import os

import MySQLdb
import pytest

from fastproxy.scratch_db import ROOT_PASSWORD

from replay_util import Capture, replay_cli

pytestmark = pytest.mark.timeout(240)

DB = "readorder"
SETUP = (f"DROP DATABASE IF EXISTS {DB}; CREATE DATABASE {DB}; USE {DB};"
         "CREATE TABLE t1 (id INT PRIMARY KEY, v INT NOT NULL); INSERT INTO t1 VALUES (1, 1);"
         "CREATE TABLE t2 (id INT PRIMARY KEY, v INT NOT NULL); INSERT INTO t2 VALUES (1, 1);")


def _connect(port: int):
    return MySQLdb.connect(host="127.0.0.1", port=port, user="root", password=ROOT_PASSWORD, database=DB,
                           autocommit=True)


def _run(conn, sql: str):
    cur = conn.cursor()
    cur.execute(sql)
    rows = cur.fetchall()
    cur.close()
    return rows


def _autocommit_read(a, b) -> None:
    """a reads t2, then b changes it: on replay a is held up, b must not overtake its read."""
    _run(a, "SELECT SLEEP(0.4)")
    assert _run(a, "SELECT v FROM t2 WHERE id = 1") == ((1,),)
    _run(b, "UPDATE t2 SET v = 2 WHERE id = 1")


def _snapshot_then_commit(a, b) -> None:
    """a's transaction takes its snapshot reading t1; b then changes t2; a's read of t2 does not see it."""
    _run(a, "SELECT SLEEP(0.4)")
    _run(a, "BEGIN")
    assert _run(a, "SELECT v FROM t1 WHERE id = 1") == ((1,),)
    _run(b, "UPDATE t2 SET v = 2 WHERE id = 1")
    assert _run(a, "SELECT v FROM t2 WHERE id = 1") == ((1,),)
    _run(a, "COMMIT")


def _commit_then_snapshot(a, b) -> None:
    """b changes t2 (held up on replay), then a's transaction takes its snapshot reading t1: a's later
    read of t2 sees b's change."""
    _run(b, "SELECT SLEEP(0.4)")
    _run(b, "UPDATE t2 SET v = 3 WHERE id = 1")
    _run(a, "BEGIN")
    assert _run(a, "SELECT v FROM t1 WHERE id = 1") == ((1,),)
    assert _run(a, "SELECT v FROM t2 WHERE id = 1") == ((3,),)
    _run(a, "COMMIT")


def _commit_and_chain(a, b) -> None:
    """b's transaction changes t2 and ends with COMMIT AND CHAIN (held up on replay before it); a then
    reads t2 and sees the change while b's chained transaction is still open."""
    _run(b, "BEGIN")
    _run(b, "SELECT SLEEP(0.4)")
    _run(b, "UPDATE t2 SET v = 4 WHERE id = 1")
    _run(b, "COMMIT AND CHAIN")
    assert _run(a, "SELECT v FROM t2 WHERE id = 1") == ((4,),)
    _run(b, "UPDATE t1 SET v = 4 WHERE id = 1")
    _run(b, "COMMIT")


@pytest.mark.parametrize("steps", [_autocommit_read, _snapshot_then_commit, _commit_then_snapshot, _commit_and_chain],
                         ids=["a read before a commit", "a snapshot before a commit", "a commit before a snapshot",
                              "a commit and chain before a read"])
def test_reads_see_on_replay_the_commits_they_saw_in_production(mariadb, mariadb_test, proxy_factory, tmp_path,
                                                                  steps):
    mariadb.sql(SETUP)
    out = str(tmp_path / "capture")
    proxy = proxy_factory([mariadb])
    with Capture(proxy, out):
        a, b = _connect(proxy.port), _connect(proxy.port)
        try:
            steps(a, b)
        finally:
            a.close()
            b.close()
    verdicts = {}
    for order in ("causal", "connection"):
        mariadb_test.sql(SETUP)
        _, summary = replay_cli(mariadb_test.addr, out, "--speed", "0", "--order", order, "--no-report-tables",
                                "--report-dir", str(tmp_path / order))
        assert summary["commands_failed"] == 0, summary
        verdicts[order] = summary["verdict"]
    assert verdicts["causal"]["mismatched_commands"] == 0, verdicts["causal"]
    # the case depends on the order: per-connection order alone replays the read wrong
    assert verdicts["connection"]["mismatch_kinds"] == {"content": 1}, verdicts["connection"]


def test_a_differing_read_a_commit_overlapped_is_set_apart_in_every_report(mariadb_test, tmp_path):
    """A hand-written capture whose two reads of an unchanging row both differ on replay (their captured
    fingerprints are made up): the one an UPDATE of its table ended during in production is counted
    apart, the other is a mismatch; the summary, the text and the HTML report say so."""
    from fastproxy.capture.record import OUTCOME_OK
    from fastproxy.constants import SERVER_STATUS

    from replay_util import write_capture

    ms, t0 = 1_000_000, 1_700_000_000_000_000_000
    auto = SERVER_STATUS.AUTOCOMMIT
    mariadb_test.sql(SETUP)
    read = b"\x03SELECT v FROM t1 WHERE id = 1"
    made_up = {"columns": 1, "hash_ordered": 7, "hash_unordered": 7, "status_flags": auto}
    path = str(tmp_path / "capture")
    write_capture(path, DB, (1, 2, 3), [  # in the order they ended, as a capture is
        ((2, t0 + 5 * ms, t0 + 8 * ms, OUTCOME_OK, 0, 1, 0, b"\x03UPDATE t1 SET v = 5 WHERE id = 1"),
         {"status_flags": auto}),
        ((1, t0, t0 + 10 * ms, OUTCOME_OK, 0, 0, 1, read), made_up),  # the update ended while it ran
        ((3, t0 + 20 * ms, t0 + 21 * ms, OUTCOME_OK, 0, 0, 1, read), made_up),  # after it: ordered
    ], t0)
    res, summary = replay_cli(mariadb_test.addr, path, "--speed", "0", "--no-report-tables",
                              "--report-dir", str(tmp_path / "report"))
    v = summary["verdict"]
    assert (v["mismatched_commands"], v["mismatched_commands_order_unknown"]) == (1, 1), v
    assert summary["causal"]["reads_order_unknown"] == 1, summary["causal"]
    text = open(summary["_path"][:-len(".json")] + ".txt").read()
    assert "order unknown:       1 read in 1 statement differed" in text, text
    html = open(summary["_path"][:-len(".json")] + ".html").read()
    assert "1 read returned different results where a commit of their tables overlapped them" in html


def test_a_commit_longer_than_the_reads_kept_is_said_in_every_report(mariadb_test, tmp_path):
    """Reads are kept about a second for the commits read after them; a commit that started before the
    oldest read still kept (here: 2.45 s long, read after a read 1.9 s later dropped the first) may have
    overlapped reads no longer there to flag: the summary counts it, and the text and the HTML say so."""
    from fastproxy.capture.record import OUTCOME_OK
    from fastproxy.constants import SERVER_STATUS

    from replay_util import write_capture

    ms, t0 = 1_000_000, 1_700_000_000_000_000_000
    auto = {"status_flags": SERVER_STATUS.AUTOCOMMIT}
    mariadb_test.sql(SETUP)
    read = b"\x03SELECT v FROM t1 WHERE id = 1"
    path = str(tmp_path / "capture")
    write_capture(path, DB, (1, 2), [  # in the order they ended
        ((1, t0 + 100 * ms, t0 + 110 * ms, OUTCOME_OK, 0, 0, 1, read), auto),
        ((1, t0 + 2000 * ms, t0 + 2010 * ms, OUTCOME_OK, 0, 0, 1, read), auto),  # the first read is dropped
        ((2, t0 + 50 * ms, t0 + 2500 * ms, OUTCOME_OK, 0, 1, 0, b"\x03UPDATE t2 SET v = 5 WHERE id = 1"), auto),
    ], t0)
    _, summary = replay_cli(mariadb_test.addr, path, "--speed", "0", "--no-report-tables",
                            "--report-dir", str(tmp_path / "report"))
    assert summary["commands_failed"] == 0, summary
    assert summary["causal"]["order_unknown_missed"] == 1, summary["causal"]
    text = open(summary["_path"][:-len(".json")] + ".txt").read()
    assert "order: 1 commit may have overlapped reads no longer kept" in text, text
    html = open(summary["_path"][:-len(".json")] + ".html").read()
    assert "1 commit may have overlapped reads no longer kept" in html


def test_a_read_whose_overlapping_commit_was_never_read_is_not_a_mismatch(mariadb_test, tmp_path):
    """A read that differs waits for the commits read after it (up to a window) before it is judged:
    one of them may have overlapped it in production. When the input breaks (or the replay is
    canceled) before they are read, it was judged as not overlapped, a mismatch, although here the
    commit the broken tail held overlapped it: now it is counted as order unknown, and the verdict
    says the replay stopped before reading what would tell."""
    import subprocess
    import sys

    from fastproxy.capture.record import OUTCOME_OK
    from fastproxy.constants import SERVER_STATUS

    from replay_util import newest_summary, write_capture

    ms, t0 = 1_000_000, 1_700_000_000_000_000_000
    auto = {"status_flags": SERVER_STATUS.AUTOCOMMIT}
    mariadb_test.sql(SETUP)
    path = str(tmp_path / "capture")
    fillers = [((3, t0 + 111 * ms + i * 100, t0 + 111 * ms + i * 100 + 50, OUTCOME_OK, 0, 0, 0,
                 b"\x03DO %d /* within the read's window: it stays to be judged */" % i), auto)
               for i in range(5000)]
    write_capture(path, DB, (1, 2, 3), [  # in the order they ended
        # production read 2 rows (the replay reads 1): a difference
        ((1, t0 + 100 * ms, t0 + 110 * ms, OUTCOME_OK, 0, 0, 2, b"\x03SELECT v FROM t1 WHERE id = 1"), auto),
        *fillers,
        ((2, t0 + 50 * ms, t0 + 500 * ms, OUTCOME_OK, 0, 1, 0, b"\x03UPDATE t1 SET v = 5 WHERE id = 1"), auto),
    ], t0)
    (name,) = [f for f in os.listdir(path) if f.endswith(".lz4")]
    with open(os.path.join(path, name), "r+b") as f:  # the tail with the UPDATE cut off: the input breaks
        f.truncate(os.path.getsize(os.path.join(path, name)) - 20)
    report = str(tmp_path / "report")
    res = subprocess.run([sys.executable, "-m", "fastproxy", "replay", "--target", mariadb_test.addr, "--input", path,
                          "--username", "root", "--password", ROOT_PASSWORD, "--speed", "0", "--no-report-tables",
                          "--report-dir", report], capture_output=True, text=True, timeout=180)
    assert res.returncode == 3, res.stdout + res.stderr  # incomplete: the input broke
    summary = newest_summary(report)
    assert summary["input_error"] and summary["commands_replayed"] < 5002, summary
    verdict = summary["verdict"]
    assert verdict["mismatched_commands"] == 0, verdict
    assert verdict["mismatched_commands_order_unknown"] == 1, verdict
    assert verdict["mismatched_commands_order_unread"] == 1, verdict
    text = open(summary["_path"][:-len(".json")] + ".txt").read()
    assert "of which 1 read: the replay stopped before reading the commits that would tell" in text, text
    html = open(summary["_path"][:-len(".json")] + ".html").read()
    assert "Of those, 1 because the replay stopped before it read the commits" in html
