"""Slowness alone never breaks causal order (issue 8): on a busy box a replayed command can take far
longer than in production, and the replay must wait for it rather than let what depends on it go
first. Production ran a statement fast; on replay the same statement sleeps (a `delay` row that only
the replay server has set), so it is merely slow — no wait cycle anywhere:

- the safety valve (a dependency in flight longer than `causal_timeout_s`, set very short here)
  presumes complete only commands the server shows waiting for a lock it cannot name the holder of,
  not one that runs: the child row whose parent the slow statement inserts is not written first;
- the cycle breaker lets a transaction's next command go early only if what it waits for is
  itself blocked (through the scheduler and the server's row-lock waits) by that transaction: a
  transaction whose row lock another connection waits for on replay (a row production's
  statement did not touch: a `pick` row only the replay server has changed), and whose next
  command waits for the slow statement, is left alone (and let go once it does wait for that
  connection: a real cycle is still broken).

Both replays would report a foreign-key failure (1452) and leave different data had the command gone
before the slow one completed."""
from __future__ import annotations

import MySQLdb
import pytest

from fastproxy.scratch_db import ROOT_PASSWORD

from replay_util import Capture, checksums, dump, replay_inprocess

pytestmark = pytest.mark.timeout(240)

DB = "slowdep"
SETUP = f"""DROP DATABASE IF EXISTS {DB}; CREATE DATABASE {DB}; USE {DB};
CREATE TABLE delay (d DOUBLE NOT NULL);
INSERT INTO delay VALUES (0);
CREATE TABLE parent (id INT PRIMARY KEY);
CREATE TABLE child (id INT AUTO_INCREMENT PRIMARY KEY, pid INT NOT NULL, FOREIGN KEY (pid) REFERENCES parent (id));
CREATE TABLE acct (id INT PRIMARY KEY, v INT NOT NULL);
INSERT INTO acct VALUES (1, 1), (2, 2);
CREATE TABLE pick (target INT NOT NULL);
INSERT INTO pick VALUES (2);
"""
# fast in production (d = 0); on replay the server sleeps REPLAY_DELAY_S before inserting the parent
SLOW_PARENT = "INSERT INTO parent (id) SELECT {id} FROM delay WHERE SLEEP(d) = 0"
REPLAY_DELAY_S = 1.0


def _connect(port: int):
    return MySQLdb.connect(host="127.0.0.1", port=port, user="root", password=ROOT_PASSWORD, database=DB,
                           autocommit=True)


def _capture(mariadb, proxy, out: str, workload) -> tuple[str, dict]:
    mariadb.sql(SETUP)
    start = dump(mariadb, DB)
    with Capture(proxy, out):
        workload(proxy.port)
    return start, checksums(mariadb, DB)


def _replay(mariadb_test, start: str, out: str, **options) -> tuple[dict, dict]:
    mariadb_test.sql(f"DROP DATABASE IF EXISTS {DB};\n" + start + f"\nUPDATE {DB}.delay SET d = {REPLAY_DELAY_S};"
                     f"UPDATE {DB}.pick SET target = 1;")
    summary, _ = replay_inprocess(mariadb_test.host, mariadb_test.port, out, speed=0, **options)
    return summary, checksums(mariadb_test, DB)


def _same_data(production: dict, replayed: dict) -> list[str]:
    """Tables that differ, but for those the replay server was given other rows of (delay, pick, and
    the acct row picked through pick)."""
    return [t for t in production if t.split(".")[-1] in ("parent", "child") and production[t] != replayed.get(t)]


def _replay_without_false_failures(mariadb, mariadb_test, proxy, out: str, workload, **options) -> dict:
    """Capture `workload`, replay it with the slow statement: no failure, production's parent/child
    rows. Returns the summary."""
    start, production = _capture(mariadb, proxy, out, workload)
    summary, replayed = _replay(mariadb_test, start, out, **options)
    assert summary["commands_failed"] == 0, summary["top_failures"]
    assert _same_data(production, replayed) == [], (production, replayed)
    return summary


def test_valve_never_presumes_a_running_command_complete(mariadb, mariadb_test, proxy_factory, tmp_path):
    def workload(port: int) -> None:
        a, b = _connect(port), _connect(port)
        a.cursor().execute(SLOW_PARENT.format(id=5))
        b.cursor().execute("INSERT INTO child (pid) VALUES (5)")  # after the parent had committed
        a.close()
        b.close()

    # the valve's floor far below the replay server's sleep: only the server's state keeps it shut
    summary = _replay_without_false_failures(mariadb, mariadb_test, proxy_factory([mariadb]), str(tmp_path / "capture"),
                                             workload, causal_timeout_s=0.2)
    assert summary["causal"]["released_by_valve"] == 0, summary["causal"]
    assert summary["causal"]["commands_waited"] > 0, summary["causal"]


def test_transaction_waiting_for_a_slow_command_is_not_let_go(mariadb, mariadb_test, proxy_factory, tmp_path):
    def workload(port: int) -> None:
        holder, slow, other = _connect(port), _connect(port), _connect(port)
        h = holder.cursor()
        h.execute("BEGIN")
        h.execute("UPDATE acct SET v = v + 1 WHERE id = 1")
        slow.cursor().execute(SLOW_PARENT.format(id=7))
        # row 2 here, no wait; row 1 on replay (pick differs there): it waits for the holder's row lock
        o = other.cursor()
        o.execute("SELECT target INTO @t FROM pick")
        o.execute("UPDATE acct SET v = v * 2 WHERE id = @t")
        h.execute("INSERT INTO child (pid) VALUES (7)")  # after the slow parent had committed
        h.execute("COMMIT")
        for c in (holder, slow, other):
            c.close()

    # the valve kept out of it (a long floor): what is tested is the cycle breaker
    summary = _replay_without_false_failures(mariadb, mariadb_test, proxy_factory([mariadb]), str(tmp_path / "capture"),
                                             workload, causal_timeout_s=60.0)
    # one real cycle, once the slow statement is done: the holder's COMMIT waits for the other
    # connection's update (it ended before the COMMIT in production), which waits for its row lock;
    # broken by rolling the holder's transaction back (its start is known) and sending it again
    assert summary["causal"]["undone_to_break_cycles"] == 1, summary["causal"]
    assert summary["causal"]["released_to_break_cycles"] == 0, summary["causal"]
    assert summary["causal"]["released_by_valve"] == 0, summary["causal"]
