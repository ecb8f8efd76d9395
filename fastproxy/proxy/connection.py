"""One proxied connection: a client-side and a backend-side asyncio Protocol joined together.

Bytes are forwarded the moment they arrive (no buffering in the proxy) and watched on the side:
the client's by a PacketFramer (commands), the server's by a ResponseTracker (where each response
ends, how). Only the connection phase is rewritten (capabilities the proxy cannot handle are
removed from the greeting).

The proxy's own queries (fastproxy/proxy/introspect.py: the session of a connection open before a
capture, the current database when the server did not say it) run on the client's backend
connection at a command boundary, and never mix with the client's bytes:
- a boundary is when the client starts a command while every earlier one is answered and no part
  of a packet of it has been forwarded (tracker idle, framer empty, no LOCAL INFILE file going);
- there, the client's bytes are held (not forwarded) and the proxy sends its query instead; the
  server's answer is read by a TextResultReader and not forwarded; the next query of the proxy, if
  any, goes the same way; then the held bytes go on through the normal path;
- a command that reads what a SELECT would reset (FOUND_ROWS(), ROW_COUNT(), SHOW WARNINGS) goes
  first: the proxy asks before the command after it.
"""
from __future__ import annotations

import asyncio
import logging
from bisect import bisect_left
import struct
import time
from typing import TYPE_CHECKING

from fastproxy._packet import PacketFramer, ResponseTracker, build_packet
from fastproxy.capture.record import OUTCOME_BACKEND_LOST
from fastproxy.constants import CLIENT, COMMAND, ER, SERVER_STATUS
from fastproxy.errors import ProtocolError
from fastproxy.metrics import LATENCY_BOUNDS_NS
from fastproxy.protocol import Greeting, HandshakeResponse, err_packet, mask_client_capabilities, parse_err
from fastproxy.proxy.introspect import DIAGNOSTICS_PEEK, DatabaseReader, SessionReader, reads_diagnostics
from fastproxy.proxy.session import STATE_FLAGS, Session
from fastproxy.proxy import sha2_bridge, tls_upgrade
from fastproxy.proxy.inbound_proxy_protocol import InboundHeader, outbound_header
from fastproxy.textresult import TextResultReader

if TYPE_CHECKING:
    from fastproxy.proxy.backend import Backend
    from fastproxy.proxy.server import ProxyServer

log = logging.getLogger("fastproxy.conn")

# phases
CONNECTING, GREETING, AUTH, COMMANDS, CLOSED = range(5)
_IN_TRANS = SERVER_STATUS.IN_TRANS

# Largest client packet before authentication completed (handshake response with attributes, auth
# switch answers are far smaller): garbage such as an HTTP request is refused at once.
AUTH_MAX_PACKET = 1 << 20
# The errors the proxy itself sends carry a server error code: libmariadb reports any client-range
# code (2000-2999, e.g. 2003, 2013) received from a server as "Received malformed packet" (2027).
ER_UNKNOWN_ERROR = 1105
TLS_NOT_ENABLED = ("Bad handshake: TLS is not enabled on this proxy (fastproxy); "
                   "connect without TLS (mariadb --ssl=0, ssl-mode=DISABLED)")


class ClientConnection(asyncio.Protocol):
    def __init__(self, server: "ProxyServer") -> None:
        self.server = server
        self.stats = server.stats
        self.phase = CONNECTING
        self.transport: asyncio.Transport | None = None
        self.backend_side: BackendSide | None = None
        self.backend: Backend | None = None
        self.framer = PacketFramer(min(AUTH_MAX_PACKET, server.config["proxy.max-packet-size"]))
        self.tracker = ResponseTracker()
        self.session: Session | None = None
        self.greeting: Greeting | None = None
        self.advertised = 0
        self.draining = False
        self._closing = False
        self._infile = False  # the client is sending a LOCAL INFILE file
        self._infile_seen = 0
        self._infile_parts: list | None = None  # its content, when the capture records it
        self._infile_size = 0
        self._infile_limit = 0
        # the proxy's own queries (module docstring): client bytes held meanwhile, the reader of
        # the current answer, and what interprets it
        self._held: list[bytes] | None = None
        self._own_reader: TextResultReader | None = None
        self._own_query = None
        # TLS and the PROXY protocol in the handshake (tls_upgrade.py, inbound_proxy_protocol.py)
        self.tls = tls_upgrade.HandshakeTls()
        self.proxy_header: InboundHeader | None = None

    # ---- client side -------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        client_addr = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.session = Session(self.server.next_conn_id(), client_addr, connected_ns=time.time_ns())
        stats = self.stats
        stats.connections_total += 1
        limit = self.server.config["proxy.max-connections"]
        if limit and len(self.server.connections) >= limit:
            stats.connections_rejected += 1
            log.warning("conn %d from %s refused: max-connections %d reached", self.session.conn_id, client_addr, limit)
            self._refuse(ER.CON_COUNT_ERROR, "Too many connections", "08004")
            return
        if self.server.shutting_down:
            self._refuse(ER.SERVER_SHUTDOWN, "fastproxy is shutting down", "08S01")
            return
        self.server.connections.add(self)
        stats.connections += 1
        if self.server.config["proxy.proxy-protocol"]:  # first the header that says who the client is
            self.proxy_header = InboundHeader(self)
            self.proxy_header.start()
            return
        transport.pause_reading()  # nothing to read before the backend's greeting reached the client
        self.server.loop.create_task(self._connect_backend())

    def on_proxy_header(self, rest: bytes) -> None:
        """The PROXY header is in (inbound_proxy_protocol.py): now the connection starts as usual."""
        self.transport.pause_reading()
        self.framer.feed(rest)
        self.server.loop.create_task(self._connect_backend())

    def _refuse(self, code: int, message: str, state: str) -> None:
        self.phase = CLOSED
        self.transport.write(err_packet(code, message, 0, state))
        self.transport.close()

    async def _connect_backend(self) -> None:
        backend = self.server.pool.any_backend()
        # counted from now on, not once connected: a burst of new clients spreads over the backends
        self.backend = backend
        backend.connections += 1
        loop = self.server.loop
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: BackendSide(self, backend), backend.host, backend.port),
                self.server.config["proxy.connect-timeout"])
        except (OSError, asyncio.TimeoutError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
            log.warning("conn %d: backend %s unreachable: %s", self.session.conn_id, backend.addr, reason)
            if self.backend is backend:
                backend.connections -= 1
                self.backend = None
            self.server.pool.report(backend, f"connect failed: {reason}")  # health evidence (backend.py)
            self.stats.connections_rejected += 1
            if self.phase != CLOSED:
                self.transport.write(err_packet(ER_UNKNOWN_ERROR,
                                                f"fastproxy: backend {backend.addr} unreachable: {reason}", 0, "08S01"))
                self._close()

    def attach_backend(self, side: "BackendSide", backend: "Backend") -> None:
        """Called from BackendSide.connection_made: before any of the backend's bytes arrive."""
        if self.phase == CLOSED:  # the client went away while we connected
            side.transport.close()
            return
        self.session.backend = backend.addr
        self.backend_side = side
        if self.server.config["proxy.backend-proxy-protocol"]:  # before anything else, TLS included
            side.transport.write(outbound_header(self))
        self._to_backend = side.transport.write
        self._to_client = self.transport.write
        self.phase = GREETING

    def data_received(self, data: bytes) -> None:
        if self.phase == COMMANDS:
            if self._held is not None or self.session.own_query_due:
                if self._hold_for_own_query(data):
                    return
            # hot path: forward first, then watch
            self._to_backend(data)
            self.stats.bytes_from_clients += len(data)
            framer = self.framer
            framer.feed(data)
            now = time.time_ns()
            try:
                while (pkt := framer.next_packet()) is not None:
                    if self._infile:  # LOCAL INFILE data: any sequence id (they wrap), until the empty packet
                        if not len(pkt[1]):
                            self._infile = False
                            if self._infile_parts is not None:
                                self._infile_done()
                        elif self._infile_parts is not None:
                            self._infile_chunk(pkt[1])
                        continue
                    if pkt[0] == 0:  # sequence 0 starts a command; others continue one (auth exchange)
                        self._on_command(pkt[1], now)
                    elif self.tracker.idle:
                        raise ProtocolError(f"packet with sequence id {pkt[0]} where a command must start")
            except ProtocolError as e:
                self._protocol_error("client", e)
            return
        if self.phase <= AUTH:
            if self.proxy_header is not None and self.proxy_header.waiting:
                self.proxy_header.feed(data)
                return
            self.framer.feed(data)
            # kept until the greeting reached the client, and while a TLS upgrade runs
            if self.phase != AUTH or self.tls.busy:
                return
            try:
                while not self.tls.busy and (pkt := self.framer.next_packet()) is not None:
                    self._on_auth_packet(*pkt)
            except ProtocolError as e:
                self._protocol_error("client", e)

    def _on_auth_packet(self, seq: int, payload) -> None:
        if self.phase == CLOSED:  # refused (TLS request): what follows, e.g. a TLS ClientHello, is dropped
            return
        tls = self.tls
        if not self.session.capabilities:  # the first packet: the handshake response
            if seq != 1 + tls.client:
                raise ProtocolError(f"expected the handshake response (sequence id {1 + tls.client}), "
                                    f"got sequence id {seq}")
            try:
                resp = HandshakeResponse.parse(payload)
            except (IndexError, ValueError, struct.error) as e:
                raise ProtocolError(f"malformed handshake response: {e}") from None
            if resp.ssl_request:
                if self.server.tls.server_ctx is None or tls.client:
                    self._refuse_tls(seq)
                else:
                    tls_upgrade.start_client_upgrade(self)
                return
            if self.server.tls.require_client and not tls.client:
                log.info("conn %d (%s): refused: no TLS (security.require-client-tls)", self.session.conn_id,
                         self.session.client_addr)
                self.session.closed_by, self.session.close_reason = "proxy", "client without TLS"
                self.transport.write(err_packet(ER.ACCESS_DENIED_ERROR, tls_upgrade.REQUIRE_CLIENT_TLS, seq + 1, "28000"))
                self._close()
                return
            s = self.session
            # TLS is the transport's business: the session's capabilities are the same as in plain text
            s.user, s.db, s.capabilities = resp.user, resp.database, resp.capabilities & self.advertised & ~CLIENT.SSL
            s.charset = resp.charset
            self.tracker.deprecate_eof = bool(s.capabilities & CLIENT.DEPRECATE_EOF)
            payload = mask_client_capabilities(payload, self.advertised & ~CLIENT.SSL)
            if tls.backend_wanted:
                tls_upgrade.start_backend_upgrade(self, payload, seq)
                return
        elif tls.bridge is not None and sha2_bridge.on_client_packet(self, seq, payload):
            return
        self.backend_side.transport.write(build_packet(seq - tls.seq_shift, payload))

    def _refuse_tls(self, seq: int) -> None:
        """An SSL request: the greeting never offered TLS, but some clients ask anyway. Answer as
        MariaDB does without TLS (1043 Bad handshake, 08S01), saying why, then close."""
        log.info("conn %d (%s): client asked for TLS, which is not enabled on this proxy", self.session.conn_id,
                 self.session.client_addr)
        self.transport.write(err_packet(ER.HANDSHAKE_ERROR, TLS_NOT_ENABLED, seq + 1, "08S01"))
        self._close()

    def _on_command(self, payload, now: int) -> None:
        session = self.session
        if not len(payload):
            raise ProtocolError("empty command packet")
        cmd = payload[0]
        self.stats.commands[cmd] += 1
        if now <= session.last_arrival_ns:  # several commands in one read: keep their order in time
            now = session.last_arrival_ns + 1
        session.last_arrival_ns = now
        keep = session.needs_payload(cmd, payload) or session.capture_state is not None
        tag = (now, bytes(payload) if keep else None)
        if self.tracker.begin(payload, tag):
            self._on_completed(now)

    def _on_completed(self, now: int) -> None:
        session = self.session
        stats = self.stats
        capture = self.server.capture
        for result in self.tracker.take_completed():
            start, payload = result.tag
            cmd = result.cmd
            stats.latency_buckets[bisect_left(LATENCY_BOUNDS_NS, now - start)] += 1
            stats.latency_sum_ns += now - start
            if result.outcome == 1:
                stats.command_errors[cmd] += 1
            session.commands += 1
            flags = result.status_flags
            if payload is None and result.outcome == 0 and not flags & STATE_FLAGS:
                # all a plain query changes (Session.note_status, inlined: once per command)
                session.status_flags = flags
                if flags & _IN_TRANS:
                    if result.affected_rows:
                        session.txn_wrote = True
                elif session.txn_wrote:
                    session.txn_wrote = False
            else:
                session.apply(cmd, payload, result)
            session.last_result, session.last_start_ns, session.last_end_ns = result, start, now
            if capture is not None:
                capture.on_command(session, cmd, start, now, result, payload)
            if cmd == COMMAND.COM_QUIT:
                session.closed_by = session.closed_by or "client"
                self._close()
                return
        if self.draining and self.tracker.idle and not session.in_transaction:
            log.info("conn %d: closed at a transaction boundary for shutdown", session.conn_id)
            if not session.closed_by:
                session.closed_by, session.close_reason = "proxy", "proxy shutdown"
            self._close()

    def pause_writing(self) -> None:  # client reads slowly: stop reading from the backend
        if self.backend_side and self.backend_side.transport:
            self.backend_side.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.backend_side and self.backend_side.transport:
            self.backend_side.transport.resume_reading()

    def connection_lost(self, exc) -> None:
        if not self.session.closed_by:
            self.session.closed_by = "client"
        if self.phase == COMMANDS and not self.tracker.idle:
            # the client left with commands unanswered: they still happened (capture records them
            # with an unknown outcome, so replay sends them too)
            self.tracker.abort()
            self._on_completed(time.time_ns())
        self._close()

    # ---- backend side ------------------------------------------------------------------------
    def on_backend_data(self, data: bytes) -> None:
        if self.phase == COMMANDS:
            if self._own_reader is not None:  # the answer to the proxy's own query: not the client's
                self._on_own_answer(data)
                return
            self._to_client(data)
            self.stats.bytes_to_clients += len(data)
            try:
                tracker = self.tracker
                if tracker.feed(data):
                    self._on_completed(time.time_ns())
                if tracker.local_infile_requests != self._infile_seen:  # the server asked for a file
                    self._infile_seen = tracker.local_infile_requests
                    self._infile = True
                    capture = self.server.capture
                    if capture is not None and capture.local_infile and self.session.capture_state == "on":
                        self._infile_parts, self._infile_size = [], 0
                        self._infile_limit = capture.local_infile_limit
            except ProtocolError as e:
                self._protocol_error("backend", e)
            return
        side = self.backend_side
        side.framer.feed(data)
        try:
            while (pkt := side.framer.next_packet()) is not None:
                if self.phase == GREETING:
                    self._on_greeting(*pkt)
                else:
                    self._on_backend_auth_packet(*pkt)
                if self.phase in (COMMANDS, CLOSED):
                    break
            if self.phase == COMMANDS:
                rest = side.framer.take_all()
                if rest:
                    self.on_backend_data(rest)
        except ProtocolError as e:
            self._protocol_error("backend", e)

    def _on_greeting(self, seq: int, payload) -> None:
        if payload[0] == 0xFF:  # the backend refused us (too many connections, host blocked)
            code, _, message = parse_err(payload) if len(payload) >= 3 else (0, "", "(empty error packet)")
            self.server.pool.report(self.backend, f"refused a connection: {code} {message}")  # health evidence
            self.transport.write(build_packet(seq, payload))
            self._close()
            return
        self.greeting = g = Greeting.parse(payload)
        refused = tls_upgrade.on_greeting(self, g)
        if refused:
            log.warning("conn %d (%s): backend %s %s", self.session.conn_id, self.session.client_addr,
                        self.session.backend, refused)
            self.server.pool.report(self.backend, refused)  # health evidence
            self.transport.write(err_packet(ER_UNKNOWN_ERROR, f"fastproxy: backend {self.session.backend} {refused}",
                                            0, "08S01"))
            self._close()
            return
        self.server.pool.report(self.backend)  # health evidence: it greeted
        self.advertised = g.capabilities & ~CLIENT.PROXY_STRIPPED
        if self.server.tls.server_ctx is not None:  # the proxy terminates the client's TLS itself
            self.advertised |= CLIENT.SSL
        self.session.server_version = g.server_version
        self.session.backend_conn_id = g.connection_id
        self.transport.write(build_packet(seq, g.with_capabilities(self.advertised)))
        self.phase = AUTH
        self.transport.resume_reading()
        if self.framer.buffered:  # the client spoke before the greeting
            self.data_received(b"")

    def _on_backend_auth_packet(self, seq: int, payload) -> None:
        if self.tls.client != self.tls.backend and sha2_bridge.on_backend_packet(self, seq, payload):
            return
        self.transport.write(build_packet(seq + self.tls.seq_shift, payload))
        first = payload[0] if len(payload) else -1
        if first == 0x00:  # authenticated: from now on bytes flow straight through
            self.phase = COMMANDS
            session = self.session
            session.set_capabilities(session.capabilities)
            self.tracker.session_track = bool(session.capabilities & CLIENT.SESSION_TRACK)
            self.framer.max_packet_size = self.server.config["proxy.max-packet-size"]
            self.server.on_authenticated(self)
            rest = self.framer.take_all()
            if rest:
                self.data_received(rest)
        elif first == 0xFF:
            code, _, message = parse_err(payload)
            log.info("conn %d (%s): backend %s refused the login of %r: %d %s", self.session.conn_id,
                     self.session.client_addr, self.session.backend, self.session.user, code, message)
            self._close()
        # 0xFE auth switch / 0x01 more data: the client answers through _on_auth_packet

    def on_backend_lost(self, exc) -> None:
        if self.phase == CLOSED:
            return
        session = self.session
        if not session.closed_by:
            session.closed_by = "server"
            unsolicited = self.tracker.last_unsolicited_error
            if unsolicited is not None:  # e.g. 1927 connection killed, 1053 server shutdown, 4031 timeout
                session.close_err_code, session.close_reason = unsolicited.err_code, unsolicited.err_msg
        if self.phase == COMMANDS and self._held is not None:
            # the client's command never reached the server: it gets the error instead of an answer
            log.warning("conn %d: backend %s closed the connection during the proxy's own query",
                        session.conn_id, session.backend)
            self._held = self._own_reader = None
            self.transport.write(err_packet(ER_UNKNOWN_ERROR, f"fastproxy: lost connection to backend "
                                            f"{session.backend}", 1, "08S01"))
        elif self.phase == COMMANDS and not self.tracker.idle:
            at_boundary = self.tracker.at_packet_boundary
            seq = self.tracker.next_seq
            # production may not have run these: recorded as BACKEND_LOST, not replayed by default
            self.tracker.abort(OUTCOME_BACKEND_LOST)
            session.close_reason = session.close_reason or "lost during a command"
            # mid-command: tell the client in protocol terms before closing
            log.warning("conn %d: backend %s closed the connection during a command", session.conn_id,
                        session.backend)
            self.server.pool.suspect(self.backend)  # crashed? (a refused probe costs the server nothing)
            self._on_completed(time.time_ns())
            if at_boundary:
                self.transport.write(err_packet(ER_UNKNOWN_ERROR, f"fastproxy: lost connection to backend "
                                                f"{session.backend} during query", seq, "08S01"))
        elif self.phase in (GREETING, AUTH):
            log.warning("conn %d (%s): backend %s closed the connection during the handshake", self.session.conn_id,
                        self.session.client_addr, self.session.backend)
            self.transport.write(err_packet(ER_UNKNOWN_ERROR, f"fastproxy: backend {self.session.backend} closed the "
                                            f"connection during the handshake", 0, "08S01"))
        self._close()

    # ---- the proxy's own queries (module docstring) ---------------------------------------------
    def _hold_for_own_query(self, data: bytes) -> bool:
        """True if `data` is held (not forwarded) because the proxy's own query runs or starts now."""
        if self._held is not None:
            self._held.append(data)
            return True
        if not (self.tracker.idle and not self.framer.buffered and not self._infile) or len(data) < 5:
            return False  # not at a command boundary: ask at the next one
        if data[3] != 0 or data[4] == COMMAND.COM_QUIT:
            return False  # not a command start (the normal path reports it), or nothing follows
        session = self.session
        if data[4] == COMMAND.COM_STMT_EXECUTE and len(data) >= 9:
            head = session.prepared.get(int.from_bytes(data[5:9], "little"), "").encode()[:DIAGNOSTICS_PEEK]
        else:
            head = memoryview(data)[5:5 + DIAGNOSTICS_PEEK]
        if reads_diagnostics(head):
            return False  # it reads what the proxy's SELECT would reset: let it go first
        self._own_query = SessionReader() if session.capture_state == "pending" else DatabaseReader()
        self._held = [data]
        self._send_own_query(self._own_query.first_query())
        return True

    def _send_own_query(self, sql: str) -> None:
        self._own_reader = TextResultReader(self.tracker.deprecate_eof)
        self._to_backend(build_packet(0, b"\x03" + sql.encode()))

    def _on_own_answer(self, data: bytes) -> None:
        try:
            if not self._own_reader.feed(data):
                return
        except ProtocolError as e:
            self._protocol_error("backend", e)
            return
        rest = self._own_reader.leftover()
        nxt = self._own_query.on_result(self._own_reader.result)
        if nxt is not None:
            self._send_own_query(nxt)
            return
        self._own_reader = None
        self._own_query_done(self._own_query)
        self._own_query = None
        held, self._held = self._held, None
        if rest:  # nothing is expected after the answer; whatever came is the client's business
            self.on_backend_data(rest)
        for chunk in held:
            if self.phase != COMMANDS:
                return
            self.data_received(chunk)

    def _own_query_done(self, reader) -> None:
        session = self.session
        if isinstance(reader, DatabaseReader):
            if not reader.error:
                session.db = reader.db
            else:
                log.warning("conn %d: could not read the current database: %s", session.conn_id, reader.error)
            session.db_stale = False
        else:
            state = reader.state
            session.db = state["db"]
            session.db_stale = False
            capture = self.server.capture
            if session.capture_state == "pending":
                if capture is not None:
                    capture.on_session_state(session, state)
                else:
                    session.capture_state = None
        session.want_own_query()

    # ---- LOCAL INFILE content, for a capture that records it ------------------------------------
    def _infile_chunk(self, payload) -> None:
        self._infile_size += len(payload)
        if self._infile_size <= self._infile_limit:
            self._infile_parts.append(bytes(payload))
        elif self._infile_parts:
            self._infile_parts = []  # beyond the limit: only its size is recorded

    def _infile_done(self) -> None:
        size = self._infile_size
        content = b"".join(self._infile_parts) if size <= self._infile_limit else None
        self.session.infiles.append((size, content))
        self._infile_parts = None
        self._infile_size = 0

    # ---- common --------------------------------------------------------------------------------
    def _protocol_error(self, side: str, exc: Exception) -> None:
        self.session.closed_by = self.session.closed_by or "proxy"
        self.session.close_reason = self.session.close_reason or f"malformed {side} packet"
        self.stats.protocol_errors += 1
        log.warning("conn %d (%s): malformed %s packet, closing: %s", self.session.conn_id,
                    self.session.client_addr, side, exc)
        self._close()

    def close_for_shutdown(self, force: bool) -> None:
        if force or (self.phase != COMMANDS) or (self.tracker.idle and not self.session.in_transaction):
            if not self.session.closed_by:
                self.session.closed_by, self.session.close_reason = "proxy", "proxy shutdown"
            self._close()
        else:
            self.draining = True

    def _close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self.phase = CLOSED
        if self.transport:
            self.transport.close()
        if self.backend_side and self.backend_side.transport:
            self.backend_side.transport.close()
        if self in self.server.connections:
            self.server.connections.discard(self)
            self.stats.connections -= 1
            if self.backend:
                self.backend.connections -= 1
                self.backend = None
            self.server.on_closed(self)


class BackendSide(asyncio.Protocol):
    def __init__(self, client: ClientConnection, backend: "Backend") -> None:
        self.client = client
        self.backend = backend
        self.transport: asyncio.Transport | None = None
        self.framer = PacketFramer(1 << 30)
        # uvloop binds protocol.data_received once: pointing it at the client's handler saves a
        # Python call per response
        self.data_received = client.on_backend_data

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.client.attach_backend(self, self.backend)

    def data_received(self, data: bytes) -> None:  # replaced per instance in __init__
        self.client.on_backend_data(data)

    def pause_writing(self) -> None:  # backend reads slowly: stop reading from the client
        self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        self.client.transport.resume_reading()

    def connection_lost(self, exc) -> None:
        self.client.on_backend_lost(exc)
