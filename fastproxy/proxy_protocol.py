"""The PROXY protocol (HAProxy's, versions 1 and 2): the header a load balancer puts before a client's
bytes to say who the client really is, and the one fastproxy sends to a backend for the same reason.

Spec: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
"""
from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

from fastproxy.errors import ProtocolError

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest v1 line, CRLF included
V2_HEADER = struct.Struct("!12sBBH")  # signature, version|command, family|protocol, address length
V2_VERSION = 0x20
V2_CMD_LOCAL = 0x00
V2_CMD_PROXY = 0x01
V2_AF_INET = 0x10
V2_AF_INET6 = 0x20
V2_AF_UNIX = 0x30
V2_STREAM = 0x01
V2_MAX_ADDR_LEN = 4096  # addresses + TLVs; HAProxy itself never sends more than a few hundred bytes


class ProxyProtocolError(ProtocolError):
    """A PROXY protocol header that is malformed, missing where required, or not allowed."""


@dataclass(frozen=True)
class ProxyHeader:
    version: int
    local: bool  # v2 LOCAL / v1 UNKNOWN: a health check of the balancer itself; use the socket's address
    src_addr: str = ""
    src_port: int = 0
    dst_addr: str = ""
    dst_port: int = 0

    @property
    def client_addr(self) -> str | None:
        if self.local or not self.src_addr:
            return None
        host = f"[{self.src_addr}]" if ":" in self.src_addr else self.src_addr
        return f"{host}:{self.src_port}"


def header_length(buf: bytes) -> int:
    """Bytes of the header at the start of `buf`: > 0 when it is all there, 0 when more bytes are
    needed to tell, ProxyProtocolError when `buf` does not start with a PROXY header."""
    n = len(buf)
    if n >= 1 and buf[:min(n, 12)] == V2_SIGNATURE[:min(n, 12)]:
        if n < V2_HEADER.size:
            return 0
        _, ver_cmd, _, length = V2_HEADER.unpack_from(buf)
        if ver_cmd & 0xF0 != V2_VERSION:
            raise ProxyProtocolError(f"PROXY protocol v2 header with version {ver_cmd >> 4}")
        if length > V2_MAX_ADDR_LEN:
            raise ProxyProtocolError(f"PROXY protocol v2 header of {length} address bytes")
        return V2_HEADER.size + length if n >= V2_HEADER.size + length else 0
    if buf[:min(n, 6)] == V1_PREFIX[:min(n, 6)]:
        end = buf.find(b"\r\n", 0, V1_MAX)
        if end >= 0:
            return end + 2
        if n >= V1_MAX:
            raise ProxyProtocolError("PROXY protocol v1 line longer than 107 bytes")
        return 0
    raise ProxyProtocolError("no PROXY protocol header where one is required")


def parse(buf: bytes) -> ProxyHeader:
    """The header that fills `buf` exactly (header_length(buf) == len(buf))."""
    if buf.startswith(V2_SIGNATURE):
        return _parse_v2(buf)
    return _parse_v1(buf)


def _parse_v1(buf: bytes) -> ProxyHeader:
    try:
        line = buf[:-2].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyProtocolError("PROXY protocol v1 line is not ASCII") from None
    parts = line.split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return ProxyHeader(1, True)
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyProtocolError(f"malformed PROXY protocol v1 line: {line[:60]!r}")
    _, family, src, dst, sport, dport = parts
    try:
        s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
        if (family == "TCP4") != (s.version == 4) or s.version != d.version:
            raise ValueError("address family")
        sp, dp = int(sport), int(dport)
        if not (0 <= sp <= 65535 and 0 <= dp <= 65535) or sport != str(sp) or dport != str(dp):
            raise ValueError("port")
    except ValueError as e:
        raise ProxyProtocolError(f"malformed PROXY protocol v1 line ({e}): {line[:60]!r}") from None
    return ProxyHeader(1, False, str(s), sp, str(d), dp)


def _parse_v2(buf: bytes) -> ProxyHeader:
    _, ver_cmd, fam, length = V2_HEADER.unpack_from(buf)
    cmd = ver_cmd & 0x0F
    body = buf[V2_HEADER.size:V2_HEADER.size + length]
    if cmd == V2_CMD_LOCAL:
        return ProxyHeader(2, True)
    if cmd != V2_CMD_PROXY:
        raise ProxyProtocolError(f"PROXY protocol v2 header with unknown command {cmd}")
    family = fam & 0xF0
    if family == V2_AF_INET and len(body) >= 12:
        src, dst, sport, dport = struct.unpack_from("!4s4sHH", body)
        return ProxyHeader(2, False, socket.inet_ntop(socket.AF_INET, src), sport,
                           socket.inet_ntop(socket.AF_INET, dst), dport)
    if family == V2_AF_INET6 and len(body) >= 36:
        src, dst, sport, dport = struct.unpack_from("!16s16sHH", body)
        return ProxyHeader(2, False, socket.inet_ntop(socket.AF_INET6, src), sport,
                           socket.inet_ntop(socket.AF_INET6, dst), dport)
    if family in (0x00, V2_AF_UNIX):  # AF_UNSPEC / unix sockets: no usable client address
        return ProxyHeader(2, True)
    raise ProxyProtocolError(f"PROXY protocol v2 header with family {fam:#04x} and {len(body)} address bytes")


def build_v2(src: tuple[str, int], dst: tuple[str, int]) -> bytes:
    """A v2 PROXY header for a TCP connection from src to dst (what a backend is told)."""
    s, d = ipaddress.ip_address(src[0]), ipaddress.ip_address(dst[0])
    if s.version != d.version:  # an IPv4 client seen on an IPv6 listener (or the reverse)
        if s.version == 4:
            s = ipaddress.IPv6Address(f"::ffff:{s}")
        else:
            d = ipaddress.IPv6Address(f"::ffff:{d}")
    if s.version == 4:
        body = s.packed + d.packed + struct.pack("!HH", src[1], dst[1])
        fam = V2_AF_INET | V2_STREAM
    else:
        body = s.packed + d.packed + struct.pack("!HH", src[1], dst[1])
        fam = V2_AF_INET6 | V2_STREAM
    return V2_HEADER.pack(V2_SIGNATURE, V2_VERSION | V2_CMD_PROXY, fam, len(body)) + body


def allowed(peer_ip: str, networks: list) -> bool:
    """Whether a peer may send a PROXY header (its address is in one of `networks`)."""
    try:
        ip = ipaddress.ip_address(peer_ip.split("%")[0])
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in networks)


def parse_networks(values, key: str = "proxy.proxy-protocol-networks") -> list:
    from fastproxy.errors import ConfigError

    items = values.split(",") if isinstance(values, str) else list(values or [])
    out = []
    for v in items:
        text = str(v).strip()
        if not text:
            continue
        try:
            out.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ConfigError(f"{key}: not a network (CIDR) or address: {text!r}") from None
    return out
