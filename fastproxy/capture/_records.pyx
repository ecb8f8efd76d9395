# cython: language_level=3
"""The record decoder in C, for the replay's reader (every record of a capture passes through it).

Same contract, same records and same errors as the reference decoder `record.decode_records`
(docs/traffic-format.md): the header fields are read little-endian straight from the buffer, and
each Record (a NamedTuple) is allocated as the tuple subclass it is and filled in place.
"""
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.long cimport PyLong_FromLong, PyLong_FromLongLong, PyLong_FromUnsignedLongLong
from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_INCREF
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

cdef extern from "Python.h":
    void PyTuple_SET_ITEM(object p, Py_ssize_t pos, object o)  # steals a reference: see _field

cdef extern from *:
    """
    /* a new Record of n fields, all NULL: the type's own allocator, as tuple.__new__(Record, ...) uses */
    static PyObject *fastproxy_alloc_record(PyTypeObject *t, Py_ssize_t n) { return t->tp_alloc(t, n); }
    """
    object fastproxy_alloc_record(PyTypeObject *t, Py_ssize_t n)

cdef extern from "Python.h":
    void PyObject_GC_UnTrack(void *op)

from fastproxy.capture.record import HEADER, HEADER_V1, KIND_COMMAND, MAX_KIND, MAX_OUTCOME, OUTCOME_UNKNOWN, Record
from fastproxy.errors import TrafficFormatError

cdef Py_ssize_t SIZE_V2 = HEADER.size
cdef Py_ssize_t SIZE_V1 = HEADER_V1.size
cdef int MIN_KIND = KIND_COMMAND
cdef int LAST_KIND = MAX_KIND
cdef int LAST_OUTCOME = MAX_OUTCOME
cdef int LAST_OUTCOME_V1 = OUTCOME_UNKNOWN


cdef inline uint64_t _u64(const uint8_t *p) noexcept nogil:
    cdef uint64_t v
    memcpy(&v, p, 8)  # x86-64 and aarch64 Linux: little-endian, as the format
    return v


cdef inline uint32_t _u32(const uint8_t *p) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, p, 4)
    return v


cdef inline uint16_t _u16(const uint8_t *p) noexcept nogil:
    cdef uint16_t v
    memcpy(&v, p, 2)
    return v


cdef Py_ssize_t NFIELDS = len(Record._fields)
cdef PyTypeObject *RECORD_TYPE = <PyTypeObject *>Record


cdef inline object _field(object value):
    Py_INCREF(value)  # PyTuple_SET_ITEM takes this reference over
    return value


cdef object _record_of(const uint8_t *p, Py_ssize_t size, uint32_t rlen, int kind, int outcome, bint v1):
    """One Record allocated as the tuple subclass it is and filled in place (what tuple.__new__(Record,
    fields) does, without the intermediate tuple and the call)."""
    cdef Py_ssize_t i
    cdef object rec = fastproxy_alloc_record(RECORD_TYPE, NFIELDS)
    # header: u32 len, u8 kind, u8 outcome, u16 err_code, u64 conn_id, i64 start, i64 end, u64 affected,
    # u64 rows [, u64 last_insert_id, u64 hash_ordered, u64 hash_unordered, u32 columns, u16 warnings,
    # u16 status_flags]
    PyTuple_SET_ITEM(rec, 0, _field(PyLong_FromLong(kind)))
    PyTuple_SET_ITEM(rec, 1, _field(PyLong_FromUnsignedLongLong(_u64(p + 8))))
    PyTuple_SET_ITEM(rec, 2, _field(PyLong_FromLongLong(<int64_t>_u64(p + 16))))
    PyTuple_SET_ITEM(rec, 3, _field(PyLong_FromLongLong(<int64_t>_u64(p + 24))))
    PyTuple_SET_ITEM(rec, 4, _field(PyLong_FromLong(outcome)))
    PyTuple_SET_ITEM(rec, 5, _field(PyLong_FromLong(_u16(p + 6))))
    PyTuple_SET_ITEM(rec, 6, _field(PyLong_FromUnsignedLongLong(_u64(p + 32))))
    PyTuple_SET_ITEM(rec, 7, _field(PyLong_FromUnsignedLongLong(_u64(p + 40))))
    PyTuple_SET_ITEM(rec, 8, _field(PyBytes_FromStringAndSize(<const char *>p + size, rlen - size)))
    if v1:
        for i in range(9, 15):
            PyTuple_SET_ITEM(rec, i, _field(0))
    else:
        PyTuple_SET_ITEM(rec, 9, _field(PyLong_FromUnsignedLongLong(_u64(p + 48))))
        PyTuple_SET_ITEM(rec, 10, _field(PyLong_FromUnsignedLongLong(_u64(p + 56))))
        PyTuple_SET_ITEM(rec, 11, _field(PyLong_FromUnsignedLongLong(_u64(p + 64))))
        PyTuple_SET_ITEM(rec, 12, _field(PyLong_FromLong(_u32(p + 72))))
        PyTuple_SET_ITEM(rec, 13, _field(PyLong_FromLong(_u16(p + 76))))
        PyTuple_SET_ITEM(rec, 14, _field(PyLong_FromLong(_u16(p + 78))))
    # ints and bytes only: it can never be part of a reference cycle, so the collector need not walk it
    # (it would untrack it at its first pass, after a walk per record)
    PyObject_GC_UnTrack(<PyObject *>rec)
    return rec


def decode_records(buf, Py_ssize_t base_offset=0, str name="<buffer>", header=HEADER):
    """As record.decode_records: (records, bytes consumed) of the whole records at the start of buf."""
    cdef const uint8_t[::1] view = buf
    cdef Py_ssize_t end = view.shape[0]
    cdef bint v1 = header is HEADER_V1
    cdef Py_ssize_t size = SIZE_V1 if v1 else SIZE_V2
    cdef int last_outcome = LAST_OUTCOME_V1 if v1 else LAST_OUTCOME
    cdef Py_ssize_t pos = 0
    cdef uint32_t rlen
    cdef int kind, outcome
    cdef const uint8_t *p
    cdef list out = []
    if end == 0:
        return out, 0
    while end - pos >= size:
        p = &view[pos]
        rlen = _u32(p)
        kind = p[4]
        outcome = p[5]
        if rlen < size or kind < MIN_KIND or kind > LAST_KIND or outcome > last_outcome:
            raise TrafficFormatError(
                f"{name}: corrupt record at offset {base_offset + pos} "
                f"(length {rlen}, kind {kind}, outcome {outcome})")
        if pos + rlen > end:
            break
        out.append(_record_of(p, size, rlen, kind, outcome, v1))
        pos += rlen
    return out, pos
