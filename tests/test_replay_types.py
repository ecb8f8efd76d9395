"""Executes after a re-prepare get their parameter types back (clients send them only once)."""
import struct

import pytest

from fastproxy._ringbuf import RingBuffer
from fastproxy.capture.writer import CaptureWriter
from fastproxy.replay.engine import Conn, ReplayOptions, Replayer
from fastproxy.replay.params import decode_execute_params


def _execute(stmt_id: int, value: int, with_types: bool) -> bytes:
    """COM_STMT_EXECUTE of a 1-parameter statement with a BIGINT value."""
    head = b"\x17" + struct.pack("<IBI", stmt_id, 0, 1) + b"\x00"  # NULL bitmap of 1 parameter
    return head + (b"\x01" + b"\x08\x00" if with_types else b"\x00") + struct.pack("<q", value)


@pytest.fixture
def engine(tmp_path):
    rb = RingBuffer(1 << 20)
    w = CaptureWriter(rb, tmp_path / "cap")
    w.start()
    w.stop({"commands": 0})
    return Replayer(str(tmp_path / "cap"), ReplayOptions(host="127.0.0.1", port=1, username="u"))


def test_types_are_restored_after_a_reprepare(engine):
    conn = Conn(0, 1)
    conn.stmt_params[5] = 1
    first = engine._remap(conn, 5, 42, _execute(5, 1, with_types=True))
    assert first[1:5] == struct.pack("<I", 42) and 5 in conn.types_bound
    assert engine._remap(conn, 5, 42, _execute(5, 2, with_types=False)) == _execute(42, 2, with_types=False)
    conn.types_bound.clear()  # re-prepared (reconnect, statement open before the capture...)
    again = engine._remap(conn, 5, 43, _execute(5, 3, with_types=False))
    assert again == _execute(43, 3, with_types=True)
    values, types = decode_execute_params(again, 1, None)
    assert values == [3] and types == [0x08]


def test_unknown_types_are_reported_not_sent(engine):
    conn = Conn(0, 1)
    conn.stmt_params[9] = 1
    assert engine._remap(conn, 9, 1, _execute(9, 1, with_types=False)) is None
    assert engine.stats.skipped == 1
    assert "unknown parameter types" in engine.report.other_errors
