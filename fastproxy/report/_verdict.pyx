# cython: language_level=3
"""The fields of fastproxy/report/verdict.py's Verdict that the verdict's per-command hook
(_observe.pyx) reads and counts for every command that came out as captured: C fields, not
attributes looked up by name. Verdict sets and reads them as before.
"""


cdef class VerdictCore:
    """The base of Verdict (fields: _verdict.pxd)."""
