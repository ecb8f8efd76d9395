# cython: language_level=3
from libc.stdint cimport int64_t

from fastproxy.replay._scheduler cimport CausalOrder, Ticket
from fastproxy.replay._stmtinfo cimport Classifier, StatementInfo


cdef class _Session:
    cdef public bint logged_in
    cdef public bint open
    cdef public set wrote
    cdef public set locked
    cdef public list lockers
    cdef public dict stmts
    cdef public bint app_time
    cdef public bint app_ids
    cdef public object view
    cdef public bint chained


cdef class Planner:
    cdef public object scopes      # schema.TableScopes
    cdef public bint causal
    cdef public bint pin
    cdef public bint status_flags
    cdef public bint affected_rows
    cdef public bint mark_reads  # flag PLAIN_READ (the engine pipelines them)
    cdef public bint txn_reads   # ... inside transactions too
    cdef public CausalOrder order
    cdef public Classifier classify  # called for every text query (in C)
    cdef public int64_t unknown_scope_statements
    cdef public int64_t reads_order_unknown
    cdef tuple _global
    cdef tuple _unknown
    cdef Py_ssize_t _snapshot
    cdef dict _seqs
    cdef dict _legacy
    cdef tuple _waits_cache
    cdef dict _scope_cache
    cdef dict _events_cache
    cdef dict _read_events_cache
    cdef dict _plans
    cdef dict _sessions
    cdef list _views
    cdef list _commits
    cdef Py_ssize_t _views_head
    cdef Py_ssize_t _commits_head
    cdef int64_t _longest_read
    cdef int64_t _longest_commit
    cdef int64_t _now
    cdef int64_t _views_gone
    cdef int64_t _commits_gone
    cdef public int64_t order_unknown_missed
    cdef bint _login
    cdef object _owner  # a captured connection id (u64 in a capture): converted only where an event needs it

    cpdef _Session session(self, conn_id)
    cpdef note_close(self, conn_id, rec)
    cpdef note(self, conn_id, rec)
    cdef _note(self, conn_id, _Session sess, tuple r)
    cdef _statement(self, _Session sess, int cmd, StatementInfo info, tuple r)
    cdef bint _open_after(self, tuple r, int kind, bint before) except -1
    cdef int _pins(self, _Session sess, int cmd, StatementInfo info, tuple r) except -1
    cdef _session_end(self, conn_id, _Session sess, int cmd, tuple r)
    cdef tuple _end_transaction(self, _Session sess, bint rolled_back, tuple r)
    cdef _ticket(self, int flags, tuple waits, tuple lock_waits, int64_t start_ns, tuple events, int64_t end_ns,
                 bint released)
    cdef _scope(self, StatementInfo info)
    cdef tuple _plan(self, StatementInfo info)
    cdef tuple _scoped(self, tables)
    cdef _learn(self, StatementInfo info)
    cdef _merge(self, a, b)
    cdef tuple _seq(self, root)
    cdef tuple _waits(self, scope, int which)
    cdef tuple _events(self, scope, bint commit, bint lock)
    cdef tuple _read_events(self, scope, bint snapshot)
    cdef int _overlaps_read(self, _Session sess, Ticket t, scope, bint in_snapshot, int64_t start,
                            int64_t end) except -1
    cdef tuple _commit(self, roots, tuple r)
    cdef int _overlaps_commit(self, int64_t start, int64_t end, roots) except -1
    cdef int _forget(self, int64_t now) except -1
    cpdef bint settled(self, int64_t end_ns)
    cdef int64_t _keep(self, int64_t longest) noexcept
