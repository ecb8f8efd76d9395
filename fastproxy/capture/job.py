"""A running capture: the data plane's workers append command records (and LOCAL INFILE files) to
the ring buffer, in C, without the GIL; this job appends the connection events only Python knows (a
new connection's handshake, the state of one open before the capture, a close), decides on the
statements the secret classifier's scan flags (the workers ask, with the GIL), and a writer thread
drains the ring. A connection with TLS on a leg is relayed in Python (fastproxy/proxy/connection.py):
its commands come here one by one (`on_command`) and are appended from here. Capture filters
(fastproxy/traffic_filter.py) decide here for both: the workers ask for every command of a captured
connection while a filter is set.

Nothing here waits on the disk: appends are a memcpy into the ring buffer (records larger than a
quarter of it are kept by reference on its side path). If the buffer is full (the writer cannot
keep up), or a large record would exceed capture.large-record-buffer-size, the capture stops with
an error that says which — it never drops records silently and never slows a client down.
"""
from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import time
from typing import TYPE_CHECKING

from fastproxy._ringbuf import REFUSED_CLOSED, REFUSED_FULL, REFUSED_LARGE_LIMIT, REFUSED_TOO_LARGE, RingBuffer
from fastproxy.capture.record import (INFILE_SIZE, KIND_COMMAND, KIND_CONN_CLOSE, KIND_CONN_OPEN, KIND_CONN_STATE,
                                      KIND_LOCAL_INFILE, KIND_NAMES, META_NAME)
from fastproxy.capture.writer import CaptureWriter
from fastproxy.constants import COMMAND, command_name
from fastproxy.errors import JobError
from fastproxy.jobs_base import Job, utc_iso
from fastproxy.private_files import check_output_path
from fastproxy.storage import S3Storage, is_s3
from fastproxy.protocol import change_user_without_auth
from fastproxy.secret_sql import (CLEAN, DROPPED, classify, prepared_names, reading_for_collation, redact_text,
                                  value_holds_secret)
from fastproxy.traffic_filter import Filters, Selector

if TYPE_CHECKING:
    from fastproxy.proxy.server import ProxyServer
    from fastproxy.proxy.session import Session

log = logging.getLogger("fastproxy.capture")

_COM_QUERY = COMMAND.COM_QUERY
_COM_STMT_PREPARE = COMMAND.COM_STMT_PREPARE
_COM_STMT_EXECUTE = COMMAND.COM_STMT_EXECUTE
_COM_STMT_RESET = COMMAND.COM_STMT_RESET
# commands that name a prepared statement by id (payload bytes 1-4) besides EXECUTE..RESET: a filtered
# prepare's go too (MariaDB's bulk execute carries bound values like an execute)
_LAST_STMT_ID = 0xFFFFFFFF  # MariaDB: a statement command's id for the last statement prepared
_STMT_ID_COMMANDS = frozenset(range(_COM_STMT_EXECUTE, _COM_STMT_RESET + 1)) | {
    COMMAND.COM_STMT_FETCH, COMMAND.COM_STMT_BULK_EXECUTE}
_COM_CHANGE_USER = COMMAND.COM_CHANGE_USER
_COM_RESET_CONNECTION = COMMAND.COM_RESET_CONNECTION
_COUNT_KEYS = ("filtered", "existing", "waited_for_transaction", "local_infile_files", "local_infile_bytes",
               "local_infile_too_large")


def _check_s3_output(storage: S3Storage) -> None:
    """Before a capture starts: the bucket answers, and the prefix holds no finished capture."""
    from fastproxy.errors import TrafficFormatError

    try:
        names = storage.listdir()
    except TrafficFormatError as e:
        raise JobError(f"output: {e}") from None
    if META_NAME in names:
        raise JobError(f"output: {storage.location} already holds a finished capture; choose another prefix")


class CaptureJob(Job):
    kind = "capture"

    def __init__(self, server: "ProxyServer", output: str, duration: float, *, compress: bool = True,
                 encryption_key: bytes | None = None, buffer_size: int = 64 << 20, file_size: int = 300 << 20,
                 large_record_buffer_size: int = 256 << 20, throttle_bytes_per_sec: float | None = None,
                 local_infile: bool = False, local_infile_max_size: int = 16 << 20,
                 filters: Filters | None = None) -> None:
        super().__init__()
        self.server = server
        upload_to = None
        if is_s3(output):
            # object storage: files are written to a private local spool and uploaded as each one completes
            upload_to = S3Storage(output)
            _check_s3_output(upload_to)
            self.output = output
            local = tempfile.mkdtemp(prefix="fastproxy-spool-")  # 0700, ours
        else:
            self.output = local = check_output_path(output, "output")
        self.duration = duration
        self.compress = compress
        self.encrypted = encryption_key is not None
        self.ring: RingBuffer | None = RingBuffer(buffer_size, large_max=large_record_buffer_size)
        self.writer = CaptureWriter(self.ring, local, file_size=file_size, compress=compress,
                                    encryption_key=encryption_key, throttle_bytes_per_sec=throttle_bytes_per_sec,
                                    upload_to=upload_to)
        self.start_ns = 0
        self.filtered_here = 0  # dropped for a secret that could not be cut out with certainty (here)
        self.redacted = 0  # recorded with their secrets replaced (fastproxy/secret_sql.py)
        self.connections = 0
        self.server_version = ""
        self._commands = 0  # captured, frozen when the capture stops (the ring is freed then)
        self._relay_counts: dict | None = None  # the data plane's counts, frozen when the capture stops
        # the same counts for the connections relayed in Python (TLS), and their dropped statements
        self._py_counts = dict.fromkeys(_COUNT_KEYS, 0)
        self._filtered_stmts: set[tuple[int, int]] = set()
        # per connection relayed in Python: the last statement prepared (MariaDB's id 0xFFFFFFFF names it)
        self._last_prepared: dict[int, int] = {}
        # LOCAL INFILE files: recorded (by the workers) when asked for, up to a size (larger than a
        # quarter of the ring, a record waits on the side path, which large_record_buffer_size bounds)
        self.local_infile = local_infile
        self.local_infile_limit = min(local_infile_max_size, large_record_buffer_size)
        # sessions open before the capture with parts replay cannot rebuild: "conn N: what"
        self.sessions_not_rebuilt = 0
        self.not_rebuilt: list[str] = []
        # per connection: SQL-level PREPARE names whose text was dropped; their EXECUTE is dropped too
        self._dropped_sql_prepares: dict[int, set[bytes]] = {}
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._failed = False  # an append failed: no record after the lost one may be written
        self._final: dict | None = None  # the meta the writer wrote: what the files hold
        # what is not captured at all (fastproxy/traffic_filter.py): None when nothing is filtered
        self.filters = filters
        self.selector = Selector(filters) if filters is not None and filters.active else None

    # ---- counts: the workers keep theirs in C ----------------------------------------------------
    @property
    def commands(self) -> int:
        """Command records captured (appended to the ring) so far."""
        return self.ring.commands_appended if self.ring is not None else self._commands

    def _counts(self) -> dict:
        relay = self._relay_counts if self._relay_counts is not None else self.server.dataplane.capture_counts()
        return {k: relay[k] + self._py_counts[k] for k in _COUNT_KEYS}

    @property
    def filtered(self) -> int:
        """Not recorded for a secret: decided here, or by a worker (executes of a dropped statement)."""
        return self.filtered_here + self._counts()["filtered"]

    @property
    def existing_connections(self) -> int:
        return self._counts()["existing"]

    @property
    def waited_for_txn(self) -> int:
        return self._counts()["waited_for_transaction"]

    @property
    def infile_files(self) -> int:
        return self._counts()["local_infile_files"]

    @property
    def infile_bytes(self) -> int:
        return self._counts()["local_infile_bytes"]

    @property
    def infile_too_large(self) -> int:
        return self._counts()["local_infile_too_large"]

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
        # Every connection already relayed: its state is read at its next command, before that
        # command (the proxy's own queries; connection.py), then it is captured; one inside a
        # transaction that has written is captured from its end (its writes before the capture are
        # not in the files and cannot be rebuilt). The workers decide, each for its connections.
        server.dataplane.capture_start(self.ring, self.start_ns, self.local_infile, self.local_infile_limit,
                                       select=self.selector is not None)
        from fastproxy.proxy.connection import COMMANDS

        for conn in list(server.connections):  # the same, here, for those relayed in Python (TLS)
            session = conn.session
            if conn.phase != COMMANDS:
                continue  # still authenticating: on_connect records it; or the data plane's
            self._py_counts["existing"] += 1
            self.server_version = self.server_version or session.server_version
            if session.in_transaction and session.txn_wrote:
                session.capture_state = "wait-txn"
                self._py_counts["waited_for_transaction"] += 1
            else:
                session.capture_state = "pending"
                session.want_own_query()
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
        for conn in list(server.connections):
            session = conn.session
            if session.relay is None and session.prepared is not None:  # relayed in Python
                session.capture_state = None
                session.want_own_query()
                session.infiles.clear()
        self._commands = self.ring.commands_appended
        end_ns = time.time_ns()
        meta = {
            "start": utc_iso(self.start_ns), "end": utc_iso(end_ns), "duration": round((end_ns - self.start_ns) / 1e9, 3),
            "start_ns": self.start_ns, "end_ns": end_ns,
            "commands": self.commands, "filtered_commands": self.filtered, "redacted_commands": self.redacted,
            "connections": self.connections,
            "existing_connections": self.existing_connections, "waited_for_transaction": self.waited_for_txn,
            "server_version": self.server_version, "compress": self.compress,
            "encryption_method": "aes256-ctr" if self.encrypted else "",
            "sessions_not_rebuilt": self.sessions_not_rebuilt, "not_rebuilt": self.not_rebuilt,
            "local_infile": self.local_infile, "local_infile_files": self.infile_files,
            "local_infile_bytes": self.infile_bytes, "local_infile_too_large": self.infile_too_large,
            # how far out of completion order the records were appended (several workers): the
            # reader puts them back in order within this window (capture/reorder.py)
            "reorder_window_ns": self.ring.max_late_ns,
            **self._filter_counts(),
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

    def on_session_state(self, session: "Session", server_state: dict) -> bool:
        """The state of a session open before the capture, read at its command boundary (the
        proxy's own queries; fastproxy/proxy/introspect.py): recorded before its first command.
        True when recorded: the connection is captured from its next command on."""
        if self._stopping or self._failed:
            session.capture_state = None
            return False
        if session.relay is None:  # relayed in Python (TLS): on_command records it from now on
            session.capture_state = "on"
            session.want_own_query()
        self.server_version = self.server_version or session.server_version
        live = session.state()
        state = session.snapshot(live)
        state.update(server_state)
        if self.selector is not None and not self.selector.connection(session.conn_id, session.user, state.get("db"),
                                                                      state.get("prepared") or ()):
            # filtered out (user, sample): none of its records are written; its commands still
            # pass the filter, which counts them
            return True
        self.connections += 1
        not_rebuilt = []
        kept = []
        dropped = []
        reading = reading_for_collation(session.charset)
        for stmt_id, sql in state["prepared"]:
            # prepared before the capture: redacted or dropped like one prepared during it
            shown = None if stmt_id in live["filtered"] else redact_text(sql, reading)
            if shown is None:
                dropped.append(stmt_id)  # its executes, resets and close are not captured either
                self._filtered_stmts.add((session.conn_id, stmt_id))
                self.filtered_here += 1
            else:
                if shown is not sql:
                    self.redacted += 1
                kept.append([stmt_id, shown])
        if dropped and session.relay is not None:
            session.relay.mark_filtered(dropped)
        state["prepared"] = kept
        state["types"] = {sid: t for sid, t in state["types"].items() if int(sid) not in dropped}
        # the SQL-level state is SQL text: redacted as a captured statement is, or left out
        for key, what in (("sql_prepared", "prepared statement"), ("temp_tables", "temporary table")):
            kept = []
            for item in state[key]:
                shown = redact_text(item["sql"], reading)
                if shown is None:
                    not_rebuilt.append(f"{what} {item['name']}: its SQL holds a secret")
                else:
                    kept.append(dict(item, sql=shown))
            state[key] = kept
        # user variables' values (strings, as hex): one that is secret SQL kept for a PREPARE ... FROM @q,
        # or a password hash, is left out (the session is then not rebuilt in full)
        kept = []
        for entry in state.get("user_vars") or []:
            if "hex" in entry and value_holds_secret(bytes.fromhex(entry["hex"]), reading):
                not_rebuilt.append(f"user variable @{entry['name']}: its value holds a secret")
            else:
                kept.append(entry)
        if "user_vars" in state:
            state["user_vars"] = kept
        for t in state["temp_tables"]:
            not_rebuilt.append(f"temporary table {t['db'] + '.' if t['db'] else ''}{t['name']}: its rows "
                               f"(re-created empty from its CREATE statement)")
        if state.get("state_error"):
            not_rebuilt.append(state["state_error"])
        if not_rebuilt:
            state["not_rebuilt"] = not_rebuilt
            self.sessions_not_rebuilt += 1
            if len(self.not_rebuilt) < 20:  # a sample for show/meta; the count is exact
                self.not_rebuilt.append(f"conn {session.conn_id}: " + "; ".join(not_rebuilt))
        return self._append_event(KIND_CONN_STATE, session, json.dumps(state).encode())

    def on_connect(self, session: "Session") -> bool:
        """A new connection, about to be relayed: recorded from its first command (True)."""
        if self._stopping or self._failed:
            return False
        if session.relay is None:  # relayed in Python (TLS): on_command records it
            session.capture_state = "on"
        self.server_version = self.server_version or session.server_version
        if self.selector is not None and not self.selector.connection(session.conn_id, session.user, session.db):
            # filtered out (user, sample): none of its records are written; its commands still
            # pass the filter, which counts them
            return True
        self.connections += 1
        body = {"user": session.user, "db": session.db, "capabilities": session.capabilities,
                "charset": session.charset, "client_addr": session.client_addr, "backend": session.backend,
                "backend_conn_id": session.backend_conn_id}
        return self._append_event(KIND_CONN_OPEN, session, json.dumps(body).encode())

    def on_statement(self, session: "Session", payload: bytes, outcome: int, stmt_id: int) -> tuple[int, bytes | None, bool]:
        """A captured COM_QUERY / COM_STMT_PREPARE the classifier's scan flagged (a worker asks, with
        the GIL): (verdict: CLEAN / REDACTED / DROPPED, what to record when REDACTED, whether this
        connection now has SQL-level PREPAREs whose text was dropped)."""
        conn_id = session.conn_id
        cmd = payload[0]
        verdict, recorded = classify(payload, 1, reading_for_collation(session.charset))
        if verdict == DROPPED:
            self._drop_secret(session, cmd, payload)
        elif verdict != CLEAN:
            self.redacted += 1
        elif (self._dropped_sql_prepares and cmd == _COM_QUERY
              and not self._sql_prepares_allow(conn_id, payload)):
            self.filtered_here += 1
            verdict = DROPPED
        return verdict, recorded, conn_id in self._dropped_sql_prepares

    def select_command(self, session: "Session", payload: bytes, stmt_id: int) -> bool:
        """A finished command of a captured connection while a capture filter is set (a worker
        asks, with the GIL): whether the filter keeps it (fastproxy/traffic_filter.py)."""
        if self.selector is None:
            return True
        return self.selector.command(session.conn_id, payload, 0,
                                     stmt_id if payload[0] == _COM_STMT_PREPARE else 0) is None

    def on_command(self, session: "Session", cmd: int, start_ns: int, end_ns: int, r, payload: bytes | None) -> None:
        """A finished command of a connection relayed in Python (TLS; on the event loop, once per
        command: kept lean)."""
        state = session.capture_state
        if state != "on" or payload is None or start_ns < self.start_ns or self._stopping or self._failed:
            if state == "wait-txn" and not session.in_transaction and not self._stopping and not self._failed:
                session.capture_state = "pending"  # a transaction boundary: read at the next command
                session.want_own_query()
            return
        if self.selector is not None and self.selector.command(
                session.conn_id, payload, start_ns, r.stmt_id if cmd == _COM_STMT_PREPARE else 0) is not None:
            session.infiles.clear()  # the files of a command not captured
            return
        if session.infiles:
            self._record_infiles(session, start_ns)
        affected = r.affected_rows
        if cmd == _COM_STMT_PREPARE and r.outcome == 0:
            self._last_prepared[session.conn_id] = r.stmt_id
        if cmd == _COM_QUERY or cmd == _COM_STMT_PREPARE:
            verdict, recorded = classify(payload, 1, reading_for_collation(session.charset))
            if verdict != CLEAN:
                if verdict == DROPPED:
                    self._drop_secret(session, cmd, payload)
                    if cmd == _COM_STMT_PREPARE:
                        self._filtered_stmts.add((session.conn_id, r.stmt_id))
                    return
                self.redacted += 1
                payload = recorded
            elif (self._dropped_sql_prepares and cmd == _COM_QUERY
                  and not self._sql_prepares_allow(session.conn_id, payload)):
                self.filtered_here += 1
                return
            if cmd == _COM_STMT_PREPARE and r.outcome == 0:
                affected = r.stmt_id  # a prepare has no affected rows: the field carries the statement id
        elif cmd == _COM_CHANGE_USER or cmd == _COM_RESET_CONNECTION:
            self._dropped_sql_prepares.pop(session.conn_id, None)  # SQL-level statements are gone
            self._last_prepared.pop(session.conn_id, None)
            if cmd == _COM_CHANGE_USER:
                payload = change_user_without_auth(payload, session.capabilities)
        elif self._filtered_stmts and cmd in _STMT_ID_COMMANDS and len(payload) >= 5:
            if self._names_filtered(session.conn_id, int.from_bytes(payload[1:5], "little")):
                self.filtered_here += 1
                return
        if not self.ring.append_command(session.conn_id, start_ns, end_ns, r.outcome, r.err_code, affected, r.rows,
                                        payload, r.last_insert_id, r.columns, r.warnings, r.status_flags,
                                        r.hash_ordered, r.hash_unordered, ordered=True):
            self._refused(f"a {command_name(cmd)}", session.conn_id, len(payload), start_ns)

    def _names_filtered(self, conn_id: int, stmt_id: int) -> bool:
        """Whether a statement command's id names a statement whose prepare was dropped."""
        if stmt_id == _LAST_STMT_ID:    # MariaDB: the last statement prepared
            last = self._last_prepared.get(conn_id)
            if last is None:    # prepared before the capture: any dropped one may be it
                return any(conn == conn_id for conn, _ in self._filtered_stmts)
            stmt_id = last
        return (conn_id, stmt_id) in self._filtered_stmts

    def _record_infiles(self, session: "Session", start_ns: int) -> None:
        """The LOCAL INFILE files of the command that started at start_ns, before its record (a
        connection relayed in Python; the workers record their own)."""
        counts = self._py_counts
        for size, content in session.infiles:
            counts["local_infile_files"] += 1
            if content is None:
                counts["local_infile_too_large"] += 1
                content = b""
            else:
                counts["local_infile_bytes"] += size
            if self._failed:
                break
            body = INFILE_SIZE.pack(size) + content
            if not self.ring.append_event(KIND_LOCAL_INFILE, session.conn_id, start_ns, body):
                self._refused("a LOCAL INFILE file", session.conn_id, len(body), start_ns)
        session.infiles.clear()

    def on_session_reset(self, session: "Session") -> None:
        """COM_CHANGE_USER / COM_RESET_CONNECTION: its SQL-level statements are gone."""
        self._dropped_sql_prepares.pop(session.conn_id, None)
        self._last_prepared.pop(session.conn_id, None)

    def _drop_secret(self, session: "Session", cmd: int, payload: bytes) -> None:
        """Not recorded: a secret that cannot be cut out with certainty. What refers to it goes too
        (a prepared statement's executes, resets and close: its worker marks it)."""
        self.filtered_here += 1
        if cmd == _COM_STMT_PREPARE:
            return
        names = {name for verb, name in prepared_names(payload, 1, reading_for_collation(session.charset))
                 if verb == b"prepare"}
        if names:
            self._dropped_sql_prepares.setdefault(session.conn_id, set()).update(names)

    def _sql_prepares_allow(self, conn_id: int, payload: bytes) -> bool:
        """False for a query that runs or deallocates an SQL-level statement whose PREPARE was dropped
        (replayed, it would only fail); a new clean PREPARE of the name lifts that."""
        dropped = self._dropped_sql_prepares.get(conn_id)
        if not dropped:
            return True
        allow = True
        for verb, name in prepared_names(payload, 1):
            if verb == b"prepare":
                dropped.discard(name)
            elif name in dropped:
                allow = False
                if verb == b"deallocate":
                    dropped.discard(name)
        if not dropped:
            del self._dropped_sql_prepares[conn_id]
        return allow

    def on_close(self, session: "Session") -> None:
        """A captured connection closed (after its last command record, which its worker appended)."""
        self._dropped_sql_prepares.pop(session.conn_id, None)
        self._last_prepared.pop(session.conn_id, None)
        # relayed in Python (TLS): "wait-txn"/"pending": nothing of it was recorded, so no close either
        captured = session.relay is not None or session.capture_state == "on"
        if captured and not self._stopping and (self.selector is None or self.selector.close(session.conn_id)):
            body = {"by": session.closed_by or "client"}
            if session.close_reason:
                body["reason"] = session.close_reason
            if session.close_err_code:
                body["err_code"] = session.close_err_code
            self._append_event(KIND_CONN_CLOSE, session, json.dumps(body).encode())
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
            "redacted_commands": self.redacted,
            "connections": self.connections,
            "existing_connections": self.existing_connections,
            "waited_for_transaction": self.waited_for_txn,
            "bytes_written": self.writer.bytes_written,
            "buffer_used": self.ring.used if self.ring is not None else 0,
            "large_record_buffer_used": self.ring.large_bytes if self.ring is not None else 0,
            "sessions_not_rebuilt": self.sessions_not_rebuilt,
            "not_rebuilt": self.not_rebuilt,
            "local_infile": self.local_infile,
            "local_infile_files": self.infile_files,
            "local_infile_bytes": self.infile_bytes,
            "local_infile_too_large": self.infile_too_large,
            **self._filter_counts(),
        })
        if self._final and self._final.get("commands_not_written"):
            d["commands_not_written"] = self._final["commands_not_written"]
        notes = []
        if self.waited_for_txn:
            notes.append(f"{self.waited_for_txn} connection(s) were inside a transaction that had written when the "
                         f"capture started; they are captured from their next transaction boundary")
        if self.sessions_not_rebuilt:
            notes.append(f"{self.sessions_not_rebuilt} session(s) open before the capture cannot be rebuilt in "
                         f"full on replay (not_rebuilt says what); replay reports their failures apart")
        if self.infile_too_large:
            notes.append(f"{self.infile_too_large} LOCAL INFILE file(s) were larger than "
                         f"{self.local_infile_limit} bytes and not recorded: replay sends an empty file for them")
        if notes:
            d["note"] = "; ".join(notes)
        return d

    def _filter_counts(self) -> dict:
        """The filters and what each dropped (commands; "... (connections)": whole connections)."""
        if self.selector is None:
            return {}
        return {"filters": self.filters.describe(), "filtered_by": dict(self.selector.dropped)}

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
