"""Reading the full response to one text-protocol query: OK, ERR, or a result set with its rows.

The proxy (its own queries on an idle backend connection) and the replay client (its own queries
on a replay connection) use it for the few answers whose *values* they need; everything else goes
through the ResponseTracker, which never keeps rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from fastproxy._packet import PacketFramer
from fastproxy.constants import SERVER_STATUS
from fastproxy.errors import ProtocolError
from fastproxy.protocol import parse_err, read_lenenc


@dataclass
class TextResult:
    err_code: int = 0
    err_msg: str = ""
    columns: list[tuple[int, int]] = field(default_factory=list)  # per column: (type, collation id)
    rows: list[tuple[bytes | None, ...]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.err_code == 0


def _column_type(payload: bytes) -> tuple[int, int]:
    """(type, collation id) of a ColumnDefinition41 packet."""
    pos = 0
    for _ in range(6):  # catalog, schema, table, org_table, name, org_name
        n, pos = read_lenenc(payload, pos)
        pos += n
    _, pos = read_lenenc(payload, pos)  # length of the fixed fields (0x0c)
    collation = payload[pos] | payload[pos + 1] << 8
    return payload[pos + 6], collation


def _row(payload: bytes, n: int) -> tuple[bytes | None, ...]:
    out = []
    pos = 0
    for _ in range(n):
        if payload[pos] == 0xFB:
            out.append(None)
            pos += 1
            continue
        length, pos = read_lenenc(payload, pos)
        out.append(payload[pos:pos + length])
        pos += length
    return tuple(out)


class TextResultReader:
    """feed() the server's bytes after sending one COM_QUERY; `done` once its response is complete."""

    FIRST, COLUMNS, COLUMNS_EOF, ROWS, DONE = range(5)

    def __init__(self, deprecate_eof: bool) -> None:
        self.deprecate_eof = deprecate_eof
        self.framer = PacketFramer(1 << 30)
        self.result = TextResult()
        self._state = self.FIRST
        self._ncols = 0

    @property
    def done(self) -> bool:
        return self._state == self.DONE

    def feed(self, data) -> bool:
        self.framer.feed(data)
        while self._state != self.DONE and (pkt := self.framer.next_packet()) is not None:
            try:
                self._on_packet(bytes(pkt[1]))
            except (IndexError, ProtocolError) as e:
                raise ProtocolError(f"malformed response to the proxy's own query: {e}") from None
        return self.done

    def leftover(self) -> bytes:
        """Bytes after the response (none are expected: the next command was not sent yet)."""
        return self.framer.take_all()

    def _on_packet(self, p: bytes) -> None:
        first = p[0] if p else -1
        st = self._state
        if first == 0xFF:
            code, state, msg = parse_err(p)
            self.result.err_code, self.result.err_msg = code, f"{msg} ({state})"
            self._state = self.DONE
            return
        if st == self.FIRST:
            if first == 0x00:
                self._end(p)
                return
            self._ncols, _ = read_lenenc(p, 0)
            self._state = self.COLUMNS
        elif st == self.COLUMNS:
            self.result.columns.append(_column_type(p))
            if len(self.result.columns) == self._ncols:
                self._state = self.ROWS if self.deprecate_eof else self.COLUMNS_EOF
        elif st == self.COLUMNS_EOF:
            self._state = self.ROWS
        elif st == self.ROWS:
            if first == 0xFE and len(p) < 0xFFFFFF and (self.deprecate_eof or len(p) < 9):
                self._end(p)
                return
            self.result.rows.append(_row(p, self._ncols))

    def _end(self, p: bytes) -> None:
        # a multi-result answer is not expected (single statements only): stop at the first end
        self._state = self.DONE
        if p[0] == 0xFE and len(p) >= 5 and len(p) < 9:
            status = p[3] | p[4] << 8
        else:
            status = 0
        if status & SERVER_STATUS.MORE_RESULTS_EXISTS:
            raise ProtocolError("more results than one")
