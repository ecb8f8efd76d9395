# cython: language_level=3
# A binary min-heap of C entries in a caller-owned array, shared by the replay's schedule and causal
# order (replay/_scheduler.pyx) and the reader's completion-order window (capture/_reorder.pyx): a
# push or pop allocates nothing and touches no Python object. The caller grows the array.
from libc.stdint cimport int64_t, uint64_t


cdef struct HeapEntry:
    int64_t due      # what the heap orders by
    uint64_t seq     # push order: equal `due`s leave first-in first-out
    int64_t key      # what the entry stands for (the heap never reads it)


cdef inline bint heap_before(const HeapEntry *a, const HeapEntry *b) noexcept nogil:
    return a.due < b.due or (a.due == b.due and a.seq < b.seq)


cdef inline void heap_push(HeapEntry *heap, Py_ssize_t size, HeapEntry e) noexcept nogil:
    """Add `e` to the heap of `size` entries (room for one more is the caller's): sift up through a
    hole, moving parents down and writing the new entry once."""
    cdef Py_ssize_t i = size, parent
    while i > 0:
        parent = (i - 1) >> 1
        if not heap_before(&e, &heap[parent]):
            break
        heap[i] = heap[parent]
        i = parent
    heap[i] = e


cdef inline void heap_remove_first(HeapEntry *heap, Py_ssize_t size) noexcept nogil:
    """Drop heap[0] from a heap that had `size` + 1 entries and now has `size`: the former last entry
    sifts down from the root, again through a hole."""
    cdef Py_ssize_t i = 0, child
    cdef HeapEntry last
    if size == 0:
        return
    last = heap[size]
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        if child + 1 < size and heap_before(&heap[child + 1], &heap[child]):
            child += 1
        if not heap_before(&heap[child], &last):
            break
        heap[i] = heap[child]
        i = child
    heap[i] = last
