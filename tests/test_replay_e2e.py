"""Replay reproduces order and state: a multi-connection workload (text queries, server-side prepared
statements, explicit transactions with COMMIT and ROLLBACK, order-dependent writes) captured from
production through the proxy and replayed on a copy of its starting data leaves every table with the
same CHECKSUM on both servers. A connection already open before the capture (current database, a
live prepared statement) is rebuilt from its CONN_STATE record."""
from __future__ import annotations

import json
import random
import threading

import pytest

from fastproxy.capture.record import KIND_COMMAND, KIND_CONN_STATE
from fastproxy.constants import COMMAND
from fastproxy.scratch_db import ROOT_PASSWORD

from capture_rawclient import ps_client
from conftest import start_proxy, stop_proxy
from replay_util import Capture, checksums, commands, dump_restore, records, replay_cli

mariadb_connector = pytest.importorskip("mariadb")  # MariaDB Connector/Python: real COM_STMT_PREPARE/EXECUTE

pytestmark = pytest.mark.timeout(180)

DB = "replay_e2e"
CONNS = 4
STEPS = 60
MOD = 1000003  # keeps repeated v*k+c inside BIGINT; still order-dependent


def _schema(db) -> None:
    tables = "".join(f"CREATE TABLE t{i} (id INT PRIMARY KEY, v BIGINT NOT NULL, s VARCHAR(2000) NOT NULL);"
                     f"INSERT INTO t{i} SELECT seq, seq * 10 + {i}, CONCAT('r', seq) FROM seq_1_to_20;"
                     for i in range(CONNS))
    db.sql(f"DROP DATABASE IF EXISTS {DB}; CREATE DATABASE {DB}; USE {DB};" + tables +
           "CREATE TABLE pre (id INT PRIMARY KEY, v BIGINT NOT NULL);"
           "INSERT INTO pre SELECT seq, seq FROM seq_1_to_5;")


def _connect(port: int, **kw):
    return mariadb_connector.connect(host="127.0.0.1", port=port, user="root", password=ROOT_PASSWORD,
                                     database=DB, autocommit=True, **kw)


def _workload(port: int, i: int, stats: dict, errors: list) -> None:
    """Connection i works on its own table t{i}; the final content depends on the order of everything."""
    try:
        rnd = random.Random(1000 + i)
        conn = _connect(port)
        text = conn.cursor()
        upd = conn.cursor(prepared=True)
        ins = conn.cursor(prepared=True)
        dele = conn.cursor(prepared=True)
        t = f"t{i}"
        for step in range(STEPS):
            r = rnd.random()
            k = rnd.randint(1, 30)
            if r < 0.25:
                text.execute(f"INSERT INTO {t} VALUES ({k}, {step}, 'a{step}') "
                             f"ON DUPLICATE KEY UPDATE v = (v * 3 + {step}) % {MOD}, s = CONCAT(s, '-t{step}')")
            elif r < 0.45:
                upd.execute(f"UPDATE {t} SET v = (v * 2 + ?) % {MOD}, s = CONCAT(s, ?) WHERE id % 5 = ?",
                            (step, f"-u{step}", k % 5))
            elif r < 0.6:
                ins.execute(f"INSERT INTO {t} (id, v, s) VALUES (?, ?, ?) "
                            f"ON DUPLICATE KEY UPDATE v = (v * 7 + VALUES(v)) % {MOD}, s = CONCAT(s, VALUES(s))",
                            (k, step, f"-p{step}"))
            elif r < 0.72:
                text.execute("BEGIN")
                text.execute(f"UPDATE {t} SET v = (v + {step}) * 5 % {MOD} WHERE id = {k}")
                text.execute(f"DELETE FROM {t} WHERE id = {rnd.randint(1, 30)}")
                text.execute("COMMIT")
                stats["commit"] += 1
            elif r < 0.84:
                text.execute("BEGIN")
                text.execute(f"UPDATE {t} SET v = 0, s = 'rolled back'")
                upd.execute(f"UPDATE {t} SET v = (v * 2 + ?) % {MOD}, s = CONCAT(s, ?) WHERE id % 5 = ?",
                            (1, "-never", 1))
                text.execute("ROLLBACK")
                stats["rollback"] += 1
            elif r < 0.93:
                dele.execute(f"DELETE FROM {t} WHERE v % 11 = ?", (step % 11,))
            else:
                text.execute(f"SELECT COUNT(*), SUM(v) FROM {t}")
                text.fetchall()
        for c in (text, upd, ins, dele):
            c.close()
        conn.close()
    except BaseException as e:  # noqa: BLE001
        errors.append(e)


def test_replay_restores_state_and_order(mariadb, mariadb_test, tmp_path):
    _schema(mariadb)
    proxy = start_proxy([mariadb])
    try:
        # a connection open before the capture: current db, a live prepared statement (a raw client, since
        # Connector/Python closes and re-prepares its statement on every execute), autocommit
        pre = ps_client(proxy.port, "root", ROOT_PASSWORD)
        assert pre.init_db(DB).kind == "ok"
        pre_sql = f"UPDATE pre SET v = (v * 5 + id) % {MOD} WHERE id <= 3"
        pre_id = pre.prepare(pre_sql)
        assert pre.execute(pre_id).kind == "ok"

        dump_restore(mariadb, mariadb_test, DB)  # the starting data, after the pre-capture statement ran
        assert checksums(mariadb, DB) == checksums(mariadb_test, DB)

        out = str(tmp_path / "capture")
        stats = {"commit": 0, "rollback": 0}
        errors: list = []
        with Capture(proxy, out):
            threads = [threading.Thread(target=_workload, args=(proxy.port, i, stats, errors)) for i in range(CONNS)]
            for th in threads:
                th.start()
            # the old connection goes on with its statement (captured id from before the capture) and
            # with unqualified table names (its current database)
            for n in range(6):
                assert pre.execute(pre_id).kind == "ok"
                assert pre.query(f"INSERT INTO pre VALUES ({100 + n % 3}, {n}) ON DUPLICATE KEY UPDATE v = v * 2 + 1"
                                 ).kind == "ok"
            assert pre.query("UPDATE pre SET v = v * 3 WHERE id <= 4").kind == "ok"
            pre.close_stmt(pre_id)
            assert pre.query("SELECT 1").kind == "rows"
            for th in threads:
                th.join()
        assert not errors, errors
        assert stats["commit"] and stats["rollback"]
        pre.quit()
    finally:
        stop_proxy(proxy)

    recs = records(out)
    states = [json.loads(r.payload) for r in recs if r.kind == KIND_CONN_STATE]
    assert [(s["db"], s["prepared"]) for s in states] == [(DB, [[pre_id, pre_sql]])], states
    pre_conn = next(r.conn_id for r in recs if r.kind == KIND_CONN_STATE)
    # the statement prepared before the capture is executed under its old id, never prepared in the capture
    pre_cmds = [r.payload for r in recs if r.kind == KIND_COMMAND and r.conn_id == pre_conn]
    assert sum(p[0] == COMMAND.COM_STMT_EXECUTE and int.from_bytes(p[1:5], "little") == pre_id
               for p in pre_cmds) == 6
    assert not any(p[0] == COMMAND.COM_STMT_PREPARE for p in pre_cmds)
    cmds = commands(out)
    kinds = {r.payload[0] for r in cmds}
    assert {COMMAND.COM_QUERY, COMMAND.COM_STMT_PREPARE, COMMAND.COM_STMT_EXECUTE} <= kinds
    texts = [r.payload[1:].decode() for r in cmds if r.payload[0] == COMMAND.COM_QUERY]
    assert "COMMIT" in texts and "ROLLBACK" in texts
    assert checksums(mariadb, DB) != checksums(mariadb_test, DB)  # the workload changed something

    res, summary = replay_cli(mariadb_test.addr, out, "--speed", "0", "--no-report-tables")
    assert summary["commands_failed"] == 0, summary
    assert summary["commands_skipped"] == 0 and summary["other_errors"] == 0, summary
    assert summary["commands_replayed"] == len(cmds), summary
    assert summary["connections"] == CONNS + 1, summary
    prod, test = checksums(mariadb, DB), checksums(mariadb_test, DB)
    assert prod == test, (prod, test)
