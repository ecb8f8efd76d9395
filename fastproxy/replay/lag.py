"""Replay lag (how late commands went out): current, max and p99 from log-spaced buckets, O(1) per
observation and constant memory."""
from __future__ import annotations

import math

_BUCKETS_PER_DECADE = 20
_MIN_NS = 1_000  # 1 µs; anything earlier counts as on time
_NBUCKETS = _BUCKETS_PER_DECADE * 8  # up to 100 s


class LagStats:
    def __init__(self) -> None:
        self.count = 0
        self.current_ns = 0
        self.max_ns = 0
        self.sum_ns = 0
        self.buckets = [0] * (_NBUCKETS + 1)

    def observe(self, lag_ns: int) -> None:
        if lag_ns < 0:
            lag_ns = 0
        self.count += 1
        self.current_ns = lag_ns
        self.sum_ns += lag_ns
        if lag_ns > self.max_ns:
            self.max_ns = lag_ns
        if lag_ns < _MIN_NS:
            self.buckets[0] += 1
        else:
            i = 1 + int(math.log10(lag_ns / _MIN_NS) * _BUCKETS_PER_DECADE)
            self.buckets[min(i, _NBUCKETS)] += 1

    def quantile(self, q: float) -> int:
        """Upper bound (ns) of the bucket holding the q-quantile (within ~12%)."""
        if not self.count:
            return 0
        rank = q * self.count
        acc = 0
        for i, n in enumerate(self.buckets):
            acc += n
            if acc >= rank:
                if i == 0:
                    return _MIN_NS
                return min(self.max_ns, int(_MIN_NS * 10 ** (i / _BUCKETS_PER_DECADE)))
        return self.max_ns

    def as_dict(self) -> dict:
        return {
            "current_ms": round(self.current_ns / 1e6, 3),
            "p99_ms": round(self.quantile(0.99) / 1e6, 3),
            "max_ms": round(self.max_ns / 1e6, 3),
            "avg_ms": round(self.sum_ns / self.count / 1e6, 3) if self.count else 0.0,
            "samples": self.count,
        }
