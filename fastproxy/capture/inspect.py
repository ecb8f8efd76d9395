"""Human (or JSON-lines) view of a capture: one line per record, then a summary."""
from __future__ import annotations

import datetime
import json
import struct
import sys
from collections import Counter

from fastproxy.inputs import open_input
from fastproxy.capture.record import (INFILE_SIZE, KIND_COMMAND, KIND_CONN_CLOSE, KIND_CONN_OPEN,
                                      KIND_CONN_STATE, KIND_LOCAL_INFILE, KIND_NAMES, OUTCOME_ERR, OUTCOME_NAMES)
from fastproxy.constants import COMMAND, command_name

SQL_PREVIEW = 200  # characters of SQL shown per line; enough to recognize a statement
_SQL_COMMANDS = (COMMAND.COM_QUERY, COMMAND.COM_STMT_PREPARE)
_STMT_ID_COMMANDS = (COMMAND.COM_STMT_EXECUTE, COMMAND.COM_STMT_CLOSE, COMMAND.COM_STMT_RESET,
                     COMMAND.COM_STMT_SEND_LONG_DATA, COMMAND.COM_STMT_FETCH)


def _iso(ns: int) -> str:
    t = datetime.datetime.fromtimestamp(ns // 1_000_000_000, datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ns % 1_000_000_000 // 1000:06d}Z"


def _describe(rec, outcome_known: bool = True, rows_known: bool = True) -> dict:
    """`outcome_known` False: the input (a slow or general log) did not record whether the command
    succeeded; its outcome shows as unknown (None), not as the OK the record holds by default.
    `rows_known` False: nor its rows and affected rows (a general log, a TiProxy capture): None."""
    d = {"time": _iso(rec.start_ns), "conn_id": rec.conn_id, "kind": KIND_NAMES[rec.kind]}
    if rec.kind == KIND_LOCAL_INFILE:
        size = INFILE_SIZE.unpack_from(rec.payload)[0] if len(rec.payload) >= INFILE_SIZE.size else 0
        d["file_size"] = size
        d["recorded"] = len(rec.payload) - INFILE_SIZE.size == size
        return d
    if rec.kind != KIND_COMMAND:
        if rec.kind in (KIND_CONN_OPEN, KIND_CONN_STATE, KIND_CONN_CLOSE) and rec.payload:
            try:
                d["info"] = json.loads(rec.payload)
            except ValueError:
                d["info"] = rec.payload.decode("utf-8", "replace")
        return d
    payload = rec.payload
    d["command"] = command_name(payload[0]) if payload else "EMPTY"
    d["outcome"] = OUTCOME_NAMES[rec.outcome] if outcome_known else None
    if rec.outcome == OUTCOME_ERR:
        d["err_code"] = rec.err_code
    if payload and payload[0] == COMMAND.COM_STMT_PREPARE:
        d["stmt_id"] = rec.affected_rows  # the capture keeps a prepare's statement id there
    else:
        d["affected_rows"] = rec.affected_rows if rows_known else None
    d["rows"] = rec.rows if rows_known else None
    d["duration_us"] = (rec.end_ns - rec.start_ns) // 1000 if rec.end_ns else None
    if payload and payload[0] in _SQL_COMMANDS:
        d["sql"] = payload[1:].decode("utf-8", "replace")
    elif payload and payload[0] in _STMT_ID_COMMANDS and len(payload) >= 5:
        d["stmt_id"] = struct.unpack_from("<I", payload, 1)[0]
    return d


def _line(d: dict) -> str:
    parts = [d["time"], f"conn={d['conn_id']}"]
    if d["kind"] != "COMMAND":
        parts.append(d["kind"])
        if "file_size" in d:
            parts.append(f"size={d['file_size']}" + ("" if d["recorded"] else " (not recorded: too large)"))
        info = d.get("info")
        if isinstance(info, dict):
            for key in ("user", "db", "client_addr", "backend_conn_id", "by", "reason", "err_code"):
                if info.get(key) is not None:
                    parts.append(f"{key}={info[key]}")
            for key in ("prepared", "sql_prepared", "temp_tables", "user_vars", "session_vars"):
                if info.get(key):
                    parts.append(f"{key}={len(info[key])}")
            if info.get("in_transaction"):
                parts.append("in_transaction")
            if info.get("not_rebuilt"):
                parts.append("not_rebuilt: " + "; ".join(info["not_rebuilt"]))
        return " ".join(parts)
    parts += [d["command"], d["outcome"] or "outcome unknown"]
    if "err_code" in d:
        parts.append(f"err={d['err_code']}")
    if d.get("affected_rows") is not None:
        parts.append(f"affected={d['affected_rows']}")
    if d["rows"] is not None:
        parts.append(f"rows={d['rows']}")
    if d["duration_us"] is not None:
        parts.append(f"{d['duration_us']}us")
    if "stmt_id" in d:
        parts.append(f"stmt_id={d['stmt_id']}")
    if "sql" in d:
        sql = " ".join(d["sql"].split())  # one line per record, whatever the SQL layout
        if len(sql) > SQL_PREVIEW:
            sql = sql[:SQL_PREVIEW] + "..."
        parts.append(sql)
    return " ".join(parts)


def inspect_capture(input_dir, *, key=None, as_json=False, out=sys.stdout, limit=None, fmt="auto") -> dict:
    """Print records (at most `limit` lines), then a summary of all of them; return the summary.
    `input_dir` may be any input replay reads (fastproxy/inputs), in format `fmt`."""
    reader = open_input(input_dir, fmt, key)
    by_cmd: Counter = Counter()
    errors_by_code: Counter = Counter()
    conns = set()
    counts = Counter()
    first = last = None
    printed = 0
    for rec in reader:
        counts[KIND_NAMES[rec.kind]] += 1
        conns.add(rec.conn_id)
        first = rec.start_ns if first is None else min(first, rec.start_ns)
        last = max(last or 0, rec.end_ns or rec.start_ns)
        if rec.kind == KIND_COMMAND:
            by_cmd[command_name(rec.payload[0]) if rec.payload else "EMPTY"] += 1
            if rec.outcome == OUTCOME_ERR:
                errors_by_code[rec.err_code] += 1
        if limit is None or printed < limit:
            # a slow log that logs Errno (MySQL 8) has outcomes: known from its first entry, while its meta
            # says so only once read to the end
            d = _describe(rec, reader.meta.get("outcomes_recorded", True) or getattr(reader, "errno_logged", False),
                          reader.meta.get("rows_recorded", True))
            out.write((json.dumps(d) if as_json else _line(d)) + "\n")
            printed += 1
    summary = {
        "records": sum(counts.values()),
        "commands": counts["COMMAND"],
        "commands_by_type": dict(by_cmd.most_common()),
        "connections": len(conns),
        "conn_open": counts["CONN_OPEN"],
        "conn_state": counts["CONN_STATE"],
        "conn_close": counts[KIND_NAMES[KIND_CONN_CLOSE]],
        "local_infile": counts[KIND_NAMES[KIND_LOCAL_INFILE]],
        "errors": sum(errors_by_code.values()),
        "errors_by_code": {str(k): v for k, v in errors_by_code.most_common()},
        "first_time": _iso(first) if first is not None else None,
        "last_time": _iso(last) if last is not None else None,
        "span_seconds": (last - first) / 1e9 if first is not None else 0.0,
        "files": len(getattr(reader, "files", [None])),
        "complete": getattr(reader, "complete", True),
        "format": reader.format,
    }
    if getattr(reader, "stats", None):
        summary["skipped"] = dict(reader.stats)
    if getattr(reader, "truncated_at", None):
        summary["truncated_at"] = {"file": reader.truncated_at[0], "offset": reader.truncated_at[1]}
    if as_json:
        out.write(json.dumps({"summary": summary}) + "\n")
    else:
        out.write(_summary_text(summary))
    return summary


def _summary_text(s: dict) -> str:
    lines = ["", "summary:",
             f"  records: {s['records']} in {s['files']} file(s)"
             + ("" if s["complete"] else " (capture incomplete: no meta)"),
             f"  connections: {s['connections']} (opened {s['conn_open']}, "
             f"already open {s['conn_state']}, closed {s['conn_close']})",
             f"  time span: {s['first_time']} .. {s['last_time']} ({s['span_seconds']:.3f}s)",
             f"  LOCAL INFILE files: {s['local_infile']}",
             f"  commands: {s['commands']}"]
    lines += [f"    {name}: {n}" for name, n in s["commands_by_type"].items()]
    lines.append(f"  errors: {s['errors']}")
    lines += [f"    code {code}: {n}" for code, n in s["errors_by_code"].items()]
    if s.get("skipped"):
        lines.append("  input entries not turned into records:")
        lines += [f"    {why}: {n}" for why, n in s["skipped"].items()]
    if "truncated_at" in s:
        t = s["truncated_at"]
        lines.append(f"  last file cut off: {t['file']} at offset {t['offset']}")
    return "\n".join(lines) + "\n"
