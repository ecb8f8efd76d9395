"""TLS between clients and the proxy (security.server-tls): real clients (the mariadb CLI, PyMySQL,
mysqlclient) verify the proxy's certificate, present their own (mutual TLS), or fail with their own
error when something does not verify, while the proxy goes on serving the others; the capture of a
TLS connection is the capture of the same workload in plain text."""
from __future__ import annotations

import json
import ssl
import struct
import subprocess

import MySQLdb
import pymysql
import pytest

from capture_util import cancel_capture, read_capture, start_capture
from conftest import connect_kwargs
from fastproxy.capture.record import KIND_COMMAND, KIND_CONN_OPEN
from fastproxy.constants import CLIENT, ER
from fastproxy.protocol import parse_err
from fastproxy.scratch_db import ROOT_PASSWORD
from proxy_rawclient import RawClient, packet
from proxy_util import wait_for
from tls_certs import CertAuthority


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tls"))
    ca = CertAuthority(d, "proxy-ca")

    class Certs:
        pass

    c = Certs()
    c.ca, c.proxy, c.client = ca, ca.issue("proxy", server=True), ca.issue("client", server=False)
    c.expired_client = ca.issue("expired-client", server=False, expired=True)
    c.other = CertAuthority(d, "other-ca")
    c.other_client = c.other.issue("other-client", server=False)
    return c


def tls_proxy(proxy_factory, backend, certs, *extra):
    return proxy_factory([backend], f"--security.server-tls.cert={certs.proxy.cert}",
                         f"--security.server-tls.key={certs.proxy.key}", *extra)


def cli(port: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mariadb", "--no-defaults", "-h127.0.0.1", f"-P{port}", "--protocol=TCP", "-uroot",
                           f"-p{ROOT_PASSWORD}", *args], capture_output=True, text=True, timeout=60)


def client_tls_of_connections(proxy) -> list[str]:
    return [c["tls"]["client"] for c in proxy.get("/api/debug/connections")]


def test_mariadb_cli_verifies_the_proxy_certificate(proxy_factory, mariadb, certs):
    p = tls_proxy(proxy_factory, mariadb, certs)
    res = cli(p.port, "--ssl", "--ssl-verify-server-cert", f"--ssl-ca={certs.ca.pem.cert}", "-e",
              "status; SELECT 40 + 2 AS answer")
    assert res.returncode == 0, res.stderr
    ssl_line = next(line for line in res.stdout.splitlines() if line.startswith("SSL:"))
    assert "Cipher in use is" in ssl_line, res.stdout  # the CLI's own word that its side is encrypted
    assert "42" in res.stdout
    # plain text still works when TLS is offered, not required
    plain = cli(p.port, "--ssl=0", "-N", "-B", "-e", "SELECT 7")
    assert plain.returncode == 0 and plain.stdout.strip() == "7", plain.stderr


def test_python_connectors_over_tls(proxy_factory, mariadb, certs):
    p = tls_proxy(proxy_factory, mariadb, certs)
    conn = pymysql.connect(**connect_kwargs(p.port, ssl={"ca": certs.ca.pem.cert}))
    try:
        assert conn._sock.version() in ("TLSv1.2", "TLSv1.3")
        with conn.cursor() as cur:
            cur.execute("SELECT REPEAT('x', 100000), 1")  # larger than a TLS record: split and joined again
            value, one = cur.fetchone()
            assert len(value) == 100000 and one == 1
        assert client_tls_of_connections(p) == [conn._sock.version()]
    finally:
        conn.close()
    my = MySQLdb.connect(host="127.0.0.1", port=p.port, user="root", password=ROOT_PASSWORD,
                         ssl={"ca": certs.ca.pem.cert}, ssl_mode="VERIFY_CA")
    try:
        cur = my.cursor()
        cur.execute("SELECT 5 * 5")
        assert cur.fetchone() == (25,)
        assert client_tls_of_connections(p)[0].startswith("TLSv1.")
    finally:
        my.close()
    # MariaDB Connector/Python (MySQL's Connector/Python is not installed here)
    import mariadb as mariadb_connector

    mc = mariadb_connector.connect(host="127.0.0.1", port=p.port, user="root", password=ROOT_PASSWORD,
                                   ssl_ca=certs.ca.pem.cert, ssl_verify_cert=True)
    try:
        cur = mc.cursor()
        cur.execute("SELECT 6 * 7")
        assert cur.fetchone() == (42,)
        assert client_tls_of_connections(p)[0].startswith("TLSv1.")
    finally:
        mc.close()
    with pytest.raises(mariadb_connector.Error) as ei:
        mariadb_connector.connect(host="127.0.0.1", port=p.port, user="root", password=ROOT_PASSWORD,
                                  ssl_ca=certs.other.pem.cert, ssl_verify_cert=True)
    assert "certificate" in str(ei.value).lower() or "2026" in str(ei.value), ei.value


def test_mutual_tls(proxy_factory, mariadb, certs):
    p = tls_proxy(proxy_factory, mariadb, certs, f"--security.server-tls.ca={certs.ca.pem.cert}")
    good = pymysql.connect(**connect_kwargs(p.port, ssl={"ca": certs.ca.pem.cert, "cert": certs.client.cert,
                                                         "key": certs.client.key}))
    # the others fail with their own TLS error, which says why (the proxy's TLS alert reached them),
    # and `good` is not disturbed
    for bad, why in (({"ca": certs.ca.pem.cert}, "alert certificate required"),  # no client certificate
                     ({"ca": certs.ca.pem.cert, "cert": certs.expired_client.cert, "key": certs.expired_client.key},
                      "alert certificate expired"),
                     ({"ca": certs.ca.pem.cert, "cert": certs.other_client.cert, "key": certs.other_client.key},
                      "alert unknown ca")):
        with pytest.raises(pymysql.err.OperationalError) as ei:
            pymysql.connect(**connect_kwargs(p.port, ssl=bad, connect_timeout=10))
        assert why in str(ei.value)
    res = cli(p.port, "--ssl-verify-server-cert", f"--ssl-ca={certs.ca.pem.cert}", "-e", "SELECT 1")
    assert res.returncode == 1 and "2026" in res.stderr and "alert certificate required" in res.stderr, res.stderr
    with good.cursor() as cur:
        cur.execute("SELECT 'still here'")
        assert cur.fetchone() == ("still here",)
    good.close()
    log = p.read_log()
    assert log.count("TLS handshake with the client failed") == 4
    assert "certificate has expired" in log


def test_wrong_ca_gives_the_clients_own_error(proxy_factory, mariadb, certs):
    p = tls_proxy(proxy_factory, mariadb, certs)
    with pytest.raises(pymysql.err.OperationalError) as ei:
        pymysql.connect(**connect_kwargs(p.port, ssl={"ca": certs.other.pem.cert}))
    assert "CERTIFICATE_VERIFY_FAILED" in str(ei.value)
    res = cli(p.port, "--ssl-verify-server-cert", f"--ssl-ca={certs.other.pem.cert}", "-e", "SELECT 1")
    assert res.returncode == 1 and "2026" in res.stderr, res.stderr  # CR_SSL_CONNECTION_ERROR
    conn = pymysql.connect(**connect_kwargs(p.port, ssl={"ca": certs.ca.pem.cert}))
    conn.close()


def test_expired_proxy_certificate_gives_the_clients_own_error(proxy_factory, mariadb, certs):
    expired = certs.ca.issue("expired-proxy", server=True, expired=True)
    p = proxy_factory([mariadb], f"--security.server-tls.cert={expired.cert}", f"--security.server-tls.key={expired.key}")
    with pytest.raises(pymysql.err.OperationalError) as ei:
        pymysql.connect(**connect_kwargs(p.port, ssl={"ca": certs.ca.pem.cert}))
    assert "certificate has expired" in str(ei.value)
    res = cli(p.port, "--ssl-verify-server-cert", f"--ssl-ca={certs.ca.pem.cert}", "-e", "SELECT 1")
    assert res.returncode == 1 and "2026" in res.stderr, res.stderr
    conn = pymysql.connect(**connect_kwargs(p.port, ssl_disabled=True))  # the proxy serves on
    conn.close()


def test_require_client_tls_refuses_plain_clients(proxy_factory, mariadb, certs):
    p = tls_proxy(proxy_factory, mariadb, certs, "--security.require-client-tls=true")
    with pytest.raises(pymysql.err.OperationalError) as ei:
        pymysql.connect(**connect_kwargs(p.port, ssl_disabled=True))  # PyMySQL prefers TLS when offered
    code, message = ei.value.args
    assert code == ER.ACCESS_DENIED_ERROR and "requires TLS" in message
    res = cli(p.port, "--ssl=0", "-e", "SELECT 1")
    assert res.returncode == 1 and "requires TLS" in res.stderr, res.stderr
    conn = pymysql.connect(**connect_kwargs(p.port, ssl={"ca": certs.ca.pem.cert}))
    conn.close()


def test_auto_certs(proxy_factory, mariadb):
    p = proxy_factory([mariadb], "--security.server-tls.auto-certs=true")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # a self-signed certificate proves nothing
    conn = pymysql.connect(**connect_kwargs(p.port, ssl=ctx))
    cert = conn._sock.getpeercert(binary_form=True)
    conn.close()
    from cryptography import x509

    assert x509.load_der_x509_certificate(cert).subject.rfc4514_string() == "CN=fastproxy"


def test_min_tls_version(proxy_factory, mariadb, certs):
    p = tls_proxy(proxy_factory, mariadb, certs, "--security.server-tls.min-tls-version=TLSv1.3")
    ctx = ssl.create_default_context(cafile=certs.ca.pem.cert)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(pymysql.err.OperationalError):
        pymysql.connect(**connect_kwargs(p.port, ssl=ctx))
    conn = pymysql.connect(**connect_kwargs(p.port, ssl={"ca": certs.ca.pem.cert}))
    assert conn._sock.version() == "TLSv1.3"
    conn.close()


class TlsRawClient(RawClient):
    """A raw client that sends its SSL request and its TLS ClientHello in one write, as a fast
    client on a slow network may arrive: the proxy must hand the bytes it already read to TLS."""

    def __init__(self, port: int, ca: str) -> None:
        super().__init__(port)
        self.ctx = ssl.create_default_context(cafile=ca)
        self.tls = None

    def start_tls(self, ssl_request: bytes) -> None:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = self.ctx.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
        self._in, self._out = incoming, outgoing
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        self.sock.sendall(ssl_request + outgoing.read())  # the whole point: one write
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if outgoing.pending:
                    self.sock.sendall(outgoing.read())
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("closed during the TLS handshake")
                incoming.write(data)
        if outgoing.pending:
            self.sock.sendall(outgoing.read())

    def send(self, data: bytes) -> None:
        if self.tls is None:
            return super().send(data)
        self.tls.write(data)
        self.sock.sendall(self._out.read())

    def _recv_exact(self, n: int) -> bytes:
        if self.tls is None:
            return super()._recv_exact(n)
        buf = b""
        while len(buf) < n:
            try:
                buf += self.tls.read(n - len(buf))
            except ssl.SSLWantReadError:
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("closed by peer") from None
                self._in.write(data)
        return buf


def test_ssl_request_and_client_hello_in_one_read(proxy_factory, mariadb, certs):
    from proxy_rawclient import native_scramble

    p = tls_proxy(proxy_factory, mariadb, certs)
    c = TlsRawClient(p.port, certs.ca.pem.cert)
    seq, greeting = c.read_packet()
    pos = greeting.index(b"\x00", 1) + 1
    salt = greeting[pos + 4:pos + 12]
    caps = struct.unpack_from("<H", greeting, pos + 13)[0]
    assert caps & CLIENT.SSL  # offered
    salt += greeting[pos + 31:pos + 43]
    my_caps = (CLIENT.LONG_PASSWORD | CLIENT.PROTOCOL_41 | CLIENT.SECURE_CONNECTION | CLIENT.PLUGIN_AUTH
               | CLIENT.TRANSACTIONS | CLIENT.SSL)
    head = struct.pack("<IIB", my_caps, 1 << 24, 45) + bytes(23)
    c.start_tls(packet(1, head))
    auth = native_scramble(ROOT_PASSWORD, salt)
    c.send(packet(2, head + b"root\x00" + bytes([len(auth)]) + auth + b"mysql_native_password\x00"))
    seq, reply = c.read_packet()
    if reply[0] == 0xFE:  # auth switch
        plugin_end = reply.index(b"\x00", 1)
        c.send(packet(seq + 1, native_scramble(ROOT_PASSWORD, reply[plugin_end + 1:].rstrip(b"\x00"))))
        seq, reply = c.read_packet()
    assert reply[0] == 0 and seq in (3, 5), (seq, reply)  # numbered as inside TLS (the backend's + 1)
    assert c.query("SELECT 1")[0] == 1  # a result set with one column
    c.close()


def test_second_ssl_request_inside_tls_is_refused(proxy_factory, mariadb, certs):
    p = tls_proxy(proxy_factory, mariadb, certs)
    c = TlsRawClient(p.port, certs.ca.pem.cert)
    c.read_packet()
    head = struct.pack("<IIB", CLIENT.PROTOCOL_41 | CLIENT.SECURE_CONNECTION | CLIENT.SSL, 1 << 24, 45) + bytes(23)
    c.start_tls(packet(1, head))
    c.send(packet(2, head))
    seq, reply = c.read_packet()
    assert parse_err(reply)[0] == ER.HANDSHAKE_ERROR
    c.close()


def _workload(conn) -> None:
    with conn.cursor() as cur:
        for sql in ("CREATE DATABASE IF NOT EXISTS tlscap", "USE tlscap", "INSERT INTO t (v) VALUES ('a'), ('b')",
                    "SELECT id, v FROM t ORDER BY id", "BEGIN", "UPDATE t SET v = 'c' WHERE id = 2", "COMMIT",
                    "SELECT COUNT(*), GROUP_CONCAT(v ORDER BY id) FROM t"):
            cur.execute(sql)
        with pytest.raises(pymysql.err.ProgrammingError):
            cur.execute("SELECT * FROM no_such_table")


def _comparable(records) -> list:
    out = []
    for r in records:
        if r.kind == KIND_CONN_OPEN:
            body = json.loads(r.payload)
            for varying in ("client_addr", "backend_conn_id"):
                body.pop(varying)
            out.append(("open", body))
        elif r.kind == KIND_COMMAND:
            out.append(r._replace(conn_id=0, start_ns=0, end_ns=0))
        else:
            out.append((r.kind, r.payload))
    return out


def test_capture_through_tls_equals_capture_in_plain_text(proxy_factory, mariadb, certs, tmp_path):
    p = tls_proxy(proxy_factory, mariadb, certs)
    seen = []
    for name, extra in (("plain", {"ssl_disabled": True}), ("tls", {"ssl": {"ca": certs.ca.pem.cert}})):
        mariadb.sql("DROP DATABASE IF EXISTS tlscap; CREATE DATABASE tlscap;"
                    "CREATE TABLE tlscap.t (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(10))")
        start_capture(p, tmp_path / name)
        conn = pymysql.connect(**connect_kwargs(p.port, **extra))
        assert (name == "tls") == isinstance(conn._sock, ssl.SSLSocket)
        _workload(conn)
        conn.close()
        # the QUIT and the close are recorded once the proxy has seen them: close() does not wait
        wait_for(lambda: not p.get("/api/debug/connections"), what="the connection to close")
        cancel_capture(p)
        _, records, _ = read_capture(tmp_path / name)
        seen.append(_comparable(records))
    plain, tls = seen
    assert len(plain) > 10
    assert plain == tls


def test_plain_proxy_still_refuses_ssl_requests(proxy_factory, mariadb):
    """Without server-tls the greeting does not offer TLS and an SSL request gets 1043 (as before)."""
    p = proxy_factory([mariadb])
    c = RawClient(p.port)
    _, greeting = c.read_packet()
    pos = greeting.index(b"\x00", 1) + 1
    assert not struct.unpack_from("<H", greeting, pos + 13)[0] & CLIENT.SSL
    c.send(packet(1, struct.pack("<IIB", CLIENT.PROTOCOL_41 | CLIENT.SSL, 1 << 24, 45) + bytes(23)))
    assert parse_err(c.read_packet()[1])[0] == ER.HANDSHAKE_ERROR
    c.close()


def test_bad_server_tls_settings_stop_the_start(tmp_path, mariadb):
    from capture_util import run_cli

    res = run_cli("serve", "--proxy.addr=127.0.0.1:0", "--api.addr=127.0.0.1:0", f"--proxy.backends={mariadb.addr}",
                  f"--security.server-tls.cert={tmp_path}/missing.pem", f"--security.server-tls.key={tmp_path}/k.pem")
    assert res.returncode != 0 and "security.server-tls" in res.stderr, res.stderr
    res = run_cli("serve", "--proxy.addr=127.0.0.1:0", "--api.addr=127.0.0.1:0", f"--proxy.backends={mariadb.addr}",
                  "--security.require-client-tls=true")
    assert res.returncode != 0 and "security.require-client-tls" in res.stderr, res.stderr

