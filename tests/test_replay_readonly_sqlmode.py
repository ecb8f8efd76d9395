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


def test_read_only_replay_sends_nothing_that_writes_on_some_server_or_charset(mariadb, mariadb_private, tmp_path):
    """Issue 7 review, each of which production ran as a write: a versioned comment MariaDB skips as a
    comment (its first */ is inside what looks like a string), a session in gbk (from its handshake,
    or after SET NAMES gbk) where 0xBF 0x5C and 0xBF 0x60 are single characters, SETs whose values
    advance a sequence or take a named lock. None of them may reach the read-only replay's target."""
    db = "h7_readonly_review"
    schema = (f"DROP DATABASE IF EXISTS {db}; CREATE DATABASE {db}; CREATE SEQUENCE {db}.s;"
              + "".join(f"CREATE TABLE {db}.{t} (id INT PRIMARY KEY) AS SELECT seq AS id FROM {db}.seq_1_to_10;"
                        for t in ("t", "u", "w")))
    mariadb.sql(schema)
    out = str(tmp_path / "capture")
    proxy = start_proxy([mariadb])
    try:
        with Capture(proxy, out):
            conn = MySQLdb.connect(**connect_kwargs(proxy.port), database=db, autocommit=True,
                                   client_flag=CLIENT.MULTI_STATEMENTS)
            cur = conn.cursor()
            for sql in ("SELECT 1 /*!99999 ' */ ; DELETE FROM t; -- ' */", "SET @v = NEXTVAL(s)",
                        "SET @l = GET_LOCK('h7', 0), @r = RELEASE_LOCK('h7')", "SET NAMES gbk",
                        b"SELECT 1 AS a\xbf` ; DELETE FROM w; -- `", "SELECT COUNT(*) FROM u"):
                cur.execute(sql)
                while cur.nextset():
                    pass
            conn.close()
            gbk = MySQLdb.connect(**connect_kwargs(proxy.port), database=db, autocommit=True, charset="gbk",
                                  client_flag=CLIENT.MULTI_STATEMENTS)
            cur = gbk.cursor()
            cur.execute(b"SELECT '\xbf\\\\' , ' ; DELETE FROM u; -- '")
            while cur.nextset():
                pass
            gbk.close()
    finally:
        stop_proxy(proxy)
    # production ran every write
    assert mariadb.sql(f"SELECT (SELECT COUNT(*) FROM {db}.t), (SELECT COUNT(*) FROM {db}.u), "
                       f"(SELECT COUNT(*) FROM {db}.w), (SELECT next_not_cached_value FROM {db}.s)").split() \
        == ["0", "0", "0", "1001"]

    mariadb_private.sql(schema)
    _, summary = replay_cli(mariadb_private.addr, out, "--read-only", "--speed", "0", "--no-report-tables",
                            "--report-dir", str(tmp_path))
    assert mariadb_private.sql(f"SELECT (SELECT COUNT(*) FROM {db}.t), (SELECT COUNT(*) FROM {db}.u), "
                               f"(SELECT COUNT(*) FROM {db}.w), (SELECT next_not_cached_value FROM {db}.s)"
                               ).split() == ["10", "10", "10", "1"], "the read-only replay wrote"
    assert summary["commands_filtered"] >= 5, summary
    assert summary["commands_replayed"] >= 2, summary      # SET NAMES gbk, the COUNT
