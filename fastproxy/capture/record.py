"""The capture record: kinds, outcomes and the binary codec (docs/traffic-format.md).

The ring buffer (fastproxy/_ringbuf.pyx) encodes records in C; this module is the single
Python decoder, shared by the reader, the inspector and the tests.
"""
from __future__ import annotations

import re
import struct
from typing import Iterator, NamedTuple

from fastproxy.errors import TrafficFormatError

FORMAT_VERSION = 1

KIND_COMMAND = 1
KIND_CONN_OPEN = 2    # body JSON {"user", "db", "capabilities", "client_addr"}
KIND_CONN_STATE = 3   # body JSON {"user", "db", "capabilities", "prepared": [[stmt_id, sql], ...]}
KIND_CONN_CLOSE = 4   # body empty
KIND_NAMES = {KIND_COMMAND: "COMMAND", KIND_CONN_OPEN: "CONN_OPEN",
              KIND_CONN_STATE: "CONN_STATE", KIND_CONN_CLOSE: "CONN_CLOSE"}

OUTCOME_OK = 0
OUTCOME_ERR = 1
OUTCOME_NO_RESPONSE = 2  # the command has no response (COM_STMT_CLOSE, COM_QUIT, ...)
OUTCOME_UNKNOWN = 3      # the connection closed before the response completed
OUTCOME_NAMES = {OUTCOME_OK: "OK", OUTCOME_ERR: "ERR",
                 OUTCOME_NO_RESPONSE: "NO_RESPONSE", OUTCOME_UNKNOWN: "UNKNOWN"}

# record_len, kind, outcome, err_code, conn_id, start_ns, end_ns, affected_rows, rows.
# Fixed size and 8-byte aligned fields after the first 8 bytes: decoding is one unpack_from.
HEADER = struct.Struct("<IBBHQqqQQ")
HEADER_SIZE = HEADER.size  # 48
assert HEADER_SIZE == 48


class Record(NamedTuple):
    kind: int
    conn_id: int
    start_ns: int     # Unix epoch ns; the event time for connection events
    end_ns: int       # 0 for connection events
    outcome: int
    err_code: int
    affected_rows: int
    rows: int
    payload: bytes    # raw command payload incl. its command byte, or the event body


def encode(rec: Record) -> bytes:
    """Python encoder, the reference for the C one in _ringbuf.pyx (used by tests)."""
    return HEADER.pack(HEADER_SIZE + len(rec.payload), rec.kind, rec.outcome, rec.err_code,
                       rec.conn_id, rec.start_ns, rec.end_ns, rec.affected_rows,
                       rec.rows) + bytes(rec.payload)


def decode_records(buf, base_offset: int = 0, name: str = "<buffer>") -> tuple[list[Record], int]:
    """Decode the whole records at the start of buf; return them and the bytes consumed.

    A partial record at the end is left for the caller to complete with more data.
    base_offset and name only make error messages point at the right place.
    """
    out = []
    unpack_from = HEADER.unpack_from
    pos = 0
    end = len(buf)
    while end - pos >= HEADER_SIZE:
        rlen, kind, outcome, err, conn, start, stop, aff, rows = unpack_from(buf, pos)
        if (rlen < HEADER_SIZE or not KIND_COMMAND <= kind <= KIND_CONN_CLOSE
                or outcome > OUTCOME_UNKNOWN):
            raise TrafficFormatError(
                f"{name}: corrupt record at offset {base_offset + pos} "
                f"(length {rlen}, kind {kind}, outcome {outcome})")
        if pos + rlen > end:
            break
        out.append(Record(kind, conn, start, stop, outcome, err, aff, rows,
                          bytes(buf[pos + HEADER_SIZE:pos + rlen])))
        pos += rlen
    return out, pos


def iter_records(buf) -> Iterator[Record]:
    """Decode a buffer that holds only whole records (e.g. a RingBuffer.drain result)."""
    recs, used = decode_records(buf)
    if used != len(buf):
        raise TrafficFormatError(f"<buffer>: truncated record at offset {used}")
    return iter(recs)


# -- files (docs/traffic-format.md, "Files") ----------------------------------------
MAGIC = b"FPXT"
FILE_VERSION = 1
FLAG_LZ4 = 0x01
FLAG_AES_CTR = 0x02
# magic, file version, flags, reserved; then IV + key check when FLAG_AES_CTR is set.
FILE_HEADER = struct.Struct("<4sBBH")

META_NAME = "meta"
# traffic-<UTC yyyymmddThhmmss.mmmZ>-<seq>.<ext>; seq decides the order.
FILE_RE = re.compile(r"^traffic-(\d{8}T\d{6}\.\d{3}Z)-(\d{6,})\.(lz4|lz4\.enc|bin|bin\.enc)$")


def extension(compress: bool, encrypt: bool) -> str:
    return ("lz4" if compress else "bin") + (".enc" if encrypt else "")
