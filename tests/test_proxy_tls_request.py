"""A client that asks for TLS gets a clear error, as from a MariaDB without TLS (issue 7, item 11)."""
from __future__ import annotations

import struct
import subprocess

import pymysql

from conftest import connect_kwargs
from fastproxy.constants import CLIENT, ER
from fastproxy.protocol import parse_err
from fastproxy.scratch_db import ROOT_PASSWORD
from proxy_rawclient import RawClient, packet

# the start of a TLS 1.2 ClientHello record, as a client sends it right after its SSL request
CLIENT_HELLO = bytes.fromhex("160301020001") + bytes(40)


def _ssl_request() -> bytes:
    caps = CLIENT.LONG_PASSWORD | CLIENT.PROTOCOL_41 | CLIENT.SECURE_CONNECTION | CLIENT.PLUGIN_AUTH | CLIENT.SSL
    return packet(1, struct.pack("<IIB", caps, 1 << 24, 45) + bytes(23))


def _ask_for_tls(port: int, then: bytes = b"") -> tuple[int, bytes, bool]:
    c = RawClient(port)
    try:
        _, greeting = c.read_packet()
        caps = struct.unpack_from("<H", greeting, greeting.index(b"\x00", 1) + 1 + 4 + 8 + 1)[0]
        assert not caps & CLIENT.SSL  # the greeting never offers TLS
        c.send(_ssl_request() + then)
        seq, reply = c.read_packet()
        return seq, reply, c.closed_by_peer()
    finally:
        c.sock.close()


def test_ssl_request_gets_bad_handshake_error(proxy_factory, mariadb):
    p = proxy_factory([mariadb])
    for then in (b"", CLIENT_HELLO):
        seq, reply, closed = _ask_for_tls(p.port, then)
        assert reply[0] == 0xFF, reply
        code, state, message = parse_err(reply)
        assert (seq, code, state) == (2, ER.HANDSHAKE_ERROR, "08S01")  # what mariadbd sends (seq 2, 1043)
        assert "TLS is not enabled on this proxy" in message
        assert closed
    # the same request straight to mariadbd (no TLS configured): the same code and sequence id
    seq, reply, closed = _ask_for_tls(mariadb.port)
    assert (seq, parse_err(reply)[:2]) == (2, (ER.HANDSHAKE_ERROR, "08S01")) and closed
    assert "client asked for TLS" in p.read_log()
    conn = pymysql.connect(**connect_kwargs(p.port))  # nothing else is affected
    conn.close()


def test_mariadb_cli_with_ssl(proxy_factory, mariadb):
    """The CLI only sends an SSL request when the greeting offers TLS, which the proxy's never
    does: `--ssl` falls back to plain text (as against a MariaDB without TLS), and
    `--ssl-verify-server-cert` (TLS required) stops with the client's own clear error."""
    p = proxy_factory([mariadb])
    base = ["mariadb", "--no-defaults", "-h127.0.0.1", f"-P{p.port}", "--protocol=TCP", "-uroot",
            f"-p{ROOT_PASSWORD}", "-N", "-B"]
    plain = subprocess.run(base + ["--ssl", "-e", "SELECT @@have_ssl IS NOT NULL"], capture_output=True, text=True)
    assert plain.returncode == 0 and plain.stdout.strip() == "1", plain.stderr
    required = subprocess.run(base + ["--ssl", "--ssl-verify-server-cert", "-e", "SELECT 1"],
                              capture_output=True, text=True)
    assert required.returncode == 1
    assert "SSL is required, but the server does not support it" in required.stderr, required.stderr
