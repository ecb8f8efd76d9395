"""Traffic jobs (capture, replay): one of each kind at a time per proxy; the last 10 are shown."""
from __future__ import annotations

from fastproxy.errors import JobError


class JobManager:
    def __init__(self, server) -> None:
        self.server = server
        self.history: list = []

    async def start_capture(self, form: dict):
        raise JobError("capture: not wired yet")

    async def start_replay(self, form: dict):
        raise JobError("replay: not wired yet")

    def show(self) -> list[dict]:
        return [job.describe() for job in self.history[-10:]]

    async def cancel(self, kind, graceful=False) -> list[str]:
        return []

    async def shutdown(self) -> None:
        pass
