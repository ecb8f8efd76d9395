"""A raw-protocol client that reads whole responses: server-side prepared statements that stay open
(no driver re-prepares behind our back), and an exactly known command sequence for inspect tests."""
from __future__ import annotations

import struct

from proxy_rawclient import RawClient, packet


class Response:
    def __init__(self, kind: str, first: bytes, rows: int = 0) -> None:
        self.kind = kind  # "ok", "err", "rows"
        self.first = first
        self.rows = rows

    @property
    def err_code(self) -> int:
        return struct.unpack_from("<H", self.first, 1)[0] if self.kind == "err" else 0


class PSClient(RawClient):
    """RawClient (native-password login, no CLIENT_DEPRECATE_EOF) plus whole-response reading."""

    def _read_until_eof(self) -> int:
        n = 0
        while True:
            _, p = self.read_packet()
            if p[0] == 0xFE and len(p) < 9:
                return n
            if p[0] == 0xFF:
                raise ConnectionError(f"error inside a result set: {p!r}")
            n += 1

    def _result(self) -> Response:
        _, first = self.read_packet()
        if first[0] in (0x00, 0xFF):
            return Response("ok" if first[0] == 0 else "err", first)
        self._read_until_eof()  # column definitions
        return Response("rows", first, self._read_until_eof())

    def query(self, sql: str) -> Response:  # type: ignore[override]
        self.send(packet(0, b"\x03" + sql.encode()))
        return self._result()

    def init_db(self, db: str) -> Response:
        self.send(packet(0, b"\x02" + db.encode()))
        return self._result()

    def prepare(self, sql: str) -> int:
        self.send(packet(0, b"\x16" + sql.encode()))
        _, first = self.read_packet()
        if first[0] != 0:
            raise ConnectionError(f"prepare failed: {first!r}")
        stmt_id, ncols, nparams = struct.unpack_from("<IHH", first, 1)
        if nparams:
            self._read_until_eof()
        if ncols:
            self._read_until_eof()
        return stmt_id

    def execute(self, stmt_id: int) -> Response:
        """COM_STMT_EXECUTE of a statement without parameters."""
        self.send(packet(0, b"\x17" + struct.pack("<IBI", stmt_id, 0, 1)))
        return self._result()

    def close_stmt(self, stmt_id: int) -> None:
        self.send(packet(0, b"\x19" + struct.pack("<I", stmt_id)))  # no response

    def quit(self) -> None:
        self.send(packet(0, b"\x01"))
        self.close()


def ps_client(port: int, user: str, password: str) -> PSClient:
    c = PSClient(port)
    c.login(user, password)
    return c
