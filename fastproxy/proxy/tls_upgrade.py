"""TLS inside the MySQL handshake, on both sides of the proxy.

MySQL's TLS starts in the middle of its protocol: the server's greeting offers `CLIENT_SSL`, the
client answers with an *SSL request* (the first 32 bytes of a handshake response, sequence id 1),
both sides switch to TLS, and the full handshake response follows inside it with sequence id 2.

The proxy terminates TLS on each side independently (`security.server-tls` towards clients,
`security.sql-tls` towards backends), so every mix works; the handshake packets it relays in
between are renumbered by the difference (`HandshakeTls.seq_shift`). After the login the packets
are the same as in plain text: the relay, the capture and the session tracking see decrypted bytes.

The upgrade runs asyncio's TLS protocol (uvloop's, in Cython, on a uvloop loop) on top of the
connection's transport. It is built here rather than with `loop.start_tls` because a client sends
its TLS ClientHello right after the SSL request without waiting for an answer: both often arrive in
one read, and `start_tls` cannot be given bytes that were already read.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
import struct
from dataclasses import dataclass

from fastproxy._packet import build_packet
from fastproxy.constants import CLIENT
from fastproxy.errors import ConfigError

log = logging.getLogger("fastproxy.tls")

# A client that connects, asks for TLS and then stalls is cut off after this long.
CLIENT_HANDSHAKE_TIMEOUT = 10.0
REQUIRE_CLIENT_TLS = ("Access denied: this proxy requires TLS (fastproxy security.require-client-tls); "
                      "connect with TLS (mariadb --ssl, ssl-mode=REQUIRED, PyMySQL ssl=...)")


@dataclass
class ProxyTls:
    """The process's TLS settings, turned into contexts once at startup (a bad file stops the start
    with a message naming its key)."""

    server_ctx: ssl.SSLContext | None = None  # towards clients: the greeting offers TLS
    require_client: bool = False
    backend_ctx: ssl.SSLContext | None = None  # towards backends
    require_backend: bool = False
    rsa_key: object = None  # the key plain clients encrypt their password with for a TLS backend (sha2_bridge.py)

    @classmethod
    def from_config(cls, config) -> "ProxyTls":
        from fastproxy.tls import client_context, server_context

        p = "security.server-tls"
        server_ctx = None
        if config[f"{p}.cert"] or config[f"{p}.key"] or config[f"{p}.auto-certs"]:
            server_ctx = server_context(config[f"{p}.cert"], config[f"{p}.key"], config[f"{p}.ca"],
                                        config[f"{p}.min-tls-version"], config[f"{p}.auto-certs"], key_prefix=p)
        elif config[f"{p}.ca"]:
            raise ConfigError(f"{p}.ca: client certificates need TLS: set {p}.cert and .key (or .auto-certs = true)")
        if config["security.require-client-tls"] and server_ctx is None:
            raise ConfigError(f"security.require-client-tls: needs {p}.cert and .key (or .auto-certs = true)")
        q = "security.sql-tls"
        backend_ctx = None
        if config[f"{q}.ca"] or config[f"{q}.cert"] or config[f"{q}.skip-ca"] or config["security.require-backend-tls"]:
            backend_ctx = client_context(config[f"{q}.ca"], config[f"{q}.cert"], config[f"{q}.key"],
                                         config[f"{q}.skip-ca"], config[f"{q}.min-tls-version"], key_prefix=q)
        for ctx in (server_ctx, backend_ctx):
            if ctx is not None:
                ctx.sslobject_class = AlertKeepingSSLObject
        from fastproxy.proxy.sha2_bridge import new_rsa_key

        return cls(server_ctx, config["security.require-client-tls"], backend_ctx, config["security.require-backend-tls"],
                   new_rsa_key() if backend_ctx is not None else None)


class HandshakeTls:
    """One connection's TLS state during its handshake."""

    __slots__ = ("client", "backend", "busy", "backend_wanted", "plugin", "nonce", "bridge", "password",
                 "extra_shift", "client_raw", "backend_raw")

    def __init__(self) -> None:
        self.client = False  # the client's side is encrypted
        self.backend = False  # the backend's side is encrypted
        self.busy = False  # an upgrade is under way: the client's packets wait
        self.backend_wanted = False  # sql-tls is set and the backend's greeting offers TLS
        # caching_sha2_password full authentication across one TLS leg (sha2_bridge.py)
        self.plugin = ""  # the backend's current auth plugin and its nonce
        self.nonce = b""
        self.bridge: str | None = None  # what the bridge waits for
        self.password = b""  # for one step of the bridge only
        self.extra_shift = 0  # packets one leg counted and the other did not
        self.client_raw = None  # each TLS side's socket transport, under its TLS transport (the hand-off)
        self.backend_raw = None

    @property
    def seq_shift(self) -> int:
        """client sequence id - backend sequence id, for the handshake packets relayed between them."""
        return int(self.client) - int(self.backend) + self.extra_shift


def ssl_request(response: bytes, seq: int = 1) -> bytes:
    """The SSL request for a handshake response: its first 32 bytes (capabilities, max packet size,
    collation, filler) with CLIENT_SSL set. MariaDB keeps the capabilities and collation of the SSL
    request, so they must be the client's own."""
    head = bytearray(response[:32])
    struct.pack_into("<I", head, 0, struct.unpack_from("<I", head, 0)[0] | CLIENT.SSL)
    return build_packet(seq, bytes(head))


def with_ssl_flag(response: bytes) -> bytes:
    out = bytearray(response)
    struct.pack_into("<I", out, 0, struct.unpack_from("<I", out, 0)[0] | CLIENT.SSL)
    return bytes(out)


class _Handover(asyncio.Protocol):
    """Receives the encrypted transport once the TLS handshake is done and gives it to the
    connection's own protocol at once (before any decrypted byte can arrive)."""

    def __init__(self, protocol: asyncio.Protocol, done: asyncio.Future) -> None:
        self.protocol = protocol
        self.done = done

    def connection_made(self, transport) -> None:
        transport.set_protocol(self.protocol)
        if not self.done.done():
            self.done.set_result(transport)

    def connection_lost(self, exc) -> None:  # only before connection_made, if ever
        if not self.done.done():
            self.done.set_exception(exc or ConnectionResetError("connection closed during the TLS handshake"))


class AlertKeepingSSLObject(ssl.SSLObject):
    """An SSLObject that tells the transport under it where its outgoing bytes wait (set as the
    contexts' `sslobject_class`): asyncio's and uvloop's TLS protocols close the connection on a
    failed handshake without sending the alert OpenSSL wrote (`certificate required`, `unknown ca`,
    `certificate expired`), and the client would only see "unexpected eof"."""

    @classmethod
    def _create(cls, incoming, outgoing, *args, **kwargs):
        obj = super()._create(incoming, outgoing, *args, **kwargs)
        if _RawSide.binding is not None:  # wrap_bio runs inside the TLS protocol's connection_made
            _RawSide.binding.outgoing = outgoing
        return obj


class _RawSide:
    """The connection's own transport as the TLS protocol sees it: the same, except that what
    OpenSSL still has to send (a failed handshake's alert) is sent before the connection closes."""

    binding: "_RawSide | None" = None
    __slots__ = ("raw", "outgoing", "write", "pause_reading", "resume_reading", "get_extra_info", "is_closing")

    def __init__(self, raw: asyncio.Transport) -> None:
        self.raw = raw
        self.outgoing: ssl.MemoryBIO | None = None
        self.write = raw.write
        self.pause_reading = raw.pause_reading
        self.resume_reading = raw.resume_reading
        self.get_extra_info = raw.get_extra_info
        self.is_closing = raw.is_closing

    def _flush(self) -> None:
        if self.outgoing is not None and self.outgoing.pending and not self.raw.is_closing():
            self.raw.write(self.outgoing.read())

    def close(self) -> None:
        self._flush()
        self.raw.close()

    def abort(self) -> None:
        self._flush()
        self.raw.close()  # close, not abort: let the alert leave

    def _force_close(self, exc) -> None:
        self._flush()
        self.raw.close()


def _ssl_protocol_class(loop: asyncio.AbstractEventLoop):
    try:
        import uvloop
        import uvloop.loop

        if isinstance(loop, uvloop.Loop):
            return uvloop.loop.SSLProtocol
    except ImportError:  # pragma: no cover - uvloop is a dependency
        pass
    import asyncio.sslproto

    return asyncio.sslproto.SSLProtocol


async def upgrade(transport: asyncio.Transport, protocol: asyncio.Protocol, ctx: ssl.SSLContext, *,
                  server_side: bool, timeout: float, already_read: bytes = b"") -> asyncio.Transport:
    """Run TLS over `transport` (whose reading this pauses meanwhile) and return the encrypted
    transport, whose protocol is `protocol`. `already_read`: bytes of the peer's TLS handshake that
    were read before the switch. Raises ssl.SSLError / OSError / asyncio.TimeoutError /
    ConnectionError when the handshake fails; the transport is closed then."""
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    done = loop.create_future()
    tls = _ssl_protocol_class(loop)(loop, _Handover(protocol, done), ctx, waiter, server_side, None,
                                    call_connection_made=True, ssl_handshake_timeout=timeout)
    transport.pause_reading()
    transport.set_protocol(tls)
    raw_side = _RawSide.binding = _RawSide(transport)
    try:
        tls.connection_made(raw_side)
    finally:
        _RawSide.binding = None
    view = memoryview(already_read)
    while view:
        buf = tls.get_buffer(len(view))
        n = min(len(buf), len(view))
        buf[:n] = view[:n]
        tls.buffer_updated(n)
        view = view[n:]
    transport.resume_reading()
    try:
        await waiter
        return await done
    except BaseException:
        transport.close()
        raise


def describe_error(exc: BaseException) -> str:
    """A short reason for a log line: OpenSSL's reason, or the exception's name."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"{exc.reason}: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


# ---- the two upgrades of one proxied connection (hooks in fastproxy/proxy/connection.py) -----------
def start_client_upgrade(conn) -> None:
    """The client sent an SSL request: switch its side to TLS. Its packets wait meanwhile (the
    handshake response comes inside TLS)."""
    conn.tls.busy = True
    already = conn.framer.take_all()  # the start of the ClientHello, when it came in the same read
    conn.server.loop.create_task(_client_upgrade(conn, already))


async def _client_upgrade(conn, already: bytes) -> None:
    s = conn.session
    try:
        transport = await upgrade(conn.transport, conn, conn.server.tls.server_ctx, server_side=True,
                                  timeout=CLIENT_HANDSHAKE_TIMEOUT, already_read=already)
    except (ssl.SSLError, OSError, asyncio.TimeoutError, ConnectionError) as e:
        # the client's own library reports why (unknown CA, expired certificate ...); the proxy logs it
        log.info("conn %d (%s): TLS handshake with the client failed: %s", s.conn_id, s.client_addr,
                 describe_error(e))
        s.closed_by, s.close_reason = s.closed_by or "client", s.close_reason or "TLS handshake failed"
        conn._close()
        return
    if conn._closing:
        transport.close()
        return
    conn.tls.client_raw = conn.transport
    conn.transport = transport
    conn._to_client = transport.write
    conn.tls.client, conn.tls.busy = True, False
    s.client_tls = tls_version(transport)
    conn.data_received(b"")  # what arrived with the end of the handshake


def start_backend_upgrade(conn, response: bytes, client_seq: int) -> None:
    """The client's handshake response is in (`response`, capabilities masked): switch the backend's
    side to TLS with the client's capabilities, then send the response inside it."""
    conn.tls.busy = True
    conn.transport.pause_reading()
    conn.backend_side.transport.write(ssl_request(response))
    conn.server.loop.create_task(_backend_upgrade(conn, with_ssl_flag(response), client_seq))


async def _backend_upgrade(conn, response: bytes, client_seq: int) -> None:
    from fastproxy.protocol import err_packet
    from fastproxy.constants import ER

    side, backend, s = conn.backend_side, conn.backend, conn.session
    try:
        transport = await upgrade(side.transport, side, conn.server.tls.backend_ctx, server_side=False,
                                  timeout=conn.server.config["proxy.connect-timeout"])
    except (ssl.SSLError, OSError, asyncio.TimeoutError, ConnectionError) as e:
        if conn._closing:  # the client left meanwhile (closing the backend's side ended the handshake)
            return
        reason = describe_error(e)
        log.warning("conn %d (%s): TLS handshake with backend %s failed: %s", s.conn_id, s.client_addr,
                    s.backend, reason)
        conn.server.pool.report(backend, f"TLS handshake failed: {reason}")  # health evidence
        conn.transport.write(err_packet(ER.UNKNOWN_ERROR, f"fastproxy: TLS to backend {s.backend} failed: "
                                        f"{reason}", client_seq + 1, "08S01"))
        s.closed_by, s.close_reason = s.closed_by or "proxy", s.close_reason or "backend TLS failed"
        conn._close()
        return
    if conn._closing:
        transport.close()
        return
    conn.tls.backend_raw = side.transport
    side.transport = transport
    conn._to_backend = transport.write
    conn.tls.backend, conn.tls.busy = True, False
    s.backend_tls = tls_version(transport)
    transport.write(build_packet(2, response))
    conn.transport.resume_reading()
    conn.data_received(b"")  # what the client sent meanwhile (nothing, unless it pipelines)


def on_greeting(conn, greeting) -> str:
    """The backend's greeting is in: whether its side will be upgraded; why it cannot be used under
    the TLS settings ("" when it can)."""
    from fastproxy.proxy.sha2_bridge import greeting_nonce

    tls = conn.server.tls
    greeting_caps = greeting.capabilities
    offered = bool(greeting_caps & CLIENT.SSL)
    conn.tls.backend_wanted = tls.backend_ctx is not None and offered
    if tls.server_ctx is not None or tls.backend_ctx is not None:  # one leg may be TLS: sha2_bridge.py may need them
        conn.tls.plugin, conn.tls.nonce = greeting.auth_plugin, greeting_nonce(greeting.raw)
    if tls.require_backend and not offered:
        return "does not offer TLS (security.require-backend-tls)"
    return ""


def tls_version(transport) -> str:
    obj = transport.get_extra_info("ssl_object") if transport is not None else None
    return obj.version() or "" if obj is not None else ""
