"""The data plane's two I/O paths (`proxy.io`): io_uring where the kernel and the process's seccomp
profile allow it, epoll otherwise. The whole suite runs on the default (auto) and, in scripts/test.sh's
second pass, on epoll with four workers; these tests put the two side by side on what differs
between them: bytes queued behind a send still in flight, what a recv brings after the connection
stopped wanting it, and a connection closed while operations on it are in flight."""
from __future__ import annotations

import json
import subprocess
import sys

import pymysql
import pytest

from capture_util import cancel_capture, read_capture, start_capture
from conftest import connect_kwargs
from fastproxy._dataplane import DataPlane
from fastproxy.capture.record import KIND_CONN_STATE
from fastproxy.metrics import LATENCY_BOUNDS_NS
from fastproxy.scratch_db import ROOT_PASSWORD
from proxy_rawclient import RawClient, packet
from proxy_util import wait_for

pytestmark = pytest.mark.proxy


def _io_uring_allowed() -> bool:
    try:
        DataPlane(1, LATENCY_BOUNDS_NS, "io_uring")
    except OSError:
        return False
    return True


IO_URING = _io_uring_allowed()


@pytest.fixture(params=["epoll", "io_uring"])
def io(request):
    if request.param == "io_uring" and not IO_URING:
        pytest.skip("io_uring is not allowed here (kernel, seccomp profile or kernel.io_uring_disabled)")
    return request.param


def _status(mariadb, name: str) -> int:
    return int(mariadb.sql(f"SHOW GLOBAL STATUS LIKE '{name}'").split()[-1])


def test_the_workers_run_on_the_io_they_were_given(proxy_factory, mariadb, io):
    p = proxy_factory([mariadb], f"--proxy.io={io}", "--proxy.workers=2")
    assert [p.metric("fastproxy_worker_io", f'io="{io}",worker="{i}"') for i in range(2)] == [1, 1]
    other = "epoll" if io == "io_uring" else "io_uring"
    assert p.metric("fastproxy_worker_io", f'io="{other}",worker="0"') == 0
    assert f"on {io}" in p.read_log()


def test_auto_takes_io_uring_where_it_is_allowed(proxy_factory, mariadb):
    p = proxy_factory([mariadb], "--proxy.io=auto")
    assert p.metric("fastproxy_worker_io", f'io="{"io_uring" if IO_URING else "epoll"}",worker="0"') == 1


def test_an_unknown_io_is_refused_with_its_name():
    r = subprocess.run([sys.executable, "-m", "fastproxy", "serve", "--proxy.io=kqueue"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0
    assert "proxy.io" in r.stderr and "kqueue" in r.stderr


def _rows(client: RawClient) -> list[bytes]:
    """A text result set's rows (one column), read to its end."""
    _, first = client.read_packet()
    assert first[0] == 1, first  # one column, not an error
    client.read_packet()  # its definition
    assert client.read_packet()[1][0] == 0xFE
    rows = []
    while True:
        _, body = client.read_packet()
        if body[0] == 0xFE and len(body) < 9:
            return rows
        rows.append(body)


def test_pipelined_queries_and_large_results_come_back_whole_and_in_order(proxy_factory, mariadb, io):
    """Small answers between large ones, all in one write: the large ones outgrow a provided buffer
    (32 KiB) and the side's output limit, so the client is read while sends are still in flight and
    the backend's bytes wait in the stash while the client is behind."""
    p = proxy_factory([mariadb], f"--proxy.io={io}")
    c = RawClient(p.port, timeout=30)
    c.login("root", ROOT_PASSWORD)
    queries = []
    for i in range(60):
        queries.append((f"SELECT {i}", [bytes([len(str(i))]) + str(i).encode()]))
        if i % 20 == 0:
            queries.append(("SELECT REPEAT('y', 60000) FROM mysql.seq_1_to_40", [b"\xfc\x60\xea" + b"y" * 60000] * 40))
    c.send(b"".join(packet(0, b"\x03" + sql.encode()) for sql, _ in queries))
    for sql, want in queries:
        assert _rows(c) == want, sql
    c.close()


def test_a_quit_right_after_a_statement_close_reaches_the_server_with_it(proxy_factory, mariadb, io):
    """COM_STMT_CLOSE has no answer: a client sends it and COM_QUIT at once and goes. The proxy closes
    the backend on the QUIT, but only after writing both (on io_uring, once their send completed)."""
    p = proxy_factory([mariadb], f"--proxy.io={io}")
    before = _status(mariadb, "Com_stmt_close")
    for _ in range(5):
        c = RawClient(p.port)
        c.login("root", ROOT_PASSWORD)
        c.send(packet(0, b"\x16DO 1"))
        _, ok = c.read_packet()
        assert ok[0] == 0, ok
        stmt_id = ok[1:5]
        c.send(packet(0, b"\x19" + stmt_id) + packet(0, b"\x01"))
        assert c.closed_by_peer()
    wait_for(lambda: p.get("/api/debug/health")["connections"] == 0, what="the connections to close")
    wait_for(lambda: _status(mariadb, "Com_stmt_close") - before == 5, what="the server to count the five closes")


def test_a_client_gone_in_the_middle_of_a_large_result_leaves_nothing_behind(proxy_factory, mariadb, io):
    """Its connection is closed while a recv and a send are in flight on it; it is reported closed
    (and freed) once they completed, and the worker goes on serving others."""
    p = proxy_factory([mariadb], f"--proxy.io={io}")
    for _ in range(10):
        c = RawClient(p.port)
        c.login("root", ROOT_PASSWORD)
        c.send(packet(0, b"\x03SELECT REPEAT('z', 100000) FROM mysql.seq_1_to_200"))
        c.read_packet()  # the answer has begun
        c.close()
    wait_for(lambda: p.get("/api/debug/health")["connections"] == 0, what="the connections to close")
    c = RawClient(p.port)
    c.login("root", ROOT_PASSWORD)
    c.send(packet(0, b"\x03SELECT 7"))
    assert _rows(c) == [b"\x017"]
    c.close()


def test_a_session_open_before_a_capture_is_read_whole_while_parked(proxy_factory, mariadb, io, tmp_path):
    """A capture reads an open session's state with the proxy's own query at its next command, the
    connection parked for Python meanwhile. With a 300 kB user variable the answer takes many reads
    (on io_uring, while the capture runs, single-shot recvmsg re-armed after each completion), all
    of them while the connection is parked; the held command then goes on."""
    p = proxy_factory([mariadb], f"--proxy.io={io}")
    conn = pymysql.connect(**connect_kwargs(p.port, read_timeout=20))
    cur = conn.cursor()
    cur.execute("SET @big = REPEAT('v', 300000)")
    start_capture(p, tmp_path / "c")
    cur.execute("SELECT LENGTH(@big)")
    assert cur.fetchone()[0] == 300000
    job = cancel_capture(p)
    conn.close()
    assert job["existing_connections"] == 1 and not job["error"], job
    _, records, _ = read_capture(tmp_path / "c")
    states = [json.loads(r.payload) for r in records if r.kind == KIND_CONN_STATE]
    assert len(states) == 1 and "76" * 300000 in json.dumps(states[0])  # the value, hex-encoded
