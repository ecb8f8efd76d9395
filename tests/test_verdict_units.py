"""The verdict's pure parts: what makes a statement nondeterministic or ordered (read from its
normalized SQL, so literals never count), the latency histogram's buckets and quantiles (within
their 6.25 % bucket width of the exact ones), and its memory cap (past it: no slot, counted apart)."""
from __future__ import annotations

import random

import pytest

from fastproxy._digest import normalize
from fastproxy.report._latency import NUM_BUCKETS, REFERENCE, REPLAY, LatencyTable, bucket_index, bucket_lower_ns, \
    bucket_upper_ns
from fastproxy.report.classify import nondeterministic_reasons, ordered_result
from fastproxy.report.verdict import Side, Verdict, VerdictOptions, compare_sides


@pytest.mark.parametrize("sql,reasons", [
    ("SELECT NOW(), RAND()", ["time", "randomness"]),
    ("select current_timestamp", ["time"]),
    ("SELECT UNIX_TIMESTAMP()", ["time"]),
    ("SELECT UNIX_TIMESTAMP(created) FROM t", []),
    ("SELECT UUID()", ["randomness"]),
    ("SELECT CONNECTION_ID(), @@hostname", ["session"]),
    ("SELECT LAST_INSERT_ID()", ["session"]),
    ("SELECT LAST_INSERT_ID(5)", []),  # sets it: deterministic
    ("SHOW TABLES", ["server metadata"]),
    ("SELECT * FROM information_schema.tables", ["server metadata"]),
    ("SELECT id FROM t LIMIT 3", ["LIMIT without ORDER BY"]),
    ("SELECT id FROM t ORDER BY id LIMIT 3", []),
    ("SELECT * FROM (SELECT id FROM t LIMIT 3) d ORDER BY id", ["LIMIT without ORDER BY"]),  # the inner block
    ("DELETE FROM t WHERE a = 1 LIMIT 10", ["LIMIT without ORDER BY"]),
    ("SELECT GROUP_CONCAT(a) FROM t", ["GROUP_CONCAT without ORDER BY"]),
    ("SELECT GROUP_CONCAT(a ORDER BY a) FROM t", []),
    ("SELECT * FROM t FOR UPDATE SKIP LOCKED", ["SKIP LOCKED / NOWAIT"]),
    ("SELECT 'now()', 'rand()' FROM t WHERE note = 'limit 5'", []),  # literals are not calls
    ("SELECT id, name FROM t WHERE id = 7", []),
])
def test_nondeterminism_reasons(sql, reasons):
    assert nondeterministic_reasons(normalize(sql)) == reasons


@pytest.mark.parametrize("sql,ordered", [
    ("SELECT a FROM t ORDER BY a", True),
    ("SELECT a FROM t", False),
    ("SELECT a FROM (SELECT a FROM t ORDER BY a) d", False),  # an inner ORDER BY orders nothing outside
    ("(SELECT 1) UNION (SELECT 2) ORDER BY 1", True),
    ("SELECT a FROM t ORDER BY a; SELECT 1", False),
    ("SELECT a FROM t ORDER BY a; SELECT b FROM u ORDER BY b", True),
])
def test_ordered_result(sql, ordered):
    assert ordered_result(normalize(sql)) is ordered


def test_compare_sides_kinds():
    ref = Side(0, rows=3, columns=2, hash_ordered=1, hash_unordered=10, warnings=0)
    assert compare_sides(ref, Side(0, rows=3, columns=2, hash_ordered=1, hash_unordered=10), True) == []
    assert [k for k, *_ in compare_sides(ref, Side(0, rows=2, columns=2, hash_ordered=5, hash_unordered=11), True)] \
        == ["rows"]
    assert [k for k, *_ in compare_sides(ref, Side(0, rows=3, columns=2, hash_ordered=5, hash_unordered=11), True)] \
        == ["content"]
    # the same rows in another order: "order" only when the statement orders them
    assert [k for k, *_ in compare_sides(ref, Side(0, rows=3, columns=2, hash_ordered=5, hash_unordered=10), True)] \
        == ["order"]
    assert compare_sides(ref, Side(0, rows=3, columns=2, hash_ordered=5, hash_unordered=10), False) == []
    dml = Side(0, affected_rows=2)
    assert [k for k, *_ in compare_sides(dml, Side(0, affected_rows=3, warnings=1), False)] == ["affected_rows",
                                                                                               "warnings"]
    # an input that recorded only affected rows compares only those
    assert compare_sides(ref, Side(0, rows=9, warnings=4), False, kinds=frozenset({"affected_rows"})) == []


def test_bucket_bounds_are_contiguous_and_tight():
    for idx in range(1, NUM_BUCKETS):
        assert bucket_lower_ns(idx) == bucket_upper_ns(idx - 1) < bucket_upper_ns(idx)
    for ns in (0, 999, 1024, 50_000, 1_234_567, 987_654_321, 10**12):
        idx = bucket_index(ns)
        assert bucket_lower_ns(idx) <= ns < bucket_upper_ns(idx) or idx == NUM_BUCKETS - 1
        if 16 << 10 <= ns < 1 << 40:
            assert (bucket_upper_ns(idx) - bucket_lower_ns(idx)) / bucket_lower_ns(idx) <= 0.0625


def test_quantiles_within_a_bucket_of_the_exact_ones():
    rnd = random.Random(5)
    t = LatencyTable(2)
    slot = t.add_slot()
    ref = sorted(int(rnd.lognormvariate(12, 1.2)) for _ in range(20_000))
    new = sorted(int(x * 3) for x in ref)
    for a, b in zip(ref, new):
        t.record(slot, a, b)
    for side, values in ((REFERENCE, ref), (REPLAY, new)):
        assert t.count(slot, side) == len(values) and t.max_ns(slot, side) == values[-1]
        for q in (0.5, 0.9, 0.99):
            exact = values[int(q * len(values)) - 1]
            got = t.quantile_ns(slot, side, q)
            assert exact <= got <= max(exact * 1.0625 + 1024, exact + 1024), (side, q, exact, got)


def test_the_digest_cap_sends_later_digests_to_other():
    v = Verdict(VerdictOptions(max_digests=3))
    ok = Side(0, latency_ns=100_000)
    infos = [v.info(3, "Query", f"SELECT {c} FROM t{i}") for i, c in enumerate("abcde")]
    assert len(v.digests) == 3 and len({i.slot for i in infos[:3]}) == 3
    assert infos[3].slot == infos[4].slot == v.other_slot  # past the cap: the shared row
    for info in infos:
        v.add(info, ok, ok)
    assert v.other_commands == 2
    rows = v.latency_rows()
    assert [r["digest"] for r in rows if r["digest"] == "other"] == ["other"] and len(rows) == 4
    t = LatencyTable(1)
    assert t.add_slot() == 0 and t.add_slot() == -1 and len(t) == 1
