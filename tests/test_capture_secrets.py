"""Secrets through the whole path, on real servers: a client sends secret-bearing SQL through a real
proxy while a capture runs; the secret must be in none of the capture's files, the replay's report
tables or summary files, nor in `GET /api/debug/connections`. What can be redacted is recorded with
'__fastproxy_redacted__' in place of the secret (so replay can run it); the rest is dropped.

The classifier itself, spelling by spelling, is tested in test_secret_sql.py.
"""
from __future__ import annotations

import datetime
import glob
import json
import os
import secrets
import struct

import MySQLdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from MySQLdb.constants import CLIENT

from capture_rawclient import ps_client
from capture_util import cancel_capture, cmd, read_capture, start_capture
from conftest import connect_kwargs
from fastproxy.capture.record import KIND_CONN_STATE
from fastproxy.inputs import open_input
from fastproxy.inputs.common import DROPPED_STAT
from fastproxy.scratch_db import ROOT_PASSWORD
from proxy_rawclient import packet
from replay_util import replay_cli
from fastproxy.secret_sql import CLEAN, classify
from test_secret_sql import secret_statements
from tiproxy_format import encode_command, write_capture

pytestmark = pytest.mark.timeout(300)

REDACTED = b"'__fastproxy_redacted__'"


def _multi(port: int):
    return MySQLdb.connect(**connect_kwargs(port), autocommit=True, client_flag=CLIENT.MULTI_STATEMENTS)


def _run(cur, sql: str) -> None:
    """A (multi-)statement; its errors do not matter here (a failed command is captured all the same)."""
    try:
        cur.execute(sql)
        while cur.nextset():
            pass
    except MySQLdb.MySQLError:
        pass


def _capture_bytes(out) -> list[bytes]:
    """Every file of the capture directory, and every record's payload read back."""
    blobs = [open(path, "rb").read() for path in glob.glob(os.path.join(out, "*"))]
    _, records, _ = read_capture(out)
    return blobs + [r.payload for r in records]


def _target_tables_text(db) -> str:
    return db.sql("SELECT * FROM tiproxy_traffic_report.fail; SELECT * FROM tiproxy_traffic_report.other_errors")


# ---- the bypasses named in issue 7, through capture and replay ------------------------------------
def test_bypasses_reach_neither_capture_nor_replay_report(mariadb, mariadb_test, proxy_factory, tmp_path):
    """`SET/**/PASSWORD ... OLD_PASSWORD('s')`, `SET -- c\\nPASSWORD ...` and a secret after 64 KiB of a
    multi-statement were written by the old regex filter, and from there reached the replay's `fail`
    table and `-fail.jsonl`."""
    pw = {k: f"Pw-{k}-{secrets.token_hex(6)}" for k in ("comment", "dashes", "late")}
    pw["hash"] = "*" + secrets.token_hex(20).upper()   # a mysql_native_password hash: a secret too
    mariadb.sql("CREATE OR REPLACE USER 'h7x'@'%' IDENTIFIED BY 'init';")
    mariadb_test.sql("DROP USER IF EXISTS 'h7x'@'%';")  # on replay the statements fail: into the report
    proxy = proxy_factory([mariadb])
    out = tmp_path / "capture"
    start_capture(proxy, out, compress="false")   # uncompressed: a leaked secret would be in the files as is
    conn = _multi(proxy.port)
    cur = conn.cursor()
    cur.execute(f"SET/**/PASSWORD FOR 'h7x'@'%' = OLD_PASSWORD('{pw['comment']}')")
    cur.execute(f"SET -- c\nPASSWORD FOR 'h7x'@'%' = OLD_PASSWORD('{pw['dashes']}')")
    cur.execute("SELECT '" + "a" * 70000 + f"'; ALTER USER 'h7x'@'%' IDENTIFIED BY '{pw['late']}'")
    while cur.nextset():
        pass
    cur.execute(f"SET # c\nPASSWORD FOR 'h7x'@'%' = '{pw['hash']}'")
    cur.execute("SELECT 'done'")
    conn.close()
    job = cancel_capture(proxy)
    for blob in _capture_bytes(out):
        for what, secret in pw.items():
            assert secret.encode() not in blob, f"the {what} secret is in the capture"
    assert job["redacted_commands"] == 4 and job["filtered_commands"] == 0, job
    meta, records, _ = read_capture(out)
    queries = [r.payload[1:] for r in records if cmd(r) == "COM_QUERY"]
    assert f"SET/**/PASSWORD FOR 'h7x'@'%' = OLD_PASSWORD({REDACTED.decode()})".encode() in queries
    assert f"SET -- c\nPASSWORD FOR 'h7x'@'%' = OLD_PASSWORD({REDACTED.decode()})".encode() in queries
    assert ("SELECT '" + "a" * 70000 + f"'; ALTER USER 'h7x'@'%' IDENTIFIED BY {REDACTED.decode()}").encode() in queries
    assert f"SET # c\nPASSWORD FOR 'h7x'@'%' = {REDACTED.decode()}".encode() in queries

    # the replay runs the redacted statements (the user is missing there: they fail and are reported)
    report_dir = str(tmp_path / "reports")
    _, summary = replay_cli(mariadb_test.addr, str(out), "--speed", "0", "--report-dir", report_dir)
    assert summary["report_tables_error"] == "", summary
    assert summary["commands_failed"] >= 4, summary
    tables = _target_tables_text(mariadb_test)
    assert "__fastproxy_redacted__" in tables
    files = glob.glob(os.path.join(report_dir, "*"))
    assert any(f.endswith("-fail.jsonl") for f in files), files
    for text in [tables] + [open(f, encoding="utf-8", errors="replace").read() for f in files]:
        for what, secret in pw.items():
            assert secret not in text, f"the {what} secret is in the replay report"


def _password_is(db, user: str, secret: str) -> bool:
    return db.sql(f"SELECT authentication_string = PASSWORD('{secret}') FROM mysql.user "
                  f"WHERE user = '{user}' AND host = '%'").split() == ["1"]


def test_review_bypasses_ran_on_the_server_and_reach_no_file(mariadb, proxy_factory, tmp_path):
    """Issue 7 review: spellings the token classifier called clean, each of which MariaDB ran: a
    versioned comment the server skips (its body ends at the first */, quotes or not), a back-quoted
    function name, dynamic SQL assembled from pieces, a session switched to gbk after its handshake,
    an ODBC connection string (the CONNECT engine is not even loaded: the failed statement is captured
    all the same)."""
    pw = {k: f"Pw{k}{secrets.token_hex(5)}" for k in ("versioned", "quoted", "pieces", "gbk", "odbc")}
    mariadb.sql("CREATE OR REPLACE USER 'h7r'@'%' IDENTIFIED BY 'init'; CREATE DATABASE IF NOT EXISTS h7r;")
    proxy = proxy_factory([mariadb])
    out = tmp_path / "capture"
    start_capture(proxy, out, compress="false")
    conn = _multi(proxy.port)
    cur = conn.cursor()
    _run(cur, f"/*!999999 ' */ SET PASSWORD FOR 'h7r'@'%' = PASSWORD('{pw['versioned']}') -- ' */")
    assert _password_is(mariadb, "h7r", pw["versioned"])
    cur.execute(f"SELECT `password`('{pw['quoted']}')")
    assert cur.fetchall()[0][0].startswith("*")
    _run(cur, f"PREPARE h7r FROM CONCAT('ALTER USER ''h7r''@''%'' IDENT', 'IFIED BY ''{pw['pieces']}'''); "
              f"EXECUTE h7r; DEALLOCATE PREPARE h7r")
    assert _password_is(mariadb, "h7r", pw["pieces"])
    cur.execute("SET NAMES gbk")
    _run(cur, b"SELECT 1 AS a\xbf` ; SET PASSWORD FOR 'h7r'@'%' = PASSWORD(\"" + pw["gbk"].encode()
         + b"\"); -- `")
    assert _password_is(mariadb, "h7r", pw["gbk"])
    cur.execute("SET NAMES utf8mb4")
    _run(cur, f"CREATE TABLE h7r.c (a INT) ENGINE=CONNECT TABLE_TYPE=ODBC CONNECTION='DSN=d;UID=u;PWD={pw['odbc']}'")
    cur.execute("SELECT 'done'")
    conn.close()
    job = cancel_capture(proxy)
    for blob in _capture_bytes(out):
        for what, secret in pw.items():
            assert secret.encode() not in blob, f"the {what} secret is in the capture"
    assert (job["redacted_commands"], job["filtered_commands"]) == (1, 4), job   # the quoted name: redacted
    _, records, _ = read_capture(out)
    assert f"SELECT `password`({REDACTED.decode()})".encode() in [r.payload[1:] for r in records]


# ---- property: generated spellings, through a real proxy into real files --------------------------
@settings(max_examples=4, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(batch=st.lists(secret_statements(), min_size=12, max_size=12))
def test_property_secrets_never_written(mariadb_private_shared, batch):
    """Any secret-bearing statement, with comments, whitespace and case varied and inside
    multi-statements (also after more than 64 KiB), sent through the proxy, is never written."""
    _, proxy, tmp = mariadb_private_shared
    out = os.path.join(tmp, f"cap-{secrets.token_hex(4)}")
    start_capture(proxy, out, compress="false")
    conn = _multi(proxy.port)
    cur = conn.cursor()
    for sql, _ in batch:
        _run(cur, sql)
    cur.execute("SELECT 'batch done'")
    conn.close()
    job = cancel_capture(proxy)
    blobs = _capture_bytes(out)
    for sql, secret in batch:
        assert not any(secret.encode() in blob for blob in blobs), sql[:200]
    # each statement carries a secret: each one is either recorded redacted or not at all
    assert job["redacted_commands"] + job["filtered_commands"] == len(batch), job
    meta, records, _ = read_capture(out)
    assert sum(REDACTED in r.payload for r in records) == job["redacted_commands"]


@pytest.fixture(scope="module")
def mariadb_private_shared(tmp_path_factory):
    """A server of this module's own (the statements change users, servers, replication settings)."""
    from conftest import start_proxy, stop_proxy
    from fastproxy.scratch_db import ScratchMariaDB

    with ScratchMariaDB(name="secrets") as db:
        db.sql("CREATE USER u1 IDENTIFIED BY 'x'; CREATE USER u1@localhost; CREATE DATABASE h7;"
               "CREATE TABLE h7.t (id INT, a TEXT, b TEXT, password TEXT);")
        proxy = start_proxy([db])
        try:
            yield db, proxy, str(tmp_path_factory.mktemp("secret-captures"))
        finally:
            stop_proxy(proxy)


# ---- COM_STMT_PREPARE: debug API and CONN_STATE ----------------------------------------------------
def test_prepared_secrets_in_debug_api_and_conn_state(mariadb, proxy_factory, tmp_path):
    """`GET /api/debug/connections` printed prepared statements as they were, passwords included."""
    pw = f"Pw-api-{secrets.token_hex(6)}"
    key = f"Key-api-{secrets.token_hex(6)}"
    mariadb.sql("CREATE OR REPLACE USER 'h7api'@'%' IDENTIFIED BY 'init';")
    proxy = proxy_factory([mariadb])
    raw = ps_client(proxy.port, "root", ROOT_PASSWORD)
    alter = raw.prepare(f"ALTER USER 'h7api'@'%' IDENTIFIED BY '{pw}'")
    # redactable only by guessing which part of the expression is the key: hidden
    aes = raw.prepare(f"SELECT AES_ENCRYPT('x', CONCAT('{key}', 'suffix'))")
    plain = raw.prepare("SELECT 1")
    body = json.dumps(proxy.get("/api/debug/connections"))
    assert pw not in body and key not in body
    conn = next(c for c in proxy.get("/api/debug/connections") if str(alter) in c["prepared"])
    assert conn["prepared"] == {str(alter): f"ALTER USER 'h7api'@'%' IDENTIFIED BY {REDACTED.decode()}",
                                str(aes): None, str(plain): "SELECT 1"}

    # prepared before the capture: CONN_STATE holds the redacted text, not the one it cannot redact
    out = tmp_path / "capture"
    start_capture(proxy, out, compress="false")
    assert raw.execute(alter).kind == "ok"
    assert raw.execute(aes).kind == "rows"
    raw.quit()
    job = cancel_capture(proxy)
    assert (job["redacted_commands"], job["filtered_commands"]) == (1, 2), job  # aes: its state + its execute
    for blob in _capture_bytes(out):
        assert pw.encode() not in blob and key.encode() not in blob
    _, records, _ = read_capture(out)
    states = [json.loads(r.payload) for r in records if r.kind == KIND_CONN_STATE and b"h7api" in r.payload]
    assert [s["prepared"] for s in states] == [[[alter, f"ALTER USER 'h7api'@'%' IDENTIFIED BY {REDACTED.decode()}"],
                                                [plain, "SELECT 1"]]]


def _execute_with_string(raw, stmt_id: int, value: bytes):
    """COM_STMT_EXECUTE binding one VAR_STRING parameter (types sent: new-params-bound = 1)."""
    body = (b"\x17" + struct.pack("<IBI", stmt_id, 0, 1) + b"\x00" + b"\x01" + b"\xfd\x00"
            + bytes([len(value)]) + value)
    raw.send(packet(0, body))
    return raw._result()


def test_secret_as_prepared_parameter(mariadb, proxy_factory, tmp_path):
    """`SELECT PASSWORD(?)` holds no secret itself; each COM_STMT_EXECUTE carries one. The statement,
    its executes and its close are not written; the rest of the session is."""
    pw = f"Pw-param-{secrets.token_hex(6)}"
    proxy = proxy_factory([mariadb])
    out = tmp_path / "capture"
    start_capture(proxy, out, compress="false")
    raw = ps_client(proxy.port, "root", ROOT_PASSWORD)
    hidden = raw.prepare("SELECT PASSWORD(?)")
    assert _execute_with_string(raw, hidden, pw.encode()).rows == 1
    raw.close_stmt(hidden)
    kept = raw.prepare("SELECT CONCAT(?, 'x')")
    assert _execute_with_string(raw, kept, b"kept").rows == 1
    raw.quit()
    job = cancel_capture(proxy)
    for blob in _capture_bytes(out):
        assert pw.encode() not in blob
    _, records, _ = read_capture(out)
    prepares = [r.payload[1:] for r in records if cmd(r) == "COM_STMT_PREPARE"]
    assert prepares == [b"SELECT CONCAT(?, 'x')"], prepares
    executes = [r for r in records if cmd(r) == "COM_STMT_EXECUTE"]
    assert len(executes) == 1 and executes[0].payload.endswith(b"kept")
    assert not any(cmd(r) == "COM_STMT_CLOSE" for r in records)
    assert (job["filtered_commands"], job["redacted_commands"]) == (3, 0), job   # prepare, execute, close


def test_bulk_execute_of_a_dropped_prepare_is_not_recorded(mariadb, proxy_factory, tmp_path):
    """MariaDB's COM_STMT_BULK_EXECUTE (0xFA) carries bound values like COM_STMT_EXECUTE: the bulk
    executes of a prepare the capture dropped (its ? is an AES key) were recorded, key and all."""
    key = f"Key-bulk-{secrets.token_hex(6)}"
    mariadb.sql("CREATE DATABASE IF NOT EXISTS h7b; CREATE OR REPLACE TABLE h7b.t (c VARBINARY(100));")
    proxy = proxy_factory([mariadb])
    out = tmp_path / "capture"
    start_capture(proxy, out, compress="false")
    raw = ps_client(proxy.port, "root", ROOT_PASSWORD)
    hidden = raw.prepare("INSERT INTO h7b.t VALUES (AES_ENCRYPT('x', ?))")
    # flags 128 (types sent), one VAR_STRING parameter, one row: indicator 0, then the value
    body = (b"\xfa" + struct.pack("<IH", hidden, 128) + b"\xfe\x00" + b"\x00"
            + bytes([len(key)]) + key.encode())
    raw.send(packet(0, body))
    raw.read_packet()   # the server may refuse it (bulk operations not negotiated): recorded all the same
    raw.quit()
    job = cancel_capture(proxy)
    for blob in _capture_bytes(out):
        assert key.encode() not in blob
    _, records, _ = read_capture(out)
    assert not [cmd(r) for r in records if cmd(r) in ("COM_STMT_PREPARE", "COM_STMT_BULK_EXECUTE")]
    assert job["filtered_commands"] == 2, job   # the prepare and its bulk execute


def test_user_variables_holding_secrets_are_left_out_of_conn_state(mariadb, proxy_factory, tmp_path):
    """A session open before the capture: its user variables' values went into CONN_STATE unchecked
    (hex), secret SQL kept for a later PREPARE ... FROM @q and password hashes included. Such a
    variable is left out, and the session is said not rebuilt in full."""
    pw = f"Pw-uvar-{secrets.token_hex(6)}"
    hashed = f"Pw-hash-{secrets.token_hex(6)}"
    proxy = proxy_factory([mariadb])
    conn = MySQLdb.connect(**connect_kwargs(proxy.port), autocommit=True)
    cur = conn.cursor()
    cur.execute(f"SET @q = 'ALTER USER h7uv IDENTIFIED BY ''{pw}'''")   # dropped by the capture if it ran during it
    cur.execute(f"SET @h = PASSWORD('{hashed}')")
    cur.execute("SELECT PASSWORD(%s)", (hashed,))
    hash_text = cur.fetchone()[0]
    hash_text = hash_text.decode() if isinstance(hash_text, bytes) else hash_text
    cur.execute("SET @plain = 'kept', @n = 7")
    out = tmp_path / "capture"
    start_capture(proxy, out, compress="false")
    cur.execute("SELECT 'first'")   # the state is read at this boundary
    job = cancel_capture(proxy)
    conn.close()
    for blob in _capture_bytes(out):
        for secret in (pw, hash_text, pw.encode().hex().upper(), hash_text.encode().hex().upper()):
            assert secret.encode() not in blob, secret
    _, records, _ = read_capture(out)
    (state,) = [json.loads(r.payload) for r in records if r.kind == KIND_CONN_STATE]
    assert sorted(u["name"] for u in state["user_vars"]) == ["n", "plain"], state["user_vars"]
    assert [why for why in state["not_rebuilt"] if "user variable" in why] == [
        "user variable @q: its value holds a secret", "user variable @h: its value holds a secret"]
    assert job["sessions_not_rebuilt"] == 1, job


def test_tiproxy_input_filters_statements_prepared_before_its_capture(tmp_path):
    """A TiProxy capture's executes carry the text of statements prepared before it (Prepared_stmt):
    that text went into a CONN_STATE record unfiltered, and the executes of `SELECT PASSWORD(?)` (prepared
    before, or prepared during it and dropped) kept their bound value. Filtered as the capture does."""
    t = datetime.datetime(2024, 12, 3, 11, 5, 1, tzinfo=datetime.timezone.utc)
    ms = lambda n: t + datetime.timedelta(milliseconds=n)  # noqa: E731
    key, pw1, pw2 = (f"Zq-{what}-{secrets.token_hex(6)}" for what in ("key", "pw1", "pw2"))

    def execute(ps_id: int, value: str) -> bytes:
        v = value.encode()
        return (b"\x17" + ps_id.to_bytes(4, "little") + b"\x00" + (1).to_bytes(4, "little") + b"\x00\x01"
                + b"\xfe\x00" + bytes([len(v)]) + v)

    body = b"".join([
        encode_command(ms(0), 21, b"\x02mysql"),
        encode_command(ms(2), 21, execute(9, "plain"), ps_id=9, prepared=f"SELECT AES_ENCRYPT(?, '{key}')"),
        encode_command(ms(3), 21, execute(10, pw1), ps_id=10, prepared="SELECT PASSWORD(?)"),
        encode_command(ms(4), 21, b"\x16SELECT PASSWORD(?)", ps_id=11),
        encode_command(ms(5), 21, execute(11, pw2), ps_id=11, prepared="SELECT PASSWORD(?)"),
        encode_command(ms(6), 21, b"\x19" + (11).to_bytes(4, "little"), ps_id=11),
        encode_command(ms(7), 21, execute(12, "kept"), ps_id=12, prepared="SELECT CONCAT(?, 'x')"),
        encode_command(ms(8), 21, b"\x01"),
    ])
    cap = tmp_path / "tiproxy"
    write_capture(str(cap), [body], cmds=8)
    src = open_input(str(cap))
    recs = list(src)
    for r in recs:
        for secret in (key, pw1, pw2):
            assert secret.encode() not in r.payload, r
    states = [json.loads(r.payload)["prepared"] for r in recs if r.kind == KIND_CONN_STATE]
    assert states == [[[9, f"SELECT AES_ENCRYPT(?, {REDACTED.decode()})"]], [[12, "SELECT CONCAT(?, 'x')"]]]
    executes = [r.payload for r in recs if r.payload[:1] in (b"\x16", b"\x17", b"\x19")]
    assert executes == [execute(9, "plain"), execute(12, "kept")]
    # dropped: the two texts (10 before the capture, 11's prepare) and 10's execute, 11's execute and close
    assert src.stats[DROPPED_STAT] == 5 and src.redacted == 1, (src.stats, src.redacted)


def test_execute_of_the_last_prepared_statement_by_id_minus_one(mariadb, proxy_factory, tmp_path):
    """MariaDB runs a statement command whose id is 0xFFFFFFFF on the last statement prepared
    (mariadb_stmt_execute_direct): such an execute of a dropped `SELECT PASSWORD(?)` was recorded with
    its bound password, the filter looking for a statement 0xFFFFFFFF."""
    pw = f"Pw-last-{secrets.token_hex(6)}"
    proxy = proxy_factory([mariadb])
    out = tmp_path / "capture"
    start_capture(proxy, out, compress="false")
    raw = ps_client(proxy.port, "root", ROOT_PASSWORD)
    raw.prepare("SELECT PASSWORD(?)")
    assert _execute_with_string(raw, 0xFFFFFFFF, pw.encode()).rows == 1   # the server ran it
    kept = raw.prepare("SELECT CONCAT(?, 'x')")
    assert _execute_with_string(raw, 0xFFFFFFFF, b"kept").rows == 1
    raw.quit()
    job = cancel_capture(proxy)
    for blob in _capture_bytes(out):
        assert pw.encode() not in blob
    _, records, _ = read_capture(out)
    executes = [r.payload for r in records if cmd(r) == "COM_STMT_EXECUTE"]
    assert len(executes) == 1 and executes[0].endswith(b"kept"), executes
    assert [r.payload[1:] for r in records if cmd(r) == "COM_STMT_PREPARE"] == [b"SELECT CONCAT(?, 'x')"]
    assert kept and job["filtered_commands"] == 2, job   # the prepare and its execute


def test_python_relay_resolves_the_last_prepared_statement_id():
    """The same for connections relayed in Python (TLS): id 0xFFFFFFFF is the connection's last
    prepare; unknown (prepared before the capture), any dropped statement of the connection may be it."""
    from fastproxy.capture.job import CaptureJob

    job = CaptureJob.__new__(CaptureJob)   # only the statement bookkeeping is looked at
    job._filtered_stmts, job._last_prepared = {(1, 5)}, {1: 5}
    assert job._names_filtered(1, 0xFFFFFFFF) and job._names_filtered(1, 5) and not job._names_filtered(1, 6)
    job._last_prepared = {1: 6}
    assert not job._names_filtered(1, 0xFFFFFFFF)
    job._last_prepared = {}
    assert job._names_filtered(1, 0xFFFFFFFF) and not job._names_filtered(2, 0xFFFFFFFF)


# ---- differential: the real server's lexer decides what ran ---------------------------------------
NOISE = ["'", '"', "\\", "\\'", '\\"', "''", '""', "/*", "*/", "/*!", "-- ", "#", "\n", "`", "x", " ", ";", "*"]


@st.composite
def hidden_secrets(draw):
    """A secret-bearing statement after a SELECT whose string or comment holds quotes, backslashes and
    comment markers: depending on the session, the statement is inside that string or comment, or runs."""
    noise = "".join(draw(st.lists(st.sampled_from(NOISE), max_size=8)))
    opener = draw(st.sampled_from(["SELECT '{}'", 'SELECT "{}"', "SELECT 1 /*{}*/", "SELECT 1 -- {}\n",
                                   "SELECT 1 /*!{}*/", "SELECT `{}`", "SELECT '{}", 'SELECT "{}',
                                   "SELECT 1 /*!99999{}*/", "SELECT 1 /*M!999999{}*/"]))
    secret = "Zq" + draw(st.text("abcdefgh0123456789", min_size=8, max_size=12))
    stmt = draw(st.sampled_from(["ALTER USER u1 IDENTIFIED BY '{}'", "SET PASSWORD FOR u1 = PASSWORD('{}')",
                                 "SET/**/PASSWORD FOR u1 = OLD_PASSWORD('{}')"])).format(secret)
    tail = "".join(draw(st.lists(st.sampled_from(NOISE), max_size=4)))
    return opener.format(noise) + ";" + stmt + ";" + tail, secret


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=hidden_secrets())
def test_property_what_the_server_ran_is_never_clean(mariadb_private_shared, case):
    """Whenever MariaDB, in any of the session modes below, actually set u1's password from the text,
    the classifier did not call the text clean, and what it would record holds no secret."""
    db, _, _ = mariadb_private_shared
    sql, secret = case
    verdict, recorded = classify(sql.encode())
    ran = []
    for mode in ("", "NO_BACKSLASH_ESCAPES", "ANSI_QUOTES"):
        conn = MySQLdb.connect(host="127.0.0.1", port=db.port, user="root", password=ROOT_PASSWORD,
                               autocommit=True, client_flag=CLIENT.MULTI_STATEMENTS)
        try:
            cur = conn.cursor()
            cur.execute(f"SET SESSION sql_mode = '{mode}'")
            cur.execute("SET PASSWORD FOR u1 = PASSWORD('reset')")
            _run(cur, sql)
            cur.execute("SELECT authentication_string IN (PASSWORD(%s), OLD_PASSWORD(%s)) FROM mysql.user "
                        "WHERE user = 'u1' AND host = '%%'", (secret, secret))
            if cur.fetchone()[0]:
                ran.append(mode or "default")
        finally:
            conn.close()
    if ran:
        assert verdict != CLEAN, (ran, sql)
        assert recorded is None or secret.encode() not in recorded, (ran, sql)
