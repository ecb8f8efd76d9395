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


def _run(verdict: Verdict, rnd: random.Random, n: int) -> None:
    """n commands over a few digests: equal results, mismatches, nondeterministic ones."""
    for _ in range(n):
        k = rnd.randrange(6)
        sql = ["SELECT a FROM t WHERE id = 1", "UPDATE t SET a = 2 WHERE id = 3", "SELECT NOW()",
               "SELECT b FROM u ORDER BY b", "DELETE FROM t WHERE id = 9", "SELECT COUNT(*) FROM v"][k]
        info = verdict.info(3, "Query", sql)
        rows = rnd.randrange(3)
        ref = Side(0, rows=rows, columns=1, hash_unordered=rows, latency_ns=rnd.randrange(1, 5_000_000))
        new = Side(0, rows=rows if rnd.random() < 0.7 else rows + 1, columns=1, hash_unordered=rows,
                   latency_ns=rnd.randrange(1, 9_000_000))
        verdict.add(info, ref, new, order_unknown=rnd.random() < 0.1)


def _results(verdict: Verdict) -> dict:
    rows = verdict.latency_rows()
    for r in rows:
        r.pop("sample_params", None)
    return {"latency": rows, "mismatches": {k: (m.count, m.sample_stmt) for k, m in verdict.mismatches.items()},
            "nondeterministic": {k: (n.executions, n.differed, n.kinds) for k, n in verdict.nondeterministic.items()},
            "numbers": (verdict.compared, verdict.mismatch_count, verdict.mismatch_kinds, verdict.other_commands,
                        verdict.groups_dropped, verdict.nondeterministic_differed),
            "order unknown": (verdict.mismatch_order_unknown, verdict.order_unknown)}


@pytest.mark.parametrize("max_digests", [2, 2000])
def test_verdict_state_restored_carries_on_as_if_never_stopped(max_digests):
    """A checkpoint's verdict state (JSON and back) restored into a fresh Verdict, then the rest of the
    commands: the same results as one Verdict that saw them all (digests past the cap included)."""
    import json

    opt = VerdictOptions(max_digests=max_digests)
    whole, first = Verdict(opt), Verdict(opt)
    _run(whole, random.Random(7), 3000)
    rnd = random.Random(7)
    _run(first, rnd, 1200)
    second = Verdict(opt)
    second.restore(json.loads(json.dumps(first.state())))
    _run(second, rnd, 1800)
    assert _results(second) == _results(whole)
    assert second.mismatches and second.nondeterministic and second.order_unknown
    # restored rows are written whole by the resumed run (its first report batch replaces the rows)
    assert sum(m.count for m in second.take_mismatch_delta()) == sum(m.count for m in whole.mismatches.values())


def test_a_read_whose_order_production_does_not_tell_is_counted_apart():
    """A read flagged ORDER_UNKNOWN (a commit overlapped it in production) that differs is no mismatch:
    counted apart, per statement; one that does not differ counts nowhere."""
    v = Verdict(VerdictOptions())
    info = v.info(3, "Query", "SELECT v FROM t WHERE id = 1")
    ref = Side(0, rows=1, columns=1, hash_unordered=1, hash_ordered=1)
    assert v.add(info, ref, Side(0, rows=1, columns=1, hash_unordered=2, hash_ordered=2), order_unknown=True) == []
    assert v.add(info, ref, ref, order_unknown=True) == []
    assert v.mismatch_count == 0 and not v.mismatches and v.mismatch_order_unknown == 1
    assert v.order_unknown == {("Query", info.digest): [info.sample_stmt, 1]}
    assert v.add(info, ref, Side(0, rows=1, columns=1, hash_unordered=2, hash_ordered=2)) == ["content"]
    assert v.mismatch_count == 1 and v.mismatch_order_unknown == 1


def test_a_read_whose_order_is_not_known_yet_is_judged_when_it_is():
    """A differing read a commit still to be read may have overlapped is held, then judged once its
    check says (a mismatch, counted late on the timeline; or apart), or forced (at the end, on save)."""
    v = Verdict(VerdictOptions())
    late = []
    v.on_late_mismatch = late.append
    info = v.info(3, "Query", "SELECT v FROM t WHERE id = 1")
    ref, new = Side(0, rows=1, columns=1, hash_unordered=1), Side(0, rows=1, columns=1, hash_unordered=2)
    answers = {"a": None, "b": None}

    def check(name):
        return lambda force: answers[name] if answers[name] is not None or not force else False
    assert v.add(info, ref, new, order_unknown=check("a"), replay_sec=4) == []
    assert v.add(info, ref, new, order_unknown=check("b"), replay_sec=5) == []
    assert v.compared == 2 and v.mismatch_count == 0 and v.mismatch_order_unknown == 0
    v.settle()
    assert v.mismatch_count == 0  # not known yet
    answers["a"] = False
    v.settle()
    assert v.mismatch_count == 1 and late == [4] and v.mismatch_order_unknown == 0
    saved_late = []
    state = v.state(saved_late)  # saved judged as known now (not overlapped), and still waiting here
    assert state["mismatch_count"] == 2 and v.mismatch_count == 1 and late == [4] and saved_late == [5]
    restored = Verdict(VerdictOptions())
    restored.restore(state)
    assert restored.mismatch_count == 2 and restored.mismatch_kinds == {"content": 2}
    answers["b"] = True  # a commit read later overlapped it
    v.settle()
    assert v.mismatch_count == 1 and v.mismatch_order_unknown == 1 and late == [4]
    assert v.add(info, ref, new, order_unknown=lambda force: True) == [] and v.mismatch_order_unknown == 2
    v.settle(force=True)  # (the end: nothing left)
    assert v.state()["mismatch_count"] == 1


def test_a_read_still_to_be_judged_when_the_replay_stops_reading_is_order_unknown():
    """Canceled (or its input broken) before the commits that would tell were read: a differing read
    still waiting is judged order unknown, counted as unread, at the end and in the checkpoint saved
    then (a resumed run carries that on); what the commits read do settle is judged as usual."""
    v = Verdict(VerdictOptions())
    info = v.info(3, "Query", "SELECT v FROM t WHERE id = 1")
    ref, new = Side(0, rows=1, columns=1, hash_unordered=1), Side(0, rows=1, columns=1, hash_unordered=2)
    answers = {"a": None, "b": None}
    for name, sec in (("a", 4), ("b", 5)):
        assert v.add(info, ref, new, order_unknown=lambda force, n=name: answers[n] if answers[n] is not None
                     or not force else False, replay_sec=sec) == []
    answers["a"] = False  # settled by the commits read (not overlapped); b: still not known
    late = []
    state = v.state(late, unread_unknown=True)
    assert (state["mismatch_count"], state["mismatch_order_unknown"], state["mismatch_order_unread"]) == (1, 1, 1)
    assert late == [4] and (v.mismatch_count, v.mismatch_order_unknown, v.mismatch_order_unread) == (0, 0, 0)
    restored = Verdict(VerdictOptions())
    restored.restore(state)
    assert (restored.mismatch_count, restored.mismatch_order_unknown, restored.mismatch_order_unread) == (1, 1, 1)
    v.settle(force=True, unread_unknown=True)
    assert (v.mismatch_count, v.mismatch_order_unknown, v.mismatch_order_unread) == (1, 1, 1)
    assert v.state()["mismatch_order_unread"] == 1


def test_latency_side_state_round_trip_and_checks():
    t = LatencyTable(3)
    a, b = t.add_slot(), t.add_slot()
    for i in range(1, 2000):
        t.record(a, i * 997, i * 7919 + (1 << 33 if i % 500 == 0 else 0))
    for side in (REFERENCE, REPLAY):
        t.load_side(b, side, *t.side_state(a, side))
        assert t.side_state(b, side) == t.side_state(a, side)
        assert t.quantile_ns(b, side, 0.99) == t.quantile_ns(a, side, 0.99)
    t.load_side(b, REPLAY, *t.side_state(a, REPLAY), add=True)  # merged: counts add, max stays
    assert t.count(b, REPLAY) == 2 * t.count(a, REPLAY) and t.max_ns(b, REPLAY) == t.max_ns(a, REPLAY)
    count, sum_ns, max_ns, packed = t.side_state(a, REPLAY)
    with pytest.raises(ValueError):
        t.load_side(b, REPLAY, count + 1, sum_ns, max_ns, packed)  # buckets that do not add up
    with pytest.raises(ValueError):
        t.load_side(b, REPLAY, count, sum_ns, max_ns, packed[:-1])
    with pytest.raises(ValueError):
        t.load_side(b, REPLAY, 1, 0, 0, (NUM_BUCKETS).to_bytes(2, "little") + (1).to_bytes(4, "little"))
