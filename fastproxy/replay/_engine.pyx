# cython: language_level=3
"""The replay engine's per-command chain in C (fastproxy/replay/engine.py, Replayer's base class):
a result arrives (`_on_result`), it is compared, the command is consumed (`_consume`), the
connection's next command is scheduled (`_schedule`), let through causal order (`_gate`) and sent.

Only the common case runs here: a COM_QUERY or COM_STMT_EXECUTE of production that succeeded on
replay, sent on an open connection without pins, re-prepares, KILL mapping or secrets to put back.
Anything else goes to Replayer's Python methods (`_handle_result`, `_fire`, `_send`, `_remap`), which
hold the policy and stay the reference: with FAST_PATH off, they alone run (tests compare the two).

The attributes are Replayer's, set and read from Python as before. A connection (`Conn`, _conn.pyx)
and the counters (`StatsCore`, the base of engine.Stats) are C structs: their fields are read here
without an attribute lookup; records (capture.record.Record, a tuple) are read by field position.
"""
from libc.stdint cimport int64_t

from fastproxy._packet cimport CommandResult, execute_flag_at, execute_types_at, stmt_id_of, with_stmt_id
from fastproxy.capture.record_fields cimport (R_AFFECTED, R_CONN_ID, R_END, R_ERR_CODE, R_KIND, R_LAST_INSERT_ID,
                                              R_OUTCOME, R_PAYLOAD, R_START)
from fastproxy.replay._client cimport ClientCore
from fastproxy.replay._conn cimport Conn, TxnLog
from fastproxy.replay._scheduler cimport Scheduler, Ticket
from fastproxy.report._observe cimport ObserverCore

import re

import time

from fastproxy.capture import record as _record
from fastproxy.constants import COMMAND
from fastproxy.replay import causal as _causal
from fastproxy.replay.pinning import PIN_FLAGS as _PIN_FLAGS, pin as _pin
from fastproxy.replay.users import PLACEHOLDER_BYTES
from fastproxy.sqltext import FIRST_BYTES as _FIRST_BYTES

cdef extern from "<time.h>" nogil:
    ctypedef int clockid_t
    cdef struct timespec:
        long tv_sec
        long tv_nsec
    int clock_gettime(clockid_t clk, timespec *tp)
    clockid_t CLOCK_MONOTONIC

# A COM_QUERY that may be a KILL (engine._session_command maps its target)
KILL_START = re.compile(rb"(?:\s|/\*(?!M?!).*?\*/|#[^\n]*\n|--\s[^\n]*\n|/\*M?!\d*)*kill\b", re.I | re.S)
cdef object _kill_match = KILL_START.match

cdef int KIND_COMMAND = _record.KIND_COMMAND
cdef int KIND_CONN_CLOSE = _record.KIND_CONN_CLOSE
cdef int OUTCOME_OK = _record.OUTCOME_OK
cdef int OUTCOME_ERR = _record.OUTCOME_ERR
cdef int OUTCOME_BACKEND_LOST = _record.OUTCOME_BACKEND_LOST
cdef int COM_QUERY = COMMAND.COM_QUERY
cdef int COM_STMT_EXECUTE = COMMAND.COM_STMT_EXECUTE
cdef int IN_TXN = _causal.IN_TXN
cdef int TXN_BEGIN = _causal.TXN_BEGIN
cdef int TXN_END = _causal.TXN_END
cdef int TXN_CHAINED = _causal.TXN_CHAINED
cdef int PROD_LOCK_ERROR = _causal.PROD_LOCK_ERROR
cdef int PIN_FLAGS = _PIN_FLAGS
cdef int PLAIN_READ = _causal.PLAIN_READ
cdef int NOT_ROLES = _causal.READ_EVENT | _causal.ORDER_UNKNOWN  # flags that say nothing of how it is sent
cdef int PIN_TIME = _causal.PIN_TIME
cdef int PIN_ID = _causal.PIN_ID
cdef object pin = _pin

# the tag of a pin's SET (engine.py's too): its answer is the replayer's own, not compared
PIN_TAG = ("pin",)
cdef tuple _PIN_TAG = PIN_TAG
cdef object Record = _record.Record

# what _gate says about a connection's head command (BUSY: the connection first sends something else)
FIRE, PARKED, CONSUMED, BUSY = 0, 1, 2, 3
cdef enum:
    _FIRE = 0
    _PARKED = 1
    _CONSUMED = 2
    _BUSY = 3
# A command due this soon goes now (engine.py says why, where it imports this)
PACE_SLACK_NS = 1_000_000
cdef int64_t _PACE_SLACK_NS = PACE_SLACK_NS


cdef inline int64_t monotonic_ns() noexcept:
    """time.monotonic_ns(): the same clock (CLOCK_MONOTONIC), without a Python call."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1_000_000_000 + ts.tv_nsec


cdef class StatsCore:
    """The counters of engine.Stats that the per-command chain bumps, as C fields (_engine.pxd; Stats,
    a dataclass, lists them all again: asdict and the summary see no difference)."""


cdef inline int64_t _floor_seconds(int64_t ns) noexcept:
    """ns // 1_000_000_000 as Python floors it (the module divides as C does: toward zero)."""
    cdef int64_t q = ns // 1_000_000_000
    if q * 1_000_000_000 > ns:
        q -= 1
    return q


cdef inline bint _may_change_database(bytes payload):
    """False when Replayer._track_database surely finds nothing (sqltext.worth_scanning: a first byte
    that starts no USE, PREPARE, DEALLOCATE, DROP or CREATE, nor whitespace or a comment, and no `;` a
    second statement could follow): the common query skips a Python call. True: it decides."""
    if len(payload) < 3:
        return False
    return <unsigned char>payload[1] in _FIRST_BYTES or payload.find(b";", 1) >= 0


def may_change_database(bytes payload):
    """The pre-check above, for tests (it must never say False where worth_scanning says True)."""
    return _may_change_database(payload)


cdef inline bint _is_record(rec):
    """A capture Record whose fields are what its type says: read by position."""
    return type(rec) is Record and type((<tuple>rec)[R_PAYLOAD]) is bytes and len(<bytes>(<tuple>rec)[R_PAYLOAD]) > 0


cdef class EngineCore:
    # the attributes are declared in _engine.pxd (the checkpoint's hooks read them too)

    def __cinit__(self):
        self.FAST_PATH = True
        self._released = []

    # ---- reading ---------------------------------------------------------------------------------
    def _dispatch_all(self, list records):
        """Replayer._dispatch for each record of a batch read: a command or a close of a connection
        already known and not lost while idle here, anything else (everything with FAST_PATH off)
        through Replayer._dispatch_read, the reference."""
        cdef Conn conn
        cdef int kind
        cdef int64_t end_ns, start_ns
        cdef tuple r
        cdef StatsCore st = self.stats
        for rec in records:
            if not self.FAST_PATH or not _is_record(rec):  # an empty command too: Replayer._skip_empty
                self._dispatch(rec)
                continue
            if self.checkpoint is not None and not self.checkpoint.on_read(rec):
                continue  # done before a resume
            r = <tuple>rec
            kind = r[R_KIND]
            conn_id = r[R_CONN_ID]
            found = self.conns.get(conn_id) if kind == KIND_COMMAND or kind == KIND_CONN_CLOSE else None
            if found is None or (<Conn>found).lost_idle:
                self._dispatch_read(rec)
                continue
            conn = <Conn>found
            end_ns = r[R_END]
            if end_ns > self._read_ns:
                self._read_ns = end_ns  # how far the input has been read (KILLs wait for their target)
            if kind == KIND_COMMAND:
                st.read += 1
                start_ns = r[R_START]
                if not self.first_command_ns:
                    self.first_command_ns = start_ns
                self.last_command_ns = start_ns
                ticket = self.planner.note(conn_id, rec)
            else:
                ticket = self.planner.note_close(conn_id, rec)
            conn.tickets.append(ticket)
            conn.queue.append(rec)
            self.queued += 1
            if self.queued > st.peak_queued:
                st.peak_queued = self.queued
            if len(conn.queue) == 1 and not conn.busy:
                self._schedule_c(conn)

    # ---- results ---------------------------------------------------------------------------------
    def _on_result(self, client, result):
        # a client callback that raises would leave its connection busy for ever: the replay would
        # stall without a word; stop it instead, saying why
        try:
            if not (self.FAST_PATH and type(result) is CommandResult and self._result_fast(client, result)):
                self._handle_result(client, result)
        except Exception as e:  # noqa: BLE001
            self._internal_failure(e)

    cdef bint _result_fast(self, client, CommandResult result) except -1:
        """A production command that succeeded on replay as it needed to: compared, then the next one.
        A pin's SET that succeeded: nothing to do. False (nothing done) for anything else:
        Replayer._handle_result."""
        owner = (<ClientCore>client).owner if isinstance(client, ClientCore) else client.owner
        if type(owner) is not Conn:
            return False
        cdef Conn conn = <Conn>owner
        rec = conn.inflight
        if result.tag is _PIN_TAG and result.outcome == OUTCOME_OK:
            return True  # (Replayer._on_internal_result: a pin that failed is reported)
        if result.tag is not None or result.outcome != OUTCOME_OK or not _is_record(rec):
            return False
        cdef tuple r = <tuple>rec
        cdef bytes payload = <bytes>r[R_PAYLOAD]
        cdef int cmd = <unsigned char>payload[0]
        if cmd != COM_QUERY and cmd != COM_STMT_EXECUTE:
            return False
        cdef int captured = r[R_OUTCOME]
        if result.affected_rows == 0 and captured == OUTCOME_OK and r[R_AFFECTED] > 0 and conn.again is not rec:
            return False  # changed nothing here: maybe sent again after the writes that overlapped it
        cdef int64_t now = monotonic_ns()
        if self.checkpoint is not None:  # counted once the command is done (fastproxy/replay/checkpoint.py)
            self.checkpoint.result(conn, rec, result, now)
        else:
            self._compare_now_c(conn, rec, result, now)
        if (result.schema is not None or (cmd == COM_QUERY and _may_change_database(payload))) and \
                self._track_database(conn, rec, result):
            return True  # asking the server first: _next once it answered
        self._consume_c(conn)
        self._schedule_c(conn)
        return True

    def _compare_now(self, conn, rec, CommandResult result, now):
        """A command's result: the verdict (observer), the summary's counters, the failures. `conn` is
        a Conn, or what the checkpoint kept of one (its HeldConn) for a result counted later."""
        self._compare_now_c(conn, rec, result, now)

    cdef int _compare_now_c(self, conn, rec, CommandResult result, int64_t now) except -1:
        cdef int64_t start_ns, end_ns, sent_ns
        cdef int captured
        observer = self.observer
        if observer is not None:
            if isinstance(observer, ObserverCore):  # the verdict's hook: a C call, no argument tuple
                (<ObserverCore>observer).call_c(conn, rec, result, now)
            else:
                observer(conn, rec, result, now)
        cdef StatsCore st = self.stats
        st.replayed += 1
        if type(rec) is Record:
            end_ns = (<tuple>rec)[R_END]
            start_ns = (<tuple>rec)[R_START]
            captured = (<tuple>rec)[R_OUTCOME]
        else:
            end_ns = rec.end_ns
            start_ns = rec.start_ns
            captured = rec.outcome
        if end_ns > start_ns:
            sent_ns = (<Conn>conn).sent_ns if type(conn) is Conn else conn.sent_ns
            st.captured_ns += end_ns - start_ns
            st.replayed_ns += now - sent_ns
        if result.outcome == OUTCOME_ERR:
            # err_code 0: the input knew that it failed, not how (TiProxy captures)
            err_code = (<tuple>rec)[R_ERR_CODE] if type(rec) is Record else rec.err_code
            if captured == OUTCOME_ERR and (err_code == result.err_code or err_code == 0):
                st.same_errors += 1
                return 0
            if captured == OUTCOME_OK or captured == OUTCOME_ERR:
                if conn.not_rebuilt:
                    self._add_failure_not_rebuilt(conn, rec, result)
                    return 0
                st.failed += 1
                self._add_failure(conn, rec, result)
        elif captured == OUTCOME_ERR and result.outcome == OUTCOME_OK:
            st.fixed += 1
        return 0

    # ---- consuming -------------------------------------------------------------------------------
    def _consume(self, Conn conn):
        """The head command of `conn` is finished (replayed, filtered or skipped)."""
        return self._consume_c(conn)

    cdef bint _consume_c(self, Conn conn) except -1:
        conn.busy = False
        conn.inflight = None
        if conn.nsent > 0:
            conn.nsent -= 1
        queue = conn.queue
        if queue:
            queue.popleft()
            self.queued -= 1
            ticket = conn.tickets.popleft()
            if ticket is not None:
                self._finish_c(conn, <Ticket?>ticket)
            if self.checkpoint is not None:
                self.checkpoint.consumed(conn, ticket)
        if conn.nsent > 0 and queue:
            # a pipelined command is the head in flight now. The server ran it after the one just
            # answered: its latency counts from that answer, not from when it was sent
            conn.busy = True
            conn.inflight = queue[0]
            conn.sent_ns = monotonic_ns()
        else:
            conn.nsent = 0
        return True

    def _next(self, Conn conn):
        """Asynchronous completion of the head command: move on to the next one."""
        self._consume_c(conn)
        self._schedule_c(conn)

    def _finish(self, Conn conn, Ticket ticket):
        """The head command completed (or will never run): its events are done on replay."""
        self._finish_c(conn, ticket)

    cdef int _finish_c(self, Conn conn, Ticket ticket) except -1:
        released = self.planner.order.finish(ticket)
        if released:
            self._released.extend(released)
        if ticket.flags & TXN_END:
            conn.txn.reset_c()
        return 0

    # ---- scheduling ------------------------------------------------------------------------------
    def _schedule(self, Conn conn):
        """Send `conn`'s head command now if it is due (and what it depends on has completed), else
        put it on the heap (or park it). Commands consumed without a round trip (filtered, closes)
        are handled in this loop, not by recursion."""
        self._schedule_c(conn)

    cdef int _schedule_c(self, Conn conn) except -1:
        cdef int64_t now = monotonic_ns()
        cdef int64_t due, start_ns
        cdef int gate
        cdef double speed = self.opt.speed
        queue = conn.queue
        try:
            while queue and not conn.busy:
                # Replayer.due_ns, inlined: this runs for every command
                if speed <= 0:
                    due = 0
                else:
                    head = queue[0]
                    start_ns = (<tuple>head)[R_START] if type(head) is Record else head.start_ns
                    due = self._start_mono + <int64_t>(<double>(start_ns - self.capture_start_ns) / speed)
                conn.due_ns = due
                if due > now + _PACE_SLACK_NS:
                    self.heap.push_c(due, conn.idx)
                    if self._timer is None or due < self._timer_due:
                        self._arm(due)
                    return 0
                gate = self._gate_c(conn, now)
                if gate == _PARKED or gate == _BUSY:
                    return 0  # comes back through _drain_released / the transaction sent again
                if gate == _FIRE and not self._fire_c(conn, now):
                    break  # sent: its response continues through _next
            if conn.busy:
                if self.pipeline > 1 and conn.nsent > 0 and speed <= 0:
                    self._fill_pipeline_c(conn, now)
                return 0
            self._forget_if_finished(conn)
        finally:
            if self._released and not self._draining:
                self._drain_released_c()
        return 0

    def _drain_released(self):
        """Schedule the parked connections whose requirement was met (iteratively, not recursively)."""
        self._drain_released_c()

    cdef int _drain_released_c(self) except -1:
        cdef list released = self._released
        cdef Py_ssize_t i = 0
        cdef Conn conn
        self._draining = True
        try:
            while i < len(released):
                found = self.by_idx.get(released[i])
                i += 1
                if found is None:
                    continue
                conn = <Conn?>found
                if conn.parked:
                    conn.parked = False
                    if conn.queue and not conn.busy:
                        self._schedule_c(conn)
            del released[:]
        finally:
            self._draining = False
        return 0

    def _gate(self, Conn conn, now):
        """May the head command go now? FIRE, PARKED (it waits for another connection's command),
        or CONSUMED (it belongs to a transaction aborted on replay: not sent)."""
        return self._gate_c(conn, now)

    cdef int _gate_c(self, Conn conn, int64_t now) except -1:
        ticket = conn.tickets[0]
        if conn.txn.aborted and self._skip_aborted(conn, ticket):
            return _CONSUMED
        if ticket is None:
            return _FIRE
        cdef Ticket t = <Ticket?>ticket
        if self.planner.order.ready(t, conn.idx):
            if conn.parked_ns:
                self.stats.causal_wait_ns += now - conn.parked_ns
                conn.parked_ns = 0
            if t.flags & PROD_LOCK_ERROR and self.opt.whole_transactions:
                return self._production_lock_error(conn, t)
            return _FIRE
        conn.parked = True
        if not conn.parked_ns:
            conn.parked_ns = now
            self.stats.causal_waits += 1
        return _PARKED

    # ---- firing ----------------------------------------------------------------------------------
    cdef bint _fire_c(self, Conn conn, int64_t now) except -1:
        """Replayer._fire for the common case; True if the head command was consumed at once."""
        rec = conn.queue[0]
        client = conn.client
        # a dry run's client (dryrun.DryClient) is not a ClientCore: read as any object
        cdef bint core = isinstance(client, ClientCore)
        if not self.FAST_PATH or not _is_record(rec) or client is None or (
                (<ClientCore>client).closed if core else client.closed):
            return self._fire(conn, now)
        cdef tuple r = <tuple>rec
        cdef int kind = r[R_KIND]
        if kind != KIND_COMMAND:
            return self._fire(conn, now)
        cdef bytes payload = <bytes>r[R_PAYLOAD]
        cdef int cmd = <unsigned char>payload[0]
        if cmd == COM_QUERY:
            if PLACEHOLDER_BYTES in payload or _kill_match(payload, 1) is not None:
                return self._fire(conn, now)  # a session command (engine._session_command)
        elif cmd != COM_STMT_EXECUTE or len(payload) < 5:
            return self._fire(conn, now)
        cdef int captured = r[R_OUTCOME]
        if captured == OUTCOME_BACKEND_LOST or self.opt.readonly:
            return self._fire(conn, now)
        if cmd == COM_STMT_EXECUTE:
            captured_id = stmt_id_of(payload)
            replay_id = conn.stmt_map.get(captured_id)
            if replay_id is None:
                return self._fire(conn, now)  # re-prepared first
        self._started_c(conn, rec, now)
        if cmd == COM_STMT_EXECUTE:
            sent = self._remap_c(conn, captured_id, replay_id, payload)
            if sent is None:
                return self._consume_c(conn)
        else:
            sent = payload
        # LOCAL INFILE files of this command (capture.local-infile), else none: empty files
        files = conn.infiles.pop(r[R_START], None) if conn.infiles else None
        if core:
            (<ClientCore>client).infiles = files
        else:
            client.infiles = files
        self._send_c(conn, sent)
        return False

    # ---- pipelining (--pipeline, speed 0) ---------------------------------------------------------
    cdef int _fill_pipeline_c(self, Conn conn, int64_t now) except -1:
        """Send the commands after those in flight while they may go before their predecessors'
        answers: plain reads (the planner's PLAIN_READ) behind a plain read, their causal requirements
        met, up to `pipeline` in flight. The server runs a connection's commands in the order it
        reads them, so each still runs after the one before it; what changes is that the replayer
        does not wait for a round trip in between."""
        client = conn.client
        if not isinstance(client, ClientCore) or (<ClientCore>client).closed:
            return 0  # a dry run's client, or none (its connection lost): one at a time
        cdef TxnLog txn = conn.txn
        if (conn.pin_dirty or txn.undone or txn.aborted or txn.retry is not None or conn.infiles
                or conn.pending_payload is not None):
            return 0
        if conn.nsent >= self.pipeline or len(conn.queue) <= conn.nsent:
            return 0  # full, or nothing queued behind what is in flight
        if conn.nsent == 1 and not self._pipelinable_c(conn, 0, True):  # (more in flight: an earlier fill checked it)
            return 0
        cdef bint corked = (<ClientCore>client).cork()  # what this fills leaves in one send
        try:
            self._fill_c(conn, <ClientCore>client, now)
        finally:
            if corked:
                (<ClientCore>client).uncork()
        return 0

    cdef int _fill_c(self, Conn conn, ClientCore client, int64_t now) except -1:
        queue = conn.queue
        cdef Py_ssize_t i
        cdef int flags
        cdef Ticket ticket
        while conn.nsent < self.pipeline:
            i = conn.nsent
            if len(queue) <= i or not self._pipelinable_c(conn, i, False):
                return 0
            rec = queue[i]
            ticket = <Ticket>conn.tickets[i]
            if not self.planner.order.met(ticket):
                return 0  # it waits for another connection: it goes as the head, parked if need be
            payload = <bytes>(<tuple>rec)[R_PAYLOAD]
            if <unsigned char>payload[0] == COM_STMT_EXECUTE:
                captured_id = stmt_id_of(payload)
                replay_id = conn.stmt_map.get(captured_id)
                if replay_id is None:
                    return 0  # re-prepared first: as the head
                if (conn.stmt_params.get(captured_id, 0) and captured_id not in conn.types_bound
                        and not execute_types_at(payload, conn.stmt_params)):
                    return 0  # its parameter types put back (or said unknown) as the head, once
                sent = self._remap_c(conn, captured_id, replay_id, payload)
                if sent is None:
                    return 0  # (not reached: types are bound)
            else:
                sent = payload
            self._started_c(conn, rec, now)
            self.stats.pipelined += 1
            flags = ticket.flags
            if flags & IN_TXN:
                self.stats.pipelined_in_txn += 1
                if self.opt.whole_transactions:  # sent again, in order, if its transaction is retried
                    conn.txn.entries.append((rec, sent, None, flags))
            client.send(sent, None)
        return 0

    cdef bint _pipelinable_c(self, Conn conn, Py_ssize_t i, bint head) except -1:
        """Whether the i-th queued command of `conn` is one a pipeline may hold: a plain read, in a
        transaction or not; as the `head` (what the others go behind), the read or BEGIN that starts
        a transaction too. Never behind a write: a write may deadlock, and its transaction is then
        sent again from its start (fastproxy/replay/transactions.py) with nothing in flight behind it."""
        ticket = conn.tickets[i]
        if ticket is None:
            return False
        cdef int flags = (<Ticket>ticket).flags
        flags &= ~(IN_TXN | TXN_BEGIN | NOT_ROLES) if head else ~(IN_TXN | NOT_ROLES)
        if flags != PLAIN_READ:
            return False  # not a plain read, or a pin / another transaction role on it
        rec = conn.queue[i]  # a command that succeeded in production, no rows affected (the flag says so)
        if not _is_record(rec):
            return False
        cdef bytes payload = <bytes>(<tuple>rec)[R_PAYLOAD]
        if len(payload) < 5:
            return False
        cdef int cmd = <unsigned char>payload[0]
        if cmd == COM_QUERY:
            # session commands (placeholders, KILL), and what may change the database, wait for
            # their answers (engine._session_command, Replayer._track_database)
            return not (PLACEHOLDER_BYTES in payload or _kill_match(payload, 1) is not None
                        or _may_change_database(payload))
        return cmd == COM_STMT_EXECUTE

    def _started(self, Conn conn, rec, now):
        """The head command `rec` goes now: pace and per-second counts, in flight, the checkpoint."""
        self._started_c(conn, rec, now)

    cdef int _started_c(self, Conn conn, rec, int64_t now) except -1:
        if self.opt.speed > 0:
            self.lag.observe(now - conn.due_ns)
        sec = _floor_seconds(now - self._start_mono)
        cdef dict per_second = self.stats.per_second
        per_second[sec] = per_second.get(sec, 0) + 1
        conn.busy = True
        conn.nsent += 1
        if conn.nsent == 1:  # pipelined commands behind it (_fill_pipeline_c) become `inflight` in turn
            conn.inflight = rec
            conn.sent_ns = now
        if self.checkpoint is not None:
            self.checkpoint.sent(conn)
        return 0

    def _remap(self, Conn conn, captured_id, replay_id, payload):
        """The statement command with the replay statement id. An execute also needs parameter types
        bound on this server: clients send them once after a prepare, so after a re-prepare (open
        before the capture, reconnect, reset) the last captured types are put back in. None if they
        are unknown (reported, not sent: the server would only answer "incorrect arguments")."""
        return self._remap_c(conn, captured_id, replay_id, payload)

    cdef object _remap_c(self, Conn conn, captured_id, replay_id, payload):
        # a connection's statements are often prepared in the same order on replay: the same ids
        remapped = payload if replay_id == captured_id and len(payload) >= 5 else with_stmt_id(payload, replay_id)
        if payload[0] != COM_STMT_EXECUTE:
            return remapped
        stmt_params = conn.stmt_params
        types_at = execute_types_at(payload, stmt_params)  # keyed by the captured statement id
        if types_at:  # this execute binds types itself: remember them
            conn.stmt_types[captured_id] = payload[types_at:types_at + 2 * stmt_params[captured_id]]
            conn.types_bound.add(captured_id)
            return remapped
        n = stmt_params.get(captured_id, 0)
        if n == 0 or captured_id in conn.types_bound or len(payload) <= execute_flag_at(n):
            return remapped
        types = conn.stmt_types.get(captured_id)
        if types is None:
            self.stats.skipped += 1
            self.report.add_other("unknown parameter types", f"statement {captured_id} of connection {conn.conn_id}: "
                                  f"re-prepared on replay, but the capture never saw its parameter types",
                                  time.time_ns())
            return None
        conn.types_bound.add(captured_id)
        flag_at = execute_flag_at(n)
        return remapped[:flag_at] + b"\x01" + types + remapped[flag_at + 1:]

    cdef int _send_c(self, Conn conn, payload) except -1:
        """Replayer._send for a command with no transaction to bring back first (pinned: _send_pinned_c)."""
        tickets = conn.tickets
        cdef int flags = 0
        if tickets:
            ticket = tickets[0]
            if ticket is not None:
                flags = (<Ticket?>ticket).flags
        if conn.txn.undone or flags & TXN_CHAINED:  # (Replayer._send opens a chained transaction first)
            self._send(conn, payload)
            return 0
        if flags & PIN_FLAGS or conn.pin_dirty:
            return self._send_pinned_c(conn, payload, flags)
        return self._keep_and_send_c(conn, payload, None, flags)

    def _send_with_pins(self, Conn conn, payload, int flags):
        """The pinned send below, for Replayer._send (the reference path shares it)."""
        self._send_pinned_c(conn, payload, flags)

    cdef int _send_pinned_c(self, Conn conn, payload, int flags) except -1:
        """A command pinned to production's time or id (fastproxy/replay/pinning.py), or one after such a
        command (the session's pins reset): its SET and the command in one write, kept for a retry."""
        rec = conn.inflight
        if type(rec) is Record:
            start_ns, last_id = (<tuple>rec)[R_START], (<tuple>rec)[R_LAST_INSERT_ID]
        else:
            start_ns, last_id = rec.start_ns, rec.last_insert_id
        payload, prefix, conn.pin_dirty = pin(payload, start_ns, last_id, flags, conn.pin_dirty)
        if flags & PIN_TIME:
            self.stats.pinned_time += 1
        if flags & PIN_ID:
            self.stats.pinned_insert_id += 1
        if prefix is None:
            return self._keep_and_send_c(conn, payload, None, flags)
        client = conn.client
        cdef bint core = isinstance(client, ClientCore)
        # False: corked already (several answers in one read): whoever corked uncorks
        cdef bint corked = (<ClientCore>client).cork() if core else client.cork()
        try:
            if core:
                (<ClientCore>client).send(prefix, _PIN_TAG)
            else:
                client.send(prefix, _PIN_TAG)
            self._keep_and_send_c(conn, payload, prefix, flags)
        finally:
            if corked:
                if core:
                    (<ClientCore>client).uncork()
                else:
                    client.uncork()
        return 0

    def _keep_and_send(self, Conn conn, payload, prefix, flags):
        """Send the head command (after its pins, `prefix`), kept for a retry of its transaction."""
        self._keep_and_send_c(conn, payload, prefix, flags)

    cdef int _keep_and_send_c(self, Conn conn, payload, prefix, int flags) except -1:
        cdef TxnLog txn
        if self.opt.whole_transactions:
            txn = conn.txn
            if (flags & TXN_BEGIN or not flags & IN_TXN) and (txn.entries or txn.attempts):
                txn.reset_c()
            txn.entries.append((conn.inflight, payload, prefix, flags))
        conn.sent = (payload, prefix)
        client = conn.client
        if isinstance(client, ClientCore):
            (<ClientCore>client).send(payload, None)
        else:
            client.send(payload, None)
        return 0
