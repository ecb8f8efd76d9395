"""What the proxy knows of a session is what the server holds: the current database after any USE
(with session tracking and without), the whole session of a connection open before a capture
(its CONN_STATE), parameter types bound by a failed execute, and how connections ended."""
from __future__ import annotations

import json
import struct
import time

import MySQLdb
import pymysql
import pytest

from capture_rawclient import ps_client
from capture_util import cancel_capture, read_capture, start_capture
from clients_capi import CapiConnection
from conftest import connect_kwargs
from fastproxy.capture.record import (KIND_COMMAND, KIND_CONN_CLOSE, KIND_CONN_OPEN, KIND_CONN_STATE,
                                      OUTCOME_BACKEND_LOST)
from fastproxy.scratch_db import ROOT_PASSWORD
from proxy_rawclient import packet
from proxy_util import wait_for


def _conn_info(proxy, thread_id: int) -> dict:
    found = [c for c in proxy.get("/api/debug/connections") if c["backend_conn_id"] == thread_id]
    assert len(found) == 1, found
    return found[0]


def _by_conn(records) -> dict[int, list]:
    out: dict[int, list] = {}
    for r in records:
        out.setdefault(r.conn_id, []).append(r)
    return out


def _setup_dbs(mariadb, *names: str) -> None:
    mariadb.sql("".join(f"CREATE DATABASE IF NOT EXISTS {n}; CREATE TABLE IF NOT EXISTS {n}.t (id INT PRIMARY KEY, "
                        f"v VARCHAR(20)) ENGINE=InnoDB;" for n in names))


# ---- the current database ------------------------------------------------------------------------
@pytest.mark.parametrize("client", ["pymysql", "mysqlclient"])  # without / with CLIENT_SESSION_TRACK
def test_database_after_any_use(client, mariadb, proxy):
    _setup_dbs(mariadb, "sst_a", "sst_b", "sst_c", "sst_d")
    if client == "pymysql":
        conn = pymysql.connect(**connect_kwargs(proxy.port), autocommit=True,
                               client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS)
    else:
        conn = MySQLdb.connect(**connect_kwargs(proxy.port), autocommit=True)
    cur = conn.cursor()
    thread = conn.thread_id()

    def db_after(sql: str) -> str | None:
        cur.execute(sql)
        while cur.nextset():
            pass
        cur.execute("SELECT DATABASE()")  # a command boundary: the proxy has asked by now if it had to
        server_db = cur.fetchone()[0]
        assert _conn_info(proxy, thread)["db"] == server_db, sql
        return server_db

    assert db_after("USE sst_a -- a comment after the name") == "sst_a"
    assert db_after("SELECT 1; USE sst_b") == "sst_b"  # USE inside a multi-statement
    assert db_after("/* leading */ USE `sst_c` /* trailing */") == "sst_c"
    assert db_after("/*!40101 USE sst_d */") == "sst_d"
    assert db_after("SELECT 'use sst_a; is only a string'") == "sst_d"
    mariadb.sql("DROP DATABASE IF EXISTS sst_gone; CREATE DATABASE sst_gone")
    assert db_after("USE sst_gone") == "sst_gone"
    assert db_after("DROP DATABASE sst_gone") is None  # dropping the current database leaves none
    conn.select_db("sst_a")  # COM_INIT_DB
    assert db_after("SELECT 2") == "sst_a"
    conn.close()


def test_change_user_with_a_database(mariadb, proxy):
    _setup_dbs(mariadb, "sst_a", "sst_b")
    mariadb.sql("CREATE USER IF NOT EXISTS sst_u@'%' IDENTIFIED BY 'sst-pw'; GRANT ALL ON sst_b.* TO sst_u@'%';")
    with CapiConnection("127.0.0.1", proxy.port, "root", ROOT_PASSWORD, "sst_a") as capi:
        thread = int(capi.query("SELECT CONNECTION_ID()")[0][0])
        capi.change_user("sst_u", "sst-pw", "sst_b")
        assert capi.query("SELECT DATABASE(), CURRENT_USER()") == [("sst_b", "sst_u@%")]
        info = _conn_info(proxy, thread)
        assert (info["db"], info["user"]) == ("sst_b", "sst_u")


# ---- sessions open before a capture --------------------------------------------------------------
def test_state_of_a_session_open_before_the_capture(mariadb, proxy, tmp_path):
    """Database, session variables, user variables of each type, SQL PREPAREs, temporary tables, an
    open transaction, LAST_INSERT_ID(): in CONN_STATE. FOUND_ROWS() and SHOW WARNINGS asked right
    after the capture started still see the client's own values."""
    mariadb.sql("CREATE DATABASE IF NOT EXISTS sst_s; CREATE OR REPLACE TABLE sst_s.t "
                "(id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(20)) ENGINE=InnoDB")
    conn = pymysql.connect(**connect_kwargs(proxy.port), autocommit=True, charset="utf8mb4")
    cur = conn.cursor()
    thread = conn.thread_id()
    for sql in ["USE sst_s -- app", "SET SESSION sql_mode = 'ANSI_QUOTES,STRICT_ALL_TABLES'",
                "SET time_zone = '+05:30'", "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
                "SET @i = 42, @neg = -7, @d = 3.250, @r = 1.5e300, @n = NULL",
                "SET @s = _latin1 X'636166E9' COLLATE latin1_german1_ci, @u = 'Grüße 🙂', @b = _binary X'00FF10'",
                "PREPARE by_id FROM 'SELECT v FROM t WHERE id = ?'",
                "PREPARE gone FROM 'SELECT 1'", "DEALLOCATE PREPARE gone",
                "CREATE TEMPORARY TABLE tmp_ids (id INT)", "INSERT INTO tmp_ids VALUES (1), (2)",
                "CREATE TEMPORARY TABLE tmp_gone (id INT)", "DROP TEMPORARY TABLE tmp_gone",
                "INSERT INTO t (v) VALUES ('x'), ('y')", "INSERT INTO t (v) VALUES ('z')",
                "SET autocommit = 0", "SELECT * FROM t WHERE id = 1 FOR UPDATE"]:
        cur.execute(sql)
    cur.execute("SELECT SQL_CALC_FOUND_ROWS id FROM t LIMIT 1")
    last_id = conn.insert_id()
    cur.execute("SELECT LAST_INSERT_ID()")
    last_id = cur.fetchone()[0]
    cur.execute("SELECT SQL_CALC_FOUND_ROWS id FROM t LIMIT 1")
    cur.execute("SELECT CAST('x' AS INT)")  # leaves a warning

    out = tmp_path / "state"
    start_capture(proxy, out)
    cur.execute("SHOW WARNINGS")  # reads what the proxy's own query would reset: goes first
    assert [r[1] for r in cur.fetchall()] == [1292]
    cur.execute("SELECT 'first'")
    cur.execute("SELECT SQL_CALC_FOUND_ROWS id FROM t LIMIT 1")
    cur.execute("SELECT FOUND_ROWS()")
    assert cur.fetchone()[0] == 3
    cur.execute("COMMIT")
    job = cancel_capture(proxy)
    conn.close()

    _, records, _ = read_capture(out)
    recs = _by_conn(records)
    assert len(recs) == 1, recs
    (mine,) = recs.values()
    assert mine[0].kind == KIND_CONN_STATE, [r.kind for r in mine]
    # the state was read before the first command recorded after it, and after SHOW WARNINGS
    assert [r.payload for r in mine[1:3]] == [b"\x03SELECT 'first'", b"\x03SELECT SQL_CALC_FOUND_ROWS id FROM t LIMIT 1"]
    st = json.loads(mine[0].payload)
    assert st["db"] == "sst_s" and st["backend_conn_id"] == thread and st["user"] == "root"
    sv = st["session_vars"]
    assert sv["sql_mode"] == "ANSI_QUOTES,STRICT_ALL_TABLES"
    assert sv["time_zone"] == "+05:30"
    assert sv["tx_isolation"] == "READ-COMMITTED"
    assert sv["autocommit"] == "OFF"
    assert sv["last_insert_id"] == last_id > 0
    assert sv["character_set_client"] == "utf8mb4"
    uv = {u["name"]: u for u in st["user_vars"]}
    assert {k: (v["type"], v["value"]) for k, v in uv.items() if "value" in v} == {
        "i": ("INT", "42"), "neg": ("INT", "-7"), "d": ("DECIMAL", "3.250"), "r": ("DOUBLE", "1.5e300"),
        "n": ("VARCHAR", None)}
    assert (uv["s"]["hex"], uv["s"]["collation"]) == ("636166E9", "latin1_german1_ci")
    assert bytes.fromhex(uv["u"]["hex"]).decode() == "Grüße 🙂" and uv["u"]["collation"].startswith("utf8mb4")
    assert (uv["b"]["hex"], uv["b"]["collation"]) == ("00FF10", "binary")
    assert st["sql_prepared"] == [{"name": "by_id", "db": "sst_s", "sql": "PREPARE by_id FROM 'SELECT v FROM t WHERE id = ?'"}]
    assert st["temp_tables"] == [{"name": "tmp_ids", "db": "sst_s", "sql": "CREATE TEMPORARY TABLE tmp_ids (id INT)"}]
    assert st["in_transaction"] is True and st["transaction_read_only"] is False
    assert any("tmp_ids" in why for why in st["not_rebuilt"]), st
    assert job["sessions_not_rebuilt"] == 1 and "tmp_ids" in job["not_rebuilt"][0], job
    assert job["waited_for_transaction"] == 0  # its transaction had only locked, not written


def test_database_in_state_and_types_bound_by_a_failed_execute(mariadb, proxy, tmp_path):
    """CONN_STATE holds the database the server has (after `USE db -- comment`, which no regex took),
    and the parameter types of a statement whose binding execute failed (duplicate key)."""
    mariadb.sql("CREATE DATABASE IF NOT EXISTS sst_f; CREATE OR REPLACE TABLE sst_f.t (v BIGINT PRIMARY KEY)"
                "; INSERT INTO sst_f.t VALUES (1)")
    ps = ps_client(proxy.port, "root", ROOT_PASSWORD)
    assert ps.query("USE sst_f -- the app's comment").kind == "ok"
    sid = ps.prepare("INSERT INTO t VALUES (?)")
    payload = b"\x17" + struct.pack("<IBI", sid, 0, 1) + b"\x00" + b"\x01\x08\x00" + struct.pack("<q", 1)
    ps.send(packet(0, payload))
    assert ps._result().err_code == 1062  # the execute that bound the types failed
    out = tmp_path / "failed-exec"
    start_capture(proxy, out)
    assert ps.query("SELECT 1").kind == "rows"
    cancel_capture(proxy)
    ps.quit()
    _, records, _ = read_capture(out)
    st = json.loads(next(r for r in records if r.kind == KIND_CONN_STATE).payload)
    assert st["db"] == "sst_f"
    assert st["types"] == {str(sid): "0800"}, st


# ---- how connections ended -----------------------------------------------------------------------
def test_closes_say_who_closed(mariadb, proxy, tmp_path):
    out = tmp_path / "closes"
    start_capture(proxy, out)
    by_client = MySQLdb.connect(**connect_kwargs(proxy.port))
    by_client.cursor().execute("SELECT 1")
    by_client_thread = by_client.thread_id()
    by_client.close()
    timed_out = pymysql.connect(**connect_kwargs(proxy.port))
    timed_out.cursor().execute("SET SESSION wait_timeout = 1")
    killed = pymysql.connect(**connect_kwargs(proxy.port))
    killed.cursor().execute("SELECT 2")
    admin = pymysql.connect(**connect_kwargs(mariadb.port))
    admin.cursor().execute(f"KILL CONNECTION {killed.thread_id()}")
    admin.close()
    # the server closes both; the proxy sees its backend side go
    wait_for(lambda: len(proxy.get("/api/debug/connections")) == 0, 30, what="the server to close them")
    job = cancel_capture(proxy)
    assert job["error"] == ""
    _, records, _ = read_capture(out)
    closes = {}
    for recs in _by_conn(records).values():
        assert recs[0].kind == KIND_CONN_OPEN and recs[-1].kind == KIND_CONN_CLOSE
        opened = json.loads(recs[0].payload)
        closes[opened["backend_conn_id"]] = json.loads(recs[-1].payload)
    assert closes[by_client_thread] == {"by": "client"}
    assert closes[timed_out.thread_id()]["by"] == "server"
    assert closes[killed.thread_id()]["by"] == "server"  # MariaDB says nothing to an idle killed connection


def test_commands_in_flight_when_the_backend_died(mariadb_private, proxy_factory, tmp_path):
    proxy = proxy_factory([mariadb_private])
    out = tmp_path / "lost"
    start_capture(proxy, out)
    conn = pymysql.connect(**connect_kwargs(proxy.port))
    cur = conn.cursor()
    cur.execute("SELECT 'before'")
    t0 = time.monotonic()

    def kill_soon():
        wait_for(lambda: any(c["pending_commands"] for c in proxy.get("/api/debug/connections")), 20,
                 what="the sleep to be in flight")
        mariadb_private.kill()

    import threading

    killer = threading.Thread(target=kill_soon)
    killer.start()
    with pytest.raises(pymysql.err.OperationalError):
        cur.execute("SELECT SLEEP(60)")
    killer.join()
    assert time.monotonic() - t0 < 60
    # the client sees its socket closed before the proxy's control plane records the close: a capture
    # cancelled in between rightly records none, so wait until the proxy has let the connection go
    wait_for(lambda: not proxy.get("/api/debug/connections"), 20, what="the proxy to let the connection go")
    job = cancel_capture(proxy)
    assert job["error"] == ""
    _, records, _ = read_capture(out)
    cmds = [r for r in records if r.kind == KIND_COMMAND]
    sleep = [r for r in cmds if b"SLEEP(60)" in r.payload]
    assert len(sleep) == 1 and sleep[0].outcome == OUTCOME_BACKEND_LOST, sleep
    close = [json.loads(r.payload) for r in records if r.kind == KIND_CONN_CLOSE]
    assert close and close[0]["by"] == "server", close


# ---- LOAD DATA LOCAL INFILE ----------------------------------------------------------------------
@pytest.mark.parametrize("enabled", [True, False])
def test_local_infile_content_recorded(enabled, mariadb, proxy_factory, tmp_path):
    mariadb.sql("CREATE DATABASE IF NOT EXISTS sst_li; CREATE OR REPLACE TABLE sst_li.t (a INT, b VARCHAR(40))")
    args = ["--capture.local-infile=true", "--capture.local-infile-max-size=4KiB"] if enabled else []
    proxy = proxy_factory([mariadb], *args)
    small = tmp_path / "small.csv"
    small.write_bytes(b"1,one\n2,two\n3,three\n")
    large = tmp_path / "large.csv"
    large.write_bytes(b"".join(b"%d,row %d\n" % (i, i) for i in range(1000)))  # ~10 KiB: over the limit
    out = tmp_path / "cap"
    start_capture(proxy, out)
    conn = pymysql.connect(**connect_kwargs(proxy.port, database="sst_li"), local_infile=True, autocommit=True)
    cur = conn.cursor()
    cur.execute(f"LOAD DATA LOCAL INFILE '{small}' INTO TABLE t FIELDS TERMINATED BY ','")
    cur.execute(f"LOAD DATA LOCAL INFILE '{large}' INTO TABLE t FIELDS TERMINATED BY ','")
    cur.execute("SELECT COUNT(*) FROM t")
    assert cur.fetchone()[0] == 1003
    conn.close()
    job = cancel_capture(proxy)
    meta, records, _ = read_capture(out)
    from fastproxy.capture.record import INFILE_SIZE, KIND_LOCAL_INFILE

    infiles = [r for r in records if r.kind == KIND_LOCAL_INFILE]
    loads = [r for r in records if r.kind == KIND_COMMAND and b"LOAD DATA" in r.payload]
    assert len(loads) == 2
    if not enabled:
        assert infiles == [] and job["local_infile_files"] == 0
        return
    assert len(infiles) == 2
    for f, load in zip(infiles, loads):
        assert (f.conn_id, f.start_ns) == (load.conn_id, load.start_ns)
        # each file just before its command
        assert records.index(f) == records.index(load) - 1
    (size0,) = INFILE_SIZE.unpack_from(infiles[0].payload)
    assert (size0, infiles[0].payload[8:]) == (small.stat().st_size, small.read_bytes())
    (size1,) = INFILE_SIZE.unpack_from(infiles[1].payload)
    assert (size1, infiles[1].payload[8:]) == (large.stat().st_size, b"")  # too large: its size only
    assert (job["local_infile_files"], job["local_infile_bytes"], job["local_infile_too_large"]) == \
        (2, small.stat().st_size, 1)
    assert meta["local_infile_too_large"] == 1 and "LOCAL INFILE" in job["note"]


# ---- the proxy's own queries never mix with the client's bytes -----------------------------------
def _read_rows(raw) -> list[bytes]:
    """One text result set (no CLIENT_DEPRECATE_EOF): the first column of each row."""
    _, first = raw.read_packet()
    assert first[0] not in (0x00, 0xFF), first
    for _ in range(first[0]):
        raw.read_packet()  # column definitions
    assert raw.read_packet()[1][0] == 0xFE  # EOF after them
    rows = []
    while True:
        _, p = raw.read_packet()
        if p[0] == 0xFE and len(p) < 9:
            return rows
        rows.append(p[1:1 + p[0]])


def test_pipelined_commands_at_capture_start_keep_their_answers(mariadb, proxy, tmp_path):
    """A client that sends two queries in one write just as the capture starts: the proxy's own
    query goes before both, and each query gets its own answer, in order."""
    from proxy_rawclient import RawClient

    raw = RawClient(proxy.port)
    raw.login("root", ROOT_PASSWORD)
    raw.send(packet(0, b"\x03SELECT 'warm'"))
    assert _read_rows(raw) == [b"warm"]
    out = tmp_path / "pipelined"
    start_capture(proxy, out)
    raw.send(packet(0, b"\x03SELECT 'one'") + packet(0, b"\x03SELECT 'two'"))
    assert _read_rows(raw) == [b"one"]
    assert _read_rows(raw) == [b"two"]
    raw.send(packet(0, b"\x03SELECT 'three'"))
    assert _read_rows(raw) == [b"three"]
    cancel_capture(proxy)
    raw.close()
    _, records, _ = read_capture(out)
    assert [r.kind for r in records][:4] == [KIND_CONN_STATE, KIND_COMMAND, KIND_COMMAND, KIND_COMMAND]
    assert [r.payload for r in records[1:4]] == [b"\x03SELECT 'one'", b"\x03SELECT 'two'", b"\x03SELECT 'three'"]


def test_busy_connections_at_capture_start(mariadb, proxy, tmp_path):
    """Connections running queries back to back while the capture starts: every answer is the
    client's own, every connection gets its CONN_STATE before its first captured command."""
    import threading

    conns = [pymysql.connect(**connect_kwargs(proxy.port), autocommit=True) for _ in range(8)]
    stop = threading.Event()
    errors: list = []
    counts = [0] * len(conns)

    def run(i: int) -> None:
        cur = conns[i].cursor()
        try:
            while not stop.is_set():
                k = counts[i]
                cur.execute(f"SELECT {i}, {k}, REPEAT('x', {k % 50})")
                if cur.fetchall() != ((i, k, "x" * (k % 50)),):
                    errors.append((i, k))
                counts[i] += 1
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(conns))]
    for t in threads:
        t.start()
    wait_for(lambda: min(counts) > 20, 30, what="the load")
    out = tmp_path / "busy"
    start_capture(proxy, out)
    before = list(counts)
    wait_for(lambda: all(c > b + 20 for c, b in zip(counts, before)), 30, what="queries during the capture")
    job = cancel_capture(proxy)
    stop.set()
    for t in threads:
        t.join()
    for c in conns:
        c.close()
    assert not errors, errors[:5]
    assert job["existing_connections"] == len(conns) and job["error"] == "", job
    _, records, _ = read_capture(out)
    recs = _by_conn(records)
    assert len(recs) == len(conns)
    for rs in recs.values():
        assert rs[0].kind == KIND_CONN_STATE and all(r.kind == KIND_COMMAND for r in rs[1:])
        ks = [int(r.payload.split(b", ")[1]) for r in rs[1:]]
        assert ks == list(range(ks[0], ks[0] + len(ks)))  # no command lost or doubled
