"""The journal's per-command entries written in C (fastproxy/replay/_journal.pyx) are byte for byte
what the struct layouts of fastproxy/replay/journal.py pack, for every value a field can hold; a value
out of a field's range behaves as the Python packing does (struct.error for `S`, the `R` entry left
out and counted), and a full journal refuses the entry."""
from __future__ import annotations

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fastproxy._packet import CommandResult
from fastproxy.replay.journal import HEADER, RESULT, SENT, SIZE, Journal

U64 = st.integers(0, 2**64 - 1)
I64 = st.integers(-2**63, 2**63 - 1)
I32 = st.integers(-2**31, 2**31 - 1)
ANY = st.integers(-2**70, 2**70)  # in and out of every field's range


@pytest.fixture
def pair(tmp_path):
    """A journal written in C and one written with the struct layouts, side by side."""
    fd = os.open(str(tmp_path), os.O_RDONLY | os.O_DIRECTORY)
    c, ref = Journal(fd, "c"), Journal(fd, "ref")
    yield c, ref
    c.close()
    ref.close()
    os.close(fd)


def same(c: Journal, ref: Journal) -> None:
    assert c.pos == ref.pos and c.unjournaled == ref.unjournaled
    assert c._map[:c.pos + RESULT.size] == ref._map[:ref.pos + RESULT.size]


def outcome_of(call):
    try:
        return call()
    except Exception as e:  # noqa: BLE001 - the same exception type on both sides
        return type(e)


def test_layout_sizes_match_the_c_writer():
    assert SENT.size == 22 and RESULT.size == 89  # _journal.pyx: SENT_SIZE, RESULT_SIZE


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from("SN"), ANY, ANY, st.booleans() | st.integers(-2, 300), ANY),
                max_size=6))
def test_sent_and_no_result_entries_match_the_struct_layout(pair, entries):
    c, ref = pair
    c.pos = ref.pos = HEADER.size
    for kind, conn_id, seq, in_txn, thread in entries:
        if kind == "S":
            assert outcome_of(lambda: c.sent(conn_id, seq, in_txn, thread)) == outcome_of(
                lambda: ref._sent_struct(conn_id, seq, in_txn, thread))
        else:
            assert outcome_of(lambda: c.no_result(conn_id, seq)) == outcome_of(
                lambda: ref._no_result_struct(conn_id, seq))
        same(c, ref)


results = st.builds(
    lambda outcome, err, state, msg, rows, cols, h1, h2, aff, warn: (outcome, err, state, msg, rows, cols, h1, h2,
                                                                     aff, warn),
    st.integers(-1, 300), st.integers(0, 2**31 - 1), st.sampled_from(["", "42S02", "HY000x", "é"]),
    st.sampled_from(["", "Table 'a.b' doesn't exist", "é" * 700, "\udcff bad"]), I64, I32, U64, U64, I64, I32)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(results, ANY, ANY, ANY, ANY, st.none() | ANY), max_size=5))
def test_result_entries_match_the_struct_layout(pair, entries):
    c, ref = pair
    c.pos = ref.pos = HEADER.size
    c.unjournaled = ref.unjournaled = 0
    for fields, conn_id, seq, latency, second, lag in entries:
        r = CommandResult(3)
        (r.outcome, r.err_code, r.sql_state, r.err_msg, r.rows, r.columns, r.hash_ordered, r.hash_unordered,
         r.affected_rows, r.warnings) = fields
        assert outcome_of(lambda: c.result(conn_id, seq, r, latency, second, lag)) == outcome_of(
            lambda: ref._result_struct(conn_id, seq, r, latency, second, lag))
        same(c, ref)


def test_a_full_journal_refuses_every_entry(pair):
    c, _ = pair
    r = CommandResult(3)
    r.outcome, r.err_msg = 1, "x" * 100
    c.pos = SIZE - RESULT.size - 100
    assert not c.result(1, 2, r, 3, 4, None) and c.pos == SIZE - RESULT.size - 100
    c.pos = SIZE - SENT.size
    assert not c.sent(1, 2, False, 3) and not c.no_result(1, 2) and c.pos == SIZE - SENT.size
    with pytest.raises(struct.error):
        c.pos = HEADER.size
        c.sent(-1, 2, False, 3)  # as the struct layout: a connection id out of range is an error


class _Killed(BaseException):
    """The process killed there (SIGKILL leaves the mapped file as its stores made it)."""


def test_an_entry_cut_off_by_a_kill_is_not_read(tmp_path, monkeypatch):
    """An entry's tag is written last, so a kill inside an entry leaves the journal's end (zeros), not
    an entry with its data missing: here a failure's `F` entry killed between its length and its JSON
    was read back as a failure of zero bytes, which a resume cannot parse."""
    import fastproxy.replay.journal as journal

    fd = os.open(str(tmp_path), os.O_RDONLY | os.O_DIRECTORY)
    j = Journal(fd, "j")
    try:
        j.restart(7)
        assert j.sent(1, 2, False, 3) and j.text(b"F", b'{"a": 1}')
        real = journal.TEXT

        class KilledAfterPacking:
            size = real.size

            def pack_into(self, *args):
                real.pack_into(*args)
                raise _Killed

        monkeypatch.setattr(journal, "TEXT", KilledAfterPacking())
        with pytest.raises(_Killed):
            j.text(b"O", b'{"b": 2}')
        monkeypatch.setattr(journal, "TEXT", real)
        assert list(journal.read_journal(str(tmp_path / "j"), 7)) == [("S", 1, 2, False, 3), ("F", b'{"a": 1}')]
    finally:
        j.close()
        os.close(fd)
