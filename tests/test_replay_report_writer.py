"""The report writer: any text fits, and one refused batch never blocks the ones after it."""
import time

import MySQLdb

from fastproxy.replay.report import REPORT_DB, Report, ReportWriter, utc
from fastproxy.scratch_db import ROOT_PASSWORD


def _rows(db, start):
    conn = MySQLdb.connect(host=db.host, port=db.port, user="root", password=ROOT_PASSWORD, charset="utf8mb4")
    cur = conn.cursor()
    cur.execute(f"SELECT cmd_type, count, sample_stmt FROM {REPORT_DB}.fail WHERE replay_start_time = %s "
                "ORDER BY cmd_type", (start,))
    rows = cur.fetchall()
    conn.close()
    return rows


def test_multibyte_samples_are_written(mariadb_private):
    db = mariadb_private
    start_ns = time.time_ns()
    writer = ReportWriter(db.host, db.port, "root", ROOT_PASSWORD, start_ns)
    writer.start()
    report = Report()
    now = time.time_ns()
    report.add_failure("Query", "a" * 64, "SELECT '中文' FROM t", "1054: 中", 1054, 1, now, now)
    report.add_failure("StmtExecute", "b" * 64, "INSERT INTO t VALUES (?) params=['" + "語" * 40000 + "']",
                       "err", 1, 2, now, now)
    writer.submit(report.take_delta())
    report.add_failure("Query", "a" * 64, "SELECT '中文' FROM t", "1054: 中", 1054, 1, now, now)
    writer.submit(report.take_delta())
    writer.close()
    assert writer.error is None and writer.dropped_batches == 0
    rows = _rows(db, utc(start_ns))
    assert [(r[0], r[1]) for r in rows] == [("Query", 2), ("StmtExecute", 1)]
    assert rows[0][2] == "SELECT '中文' FROM t"
    assert len(rows[1][2].encode()) <= 65535 and rows[1][2].startswith("INSERT INTO t VALUES")


def test_a_refused_batch_is_dropped_and_the_next_ones_are_written(mariadb_private):
    db = mariadb_private
    start_ns = time.time_ns()
    writer = ReportWriter(db.host, db.port, "root", ROOT_PASSWORD, start_ns)
    writer.start()
    report = Report()
    now = time.time_ns()
    report.add_failure("X" * 40, "c" * 64, "SELECT 1", "e", 1, 1, now, now)  # longer than cmd_type's column
    writer.submit(report.take_delta())
    report.add_failure("Query", "d" * 64, "SELECT 2", "e", 1, 1, now, now)
    writer.submit(report.take_delta())
    writer.close()
    assert writer.dropped_batches == 1
    assert [(r[0], r[1]) for r in _rows(db, utc(start_ns))] == [("Query", 1)]
