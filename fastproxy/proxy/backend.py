"""Static backends, their health, and the choice of backend for a new connection.

A health check must never hurt the backend it checks. MariaDB (sql/sql_connect.cc,
`login_connection`) counts every connection that does not complete authentication in
`Aborted_connects`, logs it ("Aborted connection ... closed normally without authentication",
at the default log_warnings=2), and counts a connection that ends during the handshake as a
handshake error of the client's host (`performance_schema.host_cache`); `max_connect_errors` of
those without a successful login in between block the host ("Host is blocked because of many
connection errors") — an outage caused by the proxy. A connection that only reads the greeting,
or that resets right after connecting, or that logs in as an unknown user, is such a failed
connect: there is no unauthenticated way in that MariaDB does not count.

Hence two modes:

- `login` (with `proxy.health-check-user`, an account with no password and no privileges): every
  interval each backend gets a complete login and COM_QUIT, which MariaDB counts as a normal
  connection. A failed login fails the check, with the server's error.
- `passive` (no user): healthy backends are not probed at all. What real connections see is the
  evidence — a failed connect or an ERR greeting marks a backend down, a greeting marks it up
  again, and a backend that drops a connection in the middle of a command is probed at once.
  Backends that are down are probed every interval: while one is really down the TCP connect is
  refused and nothing reaches mariadbd; the probe that finds it back (reads its greeting, so an
  ERR greeting such as "too many connections" keeps it down) is the one aborted connect per
  outage. What this mode cannot see is an idle backend dying: the next connection to it finds out.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
import struct
import time

from fastproxy._packet import build_packet
from fastproxy.constants import CLIENT, COMMAND, ERR_HEADER, OK_HEADER, AUTH_MORE_DATA_HEADER, EOF_HEADER
from fastproxy.errors import HealthCheckFailed, ProtocolError
from fastproxy.protocol import Greeting, lenenc_int, parse_err

log = logging.getLogger("fastproxy.backend")

LOGIN, PASSIVE = "login", "passive"
# what the check asks for: the least a 4.1 login needs, plus connect attributes so that a DBA
# sees who it is (performance_schema.session_connect_attrs)
CHECK_CAPABILITIES = (CLIENT.LONG_PASSWORD | CLIENT.PROTOCOL_41 | CLIENT.SECURE_CONNECTION | CLIENT.PLUGIN_AUTH
                      | CLIENT.PLUGIN_AUTH_LENENC_CLIENT_DATA | CLIENT.CONNECT_ATTRS)
CHECK_ATTRS = ((b"program_name", b"fastproxy-health-check"),)
CHARSET_UTF8MB4_GENERAL_CI = 45
CACHING_SHA2_FAST_AUTH_OK = b"\x03"


def _empty_password(plugin: str) -> bytes:
    """Auth data for an empty password. The check account has none, so no nonce is needed: every
    plugin a passwordless account can use takes empty data (mysql_clear_password: the empty
    string's NUL)."""
    return b"\x00" if plugin == "mysql_clear_password" else b""


class Backend:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.healthy = True  # optimistic until a check or a connection says otherwise
        self.connections = 0
        self.last_error = ""
        self.last_check = 0.0
        self.checks = 0  # checks (login mode) or probes (passive mode) made
        self.check_failures = 0
        self.probing = False

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    def status(self) -> dict:
        return {"addr": self.addr, "healthy": self.healthy, "connections": self.connections, "error": self.last_error,
                "checks": self.checks, "check_failures": self.check_failures,
                "last_check": self.last_check or None}

    def __repr__(self) -> str:
        return f"<Backend {self.addr} {'up' if self.healthy else 'down'} conns={self.connections}>"


async def _read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    header = await reader.readexactly(4)
    return header[3], await reader.readexactly(int.from_bytes(header[:3], "little"))


class BackendPool:
    """Least-loaded healthy backend for each new connection; a background task keeps health (see
    the module's docstring for the two modes)."""

    def __init__(self, addrs: list[tuple[str, int]], interval: float = 2.0, timeout: float = 2.0, user: str = "",
                 local_addr: tuple[str, int] | None = None, tls=None, require_tls: bool = False) -> None:
        self.backends = [Backend(h, p) for h, p in addrs]
        self.interval = interval
        self.timeout = timeout
        self.user = user
        self.mode = LOGIN if user else PASSIVE
        self.local_addr = local_addr  # source address of checks (tests: a non-loopback-looking one)
        # security.sql-tls / require-backend-tls: a check connects as proxied connections do
        self.tls = tls
        self.require_tls = require_tls
        self.rounds = 0  # times the health task looked at every backend
        self._task: asyncio.Task | None = None
        self._probes: set[asyncio.Task] = set()

    def pick(self) -> Backend | None:
        healthy = [b for b in self.backends if b.healthy]
        if not healthy:
            return None
        return min(healthy, key=lambda b: b.connections)

    def any_backend(self) -> Backend:
        """Some backend even when none is healthy (so the client gets that backend's own error)."""
        return self.pick() or min(self.backends, key=lambda b: b.last_check)

    def status(self) -> dict:
        return {"mode": self.mode, "user": self.user, "interval": self.interval, "rounds": self.rounds,
                "tls": self.tls is not None, "require_tls": self.require_tls}

    # ---- evidence from proxied connections ----------------------------------------------------
    def report(self, backend: Backend | None, error: str = "") -> None:
        """What a proxied connection saw when it connected: `error` (connect failed, ERR greeting)
        marks the backend down; a greeting marks it up again in passive mode (in login mode only
        the check says up: a backend whose check user is refused must stay down)."""
        if backend is None:
            return
        if error:
            self._set(backend, False, error)
        elif not backend.healthy and self.mode == PASSIVE:
            self._set(backend, True, "")

    def suspect(self, backend: Backend | None) -> None:
        """A backend dropped a connection in the middle of a command: check it now (free if it
        is really gone: the connect is refused before it reaches the server)."""
        if backend is None or backend.probing or self._task is None:
            return
        task = asyncio.get_running_loop().create_task(self.check(backend))
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)

    # ---- checks ----------------------------------------------------------------------------------
    async def check(self, backend: Backend) -> bool:
        backend.probing = True
        try:
            conn = asyncio.open_connection(backend.host, backend.port, local_addr=self.local_addr)
            reader, writer = await asyncio.wait_for(conn, self.timeout)
            try:
                await asyncio.wait_for(self._login(reader, writer) if self.mode == LOGIN else self._greeting(reader),
                                       self.timeout)
            finally:
                writer.close()
            ok, error = True, ""
        except asyncio.TimeoutError:
            ok, error = False, f"no answer within {self.timeout:g}s"
        except HealthCheckFailed as e:
            ok, error = False, str(e)
        except (OSError, asyncio.IncompleteReadError, ProtocolError, IndexError, struct.error) as e:
            ok, error = False, f"{type(e).__name__}: {e}"
        finally:
            backend.probing = False
        backend.last_check = time.time()
        backend.checks += 1
        backend.check_failures += not ok
        self._set(backend, ok, error)
        return ok

    async def _greeting(self, reader: asyncio.StreamReader) -> Greeting:
        _, payload = await _read_packet(reader)
        if payload[:1] == bytes((ERR_HEADER,)):  # too many connections, host blocked ...
            code, _, message = parse_err(payload)
            raise HealthCheckFailed(f"backend refused the connection: {code} {message}")
        g = Greeting.parse(payload)
        if self.require_tls and not g.capabilities & CLIENT.SSL:
            raise HealthCheckFailed("backend does not offer TLS (security.require-backend-tls)")
        return g

    async def _login(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Log in as the check user (no password) and quit: a connection MariaDB counts as normal."""
        g = await self._greeting(reader)
        plugin = g.auth_plugin or "mysql_native_password"
        data = _empty_password(plugin)
        attrs = b"".join(lenenc_int(len(k)) + k + lenenc_int(len(v)) + v for k, v in CHECK_ATTRS)
        caps = CHECK_CAPABILITIES & g.capabilities & 0xFFFFFFFF
        seq = 1
        if self.tls is not None and g.capabilities & CLIENT.SSL:  # SSL request, TLS, then the login inside
            caps |= CLIENT.SSL
            writer.write(build_packet(seq, struct.pack("<IIB", caps, 1 << 24, CHARSET_UTF8MB4_GENERAL_CI) + bytes(23)))
            seq += 1
            try:
                await writer.start_tls(self.tls)
            except ssl.SSLError as e:
                raise HealthCheckFailed(f"TLS handshake failed: {e.reason or e}") from None
        body = (struct.pack("<IIB", caps, 1 << 24, CHARSET_UTF8MB4_GENERAL_CI) + bytes(23)
                + self.user.encode() + b"\x00" + lenenc_int(len(data)) + data + plugin.encode() + b"\x00")
        if caps & CLIENT.CONNECT_ATTRS:
            body += lenenc_int(len(attrs)) + attrs
        writer.write(build_packet(seq, body))
        while True:
            seq, payload = await _read_packet(reader)
            first = payload[0] if payload else -1
            if first == OK_HEADER:
                break
            if first == ERR_HEADER:
                code, _, message = parse_err(payload)
                raise HealthCheckFailed(f"login as {self.user!r} failed: {code} {message}")
            if first == EOF_HEADER:  # auth switch to the account's plugin: name NUL data
                plugin = bytes(payload[1:]).split(b"\x00", 1)[0].decode("ascii", "replace")
                writer.write(build_packet(seq + 1, _empty_password(plugin)))
            elif first == AUTH_MORE_DATA_HEADER and bytes(payload[1:]) == CACHING_SHA2_FAST_AUTH_OK:
                continue  # the OK follows
            else:
                raise HealthCheckFailed(f"login as {self.user!r} asks for more than an empty password "
                                        f"({plugin}: {bytes(payload[:16])!r}); give it no password")
        writer.write(build_packet(0, bytes((COMMAND.COM_QUIT,))))
        await reader.read()  # the server closes after COM_QUIT: it closes first, cleanly

    def _set(self, backend: Backend, ok: bool, error: str) -> None:
        if ok != backend.healthy:
            log.warning("backend %s is now %s%s", backend.addr, "healthy" if ok else "unhealthy",
                        f" ({error})" if error else "")
        backend.healthy, backend.last_error = ok, error

    async def check_all(self) -> None:
        """Login mode: every backend. Passive mode: only the ones that are down (module docstring)."""
        todo = [b for b in self.backends if self.mode == LOGIN or not b.healthy]
        await asyncio.gather(*(self.check(b) for b in todo if not b.probing))
        self.rounds += 1

    async def _loop(self) -> None:
        while True:
            await self.check_all()
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._probes) if t is not None]
        self._task = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
