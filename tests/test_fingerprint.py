"""Result fingerprints (fastproxy/csrc/fingerprint.h, hooked into the ResponseTracker): the tracker's hashes
equal a second implementation of the documented definition (Python over the system's libxxhash
through ctypes, not our inlined copy) for text and binary rows, every result of a multi-result,
cursor fetches and 16 MiB rows; they do not depend on how the bytes are split into reads; the
unordered hash ignores row order and does not cancel duplicates; commands without a result set have
none. Then through a real proxy and server: the capture records the hashes of the rows the client
received (read raw, hashed by the reference)."""
from __future__ import annotations

import ctypes
import ctypes.util
import random
import struct

import pytest

import packet_streams as ps
from fastproxy._fingerprint import Fingerprint, fingerprint
from fastproxy._packet import ResponseTracker

_lib = ctypes.CDLL(ctypes.util.find_library("xxhash") or "libxxhash.so.0")
_lib.XXH3_64bits.restype = ctypes.c_uint64
_lib.XXH3_64bits.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_lib.XXH3_64bits_withSeed.restype = ctypes.c_uint64
_lib.XXH3_64bits_withSeed.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint64]
UNORDERED_SEED = 0x9E3779B97F4A7C15
M64 = (1 << 64) - 1


def _fold(value: int, seed: int) -> int:
    return _lib.XXH3_64bits_withSeed(struct.pack("<Q", value), 8, seed)


def reference(result_sets: list[list[bytes]]) -> tuple[int, int]:
    """docs/traffic-format.md, "Result fingerprints", written out again."""
    if not result_sets:
        return 0, 0
    big_o = big_u = 0
    for rows in result_sets:
        o = u = 0
        for i, row in enumerate(rows):
            h = _lib.XXH3_64bits(row, len(row))
            o = (o + _fold(h, i)) & M64
            u = (u + _fold(h, UNORDERED_SEED)) & M64
        big_o = _fold(o, big_o)
        big_u = _fold(u, big_u)
    return big_o, big_u


def track(x: ps.Exchange, deprecate_eof: bool, chunks=None, fingerprints: bool = True):
    t = ResponseTracker(deprecate_eof)
    t.fingerprints = fingerprints
    t.begin(x.command)
    data = x.response()
    for c in (chunks(data) if chunks else [data]):
        t.feed(c)
    done = t.take_completed()
    assert len(done) == 1 and not x.expected.mismatches(done[0]), x.expected.mismatches(done[0])
    return done[0]


def _enc(binary: bool):
    return ps.binary_row if binary else ps.text_row


ROWS = [[b"1", b"alice", None], [b"2", b"bob", b"x" * 300], [b"3", b"", b"\xfe\xff"]]
MODES = [(False, False), (False, True), (True, False), (True, True)]
MODE_IDS = ["text-eof", "text-deprecate_eof", "binary-eof", "binary-deprecate_eof"]


@pytest.mark.parametrize("binary,deprecate_eof", MODES, ids=MODE_IDS)
def test_single_result_matches_reference(binary, deprecate_eof):
    r = track(ps.result_set(ROWS, deprecate_eof=deprecate_eof, binary=binary), deprecate_eof)
    want = reference([[_enc(binary)(v) for v in ROWS]])
    assert (r.hash_ordered, r.hash_unordered) == want
    assert want != (0, 0)
    assert fingerprint([[_enc(binary)(v) for v in ROWS]]) == want  # the Python wrapper agrees too


@pytest.mark.parametrize("deprecate_eof", [False, True], ids=["eof", "deprecate_eof"])
def test_empty_result_set_has_a_fingerprint_and_ok_has_none(deprecate_eof):
    r = track(ps.result_set([], ncols=2, deprecate_eof=deprecate_eof), deprecate_eof)
    assert (r.hash_ordered, r.hash_unordered) == reference([[]]) != (0, 0)
    r = track(ps.ok(affected=3), deprecate_eof)
    assert (r.hash_ordered, r.hash_unordered) == (0, 0)


@pytest.mark.parametrize("binary,deprecate_eof", MODES, ids=MODE_IDS)
def test_split_reads_do_not_change_the_hashes(binary, deprecate_eof):
    x = ps.result_set(ROWS * 20, deprecate_eof=deprecate_eof, binary=binary)
    whole = track(x, deprecate_eof)
    rng = random.Random(7)

    def random_chunks(data):
        pos = 0
        while pos < len(data):
            n = rng.choice([1, 2, 3, 5, 17, 300, 4096])
            yield data[pos:pos + n]
            pos += n

    for chunks in (lambda d: [d[i:i + 1] for i in range(len(d))], random_chunks):
        r = track(x, deprecate_eof, chunks)
        assert (r.hash_ordered, r.hash_unordered) == (whole.hash_ordered, whole.hash_unordered)


@pytest.mark.parametrize("binary,deprecate_eof", MODES, ids=MODE_IDS)
def test_every_result_of_a_multi_result_counts_in_order(binary, deprecate_eof):
    a, b = [[b"1"], [b"2"]], [[b"3"]]
    x = ps.multi([("rs", a, 1), ("ok", 2, 0), ("rs", b, 1)], deprecate_eof, binary)
    r = track(x, deprecate_eof)
    enc = _enc(binary)
    want = reference([[enc(v) for v in a], [enc(v) for v in b]])  # the OK in between is not a result set
    assert (r.hash_ordered, r.hash_unordered) == want
    swapped = track(ps.multi([("rs", b, 1), ("ok", 2, 0), ("rs", a, 1)], deprecate_eof, binary), deprecate_eof)
    assert swapped.hash_ordered != r.hash_ordered and swapped.hash_unordered != r.hash_unordered
    # the same rows in one result set are a different response
    one = track(ps.result_set(a + b, deprecate_eof=deprecate_eof, binary=binary), deprecate_eof)
    assert one.hash_ordered != r.hash_ordered and one.hash_unordered != r.hash_unordered


def test_unordered_ignores_order_and_keeps_duplicates():
    a, b, c = [b"a"], [b"b"], [b"c"]
    h = {}
    for name, rows in {"abc": [a, b, c], "cab": [c, a, b], "aab": [a, a, b], "abb": [a, b, b], "b": [b],
                       "aa": [a, a], "none": []}.items():
        r = track(ps.result_set(rows, ncols=1), False)
        h[name] = (r.hash_ordered, r.hash_unordered)
    assert h["abc"][1] == h["cab"][1] and h["abc"][0] != h["cab"][0]
    assert h["aab"][1] != h["abb"][1]  # same distinct rows, different multiplicities
    assert h["aab"][1] != h["b"][1] and h["aa"][1] != h["none"][1]  # duplicates do not cancel (XOR would)


@pytest.mark.parametrize("deprecate_eof", [False, True], ids=["eof", "deprecate_eof"])
def test_cursor_fetches_are_fingerprinted_per_fetch(deprecate_eof):
    rows1, rows2 = [[b"1", None], [b"2", b"b"]], [[b"3", b"c"]]
    t = ResponseTracker(deprecate_eof)
    xs = [ps.cursor_execute(2, deprecate_eof), ps.fetch(rows1, deprecate_eof, last=False),
          ps.fetch(rows2, deprecate_eof)]
    for x in xs:
        t.begin(x.command)
    t.feed(b"".join(x.response() for x in xs))
    opened, f1, f2 = t.take_completed()
    assert (opened.hash_ordered, opened.hash_unordered) == (0, 0)  # the rows come with the fetches
    assert (f1.hash_ordered, f1.hash_unordered) == reference([[ps.binary_row(v) for v in rows1]])
    assert (f2.hash_ordered, f2.hash_unordered) == reference([[ps.binary_row(v) for v in rows2]])


@pytest.mark.parametrize("binary,deprecate_eof", MODES, ids=MODE_IDS)
def test_rows_of_16_mib_and_more(binary, deprecate_eof):
    size = ps.MAX_PAYLOAD + 1000  # continuation packets; a text row then starts with 0xFE
    x = ps.big_row_result(size, deprecate_eof, binary)
    r = track(x, deprecate_eof, lambda d: (d[i:i + 65536] for i in range(0, len(d), 65536)))
    assert (r.hash_ordered, r.hash_unordered) == reference([[_enc(binary)([b"x" * size, b"y"])]])


def test_disabled_fingerprints_are_zero():
    r = track(ps.result_set(ROWS), False, fingerprints=False)
    assert (r.hash_ordered, r.hash_unordered) == (0, 0) and r.rows == len(ROWS)


def test_an_error_inside_a_result_does_not_leak_into_the_next_command():
    t = ResponseTracker(False)
    bad = ps.result_set([[b"1"]])
    bad.packets = bad.packets[:-1] + [(ps.err_packet(1317, "70100", "Query execution was interrupted"),
                                       bad.packets[-1][1])]
    good = ps.result_set([[b"2"]])
    t.begin(bad.command)
    t.begin(good.command)
    t.feed(bad.response() + good.response())
    first, second = t.take_completed()
    assert first.outcome == ps.ERR
    assert (second.hash_ordered, second.hash_unordered) == reference([[ps.text_row([b"2"])]])


def test_python_wrapper_streams_parts():
    f = Fingerprint()
    f.row(b"ab", b"cd")
    f.row(b"abcd")
    f.result_end()
    assert (f.ordered, f.unordered) == reference([[b"abcd", b"abcd"]]) and f.rows == 2 and f.results == 1


def test_deprecate_eof_does_not_change_any_fingerprint():
    """Capture sees the client's EOF mode, replay uses its own: the hashes must not depend on it."""
    def kinds(de):
        return [ps.result_set(ROWS, deprecate_eof=de), ps.result_set(ROWS, deprecate_eof=de, binary=True),
                ps.result_set([], ncols=3, deprecate_eof=de), ps.multi([("rs", [[b"1"]], 1), ("rs", [], 2)], de),
                ps.cursor_execute(2, de), ps.fetch([[b"1", b"2"]], de), ps.ok(affected=1)]

    for off, on in zip(kinds(False), kinds(True)):
        a, b = track(off, False), track(on, True)
        assert (a.hash_ordered, a.hash_unordered) == (b.hash_ordered, b.hash_unordered), off.name
