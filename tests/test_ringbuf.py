"""RingBuffer: records round-trip byte-exact, refusal is all-or-nothing, wrap-around is sound."""
from collections import deque

import pytest
from hypothesis import given, settings, strategies as st

from fastproxy._ringbuf import RingBuffer
from fastproxy.capture.record import (HEADER_SIZE, KIND_COMMAND, KIND_CONN_CLOSE, KIND_CONN_OPEN,
                                      KIND_CONN_STATE, OUTCOME_ERR, OUTCOME_OK, Record, encode,
                                      iter_records)


def cmd(conn_id, payload, i=0, outcome=OUTCOME_OK, err=0):
    return Record(KIND_COMMAND, conn_id, 1_700_000_000_000_000_000 + i, 1_700_000_000_000_500_000 + i,
                  outcome, err, i * 3, i * 7, payload)


def append(rb, r):
    if r.kind == KIND_COMMAND:
        return rb.append_command(r.conn_id, r.start_ns, r.end_ns, r.outcome, r.err_code,
                                 r.affected_rows, r.rows, r.payload)
    return rb.append_event(r.kind, r.conn_id, r.start_ns, r.payload)


def test_round_trip_all_kinds_and_buffer_types():
    rb = RingBuffer(1 << 16)
    recs = [
        Record(KIND_CONN_OPEN, 7, 10, 0, 0, 0, 0, 0, b'{"user":"u"}'),
        Record(KIND_CONN_STATE, 8, 11, 0, 0, 0, 0, 0, b'{"prepared":[]}'),
        cmd(7, b"\x03SELECT 1", 1),
        cmd(7, b"\x03bad", 2, OUTCOME_ERR, 1064),
        Record(KIND_CONN_CLOSE, 7, 12, 0, 0, 0, 0, 0, b""),
        Record(KIND_COMMAND, 2**64 - 1, -5, 2**63 - 1, 3, 65535, 2**64 - 1, 2**64 - 1, b"\x0e"),
    ]
    for r in recs:
        assert append(rb, r)
    # bytearray and memoryview payloads are accepted without conversion by the caller
    assert rb.append_command(9, 1, 2, 0, 0, 0, 0, bytearray(b"\x03ba"))
    assert rb.append_command(9, 1, 2, 0, 0, 0, 0, memoryview(b"xx\x03mv")[2:])
    recs += [cmd(9, b"\x03ba")._replace(start_ns=1, end_ns=2, affected_rows=0, rows=0),
             cmd(9, b"\x03mv")._replace(start_ns=1, end_ns=2, affected_rows=0, rows=0)]
    expected = b"".join(encode(r) for r in recs)
    assert rb.used == len(expected) == rb.bytes_appended
    assert rb.records_appended == len(recs)
    out = rb.drain(1 << 20)
    assert out == expected  # the C encoder matches the documented (Python) encoding
    assert list(iter_records(out)) == recs
    assert rb.used == 0 and rb.drain(100) == b""
    assert rb.records_drained == len(recs)


def test_drain_returns_whole_records_only():
    rb = RingBuffer(4096)
    for i in range(10):
        assert rb.append_command(1, i, i, 0, 0, 0, 0, b"x" * (100 - HEADER_SIZE))  # 100 bytes each
    first = rb.drain(250)
    assert len(first) == 200 and [r.start_ns for r in iter_records(first)] == [0, 1]
    # A record bigger than max_bytes still comes out alone, so a drain always progresses.
    assert len(rb.drain(10)) == 100
    rest = rb.drain(1 << 20)
    assert [r.start_ns for r in iter_records(rest)] == list(range(3, 10))


def test_full_refuses_without_partial_write():
    rb = RingBuffer(1000)
    n = 0
    while rb.append_command(1, n, n, 0, 0, 0, 0, b"p" * 100):
        n += 1
    assert n == 1000 // (HEADER_SIZE + 100)
    used, appended = rb.used, rb.records_appended
    assert not rb.append_command(1, 0, 0, 0, 0, 0, 0, b"p" * 100)
    assert rb.used == used and rb.records_appended == appended
    recs = list(iter_records(rb.drain(1 << 20)))
    assert [r.start_ns for r in recs] == list(range(n))
    # Space freed by the drain is usable again.
    assert rb.append_command(1, 0, 0, 0, 0, 0, 0, b"p" * 100)


def test_exactly_full_and_larger_than_capacity():
    rb = RingBuffer(HEADER_SIZE + 10)
    assert not rb.append_command(1, 0, 0, 0, 0, 0, 0, b"x" * 11)  # larger than the whole buffer
    assert rb.append_command(1, 0, 0, 0, 0, 0, 0, b"x" * 10)      # fills it exactly
    assert rb.used == rb.capacity
    assert not rb.append_event(KIND_CONN_CLOSE, 1, 0, b"")
    assert list(iter_records(rb.drain(1 << 20)))[0].payload == b"x" * 10


def test_large_payload_wrapping():
    rb = RingBuffer(3 * 1024 * 1024)
    big = bytes(range(256)) * 8192  # 2 MiB
    assert rb.append_command(1, 0, 0, 0, 0, 0, 0, b"\x03" * 1_000_000)
    assert rb.append_command(1, 0, 0, 0, 0, 0, 0, b"\x03" + b"x" * 999_999)
    assert not rb.append_command(2, 0, 0, 0, 0, 0, 0, big)  # 2 MiB more does not fit yet
    assert len(rb.drain(1)) == HEADER_SIZE + 1_000_000     # frees the start of the buffer
    assert rb.append_command(2, 0, 0, 0, 0, 0, 0, big)      # written across the end
    recs = list(iter_records(rb.drain(1 << 30)))
    assert [len(r.payload) for r in recs] == [1_000_000, len(big)]
    assert recs[1].payload == big and recs[0].payload == b"\x03" + b"x" * 999_999


def test_invalid_arguments():
    with pytest.raises(ValueError):
        RingBuffer(10)
    rb = RingBuffer(1024)
    with pytest.raises(ValueError):
        rb.append_event(KIND_COMMAND, 1, 0, b"")
    with pytest.raises(OverflowError):
        rb.append_command(1, 0, 0, 256, 0, 0, 0, b"")
    with pytest.raises(TypeError):
        rb.append_command(1, 0, 0, 0, 0, 0, 0, "text")
    assert rb.used == 0 and rb.records_appended == 0


# A random interleaving of appends and drains against a plain deque model: exercises every
# wrap position (header split, payload split, length field split) over many cycles.
ops = st.lists(st.one_of(
    st.tuples(st.just("append"), st.integers(0, 200)),
    st.tuples(st.just("drain"), st.integers(1, 600)),
), max_size=200)


@settings(max_examples=300, deadline=None)
@given(capacity=st.integers(HEADER_SIZE, 700), ops=ops)
def test_wraparound_matches_model(capacity, ops):
    rb = RingBuffer(capacity)
    model: deque[bytes] = deque()
    seq = 0
    for op, n in ops:
        if op == "append":
            r = cmd(seq % 5, bytes([seq % 256]) * n, seq)
            enc = encode(r)
            fits = sum(map(len, model)) + len(enc) <= capacity
            assert append(rb, r) == fits
            if fits:
                model.append(enc)
            seq += 1
        else:
            expected = b""
            while model and (not expected or len(expected) + len(model[0]) <= n):
                expected += model.popleft()
            assert rb.drain(n) == expected
        assert rb.used == sum(map(len, model))
    assert rb.drain(1 << 20) == b"".join(model)


def test_close_refuses_appends_and_keeps_what_is_buffered():
    rb = RingBuffer(4096)
    assert rb.append_command(1, 1, 2, 0, 0, 0, 0, b"\x03a")
    assert rb.append_event(KIND_CONN_OPEN, 2, 3, b"{}")
    assert not rb.closed
    rb.close()
    assert rb.closed
    assert not rb.append_command(1, 4, 5, 0, 0, 0, 0, b"\x03b")
    assert not rb.append_event(KIND_CONN_CLOSE, 1, 6, b"")
    assert (rb.records_appended, rb.commands_appended) == (2, 1)
    assert [r.payload for r in iter_records(rb.drain(1 << 20))] == [b"\x03a", b"{}"]

# ---- the side path: records too large for the ring wait outside it, in order ----------------------
def drain_all(rb):
    """Every record in order, as the capture writer takes them: ring chunks and large records."""
    out = []
    while True:
        chunk = rb.drain(1 << 20)
        if chunk:
            out += list(iter_records(chunk))
            continue
        big = rb.next_large()
        if big is None:
            return out
        out += list(iter_records(big[0] + big[1]))
        rb.pop_large()


def test_large_record_waits_outside_the_ring_in_order():
    rb = RingBuffer(4096, large_max=1 << 20)
    assert rb.large_min == 4096 // 4 - HEADER_SIZE
    big = bytes(range(256)) * 400  # 100 KiB: 25 times the ring
    recs = [cmd(1, b"\x03before", 1), cmd(2, b"\x03" + big, 2), Record(KIND_CONN_CLOSE, 2, 3, 0, 0, 0, 0, 0, b""),
            cmd(1, b"\x03after", 4)]
    for r in recs:
        assert append(rb, r)
    assert rb.large_pending == 1 and rb.large_bytes == len(big) + 1
    assert rb.used < 4 * (HEADER_SIZE + 16)  # the ring holds a marker, not the payload
    assert rb.bytes_appended == sum(len(encode(r)) for r in recs)
    first = rb.drain(1 << 20)  # stops before the large record's marker
    assert list(iter_records(first)) == recs[:1]
    assert rb.drain(1 << 20) == b""
    head, payload = rb.next_large()
    assert payload is recs[1].payload  # kept by reference, never copied
    assert head + payload == encode(recs[1])
    assert rb.next_large() == (head, payload)  # stays until popped (a failed write loses nothing)
    rb.pop_large()
    assert rb.large_pending == 0 and rb.large_bytes == 0 and rb.next_large() is None
    assert list(iter_records(rb.drain(1 << 20))) == recs[2:]
    assert rb.records_drained == 4 and rb.commands_drained == 3 and rb.used == 0
    with pytest.raises(ValueError):
        rb.pop_large()


def test_large_records_are_bounded_and_refusals_say_why():
    from fastproxy._ringbuf import REFUSED_FULL, REFUSED_LARGE_LIMIT

    rb = RingBuffer(1024, large_max=250_000)
    assert rb.append_command(1, 0, 0, 0, 0, 0, 0, b"L" * 100_000)
    assert rb.append_command(1, 1, 0, 0, 0, 0, 0, b"M" * 100_000)
    assert not rb.append_command(1, 2, 0, 0, 0, 0, 0, b"N" * 100_000)  # 300,000 bytes would wait
    assert rb.refusal == REFUSED_LARGE_LIMIT
    assert rb.large_pending == 2 and rb.large_bytes == 200_000 and rb.records_appended == 2
    rb.next_large()
    rb.pop_large()
    assert rb.append_command(1, 2, 0, 0, 0, 0, 0, b"N" * 100_000)  # room again
    # a full ring refuses a large record too (its marker needs room), with nothing kept aside
    while rb.append_command(2, 0, 0, 0, 0, 0, 0, b"s" * 50):
        pass
    assert rb.refusal == REFUSED_FULL
    pending, waiting = rb.large_pending, rb.large_bytes
    assert not rb.append_command(1, 3, 0, 0, 0, 0, 0, b"O" * 10_000)
    assert rb.refusal == REFUSED_FULL and (rb.large_pending, rb.large_bytes) == (pending, waiting)
    assert [r.payload[:1] for r in drain_all(rb) if r.conn_id == 1] == [b"M", b"N"]


def test_large_buffer_payloads_are_copied_and_events_take_the_side_path():
    rb = RingBuffer(1024, large_max=1 << 20)
    body = bytearray(b"{" + b" " * 5000 + b"}")
    assert rb.append_event(KIND_CONN_STATE, 5, 9, body)
    body[0:1] = b"X"  # the caller reuses its buffer: the record keeps what was appended
    assert rb.append_command(5, 1, 2, 0, 0, 0, 0, memoryview(b"\x03" + b"q" * 3000))
    recs = drain_all(rb)
    assert recs[0] == Record(KIND_CONN_STATE, 5, 9, 0, 0, 0, 0, 0, b"{" + b" " * 5000 + b"}")
    assert recs[1].payload == b"\x03" + b"q" * 3000 and rb.commands_drained == 1


def test_without_side_path_refusals_say_why():
    from fastproxy._ringbuf import REFUSED_BIGGER_THAN_RING, REFUSED_FULL

    rb = RingBuffer(1000)
    assert rb.large_min is None and rb.large_max == 0
    assert not rb.append_command(1, 0, 0, 0, 0, 0, 0, b"x" * 1000)
    assert rb.refusal == REFUSED_BIGGER_THAN_RING
    while rb.append_command(1, 0, 0, 0, 0, 0, 0, b"x" * 100):
        pass
    assert rb.refusal == REFUSED_FULL


ops_large = st.lists(st.one_of(
    st.tuples(st.just("append"), st.integers(0, 120)),
    st.tuples(st.just("append"), st.integers(150, 2000)),  # above large_min: the side path
    st.tuples(st.just("event"), st.integers(0, 30)),
    st.tuples(st.just("drain"), st.integers(1, 600)),
    st.tuples(st.just("large"), st.just(0)),
), max_size=200)


@settings(max_examples=300, deadline=None)
@given(capacity=st.integers(4 * (HEADER_SIZE + 8), 700), large_max=st.integers(1, 5000), ops=ops_large)
def test_side_path_matches_model(capacity, large_max, ops):
    """Appends, drains and large-record pops in any interleaving keep every record, in order."""
    rb = RingBuffer(capacity, large_max=large_max)
    large_min = rb.large_min
    model: deque[tuple[Record, int]] = deque()  # (record, bytes it takes in the ring)
    seq = commands = 0
    for op, n in ops:
        if op in ("append", "event"):
            r = (cmd(seq % 5, bytes([seq % 256]) * n, seq) if op == "append"
                 else Record(KIND_CONN_OPEN, seq % 5, seq, 0, 0, 0, 0, 0, b"e" * n))
            side = n > large_min
            size = HEADER_SIZE + 8 if side else HEADER_SIZE + n
            waiting = sum(len(m.payload) for m, s in model if s == HEADER_SIZE + 8 and len(m.payload) > large_min)
            fits = sum(s for _, s in model) + size <= capacity and (not side or waiting + n <= large_max)
            assert append(rb, r) == fits
            if fits:
                model.append((r, size))
            seq += 1
        elif op == "drain":
            expected = []
            taken = 0
            while model and len(model[0][0].payload) <= large_min and (not taken or taken + model[0][1] <= n):
                r, s = model.popleft()
                expected.append(r)
                taken += s
            assert list(iter_records(rb.drain(n))) == expected
            commands += sum(r.kind == KIND_COMMAND for r in expected)
        else:
            big = rb.next_large()
            if model and len(model[0][0].payload) > large_min:
                r, _ = model.popleft()
                assert big[0] + big[1] == encode(r)
                rb.pop_large()
                commands += r.kind == KIND_COMMAND
            else:
                assert big is None
        assert rb.used == sum(s for _, s in model)
        assert rb.commands_drained == commands
    assert drain_all(rb) == [r for r, _ in model]
