"""Decode the parameter values of a COM_STMT_EXECUTE payload, for replay reports (failure samples).

Layout (binary protocol, no CLIENT_QUERY_ATTRIBUTES -- the proxy strips that capability):

    0x17, stmt_id u32, flags u8, iteration_count u32,
    if num_params > 0:
        NULL bitmap ((num_params + 7) // 8 bytes; bit i set -> parameter i is NULL, no value),
        new_params_bound_flag u8,
        if 1: num_params x (type u8, flags u8; 0x80 = unsigned),
        the values of the non-NULL parameters, in order, in the binary encoding of their type.

Spec: https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_com_stmt_execute.html and
https://mariadb.com/kb/en/com_stmt_execute/

Types are reported as ``type | flags << 8`` (the two wire bytes read as one little-endian u16), so
the unsigned flag (``0x8000``) is kept: the caller stores the list per statement and passes it as
`prev_types` to the executions that do not rebind (new_params_bound_flag = 0).

Values: ints, floats, str (text types, decoded as UTF-8 when valid), bytes (blobs, BIT, GEOMETRY,
or text that is not UTF-8), None (NULL), and for temporal types strings like
``'2024-01-31'``, ``'2024-01-31 12:00:00.000123'``, ``'-25:00:01'``.
"""
from __future__ import annotations

import struct
from collections.abc import Container, Sequence

from fastproxy.errors import ProtocolError

COM_STMT_EXECUTE = 0x17
UNSIGNED_FLAG = 0x80


class FIELD_TYPE:
    DECIMAL = 0
    TINY = 1
    SHORT = 2
    LONG = 3
    FLOAT = 4
    DOUBLE = 5
    NULL = 6
    TIMESTAMP = 7
    LONGLONG = 8
    INT24 = 9
    DATE = 10
    TIME = 11
    DATETIME = 12
    YEAR = 13
    NEWDATE = 14
    VARCHAR = 15
    BIT = 16
    JSON = 245
    NEWDECIMAL = 246
    ENUM = 247
    SET = 248
    TINY_BLOB = 249
    MEDIUM_BLOB = 250
    LONG_BLOB = 251
    BLOB = 252
    VAR_STRING = 253
    STRING = 254
    GEOMETRY = 255


_INT_FORMATS = {
    FIELD_TYPE.TINY: ("<b", "<B", 1),
    FIELD_TYPE.SHORT: ("<h", "<H", 2),
    FIELD_TYPE.YEAR: ("<h", "<H", 2),
    FIELD_TYPE.LONG: ("<i", "<I", 4),
    FIELD_TYPE.INT24: ("<i", "<I", 4),
    FIELD_TYPE.LONGLONG: ("<q", "<Q", 8),
}
_BINARY_TYPES = frozenset((FIELD_TYPE.TINY_BLOB, FIELD_TYPE.MEDIUM_BLOB, FIELD_TYPE.LONG_BLOB,
                           FIELD_TYPE.BLOB, FIELD_TYPE.BIT, FIELD_TYPE.GEOMETRY))
_DATE_TYPES = frozenset((FIELD_TYPE.DATE, FIELD_TYPE.DATETIME, FIELD_TYPE.TIMESTAMP))


class _LongData:
    """Marker for a parameter whose value was sent with COM_STMT_SEND_LONG_DATA (not in the payload)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<long data>"


LONG_DATA = _LongData()


def _float32(raw: bytes) -> float:
    """A FLOAT parameter as the shortest decimal that reads back to the same float32."""
    v = struct.unpack("<f", raw)[0]
    if v != v or v in (float("inf"), float("-inf")):
        return v
    for digits in range(6, 10):
        short = float(f"{v:.{digits}g}")
        if struct.pack("<f", short) == raw:
            return short
    return v


def _date_str(raw: bytes, with_time: bool) -> str:
    n = len(raw)
    year = month = day = hour = minute = second = micro = 0
    if n >= 4:
        year, month, day = struct.unpack_from("<HBB", raw, 0)
    if n >= 7:
        hour, minute, second = raw[4], raw[5], raw[6]
    if n >= 11:
        micro = struct.unpack_from("<I", raw, 7)[0]
    out = f"{year:04d}-{month:02d}-{day:02d}"
    if with_time:
        out += f" {hour:02d}:{minute:02d}:{second:02d}"
        if micro:
            out += f".{micro:06d}"
    return out


def _time_str(raw: bytes) -> str:
    if not raw:
        return "00:00:00"
    neg, days, hour, minute, second = struct.unpack_from("<BIBBB", raw, 0)
    micro = struct.unpack_from("<I", raw, 8)[0] if len(raw) >= 12 else 0
    out = f"{'-' if neg else ''}{days * 24 + hour:02d}:{minute:02d}:{second:02d}"
    if micro:
        out += f".{micro:06d}"
    return out


def decode_execute_params(payload: bytes, num_params: int, prev_types: list[int] | None,
                          *, long_data: Container[int] = ()) -> tuple[list, list[int]]:
    """(values, types) of the parameters of a COM_STMT_EXECUTE `payload` (command byte included).

    `num_params`: from the statement's COM_STMT_PREPARE response. `prev_types`: the types of the
    statement's previous execution (used when the payload does not rebind them). `long_data`:
    indices of parameters sent with COM_STMT_SEND_LONG_DATA since the last execute (their value is
    not in the payload; they decode as ``LONG_DATA``).

    Malformed or truncated payloads raise ProtocolError (never IndexError / struct.error).
    """
    buf = bytes(payload)
    if not buf or buf[0] != COM_STMT_EXECUTE:
        raise ProtocolError(f"not a COM_STMT_EXECUTE payload (first byte {buf[:1]!r})")
    if num_params < 0:
        raise ProtocolError(f"negative parameter count {num_params}")
    pos = 10  # cmd, stmt_id, flags, iteration_count
    if len(buf) < pos:
        raise ProtocolError(f"COM_STMT_EXECUTE truncated in its header ({len(buf)} of 10 bytes)")
    if num_params == 0:
        return [], []
    nbytes = (num_params + 7) // 8
    if len(buf) < pos + nbytes + 1:
        raise ProtocolError(f"COM_STMT_EXECUTE truncated in its NULL bitmap / bound flag at offset {pos}")
    null_bitmap = buf[pos:pos + nbytes]
    pos += nbytes
    bound = buf[pos]
    pos += 1
    if bound == 1:
        end = pos + 2 * num_params
        if len(buf) < end:
            raise ProtocolError(f"COM_STMT_EXECUTE truncated in its parameter types at offset {len(buf)}")
        types = list(struct.unpack_from(f"<{num_params}H", buf, pos))
        pos = end
    elif bound == 0:
        if prev_types is None:
            raise ProtocolError("COM_STMT_EXECUTE does not bind parameter types and none are known "
                                "from a previous execution of the statement")
        if len(prev_types) != num_params:
            raise ProtocolError(f"{len(prev_types)} known parameter types for {num_params} parameters")
        types = list(prev_types)
    else:
        raise ProtocolError(f"bad new_params_bound_flag {bound} at offset {pos - 1}")

    values: list = []
    n = len(buf)
    for i, t in enumerate(types):
        if null_bitmap[i >> 3] & (1 << (i & 7)):
            values.append(None)
            continue
        ftype = t & 0xFF
        if ftype == FIELD_TYPE.NULL:
            values.append(None)
            continue
        if i in long_data:
            values.append(LONG_DATA)
            continue
        start = pos
        try:
            if ftype in _INT_FORMATS:
                signed_fmt, unsigned_fmt, size = _INT_FORMATS[ftype]
                fmt = unsigned_fmt if t & (UNSIGNED_FLAG << 8) else signed_fmt
                if pos + size > n:
                    raise _Short
                values.append(struct.unpack_from(fmt, buf, pos)[0])
                pos += size
            elif ftype == FIELD_TYPE.DOUBLE:
                if pos + 8 > n:
                    raise _Short
                values.append(struct.unpack_from("<d", buf, pos)[0])
                pos += 8
            elif ftype == FIELD_TYPE.FLOAT:
                if pos + 4 > n:
                    raise _Short
                values.append(_float32(buf[pos:pos + 4]))
                pos += 4
            elif ftype in _DATE_TYPES or ftype == FIELD_TYPE.TIME:
                if pos >= n:
                    raise _Short
                length = buf[pos]
                allowed = (0, 8, 12) if ftype == FIELD_TYPE.TIME else (0, 4, 7, 11)
                if length not in allowed:
                    raise ProtocolError(f"parameter {i}: bad length {length} for temporal type {ftype} "
                                        f"at offset {pos}")
                raw = buf[pos + 1:pos + 1 + length]
                if len(raw) < length:
                    raise _Short
                pos += 1 + length
                if ftype == FIELD_TYPE.TIME:
                    values.append(_time_str(raw))
                else:
                    values.append(_date_str(raw, with_time=ftype != FIELD_TYPE.DATE))
            else:
                length, pos = _read_lenenc(buf, pos)
                if pos + length > n:
                    raise _Short
                raw = buf[pos:pos + length]
                pos += length
                if ftype in _BINARY_TYPES:
                    values.append(raw)
                else:
                    try:
                        values.append(raw.decode("utf-8"))
                    except UnicodeDecodeError:
                        values.append(raw)
        except _Short:
            raise ProtocolError(f"COM_STMT_EXECUTE truncated in parameter {i} (type {ftype}) "
                                f"at offset {start} of {n}") from None
    return values, types


class _Short(Exception):
    pass


def _read_lenenc(buf: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(buf):
        raise _Short
    first = buf[pos]
    if first < 0xFB:
        return first, pos + 1
    size = {0xFC: 2, 0xFD: 3, 0xFE: 8}.get(first)
    if size is None:
        raise ProtocolError(f"bad length-encoded integer prefix {first:#x} at offset {pos}")
    if pos + 1 + size > len(buf):
        raise _Short
    return int.from_bytes(buf[pos + 1:pos + 1 + size], "little"), pos + 1 + size


# --- rendering for reports -------------------------------------------------------------------

def _render(v, max_len: int) -> str:
    if v is None:
        return "NULL"
    if v is LONG_DATA:
        return "<long data>"
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (bytes, bytearray, memoryview)):
        b = bytes(v)
        half = max(1, max_len // 2)
        return "0x" + b[:half].hex() + ("..." if len(b) > half else "")
    s = str(v)
    cut = len(s) > max_len
    s = s[:max_len].replace("\\", "\\\\").replace("'", "\\'")
    s = "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)
    return "'" + s + ("...'" if cut else "'")


def format_params(values: Sequence, *, max_len: int = 64, max_items: int = 50) -> str:
    """A short SQL-ish rendering for report samples: ``[1, 'abc', NULL, 0x00ff]``. Strings are
    quoted (``\\'`` escaped) and cut to `max_len` characters, bytes shown as hex of at most
    `max_len` hex digits, at most `max_items` values (then ``... (N more)``)."""
    parts = [_render(v, max_len) for v in list(values[:max_items])]
    if len(values) > max_items:
        parts.append(f"... ({len(values) - max_items} more)")
    return "[" + ", ".join(parts) + "]"
