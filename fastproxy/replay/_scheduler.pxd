# cython: language_level=3
from libc.stdint cimport int64_t, uint64_t


cdef struct HeapEntry:
    int64_t due
    uint64_t seq     # push order; ties on `due` pop first-in first-out
    int64_t key


cdef class Scheduler:
    cdef:
        HeapEntry* _heap
        Py_ssize_t _size
        Py_ssize_t _capacity
        uint64_t _next_seq

    cdef int push_c(self, int64_t due, int64_t key) except -1
    # -1 when empty (keys are never negative)
    cdef int64_t pop_c(self) noexcept
    # INT64_MAX when empty: "nothing is ever due", so `peek_due_c() <= now` needs no extra check
    cdef int64_t peek_due_c(self) noexcept
    cdef int _grow(self) except -1
