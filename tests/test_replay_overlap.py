"""A write that found, in production, a row another connection's write had just made visible, while
the proxy stamped that write's end only after the finder started (a server thread preempted between
commit and answer): causal order cannot know the finder depends on it. Seen in the shop workload: a
job picked with SKIP LOCKED and updated by id stayed 'new' on replay, its UPDATE having run before
the INSERT that created it (tests/workload.py; README, "causal order").

The capture here is written by hand so that the race is certain: the inserting connection is held up
on replay by a slow statement that took no time in production.
"""
from __future__ import annotations


import pytest
import uvloop

from fastproxy.capture.record import OUTCOME_OK
from fastproxy.constants import SERVER_STATUS
from fastproxy.replay import engine as engine_module
from fastproxy.replay.engine import ReplayOptions, Replayer
from fastproxy.scratch_db import ROOT_PASSWORD
from replay_util import write_capture

MS = 1_000_000
T0 = 1_700_000_000_000_000_000
AUTOCOMMIT = SERVER_STATUS.AUTOCOMMIT


def _write(path, conns, recs) -> None:
    """A capture of `recs` (conn, start, end, outcome, err, affected, rows, payload, status) in the
    order commands end, as a capture is."""
    def command(*rec, status):
        payload = rec[-1]
        values = payload.split(b"VALUES (")[-1].split(b",")[0] if b"VALUES (" in payload else b""
        return rec, {"last_insert_id": int(values) if values.isdigit() else 0, "status_flags": status}

    write_capture(path, "ovl", conns, (command(*rec, status=status) for *rec, status in sorted(recs, key=lambda r: r[2])),
                  T0)


def _replay(db, path):
    """Replay the capture at `path` on `db` as fast as possible: (engine, its stats)."""
    engine = Replayer(path, ReplayOptions(host=db.host, port=db.port, username="root", password=ROOT_PASSWORD, speed=0))
    return engine, uvloop.run(engine.run())


def _capture(path, case: str) -> None:
    """Connection 1 sleeps (no time in production), then inserts job 7 from 2 ms to 10 ms; connection
    2 updates job 7 at 5 ms (it found the row: 1 affected), in autocommit or inside a transaction that
    commits at 7 ms (all of it before the insert's end). "ordered": the insert's end is stamped at 4 ms instead, before the update
    started, so causal order orders them."""
    in_txn = AUTOCOMMIT | SERVER_STATUS.IN_TRANS
    recs = [(1, T0, T0 + 1 * MS, OUTCOME_OK, 0, 0, 0, b"\x03DO SLEEP(1)", AUTOCOMMIT),
            (1, T0 + 2 * MS, T0 + (4 if case == "ordered" else 10) * MS, OUTCOME_OK, 0, 1, 0,
             b"\x03INSERT INTO jobs (id, status) VALUES (7, 'new')", AUTOCOMMIT)]
    update = b"\x03UPDATE jobs SET status = 'taken' WHERE id = 7"
    if case == "in a transaction":
        recs += [(2, T0 + 3 * MS, T0 + 4 * MS, OUTCOME_OK, 0, 0, 0, b"\x03BEGIN", in_txn),
                 (2, T0 + 5 * MS, T0 + 6 * MS, OUTCOME_OK, 0, 1, 0, update, in_txn),
                 (2, T0 + 7 * MS, T0 + 8 * MS, OUTCOME_OK, 0, 0, 0, b"\x03COMMIT", AUTOCOMMIT)]
    else:
        recs.append((2, T0 + 5 * MS, T0 + 6 * MS, OUTCOME_OK, 0, 1, 0, update, AUTOCOMMIT))
    _write(path, (1, 2), recs)


@pytest.mark.parametrize("case", ["overlapping", "in a transaction", "ordered"])
def test_a_write_that_found_an_overlapping_insert_in_production_finds_it_on_replay(mariadb_test, tmp_path, case):
    mariadb_test.sql("DROP DATABASE IF EXISTS ovl; CREATE DATABASE ovl; "
                     "CREATE TABLE ovl.jobs (id INT PRIMARY KEY, status VARCHAR(8) NOT NULL)")
    path = str(tmp_path / "cap")
    _capture(path, case)
    engine, stats = _replay(mariadb_test, path)
    assert stats.failed == stats.skipped == 0 and stats.replayed == (5 if case == "in a transaction" else 3)
    # the update ran after the insert: the job is taken, as in production
    assert mariadb_test.sql("SELECT status FROM ovl.jobs WHERE id = 7").split() == ["taken"]
    # overlapping: it ran first (changed nothing), waited for the insert, ran again; else it waited for it at once
    assert stats.sent_again == (0 if case == "ordered" else 1)
    assert stats.sent_again_timed_out == 0
    assert stats.txn_retries == stats.txn_retried_ok == stats.causal_released == 0


def test_a_write_sent_again_before_the_overlapping_insert_ran_is_counted(mariadb_test, tmp_path, monkeypatch):
    """The insert is held up on replay (1 s) longer than the update waits for it: the update goes again
    without it, changes nothing again, and the summary says so rather than hide it."""
    monkeypatch.setattr(engine_module, "OVERLAP_WAIT_S", 0.2)
    mariadb_test.sql("DROP DATABASE IF EXISTS ovl; CREATE DATABASE ovl; "
                     "CREATE TABLE ovl.jobs (id INT PRIMARY KEY, status VARCHAR(8) NOT NULL)")
    path = str(tmp_path / "cap")
    _capture(path, "overlapping")
    engine, stats = _replay(mariadb_test, path)
    assert stats.sent_again == stats.sent_again_timed_out == 1
    assert engine._faithful_summary()["causal"]["sent_again_before_they_ran"] == 1
    assert mariadb_test.sql("SELECT status FROM ovl.jobs WHERE id = 7").split() == ["new"]


def test_two_transactions_that_found_overlapping_inserts_do_not_wait_for_each_other(mariadb_test, tmp_path):
    """Two queue workers each took a job whose INSERT was stamped late (its end after both workers'
    transactions committed): causal order sends each INSERT after both COMMITs (their lock order,
    as the capture shows it), so on replay both UPDATEs run first and change nothing. Each is sent
    again once the INSERTs have run; those INSERTs wait for the ends of both transactions, and each
    transaction waits for them. Before, each waited for the other until the 1.5-s limit, then went
    again before the INSERTs and the jobs stayed 'new' (a shop workload replay, 1 in ~20 on a loaded
    box)."""
    mariadb_test.sql("DROP DATABASE IF EXISTS ovl; CREATE DATABASE ovl; "
                     "CREATE TABLE ovl.jobs (id INT PRIMARY KEY, status VARCHAR(8) NOT NULL)")
    in_txn = AUTOCOMMIT | SERVER_STATUS.IN_TRANS
    recs = [(1, T0, T0 + 20 * MS, OUTCOME_OK, 0, 1, 0, b"\x03INSERT INTO jobs (id, status) VALUES (7, 'new')", AUTOCOMMIT),
            (2, T0 + MS // 2, T0 + 21 * MS, OUTCOME_OK, 0, 1, 0, b"\x03INSERT INTO jobs (id, status) VALUES (8, 'new')",
             AUTOCOMMIT)]
    for conn, job, t in ((3, 7, 5 * MS), (4, 8, 5 * MS + MS // 5)):
        recs += [(conn, T0 + t, T0 + t + MS, OUTCOME_OK, 0, 0, 0, b"\x03BEGIN", in_txn),
                 (conn, T0 + t + 3 * MS, T0 + t + 4 * MS, OUTCOME_OK, 0, 1, 0,
                  b"\x03UPDATE jobs SET status = 'taken' WHERE id = %d" % job, in_txn),
                 (conn, T0 + t + 5 * MS, T0 + t + 6 * MS, OUTCOME_OK, 0, 0, 0, b"\x03COMMIT", AUTOCOMMIT)]
    path = str(tmp_path / "cap")
    _write(path, (1, 2, 3, 4), recs)
    engine, stats = _replay(mariadb_test, path)
    assert stats.failed == stats.skipped == 0 and stats.replayed == 8
    assert mariadb_test.sql("SELECT id, status FROM ovl.jobs ORDER BY id").split() == ["7", "taken", "8", "taken"]
    assert stats.sent_again == 2 and stats.sent_again_timed_out == 0


def test_a_write_sent_again_does_not_wait_for_a_command_that_waits_for_it(mariadb_test, tmp_path):
    """The late-stamped INSERT waits (lock order) for worker A's transaction, whose UPDATE found its
    row, and for worker B's, which looked for a job once A had committed; B waits for A. On replay
    A's UPDATE changes nothing and waits for the INSERT, which waits for B, which waits for A: the
    INSERT goes (the shop workload's other intermittent case)."""
    mariadb_test.sql("DROP DATABASE IF EXISTS ovl; CREATE DATABASE ovl; "
                     "CREATE TABLE ovl.jobs (id INT PRIMARY KEY, status VARCHAR(8) NOT NULL)")
    in_txn = AUTOCOMMIT | SERVER_STATUS.IN_TRANS
    pick = b"\x03SELECT id FROM jobs WHERE status = 'new' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
    recs = [(1, T0, T0 + 20 * MS, OUTCOME_OK, 0, 1, 0, b"\x03INSERT INTO jobs (id, status) VALUES (7, 'new')", AUTOCOMMIT),
            (3, T0 + 5 * MS, T0 + 6 * MS, OUTCOME_OK, 0, 0, 0, b"\x03BEGIN", in_txn),
            (3, T0 + 8 * MS, T0 + 9 * MS, OUTCOME_OK, 0, 1, 0, b"\x03UPDATE jobs SET status = 'taken' WHERE id = 7", in_txn),
            (3, T0 + 10 * MS, T0 + 11 * MS, OUTCOME_OK, 0, 0, 0, b"\x03COMMIT", AUTOCOMMIT),
            (4, T0 + 11 * MS + MS // 2, T0 + 12 * MS, OUTCOME_OK, 0, 0, 0, b"\x03BEGIN", in_txn),
            (4, T0 + 12 * MS + MS // 2, T0 + 13 * MS, OUTCOME_OK, 0, 0, 0, pick, in_txn),
            (4, T0 + 14 * MS, T0 + 15 * MS, OUTCOME_OK, 0, 0, 0, b"\x03COMMIT", AUTOCOMMIT)]
    path = str(tmp_path / "cap")
    _write(path, (1, 3, 4), recs)
    engine, stats = _replay(mariadb_test, path)
    assert stats.failed == stats.skipped == 0 and stats.replayed == 7
    assert mariadb_test.sql("SELECT id, status FROM ovl.jobs ORDER BY id").split() == ["7", "taken"]
    assert stats.sent_again == 1 and stats.sent_again_timed_out == 0


def test_a_write_that_truly_follows_a_commit_is_not_let_go_by_another_connections_wait(mariadb_test, tmp_path):
    """Worker B's UPDATE found the row of a late-stamped INSERT P; P started after A's COMMIT, which
    set the value P copies, so P truly follows A. A waits too, to be sent again after an INSERT X
    held up on replay for a second. B's wait for P must not let P go before A commits: only a wait
    on a connection that waits for P itself is a cycle."""
    mariadb_test.sql("DROP DATABASE IF EXISTS ovl; CREATE DATABASE ovl; "
                     "CREATE TABLE ovl.orders (id INT PRIMARY KEY, status VARCHAR(8) NOT NULL);"
                     "CREATE TABLE ovl.flags (id INT PRIMARY KEY, v INT NOT NULL); INSERT INTO ovl.flags VALUES (1, 1);"
                     "CREATE TABLE ovl.jobs (id INT PRIMARY KEY, status VARCHAR(8) NOT NULL, src INT NOT NULL)")
    in_txn = AUTOCOMMIT | SERVER_STATUS.IN_TRANS
    recs = [(1, T0, T0 + 1 * MS, OUTCOME_OK, 0, 0, 0, b"\x03DO SLEEP(1)", AUTOCOMMIT),
            (1, T0 + 2 * MS, T0 + 30 * MS, OUTCOME_OK, 0, 1, 0, b"\x03INSERT INTO orders (id, status) VALUES (7, 'new')",
             AUTOCOMMIT),
            (3, T0 + 3 * MS, T0 + 3 * MS + MS // 2, OUTCOME_OK, 0, 0, 0, b"\x03BEGIN", in_txn),
            (3, T0 + 4 * MS, T0 + 5 * MS, OUTCOME_OK, 0, 1, 0, b"\x03UPDATE orders SET status = 'taken' WHERE id = 7",
             in_txn),
            (3, T0 + 5 * MS + MS // 2, T0 + 6 * MS, OUTCOME_OK, 0, 1, 0, b"\x03UPDATE flags SET v = 2 WHERE id = 1", in_txn),
            (3, T0 + 7 * MS, T0 + 8 * MS, OUTCOME_OK, 0, 0, 0, b"\x03COMMIT", AUTOCOMMIT),
            (5, T0 + 10 * MS, T0 + 40 * MS, OUTCOME_OK, 0, 1, 0,
             b"\x03INSERT INTO jobs (id, status, src) SELECT 8, 'new', v FROM flags WHERE id = 1", AUTOCOMMIT),
            (4, T0 + 11 * MS, T0 + 11 * MS + MS // 2, OUTCOME_OK, 0, 0, 0, b"\x03BEGIN", in_txn),
            (4, T0 + 12 * MS, T0 + 13 * MS, OUTCOME_OK, 0, 1, 0, b"\x03UPDATE jobs SET status = 'taken' WHERE id = 8",
             in_txn),
            (4, T0 + 14 * MS, T0 + 15 * MS, OUTCOME_OK, 0, 0, 0, b"\x03COMMIT", AUTOCOMMIT)]
    path = str(tmp_path / "cap")
    _write(path, (1, 3, 4, 5), recs)
    engine, stats = _replay(mariadb_test, path)
    assert stats.failed == stats.skipped == 0 and stats.replayed == 10
    assert mariadb_test.sql("SELECT id, status FROM ovl.orders").split() == ["7", "taken"]
    # P copied the value A committed, as in production, and B then took the job
    assert mariadb_test.sql("SELECT id, status, src FROM ovl.jobs").split() == ["8", "taken", "2"]


@pytest.mark.timeout(60, method="thread")  # the loop would swallow the signal method's exception
def test_a_defect_while_waiting_to_send_again_stops_the_replay_saying_so(mariadb_test, tmp_path, monkeypatch):
    """The wait to send a write again runs as a task of its own: an exception there stops the replay
    as an internal error, instead of leaving the write unanswered and the replay stalled."""
    mariadb_test.sql("DROP DATABASE IF EXISTS ovl; CREATE DATABASE ovl; "
                     "CREATE TABLE ovl.jobs (id INT PRIMARY KEY, status VARCHAR(8) NOT NULL)")
    path = str(tmp_path / "cap")
    _capture(path, "overlapping")
    calls = []

    def broken(conn, rec):
        calls.append(rec)
        raise KeyError("a defect in the wait")

    monkeypatch.setattr(engine_module, "_queued", broken)
    monkeypatch.setattr(engine_module, "OVERLAP_WAIT_S", 30.0)  # without the fix: stalled until the timeout
    with pytest.raises(RuntimeError, match="internal error: KeyError"):
        _replay(mariadb_test, path)
    assert len(calls) == 1
