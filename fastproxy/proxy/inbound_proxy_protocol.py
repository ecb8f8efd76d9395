"""The PROXY protocol on the proxy's two sides: the header a load balancer (HAProxy `send-proxy-v2`)
puts before a client's bytes, read before anything else happens on a connection; and the v2 header
the proxy itself sends a backend (`proxy.backend-proxy-protocol`), so that MariaDB
(`proxy_protocol_networks`) sees the real client and host-based grants keep working.

With `proxy.proxy-protocol = "v2"` every connection must start with a header (v1 or v2), and only
peers in `proxy.proxy-protocol-networks` may send one: anything else is refused with an ERR packet
(a MySQL client waits for a greeting, so it reads the reason). The header's source address becomes
the connection's client address everywhere: sessions, logs, /api/debug/connections, capture.
Header parsing: fastproxy/proxy_protocol.py.
"""
from __future__ import annotations

import logging

from fastproxy.constants import ER
from fastproxy.proxy_protocol import ProxyHeader, ProxyProtocolError, allowed, build_v2, header_length, parse

log = logging.getLogger("fastproxy.conn")


class InboundHeader:
    """Reads the PROXY header at the start of one client connection."""

    __slots__ = ("conn", "buf", "waiting", "header", "_timer")

    def __init__(self, conn) -> None:
        self.conn = conn
        self.buf = b""
        self.waiting = True
        self.header: ProxyHeader | None = None
        self._timer = None

    def start(self) -> None:
        """Called from connection_made: refuse a peer that may not send a header, else wait for it."""
        conn = self.conn
        peer = conn.transport.get_extra_info("peername")
        networks = conn.server.config["proxy.proxy-protocol-networks"]
        if not isinstance(peer, tuple) or not allowed(peer[0], networks):
            self._refuse(ER.HOST_NOT_PRIVILEGED, f"Host '{peer[0] if isinstance(peer, tuple) else peer}' may not "
                         "send a PROXY protocol header, and this proxy requires one (fastproxy "
                         "proxy.proxy-protocol-networks)", "HY000")
            return
        self._timer = conn.server.loop.call_later(conn.server.config["proxy.proxy-protocol-timeout"], self._timeout)

    def feed(self, data: bytes) -> None:
        self.buf += data
        try:
            n = header_length(self.buf)
            if not n:
                return
            header = parse(self.buf[:n])
        except ProxyProtocolError as e:
            self._refuse(ER.HANDSHAKE_ERROR, f"Bad handshake: {e} (fastproxy proxy.proxy-protocol)", "08S01")
            return
        rest, self.buf = self.buf[n:], b""
        self.waiting = False
        self.header = header
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        conn = self.conn
        if header.client_addr:  # LOCAL / UNKNOWN (the balancer's own check): the socket's address stays
            log.debug("conn %d: PROXY v%d header from %s: client %s", conn.session.conn_id, header.version,
                      conn.session.client_addr, header.client_addr)
            conn.session.client_addr = header.client_addr
        conn.on_proxy_header(rest)

    def _timeout(self) -> None:
        self._timer = None
        if self.waiting and not self.conn._closing:
            self._refuse(ER.HANDSHAKE_ERROR, "Bad handshake: no PROXY protocol header within "
                         f"{self.conn.server.config['proxy.proxy-protocol-timeout']:g}s, and this proxy requires one "
                         "(fastproxy proxy.proxy-protocol)", "08S01")

    def _refuse(self, code: int, message: str, state: str) -> None:
        conn = self.conn
        self.waiting = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        conn.stats.connections_rejected += 1
        log.warning("conn %d from %s refused: %s", conn.session.conn_id, conn.session.client_addr, message)
        s = conn.session
        s.closed_by, s.close_reason = "proxy", "PROXY protocol header refused"
        conn.transport.write(conn_err(code, message, state))
        conn._close()


def conn_err(code: int, message: str, state: str) -> bytes:
    from fastproxy.protocol import err_packet

    return err_packet(code, message, 0, state)


def outbound_header(conn) -> bytes:
    """The v2 header for the backend: the real client (from the inbound header, else the socket)
    and the address it connected to."""
    inbound = conn.proxy_header.header if conn.proxy_header is not None else None
    if inbound is not None and inbound.client_addr:
        return build_v2((inbound.src_addr, inbound.src_port), (inbound.dst_addr, inbound.dst_port))
    peer = conn.transport.get_extra_info("peername")
    local = conn.transport.get_extra_info("sockname")
    return build_v2(peer[:2], local[:2])


def check_proxy_protocol(config) -> None:
    """At startup: a PROXY header is trusted only from listed peers, so the list must be given."""
    from fastproxy.errors import ConfigError

    if config["proxy.proxy-protocol"] and not config["proxy.proxy-protocol-networks"]:
        raise ConfigError("proxy.proxy-protocol-networks: needed with proxy.proxy-protocol: the addresses of the "
                          "load balancers that send the header (0.0.0.0/0, ::/0 trusts every peer)")
