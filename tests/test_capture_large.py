"""Records larger than the capture ring buffer (a 34 MiB INSERT of a BLOB, three protocol packets, into
a 1 MiB ring) are captured through its side path, in sequence; only when
capture.large-record-buffer-size would be exceeded does the capture stop, saying which command on
which connection could not be captured.
"""
from __future__ import annotations

import hashlib
import random

import MySQLdb
import pytest

from capture_util import cancel_capture, last_capture, read_capture, start_capture, wait_for
from conftest import connect_kwargs
from fastproxy.capture.record import KIND_COMMAND
from replay_util import replay_inprocess

pytestmark = pytest.mark.timeout(300)

MiB = 1 << 20
BLOB_MIB = 34  # more than two full 16 MiB packets: the statement arrives in three


@pytest.fixture
def big_packets(mariadb, mariadb_test):
    """Both servers accept 256 MiB statements (new connections see the new global value)."""
    saved = [(db, db.sql("SELECT @@global.max_allowed_packet").strip()) for db in (mariadb, mariadb_test)]
    for db, _ in saved:
        db.sql(f"SET GLOBAL max_allowed_packet = {256 * MiB}")
    yield
    for db, value in saved:
        db.sql(f"SET GLOBAL max_allowed_packet = {value}")


def test_34mib_blob_insert_is_captured_in_sequence_and_replays(mariadb, mariadb_test, big_packets, proxy_factory,
                                                               tmp_path):
    proxy = proxy_factory([mariadb], "--capture.buffer-size=1MiB")
    for db in (mariadb, mariadb_test):
        db.sql("DROP DATABASE IF EXISTS large_rec; CREATE DATABASE large_rec; "
               "CREATE TABLE large_rec.t (id INT PRIMARY KEY, b LONGBLOB)")
    blob = random.Random(70).randbytes(BLOB_MIB * MiB)  # incompressible: lz4 cannot make it small
    conn = MySQLdb.connect(**connect_kwargs(proxy.port), autocommit=True)
    cur = conn.cursor()
    insert = b"INSERT INTO large_rec.t VALUES (1, _binary'" + conn.escape_string(blob) + b"')"
    out = tmp_path / "cap"
    start_capture(proxy, out, "10m")
    cur.execute("SELECT 'before'")
    cur.execute(insert)
    assert last_capture(proxy)["status"] == "running"
    for i in range(200):
        cur.execute(f"SELECT 'after', {i}")
        assert cur.fetchall() == (("after", i),)
    conn.close()
    job = cancel_capture(proxy)
    assert job["status"] == "canceled" and not job["error"], job  # canceled by us, not stopped by the record
    assert job["large_record_buffer_used"] == 0

    meta, records, reader = read_capture(out)
    assert reader.complete
    queries = [r.payload for r in records if r.kind == KIND_COMMAND and r.payload[:1] == b"\x03"]
    assert len(queries[1]) > 2 * 0xFFFFFF  # it came in three packets
    assert queries[1] == b"\x03" + insert  # byte-exact
    assert queries == [b"\x03SELECT 'before'", b"\x03" + insert] + [b"\x03SELECT 'after', %d" % i for i in range(200)]
    assert sum(r.kind == KIND_COMMAND for r in records) == meta["commands"] == job["commands"]
    assert meta["raw_bytes"] > BLOB_MIB * MiB

    summary, _ = replay_inprocess(mariadb_test.host, mariadb_test.port, str(out), speed=0)
    assert summary["commands_failed"] == 0 and summary["other_errors"] == 0, summary
    assert mariadb_test.sql("SELECT SHA2(b, 256) FROM large_rec.t WHERE id = 1").strip() == \
        hashlib.sha256(blob).hexdigest()


def test_record_beyond_the_large_record_buffer_stops_the_capture_saying_what(mariadb, big_packets, proxy_factory,
                                                                             tmp_path):
    proxy = proxy_factory([mariadb], "--capture.buffer-size=1MiB", "--capture.large-record-buffer-size=4MiB")
    conn = MySQLdb.connect(**connect_kwargs(proxy.port), autocommit=True)
    cur = conn.cursor()
    out = tmp_path / "cap"
    start_capture(proxy, out, "10m")
    cur.execute(b"SELECT LENGTH('" + b"m" * (3 * MiB) + b"')")  # large, fits the 4 MiB: captured
    assert cur.fetchall() == ((3 * MiB,),)
    too_big = b"SELECT LENGTH('" + b"x" * (6 * MiB) + b"')"
    cur.execute(too_big)  # the client never notices
    assert cur.fetchall() == ((6 * MiB,),)
    job = wait_for(lambda: (lambda j: j if j["status"] != "running" else None)(last_capture(proxy)),
                   what="the capture to stop")
    cur.execute("SELECT 'still served'")
    assert cur.fetchall() == (("still served",),)
    conn.close()

    meta, records, _ = read_capture(out)
    conn_id = next(r.conn_id for r in records if r.kind == KIND_COMMAND)
    size = f"{(len(too_big) + 1) / MiB:.1f} MiB"
    assert job["status"] == "canceled"
    assert job["error"].startswith(
        f"a COM_QUERY of {size} on connection {conn_id} (at "), job["error"]
    assert ("could not be captured: records larger than a quarter of capture.buffer-size wait in memory for the "
            "writer, and capture.large-record-buffer-size (4.0 MiB) would be exceeded") in job["error"]
    assert "capture stopped, everything captured before it is in the files" in job["error"]
    assert "writer could not keep up" not in job["error"]
    queries = [r.payload for r in records if r.kind == KIND_COMMAND and r.payload[:1] == b"\x03"]
    assert queries[-1] == b"\x03SELECT LENGTH('" + b"m" * (3 * MiB) + b"')"  # everything before it is there
    assert meta["commands"] == job["commands"] == sum(r.kind == KIND_COMMAND for r in records)
