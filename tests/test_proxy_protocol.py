"""PROXY protocol headers: parsed as a real HAProxy sends them (v1 and v2, IPv4 and IPv6), built so
that a real parser reads them back, and refused when malformed."""
from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time

import pytest

from fastproxy.proxy_protocol import (ProxyProtocolError, allowed, build_v2, header_length, parse,
                                      parse_networks)
from fastproxy.scratch_db import free_port


def _haproxy_header(version: str, family: str = "ipv4") -> tuple[bytes, tuple[str, int]]:
    """Connect through a real HAProxy (send-proxy / send-proxy-v2) to a raw listener; return the
    header bytes HAProxy wrote and the client address it should name."""
    host = "127.0.0.1" if family == "ipv4" else "::1"
    fam = socket.AF_INET if family == "ipv4" else socket.AF_INET6
    listener = socket.socket(fam, socket.SOCK_STREAM)
    listener.bind((host, 0))
    listener.listen(1)
    port = free_port()
    d = tempfile.mkdtemp(prefix="fastproxy-pp-")
    bind = f"127.0.0.1:{port}" if family == "ipv4" else f"[::1]:{port}"
    server = f"127.0.0.1:{listener.getsockname()[1]}" if family == "ipv4" else f"[::1]:{listener.getsockname()[1]}"
    with open(f"{d}/haproxy.cfg", "w") as f:
        f.write(f"""global
    nbthread 1
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend fe
    bind {bind}
    default_backend be
backend be
    server s {server} {'send-proxy-v2' if version == 'v2' else 'send-proxy'}
""")
    proc = subprocess.Popen([shutil.which("haproxy"), "-db", "-f", f"{d}/haproxy.cfg"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                client = socket.create_connection((host, port), timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.sendall(b"hello")
        listener.settimeout(10)
        conn, _ = listener.accept()
        conn.settimeout(10)
        data = b""
        while not data.endswith(b"hello"):
            data += conn.recv(4096)
        me = client.getsockname()[:2]
        client.close()
        conn.close()
        return data[:-5], me
    finally:
        proc.terminate()
        proc.wait(10)
        listener.close()
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_headers_from_a_real_haproxy(version, family):
    raw, (addr, port) = _haproxy_header(version, family)
    assert header_length(raw) == len(raw)
    for cut in range(len(raw)):  # arriving in pieces: "need more" until it is whole
        assert header_length(raw[:cut]) == 0
    h = parse(raw)
    assert h.version == int(version[1]) and not h.local
    assert (h.src_addr, h.src_port) == (addr, port)


def test_built_v2_header_reads_back():
    for src, dst in ((("10.1.2.3", 40000), ("10.9.9.9", 3306)), (("2001:db8::7", 1), ("2001:db8::1", 3306)),
                     (("192.0.2.5", 5555), ("::1", 3306))):
        raw = build_v2(src, dst)
        assert header_length(raw + b"rest") == len(raw)
        h = parse(raw)
        assert h.src_port == src[1] and h.dst_port == dst[1]
        assert h.src_addr in (src[0], f"::ffff:{src[0]}")
    assert parse(build_v2(("10.1.2.3", 40000), ("10.9.9.9", 3306))).client_addr == "10.1.2.3:40000"


@pytest.mark.parametrize("raw", [
    b"GET / HTTP/1.1\r\n",                                 # not a PROXY header at all
    b"\x03\x00\x00\x00",                                   # a MySQL packet
    b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n",             # port out of range
    b"PROXY TCP4 ::1 5.6.7.8 1 1\r\n",                     # family mismatch
    b"PROXY TCP4 1.2.3.4\r\n",                             # too few fields
    b"PROXY " + b"x" * 120,                                # longer than a v1 line can be
    b"\r\n\r\n\x00\r\nQUIT\n\x31\x11\x00\x0c" + b"\x00" * 12,  # version 3
    b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff",            # absurd length
])
def test_malformed_headers_are_refused(raw):
    with pytest.raises(ProxyProtocolError):
        n = header_length(raw)
        assert n, "incomplete where it should be refused"
        parse(raw[:n])


def test_local_and_unknown_carry_no_client():
    assert parse(b"PROXY UNKNOWN\r\n").client_addr is None
    local = b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"
    assert header_length(local) == len(local) and parse(local).local


def test_allowed_networks():
    nets = parse_networks("10.0.0.0/8, 127.0.0.1, ::1")
    assert allowed("10.2.3.4", nets) and allowed("127.0.0.1", nets) and allowed("::1", nets)
    assert allowed("::ffff:10.0.0.1", nets)  # an IPv4 peer on a dual-stack socket
    assert not allowed("192.168.1.1", nets) and not allowed("127.0.0.2", nets) and not allowed("junk", nets)
    from fastproxy.errors import ConfigError

    with pytest.raises(ConfigError, match="proxy-protocol-networks"):
        parse_networks("10.0.0.0/33")
