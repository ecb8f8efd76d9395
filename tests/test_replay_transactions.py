"""Whole transactions and lock order on replay, on two identical servers:

- a deadlock production had (the application rolls back and retries) replays with no failure and
  the same data, at speed 1 and as fast as possible;
- a deadlock only the replay has (per-connection order, as fast as possible) is retried as a whole
  transaction, savepoints included: no failure, same data; causal order avoids it altogether;
- a replay-only lock wait timeout that does not go away is retried, then reported once as a
  `Transaction` failure, and the rest of its transaction is not sent in autocommit;
- the `order` API field and `--order connection` reach the engine.
"""
from __future__ import annotations

import threading

import MySQLdb
import pytest

from fastproxy.scratch_db import ROOT_PASSWORD

from workload import ReplayOutcome, crossed_updates, run_faithful
from replay_util import Capture, checksums, last_job, replay_cli, wait_job

pytestmark = pytest.mark.timeout(240)


def _connect(port: int, db: str):
    return MySQLdb.connect(host="127.0.0.1", port=port, user="root", password=ROOT_PASSWORD, database=db,
                           autocommit=True)


class ForcedDeadlocks:
    """Pairs of connections lock two rows in opposite order: one of each pair gets 1213, rolls back
    and does its transaction again, as applications do. The updates do not commute, so the data
    shows whether the transactions ran in production's order."""

    database = "deadlocks"
    pairs = 3
    rounds = 3
    setup_sql = ("DROP DATABASE IF EXISTS deadlocks; CREATE DATABASE deadlocks; USE deadlocks;"
                 "CREATE TABLE acct (id INT PRIMARY KEY, v BIGINT NOT NULL);"
                 "INSERT INTO acct SELECT seq, seq FROM seq_1_to_20;"
                 "CREATE TABLE log (id INT AUTO_INCREMENT PRIMARY KEY, who INT NOT NULL, at DATETIME DEFAULT NOW());")

    def __init__(self) -> None:
        self.deadlocks = 0

    def _count_deadlock(self) -> None:
        self.deadlocks += 1

    def run(self, port: int, _early=None) -> None:
        errors: list = []

        def pair(p: int) -> None:
            a, b = _connect(port, self.database), _connect(port, self.database)
            r1, r2 = 2 * p + 1, 2 * p + 2
            try:
                for k in range(self.rounds):
                    barrier = threading.Barrier(2)
                    results = {}

                    def side(conn, first, second, mult, name):
                        # b asks second: b is the victim
                        results[name] = crossed_updates(conn, first, second, mult, k, barrier,
                                                        0.05 if name == "a" else 0.1,
                                                        then=[f"INSERT INTO log (who) VALUES ({p})"],
                                                        on_deadlock=self._count_deadlock)

                    ta = threading.Thread(target=side, args=(a, r1, r2, 2, "a"))
                    tb = threading.Thread(target=side, args=(b, r2, r1, 3, "b"))
                    ta.start(), tb.start()
                    ta.join(), tb.join()
                    assert len(results) == 2, results
            except BaseException as e:  # noqa: BLE001
                errors.append(e)
            finally:
                a.close()
                b.close()

        threads = [threading.Thread(target=pair, args=(p,)) for p in range(self.pairs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert self.deadlocks >= self.pairs * self.rounds, self.deadlocks


def test_deadlocks_production_had_replay_without_failures(mariadb, mariadb_test, proxy_factory, tmp_path):
    wl = ForcedDeadlocks()
    outcomes = run_faithful(mariadb, mariadb_test, proxy_factory([mariadb]), wl, str(tmp_path / "capture"))
    for o in outcomes:
        assert o.failures == 0 and not o.mismatched_tables, o.describe()
        t = o.summary["transactions"]
        assert t["production_lock_errors_not_replayed"] == wl.deadlocks, o.describe()
        assert o.summary["other_errors"] == 0, o.describe()


class SerializedCrossLocks:
    """Transactions that lock two rows in opposite order, each holding its first row for 0.3 s, run
    one after the other in production (never a deadlock there), with a savepoint rolled back after
    the second lock. Replayed as fast as possible in per-connection order they overlap: a deadlock
    only the replay has."""

    database = "crosslocks"
    chained = False
    setup_sql = ("DROP DATABASE IF EXISTS crosslocks; CREATE DATABASE crosslocks; USE crosslocks;"
                 "CREATE TABLE acct (id INT PRIMARY KEY, v BIGINT NOT NULL);"
                 "INSERT INTO acct VALUES (1, 0), (2, 0);"
                 "CREATE TABLE note (id INT AUTO_INCREMENT PRIMARY KEY, who CHAR(1) NOT NULL);")

    def run(self, port: int, _early=None) -> None:
        a, b = _connect(port, self.database), _connect(port, self.database)
        for conn, first, second, add, name in ((a, 1, 2, 1, "a"), (b, 2, 1, 10, "b")):
            cur = conn.cursor()
            cur.execute("BEGIN")
            if self.chained:  # a first transaction, then the crossing one chained to it
                cur.execute(f"INSERT INTO note (who) VALUES ('{name}')")
                cur.execute("COMMIT AND CHAIN")
            cur.execute(f"UPDATE acct SET v = v + {add} WHERE id = {first}")
            cur.execute("SELECT SLEEP(0.3)")
            cur.execute(f"UPDATE acct SET v = v + {add} WHERE id = {second}")
            cur.execute("SAVEPOINT s")
            cur.execute(f"INSERT INTO note (who) VALUES ('{name}')")
            cur.execute("ROLLBACK TO SAVEPOINT s")
            cur.execute(f"INSERT INTO note (who) VALUES ('{name}')")
            cur.execute("COMMIT")
        a.close()
        b.close()


def _retried_whole_in_connection_order(wl, mariadb, mariadb_test, proxy, out: str) -> ReplayOutcome:
    """Capture `wl`, replay it as fast as possible in per-connection order: its replay-only deadlock is
    retried, and the replay ends with no failure and production's data."""
    [by_connection] = run_faithful(mariadb, mariadb_test, proxy, wl, out, speeds=(0.0,),
                                   replay_args=("--order", "connection"))
    t = by_connection.summary["transactions"]
    assert t["retried"] >= 1 and t["retried_ok"] == t["retried"], by_connection.describe()
    assert by_connection.failures == 0 and not by_connection.mismatched_tables, by_connection.describe()
    return by_connection


def test_a_replay_only_deadlock_is_retried_as_a_whole_transaction(mariadb, mariadb_test, proxy_factory, tmp_path):
    wl = SerializedCrossLocks()
    out = str(tmp_path / "capture")
    by_connection = _retried_whole_in_connection_order(wl, mariadb, mariadb_test, proxy_factory([mariadb]), out)
    assert by_connection.summary["causal"] is None

    # causal order: the second transaction starts after the first committed, as in production
    mariadb_test.sql(wl.setup_sql)
    _, causal = replay_cli(mariadb_test.addr, out, "--speed", "0", "--no-report-tables")
    outcome = ReplayOutcome(0.0, causal, by_connection.production, checksums(mariadb_test, wl.database))
    assert causal["transactions"]["retried"] == 0 and causal["causal"]["commands_waited"] > 0, outcome.describe()
    assert outcome.failures == 0 and not outcome.mismatched_tables, outcome.describe()


class ChainedCrossLocks(SerializedCrossLocks):
    """SerializedCrossLocks where each crossing transaction is chained by COMMIT AND CHAIN to one that
    wrote a note first: the replay-only deadlock is in the chained transaction. Its retry must run
    inside a transaction (else its ROLLBACK TO SAVEPOINT fails: no savepoint in autocommit) and must
    not send the first transaction's write again (else the note table has a row too many)."""

    database = "chainlocks"
    chained = True
    setup_sql = SerializedCrossLocks.setup_sql.replace("crosslocks", "chainlocks")


def test_a_replay_only_deadlock_in_a_chained_transaction_is_retried_inside_one(mariadb, mariadb_test,
                                                                                 proxy_factory, tmp_path):
    _retried_whole_in_connection_order(ChainedCrossLocks(), mariadb, mariadb_test, proxy_factory([mariadb]),
                                       str(tmp_path / "capture"))


def test_a_transaction_that_keeps_failing_is_reported_once_and_not_continued(mariadb, mariadb_test, proxy_factory,
                                                                              tmp_path):
    """A lock on the test server that production never had (another client holds the row for the
    whole replay): the transaction times out, is retried, then reported once; its remaining
    statements are not sent on their own (the row written after the failing one stays unwritten)."""
    setup = ("DROP DATABASE IF EXISTS stuck; CREATE DATABASE stuck; USE stuck;"
             "CREATE TABLE t (id INT PRIMARY KEY, v INT NOT NULL); INSERT INTO t VALUES (1, 0), (2, 0);")
    mariadb.sql(setup)
    out = str(tmp_path / "capture")
    proxy = proxy_factory([mariadb])
    with Capture(proxy, out):
        conn = _connect(proxy.port, "stuck")
        cur = conn.cursor()
        cur.execute("BEGIN")
        cur.execute("UPDATE t SET v = 1 WHERE id = 1")
        cur.execute("UPDATE t SET v = 2 WHERE id = 2")
        cur.execute("COMMIT")
        cur.execute("SELECT 1")
        conn.close()
    mariadb_test.sql(setup + "SET GLOBAL innodb_lock_wait_timeout = 1;")
    holder = _connect(mariadb_test.port, "stuck")
    try:
        holder.cursor().execute("BEGIN")
        holder.cursor().execute("SELECT * FROM t WHERE id = 2 FOR UPDATE")
        _, summary = replay_cli(mariadb_test.addr, out, "--speed", "0", "--no-report-tables")
    finally:
        holder.rollback()
        holder.close()
        mariadb_test.sql("SET GLOBAL innodb_lock_wait_timeout = 50;")
    t = summary["transactions"]
    assert summary["commands_failed"] == 1, summary
    [failure] = summary["top_failures"]
    assert failure["cmd_type"] == "Transaction" and "1205" in failure["sample_err_msg"], failure
    assert "UPDATE t SET v = 2" in failure["sample_stmt"], failure
    assert t["retried"] == 1 and t["aborted"] == 1 and t["commands_skipped"] == 1, t  # the COMMIT
    # the failed transaction was rolled back, not committed half: row 1 keeps its old value
    assert mariadb_test.sql("SELECT v FROM stuck.t ORDER BY id").split() == ["0", "0"]


def test_order_from_the_api_form(proxy_factory, mariadb, mariadb_test, tmp_path):
    mariadb.sql(SerializedCrossLocks.setup_sql)
    out = str(tmp_path / "capture")
    prod_proxy = proxy_factory([mariadb])
    with Capture(prod_proxy, out):
        c = _connect(prod_proxy.port, "crosslocks")
        c.cursor().execute("UPDATE acct SET v = v + 1 WHERE id = 1")
        c.close()
    mariadb_test.sql(SerializedCrossLocks.setup_sql)
    proxy = proxy_factory([mariadb_test])
    status, body = proxy.post("/api/traffic/replay", {"input": out, "username": "root", "password": ROOT_PASSWORD,
                                                      "order": "sideways", "report-dir": str(tmp_path)})
    assert status == 400 and "order: expected one of causal, connection" in body, body
    status, body = proxy.post("/api/traffic/replay", {"input": out, "username": "root", "password": ROOT_PASSWORD,
                                                      "order": "connection", "speed": "0",
                                                      "report-dir": str(tmp_path)})
    assert status == 200, body
    job = wait_job(proxy, "replay")
    assert job["order"] == "connection" and job["failed"] == 0, job
    assert last_job(proxy, "replay")["status"] == "done"
