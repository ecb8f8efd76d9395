"""The proxy: listener, backends, connections, graceful shutdown. Composed into a process (with the
traffic jobs and the HTTP API) by fastproxy/app.py; nothing here imports a layer above the proxy."""
from __future__ import annotations

import asyncio
import itertools
import logging
import signal
from typing import Any, Awaitable, Callable

from fastproxy.config import Config
from fastproxy.metrics import ProxyStats, make_registry
from fastproxy.proxy.backend import BackendPool
from fastproxy.proxy.connection import ClientConnection
from fastproxy.proxy.inbound_proxy_protocol import check_proxy_protocol
from fastproxy.proxy.tls_upgrade import ProxyTls

log = logging.getLogger("fastproxy.server")


class ProxyServer:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.stats = ProxyStats()
        self.tls = ProxyTls.from_config(config)  # TLS towards clients and backends (tls_upgrade.py)
        check_proxy_protocol(config)
        self.pool = BackendPool(config["proxy.backends"], config["proxy.health-check-interval"],
                                config["proxy.health-check-timeout"], config["proxy.health-check-user"],
                                tls=self.tls.backend_ctx, require_tls=self.tls.require_backend)
        self.connections: set[ClientConnection] = set()
        self.capture: Any = None  # the running capture job's hook object, or None
        self.jobs: Any = None  # the traffic jobs (fastproxy.jobs.JobManager), set by whoever composes the process
        # awaited on shutdown once connections are closed, before the backends' checks stop
        self.on_shutdown: list[Callable[[], Awaitable[None]]] = []
        self.shutting_down = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._conn_ids = itertools.count(1)
        self.metric_sources: list = []
        self.registry = make_registry(self.stats, self.pool, self.metric_sources)
        self.stopped = asyncio.Event()
        self.listen_addr: tuple[str, int] | None = None

    def next_conn_id(self) -> int:
        return next(self._conn_ids)

    # hooks the capture job attaches to
    def on_authenticated(self, conn: ClientConnection) -> None:
        if self.capture is not None:
            self.capture.on_connect(conn.session)

    def on_closed(self, conn: ClientConnection) -> None:
        if self.capture is not None:
            self.capture.on_close(conn.session)

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        host, port = self.config["proxy.addr"]
        self._server = await self.loop.create_server(lambda: ClientConnection(self), host, port, reuse_address=True,
                                                     backlog=1024)
        self.listen_addr = self._server.sockets[0].getsockname()[:2]
        await self.pool.check_all()
        self.pool.start()

    async def shutdown(self, timeout: float | None = None) -> None:
        """Stop accepting; let connections finish their transaction; force-close after `timeout`."""
        if self.shutting_down:
            return
        self.shutting_down = True
        timeout = self.config["proxy.graceful-close-conn-timeout"] if timeout is None else timeout
        log.info("shutting down: %d connections, waiting up to %.1fs for transactions", len(self.connections), timeout)
        if self._server:
            self._server.close()
        for conn in list(self.connections):
            conn.close_for_shutdown(force=False)
        deadline = self.loop.time() + timeout
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self.connections:
            log.warning("force-closing %d connections after %.1fs", len(self.connections), timeout)
        for conn in list(self.connections):
            conn.close_for_shutdown(force=True)
        for hook in self.on_shutdown:
            await hook()
        await self.pool.stop()
        self.stopped.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, lambda: self.loop.create_task(self.shutdown()))


