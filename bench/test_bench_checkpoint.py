"""The checkpoint's cost on the replay's per-command path (fastproxy/replay/checkpoint.py): the
three hooks a command passes through (read, sent — one journal write —, consumed), against a real
Replayer's connection objects and a real journal file in a temporary directory."""
from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from fastproxy.capture.record import KIND_COMMAND, KIND_CONN_OPEN, Record  # noqa: E402
from fastproxy.inputs.convert import convert  # noqa: E402
from fastproxy.replay.checkpoint import Checkpoint, identity  # noqa: E402
from fastproxy.replay.engine import Replayer, ReplayOptions  # noqa: E402
from test_replay_selection import T0, ListSource  # noqa: E402


@pytest.fixture
def attached(tmp_path):
    cap = str(tmp_path / "cap")
    convert(ListSource([Record(KIND_CONN_OPEN, 1, T0, 0, 0, 0, 0, 0,
                               json.dumps({"user": "u", "db": "d"}).encode())]), cap)
    engine = Replayer(cap, ReplayOptions(host="127.0.0.1", port=9, username="u"))
    cp = Checkpoint(str(tmp_path / "report"), "report-dir", "replay.checkpoint", identity([cap], engine), False)
    cp.attach(engine)
    asyncio.run(cp.begin(0))
    conn = engine._conn(1)
    yield cp, conn
    cp.finish(False)


def test_checkpoint_hooks_per_command(benchmark, attached):
    cp, conn = attached
    rec = Record(KIND_COMMAND, 1, T0 + 1, T0 + 2, 0, 0, 0, 1, b"\x03SELECT 1")

    def one_command():
        cp.on_read(rec)
        cp.sent(conn)
        cp.consumed(conn, None)

    benchmark(one_command)


def test_checkpoint_hooks_per_command_with_result(benchmark, attached):
    """The same, with the command's result going through the checkpoint (its `R` journal entry) to the
    engine's counting (no verdict observer here: its own cost is the replay's, not the checkpoint's)."""
    import time

    from fastproxy._packet import CommandResult

    cp, conn = attached
    rec = Record(KIND_COMMAND, 1, T0 + 1, T0 + 2, 0, 0, 0, 1, b"\x03SELECT 1")
    result = CommandResult(3)
    result.outcome = 0
    result.rows = 1
    result.columns = 1

    def one_command():
        cp.on_read(rec)
        cp.sent(conn)
        cp.result(conn, rec, result, time.monotonic_ns())
        cp.consumed(conn, None)

    benchmark(one_command)
