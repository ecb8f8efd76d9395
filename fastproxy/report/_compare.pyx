# cython: language_level=3
"""The verdict's per-command check in C: did a command come out exactly as captured?

Called for every replayed command that succeeded on both sides (fastproxy/report/observe.py); only
when a field differs does the full comparison (verdict.compare_sides, which knows what each input
records and what a difference means) run in Python.
"""
from fastproxy._packet cimport CommandResult
from fastproxy.capture.record_fields cimport (R_AFFECTED, R_COLUMNS, R_HASH_ORDERED, R_HASH_UNORDERED, R_ROWS,
                                              R_WARNINGS)


def same_as_captured(rec, CommandResult result):
    """True if rows, columns, both fingerprints, affected rows and warnings are all equal: then
    compare_sides finds no difference, whatever it compares. False when in doubt (a value out of
    the 64-bit ranges): the full comparison decides."""
    return same_as_captured_c(<tuple>rec if isinstance(rec, tuple) else tuple(rec), result)


cdef bint same_as_captured_c(tuple rec, CommandResult result) except -1:
    cdef unsigned long long rows, affected, h_ord, h_unord
    cdef long long columns, warnings
    if result.rows < 0 or result.affected_rows < 0:
        return False
    try:
        rows = rec[R_ROWS]
        affected = rec[R_AFFECTED]
        h_ord = rec[R_HASH_ORDERED]
        h_unord = rec[R_HASH_UNORDERED]
        columns = rec[R_COLUMNS]
        warnings = rec[R_WARNINGS]
    except (OverflowError, TypeError):
        return False
    return (<unsigned long long>result.rows == rows and <unsigned long long>result.affected_rows == affected
            and result.hash_unordered == h_unord and result.hash_ordered == h_ord
            and result.columns == columns and result.warnings == warnings)
