"""Scheduler: a C min-heap of (due, push order) -> key, checked against a sorted-list model."""
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastproxy.replay._scheduler import Scheduler


def test_empty():
    s = Scheduler()
    assert len(s) == 0
    assert not s
    with pytest.raises(IndexError):
        s.pop()
    with pytest.raises(IndexError):
        s.peek_due()
    assert s.pop_due(10**18) == []


def test_basic_order_and_peek():
    s = Scheduler()
    for due, key in [(30, 3), (10, 1), (20, 2)]:
        s.push(due, key)
    assert len(s) == 3 and s
    assert s.peek_due() == 10
    assert [s.pop(), s.pop(), s.pop()] == [1, 2, 3]
    assert not s


def test_fifo_among_equal_due_times():
    s = Scheduler(capacity=1)
    for key in range(100):
        s.push(5, key)
    s.push(4, 1000)
    assert s.pop() == 1000
    assert [s.pop() for _ in range(100)] == list(range(100))


def test_pop_due_respects_now_and_max_items():
    s = Scheduler()
    for i in range(10):
        s.push(i * 10, i)
    assert s.pop_due(25) == [0, 1, 2]
    assert s.pop_due(100, max_items=2) == [3, 4]
    assert s.pop_due(-1) == []
    assert s.pop_due(55) == [5]
    assert len(s) == 4


def test_negative_due_and_extreme_values():
    s = Scheduler()
    s.push(-5, 1)
    s.push(2**63 - 1, 2)
    s.push(-2**63, 3)
    assert [s.pop(), s.pop(), s.pop()] == [3, 1, 2]


def test_rejects_negative_key_and_out_of_range_values():
    s = Scheduler()
    with pytest.raises(ValueError):
        s.push(1, -1)
    with pytest.raises(OverflowError):
        s.push(2**63, 1)
    assert len(s) == 0


def test_clear_keeps_working():
    s = Scheduler()
    for i in range(1000):
        s.push(i, i)
    s.clear()
    assert len(s) == 0 and not s
    s.push(7, 42)
    assert s.peek_due() == 7 and s.pop() == 42


def test_large_count_pops_in_order():
    rng = random.Random(1)
    s = Scheduler()
    pushed = []
    for i in range(100_000):
        due = rng.randrange(1_000_000)
        s.push(due, i)
        pushed.append((due, i))
    dues = {key: due for due, key in pushed}
    out = [s.pop() for _ in range(len(pushed))]
    assert not s
    assert sorted(out) == list(range(100_000))
    assert all(dues[a] <= dues[b] for a, b in zip(out, out[1:]))
    # keys are increasing in push order, so FIFO among ties means increasing keys per due time
    assert out == [key for _, key in sorted(pushed)]


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.integers(-50, 50), st.integers(0, 2**63 - 1)),
        st.tuples(st.just("pop"), st.none(), st.none()),
        st.tuples(st.just("pop_due"), st.integers(-60, 60), st.integers(0, 5)),
        st.tuples(st.just("clear"), st.none(), st.none()),
    ),
    max_size=200,
)


@settings(max_examples=300)
@given(_ops)
def test_matches_sorted_list_model(ops):
    s = Scheduler(capacity=2)
    model = []      # (due, seq, key), kept sorted
    seq = 0
    for op, a, b in ops:
        if op == "push":
            s.push(a, b)
            model.append((a, seq, b))
            model.sort()
            seq += 1
        elif op == "pop":
            if model:
                assert s.pop() == model.pop(0)[2]
            else:
                with pytest.raises(IndexError):
                    s.pop()
        elif op == "pop_due":
            expected = [key for due, _, key in model if due <= a][:b]
            del model[:len(expected)]
            assert s.pop_due(a, b) == expected
        else:
            s.clear()
            model.clear()
        assert len(s) == len(model)
        assert bool(s) == bool(model)
        if model:
            assert s.peek_due() == model[0][0]
