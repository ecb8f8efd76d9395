# cython: language_level=3
"""StatementInfo as a C struct (the fields are described in _stmtinfo.pxd and stmtinfo.py, which
builds them); Python reads and sets its fields as the attributes they were. And the classifier's
cache in front of stmtinfo.classify_normalized, which the causal planner asks for every text query."""
from fastproxy._digest import normalize as _normalize

KIND_NAMES = ("SESSION", "READ", "LOCK", "DDL", "BEGIN", "COMMIT", "ROLLBACK", "UNKNOWN")


cdef class StatementInfo:
    """Everything here is a property of the statement text, never of a connection."""

    def __init__(self, int kind, tables=(), bint writes=False):
        self.kind = kind
        self.tables = tables           # bare lower-case names; None = unknown
        self.writes = writes           # may change rows
        self.time = False              # names a time function: NOW() & co.
        self.generates_id = False      # may take auto-increment values (INSERT, REPLACE, LOAD, CALL, ...)
        self.multi = False             # several statements in one COM_QUERY
        self.set_statement = False     # MariaDB SET STATEMENT ... FOR: the application sets variables itself
        self.snapshot = False          # START TRANSACTION WITH CONSISTENT SNAPSHOT: a read of everything
        self.sets_time = None          # SET timestamp = x: True; = DEFAULT: False; else None
        self.sets_insert_id = False    # SET insert_id / last_insert_id
        self.autocommit = None         # SET autocommit = 0/1
        self.references = ()           # DDL: tables it names as foreign-key parents
        self.view_of = ()              # CREATE/ALTER VIEW v: the tables it reads
        self.time_default = False      # DDL: a DEFAULT / ON UPDATE CURRENT_TIMESTAMP column
        self.trigger_on = None         # CREATE TRIGGER ... ON t
        self.creates_function = None   # CREATE FUNCTION f

    @property
    def kind_name(self) -> str:
        return KIND_NAMES[self.kind]

    def __repr__(self) -> str:
        return (f"<StatementInfo {self.kind_name} tables={self.tables} writes={self.writes} time={self.time} "
                f"generates_id={self.generates_id} multi={self.multi}>")


cdef class Classifier:
    """``classify`` with a bounded cache keyed by the normalized text (statements of one shape share
    an entry) and the target's stored functions."""

    def __init__(self, functions=None, Py_ssize_t max_entries=20_000):
        self.functions = functions if functions is not None else set()  # shared: CREATE FUNCTION adds to it
        self.max_entries = max_entries
        self._cache = {}

    def __call__(self, sql):
        return self.classify_c(sql)

    cdef StatementInfo classify_c(self, sql):
        text = _normalize(sql)
        info = self._cache.get(text)
        if info is None:
            # a shape not seen yet: the classifier proper (stmtinfo.py imports this module, hence here)
            from fastproxy.replay.stmtinfo import classify_normalized

            if len(self._cache) >= self.max_entries:
                self._cache.clear()
            info = self._cache[text] = classify_normalized(text, self.functions)
            if (<StatementInfo>info).creates_function:
                self.functions.add((<StatementInfo>info).creates_function)
                self._cache.clear()  # earlier shapes may call it
        return <StatementInfo>info
