"""Which SQL carries a secret, and how to record it without the secret.

Capture, the debug API and CONN_STATE records ask ``classify`` about every COM_QUERY and
COM_STMT_PREPARE text. The answer is one of:

- ``CLEAN``: no secret; record the text as it is;
- ``REDACTED``: every secret literal was found with certainty and replaced by the placeholder
  ``'__fastproxy_redacted__'`` (``PLACEHOLDER_LITERAL``); record the new text;
- ``DROPPED``: a secret may be there but cannot be cut out with certainty; record nothing.

The decision is made on tokens (``fastproxy/_sqlscan.pyx``), never on raw text: comments are
skipped, executable comments (``/*! */``, ``/*M! */``) are code, strings and back-quoted names
are single tokens, and the whole statement is read, however long. Where a string ends depends on
the session (``NO_BACKSLASH_ESCAPES``, ``ANSI_QUOTES``, a two-byte client character set, how
``/*`` nests inside ``/*! */``) and on the server (one older than a versioned comment's version skips
its body as a comment, in which quotes mean nothing), so the text is read every way that tokenizes it
differently: it is
secret if it is secret in any reading, and it is redacted only if every reading finds the same
secret literals. A text that is unterminated in every reading cannot be classified: dropped.

Secret literals (redacted when the value is one plain string; dropped when it is any other
literal or expression holding one):

- ``IDENTIFIED BY 'pw'``, ``IDENTIFIED BY PASSWORD 'hash'``, ``IDENTIFIED {WITH|VIA} plugin
  {BY|AS|USING} 'x'`` (and ``OR plugin USING 'y'``) in CREATE/ALTER USER, GRANT, anywhere;
- ``PASSWORD 'x'`` / ``PASSWORD = 'x'`` / ``SET PASSWORD [FOR user] = 'x'`` outside queries and
  DML (CREATE/ALTER SERVER ``OPTIONS (PASSWORD 'x')``, MySQL's ``START REPLICA ... PASSWORD='x'``,
  the ``PASSWORD='x'`` table option); ``REPLACE 'current'`` after them (MySQL);
- ``MASTER_PASSWORD = 'x'``, ``SOURCE_PASSWORD = 'x'`` (CHANGE MASTER / REPLICATION SOURCE);
  ``CHALLENGE_RESPONSE AS 'x'`` (MySQL); ``SET [GLOBAL] wsrep_sst_auth = 'user:pw'`` (Galera);
- the arguments of ``PASSWORD()``, ``OLD_PASSWORD()``, ``ED25519_PASSWORD()``, the password of
  ``ENCRYPT()``, the key of ``AES_ENCRYPT/AES_DECRYPT/DES_ENCRYPT/DES_DECRYPT()``,
  ``ENCODE/DECODE(str, key)``, ``KDF(key, ...)``.

These keywords count also when spelled as back-quoted names (`` `PASSWORD` 'x'``,
`` `MASTER_PASSWORD`='x'``): the server refuses them, but the text holds the secret all the same; so
does a back-quoted name or an expression where a secret goes (``IDENTIFIED BY `pw```, ``IDENTIFIED BY
CONCAT('pw')``): dropped.

Dropped outright: a ``?`` parameter in a secret position (the secret comes with every
COM_STMT_EXECUTE or COM_STMT_BULK_EXECUTE; the prepare, its executes and close are dropped);
SQL-level ``PREPARE ... FROM`` / ``EXECUTE IMMEDIATE`` whose text (a string) is or mentions any of
the above, or whose text is any expression other than one string or one user variable
(``UNHEX('..')``, ``FROM_BASE64('..')``, ``CONCAT('.. IDENTIFIE', CHAR(68), ..)``: the SQL it runs is
not in the text, so it cannot be proven clean); assignments to user variables (``SET @q = ...``,
``@q := ...``, ``INTO @q``) whose strings mention them (``PREPARE s FROM @q`` follows);
``AUTHENTICATION_STRING``; writes to ``mysql.user`` / ``mysql.global_priv`` / ``mysql.servers``
(CREATE SERVER's options, password included); an auth clause or secret position with a literal of
another kind, or an unterminated token; FEDERATED/CONNECT ``CONNECTION``/``OPTION_LIST`` strings
with credentials, and a table's or partition's ``COMMENT`` (outside DML) holding Spider's connection
parameters (``password "pw"``) or URL credentials; a text too large to look at within
``_MAX_SEGMENTS`` / ``_MAX_TOKENS``.

Functions are also recognised by a quoted name (`` `password`('x') ``; ``"password"('x')`` under
ANSI_QUOTES). A text that may become SQL (a user variable's value) is looked at piece by piece and
joined (``SET @q = CONCAT('ALTER USER u IDENT', 'IFIED BY ''s''')``).

Not detectable from the text alone (documented): a secret that reaches such a statement
through a variable or a procedure argument set by an earlier statement that does not mention
a password (``SET @p = 's'`` ... ``CALL set_password(@p)``; ``SET @q = CONCAT('ALTER USER u
IDENTIFIE', CHAR(68), ' BY ''s''')`` ... ``PREPARE st FROM @q``).
"""
from __future__ import annotations

import re

from fastproxy import _sqlscan as _s
from fastproxy.constants import TWO_BYTE_CHARSET_COLLATIONS

PLACEHOLDER = "__fastproxy_redacted__"
PLACEHOLDER_LITERAL = b"'" + PLACEHOLDER.encode() + b"'"

CLEAN = 0
REDACTED = 1
DROPPED = 2

_T_WORD, _T_QIDENT, _T_STR, _T_LIT, _T_VAR, _T_OP, _T_OPEN = (
    _s.T_WORD, _s.T_QIDENT, _s.T_STR, _s.T_LIT, _s.T_VAR, _s.T_OP, _s.T_OPEN)
_LITERALS = frozenset((_T_STR, _T_LIT, _T_OPEN))

_DBCS = {"gbk": _s.READ_DBCS_GBK, "big5": _s.READ_DBCS_BIG5, "sjis": _s.READ_DBCS_SJIS}
_MAX_DEPTH = 4      # PREPARE FROM 'EXECUTE IMMEDIATE ''...''': deeper nesting is dropped
# Work the policy may spend on one text (it runs on the event loop): beyond it, a text is treated as
# one that cannot be classified. Only pathological texts get there (2,000 statements in one text
# that each name a secret or assign a string to a user variable; 50,000 tokens in such statements).
_MAX_SEGMENTS = 2_000
_MAX_TOKENS = 50_000

# statements whose `password` is a column (WHERE password = 'x', UPDATE t SET password = ...)
_COLUMN_VERBS = frozenset((b"select", b"insert", b"update", b"delete", b"replace", b"with", b"values",
                           b"table", b"call", b"do", b"handler", b"load"))
_WRITE_VERBS = frozenset((b"insert", b"update", b"replace", b"load"))
# function -> which arguments are secrets (None: all); ENCODE/DECODE only in their 2-argument form
_SECRET_ARGS = {b"password": None, b"old_password": None, b"ed25519_password": None, b"encrypt": (0,),
                b"aes_encrypt": (1,), b"aes_decrypt": (1,), b"des_encrypt": (1,), b"des_decrypt": (1,),
                b"encode": (1,), b"decode": (1,), b"kdf": (0,)}
# functions whose value is a password hash (a secret position's value may be one: the call rule records it)
_HASH_CALLS = frozenset((b"password", b"old_password", b"ed25519_password"))
# grant tables (and mysql.servers: CREATE SERVER's options, password included) a write to which is dropped
_GRANT_TABLES = frozenset((b"user", b"global_priv", b"servers"))
# keywords that hold a secret also when spelled as a back-quoted name (`PASSWORD` 'x', `MASTER_PASSWORD`='x'):
# the server refuses them, but the text that reaches the capture holds the secret all the same
_QUOTED_KEYWORDS = frozenset((b"identified", b"password", b"master_password", b"source_password",
                              b"wsrep_sst_auth", b"challenge_response", b"authentication_string"))
_TWO_ARG_ONLY = frozenset((b"encode", b"decode"))
# a string that may become SQL later (dynamic SQL, a user variable) and mentions a secret keyword
_SECRET_WORDS = re.compile(rb"identified|password|authentication_string|global_priv|challenge_response"
                           rb"|(?:aes_|des_)?(?:en|de)crypt\s*\(|\b(?:en|de)code\s*\(", re.I)
# FEDERATED / CONNECT connection strings: scheme://user:password@host, ODBC's ...;PWD=secret
_URL_CREDENTIALS = re.compile(rb"://[^/@]*:[^/@]*@|\bpwd\s*=", re.I)
# Spider's table/partition COMMENT: comma-separated parameters, each a name and its quoted value
# (password "pw"); the names it (or a look-alike) may spell a password with
_COMMENT_CREDENTIALS = re.compile(rb"(?:password|passwd|pswd|pwd)\s*[=\"'`]", re.I)
# a text that may become SQL is also read as SQL up to this size (beyond: its secret words decide)
_MAX_TEXT_AS_SQL = 1 << 20
# texts up to this size whose bytes a two-byte character set reads otherwise are also read that way
# when the handshake named another (SET NAMES gbk may have come since); a larger one (a BLOB of binary
# data has such bytes) is read the handshake's way only: three more readings of 70 MiB would stall
# the proxy's loop
_MAX_DBCS_GUESS = 1 << 20
_NATIVE_HASH = re.compile(rb"\*[0-9a-fA-F]{40}")
# what the password hash functions and auth plugins store: PASSWORD() (mysql_native_password),
# OLD_PASSWORD() (16 hex digits), ED25519_PASSWORD() (43 base64 characters), MySQL's
# caching_sha2_password ($A$005$...) and sha256_password ($5$...)
_PASSWORD_HASH = re.compile(rb"\*[0-9a-fA-F]{40}|[0-9a-fA-F]{16}|[A-Za-z0-9+/]{43}|\$A\$[0-9]{3}\$.{20,}|\$5\$.+",
                            re.S)
_UNESCAPE = {ord("0"): b"\0", ord("b"): b"\b", ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t",
             ord("Z"): b"\x1a", ord("%"): b"\\%", ord("_"): b"\\_"}


def reading_for_collation(collation_id: int) -> int:
    """The base reading for a session's handshake collation (two-byte character sets differ)."""
    family = TWO_BYTE_CHARSET_COLLATIONS.get(collation_id)
    return _DBCS[family] if family else 0


def classify(data: bytes, start: int = 0, reading: int = 0) -> tuple[int, bytes | None]:
    """Classify the SQL in ``data[start:]`` (``data[:start]``, e.g. a command byte, is kept).

    Returns ``(CLEAN, data)``, ``(REDACTED, data with every secret literal replaced by
    PLACEHOLDER_LITERAL)`` or ``(DROPPED, None)``. ``reading``: ``reading_for_collation(...)``.
    """
    first = _s.scan(data, start, reading)
    if not first[0] and not first[1] and not reading:   # the common case: one C pass, nothing to look at
        return CLEAN, data
    spans = _analyse(data, start, reading, 0, first)
    if spans is None:
        return DROPPED, None
    if not spans:
        return CLEAN, data
    out = _apply(data, spans)
    # what is recorded is checked again: only placeholders may be left where secrets go
    again = _analyse(out, start, reading, 0)
    if again is None or any(out[a:b] != PLACEHOLDER_LITERAL for a, b in again):
        return DROPPED, None
    return REDACTED, out


def redact_text(sql: str, reading: int = 0) -> str | None:
    """``sql`` as it may be shown or recorded: itself, redacted, or None when it must not be."""
    data = sql.encode("utf-8", "surrogatepass")
    verdict, out = classify(data, 0, reading)
    if verdict == DROPPED:
        return None
    return sql if verdict == CLEAN else out.decode("utf-8", "replace")


def value_holds_secret(value: bytes, reading: int = 0) -> bool:
    """Whether a value kept by the session (a user variable's, read for a CONN_STATE record) must not
    be recorded: SQL that may carry a secret once run (``SET @q = 'ALTER USER u IDENTIFIED BY ...'``
    then ``PREPARE st FROM @q``), or a password hash (``SET @h = PASSWORD('s')``: with
    mysql_native_password the hash logs in as well as the password does)."""
    return _PASSWORD_HASH.fullmatch(value) is not None or _may_become_secret_sql(value, reading, 0)


def prepared_names(data: bytes, start: int = 0, reading: int = 0) -> list[tuple[bytes, bytes]]:
    """SQL-level prepared statements a text refers to: ``(b"prepare"|b"execute"|b"deallocate", name)``
    (none found in a text of more than _MAX_TOKENS tokens)."""
    toks = _s.tokens(data, start, len(data), reading, 0, _MAX_TOKENS) or []
    out = []
    for part in _split(toks, data):
        words = [_word(data, t) for t in part]
        if len(part) < 2:
            continue
        if words[0] == b"prepare" and len(part) >= 3:
            out.append((b"prepare", _name(data, part[1])))
        elif words[0] == b"execute" and words[1] != b"immediate":
            out.append((b"execute", _name(data, part[1])))
        elif words[0] in (b"deallocate", b"drop") and words[1] == b"prepare" and len(part) >= 3:
            out.append((b"deallocate", _name(data, part[2])))
    return out


# ---- readings ------------------------------------------------------------------------------------
def _analyse(data: bytes, start: int, base: int, depth: int, first=None) -> frozenset | None:
    """The secret literals' spans (same in every reading that matters), or None: drop.
    ``first``: ``scan(data, start, base)`` when the caller has it already."""
    readings = [base]
    if base & _s.READ_DBCS_MASK:    # the session may have left its two-byte character set (SET NAMES)
        readings.append(base & ~_s.READ_DBCS_MASK)
    results = []
    for reading in readings:    # grows while scanning: a reading may reveal that another differs
        if first is not None and reading == base:
            flags, signals, segments = first
        else:
            flags, signals, segments = _s.scan(data, start, reading)
        results.append((reading, flags, signals, segments))
        for other in _other_readings(reading, flags, len(data) - start):
            if other not in readings:
                readings.append(other)
    if all(flags & _s.F_UNTERMINATED for _, flags, _, _ in results):
        return None     # nothing reads this as complete SQL: cannot be classified
    if sum(len(segments) for _, _, _, segments in results) > _MAX_SEGMENTS:
        return None
    budget = _MAX_TOKENS
    seen: set[frozenset] = set()
    found_by: dict[int, set] = {}
    for reading, flags, signals, segments in results:
        spans: set = set()
        for seg_start, seg_end, exec_depth in segments:
            toks = _s.tokens(data, seg_start, seg_end, reading, exec_depth, budget)
            if toks is None:
                return None
            budget -= len(toks)
            found = _segment(data, toks, reading, depth)
            if found is None:
                return None
            spans |= found
        found_by[reading] = spans
        if reading & _s.READ_SKIP_VERSIONED and spans <= found_by.get(reading & ~_s.READ_SKIP_VERSIONED, spans):
            # the versioned comments' bodies as comments, no secret elsewhere: redacting the secrets
            # that code reading finds in them too changes only what this reading ignores
            continue
        # readings that complete must agree; an incomplete one counts only if it finds something
        if not flags & _s.F_UNTERMINATED or spans:
            seen.add(frozenset(spans))
    if len(seen) > 1:
        return None     # the readings disagree on where the secrets are: no redaction is certain
    return seen.pop() if seen else frozenset()


def _other_readings(reading: int, flags: int, size: int) -> list[int]:
    out = []
    if flags & _s.F_DBCS_DIFFERS and not reading & _s.READ_DBCS_MASK and size <= _MAX_DBCS_GUESS:
        # the session may have switched to a two-byte character set (SET NAMES gbk) since its handshake
        out += [reading | _s.READ_DBCS_GBK, reading | _s.READ_DBCS_BIG5, reading | _s.READ_DBCS_SJIS]
    if flags & _s.F_VERSIONED:
        out.append(reading | _s.READ_SKIP_VERSIONED)                  # a server older than the version
    if flags & (_s.F_BS_IN_SQ | _s.F_BS_IN_DQ):
        out.append(reading | _s.READ_SQ_NOESC | _s.READ_DQ_NOESC)     # NO_BACKSLASH_ESCAPES
    if flags & _s.F_BS_IN_DQ:
        out.append(reading | _s.READ_DQ_NOESC)                        # ANSI_QUOTES
    if flags & _s.F_NESTED_IN_EXEC:
        out.append(reading | _s.READ_FLAT_EXEC)
    return out


def _apply(data: bytes, spans) -> bytes:
    parts = []
    pos = 0
    for a, b in sorted(spans):
        parts.append(data[pos:a])
        parts.append(PLACEHOLDER_LITERAL)
        pos = b
    parts.append(data[pos:])
    return b"".join(parts)


# ---- tokens --------------------------------------------------------------------------------------
def _word(data: bytes, tok) -> bytes:
    return data[tok[1]:tok[2]].lower() if tok[0] == _T_WORD else b""


def _name(data: bytes, tok) -> bytes:
    text = data[tok[1]:tok[2]]
    if tok[0] == _T_QIDENT:
        text = text[1:-1].replace(b"``", b"`")
    return text.lower()


def _split(toks, data: bytes) -> list[list]:
    parts: list[list] = [[]]
    for t in toks:
        if t[0] == _T_OP and data[t[1]] == 0x3B:  # ";"
            parts.append([])
        else:
            parts[-1].append(t)
    return [p for p in parts if p]


def _unescape(body: bytes, quote: int, esc: bool) -> bytes:
    """The value of a string literal's body (between its quotes) as the server reads it."""
    doubled = bytes((quote, quote))
    if not esc or 0x5C not in body:
        return body.replace(doubled, doubled[:1])
    out = bytearray()
    i = 0
    n = len(body)
    while i < n:
        c = body[i]
        if c == 0x5C and i + 1 < n:
            nxt = body[i + 1]
            out += _UNESCAPE.get(nxt, bytes((nxt,)))
            i += 2
        elif c == quote and i + 1 < n and body[i + 1] == quote:
            out.append(quote)
            i += 2
        else:
            out.append(c)
            i += 1
    return bytes(out)


def _literal_value(data: bytes, tok, reading: int) -> bytes:
    """What a string-like literal stands for (its text for numbers)."""
    kind, a, b = tok
    text = data[a:b]
    if kind == _T_STR:
        esc = not reading & (_s.READ_SQ_NOESC if text[0] == 0x27 else _s.READ_DQ_NOESC)
        return _unescape(text[1:-1], text[0], esc)
    if kind != _T_LIT:
        return text
    head = text[:2].lower()
    try:
        if head == b"x'":
            return bytes.fromhex(text[2:-1].decode("ascii"))
        if head == b"0x":
            return bytes.fromhex(text[2:].decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return text
    q = min((i for i in (text.find(b"'"), text.find(b'"')) if i >= 0), default=-1)
    if q > 0 and head != b"b'":     # N'..', _charset'..'
        esc = not reading & (_s.READ_SQ_NOESC if text[q] == 0x27 else _s.READ_DQ_NOESC)
        return _unescape(text[q + 1:-1], text[q], esc)
    return text


def _quoted_name(data: bytes, tok) -> bytes:
    """The name a back-quoted or double-quoted (ANSI_QUOTES) token spells, lower-cased; b"" otherwise."""
    kind, a, b = tok
    if kind == _T_QIDENT or (kind == _T_STR and data[a] == 0x22):
        return data[a + 1:b - 1].lower()
    return b""


def _may_become_secret_sql(text: bytes, reading: int, depth: int) -> bool:
    """Whether a text that may be run as SQL later (dynamic SQL, a user variable's value) may carry a
    secret: it names one, or read as SQL it holds a secret literal."""
    if _SECRET_WORDS.search(text):
        return True
    if depth >= _MAX_DEPTH or len(text) > _MAX_TEXT_AS_SQL:
        return False
    return bool(_analyse(text, 0, reading & _s.READ_DBCS_MASK, depth + 1))  # None (not SQL): the words decided


def _verb(data: bytes, toks, i: int = 0) -> bytes:
    """The statement's leading keyword; MariaDB's SET STATEMENT ... FOR x: x's."""
    n = len(toks)
    while i < n and toks[i][0] == _T_OP and data[toks[i][1]] == 0x28:  # "("
        i += 1
    if i >= n:
        return b""
    first = _word(data, toks[i])
    if first == b"set" and i + 1 < n and _word(data, toks[i + 1]) == b"statement":
        depth = 0
        for k in range(i + 2, n):
            t = toks[k]
            if t[0] == _T_OP:
                depth += (data[t[1]] == 0x28) - (data[t[1]] == 0x29)
            elif depth == 0 and _word(data, t) == b"for":
                return _verb(data, toks, k + 1)
    return first


# ---- the policy for one ;-separated part that holds a signal ------------------------------------
class _Part:
    """The tokens of one statement and the secret literals found in them."""

    def __init__(self, data: bytes, toks, reading: int) -> None:
        self.data = data
        self.toks = toks
        self.reading = reading
        self.n = len(toks)
        self.words = [data[a:b].lower() if k == _T_WORD else b"" for k, a, b in toks]
        self.spans: set[tuple[int, int]] = set()

    def kind(self, i: int) -> int:
        return self.toks[i][0] if i < self.n else 0

    def op(self, i: int, ch: bytes) -> bool:
        t = self.toks[i] if i < self.n else None
        return t is not None and t[0] == _T_OP and self.data[t[1]:t[2]] == ch

    def word(self, i: int) -> bytes:
        return self.words[i] if i < self.n else b""

    def close_paren(self, i: int) -> int:
        """Index of the ")" matching the "(" at i, or -1."""
        depth = 0
        for k in range(i, self.n):
            if self.op(k, b"("):
                depth += 1
            elif self.op(k, b")"):
                depth -= 1
                if depth == 0:
                    return k
        return -1

    def has_literal(self, a: int, b: int) -> bool:
        """A literal, or a ? parameter (the value then comes with each COM_STMT_EXECUTE)."""
        return any(self.toks[k][0] in _LITERALS or self.op(k, b"?") for k in range(a, b))

    def value(self, i: int) -> int | None:
        """A secret value at token i: record it; return the index after it, None if it cannot be cut."""
        kind = self.kind(i)
        if kind == _T_STR:
            if self.kind(i + 1) in _LITERALS:     # 'a' 'b' concatenates: more than one literal
                return None
            t = self.toks[i]
            self.spans.add((t[1], t[2]))
            return i + 1
        if kind in _LITERALS or self.op(i, b"?"):  # X'..', N'..', a number, unterminated, a parameter
            return None
        if kind == _T_QIDENT:
            return None     # IDENTIFIED BY `pw`: refused by the server, but the secret is in the text
        w = self.word(i)
        if w in _HASH_CALLS and self.op(i + 1, b"("):
            end = self.close_paren(i + 1)         # the call rule records its argument
            return None if end < 0 else end + 1
        if w == b"random" and self.word(i + 1) == b"password":   # MySQL: BY RANDOM PASSWORD
            return i + 2
        if self.op(i, b"("):
            end = self.close_paren(i)
            if end < 0 or self.has_literal(i, end):
                return None
            return end + 1
        if self.introducer(i):
            return None     # _utf8mb4 'pw' (the server refuses it there, but it is recorded all the same)
        return i        # no literal there: nothing to hide

    def string_value(self, i: int) -> int | None:
        """value() where the server takes only a string (IDENTIFIED BY, MASTER_PASSWORD =): a call there
        (IDENTIFIED BY CONCAT('pw')) is refused, but recorded all the same; not where an expression is
        valid (PASSWORD = SHA2(CONCAT(pw, 'salt'), 256) in a procedure body is a column compared)."""
        if self.kind(i) == _T_WORD and self.word(i) not in _HASH_CALLS and self.op(i + 1, b"("):
            end = self.close_paren(i + 1)
            if end < 0 or self.has_literal(i + 1, end):
                return None
            return end + 1
        return self.value(i)

    def introducer(self, i: int) -> bool:
        """A character set introducer (_latin1, _binary) with its literal at i."""
        return self.word(i).startswith(b"_") and self.kind(i + 1) in _LITERALS

    def identified(self, i: int) -> bool:
        """IDENTIFIED at i: BY [PASSWORD] v | {WITH|VIA} plugin [{BY|AS|USING} v] [OR plugin ...]."""
        w = self.word(i + 1)
        if w == b"by":
            j = i + 2
            if self.word(j) == b"password" and not self.op(j + 1, b"("):
                j += 1
            return self.string_value(j) is not None
        if w not in (b"with", b"via"):
            return True     # a column or table named "identified": not an auth clause
        j = i + 2
        while True:
            if self.kind(j) not in (_T_WORD, _T_QIDENT, _T_STR):
                return True     # no plugin name: nothing more
            j += 1              # the plugin name is not a secret
            if self.word(j) in (b"by", b"as", b"using"):
                nxt = self.string_value(j + 1)
                if nxt is None:
                    return False
                j = nxt
            elif self.kind(j) in _LITERALS:
                return False    # a literal where none belongs
            if self.word(j) != b"or":
                return True
            j += 1

    def password_keyword(self, i: int) -> bool:
        """PASSWORD (not a call) outside queries/DML: PASSWORD 'x', PASSWORD = v, PASSWORD FOR u = v."""
        if i > 0 and self.op(i - 1, b"."):
            return True     # t.password: a column
        if self.kind(i + 1) in _LITERALS or self.op(i + 1, b"?") or self.introducer(i + 1):
            return self.value(i + 1) is not None
        if self.op(i + 1, b"="):
            return self.value(i + 2) is not None
        if self.word(i + 1) == b"for":  # SET PASSWORD FOR user = value
            depth = 0
            for k in range(i + 2, self.n):
                if self.op(k, b"("):
                    depth += 1
                elif self.op(k, b")"):
                    depth -= 1
                elif depth == 0 and self.op(k, b"="):
                    return self.value(k + 1) is not None
        return True

    def after_keyword(self, i: int) -> bool:
        """MASTER_PASSWORD = v, SOURCE_PASSWORD = v (also without =)."""
        if self.op(i + 1, b"=") or self.op(i + 1, b":="):
            return self.string_value(i + 2) is not None
        if self.kind(i + 1) in _LITERALS or self.op(i + 1, b"?"):
            return self.string_value(i + 1) is not None
        return True

    def setting(self, i: int) -> bool:
        """A system variable whose value is a secret (SET GLOBAL wsrep_sst_auth = 'user:pw'): its value
        is any expression, up to the next ',' (CONCAT('u:', 'pw') is as valid as a string): one plain
        string is recorded, an expression holding a literal cannot be cut."""
        if not (self.op(i + 1, b"=") or self.op(i + 1, b":=")):
            return True     # read, not set (SELECT @@wsrep_sst_auth)
        a = i + 2
        depth = 0
        b = a
        while b < self.n:
            if self.op(b, b"("):
                depth += 1
            elif self.op(b, b")"):
                depth -= 1
            elif depth == 0 and self.op(b, b","):
                break
            b += 1
        if b - a == 1 and self.kind(a) == _T_STR:
            return self.value(a) is not None
        return not self.has_literal(a, b) and not any(self.kind(k) == _T_QIDENT for k in range(a, b))

    def call(self, i: int, name: bytes) -> bool:
        """name(...) at i: record the secret arguments if each is one plain string."""
        end = self.close_paren(i + 1)
        if end < 0:
            return False
        args = []
        depth = 0
        a = i + 2
        for k in range(i + 2, end):
            if self.op(k, b"("):
                depth += 1
            elif self.op(k, b")"):
                depth -= 1
            elif depth == 0 and self.op(k, b","):
                args.append((a, k))
                a = k + 1
        if a < end or args:
            args.append((a, end))
        which = _SECRET_ARGS[name]
        if name in _TWO_ARG_ONLY and len(args) != 2:
            return True     # Oracle-mode DECODE(expr, search, result, ...): no key
        for idx, (a, b) in enumerate(args):
            if which is not None and idx not in which:
                continue
            if not self.has_literal(a, b):
                continue    # a column or a variable: nothing in the text
            if b - a == 1 and self.kind(a) == _T_STR:
                t = self.toks[a]
                self.spans.add((t[1], t[2]))
            else:
                return False
        return True

    def strings_may_become_secret_sql(self, a: int, b: int, depth: int) -> bool:
        """Whether the literals in tokens a..b, each or joined (CONCAT('ALTER USER u IDENT',
        'IFIED BY ''s'''), 'a' 'b', whatever stands between them), may carry a secret once run as SQL."""
        values = [_literal_value(self.data, t, self.reading) for t in self.toks[a:b] if t[0] in _LITERALS]
        if len(values) > 1:
            values.append(b"".join(values))
        return any(_may_become_secret_sql(v, self.reading, depth) for v in values)

    def dynamic(self, i: int, depth: int) -> bool:
        """The SQL text of PREPARE .. FROM / EXECUTE IMMEDIATE starting at token i."""
        end = self.n
        for k in range(i, self.n):
            if self.word(k) == b"using":     # EXECUTE IMMEDIATE '...' USING params
                end = k
                break
        if end - i == 1 and self.kind(i) == _T_STR:
            if depth >= _MAX_DEPTH:
                return False
            text = _literal_value(self.data, self.toks[i], self.reading)
            inner = _analyse(text, 0, self.reading & _s.READ_DBCS_MASK, depth + 1)
            return inner is not None and not inner     # only SQL without secrets is kept
        if end - i == 1 and self.kind(i) == _T_VAR:
            return True     # PREPARE s FROM @q: @q's assignment was looked at when it was made
        # any other expression (UNHEX('..'), FROM_BASE64('..'), CONCAT('.. IDENTIFIE', CHAR(68), ..),
        # CONCAT(@c, '..')) builds its SQL where the text cannot show it: it cannot be proven clean
        return False


def _segment(data: bytes, toks, reading: int, depth: int) -> set | None:
    """Secret literal spans in one statement, or None if it must be dropped."""
    # an unterminated token (T_OPEN) is a literal: where a secret goes, or in a string that is
    # checked for secret words, it makes the statement dropped; elsewhere it is text that this
    # reading does not run (it reaches the end: nothing follows it)
    p = _Part(data, toks, reading)
    n = p.n
    verb = _verb(data, toks)
    column = verb in _COLUMN_VERBS
    var_assign = False
    for i in range(n):
        kind = toks[i][0]
        if kind == _T_VAR:
            if p.op(i + 1, b"=") or p.op(i + 1, b":=") or (i > 0 and p.word(i - 1) == b"into"):
                if i == 0 or not (toks[i - 1][2] == toks[i][1] and toks[i - 1][0] in (_T_STR, _T_QIDENT, _T_WORD)):
                    var_assign = True
            continue
        if kind in (_T_QIDENT, _T_STR) and p.op(i + 1, b"("):
            name = _quoted_name(data, toks[i])    # `password`('x'), "aes_encrypt"(x, 'k') (ANSI_QUOTES)
            if name in _SECRET_ARGS and not p.call(i, name):
                return None
        if kind == _T_QIDENT and verb in _WRITE_VERBS:    # `mysql`.`user`, `global_priv`
            w = _name(data, toks[i])
            if w == b"global_priv" or (w == b"mysql" and p.op(i + 1, b".") and i + 2 < n
                                       and _name(data, toks[i + 2]) in _GRANT_TABLES):
                return None
        if kind == _T_QIDENT:
            w = _name(data, toks[i])
            if w not in _QUOTED_KEYWORDS or (i > 0 and p.op(i - 1, b".") and w != b"wsrep_sst_auth"):
                continue    # a name (a table's `password` column is t.`password`; not @@global.`wsrep_sst_auth`)
        elif kind != _T_WORD:
            continue
        else:
            w = p.words[i]
        ok = True
        if w == b"identified":
            ok = p.identified(i)
        elif w in _SECRET_ARGS and p.op(i + 1, b"("):
            ok = p.call(i, w)
        elif w == b"password":
            if not column:
                ok = p.password_keyword(i)
            elif p.op(i + 1, b"=") and p.kind(i + 2) == _T_STR and _NATIVE_HASH.fullmatch(
                    _literal_value(data, toks[i + 2], reading)):
                ok = False  # a grant-table hash written as a column (UPDATE user SET password = '*...')
        elif w in (b"master_password", b"source_password"):
            ok = p.after_keyword(i)
        elif w == b"wsrep_sst_auth":   # Galera's state transfer credentials, user:password
            ok = p.setting(i)
        elif w == b"replace" and not column and (p.kind(i + 1) == _T_STR or p.op(i + 1, b"?")):
            ok = p.value(i + 1) is not None          # MySQL: ... REPLACE 'current password'
        elif w == b"challenge_response" and p.word(i + 1) == b"as":
            ok = p.value(i + 2) is not None
        elif w == b"authentication_string":
            ok = False
        elif w == b"global_priv" and verb in _WRITE_VERBS:
            ok = False
        elif w == b"mysql" and verb in _WRITE_VERBS and p.op(i + 1, b".") and i + 2 < n and \
                _name(data, toks[i + 2]) in _GRANT_TABLES:
            ok = False
        elif w == b"prepare" and i + 2 < n and p.word(i + 2) == b"from":
            ok = p.dynamic(i + 3, depth)
        elif w == b"immediate" and i > 0 and p.word(i - 1) == b"execute":
            ok = p.dynamic(i + 1, depth)
        elif w in (b"connection", b"option_list"):
            j = i + 2 if p.op(i + 1, b"=") else i + 1
            if p.introducer(j):
                j += 1      # CONNECTION = _latin1 '...'
            if p.kind(j) in (_T_STR, _T_OPEN):
                value = _literal_value(data, toks[j], reading)
                ok = p.kind(j) == _T_STR and not (_URL_CREDENTIALS.search(value) or _SECRET_WORDS.search(value))
        elif w == b"comment" and not column:    # a table's or partition's: Spider's connection parameters
            j = i + 2 if p.op(i + 1, b"=") else i + 1
            if p.introducer(j):
                j += 1
            if p.kind(j) in (_T_STR, _T_OPEN):
                value = _literal_value(data, toks[j], reading)
                ok = p.kind(j) == _T_STR and not (_URL_CREDENTIALS.search(value)
                                                   or _COMMENT_CREDENTIALS.search(value))
        if not ok:
            return None
    if var_assign and p.strings_may_become_secret_sql(0, n, depth):
        return None     # a string kept in a variable, to be run later, that may carry a secret
    return p.spans
