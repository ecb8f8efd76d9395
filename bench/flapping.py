#!/usr/bin/env python3
"""A backend that keeps dying: kill -9 and restart MariaDB every few seconds while sysbench writes
through the proxy and a capture runs (issue 7, "Robustness at volume").

    python bench/flapping.py [--time 60] [--every 5] [--threads 8] [--json out.json]

One scratch MariaDB with durable commits (innodb_flush_log_at_trx_commit=1, so an acknowledged
INSERT survives kill -9), one `fastproxy serve` (passive health checks), a capture started
through the API before the load. sysbench with bench/flapping_insert.lua (autocommit INSERTs into
the `oltp_insert` tables, auto-increment ids, text protocol; a thread whose INSERT fails
reconnects until it can, and counts the INSERTs acknowledged — sysbench 1.0.20's own reconnect
crashes while the server is down) runs through the proxy for --time seconds; every --every seconds the server gets SIGKILL and is started again on the same
port. A probe connects through the proxy and runs SELECT 1 every 100 ms.

Checked:
- serving between outages: every window in which the server was up gets probe successes (and
  how long after the restart the first one came);
- nothing acknowledged is lost by the capture: each INSERT the capture holds with outcome OK
  carries its auto-increment id (last_insert_id, format v2); the ids must all be rows in the
  table (what the capture says succeeded did), and the rows of the table that the capture has no
  OK for must be at most its INSERTs with an unknown end (BACKEND_LOST / UNKNOWN: the server
  committed them but the answer died with the server) — or the capture stopped with a reason;
- sysbench's acknowledged writes are at most the capture's OK INSERTs;
- the proxy is alive at the end and logged no traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from benchlib import Proxy, load_average, machine

from fastproxy.capture.reader import TrafficReader
from fastproxy.capture.record import (KIND_COMMAND, OUTCOME_BACKEND_LOST, OUTCOME_ERR, OUTCOME_OK,
                                      OUTCOME_UNKNOWN)
from fastproxy.scratch_db import ROOT_PASSWORD, ScratchMariaDB

INSERT_RE = re.compile(rb"^\x03INSERT INTO (sbtest\d+)", re.I)


class Probe(threading.Thread):
    """SELECT 1 through the proxy every `interval` seconds, a new connection each time."""

    def __init__(self, port: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.interval = interval
        self.results: list[tuple[float, bool, str]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        import pymysql

        while not self.stopped.is_set():
            t = time.time()
            try:
                c = pymysql.connect(host="127.0.0.1", port=self.port, user="root", password=ROOT_PASSWORD,
                                    connect_timeout=5, read_timeout=5)
                with c.cursor() as cur:
                    cur.execute("SELECT 1")
                    ok = cur.fetchone() == (1,)
                c.close()
                self.results.append((t, ok, ""))
            except Exception as e:  # noqa: BLE001 - every failure is a data point
                self.results.append((t, False, f"{type(e).__name__}: {e}"[:200]))
            self.stopped.wait(max(0.0, self.interval - (time.time() - t)))


LUA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "flapping_insert.lua")


def sysbench(port: int, args, test: str, *extra: str) -> list[str]:
    return ["sysbench", test, "--db-driver=mysql", "--mysql-host=127.0.0.1", f"--mysql-port={port}",
            "--mysql-user=root", f"--mysql-password={ROOT_PASSWORD}", "--mysql-db=sbtest", f"--tables={args.tables}",
            f"--table-size={args.table_size}", *extra]


def capture_inserts(out_dir: str) -> dict:
    """INSERT records of the capture: (table, id) of the OK ones, counts by outcome."""
    ok_ids: set[tuple[str, int]] = set()
    counts = {"ok": 0, "err": 0, "backend_lost": 0, "unknown": 0, "other": 0}
    reader = TrafficReader(out_dir)
    for rec in reader:
        if rec.kind != KIND_COMMAND:
            continue
        m = INSERT_RE.match(rec.payload)
        if not m:
            continue
        if rec.outcome == OUTCOME_OK:
            counts["ok"] += 1
            ok_ids.add((m.group(1).decode(), rec.last_insert_id))
        elif rec.outcome == OUTCOME_ERR:
            counts["err"] += 1
        elif rec.outcome == OUTCOME_BACKEND_LOST:
            counts["backend_lost"] += 1
        elif rec.outcome == OUTCOME_UNKNOWN:
            counts["unknown"] += 1
        else:
            counts["other"] += 1
    return {"ok_ids": ok_ids, "counts": counts, "complete": reader.complete, "truncated_at": reader.truncated_at}


def table_ids(db: ScratchMariaDB, tables: int, above: int) -> set[tuple[str, int]]:
    ids = set()
    for t in range(1, tables + 1):
        out = db.sql(f"SELECT id FROM sbtest.sbtest{t} WHERE id > {above}")
        ids.update((f"sbtest{t}", int(x)) for x in out.split())
    return ids


def windows(kills: list[tuple[float, float]], start: float, end: float) -> list[tuple[float, float]]:
    """Up windows: (ready time, next kill time) between the kills."""
    out, ready = [], start
    for killed, back in kills:
        out.append((ready, killed))
        ready = back
    out.append((ready, end))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time", type=int, default=60)
    ap.add_argument("--every", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--tables", type=int, default=4)
    ap.add_argument("--table-size", type=int, default=1000)
    ap.add_argument("--json")
    args = ap.parse_args()

    out: dict = {"machine": machine(), "args": vars(args)}
    print(f"machine: {out['machine']}", flush=True)
    workdir = tempfile.mkdtemp(prefix="fastproxy-flap-")
    cap_dir = os.path.join(workdir, "capture")
    with ScratchMariaDB(name="flap", extra_args=["--innodb-flush-log-at-trx-commit=1"]) as db:
        db.sql("CREATE DATABASE sbtest")
        subprocess.run(sysbench(db.port, args, "oltp_insert", "prepare"), check=True, capture_output=True)
        proxy = Proxy([db.addr], "--proxy.health-check-interval=0.5s", name="flap").start()
        try:
            proxy.post("/api/traffic/capture", {"output": cap_dir, "duration": "1h"})
            probe = Probe(proxy.port)
            probe.start()
            t0 = time.time()
            sb = subprocess.Popen(sysbench(proxy.port, args, LUA, f"--threads={args.threads}", f"--time={args.time}",
                                           "--report-interval=5", "run"),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            kills = []
            while time.time() - t0 < args.time - args.every and sb.poll() is None:
                time.sleep(max(0.0, t0 + (len(kills) + 1) * args.every - time.time()))
                killed = time.time()
                db.restart()  # SIGKILL, then the same mariadbd on the same port, waiting until it accepts
                kills.append((killed, time.time()))
                print(f"killed at +{killed - t0:.1f}s, back at +{time.time() - t0:.1f}s", flush=True)
            sb_out = sb.communicate(timeout=args.time + 120)[0]
            t_end = time.time()
            probe.stopped.set()
            probe.join(10)
            proxy.post("/api/traffic/cancel", {"type": "capture"})
            deadline = time.time() + 120
            while (job := proxy.get("/api/traffic/show")[-1])["status"] == "running" and time.time() < deadline:
                time.sleep(0.2)
            out["capture_job"] = {k: job.get(k) for k in ("status", "error", "commands", "connections")}
            out["proxy_alive"] = proxy.alive()
        finally:
            proxy.stop()
        out["proxy_log_traceback"] = "Traceback" in proxy.log()

        m = re.search(r"write:\s+(\d+)", sb_out)
        per_thread = [int(x) for x in re.findall(r"flapping: thread acked (\d+)", sb_out)]
        acked = sum(per_thread) if len(per_thread) == args.threads else -1
        out["sysbench"] = {"returncode": sb.returncode, "acknowledged_inserts": acked,
                           "write_queries_reported": int(m.group(1)) if m else None,
                           "failed_inserts": sum(int(x) for x in re.findall(r"failed (\d+)", sb_out))}
        if sb.returncode != 0 or acked < 0:
            out["sysbench"]["output_tail"] = sb_out[-3000:]
        rows = table_ids(db, args.tables, args.table_size)
        cap = capture_inserts(cap_dir)

    out["kills"] = [(round(k - t0, 2), round(b - t0, 2)) for k, b in kills]
    per_window = []
    for ready, killed in windows(kills, t0, t_end):
        res = [(t, ok) for t, ok, _ in probe.results if ready <= t < killed]
        first_ok = next((t for t, ok in res if ok), None)
        per_window.append({"up_from": round(ready - t0, 2), "up_to": round(killed - t0, 2),
                           "probes": len(res), "ok": sum(ok for _, ok in res),
                           "first_ok_after_s": None if first_ok is None else round(first_ok - ready, 2)})
    out["windows"] = per_window
    out["probe_errors_sample"] = sorted({e for _, ok, e in probe.results if not ok})[:5]
    missing_in_table = cap["ok_ids"] - rows
    not_ok_in_capture = rows - cap["ok_ids"]
    unknown_end = cap["counts"]["backend_lost"] + cap["counts"]["unknown"]
    out["capture"] = {"insert_records": cap["counts"], "complete": cap["complete"],
                      "truncated_at": cap["truncated_at"]}
    out["server"] = {"rows_inserted": len(rows)}
    out["checks"] = {
        "every_up_window_served": all(w["ok"] > 0 for w in per_window if w["up_to"] - w["up_from"] >= 1.0),
        "capture_ok_ids_all_in_table": not missing_in_table,
        "table_rows_without_capture_ok": len(not_ok_in_capture),
        "capture_inserts_with_unknown_end": unknown_end,
        "rows_without_ok_covered_by_unknown_end": len(not_ok_in_capture) <= unknown_end,
        "sysbench_acked_le_capture_ok": 0 <= acked <= cap["counts"]["ok"],
        "capture_stopped_with_reason": out["capture_job"]["status"] != "canceled" and bool(out["capture_job"]["error"]),
    }
    if missing_in_table:
        out["checks"]["capture_ok_not_in_table_sample"] = sorted(missing_in_table)[:10]
    c = out["checks"]
    capture_ok = c["capture_stopped_with_reason"] or (c["capture_ok_ids_all_in_table"]
                                                       and c["rows_without_ok_covered_by_unknown_end"])
    out["verdict"] = {"serving": c["every_up_window_served"], "capture": capture_ok,
                      "sysbench_vs_capture": c["sysbench_acked_le_capture_ok"],
                      "proxy": out["proxy_alive"] and not out["proxy_log_traceback"]}
    out["load_avg_1m_at_end"] = round(load_average(), 2)
    shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    sys.exit(0 if all(out["verdict"].values()) else 1)


if __name__ == "__main__":
    main()
