"""A running capture: the data plane's workers append command records to the ring buffer (in C,
without the GIL); this job appends the connection events only Python knows (a new connection's
handshake, the state of one open before the capture), and a writer thread drains the ring.

Nothing here waits on the disk: appends are a memcpy into the ring buffer. If the buffer is full
(the writer cannot keep up) the capture stops with an error — it never drops records silently
and never slows a client down.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from typing import TYPE_CHECKING

from fastproxy._ringbuf import RingBuffer
from fastproxy.capture.record import KIND_CONN_OPEN, KIND_CONN_STATE
from fastproxy.capture.writer import CaptureWriter
from fastproxy.errors import JobError
from fastproxy.jobs_base import Job, utc_iso

if TYPE_CHECKING:
    from fastproxy.proxy.connection import ClientConnection
    from fastproxy.proxy.server import ProxyServer
    from fastproxy.proxy.session import Session

log = logging.getLogger("fastproxy.capture")

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
# User-management statements are short; scanning a multi-megabyte INSERT is not. The data plane runs
# this filter (with the GIL) only on statements its C pre-check flags (fastproxy/csrc/dp_session.c).
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
                 throttle_bytes_per_sec: float | None = None) -> None:
        super().__init__()
        self.server = server
        self.output = os.path.abspath(output)
        self.duration = duration
        self.compress = compress
        self.encrypted = encryption_key is not None
        self.ring = RingBuffer(buffer_size)
        self.writer = CaptureWriter(self.ring, self.output, file_size=file_size, compress=compress,
                                    encryption_key=encryption_key, throttle_bytes_per_sec=throttle_bytes_per_sec)
        self.start_ns = 0
        self.filtered_prepared = 0  # statements prepared before the capture whose SQL may carry a secret
        self.connections = 0
        self.server_version = ""
        self._relay_counts: dict | None = None  # the data plane's counts, frozen when the capture stops
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._failed = False  # an append failed: no record after the lost one may be written

    # ---- counts: the workers keep theirs in C ----------------------------------------------------
    @property
    def commands(self) -> int:
        return self.ring.commands_appended

    def _counts(self) -> dict:
        if self._relay_counts is not None:
            return self._relay_counts
        return self.server.dataplane.capture_counts()

    @property
    def filtered(self) -> int:
        return self.filtered_prepared + self._counts()["filtered"]

    @property
    def existing_connections(self) -> int:
        return self._counts()["existing"]

    @property
    def waited_for_txn(self) -> int:
        return self._counts()["waited_for_transaction"]

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self.writer.start()
        if self.writer.error:
            error = self.writer.error
            self.writer.stop({})
            raise JobError(f"capture cannot start: {error}")
        self.start_ns = time.time_ns()
        self.mark_started()
        server = self.server
        server.capture = self
        # Connections open now are parked by their worker at their next command boundary (after
        # their transaction, if one is open) and handed to on_parked, which records their state.
        server.dataplane.capture_start(self.ring, self.start_ns, carries_secret, SECRET_SCAN_BYTES)
        self._task = asyncio.get_running_loop().create_task(self._watch())
        log.info("capture started: %s for %.0fs (%d open connections)", self.output, self.duration,
                 len(server.connections))

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
        server = self.server
        if server.capture is self:
            server.capture = None
        self.ring.close()  # from here no record is appended, by the workers or by Python
        server.dataplane.capture_stop()
        await server.sync()  # every worker has let go of the ring
        self._relay_counts = server.dataplane.capture_counts()
        server.dataplane.capture_release()
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
        meta = await asyncio.get_running_loop().run_in_executor(None, self.writer.stop, meta)
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

    def _append_event(self, kind: int, session: "Session", body: bytes) -> bool:
        if self._failed:
            return False
        if not self.ring.append_event(kind, session.conn_id, time.time_ns(), body):
            self.on_buffer_full()
            return False
        return True

    def on_buffer_full(self) -> None:
        self._fail(f"capture buffer full ({self.ring.capacity} bytes): the writer could not keep up with the "
                   f"traffic (disk too slow?); capture stopped, everything captured until then is in the files")

    def on_parked(self, conn: "ClientConnection") -> None:
        """A connection open before the capture reached a command boundary and waits: record its
        state, then let it go on, captured from its next command."""
        session = conn.session
        dataplane = self.server.dataplane
        if self._stopping or self._failed:
            dataplane.resume(session.relay, False)
            return
        state = session.state()
        body = session.snapshot(state)
        kept, filtered = [], []
        for stmt_id, sql in body["prepared"]:
            if stmt_id in state["filtered"] or carries_secret(sql):  # filtered like one prepared during it
                filtered.append(stmt_id)
            else:
                kept.append([stmt_id, sql])
        body["prepared"] = kept
        if filtered:
            self.filtered_prepared += len(filtered)
            session.relay.mark_filtered(filtered)
        self.connections += 1
        self.server_version = self.server_version or session.server_version
        ok = self._append_event(KIND_CONN_STATE, session, json.dumps(body).encode())
        dataplane.resume(session.relay, ok)

    def on_connect(self, session: "Session") -> bool:
        """A new connection, about to be relayed: recorded from its first command (True)."""
        if self._stopping or self._failed:
            return False
        self.connections += 1
        self.server_version = self.server_version or session.server_version
        body = {"user": session.user, "db": session.db, "capabilities": session.capabilities,
                "charset": session.charset, "client_addr": session.client_addr}
        return self._append_event(KIND_CONN_OPEN, session, json.dumps(body).encode())

    # ---- show ----------------------------------------------------------------------------------
    def describe(self) -> dict:
        d = self.describe_base()
        d.update({
            "output": self.output,
            "compress": self.compress,
            "encryption_method": "aes256-ctr" if self.encrypted else "",
            "commands": self.commands,
            "filtered_commands": self.filtered,
            "connections": self.connections,
            "existing_connections": self.existing_connections,
            "waited_for_transaction": self.waited_for_txn,
            "bytes_written": self.writer.bytes_written,
            "buffer_used": self.ring.used,
        })
        if self.waited_for_txn:
            d["note"] = (f"{self.waited_for_txn} connection(s) were inside a transaction when the capture started; "
                         f"they are captured from their next transaction boundary")
        return d

    def progress(self) -> float:
        if self.status != "running":
            return 1.0 if self.status == "done" else self._progress_at_end
        return min(1.0, (time.time_ns() - self.start_ns) / 1e9 / self.duration) if self.duration else 1.0
