# cython: language_level=3
"""Python access to the result fingerprint hasher (fingerprint.h): for tests, benchmarks and tools.

The tracker (csrc/tracker.c) drives the same C functions as the server's packets pass; this wrapper
hashes rows given as Python bytes, e.g. to fingerprint a result a test built itself.
"""
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer


cdef class Fingerprint:
    """rows in, hashes out: row(payload) per row, result_end() per result set, then .ordered/.unordered."""

    cdef fp_state _fp

    def __cinit__(self):
        fp_init(&self._fp)

    def __dealloc__(self):
        fp_free(&self._fp)

    def reset(self):
        fp_reset(&self._fp)

    def row(self, *parts):
        """One row, its payload given whole or in parts (as reads would split it)."""
        cdef Py_buffer buf
        cdef Py_ssize_t total = sum(len(p) for p in parts)
        fp_row_begin(&self._fp, total if len(parts) == 1 else -1)
        for part in parts:
            PyObject_GetBuffer(part, &buf, PyBUF_SIMPLE)
            try:
                if buf.len and fp_row_bytes(&self._fp, <const unsigned char*>buf.buf, buf.len) < 0:
                    raise MemoryError()
            finally:
                PyBuffer_Release(&buf)
        fp_row_end(&self._fp)

    def result_end(self):
        fp_result_end(&self._fp)

    @property
    def ordered(self):
        return fp_ordered(&self._fp)

    @property
    def unordered(self):
        return fp_unordered(&self._fp)

    @property
    def rows(self):
        return self._fp.rows

    @property
    def results(self):
        return self._fp.results


def fingerprint(result_sets):
    """(ordered, unordered) of a response given as a list of result sets, each a list of row payloads."""
    f = Fingerprint()
    for rows in result_sets:
        for r in rows:
            f.row(r)
        f.result_end()
    return f.ordered, f.unordered


def fold(unsigned long long value, unsigned long long seed):
    """The 8-byte combining step of the definition (exposed for the reference test)."""
    return fp_fold(value, seed)
