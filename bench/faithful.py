#!/usr/bin/env python3
"""False failures and differing tables of a replay, before and after faithful replay.

    python bench/faithful.py [--scale 4] [--seconds 5] [--before /path/to/old/checkout] [--json out.json]

Two scratch MariaDB servers ("production", "test"); the multi-client workload of
tests/workload.py (`Shop`: orders with ids reused across connections, a SKIP LOCKED job queue,
counters, savepoints, DDL across connections, NOW() in rows; `--scale` multiplies its connections)
and the forced-deadlock workload of tests/test_replay_transactions.py run through a proxy while a
capture records them; then each capture is replayed on "test" (from the same starting data) at
speed 1 and as fast as possible, by:

- `before`: another checkout's `fastproxy replay` (e.g. `git archive main | tar -x -C DIR`, built
  in place), if `--before DIR` is given: what replay did without this work;
- `connection`: this checkout with per-connection order only, no pins, no whole transactions;
- `causal`: this checkout as it replays by default.

For each: failures reported, tables whose CHECKSUM differs from production's (apart: tables whose
only differences are times exactly one second off, the capture's clock being the proxy's), time
taken. On identical servers all of them are artifacts of the replay.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from fastproxy.scratch_db import ROOT_PASSWORD, ScratchMariaDB  # noqa: E402
from conftest import start_proxy, stop_proxy  # noqa: E402
from replay_util import Capture, checksums  # noqa: E402
from workload import Shop, compare_rows, dump  # noqa: E402
from test_replay_transactions import ForcedDeadlocks  # noqa: E402


def replay_cli(checkout: Path, target, capture: str, speed: float, report_dir: str, *extra: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(checkout))
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "fastproxy", "replay", "--target", target.addr, "--input", capture,
                          "--username", "root", "--password", ROOT_PASSWORD, "--speed", str(speed),
                          "--no-report-tables", "--report-dir", report_dir, *extra],
                         cwd=str(checkout), env=env, capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        raise RuntimeError(res.stdout[-2000:] + res.stderr[-2000:])
    newest = max((os.path.join(report_dir, f) for f in os.listdir(report_dir) if f.endswith(".json")),
                 key=os.path.getmtime)
    with open(newest) as f:
        summary = json.load(f)
    summary["_wall_s"] = time.monotonic() - t0
    return summary


def replay_inprocess(target, capture: str, speed: float, report_dir: str, **options) -> dict:
    import uvloop

    from fastproxy.replay.engine import ReplayOptions
    from fastproxy.replay.job import ReplayRun

    opts = ReplayOptions(host=target.host, port=target.port, username="root", password=ROOT_PASSWORD, speed=speed,
                         **options)
    t0 = time.monotonic()
    summary = uvloop.run(ReplayRun(capture, opts, report_dir, write_tables=False).run())
    summary["_wall_s"] = time.monotonic() - t0
    return summary


def as_written(capture: str) -> str:
    """A copy of a capture whose meta says its records need no reordering (read as written)."""
    import shutil

    copy = capture + "-as-written"
    if not os.path.exists(copy):
        shutil.copytree(capture, copy)
        meta_path = os.path.join(copy, "meta")
        with open(meta_path) as f:
            meta = json.load(f)
        print(f"  reorder window of the capture: {meta.get('reorder_window_ns', 0) / 1e6:.2f} ms", flush=True)
        meta["reorder_window_ns"] = 0
        with open(meta_path, "w") as f:
            json.dump(meta, f)
    return copy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=int, default=1, help="multiply the Shop workload's connections")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--before", default="", help="an older checkout to replay with (built in place)")
    ap.add_argument("--as-written", action="store_true",
                    help="also replay each capture (causal order) in the order its records were written, without "
                         "the reader's reorder window: with FASTPROXY_TEST_WORKERS=4, what the window is worth")
    ap.add_argument("--json", default="")
    args = ap.parse_args()

    shop = Shop(seconds=args.seconds)
    for role in ("writers", "ps_writers", "processors", "producers", "workers", "counters", "savepointers",
                 "readers", "clocks", "ddl_pairs"):
        setattr(shop, role, getattr(shop, role) * args.scale)
    shop.pause = tuple(p * args.scale for p in shop.pause)  # as many commands per second, from more connections
    workloads = [("shop", shop), ("deadlocks", ForcedDeadlocks())]
    variants = ([("before", None)] if args.before else []) + [
        ("connection", dict(order="connection", pin=False, whole_transactions=False)), ("causal", {})] + (
        [("as-written", {})] if args.as_written else [])
    rows = []
    tmp = tempfile.mkdtemp(prefix="fastproxy-faithful-")
    with ScratchMariaDB(name="faithful-prod") as prod, ScratchMariaDB(name="faithful-test") as test:
        for name, wl in workloads:
            prod.sql(wl.setup_sql)
            start = dump(prod, wl.database)
            capture = os.path.join(tmp, name)
            proxy = start_proxy([prod])
            try:
                with Capture(proxy, capture):
                    wl.run(proxy.port)
            finally:
                stop_proxy(proxy)
            production = checksums(prod, wl.database)
            conns = getattr(wl, "connections", None) or 2 * getattr(wl, "pairs", 1)
            print(f"{name}: {conns} connections captured", flush=True)
            for speed in (1.0, 0.0):
                for variant, options in variants:
                    test.sql(f"DROP DATABASE IF EXISTS {wl.database};\n" + start)
                    report_dir = os.path.join(tmp, f"reports-{name}-{variant}-{speed}")
                    os.makedirs(report_dir)
                    if variant == "before":
                        s = replay_cli(Path(args.before), test, capture, speed, report_dir)
                    elif variant == "as-written":
                        s = replay_inprocess(test, as_written(capture), speed, report_dir)
                    else:
                        s = replay_inprocess(test, capture, speed, report_dir, **options)
                    after = checksums(test, wl.database)
                    differing = sorted(t for t in production if production[t] != after.get(t))
                    # rows equal but for a time one second off: the capture's clock, not the replay
                    skewed = {t: n for t in differing if (n := compare_rows(prod, test, t)) is not None}
                    differing = [t for t in differing if t not in skewed]
                    row = {"workload": name, "connections": conns, "speed": speed, "variant": variant,
                           "commands": s["commands_replayed"], "failures": s["commands_failed"],
                           "other_errors": s["other_errors"], "tables": len(production),
                           "tables_differing": len(differing), "differing": differing,
                           "rows_time_one_second_off": skewed,
                           "elapsed_s": s["elapsed_seconds"], "lag_p99_ms": s["lag"]["p99_ms"],
                           "top_failures": [(f["count"], f["cmd_type"], f["sample_err_msg"][:60])
                                            for f in s["top_failures"][:4]],
                           "causal": s.get("causal"), "transactions": s.get("transactions")}
                    rows.append(row)
                    print(f"  speed {speed or 'max':>3} {variant:<10} failures {row['failures']:>5}  tables differing "
                          f"{row['tables_differing']:>2}/{row['tables']:<2} {differing} (time 1 s off: {skewed})  "
                          f"{row['elapsed_s']:.1f}s  "
                          f"sent again {(row['causal'] or {}).get('sent_again_after_overlapping_writes', '-')}  "
                          f"top {row['top_failures'][:2]}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
