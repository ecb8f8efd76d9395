"""Who may use the HTTP API: a bearer token (`api.token-file`), TLS and mutual TLS
(`security.server-http-tls`), and the refusal to serve an open API beyond loopback.

The token is compared in constant time and never logged; the file holding it must be readable by
its owner only, like an SSH key, or the proxy refuses to start. The same reader serves
`fastproxy traffic --token-file` on the client side.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import ssl
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastproxy.errors import ConfigError

if TYPE_CHECKING:
    from fastproxy.config import Config

log = logging.getLogger("fastproxy.api")

MIN_TOKEN_CHARS = 16
MAX_TOKEN_FILE_BYTES = 4096
TLS_KEYS = ("security.server-http-tls.cert", "security.server-http-tls.key", "security.server-http-tls.ca")


def read_token_file(path: str, what: str) -> bytes:
    """The token in `path`, surrounding whitespace dropped. `what` names the setting in errors
    (`api.token-file`, `--token-file`); the token itself is never part of a message."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read(MAX_TOKEN_FILE_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{what}: cannot read {path}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{what}: {path} is not a regular file")
    if st.st_mode & 0o066:
        raise ConfigError(f"{what}: {path} may be read or written by group or others "
                          f"(mode {stat.S_IMODE(st.st_mode):04o}); run chmod 600 {path}")
    if len(data) > MAX_TOKEN_FILE_BYTES:
        raise ConfigError(f"{what}: {path} is larger than {MAX_TOKEN_FILE_BYTES} bytes; it should hold one token")
    token = data.strip()
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"{what}: {path} holds {len(token)} characters; a token needs at least {MIN_TOKEN_CHARS} "
                          f"(e.g. openssl rand -hex 32 > {path})")
    if any(not 0x21 <= b <= 0x7E for b in token):
        raise ConfigError(f"{what}: {path}: the token must be printable ASCII without spaces (it goes in an HTTP header)")
    return token


def is_loopback(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host.lower() == "localhost"
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def _digest(value: bytes) -> bytes:
    # compare fixed-size digests: compare_digest on the raw values would reveal the token's length
    return hashlib.sha256(value).digest()


@dataclass
class ApiSecurity:
    token: bytes | None = None
    ssl_context: ssl.SSLContext | None = None
    client_certs: bool = False  # mutual TLS: clients present a certificate the configured CA signed

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context else "http"

    def authorized(self, authorization: str | None) -> bool:
        """Whether an `Authorization` header value carries the token (always true without a token)."""
        if self.token is None:
            return True
        scheme, _, credentials = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        presented = credentials.strip().encode("utf-8", "surrogateescape")
        return hmac.compare_digest(_digest(presented), _digest(self.token))

    @classmethod
    def from_config(cls, config: "Config") -> "ApiSecurity":
        """Read the token file and the TLS files; refuse an open API on a non-loopback address."""
        token_file = config["api.token-file"]
        token = read_token_file(token_file, "api.token-file") if token_file else None
        ctx, client_certs = _server_tls(*(config[k] for k in TLS_KEYS))
        host, port = config["api.addr"]
        if not is_loopback(host):
            if token is None and not client_certs and not config["api.allow-insecure"]:
                tls_note = (" (TLS without security.server-http-tls.ca encrypts but lets anyone in)" if ctx else "")
                raise ConfigError(
                    f"api.addr {host}:{port} is not a loopback address and the API has no authentication{tls_note}: "
                    f"anyone who reaches it could start captures and replays and read connection details. "
                    f"Set api.token-file, or security.server-http-tls.cert/key/ca for mutual TLS, "
                    f"or api.allow-insecure = true to accept the risk")
            if token is not None and ctx is None:
                log.warning("the API on %s:%d takes a bearer token over plain HTTP: anyone on the path can read it; "
                            "set security.server-http-tls.cert/key", host, port)
        return cls(token=token, ssl_context=ctx, client_certs=client_certs)


def _server_tls(cert: str, key: str, ca: str) -> tuple[ssl.SSLContext | None, bool]:
    from fastproxy.tls import server_context

    if not (cert or key or ca):
        return None, False
    if not (cert and key):
        raise ConfigError("security.server-http-tls: cert and key are both needed for TLS "
                          f"(cert={cert!r}, key={key!r})")
    return server_context(cert, key, ca, key_prefix="security.server-http-tls"), bool(ca)
