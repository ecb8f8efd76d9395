"""Sessions on replay as they were in production: the statements that rebuild a session open before
the capture (its CONN_STATE), and the mapping of production thread ids for KILL.

Rebuild order (each its own statement, so that a failure names what it could not set):
1. session variables (sql_mode and the character sets first: later statements are read under them);
2. user variables, as typed literals (numbers as numbers, strings as `_charset X'..' COLLATE c`);
3. SQL-level PREPAREs and temporary tables, each in the database it was made in (USE around them);
4. the current database; `START TRANSACTION [READ ONLY]` for an open transaction;
5. `last_insert_id` (anything before may change it).
Temporary tables are created empty: their rows were never captured (named in `not_rebuilt`).
"""
from __future__ import annotations

import re

# never set on replay: they describe the server or need privileges replay should not need
_NOT_RESTORED = frozenset({"sql_log_bin", "gtid_domain_id", "gtid_seq_no", "server_id", "pseudo_thread_id",
                           "wsrep_on", "wsrep_osu_method", "binlog_format", "sql_log_off"})
_FIRST = ("sql_mode", "character_set_client", "character_set_connection", "character_set_results",
          "collation_connection")
_LAST = ("last_insert_id",)
_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?(?:e[-+]?\d+)?$", re.I)
_VAR_NAME = re.compile(r"^[a-z][a-z0-9_]*$")  # a system variable name (a capture is data, not code)


def _quote_name(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _string_literal(value: str) -> str:
    if "\\" in value:  # independent of NO_BACKSLASH_ESCAPES: the bytes as hex
        return f"CONVERT(X'{value.encode().hex()}' USING utf8mb4)"
    return "'" + value.replace("'", "''") + "'"


def _var_literal(value) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float)):
        return repr(value)
    return _string_literal(str(value))


def _user_var_literal(entry: dict) -> str:
    if "hex" in entry:
        collation = entry.get("collation") or "binary"
        if collation == "binary":
            return f"X'{entry['hex']}'"
        charset = collation.split("_", 1)[0]
        return f"_{charset} X'{entry['hex']}' COLLATE {collation}"
    value = entry.get("value")
    if value is None:
        return "NULL"
    text = str(value)
    if not _NUMBER.match(text):
        return _string_literal(text)
    if entry.get("type") == "DOUBLE" and "e" not in text.lower():
        text += "e0"  # a double stays a double
    return text


def rebuild_statements(state: dict) -> list[tuple[str, str]]:
    """[(what, SQL)] that make a fresh session look like `state` (a CONN_STATE body)."""
    out: list[tuple[str, str]] = []
    session_vars = {k: v for k, v in (state.get("session_vars") or {}).items()
                    if k not in _NOT_RESTORED and _VAR_NAME.match(k)}
    ordered = [k for k in _FIRST if k in session_vars]
    ordered += sorted(k for k in session_vars if k not in _FIRST and k not in _LAST)
    for name in ordered:
        out.append((f"session variable {name}", f"SET SESSION {name} = {_var_literal(session_vars[name])}"))
    for entry in state.get("user_vars") or []:
        out.append((f"user variable @{entry['name']}", f"SET @{_quote_name(entry['name'])} = {_user_var_literal(entry)}"))
    db = state.get("db")
    current = db
    for key, what in (("sql_prepared", "prepared statement"), ("temp_tables", "temporary table")):
        for item in state.get(key) or []:
            made_in = item.get("db")
            if made_in and made_in != current:
                out.append((f"{what} {item['name']}: its database", f"USE {_quote_name(made_in)}"))
                current = made_in
            out.append((f"{what} {item['name']}", item["sql"]))
    if db and current != db:
        out.append(("current database", f"USE {_quote_name(db)}"))
    if state.get("in_transaction"):
        out.append(("open transaction", "START TRANSACTION READ ONLY" if state.get("transaction_read_only")
                    else "START TRANSACTION"))
    for name in _LAST:
        if name in session_vars:
            out.append((f"session variable {name}", f"SET SESSION {name} = {_var_literal(session_vars[name])}"))
    return out


CLOSED = "closed"  # ThreadIds: the connection that had the id has finished (kept as a word, not an object)


class ThreadIds:
    """Production thread id (per backend) -> the captured connection that had it (or CLOSED)."""

    def __init__(self) -> None:
        self._by_id: dict[tuple[str, int], object] = {}

    def closed(self, conn) -> None:
        """A finished connection: its id stays known (a later KILL of it failed in production too)."""
        key = (conn.backend, conn.thread_id)
        if conn.thread_id and self._by_id.get(key) is conn:
            self._by_id[key] = CLOSED

    def add(self, backend: str, thread_id: int, conn) -> None:
        if thread_id:
            self._by_id[(backend, thread_id)] = conn

    def discard(self, backend: str, thread_id: int, conn) -> None:
        if self._by_id.get((backend, thread_id)) is conn:
            del self._by_id[(backend, thread_id)]

    def find(self, backend: str, thread_id: int):
        conn = self._by_id.get((backend, thread_id))
        if conn is None and not backend:  # inputs that do not name backends: by id alone, if unique
            found = [c for (_, tid), c in self._by_id.items() if tid == thread_id]
            conn = found[0] if len(found) == 1 else None
        return conn
