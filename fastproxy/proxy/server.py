"""The proxy: listener, backends, connections, the data plane's workers, graceful shutdown. Composed
into a process (with the traffic jobs and the HTTP API) by fastproxy/app.py; nothing here imports a
layer above the proxy."""
from __future__ import annotations

import asyncio
import itertools
import logging
import signal
from typing import Any, Awaitable, Callable

from fastproxy._dataplane import EV_CAPTURE_REFUSED, EV_CLOSED, EV_PARKED, EV_SYNC, DataPlane
from fastproxy.config import Config
from fastproxy.metrics import LATENCY_BOUNDS_NS, ProxyStats, make_registry
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
        self.dataplane = DataPlane(config["proxy.workers"], LATENCY_BOUNDS_NS, config["proxy.io"])
        # The running capture (fastproxy.capture.job.CaptureJob), or None; what the proxy calls:
        # on_connect, on_session_state, on_statement, on_session_reset, on_close, on_refused.
        self.capture: Any = None
        self.jobs: Any = None  # the traffic jobs (fastproxy.jobs.JobManager), set by whoever composes the process
        # awaited on shutdown once connections are closed, before the backends' checks stop
        self.on_shutdown: list[Callable[[], Awaitable[None]]] = []
        self.shutting_down = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._conn_ids = itertools.count(1)
        self._sync_tokens = itertools.count(1)
        self._syncs: dict[int, list] = {}  # token -> [workers still to answer, future]
        self.metric_sources: list = []
        self.registry = make_registry(self.stats, self.pool, self.metric_sources, self.dataplane)
        self.stopped = asyncio.Event()
        self.listen_addr: tuple[str, int] | None = None

    def next_conn_id(self) -> int:
        return next(self._conn_ids)

    # ---- what the data plane tells ------------------------------------------------------------
    def on_authenticated(self, conn: ClientConnection) -> bool:
        """A connection is about to be relayed: whether a capture records it from its first command."""
        return self.capture is not None and self.capture.on_connect(conn.session)

    def on_closed(self, conn: ClientConnection) -> None:
        """A connection the data plane never had closed (in its handshake, or relayed in Python)."""
        if self.capture is not None:
            self.capture.on_close(conn.session)

    def _on_dataplane_events(self) -> None:
        for kind, relay, arg in self.dataplane.poll_events():
            if kind == EV_CLOSED:
                relay.owner.on_relay_closed(relay.close_reason, relay.close_message)
            elif kind == EV_PARKED:  # the proxy's own queries (connection.py)
                relay.owner.on_relay_parked(arg)
            elif kind == EV_CAPTURE_REFUSED:  # a worker could not append a record: the capture stops
                refused = self.dataplane.capture_refused()
                if self.capture is not None and refused is not None:
                    self.capture.on_refused(*refused)
            elif kind == EV_SYNC:
                waiting = self._syncs.get(arg)
                if waiting is not None:
                    waiting[0] -= 1
                    if waiting[0] == 0:
                        del self._syncs[arg]
                        if not waiting[1].done():
                            waiting[1].set_result(None)

    async def sync(self) -> None:
        """Return once every worker has handled everything posted to it before this call."""
        token = next(self._sync_tokens)
        fut = self.loop.create_future()
        self._syncs[token] = [self.dataplane.workers, fut]
        self.dataplane.sync(token)
        await fut

    # ---- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.dataplane.start()
        log.info("data plane: %d workers on %s", self.dataplane.workers, ", ".join(sorted(set(self.dataplane.io))))
        self.loop.add_reader(self.dataplane.event_fd, self._on_dataplane_events)
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
            conn.close_for_shutdown()
        self.dataplane.drain()
        deadline = self.loop.time() + timeout
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self.connections:
            log.warning("force-closing %d connections after %.1fs", len(self.connections), timeout)
            for conn in list(self.connections):
                conn.close_for_shutdown(force=True)
            self.dataplane.close_all()
            while self.connections:  # the workers report every close; nothing waits on a client now
                await asyncio.sleep(0.01)
        for hook in self.on_shutdown:
            await hook()
        await self.pool.stop()
        self.loop.remove_reader(self.dataplane.event_fd)
        self.dataplane.stop()
        self.stopped.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, lambda: self.loop.create_task(self.shutdown()))
