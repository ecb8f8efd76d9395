"""What a statement does, for causal order and pinning (fastproxy/replay/stmtinfo.py), what a
view or trigger body names (schema.py), and how pins are sent (pinning.py)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastproxy.replay.causal import PIN_ID, PIN_PREFIX, PIN_TIME
from fastproxy.replay.pinning import RESET, pin, timestamp_value
from fastproxy.replay.schema import TableScopes, body_tables
from fastproxy.replay.stmtinfo import (BEGIN, COMMIT, DDL, LOCK, NAMED_LOCKS, READ, ROLLBACK, SESSION, UNKNOWN,
                                       Classifier, classify)


@pytest.mark.parametrize("sql, kind, tables", [
    ("SELECT c FROM sbtest1 WHERE id = 5", READ, ("sbtest1",)),
    ("select * from db1.t1 a join `T2` as b on a.x = b.y, t3 where 1", READ, ("t1", "t2", "t3")),
    ("SELECT * FROM a, (SELECT 1 FROM c, d) x, e WHERE f IN (SELECT 1 FROM g)", READ, ("a", "c", "d", "e", "g")),
    ("SELECT 'from fake' FROM real_one", READ, ("real_one",)),      # literals never name tables
    ("SELECT * FROM `from` WHERE 1", READ, ("from",)),
    ("(SELECT 1 FROM a) UNION (SELECT 2 FROM b)", READ, ("a", "b")),
    ("SELECT id FROM jobs WHERE s = 'new' LIMIT 1 FOR UPDATE SKIP LOCKED", LOCK, ("jobs",)),
    ("SELECT * FROM t LOCK IN SHARE MODE", LOCK, ("t",)),
    ("SELECT GET_LOCK('x', 1)", LOCK, (NAMED_LOCKS,)),
    ("SELECT NOW(), @@version", READ, ()),
    ("INSERT INTO `Orders` (a, b) VALUES (1, 'x'), (2, 'y')", LOCK, ("orders",)),
    ("INSERT t VALUES (1)", LOCK, ("t",)),
    ("INSERT INTO t SELECT * FROM s ON DUPLICATE KEY UPDATE a = 1", LOCK, ("s", "t")),
    ("REPLACE LOW_PRIORITY INTO t VALUES (1)", LOCK, ("t",)),
    ("UPDATE t1 JOIN t2 ON t1.a = t2.a SET t1.b = 1", LOCK, ("t1", "t2")),
    ("DELETE t1, t2 FROM t1 INNER JOIN t2 ON 1", LOCK, ("t1", "t2")),
    ("DELETE FROM a USING a, b WHERE 1", LOCK, ("a", "b")),
    ("WITH c AS (SELECT x FROM y) INSERT INTO z SELECT * FROM c", LOCK, ("c", "y", "z")),
    ("LOAD DATA LOCAL INFILE 'f' INTO TABLE t", LOCK, ("t",)),
    ("CREATE TABLE x (id INT, p INT REFERENCES parent (id))", DDL, ("parent", "x")),
    ("ALTER TABLE c ADD CONSTRAINT fk FOREIGN KEY (p) REFERENCES par (id)", DDL, ("c", "par")),
    ("DROP TABLE IF EXISTS a, b", DDL, ("a", "b")),
    ("TRUNCATE t", DDL, ("t",)),
    ("RENAME TABLE a TO b, c TO d", DDL, ("a", "b", "c", "d")),
    ("CREATE UNIQUE INDEX i ON t (a)", DDL, ("t",)),
    ("LOCK TABLES t1 READ, t2 AS x WRITE", DDL, ("t1", "t2")),
    ("CREATE OR REPLACE DEFINER = root@localhost VIEW v AS SELECT * FROM t1 JOIN t2", DDL, ("t1", "t2", "v")),
    ("CREATE TEMPORARY TABLE tt AS SELECT * FROM t", READ, ("t",)),
    ("DROP TEMPORARY TABLE tt", SESSION, ()),
    ("BEGIN", BEGIN, ()),
    ("START TRANSACTION READ ONLY", BEGIN, ()),
    ("COMMIT", COMMIT, ()),
    ("ROLLBACK", ROLLBACK, ()),
    ("ROLLBACK TO SAVEPOINT a", SESSION, ()),
    ("SAVEPOINT a", SESSION, ()),
    ("SET @a := (SELECT MAX(id) FROM t)", READ, ("t",)),
    ("SET NAMES utf8mb4", SESSION, ()),
    ("SET PASSWORD FOR u@'%' = PASSWORD('x')", UNKNOWN, None),   # an account: later logins depend on it
    ("set password = 'x'", UNKNOWN, None),
    ("SET DEFAULT ROLE r FOR u", UNKNOWN, None),
    ("SET ROLE r", SESSION, ()),
    # a global variable: what later sessions start with (logins and statements after it see it)
    ("SET GLOBAL sql_mode = ''", UNKNOWN, None),
    ("set @@GLOBAL.max_connections = 10, @@session.x = 1", UNKNOWN, None),
    ("SET SESSION wait_timeout = 10, GLOBAL wait_timeout = 20", UNKNOWN, None),
    ("SET PERSIST max_connections = 10", UNKNOWN, None),
    # reads it: after an earlier SET GLOBAL (what is of unknown scope), and nothing else
    ("SET sql_mode = @@global.sql_mode", READ, ()),
    ("SET SESSION sql_mode = CONCAT(@@GLOBAL.sql_mode, ',ANSI_QUOTES')", READ, ()),
    ("SET SESSION sql_mode = ''", SESSION, ()),
    ("SET @global = 1, @@session.global_x = 2", SESSION, ()),
    ("SHOW WARNINGS", SESSION, ()),
    ("SHOW TABLES", READ, None),
    ("USE db", READ, None),
    ("EXPLAIN SELECT * FROM t", READ, ("t",)),
    ("DESCRIBE t", READ, ("t",)),
    ("CALL p()", UNKNOWN, None),
    ("EXECUTE stmt", UNKNOWN, None),
    ("BEGIN NOT ATOMIC SELECT 1; END", UNKNOWN, None),
    ("SELECT NEXTVAL(s)", UNKNOWN, None),
    ("SET STATEMENT max_statement_time = 1 FOR UPDATE t SET a = 1", LOCK, ("t",)),
    ("", SESSION, ()),
    # ".." where a table name goes names a table under ANSI_QUOTES: which one is not known
    ('INSERT INTO "events" (kind) VALUES (@who)', LOCK, None),
    ('SELECT * FROM t1 JOIN "t2" ON 1', READ, None),
    ('UPDATE "t" SET v = 1', LOCK, None),
    ('SELECT "a", b FROM t WHERE c IN ("x", "y") LIMIT 10, 20', READ, ("t",)),  # strings elsewhere: strings
])
def test_kinds_and_tables(sql, kind, tables):
    info = classify(sql)
    assert (info.kind, info.tables) == (kind, tables), info


def test_each_kind_is_named_as_its_constant():
    """StatementInfo is compiled (_stmtinfo.pyx) and names the kinds stmtinfo.py numbers."""
    from fastproxy.replay import stmtinfo
    for name in ("SESSION", "READ", "LOCK", "DDL", "BEGIN", "COMMIT", "ROLLBACK", "UNKNOWN"):
        info = stmtinfo.StatementInfo(getattr(stmtinfo, name))
        assert info.kind_name == name and name in repr(info)


def test_a_statement_info_is_a_closed_struct_of_typed_fields():
    info = classify("UPDATE t SET ts = NOW()")
    with pytest.raises(AttributeError):
        info.no_such_field = 1  # as with the __slots__ class it was
    with pytest.raises(TypeError):
        info.kind = "READ"


def test_flags():
    assert classify("INSERT INTO t VALUES (1)").generates_id and classify("INSERT INTO t VALUES (1)").writes
    assert not classify("UPDATE t SET a = 1").generates_id
    assert classify("UPDATE t SET ts = NOW()").time and classify("SELECT CURRENT_TIMESTAMP").time
    assert not classify("SELECT 'now()'").time
    m = classify("INSERT INTO t VALUES (1); SELECT * FROM u")
    assert m.multi and m.kind == LOCK and m.tables == ("t", "u")
    assert classify("BEGIN; UPDATE t SET a = 1; COMMIT").kind == UNKNOWN  # transaction control inside a batch
    assert classify("SET STATEMENT timestamp = 5 FOR SELECT NOW()").set_statement
    assert classify("SET timestamp = 1700000000").sets_time is True
    assert classify("SET @@timestamp = DEFAULT").sets_time is False
    assert classify("SET insert_id = 5").sets_insert_id
    assert classify("START TRANSACTION WITH CONSISTENT SNAPSHOT").snapshot
    ddl = classify("CREATE TABLE e (id INT, at TIMESTAMP DEFAULT CURRENT_TIMESTAMP)")
    assert ddl.time_default
    assert classify("CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW SET NEW.a = 1").trigger_on == "t"


def test_stored_functions_make_a_statement_unknown():
    c = Classifier({"audit_fn"})
    assert c("SELECT audit_fn(id) FROM t").tables is None
    assert c("SELECT count(id) FROM t").tables == ("t",)
    assert c("CREATE FUNCTION later_fn() RETURNS INT RETURN 1").kind == UNKNOWN
    assert c("SELECT later_fn() FROM t").tables is None  # learned from the capture


def test_view_and_trigger_bodies():
    assert body_tables("select `db`.`t1`.`a` AS `a` from (`db`.`t1` join `db`.`t2`)", set()) == {"t1", "t2"}
    assert body_tables("BEGIN INSERT INTO log (x) VALUES (NEW.id); UPDATE totals SET n = n + 1; END", set()) == {
        "log", "totals"}
    assert body_tables("BEGIN CALL p(); END", set()) is None
    scopes = TableScopes()
    scopes.add_trigger("orders", "INSERT INTO audit VALUES (NEW.id)")
    assert scopes.scope(("orders",)) == scopes.scope(("audit",))
    assert scopes.needs_time(("orders",)) and not scopes.needs_time(("other",))
    scopes.add_trigger("opaque", "BEGIN CALL p(); END")
    assert scopes.scope(("opaque", "x")) is None


def test_pins():
    ts = 1_700_000_000_123_456_789
    assert timestamp_value(ts) == b"1700000000.123456"
    q = b"\x03INSERT INTO t (v) VALUES (1)"
    sent, before, dirty = pin(q, ts, 41, PIN_TIME | PIN_ID, False)
    assert sent == b"\x03SET STATEMENT timestamp=1700000000.123456, insert_id=41 FOR INSERT INTO t (v) VALUES (1)"
    assert before is None and not dirty
    execute = b"\x17\x01\x00\x00\x00\x00\x01\x00\x00\x00"
    sent, before, dirty = pin(execute, ts, 0, PIN_TIME | PIN_PREFIX, False)
    assert sent == execute and before == b"\x03SET timestamp = 1700000000.123456, insert_id = 0" and dirty
    sent, before, dirty = pin(q, ts, 0, 0, True)  # the next unpinned SQL releases the clock
    assert sent == q and before == RESET and not dirty
    assert pin(q, ts, 0, 0, False) == (q, None, False)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="()`,;.'\" abcfjortuelswhinpdkmFROMJOINSELECTUPDATE*=?@1", max_size=80))
def test_any_text_gets_an_answer(sql):
    info = classify(sql)
    assert info.kind in range(8)
    assert info.tables is None or all(isinstance(t, str) and t for t in info.tables)
