"""Which tables must share a causal-order scope, read from the target before a replay starts.

Statements are ordered per table where the tables are known (fastproxy/replay/causal.py). Some
statements reach tables they do not name: an INSERT into a child table checks its parent (foreign
keys, in both directions for cascades), a write may fire a trigger, a view reads its base tables,
a stored function may do anything. So tables joined by a foreign key, a trigger or a view share one
scope (a union-find over bare table names); a table whose trigger cannot be understood, and any
call of a stored function, make a statement's scope unknown (ordered against everything).

Also read here: tables whose rows take the server time without naming it (a DEFAULT / ON UPDATE
CURRENT_TIMESTAMP column, or a trigger), so that writes to them get production's time pinned.
"""
from __future__ import annotations

import logging

from fastproxy._digest import normalize
from fastproxy.replay.stmtinfo import TOKEN_RE, TableScan

log = logging.getLogger("fastproxy.replay")

SYSTEM_SCHEMAS = ("mysql", "information_schema", "performance_schema", "sys", "tiproxy_traffic_report")


class TableScopes:
    """Union-find of bare lower-case table names, with two flags per scope: `global` (statements on
    it are ordered against everything) and `time` (writes to it need production's time)."""

    def __init__(self) -> None:
        self._parent: dict[str, str] = {}
        self._global: set[str] = set()   # roots
        self._time: set[str] = set()     # roots
        self.functions: set[str] = set()
        self.error: str | None = None    # why the schema could not be read (then every scope is unknown)
        self.generation = 0              # changes whenever scopes or flags change (for callers' caches)
        self.isolation = ""              # the target's global transaction isolation ("" unknown)

    def find(self, table: str) -> str:
        parent = self._parent
        root = table
        while True:
            up = parent.get(root)
            if up is None or up == root:
                break
            root = up
        while table != root:  # path compression
            up = parent[table]
            parent[table] = root
            table = up
        return root

    def union(self, a: str, b: str) -> tuple[str, str] | None:
        """Join the scopes of a and b; returns (kept root, absorbed root), or None if already one."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return None
        self.generation += 1
        self._parent[rb] = ra
        self._parent.setdefault(ra, ra)
        if rb in self._global:
            self._global.discard(rb)
            self._global.add(ra)
        if rb in self._time:
            self._time.discard(rb)
            self._time.add(ra)
        return ra, rb

    def mark_global(self, table: str) -> None:
        self.generation += 1
        self._global.add(self.find(table))

    def mark_time(self, table: str) -> None:
        self.generation += 1
        self._time.add(self.find(table))

    def scope(self, tables: tuple | None) -> tuple | None:
        """The scope roots of `tables`, or None when any of them is unknown territory."""
        if tables is None or self.error is not None:
            return None
        roots = []
        for t in tables:
            r = self.find(t)
            if r in self._global:
                return None
            if r not in roots:
                roots.append(r)
        return tuple(roots)

    def needs_time(self, tables: tuple | None) -> bool:
        if tables is None or self.error is not None:
            return True
        return any(self.find(t) in self._time for t in tables)

    # ---- what the schema says -------------------------------------------------------------------
    def add_foreign_key(self, child: str, parent: str) -> None:
        self.union(child.lower(), parent.lower())

    def add_view(self, view: str, definition: str) -> None:
        tables = body_tables(definition, self.functions)
        if tables is None:
            self.mark_global(view.lower())
            return
        for t in tables:
            self.union(view.lower(), t)

    def add_trigger(self, table: str, body: str) -> None:
        table = table.lower()
        self.mark_time(table)  # a trigger may set columns from NOW(): its table's writes get the time
        tables = body_tables(body, self.functions)
        if tables is None:
            self.mark_global(table)
            return
        for t in tables:
            self.union(table, t)


def body_tables(sql: str, functions) -> set[str] | None:
    """Tables named anywhere in a view definition or trigger body (several statements, BEGIN ...
    END); None if it calls something we cannot see into (procedures, stored functions, dynamic SQL)."""
    toks = TOKEN_RE.findall(normalize(sql))
    if any(t in ("call", "execute", "prepare") for t in toks):
        return None
    scan = TableScan(toks, functions)
    scan.run()
    for i, tok in enumerate(toks[:-1]):  # UPDATE t / DELETE FROM t / INSERT t inside a body
        if tok in ("update", "insert", "replace") and (i == 0 or toks[i - 1] in (";", "begin", "then", "else",
                                                                                   "do", "loop", "repeat")):
            scan.table_list(i + 1 + (toks[i + 1] in ("into", "ignore", "low_priority")))
    if scan.unknown or scan.sequences:
        return None
    return scan.tables


def _global_isolation(cur) -> str:
    """The target's default transaction isolation, e.g. REPEATABLE-READ ("" if it cannot be read):
    MySQL 8 names it transaction_isolation, MariaDB before 11.1 only tx_isolation."""
    for name in ("transaction_isolation", "tx_isolation"):
        try:
            cur.execute(f"SELECT @@GLOBAL.{name}")
            return str(cur.fetchone()[0] or "").upper()
        except Exception:  # noqa: BLE001 - unknown variable: the other name
            continue
    return ""


def load_scopes(opt) -> TableScopes:
    """Read foreign keys, views, triggers, stored functions and time-defaulted columns from the
    target of ReplayOptions `opt`. On any error the scopes say so (`error`) and every statement is
    ordered globally."""
    from fastproxy.replay.side_connection import connect_target

    scopes = TableScopes()
    skip = ", ".join(f"'{s}'" for s in SYSTEM_SCHEMAS)
    try:
        conn = connect_target(opt)
    except Exception as e:  # noqa: BLE001 - any failure means: no schema knowledge
        scopes.error = f"cannot read the target's schema: {e}"
        return scopes
    try:
        cur = conn.cursor()
        cur.execute("SELECT ROUTINE_NAME FROM information_schema.ROUTINES "
                    f"WHERE ROUTINE_TYPE = 'FUNCTION' AND ROUTINE_SCHEMA NOT IN ({skip})")
        scopes.functions.update(r[0].lower() for r in cur.fetchall())
        cur.execute("SELECT TABLE_NAME, REFERENCED_TABLE_NAME FROM information_schema.REFERENTIAL_CONSTRAINTS "
                    f"WHERE CONSTRAINT_SCHEMA NOT IN ({skip})")
        for child, parent in cur.fetchall():
            scopes.add_foreign_key(child, parent)
        cur.execute(f"SELECT TABLE_NAME, VIEW_DEFINITION FROM information_schema.VIEWS WHERE TABLE_SCHEMA NOT IN ({skip})")
        for view, definition in cur.fetchall():
            scopes.add_view(view, definition or "")
        cur.execute("SELECT EVENT_OBJECT_TABLE, ACTION_STATEMENT FROM information_schema.TRIGGERS "
                    f"WHERE TRIGGER_SCHEMA NOT IN ({skip})")
        for table, body in cur.fetchall():
            scopes.add_trigger(table, body or "")
        cur.execute("SELECT DISTINCT TABLE_NAME FROM information_schema.COLUMNS "
                    f"WHERE TABLE_SCHEMA NOT IN ({skip}) AND (COLUMN_DEFAULT LIKE 'current_timestamp%' "
                    "OR COLUMN_DEFAULT LIKE 'now(%' OR EXTRA LIKE '%on update%')")
        for (table,) in cur.fetchall():
            scopes.mark_time(table.lower())
        scopes.isolation = _global_isolation(cur)
    except Exception as e:  # noqa: BLE001
        scopes.error = f"cannot read the target's schema: {e}"
    finally:
        conn.close()
    if scopes.error:
        log.warning("%s; causal order falls back to one global scope", scopes.error)
    return scopes
