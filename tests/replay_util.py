"""Helpers shared by the replay tests: capture a workload through a real proxy, replay it (standalone
CLI, in-process, or API), read captures and summaries, compare table checksums."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import threading
import time

from conftest import ProxyProcess, start_proxy, stop_proxy
from proxy_util import wait_for
from fastproxy.capture.reader import TrafficReader
from fastproxy._ringbuf import RingBuffer
from fastproxy.capture.record import KIND_COMMAND, KIND_CONN_OPEN
from fastproxy.capture.writer import CaptureWriter
from fastproxy.scratch_db import ROOT_PASSWORD


def write_capture(path: str, database: str, conns, commands, start_ns: int) -> None:
    """A capture written by hand, for a replay whose race must be certain: each of `conns` opens (as
    root, in `database`) at `start_ns`, then `commands` are appended in the order given, each as
    (the positional arguments of RingBuffer.append_command, its keyword arguments)."""
    rb = RingBuffer(1 << 20)
    w = CaptureWriter(rb, path)
    w.start()
    for conn in conns:
        rb.append_event(KIND_CONN_OPEN, conn, start_ns,
                        json.dumps({"user": "root", "db": database, "capabilities": 0}).encode())
    n = 0
    for args, kwargs in commands:
        rb.append_command(*args, **kwargs)
        n += 1
    w.stop({"commands": n, "start_ns": start_ns})


def last_job(proxy: ProxyProcess, kind: str) -> dict | None:
    jobs = [j for j in proxy.get("/api/traffic/show") if j["type"] == kind]
    return jobs[-1] if jobs else None


def wait_job(proxy: ProxyProcess, kind: str, timeout: float = 120) -> dict:
    def done():
        j = last_job(proxy, kind)
        return j if j and j["status"] != "running" else None

    return wait_for(done, timeout, 0.1, f"{kind} job to finish")


class Capture:
    """POST /api/traffic/capture on `proxy` around a block: `with Capture(proxy, out): workload()`."""

    def __init__(self, proxy: ProxyProcess, output: str, duration: str = "10m") -> None:
        self.proxy, self.output, self.duration = proxy, output, duration
        self.job: dict | None = None

    def __enter__(self) -> "Capture":
        status, body = self.proxy.post("/api/traffic/capture", {"output": self.output, "duration": self.duration})
        assert status == 200, body
        return self

    def __exit__(self, *exc) -> None:
        status, body = self.proxy.post("/api/traffic/cancel", {"type": "capture"})
        assert status == 200, body
        self.job = wait_job(self.proxy, "capture")
        wait_for(lambda: os.path.exists(os.path.join(self.output, "meta")), 30, what="capture meta")
        assert not self.job["error"], self.job


def read_meta(capture_dir: str) -> dict:
    with open(os.path.join(capture_dir, "meta")) as f:
        return json.load(f)


def records(capture_dir: str, key: bytes | None = None) -> list:
    return list(TrafficReader(capture_dir, key))


def commands(capture_dir: str) -> list:
    return [r for r in records(capture_dir) if r.kind == KIND_COMMAND]


def replay_cli(target: str, capture_dir: str, *args: str, username: str = "root", password: str = ROOT_PASSWORD,
               timeout: float = 180) -> tuple[subprocess.CompletedProcess, dict]:
    """`fastproxy replay` (standalone) as a subprocess; returns the process and the summary JSON it wrote."""
    before = set(glob.glob(os.path.join(_report_dir(capture_dir, args), "replay-*.json")))
    res = subprocess.run([sys.executable, "-m", "fastproxy", "replay", "--target", target, "--input", capture_dir,
                          "--username", username, "--password", password, *args],
                         capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout + res.stderr
    return res, newest_summary(_report_dir(capture_dir, args), exclude=before)


def _report_dir(capture_dir: str, args) -> str:
    args = list(args)
    return args[args.index("--report-dir") + 1] if "--report-dir" in args else capture_dir


def newest_summary(report_dir: str, exclude=()) -> dict:
    files = sorted(set(glob.glob(os.path.join(report_dir, "replay-*.json"))) - set(exclude), key=os.path.getmtime)
    assert files, f"no replay summary in {report_dir}"
    with open(files[-1]) as f:
        summary = json.load(f)
    summary["_path"] = files[-1]  # (the file does not list itself)
    return summary


def replay_inprocess(target_host: str, target_port: int, capture_dir: str, *, speed: float = 1.0,
                     readonly: bool = False, report_dir: str | None = None, write_tables: bool = False,
                     username: str = "root", password: str = ROOT_PASSWORD, during=None, **options):
    """Run a ReplayRun in this process (uvloop); returns (summary, engine). `during(engine)` runs in a
    thread while the replay runs (fault injection); `options`: more ReplayOptions fields."""
    import uvloop

    from fastproxy.replay.engine import ReplayOptions
    from fastproxy.replay.job import ReplayRun

    opts = ReplayOptions(host=target_host, port=target_port, username=username, password=password, speed=speed,
                         readonly=readonly, **options)
    run = ReplayRun(capture_dir, opts, report_dir, write_tables=write_tables)
    t = None
    if during is not None:
        t = threading.Thread(target=during, args=(run.engine,), daemon=True)
        t.start()
    summary = uvloop.run(run.run())
    if t is not None:
        t.join(60)
    return summary, run.engine


def checksums(db, database: str) -> dict[str, str]:
    tables = db.sql(f"SELECT table_name FROM information_schema.tables WHERE table_schema = '{database}' "
                    "ORDER BY table_name").split()
    assert tables, f"no tables in {database}"
    out = db.sql(f"CHECKSUM TABLE {', '.join(f'{database}.{t}' for t in tables)}")
    return dict(line.split("\t") for line in out.strip().splitlines())


def dump(db, database: str) -> str:
    """mariadb-dump of `database` (with the server's CA when it speaks TLS)."""
    return subprocess.run(["mariadb-dump", *db.client_args()[1:], "--databases", database], capture_output=True,
                          text=True, check=True).stdout


def dump_restore(src, dst, database: str) -> None:
    """mariadb-dump `database` from src and load it into dst (replacing it there)."""
    dst.sql(f"DROP DATABASE IF EXISTS {database};\n" + dump(src, database))


class Pacer:
    """Sends at absolute times t0 + k * interval (never drifts; late sends do not shift later ones)."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0

    def wait_until(self, t: float) -> None:
        d = t - time.monotonic()
        if d > 0:
            time.sleep(d)


def capture_for_replay_user(mariadb, mariadb_test, out: str, phases: list[tuple[float, float]], conns: int,
                            user: str, password: str) -> str:
    """`paced_workload(phases, conns)` captured into `out` through a proxy of its own in front of
    `mariadb`, and `user` (all privileges, from 127.0.0.1) created on the test server. Returns `out`."""
    from conftest import start_proxy, stop_proxy

    proxy = start_proxy([mariadb])
    try:
        with Capture(proxy, out):
            paced_workload(proxy.port, phases, conns)
    finally:
        stop_proxy(proxy)
    mariadb_test.sql(f"CREATE OR REPLACE USER {user}@'127.0.0.1' IDENTIFIED BY '{password}';"
                     f"GRANT ALL ON *.* TO {user}@'127.0.0.1';")
    return out


def paced_workload(port: int, phases: list[tuple[float, float]], conns: int, database: str | None = None,
                   stmt=lambda c, k: f"SELECT {c} + {k}") -> tuple[int, int, list[int]]:
    """`conns` mysqlclient connections through `port`; phases = [(seconds, total rate/s), ...] spread evenly
    over the connections. Returns (t0 wall ns, t_end wall ns, commands sent per connection)."""
    import MySQLdb

    clients = [MySQLdb.connect(host="127.0.0.1", port=port, user="root", password=ROOT_PASSWORD,
                               database=database or "", autocommit=True) for _ in range(conns)]
    start_mono = time.monotonic() + 0.2
    start_wall_ns = time.time_ns() + 200_000_000
    sent = [0] * conns
    errors: list[BaseException] = []

    def run(c: int) -> None:
        cur = clients[c].cursor()
        base = start_mono
        try:
            for seconds, rate in phases:
                per_conn = rate / conns
                interval = 1.0 / per_conn
                n = int(round(seconds * per_conn))
                offset = interval * c / conns  # connections interleave instead of firing together
                for k in range(n):
                    Pacer(base).wait_until(base + offset + k * interval)
                    cur.execute(stmt(c, k))
                    cur.fetchall()
                    sent[c] += 1
                base += seconds
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run, args=(c,)) for c in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for cl in clients:
        cl.close()
    assert not errors, errors
    end_wall_ns = start_wall_ns + int(sum(s for s, _ in phases) * 1e9)
    return start_wall_ns, end_wall_ns, sent


def sigkill_at_checkpoint(proc: subprocess.Popen, report_dir: str, ready, interval: float = 0.05,
                          what: str = "the replay to get far enough") -> dict:
    """SIGKILL the replay `proc` once its checkpoint (report_dir/replay.checkpoint) satisfies
    ready(checkpoint); returns that checkpoint."""
    def check():
        try:
            with open(os.path.join(report_dir, "replay.checkpoint")) as f:
                cp = json.load(f)
        except (OSError, ValueError):
            return None
        return cp if ready(cp) else None

    return sigkill_when(proc, check, interval, what)


def sigkill_when(proc: subprocess.Popen, check, interval: float, what: str):
    """SIGKILL the replay `proc` once check() is true (asked every `interval` s, for at most 120 s);
    returns what check() returned."""
    import signal

    try:
        found = wait_for(check, 120, interval, what)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    return found


def capture_workers(db, out: str, worker, count: int, seconds: float, during=None) -> None:
    """Capture `count` threads of worker(port, k, deadline, errors) for `seconds` through a proxy of
    its own in front of `db`, into `out`; during(port), if given, runs beside them. No worker may fail."""
    proxy = start_proxy([db])
    errors: list = []
    try:
        with Capture(proxy, out):
            deadline = time.monotonic() + seconds
            threads = [threading.Thread(target=worker, args=(proxy.port, k, deadline, errors)) for k in range(count)]
            for t in threads:
                t.start()
            if during is not None:
                during(proxy.port)
            for t in threads:
                t.join()
    finally:
        stop_proxy(proxy)
    assert not errors, errors
