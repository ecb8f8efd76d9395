#!/usr/bin/env python3
"""End-to-end: sysbench through fastproxy, beside a direct connection, HAProxy (TCP) and a minimal C
relay (the floor), in one run.

    python bench/e2e.py --time 20 [--rounds 3] [--json out.json] [--only direct,fastproxy] [--profile]

One scratch MariaDB (fastproxy.scratch_db) is started and loaded with sysbench tables; then every
workload runs against every target, one at a time. For each run: QPS and p95 latency (from
sysbench's report) and the CPU time the proxy process (and mariadbd) spent per query, from
utime+stime in /proc/PID/stat before and after the run.

Targets are small classes with start(db) -> port, stop() and pid; add a row by appending to
TARGETS. Single-threaded rows (c-relay, c-relay-uring, haproxy `nbthread 1`, fastproxy
`proxy.workers = 1`) and two-thread rows (haproxy-2t, fastproxy-2w) run one after the other; with
--rounds N every target runs N times, interleaved, and the ratios are per round (their median is
printed), which keeps drift on a shared machine out of them. --profile adds a run per fastproxy
row under `perf stat --per-thread` (CPU, context switches and system calls per thread and per
query).

TARGETS (e.g. "fastproxy + capture": a FastproxyTarget whose start() also POSTs
/api/traffic/capture; a replay row likewise).

TLS rows (sysbench `--mysql-ssl=on`, connections kept open): `direct+tls` (TLS to mariadbd),
`haproxy+tls` (HAProxy in TCP mode passing the client's TLS through to mariadbd: HAProxy cannot
terminate MySQL's TLS, which starts inside the protocol after the greeting, so it does no crypto
here — not the same work as fastproxy's), `fastproxy+tls` (fastproxy terminates the client's TLS,
plain to mariadbd, with mariadbd's certificate; relayed by the data plane with OpenSSL), `fastproxy+tls-py`
(the same, relayed in Python: `proxy.tls-in-dataplane = false`), `haproxy+tls-term` (HAProxy
terminating TLS with `bind ... ssl crt`, the same crypto as fastproxy+tls; fed by a second HAProxy
that wraps sysbench's plain connections in TLS, whose CPU is not counted). Then the cost of setting up a connection:
proxy CPU per new connection (plain and TLS, PyMySQL logging in and quitting in a loop), and what
that makes at 100 % of one core.
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
SYSBENCH_TLS_DIR = ""  # where sysbench runs for the +tls rows (main())
IGNORE_ERRORS = "1213,1020,1205,1062"  # deadlocks / lock waits under 16 threads: counted, not fatal


def cpu_times(pid: int | None) -> tuple[float, float]:
    """(utime, stime) of a process (all its threads), in seconds."""
    if pid is None:
        return 0.0, 0.0
    with open(f"/proc/{pid}/stat") as f:
        # the command name (field 2) may contain spaces: split after its closing parenthesis
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) / CLK_TCK, int(rest[12]) / CLK_TCK


def thread_cpu(pid: int | None) -> dict[str, float]:
    """CPU seconds (user + system) of a process's live threads, by role: "loop" (the main thread:
    uvloop), "workers" (the data plane's `fp-worker-N` threads). The rest of the process's CPU is
    the other threads' (the capture writer), including threads that have exited."""
    out = {"loop": 0.0, "workers": 0.0}
    if pid is None:
        return out
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                text = f.read()
        except OSError:  # the thread ended meanwhile
            continue
        comm = text[text.index("(") + 1:text.rindex(")")]
        rest = text.rsplit(")", 1)[1].split()
        cpu = (int(rest[11]) + int(rest[12])) / CLK_TCK
        if int(tid) == pid:
            out["loop"] += cpu
        elif comm.startswith("fp-worker"):
            out["workers"] += cpu
    return out


def cpu_seconds(pid: int | None) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    return sum(cpu_times(pid))


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
    client_tls = False  # sysbench connects with TLS (--mysql-ssl=on)

    def available(self) -> str | None:
        """None if it can run here, else why not."""
        return None

    def start(self, db: ScratchMariaDB) -> int:
        raise NotImplementedError

    def stop(self) -> None:
        pass

    def before_run(self, workload: str) -> None:
        """Called right before each sysbench run (e.g. to start a capture)."""

    def after_run(self, workload: str) -> None:
        """Called right after each sysbench run."""


class ProcessTarget(Target):
    """A relay run as a process of its own from a scratch directory (`self.dir`)."""

    def spawn(self, argv: list[str], **popen) -> int:
        self.proc = subprocess.Popen(argv, **popen)
        wait_port(self.port, proc=self.proc)
        self.pid = self.proc.pid
        return self.port

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


class Direct(Target):
    name = "direct"
    note = "sysbench -> mariadbd"

    def start(self, db):
        return db.port


class CRelayTarget(ProcessTarget):
    """bench/c_relay.c: a single-threaded epoll relay that only copies bytes (the floor)."""

    name = "c-relay"
    note = "bench/c_relay.c: epoll, one thread, copies bytes (the physical floor of a relay)"
    source = "c_relay"

    def available(self):
        return None if shutil.which("gcc") else "gcc not installed"

    def start(self, db):
        self.dir = tempfile.mkdtemp(prefix="fastproxy-crelay-")
        binary = os.path.join(self.dir, self.source)
        subprocess.run(["gcc", "-O2", "-o", binary, str(Path(__file__).resolve().parent / f"{self.source}.c")],
                       check=True)
        self.port = free_port()
        return self.spawn([binary, str(self.port), str(db.port)])


class CRelayUringTarget(CRelayTarget):
    """bench/c_relay_uring.c: the same relay on io_uring (raw system calls, <linux/io_uring.h>):
    one io_uring_enter per loop turn, multishot recv into provided buffers, fixed files."""

    name = "c-relay-uring"
    note = "bench/c_relay_uring.c: io_uring (multishot recv, provided buffers, fixed files), one thread"
    source = "c_relay_uring"

    def available(self):
        why = super().available()
        if why:
            return why
        if not os.path.exists("/usr/include/linux/io_uring.h"):
            return "no <linux/io_uring.h> (install linux-libc-dev)"
        try:
            if Path("/proc/sys/kernel/io_uring_disabled").read_text().strip() == "2":
                return "io_uring disabled (/proc/sys/kernel/io_uring_disabled = 2)"
        except OSError:
            pass
        return None


def haproxy_config(nbthread: int, bind: str, server: str, global_extra: str = "") -> str:
    """A TCP-mode HAProxy with one frontend and one server (`bind` and `server` lines' arguments)."""
    return f"""global
    nbthread {nbthread}
    maxconn 4096
{global_extra}defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend fe
    bind {bind}
    default_backend be
backend be
    server {server}
"""


class HAProxyTarget(ProcessTarget):
    name = "haproxy"
    note = "HAProxy mode tcp, nbthread 1"

    def __init__(self, nbthread: int = 1, name: str | None = None):
        self.nbthread = nbthread
        if name:
            self.name = name
            self.note = f"HAProxy mode tcp, nbthread {nbthread}"

    def available(self):
        return None if shutil.which("haproxy") else "haproxy not installed"

    def start(self, db):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="fastproxy-haproxy-")
        cfg = os.path.join(self.dir, "haproxy.cfg")
        Path(cfg).write_text(haproxy_config(self.nbthread, f"127.0.0.1:{self.port}", f"db {db.host}:{db.port}"))
        return self.spawn([shutil.which("haproxy"), "-db", "-f", cfg], stdout=subprocess.DEVNULL,
                          stderr=open(os.path.join(self.dir, "log"), "w"))


class FastproxyTarget(Target):
    name = "fastproxy"
    note = "python -m fastproxy serve, proxy.workers = 1 (proxy.io = auto: io_uring where allowed)"

    def __init__(self, *extra_args: str, name: str | None = None, workers: int = 1, io: str = "auto"):
        self.extra_args = [f"--proxy.workers={workers}", f"--proxy.io={io}", *extra_args]
        self.workers = workers
        if name:
            self.name = name
            self.note = f"python -m fastproxy serve, proxy.workers = {workers}, proxy.io = {io}"

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


class FastproxyCaptureTarget(FastproxyTarget):
    """fastproxy with a capture running during each sysbench run (lz4, default buffer)."""

    name = "fastproxy+capture"
    note = "fastproxy (proxy.workers = 1) with `traffic capture` running (lz4 files, 64 MiB ring buffer)"

    def __init__(self, workers: int = 1, name: str | None = None, io: str = "auto"):
        super().__init__(workers=workers, io=io)
        if name:
            self.name = name
            self.note = f"fastproxy (proxy.workers = {workers}, proxy.io = {io}) with `traffic capture` running"
        self.captures: dict[str, str] = {}
        self.capture_error: dict[str, str] = {}
        self.starting_data: dict[str, str] = {}  # workload -> mariadb-dump of sbtest before its capture
        self.db: ScratchMariaDB | None = None

    def start(self, db):
        self.db = db
        return super().start(db)

    def before_run(self, workload):
        if workload in self.captures:  # an earlier round's: only the last one is replayed
            shutil.rmtree(self.captures[workload], ignore_errors=True)
        # replays start from the data the capture started from (as a user restores a backup)
        self.starting_data[workload] = dump_sbtest(self.db)
        out = tempfile.mkdtemp(prefix=f"fastproxy-e2e-capture-{workload}-")
        os.rmdir(out)  # the capture creates it (0700)
        self.captures[workload] = out
        self.api_post("/api/traffic/capture", {"output": out, "duration": "1h"})

    def after_run(self, workload):
        self.api_post("/api/traffic/cancel", {"type": "capture"})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/api/traffic/show", timeout=10) as r:
                jobs = json.loads(r.read())
            if jobs and jobs[-1]["status"] != "running":
                self.capture_error[workload] = jobs[-1]["error"]
                return
            time.sleep(0.2)


class DirectTls(Direct):
    name = "direct+tls"
    note = "sysbench -TLS-> mariadbd"
    client_tls = True


class HAProxyTlsPassthrough(HAProxyTarget):
    name = "haproxy+tls"
    note = "HAProxy mode tcp passing TLS through to mariadbd (no crypto in HAProxy: it cannot terminate MySQL TLS)"
    client_tls = True


class HAProxyTlsTerminating(HAProxyTarget):
    """HAProxy terminating TLS (`bind ... ssl crt`), plain to mariadbd: the same crypto fastproxy
    does for a TLS client. A MySQL client cannot speak to it (MySQL's TLS starts inside the
    protocol, after the greeting; HAProxy's from the first byte), so a second HAProxy in front of it
    wraps sysbench's plain connections in TLS (`server ... ssl`). Only the terminating one's CPU is
    measured. Both pin TLS 1.3 with TLS_AES_256_GCM_SHA384, what fastproxy's TLS (Python's ssl
    defaults) and sysbench negotiate; `no-ssl-reuse`: every new connection is a full handshake."""

    name = "haproxy+tls-term"
    note = "HAProxy terminating TLS (bind ssl crt), fed by a second HAProxy that wraps sysbench in TLS"

    def start(self, db):
        self.dir = tempfile.mkdtemp(prefix="fastproxy-haproxy-tls-")
        pem = os.path.join(self.dir, "cert-and-key.pem")
        with open(pem, "w") as f:  # HAProxy takes the certificate and its key in one file
            for name in ("cacert.pem", "client-key.pem"):
                f.write(Path(SYSBENCH_TLS_DIR, name).read_text())
        suite = "TLS_AES_256_GCM_SHA384"
        self.port = free_port()
        self.pid = self._haproxy("terminator", haproxy_config(
            1, f"127.0.0.1:{self.port} ssl crt {pem}", f"db {db.host}:{db.port}",
            f"    ssl-default-bind-ciphersuites {suite}\n    ssl-default-bind-options ssl-min-ver TLSv1.3\n"), self.port)
        terminator_port, self.port = self.port, free_port()
        self.wrapper_pid = self._haproxy("wrapper", haproxy_config(
            1, f"127.0.0.1:{self.port}", f"terminator 127.0.0.1:{terminator_port} ssl verify none no-ssl-reuse",
            f"    ssl-default-server-ciphersuites {suite}\n    ssl-default-server-options ssl-min-ver TLSv1.3\n"),
            self.port)
        return self.port

    def _haproxy(self, name: str, config: str, port: int) -> int:
        cfg = os.path.join(self.dir, f"{name}.cfg")
        Path(cfg).write_text(config)
        proc = subprocess.Popen([shutil.which("haproxy"), "-db", "-f", cfg], stdout=subprocess.DEVNULL,
                                stderr=open(os.path.join(self.dir, f"{name}.log"), "w"))
        self.procs = [*getattr(self, "procs", []), proc]
        wait_port(port, proc=proc)
        return proc.pid

    def stop(self):
        for proc in self.procs:
            proc.terminate()
            proc.wait(timeout=10)
        self.procs = []
        shutil.rmtree(self.dir, ignore_errors=True)


class FastproxyTls(FastproxyTarget):
    note = "fastproxy terminating the client's TLS, plain to mariadbd (relayed by the data plane with OpenSSL)"
    client_tls = True

    def __init__(self, name="fastproxy+tls", in_dataplane=True):
        super().__init__(name=name)
        self.in_dataplane = in_dataplane
        if not in_dataplane:
            self.note = "fastproxy terminating the client's TLS, relayed in Python (proxy.tls-in-dataplane = false)"

    def start(self, db):
        # mariadbd's certificate: the one sysbench's cacert.pem holds (libmariadb checks it)
        self.extra_args = ["--proxy.workers=1", f"--security.server-tls.cert={SYSBENCH_TLS_DIR}/cacert.pem",
                           f"--security.server-tls.key={SYSBENCH_TLS_DIR}/client-key.pem",
                           f"--proxy.tls-in-dataplane={'true' if self.in_dataplane else 'false'}"]
        return super().start(db)


TARGETS: list[Target] = [Direct(), CRelayTarget(), CRelayUringTarget(), HAProxyTarget(), FastproxyTarget(),
                         FastproxyCaptureTarget(), FastproxyTarget(name="fastproxy-epoll", io="epoll"),
                         FastproxyCaptureTarget(name="fastproxy-epoll+capture", io="epoll"),
                         HAProxyTarget(2, name="haproxy-2t"), FastproxyTarget(name="fastproxy-2w", workers=2),
                         FastproxyCaptureTarget(workers=2, name="fastproxy-2w+capture"),
                         DirectTls(), HAProxyTlsPassthrough(), HAProxyTlsTerminating(), FastproxyTls(),
                         FastproxyTls("fastproxy+tls-py", in_dataplane=False)]


# ---- sysbench ----------------------------------------------------------------------------------

@dataclass
class Result:
    target: str
    workload: str
    threads: int
    seconds: float
    round: int = 0
    queries: int = 0
    qps: float = 0.0
    tps: float = 0.0
    p95_ms: float = 0.0
    errors: int = 0
    per_second_qps: list = field(default_factory=list)
    per_second_p95_ms: list = field(default_factory=list)  # each second's 95th-percentile latency
    proxy_cpu_s: float | None = None
    proxy_cpu_us_per_query: float | None = None
    proxy_user_us_per_query: float | None = None  # of which in user space (the rest: the kernel)
    # the proxy's CPU per query by thread: uvloop's main thread, the data-plane workers, the rest
    # (the capture writer)
    proxy_threads_us_per_query: dict = field(default_factory=dict)
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
        per_second_qps=[float(x) for x in re.findall(r"\]\s+thds:.*?qps:\s+([\d.]+)", out)],
        per_second_p95_ms=[float(x) for x in re.findall(r"\]\s+thds:.*?lat \(ms,95%\):\s+([\d.]+)", out)],
    )


def run_one(target: Target, port: int, workload: str, threads: int, db: ScratchMariaDB, args) -> Result:
    cmd = ["sysbench", workload, *sysbench_args(port, args), *(["--mysql-ssl=on"] if target.client_tls else []),
           f"--threads={threads}", f"--time={args.time}",
           "--report-interval=1", "--percentile=95", "--histogram=off", f"--mysql-ignore-errors={IGNORE_ERRORS}",
           "--db-ps-mode=auto", *([f"--rate={args.rate}"] if args.rate else []), "run"]
    target.before_run(workload)
    (user0, sys0), db0, threads0 = cpu_times(target.pid), cpu_seconds(db.proc.pid), thread_cpu(target.pid)
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=SYSBENCH_TLS_DIR if target.client_tls else None)
    (user1, sys1), db1, threads1 = cpu_times(target.pid), cpu_seconds(db.proc.pid), thread_cpu(target.pid)
    cpu0, cpu1 = user0 + sys0, user1 + sys1
    target.after_run(workload)
    if res.returncode != 0:
        raise RuntimeError(f"sysbench {workload} via {target.name} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    p = parse_sysbench(res.stdout)
    r = Result(target.name, workload, threads, p.pop("seconds"), note=target.note, raw=res.stdout, **p)
    if r.queries:
        r.db_cpu_us_per_query = (db1 - db0) / r.queries * 1e6
        if target.pid is not None:
            r.proxy_cpu_s = cpu1 - cpu0
            r.proxy_cpu_us_per_query = r.proxy_cpu_s / r.queries * 1e6
            r.proxy_user_us_per_query = (user1 - user0) / r.queries * 1e6
            by_role = {k: threads1[k] - threads0[k] for k in threads0}
            by_role["other"] = r.proxy_cpu_s - sum(by_role.values())
            r.proxy_threads_us_per_query = {k: v / r.queries * 1e6 for k, v in by_role.items()}
    return r


def prepare(db: ScratchMariaDB, args) -> None:
    db.sql("CREATE DATABASE IF NOT EXISTS sbtest")
    subprocess.run(["sysbench", "oltp_read_write", *sysbench_args(db.port, args), f"--threads={min(args.tables, 4)}",
                    "prepare"], check=True, capture_output=True, text=True)


# ---- report ------------------------------------------------------------------------------------

def table(results: list[Result]) -> str:
    head = (f"{'workload':<18} {'thr':>3} {'rnd':>3} {'target':<20} {'QPS':>10} {'p95 ms':>8} {'proxy CPU us/q':>15} "
            f"{'(user)':>7} {'db CPU us/q':>12} {'errors':>6}")
    lines = [head, "-" * len(head)]
    for r in results:
        cpu = f"{r.proxy_cpu_us_per_query:.1f}" if r.proxy_cpu_us_per_query is not None else "-"
        user = f"{r.proxy_user_us_per_query:.1f}" if r.proxy_user_us_per_query is not None else "-"
        lines.append(f"{r.workload:<18} {r.threads:>3} {r.round:>3} {r.target:<20} {r.qps:>10,.0f} {r.p95_ms:>8.2f} "
                     f"{cpu:>15} {user:>7} {r.db_cpu_us_per_query:>12.1f} {r.errors:>6}")
    return "\n".join(lines)


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    return (xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2) if xs else float("nan")


def _pairs(results: list[Result], a: str, b: str, wl: str) -> list[tuple[Result, Result]]:
    by = {(r.target, r.workload, r.round): r for r in results}
    rounds = sorted({r.round for r in results})
    return [(by[(a, wl, n)], by[(b, wl, n)]) for n in rounds if (a, wl, n) in by and (b, wl, n) in by]


def ratios(results: list[Result], a: str = "fastproxy", b: str = "haproxy", targets: str = "") -> list[str]:
    """a/b per round (same-run ratios) and their median."""
    out = []
    for wl in sorted({r.workload for r in results}):
        pairs = [(x, y) for x, y in _pairs(results, a, b, wl) if y.qps]
        if not pairs:
            continue
        q = [x.qps / y.qps for x, y in pairs]
        c = [x.proxy_cpu_us_per_query / y.proxy_cpu_us_per_query for x, y in pairs
             if x.proxy_cpu_us_per_query and y.proxy_cpu_us_per_query]
        line = f"{wl}: {a}/{b} QPS = {_median(q):.2f} (rounds: {', '.join(f'{v:.2f}' for v in q)})"
        if c:
            line += f", proxy CPU us/query = {_median(c):.2f} (rounds: {', '.join(f'{v:.2f}' for v in c)})"
        out.append(line + (f"  [target {targets}]" if targets else ""))
    return out


def capture_impact(results: list[Result], base_name: str = "fastproxy", cap_name: str = "fastproxy+capture") -> list[str]:
    """Capture's cost per round: average QPS drop, CPU per query added, and the worst full second
    against the no-capture average of the same round."""
    out = []
    for wl in sorted({r.workload for r in results}):
        pairs = [(b, c) for b, c in _pairs(results, base_name, cap_name, wl) if b.qps]
        cpu_added = [c.proxy_cpu_us_per_query - b.proxy_cpu_us_per_query for b, c in pairs
                     if b.proxy_cpu_us_per_query and c.proxy_cpu_us_per_query]
        if len(pairs) > 1:
            out.append(f"{wl} ({cap_name}), median of {len(pairs)} rounds: average QPS "
                       f"{_median([(c.qps / b.qps - 1) * 100 for b, c in pairs]):+.1f}%"
                       + (f", CPU {_median(cpu_added):+.2f} us/query" if cpu_added else "")
                       + "".join(f", {role} {_median(roles):+.2f}" for role, roles in _thread_deltas(pairs).items()))
        for base, cap in pairs:
            worst = _worst_second(cap)
            own = _worst_second(base)  # the box's own noise: the no-capture row's worst second
            cpu = ""
            if base.proxy_cpu_us_per_query and cap.proxy_cpu_us_per_query:
                cpu = f", CPU {cap.proxy_cpu_us_per_query - base.proxy_cpu_us_per_query:+.2f} us/query (target <= +1)"
            out.append(f"{wl} round {base.round} ({cap_name}): capture average QPS {(cap.qps / base.qps - 1) * 100:+.1f}% "
                       f"(target >= -2%){cpu}, worst 1-s interval {(worst / base.qps - 1) * 100:+.1f}% of the "
                       f"no-capture average (target >= -5%; the no-capture row's own worst: "
                       f"{(own / base.qps - 1) * 100:+.1f}%); worst 1-s p95 latency {_worst_p95(cap):.2f} ms "
                       f"(no capture: {_worst_p95(base):.2f} ms)")
    return out


def _thread_deltas(pairs) -> dict[str, list[float]]:
    """Per round, capture on minus off in each thread role's CPU per query."""
    out: dict[str, list[float]] = {}
    for b, c in pairs:
        for role, v in c.proxy_threads_us_per_query.items():
            if role in b.proxy_threads_us_per_query:
                out.setdefault(role, []).append(v - b.proxy_threads_us_per_query[role])
    return out


def _worst_p95(r: Result) -> float:
    """The slowest second's p95: at a fixed --rate the QPS stays flat, and a stall shows here."""
    seconds = r.per_second_p95_ms[1:-1] or r.per_second_p95_ms
    return max(seconds) if seconds else 0.0


def _worst_second(r: Result) -> float:
    seconds = r.per_second_qps[1:-1] or r.per_second_qps  # first/last seconds are partial
    return min(seconds) if seconds else 0.0


# ---- per-thread profile (perf stat --per-thread; software events and syscall tracepoints) ------

PROFILE_EVENTS = ["task-clock", "context-switches", "syscalls:sys_enter_futex", "syscalls:sys_enter_epoll_wait",
                  "syscalls:sys_enter_recvfrom", "syscalls:sys_enter_sendto", "syscalls:sys_enter_io_uring_enter"]


def profile_run(target: Target, port: int, workload: str, threads: int, db: ScratchMariaDB, args) -> list[str]:
    """One more sysbench run with `perf stat --per-thread` on the proxy; per thread: CPU ms, and
    per query: context switches and system calls. A contended lock would show as futex calls."""
    if not shutil.which("perf"):
        return ["perf not installed"]
    perf = subprocess.Popen(["perf", "stat", "--per-thread", "-x", ",", "-e", ",".join(PROFILE_EVENTS),
                             "-p", str(target.pid)], stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    r = run_one(target, port, workload, threads, db, args)
    perf.send_signal(2)
    _, err = perf.communicate(timeout=30)
    per_thread: dict[str, dict[str, float]] = {}
    for line in err.splitlines():
        f = line.split(",")  # comm-tid,value,unit,event,...
        if len(f) < 4 or f[3] not in PROFILE_EVENTS:
            continue
        try:
            value = float(f[1])
        except ValueError:
            continue
        # per thread kind: fp-worker-N, and python (the event loop, the capture writer, ...) summed
        name = f[0].rsplit("-", 1)[0]
        per_thread.setdefault(name, {})
        per_thread[name][f[3]] = per_thread[name].get(f[3], 0.0) + value
    out = [f"{workload} x{threads} via {target.name}: {r.queries} queries, {r.qps:,.0f} QPS (perf attached)"]
    for name, ev in sorted(per_thread.items()):
        if ev.get("task-clock", 0) < 1:
            continue
        q = max(1, r.queries)
        out.append(f"  {name:<16} CPU {ev.get('task-clock', 0):>9.0f} ms  per query: "
                   f"{ev.get('context-switches', 0) / q:.3f} ctx switches, "
                   f"{ev.get('syscalls:sys_enter_futex', 0) / q:.4f} futex, "
                   f"{ev.get('syscalls:sys_enter_epoll_wait', 0) / q:.3f} epoll_wait, "
                   f"{ev.get('syscalls:sys_enter_recvfrom', 0) / q:.3f} recvfrom, "
                   f"{ev.get('syscalls:sys_enter_sendto', 0) / q:.3f} sendto, "
                   f"{ev.get('syscalls:sys_enter_io_uring_enter', 0) / q:.3f} io_uring_enter")
    return out


def dump_sbtest(db: ScratchMariaDB) -> str:
    return subprocess.run(["mariadb-dump", "--no-defaults", "-h127.0.0.1", f"-P{db.port}", "-uroot",
                           f"-p{ROOT_PASSWORD}", "--databases", "sbtest"], capture_output=True, text=True,
                          check=True).stdout


def run_replay(db: ScratchMariaDB, capture_dir: str, speed: float, order: str = "causal",
               starting_data: str | None = None) -> dict:
    """Replay a capture with the standalone replayer; its summary plus the replayer's CPU time."""
    if starting_data:
        db.sql("DROP DATABASE IF EXISTS sbtest;\n" + starting_data)
    report_dir = tempfile.mkdtemp(prefix="fastproxy-e2e-replay-")
    cmd = [sys.executable, "-m", "fastproxy", "replay", f"--target={db.addr}", f"--input={capture_dir}",
           "--username=root", f"--password={ROOT_PASSWORD}", f"--speed={speed}", "--no-report-tables",
           f"--report-dir={report_dir}", f"--order={order}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=str(Path(__file__).resolve().parent.parent))
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"replay failed: {out[-3000:]}")
    name = next(f for f in os.listdir(report_dir) if f.endswith(".json"))
    with open(os.path.join(report_dir, name)) as f:
        summary = json.load(f)
    shutil.rmtree(report_dir, ignore_errors=True)
    cpu = usage.ru_utime + usage.ru_stime
    n = max(1, summary["commands_replayed"])
    summary["replayer_cpu_us_per_command"] = round(cpu / n * 1e6, 1)
    return summary


def pace(replays: list[dict]) -> list[str]:
    """Causal order's cost: speed 1 against the captured QPS, speed 0 against per-connection order."""
    out = []
    by = {(r["workload"], r["speed"], r["order"]): r for r in replays}
    for (wl, speed, order), r in by.items():
        if order != "causal":
            continue
        if speed == 1 and r["qps_captured"]:
            out.append(f"{wl}: speed 1, causal order: {r['qps_replayed'] / r['qps_captured'] * 100:.1f}% of the "
                       f"captured QPS (target >= 98%)")
        base = by.get((wl, speed, "connection"))
        if speed == 0 and base and base["qps_replayed"]:
            out.append(f"{wl}: speed max, causal order: {r['qps_replayed'] / base['qps_replayed'] * 100:.1f}% of "
                       f"per-connection order's QPS (target >= 60%)")
    return out


def machine() -> dict:
    model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": os.uname().release, "python": sys.version.split()[0]}


def connection_setup(db: ScratchMariaDB, seconds: float) -> list[dict]:
    """Proxy CPU per new connection (log in, quit), plain and TLS, through fastproxy and HAProxy.
    haproxy+tls-term: PyMySQL connects in plain text to the wrapping HAProxy, which opens a TLS
    connection (a full handshake: no-ssl-reuse) to the terminating one, whose CPU is measured."""
    import ssl

    import pymysql

    rows = []
    rigs = [(FastproxyTarget(), False), (FastproxyTls(), True)]
    if shutil.which("haproxy"):
        rigs += [(HAProxyTarget(), False), (HAProxyTlsTerminating(), False)]
    for target, tls in rigs:
        port = target.start(db)
        try:
            ctx = None
            if tls:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            kw = dict(host="127.0.0.1", port=port, user="root", password=ROOT_PASSWORD)
            kw.update(ssl=ctx) if tls else kw.update(ssl_disabled=True)
            pymysql.connect(**kw).close()  # warm
            n, cpu0, t0 = 0, cpu_seconds(target.pid), time.monotonic()
            while time.monotonic() - t0 < seconds:
                pymysql.connect(**kw).close()
                n += 1
            cpu = cpu_seconds(target.pid) - cpu0
            per = cpu / n if n else 0.0
            rows.append({"target": target.name, "connections": n, "proxy_cpu_ms_per_connection": round(per * 1e3, 3),
                         "connections_per_s_at_one_core": round(1 / per) if per else None})
        finally:
            target.stop()
    return rows


def select_workloads(spec: str) -> list[tuple[str, int]]:
    """--workloads: "oltp_point_select,oltp_read_write:4" -> [(test, threads)], threads defaulting
    to WORKLOADS' (fewer threads leave the box headroom, so per-second QPS shows the proxy's own dips)."""
    if not spec:
        return list(WORKLOADS)
    default = dict(WORKLOADS)
    out = []
    for item in spec.split(","):
        name, _, threads = item.partition(":")
        if name not in default:
            raise SystemExit(f"--workloads: unknown test {name!r} (known: {', '.join(default)})")
        out.append((name, int(threads) if threads else default[name]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time", type=int, default=20, help="seconds per sysbench run (default 20)")
    ap.add_argument("--rounds", type=int, default=1, help="run every target this many times, interleaved")
    ap.add_argument("--tables", type=int, default=4)
    ap.add_argument("--table-size", type=int, default=10_000)
    ap.add_argument("--only", default="", help="comma-separated target names (default: all)")
    ap.add_argument("--workloads", default="",
                    help="comma-separated sysbench tests, each optionally name:threads (default: all, at "
                         + ", ".join(f"{w}:{t}" for w, t in WORKLOADS) + ")")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--no-replay", action="store_true", help="skip replaying the captures")
    ap.add_argument("--profile", action="store_true", help="one more run per fastproxy row under perf stat")
    ap.add_argument("--orders", default="causal,connection",
                    help="replay orders to compare (comma-separated: causal, connection)")
    ap.add_argument("--speeds", default="0,1", help="replay speeds (comma-separated; 0 = as fast as possible)")
    ap.add_argument("--rate", type=int, default=0,
                    help="sysbench --rate: transactions per second per run (0 = as fast as it goes), e.g. a "
                         "capture the replayer can keep up with at speed 1")
    ap.add_argument("--setup-seconds", type=float, default=10.0,
                    help="seconds of connect/quit per row of the connection setup cost (0 = skip)")
    args = ap.parse_args()

    targets = [t for t in TARGETS if not args.only or t.name in args.only.split(",")]
    workloads = select_workloads(args.workloads)
    print(f"machine: {machine()}")
    results: list[Result] = []
    profiles: list[str] = []
    skipped = {}
    from fastproxy.tls import self_signed

    global SYSBENCH_TLS_DIR
    SYSBENCH_TLS_DIR = tempfile.mkdtemp(prefix="fastproxy-bench-certs-")
    cert, key = self_signed(SYSBENCH_TLS_DIR, "mariadbd")
    # sysbench 1.0's --mysql-ssl=on loads these three files from its working directory (it shows
    # them as its client certificate; the server does not ask for one, and nothing is verified)
    for name, src in (("cacert.pem", cert), ("client-cert.pem", cert), ("client-key.pem", key)):
        shutil.copy(src, os.path.join(SYSBENCH_TLS_DIR, name))
    setup = []
    # TLS offered (not required): plain rows stay plain, the +tls rows encrypt
    with ScratchMariaDB(name="bench", extra_args=[f"--ssl-cert={cert}", f"--ssl-key={key}", f"--ssl-ca={cert}"]) as db:
        print(f"mariadbd on {db.addr}; preparing {args.tables} x {args.table_size} rows ...", flush=True)
        prepare(db, args)
        for t in targets:
            why = t.available()
            if why:
                skipped[t.name] = why
                print(f"skip {t.name}: {why}")
        targets = [t for t in targets if t.name not in skipped]
        for rnd in range(1, args.rounds + 1):
            for target in targets:
                port = target.start(db)
                try:
                    for wl, threads in workloads:
                        print(f"round {rnd}: {wl} x{threads} via {target.name} ({args.time}s) ...", flush=True)
                        r = run_one(target, port, wl, threads, db, args)
                        r.round = rnd
                        results.append(r)
                        if args.profile and rnd == args.rounds and isinstance(target, FastproxyTarget):
                            profiles += profile_run(target, port, wl, threads, db, args)
                finally:
                    target.stop()
        replays = []
        cap = next((t for t in targets if isinstance(t, FastproxyCaptureTarget) and t.workers == 1), None)
        if cap and not args.no_replay:
            for wl, threads in workloads:
                if wl not in cap.captures or cap.capture_error.get(wl):
                    continue
                direct = next((r for r in results if r.target == "direct" and r.workload == wl), None)
                for speed, order in [(float(sp), o) for sp in args.speeds.split(",") for o in args.orders.split(",")]:
                    print(f"replay of the {wl} x{threads} capture at speed {speed or 'max'}, order {order} ...",
                          flush=True)
                    sm = run_replay(db, cap.captures[wl], speed, order, cap.starting_data.get(wl))
                    replays.append({"workload": wl, "threads": threads, "speed": speed, "order": order,
                                    "replayed": sm["commands_replayed"], "elapsed_s": sm["elapsed_seconds"],
                                    "qps_replayed": sm["qps_replayed"], "qps_captured": sm["qps_captured"],
                                    "sysbench_direct_qps": direct.qps if direct else None,
                                    "lag_p99_ms": sm["lag"]["p99_ms"], "lag_max_ms": sm["lag"]["max_ms"],
                                    "replayer_cpu_us_per_command": sm["replayer_cpu_us_per_command"],
                                    "failed": sm["commands_failed"], "other_errors": sm["other_errors"],
                                    "causal": sm.get("causal"), "transactions": sm.get("transactions")})
        for d in getattr(cap, "captures", {}).values():
            shutil.rmtree(d, ignore_errors=True)
        if args.setup_seconds:
            print(f"connection setup cost ({args.setup_seconds:g}s per row) ...", flush=True)
            setup = connection_setup(db, args.setup_seconds)
    # group by workload for reading
    order = {w: i for i, (w, _) in enumerate(WORKLOADS)}
    results.sort(key=lambda r: (order.get(r.workload, 99), r.round))
    print()
    print(table(results))
    summary = (ratios(results, "fastproxy", "haproxy", "QPS >= 1.05, CPU <= 0.85")
               + ratios(results, "fastproxy", "c-relay")
               + ratios(results, "fastproxy", "c-relay-uring")
               + ratios(results, "fastproxy", "fastproxy-epoll")
               + ratios(results, "fastproxy-epoll", "haproxy")
               + ratios(results, "haproxy", "c-relay")
               + ratios(results, "c-relay-uring", "c-relay")
               + ratios(results, "c-relay-uring", "haproxy")
               + ratios(results, "fastproxy-2w", "haproxy-2t")
               + ratios(results, "fastproxy-2w", "fastproxy")
               + capture_impact(results) + capture_impact(results, "fastproxy-epoll", "fastproxy-epoll+capture")
               + capture_impact(results, "fastproxy-2w", "fastproxy-2w+capture"))
    print()
    for line in summary:
        print(line)
    if profiles:
        print()
        for line in profiles:
            print(line)
    if replays:
        print()
        print(f"{'replay of':<18} {'speed':>5} {'order':>10} {'replayed':>9} {'cmds/s':>9} {'captured qps':>12} "
              f"{'direct qps':>10} {'lag p99 ms':>10} {'CPU us/cmd':>10} {'failed':>6}")
        for r in replays:
            print(f"{r['workload']:<18} {r['speed'] or 'max':>5} {r['order']:>10} {r['replayed']:>9} "
                  f"{r['qps_replayed']:>9,.0f} {r['qps_captured'] or 0:>12,.0f} {r['sysbench_direct_qps'] or 0:>10,.0f} "
                  f"{r['lag_p99_ms']:>10} {r['replayer_cpu_us_per_command']:>10} {r['failed']:>6}")
        for line in pace(replays):
            print(line)
    if setup:
        print()
        print(f"{'new connections via':<20} {'connections':>11} {'proxy CPU ms/conn':>17} {'conn/s at 1 core':>16}")
        for r in setup:
            print(f"{r['target']:<20} {r['connections']:>11} {r['proxy_cpu_ms_per_connection']:>17} "
                  f"{r['connections_per_s_at_one_core'] or 0:>16,}")
    tls = {r.target: r for r in results if r.workload == "oltp_point_select"}
    if "fastproxy+tls" in tls and "haproxy+tls" in tls and tls["haproxy+tls"].proxy_cpu_us_per_query:
        f, h = tls["fastproxy+tls"].proxy_cpu_us_per_query, tls["haproxy+tls"].proxy_cpu_us_per_query
        print(f"point_select over TLS: fastproxy (terminating) {f:.1f} us/q vs HAProxy (passing through) "
              f"{h:.1f} us/q: x{f / h:.2f}")
    if "fastproxy+tls" in tls and "haproxy+tls-term" in tls:
        for fr, hr in _pairs(results, "fastproxy+tls", "haproxy+tls-term", "oltp_point_select"):
            f, h = fr.proxy_cpu_us_per_query, hr.proxy_cpu_us_per_query
            print(f"round {fr.round}: point_select over TLS, both terminating: fastproxy {f:.1f} us/q vs HAProxy "
                  f"{h:.1f} us/q: x{f / h:.2f} (target <= 1)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "time": args.time, "rounds": args.rounds, "tables": args.tables,
                       "table_size": args.table_size, "skipped": skipped, "replays": replays, "summary": summary,
                       "profiles": profiles, "connection_setup": setup,
                       "results": [{k: v for k, v in asdict(r).items() if k != "raw"} for r in results]},
                      f, indent=2)


if __name__ == "__main__":
    main()
