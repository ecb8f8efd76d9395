"""The engine's per-command chain in C (fastproxy/replay/_engine.pyx) replays as its Python reference
does: the same capture, replayed on a real server with the fast path on and off (then every command
goes through Replayer._handle_result / _fire / _send), gives the same counts, the same failures and
the same rows. The capture mixes what the fast path takes (queries and executes that succeed) with
what it leaves to Python (prepares, errors, writes that change nothing here, transactions, pings)."""
from __future__ import annotations

import random
import struct

import pytest
import uvloop

from fastproxy.capture.record import OUTCOME_ERR, OUTCOME_OK
from fastproxy.constants import SERVER_STATUS
from fastproxy.replay.engine import ReplayOptions, Replayer
from fastproxy.scratch_db import ROOT_PASSWORD
from replay_util import write_capture as write_capture_by_hand

MS = 1_000_000
T0 = 1_700_000_000_000_000_000
AUTOCOMMIT = SERVER_STATUS.AUTOCOMMIT
IN_TXN = AUTOCOMMIT | SERVER_STATUS.IN_TRANS
# what a replay counts that does not depend on how fast the server answered
COUNTS = ("read", "replayed", "filtered", "failed", "same_errors", "fixed", "skipped", "other_errors", "connections",
          "reconnects", "backend_lost", "captured_ns", "causal_released", "pinned_time", "pinned_insert_id",
          "txn_retries", "txn_retried_ok", "txn_aborted", "txn_skipped", "prod_lock_errors", "sent_again",
          "sent_again_timed_out")


def execute(stmt_id: int, value: int, bind_types: bool) -> bytes:
    """COM_STMT_EXECUTE of a statement with one INT parameter."""
    head = b"\x17" + struct.pack("<IBI", stmt_id, 0, 1) + b"\x00"  # no cursor, 1 iteration, null bitmap
    return head + (b"\x01\x03\x00" if bind_types else b"\x00") + struct.pack("<i", value)


def commands() -> list[tuple]:
    """(conn, outcome, err, affected, payload, status) in capture order."""
    q = b"\x03"
    out = []
    for i in range(1, 30):  # the common case: autocommit writes and reads, text and prepared
        out.append((1, OUTCOME_OK, 0, 1, q + b"INSERT INTO t (id, v) VALUES (%d, 'a')" % i, AUTOCOMMIT))
        out.append((2, OUTCOME_OK, 0, 0, q + b"SELECT v FROM t WHERE id = %d" % i, AUTOCOMMIT))
    out.append((2, OUTCOME_OK, 0, 5, b"\x16SELECT v FROM t WHERE id = ?", AUTOCOMMIT))  # prepare: statement 5
    out += [(2, OUTCOME_OK, 0, 0, execute(5, i, i == 1), AUTOCOMMIT) for i in range(1, 20)]
    # each connection writes its own rows: the same end state in any order across connections
    out += [(3, OUTCOME_OK, 0, 1, q + b"INSERT INTO t (id, v) VALUES (%d, 'b')" % i, AUTOCOMMIT) for i in range(100, 110)]
    out.append((3, OUTCOME_OK, 0, 5, b"\x16UPDATE t SET v = 'p' WHERE id = ?", AUTOCOMMIT))  # statement 5 of conn 3
    out += [(3, OUTCOME_OK, 0, 1, execute(5, i, i == 100), AUTOCOMMIT) for i in range(100, 110)]
    out += [(1, OUTCOME_OK, 0, 0, q + b"BEGIN", IN_TXN),  # a transaction
            (1, OUTCOME_OK, 0, 1, q + b"UPDATE t SET v = 'x' WHERE id = 1", IN_TXN),
            (1, OUTCOME_OK, 0, 0, q + b"SELECT v FROM t WHERE id = 1", IN_TXN),
            (1, OUTCOME_OK, 0, 0, q + b"COMMIT", AUTOCOMMIT),
            (2, OUTCOME_ERR, 1146, 0, q + b"SELECT * FROM nosuch", AUTOCOMMIT),  # failed the same
            (2, OUTCOME_OK, 0, 1, q + b"INSERT INTO t (id, v) VALUES (200, 'c')", AUTOCOMMIT),
            (2, OUTCOME_OK, 0, 1, q + b"INSERT INTO t (id, v) VALUES (200, 'dup')", AUTOCOMMIT),  # a new failure
            (2, OUTCOME_ERR, 1146, 0, q + b"SELECT * FROM t", AUTOCOMMIT),  # fixed on replay
            (3, OUTCOME_OK, 0, 1, q + b"UPDATE t SET v = 'y' WHERE id = 99", AUTOCOMMIT),  # changes nothing here
            (3, OUTCOME_OK, 0, 0, b"\x0e", AUTOCOMMIT),  # COM_PING
            (3, OUTCOME_OK, 0, 0, q + b"USE eng2", AUTOCOMMIT),
            (3, OUTCOME_OK, 0, 1, q + b"INSERT INTO u (id) VALUES (1)", AUTOCOMMIT),
            (3, OUTCOME_OK, 0, 0, q + b"SELECT COUNT(*) FROM u", AUTOCOMMIT)]
    out += [(c, OUTCOME_OK, 0, 0, b"\x01", AUTOCOMMIT) for c in (1, 2, 3)]  # COM_QUIT
    return out


def write_capture(path: str) -> None:
    write_capture_by_hand(path, "eng", (1, 2, 3), (
        ((conn, T0 + (i + 1) * MS, T0 + (i + 1) * MS + MS // 2, outcome, err, affected, 0, payload),
         {"status_flags": status})
        for i, (conn, outcome, err, affected, payload, status) in enumerate(commands())), T0)


def replay(db, path: str, order: str, fast: bool) -> tuple[dict, list, str]:
    db.sql("DROP DATABASE IF EXISTS eng; DROP DATABASE IF EXISTS eng2; CREATE DATABASE eng; CREATE DATABASE eng2; "
           "CREATE TABLE eng.t (id INT PRIMARY KEY, v VARCHAR(8)); CREATE TABLE eng2.u (id INT PRIMARY KEY)")
    engine = Replayer(path, ReplayOptions(host=db.host, port=db.port, username="root", password=ROOT_PASSWORD, speed=0,
                                          order=order))
    engine.FAST_PATH = fast
    stats = uvloop.run(engine.run())
    failures = sorted((f.cmd_type, f.sample_stmt, f.sample_err_code, f.sample_conn_id, f.count)
                      for f in engine.report.failures.values())
    others = sorted((e.err_type, e.count) for e in engine.report.other_errors.values())
    rows = db.sql("SELECT id, v FROM eng.t ORDER BY id; SELECT id FROM eng2.u")
    return {k: getattr(stats, k) for k in COUNTS}, failures + others, rows


@pytest.mark.parametrize("order", ["causal", "connection"])
def test_the_c_chain_replays_as_its_python_reference(mariadb_test, tmp_path, order):
    path = str(tmp_path / "cap")
    write_capture(path)
    reference = replay(mariadb_test, path, order, fast=False)
    fast = replay(mariadb_test, path, order, fast=True)
    assert fast == reference
    counts, failures, rows = fast
    assert counts["failed"] == 1 and counts["same_errors"] == 1 and counts["fixed"] == 1 and counts["skipped"] == 0
    assert counts["replayed"] == len(commands())
    assert rows.split()[:2] == ["1", "x"]


def test_statement_ids_are_read_and_replaced_as_the_slicing_reference_does():
    from fastproxy._packet import stmt_id_of, with_stmt_id
    rnd = random.Random(5)
    for n in range(12):  # shorter than a statement command's head included (a malformed capture)
        for _ in range(100):
            payload = b"\x17" + rnd.randbytes(n)
            new_id = rnd.randrange(2**32)
            assert stmt_id_of(payload) == int.from_bytes(payload[1:5], "little")
            assert with_stmt_id(payload, new_id) == payload[:1] + new_id.to_bytes(4, "little") + payload[5:]


@pytest.mark.parametrize("fast", [True, False])
def test_a_command_of_no_bytes_is_said_and_skipped_and_the_replay_goes_on(mariadb_test, tmp_path, fast):
    """A zero-length command in the input (a client's empty packet, a damaged file) used to stop the
    replay's reader ("index out of range"), losing every record after it."""
    path = str(tmp_path / "cap")
    q = b"\x03"
    write_capture_by_hand(path, "eng", (1, 2), (
        ((conn, T0 + i * MS, T0 + i * MS + MS // 2, OUTCOME_OK, 0, affected, 0, payload), {"status_flags": AUTOCOMMIT})
        for i, (conn, affected, payload) in enumerate([
            (1, 1, q + b"INSERT INTO t (id, v) VALUES (1, 'a')"), (2, 0, b""),
            (1, 1, q + b"INSERT INTO t (id, v) VALUES (2, 'b')"), (2, 1, q + b"INSERT INTO t (id, v) VALUES (3, 'c')"),
            (1, 0, b"")], 1)), T0)
    mariadb_test.sql("DROP DATABASE IF EXISTS eng; CREATE DATABASE eng; CREATE TABLE eng.t (id INT PRIMARY KEY, v CHAR(1))")
    engine = Replayer(path, ReplayOptions(host=mariadb_test.host, port=mariadb_test.port, username="root",
                                          password=ROOT_PASSWORD, speed=0))
    engine.FAST_PATH = fast
    stats = uvloop.run(engine.run())
    assert (stats.read, stats.replayed, stats.skipped) == (5, 3, 2)
    assert {e.err_type: e.count for e in engine.report.other_errors.values()} == {"empty command": 2}
    assert mariadb_test.sql("SELECT GROUP_CONCAT(v ORDER BY id) FROM eng.t").split()[-1] == "a,b,c"


def test_the_commands_read_before_a_damaged_file_are_replayed_then_the_damage_is_said(mariadb_test, tmp_path):
    """A rotated capture whose second file is damaged: every command of the first is replayed (they
    were read in the same batch as the error; the reader used to drop that whole batch)."""
    import glob
    import os

    path = str(tmp_path / "cap")
    write_capture_by_hand(path, "eng", (1,), (
        ((1, T0 + i * MS, T0 + i * MS + MS // 2, OUTCOME_OK, 0, 1, 0,
          b"\x03INSERT INTO t (id, v) VALUES (%d, 'a')" % i), {"status_flags": AUTOCOMMIT})
        for i in range(1, 6)), T0)
    (first,) = glob.glob(os.path.join(path, "traffic-*"))
    with open(first.replace("000001", "000002"), "wb") as f:
        f.write(b"not a traffic file at all")
    mariadb_test.sql("DROP DATABASE IF EXISTS eng; CREATE DATABASE eng; "
                     "CREATE TABLE eng.t (id INT PRIMARY KEY, v VARCHAR(8))")
    engine = Replayer(path, ReplayOptions(host=mariadb_test.host, port=mariadb_test.port, username="root",
                                          password=ROOT_PASSWORD, speed=0))
    stats = uvloop.run(engine.run())
    assert stats.replayed == 5
    assert mariadb_test.sql("SELECT GROUP_CONCAT(id ORDER BY id) FROM eng.t").strip() == "1,2,3,4,5"
    others = {e.err_type: e for e in engine.report.other_errors.values()}
    assert "read error" in others and "bad magic" in others["read error"].sample_err_msg


def test_a_statement_command_shorter_than_its_head_is_padded_when_remapped(tmp_path):
    """A damaged capture's COM_STMT_RESET of two bytes goes out with its 5-byte head whether the
    replay's statement id differs or not (an equal id once skipped the rewrite, and the padding)."""
    path = str(tmp_path / "cap")
    write_capture_by_hand(path, "eng", (1,), (), T0)
    engine = Replayer(path, ReplayOptions(host="127.0.0.1", port=1, username="root", password="", speed=0))
    conn = engine._conn(1)
    assert engine._remap(conn, 1, 1, b"\x1a\x01") == b"\x1a\x01\x00\x00\x00"
    assert engine._remap(conn, 1, 2, b"\x1a\x01") == b"\x1a\x02\x00\x00\x00"
    full = b"\x1a\x01\x00\x00\x00"
    assert engine._remap(conn, 1, 1, full) is full  # the same id: sent as captured, no copy


_SQL_PIECES = ["USE db2", "use `x`", "  USE d", "/* c */ USE d", "/*!40101 USE d */", "-- c\nUSE d", "# c\nUSE d",
               "SELECT 1", "select 'a;b'", "PREPARE s FROM 'SELECT 1'", "DEALLOCATE PREPARE s", "drop table t",
               "CREATE TABLE t (a INT)", "UPDATE t SET a = 1", "DELETE FROM t", "CALL p()", "COMMIT", "ue", "u",
               "", ";", "SELECT 1; USE d", "\tuse d", "Use d", "DO 1"]


@pytest.mark.parametrize("multi", [True, False])
def test_the_engines_database_pre_check_never_hides_what_the_scanner_would_find(multi):
    """_engine.pyx skips Replayer._track_database (a Python call per text query) only where
    sqltext.worth_scanning says False."""
    from fastproxy.replay._engine import may_change_database
    from fastproxy.sqltext import worth_scanning

    rnd = random.Random(3)
    payloads = [b"\x03" + p.encode() for p in _SQL_PIECES]
    payloads += [b"\x03" + "; ".join(rnd.sample(_SQL_PIECES, 2)).encode() for _ in range(300)]
    payloads += [b"\x03" + bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 8))) for _ in range(3000)]
    skipped = 0
    for payload in payloads:
        if not may_change_database(payload):
            assert not worth_scanning(payload, multi), payload
            skipped += 1
    assert skipped > len(payloads) // 3  # it does skip the common query
    assert not may_change_database(b"\x03SELECT c FROM sbtest1 WHERE id=5")
