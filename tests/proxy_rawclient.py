"""A minimal MySQL client on a raw socket, for sending malformed packets on purpose."""
from __future__ import annotations

import hashlib
import socket
import struct

CLIENT_LONG_PASSWORD = 1
CLIENT_PROTOCOL_41 = 1 << 9
CLIENT_TRANSACTIONS = 1 << 13
CLIENT_SECURE_CONNECTION = 1 << 15
CLIENT_PLUGIN_AUTH = 1 << 19


def packet(seq: int, payload: bytes) -> bytes:
    return struct.pack("<I", len(payload))[:3] + bytes([seq & 0xFF]) + payload


def native_scramble(password: str, salt: bytes) -> bytes:
    if not password:
        return b""
    h1 = hashlib.sha1(password.encode()).digest()
    h2 = hashlib.sha1(h1).digest()
    h3 = hashlib.sha1(salt + h2).digest()
    return bytes(a ^ b for a, b in zip(h1, h3))


class RawClient:
    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed by peer")
            buf += chunk
        return buf

    def read_packet(self) -> tuple[int, bytes]:
        hdr = self._recv_exact(4)
        length = hdr[0] | hdr[1] << 8 | hdr[2] << 16
        return hdr[3], self._recv_exact(length)

    def login(self, user: str, password: str) -> None:
        """Handshake with mysql_native_password (auth switch to it handled)."""
        seq, greeting = self.read_packet()
        if greeting[0] != 10:
            raise ConnectionError(f"no greeting: {greeting!r}")
        pos = greeting.index(b"\x00", 1) + 1
        salt1 = greeting[pos + 4:pos + 12]
        pos += 4 + 8 + 1 + 2 + 1 + 2 + 2 + 1 + 10
        salt2 = greeting[pos:pos + 12]
        salt = salt1 + salt2
        caps = CLIENT_LONG_PASSWORD | CLIENT_PROTOCOL_41 | CLIENT_TRANSACTIONS | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH
        auth = native_scramble(password, salt)
        resp = (struct.pack("<IIB", caps, 1 << 24, 33) + b"\x00" * 23 + user.encode() + b"\x00"
                + bytes([len(auth)]) + auth + b"mysql_native_password\x00")
        self.send(packet(seq + 1, resp))
        seq, reply = self.read_packet()
        if reply[0] == 0xFE:  # auth switch
            plugin_end = reply.index(b"\x00", 1)
            salt = reply[plugin_end + 1:].rstrip(b"\x00")
            self.send(packet(seq + 1, native_scramble(password, salt)))
            seq, reply = self.read_packet()
        if reply[0] != 0:
            raise ConnectionError(f"login failed: {reply!r}")

    def query(self, sql: str) -> bytes:
        """Send a COM_QUERY and return the first response packet (enough for `SELECT 1` / OK)."""
        self.send(packet(0, b"\x03" + sql.encode()))
        _, first = self.read_packet()
        return first

    def closed_by_peer(self, timeout: float = 10) -> bool:
        """True when the other side closed (EOF or reset), reading and discarding what arrives."""
        self.sock.settimeout(timeout)
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def close(self) -> None:
        self.sock.close()
