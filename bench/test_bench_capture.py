"""Capture hot paths. Run: python -m pytest bench/test_bench_capture.py -q --benchmark-only

- ring-buffer append: the cost the proxy pays per command (ns/record in extra_info);
  a pure-Python bytearray ring is the baseline that justifies the Cython one.
- writer: MB/s of encoded records drained, compressed (lz4), optionally encrypted, written.
- writer, large records: MB/s of 16 MiB records written through the ring's side path.
- writer CPU per MB of sysbench oltp_read_write-shaped records (cpu_ms_per_MB in extra_info), in
  the chunks the writer takes under load (192 KiB) and in its largest (4 MiB); run this file in a
  checkout of another commit to compare writers. Beside it, the chain alone (take, compress,
  write): the C encoder against the python-lz4 chain it replaced (with its content checksum).
- writer CPU at a steady 18,000 records/s (writer_cpu_ms_per_s, writer_cpu_us_per_record).
"""
import itertools
import os
import random
import resource
import struct
import tempfile
import time

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


# -- the writer's CPU per captured byte -------------------------------------------------------

def _sysbench_rw(seed=7):
    """Endless (payload, affected_rows, rows, hash_ordered, hash_unordered) of sysbench
    oltp_read_write transactions as COM_QUERY (4 tables of 10,000 rows, sysbench's c and pad)."""
    rnd = random.Random(seed)

    def digits(groups):
        return "-".join("%011d" % rnd.randrange(10**11) for _ in range(groups))

    while True:
        t = rnd.randrange(1, 5)
        stmts = [("BEGIN", 0, 0)]
        stmts += [(f"SELECT c FROM sbtest{t} WHERE id={rnd.randrange(1, 10001)}", 0, 1) for _ in range(10)]
        for q in ("SELECT c FROM sbtest{t} WHERE id BETWEEN {a} AND {b}",
                  "SELECT SUM(k) FROM sbtest{t} WHERE id BETWEEN {a} AND {b}",
                  "SELECT c FROM sbtest{t} WHERE id BETWEEN {a} AND {b} ORDER BY c",
                  "SELECT DISTINCT c FROM sbtest{t} WHERE id BETWEEN {a} AND {b} ORDER BY c"):
            a = rnd.randrange(1, 9901)
            stmts.append((q.format(t=t, a=a, b=a + 99), 0, 100))
        i = rnd.randrange(1, 10001)
        stmts += [(f"UPDATE sbtest{t} SET k=k+1 WHERE id={i}", 1, 0),
                  (f"UPDATE sbtest{t} SET c='{digits(10)}' WHERE id={rnd.randrange(1, 10001)}", 1, 0),
                  (f"DELETE FROM sbtest{t} WHERE id={i}", 1, 0),
                  (f"INSERT INTO sbtest{t} (id, k, c, pad) VALUES "
                   f"({i}, {rnd.randrange(1, 10001)}, '{digits(10)}', '{digits(5)}')", 1, 0),
                  ("COMMIT", 0, 0)]
        for sql, affected, rows in stmts:
            hashes = (rnd.getrandbits(64), rnd.getrandbits(64)) if rows else (0, 0)
            yield b"\x03" + sql.encode(), affected, rows, *hashes


def _fill_sysbench(rb, nbytes):
    """Append sysbench-shaped command records (4 connections, realistic times) up to nbytes."""
    t0 = 1_764_800_000_000_000_000
    rnd = random.Random(8)
    gen = _sysbench_rw()
    n = 0
    while rb.used < nbytes:
        payload, affected, rows, h1, h2 = next(gen)
        start = t0 + n * 50_000 + rnd.randrange(1000)
        assert rb.append_command(1000 + n % 4, start, start + 150_000 + rnd.randrange(100_000), 0, 0, affected,
                                 rows, payload, 0, 1 if rows else 0, 0, 3, h1, h2, True)
        n += 1


def _cpu():
    """(user, system) CPU seconds of the process: lz4 and AES are user time, the writes and the
    writeback the writer starts are system time (which varies with the disk's state)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime, ru.ru_stime


SYS_MB = 32


@pytest.mark.parametrize("chunk", [192 * 1024, 4 * 1024 * 1024], ids=["192KiB", "4MiB"])
@pytest.mark.parametrize("compress,key", [(True, None), (True, bytes(32))], ids=["lz4", "lz4+aes"])
def test_writer_cpu_per_mb(benchmark, monkeypatch, chunk, compress, key):
    """Process CPU (the writer thread's: the caller only waits in join) per MB of records."""
    from fastproxy.capture import writer

    monkeypatch.setattr(writer, "DRAIN_CHUNK", chunk)
    tmp = tempfile.TemporaryDirectory()
    counter = itertools.count()
    cpu = []

    def setup():
        rb = RingBuffer((SYS_MB + 1) * 1024 * 1024)
        _fill_sysbench(rb, SYS_MB * 1024 * 1024)
        w = CaptureWriter(rb, f"{tmp.name}/{next(counter)}", compress=compress, encryption_key=key,
                          file_size=64 * 1024 * 1024)
        return (w, rb.used), {}

    def run(w, nbytes):
        u0, s0 = _cpu()
        w.start()
        meta = w.stop({})
        u1, s1 = _cpu()
        cpu.append(((u1 - u0) / (nbytes / 2**20), (s1 - s0) / (nbytes / 2**20)))
        assert w.error is None and meta["raw_bytes"] == nbytes
        for name in w.files:
            os.unlink(os.path.join(w.output_dir, name))

    benchmark.pedantic(run, setup=setup, rounds=7, iterations=1)
    _cpu_info(benchmark, cpu)
    benchmark.extra_info["MB_per_s"] = SYS_MB / benchmark.stats.stats.median
    tmp.cleanup()


def _cpu_info(benchmark, cpu):
    """Medians of (user, system) CPU seconds per MB, as ms per MB, and of their sum."""
    mid = len(cpu) // 2
    benchmark.extra_info["cpu_ms_per_MB"] = round(sorted(u + s for u, s in cpu)[mid] * 1e3, 3)
    benchmark.extra_info["user_ms_per_MB"] = round(sorted(u for u, _ in cpu)[mid] * 1e3, 3)
    benchmark.extra_info["sys_ms_per_MB"] = round(sorted(s for _, s in cpu)[mid] * 1e3, 3)


def _chain_encoder(rb, fd, chunk):
    from fastproxy.capture._encoder import ChunkEncoder

    enc = ChunkEncoder(rb, True)
    os.write(fd, enc.begin())
    while (out := enc.take(chunk)) is not None:
        os.write(fd, out)
        enc.release()
    os.write(fd, enc.end())


def _chain_python_lz4(rb, fd, chunk):
    """The chain before fastproxy/capture/_encoder.pyx: a bytes copy of each chunk, python-lz4."""
    import lz4.frame

    comp = lz4.frame.LZ4FrameCompressor(content_checksum=True, block_checksum=True, auto_flush=True,
                                        block_linked=False)
    os.write(fd, comp.begin())
    while data := rb.drain(chunk):
        os.write(fd, comp.compress(data))
    os.write(fd, comp.flush())


@pytest.mark.parametrize("chain", [_chain_encoder, _chain_python_lz4], ids=["encoder", "python-lz4"])
def test_chain_cpu_per_mb(benchmark, chain):
    """The writer's per-chunk chain alone, in 192 KiB chunks, into a file."""
    tmp = tempfile.TemporaryDirectory()
    cpu = []

    def setup():
        rb = RingBuffer((SYS_MB + 1) * 1024 * 1024)
        _fill_sysbench(rb, SYS_MB * 1024 * 1024)
        return (rb,), {}

    def run(rb):
        nbytes = rb.used
        fd = os.open(f"{tmp.name}/out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        u0, s0 = _cpu()
        chain(rb, fd, 192 * 1024)
        u1, s1 = _cpu()
        cpu.append(((u1 - u0) / (nbytes / 2**20), (s1 - s0) / (nbytes / 2**20)))
        os.close(fd)
        assert rb.used == 0

    benchmark.pedantic(run, setup=setup, rounds=7, iterations=1)
    _cpu_info(benchmark, cpu)
    tmp.cleanup()


STEADY_RATE = 18_000  # records/s: sysbench oltp_read_write through the proxy, 4 threads, on this box
STEADY_SECONDS = 3


class _TimedWriter(CaptureWriter):
    """Measures its own thread's CPU time."""

    cpu = 0.0

    def _run(self):
        t0 = time.thread_time()
        try:
            super()._run()
        finally:
            self.cpu = time.thread_time() - t0


def test_writer_cpu_steady(benchmark):
    """The writer's thread CPU while records arrive at a steady rate (as under load: a drain every
    BATCH_WAIT, each one waking the thread), per second and per record. The producer is a Python
    thread appending every 20 ms (the proxy's are C threads that never take the GIL)."""
    gen = _sysbench_rw()
    recs = [next(gen) for _ in range(STEADY_RATE)]
    tmp = tempfile.TemporaryDirectory()
    counter = itertools.count()
    per_s, per_rec = [], []

    def run():
        rb = RingBuffer(64 * 1024 * 1024)
        w = _TimedWriter(rb, f"{tmp.name}/{next(counter)}", file_size=1 << 30)
        w.start()
        t0 = time.monotonic()
        n, it, ns = 0, itertools.cycle(recs), 1_764_800_000_000_000_000
        while (elapsed := time.monotonic() - t0) < STEADY_SECONDS:
            while n < int(elapsed * STEADY_RATE):
                payload, affected, rows, h1, h2 = next(it)
                assert rb.append_command(1000 + n % 4, ns + n * 50_000, ns + n * 50_000 + 150_000, 0, 0, affected,
                                         rows, payload, 0, 1 if rows else 0, 0, 3, h1, h2, True)
                n += 1
            time.sleep(0.02)
        w.stop({})
        assert w.error is None and w.records_written == n
        per_s.append(w.cpu / STEADY_SECONDS)
        per_rec.append(w.cpu / n)
        for name in w.files:
            os.unlink(os.path.join(w.output_dir, name))

    benchmark.pedantic(run, rounds=5, iterations=1)
    benchmark.extra_info["writer_cpu_ms_per_s"] = round(sorted(per_s)[2] * 1e3, 3)
    benchmark.extra_info["writer_cpu_us_per_record"] = round(sorted(per_rec)[2] * 1e6, 4)
    tmp.cleanup()
