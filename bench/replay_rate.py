#!/usr/bin/env python3
"""What one replayer process can drive: commands/s per core at speed 0, the dry run's decode +
schedule rate, and one capture replayed by 1 and by 2 shard processes, beside what one proxy
thread relays — all in one run.

    python bench/replay_rate.py [--time 15] [--before /path/to/older/checkout] [--json out.json]
    python bench/replay_rate.py --keep-captures /tmp/caps      # keep the captures (and their starting data)
    python bench/replay_rate.py --captures /tmp/caps           # reuse them (no sysbench this time)

One scratch MariaDB loaded with sysbench tables; `fastproxy serve` with `traffic capture` running
records `oltp_point_select` (8 threads) and `oltp_read_write` (16 threads) for `--time` seconds
each. The same sysbench runs through a plain `fastproxy serve` (no capture; one thread relays every
connection), once at the start of each round beside that round's replays (this box drifts: one
measure decided the ratio more than the replayer did), give the proxy's CPU per relayed query, so
"what one proxy thread relays per core" is 1 / (median proxy CPU per query). Then each capture is replayed with the standalone `fastproxy replay
--speed 0 --no-report-tables` (each replay from the data its capture started from), `--rounds`
times, alternating the `--before` checkout (if given) and this one, so that both see the same
machine. Per replay: commands/s (wall), the replayer's CPU per command during the replay (the
summary's `replayer_cpu_seconds`: all threads of the process, start-up and the HTML page left out)
and so commands per CPU-second ("per core"). Then the same with `--dry-run` (no connection: decode,
filter, plan, schedule), with `--pipeline 8` and `--pipeline 64` (reads sent without waiting for the
answer before them, up to that many in flight per connection; `--pipeline N[,M...]` to choose, 1 for
none), and `--shard 0/1` against `--shard 0/2`
+ `--shard 1/2` started together with `--start-at`.

Beside the point-select replays (each round, same server, same data), bench/c_replay_floor.c: the
least CPU any replayer spends per command here (one send and one receive per command, in C, nothing
else; on epoll, and on io_uring when liburing-dev is installed) — what the target can be measured
against (`--no-floor` skips it) — and the same on epoll with 4 commands in flight per connection
(pipelined: what a replayer that pipelines at speed 0 could save).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from e2e import FastproxyCaptureTarget, FastproxyTarget, WORKLOADS, machine, prepare, run_one  # noqa: E402
from fastproxy.scratch_db import ROOT_PASSWORD, ScratchMariaDB  # noqa: E402


def relay_once(target: FastproxyTarget, port: int, db: ScratchMariaDB, wl: str, threads: int, args) -> dict:
    """One sysbench run through a plain proxy (one thread relays every connection, no capture): what
    it spends per relayed query."""
    print(f"relaying {wl} x{threads} for {args.time}s (no capture) ...", flush=True)
    r = run_one(target, port, wl, threads, db, args)
    return {"qps": r.qps, "proxy_cpu_us_per_query": r.proxy_cpu_us_per_query}


def relay_median(runs: list[dict]) -> dict:
    """The median of a workload's relay runs (one each round, beside its replays: this box drifts)."""
    us = sorted(r["proxy_cpu_us_per_query"] for r in runs if r.get("proxy_cpu_us_per_query"))
    qps = sorted(r["qps"] for r in runs)
    out = {"rounds": runs, "qps": qps[len(qps) // 2] if qps else 0}
    if us:
        out["proxy_cpu_us_per_query"] = us[len(us) // 2]
        out["relay_qps_per_core"] = round(1e6 / out["proxy_cpu_us_per_query"])
    return out


def make_captures(db: ScratchMariaDB, args) -> tuple[dict, dict, dict]:
    """{workload: capture dir}, {workload: starting data}, {workload: proxy CPU µs per query}."""
    target = FastproxyCaptureTarget()
    port = target.start(db)
    relay = {}
    try:
        for wl, threads in WORKLOADS:
            print(f"capturing {wl} x{threads} for {args.time}s ...", flush=True)
            r = run_one(target, port, wl, threads, db, args)
            relay[wl] = {"qps": r.qps, "proxy_cpu_us_per_query": r.proxy_cpu_us_per_query}
            if target.capture_error.get(wl):
                raise RuntimeError(f"capture of {wl} failed: {target.capture_error[wl]}")
    finally:
        target.stop()
    return target.captures, target.starting_data, relay


def replay(checkout: Path, db: ScratchMariaDB, capture: str, *extra: str, starting_data: str | None = None) -> dict:
    """One standalone replay (its summary, plus the process' CPU time and wall time)."""
    if starting_data:
        db.sql("DROP DATABASE IF EXISTS sbtest;\n" + starting_data)
    report_dir = tempfile.mkdtemp(prefix="fastproxy-rate-")
    proc = start_replay(checkout, db, capture, report_dir, *extra)
    return finish_replay(proc, report_dir)


def start_replay(checkout: Path, db: ScratchMariaDB, capture: str, report_dir: str, *extra: str):
    cmd = [sys.executable, "-m", "fastproxy", "replay", f"--target={db.addr}", f"--input={capture}",
           "--username=root", f"--password-file={password_file()}", "--speed=0", "--no-report-tables",
           f"--report-dir={report_dir}", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(checkout),
                            env=dict(os.environ, PYTHONPATH=str(checkout)))
    proc.t0 = time.monotonic()
    return proc


def finish_replay(proc, report_dir: str) -> dict:
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - proc.t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"replay failed: {out[-3000:]}")
    name = next(f for f in os.listdir(report_dir) if f.endswith(".json"))
    with open(os.path.join(report_dir, name)) as f:
        s = json.load(f)
    shutil.rmtree(report_dir, ignore_errors=True)
    process_cpu = usage.ru_utime + usage.ru_stime
    # the replay itself (summary's replayer_cpu_seconds), not the start-up, the summary files, the HTML page
    cpu = s.get("replayer_cpu_seconds") or process_cpu
    n = max(1, s["commands_replayed"])
    s["_process_cpu_s"] = process_cpu
    s["_cpu_s"] = cpu
    s["_wall_s"] = wall
    s["_cpu_us_per_command"] = round(cpu / n * 1e6, 2)
    s["_commands_per_cpu_s"] = round(n / cpu) if cpu else None
    return s


FLOOR_CONNECTIONS = 8  # as the point-select capture's sysbench threads


def build_floor() -> tuple[str | None, bool]:
    """bench/c_replay_floor.c, built against libmariadb (None, saying why, if it cannot be), and whether
    it drives io_uring too (with liburing's header: liburing-dev)."""
    config = shutil.which("mariadb_config")
    if not shutil.which("gcc") or not config:
        print("no gcc or mariadb_config (libmariadb-dev): the floor is skipped", flush=True)
        return None, False
    flags = subprocess.run([config, "--cflags", "--libs"], check=True, capture_output=True, text=True).stdout.split()
    binary = os.path.join(tempfile.mkdtemp(prefix="fastproxy-floor-"), "c_replay_floor")
    uring = os.path.exists("/usr/include/liburing.h")
    if not uring:
        print("no liburing.h (liburing-dev): the floor runs on epoll only", flush=True)
    subprocess.run(["gcc", "-O2", "-o", binary, str(HERE / "c_replay_floor.c"), *flags]
                   + (["-DWITH_URING", "-luring"] if uring else []), check=True)
    return binary, uring


FLOOR_PIPELINE_DEPTH = 4  # commands in flight per connection in the pipelined floor


def floor(binary: str, db: ScratchMariaDB, args, mode: str = "epoll", depth: int = 1) -> dict:
    """One run of the floor: point selects on FLOOR_CONNECTIONS connections for --time seconds, `depth`
    commands in flight per connection (1: as a replay; more: pipelined)."""
    out = subprocess.run([binary, str(db.port), password_file(), str(FLOOR_CONNECTIONS), str(args.time),
                          str(args.tables), str(args.table_size), mode, str(depth)], check=True, capture_output=True,
                         text=True).stdout
    r = json.loads(out)
    n = max(1, r["commands"])
    cpu = r["user_s"] + r["system_s"]
    variant = f"c floor, {mode}" + (f", pipelined x{depth}" if depth > 1 else "")
    return {"variant": variant, "commands": r["commands"], "elapsed_s": round(r["wall_s"], 2),
            "cmds_per_s": r["commands"] / r["wall_s"], "cpu_us_per_cmd": round(cpu / n * 1e6, 2),
            "user_us_per_cmd": round(r["user_s"] / n * 1e6, 2), "cmds_per_cpu_s": round(n / cpu) if cpu else None,
            "failed": 0, "other_errors": 0}


_PASSWORD_FILE = ""


def password_file() -> str:
    """The root password in a 0600 file (never on a command line)."""
    global _PASSWORD_FILE
    if not _PASSWORD_FILE:
        fd, _PASSWORD_FILE = tempfile.mkstemp(prefix="fastproxy-rate-pw-")
        os.write(fd, ROOT_PASSWORD.encode())
        os.close(fd)
    return _PASSWORD_FILE


def row(label: str, s: dict) -> dict:
    dry = s.get("dry_run") or {}
    sent = s["commands_replayed"]
    return {"variant": label, "commands": sent, "elapsed_s": s["elapsed_seconds"],
            "cmds_per_s": s["qps_replayed"], "cpu_us_per_cmd": s["_cpu_us_per_command"],
            "cmds_per_cpu_s": s["_commands_per_cpu_s"], "failed": s["commands_failed"],
            "other_errors": s["other_errors"], "dry_run_bytes": dry.get("bytes_would_send")}


def print_rows(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    print(f"{'variant':<26} {'commands':>9} {'elapsed s':>9} {'cmds/s':>9} {'CPU us/cmd':>10} {'cmds/CPU-s':>10} "
          f"{'failed':>6} {'other':>5}")
    for r in rows:
        print(f"{r['variant']:<26} {r['commands']:>9} {r['elapsed_s']:>9} {r['cmds_per_s']:>9,.0f} "
              f"{r['cpu_us_per_cmd']:>10} {r['cmds_per_cpu_s'] or 0:>10,} {r['failed']:>6} {r['other_errors']:>5}")


def sharded(checkout: Path, db: ScratchMariaDB, capture: str, n: int, starting_data: str | None) -> dict:
    """`--shard i/n` for every i, started together with --start-at: aggregate commands/s."""
    if starting_data:
        db.sql("DROP DATABASE IF EXISTS sbtest;\n" + starting_data)
    start_at = time.time() + 3.0  # every process is up and has read its first batch by then
    procs = []
    for i in range(n):
        report_dir = tempfile.mkdtemp(prefix="fastproxy-rate-shard-")
        procs.append((start_replay(checkout, db, capture, report_dir, f"--shard={i}/{n}", f"--start-at={start_at}"),
                      report_dir))
    summaries = [finish_replay(p, d) for p, d in procs]
    commands = sum(s["commands_replayed"] for s in summaries)
    # each summary's elapsed time counts from its own start (the shared --start-at)
    span = max(s["elapsed_seconds"] for s in summaries)
    cpu = sum(s["_cpu_s"] for s in summaries)
    return {"processes": n, "commands": commands, "span_s": span, "cmds_per_s": round(commands / span),
            "cpu_us_per_cmd": round(cpu / max(1, commands) * 1e6, 2),
            "per_shard": [s["commands_replayed"] for s in summaries],
            "failed": sum(s["commands_failed"] for s in summaries)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time", type=int, default=15, help="seconds of each sysbench capture (default 15)")
    ap.add_argument("--tables", type=int, default=4)
    ap.add_argument("--table-size", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=2, help="replays of each capture per variant (default 2)")
    ap.add_argument("--before", default="", help="an older checkout (built in place) to replay with, side by side")
    ap.add_argument("--captures", default="", help="reuse captures kept by --keep-captures (no sysbench run)")
    ap.add_argument("--keep-captures", default="", help="keep the captures and their starting data here")
    ap.add_argument("--no-shards", action="store_true", help="skip the sharded replays")
    ap.add_argument("--no-floor", action="store_true", help="skip bench/c_replay_floor.c")
    ap.add_argument("--pipeline", default="8,64",
                    help="also replay with --pipeline N each round, for each N of this comma-separated list "
                         "(default 8,64; 1: not)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    args.rate = 0  # bench/e2e.run_one's sysbench --rate: unthrottled here
    args.pipeline = [n for n in (int(x) for x in str(args.pipeline).split(",") if x.strip()) if n > 1]

    here = HERE.parent
    variants = ([("before", Path(args.before).resolve())] if args.before else []) + [("this checkout", here)]
    print(f"machine: {machine()}; load average {os.getloadavg()}", flush=True)
    results: dict = {"machine": machine(), "load_average_start": os.getloadavg(), "time": args.time,
                     "pipeline": args.pipeline}
    with ScratchMariaDB(name="bench-rate") as db:
        print(f"mariadbd on {db.addr}; preparing {args.tables} x {args.table_size} rows ...", flush=True)
        prepare(db, args)
        if args.captures:
            meta = json.loads((Path(args.captures) / "captures.json").read_text())
            captures = {wl: str(Path(args.captures) / wl) for wl in meta["relay"]}
            starting = {wl: (Path(args.captures) / f"{wl}.sql").read_text() for wl in meta["relay"]}
            relay = meta["relay"]
        else:
            captures, starting, relay = make_captures(db, args)
            if args.keep_captures:
                keep = Path(args.keep_captures)
                keep.mkdir(parents=True, exist_ok=True)
                for wl, d in list(captures.items()):
                    shutil.move(d, keep / wl)
                    captures[wl] = str(keep / wl)
                    (keep / f"{wl}.sql").write_text(starting[wl])
                (keep / "captures.json").write_text(json.dumps({"relay": relay}, indent=2))
        results["relay_with_capture"] = relay
        results["relay"] = {}
        relay_target = FastproxyTarget()
        relay_port = relay_target.start(db)
        try:
            results["replays"] = {}
            floor_binary, floor_uring = (None, False) if args.no_floor else build_floor()
            for wl, threads in WORKLOADS:
                if wl not in captures:
                    continue
                rows, relays = [], []
                for rnd in range(args.rounds):
                    relays.append(relay_once(relay_target, relay_port, db, wl, threads, args))
                    for label, checkout in variants:
                        print(f"{wl}: replay speed 0, {label}, round {rnd + 1} ...", flush=True)
                        rows.append(row(label, replay(checkout, db, captures[wl], starting_data=starting.get(wl))))
                    for depth in args.pipeline:
                        for label, checkout in variants:
                            label = f"{label}, --pipeline {depth}"
                            print(f"{wl}: replay speed 0, {label}, round {rnd + 1} ...", flush=True)
                            rows.append(row(label, replay(checkout, db, captures[wl], f"--pipeline={depth}",
                                                          starting_data=starting.get(wl))))
                    print(f"{wl}: dry run speed 0, round {rnd + 1} ...", flush=True)
                    rows.append(row("this checkout, --dry-run", replay(here, db, captures[wl], "--dry-run")))
                    if floor_binary and wl == "oltp_point_select":
                        for mode in ("epoll", "uring") if floor_uring else ("epoll",):
                            print(f"{wl}: the C floor on {mode}, round {rnd + 1} ...", flush=True)
                            rows.append(floor(floor_binary, db, args, mode))
                        print(f"{wl}: the C floor on epoll, pipelined x{FLOOR_PIPELINE_DEPTH}, round {rnd + 1} ...", flush=True)
                        rows.append(floor(floor_binary, db, args, "epoll", FLOOR_PIPELINE_DEPTH))
                r = results["relay"][wl] = relay_median(relays)
                if r.get("proxy_cpu_us_per_query"):
                    print(f"\nproxy relaying {wl}: {r['qps']:,.0f} QPS at {r['proxy_cpu_us_per_query']:.1f} us CPU/query "
                          f"(median of {len(relays)}: " + ", ".join(f"{x['proxy_cpu_us_per_query']:.1f}" for x in relays)
                          + f") = {r['relay_qps_per_core']:,} queries per proxy CPU-second")
                print_rows(f"replay of the {wl} capture at speed 0 (one process)", rows)
                results["replays"][wl] = rows
        finally:
            relay_target.stop()
        if not args.no_shards:
            wl = WORKLOADS[0][0]
            shard_rows = []
            for n in (1, 2):
                print(f"{wl}: {n} shard process(es) ...", flush=True)
                shard_rows.append(sharded(here, db, captures[wl], n, starting.get(wl)))
            print(f"\nsharded replay of the {wl} capture (speed 0, --start-at)")
            for r in shard_rows:
                print(f"  {r['processes']} process(es): {r['commands']} commands in {r['span_s']} s = "
                      f"{r['cmds_per_s']:,} cmds/s, CPU {r['cpu_us_per_cmd']} us/cmd, per shard {r['per_shard']}, "
                      f"failed {r['failed']}")
            results["shards"] = shard_rows
        if not args.captures and not args.keep_captures:
            for d in captures.values():
                shutil.rmtree(d, ignore_errors=True)
    target_line(results)
    results["load_average_end"] = os.getloadavg()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


def target_line(results: dict) -> None:
    """The issue's target: one replayer process drives >= 1.5x what one proxy thread relays."""
    results["target"] = {}
    for wl, _ in WORKLOADS:
        per_core = results.get("relay", {}).get(wl, {}).get("relay_qps_per_core")
        depths = results.get("pipeline", [8])
        depths = depths if isinstance(depths, list) else [depths]  # (a single number in older results)
        piped = [f"{who}, --pipeline {d}" for d in depths for who in ("before", "this checkout")]
        for variant in ("before", "this checkout", *piped,
                        "c floor, epoll", "c floor, uring", f"c floor, epoll, pipelined x{FLOOR_PIPELINE_DEPTH}"):
            rows = [r for r in results.get("replays", {}).get(wl, []) if r["variant"] == variant]
            if not per_core or not rows:
                continue
            rates = sorted(r["cmds_per_cpu_s"] or 0 for r in rows)
            median = rates[len(rates) // 2]
            print(f"{wl}, {variant}: replayer {median:,} cmds per CPU-second (median of {len(rates)}) vs one proxy "
                  f"{per_core:,} relayed queries per CPU-second: {median / per_core:.2f}x (target >= 1.5x)")
            results["target"][f"{wl} {variant}"] = round(median / per_core, 3)


if __name__ == "__main__":
    main()
