# cython: language_level=3
"""Causal order across connections, planned as the capture is read (compiled: the planner runs
once per command read, and its per-statement state is read here as C fields).

What a statement could observe of other connections in production must be in place on replay
before it runs. The capture says when each command started and ended (records are in completion
order), and after each command whether its connection was inside a transaction (status flags,
format version 2). From that, commands become *events* of per-scope sequences
(fastproxy/replay/_scheduler.pyx, CausalOrder):

- a **commit event** makes writes visible: a successful autocommit write, the COMMIT of a
  transaction that wrote, DDL (and the implicit commit it causes);
- a **lock event** takes or releases row locks: DML, SELECT ... FOR UPDATE / FOR SHARE / LOCK IN
  SHARE MODE, named locks (GET_LOCK), LOCK TABLES, and the end of a transaction that locked rows
  (COMMIT, ROLLBACK, a deadlock, the connection closing);
- a **read event** is a consistent (non-locking) read that succeeded: what it answered depends on
  which commits it saw. Inside a transaction the first one takes the transaction's snapshot (under
  REPEATABLE READ every later read of the transaction answers from it, whatever table it reads), so
  it is also an event of the *snapshot* sequence, as is START TRANSACTION WITH CONSISTENT SNAPSHOT.

A statement waits for the commit events that ended before it started, on the scopes of the tables
it touches (a snapshot: on every table); a lock-taking statement (and the end of a transaction that
held locks) also waits for the lock events that ended before it started; a commit event also waits
for the read events that ended before it started on its scopes, and for every snapshot taken
before it started (the reads must not see it: without this, a commit replayed early shows up in a
read that production ran before it, or in a transaction whose snapshot production took before it,
as a false mismatch). So a
row picked from a queue with SKIP LOCKED, a table created then read, an id inserted then updated
elsewhere, a report read inside a transaction while others commit: each follows production. Nothing
else is ordered: plain reads never wait for each other, and nothing waits for commands that were
still running when it started (ordering every command after every earlier-completed one stretches
a replay as soon as latencies jitter).

Scopes: each table's (fastproxy/replay/schema.py joins tables tied by foreign keys, triggers and
views); a statement whose tables are unknown waits for the events of every scope, and an event of
unknown tables is waited for by every statement.

The planner also marks what the engine needs when it sends a command (ticket flags): pin the time
and the auto-increment id (fastproxy/replay/pinning.py), and the command's place in its production
transaction (fastproxy/replay/transactions.py).
"""
from libc.stdint cimport INT64_MIN, int64_t

from fastproxy._packet cimport stmt_id_of
from fastproxy.capture.record_fields cimport (R_AFFECTED, R_END, R_ERR_CODE, R_LAST_INSERT_ID, R_OUTCOME, R_PAYLOAD,
                                              R_START, R_STATUS_FLAGS)
from fastproxy.replay._scheduler cimport CausalOrder, Ticket
from fastproxy.replay._stmtinfo cimport Classifier, StatementInfo

from fastproxy.capture import record as _record
from fastproxy.constants import COMMAND, ER, SERVER_STATUS
from fastproxy.replay import stmtinfo as _stmtinfo
from fastproxy.replay.schema import TableScopes

# Ticket.flags
cpdef enum:
    PIN_TIME = 0x01          # pin the server time to the captured start
    PIN_ID = 0x02            # pin the first auto-increment id to the captured one
    PIN_PREFIX = 0x04        # pin with a SET sent just before (executes, multi-statements, SET STATEMENT ... FOR)
    IN_TXN = 0x10            # runs inside a production transaction
    TXN_BEGIN = 0x20         # opens that transaction
    TXN_END = 0x40           # ends it (COMMIT, ROLLBACK, an implicit commit)
    PROD_LOCK_ERROR = 0x80   # production lost it to a deadlock or lock wait timeout: not replayed (see engine)
    PLAIN_READ = 0x100       # a read that succeeded in production, no rows affected, not locking: may be pipelined
                             # (set only when the planner's mark_reads is: --pipeline). Inside a transaction
                             # (with IN_TXN) only where the isolation is not SERIALIZABLE (txn_reads); on a
                             # BEGIN it says reads may follow it in flight
    READ_EVENT = 0x200       # its only events are read events (what it saw, not what it changed or locked)
    ORDER_UNKNOWN = 0x400    # a read that a commit of its tables overlapped in production (its snapshot did):
                             # which came first is unknown, so a result that differs is no regression (the verdict
                             # sets it apart). Set as late as the commit is read, after the read's own note
    TXN_CHAINED = 0x800      # with TXN_BEGIN: the first statement of a transaction COMMIT (ROLLBACK) AND CHAIN
                             # opened. Sent again (a retry), it needs the transaction opened first: ROLLBACK AND CHAIN

# statement kinds (stmtinfo.py), record outcomes and protocol numbers, as C ints
cdef int SESSION = _stmtinfo.SESSION
cdef int READ = _stmtinfo.READ
cdef int LOCK = _stmtinfo.LOCK
cdef int DDL = _stmtinfo.DDL
cdef int BEGIN = _stmtinfo.BEGIN
cdef int COMMIT = _stmtinfo.COMMIT
cdef int ROLLBACK = _stmtinfo.ROLLBACK
cdef int UNKNOWN = _stmtinfo.UNKNOWN
cdef int OUTCOME_OK = _record.OUTCOME_OK
cdef int OUTCOME_ERR = _record.OUTCOME_ERR
cdef int OUTCOME_UNKNOWN = _record.OUTCOME_UNKNOWN
cdef int COM_QUERY = COMMAND.COM_QUERY
cdef int COM_STMT_EXECUTE = COMMAND.COM_STMT_EXECUTE
cdef int COM_STMT_PREPARE = COMMAND.COM_STMT_PREPARE
cdef int COM_STMT_CLOSE = COMMAND.COM_STMT_CLOSE
cdef int COM_INIT_DB = COMMAND.COM_INIT_DB
cdef int COM_QUIT = COMMAND.COM_QUIT
cdef int COM_RESET_CONNECTION = COMMAND.COM_RESET_CONNECTION
cdef int COM_CHANGE_USER = COMMAND.COM_CHANGE_USER
cdef int ER_LOCK_DEADLOCK = ER.LOCK_DEADLOCK
cdef int ER_LOCK_WAIT_TIMEOUT = ER.LOCK_WAIT_TIMEOUT
cdef int IN_TRANS = SERVER_STATUS.IN_TRANS

_ANY = "#any"  # in a transaction's scope sets: some statement's tables were unknown
cdef object _NO_SCOPE = object()
cdef StatementInfo _UNKNOWN_INFO = StatementInfo(UNKNOWN, None, True)
_UNKNOWN_INFO.generates_id = True
_UNKNOWN_INFO.time = True
cdef Py_ssize_t _CACHE_MAX = 10_000
# Reads (their _Views) are kept while a commit read later may have started before they ended: twice
# the longest commit seen; commits, while a read read later may have started before they ended: twice
# the longest read seen. At least a second (the first long one comes before any measure of it), at
# most 10 s and this many of each. What is dropped earlier than a later command needed is said: a
# read is flagged anyway, a commit is counted (order_unknown_missed)
cdef int64_t _UNSORTED_NS = 2_000_000  # records are in completion order within a reorder window
cdef int64_t _KEEP_MIN_NS = 1_000_000_000
cdef int64_t _KEEP_MAX_NS = 10_000_000_000
cdef Py_ssize_t _KEEP_MAX = 100_000


cdef tuple _SAFE_LEVELS = (b"read committed", b"read-committed", b"read_committed", b"repeatable", b"uncommitted")


cdef bint _may_set_serializable(bytes payload) except -1:
    """Whether a statement may set the SERIALIZABLE isolation level: its text names it, or names an
    isolation with no level known to be safe (`transaction_isolation = 3`, `= ?`). A false alarm only
    turns pipelining inside transactions off."""
    if _names_serializable(payload):
        return True
    if payload.find(b"SOLATION") < 0 and payload.find(b"solation") < 0:
        return False
    cdef bytes lower = payload.lower()
    if b"isolation" not in lower:
        return False
    for level in _SAFE_LEVELS:
        if level in lower:
            return False
    return True


cdef inline bint _names_serializable(bytes payload):
    """Whether a statement's text holds SERIALIZ (any case)."""
    cdef const unsigned char *p = payload
    cdef Py_ssize_t n = len(payload), i, j
    cdef const char *word = b"serializ"
    for i in range(7, n):
        if p[i] | 0x20 != 0x7a:  # z
            continue
        for j in range(8):
            if p[i - 7 + j] | 0x20 != <unsigned char>word[j]:  # (| 0x20: A-Z to a-z)
                break
        else:
            return True
    return False


def may_set_serializable(bytes payload):
    """_may_set_serializable, for tests."""
    return _may_set_serializable(payload)


cdef inline bint _touches(set hit, scope):
    """Whether commits of the roots in `hit` (_ANY: tables unknown) may change what a read of `scope`
    (None: unknown) answers."""
    if not hit:
        return False
    if scope is None or _ANY in hit:
        return True
    for root in scope:
        if root in hit:
            return True
    return False


cdef class _View:
    """What reads answered from: an autocommit read's own moment, or a transaction's snapshot (its
    first read), as the capture timed it; and the commits that overlapped it in production."""
    cdef int64_t start, end
    cdef set hit           # scope roots of the commits that overlapped it (_ANY: tables unknown); None: none
    cdef bint kept         # its reads are kept: a commit read later may still overlap it
    cdef Ticket first      # the first read answered from it, and its scope (most views have only this
    cdef object first_scope  # one, an autocommit read's: held here, no list nor tuple for it)
    cdef list more         # (Ticket, scope) of the later reads (a transaction's), or None

    cdef set add(self, roots):
        """A commit of `roots` (None: unknown tables) overlapped it; returns those roots as a set."""
        cdef set hit = {_ANY} if roots is None else set(roots)
        if self.hit is None:
            self.hit = set(hit)
        else:
            self.hit |= hit
        return hit

    cdef int keep_read(self, Ticket t, scope) except -1:
        """A read answered from it: flagged if a commit read later overlaps it (while it is kept)."""
        if not self.kept:
            return 0
        if self.first is None:
            self.first = t
            self.first_scope = scope
        elif self.more is None:
            self.more = [(t, scope)]
        else:
            self.more.append((t, scope))
        return 0

    cdef int drop_reads(self) except -1:
        """No commit read from now on can overlap it: its reads need not be kept."""
        self.kept = False
        self.first = None
        self.first_scope = None
        self.more = None
        return 0

    cdef int overlapped_by(self, roots) except -1:
        """A commit of `roots` (None: unknown tables) overlapped it: the reads it may have changed are
        flagged ORDER_UNKNOWN. Returns how many were not yet."""
        cdef set hit = self.add(roots)
        cdef Ticket t
        cdef int flagged = 0
        if self.first is not None and not self.first.flags & ORDER_UNKNOWN and _touches(hit, self.first_scope):
            self.first.flags |= ORDER_UNKNOWN
            flagged += 1
        for t, scope in self.more or ():
            if not t.flags & ORDER_UNKNOWN and _touches(hit, scope):
                t.flags |= ORDER_UNKNOWN
                flagged += 1
        return flagged


cdef inline _View _new_view(int64_t start, int64_t end):
    """A _View (made without a Python call: one per autocommit read)."""
    cdef _View view = _View.__new__(_View)
    view.start = start
    view.end = end
    view.kept = True
    return view


cdef inline Py_ssize_t _cut_head(list fifo, Py_ssize_t head) except -1:
    """The new head of a FIFO list whose entries before `head` are dropped: cut them off once they
    are most of it (amortized: each entry is moved at most once more)."""
    if head and (head == len(fifo) or (head > 1024 and head * 2 > len(fifo))):
        del fifo[:head]
        return 0
    return head


cdef inline tuple _fields(rec):
    """A capture Record (a NamedTuple) as the tuple it is, read by field position."""
    if not isinstance(rec, tuple):
        raise TypeError(f"a capture Record expected, not {type(rec).__name__}")
    return <tuple>rec


cdef class _Session:
    """One captured connection as the capture shows it, record by record."""
    def __init__(self):
        self.logged_in = False  # replay logs in with its first command (reconnects come later)
        self.open = False
        self.wrote = set()      # scope roots written by the open transaction
        self.locked = set()     # scope roots it took locks on
        self.lockers = []       # its lock events (Tickets): released when it ends
        self.view = None        # the open transaction's snapshot, once taken (a read event of _snapshot)
        self.chained = False    # its transaction was opened by COMMIT (ROLLBACK) AND CHAIN, no statement yet
        self.stmts = {}         # captured statement id -> what it does (StatementInfo)
        self.app_time = False   # the application set @@timestamp itself: its time is kept
        self.app_ids = False    # the application set insert_id itself


cdef class Planner:
    """Turns each record read from the capture into a Ticket for the engine (or None when the
    command needs nothing): what it waits for, which events it is, and its flags."""

    def __init__(self, scopes=None, causal=True, pin=True, status_flags=True, affected_rows=True, mark_reads=False,
                 txn_reads=True):
        self.scopes = scopes or TableScopes()
        self.causal = causal
        self.pin = pin
        self.status_flags = status_flags  # format version 2: trust SERVER_STATUS_IN_TRANS after each command
        self.affected_rows = affected_rows  # 0 affected rows means it changed nothing (else: unknown)
        self.mark_reads = mark_reads  # flag plain reads PLAIN_READ: the engine pipelines them (--pipeline)
        # reads inside transactions too: a consistent (non-locking) read never waits for a row lock nor
        # deadlocks, so nothing behind it can outlive its transaction. Under SERIALIZABLE a plain SELECT
        # takes shared locks: off where the target's isolation is that or unknown, and from the first
        # statement that names it (SET [GLOBAL|SESSION] TRANSACTION ISOLATION ..., tx_isolation=...)
        self.txn_reads = txn_reads
        self.order = CausalOrder()
        self.classify = Classifier(self.scopes.functions)
        new = self.order.new_sequence
        self._global = (new(), new(), new())    # (commit, lock, read): every event
        self._unknown = (new(), new(), new())   # events whose tables are unknown
        self._snapshot = new()  # read events that took a transaction's snapshot (of every table)
        self._seqs = {}
        self._legacy = {}  # a merged scope still waits for its parts' past
        self._waits_cache = ({}, {}, {})  # [commit 0 | lock 1 | read 2][scope] -> sequences waited on
        self._scope_cache = {}  # tables -> (scopes generation, scope, whether writes need the time)
        self._events_cache = {}
        self._read_events_cache = {}
        self._plans = {}  # StatementInfo -> _plan (by identity)
        self._sessions = {}
        # FIFOs as lists read from a head index (dropped entries: None; the dead head is cut off now
        # and then): typed list access in C, no method call a read
        self._views = []    # recent _Views, in the order their reads ended
        self._commits = []  # recent commit events: (end, start, scope roots or None), in end order
        self._views_head = self._commits_head = 0
        self._longest_read = self._longest_commit = 0
        self._now = 0  # the latest end read
        self._views_gone = self._commits_gone = INT64_MIN  # the latest end of a view (commit) dropped
        self.order_unknown_missed = 0  # commits that may have overlapped reads no longer kept
        self.unknown_scope_statements = 0  # statements ordered against everything (tables not known)
        self.reads_order_unknown = 0  # reads flagged ORDER_UNKNOWN
        self._login = False  # the record being planned is its connection's first: replay logs in for it
        self._owner = -1  # the connection whose record is being planned (its events' owner: CausalOrder.blockers)

    # ---- records --------------------------------------------------------------------------------
    cpdef _Session session(self, conn_id):
        sess = self._sessions.get(conn_id)
        if sess is None:
            sess = self._sessions[conn_id] = _Session()
        return <_Session>sess

    def on_state(self, conn_id, dict state):
        """CONN_STATE: statements prepared before the capture, and whether a transaction is open."""
        cdef _Session sess = self.session(conn_id)
        cdef _View view
        sess.logged_in = True  # open before the capture: its user and database existed then
        for sid, sql in state.get("prepared", []):
            sess.stmts[int(sid)] = self.classify(sql)
        for value in (state.get("session_vars") or {}).values():
            if isinstance(value, str) and "serializ" in value.lower():
                self.txn_reads = False
        if state.get("in_transaction"):
            sess.open = True
            sess.wrote.add(_ANY)
            sess.locked.add(_ANY)
            # its snapshot may be older than the capture: what its reads see is not known
            view = _new_view(0, 0)
            view.hit = {_ANY}
            view.kept = False
            sess.view = view

    cpdef note_close(self, conn_id, rec):
        """CONN_CLOSE: an open transaction is rolled back, its locks released."""
        cdef tuple r = _fields(rec)
        cdef _Session sess = self._sessions.pop(conn_id, None)
        if sess is None or not sess.open or not self.causal:
            return None
        t = Ticket.__new__(Ticket)
        waits, events = self._end_transaction(sess, True, r)
        self.order.note(t, waits, (), r[R_START], events, r[R_START], True, conn_id)
        return t

    cpdef note(self, conn_id, rec):
        cdef tuple r = _fields(rec)
        cdef _Session sess = self.session(conn_id)
        self._owner = conn_id
        if sess.logged_in or not self.causal:
            sess.logged_in = True
            return self._note(conn_id, sess, r)
        # Its first command: replay logs in with it, whatever it is (clients start with SET NAMES,
        # which waits for nothing). The login must come after the accounts and databases other
        # connections had created or granted when it opened: statements of unknown scope (CREATE
        # USER, GRANT, CREATE DATABASE, ...), as for a COM_CHANGE_USER
        sess.logged_in = True
        self._login = True
        try:
            t = self._note(conn_id, sess, r)
            if self._login:  # the command had no ticket of its own
                t = self._ticket(0, (), (), r[R_START], (), 0, True)
            return t
        finally:
            self._login = False

    cdef _note(self, conn_id, _Session sess, tuple r):
        cdef bytes payload = r[R_PAYLOAD]
        cdef StatementInfo info
        if len(payload) == 0:
            return None  # nothing to plan (the engine says and skips such a command)
        cdef int cmd = payload[0]
        if cmd == COM_QUERY:
            info = self.classify.classify_c(payload[1:])
            if self.txn_reads and _may_set_serializable(payload):
                self.txn_reads = False
        elif cmd == COM_STMT_EXECUTE:
            info = sess.stmts.get(stmt_id_of(payload), _UNKNOWN_INFO)
        elif cmd == COM_STMT_PREPARE:
            info = self.classify.classify_c(payload[1:])
            if self.txn_reads and _may_set_serializable(payload):
                self.txn_reads = False
            if r[R_OUTCOME] == OUTCOME_OK:
                sess.stmts[r[R_AFFECTED]] = info  # the capture keeps the statement id there
            if not self.causal or info.kind == SESSION:
                return None
            # preparing resolves tables: it must see tables (and databases) created elsewhere
            return self._ticket(0, self._waits(self._scope(info), 0), (), r[R_START], (), 0, True)
        elif cmd == COM_STMT_CLOSE:
            sess.stmts.pop(stmt_id_of(payload), None)
            return None
        elif cmd == COM_INIT_DB:
            return self._ticket(0, self._waits(None, 0), (), r[R_START], (), 0, True) if self.causal else None
        elif cmd == COM_QUIT or cmd == COM_RESET_CONNECTION or cmd == COM_CHANGE_USER:
            return self._session_end(conn_id, sess, cmd, r)
        else:
            return None  # ping, fetch, long data, statistics, ...: nothing to wait for
        return self._statement(sess, cmd, info, r)

    # ---- one statement ------------------------------------------------------------------------------
    cdef _statement(self, _Session sess, int cmd, StatementInfo info, tuple r):
        cdef int kind = info.kind
        cdef int flags = 0
        cdef int outcome = r[R_OUTCOME]
        cdef int64_t err_code = r[R_ERR_CODE]
        cdef bint before, after, ended, chained, takes_locks, wrote, held, rolled_back, snapshot
        if outcome == OUTCOME_ERR and (err_code == ER_LOCK_DEADLOCK or err_code == ER_LOCK_WAIT_TIMEOUT):
            flags |= PROD_LOCK_ERROR
        if info.sets_time is not None:
            sess.app_time = info.sets_time
        if info.sets_insert_id:
            sess.app_ids = True
        if self.pin:
            flags |= self._pins(sess, cmd, info, r)
        before = sess.open
        after = self._open_after(r, kind, before)
        # COMMIT AND CHAIN (ROLLBACK AND CHAIN) ends its transaction too: the status still says "in a
        # transaction", the next one, opened at once
        ended = before and (not after or kind == BEGIN or kind == DDL or kind == COMMIT or kind == ROLLBACK)
        chained = sess.chained and not flags & PROD_LOCK_ERROR  # (not sent: the next statement starts it)
        if chained:
            sess.chained = False
        if ended and after and outcome == OUTCOME_OK and (kind == COMMIT or kind == ROLLBACK):
            sess.chained = True
        if kind == BEGIN:
            flags |= TXN_BEGIN | IN_TXN
        elif kind != DDL and (before or after):
            flags |= IN_TXN
            if not before:
                flags |= TXN_BEGIN
            elif ended:
                flags |= TXN_END
            elif chained:
                flags |= TXN_BEGIN | TXN_CHAINED
        elif kind == DDL and before:
            flags |= TXN_END
        # not one that answered "n rows" (SELECT ... INTO): finding none on replay, it may be sent again
        # after the writes that overlapped it (Replayer._send_again_later), never with commands behind it
        if self.mark_reads and outcome == OUTCOME_OK and not info.multi and r[R_AFFECTED] == 0:
            if kind == READ and not (before or after):
                flags |= PLAIN_READ
            elif (kind == READ or kind == BEGIN) and after and not ended and self.txn_reads:
                flags |= PLAIN_READ  # in the transaction (IN_TXN), or the statement that starts it (TXN_BEGIN)
        if not self.causal:
            if ended or (kind == DDL and before):
                sess.wrote.clear()
                sess.locked.clear()
            sess.open = after
            if flags:
                t = Ticket.__new__(Ticket)
                (<Ticket>t).flags = flags
                return t
            return None

        if kind == DDL:
            self._learn(info)
        cdef tuple plan = self._plan(info)
        scope = plan[1]
        cdef tuple waits = ()
        cdef tuple lock_waits = ()
        cdef tuple events = ()
        takes_locks = kind == LOCK or kind == UNKNOWN or kind == DDL
        # a read event: what it answered depends on the commits it saw, so the commits production ran
        # after it (after its transaction's snapshot) wait for it. A read of no table (SELECT 1, @@vars)
        # sees no commit. The first one of a transaction takes its snapshot, of every table
        cdef bint reads = outcome != OUTCOME_ERR and (
            (kind == READ and (scope is None or len(scope) > 0)) or (kind == BEGIN and info.snapshot))
        snapshot = reads and after and (kind == BEGIN or sess.view is None)
        if snapshot:
            waits = self._waits(None, 0)  # it sees every table as it was then
        elif kind == READ or takes_locks:
            waits = <tuple>plan[2]
        if takes_locks:
            if outcome == OUTCOME_ERR:
                # a deadlock victim ran while its partner waited: only what ended before it started
                waits += self._waits(scope, 1)
            else:
                lock_waits = self._waits(scope, 1)

        wrote = info.writes and (
            outcome == OUTCOME_UNKNOWN
            or (outcome == OUTCOME_OK and (r[R_AFFECTED] > 0 or kind == DDL or kind == UNKNOWN
                                           or not self.affected_rows))
            or (outcome == OUTCOME_ERR and info.multi))  # statements before the failing one committed
        held = False  # its locks outlive it: it is inside a transaction that goes on
        if kind != DDL and kind != BEGIN and (before or after):
            # part of a transaction: its writes become visible, its locks free, when it ends
            if takes_locks:
                sess.locked.update((_ANY,) if scope is None else scope)
                events = self._events(scope, False, True)
                held = after and not ended
            if wrote:
                sess.wrote.update((_ANY,) if scope is None else scope)
        elif takes_locks:
            events = self._events(scope, wrote, True)
            if wrote:
                waits += self._commit(scope, r)
        if ended:
            rolled_back = kind == ROLLBACK or (outcome == OUTCOME_ERR and (err_code == ER_LOCK_DEADLOCK or kind == COMMIT))
            tw, te = self._end_transaction(sess, rolled_back, r)
            waits += tw
            events += te
        if reads:
            if not events:
                flags |= READ_EVENT
            events += <tuple>plan[3] if kind == READ and not snapshot else self._read_events(
                scope if kind == READ else (), snapshot)
        sess.open = after
        if scope is None and kind != SESSION and kind != BEGIN:
            self.unknown_scope_statements += 1
        end_ns = r[R_END] or r[R_START]
        t = self._ticket(flags, waits, lock_waits, r[R_START], events, end_ns, not held)
        if held:
            sess.lockers.append(t)
        if reads:  # (a BEGIN ... WITH CONSISTENT SNAPSHOT: the view its transaction's reads answer from)
            self._overlaps_read(sess, <Ticket>t, scope if kind == READ else (), after and not snapshot,
                                r[R_START], end_ns)
        return t

    cdef bint _open_after(self, tuple r, int kind, bint before) except -1:
        """Is the connection inside a transaction after this command?"""
        cdef int outcome = r[R_OUTCOME]
        if outcome == OUTCOME_OK and self.status_flags:
            return (r[R_STATUS_FLAGS] & IN_TRANS) != 0
        if outcome == OUTCOME_ERR:
            # a deadlock rolls it all back; so does a COMMIT that failed (the server rolled it back)
            return False if r[R_ERR_CODE] == ER_LOCK_DEADLOCK or kind == COMMIT or kind == ROLLBACK else before
        # version 1 captures, or no answer: follow the statements
        if kind == BEGIN:
            return True
        if kind == COMMIT or kind == ROLLBACK or kind == DDL:
            return False
        return before

    cdef int _pins(self, _Session sess, int cmd, StatementInfo info, tuple r) except -1:
        cdef int flags = 0
        if not sess.app_time and (info.time or info.time_default or (
                info.writes and info.kind != SESSION and self._scoped(info.tables)[2])):
            flags |= PIN_TIME
        if not sess.app_ids and info.generates_id and r[R_LAST_INSERT_ID] and not info.multi:
            flags |= PIN_ID
        if flags and (cmd == COM_STMT_EXECUTE or info.multi or info.set_statement):
            flags |= PIN_PREFIX
        return flags

    cdef _session_end(self, conn_id, _Session sess, int cmd, tuple r):
        """COM_QUIT, COM_RESET_CONNECTION, COM_CHANGE_USER: the transaction is rolled back, and the
        session's own settings are gone."""
        t = None
        if cmd == COM_CHANGE_USER and self.causal:
            self._login = True  # a login as another user: after what created and granted it
        if sess.open and self.causal:
            t = Ticket.__new__(Ticket)
            waits, events = self._end_transaction(sess, True, r)
            if self._login:
                self._login = False
                waits += (self._unknown[0],)
            self.order.note(t, waits, (), r[R_START], events, r[R_END] or r[R_START], True, conn_id)
        elif self._login:
            t = self._ticket(0, (), (), r[R_START], (), 0, True)
        sess.open = False
        sess.chained = False
        sess.wrote.clear()
        sess.locked.clear()
        sess.view = None
        sess.app_time = sess.app_ids = False
        if cmd != COM_QUIT:
            sess.stmts.clear()
        return t

    cdef tuple _end_transaction(self, _Session sess, bint rolled_back, tuple r):
        """The waits and events of the command `r` that ends the open transaction."""
        locked = None if _ANY in sess.locked else tuple(sess.locked)
        wrote = None if _ANY in sess.wrote else tuple(sess.wrote)
        # releasing locks must not overtake the lock-taking statements that completed before
        cdef tuple waits = self._waits(locked, 1) if sess.locked else ()
        cdef tuple events = self._events(locked, False, True) if sess.locked else ()
        if sess.wrote and not rolled_back:
            events += self._events(wrote, True, False)
            waits += self._commit(wrote, r)
        for t in sess.lockers:
            self.order.release(t)
        sess.lockers.clear()
        sess.wrote.clear()
        sess.locked.clear()
        sess.view = None
        return waits, events

    cdef _ticket(self, int flags, tuple waits, tuple lock_waits, int64_t start_ns, tuple events, int64_t end_ns,
                 bint released):
        if self._login:
            self._login = False
            waits = waits + (self._unknown[0],)
        if not waits and not lock_waits and not events and not flags:
            return None
        cdef Ticket t = Ticket.__new__(Ticket)
        t.flags = flags
        if waits or lock_waits or events:
            self.order.note(t, waits, lock_waits, start_ns, events, end_ns, released, self._owner)
        return t

    # ---- scopes and their sequences -----------------------------------------------------------------
    cdef _scope(self, StatementInfo info):
        return self._scoped(info.tables)[1]

    cdef tuple _plan(self, StatementInfo info):
        """(scopes generation, scope, commit waits, read events) of a statement, cached by the
        statement itself: a prepared statement executed again and again hashes no table tuple."""
        gen = self.scopes.generation
        plan = self._plans.get(info)
        if plan is not None and (<tuple>plan)[0] == gen:
            return <tuple>plan
        scope = self._scope(info)
        plan = (gen, scope, self._waits(scope, 0), self._read_events(scope, False))
        if len(self._plans) > _CACHE_MAX:
            self._plans.clear()
        self._plans[info] = plan
        return <tuple>plan

    cdef tuple _scoped(self, tables):
        """(generation, scope roots or None, whether writes need the time) of a table set, cached."""
        cached = self._scope_cache.get(tables, _NO_SCOPE)
        scopes = self.scopes
        if cached is _NO_SCOPE or (<tuple>cached)[0] != scopes.generation:
            if len(self._scope_cache) > _CACHE_MAX:
                self._scope_cache.clear()
            cached = self._scope_cache[tables] = (scopes.generation, scopes.scope(tables), scopes.needs_time(tables))
        return <tuple>cached

    cdef _learn(self, StatementInfo info):
        """DDL read from the capture changes which tables belong together."""
        tables = info.tables or ()
        if info.references or info.view_of:
            names = list(tables) + list(info.references) + list(info.view_of)
            for other in names[1:]:
                self._merge(names[0], other)
        if info.time_default:
            for t in tables:
                self.scopes.mark_time(t)
        if info.trigger_on:  # a trigger created during the capture: its body is not followed
            self.scopes.mark_time(info.trigger_on)
            self.scopes.mark_global(info.trigger_on)

    cdef _merge(self, a, b):
        joined = self.scopes.union(a, b)
        if joined is None:
            return
        kept, absorbed = joined
        past = self._legacy.setdefault(kept, [])
        if absorbed in self._seqs:
            past.append(self._seqs.pop(absorbed))
        past.extend(self._legacy.pop(absorbed, ()))
        for cache in self._waits_cache:
            (<dict>cache).clear()
        self._events_cache.clear()
        self._read_events_cache.clear()
        self._plans.clear()

    cdef tuple _seq(self, root):
        s = self._seqs.get(root)
        if s is None:
            s = self._seqs[root] = (self.order.new_sequence(), self.order.new_sequence(), self.order.new_sequence())
        return <tuple>s

    cdef tuple _waits(self, scope, int which):
        """Sequences of commit events (which 0), lock events (1) or read events (2: what a commit
        waits for, snapshots included) a statement on `scope` waits on."""
        cdef dict cache = <dict>self._waits_cache[which]
        w = cache.get(scope)
        if w is None:
            if scope is None:
                w = (self._global[which],)
            else:
                out = [self._unknown[which]]
                for root in scope:
                    out.append(self._seq(root)[which])
                    out.extend(past[which] for past in self._legacy.get(root, ()))
                if which == 2:
                    out.append(self._snapshot)  # (the global read sequence holds them too)
                w = tuple(out)
            if len(cache) > _CACHE_MAX:
                cache.clear()
            cache[scope] = w
        return <tuple>w

    cdef tuple _events(self, scope, bint commit, bint lock):
        key = (scope, commit, lock)
        e = self._events_cache.get(key)
        if e is None:
            out = []
            for seqs in ([self._unknown] if scope is None else [self._seq(r) for r in scope]) + [self._global]:
                if commit:
                    out.append(seqs[0])
                if lock:
                    out.append(seqs[1])
            e = tuple(out)
            if len(self._events_cache) > _CACHE_MAX:
                self._events_cache.clear()
            self._events_cache[key] = e
        return <tuple>e

    cdef tuple _read_events(self, scope, bint snapshot):
        """The events of a read of `scope` (None: unknown tables); a `snapshot` is also an event of
        the snapshot sequence (waited on by every commit)."""
        key = (scope, snapshot)
        e = self._read_events_cache.get(key)
        if e is None:
            out = [self._unknown[2]] if scope is None else [self._seq(r)[2] for r in scope]
            out.append(self._global[2])
            if snapshot:
                out.append(self._snapshot)
            e = tuple(out)
            if len(self._read_events_cache) > _CACHE_MAX:
                self._read_events_cache.clear()
            self._read_events_cache[key] = e
        return <tuple>e

    # ---- reads and commits whose order production does not tell ------------------------------------
    # A commit and a read (a transaction's snapshot) are ordered when one ended before the other
    # started; otherwise production may have gone either way, and the read is flagged if the commit
    # changed its tables: when the read is noted (the commit was read before it) or when the commit is
    # (after it). The verdict waits for that (settled) before it judges a read that differs.
    cdef int _overlaps_read(self, _Session sess, Ticket t, scope, bint in_snapshot, int64_t start,
                            int64_t end) except -1:
        """A read noted: it answers from its transaction's snapshot (`in_snapshot`) or from its own
        moment (a snapshot that it, or a BEGIN, takes: the transaction's from now on)."""
        cdef _View view = sess.view if in_snapshot else None
        cdef int64_t c_end, c_start
        cdef Py_ssize_t i
        cdef tuple c
        if view is None:
            view = _new_view(start, end)
            if end - start > self._longest_read:
                self._longest_read = end - start
            self._forget(end)
            if start <= self._commits_gone:
                view.add(None)  # what ended while it ran is no longer all known
            for i in range(len(self._commits) - 1, self._commits_head - 1, -1):
                c = <tuple>self._commits[i]
                c_end = c[0]
                if c_end < start - _UNSORTED_NS:
                    break
                c_start = c[1]
                if c_end >= start and c_start <= end:
                    view.add(c[2])
            self._views.append(view)
            if in_snapshot or sess.open:
                sess.view = view
        if scope is not None and len(scope) == 0:
            return 0  # a BEGIN's: no result to flag
        if _touches(view.hit, scope):
            t.flags |= ORDER_UNKNOWN
            self.reads_order_unknown += 1
        view.keep_read(t, scope)
        return 0

    cdef tuple _commit(self, roots, tuple r):
        """A commit event `r` of `roots` (None: unknown tables): the reads it overlapped are flagged,
        and it waits for the reads and snapshots production ran before it (its read waits)."""
        self._overlaps_commit(r[R_START], r[R_END] or r[R_START], roots)
        return self._waits(roots, 2)

    cdef int _overlaps_commit(self, int64_t start, int64_t end, roots) except -1:
        """A commit event noted: the reads (snapshots) it overlapped in production are flagged."""
        cdef _View view
        if end - start > self._longest_commit:
            self._longest_commit = end - start
        self._forget(end)
        if start <= self._views_gone:
            self.order_unknown_missed += 1  # it may have overlapped reads no longer kept
        self._commits.append((end, start, roots))
        cdef Py_ssize_t i
        for i in range(len(self._views) - 1, self._views_head - 1, -1):
            view = <_View>self._views[i]
            if view.end < start - _UNSORTED_NS:
                break
            if view.end >= start:
                self.reads_order_unknown += view.overlapped_by(roots)
        return 0

    cdef int _forget(self, int64_t now) except -1:
        """Drop the reads and commits too old to overlap what is read from now on."""
        cdef _View view
        if now > self._now:
            self._now = now
        cdef int64_t views_from = self._now - self._keep(self._longest_commit)
        cdef int64_t commits_from = self._now - self._keep(self._longest_read)
        cdef list views = self._views, commits = self._commits
        cdef Py_ssize_t head = self._views_head, n = len(views)
        while head < n and ((<_View>views[head]).end < views_from or n - head > _KEEP_MAX):
            view = <_View>views[head]
            view.drop_reads()  # (a transaction's view lives on in its session)
            if view.end > self._views_gone:
                self._views_gone = view.end
            views[head] = None
            head += 1
        self._views_head = _cut_head(views, head)
        head, n = self._commits_head, len(commits)
        while head < n and ((<tuple>commits[head])[0] < commits_from or n - head > _KEEP_MAX):
            gone = (<tuple>commits[head])[0]
            if gone > self._commits_gone:
                self._commits_gone = gone
            commits[head] = None
            head += 1
        self._commits_head = _cut_head(commits, head)
        return 0

    cpdef bint settled(self, int64_t end_ns):
        """Whether the flag of a read that ended at `end_ns` is final: no commit read later can have
        started before it ended (its view is no longer kept)."""
        return end_ns <= self._views_gone or end_ns < self._now - self._keep(self._longest_commit)

    cdef inline int64_t _keep(self, int64_t longest) noexcept:
        return min(_KEEP_MAX_NS, max(_KEEP_MIN_NS, 2 * longest + _UNSORTED_NS))
