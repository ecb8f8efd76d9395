"""A running capture: the data plane's workers append command records to the ring buffer (in C,
without the GIL); this job appends the connection events only Python knows (a new connection's
handshake, the state of one open before the capture), and a writer thread drains the ring.

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
from fastproxy.capture.record import KIND_COMMAND, KIND_CONN_OPEN, KIND_CONN_STATE, KIND_NAMES
from fastproxy.capture.writer import CaptureWriter
from fastproxy.constants import command_name
from fastproxy.errors import JobError
from fastproxy.jobs_base import Job, utc_iso
from fastproxy.private_files import check_output_path

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
        self.filtered_prepared = 0  # statements prepared before the capture whose SQL may carry a secret
        self.connections = 0
        self.server_version = ""
        self._commands = 0  # captured, frozen when the capture stops (the ring is freed then)
        self._relay_counts: dict | None = None  # the data plane's counts, frozen when the capture stops
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._failed = False  # an append failed: no record after the lost one may be written
        self._final: dict | None = None  # the meta the writer wrote: what the files hold

    # ---- counts: the workers keep theirs in C ----------------------------------------------------
    @property
    def commands(self) -> int:
        """Command records captured (appended to the ring) so far."""
        return self.ring.commands_appended if self.ring is not None else self._commands

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
            raise JobError(f"output: {error}")
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
        self._commands = self.ring.commands_appended
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

    def _append_event(self, kind: int, session: "Session", body: bytes) -> bool:
        if self._failed or self._stopping:
            return False
        now = time.time_ns()
        if not self.ring.append_event(kind, session.conn_id, now, body):
            self._refused(f"a {KIND_NAMES[kind]} record", session.conn_id, len(body), now)
            return False
        return True

    def on_refused(self, refusal: int, kind: int, cmd: int, conn_id: int, size: int, at_ns: int) -> None:
        """A worker's append was refused (the first one; the workers append nothing after it)."""
        what = f"a {command_name(cmd)}" if kind == KIND_COMMAND else f"a {KIND_NAMES.get(kind, kind)} record"
        self._refused(what, conn_id, size, at_ns, refusal)

    def _refused(self, what: str, conn_id: int, size: int, at_ns: int, refusal: int | None = None) -> None:
        """The ring buffer refused a record: stop, saying which limit and what was not captured."""
        ring = self.ring
        if ring is None:
            return
        refusal = ring.refusal if refusal is None else refusal
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
