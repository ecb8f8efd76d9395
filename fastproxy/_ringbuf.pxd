from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t


# The fields of one record header (docs/traffic-format.md, version 2), for C callers.
cdef struct RecordHead:
    uint8_t kind
    uint8_t outcome
    uint16_t err_code
    uint64_t conn_id
    int64_t start_ns
    int64_t end_ns
    uint64_t affected_rows
    uint64_t rows
    uint64_t last_insert_id
    uint64_t hash_ordered
    uint64_t hash_unordered
    uint32_t columns
    uint16_t warnings
    uint16_t status_flags


cdef class RingBuffer:
    cdef:
        char *_buf
        Py_ssize_t _cap
        Py_ssize_t _head           # next write offset
        Py_ssize_t _tail           # next read offset (start of the oldest record)
        Py_ssize_t _used           # bytes of whole records between tail and head
        Py_ssize_t _records_used   # records between tail and head
        uint64_t _records_appended
        uint64_t _bytes_appended
        uint64_t _records_drained

    # For Cython callers (the packet layer) that hold a pointer into their read buffer:
    # appends one record without building any Python object. False when it does not fit.
    cdef bint append_raw(self, const RecordHead *h, const char *payload, Py_ssize_t n) noexcept

    cdef void _put(self, const char *src, Py_ssize_t n) noexcept
    cdef void _get(self, char *dst, Py_ssize_t pos, Py_ssize_t n) noexcept
    cdef uint32_t _len_at(self, Py_ssize_t pos) noexcept
    cdef bint _append_obj(self, const RecordHead *h, object payload) except -1
