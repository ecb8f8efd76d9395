"""Encryption key handling and AES-256-CTR for traffic files.

CTR keeps the stream cipher property the writer needs (encrypt chunk by chunk, no padding) and
matches what TiProxy uses. It gives confidentiality only, not integrity: a modified file is
detected by the lz4 checksums (compressed files) or the record sanity checks, not by the cipher.
"""
from __future__ import annotations

import hashlib
import hmac
import os

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fastproxy.errors import ConfigError

KEY_SIZE = 32   # AES-256
IV_SIZE = 16
KEY_CHECK_SIZE = 8


def load_key(path) -> bytes:
    """Read a key file and use its first 32 bytes (e.g. made by `openssl rand 32 > key`)."""
    try:
        with open(path, "rb") as f:
            data = f.read(KEY_SIZE)
    except OSError as e:
        raise ConfigError(f"encryption key file {path}: {e.strerror or e}") from e
    if len(data) < KEY_SIZE:
        raise ConfigError(f"encryption key file {path} holds {len(data)} bytes; "
                          f"an AES-256 key needs at least {KEY_SIZE}")
    return data


def generate_key_file(path) -> bytes:
    """Write a new random key to path (mode 0600, never overwriting a file); return the key."""
    key = os.urandom(KEY_SIZE)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


def check_key(key) -> bytes:
    key = bytes(key)
    if len(key) != KEY_SIZE:
        raise ConfigError(f"encryption key must be {KEY_SIZE} bytes, got {len(key)}")
    return key


def new_iv() -> bytes:
    return os.urandom(IV_SIZE)


def key_check_value(key: bytes, iv: bytes) -> bytes:
    """A short MAC of the file's IV: lets the reader tell "wrong key" from "corrupt file"."""
    return hmac.new(key, b"fastproxy-key-check" + iv, hashlib.sha256).digest()[:KEY_CHECK_SIZE]


def ctr_cipher(key: bytes, iv: bytes):
    """Return an encryptor (CTR decryption is the same operation) with .update(data)."""
    return Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()


def ctr_cipher_at(key: bytes, iv: bytes, offset: int):
    """An encryptor positioned `offset` bytes into the keystream ctr_cipher(key, iv) starts with
    (the counter is the whole 128-bit block, big-endian, as in cryptography's CTR)."""
    block, skip = divmod(offset, 16)
    counter = (int.from_bytes(iv, "big") + block) % (1 << 128)
    enc = ctr_cipher(key, counter.to_bytes(IV_SIZE, "big"))
    enc.update(bytes(skip))
    return enc
