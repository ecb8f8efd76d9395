"""Capture records result fingerprints: a raw client reads every row packet a real MariaDB sends
through the proxy (text rows, a multi-statement, a CALL with two result sets, binary rows of a
prepared statement, a cursor and its fetches); each captured record's column count, row count and
hashes equal the reference definition computed over exactly those packets."""
from __future__ import annotations

import struct

import pytest

from conftest import start_proxy, stop_proxy
from fastproxy.capture.record import KIND_COMMAND
from fastproxy.scratch_db import ROOT_PASSWORD
from proxy_rawclient import RawClient, native_scramble, packet
from replay_util import Capture, records
from test_fingerprint import reference

pytestmark = pytest.mark.timeout(120)

DB = "fp_capture"
CLIENT_LONG_PASSWORD, CLIENT_CONNECT_WITH_DB, CLIENT_PROTOCOL_41 = 0x1, 0x8, 0x200
CLIENT_TRANSACTIONS, CLIENT_SECURE_CONNECTION = 0x2000, 0x8000
CLIENT_MULTI_STATEMENTS, CLIENT_MULTI_RESULTS, CLIENT_PS_MULTI_RESULTS = 0x10000, 0x20000, 0x40000
CLIENT_PLUGIN_AUTH = 0x80000
MORE_RESULTS, CURSOR_EXISTS = 0x0008, 0x0040


class RowClient(RawClient):
    """Logs in with multi-statements/multi-results (no DEPRECATE_EOF) and keeps every row payload."""

    def login_db(self, user: str, password: str, db: str) -> None:
        seq, greeting = self.read_packet()
        pos = greeting.index(b"\x00", 1) + 1
        salt = greeting[pos + 4:pos + 12]
        pos += 4 + 8 + 1 + 2 + 1 + 2 + 2 + 1 + 10
        salt += greeting[pos:pos + 12]
        caps = (CLIENT_LONG_PASSWORD | CLIENT_PROTOCOL_41 | CLIENT_TRANSACTIONS | CLIENT_SECURE_CONNECTION
                | CLIENT_PLUGIN_AUTH | CLIENT_CONNECT_WITH_DB | CLIENT_MULTI_STATEMENTS | CLIENT_MULTI_RESULTS
                | CLIENT_PS_MULTI_RESULTS)
        auth = native_scramble(password, salt)
        self.send(packet(seq + 1, struct.pack("<IIB", caps, 1 << 24, 45) + b"\x00" * 23 + user.encode() + b"\x00"
                         + bytes([len(auth)]) + auth + db.encode() + b"\x00" + b"mysql_native_password\x00"))
        seq, reply = self.read_packet()
        if reply[0] == 0xFE:
            salt = reply[reply.index(b"\x00", 1) + 1:].rstrip(b"\x00")
            self.send(packet(seq + 1, native_scramble(password, salt)))
            seq, reply = self.read_packet()
        assert reply[0] == 0, reply

    def _eof_status(self, p: bytes) -> int:
        return struct.unpack_from("<H", p, 3)[0]

    def _rows_until_eof(self) -> tuple[list[bytes], int]:
        rows = []
        while True:
            _, p = self.read_packet()
            assert p[0] != 0xFF, p
            if p[0] == 0xFE and len(p) < 9:
                return rows, self._eof_status(p)
            rows.append(p)

    def response(self, cursor: bool = False) -> list[list[bytes]]:
        """Every result set of one response (an OK part has none)."""
        sets = []
        while True:
            _, first = self.read_packet()
            assert first[0] != 0xFF, first
            if first[0] == 0x00:
                status = struct.unpack_from("<H", first, 3)[0] if first[1] < 0xFB and first[2] < 0xFB else 0
            else:
                _, status = self._rows_until_eof()  # column definitions
                if cursor and status & CURSOR_EXISTS:
                    return sets
                rows, status = self._rows_until_eof()
                sets.append(rows)
            if not status & MORE_RESULTS:
                return sets

    def command(self, payload: bytes, cursor: bool = False) -> list[list[bytes]]:
        self.send(packet(0, payload))
        return self.response(cursor)


def test_capture_records_the_fingerprints_of_the_rows_sent(mariadb, tmp_path):
    mariadb.sql(f"DROP DATABASE IF EXISTS {DB}; CREATE DATABASE {DB}; USE {DB};"
                "CREATE TABLE t (id INT PRIMARY KEY, name VARCHAR(32), note TEXT, d DATETIME(3), f DOUBLE);"
                "INSERT INTO t SELECT seq, CONCAT('name ', seq), IF(seq % 3 = 0, NULL, REPEAT('n', seq * 7)), "
                "'2024-05-01 12:00:00.125' + INTERVAL seq HOUR, seq / 7 FROM seq_1_to_40;"
                "\nDELIMITER //\nCREATE PROCEDURE two() BEGIN SELECT id FROM t WHERE id <= 3; "
                "SELECT name, f FROM t WHERE id > 38; END//\nDELIMITER ;\n")
    out = str(tmp_path / "capture")
    proxy = start_proxy([mariadb])
    expected: dict[bytes, tuple[int, int, int, list]] = {}  # payload -> (columns, rows, ...) and result sets
    try:
        with Capture(proxy, out):
            c = RowClient(proxy.port)
            c.login_db("root", ROOT_PASSWORD, DB)
            for sql, ncols in [(b"SELECT id, name, note, d, f FROM t ORDER BY id", 5),
                               (b"SELECT name FROM t WHERE id = 0", 1),
                               (b"SELECT id FROM t WHERE id < 3; UPDATE t SET f = f WHERE id = 1; SELECT 'x', NULL", 1),
                               (b"CALL two()", 1)]:
                payload = b"\x03" + sql
                expected[payload] = (ncols, c.command(payload))
            prep = b"\x16SELECT id, d, f, note FROM t WHERE id BETWEEN 5 AND 12"
            c.send(packet(0, prep))
            _, ok = c.read_packet()
            stmt_id, ncols, nparams = struct.unpack_from("<IHH", ok, 1)
            c._rows_until_eof()  # the column definitions
            execute = b"\x17" + struct.pack("<IBI", stmt_id, 0, 1)
            expected[execute] = (4, c.command(execute))
            cursor_exec = b"\x17" + struct.pack("<IBI", stmt_id, 1, 1)  # CURSOR_TYPE_READ_ONLY
            assert c.command(cursor_exec, cursor=True) == []
            fetches = []
            for _ in range(2):
                fetch = b"\x1c" + struct.pack("<II", stmt_id, 5)
                c.send(packet(0, fetch))
                rows, _ = c._rows_until_eof()
                fetches.append(rows)
            assert [len(f) for f in fetches] == [5, 3]
            c.close()
    finally:
        stop_proxy(proxy)

    recs = [r for r in records(out) if r.kind == KIND_COMMAND]
    by_payload = {r.payload: r for r in recs}
    for payload, (ncols, sets) in expected.items():
        rec = by_payload[payload]
        assert rec.rows == sum(len(s) for s in sets), payload
        assert rec.columns == ncols, payload
        assert (rec.hash_ordered, rec.hash_unordered) == reference(sets), payload
    multi = by_payload[b"\x03SELECT id FROM t WHERE id < 3; UPDATE t SET f = f WHERE id = 1; SELECT 'x', NULL"]
    assert reference(expected[multi.payload][1][:1]) != (multi.hash_ordered, multi.hash_unordered)
    cursor_rec = by_payload[b"\x17" + struct.pack("<IBI", stmt_id, 1, 1)]
    assert (cursor_rec.hash_ordered, cursor_rec.hash_unordered, cursor_rec.rows) == (0, 0, 0)
    fetch_recs = [r for r in recs if r.payload[0] == 0x1C]
    assert [(r.hash_ordered, r.hash_unordered) for r in fetch_recs] == [reference([f]) for f in fetches]
    empty = by_payload[b"\x03SELECT name FROM t WHERE id = 0"]
    assert empty.rows == 0 and empty.hash_ordered == reference([[]])[0] != 0  # an empty result set is one
    assert by_payload[b"\x03CALL two()"].rows == 3 + 2
