"""Static backends, their health, and the choice of backend for a new connection."""
from __future__ import annotations

import asyncio
import logging
import time

log = logging.getLogger("fastproxy.backend")


class Backend:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.healthy = True  # optimistic until the first check says otherwise
        self.connections = 0
        self.last_error = ""
        self.last_check = 0.0

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    def __repr__(self) -> str:
        return f"<Backend {self.addr} {'up' if self.healthy else 'down'} conns={self.connections}>"


class BackendPool:
    """Least-loaded healthy backend for each new connection; a background task checks health by
    opening a TCP connection and reading the server's greeting (an ERR greeting, e.g. 'too many
    connections' or 'host blocked', counts as unhealthy)."""

    def __init__(self, addrs: list[tuple[str, int]], interval: float = 2.0, timeout: float = 2.0) -> None:
        self.backends = [Backend(h, p) for h, p in addrs]
        self.interval = interval
        self.timeout = timeout
        self._task: asyncio.Task | None = None

    def pick(self) -> Backend | None:
        healthy = [b for b in self.backends if b.healthy]
        if not healthy:
            return None
        return min(healthy, key=lambda b: b.connections)

    def any_backend(self) -> Backend:
        """Some backend even when none is healthy (so the client gets that backend's own error)."""
        return self.pick() or min(self.backends, key=lambda b: b.last_check)

    async def check(self, backend: Backend) -> bool:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(backend.host, backend.port), self.timeout)
            try:
                header = await asyncio.wait_for(reader.readexactly(5), self.timeout)
                ok = header[4] == 10  # protocol version 10; 0xFF would be an ERR greeting
                error = "" if ok else "backend answered with an error packet"
            finally:
                writer.close()
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
            ok, error = False, f"{type(e).__name__}: {e}"
        backend.last_check = time.time()
        if ok != backend.healthy:
            log.warning("backend %s is now %s%s", backend.addr, "healthy" if ok else "unhealthy",
                        f" ({error})" if error else "")
        backend.healthy, backend.last_error = ok, error
        return ok

    async def check_all(self) -> None:
        await asyncio.gather(*(self.check(b) for b in self.backends))

    async def _loop(self) -> None:
        while True:
            await self.check_all()
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
