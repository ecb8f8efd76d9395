# cython: language_level=3
from fastproxy.report._latency cimport LatencyTable


cdef class VerdictCore:
    cdef public dict _by_text  # (cmd, SQL text) -> DigestInfo: digests once per text
    cdef public LatencyTable latency  # a histogram pair per digest, and the "other" row
    cdef public int other_slot
    cdef public long long other_commands  # commands whose digest came past max_digests
    cdef public long long compared  # commands compared (both sides succeeded)
