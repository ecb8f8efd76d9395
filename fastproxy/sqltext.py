"""A small SQL lexer for the few statements whose *effect on a session* the proxy and the replay
must know: USE (only as a hint that the database may have changed; the server says to what),
SQL-level PREPARE / DEALLOCATE PREPARE, CREATE TEMPORARY TABLE / DROP TABLE, and KILL.

Not a parser: it splits a query into statements (quotes, back-quotes and comments respected,
executable comments ``/*! ... */`` read as SQL, since the server runs them) and looks at the first
words of each. Compound statements (``CREATE PROCEDURE ... BEGIN ... END``, ``BEGIN NOT ATOMIC``)
end the scan: the ``;`` inside their bodies do not separate statements.

Runs only on statements the cheap first-byte checks (`worth_scanning`) let through, never per
packet.
"""
from __future__ import annotations

import re
from typing import NamedTuple

_LEX = re.compile(rb"""
    (?P<ws>\s+)
  | (?P<xopen>/\*M?!\d*)                                 # executable comment: its content is SQL
  | (?P<comment>/\*.*?(?:\*/|\Z) | --(?=\s|\Z)[^\n]* | \#[^\n]*)
  | (?P<xclose>\*/)
  | (?P<str>'(?:[^'\\]|\\.|'')*(?:'|\Z) | "(?:[^"\\]|\\.|"")*(?:"|\Z))
  | (?P<quoted>`(?:[^`]|``)*(?:`|\Z))
  | (?P<semi>;)
  | (?P<word>@{0,2}[\w$]+)
  | (?P<other>.)
""", re.S | re.X)

WORD, NAME, STRING, OTHER = "word", "name", "string", "other"


class Token(NamedTuple):
    kind: str      # WORD (lower-cased), NAME (back-quoted, unquoted), STRING (quotes removed), OTHER
    text: str
    start: int     # byte offsets in the scanned SQL
    end: int


class Statement(NamedTuple):
    tokens: list[Token]
    sql: bytes     # the statement's own text (from its first token to its last)


def _unquote(raw: bytes, quote: bytes) -> str:
    body = raw[1:-1] if len(raw) >= 2 and raw.endswith(quote) else raw[1:]
    text = body.replace(quote + quote, quote)
    if quote != b"`":
        text = re.sub(rb"\\(.)", lambda m: {b"n": b"\n", b"t": b"\t", b"0": b"\0", b"r": b"\r"}.get(
            m.group(1), m.group(1)), text, flags=re.S)
    return text.decode("utf-8", "replace")


def statements(sql: bytes) -> list[Statement]:
    """The statements of a (multi-statement) query, comments dropped."""
    out: list[Statement] = []
    cur: list[Token] = []

    def flush() -> None:
        if cur:
            out.append(Statement(list(cur), sql[cur[0].start:cur[-1].end]))
            cur.clear()

    for m in _LEX.finditer(sql):
        kind = m.lastgroup
        raw = m.group()
        if kind in ("ws", "comment", "xopen", "xclose"):
            continue
        if kind == "semi":
            flush()
            if out and _compound(out[-1].tokens):
                cur.extend(out.pop().tokens)  # a body continues the compound statement: stop splitting
                cur.append(Token(OTHER, ";", m.start(), m.end()))
            continue
        if kind == "word":
            tok = Token(WORD, raw.decode("utf-8", "replace").lower(), m.start(), m.end())
        elif kind == "quoted":
            tok = Token(NAME, _unquote(raw, b"`"), m.start(), m.end())
        elif kind == "str":
            tok = Token(STRING, _unquote(raw, raw[:1]), m.start(), m.end())
        else:
            tok = Token(OTHER, raw.decode("latin-1"), m.start(), m.end())
        cur.append(tok)
    flush()
    return out


_ROUTINES = frozenset({"procedure", "function", "trigger", "event", "package"})


def _compound(toks: list[Token]) -> bool:
    """A statement whose body may hold `;` (stored routines, triggers, events, BEGIN NOT ATOMIC)."""
    words = [t.text for t in toks[:12] if t.kind == WORD]
    if not words:
        return False
    if words[0] == "begin" and len(words) > 1 and words[1] == "not":
        return True
    return words[0] in ("create", "alter") and any(w in _ROUTINES for w in words[1:])


def _words(toks: list[Token], n: int) -> list[str]:
    return [t.text if t.kind == WORD else "" for t in toks[:n]]


def _name_at(toks: list[Token], i: int) -> tuple[str | None, str | None, int]:
    """([db], name, next index) of a possibly qualified name starting at token i."""
    if i >= len(toks) or toks[i].kind not in (WORD, NAME):
        return None, None, i
    first = toks[i].text
    if i + 2 < len(toks) and toks[i + 1].text == "." and toks[i + 2].kind in (WORD, NAME):
        return first, toks[i + 2].text, i + 3
    return None, first, i + 1


class Effect(NamedTuple):
    kind: str            # "use", "prepare", "deallocate", "create_temp", "drop_table"
    name: str = ""       # statement name / table name ("" for use)
    db: str | None = None  # qualified table's database
    sql: bytes = b""     # the statement's text (prepare, create_temp)
    names: tuple = ()    # drop_table: ((db, name), ...)


# Bytes of a query scanned for session effects: the statements that have them are short, and a
# 70 MiB INSERT must not be tokenized (a `;` inside a BLOB makes it look like a multi-statement).
SCAN_LIMIT = 64 * 1024


def session_effects(sql: bytes) -> list[Effect]:
    """What a query does to the session state the proxy keeps, statement by statement, in its first
    SCAN_LIMIT bytes. A `;` beyond them adds Effect("maybe_use"): a later statement may have
    changed the current database (the server's answer, or the proxy's question, settles it)."""
    effects: list[Effect] = []
    if len(sql) > SCAN_LIMIT:
        if sql.find(b";", SCAN_LIMIT) >= 0:
            effects.append(Effect("maybe_use"))
        sql = sql[:SCAN_LIMIT]
    for st in statements(sql):
        toks = st.tokens
        w = _words(toks, 8)
        if not w or not w[0]:
            continue
        first = w[0]
        if first == "use":
            effects.append(Effect("use"))
        elif first == "prepare" and len(toks) > 1:
            effects.append(Effect("prepare", toks[1].text.lower(), sql=st.sql))
        elif first in ("deallocate", "drop") and len(w) > 1 and w[1] == "prepare" and len(toks) > 2:
            effects.append(Effect("deallocate", toks[2].text.lower()))
        elif first == "create":
            i = 1
            if w[1:3] == ["or", "replace"]:
                i = 3
            if i + 1 < len(w) and w[i] == "temporary" and w[i + 1] == "table":
                i += 2
                if w[i:i + 3] == ["if", "not", "exists"]:
                    i += 3
                db, name, _ = _name_at(toks, i)
                if name:
                    effects.append(Effect("create_temp", name.lower(), db, st.sql))
        elif first == "drop":
            i = 1
            if len(w) > 1 and w[1] == "temporary":
                i = 2
            if i < len(w) and w[i] == "table":
                i += 1
                if w[i:i + 2] == ["if", "exists"]:
                    i += 2
                names = []
                while True:
                    db, name, i = _name_at(toks, i)
                    if not name:
                        break
                    names.append((db, name.lower()))
                    if i < len(toks) and toks[i].text == ",":
                        i += 1
                        continue
                    break
                if names:
                    effects.append(Effect("drop_table", names=tuple(names)))
    return effects


# ---- cheap pre-checks (per command on the proxy) -------------------------------------------------
# The first two letters (after the command byte) of use / prepare / deallocate, drop / create:
# UPDATE, DELETE, CALL, COMMIT are turned away on them. Or whitespace / a comment (executable
# comments included) in front of the statement: then the regex decides.
_SECOND_LETTER = {ord(a): frozenset(b) for a, b in (("u", b"sS"), ("U", b"sS"), ("p", b"rR"), ("P", b"rR"),
                                                    ("d", b"rReE"), ("D", b"rReE"), ("c", b"rR"), ("C", b"rR"))}
_LEADING = frozenset(b" \t\r\n/#-")
FIRST_BYTES = frozenset(_SECOND_LETTER) | _LEADING  # any other first byte: no statement that matters
_START = re.compile(rb"(?:\s+|/\*(?!M?!).*?\*/|--\s[^\n]*\n|#[^\n]*\n|/\*M?!\d*)*"
                    rb"(?:use|prepare|deallocate|drop|create)\b", re.I | re.S)
SEMICOLON = re.compile(rb";")  # a multi-statement query may hold one after its first statement


def worth_scanning(payload, multi_statements: bool) -> bool:
    """Whether a COM_QUERY payload (command byte included; bytes or memoryview, never copied here)
    may hold a statement `session_effects` reports. False for nearly every query, fast."""
    if len(payload) < 3:
        return False
    first = payload[1]
    second = _SECOND_LETTER.get(first)
    if second is not None:
        if payload[2] in second and _START.match(payload, 1) is not None:
            return True
    elif first in _LEADING and _START.match(payload, 1) is not None:
        return True
    return multi_statements and has_semicolon(payload)


def has_semicolon(payload) -> bool:
    """A `;` after the command byte; memchr speed on bytes, no copy of a memoryview."""
    if type(payload) is bytes:
        return payload.find(b";", 1) >= 0
    return SEMICOLON.search(payload, 1) is not None


# ---- KILL ----------------------------------------------------------------------------------------
class Kill(NamedTuple):
    """`KILL [HARD|SOFT] [CONNECTION|QUERY] <thread id>`; `target` is None when it does not name a
    thread id (KILL QUERY ID <query id>, KILL USER <name>, an expression)."""

    query_only: bool
    target: int | None
    start: int   # byte span of the thread id in the SQL, for rewriting
    end: int
    why: str = ""  # why it cannot be mapped


def parse_kill(sql: bytes) -> Kill | None:
    """The KILL statement `sql` is, or None if it is not a (single) KILL statement."""
    sts = statements(sql)
    if len(sts) != 1:
        return None
    toks = sts[0].tokens
    if not toks or toks[0].kind != WORD or toks[0].text != "kill":
        return None
    i = 1
    if i < len(toks) and toks[i].kind == WORD and toks[i].text in ("hard", "soft"):
        i += 1
    query_only = False
    if i < len(toks) and toks[i].kind == WORD and toks[i].text in ("connection", "query"):
        query_only = toks[i].text == "query"
        i += 1
    if i < len(toks) and toks[i].kind == WORD and toks[i].text == "user":
        return Kill(query_only, None, 0, 0, "KILL USER names no connection")
    if i < len(toks) and toks[i].kind == WORD and toks[i].text == "id":
        return Kill(query_only, None, 0, 0, "KILL QUERY ID names a query id, not a thread id")
    if i == len(toks) - 1 and toks[i].kind == WORD and toks[i].text.isdigit():
        return Kill(query_only, int(toks[i].text), toks[i].start, toks[i].end)
    return Kill(query_only, None, 0, 0, "the thread id is not a number")
