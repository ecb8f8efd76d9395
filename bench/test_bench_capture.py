"""Capture hot paths. Run: python -m pytest bench/test_bench_capture.py -q --benchmark-only

- ring-buffer append: the cost the proxy pays per command (ns/record in extra_info);
  a pure-Python bytearray ring is the baseline that justifies the Cython one.
- writer: MB/s of encoded records drained, compressed (lz4), optionally encrypted, written.
- writer, large records: MB/s of 16 MiB records written through the ring's side path.
"""
import itertools
import random
import struct
import tempfile

import pytest

from fastproxy._ringbuf import RingBuffer
from fastproxy.capture.writer import CaptureWriter

N = 10_000
PAYLOAD = b"\x03SELECT c FROM sbtest1 WHERE id = 4242 AND k BETWEEN 10 AND 20 -- 100 bytes pad!!"[:100]


def test_ringbuf_append(benchmark):
    rb = RingBuffer(64 * 1024 * 1024)

    def run():
        append = rb.append_command
        for i in range(N):
            append(i, i, i, 0, 0, 1, 0, PAYLOAD)
        rb.drain(1 << 30)

    benchmark(run)
    benchmark.extra_info["ns_per_record"] = benchmark.stats.stats.median / N * 1e9


class PyRing:
    """Baseline: the same encoding with struct.pack_into on a bytearray (no wrap handling)."""

    HEADER = struct.Struct("<IBBHQqqQQQQQIHH")  # format version 2

    def __init__(self, cap):
        self.buf = bytearray(cap)
        self.head = 0

    def append_command(self, conn, start, end, outcome, err, aff, rows, payload):
        n = 80 + len(payload)
        if self.head + n > len(self.buf):
            return False
        self.HEADER.pack_into(self.buf, self.head, n, 1, outcome, err, conn, start, end, aff, rows, 0, 0, 0, 0, 0, 0)
        self.buf[self.head + 80:self.head + n] = payload
        self.head += n
        return True


def test_pyring_append_baseline(benchmark):
    rb = PyRing(64 * 1024 * 1024)

    def run():
        append = rb.append_command
        for i in range(N):
            append(i, i, i, 0, 0, 1, 0, PAYLOAD)
        rb.head = 0

    benchmark(run)
    benchmark.extra_info["ns_per_record"] = benchmark.stats.stats.median / N * 1e9


def _sql_payloads(count=4096):
    rnd = random.Random(7)
    tables = [f"sbtest{i}" for i in range(1, 9)]
    out = []
    for _ in range(count):
        sql = rnd.choice([
            f"SELECT c FROM {rnd.choice(tables)} WHERE id={rnd.randrange(10**6)}",
            f"UPDATE {rnd.choice(tables)} SET k=k+1 WHERE id={rnd.randrange(10**6)}",
            f"INSERT INTO {rnd.choice(tables)} (id,k,c,pad) VALUES "
            f"({rnd.randrange(10**6)},{rnd.randrange(10**6)},'{rnd.getrandbits(200):x}','x')",
        ])
        out.append(b"\x03" + sql.encode())
    return out


MB = 64


@pytest.mark.parametrize("compress,key", [(True, None), (False, None), (True, bytes(32))],
                         ids=["lz4", "raw", "lz4+aes"])
def test_writer_throughput(benchmark, compress, key):
    payloads = _sql_payloads()
    tmp = tempfile.TemporaryDirectory()
    counter = itertools.count()

    def setup():
        rb = RingBuffer((MB + 1) * 1024 * 1024)
        it = itertools.cycle(payloads)
        i = 0
        while rb.used < MB * 1024 * 1024:
            rb.append_command(i % 500, i * 1000, i * 1000 + 300, 0, 0, 1, 0, next(it))
            i += 1
        w = CaptureWriter(rb, f"{tmp.name}/{next(counter)}", compress=compress,
                          encryption_key=key, file_size=32 * 1024 * 1024)
        return (w, rb.used), {}

    def run(w, nbytes):
        w.start()
        meta = w.stop({})
        assert w.error is None and meta["raw_bytes"] == nbytes

    benchmark.pedantic(run, setup=setup, rounds=3, iterations=1)
    benchmark.extra_info["MB_per_s"] = MB / benchmark.stats.stats.median
    tmp.cleanup()


def test_writer_large_records(benchmark):
    """64 MiB as four 16 MiB INSERTs through a 4 MiB ring: every one takes the side path (lz4)."""
    rows = b",".join(b"(%d,'%s')" % (i, p[1:60]) for i, p in enumerate(_sql_payloads()))
    big = b"\x03INSERT INTO t VALUES " + (rows * (16 * 1024 * 1024 // len(rows) + 1))[:16 * 1024 * 1024]
    tmp = tempfile.TemporaryDirectory()
    counter = itertools.count()

    def setup():
        rb = RingBuffer(4 * 1024 * 1024, large_max=256 * 1024 * 1024)
        for i in range(MB // 16):
            assert rb.append_command(1, i, i + 1, 0, 0, 1, 0, big)
        assert rb.large_pending == MB // 16
        w = CaptureWriter(rb, f"{tmp.name}/{next(counter)}", file_size=32 * 1024 * 1024)
        return (w,), {}

    def run(w):
        w.start()
        meta = w.stop({})
        assert w.error is None and meta["records"] == MB // 16

    benchmark.pedantic(run, setup=setup, rounds=3, iterations=1)
    benchmark.extra_info["MB_per_s"] = MB / benchmark.stats.stats.median
    tmp.cleanup()
