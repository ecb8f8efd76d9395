"""What the proxy knows about each client connection; capture reads it to rebuild sessions.

Until its handshake is done a connection's Session holds what the handshake said. From then on the
data plane (C, per command) keeps the live state — status flags, whether the open transaction has
written, prepared statements with their SQL and bound types, and the current database, which comes
from the server: from SESSION_TRACK_SCHEMA in its OK packets when the client negotiated
CLIENT_SESSION_TRACK, else, after a statement that may have changed it (a USE anywhere in a query, a
dropped database), from the proxy's own `SELECT DATABASE()` at the next command boundary
(fastproxy/proxy/connection.py runs it). The SQL text only says *that* the database may have
changed, never to what. Python reads that state through one snapshot call.

What the server cannot tell, and the data plane leaves to Python through a hook (rare statements
only), is kept here: SQL-level prepared statements (`PREPARE s FROM ...`) and temporary tables.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastproxy import _dataplane
from fastproxy.constants import CLIENT, SERVER_STATUS
from fastproxy.sqltext import Effect, session_effects, worth_scanning

_OK = 0


def used_database(payload) -> str | None:
    """The database a COM_QUERY payload (command byte included) switches to with `USE db`, else None.
    The data plane's parser (fastproxy/csrc/dp_session.c); replay's filters use it."""
    return _dataplane.used_database(payload)


@dataclass
class CommandInfo:
    """The last finished command of a connection, as the proxy saw it."""

    cmd: int
    start_ns: int  # wall clock, when the command's first bytes arrived
    end_ns: int  # wall clock, when the response's last bytes arrived
    outcome: int  # 0 OK, 1 ERR, 2 no response, 3 unknown, 4 backend lost
    err_code: int


@dataclass(slots=True)
class Session:
    conn_id: int
    client_addr: str
    user: str = ""
    db: str | None = None
    capabilities: int = 0
    charset: int = 0  # collation id from the handshake response
    backend: str = ""
    backend_conn_id: int = 0
    server_version: str = ""
    connected_ns: int = 0
    relay: Any = None  # the data plane's handle once the handshake is done (fastproxy._dataplane.Connection)
    # SQL-level prepared statements: name -> (database when prepared, the PREPARE statement)
    sql_prepared: dict[str, tuple[str | None, str]] = field(default_factory=dict)
    # temporary tables: (database or None, name) -> (database when created, the CREATE statement)
    temp_tables: dict[tuple[str | None, str], tuple[str | None, str]] = field(default_factory=dict)
    closed_by: str = ""  # "client", "server" or "proxy", once known
    close_reason: str = ""
    close_err_code: int = 0

    @property
    def session_tracked(self) -> bool:
        """The server reports the current database in its OK packets (CLIENT_SESSION_TRACK)."""
        return bool(self.capabilities & CLIENT.SESSION_TRACK)

    def state(self) -> dict:
        """The live state: the data plane's snapshot, or what the handshake said before it."""
        snap = self.relay.snapshot() if self.relay is not None else None
        if snap is None:
            return {"user": self.user, "db": self.db, "db_stale": False, "capabilities": self.capabilities,
                    "status_flags": SERVER_STATUS.AUTOCOMMIT, "txn_wrote": False,
                    "multi_statements": bool(self.capabilities & CLIENT.MULTI_STATEMENTS),
                    "prepared": {}, "prepared_params": {}, "prepared_types": {}, "filtered": [], "commands": 0,
                    "pending_commands": 0, "capture": None, "last_command": None}
        return snap

    @staticmethod
    def last_command(state: dict) -> CommandInfo | None:
        last = state["last_command"]
        return None if last is None else CommandInfo(*last)

    # ---- the data plane's hook: statements whose effect only Python follows -----------------------
    def apply_query(self, payload: bytes, outcome: int, schema_known: bool, semicolon_beyond: bool,
                    db: str | None, multi_statements: bool) -> bool:
        """A COM_QUERY that may PREPARE, DEALLOCATE, create or drop a temporary table, or USE (the data
        plane's cheap test let it through; this is the exact one): keeps SQL PREPAREs and temporary
        tables; True when the current database may have changed and the server did not say to what
        (the proxy then asks at the next command boundary)."""
        if not worth_scanning(payload, multi_statements) and not semicolon_beyond:
            return False
        effects = session_effects(bytes(payload[1:]))
        if semicolon_beyond and not any(e.kind == "maybe_use" for e in effects):
            effects.append(Effect("maybe_use"))  # a `;` beyond what the data plane kept
        stale = not schema_known and any(e.kind == "use" or (e.kind == "maybe_use" and not self.session_tracked)
                                         for e in effects)  # also after an error: a multi-statement may
        if outcome != _OK:                                    # have failed after its USE
            return stale
        for e in effects:
            if e.kind == "prepare":
                # as sent (surrogateescape keeps bytes that are not UTF-8 through JSON and back)
                self.sql_prepared[e.name] = (db, e.sql.decode("utf-8", "surrogateescape"))
            elif e.kind == "deallocate":
                self.sql_prepared.pop(e.name, None)
            elif e.kind == "create_temp":
                self.temp_tables[(e.db.lower() if e.db else db and db.lower(), e.name)] = (
                    db, e.sql.decode("utf-8", "surrogateescape"))
            elif e.kind == "drop_table":
                for tdb, name in e.names:
                    self.temp_tables.pop((tdb.lower() if tdb else db and db.lower(), name), None)
        return stale

    def forget_statements(self) -> None:
        """COM_RESET_CONNECTION / COM_CHANGE_USER: the server starts the session afresh."""
        self.sql_prepared.clear()
        self.temp_tables.clear()

    def snapshot(self, state: dict | None = None) -> dict:
        """What replay needs to rebuild this session, as far as the proxy tracked it (no secrets
        filtered yet: the capture does that). The server's side (database, session and user
        variables) comes from fastproxy/proxy/introspect.py."""
        state = state or self.state()
        prepared = state["prepared"]
        flags = state["status_flags"]
        return {
            "user": state["user"],
            "db": state["db"],
            "capabilities": self.capabilities,
            "charset": self.charset,
            "client_addr": self.client_addr,
            "backend": self.backend,
            "backend_conn_id": self.backend_conn_id,
            "prepared": sorted([sid, sql] for sid, sql in prepared.items()),
            "types": {str(sid): t.hex() for sid, t in sorted(state["prepared_types"].items()) if sid in prepared},
            "sql_prepared": [{"name": name, "db": db, "sql": sql}
                             for name, (db, sql) in sorted(self.sql_prepared.items())],
            "temp_tables": [{"name": name, "db": key_db if key_db is not None else db, "sql": sql}
                            for (key_db, name), (db, sql) in sorted(self.temp_tables.items(), key=str)],
            "in_transaction": bool(flags & SERVER_STATUS.IN_TRANS),
            "transaction_read_only": bool(flags & SERVER_STATUS.IN_TRANS_READONLY),
        }
