# cython: language_level=3
"""The record decoder in C, for the replay's reader (every record of a capture passes through it).

Same contract, same records and same errors as the reference decoder `record.decode_records`
(docs/traffic-format.md): the header fields are read little-endian straight from the buffer, and
each Record (a NamedTuple) is built with tuple.__new__, without the Python-level __new__ frame.
"""
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

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
    cdef object record_type = Record
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
        payload = (<const char *>p)[size:rlen]
        # header: u32 len, u8 kind, u8 outcome, u16 err_code, u64 conn_id, i64 start, i64 end, u64 affected,
        # u64 rows [, u64 last_insert_id, u64 hash_ordered, u64 hash_unordered, u32 columns, u16 warnings,
        # u16 status_flags]
        if v1:
            out.append(tuple.__new__(record_type, (
                kind, _u64(p + 8), <int64_t>_u64(p + 16), <int64_t>_u64(p + 24), outcome, _u16(p + 6),
                _u64(p + 32), _u64(p + 40), payload, 0, 0, 0, 0, 0, 0)))
        else:
            out.append(tuple.__new__(record_type, (
                kind, _u64(p + 8), <int64_t>_u64(p + 16), <int64_t>_u64(p + 24), outcome, _u16(p + 6),
                _u64(p + 32), _u64(p + 40), payload, _u64(p + 48), _u64(p + 56), _u64(p + 64), _u32(p + 72),
                _u16(p + 76), _u16(p + 78))))
        pos += rlen
    return out, pos
