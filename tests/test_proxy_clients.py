"""Real clients through the proxy, each compared with the same thing done directly against MariaDB:
the mariadb CLI, mysqlclient (libmariadb), PyMySQL, MariaDB Connector/Python (server-side
prepared statements, read-only cursors) and libmariadb through ctypes (COM_FIELD_LIST,
COM_CHANGE_USER, COM_RESET_CONNECTION)."""
from __future__ import annotations

import hashlib
import subprocess
import zlib

import mariadb as mariadb_connector
import MySQLdb
import MySQLdb.cursors
import pymysql
import pymysql.cursors
import pytest
from MySQLdb.constants import CLIENT as MYSQLDB_CLIENT
from mariadb.constants import CURSOR as CONNECTOR_CURSOR

from clients_capi import CapiConnection, CapiError
from conftest import connect_kwargs
from fastproxy.scratch_db import ROOT_PASSWORD
from conftest import start_proxy, stop_proxy

DB = "fp_clients"

SETUP = f"""
SET NAMES utf8mb4;
CREATE DATABASE IF NOT EXISTS {DB} CHARACTER SET utf8mb4;
USE {DB};
CREATE OR REPLACE TABLE t (id INT PRIMARY KEY, name VARCHAR(40), v DECIMAL(10,2), d DATE, ts DATETIME(6),
                           f DOUBLE, b VARBINARY(64), j JSON, e ENUM('x','y'), u INT UNSIGNED, n BIGINT);
INSERT INTO t VALUES
  (1, 'alpha', 1.50, '2024-01-01', '2024-01-01 10:00:00.123456', 1.25, 0x00FF10, '{{"a": 1}}', 'x', 4294967295, -9223372036854775808),
  (2, 'béta ünïcode ☃', NULL, '2024-02-29', NULL, -0.0, '', '[]', 'y', 0, 9223372036854775807),
  (3, NULL, -99999999.99, NULL, '1970-01-01 00:00:01', 1e308, NULL, NULL, NULL, NULL, NULL),
  (4, '', 0, '9999-12-31', '9999-12-31 23:59:59.999999', 3.14159, 0x2700, 'null', 'x', 7, 0);
DROP PROCEDURE IF EXISTS p;
DELIMITER //
CREATE PROCEDURE p(IN k INT)
BEGIN
  SELECT id, name FROM t WHERE id <= k ORDER BY id;
  SELECT COUNT(*) AS c FROM t;
  SELECT k * 2 AS doubled, 'z' AS s;
END//
DELIMITER ;
CREATE OR REPLACE TABLE blobs (id INT PRIMARY KEY, b LONGBLOB);
CREATE OR REPLACE TABLE li (a INT, s VARCHAR(64), x DOUBLE);
CREATE OR REPLACE TABLE ps (id INT PRIMARY KEY, s VARCHAR(64), x DOUBLE, dt DATETIME, bl BLOB);
CREATE OR REPLACE USER fp_ed@'127.0.0.1' IDENTIFIED VIA ed25519 USING PASSWORD('edpw');
CREATE OR REPLACE USER fp_native@'127.0.0.1' IDENTIFIED VIA mysql_native_password USING PASSWORD('natpw');
CREATE OR REPLACE USER fp_cu@'127.0.0.1' IDENTIFIED BY 'cupw';
GRANT ALL ON {DB}.* TO fp_ed@'127.0.0.1';
GRANT ALL ON {DB}.* TO fp_native@'127.0.0.1';
GRANT ALL ON {DB}.* TO fp_cu@'127.0.0.1';
"""

TEXT_QUERIES = [
    "SELECT * FROM t ORDER BY id",
    "SELECT 1, 'a', NULL, 1.5, -2, 18446744073709551615, X'DEADBEEF', CAST('2024-01-01' AS DATE)",
    "SELECT id, LENGTH(name), HEX(b) FROM t WHERE id > 1 ORDER BY id DESC",
    "SELECT REPEAT('x', 70000) AS big",  # one row bigger than a usual read chunk
    "SELECT seq, seq * seq FROM seq_1_to_5000",
    "UPDATE t SET u = u WHERE id = 99",  # OK packet, 0 rows
    "SELECT * FROM t WHERE 1 = 0",  # result set without rows
    "SHOW VARIABLES LIKE 'max_allowed_packet'",
    "SELECT @@session.autocommit, DATABASE()",
]


@pytest.fixture(scope="module")
def setup_db(mariadb):
    mariadb.sql(SETUP)
    return mariadb


@pytest.fixture(scope="module")
def px(setup_db):
    """One proxy for the module's tests (each comparison also runs direct)."""
    p = start_proxy([setup_db])
    yield p
    stop_proxy(p)


@pytest.fixture
def ports(setup_db, px):
    """(direct port, proxy port)."""
    return {"direct": setup_db.port, "proxy": px.port}


def _kwargs(port, kw):
    out = connect_kwargs(port)
    out["database"] = DB
    out.update(kw)
    return out


def _mysqlclient(port, **kw):
    kw.setdefault("charset", "utf8mb4")
    return MySQLdb.connect(**_kwargs(port, kw))


def _pymysql(port, **kw):
    return pymysql.connect(**_kwargs(port, kw))


def _connector(port, **kw):
    return mariadb_connector.connect(**_kwargs(port, kw))


DRIVERS = {"mysqlclient": _mysqlclient, "pymysql": _pymysql}


def _both(ports, fn):
    """fn(port) direct and through the proxy; asserts both are equal and returns the result."""
    direct = fn(ports["direct"])
    proxied = fn(ports["proxy"])
    assert proxied == direct
    return proxied


# ---- mariadb CLI ------------------------------------------------------------------------------------
def test_cli_script_multistatements_procedure_source(tmp_path, setup_db, ports):
    sourced = tmp_path / "sourced.sql"
    sourced.write_text(f"USE {DB};\nSELECT 'from sourced file' AS origin, COUNT(*) FROM t;\n"
                       "SELECT name FROM t WHERE id = 2;\n")
    script = tmp_path / "script.sql"
    script.write_text(f"""
CREATE DATABASE IF NOT EXISTS fp_cli;
USE fp_cli;
CREATE OR REPLACE TABLE c (id INT PRIMARY KEY AUTO_INCREMENT, s VARCHAR(20));
INSERT INTO c (s) VALUES ('one'), ('two'), ('three');
DROP PROCEDURE IF EXISTS multi;
DELIMITER $$
CREATE PROCEDURE multi()
BEGIN
  SELECT * FROM c ORDER BY id;
  SELECT COUNT(*) AS n FROM c;
  UPDATE c SET s = UPPER(s) WHERE id = 1;
  SELECT s FROM c WHERE id = 1;
END$$
SELECT 'one statement'; SELECT 'two statements', 2$$
DELIMITER ;
CALL multi();
CALL multi();
source {sourced}
SELECT * FROM no_such_table;
SELECT 'after the error', @@warning_count;
SET @v = 10;
SELECT @v * 3 AS v3;
SELECT CAST('abc' AS INT);
SHOW WARNINGS;
DROP DATABASE fp_cli;
""")

    def run(port):
        res = subprocess.run(["mariadb", "--no-defaults", "-h127.0.0.1", f"-P{port}", "--protocol=TCP", "-uroot",
                              f"-p{ROOT_PASSWORD}", "--force", "--table", "--show-warnings"],
                             stdin=open(script), capture_output=True, text=True, timeout=60)
        return res.returncode, res.stdout, res.stderr

    code, out, err = _both(ports, run)
    assert "from sourced file" in out and "two statements" in out and "ONE" in out
    assert "1146" in err  # the failing statement, reported identically (--force goes on)


# ---- text protocol ----------------------------------------------------------------------------------
@pytest.mark.parametrize("driver", DRIVERS)
def test_text_queries(ports, driver):
    def run(port):
        conn = DRIVERS[driver](port)
        out = []
        with conn.cursor() as cur:
            for q in TEXT_QUERIES:
                cur.execute(q)
                out.append((q, [d[:2] for d in cur.description or ()], cur.fetchall(), cur.rowcount))
        conn.close()
        return out

    _both(ports, run)


@pytest.mark.parametrize("driver", DRIVERS)
def test_multi_statements_and_call(ports, driver):
    def run(port):
        if driver == "mysqlclient":
            conn = _mysqlclient(port, client_flag=MYSQLDB_CLIENT.MULTI_STATEMENTS)
        else:
            conn = _pymysql(port, client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS)
        sets = []
        cur = conn.cursor()

        def drain():
            while True:
                sets.append((cur.description and [d[0] for d in cur.description], cur.fetchall()))
                if not cur.nextset():
                    break

        cur.execute("SELECT 1 AS a; SELECT 'x' AS b, 'y' AS c; UPDATE t SET u = u WHERE id = 1; CALL p(3)")
        drain()
        cur.execute("CALL p(1)")
        drain()
        # an error in the middle of a multi-statement ends it; the connection stays usable
        cur.execute("SELECT 1; SELECT * FROM no_such_table; SELECT 3")
        sets.append(cur.fetchall())
        with pytest.raises((MySQLdb.ProgrammingError, pymysql.err.ProgrammingError)) as ei:
            cur.nextset()
        sets.append(ei.value.args[0])
        cur.execute("SELECT 42")
        sets.append(cur.fetchall())
        conn.close()
        return sets

    sets = _both(ports, run)
    assert 1146 in sets and sets[-1] == ((42,),)


# ---- server-side prepared statements (Connector/Python) -------------------------------------------
def test_prepared_statements(ports):
    def run(port):
        conn = _connector(port, autocommit=True)
        out = []

        def execute(sql, params=(), many=False):
            # a fresh cursor per statement: Connector/Python 1.1 crashes when one prepared cursor is
            # reused for another statement after executemany (directly as through the proxy)
            cur = conn.cursor(prepared=True)
            (cur.executemany if many else cur.execute)(sql, params)
            return cur

        execute("DELETE FROM ps").close()
        rows = [(i, f"s{i}", i / 7, f"2024-01-{i % 28 + 1:02d} 12:00:00", bytes(range(i % 256)) * 3) for i in range(1, 301)]
        execute("INSERT INTO ps VALUES (?, ?, ?, ?, ?)", rows, many=True).close()
        cur = conn.cursor(prepared=True)
        for k in (0, 5, 150, 400):  # the same statement executed again with other parameters
            cur.execute("SELECT id, s, x, dt, bl FROM ps WHERE id > ? ORDER BY id LIMIT 50", (k,))
            out.append(cur.fetchall())
        cur.close()
        cur = execute("SELECT ?, ? + 1, CONCAT(?, 'x'), ?", (None, 41, "é", b"\x00\x01"))
        out.append(cur.fetchall())
        cur.close()
        cur = execute("UPDATE ps SET x = x + ? WHERE id <= ?", (1.0, 10))
        out.append(cur.rowcount)
        cur.close()
        # a prepared CALL returns several result sets (PS_MULTI_RESULTS)
        cur = execute("CALL p(?)", (2,))
        sets = [cur.fetchall()]
        while cur.nextset():
            if cur.description:
                sets.append(cur.fetchall())
        out.append(sets)
        cur.close()
        # an error in a prepared execute
        with pytest.raises(mariadb_connector.Error) as ei:
            execute("INSERT INTO ps (id) VALUES (?)", (1,))
        out.append(ei.value.errno)
        cur = execute("SELECT COUNT(*), SUM(id), SUM(LENGTH(bl)) FROM ps WHERE id > ?", (0,))
        out.append(cur.fetchall())
        cur.close()
        conn.close()
        return out

    out = _both(ports, run)
    assert out[-2] == 1062 and out[-1] == [(300, 45150, sum(len(bytes(range(i % 256))) * 3 for i in range(1, 301)))]
    assert len(out[-3]) == 3  # CALL: three result sets


def test_read_only_cursor_uses_com_stmt_fetch(ports, px):
    fetches_before = px.metric("fastproxy_commands_total", 'type="COM_STMT_FETCH"')

    def run(port):
        conn = _connector(port)
        cur = conn.cursor(cursor_type=CONNECTOR_CURSOR.READ_ONLY, prefetch_size=97)
        cur.execute("SELECT seq, CONCAT('r', seq) FROM seq_1_to_5000 WHERE seq > ?", (10,))
        n = total = 0
        while rows := cur.fetchmany(500):
            n += len(rows)
            total += sum(r[0] for r in rows)
        cur.close()
        # the connection is still in step after the cursor
        c2 = conn.cursor()
        c2.execute("SELECT 7")
        after = c2.fetchall()
        conn.close()
        return n, total, after

    assert _both(ports, run) == (4990, sum(range(11, 5001)), [(7,)])
    assert px.metric("fastproxy_commands_total", 'type="COM_STMT_FETCH"') > fetches_before


# ---- LOAD DATA LOCAL INFILE ----------------------------------------------------------------------
@pytest.mark.parametrize("driver", DRIVERS)
def test_load_data_local_infile(tmp_path, ports, driver):
    path = tmp_path / "data.csv"
    with open(path, "w") as f:
        for i in range(60000):  # ~2.5 MB: many packets
            f.write(f"{i},row number {i} {'x' * (i % 20)},{i / 3}\n")

    def run(port):
        conn = DRIVERS[driver](port, local_infile=True, autocommit=True)
        cur = conn.cursor()
        cur.execute("DELETE FROM li")
        cur.execute(f"LOAD DATA LOCAL INFILE '{path}' INTO TABLE li FIELDS TERMINATED BY ','")
        affected = cur.rowcount
        cur.execute("SELECT COUNT(*), SUM(a), SUM(LENGTH(s)), ROUND(SUM(x), 3) FROM li")
        res = cur.fetchall()
        err = None
        if driver == "mysqlclient":  # a missing file: the client sends an empty packet, the server answers ERR
            try:
                cur.execute(f"LOAD DATA LOCAL INFILE '{path}.missing' INTO TABLE li")
            except MySQLdb.Error as e:
                err = e.args[0]
            cur.execute("SELECT COUNT(*) FROM li")
            res += cur.fetchall()
        conn.close()
        return affected, res, err

    affected, res, _ = _both(ports, run)
    assert affected == 60000 and res[0][0] == 60000


# ---- large results and packets ---------------------------------------------------------------------
@pytest.mark.parametrize("driver", DRIVERS)
def test_streaming_cursor_million_rows(ports, driver):
    # PyMySQL (pure Python) takes seconds per million rows: it streams 300,000, through the proxy only
    limit = 1_000_000 if driver == "mysqlclient" else 300_000

    def run(port):
        if driver == "mysqlclient":
            conn = _mysqlclient(port, cursorclass=MySQLdb.cursors.SSCursor)
        else:
            conn = _pymysql(port, cursorclass=pymysql.cursors.SSCursor)
        cur = conn.cursor()
        cur.execute(f"SELECT seq FROM seq_1_to_{limit}")
        n = total = crc = 0
        while rows := cur.fetchmany(10000):
            n += len(rows)
            total += sum(r[0] for r in rows)
            crc = zlib.crc32(repr(rows[-1]).encode(), crc)
        cur.close()
        cur = conn.cursor()
        cur.execute("SELECT 'still in step'")
        tail = cur.fetchall()
        conn.close()
        return n, total, crc, tail

    n, total, _, tail = _both(ports, run) if driver == "mysqlclient" else run(ports["proxy"])
    assert (n, total) == (limit, limit * (limit + 1) // 2) and tail[0][0] == "still in step"


@pytest.mark.parametrize("driver", DRIVERS)
def test_20mib_blob_round_trip(ports, driver):
    blob = hashlib.sha256(b"seed").digest() * (20 * 1024 * 1024 // 32) + b"tail"  # > 16 MiB: split packets

    def run(port):
        kw = {"max_allowed_packet": 64 * 1024 * 1024} if driver == "pymysql" else {}
        conn = DRIVERS[driver](port, autocommit=True, **kw)
        cur = conn.cursor()
        key = 1 if driver == "mysqlclient" else 2
        cur.execute("REPLACE INTO blobs VALUES (%s, %s)", (key, blob))
        cur.execute("SELECT b, LENGTH(b), SHA2(b, 256) FROM blobs WHERE id = %s", (key,))
        (got, length, sha), = cur.fetchall()
        cur.execute("SELECT 1")
        conn.close()
        return hashlib.sha256(got).hexdigest(), length, sha

    local, length, server = _both(ports, run)
    assert local == server == hashlib.sha256(blob).hexdigest() and length == len(blob)


# ---- session commands -------------------------------------------------------------------------------
def test_change_user(ports):
    def run(port):
        out = []
        conn = _connector(port, database=None)
        conn.change_user("fp_cu", "cupw", DB)
        cur = conn.cursor()
        cur.execute("SELECT CURRENT_USER(), DATABASE()")
        out.append(cur.fetchall())
        conn.change_user("fp_ed", "edpw", DB)  # ed25519: the change-user exchange includes an auth switch
        cur = conn.cursor()
        cur.execute("SELECT CURRENT_USER(), DATABASE(), COUNT(*) FROM t")
        out.append(cur.fetchall())
        conn.close()
        with CapiConnection("127.0.0.1", port, "root", ROOT_PASSWORD) as c:
            c.change_user("fp_native", "natpw", DB)
            out.append(c.query("SELECT CURRENT_USER(), DATABASE()"))
            with pytest.raises(CapiError) as ei:
                c.change_user("fp_native", "wrong", DB)
            out.append(ei.value.errno)
        return out

    out = _both(ports, run)
    assert out[0] == [("fp_cu@127.0.0.1", DB)] and out[1] == [("fp_ed@127.0.0.1", DB, 4)]
    assert out[2] == [("fp_native@127.0.0.1", DB)] and out[3] == 1045


def test_reset_connection(ports):
    def run(port):
        conn = _connector(port)
        cur = conn.cursor()
        cur.execute("SET @x = 5")
        cur.execute("CREATE TEMPORARY TABLE tmp_reset (a INT)")
        cur.execute("BEGIN")
        cur.execute("INSERT INTO tmp_reset VALUES (1)")
        conn.reset()
        cur = conn.cursor()
        cur.execute("SELECT @x, @@in_transaction, DATABASE()")
        out = [cur.fetchall()]
        with pytest.raises(mariadb_connector.Error) as ei:
            cur.execute("SELECT * FROM tmp_reset")
        out.append(ei.value.errno)
        conn.close()
        with CapiConnection("127.0.0.1", port, "root", ROOT_PASSWORD, DB) as c:
            c.query("SET @y = 1")
            c.reset()
            out.append(c.query("SELECT @y"))
        return out

    assert _both(ports, run) == [[(None, 0, DB)], 1146, [(None,)]]


@pytest.mark.parametrize("driver", DRIVERS)
def test_wrong_password_same_error(ports, driver):
    def run(port):
        try:
            DRIVERS[driver](port, password="not-the-password").close()
        except (MySQLdb.OperationalError, pymysql.err.OperationalError) as e:
            return e.args
        return None

    args = _both(ports, run)
    assert args[0] == 1045


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("user,password", [("fp_ed", "edpw"), ("fp_native", "natpw")])
def test_auth_plugins(ports, driver, user, password):
    def run(port):
        conn = DRIVERS[driver](port, user=user, password=password)
        cur = conn.cursor()
        cur.execute("SELECT CURRENT_USER(), DATABASE()")
        rows = cur.fetchall()
        conn.close()
        return rows

    assert [tuple(r) for r in _both(ports, run)] == [(f"{user}@127.0.0.1", DB)]


def test_ping_init_db_statistics_field_list(ports):
    def run(port):
        out = []
        conn = _mysqlclient(port, database="mysql")
        conn.ping()
        conn.select_db(DB)
        cur = conn.cursor()
        cur.execute("SELECT DATABASE()")
        out.append(cur.fetchall())
        try:
            conn.select_db("no_such_db")
        except MySQLdb.OperationalError as e:
            out.append(e.args[0])
        stat = conn.stat()
        out.append(stat.split(":")[0])
        conn.ping()
        cur.execute("SELECT 'after stat'")
        out.append(cur.fetchall())
        conn.close()
        pconn = _pymysql(port)
        pconn.ping(reconnect=False)
        pconn.select_db("mysql")
        with pconn.cursor() as c:
            c.execute("SELECT DATABASE()")
            out.append(c.fetchall())
        pconn.close()
        with CapiConnection("127.0.0.1", port, "root", ROOT_PASSWORD, DB) as c:
            out.append(c.list_fields("t"))
            out.append(c.list_fields("t", "n%"))
            try:
                c.list_fields("no_such_table")
            except CapiError as e:
                out.append(e.errno)
            c.ping()
            out.append(c.query("SELECT COUNT(*) FROM t"))
        return out

    out = _both(ports, run)
    assert out[0] == ((DB,),) and out[1] == 1049 and out[2] == "Uptime"
    assert out[5][:3] == ["id", "name", "v"] and out[6] == ["name", "n"] and out[7] == 1146


def test_metrics_count_commands_by_type(proxy_factory, setup_db):
    p = proxy_factory([setup_db])

    def m(cmd):
        return p.metric("fastproxy_commands_total", f'type="{cmd}"')

    conn = _mysqlclient(p.port)
    before = {c: m(c) for c in ("COM_QUERY", "COM_PING", "COM_INIT_DB", "COM_STATISTICS")}
    hist_before = p.metric("fastproxy_command_duration_seconds_count")
    cur = conn.cursor()
    for i in range(37):
        cur.execute("SELECT %s", (i,))
        cur.fetchall()
    for _ in range(5):
        conn.ping()
    conn.select_db("mysql")
    conn.select_db(DB)
    conn.stat()
    after = {c: m(c) for c in before}
    assert {c: after[c] - before[c] for c in before} == {"COM_QUERY": 37, "COM_PING": 5, "COM_INIT_DB": 2,
                                                         "COM_STATISTICS": 1}
    assert p.metric("fastproxy_command_duration_seconds_count") - hist_before == 45
    conn.close()


def test_load_data_local_infile_of_many_packets_keeps_the_connection_in_step(proxy, mariadb, tmp_path):
    """A file of more than 256 packets wraps the sequence ids back to 0: still file data, not commands."""
    import pymysql

    path = tmp_path / "big.tsv"
    with open(path, "w") as f:
        for i in range(120_000):
            f.write(f"{i}\t{'x' * 30}\n")  # ~4.5 MB: ~280 packets of 16 KiB from PyMySQL
    mariadb.sql("CREATE DATABASE IF NOT EXISTS bigfile; CREATE OR REPLACE TABLE bigfile.t (a INT, b VARCHAR(40))")
    conn = pymysql.connect(host="127.0.0.1", port=proxy.port, user="root", password="rootpw", database="bigfile",
                           local_infile=True)
    before = proxy.metric("fastproxy_commands_total", 'type="COM_QUERY"')
    with conn.cursor() as cur:
        cur.execute(f"LOAD DATA LOCAL INFILE '{path}' INTO TABLE t")
        cur.execute("SELECT COUNT(*), SUM(a) FROM t")
        assert cur.fetchone() == (120_000, sum(range(120_000)))
    sessions = proxy.get("/api/debug/connections")
    assert all(s["pending_commands"] == 0 for s in sessions), sessions
    conn.close()
    # exactly the two queries were seen as commands: no file chunk was taken for one
    assert proxy.metric("fastproxy_commands_total", 'type="COM_QUERY"') - before == 2
    assert proxy.metric("fastproxy_commands_total", 'type="COM_UNKNOWN_0x78"') == 0
