"""fastproxy.replay.auth: real logins against a real MariaDB over a raw socket (native password,
ed25519, wrong passwords -> 1045), and caching_sha2 / RSA checked against independent values."""
from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastproxy._packet import PacketFramer, build_packet
from fastproxy.constants import CLIENT
from fastproxy.errors import ProtocolError
from fastproxy.protocol import Greeting
from fastproxy.replay import auth
from fastproxy.scratch_db import ROOT_PASSWORD

CAPS = (CLIENT.LONG_PASSWORD | CLIENT.PROTOCOL_41 | CLIENT.SECURE_CONNECTION | CLIENT.PLUGIN_AUTH
        | CLIENT.PLUGIN_AUTH_LENENC_CLIENT_DATA)


# --- a minimal raw-socket client ----------------------------------------------------------------

class RawConn:
    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.framer = PacketFramer()
        self.seq = 0

    def read(self) -> bytes:
        while True:
            pkt = self.framer.next_packet()
            if pkt is not None:
                seq, payload = pkt
                self.seq = seq + 1
                return bytes(payload)
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            self.framer.feed(data)

    def send(self, payload: bytes) -> None:
        self.sock.sendall(build_packet(self.seq, payload))
        self.seq += 1

    def close(self) -> None:
        self.sock.close()


def login(db, user: str, password: bytes, plugin: str | None = None) -> tuple[bytes, list[str]]:
    """Handshake as `user`; returns (final packet, plugins used). `plugin` overrides the plugin
    named in the HandshakeResponse (else: the greeting's)."""
    conn = RawConn(db.host, db.port)
    try:
        greeting_payload = conn.read()
        greeting = Greeting.parse(greeting_payload)
        nonce = auth.greeting_nonce(greeting_payload)
        assert len(nonce) == 20
        plugin = plugin or greeting.auth_plugin
        used = [plugin]
        data = auth.auth_response(plugin, password, nonce)
        resp = (struct.pack("<IIB", CAPS, 1 << 24, 45) + bytes(23) + user.encode() + b"\0"
                + bytes((len(data),)) + data + plugin.encode() + b"\0")
        conn.send(resp)
        for _ in range(5):
            pkt = conn.read()
            if pkt[0] in (0x00, 0xFF):
                return pkt, used
            if pkt[0] == 0xFE:
                plugin, nonce = auth.parse_auth_switch(pkt)
                used.append(plugin)
                conn.send(auth.auth_response(plugin, password, nonce))
            elif pkt[0] == 0x01:
                reply = auth.auth_more_data(plugin, pkt[1:], password, nonce)
                if reply is not None:
                    conn.send(reply)
            else:
                raise AssertionError(f"unexpected packet {pkt[:20]!r}")
        raise AssertionError("too many auth round trips")
    finally:
        conn.close()


def err_code(pkt: bytes) -> int:
    assert pkt[0] == 0xFF, pkt
    return struct.unpack_from("<H", pkt, 1)[0]


@pytest.fixture(scope="module")
def users(mariadb):
    mariadb.sql(
        "CREATE OR REPLACE USER auth_native@'127.0.0.1' IDENTIFIED BY 'native-pw';"
        "CREATE OR REPLACE USER auth_ed@'127.0.0.1' IDENTIFIED VIA ed25519 USING PASSWORD('ed-pw');"
        "CREATE OR REPLACE USER auth_ed_long@'127.0.0.1' IDENTIFIED VIA ed25519 "
        "USING PASSWORD('a much longer ed25519 password, longer than 32 bytes ü');"
        "CREATE OR REPLACE USER auth_empty@'127.0.0.1';"
    )
    yield mariadb
    mariadb.sql("DROP USER IF EXISTS auth_native@'127.0.0.1', auth_ed@'127.0.0.1',"
                " auth_ed_long@'127.0.0.1', auth_empty@'127.0.0.1'")


# --- against the real server --------------------------------------------------------------------

def test_native_password_login(users):
    pkt, used = login(users, "auth_native", b"native-pw")
    assert pkt[0] == 0x00, pkt
    assert used == ["mysql_native_password"]


def test_root_login(users):
    pkt, _ = login(users, "root", ROOT_PASSWORD.encode())
    assert pkt[0] == 0x00, pkt


def test_native_password_wrong(users):
    pkt, _ = login(users, "auth_native", b"wrong")
    assert err_code(pkt) == 1045


def test_empty_password_login(users):
    pkt, _ = login(users, "auth_empty", b"")
    assert pkt[0] == 0x00, pkt
    pkt, _ = login(users, "auth_empty", b"not-empty")
    assert err_code(pkt) == 1045


def test_ed25519_login_via_auth_switch(users):
    pkt, used = login(users, "auth_ed", b"ed-pw")
    assert pkt[0] == 0x00, pkt
    assert used == ["mysql_native_password", "client_ed25519"]


def test_ed25519_long_password(users):
    pkt, _ = login(users, "auth_ed_long", "a much longer ed25519 password, longer than 32 bytes ü".encode())
    assert pkt[0] == 0x00, pkt


def test_ed25519_wrong_password(users):
    pkt, used = login(users, "auth_ed", b"ed-pw ")
    assert used[-1] == "client_ed25519"
    assert err_code(pkt) == 1045


def test_ed25519_public_key_matches_server(users):
    """MariaDB's PASSWORD() for ed25519 is base64 of the public key (without padding)."""
    stored = users.sql("SELECT JSON_VALUE(Priv, '$.authentication_string') FROM mysql.global_priv "
                  "WHERE User='auth_ed' AND Host='127.0.0.1'").strip()
    assert base64.b64encode(auth.ed25519_public_key(b"ed-pw")).rstrip(b"=").decode() == stored


# --- independent checks -------------------------------------------------------------------------

def test_native_password_known_vector():
    nonce = bytes(range(1, 21))
    expected = bytes(a ^ b for a, b in zip(
        hashlib.sha1(b"secret").digest(),
        hashlib.sha1(nonce + hashlib.sha1(hashlib.sha1(b"secret").digest()).digest()).digest()))
    assert auth.native_password(b"secret", nonce) == expected
    assert auth.native_password(b"secret", nonce + b"\0") == expected  # trailing NUL ignored
    assert auth.native_password(b"", nonce) == b""


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=1, max_size=64), st.binary(min_size=20, max_size=20))
def test_sha_scrambles_match_pymysql(password, nonce):
    from pymysql import _auth as pa

    assert auth.native_password(password, nonce) == pa.scramble_native_password(password, nonce)
    assert auth.caching_sha2_scramble(password, nonce) == pa.scramble_caching_sha2(password, nonce)
    assert auth.auth_response("caching_sha2_password", password, nonce) == pa.scramble_caching_sha2(password, nonce)


def test_caching_sha2_known_vector():
    pw, nonce = b"pass", b"n" * 20
    h1 = hashlib.sha256(pw).digest()
    h3 = hashlib.sha256(hashlib.sha256(h1).digest() + nonce).digest()
    assert auth.caching_sha2_scramble(pw, nonce) == bytes(a ^ b for a, b in zip(h1, h3))
    assert auth.caching_sha2_scramble(b"", nonce) == b""


@pytest.fixture(scope="module")
def rsa_key():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return key, pem


def _decrypt(key, blob: bytes, nonce: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    mixed = key.decrypt(blob, padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None))
    return bytes(b ^ nonce[i % len(nonce)] for i, b in enumerate(mixed))


@pytest.mark.parametrize("password", [b"x", b"secret", b"a password longer than the twenty-byte nonce" * 2])
def test_rsa_round_trip(rsa_key, password):
    key, pem = rsa_key
    nonce = os.urandom(20)
    blob = auth.caching_sha2_rsa_encrypt(password, nonce, pem)
    assert len(blob) == 256
    assert _decrypt(key, blob, nonce) == password + b"\0"
    # randomized padding: two encryptions differ, both decrypt
    assert auth.caching_sha2_rsa_encrypt(password, nonce, pem) != blob


def test_rsa_matches_pymysql_decryption(rsa_key):
    """PyMySQL's own encryption decrypts to the same plaintext as ours (same XOR/OAEP scheme)."""
    from pymysql import _auth as pa

    key, pem = rsa_key
    nonce = os.urandom(20)
    theirs = pa.sha2_rsa_encrypt(b"pw123", nonce, pem)
    ours = auth.caching_sha2_rsa_encrypt(b"pw123", nonce, pem)
    assert _decrypt(key, theirs, nonce) == _decrypt(key, ours, nonce) == b"pw123\0"


def test_rsa_bad_key():
    with pytest.raises(ProtocolError, match="RSA public key"):
        auth.caching_sha2_rsa_encrypt(b"pw", b"n" * 20, b"-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----\n")


def test_caching_sha2_full_auth_steps(rsa_key):
    key, pem = rsa_key
    nonce = os.urandom(20)
    assert auth.auth_more_data("caching_sha2_password", b"\x03", b"pw", nonce) is None
    assert auth.auth_more_data("caching_sha2_password", b"\x04", b"pw", nonce) == b"\x02"
    assert auth.auth_more_data("caching_sha2_password", b"\x04", b"pw", nonce, secure=True) == b"pw\0"
    blob = auth.auth_more_data("caching_sha2_password", pem, b"pw", nonce)
    assert _decrypt(key, blob, nonce) == b"pw\0"
    with pytest.raises(ProtocolError):
        auth.auth_more_data("caching_sha2_password", b"\x07", b"pw", nonce)
    with pytest.raises(ProtocolError):
        auth.auth_more_data("mysql_native_password", b"\x03", b"pw", nonce)


def test_sha256_password_steps(rsa_key):
    key, pem = rsa_key
    nonce = os.urandom(20)
    assert auth.auth_response("sha256_password", b"pw", nonce) == b"\x01"
    assert auth.auth_response("sha256_password", b"pw", nonce, secure=True) == b"pw\0"
    assert auth.auth_response("sha256_password", b"", nonce) == b""
    assert _decrypt(key, auth.auth_response("sha256_password", b"pw", nonce, public_key_pem=pem), nonce) == b"pw\0"
    assert _decrypt(key, auth.auth_more_data("sha256_password", pem, b"pw", nonce), nonce) == b"pw\0"


def test_clear_password_and_str_password():
    assert auth.auth_response("mysql_clear_password", b"pw", b"n" * 20) == b"pw\0"
    assert auth.auth_response("mysql_native_password", "pw", b"n" * 20) == auth.native_password(b"pw", b"n" * 20)


def test_unknown_plugin():
    with pytest.raises(ProtocolError, match="auth_gssapi_client"):
        auth.auth_response("auth_gssapi_client", b"pw", b"n" * 20)


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=100), st.binary(min_size=32, max_size=32))
def test_ed25519_signature_verifies(password, nonce):
    """Standard Ed25519 verification (libsodium crypto_sign_open) accepts our signature with the
    public key derived from the password, and it matches PyMySQL's implementation."""
    from nacl.bindings import crypto_sign_open
    from pymysql import _auth as pa

    sig = auth.ed25519_sign(password, nonce)
    assert len(sig) == 64
    assert crypto_sign_open(sig + nonce, auth.ed25519_public_key(password)) == nonce
    assert sig == pa.ed25519_password(password, nonce)


def test_ed25519_wrong_key_fails_verification():
    from nacl.bindings import crypto_sign_open
    from nacl.exceptions import BadSignatureError

    nonce = os.urandom(32)
    with pytest.raises(BadSignatureError):
        crypto_sign_open(auth.ed25519_sign(b"pw1", nonce) + nonce, auth.ed25519_public_key(b"pw2"))


# --- parsing helpers ----------------------------------------------------------------------------

def _greeting(nonce: bytes, plugin: bytes = b"mysql_native_password") -> bytes:
    return (b"\x0a" + b"10.11.0-MariaDB\0" + struct.pack("<I", 7) + nonce[:8] + b"\0"
            + struct.pack("<HBHH", 0xF7FE, 45, 2, (CLIENT.PLUGIN_AUTH | CLIENT.SECURE_CONNECTION) >> 16)
            + bytes((len(nonce) + 1,)) + bytes(10) + nonce[8:] + b"\0" + plugin + b"\0")


def test_greeting_nonce_synthetic():
    nonce = bytes(range(65, 85))
    assert auth.greeting_nonce(_greeting(nonce)) == nonce


def test_greeting_nonce_truncated():
    g = _greeting(bytes(range(65, 85)))
    for cut in (1, 5, 20, 30, 40):
        with pytest.raises(ProtocolError):
            auth.greeting_nonce(g[:cut])
    with pytest.raises(ProtocolError):
        auth.greeting_nonce(b"\x09abc")


def test_parse_auth_switch():
    assert auth.parse_auth_switch(b"\xfeclient_ed25519\0" + b"N" * 32) == ("client_ed25519", b"N" * 32)
    assert auth.parse_auth_switch(b"\xfemysql_native_password\0" + b"n" * 20 + b"\0")[1] == b"n" * 20 + b"\0"
    for bad in (b"", b"\x00abc", b"\xfe", b"\xfenoterminator"):
        with pytest.raises(ProtocolError):
            auth.parse_auth_switch(bad)
