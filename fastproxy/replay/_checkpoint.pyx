# cython: language_level=3
"""The checkpoint's per-command hooks in C (fastproxy/replay/checkpoint.py, Checkpoint's base class):
every replayed command passes through on_read, sent, result (its `_count`) and consumed. The policy
they call stays in checkpoint.py: the records a resumed replay has done already (on_read hands the
records of a resume to Checkpoint.on_read_resuming, the Python reference), results held inside a
transaction, snapshots when the journal is full.

The attributes are Checkpoint's, set and read from Python as before; `Track` is its `_Track`.
"""
from collections import deque

from cpython.bytes cimport PyBytes_AS_STRING

from fastproxy._packet cimport OUTCOME_ERR, CommandResult, names_statement, stmt_id_of
from fastproxy.capture.record_fields cimport R_PAYLOAD
from fastproxy.replay._client cimport ClientCore
from fastproxy.replay._conn cimport Conn
from fastproxy.replay._engine cimport EngineCore
from fastproxy.replay._journal cimport JournalWriter
from fastproxy.replay._scheduler cimport Ticket
from fastproxy.report._observe cimport ObserverCore, fits62 as _fits

from fastproxy.capture.record import KIND_COMMAND as _KIND_COMMAND, KIND_CONN_CLOSE as _KIND_CONN_CLOSE, Record
from fastproxy.constants import COMMAND
from fastproxy.replay.causal import IN_TXN as _IN_TXN, TXN_END as _TXN_END, head_ticket

cdef object _Record = Record
cdef long KIND_COMMAND = _KIND_COMMAND
cdef long KIND_CONN_CLOSE = _KIND_CONN_CLOSE
cdef long IN_TXN = _IN_TXN
cdef long TXN_END = _TXN_END
cdef frozenset STMT_COMMANDS = frozenset({COMMAND.COM_STMT_EXECUTE, COMMAND.COM_STMT_SEND_LONG_DATA,
                                          COMMAND.COM_STMT_CLOSE, COMMAND.COM_STMT_RESET, COMMAND.COM_STMT_FETCH})


cdef class Track:
    """One captured connection's progress (fields: _checkpoint.pxd)."""

    def __init__(self):
        self.pending = deque()
        self.consumed = 0
        self.done = -1
        self.inflight = -1
        self.inflight_txn = False
        self.thread = 0
        self.answered = False
        self.held = None
        self.ahead = 0
        self.unsent = []


cdef class HeldConn:
    """What the verdict and the failure report read of a connection, as it was when a result arrived
    that is counted later (inside a transaction): the connection moves on meanwhile."""

    cdef public object conn_id
    cdef public object not_rebuilt
    cdef public object sent_ns
    cdef public object due_ns
    cdef public object db
    cdef public dict stmt_sql
    cdef public dict stmt_types
    cdef public dict stmt_params
    cdef public object ticket  # the command's causal Ticket: its flags may change after (ORDER_UNKNOWN)

    def __init__(self, conn, rec):
        _hold(self, conn, rec)


cdef inline object _get(d, key):
    return (<dict>d).get(key) if type(d) is dict else d.get(key)


cdef int _hold(HeldConn self, conn, rec) except -1:
    """HeldConn.__init__; result() calls it without a Python call (every result inside a transaction)."""
    cdef Conn c
    if type(conn) is Conn:  # its fields read as fields
        c = <Conn>conn
        self.conn_id = c.conn_id
        self.not_rebuilt = list(c.not_rebuilt)
        self.sent_ns = c.sent_ns
        self.due_ns = c.due_ns
        self.db = c.db
        sqls, types, params = c.stmt_sql, c.stmt_types, c.stmt_params
        self.ticket = c.tickets[0] if c.tickets and c.queue and c.queue[0] is rec else None
    else:
        self.conn_id = conn.conn_id
        self.not_rebuilt = list(conn.not_rebuilt)
        self.sent_ns = conn.sent_ns
        self.due_ns = conn.due_ns
        self.db = conn.db
        sqls = types = params = None
        self.ticket = head_ticket(conn, rec)
    self.stmt_sql = {}
    self.stmt_types = {}
    self.stmt_params = {}
    payload = (<tuple>rec)[R_PAYLOAD] if type(rec) is _Record else rec.payload
    if type(payload) is bytes:
        if len(<bytes>payload) < 5:
            return 0
        if not names_statement((<const unsigned char *>PyBytes_AS_STRING(payload))[0]):
            return 0
        sid = stmt_id_of(<bytes>payload)
    elif len(payload) >= 5 and payload[0] in STMT_COMMANDS:
        sid = int.from_bytes(payload[1:5], "little")
    else:
        return 0
    # its statement only
    if sqls is None:
        sqls, types, params = conn.stmt_sql, conn.stmt_types, conn.stmt_params
    value = _get(sqls, sid)
    if value is not None:
        self.stmt_sql[sid] = value
    value = _get(types, sid)
    if value is not None:
        self.stmt_types[sid] = value
    value = _get(params, sid)
    if value is not None:
        self.stmt_params[sid] = value
    return 0


_COPIED = ("outcome", "err_code", "rows", "columns", "hash_ordered", "hash_unordered", "affected_rows", "warnings",
           "sql_state", "err_msg")


cpdef CommandResult result_copy(r):
    """What of a result the verdict, the failures and the journal read, kept for later (it is reused)."""
    cdef CommandResult c, src
    if type(r) is not CommandResult:
        c = CommandResult(r.cmd)
        for name in _COPIED:
            setattr(c, name, getattr(r, name))
        return c
    src = <CommandResult>r  # _COPIED, field by field in C
    c = CommandResult.__new__(CommandResult)
    c.cmd = src.cmd
    c.outcome = src.outcome
    c.err_code = src.err_code
    c.rows = src.rows
    c.columns = src.columns
    c.hash_ordered = src.hash_ordered
    c.hash_unordered = src.hash_unordered
    c.affected_rows = src.affected_rows
    c.warnings = src.warnings
    c.sql_state = src.sql_state
    c.err_msg = src.err_msg
    return c


cdef inline bint _in_transaction(ticket) except -1:
    """The command goes on inside its production transaction (done only when that ends)."""
    if ticket is None:
        return False
    cdef long flags = (<Ticket>ticket).flags if type(ticket) is Ticket else ticket.flags
    return (flags & IN_TXN) != 0 and (flags & TXN_END) == 0


cdef int _flush_out(object owner, object track) except -1:
    """ClientCore.write, before it hands a command's bytes to the socket: its `S` entries now."""
    return (<CheckpointHooks>owner)._out(<Track>track)


cdef class CheckpointHooks:
    # the attributes are declared in _checkpoint.pxd (the engine calls the hooks from C)

    cdef Track _pending(self, conn_id):
        """The Track of `conn_id` if a record of it is read and not yet consumed, else None."""
        track = self.tracks.get(conn_id)
        if track is None or len((<Track>track).pending) <= (<Track>track).consumed:
            return None
        return <Track>track

    cpdef on_read(self, rec):
        """Every record the engine reads, first. False: it is done (the engine does nothing more)."""
        seq = self.seq
        if seq < self._resume_until or seq < self._read_before or self.results or not self._clock_set:
            return self.on_read_resuming(rec)  # a resumed replay, up to its position
        self.seq = seq + 1
        cdef long kind = rec.kind
        if kind == KIND_COMMAND or kind == KIND_CONN_CLOSE:
            conn_id = rec.conn_id
            track = self.tracks.get(conn_id)
            if track is None:
                track = self.tracks[conn_id] = Track()
            (<Track>track).pending.append(seq)
        return True

    cpdef sent(self, Conn conn):
        """The head command of `conn` is going out: it counts as executed once its bytes leave (_out)."""
        conn_id = conn.conn_id
        cdef Track track = self._pending(conn_id)
        if track is None:
            return
        cdef bint in_txn
        tickets = conn.tickets
        if conn.nsent > 1 and track.inflight >= 0:
            # pipelined behind the command in flight: outside a transaction done once sent, as it is;
            # inside one, done when the transaction ends
            if len(track.pending) <= track.consumed + track.ahead + 1:
                return
            track.ahead += 1
            seq = track.pending[track.consumed + track.ahead]
            in_txn = len(tickets) >= conn.nsent and _in_transaction(tickets[conn.nsent - 1])
        else:
            seq = track.pending[track.consumed]
            in_txn = _in_transaction(tickets[0] if tickets else None)
            track.inflight = seq
            track.inflight_txn = in_txn
            track.answered = False
        track.unsent.append((conn_id, seq, in_txn))
        client = conn.client
        if isinstance(client, ClientCore):
            track.thread = (<ClientCore>client).connection_id
            # journaled when its bytes go to the socket (ClientCore.write): a COMMIT held back meanwhile
            # (corked behind other answers, its transaction redone first, a re-prepare) and lost with
            # the process is not one the server ran
            (<ClientCore>client).out_track = track
            (<ClientCore>client).out_owner = self
            (<ClientCore>client).out_flush = _flush_out
            if (<ClientCore>client).out_state == 0:
                (<ClientCore>client).out_state = 1
            return
        if client is not None:
            track.thread = client.connection_id
        self._out(track)

    cdef int _out(self, Track track) except -1:
        """The commands of `track` handed to the client leave now (or are done without leaving): their
        `S` entries, each after the results of the transaction it ends are counted."""
        cdef JournalWriter journal
        unsent = track.unsent
        while unsent:
            conn_id, seq, in_txn = unsent[0]
            if not in_txn and track.held:  # the transaction ends: its commands are done, their results count
                self._count_held(track)  # (a snapshot it writes has the transaction not done)
            del unsent[0]  # out: a snapshot below has it sent
            journal = self._journal
            if journal is not None and not journal.sent_c(conn_id, seq, in_txn, track.thread):
                self._write_snapshot()  # the journal is full: the checkpoint takes it all, and empties it
                if self._journal is not None:
                    self._journal.sent_c(conn_id, seq, in_txn, track.thread)
        return 0

    cpdef result(self, conn, rec, result, now):
        """The engine's `_compare`: the result of the head command of `conn`. Counted now if the command
        is done, else when its transaction ends."""
        cdef Track track
        found = self.tracks.get((<Conn>conn).conn_id if type(conn) is Conn else conn.conn_id)
        if found is None:
            self._count_c(conn, rec, result, now, -1)
            return
        track = <Track>found
        if track.inflight < 0 or track.answered:
            self._count_c(conn, rec, result, now, -1)  # not one the position follows
            return
        track.answered = True
        if track.inflight_txn:
            if track.held is None:
                track.held = []
            held_conn = HeldConn.__new__(HeldConn)
            _hold(<HeldConn>held_conn, conn, rec)
            track.held.append((held_conn, rec, result_copy(result), now, track.inflight))
            return
        self._count_c(conn, rec, result, now, track.inflight)

    def _count(self, conn, rec, result, now, seq=-1):
        """Journal the result (if it belongs to a position), then count it: the verdict, the failures
        and the summary's counters (Replayer._compare_now). `conn`: a Conn, or a HeldConn."""
        self._count_c(conn, rec, result, now, seq)

    def _count_all(self, held):
        """_count each (conn, rec, result, now, seq) of `held` in turn (a transaction's results)."""
        for entry in held:
            conn, rec, result, now, seq = entry
            self._count_c(conn, rec, result, now, seq)

    cdef int _count_c(self, conn, rec, result, now, seq) except -1:
        cdef long long c_now = 0, c_sent, c_due
        cdef bint has_lag, in_c
        cdef EngineCore engine = <EngineCore?>self.engine  # the Replayer it is attached to
        cdef JournalWriter journal = self._journal
        if journal is not None and seq >= 0:
            observer = engine.observer
            if isinstance(observer, ObserverCore):
                second = (<ObserverCore>observer).replay_second(now)
            else:
                second = observer.replay_second(now) if hasattr(observer, "replay_second") else 0
            has_lag = engine.opt.speed > 0
            in_c = False
            if type(conn) is Conn and type(now) is int:  # the differences in C when they cannot overflow
                c_sent, c_due = (<Conn>conn).sent_ns, (<Conn>conn).due_ns
                try:
                    c_now = now
                    in_c = _fits(c_now) and _fits(c_sent) and _fits(c_due)
                except OverflowError:
                    pass
            if in_c:
                conn_id = (<Conn>conn).conn_id
                latency = c_now - c_sent
                lag = c_sent - c_due if has_lag else None
            else:
                conn_id, sent_ns, due_ns = conn.conn_id, conn.sent_ns, conn.due_ns
                latency = now - sent_ns
                lag = sent_ns - due_ns if has_lag else None
            if not journal.result_c(conn_id, seq, result, latency, second, lag):
                self._write_snapshot()  # full: the snapshot (without this result) empties it
                if self._journal is not None:
                    self._journal.result_c(conn_id, seq, result, latency, second, lag)
        if type(result) is CommandResult and (<CommandResult>result).outcome != OUTCOME_ERR:
            # EngineCore._compare_now adds to the report only for an error: nothing to keep out of it
            engine._compare_now_c(conn, rec, <CommandResult>result, now)
            return 0
        report = engine.report
        on_add = report.on_add
        report.on_add = None  # the failures it adds are in the `R` entry
        try:
            engine._compare_now(conn, rec, result, now)
        finally:
            report.on_add = on_add
        return 0

    cpdef consumed(self, Conn conn, ticket):
        """The head command of `conn` is finished (replayed, filtered, skipped)."""
        conn_id = conn.conn_id
        cdef Track track = self._pending(conn_id)
        if track is None:
            return
        if len(track.unsent) > track.ahead:  # finished without its bytes leaving (answered by ourselves,
            self._out(track)  # never sent): done, as if they had
        seq = track.pending[track.consumed]
        cdef long long c_seq = seq
        if track.inflight == c_seq and not track.answered and not track.inflight_txn and self._journal is not None:
            # sent and done without a result (a session command answered by ourselves, a close of a
            # statement never prepared): not one whose result was lost
            if not self._journal.no_result_c(conn_id, seq):
                self._write_snapshot()
                if self._journal is not None:
                    self._journal.no_result_c(conn_id, seq)
        track.inflight = -1
        if _in_transaction(ticket):
            track.consumed += 1  # done only once its transaction ends
            if track.ahead > 0 and len(track.pending) > track.consumed:
                self._next_pipelined(conn, track)
            return
        if track.held:  # a transaction ended without a command sent (the connection's close): done now
            self._count_held(track)
        pending = track.pending
        for _ in range(track.consumed + 1):
            pending.popleft()
        track.consumed = 0
        track.done = c_seq
        if track.ahead > 0 and pending:
            self._next_pipelined(conn, track)

    cdef int _next_pipelined(self, Conn conn, Track track) except -1:
        """The next pipelined command is the one in flight now (the engine made it the head)."""
        tickets = conn.tickets
        track.ahead -= 1
        track.inflight = track.pending[track.consumed]
        track.inflight_txn = _in_transaction(tickets[0] if tickets else None)
        track.answered = False
        return 0
