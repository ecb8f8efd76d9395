"""The SQL scanner that says which statements change a session (USE, PREPARE, temporary tables) and
which KILL statements name a thread id."""
import pytest

from fastproxy.sqltext import parse_kill, session_effects, statements, worth_scanning


def kinds(sql: bytes) -> list[str]:
    return [e.kind for e in session_effects(sql)]


@pytest.mark.parametrize("sql", [
    b"USE db", b"use `my db`", b"USE db -- comment", b"/* lead */ USE db", b"  \n\tUSE db;",
    b"# note\nUSE db", b"-- note\nUSE db", b"/*!40101 USE db */", b"/*M!100100 USE db */",
    b"SELECT 1; USE db", b"SELECT 'x;y'; use db; SELECT 2",
])
def test_use_found_anywhere(sql):
    assert worth_scanning(b"\x03" + sql, multi_statements=True)
    assert "use" in kinds(sql)


@pytest.mark.parametrize("sql", [
    b"SELECT 'use db'", b"SELECT 1 /* USE db */", b"SELECT `use`", b"UPDATE users SET x = 1",
    b"SELECT 'a; USE b'", b"SELECT 1 -- ; USE b", b"DELETE FROM t", b"CALL used()",
])
def test_no_use(sql):
    assert "use" not in kinds(sql)


def test_cheap_check_rejects_common_statements_without_a_copy():
    payload = memoryview(b"\x03SELECT * FROM t WHERE id = 1")
    assert not worth_scanning(payload, multi_statements=False)
    assert not worth_scanning(payload, multi_statements=True)
    assert not worth_scanning(memoryview(b"\x03INSERT INTO t VALUES (1)"), multi_statements=False)
    assert not worth_scanning(memoryview(b"\x03UPDATE t SET v = 1"), multi_statements=False)
    # a USE after a `;` is only possible with multi-statements on
    assert not worth_scanning(b"\x03SELECT 1; USE db", multi_statements=False)


def test_prepare_and_temporary_tables():
    effects = session_effects(b"PREPARE s1 FROM 'SELECT ?'; DEALLOCATE PREPARE s0; DROP PREPARE `S2`;"
                              b"CREATE TEMPORARY TABLE IF NOT EXISTS shop.tmp (id INT);"
                              b"CREATE OR REPLACE TEMPORARY TABLE t2 AS SELECT 1;"
                              b"DROP TEMPORARY TABLE IF EXISTS a, shop.b; DROP TABLE c")
    assert [(e.kind, e.name, e.db) for e in effects[:5]] == [
        ("prepare", "s1", None), ("deallocate", "s0", None), ("deallocate", "s2", None),
        ("create_temp", "tmp", "shop"), ("create_temp", "t2", None)]
    assert effects[0].sql == b"PREPARE s1 FROM 'SELECT ?'"
    assert effects[3].sql == b"CREATE TEMPORARY TABLE IF NOT EXISTS shop.tmp (id INT)"
    assert effects[5].names == ((None, "a"), ("shop", "b"))
    assert effects[6].names == ((None, "c"),)
    assert kinds(b"CREATE TABLE t (id INT)") == []


def test_compound_statement_bodies_are_not_split():
    sql = b"CREATE PROCEDURE p() BEGIN PREPARE s FROM 'SELECT 1'; EXECUTE s; USE other; END"
    assert kinds(sql) == []
    assert len(statements(sql)) == 1
    assert kinds(b"BEGIN NOT ATOMIC USE x; END") == []


@pytest.mark.parametrize("sql,query_only,target", [
    (b"KILL 12", False, 12), (b"kill connection 12", False, 12), (b"KILL QUERY 12;", True, 12),
    (b"KILL /* why */ QUERY\n 12 -- slow report", True, 12), (b"KILL HARD QUERY 5", True, 5),
    (b"kill soft connection 5", False, 5), (b"/*!KILL 7*/", False, 7),
])
def test_kill_names_a_thread(sql, query_only, target):
    k = parse_kill(sql)
    assert (k.query_only, k.target) == (query_only, target)
    assert sql[k.start:k.end] == str(target).encode()


@pytest.mark.parametrize("sql", [b"KILL QUERY ID 5", b"KILL USER app", b"KILL CONNECTION_ID()", b"KILL @id"])
def test_kill_without_a_thread_id(sql):
    k = parse_kill(sql)
    assert k is not None and k.target is None and k.why


@pytest.mark.parametrize("sql", [b"SELECT 'KILL 5'", b"KILL 5; SELECT 1", b"killer()"])
def test_not_a_single_kill(sql):
    assert parse_kill(sql) is None


def test_large_queries_are_scanned_in_their_first_part_only():
    """A 20 MiB INSERT whose BLOB holds `;` is not tokenized whole; a `;` beyond the scanned part
    only says the database may have changed (the server then settles it)."""
    from fastproxy.sqltext import SCAN_LIMIT

    blob = (b"x;y'z\\" * (4 << 20))
    sql = b"INSERT INTO t VALUES ('" + blob.replace(b"\\", b"\\\\").replace(b"'", b"\\'") + b"')"
    assert len(sql) > 20 << 20
    assert kinds(sql) == ["maybe_use"]
    assert kinds(b"USE a; " + b"INSERT INTO t VALUES ('" + b"a" * SCAN_LIMIT + b"')") == ["use"]
