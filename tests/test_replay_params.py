"""fastproxy.replay.params: COM_STMT_EXECUTE parameter decoding (hand-built payloads for every type
family, hypothesis round trips, truncation -> ProtocolError) and the report rendering."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastproxy.errors import ProtocolError
from fastproxy.replay.params import FIELD_TYPE as T
from fastproxy.replay.params import LONG_DATA, decode_execute_params, format_params

U = 0x80  # unsigned flag


def lenenc(b: bytes) -> bytes:
    n = len(b)
    if n < 0xFB:
        return bytes((n,)) + b
    if n < 1 << 16:
        return b"\xfc" + n.to_bytes(2, "little") + b
    if n < 1 << 24:
        return b"\xfd" + n.to_bytes(3, "little") + b
    return b"\xfe" + n.to_bytes(8, "little") + b


def execute(params: list[tuple[int, int, bytes | None]], bound: bool = True, stmt_id: int = 1) -> bytes:
    """COM_STMT_EXECUTE with params as (type, flags, encoded value or None for NULL)."""
    out = bytearray(b"\x17" + struct.pack("<IBI", stmt_id, 0, 1))
    if params:
        bitmap = bytearray((len(params) + 7) // 8)
        for i, (_, _, v) in enumerate(params):
            if v is None:
                bitmap[i // 8] |= 1 << (i % 8)
        out += bitmap
        out.append(1 if bound else 0)
        if bound:
            for t, f, _ in params:
                out += bytes((t, f))
        for _, _, v in params:
            if v is not None:
                out += v
    return bytes(out)


def decode(params, prev_types=None, **kw):
    return decode_execute_params(execute(params, bound=prev_types is None), len(params), prev_types, **kw)


# --- every type family ----------------------------------------------------------------------

@pytest.mark.parametrize("ftype,flags,raw,expected", [
    (T.TINY, 0, b"\xff", -1),
    (T.TINY, U, b"\xff", 255),
    (T.SHORT, 0, struct.pack("<h", -300), -300),
    (T.SHORT, U, struct.pack("<H", 65535), 65535),
    (T.YEAR, 0, struct.pack("<h", 2024), 2024),
    (T.LONG, 0, struct.pack("<i", -2 ** 31), -2 ** 31),
    (T.LONG, U, struct.pack("<I", 2 ** 32 - 1), 2 ** 32 - 1),
    (T.INT24, 0, struct.pack("<i", -8388608), -8388608),
    (T.LONGLONG, 0, struct.pack("<q", -2 ** 63), -2 ** 63),
    (T.LONGLONG, U, struct.pack("<Q", 2 ** 64 - 1), 2 ** 64 - 1),
    (T.DOUBLE, 0, struct.pack("<d", 3.141592653589793), 3.141592653589793),
    (T.FLOAT, 0, struct.pack("<f", 0.1), 0.1),
    (T.FLOAT, 0, struct.pack("<f", -1.5e10), -1.5e10),
    (T.DATE, 0, b"\x04" + struct.pack("<HBB", 2024, 1, 31), "2024-01-31"),
    (T.DATE, 0, b"\x00", "0000-00-00"),
    (T.DATETIME, 0, b"\x00", "0000-00-00 00:00:00"),
    (T.DATETIME, 0, b"\x04" + struct.pack("<HBB", 2024, 2, 29), "2024-02-29 00:00:00"),
    (T.DATETIME, 0, b"\x07" + struct.pack("<HBBBBB", 2024, 2, 29, 23, 59, 58), "2024-02-29 23:59:58"),
    (T.TIMESTAMP, 0, b"\x0b" + struct.pack("<HBBBBBI", 1999, 12, 31, 1, 2, 3, 123), "1999-12-31 01:02:03.000123"),
    (T.TIME, 0, b"\x00", "00:00:00"),
    (T.TIME, 0, b"\x08" + struct.pack("<BIBBB", 0, 0, 12, 34, 56), "12:34:56"),
    (T.TIME, 0, b"\x08" + struct.pack("<BIBBB", 1, 1, 1, 0, 1), "-25:00:01"),
    (T.TIME, 0, b"\x0c" + struct.pack("<BIBBBI", 0, 0, 0, 0, 0, 500000), "00:00:00.500000"),
    (T.VARCHAR, 0, lenenc(b"abc"), "abc"),
    (T.VAR_STRING, 0, lenenc("héllo".encode()), "héllo"),
    (T.STRING, 0, lenenc(b""), ""),
    (T.STRING, 0, lenenc(b"\xff\xfe"), b"\xff\xfe"),  # not UTF-8: kept as bytes
    (T.STRING, 0, lenenc(b"x" * 300), "x" * 300),  # 0xFC length prefix
    (T.STRING, 0, lenenc(b"y" * 70000), "y" * 70000),  # 0xFD length prefix
    (T.BLOB, 0, lenenc(b"\x00\x01"), b"\x00\x01"),
    (T.TINY_BLOB, 0, lenenc(b"abc"), b"abc"),
    (T.MEDIUM_BLOB, 0, lenenc(b"abc"), b"abc"),
    (T.LONG_BLOB, 0, lenenc(b"abc"), b"abc"),
    (T.DECIMAL, 0, lenenc(b"-12.50"), "-12.50"),
    (T.NEWDECIMAL, 0, lenenc(b"99999999999999999999.99"), "99999999999999999999.99"),
    (T.JSON, 0, lenenc(b'{"a": [1]}'), '{"a": [1]}'),
    (T.BIT, 0, lenenc(b"\x05"), b"\x05"),
    (T.ENUM, 0, lenenc(b"red"), "red"),
    (T.SET, 0, lenenc(b"a,b"), "a,b"),
    (T.GEOMETRY, 0, lenenc(b"\x00\x00\x00\x00\x01"), b"\x00\x00\x00\x00\x01"),
])
def test_each_type(ftype, flags, raw, expected):
    values, types = decode([(T.LONG, 0, struct.pack("<i", 7)), (ftype, flags, raw), (T.TINY, 0, b"\x09")])
    assert values == [7, expected, 9]
    assert types[1] == ftype | (flags << 8)
    if isinstance(expected, float):
        assert type(values[1]) is float


def test_no_params():
    payload = b"\x17" + struct.pack("<IBI", 5, 0, 1)
    assert decode_execute_params(payload, 0, None) == ([], [])


def test_null_bitmap_and_null_type():
    params = [(T.LONG, 0, None), (T.NULL, 0, b""), (T.VARCHAR, 0, lenenc(b"v"))] + \
             [(T.TINY, 0, None)] * 6 + [(T.TINY, 0, b"\x01")]  # 10 params: 2-byte bitmap
    values, types = decode(params)
    assert values == [None, None, "v"] + [None] * 6 + [1]
    assert types[1] == T.NULL


def test_prev_types_when_not_rebound():
    params = [(T.LONGLONG, U, struct.pack("<Q", 2 ** 63)), (T.STRING, 0, lenenc(b"s"))]
    values, types = decode(params)
    assert values == [2 ** 63, "s"]
    # second execution: types not sent, taken from the first (unsigned flag kept)
    values2, types2 = decode_execute_params(execute(params, bound=False), 2, types)
    assert values2 == values and types2 == types


def test_no_types_anywhere():
    with pytest.raises(ProtocolError, match="previous execution"):
        decode_execute_params(execute([(T.TINY, 0, b"\x01")], bound=False), 1, None)
    with pytest.raises(ProtocolError, match="known parameter types"):
        decode_execute_params(execute([(T.TINY, 0, b"\x01")], bound=False), 1, [T.TINY, T.TINY])


def test_bad_bound_flag_and_command():
    p = bytearray(execute([(T.TINY, 0, b"\x01")]))
    p[11] = 2
    with pytest.raises(ProtocolError, match="new_params_bound_flag"):
        decode_execute_params(bytes(p), 1, None)
    with pytest.raises(ProtocolError, match="COM_STMT_EXECUTE"):
        decode_execute_params(b"\x03SELECT 1", 0, None)
    with pytest.raises(ProtocolError):
        decode_execute_params(b"", 0, None)


def test_bad_temporal_length_and_lenenc_prefix():
    with pytest.raises(ProtocolError, match="bad length 5"):
        decode([(T.DATETIME, 0, b"\x05" + bytes(5))])
    with pytest.raises(ProtocolError, match="bad length 4"):
        decode([(T.TIME, 0, b"\x04" + bytes(4))])
    with pytest.raises(ProtocolError, match="length-encoded"):
        decode([(T.STRING, 0, b"\xff")])


def test_long_data_params():
    # parameter 1 was sent with COM_STMT_SEND_LONG_DATA: no value in the payload
    payload = execute([(T.LONG, 0, struct.pack("<i", 1)), (T.BLOB, 0, b""), (T.LONG, 0, struct.pack("<i", 2))])
    values, _ = decode_execute_params(payload, 3, None, long_data={1})
    assert values == [1, LONG_DATA, 2]
    assert format_params(values) == "[1, <long data>, 2]"


def test_memoryview_payload():
    payload = execute([(T.VARCHAR, 0, lenenc(b"mv"))])
    assert decode_execute_params(memoryview(payload), 1, None)[0] == ["mv"]


# --- truncation: every prefix is a ProtocolError ---------------------------------------------

ALL_FAMILIES = [
    (T.TINY, 0, b"\x01"), (T.SHORT, 0, b"\x01\x00"), (T.LONG, U, b"\x01\x00\x00\x00"),
    (T.LONGLONG, 0, bytes(8)), (T.FLOAT, 0, bytes(4)), (T.DOUBLE, 0, bytes(8)),
    (T.DATETIME, 0, b"\x0b" + struct.pack("<HBBBBBI", 2020, 1, 2, 3, 4, 5, 6)),
    (T.DATE, 0, b"\x04" + struct.pack("<HBB", 2020, 1, 2)),
    (T.TIME, 0, b"\x0c" + struct.pack("<BIBBBI", 0, 1, 2, 3, 4, 5)),
    (T.VAR_STRING, 0, lenenc(b"z" * 300)), (T.BLOB, 0, lenenc(b"\x00" * 10)), (T.NULL, 0, b""),
    (T.LONG, 0, None),
]


def test_every_truncation_is_protocol_error():
    payload = execute(ALL_FAMILIES)
    values, _ = decode_execute_params(payload, len(ALL_FAMILIES), None)
    assert len(values) == len(ALL_FAMILIES)
    for cut in range(len(payload)):
        with pytest.raises(ProtocolError):
            decode_execute_params(payload[:cut], len(ALL_FAMILIES), None)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80), st.integers(0, 20),
       st.one_of(st.none(), st.lists(st.integers(0, 0xFFFF), min_size=0, max_size=20)))
def test_garbage_never_crashes(tail, num_params, prev):
    payload = b"\x17" + tail
    try:
        values, types = decode_execute_params(payload, num_params, prev)
    except ProtocolError:
        return
    assert len(values) == len(types) == num_params
    format_params(values)


# --- hypothesis round trips ------------------------------------------------------------------

int_param = st.one_of(
    st.integers(-2 ** 7, 2 ** 7 - 1).map(lambda v: ((T.TINY, 0, struct.pack("<b", v)), v)),
    st.integers(0, 2 ** 8 - 1).map(lambda v: ((T.TINY, U, struct.pack("<B", v)), v)),
    st.integers(-2 ** 15, 2 ** 15 - 1).map(lambda v: ((T.SHORT, 0, struct.pack("<h", v)), v)),
    st.integers(-2 ** 31, 2 ** 31 - 1).map(lambda v: ((T.LONG, 0, struct.pack("<i", v)), v)),
    st.integers(0, 2 ** 32 - 1).map(lambda v: ((T.LONG, U, struct.pack("<I", v)), v)),
    st.integers(-2 ** 63, 2 ** 63 - 1).map(lambda v: ((T.LONGLONG, 0, struct.pack("<q", v)), v)),
    st.integers(0, 2 ** 64 - 1).map(lambda v: ((T.LONGLONG, U, struct.pack("<Q", v)), v)),
)
str_param = st.text(max_size=400).map(lambda s: ((T.VAR_STRING, 0, lenenc(s.encode())), s))
blob_param = st.binary(max_size=400).map(lambda b: ((T.BLOB, 0, lenenc(b)), b))
double_param = st.floats(allow_nan=False).map(lambda f: ((T.DOUBLE, 0, struct.pack("<d", f)), f))
null_param = st.sampled_from([T.LONG, T.STRING, T.DATETIME]).map(lambda t: ((t, 0, None), None))
any_param = st.one_of(int_param, str_param, blob_param, double_param, null_param)


@settings(max_examples=300, deadline=None)
@given(st.lists(any_param, max_size=40))
def test_round_trip(params):
    wire = [p for p, _ in params]
    expected = [v for _, v in params]
    payload = execute(wire)
    values, types = decode_execute_params(payload, len(wire), None)
    assert values == expected
    assert types == [t | (f << 8) for t, f, _ in wire]
    # the same values again without rebinding
    again, _ = decode_execute_params(execute(wire, bound=False), len(wire), types)
    assert again == expected
    rendered = format_params(values)
    assert rendered.startswith("[") and rendered.endswith("]")


# --- format_params ---------------------------------------------------------------------------

def test_format_basic():
    assert format_params([1, "abc", None]) == "[1, 'abc', NULL]"
    assert format_params([]) == "[]"
    assert format_params([1.5, -2, b"\x00\xff", "2024-01-31 12:00:00"]) == \
        "[1.5, -2, 0x00ff, '2024-01-31 12:00:00']"


def test_format_escaping_and_truncation():
    assert format_params(["it's"]) == r"['it\'s']"
    assert format_params(["a\nb"]) == r"['a\nb']"
    long = format_params(["x" * 200])
    assert long == "['" + "x" * 64 + "...']"
    blob = format_params([bytes(range(100))])
    assert blob == "[0x" + bytes(range(32)).hex() + "...]"
    many = format_params(list(range(60)))
    assert many.endswith(", 49, ... (10 more)]")
    assert format_params(["abcdef"], max_len=3) == "['abc...']"


# --- the real server reads the same values from the same bytes -----------------------------------

def test_server_agrees(mariadb):
    """Send a hand-built COM_STMT_EXECUTE to a real MariaDB (INSERT), read the row back with the
    CLI, and compare with what decode_execute_params makes of the same payload."""
    import socket

    from fastproxy._packet import PacketFramer, build_packet
    from fastproxy.constants import CLIENT
    from fastproxy.replay import auth
    from fastproxy.scratch_db import ROOT_PASSWORD

    mariadb.sql("CREATE DATABASE IF NOT EXISTS params_t; CREATE OR REPLACE TABLE params_t.t ("
                "a TINYINT UNSIGNED, b BIGINT, c DOUBLE, d DATE, e DATETIME(6), f TIME(6), "
                "g VARCHAR(50) CHARACTER SET utf8mb4, h BLOB, i DECIMAL(10,2), j INT, k YEAR)")
    params = [
        (T.TINY, U, b"\xfa"), (T.LONGLONG, 0, struct.pack("<q", -2 ** 62)), (T.DOUBLE, 0, struct.pack("<d", 2.5)),
        (T.DATE, 0, b"\x04" + struct.pack("<HBB", 2024, 2, 29)),
        (T.DATETIME, 0, b"\x0b" + struct.pack("<HBBBBBI", 1999, 12, 31, 1, 2, 3, 123)),
        (T.TIME, 0, b"\x0c" + struct.pack("<BIBBBI", 1, 1, 1, 0, 1, 5)),
        (T.VAR_STRING, 0, lenenc("héllo 'x'".encode())), (T.BLOB, 0, lenenc(b"\x00\xff")),
        (T.NEWDECIMAL, 0, lenenc(b"-12.50")), (T.LONG, 0, None), (T.SHORT, 0, struct.pack("<h", 2024)),
    ]
    caps = (CLIENT.LONG_PASSWORD | CLIENT.PROTOCOL_41 | CLIENT.SECURE_CONNECTION | CLIENT.PLUGIN_AUTH
            | CLIENT.PLUGIN_AUTH_LENENC_CLIENT_DATA)
    sock = socket.create_connection((mariadb.host, mariadb.port), timeout=10)
    framer = PacketFramer()

    def read() -> bytes:
        while (pkt := framer.next_packet()) is None:
            framer.feed(sock.recv(65536))
        return bytes(pkt[1])

    try:
        greeting = read()
        data = auth.native_password(ROOT_PASSWORD.encode(), auth.greeting_nonce(greeting))
        sock.sendall(build_packet(1, struct.pack("<IIB", caps, 1 << 24, 45) + bytes(23) + b"root\0"
                                  + bytes((len(data),)) + data + b"mysql_native_password\0"))
        assert read()[0] == 0x00
        sock.sendall(build_packet(0, b"\x16INSERT INTO params_t.t VALUES (?,?,?,?,?,?,?,?,?,?,?)"))
        ok = read()
        assert ok[0] == 0x00, ok
        stmt_id, _, num_params = struct.unpack_from("<IHH", ok, 1)
        assert num_params == len(params)
        while True:  # parameter definitions, then EOF
            pkt = read()
            if pkt[0] == 0xFE and len(pkt) < 9:
                break
        payload = execute(params, stmt_id=stmt_id)
        sock.sendall(build_packet(0, payload))
        res = read()
        assert res[0] == 0x00, res
    finally:
        sock.close()
    values, _ = decode_execute_params(payload, num_params, None)
    row = mariadb.sql("SELECT a, b, c, d, e, f, g, HEX(h), i, IFNULL(j, 'NULL'), k FROM params_t.t").rstrip("\n").split("\t")
    mariadb.sql("DROP DATABASE params_t")
    assert values == [250, -2 ** 62, 2.5, "2024-02-29", "1999-12-31 01:02:03.000123", "-25:00:01.000005",
                      "héllo 'x'", b"\x00\xff", "-12.50", None, 2024]
    assert row == ["250", str(-2 ** 62), "2.5", "2024-02-29", "1999-12-31 01:02:03.000123", "-25:00:01.000005",
                   "héllo 'x'", "00FF", "-12.50", "NULL", "2024"]
