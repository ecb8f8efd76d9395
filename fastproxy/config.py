"""Configuration: one table of keys (named like TiProxy's) drives the TOML file, the command-line
flags (`--proxy.addr` ...) and the README's reference. A bad value gets a message naming its key."""
from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from typing import Any, Callable

from fastproxy.errors import ConfigError

_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
               "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30}
_TIME_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "": 1}


def parse_duration(value: Any, key: str = "duration") -> float:
    """Seconds from 30, "30s", "10m", "1h", "1h30m", "250ms"."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a duration like 30s, 10m, 1h; got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ConfigError(f"{key}: must not be negative, got {value!r}")
        return float(value)
    text = str(value).strip().lower()
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|h|m|s)?", text)
    if not text or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        raise ConfigError(f"{key}: expected a duration like 30s, 10m, 1h; got {value!r}")
    return sum(float(n) * _TIME_UNITS[u] for n, u in parts)


def parse_size(value: Any, key: str = "size") -> int:
    """Bytes from 1048576, "64MiB", "300MB", "1g"."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a size like 64MiB; got {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise ConfigError(f"{key}: must be positive, got {value!r}")
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", str(value).lower())
    if not m or m.group(2) not in _SIZE_UNITS:
        raise ConfigError(f"{key}: expected a size like 64MiB or 300MB; got {value!r}")
    size = int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
    if size <= 0:
        raise ConfigError(f"{key}: must be positive, got {value!r}")
    return size


def _at_least(convert: Callable[[Any, str], Any], low: float, shown: str) -> Callable[[Any, str], Any]:
    """`convert`, then refuse values below `low` (a zero buffer or interval is never meant)."""
    def conv(value: Any, key: str) -> Any:
        v = convert(value, key)
        if v < low:
            raise ConfigError(f"{key}: must be at least {shown}, got {value!r}")
        return v
    return conv


def parse_addr(value: Any, key: str = "addr") -> tuple[str, int]:
    text = str(value).strip()
    m = re.fullmatch(r"\[?([^\[\]]*?)\]?:(\d+)", text)
    if not m or not 0 <= int(m.group(2)) <= 65535:
        raise ConfigError(f"{key}: expected HOST:PORT, got {value!r}")
    return m.group(1) or "0.0.0.0", int(m.group(2))


def _addr_list(value: Any, key: str) -> list[tuple[str, int]]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list):
        raise ConfigError(f"{key}: expected a list of HOST:PORT, got {value!r}")
    addrs = [parse_addr(v, key) for v in items if str(v).strip()]
    if not addrs:
        raise ConfigError(f"{key}: at least one HOST:PORT is needed, got {value!r}")
    return addrs


def _int(lo: int) -> Callable[[Any, str], int]:
    def conv(value: Any, key: str) -> int:
        try:
            if isinstance(value, bool):
                raise ValueError
            n = int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
        if n < lo:
            raise ConfigError(f"{key}: must be >= {lo}, got {n}")
        return n
    return conv


def _workers(value: Any, key: str) -> int:
    if str(value).strip().lower() == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = _int(1)(value, key)
    if n > 1024:
        raise ConfigError(f"{key}: at most 1024 workers, got {n}")
    return n


def _level(value: Any, key: str) -> str:
    text = str(value).lower()
    if text not in ("debug", "info", "warn", "warning", "error"):
        raise ConfigError(f"{key}: expected one of debug, info, warn, error; got {value!r}")
    return "warning" if text == "warn" else text


def _io(value: Any, key: str) -> str:
    text = str(value).strip().lower().replace("-", "_")
    if text not in ("auto", "epoll", "io_uring"):
        raise ConfigError(f"{key}: expected one of auto, epoll, io_uring; got {value!r}")
    return text


def _str(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def _account_name(value: Any, key: str) -> str:
    name = _str(value, key)
    if "\x00" in name or len(name) > 128:
        raise ConfigError(f"{key}: expected a MariaDB/MySQL user name (at most 128 characters, no NUL), got {value!r}")
    return name


def _bool(value: Any, key: str) -> bool:
    """true/false from TOML booleans and from flag strings (true, false, 1, 0, yes, no, on, off)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{key}: expected true or false, got {value!r}")


def _tls_version(value: Any, key: str) -> str:
    from fastproxy.tls import min_version

    min_version(value, key)  # refuses what is not TLSv1.2 / TLSv1.3
    return str(value)


def _proxy_protocol(value: Any, key: str) -> str:
    text = _str(value, key).strip().lower()
    if text not in ("", "v2"):
        raise ConfigError(f"{key}: expected \"v2\" (v1 and v2 headers are both accepted) or \"\" (off), got {value!r}")
    return text


def _networks(value: Any, key: str) -> list:
    from fastproxy.proxy_protocol import parse_networks

    if not isinstance(value, (str, list)):
        raise ConfigError(f"{key}: expected a list of networks (CIDR), got {value!r}")
    return parse_networks(value, key)


@dataclass(frozen=True)
class Key:
    name: str
    default: Any
    convert: Callable[[Any, str], Any]
    help: str


KEYS: list[Key] = [
    Key("proxy.addr", "0.0.0.0:6000", parse_addr, "address clients connect to"),
    Key("proxy.backends", "127.0.0.1:3306", _addr_list, "backend MySQL/MariaDB servers (list, or comma-separated)"),
    Key("proxy.workers", "auto", _workers, "threads relaying connections (the data plane); auto = the number of CPUs"),
    Key("proxy.io", "auto", _io, "the data plane's I/O: io_uring, epoll, or auto = io_uring where the kernel and "
        "the container's seccomp profile allow it, else epoll"),
    Key("proxy.tls-in-dataplane", True, _bool, "relay TLS connections in the data plane (OpenSSL from C); false: "
        "in Python, as before the data plane could"),
    Key("proxy.max-connections", 0, _int(0), "client connections accepted at once (0 = no limit); beyond it clients get error 1040"),
    Key("proxy.graceful-close-conn-timeout", 15, parse_duration, "on SIGTERM, how long connections may finish their transaction"),
    Key("proxy.connect-timeout", "5s", _at_least(parse_duration, 0.01, "10ms"), "timeout to connect to a backend"),
    Key("proxy.max-packet-size", "1GiB", _at_least(parse_size, 1024, "1KiB"),
        "largest client packet accepted; larger closes the connection"),
    Key("proxy.health-check-interval", "2s", _at_least(parse_duration, 0.05, "50ms"), "how often each backend is checked"),
    Key("proxy.health-check-timeout", "2s", _at_least(parse_duration, 0.01, "10ms"),
        "a backend check slower than this fails"),
    Key("proxy.health-check-user", "", _account_name,
        "account the health check logs in as (no password, no privileges); empty = passive checks"),
    Key("api.addr", "127.0.0.1:3080", parse_addr, "HTTP API (traffic jobs, /metrics, health)"),
    Key("api.token-file", "", _str, "file holding the bearer token every API request but the health check must send "
        "(mode 0600 or stricter)"),
    Key("api.allow-insecure", False, _bool,
        "allow a non-loopback api.addr without api.token-file or mutual TLS (security.server-http-tls.ca)"),
    Key("api.max-connections", 64, _int(1), "API connections open at once; more are answered 503 and closed"),
    Key("api.fd-reserve", 0, _int(0), "file descriptors kept free for MySQL clients and backends: the API accepts "
        "no connection that would leave fewer (0 = a quarter of the open-files limit)"),
    Key("api.read-header-timeout", "10s", _at_least(parse_duration, 0.01, "10ms"),
        "time for a request's headers to arrive (also how long an idle API connection stays open)"),
    Key("api.read-body-timeout", "10s", _at_least(parse_duration, 0.01, "10ms"), "time for a request's body to arrive"),
    Key("api.max-body-size", "64KiB", _at_least(parse_size, 1024, "1KiB"), "largest request body; larger gets 413"),
    Key("log.level", "info", _level, "debug, info, warn or error"),
    Key("capture.buffer-size", "64MiB", _at_least(parse_size, 64 * 1024, "64KiB"),
        "in-memory capture buffer; when full the capture stops with an error"),
    Key("capture.large-record-buffer-size", "256MiB", parse_size,
        "memory for records larger than a quarter of capture.buffer-size while they wait for the writer; "
        "a record that would exceed it stops the capture with an error"),
    Key("capture.file-size", "300MiB", _at_least(parse_size, 1024, "1KiB"), "traffic files rotate beyond this size"),
    Key("capture.local-infile", False, _bool,
        "record the files clients send for LOAD DATA LOCAL INFILE, so replay sends the same rows"),
    Key("capture.local-infile-max-size", "16MiB", parse_size,
        "larger LOCAL INFILE files are only counted (at most capture.large-record-buffer-size is recorded)"),
    Key("security.encryption-key-path", "", _str, "key file for aes256-ctr capture encryption (>= 32 bytes)"),
    Key("security.server-http-tls.cert", "", _str, "TLS certificate (PEM) of the HTTP API; with .key, the API speaks https"),
    Key("security.server-http-tls.key", "", _str, "private key (PEM) of security.server-http-tls.cert"),
    Key("security.server-http-tls.ca", "", _str, "CA bundle (PEM): API clients must present a certificate it signed"),
    # TLS on the MySQL port (clients -> proxy) and towards the backends (proxy -> backends): README, "TLS"
    Key("security.server-tls.cert", "", _str, "TLS certificate (PEM) the proxy shows MySQL clients; with .key, "
        "the greeting offers TLS"),
    Key("security.server-tls.key", "", _str, "private key (PEM) of security.server-tls.cert"),
    Key("security.server-tls.ca", "", _str, "CA bundle (PEM): MySQL clients must present a certificate it signed"),
    Key("security.server-tls.min-tls-version", "TLSv1.2", _tls_version, "oldest TLS version clients may use "
        "(TLSv1.2 or TLSv1.3)"),
    Key("security.server-tls.auto-certs", False, _bool, "without .cert: make a self-signed certificate at startup "
        "(encrypts, does not prove the proxy's identity)"),
    Key("security.require-client-tls", False, _bool, "refuse MySQL clients that do not use TLS (error 1045 with "
        "the reason); needs security.server-tls"),
    Key("security.sql-tls.ca", "", _str, "CA bundle (PEM) the backends' certificates must chain to "
        "(empty: the system's roots)"),
    Key("security.sql-tls.cert", "", _str, "client certificate (PEM) the proxy shows the backends"),
    Key("security.sql-tls.key", "", _str, "private key (PEM) of security.sql-tls.cert"),
    Key("security.sql-tls.skip-ca", False, _bool, "encrypt to the backends without verifying their certificate"),
    Key("security.sql-tls.min-tls-version", "TLSv1.2", _tls_version, "oldest TLS version used towards the backends"),
    Key("security.require-backend-tls", False, _bool, "connect to the backends only over TLS: a backend that does "
        "not offer it is refused (and fails its health check)"),
    # the PROXY protocol (HAProxy's): README, "Behind a load balancer"
    Key("proxy.proxy-protocol", "", _proxy_protocol, "\"v2\": every client connection starts with a PROXY protocol "
        "header (v1 or v2), whose address becomes the client's; \"\" = off"),
    Key("proxy.proxy-protocol-networks", "", _networks, "peers (CIDR list) allowed to send a PROXY header; "
        "required with proxy.proxy-protocol (0.0.0.0/0, ::/0 trusts every peer)"),
    Key("proxy.proxy-protocol-timeout", "5s", _at_least(parse_duration, 0.01, "10ms"),
        "time for a PROXY header to arrive before the connection is refused"),
    Key("proxy.backend-proxy-protocol", False, _bool, "send a PROXY protocol v2 header to the backend, naming the "
        "real client (MariaDB: proxy_protocol_networks must include the proxy)"),
]
KEYS_BY_NAME = {k.name: k for k in KEYS}


class Config:
    """Resolved configuration: defaults < TOML file < command-line flags."""

    def __init__(self, values: dict[str, Any] | None = None) -> None:
        self._values = {k.name: k.convert(k.default, k.name) for k in KEYS}
        for name, value in (values or {}).items():
            self.set(name, value)

    def set(self, name: str, value: Any) -> None:
        key = KEYS_BY_NAME.get(name)
        if key is None:
            raise ConfigError(f"{name}: unknown configuration key (known: {', '.join(KEYS_BY_NAME)})")
        self._values[name] = key.convert(value, name)

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    @classmethod
    def load(cls, path: str | None = None, overrides: dict[str, Any] | None = None) -> "Config":
        cfg = cls()
        if path:
            try:
                with open(path, "rb") as f:
                    data = tomllib.load(f)
            except OSError as e:
                raise ConfigError(f"config file {path}: {e.strerror}") from None
            except tomllib.TOMLDecodeError as e:
                raise ConfigError(f"config file {path}: {e}") from None
            for name, value in _flatten(data):
                cfg.set(name, value)
        for name, value in (overrides or {}).items():
            if value is not None:
                cfg.set(name, value)
        return cfg


def _flatten(data: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in data.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.extend(_flatten(v, name + "."))
        else:
            out.append((name, v))
    return out
