"""The packet layer: PacketFramer, ResponseTracker, build_packet (fastproxy/_packet.pyx).

The expected results come from tests/packet_streams.py, a second, independent reading of the spec.
"""
import pytest

from fastproxy._packet import ERR, NO_RESPONSE, OK, PacketFramer, ResponseTracker, build_packet, expects_response
from fastproxy.errors import PacketTooLarge, ProtocolError

import packet_streams as ps

MAX = ps.MAX_PAYLOAD


def run_tracker(exchanges, deprecate_eof, chunks=None):
    """begin() every command (pipelined), feed the responses; returns the CommandResults."""
    t = ResponseTracker(deprecate_eof)
    for i, x in enumerate(exchanges):
        t.begin(x.command, i)
    data = ps.Stream(exchanges).data()
    for c in chunks(data) if chunks else [data]:
        t.feed(c)
    results = t.take_completed()
    assert t.idle and t.at_packet_boundary
    return results


def check(results, exchanges):
    assert [r.tag for r in results] == list(range(len(exchanges)))
    for r, x in zip(results, exchanges):
        assert r.cmd == x.cmd, x.name
        bad = x.expected.mismatches(r)
        assert not bad, f"{x.name}: {bad} ({r!r})"


# ---- tracker: every kind of response ---------------------------------------------------------------

@pytest.mark.parametrize("deprecate_eof", [False, True], ids=["eof", "deprecate_eof"])
def test_every_kind_whole(deprecate_eof):
    xs = ps.all_kinds(deprecate_eof)
    check(run_tracker(xs, deprecate_eof), xs)


@pytest.mark.parametrize("deprecate_eof", [False, True], ids=["eof", "deprecate_eof"])
@pytest.mark.parametrize("kind", range(len(ps.all_kinds(False))))
def test_every_kind_alone(kind, deprecate_eof):
    x = ps.all_kinds(deprecate_eof)[kind]
    check(run_tracker([x], deprecate_eof), [x])


@pytest.mark.parametrize("deprecate_eof", [False, True], ids=["eof", "deprecate_eof"])
def test_completion_points_byte_by_byte(deprecate_eof):
    """Fed one byte at a time, each command completes exactly when its last byte arrives."""
    s = ps.Stream(ps.all_kinds(deprecate_eof))
    ends = s.completion_offsets()
    t = ResponseTracker(deprecate_eof)
    for i, x in enumerate(s.exchanges):
        t.begin(x.command, i)
    assert len(t.take_completed()) == sum(e == 0 for e in ends)
    done = sum(e == 0 for e in ends)
    data = s.data()
    for pos in range(len(data)):
        t.feed(data[pos:pos + 1])
        done += len(t.take_completed())
        assert done == sum(e <= pos + 1 for e in ends), pos
    assert done == len(ends)


def test_feed_returns_completed_count_and_take_empties():
    t = ResponseTracker()
    assert t.begin(ps.query()) == 0
    assert t.begin(bytes((ps.COM_STMT_CLOSE,)) + b"\x01\x00\x00\x00") == 0  # waits behind the query
    assert t.pending == 2
    x = ps.ok()
    assert t.feed(x.response()) == 2
    assert [r.outcome for r in t.take_completed()] == [OK, NO_RESPONSE]
    assert t.take_completed() == [] and t.idle and t.pending == 0


def test_tags_come_back_in_command_order_through_a_long_pipeline():
    """Commands begun while hundreds are outstanding, answered in uneven batches: every result carries
    its own command's tag (the tracker drops taken tags in batches, not one by one)."""
    t = ResponseTracker()
    x = ps.ok()
    begun = answered = 0
    tags = []
    for batch_begin, batch_answer in ((150, 100), (300, 1), (10, 200), (0, 159)):
        for _ in range(batch_begin):
            t.begin(x.command, ("tag", begun))
            begun += 1
        t.feed(x.response() * batch_answer)
        answered += batch_answer
        tags += [r.tag for r in t.take_completed()]
        assert t.pending == begun - answered
    assert tags == [("tag", i) for i in range(begun)] and t.idle


def test_begin_reads_any_buffer():
    x = ps.ok()
    for command in (bytearray(x.command), memoryview(x.command)):
        t = ResponseTracker()
        t.begin(command, "t")
        assert t.feed(x.response()) == 1 and t.take_completed()[0].tag == "t"


def test_no_response_commands_complete_at_begin():
    t = ResponseTracker()
    assert t.begin(ps.stmt_close().command, "a") == 1
    assert t.begin(ps.send_long_data().command, "b") == 2
    assert t.begin(b"\x01", "quit") == 3
    res = t.take_completed()
    assert [(r.tag, r.outcome, r.ok) for r in res] == [("a", NO_RESPONSE, True), ("b", NO_RESPONSE, True),
                                                       ("quit", NO_RESPONSE, True)]
    assert not expects_response(0x19) and not expects_response(0x18) and not expects_response(0x01)
    assert expects_response(0x03) and expects_response(0x1C)


def test_ok_fields():
    x = ps.ok(affected=70000, insert_id=1 << 40, status=ps.IN_TRANS | ps.AUTOCOMMIT, warnings=5)
    (r,) = run_tracker([x], False)
    assert (r.outcome, r.affected_rows, r.last_insert_id, r.status_flags, r.warnings) == (
        OK, 70000, 1 << 40, ps.IN_TRANS | ps.AUTOCOMMIT, 5)
    assert r.ok and r.outcome_name == "ok"


def test_err_fields():
    x = ps.err(code=1146, state="42S02", msg="Table 'db.t' doesn't exist")
    (r,) = run_tracker([x], False)
    assert (r.outcome, r.err_code, r.sql_state, r.err_msg) == (ERR, 1146, "42S02", "Table 'db.t' doesn't exist")
    assert not r.ok and "1146" in repr(r)


def test_err_without_sql_state():
    """Pre-4.1 style ERR (no '#'+state), e.g. some errors sent before the handshake completes."""
    t = ResponseTracker()
    t.begin(ps.query())
    t.feed(ps.frame(b"\xff\x10\x04Too many connections", 1)[0])
    (r,) = t.take_completed()
    assert (r.err_code, r.sql_state, r.err_msg) == (1040, "", "Too many connections")


@pytest.mark.parametrize("deprecate_eof", [False, True], ids=["eof", "deprecate_eof"])
def test_multi_results_chain(deprecate_eof):
    rows = [[b"a"], [b"b"]]
    x = ps.multi([("ok", 2, 9), ("rs", rows, 1), ("rs", rows[:1], 3), ("ok", 1, 0)], deprecate_eof)
    (r,) = run_tracker([x], deprecate_eof)
    assert (r.outcome, r.result_sets, r.rows, r.affected_rows, r.last_insert_id, r.columns) == (OK, 2, 3, 3, 9, 1)
    assert not r.status_flags & ps.MORE_RESULTS


@pytest.mark.parametrize("deprecate_eof", [False, True], ids=["eof", "deprecate_eof"])
def test_err_ends_multi_results_chain(deprecate_eof):
    x = ps.multi([("ok", 1, 0), ("rs", [[b"1"]], 1), ("err", 1146)], deprecate_eof)
    y = ps.ok(affected=4)
    r, r2 = run_tracker([x, y], deprecate_eof)
    assert (r.outcome, r.err_code, r.result_sets, r.rows) == (ERR, 1146, 1, 1)
    assert (r2.outcome, r2.affected_rows) == (OK, 4)


@pytest.mark.parametrize("deprecate_eof", [False, True], ids=["eof", "deprecate_eof"])
@pytest.mark.parametrize("params,cols", [(0, 0), (1, 0), (0, 1), (3, 5), (300, 2)])
def test_prepare(params, cols, deprecate_eof):
    x = ps.prepare(stmt_id=0xDEADBEEF, num_params=params, num_columns=cols, deprecate_eof=deprecate_eof, warnings=1)
    nxt = ps.ok(affected=1)
    r, r2 = run_tracker([x, nxt], deprecate_eof)
    assert (r.outcome, r.stmt_id, r.num_params, r.num_columns, r.warnings) == (OK, 0xDEADBEEF, params, cols, 1)
    assert r2.affected_rows == 1


@pytest.mark.parametrize("deprecate_eof", [False, True], ids=["eof", "deprecate_eof"])
def test_cursor_execute_then_fetch(deprecate_eof):
    xs = [ps.cursor_execute(3, deprecate_eof), ps.fetch([[b"1", b"2", None]] * 4, deprecate_eof, last=False),
          ps.fetch([[b"1", b"2", b"3"]], deprecate_eof, last=True), ps.stmt_close()]
    ex, f1, f2, close = run_tracker(xs, deprecate_eof)
    assert (ex.outcome, ex.rows, ex.result_sets, ex.columns) == (OK, 0, 1, 3)
    assert ex.status_flags & ps.CURSOR_EXISTS
    assert (f1.rows, f2.rows) == (4, 1)
    assert f2.status_flags & ps.LAST_ROW_SENT and not f1.status_flags & ps.LAST_ROW_SENT
    assert close.outcome == NO_RESPONSE


def test_cursor_requested_but_not_opened():
    """CURSOR_TYPE_READ_ONLY asked, but the server sent rows right away (no CURSOR_EXISTS)."""
    x = ps.result_set([[b"1"], [b"2"]], binary=True)
    x.command = ps.execute(cursor=True)
    (r,) = run_tracker([x], False)
    assert (r.outcome, r.rows) == (OK, 2)


def test_local_infile():
    x = ps.local_infile(affected=3)
    (r,) = run_tracker([x], False)
    assert (r.outcome, r.local_infile, r.affected_rows) == (OK, True, 3)


def test_local_infile_refused():
    p = ps._Packets()
    p.add(b"\xfb/etc/passwd")
    p.client_turn(1)
    p.add(ps.err_packet(1148, "42000", "The used command is not allowed with this MariaDB version"))
    x = ps.Exchange("infile_err", ps.query(b"LOAD DATA LOCAL INFILE"), p.items, ps.Expected(ERR, err_code=1148))
    (r,) = run_tracker([x], False)
    assert (r.outcome, r.err_code, r.local_infile) == (ERR, 1148, True)


@pytest.mark.parametrize("deprecate_eof", [False, True], ids=["eof", "deprecate_eof"])
def test_field_list(deprecate_eof):
    (r,) = run_tracker([ps.field_list(4, deprecate_eof)], deprecate_eof)
    assert (r.outcome, r.columns) == (OK, 4)


def test_statistics_text_is_not_parsed():
    p = ps._Packets()
    p.add(b"\xfe\x00\x00 looks like EOF but is plain text")
    x = ps.Exchange("stats", bytes((ps.COM_STATISTICS,)), p.items)
    r, r2 = run_tracker([x, ps.ok(affected=2)], False)
    assert r.outcome == OK and r2.affected_rows == 2


@pytest.mark.parametrize("switch,more,fail", [(True, True, False), (True, False, False), (False, True, False),
                                              (False, False, False), (True, True, True)])
def test_change_user(switch, more, fail):
    x = ps.change_user(switch, more, fail)
    r, r2 = run_tracker([x, ps.ok(affected=1)], False)
    assert r.outcome == (ERR if fail else OK)
    assert r2.affected_rows == 1


def test_set_option_eof():
    r, = run_tracker([ps.simple(ps.COM_SET_OPTION)], False)
    assert r.outcome == OK and r.status_flags == ps.AUTOCOMMIT


def test_unsolicited_err_when_idle():
    t = ResponseTracker()
    t.feed(ps.frame(ps.err_packet(1927, "70100", "Connection was killed"), 0)[0])
    assert t.unsolicited == 1 and t.take_completed() == []
    assert t.last_unsolicited_error.err_code == 1927


def test_abort_completes_pending():
    t = ResponseTracker()
    t.begin(ps.query(), 1)
    t.begin(ps.query(), 2)
    t.feed(ps.result_set([[b"1"]]).response()[:20])
    assert not t.at_packet_boundary and t.pending == 2
    assert t.abort() == 2
    assert [r.outcome_name for r in t.take_completed()] == ["unknown", "unknown"]
    assert t.idle and t.at_packet_boundary


def test_next_seq():
    t = ResponseTracker()
    t.begin(ps.query())
    assert t.next_seq == 1
    data = ps.result_set([[b"1"]]).response()
    t.feed(data[:5])  # the column count packet (seq 1)
    assert t.next_seq == 2


def test_empty_command_rejected():
    with pytest.raises(ProtocolError):
        ResponseTracker().begin(b"")


@pytest.mark.parametrize("payload", [b"", b"\xfc\x01", b"\xfd"], ids=["empty", "truncated2", "truncated3"])
def test_bad_first_packet_is_protocol_error(payload):
    """An empty packet or a truncated length is no column count."""
    t = ResponseTracker()
    t.begin(ps.query())
    with pytest.raises(ProtocolError):
        t.feed(ps.frame(payload, 1)[0])


def test_bad_prepare_response_is_protocol_error():
    t = ResponseTracker()
    t.begin(ps.prepare().command)
    with pytest.raises(ProtocolError):
        t.feed(ps.frame(b"\x00\x01\x00", 1)[0])


def test_accepts_any_buffer():
    data = ps.ok(affected=1).response()
    for buf in (data, bytearray(data), memoryview(data)):
        t = ResponseTracker()
        t.begin(ps.query())
        assert t.feed(buf) == 1


# ---- large packets: 16 MiB - 1 and continuations --------------------------------------------------

@pytest.mark.parametrize("deprecate_eof", [False, True], ids=["eof", "deprecate_eof"])
@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
@pytest.mark.parametrize("value_size", [
    MAX - 6,        # a text row payload of exactly 16 MiB - 1: one full packet plus an empty one
    MAX - 7,        # one byte short: a single packet
    1 << 24,        # an 8-byte length: the text row starts with 0xFE (not a terminator!)
    2 * MAX,        # three physical packets
], ids=["exact", "below", "fe-prefix", "three"])
def test_large_rows(value_size, binary, deprecate_eof):
    big = ps.big_row_result(value_size, deprecate_eof, binary)
    xs = [ps.ok(affected=1), big, ps.result_set([[b"1", b"2"]] * 3, deprecate_eof=deprecate_eof), ps.ok(affected=2)]
    results = run_tracker(xs, deprecate_eof, chunks=lambda d: [d[i:i + (1 << 20) + 7] for i in range(0, len(d), (1 << 20) + 7)])
    check(results, xs)
    assert results[1].rows == 1


def test_large_row_framing_is_as_expected():
    """The stream generator itself: a 16 MiB - 1 payload is followed by an empty packet."""
    payload = ps.text_row([b"x" * (MAX - 6), b"y"])
    assert len(payload) == MAX
    raw, nxt = ps.frame(payload, 5)
    assert len(raw) == 4 + MAX + 4 and raw[-4:] == b"\x00\x00\x00\x06" and nxt == 7


def test_large_rows_byte_counting_packets():
    """`packets` counts logical packets: continuations are not counted again."""
    x = ps.big_row_result(2 * MAX)
    t = ResponseTracker()
    t.begin(x.command)
    t.feed(x.response())
    assert t.packets == len(x.packets)


# ---- framer --------------------------------------------------------------------------------------

def packets_of(framer):
    out = []
    while (p := framer.next_packet()) is not None:
        out.append((p[0], bytes(p[1])))
    return out


def test_framer_zero_copy_inside_one_chunk():
    data = ps.frame(b"abc", 0)[0] + ps.frame(b"", 1)[0] + ps.frame(b"\x03SELECT 1", 2)[0]
    f = PacketFramer()
    f.feed(data)
    got = []
    while (p := f.next_packet()) is not None:
        seq, payload = p
        assert isinstance(payload, memoryview) and payload.obj is data  # a view of the fed chunk, no copy
        got.append((seq, bytes(payload)))
    assert got == [(0, b"abc"), (1, b""), (2, b"\x03SELECT 1")]
    assert f.buffered == 0


def test_framer_packet_across_chunks():
    data = ps.frame(b"hello world", 3)[0] * 2
    f = PacketFramer()
    f.feed(data[:2])
    assert f.next_packet() is None
    f.feed(data[2:6])
    assert f.next_packet() is None
    f.feed(data[6:20])
    assert packets_of(f) == [(3, b"hello world")]
    assert f.buffered == 20 - 15
    f.feed(data[20:])
    assert packets_of(f) == [(3, b"hello world")]
    assert f.buffered == 0


@pytest.mark.parametrize("size", [MAX - 1, MAX, MAX + 1, 2 * MAX, 2 * MAX + 5])
def test_framer_joins_continuations(size):
    payload = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    raw, nxt = ps.frame(payload, 0)
    assert nxt == size // MAX + 1
    f = PacketFramer()
    chunk = 1 << 20
    got = []
    for i in range(0, len(raw), chunk):
        f.feed(raw[i:i + chunk])
        got += packets_of(f)
    f.feed(ps.frame(b"next", nxt)[0])
    got += packets_of(f)
    assert [(s, len(p)) for s, p in got] == [(0, size), (nxt, 4)]
    assert got[0][1] == payload


def test_framer_joins_continuations_in_one_chunk():
    payload = b"a" * MAX + b"b" * 10
    raw = ps.frame(payload, 7)[0]
    f = PacketFramer()
    f.feed(raw)
    seq, p = f.next_packet()
    assert seq == 7 and bytes(p) == payload and f.next_packet() is None


def test_framer_packet_too_large():
    f = PacketFramer(100)
    f.feed(ps.frame(b"x" * 100, 0)[0])
    assert bytes(f.next_packet()[1]) == b"x" * 100
    f.feed(ps.frame(b"x" * 101, 1)[0][:10])  # the header alone is enough to refuse
    with pytest.raises(PacketTooLarge):
        f.next_packet()
    assert issubclass(PacketTooLarge, ProtocolError)


def test_framer_too_large_across_continuations():
    f = PacketFramer(MAX + 10)
    raw = ps.frame(b"q" * (MAX + 11), 0)[0]
    f.feed(raw[:MAX + 4 + 4])  # first packet and the continuation's header
    with pytest.raises(PacketTooLarge):
        f.next_packet()


def test_framer_feeds_of_other_buffers_and_take_all():
    f = PacketFramer()
    data = ps.frame(b"abc", 0)[0] + ps.frame(b"defg", 1)[0]
    f.feed(bytearray(data[:5]))
    f.feed(memoryview(data)[5:9])
    f.feed(b"")
    assert packets_of(f) == [(0, b"abc")]
    f.feed(data[9:])
    assert f.take_all() == data[7:]
    assert f.buffered == 0 and f.next_packet() is None


def test_framer_many_empty_packets():
    data = b"".join(ps.frame(b"", i)[0] for i in range(300))
    f = PacketFramer()
    for i in range(0, len(data), 3):
        f.feed(data[i:i + 3])
    assert packets_of(f) == [(i & 0xFF, b"") for i in range(300)]


# ---- build_packet ----------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, 250, MAX - 1, MAX, MAX + 1, 2 * MAX])
def test_build_packet_matches_spec(size):
    payload = b"p" * size
    assert build_packet(250, payload) == ps.frame(payload, 250)[0]
