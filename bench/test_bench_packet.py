"""Packet layer hot paths. Run: python -m pytest bench/test_bench_packet.py -q --benchmark-only -s

- framer: a 1 MiB stream of 100-byte packets and a 4 MiB stream of 16 KiB packets, fed in 64 KiB
  chunks (what a socket read hands the proxy), every packet taken with next_packet().
- tracker: a large text result set (100k rows) fed in 64 KiB chunks, and point-select-style
  exchanges (begin + one small result set + take_completed per command), the proxy's common case.

Each benchmark times one batch; packets/s and MB/s are computed from the median and stored in
extra_info (see --benchmark-json) and printed with -s.
"""
import sys
from pathlib import Path

import pytest

from fastproxy._packet import PacketFramer, ResponseTracker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import packet_streams as ps  # noqa: E402

CHUNK = 64 * 1024


def _report(benchmark, packets, nbytes, unit="packets"):
    if benchmark.stats is None:  # --benchmark-disable: the function ran once, nothing was timed
        return
    median = benchmark.stats.stats.median
    benchmark.extra_info["packets_per_s"] = packets / median
    benchmark.extra_info["MB_per_s"] = nbytes / median / 1e6
    benchmark.extra_info["ns_per_packet"] = median / packets * 1e9
    print(f"\n{benchmark.name}: {packets / median:,.0f} {unit}/s, {nbytes / median / 1e6:,.0f} MB/s "
          f"({median / packets * 1e9:.0f} ns per {unit[:-1]}; median {median * 1e3:.2f} ms)")


def _stream(payload_size, total):
    one = ps.frame(b"\x01" * payload_size, 1)[0]
    n = total // len(one)
    data = one * n
    return data, n, [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]


def _drain_framer(chunks):
    f = PacketFramer()
    nxt = f.next_packet
    n = 0
    for c in chunks:
        f.feed(c)
        while nxt() is not None:
            n += 1
    return n


@pytest.mark.parametrize("payload_size,total", [(100, 1 << 20), (16 * 1024, 4 << 20)], ids=["100B", "16KiB"])
def test_framer(benchmark, payload_size, total):
    data, n, chunks = _stream(payload_size, total)
    assert benchmark(_drain_framer, chunks) == n
    _report(benchmark, n, len(data))


def test_framer_one_chunk(benchmark):
    """The whole 1 MiB at once: every packet is a zero-copy memoryview."""
    data, n, _ = _stream(100, 1 << 20)
    assert benchmark(_drain_framer, [data]) == n
    _report(benchmark, n, len(data))


@pytest.mark.parametrize("deprecate_eof", [False, True], ids=["eof", "deprecate_eof"])
def test_tracker_big_result_set(benchmark, deprecate_eof):
    rows = [[b"%08d" % i, b"x" * 60, b"2024-01-01 00:00:00"] for i in range(100_000)]
    x = ps.result_set(rows, deprecate_eof=deprecate_eof)
    data = x.response()
    chunks = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]

    def run():
        t = ResponseTracker(deprecate_eof)
        t.begin(x.command)
        for c in chunks:
            t.feed(c)
        return t.take_completed()[0].rows

    assert benchmark(run) == len(rows)
    _report(benchmark, len(x.packets), len(data))


@pytest.mark.parametrize("deprecate_eof", [False, True], ids=["eof", "deprecate_eof"])
def test_tracker_point_select(benchmark, deprecate_eof):
    """sysbench oltp_point_select shape: `SELECT c FROM sbtest1 WHERE id=?`, one 120-byte row."""
    x = ps.result_set([[b"%0119d" % 7]], deprecate_eof=deprecate_eof)
    cmd, resp = ps.query(b"SELECT c FROM sbtest1 WHERE id=4242"), x.response()
    n = 10_000

    def run():
        t = ResponseTracker(deprecate_eof)
        begin, feed, take = t.begin, t.feed, t.take_completed
        done = 0
        for i in range(n):
            begin(cmd, i)
            if feed(resp):
                done += len(take())
        return done

    assert benchmark(run) == n
    _report(benchmark, n, n * len(resp), unit="commands")
    if "packets_per_s" in benchmark.extra_info:
        benchmark.extra_info["packets_per_s"] *= len(x.packets)


@pytest.mark.parametrize("mib", [16, 128])
def test_framer_large_packet_in_small_chunks(benchmark, mib):
    """One big client packet arriving in 64 KiB reads: the cost must stay linear in its size."""
    from fastproxy._packet import PacketFramer, build_packet

    data = build_packet(0, b"x" * (mib << 20))
    chunks = [data[i:i + 65536] for i in range(0, len(data), 65536)]

    def run():
        f = PacketFramer(1 << 30)
        for c in chunks:
            f.feed(c)
            pkt = f.next_packet()
        return pkt

    pkt = benchmark.pedantic(run, rounds=3, iterations=1)
    assert len(pkt[1]) == mib << 20
    benchmark.extra_info["MB_per_s"] = (mib << 20) / benchmark.stats.stats.median / 1e6
