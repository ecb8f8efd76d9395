"""The verdict's cost per replayed command (fastproxy/report/observe.py -> verdict.py -> _latency.pyx), on
the replay's event loop. Run: python -m pytest bench/test_bench_verdict.py -q --benchmark-only -s

- text point select (a new literal each time: normalized and looked up every time), the common case;
- prepared execute (its SQL text recurs: classified once, then a dictionary hit);
- the C latency histogram alone (record + the bucket index).
Each batch is 10k commands; the per-command cost is median / 10k. The CommandResults are real ones,
made by the ResponseTracker from a real response byte stream; the engine and its connection are the
few attributes the observer reads.
"""
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from fastproxy._packet import ResponseTracker
from fastproxy.capture.record import KIND_COMMAND, Record
from fastproxy.report._latency import LatencyTable
from fastproxy.report.observe import CaptureObserver, Timeline
from fastproxy.report.verdict import Verdict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import packet_streams as ps  # noqa: E402

N = 10_000


def _results(cmd: bytes, n: int):
    x = ps.result_set([[b"%0119d" % 7]])
    t = ResponseTracker(False)
    for _ in range(n):
        t.begin(cmd)
    t.feed(x.response() * n)
    return t.take_completed()


def _setup(prepared: bool):
    now = time.monotonic_ns()
    engine = SimpleNamespace(opt=SimpleNamespace(speed=1.0), _start_mono=now, capture_start_ns=1_700_000_000 * 10**9)
    conn = SimpleNamespace(sent_ns=now - 150_000, due_ns=now - 151_000, db="sbtest",
                           stmt_sql={1: "SELECT c FROM sbtest1 WHERE id=?"}, stmt_params={1: 1},
                           stmt_types={1: b"\x03\x00"})
    if prepared:
        payloads = [b"\x17\x01\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00" + (i % 100000).to_bytes(4, "little")
                    for i in range(N)]
    else:
        payloads = [b"\x03SELECT c FROM sbtest1 WHERE id=%d" % (i % 100000) for i in range(N)]
    results = _results(payloads[0], N)
    recs = [Record(KIND_COMMAND, 7, engine.capture_start_ns + i * 1000, engine.capture_start_ns + i * 1000 + 120_000,
                   0, 0, 0, 1, p, 0, r.hash_ordered, r.hash_unordered, r.columns, 0, 2)
            for i, (p, r) in enumerate(zip(payloads, results))]
    return engine, conn, recs, results, now


@pytest.mark.parametrize("prepared", [False, True], ids=["text_point_select", "prepared_execute"])
def test_observer_per_command(benchmark, prepared):
    engine, conn, recs, results, now = _setup(prepared)

    def run():
        obs = CaptureObserver(engine, Verdict(), Timeline())
        for rec, res in zip(recs, results):
            obs(conn, rec, res, now)
        return obs.verdict

    verdict = benchmark(run)
    assert verdict.compared == N and verdict.mismatch_count == 0 and len(verdict.digests) == 1
    if benchmark.stats:
        us = benchmark.stats.stats.median / N * 1e6
        benchmark.extra_info["us_per_command"] = us
        print(f"\n{benchmark.name}: {us:.2f} us per replayed command")


def test_latency_histogram_record(benchmark):
    t = LatencyTable(4)
    slot = t.add_slot()
    values = [(100_000 + i * 37) % 5_000_000 for i in range(N)]

    def run():
        rec = t.record
        for v in values:
            rec(slot, v, v + 5000)

    benchmark(run)
    if benchmark.stats:
        ns = benchmark.stats.stats.median / N * 1e9
        benchmark.extra_info["ns_per_record"] = ns
        print(f"\n{benchmark.name}: {ns:.0f} ns per record (both sides)")
