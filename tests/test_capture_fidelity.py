"""Capture fidelity against a real MariaDB: what the files hold is exactly what the server executed.

Every test drives real clients (sysbench, mysqlclient, libmariadb, a raw-protocol client) through a
real `fastproxy serve` and reads the capture back with TrafficReader.
"""
from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import time
from collections import Counter, defaultdict

import MySQLdb
import pytest

from capture_rawclient import ps_client
from capture_util import (cancel_capture, cmd, count_commands, global_status, read_capture,
                          start_capture, wait_for_capture_end)
from clients_capi import CapiConnection
from conftest import connect_kwargs
from fastproxy.capture.reader import list_traffic_files
from fastproxy.capture.record import (KIND_COMMAND, KIND_CONN_CLOSE, KIND_CONN_OPEN, KIND_CONN_STATE,
                                      OUTCOME_ERR, OUTCOME_OK)
from fastproxy.scratch_db import ROOT_PASSWORD

pytestmark = pytest.mark.timeout(120)


def _admin(mariadb):
    c = MySQLdb.connect(**connect_kwargs(mariadb.port), autocommit=True)
    return c, c.cursor()


def _by_conn(records):
    out = defaultdict(list)
    for r in records:
        out[r.conn_id].append(r)
    return out


def _stmt_id(rec) -> int:
    return int.from_bytes(rec.payload[1:5], "little")


# ---- 1. sysbench: captured commands == what the server executed ---------------------------------
def _sysbench(port: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sysbench", "oltp_read_write", "--db-driver=mysql", "--mysql-host=127.0.0.1", f"--mysql-port={port}",
         "--mysql-user=root", f"--mysql-password={ROOT_PASSWORD}", "--mysql-db=capfid_sb", "--tables=2",
         "--table-size=1000", *args], capture_output=True, text=True, timeout=90)


def test_sysbench_capture_matches_server_counters(mariadb, proxy_factory, tmp_path):
    admin, cur = _admin(mariadb)
    cur.execute("DROP DATABASE IF EXISTS capfid_sb")
    cur.execute("CREATE DATABASE capfid_sb")
    prep = _sysbench(mariadb.port, "prepare")
    assert prep.returncode == 0, prep.stderr
    proxy = proxy_factory([mariadb])
    out = tmp_path / "sb"

    # Nothing else talks to the server in between: the proxy's health checks only read greetings,
    # and this admin connection's own SHOW is the one extra question.
    before = global_status(cur)
    start_capture(proxy, out, "120s")  # longer than the run: canceled below
    run = _sysbench(proxy.port, "--threads=16", "--time=4", "run")
    assert run.returncode == 0, run.stdout + run.stderr
    # sysbench's last COM_STMT_CLOSEs and COM_QUITs have no answer: the server may still be running
    # them when sysbench exits. Its sessions gone, the counters are final (each poll is one Question)
    polls = 0
    while True:
        polls += 1
        cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = 'capfid_sb'")
        if cur.fetchone()[0] == 0 or polls > 600:
            break
        time.sleep(0.05)
    after = global_status(cur)
    job = cancel_capture(proxy)
    admin.close()
    assert job["status"] == "canceled" and job["error"] == "", job

    delta = {k: after[k] - before.get(k, 0) for k in after}
    meta, records, _ = read_capture(out)
    cmds = count_commands(records)
    kinds = Counter(r.kind for r in records)

    assert cmds["COM_STMT_PREPARE"] == delta["Com_stmt_prepare"] > 0
    assert cmds["COM_STMT_EXECUTE"] == delta["Com_stmt_execute"] > 0
    assert cmds["COM_STMT_CLOSE"] == delta["Com_stmt_close"]
    # Questions counts every client command except prepare/close (and includes COM_QUIT), plus the
    # admin connection's second SHOW GLOBAL STATUS.
    assert sum(n for c, n in cmds.items() if c not in ("COM_STMT_PREPARE", "COM_STMT_CLOSE")) == \
        delta["Questions"] - 1 - polls

    # sysbench's own count: queries it counted + the ones that failed with an ignored error (deadlocks)
    total = int(re.search(r"^\s*total:\s+(\d+)", run.stdout, re.M).group(1))
    ignored = int(re.search(r"ignored errors:\s+(\d+)", run.stdout).group(1))
    assert cmds["COM_STMT_EXECUTE"] == total + ignored
    executes = [r for r in records if cmd(r) == "COM_STMT_EXECUTE"]
    assert sum(r.outcome == OUTCOME_ERR for r in executes) == ignored
    assert all(r.outcome in (OUTCOME_OK, OUTCOME_ERR) for r in executes)

    # one CONN_OPEN, one COM_QUIT, one CONN_CLOSE per sysbench thread; every commands counted in meta
    assert kinds[KIND_CONN_OPEN] == kinds[KIND_CONN_CLOSE] == cmds["COM_QUIT"] >= 16
    assert kinds[KIND_CONN_STATE] == 0
    assert meta["commands"] == job["commands"] == kinds[KIND_COMMAND]
    assert meta["records"] == len(records)
    assert meta["connections"] == job["connections"] == kinds[KIND_CONN_OPEN]

    not_increasing = Counter()
    for conn_id, recs in _by_conn(records).items():
        assert recs[0].kind == KIND_CONN_OPEN and recs[-1].kind == KIND_CONN_CLOSE, conn_id
        prepared = set()
        for r in recs:
            if cmd(r) == "COM_STMT_PREPARE" and r.outcome == OUTCOME_OK:
                prepared.add(r.affected_rows)  # a prepare's affected_rows field carries its stmt id
            elif cmd(r) in ("COM_STMT_EXECUTE", "COM_STMT_CLOSE"):
                assert _stmt_id(r) in prepared, f"conn {conn_id}: {cmd(r)} of a statement never prepared"
        cmd_recs = [r for r in recs if r.kind == KIND_COMMAND]
        for prev, r in zip(cmd_recs, cmd_recs[1:]):
            if r.start_ns <= prev.start_ns:
                not_increasing[f"{cmd(prev)} -> {cmd(r)}"] += 1
    # no record duplicated or reordered: per connection, start times strictly increase
    assert not not_increasing, f"per-connection start times not strictly increasing: {dict(not_increasing)}"
    # across connections (and data-plane workers), command records are in completion order: replay's
    # causal ordering reads them so
    ends = [r.end_ns for r in records if r.kind == KIND_COMMAND]
    assert all(a <= b for a, b in zip(ends, ends[1:])), "command records not in completion order"


# ---- 2. connections open before the capture ----------------------------------------------------
def test_existing_connections_state_recorded(mariadb, proxy_factory, tmp_path):
    admin, cur = _admin(mariadb)
    cur.execute("DROP DATABASE IF EXISTS capfid_ex")
    cur.execute("CREATE DATABASE capfid_ex")
    cur.execute("CREATE TABLE capfid_ex.t (id INT PRIMARY KEY, v INT) ENGINE=InnoDB")
    cur.execute("INSERT INTO capfid_ex.t VALUES (1, 10), (2, 20), (3, 30)")
    admin.close()
    proxy = proxy_factory([mariadb])

    # A: mysqlclient, database chosen with select_db (COM_INIT_DB)
    a = MySQLdb.connect(**connect_kwargs(proxy.port), autocommit=True)
    a.select_db("capfid_ex")
    a_thread = a.thread_id()  # the server's thread id: the proxy relays the greeting as it is
    # B: server-side prepared statements kept open; one closed again before the capture
    b = ps_client(proxy.port, "root", ROOT_PASSWORD)
    assert b.query("USE capfid_ex").kind == "ok"
    sql1, sql2, sql3 = "SELECT v FROM t WHERE id = 1", "SELECT COUNT(*) FROM t", "SELECT v FROM t WHERE id = 2"
    s1 = b.prepare(sql1)
    assert b.execute(s1).rows == 1
    s2 = b.prepare(sql2)
    s3 = b.prepare(sql3)
    b.close_stmt(s3)
    assert b.query("SELECT 1").rows == 1  # the close (no response) has passed the proxy
    # C: inside an open transaction when the capture starts
    c = MySQLdb.connect(**connect_kwargs(proxy.port, db="capfid_ex"), autocommit=False)
    ccur = c.cursor()
    ccur.execute("UPDATE t SET v = v + 1 WHERE id = 1")
    # D: inside a transaction at the start too, one that has not written: rebuilt on replay, so
    # captured from its next command, with its transaction in the state
    d = MySQLdb.connect(**connect_kwargs(proxy.port, db="capfid_ex"), autocommit=False)
    d.cursor().execute("SELECT v FROM t WHERE id = 2 FOR UPDATE")

    out = tmp_path / "existing"
    start_capture(proxy, out)
    acur = a.cursor()
    acur.execute("SELECT COUNT(*) FROM t")
    assert acur.fetchall() == ((3,),)
    assert b.execute(s1).rows == 1
    assert b.execute(s2).rows == 1
    ccur.execute("UPDATE t SET v = v + 1 WHERE id = 3 /* in the old transaction */")
    c.commit()
    d.cursor().execute("SELECT 'inside the old transaction of D'")
    d.close()
    ccur.execute("SELECT v FROM t WHERE id = 3")
    assert ccur.fetchall() == ((31,),)
    c.commit()
    job = cancel_capture(proxy)
    for conn in (a, c):
        conn.close()
    b.quit()

    assert job["existing_connections"] == 4
    assert job["waited_for_transaction"] == 1  # C: its transaction had written before the capture
    assert "transaction" in job.get("note", ""), job
    meta, records, _ = read_capture(out)
    assert meta["waited_for_transaction"] == job["waited_for_transaction"]

    conns = _by_conn(records)
    # every captured connection starts with its state
    assert len(conns) == 4 and all(recs[0].kind == KIND_CONN_STATE for recs in conns.values()), \
        {cid: [r.kind for r in recs] for cid, recs in conns.items()}

    def conn_with(pred):
        found = [cid for cid, recs in conns.items() if any(r.kind == KIND_COMMAND and pred(r) for r in recs)]
        assert len(found) == 1, found
        return conns[found[0]]

    def state_then_commands(recs):
        assert recs[0].kind == KIND_CONN_STATE, [r.kind for r in recs]
        assert all(r.kind == KIND_COMMAND for r in recs[1:])
        return json.loads(recs[0].payload), recs[1:]

    # D: its open transaction (no writes) is in the state, its command after it, then its close
    recs_d = conn_with(lambda r: b"old transaction of D" in r.payload)
    st = json.loads(recs_d[0].payload)
    assert recs_d[0].kind == KIND_CONN_STATE and st["in_transaction"] is True and st["db"] == "capfid_ex"
    assert st["session_vars"].get("autocommit") == "OFF", st["session_vars"]
    assert [r.kind for r in recs_d[1:]] == [KIND_COMMAND, KIND_COMMAND, KIND_CONN_CLOSE]  # select, quit
    assert json.loads(recs_d[-1].payload) == {"by": "client"}

    # A
    st, cmds_a = state_then_commands(conn_with(lambda r: r.payload == b"\x03SELECT COUNT(*) FROM t"))
    assert (st["user"], st["db"], st["prepared"]) == ("root", "capfid_ex", [])
    assert st["backend_conn_id"] == a_thread and st["in_transaction"] is False
    assert [r.payload for r in cmds_a] == [b"\x03SELECT COUNT(*) FROM t"]
    # B: the live statements, and only those (s3 was closed before the capture)
    st, cmds_b = state_then_commands(conn_with(lambda r: cmd(r) == "COM_STMT_EXECUTE"))
    assert st["db"] == "capfid_ex"
    assert [cmd(r) for r in cmds_b] == ["COM_STMT_EXECUTE", "COM_STMT_EXECUTE"]
    assert [_stmt_id(r) for r in cmds_b] == [s1, s2]
    assert sorted(map(tuple, st["prepared"])) == [(s1, sql1), (s2, sql2)], \
        f"CONN_STATE prepared statements: {st['prepared']} (stmt {s3} was closed before the capture)"
    # C: nothing of the open transaction, captured from its COMMIT on
    recs_c = conn_with(lambda r: r.payload == b"\x03SELECT v FROM t WHERE id = 3")
    assert not any(b"UPDATE" in r.payload for r in recs_c if r.kind == KIND_COMMAND)
    st, cmds_c = state_then_commands(recs_c)
    assert st["db"] == "capfid_ex"
    assert cmds_c[0].payload == b"\x03SELECT v FROM t WHERE id = 3"


# ---- 3. secrets never reach the files -----------------------------------------------------------
SECRETS = {"create": "Pw-create-7d1f", "alter": "Pw-alter-52aa", "setpw": "Pw-setpw-0c3e",
           "grant": "Pw-grant-91b2", "prepared": "Pw-prepared-e4d0", "immediate": "Pw-immediate-3b7c",
           "sqlprepare": "Pw-sqlprepare-a5e9", "versioned": "Pw-versioned-66c1", "setstmt": "Pw-setstmt-2f90"}


def test_secrets_filtered(mariadb, proxy_factory, tmp_path):
    admin, cur = _admin(mariadb)
    cur.execute("DROP USER IF EXISTS 'capsec'@'%'")
    admin.close()
    proxy = proxy_factory([mariadb])
    out = tmp_path / "secrets"
    start_capture(proxy, out, compress="false")  # uncompressed: a leaked password would be greppable as is

    conn = MySQLdb.connect(**connect_kwargs(proxy.port), autocommit=True)
    cur = conn.cursor()
    cur.execute("SELECT 'before secrets'")
    cur.execute(f"CREATE USER 'capsec'@'%' IDENTIFIED BY '{SECRETS['create']}'")
    cur.execute(f"ALTER USER 'capsec'@'%' IDENTIFIED BY '{SECRETS['alter']}'")
    cur.execute(f"/* app */ SET PASSWORD FOR 'capsec'@'%' = PASSWORD('{SECRETS['setpw']}')")
    cur.execute(f"GRANT SELECT ON *.* TO 'capsec'@'%' IDENTIFIED BY '{SECRETS['grant']}'")
    # forms the server runs although they do not start with the keyword
    cur.execute(f"/*!100000 ALTER USER 'capsec'@'%' IDENTIFIED BY '{SECRETS['versioned']}' */")
    cur.execute(f"SET STATEMENT max_statement_time=10 FOR ALTER USER 'capsec'@'%' IDENTIFIED BY '{SECRETS['setstmt']}'")
    # SQL-level: the statement is a string inside another statement
    alter = "ALTER USER ''capsec''@''%'' IDENTIFIED BY ''{}''"
    cur.execute("EXECUTE IMMEDIATE '" + alter.format(SECRETS["immediate"]) + "'")
    cur.execute("PREPARE s FROM '" + alter.format(SECRETS["sqlprepare"]) + "'")
    cur.execute("EXECUTE s")
    cur.execute("DEALLOCATE PREPARE s")
    cur.execute("SELECT 'after secrets'")
    conn.close()
    # as a server-side prepared statement: the prepare is recorded redacted, its execute and close as they are
    raw = ps_client(proxy.port, "root", ROOT_PASSWORD)
    sid = raw.prepare(f"ALTER USER 'capsec'@'%' IDENTIFIED BY '{SECRETS['prepared']}'")
    assert raw.execute(sid).kind == "ok"
    raw.close_stmt(sid)
    assert raw.query("SELECT 'prepared done'").rows == 1
    raw.quit()
    # COM_CHANGE_USER through libmariadb: recorded, without its auth response
    with CapiConnection("127.0.0.1", proxy.port, "root", ROOT_PASSWORD) as capi:
        capi.change_user("capsec", SECRETS["prepared"], None)
        assert capi.query("SELECT CURRENT_USER()") == [("capsec@%",)]

    job = cancel_capture(proxy)
    # dropped: the SQL-level PREPARE and EXECUTE IMMEDIATE (a secret inside a string), and the
    # EXECUTE / DEALLOCATE of the dropped PREPARE (replayed, they could only fail); redacted and
    # kept: the six statements and the COM_STMT_PREPARE (with its execute and close)
    assert (job["filtered_commands"], job["redacted_commands"]) == (4, 7), job
    meta, records, _ = read_capture(out)
    assert (meta["filtered_commands"], meta["redacted_commands"]) == (4, 7)

    blobs = [open(os.path.join(out, name), "rb").read() for name in os.listdir(out)]
    blobs += [r.payload for r in records]
    for what, pw in SECRETS.items():
        assert not any(pw.encode() in blob for blob in blobs), f"the {what} password is in the capture"
    queries = [r.payload[1:] for r in records if cmd(r) == "COM_QUERY"]
    assert b"SELECT 'before secrets'" in queries and b"SELECT 'after secrets'" in queries
    assert b"SELECT 'prepared done'" in queries
    redacted = b"'__fastproxy_redacted__'"
    assert b"CREATE USER 'capsec'@'%' IDENTIFIED BY " + redacted in queries
    assert b"ALTER USER 'capsec'@'%' IDENTIFIED BY " + redacted in queries
    assert b"/* app */ SET PASSWORD FOR 'capsec'@'%' = PASSWORD(" + redacted + b")" in queries
    assert b"GRANT SELECT ON *.* TO 'capsec'@'%' IDENTIFIED BY " + redacted in queries
    assert b"/*!100000 ALTER USER 'capsec'@'%' IDENTIFIED BY " + redacted + b" */" in queries
    assert (b"SET STATEMENT max_statement_time=10 FOR ALTER USER 'capsec'@'%' IDENTIFIED BY " + redacted
            in queries)
    assert not any(q.startswith((b"EXECUTE", b"PREPARE", b"DEALLOCATE")) for q in queries), queries
    stmt_cmds = [r for r in records if cmd(r) in ("COM_STMT_PREPARE", "COM_STMT_EXECUTE", "COM_STMT_CLOSE")]
    assert [cmd(r) for r in stmt_cmds] == ["COM_STMT_PREPARE", "COM_STMT_EXECUTE", "COM_STMT_CLOSE"]
    assert stmt_cmds[0].payload[1:] == b"ALTER USER 'capsec'@'%' IDENTIFIED BY " + redacted

    changes = [r for r in records if cmd(r) == "COM_CHANGE_USER"]
    assert len(changes) == 1 and changes[0].outcome == OUTCOME_OK
    payload = changes[0].payload
    assert payload.startswith(b"\x11capsec\x00")
    assert payload[len(b"\x11capsec\x00")] == 0, "COM_CHANGE_USER recorded with its auth response"
    assert meta["commands"] == sum(r.kind == KIND_COMMAND for r in records)


# ---- 4. rotation and meta ------------------------------------------------------------------------
def test_rotation_meta_and_modes(mariadb, proxy_factory, tmp_path):
    proxy = proxy_factory([mariadb], "--capture.file-size=64KiB")
    early = MySQLdb.connect(**connect_kwargs(proxy.port), autocommit=True)  # -> CONN_STATE
    early.cursor().execute("SELECT 1")
    out = tmp_path / "rot"
    start_capture(proxy, out, "4s")
    late = MySQLdb.connect(**connect_kwargs(proxy.port), autocommit=True)  # -> CONN_OPEN ... CONN_CLOSE
    n = 0
    for conn in (early, late):
        cur = conn.cursor()
        for i in range(1200):
            # little to compress: the files must really grow past 64 KiB a few times
            cur.execute(f"SELECT '{os.urandom(48).hex()}', {i}")
            n += 1
    cur.execute("SELECT VERSION()")
    version = cur.fetchone()[0]
    late.close()
    job = wait_for_capture_end(proxy)  # by duration
    early.close()
    assert job["status"] == "done" and job["error"] == "" and job["progress"] == "100%", job

    meta, records, reader = read_capture(out)
    files = list_traffic_files(out)
    assert len(files) >= 3, files
    assert meta["files"] == files == reader.files
    sizes = [os.path.getsize(os.path.join(out, f)) for f in files]
    assert all(s >= 64 * 1024 for s in sizes[:-1]), sizes  # rotated only once past file-size
    assert meta["bytes_written"] == sum(sizes) == job["bytes_written"]

    kinds = Counter(r.kind for r in records)
    events = kinds[KIND_CONN_OPEN] + kinds[KIND_CONN_STATE] + kinds[KIND_CONN_CLOSE]
    assert len(records) == meta["records"] == meta["commands"] + events
    assert (kinds[KIND_CONN_STATE], kinds[KIND_CONN_OPEN], kinds[KIND_CONN_CLOSE]) == (1, 1, 1)
    assert meta["commands"] == job["commands"] == kinds[KIND_COMMAND] >= n + 2
    # records come out in order across files: per connection, the i of `SELECT '..', i` counts up
    for recs in _by_conn(records).values():
        seq = [int(m.group(1)) for r in recs if (m := re.search(rb", (\d+)$", r.payload))]
        assert seq == list(range(1200)), seq[:5]

    assert meta["format_version"] == 2
    assert meta["start"] < meta["end"] and meta["duration"] >= 4
    assert meta["filtered_commands"] == 0
    assert meta["connections"] == 2
    assert meta["compress"] is True and meta["compression"] == "lz4"
    assert meta["encryption_method"] == "" and meta["encryption"] == "none"
    assert meta["server_version"].endswith(version) or version in meta["server_version"], \
        (meta["server_version"], version)
    assert "error" not in meta

    assert stat.S_IMODE(os.stat(out).st_mode) == 0o700
    for name in os.listdir(out):
        assert stat.S_IMODE(os.stat(os.path.join(out, name)).st_mode) == 0o600, name
