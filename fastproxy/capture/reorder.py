"""Completion order within a window: the data plane's workers append a command's record when they
get to its answer, which with several workers (or a worker late in its epoll batch) is not always
the order the answers arrived in. Each record keeps its true end_ns, the capture measures how late
the latest one came (meta `reorder_window_ns`), and the reader puts the records back in order of
their end within that window, so replay's causal scheduling sees commits before what saw them.

Connection events (CONN_OPEN/STATE/CLOSE, LOCAL_INFILE) are ordered by their own time; no record
ever moves before an earlier one of its own connection. Deterministic: the same files give the same
sequence (a checkpoint's record count stays valid).
"""
from __future__ import annotations

import heapq
from typing import Iterable, Iterator

from fastproxy.capture.record import KIND_COMMAND, KIND_CONN_CLOSE, Record

MAX_WINDOW_NS = 10_000_000_000  # look-ahead bound (memory: records of this many seconds)


def in_completion_order(records: Iterable[Record], window_ns: int) -> Iterator[Record]:
    """`records` as written, in order of completion: a record waits until one that ended
    window_ns after it was read. A record later than the window (only with a window cut to
    MAX_WINDOW_NS, or a meta that understates it) gets the end of the one before it, as the ring
    raised it before records kept their true end."""
    window = min(max(int(window_ns), 0), MAX_WINDOW_NS)
    if not window:
        yield from records
        return
    heap: list = []
    last_key: dict[int, int] = {}  # per open connection: its records never overtake each other
    high = 0  # the latest command end read so far
    emitted_end = [0]  # the end of the last command emitted
    seq = 0
    push = heapq.heappush
    try:
        for rec in records:
            if rec.kind == KIND_COMMAND:
                end = rec.end_ns or rec.start_ns  # a command with no end (cut off) goes by its start
                if end > high:  # the window was measured between commands' true ends
                    high = end
            else:
                end = rec.start_ns
            key = max(end, last_key.get(rec.conn_id, 0))
            if rec.kind == KIND_CONN_CLOSE:
                last_key.pop(rec.conn_id, None)  # a closed connection's id may come back: start afresh
            else:
                last_key[rec.conn_id] = key
            push(heap, (key, seq, rec))
            seq += 1
            if heap[0][0] <= high - window:
                yield from _take(heap, high - window, emitted_end)
    except Exception:
        # a damaged file: what was read before the damage is given out, then the error
        yield from _take(heap, None, emitted_end)
        raise
    yield from _take(heap, None, emitted_end)


def _take(heap: list, limit: int | None, emitted_end: list) -> Iterator[Record]:
    """Pop the records keyed up to limit (None: all); a command that ended before one already
    given out gets that one's end."""
    pop = heapq.heappop
    while heap and (limit is None or heap[0][0] <= limit):
        rec = pop(heap)[2]
        if rec.kind == KIND_COMMAND and rec.end_ns:  # no end (0) stays unknown
            if rec.end_ns < emitted_end[0]:
                rec = rec._replace(end_ns=emitted_end[0])
            emitted_end[0] = rec.end_ns
        yield rec
