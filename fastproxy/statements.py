"""Which captured statements a read-only replay may send.

Read-only replay must never change data on the target, so this is an allow-list: a statement is
read-only only if it is recognised as such, and anything unknown (including an empty query) is not.

The check runs on the normalizer's output (``fastproxy._digest.normalize``), which has already
dropped comments, replaced string literals by ``?`` (so ``'for update'`` in a string cannot
mislead us), lower-cased keywords and kept back-quoted names quoted (so `` `update` `` is a name).

Rules, per statement of a multi-statement query (all must pass):

- SELECT / TABLE / VALUES, optionally in parentheses or after a WITH clause, unless it locks rows
  (``FOR UPDATE``, ``FOR SHARE``, ``LOCK IN SHARE MODE``) or writes (``INTO`` var/OUTFILE/DUMPFILE).
  WITH is judged by its main statement, the first SELECT/INSERT/... at the outer paren level.
- SHOW, DESCRIBE, DESC, EXPLAIN (not executed); ``EXPLAIN ANALYZE x`` runs ``x``, so ``x`` decides.
- Transaction control: BEGIN (not MariaDB's ``BEGIN NOT ATOMIC`` block), START TRANSACTION (any
  mode: it writes nothing by itself), COMMIT, ROLLBACK (also ``ROLLBACK TO``), SAVEPOINT,
  RELEASE SAVEPOINT.
- Session SETs (``SET @x``, ``SET SESSION``, ``SET NAMES``, ``SET autocommit``, ``SET TRANSACTION``,
  plain ``SET var = ...``); not when any part is GLOBAL/PERSIST, nor SET PASSWORD, SET DEFAULT ROLE,
  or TiDB's SET CONFIG / SET BINDING, which change state beyond the session, nor when a value does
  what a SELECT may not (``SET @x = NEXTVAL(s)``, ``GET_LOCK(..)``, ``(SELECT .. FOR UPDATE)``).
- USE.
- MariaDB's ``SET STATEMENT ... FOR x``: ``x`` decides.
- Not read-only although they look like queries: SELECTs that call ``NEXTVAL``/``SETVAL``/``NEXT VALUE
  FOR`` (sequences) or ``GET_LOCK``/``RELEASE_LOCK`` (named locks).

Everything else is not read-only: DML, DDL, CALL, DO, LOAD DATA, GRANT, LOCK TABLES, ANALYZE, ...

Where a string ends depends on the session's ``sql_mode``: under NO_BACKSLASH_ESCAPES
``"a\\" ; DELETE FROM t; -- "`` is a string, a DELETE and a comment, by default one string. With
the session's ``sql_mode`` known, the text is read that one way; without it, every way that can
differ (default, NO_BACKSLASH_ESCAPES, ANSI_QUOTES), and it is read-only only if it is so in all.
The same for what does not depend on the mode: a versioned comment (``/*!99999 ' */ ; DELETE FROM
t; -- ' */``) is code on a new server and, on an older one, a comment that ends at the first ``*/``
whatever quotes it holds; a session in gbk, big5 or sjis reads ``<lead byte>\\`` as one character.
"""
from __future__ import annotations

import re

from fastproxy._digest import normalize

# A back-quoted name, a system variable prefix, a word, or one punctuation character.
_TOKEN = re.compile(r"`(?:[^`]|``)*`?|@@|[\w$]+|\S")

_ALWAYS = frozenset({"show", "describe", "desc", "use", "commit", "rollback", "savepoint"})
_QUERY = frozenset({"select", "table", "values"})
# The statement a WITH clause leads to: the first of these outside the CTE definitions.
_WITH_MAIN = frozenset({"select", "table", "values", "insert", "update", "delete", "replace"})
_SET_DENY_FIRST = frozenset({"password", "default", "config", "binding", "bindings"})
_SET_DENY_ANY = frozenset({"global", "persist", "persist_only"})


# The common case, decided on the normalized text without tokenizing it; it is single-spaced and
# has no comments or strings left, so a plain search is exact (back-quoted names take the slow path).
_FIRST_WORD = re.compile(r"[\s(]*([\w$]+)")
# functions whose call changes state (sequences, named locks): a SELECT of them is not read-only
_SIDE_EFFECT_FUNCS = frozenset({"nextval", "setval", "get_lock", "release_lock", "release_all_locks"})
_LOCK_OR_WRITE = re.compile(r"\b(?:into|for (?:update|share)|lock in share mode|next value for|previous value for"
                            r"|(?:" + "|".join(sorted(_SIDE_EFFECT_FUNCS)) + r")\s*\()")
_SLOW_FIRST = frozenset({"with", "explain", "set", "start", "release", "begin"})
# sql_mode values that include ANSI_QUOTES (".." quotes a name)
_ANSI_QUOTES_MODES = frozenset({"ANSI_QUOTES", "ANSI", "DB2", "MAXDB", "MSSQL", "ORACLE", "POSTGRESQL"})
# a versioned comment: code on a server at least that new, a comment (quotes mean nothing) on an older one
_VERSIONED_COMMENT = re.compile(rb"/\*M?!\d{5}")
# a byte that may lead a two-byte gbk/big5/sjis character right before \ or `: in such a session
# (the handshake's, or SET NAMES) that byte pair is one character, which may move where a string ends
_DBCS_PAIR = re.compile(rb"[\x81-\xfe][\\`]")
_MAX_DBCS_READ = 1 << 20


def is_read_only(sql: str | bytes, sql_mode: str | None = None) -> bool:
    """True if ``sql`` (every statement in it) cannot change data or server-wide state.

    ``sql_mode``: the session's, when known (e.g. ``"STRICT_TRANS_TABLES,NO_BACKSLASH_ESCAPES"``);
    None: not known, so ``sql`` must be read-only whichever way the session reads backslashes.
    Whatever the mode, a text is also read as a server older than its versioned comments reads it,
    and, when its bytes allow it, as a session in a two-byte character set does (``SET NAMES gbk``).
    """
    data = sql.encode("utf-8", "surrogatepass") if isinstance(sql, str) else bytes(sql)
    if sql_mode is not None:
        modes = {m.strip().upper() for m in sql_mode.split(",")}
        quoting = [(("NO_BACKSLASH_ESCAPES" in modes), bool(modes & _ANSI_QUOTES_MODES))]
    elif b"\\" in data:
        # a backslash may end a string early in another session: read it those ways too
        quoting = [(False, False), (True, False), (False, True)]
    else:
        quoting = [(False, False)]
    servers = [False, True] if _VERSIONED_COMMENT.search(data) else [False]
    charsets: list[str | None] = [None]
    if _DBCS_PAIR.search(data):
        if len(data) > _MAX_DBCS_READ:
            return False    # too long to read three more ways on the loop: in doubt, a write
        charsets += ["gbk", "big5", "sjis"]
    for nbe, ansi in quoting:
        for skip in servers:
            for charset in charsets:
                text = normalize(data, no_backslash_escapes=nbe, ansi_quotes=ansi, skip_versioned=skip,
                                 charset=charset)
                # an older server that skips the whole text (/*!40101 SET NAMES utf8 */) runs nothing
                if not (skip and not text) and not _is_read_only_text(text):
                    return False
    return True


def _is_read_only_text(text: str) -> bool:
    """is_read_only on the normalizer's output."""
    if ";" not in text and "`" not in text:
        m = _FIRST_WORD.match(text)
        if m is None:
            return False
        first = m.group(1)
        if first in _QUERY:
            return _LOCK_OR_WRITE.search(text) is None
        if first not in _SLOW_FIRST:
            return first in _ALWAYS
    statements: list[list[str]] = [[]]
    for tok in _TOKEN.findall(text):
        if tok == ";":
            statements.append([])
        else:
            statements[-1].append(tok)
    statements = [s for s in statements if s]
    return bool(statements) and all(_statement_is_read_only(s) for s in statements)


def _statement_is_read_only(toks: list[str]) -> bool:
    # "(SELECT ...) UNION (SELECT ...)": the leading parentheses say nothing
    i = 0
    while i < len(toks) and toks[i] == "(":
        i += 1
    toks = toks[i:]
    if not toks:
        return False
    first = toks[0]
    if first in _QUERY:
        return _query_is_read_only(toks)
    if first == "with":
        return _with_is_read_only(toks)
    if first == "begin":
        # MariaDB's "BEGIN NOT ATOMIC ... END" is a compound statement that may write
        return not (len(toks) > 1 and toks[1] == "not")
    if first in _ALWAYS:
        return True
    if first == "start":
        return len(toks) > 1 and toks[1] == "transaction"
    if first == "release":
        return len(toks) > 1 and toks[1] == "savepoint"
    if first == "explain":
        if len(toks) > 1 and toks[1] == "analyze":
            rest = toks[2:]
            if rest[:2] == ["format", "="]:     # EXPLAIN ANALYZE FORMAT=TREE ...
                rest = rest[3:]
            return _statement_is_read_only(rest)
        return True
    if first == "set":
        return _set_is_read_only(toks)
    return False


def _query_is_read_only(toks: list[str]) -> bool:
    # subqueries cannot lock or write on their own, so scanning the whole statement is exact enough
    for i, tok in enumerate(toks):
        if tok == "into":
            return False
        if tok == "for" and i + 1 < len(toks) and toks[i + 1] in ("update", "share"):
            return False
        if tok == "lock" and toks[i + 1:i + 4] == ["in", "share", "mode"]:
            return False
        if tok == "next" and toks[i + 1:i + 3] == ["value", "for"]:  # MariaDB sequences
            return False
        if tok in _SIDE_EFFECT_FUNCS and toks[i + 1:i + 2] == ["("]:
            return False
    return True


def _with_is_read_only(toks: list[str]) -> bool:
    depth = 0
    for tok in toks[1:]:
        if tok == "(":
            depth += 1
        elif tok == ")":
            depth -= 1
        elif depth == 0 and tok in _WITH_MAIN:
            # reserved words, so outside quotes they can only be the main statement's keyword
            return tok in _QUERY and _query_is_read_only(toks)
    return False


def _set_is_read_only(toks: list[str]) -> bool:
    if len(toks) < 2 or toks[1] in _SET_DENY_FIRST:
        return False
    if toks[1] != "statement" and not _query_is_read_only(toks):
        return False    # SET @x = NEXTVAL(s), GET_LOCK(..), (SELECT .. FOR UPDATE): as in a SELECT
    if toks[1] == "statement":  # MariaDB "SET STATEMENT var=... FOR <statement>": the statement decides
        depth = 0
        for i, tok in enumerate(toks[2:], 2):
            depth += (tok == "(") - (tok == ")")
            if depth == 0 and tok == "for":
                return _statement_is_read_only(toks[i + 1:])
        return False
    # "SET a = 1, GLOBAL b = 2" and "SET @@global.x = 1" both reach past the session
    return not any(tok in _SET_DENY_ANY for tok in toks[1:])
