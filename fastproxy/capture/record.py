"""The capture record: kinds, outcomes and the binary codec (docs/traffic-format.md).

The ring buffer (fastproxy/_ringbuf.pyx) encodes records in C; this module is the single
Python decoder, shared by the reader, the inspector and the tests.
"""
from __future__ import annotations

import re
import struct
from typing import Iterator, NamedTuple

from fastproxy.errors import TrafficFormatError

FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)  # version 1 captures (48-byte record headers) still replay

KIND_COMMAND = 1
KIND_CONN_OPEN = 2    # body JSON {"user", "db", "capabilities", "client_addr", "backend_conn_id", ...}
KIND_CONN_STATE = 3   # body JSON: the above and the session ("prepared", "session_vars", "user_vars", ...)
KIND_CONN_CLOSE = 4   # body empty, or JSON {"by": "client"|"server"|"proxy", "reason", "err_code"}
KIND_LOCAL_INFILE = 5  # a LOCAL INFILE file the client sent for the command of the same conn and start_ns
KIND_NAMES = {KIND_COMMAND: "COMMAND", KIND_CONN_OPEN: "CONN_OPEN",
              KIND_CONN_STATE: "CONN_STATE", KIND_CONN_CLOSE: "CONN_CLOSE", KIND_LOCAL_INFILE: "LOCAL_INFILE"}
MAX_KIND = KIND_LOCAL_INFILE
# LOCAL_INFILE body: the file's size (u64), then its content, or nothing when it was larger than
# capture.local-infile-max-size (then replay sends an empty file, as without the record)
INFILE_SIZE = struct.Struct("<Q")

OUTCOME_OK = 0
OUTCOME_ERR = 1
OUTCOME_NO_RESPONSE = 2  # the command has no response (COM_STMT_CLOSE, COM_QUIT, ...)
OUTCOME_UNKNOWN = 3      # the client left before the response completed (the server did run it)
OUTCOME_BACKEND_LOST = 4  # the backend connection died before answering: production may not have run it
OUTCOME_NAMES = {OUTCOME_OK: "OK", OUTCOME_ERR: "ERR", OUTCOME_NO_RESPONSE: "NO_RESPONSE",
                 OUTCOME_UNKNOWN: "UNKNOWN", OUTCOME_BACKEND_LOST: "BACKEND_LOST"}
MAX_OUTCOME = OUTCOME_BACKEND_LOST

# Version 1: record_len, kind, outcome, err_code, conn_id, start_ns, end_ns, affected_rows, rows.
HEADER_V1 = struct.Struct("<IBBHQqqQQ")
# Version 2 adds what replay needs to be faithful and to compare results: last_insert_id,
# hash_ordered, hash_unordered, columns, warnings, status_flags.
# Fixed size and 8-byte aligned fields after the first 8 bytes: decoding is one unpack_from.
HEADER = struct.Struct("<IBBHQqqQQQQQIHH")
HEADER_SIZE = HEADER.size  # 80
assert HEADER_V1.size == 48 and HEADER_SIZE == 80
FILE_VERSION_HEADERS = {1: HEADER_V1, 2: HEADER}


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
    # format version 2 (0 when read from a version 1 capture)
    last_insert_id: int = 0   # from the OK packet: the first auto-increment id the statement generated
    hash_ordered: int = 0     # result fingerprint: the rows in sequence (0 without a result set)
    hash_unordered: int = 0   # result fingerprint: the rows in any order
    columns: int = 0          # columns of the first result set
    warnings: int = 0         # from the final OK/EOF
    status_flags: int = 0     # server status after the command (in transaction, autocommit, ...)


def encode(rec: Record) -> bytes:
    """Python encoder, the reference for the C one in _ringbuf.pyx (used by tests)."""
    return HEADER.pack(HEADER_SIZE + len(rec.payload), rec.kind, rec.outcome, rec.err_code,
                       rec.conn_id, rec.start_ns, rec.end_ns, rec.affected_rows, rec.rows,
                       rec.last_insert_id, rec.hash_ordered, rec.hash_unordered, rec.columns,
                       rec.warnings, rec.status_flags) + bytes(rec.payload)


def decode_records(buf, base_offset: int = 0, name: str = "<buffer>",
                   header: struct.Struct = HEADER) -> tuple[list[Record], int]:
    """Decode the whole records at the start of buf; return them and the bytes consumed.

    A partial record at the end is left for the caller to complete with more data.
    base_offset and name only make error messages point at the right place; `header` is the
    record header of the file's version (FILE_VERSION_HEADERS).
    """
    out = []
    unpack_from = header.unpack_from
    size = header.size
    v1 = header is HEADER_V1
    pos = 0
    end = len(buf)
    while end - pos >= size:
        fields = unpack_from(buf, pos)
        rlen, kind, outcome = fields[0], fields[1], fields[2]
        if (rlen < size or not KIND_COMMAND <= kind <= MAX_KIND
                or outcome > (OUTCOME_UNKNOWN if v1 else MAX_OUTCOME)):
            raise TrafficFormatError(
                f"{name}: corrupt record at offset {base_offset + pos} "
                f"(length {rlen}, kind {kind}, outcome {outcome})")
        if pos + rlen > end:
            break
        payload = bytes(buf[pos + size:pos + rlen])
        if v1:
            out.append(Record(kind, fields[4], fields[5], fields[6], outcome, fields[3], fields[7], fields[8],
                              payload))
        else:
            out.append(Record(kind, fields[4], fields[5], fields[6], outcome, fields[3], fields[7], fields[8],
                              payload, fields[9], fields[10], fields[11], fields[12], fields[13], fields[14]))
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
FILE_VERSION = 2  # the record header of a file's records: FILE_VERSION_HEADERS
FLAG_LZ4 = 0x01
FLAG_AES_CTR = 0x02
# magic, file version, flags, reserved; then IV + key check when FLAG_AES_CTR is set.
FILE_HEADER = struct.Struct("<4sBBH")

META_NAME = "meta"
# traffic-<UTC yyyymmddThhmmss.mmmZ>-<seq>.<ext>; seq decides the order.
FILE_RE = re.compile(r"^traffic-(\d{8}T\d{6}\.\d{3}Z)-(\d{6,})\.(lz4|lz4\.enc|bin|bin\.enc)$")


def extension(compress: bool, encrypt: bool) -> str:
    return ("lz4" if compress else "bin") + (".enc" if encrypt else "")
