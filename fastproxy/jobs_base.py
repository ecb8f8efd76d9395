"""What every traffic job shares: status, times, error, progress, and its line in `traffic show`."""
from __future__ import annotations

import time
from datetime import datetime, timezone

from fastproxy.errors import ConfigError


def utc_iso(ns: int) -> str:
    """Unix-epoch nanoseconds as ISO 8601 UTC with milliseconds ("" for 0), for meta and summaries."""
    return datetime.fromtimestamp(ns / 1e9, timezone.utc).isoformat(timespec="milliseconds") if ns else ""


def format_duration(seconds: float) -> str:
    """Go-style durations as TiProxy prints them: 1h2m3s, 45s, 1.5s."""
    if seconds < 60:
        return f"{seconds:.3g}s" if seconds < 10 else f"{seconds:.0f}s"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return (f"{h}h" if h else "") + (f"{m}m" if m or h else "") + f"{s}s"


def parse_bool(form: dict, key: str, default: bool) -> bool:
    """A boolean form field (true/false, 1/0, yes/no, on/off); empty means `default`."""
    value = str(form.get(key, "")).strip().lower()
    if value == "":
        return default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{key}: expected true or false, got {value!r}")


class Job:
    kind = "job"

    def __init__(self) -> None:
        self.status = "pending"
        self.error: str | None = None
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self._progress_at_end = 0.0

    def mark_started(self) -> None:
        self.status = "running"
        self.started_at = time.time()

    def finish(self, error: str | None = None, canceled: bool = False) -> None:
        self._progress_at_end = self.progress() if self.status == "running" else self._progress_at_end
        self.error = error
        self.status = "canceled" if canceled or error else "done"
        self.ended_at = time.time()

    @property
    def running(self) -> bool:
        return self.status == "running"

    def progress(self) -> float:
        return 0.0

    def describe_base(self) -> dict:
        def iso(t):
            return datetime.fromtimestamp(t, timezone.utc).astimezone().isoformat() if t else ""

        end = self.ended_at or time.time()
        return {
            "type": self.kind,
            "status": self.status,
            "start_time": iso(self.started_at),
            "end_time": iso(self.ended_at),
            "duration": format_duration(end - self.started_at) if self.started_at else "",
            "progress": f"{int(self.progress() * 100)}%",
            "error": self.error or "",
        }
