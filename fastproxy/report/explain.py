"""`EXPLAIN FORMAT=JSON` of sample statements on a target, after the replay (a thread with its own
connection; the replay never waits for it). A prepared statement's sample is explained with its
captured parameters put back as literals (escaped by the driver)."""
from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger("fastproxy.report")

EXPLAIN_TIMEOUT_S = 10


@dataclass
class PlanRequest:
    key: tuple[str, str]       # (cmd_type, digest)
    db: str | None
    sql: str
    values: list | None = None  # parameters of a prepared statement's sample


def placeholders_to_format(sql: str) -> str:
    """`?` placeholders outside quotes, back-quotes and comments become `%s`, and `%` becomes `%%`, so the
    driver can escape the values into it (MySQLdb's client-side interpolation)."""
    out = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in "'\"`":
            j = i + 1
            while j < n and sql[j] != c:
                j += 2 if sql[j] == "\\" and c != "`" else 1
            out.append(sql[i:j + 1].replace("%", "%%"))
            i = j + 1
            continue
        if c == "/" and sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(sql[i:j].replace("%", "%%"))
            i = j
            continue
        if c == "#" or (c == "-" and sql.startswith("-- ", i)):
            j = sql.find("\n", i)
            j = n if j < 0 else j
            out.append(sql[i:j].replace("%", "%%"))
            i = j
            continue
        out.append("%s" if c == "?" else "%%" if c == "%" else c)
        i += 1
    return "".join(out)


def _value(v):
    from fastproxy.replay.params import LONG_DATA

    if v is LONG_DATA:
        return None  # not in the capture (sent with COM_STMT_SEND_LONG_DATA): NULL is the closest plan
    return bytes(v) if isinstance(v, memoryview) else v


def collect_plans(opt, requests: list[PlanRequest]) -> dict:
    """{key: plan JSON text, or "EXPLAIN failed: ..."} on the target of ReplayOptions `opt` (as its user,
    over TLS when the replay uses it); runs in a thread."""
    import MySQLdb

    from fastproxy.replay.side_connection import connect_target

    plans: dict = {}
    if not requests:
        return plans
    try:
        conn = connect_target(opt, connect_timeout=10, read_timeout=EXPLAIN_TIMEOUT_S * 3, autocommit=True)
    except MySQLdb.Error as e:
        return {r.key: f"EXPLAIN failed: cannot connect to {opt.host}:{opt.port}: {e}" for r in requests}
    try:
        cur = conn.cursor()
        try:
            cur.execute(f"SET SESSION max_statement_time = {EXPLAIN_TIMEOUT_S}")  # MariaDB
        except MySQLdb.Error:
            pass
        for r in requests:
            try:
                if r.db:
                    conn.select_db(r.db)
                if r.values is not None:
                    cur.execute("EXPLAIN FORMAT=JSON " + placeholders_to_format(r.sql), [_value(v) for v in r.values])
                else:
                    cur.execute("EXPLAIN FORMAT=JSON " + r.sql.replace("%", "%%"))
                row = cur.fetchone()
                while cur.nextset():
                    pass
                plans[r.key] = _text(row[0]) if row else "EXPLAIN returned nothing"
            except MySQLdb.Error as e:
                plans[r.key] = f"EXPLAIN failed: {e}"
    finally:
        conn.close()
    return plans


def _text(v) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, (bytes, bytearray)) else str(v)


def scans(plan: str) -> list[str]:
    """Tables a plan reads in full (`"access_type": "ALL"`), for the verdict's one-line summary."""
    import json

    try:
        tree = json.loads(plan)
    except (ValueError, TypeError):
        return []
    out: list[str] = []

    def walk(node) -> None:
        if isinstance(node, dict):
            if node.get("access_type") == "ALL" and "table_name" in node:
                out.append(str(node["table_name"]))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(tree)
    return out
