"""What a captured statement does, as far as replaying it faithfully needs to know: does it only
read, take locks, change the schema or end a transaction; which tables it touches; does it name
a time function or may it generate an auto-increment id.

It reads the normalizer's output (``fastproxy._digest.normalize``: comments gone, literals ``?``,
keywords and names lower-cased, back-quoted names kept), so ``'from x'`` inside a string cannot
mislead it. Table names are reduced to their bare lower-case name (``db.`T``` -> ``t``): two
tables of the same name in different databases share a scope, which only adds waiting, never
removes it. Whatever is not understood gets ``tables = None`` (unknown: ordered against
everything) and, unless it is plainly session-only, the kind UNKNOWN (treated as a write that
takes locks).
"""
from __future__ import annotations

import re

from fastproxy._digest import normalize
from fastproxy.replay import _stmtinfo
from fastproxy.replay._stmtinfo import StatementInfo

# kinds (StatementInfo.kind; _stmtinfo.pyx KIND_NAMES names them in this order)
SESSION = 0    # touches no table: SET, SAVEPOINT, DEALLOCATE, SHOW WARNINGS, ...
READ = 1       # a plain read: sees what was committed before it
LOCK = 2       # takes row locks: DML, SELECT ... FOR UPDATE / FOR SHARE, named locks
DDL = 3        # schema changes, LOCK TABLES, ...: implicit commit; a write that takes locks
BEGIN = 4      # starts a transaction (implicitly commits an open one)
COMMIT = 5
ROLLBACK = 6   # of the whole transaction (not ROLLBACK TO SAVEPOINT, which is SESSION)
UNKNOWN = 7    # CALL, EXECUTE, compound statements, ...: a write with locks on unknown tables

NAMED_LOCKS = "#named_locks"  # the scope of GET_LOCK/RELEASE_LOCK (their names are literals)

TOKEN_RE = re.compile(r"`(?:[^`]|``)*`?|@@|[\w$]+|\S")

_TIME_WORDS = frozenset({"now", "current_timestamp", "current_date", "current_time", "curdate", "curtime",
                         "localtime", "localtimestamp", "unix_timestamp", "utc_date", "utc_time", "utc_timestamp",
                         "sysdate"})
_NAMED_LOCK_FUNCS = frozenset({"get_lock", "release_lock", "release_all_locks", "is_free_lock", "is_used_lock"})
_SEQUENCE_FUNCS = frozenset({"nextval", "setval", "lastval"})
# words that can follow a table reference and are therefore no alias
_NOT_ALIAS = frozenset({
    "where", "join", "inner", "left", "right", "cross", "natural", "straight_join", "full", "outer", "on", "using",
    "group", "order", "limit", "having", "union", "except", "intersect", "set", "values", "value", "select", "for",
    "lock", "partition", "force", "use", "ignore", "window", "procedure", "into", "returning", "read", "write",
    "local", "low_priority", "to", "add", "drop", "modify", "change", "alter", "rename", "engine", "default",
    "character", "charset", "collate", "comment", "auto_increment", "like", "as", "with", "offset", "fetch",
    "from", "when", "then", "else", "end", "and", "or", "not", "is", "in", "between", "duplicate", "key",
    "wait", "nowait", "skip", "row_format", "partitions", "algorithm", "convert", "discard", "import", "force",
    "tablespace", "row", "rows", "only", "first", "next", "do",
})
# where a FROM clause ends (its commas no longer separate tables)
_CLAUSE_END = frozenset({"where", "group", "order", "limit", "having", "union", "except", "intersect", "set",
                         "for", "into", "lock", "window", "select", "returning"})
_SESSION_SHOW = frozenset({"warnings", "errors", "variables", "status", "session", "profile", "profiles", "count",
                           "processlist", "full"})
_DML_MODIFIERS = frozenset({"low_priority", "delayed", "high_priority", "ignore", "quick"})
# what CREATE / ALTER / DROP act on; the words before it are options (OR REPLACE, DEFINER = ...)
_DDL_OBJECTS = frozenset({"table", "tables", "index", "view", "trigger", "function", "procedure", "event",
                          "database", "schema", "user", "role", "sequence", "server", "temporary", "tablespace",
                          "logfile", "package", "synonym"})


def _bare(tok: str) -> str:
    if tok.startswith("`"):
        tok = tok[1:-1] if tok.endswith("`") and len(tok) > 1 else tok[1:]
        return tok.replace("``", "`").lower()
    return tok


def _is_name(tok: str) -> bool:
    return tok[:1] == "`" or tok[:1].isalpha() or tok[:1] in "_$"


class TableScan:
    """Tables named in one statement's tokens."""

    def __init__(self, toks: list[str], functions: frozenset | set) -> None:
        self.toks = toks
        self.functions = functions
        self.tables: set[str] = set()
        self.unknown = False
        self.unnamed = False  # a string where a table name goes: "t" under ANSI_QUOTES names a table
        self.named_locks = False
        self.sequences = False
        self.time = False

    def name_at(self, i: int) -> tuple[str | None, int]:
        """A (possibly qualified) name starting at i: (bare name, index after it) or (None, i)."""
        toks = self.toks
        if i >= len(toks) or not _is_name(toks[i]):
            return None, i
        name = toks[i]
        i += 1
        while i + 1 < len(toks) and toks[i] == "." and _is_name(toks[i + 1]):
            name = toks[i + 1]
            i += 2
        return _bare(name), i

    def table_list(self, i: int) -> int:
        """name [[AS] alias] [READ|WRITE ...] {, name ...}: adds the names, returns the index after."""
        toks = self.toks
        while True:
            if i < len(toks) and toks[i] == "?":
                # normalized from a "quoted" name (the session may read ".." as a name): some table
                self.unnamed = True
                return i + 1
            name, i = self.name_at(i)
            if name is None or (name == "json_table" and i < len(toks) and toks[i] == "("):
                return i  # JSON_TABLE(...) is a function, not a table
            if name != "dual":
                self.tables.add(name)
            if i < len(toks) and toks[i] == "as":
                i += 2
            elif i < len(toks) and _is_name(toks[i]) and toks[i] not in _NOT_ALIAS:
                i += 1
            while i < len(toks) and toks[i] in ("read", "write", "local", "low_priority"):
                i += 1
            if i < len(toks) and toks[i] == ",":
                i += 1
                continue
            return i

    def run(self, head_list: int | None = None) -> None:
        """Scan every token; `head_list`: index of a table list right at the head (UPDATE t, DELETE t)."""
        toks = self.toks
        n = len(toks)
        if head_list is not None:
            self.table_list(head_list)
        depth = 0
        froms = [-1]  # depths of the FROM clauses we are in: a ',' at that depth starts another table
        for i, tok in enumerate(toks):
            nxt = toks[i + 1] if i + 1 < n else ""
            if tok == "(":
                depth += 1
            elif tok == ")":
                depth -= 1
                while len(froms) > 1 and depth < froms[-1]:
                    froms.pop()
            elif tok == "," and depth == froms[-1]:
                self.table_list(i + 1)
            elif tok in ("from", "join", "straight_join"):
                if nxt == "(" and i + 2 < n and toks[i + 2] not in ("select", "with", "values", "table", "("):
                    self.table_list(i + 2)  # FROM (t1 JOIN t2): how MariaDB writes a view's joins
                else:
                    self.table_list(i + 1)
                if tok == "from" and froms[-1] != depth:
                    froms.append(depth)
            elif tok in _CLAUSE_END and depth == froms[-1] and len(froms) > 1:
                froms.pop()
            elif tok == "into":
                if nxt not in ("@", "outfile", "dumpfile") and not nxt.startswith("@"):
                    self.table_list(i + 1 + (nxt == "table"))
            elif tok == "references":
                self.table_list(i + 1)
            if nxt == "(":
                if tok in _NAMED_LOCK_FUNCS:
                    self.named_locks = True
                elif tok in _SEQUENCE_FUNCS:
                    self.sequences = True
                elif tok in self.functions:
                    self.unknown = True  # a stored function: it may read or write anything
                elif tok in _TIME_WORDS:
                    self.time = True
            elif tok in _TIME_WORDS:
                self.time = True
            elif tok in ("next", "previous") and toks[i + 1:i + 3] == ["value", "for"]:
                self.sequences = True


def _split(text: str) -> list[list[str]]:
    statements: list[list[str]] = [[]]
    for tok in TOKEN_RE.findall(text):
        if tok == ";":
            statements.append([])
        else:
            statements[-1].append(tok)
    return [s for s in statements if s]


def classify(sql: str | bytes, functions: frozenset | set = frozenset()) -> StatementInfo:
    """The StatementInfo of ``sql`` (one COM_QUERY or prepared statement text). ``functions``: names
    of stored functions on the target (a statement that calls one touches unknown tables)."""
    return classify_normalized(normalize(sql), functions)


def classify_normalized(text: str, functions: frozenset | set = frozenset()) -> StatementInfo:
    parts = _split(text)
    if not parts:
        return StatementInfo(SESSION)
    if len(parts) == 1:
        return _statement(parts[0], functions)
    infos = [_statement(p, functions) for p in parts]
    return _combine(infos)


def _combine(infos: list[StatementInfo]) -> StatementInfo:
    """A multi-statement: the strongest kind, every table; transaction control inside it is not
    followed statement by statement, so such a batch counts as UNKNOWN."""
    kinds = {i.kind for i in infos}
    if kinds & {BEGIN, COMMIT, ROLLBACK, UNKNOWN}:
        kind = UNKNOWN
    elif DDL in kinds:
        kind = DDL
    elif LOCK in kinds:
        kind = LOCK
    elif READ in kinds:
        kind = READ
    else:
        kind = SESSION
    tables: set[str] | None = set()
    for i in infos:
        if i.tables is None:
            tables = None
            break
        tables.update(i.tables)
    out = StatementInfo(kind, None if tables is None or kind == UNKNOWN else tuple(sorted(tables)),
                        any(i.writes for i in infos) or kind == UNKNOWN)
    out.multi = True
    out.time = any(i.time for i in infos)
    out.generates_id = any(i.generates_id for i in infos) or kind == UNKNOWN
    out.sets_time = next((i.sets_time for i in reversed(infos) if i.sets_time is not None), None)
    out.sets_insert_id = any(i.sets_insert_id for i in infos)
    out.autocommit = next((i.autocommit for i in reversed(infos) if i.autocommit is not None), None)
    out.references = tuple(t for i in infos for t in i.references)
    out.time_default = any(i.time_default for i in infos)
    out.trigger_on = next((i.trigger_on for i in infos if i.trigger_on), None)
    out.creates_function = next((i.creates_function for i in infos if i.creates_function), None)
    return out


def _result(kind: int, scan: TableScan, writes: bool = False) -> StatementInfo:
    if scan.sequences or scan.unknown:
        info = StatementInfo(UNKNOWN, None, True)
        info.generates_id = True
    else:
        if scan.named_locks:
            scan.tables.add(NAMED_LOCKS)
            if kind == READ or kind == SESSION:
                kind = LOCK
        info = StatementInfo(kind, None if scan.unnamed else tuple(sorted(scan.tables)), writes)
    info.time = scan.time
    return info


def _statement(toks: list[str], functions) -> StatementInfo:
    i = 0
    while i < len(toks) and toks[i] == "(":
        i += 1
    toks = toks[i:]
    if not toks:
        return StatementInfo(SESSION)
    first = toks[0]
    second = toks[1] if len(toks) > 1 else ""
    scan = TableScan(toks, functions)

    if first in ("select", "table", "values", "with"):
        main = first
        if first == "with":
            main, at = _with_main(toks)
            if main in ("insert", "replace", "update", "delete"):
                j = at + 1
                while j < len(toks) and toks[j] in _DML_MODIFIERS or (j < len(toks) and toks[j] == "into"):
                    j += 1
                scan.run(head_list=j if main != "delete" or toks[j:j + 1] != ["from"] else None)
                info = _result(LOCK, scan, True)
                info.generates_id = main in ("insert", "replace")
                return info
        if first == "table":
            scan.table_list(1)
        scan.run()
        return _result(LOCK if _locks_rows(toks) else READ, scan)
    if first in ("insert", "replace"):
        j = 1
        while j < len(toks) and toks[j] in _DML_MODIFIERS:
            j += 1
        if j < len(toks) and toks[j] == "into":
            j += 1
        scan.run(head_list=j)
        info = _result(LOCK, scan, True)
        info.generates_id = True
        return info
    if first == "update":
        j = 1
        while j < len(toks) and toks[j] in _DML_MODIFIERS:
            j += 1
        scan.run(head_list=j)
        return _result(LOCK, scan, True)
    if first == "delete":
        j = 1
        while j < len(toks) and toks[j] in _DML_MODIFIERS:
            j += 1
        scan.run(head_list=j if j < len(toks) and toks[j] != "from" else None)
        if "using" in toks:
            scan.table_list(toks.index("using") + 1)
        return _result(LOCK, scan, True)
    if first == "load":  # LOAD DATA / LOAD XML ... INTO TABLE t
        scan.run()
        info = _result(LOCK, scan, True)
        info.generates_id = True
        return info
    if first in ("begin", "start", "xa"):
        return _transaction_start(toks)
    if first == "commit":
        return StatementInfo(COMMIT)
    if first == "rollback":
        return StatementInfo(SESSION if "to" in toks else ROLLBACK)
    if first in ("savepoint", "release", "deallocate", "prepare", "kill", "help", "signal", "resignal", "get"):
        return StatementInfo(SESSION)  # PREPARE only parses its text; EXECUTE runs it (UNKNOWN)
    if first == "set":
        return _set(toks, functions)
    if first == "use":
        return StatementInfo(READ, None)  # the database may have just been created elsewhere
    if first == "show":
        return StatementInfo(SESSION if second in _SESSION_SHOW else READ, None if second not in _SESSION_SHOW else ())
    if first in ("describe", "desc", "explain"):
        rest = toks[1:]
        while rest and rest[0] in ("extended", "partitions", "analyze", "format", "=", "json", "traditional", "tree"):
            rest = rest[1:]
        if rest and rest[0] in ("select", "insert", "replace", "update", "delete", "with", "table", "values", "("):
            inner = _statement(rest, functions)
            if first == "explain" and "analyze" in toks[1:3]:
                return inner  # EXPLAIN ANALYZE runs the statement
            return StatementInfo(READ, inner.tables)
        scan.table_list(len(toks) - len(rest))
        return _result(READ, scan)
    if first in ("checksum", "check"):
        scan.table_list(2 if second == "table" else 1)
        return _result(READ, scan)
    if first in ("analyze", "optimize", "repair"):
        j = 1
        while j < len(toks) and toks[j] in ("no_write_to_binlog", "local"):
            j += 1
        if j < len(toks) and toks[j] == "table":
            scan.table_list(j + 1)
            return _result(DDL, scan, True)
        return StatementInfo(UNKNOWN, None, True)
    if first == "truncate":
        scan.table_list(2 if second == "table" else 1)
        return _result(DDL, scan, True)
    if first == "lock":
        if second in ("tables", "table"):
            scan.table_list(2)
            return _result(DDL, scan, True)
        return StatementInfo(UNKNOWN, None, True)
    if first == "unlock":
        return StatementInfo(DDL, None, True)  # releases table locks taken on any table
    if first == "rename" and second in ("table", "tables"):
        # RENAME TABLE a TO b, c TO d: every name
        scan.tables.update(_bare(t) for t in toks[2:] if _is_name(t) and t not in ("to", "wait", "nowait"))
        return _result(DDL, scan, True)
    if first in ("create", "alter", "drop"):
        return _ddl(toks, scan)
    if first == "handler":
        scan.table_list(1)
        return _result(READ, scan)
    if first == "do":
        scan.run()
        if scan.named_locks or scan.unknown or scan.sequences or "from" in toks:
            return _result(READ, scan)
        return StatementInfo(SESSION)
    # CALL, EXECUTE, BEGIN NOT ATOMIC, FLUSH, GRANT, LOAD INDEX, ...
    info = StatementInfo(UNKNOWN, None, True)
    info.generates_id = True
    info.time = True
    return info


def _with_main(toks: list[str]) -> tuple[str, int]:
    """The statement a WITH clause leads to, and its index."""
    depth = 0
    for i, tok in enumerate(toks[1:], 1):
        if tok == "(":
            depth += 1
        elif tok == ")":
            depth -= 1
        elif depth == 0 and tok in ("select", "table", "values", "insert", "update", "delete", "replace"):
            return tok, i
    return "select", 0


def _locks_rows(toks: list[str]) -> bool:
    for i, tok in enumerate(toks):
        if tok == "for" and i + 1 < len(toks) and toks[i + 1] in ("update", "share"):
            return True
        if tok == "lock" and toks[i + 1:i + 4] == ["in", "share", "mode"]:
            return True
    return False


def _transaction_start(toks: list[str]) -> StatementInfo:
    first = toks[0]
    second = toks[1] if len(toks) > 1 else ""
    if first == "begin":
        if second == "not":  # BEGIN NOT ATOMIC ... END: a compound statement
            return StatementInfo(UNKNOWN, None, True)
        return StatementInfo(BEGIN)
    if first == "start":
        if second != "transaction":  # START SLAVE / REPLICA ...
            return StatementInfo(UNKNOWN, None, True)
        info = StatementInfo(BEGIN)
        info.snapshot = "snapshot" in toks
        return info
    # XA START|BEGIN / END / PREPARE / COMMIT / ROLLBACK / RECOVER
    if second in ("start", "begin"):
        return StatementInfo(BEGIN)
    if second == "commit":
        return StatementInfo(COMMIT)
    if second == "rollback":
        return StatementInfo(ROLLBACK)
    return StatementInfo(SESSION)


def _set(toks: list[str], functions) -> StatementInfo:
    second = toks[1] if len(toks) > 1 else ""
    if second == "statement":  # SET STATEMENT var = x, ... FOR <statement>: the statement decides
        depth = 0
        for i, tok in enumerate(toks[2:], 2):
            depth += (tok == "(") - (tok == ")")
            if depth == 0 and tok == "for":
                inner = _statement(toks[i + 1:], functions)
                inner.set_statement = True
                return inner
        return StatementInfo(UNKNOWN, None, True)
    if second == "password" or (second == "default" and toks[2:3] == ["role"]):
        # SET PASSWORD [FOR u], SET DEFAULT ROLE r FOR u: an account changes (logins depend on it)
        return StatementInfo(UNKNOWN, None, True)
    if _sets_global(toks):
        # SET GLOBAL / @@global. / PERSIST: what later sessions (and some running ones) start with
        # changes; ordered like account management, so logins and statements after it see it
        return StatementInfo(UNKNOWN, None, True)
    # reading @@global.x (SET sql_mode = @@global.sql_mode): after the SET GLOBALs before it, and
    # nothing else (a read of no table waits only for what is of unknown scope)
    info = StatementInfo(READ if _reads_global(toks) else SESSION)
    for i, tok in enumerate(toks[1:], 1):
        if tok in ("timestamp", "insert_id", "last_insert_id", "autocommit") and (
                i + 1 < len(toks) and toks[i + 1] in ("=", ":")):
            value = toks[i + 2] if toks[i + 1] == "=" else (toks[i + 3] if i + 3 < len(toks) else "")
            if tok == "timestamp":
                info.sets_time = value != "default"
            elif tok == "autocommit":
                # literals are normalized to '?': only ON/OFF/TRUE/FALSE survive as words
                info.autocommit = {"on": True, "true": True, "off": False, "false": False}.get(value)
            else:
                info.sets_insert_id = True
    if "select" in toks:  # SET @x = (SELECT ...): a read
        scan = TableScan(toks, functions)
        scan.run()
        out = _result(READ, scan)
        out.sets_time, out.sets_insert_id, out.autocommit = info.sets_time, info.sets_insert_id, info.autocommit
        return out
    return info


def _sets_global(toks: list[str]) -> bool:
    """SET assigns a global variable: `GLOBAL x = `, `PERSIST[_ONLY] x = `, `@@global.x = `
    (an assignment's target follows SET or a comma)."""
    for i, tok in enumerate(toks):
        if tok in ("global", "persist", "persist_only") and i and (
                toks[i - 1] in ("set", ",") or (toks[i - 1] == "@@" and i > 1 and toks[i - 2] in ("set", ","))):
            return True
    return False


def _reads_global(toks: list[str]) -> bool:
    return any(tok in ("global", "persist", "persist_only") and toks[i - 1] == "@@" for i, tok in enumerate(toks) if i)


def _ddl(toks: list[str], scan: TableScan) -> StatementInfo:
    first = toks[0]
    # CREATE [OR REPLACE] [DEFINER = x] [ALGORITHM = y] [SQL SECURITY z] [ONLINE] [UNIQUE] <object> ...
    j = 1
    while j < len(toks) and j < 16 and toks[j] not in _DDL_OBJECTS:
        j += 1
    temporary = j < len(toks) and toks[j] == "temporary"
    if temporary:
        j += 1
    what = toks[j] if j < len(toks) else ""
    rest = j + 1
    if what in ("table", "tables"):
        k = rest
        while k < len(toks) and toks[k] in ("if", "not", "exists"):
            k += 1
        if temporary:
            # private to the session: it is only a read of what its SELECT names
            scan.run()
            if first == "drop":
                return StatementInfo(SESSION)
            info = _result(READ, scan)
            return info
        if first == "alter":
            scan.table_list(k)
            scan.run()
        else:
            scan.table_list(k)
            if first == "create":
                scan.run()
        info = _result(DDL, scan, True)
        info.references = tuple(sorted(_references(toks)))
        info.time_default = ("current_timestamp" in toks or "now" in toks or "localtimestamp" in toks
                             or "localtime" in toks)
        return info
    if what == "index":
        if "on" in toks:
            scan.table_list(toks.index("on") + 1)
            return _result(DDL, scan, True)
        return StatementInfo(UNKNOWN, None, True)
    if what == "view":
        k = rest
        while k < len(toks) and toks[k] in ("if", "not", "exists"):
            k += 1
        name, after = scan.name_at(k)
        if name is None:
            return StatementInfo(UNKNOWN, None, True)
        reads = TableScan(toks[after:], scan.functions)
        reads.run()
        if reads.unknown or reads.sequences:
            return StatementInfo(UNKNOWN, None, True)
        scan.tables.add(name)
        if first == "drop":
            scan.table_list(k)
        info = StatementInfo(DDL, tuple(sorted(scan.tables | reads.tables)), True)
        info.view_of = (name,) + tuple(sorted(reads.tables))
        return info
    if what == "trigger" and first == "create":
        info = StatementInfo(UNKNOWN, None, True)
        if "on" in toks:
            name, _ = scan.name_at(toks.index("on") + 1)
            info.trigger_on = name
        return info
    if what == "function" and first == "create":
        info = StatementInfo(UNKNOWN, None, True)
        k = rest
        while k < len(toks) and toks[k] in ("if", "not", "exists"):
            k += 1
        name, _ = scan.name_at(k)
        info.creates_function = name
        return info
    # databases, procedures, users, roles, events, sequences, servers, ...
    return StatementInfo(UNKNOWN, None, True)


def _references(toks: list[str]) -> set[str]:
    out = set()
    for i, tok in enumerate(toks):
        if tok == "references":
            name, _ = TableScan(toks, frozenset()).name_at(i + 1)
            if name:
                out.add(name)
    return out


# ``classify`` with a bounded cache, in C: the causal planner asks it for every text query
# (fastproxy/replay/_stmtinfo.pyx; on a miss it calls classify_normalized above)
Classifier = _stmtinfo.Classifier
