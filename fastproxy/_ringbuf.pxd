from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t


cdef extern from "ring.h" nogil:
    # The fields of one record header (docs/traffic-format.md, version 2), for C callers.
    ctypedef struct RecordHead:
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

    ctypedef struct ring:
        size_t cap
        size_t used
        size_t records_used
        uint64_t records_appended
        uint64_t commands_appended
        uint64_t bytes_appended
        uint64_t records_drained
        size_t markers_used
        int64_t max_late_ns
        int closed

    enum:
        RING_HEADER_SIZE
        RING_KIND_COMMAND
        RING_KIND_CONN_OPEN
        RING_KIND_CONN_CLOSE
        RING_KIND_LOCAL_INFILE
        RING_MAX_RECORD
        RING_LARGE_FLAG
        RING_MARKER_SIZE
        RING_ORDERED
        RING_APPENDED
        RING_FULL
        RING_REFUSED_NONE
        RING_REFUSED_FULL
        RING_REFUSED_LARGE_LIMIT
        RING_REFUSED_TOO_LARGE
        RING_REFUSED_BIGGER_THAN_RING
        RING_REFUSED_CLOSED
        RING_CLOSED

    int ring_init(ring *r, size_t capacity)
    void ring_destroy(ring *r)
    int ring_append(ring *r, const RecordHead *h, const char *payload, size_t n, int flags)
    void ring_close(ring *r)
    size_t ring_drain_size(ring *r, size_t max_bytes, size_t *nrec)
    void ring_drain_copy(ring *r, char *dst, size_t n)
    void ring_drain_release(ring *r, size_t n, size_t nrec)
    void ring_drain_pieces(const ring *r, size_t n, const char **p1, size_t *n1, const char **p2, size_t *n2)
    uint64_t ring_count_commands(const ring *r, size_t n)
    int ring_peek_marker(ring *r, unsigned char *out)
    void ring_release_marker(ring *r)


cdef class RingBuffer:
    # The C ring (fastproxy/csrc/ring.c); the data plane appends to it directly (&rb._r), from
    # its worker threads, without the GIL.
    cdef ring _r
    cdef:
        int _refusal                 # why the last append from Python was refused (REFUSED_*)
        uint64_t _commands_drained
        # The side path (see _ringbuf.pyx): payloads of records too large for the ring wait in
        # _large under the id their marker in the ring carries. Touched only under the GIL.
        dict _large
        Py_ssize_t _large_min        # payloads of more bytes than this take the side path
        Py_ssize_t _large_max        # bound on the payload bytes waiting in _large
        Py_ssize_t _large_bytes
        uint64_t _next_large_id
        uint64_t _large_extra        # payload bytes of large records beyond their markers' 8

    # For Cython callers that hold a pointer to a payload: appends one record without building
    # any Python object. False when it does not fit (or the ring is closed). A record too large
    # for the ring takes the side path: append_large, with the GIL, with the payload as bytes.
    cdef bint append_raw(self, const RecordHead *h, const char *payload, Py_ssize_t n) noexcept nogil
    cdef bint append_large(self, const RecordHead *h, object payload, Py_ssize_t n, int flags=*) except -1
    cdef bint _append_obj(self, const RecordHead *h, object payload, int flags=*) except -1
    cdef object _marker_id(self, unsigned char *hdr)
