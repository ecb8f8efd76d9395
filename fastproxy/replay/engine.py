"""The replay engine: streams a capture, keeps one connection per captured connection, and sends
each command at `replay_start + captured_offset / speed`, in per-connection order, each after the
previous response completed.

Which connection fires next is decided by the C heap (`_scheduler.pyx`); a single event-loop timer
is armed for the earliest due time — no Python timer or task per command. Deadlines come from a
fixed start, not from the previous command, so being late once does not shift everything after.
"""
from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
from dataclasses import dataclass, field
from itertools import islice

from fastproxy._digest import digest
from fastproxy._packet import expects_response, stmt_id_of
from fastproxy.inputs import open_inputs
from fastproxy.inputs.common import status_flags_recorded
from fastproxy.capture.record import (INFILE_SIZE, KIND_COMMAND, KIND_CONN_CLOSE, KIND_CONN_OPEN,
                                      KIND_CONN_STATE, KIND_LOCAL_INFILE, OUTCOME_BACKEND_LOST, OUTCOME_ERR,
                                      OUTCOME_OK, Record)
from fastproxy.constants import CLIENT, COMMAND, ER, command_name
from fastproxy.errors import BackendConnError, FastproxyError, JobError, ProtocolError
from fastproxy.replay._conn import Conn  # one captured connection and its replay connection (a C struct)
from fastproxy.replay._engine import CONSUMED, KILL_START, PACE_SLACK_NS, PIN_TAG, EngineCore, StatsCore
from fastproxy.replay._scheduler import Scheduler, Ticket
from fastproxy.replay.causal import IN_TXN, READ_EVENT, TXN_BEGIN, TXN_CHAINED, TXN_END, Planner
from fastproxy.replay.client import LoginError, ReplayClient
from fastproxy.replay.dryrun import DryClient, DryRunCounters
from fastproxy.replay.lag import LagStats
from fastproxy.replay.lockwaits import LockWaits, other_lock_wait
from fastproxy.replay.report import Report
from fastproxy.jobs_base import utc_iso
from fastproxy.replay.pinning import PIN_FLAGS
from fastproxy.replay.schema import TableScopes, load_scopes
from fastproxy.replay.sessions import CLOSED, ThreadIds, rebuild_statements
from fastproxy.replay.statements import is_read_only
from fastproxy.replay.users import PLACEHOLDER_BYTES, Credentials
from fastproxy.sqltext import parse_kill, worth_scanning
from fastproxy.traffic_filter import cmd_type_name  # TiProxy-style: COM_STMT_EXECUTE -> StmtExecute
from fastproxy.replay.transactions import MAX_ATTEMPTS, RETRYABLE, ROLLBACK, ROLLBACK_AND_CHAIN, Retry, rollback_before

log = logging.getLogger("fastproxy.replay")

STMT_COMMANDS = (COMMAND.COM_STMT_EXECUTE, COMMAND.COM_STMT_SEND_LONG_DATA, COMMAND.COM_STMT_CLOSE,
                 COMMAND.COM_STMT_RESET, COMMAND.COM_STMT_FETCH)
# commands that only read or only touch the session: kept in read-only mode
READONLY_SAFE = {COMMAND.COM_PING, COMMAND.COM_INIT_DB, COMMAND.COM_STATISTICS, COMMAND.COM_FIELD_LIST,
                 COMMAND.COM_STMT_CLOSE, COMMAND.COM_STMT_RESET, COMMAND.COM_STMT_FETCH, COMMAND.COM_SET_OPTION,
                 COMMAND.COM_RESET_CONNECTION, COMMAND.COM_QUIT, COMMAND.COM_STMT_SEND_LONG_DATA}
# replication and shutdown: never sent to a test server
NOT_REPLAYABLE = {COMMAND.COM_BINLOG_DUMP, COMMAND.COM_BINLOG_DUMP_GTID, COMMAND.COM_REGISTER_SLAVE,
                  COMMAND.COM_SHUTDOWN}
# a login refused for its credentials (ER_ACCESS_DENIED_ERROR, ER_ACCESS_DENIED_NO_PASSWORD_ERROR):
# trying that user again would fail the same way, and count against the target's max_connect_errors
ACCESS_DENIED = (ER.ACCESS_DENIED_ERROR, 1698)


READ_BATCH = 2048  # records decoded per trip to the reader thread
# commands whose payload replay adapts to the replay session (KILL targets, redacted secrets) or
# replays as an exchange of its own (COM_CHANGE_USER)
_SESSION_COMMANDS = frozenset((COMMAND.COM_QUERY, COMMAND.COM_PROCESS_KILL, COMMAND.COM_CHANGE_USER))
_ASYNC = object()  # _session_command: the command goes on asynchronously
NOT_REBUILT_SAMPLE = 20  # sessions not rebuilt in full, listed in the summary (all are counted)
KILL_READ_MARGIN_NS = 200_000_000  # a KILL waits until records completing this long after it are read
KILL_SETTLE_NS = 200_000_000  # ... and its target's query has run (at most) this long on replay
KILL_WAIT_S = 10.0  # at most (then it goes anyway)
SERVER_CLOSE_WAIT_S = 1.0  # how long a server-side close of production is left to the replay server
# PACE_SLACK_NS (_engine.pyx): a command due this soon goes now, with whatever else is due as soon: the
# loop's timers have a resolution of 1 ms anyway, and at speed 1 a loop turn (a timer, a wake-up) per
# command cost the replayer more CPU than the command itself, so it could not keep a busy capture's pace
# A write that changed no row on replay (rows in production) waits at most this long for the writes that
# overlapped it in production before it is sent again (_send_again_later); under the valve's 2 s
OVERLAP_WAIT_S = 1.5
# Each command leaves a few short-lived objects (record, ticket, result) and almost never a cycle: the
# default youngest-generation threshold (700 allocations) ran the collector every few dozen commands.
GC_GEN0_THRESHOLD = 50_000

# tags of the replayer's own statements (results not compared): a pin, a transaction retry step,
# a ROLLBACK mirroring production's
_PIN_TAG = PIN_TAG  # (the C chain knows it by identity)
_TXN_TAG = ("txn",)
_MIRROR_TAG = ("rollback",)
_INTERNAL_TAGS = frozenset({"pin", "txn", "rollback"})


@dataclass
class ReplayOptions:
    host: str
    port: int
    username: str
    password: str = ""
    speed: float = 1.0  # 0 = as fast as possible
    readonly: bool = False
    encryption_key: bytes | None = None
    lookahead_s: float = 2.0  # read this far (in replay time) ahead of the clock
    max_queued: int = 200_000  # and never hold more than this many commands in memory
    connect_timeout: float = 10.0
    # faithful replay (fastproxy/replay/causal.py, pinning.py, transactions.py)
    order: str = "causal"  # or "connection": per-connection order only
    pin: bool = True  # production's time and auto-increment ids
    whole_transactions: bool = True  # retry a transaction a replay-only deadlock aborted; never half of one
    causal_timeout_s: float = 2.0  # a dependency in flight longer than this (and 4x its captured time) is let go
    input_format: str = "auto"  # native | slow-log | general-log | tiproxy (fastproxy/inputs)
    filters: object = None  # fastproxy.replay.filters.Filters: what of the input is replayed
    start_at: float | None = None  # wall-clock Unix time the replay starts at (shards start together)
    tls: bool = False  # replay connections use TLS (required when tls_ca / tls_skip_verify are given)
    tls_ca: str = ""  # CA bundle the target's certificate must chain to (default: the system's)
    tls_skip_verify: bool = False  # encrypt without verifying the target's certificate
    users: dict = field(default_factory=dict)  # --users-file: captured user -> password
    replay_unknown: bool = False  # also send commands whose backend died before answering (BACKEND_LOST)
    dry_run: bool = False  # decode, filter, plan and schedule, but never connect or send (fastproxy/replay/dryrun.py)
    # at speed 0, up to this many commands in flight per connection: plain reads outside transactions are
    # sent behind the one in flight without waiting for its answer (EngineCore._fill_pipeline_c)
    pipeline: int = 1

    def ssl_context(self):
        if not (self.tls or self.tls_ca or self.tls_skip_verify):
            return None
        from fastproxy.tls import client_context

        return client_context(ca=self.tls_ca, skip_verify=self.tls_skip_verify, key_prefix="tls")


@dataclass
class Stats(StatsCore):
    """The replay's counters. Those the per-command chain in C bumps are StatsCore's C fields (int64):
    listed here too, so that the dataclass (asdict, fields, the summary) sees them all."""
    commands_total: int = 0  # in meta
    read: int = 0
    replayed: int = 0
    filtered: int = 0
    failed: int = 0
    same_errors: int = 0  # failed on replay exactly as in production: not failures
    fixed: int = 0  # failed in production, succeeded on replay
    skipped: int = 0  # could not be sent (connection could not be opened, unknown statement)
    not_connected: int = 0  # of those: their connection could not connect or log in (the replay is incomplete)
    other_errors: int = 0
    connections: int = 0
    reconnects: int = 0
    peak_queued: int = 0  # most commands held in memory at once (bounded by max_queued + one read batch)
    backend_lost: int = 0  # not sent: production's backend died before answering (--replay-unknown sends them)
    kills_mapped: int = 0  # KILL / COM_PROCESS_KILL sent to the replay connection that plays the target
    kills_not_mapped: int = 0  # reported, not sent
    change_users: int = 0  # COM_CHANGE_USER replayed as a change of user
    server_closes: int = 0  # connections the server closed in production and on replay
    sessions_rebuilt: int = 0  # sessions open before the capture, rebuilt in full
    failed_not_rebuilt: int = 0  # failures on sessions not rebuilt in full: reported apart
    infile_sent: int = 0  # LOCAL INFILE files sent as captured
    infile_empty: int = 0  # LOCAL INFILE requests answered with an empty file (content not captured)
    captured_ns: int = 0  # sum of captured durations of replayed commands
    replayed_ns: int = 0  # sum of replay durations
    per_second: dict = field(default_factory=dict)  # replay second -> commands sent
    # faithful replay
    causal_waits: int = 0  # commands that waited for another connection's command
    causal_wait_ns: int = 0  # how long they waited in all
    causal_released: int = 0  # dependencies let go by the safety valve (in flight far too long)
    pinned_time: int = 0
    pinned_insert_id: int = 0
    txn_retries: int = 0  # transactions sent again after a replay-only deadlock / lock wait timeout
    txn_retried_ok: int = 0
    txn_aborted: int = 0  # still failing after the retries, or the connection dropped inside one
    txn_skipped: int = 0  # commands of aborted transactions not sent
    prod_lock_errors: int = 0  # statements production lost to a deadlock / lock wait timeout: not sent
    cycles_broken: int = 0  # commands let go early: held back by causal order, they blocked what it waited for
    txn_undone: int = 0  # transactions rolled back while held back (they blocked what it waited for), redone later
    sent_again: int = 0  # writes that changed nothing on replay, sent again after writes that overlapped them
    sent_again_timed_out: int = 0  # ... of which sent before those writes had all run here (OVERLAP_WAIT_S)
    pipelined: int = 0  # commands sent before the answer to the one before them (--pipeline)
    pipelined_in_txn: int = 0  # ... of them inside a transaction


# the dataclass left each field's default as a class attribute: on StatsCore's fields it would hide
# the C field (Python would read the class's 0); __init__ keeps the defaults without it
for _name in StatsCore.__dict__:
    if _name in Stats.__dict__ and _name in Stats.__dataclass_fields__:
        delattr(Stats, _name)
del _name


def _queued(conn: Conn, rec: Record) -> bool:
    """Whether `rec` is still in `conn`'s queue (not yet completed on replay); the queue is in start order."""
    for r in conn.queue:
        if r is rec:
            return True
        if r.start_ns > rec.start_ns:
            return False
    return False


class Replayer(EngineCore):
    """The per-command chain (_on_result, _compare_now, _consume, _next, _schedule, _gate, _remap) is
    EngineCore's, in C (_engine.pyx); the policy it falls back on for anything but the common case is here."""

    def __init__(self, input_dir: str, options: ReplayOptions) -> None:
        self.input_dir = input_dir
        self.opt = options
        self.reader = open_inputs(input_dir, options.input_format, options.encryption_key)
        if options.filters is not None and options.filters.active:
            from fastproxy.replay.filters import FilteredSource

            self.reader = FilteredSource(self.reader, options.filters)
        self.meta = self.reader.meta
        self.ssl_context = options.ssl_context()
        self.stats = Stats(commands_total=int(self.meta.get("commands", 0) or 0))
        self.lag = LagStats()
        self.report = Report()
        self.heap = Scheduler()
        self.conns: dict[int, Conn] = {}
        self.by_idx: dict[int, Conn] = {}
        self._next_idx = 0
        self.capture_start_ns = int(self.meta.get("start_ns", 0) or 0)
        self.replay_start_ns = 0  # wall clock, for reports
        self._start_mono = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0
        self._reading_done = False
        self._read_whole = False  # the input was read to its end (not canceled, not broken)
        self._stop_reading = False
        self._done = asyncio.Event()
        self.internal_error: Exception | None = None  # a defect of the replayer that stopped the replay
        self._loop: asyncio.AbstractEventLoop | None = None
        self.queued = 0
        self.finished_ns = 0
        self.on_flush = None  # callback(Report) every second (the report writer)
        self.observer = None  # callback(conn, rec, result, now) per replayed command: the verdict (fastproxy/report)
        self.canceled = False
        self._connecting: set[asyncio.Task] = set()
        self.first_command_ns = 0  # captured span, for the captured QPS
        self.last_command_ns = 0
        self.credentials = Credentials(options.users, options.username, options.password)
        self.report.scrub = self.credentials.scrub  # a message may quote a password put back
        self.thread_ids = ThreadIds()
        self._read_ns = 0
        self.not_rebuilt: list[dict] = []  # sessions not rebuilt in full (a sample) for the summary
        self.sessions_not_rebuilt = 0
        # faithful replay: the planner reads the schema of the target when the replay starts
        self.lockwaits: LockWaits | None = None  # the reader of the target's row-lock waits (causal order)
        # pipelined commands never pass the head's checks: not with --read-only (its filter judges a command
        # as it comes to the head: a SELECT ... INTO OUTFILE behind a plain read would be sent)
        self.pipeline = options.pipeline if options.speed <= 0 and not options.dry_run and not options.readonly else 1
        self.planner = Planner(causal=False, pin=options.pin, status_flags=self._status_flags_recorded(),
                               affected_rows=self._affected_rows_recorded(), mark_reads=self.pipeline > 1)
        self._released: list[int] = []  # parked connections whose requirement a completion met
        self._sending_again: dict[int, list] = {}  # connections waiting in _send_again: [what they wait for]
        self._draining = False
        self._cpu_start = 0.0
        self.cpu_seconds = 0.0  # CPU time of this process (all threads) while the replay ran
        self.dry_run: DryRunCounters | None = DryRunCounters() if options.dry_run else None
        self.checkpoint = None  # fastproxy.replay.checkpoint.Checkpoint: position kept for --resume
        self.refused: dict[str, str] = {}  # user -> err_type: its login was refused, it is not tried again
        self.read_error = ""  # why the input could not be read to its end

    # ---- timing ---------------------------------------------------------------------------------
    def due_ns(self, captured_ns: int) -> int:
        if self.opt.speed <= 0:
            return 0
        return self._start_mono + int((captured_ns - self.capture_start_ns) / self.opt.speed)

    # ---- main ----------------------------------------------------------------------------------
    async def run(self) -> Stats:
        self._loop = asyncio.get_running_loop()
        await self._prepare_order()
        head_start = 50_000_000  # a short head start to open connections
        if self.opt.start_at is not None:
            # several replayers (shards) begin at one agreed wall-clock time: their schedules line up
            delay = self.opt.start_at - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            # a shard that starts late keeps the agreed schedule: late by that much, in its lag
            head_start = min(0, int(delay * 1e9))
        self.replay_start_ns = time.time_ns()
        self._cpu_start = time.process_time()
        self._start_mono = time.monotonic_ns() + head_start
        reader_task = self._loop.create_task(self._read())
        flusher = self._loop.create_task(self._flush_periodically())
        watcher = self._loop.create_task(self._watch_dependencies())
        thresholds = gc.get_threshold()
        gc.set_threshold(max(thresholds[0], GC_GEN0_THRESHOLD), *thresholds[1:])
        try:
            await self._done.wait()
        finally:
            gc.set_threshold(*thresholds)
            self._stop_reading = True
            reader_task.cancel()
            flusher.cancel()
            watcher.cancel()
            for t in (reader_task, flusher, watcher):
                try:
                    await t
                except (asyncio.CancelledError, Exception) as e:  # noqa: BLE001
                    if not isinstance(e, asyncio.CancelledError):
                        log.error("replay reader failed: %s", e)
                        self.read_error = self.read_error or str(e)
                        self.report.add_other("read error", str(e), time.time_ns())
            if self._timer:
                self._timer.cancel()
            for task in list(self._connecting):  # logins still in progress when the replay ended
                task.cancel()
            for conn in self.conns.values():
                if conn.lost_idle:  # lost while idle, and the capture never said its server closed it
                    self._judge_idle_loss(conn, Record(KIND_COMMAND, conn.conn_id, 0, 0, 0, 0, 0, 0, b""))
                if conn.client:
                    conn.client.close()
            self.finished_ns = time.time_ns()
            self.cpu_seconds = time.process_time() - self._cpu_start
            if self.on_flush:
                self.on_flush(self.report)
        if self.internal_error is not None:
            e = self.internal_error
            raise RuntimeError(f"the replay stopped on an internal error: {type(e).__name__}: {e}") from e
        return self.stats

    async def check_target(self) -> None:
        """Log in to the target once as the replay's own user before anything else: when that is refused
        (target down, wrong password, TLS refused) nothing could be replayed, so JobError now rather than
        every command skipped one failed login at a time."""
        opt = self.opt
        if opt.dry_run:
            return
        where = f"target {opt.host}:{opt.port}"
        try:
            client = await ReplayClient.connect(opt.host, opt.port, opt.username, opt.password, None,
                                                on_result=lambda *_: None, on_lost=lambda *_: None,
                                                timeout=opt.connect_timeout, ssl_context=self.ssl_context)
        except LoginError as e:
            raise JobError(f"{where}: the replay user {opt.username!r} cannot log in: {e.code} {e.message}; "
                           f"nothing was replayed") from None
        except asyncio.TimeoutError:
            raise JobError(f"{where}: no answer within {opt.connect_timeout:g}s; nothing was replayed") from None
        except (OSError, FastproxyError) as e:
            raise JobError(f"{where}: cannot connect: {e}; nothing was replayed") from None
        client.close()

    def cancel(self, graceful: bool = False) -> None:
        """Stop reading; graceful lets already queued commands finish, otherwise stop now."""
        self.canceled = True
        self._stop_reading = True
        if not graceful:
            for conn in self.conns.values():
                self.queued -= len(conn.queue)
                conn.queue.clear()
                conn.tickets.clear()
                conn.parked = False
            self.heap.clear()
            self._done.set()
        else:
            self._check_done()

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self.on_flush:
                self.on_flush(self.report)

    async def _read(self) -> None:
        it = iter(self.reader)
        loop = self._loop

        broken: list[Exception] = []

        def batch() -> list[Record]:
            if broken:
                raise broken.pop()
            out: list[Record] = []
            try:
                out.extend(islice(it, READ_BATCH))  # in C: no Python step a record
            except Exception as e:  # noqa: BLE001 - the input broke: what was read before it is replayed first
                if not out:
                    raise
                broken.append(e)
            return out

        try:
            while not self._stop_reading:
                records = await loop.run_in_executor(None, batch)
                if not records:
                    self._read_whole = True
                    break
                if not self.capture_start_ns:
                    self.capture_start_ns = records[0].start_ns
                self._dispatch_all(records)  # EngineCore: each through _dispatch, the common ones in C
                # bounded look-ahead: memory stays flat however long the capture is
                last_due = self.due_ns(records[-1].start_ns)
                while not self._stop_reading and (
                        self.queued > self.opt.max_queued
                        or (self.opt.speed > 0 and last_due - time.monotonic_ns() > self.opt.lookahead_s * 1e9)):
                    await asyncio.sleep(0.02)
        finally:
            self._reading_done = True
            self._check_done()

    @property
    def read_stopped_early(self) -> bool:
        """The reader stopped before the input's end (canceled, the input broke, an internal error):
        commits it never read may have overlapped reads (the verdict's order unknown, unread)."""
        return self._reading_done and not self._read_whole

    def _conn(self, conn_id: int) -> Conn:
        conn = self.conns.get(conn_id)
        if conn is None:
            conn = Conn(self._next_idx, conn_id)
            self._next_idx += 1
            self.conns[conn_id] = conn
            self.by_idx[conn.idx] = conn
            self.stats.connections += 1
        return conn

    def _dispatch(self, rec: Record) -> None:
        if rec.kind == KIND_COMMAND and not rec.payload:
            self._skip_empty(rec)
            return
        if self.checkpoint is not None and not self.checkpoint.on_read(rec):
            return  # done before a resume
        self._dispatch_read(rec)

    def _skip_empty(self, rec: Record) -> None:
        """A command of no bytes (a client's zero-length packet, a damaged input) has nothing to send:
        said, not sent, and the replay goes on. It takes no place in the checkpoint's count of records,
        in a resumed run as in the first."""
        cp = self.checkpoint
        if cp is not None and cp.seq < cp._read_before:
            return  # counted and reported by the run this one resumes
        self.stats.read += 1
        self.stats.skipped += 1
        self.report.add_other("empty command", f"connection {rec.conn_id}: a command of no bytes in the input "
                              f"(captured at {rec.start_ns} ns), not sent", time.time_ns())

    def _dispatch_read(self, rec: Record) -> None:
        """A record read (and not done before a resume): a connection's state, or a command or close
        queued on its connection (EngineCore._dispatch_all does the common case in C)."""
        kind = rec.kind
        if rec.end_ns > self._read_ns:
            self._read_ns = rec.end_ns  # how far the input has been read (KILLs wait for their target)
        if kind == KIND_CONN_OPEN or kind == KIND_CONN_STATE:
            conn = self._conn(rec.conn_id)
            info = json.loads(rec.payload or b"{}")
            conn.user = info.get("user", "")
            conn.db = info.get("db")
            conn.capabilities = int(info.get("capabilities", 0) or 0)
            conn.charset = int(info.get("charset", 0) or 0)
            for sid, sql in info.get("prepared", []):
                conn.stmt_sql[int(sid)] = sql  # re-prepared on first use
            for sid, types in info.get("types", {}).items():
                conn.stmt_types[int(sid)] = bytes.fromhex(types)  # bound again after that re-prepare
            self._note_session(conn, kind, info)
            if kind == KIND_CONN_STATE:
                self.planner.on_state(rec.conn_id, info)
            return
        conn = self._conn(rec.conn_id)
        if conn.lost_idle:
            self._judge_idle_loss(conn, rec)
        if kind == KIND_LOCAL_INFILE:
            self._note_infile(conn, rec)
            return
        if kind == KIND_COMMAND:
            self.stats.read += 1
            if not self.first_command_ns:
                self.first_command_ns = rec.start_ns
            self.last_command_ns = rec.start_ns
        elif kind != KIND_CONN_CLOSE:
            return
        conn.tickets.append(self.planner.note(rec.conn_id, rec) if kind == KIND_COMMAND
                            else self.planner.note_close(rec.conn_id, rec))
        conn.queue.append(rec)
        self.queued += 1
        if self.queued > self.stats.peak_queued:
            self.stats.peak_queued = self.queued
        if len(conn.queue) == 1 and not conn.busy:
            self._schedule(conn)

    # ---- scheduling ----------------------------------------------------------------------------
    def _arm(self, due: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_due = due
        delay = (due - time.monotonic_ns()) / 1e9
        self._timer = self._loop.call_later(delay if delay > 0 else 0, self._tick)

    def _tick(self) -> None:
        self._timer = None
        now = time.monotonic_ns()
        for idx in self.heap.pop_due(now + PACE_SLACK_NS):
            conn = self.by_idx.get(idx)
            if conn is not None and conn.queue and not conn.busy:
                self._schedule(conn)
        if self.heap and self._timer is None:
            self._arm(self.heap.peek_due())

    def _forget_if_finished(self, conn: Conn) -> None:
        if not conn.queue:
            if conn.closed:  # forget finished connections: memory stays flat over long captures
                self.conns.pop(conn.conn_id, None)
                self.by_idx.pop(conn.idx, None)
                self.thread_ids.closed(conn)
            self._check_done()

    def _check_done(self) -> None:
        # every record waits in its connection's queue until finished, so nothing queued = nothing busy
        if (self._reading_done or (self._stop_reading and self.canceled)) and self.queued <= 0:
            self._done.set()

    # ---- firing --------------------------------------------------------------------------------
    def _fire(self, conn: Conn, now: int) -> bool:
        """Start the head command; True if it was consumed at once (no round trip)."""
        rec = conn.queue[0]
        if rec.kind == KIND_CONN_CLOSE:
            if self._server_close(conn, rec):
                return False
            if conn.client:
                conn.client.close()
                conn.client = None
            conn.closed = True
            return self._consume(conn)
        payload = rec.payload
        cmd = payload[0]
        if cmd == COMMAND.COM_QUIT:
            if conn.client:
                conn.client.close()
                conn.client = None
                self.stats.replayed += 1
            else:
                self.stats.skipped += 1  # never connected (login failed): nothing to quit
            return self._consume(conn)
        if rec.outcome == OUTCOME_BACKEND_LOST and not self.opt.replay_unknown:
            self.stats.backend_lost += 1  # production may never have run it
            return self._consume(conn)
        if cmd in NOT_REPLAYABLE or (self.opt.readonly and not self._read_only_ok(conn, cmd, payload)):
            self.stats.filtered += 1
            if cmd == COMMAND.COM_STMT_PREPARE:
                conn.filtered_stmts.add(rec.affected_rows)
            elif cmd == COMMAND.COM_STMT_CLOSE:
                conn.filtered_stmts.discard(int.from_bytes(payload[1:5], "little"))
            return self._consume(conn)
        if conn.client is None or conn.client.closed:
            if self.refused:
                user = self.credentials.login(conn.user)[0]
                if user in self.refused:  # refused before: not tried again
                    self._count_refused(user, "")
                    return self._consume(conn)
            conn.busy = True
            self._start(self._connect_then_fire(conn))
            return False
        self._started(conn, rec, now)
        if cmd in _SESSION_COMMANDS:
            payload = self._session_command(conn, rec, payload)
            if payload is None:
                return self._consume(conn)
            if payload is _ASYNC:
                return False
        if cmd in STMT_COMMANDS:
            captured_id = stmt_id_of(payload)
            replay_id = conn.stmt_map.get(captured_id)
            if replay_id is None and cmd == COMMAND.COM_STMT_CLOSE:
                self.stats.replayed += 1  # never prepared on this replay connection: nothing to close
                return self._consume(conn)
            if replay_id is None:
                sql = conn.stmt_sql.get(captured_id)
                if sql is None or captured_id in conn.filtered_stmts:
                    self.stats.skipped += 1
                    self.report.add_other("unknown statement", f"statement id {captured_id} of connection "
                                          f"{conn.conn_id} was never prepared in the capture", time.time_ns())
                    return self._consume(conn)
                conn.pending_payload = payload  # re-prepare, then send the real command
                conn.client.send(b"\x16" + sql.encode(), ("reprepare", captured_id))
                return False
            payload = self._remap(conn, captured_id, replay_id, payload)
            if payload is None:
                return self._consume(conn)
            if cmd == COMMAND.COM_STMT_CLOSE:
                conn.stmt_map.pop(captured_id, None)
        elif cmd == COMMAND.COM_RESET_CONNECTION:
            conn.stmt_map.clear()
            conn.types_bound.clear()
            conn.pin_dirty = False  # the server resets timestamp / insert_id with the session
        if not expects_response(cmd):  # COM_STMT_CLOSE / SEND_LONG_DATA: nothing to wait for
            conn.client.send_only(payload)
            self.stats.replayed += 1
            return self._consume(conn)
        # LOCAL INFILE files of this command (capture.local-infile), else none: empty files
        conn.client.infiles = conn.infiles.pop(rec.start_ns, None) if conn.infiles else None
        self._send(conn, payload)
        return False

    def _read_only_ok(self, conn: Conn, cmd: int, payload: bytes) -> bool:
        if cmd == COMMAND.COM_QUERY:
            return is_read_only(payload[1:])
        if cmd == COMMAND.COM_STMT_PREPARE:
            return is_read_only(payload[1:])
        if cmd in STMT_COMMANDS:  # execute/close/reset/... of a filtered (write) statement is filtered too
            return int.from_bytes(payload[1:5], "little") not in conn.filtered_stmts
        return cmd in READONLY_SAFE

    async def _connect_then_fire(self, conn: Conn) -> None:
        if conn.ever_connected:
            self.stats.reconnects += 1
        try:
            user, password = self.credentials.login(conn.user)
            if self.dry_run is not None:  # nothing is sent: production's answers stand in for the server's
                conn.client = await DryClient.connect(self.opt.host, self.opt.port, user, password, conn.db,
                                                      on_result=self._on_result, on_lost=self._on_lost, owner=conn,
                                                      counters=self.dry_run)
            else:
                conn.client = await ReplayClient.connect(
                    self.opt.host, self.opt.port, user, password, conn.db,
                    on_result=self._on_result, on_lost=self._on_lost, owner=conn, capabilities=conn.capabilities,
                    charset=conn.charset,
                    timeout=self.opt.connect_timeout, ssl_context=self.ssl_context)
            conn.client.on_infile = self._on_infile
            conn.ever_connected = True
            conn.stmt_map.clear()  # a new server session: statements are re-prepared on first use
            conn.types_bound.clear()
            conn.pin_dirty = False
            if conn.state is not None:
                await self._rebuild_session(conn)
            if self.checkpoint is not None:
                await self.checkpoint.after_login(conn)
        except (OSError, asyncio.TimeoutError, LoginError, Exception) as e:  # noqa: BLE001
            if isinstance(e, LoginError) and e.code in ACCESS_DENIED and self.dry_run is None:
                conn.client = None
                self._count_refused(user, f"{e.code} {e.message}")
                return self._next(conn)
            err_type = ("i/o timeout" if isinstance(e, asyncio.TimeoutError)
                        else "login failed" if isinstance(e, LoginError) else "connect failed")
            self.stats.other_errors += 1
            self.stats.skipped += 1
            self.stats.not_connected += 1
            self.report.add_other(err_type, f"connection {conn.conn_id} to {self.opt.host}:{self.opt.port}: "
                                  f"{e or type(e).__name__}", time.time_ns())
            if conn.client is not None:  # logged in, then rebuilding its session failed: not left open
                conn.client.close()
            conn.client = None
            return self._next(conn)
        conn.busy = False
        if conn.queue and self._fire(conn, time.monotonic_ns()):
            self._schedule(conn)

    def _count_refused(self, user: str, why: str) -> None:
        """The head command of a connection whose user's login was refused (`why`: the first refusal):
        not sent, counted in one other_errors row per user; the user is never tried again."""
        err_type = self.refused.get(user)
        if err_type is None:
            err_type = self.refused[user] = f"login refused: {user[:40]}"
        self.stats.other_errors += 1
        self.stats.skipped += 1
        self.stats.not_connected += 1
        self.report.add_other(err_type, f"user {user!r} on {self.opt.host}:{self.opt.port}: {why}; not tried again: "
                              f"the commands of its connections are not replayed (counted here)", time.time_ns())

    def _on_lost(self, client: ReplayClient, exc) -> None:
        try:
            self._handle_lost(client, exc)
        except Exception as e:  # noqa: BLE001
            self._internal_failure(e)

    def _handle_lost(self, client: ReplayClient, exc) -> None:
        conn: Conn = client.owner
        if conn.client is client:
            conn.client = None
        self._transaction_lost(conn)
        if conn.busy and conn.inflight is not None:
            # the head in flight, and the commands pipelined behind it: each lost, said, done
            for _ in range(max(1, conn.nsent)):
                if conn.inflight is None:
                    break
                self.stats.other_errors += 1
                self.report.add_other("connection lost", f"connection {conn.conn_id}: the server closed the connection "
                                      f"during {command_name(conn.inflight.payload[0])}: {exc or 'EOF'}", time.time_ns())
                self._consume(conn)
            self._schedule(conn)
        elif not conn.closed:
            # idle (wait_timeout, a restart): its session state is gone too; reopened for its next command.
            # If production's server closed it too, that is the replay being faithful: judged by what
            # the capture says comes next for this connection
            conn.lost_idle = f"connection {conn.conn_id}: the server closed the idle connection: {exc or 'EOF'}"
            if conn.queue:
                self._judge_idle_loss(conn, conn.queue[0])

    def _internal_failure(self, e: Exception) -> None:
        if self.internal_error is None:
            log.exception("replay stopped by an internal error")
            self.internal_error = e
            self.report.add_other("internal error", f"{type(e).__name__}: {e}", time.time_ns())
            self.cancel()

    def _handle_result(self, client: ReplayClient, result) -> None:
        conn: Conn = client.owner
        now = time.monotonic_ns()
        tag = result.tag
        rec = conn.inflight
        if tag is not None and tag[0] in _INTERNAL_TAGS:  # our own statements: pins, transaction retries
            return self._on_internal_result(conn, result, now)
        if rec is None:
            return
        if tag is not None and tag[0] == "reprepare":
            captured_id = tag[1]
            payload = conn.pending_payload
            conn.pending_payload = None
            if result.outcome != OUTCOME_OK:
                self._compare(conn, rec, result, now)
                return self._next(conn)
            conn.stmt_map[captured_id] = result.stmt_id
            conn.stmt_params[captured_id] = result.num_params
            conn.types_bound.discard(captured_id)
            payload = self._remap(conn, captured_id, result.stmt_id, payload)
            if payload is None:
                return self._next(conn)
            self._send(conn, payload)
            return
        cmd = rec.payload[0]
        if cmd == COMMAND.COM_STMT_PREPARE:
            captured_id = rec.affected_rows  # capture stores the statement id of a prepare there
            if rec.outcome == OUTCOME_OK:
                # kept even if the prepare fails here: its executes re-prepare and count as failures
                conn.stmt_sql[captured_id] = rec.payload[1:].decode("utf-8", "replace")
            if result.outcome == OUTCOME_OK:
                conn.stmt_map[captured_id] = result.stmt_id
                conn.stmt_params[captured_id] = result.num_params
                conn.types_bound.discard(captured_id)
        elif cmd == COMMAND.COM_INIT_DB and result.outcome == OUTCOME_OK and result.schema is None:
            conn.db = rec.payload[1:].decode("utf-8", "replace")
        if (result.outcome == OUTCOME_OK and result.affected_rows == 0 and rec.outcome == OUTCOME_OK
                and rec.affected_rows > 0 and conn.again is not rec
                and (cmd == COMMAND.COM_QUERY or cmd == COMMAND.COM_STMT_EXECUTE) and self._send_again_later(conn, rec)):
            return  # sent again once the writes that overlapped it in production have run here
        if result.outcome == OUTCOME_ERR and self.opt.whole_transactions and self._transaction_result(conn, rec, result):
            return  # the transaction is being sent again; this command completes when that is done
        self._compare(conn, rec, result, now)
        if (result.schema is not None or cmd == COMMAND.COM_QUERY) and self._track_database(conn, rec, result):
            return  # asking the server first: _next once it answered
        self._next(conn)

    def _compare(self, conn: Conn, rec: Record, result, now: int) -> None:
        if self.checkpoint is not None:  # counted once the command is done (fastproxy/replay/checkpoint.py)
            return self.checkpoint.result(conn, rec, result, now)
        self._compare_now(conn, rec, result, now)

    def _add_failure(self, conn: Conn, rec: Record, result, cmd_type: str | None = None, note: str = "") -> None:
        cmd = rec.payload[0]
        if cmd == COMMAND.COM_QUERY or cmd == COMMAND.COM_STMT_PREPARE:
            sql = rec.payload[1:].decode("utf-8", "replace")
            stmt = sql
        elif cmd in STMT_COMMANDS:
            captured_id = int.from_bytes(rec.payload[1:5], "little")
            sql = conn.stmt_sql.get(captured_id, f"<statement {captured_id}>")
            stmt = sql
            if cmd == COMMAND.COM_STMT_EXECUTE:
                stmt = sql + " " + self._params_text(conn, captured_id, rec.payload)
        else:
            sql = stmt = command_name(cmd) + (" " + rec.payload[1:].decode("utf-8", "replace") if len(rec.payload) > 1
                                              else "")
        self.report.add_failure(cmd_type or cmd_type_name(cmd), digest(sql), stmt,
                                f"{note}{result.err_code} ({result.sql_state}): {result.err_msg}", result.err_code,
                                conn.conn_id, rec.start_ns, time.time_ns())

    def _params_text(self, conn: Conn, captured_id: int, payload: bytes) -> str:
        from fastproxy.replay.params import decode_execute_params, format_params

        try:
            raw = conn.stmt_types.get(captured_id)  # u16 per parameter: type | flags << 8
            prev = [raw[i] | raw[i + 1] << 8 for i in range(0, len(raw) - 1, 2)] if raw else None
            values, _ = decode_execute_params(payload, conn.stmt_params.get(captured_id, 0), prev)
            return "params=" + format_params(values)
        except Exception as e:  # noqa: BLE001 - a sample is best-effort; the failure itself is recorded
            return f"params=<undecodable: {e}>"

    # ---- faithful replay: causal order, pinned time and ids, whole transactions ------------------
    # (the planning side is fastproxy/replay/causal.py; these are the engine's hooks)

    def _status_flags_recorded(self) -> bool:
        return status_flags_recorded(self.meta)

    def _affected_rows_recorded(self) -> bool:
        """Whether a write's affected rows can tell that it changed nothing (only our own captures)."""
        return (bool(self.meta.get("outcomes_recorded", True)) and bool(self.meta.get("rows_recorded", True))
                and getattr(self.reader, "format", "native") == "native")  # (a converted TiProxy capture: no rows)

    async def _prepare_order(self) -> None:
        """Read what the target's schema says about table scopes, then plan with it."""
        opt = self.opt
        causal = opt.order == "causal"
        if not causal and not opt.pin:
            return
        if opt.dry_run:  # the target is not asked: tables are scoped by name only (no foreign keys, views, triggers)
            self.planner = Planner(TableScopes(), causal=causal, pin=opt.pin, status_flags=self._status_flags_recorded(),
                                   affected_rows=self._affected_rows_recorded(), mark_reads=self.pipeline > 1)
            return
        # on error (logged by load_scopes, shown in the summary's causal.scope) one global scope
        scopes = await self._loop.run_in_executor(
            None, load_scopes, opt)
        # reads inside transactions are pipelined only where the target's isolation is known not to be
        # SERIALIZABLE (there a plain SELECT locks rows: it may wait, deadlock and end its transaction)
        txn_reads = bool(scopes.isolation) and "SERIALIZ" not in scopes.isolation
        self.planner = Planner(scopes, causal=causal, pin=opt.pin, status_flags=self._status_flags_recorded(),
                               affected_rows=self._affected_rows_recorded(), mark_reads=self.pipeline > 1,
                               txn_reads=txn_reads)

    def _send(self, conn: Conn, payload: bytes) -> None:
        """Send the head command: pinned to production's time and ids where it needs that, and kept
        for a retry of its transaction."""
        ticket = conn.tickets[0] if conn.tickets else None
        flags = ticket.flags if ticket is not None else 0
        if conn.txn.undone:  # rolled back while it waited (_undo): first bring the transaction back
            conn.txn.undone = False
            if not flags & TXN_BEGIN:  # (a PREPARE or PING inside it is not flagged IN_TXN)
                conn.txn.retry = Retry(list(conn.txn.entries), None, then=payload)
                conn.client.send(rollback_before(conn.txn.retry.entries), _TXN_TAG)
                return
        if flags & TXN_CHAINED:
            # the first statement of a transaction COMMIT AND CHAIN opened: opened again here, as the
            # chain left it (same isolation and access mode), whatever this connection did since the
            # chain (a transaction given up and rolled back, a reconnect, a resumed session); on the
            # way of a replay that followed production, it replaces an empty transaction by an empty one
            conn.client.send(ROLLBACK_AND_CHAIN, _MIRROR_TAG)
        cmd = payload[0]
        if cmd != COMMAND.COM_QUERY and cmd != COMMAND.COM_STMT_EXECUTE:
            conn.client.send(payload, None)
            return
        if flags & PIN_FLAGS or conn.pin_dirty:
            self._send_with_pins(conn, payload, flags)  # (EngineCore: the C chain sends them the same way)
            return
        self._keep_and_send(conn, payload, None, flags)

    @staticmethod
    def _send_pinned(client, prefix: bytes, then) -> None:
        """A pin's SET, then its command (`then` sends it), in one write: the server finds both."""
        corked = client.cork()  # False: corked already (several answers in one read): it uncorks
        try:
            client.send(prefix, _PIN_TAG)
            then()
        finally:
            if corked:
                client.uncork()

    def _transaction_result(self, conn: Conn, rec: Record, result) -> bool:
        """Whole transactions: True if a retry of the transaction started (the command stays in
        flight until it is done)."""
        if result.outcome == OUTCOME_ERR:
            if (result.err_code in RETRYABLE and rec.outcome in (OUTCOME_OK, OUTCOME_ERR)
                    and not (rec.outcome == OUTCOME_ERR and rec.err_code == result.err_code)
                    and conn.client is not None and not conn.client.closed):
                if conn.txn.aborted:
                    return False  # a read pipelined in a transaction given up already: a failure as any
                if conn.nsent > 1:
                    # reads are in flight behind it (--pipeline): a retry (ROLLBACK, then the transaction
                    # from its start) would run after them, and they would have run outside it (1213
                    # ended it) or between the failure and the ROLLBACK. Not half of it either: the
                    # transaction is reported aborted and the rest of it is not sent. (A plain read is
                    # pipelined only where it takes no row lock: here it waited for a table's metadata
                    # lock, say, past lock_wait_timeout.) Outside a transaction: a failure as any.
                    ticket = conn.tickets[0] if conn.tickets else None
                    if ticket is None or not ticket.flags & IN_TXN:
                        return False
                    self._give_up_transaction(conn, result)
                    return True
                entries = conn.txn.entries
                if not entries or entries[-1][0] is not rec:
                    return False  # not sent through _send (nothing to send again)
                if entries[-1][3] & IN_TXN and not entries[0][3] & TXN_BEGIN:
                    # its start is not in the log (a session rebuilt inside a transaction): cannot be redone
                    self._give_up_transaction(conn, result)
                    return True
                self.stats.txn_retries += 1
                return self._retry(conn, result)
        return False

    def _retry(self, conn: Conn, error) -> bool:
        txn = conn.txn
        if txn.attempts >= MAX_ATTEMPTS:
            self._give_up_transaction(conn, error)
            return True
        txn.attempts += 1
        txn.retry = Retry(list(txn.entries), error)
        conn.client.send(rollback_before(txn.retry.entries), _TXN_TAG)
        return True

    def _on_internal_result(self, conn: Conn, result, now: int) -> None:
        kind = result.tag[0]
        if kind != "txn":
            if result.outcome == OUTCOME_ERR:  # a pin or a mirrored ROLLBACK the server refused
                self.stats.other_errors += 1
                self.report.add_other("pin failed" if kind == "pin" else "rollback failed",
                                      f"connection {conn.conn_id}: {result.err_code} ({result.sql_state}): "
                                      f"{result.err_msg}", time.time_ns())
            return
        retry = conn.txn.retry
        if retry is None:
            return
        if retry.pos >= 0:  # a command of the transaction, sent again
            rec = retry.entries[retry.pos][0]
            differs = result.outcome == OUTCOME_ERR and not (
                rec.outcome == OUTCOME_ERR and rec.err_code == result.err_code)
            if differs:
                if result.err_code in RETRYABLE and conn.txn.attempts < MAX_ATTEMPTS:
                    conn.txn.attempts += 1
                    retry.pos = -1
                    retry.error = result
                    conn.client.send(rollback_before(retry.entries), _TXN_TAG)
                    return
                return self._give_up_transaction(conn, result, rec)
            if retry.last and retry.then is not None:  # redone: now the command that waited
                conn.txn.retry = None
                return self._send(conn, retry.then)
            if retry.last:  # the command that failed (or changed nothing): its result now is the one that counts
                conn.txn.retry = None
                if retry.error is not None:
                    self.stats.txn_retried_ok += 1
                self._compare(conn, conn.inflight, result, now)
                return self._next(conn)
        _, payload, prefix, _ = retry.next_entry()
        if prefix is None:
            conn.client.send(payload, _TXN_TAG)
            return
        conn.pin_dirty = True
        self._send_pinned(conn.client, prefix, lambda: conn.client.send(payload, _TXN_TAG))

    def _give_up_transaction(self, conn: Conn, result, failed: Record | None = None) -> None:
        """Still failing after the retries: reported once, the transaction's rest is not sent."""
        txn = conn.txn
        ticket = conn.tickets[0] if conn.tickets else None
        flags = ticket.flags if ticket is not None else 0
        self.stats.failed += 1
        self.stats.txn_aborted += 1
        self._add_failure(conn, failed or conn.inflight, result, cmd_type="Transaction",
                          note=f"transaction aborted on replay ({txn.attempts} retries): ")
        txn.retry = None
        txn.reset()
        if conn.client is not None and not conn.client.closed:
            conn.client.send(ROLLBACK, _MIRROR_TAG)
        self.stats.replayed += 1
        txn.aborted = bool(flags & IN_TXN) and not flags & TXN_END
        self._next(conn)

    def _production_lock_error(self, conn: Conn, ticket: Ticket) -> int:
        """Production lost this statement to a deadlock or a lock wait timeout: its effect there was
        none, so it is not sent; after a deadlock the transaction is rolled back here too."""
        self.stats.prod_lock_errors += 1
        if conn.queue[0].err_code == ER.LOCK_DEADLOCK:
            if conn.client is not None and not conn.client.closed:
                conn.client.send(ROLLBACK, _MIRROR_TAG)
            conn.txn.reset()
        self._consume(conn)
        return CONSUMED

    def _send_again_later(self, conn: Conn, rec: Record) -> bool:
        """A write that changed rows in production changed none here. If writes of other connections
        overlapped it in production (started before it, their end recorded after it started), one of
        them may be what it found there: the proxy stamps a command's end when the answer reaches it,
        which can be after the server made the write visible to others (a server thread preempted
        between commit and answer, 0.6-0.9 ms in 2 of 12 shop captures on a loaded box). Causal order
        could not make it wait for them; worse, its lock order (the overlapping write "got the row
        after it") makes them wait for it. So: it counts as done for ordering (they may go), its
        transaction is rolled back (the gap it locked would hold them up on the server), and once they
        have run here it is sent again, with its transaction redone up to it. It changed nothing, so
        sending it twice is safe. Once per command; waiting at most OVERLAP_WAIT_S."""
        if not self.planner.causal or conn.sent is None or not self._affected_rows_recorded():
            return False
        start = rec.start_ns
        pending = []
        for other in self.conns.values():
            if other is conn:
                continue
            for r, ticket in zip(other.queue, other.tickets):
                if r.start_ns >= start:
                    break
                if (r.end_ns > start and ticket is not None and ticket.has_events and not ticket.finished
                        and not ticket.flags & READ_EVENT):
                    pending.append((other, r, ticket))
        if not pending:
            return False
        conn.again = rec
        conn.sent_ns = time.monotonic_ns()  # the watcher's clock: this is not a command stuck on the server
        txn = conn.txn
        redo = (self.opt.whole_transactions and txn.retry is None and bool(txn.entries)
                and txn.entries[-1][0] is rec and bool(txn.entries[0][3] & TXN_BEGIN))
        if redo:
            conn.client.send(ROLLBACK, _MIRROR_TAG)
        ticket = conn.tickets[0] if conn.tickets else None
        if ticket is not None and not ticket.finished:
            released = self.planner.order.finish(ticket)  # its real completion is then a no-op
            if released:
                self._released.extend(released)
                if not self._draining:
                    self._drain_released()
        self._start(self._send_again(conn, rec, pending, redo))
        return True

    async def _send_again(self, conn: Conn, rec: Record, pending: list, redo: bool) -> None:
        deadline = time.monotonic() + OVERLAP_WAIT_S
        waiting = self._sending_again
        box = [pending]  # what this connection waits for here, as _held_only_by reads it
        waiting[conn.conn_id] = box
        try:
            while pending and time.monotonic() < deadline:
                await asyncio.sleep(0.002)
                if conn.inflight is not rec or conn.client is None or conn.client.closed:
                    break  # the connection went meanwhile: it waits for nothing here any more
                pending = box[0] = [p for p in pending if _queued(p[0], p[1])]
                for other, r, ticket in pending:
                    if (other.parked and other.tickets and other.tickets[0] is ticket and not ticket.finished
                            and self._held_only_by(ticket, waiting)):
                        # it waits only for transactions that wait here for it (this one, or another
                        # found in the same state: two workers that took the rows of the same
                        # late-stamped inserts), directly or through commands that wait for them: the
                        # lock order the capture got the wrong way round (they never had the rows first)
                        ticket.release_waits()
                        self._released.append(other.idx)
                if self._released and not self._draining:
                    self._drain_released()
        finally:
            if waiting.get(conn.conn_id) is box:
                del waiting[conn.conn_id]
        if conn.inflight is not rec or conn.client is None or conn.client.closed:
            return  # the connection went meanwhile: _on_lost moved on
        payload, prefix = conn.sent
        log.debug("connection %s: %r changed no row, production's %d: sent again%s after the writes that "
                  "overlapped it%s", conn.conn_id, payload[:80], rec.affected_rows, " with its transaction" if redo
                  else "", " (timed out)" if pending else "")
        self.stats.sent_again += 1
        if pending:
            self.stats.sent_again_timed_out += 1
        conn.sent_ns = time.monotonic_ns()
        if redo:  # its transaction again from its start; the last statement's result is the one that counts
            conn.txn.retry = Retry(list(conn.txn.entries), None)
            conn.client.send(rollback_before(conn.txn.retry.entries), _TXN_TAG)
            return
        if prefix is not None:
            conn.client.send(prefix, _PIN_TAG)
        conn.client.send(payload, None)

    def _held_only_by(self, ticket, waiting: dict) -> bool:
        """Whether all `ticket` waits for are commands of connections that wait, in _send_again, for
        it (`waiting`: connection id -> [the writes it waits for]), or parked commands that in turn
        wait only for those: a cycle. A connection waiting there for other writes does not count (a
        command may truly have to follow it); nor does a command in flight or about to go (it moves
        on its own)."""
        order = self.planner.order
        owners = order.blockers(ticket)
        if not owners:
            return False
        seen: set = set()
        while owners:
            owner = owners.pop()
            if owner in seen:
                continue
            seen.add(owner)
            box = waiting.get(owner)
            if box is not None:
                if any(t is ticket for _, _, t in box[0]):
                    continue
                return False
            c = self.conns.get(owner)
            if c is None or c.busy or not c.parked or not c.tickets or c.tickets[0] is None:
                return False
            more = order.blockers(c.tickets[0])
            if not more:
                return False
            owners.extend(more)
        return True

    def _undo(self, holder: Conn) -> bool:
        """`holder` is held back by causal order inside a transaction that may block, on the server,
        a command causal order waits for: roll it back now (its row locks go) and send it again
        from its start when its next command's turn comes (`_send`). Order is kept; the cost is
        the transaction's statements sent twice."""
        if (holder.busy or not holder.parked or holder.client is None or holder.client.closed
                or not holder.txn.can_undo()):
            return False
        holder.txn.undone = True
        log.debug("wait cycle: connection %s rolls back its transaction (%d statements) and waits on",
                  holder.conn_id, len(holder.txn.entries))
        holder.client.send(ROLLBACK, _MIRROR_TAG)
        self.stats.txn_undone += 1
        return True

    def _break_cycle(self, holder: Conn) -> bool:
        """`holder` is held back by causal order while its open transaction blocks, on the server, a
        command that causal order waits for (directly or through others; _waits_for checked it):
        neither can move, so the holder's next command goes now, out of causal order for that one
        dependency; its transaction then ends and the blocked command gets its row."""
        ticket = holder.tickets[0] if holder.tickets else None
        if holder.busy or not holder.parked or ticket is None:
            return False
        ticket.release_waits()
        self._released.append(holder.idx)
        self.stats.cycles_broken += 1
        return True

    def _waits_for(self, holder: Conn, target: Conn, blocked_by: dict) -> bool | None:
        """Whether `holder`'s parked command waits, through causal order and through the server's
        row-lock waits (`blocked_by`: connection idx -> the connections whose locks it waits for),
        for a command of `target`. False means it moves on its own once what it waits for has run,
        however slow that is; None: too many events to tell."""
        order = self.planner.order
        seen = {holder.idx}
        todo = [holder]
        while todo:
            conn = todo.pop()
            if conn.busy:  # in flight: it waits for nothing but the server's locks
                nexts = blocked_by.get(conn.idx, ())
            elif conn.parked and conn.tickets and conn.tickets[0] is not None:
                owners = order.blockers(conn.tickets[0])
                if owners is None:
                    return None
                nexts = [c for c in map(self.conns.get, owners) if c is not None]
            else:
                continue  # due later, or about to go: it moves on its own
            for c in nexts:
                if c is target:
                    return True
                if c.idx not in seen:
                    seen.add(c.idx)
                    todo.append(c)
        return False

    def _break_cycles(self, pairs: list, before: dict) -> None:
        """Lock waits read from the server (`pairs`; `before`: each connection's command in flight and
        head ticket when they were asked for): let go the holders that are in a wait cycle."""
        by_thread = {c.client.connection_id: c for c in self.conns.values()
                     if c.client is not None and not c.client.closed}
        blocked_by: dict[int, list[Conn]] = {}
        waits = []
        for waiting, blocking in pairs:
            w, holder = by_thread.get(waiting), by_thread.get(blocking)
            if w is None or holder is None or w is holder:
                continue
            # still the wait that was read: the same command in flight all along
            if not w.busy or w.inflight is None or before.get(w.idx, (None, None))[0] is not w.inflight:
                continue
            blocked_by.setdefault(w.idx, []).append(holder)
            waits.append((w, holder))
        for w, holder in waits:
            head = holder.tickets[0] if holder.tickets else None
            if not holder.parked or holder.busy or before.get(holder.idx, (None, None))[1] is not head:
                continue
            if holder.txn.undone:
                continue  # rolled back already: a lock wait read before InnoDB saw it (its view lags ~100 ms)
            cycle = self._waits_for(holder, w, blocked_by)
            if cycle is False:
                continue  # the holder waits for something that is only slow: it will move, and free w
            if self._undo(holder) or self._break_cycle(holder):
                log.debug("wait cycle: connection %s (next: %r at %s) blocks %s (%r at %s) on the server "
                          "and waits for it here%s", holder.conn_id, holder.queue[0].payload[:100],
                          holder.queue[0].start_ns, w.conn_id, w.inflight.payload[:100], w.inflight.start_ns,
                          "" if cycle else " (too many events to tell)")

    def _transaction_lost(self, conn: Conn) -> None:
        """The replay connection dropped inside a production transaction: the rest of it would run
        in autocommit on a new connection, so it is not sent."""
        txn = conn.txn
        txn.retry = None
        ticket = conn.tickets[0] if conn.tickets else None
        if conn.busy and conn.inflight is not None and ticket is not None:
            in_txn = ticket.flags & IN_TXN and not ticket.flags & TXN_END
        else:
            in_txn = bool(txn.entries)  # idle between two commands of a transaction
        txn.reset()
        if in_txn and self.opt.whole_transactions and not conn.closed and not txn.aborted:
            txn.aborted = True
            self.stats.txn_aborted += 1  # (once: given up already with reads pipelined behind, it is counted)

    def _skip_aborted(self, conn: Conn, ticket: Ticket | None) -> bool:
        """The head command belongs to a transaction given up on replay: consume it unsent."""
        flags = ticket.flags if ticket is not None else 0
        if not flags & IN_TXN or flags & TXN_BEGIN:
            conn.txn.aborted = False  # the aborted transaction is over: this one is new
            return False
        if flags & TXN_END:
            conn.txn.aborted = False
        self.stats.skipped += 1
        self.stats.txn_skipped += 1
        self._consume(conn)
        return True

    async def _watch_dependencies(self) -> None:
        """Causal order must never hang a replay, and slowness alone must never break it. Two
        things can hold it up:

        - a wait cycle through the server: a command causal order waits for (directly or through
          others) is blocked on the server by a row lock of a transaction whose next command is held
          back by causal order (lock waits production did not have: a queue picked with SKIP LOCKED
          in another order, gap locks). The lock waits are read from the server
          (fastproxy/replay/lockwaits.py) and the cycle is followed through the scheduler
          (CausalOrder.blockers); the holder's transaction is rolled back and sent again when its
          turn comes (`causal.undone_to_break_cycles`; order kept), or, where its start is not
          known, its next command is let go (`causal.released_to_break_cycles`). A holder that
          waits for a command that is merely slow is left alone: that command completes, then the
          holder moves and frees the lock. Without the PROCESS privilege a command in flight for
          the valve's time is taken as blocked by the held-back transactions in a cycle with it
          (and presumed complete only at twice that time);
        - a dependency that does not complete for another reason: a command in flight far longer
          than in production (`causal_timeout_s`, and 4x its captured time) that the server shows
          waiting for a lock row-lock waits do not show (a metadata, table or named lock: a cycle
          the scheduler cannot follow) is presumed complete for ordering; where the server's
          threads cannot be read, any such command is. If nothing is in flight at all, whatever is
          parked is let go (both counted as `causal.released_by_valve`)."""
        if not self.planner.causal:
            return
        floor = int(self.opt.causal_timeout_s * 1e9)
        probe = min(floor, 20_000_000)  # in flight this long while others wait: look for a cycle
        order = self.planner.order
        opt = self.opt
        lockwaits = self.lockwaits = LockWaits(opt) \
            if opt.whole_transactions and not opt.dry_run else None
        last_probe = last_states = 0  # the server's lock waits / thread states, read at most this often
        try:
            while True:
                await asyncio.sleep(0.01)
                if not order.parked:
                    continue
                now = time.monotonic_ns()
                active = bool(self.heap) or bool(self._connecting)
                suspects = False
                overdue = []
                stuck = []  # without lock waits (no PROCESS): in flight for the valve's time, taken as blocked
                blind = lockwaits is not None and lockwaits.unavailable is not None
                for conn in list(self.conns.values()):
                    if not conn.busy:
                        continue
                    active = True
                    retry = conn.txn.retry
                    if retry is not None:  # sending a transaction again: one of its statements is out
                        late = now - retry.sent_ns
                        expected = 0
                    elif conn.inflight is not None:
                        late = now - conn.sent_ns
                        expected = 4 * (conn.inflight.end_ns - conn.inflight.start_ns)
                    else:
                        continue  # logging in
                    suspects = suspects or late > probe
                    valve = max(floor, expected)
                    if blind and late > valve:
                        stuck.append(conn)
                        valve *= 2  # breaking the cycle first keeps order; presuming complete does not
                    ticket = conn.tickets[0] if conn.tickets else None
                    if ticket is not None and not ticket.finished and ticket.has_events and late > valve:
                        overdue.append((conn, ticket, late))
                if stuck:
                    # who blocks whom on the server is unknown: undo the held-back transactions in a
                    # cycle with a stuck command (through causal order; undoing costs only a redo)
                    for conn in [c for c in self.conns.values() if c.parked and c.txn.can_undo()]:
                        if any(self._waits_for(conn, s, {}) is not False for s in stuck):
                            self._undo(conn)
                if overdue and (lockwaits is None or lockwaits.unavailable
                                or now - last_states > LockWaits.MIN_INTERVAL_NS):
                    await self._presume_complete(overdue, lockwaits)
                    last_states = time.monotonic_ns()
                if (suspects and lockwaits is not None and not lockwaits.unavailable
                        and now - last_probe > LockWaits.MIN_INTERVAL_NS):
                    before = {c.idx: (c.inflight, c.tickets[0] if c.tickets else None) for c in self.conns.values()}
                    pairs = await self._loop.run_in_executor(None, lockwaits.pairs)
                    last_probe = time.monotonic_ns()
                    if pairs:
                        self._break_cycles(pairs, before)
                if not active:  # nothing can complete any more: let everything parked go
                    for conn in list(self.conns.values()):
                        if conn.parked and conn.tickets and conn.tickets[0] is not None:
                            conn.tickets[0].release_waits()
                            self.stats.causal_released += 1
                            self._released.append(conn.idx)
                if self._released and not self._draining:
                    self._drain_released()
        finally:
            if lockwaits is not None:
                await self._loop.run_in_executor(None, lockwaits.close)

    async def _presume_complete(self, overdue: list, lockwaits: LockWaits | None) -> None:
        """The safety valve: commands in flight far longer than in production are presumed complete
        for ordering if the server shows them waiting for a lock it does not show the holder of
        (with no way to read the server's threads: all of them). A command that runs, or waits for a
        row lock (a cycle there is broken by _break_cycles), is only slow: it is left to complete."""
        states = None
        if lockwaits is not None and not lockwaits.unavailable:
            ids = [c.client.connection_id for c, _, _ in overdue if c.client is not None and not c.client.closed]
            states = await self._loop.run_in_executor(None, lockwaits.states, ids)
        for conn, ticket, late in overdue:
            if ticket.finished or not conn.busy or not conn.tickets or conn.tickets[0] is not ticket:
                continue  # completed meanwhile
            if states is not None:
                client = conn.client
                if client is None or client.closed or not other_lock_wait(states.get(client.connection_id)):
                    continue
            released = self.planner.order.finish(ticket)  # presumed complete (its real completion is a no-op)
            self.stats.causal_released += 1
            log.debug("presumed complete after %.0f ms: connection %s %r", late / 1e6, conn.conn_id,
                      conn.queue[0].payload[:60] if conn.queue else None)
            if released:
                self._released.extend(released)

    # ---- sessions as they were (fastproxy/replay/sessions.py, users.py) --------------------------
    def _note_session(self, conn: Conn, kind: int, info: dict) -> None:
        """CONN_OPEN / CONN_STATE: production's thread id (KILL targets); the session to rebuild."""
        self.thread_ids.discard(conn.backend, conn.thread_id, conn)
        conn.backend = info.get("backend", "") or ""
        conn.thread_id = int(info.get("backend_conn_id", 0) or 0)
        self.thread_ids.add(conn.backend, conn.thread_id, conn)
        if kind == KIND_CONN_STATE:
            conn.state = info

    def _note_infile(self, conn: Conn, rec: Record) -> None:
        size = INFILE_SIZE.unpack_from(rec.payload)[0] if len(rec.payload) >= INFILE_SIZE.size else -1
        content = rec.payload[INFILE_SIZE.size:]
        conn.infiles.setdefault(rec.start_ns, []).append(content if len(content) == size else None)

    def _on_infile(self, recorded: bool) -> None:
        if recorded:
            self.stats.infile_sent += 1
        else:
            self.stats.infile_empty += 1

    def _session_command(self, conn: Conn, rec: Record, payload: bytes):
        """The payload to send on this replay session; None if consumed here (reported), _ASYNC if
        it goes on asynchronously (a KILL waiting for its target, a change of user)."""
        cmd = payload[0]
        if cmd == COMMAND.COM_QUERY:
            if PLACEHOLDER_BYTES in payload:
                login_user = self.credentials.login(conn.user)[0]
                payload = b"\x03" + self.credentials.substitute(payload[1:], login_user)
            if not KILL_START.match(payload, 1):
                return payload
            kill = parse_kill(payload[1:])
            if kill is None:
                return payload
            if kill.target is None:
                return self._kill_not_mapped(conn, rec, payload, kill.why)
            thread_id = kill.target
        elif cmd == COMMAND.COM_PROCESS_KILL:
            thread_id = int.from_bytes(payload[1:5], "little")
        else:
            self._start(self._change_user(conn, rec, conn.client))
            return _ASYNC
        target = self.thread_ids.find(conn.backend, thread_id)
        if target is None:
            return self._kill_not_mapped(conn, rec, payload, f"thread id {thread_id} is no connection of the capture")
        if target is CLOSED:  # production's target had closed already: its KILL failed there too
            if rec.outcome == OUTCOME_ERR:
                self.stats.same_errors += 1
                self.stats.replayed += 1
                return None
            return self._kill_not_mapped(conn, rec, payload, f"thread id {thread_id} had closed")
        self._start(self._kill_when_ready(conn, rec, payload, target))
        return _ASYNC

    def _start(self, coro) -> None:
        task = self._loop.create_task(coro)
        self._connecting.add(task)  # canceled with the logins when the replay ends
        task.add_done_callback(self._started_done)

    def _started_done(self, task) -> None:
        # a defect in one of these would otherwise go unseen, its connection busy for ever: the
        # replay would stall without a word
        self._connecting.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._internal_failure(task.exception())

    def _kill_ready(self, rec: Record, target: Conn) -> bool:
        """Whether the target of a KILL is where production's was when the KILL came: every command
        it started before has been sent, and the one then in flight has run on replay for as long as
        it had (up to KILL_SETTLE_NS). Needed at any speed: faster than captured, the KILL would
        otherwise come before the query it stops, or stop a later one."""
        if not self._reading_done and self._read_ns < rec.end_ns + KILL_READ_MARGIN_NS:
            return False  # the target's interrupted command completes just after the KILL: read it first
        for r in target.queue:
            if r is target.inflight:
                if r.start_ns >= rec.start_ns:
                    return True
                return time.monotonic_ns() - target.sent_ns >= min(rec.start_ns - r.start_ns, KILL_SETTLE_NS)
            return r.start_ns >= rec.start_ns
        return True

    async def _kill_when_ready(self, conn: Conn, rec: Record, payload: bytes, target: Conn) -> None:
        deadline = time.monotonic() + KILL_WAIT_S
        while not self._kill_ready(rec, target) and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
        if conn.inflight is not rec or conn.client is None or conn.client.closed:
            return  # the killer's own connection went meanwhile: _on_lost moved on
        client = target.client
        if client is None or client.closed or not client.ready:
            if rec.outcome == OUTCOME_ERR:  # production's KILL failed too (its target was gone)
                self.stats.same_errors += 1
                self.stats.replayed += 1
            else:
                self._kill_not_mapped(conn, rec, payload, f"the connection that plays the target (capture "
                                      f"connection {target.conn_id}) is not connected on replay")
            return self._next(conn)
        if payload[0] == COMMAND.COM_PROCESS_KILL:
            payload = payload[:1] + client.connection_id.to_bytes(4, "little") + payload[5:]
        else:
            kill = parse_kill(payload[1:])
            payload = payload[:1 + kill.start] + str(client.connection_id).encode() + payload[1 + kill.end:]
        self.stats.kills_mapped += 1
        conn.client.send(payload, None)

    def _kill_not_mapped(self, conn: Conn, rec: Record, payload: bytes, why: str) -> None:
        # never sent as it is: production's thread id may be an unrelated replay connection
        self.stats.kills_not_mapped += 1
        self.stats.skipped += 1
        what = payload[1:].decode("utf-8", "replace") if payload[0] == COMMAND.COM_QUERY else \
            f"COM_PROCESS_KILL {int.from_bytes(payload[1:5], 'little')}"
        self.report.add_other("kill not mapped", f"connection {conn.conn_id}: {what[:200]}: {why}", time.time_ns())
        return None

    def _server_close(self, conn: Conn, rec: Record) -> bool:
        """A CONN_CLOSE production's server made (wait_timeout, KILL, shutdown): give the replay
        server a moment to close it too (a KILL sent just before may not have landed yet), rather
        than closing it first. True if the close goes on asynchronously."""
        if not rec.payload or b'"server"' not in rec.payload or conn.client is None or conn.client.closed:
            return False
        try:
            if json.loads(rec.payload).get("by") != "server":
                return False
        except ValueError:
            return False
        conn.busy = True
        self._start(self._close_when_server_did(conn, rec, conn.client))
        return True

    async def _close_when_server_did(self, conn: Conn, rec: Record, client: ReplayClient) -> None:
        deadline = time.monotonic() + SERVER_CLOSE_WAIT_S
        while not client.closed and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        if not client.closed:
            client.close()  # the replay server keeps it open (another wait_timeout): closed as production's was
        if conn.client is client:
            conn.client = None
        conn.closed = True
        if conn.queue and conn.queue[0] is rec:
            self._next(conn)

    async def _change_user(self, conn: Conn, rec: Record, client: ReplayClient) -> None:
        """COM_CHANGE_USER as a change of user: to the captured user with its users-file password
        (else the replay user); the server starts the session afresh."""
        from fastproxy.protocol import parse_change_user

        user, db = parse_change_user(rec.payload, conn.capabilities)
        login_user, password = self.credentials.login(user)
        try:
            result = await client.change_user(login_user, password, db)
        except BackendConnError:
            return  # the connection is gone: _on_lost reported it and moved on
        except ProtocolError as e:
            client.close()
            self._on_lost(client, e)
            return
        if conn.client is not client or conn.inflight is not rec:
            return
        self.stats.change_users += 1
        if result.outcome == OUTCOME_OK:
            conn.user, conn.db = user, db
            conn.stmt_map.clear()
            conn.types_bound.clear()
            conn.pin_dirty = False  # a new session: timestamp and insert_id are the server's again
        self._on_result(client, result)

    async def _rebuild_session(self, conn: Conn) -> None:
        """A session open before the capture: make the replay session look like its CONN_STATE."""
        state, conn.state = conn.state, None
        failures = []
        for what, sql in rebuild_statements(state):
            try:
                r = await conn.client.query(sql)
            except BackendConnError as e:
                failures.append(f"{what}: {e}")
                break
            if r.outcome != OUTCOME_OK:
                failures.append(f"{what}: {r.err_code} {r.err_msg}")
                self.stats.other_errors += 1
                self.report.add_other("session not rebuilt", f"connection {conn.conn_id}: {what}: "
                                      f"{r.err_code} ({r.sql_state}) {r.err_msg}", time.time_ns())
        reasons = list(state.get("not_rebuilt") or []) + failures
        if reasons:
            conn.not_rebuilt = reasons
            self.sessions_not_rebuilt += 1
            if len(self.not_rebuilt) < NOT_REBUILT_SAMPLE:
                self.not_rebuilt.append({"conn_id": conn.conn_id, "not_rebuilt": reasons})
        else:
            self.stats.sessions_rebuilt += 1

    def _judge_idle_loss(self, conn: Conn, next_rec: Record) -> None:
        """The server closed `conn` while idle: expected if production's server closed it there too."""
        message, conn.lost_idle = conn.lost_idle, ""
        if next_rec.kind == KIND_CONN_CLOSE and next_rec.payload:
            try:
                if json.loads(next_rec.payload).get("by") == "server":
                    self.stats.server_closes += 1
                    return
            except ValueError:
                pass
        self.stats.other_errors += 1
        self.report.add_other("idle connection lost", message, time.time_ns())

    def _track_database(self, conn: Conn, rec: Record, result) -> bool:
        """Keep conn.db (where a reconnect lands) the server's: from session tracking, else by asking
        after a statement that may have changed it. True if the next command waits for the answer."""
        if result.schema is not None:
            conn.db = result.schema or None
            return False
        if rec.payload[0] != COMMAND.COM_QUERY or not worth_scanning(
                rec.payload, bool(conn.capabilities & CLIENT.MULTI_STATEMENTS)):
            return False
        from fastproxy.sqltext import session_effects

        tracked = conn.client is not None and conn.client.tracker.session_track
        if conn.client is None or not any(e.kind == "use" or (e.kind == "maybe_use" and not tracked)
                                          for e in session_effects(rec.payload[1:])):
            return False
        self._start(self._ask_database(conn, rec, conn.client))
        return True

    async def _ask_database(self, conn: Conn, rec: Record, client: ReplayClient) -> None:
        try:
            r = await client.query_rows("SELECT DATABASE()")
            if r.ok and r.rows:
                conn.db = r.rows[0][0].decode("utf-8", "replace") if r.rows[0][0] is not None else None
        except (BackendConnError, ProtocolError):
            pass  # the connection is gone: _on_lost moved on
        if conn.inflight is rec:
            self._next(conn)

    def _add_failure_not_rebuilt(self, conn: Conn, rec: Record, result) -> None:
        """A failure on a session replay could not rebuild in full: reported apart, not in `fail`."""
        self.stats.failed_not_rebuilt += 1
        sql = rec.payload[1:].decode("utf-8", "replace") if rec.payload[0] in (COMMAND.COM_QUERY,
                                                                               COMMAND.COM_STMT_PREPARE) \
            else command_name(rec.payload[0])
        self.report.add_other("failure on a session not rebuilt",
                              f"connection {conn.conn_id} ({'; '.join(conn.not_rebuilt)[:300]}): {sql[:300]}: "
                              f"{result.err_code} ({result.sql_state}) {result.err_msg}", time.time_ns())

    def _session_summary(self) -> dict:
        st = self.stats
        cred = self.credentials
        return {
            "commands_not_executed_in_production": st.backend_lost,
            "kills_mapped": st.kills_mapped,
            "kills_not_mapped": st.kills_not_mapped,
            "change_users": st.change_users,
            "server_closes_as_captured": st.server_closes,
            "sessions_rebuilt": st.sessions_rebuilt,
            "sessions_not_rebuilt": self.sessions_not_rebuilt,
            "not_rebuilt": self.not_rebuilt,
            "commands_failed_on_sessions_not_rebuilt": st.failed_not_rebuilt,
            "secrets_substituted": cred.substituted,
            "secrets_from_users_file": cred.from_users_file,
            "secrets_replay_user": cred.replay_user,  # the --username user's own password, put back as such
            "secrets_random": cred.random,
            "users_in_users_file": len(cred.users),
            "local_infile_files_sent": st.infile_sent,
            "local_infile_files_empty": st.infile_empty,
        }

    # ---- progress ------------------------------------------------------------------------------
    def progress(self) -> float:
        """The share of the input's commands done: replayed, filtered, skipped, or dropped by the
        filters (an input that does not know its count yet, a log: the share of it read)."""
        st = self.stats
        total = st.commands_total or int(self.meta.get("commands") or 0)
        if self._done.is_set() and not self.canceled:
            return 1.0
        if not total:
            return min(1.0, getattr(self.reader, "fraction_read", None) or 0.0)
        done = st.replayed + st.filtered + st.skipped
        # the filters drop as the input is read, ahead of the replay: counted as far as the replay got
        dropped = getattr(self.reader, "commands_dropped", 0) * min(1.0, done / st.read if st.read else 0.0)
        return min(1.0, (done + dropped) / total)

    def summary(self) -> dict:
        st = self.stats
        end = self.finished_ns or time.time_ns()
        elapsed = max(1e-9, (end - self.replay_start_ns) / 1e9)
        cap_span = (self.last_command_ns - self.first_command_ns) / 1e9
        return {
            "input": self.input_dir,
            "target": f"{self.opt.host}:{self.opt.port}" if self.opt.port else "none (dry run)",
            "speed": self.opt.speed,
            "readonly": self.opt.readonly,
            "replay_start": utc_iso(self.replay_start_ns),
            "elapsed_seconds": round(elapsed, 3),
            "commands_in_capture": st.commands_total or int(self.meta.get("commands") or 0),
            "commands_read": st.read,
            "commands_dropped_by_filters": getattr(self.reader, "commands_dropped", 0),
            "commands_replayed": st.replayed,
            "commands_filtered": st.filtered,
            "commands_failed": st.failed,
            "commands_failed_same_as_capture": st.same_errors,
            "commands_fixed": st.fixed,
            "commands_skipped": st.skipped,
            # skipped because their connection could not connect or log in: the replay is incomplete
            "commands_not_replayed": st.not_connected,
            "input_error": self.read_error,
            "other_errors": sum(e.count for e in self.report.other_errors.values()),
            "connections": st.connections,
            "reconnects": st.reconnects,
            "peak_queued_commands": st.peak_queued,
            "qps_captured": round(st.read / cap_span, 1) if cap_span > 0 else None,
            "qps_replayed": round(st.replayed / elapsed, 1),
            "pipeline": self.pipeline,
            "commands_pipelined": st.pipelined,
            "commands_pipelined_in_transactions": st.pipelined_in_txn,
            # what replaying cost this process (all its threads; in `serve`, the proxy's work too)
            "replayer_cpu_seconds": round(self.cpu_seconds if self.finished_ns else
                                          time.process_time() - self._cpu_start if self._cpu_start else 0.0, 3),
            "avg_latency_captured_ms": round(st.captured_ns / max(1, st.replayed) / 1e6, 3),
            "avg_latency_replayed_ms": round(st.replayed_ns / max(1, st.replayed) / 1e6, 3),
            "lag": self.lag.as_dict(),
            "top_failures": [{"cmd_type": f.cmd_type, "digest": f.digest, "count": f.count,
                              "sample_stmt": f.sample_stmt[:500], "sample_err_msg": f.sample_err_msg}
                             for f in self.report.top_failures()],
            "other_error_types": {e.err_type: e.count for e in self.report.other_errors.values()},
            "canceled": self.canceled,
            **self._session_summary(),
            "input_format": self.reader.format,
            # a capture without its meta: still being written (or its proxy stopped uncleanly): what
            # its files held when they were read was replayed, and said so
            "input_unfinished": bool(getattr(self.reader, "unfinished", False)) and not self.read_error,
            # of several inputs replayed together, the unfinished ones
            "input_unfinished_inputs": [] if self.read_error else list(getattr(self.reader, "unfinished_inputs", [])),
            # inputs without outcomes (general log, slow log, TiProxy's error codes): every replay error
            # is reported as a failure, as TiProxy does
            "outcomes_recorded": self.meta.get("outcomes_recorded", True),
            "error_codes_recorded": self.meta.get("error_codes_recorded", self.meta.get("outcomes_recorded", True)),
            "input_skipped": dict(getattr(self.reader, "stats", {}) or {}),
            "filters": self.opt.filters.describe() if self.opt.filters is not None else {},
            "filtered_by": dict(getattr(self.reader, "dropped", {}) or {}),
            # after --end-time, the commands that ended a transaction open at the window's end
            "commands_after_end_time_ending_transactions": getattr(self.reader, "completed_after_end", 0),
            **self._faithful_summary(),
            "dry_run": self._dry_run_summary(elapsed),
        }

    def _dry_run_summary(self, elapsed: float) -> dict | None:
        if self.dry_run is None:
            return None
        cpu = self.cpu_seconds if self.finished_ns else 0.0
        return {**self.dry_run.as_dict(),
                # what the replayer itself sustained: at speed 0 its ceiling, at a speed its pace (with the lag)
                "commands_per_second": round(self.stats.replayed / elapsed, 1),
                "commands_per_cpu_second": round(self.stats.replayed / cpu, 1) if cpu > 0 else None}

    def _faithful_summary(self) -> dict:
        st = self.stats
        planner = self.planner
        scopes = planner.scopes
        return {
            "order": self.opt.order,
            "causal": {
                "scope": ("one global scope: " + scopes.error) if scopes.error else
                         "per table (dry run: by name only, the target's schema not read)" if self.opt.dry_run else
                         "per table",
                "commands_waited": st.causal_waits,
                "wait_ms": round(st.causal_wait_ns / 1e6, 1),
                "released_to_break_cycles": st.cycles_broken,
                "undone_to_break_cycles": st.txn_undone,
                "sent_again_after_overlapping_writes": st.sent_again,
                "sent_again_before_they_ran": st.sent_again_timed_out,
                "lock_waits_unreadable": (self.lockwaits.unavailable or "") if self.lockwaits else "",
                "released_by_valve": st.causal_released,
                "unknown_scope_statements": planner.unknown_scope_statements,
                # reads a commit of their tables overlapped in production: a difference is set apart
                "reads_order_unknown": planner.reads_order_unknown,
                "order_unknown_missed": planner.order_unknown_missed,  # commits longer than what was kept
            } if planner.causal else None,
            "pinned": {"time": st.pinned_time, "insert_id": st.pinned_insert_id} if self.opt.pin else None,
            "transactions": {
                "retried": st.txn_retries,
                "retried_ok": st.txn_retried_ok,
                "aborted": st.txn_aborted,
                "commands_skipped": st.txn_skipped,
                "production_lock_errors_not_replayed": st.prod_lock_errors,
            } if self.opt.whole_transactions else None,
        }
