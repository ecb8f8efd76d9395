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

A connection with TLS on a leg is relayed in Python (fastproxy/proxy/connection.py): for it, this
object keeps the whole live state itself, per command (`apply`, from what the Python relay saw), as
the single-threaded relay did; `state()` reads whichever of the two keeps it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastproxy import _dataplane
from fastproxy._packet import CommandResult, execute_types_at
from fastproxy.constants import CLIENT, COMMAND, SERVER_STATUS
from fastproxy.sqltext import FIRST_BYTES as _MAY_MATTER_FIRST, Effect, has_semicolon, session_effects, worth_scanning

_OK = 0
# commands whose payload changes the session state the Python relay keeps
_STATEFUL = frozenset((COMMAND.COM_STMT_PREPARE, COMMAND.COM_STMT_CLOSE, COMMAND.COM_INIT_DB,
                       COMMAND.COM_CHANGE_USER, COMMAND.COM_RESET_CONNECTION, COMMAND.COM_SET_OPTION))
# status flags that send a finished command through Session.apply even without its payload
STATE_FLAGS = SERVER_STATUS.SESSION_STATE_CHANGED | SERVER_STATUS.DB_DROPPED
_SET_OPTION_MULTI_STATEMENTS_ON = 0


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
    # TLS version of each side ("" = plain text): fastproxy/proxy/tls_upgrade.py
    client_tls: str = ""
    backend_tls: str = ""
    # SQL-level prepared statements: name -> (database when prepared, the PREPARE statement)
    sql_prepared: dict[str, tuple[str | None, str]] = field(default_factory=dict)
    # temporary tables: (database or None, name) -> (database when created, the CREATE statement)
    temp_tables: dict[tuple[str | None, str], tuple[str | None, str]] = field(default_factory=dict)
    closed_by: str = ""  # "client", "server" or "proxy", once known
    close_reason: str = ""
    close_err_code: int = 0
    # ---- kept here per command only for a connection the Python relay relays (TLS) --------------
    status_flags: int = SERVER_STATUS.AUTOCOMMIT
    prepared: dict[int, str] | None = None  # made when first needed (the data plane's keep it in C)
    # per live statement: its number of parameters, and the parameter types last bound by an
    # execute (clients send types once; replay needs them for statements prepared before a capture)
    prepared_params: dict[int, int] | None = None
    prepared_types: dict[int, bytes] | None = None
    commands: int = 0
    # the last finished command (kept as plain fields: building an object per command costs)
    last_result: CommandResult | None = None
    last_start_ns: int = 0
    last_end_ns: int = 0
    last_arrival_ns: int = 0  # start times of one connection's commands strictly increase
    # set by an active capture: None (not captured), "wait-txn" (inside a transaction that wrote
    # before the capture: captured from its end), "pending" (its state is read at the next command
    # boundary), "on"
    capture_state: str | None = None
    # the current database may have changed and the server did not say to what: asked next
    db_stale: bool = False
    # the proxy has something to ask the server at the next command boundary (db_stale, or
    # capture_state "pending"): a plain field, read for every client read (see want_own_query)
    own_query_due: bool = False
    txn_wrote: bool = False  # the open transaction has changed rows
    multi_statements: bool = False  # CLIENT_MULTI_STATEMENTS, or COM_SET_OPTION turned them on
    # LOCAL INFILE files of the command in progress, for capture: [(size, content or None)]
    infiles: list | None = None

    @property
    def session_tracked(self) -> bool:
        """The server reports the current database in its OK packets (CLIENT_SESSION_TRACK)."""
        return bool(self.capabilities & CLIENT.SESSION_TRACK)

    @property
    def in_transaction(self) -> bool:
        flags = self.status_flags if self.relay is None else self.state()["status_flags"]
        return bool(flags & SERVER_STATUS.IN_TRANS)

    def state(self) -> dict:
        """The live state: the data plane's snapshot, or what this object keeps (the handshake's
        until then; the Python relay's, per command)."""
        snap = self.relay.snapshot() if self.relay is not None else None
        if snap is None:
            r = self.last_result
            return {"user": self.user, "db": self.db, "db_stale": self.db_stale, "capabilities": self.capabilities,
                    "status_flags": self.status_flags, "txn_wrote": self.txn_wrote,
                    "multi_statements": self.multi_statements if self.prepared is not None
                    else bool(self.capabilities & CLIENT.MULTI_STATEMENTS),
                    "prepared": dict(self.prepared or {}), "prepared_params": dict(self.prepared_params or {}),
                    "prepared_types": dict(self.prepared_types or {}), "filtered": [], "commands": self.commands,
                    "pending_commands": 0, "capture": self.capture_state,
                    "last_command": None if r is None else (r.cmd, self.last_start_ns, self.last_end_ns, r.outcome,
                                                            r.err_code)}
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

    # ---- the Python relay (TLS connections): the state, per command ------------------------------
    def want_own_query(self) -> None:
        """Recompute own_query_due after db_stale or capture_state changed."""
        self.own_query_due = self.db_stale or self.capture_state == "pending"

    def set_capabilities(self, capabilities: int) -> None:
        """The Python relay starts (TLS connection): this object keeps the state from now on."""
        self.capabilities = capabilities
        self.multi_statements = bool(capabilities & CLIENT.MULTI_STATEMENTS)
        self.prepared, self.prepared_params, self.prepared_types, self.infiles = {}, {}, {}, []

    def needs_payload(self, cmd: int, payload) -> bool:
        """Whether the command's payload must be kept until its response (to update this state).
        On the per-command path: a set lookup, and for COM_QUERY a look at its first bytes (and a
        search for `;` where multi-statements are on)."""
        if cmd == COMMAND.COM_QUERY:
            # most statements (SELECT, INSERT, ...) are turned away on their first letter, here
            if len(payload) > 2 and payload[1] not in _MAY_MATTER_FIRST:
                return self.multi_statements and has_semicolon(payload)
            return worth_scanning(payload, self.multi_statements)
        if cmd == COMMAND.COM_STMT_EXECUTE:  # only an execute that binds new parameter types
            return self.prepared_params and execute_types_at(payload, self.prepared_params) > 0
        return cmd in _STATEFUL

    def note_status(self, flags: int, affected_rows: int) -> None:
        """Status flags after a successful command; whether the open transaction has written."""
        self.status_flags = flags
        if flags & SERVER_STATUS.IN_TRANS:
            if affected_rows:
                self.txn_wrote = True
        else:
            self.txn_wrote = False

    def apply(self, cmd: int, payload: bytes | None, result: CommandResult) -> None:
        """Update the session from a finished command (payload given when needs_payload said so)."""
        if result.outcome == 0:
            self.note_status(result.status_flags, result.affected_rows)
            if result.schema is not None:  # the server said which database is current now
                self.db = result.schema or None
                self.db_stale = False
                self.want_own_query()
            elif result.schema_cut or result.status_flags & SERVER_STATUS.DB_DROPPED:
                self.db_stale = self.own_query_due = True
        if cmd == COMMAND.COM_STMT_EXECUTE and payload is not None:
            # also from a failed execute: the server took the types all the same, and later
            # executes of the statement do not repeat them
            stmt_id = int.from_bytes(payload[1:5], "little")
            types_at = execute_types_at(payload, self.prepared_params)
            if types_at:
                n = self.prepared_params[stmt_id]
                self.prepared_types[stmt_id] = bytes(payload[types_at:types_at + 2 * n])
            return
        if cmd == COMMAND.COM_QUERY:
            # (a capture keeps every payload: scanned only when the cheap test lets it through)
            if payload is not None and worth_scanning(payload, self.multi_statements):
                self._apply_query(payload, result)
            return
        if result.outcome != 0 and result.outcome != 2:
            return  # ERR or no answer: nothing changed (COM_STMT_CLOSE has no answer)
        if cmd == COMMAND.COM_STMT_PREPARE and payload is not None:
            self.prepared[result.stmt_id] = bytes(payload[1:]).decode("utf-8", "replace")
            self.prepared_params[result.stmt_id] = result.num_params
        elif cmd == COMMAND.COM_STMT_CLOSE and payload is not None:
            stmt_id = int.from_bytes(payload[1:5], "little")
            self.prepared.pop(stmt_id, None)
            self.prepared_params.pop(stmt_id, None)
            self.prepared_types.pop(stmt_id, None)
        elif cmd == COMMAND.COM_INIT_DB and payload is not None:
            if result.schema is None:  # the server's answer wins when it gave one
                self.db = bytes(payload[1:]).decode("utf-8", "replace")
                self.db_stale = False
                self.want_own_query()
        elif cmd == COMMAND.COM_RESET_CONNECTION:
            self._forget_statements()
        elif cmd == COMMAND.COM_SET_OPTION and payload is not None and len(payload) >= 3:
            self.multi_statements = int.from_bytes(payload[1:3], "little") == _SET_OPTION_MULTI_STATEMENTS_ON
        elif cmd == COMMAND.COM_CHANGE_USER and payload is not None:
            from fastproxy.protocol import parse_change_user

            # the server sets the database the command names (none if it names none)
            self.user, db = parse_change_user(payload, self.capabilities)
            if result.schema is None:
                self.db = db
                self.db_stale = False
                self.want_own_query()
            self._forget_statements()

    def _apply_query(self, payload, result: CommandResult) -> None:
        """A COM_QUERY worth scanning: SQL PREPAREs, temporary tables, and whether it may have
        changed the current database (then asked, unless the server already said)."""
        effects = session_effects(bytes(payload[1:]))
        if result.schema is None and any(e.kind == "use" or (e.kind == "maybe_use" and not self.session_tracked)
                                         for e in effects):
            # also after an error: a multi-statement may have failed after its USE
            self.db_stale = self.own_query_due = True
        if result.outcome != 0:
            return
        for e in effects:
            if e.kind == "prepare":
                # as sent (surrogateescape keeps bytes that are not UTF-8 through JSON and back)
                self.sql_prepared[e.name] = (self.db, e.sql.decode("utf-8", "surrogateescape"))
            elif e.kind == "deallocate":
                self.sql_prepared.pop(e.name, None)
            elif e.kind == "create_temp":
                self.temp_tables[(e.db.lower() if e.db else self.db and self.db.lower(), e.name)] = (
                    self.db, e.sql.decode("utf-8", "surrogateescape"))
            elif e.kind == "drop_table":
                for db, name in e.names:
                    self.temp_tables.pop((db.lower() if db else self.db and self.db.lower(), name), None)

    def _forget_statements(self) -> None:
        """COM_RESET_CONNECTION / COM_CHANGE_USER: the server starts the session afresh."""
        self.prepared.clear()
        self.prepared_params.clear()
        self.prepared_types.clear()
        self.sql_prepared.clear()
        self.temp_tables.clear()
        self.txn_wrote = False

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
