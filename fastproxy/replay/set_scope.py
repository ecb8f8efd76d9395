"""The session's part of a SET that also assigns global variables (`SET SESSION a = 1, GLOBAL b = 2`):
a resumed connection sends its session statements again, and a global assignment is not one of
them (production's SET GLOBAL already ran on the replay server before the checkpoint, and global
settings are the server's, not the connection's)."""
from __future__ import annotations

from fastproxy._sqlscan import T_OP, T_OPEN, T_SYSVAR, T_VAR, T_WORD, scan, tokens

# A scope keyword holds for the assignments after it until the next one (MySQL and MariaDB:
# `SET GLOBAL a = 1, b = 2` sets both globally).
_SCOPE_WORDS = {b"global": True, b"persist": True, b"persist_only": True, b"session": False, b"local": False}
_SYSVAR_SCOPES = {b"@@global": True, b"@@persist": True, b"@@persist_only": True, b"@@session": False,
                  b"@@local": False}
# SET forms that are not a list of variable assignments
_NOT_ASSIGNMENTS = {b"statement", b"password", b"default", b"role", b"transaction", b"names", b"character",
                    b"charset"}


def session_assignments(sql: bytes) -> bytes | None:
    """`SET <the session assignments of sql>`, or None when it has none, is not such a SET, or is
    anything this does not rewrite safely (a comment, which may be an executable one; several
    statements; an unterminated string)."""
    if b"/*" in sql or b"#" in sql or b"--" in sql:
        return None
    flags, _, segments = scan(sql)
    if flags or len(segments) > 1:
        return None
    toks = tokens(sql, 0, len(sql))
    if not toks or any(kind == T_OPEN for kind, _, _ in toks):
        return None
    first, second = toks[0], toks[1] if len(toks) > 1 else None
    if first[0] != T_WORD or sql[first[1]:first[2]].lower() != b"set" or second is None:
        return None
    if second[0] == T_WORD and sql[second[1]:second[2]].lower() in _NOT_ASSIGNMENTS:
        return None
    kept, carried_global = [], False
    for part in _assignments(sql, toks[1:]):
        kind, start, end = part[0]
        text = sql[start:end].lower()
        if kind == T_WORD and text in _SCOPE_WORDS:
            carried_global = _SCOPE_WORDS[text]
            is_global = carried_global
        elif kind == T_SYSVAR:
            # @@global.x / @@session.x name their scope; a bare @@x after GLOBAL is not certain: left out
            is_global = _SYSVAR_SCOPES.get(text, carried_global)
        elif kind == T_VAR:
            is_global = False  # a user variable is the session's whatever the scope before it
        else:
            is_global = carried_global
        if not is_global:
            kept.append(sql[start:part[-1][2]])
    if not kept:
        return None
    return b"SET " + b", ".join(kept)


def _assignments(sql: bytes, toks: list) -> list[list]:
    """The tokens after SET, split at the commas outside parentheses."""
    parts, current, depth = [], [], 0
    for tok in toks:
        kind, start, end = tok
        if kind == T_OP:
            op = sql[start:end]
            if op == b"(":
                depth += 1
            elif op == b")":
                depth -= 1
            elif op == b"," and depth == 0:
                if current:
                    parts.append(current)
                current = []
                continue
        current.append(tok)
    if current:
        parts.append(current)
    return parts
