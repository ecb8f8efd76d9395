# Positions of the fields of a capture Record (fastproxy/capture/record.py, a NamedTuple), for the
# Cython modules that read a record as the tuple it is.

cdef enum:
    R_KIND = 0
    R_CONN_ID = 1
    R_START = 2
    R_END = 3
    R_OUTCOME = 4
    R_ERR_CODE = 5
    R_AFFECTED = 6
    R_ROWS = 7
    R_PAYLOAD = 8
    R_LAST_INSERT_ID = 9
    R_HASH_ORDERED = 10
    R_HASH_UNORDERED = 11
    R_COLUMNS = 12
    R_WARNINGS = 13
    R_STATUS_FLAGS = 14
