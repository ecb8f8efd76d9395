"""One client connection, from accept to the end of its handshake; then the data plane relays it.

Python does what happens once per connection: connect a backend, rewrite the greeting (capabilities
the proxy cannot handle are removed), pass the authentication through. When the backend says OK,
both sockets are handed to a data-plane worker (fastproxy/_dataplane.pyx), which relays every
command in C without the GIL; this object stays as the connection's entry in the proxy's table,
and hears of it again only for what is rare (see docs/dataplane.md):

- it closed (on_relay_closed): who closed it and why, for the log and the capture's CONN_CLOSE;
- a statement whose effect only Python follows (on_session_statement: SQL PREPAREs, temporary
  tables, a USE the server did not report), or that the secret classifier's scan flagged while the
  connection is captured (on_capture_statement);
- the proxy's own queries (fastproxy/proxy/introspect.py: the session of a connection open before a
  capture, the current database when the server did not say it) run on the backend connection at a
  command boundary and never mix with the client's bytes: the worker parks the connection when its
  client starts a command while one is due, holding that command's bytes (not forwarded); here the
  queries go out through the worker and their answers come back to Python, not to the client; then
  the held bytes go on. A command that reads what a SELECT would reset (FOUND_ROWS(), ROW_COUNT(),
  SHOW WARNINGS) goes first: the proxy asks before the command after it.
"""
from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
from typing import TYPE_CHECKING

from fastproxy._dataplane import CLEAN, HOOK_QUERY, PARK_OWN_ANSWER, PARK_OWN_QUERY
from fastproxy._packet import PacketFramer, build_packet
from fastproxy.constants import CLIENT, COMMAND, ER, SERVER_STATUS, command_name
from fastproxy.errors import ProtocolError
from fastproxy.protocol import Greeting, HandshakeResponse, err_packet, mask_client_capabilities, parse_err
from fastproxy.proxy.introspect import DIAGNOSTICS_PEEK, DatabaseReader, SessionReader, reads_diagnostics
from fastproxy.proxy.session import Session
from fastproxy.secret_sql import reading_for_collation, redact_text
from fastproxy.textresult import TextResultReader

if TYPE_CHECKING:
    from fastproxy.proxy.backend import Backend
    from fastproxy.proxy.server import ProxyServer

log = logging.getLogger("fastproxy.conn")

# phases
CONNECTING, GREETING, AUTH, RELAYED, CLOSED = range(5)

# Largest client packet before authentication completed (handshake response with attributes, auth
# switch answers are far smaller): garbage such as an HTTP request is refused at once.
AUTH_MAX_PACKET = 1 << 20
OUTCOMES = ("ok", "err", "no_response", "unknown", "backend_lost")
# how a relayed connection ended -> (closed_by, close_reason) as the capture records them
_CLOSED_BY = {"client_quit": ("client", ""), "client_gone": ("client", ""), "backend_gone": ("server", ""),
              "backend_lost": ("server", "lost during a command"), "client_protocol": ("proxy", "malformed client packet"),
              "backend_protocol": ("proxy", "malformed backend packet"), "drain": ("proxy", "proxy shutdown"),
              "forced": ("proxy", "proxy shutdown"), "no_memory": ("proxy", "out of memory")}
TLS_NOT_ENABLED = ("Bad handshake: TLS is not enabled on this proxy (fastproxy); "
                   "connect without TLS (mariadb --ssl=0, ssl-mode=DISABLED)")


class ClientConnection(asyncio.Protocol):
    # one per client for as long as it is connected (10,000 idle ones are ordinary): no __dict__
    __slots__ = ("server", "stats", "phase", "transport", "backend_side", "backend", "framer", "session",
                 "advertised", "_closing", "_relayed", "_own_query")

    def __init__(self, server: "ProxyServer") -> None:
        self.server = server
        self.stats = server.stats
        self.phase = CONNECTING
        self.transport: asyncio.Transport | None = None
        self.backend_side: BackendSide | None = None
        self.backend: Backend | None = None
        self.framer: PacketFramer | None = PacketFramer(min(AUTH_MAX_PACKET, server.config["proxy.max-packet-size"]))
        self.session: Session | None = None
        self.advertised = 0
        self._closing = False
        self._relayed = False  # both sockets belong to the data plane
        self._own_query = None  # the proxy's own query running on the parked connection (introspect.py)

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
        transport.pause_reading()  # nothing to read before the backend's greeting reached the client
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
                self.transport.write(err_packet(ER.UNKNOWN_ERROR,
                                                f"fastproxy: backend {backend.addr} unreachable: {reason}", 0, "08S01"))
                self._close()

    def attach_backend(self, side: "BackendSide", backend: "Backend") -> None:
        """Called from BackendSide.connection_made: before any of the backend's bytes arrive."""
        if self.phase == CLOSED:  # the client went away while we connected
            side.transport.close()
            return
        self.session.backend = backend.addr
        self.backend_side = side
        self.phase = GREETING

    def data_received(self, data: bytes) -> None:
        if self.phase > AUTH:
            return
        self.framer.feed(data)
        if self.phase != AUTH:  # the greeting has not reached the client yet: kept until it has
            return
        try:
            while self.phase == AUTH and (pkt := self.framer.next_packet()) is not None:
                self._on_auth_packet(*pkt)
        except ProtocolError as e:
            self._protocol_error("client", e)

    def _on_auth_packet(self, seq: int, payload) -> None:
        if self.phase == CLOSED:  # refused (TLS request): what follows, e.g. a TLS ClientHello, is dropped
            return
        if not self.session.capabilities:  # the first packet: the handshake response
            if seq != 1:
                raise ProtocolError(f"expected the handshake response (sequence id 1), got sequence id {seq}")
            try:
                resp = HandshakeResponse.parse(payload)
            except (IndexError, ValueError, struct.error) as e:
                raise ProtocolError(f"malformed handshake response: {e}") from None
            if resp.ssl_request:
                self._refuse_tls(seq)
                return
            s = self.session
            s.user, s.db, s.capabilities = resp.user, resp.database, resp.capabilities & self.advertised
            s.charset = resp.charset
            payload = mask_client_capabilities(payload, self.advertised)
        self.backend_side.transport.write(build_packet(seq, payload))

    def _refuse_tls(self, seq: int) -> None:
        """An SSL request: the greeting never offered TLS, but some clients ask anyway. Answer as
        MariaDB does without TLS (1043 Bad handshake, 08S01), saying why, then close."""
        log.info("conn %d (%s): client asked for TLS, which is not enabled on this proxy", self.session.conn_id,
                 self.session.client_addr)
        self.transport.write(err_packet(ER.HANDSHAKE_ERROR, TLS_NOT_ENABLED, seq + 1, "08S01"))
        self._close()

    def connection_lost(self, exc) -> None:
        if not self._relayed:  # a relayed connection's socket lives on in the data plane
            self._close()

    # ---- backend side (handshake) ------------------------------------------------------------
    def on_backend_data(self, data: bytes) -> None:
        if self.phase > AUTH:
            return
        side = self.backend_side
        side.framer.feed(data)
        try:
            while self.phase <= AUTH and (pkt := side.framer.next_packet()) is not None:
                if self.phase == GREETING:
                    self._on_greeting(*pkt)
                else:
                    self._on_backend_auth_packet(*pkt)
        except ProtocolError as e:
            self._protocol_error("backend", e)

    def _on_greeting(self, seq: int, payload) -> None:
        if payload[0] == 0xFF:  # the backend refused us (too many connections, host blocked)
            code, _, message = parse_err(payload) if len(payload) >= 3 else (0, "", "(empty error packet)")
            self.server.pool.report(self.backend, f"refused a connection: {code} {message}")  # health evidence
            self.transport.write(build_packet(seq, payload))
            self._close()
            return
        g = Greeting.parse(payload)
        self.server.pool.report(self.backend)  # health evidence: it greeted
        self.advertised = g.capabilities & ~CLIENT.PROXY_STRIPPED
        self.session.server_version = g.server_version
        self.session.backend_conn_id = g.connection_id
        self.transport.write(build_packet(seq, g.with_capabilities(self.advertised)))
        self.phase = AUTH
        self.transport.resume_reading()
        if self.framer.buffered:  # the client spoke before the greeting
            self.data_received(b"")

    def _on_backend_auth_packet(self, seq: int, payload) -> None:
        first = payload[0] if len(payload) else -1
        if first == 0x00:  # authenticated: from now on the data plane relays
            self._hand_off(build_packet(seq, payload))
            return
        self.transport.write(build_packet(seq, payload))
        if first == 0xFF:
            code, _, message = parse_err(payload)
            log.info("conn %d (%s): backend %s refused the login of %r: %d %s", self.session.conn_id,
                     self.session.client_addr, self.session.backend, self.session.user, code, message)
            self._close()
        # 0xFE auth switch / 0x01 more data: the client answers through _on_auth_packet

    def _hand_off(self, ok_packet: bytes) -> None:
        """Give both sockets to a data-plane worker, with the backend's OK still to deliver and
        whatever either side sent after the handshake."""
        server = self.server
        side = self.backend_side
        if self.transport.get_write_buffer_size() or side.transport.get_write_buffer_size():
            # a handshake packet is still queued in a transport (the peer reads slowly): hand off
            # once it is out, or its bytes would be lost with the transport
            self.transport.pause_reading()
            side.transport.pause_reading()
            server.loop.call_later(0.001, self._hand_off, ok_packet)
            self.phase = RELAYED  # nothing more is read meanwhile
            return
        self.phase = RELAYED
        client_in = self.framer.take_all()
        backend_in = side.framer.take_all()
        client_fd = backend_fd = -1
        try:
            client_fd = os.dup(self.transport.get_extra_info("socket").fileno())
            backend_fd = os.dup(side.transport.get_extra_info("socket").fileno())
        except OSError as e:
            log.warning("conn %d: cannot hand the connection to the data plane: %s", self.session.conn_id, e)
            for fd in (client_fd, backend_fd):
                if fd >= 0:
                    os.close(fd)
            self._close()
            return
        # uvloop closes its own descriptors (no shutdown(): the duplicates keep both connections up)
        self._relayed = True
        self.transport.abort()
        side.transport.abort()
        s = self.session
        captured = server.on_authenticated(self)  # a running capture records the new connection
        caps = s.capabilities
        try:
            s.relay = server.dataplane.add(
                self, client_fd, backend_fd, s.conn_id, user=s.user, db=s.db, capabilities=caps,
                deprecate_eof=bool(caps & CLIENT.DEPRECATE_EOF), session_track=bool(caps & CLIENT.SESSION_TRACK),
                multi_statements=bool(caps & CLIENT.MULTI_STATEMENTS),
                dbcs=reading_for_collation(s.charset) != 0, status_flags=SERVER_STATUS.AUTOCOMMIT,
                backend_addr=s.backend, max_packet_size=server.config["proxy.max-packet-size"], capture=captured,
                client_out=ok_packet, client_in=client_in, backend_in=backend_in)
        except MemoryError:
            os.close(client_fd)
            os.close(backend_fd)
            self._close()
            return
        self.framer = None
        self.transport = None
        self.backend_side = None

    def on_backend_lost(self, exc) -> None:
        if self.phase in (GREETING, AUTH):
            log.warning("conn %d (%s): backend %s closed the connection during the handshake", self.session.conn_id,
                        self.session.client_addr, self.session.backend)
            self.transport.write(err_packet(ER.UNKNOWN_ERROR, f"fastproxy: backend {self.session.backend} closed the "
                                            f"connection during the handshake", 0, "08S01"))
        if not self._relayed:
            self._close()

    # ---- after the hand-off: the data plane's hooks (a worker thread, holding the GIL) ------------
    def on_session_statement(self, kind: int, payload: bytes, outcome: int, schema_known: bool,
                             semicolon_beyond: bool, multi_statements: bool, db: str | None) -> bool:
        """A statement whose effect on the session Python follows; True: the current database may
        have changed without the server saying to what (asked at the next command)."""
        s = self.session
        if kind == HOOK_QUERY:
            return s.apply_query(payload, outcome, schema_known, semicolon_beyond, db, multi_statements)
        s.forget_statements()  # HOOK_FORGET: COM_RESET_CONNECTION, COM_CHANGE_USER
        capture = self.server.capture
        if capture is not None:
            capture.on_session_reset(s)
        return False

    def on_capture_statement(self, payload: bytes, outcome: int, stmt_id: int) -> tuple[int, bytes | None, bool]:
        """A captured COM_QUERY / COM_STMT_PREPARE the secret classifier's scan flagged:
        (verdict, what to record when redacted, whether SQL PREPAREs of this connection were dropped)."""
        capture = self.server.capture
        if capture is None:
            return CLEAN, None, False
        return capture.on_statement(self.session, payload, outcome, stmt_id)

    # ---- after the hand-off: events ------------------------------------------------------------
    def on_relay_parked(self, reason: int) -> None:
        """The worker waits for Python: a command is held while the proxy asks first, or the answer
        to the proxy's own query is in."""
        relay = self.session.relay
        dataplane = self.server.dataplane
        if reason == PARK_OWN_QUERY:
            held = relay.held
            if held[4:5] == bytes((COMMAND.COM_STMT_EXECUTE,)) and len(held) >= 9:
                stmt = relay.snapshot()["prepared"].get(int.from_bytes(held[5:9], "little"), "")
                head = stmt.encode()[:DIAGNOSTICS_PEEK]
            else:
                head = held[5:5 + DIAGNOSTICS_PEEK]
            if reads_diagnostics(head):
                dataplane.resume(relay)  # it reads what the proxy's SELECT would reset: it goes first
                return
            self._own_query = SessionReader() if relay.capture_state == "pending" else DatabaseReader()
            dataplane.own_query(relay, self._own_query.first_query())
            return
        if reason != PARK_OWN_ANSWER:
            dataplane.resume(relay)
            return
        s = self.session
        own, self._own_query = self._own_query, None
        if relay.own_query_failed:
            # the held command never reached the server: the worker answers it with an error
            log.warning("conn %d: backend %s closed the connection during the proxy's own query", s.conn_id, s.backend)
            dataplane.resume(relay)
            return
        reader = TextResultReader(bool(s.capabilities & CLIENT.DEPRECATE_EOF))
        try:
            reader.feed(relay.answer)
            nxt = own.on_result(reader.result) if reader.done else None
        except ProtocolError as e:
            log.warning("conn %d: the answer to the proxy's own query is malformed: %s", s.conn_id, e)
            own, nxt = None, None
        if nxt is not None:
            self._own_query = own
            dataplane.own_query(relay, nxt)
            return
        if isinstance(own, DatabaseReader):
            if own.error:
                log.warning("conn %d: could not read the current database: %s", s.conn_id, own.error)
                relay.set_db(relay.snapshot()["db"])  # keep what it was; asked again after the next change
            else:
                relay.set_db(own.db)
            dataplane.resume(relay)
        elif isinstance(own, SessionReader):
            state = own.state
            relay.set_db(state["db"])
            capture = self.server.capture
            if capture is not None and relay.capture_state == "pending" and capture.on_session_state(s, state):
                dataplane.resume(relay, "on")
            else:
                dataplane.resume(relay, None)
        else:
            dataplane.resume(relay)

    def on_relay_closed(self, reason: str, message: str) -> None:
        """The data plane closed the connection (its sockets are closed already)."""
        s = self.session
        relay = s.relay
        by, why = _CLOSED_BY.get(reason, ("proxy", reason))
        s.closed_by, s.close_reason = s.closed_by or by, s.close_reason or why
        if by == "server" and relay is not None and relay.unsolicited_err_code:
            # e.g. 1927 connection killed, 1053 server shutdown, 4031 timeout
            s.close_err_code, s.close_reason = relay.unsolicited_err_code, relay.unsolicited_err_msg
        capture = self.server.capture
        if capture is not None and relay is not None and relay.closed_captured:
            capture.on_close(s)
        if reason == "client_protocol":
            log.warning("conn %d (%s): malformed client packet, closing: %s", s.conn_id, s.client_addr, message)
        elif reason == "backend_protocol":
            log.warning("conn %d (%s): malformed backend packet, closing: %s", s.conn_id, s.client_addr, message)
        elif reason == "backend_lost":
            log.warning("conn %d: backend %s closed the connection during a command", s.conn_id, s.backend)
            self.server.pool.suspect(self.backend)  # crashed? (a refused probe costs the server nothing)
        elif reason == "drain":
            log.info("conn %d: closed at a transaction boundary for shutdown", s.conn_id)
        elif reason == "no_memory":
            log.error("conn %d: closed: out of memory", s.conn_id)
        s.relay = None
        self.phase = CLOSED
        self._close()

    def describe(self) -> dict:
        """What the proxy knows about this connection (GET /api/debug/connections; no secrets)."""
        s = self.session
        st = s.state()
        last = Session.last_command(st)
        reading = reading_for_collation(s.charset)
        return {
            "conn_id": s.conn_id, "client_addr": s.client_addr, "user": st["user"], "db": st["db"],
            "backend": s.backend, "backend_conn_id": s.backend_conn_id,
            "in_transaction": bool(st["status_flags"] & SERVER_STATUS.IN_TRANS),
            "autocommit": bool(st["status_flags"] & SERVER_STATUS.AUTOCOMMIT),
            # a prepared statement that holds a secret: redacted, or null when that cannot be certain
            "prepared": {str(k): redact_text(v, reading) for k, v in sorted(st["prepared"].items())},
            "commands": st["commands"], "pending_commands": st["pending_commands"], "capture": st["capture"],
            "last_command": None if last is None else {
                "type": command_name(last.cmd), "start_ns": last.start_ns, "end_ns": last.end_ns,
                "outcome": OUTCOMES[last.outcome], "err_code": last.err_code},
        }

    # ---- common --------------------------------------------------------------------------------
    def _protocol_error(self, side: str, exc: Exception) -> None:
        self.stats.protocol_errors += 1
        log.warning("conn %d (%s): malformed %s packet, closing: %s", self.session.conn_id,
                    self.session.client_addr, side, exc)
        self._close()

    def close_for_shutdown(self) -> None:
        """Shutdown: a connection still in its handshake is closed (relayed ones: the data plane)."""
        if not self._relayed:
            self._close()

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


class BackendSide(asyncio.Protocol):
    __slots__ = ("client", "backend", "transport", "framer")

    def __init__(self, client: ClientConnection, backend: "Backend") -> None:
        self.client = client
        self.backend = backend
        self.transport: asyncio.Transport | None = None
        self.framer = PacketFramer(1 << 30)

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.client.attach_backend(self, self.backend)

    def data_received(self, data: bytes) -> None:
        self.client.on_backend_data(data)

    def connection_lost(self, exc) -> None:
        self.client.on_backend_lost(exc)
