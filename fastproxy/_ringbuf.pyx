# cython: language_level=3
"""Bounded ring buffer of encoded capture records (format: docs/traffic-format.md).

The proxy appends on the event-loop thread and the capture writer drains on its own thread.
Every method does all its buffer mutation while holding the GIL and without calling back into
Python in between, so an append and a drain never interleave: no lock is needed. Nothing here
ever blocks or grows: a record that does not fit is refused (`refusal` says why), and the caller
stops the capture (dropping records silently would make a replay lie).

Records too large for the ring (a 70 MiB INSERT of a BLOB into a 64 MiB ring) take a side path
when it is enabled (large_max > 0): the payload object is kept by reference in a dict, never
copied, and a small marker record (the real header, kind | LARGE_FLAG, then the payload's u64 id)
holds its place in the ring, so the writer emits it in sequence: drain() stops before a marker,
next_large() gives the record, pop_large() removes it once written. The payload bytes waiting on
the side path are bounded by large_max.
"""
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.bytes cimport (PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize,
                            PyBytes_GET_SIZE)
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset

cdef extern from *:
    Py_ssize_t PY_SSIZE_T_MAX

# Keep in sync with fastproxy/capture/record.py (HEADER = struct.Struct("<IBBHQqqQQQQQIHH")).
cdef enum:
    HEADER_SIZE = 80
    KIND_COMMAND = 1
    KIND_CONN_OPEN = 2
    KIND_CONN_CLOSE = 4
    LARGE_FLAG = 0x80                # in a marker's kind byte: the payload is on the side path
    MARKER_SIZE = HEADER_SIZE + 8    # a marker record: the header, then the payload's u64 id
cdef Py_ssize_t MAX_RECORD = 0xFFFFFFFF  # record_len is a u32
cdef Py_ssize_t NO_SIDE_PATH = PY_SSIZE_T_MAX

# Why the last append was refused (RingBuffer.refusal).
REFUSED_NONE = 0
REFUSED_FULL = 1          # no room in the ring: the writer has not caught up
REFUSED_LARGE_LIMIT = 2   # the side path already holds large_max bytes of large records
REFUSED_TOO_LARGE = 3     # larger than a record can be (record_len is a u32)
REFUSED_BIGGER_THAN_RING = 4  # larger than the whole ring, and no side path


# Explicit little-endian stores: the file format must not depend on the host's byte order.
# Written out byte by byte (no loop), so that the compiler merges each into a single store on
# little-endian hosts (gcc's store merging at -O2; a loop stays a loop there).
cdef inline void _le16(unsigned char *p, uint16_t v) noexcept nogil:
    p[0] = <unsigned char>v
    p[1] = <unsigned char>(v >> 8)


cdef inline void _le32(unsigned char *p, uint32_t v) noexcept nogil:
    p[0] = <unsigned char>v
    p[1] = <unsigned char>(v >> 8)
    p[2] = <unsigned char>(v >> 16)
    p[3] = <unsigned char>(v >> 24)


cdef inline void _le64(unsigned char *p, uint64_t v) noexcept nogil:
    _le32(p, <uint32_t>v)
    _le32(p + 4, <uint32_t>(v >> 32))


cdef inline uint32_t _rd32(const unsigned char *p) noexcept nogil:
    return p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)


cdef inline uint64_t _rd64(const unsigned char *p) noexcept nogil:
    return _rd32(p) | (<uint64_t>_rd32(p + 4) << 32)


cdef inline void _encode_head(unsigned char *hdr, const RecordHead *h, uint32_t total,
                          uint8_t kind) noexcept nogil:
    _le32(hdr, total)
    hdr[4] = kind
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


cdef class RingBuffer:
    """RingBuffer(capacity_bytes, large_max=0): a fixed C buffer of whole encoded records.

    large_max > 0 enables the side path: payloads of more than a quarter of the capacity wait
    outside the ring, at most large_max bytes of them at a time.
    """

    def __cinit__(self, Py_ssize_t capacity_bytes, Py_ssize_t large_max=0):
        if capacity_bytes < HEADER_SIZE:
            raise ValueError(f"ring buffer capacity must be at least {HEADER_SIZE} bytes")
        if large_max < 0:
            raise ValueError("large_max must not be negative")
        self._buf = <char *>malloc(capacity_bytes)
        if self._buf == NULL:
            raise MemoryError(f"cannot allocate a {capacity_bytes}-byte ring buffer")
        self._cap = capacity_bytes
        self._large = {}
        self._large_max = large_max
        # A quarter: one large record cannot crowd out the ordinary traffic. Never below a
        # marker's size, where the side path would save nothing.
        self._large_min = max(capacity_bytes // 4, MARKER_SIZE) - HEADER_SIZE if large_max else NO_SIDE_PATH

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
        if total > self._cap - self._used or total > MAX_RECORD:
            self._refusal = (REFUSED_TOO_LARGE if total > MAX_RECORD else
                             REFUSED_BIGGER_THAN_RING if total > self._cap else REFUSED_FULL)
            return False
        _encode_head(hdr, h, <uint32_t>total, h.kind)
        self._put(<char *>hdr, HEADER_SIZE)
        self._put(payload, n)
        self._used += total
        self._records_used += 1
        self._commands_used += h.kind == KIND_COMMAND
        self._records_appended += 1
        self._bytes_appended += <uint64_t>total
        return True

    cdef bint append_marker(self, const RecordHead *h, uint64_t large_id, Py_ssize_t n) noexcept:
        cdef unsigned char hdr[MARKER_SIZE]
        if MARKER_SIZE > self._cap - self._used:
            self._refusal = REFUSED_FULL
            return False
        _encode_head(hdr, h, MARKER_SIZE, h.kind | LARGE_FLAG)
        _le64(hdr + HEADER_SIZE, large_id)
        self._put(<char *>hdr, MARKER_SIZE)
        self._used += MARKER_SIZE
        self._records_used += 1
        self._markers_used += 1
        self._commands_used += h.kind == KIND_COMMAND
        self._records_appended += 1
        self._bytes_appended += <uint64_t>(HEADER_SIZE + n)
        return True

    cdef bint _append_large(self, const RecordHead *h, object payload, Py_ssize_t n) except -1:
        if HEADER_SIZE + n > MAX_RECORD:
            self._refusal = REFUSED_TOO_LARGE
            return False
        if n > self._large_max - self._large_bytes:
            self._refusal = REFUSED_LARGE_LIMIT
            return False
        if MARKER_SIZE > self._cap - self._used:
            self._refusal = REFUSED_FULL
            return False
        if not PyBytes_CheckExact(payload):
            payload = bytes(payload)  # the caller may reuse its buffer: keep an immutable copy
            if MARKER_SIZE > self._cap - self._used:  # the copy may have run a finalizer
                self._refusal = REFUSED_FULL
                return False
        # The insert comes first: it is the only step that may fail. An int key and a dict
        # never call back into Python, so the marker append below still finds its room.
        self._large[self._next_large_id] = payload
        self.append_marker(h, self._next_large_id, n)
        self._next_large_id += 1
        self._large_bytes += n
        return True

    cdef bint _append_obj(self, const RecordHead *h, object payload) except -1:
        cdef Py_buffer view
        cdef bint ok = False
        cdef Py_ssize_t n
        if PyBytes_CheckExact(payload):
            n = PyBytes_GET_SIZE(payload)
            if n > self._large_min:
                return self._append_large(h, payload, n)
            return self.append_raw(h, PyBytes_AS_STRING(payload), n)
        # Acquire the buffer before touching any state: only this step may run Python code.
        PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
        try:
            n = view.len
            if n <= self._large_min:
                ok = self.append_raw(h, <const char *>view.buf, n)
        finally:
            PyBuffer_Release(&view)
        if n > self._large_min:
            return self._append_large(h, payload, n)
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
        """Append a connection event (CONN_OPEN/STATE/CLOSE); False when it does not fit."""
        cdef RecordHead h
        if kind < KIND_CONN_OPEN or kind > KIND_CONN_CLOSE:
            raise ValueError(f"not a connection event kind: {kind}")
        memset(&h, 0, sizeof(h))
        h.kind = kind
        h.conn_id = conn_id
        h.start_ns = ts_ns
        return self._append_obj(&h, body)

    def drain(self, Py_ssize_t max_bytes):
        """Remove and return the oldest whole records, up to max_bytes of them (b"" if empty).

        A single record larger than max_bytes is returned alone, so a drain always progresses.
        A drain stops before a large record's marker; b"" when one is next (see next_large).
        """
        cdef Py_ssize_t n, nrec, ncmd, pos
        cdef uint32_t rlen
        cdef unsigned char head[5]
        cdef bytes out
        if self._used == 0:
            return b""
        if self._markers_used == 0 and self._used <= max_bytes:
            n = self._used
            nrec = self._records_used
            ncmd = self._commands_used
        else:
            # Walk record headers to stop on a record boundary (and before a marker).
            n = 0
            nrec = 0
            ncmd = 0
            pos = self._tail
            while n < self._used:
                self._get(<char *>head, pos, 5)
                rlen = _rd32(head)
                if head[4] & LARGE_FLAG or (n > 0 and n + rlen > max_bytes):
                    break
                n += rlen
                nrec += 1
                ncmd += head[4] == KIND_COMMAND
                pos = (pos + rlen) % self._cap
            if n == 0:
                return b""
        # The allocation may run a GC finalizer (and so switch threads); an append meanwhile
        # only writes after head, never into [tail, tail + n), so the copy below stays valid.
        out = PyBytes_FromStringAndSize(NULL, n)
        self._get(PyBytes_AS_STRING(out), self._tail, n)
        self._take(n, nrec, ncmd)
        return out

    cdef void _take(self, Py_ssize_t n, Py_ssize_t nrec, Py_ssize_t ncmd) noexcept:
        self._tail = (self._tail + n) % self._cap
        self._used -= n
        self._records_used -= nrec
        self._commands_used -= ncmd
        self._records_drained += <uint64_t>nrec
        self._commands_drained += <uint64_t>ncmd
        if self._used == 0:
            # Restart at offset 0 so that later records wrap (two memcpys) less often.
            self._head = self._tail = 0

    cdef object _marker_id(self, unsigned char *hdr):
        """The side-path id of the record at the tail if it is a marker (hdr filled), else None."""
        if self._markers_used == 0 or self._used == 0:
            return None
        self._get(<char *>hdr, self._tail, 5)
        if not hdr[4] & LARGE_FLAG:
            return None
        self._get(<char *>hdr, self._tail, MARKER_SIZE)
        return _rd64(hdr + HEADER_SIZE)

    def next_large(self):
        """(header, payload) of the record at the tail when it took the side path, else None.

        header is the record's real 80-byte header; the record stays until pop_large().
        """
        cdef unsigned char hdr[MARKER_SIZE]
        large_id = self._marker_id(hdr)
        if large_id is None:
            return None
        payload = self._large[large_id]
        _le32(hdr, <uint32_t>(HEADER_SIZE + len(payload)))
        hdr[4] &= ~LARGE_FLAG
        return PyBytes_FromStringAndSize(<char *>hdr, HEADER_SIZE), payload

    def pop_large(self):
        """Remove the side-path record at the tail (after next_large() and its write)."""
        cdef unsigned char hdr[MARKER_SIZE]
        large_id = self._marker_id(hdr)
        if large_id is None:
            raise ValueError("no large record at the tail of the ring buffer")
        payload = self._large.pop(large_id)
        self._large_bytes -= len(payload)
        self._markers_used -= 1
        self._take(MARKER_SIZE, 1, (hdr[4] & ~LARGE_FLAG) == KIND_COMMAND)

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

    @property
    def commands_drained(self):
        """COMMAND records ever removed by drain / pop_large."""
        return self._commands_drained

    @property
    def refusal(self):
        """Why the last refused append was refused: REFUSED_FULL, _LARGE_LIMIT or _TOO_LARGE."""
        return self._refusal

    @property
    def large_min(self):
        """Payloads of more bytes than this take the side path (when it is enabled)."""
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
        return self._markers_used
