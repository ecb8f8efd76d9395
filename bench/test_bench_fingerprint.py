"""Result fingerprint overhead (fastproxy/csrc/fingerprint.h through the ResponseTracker hook).

Run: python -m pytest bench/test_bench_fingerprint.py -q --benchmark-only -s --benchmark-timer=time.process_time

(process time: on a shared machine wall time mostly measures the neighbours; the derived figures use
each case's fastest round, the least disturbed one.)

Each case runs the tracker twice, with `fingerprints` on and off, over the same bytes:
- point select: begin + feed + take_completed of one 120-byte-row result, 10k commands (the proxy's
  common case); the overhead per command is the difference of the medians / 10k;
- large results fed in 64 KiB chunks (what a socket read hands the proxy): 100k rows of ~90 bytes,
  20k rows of 1 KiB, 200 rows of 64 KiB; the fingerprint's throughput is bytes / (on - off).
The last test prints the derived figures (and stores them in its extra_info).
"""
import sys
from pathlib import Path

import pytest

from fastproxy._packet import ResponseTracker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import packet_streams as ps  # noqa: E402

CHUNK = 64 * 1024
N_POINT = 10_000
MEDIANS: dict[tuple[str, bool], float] = {}
SIZES: dict[str, tuple[int, int]] = {}  # case -> (bytes, commands)


def _point_select(fingerprints):
    x = ps.result_set([[b"%0119d" % 7]])
    cmd, resp = ps.query(b"SELECT c FROM sbtest1 WHERE id=4242"), x.response()

    def run():
        t = ResponseTracker(False)
        t.fingerprints = fingerprints
        begin, feed, take = t.begin, t.feed, t.take_completed
        done = 0
        for i in range(N_POINT):
            begin(cmd, i)
            if feed(resp):
                done += len(take())
        return done

    return run, N_POINT * len(resp), N_POINT


LARGE = {"100k_rows_90B": (100_000, 60), "20k_rows_1KiB": (20_000, 1000), "200_rows_64KiB": (200, 65_000)}


def _large(case, fingerprints):
    n, width = LARGE[case]
    x = ps.result_set([[b"%08d" % i, b"x" * width, b"2024-01-01 00:00:00"] for i in range(n)])
    data = x.response()
    chunks = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]

    def run():
        t = ResponseTracker(False)
        t.fingerprints = fingerprints
        t.begin(x.command)
        for c in chunks:
            t.feed(c)
        r = t.take_completed()[0]
        assert (r.hash_unordered != 0) == fingerprints
        return r.rows

    return run, len(data), 1


CASES = ["point_select"] + list(LARGE)


@pytest.mark.parametrize("fingerprints", [False, True], ids=["off", "on"])
@pytest.mark.parametrize("case", CASES)
def test_tracker(benchmark, case, fingerprints):
    run, nbytes, commands = _point_select(fingerprints) if case == "point_select" else _large(case, fingerprints)
    benchmark(run)
    if benchmark.stats is None:
        return
    MEDIANS[(case, fingerprints)] = benchmark.stats.stats.min
    SIZES[case] = (nbytes, commands)
    median = benchmark.stats.stats.median
    benchmark.extra_info["MB_per_s"] = nbytes / median / 1e6
    print(f"\n{benchmark.name}: {median * 1e3:.3f} ms, {nbytes / median / 1e9:.2f} GB/s through the tracker")


def test_overhead(benchmark):
    """Derived (fastest rounds): fingerprint cost per point-select command and its throughput on large results."""
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    for case in CASES:
        if (case, True) not in MEDIANS or (case, False) not in MEDIANS:
            continue
        extra = MEDIANS[(case, True)] - MEDIANS[(case, False)]
        nbytes, commands = SIZES[case]
        if case == "point_select":
            benchmark.extra_info["point_select_ns_per_command"] = extra / commands * 1e9
            print(f"\nfingerprint overhead, point select: {extra / commands * 1e9:.0f} ns per command")
        else:
            rate = nbytes / extra / 1e9 if extra > 0 else float("inf")
            benchmark.extra_info[f"{case}_GB_per_s"] = rate
            print(f"\nfingerprint throughput, {case}: {rate:.1f} GB/s "
                  f"(tracker {nbytes / MEDIANS[(case, False)] / 1e9:.2f} -> {nbytes / MEDIANS[(case, True)] / 1e9:.2f} GB/s)")
