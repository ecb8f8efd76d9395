# cython: language_level=3
"""Bounded ring buffer of encoded capture records (format: docs/traffic-format.md).

A wrapper over the C ring of fastproxy/csrc/ring.c: the data plane's worker threads append to it
without the GIL, Python appends under the GIL (connection events), and the capture writer drains it
on its own thread. A mutex inside the ring serializes appends (see ring.h). Nothing here ever blocks
for long or grows: a record that does not fit is refused, and the caller stops the capture
(dropping records silently would make a replay lie).
"""
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.string cimport memset


cdef class RingBuffer:
    """RingBuffer(capacity_bytes): a fixed C buffer of whole encoded records."""

    def __cinit__(self, Py_ssize_t capacity_bytes):
        if capacity_bytes < RING_HEADER_SIZE:
            raise ValueError(f"ring buffer capacity must be at least {RING_HEADER_SIZE} bytes")
        if ring_init(&self._r, capacity_bytes) != 0:
            raise MemoryError(f"cannot allocate a {capacity_bytes}-byte ring buffer")

    def __dealloc__(self):
        ring_destroy(&self._r)

    cdef bint append_raw(self, const RecordHead *h, const char *payload, Py_ssize_t n) noexcept nogil:
        return ring_append(&self._r, h, payload, n, 0) == RING_APPENDED

    cdef bint _append_obj(self, const RecordHead *h, object payload) except -1:
        cdef Py_buffer view
        cdef bint ok
        if PyBytes_CheckExact(payload):
            return self.append_raw(h, PyBytes_AS_STRING(payload), len(payload))
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
        return self._append_obj(&h, payload)

    def append_event(self, uint8_t kind, uint64_t conn_id, int64_t ts_ns, body):
        """Append a connection event (CONN_OPEN/STATE/CLOSE); False when it does not fit."""
        cdef RecordHead h
        if kind < RING_KIND_CONN_OPEN or kind > RING_KIND_CONN_CLOSE:
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
        cdef size_t n, nrec
        cdef bytes out
        cdef char *dst
        n = ring_drain_size(&self._r, max_bytes, &nrec)
        if n == 0:
            return b""
        out = PyBytes_FromStringAndSize(NULL, n)
        dst = PyBytes_AS_STRING(out)
        with nogil:
            ring_drain_copy(&self._r, dst, n)
        ring_drain_release(&self._r, n, nrec)
        return out

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
    def bytes_appended(self):
        """Encoded bytes (headers included) of all records ever appended."""
        return self._r.bytes_appended

    @property
    def records_drained(self):
        """Records ever returned by drain (the writer uses it to count what it wrote)."""
        return self._r.records_drained

    @property
    def records_buffered(self):
        return self._r.records_used
