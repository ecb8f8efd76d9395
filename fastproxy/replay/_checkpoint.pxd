# cython: language_level=3
from fastproxy.replay._conn cimport Conn
from fastproxy.replay._journal cimport JournalWriter


cdef class Track:
    cdef public object pending  # deque of seqs read and not yet done: consumed inside a transaction, then queued
    cdef public Py_ssize_t consumed  # how many of `pending` were consumed (their transaction goes on)
    cdef public long long done  # seq of its last record done
    cdef public long long inflight  # seq of the command sent and not yet consumed (-1: none)
    cdef public bint inflight_txn  # ... and the connection is inside a transaction after it
    cdef public object thread  # the replay session's thread id on the target
    cdef public bint answered  # the command in flight got its result
    cdef public object held  # results inside the open transaction: counted once it ends
    cdef public Py_ssize_t ahead  # commands sent behind the one in flight (pipelined)
    cdef public list unsent  # (conn_id, seq, in_txn) of its commands sent whose bytes are not out yet (not journaled)


cdef class CheckpointHooks:
    cdef public object engine
    cdef public object seq  # the next record's seq
    cdef public dict tracks
    cdef public JournalWriter _journal  # journal.Journal or None: its entries written in C
    cdef public object results
    cdef public object _resume_until
    cdef public object _read_before
    cdef public object _clock_set

    cdef Track _pending(self, conn_id)
    # the engine's per-command calls (_engine.pyx), without a Python call
    cpdef on_read(self, rec)
    cpdef sent(self, Conn conn)
    cpdef result(self, conn, rec, result, now)
    cpdef consumed(self, Conn conn, ticket)
    cdef int _count_c(self, conn, rec, result, now, seq) except -1
    cdef int _out(self, Track track) except -1
    cdef int _next_pipelined(self, Conn conn, Track track) except -1
