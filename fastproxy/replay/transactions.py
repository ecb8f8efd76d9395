"""Whole transactions on replay.

A transaction that production ran to its end must not be cut in two on replay. When a replay-only
error aborts it — a deadlock (1213) or lock wait timeout (1205) that production did not have, or
the replay connection dropping in the middle — the rest of it must not run on its own in autocommit
(rows production rolled back would be committed, ROLLBACK TO SAVEPOINT would fail). The engine
keeps, per replay connection, what it sent for the production transaction in progress; on a
retryable error it rolls back and sends the transaction again from its start (with the same pinned
time and ids), up to MAX_ATTEMPTS times. If it still fails, the failure is reported once (command
type ``Transaction``) and the transaction's remaining commands, up to its COMMIT/ROLLBACK, are not
sent (counted as skipped).

The opposite case: a statement production lost to a deadlock (1213) or lock wait timeout (1205)
is not sent — its effect in production was none, and the lock situation that caused it is timing
that replay does not reproduce; after a deadlock the replay transaction is rolled back at that
point, as production's was, so what follows (usually the application's own retry) starts from the
same state.
"""
from __future__ import annotations

import time

from fastproxy.constants import ER
from fastproxy.replay._causal import TXN_CHAINED
# What one replay connection sent for the production transaction in progress is TxnLog, a C struct
# in fastproxy/replay/_conn.pyx: the per-command chain in C reads and resets it for every command.

RETRYABLE = frozenset({ER.LOCK_DEADLOCK, ER.LOCK_WAIT_TIMEOUT})
MAX_ATTEMPTS = 3
ROLLBACK = b"\x03ROLLBACK"
ROLLBACK_AND_CHAIN = b"\x03ROLLBACK AND CHAIN"


def rollback_before(entries: list) -> bytes:
    """The ROLLBACK that starts sending a transaction's logged commands again. A transaction COMMIT AND
    CHAIN opened has no statement of its own that opens it: the rollback opens the next one, as the
    chain did, else the commands would run in autocommit."""
    if entries and entries[0][3] & TXN_CHAINED:
        return ROLLBACK_AND_CHAIN
    return ROLLBACK


class Retry:
    """The commands being sent again, one at a time."""

    __slots__ = ("entries", "pos", "error", "sent_ns", "then")

    def __init__(self, entries: list[tuple], error, then: bytes | None = None) -> None:
        self.sent_ns = time.monotonic_ns()  # when the statement now waited for was sent (for the watcher)
        self.entries = entries
        self.pos = -1       # -1: the ROLLBACK that starts the retry
        self.error = error  # the replay result that made us retry (None: a redo of an undone transaction)
        self.then = then    # a redo: the command to send once the transaction is back where it was

    def next_entry(self) -> tuple | None:
        self.pos += 1
        self.sent_ns = time.monotonic_ns()
        return self.entries[self.pos] if self.pos < len(self.entries) else None

    @property
    def last(self) -> bool:
        return self.pos == len(self.entries) - 1
