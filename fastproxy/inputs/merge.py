"""Several inputs replayed as one workload: the captures of several proxies (one directory each) that
saw the same database at the same time. Records are merged in completion order (end time; start time
for events and for inputs that only know starts) and each input's connection ids are kept apart."""
from __future__ import annotations

import heapq
from collections import Counter
from typing import Iterator

from fastproxy.capture.record import Record
from fastproxy.inputs.common import RECORDED_KEYS

CONN_ID_BITS = 40  # connection ids of input k become (k + 1) << 40 | id


def _name(source) -> str:
    """How the user gave an input: its capture directory (or S3 prefix) or its file."""
    return str(getattr(source, "input_dir", None) or getattr(source, "path", None) or source.meta.get("source") or "?")


class MergedSource:
    def __init__(self, sources: list) -> None:
        self.sources = sources
        formats = {s.format for s in sources}
        self.format = formats.pop() if len(formats) == 1 else "mixed"
        starts = [int(s.meta.get("start_ns", 0) or 0) for s in sources]
        counts = [s.meta.get("commands") for s in sources]
        self.meta = {
            "format": self.format, "inputs": len(sources),
            "start_ns": min((t for t in starts if t), default=0),
            "commands": sum(counts) if all(isinstance(c, int) for c in counts) else None,
        }
        for key in RECORDED_KEYS:
            values = [s.meta.get(key, True) for s in sources]
            self.meta[key] = all(values)
        self.files = [f for s in sources for f in getattr(s, "files", [])]
        self.complete = all(getattr(s, "complete", True) for s in sources)
        self.unfinished = any(getattr(s, "unfinished", False) for s in sources)
        # which of them: the summary names them (one of several proxies' captures still being written)
        self.unfinished_inputs = [_name(s) for s in sources if getattr(s, "unfinished", False)]

    @property
    def stats(self) -> Counter:
        total: Counter = Counter()
        for s in self.sources:
            total.update(getattr(s, "stats", {}) or {})
        return total

    def __iter__(self) -> Iterator[Record]:
        def keyed(k: int, source) -> Iterator:
            base = (k + 1) << CONN_ID_BITS
            for seq, rec in enumerate(source):
                rec = rec._replace(conn_id=base | rec.conn_id)
                yield (rec.end_ns or rec.start_ns, k, seq, rec)

        for _, _, _, rec in heapq.merge(*(keyed(k, s) for k, s in enumerate(self.sources))):
            yield rec
