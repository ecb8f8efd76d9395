"""Who waits for whose row locks on the replay target (InnoDB), for breaking wait cycles.

Causal order holds a command back until what it depends on has completed on replay. If a command
it depends on is itself waiting on the server for a row lock held by a transaction whose next
command is the one held back, neither can move: a cycle through the scheduler and the server that
InnoDB's deadlock detector cannot see. Lock waits production never had cause it — a queue picked
with SKIP LOCKED in another order, gap locks of a different plan. The engine asks here which replay
connection blocks which, rolls back the blocking transaction (its connection is idle, held back by
the scheduler), and sends it again when its turn comes (fastproxy/replay/transactions.py).

Needs the PROCESS privilege (or the sys schema); without it ``pairs`` returns None and the engine
falls back to its timeout valve.
"""
from __future__ import annotations

import logging

from fastproxy.replay.side_connection import target_params

log = logging.getLogger("fastproxy.replay")

_QUERIES = (
    "SELECT waiting_pid, blocking_pid FROM sys.innodb_lock_waits",
    "SELECT r.trx_mysql_thread_id, b.trx_mysql_thread_id FROM information_schema.INNODB_LOCK_WAITS w "
    "JOIN information_schema.INNODB_TRX b ON b.trx_id = w.blocking_trx_id "
    "JOIN information_schema.INNODB_TRX r ON r.trx_id = w.requesting_trx_id",
)


class LockWaits:
    """A side connection to the target; ``pairs()`` is blocking (run it in an executor)."""

    # InnoDB refreshes what its INFORMATION_SCHEMA lock tables show only when they were not read for
    # 100 ms (trx_i_s_cache): read more often and they never change
    MIN_INTERVAL_NS = 150_000_000

    def __init__(self, opt) -> None:
        self.params = target_params(opt, autocommit=True)  # ReplayOptions `opt`: its target, user and TLS
        self._conn = None
        self._query: str | None = None
        self.unavailable: str | None = None  # why lock waits cannot be read here

    def pairs(self) -> list[tuple[int, int]] | None:
        """(waiting thread id, blocking thread id) for every row-lock wait; None if not readable."""
        if self.unavailable:
            return None
        import MySQLdb

        if self._conn is None:
            try:
                self._conn = MySQLdb.connect(**self.params)
            except MySQLdb.MySQLError as e:  # a login refused now is refused every 150 ms after: say it once
                self.unavailable = f"cannot connect to read lock waits: {e}"
                log.warning("%s; wait cycles are broken by the timeout valve only", self.unavailable)
                return None
        try:
            cur = self._conn.cursor()
            if self._query is None:
                for q in _QUERIES:
                    try:
                        cur.execute(q)
                        self._query = q
                        break
                    except MySQLdb.MySQLError as e:
                        last = e
                else:
                    self.unavailable = f"cannot read lock waits: {last}"
                    log.warning("%s; wait cycles are broken by the timeout valve only", self.unavailable)
                    return None
            else:
                cur.execute(self._query)
            return [(int(w), int(b)) for w, b in cur.fetchall() if w is not None and b is not None]
        except MySQLdb.MySQLError as e:
            self.close()
            log.warning("reading lock waits failed: %s", e)
            return None

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass
            self._conn = None
