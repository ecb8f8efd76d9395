# cython: language_level=3
"""Completion order within a window (fastproxy/capture/reorder.py says why and how), in C: every
record a replay reads passes through it. An iterator rather than a generator, and a heap of C
entries: a record costs a push and a pop in C, no Python frame and no tuple."""
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF, Py_INCREF
from libc.stdint cimport int64_t, intptr_t

from fastproxy._heap cimport HeapEntry, heap_push, heap_remove_first

from fastproxy.capture.record_fields cimport R_CONN_ID, R_END, R_KIND, R_START

from fastproxy.capture.record import KIND_COMMAND as _KIND_COMMAND, KIND_CONN_CLOSE as _KIND_CONN_CLOSE, Record

cdef long KIND_COMMAND = _KIND_COMMAND
cdef long KIND_CONN_CLOSE = _KIND_CONN_CLOSE
cdef object _Record = Record


# an entry's key is the record it stands for: a reference the heap owns (due: the record's key, seq: read order)
cdef inline PyObject *_rec_of(HeapEntry *e) noexcept nogil:
    return <PyObject *><intptr_t>e.key


cdef class CompletionOrder:
    """The records of `records` (an iterable of Records) in order of completion within `window` ns
    (> 0): reorder.in_completion_order."""

    cdef object _it
    cdef HeapEntry *_heap
    cdef Py_ssize_t _size
    cdef Py_ssize_t _capacity
    cdef dict _last_key  # per open connection: its records never overtake each other
    cdef int64_t _window
    cdef int64_t _high  # the latest command end read so far
    cdef int64_t _emitted_end  # the end of the last command given out
    cdef bint _draining  # the input is done (or broke): everything left goes out
    cdef object _error  # how the input broke: raised once what was read before it is given out
    cdef long long _seq

    def __init__(self, records, int64_t window):
        self._it = iter(records)
        self._last_key = {}
        self._window = window
        self._high = 0
        self._emitted_end = 0
        self._draining = False
        self._error = None
        self._seq = 0

    def __cinit__(self, *args, **kwargs):
        self._heap = NULL
        self._size = self._capacity = 0

    def __dealloc__(self):
        cdef Py_ssize_t i
        for i in range(self._size):
            Py_DECREF(<object>_rec_of(&self._heap[i]))
        PyMem_Free(self._heap)

    def __iter__(self):
        return self

    def __next__(self):
        while True:
            # records keyed up to the latest end read less the window go out now
            if self._size and (self._draining or self._heap[0].due <= self._high - self._window):
                return self._take()
            if self._draining:
                if self._error is not None:
                    error, self._error = self._error, None
                    raise error
                raise StopIteration
            try:
                self._read_one()
            except StopIteration:
                self._draining = True
            except Exception as e:  # a damaged file: what was read before the damage goes out, then the error
                self._draining = True
                self._error = e

    cdef int _read_one(self) except -1:
        """The next record of the input onto the heap."""
        cdef int64_t end, key, prev
        rec = next(self._it)
        if type(rec) is _Record:
            kind, conn_id, start_ns, end_ns = (<tuple>rec)[R_KIND], (<tuple>rec)[R_CONN_ID], \
                (<tuple>rec)[R_START], (<tuple>rec)[R_END]
        else:
            kind, conn_id, start_ns, end_ns = rec.kind, rec.conn_id, rec.start_ns, rec.end_ns
        if kind == KIND_COMMAND:
            end = end_ns or start_ns  # a command with no end (cut off) goes by its start
            if end > self._high:  # the window was measured between commands' true ends
                self._high = end
        else:
            end = start_ns
        prev = self._last_key.get(conn_id, 0)
        key = end if end > prev else prev
        if kind == KIND_CONN_CLOSE:
            self._last_key.pop(conn_id, None)  # a closed connection's id may come back: start afresh
        else:
            self._last_key[conn_id] = key
        self._push(key, rec)
        return 0

    cdef int _push(self, int64_t key, rec) except -1:
        cdef HeapEntry e
        cdef HeapEntry *grown
        if self._size == self._capacity:
            grown = <HeapEntry *>PyMem_Realloc(self._heap, (self._capacity * 2 + 16) * sizeof(HeapEntry))
            if grown == NULL:
                raise MemoryError()
            self._heap = grown
            self._capacity = self._capacity * 2 + 16
        Py_INCREF(rec)
        e.due = key
        e.seq = self._seq
        e.key = <int64_t><intptr_t><PyObject *>rec
        self._seq += 1
        heap_push(self._heap, self._size, e)
        self._size += 1
        return 0

    cdef object _pop(self):
        """The first entry's record (the heap's reference becomes the caller's)."""
        cdef PyObject *top = _rec_of(&self._heap[0])
        self._size -= 1
        heap_remove_first(self._heap, self._size)
        rec = <object>top  # a new reference for us ...
        Py_DECREF(rec)     # ... and the heap's given up
        return rec

    cdef object _take(self):
        """The first record of the heap; a command that ended before one already given out gets
        that one's end."""
        rec = self._pop()
        if type(rec) is _Record:
            kind, end_ns = (<tuple>rec)[R_KIND], (<tuple>rec)[R_END]
        else:
            kind, end_ns = rec.kind, rec.end_ns
        if kind == KIND_COMMAND and end_ns:  # no end (0) stays unknown
            if end_ns < self._emitted_end:
                rec = rec._replace(end_ns=self._emitted_end)
                end_ns = self._emitted_end
            self._emitted_end = end_ns
        return rec
