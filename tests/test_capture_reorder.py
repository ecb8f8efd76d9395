"""Completion order restored by the reader: the data plane's workers append command records as
they get to the answers, so with several workers a record may follow one that ended later. The ring
keeps every record's true end and measures the lateness (max_late_ns); the capture writes it to
meta (reorder_window_ns); TrafficReader gives the records back in completion order within it,
without moving a record before an earlier one of its own connection."""
from __future__ import annotations

import json
import os
import random

from fastproxy._ringbuf import RingBuffer
from fastproxy.capture.reader import TrafficReader
from fastproxy.capture.record import KIND_COMMAND, KIND_CONN_CLOSE, KIND_CONN_OPEN, OUTCOME_OK, Record
from fastproxy.capture.reorder import in_completion_order
from fastproxy.capture.writer import CaptureWriter

T0 = 1_700_000_000_000_000_000
MS = 1_000_000


def _cmd(conn: int, start: int, end: int, text: str = "SELECT 1") -> Record:
    return Record(KIND_COMMAND, conn, start, end, OUTCOME_OK, 0, 0, 0, b"\x03" + text.encode())


def _ev(kind: int, conn: int, ts: int) -> Record:
    return Record(kind, conn, ts, 0, 0, 0, 0, 0, b"")


def _appended_late(seed: int, conns: int = 6, per_conn: int = 40, late_ms: int = 5):
    """A workload's records in the order workers might append them: every connection's own
    records in order, each command appended up to late_ms after it ended."""
    rnd = random.Random(seed)
    timed = []
    for conn in range(1, conns + 1):
        t = T0 + rnd.randrange(3 * MS)
        timed.append((t, 0, _ev(KIND_CONN_OPEN, conn, t)))
        appended_at = t
        for i in range(per_conn):
            start = max(t, appended_at) + rnd.randrange(1, 2 * MS)  # after the client had its answer
            t = start + rnd.randrange(1, 3 * MS)
            appended_at = t + rnd.randrange(late_ms * MS)
            timed.append((appended_at, i + 1, _cmd(conn, start, t, f"SELECT {conn}, {i}")))
        timed.append((appended_at + 1, per_conn + 1, _ev(KIND_CONN_CLOSE, conn, appended_at + 1)))
    # append order: by when a worker got to it; a connection's records stay in its own order
    return [rec for _, _, rec in sorted(timed, key=lambda x: (x[0], x[2].conn_id, x[1]))]


def _per_conn(records):
    out = {}
    for r in records:
        out.setdefault(r.conn_id, []).append(r)
    return out


def test_records_appended_late_come_back_in_completion_order():
    appended = _appended_late(1)
    ends = [r.end_ns for r in appended if r.kind == KIND_COMMAND]
    late = max(max(ends[:i + 1]) - e for i, e in enumerate(ends))
    assert late > 0, "the fixture must append out of completion order"
    out = list(in_completion_order(appended, late))
    assert sorted(out, key=id) == sorted(appended, key=id)  # nothing lost, nothing changed
    out_ends = [r.end_ns for r in out if r.kind == KIND_COMMAND]
    assert out_ends == sorted(ends)
    assert _per_conn(out) == _per_conn(appended)  # each connection's records in its own order
    for recs in _per_conn(out).values():
        assert recs[0].kind == KIND_CONN_OPEN and recs[-1].kind == KIND_CONN_CLOSE
    assert list(in_completion_order(appended, late)) == out  # deterministic: checkpoints count records


def test_a_window_smaller_than_the_lateness_keeps_the_old_guarantee_by_raising_ends():
    appended = [_cmd(1, T0, T0 + 10 * MS), _cmd(2, T0, T0 + 30 * MS), _cmd(3, T0, T0 + 5 * MS),
                _cmd(4, T0, T0 + 29 * MS)]
    out = list(in_completion_order(appended, 2 * MS))
    # 4 (1 ms late) is put back before 2; 3 (25 ms late) cannot be: its end is raised to 10 ms
    assert [r.conn_id for r in out] == [1, 3, 4, 2]
    assert [r.end_ns - T0 for r in out] == [10 * MS, 10 * MS, 29 * MS, 30 * MS]
    assert list(in_completion_order(appended, 0)) == appended  # no window: as written


def test_the_ring_keeps_true_ends_and_measures_lateness(tmp_path):
    rb = RingBuffer(1 << 20)
    w = CaptureWriter(rb, str(tmp_path / "c"))
    w.start()
    appended = _appended_late(2)
    for r in appended:
        if r.kind == KIND_COMMAND:
            assert rb.append_command(r.conn_id, r.start_ns, r.end_ns, r.outcome, 0, 0, 0, r.payload, ordered=True)
        else:
            assert rb.append_event(r.kind, r.conn_id, r.start_ns, json.dumps({"user": "u"}).encode()
                                   if r.kind == KIND_CONN_OPEN else b"")
    ends = [r.end_ns for r in appended if r.kind == KIND_COMMAND]
    assert rb.max_late_ns == max(max(ends[:i + 1]) - e for i, e in enumerate(ends)) > 0
    w.stop({"commands": len(ends), "start_ns": T0, "reorder_window_ns": rb.max_late_ns})
    reader = TrafficReader(str(tmp_path / "c"))
    got = list(reader)
    assert [r.end_ns for r in got if r.kind == KIND_COMMAND] == sorted(ends)  # true ends, in order
    assert [(r.conn_id, r.payload) for r in got if r.kind == KIND_COMMAND] == \
        [(r.conn_id, r.payload) for r in sorted((r for r in appended if r.kind == KIND_COMMAND),
                                                key=lambda r: r.end_ns)]
    # as written, the files hold the append order
    assert [r.end_ns for r in reader._as_written() if r.kind == KIND_COMMAND] == ends


def test_a_capture_cut_off_before_its_meta_is_reordered_with_a_generous_window(tmp_path):
    rb = RingBuffer(1 << 20)
    w = CaptureWriter(rb, str(tmp_path / "c"))
    w.start()
    appended = [_cmd(1, T0, T0 + 10 * MS), _cmd(2, T0, T0 + 30 * MS), _cmd(3, T0, T0 + 5 * MS)]
    for r in appended:
        rb.append_command(r.conn_id, r.start_ns, r.end_ns, r.outcome, 0, 0, 0, r.payload, ordered=True)
    w.stop({"commands": 3, "start_ns": T0, "reorder_window_ns": rb.max_late_ns})
    os.remove(tmp_path / "c" / "meta")  # as if the proxy had died before writing it
    reader = TrafficReader(str(tmp_path / "c"))
    assert not reader.complete
    assert [r.conn_id for r in reader] == [3, 1, 2]


def test_a_command_without_an_end_goes_by_its_start_and_keeps_no_end():
    # a command cut off before its answer (end 0) sits where it started, and its end stays unknown
    appended = [_cmd(1, T0, T0 + 10 * MS), _cmd(2, T0 + 12 * MS, 0), _cmd(3, T0 + 1 * MS, T0 + 20 * MS),
                _cmd(4, T0 + 2 * MS, T0 + 11 * MS)]
    out = list(in_completion_order(appended, 20 * MS))
    assert [r.conn_id for r in out] == [1, 4, 2, 3]
    assert [r.end_ns and r.end_ns - T0 for r in out] == [10 * MS, 11 * MS, 0, 20 * MS]


def test_records_read_before_a_damaged_part_are_given_out_before_the_error():
    class Damaged(Exception):
        pass

    appended = _appended_late(2, conns=3, per_conn=5)

    def damaged():
        yield from appended
        raise Damaged("bad frame")

    out = []
    try:
        for rec in in_completion_order(damaged(), 5 * MS):
            out.append(rec)
    except Damaged:
        pass
    else:
        raise AssertionError("the error must reach the caller")
    assert sorted(out, key=id) == sorted(appended, key=id)  # none held back in the window is lost


def _reference_order(records, window: int) -> list:
    """The order as the reader's first version gave it (heapq of (key, read order, record)): the C
    heap of _reorder.pyx must give the same records in the same order, ties included."""
    import heapq

    heap, last_key, out = [], {}, []
    high = emitted = 0

    def take():
        nonlocal emitted
        rec = heapq.heappop(heap)[2]
        if rec.kind == KIND_COMMAND and rec.end_ns:
            if rec.end_ns < emitted:
                rec = rec._replace(end_ns=emitted)
            emitted = rec.end_ns
        out.append(rec)

    for seq, rec in enumerate(records):
        if rec.kind == KIND_COMMAND:
            end = rec.end_ns or rec.start_ns
            high = max(high, end)
        else:
            end = rec.start_ns
        key = max(end, last_key.get(rec.conn_id, 0))
        if rec.kind == KIND_CONN_CLOSE:
            last_key.pop(rec.conn_id, None)
        else:
            last_key[rec.conn_id] = key
        heapq.heappush(heap, (key, seq, rec))
        while heap and heap[0][0] <= high - window:
            take()
    while heap:
        take()
    return out


def test_the_c_heap_gives_what_a_heapq_of_the_same_keys_gives():
    rnd = random.Random(11)
    for trial in range(300):
        records = []
        for i in range(rnd.randrange(1, 120)):
            conn = rnd.randrange(1, 6)
            start = T0 + rnd.randrange(0, 50) * MS // 10  # coarse times: many ties
            kind = rnd.choice((KIND_COMMAND, KIND_COMMAND, KIND_COMMAND, KIND_CONN_OPEN, KIND_CONN_CLOSE))
            if kind == KIND_COMMAND:
                end = 0 if rnd.random() < 0.1 else start + rnd.randrange(0, 20) * MS // 10
                records.append(_cmd(conn, start, end, f"SELECT {i}"))
            else:
                records.append(_ev(kind, conn, start))
        window = rnd.choice((1, MS // 2, MS, 3 * MS, 100 * MS))
        assert list(in_completion_order(records, window)) == _reference_order(records, window), trial
