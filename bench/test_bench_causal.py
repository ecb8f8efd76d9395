"""Causal order's cost per command, without the network: the C sequences (note + ready + finish)
and the planner (statement classes, transaction tracking, scopes) on sysbench-shaped records.

Run: python -m pytest bench/test_bench_causal.py --benchmark-only -s
"""
import random

from fastproxy.capture.record import KIND_COMMAND, OUTCOME_OK, Record
from fastproxy.constants import SERVER_STATUS
from fastproxy.replay._scheduler import CausalOrder, Ticket
from fastproxy.replay.causal import Planner

from test_bench_replay_core import _report, _sysbench_statements

N = 100_000
TABLES = 16


def test_causal_order_core(benchmark):
    """Per command: a requirement on its table's commit and lock sequences, two events, the ready
    check, the completion (in capture order) - what the engine pays in C per command."""
    rng = random.Random(5)
    plan = [(rng.randrange(TABLES), i * 1000, i * 1000 + rng.randrange(500, 5000)) for i in range(N)]

    def run():
        co = CausalOrder()
        seqs = [(co.new_sequence(), co.new_sequence()) for _ in range(TABLES)]
        note, ready, finish = co.note, co.ready, co.finish
        pending = []
        for k, (table, start, end) in enumerate(plan):
            c, lk = seqs[table]
            t = Ticket()
            note(t, (c,), (lk,), start, (c, lk), end)
            pending.append(t)
            if len(pending) > 64:  # commands in flight: complete the oldest
                done = pending.pop(0)
                ready(done, k)
                finish(done)
        for t in pending:
            finish(t)
        assert co.retained() == 0

    benchmark(run)
    _report(benchmark, N, "commands")


def test_planner_sysbench_records(benchmark):
    """The planner on read/write records of 16 connections (BEGIN, statements, COMMIT)."""
    stmts = _sysbench_statements(N)
    recs = []
    t = 0
    for i, sql in enumerate(stmts):
        conn = i % 16
        t += 1000
        recs.append(Record(KIND_COMMAND, conn, t, t + 800, OUTCOME_OK, 0, 1, 0, b"\x03" + sql.encode(),
                           status_flags=SERVER_STATUS.AUTOCOMMIT))

    def run():
        p = Planner()
        note, finish = p.note, p.order.finish
        for r in recs:
            tk = note(r.conn_id, r)
            if tk is not None:
                finish(tk)

    benchmark(run)
    _report(benchmark, N, "records")
