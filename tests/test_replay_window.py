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
