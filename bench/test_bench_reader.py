"""Replay's input path: records/s streamed back from lz4 traffic files (plain and encrypted).

Run: python -m pytest bench/test_bench_reader.py -q --benchmark-only
"""
import os

import pytest

from fastproxy._ringbuf import RingBuffer
from fastproxy.capture.reader import TrafficReader
from fastproxy.capture.writer import CaptureWriter

N = 200_000
PAYLOAD = b"\x17" + b"\x01\x00\x00\x00" + b"\x00\x01\x00\x00\x00" + b"\x00\x01\x08\x00" + b"\x2a" * 8


@pytest.fixture(scope="module", params=["lz4", "lz4+aes"])
def capture_dir(request, tmp_path_factory):
    key = os.urandom(32) if request.param == "lz4+aes" else None
    out = tmp_path_factory.mktemp("reader") / "cap"
    rb = RingBuffer(256 << 20)
    w = CaptureWriter(rb, out, compress=True, encryption_key=key)
    w.start()
    for i in range(N):  # sysbench-like point selects on 16 connections
        rb.append_command(i % 16, 1_700_000_000_000_000_000 + i * 100_000, 0, 0, 0, 0, 1, PAYLOAD)
    w.stop({"commands": N})
    return out, key


def test_reader_records_per_second(benchmark, capture_dir):
    path, key = capture_dir

    def run():
        n = 0
        for _ in TrafficReader(path, key):
            n += 1
        return n

    assert benchmark.pedantic(run, rounds=3, iterations=1) == N
    benchmark.extra_info["records_per_second"] = N / benchmark.stats.stats.median
