"""`caching_sha2_password` full authentication across a TLS boundary in the proxy.

When the server has no cached hash for an account (the first login after a restart or FLUSH
PRIVILEGES), it answers the scramble with AuthMoreData 0x04 ("perform full authentication"), and
the client must send the password itself: in clear when *its* connection is secure (TLS), else
encrypted with the server's RSA key (it asks for it with 0x02). The server decides the same way from
*its* connection. Through the proxy the two connections are different ones, so when exactly one leg
is TLS, both ends would be right and the login would fail:

- client TLS, backend plain: the client sends the password in clear; the backend (MySQL) wants it
  RSA-encrypted. The proxy asks the backend for its public key and sends it encrypted.
- client plain, backend TLS: the client asks for a public key; the backend would read that 0x02 as
  the password. The proxy answers with its own public key (made at startup), decrypts what the
  client sends, and gives the backend the password in clear — inside the backend's TLS.

Either way the password passes through the proxy's memory for one step, as it would through any
TLS-terminating proxy; it is never stored or logged. The extra round trips shift the sequence ids
between the legs (HandshakeTls.extra_shift). sha256_password (MySQL's older plugin) has the same
problem and is not bridged: use TLS on both legs or neither with it.
"""
from __future__ import annotations

import logging

from fastproxy._packet import build_packet
from fastproxy.constants import ER

log = logging.getLogger("fastproxy.tls")

PLUGIN = "caching_sha2_password"
MORE_DATA = 0x01
AUTH_SWITCH = 0xFE
PERFORM_FULL_AUTH = b"\x01\x04"
REQUEST_PUBLIC_KEY = b"\x02"
SCRAMBLE_LENGTH = 20

# bridge states (HandshakeTls.bridge)
WANT_CLEAR_PASSWORD = "want-clear-password"  # client TLS: its next packet is the password
WANT_BACKEND_KEY = "want-backend-key"  # client TLS: the backend's public key comes next
WANT_KEY_REQUEST = "want-key-request"  # backend TLS: the client asks for a key next
WANT_ENCRYPTED = "want-encrypted"  # backend TLS: the client's RSA-encrypted password comes next


def new_rsa_key():
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _oaep():
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    return padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None)


def _xor_nonce(data: bytes, nonce: bytes) -> bytes:
    nonce = nonce[:SCRAMBLE_LENGTH]
    return bytes(b ^ nonce[i % len(nonce)] for i, b in enumerate(data))


def _public_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def on_backend_packet(conn, seq: int, payload) -> bool:
    """A backend packet of the auth exchange while exactly one leg is TLS: True if the bridge took
    it (not for the client)."""
    tls = conn.tls
    first = payload[0] if len(payload) else -1
    if first == AUTH_SWITCH:  # a new plugin, a new nonce
        body = bytes(payload[1:])
        name, _, data = body.partition(b"\x00")
        tls.plugin, tls.nonce = name.decode("ascii", "replace"), data.rstrip(b"\x00")
        return False
    if tls.bridge == WANT_BACKEND_KEY:
        if first != MORE_DATA:
            tls.bridge = None
            return False  # an ERR: the client gets it
        from cryptography.hazmat.primitives import serialization

        password, tls.password = tls.password, b""
        tls.bridge = None
        try:
            key = serialization.load_pem_public_key(bytes(payload[1:]))
            encrypted = key.encrypt(_xor_nonce(password + b"\x00", tls.nonce), _oaep())
        except (ValueError, TypeError, AttributeError) as e:
            _refuse(conn, seq + tls.seq_shift - 1, f"the backend's RSA public key is unusable: {e}")
            return True
        conn.backend_side.transport.write(build_packet(seq + 1, encrypted))
        tls.extra_shift -= 2  # the backend counted 0x02 and the key; the client neither
        return True
    if bytes(payload[:2]) == PERFORM_FULL_AUTH and tls.plugin == PLUGIN:
        tls.bridge = WANT_CLEAR_PASSWORD if tls.client else WANT_KEY_REQUEST
    return False


def on_client_packet(conn, seq: int, payload) -> bool:
    """A client packet of the auth exchange while the bridge waits for one: True if it took it."""
    tls = conn.tls
    state = tls.bridge
    if state == WANT_CLEAR_PASSWORD:
        tls.password = bytes(payload).rstrip(b"\x00")
        tls.bridge = WANT_BACKEND_KEY
        conn.backend_side.transport.write(build_packet(seq - tls.seq_shift, REQUEST_PUBLIC_KEY))
        return True
    if state == WANT_KEY_REQUEST:
        if bytes(payload) != REQUEST_PUBLIC_KEY:
            # RSA-encrypted with a key the client already had: the backend's, which the proxy cannot read
            _refuse(conn, seq, "the client sent its password encrypted with a public key it was configured with; "
                    "through a proxy that terminates TLS towards the backend, let it ask for the key (or use TLS)")
            return True
        tls.bridge = WANT_ENCRYPTED
        conn.transport.write(build_packet(seq + 1, bytes((MORE_DATA,)) + _public_pem(conn.server.tls.rsa_key)))
        return True
    if state == WANT_ENCRYPTED:
        tls.bridge = None
        try:
            plain = conn.server.tls.rsa_key.decrypt(bytes(payload), _oaep())
        except ValueError:
            _refuse(conn, seq, "the client's RSA-encrypted password could not be decrypted")
            return True
        password = _xor_nonce(plain, tls.nonce)
        tls.extra_shift += 2  # the client counted 0x02 and the key; the backend neither
        conn.backend_side.transport.write(build_packet(seq - tls.seq_shift, password))
        return True
    return False


def _refuse(conn, seq: int, why: str) -> None:
    from fastproxy.protocol import err_packet

    s = conn.session
    log.warning("conn %d (%s): caching_sha2_password full authentication failed: %s", s.conn_id, s.client_addr, why)
    s.closed_by, s.close_reason = s.closed_by or "proxy", s.close_reason or "full authentication failed"
    conn.transport.write(err_packet(ER.ACCESS_DENIED_ERROR, f"fastproxy: {why}", seq + 1, "28000"))
    conn._close()


def greeting_nonce(raw: bytes) -> bytes:
    """The 20-byte nonce of a protocol-10 greeting (auth-plugin-data parts 1 and 2)."""
    pos = raw.index(b"\x00", 1) + 1 + 4  # server version, connection id
    part2 = pos + 8 + 1 + 2 + 1 + 2 + 2 + 1 + 10  # part 1, filler, caps, charset, status, caps, length, reserved
    return (raw[pos:pos + 8] + raw[part2:part2 + 12]).rstrip(b"\x00")
