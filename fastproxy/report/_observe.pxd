# cython: language_level=3
from fastproxy.replay._engine cimport EngineCore


cdef inline bint fits62(long long v) noexcept:
    """|v| < 2**62: a difference of two such values fits a long long (the verdict's and the
    checkpoint's times are computed in C only then; else with Python's ints)."""
    return -(1LL << 62) < v < (1LL << 62)


cdef class TimelineCore:
    """The series fastproxy/report/observe.py's Timeline keeps, as fields the hook reads in C."""
    cdef public dict captured
    cdef public dict replayed
    cdef public dict lag_max_ms
    cdef public dict lag_sum_ms
    cdef public dict failures
    cdef public dict mismatches


cdef class ObserverCore:
    cdef public EngineCore engine  # the Replayer observed
    cdef public object verdict
    cdef public object timeline
    cdef public object second_offset
    cdef public object capture_origin_ns
    cdef public object at_second

    # also called by the checkpoint (_checkpoint.pyx) for every result it journals
    cpdef replay_second(self, now)
    # the engine's C chain (_engine.pyx) calls the hook here for every replayed command
    cdef object call_c(self, conn, rec, result, now)
