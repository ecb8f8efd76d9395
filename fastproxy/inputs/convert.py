"""`fastproxy traffic convert`: any input (slow log, general log, TiProxy capture, a capture of ours)
written as a fastproxy capture, through the same ring buffer and writer thread a live capture uses."""
from __future__ import annotations

import time

from fastproxy._ringbuf import RingBuffer
from fastproxy.capture.record import KIND_COMMAND
from fastproxy.capture.writer import CaptureWriter
from fastproxy.errors import JobError
from fastproxy.inputs.common import DROPPED_STAT, RECORDED_KEYS
from fastproxy.jobs_base import utc_iso

BUFFER = 16 << 20
LARGE_MAX = 1 << 30  # records bigger than a quarter of the ring wait beside it (the ring's side path)


def convert(source, output: str, *, file_size: int = 300 << 20, compress: bool = True,
            encryption_key: bytes | None = None) -> dict:
    """Write every record of `source` to a new capture in `output`; return its meta."""
    ring = RingBuffer(BUFFER, large_max=LARGE_MAX)
    writer = CaptureWriter(ring, output, file_size=file_size, compress=compress, encryption_key=encryption_key)
    writer.start()
    if writer.error:
        error = writer.error
        writer.stop({})
        raise JobError(f"output: {error}")
    try:
        commands, connections, first, last = _copy(source, ring, writer)
    except BaseException:
        writer.abort()  # a failed conversion leaves no files behind, so it can be retried
        raise
    meta = {
        "start": utc_iso(first), "end": utc_iso(last), "start_ns": first, "end_ns": last,
        "duration": round((last - first) / 1e9, 3) if last else 0, "commands": commands,
        "connections": connections,
        "filtered_commands": (getattr(source, "stats", {}) or {}).get(DROPPED_STAT, 0),
        "redacted_commands": getattr(source, "redacted", 0),
        "converted_from": getattr(source, "format", "native"),
        "input_skipped": dict(getattr(source, "stats", {}) or {}),
        "compress": compress, "encryption_method": "aes256-ctr" if encryption_key else "",
    }
    for key in RECORDED_KEYS:
        if key in source.meta:
            meta[key] = source.meta[key]
    written = writer.stop(meta)
    if written.get("error"):
        raise JobError(f"conversion to {output} failed: {written['error']}")
    return written


def _copy(source, ring: RingBuffer, writer: CaptureWriter) -> tuple[int, int, int, int]:
    """Append every record of `source` to the ring; return (commands, connections, first, last)."""
    commands = connections = 0
    first = last = 0
    for rec in source:
        if rec.kind == KIND_COMMAND:
            commands += 1
            first = first or rec.start_ns
            last = max(last, rec.end_ns or rec.start_ns)
        elif rec.kind == 2:  # CONN_OPEN
            connections += 1
        while not _append(ring, rec):
            if writer.error:
                break
            if len(rec.payload) > LARGE_MAX:
                raise JobError(f"a record of {len(rec.payload)} bytes is larger than a conversion keeps in memory "
                               f"({LARGE_MAX} bytes)")
            time.sleep(0.002)  # the writer drains; a conversion may wait, a live capture may not
        if writer.error:
            break
    return commands, connections, first, last


def _append(ring: RingBuffer, rec) -> bool:
    if rec.kind == KIND_COMMAND:
        return ring.append_command(rec.conn_id, rec.start_ns, rec.end_ns, rec.outcome, rec.err_code,
                                   rec.affected_rows, rec.rows, rec.payload, rec.last_insert_id, rec.columns,
                                   rec.warnings, rec.status_flags, rec.hash_ordered, rec.hash_unordered)
    return ring.append_event(rec.kind, rec.conn_id, rec.start_ns, rec.payload)
