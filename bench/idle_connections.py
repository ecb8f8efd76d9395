#!/usr/bin/env python3
"""Idle connections and an accept storm through one proxy (issue 7, "Robustness at volume").

    python bench/idle_connections.py [--connections 10000] [--storm 2000] [--storm-seconds 1] [--json out.json]

1. RSS per idle connection: a scratch MariaDB (thread pool, max_connections above the target),
   one `fastproxy serve`; after a warm-up (200 connections opened and closed) the proxy's RSS is
   the baseline; then N clients log in through it (root, mysql_native_password) and stay idle.
   RSS is read at 1,500 connections (the figure the issue quotes: 8.2 KiB) and at N;
   (RSS - baseline) / connections is the cost of one idle connection (client socket, backend
   socket, the Python objects of the connection). 100 of the idle connections then run a
   SELECT to show they are alive; all are closed and RSS is read once more.
2. Accept storm: S new connections started at an even pace over T seconds (default 2,000 in one
   second), each logs in and runs SELECT 1. Counted: served, refused (ECONNREFUSED), reset
   (ECONNRESET or EOF before the answer), other errors; and how long until the last one was served.

The open-files limit is raised to the hard limit for this process and its children (the proxy
holds two sockets per client). When the hard limit is too low for N, N is lowered to what fits
and the output says so.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time

from benchlib import LoginFailed, Proxy, login, machine, query_scalar, quit_and_close, raise_nofile

from fastproxy.scratch_db import ROOT_PASSWORD, ScratchMariaDB

FD_RESERVE = 200  # the proxy's listener, API, log, health checks, Python's own files
CHECKPOINT = 1500


async def open_idle(port: int, n: int, conns: list, concurrency: int = 200) -> None:
    sem = asyncio.Semaphore(concurrency)

    async def one():
        async with sem:
            conns.append(await login("127.0.0.1", port, "root", ROOT_PASSWORD, timeout=120))

    await asyncio.gather(*(one() for _ in range(n)))


async def storm(port: int, count: int, seconds: float) -> dict:
    outcomes: dict[str, int] = {"served": 0, "refused": 0, "reset": 0, "other": 0}
    samples: dict[str, str] = {}
    opened = []
    t0 = time.monotonic()
    last_done = [t0]

    async def one(i: int):
        await asyncio.sleep(max(0.0, t0 + i * seconds / count - time.monotonic()))
        try:
            reader, writer = await login("127.0.0.1", port, "root", ROOT_PASSWORD, timeout=120)
            opened.append(writer)
            ok = await query_scalar(reader, writer, "SELECT 1", timeout=120) == b"1"
            kind = "served" if ok else "other"
        except ConnectionRefusedError as e:
            kind, err = "refused", e
        except (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError) as e:
            kind, err = "reset", e
        except (OSError, asyncio.TimeoutError, LoginFailed) as e:
            kind, err = "other", e
        outcomes[kind] += 1
        if kind != "served":
            samples.setdefault(kind, f"{type(err).__name__}: {err}")
        last_done[0] = max(last_done[0], time.monotonic())

    await asyncio.gather(*(one(i) for i in range(count)))
    for w in opened:
        quit_and_close(w)
    return {**outcomes, "errors_sample": samples, "seconds_to_last_served": round(last_done[0] - t0, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=10_000)
    ap.add_argument("--storm", type=int, default=2_000)
    ap.add_argument("--storm-seconds", type=float, default=1.0)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()

    limit = raise_nofile()
    n = args.connections
    note = ""
    if 2 * n + FD_RESERVE > limit:
        n = (limit - FD_RESERVE) // 2
        note = (f"open-files hard limit {limit} (not raisable here) fits {n} proxied connections, "
                f"not {args.connections}")
        print(f"note: {note}", flush=True)
    out: dict = {"machine": machine(), "requested_connections": args.connections, "connections": n, "note": note}
    print(f"machine: {out['machine']}", flush=True)
    extra = [f"--max-connections={n + args.storm + 500}", "--thread-handling=pool-of-threads",
             f"--open-files-limit={limit}", "--back-log=4096", "--max-connect-errors=1000000"]
    with ScratchMariaDB(name="idle", extra_args=extra) as db:
        # the API keeps a quarter of the open-files limit free by default and answers 503 beyond it:
        # this bench fills the limit on purpose and reads its figures through the API
        proxy = Proxy([db.addr], f"--api.fd-reserve={FD_RESERVE // 2}", name="idle").start()
        try:
            conns: list = []
            asyncio.run(_phase_idle(proxy, n, conns, out))
            print(f"storm: {args.storm} connections over {args.storm_seconds}s ...", flush=True)
            out["storm"] = asyncio.run(storm(proxy.port, args.storm, args.storm_seconds))
            proxy.wait_connections(0)
            out["storm"]["rss_after_kib"] = proxy.rss_kib()
            out["proxy_alive"] = proxy.alive()
        finally:
            proxy.stop()
        out["proxy_log_traceback"] = "Traceback" in proxy.log()
    out["load_avg_1m_at_end"] = round(__import__("os").getloadavg()[0], 2)
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    s = out["storm"]
    ok = s["refused"] == s["reset"] == s["other"] == 0 and out["proxy_alive"] and not out["proxy_log_traceback"]
    sys.exit(0 if ok else 1)


async def _phase_idle(proxy: Proxy, n: int, conns: list, out: dict) -> None:
    warm: list = []
    await open_idle(proxy.port, 200, warm)
    for _, w in warm:
        quit_and_close(w)
    await asyncio.to_thread(proxy.wait_connections, 0)
    base = proxy.rss_kib()
    out["rss_baseline_kib"] = base
    print(f"baseline RSS {base} KiB; opening {n} idle connections ...", flush=True)
    t0 = time.monotonic()
    first = min(CHECKPOINT, n)
    await open_idle(proxy.port, first, conns)
    await asyncio.to_thread(proxy.wait_connections, first)
    at_checkpoint = proxy.rss_kib()
    out[f"rss_at_{first}_kib"] = at_checkpoint
    out[f"kib_per_conn_at_{first}"] = round((at_checkpoint - base) / first, 2)
    await open_idle(proxy.port, n - first, conns)
    await asyncio.to_thread(proxy.wait_connections, n)
    out["seconds_to_open_all"] = round(time.monotonic() - t0, 1)
    full = proxy.rss_kib()
    out[f"rss_at_{n}_kib"] = full
    out[f"kib_per_conn_at_{n}"] = round((full - base) / n, 2)
    print(f"{n} idle: RSS {full} KiB = {out[f'kib_per_conn_at_{n}']} KiB per connection", flush=True)
    sample = random.Random(7).sample(range(n), min(100, n))
    answers = await asyncio.gather(*(query_scalar(*conns[i], f"SELECT {i}") for i in sample))
    out["idle_sample_answered"] = sum(a == str(i).encode() for a, i in zip(answers, sample))
    for _, w in conns:
        quit_and_close(w)
    await asyncio.to_thread(proxy.wait_connections, 0)
    out["rss_after_close_kib"] = proxy.rss_kib()


if __name__ == "__main__":
    main()
