"""Client-side authentication for the replay's connections: pure functions, no I/O.

The replay client (async) drives the handshake; these functions compute what it sends.

Flow the caller implements (HandshakeResponse41 with PLUGIN_AUTH | PLUGIN_AUTH_LENENC_CLIENT_DATA):

1. Read the greeting; ``nonce = greeting_nonce(payload)``; ``plugin`` = the greeting's plugin name
   (``Greeting.parse(payload).auth_plugin``). Send ``auth_response(plugin, password, nonce)`` as
   the auth data of HandshakeResponse41, with ``plugin`` as its client plugin name.
2. Loop on the server's reply:
   - ``0x00`` OK: logged in.  ``0xFF`` ERR: failed (1045 = wrong password).
   - ``0xFE`` auth switch request: ``plugin, nonce = parse_auth_switch(payload)``; send
     ``auth_response(plugin, password, nonce)`` (raw, not length-encoded) and loop.
   - ``0x01`` AuthMoreData: ``reply = auth_more_data(plugin, payload[1:], password, nonce,
     secure=tls)``; send ``reply`` unless it is None (then just read the next packet), and loop.

Plugins:

- ``mysql_native_password``: SHA1(pw) XOR SHA1(nonce[:20] + SHA1(SHA1(pw))); empty pw -> b"".
- ``caching_sha2_password``: the first response is the SHA-256 scramble. The server then sends
  AuthMoreData ``0x03`` (fast auth succeeded, OK follows: send nothing) or ``0x04`` (full auth
  needed). Full auth over TLS: send pw + NUL. Without TLS: send ``b"\\x02"`` to request the server's
  RSA public key, which arrives as AuthMoreData (PEM); send ``caching_sha2_rsa_encrypt(...)``.
  ``auth_more_data`` implements exactly these steps.
- ``sha256_password``: over TLS (``secure=True``) the response is pw + NUL. Without TLS and
  without a known key, ``auth_response`` returns ``b"\\x01"`` (the request for the public key); the
  server answers AuthMoreData with the PEM, and the caller sends ``auth_more_data(...)``'s result,
  which is ``caching_sha2_rsa_encrypt(password, nonce, pem)``. If the caller already has the key
  (``public_key_pem=``), ``auth_response`` returns the encrypted password straight away.
  Empty password -> b"" (nothing to protect).
- ``client_ed25519`` (MariaDB): the signature of the nonce (64 bytes), see ``ed25519_sign``.
- ``mysql_clear_password``: pw + NUL (only sensible over TLS or on a trusted network).

Nonces: pass what the server sent. The SHA-based plugins use its first 20 bytes (so a trailing NUL
does no harm); ed25519 signs all of it (MariaDB's ed25519 nonce is 32 bytes, no NUL).

ed25519 uses PyNaCl's low-level libsodium bindings (scalar/point arithmetic), because MariaDB's
variant derives the key from a password of any length, which standard Ed25519 signing APIs
(32-byte seed) cannot express.
"""
from __future__ import annotations

import hashlib

from fastproxy.errors import ProtocolError

SCRAMBLE_LENGTH = 20

__all__ = [
    "auth_more_data", "auth_response", "caching_sha2_rsa_encrypt", "caching_sha2_scramble",
    "ed25519_public_key", "ed25519_sign", "greeting_nonce", "native_password", "parse_auth_switch",
    "SUPPORTED_PLUGINS",
]

SUPPORTED_PLUGINS = ("mysql_native_password", "caching_sha2_password", "sha256_password",
                     "client_ed25519", "mysql_clear_password")


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def native_password(password: bytes, nonce: bytes) -> bytes:
    """mysql_native_password: SHA1(pw) XOR SHA1(nonce + SHA1(SHA1(pw))); b"" for an empty password."""
    if not password:
        return b""
    h1 = hashlib.sha1(password).digest()
    h2 = hashlib.sha1(h1).digest()
    return _xor(h1, hashlib.sha1(bytes(nonce[:SCRAMBLE_LENGTH]) + h2).digest())


def caching_sha2_scramble(password: bytes, nonce: bytes) -> bytes:
    """caching_sha2_password fast auth: SHA256(pw) XOR SHA256(SHA256(SHA256(pw)) + nonce)."""
    if not password:
        return b""
    h1 = hashlib.sha256(password).digest()
    h2 = hashlib.sha256(h1).digest()
    return _xor(h1, hashlib.sha256(h2 + bytes(nonce[:SCRAMBLE_LENGTH])).digest())


def caching_sha2_rsa_encrypt(password: bytes, nonce: bytes, public_key_pem: bytes) -> bytes:
    """Full auth without TLS (caching_sha2_password and sha256_password): (pw + NUL) XOR the nonce
    (repeated), encrypted with RSA-OAEP (MGF1/SHA-1, SHA-1) under the server's public key."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    nonce = bytes(nonce[:SCRAMBLE_LENGTH])
    if not nonce:
        raise ProtocolError("empty nonce for RSA password encryption")
    plain = password + b"\x00"
    reps = len(plain) // len(nonce) + 1
    mixed = _xor(plain, (nonce * reps)[:len(plain)])
    try:
        key = serialization.load_pem_public_key(bytes(public_key_pem))
    except ValueError as e:
        raise ProtocolError(f"server sent an unreadable RSA public key: {e}") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ProtocolError(f"server public key is not RSA ({type(key).__name__})")
    return key.encrypt(mixed, padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA1()),
                                           algorithm=hashes.SHA1(), label=None))


# --- MariaDB client_ed25519 -------------------------------------------------------------------

def _ed25519_expand(password: bytes) -> tuple[bytes, bytes]:
    """(scalar a reduced mod L, prefix) from SHA512(password), clamped as in RFC 8032."""
    from nacl.bindings import crypto_core_ed25519_scalar_reduce

    az = bytearray(hashlib.sha512(password).digest())
    az[0] &= 248
    az[31] &= 63
    az[31] |= 64
    # the clamped scalar is above the group order L; reducing it gives the same point (B has order L)
    a = crypto_core_ed25519_scalar_reduce(bytes(az[:32]) + bytes(32))
    return a, bytes(az[32:])


def ed25519_public_key(password: bytes) -> bytes:
    """The 32-byte public key MariaDB stores for `password` (base64 of it = PASSWORD() of ed25519)."""
    from nacl.bindings import crypto_scalarmult_ed25519_base_noclamp

    a, _ = _ed25519_expand(password)
    return crypto_scalarmult_ed25519_base_noclamp(a)


def ed25519_sign(password: bytes, nonce: bytes) -> bytes:
    """MariaDB client_ed25519: an Ed25519 signature (R || S, 64 bytes) of `nonce` with the key
    expanded from SHA512(password) (the password is the seed, of any length)."""
    from nacl.bindings import (crypto_core_ed25519_scalar_add, crypto_core_ed25519_scalar_mul,
                               crypto_core_ed25519_scalar_reduce, crypto_scalarmult_ed25519_base_noclamp)

    nonce = bytes(nonce)
    a, prefix = _ed25519_expand(password)
    pub = crypto_scalarmult_ed25519_base_noclamp(a)
    r = crypto_core_ed25519_scalar_reduce(hashlib.sha512(prefix + nonce).digest())
    # r is 0 only with negligible probability; libsodium's base mult rejects 0, so guard anyway
    if r == bytes(32):
        raise ProtocolError("ed25519 nonce hash reduced to zero")
    big_r = crypto_scalarmult_ed25519_base_noclamp(r)
    k = crypto_core_ed25519_scalar_reduce(hashlib.sha512(big_r + pub + nonce).digest())
    s = crypto_core_ed25519_scalar_add(crypto_core_ed25519_scalar_mul(k, a), r)
    return big_r + s


# --- dispatch -------------------------------------------------------------------------------

def auth_response(plugin: str, password: bytes, nonce: bytes, *, secure: bool = False,
                  public_key_pem: bytes | None = None) -> bytes:
    """The auth data to send for `plugin` (in HandshakeResponse41 or after an auth switch).

    `secure`: the connection is TLS (sha256_password then sends the password in clear).
    `public_key_pem`: the server's RSA key if already known (sha256_password skips the request).
    Unknown plugin -> ProtocolError naming it.
    """
    if isinstance(password, str):
        password = password.encode("utf-8")
    nonce = bytes(nonce)
    if plugin == "mysql_native_password":
        return native_password(password, nonce)
    if plugin == "caching_sha2_password":
        return caching_sha2_scramble(password, nonce)
    if plugin == "client_ed25519":
        return ed25519_sign(password, nonce)
    if plugin == "mysql_clear_password":
        return password + b"\x00"
    if plugin == "sha256_password":
        if not password:
            return b""
        if secure:
            return password + b"\x00"
        if public_key_pem:
            return caching_sha2_rsa_encrypt(password, nonce, public_key_pem)
        return b"\x01"  # request the public key; answer the AuthMoreData with auth_more_data()
    raise ProtocolError(f"unsupported authentication plugin {plugin!r} "
                        f"(supported: {', '.join(SUPPORTED_PLUGINS)})")


def auth_more_data(plugin: str, data: bytes, password: bytes, nonce: bytes, *,
                   secure: bool = False) -> bytes | None:
    """What to send after an AuthMoreData packet (0x01) whose payload after the 0x01 is `data`;
    None = send nothing, read the next packet (caching_sha2 fast auth succeeded, OK follows)."""
    if isinstance(password, str):
        password = password.encode("utf-8")
    data = bytes(data)
    if plugin == "caching_sha2_password":
        if data == b"\x03":
            return None
        if data == b"\x04":
            if secure:
                return password + b"\x00"
            return b"\x02"  # request the public key
        if data.startswith(b"-----BEGIN"):
            return caching_sha2_rsa_encrypt(password, nonce, data)
        raise ProtocolError(f"unexpected caching_sha2_password data {data[:16]!r}")
    if plugin == "sha256_password":
        if data.startswith(b"-----BEGIN"):
            return caching_sha2_rsa_encrypt(password, nonce, data)
        raise ProtocolError(f"unexpected sha256_password data {data[:16]!r}")
    raise ProtocolError(f"unexpected AuthMoreData for plugin {plugin!r}")


# --- handshake parsing helpers --------------------------------------------------------------

def greeting_nonce(payload: bytes) -> bytes:
    """The nonce of a protocol-10 greeting: auth-plugin-data part 1 (8 bytes) + part 2 without
    its trailing NUL (normally 12 bytes: 20 in all)."""
    payload = bytes(payload)
    if not payload or payload[0] != 10:
        raise ProtocolError(f"unsupported handshake protocol version {payload[:1]!r}")
    end = payload.find(b"\x00", 1)
    if end < 0:
        raise ProtocolError("truncated server greeting (server version)")
    pos = end + 1 + 4  # connection id
    if len(payload) < pos + 8 + 1 + 2:
        raise ProtocolError("truncated server greeting (auth data part 1)")
    part1 = payload[pos:pos + 8]
    pos += 8 + 1 + 2  # part 1, filler, capability flags (low)
    if len(payload) <= pos:
        return part1  # pre-4.1 style greeting: only 8 bytes
    if len(payload) < pos + 1 + 2 + 2 + 1 + 10:
        raise ProtocolError("truncated server greeting (capabilities)")
    auth_len = payload[pos + 5]
    pos += 1 + 2 + 2 + 1 + 10  # charset, status, capability flags (high), auth data length, reserved
    n2 = max(13, auth_len - 8)
    part2 = payload[pos:pos + n2]
    if len(part2) < n2:
        raise ProtocolError("truncated server greeting (auth data part 2)")
    if part2.endswith(b"\x00"):
        part2 = part2[:-1]
    return part1 + part2


def parse_auth_switch(payload: bytes) -> tuple[str, bytes]:
    """(plugin name, plugin data) of an auth switch request (0xFE, name NUL, data). The data is
    returned as sent (native password's has a trailing NUL, which the scramble ignores)."""
    payload = bytes(payload)
    if not payload or payload[0] != 0xFE:
        raise ProtocolError(f"not an auth switch request: {payload[:1]!r}")
    if len(payload) == 1:  # old auth switch (pre-4.1 password): unsupported
        raise ProtocolError("old-style auth switch request (mysql_old_password) is not supported")
    end = payload.find(b"\x00", 1)
    if end < 0:
        raise ProtocolError("auth switch request without a NUL-terminated plugin name")
    return payload[1:end].decode("ascii", "replace"), payload[end + 1:]
