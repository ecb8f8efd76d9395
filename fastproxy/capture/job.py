"""A running capture: the proxy's hooks append records to the ring buffer; a writer thread drains it.

Nothing here waits on the disk: appends are a memcpy into the ring buffer (records larger than a
quarter of it are kept by reference on its side path). If the buffer is full (the writer cannot
keep up), or a large record would exceed capture.large-record-buffer-size, the capture stops with
an error that says which — it never drops records silently and never slows a client down.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from typing import TYPE_CHECKING

from fastproxy._ringbuf import REFUSED_CLOSED, REFUSED_FULL, REFUSED_LARGE_LIMIT, REFUSED_TOO_LARGE, RingBuffer
from fastproxy.capture.record import KIND_CONN_CLOSE, KIND_CONN_OPEN, KIND_CONN_STATE, KIND_NAMES
from fastproxy.capture.writer import CaptureWriter
from fastproxy.constants import COMMAND, command_name
from fastproxy.errors import JobError
from fastproxy.jobs_base import Job, utc_iso
from fastproxy.private_files import check_output_path
from fastproxy.protocol import change_user_without_auth

if TYPE_CHECKING:
    from fastproxy.proxy.server import ProxyServer
    from fastproxy.proxy.session import Session

log = logging.getLogger("fastproxy.capture")

_COM_QUERY = COMMAND.COM_QUERY
_COM_STMT_PREPARE = COMMAND.COM_STMT_PREPARE
_COM_STMT_EXECUTE = COMMAND.COM_STMT_EXECUTE
_COM_STMT_RESET = COMMAND.COM_STMT_RESET
_COM_CHANGE_USER = COMMAND.COM_CHANGE_USER

# Statements that carry passwords are never written to disk. No `^`: match() anchors at its pos
# argument (1, after the command byte), where `^` would never match.
# Statements that may hold a password are never written. The search runs over the whole statement
# (multi-statements, `/*! ... */` comments the server executes, `SET STATEMENT ... FOR`, PREPARE /
# EXECUTE IMMEDIATE strings, parentheses), and errs on the side of filtering: a statement that
# merely mentions `identified` is filtered (and counted) too.
_SECRET_RE = re.compile(
    rb"\b(?:identified\b|set\s+password\b|password\s*\("
    rb"|(?:create|alter|rename)\s+(?:or\s+replace\s+)?(?:user|role|server)\b"
    rb"|change\s+(?:master|replication\s+source)\b|master_password|source_password)",
    re.I)
# User-management statements are short; scanning a multi-megabyte INSERT on the event loop is not.
SECRET_SCAN_BYTES = 64 * 1024


def carries_secret(sql: bytes | str) -> bool:
    """Whether SQL (a COM_QUERY / COM_STMT_PREPARE payload, command byte included) may hold a password."""
    if isinstance(sql, str):
        sql = sql.encode("utf-8", "replace")
    return _SECRET_RE.search(sql, 0, SECRET_SCAN_BYTES) is not None


class CaptureJob(Job):
    kind = "capture"

    def __init__(self, server: "ProxyServer", output: str, duration: float, *, compress: bool = True,
                 encryption_key: bytes | None = None, buffer_size: int = 64 << 20, file_size: int = 300 << 20,
                 large_record_buffer_size: int = 256 << 20, throttle_bytes_per_sec: float | None = None) -> None:
        super().__init__()
        self.server = server
        self.output = check_output_path(output, "output")
        self.duration = duration
        self.compress = compress
        self.encrypted = encryption_key is not None
        self.ring: RingBuffer | None = RingBuffer(buffer_size, large_max=large_record_buffer_size)
        self.writer = CaptureWriter(self.ring, self.output, file_size=file_size, compress=compress,
                                    encryption_key=encryption_key, throttle_bytes_per_sec=throttle_bytes_per_sec)
        self.start_ns = 0
        self.commands = 0
        self.filtered = 0
        self.connections = 0
        self.existing_connections = 0
        self.waited_for_txn = 0  # open mid-transaction at start: captured from their next boundary
        self.server_version = ""
        self._filtered_stmts: set[tuple[int, int]] = set()
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._failed = False  # an append failed: no record after the lost one may be written
        self._final: dict | None = None  # the meta the writer wrote: what the files hold

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self.writer.start()
        if self.writer.error:
            error = self.writer.error
            self.writer.stop({})
            raise JobError(f"output: {error}")
        self.start_ns = time.time_ns()
        self.mark_started()
        server = self.server
        server.capture = self
        from fastproxy.proxy.connection import COMMANDS

        for conn in list(server.connections):
            session = conn.session
            if conn.phase != COMMANDS:
                continue  # still authenticating: on_connect records it as a new connection
            self.existing_connections += 1
            self.server_version = self.server_version or session.server_version
            if conn.tracker.idle and not session.in_transaction:
                self._record_state(session)
            else:
                # a command in flight or an open transaction: its statements before the capture are
                # not in the files, so replaying the rest of it would be wrong; start at its boundary
                session.capture_state = "wait-txn"
                if session.in_transaction:
                    self.waited_for_txn += 1
        self._task = asyncio.get_running_loop().create_task(self._watch())
        log.info("capture started: %s for %.0fs (%d open connections)", self.output, self.duration,
                 self.existing_connections)

    async def _watch(self) -> None:
        deadline = time.monotonic() + self.duration
        while not self._stopping:
            if self.writer.error:
                await self.stop(error=f"capture writer failed: {self.writer.error}")
                return
            if time.monotonic() >= deadline:
                await self.stop()
                return
            await asyncio.sleep(0.1)

    async def stop(self, error: str | None = None, canceled: bool = False) -> None:
        if self._stopping:
            return
        self._stopping = True
        if self.server.capture is self:
            self.server.capture = None
        for conn in list(self.server.connections):
            conn.session.capture_state = None
        end_ns = time.time_ns()
        meta = {
            "start": utc_iso(self.start_ns), "end": utc_iso(end_ns), "duration": round((end_ns - self.start_ns) / 1e9, 3),
            "start_ns": self.start_ns, "end_ns": end_ns,
            "commands": self.commands, "filtered_commands": self.filtered, "connections": self.connections,
            "existing_connections": self.existing_connections, "waited_for_transaction": self.waited_for_txn,
            "server_version": self.server_version, "compress": self.compress,
            "encryption_method": "aes256-ctr" if self.encrypted else "",
        }
        if error:
            meta["error"] = error
        meta = self._final = await asyncio.get_running_loop().run_in_executor(None, self.writer.stop, meta)
        # Nothing appends any more: free the buffer and any large records still waiting (a job
        # stays in `show` history long after it ended)
        self.ring = None
        error = error or meta.get("error")
        if error:
            log.error("capture stopped: %s", error)
        else:
            log.info("capture %s: %d commands, %d connections, %d bytes", "canceled" if canceled else "done",
                     self.commands, self.connections, self.writer.bytes_written)
        self.finish(error=error, canceled=canceled or bool(error))
        if self._task and self._task is not asyncio.current_task():
            self._task.cancel()

    # ---- hooks called by the proxy on the event loop ------------------------------------------
    def _fail(self, error: str) -> None:
        if not self._stopping and not self._failed:
            self._failed = True
            asyncio.get_running_loop().create_task(self.stop(error=error))

    def _append_event(self, kind: int, session: "Session", body: bytes) -> None:
        if self._failed or self._stopping:
            return
        now = time.time_ns()
        if not self.ring.append_event(kind, session.conn_id, now, body):
            self._refused(f"a {KIND_NAMES[kind]} record", session.conn_id, len(body), now)

    def _refused(self, what: str, conn_id: int, size: int, at_ns: int) -> None:
        """The ring buffer refused a record: stop, saying which limit and what was not captured."""
        ring = self.ring
        refusal = ring.refusal
        if refusal == REFUSED_CLOSED:  # the capture is stopping anyway
            return
        if refusal == REFUSED_FULL:
            secs = max(1e-3, (time.time_ns() - self.start_ns) / 1e9)
            why = (f"capture buffer full (capture.buffer-size {_size(ring.capacity)}): the writer could not keep "
                   f"up with the traffic (disk too slow?): it wrote {self.writer.raw_bytes_written / secs / 1e6:.2f} "
                   f"MB/s of records ({self.writer.bytes_written / secs / 1e6:.2f} MB/s to disk) while the proxy "
                   f"captured {ring.bytes_appended / secs / 1e6:.2f} MB/s over {secs:.1f} s")
        else:
            record = f"{what} of {_size(size)} on connection {conn_id} (at {utc_iso(at_ns)})"
            if refusal == REFUSED_LARGE_LIMIT:
                why = (f"{record} could not be captured: records larger than a quarter of capture.buffer-size wait "
                       f"in memory for the writer, and capture.large-record-buffer-size "
                       f"({_size(ring.large_max)}) would be exceeded ({_size(ring.large_bytes)} already waiting "
                       f"in {ring.large_pending} record(s)); raise capture.large-record-buffer-size")
            elif refusal == REFUSED_TOO_LARGE:
                why = f"{record} could not be captured: a capture record holds at most 4 GiB"
            else:  # REFUSED_BIGGER_THAN_RING: only when there is no side path
                why = f"{record} could not be captured: it is larger than capture.buffer-size ({_size(ring.capacity)})"
        self._fail(f"{why}; capture stopped, everything captured before it is in the files")

    def _record_state(self, session: "Session") -> None:
        session.capture_state = "on"
        self.connections += 1
        state = session.snapshot()
        kept = []
        for stmt_id, sql in state["prepared"]:
            if carries_secret(sql):  # prepared before the capture: filtered like one prepared during it
                self._filtered_stmts.add((session.conn_id, stmt_id))
                self.filtered += 1
            else:
                kept.append([stmt_id, sql])
        state["prepared"] = kept
        self._append_event(KIND_CONN_STATE, session, json.dumps(state).encode())

    def on_connect(self, session: "Session") -> None:
        if self._stopping or self._failed:
            return
        session.capture_state = "on"
        self.connections += 1
        self.server_version = self.server_version or session.server_version
        body = {"user": session.user, "db": session.db, "capabilities": session.capabilities,
                "charset": session.charset, "client_addr": session.client_addr}
        self._append_event(KIND_CONN_OPEN, session, json.dumps(body).encode())

    def on_command(self, session: "Session", cmd: int, start_ns: int, end_ns: int, r, payload: bytes | None) -> None:
        """A finished command (on the event loop, once per command: kept lean)."""
        state = session.capture_state
        if state != "on" or payload is None or start_ns < self.start_ns or self._stopping or self._failed:
            if state == "wait-txn" and not session.in_transaction and not self._stopping and not self._failed:
                self._record_state(session)  # a transaction boundary: the session is whole from here
            return
        affected = r.affected_rows
        if cmd == _COM_QUERY or cmd == _COM_STMT_PREPARE:
            if carries_secret(payload):
                self.filtered += 1
                if cmd == _COM_STMT_PREPARE:
                    self._filtered_stmts.add((session.conn_id, r.stmt_id))
                return
            if cmd == _COM_STMT_PREPARE and r.outcome == 0:
                affected = r.stmt_id  # a prepare has no affected rows: the field carries the statement id
        elif cmd == _COM_CHANGE_USER:
            payload = change_user_without_auth(payload, session.capabilities)
        elif self._filtered_stmts and _COM_STMT_EXECUTE <= cmd <= _COM_STMT_RESET:
            if (session.conn_id, int.from_bytes(payload[1:5], "little")) in self._filtered_stmts:
                self.filtered += 1
                return
        if self.ring.append_command(session.conn_id, start_ns, end_ns, r.outcome, r.err_code, affected, r.rows,
                                    payload, r.last_insert_id, r.columns, r.warnings, r.status_flags,
                                    r.hash_ordered, r.hash_unordered):
            self.commands += 1
        else:
            self._refused(f"a {command_name(cmd)}", session.conn_id, len(payload), start_ns)

    def on_close(self, session: "Session") -> None:
        # "wait-txn": closed before its boundary, nothing of it was recorded, so no close either
        if session.capture_state == "on" and not self._stopping:
            self._append_event(KIND_CONN_CLOSE, session, b"")
        session.capture_state = None

    # ---- show ----------------------------------------------------------------------------------
    def describe(self) -> dict:
        d = self.describe_base()
        d.update({
            "output": self.output,
            "compress": self.compress,
            "encryption_method": "aes256-ctr" if self.encrypted else "",
            # running: commands captured so far; ended: commands the files hold
            "commands": self._final["commands"] if self._final else self.commands,
            "filtered_commands": self.filtered,
            "connections": self.connections,
            "existing_connections": self.existing_connections,
            "waited_for_transaction": self.waited_for_txn,
            "bytes_written": self.writer.bytes_written,
            "buffer_used": self.ring.used if self.ring is not None else 0,
            "large_record_buffer_used": self.ring.large_bytes if self.ring is not None else 0,
        })
        if self._final and self._final.get("commands_not_written"):
            d["commands_not_written"] = self._final["commands_not_written"]
        if self.waited_for_txn:
            d["note"] = (f"{self.waited_for_txn} connection(s) were inside a transaction when the capture started; "
                         f"they are captured from their next transaction boundary")
        return d

    def progress(self) -> float:
        if self.status != "running":
            return 1.0 if self.status == "done" else self._progress_at_end
        return min(1.0, (time.time_ns() - self.start_ns) / 1e9 / self.duration) if self.duration else 1.0


def _size(n: int) -> str:
    """Bytes for a message: 73400320 -> "70.0 MiB"."""
    if n < 1024:
        return f"{n} bytes"
    for shift, unit in ((30, "GiB"), (20, "MiB"), (10, "KiB")):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
