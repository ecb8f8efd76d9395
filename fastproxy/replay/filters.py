"""What a replay keeps of its input: the filters of fastproxy/traffic_filter.py (schema, user, command
type, statement class, digest, time window, connection sample, shard) applied to the record stream
before the engine sees it, each counting what it dropped."""
from __future__ import annotations

import json
import re
from typing import Iterator

from fastproxy.capture.record import (KIND_COMMAND, KIND_CONN_CLOSE, KIND_CONN_OPEN, KIND_CONN_STATE, OUTCOME_ERR,
                                      OUTCOME_OK, Record)
from fastproxy.constants import COMMAND, ER, SERVER_STATUS
from fastproxy.errors import ConfigError, TrafficFormatError
from fastproxy.inputs.common import status_flags_recorded
from fastproxy.jobs_base import utc_iso
from fastproxy.traffic_filter import CLASSES, Filters, Selector, parse_time, statement_class

__all__ = ["CLASSES", "Filters", "FilteredSource", "statement_class"]

MAX_HELD = 10_000  # records of one connection held before the window at most
MAX_AFTER_END = 1_000  # commands of one connection kept after the window to end its transaction at most
MAX_AFTER_END_NS = 60 * 1_000_000_000  # ... and no later than this after the window's end (capture time)
_TXN_WORD = re.compile(rb"\s*(?:/\*.*?\*/\s*)*(begin|start\s+transaction|commit|rollback)\b(?!\s+to\b)",
                       re.I | re.S)


def _txn_word(payload: bytes) -> str | None:
    """begin | commit | rollback for a COM_QUERY that starts or ends a transaction (not ROLLBACK TO)."""
    if payload[:1] != b"\x03":
        return None
    m = _TXN_WORD.match(payload, 1)
    if not m:
        return None
    word = m.group(1).lower()
    return "begin" if word.startswith(b"begin") or word.startswith(b"start") else word.decode()


class FilteredSource:
    """Wraps a record source (fastproxy.inputs) with Filters; `dropped` counts by filter."""

    def __init__(self, source, filters: Filters) -> None:
        self.source = source
        self.filters = filters
        self.format = source.format
        self.meta = dict(source.meta)
        self.stats = getattr(source, "stats", {})
        self.files = getattr(source, "files", [])
        self.complete = getattr(source, "complete", True)
        self.unfinished = getattr(source, "unfinished", False)
        self.unfinished_inputs = getattr(source, "unfinished_inputs", [])
        start = int(self.meta.get("start_ns", 0) or 0)
        start_ns = parse_time(filters.start_time, "start-time", start) if filters.start_time else 0
        end_ns = parse_time(filters.end_time, "end-time", start) if filters.end_time else 0
        if start_ns and end_ns and end_ns <= start_ns:
            raise ConfigError("end-time: must be after start-time")
        if start_ns:
            # replay paces from the window's start: what came before it is due at once
            self.meta["start_ns"] = max(start, start_ns)
        # meta["commands"] stays the input's count, before filters: what progress and "captured" count
        self.commands_dropped = 0  # commands the filters dropped (with `dropped`'s connections' commands)
        cap_end = int(self.meta.get("end_ns", 0) or 0)
        if start_ns and cap_end and start_ns >= cap_end:
            raise ConfigError(f"start-time: {utc_iso(start_ns)} is after the input's end ({utc_iso(cap_end)}): "
                              f"nothing to replay")
        if end_ns and start and end_ns <= start:
            raise ConfigError(f"end-time: {utc_iso(end_ns)} is before the input's start ({utc_iso(start)}): "
                              f"nothing to replay")
        self.selector = Selector(filters, start_ns, end_ns)
        self.dropped = self.selector.dropped
        self.start_ns, self.end_ns = start_ns, end_ns
        # with a start-time: what a connection did before the window (its open, session and
        # transaction control) is held until it runs a statement in the window, and dropped if it
        # never does: a window holds no connection without a statement in it
        self._held: dict[int, list[Record]] = {}
        self._active: set[int] = set()  # connections with a statement in the window
        self._begin_at: dict[int, int] = {}  # the place of a connection's held BEGIN in its held records
        self._after_end: set[int] = set()  # connections opened after the window: not replayed
        self.in_window = 0  # commands of the input in the window (whatever the other filters keep)
        # with an end-time: a transaction open at the window's end is replayed to its end (its COMMIT
        # or ROLLBACK after the window), never cut in two: left open, its locks would hold up what
        # waited for them in the window, and what it wrote would be lost with its connection
        self._status_flags = status_flags_recorded(self.meta)
        self._in_txn: dict[int, int] = {}  # connection -> commands kept after the window for its transaction
        self.completed_after_end = 0  # commands after the window kept to end a transaction

    def __iter__(self) -> Iterator[Record]:
        start, end = self.start_ns, self.end_ns
        held = self._held
        for rec in self.source:
            kind = rec.kind
            t = rec.start_ns
            if end and (kind == KIND_CONN_OPEN or kind == KIND_CONN_CLOSE):
                self._in_txn.pop(rec.conn_id, None)  # (a log's thread id may be used again)
            if end and t >= end and kind != KIND_COMMAND:
                if kind == KIND_CONN_OPEN:  # the connection opened after the window
                    self._after_end.add(rec.conn_id)
                    self.dropped["end-time (connections)"] += 1
                    continue
                if kind == KIND_CONN_CLOSE:
                    if rec.conn_id in self._after_end:
                        self._after_end.discard(rec.conn_id)
                        continue
                    rec = rec._replace(start_ns=end)  # the window's end ends its connections
            if kind == KIND_COMMAND and t >= start and (not end or t < end):
                self.in_window += 1
            if end and kind == KIND_COMMAND and t >= end and rec.conn_id in self._in_txn:
                kept = self._ends_transaction(rec)
                if kept is None:
                    continue
                rec = kept
            elif not self._keep(rec):
                continue
            elif end and kind == KIND_COMMAND:
                self._track_transaction(rec)
            if not start:
                yield rec
                continue
            conn = rec.conn_id
            if conn in self._active:
                if kind == KIND_CONN_CLOSE:
                    self._active.discard(conn)
                yield rec
            elif kind == KIND_COMMAND and t >= start:
                self._active.add(conn)
                self._begin_at.pop(conn, None)
                yield from held.pop(conn, ())
                yield rec
            elif kind == KIND_CONN_CLOSE:
                self._drop_held(conn)
            else:
                yield from self._hold(conn, rec)
        for conn in list(held):
            self._drop_held(conn)
        if self.meta.get("commands") is None:  # a log counts its commands once read
            self.meta["commands"] = self.source.meta.get("commands")
        if (start or end) and not self.in_window:
            raise TrafficFormatError(f"no command of the input is in the time window "
                                     f"{utc_iso(start) if start else '(start)'} .. {utc_iso(end) if end else '(end)'}"
                                     f": nothing was replayed")

    def _in_transaction_after(self, rec: Record) -> bool | None:
        """Whether its connection is in a transaction after `rec` (None: it does not say), as the
        causal planner reads it (_causal.pyx, _open_after): the captured status of an answer that
        succeeded; after an error the transaction goes on, but a deadlock ended it; a command with no
        answer (a statement's close, long data) says nothing, COM_QUIT ends it; else the texts."""
        payload = rec.payload
        if payload[:1] == bytes((COMMAND.COM_QUIT,)):
            return False
        if rec.outcome == OUTCOME_OK and self._status_flags:
            return bool(rec.status_flags & SERVER_STATUS.IN_TRANS)
        if rec.outcome == OUTCOME_ERR:
            return False if rec.err_code == ER.LOCK_DEADLOCK else None
        word = _txn_word(payload)
        return None if word is None else word == "begin"

    def _track_transaction(self, rec: Record) -> None:
        """A command kept before the window's end: is its connection inside a transaction after it?"""
        open_after = self._in_transaction_after(rec)
        if open_after:
            self._in_txn.setdefault(rec.conn_id, 0)
        elif open_after is not None:
            self._in_txn.pop(rec.conn_id, None)

    def _ends_transaction(self, rec: Record) -> Record | None:
        """A command after the window of a connection whose transaction is open: kept (the other
        filters judge it as in the window) up to the one that ends the transaction, at the window's
        end (the replay does not wait for its captured time). None: dropped."""
        conn, end = rec.conn_id, self.end_ns
        kept = self._in_txn[conn]
        if (kept >= MAX_AFTER_END or rec.start_ns - end > MAX_AFTER_END_NS
                or (self.start_ns and conn not in self._active)):
            # bounded (a session that never commits), or a connection with no statement in the window
            # (it is not replayed): its transaction stays cut
            del self._in_txn[conn]
            self.dropped["end-time (transactions left open)"] += 1
            return rec if self._keep(rec) else None
        if self._in_transaction_after(rec) is False:
            del self._in_txn[conn]
        else:
            self._in_txn[conn] = kept + 1
        if self.selector.command(conn, rec.payload, end - 1, rec.affected_rows) is not None:
            self.commands_dropped += 1
            return None
        self.completed_after_end += 1
        return rec._replace(start_ns=end, end_ns=end + max(0, rec.end_ns - rec.start_ns))

    def _hold(self, conn: int, rec: Record) -> Iterator[Record]:
        """A record of a connection before the window, kept until it runs a statement in the window.
        A transaction that ends before the window goes (its statements were dropped)."""
        held = self._held.setdefault(conn, [])
        word = _txn_word(rec.payload) if rec.kind == KIND_COMMAND else None
        if word is not None:  # a begin, commit or rollback ends the transaction held before it (if any)
            at = self._begin_at.pop(conn, None)
            if at is not None:
                self._drop_commands([held.pop(at)])
            if word != "begin":
                self._drop_commands([rec])
                return
            self._begin_at[conn] = len(held)
        held.append(rec)
        if len(held) > MAX_HELD:  # bounded memory: such a connection is replayed from now on
            self._active.add(conn)
            self._begin_at.pop(conn, None)
            yield from self._held.pop(conn)

    def _drop_held(self, conn: int) -> None:
        self._begin_at.pop(conn, None)
        self._in_txn.pop(conn, None)
        held = self._held.pop(conn, None)
        if held is not None:
            self._drop_commands(held)
            self.dropped["start-time (connections)"] += 1

    def _drop_commands(self, recs) -> None:
        n = sum(r.kind == KIND_COMMAND for r in recs)
        if n:
            self.dropped["start-time"] += n
            self.commands_dropped += n

    @property
    def fraction_read(self) -> float | None:
        return getattr(self.source, "fraction_read", None)

    def _keep(self, rec: Record) -> bool:
        kind = rec.kind
        if kind == KIND_COMMAND:
            if self.selector.command(rec.conn_id, rec.payload, rec.start_ns, rec.affected_rows) is None:
                return True
            self.commands_dropped += 1
            return False
        if kind == KIND_CONN_OPEN or kind == KIND_CONN_STATE:
            info = json.loads(rec.payload or b"{}")
            return self.selector.connection(rec.conn_id, info.get("user", ""), info.get("db"),
                                            info.get("prepared", []))
        if kind == KIND_CONN_CLOSE:
            return self.selector.close(rec.conn_id)
        return True
