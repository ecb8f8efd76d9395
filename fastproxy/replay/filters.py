"""What a replay keeps of its input: the filters of fastproxy/traffic_filter.py (schema, user, command
type, statement class, digest, time window, connection sample, shard) applied to the record stream
before the engine sees it, each counting what it dropped."""
from __future__ import annotations

import json
from typing import Iterator

from fastproxy.capture.record import KIND_COMMAND, KIND_CONN_CLOSE, KIND_CONN_OPEN, KIND_CONN_STATE, Record
from fastproxy.errors import ConfigError
from fastproxy.traffic_filter import CLASSES, Filters, Selector, parse_time, statement_class

__all__ = ["CLASSES", "Filters", "FilteredSource", "statement_class"]


class FilteredSource:
    """Wraps a record source (fastproxy.inputs) with Filters; `dropped` counts by filter."""

    def __init__(self, source, filters: Filters) -> None:
        self.source = source
        self.filters = filters
        self.format = source.format
        self.meta = dict(source.meta)
        self.stats = getattr(source, "stats", {})
        self.files = getattr(source, "files", [])
        self.complete = getattr(source, "complete", True)
        start = int(self.meta.get("start_ns", 0) or 0)
        start_ns = parse_time(filters.start_time, "start-time", start) if filters.start_time else 0
        end_ns = parse_time(filters.end_time, "end-time", start) if filters.end_time else 0
        if start_ns and end_ns and end_ns <= start_ns:
            raise ConfigError("end-time: must be after start-time")
        if start_ns:
            # replay paces from the window's start: what came before it is due at once
            self.meta["start_ns"] = max(start, start_ns)
        # meta["commands"] stays the input's count, before filters: what progress and "captured" count
        self.commands_dropped = 0  # commands the filters dropped (with `dropped`'s connections' commands)
        self.selector = Selector(filters, start_ns, end_ns)
        self.dropped = self.selector.dropped
        self.start_ns, self.end_ns = start_ns, end_ns

    def __iter__(self) -> Iterator[Record]:
        for rec in self.source:
            if self._keep(rec):
                yield rec
        if self.meta.get("commands") is None:  # a log counts its commands once read
            self.meta["commands"] = self.source.meta.get("commands")

    @property
    def fraction_read(self) -> float | None:
        return getattr(self.source, "fraction_read", None)

    def _keep(self, rec: Record) -> bool:
        kind = rec.kind
        if kind == KIND_COMMAND:
            if self.selector.command(rec.conn_id, rec.payload, rec.start_ns, rec.affected_rows) is None:
                return True
            self.commands_dropped += 1
            return False
        if kind == KIND_CONN_OPEN or kind == KIND_CONN_STATE:
            info = json.loads(rec.payload or b"{}")
            return self.selector.connection(rec.conn_id, info.get("user", ""), info.get("db"),
                                            info.get("prepared", []))
        if kind == KIND_CONN_CLOSE:
            return self.selector.close(rec.conn_id)
        return True
