"""TLS settings turned into ssl.SSLContexts, for the proxy's two sides and for replay connections,
and the self-signed certificate `auto-certs` makes when no certificate is configured."""
from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
import tempfile

from fastproxy.errors import ConfigError

TLS_VERSIONS = {"tlsv1.2": ssl.TLSVersion.TLSv1_2, "tls1.2": ssl.TLSVersion.TLSv1_2, "1.2": ssl.TLSVersion.TLSv1_2,
                "tlsv1.3": ssl.TLSVersion.TLSv1_3, "tls1.3": ssl.TLSVersion.TLSv1_3, "1.3": ssl.TLSVersion.TLSv1_3}


def min_version(value: str, key: str) -> ssl.TLSVersion:
    v = TLS_VERSIONS.get(str(value or "tlsv1.2").strip().lower())
    if v is None:
        raise ConfigError(f"{key}: expected TLSv1.2 or TLSv1.3, got {value!r}")
    return v


def self_signed(directory: str, common_name: str = "fastproxy", days: int = 365) -> tuple[str, str]:
    """Write a new self-signed certificate and its key (0600) under `directory`; return their paths.
    As TiProxy's auto-certs: enough to encrypt, not to authenticate (clients must skip verification or
    trust this file)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    sans = [x509.DNSName("localhost"), x509.DNSName(socket.gethostname()),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1"))]
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path = os.path.join(directory, "fastproxy-auto-cert.pem")
    key_path = os.path.join(directory, "fastproxy-auto-key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path


def server_context(cert: str = "", key: str = "", ca: str = "", min_tls: str = "tlsv1.2", auto_certs: bool = False,
                   key_prefix: str = "security.server-tls") -> ssl.SSLContext:
    """Context for a side where fastproxy is the TLS server. With `ca`, clients must present a
    certificate that it signed."""
    if not cert and auto_certs:
        cert, key = self_signed(tempfile.mkdtemp(prefix="fastproxy-certs-"))
    if not cert or not key:
        raise ConfigError(f"{key_prefix}: cert and key are both needed (or auto-certs = true)")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = min_version(min_tls, f"{key_prefix}.min-tls-version")
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"{key_prefix}.cert / .key: cannot load {cert} with {key}: {e}") from None
    if ca:
        try:
            ctx.load_verify_locations(ca)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"{key_prefix}.ca: cannot load {ca}: {e}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(ca: str = "", cert: str = "", key: str = "", skip_verify: bool = False,
                   min_tls: str = "tlsv1.2", key_prefix: str = "security.sql-tls") -> ssl.SSLContext:
    """Context for a side where fastproxy (or replay) is the TLS client. `skip_verify` encrypts
    without checking who answers; otherwise the server's certificate must chain to `ca` (or the
    system's roots) — the host name is not checked, as MySQL clients' VERIFY_CA mode."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = min_version(min_tls, f"{key_prefix}.min-tls-version")
    if skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            if ca:
                ctx.load_verify_locations(ca)
            else:
                ctx.load_default_certs()
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"{key_prefix}.ca: cannot load {ca}: {e}") from None
    if cert:
        try:
            ctx.load_cert_chain(cert, key or None)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"{key_prefix}.cert / .key: cannot load {cert}: {e}") from None
    return ctx
