"""The replayer's per-command pieces in C agree with their Python references: the record decoder
(fastproxy/capture/_records.pyx vs record.decode_records) on every record shape, cut and corrupt
input, both header versions; the verdict's equality check (fastproxy/report/_compare.pyx) with
compare_sides."""
from __future__ import annotations


import pytest
from hypothesis import given, settings, strategies as st

from fastproxy._packet import CommandResult
from fastproxy.capture import _records, record
from fastproxy.capture.record import HEADER, HEADER_V1, KIND_COMMAND, MAX_KIND, MAX_OUTCOME, Record, encode
from fastproxy.errors import TrafficFormatError
from fastproxy.report._compare import same_as_captured
from fastproxy.report.observe import capture_side, replay_side
from fastproxy.report.verdict import compare_sides

U64 = st.integers(0, 2**64 - 1)
I64 = st.integers(-2**63, 2**63 - 1)

records = st.builds(
    Record, st.integers(KIND_COMMAND, MAX_KIND), U64, I64, I64, st.integers(0, MAX_OUTCOME), st.integers(0, 65535),
    U64, U64, st.binary(max_size=300), U64, U64, U64, st.integers(0, 2**32 - 1), st.integers(0, 65535),
    st.integers(0, 65535))


def both(buf, *args):
    out = []
    for decode in (record.decode_records, _records.decode_records):
        try:
            out.append(decode(buf, *args))
        except TrafficFormatError as e:
            out.append(("error", str(e)))
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(records, max_size=8), st.integers(0, 400), st.sampled_from([bytes, bytearray, memoryview]))
def test_decoder_matches_the_reference(recs, cut, kind):
    buf = b"".join(encode(r) for r in recs)
    py, c = both(kind(buf), 7, "f")
    assert c == py
    assert c[0] == recs and c[1] == len(buf)
    # a cut anywhere: the whole records before it, the rest left for more data
    short = buf[:max(0, len(buf) - cut)]
    py, c = both(kind(short), 7, "f")
    assert c == py


def v1_encode(r: Record) -> bytes:
    return HEADER_V1.pack(HEADER_V1.size + len(r.payload), r.kind, r.outcome, r.err_code, r.conn_id, r.start_ns,
                          r.end_ns, r.affected_rows, r.rows) + r.payload


@settings(max_examples=100, deadline=None)
@given(st.lists(records.filter(lambda r: r.outcome <= 3), max_size=6))
def test_decoder_matches_the_reference_on_version_1(recs):
    buf = b"".join(v1_encode(r) for r in recs)
    py, c = both(buf, 0, "v1", HEADER_V1)
    assert c == py
    assert [x.payload for x in c[0]] == [r.payload for r in recs]
    assert all(x.last_insert_id == 0 and x.status_flags == 0 for x in c[0])


@pytest.mark.parametrize("field,value", [(1, 0), (1, MAX_KIND + 1), (2, MAX_OUTCOME + 1), (0, 10)])
def test_decoder_refuses_corrupt_headers_as_the_reference(field, value):
    good = encode(Record(KIND_COMMAND, 1, 2, 3, 0, 0, 0, 0, b"\x03SELECT 1"))
    fields = list(HEADER.unpack_from(good))
    fields[field] = value
    bad = good + HEADER.pack(*fields) + b"\x03SELECT 2"
    py, c = both(bad, 1000, "traffic-x.lz4")
    assert py[0] == "error" and c == py
    assert "traffic-x.lz4: corrupt record at offset" in c[1]


def test_version_1_outcome_range_is_the_reference_one():
    bad = HEADER_V1.pack(HEADER_V1.size, KIND_COMMAND, 4, 0, 1, 2, 3, 0, 0)  # BACKEND_LOST: not in version 1
    py, c = both(bad, 0, "v1", HEADER_V1)
    assert py[0] == "error" and c == py


def _result(**fields) -> CommandResult:
    r = CommandResult(3)
    r.outcome = 0
    for k, v in fields.items():
        setattr(r, k, v)
    return r


SIDE_FIELDS = {"rows": 3, "columns": 2, "hash_ordered": 11, "hash_unordered": 12, "affected_rows": 0, "warnings": 1}


@pytest.mark.parametrize("differs", [None, *SIDE_FIELDS])
def test_same_as_captured_only_when_compare_sides_finds_nothing(differs):
    rec = Record(KIND_COMMAND, 1, 10, 20, 0, 0, SIDE_FIELDS["affected_rows"], SIDE_FIELDS["rows"], b"\x03SELECT",
                 0, SIDE_FIELDS["hash_ordered"], SIDE_FIELDS["hash_unordered"], SIDE_FIELDS["columns"],
                 SIDE_FIELDS["warnings"], 0)
    fields = dict(SIDE_FIELDS)
    if differs:
        fields[differs] += 1
    result = _result(**fields)
    same = same_as_captured(rec, result)
    assert same == (differs is None)
    if same:  # then the full comparison agrees, whatever it compares
        assert compare_sides(capture_side(rec), replay_side(result, 1, 0), True) == []


def test_same_as_captured_leaves_out_of_range_values_to_the_full_comparison():
    rec = Record(KIND_COMMAND, 1, 10, 20, 0, 0, 0, -1, b"\x03SELECT")  # a converted input's odd row count
    assert same_as_captured(rec, _result(rows=-1)) is False
    assert same_as_captured(Record(KIND_COMMAND, 1, 10, 20, 0, 0, 0, 2**70, b""), _result()) is False


def test_decoded_records_are_records_the_collector_never_walks():
    """The C decoder allocates each Record as the tuple subclass it is and leaves it out of the
    cyclic collector (ints and bytes only: it cannot be part of a cycle)."""
    import gc

    recs = [Record(KIND_COMMAND, 7, 1, 2, 0, 0, 0, 0, b"\x03SELECT 1", hash_ordered=2**64 - 1),
            Record(KIND_COMMAND, 8, 3, 4, 0, 0, 0, 0, b"")]
    got, used = _records.decode_records(b"".join(encode(r) for r in recs))
    assert got == recs and used == sum(len(encode(r)) for r in recs)
    assert all(type(r) is Record for r in got)
    assert not any(gc.is_tracked(r) for r in got)
    assert got[0].payload == b"\x03SELECT 1" and got[0]._replace(conn_id=9).conn_id == 9
