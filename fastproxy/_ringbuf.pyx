# cython: language_level=3
"""Bounded ring buffer of encoded capture records (format: docs/traffic-format.md).

The proxy appends on the event-loop thread and the capture writer drains on its own thread.
Every method does all its buffer mutation while holding the GIL and without calling back into
Python in between, so an append and a drain never interleave: no lock is needed. Nothing here
ever blocks or grows: a record that does not fit is refused, and the caller stops the capture
(dropping records silently would make a replay lie).
"""
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset

# Keep in sync with fastproxy/capture/record.py (HEADER = struct.Struct("<IBBHQqqQQQQQIHH")).
cdef enum:
    HEADER_SIZE = 80
    KIND_COMMAND = 1
    KIND_CONN_OPEN = 2
    KIND_CONN_CLOSE = 4
    KIND_LOCAL_INFILE = 5
cdef Py_ssize_t MAX_RECORD = 0xFFFFFFFF  # record_len is a u32


# Explicit little-endian stores: the file format must not depend on the host's byte order.
# On little-endian hosts the compiler turns each into a single store.
cdef inline void _le16(unsigned char *p, uint16_t v) noexcept nogil:
    p[0] = v & 0xFF
    p[1] = (v >> 8) & 0xFF


cdef inline void _le32(unsigned char *p, uint32_t v) noexcept nogil:
    cdef int i
    for i in range(4):
        p[i] = (v >> (8 * i)) & 0xFF


cdef inline void _le64(unsigned char *p, uint64_t v) noexcept nogil:
    cdef int i
    for i in range(8):
        p[i] = (v >> (8 * i)) & 0xFF


cdef class RingBuffer:
    """RingBuffer(capacity_bytes): a fixed C buffer of whole encoded records."""

    def __cinit__(self, Py_ssize_t capacity_bytes):
        if capacity_bytes < HEADER_SIZE:
            raise ValueError(f"ring buffer capacity must be at least {HEADER_SIZE} bytes")
        self._buf = <char *>malloc(capacity_bytes)
        if self._buf == NULL:
            raise MemoryError(f"cannot allocate a {capacity_bytes}-byte ring buffer")
        self._cap = capacity_bytes

    def __dealloc__(self):
        free(self._buf)

    cdef void _put(self, const char *src, Py_ssize_t n) noexcept:
        cdef Py_ssize_t first = self._cap - self._head
        if n < first:
            memcpy(self._buf + self._head, src, n)
            self._head += n
        else:
            # Records are allowed to wrap: two copies beat wasting the tail end of the buffer.
            memcpy(self._buf + self._head, src, first)
            memcpy(self._buf, src + first, n - first)
            self._head = n - first

    cdef void _get(self, char *dst, Py_ssize_t pos, Py_ssize_t n) noexcept:
        cdef Py_ssize_t first = self._cap - pos
        if n <= first:
            memcpy(dst, self._buf + pos, n)
        else:
            memcpy(dst, self._buf + pos, first)
            memcpy(dst + first, self._buf, n - first)

    cdef uint32_t _len_at(self, Py_ssize_t pos) noexcept:
        cdef unsigned char b[4]
        self._get(<char *>b, pos, 4)
        return b[0] | (<uint32_t>b[1] << 8) | (<uint32_t>b[2] << 16) | (<uint32_t>b[3] << 24)

    cdef bint append_raw(self, const RecordHead *h, const char *payload, Py_ssize_t n) noexcept:
        cdef Py_ssize_t total = HEADER_SIZE + n
        cdef unsigned char hdr[HEADER_SIZE]
        if total > MAX_RECORD or total > self._cap - self._used:
            return False
        _le32(hdr, <uint32_t>total)
        hdr[4] = h.kind
        hdr[5] = h.outcome
        _le16(hdr + 6, h.err_code)
        _le64(hdr + 8, h.conn_id)
        _le64(hdr + 16, <uint64_t>h.start_ns)
        _le64(hdr + 24, <uint64_t>h.end_ns)
        _le64(hdr + 32, h.affected_rows)
        _le64(hdr + 40, h.rows)
        _le64(hdr + 48, h.last_insert_id)
        _le64(hdr + 56, h.hash_ordered)
        _le64(hdr + 64, h.hash_unordered)
        _le32(hdr + 72, h.columns)
        _le16(hdr + 76, h.warnings)
        _le16(hdr + 78, h.status_flags)
        self._put(<char *>hdr, HEADER_SIZE)
        self._put(payload, n)
        self._used += total
        self._records_used += 1
        self._records_appended += 1
        self._bytes_appended += <uint64_t>total
        return True

    cdef bint _append_obj(self, const RecordHead *h, object payload) except -1:
        cdef Py_buffer view
        cdef bint ok
        if PyBytes_CheckExact(payload):
            return self.append_raw(h, PyBytes_AS_STRING(payload), len(payload))
        # Acquire the buffer before touching any state: only this step may run Python code.
        PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
        try:
            ok = self.append_raw(h, <const char *>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)
        return ok

    def append_command(self, uint64_t conn_id, int64_t start_ns, int64_t end_ns,
                       uint8_t outcome, uint16_t err_code, uint64_t affected_rows,
                       uint64_t rows, payload, uint64_t last_insert_id=0, uint32_t columns=0,
                       uint16_t warnings=0, uint16_t status_flags=0, uint64_t hash_ordered=0,
                       uint64_t hash_unordered=0):
        """Append one command record; False (nothing written) when it does not fit."""
        cdef RecordHead h
        h.kind = KIND_COMMAND
        h.outcome = outcome
        h.err_code = err_code
        h.conn_id = conn_id
        h.start_ns = start_ns
        h.end_ns = end_ns
        h.affected_rows = affected_rows
        h.rows = rows
        h.last_insert_id = last_insert_id
        h.hash_ordered = hash_ordered
        h.hash_unordered = hash_unordered
        h.columns = columns
        h.warnings = warnings
        h.status_flags = status_flags
        return self._append_obj(&h, payload)

    def append_event(self, uint8_t kind, uint64_t conn_id, int64_t ts_ns, body):
        """Append a connection event (CONN_OPEN/STATE/CLOSE) or a LOCAL_INFILE record; False when it
        does not fit."""
        cdef RecordHead h
        if kind < KIND_CONN_OPEN or kind > KIND_LOCAL_INFILE:
            raise ValueError(f"not a connection event kind: {kind}")
        memset(&h, 0, sizeof(h))
        h.kind = kind
        h.conn_id = conn_id
        h.start_ns = ts_ns
        return self._append_obj(&h, body)

    def drain(self, Py_ssize_t max_bytes):
        """Remove and return the oldest whole records, up to max_bytes of them (b"" if empty).

        A single record larger than max_bytes is returned alone, so a drain always progresses.
        """
        cdef Py_ssize_t n, nrec, pos
        cdef uint32_t rlen
        cdef bytes out
        if self._used == 0:
            return b""
        if self._used <= max_bytes:
            n = self._used
            nrec = self._records_used
        else:
            # Walk record lengths to stop on a record boundary.
            n = 0
            nrec = 0
            pos = self._tail
            while n < self._used:
                rlen = self._len_at(pos)
                if n > 0 and n + rlen > max_bytes:
                    break
                n += rlen
                nrec += 1
                pos = (pos + rlen) % self._cap
        # The allocation may run a GC finalizer (and so switch threads); an append meanwhile
        # only writes after head, never into [tail, tail + n), so the copy below stays valid.
        out = PyBytes_FromStringAndSize(NULL, n)
        self._get(PyBytes_AS_STRING(out), self._tail, n)
        self._tail = (self._tail + n) % self._cap
        self._used -= n
        self._records_used -= nrec
        self._records_drained += <uint64_t>nrec
        if self._used == 0:
            # Restart at offset 0 so that later records wrap (two memcpys) less often.
            self._head = self._tail = 0
        return out

    @property
    def used(self):
        """Bytes of records waiting to be drained."""
        return self._used

    @property
    def capacity(self):
        return self._cap

    @property
    def records_appended(self):
        return self._records_appended

    @property
    def bytes_appended(self):
        """Encoded bytes (headers included) of all records ever appended."""
        return self._bytes_appended

    @property
    def records_drained(self):
        """Records ever returned by drain (the writer uses it to count what it wrote)."""
        return self._records_drained

    @property
    def records_buffered(self):
        return self._records_used
