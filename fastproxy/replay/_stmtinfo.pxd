# cython: language_level=3

cdef class StatementInfo:
    """What a statement does (fastproxy/replay/stmtinfo.py fills it in): a C struct, so that the
    causal planner (_causal.pyx) reads its fields once per replayed command without a lookup."""
    cdef public int kind
    cdef public object tables          # tuple of bare lower-case names; None = unknown
    cdef public bint writes
    cdef public bint time
    cdef public bint generates_id
    cdef public bint multi
    cdef public bint set_statement
    cdef public bint snapshot
    cdef public object sets_time       # True / False / None
    cdef public bint sets_insert_id
    cdef public object autocommit      # True / False / None
    cdef public tuple references
    cdef public tuple view_of
    cdef public bint time_default
    cdef public object trigger_on
    cdef public object creates_function


cdef class Classifier:
    cdef public object functions   # the target's stored functions (a set shared with the table scopes)
    cdef public Py_ssize_t max_entries
    cdef public dict _cache        # normalized text -> StatementInfo

    cdef StatementInfo classify_c(self, sql)
