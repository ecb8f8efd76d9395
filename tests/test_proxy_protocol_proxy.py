"""The PROXY protocol through the proxy: a real HAProxy (`send-proxy-v2` / `send-proxy`) in front of
fastproxy (`proxy.proxy-protocol`), a MariaDB with `proxy_protocol_networks` behind it
(`proxy.backend-proxy-protocol`): the client's own address reaches MariaDB (processlist, host-based
grants), the proxy's sessions, logs, API and capture. Headers from peers outside
`proxy.proxy-protocol-networks`, missing or malformed headers are refused. Loopback only: the
"client" binds 127.0.0.5, so its address differs from HAProxy's and the proxy's (127.0.0.1)."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time

import pymysql
import pytest

from capture_util import cancel_capture, read_capture, start_capture
from fastproxy.capture.record import KIND_CONN_OPEN
from fastproxy.constants import ER
from fastproxy.protocol import parse_err
from fastproxy.proxy_protocol import build_v2
from fastproxy.scratch_db import ScratchMariaDB, free_port
from proxy_rawclient import RawClient
from proxy_util import wait_for

CLIENT_IP = "127.0.0.5"


@pytest.fixture(scope="module")
def pp_db():
    """A MariaDB that takes PROXY headers from the proxy's address, with an account for the client's
    address only (a host-based grant)."""
    with ScratchMariaDB(name="pp", extra_args=["--proxy-protocol-networks=127.0.0.1/32"]) as db:
        db.sql(f"CREATE USER app@'{CLIENT_IP}' IDENTIFIED BY 'apppw'; GRANT ALL ON *.* TO app@'{CLIENT_IP}';")
        yield db


class HAProxy:
    def __init__(self, target_port: int, send: str) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="fastproxy-haproxy-")
        with open(f"{self.dir}/haproxy.cfg", "w") as f:
            f.write(f"""global
    nbthread 1
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend fe
    bind 127.0.0.1:{self.port}
    default_backend be
backend be
    server fastproxy 127.0.0.1:{target_port} {send}
""")
        self.proc = subprocess.Popen([shutil.which("haproxy"), "-db", "-f", f"{self.dir}/haproxy.cfg"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:  # listening?
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("haproxy did not start")
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def haproxy_factory():
    started = []

    def make(target_port: int, send: str) -> HAProxy:
        h = HAProxy(target_port, send)
        started.append(h)
        return h

    yield make
    for h in started:
        h.stop()


def pp_proxy(proxy_factory, db, *extra):
    return proxy_factory([db], "--proxy.proxy-protocol=v2", "--proxy.proxy-protocol-networks=127.0.0.1/32",
                         "--proxy.proxy-protocol-timeout=1s", *extra)


def app_login(port: int, **extra):
    return pymysql.connect(host="127.0.0.1", port=port, user="app", password="apppw", bind_address=CLIENT_IP,
                           ssl_disabled=True, **extra)


@pytest.mark.parametrize("send", ["send-proxy-v2", "send-proxy"])
def test_the_clients_address_goes_all_the_way(proxy_factory, haproxy_factory, pp_db, send, tmp_path):
    p = pp_proxy(proxy_factory, pp_db, "--proxy.backend-proxy-protocol=true")
    h = haproxy_factory(p.port, send)
    start_capture(p, tmp_path / "cap")
    conn = app_login(h.port)
    me = "%s:%d" % conn._sock.getsockname()[:2]
    assert me.startswith(CLIENT_IP + ":")
    with conn.cursor() as cur:
        cur.execute("SELECT host FROM information_schema.processlist WHERE id = CONNECTION_ID()")
        assert cur.fetchone() == (me,)  # MariaDB saw the client, not HAProxy nor fastproxy
        cur.execute("SELECT CURRENT_USER()")
        assert cur.fetchone() == (f"app@{CLIENT_IP}",)  # the host-based grant matched
    (c,) = p.get("/api/debug/connections")
    assert c["client_addr"] == me
    conn.close()
    cancel_capture(p)
    _, records, _ = read_capture(tmp_path / "cap")
    (opened,) = [json.loads(r.payload) for r in records if r.kind == KIND_CONN_OPEN]
    assert opened["client_addr"] == me
    # logs name the client too (a refused login is logged with its address)
    with pytest.raises(pymysql.err.OperationalError):
        pymysql.connect(host="127.0.0.1", port=h.port, user="app", password="wrong", bind_address=CLIENT_IP,
                        ssl_disabled=True)
    wait_for(lambda: f"({CLIENT_IP}:" in p.read_log(), what="the refused login's log line")  # written after the ERR


def test_without_backend_proxy_protocol_the_grant_does_not_match(proxy_factory, haproxy_factory, pp_db):
    """What backend-proxy-protocol is for: without it MariaDB sees the proxy's address."""
    p = pp_proxy(proxy_factory, pp_db)
    h = haproxy_factory(p.port, "send-proxy-v2")
    with pytest.raises(pymysql.err.OperationalError) as ei:
        app_login(h.port)
    assert ei.value.args[0] == ER.ACCESS_DENIED_ERROR and "127.0.0.1" in ei.value.args[1]


def _raw(port: int, source: str, data: bytes) -> tuple[int, str, bool]:
    s = socket.socket()
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    c = RawClient.__new__(RawClient)
    c.sock = s
    s.settimeout(10)
    if data:
        s.sendall(data)
    try:
        seq, reply = c.read_packet()
        code, _, message = parse_err(reply) if reply[:1] == b"\xff" else (0, "", reply.hex())
        return code, message, c.closed_by_peer()
    finally:
        s.close()


def test_headers_are_refused_from_outside_the_networks(proxy_factory, pp_db):
    p = pp_proxy(proxy_factory, pp_db)
    header = build_v2(("127.0.0.9", 40000), ("127.0.0.1", p.port))
    code, message, closed = _raw(p.port, "127.0.0.2", header)  # a peer not in proxy-protocol-networks
    assert code == ER.HOST_NOT_PRIVILEGED and "127.0.0.2" in message and closed
    assert "proxy-protocol-networks" in message
    # the same header from an allowed peer gets a greeting (protocol version 10)
    s = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    s.sendall(header)
    assert s.recv(5)[4:5] == b"\x0a"
    s.close()


def test_missing_or_malformed_header_is_refused(proxy_factory, pp_db):
    p = pp_proxy(proxy_factory, pp_db)
    # a MySQL client straight to the proxy sends nothing before the greeting: refused after the timeout
    with pytest.raises(pymysql.err.OperationalError) as ei:
        pymysql.connect(host="127.0.0.1", port=p.port, user="app", password="apppw", ssl_disabled=True,
                        connect_timeout=20)
    assert ei.value.args[0] == ER.HANDSHAKE_ERROR and "no PROXY protocol header" in ei.value.args[1]
    code, message, closed = _raw(p.port, "127.0.0.1", b"GET / HTTP/1.1\r\n\r\n")
    assert code == ER.HANDSHAKE_ERROR and "PROXY protocol" in message and closed
    code, message, closed = _raw(p.port, "127.0.0.1", b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n")
    assert code == ER.HANDSHAKE_ERROR and "malformed PROXY protocol v1 line" in message and closed
    # a LOCAL header (a balancer's own check) keeps the socket's address
    local = b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"
    s = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    s.sendall(local)
    assert s.recv(5)[4:5] == b"\x0a"
    s.close()


def test_proxy_protocol_needs_its_networks(mariadb):
    from capture_util import run_cli

    res = run_cli("serve", "--proxy.addr=127.0.0.1:0", "--api.addr=127.0.0.1:0", f"--proxy.backends={mariadb.addr}",
                  "--proxy.proxy-protocol=v2")
    assert res.returncode != 0 and "proxy.proxy-protocol-networks" in res.stderr, res.stderr
    res = run_cli("serve", "--proxy.addr=127.0.0.1:0", "--api.addr=127.0.0.1:0", f"--proxy.backends={mariadb.addr}",
                  "--proxy.proxy-protocol=v3")
    assert res.returncode != 0 and "proxy.proxy-protocol" in res.stderr, res.stderr
