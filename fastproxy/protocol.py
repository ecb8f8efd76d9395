"""Connection-phase packets: parse and rewrite the greeting, parse the client's handshake response,
build ERR/OK packets. Runs once per connection, so plain Python.

Spec: https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_connection_phase_packets.html
MariaDB extended capabilities: https://mariadb.com/kb/en/connection/
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from fastproxy._packet import build_packet
from fastproxy.constants import CLIENT
from fastproxy.errors import ProtocolError


def read_lenenc(buf: bytes, pos: int) -> tuple[int, int]:
    first = buf[pos]
    if first < 0xFB:
        return first, pos + 1
    if first == 0xFC:
        return int.from_bytes(buf[pos + 1:pos + 3], "little"), pos + 3
    if first == 0xFD:
        return int.from_bytes(buf[pos + 1:pos + 4], "little"), pos + 4
    if first == 0xFE:
        return int.from_bytes(buf[pos + 1:pos + 9], "little"), pos + 9
    raise ProtocolError(f"bad length-encoded integer prefix {first:#x} at {pos}")


def lenenc_int(value: int) -> bytes:
    if value < 0xFB:
        return bytes((value,))
    if value < 1 << 16:
        return b"\xfc" + value.to_bytes(2, "little")
    if value < 1 << 24:
        return b"\xfd" + value.to_bytes(3, "little")
    return b"\xfe" + value.to_bytes(8, "little")


def lenenc_str(value: bytes) -> bytes:
    return lenenc_int(len(value)) + value


def _cstring(buf: bytes, pos: int) -> tuple[bytes, int]:
    end = buf.find(b"\x00", pos)
    if end < 0:
        end = len(buf)
        return bytes(buf[pos:end]), end
    return bytes(buf[pos:end]), end + 1


@dataclass
class Greeting:
    """The server's initial handshake (protocol version 10)."""

    server_version: str
    connection_id: int
    capabilities: int  # low 32 bits; for MariaDB also the extended ones in the upper 32
    charset: int
    status: int
    auth_plugin: str
    mariadb: bool
    raw: bytes

    @classmethod
    def parse(cls, payload: bytes) -> "Greeting":
        payload = bytes(payload)
        if not payload or payload[0] != 10:
            raise ProtocolError(f"unsupported handshake protocol version {payload[:1]!r}")
        version, pos = _cstring(payload, 1)
        if len(payload) < pos + 4 + 8 + 1 + 2:
            raise ProtocolError("truncated server greeting")
        conn_id = struct.unpack_from("<I", payload, pos)[0]
        pos += 4 + 8 + 1  # connection id, auth-plugin-data part 1, filler
        cap_low = struct.unpack_from("<H", payload, pos)[0]
        pos += 2
        charset = status = cap_high = 0
        ext = 0
        plugin = ""
        if len(payload) > pos:
            charset, status, cap_high = struct.unpack_from("<BHH", payload, pos)
            pos += 5
            pos += 1  # auth data length
            caps = cap_low | (cap_high << 16)
            # MariaDB clears CLIENT_MYSQL (bit 0) and puts extended capabilities in the last 4 of 10 reserved bytes
            mariadb = not (caps & CLIENT.LONG_PASSWORD)
            if mariadb:
                ext = struct.unpack_from("<I", payload, pos + 6)[0]
            pos += 10
            if caps & CLIENT.PLUGIN_AUTH:
                end = payload.rfind(b"\x00")
                start = payload.rfind(b"\x00", 0, end)
                plugin = payload[start + 1:end].decode("ascii", "replace") if end > 0 else ""
        caps = cap_low | (cap_high << 16)
        mariadb = not (caps & CLIENT.LONG_PASSWORD)
        return cls(version.decode("utf-8", "replace"), conn_id, caps | (ext << 32), charset, status, plugin,
                   mariadb, payload)

    def with_capabilities(self, caps: int) -> bytes:
        """The same greeting advertising only `caps`."""
        out = bytearray(self.raw)
        _, pos = _cstring(out, 1)
        pos += 4 + 8 + 1
        # layout from here: capability_flags_1 (2), character_set (1), status_flags (2),
        # capability_flags_2 (2), auth_plugin_data_len (1), reserved (10; MariaDB: last 4 = extended)
        struct.pack_into("<H", out, pos, caps & 0xFFFF)
        if len(out) > pos + 2:
            struct.pack_into("<H", out, pos + 5, (caps >> 16) & 0xFFFF)
            if self.mariadb:
                struct.pack_into("<I", out, pos + 14, (caps >> 32) & 0xFFFFFFFF)
        return bytes(out)


@dataclass
class HandshakeResponse:
    """The client's HandshakeResponse41 (what the proxy needs of it; auth data is never kept)."""

    capabilities: int
    max_packet: int
    charset: int
    user: str
    database: str | None
    auth_plugin: str
    attrs: dict[str, str]
    ssl_request: bool

    @classmethod
    def parse(cls, payload: bytes) -> "HandshakeResponse":
        payload = bytes(payload)
        if len(payload) < 32:
            raise ProtocolError(f"handshake response too short ({len(payload)} bytes)")
        caps, max_packet, charset = struct.unpack_from("<IIB", payload, 0)
        if not caps & CLIENT.PROTOCOL_41:
            raise ProtocolError("pre-4.1 handshake response is not supported")
        ext = struct.unpack_from("<I", payload, 28)[0] if not caps & CLIENT.LONG_PASSWORD else 0
        caps |= ext << 32
        if len(payload) == 32:  # only capabilities: an SSL request before the TLS upgrade
            return cls(caps, max_packet, charset, "", None, "", {}, True)
        user, pos = _cstring(payload, 32)
        if caps & CLIENT.PLUGIN_AUTH_LENENC_CLIENT_DATA:
            n, pos = read_lenenc(payload, pos)
            pos += n
        elif caps & CLIENT.SECURE_CONNECTION:
            pos += 1 + payload[pos]
        else:
            _, pos = _cstring(payload, pos)
        database = None
        if caps & CLIENT.CONNECT_WITH_DB and pos < len(payload):
            db, pos = _cstring(payload, pos)
            database = db.decode("utf-8", "replace") or None
        plugin = ""
        if caps & CLIENT.PLUGIN_AUTH and pos < len(payload):
            p, pos = _cstring(payload, pos)
            plugin = p.decode("ascii", "replace")
        attrs: dict[str, str] = {}
        if caps & CLIENT.CONNECT_ATTRS and pos < len(payload):
            try:
                total, pos = read_lenenc(payload, pos)
                end = min(pos + total, len(payload))
                while pos < end:
                    kl, pos = read_lenenc(payload, pos)
                    k = payload[pos:pos + kl].decode("utf-8", "replace")
                    pos += kl
                    vl, pos = read_lenenc(payload, pos)
                    attrs[k] = payload[pos:pos + vl].decode("utf-8", "replace")
                    pos += vl
            except (IndexError, ProtocolError):
                pass  # attributes are informational; a client bug here must not block its login
        return cls(caps, max_packet, charset, user.decode("utf-8", "replace"), database, plugin, attrs, False)


def mask_client_capabilities(payload: bytes, allowed: int) -> bytes:
    """The handshake response with capabilities outside `allowed` cleared (a client that asks for
    what the proxy did not advertise, e.g. compression, must not get it from the server)."""
    out = bytearray(payload)
    caps = struct.unpack_from("<I", out, 0)[0]
    struct.pack_into("<I", out, 0, caps & allowed & 0xFFFFFFFF)
    if not caps & CLIENT.LONG_PASSWORD and len(out) >= 32:
        ext = struct.unpack_from("<I", out, 28)[0]
        struct.pack_into("<I", out, 28, ext & (allowed >> 32))
    return bytes(out)


def parse_change_user(payload: bytes, capabilities: int) -> tuple[str, str | None]:
    """(user, database) of a COM_CHANGE_USER payload (replay; the data plane parses it in C)."""
    payload = bytes(payload)
    user, pos = _cstring(payload, 1)
    if capabilities & CLIENT.SECURE_CONNECTION:
        pos += 1 + payload[pos] if pos < len(payload) else 0
    else:
        _, pos = _cstring(payload, pos)
    db, pos = _cstring(payload, pos) if pos < len(payload) else (b"", pos)
    return user.decode("utf-8", "replace"), db.decode("utf-8", "replace") or None


def change_user_without_auth(payload: bytes, capabilities: int) -> bytes:
    """A COM_CHANGE_USER payload with its auth response blanked, for capture (no secrets on disk;
    the data plane blanks its own in C)."""
    payload = bytes(payload)
    _, pos = _cstring(payload, 1)
    if capabilities & CLIENT.SECURE_CONNECTION and pos < len(payload):
        n = payload[pos]
        return payload[:pos] + b"\x00" + payload[pos + 1 + n:]
    _, end = _cstring(payload, pos)
    return payload[:pos] + b"\x00" + payload[end:]


def err_packet(code: int, message: str, seq: int = 0, state: str = "HY000") -> bytes:
    payload = b"\xff" + struct.pack("<H", code) + b"#" + state.encode()[:5].ljust(5, b"0") + message.encode()
    return build_packet(seq, payload)


def parse_err(payload: bytes) -> tuple[int, str, str]:
    """(code, sql state, message) of an ERR payload."""
    payload = bytes(payload)
    code = struct.unpack_from("<H", payload, 1)[0]
    if len(payload) > 3 and payload[3:4] == b"#":
        return code, payload[4:9].decode("ascii", "replace"), payload[9:].decode("utf-8", "replace")
    return code, "HY000", payload[3:].decode("utf-8", "replace")
