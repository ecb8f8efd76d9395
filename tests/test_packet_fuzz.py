"""Property tests for the packet layer: chunking never changes what the framer and tracker say, and
no input, however broken, makes them fail with anything but a ProtocolError.

Streams come from tests/packet_streams.py (valid server responses for random command sequences).
"""
import random

from hypothesis import HealthCheck, given, settings, strategies as st

from fastproxy._packet import PacketFramer, ResponseTracker
from fastproxy.errors import ProtocolError

import packet_streams as ps

FIELDS = ("cmd", "outcome", "err_code", "sql_state", "err_msg", "affected_rows", "last_insert_id", "rows",
          "status_flags", "warnings", "result_sets", "columns", "stmt_id", "num_params", "num_columns",
          "local_infile", "tag")

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def as_tuple(r):
    return tuple(getattr(r, f) for f in FIELDS)


def streams(max_commands=12):
    return st.builds(lambda seed, n, dep: (ps.random_stream(seed, n, dep), dep),
                     st.integers(0, 2**32 - 1), st.integers(1, max_commands), st.booleans())


def split(data: bytes, cuts) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in points + [len(data)]:
        out.append(data[prev:p])  # empty chunks included on purpose
        prev = p
    return out


def track(stream, dep, chunks):
    """Feed chunks; returns (results, [completed count after each chunk])."""
    t = ResponseTracker(dep)
    for i, x in enumerate(stream.exchanges):
        t.begin(x.command, i)
    counts, results = [], t.take_completed()
    for c in chunks:
        t.feed(c)
        results += t.take_completed()
        counts.append(len(results))
    return results, counts, t


@FAST
@given(streams(), st.lists(st.integers(0, 1 << 20), max_size=40))
def test_tracker_same_results_for_any_split(sd, cuts):
    stream, dep = sd
    data = stream.data()
    whole, _, _ = track(stream, dep, [data])
    chunks = split(data, cuts)
    parts, counts, t = track(stream, dep, chunks)
    assert [as_tuple(r) for r in parts] == [as_tuple(r) for r in whole]
    assert t.idle and t.at_packet_boundary
    # completion points: after each chunk, exactly the commands whose response ended by then
    ends = stream.completion_offsets()
    pos = 0
    for c, n in zip(chunks, counts):
        pos += len(c)
        assert n == sum(e <= pos for e in ends)
    # and what it says is what the spec says
    for r, x in zip(whole, stream.exchanges):
        assert not x.expected.mismatches(r), (x.name, x.expected.mismatches(r))


def logical_packets(stream):
    out = []
    for x in stream.exchanges:
        for payload, seq in x.packets:
            out.append((seq & 0xFF, payload))
    return out


@FAST
@given(streams(), st.lists(st.integers(0, 1 << 20), max_size=40))
def test_framer_same_packets_for_any_split(sd, cuts):
    stream, _ = sd
    data = stream.data()
    f = PacketFramer()
    got = []
    for c in split(data, cuts):
        f.feed(c)
        while (p := f.next_packet()) is not None:
            got.append((p[0], bytes(p[1])))
    assert got == logical_packets(stream)
    assert f.buffered == 0


@settings(max_examples=8, deadline=None)
@given(st.sampled_from([ps.MAX_PAYLOAD - 6, 1 << 24, 2 * ps.MAX_PAYLOAD]), st.booleans(), st.booleans(),
       st.lists(st.integers(0, 40 << 20), min_size=1, max_size=6))
def test_large_packets_any_split(value_size, dep, binary, cuts):
    """The one large case: continuation packets split anywhere (including inside headers)."""
    xs = [ps.ok(affected=1), ps.big_row_result(value_size, dep, binary), ps.result_set([[b"a"]], deprecate_eof=dep)]
    stream = ps.Stream(xs)
    data = stream.data()
    # make sure some cuts land right around the 16 MiB boundaries
    cuts = cuts + [4 + ps.MAX_PAYLOAD + k for k in (-1, 0, 1, 2, 5)]
    results, counts, t = track(stream, dep, split(data, cuts))
    assert [r.rows for r in results] == [0, 1, 1] and t.idle
    f = PacketFramer()
    got = []
    for c in split(data, cuts):
        f.feed(c)
        while (p := f.next_packet()) is not None:
            got.append((p[0], len(p[1])))
    assert got == [(s & 0xFF, len(p)) for s, p in logical_packets(stream)]


@FAST
@given(st.lists(st.binary(min_size=1, max_size=30), min_size=1, max_size=6), st.booleans(),
       st.lists(st.binary(max_size=200), max_size=10))
def test_tracker_random_bytes_only_protocol_errors(commands, dep, chunks):
    t = ResponseTracker(dep)
    for c in commands:
        t.begin(c)
    for c in chunks:
        try:
            t.feed(c)
        except ProtocolError:
            return
        t.take_completed()
    t.abort()
    assert t.idle


@FAST
@given(st.lists(st.binary(max_size=200), max_size=10), st.integers(0, 300))
def test_framer_random_bytes_only_protocol_errors(chunks, limit):
    f = PacketFramer(limit)
    for c in chunks:
        f.feed(c)
        try:
            while (p := f.next_packet()) is not None:
                assert len(p[1]) <= limit
        except ProtocolError:
            return


@FAST
@given(streams(), st.integers(0, 1 << 20), st.integers(0, 1 << 20), st.integers(0, 255))
def test_truncated_and_corrupted_streams(sd, cut, where, value):
    stream, dep = sd
    data = stream.data()
    cut %= len(data) + 1
    # truncated: exactly the commands whose response fully arrived are complete
    results, _, t = track(stream, dep, [data[:cut]])
    assert len(results) == sum(e <= cut for e in stream.completion_offsets())
    t.abort()
    assert len(t.take_completed()) == len(stream.exchanges) - len(results)
    # one corrupted byte: a ProtocolError at worst, never a crash or another exception
    if data:
        bad = bytearray(data)
        bad[where % len(bad)] = value
        t = ResponseTracker(dep)
        for x in stream.exchanges:
            t.begin(x.command)
        try:
            t.feed(bytes(bad))
        except ProtocolError:
            pass
        f = PacketFramer(1 << 16)
        f.feed(bytes(bad))
        try:
            while f.next_packet() is not None:
                pass
        except ProtocolError:
            pass


def test_corpus_deterministic_seeds():
    """A few hundred fixed streams, chunked at random: cheap regression net beside hypothesis."""
    rng = random.Random(1234)
    for seed in range(300):
        dep = bool(seed & 1)
        stream = ps.random_stream(seed, 8, dep)
        data = stream.data()
        cuts = [rng.randrange(len(data) + 1) for _ in range(rng.randrange(20))]
        whole, _, _ = track(stream, dep, [data])
        parts, _, _ = track(stream, dep, split(data, cuts))
        assert [as_tuple(r) for r in parts] == [as_tuple(r) for r in whole]
        for r, x in zip(whole, stream.exchanges):
            assert not x.expected.mismatches(r), (seed, x.name, x.expected.mismatches(r))
