# cython: language_level=3


cdef class JournalWriter:
    cdef Py_buffer _view
    cdef unsigned char *_base
    cdef Py_ssize_t _size
    cdef public Py_ssize_t pos
    cdef public long long unjournaled  # results that could not be written (a kill before the next snapshot loses them)

    cdef int _fixed(self, unsigned char tag, conn_id, seq, in_txn, thread) except -2
    # sent / no_result / result without a Python call: the checkpoint's per-command hooks (_checkpoint.pyx)
    cdef bint sent_c(self, conn_id, seq, in_txn, thread) except -1
    cdef bint no_result_c(self, conn_id, seq) except -1
    cdef bint result_c(self, conn_id, seq, result, latency_ns, second, lag_ns) except -1
