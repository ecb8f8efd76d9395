"""What a replay's filters and time window do to its counts, progress and length, on captures written
by hand and replayed with --dry-run (nothing is sent: no server is involved): the input's count is
the count before filters, progress counts what the filters dropped, --end-time ends the replay with
the window, --start-time beyond the capture replays nothing and says so, --start-at in the past
anchors the schedule there."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from fastproxy._ringbuf import RingBuffer
from fastproxy.capture.record import KIND_CONN_CLOSE, KIND_CONN_OPEN
from fastproxy.capture.writer import CaptureWriter

S = 1_000_000_000


def write(path, conns: int, seconds: float, per_second: int, t0: int | None = None, txn: bool = False) -> int:
    """`conns` connections open at t0 and close at t0 + seconds; in between, each runs `per_second`
    commands a second, reads and writes alternating (each in BEGIN .. COMMIT with txn). Returns the
    number of commands."""
    t0 = t0 or time.time_ns() - 3600 * S
    rb = RingBuffer(8 << 20)
    w = CaptureWriter(rb, str(path))
    w.start()
    for c in range(1, conns + 1):
        rb.append_event(KIND_CONN_OPEN, c, t0, json.dumps({"user": "root", "db": "d", "capabilities": 0}).encode())
    n = 0
    step = S // per_second
    for k in range(int(seconds * per_second)):
        for c in range(1, conns + 1):
            t = t0 + k * step + c * 1000
            sqls = ["SELECT 1" if k % 2 else "UPDATE t SET v = v + 1 WHERE id = %d" % c]
            if txn:
                sqls = ["BEGIN", *sqls, "COMMIT"]
            for j, sql in enumerate(sqls):
                assert rb.append_command(c, t + j * 10, t + j * 10 + 5, 0, 0, 0, 0, b"\x03" + sql.encode())
                n += 1
    for c in range(1, conns + 1):
        rb.append_event(KIND_CONN_CLOSE, c, t0 + int(seconds * S), b"")
    w.stop({"commands": n, "start_ns": t0, "end_ns": t0 + int(seconds * S)})
    assert w.error is None
    return n


def dry_run(cap, tmp_path, *args: str, expect_rc: int = 0) -> tuple[subprocess.CompletedProcess, dict | None]:
    rep = tmp_path / f"rep{len(list(tmp_path.glob('rep*')))}"
    res = subprocess.run([sys.executable, "-m", "fastproxy", "replay", "--input", str(cap), "--username", "root",
                          "--dry-run", "--report-dir", str(rep), *args], capture_output=True, text=True, timeout=180)
    assert (res.returncode == 0) == (expect_rc == 0), res.stdout + res.stderr
    files = sorted(rep.glob("replay-*.json"))
    return res, json.loads(files[-1].read_text()) if files else None


def test_filtered_replay_counts_the_input_and_what_the_filters_dropped(tmp_path):
    """--class read: 'captured' is the input's count (was 0), the writes the filter dropped are said
    beside the filtered ones, and the counts add up to the input."""
    cap = tmp_path / "cap"
    n = write(cap, 4, 2, 50)
    res, s = dry_run(cap, tmp_path, "--speed", "0", "--class", "read")
    assert s["commands_in_capture"] == n, s
    assert s["commands_dropped_by_filters"] == s["filtered_by"]["class"] == n // 2, s
    assert s["commands_read"] + s["commands_dropped_by_filters"] == n, s
    assert f"replayed of {n} captured" in res.stdout and f"(+ {n // 2} dropped by the filters)" in res.stdout


def test_progress_counts_dropped_commands_and_a_canceled_replay_is_not_done(tmp_path):
    import uvloop

    from fastproxy.replay.engine import ReplayOptions
    from fastproxy.replay.filters import Filters
    from fastproxy.replay.job import ReplayRun

    cap = tmp_path / "cap"
    write(cap, 2, 10, 20)
    opts = ReplayOptions(host="", port=0, username="root", password="", speed=1.0, dry_run=True,
                         filters=Filters.parse(statement_class="read"))
    run = ReplayRun(str(cap), opts, str(tmp_path / "rep"))
    seen = []

    def during():
        time.sleep(4)
        seen.append(run.engine.progress())
        run.cancel()

    t = threading.Thread(target=during, daemon=True)
    t.start()
    uvloop.run(run.run())
    t.join(30)
    assert 0.2 < seen[0] < 0.7, seen  # about 4 s of 10, the dropped writes counted (was 0)
    assert run.engine.canceled and 0.2 < run.engine.progress() < 0.7, run.engine.progress()  # (was 100%)


def test_end_time_ends_the_replay_with_the_window(tmp_path):
    """--end-time 3s on a 20 s capture of idle-at-the-end connections: the replay takes about 3 s (it
    took the capture's 20 s: the closes kept their captured times)."""
    cap = tmp_path / "cap"
    write(cap, 3, 20, 5)
    t = time.monotonic()
    _, s = dry_run(cap, tmp_path, "--end-time", "3s")
    took = time.monotonic() - t
    assert s["elapsed_seconds"] < 8 and took < 15, (took, s["elapsed_seconds"])
    assert s["commands_read"] == 3 * 15 and s["filtered_by"]["end-time"] == 3 * 85, s
    assert s["other_errors"] == 0, s


def test_start_time_beyond_the_capture_replays_nothing_and_says_so(tmp_path):
    """A window after the capture's end is refused; a window that holds no statement of a connection
    replays none of its transaction control and does not open it (was: every BEGIN/COMMIT pair
    replayed and every connection opened)."""
    cap = tmp_path / "cap"
    n = write(cap, 3, 4, 5, txn=True)
    res, s = dry_run(cap, tmp_path, "--start-time", "1h", expect_rc=1)
    assert "start-time" in res.stdout + res.stderr and "after the input's end" in res.stdout + res.stderr, res
    # a window holding only the last second of connection 1 and none of the others: only its
    # transactions in the window are replayed, the others' connections are not opened
    cap2 = tmp_path / "cap2"
    t0 = time.time_ns() - 3600 * S
    write(cap2, 3, 4, 5, t0=t0, txn=True)
    _, s = dry_run(cap2, tmp_path, "--start-time", "3.5s", "--speed", "0")
    # per connection 20 transactions (BEGIN, statement, COMMIT), one every 0.2 s: 2 in [3.5 s, 4 s)
    assert s["commands_read"] == 3 * 2 * 3, s
    assert s["commands_dropped_by_filters"] == n - 18 and s["commands_in_capture"] == n, s
    # a window between two transactions: nothing replayed, no connection opened, and said (the
    # replay is incomplete: exit status 3)
    res, s = dry_run(cap2, tmp_path, "--start-time", "3.5s", "--end-time", "3.55s", "--speed", "0", expect_rc=3)
    assert res.returncode == 3 and s["commands_read"] == 0 and s["connections"] == 0, s
    assert s["other_error_types"] == {"read error": 1} and "no command of the input is in the time window" \
        in res.stdout + res.stderr, res


@pytest.mark.parametrize("ago", [5, 30])
def test_start_at_in_the_past_anchors_the_schedule_there(tmp_path, ago):
    """--start-at 5 s ago: the replay is 5 s late from its first command, and its lag says so (it
    started at once, anchored at now, lag ~0)."""
    cap = tmp_path / "cap"
    write(cap, 2, 2, 10)
    _, s = dry_run(cap, tmp_path, "--start-at", str(time.time() - ago))
    assert s["lag"]["p99_ms"] >= (ago - 1) * 1000, s["lag"]
    res, _ = dry_run(cap, tmp_path, "--start-at", "1", expect_rc=1)
    assert "start-at" in res.stdout + res.stderr, res


def test_before_the_window_only_what_shapes_a_session_with_a_statement_in_it_is_kept():
    """Before --start-time: a connection's session statements are kept (held until it runs a
    statement in the window), its transaction control is kept only for a transaction with a
    statement in the window, a connection with no statement in the window is not opened, and after
    --end-time its close comes at the window's end."""
    from fastproxy.replay.filters import Filters, FilteredSource
    from test_replay_selection import S as SEC, T0, ListSource, _open, _q
    from fastproxy.capture.record import KIND_COMMAND, Record

    close = lambda c, t: Record(KIND_CONN_CLOSE, c, T0 + t * SEC, 0, 0, 0, 0, 0, b"")  # noqa: E731
    recs = [_open(1, "a", "d", T0), _q(1, T0 + 1 * SEC, "SET x=1"), _q(1, T0 + 2 * SEC, "BEGIN"),
            _q(1, T0 + 3 * SEC, "UPDATE t SET a=1"), _q(1, T0 + 3.5 * SEC, "SET y=1"), _q(1, T0 + 4 * SEC, "BEGIN"),
            _q(1, T0 + 6 * SEC, "UPDATE t SET a=2"), _q(1, T0 + 7 * SEC, "COMMIT"), close(1, 20),
            _open(2, "a", "d", T0), _q(2, T0 + 1 * SEC, "BEGIN"), _q(2, T0 + 2 * SEC, "COMMIT"),
            _q(2, T0 + 8 * SEC, "SELECT 1"), close(2, 9)]
    src = FilteredSource(ListSource(recs), Filters.parse(start_time="5s", end_time="7.5s"))
    out = [(r.conn_id, (r.start_ns - T0) / SEC, r.payload[1:].decode() if r.kind == KIND_COMMAND else r.kind)
           for r in src]
    assert out == [(1, 0.0, KIND_CONN_OPEN), (1, 1.0, "SET x=1"), (1, 3.5, "SET y=1"), (1, 4.0, "BEGIN"),
                   (1, 6.0, "UPDATE t SET a=2"), (1, 7.0, "COMMIT"), (1, 7.5, KIND_CONN_CLOSE)], out
    assert src.dropped == {"start-time": 4, "end-time": 1, "start-time (connections)": 1}, src.dropped


def test_a_window_emptied_by_other_filters_is_not_called_empty():
    """'no command in the time window' is said only when the window holds none: not when other
    filters dropped what it holds."""
    from fastproxy.errors import TrafficFormatError
    from fastproxy.replay.filters import Filters, FilteredSource
    from test_replay_selection import KNOWN, ListSource

    assert list(FilteredSource(ListSource(KNOWN), Filters.parse(start_time="2s", user="nobody"))) == []
    with pytest.raises(TrafficFormatError, match="no command of the input is in the time window"):
        list(FilteredSource(ListSource(KNOWN), Filters.parse(start_time="100s", end_time="200s")))


@pytest.mark.parametrize("status_flags", [False, True])
def test_a_transaction_open_at_the_window_end_is_replayed_to_its_end(status_flags):
    """--end-time falls inside a transaction: its COMMIT after the window is kept (left open, its row
    locks held up what waited for them, and what it wrote was lost with its connection), and
    nothing else after the window. The transaction is known from the captured status flags (format
    2), else from BEGIN / COMMIT / ROLLBACK texts."""
    from fastproxy.capture.record import KIND_COMMAND, Record
    from fastproxy.replay.filters import Filters, FilteredSource
    from test_replay_selection import S as SEC, T0, ListSource, _open

    def q(conn, t, sql, in_txn):
        return Record(KIND_COMMAND, conn, T0 + int(t * SEC), T0 + int(t * SEC) + 1000, 0, 0, 0, 0,
                      b"\x03" + sql.encode(), status_flags=2 | (1 if in_txn else 0))

    recs = [_open(1, "a", "d", T0), _open(2, "a", "d", T0), _open(3, "a", "d", T0),
            q(1, 6, "BEGIN", True), q(1, 7, "UPDATE t SET a=1", True), q(2, 7.2, "UPDATE t SET a=2", False),
            q(3, 7.3, "START TRANSACTION", True), q(3, 7.4, "SELECT a FROM t", True),
            q(1, 8, "UPDATE t SET b=1", True), q(2, 8.5, "SELECT 2", False), q(1, 9, "COMMIT", False),
            q(1, 10, "SELECT 'after'", False), q(3, 11, "ROLLBACK", False), q(3, 12, "SELECT 'later'", False)]
    source = ListSource(recs)
    if status_flags:
        source.meta["format_version"] = 2
    src = FilteredSource(source, Filters.parse(end_time="7.5s"))
    out = [(r.conn_id, r.payload[1:].decode()) for r in src if r.kind == KIND_COMMAND]
    assert out == [(1, "BEGIN"), (1, "UPDATE t SET a=1"), (2, "UPDATE t SET a=2"), (3, "START TRANSACTION"),
                   (3, "SELECT a FROM t"), (1, "UPDATE t SET b=1"), (1, "COMMIT"), (3, "ROLLBACK")], out
    assert src.completed_after_end == 3 and src.dropped == {"end-time": 3}, (src.completed_after_end, src.dropped)


@pytest.mark.parametrize("status_flags", [False, True])
def test_the_end_of_a_transaction_after_the_window_is_read_as_the_planner_reads_it(status_flags):
    """What ends a transaction after the window (review of this stop): a statement's close (no answer)
    and a statement that failed leave it open (the COMMIT after them is kept), a deadlock ends it;
    with --start-time a log's BEGIN held from before the window counts; a kept command goes at the
    window's end, and a transaction still open a minute (capture time) after it stays cut."""
    from fastproxy.capture.record import KIND_COMMAND, Record
    from fastproxy.replay.filters import Filters, FilteredSource
    from test_replay_selection import S as SEC, T0, ListSource, _open

    def q(conn, t, payload, in_txn, outcome=0, err=0):
        payload = payload if isinstance(payload, bytes) else b"\x03" + payload.encode()
        return Record(KIND_COMMAND, conn, T0 + int(t * SEC), T0 + int(t * SEC) + 1000, outcome, err, 0, 0, payload,
                      status_flags=(2 | (1 if in_txn else 0)) if outcome == 0 else 0)

    close_stmt = b"\x19\x05\x00\x00\x00"  # COM_STMT_CLOSE 5: no answer, no status
    recs = [_open(1, "a", "d", T0), _open(2, "a", "d", T0), _open(3, "a", "d", T0), _open(4, "a", "d", T0),
            q(4, 1, "BEGIN", True),  # before --start-time: held
            q(1, 6, "BEGIN", True), q(1, 7, "UPDATE t SET a=1", True), q(1, 7.1, close_stmt, False, outcome=2),
            q(2, 6.5, "BEGIN", True), q(2, 7.2, "UPDATE t SET a=2", True),
            q(3, 6.6, "BEGIN", True), q(3, 7.3, "UPDATE t SET a=3", True),
            q(4, 7.4, "UPDATE t SET a=4", True),
            q(1, 8, "INSERT INTO t VALUES (1)", True, outcome=1, err=1062), q(1, 9, "COMMIT", False),
            q(2, 8.5, "UPDATE t SET b=2", True, outcome=1, err=1213), q(2, 9.5, "SELECT 'retry'", False),
            q(3, 100, "COMMIT", False),  # 92.5 s after the window: stays cut
            q(4, 9, "COMMIT", False)]
    source = ListSource(recs)
    if status_flags:
        source.meta["format_version"] = 2
    src = FilteredSource(source, Filters.parse(start_time="5s", end_time="7.5s"))
    out = [(r.conn_id, r.payload[1:].decode(errors="replace") if r.payload[:1] == b"\x03" else "close", r.start_ns)
           for r in src if r.kind == KIND_COMMAND]
    end = T0 + int(7.5 * SEC)
    after = [(c, sql) for c, sql, t in out if t >= end]
    assert after == [(1, "INSERT INTO t VALUES (1)"), (1, "COMMIT"), (2, "UPDATE t SET b=2"), (4, "COMMIT")], out
    assert all(t == end for c, sql, t in out if (c, sql) in after)  # at the window's end, not their own times
    assert (4, "BEGIN", T0 + SEC) in out  # the held BEGIN, replayed with the statement of the window
    assert src.dropped["end-time (transactions left open)"] == 1 and src.completed_after_end == 4, src.dropped
