# cython: language_level=3
from libc.stdint cimport uint32_t, uint64_t

cdef enum:
    NSUB = 16          # buckets per power of two
    LOG_NSUB = 4
    MAX_EXP = 30       # 2^30 units of 1.024 µs
    NBUCKETS = (MAX_EXP - LOG_NSUB + 1) * NSUB + NSUB   # 448
    UNIT_SHIFT = 10    # ns -> units of 1.024 µs


cdef struct Side:
    uint64_t count
    uint64_t sum_ns
    uint64_t max_ns
    uint32_t buckets[NBUCKETS]


cdef struct Slot:
    Side side[2]


cdef class LatencyTable:
    cdef Slot *_slots
    cdef int _n
    cdef int _allocated
    cdef readonly int capacity

    # record() without a Python call: the verdict's hook (_observe.pyx)
    cdef int record_c(self, int slot, long long reference_ns, long long replay_ns) except -1
    cdef Side* _side(self, int slot, int side) except NULL
