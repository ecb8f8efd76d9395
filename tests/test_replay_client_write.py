"""After login the replay client writes each command straight to its socket (_client.pyx `write`,
through a duplicate of the transport's descriptor); what the socket does not take at once goes
through the transport, and what follows waits behind it: the server reads the bytes in order."""
import asyncio
import os
import socket

import pytest
import uvloop

from fastproxy.capture.record import OUTCOME_OK
from fastproxy.replay.client import ReplayClient
from fastproxy.scratch_db import ROOT_PASSWORD


def _fds_of(sock_inode: int) -> int:
    """How many descriptors of this process refer to the socket."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == f"socket:[{sock_inode}]":
                n += 1
        except OSError:
            pass
    return n


async def _connect(db, results: list, lost: list) -> ReplayClient:
    return await ReplayClient.connect(db.host, db.port, "root", ROOT_PASSWORD, None,
                                      on_result=lambda c, r: results.append(r), on_lost=lambda c, e: lost.append(e))


async def _until(cond, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.005)


def test_a_command_the_socket_cannot_take_at_once_keeps_the_order_of_what_follows(mariadb):
    big = 6 << 20  # far more than the socket's send buffer (made small below) takes in one write

    async def main():
        results, lost = [], []
        client = await _connect(mariadb, results, lost)
        sock = client.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        client.send(b"\x03SELECT LENGTH('" + b"x" * big + b"')")
        assert client.transport.get_write_buffer_size() > 0  # the rest of it waits in the transport
        # in the same tick: each must wait behind the big one; i + 1 columns tell them apart
        for i in range(20):
            client.send(b"\x03SELECT " + b",".join(b"%d" % k for k in range(i + 1)))
        await _until(lambda: len(results) == 21 or lost)
        # the transport has drained: the next commands go straight to the socket again
        await _until(lambda: client.transport.get_write_buffer_size() == 0)
        for i in range(5):
            client.send(b"\x03SELECT " + b",".join(b"%d" % k for k in range(30 + i)))
        await _until(lambda: len(results) == 26 or lost)
        client.close()
        return results, lost

    results, lost = uvloop.run(main())
    assert not lost
    assert [r.outcome for r in results] == [OUTCOME_OK] * 26
    assert [r.columns for r in results] == [1] + list(range(1, 21)) + list(range(30, 35))
    assert [r.rows for r in results] == [1] * 26


def test_the_socket_s_duplicate_descriptor_lives_from_login_to_close(mariadb):
    async def main():
        results, lost = [], []
        client = await _connect(mariadb, results, lost)
        inode = os.fstat(client.transport.get_extra_info("socket").fileno()).st_ino
        logged_in = _fds_of(inode)
        client.send(b"\x03SELECT 1")
        await _until(lambda: results)
        client.close()
        await _until(lambda: _fds_of(inode) == 0, 10)
        return logged_in, results

    logged_in, results = uvloop.run(main())
    assert logged_in == 2  # the event loop's and the client's own
    assert results[0].outcome == OUTCOME_OK


def test_a_connection_the_server_ends_closes_the_duplicate_and_reports_the_loss(mariadb):
    async def main():
        results, lost = [], []
        client = await _connect(mariadb, results, lost)
        inode = os.fstat(client.transport.get_extra_info("socket").fileno()).st_ino
        mariadb.sql(f"KILL {client.connection_id}")
        await _until(lambda: lost, 10)
        after = _fds_of(inode)
        # sending on it now is the closed transport's error, as it always was, and never a write
        # to the descriptor's number, which the next connection may take
        other = await _connect(mariadb, [], [])
        with pytest.raises(RuntimeError):
            client.send(b"\x03SELECT 1")
        other_results = []
        other.on_result = lambda c, r: other_results.append(r)
        other.send(b"\x03SELECT 1, 2")
        await _until(lambda: other_results, 10)
        other.close()
        return after, other_results

    after, other_results = uvloop.run(main())
    assert after == 0
    assert other_results[0].outcome == OUTCOME_OK and other_results[0].columns == 2


def test_corked_commands_leave_together_at_uncork_in_order(mariadb):
    async def main():
        results, lost = [], []
        client = await _connect(mariadb, results, lost)
        client.cork()
        for i in range(3):
            client.send(b"\x03SELECT " + b",".join(b"%d" % k for k in range(i + 1)))
        for _ in range(20):  # the loop runs: nothing was sent, so nothing can come back
            await asyncio.sleep(0)
        held = (len(results), client.transport.get_write_buffer_size())
        client.uncork()
        await _until(lambda: len(results) == 3 or lost)
        client.send(b"\x03SELECT 1, 2, 3, 4")  # uncorked: straight out again
        await _until(lambda: len(results) == 4 or lost)
        client.close()
        return held, results, lost

    held, results, lost = uvloop.run(main())
    assert held == (0, 0) and not lost
    assert [r.columns for r in results] == [1, 2, 3, 4]


def test_write_takes_bytes_only(mariadb):
    async def main():
        client = await _connect(mariadb, [], [])
        try:
            with pytest.raises(TypeError):
                client.write(None)
            with pytest.raises(TypeError):
                client.write("SELECT 1")
        finally:
            client.close()

    uvloop.run(main())
