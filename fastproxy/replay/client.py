"""A minimal asynchronous MySQL client for replay: log in, then send raw command payloads one at a
time and learn how each response ended (the same ResponseTracker the proxy uses). Rows are never
decoded for replayed commands: replay only needs outcomes. Its own statements (rebuilding a session,
asking the current database) go through `query` / `query_rows`, whose results never reach
on_result; `change_user` runs a COM_CHANGE_USER exchange with the auth plugins of login."""
from __future__ import annotations

import asyncio
import struct
from typing import Callable

from fastproxy._packet import CommandResult, PacketFramer, ResponseTracker, build_packet
from fastproxy.constants import CLIENT, COMMAND, MAX_PACKET_PAYLOAD
from fastproxy.errors import BackendConnError, ProtocolError
from fastproxy.replay._client import ClientCore, Internal as _Internal
from fastproxy.protocol import Greeting, lenenc_int as _lenenc, parse_err, read_lenenc
from fastproxy.textresult import TextResult, TextResultReader

# What the replay client asks for; the server's greeting may offer less.
BASE_CAPABILITIES = (
    CLIENT.LONG_PASSWORD | CLIENT.LONG_FLAG | CLIENT.PROTOCOL_41 | CLIENT.TRANSACTIONS | CLIENT.SECURE_CONNECTION
    | CLIENT.MULTI_RESULTS | CLIENT.PS_MULTI_RESULTS | CLIENT.PLUGIN_AUTH
    | CLIENT.PLUGIN_AUTH_LENENC_CLIENT_DATA | CLIENT.DEPRECATE_EOF | CLIENT.LOCAL_FILES | CLIENT.CONNECT_ATTRS
    | CLIENT.SESSION_TRACK  # the server says which database is current after any statement
)
# Session-visible behaviour copied from the captured client (affected-rows semantics, parsing).
# Multi-statements too: "a; b" must fail on replay exactly when it failed in production.
MIRRORED_CAPABILITIES = CLIENT.FOUND_ROWS | CLIENT.IGNORE_SPACE | CLIENT.INTERACTIVE | CLIENT.MULTI_STATEMENTS


class LoginError(BackendConnError):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"login failed: {code} {message}")
        self.code = code
        self.message = message


class ReplayClient(ClientCore, asyncio.Protocol):
    """send, data_received and the delivery of results are ClientCore's, in C (_client.pyx)."""

    def __init__(self, on_result: Callable[["ReplayClient", CommandResult], None],
                 on_lost: Callable[["ReplayClient", Exception | None], None], owner=None) -> None:
        self.on_result = on_result
        self.on_lost = on_lost
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.framer = PacketFramer(1 << 30)
        self.tracker = ResponseTracker()
        self._packets: asyncio.Queue = asyncio.Queue()
        self.ready = False
        self.closed = False
        self.server_version = ""
        self.connection_id = 0
        self._infile_seen = 0
        self._ssl_context = None
        self._host = ""
        self.tls = False
        # LOCAL INFILE files for the command in flight, in the order the server asks for them:
        # bytes, or None for a file the capture did not record (an empty file is sent)
        self.infiles: list[bytes | None] | None = None
        self.on_infile = None  # callback(recorded: bool) per file sent
        self._exchange = False  # a COM_CHANGE_USER exchange reads packets itself (as login does)
        self._rows: TextResultReader | None = None
        self._rows_future: asyncio.Future | None = None
        self._capabilities = 0
        self._charset = 0
        self._nonce = b""
        self._plugin = ""

    # ---- login ---------------------------------------------------------------------------------
    @classmethod
    async def connect(cls, host: str, port: int, user: str, password: str, database: str | None, *,
                      on_result, on_lost, owner=None, capabilities: int = 0, charset: int = 0,
                      timeout: float = 10.0, ssl_context=None) -> "ReplayClient":
        """Log in; with `ssl_context` (fastproxy.tls.client_context) the session is upgraded to TLS
        after the greeting, as MySQL clients do, and refused if the server does not offer it."""
        loop = asyncio.get_running_loop()
        _, client = await asyncio.wait_for(
            loop.create_connection(lambda: cls(on_result, on_lost, owner), host, port), timeout)
        client._ssl_context = ssl_context
        client._host = host
        try:
            await asyncio.wait_for(client._login(user, password.encode(), database, capabilities, charset), timeout)
        except BaseException:
            client.close()
            raise
        return client

    async def _next_packet(self) -> tuple[int, bytes]:
        item = await self._packets.get()
        if isinstance(item, Exception):
            raise item
        return item[0], bytes(item[1])

    async def _login(self, user: str, password: bytes, database: str | None, mirrored: int, charset: int) -> None:
        from fastproxy.replay import auth

        seq, payload = await self._next_packet()
        if payload[:1] == b"\xff":
            code, _, msg = parse_err(payload)
            raise LoginError(code, msg)
        g = Greeting.parse(payload)
        self.server_version = g.server_version
        self.connection_id = g.connection_id
        nonce = self._nonce = auth.greeting_nonce(g.raw)
        caps = (BASE_CAPABILITIES | (mirrored & MIRRORED_CAPABILITIES)) & (g.capabilities & 0xFFFFFFFF)
        caps |= CLIENT.LONG_PASSWORD if not g.mariadb else 0
        if database:
            caps |= CLIENT.CONNECT_WITH_DB
        self.tracker.deprecate_eof = bool(caps & CLIENT.DEPRECATE_EOF)
        self.tracker.session_track = bool(caps & CLIENT.SESSION_TRACK)
        plugin = self._plugin = g.auth_plugin or "mysql_native_password"
        # the captured client's collation, else the server's default (utf8mb4_general_ci if none)
        charset = self._charset = charset or g.charset or 45
        self._capabilities = caps
        secure = False
        if self._ssl_context is not None:
            if not g.capabilities & CLIENT.SSL:
                raise BackendConnError("TLS requested, but the server does not offer it (CLIENT_SSL)")
            caps |= CLIENT.SSL
            seq += 1  # SSLRequest: the first 32 bytes of the handshake response, then the TLS handshake
            self.write(build_packet(seq, struct.pack("<IIB", caps, 1 << 30, charset & 0xFF) + b"\x00" * 23))
            self.transport = await asyncio.get_running_loop().start_tls(
                self.transport, self, self._ssl_context, server_hostname=None if self._ssl_context.check_hostname
                is False else self._host)
            self.tls = True
            secure = True
        response = auth.auth_response(plugin, password, nonce, secure=secure)
        body = struct.pack("<IIB", caps, 1 << 30, charset & 0xFF) + b"\x00" * 23
        body += user.encode() + b"\x00" + _lenenc(len(response)) + response
        if database:
            body += database.encode() + b"\x00"
        body += plugin.encode() + b"\x00"
        attrs = b"".join(_lenenc(len(x)) + x for x in (b"program_name", b"fastproxy-replay"))
        body += _lenenc(len(attrs)) + attrs
        self.write(build_packet(seq + 1, body))
        await self._auth_exchange(plugin, password, nonce, secure)
        self.ready = True
        if not self.tls:
            self.attach_socket()
        rest = self.framer.take_all()
        if rest:
            self.data_received(rest)

    async def _auth_exchange(self, plugin: str, password: bytes, nonce: bytes, secure: bool) -> bytes:
        """Answer the server until it accepts (returns its OK payload) or refuses (LoginError)."""
        from fastproxy.replay import auth

        while True:
            seq, payload = await self._next_packet()
            first = payload[:1]
            if first == b"\x00":
                return payload
            if first == b"\xff":
                code, _, msg = parse_err(payload)
                raise LoginError(code, msg)
            if first == b"\xfe":  # auth switch: plugin name, then its nonce (kept exactly as sent)
                plugin, nonce = auth.parse_auth_switch(payload)
                self.write(build_packet(seq + 1, auth.auth_response(plugin, password, nonce, secure=secure)))
            elif first == b"\x01":  # more data: caching_sha2 fast-auth result, full auth, a public key
                reply = auth.auth_more_data(plugin, payload[1:], password, nonce, secure=secure)
                if reply is not None:
                    self.write(build_packet(seq + 1, reply))
            else:
                raise ProtocolError(f"unexpected packet during authentication: {payload[:16]!r}")

    async def change_user(self, user: str, password: str, database: str | None) -> CommandResult:
        """COM_CHANGE_USER: log in again as `user` on this connection (the server resets the session).
        Returns the outcome as a CommandResult (OK, or ERR with the server's code); a lost
        connection raises BackendConnError (and on_lost fires as for any command)."""
        from fastproxy.replay import auth

        pw = password.encode()
        response = auth.auth_response(self._plugin, pw, self._nonce, secure=self.tls)
        body = (bytes((COMMAND.COM_CHANGE_USER,)) + user.encode() + b"\x00" + bytes((len(response),)) + response
                + (database or "").encode() + b"\x00" + struct.pack("<H", self._charset & 0xFFFF)
                + self._plugin.encode() + b"\x00")
        if self._capabilities & CLIENT.CONNECT_ATTRS:
            attrs = b"".join(_lenenc(len(x)) + x for x in (b"program_name", b"fastproxy-replay"))
            body += _lenenc(len(attrs)) + attrs
        result = CommandResult(COMMAND.COM_CHANGE_USER)
        self._exchange = True
        try:
            self.write(build_packet(0, body))
            ok = await self._auth_exchange(self._plugin, pw, self._nonce, self.tls)
            result.outcome = 0
            rest = ok[1:]
            _, n = read_lenenc(rest, 0)  # affected rows, last insert id: then the status flags
            _, n = read_lenenc(rest, n)
            if len(rest) >= n + 2:
                result.status_flags = rest[n] | rest[n + 1] << 8
        except LoginError as e:
            result.outcome, result.err_code, result.err_msg = 1, e.code, e.message
        finally:
            self._exchange = False
        rest = self.framer.take_all()
        if rest:
            self.data_received(rest)
        return result

    async def query(self, sql: str | bytes) -> CommandResult:
        """Run a statement of the replay's own (rebuilding a session): its outcome, not delivered."""
        future = asyncio.get_running_loop().create_future()
        self.send(b"\x03" + (sql.encode("utf-8", "surrogateescape") if isinstance(sql, str) else sql),
                  _Internal(future))
        return await future

    async def query_rows(self, sql: str) -> TextResult:
        """Run a query of the replay's own and read its rows (e.g. SELECT DATABASE())."""
        self._rows = TextResultReader(self.tracker.deprecate_eof)
        self._rows_future = future = asyncio.get_running_loop().create_future()
        self.write(build_packet(0, b"\x03" + sql.encode()))
        return await future

    # ---- commands (send, send_only: ClientCore) ------------------------------------------------
    def _data_received_slow(self, data: bytes) -> None:
        """What ClientCore.data_received leaves here: the rows of query_rows, login, COM_CHANGE_USER."""
        if self._rows is not None:
            self._rows_data(data)
            return
        self.framer.feed(data)
        try:
            while (pkt := self.framer.next_packet()) is not None:
                self._packets.put_nowait(pkt)
        except ProtocolError as e:
            self._packets.put_nowait(e)

    def _send_infile(self) -> None:
        """The server asked for a LOCAL INFILE file: the captured one (capture.local-infile), else an
        empty one (no rows; the same as a client whose file is empty)."""
        content = self.infiles.pop(0) if self.infiles else None
        if self.on_infile is not None:
            self.on_infile(content is not None)
        seq = self.tracker.next_seq
        out = bytearray()
        if content:
            for pos in range(0, len(content), MAX_PACKET_PAYLOAD - 1):  # never a full-size packet
                chunk = content[pos:pos + MAX_PACKET_PAYLOAD - 1]
                out += build_packet(seq, chunk)
                seq += 1
        out += build_packet(seq, b"")
        self.write(bytes(out))

    def _rows_data(self, data: bytes) -> None:
        try:
            done = self._rows.feed(data)
        except ProtocolError as e:
            self._rows, future = None, self._rows_future
            future.set_exception(e)
            return
        if done:
            reader, future = self._rows, self._rows_future
            self._rows = self._rows_future = None
            if not future.done():
                future.set_result(reader.result)
            rest = reader.leftover()
            if rest:
                self.data_received(rest)

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.detach_socket()
        if not self.ready or self._exchange:
            self._packets.put_nowait(BackendConnError(f"connection closed during authentication: {exc or 'EOF'}"))
        was_closed = self.closed
        self.closed = True
        self.tracker.abort()
        lost = BackendConnError(f"connection lost: {exc or 'EOF'}")
        for result in self.tracker.take_completed():  # in-flight commands are reported through on_lost
            if type(result.tag) is _Internal and not result.tag.future.done():
                result.tag.future.set_exception(lost)
        if self._rows_future is not None and not self._rows_future.done():
            self._rows_future.set_exception(lost)
            self._rows = self._rows_future = None
        if self.ready and not was_closed:
            self.on_lost(self, exc)

    def close(self, quit_first: bool = True) -> None:
        if self.closed:
            return
        self.closed = True
        self.uncork()  # anything held back leaves first, then the COM_QUIT
        self.detach_socket()
        if self.transport and not self.transport.is_closing():
            if quit_first and self.ready:
                self.write(build_packet(0, b"\x01"))
            self.transport.close()
