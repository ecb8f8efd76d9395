"""A capture of format version 1 (48-byte record headers, before result fingerprints, insert ids,
warnings and status flags) still replays (issue 11: "captures of the current version still
replay"), on two identical servers: no failure, the same data, and a verdict that compares only what
version 1 recorded — row counts and affected rows, never content, order or warnings.

The version 1 files are written from a real capture, record by record, as the version 1 writer laid
them out (its file header, its record header, its CONN_OPEN body and meta keys, empty CONN_CLOSE
bodies)."""
from __future__ import annotations

import json
import os

import pymysql
import pytest

from conftest import connect_kwargs
from fastproxy.capture.reader import TrafficReader
from fastproxy.capture.record import (FILE_HEADER, HEADER_V1, KIND_CONN_CLOSE, KIND_CONN_OPEN, KIND_CONN_STATE,
                                      MAGIC, OUTCOME_BACKEND_LOST)
from replay_util import Capture, checksums, replay_cli
from session_util import on_both

pytestmark = pytest.mark.timeout(300)

DB = "v1cap"
SCHEMA = (f"DROP DATABASE IF EXISTS {DB}; CREATE DATABASE {DB};"
          f"CREATE TABLE {DB}.orders (id INT AUTO_INCREMENT PRIMARY KEY, who VARCHAR(20) NOT NULL,"
          " qty INT NOT NULL) ENGINE=InnoDB;"
          f"CREATE TABLE {DB}.names (id INT PRIMARY KEY, name VARCHAR(20) COLLATE utf8mb4_general_ci) ENGINE=InnoDB;"
          f"INSERT INTO {DB}.names VALUES (1, 'Anna'), (2, 'anna'), (3, 'Bob');")
# the version 1 writer's keys (fastproxy/capture/job.py before format version 2)
V1_OPEN_KEYS = ("user", "db", "capabilities", "charset", "client_addr")
V1_META_KEYS = ("start", "end", "duration", "start_ns", "end_ns", "commands", "filtered_commands", "connections",
                "existing_connections", "waited_for_transaction", "server_version", "compress",
                "encryption_method", "bytes_written", "raw_bytes", "records", "compression", "encryption")


def _workload(port: int) -> None:
    a = pymysql.connect(**connect_kwargs(port, database=DB), autocommit=True)
    b = pymysql.connect(**connect_kwargs(port, database=DB), autocommit=True)
    ca, cb = a.cursor(), b.cursor()
    for i in range(5):
        ca.execute("BEGIN")
        ca.execute("INSERT INTO orders (who, qty) VALUES (%s, %s)", ("a", i))
        ca.execute("UPDATE orders SET qty = qty + 1 WHERE id = LAST_INSERT_ID()")
        ca.execute("COMMIT" if i % 2 == 0 else "ROLLBACK")
        cb.execute("SELECT COUNT(*) FROM orders")  # reads what a committed
        cb.execute("SELECT id, name FROM names WHERE name = 'anna' ORDER BY id")
        cb.execute("UPDATE orders SET qty = qty * 2 WHERE who = 'a'")
    with pytest.raises(pymysql.err.IntegrityError):
        cb.execute("INSERT INTO names VALUES (1, 'again')")  # failed in production: fails on replay too
    a.close()
    b.close()


def _write_version_1(src: str, dst: str) -> int:
    """The capture in `src` as the version 1 writer would have written it, in `dst`; returns records."""
    os.makedirs(dst, mode=0o700)
    with open(os.path.join(src, "meta")) as f:
        meta = json.load(f)
    body = bytearray()
    n = 0
    for r in TrafficReader(src):
        assert r.outcome != OUTCOME_BACKEND_LOST
        if r.kind == KIND_CONN_STATE:
            continue  # no session open before this capture: none expected
        payload = r.payload
        if r.kind == KIND_CONN_OPEN:
            opened = json.loads(payload)
            payload = json.dumps({k: opened[k] for k in V1_OPEN_KEYS if k in opened}).encode()
        elif r.kind == KIND_CONN_CLOSE:
            payload = b""
        body += HEADER_V1.pack(HEADER_V1.size + len(payload), r.kind, r.outcome, r.err_code, r.conn_id,
                               r.start_ns, r.end_ns, r.affected_rows, r.rows) + payload
        n += 1
    name = "traffic-20240101T000000.000Z-000001.bin"
    with open(os.path.join(dst, name), "wb") as f:
        f.write(FILE_HEADER.pack(MAGIC, 1, 0, 0) + body)
    v1_meta = {k: meta[k] for k in V1_META_KEYS if k in meta}
    v1_meta.update(format_version=1, files=[name], records=n, compress=False, compression="none",
                   bytes_written=FILE_HEADER.size + len(body), raw_bytes=len(body))
    with open(os.path.join(dst, "meta"), "w") as f:
        json.dump(v1_meta, f)
    return n


def _verdict(summary: dict) -> dict:
    with open(summary["_path"][:-len(".json")] + "-verdict.jsonl") as f:
        return json.loads(f.readline())


def test_a_version_1_capture_replays_and_compares_what_it_recorded(mariadb, mariadb_test, proxy, tmp_path):
    on_both((mariadb,), SCHEMA)
    v2 = str(tmp_path / "v2")
    with Capture(proxy, v2):
        _workload(proxy.port)
    production = checksums(mariadb, DB)
    v1 = str(tmp_path / "v1")
    assert _write_version_1(v2, v1) > 40
    assert list(TrafficReader(v1))[0].hash_unordered == 0  # read as version 1: no fingerprints

    for speed in ("1", "0"):
        mariadb_test.sql(SCHEMA)
        _, summary = replay_cli(mariadb_test.addr, v1, "--speed", speed, "--no-report-tables")
        assert summary["commands_failed"] == 0, summary["top_failures"]
        assert summary["other_errors"] == 0, summary["other_error_types"]
        assert summary["commands_failed_same_as_capture"] == 1, summary  # the duplicate key
        assert checksums(mariadb_test, DB) == production, speed
        data = _verdict(summary)
        assert data["compared"] == ["affected_rows", "rows"], data["compared"]
        assert data["mismatches"] == [], data["mismatches"]

    # the target's collation changed: 'anna' now matches one row of two. Version 1 recorded row counts,
    # so that is a `rows` mismatch; its content it never recorded, so nothing else is claimed.
    mariadb_test.sql(SCHEMA + f"ALTER TABLE {DB}.names MODIFY name VARCHAR(20) COLLATE utf8mb4_bin;")
    _, summary = replay_cli(mariadb_test.addr, v1, "--speed", "0", "--no-report-tables")
    assert summary["commands_failed"] == 0, summary["top_failures"]
    kinds = {(m["sample_stmt"], m["kind"]) for m in _verdict(summary)["mismatches"]}
    assert kinds == {("SELECT id, name FROM names WHERE name = 'anna' ORDER BY id", "rows")}, kinds
