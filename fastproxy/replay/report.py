"""Replay failures, grouped and written to `tiproxy_traffic_report` on the target, in batches.

The replay loop only updates dictionaries; every second (and at the end) the new counts go to a
thread that writes them with one INSERT ... ON DUPLICATE KEY UPDATE per table, so the report never
costs the replay a round trip.
"""
from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from datetime import datetime, timezone

from fastproxy.replay.side_connection import tls_params

log = logging.getLogger("fastproxy.report")

REPORT_DB = "tiproxy_traffic_report"
SCHEMA = [
    f"CREATE DATABASE IF NOT EXISTS {REPORT_DB} CHARACTER SET utf8mb4",
    f"""CREATE TABLE IF NOT EXISTS {REPORT_DB}.fail (
        replay_start_time DATETIME(6) NOT NULL COMMENT 'identifies the replay run (UTC)',
        cmd_type VARCHAR(32) NOT NULL,
        digest CHAR(64) NOT NULL COMMENT 'sha256 of the normalized SQL',
        sample_stmt TEXT,
        sample_err_msg TEXT,
        sample_err_code INT,
        sample_conn_id BIGINT UNSIGNED,
        sample_capture_time DATETIME(6) NULL,
        sample_replay_time DATETIME(6) NULL,
        count BIGINT UNSIGNED NOT NULL,
        PRIMARY KEY (replay_start_time, cmd_type, digest)
    ) DEFAULT CHARSET=utf8mb4""",
    f"""CREATE TABLE IF NOT EXISTS {REPORT_DB}.other_errors (
        replay_start_time DATETIME(6) NOT NULL,
        err_type VARCHAR(64) NOT NULL,
        sample_err_msg TEXT,
        sample_replay_time DATETIME(6) NULL,
        count BIGINT UNSIGNED NOT NULL,
        PRIMARY KEY (replay_start_time, err_type)
    ) DEFAULT CHARSET=utf8mb4""",
    # the verdict (fastproxy/report/): results and latency compared with the capture (or, in an A/B
    # replay, with the baseline replay: `reference` says which)
    f"""CREATE TABLE IF NOT EXISTS {REPORT_DB}.mismatch (
        replay_start_time DATETIME(6) NOT NULL,
        cmd_type VARCHAR(32) NOT NULL,
        digest CHAR(64) NOT NULL,
        kind VARCHAR(16) NOT NULL COMMENT 'rows | content | order | affected_rows | warnings',
        sample_stmt TEXT,
        sample_params TEXT,
        sample_capture_value TEXT COMMENT 'the reference side: capture, or the baseline replay',
        sample_replay_value TEXT,
        sample_capture_time DATETIME(6) NULL,
        sample_replay_time DATETIME(6) NULL,
        count BIGINT UNSIGNED NOT NULL,
        reference VARCHAR(128) NOT NULL DEFAULT 'capture',
        PRIMARY KEY (replay_start_time, cmd_type, digest, kind)
    ) DEFAULT CHARSET=utf8mb4""",
    f"""CREATE TABLE IF NOT EXISTS {REPORT_DB}.latency (
        replay_start_time DATETIME(6) NOT NULL,
        cmd_type VARCHAR(32) NOT NULL,
        digest CHAR(64) NOT NULL COMMENT '"other": the digests past the histogram cap',
        sample_stmt TEXT,
        count BIGINT UNSIGNED NOT NULL,
        capture_p50_us DOUBLE, capture_p99_us DOUBLE, capture_max_us DOUBLE,
        replay_p50_us DOUBLE, replay_p99_us DOUBLE, replay_max_us DOUBLE,
        slower TINYINT(1) NOT NULL,
        plan MEDIUMTEXT COMMENT 'EXPLAIN FORMAT=JSON on the target, for the slowest digests',
        reference VARCHAR(128) NOT NULL DEFAULT 'capture',
        baseline_plan MEDIUMTEXT COMMENT 'A/B: the plan on the baseline',
        PRIMARY KEY (replay_start_time, cmd_type, digest)
    ) DEFAULT CHARSET=utf8mb4""",
    f"""CREATE TABLE IF NOT EXISTS {REPORT_DB}.nondeterministic (
        replay_start_time DATETIME(6) NOT NULL,
        cmd_type VARCHAR(32) NOT NULL,
        digest CHAR(64) NOT NULL,
        reasons VARCHAR(255) NOT NULL,
        sample_stmt TEXT,
        executions BIGINT UNSIGNED NOT NULL,
        differed BIGINT UNSIGNED NOT NULL COMMENT 'executions whose result differed (not mismatches)',
        PRIMARY KEY (replay_start_time, cmd_type, digest)
    ) DEFAULT CHARSET=utf8mb4""",
]
MEDIUMTEXT_BYTES = (1 << 24) - 1
VERDICT_TABLES = ("mismatch", "latency", "nondeterministic")


TEXT_BYTES = 65535  # a TEXT column holds this many bytes, not characters


def clip(text: str, limit: int = TEXT_BYTES) -> str:
    """At most `limit` bytes of UTF-8, cut on a character boundary."""
    raw = text.encode("utf-8", "replace")
    return text if len(raw) <= limit else raw[:limit].decode("utf-8", "ignore")


def utc(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, timezone.utc).replace(tzinfo=None)


@dataclass
class Failure:
    cmd_type: str
    digest: str
    sample_stmt: str
    sample_err_msg: str
    sample_err_code: int
    sample_conn_id: int
    sample_capture_ns: int
    sample_replay_ns: int
    count: int = 0
    unflushed: int = 0


@dataclass
class OtherError:
    err_type: str
    sample_err_msg: str
    sample_replay_ns: int
    count: int = 0
    unflushed: int = 0


class Report:
    """Aggregates on the event loop; `ReportWriter` persists."""

    def __init__(self) -> None:
        self.failures: dict[tuple[str, str], Failure] = {}
        self.other_errors: dict[str, OtherError] = {}
        # takes out of a server's message what must not be reported (the secrets replay put back)
        self.scrub = lambda text: text
        self.on_add = None  # callback(kind, args) per entry: the checkpoint's journal (replay/checkpoint.py)

    def add_failure(self, cmd_type: str, digest: str, stmt: str, err_msg: str, err_code: int, conn_id: int,
                    capture_ns: int, replay_ns: int) -> None:
        key = (cmd_type, digest)
        f = self.failures.get(key)
        if self.on_add is not None:  # the sample only with the first of its kind
            self.on_add("fail", (cmd_type, digest, "" if f else clip(stmt), "" if f else self.scrub(err_msg), err_code,
                                 conn_id, capture_ns, replay_ns))
        if f is None:  # the first sample is kept
            f = self.failures[key] = Failure(cmd_type, digest, clip(stmt), clip(self.scrub(err_msg)), err_code,
                                             conn_id, capture_ns, replay_ns)
        f.count += 1
        f.unflushed += 1

    def add_other(self, err_type: str, err_msg: str, replay_ns: int) -> None:
        e = self.other_errors.get(err_type)
        if self.on_add is not None:
            self.on_add("other", (err_type, "" if e else clip(self.scrub(err_msg)), replay_ns))
        if e is None:
            e = self.other_errors[err_type] = OtherError(err_type, clip(self.scrub(err_msg)), replay_ns)
        e.count += 1
        e.unflushed += 1

    @property
    def failed(self) -> int:
        return sum(f.count for f in self.failures.values())

    def take_delta(self) -> tuple[list[Failure], list[OtherError]]:
        fails = [Failure(**{**f.__dict__, "count": f.unflushed}) for f in self.failures.values() if f.unflushed]
        others = [OtherError(**{**e.__dict__, "count": e.unflushed}) for e in self.other_errors.values() if e.unflushed]
        for f in self.failures.values():
            f.unflushed = 0
        for e in self.other_errors.values():
            e.unflushed = 0
        return fails, others

    def top_failures(self, n: int = 10) -> list[Failure]:
        return sorted(self.failures.values(), key=lambda f: -f.count)[:n]


class ReportWriter:
    """A thread with its own connection to the target (mysqlclient) writing report batches."""

    def __init__(self, host: str, port: int, user: str, password: str, replay_start_ns: int, *,
                 tls: bool = False, tls_ca: str = "", tls_skip_verify: bool = False) -> None:
        self.params = dict(host=host, port=port, user=user, password=password, connect_timeout=10, autocommit=True,
                           charset="utf8mb4")
        self.params.update(tls_params(tls, tls_ca, tls_skip_verify))
        self.replay_start = utc(replay_start_ns)
        self.reference = "capture"  # what the verdict tables compare with ("baseline HOST:PORT" in A/B)
        self.error: str | None = None
        self.rows_written = 0
        self.dropped_batches = 0
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="fastproxy-report-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, delta: tuple[list[Failure], list[OtherError]]) -> None:
        if delta[0] or delta[1]:
            self._queue.put(("fail", delta))

    def submit_verdict(self, table: str, rows: list) -> None:
        """Rows of the verdict tables: "mismatch" (Mismatch deltas, counts added), "latency" and
        "nondeterministic" (dicts / Nondeterministic, values replaced)."""
        if rows:
            self._queue.put((table, rows))

    def restart_counts(self, verdict: bool = False) -> None:
        """A resumed replay: its rows in fail and other_errors (`verdict`: and in the verdict's tables too)
        are written again from the checkpoint's counts (the next batches carry them whole), so that what
        the stopped run wrote after its last checkpoint is neither lost nor counted twice."""
        self._queue.put(("restart", ("fail", "other_errors") + (VERDICT_TABLES if verdict else ())))

    def close(self, timeout: float = 60.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        import MySQLdb

        conn = None
        pending: list = []  # batches not written yet (target unreachable): retried with the next one
        while True:
            item = self._queue.get()
            if item is not None:
                pending.append(item)
            try:
                if conn is None and pending:
                    conn = MySQLdb.connect(**self.params)
                    cur = conn.cursor()
                    for stmt in SCHEMA:
                        cur.execute(stmt)
                while pending:
                    try:
                        self._write(conn, *pending[0])
                    except MySQLdb.Error as e:
                        if not _alive(conn):
                            raise  # the target is gone: keep the batch for the next attempt
                        # the server refused this batch's data: drop it, never block the ones after it
                        conn.rollback()
                        self.dropped_batches += 1
                        log.error("replay report: a batch was refused by the target and dropped: %s", e)
                    pending.pop(0)
                self.error = None  # an outage the writer recovered from loses nothing
            except Exception as e:  # noqa: BLE001 - the report must never take the replay down
                self.error = f"{type(e).__name__}: {e}"
                log.error("cannot write the replay report to the target: %s", self.error)
                conn = None
            if item is None:
                break
        if conn is not None:
            conn.close()

    def _write(self, conn, table: str, rows) -> None:
        if table == "fail":
            return self._write_failures(conn, *rows)
        if table == "restart":
            cur = conn.cursor()
            cur.execute("BEGIN")
            for name in rows:
                cur.execute(f"DELETE FROM {REPORT_DB}.{name} WHERE replay_start_time = %s", (self.replay_start,))
            conn.commit()
            return
        cur = conn.cursor()
        cur.execute("BEGIN")
        start = self.replay_start
        if table == "mismatch":
            cur.executemany(
                f"INSERT INTO {REPORT_DB}.mismatch (replay_start_time, cmd_type, digest, kind, sample_stmt, "
                "sample_params, sample_capture_value, sample_replay_value, sample_capture_time, sample_replay_time, "
                "count, reference) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON DUPLICATE KEY UPDATE count = count + VALUES(count)",
                [(start, m.cmd_type, m.digest, m.kind, clip(m.sample_stmt), clip(m.sample_params),
                  clip(m.sample_capture_value), clip(m.sample_replay_value), _utc_or_none(m.sample_capture_ns),
                  _utc_or_none(m.sample_replay_ns), m.count, self.reference) for m in rows])
        elif table == "latency":
            cur.executemany(
                f"REPLACE INTO {REPORT_DB}.latency (replay_start_time, cmd_type, digest, sample_stmt, count, "
                "capture_p50_us, capture_p99_us, capture_max_us, replay_p50_us, replay_p99_us, replay_max_us, "
                "slower, plan, reference, baseline_plan) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [(start, r["cmd_type"], r["digest"], clip(r["sample_stmt"]), r["count"], r["capture_p50_us"],
                  r["capture_p99_us"], r["capture_max_us"], r["replay_p50_us"], r["replay_p99_us"],
                  r["replay_max_us"], int(r["slower"]), clip(r["plan"] or "", MEDIUMTEXT_BYTES), self.reference,
                  clip(r.get("baseline_plan") or "", MEDIUMTEXT_BYTES)) for r in rows])
        elif table == "nondeterministic":
            cur.executemany(
                f"REPLACE INTO {REPORT_DB}.nondeterministic (replay_start_time, cmd_type, digest, reasons, "
                "sample_stmt, executions, differed) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                [(start, n.cmd_type, n.digest, clip(n.reasons, 255), clip(n.sample_stmt), n.executions, n.differed)
                 for n in rows])
        else:
            raise ValueError(f"unknown report table {table!r}")
        conn.commit()
        self.rows_written += len(rows)

    def _write_failures(self, conn, fails: list[Failure], others: list[OtherError]) -> None:
        cur = conn.cursor()
        cur.execute("BEGIN")  # a batch is written whole or not at all, so a retry never counts twice
        if fails:
            cur.executemany(
                f"INSERT INTO {REPORT_DB}.fail (replay_start_time, cmd_type, digest, sample_stmt, sample_err_msg, "
                "sample_err_code, sample_conn_id, sample_capture_time, sample_replay_time, count) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE count = count + VALUES(count)",
                [(self.replay_start, f.cmd_type, f.digest, f.sample_stmt, f.sample_err_msg, f.sample_err_code,
                  f.sample_conn_id, utc(f.sample_capture_ns), utc(f.sample_replay_ns), f.count) for f in fails])
        if others:
            cur.executemany(
                f"INSERT INTO {REPORT_DB}.other_errors (replay_start_time, err_type, sample_err_msg, "
                "sample_replay_time, count) VALUES (%s, %s, %s, %s, %s) "
                "ON DUPLICATE KEY UPDATE count = count + VALUES(count)",
                [(self.replay_start, e.err_type, e.sample_err_msg, utc(e.sample_replay_ns), e.count) for e in others])
        conn.commit()
        self.rows_written += len(fails) + len(others)


def _utc_or_none(ns: int):
    return utc(ns) if ns > 0 else None


def _alive(conn) -> bool:
    try:
        conn.ping()
        return True
    except Exception:  # noqa: BLE001
        return False
