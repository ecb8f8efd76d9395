# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The replay loop's scheduling in C: a binary min-heap of due times (which connection fires next),
and the causal order across connections (what a command must wait for; see CausalOrder below).

Heap: one entry per replay connection that has a command waiting. Entries are plain C structs in one
realloc'd array, so a push or pop allocates nothing and touches no Python object; see
bench/test_bench_replay_core.py for the comparison with `heapq` over tuples that justifies it.
"""
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.stdint cimport INT64_MAX, INT64_MIN, int64_t, uint64_t

from fastproxy._heap cimport HeapEntry, heap_push, heap_remove_first


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
        # equal due times keep push order: a connection pushed first fires first
        cdef HeapEntry e
        if self._size == self._capacity:
            self._grow()
        e.due = due
        e.seq = self._next_seq
        e.key = key
        self._next_seq += 1
        heap_push(self._heap, self._size, e)
        self._size += 1
        return 0

    cdef int64_t pop_c(self) noexcept:
        cdef int64_t key
        if self._size == 0:
            return -1
        key = self._heap[0].key
        self._size -= 1
        heap_remove_first(self._heap, self._size)
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


# ---- causal order across connections ------------------------------------------------------------
#
# A *sequence* is a stream of events (commands that made something visible or took or released
# locks in production), numbered in the order the capture completed them. A command that must not
# start before some events of a sequence holds a *requirement*: a count n, met once the first n
# events have all completed on replay (the sequence's *prefix* reached n). Because capture files are
# in completion order, every event that ended before a command was read before it:
#
# - "ended before it started": a binary search over the end times read so far;
# - "got the locks first" (lock waits only): among the events that ended after it started (and
#   before it ended), those that started before it (give or take `overlap_ns`: the proxy sees a
#   command arrive a little before the server runs it) or whose transaction had ended (been
#   *released*) by the time it ended. Two overlapping requests for one row are granted in end
#   order; without this they could be granted the other way round on replay, and the transaction
#   that got the row would then wait here for the statement that waits on the server for its row.
#
# Every requirement points at events that ended before the command did, so waits never form a cycle.
# Commands whose requirement is not met park in the sequence's heap (keyed by requirement) until
# the prefix passes it. A sequence keeps only events at or after its prefix (a requirement that
# falls below it is met), so memory is bounded by what is queued.

cdef enum:
    ST_DONE = 1
    ST_RELEASED = 2
    MAX_OVERLAP_SCAN = 4096  # beyond this many candidates, wait for every event read so far



cdef class Ticket:
    """What one replayed command waits for (sequence, requirement) and which events it is
    (sequence, index). ``flags`` is free for the engine (pinning, transaction role)."""

    def __cinit__(self, int flags=0):
        self.buf = NULL
        self.nw = 0
        self.wpos = 0
        self.ne = 0
        self.ecap_w = 0
        self.flags = flags
        self.finished = False

    def __dealloc__(self):
        PyMem_Free(self.buf)
        self.buf = NULL

    @property
    def has_events(self):
        return self.ne > 0

    def release_waits(self):
        """Forget the requirements not yet met (the safety valve: nothing can meet them any more)."""
        self.wpos = self.nw

    @property
    def waits(self):
        """(sequence, requirement) pairs not yet known to be met."""
        return [(self.buf[2 * i], self.buf[2 * i + 1]) for i in range(self.wpos, self.nw)]

    @property
    def events(self):
        """(sequence, index) of the events this command is."""
        cdef int64_t* e = self.buf + 2 * self.ecap_w
        return [(e[2 * i], e[2 * i + 1]) for i in range(self.ne)]

    def __repr__(self):
        return f"<Ticket waits={self.waits} events={self.events} flags={self.flags:#x} finished={self.finished}>"


cdef class CausalOrder:
    """Sequences of events, requirements on them, and the commands parked until they are met.

    Python drives it per command: ``note`` when it is read (computes its requirements, registers
    its events), ``release`` when the transaction of its events ended in the capture, ``ready``
    before it is sent (parks it when a requirement is unmet), ``finish`` when it completed on
    replay (returns the keys of parked commands whose requirement that met, or None).
    """

    def __cinit__(self, int64_t overlap_ns=2_000_000):
        self.seqs = NULL
        self.nseq = 0
        self.cap = 0
        self.order = 0
        self.overlap_ns = overlap_ns
        self.parked = 0
        self.parks_total = 0
        self.events_total = 0
        self.released = []

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self.seqs != NULL:
            for i in range(self.nseq):
                PyMem_Free(self.seqs[i].keys)
                PyMem_Free(self.seqs[i].starts)
                PyMem_Free(self.seqs[i].state)
                PyMem_Free(self.seqs[i].owners)
                PyMem_Free(self.seqs[i].waiters)
            PyMem_Free(self.seqs)
            self.seqs = NULL

    def new_sequence(self):
        """A new, empty sequence; returns its id (0, 1, 2, ...)."""
        cdef Py_ssize_t cap
        cdef Seq* seqs
        cdef Seq* s
        if self.nseq == self.cap:
            cap = self.cap * 2 if self.cap else 16
            seqs = <Seq*>PyMem_Realloc(self.seqs, cap * sizeof(Seq))
            if seqs == NULL:
                raise MemoryError()
            self.seqs = seqs
            self.cap = cap
        s = &self.seqs[self.nseq]
        s.prefix = 0
        s.next = 0
        s.last_key = INT64_MIN
        s.mask = 15
        s.keys = <int64_t*>PyMem_Malloc(16 * sizeof(int64_t))
        s.starts = <int64_t*>PyMem_Malloc(16 * sizeof(int64_t))
        s.state = <unsigned char*>PyMem_Malloc(16)
        s.owners = <int64_t*>PyMem_Malloc(16 * sizeof(int64_t))
        s.waiters = NULL
        s.nwait = 0
        s.wcap = 0
        if s.keys == NULL or s.starts == NULL or s.state == NULL or s.owners == NULL:
            PyMem_Free(s.keys)
            PyMem_Free(s.starts)
            PyMem_Free(s.state)
            PyMem_Free(s.owners)
            raise MemoryError()
        self.nseq += 1
        return self.nseq - 1

    @property
    def sequences(self):
        return self.nseq

    cdef int _check(self, Py_ssize_t sid) except -1:
        if sid < 0 or sid >= self.nseq:
            raise ValueError(f"no sequence {sid}")
        return 0

    cdef int _grow_ring(self, Seq* s) except -1:
        cdef int64_t new_cap = (s.mask + 1) * 2
        cdef int64_t m = new_cap - 1
        cdef int64_t* keys = <int64_t*>PyMem_Malloc(new_cap * sizeof(int64_t))
        cdef int64_t* starts = <int64_t*>PyMem_Malloc(new_cap * sizeof(int64_t))
        cdef unsigned char* state = <unsigned char*>PyMem_Malloc(new_cap)
        cdef int64_t* owners = <int64_t*>PyMem_Malloc(new_cap * sizeof(int64_t))
        cdef int64_t i
        if keys == NULL or starts == NULL or state == NULL or owners == NULL:
            PyMem_Free(keys)
            PyMem_Free(starts)
            PyMem_Free(state)
            PyMem_Free(owners)
            raise MemoryError()
        for i in range(s.prefix, s.next):
            keys[i & m] = s.keys[i & s.mask]
            starts[i & m] = s.starts[i & s.mask]
            state[i & m] = s.state[i & s.mask]
            owners[i & m] = s.owners[i & s.mask]
        PyMem_Free(s.keys)
        PyMem_Free(s.starts)
        PyMem_Free(s.state)
        PyMem_Free(s.owners)
        s.keys = keys
        s.starts = starts
        s.state = state
        s.owners = owners
        s.mask = m
        return 0

    cdef int64_t _ended_before(self, Seq* s, int64_t start) noexcept:
        # first index in [prefix, next) whose end is >= start (ends are kept non-decreasing)
        cdef int64_t lo = s.prefix, hi = s.next, mid
        while lo < hi:
            mid = lo + ((hi - lo) >> 1)
            if s.keys[mid & s.mask] < start:
                lo = mid + 1
            else:
                hi = mid
        return lo

    cdef int64_t _lock_requirement(self, Seq* s, int64_t start) noexcept:
        # also the events, among those that ended after `start`, that held locks before it: started
        # before it (give or take overlap_ns) and released by now
        cdef int64_t req = self._ended_before(s, start)
        cdef int64_t i
        cdef int64_t limit = INT64_MAX if start > INT64_MAX - self.overlap_ns else start + self.overlap_ns
        if s.next - req > MAX_OVERLAP_SCAN:
            return s.next
        i = s.next - 1
        while i >= req:
            if (s.state[i & s.mask] & ST_RELEASED) or s.starts[i & s.mask] < limit:
                return i + 1
            i -= 1
        return req

    cdef int64_t _add_event(self, Seq* s, int64_t start, int64_t end, bint released, int64_t owner) except -1:
        cdef int64_t idx
        if s.next - s.prefix > s.mask:
            self._grow_ring(s)
        # ends stay sorted even if completions were appended slightly out of order
        if end < s.last_key:
            end = s.last_key
        s.last_key = end
        idx = s.next
        s.keys[idx & s.mask] = end
        s.starts[idx & s.mask] = start
        s.state[idx & s.mask] = ST_RELEASED if released else 0
        s.owners[idx & s.mask] = owner
        s.next += 1
        self.events_total += 1
        return idx

    cpdef note(self, Ticket t, tuple waits, tuple lock_waits, int64_t start_ns, tuple events, int64_t end_ns,
               bint released=True, int64_t owner=-1):
        """Register a command read from the capture. On each sequence in ``waits`` it waits for the
        events that ended before ``start_ns``; on each in ``lock_waits`` also for those that held
        locks before it (see above). It is itself an event (``start_ns``..``end_ns``) of each sequence in ``events``; ``released``: its
        transaction has ended too (else call ``release`` when it does). Requirements already met
        are not stored. ``owner`` (e.g. the connection the command belongs to) is what ``blockers``
        names for its events."""
        cdef Py_ssize_t nw = len(waits), nl = len(lock_waits), ne = len(events), i, sid
        cdef int64_t req
        cdef int64_t* buf
        cdef int64_t* ev
        cdef Seq* s
        if t.buf != NULL:
            raise ValueError("ticket already noted")
        if nw == 0 and nl == 0 and ne == 0:
            return
        buf = <int64_t*>PyMem_Malloc((2 * (nw + nl) + 2 * ne) * sizeof(int64_t))
        if buf == NULL:
            raise MemoryError()
        t.buf = buf
        t.ecap_w = nw + nl
        # requirements first: a command never waits for its own events
        for i in range(nw + nl):
            sid = waits[i] if i < nw else lock_waits[i - nw]
            self._check(sid)
            s = &self.seqs[sid]
            req = self._ended_before(s, start_ns) if i < nw else self._lock_requirement(s, start_ns)
            if req > s.prefix:
                buf[2 * t.nw] = sid
                buf[2 * t.nw + 1] = req
                t.nw += 1
        ev = buf + 2 * t.ecap_w
        for i in range(ne):
            sid = events[i]
            self._check(sid)
            ev[2 * i] = sid
            ev[2 * i + 1] = self._add_event(&self.seqs[sid], start_ns, end_ns, released, owner)
        t.ne = ne

    cpdef release(self, Ticket t):
        """The transaction of ``t``'s events ended in the capture: its locks were free from then on."""
        cdef Py_ssize_t i
        cdef int64_t idx
        cdef int64_t* ev
        cdef Seq* s
        if t.ne == 0:
            return
        ev = t.buf + 2 * t.ecap_w
        for i in range(t.ne):
            s = &self.seqs[ev[2 * i]]
            idx = ev[2 * i + 1]
            if idx >= s.prefix:
                s.state[idx & s.mask] |= ST_RELEASED

    cdef int _park(self, Seq* s, int64_t req, int64_t key) except -1:
        # a heap by requirement; equal ones release in park order
        cdef Py_ssize_t cap
        cdef HeapEntry w
        cdef HeapEntry* ws
        if s.nwait == s.wcap:
            cap = s.wcap * 2 if s.wcap else 8
            ws = <HeapEntry*>PyMem_Realloc(s.waiters, cap * sizeof(HeapEntry))
            if ws == NULL:
                raise MemoryError()
            s.waiters = ws
            s.wcap = cap
        w.due = req
        w.seq = self.order
        w.key = key
        self.order += 1
        heap_push(s.waiters, s.nwait, w)
        s.nwait += 1
        self.parked += 1
        self.parks_total += 1
        return 0

    cdef int64_t _pop_waiter(self, Seq* s) noexcept:
        cdef int64_t key = s.waiters[0].key
        s.nwait -= 1
        self.parked -= 1
        heap_remove_first(s.waiters, s.nwait)
        return key

    cpdef bint ready(self, Ticket t, int64_t key) except -1:
        """True if every requirement of ``t`` is met; otherwise ``key`` is parked on the first unmet
        one and comes back from a later ``finish`` (then ask again: another may still be unmet)."""
        cdef Seq* s
        cdef int64_t req
        while t.wpos < t.nw:
            s = &self.seqs[t.buf[2 * t.wpos]]
            req = t.buf[2 * t.wpos + 1]
            if s.prefix < req:
                self._park(s, req, key)
                return False
            t.wpos += 1
        return True

    cpdef bint met(self, Ticket t) except -1:
        """Whether every requirement of ``t`` is met now (``ready`` without parking)."""
        cdef Seq* s
        while t.wpos < t.nw:
            s = &self.seqs[t.buf[2 * t.wpos]]
            if s.prefix < t.buf[2 * t.wpos + 1]:
                return False
            t.wpos += 1
        return True

    def blockers(self, Ticket t, int64_t limit=1 << 16):
        """The owners (see ``note``) of the events ``t`` still waits for: those not completed below
        each of its unmet requirements, without repeats. None if that means looking at more than
        ``limit`` events (the caller cannot tell who holds it back)."""
        cdef Seq* s
        cdef int64_t req, i, scanned = 0
        cdef int k
        cdef set seen = set()
        cdef list out = []
        for k in range(t.wpos, t.nw):
            s = &self.seqs[t.buf[2 * k]]
            req = t.buf[2 * k + 1]
            if req <= s.prefix:
                continue
            scanned += req - s.prefix
            if scanned > limit:
                return None
            for i in range(s.prefix, req):
                if not (s.state[i & s.mask] & ST_DONE) and s.owners[i & s.mask] not in seen:
                    seen.add(s.owners[i & s.mask])
                    out.append(s.owners[i & s.mask])
        return out

    cpdef finish(self, Ticket t):
        """The command completed on replay (or will never run): its events are done. Returns the
        keys of parked commands whose awaited requirement is now met, or None."""
        cdef Py_ssize_t i
        cdef int64_t idx
        cdef int64_t* ev
        cdef Seq* s
        cdef list out
        if t.finished:
            return None
        t.finished = True
        if t.ne == 0:
            return None
        ev = t.buf + 2 * t.ecap_w
        for i in range(t.ne):
            s = &self.seqs[ev[2 * i]]
            idx = ev[2 * i + 1]
            if idx < s.prefix:
                continue
            s.state[idx & s.mask] |= ST_DONE
            if idx != s.prefix:
                continue
            while s.prefix < s.next and s.state[s.prefix & s.mask] & ST_DONE:
                s.prefix += 1
            while s.nwait > 0 and s.waiters[0].due <= s.prefix:
                self.released.append(self._pop_waiter(s))
        if not self.released:
            return None
        out = self.released
        self.released = []
        return out

    def prefix(self, Py_ssize_t sid):
        """Events of the sequence completed without a gap."""
        self._check(sid)
        return self.seqs[sid].prefix

    def size(self, Py_ssize_t sid):
        """Events registered in the sequence so far."""
        self._check(sid)
        return self.seqs[sid].next

    def waiting(self, Py_ssize_t sid):
        """Commands parked on the sequence."""
        self._check(sid)
        return self.seqs[sid].nwait

    def retained(self):
        """Events held in memory (not yet completed, or completed behind a gap), all sequences."""
        cdef Py_ssize_t i
        cdef int64_t n = 0
        for i in range(self.nseq):
            n += self.seqs[i].next - self.seqs[i].prefix
        return n

    def __repr__(self):
        return f"<CausalOrder sequences={self.nseq} parked={self.parked}>"
