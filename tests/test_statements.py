"""is_read_only: the allow-list that keeps a read-only replay from writing."""
import pytest

from fastproxy.replay.statements import is_read_only

CASES = [
    # queries
    ("SELECT 1", True),
    ("select c from sbtest1 where id = 5", True),
    ("  /* app=web */ SELECT * FROM t", True),
    ("-- leading comment\nSELECT 1", True),
    ("# hash comment\nselect 1", True),
    ("(SELECT a FROM t) UNION (SELECT b FROM u)", True),
    ("((select 1))", True),
    ("SELECT * FROM t WHERE note = 'for update'", True),
    ("SELECT `into` FROM t", True),
    ("select replace(name, 'a', 'b') from t", True),
    ("SELECT * FROM t FOR UPDATE", False),
    ("SELECT * FROM t WHERE id = 1 FOR UPDATE NOWAIT", False),
    ("SELECT * FROM t FOR SHARE", False),
    ("SELECT * FROM t LOCK IN SHARE MODE", False),
    ("SELECT * FROM t WHERE a IN (SELECT a FROM u FOR UPDATE)", False),
    ("SELECT a INTO @x FROM t", False),
    ("SELECT * FROM t INTO OUTFILE '/tmp/x'", False),
    ("SELECT a FROM t INTO DUMPFILE '/tmp/x'", False),
    ("TABLE t", True),
    ("VALUES ROW(1, 2)", True),
    ("WITH c AS (SELECT 1 AS a) SELECT * FROM c", True),
    ("WITH RECURSIVE c (n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 5) SELECT n FROM c", True),
    ("WITH c AS (SELECT id FROM t) DELETE FROM t WHERE id IN (SELECT id FROM c)", False),
    ("WITH c AS (SELECT 1) UPDATE t, c SET t.a = 1", False),
    ("WITH c AS (SELECT 1) SELECT * FROM c FOR UPDATE", False),
    # metadata
    ("SHOW TABLES", True),
    ("show create table t", True),
    ("DESCRIBE t", True),
    ("DESC t", True),
    ("EXPLAIN SELECT * FROM t", True),
    ("EXPLAIN DELETE FROM t", True),
    ("EXPLAIN FORMAT=JSON UPDATE t SET a = 1", True),
    ("EXPLAIN ANALYZE SELECT * FROM t", True),
    ("EXPLAIN ANALYZE FORMAT=TREE SELECT * FROM t", True),
    ("EXPLAIN ANALYZE DELETE FROM t", False),
    # transactions
    ("BEGIN", True),
    ("begin pessimistic", True),
    ("BEGIN NOT ATOMIC INSERT INTO t VALUES (1); END", False),
    ("START TRANSACTION", True),
    ("START TRANSACTION READ ONLY", True),
    ("START TRANSACTION READ WRITE", True),
    ("START SLAVE", False),
    ("COMMIT", True),
    ("ROLLBACK", True),
    ("ROLLBACK TO SAVEPOINT s1", True),
    ("SAVEPOINT s1", True),
    ("RELEASE SAVEPOINT s1", True),
    # session state
    ("SET @x = 1", True),
    ("SET @x := (SELECT COUNT(*) FROM t)", True),
    ("SET SESSION sql_mode = ''", True),
    ("SET LOCAL wait_timeout = 10", True),
    ("SET @@session.autocommit = 0", True),
    ("SET NAMES utf8mb4", True),
    ("SET NAMES utf8mb4 COLLATE utf8mb4_bin", True),
    ("SET autocommit = 1", True),
    ("SET character_set_results = NULL", True),
    ("SET CHARACTER SET utf8", True),
    ("SET TRANSACTION ISOLATION LEVEL READ COMMITTED", True),
    ("SET SESSION TRANSACTION READ ONLY", True),
    ("/*!40101 SET NAMES utf8 */", True),
    ("SET GLOBAL max_connections = 10", False),
    ("SET @@global.max_connections = 10", False),
    ("SET sql_mode = '', GLOBAL max_connections = 10", False),
    ("SET PERSIST max_connections = 10", False),
    ("SET PERSIST_ONLY max_connections = 10", False),
    ("SET GLOBAL TRANSACTION ISOLATION LEVEL SERIALIZABLE", False),
    ("SET PASSWORD = 'x'", False),
    ("SET PASSWORD FOR u = 'x'", False),
    ("SET DEFAULT ROLE ALL TO u", False),
    ("SET CONFIG tikv `raftstore.x` = 1", False),
    ("SET", False),
    ("USE db1", True),
    ("use `my-db`", True),
    # writes and everything else
    ("INSERT INTO t VALUES (1)", False),
    ("INSERT INTO t SELECT * FROM u", False),
    ("UPDATE t SET a = 1", False),
    ("DELETE FROM t", False),
    ("REPLACE INTO t VALUES (1)", False),
    ("CREATE TABLE t (a INT)", False),
    ("DROP TABLE t", False),
    ("ALTER TABLE t ADD COLUMN b INT", False),
    ("TRUNCATE t", False),
    ("CALL p()", False),
    ("DO SLEEP(1)", False),
    ("LOAD DATA INFILE 'x' INTO TABLE t", False),
    ("GRANT SELECT ON *.* TO u", False),
    ("LOCK TABLES t READ", False),
    ("UNLOCK TABLES", False),
    ("ANALYZE TABLE t", False),
    ("FLUSH TABLES", False),
    ("XA START 'x'", False),
    # multi-statement queries: every part must be read-only
    ("SELECT 1; SELECT 2", True),
    ("SELECT 1;", True),
    ("SELECT 1; DELETE FROM t", False),
    # nothing recognisable
    ("", False),
    ("   ", False),
    ("/* only a comment */", False),
    (";;", False),
    ("()", False),
    ("`select` 1", False),
]


@pytest.mark.parametrize("sql, expected", CASES, ids=[c[0][:40] or "<empty>" for c in CASES])
def test_is_read_only(sql, expected):
    assert is_read_only(sql) is expected


def test_bytes_input():
    assert is_read_only(b"SELECT 1") is True
    assert is_read_only(b"DELETE FROM t WHERE a = '\xff'") is False


_NON_EMPTY = [c for c in CASES if c[0].strip() not in ("", "/* only a comment */", ";;")]


@pytest.mark.parametrize("sql, expected", _NON_EMPTY, ids=[c[0][:40] for c in _NON_EMPTY])
def test_multi_statement_path_agrees(sql, expected):
    # a second statement sends the query down the tokenizing path instead of the quick one
    assert is_read_only(f"{sql}; SELECT 1") is expected
    assert is_read_only(f"SELECT 1; {sql}") is expected


@pytest.mark.parametrize("sql,expected", [
    ("SET STATEMENT max_statement_time=1 FOR DELETE FROM t", False),
    ("SET STATEMENT max_statement_time=1 FOR INSERT INTO t VALUES (1)", False),
    ("SET STATEMENT max_statement_time=1 FOR SELECT 1", True),
    ("SELECT NEXTVAL(s)", False),
    ("select nextval (s)", False),
    ("SELECT SETVAL(s, 5)", False),
    ("SELECT NEXT VALUE FOR s", False),
    ("SELECT GET_LOCK('a', 1)", False),
    ("SELECT `nextval` FROM t", True),
])
def test_statements_that_write_behind_a_read_only_look(sql, expected):
    assert is_read_only(sql) is expected


# ---- the session's sql_mode decides where a string ends (issue 7, item 12) --------------------------
NBE_TRAP = 'SELECT * FROM t WHERE v = "a\\" ; DELETE FROM t; -- "'


def test_backslash_readings():
    """By default the whole text is one SELECT; under NO_BACKSLASH_ESCAPES (or ANSI_QUOTES) "a\\" ends
    the string and the server runs the DELETE. Unknown sql_mode: read-only only if so in every reading."""
    assert is_read_only(NBE_TRAP) is False
    assert is_read_only(NBE_TRAP.encode()) is False
    assert is_read_only(NBE_TRAP, sql_mode="STRICT_TRANS_TABLES") is True      # known: exact
    assert is_read_only(NBE_TRAP, sql_mode="STRICT_TRANS_TABLES,NO_BACKSLASH_ESCAPES") is False
    assert is_read_only(NBE_TRAP, sql_mode="ansi_quotes") is False
    assert is_read_only(NBE_TRAP, sql_mode="ORACLE") is False                  # includes ANSI_QUOTES
    assert is_read_only(NBE_TRAP.replace('"', "'"), sql_mode="") is True
    assert is_read_only(NBE_TRAP.replace('"', "'")) is False
    assert is_read_only(NBE_TRAP.replace('"', "'"), sql_mode="ANSI_QUOTES") is True   # '..' keeps its escapes


@pytest.mark.parametrize("sql", [
    "SELECT 'it\\'s'", "SELECT \"say \\\"hi\\\"\"", "SELECT 'a\\\\'", "SELECT 'C:\\' FROM t",
    "SELECT * FROM t WHERE a LIKE 'x\\_y'",
])
def test_backslashes_in_reads_stay_read_only(sql):
    assert is_read_only(sql) is True


def test_normalize_readings_leave_digests_alone():
    from fastproxy._digest import digest, normalize

    sql = "SELECT 'it\\'s' FROM t WHERE a = \"x\\\"y\""
    assert normalize(sql) == "select ? from t where a = ?"
    assert digest(sql) == digest("SELECT 'x' FROM t WHERE a = 'y'")
    assert normalize(sql, no_backslash_escapes=True) != normalize(sql)
    assert normalize("SELECT 'a''b'", no_backslash_escapes=True) == "select ?"


# ---- issue 7 review: what a read-only replay sent although the server wrote ------------------------
@pytest.mark.parametrize("sql", [
    "SET @x = NEXTVAL(s)",                                 # advances the sequence
    "SET @x = (SELECT NEXT VALUE FOR s)",
    "SET @a = 1, @x = SETVAL(s, 100)",
    "SET @x = GET_LOCK('a', 10)",                          # a named lock, held past the statement
    "SET @x = RELEASE_LOCK('a')",
    "SET @x = (SELECT a FROM t WHERE id = 1 FOR UPDATE)",  # row locks
    "SET SESSION sql_mode = (SELECT a FROM t LOCK IN SHARE MODE)",
])
def test_sets_whose_values_write_or_lock(sql):
    assert is_read_only(sql) is False


@pytest.mark.parametrize("sql", [
    "SET @x = 1, @y = 'for update'", "SET @x = (SELECT MAX(a) FROM t)", "SET @x = LASTVAL(s)",
    "SET NAMES utf8mb4 COLLATE utf8mb4_bin", "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
])
def test_sets_that_stay_read_only(sql):
    assert is_read_only(sql) is True


def test_versioned_comment_readings():
    """A server older than the version skips the versioned comment as a comment, which ends at its
    first */ whatever quotes it holds: there the DELETE runs (MariaDB 10.11 skips 50700-99999 too)."""
    trap = "SELECT 1 /*!99999 ' */ ; DELETE FROM t; -- ' */"
    assert is_read_only(trap) is False
    assert is_read_only(trap, sql_mode="") is False
    assert is_read_only("SELECT 1 /*M!999999 , 'x */ ; DELETE FROM t; -- ' */") is False
    # as code on a newer server: the same
    assert is_read_only("SELECT 1 /*!50701 ; DELETE FROM t */") is False
    # nothing hidden: read-only either way, and a text an older server skips whole runs nothing there
    assert is_read_only("SELECT 1 /*!50701 , 2 */ FROM t") is True
    assert is_read_only("/*!40101 SET NAMES utf8 */") is True
    assert is_read_only("SELECT 1 /*!50701 /* ' */ ' */ FROM t") is True


def test_two_byte_character_set_readings():
    """In gbk (the handshake's, or after SET NAMES gbk) 0xBF 0x5C is one character: the backslash escapes
    nothing and the string ends early; 0xBF 0x60 is one character: no name is opened."""
    in_string = b"SELECT '\xbf\\\\' , ' ; DELETE FROM t; -- '"
    in_name = b"SELECT 1 AS a\xbf` ; DELETE FROM t; -- `"
    for trap in (in_string, in_name):
        assert is_read_only(trap) is False
        assert is_read_only(trap, sql_mode="") is False
    assert is_read_only(b"SELECT '\xbf\\\\', `\xbf\\`` FROM t") is True
    assert is_read_only("SELECT 'ä\\'s'") is True
    big = b"SELECT '" + b"x" * (1 << 20) + b"', '\xbf\\\\' FROM t"
    assert is_read_only(big) is False       # too long to read every way on the loop: in doubt, a write
