# cython: language_level=3
from libc.stdint cimport int64_t, uint64_t

from fastproxy._heap cimport HeapEntry


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


cdef struct Seq:
    int64_t prefix         # events [0, prefix) have all completed; the rings hold [prefix, next)
    int64_t next           # index of the next event
    int64_t last_key       # largest end time so far: ends stay sorted
    int64_t* keys          # ring: capture end time of event i at keys[i & mask]
    int64_t* starts        # ring: its capture start time
    unsigned char* state   # ring: ST_DONE (completed on replay) | ST_RELEASED (its transaction ended)
    int64_t* owners        # ring: who the event belongs to (the planner's connection id; -1: unknown)
    int64_t mask           # ring capacity - 1 (a power of two)
    HeapEntry* waiters     # min-heap of parked commands (due: the sequence prefix each needs; key: who)
    Py_ssize_t nwait
    Py_ssize_t wcap


cdef class Ticket:
    cdef:
        int64_t* buf     # waits (sequence, requirement) pairs, then events (sequence, index) pairs
        int nw           # waits stored
        int wpos         # waits before this one are known to be met
        int ne           # events
        Py_ssize_t ecap_w  # events start at buf + 2 * ecap_w
    cdef public int flags
    cdef public bint finished


cdef class CausalOrder:
    cdef:
        Seq* seqs
        Py_ssize_t nseq
        Py_ssize_t cap
        uint64_t order
        int64_t overlap_ns
        list released
    cdef public int64_t parked        # commands parked right now
    cdef public int64_t parks_total   # times a command had to park
    cdef public int64_t events_total

    cpdef note(self, Ticket t, tuple waits, tuple lock_waits, int64_t start_ns, tuple events, int64_t end_ns,
               bint released=*, int64_t owner=*)
    cpdef release(self, Ticket t)
    cpdef bint ready(self, Ticket t, int64_t key) except -1
    cpdef bint met(self, Ticket t) except -1
    cpdef finish(self, Ticket t)
    cdef int _check(self, Py_ssize_t sid) except -1
    cdef int _grow_ring(self, Seq* s) except -1
    cdef int64_t _ended_before(self, Seq* s, int64_t start) noexcept
    cdef int64_t _lock_requirement(self, Seq* s, int64_t start) noexcept
    cdef int64_t _add_event(self, Seq* s, int64_t start, int64_t end, bint released, int64_t owner) except -1
    cdef int _park(self, Seq* s, int64_t req, int64_t key) except -1
    cdef int64_t _pop_waiter(self, Seq* s) noexcept
