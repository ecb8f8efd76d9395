"""The data plane (fastproxy/_dataplane.pyx, fastproxy/csrc/dp*.c): its parsers against the Python
references they replaced, and behaviour only a relay shows — pipelined commands, a client that reads
slowly (backpressure), several workers — with real clients through a real `fastproxy serve`."""
from __future__ import annotations

import os
import re
import socket
import threading
import time

import pymysql
import pytest
from hypothesis import given, settings, strategies as st

from capture_util import cancel_capture, start_capture
from conftest import connect_kwargs
from fastproxy._dataplane import secret_scan_needed, used_database
from fastproxy.secret_sql import CLEAN, classify
from fastproxy.scratch_db import ROOT_PASSWORD
from proxy_rawclient import RawClient, packet
from proxy_util import wait_for

# ---- `USE db` -----------------------------------------------------------------------------------

# The regex the Python relay used (fastproxy/proxy/session.py before the data plane): the reference.
_USE_RE = re.compile(rb"^\s*(?:/\*.*?\*/\s*)*use\s+(`(?:[^`]|``)+`|[^\s;]+)\s*;?\s*$", re.I | re.S)


def reference_used_database(payload: bytes) -> str | None:
    m = _USE_RE.match(payload[1:])
    if not m:
        return None
    name = m.group(1).decode("utf-8", "replace")
    name = name[1:-1].replace("``", "`") if name.startswith("`") else name
    return name or None  # the relay kept its database for an empty name


@pytest.mark.parametrize("sql, db", [
    ("USE shop", "shop"), ("use shop;", "shop"), ("  Use\tshop ; ", "shop"), ("USE `my db`", "my db"),
    ("USE `a``b`", "a`b"), ("/* app */ USE shop", "shop"), ("/* a */ /* b */\nuse s1", "s1"),
    ("USE shop; SELECT 1", None), ("USED shop", None), ("SELECT 'USE shop'", None), ("USE", None),
    ("USE ``", None), ("/* open USE shop", None), ("UPDATE t SET x = 1", None),
    ("USE   \u00e9t\u00e9", "\u00e9t\u00e9"),
])
def test_used_database(sql, db):
    payload = b"\x03" + sql.encode()
    assert used_database(payload) == db
    assert reference_used_database(payload) == db


def test_used_database_refuses_an_unclosed_quote():
    # the regex read "`unclosed" as a bare name and kept "unclose"; the server refuses the statement
    assert used_database(b"\x03USE `unclosed") is None


names = st.one_of(st.from_regex(r"[A-Za-z0-9_$]{1,12}", fullmatch=True),
                  st.from_regex(r"`([a-z ;]|``){1,8}`", fullmatch=True))
spaces = st.from_regex(r"[ \t\r\n]{0,3}", fullmatch=True)
comments = st.lists(st.from_regex(r"/\*[a-z ]{0,6}\*/", fullmatch=True), max_size=2)


@settings(max_examples=300, deadline=None)
@given(lead=spaces, comments=comments, use=st.sampled_from(["use", "USE", "Use"]), gap=st.from_regex(r"[ \t\n]{1,3}",
       fullmatch=True), name=names, tail=st.sampled_from(["", ";", " ; ", " x", "\n", ";;"]))
def test_used_database_like_the_regex(lead, comments, use, gap, name, tail):
    sql = lead + "".join(c + " " for c in comments) + use + gap + name + tail
    payload = b"\x03" + sql.encode()
    assert used_database(payload) == reference_used_database(payload), sql


# ---- the secret classifier, as the workers run it -------------------------------------------------

FRAGMENTS = ["create", "alter", "user", "identified", "by", "password", "(", ")", "'x'", "\"y\"", "`t`", "@v", "=",
             ":=", "into", "prepare", "from", "execute", "immediate", "mysql", ".", "user", "aes_encrypt", "select",
             "/*!", "*/", "/*", "--", "#", "\\", "\n", ";", "set", "insert", "values", "connection", "1"]


@settings(max_examples=500, deadline=None)
@given(words=st.lists(st.tuples(st.sampled_from(FRAGMENTS), st.booleans(), st.sampled_from([" ", "\t", "", ","])),
                      max_size=10))
def test_workers_ask_the_secret_policy_whenever_it_could_act(words):
    """The workers scan each captured statement without the GIL and take it (to run the policy of
    fastproxy/secret_sql.py) only when the scan found something: never for one the policy would not
    record as it is."""
    sql = "".join((w.upper() if up else w) + sep for w, up, sep in words).encode()
    payload = b"\x03" + sql
    if classify(payload, 1)[0] != CLEAN:
        assert secret_scan_needed(payload), sql


@pytest.mark.parametrize("sql", [
    "SELECT c FROM sbtest1 WHERE id=?", "UPDATE sbtest3 SET k=k+1 WHERE id=?", "SELECT user_id FROM users",
    "INSERT INTO t (a, b) VALUES (1, 'two')", "BEGIN", "COMMIT", "DELETE FROM t WHERE id = 5",
])
def test_ordinary_statements_never_take_the_gil(sql):
    assert not secret_scan_needed(b"\x03" + sql.encode())


# ---- relaying -----------------------------------------------------------------------------------------

def _select_response(client: RawClient) -> bytes:
    """Read one text result set of one column and one row; its value."""
    _, first = client.read_packet()
    assert first[0] == 1, first  # one column
    client.read_packet()  # column definition
    client.read_packet()  # EOF
    _, row = client.read_packet()
    _, eof = client.read_packet()
    assert eof[0] == 0xFE
    return row[1:1 + row[0]]


def test_pipelined_commands_in_one_write_all_answered_in_order(proxy):
    """More commands in flight than the relay keeps (it stops reading the client meanwhile)."""
    c = RawClient(proxy.port)
    c.login("root", ROOT_PASSWORD)
    n = 300
    c.send(b"".join(packet(0, b"\x03SELECT " + str(i).encode()) for i in range(n)))
    assert [_select_response(c) for _ in range(n)] == [str(i).encode() for i in range(n)]
    c.send(packet(0, b"\x01"))
    assert c.closed_by_peer()
    wait_for(lambda: proxy.metric("fastproxy_commands_total", 'type="COM_QUERY"') >= n, what="the commands counted")


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"^VmRSS:\s+(\d+)", f.read(), re.M).group(1))


def test_slow_reader_holds_the_backend_back(proxy_factory, mariadb):
    """A client that does not read a 100 MB result: the proxy buffers a bounded amount (it stops
    reading the server), and another connection of the same worker is served meanwhile."""
    p = proxy_factory([mariadb], "--proxy.workers=1")
    slow = RawClient(p.port)
    slow.login("root", ROOT_PASSWORD)
    slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    before = _rss_kib(p.proc.pid)
    slow.send(packet(0, b"\x03SELECT REPEAT('x', 1000) FROM mysql.seq_1_to_100000"))
    other = pymysql.connect(**connect_kwargs(p.port))
    with other.cursor() as cur:
        for i in range(50):
            cur.execute("SELECT %s", (i,))
            assert cur.fetchone()[0] == i
    # Watched for a while: the proxy keeps little of the result (a relay without backpressure takes
    # it all in within a second or two), and the server is held back, its query still sending.
    for _ in range(30):
        assert _rss_kib(p.proc.pid) - before < 32 << 10
        time.sleep(0.1)
    assert mariadb.sql("SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                       "WHERE INFO LIKE 'SELECT REPEAT(%'").strip() == "1"
    slow.sock.settimeout(30)
    _, first = slow.read_packet()
    assert first == b"\x01", first  # one column (not an error)
    slow.read_packet()  # its definition
    assert slow.read_packet()[1][0] == 0xFE
    rows = 0
    while True:  # now read it all: nothing was lost
        _, body = slow.read_packet()
        if body[0] == 0xFE and len(body) < 9:
            break
        assert body == b"\xfc\xe8\x03" + b"x" * 1000
        rows += 1
    assert rows == 100_000
    other.close()
    slow.close()


def test_workers_share_the_connections(proxy_factory, mariadb):
    """A burst of new connections spreads evenly over the workers, which all relay."""
    p = proxy_factory([mariadb], "--proxy.workers=3")
    conns = []
    openers = [threading.Thread(target=lambda: conns.append(pymysql.connect(**connect_kwargs(p.port))))
               for _ in range(9)]
    for t in openers:
        t.start()
    for t in openers:
        t.join()
    assert len(conns) == 9
    errors = []

    def run(conn):
        try:
            with conn.cursor() as cur:
                for i in range(100):
                    cur.execute("SELECT %s", (i,))
                    assert cur.fetchone()[0] == i
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    per_worker = [p.metric("fastproxy_worker_connections", f'worker="{i}"') for i in range(3)]
    assert per_worker == [3, 3, 3]
    assert p.metric("fastproxy_commands_total", 'type="COM_QUERY"') >= 900
    for c in conns:
        c.close()
    wait_for(lambda: p.get("/api/debug/health")["connections"] == 0, what="the connections to close")


def test_default_workers_is_the_cpu_count(proxy_factory, mariadb):
    p = proxy_factory([mariadb], "--proxy.workers=auto")
    n = len(os.sched_getaffinity(0))
    assert p.get("/metrics").count("fastproxy_worker_connections{") == n


def test_command_ends_are_the_answers_arrival_during_a_capture_and_after_it(proxy, tmp_path):
    """While a capture runs, a backend's answer is stamped with the kernel's arrival time
    (SO_TIMESTAMPNS); once it stops, with the clock again, never with an arrival time left over
    from the capture."""
    conn = pymysql.connect(**connect_kwargs(proxy.port))
    cur = conn.cursor()
    start_capture(proxy, tmp_path / "c")
    for phase in ("captured", "after the capture"):
        if phase != "captured":
            assert not cancel_capture(proxy)["error"]
        t0 = time.time_ns()
        cur.execute("SELECT SLEEP(0.2)")
        t1 = time.time_ns()
        [c] = [c for c in proxy.get("/api/debug/connections") if c["commands"]]
        last = c["last_command"]
        assert t0 <= last["start_ns"] and last["start_ns"] + 200_000_000 <= last["end_ns"] <= t1, (phase, last)
    conn.close()
