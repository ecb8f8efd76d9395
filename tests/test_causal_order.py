"""Causal order, in parts: the C sequences (CausalOrder: requirements, parking, out-of-order
completion, bounded memory), checked against a plain Python model; and the planner that turns
captured records into waits and events (per table, transactions, foreign keys, unknown tables)."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastproxy.capture.record import KIND_COMMAND, OUTCOME_ERR, OUTCOME_OK, Record
from fastproxy.constants import SERVER_STATUS
from fastproxy.replay._scheduler import CausalOrder, Ticket
from fastproxy.replay._causal import may_set_serializable
from fastproxy.replay.causal import (IN_TXN, PIN_ID, PIN_PREFIX, PIN_TIME, PLAIN_READ, PROD_LOCK_ERROR, READ_EVENT, ORDER_UNKNOWN,
                                   TXN_BEGIN, TXN_CHAINED, TXN_END, Planner)
from fastproxy.replay.schema import TableScopes

MS = 1_000_000


# ---- the C core ------------------------------------------------------------------------------------

def test_a_command_waits_for_events_that_ended_before_it_started():
    co = CausalOrder()
    seq = co.new_sequence()
    early, late = Ticket(), Ticket()
    co.note(early, (), (), 0, (seq,), 10)
    co.note(late, (), (), 5, (seq,), 30)
    s = Ticket()
    co.note(s, (seq,), (), 20, (), 0)  # started at 20: `early` (ended 10) came before, `late` (30) did not
    assert s.waits == [(seq, 1)]
    assert not co.ready(s, key=7)
    assert co.parked == 1
    assert co.finish(late) is None  # completing the unrelated event releases nobody
    assert co.finish(early) == [7]
    assert co.parked == 0 and co.ready(s, key=7)


def test_out_of_order_completion_advances_the_prefix_over_the_gap():
    co = CausalOrder()
    seq = co.new_sequence()
    events = [Ticket() for _ in range(5)]
    for i, t in enumerate(events):
        co.note(t, (), (), i, (seq,), 10 + i)
    waiter = Ticket()
    co.note(waiter, (seq,), (), 100, (), 0)
    assert not co.ready(waiter, 1)
    for t in events[1:]:
        assert co.finish(t) is None
        assert co.prefix(seq) == 0
    assert co.finish(events[0]) == [1]
    assert co.prefix(seq) == 5
    assert co.retained() == 0  # completed events are dropped: memory stays bounded by what is pending


def test_finish_is_idempotent_and_release_waits_lets_a_command_go():
    co = CausalOrder()
    seq = co.new_sequence()
    e, w = Ticket(), Ticket()
    co.note(e, (), (), 0, (seq,), 1)
    co.note(w, (seq,), (), 5, (), 0)
    assert not co.ready(w, 3)
    w.release_waits()  # the safety valve
    assert co.ready(w, 3)
    assert co.finish(e) == [3]  # the stale park comes back once; the engine ignores it
    assert co.finish(e) is None and e.finished


def test_requirements_already_met_are_not_stored():
    co = CausalOrder()
    seq = co.new_sequence()
    e = Ticket()
    co.note(e, (), (), 0, (seq,), 1)
    co.finish(e)
    w = Ticket()
    co.note(w, (seq,), (), 5, (), 0)
    assert w.waits == [] and co.ready(w, 0)


def test_lock_waits_follow_who_got_the_row_first():
    """Overlapping lock requests: the one that ended first and started before (give or take
    overlap_ns), or whose transaction had ended by then, got the row; the other waits for it although
    it did not end before the other started."""
    def plan(event_start, released, s_start):
        co = CausalOrder(overlap_ns=2 * MS)
        seq = co.new_sequence()
        f = Ticket()
        co.note(f, (), (), event_start, (seq,), 40 * MS, released)
        s = Ticket()  # read after f: it ended later
        co.note(s, (), (seq,), s_start, (seq,), 60 * MS, False)
        return s.waits

    assert plan(0, False, 1 * MS) == [(0, 1)]           # f asked first
    assert plan(2 * MS, False, 1 * MS) == [(0, 1)]      # within the overlap: the proxy's clock is not the server's
    assert plan(20 * MS, False, 1 * MS) == []           # f started well after s and held its row on: unrelated
    assert plan(20 * MS, True, 1 * MS) == [(0, 1)]      # f's transaction ended before s did: s queued behind it
    assert plan(0, False, 41 * MS) == [(0, 1)]          # plain: f ended before s started


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1000), st.integers(1, 200)), min_size=1, max_size=60), st.randoms())
def test_ready_matches_the_model(spans, rnd):
    """Random events on two sequences, commands read in completion order, completions in random
    order: a command is ready exactly when every event of its sequence that ended before it started
    has completed."""
    co = CausalOrder()
    seqs = [co.new_sequence(), co.new_sequence()]
    records = sorted(((s, s + d, i % 2) for i, (s, d) in enumerate(spans)), key=lambda r: r[1])
    tickets = []
    for start, end, which in records:  # read in completion order: each is a waiter and an event
        t = Ticket()
        co.note(t, (seqs[which],), (), start, (seqs[which],), end)
        tickets.append((t, start, end, which))
    done: set[int] = set()
    order = list(range(len(tickets)))
    rnd.shuffle(order)
    for k in order:
        for j, (t, start, _, which) in enumerate(tickets):
            if j in done or t.finished:
                continue
            needed = {i for i, (_, _, end, w) in enumerate(tickets) if w == which and end < start}
            assert co.met(t) == (needed <= done), (start, which, needed, done)
        co.finish(tickets[k][0])
        done.add(k)
    assert co.retained() == 0


# ---- the planner -----------------------------------------------------------------------------------

def _rec(conn, sql, start, end, outcome=OUTCOME_OK, affected=1, status=SERVER_STATUS.AUTOCOMMIT, err=0, insert_id=0):
    return Record(KIND_COMMAND, conn, start, end, outcome, err, affected, 0, b"\x03" + sql.encode(),
                  last_insert_id=insert_id, status_flags=status)


class Replay:
    """Drive a Planner and its CausalOrder as the engine does: note every record, then ask which
    commands are ready once some have completed."""

    def __init__(self, scopes=None, **kw) -> None:
        self.p = Planner(scopes or TableScopes(), **kw)
        self.tickets: dict[str, Ticket | None] = {}

    def read(self, name, conn, sql, start, end, **kw):
        t = self.p.note(conn, _rec(conn, sql, start, end, **kw))
        self.tickets[name] = t
        return t

    def ready(self, name) -> bool:
        t = self.tickets[name]
        return t is None or self.p.order.met(t)

    def done(self, *names):
        for n in names:
            if self.tickets[n] is not None:
                self.p.order.finish(self.tickets[n])


IN_TRANS = SERVER_STATUS.IN_TRANS | SERVER_STATUS.AUTOCOMMIT


def test_a_read_waits_for_commits_on_its_table_only():
    r = Replay()
    r.read("ins", 1, "INSERT INTO orders VALUES (1)", 0, 10)
    r.read("ins_other", 2, "INSERT INTO audit VALUES (1)", 0, 11)
    r.read("sel", 3, "SELECT * FROM orders WHERE id = 1", 20, 25)
    r.read("sel_before", 4, "SELECT * FROM orders WHERE id = 1", 5, 26)  # started before the insert ended
    assert not r.ready("sel") and r.ready("sel_before")
    r.done("ins_other")
    assert not r.ready("sel")
    r.done("ins")
    assert r.ready("sel")


def test_writes_inside_a_transaction_become_visible_at_commit():
    r = Replay()
    r.read("begin", 1, "BEGIN", 0, 1, affected=0, status=IN_TRANS)
    r.read("upd", 1, "UPDATE t SET v = 2 WHERE id = 1", 2, 3, status=IN_TRANS)
    r.read("read_mid", 2, "SELECT v FROM t", 4, 5)  # production could not see the uncommitted update
    r.read("commit", 1, "COMMIT", 6, 7, affected=0)
    r.read("read_after", 3, "SELECT v FROM t", 8, 9)
    assert r.ready("read_mid")  # the update is no commit event
    assert not r.ready("read_after")
    r.done("begin", "upd")
    assert not r.ready("read_after")  # waits for the COMMIT itself
    r.done("commit")
    assert r.ready("read_after")
    flags = [r.tickets[n].flags for n in ("begin", "upd", "commit")]
    assert flags[0] & TXN_BEGIN and flags[0] & IN_TXN
    assert flags[1] & IN_TXN and not flags[1] & TXN_END
    assert flags[2] & TXN_END


def test_commit_and_chain_commits_and_opens_the_next_transaction():
    """COMMIT AND CHAIN leaves the status "in a transaction" (the chained one): its writes are still a
    commit event, the snapshot ends with it, and the chained transaction's first statement is its start
    (TXN_BEGIN | TXN_CHAINED: a retry opens it with ROLLBACK AND CHAIN)."""
    r = Replay()
    r.read("begin", 1, "BEGIN", 0, 1, affected=0, status=IN_TRANS)
    r.read("upd", 1, "UPDATE t SET v = 2 WHERE id = 1", 2, 3, status=IN_TRANS)
    r.read("chain", 1, "COMMIT AND CHAIN", 4, 5, affected=0, status=IN_TRANS)
    r.read("read_after", 2, "SELECT v FROM t", 6, 7)
    r.read("upd2", 1, "UPDATE u SET v = 2 WHERE id = 1", 8, 9, status=IN_TRANS)
    r.read("upd3", 1, "UPDATE u SET v = 3 WHERE id = 1", 10, 11, status=IN_TRANS)
    r.read("commit", 1, "COMMIT", 12, 13, affected=0)
    r.done("begin", "upd")
    assert not r.ready("read_after")  # production's read saw the chained commit
    r.done("chain")
    assert r.ready("read_after")
    flags = {n: r.tickets[n].flags for n in ("chain", "upd2", "upd3", "commit")}
    assert flags["chain"] & TXN_END and flags["chain"] & IN_TXN
    assert flags["upd2"] & (TXN_BEGIN | TXN_CHAINED) == TXN_BEGIN | TXN_CHAINED
    assert not flags["upd3"] & (TXN_BEGIN | TXN_CHAINED | TXN_END) and flags["upd3"] & IN_TXN
    assert flags["commit"] & TXN_END and not flags["commit"] & TXN_CHAINED


def test_a_failed_commit_ends_its_transaction_rolled_back_and_chains_nothing():
    """An error packet carries no status: a COMMIT that failed (the server rolled the transaction back)
    is no commit event and opens no chained transaction."""
    r = Replay()
    r.read("begin", 1, "BEGIN", 0, 1, affected=0, status=IN_TRANS)
    r.read("upd", 1, "UPDATE t SET v = 2 WHERE id = 1", 2, 3, status=IN_TRANS)
    r.read("commit", 1, "COMMIT", 4, 5, affected=0, outcome=OUTCOME_ERR, err=1180)
    r.read("read_after", 2, "SELECT v FROM t", 6, 7)
    r.read("next", 1, "UPDATE u SET v = 2 WHERE id = 1", 8, 9)
    r.done("begin", "upd")
    assert r.ready("read_after")  # nothing committed to wait for
    assert r.tickets["commit"].flags & TXN_END
    assert r.tickets["next"] is None or not r.tickets["next"].flags & (IN_TXN | TXN_CHAINED)


def test_a_commit_waits_for_the_reads_of_its_tables_that_ended_before_it_started():
    """What a read answered depends on the commits it saw: one production ran after it comes after it."""
    r = Replay()
    r.read("sel", 1, "SELECT v FROM t WHERE id = 1", 0, 5, affected=0)
    r.read("sel_other", 2, "SELECT v FROM audit", 0, 6, affected=0)
    r.read("one", 5, "SELECT 1", 0, 7, affected=0)  # reads no table: sees no commit
    r.read("sel_late", 3, "SELECT v FROM t", 8, 20, affected=0)  # still running when the update started
    r.read("upd", 4, "UPDATE t SET v = 2 WHERE id = 1", 10, 12)
    r.read("call", 6, "CALL change_anything()", 30, 31)  # tables unknown: after every read
    assert r.tickets["sel"].flags & READ_EVENT and r.tickets["sel"].has_events
    assert r.tickets["one"] is None or not r.tickets["one"].has_events
    assert not r.ready("upd")
    r.done("sel_other", "one")
    assert not r.ready("upd")
    r.done("sel")
    assert r.ready("upd")
    r.done("upd")
    assert not r.ready("call")
    r.done("sel_late")
    assert r.ready("call")


def test_a_transactions_snapshot_sees_every_table_and_later_commits_wait_for_it():
    """Under REPEATABLE READ the first read of a transaction takes its snapshot of every table: it comes
    after every commit that ended before it, and every commit that started after it comes after it,
    whatever table either touches. A rollback commits nothing: it waits for no read."""
    r = Replay()
    r.read("upd_before", 1, "UPDATE t2 SET v = 2 WHERE id = 1", 0, 5)
    r.read("begin", 2, "BEGIN", 6, 7, affected=0, status=IN_TRANS)
    r.read("snap", 2, "SELECT v FROM t1 WHERE id = 1", 8, 9, affected=0, status=IN_TRANS)
    r.read("upd_after", 3, "UPDATE t2 SET v = 3 WHERE id = 1", 10, 12)
    r.read("b4", 4, "BEGIN", 13, 14, affected=0, status=IN_TRANS)
    r.read("u4", 4, "UPDATE t3 SET v = 1 WHERE id = 1", 15, 16, status=IN_TRANS)
    r.read("rb4", 4, "ROLLBACK", 17, 18, affected=0)
    r.read("later", 2, "SELECT v FROM t2 WHERE id = 1", 20, 21, affected=0, status=IN_TRANS)
    r.read("commit", 2, "COMMIT", 22, 23, affected=0)
    assert r.ready("begin") and not r.ready("snap")  # t2's commit, though it reads t1
    r.done("upd_before", "begin")
    assert r.ready("snap")
    assert not r.ready("upd_after")  # t2: a table the snapshot had not read yet
    r.done("b4", "u4")
    assert r.ready("rb4")
    r.done("snap")
    assert r.ready("upd_after")
    assert r.tickets["snap"].flags & READ_EVENT and r.tickets["later"].flags & READ_EVENT


def test_a_consistent_snapshot_at_begin_is_the_transactions_snapshot():
    r = Replay()
    r.read("upd_before", 1, "UPDATE t2 SET v = 2 WHERE id = 1", 0, 5)
    r.read("begin", 2, "START TRANSACTION WITH CONSISTENT SNAPSHOT", 6, 7, affected=0, status=IN_TRANS)
    r.read("read", 2, "SELECT v FROM t1", 8, 9, affected=0, status=IN_TRANS)
    r.read("upd_after", 3, "UPDATE t2 SET v = 3 WHERE id = 1", 10, 12)
    assert not r.ready("begin")
    r.done("upd_before")
    assert r.ready("begin") and r.ready("read")
    r.done("read")
    assert not r.ready("upd_after")  # the snapshot is the BEGIN's, not the read's
    r.done("begin")
    assert r.ready("upd_after")


def _unknown(r: Replay, name: str) -> bool:
    return bool(r.tickets[name].flags & ORDER_UNKNOWN)


def test_an_autocommit_read_a_commit_of_its_table_overlapped_is_flagged_whichever_ended_first():
    """Neither ended before the other started (an equal time included: neither waits then): production
    does not tell which came first."""
    r = Replay()
    r.read("upd", 1, "UPDATE t SET v = 2 WHERE id = 1", 5, 8)  # ends first: read before the read is
    r.read("sel", 2, "SELECT v FROM t WHERE id = 1", 0, 10, affected=0)
    r.read("sel_u", 3, "SELECT v FROM u WHERE id = 1", 0, 11, affected=0)  # another table
    r.read("sel_before", 4, "SELECT v FROM t WHERE id = 1", 1, 4, affected=0)  # ended before it started
    r.read("sel_as", 4, "SELECT v FROM t WHERE id = 1", 8, 12, affected=0)  # started as it ended
    r.read("sel2", 5, "SELECT v FROM t WHERE id = 2", 20, 22, affected=0)
    assert _unknown(r, "sel") and _unknown(r, "sel_as")
    assert not _unknown(r, "sel_u") and not _unknown(r, "sel_before") and not _unknown(r, "sel2")
    r.read("upd2", 1, "UPDATE t SET v = 3 WHERE id = 2", 21, 30)  # read after the read it overlapped
    assert _unknown(r, "sel2") and r.p.reads_order_unknown == 3
    r.read("upd3", 1, "UPDATE t SET v = 4 WHERE id = 2", 40, 45)
    assert r.p.reads_order_unknown == 3 and r.p.order_unknown_missed == 0


def test_reads_of_a_transaction_are_flagged_by_commits_that_overlapped_its_snapshot():
    r = Replay()
    r.read("begin", 1, "BEGIN", 0, 1, affected=0, status=IN_TRANS)
    r.read("snap", 1, "SELECT v FROM t1 WHERE id = 1", 10, 20, affected=0, status=IN_TRANS)
    r.read("r2", 1, "SELECT v FROM t2 WHERE id = 1", 21, 22, affected=0, status=IN_TRANS)
    r.read("r3", 1, "SELECT v FROM t3 WHERE id = 1", 23, 24, affected=0, status=IN_TRANS)
    assert not any(_unknown(r, n) for n in ("snap", "r2", "r3"))
    assert not r.p.settled(24)  # a commit still to be read may have overlapped the snapshot
    r.read("upd", 2, "UPDATE t2 SET v = 2 WHERE id = 1", 15, 30)  # started while the snapshot was taken
    assert _unknown(r, "r2") and not _unknown(r, "snap") and not _unknown(r, "r3")
    r.read("r4", 1, "SELECT v FROM t2 WHERE id = 2", 31, 32, affected=0, status=IN_TRANS)
    assert _unknown(r, "r4")  # read from the same snapshot
    r.read("upd3", 2, "UPDATE t3 SET v = 2 WHERE id = 1", 25, 33)  # started after the snapshot: ordered
    r.read("r5", 1, "SELECT v FROM t3 WHERE id = 2", 34, 35, affected=0, status=IN_TRANS)
    assert not _unknown(r, "r3") and not _unknown(r, "r5")
    r.read("commit", 1, "COMMIT", 36, 37, affected=0)
    r.read("after", 1, "SELECT v FROM t2 WHERE id = 1", 38, 39, affected=0)  # a new moment of its own
    assert not _unknown(r, "after")
    # once what is read is past twice the longest commit (at least a second), nothing can flag them
    r.read("later", 3, "SELECT v FROM t9", 1000 * MS, 1000 * MS + 1, affected=0)
    assert not r.p.settled(35)
    r.read("later2", 3, "SELECT v FROM t9", 1001 * MS, 1001 * MS + 1, affected=0)
    assert r.p.settled(35) and not r.p.settled(1000 * MS)


def test_a_consistent_snapshot_at_begin_and_a_transaction_open_before_the_capture_flag_their_reads():
    r = Replay()
    r.read("upd", 2, "UPDATE t2 SET v = 2 WHERE id = 1", 0, 7)  # ends during the BEGIN
    r.read("begin", 1, "START TRANSACTION WITH CONSISTENT SNAPSHOT", 6, 8, affected=0, status=IN_TRANS)
    r.read("upd_late", 3, "UPDATE t1 SET v = 2 WHERE id = 1", 9, 10)  # after the snapshot: waits for it
    r.read("read1", 1, "SELECT v FROM t1 WHERE id = 1", 9, 12, affected=0, status=IN_TRANS)
    r.read("read2", 1, "SELECT v FROM t2 WHERE id = 1", 13, 14, affected=0, status=IN_TRANS)
    assert not _unknown(r, "read1") and _unknown(r, "read2")  # the snapshot is the BEGIN's
    assert not _unknown(r, "begin")
    r.p.on_state(9, {"in_transaction": True})  # its snapshot may be older than the capture
    r.read("old", 9, "SELECT v FROM t5 WHERE id = 1", 20, 21, affected=0, status=IN_TRANS)
    assert _unknown(r, "old")


def test_a_commit_longer_than_what_was_kept_for_it_is_counted():
    r = Replay()
    r.read("sel", 1, "SELECT v FROM t WHERE id = 1", 0, 10, affected=0)
    r.read("far", 2, "SELECT v FROM u", 1001 * MS, 1001 * MS + 1, affected=0)  # the read above is dropped
    r.read("upd", 3, "UPDATE t SET v = 2 WHERE id = 1", 5, 1001 * MS + 2)
    assert not _unknown(r, "sel") and r.p.order_unknown_missed == 1


def test_a_rolled_back_transaction_commits_nothing():
    r = Replay()
    r.read("begin", 1, "BEGIN", 0, 1, affected=0, status=IN_TRANS)
    r.read("upd", 1, "UPDATE t SET v = 2", 2, 3, status=IN_TRANS)
    r.read("rollback", 1, "ROLLBACK", 4, 5, affected=0)
    r.read("read", 2, "SELECT v FROM t", 8, 9)
    assert r.ready("read")  # nothing was committed before it


def test_skip_locked_picks_and_commits_keep_their_lock_order():
    """The queue: B's pick started after A's pick ended, so B must not run before it (it skipped A's
    row); A's COMMIT started after B's pick ended, so it must not run before B's pick either."""
    r = Replay()
    pick = "SELECT id FROM jobs WHERE status = 'new' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
    r.read("a_begin", 1, "BEGIN", 0, 1, affected=0, status=IN_TRANS)
    r.read("a_pick", 1, pick, 2, 3, affected=0, status=IN_TRANS)
    r.read("b_begin", 2, "BEGIN", 4, 5, affected=0, status=IN_TRANS)
    r.read("b_pick", 2, pick, 6, 7, affected=0, status=IN_TRANS)
    r.read("a_commit", 1, "COMMIT", 8, 9, affected=0)
    assert not r.ready("b_pick")
    assert not r.ready("a_commit")
    r.done("a_begin", "b_begin", "a_pick")
    assert r.ready("b_pick") and not r.ready("a_commit")
    r.done("b_pick")
    assert r.ready("a_commit")


def test_plain_reads_never_wait_for_each_other_nor_for_uncommitted_locks():
    r = Replay()
    r.read("r1", 1, "SELECT * FROM t", 0, 10)
    r.read("lock", 2, "SELECT * FROM t WHERE id = 1 FOR UPDATE", 11, 12, affected=0, status=IN_TRANS)
    r.read("r2", 3, "SELECT * FROM t", 20, 30)
    assert r.ready("r2")


def test_foreign_keys_join_parent_and_child_scopes():
    scopes = TableScopes()
    scopes.add_foreign_key("order_items", "orders")
    r = Replay(scopes)
    r.read("parent", 1, "INSERT INTO orders VALUES (7)", 0, 10)
    r.read("child", 2, "INSERT INTO order_items (order_id) VALUES (7)", 20, 25)
    r.read("unrelated", 3, "INSERT INTO audit VALUES (1)", 20, 25)
    assert not r.ready("child") and r.ready("unrelated")
    r.done("parent")
    assert r.ready("child")


def test_ddl_read_from_the_capture_joins_scopes_for_what_follows():
    r = Replay()
    r.read("parent", 1, "INSERT INTO p VALUES (1)", 0, 10)
    r.read("ddl", 2, "CREATE TABLE c (id INT, pid INT REFERENCES p (id))", 11, 20, affected=0)
    r.read("child", 3, "INSERT INTO c VALUES (1, 1)", 30, 31)
    r.done("ddl")
    assert not r.ready("child")  # still needs the parent row, now in its scope
    r.done("parent")
    assert r.ready("child")


def test_unknown_statements_are_ordered_against_everything():
    r = Replay()
    r.read("call", 1, "CALL do_things()", 0, 10)
    r.read("sel", 2, "SELECT * FROM anything", 20, 21)
    r.read("ins", 3, "INSERT INTO t VALUES (1)", 22, 23)
    r.read("unknown_after", 4, "CALL other()", 30, 31)
    assert not r.ready("sel")
    r.done("call")
    assert r.ready("sel")
    assert not r.ready("unknown_after")  # waits for the insert on t too
    r.done("ins")
    assert not r.ready("unknown_after")  # and for the read: what it changes, the read did not see
    r.done("sel")
    assert r.ready("unknown_after")
    assert r.p.unknown_scope_statements == 2


def test_a_login_waits_for_the_accounts_and_databases_created_before_it():
    """Replay logs in with a connection's first command, whatever it is: that command waits for the
    statements of unknown scope (CREATE USER, GRANT, CREATE DATABASE, SET PASSWORD) that ended before
    it started; so does a COM_CHANGE_USER. Later commands of the connection wait for nothing more."""
    r = Replay()
    r.read("user", 1, "CREATE USER u IDENTIFIED BY 'x'", 0, 10, affected=0)
    r.read("password", 1, "SET PASSWORD FOR u = PASSWORD('y')", 11, 12, affected=0)
    r.read("names", 2, "SET NAMES utf8mb4", 20, 21, affected=0)       # its first command: the login
    r.read("early", 3, "SET NAMES utf8mb4", 5, 6, affected=0)         # opened before CREATE USER ended
    r.read("later", 2, "SET NAMES latin1", 30, 31, affected=0)        # logged in by then
    assert not r.ready("names") and r.ready("early") and r.ready("later")
    r.done("user")
    assert not r.ready("names")
    r.done("password")
    assert r.ready("names")

    # a global variable set: a session opened after it starts with its value (sql_mode, time_zone)
    r.read("global", 1, "SET GLOBAL sql_mode = 'ANSI_QUOTES'", 32, 33, affected=0)
    r.read("login_after", 4, "SET NAMES utf8mb4", 34, 35, affected=0)
    assert not r.ready("login_after")
    r.done("global")
    assert r.ready("login_after")

    r.read("grant", 1, "GRANT INSERT ON d.* TO v", 40, 41, affected=0)
    change = Record(KIND_COMMAND, 3, 50, 51, OUTCOME_OK, 0, 0, 0, b"\x11v\x00\x00d\x00")
    r.tickets["change"] = r.p.note(3, change)
    r.read("ping_like", 3, "SET NAMES utf8mb4", 52, 53, affected=0)
    assert not r.ready("change") and r.ready("ping_like")
    r.done("grant")
    assert r.ready("change")


def test_connection_order_plans_no_waits_but_keeps_pins_and_transaction_roles():
    r = Replay(causal=False)
    r.read("ins", 1, "INSERT INTO t (v) VALUES (1)", 0, 10, insert_id=41)
    r.read("begin", 2, "BEGIN", 11, 12, affected=0, status=IN_TRANS)
    r.read("sel", 2, "SELECT * FROM t", 20, 21, status=IN_TRANS)
    assert r.ready("sel")
    assert r.tickets["ins"].flags & PIN_ID and not r.tickets["ins"].flags & PIN_PREFIX
    assert r.tickets["begin"].flags & TXN_BEGIN
    assert r.tickets["sel"].flags & IN_TXN
    assert r.p.order.events_total == 0


def test_pins_time_for_time_functions_and_time_defaulted_tables():
    scopes = TableScopes()
    scopes.mark_time("stamped")
    r = Replay(scopes)
    plain = r.read("plain", 1, "UPDATE counters SET n = n + 1", 0, 1)
    now = r.read("now", 1, "SELECT NOW()", 2, 3)
    stamped = r.read("stamped", 1, "INSERT INTO stamped (v) VALUES (1)", 4, 5)
    multi = r.read("multi", 1, "INSERT INTO stamped (v) VALUES (1); SELECT 1", 6, 7, insert_id=9)
    assert plain is None or not plain.flags & PIN_TIME
    assert now.flags & PIN_TIME and stamped.flags & PIN_TIME
    assert multi.flags & PIN_PREFIX and not multi.flags & PIN_ID  # several statements: the first id is ambiguous


def test_the_application_setting_timestamp_itself_turns_time_pins_off():
    r = Replay()
    r.read("set", 1, "SET timestamp = 1700000000", 0, 1, affected=0)
    assert not r.read("now", 1, "SELECT NOW()", 2, 3).flags & PIN_TIME
    r.read("reset", 1, "SET timestamp = DEFAULT", 4, 5, affected=0)
    assert r.read("now2", 1, "SELECT NOW()", 6, 7).flags & PIN_TIME


def test_statements_production_lost_to_a_deadlock_are_marked():
    r = Replay()
    r.read("begin", 1, "BEGIN", 0, 1, affected=0, status=IN_TRANS)
    t = r.read("upd", 1, "UPDATE t SET v = 1", 2, 3, outcome=OUTCOME_ERR, err=1213, affected=0, status=0)
    assert t.flags & PROD_LOCK_ERROR and t.flags & TXN_END  # the deadlock ended the transaction
    after = r.read("next", 2, "SELECT * FROM t", 10, 11)
    assert after is None or r.ready("next")  # the rolled back update committed nothing


def test_a_connection_closing_in_a_transaction_releases_its_locks():
    r = Replay()
    r.read("begin", 1, "BEGIN", 0, 1, affected=0, status=IN_TRANS)
    r.read("lock", 1, "SELECT * FROM t FOR UPDATE", 2, 3, affected=0, status=IN_TRANS)
    close = r.p.note_close(1, Record(4, 1, 10, 0, 0, 0, 0, 0, b""))
    r.tickets["close"] = close
    r.read("other", 2, "UPDATE t SET v = 1", 20, 21)
    r.done("begin", "lock")
    assert not r.ready("other")
    r.done("close")
    assert r.ready("other")


def test_many_random_tables_stay_bounded():
    """Memory: events of completed commands are dropped whatever the number of tables."""
    rnd = random.Random(3)
    r = Replay()
    names = []
    for i in range(2000):
        n = f"c{i}"
        r.read(n, i % 50, f"INSERT INTO t{rnd.randint(1, 40)} VALUES ({i})", i * 10, i * 10 + 5)
        names.append(n)
    r.done(*names)
    assert r.p.order.retained() == 0


def test_a_read_of_a_global_variable_waits_for_the_set_global_before_it_and_for_no_table_write():
    r = Replay()
    for conn in (1, 2, 3):
        r.read(f"login{conn}", conn, "SET NAMES utf8mb4", 0, 1, affected=0)
    r.read("write", 1, "INSERT INTO orders VALUES (1)", 2, 5)
    r.read("reads", 3, "SET sql_mode = @@global.sql_mode", 6, 7, affected=0)
    assert r.ready("reads")  # a table's write is not what it reads
    r.read("global", 2, "SET GLOBAL sql_mode = 'ANSI_QUOTES'", 8, 9, affected=0)
    r.read("reads_again", 3, "SET SESSION sql_mode = CONCAT(@@GLOBAL.sql_mode, ',X')", 10, 11, affected=0)
    r.read("write_after", 1, "INSERT INTO orders VALUES (2)", 12, 13)
    assert not r.ready("reads_again")
    r.done("write")
    r.done("global")
    assert r.ready("reads_again")


def test_the_compiled_planner_takes_what_a_capture_can_hold():
    """Connection ids are u64 in a capture; a planner that orders nothing never converts them, and
    one that orders gives them to CausalOrder as the int64 owners it keeps (as the Python planner did)."""
    big = 2**64 - 1
    loose = Planner(causal=False)
    t = loose.note(big, _rec(big, "UPDATE t SET a = NOW()", 10, 20))
    assert t is not None and t.flags & PIN_TIME
    assert loose.note(big, Record(KIND_COMMAND, big, 30, 40, OUTCOME_OK, 0, 0, 0, b"")) is None  # nothing to plan
    planner = Planner()
    planner.note(7, _rec(7, "SELECT 1", 10, 20))  # logged in
    assert planner.note(7, Record(KIND_COMMAND, 7, 30, 40, OUTCOME_OK, 0, 0, 0, b"")) is None
    with pytest.raises(TypeError):
        planner.note(7, "not a record")


# ---- reads marked for --pipeline ---------------------------------------------------------------------

def _role(t) -> int:
    """A ticket's flags but READ_EVENT (which the read-event tests below check)."""
    return (t.flags & ~READ_EVENT) if t is not None else 0


def _transaction(r: Replay, conn: int, t0: int, reads: list[str]) -> None:
    r.read(f"begin{conn}", conn, "BEGIN", t0, t0 + 1, affected=0, status=IN_TRANS)
    for i, sql in enumerate(reads):
        r.read(f"r{conn}.{i}", conn, sql, t0 + 2 + 2 * i, t0 + 3 + 2 * i, affected=0, status=IN_TRANS)
    r.read(f"upd{conn}", conn, "UPDATE t SET v = v + 1 WHERE id = 1", t0 + 50, t0 + 51, status=IN_TRANS)
    r.read(f"commit{conn}", conn, "COMMIT", t0 + 52, t0 + 53, affected=0)


def test_plain_reads_are_marked_in_a_transaction_and_its_begin_but_no_lock_or_write():
    r = Replay(mark_reads=True)
    r.read("out", 1, "SELECT v FROM t WHERE id = 1", 0, 1, affected=0)
    _transaction(r, 1, 10, ["SELECT v FROM t WHERE id = 1", "SELECT v FROM t WHERE id = 2 FOR UPDATE",
                            "SELECT v FROM t LOCK IN SHARE MODE", "SELECT a INTO @x FROM t"])
    flags = {n: _role(t) for n, t in r.tickets.items()}
    assert flags["out"] == PLAIN_READ
    assert flags["begin1"] == PLAIN_READ | TXN_BEGIN | IN_TXN  # what reads may follow in flight
    assert flags["r1.0"] == PLAIN_READ | IN_TXN
    assert not flags["r1.1"] & PLAIN_READ and not flags["r1.2"] & PLAIN_READ  # locking reads
    assert flags["r1.3"] == PLAIN_READ | IN_TXN  # (affected 0 here: INTO a variable that found no row)
    assert not flags["upd1"] & PLAIN_READ and not flags["commit1"] & PLAIN_READ
    plain = Replay(mark_reads=False)
    _transaction(plain, 2, 0, ["SELECT v FROM t"])
    assert not any(t is not None and t.flags & PLAIN_READ for t in plain.tickets.values())


def test_a_select_into_that_answered_a_row_is_not_marked_in_a_transaction_either():
    r = Replay(mark_reads=True)
    r.read("begin", 1, "BEGIN", 0, 1, affected=0, status=IN_TRANS)
    r.read("into", 1, "SELECT a INTO @x FROM t WHERE id = 1", 2, 3, affected=1, status=IN_TRANS)
    assert _role(r.tickets["into"]) == IN_TXN


@pytest.mark.parametrize("statement", [
    "SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    "set global tx_isolation = 'serializable'",
    "SET @@session.transaction_isolation='Serializable'",
    "SET STATEMENT tx_isolation='SERIALIZABLE' FOR SELECT 1",
])
def test_reads_in_transactions_are_not_marked_once_serializable_is_named(statement):
    r = Replay(mark_reads=True)
    _transaction(r, 1, 0, ["SELECT v FROM t"])
    assert r.tickets["r1.0"].flags & PLAIN_READ
    r.read("set", 2, statement, 100, 101, affected=0)
    _transaction(r, 3, 200, ["SELECT v FROM t"])
    _transaction(r, 1, 300, ["SELECT v FROM t"])  # every connection: the statement may be SET GLOBAL
    assert _role(r.tickets["begin3"]) == TXN_BEGIN | IN_TXN and _role(r.tickets["r3.0"]) == IN_TXN
    assert _role(r.tickets["r1.0"]) == IN_TXN
    r.read("out", 3, "SELECT v FROM t", 400, 401, affected=0)
    assert _role(r.tickets["out"]) == PLAIN_READ  # outside a transaction a plain read locks nothing


def test_reads_in_transactions_are_not_marked_where_the_isolation_may_be_serializable():
    r = Replay(mark_reads=True, txn_reads=False)  # the target's isolation: SERIALIZABLE, or unknown
    _transaction(r, 1, 0, ["SELECT v FROM t"])
    assert _role(r.tickets["begin1"]) == TXN_BEGIN | IN_TXN and _role(r.tickets["r1.0"]) == IN_TXN
    rebuilt = Replay(mark_reads=True)
    rebuilt.p.on_state(5, {"session_vars": {"tx_isolation": "SERIALIZABLE"}})  # a session open before the capture
    _transaction(rebuilt, 5, 0, ["SELECT v FROM t"])
    assert _role(rebuilt.tickets["r5.0"]) == IN_TXN


@pytest.mark.parametrize("payload, may", [
    (b"\x03SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", True),
    (b"\x03set tx_isolation='SeRiAlIzAbLe'", True),
    (b"\x03SERIALIZ", True),
    (b"\x03SET SESSION transaction_isolation = 3", True),  # the enum's number
    (b"\x16SET @@session.tx_isolation = ?", True),  # a prepare: its value comes with the execute
    (b"\x03SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED", False),
    (b"\x03set tx_isolation = 'REPEATABLE-READ'", False),
    (b"\x03SELECT 'serialis'", False),
    (b"\x03SELECT * FROM t WHERE z = 'zz'", False),
    (b"\x03erializ", False),
    (b"", False),
])
def test_what_may_set_serializable(payload, may):
    assert may_set_serializable(payload) is may
