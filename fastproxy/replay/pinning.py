"""Production's server time and auto-increment ids on replay, as statement-based replication does.

A statement replays with the time it started at in production (``timestamp``: what NOW(),
CURRENT_TIMESTAMP and DEFAULT / ON UPDATE CURRENT_TIMESTAMP columns see) and, when it generated
auto-increment values there, with the first of them (``insert_id``), so rows get production's ids
and times, and an id the application read back and reused as a literal matches again.

How, without an extra round trip where possible:

- a single COM_QUERY statement becomes ``SET STATEMENT timestamp=..., insert_id=... FOR <stmt>``
  (MariaDB; the variables hold for that statement only);
- a prepared statement's execute (its parameters cannot carry the values), a multi-statement (SET
  STATEMENT would cover only the first one) or a statement that already starts with SET STATEMENT
  gets ``SET timestamp=..., insert_id=...`` as a COM_QUERY sent right before it, pipelined; the
  session then stays pinned, so the next SQL command that is not pinned itself is preceded by
  ``SET timestamp=DEFAULT, insert_id=0`` (an unused insert_id would otherwise wait for the next
  insert).

What the capture cannot give: the exact server time — ``start_ns`` is when the proxy received the
command, a few dozen microseconds before the server read it, so a second boundary in between (or
a DATETIME(6) column) can still differ; the server's RAND() seed (``rand_seed1/2`` are settable,
but production's per-connection values are never sent to a client) and UUID() / UUID_SHORT()
(no session variable drives them).
"""
from __future__ import annotations

from fastproxy.replay.causal import PIN_ID, PIN_PREFIX, PIN_TIME

PIN_FLAGS = PIN_TIME | PIN_ID
RESET = b"\x03SET timestamp = DEFAULT, insert_id = 0"


def timestamp_value(start_ns: int) -> bytes:
    """A Unix epoch ns as the seconds.microseconds literal ``SET timestamp`` takes."""
    return b"%d.%06d" % (start_ns // 1_000_000_000, start_ns // 1000 % 1_000_000)


def pin(payload: bytes, start_ns: int, last_insert_id: int, flags: int, dirty: bool) -> tuple[bytes, bytes | None, bool]:
    """The command to send, a SET to send right before it (or None), and whether the session's
    variables are left pinned afterwards. ``payload`` is a COM_QUERY or COM_STMT_EXECUTE."""
    if not flags & PIN_FLAGS:
        return (payload, RESET, False) if dirty else (payload, None, False)
    ts = timestamp_value(start_ns) if flags & PIN_TIME else b"DEFAULT"
    iid = b"%d" % last_insert_id if flags & PIN_ID else b"0"
    if flags & PIN_PREFIX or dirty:
        return payload, b"\x03SET timestamp = " + ts + b", insert_id = " + iid, True
    assignments = []
    if flags & PIN_TIME:
        assignments.append(b"timestamp=" + ts)
    if flags & PIN_ID:
        assignments.append(b"insert_id=" + iid)
    return b"\x03SET STATEMENT " + b", ".join(assignments) + b" FOR " + payload[1:], None, False
