"""What of the traffic is kept: filters by schema, user, command type, statement class, digest, time
window, connection sample and shard, shared by the capture (fastproxy/capture/job.py: what is
written) and the replay (fastproxy/replay/filters.py: what is sent). Each counts what it dropped.

Filters never break a session: the commands that shape a connection's session (COM_INIT_DB, `USE`,
`SET`, transaction control, SQL `PREPARE`/`DEALLOCATE`, `COM_STMT_PREPARE`/`CLOSE`/`RESET`, and the
non-SQL commands) are kept by the schema, class and digest filters; a statement command
(execute, fetch, send-long-data) follows the fate of the prepare it belongs to. Filters that drop
whole connections (user, sample, shard) drop their events too.
"""
from __future__ import annotations

import datetime
import re
from collections import Counter
from dataclasses import dataclass, field

from fastproxy.config import parse_duration
from fastproxy.constants import COMMAND, command_name
from fastproxy.errors import ConfigError

CLASSES = ("read", "write", "ddl", "other")
# the filters that mean something while capturing, as API fields / `traffic capture` flags, with the
# replay's names (no time window: the capture's duration is one; no shard: a capture is split when
# it is replayed)
CAPTURE_FILTER_FIELDS = [
    ("schema", "capture only statements run in these databases (comma-separated); session statements are kept"),
    ("only-user", "capture only the connections of these users (comma-separated)"),
    ("cmd-type", "capture only these command types, e.g. Query,StmtExecute"),
    ("class", "capture only these statement classes: read, write, ddl, other (comma-separated)"),
    ("digest", "capture only statements with these SQL digests (comma-separated)"),
    ("exclude-digest", "do not capture statements with these SQL digests (comma-separated)"),
    ("sample", "capture this share of the connections, whole (e.g. 10%)"),
]
_STMT_COMMANDS = (COMMAND.COM_STMT_EXECUTE, COMMAND.COM_STMT_SEND_LONG_DATA, COMMAND.COM_STMT_FETCH)
_SESSION_COMMANDS = (COMMAND.COM_INIT_DB, COMMAND.COM_STMT_CLOSE, COMMAND.COM_STMT_RESET, COMMAND.COM_QUIT,
                     COMMAND.COM_RESET_CONNECTION, COMMAND.COM_CHANGE_USER, COMMAND.COM_SET_OPTION, COMMAND.COM_PING)
_FIRST_WORD = re.compile(r"[\s(]*([a-z_]+)")
_SESSION_FIRST = frozenset({"use", "set", "begin", "start", "commit", "rollback", "savepoint", "release",
                            "prepare", "deallocate", "xa"})
_READ_FIRST = frozenset({"select", "table", "values", "with", "show", "describe", "desc", "explain", "help"})
_WRITE_FIRST = frozenset({"insert", "update", "delete", "replace", "load", "call", "merge", "handler", "lock",
                          "unlock", "do"})
_DDL_FIRST = frozenset({"create", "alter", "drop", "truncate", "rename", "grant", "revoke", "analyze", "optimize",
                        "repair", "check", "flush", "install", "uninstall"})


def cmd_type_name(cmd: int) -> str:
    """TiProxy-style command type: COM_STMT_EXECUTE -> StmtExecute."""
    name = command_name(cmd)
    return "".join(p.capitalize() for p in name[4:].split("_")) if name.startswith("COM_") else name


def statement_class(sql: str | bytes) -> str:
    """read | write | ddl | other, and "session" for what shapes a session (never filtered)."""
    from fastproxy._digest import normalize
    from fastproxy.statements import is_read_only

    text = normalize(sql)
    m = _FIRST_WORD.match(text)
    first = m.group(1) if m else ""
    if first in _SESSION_FIRST and not (first == "set" and " global " in f" {text} "):
        return "session"
    if first in _READ_FIRST:
        return "read" if is_read_only(sql) else "write"  # SELECT ... FOR UPDATE / INTO takes locks or writes
    if first in _WRITE_FIRST:
        return "write"
    if first in _DDL_FIRST:
        return "ddl"
    return "other"


def parse_time(value: str, key: str, start_ns: int) -> int:
    """An absolute ISO 8601 time, or a duration after the capture's start ("10m")."""
    text = value.strip()
    try:
        t = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
        if t.tzinfo is None:
            t = t.replace(tzinfo=datetime.timezone.utc)
        return int(t.timestamp() * 1e9)
    except ValueError:
        pass
    return start_ns + int(parse_duration(text, key) * 1e9)


def _split(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        items = value
    else:
        items = str(value).split(",")
    return [v.strip() for v in items if str(v).strip()]


def _mix(x: int) -> int:
    """splitmix64: connection ids are sequential; shards and samples need them spread."""
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


@dataclass
class Filters:
    schemas: list[str] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    cmd_types: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)
    exclude_digests: list[str] = field(default_factory=list)
    start_time: str = ""
    end_time: str = ""
    sample: float = 1.0  # fraction of connections kept
    shard: tuple[int, int] | None = None  # (i, N)

    @classmethod
    def parse(cls, *, schema=None, user=None, cmd_type=None, statement_class=None, digest=None, exclude_digest=None,
              start_time="", end_time="", sample="", shard="") -> "Filters":
        f = cls(_split(schema), _split(user), _split(cmd_type), [c.lower() for c in _split(statement_class)],
                [d.lower() for d in _split(digest)], [d.lower() for d in _split(exclude_digest)],
                str(start_time or ""), str(end_time or ""))
        bad = [c for c in f.classes if c not in CLASSES]
        if bad:
            raise ConfigError(f"class: expected {', '.join(CLASSES)}; got {', '.join(bad)}")
        known = {cmd_type_name(c) for c in range(0, 0x20)} | {"StmtBulkExecute"}
        bad = [t for t in f.cmd_types if t not in known]
        if bad:
            raise ConfigError(f"cmd-type: unknown command type(s) {', '.join(bad)} (e.g. Query, StmtExecute)")
        for d in f.digests + f.exclude_digests:
            if not re.fullmatch(r"[0-9a-f]{64}", d):
                raise ConfigError(f"digest: expected a 64-hex-digit SQL digest, got {d!r}")
        text = str(sample or "").strip()
        if text:
            try:
                v = float(text[:-1]) / 100 if text.endswith("%") else float(text)
            except ValueError:
                raise ConfigError(f"sample: expected a percentage like 10% or a fraction like 0.1, got {text!r}") \
                    from None
            if not 0 < v <= 1:
                raise ConfigError(f"sample: must be above 0% and at most 100%, got {text!r}")
            f.sample = v
        text = str(shard or "").strip()
        if text:
            m = re.fullmatch(r"(\d+)/(\d+)", text)
            if not m or not int(m.group(2)) or int(m.group(1)) >= int(m.group(2)):
                raise ConfigError(f"shard: expected i/N with 0 <= i < N, e.g. 0/3; got {text!r}")
            f.shard = (int(m.group(1)), int(m.group(2)))
        return f

    @property
    def active(self) -> bool:
        return bool(self.schemas or self.users or self.cmd_types or self.classes or self.digests
                    or self.exclude_digests or self.start_time or self.end_time or self.sample < 1 or self.shard)

    def describe(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if v not in ([], "", None, 1.0)}
        if self.shard:
            d["shard"] = f"{self.shard[0]}/{self.shard[1]}"
        return d


class _Conn:
    __slots__ = ("user", "db", "keep", "prepared", "dropped_stmts")

    def __init__(self) -> None:
        self.user = ""
        self.db: str | None = None
        self.keep = True
        self.prepared: dict[int, str] = {}
        self.dropped_stmts: set[int] = set()


class Selector:
    """Filters applied to one stream of connection events and commands; `dropped` counts by
    filter. `start_ns` / `end_ns` bound the time window (0: none)."""

    def __init__(self, filters: Filters, start_ns: int = 0, end_ns: int = 0) -> None:
        self.filters = filters
        self.start_ns = start_ns
        self.end_ns = end_ns
        self.dropped: Counter = Counter()
        self._conns: dict[int, _Conn] = {}
        self._digest_cache: dict[str, str] = {}

    # ---- connections ---------------------------------------------------------------------------
    def connection(self, conn_id: int, user: str | None, db: str | None, prepared=()) -> bool:
        """A connection opens (or its session, open before, is recorded): is it kept?"""
        c = self._conns.get(conn_id)
        if c is None:
            c = self._conns[conn_id] = _Conn()
            c.user = user or ""
            why = self._connection_kept(conn_id, c.user)
            if why:
                c.keep = False
                self.dropped[f"{why} (connections)"] += 1
        c.db = db
        for sid, sql in prepared:
            c.prepared[int(sid)] = sql
        return c.keep

    def close(self, conn_id: int) -> bool:
        """The connection closed: is its close kept?"""
        c = self._conns.pop(conn_id, None)
        if c is None:  # its open event came before the input
            return self._connection_kept(conn_id, "") is None
        return c.keep

    def _connection_kept(self, conn_id: int, user: str) -> str | None:
        f = self.filters
        if f.users and user not in f.users:
            return "user"
        if f.shard and _mix(conn_id) % f.shard[1] != f.shard[0]:
            return "shard"
        if f.sample < 1 and (_mix(conn_id ^ 0x5A5A5A5A) % 1_000_000) >= f.sample * 1_000_000:
            return "sample"
        return None

    # ---- commands ------------------------------------------------------------------------------
    def command(self, conn_id: int, payload: bytes, start_ns: int, stmt_id: int) -> str | None:
        """None if the command is kept, else the filter that dropped it (counted). `stmt_id`: the
        statement id a COM_STMT_PREPARE got."""
        c = self._conns.get(conn_id)
        if c is None:  # a command of a connection whose open event came before the input
            c = self._conns[conn_id] = _Conn()
            why = self._connection_kept(conn_id, "")
            if why:
                c.keep = False
                self.dropped[f"{why} (connections)"] += 1
        why = (self._connection_kept(conn_id, c.user) or "connection") if not c.keep \
            else self._command_dropped(c, payload, start_ns, stmt_id)
        if why:
            self.dropped[why] += 1
        return why

    def _command_dropped(self, c: _Conn, payload: bytes, start_ns: int, stmt_id: int) -> str | None:
        cmd = payload[0] if payload else -1
        sql = None
        if cmd == COMMAND.COM_QUERY:
            sql = payload[1:]
            from fastproxy.proxy.session import used_database

            db = used_database(payload)
            if db:
                c.db = db
        elif cmd == COMMAND.COM_INIT_DB:
            c.db = payload[1:].decode("utf-8", "replace")
        elif cmd == COMMAND.COM_STMT_PREPARE:
            sql = payload[1:]
            c.prepared[stmt_id] = payload[1:].decode("utf-8", "replace")
        elif cmd in _STMT_COMMANDS or cmd in (COMMAND.COM_STMT_CLOSE, COMMAND.COM_STMT_RESET):
            sid = int.from_bytes(payload[1:5], "little")
            if sid in c.dropped_stmts:
                if cmd == COMMAND.COM_STMT_CLOSE:
                    c.dropped_stmts.discard(sid)
                return "prepare dropped"
            if cmd in _STMT_COMMANDS:
                sql = c.prepared.get(sid)
        # time window: commands before it only when they shape the session
        in_window = ((not self.start_ns or start_ns >= self.start_ns)
                     and (not self.end_ns or start_ns < self.end_ns))
        session = cmd in _SESSION_COMMANDS or (sql is not None and cmd != COMMAND.COM_STMT_PREPARE
                                               and cmd not in _STMT_COMMANDS and statement_class(sql) == "session")
        if cmd == COMMAND.COM_STMT_PREPARE:
            why = self._statement_dropped(c, cmd, sql, prepare=True)
            if why:
                c.dropped_stmts.add(stmt_id)
                return why
            return None if in_window or not self.end_ns or start_ns < self.end_ns else "end-time"
        if not in_window:
            if self.end_ns and start_ns >= self.end_ns:
                return "end-time"
            if not session:
                return "start-time"
            return None
        if session:
            return None
        return self._statement_dropped(c, cmd, sql, prepare=False)

    def _statement_dropped(self, c: _Conn, cmd: int, sql, prepare: bool) -> str | None:
        f = self.filters
        if f.cmd_types and not prepare:
            if cmd_type_name(cmd) not in f.cmd_types:
                return "cmd-type"
        if f.schemas and (c.db or "") not in f.schemas:
            return "schema"
        if sql is None:
            return None
        if f.classes:
            klass = statement_class(sql)
            if klass != "session" and klass not in f.classes:
                return "class"
        if f.digests or f.exclude_digests:
            d = self._digest(sql)
            if f.digests and d not in f.digests:
                return "digest"
            if d in f.exclude_digests:
                return "exclude-digest"
        return None

    def _digest(self, sql) -> str:
        from fastproxy._digest import digest

        key = sql if isinstance(sql, str) else bytes(sql).decode("utf-8", "replace")
        d = self._digest_cache.get(key)
        if d is None:
            if len(self._digest_cache) > 100_000:
                self._digest_cache.clear()
            d = self._digest_cache[key] = digest(key)
        return d


def capture_filters_from(values: dict) -> Filters:
    """Filters from a dict keyed by CAPTURE_FILTER_FIELDS' names (missing or empty: no filter)."""
    g = lambda k: values.get(k) or ""  # noqa: E731
    return Filters.parse(schema=g("schema"), user=g("only-user"), cmd_type=g("cmd-type"),
                         statement_class=g("class"), digest=g("digest"), exclude_digest=g("exclude-digest"),
                         sample=g("sample"))
