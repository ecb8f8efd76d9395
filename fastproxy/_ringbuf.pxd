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
        Py_ssize_t _commands_used  # COMMAND records between tail and head
        uint64_t _commands_drained
        # The side path for records too large for the ring (see _ringbuf.pyx): payloads wait in
        # _large, keyed by the id a marker record in the ring carries.
        Py_ssize_t _large_min      # payloads of more bytes than this take the side path
        Py_ssize_t _large_max      # bound on the payload bytes waiting in _large
        Py_ssize_t _large_bytes
        Py_ssize_t _markers_used   # marker records between tail and head
        uint64_t _next_large_id
        dict _large
        int _refusal               # why the last append was refused (REFUSED_*)

    # For Cython callers (the packet layer) that hold a pointer into their read buffer:
    # appends one record without building any Python object. False when it does not fit.
    cdef bint append_raw(self, const RecordHead *h, const char *payload, Py_ssize_t n) noexcept
    # Appends the marker of a record whose n-byte payload waits on the side path under large_id
    # (the caller owns that bookkeeping, see _append_large). False when it does not fit.
    cdef bint append_marker(self, const RecordHead *h, uint64_t large_id, Py_ssize_t n) noexcept

    cdef void _put(self, const char *src, Py_ssize_t n) noexcept
    cdef void _get(self, char *dst, Py_ssize_t pos, Py_ssize_t n) noexcept
    cdef uint32_t _len_at(self, Py_ssize_t pos) noexcept
    cdef bint _append_obj(self, const RecordHead *h, object payload) except -1
    cdef bint _append_large(self, const RecordHead *h, object payload, Py_ssize_t n) except -1
    cdef void _take(self, Py_ssize_t n, Py_ssize_t nrec, Py_ssize_t ncmd) noexcept
    cdef object _marker_id(self, unsigned char *hdr)
