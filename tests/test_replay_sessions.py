"""Replay keeps sessions as production had them, on two identical servers: sessions open before the
capture rebuilt, KILL mapped to the replay connection of its target, every connection as its own
user (COM_CHANGE_USER too), redacted secrets put back, server-side closes expected, commands the
backend never answered not sent, LOAD DATA LOCAL files sent again, the current database followed.
Each test: zero failures and the same data on both servers."""
from __future__ import annotations

import json
import struct
import threading
import time

import MySQLdb
import pymysql
import pytest

from clients_capi import CapiConnection
from conftest import connect_kwargs
from fastproxy.capture.record import KIND_COMMAND
from fastproxy.errors import ConfigError
from fastproxy.replay.users import PLACEHOLDER, load_users_file
from fastproxy.scratch_db import ROOT_PASSWORD
from proxy_util import wait_for
from replay_util import Capture, records, replay_cli, replay_inprocess
from session_util import on_both, same_data, users_file


def _no_false_failures(summary: dict) -> None:
    assert summary["commands_failed"] == 0, summary["top_failures"]
    assert summary["other_errors"] == 0, summary["other_error_types"]
    assert summary["commands_fixed"] == 0, summary  # nothing that failed in production passed on replay


# ---- sessions open before the capture ------------------------------------------------------------
def test_sessions_open_before_the_capture_are_rebuilt(mariadb, mariadb_test, proxy, tmp_path):
    on_both((mariadb, mariadb_test), "DROP DATABASE IF EXISTS rs_open; CREATE DATABASE rs_open;"
            "CREATE TABLE rs_open.t (id INT PRIMARY KEY, v VARCHAR(40), ts VARCHAR(30)) ENGINE=InnoDB;"
            "INSERT INTO rs_open.t VALUES (1, 'one', ''), (2, 'two', '')")
    # A: session variables, user variables, a SQL PREPARE, an open transaction that has not written
    a = pymysql.connect(**connect_kwargs(proxy.port), autocommit=True, charset="utf8mb4")
    ca = a.cursor()
    for sql in ["USE rs_open /* the app's db */", "SET SESSION sql_mode = 'ANSI_QUOTES,PIPES_AS_CONCAT'",
                "SET time_zone = '+09:00'", "SET @id = 10, @tag = 'Grüße', @ratio = 2.50",
                "PREPARE ins FROM 'INSERT INTO t VALUES (?, ?, CONVERT_TZ(''2024-01-01 00:00:00'', ''+00:00'', "
                "@@time_zone))'", "SET autocommit = 0", "SELECT v FROM t WHERE id = 1 FOR UPDATE"]:
        ca.execute(sql)
    # B: a temporary table (its rows cannot be rebuilt: named, failures on B reported apart)
    b = pymysql.connect(**connect_kwargs(proxy.port, database="rs_open"), autocommit=True)
    cb = b.cursor()
    cb.execute("CREATE TEMPORARY TABLE scratch (id INT)")
    cb.execute("INSERT INTO scratch VALUES (1)")

    out = str(tmp_path / "cap")
    with Capture(proxy, out) as cap:
        ca.execute("EXECUTE ins USING @id, @tag || '!'")  # PIPES_AS_CONCAT: '||' concatenates
        ca.execute('UPDATE "t" SET v = @tag, ts = @ratio * 2 WHERE id = 2')  # ANSI_QUOTES
        ca.execute("COMMIT")
        cb.execute("INSERT INTO scratch VALUES (2)")
        cb.execute("INSERT INTO t SELECT id + 100, 'from scratch', '' FROM scratch WHERE id = 2")
    a.close()
    b.close()
    assert cap.job["sessions_not_rebuilt"] == 1, cap.job

    for speed in (1.0, 0):
        on_both((mariadb_test,), "DELETE FROM rs_open.t WHERE id > 2; UPDATE rs_open.t SET v = 'two', ts = '' "
                "WHERE id = 2")
        summary, _ = replay_inprocess(mariadb_test.host, mariadb_test.port, out, speed=speed)
        _no_false_failures(summary)
        assert summary["sessions_rebuilt"] == 1 and summary["sessions_not_rebuilt"] == 1, summary
        assert "scratch" in json.dumps(summary["not_rebuilt"])
        same_data(mariadb, mariadb_test, "rs_open")
    rows = mariadb_test.sql("SELECT id, v, ts FROM rs_open.t ORDER BY id")
    assert rows == "1\tone\t\n2\tGrüße\t5.00\n10\tGrüße!\t2024-01-01 09:00:00\n102\tfrom scratch\t\n", rows


# ---- KILL ----------------------------------------------------------------------------------------
def test_kill_query_goes_to_the_replay_connection_of_its_target(mariadb, mariadb_test, proxy, tmp_path):
    on_both((mariadb, mariadb_test), "DROP DATABASE IF EXISTS rs_kill; CREATE DATABASE rs_kill;"
            "CREATE TABLE rs_kill.t (id INT PRIMARY KEY) ENGINE=InnoDB")
    out = str(tmp_path / "cap")
    with Capture(proxy, out):
        slow = pymysql.connect(**connect_kwargs(proxy.port, database="rs_kill"), autocommit=True)
        killer = pymysql.connect(**connect_kwargs(proxy.port, database="rs_kill"), autocommit=True)
        target = slow.thread_id()

        def kill_it():
            wait_for(lambda: any(c["pending_commands"] and c["backend_conn_id"] == target
                                 for c in proxy.get("/api/debug/connections")), 20, what="the slow report")
            time.sleep(0.5)
            cur = killer.cursor()
            cur.execute(f"/* stop the report */ kill  QUERY\n{target}")
            for bad in ("KILL QUERY ID 12345", "KILL 4000000"):
                with pytest.raises(pymysql.err.OperationalError):
                    cur.execute(bad)
            # COM_PROCESS_KILL of an idle connection of the capture
            killer._execute_command(pymysql.constants.COMMAND.COM_PROCESS_KILL, struct.pack("<I", idle.thread_id()))
            killer._read_ok_packet()

        idle = pymysql.connect(**connect_kwargs(proxy.port, database="rs_kill"), autocommit=True)
        idle.cursor().execute("SELECT 1")
        t = threading.Thread(target=kill_it)
        t.start()
        with pytest.raises(pymysql.err.OperationalError) as e:
            slow.cursor().execute("SELECT SLEEP(20)")
        assert e.value.args[0] == 1317
        t.join()
        slow.cursor().execute("INSERT INTO t VALUES (1)")
        for c in (slow, killer):
            c.close()
        wait_for(lambda: len(proxy.get("/api/debug/connections")) == 0, 20, what="the killed one to go")

    for speed in (1.0, 0):
        mariadb_test.sql("DELETE FROM rs_kill.t")
        summary, _ = replay_inprocess(mariadb_test.host, mariadb_test.port, out, speed=speed)
        assert summary["commands_failed"] == 0, summary["top_failures"]
        # the interrupted report failed on replay as in production (1317), nothing else did
        assert summary["commands_failed_same_as_capture"] == 1, summary  # the 1317 (unmapped KILLs: not sent)
        assert summary["commands_fixed"] == 0, summary
        assert set(summary["other_error_types"]) == {"kill not mapped"}, summary["other_error_types"]
        assert summary["kills_mapped"] == 2 and summary["kills_not_mapped"] == 2, summary
        assert summary["server_closes_as_captured"] == 1, summary  # the idle one COM_PROCESS_KILL closed
        same_data(mariadb, mariadb_test, "rs_kill")


# ---- users ---------------------------------------------------------------------------------------
USERS = {"rs_writer": "Writer-pw-1", "rs_reader": "Reader'pw\\2"}


def _create_users(*servers) -> None:
    on_both(servers, "DROP DATABASE IF EXISTS rs_users; CREATE DATABASE rs_users;"
            "CREATE TABLE rs_users.t (id INT PRIMARY KEY, who VARCHAR(80)) ENGINE=InnoDB;"
            "DROP USER IF EXISTS rs_writer@'%', rs_reader@'%';"
            "CREATE USER rs_writer@'%' IDENTIFIED BY 'Writer-pw-1';"
            "CREATE USER rs_reader@'%' IDENTIFIED BY 'Reader''pw\\\\2';"
            "GRANT SELECT, INSERT ON rs_users.* TO rs_writer@'%';"
            "GRANT SELECT ON rs_users.* TO rs_reader@'%';")


def test_every_connection_replays_as_its_user(mariadb, mariadb_test, proxy, tmp_path):
    _create_users(mariadb, mariadb_test)
    out = str(tmp_path / "cap")
    with Capture(proxy, out):
        w = MySQLdb.connect(host="127.0.0.1", port=proxy.port, user="rs_writer", password=USERS["rs_writer"],
                            database="rs_users", autocommit=True)
        w.cursor().execute("INSERT INTO t VALUES (1, CURRENT_USER())")
        r = MySQLdb.connect(host="127.0.0.1", port=proxy.port, user="rs_reader", password=USERS["rs_reader"],
                            database="rs_users", autocommit=True)
        with pytest.raises(MySQLdb.OperationalError) as e:  # a reader may not write: 1142, on replay too
            r.cursor().execute("INSERT INTO t VALUES (2, CURRENT_USER())")
        assert e.value.args[0] == 1142
        w.close()
        r.close()
        # root, then COM_CHANGE_USER to the writer with a database: its writes as the writer
        with CapiConnection("127.0.0.1", proxy.port, "root", ROOT_PASSWORD) as capi:
            capi.query("INSERT INTO rs_users.t VALUES (3, CURRENT_USER())")
            capi.change_user("rs_writer", USERS["rs_writer"], "rs_users")
            capi.query("INSERT INTO t VALUES (4, CURRENT_USER())")
            with pytest.raises(Exception):
                capi.query("DELETE FROM t")  # the writer may not delete: 1142
    path = users_file(tmp_path / "users.toml", USERS)
    for speed in (1.0, 0):
        mariadb_test.sql("TRUNCATE rs_users.t")
        res, summary = replay_cli(mariadb_test.addr, out, "--speed", str(speed), "--users-file", path,
                                  "--no-report-tables")
        _no_false_failures(summary)
        assert summary["change_users"] == 1 and summary["users_in_users_file"] == 2, summary
        assert summary["commands_failed_same_as_capture"] == 2  # the two 1142s
        same_data(mariadb, mariadb_test, "rs_users")
        assert "COM_CHANGE_USER: 1 replayed as a change of user" in res.stdout
    assert mariadb_test.sql("SELECT who FROM rs_users.t ORDER BY id").split() == [
        "rs_writer@%", "root@127.0.0.1", "rs_writer@%"]


def test_users_file_must_be_private(tmp_path):
    path = users_file(tmp_path / "users.toml", USERS, mode=0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_users_file(path)
    bad = tmp_path / "bad.toml"
    bad.write_text('app = 12345\n')
    bad.chmod(0o600)
    with pytest.raises(ConfigError, match="must be a string") as e:
        load_users_file(str(bad))
    assert "12345" not in str(e.value)
    assert load_users_file(users_file(tmp_path / "ok.toml", USERS)) == USERS


# ---- secrets -------------------------------------------------------------------------------------
def test_redacted_secrets_put_back(mariadb, mariadb_test, proxy, tmp_path):
    """CREATE USER (its secret redacted by the capture), GRANT, a login as that user, DROP USER:
    zero failures, and each login really was as its user (the CURRENT_USER() rows match)."""
    on_both((mariadb, mariadb_test), "DROP DATABASE IF EXISTS rs_sec; CREATE DATABASE rs_sec;"
            "CREATE TABLE rs_sec.t (who VARCHAR(80)) ENGINE=InnoDB; DROP USER IF EXISTS rs_new@'%', rs_listed@'%'")
    out = str(tmp_path / "cap")
    with Capture(proxy, out):
        admin = pymysql.connect(**connect_kwargs(proxy.port), autocommit=True)
        cur = admin.cursor()
        for user in ("rs_new", "rs_listed"):
            cur.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'Prod-{user}-pw'")
            cur.execute(f"GRANT SELECT, INSERT ON rs_sec.* TO '{user}'@'%'")
        for user in ("rs_new", "rs_listed"):
            c = pymysql.connect(host="127.0.0.1", port=proxy.port, user=user, password=f"Prod-{user}-pw",
                                database="rs_sec", autocommit=True)
            c.cursor().execute("INSERT INTO t VALUES (CURRENT_USER())")
            c.close()
        time.sleep(0.05)
        for user in ("rs_new", "rs_listed"):
            cur.execute(f"DROP USER '{user}'@'%'")
        admin.close()
    recs = records(out)
    assert not any(b"Prod-" in r.payload for r in recs)
    creates = [r.payload for r in recs if r.kind == KIND_COMMAND and r.payload.startswith(b"\x03CREATE USER")]
    assert creates == [f"\x03CREATE USER '{u}'@'%' IDENTIFIED BY '{PLACEHOLDER}'".encode()
                       for u in ("rs_new", "rs_listed")], creates  # as the capture redacts them
    path = users_file(tmp_path / "users.toml", {"rs_listed": "Test-listed-pw"})
    # as fast as possible too: a login waits for the CREATE USER another connection committed before it
    for speed in (1.0, 0):
        mariadb_test.sql("DELETE FROM rs_sec.t")
        res, summary = replay_cli(mariadb_test.addr, out, "--speed", str(speed), "--users-file", path,
                                  "--no-report-tables")
        _no_false_failures(summary)
        same_data(mariadb, mariadb_test, "rs_sec")  # each login was as its user (CURRENT_USER() rows)
        assert (summary["secrets_substituted"], summary["secrets_from_users_file"], summary["secrets_random"]) == \
            (2, 1, 1), summary
        assert "redacted secrets put back: 2" in res.stdout
        assert "Test-listed-pw" not in res.stdout + res.stderr + json.dumps(summary)


def test_the_replay_users_own_password_is_not_counted_as_from_the_users_file(mariadb, mariadb_test, proxy, tmp_path):
    """Without a users file, a redacted SET PASSWORD of the --username user gets that user's --password
    back: counted as such (secrets_replay_user), not as "from the users file"."""
    on_both((mariadb, mariadb_test), "DROP USER IF EXISTS rs_self@'%'; CREATE USER rs_self@'%' IDENTIFIED BY 'Self-pw-1'")
    try:
        out = str(tmp_path / "cap")
        with Capture(proxy, out):
            c = pymysql.connect(host="127.0.0.1", port=proxy.port, user="rs_self", password="Self-pw-1",
                                autocommit=True)
            c.cursor().execute("SET PASSWORD = PASSWORD('Self-pw-1')")
            c.close()
        assert not any(b"Self-pw" in r.payload for r in records(out))
        res, summary = replay_cli(mariadb_test.addr, out, "--speed", "0", "--no-report-tables",
                                  username="rs_self", password="Self-pw-1")
        _no_false_failures(summary)
        assert (summary["secrets_substituted"], summary["secrets_from_users_file"], summary["secrets_replay_user"],
                summary["secrets_random"]) == (1, 0, 1, 0), summary
        assert ("redacted secrets put back: 1 statement(s) (0 password(s) from the users file, 1 the --username "
                "user's own, 0 random)") in res.stdout, res.stdout
        # the password stayed what it was: the user still logs in with it
        pymysql.connect(host="127.0.0.1", port=int(mariadb_test.addr.rsplit(":", 1)[1]), user="rs_self",
                        password="Self-pw-1").close()
    finally:
        on_both((mariadb, mariadb_test), "DROP USER IF EXISTS rs_self@'%'")


def test_a_placeholder_production_sent_itself_gets_no_password(mariadb, mariadb_test, proxy, tmp_path):
    """A client may send the placeholder string itself: into a variable, a table, an expression that
    picks another user's name. Replay leaves it as it was (the same data as production); neither the
    replay's password nor the users file's reaches the target's tables, the report or the output."""
    on_both((mariadb, mariadb_test), "DROP DATABASE IF EXISTS rs_exfil; CREATE DATABASE rs_exfil")
    ph = f"'{PLACEHOLDER}'"
    out = str(tmp_path / "cap")
    with Capture(proxy, out):
        c = pymysql.connect(**connect_kwargs(proxy.port), autocommit=True)
        cur = c.cursor()
        for sql in (f"SET @x = {ph}", f"SET @y = ELT(2, 'rs_listed', {ph})",
                    f"CREATE TABLE rs_exfil.t AS SELECT {ph} AS p, @x AS q, @y AS r, REVERSE(@x) AS s",
                    "SET sql_mode = IF(@x = CONCAT('__fastproxy', '_redacted__'), @@sql_mode, REVERSE(@x))",
                    "INSERT INTO rs_exfil.t SELECT @x, HEX(@y), @@sql_mode, 'x'"):
            cur.execute(sql)
        c.close()
    path = users_file(tmp_path / "users.toml", {"rs_listed": "Test-listed-pw"})
    report = tmp_path / "report"
    res, summary = replay_cli(mariadb_test.addr, out, "--speed", "0", "--users-file", path, "--report-dir", str(report))
    _no_false_failures(summary)
    assert summary["secrets_substituted"] == 0, summary
    same_data(mariadb, mariadb_test, "rs_exfil")  # the placeholder, as production stored it
    secrets = (ROOT_PASSWORD, "Test-listed-pw", ROOT_PASSWORD[::-1], ROOT_PASSWORD.encode().hex().upper())
    rows = mariadb_test.sql("SELECT p, q, r, s FROM rs_exfil.t")
    assert PLACEHOLDER in rows and not any(s in rows for s in secrets), rows
    written = res.stdout + res.stderr + "".join(p.read_text(errors="replace") for p in report.rglob("*") if p.is_file())
    tables = mariadb_test.sql("SELECT table_name FROM information_schema.tables "
                              "WHERE table_schema = 'tiproxy_traffic_report'").split()
    assert tables
    written += "".join(mariadb_test.sql(f"SELECT * FROM tiproxy_traffic_report.`{t}`") for t in tables)
    assert not any(s in written for s in secrets)


def test_logins_wait_for_the_accounts_and_databases_committed_before_them(mariadb, mariadb_test, proxy, tmp_path):
    """A connection opened in production after another one created its user, granted it, created its
    database: as fast as possible, its login (whatever its first command: clients start with SET NAMES)
    and a COM_CHANGE_USER to such a user come after those, as in production."""
    on_both((mariadb, mariadb_test), "DROP DATABASE IF EXISTS rs_login; DROP USER IF EXISTS rs_late@'%', rs_later@'%'")
    out = str(tmp_path / "cap")
    with Capture(proxy, out):
        admin = pymysql.connect(**connect_kwargs(proxy.port), autocommit=True)
        cur = admin.cursor()
        cur.execute("CREATE DATABASE rs_login")
        cur.execute("CREATE TABLE rs_login.t (who VARCHAR(80)) ENGINE=InnoDB")
        for user in ("rs_late", "rs_later"):
            cur.execute(f"CREATE USER {user}@'%' IDENTIFIED BY 'Prod-{user}-pw'")
            cur.execute(f"GRANT SELECT, INSERT ON rs_login.* TO {user}@'%'")
        late = pymysql.connect(host="127.0.0.1", port=proxy.port, user="rs_late", password="Prod-rs_late-pw",
                               database="rs_login", autocommit=True, charset="utf8mb4")
        late.cursor().execute("INSERT INTO t VALUES (CURRENT_USER())")
        late.close()
        with CapiConnection("127.0.0.1", proxy.port, "root", ROOT_PASSWORD) as capi:
            capi.change_user("rs_later", "Prod-rs_later-pw", "rs_login")
            capi.query("INSERT INTO t VALUES (CURRENT_USER())")
        admin.close()
    path = users_file(tmp_path / "users.toml", {"rs_late": "Test-late-pw", "rs_later": "Test-later-pw"})
    for speed in (1.0, 0):
        on_both((mariadb_test,), "DROP DATABASE IF EXISTS rs_login; DROP USER IF EXISTS rs_late@'%', rs_later@'%'")
        _, summary = replay_cli(mariadb_test.addr, out, "--speed", str(speed), "--users-file", path,
                                "--no-report-tables")
        _no_false_failures(summary)
        assert summary["change_users"] == 1, summary
        same_data(mariadb, mariadb_test, "rs_login")
    assert mariadb_test.sql("SELECT who FROM rs_login.t ORDER BY who").split() == ["rs_late@%", "rs_later@%"]


# ---- server-side closes, backend lost ------------------------------------------------------------
def test_a_connection_the_server_closed_is_not_reported_lost(mariadb, mariadb_test, proxy, tmp_path):
    on_both((mariadb, mariadb_test), "DROP DATABASE IF EXISTS rs_close; CREATE DATABASE rs_close;"
            "CREATE TABLE rs_close.t (id INT) ENGINE=InnoDB")
    out = str(tmp_path / "cap")
    with Capture(proxy, out):
        c = pymysql.connect(**connect_kwargs(proxy.port, database="rs_close"), autocommit=True)
        c.cursor().execute("SET SESSION wait_timeout = 1")
        c.cursor().execute("INSERT INTO t VALUES (1)")
        wait_for(lambda: len(proxy.get("/api/debug/connections")) == 0, 20, what="wait_timeout")
    # at half speed the replay server's wait_timeout closes it well before the capture says so
    for speed in (0.5, 1.0):
        mariadb_test.sql("DELETE FROM rs_close.t")
        summary, _ = replay_inprocess(mariadb_test.host, mariadb_test.port, out, speed=speed)
        _no_false_failures(summary)
        if speed == 0.5:
            assert summary["server_closes_as_captured"] == 1, summary
        same_data(mariadb, mariadb_test, "rs_close")


def test_commands_the_backend_never_answered_are_not_replayed(mariadb_private, mariadb_test, proxy_factory,
                                                              tmp_path):
    on_both((mariadb_private, mariadb_test), "DROP DATABASE IF EXISTS rs_lost; CREATE DATABASE rs_lost;"
            "CREATE TABLE rs_lost.t (v INT) ENGINE=InnoDB")
    proxy = proxy_factory([mariadb_private])
    out = str(tmp_path / "cap")
    with Capture(proxy, out):
        c = pymysql.connect(**connect_kwargs(proxy.port, database="rs_lost"), autocommit=True)
        c.cursor().execute("INSERT INTO t VALUES (1)")

        def kill_soon():
            wait_for(lambda: any(x["pending_commands"] for x in proxy.get("/api/debug/connections")), 20,
                     what="the insert to be in flight")
            mariadb_private.kill()

        t = threading.Thread(target=kill_soon)
        t.start()
        with pytest.raises(pymysql.err.OperationalError):
            c.cursor().execute("INSERT INTO t SELECT 2 FROM DUAL WHERE SLEEP(3) = 0")
        t.join()
    for replay_unknown, rows in ((False, "1"), (True, "1,2")):
        mariadb_test.sql("DELETE FROM rs_lost.t")
        summary, engine = replay_inprocess(mariadb_test.host, mariadb_test.port, out, speed=0,
                                           **({"replay_unknown": True} if replay_unknown else {}))
        assert summary["commands_failed"] == 0, summary["top_failures"]
        assert mariadb_test.sql("SELECT GROUP_CONCAT(v ORDER BY v) FROM rs_lost.t").strip() == rows
        assert summary["commands_not_executed_in_production"] == (0 if replay_unknown else 1), summary


# ---- LOAD DATA LOCAL INFILE ----------------------------------------------------------------------
def test_load_data_local_sends_the_captured_file(mariadb, mariadb_test, proxy_factory, tmp_path):
    on_both((mariadb, mariadb_test), "DROP DATABASE IF EXISTS rs_li; CREATE DATABASE rs_li;"
            "CREATE TABLE rs_li.t (a INT, b VARCHAR(40)) ENGINE=InnoDB")
    proxy = proxy_factory([mariadb], "--capture.local-infile=true", "--capture.local-infile-max-size=4KiB")
    small = tmp_path / "small.csv"
    small.write_bytes(b"".join(b"%d,row %d\n" % (i, i) for i in range(50)))
    large = tmp_path / "large.csv"
    large.write_bytes(b"".join(b"%d,big %d\n" % (i, i) for i in range(1000, 2000)))
    out = str(tmp_path / "cap")
    with Capture(proxy, out):
        c = pymysql.connect(**connect_kwargs(proxy.port, database="rs_li"), local_infile=True, autocommit=True)
        c.cursor().execute(f"LOAD DATA LOCAL INFILE '{small}' INTO TABLE t FIELDS TERMINATED BY ','")
        c.cursor().execute(f"LOAD DATA LOCAL INFILE '{large}' INTO TABLE t FIELDS TERMINATED BY ','")
        c.close()
    mariadb_test.sql("DELETE FROM rs_li.t")
    res, summary = replay_cli(mariadb_test.addr, out, "--speed", "0", "--no-report-tables")
    assert summary["commands_failed"] == 0
    # the small file's rows are there; the large one was too large to record: said, not hidden
    assert mariadb_test.sql("SELECT COUNT(*), MIN(a), MAX(a) FROM rs_li.t").split() == ["50", "0", "49"]
    assert (summary["local_infile_files_sent"], summary["local_infile_files_empty"]) == (1, 1), summary
    assert "1 answered with an empty file" in res.stdout


# ---- the current database on reconnects ----------------------------------------------------------
def test_a_reconnect_lands_in_the_current_database(mariadb, mariadb_test, proxy, tmp_path):
    on_both((mariadb, mariadb_test), "".join(
        f"DROP DATABASE IF EXISTS rs_db{i}; CREATE DATABASE rs_db{i}; CREATE TABLE rs_db{i}.t (v INT);"
        for i in range(4)))
    out = str(tmp_path / "cap")
    with Capture(proxy, out):
        c = pymysql.connect(**connect_kwargs(proxy.port, database="rs_db0"), autocommit=True,
                            client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS)
        cur = c.cursor()
        for sql, value in (("USE rs_db1 -- next one", 1), ("SELECT 1; USE rs_db2", 2),
                           ("/*!40101 USE rs_db3 */", 3)):
            cur.execute(sql)
            while cur.nextset():
                pass
            time.sleep(1.2)  # the replay connection is killed here, between the two
            cur.execute(f"INSERT INTO t VALUES ({value})")
        c.close()

    def kill_idle_replay_connections(engine):
        # kill the replay connection while an INSERT waits for its time: the INSERT needs a reconnect
        done = set()
        deadline = time.monotonic() + 60
        while len(done) < 3 and time.monotonic() < deadline and not engine._done.is_set():
            for c in list(engine.conns.values()):
                head = c.queue[0] if c.queue else None
                if (head is not None and head.payload.startswith(b"\x03INSERT") and head.start_ns not in done
                        and not c.busy and c.client is not None and c.client.ready):
                    done.add(head.start_ns)
                    mariadb_test.sql(f"KILL {c.client.connection_id}")
            time.sleep(0.005)

    summary, engine = replay_inprocess(mariadb_test.host, mariadb_test.port, out, speed=1.0,
                                       during=kill_idle_replay_connections)
    assert summary["commands_failed"] == 0, summary["top_failures"]
    assert summary["reconnects"] >= 1, summary  # (under heavy load an INSERT may go before its kill)
    for i in range(4):
        same_data(mariadb, mariadb_test, f"rs_db{i}")
    for i in (1, 2, 3):
        assert mariadb_test.sql(f"SELECT GROUP_CONCAT(v) FROM rs_db{i}.t").strip() == str(i)


def test_users_file_through_the_api(mariadb, mariadb_test, proxy, proxy_factory, tmp_path):
    """`fastproxy traffic replay --users-file PATH`: the path goes to the proxy (the passwords do not
    travel through the API); a file others can read is refused with 400."""
    _create_users(mariadb, mariadb_test)
    out = str(tmp_path / "cap")
    with Capture(proxy, out):
        w = MySQLdb.connect(host="127.0.0.1", port=proxy.port, user="rs_writer", password=USERS["rs_writer"],
                            database="rs_users", autocommit=True)
        w.cursor().execute("INSERT INTO t VALUES (1, CURRENT_USER())")
        w.close()
    test_proxy = proxy_factory([mariadb_test])
    loose = users_file(tmp_path / "loose.toml", USERS, mode=0o640)
    status, body = test_proxy.post("/api/traffic/replay", {"input": out, "username": "root",
                                                           "password": ROOT_PASSWORD, "users-file": loose})
    assert status == 400 and "chmod 600" in body and USERS["rs_writer"] not in body, (status, body)
    from replay_util import wait_job
    from capture_util import run_cli

    path = users_file(tmp_path / "users.toml", USERS)
    res = run_cli("traffic", "replay", "--curls", test_proxy.api, "--input", out, "--username", "root",
                  "--password", ROOT_PASSWORD, "--users-file", path, "--speed", "0")
    assert res.returncode == 0, res.stderr
    job = wait_job(test_proxy, "replay")
    assert job["status"] == "done" and job["failed"] == 0 and job["other_errors"] == 0, job
    assert mariadb_test.sql("SELECT who FROM rs_users.t").split() == ["rs_writer@%"]


def test_put_back_secrets_never_reach_the_report(mariadb, mariadb_private, proxy, tmp_path):
    """Issue 7 review: replay puts the users file's password into a redacted CREATE USER; when the target
    refuses the statement, its error message quotes the text near the error, password included (a
    syntax error after an upgrade: here the target's sessions read backslashes otherwise). Neither the
    `fail` table nor the summary files may hold it."""
    mariadb.sql("DROP USER IF EXISTS 'rs\\'q'@'%', rs_cut@'%'")
    out = str(tmp_path / "cap")
    with Capture(proxy, out):
        admin = pymysql.connect(**connect_kwargs(proxy.port), autocommit=True)
        cur = admin.cursor()
        cur.execute("CREATE USER 'rs\\'q'@'%' IDENTIFIED BY 'Prod-q-pw'")
        # a long statement: the server's message quotes 80 characters, which may cut the password
        cur.execute("CREATE USER 'rs\\'q" + "x" * 39 + "'@'%' IDENTIFIED BY 'Prod-cut-pw'")
        admin.close()
    assert not any(b"Prod-" in r.payload for r in records(out))
    mariadb_private.sql("SET GLOBAL sql_mode = CONCAT(@@global.sql_mode, ',NO_BACKSLASH_ESCAPES')")
    secret, cut = "Test-q-pw-" + "7" * 8, "Test-cut-pw-" + "8" * 8
    path = users_file(tmp_path / "users.toml", {"rs'q": secret, "rs'q" + "x" * 39: cut})
    report_dir = tmp_path / "reports"
    _, summary = replay_cli(mariadb_private.addr, out, "--speed", "0", "--users-file", path,
                            "--report-dir", str(report_dir))
    assert summary["commands_failed"] == 2 and summary["secrets_from_users_file"] == 2, summary
    tables = mariadb_private.sql("SELECT sample_stmt, sample_err_msg FROM tiproxy_traffic_report.fail")
    assert "1064" in tables and PLACEHOLDER in tables, tables
    texts = [tables] + [p.read_text() for p in report_dir.iterdir()]
    for text in texts:
        for pw in (secret, cut):
            for k in range(6, len(pw) + 1):     # nor any part of it the message cut off
                assert pw[:k] not in text, (pw[:k], text)
