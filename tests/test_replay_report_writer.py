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


def _write_batches(db, batches):
    """Run a ReportWriter against `db`: each batch is a list of add_failure argument tuples (cmd type,
    digest, statement, error) submitted as one delta. Returns the writer and the rows it wrote."""
    start_ns = time.time_ns()
    writer = ReportWriter(db.host, db.port, "root", ROOT_PASSWORD, start_ns)
    writer.start()
    report = Report()
    now = time.time_ns()
    for batch in batches:
        for cmd_type, digest, stmt, err in batch:
            report.add_failure(cmd_type, digest, stmt, err, 1, 1, now, now)
        writer.submit(report.take_delta())
    writer.close()
    return writer, _rows(db, utc(start_ns))


def test_multibyte_samples_are_written(mariadb_private):
    big = "INSERT INTO t VALUES (?) params=['" + "語" * 40000 + "']"
    query = ("Query", "a" * 64, "SELECT '中文' FROM t", "1054: 中")
    writer, rows = _write_batches(mariadb_private, [[query, ("StmtExecute", "b" * 64, big, "err")], [query]])
    assert writer.error is None and writer.dropped_batches == 0
    assert [(r[0], r[1]) for r in rows] == [("Query", 2), ("StmtExecute", 1)]
    assert rows[0][2] == "SELECT '中文' FROM t"
    assert len(rows[1][2].encode()) <= 65535 and rows[1][2].startswith("INSERT INTO t VALUES")


def test_a_refused_batch_is_dropped_and_the_next_ones_are_written(mariadb_private):
    too_long = ("X" * 40, "c" * 64, "SELECT 1", "e")  # longer than cmd_type's column
    writer, rows = _write_batches(mariadb_private, [[too_long], [("Query", "d" * 64, "SELECT 2", "e")]])
    assert writer.dropped_batches == 1
    assert [(r[0], r[1]) for r in rows] == [("Query", 1)]
