"""The API's own accept loop, which refuses a connection before it can cost the proxy a file
descriptor that MySQL clients and backends need.

An asyncio server accepts whatever arrives until the process runs out of descriptors; then MySQL
clients fail their handshake and the health check marks the backend down (seen with idle API
connections under `ulimit -n 128`). Here every accepted API connection is weighed first: beyond
`api.max-connections` open API connections, or when keeping it would leave fewer than
`api.fd-reserve` descriptors free under RLIMIT_NOFILE, it gets a 503 and is closed as soon as its
request is in (at most MAX_LINGERING_REFUSALS such connections for at most REFUSAL_LINGER; beyond
them, at once, in the callback that accepted it).
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import socket
import ssl
import time
from typing import Callable

log = logging.getLogger("fastproxy.api")

ACCEPT_BATCH = 32  # connections accepted per wake-up, so that a flood does not hog the loop
PAUSE_ON_EXHAUSTION = 0.5  # seconds without accepting after EMFILE/ENFILE (as asyncio's servers do)
REFUSAL_LOG_INTERVAL = 10.0
REFUSAL_LINGER = 1.0  # seconds a refused connection may take to send its request before it is closed
MAX_LINGERING_REFUSALS = 8  # beyond these, refused connections are closed at once
FD_COUNT_MAX_AGE = 1.0  # seconds a count of open descriptors is reused: listing 10,000 took 17 ms here
_EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def open_fds() -> int | None:
    """Descriptors open in this process (None where /proc is missing)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # minus the one listdir itself holds open
    except OSError:
        return None


def fd_reserve(configured: int, soft_limit: int) -> int:
    """`api.fd-reserve`, or by default a quarter of the open-files limit."""
    return configured if configured > 0 else max(soft_limit // 4, 1)


def _refusal_response(reason: str) -> bytes:
    body = f"fastproxy API: {reason}; try again later\n".encode()
    head = ("HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nRetry-After: 1\r\n"
            f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    return head + body


class _Refused(asyncio.Protocol):
    """A refused plain-HTTP connection: the 503 goes out at once, and the socket is closed once the
    request's headers are in (or after REFUSAL_LINGER). Closed before, the kernel would answer the
    request with a reset, which can destroy the 503 before the client reads it."""

    def __init__(self, answer: bytes, done: Callable[[], None]) -> None:
        self._answer = answer
        self._done = done
        self._seen = b""
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        self._transport = transport
        transport.write(self._answer)
        self._timer = asyncio.get_running_loop().call_later(REFUSAL_LINGER, transport.close)

    def data_received(self, data: bytes) -> None:
        seen = self._seen + data
        if b"\r\n\r\n" in seen:
            self._transport.close()
        self._seen = seen[-3:]  # enough to find the blank line across two reads

    def connection_lost(self, exc) -> None:
        if self._timer:
            self._timer.cancel()
        self._done()


class _Tally:
    """Counts events of one kind and logs them at most once per interval (a flood must not flood the log)."""

    def __init__(self, what: str, level: int) -> None:
        self.what = what
        self.level = level
        self.total = 0
        self._unlogged = 0
        self._last_log = float("-inf")

    def add(self, detail: str) -> None:
        self.total += 1
        self._unlogged += 1
        now = time.monotonic()
        if now - self._last_log >= REFUSAL_LOG_INTERVAL:
            log.log(self.level, "%s: %d since the last report; latest: %s", self.what, self._unlogged, detail)
            self._unlogged = 0
            self._last_log = now


def bind(host: str, port: int, backlog: int = 128) -> socket.socket:
    family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.create_server(addr, family=family, backlog=backlog)
    sock.setblocking(False)
    return sock


class GuardedListener:
    """Accepts on `sock` and hands each connection that passes the guard to `protocol_factory`
    (aiohttp's server), over TLS when `ssl_context` is set. `live()` counts the API connections
    the factory's protocols hold."""

    def __init__(self, sock: socket.socket, protocol_factory: Callable, live: Callable[[], int], *,
                 max_connections: int, fd_reserve: int, ssl_context: ssl.SSLContext | None,
                 handshake_timeout: float) -> None:
        self.sock = sock
        self._factory = protocol_factory
        self._live = live
        self.max_connections = max_connections
        self.fd_reserve = fd_reserve
        self._ssl = ssl_context
        self._handshake_timeout = handshake_timeout
        self._handshakes: set[asyncio.Task] = set()  # TLS connections not yet handed to aiohttp
        self._lingering = 0  # refused connections still open (see _Refused)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading = False
        self._closed = False
        self._resume_handle: asyncio.TimerHandle | None = None
        self._fd_count = 0
        self._fd_counted_at = float("-inf")
        self.refusals = _Tally("API connections refused", logging.WARNING)
        self.failed_handshakes = _Tally("API connections closed before their first request", logging.INFO)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft != resource.RLIM_INFINITY and fd_reserve(self.fd_reserve, soft) >= soft - 16:
            log.warning("api.fd-reserve %d leaves the API almost no descriptors under the open-files limit %d: "
                        "it will refuse most connections", self.fd_reserve, soft)
        self._resume()

    def close(self) -> None:
        self._closed = True
        if self._resume_handle:
            self._resume_handle.cancel()
        self._pause()
        for task in list(self._handshakes):
            task.cancel()
        self.sock.close()

    @property
    def connections(self) -> int:
        return self._live() + len(self._handshakes)

    def _pause(self) -> None:
        if self._reading:
            self._loop.remove_reader(self.sock.fileno())
            self._reading = False

    def _resume(self) -> None:
        self._resume_handle = None
        if not self._reading and not self._closed:
            self._loop.add_reader(self.sock.fileno(), self._on_readable)
            self._reading = True

    def _on_readable(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in _EXHAUSTED:
                    # out of descriptors: leave the pending connections in the kernel's queue for a moment
                    self.refusals.add(f"cannot accept ({e.strerror})")
                    self._pause()
                    self._resume_handle = self._loop.call_later(PAUSE_ON_EXHAUSTION, self._resume)
                    return
                continue  # ECONNABORTED and the like: that connection is gone, not the listener
            refusal = self._refusal(conn)
            if refusal:
                self._refuse(conn, *refusal)
            else:
                self._admit(conn)

    def _refusal(self, conn: socket.socket) -> tuple[str, str] | None:
        """(what the client is told, what the log says) when `conn` must not be kept."""
        if self.connections >= self.max_connections:
            return "too many API connections", f"{self.max_connections} are open (api.max-connections)"
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft == resource.RLIM_INFINITY:
            return None
        reserve = fd_reserve(self.fd_reserve, soft)
        # descriptors are allocated lowest-first, so this one's number is a cheap lower bound of those open
        in_use = conn.fileno() + 1
        if in_use + reserve <= soft:
            in_use = max(in_use, self._open_fds())
        if in_use + reserve > soft:
            return ("the proxy is short of file descriptors",
                    f"{in_use} of {soft} file descriptors are in use and {reserve} are kept for MySQL clients "
                    f"and backends (api.fd-reserve)")
        return None

    def _open_fds(self) -> int:
        """Descriptors open now, counted at most every FD_COUNT_MAX_AGE (a flood of API connections
        must not turn into a flood of /proc listings on the loop that serves MySQL clients)."""
        now = time.monotonic()
        if now - self._fd_counted_at >= FD_COUNT_MAX_AGE:
            self._fd_count = open_fds() or 0
            self._fd_counted_at = now
        else:
            self._fd_count += 1  # the connection being weighed, at least
        return self._fd_count

    def _refuse(self, conn: socket.socket, public: str, detail: str) -> None:
        self.refusals.add(detail)
        if self._ssl is None and self._lingering < MAX_LINGERING_REFUSALS:
            conn.setblocking(False)
            self._lingering += 1
            refused = _Refused(_refusal_response(public), self._lingered)
            task = self._loop.create_task(self._loop.connect_accepted_socket(lambda: refused, conn))
            task.add_done_callback(lambda t: self._refusal_handed_over(t, refused))
            return
        try:
            conn.setblocking(False)
            if self._ssl is None:
                conn.send(_refusal_response(public))
                conn.shutdown(socket.SHUT_WR)
            try:
                conn.recv(65536)  # a request already received: read it so close() sends FIN, not RST
            except OSError:
                pass
        except OSError:
            pass
        finally:
            conn.close()

    def _lingered(self) -> None:
        self._lingering -= 1

    def _refusal_handed_over(self, task: asyncio.Task, refused: _Refused) -> None:
        if not task.cancelled() and task.exception() is not None and refused._transport is None:
            self._lingering -= 1  # never connected, so never lost

    def _admit(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        if self._ssl is None:
            task = self._loop.create_task(self._loop.connect_accepted_socket(self._factory, conn))
        else:
            task = self._loop.create_task(self._loop.connect_accepted_socket(
                self._factory, conn, ssl=self._ssl, ssl_handshake_timeout=self._handshake_timeout))
        self._handshakes.add(task)
        task.add_done_callback(self._handed_over)

    def _handed_over(self, task: asyncio.Task) -> None:
        self._handshakes.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:  # a failed TLS handshake (no or untrusted client certificate, plain HTTP, timeout)
            self.failed_handshakes.add(f"{type(exc).__name__}: {exc}")
