# cython: language_level=3
from libc.stdint cimport int64_t


cdef class TxnLog:
    cdef public list entries
    cdef public bint aborted
    cdef public object retry
    cdef public long attempts
    cdef public bint undone

    cdef int reset_c(self) except -1


cdef class Conn:
    """One captured connection and its replay connection (fastproxy/replay/_conn.pyx says what each
    field holds). The C chain (_engine.pyx, _checkpoint.pyx, report/_observe.pyx) reads the fields
    as struct fields; Python reads and sets them as attributes, as before."""
    cdef public long idx
    cdef public object conn_id
    cdef public object user
    cdef public object db
    cdef public object capabilities
    cdef public object charset
    cdef public object queue
    cdef public object client
    cdef public bint busy
    cdef public bint connecting
    cdef public dict stmt_map
    cdef public dict stmt_sql
    cdef public dict stmt_params
    cdef public dict stmt_types
    cdef public set types_bound
    cdef public set filtered_stmts
    cdef public object inflight
    cdef public int64_t sent_ns
    cdef public int64_t due_ns
    cdef public bint closed
    cdef public object pending_payload
    cdef public bint ever_connected
    cdef public object backend
    cdef public object thread_id
    cdef public object state
    cdef public list not_rebuilt
    cdef public dict infiles
    cdef public object lost_idle
    cdef public object tickets
    cdef public bint parked
    cdef public int64_t parked_ns
    cdef public bint pin_dirty
    cdef public TxnLog txn
    cdef public object sent
    cdef public object again
    cdef public int nsent
