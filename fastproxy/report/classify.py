"""What a statement's result may legitimately depend on, read from its normalized SQL
(`fastproxy._digest.normalize`: literals already replaced by `?`, so a string such as 'now()' never
matches, keywords lower-cased, canonical spacing).

- `nondeterministic_reasons`: time, randomness, the session, server metadata, row choice left to the
  server (`LIMIT` without `ORDER BY`), concatenation order (`GROUP_CONCAT` without `ORDER BY`), other
  sessions (`SKIP LOCKED`). A result difference on such a statement is counted apart with its reason,
  never reported as a mismatch.
- `ordered_result`: whether the rows come in a defined order (a top-level `ORDER BY` in every
  statement), so that the ordered fingerprint is compared rather than the unordered one.
"""
from __future__ import annotations

import re

_TOKEN = re.compile(r"@@[\w.$]+|@[\w.$]+|`[^`]*`|[a-z_][\w$]*|\?|\d+|[();,.]|\S")

_TIME = {"now", "sysdate", "curdate", "curtime", "current_timestamp", "current_date", "current_time", "localtime",
         "localtimestamp", "utc_timestamp", "utc_date", "utc_time", "sleep", "benchmark"}
_TIME_WITHOUT_ARGS = {"unix_timestamp"}  # unix_timestamp(d) is a pure function of d
_RANDOM = {"rand", "uuid", "uuid_short", "sys_guid", "random_bytes"}
_SESSION = {"connection_id", "found_rows", "row_count", "user", "current_user", "session_user", "system_user",
            "current_role", "last_insert_id"}  # last_insert_id(): the read; last_insert_id(expr) sets it
_SESSION_ONLY_WITHOUT_ARGS = {"last_insert_id"}
_METADATA_SCHEMAS = {"information_schema", "performance_schema", "sys", "mysql"}
_METADATA_STATEMENTS = {"show", "describe", "desc", "explain", "analyze", "check", "checksum"}
_UNORDERED_AGGREGATES = {"group_concat", "json_arrayagg", "json_objectagg"}

TIME = "time"
RANDOM = "randomness"
SESSION = "session"
METADATA = "server metadata"
LIMIT = "LIMIT without ORDER BY"
AGGREGATE_ORDER = "GROUP_CONCAT without ORDER BY"
CONCURRENCY = "SKIP LOCKED / NOWAIT"


def _tokens(norm: str) -> list[str]:
    return _TOKEN.findall(norm)


def nondeterministic_reasons(norm: str) -> list[str]:
    """The reasons (in a fixed order, no duplicates) why this statement's result may differ between two
    correct executions; empty if none is known."""
    toks = _tokens(norm)
    found: set[str] = set()
    n = len(toks)
    # scopes: one per parenthesis level, and per statement at level 0; [has ORDER BY, aggregate name]
    scopes: list[list] = [[False, None]]
    first_word = True
    for i, t in enumerate(toks):
        nxt = toks[i + 1] if i + 1 < n else ""
        if first_word and t in _METADATA_STATEMENTS:
            found.add(METADATA)
        first_word = t == ";"
        if t == "(":
            prev = toks[i - 1] if i else ""
            scopes.append([False, prev if prev in _UNORDERED_AGGREGATES else None])
            continue
        if t == ")":
            if len(scopes) > 1:
                order, agg = scopes.pop()
                if agg is not None and not order:
                    found.add(AGGREGATE_ORDER)
            continue
        if t == ";":
            scopes = [[False, None]]
            continue
        if t.startswith("@@"):
            found.add(SESSION)
            continue
        called = nxt == "("
        if called or t in ("current_timestamp", "current_date", "current_time", "localtime", "localtimestamp",
                           "current_user", "current_role"):
            no_args = called and i + 2 < n and toks[i + 2] == ")"
            if t in _TIME or (t in _TIME_WITHOUT_ARGS and no_args):
                found.add(TIME)
            elif t in _RANDOM:
                found.add(RANDOM)
            elif t in _SESSION and (t not in _SESSION_ONLY_WITHOUT_ARGS or no_args):
                found.add(SESSION)
        if t in _METADATA_SCHEMAS and nxt == ".":
            found.add(METADATA)
        elif t == "order" and nxt == "by":
            scopes[-1][0] = True
        elif t == "limit" and not scopes[-1][0]:
            found.add(LIMIT)
        elif t in ("skip", "nowait") and (t == "nowait" or nxt == "locked"):
            found.add(CONCURRENCY)
    return [r for r in (TIME, RANDOM, SESSION, METADATA, LIMIT, AGGREGATE_ORDER, CONCURRENCY) if r in found]


def ordered_result(norm: str) -> bool:
    """True if every statement has an ORDER BY outside any parentheses (so its rows have a defined order)."""
    depth = 0
    statements: list[bool] = []  # per statement: has a top-level ORDER BY
    current: bool | None = None  # None: no token of the current statement yet
    toks = _tokens(norm)
    for i, t in enumerate(toks):
        if t == ";" and depth == 0:
            if current is not None:
                statements.append(current)
            current = None
            continue
        current = current or False
        if t == "(":
            depth += 1
        elif t == ")":
            depth = max(0, depth - 1)
        elif depth == 0 and t == "order" and i + 1 < len(toks) and toks[i + 1] == "by":
            current = True
    if current is not None:
        statements.append(current)
    return bool(statements) and all(statements)
