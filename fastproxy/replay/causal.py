"""Causal order across connections, planned as the capture is read.

What a statement could observe of other connections in production must be in place on replay
before it runs. The capture says when each command started and ended (records are in completion
order), and after each command whether its connection was inside a transaction (status flags,
format version 2). From that, commands become *events* of per-scope sequences
(fastproxy/replay/_scheduler.pyx, CausalOrder):

- a **commit event** makes writes visible: a successful autocommit write, the COMMIT of a
  transaction that wrote, DDL (and the implicit commit it causes);
- a **lock event** takes or releases row locks: DML, SELECT ... FOR UPDATE / FOR SHARE / LOCK IN
  SHARE MODE, named locks (GET_LOCK), LOCK TABLES, and the end of a transaction that locked rows
  (COMMIT, ROLLBACK, a deadlock, the connection closing).

A statement waits for the commit events that ended before it started, on the scopes of the tables
it touches; a lock-taking statement (and the end of a transaction that held locks) also waits for
the lock events that ended before it started. So a row picked from a queue with SKIP LOCKED, a
table created then read, an id inserted then updated elsewhere: each follows production. Nothing
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
from __future__ import annotations

from fastproxy.capture.record import OUTCOME_ERR, OUTCOME_OK, OUTCOME_UNKNOWN, Record
from fastproxy.constants import COMMAND, ER, SERVER_STATUS
from fastproxy.replay._scheduler import CausalOrder, Ticket
from fastproxy.replay.schema import TableScopes
from fastproxy.replay.stmtinfo import (BEGIN, COMMIT, DDL, LOCK, READ, ROLLBACK, SESSION, UNKNOWN, Classifier,
                                       StatementInfo)

# Ticket.flags
PIN_TIME = 0x01          # pin the server time to the captured start
PIN_ID = 0x02            # pin the first auto-increment id to the captured one
PIN_PREFIX = 0x04        # pin with a SET sent just before (executes, multi-statements, SET STATEMENT ... FOR)
IN_TXN = 0x10            # runs inside a production transaction
TXN_BEGIN = 0x20         # opens that transaction
TXN_END = 0x40           # ends it (COMMIT, ROLLBACK, an implicit commit)
PROD_LOCK_ERROR = 0x80   # production lost it to a deadlock or lock wait timeout: not replayed (see engine)

_ANY = "#any"  # in a transaction's scope sets: some statement's tables were unknown
_NO_SCOPE = object()
_UNKNOWN_INFO = StatementInfo(UNKNOWN, None, True)
_UNKNOWN_INFO.generates_id = True
_UNKNOWN_INFO.time = True
_STATEMENT_CMDS = (COMMAND.COM_QUERY, COMMAND.COM_STMT_EXECUTE)
_SESSION_ENDS = (COMMAND.COM_QUIT, COMMAND.COM_RESET_CONNECTION, COMMAND.COM_CHANGE_USER)
_LOCK_ERRORS = (ER.LOCK_DEADLOCK, ER.LOCK_WAIT_TIMEOUT)


class _Session:
    """One captured connection as the capture shows it, record by record."""

    __slots__ = ("open", "wrote", "locked", "lockers", "stmts", "app_time", "app_ids", "logged_in")

    def __init__(self) -> None:
        self.logged_in = False     # replay logs in with its first command (reconnects come later)
        self.open = False
        self.wrote: set = set()    # scope roots written by the open transaction
        self.locked: set = set()   # scope roots it took locks on
        self.lockers: list[Ticket] = []  # its lock events: released when it ends
        self.stmts: dict[int, StatementInfo] = {}  # captured statement id -> what it does
        self.app_time = False      # the application set @@timestamp itself: its time is kept
        self.app_ids = False       # the application set insert_id itself


class Planner:
    """Turns each record read from the capture into a Ticket for the engine (or None when the
    command needs nothing): what it waits for, which events it is, and its flags."""

    def __init__(self, scopes: TableScopes | None = None, causal: bool = True, pin: bool = True,
                 status_flags: bool = True, affected_rows: bool = True) -> None:
        self.scopes = scopes or TableScopes()
        self.causal = causal
        self.pin = pin
        self.status_flags = status_flags  # format version 2: trust SERVER_STATUS_IN_TRANS after each command
        self.affected_rows = affected_rows  # 0 affected rows means it changed nothing (else: unknown)
        self.order = CausalOrder()
        self.classify = Classifier(self.scopes.functions)
        new = self.order.new_sequence
        self._global = (new(), new())    # (commit, lock): every event
        self._unknown = (new(), new())   # events whose tables are unknown
        self._seqs: dict[str, tuple[int, int]] = {}
        self._legacy: dict[str, list[tuple[int, int]]] = {}  # a merged scope still waits for its parts' past
        self._waits_cache: dict = {}
        self._scope_cache: dict = {}  # tables -> (scopes generation, scope)
        self._events_cache: dict = {}
        self._sessions: dict[int, _Session] = {}
        self.unknown_scope_statements = 0  # statements ordered against everything (tables not known)
        self._login = False  # the record being planned is its connection's first: replay logs in for it

    # ---- records --------------------------------------------------------------------------------
    def session(self, conn_id: int) -> _Session:
        sess = self._sessions.get(conn_id)
        if sess is None:
            sess = self._sessions[conn_id] = _Session()
        return sess

    def on_state(self, conn_id: int, state: dict) -> None:
        """CONN_STATE: statements prepared before the capture, and whether a transaction is open."""
        sess = self.session(conn_id)
        sess.logged_in = True  # open before the capture: its user and database existed then
        for sid, sql in state.get("prepared", []):
            sess.stmts[int(sid)] = self.classify(sql)
        if state.get("in_transaction"):
            sess.open = True
            sess.wrote.add(_ANY)
            sess.locked.add(_ANY)

    def note_close(self, conn_id: int, rec: Record) -> Ticket | None:
        """CONN_CLOSE: an open transaction is rolled back, its locks released."""
        sess = self._sessions.pop(conn_id, None)
        if sess is None or not sess.open or not self.causal:
            return None
        t = Ticket()
        waits, events = self._end_transaction(sess, rolled_back=True)
        self.order.note(t, waits, (), rec.start_ns, events, rec.start_ns)
        return t

    def note(self, conn_id: int, rec: Record) -> Ticket | None:
        sess = self.session(conn_id)
        if sess.logged_in or not self.causal:
            sess.logged_in = True
            return self._note(conn_id, sess, rec)
        # Its first command: replay logs in with it, whatever it is (clients start with SET NAMES,
        # which waits for nothing). The login must come after the accounts and databases other
        # connections had created or granted when it opened: statements of unknown scope (CREATE
        # USER, GRANT, CREATE DATABASE, ...), as for a COM_CHANGE_USER
        sess.logged_in = True
        self._login = True
        try:
            t = self._note(conn_id, sess, rec)
            if self._login:  # the command had no ticket of its own
                t = self._ticket(0, (), (), rec.start_ns, (), 0)
            return t
        finally:
            self._login = False

    def _note(self, conn_id: int, sess: _Session, rec: Record) -> Ticket | None:
        payload = rec.payload
        cmd = payload[0]
        if cmd == COMMAND.COM_QUERY:
            info = self.classify(payload[1:])
        elif cmd == COMMAND.COM_STMT_EXECUTE:
            info = sess.stmts.get(int.from_bytes(payload[1:5], "little"), _UNKNOWN_INFO)
        elif cmd == COMMAND.COM_STMT_PREPARE:
            info = self.classify(payload[1:])
            if rec.outcome == OUTCOME_OK:
                sess.stmts[rec.affected_rows] = info  # the capture keeps the statement id there
            if not self.causal or info.kind == SESSION:
                return None
            # preparing resolves tables: it must see tables (and databases) created elsewhere
            return self._ticket(0, self._commit_seqs(self._scope(info)), (), rec.start_ns, (), 0)
        elif cmd == COMMAND.COM_STMT_CLOSE:
            sess.stmts.pop(int.from_bytes(payload[1:5], "little"), None)
            return None
        elif cmd == COMMAND.COM_INIT_DB:
            return self._ticket(0, self._commit_seqs(None), (), rec.start_ns, (), 0) if self.causal else None
        elif cmd in _SESSION_ENDS:
            return self._session_end(conn_id, sess, cmd, rec)
        else:
            return None  # ping, fetch, long data, statistics, ...: nothing to wait for
        return self._statement(sess, cmd, info, rec)

    # ---- one statement ------------------------------------------------------------------------------
    def _statement(self, sess: _Session, cmd: int, info: StatementInfo, rec: Record) -> Ticket | None:
        kind = info.kind
        flags = 0
        if rec.outcome == OUTCOME_ERR and rec.err_code in _LOCK_ERRORS:
            flags |= PROD_LOCK_ERROR
        if info.sets_time is not None:
            sess.app_time = info.sets_time
        if info.sets_insert_id:
            sess.app_ids = True
        if self.pin:
            flags |= self._pins(sess, cmd, info, rec)
        before = sess.open
        after = self._open_after(rec, kind, before)
        ended = before and (not after or kind == BEGIN or kind == DDL)
        if kind == BEGIN:
            flags |= TXN_BEGIN | IN_TXN
        elif kind != DDL and (before or after):
            flags |= IN_TXN
            if not before:
                flags |= TXN_BEGIN
            elif ended:
                flags |= TXN_END
        elif kind == DDL and before:
            flags |= TXN_END
        if not self.causal:
            if ended or (kind == DDL and before):
                sess.wrote.clear()
                sess.locked.clear()
            sess.open = after
            return Ticket(flags) if flags else None

        if kind == DDL:
            self._learn(info)
        scope = self._scope(info)
        waits: tuple = ()
        lock_waits: tuple = ()
        events: tuple = ()
        takes_locks = kind == LOCK or kind == UNKNOWN or kind == DDL
        if kind == READ:
            waits = self._commit_seqs(scope)
        elif takes_locks:
            waits = self._commit_seqs(scope)
            if rec.outcome == OUTCOME_ERR:
                # a deadlock victim ran while its partner waited: only what ended before it started
                waits += self._lock_seqs(scope)
            else:
                lock_waits = self._lock_seqs(scope)
        elif kind == BEGIN and info.snapshot:
            waits = self._commit_seqs(None)  # the snapshot sees every table

        wrote = info.writes and (
            rec.outcome == OUTCOME_UNKNOWN
            or (rec.outcome == OUTCOME_OK and (rec.affected_rows > 0 or kind == DDL or kind == UNKNOWN
                                               or not self.affected_rows))
            or (rec.outcome == OUTCOME_ERR and info.multi))  # statements before the failing one committed
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
        if ended:
            rolled_back = kind == ROLLBACK or (rec.outcome == OUTCOME_ERR and rec.err_code == ER.LOCK_DEADLOCK)
            tw, te = self._end_transaction(sess, rolled_back)
            waits += tw
            events += te
        sess.open = after
        if scope is None and kind != SESSION and kind != BEGIN:
            self.unknown_scope_statements += 1
        t = self._ticket(flags, waits, lock_waits, rec.start_ns, events, rec.end_ns or rec.start_ns, not held)
        if held:
            sess.lockers.append(t)
        return t

    def _open_after(self, rec: Record, kind: int, before: bool) -> bool:
        """Is the connection inside a transaction after this command?"""
        if rec.outcome == OUTCOME_OK and self.status_flags:
            return bool(rec.status_flags & SERVER_STATUS.IN_TRANS)
        if rec.outcome == OUTCOME_ERR:
            return False if rec.err_code == ER.LOCK_DEADLOCK else before  # a deadlock rolls it all back
        # version 1 captures, or no answer: follow the statements
        if kind == BEGIN:
            return True
        if kind in (COMMIT, ROLLBACK, DDL):
            return False
        return before

    def _pins(self, sess: _Session, cmd: int, info: StatementInfo, rec: Record) -> int:
        flags = 0
        if not sess.app_time and (info.time or info.time_default or (
                info.writes and info.kind != SESSION and self._scoped(info.tables)[2])):
            flags |= PIN_TIME
        if not sess.app_ids and info.generates_id and rec.last_insert_id and not info.multi:
            flags |= PIN_ID
        if flags and (cmd == COMMAND.COM_STMT_EXECUTE or info.multi or info.set_statement):
            flags |= PIN_PREFIX
        return flags

    def _session_end(self, conn_id: int, sess: _Session, cmd: int, rec: Record) -> Ticket | None:
        """COM_QUIT, COM_RESET_CONNECTION, COM_CHANGE_USER: the transaction is rolled back, and the
        session's own settings are gone."""
        t = None
        if cmd == COMMAND.COM_CHANGE_USER and self.causal:
            self._login = True  # a login as another user: after what created and granted it
        if sess.open and self.causal:
            t = Ticket()
            waits, events = self._end_transaction(sess, rolled_back=True)
            if self._login:
                self._login = False
                waits += (self._unknown[0],)
            self.order.note(t, waits, (), rec.start_ns, events, rec.end_ns or rec.start_ns)
        elif self._login:
            t = self._ticket(0, (), (), rec.start_ns, (), 0)
        sess.open = False
        sess.wrote.clear()
        sess.locked.clear()
        sess.app_time = sess.app_ids = False
        if cmd != COMMAND.COM_QUIT:
            sess.stmts.clear()
        return t

    def _end_transaction(self, sess: _Session, rolled_back: bool) -> tuple[tuple, tuple]:
        """The waits and events of the command that ends the open transaction."""
        locked = None if _ANY in sess.locked else tuple(sess.locked)
        wrote = None if _ANY in sess.wrote else tuple(sess.wrote)
        # releasing locks must not overtake the lock-taking statements that completed before
        waits = self._lock_seqs(locked) if sess.locked else ()
        events = self._events(locked, False, True) if sess.locked else ()
        if sess.wrote and not rolled_back:
            events += self._events(wrote, True, False)
        release = self.order.release
        for t in sess.lockers:
            release(t)
        sess.lockers.clear()
        sess.wrote.clear()
        sess.locked.clear()
        return waits, events

    def _ticket(self, flags: int, waits: tuple, lock_waits: tuple, start_ns: int, events: tuple, end_ns: int,
                released: bool = True) -> Ticket | None:
        if self._login:
            self._login = False
            waits = waits + (self._unknown[0],)
        if not waits and not lock_waits and not events and not flags:
            return None
        t = Ticket(flags)
        if waits or lock_waits or events:
            self.order.note(t, waits, lock_waits, start_ns, events, end_ns, released)
        return t

    # ---- scopes and their sequences -----------------------------------------------------------------
    def _scope(self, info: StatementInfo) -> tuple | None:
        return self._scoped(info.tables)[1]

    def _scoped(self, tables: tuple | None) -> tuple:
        """(generation, scope roots or None, whether writes need the time) of a table set, cached."""
        cached = self._scope_cache.get(tables, _NO_SCOPE)
        scopes = self.scopes
        if cached is _NO_SCOPE or cached[0] != scopes.generation:
            if len(self._scope_cache) > 10_000:
                self._scope_cache.clear()
            cached = self._scope_cache[tables] = (scopes.generation, scopes.scope(tables), scopes.needs_time(tables))
        return cached

    def _learn(self, info: StatementInfo) -> None:
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

    def _merge(self, a: str, b: str) -> None:
        joined = self.scopes.union(a, b)
        if joined is None:
            return
        kept, absorbed = joined
        past = self._legacy.setdefault(kept, [])
        if absorbed in self._seqs:
            past.append(self._seqs.pop(absorbed))
        past.extend(self._legacy.pop(absorbed, ()))
        self._waits_cache.clear()
        self._events_cache.clear()

    def _seq(self, root: str) -> tuple[int, int]:
        s = self._seqs.get(root)
        if s is None:
            s = self._seqs[root] = (self.order.new_sequence(), self.order.new_sequence())
        return s

    def _commit_seqs(self, scope: tuple | None) -> tuple:
        """Sequences of commit events a statement on `scope` waits on."""
        return self._waits(scope, 0)

    def _lock_seqs(self, scope: tuple | None) -> tuple:
        """Sequences of lock events a statement on `scope` waits on."""
        return self._waits(scope, 1)

    def _waits(self, scope: tuple | None, which: int) -> tuple:
        key = (scope, which)
        w = self._waits_cache.get(key)
        if w is None:
            if scope is None:
                w = (self._global[which],)
            else:
                out = [self._unknown[which]]
                for root in scope:
                    out.append(self._seq(root)[which])
                    out.extend(past[which] for past in self._legacy.get(root, ()))
                w = tuple(out)
            if len(self._waits_cache) > 10_000:
                self._waits_cache.clear()
            self._waits_cache[key] = w
        return w

    def _events(self, scope: tuple | None, commit: bool, lock: bool) -> tuple:
        key = (scope, commit, lock)
        e = self._events_cache.get(key)
        if e is None:
            out = []
            for c, k in ([self._unknown] if scope is None else [self._seq(r) for r in scope]) + [self._global]:
                if commit:
                    out.append(c)
                if lock:
                    out.append(k)
            e = tuple(out)
            if len(self._events_cache) > 10_000:
                self._events_cache.clear()
            self._events_cache[key] = e
        return e
