#!/usr/bin/env python3
"""End-to-end: sysbench through fastproxy, beside a direct connection and HAProxy (TCP), in one run.

    python bench/e2e.py --time 20 [--json out.json] [--only direct,fastproxy] [--tables 4 --table-size 10000]

One scratch MariaDB (fastproxy.scratch_db) is started and loaded with sysbench tables; then every
workload runs against every target, one at a time. For each run: QPS and p95 latency (from
sysbench's report) and the CPU time the proxy process (and mariadbd) spent per query, from
utime+stime in /proc/PID/stat before and after the run.

Targets are small classes with start(db) -> port, stop() and pid; add a row by appending to
TARGETS (e.g. "fastproxy + capture": a FastproxyTarget whose start() also POSTs
/api/traffic/capture; a replay row likewise).
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
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fastproxy.scratch_db import ROOT_PASSWORD, ScratchMariaDB, free_port  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
WORKLOADS = [("oltp_point_select", 8), ("oltp_read_write", 16)]
IGNORE_ERRORS = "1213,1020,1205,1062"  # deadlocks / lock waits under 16 threads: counted, not fatal


def cpu_seconds(pid: int | None) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        # the command name (field 2) may contain spaces: split after its closing parenthesis
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


# ---- targets -----------------------------------------------------------------------------------

class Target:
    name = "?"
    note = ""
    pid: int | None = None  # the proxy process whose CPU is measured (None: no proxy)

    def available(self) -> str | None:
        """None if it can run here, else why not."""
        return None

    def start(self, db: ScratchMariaDB) -> int:
        raise NotImplementedError

    def stop(self) -> None:
        pass


class Direct(Target):
    name = "direct"
    note = "sysbench -> mariadbd"

    def start(self, db):
        return db.port


class HAProxyTarget(Target):
    name = "haproxy"
    note = "HAProxy mode tcp, nbthread 1 (single-threaded like fastproxy)"

    def available(self):
        return None if shutil.which("haproxy") else "haproxy not installed"

    def start(self, db):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="fastproxy-haproxy-")
        cfg = os.path.join(self.dir, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(f"""global
    nbthread 1
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend fe
    bind 127.0.0.1:{self.port}
    default_backend be
backend be
    server db {db.host}:{db.port}
""")
        self.proc = subprocess.Popen([shutil.which("haproxy"), "-db", "-f", cfg],
                                     stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.dir, "log"), "w"))
        wait_port(self.port, proc=self.proc)
        self.pid = self.proc.pid
        return self.port

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


class FastproxyTarget(Target):
    name = "fastproxy"
    note = "python -m fastproxy serve (uvloop, one thread on the network path)"

    def __init__(self, *extra_args: str, name: str | None = None):
        self.extra_args = list(extra_args)
        if name:
            self.name = name

    def start(self, db):
        self.port, self.api_port = free_port(), free_port()
        self.log_path = f"/tmp/fastproxy-e2e-{self.port}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fastproxy", "serve", f"--proxy.addr=127.0.0.1:{self.port}",
             f"--api.addr=127.0.0.1:{self.api_port}", f"--proxy.backends={db.addr}", "--log.level=warn",
             *self.extra_args],
            stdout=subprocess.DEVNULL, stderr=open(self.log_path, "w"),
            cwd=str(Path(__file__).resolve().parent.parent))
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fastproxy exited {self.proc.returncode}: {Path(self.log_path).read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/api/debug/health", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.pid = self.proc.pid
        return self.port

    def api_post(self, path: str, form: dict) -> str:
        """For rows that drive the HTTP API (capture, replay)."""
        import urllib.parse

        data = urllib.parse.urlencode(form).encode()
        with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{self.api_port}{path}", data=data),
                                    timeout=30) as r:
            return r.read().decode()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        log = Path(self.log_path).read_text()
        if "Traceback" in log:
            print(f"warning: fastproxy logged an exception (see {self.log_path})", file=sys.stderr)


TARGETS: list[Target] = [Direct(), HAProxyTarget(), FastproxyTarget()]


# ---- sysbench ----------------------------------------------------------------------------------

@dataclass
class Result:
    target: str
    workload: str
    threads: int
    seconds: float
    queries: int = 0
    qps: float = 0.0
    tps: float = 0.0
    p95_ms: float = 0.0
    errors: int = 0
    proxy_cpu_s: float | None = None
    proxy_cpu_us_per_query: float | None = None
    db_cpu_us_per_query: float = 0.0
    note: str = ""
    raw: str = field(default="", repr=False)


def sysbench_args(db_port: int, args) -> list[str]:
    return ["--db-driver=mysql", "--mysql-host=127.0.0.1", f"--mysql-port={db_port}", "--mysql-user=root",
            f"--mysql-password={ROOT_PASSWORD}", "--mysql-db=sbtest", f"--tables={args.tables}",
            f"--table-size={args.table_size}"]


def parse_sysbench(out: str) -> dict:
    def num(pattern, cast=float, default=0):
        m = re.search(pattern, out)
        return cast(m.group(1)) if m else default

    return dict(
        queries=num(r"total:\s+(\d+)", int),
        qps=num(r"queries:\s+\d+\s+\(([\d.]+) per sec"),
        tps=num(r"transactions:\s+\d+\s+\(([\d.]+) per sec"),
        p95_ms=num(r"95th percentile:\s+([\d.]+)"),
        errors=num(r"ignored errors:\s+(\d+)", int),
        seconds=num(r"total time:\s+([\d.]+)s"),
    )


def run_one(target: Target, port: int, workload: str, threads: int, db: ScratchMariaDB, args) -> Result:
    cmd = ["sysbench", workload, *sysbench_args(port, args), f"--threads={threads}", f"--time={args.time}",
           "--report-interval=0", "--percentile=95", "--histogram=off", f"--mysql-ignore-errors={IGNORE_ERRORS}",
           "--db-ps-mode=auto", "run"]
    cpu0, db0 = cpu_seconds(target.pid), cpu_seconds(db.proc.pid)
    res = subprocess.run(cmd, capture_output=True, text=True)
    cpu1, db1 = cpu_seconds(target.pid), cpu_seconds(db.proc.pid)
    if res.returncode != 0:
        raise RuntimeError(f"sysbench {workload} via {target.name} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    p = parse_sysbench(res.stdout)
    r = Result(target.name, workload, threads, p.pop("seconds"), note=target.note, raw=res.stdout, **p)
    if r.queries:
        r.db_cpu_us_per_query = (db1 - db0) / r.queries * 1e6
        if target.pid is not None:
            r.proxy_cpu_s = cpu1 - cpu0
            r.proxy_cpu_us_per_query = r.proxy_cpu_s / r.queries * 1e6
    return r


def prepare(db: ScratchMariaDB, args) -> None:
    db.sql("CREATE DATABASE IF NOT EXISTS sbtest")
    subprocess.run(["sysbench", "oltp_read_write", *sysbench_args(db.port, args), f"--threads={min(args.tables, 4)}",
                    "prepare"], check=True, capture_output=True, text=True)


# ---- report ------------------------------------------------------------------------------------

def table(results: list[Result]) -> str:
    head = f"{'workload':<18} {'thr':>3} {'target':<22} {'QPS':>10} {'p95 ms':>8} {'proxy CPU us/q':>15} {'db CPU us/q':>12} {'errors':>6}"
    lines = [head, "-" * len(head)]
    for r in results:
        cpu = f"{r.proxy_cpu_us_per_query:.1f}" if r.proxy_cpu_us_per_query is not None else "-"
        lines.append(f"{r.workload:<18} {r.threads:>3} {r.target:<22} {r.qps:>10,.0f} {r.p95_ms:>8.2f} {cpu:>15} "
                     f"{r.db_cpu_us_per_query:>12.1f} {r.errors:>6}")
    return "\n".join(lines)


def ratios(results: list[Result], a: str = "fastproxy", b: str = "haproxy") -> list[str]:
    out = []
    by = {(r.target, r.workload): r for r in results}
    for wl, _ in WORKLOADS:
        x, y = by.get((a, wl)), by.get((b, wl))
        if not (x and y and y.qps):
            continue
        line = f"{wl}: {a}/{b} QPS = {x.qps / y.qps:.2f}"
        if x.proxy_cpu_us_per_query and y.proxy_cpu_us_per_query:
            line += f", CPU us/query = {x.proxy_cpu_us_per_query / y.proxy_cpu_us_per_query:.2f}"
        out.append(line)
    return out


def machine() -> dict:
    model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": os.uname().release, "python": sys.version.split()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time", type=int, default=20, help="seconds per sysbench run (default 20)")
    ap.add_argument("--tables", type=int, default=4)
    ap.add_argument("--table-size", type=int, default=10_000)
    ap.add_argument("--only", default="", help="comma-separated target names (default: all)")
    ap.add_argument("--workloads", default="", help="comma-separated sysbench tests (default: all)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    targets = [t for t in TARGETS if not args.only or t.name in args.only.split(",")]
    workloads = [w for w in WORKLOADS if not args.workloads or w[0] in args.workloads.split(",")]
    print(f"machine: {machine()}")
    results: list[Result] = []
    skipped = {}
    with ScratchMariaDB(name="bench") as db:
        print(f"mariadbd on {db.addr}; preparing {args.tables} x {args.table_size} rows ...", flush=True)
        prepare(db, args)
        for target in targets:
            why = target.available()
            if why:
                skipped[target.name] = why
                print(f"skip {target.name}: {why}")
                continue
            port = target.start(db)
            try:
                for wl, threads in workloads:
                    print(f"{wl} x{threads} via {target.name} ({args.time}s) ...", flush=True)
                    results.append(run_one(target, port, wl, threads, db, args))
            finally:
                target.stop()
    # group by workload for reading
    order = {w: i for i, (w, _) in enumerate(WORKLOADS)}
    results.sort(key=lambda r: order.get(r.workload, 99))
    print()
    print(table(results))
    for line in ratios(results):
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "time": args.time, "tables": args.tables, "table_size": args.table_size,
                       "skipped": skipped, "results": [{k: v for k, v in asdict(r).items() if k != "raw"} for r in results]},
                      f, indent=2)


if __name__ == "__main__":
    main()
