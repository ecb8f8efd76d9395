# cython: language_level=3
"""Bounded ring buffer of encoded capture records (format: docs/traffic-format.md).

A wrapper over the C ring of fastproxy/csrc/ring.c: the data plane's worker threads append to it
without the GIL, Python appends under the GIL (connection events), and the capture writer drains it
on its own thread. A mutex inside the ring serializes appends (see ring.h). Nothing here ever blocks
for long or grows: a record that does not fit is refused (`refusal` says why), and the caller stops
the capture (dropping records silently would make a replay lie).

Records too large for the ring (a 70 MiB INSERT of a BLOB into a 64 MiB ring) take a side path when
it is enabled (large_max > 0): the payload object is kept by reference in a dict, never copied, and
a marker record (the real header, kind | RING_LARGE_FLAG, then the payload's u64 id) holds its place
in the ring, so the writer emits it in sequence: drain() stops before a marker, next_large() gives
the record, pop_large() removes it once written. The payload bytes waiting on the side path are
bounded by large_max.
"""
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.bytes cimport (PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize,
                            PyBytes_GET_SIZE)
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.string cimport memset

cdef extern from *:
    Py_ssize_t PY_SSIZE_T_MAX

# Why the last append from Python was refused (RingBuffer.refusal); see ring.h.
REFUSED_NONE = RING_REFUSED_NONE
REFUSED_FULL = RING_REFUSED_FULL
REFUSED_LARGE_LIMIT = RING_REFUSED_LARGE_LIMIT
REFUSED_TOO_LARGE = RING_REFUSED_TOO_LARGE
REFUSED_BIGGER_THAN_RING = RING_REFUSED_BIGGER_THAN_RING
REFUSED_CLOSED = RING_REFUSED_CLOSED


cdef inline void _le64(unsigned char *p, uint64_t v) noexcept nogil:
    cdef int i
    for i in range(8):
        p[i] = <unsigned char>(v >> (8 * i))


cdef inline uint64_t _rd64(const unsigned char *p) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(8):
        v |= (<uint64_t>p[i]) << (8 * i)
    return v


cdef class RingBuffer:
    """RingBuffer(capacity_bytes, large_max=0): a fixed C buffer of whole encoded records.

    large_max > 0 enables the side path: payloads of more than a quarter of the capacity wait
    outside the ring, at most large_max bytes of them at a time.
    """

    def __cinit__(self, Py_ssize_t capacity_bytes, Py_ssize_t large_max=0):
        if capacity_bytes < RING_HEADER_SIZE:
            raise ValueError(f"ring buffer capacity must be at least {RING_HEADER_SIZE} bytes")
        if large_max < 0:
            raise ValueError("large_max must not be negative")
        if ring_init(&self._r, capacity_bytes) != 0:
            raise MemoryError(f"cannot allocate a {capacity_bytes}-byte ring buffer")
        self._large = {}
        self._large_max = large_max
        # A quarter: one large record cannot crowd out the ordinary traffic. Never below a
        # marker's size, where the side path would save nothing.
        self._large_min = (max(capacity_bytes // 4, RING_MARKER_SIZE) - RING_HEADER_SIZE if large_max
                           else PY_SSIZE_T_MAX)

    def __dealloc__(self):
        ring_destroy(&self._r)

    cdef bint append_raw(self, const RecordHead *h, const char *payload, Py_ssize_t n) noexcept nogil:
        return ring_append(&self._r, h, payload, n, 0) == RING_APPENDED

    cdef bint append_large(self, const RecordHead *h, object payload, Py_ssize_t n, int flags=0) except -1:
        """The side path: keep `payload` (n bytes; copied unless it is bytes) and append a marker.
        `flags`: ring_append's (the data plane's workers append theirs RING_ORDERED)."""
        cdef RecordHead m
        cdef unsigned char id_le[8]
        cdef int rc
        if <size_t>n > RING_MAX_RECORD - RING_HEADER_SIZE:
            self._refusal = REFUSED_TOO_LARGE
            return False
        if n > self._large_max - self._large_bytes:
            self._refusal = REFUSED_LARGE_LIMIT
            return False
        if not PyBytes_CheckExact(payload):
            payload = bytes(payload)  # the caller may reuse its buffer: keep an immutable copy
        large_id = self._next_large_id
        # In the dict before the marker is in the ring: the writer may reach the marker at once.
        self._large[large_id] = payload
        m = h[0]
        m.kind = h.kind | RING_LARGE_FLAG
        _le64(id_le, self._next_large_id)
        rc = ring_append(&self._r, &m, <const char *>id_le, 8, flags)
        if rc != RING_APPENDED:
            del self._large[large_id]
            self._refusal = REFUSED_CLOSED if rc == RING_CLOSED else REFUSED_FULL
            return False
        self._next_large_id += 1
        self._large_bytes += n
        self._large_extra += <uint64_t>(n - 8)
        return True

    cdef bint _append_obj(self, const RecordHead *h, object payload, int flags=0) except -1:
        cdef Py_buffer view
        cdef int rc = RING_FULL
        cdef Py_ssize_t n
        if PyBytes_CheckExact(payload):
            n = PyBytes_GET_SIZE(payload)
            if n > self._large_min:
                return self.append_large(h, payload, n, flags)
            rc = ring_append(&self._r, h, PyBytes_AS_STRING(payload), n, flags)
        else:
            PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
            n = view.len
            try:
                if n <= self._large_min:
                    rc = ring_append(&self._r, h, <const char *>view.buf, n, flags)
            finally:
                PyBuffer_Release(&view)
            if n > self._large_min:
                return self.append_large(h, payload, n, flags)
        if rc == RING_APPENDED:
            return True
        self._refusal = (REFUSED_CLOSED if rc == RING_CLOSED else
                         REFUSED_TOO_LARGE if <size_t>n > RING_MAX_RECORD - RING_HEADER_SIZE else
                         REFUSED_BIGGER_THAN_RING if <size_t>n > self._r.cap - RING_HEADER_SIZE else REFUSED_FULL)
        return False

    def append_command(self, uint64_t conn_id, int64_t start_ns, int64_t end_ns,
                       uint8_t outcome, uint16_t err_code, uint64_t affected_rows,
                       uint64_t rows, payload, uint64_t last_insert_id=0, uint32_t columns=0,
                       uint16_t warnings=0, uint16_t status_flags=0, uint64_t hash_ordered=0,
                       uint64_t hash_unordered=0, bint ordered=False):
        """Append one command record; False (nothing written) when it does not fit. `ordered`: one
        of the completion-ordered records with the data plane's workers' (RING_ORDERED: its lateness
        counts in max_late_ns)."""
        cdef RecordHead h
        h.kind = RING_KIND_COMMAND
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
        return self._append_obj(&h, payload, RING_ORDERED if ordered else 0)

    def append_event(self, uint8_t kind, uint64_t conn_id, int64_t ts_ns, body):
        """Append a connection event (CONN_OPEN/STATE/CLOSE) or a LOCAL_INFILE record; False when it
        does not fit."""
        cdef RecordHead h
        if kind < RING_KIND_CONN_OPEN or kind > RING_KIND_LOCAL_INFILE:
            raise ValueError(f"not a connection event kind: {kind}")
        memset(&h, 0, sizeof(h))
        h.kind = kind
        h.conn_id = conn_id
        h.start_ns = ts_ns
        return self._append_obj(&h, body)

    def close(self):
        """Refuse every later append (the capture stopped): what is in the buffer stays drainable."""
        ring_close(&self._r)

    def drain(self, Py_ssize_t max_bytes):
        """Remove and return the oldest whole records, up to max_bytes of them (b"" if empty).

        A single record larger than max_bytes is returned alone, so a drain always progresses.
        Only one thread may drain (the capture writer).
        """
        cdef size_t n, nrec, pos
        cdef uint64_t ncmd = 0
        cdef bytes out
        cdef unsigned char *dst
        n = ring_drain_size(&self._r, max_bytes, &nrec)
        if n == 0:
            return b""  # empty, or a large record is next (next_large)
        out = PyBytes_FromStringAndSize(NULL, n)
        dst = <unsigned char *>PyBytes_AS_STRING(out)
        with nogil:
            ring_drain_copy(&self._r, <char *>dst, n)
            pos = 0
            while pos < n:  # count the command records: the writer reports what the files hold
                ncmd += dst[pos + 4] == RING_KIND_COMMAND
                pos += dst[pos] | (<size_t>dst[pos + 1] << 8) | (<size_t>dst[pos + 2] << 16) | (<size_t>dst[pos + 3] << 24)
        ring_drain_release(&self._r, n, nrec)
        self._commands_drained += ncmd
        return out

    cdef object _marker_id(self, unsigned char *hdr):
        """The side-path id of the oldest record if it is a marker (hdr filled), else None."""
        if not ring_peek_marker(&self._r, hdr):
            return None
        return _rd64(hdr + RING_HEADER_SIZE)

    def next_large(self):
        """(header, payload) of the oldest record when it took the side path, else None.

        header is the record's real 80-byte header; the record stays until pop_large().
        """
        cdef unsigned char hdr[RING_MARKER_SIZE]
        large_id = self._marker_id(hdr)
        if large_id is None:
            return None
        payload = self._large[large_id]
        total = RING_HEADER_SIZE + len(payload)
        for i in range(4):
            hdr[i] = (total >> (8 * i)) & 0xFF
        hdr[4] &= ~RING_LARGE_FLAG
        return PyBytes_FromStringAndSize(<char *>hdr, RING_HEADER_SIZE), payload

    def pop_large(self):
        """Remove the side-path record at the tail (after next_large() and its write)."""
        cdef unsigned char hdr[RING_MARKER_SIZE]
        large_id = self._marker_id(hdr)
        if large_id is None:
            raise ValueError("no large record at the tail of the ring buffer")
        payload = self._large.pop(large_id)
        self._large_bytes -= len(payload)
        ring_release_marker(&self._r)
        self._commands_drained += (hdr[4] & ~RING_LARGE_FLAG) == RING_KIND_COMMAND

    @property
    def used(self):
        """Bytes of records waiting to be drained."""
        return self._r.used

    @property
    def capacity(self):
        return self._r.cap

    @property
    def closed(self):
        return bool(self._r.closed)

    @property
    def records_appended(self):
        return self._r.records_appended

    @property
    def commands_appended(self):
        """COMMAND records among records_appended."""
        return self._r.commands_appended

    @property
    def max_late_ns(self):
        """The most an ordered command's end_ns fell behind one appended before it (ns): how far
        a reader must look ahead to put the records back in completion order."""
        return self._r.max_late_ns

    @property
    def bytes_appended(self):
        """Encoded bytes (headers included) of all records ever appended (large ones in full)."""
        return self._r.bytes_appended + self._large_extra

    @property
    def records_drained(self):
        """Records ever returned by drain (the writer uses it to count what it wrote)."""
        return self._r.records_drained

    @property
    def records_buffered(self):
        return self._r.records_used

    @property
    def commands_drained(self):
        """COMMAND records ever removed by drain / pop_large."""
        return self._commands_drained

    @property
    def refusal(self):
        """Why the last refused append (from Python) was refused: one of REFUSED_*."""
        return self._refusal

    @property
    def large_min(self):
        """Payloads of more bytes than this take the side path (None: no side path)."""
        return self._large_min if self._large_max else None

    @property
    def large_max(self):
        """Bound on the payload bytes of large records waiting on the side path (0: no side path)."""
        return self._large_max

    @property
    def large_bytes(self):
        """Payload bytes of the large records waiting on the side path."""
        return self._large_bytes

    @property
    def large_pending(self):
        """Large records waiting on the side path."""
        return self._r.markers_used
