# cython: language_level=3


cdef class TimelineCore:
    """The series fastproxy/report/observe.py's Timeline keeps, as fields the hook reads in C."""
    cdef public dict captured
    cdef public dict replayed
    cdef public dict lag_max_ms
    cdef public dict lag_sum_ms
    cdef public dict failures
    cdef public dict mismatches


cdef class ObserverCore:
    cdef public object engine
    cdef public object verdict
    cdef public object timeline
    cdef public object second_offset
    cdef public object capture_origin_ns
    cdef public object at_second

    # also called by the checkpoint (_checkpoint.pyx) for every result it journals
    cpdef replay_second(self, now)
    # the engine's C chain (_engine.pyx) calls the hook here for every replayed command
    cdef object call_c(self, conn, rec, result, now)
