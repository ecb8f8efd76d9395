"""caching_sha2_password (MySQL 8's default plugin) through the proxy, against a second kind of
backend: a MySQL-8-like server on mysql-mimic (tests/mimic_backend.py), since MySQL 8 cannot be
installed here and MariaDB has no server side for the plugin. Its fast path (cached hash) and its
full path (password in clear inside TLS, else RSA) work on every mix of plain and TLS legs — where
the two legs differ, the proxy bridges the full path (fastproxy/proxy/sha2_bridge.py)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pymysql
import pytest

from fastproxy.scratch_db import free_port
from tls_certs import CertAuthority

pytest.importorskip("mysql_mimic")
HERE = os.path.dirname(os.path.abspath(__file__))
USER, PASSWORD = "sha2user", "sha2-secret"


class Mimic:
    def __init__(self, cert=None) -> None:
        self.port = free_port()
        args = [sys.executable, os.path.join(HERE, "mimic_backend.py"), str(self.port)]
        if cert is not None:
            args += [cert.cert, cert.key]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(1):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the mysql-mimic backend did not start")
            time.sleep(0.1)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tls"))
    ca = CertAuthority(d, "ca")
    return ca, ca.issue("server", server=True)


@pytest.fixture(scope="module")
def backends(certs):
    _, server = certs
    plain, tls = Mimic(), Mimic(server)
    yield {False: plain, True: tls}
    plain.stop()
    tls.stop()


def login(port: int, ca: str | None, password: str = PASSWORD):
    return pymysql.connect(host="127.0.0.1", port=port, user=USER, password=password, connect_timeout=10,
                           read_timeout=10, **({"ssl": {"ca": ca}} if ca else {"ssl_disabled": True}))


def paths(conn) -> tuple:
    with conn.cursor() as cur:
        cur.execute("SELECT 'paths'")
        return cur.fetchone()


def flush(conn) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT 'flush'")


@pytest.mark.parametrize("client_tls", [False, True], ids=["client-plain", "client-tls"])
@pytest.mark.parametrize("backend_tls", [False, True], ids=["backend-plain", "backend-tls"])
def test_full_and_fast_path(proxy_factory, backends, certs, client_tls, backend_tls):
    ca, server = certs
    backend = backends[backend_tls]
    args = [f"--security.server-tls.cert={server.cert}", f"--security.server-tls.key={server.key}"]
    if backend_tls:
        args.append(f"--security.sql-tls.ca={ca.pem.cert}")
    p = proxy_factory([backend], *args)
    client_ca = ca.pem.cert if client_tls else None
    c = login(p.port, client_ca)
    flush(c)
    full, fast, _, _ = paths(c)
    c.close()
    c = login(p.port, client_ca)  # not cached: the full path
    assert paths(c) == (full + 1, fast, int(backend_tls), USER)
    c.close()
    c = login(p.port, client_ca)  # cached now: the fast path
    assert paths(c) == (full + 1, fast + 1, int(backend_tls), USER)
    c.close()
    # a wrong password fails on the full path too, with the server's own answer
    flush(login(p.port, client_ca))
    with pytest.raises(pymysql.err.OperationalError) as ei:
        login(p.port, client_ca, password="wrong")
    assert ei.value.args[0] == 1045
    assert PASSWORD not in p.read_log()
