"""Faults: too many connections, unreachable backend, malformed packets, a backend killed mid-result,
graceful shutdown on SIGTERM. Each checks what a client sees, and that other connections (or the
proxy once the fault is gone) keep working."""
from __future__ import annotations

import signal

import MySQLdb
import MySQLdb.cursors
import pymysql
import pytest

from conftest import connect_kwargs
from fastproxy.scratch_db import ROOT_PASSWORD, free_port
from proxy_rawclient import RawClient, packet
from proxy_util import health, wait_for


def _connect(port, **kw):
    return pymysql.connect(**connect_kwargs(port, **kw))


def _select1(conn) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        return cur.fetchone()[0]


def test_max_connections_gives_1040_then_recovers(proxy_factory, mariadb):
    p = proxy_factory([mariadb], "--proxy.max-connections=2")
    a, b = _connect(p.port), _connect(p.port)
    for driver, error in ((pymysql, pymysql.err.OperationalError), (MySQLdb, MySQLdb.OperationalError)):
        with pytest.raises(error) as ei:
            if driver is pymysql:
                _connect(p.port)
            else:
                MySQLdb.connect(host="127.0.0.1", port=p.port, user="root", passwd=ROOT_PASSWORD)
        assert ei.value.args[0] == 1040, ei.value.args
    assert _select1(a) == 1 and _select1(b) == 1  # the open ones are untouched
    a.close()
    wait_for(lambda: health(p)["connections"] == 1, what="the proxy to see the closed connection")
    c = _connect(p.port)
    assert _select1(c) == 1
    assert p.metric("fastproxy_connections_rejected_total") == 2
    b.close()
    c.close()
    assert "max-connections 2 reached" in p.read_log()


def test_backend_unreachable_gives_error_naming_it(proxy_factory):
    dead = f"127.0.0.1:{free_port()}"
    p = proxy_factory([dead])
    for _ in range(2):  # before and after the health check marked it down
        with pytest.raises(pymysql.err.OperationalError) as ei:
            _connect(p.port, connect_timeout=20)
        assert dead in str(ei.value.args[1]), ei.value.args
    with pytest.raises(MySQLdb.OperationalError) as ei:
        MySQLdb.connect(host="127.0.0.1", port=p.port, user="root", passwd=ROOT_PASSWORD, connect_timeout=20)
    assert dead in ei.value.args[1]
    assert health(p)["backends"][0]["healthy"] is False


def _login(port) -> RawClient:
    c = RawClient(port)
    c.login("root", ROOT_PASSWORD)
    return c


MALFORMED = {
    # case: (state of the connection before, bytes sent, what the proxy logs)
    # after a successful handshake
    "empty_command_packet": ("logged-in", packet(0, b""), "malformed client packet"),
    "garbage_after_handshake": ("logged-in", packet(0x37, b"\xde\xad\xbe\xef" * 4), "malformed client packet"),
    # before the handshake: sent without waiting for the greeting
    "garbage_before_handshake": ("new", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"\x00" * 40, "malformed client packet"),
    # after the greeting
    "short_handshake_response": ("greeted", packet(1, b"\x01\x02\x03"), "malformed client packet"),
    "handshake_response_wrong_seq": ("greeted", packet(0, b"\x00" * 40), "malformed client packet"),
    "truncated_handshake_response": ("greeted", packet(1, b"\xff" * 32 + b"user\x00"), "malformed client packet"),
    # well-formed enough for the proxy, refused by the server
    "garbage_handshake_response": ("greeted", packet(1, b"\xff" * 40 + b"\x00garbage"), "refused the login"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_client_packets_close_only_that_connection(proxy_factory, mariadb, case):
    p = proxy_factory([mariadb])
    other = _connect(p.port)
    state, data, logged = MALFORMED[case]
    bad = RawClient(p.port)
    if state == "logged-in":
        bad.login("root", ROOT_PASSWORD)
        assert bad.query("SELECT 1")[0] == 1  # one column
        for _ in range(4):  # column definition, EOF, row, EOF
            bad.read_packet()
    elif state == "greeted":
        bad.read_packet()
    bad.send(data)
    assert bad.closed_by_peer(), "the proxy kept a connection that sent a malformed packet"
    bad.close()
    assert _select1(other) == 1
    assert _select1(_connect(p.port)) == 1
    wait_for(lambda: logged in p.read_log(), what=f"a log line {logged!r}")
    other.close()


def test_oversized_packet_closes_connection(proxy_factory, mariadb):
    p = proxy_factory([mariadb], "--proxy.max-packet-size=1MiB")
    other = _connect(p.port)
    big = _connect(p.port, max_allowed_packet=64 << 20)
    with big.cursor() as cur:
        cur.execute("SELECT %s", ("x" * (512 << 10),))  # under the limit: fine
        assert len(cur.fetchone()[0]) == 512 << 10
        with pytest.raises(pymysql.err.OperationalError):
            cur.execute("SELECT LENGTH(%s)", ("x" * (2 << 20),))
    assert _select1(other) == 1
    wait_for(lambda: "exceeds the limit" in p.read_log(), what="a log line about the oversized packet")
    assert p.metric("fastproxy_protocol_errors_total") >= 1
    other.close()


def test_backend_killed_mid_result_then_recovers(proxy_factory, mariadb_private):
    p = proxy_factory([mariadb_private])
    conn = MySQLdb.connect(host="127.0.0.1", port=p.port, user="root", passwd=ROOT_PASSWORD, db="mysql",
                           cursorclass=MySQLdb.cursors.SSCursor)
    cur = conn.cursor()
    cur.execute("SELECT seq, REPEAT('x', 100) FROM seq_1_to_50000000")
    assert len(cur.fetchmany(1000)) == 1000
    mariadb_private.kill()
    with pytest.raises(MySQLdb.OperationalError) as ei:
        while cur.fetchmany(10000):
            pass
    assert ei.value.args[0] in (2013, 2006, 2026), ei.value.args
    conn.close()
    wait_for(lambda: not health(p)["backends"][0]["healthy"], what="the backend to be marked down")
    with pytest.raises(pymysql.err.OperationalError) as ei:
        _connect(p.port)
    assert mariadb_private.addr in str(ei.value.args[1])
    mariadb_private.restart()
    wait_for(lambda: health(p)["backends"][0]["healthy"], what="the backend to be marked up again")
    c = _connect(p.port)
    assert _select1(c) == 1
    c.close()


def _shutting_down(p) -> bool:
    try:
        return health(p)["status"] == "shutting-down"
    except OSError:
        return True  # the API is already gone


def test_sigterm_lets_transactions_finish(proxy_factory, mariadb):
    mariadb.sql("CREATE DATABASE IF NOT EXISTS fp_faults; CREATE OR REPLACE TABLE fp_faults.g (id INT PRIMARY KEY)")
    p = proxy_factory([mariadb], "--proxy.graceful-close-conn-timeout=60s")
    txn = _connect(p.port, database="fp_faults")
    idle = _connect(p.port)
    with txn.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("INSERT INTO g VALUES (1)")
    p.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: _shutting_down(p), what="the proxy to start shutting down")
    # the listener no longer accepts
    with pytest.raises((ConnectionRefusedError, pymysql.err.OperationalError)):
        c = _connect(p.port, connect_timeout=5)
        c.close()
    # the idle connection is closed
    with pytest.raises(pymysql.err.OperationalError):
        _select1(idle)
    # the transaction goes on and commits
    with txn.cursor() as cur:
        cur.execute("INSERT INTO g VALUES (2)")
        cur.execute("COMMIT")
    assert p.proc.wait(30) == 0
    assert mariadb.sql("SELECT COUNT(*) FROM fp_faults.g").strip() == "2"
    assert "closed at a transaction boundary for shutdown" in p.read_log()


def test_sigterm_force_closes_after_timeout(proxy_factory, mariadb):
    mariadb.sql("CREATE DATABASE IF NOT EXISTS fp_faults; CREATE OR REPLACE TABLE fp_faults.f (id INT PRIMARY KEY)")
    p = proxy_factory([mariadb], "--proxy.graceful-close-conn-timeout=1s")
    txn = _connect(p.port, database="fp_faults")
    with txn.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("INSERT INTO f VALUES (1)")
    p.proc.send_signal(signal.SIGTERM)
    assert p.proc.wait(30) == 0  # a bounded wait: the transaction never ends, the proxy does
    with pytest.raises(pymysql.err.OperationalError):
        with txn.cursor() as cur:
            cur.execute("COMMIT")
    assert "force-closing 1 connections" in p.read_log()
    # the backend rolled the transaction back when its connection closed
    wait_for(lambda: mariadb.sql("SELECT COUNT(*) FROM fp_faults.f").strip() == "0", what="the rollback")
