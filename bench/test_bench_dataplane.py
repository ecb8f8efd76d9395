"""The data plane's per-command work alone, in ns per command (extra_info["ns_per_command"]).

    python -m pytest bench/test_bench_dataplane.py -q --benchmark-only

`fastproxy._dataplane.bench_commands` runs N commands through one connection of a worker without
sockets: the client's command packet through the framer (what of its payload the session needs, or
all of it when captured), the server's whole response through the response tracker, then the
session update, the per-worker counters and the latency histogram, and with a ring the capture
append (secret pre-check, record header, ring mutex, memcpy). Two wall-clock reads per command are
included, as in a worker. What it leaves out is the system calls (epoll_wait, recv, send), which
bench/e2e.py measures with everything else.
"""
import struct

import pytest

from fastproxy._dataplane import bench_commands
from fastproxy._ringbuf import RingBuffer

N = 100_000


def packet(seq: int, payload: bytes) -> bytes:
    return struct.pack("<I", len(payload))[:3] + bytes([seq]) + payload


def lenenc_str(b: bytes) -> bytes:
    return bytes([len(b)]) + b if len(b) < 251 else b"\xfc" + struct.pack("<H", len(b)) + b


def column_def(name: bytes, table: bytes) -> bytes:
    return (b"".join(lenenc_str(x) for x in (b"def", b"sbtest", table, table, name, name))
            + b"\x0c" + struct.pack("<HIBHB", 8, 480, 254, 0, 0) + b"\x00\x00")


EOF_PACKET = b"\xfe\x00\x00\x02\x00"
# sysbench oltp_point_select as a text query: one column, one 120-byte row
POINT_SELECT = packet(0, b"\x03SELECT c FROM sbtest1 WHERE id=5012")
POINT_SELECT_RESPONSE = (packet(1, b"\x01") + packet(2, column_def(b"c", b"sbtest1")) + packet(3, EOF_PACKET)
                         + packet(4, lenenc_str(b"68487932199-96439406143-93774651418-41631865787-96406072701-"
                                               b"20604855487-25459966574-28203206787-41238978918-19503783441"))
                         + packet(5, EOF_PACKET))
# an UPDATE: one OK packet
UPDATE = packet(0, b"\x03UPDATE sbtest1 SET k=k+1 WHERE id=5012")
UPDATE_RESPONSE = packet(1, b"\x00\x01\x00\x03\x00\x00\x00")

CASES = {"point_select": (POINT_SELECT, POINT_SELECT_RESPONSE), "update": (UPDATE, UPDATE_RESPONSE)}


def _run(benchmark, command, response, capture):
    rings = []

    def setup():
        ring = RingBuffer(256 << 20) if capture else None  # room for every record of a round
        rings[:] = [ring]
        return (command, response, N), {"rb": ring}

    benchmark.pedantic(bench_commands, setup=setup, rounds=15, iterations=1, warmup_rounds=2)
    if benchmark.stats:  # None under --benchmark-disable (a smoke run)
        benchmark.extra_info["ns_per_command"] = round(benchmark.stats.stats.median / N * 1e9, 1)
    if capture:
        assert rings[0].commands_appended == N


@pytest.mark.parametrize("case", CASES)
def test_per_command(benchmark, case):
    _run(benchmark, *CASES[case], capture=False)


@pytest.mark.parametrize("case", CASES)
def test_per_command_captured(benchmark, case):
    _run(benchmark, *CASES[case], capture=True)
