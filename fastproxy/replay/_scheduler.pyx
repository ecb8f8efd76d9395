# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Binary min-heap of (due time, key) in a C array, for the replay loop.

One entry per replay connection that has a command waiting. Entries are plain C structs in one
realloc'd array, so a push or pop allocates nothing and touches no Python object; see
bench/test_bench_replay_core.py for the comparison with `heapq` over tuples that justifies it.
"""
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from libc.stdint cimport INT64_MAX, int64_t, uint64_t


cdef inline bint _before(HeapEntry* a, HeapEntry* b) noexcept nogil:
    # (due, seq) order: equal due times keep push order, so a connection pushed first fires first
    return a.due < b.due or (a.due == b.due and a.seq < b.seq)


cdef class Scheduler:
    """Keys (non-negative ints, e.g. connection indexes) ordered by due time in nanoseconds.

    ``pop`` and ``peek_due`` raise IndexError when empty. Equal due times pop in push order.
    """

    def __cinit__(self, Py_ssize_t capacity=64):
        self._heap = NULL
        self._size = 0
        self._capacity = 0
        self._next_seq = 0
        if capacity < 1:
            capacity = 1
        self._heap = <HeapEntry*>PyMem_Realloc(NULL, capacity * sizeof(HeapEntry))
        if self._heap == NULL:
            raise MemoryError()
        self._capacity = capacity

    def __dealloc__(self):
        PyMem_Free(self._heap)
        self._heap = NULL

    cdef int _grow(self) except -1:
        cdef Py_ssize_t cap = self._capacity * 2
        cdef HeapEntry* heap = <HeapEntry*>PyMem_Realloc(self._heap, cap * sizeof(HeapEntry))
        if heap == NULL:
            raise MemoryError()
        self._heap = heap
        self._capacity = cap
        return 0

    cdef int push_c(self, int64_t due, int64_t key) except -1:
        cdef HeapEntry e
        cdef Py_ssize_t i, parent
        if self._size == self._capacity:
            self._grow()
        e.due = due
        e.seq = self._next_seq
        e.key = key
        self._next_seq += 1
        # sift up with a hole: move parents down, write the new entry once
        i = self._size
        self._size += 1
        while i > 0:
            parent = (i - 1) >> 1
            if not _before(&e, &self._heap[parent]):
                break
            self._heap[i] = self._heap[parent]
            i = parent
        self._heap[i] = e
        return 0

    cdef int64_t pop_c(self) noexcept:
        cdef HeapEntry* heap = self._heap
        cdef HeapEntry last
        cdef Py_ssize_t i, child, n
        cdef int64_t key
        if self._size == 0:
            return -1
        key = heap[0].key
        self._size -= 1
        n = self._size
        if n == 0:
            return key
        last = heap[n]
        # sift the former last entry down from the root, again through a hole
        i = 0
        while True:
            child = 2 * i + 1
            if child >= n:
                break
            if child + 1 < n and _before(&heap[child + 1], &heap[child]):
                child += 1
            if not _before(&heap[child], &last):
                break
            heap[i] = heap[child]
            i = child
        heap[i] = last
        return key

    cdef int64_t peek_due_c(self) noexcept:
        if self._size == 0:
            return INT64_MAX
        return self._heap[0].due

    def push(self, int64_t due_ns, int64_t key):
        """Schedule ``key`` (>= 0) at ``due_ns``."""
        if key < 0:
            raise ValueError("key must be non-negative")
        self.push_c(due_ns, key)

    def pop(self):
        """Remove and return the key with the smallest due time (FIFO among equal due times)."""
        if self._size == 0:
            raise IndexError("pop from an empty Scheduler")
        return self.pop_c()

    def peek_due(self):
        """Smallest due time; IndexError when empty."""
        if self._size == 0:
            raise IndexError("peek_due on an empty Scheduler")
        return self._heap[0].due

    def pop_due(self, int64_t now_ns, Py_ssize_t max_items=1 << 30):
        """Remove and return, in order, the keys of up to ``max_items`` entries due by ``now_ns``."""
        cdef list out = []
        while self._size > 0 and max_items > 0 and self._heap[0].due <= now_ns:
            out.append(self.pop_c())
            max_items -= 1
        return out

    def clear(self):
        """Drop every entry (keeps the allocated array for reuse)."""
        self._size = 0

    def __len__(self):
        return self._size

    def __bool__(self):
        return self._size > 0

    def __repr__(self):
        return f"<Scheduler size={self._size}>"


def churn(Scheduler s, int64_t[::1] deltas):
    """The steady-state pattern run entirely in C (what Cython callers that cimport the .pxd pay):
    for each delta, pop the earliest entry and push it back `delta` later. Returns a checksum of
    the popped keys. Used by the benchmarks to measure the heap without Python call overhead."""
    cdef Py_ssize_t i
    cdef int64_t due, key, acc = 0
    for i in range(deltas.shape[0]):
        due = s.peek_due_c()
        key = s.pop_c()
        acc += key
        s.push_c(due + deltas[i], key)
    return acc
