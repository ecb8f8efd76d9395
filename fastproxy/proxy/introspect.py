"""The proxy's own queries on a client's backend connection: what the server knows of the session.

Run at a command boundary, while the client's next command waits (fastproxy/proxy/connection.py
does the holding). Two uses:

- ``DatabaseReader``: ``SELECT DATABASE()`` after a statement that may have changed the current
  database when the server did not say to what (no CLIENT_SESSION_TRACK on that connection);
- ``SessionReader``: the whole session of a connection that was open before a capture started
  (database, session variables that differ from the global ones, user variables with their types),
  for its CONN_STATE record.

What the server cannot tell (SQL-level PREPAREs, temporary tables) the proxy tracks from the
statements it relayed (fastproxy/proxy/session.py).

The queries read ``information_schema`` (MariaDB: ``SYSTEM_VARIABLES``, ``USER_VARIABLES``, built in
since 10.2) and change nothing a client can see, with two exceptions a SELECT cannot avoid:
``FOUND_ROWS()`` and ``ROW_COUNT()``, and the warnings list (reading ``information_schema``
clears it). The connection therefore lets a client's next command pass first when it reads one of
those (`reads_diagnostics`), and runs its own queries before the command after.
"""
from __future__ import annotations

import re

from fastproxy.textresult import TextResult

# Session variables: only those a session can change, and only where they differ from the global
# value (the rest a new replay session gets anyway). LAST_INSERT_ID() too: a session open before
# the capture may read the id of an insert it made before it.
SESSION_QUERY = (
    "SELECT 'db', DATABASE(), NULL, NULL "
    "UNION ALL SELECT 'var', LOWER(VARIABLE_NAME), SESSION_VALUE, VARIABLE_TYPE "
    "FROM information_schema.SYSTEM_VARIABLES WHERE VARIABLE_SCOPE = 'SESSION' AND READ_ONLY = 'NO' "
    "AND NOT (SESSION_VALUE <=> GLOBAL_VALUE) "
    "UNION ALL SELECT 'var', 'last_insert_id', LAST_INSERT_ID(), 'BIGINT UNSIGNED' FROM DUAL "
    "WHERE LAST_INSERT_ID() <> 0 "
    "UNION ALL SELECT 'uvar', VARIABLE_NAME, VARIABLE_TYPE, NULL FROM information_schema.USER_VARIABLES "
    "LIMIT 1000000")  # an explicit LIMIT: the session's sql_select_limit must not cut the answer
DATABASE_QUERY = "SELECT DATABASE()"

_NUMERIC_USER_TYPES = frozenset({"INT", "DECIMAL", "DOUBLE"})
_NUMERIC_VAR_TYPE = re.compile(r"^(?:TINY|SMALL|MEDIUM|BIG)?INT(?:EGER)?\b|^(?:DOUBLE|FLOAT|DECIMAL)\b", re.I)

# A client command that reads what any SELECT of the proxy would reset: it goes first.
_DIAGNOSTICS = re.compile(rb"found_rows|row_count|warnings|errors|diagnostics|warning_count|error_count", re.I)
DIAGNOSTICS_PEEK = 512  # bytes of the command looked at (such statements are short)


def reads_diagnostics(payload_head) -> bool:
    return _DIAGNOSTICS.search(payload_head) is not None


def _text(v: bytes | None) -> str | None:
    return None if v is None else v.decode("utf-8", "replace")


def _quote_name(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


class DatabaseReader:
    """One step: the current database."""

    def __init__(self) -> None:
        self.db: str | None = None
        self.error = ""

    def first_query(self) -> str:
        return DATABASE_QUERY

    def on_result(self, r: TextResult) -> str | None:
        """Take a query's result; return the next query to run, or None when done."""
        if not r.ok:
            self.error = f"{r.err_code} {r.err_msg}"
        elif r.rows:
            self.db = _text(r.rows[0][0])
        return None


class SessionReader:
    """The session as the server holds it: database, differing session variables, user variables.

    `state` ends up with keys ``db``, ``session_vars`` ({name: value}, value as JSON: int, float,
    str or None), ``user_vars`` ([{"name", "type", "value"} for numbers, {"name", "type", "hex",
    "collation"} for strings, "value": None for NULL]) and ``state_error`` when the server could
    not answer (then only ``db`` is known)."""

    def __init__(self) -> None:
        self.state: dict = {"db": None, "session_vars": {}, "user_vars": []}
        self._user_types: dict[str, str] = {}
        self._step = "session"

    def first_query(self) -> str:
        return SESSION_QUERY

    def on_result(self, r: TextResult) -> str | None:
        step = self._step
        if step == "session":
            if not r.ok:  # not MariaDB (no SYSTEM_VARIABLES / USER_VARIABLES): at least the database
                self.state["state_error"] = f"session and user variables could not be read: {r.err_code} {r.err_msg}"
                self._step = "db"
                return DATABASE_QUERY
            for kind, name, value, vtype in r.rows:
                if kind == b"db":
                    self.state["db"] = _text(name)
                elif kind == b"var":
                    self.state["session_vars"][_text(name)] = _var_value(_text(value), _text(vtype) or "")
                elif kind == b"uvar":
                    self._user_types[_text(name)] = _text(value) or "VARCHAR"
            if not self._user_types:
                return None
            self._step = "uvars"
            cols = ", ".join(f"@{_quote_name(n)}, HEX(@{_quote_name(n)}), COLLATION(@{_quote_name(n)})"
                             for n in self._user_types)
            return f"SELECT {cols}"
        if step == "uvars":
            if not r.ok or not r.rows:
                self.state["state_error"] = f"user variables could not be read: {r.err_code} {r.err_msg}"
                return None
            row = r.rows[0]
            for i, (name, vtype) in enumerate(self._user_types.items()):
                value, hexed, collation = row[3 * i:3 * i + 3]
                entry: dict = {"name": name, "type": vtype}
                if value is None:
                    entry["value"] = None
                elif vtype in _NUMERIC_USER_TYPES:
                    entry["value"] = _text(value)
                else:
                    entry["hex"] = _text(hexed)
                    entry["collation"] = _text(collation)
                self.state["user_vars"].append(entry)
            return None
        if step == "db":
            if r.ok and r.rows:
                self.state["db"] = _text(r.rows[0][0])
            return None
        return None


def _var_value(value: str | None, vtype: str) -> int | float | str | None:
    """A session variable's value as JSON: numbers as numbers, so replay SETs them unquoted."""
    if value is None:
        return None
    if _NUMERIC_VAR_TYPE.match(vtype):
        try:
            return int(value)
        except ValueError:
            try:
                return float(value)
            except ValueError:
                return value
    return value
