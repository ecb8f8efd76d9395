# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""SQL normalizer and digest, used to group replay failures by statement shape.

``normalize`` turns SQL into a canonical text close to MySQL/TiDB digest text:

- comments (``-- ``, ``#``, ``/* */``, optimizer hints ``/*+ */``) are dropped; the *content* of
  executable comments ``/*! */``, ``/*!50100 */``, ``/*M! */`` is kept, since MySQL runs it;
- literals become ``?``: quoted strings ('..' and "..", backslash and doubled-quote escapes; the
  readings of NO_BACKSLASH_ESCAPES and ANSI_QUOTES on request, see ``normalize``),
  numbers (ints, decimals, exponents, 0x.., 0b..), X'..', B'..', N'..'; a charset introducer
  (``_utf8mb4'..'``) goes with its string; a ``-``/``+`` sign is folded into the number after an
  operator, ``(``, ``,``, a keyword such as SELECT/WHERE/AND, or at the start; ``?`` placeholders
  stay ``?``; NULL, TRUE, FALSE stay keywords (but count as literals in the list collapse below);
- ``IN (?, ?, ?)`` and ``IN ((?, ?), (?, ?))`` become ``in (...)``; ``VALUES (?, ?), (?, ?)``
  becomes ``values (...)``, so batches of different sizes share a digest;
- keywords and identifiers are lower-cased (ASCII only); back-quoted identifiers are kept as
  written, back-quotes included, so they stay unambiguous and re-normalize to themselves;
- spacing is canonical: one space between tokens and around operators, none after ``(``, ``.``
  and ``@``, none before ``)``, ``,``, ``.`` and ``;``, one after ``,``; a ``(`` keeps a preceding
  space only if the input had one (``count(*)`` vs ``count (*)`` parse differently in MySQL),
  except after IN/VALUES where it is always ``in (``; trailing ``;`` are dropped.

Nothing raises on malformed SQL: an unterminated quote or comment runs to the end. ``bytes``
are scanned as UTF-8 without decoding first (only ASCII bytes drive the scanner, and they never
occur inside a multi-byte sequence); invalid sequences come out as U+FFFD.
"""
import hashlib

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_DecodeUTF8
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

cdef object _sha256 = hashlib.sha256

# Token kinds; the spacing rule and the list collapse look at the previous one.
cdef enum Kind:
    K_NONE
    K_WORD
    K_LIT
    K_OPEN
    K_CLOSE
    K_COMMA
    K_DOT
    K_AT
    K_OP
    K_SEMI

# What a '(' opened, for the collapse at its ')'.
cdef enum Group:
    G_PLAIN
    G_IN            # IN ( ... )
    G_VALUES        # first row after VALUES/VALUE
    G_VALUES_MORE   # a further row: ", (" right after a collapsed "values (...)"
    G_ROW           # a row value inside IN: "IN ((1, 2), (3, 4))"

cdef enum:
    MAX_DEPTH = 64      # deeper nesting is still normalized, only not collapsed
    STACK_BUF = 512     # output bytes that fit on the C stack (inputs up to 248 bytes)

cdef enum Keyword:
    KW_NONE
    KW_IN
    KW_VALUES       # VALUES or VALUE
    KW_OPERAND      # SELECT, WHERE, AND, ...: an operand follows, so a sign there is unary

cdef struct Paren:
    Py_ssize_t open_pos     # output offset of the '('
    int group
    int nlit
    bint all_lit
    bint parent_all_lit     # G_ROW: the enclosing IN group's flag before this row cleared it

cdef struct State:
    char* out
    Py_ssize_t len
    int prev
    int prev_kw             # previous token was a keyword we care about: one of KW_*
    bint had_ws             # whitespace or a comment since the previous token
    int depth
    Py_ssize_t values_end   # output offset just past the last collapsed "values (...)", or -1
    Paren parens[MAX_DEPTH]


cdef inline bint _is_space(unsigned char c) noexcept nogil:
    # every control character counts as blank: MySQL rejects them anyway, and NUL or \x1b must not
    # glue two tokens into one
    return c <= 32


cdef inline bint _is_ident(unsigned char c) noexcept nogil:
    return ((c >= b'a' and c <= b'z') or (c >= b'A' and c <= b'Z') or (c >= b'0' and c <= b'9')
            or c == b'_' or c == b'$' or c >= 0x80)


cdef inline bint _is_digit(unsigned char c) noexcept nogil:
    return c >= b'0' and c <= b'9'


cdef inline bint _is_hex(unsigned char c) noexcept nogil:
    return _is_digit(c) or (c >= b'a' and c <= b'f') or (c >= b'A' and c <= b'F')


cdef enum:
    MB_GBK = 1      # two-byte character sets whose second byte may be \\ or `: gbk, gb18030
    MB_BIG5 = 2     #   big5
    MB_SJIS = 3     #   sjis, cp932


cdef inline Py_ssize_t _mb(int mb, const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """2 if p[i] starts a two-byte character of character set ``mb`` (0: none), else 1."""
    cdef unsigned char c = p[i], t
    if mb == 0 or i + 1 >= n:
        return 1
    if not ((mb == MB_GBK and 0x81 <= c <= 0xFE) or (mb == MB_BIG5 and 0xA1 <= c <= 0xF9)
            or (mb == MB_SJIS and (0x81 <= c <= 0x9F or 0xE0 <= c <= 0xFC))):
        return 1
    t = p[i + 1]
    return 2 if t >= 0x40 and t != 0x7F and t != 0xFF else 1


cdef inline Py_ssize_t _skip_quoted(const unsigned char* p, Py_ssize_t i, Py_ssize_t n,
                                    unsigned char q, bint esc, int mb=0) noexcept nogil:
    """Index just past the string whose opening quote is at p[i]; n if unterminated. ``esc``: a
    backslash escapes the next byte (not in back-quoted names, nor under NO_BACKSLASH_ESCAPES);
    ``mb``: the text is in that two-byte character set (a character's second byte quotes nothing)."""
    i += 1
    while i < n:
        if mb and p[i] >= 0x80 and _mb(mb, p, i, n) == 2:
            i += 2
        elif esc and p[i] == b'\\':
            i += 2
        elif p[i] == q:
            if i + 1 < n and p[i + 1] == q:     # doubled quote is an escaped quote
                i += 2
            else:
                return i + 1
        else:
            i += 1
    return n


cdef inline void _begin(State* s, int kind) noexcept nogil:
    """Write the separator before a token of `kind` and update the enclosing paren group."""
    cdef int prev = s.prev
    cdef bint space
    if prev == K_NONE or prev == K_OPEN or prev == K_DOT or prev == K_AT:
        space = False
    elif kind == K_CLOSE or kind == K_COMMA or kind == K_DOT or kind == K_SEMI:
        space = False
    elif prev == K_COMMA or prev == K_SEMI:
        space = True
    elif kind == K_OPEN:
        space = s.had_ws or prev == K_OP or s.prev_kw == KW_IN or s.prev_kw == KW_VALUES
    elif kind == K_AT:
        space = s.had_ws or prev == K_OP
    else:
        space = True
    if space:
        s.out[s.len] = b' '
        s.len += 1
    # anything but literals and commas means this paren group is not a plain list of values
    if 0 < s.depth <= MAX_DEPTH and kind != K_LIT and kind != K_COMMA and kind != K_CLOSE:
        s.parens[s.depth - 1].all_lit = False
    s.prev = kind
    s.prev_kw = KW_NONE
    s.had_ws = False


cdef inline void _put(State* s, const unsigned char* p, Py_ssize_t n) noexcept nogil:
    memcpy(s.out + s.len, p, n)
    s.len += n


cdef inline void _literal(State* s) noexcept nogil:
    _begin(s, K_LIT)
    s.out[s.len] = b'?'
    s.len += 1
    if 0 < s.depth <= MAX_DEPTH:
        s.parens[s.depth - 1].nlit += 1


cdef inline bint _word_is(const char* w, Py_ssize_t n, const char* kw) noexcept nogil:
    cdef Py_ssize_t i = 0
    while i < n:
        if kw[i] == 0 or w[i] != kw[i]:
            return False
        i += 1
    return kw[n] == 0


cdef void _word(State* s, const unsigned char* p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i, start
    cdef unsigned char c
    cdef char* w
    cdef bint was_lit = 0 < s.depth <= MAX_DEPTH and s.parens[s.depth - 1].all_lit
    _begin(s, K_WORD)
    start = s.len
    for i in range(n):
        c = p[i]
        if c >= b'A' and c <= b'Z':
            c = c | 0x20
        s.out[s.len + i] = <char>c
    s.len += n
    w = s.out + start
    if n > 7:
        return
    if _word_is(w, n, b"in"):
        s.prev_kw = KW_IN
    elif _word_is(w, n, b"values") or _word_is(w, n, b"value"):
        s.prev_kw = KW_VALUES
    elif (_word_is(w, n, b"select") or _word_is(w, n, b"where") or _word_is(w, n, b"and")
          or _word_is(w, n, b"or") or _word_is(w, n, b"not") or _word_is(w, n, b"between")
          or _word_is(w, n, b"when") or _word_is(w, n, b"then") or _word_is(w, n, b"else")
          or _word_is(w, n, b"like") or _word_is(w, n, b"having") or _word_is(w, n, b"return")
          or _word_is(w, n, b"xor") or _word_is(w, n, b"case")):
        s.prev_kw = KW_OPERAND
    elif 0 < s.depth <= MAX_DEPTH and (_word_is(w, n, b"null") or _word_is(w, n, b"true")
                                       or _word_is(w, n, b"false")):
        # constants, so "IN (1, NULL)" still collapses; _begin cleared the flag, restore it
        s.parens[s.depth - 1].all_lit = was_lit
        s.parens[s.depth - 1].nlit += 1


cdef void _open(State* s) noexcept nogil:
    cdef int group = G_PLAIN
    cdef bint parent_all_lit = False
    cdef Paren* g
    if s.prev_kw == KW_IN:
        group = G_IN
    elif s.prev_kw == KW_VALUES:
        group = G_VALUES
    elif s.prev == K_COMMA and s.values_end >= 0 and s.len == s.values_end + 1:
        group = G_VALUES_MORE
    elif (0 < s.depth <= MAX_DEPTH and s.parens[s.depth - 1].group == G_IN
          and (s.prev == K_OPEN or s.prev == K_COMMA)):
        group = G_ROW
        parent_all_lit = s.parens[s.depth - 1].all_lit
    _begin(s, K_OPEN)
    if s.depth < MAX_DEPTH:
        g = &s.parens[s.depth]
        g.open_pos = s.len
        g.group = group
        g.nlit = 0
        g.all_lit = True
        g.parent_all_lit = parent_all_lit
    s.depth += 1
    s.out[s.len] = b'('
    s.len += 1


cdef void _close(State* s) noexcept nogil:
    cdef Paren* g
    _begin(s, K_CLOSE)
    if s.depth > 0:
        s.depth -= 1
        if s.depth < MAX_DEPTH:
            g = &s.parens[s.depth]
            if g.group != G_PLAIN and g.all_lit and g.nlit > 0:
                if g.group == G_ROW:
                    # a row of constants is one constant of the IN list: undo what its '(' cleared
                    s.parens[s.depth - 1].all_lit = g.parent_all_lit
                    s.parens[s.depth - 1].nlit += 1
                    s.out[s.len] = b')'
                    s.len += 1
                    return
                if g.group == G_VALUES_MORE:
                    s.len = s.values_end          # drop ", (...)": the rows merge into one
                    return
                s.len = g.open_pos
                memcpy(s.out + s.len, b"(...)", 5)
                s.len += 5
                if g.group == G_VALUES:
                    s.values_end = s.len
                return
    s.out[s.len] = b')'
    s.len += 1


cdef void _blank_trails(State* s, const unsigned char* p, Py_ssize_t n, int mb) noexcept nogil:
    """The last n bytes written copy p[:n]: where a two-byte character's second byte is \\ or `, write
    _ instead, so that no later reader of the output takes it for a quote or an escape."""
    cdef Py_ssize_t k = 0
    cdef char* o = s.out + s.len - n
    while k < n:
        if p[k] >= 0x80 and _mb(mb, p, k, n) == 2:
            if p[k + 1] == b'\\' or p[k + 1] == b'`':
                o[k + 1] = b'_'
            k += 2
        else:
            k += 1


cdef Py_ssize_t _skip_versioned(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """Index just past the */ that ends a versioned comment skipped as a comment, its body starting
    at p[i] (n if none): quotes mean nothing there, one /* */ nests (the server's consume_comment)."""
    while i < n:
        if p[i] == b'/' and i + 1 < n and p[i + 1] == b'*':
            i += 2
            while i < n and not (p[i] == b'*' and i + 1 < n and p[i + 1] == b'/'):
                i += 1
            i += 2
        elif p[i] == b'*' and i + 1 < n and p[i + 1] == b'/':
            return i + 2
        else:
            i += 1
    return n


cdef Py_ssize_t _normalize(const unsigned char* p, Py_ssize_t n, char* out, bint sq_esc,
                           bint dq_esc, bint skip_versioned=False, int mb=0) noexcept nogil:
    """Write the normalized form of p[:n] to out (at least 2 * n + 16 bytes); return its length.
    ``sq_esc`` / ``dq_esc``: a backslash escapes in '..' / ".." strings (the server's default);
    ``skip_versioned``: versioned comments are comments (a server older than their version);
    ``mb``: the text is in a two-byte character set (MB_*).

    Every token writes at most one separator plus no more bytes than it consumed, and a collapsed
    "(...)" (5 bytes plus a space) replaces at least three input bytes, so 2 * n bounds the output.
    """
    cdef State s
    cdef Py_ssize_t i = 0, j
    cdef unsigned char c, d
    cdef bint in_exec = False   # inside /*! ... */ whose content we keep
    cdef bint only_digits
    s.out = out
    s.len = 0
    s.prev = K_NONE
    s.prev_kw = KW_NONE
    s.had_ws = False
    s.depth = 0
    s.values_end = -1

    while i < n:
        c = p[i]
        d = p[i + 1] if i + 1 < n else 0

        if _is_space(c):
            s.had_ws = True
            i += 1

        elif c == b'#' or (c == b'-' and d == b'-' and (i + 2 >= n or _is_space(p[i + 2]))):
            # "--" starts a comment only when followed by a blank (MySQL); "a--1" is a - (-1)
            while i < n and p[i] != b'\n':
                i += 1
            s.had_ws = True

        elif c == b'/' and d == b'*':
            if i + 2 < n and (p[i + 2] == b'!' or (p[i + 2] == b'M' and i + 3 < n and p[i + 3] == b'!')):
                i += 3 if p[i + 2] == b'!' else 4
                j = i
                while j < n and _is_digit(p[j]):    # optional version number
                    j += 1
                if skip_versioned and j - i >= 5:
                    i = _skip_versioned(p, j, n)
                else:
                    i = j
                    in_exec = True
            else:
                i += 2
                while i < n and not (p[i] == b'*' and i + 1 < n and p[i + 1] == b'/'):
                    i += 1
                i += 2
            s.had_ws = True

        elif c == b'*' and d == b'/' and in_exec:
            in_exec = False
            s.had_ws = True
            i += 2

        elif c == b'\'' or c == b'"':
            _literal(&s)
            i = _skip_quoted(p, i, n, c, sq_esc if c == b'\'' else dq_esc, mb)

        elif c == b'`':
            j = _skip_quoted(p, i, n, c, False, mb)
            _begin(&s, K_WORD)
            _put(&s, p + i, j - i)
            if mb:
                _blank_trails(&s, p + i, j - i, mb)
            i = j

        elif _is_digit(c) or (c == b'.' and _is_digit(d) and
                              (s.had_ws or (s.prev != K_WORD and s.prev != K_CLOSE))):
            j = i
            only_digits = False
            if c == b'0' and (d == b'x' or d == b'X') and i + 2 < n and _is_hex(p[i + 2]):
                j = i + 2
                while j < n and _is_hex(p[j]):
                    j += 1
                only_digits = True
            elif (c == b'0' and (d == b'b' or d == b'B') and i + 2 < n
                  and (p[i + 2] == b'0' or p[i + 2] == b'1')):
                j = i + 2
                while j < n and (p[j] == b'0' or p[j] == b'1'):
                    j += 1
                only_digits = True
            else:
                while j < n and _is_digit(p[j]):
                    j += 1
                only_digits = j < n and p[j] != b'.'
                if j < n and p[j] == b'.':
                    j += 1
                    while j < n and _is_digit(p[j]):
                        j += 1
                if j < n and (p[j] == b'e' or p[j] == b'E'):
                    if j + 1 < n and _is_digit(p[j + 1]):
                        only_digits = False
                        j += 1
                    elif j + 2 < n and (p[j + 1] == b'+' or p[j + 1] == b'-') and _is_digit(p[j + 2]):
                        only_digits = False
                        j += 2
                    while j < n and _is_digit(p[j]):
                        j += 1
            if only_digits and j < n and _is_ident(p[j]):
                # "1abc" or "0xzz": MySQL reads an identifier that starts with digits
                while j < n and _is_ident(p[j]):
                    j += 1
                _word(&s, p + i, j - i)
            else:
                _literal(&s)
            i = j

        elif _is_ident(c):
            j = i + _mb(mb, p, i, n)
            while j < n and _is_ident(p[j]):
                j += _mb(mb, p, j, n)
            d = c | 0x20
            if j < n and p[j] == b'\'' and j - i == 1 and (d == b'x' or d == b'b' or d == b'n'):
                _literal(&s)                        # X'..', B'..', N'..'
                i = _skip_quoted(p, j, n, p[j], sq_esc, mb)
            elif j < n and c == b'_' and (p[j] == b'\'' or p[j] == b'"'):
                _literal(&s)                        # _utf8mb4'..': the introducer goes too
                i = _skip_quoted(p, j, n, p[j], sq_esc if p[j] == b'\'' else dq_esc, mb)
            else:
                _word(&s, p + i, j - i)
                if mb:
                    _blank_trails(&s, p + i, j - i, mb)
                i = j

        elif c == b'?':
            _literal(&s)
            i += 1

        elif c == b'(':
            _open(&s)
            i += 1

        elif c == b')':
            _close(&s)
            i += 1

        elif c == b',':
            _begin(&s, K_COMMA)
            s.out[s.len] = b','
            s.len += 1
            i += 1

        elif c == b';':
            _begin(&s, K_SEMI)
            s.out[s.len] = b';'
            s.len += 1
            i += 1

        elif c == b'.':
            _begin(&s, K_DOT)
            s.out[s.len] = b'.'
            s.len += 1
            i += 1

        elif c == b'@':
            j = i + 2 if d == b'@' else i + 1
            _begin(&s, K_AT)
            _put(&s, p + i, j - i)
            i = j

        else:
            if ((c == b'-' or c == b'+') and d != b'>' and
                    (s.prev == K_NONE or s.prev == K_OP or s.prev == K_OPEN or s.prev == K_COMMA
                     or s.prev == K_SEMI or s.prev_kw == KW_OPERAND)):
                # a sign where no operand precedes is unary: fold it into a following number
                j = i + 1
                while j < n and _is_space(p[j]):
                    j += 1
                if j < n and (_is_digit(p[j]) or (p[j] == b'.' and j + 1 < n and _is_digit(p[j + 1]))):
                    i = j
                    continue
            j = i + 1
            if i + 2 < n and ((c == b'<' and d == b'=' and p[i + 2] == b'>') or
                              (c == b'-' and d == b'>' and p[i + 2] == b'>')):
                j = i + 3
            elif ((c == b'<' and (d == b'=' or d == b'>' or d == b'<')) or
                  (c == b'>' and (d == b'=' or d == b'>')) or
                  (c == b'!' and d == b'=') or (c == b':' and d == b'=') or
                  (c == b'|' and d == b'|') or (c == b'&' and d == b'&') or
                  (c == b'-' and d == b'>')):
                j = i + 2
            _begin(&s, K_OP)
            _put(&s, p + i, j - i)
            i = j

    # "select 1;" and "select 1" are the same statement
    while s.len > 0 and (s.out[s.len - 1] == b';' or s.out[s.len - 1] == b' '):
        s.len -= 1
    return s.len


cdef str _normalize_obj(object sql, bint sq_esc=True, bint dq_esc=True, bint skip_versioned=False, int mb=0):
    cdef const unsigned char* p
    cdef Py_ssize_t n, m
    cdef char stack_buf[STACK_BUF]
    cdef char* out
    if isinstance(sql, str):
        try:
            p = <const unsigned char*>PyUnicode_AsUTF8AndSize(sql, &n)
        except UnicodeEncodeError:
            # lone surrogates: keep them as bytes, the final decode turns them into U+FFFD
            sql = (<str>sql).encode("utf-8", "surrogatepass")
            p = <const unsigned char*>PyBytes_AS_STRING(sql)
            n = PyBytes_GET_SIZE(sql)
    elif isinstance(sql, bytes):
        p = <const unsigned char*>PyBytes_AS_STRING(sql)
        n = PyBytes_GET_SIZE(sql)
    elif isinstance(sql, (bytearray, memoryview)):
        sql = bytes(sql)
        p = <const unsigned char*>PyBytes_AS_STRING(sql)
        n = PyBytes_GET_SIZE(sql)
    else:
        raise TypeError(f"sql must be str or bytes, not {type(sql).__name__}")

    if 2 * n + 16 <= STACK_BUF:
        out = stack_buf     # short statements, the common case, need no allocation
    else:
        out = <char*>malloc(2 * n + 16)
        if out == NULL:
            raise MemoryError()
    try:
        # the GIL stays held: releasing it costs more than normalizing a short statement
        m = _normalize(p, n, out, sq_esc, dq_esc, skip_versioned, mb)
        return PyUnicode_DecodeUTF8(out, m, "replace")
    finally:
        if out != stack_buf:
            free(out)


_MB = {None: 0, "gbk": MB_GBK, "big5": MB_BIG5, "sjis": MB_SJIS}


def normalize(sql, *, bint no_backslash_escapes=False, bint ansi_quotes=False, bint skip_versioned=False,
              charset=None):
    """Canonical text of ``sql`` (str or bytes), literals replaced by ``?``; never fails on bad SQL.

    By default strings are read as the server does by default. ``no_backslash_escapes``: as under
    sql_mode NO_BACKSLASH_ESCAPES (a backslash escapes nothing); ``ansi_quotes``: as under
    ANSI_QUOTES, where ".." quotes a name, so a backslash inside does not escape either (the text
    still becomes ``?``); ``skip_versioned``: as a server older than the versions of the versioned
    comments (``/*!50701 */``, ``/*M!100500 */``) reads them: comments, ending at the first ``*/``
    whatever quotes they hold; ``charset``: ``"gbk"``, ``"big5"`` or ``"sjis"`` (bytes only), a
    two-byte character set whose characters may end in ``\\`` or `````. The flags change only where
    a string or comment ends, i.e. which text is SQL.
    """
    return _normalize_obj(sql, not no_backslash_escapes, not (no_backslash_escapes or ansi_quotes),
                          skip_versioned, _MB[charset])


def digest(sql):
    """SHA-256 hex digest of ``normalize(sql)`` encoded as UTF-8."""
    return _sha256(_normalize_obj(sql).encode("utf-8")).hexdigest()
