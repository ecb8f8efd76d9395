"""Helpers of the session-fidelity tests: the same setup on both servers, a capture rewritten with
records of our own (e.g. a statement with its secret redacted, as a capture that redacts writes
it), and the data compared table by table."""
from __future__ import annotations

import json
import os
import stat

from fastproxy._ringbuf import RingBuffer
from fastproxy.capture.reader import TrafficReader
from fastproxy.capture.record import KIND_COMMAND
from fastproxy.capture.writer import CaptureWriter
from replay_util import checksums, read_meta


def on_both(servers, sql: str) -> None:
    for db in servers:
        db.sql(sql)


def same_data(prod, test, database: str) -> None:
    a, b = checksums(prod, database), checksums(test, database)
    if a != b:
        rows = {t: (prod.sql(f"SELECT * FROM {t} LIMIT 20"), test.sql(f"SELECT * FROM {t} LIMIT 20"))
                for t in a if a[t] != b.get(t)}
        raise AssertionError(f"{database}: production {a} != replay {b}; rows (production, replay): {rows}")


def rewrite_capture(src: str, dst: str, edit) -> list:
    """Copy the capture at src to dst, records passed through edit(records) -> records."""
    records = edit(list(TrafficReader(src)))
    meta = read_meta(src)
    rb = RingBuffer(64 << 20)
    w = CaptureWriter(rb, dst, compress=True)
    w.start()
    for r in records:
        if r.kind == KIND_COMMAND:
            ok = rb.append_command(r.conn_id, r.start_ns, r.end_ns, r.outcome, r.err_code, r.affected_rows, r.rows,
                                   r.payload, r.last_insert_id, r.columns, r.warnings, r.status_flags)
        else:
            ok = rb.append_event(r.kind, r.conn_id, r.start_ns, r.payload)
        assert ok
    meta["commands"] = sum(r.kind == KIND_COMMAND for r in records)
    w.stop({k: v for k, v in meta.items() if k not in ("files", "records", "bytes_written", "raw_bytes",
                                                       "compression", "encryption", "format_version")})
    assert w.error is None, w.error
    return records


def users_file(path, users: dict[str, str], mode: int = 0o600) -> str:
    with open(path, "w") as f:
        for user, password in users.items():
            f.write(f"{json.dumps(user)} = {json.dumps(password)}\n")  # TOML basic strings: JSON escapes
    os.chmod(path, mode)
    assert stat.S_IMODE(os.stat(path).st_mode) == mode
    return str(path)
