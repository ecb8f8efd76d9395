"""What the proxy knows about each client connection; capture reads it to rebuild sessions.

Until its handshake is done a connection's Session holds what the handshake said. From then on
the data plane keeps the live state (database, status flags, prepared statements: C, per
command) and the Session reads it through one snapshot call."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastproxy import _dataplane
from fastproxy.constants import SERVER_STATUS


def used_database(payload) -> str | None:
    """The database a COM_QUERY payload (command byte included) switches to with `USE db`, else None.
    The data plane's own parser (fastproxy/csrc/dp_session.c), shared with replay."""
    return _dataplane.used_database(payload)


@dataclass
class CommandInfo:
    """The last finished command of a connection, as the proxy saw it."""

    cmd: int
    start_ns: int  # wall clock, when the command's first bytes arrived
    end_ns: int  # wall clock, when the response's last bytes arrived
    outcome: int  # 0 OK, 1 ERR, 2 no response, 3 unknown
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

    def state(self) -> dict:
        """The live state: the data plane's snapshot, or what the handshake said before it."""
        snap = self.relay.snapshot() if self.relay is not None else None
        if snap is None:
            return {"user": self.user, "db": self.db, "capabilities": self.capabilities,
                    "status_flags": SERVER_STATUS.AUTOCOMMIT, "prepared": {}, "prepared_params": {},
                    "prepared_types": {}, "filtered": [], "commands": 0, "pending_commands": 0, "capture": None,
                    "last_command": None}
        return snap

    @staticmethod
    def last_command(state: dict) -> CommandInfo | None:
        last = state["last_command"]
        return None if last is None else CommandInfo(*last)

    def snapshot(self, state: dict | None = None) -> dict:
        """What replay needs to rebuild this session (no secrets): the body of a CONN_STATE record."""
        state = state or self.state()
        prepared = state["prepared"]
        return {
            "user": state["user"],
            "db": state["db"],
            "capabilities": self.capabilities,
            "charset": self.charset,
            "client_addr": self.client_addr,
            "prepared": sorted([sid, sql] for sid, sql in prepared.items()),
            "types": {str(sid): t.hex() for sid, t in sorted(state["prepared_types"].items()) if sid in prepared},
        }
