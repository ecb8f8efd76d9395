"""Read-only replay against a server whose sessions read SQL differently from production's.

`SELECT * FROM t WHERE v = "a\\" ; DELETE FROM t; -- "` is one harmless SELECT by default. Under
sql_mode NO_BACKSLASH_ESCAPES the string ends at the backslash and the server runs the DELETE. A
`--read-only` replay must never send it there: its rows survive.
"""
from __future__ import annotations

import MySQLdb
import pytest
from MySQLdb.constants import CLIENT

from conftest import connect_kwargs, start_proxy, stop_proxy
from replay_util import Capture, commands, replay_cli

pytestmark = pytest.mark.timeout(180)

DB = "h7_readonly"
SCHEMA = (f"DROP DATABASE IF EXISTS {DB}; CREATE DATABASE {DB};"
          f"CREATE TABLE {DB}.t (id INT PRIMARY KEY, v VARCHAR(32));"
          f"INSERT INTO {DB}.t SELECT seq, CONCAT('v', seq) FROM {DB}.seq_1_to_10;")
TRAP = 'SELECT * FROM t WHERE v = "a\\" ; DELETE FROM t; -- "'


def test_read_only_replay_keeps_rows_under_no_backslash_escapes(mariadb, mariadb_private, tmp_path):
    mariadb.sql(SCHEMA)
    out = str(tmp_path / "capture")
    proxy = start_proxy([mariadb])
    try:
        with Capture(proxy, out):
            # multi-statements on, as many applications have it: the replay connection gets it too
            conn = MySQLdb.connect(**connect_kwargs(proxy.port), database=DB, autocommit=True,
                                   client_flag=CLIENT.MULTI_STATEMENTS)
            cur = conn.cursor()
            cur.execute(TRAP)          # production (default sql_mode): one SELECT, no row matches
            assert cur.fetchall() == () and not cur.nextset()
            cur.execute("SELECT COUNT(*) FROM t")
            assert cur.fetchall() == ((10,),)
            conn.close()
    finally:
        stop_proxy(proxy)
    assert any(r.payload[1:] == TRAP.encode() for r in commands(out))

    # the test server: sessions start with NO_BACKSLASH_ESCAPES
    mariadb_private.sql(SCHEMA + "SET GLOBAL sql_mode = CONCAT(@@global.sql_mode, ',NO_BACKSLASH_ESCAPES');")
    _, summary = replay_cli(mariadb_private.addr, out, "--read-only", "--speed", "0", "--no-report-tables",
                            "--report-dir", str(tmp_path))
    assert mariadb_private.sql(f"SELECT COUNT(*) FROM {DB}.t").split() == ["10"], \
        "the read-only replay deleted rows"
    assert summary["commands_filtered"] >= 1, summary
    # the reads were replayed (the count query ran there too)
    assert summary["commands_replayed"] >= 1, summary
