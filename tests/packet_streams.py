"""Valid MySQL/MariaDB server response streams, built from the spec, with what the tracker must say.

Written independently of fastproxy/_packet.pyx (it only shares the protocol numbers of the spec), so
that the tests compare the tracker with a second reading of the protocol rather than with itself.

Spec: https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_command_phase.html
      https://mariadb.com/kb/en/clientserver-protocol/

An `Exchange` is one client command: its payload, the server's packets (payloads plus the sequence
id each starts at), and the `Expected` CommandResult fields. `Stream` joins exchanges into the
bytes a server would send on one connection, and knows the byte offset at which each command's
response ends (so a test can check *when* the tracker reports completion, not only what).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field, fields

MAX_PAYLOAD = 0xFFFFFF

# commands
COM_QUIT = 0x01
COM_INIT_DB = 0x02
COM_QUERY = 0x03
COM_FIELD_LIST = 0x04
COM_STATISTICS = 0x09
COM_PING = 0x0E
COM_CHANGE_USER = 0x11
COM_STMT_PREPARE = 0x16
COM_STMT_EXECUTE = 0x17
COM_STMT_SEND_LONG_DATA = 0x18
COM_STMT_CLOSE = 0x19
COM_STMT_RESET = 0x1A
COM_SET_OPTION = 0x1B
COM_STMT_FETCH = 0x1C
COM_RESET_CONNECTION = 0x1F

# server status flags
IN_TRANS = 0x0001
AUTOCOMMIT = 0x0002
MORE_RESULTS = 0x0008
CURSOR_EXISTS = 0x0040
LAST_ROW_SENT = 0x0080

OK, ERR, NO_RESPONSE = 0, 1, 2

CURSOR_TYPE_READ_ONLY = 1


# ---- encoding ------------------------------------------------------------------------------------

def lenenc_int(v: int) -> bytes:
    if v < 0xFB:
        return bytes((v,))
    if v < 1 << 16:
        return b"\xfc" + v.to_bytes(2, "little")
    if v < 1 << 24:
        return b"\xfd" + v.to_bytes(3, "little")
    return b"\xfe" + v.to_bytes(8, "little")


def lenenc_str(s: bytes) -> bytes:
    return lenenc_int(len(s)) + s


def frame(payload: bytes, seq: int) -> tuple[bytes, int]:
    """Physical packets of one logical payload (split at 16 MiB - 1) and the next sequence id."""
    out = bytearray()
    pos = 0
    while True:
        part = min(len(payload) - pos, MAX_PAYLOAD)
        out += part.to_bytes(3, "little") + bytes((seq & 0xFF,))
        out += payload[pos:pos + part]
        pos += part
        seq += 1
        if part < MAX_PAYLOAD:
            return bytes(out), seq


def ok_packet(affected=0, insert_id=0, status=AUTOCOMMIT, warnings=0, info=b"", header=0x00) -> bytes:
    p = bytes((header,)) + lenenc_int(affected) + lenenc_int(insert_id)
    p += status.to_bytes(2, "little") + warnings.to_bytes(2, "little")
    return p + info


def eof_packet(warnings=0, status=AUTOCOMMIT) -> bytes:
    return b"\xfe" + warnings.to_bytes(2, "little") + status.to_bytes(2, "little")


def err_packet(code: int, state: str = "HY000", msg: str = "error") -> bytes:
    return b"\xff" + code.to_bytes(2, "little") + b"#" + state.encode() + msg.encode()


def column_def(name: str = "c", type_: int = 0xFD) -> bytes:
    """Protocol::ColumnDefinition41 (VAR_STRING by default)."""
    p = b"".join(lenenc_str(s) for s in (b"def", b"db", b"t", b"t", name.encode(), name.encode()))
    return p + b"\x0c" + (33).to_bytes(2, "little") + (255).to_bytes(4, "little") + bytes((type_,)) + b"\x00\x00\x00\x00\x00"


def text_row(values) -> bytes:
    return b"".join(b"\xfb" if v is None else lenenc_str(v) for v in values)


def binary_row(values) -> bytes:
    """Protocol::BinaryResultsetRow: 0x00, NULL bitmap (offset 2), then the non-NULL values."""
    bitmap = bytearray((len(values) + 7 + 2) // 8)
    body = bytearray()
    for i, v in enumerate(values):
        if v is None:
            bitmap[(i + 2) // 8] |= 1 << ((i + 2) % 8)
        else:
            body += lenenc_str(v)
    return b"\x00" + bytes(bitmap) + bytes(body)


# ---- exchanges -----------------------------------------------------------------------------------

@dataclass
class Expected:
    """The CommandResult fields a correct tracker reports (only those named are compared)."""

    outcome: int = OK
    err_code: int = 0
    sql_state: str = ""
    affected_rows: int = 0
    last_insert_id: int = 0
    rows: int = 0
    result_sets: int = 0
    columns: int = 0
    status_flags: int | None = None
    warnings: int | None = None
    stmt_id: int = -1
    num_params: int = 0
    num_columns: int = 0
    local_infile: bool = False

    def mismatches(self, result) -> list[str]:
        out = []
        for f in fields(self):
            want = getattr(self, f.name)
            if want is None:
                continue
            got = getattr(result, f.name)
            if got != want:
                out.append(f"{f.name}: got {got!r}, want {want!r}")
        return out


@dataclass
class Exchange:
    name: str
    command: bytes
    packets: list[tuple[bytes, int]] = field(default_factory=list)  # (payload, first sequence id)
    expected: Expected = field(default_factory=Expected)

    @property
    def cmd(self) -> int:
        return self.command[0]

    def response(self) -> bytes:
        out = bytearray()
        for payload, seq in self.packets:
            raw, _ = frame(payload, seq)
            out += raw
        return bytes(out)


class _Packets:
    """Collects a response's payloads, numbering sequence ids as the server would."""

    def __init__(self, seq: int = 1):
        self.seq = seq
        self.items: list[tuple[bytes, int]] = []

    def add(self, payload: bytes) -> None:
        self.items.append((payload, self.seq))
        self.seq += len(payload) // MAX_PAYLOAD + 1

    def client_turn(self, packets: int = 1) -> None:
        """The client sends `packets` packets here (auth data, file contents): skip their ids."""
        self.seq += packets


def query(sql: bytes = b"SELECT 1") -> bytes:
    return bytes((COM_QUERY,)) + sql


def execute(stmt_id: int = 1, cursor: bool = False, params: bytes = b"") -> bytes:
    return (bytes((COM_STMT_EXECUTE,)) + stmt_id.to_bytes(4, "little")
            + bytes((CURSOR_TYPE_READ_ONLY if cursor else 0,)) + (1).to_bytes(4, "little") + params)


def ok(cmd: bytes = None, affected=0, insert_id=0, status=AUTOCOMMIT, warnings=0, info=b"") -> Exchange:
    p = _Packets()
    p.add(ok_packet(affected, insert_id, status, warnings, info))
    return Exchange("ok", cmd or query(b"UPDATE t SET a = 1"), p.items,
                    Expected(OK, affected_rows=affected, last_insert_id=insert_id, status_flags=status, warnings=warnings))


def err(cmd: bytes = None, code=1064, state="42000", msg="You have an error in your SQL syntax") -> Exchange:
    p = _Packets()
    p.add(err_packet(code, state, msg))
    return Exchange("err", cmd or query(b"SELEC 1"), p.items, Expected(ERR, err_code=code, sql_state=state))


def _result_set(p: _Packets, rows, ncols: int, deprecate_eof: bool, binary: bool, status: int, warnings=0) -> None:
    p.add(lenenc_int(ncols))
    for i in range(ncols):
        p.add(column_def(f"c{i}"))
    if not deprecate_eof:
        p.add(eof_packet(warnings, status & ~MORE_RESULTS))
    for r in rows:
        p.add(binary_row(r) if binary else text_row(r))
    p.add(ok_packet(0, 0, status, warnings, header=0xFE) if deprecate_eof else eof_packet(warnings, status))


def result_set(rows, ncols: int | None = None, deprecate_eof=False, binary=False, status=AUTOCOMMIT,
               warnings=0) -> Exchange:
    ncols = ncols if ncols is not None else (len(rows[0]) if rows else 1)
    p = _Packets()
    _result_set(p, rows, ncols, deprecate_eof, binary, status, warnings)
    cmd = execute() if binary else query(b"SELECT * FROM t")
    return Exchange("binary_rs" if binary else "text_rs", cmd, p.items,
                    Expected(OK, rows=len(rows), result_sets=1, columns=ncols, status_flags=status, warnings=warnings))


def multi(parts, deprecate_eof=False, binary=False, status=AUTOCOMMIT) -> Exchange:
    """A MORE_RESULTS chain. parts: ("ok", affected, insert_id) | ("rs", rows, ncols) | ("err", code);
    an "err" part ends the chain (the server stops at the failing statement)."""
    p = _Packets()
    e = Expected(OK, status_flags=status)
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        st = status if last else status | MORE_RESULTS
        if part[0] == "ok":
            p.add(ok_packet(part[1], part[2], st))
            e.affected_rows += part[1]
            e.last_insert_id = part[2] or e.last_insert_id
            e.status_flags = st
        elif part[0] == "rs":
            _result_set(p, part[1], part[2], deprecate_eof, binary, st)
            e.rows += len(part[1])
            e.result_sets += 1
            e.columns = e.columns or part[2]
            e.status_flags = st
        else:
            p.add(err_packet(part[1], "42S02", "Table 'x' doesn't exist"))
            e.outcome, e.err_code, e.sql_state = ERR, part[1], "42S02"
            e.status_flags = None
            break
    e.warnings = None
    cmd = execute() if binary else query(b"CALL p()")
    return Exchange("multi", cmd, p.items, e)


def prepare(stmt_id=1, num_params=2, num_columns=3, deprecate_eof=False, warnings=0) -> Exchange:
    p = _Packets()
    p.add(b"\x00" + stmt_id.to_bytes(4, "little") + num_columns.to_bytes(2, "little")
          + num_params.to_bytes(2, "little") + b"\x00" + warnings.to_bytes(2, "little"))
    for group in (num_params, num_columns):
        if group:
            for i in range(group):
                p.add(column_def(f"p{i}", 0x08))
            if not deprecate_eof:
                p.add(eof_packet())
    return Exchange("prepare", bytes((COM_STMT_PREPARE,)) + b"SELECT a, b, c FROM t WHERE x = ? AND y = ?",
                    p.items, Expected(OK, stmt_id=stmt_id, num_params=num_params, num_columns=num_columns,
                                      warnings=warnings))


def local_infile(affected=3, data_packets=2, status=AUTOCOMMIT) -> Exchange:
    p = _Packets()
    p.add(b"\xfb/tmp/data.csv")
    p.client_turn(data_packets + 1)  # file contents, then an empty packet
    p.add(ok_packet(affected, 0, status, 0, b"Records: 3  Deleted: 0  Skipped: 0  Warnings: 0"))
    return Exchange("local_infile", query(b"LOAD DATA LOCAL INFILE '/tmp/data.csv' INTO TABLE t"), p.items,
                    Expected(OK, affected_rows=affected, status_flags=status, local_infile=True))


def cursor_execute(ncols=2, deprecate_eof=False, stmt_id=1, status=AUTOCOMMIT) -> Exchange:
    """COM_STMT_EXECUTE with CURSOR_TYPE_READ_ONLY: only the metadata, ending in an EOF (or, with
    CLIENT_DEPRECATE_EOF, an OK) that carries SERVER_STATUS_CURSOR_EXISTS; rows come by FETCH."""
    p = _Packets()
    p.add(lenenc_int(ncols))
    for i in range(ncols):
        p.add(column_def(f"c{i}"))
    st = status | CURSOR_EXISTS
    p.add(ok_packet(0, 0, st, header=0xFE) if deprecate_eof else eof_packet(0, st))
    return Exchange("cursor_execute", execute(stmt_id, cursor=True), p.items,
                    Expected(OK, result_sets=1, columns=ncols, status_flags=st))


def fetch(rows, deprecate_eof=False, stmt_id=1, last=True, status=AUTOCOMMIT) -> Exchange:
    p = _Packets()
    for r in rows:
        p.add(binary_row(r))
    st = status | CURSOR_EXISTS | (LAST_ROW_SENT if last else 0)
    p.add(ok_packet(0, 0, st, header=0xFE) if deprecate_eof else eof_packet(0, st))
    cmd = bytes((COM_STMT_FETCH,)) + stmt_id.to_bytes(4, "little") + (100).to_bytes(4, "little")
    return Exchange("fetch", cmd, p.items, Expected(OK, rows=len(rows), status_flags=st))


def field_list(ncols=3, deprecate_eof=False) -> Exchange:
    p = _Packets()
    for i in range(ncols):
        p.add(column_def(f"c{i}") + b"\x00")  # COM_FIELD_LIST adds the default value (here NULL-ish 0)
    p.add(ok_packet(0, 0, AUTOCOMMIT, header=0xFE) if deprecate_eof else eof_packet())
    return Exchange("field_list", bytes((COM_FIELD_LIST,)) + b"t\x00", p.items, Expected(OK, columns=ncols))


def statistics() -> Exchange:
    p = _Packets()
    p.add(b"Uptime: 42  Threads: 1  Questions: 7  Slow queries: 0  Opens: 17  Open tables: 10  "
          b"Queries per second avg: 0.166")
    return Exchange("statistics", bytes((COM_STATISTICS,)), p.items, Expected(OK))


def change_user(auth_switch=True, more_data=True, fail=False) -> Exchange:
    p = _Packets()
    if auth_switch:
        p.add(b"\xfeclient_ed25519\x00" + bytes(range(32)))
        p.client_turn()
    if more_data:
        p.add(b"\x01\x03")  # caching_sha2 "fast auth success"
    p.add(err_packet(1045, "28000", "Access denied for user 'u'@'localhost'") if fail else ok_packet(0, 0, AUTOCOMMIT))
    cmd = bytes((COM_CHANGE_USER,)) + b"u\x00\x14" + bytes(20) + b"db\x00"
    e = Expected(ERR, err_code=1045, sql_state="28000") if fail else Expected(OK, status_flags=AUTOCOMMIT)
    return Exchange("change_user", cmd, p.items, e)


def simple(cmd_byte: int, deprecate_eof=False) -> Exchange:
    """COM_PING, COM_INIT_DB, COM_RESET_CONNECTION, COM_STMT_RESET: one OK. COM_SET_OPTION: one EOF
    (MySQL answers it with an EOF packet, MariaDB with an EOF too unless DEPRECATE_EOF)."""
    p = _Packets()
    if cmd_byte == COM_SET_OPTION and not deprecate_eof:
        p.add(eof_packet(0, AUTOCOMMIT))
    else:
        p.add(ok_packet(0, 0, AUTOCOMMIT))
    return Exchange(f"simple_{cmd_byte:#04x}", bytes((cmd_byte,)) + b"\x00\x00", p.items,
                    Expected(OK, status_flags=AUTOCOMMIT))


def stmt_close(stmt_id=1) -> Exchange:
    return Exchange("stmt_close", bytes((COM_STMT_CLOSE,)) + stmt_id.to_bytes(4, "little"), [],
                    Expected(NO_RESPONSE))


def send_long_data(stmt_id=1, data=b"x" * 100) -> Exchange:
    return Exchange("send_long_data", bytes((COM_STMT_SEND_LONG_DATA,)) + stmt_id.to_bytes(4, "little")
                    + b"\x00\x00" + data, [], Expected(NO_RESPONSE))


def big_row_result(size: int, deprecate_eof=False, binary=False) -> Exchange:
    """One row holding a `size`-byte value: >= 16 MiB - 1 bytes of payload forces continuation
    packets, and in a text row the first byte becomes 0xFE (8-byte length) - which must not be
    taken for an EOF/OK terminator."""
    return result_set([[b"x" * size, b"y"]], 2, deprecate_eof, binary)


# ---- streams -------------------------------------------------------------------------------------

@dataclass
class Stream:
    exchanges: list[Exchange]

    def data(self) -> bytes:
        return b"".join(x.response() for x in self.exchanges)

    def completion_offsets(self) -> list[int]:
        """For each command, the stream offset once which its response is complete (a command
        without a response completes with its predecessor)."""
        offs, pos = [], 0
        for x in self.exchanges:
            pos += len(x.response())
            offs.append(pos)
        return offs


def all_kinds(deprecate_eof: bool) -> list[Exchange]:
    """One exchange of every kind the tracker knows (small payloads)."""
    d = deprecate_eof
    rows = [[b"1", b"abc"], [None, b""], [b"3", None]]
    return [
        ok(affected=3, insert_id=77, status=AUTOCOMMIT | IN_TRANS, warnings=2),
        err(),
        result_set(rows, deprecate_eof=d),
        result_set([], 2, deprecate_eof=d),
        result_set(rows, deprecate_eof=d, binary=True),
        multi([("ok", 1, 5), ("rs", rows, 2), ("ok", 2, 0), ("rs", rows[:1], 2)], deprecate_eof=d),
        multi([("rs", rows, 2), ("err", 1146)], deprecate_eof=d),
        prepare(deprecate_eof=d),
        prepare(stmt_id=2, num_params=0, num_columns=0, deprecate_eof=d),
        prepare(stmt_id=3, num_params=1, num_columns=0, deprecate_eof=d),
        prepare(stmt_id=4, num_params=0, num_columns=2, deprecate_eof=d),
        err(bytes((COM_STMT_PREPARE,)) + b"SELEC ?", 1064),
        local_infile(),
        cursor_execute(deprecate_eof=d),
        fetch(rows[:2], deprecate_eof=d, last=False),
        fetch(rows[2:], deprecate_eof=d),
        field_list(deprecate_eof=d),
        statistics(),
        change_user(),
        change_user(auth_switch=False, more_data=False, fail=True),
        simple(COM_PING), simple(COM_INIT_DB), simple(COM_SET_OPTION, d), simple(COM_RESET_CONNECTION),
        stmt_close(), send_long_data(),
    ]


def random_exchange(rng: random.Random, deprecate_eof: bool, max_value: int = 40) -> Exchange:
    """One random exchange of any kind, small values (for fuzzing and benchmarks)."""
    d = deprecate_eof

    def value():
        return None if rng.random() < 0.1 else bytes(rng.randrange(256) for _ in range(rng.randrange(max_value)))

    def rows(ncols):
        return [[value() for _ in range(ncols)] for _ in range(rng.randrange(5))]

    kind = rng.randrange(14)
    ncols = rng.randrange(1, 4)
    if kind == 0:
        return ok(affected=rng.randrange(1 << 20), insert_id=rng.choice((0, rng.randrange(1 << 40))),
                  status=rng.choice((AUTOCOMMIT, IN_TRANS, AUTOCOMMIT | IN_TRANS)), warnings=rng.randrange(3))
    if kind == 1:
        return err(code=rng.randrange(1000, 5000))
    if kind in (2, 3):
        return result_set(rows(ncols), ncols, d, binary=kind == 3)
    if kind == 4:
        parts = []
        for _ in range(rng.randrange(1, 5)):
            parts.append(("ok", rng.randrange(100), rng.randrange(3)) if rng.random() < 0.4
                         else ("rs", rows(ncols), ncols))
        if rng.random() < 0.3:
            parts.append(("err", rng.randrange(1000, 2000)))
        return multi(parts, d, binary=rng.random() < 0.3)
    if kind == 5:
        return prepare(rng.randrange(1, 1 << 31), rng.randrange(4), rng.randrange(4), d)
    if kind == 6:
        return local_infile(rng.randrange(100), rng.randrange(4))
    if kind == 7:
        return cursor_execute(ncols, d)
    if kind == 8:
        return fetch(rows(ncols), d, last=rng.random() < 0.5)
    if kind == 9:
        return field_list(rng.randrange(5), d)
    if kind == 10:
        return statistics()
    if kind == 11:
        return change_user(rng.random() < 0.5, rng.random() < 0.5, rng.random() < 0.3)
    if kind == 12:
        return simple(rng.choice((COM_PING, COM_INIT_DB, COM_SET_OPTION, COM_RESET_CONNECTION, COM_STMT_RESET)), d)
    return rng.choice((stmt_close, send_long_data))()


def random_stream(seed: int, n: int, deprecate_eof: bool, max_value: int = 40) -> Stream:
    rng = random.Random(seed)
    return Stream([random_exchange(rng, deprecate_eof, max_value) for _ in range(n)])
