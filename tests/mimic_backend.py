"""A second kind of backend for the tests: a MySQL-8-like server built on mysql-mimic (a Python
implementation of the server side of the protocol) whose accounts use `caching_sha2_password`,
MySQL 8's default plugin, which MariaDB has no server side for. Run as a process:

    python tests/mimic_backend.py PORT [CERT KEY]

The plugin follows MySQL's server (sql/auth/sha2_password.cc): the fast path checks the scramble
against the cached SHA256(SHA256(password)) of an account that has logged in fully before; the
full path asks for the password (AuthMoreData 0x04) and takes it in clear only over TLS, else by
RSA (the client asks for the public key with 0x02, or already has it) with OAEP padding. One
difference: mysql-mimic cannot send AuthMoreData without waiting for an answer, so the fast path
answers OK without the 0x03 (fast_auth_success) packet before it; clients accept either.

`SELECT 'paths'` answers one row: how many logins took the full and the fast path, whether this
connection is encrypted, and its user; `SELECT 'flush'` empties the cache (as FLUSH PRIVILEGES).
"""
from __future__ import annotations

import asyncio
import contextvars
import hashlib
import os
import ssl
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's fastproxy

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from mysql_mimic import MysqlServer, Session
from mysql_mimic.auth import AuthPlugin, Forbidden, IdentityProvider, NativePasswordAuthPlugin, Success, User
from mysql_mimic.connection import Connection
from mysql_mimic.stream import MysqlStream

ACCOUNTS = {"sha2user": "sha2-secret"}
PERFORM_FULL_AUTH = b"\x04"
REQUEST_PUBLIC_KEY = b"\x02"
SECURE: contextvars.ContextVar[bool] = contextvars.ContextVar("secure", default=False)
PATHS = {"full": 0, "fast": 0}
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PUBLIC_PEM = RSA_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)


def _sha256(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


def _xor(data: bytes, key: bytes) -> bytes:
    return bytes(b ^ key[i % len(key)] for i, b in enumerate(data))


class CachingSha2Password(AuthPlugin):
    name = "caching_sha2_password"
    client_plugin_name = "caching_sha2_password"
    cache: set[str] = set()

    async def auth(self, auth_info=None):
        if auth_info and auth_info.handshake_plugin_name == self.name and auth_info.handshake_auth_data:
            nonce = auth_info.handshake_auth_data.rstrip(b"\x00")
        else:
            nonce = bytes(1 + b % 126 for b in os.urandom(20))
            auth_info = yield nonce + b"\x00"
        user = auth_info.user
        stored = bytes.fromhex(user.auth_string or "")
        scramble = auth_info.data
        if user.name in self.cache and len(scramble) == 32:
            candidate = _xor(scramble, _sha256(stored + nonce))
            if _sha256(candidate) == stored:
                PATHS["fast"] += 1
                yield Success(user.name)
                return
        reply = yield PERFORM_FULL_AUTH
        data = reply.data
        if SECURE.get():
            password = data.rstrip(b"\x00")
        else:
            if data == REQUEST_PUBLIC_KEY:
                reply = yield PUBLIC_PEM
                data = reply.data
            try:
                plain = RSA_KEY.decrypt(data, padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA1()),
                                                           algorithm=hashes.SHA1(), label=None))
            except ValueError:
                yield Forbidden("caching_sha2_password: a clear password over an insecure connection, or a bad "
                                "RSA-encrypted one")
                return
            password = _xor(plain, nonce).rstrip(b"\x00")
        if _sha256(_sha256(password)) == stored:
            self.cache.add(user.name)
            PATHS["full"] += 1
            yield Success(user.name)
        else:
            yield Forbidden()


class Accounts(IdentityProvider):
    def get_plugins(self):
        return [CachingSha2Password(), NativePasswordAuthPlugin()]

    async def get_user(self, username: str):
        pw = ACCOUNTS.get(username)
        if pw is None:
            return None
        return User(name=username, auth_string=_sha256(_sha256(pw.encode())).hex(),
                    auth_plugin=CachingSha2Password.name)


class Answers(Session):
    async def handle_query(self, sql, attrs):
        if "'flush'" in sql:  # as FLUSH PRIVILEGES: the next login of every account takes the full path
            CachingSha2Password.cache.clear()
            return None
        if "'paths'" not in sql:
            return await super().handle_query(sql, attrs)
        secure = self.connection.stream.writer.get_extra_info("ssl_object") is not None
        return [(PATHS["full"], PATHS["fast"], int(secure), self.username)], ["full", "fast", "tls", "user"]


_authenticate = Connection.authenticate


async def _authenticate_knowing_tls(self, *args, **kwargs):
    # what MySQL asks its vio: is this connection encrypted? (the plugin's answer depends on it)
    SECURE.set(self.stream.writer.get_extra_info("ssl_object") is not None)
    return await _authenticate(self, *args, **kwargs)


Connection.authenticate = _authenticate_knowing_tls


async def _start_tls(self, ctx: ssl.SSLContext) -> None:
    # mysql-mimic's own start_tls loses a ClientHello that arrived in the same read as the SSL
    # request (PyMySQL sends both at once); fastproxy's upgrade is given those bytes
    from fastproxy.proxy.tls_upgrade import upgrade

    transport = self.writer.transport
    already = bytes(self.reader._buffer)
    self.reader._buffer.clear()
    self.writer._transport = await upgrade(transport, transport.get_protocol(), ctx, server_side=True, timeout=10,
                                           already_read=already)


MysqlStream.start_tls = _start_tls


async def main() -> None:
    port = int(sys.argv[1])
    ctx = None
    if len(sys.argv) > 3:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(sys.argv[2], sys.argv[3])
    server = MysqlServer(session_factory=Answers, identity_provider=Accounts(), ssl=ctx)
    await server.serve_forever(host="127.0.0.1", port=port)


if __name__ == "__main__":
    asyncio.run(main())
