# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The token scanner behind the secret classifier (policy: ``fastproxy/secret_sql.py``).

It reads SQL the way the server's lexer does, so that comments and literals cannot hide or fake
a keyword: ``/* */``, ``-- `` and ``#`` comments are skipped, the bodies of executable comments
(``/*! */``, ``/*!50100 */``, ``/*M! */``) are code; strings ('..', "..") and back-quoted names
are single tokens. How a string ends depends on the session (``sql_mode`` NO_BACKSLASH_ESCAPES,
ANSI_QUOTES, a client character set whose two-byte characters may end in 0x5C or 0x60) and on the
server (one older than a versioned comment skips its body), so the caller names a *reading*, and
the scan reports when another reading could tokenize differently.

``scan`` is the hot path: one pass in C over the whole statement, no Python object per token.
It reports ``flags`` (unterminated, which readings may differ), ``signals`` (which kinds of
secret-bearing words occur as code) and, for the ``;``-separated parts that hold a signal, their
byte ranges. Only those parts are turned into Python tokens (``tokens``) for the policy.
Strings are skipped with ``memchr`` (an escaped quote is one preceded by an odd run of
backslashes), so a 70 MiB string literal costs about a memory scan.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.pyport cimport PY_SSIZE_T_MAX
from libc.stdlib cimport free, realloc
from libc.string cimport memchr, memcmp

# ---- readings (bit flags) -----------------------------------------------------------------------
cdef enum:
    _SQ_NOESC = 1       # backslash is not an escape in '..' (NO_BACKSLASH_ESCAPES)
    _DQ_NOESC = 2       # nor in ".." (NO_BACKSLASH_ESCAPES, or ANSI_QUOTES: ".." is a name)
    _DBCS_MASK = 12     # two-byte client character set whose trail bytes include 0x5C and 0x60:
    _DBCS_GBK = 4       #   gbk, gb18030: lead bytes 0x81-0xFE
    _DBCS_BIG5 = 8      #   big5: lead bytes 0xA1-0xF9
    _DBCS_SJIS = 12     #   sjis, cp932: lead bytes 0x81-0x9F, 0xE0-0xFC
    _FLAT_EXEC = 16     # a /* inside /*! */ does not nest: the next */ ends the executable comment
    _SKIP_VERSIONED = 32    # /*!50701 */, /*M!999999 */: the server is older than the version, so the
                            # body is a comment there, in which quotes mean nothing (MariaDB also skips
                            # MySQL-only versions 50700-99999): it ends at the first */ (one /* */ nests)

# ---- scan flags ---------------------------------------------------------------------------------
cdef enum:
    _F_UNTERMINATED = 1     # a string, name or comment runs to the end: the server would refuse it
    _F_BS_IN_SQ = 2         # a backslash inside '..': the NO_BACKSLASH_ESCAPES reading may differ
    _F_BS_IN_DQ = 4         # a backslash inside "..": the ANSI_QUOTES reading may differ
    _F_NESTED_IN_EXEC = 8   # /* inside /*! */: the flat reading may differ
    _F_VERSIONED = 16       # an executable comment with a version: a server older than it skips the body
    _F_DBCS_DIFFERS = 32    # a byte that may lead a two-byte character right before \ or `: a session
                            # in gbk/big5/sjis (SET NAMES may switch to it at any time) reads it otherwise

# ---- signals: code words (or shapes) that can carry a secret ------------------------------------
cdef enum:
    _SIG_AUTH = 1           # IDENTIFIED, PASSWORD, OLD_PASSWORD, MASTER_/SOURCE_PASSWORD, WSREP_SST_AUTH, ...
    _SIG_MYSQLDB = 2        # MYSQL, GLOBAL_PRIV: writes to the grant tables
    _SIG_DYNAMIC = 4        # PREPARE, IMMEDIATE: a string that is run as SQL
    _SIG_VARASSIGN = 8      # @var = / @var := / INTO @var: a string kept for later (PREPARE FROM @var)
    _SIG_CONNECTION = 16    # CONNECTION, OPTION_LIST, COMMENT: FEDERATED / CONNECT / Spider credentials
    _SIG_CRYPTO = 32        # ENCRYPT, AES_ENCRYPT, DES_DECRYPT, ENCODE, KDF, ...: key arguments

# ---- token kinds (tokens()) ---------------------------------------------------------------------
cdef enum:
    _T_WORD = 1         # keyword or bare name
    _T_QIDENT = 2       # `back-quoted name`
    _T_STR = 3          # '..' or ".."
    _T_LIT = 4          # number, X'..', B'..', N'..', _charset'..'
    _T_VAR = 5          # @name, @'name', @`name` (also the host part of 'user'@'host')
    _T_SYSVAR = 6       # @@name
    _T_OP = 7           # punctuation, one character (two for :=)
    _T_OPEN = 8         # unterminated string, name or comment: from its start to the end

READ_SQ_NOESC = _SQ_NOESC
READ_DQ_NOESC = _DQ_NOESC
READ_DBCS_MASK = _DBCS_MASK
READ_DBCS_GBK = _DBCS_GBK
READ_DBCS_BIG5 = _DBCS_BIG5
READ_DBCS_SJIS = _DBCS_SJIS
READ_FLAT_EXEC = _FLAT_EXEC
READ_SKIP_VERSIONED = _SKIP_VERSIONED
F_UNTERMINATED = _F_UNTERMINATED
F_BS_IN_SQ = _F_BS_IN_SQ
F_BS_IN_DQ = _F_BS_IN_DQ
F_NESTED_IN_EXEC = _F_NESTED_IN_EXEC
F_VERSIONED = _F_VERSIONED
F_DBCS_DIFFERS = _F_DBCS_DIFFERS
SIG_AUTH = _SIG_AUTH
SIG_MYSQLDB = _SIG_MYSQLDB
SIG_DYNAMIC = _SIG_DYNAMIC
SIG_VARASSIGN = _SIG_VARASSIGN
SIG_CONNECTION = _SIG_CONNECTION
SIG_CRYPTO = _SIG_CRYPTO
T_WORD = _T_WORD
T_QIDENT = _T_QIDENT
T_STR = _T_STR
T_LIT = _T_LIT
T_VAR = _T_VAR
T_SYSVAR = _T_SYSVAR
T_OP = _T_OP
T_OPEN = _T_OPEN

cdef enum:
    _RELEASE_GIL_BYTES = 65536  # longer statements are scanned without the GIL (the writer thread runs)


cdef struct Seg:
    Py_ssize_t start
    Py_ssize_t end
    int exec_depth


cdef struct Tok:
    int kind
    Py_ssize_t start
    Py_ssize_t end


cdef struct Scanner:
    const unsigned char* p
    int reading
    int flags
    unsigned int signals
    unsigned int seg_signals
    Py_ssize_t seg_start
    int seg_exec
    int exec_depth
    bint seg_literal        # the current segment has a string (or a literal that may spell one: X'..', 0x..)
    bint after_var          # the previous token was a user variable (not a host part)
    bint after_into         # the previous token was the word INTO
    unsigned int fn_signal  # the previous token was a quoted name of a secret-taking function:
                            # `password`('x') and, under ANSI_QUOTES, "aes_encrypt"(x, 'k') call it
    int prev_kind
    Py_ssize_t prev_end
    Seg* segs
    Py_ssize_t nsegs
    Py_ssize_t capsegs
    bint collect            # tokens(): keep every token in toks
    Tok* toks
    Py_ssize_t ntoks
    Py_ssize_t captoks
    Py_ssize_t max_toks     # tokens(): more than this many sets `over` (and the rest is not kept)
    bint over
    bint oom


# identifier bytes (letters, digits, _, $, and every byte of a multi-byte character)
cdef unsigned char _IDENT[256]
for _c in range(256):
    _IDENT[_c] = (chr(_c).isascii() and (chr(_c).isalnum() or chr(_c) in "_$")) or _c >= 0x80


# lengths and first letters of the signal words (_word_signal)
cdef enum:
    _SIG_LENGTHS = ((1 << 3) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12)
                    | (1 << 14) | (1 << 15) | (1 << 16) | (1 << 18) | (1 << 21))
cdef unsigned char _SIG_FIRST[256]
for _c in range(256):
    _SIG_FIRST[_c] = chr(_c).lower() in "acdegikmopsw" and chr(_c).isascii() and chr(_c).isalpha()


cdef inline bint _is_ident(unsigned char c) noexcept nogil:
    return _IDENT[c] != 0


cdef inline bint _is_lead(int mode, unsigned char c) noexcept nogil:
    if mode == _DBCS_GBK:
        return c >= 0x81 and c <= 0xFE
    if mode == _DBCS_BIG5:
        return c >= 0xA1 and c <= 0xF9
    if mode == _DBCS_SJIS:
        return (c >= 0x81 and c <= 0x9F) or (c >= 0xE0 and c <= 0xFC)
    return False


cdef inline Py_ssize_t _mb(int mode, const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """2 if p[i] starts a two-byte character in this reading (its trail may be \\ or `), else 1."""
    cdef unsigned char t
    if mode and i + 1 < n and _is_lead(mode, p[i]):
        t = p[i + 1]
        if t >= 0x40 and t != 0x7F and t != 0xFF:
            return 2
    return 1


cdef Py_ssize_t _skip_quoted(Scanner* s, Py_ssize_t i, Py_ssize_t n, unsigned char q, bint esc) noexcept nogil:
    """Index just past the string/name opened by the quote q at p[i]; -1 if it never ends."""
    cdef const unsigned char* p = s.p
    cdef const unsigned char* k
    cdef Py_ssize_t j = i + 1, start = i + 1, pos, b
    cdef int mode = s.reading & _DBCS_MASK
    if mode and (esc or q == b'`'):
        # two-byte characters may end in \ or `: walk character by character
        while j < n:
            if p[j] >= 0x80 and _mb(mode, p, j, n) == 2:
                j += 2
            elif esc and p[j] == b'\\':
                s.flags |= _F_BS_IN_SQ if q == b'\'' else _F_BS_IN_DQ
                j += 2
            elif p[j] == q:
                if j + 1 < n and p[j + 1] == q:
                    j += 2
                else:
                    return j + 1
            else:
                j += 1
        return -1
    while True:
        k = <const unsigned char*>memchr(p + j, q, n - j) if j < n else NULL
        if k == NULL:
            return -1
        pos = k - p
        if esc:
            # a quote is escaped when an odd run of backslashes precedes it: escapes pair up from
            # the left, and the byte before the run is never part of an escape that reaches into it
            b = pos
            while b > start and p[b - 1] == b'\\':
                b -= 1
            if (pos - b) & 1:
                j = pos + 1
                continue
        if not mode and q == b'`' and pos > start and _dbcs_lead(p[pos - 1]):
            s.flags |= _F_DBCS_DIFFERS     # `<lead>`: in gbk/big5/sjis that backquote is half a character
        if pos + 1 < n and p[pos + 1] == q:     # a doubled quote is a quote
            j = pos + 2
            continue
        if esc and memchr(p + start, b'\\', pos - start) != NULL:
            s.flags |= _F_BS_IN_SQ if q == b'\'' else _F_BS_IN_DQ
            if not mode and not s.flags & _F_DBCS_DIFFERS:
                for b in range(start + 1, pos):     # '<lead>\': a character there, not an escape
                    if p[b] == b'\\' and _dbcs_lead(p[b - 1]):
                        s.flags |= _F_DBCS_DIFFERS
                        break
        return pos + 1


cdef inline bint _grow_toks(Scanner* s) noexcept nogil:
    cdef Py_ssize_t cap = s.captoks * 2 if s.captoks else 64
    cdef Tok* t = <Tok*>realloc(s.toks, cap * sizeof(Tok))
    if t == NULL:
        s.oom = True
        return False
    s.toks = t
    s.captoks = cap
    return True


cdef inline void _tok(Scanner* s, int kind, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    cdef const unsigned char* p = s.p
    if s.after_var:
        if kind == _T_OP and (p[a] == b'=' or (p[a] == b':' and b - a == 2)):
            s.seg_signals |= _SIG_VARASSIGN
        s.after_var = False
    if s.after_into:
        if kind == _T_VAR:
            s.seg_signals |= _SIG_VARASSIGN
        s.after_into = False
    if s.fn_signal:
        if kind == _T_OP and p[a] == b'(':
            s.seg_signals |= s.fn_signal
        s.fn_signal = 0
    if kind == _T_OPEN:
        s.seg_literal = True    # an unterminated string may hide anything
    s.prev_kind = kind
    s.prev_end = b
    if s.collect:
        if s.ntoks >= s.max_toks:
            s.over = True
            return
        if s.ntoks >= s.captoks and not _grow_toks(s):
            return
        s.toks[s.ntoks].kind = kind
        s.toks[s.ntoks].start = a
        s.toks[s.ntoks].end = b
        s.ntoks += 1


cdef inline Py_ssize_t _quoted_end(Scanner* s, int kind, Py_ssize_t i, Py_ssize_t j, Py_ssize_t n) noexcept nogil:
    """A quoted token from i to its end j (-1: no closing quote, the rest is an open literal).
    Returns where scanning goes on."""
    if j < 0:
        s.flags |= _F_UNTERMINATED
        _tok(s, _T_OPEN, i, n)
        return n
    s.seg_literal = True
    _tok(s, kind, i, j)
    return j


cdef inline bint _is(const unsigned char* w, const char* kw, Py_ssize_t n) noexcept nogil:
    """w[:n] == kw, ignoring the case of w (kw is lower case)."""
    cdef Py_ssize_t k
    cdef unsigned char c
    for k in range(n):
        c = w[k]
        if c >= b'A' and c <= b'Z':
            c += 32
        if c != <unsigned char>kw[k]:
            return False
    return True


cdef unsigned int _word_signal(const unsigned char* w, Py_ssize_t n) noexcept nogil:
    """Signal bits of the word w[:n] (case-insensitive); 0 for all but a few words.

    By length first: most words have a length no signal word has, or differ in the first byte.
    """
    if n == 3:
        return _SIG_CRYPTO if _is(w, b"kdf", 3) else 0
    if n == 5:
        return _SIG_MYSQLDB if _is(w, b"mysql", 5) else 0
    if n == 6:
        return _SIG_CRYPTO if _is(w, b"encode", 6) or _is(w, b"decode", 6) else 0
    if n == 7:
        if _is(w, b"prepare", 7):
            return _SIG_DYNAMIC
        if _is(w, b"comment", 7):     # Spider keeps its connection (password included) in COMMENT
            return _SIG_CONNECTION
        return _SIG_CRYPTO if _is(w, b"encrypt", 7) else 0
    if n == 8:
        return _SIG_AUTH if _is(w, b"password", 8) else 0
    if n == 9:
        return _SIG_DYNAMIC if _is(w, b"immediate", 9) else 0
    if n == 10:
        if _is(w, b"identified", 10):
            return _SIG_AUTH
        return _SIG_CONNECTION if _is(w, b"connection", 10) else 0
    if n == 11:
        if _is(w, b"global_priv", 11):
            return _SIG_MYSQLDB
        if (_is(w, b"aes_encrypt", 11) or _is(w, b"aes_decrypt", 11) or _is(w, b"des_encrypt", 11)
                or _is(w, b"des_decrypt", 11)):
            return _SIG_CRYPTO
        return _SIG_CONNECTION if _is(w, b"option_list", 11) else 0
    if n == 12:
        return _SIG_AUTH if _is(w, b"old_password", 12) else 0
    if n == 14:
        return _SIG_AUTH if _is(w, b"wsrep_sst_auth", 14) else 0   # its value is user:password
    if n == 15:
        return _SIG_AUTH if _is(w, b"master_password", 15) or _is(w, b"source_password", 15) else 0
    if n == 16:
        return _SIG_AUTH if _is(w, b"ed25519_password", 16) else 0
    if n == 18:
        return _SIG_AUTH if _is(w, b"challenge_response", 18) else 0
    if n == 21:
        return _SIG_AUTH if _is(w, b"authentication_string", 21) else 0
    return 0


cdef inline bint _is_into(const unsigned char* w, Py_ssize_t n) noexcept nogil:
    return (n == 4 and (w[0] | 0x20) == b'i' and (w[1] | 0x20) == b'n' and (w[2] | 0x20) == b't'
            and (w[3] | 0x20) == b'o')


cdef void _end_segment(Scanner* s, Py_ssize_t end) noexcept nogil:
    cdef Py_ssize_t cap
    cdef Seg* g
    if s.seg_signals == _SIG_VARASSIGN and not s.seg_literal:
        s.seg_signals = 0   # a variable assigned, but no string that could be SQL for later
    if s.seg_signals:
        s.signals |= s.seg_signals
        if s.nsegs >= s.capsegs:
            cap = s.capsegs * 2 if s.capsegs else 8
            g = <Seg*>realloc(s.segs, cap * sizeof(Seg))
            if g == NULL:
                s.oom = True
                return
            s.segs = g
            s.capsegs = cap
        s.segs[s.nsegs].start = s.seg_start
        s.segs[s.nsegs].end = end
        s.segs[s.nsegs].exec_depth = s.seg_exec
        s.nsegs += 1
    s.seg_signals = 0
    s.seg_literal = False
    s.seg_start = end + 1
    s.seg_exec = s.exec_depth
    s.after_var = False
    s.after_into = False
    s.fn_signal = 0
    s.prev_kind = 0


cdef inline bint _dbcs_lead(unsigned char c) noexcept nogil:
    """c may lead a two-byte character in gbk, big5 or sjis (their lead ranges all lie in 0x81-0xFE)."""
    return c >= 0x81 and c <= 0xFE


cdef inline unsigned int _quoted_fn_signal(const unsigned char* p, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """The signal of the quoted name p[a:b] (quotes included) if it names a function taking a secret."""
    return _word_signal(p + a + 1, b - a - 2) & (_SIG_AUTH | _SIG_CRYPTO) if b - a >= 5 else 0


cdef Py_ssize_t _skip_versioned(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """Index just past the */ ending a skipped versioned comment whose body starts at p[i]; -1 if
    none. As the server's consume_comment(lip, 1): quotes mean nothing, one /* */ level nests."""
    cdef const unsigned char* k
    while i < n:
        if p[i] == b'/' and i + 1 < n and p[i + 1] == b'*':
            i += 2
            while True:     # the nested comment: to its first */
                k = <const unsigned char*>memchr(p + i, b'*', n - i) if i < n else NULL
                if k == NULL:
                    return -1
                i = (k - p) + 1
                if i < n and p[i] == b'/':
                    i += 1
                    break
        elif p[i] == b'*' and i + 1 < n and p[i + 1] == b'/':
            return i + 2
        else:
            i += 1
    return -1


cdef void _run(Scanner* s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """Scan p[i:n]; n is also where an unterminated token ends."""
    cdef const unsigned char* p = s.p
    cdef const unsigned char* k
    cdef unsigned char c, d, q
    cdef Py_ssize_t j, k0
    cdef int mode = s.reading & _DBCS_MASK
    cdef bint flat = (s.reading & _FLAT_EXEC) != 0
    cdef bint host
    while i < n:
        c = p[i]
        d = p[i + 1] if i + 1 < n else 0

        if c <= 32:     # blanks; every control byte too (NUL ends a query on the server: scanning on is safe)
            i += 1

        elif _is_ident(c):
            j = i + 1
            if mode:
                j = i
                while j < n:
                    if p[j] >= 0x80:
                        j += _mb(mode, p, j, n)
                    elif _IDENT[p[j]]:
                        j += 1
                    else:
                        break
            else:
                while j < n and _IDENT[p[j]]:
                    j += 1
                if j < n and (p[j] == b'`' or p[j] == b'\\') and _dbcs_lead(p[j - 1]):
                    s.flags |= _F_DBCS_DIFFERS     # a<lead>`: one character in gbk/big5/sjis, no name opened
            if j < n and ((p[j] == b'\'' and j - i == 1 and ((c | 0x20) == b'x' or (c | 0x20) == b'b'
                                                              or (c | 0x20) == b'n'))
                          or (c == b'_' and (p[j] == b'\'' or p[j] == b'"'))):
                q = p[j]
                if j - i == 1 and (c | 0x20) != b'n':
                    # X'..' / B'..': the lexer looks for the closing quote only
                    k = <const unsigned char*>memchr(p + j + 1, q, n - j - 1) if j + 1 < n else NULL
                    j = (k - p) + 1 if k != NULL else -1
                else:   # N'..', _charset'..': a string like any other
                    j = _skip_quoted(s, j, n, q, not (s.reading & (_SQ_NOESC if q == b'\'' else _DQ_NOESC)))
                i = _quoted_end(s, _T_LIT, i, j, n)
            elif c >= b'0' and c <= b'9':
                if c == b'0' and j - i > 2 and (p[i + 1] | 0x20) == b'x':
                    s.seg_literal = True
                _tok(s, _T_LIT, i, j)
                i = j
            else:
                # most words are ruled out here, without a call: by length, then by first letter
                if j - i <= 21 and (_SIG_LENGTHS >> (j - i)) & 1 and _SIG_FIRST[c]:
                    s.seg_signals |= _word_signal(p + i, j - i)
                _tok(s, _T_WORD, i, j)
                s.after_into = _is_into(p + i, j - i)
                i = j

        elif c == b'\'' or c == b'"':
            j = _skip_quoted(s, i, n, c, not (s.reading & (_SQ_NOESC if c == b'\'' else _DQ_NOESC)))
            k0 = i
            i = _quoted_end(s, _T_STR, i, j, n)
            if j >= 0 and c == b'"':    # after the token: _tok clears the signal it consumes
                s.fn_signal = _quoted_fn_signal(p, k0, j)

        elif c == b'`':
            j = _skip_quoted(s, i, n, c, False)
            if j < 0:
                s.flags |= _F_UNTERMINATED
                _tok(s, _T_OPEN, i, n)
                i = n
            else:
                if j - i - 2 <= 21 and (_SIG_LENGTHS >> (j - i - 2)) & 1:
                    # `mysql`.`user`, and keywords spelled as names (`PASSWORD` 'x', `MASTER_PASSWORD`='x':
                    # the server refuses them, but the text holds the secret all the same)
                    s.seg_signals |= _word_signal(p + i + 1, j - i - 2)
                _tok(s, _T_QIDENT, i, j)
                s.fn_signal = _quoted_fn_signal(p, i, j)
                i = j

        elif c == b'#' or (c == b'-' and d == b'-' and (i + 2 >= n or p[i + 2] <= 32)):
            k = <const unsigned char*>memchr(p + i, b'\n', n - i)
            i = (k - p) + 1 if k != NULL else n

        elif c == b'/' and d == b'*':
            if s.exec_depth > 0:
                s.flags |= _F_NESTED_IN_EXEC
            if flat and s.exec_depth > 0:
                _tok(s, _T_OP, i, i + 1)    # no nesting: "/", "*", and the next "*/" ends the comment
                i += 1
            elif i + 2 < n and (p[i + 2] == b'!' or (p[i + 2] == b'M' and i + 3 < n and p[i + 3] == b'!')):
                i += 3 if p[i + 2] == b'!' else 4
                j = i
                while j < n and p[j] >= b'0' and p[j] <= b'9':
                    j += 1
                if j - i >= 5:  # a version (5 or 6 digits): code on a newer server, a comment on an older one
                    s.flags |= _F_VERSIONED
                    if s.reading & _SKIP_VERSIONED:
                        j = _skip_versioned(p, j, n)
                        if j < 0:
                            s.flags |= _F_UNTERMINATED
                            _tok(s, _T_OPEN, i, n)
                            i = n
                        else:
                            i = j
                        continue
                i = j
                s.exec_depth += 1
            else:
                j = i + 2
                while True:
                    k = <const unsigned char*>memchr(p + j, b'*', n - j) if j < n else NULL
                    if k == NULL or (k - p) + 1 >= n:
                        j = -1
                        break
                    if k[1] == b'/':
                        j = (k - p) + 2
                        break
                    j = (k - p) + 1
                if j < 0:
                    s.flags |= _F_UNTERMINATED
                    _tok(s, _T_OPEN, i, n)
                    i = n
                else:
                    i = j

        elif c == b'*' and d == b'/' and s.exec_depth > 0:
            s.exec_depth -= 1
            i += 2

        elif c == b'@':
            if d == b'@':
                j = i + 2
                while j < n and _is_ident(p[j]):
                    j += 1
                _tok(s, _T_SYSVAR, i, j)
                i = j
            else:
                # 'user'@'host', user@host: the host part of an account, not a variable
                host = s.prev_end == i and (s.prev_kind == _T_STR or s.prev_kind == _T_QIDENT
                                            or s.prev_kind == _T_WORD)
                j = i + 1
                if j < n and (p[j] == b'\'' or p[j] == b'"' or p[j] == b'`'):
                    j = _skip_quoted(s, j, n, p[j],
                                     p[j] != b'`' and not (s.reading & (_SQ_NOESC if p[j] == b'\'' else _DQ_NOESC)))
                    if j < 0:
                        s.flags |= _F_UNTERMINATED
                        _tok(s, _T_OPEN, i, n)
                        i = n
                        continue
                else:
                    while j < n and (_is_ident(p[j]) or p[j] == b'.'):
                        j += 1
                _tok(s, _T_VAR, i, j)
                s.after_var = not host
                i = j

        elif c == b';':
            _end_segment(s, i)
            if s.oom:
                return
            if s.collect:   # tokens() of a whole text: ";" separates its statements
                _tok(s, _T_OP, i, i + 1)
            i += 1

        else:
            j = i + 2 if (c == b':' and d == b'=') else i + 1
            _tok(s, _T_OP, i, j)
            i = j

    if s.exec_depth > 0:
        s.flags |= _F_UNTERMINATED


cdef inline void _init(Scanner* s, const unsigned char* p, Py_ssize_t start, int reading, int exec_depth) noexcept nogil:
    s.p = p
    s.reading = reading
    s.flags = 0
    s.signals = 0
    s.seg_signals = 0
    s.seg_literal = False
    s.seg_start = start
    s.seg_exec = exec_depth
    s.exec_depth = exec_depth
    s.after_var = False
    s.after_into = False
    s.fn_signal = 0
    s.prev_kind = 0
    s.prev_end = -1
    s.segs = NULL
    s.nsegs = 0
    s.capsegs = 0
    s.collect = False
    s.toks = NULL
    s.ntoks = 0
    s.captoks = 0
    s.max_toks = 0
    s.over = False
    s.oom = False


cdef bytes _as_bytes(object data):
    if isinstance(data, bytes):
        return <bytes>data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"data must be bytes, not {type(data).__name__}")


cdef int needs_policy(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    """For the data plane's workers (no GIL): 1 when ``secret_sql.classify`` of these n bytes (in
    the default reading) must run its policy, 0 when it is CLEAN without it (no flags, no signals)."""
    cdef Scanner s
    cdef int out
    _init(&s, p, 0, 0, 0)
    _run(&s, 0, n)
    _end_segment(&s, n)
    out = s.oom or s.flags != 0 or s.signals != 0
    free(s.segs)
    return out


def scan(data, Py_ssize_t start=0, int reading=0):
    """Scan ``data[start:]`` in one reading.

    Returns ``(flags, signals, segments)``: ``flags`` F_* bits, ``signals`` the SIG_* bits seen
    as code, ``segments`` a tuple of ``(start, end, exec_depth)`` for each ``;``-separated part
    that holds a signal (``exec_depth``: executable comments open where it starts).
    """
    cdef bytes b = _as_bytes(data)
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(b)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    cdef Scanner s
    if start < 0 or start > n:
        raise ValueError("start out of range")
    _init(&s, p, start, reading, 0)
    try:
        if n - start >= _RELEASE_GIL_BYTES:
            with nogil:
                _run(&s, start, n)
                _end_segment(&s, n)
        else:
            _run(&s, start, n)
            _end_segment(&s, n)
        if s.oom:
            raise MemoryError()
        segments = tuple((s.segs[k].start, s.segs[k].end, s.segs[k].exec_depth) for k in range(s.nsegs))
        return s.flags, s.signals, segments
    finally:
        free(s.segs)


def tokens(data, Py_ssize_t start, Py_ssize_t end, int reading=0, int exec_depth=0,
           Py_ssize_t max_tokens=PY_SSIZE_T_MAX):
    """The tokens of ``data[start:end]`` (a segment from ``scan``) as ``(kind, start, end)`` tuples;
    None if there are more than ``max_tokens``.

    Comments are not tokens; an unterminated string, name or comment is one T_OPEN token that
    runs to ``end``. A segment from ``scan`` has no ``;`` in code, so its tokens end inside it.
    """
    cdef bytes b = _as_bytes(data)
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(b)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    cdef Scanner s
    cdef Py_ssize_t k
    if not (0 <= start <= end <= n):
        raise ValueError("range out of bounds")
    _init(&s, p, start, reading, exec_depth)
    s.collect = True
    s.max_toks = max_tokens
    try:
        _run(&s, start, end)
        if s.oom:
            raise MemoryError()
        if s.over:
            return None
        return [(s.toks[k].kind, s.toks[k].start, s.toks[k].end) for k in range(s.ntoks)]
    finally:
        free(s.toks)
        free(s.segs)
