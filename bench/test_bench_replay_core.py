"""Replay core benchmarks: the C scheduler against heapq, and the SQL normalizer.

Run: python -m pytest bench/test_bench_replay_core.py --benchmark-only

Each benchmark times one batch (BATCH push+pop pairs, or STMTS statements); operations per second
are batch size / median (a push+pop pair counts once), stored in extra_info["ops_per_s"] (see --benchmark-json) and printed with -s.
"""
import heapq
import random

import pytest

from fastproxy._digest import digest, normalize
from fastproxy.replay._scheduler import Scheduler
from fastproxy.replay.statements import is_read_only

BATCH = 100_000     # push+pop pairs per scheduler round
CONNECTIONS = 1000  # heap size in steady state: one entry per replay connection with a command waiting
STMTS = 10_000


def _report(benchmark, ops, unit):
    median = benchmark.stats.stats.median
    benchmark.extra_info["ops_per_s"] = ops / median
    print(f"\n{benchmark.name}: {ops / median:,.0f} {unit}/s (median {median * 1e3:.2f} ms for {ops:,})")


def _dues(n):
    rng = random.Random(7)
    return [rng.randrange(1_000_000) for _ in range(n)]


# The replay loop's pattern: pop the connection that is due, push it back with its next command's
# due time; the heap stays at one entry per connection.

def test_scheduler_steady_state(benchmark):
    s = Scheduler()
    for key, due in enumerate(_dues(CONNECTIONS)):
        s.push(due, key)
    deltas = _dues(BATCH)

    def run():
        push, pop, peek = s.push, s.pop, s.peek_due
        for delta in deltas:
            due = peek()
            push(due + delta, pop())

    benchmark(run)
    _report(benchmark, BATCH, "push+pop pairs")


def test_heapq_steady_state(benchmark):
    h = [(due, key, key) for key, due in enumerate(_dues(CONNECTIONS))]
    heapq.heapify(h)
    deltas = _dues(BATCH)
    seq = [CONNECTIONS]

    def run():
        # (due, seq, key) tuples: seq gives the same FIFO tie-break the Scheduler has
        push, pop = heapq.heappush, heapq.heappop
        n = seq[0]
        for delta in deltas:
            due, _, key = pop(h)
            push(h, (due + delta, n, key))
            n += 1
        seq[0] = n

    benchmark(run)
    _report(benchmark, BATCH, "push+pop pairs")


# Filling and draining a large heap: deep sift-downs, and pop_due returns a whole batch per call.

def test_scheduler_fill_drain(benchmark):
    dues = _dues(BATCH)
    s = Scheduler(BATCH)

    def run():
        push = s.push
        for key, due in enumerate(dues):
            push(due, key)
        out = s.pop_due(1 << 62)
        assert len(out) == BATCH

    benchmark(run)
    _report(benchmark, BATCH, "push+pop pairs")


def test_heapq_fill_drain(benchmark):
    dues = _dues(BATCH)

    def run():
        h = []
        push, pop = heapq.heappush, heapq.heappop
        for key, due in enumerate(dues):
            push(h, (due, key, key))
        out = []
        while h and h[0][0] <= 1 << 62:
            out.append(pop(h)[2])
        assert len(out) == BATCH

    benchmark(run)
    _report(benchmark, BATCH, "push+pop pairs")


def _sysbench_statements(n):
    """Short statements shaped like sysbench oltp_read_write's, with varying literals."""
    rng = random.Random(3)
    shapes = [
        lambda: f"SELECT c FROM sbtest{rng.randint(1, 16)} WHERE id={rng.randint(1, 10**6)}",
        lambda: "SELECT c FROM sbtest1 WHERE id BETWEEN {0} AND {1}".format(*sorted(rng.sample(range(10**6), 2))),
        lambda: f"SELECT SUM(k) FROM sbtest1 WHERE id BETWEEN {rng.randint(1, 999)} AND {rng.randint(1000, 2000)}",
        lambda: f"SELECT DISTINCT c FROM sbtest1 WHERE id BETWEEN 5 AND {rng.randint(6, 99)} ORDER BY c",
        lambda: f"UPDATE sbtest1 SET k=k+1 WHERE id={rng.randint(1, 10**6)}",
        lambda: f"UPDATE sbtest1 SET c='{rng.getrandbits(64):x}-{rng.getrandbits(64):x}' WHERE id={rng.randint(1, 10**6)}",
        lambda: f"DELETE FROM sbtest1 WHERE id={rng.randint(1, 10**6)}",
        lambda: (f"INSERT INTO sbtest1 (id, k, c, pad) VALUES ({rng.randint(1, 10**6)}, {rng.randint(1, 10**6)}, "
                 f"'{rng.getrandbits(120):x}', '{rng.getrandbits(60):x}')"),
    ]
    return [rng.choice(shapes)() for _ in range(n)]


@pytest.fixture(scope="module")
def statements():
    return _sysbench_statements(STMTS)


def test_normalize_short_statements(benchmark, statements):
    def run():
        for sql in statements:
            normalize(sql)

    benchmark(run)
    _report(benchmark, STMTS, "statements")


def test_normalize_short_statements_bytes(benchmark, statements):
    raw = [s.encode() for s in statements]

    def run():
        for sql in raw:
            normalize(sql)

    benchmark(run)
    _report(benchmark, STMTS, "statements")


def test_digest_short_statements(benchmark, statements):
    def run():
        for sql in statements:
            digest(sql)

    benchmark(run)
    _report(benchmark, STMTS, "statements")


def test_is_read_only_short_statements(benchmark, statements):
    def run():
        for sql in statements:
            is_read_only(sql)

    benchmark(run)
    _report(benchmark, STMTS, "statements")


def test_scheduler_steady_state_from_cython(benchmark):
    """The same pattern through the cdef methods (the .pxd contract), without Python call overhead."""
    import array

    from fastproxy.replay._scheduler import churn

    s = Scheduler()
    for key, due in enumerate(_dues(CONNECTIONS)):
        s.push(due, key)
    deltas = array.array("q", _dues(BATCH))
    benchmark(churn, s, deltas)
    assert len(s) == CONNECTIONS
    _report(benchmark, BATCH, "push+pop pairs (C callers)")
