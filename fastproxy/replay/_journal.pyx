# cython: language_level=3, boundscheck=False, wraparound=False
"""The journal's per-command entries in C (fastproxy/replay/journal.py): one `S` per command sent,
one `R` per result, one `N` per command done without one — stores into the mapped file, with no
struct.Struct call and no tuple of fields built per entry.

Byte for byte what journal.py's SENT / RESULT layouts pack (tests/test_replay_journal.py checks it
against them). A value that does not fit its field goes through the Python packing instead
(Journal._sent_struct / _result_struct), which behaves as before: struct.error for an `S` entry, the
entry left out and counted for an `R` one.
"""
from cpython.buffer cimport PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport INT64_MIN
from libc.string cimport memcpy, memset

cdef extern from *:
    """
    /* the compiler keeps the stores before it ahead of the tag's store: an entry is read only once its
       tag is there, so a kill inside an entry leaves zeros (the journal's end), not a torn entry */
    static inline void fp_journal_fence(void) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
    """
    void fp_journal_fence() nogil

from fastproxy._packet cimport CommandResult

cdef enum:
    SENT_SIZE = 22    # "<cQqBI"
    RESULT_SIZE = 89  # "<cQqBIqiQQqiqIq5sH"
    MESSAGE_MAX = 1024  # journal.MESSAGE_MAX

cdef long long NO_LAG = INT64_MIN  # journal.NO_LAG


cdef inline void _put(unsigned char *p, unsigned long long v, int n) noexcept nogil:
    """n bytes of v, little-endian (the layouts' "<")."""
    cdef int i
    for i in range(n):
        p[i] = <unsigned char>(v >> (8 * i))


cdef class JournalWriter:
    """The base of journal.Journal: holds the mapped file's buffer while the journal is open (fields:
    _journal.pxd)."""

    def _attach(self, mapped, Py_ssize_t size) -> None:
        """Write into `mapped` (a writable buffer of at least `size` bytes) from now on."""
        self._detach()
        PyObject_GetBuffer(mapped, &self._view, PyBUF_WRITABLE)
        if self._view.len < size:
            PyBuffer_Release(&self._view)
            raise ValueError("journal buffer smaller than its size")
        self._base = <unsigned char *>self._view.buf
        self._size = size

    def _detach(self) -> None:
        """Let go of the buffer (an mmap cannot close while it is held)."""
        if self._base != NULL:
            self._base = NULL
            PyBuffer_Release(&self._view)

    def __dealloc__(self):
        if self._base != NULL:
            PyBuffer_Release(&self._view)

    cdef int _fixed(self, unsigned char tag, conn_id, seq, in_txn, thread) except -2:
        """An `S` or `N` entry (the SENT layout): 1 written, 0 the journal is full, -1 a value does
        not fit its field."""
        cdef unsigned long long c_conn, c_thread
        cdef long long c_seq, c_txn
        cdef unsigned char *p
        cdef Py_ssize_t pos = self.pos
        if pos + SENT_SIZE >= self._size:
            return 0
        try:
            c_conn = conn_id
            c_seq = seq
            c_txn = in_txn
            c_thread = thread
        except (OverflowError, TypeError):
            return -1
        if c_txn < 0 or c_txn > 0xFF or c_thread > 0xFFFFFFFF or self._base == NULL:
            return -1
        p = self._base + pos
        _put(p + 1, c_conn, 8)
        _put(p + 9, <unsigned long long>c_seq, 8)
        p[17] = <unsigned char>c_txn
        _put(p + 18, c_thread, 4)
        fp_journal_fence()
        p[0] = tag  # last: the entry exists once it is whole
        self.pos = pos + SENT_SIZE
        return 1

    def sent(self, conn_id, seq, in_txn, thread) -> bool:
        """False if the journal is full (the caller writes a checkpoint, which empties it)."""
        return self.sent_c(conn_id, seq, in_txn, thread)

    cdef bint sent_c(self, conn_id, seq, in_txn, thread) except -1:
        cdef int written = self._fixed(b'S', conn_id, seq, in_txn, thread)
        return self._sent_struct(conn_id, seq, in_txn, thread) if written < 0 else written == 1

    def no_result(self, conn_id, seq) -> bool:
        return self.no_result_c(conn_id, seq)

    cdef bint no_result_c(self, conn_id, seq) except -1:
        cdef int written = self._fixed(b'N', conn_id, seq, 0, 0)
        return self._no_result_struct(conn_id, seq) if written < 0 else written == 1

    def result(self, conn_id, seq, result, latency_ns, second, lag_ns) -> bool:
        """`result`: the command's CommandResult. False if the journal is full."""
        return self.result_c(conn_id, seq, result, latency_ns, second, lag_ns)

    cdef bint result_c(self, conn_id, seq, result, latency_ns, second, lag_ns) except -1:
        if type(result) is not CommandResult:
            return self._result_struct(conn_id, seq, result, latency_ns, second, lag_ns)
        cdef CommandResult r = <CommandResult>result
        cdef unsigned long long c_conn
        cdef long long c_seq, c_latency, c_second, c_lag
        cdef bytes msg, state
        cdef Py_ssize_t n_msg = 0, pos = self.pos
        cdef unsigned char *p
        if r.err_msg:
            msg = r.err_msg.encode("utf-8", "replace")[:MESSAGE_MAX]
            n_msg = len(msg)
        if pos + RESULT_SIZE + n_msg >= self._size:
            return False
        state = r.sql_state.encode()[:5] if r.sql_state else b""
        try:
            c_conn = conn_id
            c_seq = seq
            c_latency = latency_ns if latency_ns > 0 else 0
            c_second = second if second > 0 else 0
            c_lag = NO_LAG if lag_ns is None else lag_ns
        except (OverflowError, TypeError):
            return self._result_struct(conn_id, seq, result, latency_ns, second, lag_ns)
        if (r.outcome < 0 or r.outcome > 0xFF or r.err_code < 0 or c_second > 0xFFFFFFFF
                or self._base == NULL):
            return self._result_struct(conn_id, seq, result, latency_ns, second, lag_ns)
        p = self._base + pos
        _put(p + 1, c_conn, 8)
        _put(p + 9, <unsigned long long>c_seq, 8)
        p[17] = <unsigned char>r.outcome
        _put(p + 18, <unsigned int>r.err_code, 4)
        _put(p + 22, <unsigned long long>r.rows, 8)
        _put(p + 30, <unsigned int>r.columns, 4)
        _put(p + 34, r.hash_ordered, 8)
        _put(p + 42, r.hash_unordered, 8)
        _put(p + 50, <unsigned long long>r.affected_rows, 8)
        _put(p + 58, <unsigned int>r.warnings, 4)
        _put(p + 62, <unsigned long long>c_latency, 8)
        _put(p + 70, <unsigned long long>c_second, 4)
        _put(p + 74, <unsigned long long>c_lag, 8)
        memset(p + 82, 0, 5)
        memcpy(p + 82, <const char *>state, len(state))
        _put(p + 87, <unsigned long long>n_msg, 2)
        if n_msg:
            memcpy(p + RESULT_SIZE, <const char *>msg, n_msg)
        fp_journal_fence()
        p[0] = b'R'  # last: the entry exists once it is whole
        self.pos = pos + RESULT_SIZE + n_msg
        return True
