"""What the proxy knows about each client connection; capture reads it to rebuild sessions."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from fastproxy._packet import CommandResult, execute_types_at
from fastproxy.constants import COMMAND, SERVER_STATUS

# `USE db` at the start of a COM_QUERY, after comments/whitespace; db maybe back-quoted
_USE_RE = re.compile(rb"^\s*(?:/\*.*?\*/\s*)*use\s+(`(?:[^`]|``)+`|[^\s;]+)\s*;?\s*$", re.I | re.S)


# commands whose payload changes the session state the proxy keeps
_STATEFUL = frozenset((COMMAND.COM_STMT_PREPARE, COMMAND.COM_STMT_CLOSE, COMMAND.COM_INIT_DB,
                       COMMAND.COM_CHANGE_USER, COMMAND.COM_RESET_CONNECTION))
# first byte of a COM_QUERY that may be `USE db` (possibly after whitespace or a comment)
_MAYBE_USE = frozenset(b"uU \t\r\n/#-")


def used_database(payload) -> str | None:
    """The database a COM_QUERY payload (command byte included) switches to with `USE db`, else None."""
    if len(payload) < 2 or payload[1] not in _MAYBE_USE:  # most queries: rejected on one byte
        return None
    m = _USE_RE.match(bytes(payload[1:]))
    if not m:
        return None
    name = m.group(1).decode("utf-8", "replace")
    return name[1:-1].replace("``", "`") if name.startswith("`") else name


@dataclass
class CommandInfo:
    """One finished command, as the proxy saw it."""

    cmd: int
    start_ns: int  # wall clock, when the command's first bytes arrived
    end_ns: int  # wall clock, when the response's last bytes arrived
    result: CommandResult


@dataclass
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
    status_flags: int = SERVER_STATUS.AUTOCOMMIT
    prepared: dict[int, str] = field(default_factory=dict)
    # per live statement: its number of parameters, and the parameter types last bound by an
    # execute (clients send types once; replay needs them for statements prepared before a capture)
    prepared_params: dict[int, int] = field(default_factory=dict)
    prepared_types: dict[int, bytes] = field(default_factory=dict)
    commands: int = 0
    # the last finished command (kept as plain fields: building an object per command costs)
    last_result: CommandResult | None = None
    last_start_ns: int = 0
    last_end_ns: int = 0
    last_arrival_ns: int = 0  # start times of one connection's commands strictly increase
    connected_ns: int = 0
    # set by an active capture: None (not captured), "wait-txn" (open mid-transaction), "on"
    capture_state: str | None = None

    @property
    def last_command(self) -> CommandInfo | None:
        r = self.last_result
        return None if r is None else CommandInfo(r.cmd, self.last_start_ns, self.last_end_ns, r)

    @property
    def in_transaction(self) -> bool:
        return bool(self.status_flags & SERVER_STATUS.IN_TRANS)

    @property
    def autocommit(self) -> bool:
        return bool(self.status_flags & SERVER_STATUS.AUTOCOMMIT)

    def needs_payload(self, cmd: int, payload) -> bool:
        """Whether the command's payload must be kept until its response (to update this state).
        On the per-command path: a set lookup, and one byte for COM_QUERY."""
        if cmd == COMMAND.COM_QUERY:
            return len(payload) > 1 and payload[1] in _MAYBE_USE  # the same test used_database starts with
        if cmd == COMMAND.COM_STMT_EXECUTE:  # only an execute that binds new parameter types
            return self.prepared_params and execute_types_at(payload, self.prepared_params) > 0
        return cmd in _STATEFUL

    def apply(self, cmd: int, payload: bytes | None, result: CommandResult) -> None:
        """Update the session from a finished command (payload given when needs_payload said so)."""
        if result.outcome == 0:
            self.status_flags = result.status_flags
        elif result.outcome != 2:  # ERR or no answer: nothing changed (COM_STMT_CLOSE has no answer)
            return
        if cmd == COMMAND.COM_STMT_EXECUTE and payload is not None:
            stmt_id = int.from_bytes(payload[1:5], "little")
            types_at = execute_types_at(payload, self.prepared_params)
            if types_at:
                n = self.prepared_params[stmt_id]
                self.prepared_types[stmt_id] = bytes(payload[types_at:types_at + 2 * n])
        elif cmd == COMMAND.COM_STMT_PREPARE and payload is not None:
            self.prepared[result.stmt_id] = bytes(payload[1:]).decode("utf-8", "replace")
            self.prepared_params[result.stmt_id] = result.num_params
        elif cmd == COMMAND.COM_STMT_CLOSE and payload is not None:
            stmt_id = int.from_bytes(payload[1:5], "little")
            self.prepared.pop(stmt_id, None)
            self.prepared_params.pop(stmt_id, None)
            self.prepared_types.pop(stmt_id, None)
        elif cmd == COMMAND.COM_INIT_DB and payload is not None:
            self.db = bytes(payload[1:]).decode("utf-8", "replace")
        elif cmd == COMMAND.COM_QUERY and payload is not None:
            self.db = used_database(payload) or self.db
        elif cmd == COMMAND.COM_RESET_CONNECTION:
            self._forget_statements()
        elif cmd == COMMAND.COM_CHANGE_USER and payload is not None:
            from fastproxy.protocol import parse_change_user

            self.user, self.db = parse_change_user(payload, self.capabilities)
            self._forget_statements()

    def _forget_statements(self) -> None:
        self.prepared.clear()
        self.prepared_params.clear()
        self.prepared_types.clear()

    def snapshot(self) -> dict:
        """What replay needs to rebuild this session (no secrets)."""
        return {
            "user": self.user,
            "db": self.db,
            "capabilities": self.capabilities,
            "charset": self.charset,
            "client_addr": self.client_addr,
            "prepared": sorted([sid, sql] for sid, sql in self.prepared.items()),
            "types": {str(sid): t.hex() for sid, t in sorted(self.prepared_types.items()) if sid in self.prepared},
        }
