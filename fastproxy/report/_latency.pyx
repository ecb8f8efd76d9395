# cython: language_level=3
"""Latency histograms per statement digest, in C: a compact log-linear bucket array per digest and
side (the reference — capture or a baseline replay — and the replay under test), O(1) per record.

Buckets: latencies in units of 1.024 µs (ns >> 10); below 16 units one bucket per unit, above it
16 buckets per power of two (within 6.25 %), up to 2^30 units (~18 min; longer lands in the last
bucket, the exact maximum is kept apart): 448 uint32 counters per side, 3.6 KiB per digest.

Memory is bounded by `capacity` digests, allocated as they appear; `add_slot()` returns -1 past it,
and the caller sends those commands to its shared "other" slot (counted there, never lost).
"""
from libc.stdlib cimport free, realloc
from libc.string cimport memset

cdef extern from *:
    int __builtin_clzll(unsigned long long) nogil

NUM_BUCKETS = NBUCKETS
REFERENCE = 0
REPLAY = 1


cdef inline int bucket_of(uint64_t ns) noexcept nogil:
    cdef uint64_t x = ns >> UNIT_SHIFT
    cdef int e
    if x < NSUB:
        return <int>x
    e = 63 - __builtin_clzll(x)           # e >= LOG_NSUB
    if e > MAX_EXP:
        return NBUCKETS - 1
    return (e - LOG_NSUB + 1) * NSUB + <int>((x >> (e - LOG_NSUB)) & (NSUB - 1))


cdef inline void _add(Side *s, uint64_t ns) noexcept nogil:
    s.count += 1
    s.sum_ns += ns
    if ns > s.max_ns:
        s.max_ns = ns
    s.buckets[bucket_of(ns)] += 1


cpdef int bucket_index(unsigned long long ns):
    """The bucket a latency of `ns` nanoseconds falls in."""
    return bucket_of(ns)


cpdef unsigned long long bucket_upper_ns(int idx):
    """Upper bound (exclusive, ns) of bucket idx."""
    cdef int e, m
    if idx < NSUB:
        return (<unsigned long long>(idx + 1)) << UNIT_SHIFT
    e = idx // NSUB - 1 + LOG_NSUB
    m = idx % NSUB
    return (<unsigned long long>(NSUB + m + 1)) << (e - LOG_NSUB + UNIT_SHIFT)


cpdef unsigned long long bucket_lower_ns(int idx):
    """Lower bound (inclusive, ns) of bucket idx."""
    return bucket_upper_ns(idx - 1) if idx > 0 else 0


cdef class LatencyTable:
    """Paired histograms per slot: record(slot, reference_ns, replay_ns) (fields: _latency.pxd)."""

    def __cinit__(self, int capacity):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._slots = NULL
        self._n = 0
        self._allocated = 0

    def __dealloc__(self):
        free(self._slots)

    def __len__(self):
        return self._n

    @property
    def bytes_allocated(self):
        return self._allocated * sizeof(Slot)

    def add_slot(self):
        """A new zeroed slot's index, or -1 when `capacity` slots exist."""
        cdef int grow
        cdef Slot *p
        if self._n >= self.capacity:
            return -1
        if self._n == self._allocated:
            grow = min(self.capacity, max(16, self._allocated * 2))
            p = <Slot*>realloc(self._slots, grow * sizeof(Slot))
            if p == NULL:
                raise MemoryError()
            self._slots = p
            self._allocated = grow
        memset(&self._slots[self._n], 0, sizeof(Slot))
        self._n += 1
        return self._n - 1

    def record(self, int slot, long long reference_ns, long long replay_ns):
        """One command: its latency on the reference side and on the replay (negative = unknown)."""
        self.record_c(slot, reference_ns, replay_ns)

    cdef int record_c(self, int slot, long long reference_ns, long long replay_ns) except -1:
        if slot < 0 or slot >= self._n:
            raise IndexError(slot)
        if reference_ns >= 0:
            _add(&self._slots[slot].side[0], <uint64_t>reference_ns)
        if replay_ns >= 0:
            _add(&self._slots[slot].side[1], <uint64_t>replay_ns)
        return 0

    cdef Side* _side(self, int slot, int side) except NULL:
        if slot < 0 or slot >= self._n or side < 0 or side > 1:
            raise IndexError((slot, side))
        return &self._slots[slot].side[side]

    def count(self, int slot, int side):
        return self._side(slot, side).count

    def max_ns(self, int slot, int side):
        return self._side(slot, side).max_ns

    def sum_ns(self, int slot, int side):
        return self._side(slot, side).sum_ns

    def quantile_ns(self, int slot, int side, double q):
        """Upper bound of the bucket holding the q-quantile, capped by the exact maximum (0 if empty)."""
        cdef Side *s = self._side(slot, side)
        cdef double rank
        cdef uint64_t acc = 0
        cdef int i
        if s.count == 0:
            return 0
        rank = q * s.count
        for i in range(NBUCKETS):
            acc += s.buckets[i]
            if acc >= rank and acc > 0:
                return min(bucket_upper_ns(i), s.max_ns)
        return s.max_ns

    def side_state(self, int slot, int side):
        """(count, sum_ns, max_ns, packed non-empty buckets: u16 index + u32 count each, little-endian):
        what a checkpoint saves (fastproxy/replay/checkpoint.py), load_side() puts back."""
        cdef Side *s = self._side(slot, side)
        cdef int i, n = 0, at = 0
        cdef uint32_t c
        for i in range(NBUCKETS):
            if s.buckets[i]:
                n += 1
        cdef bytearray out = bytearray(6 * n)
        cdef unsigned char *p = out
        for i in range(NBUCKETS):
            c = s.buckets[i]
            if c:
                p[at] = i & 0xff
                p[at + 1] = i >> 8
                p[at + 2] = c & 0xff
                p[at + 3] = (c >> 8) & 0xff
                p[at + 4] = (c >> 16) & 0xff
                p[at + 5] = c >> 24
                at += 6
        return s.count, s.sum_ns, s.max_ns, bytes(out)

    def load_side(self, int slot, int side, unsigned long long count, unsigned long long sum_ns,
                  unsigned long long max_ns, bytes packed, bint add=False):
        """Replace (`add`: add to) one side of a slot with what side_state() returned (ValueError if
        malformed)."""
        cdef Side *s = self._side(slot, side)
        cdef const unsigned char *p = packed
        cdef Py_ssize_t n = len(packed), at
        cdef int i
        cdef uint64_t total = 0
        if n % 6:
            raise ValueError("latency state: truncated buckets")
        for at in range(0, n, 6):
            i = p[at] | (p[at + 1] << 8)
            if i >= NBUCKETS:
                raise ValueError(f"latency state: bucket {i} out of range")
            total += <uint32_t>(p[at + 2] | (p[at + 3] << 8) | (p[at + 4] << 16) | (<uint32_t>p[at + 5] << 24))
        if total != count:
            raise ValueError("latency state: the buckets do not add up to the count")
        if not add:
            memset(s, 0, sizeof(Side))
        for at in range(0, n, 6):
            i = p[at] | (p[at + 1] << 8)
            s.buckets[i] += <uint32_t>(p[at + 2] | (p[at + 3] << 8) | (p[at + 4] << 16) | (<uint32_t>p[at + 5] << 24))
        s.count += count
        s.sum_ns += sum_ns
        if max_ns > s.max_ns:
            s.max_ns = max_ns

    def buckets(self, int slot, int side):
        """{bucket index: count} of the non-empty buckets."""
        cdef Side *s = self._side(slot, side)
        cdef int i
        return {i: s.buckets[i] for i in range(NBUCKETS) if s.buckets[i]}
