"""Checkpoint and resume of a replay.

A replay's position is not one number: connections run ahead of and behind each other (causal
order parks some, transactions hold others), and several records are in flight at once. Every
record read from the input gets a sequence number (`seq`, its place in the filtered input, the same
on every read of the same input with the same options), and the position is:

- `low_water`: every record before it is done;
- `done`: per connection, the last of its records that is done (records after low_water count as
  done only up to it).

"Done" is judged as the target server sees it after a crash (kill -9) or a cancel:

- a command that was *sent* counts as executed, answered or not (an autocommit statement the
  server received runs to its end; the replayer cannot learn whether it did, so it is never sent
  twice — counted in the summary's `resume.sent_after_last_checkpoint`). Sent means its bytes
  went to the socket: a command the engine started but held back (written behind other answers
  in one send, its transaction redone first, its statement re-prepared first) is not sent yet —
  a COMMIT journaled then and lost with the process would count a transaction the server rolled back;
- a command inside a production transaction counts only once that transaction has ended: the
  server rolls back the open transaction of a connection that went away, so the resumed replay
  sends it again from its first statement.

A snapshot (`replay.checkpoint`, private, replaced atomically) is written every second and at
the end; between snapshots each send is appended to a journal (`replay.checkpoint.journal`, a file
mapped into memory: no system call per command; it survives the replayer's death, not the
machine's — fastproxy/replay/journal.py), and so is each report entry and each command's result, so
that the report tables, the verdict and the summary's counters neither lose nor repeat what happened
in the last second.

The verdict (latency histograms per digest, mismatches, nondeterministic statements, the timeline)
and the summary's counters are saved with the position, and they must agree with it: a command's
result counts when the command is *done*. Outside a transaction that is as soon as it arrives (the
command was done when sent); inside one, the results are held per connection until the command that
ends the transaction is sent (a resume sends the transaction again, and counts it then). A result
that arrives after a snapshot is written to the journal before it is counted; a command sent but
never answered before a kill -9 is done with no result: counted as replayed, outside the verdict,
and said in the summary (`resume.results_unknown`).

On resume the input is read again from its start: records that are done are not sent, but
what they did to sessions and to causal order is rebuilt — session statements (USE, SET, SQL
PREPARE, COM_INIT_DB) are sent again on the new connection before its first command, prepared
statements are re-prepared on first use, and every record passes through the planner as before.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import re
import time

from fastproxy._packet import CommandResult, execute_types_at
from fastproxy.capture.record import (KIND_COMMAND, KIND_CONN_CLOSE, KIND_CONN_OPEN, KIND_CONN_STATE,
                                      KIND_LOCAL_INFILE, OUTCOME_OK, Record)
from fastproxy.constants import COMMAND
from fastproxy.errors import JobError
from fastproxy.private_files import create_private_file, open_private_dir, write_all
from fastproxy.replay._checkpoint import CheckpointHooks, HeldConn, Track
from fastproxy.replay.causal import ORDER_UNKNOWN, READ_EVENT
from fastproxy.replay.journal import MESSAGE_MAX, RESULT, SENT, Journal, read_journal
from fastproxy.replay.report import Failure, OtherError
from fastproxy.replay.set_scope import session_assignments
from fastproxy.replay.stmtinfo import READ, SESSION

log = logging.getLogger("fastproxy.replay")

CHECKPOINT_VERSION = 1
INTERVAL_S = 1.0
# tests only: seconds between snapshots (a long one leaves everything after the first to the journal)
INTERVAL_ENV = "FASTPROXY_CHECKPOINT_INTERVAL_S"
OLD_SESSIONS_WAIT_S = 30.0  # how long a resume waits for the crashed replay's sessions to leave the server
# statements whose effect is the session's own: sent again on a resumed connection (transaction
# control is not: a done transaction has ended)
_SESSION_WORDS = frozenset({"use", "set", "prepare", "deallocate"})
_FIRST_WORD = re.compile(rb"(?:\s|/\*(?!M?!).*?\*/|#[^\n]*\n|--\s[^\n]*\n|\()*([A-Za-z_]+)", re.S)
_NOT_PLACEHOLDER = re.compile(rb"'(?:[^'\\]|\\.|'')*'|\"(?:[^\"\\]|\\.|\"\")*\"|`[^`]*`|/\*.*?\*/|#[^\n]*|--\s[^\n]*",
                              re.S)


def checkpoint_name(shard: tuple[int, int] | None) -> str:
    """replay[-shard<i>of<N>].checkpoint: shards sharing a report directory keep their own."""
    return "replay" + (f"-shard{shard[0]}of{shard[1]}" if shard else "") + ".checkpoint"


def identity(inputs: list[str], engine) -> dict:
    """What must be the same for a checkpoint to apply: the input, and the options that change which
    records are replayed and how (speed may change)."""
    opt = engine.opt
    meta = engine.meta
    files = []
    for path in getattr(engine.reader, "files", None) or []:
        if isinstance(path, str):
            try:
                files.append([os.path.basename(path), os.path.getsize(path)])
            except OSError:
                files.append([os.path.basename(path), None])
    return {
        "input": [p if "://" in p else os.path.abspath(p) for p in inputs],
        "format": engine.reader.format,
        "capture_start_ns": int(meta.get("start_ns", 0) or 0),
        "capture_commands": meta.get("commands"),
        "files": files,
        # the order records are read in: a checkpoint counts records, so a count made in another
        # order (a capture whose meta appeared since, an older fastproxy reading as written) is void
        "reorder_window_ns": _reorder_windows(engine.reader),
        "filters": opt.filters.describe() if opt.filters is not None else {},
        "target": f"{opt.host}:{opt.port}",
        "readonly": opt.readonly,
        "order": opt.order,
        "pin": opt.pin,
        "whole_transactions": opt.whole_transactions,
        "replay_unknown": opt.replay_unknown,
    }


def _of_the_session(classify, sql: bytes) -> bool:
    """Whether a session word's statement (SET, USE, PREPARE, ...) only changes the session, so that
    a resumed connection sends it again: by the planner's classification, not a SET GLOBAL or an
    account change (unknown scope), nor a SET STATEMENT ... FOR a write."""
    return classify(sql).kind in (SESSION, READ)


def session_part(classify, sql: bytes) -> bytes | None:
    """What a resumed connection sends again of a session word's statement: all of it when it only
    changes the session; of a SET that also assigns global variables, its session assignments
    (fastproxy/replay/set_scope.py); else nothing (None)."""
    if _of_the_session(classify, sql):
        return sql
    kept = session_assignments(sql)
    return kept if kept is not None and _of_the_session(classify, kept) else None


def _reorder_windows(source) -> list[int]:
    """The reorder window of each capture under the (filtered, merged) source, 0 where read as written."""
    if hasattr(source, "sources"):
        return [w for s in source.sources for w in _reorder_windows(s)]
    if hasattr(source, "source"):
        return _reorder_windows(source.source)
    return [int(getattr(source, "reorder_window_ns", 0) or 0)]


def _interval() -> float:
    try:
        value = float(os.environ.get(INTERVAL_ENV, "") or INTERVAL_S)
    except ValueError:
        return INTERVAL_S
    return value if value > 0 else INTERVAL_S


def count_placeholders(sql: bytes) -> int:
    """The `?` parameters of a prepared statement (outside strings, quoted names and comments)."""
    return _NOT_PLACEHOLDER.sub(b"", sql).count(b"?")


_RESULT_FIELDS = ("outcome", "err_code", "rows", "columns", "hash_ordered", "hash_unordered", "affected_rows",
                  "warnings")


def _result_from(fields: list) -> CommandResult:
    """A journal's or a snapshot's result (read_journal's field order)."""
    c = CommandResult(0)
    for name, value in zip(_RESULT_FIELDS, fields):
        setattr(c, name, value)
    c.sql_state = fields[11]
    c.err_msg = fields[12]
    return c


class Checkpoint(CheckpointHooks):
    """Attached to a Replayer (`engine.checkpoint`): the engine calls on_read, sent, result, consumed
    (CheckpointHooks, in C: fastproxy/replay/_checkpoint.pyx) and after_login; ReplayRun calls begin,
    run_periodically and finish."""

    def __init__(self, directory: str, field: str, name: str, ident: dict, resume: bool) -> None:
        self.directory = directory
        self.field = field
        self.name = name
        self.path = os.path.join(directory, name)
        self.journal_path = os.path.join(directory, name + ".journal")
        self.identity = ident
        self.engine = None
        self.seq = 0  # the next record's seq
        self.tracks: dict[int, Track] = {}
        self.preludes: dict[int, list[bytes]] = {}  # resumed connections: session statements to send after login
        self.generation = 0
        self.report_start_ns = 0  # identifies the run in the report tables (kept across resumes)
        self.resumes = 0
        self._dir_fd = -1
        self._journal: Journal | None = None
        self._failed = ""  # the checkpoint could not be written: said once, the replay goes on
        # resume
        self.restored: dict | None = self._load() if resume else None
        self._low_water = 0
        self._done: dict[int, int] = {}
        self._resume_until = 0  # seqs from here on are never done
        self._read_before = 0  # seqs below were read (and counted) before the resume
        self._clock_set = True
        self._seq_of_current = -1
        self.fast_forwarded = 0
        self.sent_after_checkpoint = 0
        self.session_statements_sent = 0
        self.session_statements_failed = 0
        self.old_sessions_left = 0
        # the verdict and the counters (see the module's docstring)
        self.results: dict[int, tuple] = {}  # resume: seq -> (conn_id, fields) of done commands' results
        # not counted yet (from the journal: counted when the input reaches them)
        self.results_unknown = 0  # done commands whose result never came back (the replay was killed)
        self.verdict_restored = False  # False on a resume from a checkpoint without the verdict's state

    # ---- loading ----------------------------------------------------------------------------------
    def _load(self) -> dict:
        try:
            with open(self.path, "rb") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise JobError(f"resume: no checkpoint at {self.path} (a replay writes it into its report directory; "
                           f"give the same report-dir, input and shard as the replay to resume)") from None
        except (OSError, ValueError) as e:
            raise JobError(f"resume: cannot read the checkpoint {self.path}: {e}") from None
        if not isinstance(data, dict) or data.get("version") != CHECKPOINT_VERSION:
            raise JobError(f"resume: {self.path} is not a checkpoint of this fastproxy version")
        theirs = dict(data.get("identity") or {})
        if "reorder_window_ns" not in theirs and not any(self.identity.get("reorder_window_ns") or ()):
            # written before the key existed: its records were read as written, as they are now
            theirs["reorder_window_ns"] = self.identity.get("reorder_window_ns")
        differ = [k for k in sorted(set(theirs) | set(self.identity)) if theirs.get(k) != self.identity.get(k)]
        if differ:
            shown = "; ".join(f"{k}: checkpoint {json.dumps(theirs.get(k))}, now {json.dumps(self.identity.get(k))}"
                              for k in differ)
            raise JobError(f"resume: the checkpoint {self.path} belongs to another replay (a different capture or "
                           f"options): {shown}")
        if data.get("finished"):
            raise JobError(f"resume: the replay of {self.path} finished at {data.get('written')}: nothing to resume")
        return data

    # ---- run ----------------------------------------------------------------------------------------
    def attach(self, engine) -> None:
        self.engine = engine
        engine.checkpoint = self
        engine.report.on_add = self._journal_report

    async def begin(self, report_start_ns: int) -> None:
        """Before the replay starts: restore what the checkpoint says, open the files."""
        engine = self.engine
        self.report_start_ns = report_start_ns
        try:
            self._dir_fd = open_private_dir(self.directory, self.field, create=True)
        except (OSError, JobError) as e:
            why = f"cannot open {self.directory}: {e.strerror}" if isinstance(e, OSError) else str(e)
            if self.restored is not None:
                raise JobError(f"resume: {why}") from None
            self._give_up(why)  # a replay without checkpoints, as the summary files say
            return
        if self.restored is not None:
            threads = self._restore()
            if threads:  # the crashed replay's sessions: their statements must end (their transactions
                # roll back) before anything is sent again
                opt = engine.opt
                self.old_sessions_left = await asyncio.get_running_loop().run_in_executor(
                    None, _wait_sessions_gone, opt, sorted(threads))
        self._open_journal()
        self._write_snapshot()

    def _restore(self) -> set[int]:
        data = self.restored
        engine = self.engine
        self.report_start_ns = int(data["report_start_ns"])
        self.resumes = int(data.get("resumes", 0)) + 1
        self._low_water = int(data["low_water"])
        self._read_before = int(data["next_seq"])
        self._done = {int(k): int(v) for k, v in data["done"].items()}
        threads = set(data.get("threads") or [])
        st = engine.stats
        for key, value in (data.get("stats") or {}).items():
            if key not in ("per_second", "commands_total") and hasattr(st, key):
                setattr(st, key, value)
        report = engine.report
        for f in data.get("failures") or []:
            report.failures[(f["cmd_type"], f["digest"])] = Failure(**f, unflushed=f["count"])
        for e in data.get("other_errors") or []:
            report.other_errors[e["err_type"]] = OtherError(**e, unflushed=e["count"])
        self._restore_verdict(data)
        self.results_unknown = int(data.get("results_unknown", 0))
        self.results = {int(seq): (conn_id, fields) for seq, conn_id, fields in data.get("results") or []}
        # done with no result yet when the snapshot was written: the journal may hold it
        unanswered = {int(seq) for seq in data.get("awaiting") or []}
        # the journal: what happened after the snapshot (a journal of an older snapshot is ignored)
        on_add = report.on_add
        report.on_add = None
        last_second = -1
        try:
            for entry in read_journal(self.journal_path, int(data["generation"])):
                if entry[0] == "R":
                    self.results[entry[2]] = (entry[1], entry[3])
                    unanswered.discard(entry[2])
                    last_second = max(last_second, entry[3][9])
                elif entry[0] == "N":
                    unanswered.discard(entry[2])
                    st.replayed += 1
                else:
                    if entry[0] == "S" and not entry[3]:
                        unanswered.add(entry[2])
                    self._replay_journal_entry(entry, threads)
        finally:
            report.on_add = on_add
        unanswered.difference_update(self.results)
        # sent, so run (the rule of this module), and its result lost with the process that waited for it
        self.results_unknown += len(unanswered)
        st.replayed += len(unanswered)
        observer = self._observer()
        if observer is not None:  # the resumed run's seconds come after the stopped run's
            observer.second_offset = max(int(data.get("replay_seconds", 0)), last_second + 1)
        self._resume_until = max([self._low_water, *(v + 1 for v in self._done.values())])
        self._clock_set = False
        engine.capture_start_ns = 1 << 62  # done records are read at once, not paced (see on_read)
        return threads

    def _observer(self):
        """The verdict's observer (fastproxy/report/observe.py) when it can be saved: a single-target replay."""
        observer = self.engine.observer
        return observer if hasattr(observer, "state") else None

    def _restore_verdict(self, data: dict) -> None:
        observer = self._observer()
        state = data.get("verdict")
        if observer is None:
            return
        if state is None:  # a checkpoint of an older fastproxy: the verdict covers the resumed part
            return
        try:
            observer.restore(state)
        except (KeyError, TypeError, ValueError) as e:
            raise JobError(f"resume: the checkpoint {self.path} has a damaged verdict state: {e}") from None
        self.verdict_restored = True

    def _replay_journal_entry(self, entry: tuple, threads: set) -> None:
        if entry[0] == "S":
            _, conn_id, seq, in_txn, thread = entry
            self.sent_after_checkpoint += 1
            if thread:
                threads.add(thread)
            if not in_txn and seq > self._done.get(conn_id, -1):
                self._done[conn_id] = seq
            return
        try:
            args = json.loads(entry[1])
        except ValueError:
            return
        report = self.engine.report
        if entry[0] == "F":
            report.add_failure(*args)
        else:
            report.add_other(*args)

    def _open_journal(self) -> None:
        try:
            self._journal = Journal(self._dir_fd, self.name + ".journal")
        except OSError as e:
            self._give_up(f"cannot create {self.journal_path}: {e.strerror}")

    async def run_periodically(self) -> None:
        while True:
            await asyncio.sleep(_interval())
            self._write_snapshot()

    def finish(self, finished: bool) -> None:
        """The replay ended (finished, canceled, or failed): the last snapshot; the journal goes. Then the
        results held in transactions that never ended count in this run's verdict (not in the
        checkpoint: a resume sends those transactions again)."""
        try:
            self._finish_files(finished)
        finally:
            for track in self.tracks.values():
                held, track.held = track.held, None
                self._count_all(held or ())

    def _finish_files(self, finished: bool) -> None:
        if self._dir_fd < 0:
            return
        try:
            self._write_snapshot(finished=finished)
            if not self._failed:
                os.unlink(self.name + ".journal", dir_fd=self._dir_fd)
        except OSError:
            pass
        finally:
            if self._journal is not None:
                self._journal.close()
                self._journal = None
            os.close(self._dir_fd)
            self._dir_fd = -1

    # ---- the engine's hooks ---------------------------------------------------------------------------
    def on_read_resuming(self, rec: Record) -> bool:
        """CheckpointHooks.on_read while a resumed replay may meet records done before (and its
        reference): False if `rec` is done (the engine does nothing more)."""
        seq = self.seq
        self.seq = seq + 1
        kind = rec.kind
        if kind == KIND_COMMAND or kind == KIND_CONN_CLOSE:
            if seq < self._resume_until and (seq < self._low_water or seq <= self._done.get(rec.conn_id, -1)):
                self._seq_of_current = seq
                if kind == KIND_COMMAND and seq >= self._read_before:
                    self.engine.stats.read += 1  # read after the snapshot: not in its counters
                self._fast_forward(rec)
                return False
            if self.results:  # not done after all (killed between counting a transaction and ending it):
                self.results.pop(seq, None)  # its result comes again
            if not self._clock_set:
                self._start_clock(rec)
            if kind == KIND_COMMAND and seq < self._read_before:
                self.engine.stats.read -= 1  # counted when it was first read
            track = self.tracks.get(rec.conn_id)
            if track is None:
                track = self.tracks[rec.conn_id] = Track()
            track.pending.append(seq)
            return True
        if kind == KIND_CONN_OPEN or kind == KIND_CONN_STATE:
            if seq < self._read_before and rec.conn_id not in self.engine.conns:
                self.engine.stats.connections -= 1  # counted when it was first read
            if seq < self._resume_until and kind == KIND_CONN_OPEN:
                self.preludes.pop(rec.conn_id, None)
            return True
        if kind == KIND_LOCAL_INFILE and seq < self._resume_until:
            return not (seq < self._low_water or seq <= self._done.get(rec.conn_id, -1))
        return True

    def _count_held(self, track: Track) -> None:
        held, track.held = track.held, None
        journal = self._journal
        if journal is not None and journal.free() < len(held) * (RESULT.size + MESSAGE_MAX) + SENT.size:
            self._write_snapshot()  # room for all of them: no snapshot between the first and the send
        self._count_all(held)

    async def after_login(self, conn) -> None:
        """A resumed connection's first login: its session as the done records had made it."""
        statements = self.preludes.pop(conn.conn_id, None)
        if not statements:
            return
        from fastproxy.errors import BackendConnError

        for sql in statements:
            try:
                r = await conn.client.query(sql)
            except BackendConnError:
                return
            self.session_statements_sent += 1
            if r.outcome != OUTCOME_OK:
                self.session_statements_failed += 1
                self.engine.stats.other_errors += 1
                self.engine.report.add_other(
                    "session not rebuilt on resume", f"connection {conn.conn_id}: "
                    f"{sql[:200].decode('utf-8', 'replace')}: {r.err_code} ({r.sql_state}) {r.err_msg}", time.time_ns())

    # ---- resume: records already done ----------------------------------------------------------------
    def _start_clock(self, rec: Record) -> None:
        """The first record not done: the captured schedule resumes from it."""
        self._clock_set = True
        engine = self.engine
        engine.capture_start_ns = rec.start_ns
        engine._start_mono = time.monotonic_ns() + 50_000_000

    def _fast_forward(self, rec: Record) -> None:
        """A record done before the resume: not sent; its effects on the session and on causal order
        are rebuilt."""
        engine = self.engine
        self.fast_forwarded += 1
        conn = engine.conns.get(rec.conn_id)
        if conn is None:
            conn = engine._conn(rec.conn_id)
            if self._seq_of_current < self._read_before:
                engine.stats.connections -= 1  # counted before the resume
        saved = self.results.pop(self._seq_of_current, None) if self.results else None
        if saved is not None and rec.kind == KIND_COMMAND and rec.payload[:1] == bytes([COMMAND.COM_STMT_CLOSE]):
            self._count_saved(conn, rec, saved)  # before the close forgets its statement
            saved = None
        planner = engine.planner
        ticket = (planner.note(rec.conn_id, rec) if rec.kind == KIND_COMMAND
                  else planner.note_close(rec.conn_id, rec))
        if ticket is not None:
            released = planner.order.finish(ticket)
            if released:
                engine._released.extend(released)
        if saved is not None:
            self._count_saved(conn, rec, saved, ticket)
        if rec.kind == KIND_CONN_CLOSE:
            conn.closed = True
            self.preludes.pop(rec.conn_id, None)
            if not conn.queue:
                engine.conns.pop(conn.conn_id, None)
                engine.by_idx.pop(conn.idx, None)
                engine.thread_ids.closed(conn)
            return
        payload = rec.payload
        cmd = payload[0] if payload else -1
        prelude = self.preludes.setdefault(rec.conn_id, [])
        if cmd == COMMAND.COM_QUERY:
            m = _FIRST_WORD.match(payload, 1)
            word = m.group(1).lower() if m else b""
            again = (session_part(planner.classify, payload[1:])
                     if word.decode() in _SESSION_WORDS and rec.outcome == OUTCOME_OK else None)
            if again is not None:
                prelude.append(again)
                if word == b"use":
                    from fastproxy.proxy.session import used_database

                    conn.db = used_database(payload) or conn.db
        elif cmd == COMMAND.COM_INIT_DB:
            if rec.outcome == OUTCOME_OK:
                conn.db = payload[1:].decode("utf-8", "replace")
                prelude.append(b"USE `" + payload[1:].replace(b"`", b"``") + b"`")
        elif cmd == COMMAND.COM_STMT_PREPARE:
            if rec.outcome == OUTCOME_OK:
                conn.stmt_sql[rec.affected_rows] = payload[1:].decode("utf-8", "replace")
        elif cmd == COMMAND.COM_STMT_EXECUTE:
            sid = int.from_bytes(payload[1:5], "little")
            sql = conn.stmt_sql.get(sid)
            if sql is not None:  # the types it bound: sent again with the first execute after the re-prepare
                n = count_placeholders(sql.encode())
                at = execute_types_at(payload, {sid: n}) if n else 0
                if at:
                    conn.stmt_types[sid] = payload[at:at + 2 * n]
        elif cmd == COMMAND.COM_STMT_CLOSE:
            sid = int.from_bytes(payload[1:5], "little")
            conn.stmt_sql.pop(sid, None)
            conn.stmt_types.pop(sid, None)
        elif cmd == COMMAND.COM_RESET_CONNECTION:
            prelude.clear()
        elif cmd == COMMAND.COM_CHANGE_USER and rec.outcome == OUTCOME_OK:
            from fastproxy.protocol import parse_change_user

            prelude.clear()
            conn.user, conn.db = parse_change_user(payload, conn.capabilities)
        elif cmd == COMMAND.COM_QUIT:
            prelude.clear()

    def _count_saved(self, conn, rec: Record, saved: tuple, ticket=None) -> None:
        """A result of the stopped run that its last snapshot had not counted: counted now, with the
        connection's state as the done records before it made it (the same as when it arrived), and
        its causal `ticket` (whether production's order against a commit is known)."""
        if rec.kind != KIND_COMMAND:
            return
        fields = saved[1]
        now = time.monotonic_ns()
        conn.sent_ns = now - fields[8]
        conn.due_ns = conn.sent_ns - (fields[10] or 0)
        if rec.payload[0] == COMMAND.COM_STMT_PREPARE and rec.outcome == OUTCOME_OK:
            conn.stmt_sql[rec.affected_rows] = rec.payload[1:].decode("utf-8", "replace")
        observer = self._observer()
        if observer is not None:
            observer.at_second = fields[9]
        report = self.engine.report
        on_add = report.on_add
        report.on_add = None
        if ticket is not None and ticket.flags & (READ_EVENT | ORDER_UNKNOWN):
            conn = HeldConn(conn, rec)  # (not queued: the verdict reads the ticket from it, now or later)
            conn.ticket = ticket
        try:
            self.engine._compare_now(conn, rec, _result_from(fields), now)
        finally:
            report.on_add = on_add
            if observer is not None:
                observer.at_second = None

    # ---- writing ----------------------------------------------------------------------------------------
    def _journal_report(self, kind: str, args: tuple) -> None:
        journal = self._journal
        if journal is not None:
            tag, data = (b"F" if kind == "fail" else b"O"), json.dumps(args).encode()
            if not journal.text(tag, data):
                self._write_snapshot()
                if self._journal is not None:
                    self._journal.text(tag, data)

    def _give_up(self, why: str) -> None:
        if not self._failed:
            self._failed = why
            log.error("replay checkpoint: %s; the replay goes on without checkpoints", why)
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    def position(self) -> tuple[int, dict[int, int], set[int], list[int]]:
        """(low_water, done per connection, replay thread ids with a command out or a transaction open,
        seqs of the done commands whose result has not come yet)."""
        low = self.seq
        marks = []
        threads = set()
        awaiting = []
        for conn_id, t in list(self.tracks.items()):
            done = t.done
            pending = t.pending
            first = None
            # the last len(t.unsent) of the commands sent (in flight, then pipelined) are not out yet
            out = t.ahead - len(t.unsent)
            if t.inflight >= 0 and not t.inflight_txn and out >= 0:
                done = t.inflight
                if not t.answered:
                    awaiting.append(t.inflight)
                # pipelined behind it (--pipeline): sent, so done, and not answered yet
                for k in range(t.consumed + 1, t.consumed + 1 + out):
                    done = pending[k]
                    awaiting.append(done)
                if len(pending) > t.consumed + 1 + out:
                    first = pending[t.consumed + 1 + out]
            elif pending:
                first = pending[0]
            if t.inflight >= 0 or t.consumed:
                threads.add(t.thread)
            if first is not None and first < low:
                low = first
            marks.append((conn_id, done, t))
        done_map = {}
        for conn_id, done, t in marks:
            if done >= low:
                done_map[conn_id] = done
            elif not t.pending and t.inflight < 0 and conn_id not in self.engine.conns:
                del self.tracks[conn_id]  # finished and behind the low-water mark: nothing to remember
        if self.restored is not None:
            # a resumed run: what the stopped run had done is done still (read again, its records are
            # never tracked; not read yet, not even seen): a snapshot from before they are passed keeps them
            low = max(low, self._low_water)
            for conn_id, done in self._done.items():
                if done >= low and done > done_map.get(conn_id, -1):
                    done_map[conn_id] = done
        threads.discard(0)
        return low, done_map, threads, awaiting

    def _write_snapshot(self, finished: bool = False) -> None:
        if self._dir_fd < 0 or self._failed:
            return
        engine = self.engine
        low, done_map, threads, awaiting = self.position()
        stats = dataclasses.asdict(engine.stats)
        stats.pop("per_second", None)
        self.generation += 1
        data = {
            "version": CHECKPOINT_VERSION,
            "identity": self.identity,
            "generation": self.generation,
            "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "finished": finished,
            "canceled": engine.canceled,
            "resumes": self.resumes,
            "report_start_ns": self.report_start_ns,
            "next_seq": max(self.seq, self._read_before),  # (the restored counters count those read before)
            "low_water": low,
            "done": {str(k): v for k, v in done_map.items()},
            "threads": sorted(threads),
            "stats": stats,
            "failures": [{k: v for k, v in f.__dict__.items() if k != "unflushed"}
                         for f in engine.report.failures.values()],
            "other_errors": [{k: v for k, v in e.__dict__.items() if k != "unflushed"}
                             for e in engine.report.other_errors.values()],
            "awaiting": awaiting,
            "results": [[seq, conn_id, fields] for seq, (conn_id, fields) in self.results.items()],
            "results_unknown": self.results_unknown,
        }
        observer = self._observer()
        if observer is not None:
            data["verdict"] = observer.state()
            data["replay_seconds"] = observer.replay_second(time.monotonic_ns()) + 1
        tmp = self.name + ".tmp"
        try:
            try:
                os.unlink(tmp, dir_fd=self._dir_fd)
            except FileNotFoundError:
                pass
            fd = create_private_file(self._dir_fd, tmp)
            try:
                write_all(fd, json.dumps(data).encode())
            finally:
                os.close(fd)
            os.rename(tmp, self.name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
            if self._journal is not None:  # what the journal held is in the snapshot now
                self._journal.restart(self.generation)
        except OSError as e:
            self._give_up(f"cannot write {self.path}: {e.strerror}")

    def summary(self) -> dict:
        out = {"checkpoint": self.path}
        if self._failed:
            out["checkpoint_error"] = self._failed
        if self.restored is not None:
            out.update({
                "resumes": self.resumes,
                "resumed_from": self.restored.get("written"),
                "records_done_before": self.fast_forwarded,
                "sent_after_last_checkpoint": self.sent_after_checkpoint,
                "session_statements_sent_again": self.session_statements_sent,
                "session_statements_failed": self.session_statements_failed,
                "old_sessions_still_on_server": self.old_sessions_left,
                "results_unknown": self.results_unknown,
                "verdict_carried_on": self.verdict_restored,
            })
            if not self.verdict_restored and self._observer() is not None:
                out["verdict_note"] = ("the checkpoint holds no verdict state (written by an older fastproxy): the "
                                       "verdict, the latency and mismatch tables and the report cover the resumed "
                                       "part only")
        return out


def _wait_sessions_gone(opt, threads: list[int]) -> int:
    """Wait until the target no longer runs the sessions of the replay that stopped (a statement it
    had sent may still run; its open transactions roll back as the server notices). Returns how many
    were still there at the deadline (0 when the user may not see them)."""
    from fastproxy.replay.side_connection import connect_target

    ids = ", ".join(str(int(t)) for t in threads)
    deadline = time.monotonic() + OLD_SESSIONS_WAIT_S
    left = 0
    try:
        conn = connect_target(opt, connect_timeout=10)
    except Exception as e:  # noqa: BLE001 - the replay itself will say what is wrong with the target
        log.warning("resume: cannot check for the stopped replay's sessions: %s", e)
        return 0
    try:
        cur = conn.cursor()
        while True:
            cur.execute(f"SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID IN ({ids})")
            left = int(cur.fetchone()[0])
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        conn.close()
    if left:
        log.warning("resume: %d session(s) of the stopped replay still on the target after %.0fs", left,
                    OLD_SESSIONS_WAIT_S)
    return left
