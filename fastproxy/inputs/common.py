"""What the log sources share: connections keyed by the server's thread id, times spread within the
second the log gives, and the capture's secret filter (logs hold passwords in clear: MariaDB logs
`ALTER USER ... IDENTIFIED BY 'pw'` as sent)."""
from __future__ import annotations

import json
from collections import Counter
from typing import Iterable, Iterator

from fastproxy.capture.record import KIND_COMMAND, KIND_CONN_CLOSE, KIND_CONN_OPEN, OUTCOME_OK, Record
from fastproxy.constants import COMMAND

NS = 1_000_000_000
# Logs and TiProxy captures do not say which character set a client used: replay connections speak
# utf8mb4 (utf8mb4_general_ci, what most applications and TiDB use), not the server's default.
UTF8MB4 = 45

# what an input may not know, each True in a native capture's meta (absent: True); merged and
# converted inputs carry them on
RECORDED_KEYS = ("outcomes_recorded", "error_codes_recorded", "status_flags_recorded", "last_insert_id_recorded",
                 "latency_recorded", "rows_recorded")


def status_flags_recorded(meta: dict) -> bool:
    """Whether an input records the server status after each command (in a transaction or not):
    format version 2 captures do; converted inputs say whether theirs did."""
    try:
        version2 = int(meta.get("format_version", 1) or 1) >= 2
    except (TypeError, ValueError):
        version2 = False
    return bool(meta.get("status_flags_recorded", version2))


def secret_filter(payload: bytes, source=None) -> bytes | None:
    """The payload to keep for a statement from an input (command byte included): itself, with its
    secret literals replaced by the placeholder (as capture records them, so replay can put a password
    back), or None to drop it — the capture's classifier (fastproxy/secret_sql.py), so a password a
    server logged in clear never reaches a file. Counted on `source`: `redacted`, and `stats` (what
    was not turned into records) for what was dropped."""
    from fastproxy.secret_sql import CLEAN, DROPPED, REDACTED, classify

    verdict, out = classify(payload, 1)
    if verdict == CLEAN:
        return payload
    if not KEEP_REDACTED:
        verdict = DROPPED
    if source is not None:
        if verdict == REDACTED:
            source.redacted += 1
        else:
            source.stats[DROPPED_STAT] += 1
    return out if verdict == REDACTED else None


# Redacted statements are kept: replay puts a password back in their place (replay/users.py), so a
# logged `CREATE USER app IDENTIFIED BY ...` still creates app, and the replay user's own password
# is never changed.
KEEP_REDACTED = True


DROPPED_STAT = "statement that may carry a secret"


class LogConnections:
    """Turns per-thread log entries into a capture's connection records.

    Logs name a connection by the server's thread id; a thread id can be reused after a Quit, so
    each (thread id, generation) becomes a connection of its own.
    """

    def __init__(self) -> None:
        self._live: dict[int, int] = {}  # thread id -> connection id
        self._next = 1
        self.opened = 0
        self.last_start: dict[int, int] = {}  # connection id -> last start time (strictly increasing)

    def open(self, thread_id: int, ts_ns: int, user: str = "", db: str | None = None,
             client_addr: str = "") -> Iterator[Record]:
        """Records that open the connection for thread_id if it is not open yet."""
        if thread_id in self._live:
            return
        conn_id = self._next
        self._next += 1
        self._live[thread_id] = conn_id
        self.opened += 1
        body = {"user": user, "db": db or None, "capabilities": 0, "charset": UTF8MB4, "client_addr": client_addr,
                "backend_conn_id": thread_id}
        yield Record(KIND_CONN_OPEN, conn_id, ts_ns, 0, 0, 0, 0, 0, json.dumps(body).encode())

    def conn_id(self, thread_id: int) -> int | None:
        return self._live.get(thread_id)

    def command(self, thread_id: int, start_ns: int, end_ns: int, payload: bytes, *, outcome: int = OUTCOME_OK,
                err_code: int = 0, affected: int = 0, rows: int = 0) -> Record:
        conn_id = self._live[thread_id]
        last = self.last_start.get(conn_id, 0)
        if start_ns <= last:  # a connection's commands strictly follow each other
            start_ns = last + 1
        self.last_start[conn_id] = start_ns
        end_ns = max(end_ns, start_ns)
        return Record(KIND_COMMAND, conn_id, start_ns, end_ns, outcome, err_code, affected, rows, payload)

    def close(self, thread_id: int, ts_ns: int) -> Iterator[Record]:
        conn_id = self._live.pop(thread_id, None)
        if conn_id is not None:
            ts_ns = max(ts_ns, self.last_start.pop(conn_id, 0) + 1)  # after its last command
            yield Record(KIND_CONN_CLOSE, conn_id, ts_ns, 0, 0, 0, 0, 0, b"")

    def close_all(self, ts_ns: int) -> Iterator[Record]:
        for thread_id in list(self._live):
            yield from self.close(thread_id, ts_ns)


def spread_within_seconds(entries: Iterable, second_of, place) -> Iterator:
    """Logs that give times to the second: the entries of one second (contiguous in the log) are
    spread evenly across it, in log order, so that replay paces them instead of bursting each
    second's statements at its start. `second_of(e)` is the entry's second (Unix time) or None to
    pass it through as is; `place(e, ns)` returns the entry placed at `ns`."""
    group: list = []
    current = None
    for e in entries:
        s = second_of(e)
        if s is None:
            yield from _place_group(group, current, place)
            group = []
            yield e
            continue
        if s != current:
            yield from _place_group(group, current, place)
            group, current = [], s
        group.append(e)
    yield from _place_group(group, current, place)


def _place_group(group: list, second, place) -> Iterator:
    n = len(group)
    for k, e in enumerate(group):
        yield place(e, second * NS + (k * NS) // n)


def query_payload(sql: str | bytes) -> bytes:
    raw = sql.encode("utf-8", "surrogateescape") if isinstance(sql, str) else sql
    return bytes((COMMAND.COM_QUERY,)) + raw


def init_db_payload(db: str) -> bytes:
    return bytes((COMMAND.COM_INIT_DB,)) + db.encode("utf-8", "surrogateescape")


class SkipCounter(Counter):
    """Entries a source could not turn into commands, by reason (shown in the summary)."""
