"""Replay over TLS: against a MariaDB with require_secure_transport=ON, replay connections (and the
report writer) upgrade to TLS after the greeting and verify the server's certificate."""
from __future__ import annotations

import glob
import json
import subprocess
import sys
from dataclasses import dataclass

import MySQLdb
import pytest

from fastproxy.capture.record import KIND_COMMAND, KIND_CONN_CLOSE, KIND_CONN_OPEN, Record
from fastproxy.inputs.convert import convert
from fastproxy.scratch_db import ROOT_PASSWORD
from replay_util import replay_cli
from tls_certs import CertAuthority, secure_transport_mariadb
from workload import Shop, run_faithful

T0 = 1_700_000_000_000_000_000


class _Source:
    format = "native"

    def __init__(self, records):
        self.records, self.meta, self.stats = records, {"start_ns": T0}, {}

    def __iter__(self):
        return iter(self.records)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tls"))
    db, ca = secure_transport_mariadb(d, "tls", "test-ca")
    with db:
        other = CertAuthority(d, "other-ca")
        yield db, ca, other


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cap") / "c")
    body = json.dumps({"user": "root", "db": None, "capabilities": 0, "charset": 45, "client_addr": ""}).encode()
    recs = [Record(KIND_CONN_OPEN, 1, T0, 0, 0, 0, 0, 0, body)]
    for i, sql in enumerate(["CREATE DATABASE IF NOT EXISTS tl", "CREATE TABLE IF NOT EXISTS tl.t (id INT)",
                             "INSERT INTO tl.t VALUES (1), (2)", "SELECT * FROM tl.t"]):
        recs.append(Record(KIND_COMMAND, 1, T0 + (i + 1) * 1000, T0 + (i + 1) * 1000 + 500, 0, 0, 0, 0,
                           b"\x03" + sql.encode()))
    recs.append(Record(KIND_CONN_CLOSE, 1, T0 + 9000, 0, 0, 0, 0, 0, b""))
    convert(_Source(recs), out)
    return out


def test_replay_over_tls_to_a_server_that_requires_it(tls_server, capture, tmp_path):
    db, ca, _ = tls_server
    db.sql("DROP DATABASE IF EXISTS tl")
    before = db.status("Ssl_accepts")
    _, summary = replay_cli(db.addr, capture, "--tls-ca", ca.pem.cert, "--report-dir", str(tmp_path), "--speed", "0")
    assert summary["commands_failed"] == 0 and summary["other_errors"] == 0, summary
    assert summary["report_tables_error"] == ""  # the report writer speaks TLS too
    assert summary["causal"]["scope"] == "per table", summary  # and the schema reader
    assert db.sql("SELECT COUNT(*) FROM tl.t").strip() == "2"
    assert db.status("Ssl_accepts") >= before + 2  # the replay connection and the report writer


def _refused(db, capture, tmp_path, *args) -> str:
    """A replay the target refuses at its first login: exit status 1 with the reason, nothing written."""
    res = subprocess.run([sys.executable, "-m", "fastproxy", "replay", "--target", db.addr, "--input", capture,
                          "--username", "root", "--password", ROOT_PASSWORD, "--report-dir", str(tmp_path / "r"),
                          "--no-report-tables", *args], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "nothing was replayed" in res.stderr, res.stdout + res.stderr
    assert not glob.glob(str(tmp_path / "r" / "replay-*.json"))
    return res.stderr


def test_plain_replay_is_refused_by_the_server(tls_server, capture, tmp_path):
    db, _, _ = tls_server
    assert "cannot log in: 1045" in _refused(db, capture, tmp_path)


def test_a_certificate_from_another_ca_is_refused(tls_server, capture, tmp_path):
    db, _, other = tls_server
    err = _refused(db, capture, tmp_path, "--tls-ca", other.pem.cert)
    assert "cannot connect" in err and ("CERTIFICATE_VERIFY_FAILED" in err or "certificate verify failed" in err), err


def test_skip_verify_encrypts_without_checking(tls_server, capture, tmp_path):
    db, _, _ = tls_server
    db.sql("DROP DATABASE IF EXISTS tl")
    _, summary = replay_cli(db.addr, capture, "--tls-skip-verify", "--report-dir", str(tmp_path),
                            "--no-report-tables")
    assert summary["commands_failed"] == 0 and summary["other_errors"] == 0, summary


@dataclass
class TlsShop(Shop):
    """The shop workload with every client on TLS to the proxy (`proxy_ca` verifies the proxy)."""

    proxy_ca: str = ""

    def _open(self, role, port: int, i: int):
        if role == self._ps_writer:
            import mariadb

            return mariadb.connect(host="127.0.0.1", port=port, user="root", password=ROOT_PASSWORD,
                                   database=self.database, autocommit=True, ssl_ca=self.proxy_ca, ssl_verify_cert=True)
        return MySQLdb.connect(host="127.0.0.1", port=port, user="root", password=ROOT_PASSWORD,
                               database=self.database, autocommit=True, ssl={"ca": self.proxy_ca})


@pytest.mark.timeout(400)
def test_a_capture_through_tls_replays_over_tls_with_production_data(tls_server, proxy_factory, tmp_path):
    """Issue 10: production speaks only TLS, the proxy terminates TLS on both legs and refuses plain
    clients, the test server speaks only TLS: the shop workload captured that way replays over TLS
    with no failure and the same CHECKSUM on every table, at speed 1 and as fast as possible."""
    pytest.importorskip("mariadb")
    prod, prod_ca, _ = tls_server
    test_db, test_ca = secure_transport_mariadb(str(tmp_path), "tlstest", "test-db-ca")
    proxy_ca = CertAuthority(str(tmp_path), "proxy-ca")
    proxy_cert = proxy_ca.issue("proxy", server=True)
    proxy = proxy_factory([prod], f"--security.sql-tls.ca={prod_ca.pem.cert}",
                          f"--security.server-tls.cert={proxy_cert.cert}", f"--security.server-tls.key={proxy_cert.key}",
                          "--security.require-client-tls=true")
    shop = TlsShop(proxy_ca=proxy_ca.pem.cert)
    with test_db:
        outcomes = run_faithful(prod, test_db, proxy, shop, str(tmp_path / "capture"),
                                replay_args=("--tls-ca", test_ca.pem.cert))
        assert prod.status("Ssl_accepts") > shop.connections  # every proxied connection's backend leg
        assert test_db.status("Ssl_accepts") > shop.connections  # every replay connection
    for o in outcomes:
        assert o.failures == 0 and not o.mismatched_tables, o.describe()
        assert o.summary["other_errors"] == 0, o.describe()
        assert o.summary["connections"] >= shop.connections, o.describe()
        # the side connections (schema, lock waits) reached the TLS-only target too
        assert o.summary["causal"]["scope"] == "per table", o.describe()
        assert o.summary["causal"]["lock_waits_unreadable"] == "", o.describe()
