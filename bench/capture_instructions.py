#!/usr/bin/env python3
"""What a capture costs the proxy, counted in instructions rather than timed: `fastproxy serve`
runs under valgrind's callgrind (which counts every user-space instruction each thread executes,
the same on a busy box as on an idle one), sysbench drives it with the capture off and then on,
and the difference per query is the capture's cost, thread by thread.

    python bench/capture_instructions.py [--workloads oltp_point_select:8:4000:16000,...]
        [--repeat 2] [--idle 5] [--json out.json]

Why: on a shared 2-core VM the proxy's CPU time per query swings by several µs between rounds, so
"a capture costs at most 1 µs per query" cannot be read off timed runs, and this VM has no hardware
counters (`perf stat -e instructions`: not supported). callgrind counts instructions in software.

How, per workload and capture state, in one proxy process under callgrind (workers = 1):
  * the counters are zeroed, sysbench runs A events, the counters are dumped; then the same for B
    events (same threads: the same connection set-ups in both), so the slope (B - A) / (qB - qA)
    is the instructions per query with set-up and start-up taken out;
  * then the counters are zeroed, the proxy sits idle for --idle seconds, and is dumped: what the
    threads execute per second on timers alone (the capture's watch, the writer's idle polls).
  Under callgrind the proxy runs several times slower than natively, so a timer's work falls on
  fewer queries per second: the per-query slope includes the timers' work at valgrind's pace, and
  the idle rate lets a reader take it out or put it back at any native rate.

Threads are told apart by what they run: the data-plane worker (`dp_worker_run`), the capture
writer (LZ4 compression), the main thread (uvloop, Python), the rest (thread pools).

Then the same proxy natively (no valgrind), capture off, A and B events: user CPU per query from
/proc, which divided by the instructions per query gives this box's ns per instruction for the
proxy's own code — the rate at which the capture's extra instructions would turn into time. The
kernel's share is not counted by callgrind; `bench/e2e.py --profile` shows a capture adds no
system calls or context switches per query.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from fastproxy.scratch_db import ROOT_PASSWORD, ScratchMariaDB  # noqa: E402
import benchlib  # noqa: E402  (bench/ is on sys.path: this script's directory)
from benchlib import machine  # noqa: E402
from e2e import parse_sysbench  # noqa: E402

THREAD_MARKERS = (("worker", "dp_worker_run"), ("writer", "LZ4_compress"))  # first match wins
TABLES, TABLE_SIZE = 4, 10_000


def sysbench_config(dirpath: str, port: int) -> str:
    """sysbench's options in a private file: the password stays off the process list."""
    path = os.path.join(dirpath, f"sysbench-{port}.cfg")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(["db-driver=mysql", "mysql-host=127.0.0.1", f"mysql-port={port}", "mysql-user=root",
                           f"mysql-password={ROOT_PASSWORD}", "mysql-db=sbtest", f"tables={TABLES}",
                           f"table-size={TABLE_SIZE}", "db-ps-mode=auto",
                           "mysql-ignore-errors=1213,1020,1205,1062"]) + "\n")
    return path


def sysbench(config: str, workload: str, threads: int, events: int, command: str = "run") -> int:
    """Runs sysbench; returns the queries it made."""
    res = subprocess.run(["sysbench", workload, f"--config-file={config}", f"--threads={threads}",
                          f"--events={events}", "--time=0", command], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"sysbench {workload} {command} failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return parse_sysbench(res.stdout)["queries"]


class Proxy(benchlib.Proxy):
    """`fastproxy serve` (workers = 1), optionally under callgrind."""

    def __init__(self, db: ScratchMariaDB, io: str, workdir: str, callgrind: bool) -> None:
        super().__init__([db.addr], "--proxy.workers=1", f"--proxy.io={io}", name="cg")
        self.out = os.path.join(workdir, f"cg-{self.port}") if callgrind else None
        if callgrind:
            self.args = ["valgrind", "--tool=callgrind", "--separate-threads=yes",
                         f"--callgrind-out-file={self.out}", *self.args]
        self.start(timeout=180)  # python starts ~20 s under callgrind

    def callgrind(self, verb: str) -> None:
        subprocess.run(["callgrind_control", verb, str(self.proc.pid)], check=True, capture_output=True)

    def dump(self) -> dict[int, tuple[str, int]]:
        """Dumps the counters since the last zero; returns {thread number: (kind seen, instructions)}."""
        before = set(glob.glob(self.out + ".*"))
        self.callgrind("-d")
        deadline = time.monotonic() + 60
        while True:  # the dump is written asynchronously, one file per thread
            new = sorted(set(glob.glob(self.out + ".*")) - before)
            if new and all(_complete(p) for p in new):
                break
            if time.monotonic() > deadline:
                raise TimeoutError("callgrind wrote no dump")
            time.sleep(0.2)
        return dict(_thread_instructions(path) for path in new)

    def thread_cpu(self) -> dict[str, float]:
        """Native runs: user CPU seconds by thread kind, from /proc (workers are named fp-worker-N)."""
        tick = os.sysconf("SC_CLK_TCK")
        out: dict[str, float] = {}
        for task in os.listdir(f"/proc/{self.proc.pid}/task"):
            try:
                comm = Path(f"/proc/{self.proc.pid}/task/{task}/comm").read_text().strip()
                fields = Path(f"/proc/{self.proc.pid}/task/{task}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            kind = "worker" if comm.startswith("fp-worker") else "rest"
            out[kind] = out.get(kind, 0.0) + int(fields[11]) / tick
            out["system"] = out.get("system", 0.0) + int(fields[12]) / tick  # the kernel, all threads
        return out


def _complete(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 4096))
            tail = f.read()
        return b"\ntotals:" in tail or b"\nsummary:" in tail
    except OSError:
        return False


def _thread_instructions(path: str) -> tuple[int, tuple[str, int]]:
    text = Path(path).read_text(errors="replace")
    m = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.M)
    ir = int(m.group(1)) if m else 0
    thread = int(re.search(r"^thread:\s*(\d+)$", text, re.M).group(1))
    kind = "main" if thread == 1 else next((k for k, marker in THREAD_MARKERS if marker in text), "")
    return thread, (kind, ir)


def _by_kind(dumps: list[dict]) -> list[dict[str, int]]:
    """Instructions by thread kind, each thread's kind taken from any dump that shows what it runs
    (an idle writer compresses nothing, so it is known by its number from the busy dumps)."""
    kinds = {t: k for d in dumps for t, (k, _) in d.items() if k}
    out = []
    for d in dumps:
        by: dict[str, int] = {}
        for t, (_, ir) in d.items():
            by[kinds.get(t, "rest")] = by.get(kinds.get(t, "rest"), 0) + ir
        out.append(by)
    return out


def measure_callgrind(db, io, workdir, workload, threads, events, capture: bool, idle: float) -> dict:
    proxy = Proxy(db, io, workdir, callgrind=True)
    try:
        config = sysbench_config(workdir, proxy.port)
        if capture:
            out = os.path.join(workdir, f"capture-{proxy.port}")
            proxy.post("/api/traffic/capture", {"output": out, "duration": "1h"}, timeout=120)
        sysbench(config, workload, threads, events[0])  # warm-up: caches, statements, the writer's first file
        runs = []
        for n in events:
            proxy.callgrind("-z")
            t0 = time.monotonic()
            queries = sysbench(config, workload, threads, n)
            wall = time.monotonic() - t0
            runs.append({"events": n, "queries": queries, "wall_s": round(wall, 3), "dump": proxy.dump()})
        proxy.callgrind("-z")
        t0 = time.monotonic()
        time.sleep(idle)
        idle_ir = proxy.dump()
        idle_s = time.monotonic() - t0
        if capture:
            proxy.post("/api/traffic/cancel", {"type": "capture"}, timeout=120)
    finally:
        proxy.stop()
    *busy, idle_ir = _by_kind([r.pop("dump") for r in runs] + [idle_ir])
    for r, ir in zip(runs, busy):
        r["ir"] = ir
    (a, b) = runs[0], runs[-1]
    dq = b["queries"] - a["queries"]
    kinds = sorted(set(a["ir"]) | set(b["ir"]))
    per_query = {k: (b["ir"].get(k, 0) - a["ir"].get(k, 0)) / dq for k in kinds}
    return {"capture": capture, "runs": runs, "ir_per_query": per_query,
            "ir_per_query_total": sum(per_query.values()),
            "queries_per_wall_s": dq / (b["wall_s"] - a["wall_s"]) if b["wall_s"] > a["wall_s"] else None,
            "idle_s": round(idle_s, 3), "idle_ir_per_s": {k: v / idle_s for k, v in idle_ir.items()}}


def measure_native(db, io, workdir, workload, threads, events) -> dict:
    """User CPU per query natively, capture off, by the same slope (for the ns per instruction)."""
    proxy = Proxy(db, io, workdir, callgrind=False)
    try:
        config = sysbench_config(workdir, proxy.port)
        sysbench(config, workload, threads, events[0])
        points = []
        for n in events:
            c0 = proxy.thread_cpu()
            q = sysbench(config, workload, threads, n)
            c1 = proxy.thread_cpu()
            points.append((q, {k: c1[k] - c0.get(k, 0.0) for k in c1}))
    finally:
        proxy.stop()
    (qa, ca), (qb, cb) = points[0], points[-1]
    user_s = sum(v - ca.get(k, 0.0) for k, v in cb.items() if k != "system")
    if user_s < 0.5:  # /proc counts 10-ms clock ticks
        print(f"warning: the native runs differ by {user_s:.2f} s of user CPU, a few clock ticks: "
              "raise --native-scale", file=sys.stderr)
    return {k: (cb[k] - ca.get(k, 0.0)) / (qb - qa) * 1e6 for k in cb}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default="oltp_point_select:8:4000:16000,oltp_read_write:16:250:1000",
                    help="workload:threads:A:B, comma-separated; A and B: sysbench events of the two runs "
                         "whose difference is the slope (a read/write event is 18 queries)")
    ap.add_argument("--io", default="epoll", help="proxy.io (default epoll: under valgrind 3.19 a proxy on "
                                                  "io_uring did not start here)")
    ap.add_argument("--native-scale", type=int, default=5, help="the native calibration runs make this many "
                                                                "times A and B events")
    ap.add_argument("--repeat", type=int, default=2, help="off/on pairs per workload, interleaved")
    ap.add_argument("--idle", type=float, default=5.0, help="seconds idle, to count the timers' work")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the callgrind dumps (for callgrind_annotate)")
    args = ap.parse_args()
    for tool in ("valgrind", "callgrind_control", "sysbench"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not installed")
    workdir = tempfile.mkdtemp(prefix="fastproxy-cg-")
    results: dict = {"machine": machine(), "argv": sys.argv[1:], "workloads": {}}
    db = ScratchMariaDB().start()
    try:
        db.sql("CREATE DATABASE IF NOT EXISTS sbtest")
        sysbench(sysbench_config(workdir, db.port), "oltp_read_write", 4, 0, "prepare")
        for spec in args.workloads.split(","):
            workload, threads, a, b = spec.split(":")
            threads, events = int(threads), [int(a), int(b)]
            native_events = [n * args.native_scale for n in events]
            rows = []
            for rnd in range(args.repeat):
                for capture in (False, True):
                    r = measure_callgrind(db, args.io, workdir, workload, threads, events, capture, args.idle)
                    r["round"] = rnd + 1
                    rows.append(r)
                    print(_row_text(workload, r), flush=True)
            native = measure_native(db, args.io, workdir, workload, threads, native_events)
            results["workloads"][workload] = {"threads": threads, "callgrind": rows, "native_user_us_per_query": native}
            print(_summary_text(workload, rows, native), flush=True)
    finally:
        db.stop()
        if args.keep:
            print(f"callgrind dumps kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


def _row_text(workload: str, r: dict) -> str:
    per = "  ".join(f"{k} {v:,.0f}" for k, v in sorted(r["ir_per_query"].items()))
    idle = "  ".join(f"{k} {v / 1e3:,.0f}k" for k, v in sorted(r["idle_ir_per_s"].items()))
    return (f"{workload} round {r['round']} capture {'on ' if r['capture'] else 'off'}: "
            f"{r['ir_per_query_total']:,.0f} instructions/query ({per}); idle per second: {idle}; "
            f"{r['queries_per_wall_s'] or 0:,.0f} queries/s under callgrind")


def _summary_text(workload: str, rows: list[dict], native: dict) -> str:
    lines = [f"== {workload}"]
    deltas = []
    for rnd in sorted({r["round"] for r in rows}):
        off = next(r for r in rows if r["round"] == rnd and not r["capture"])
        on = next(r for r in rows if r["round"] == rnd and r["capture"])
        kinds = sorted(set(off["ir_per_query"]) | set(on["ir_per_query"]))
        d = {k: on["ir_per_query"].get(k, 0) - off["ir_per_query"].get(k, 0) for k in kinds}
        deltas.append(sum(d.values()))
        lines.append(f"  round {rnd}: capture adds {sum(d.values()):,.0f} instructions/query: "
                     + ", ".join(f"{k} {v:+,.0f}" for k, v in d.items()))
    off_total = sorted(r["ir_per_query_total"] for r in rows if not r["capture"])
    user = {k: v for k, v in native.items() if k != "system"}
    user_us = sum(user.values())
    ns_per_ir = user_us * 1e3 / off_total[len(off_total) // 2]
    lines.append(f"  native, capture off: {user_us:.2f} µs user CPU/query "
                 f"({', '.join(f'{k} {v:.2f}' for k, v in sorted(user.items()))}; the kernel: "
                 f"{native.get('system', 0):.2f} µs) -> {ns_per_ir:.3f} ns/instruction")
    lines.append("  capture's extra user-space CPU per query at that rate: "
                 + ", ".join(f"{d * ns_per_ir / 1e3:+.3f} µs" for d in deltas))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
