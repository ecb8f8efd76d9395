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

from typing import Iterable, Iterator

from fastproxy.capture._reorder import CompletionOrder
from fastproxy.capture.record import Record

MAX_WINDOW_NS = 10_000_000_000  # look-ahead bound (memory: records of this many seconds)


def in_completion_order(records: Iterable[Record], window_ns: int) -> Iterator[Record]:
    """`records` as written, in order of completion: a record waits until one that ended
    window_ns after it was read. A record later than the window (only with a window cut to
    MAX_WINDOW_NS, or a meta that understates it) gets the end of the one before it, as the ring
    raised it before records kept their true end."""
    window = min(max(int(window_ns), 0), MAX_WINDOW_NS)
    if not window:
        return iter(records)
    return CompletionOrder(records, window)  # in C (_reorder.pyx): every record a replay reads goes through it
