"""Replay memory stays bounded however long the capture: reading pauses while too much is queued."""
import json

import uvloop

from fastproxy._ringbuf import RingBuffer
from fastproxy.capture.record import KIND_CONN_OPEN
from fastproxy.capture.writer import CaptureWriter
from fastproxy.replay.engine import READ_BATCH, ReplayOptions, Replayer
from fastproxy.scratch_db import ROOT_PASSWORD

CONNS = 8
PER_CONN = 5000


def _synthetic_capture(path):
    """A capture of CONNS connections running PER_CONN `SELECT <n>` each, written by the real writer."""
    rb = RingBuffer(64 << 20)
    w = CaptureWriter(rb, path)
    w.start()
    t0 = 1_700_000_000_000_000_000
    for c in range(1, CONNS + 1):
        rb.append_event(KIND_CONN_OPEN, c, t0, json.dumps({"user": "root", "db": None, "capabilities": 0}).encode())
    for i in range(PER_CONN):
        for c in range(1, CONNS + 1):
            start = t0 + (i * CONNS + c) * 1000
            assert rb.append_command(c, start, start + 500, 0, 0, 0, 1, b"\x03SELECT %d" % i)
    w.stop({"commands": CONNS * PER_CONN, "start_ns": t0})


def test_queue_is_bounded_and_everything_is_replayed(tmp_path, mariadb):
    path = tmp_path / "cap"
    _synthetic_capture(path)
    opts = ReplayOptions(host=mariadb.host, port=mariadb.port, username="root", password=ROOT_PASSWORD,
                         speed=0, max_queued=500)
    engine = Replayer(str(path), opts)
    stats = uvloop.run(engine.run())
    assert stats.replayed == CONNS * PER_CONN
    assert stats.failed == stats.skipped == 0
    # the reader stops after the batch that crossed the limit
    assert stats.peak_queued <= opts.max_queued + READ_BATCH
    assert stats.peak_queued < CONNS * PER_CONN // 4
