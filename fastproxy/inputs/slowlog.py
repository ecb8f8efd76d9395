"""MySQL and MariaDB slow query logs (file output, written with long_query_time = 0) as a replay
source.

An entry (MariaDB 10.x; MySQL 5.7/8.0 differ in the marked lines):

    # Time: 241203 11:05:01                      (MariaDB: only when the second changes, server local time)
    # Time: 2024-12-03T11:05:01.123456Z          (MySQL: every entry, when it was logged = its end)
    # User@Host: app[app] @  [10.0.0.5]          (MySQL adds "Id: 8")
    # Thread_id: 8  Schema: shop  QC_hit: No     (MariaDB)
    # Query_time: 0.000123  Lock_time: 0.000045  Rows_sent: 1  Rows_examined: 1
    # Rows_affected: 0  Bytes_sent: 87           (MariaDB)
    # Errno: 0 ... Start: <ts> End: <ts>          (MySQL with log_slow_extra)
    use shop;                                    (when the database changed)
    SET timestamp=1733223901;                    (the statement's start, in seconds)
    SELECT ...;                                  (the statement, then ";")

The server writes an entry when the statement has finished, so entries are in completion order,
like a capture. Start times come from `Start:` (microseconds) or `# Time:` minus the query time
(MySQL), else from `SET timestamp` (seconds): statements of one second are spread evenly across it
in log order. Outcomes are unknown (MariaDB logs no error code; MySQL's `Errno:` is used when
present), so replay reports every error it meets unless Errno was logged.
The log has no disconnects: a connection (a thread id between server restarts) ends right after
its last statement, found by a first pass over the log.
"""
from __future__ import annotations

import datetime
import os
import re
from typing import Iterator

from fastproxy.capture.record import OUTCOME_ERR, OUTCOME_OK, Record
from fastproxy.errors import TrafficFormatError
from fastproxy.inputs.common import (NS, LogConnections, SkipCounter, init_db_payload, query_payload,
                                     secret_filter, spread_within_seconds)

_ENTRY_START = re.compile(rb"^# (?:Time|User@Host): ")
_SERVER_BANNER = re.compile(rb"^\S.*, Version: .* started with:$")
_USER_HOST = re.compile(rb"^# User@Host: ([^\[\s]*)\[[^\]]*\] @ ([^\[]*)\[([^\]]*)\](?:\s+Id:\s*(\d+))?")
_THREAD = re.compile(rb"Thread_id: (\d+)")
_SCHEMA = re.compile(rb"Schema: (\S*)")
_FIELD = re.compile(rb"(\w+): (\S+)")
_MYSQL_TIME = re.compile(rb"^# Time: (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)(Z|[+-]\d\d:\d\d)?")
_SET_TIMESTAMP = re.compile(rb"^SET timestamp=(\d+)(?:\.(\d+))?;$")
_USE = re.compile(rb"^use (`(?:[^`]|``)+`|\S+);$", re.I)
_ADMIN = re.compile(rb"^# administrator command: (.+);$")

QUERY_TIME_KEYS = (b"Query_time",)


def looks_like_slow_log(head: bytes) -> bool:
    return b"\n# Query_time: " in head or head.startswith(b"# Query_time: ")


def _iso_to_ns(text: bytes, zone: bytes | None) -> int:
    value = text.decode()
    if zone and zone != b"Z":
        value += zone.decode()
    t = datetime.datetime.fromisoformat(value)
    if t.tzinfo is None:  # "Z" (or nothing: MySQL logs UTC by default, log_timestamps=UTC)
        t = t.replace(tzinfo=datetime.timezone.utc)
    return int(t.timestamp() * 1_000_000) * 1000


class _Entry:
    __slots__ = ("thread_id", "user", "host", "schema", "fields", "use_db", "start_s", "start_ns", "end_ns",
                 "query", "admin", "line", "seq")

    def __init__(self, line: int) -> None:
        self.line = line
        self.thread_id: int | None = None
        self.user = ""
        self.host = ""
        self.schema: str | None = None
        self.fields: dict[bytes, bytes] = {}
        self.use_db: str | None = None
        self.start_s: int | None = None  # SET timestamp
        self.start_ns: int | None = None  # exact start, when the log has one
        self.end_ns: int | None = None  # MySQL "# Time:"
        self.query: list[bytes] = []
        self.admin: str | None = None
        self.seq = 0  # the entry's place in the log


class SlowLogSource:
    format = "slow-log"

    def __init__(self, path: str) -> None:
        self.path = path
        if not os.path.isfile(path):
            raise TrafficFormatError(f"{path}: no such file")
        self.stats = SkipCounter()
        self.redacted = 0  # statements kept with their secret literals replaced by the placeholder
        self.conns = LogConnections()
        self.size = os.path.getsize(path)
        self.bytes_read = 0  # of the file, by the iteration under way (progress while the count is unknown)
        self._first_pass = False
        self.errno_logged = False
        self.meta = {
            "format": self.format, "source": os.path.abspath(path), "commands": None,
            "outcomes_recorded": False, "status_flags_recorded": False, "last_insert_id_recorded": False,
            "start_ns": 0,
        }
        self.commands = 0

    @property
    def fraction_read(self) -> float:
        if self._first_pass:
            return 0.0
        return self.bytes_read / self.size if self.size else 1.0

    # ---- parsing ---------------------------------------------------------------------------
    def _entries(self) -> Iterator[_Entry | str]:
        """Raw entries in log order; the string "restart" where the server restarted (thread ids
        start over)."""
        entry: _Entry | None = None
        in_header = False
        skip_banner = 0
        seq = 0
        with open(self.path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                self.bytes_read += len(raw)
                line = raw.rstrip(b"\n").rstrip(b"\r")
                if skip_banner:
                    skip_banner -= 1
                    continue
                if _SERVER_BANNER.match(line):
                    if entry is not None:
                        yield entry
                        entry = None
                    yield "restart"
                    skip_banner = 2  # "Tcp port: ..." and "Time Id Command Argument"
                    continue
                if _ENTRY_START.match(line):
                    # "# Time:" always starts an entry; "# User@Host:" too, unless it follows that
                    # entry's own "# Time:" line
                    continues = (entry is not None and in_header and not entry.user
                                 and line.startswith(b"# User@Host: "))
                    if not continues:
                        if entry is not None:
                            yield entry
                        entry = _Entry(lineno)
                        seq += 1
                        entry.seq = seq
                    in_header = True
                if entry is None:
                    continue  # the file's banner, or text before the first entry
                if in_header and line.startswith(b"#"):
                    self._header_line(entry, line)
                    continue
                in_header = False
                m = _ADMIN.match(line)
                if m and not entry.query:
                    entry.admin = m.group(1).decode("utf-8", "replace")
                    continue
                if not entry.query:
                    m = _SET_TIMESTAMP.match(line)
                    if m:
                        entry.start_s = int(m.group(1))
                        if m.group(2):
                            frac = (m.group(2) + b"000000000")[:9]
                            entry.start_ns = entry.start_s * NS + int(frac)
                        continue
                    m = _USE.match(line) if entry.start_s is None and entry.start_ns is None else None
                    if m:  # the server's own "use db;" comes before "SET timestamp"; a USE statement after it
                        name = m.group(1).decode("utf-8", "surrogateescape")
                        entry.use_db = name[1:-1].replace("``", "`") if name.startswith("`") else name
                        continue
                entry.query.append(line)
        if entry is not None:
            yield entry

    def _header_line(self, e: _Entry, line: bytes) -> None:
        if line.startswith(b"# Time: "):
            m = _MYSQL_TIME.match(line)
            if m:
                e.end_ns = _iso_to_ns(m.group(1), m.group(2))
            return
        m = _USER_HOST.match(line)
        if m:
            e.user = m.group(1).decode("utf-8", "replace")
            e.host = (m.group(3) or m.group(2)).decode("utf-8", "replace").strip()
            if m.group(4):
                e.thread_id = int(m.group(4))
            return
        m = _THREAD.search(line)
        if m:
            e.thread_id = int(m.group(1))
            s = _SCHEMA.search(line)
            if s:
                e.schema = s.group(1).decode("utf-8", "surrogateescape") or None
        for k, v in _FIELD.findall(line):
            if k not in (b"Thread_id", b"Schema", b"User", b"Host"):
                e.fields[k] = v
        if b"Start" in e.fields and e.start_ns is None:
            try:
                e.start_ns = _iso_to_ns(*_MYSQL_TIME.match(b"# Time: " + e.fields[b"Start"]).groups())
            except (AttributeError, ValueError):
                pass

    # ---- records ---------------------------------------------------------------------------
    def _last_entries(self) -> set[int]:
        """The place of each thread's last entry (between server restarts): a slow log has no
        disconnects, so a connection ends after its last statement (a first pass over the log).
        Holding every connection open to the log's end took more connections than production had."""
        last: dict[int, int] = {}
        ends: set[int] = set()
        self._first_pass = True  # (progress counts the second pass only)
        for e in self._entries():
            if isinstance(e, str):
                ends.update(last.values())
                last.clear()
            elif e.thread_id is not None:
                last[e.thread_id] = e.seq
        ends.update(last.values())
        self.bytes_read = 0
        self._first_pass = False
        return ends

    def __iter__(self) -> Iterator[Record]:
        last_entries = self._last_entries()
        placed = spread_within_seconds(self._entries(), self._second_of, self._place)
        db_of: dict[int, str | None] = {}
        last_ns = 0
        for e in placed:
            if isinstance(e, str):  # server restart: every connection ended
                yield from self.conns.close_all(last_ns)
                db_of.clear()
                continue
            yield from self._entry(e, db_of)
            if e.seq in last_entries and e.thread_id is not None:  # its last statement: the connection ends
                yield from self.conns.close(e.thread_id, self._end_of(e) + 1 if e.start_ns else last_ns + 1)
                db_of.pop(e.thread_id, None)
            if e.start_ns:
                last_ns = max(last_ns, e.start_ns)
        yield from self.conns.close_all(last_ns + 1)
        if self.errno_logged:
            self.meta["outcomes_recorded"] = True
        self.meta["commands"] = self.commands

    @staticmethod
    def _end_of(e: _Entry) -> int:
        return (e.start_ns or 0) + int(_float(e.fields.get(b"Query_time")) * NS)

    def _entry(self, e: _Entry, db_of: dict) -> Iterator[Record]:
        if e.thread_id is None:
            self.stats["entry without a thread id"] += 1
            return
        start = e.start_ns or 0
        if not start:
            self.stats["entry without a time"] += 1
            return
        if not self.meta["start_ns"]:
            self.meta["start_ns"] = start
        query_s = _float(e.fields.get(b"Query_time"))
        end = start + int(query_s * NS)
        db = e.schema if e.schema is not None else e.use_db
        opened = self.conns.conn_id(e.thread_id) is None
        yield from self.conns.open(e.thread_id, start - 1, e.user, db, e.host)
        if opened:
            db_of[e.thread_id] = db
        if e.admin is not None:
            yield from self._admin(e, start, end)
            return
        sql = b"\n".join(e.query)
        if sql.endswith(b";"):
            sql = sql[:-1]  # the server appends ";" to every statement it logs
        if not sql.strip():
            self.stats["entry without a statement"] += 1
            return
        if db and db != db_of.get(e.thread_id):
            yield self.conns.command(e.thread_id, start - 1, start - 1, init_db_payload(db))
            db_of[e.thread_id] = db
        payload = secret_filter(query_payload(sql), self)
        if payload is None:
            return
        errno = e.fields.get(b"Errno")
        outcome, err = OUTCOME_OK, 0
        if errno is not None:
            self.errno_logged = True
            err = int(errno) if errno.isdigit() else 0
            outcome = OUTCOME_ERR if err else OUTCOME_OK
        self.commands += 1
        yield self.conns.command(e.thread_id, start, end, payload, outcome=outcome, err_code=err,
                                 affected=int(_float(e.fields.get(b"Rows_affected"))),
                                 rows=int(_float(e.fields.get(b"Rows_sent"))))

    def _admin(self, e: _Entry, start: int, end: int) -> Iterator[Record]:
        name = e.admin.lower()
        if name == "quit":
            yield from self.conns.close(e.thread_id, end)
        elif name == "ping":
            self.commands += 1
            yield self.conns.command(e.thread_id, start, end, b"\x0e")
        else:  # Prepare/Execute/Close stmt (no statement text), Init DB (no name), Binlog Dump, ...
            self.stats[f"administrator command {e.admin}"] += 1

    @staticmethod
    def _second_of(e):
        if isinstance(e, str) or e.start_ns is not None:
            return None
        if e.end_ns is not None:  # MySQL: the log time is the end, to the microsecond
            e.start_ns = e.end_ns - int(_float(e.fields.get(b"Query_time")) * NS)
            return None
        return e.start_s

    @staticmethod
    def _place(e, ns: int):
        e.start_ns = ns
        return e


def _float(v: bytes | None) -> float:
    try:
        return float(v) if v is not None else 0.0
    except ValueError:
        return 0.0
