"""Capture-side filters (fastproxy/traffic_filter.py, as replay's): real clients through a real proxy,
the same client session captured without and with a filter; the filtered capture holds exactly the
unfiltered one's records minus those the filter's rule drops, and `show` and `meta` count them."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import MySQLdb
import pytest

from capture_rawclient import ps_client
from capture_util import cancel_capture, read_capture, start_capture
from conftest import start_proxy, stop_proxy
from fastproxy._digest import digest
from fastproxy.capture.record import KIND_COMMAND, KIND_CONN_CLOSE, KIND_CONN_OPEN
from fastproxy.constants import COMMAND
from fastproxy.scratch_db import ROOT_PASSWORD
from proxy_util import health, wait_for

USER, USER_PASSWORD = "cf_user", "cf-secret-9"


@pytest.fixture(scope="module")
def proxy(mariadb):
    mariadb.sql("DROP DATABASE IF EXISTS cf_a; DROP DATABASE IF EXISTS cf_b; CREATE DATABASE cf_a; "
                "CREATE DATABASE cf_b; CREATE TABLE cf_a.t (x INT); CREATE TABLE cf_b.t (x INT); "
                f"DROP USER IF EXISTS '{USER}'@'%'; CREATE USER '{USER}'@'%' IDENTIFIED BY '{USER_PASSWORD}'; "
                f"GRANT ALL ON cf_a.* TO '{USER}'@'%'; GRANT ALL ON cf_b.* TO '{USER}'@'%';")
    p = start_proxy([mariadb])
    yield p
    stop_proxy(p)


def _root(port: int, db: str = "cf_a"):
    return MySQLdb.connect(host="127.0.0.1", port=port, user="root", password=ROOT_PASSWORD, db=db, autocommit=True)


def _session(port: int) -> None:
    """One application session: reads and writes in two databases, session statements, DDL; and
    server-side prepared statements (COM_STMT_PREPARE / EXECUTE / CLOSE) on a second connection."""
    c = _root(port)
    cur = c.cursor()
    for sql in ("SELECT x FROM t WHERE x = 1", "INSERT INTO t VALUES (1)", "SET @v = 5", "USE cf_b",
                "INSERT INTO t VALUES (2)", "SELECT COUNT(*) FROM t", "USE cf_a", "UPDATE t SET x = x + 1",
                "CREATE TABLE IF NOT EXISTS t2 (y INT)", "SELECT x FROM t WHERE x = 7"):
        cur.execute(sql)
        cur.fetchall()
    c.close()
    ps = ps_client(port, "root", ROOT_PASSWORD)
    ps.query("USE cf_a")
    read, write = ps.prepare("SELECT x FROM t WHERE x > 0"), ps.prepare("INSERT INTO t VALUES (9)")
    for sid in (read, read, write):
        assert ps.execute(sid).kind != "err"
    ps.close_stmt(read)
    ps.close_stmt(write)
    ps.quit()


def _capture(proxy, out, work, **filters) -> tuple[dict, list, dict]:
    start_capture(proxy, out, **filters)
    work(proxy.port)
    # the clients have returned, but their last commands (closes with no answer, the quit) may still
    # be on their way through a data-plane worker: the capture stops once the proxy has them all
    wait_for(lambda: health(proxy)["connections"] == 0, what="the session's connections to be closed")
    job = cancel_capture(proxy)
    assert not job["error"], job
    meta, records, _ = read_capture(out)
    return meta, records, job


def _text(rec, prepared: dict | None = None) -> str:
    """What a record is, e.g. "03 SELECT 1" (command byte, SQL); a statement command shows the
    SQL of its prepare."""
    p = rec.payload
    if rec.kind != KIND_COMMAND:
        return {KIND_CONN_OPEN: "open", KIND_CONN_CLOSE: "close"}.get(rec.kind, str(rec.kind))
    if p[0] in (COMMAND.COM_QUERY, COMMAND.COM_STMT_PREPARE, COMMAND.COM_INIT_DB):
        if p[0] == COMMAND.COM_STMT_PREPARE and prepared is not None:
            prepared[(rec.conn_id, rec.affected_rows)] = p[1:].decode()
        return f"{p[0]:02x} {p[1:].decode()}"
    if p[0] in (COMMAND.COM_STMT_EXECUTE, COMMAND.COM_STMT_CLOSE, COMMAND.COM_STMT_RESET) and prepared is not None:
        return f"{p[0]:02x} {prepared.get((rec.conn_id, int.from_bytes(p[1:5], 'little')), '?')}"
    return f"{p[0]:02x}"


def _shape(records) -> list[tuple[int, str]]:
    """(connection's order of appearance, what) for each record, connection by connection, each in
    its own order: comparable between two captures. (Across connections the order may differ: a
    connection's close is recorded when Python hears of it from its data-plane worker, which can be
    after the next connection opened.)"""
    order: dict[int, int] = {}
    prepared: dict = {}
    return sorted(((order.setdefault(r.conn_id, len(order)), _text(r, prepared)) for r in records),
                  key=lambda item: item[0])


@pytest.fixture(scope="module")
def unfiltered(proxy, tmp_path_factory):
    _, records, job = _capture(proxy, tmp_path_factory.mktemp("cf") / "all", _session)
    assert "filters" not in job and "filtered_by" not in job
    return _shape(records)


READ_PS = ("16 SELECT x FROM t WHERE x > 0", "17 SELECT x FROM t WHERE x > 0", "19 SELECT x FROM t WHERE x > 0")
WRITE_PS = ("16 INSERT INTO t VALUES (9)", "17 INSERT INTO t VALUES (9)", "19 INSERT INTO t VALUES (9)")


@pytest.mark.parametrize("form, dropped, counts", [
    # the schema is the current database: USE and SET stay (they shape the session), cf_b's statements go
    (dict(schema="cf_a"), {"03 INSERT INTO t VALUES (2)", "03 SELECT COUNT(*) FROM t"}, {"schema": 2}),
    # reads and DDL go, writes and the session stay; a dropped prepare takes its executes and close along
    (dict(**{"class": "write"}), {"03 SELECT x FROM t WHERE x = 1", "03 SELECT COUNT(*) FROM t",
                                  "03 SELECT x FROM t WHERE x = 7", "03 CREATE TABLE IF NOT EXISTS t2 (y INT)",
                                  *READ_PS}, {"class": 5, "prepare dropped": 3}),
    # one statement shape (its digest: any literal) is left out
    (dict(**{"exclude-digest": digest("SELECT x FROM t WHERE x = 1")}),
     {"03 SELECT x FROM t WHERE x = 1", "03 SELECT x FROM t WHERE x = 7"}, {"exclude-digest": 2}),
    # only that shape (and the session)
    (dict(digest=digest("SELECT x FROM t WHERE x = 1")),
     {"03 INSERT INTO t VALUES (1)", "03 INSERT INTO t VALUES (2)", "03 SELECT COUNT(*) FROM t",
      "03 UPDATE t SET x = x + 1", "03 CREATE TABLE IF NOT EXISTS t2 (y INT)", *READ_PS, *WRITE_PS},
     {"digest": 7, "prepare dropped": 5}),
    # only text-protocol queries: executes go (prepares and closes stay: they shape the session)
    (dict(**{"cmd-type": "Query"}), {"17 SELECT x FROM t WHERE x > 0", "17 INSERT INTO t VALUES (9)"},
     {"cmd-type": 3}),
])
def test_each_filter_keeps_exactly_the_expected_commands(proxy, unfiltered, tmp_path, form, dropped, counts):
    meta, records, job = _capture(proxy, tmp_path / "f", _session, **form)
    expected = [(c, w) for c, w in unfiltered if w not in dropped]
    assert _shape(records) == expected
    assert meta["filtered_by"] == counts and sum(counts.values()) == len(unfiltered) - len(expected)
    assert meta["filtered_by"] == job["filtered_by"]  # show says the same
    assert meta["filters"] == job["filters"] and meta["filters"]
    assert meta["commands"] == sum(1 for r in records if r.kind == KIND_COMMAND)


def _two_users(port: int) -> None:
    a = _root(port)
    b = MySQLdb.connect(host="127.0.0.1", port=port, user=USER, password=USER_PASSWORD, db="cf_b", autocommit=True)
    for c, sql in ((a, "SELECT 'root'"), (b, "SELECT 'user'"), (a, "INSERT INTO t VALUES (10)"),
                   (b, "INSERT INTO t VALUES (20)")):
        cur = c.cursor()
        cur.execute(sql)
        cur.fetchall()
    a.close()
    b.close()


def test_user_filter_drops_whole_connections(proxy, tmp_path):
    _, everything, _ = _capture(proxy, tmp_path / "all", _two_users)
    meta, records, job = _capture(proxy, tmp_path / "user", _two_users, **{"only-user": USER})
    opens = [json.loads(r.payload) for r in records if r.kind == KIND_CONN_OPEN]
    assert [o["user"] for o in opens] == [USER]
    assert len({r.conn_id for r in records}) == 1
    kept = [_text(r) for r in records]
    assert kept[0] == "open" and kept[-1] == "close"
    assert "03 SELECT 'user'" in kept and "03 INSERT INTO t VALUES (20)" in kept
    assert not any("root" in w or "(10)" in w for w in kept)
    root_commands = sum(1 for r in everything if r.kind == KIND_COMMAND) - sum(1 for r in records
                                                                               if r.kind == KIND_COMMAND)
    assert meta["filtered_by"] == {"user (connections)": 1, "user": root_commands}
    assert job["connections"] == 1 and meta["connections"] == 1


def _many(port: int) -> None:
    for i in range(12):
        c = _root(port)
        cur = c.cursor()
        cur.execute("SELECT %s", (i,))
        cur.fetchall()
        c.close()


def test_sample_keeps_whole_connections(proxy, tmp_path):
    meta, records, job = _capture(proxy, tmp_path / "s", _many, sample="50%")
    by_conn: dict[int, list[str]] = {}
    for r in records:
        by_conn.setdefault(r.conn_id, []).append(_text(r))
    for texts in by_conn.values():  # whole: its open, its statement and its close
        assert texts[0] == "open" and texts[-1] == "close" and sum(w.startswith("03 SELECT ") for w in texts) == 1
    dropped = meta["filtered_by"].get("sample (connections)", 0)
    assert len(by_conn) + dropped == 12 and 0 < len(by_conn) < 12  # 12 draws at 50%: both sides are 1 - 2**-11
    assert meta["filters"] == {"sample": 0.5}


def test_bad_filter_is_refused_before_the_capture_starts(proxy, tmp_path):
    status, body = proxy.post("/api/traffic/capture", {"output": str(tmp_path / "x"), "duration": "10s",
                                                       "class": "reads"})
    assert status == 400 and "class: expected read, write, ddl, other" in body, body
    status, body = proxy.post("/api/traffic/capture", {"output": str(tmp_path / "x"), "duration": "10s",
                                                       "shard": "0/2"})
    assert status == 400 and "shard" in body, body  # a replay-only filter
    assert not os.path.exists(tmp_path / "x" / "meta")


def test_traffic_capture_cli_passes_the_filters(proxy, tmp_path):
    out = str(tmp_path / "cli")
    res = subprocess.run([sys.executable, "-m", "fastproxy", "traffic", "capture", "--curls", proxy.api,
                          "--output", out, "--duration", "1m", "--schema", "cf_b"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    _session(proxy.port)
    cancel_capture(proxy)
    meta, records, _ = read_capture(out)
    assert meta["filters"] == {"schemas": ["cf_b"]}
    texts = [_text(r) for r in records if r.kind == KIND_COMMAND]
    assert "03 INSERT INTO t VALUES (2)" in texts and "03 INSERT INTO t VALUES (1)" not in texts


def test_capture_does_not_import_replay():
    code = ("import sys, fastproxy.capture.job, fastproxy.traffic_filter; "
            "print([m for m in sys.modules if m.startswith('fastproxy.replay')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
