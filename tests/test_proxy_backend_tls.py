"""TLS between the proxy and its backends (security.sql-tls, security.require-backend-tls), against
a MariaDB with require_secure_transport=ON: every mix of plain and TLS on the two sides works, the
backend's certificate is verified (or not, with skip-ca), the proxy can show a client certificate
(REQUIRE X509 accounts), and health checks connect the same way."""
from __future__ import annotations

import pymysql
import pytest

from conftest import connect_kwargs
from fastproxy.constants import ER
from fastproxy.scratch_db import ROOT_PASSWORD
from proxy_util import health, wait_for
from tls_certs import CertAuthority, secure_transport_mariadb


@pytest.fixture(scope="module")
def tls_db(tmp_path_factory):
    """(server, its CA, another CA, a client certificate from its CA)."""
    d = str(tmp_path_factory.mktemp("tls"))
    db, ca = secure_transport_mariadb(d, "tlsdb", "db-ca")
    with db:
        db.sql("CREATE USER fpcheck@'127.0.0.1';"  # the health check's account: no password, no privileges
               "CREATE USER x509user@'127.0.0.1' IDENTIFIED BY 'x509pw' REQUIRE X509;")
        yield db, ca, CertAuthority(d, "other-ca"), ca.issue("proxy-client", server=False)


def session_status(conn, name: str) -> str:
    with conn.cursor() as cur:
        cur.execute(f"SHOW SESSION STATUS LIKE '{name}'")
        row = cur.fetchone()
    return row[1] if row else ""


def connection_tls(proxy) -> dict:
    (c,) = proxy.get("/api/debug/connections")
    return c["tls"]


def test_plain_client_to_tls_backend(proxy_factory, tls_db):
    db, ca, _, _ = tls_db
    p = proxy_factory([db], f"--security.sql-tls.ca={ca.pem.cert}")
    conn = pymysql.connect(**connect_kwargs(p.port, ssl_disabled=True))
    try:
        assert session_status(conn, "Ssl_cipher")  # the backend's word: its side is encrypted
        assert session_status(conn, "Ssl_version").startswith("TLSv1.")
        assert connection_tls(p) == {"client": "", "backend": session_status(conn, "Ssl_version")}
    finally:
        conn.close()


def test_without_sql_tls_the_backend_refuses(proxy_factory, tls_db):
    db, _, _, _ = tls_db
    p = proxy_factory([db])
    with pytest.raises(pymysql.err.OperationalError) as ei:
        pymysql.connect(**connect_kwargs(p.port, ssl_disabled=True))
    assert ei.value.args[0] == ER.ACCESS_DENIED_ERROR  # MariaDB's answer to a plain login under require_secure_transport


def test_tls_on_both_sides(proxy_factory, tls_db, tmp_path):
    db, ca, _, _ = tls_db
    proxy_ca = CertAuthority(str(tmp_path), "proxy-ca")
    proxy_cert = proxy_ca.issue("proxy", server=True)
    p = proxy_factory([db], f"--security.sql-tls.ca={ca.pem.cert}", f"--security.server-tls.cert={proxy_cert.cert}",
                      f"--security.server-tls.key={proxy_cert.key}")
    conn = pymysql.connect(**connect_kwargs(p.port, ssl={"ca": proxy_ca.pem.cert}))
    try:
        assert session_status(conn, "Ssl_cipher")
        tls = connection_tls(p)
        assert tls["client"] == conn._sock.version() and tls["backend"].startswith("TLSv1.")
        with conn.cursor() as cur:
            cur.execute("SELECT REPEAT('y', 300000)")  # many TLS records on both legs
            assert cur.fetchone()[0] == "y" * 300000
    finally:
        conn.close()
    import subprocess

    res = subprocess.run(["mariadb", "--no-defaults", "-h127.0.0.1", f"-P{p.port}", "--protocol=TCP", "-uroot",
                          f"-p{ROOT_PASSWORD}", "--ssl-verify-server-cert", f"--ssl-ca={proxy_ca.pem.cert}", "-N",
                          "-B", "-e", "SHOW STATUS LIKE 'Ssl_cipher'"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    name, cipher = res.stdout.strip().split("\t")
    assert name == "Ssl_cipher" and cipher


def test_sql_tls_towards_a_plain_backend(proxy_factory, mariadb):
    """sql-tls without require-backend-tls: a backend that does not offer TLS is used in plain text."""
    p = proxy_factory([mariadb], "--security.sql-tls.skip-ca=true")
    conn = pymysql.connect(**connect_kwargs(p.port, ssl_disabled=True))
    assert session_status(conn, "Ssl_cipher") == ""
    assert connection_tls(p) == {"client": "", "backend": ""}
    conn.close()


def test_require_backend_tls_refuses_a_plain_backend(proxy_factory, mariadb):
    p = proxy_factory([mariadb], "--security.require-backend-tls=true", "--security.sql-tls.skip-ca=true")
    with pytest.raises(pymysql.err.OperationalError) as ei:
        pymysql.connect(**connect_kwargs(p.port, ssl_disabled=True))
    assert "does not offer TLS" in ei.value.args[1]
    # the passive check (no check user) says why too
    b = wait_for(lambda: (lambda b: b if "does not offer TLS" in b["error"] else None)(health(p)["backends"][0]),
                 what="the backend marked down")
    assert not b["healthy"]


def test_backend_certificate_from_another_ca(proxy_factory, tls_db):
    db, _, other, _ = tls_db
    p = proxy_factory([db], f"--security.sql-tls.ca={other.pem.cert}")
    with pytest.raises(pymysql.err.OperationalError) as ei:
        pymysql.connect(**connect_kwargs(p.port, ssl_disabled=True))
    assert "TLS to backend" in ei.value.args[1] and "CERTIFICATE_VERIFY_FAILED" in ei.value.args[1]
    assert "TLS handshake with backend" in p.read_log()
    # skip-ca encrypts without checking who answers
    p2 = proxy_factory([db], "--security.sql-tls.skip-ca=true")
    conn = pymysql.connect(**connect_kwargs(p2.port, ssl_disabled=True))
    assert session_status(conn, "Ssl_cipher")
    conn.close()


def x509_login(port: int) -> dict:
    return dict(host="127.0.0.1", port=port, user="x509user", password="x509pw", ssl_disabled=True)


def test_client_certificate_towards_the_backend(proxy_factory, tls_db):
    db, ca, _, client = tls_db
    bare = proxy_factory([db], f"--security.sql-tls.ca={ca.pem.cert}")
    with pytest.raises(pymysql.err.OperationalError) as ei:
        pymysql.connect(**x509_login(bare.port))
    assert ei.value.args[0] == ER.ACCESS_DENIED_ERROR  # REQUIRE X509, and the proxy showed no certificate
    p = proxy_factory([db], f"--security.sql-tls.ca={ca.pem.cert}", f"--security.sql-tls.cert={client.cert}",
                      f"--security.sql-tls.key={client.key}")
    conn = pymysql.connect(**x509_login(p.port))
    with conn.cursor() as cur:
        cur.execute("SELECT CURRENT_USER()")
        assert cur.fetchone() == ("x509user@127.0.0.1",)
    conn.close()


def test_health_checks_log_in_over_tls(proxy_factory, tls_db):
    db, ca, _, _ = tls_db
    before = db.status("Ssl_accepts")
    p = proxy_factory([db], "--proxy.health-check-user=fpcheck", f"--security.sql-tls.ca={ca.pem.cert}")
    rounds = health(p)["health_check"]["rounds"]
    wait_for(lambda: health(p)["health_check"]["rounds"] >= rounds + 2, what="two check rounds")
    status = health(p)
    assert status["health_check"]["tls"] is True
    b = status["backends"][0]
    assert b["healthy"] and b["check_failures"] == 0, b  # a plain login would be refused (require_secure_transport)
    assert db.status("Ssl_accepts") >= before + 2
    # the same checks without sql-tls fail with the server's refusal
    p2 = proxy_factory([db], "--proxy.health-check-user=fpcheck")
    b = wait_for(lambda: (lambda b: b if not b["healthy"] else None)(health(p2)["backends"][0]),
                 what="the check to fail")
    assert "login as 'fpcheck' failed: 1045" in b["error"], b
