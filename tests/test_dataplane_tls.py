"""TLS connections in the data plane: after its login, a connection with TLS on a leg is relayed by
the data plane's workers as a plain one is, with OpenSSL from C (the SSL object Python's ssl made
for the handshake, over its memory BIOs). Both are seen the same way from outside:
/api/debug/connections, /metrics, capture records (with a capture filter, and for a connection open
before the capture). Real clients, a real proxy, real MariaDB."""
from __future__ import annotations

import json
import ssl

import pymysql
import pytest

from capture_util import cancel_capture, read_capture, start_capture
from conftest import connect_kwargs
from proxy_util import health, wait_for
from fastproxy.capture.record import KIND_COMMAND, KIND_CONN_STATE
from tls_certs import CertAuthority


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    ca = CertAuthority(str(tmp_path_factory.mktemp("tls")), "dp-tls-ca")
    return ca, ca.issue("proxy", server=True)


@pytest.fixture(params=[True, False], ids=["tls-in-dataplane", "tls-in-python"])
def proxy(request, proxy_factory, mariadb, certs):
    """proxy.tls-in-dataplane on (the default) and off (the Python relay, also the fallback)."""
    mariadb.sql("DROP DATABASE IF EXISTS dptls; CREATE DATABASE dptls; CREATE TABLE dptls.t (x INT)")
    _, server = certs
    p = proxy_factory([mariadb], f"--security.server-tls.cert={server.cert}",
                      f"--security.server-tls.key={server.key}", f"--proxy.tls-in-dataplane={str(request.param).lower()}")
    p.tls_relay = "dataplane" if request.param else "python"
    return p


def _connect(proxy, certs, tls: bool):
    ca, _ = certs
    extra = {"ssl": {"ca": ca.pem.cert}} if tls else {"ssl_disabled": True}
    conn = pymysql.connect(**connect_kwargs(proxy.port, **extra))
    assert tls == isinstance(conn._sock, ssl.SSLSocket)
    return conn


def _run(conn, *sqls):
    cur = conn.cursor()
    for sql in sqls:
        cur.execute(sql)
        cur.fetchall()


def test_tls_connection_is_shown_like_a_plain_one(proxy, certs):
    plain, tls = _connect(proxy, certs, False), _connect(proxy, certs, True)
    for conn in (plain, tls):
        _run(conn, "USE dptls", "BEGIN", "INSERT INTO t VALUES (1)")
    seen = {c["tls"]["client"] != "": c for c in proxy.get("/api/debug/connections")}
    assert seen[False]["relay"] == "dataplane" and seen[True]["relay"] == proxy.tls_relay
    assert seen[True]["tls"]["client"].startswith("TLSv1") and seen[True]["tls"]["backend"] == ""
    for c in seen.values():  # the same session state, whoever relays it
        assert c["db"] == "dptls" and c["in_transaction"] and c["commands"] == seen[False]["commands"] > 0
        assert c["last_command"]["type"] == "COM_QUERY" and c["last_command"]["outcome"] == "ok"
        assert c["pending_commands"] == 0
    # the TLS connection's commands are counted with the workers'
    before = proxy.metric("fastproxy_commands_total", 'type="COM_QUERY"')
    _run(tls, "SELECT 1", "SELECT 2")
    assert proxy.metric("fastproxy_commands_total", 'type="COM_QUERY"') == before + 2
    for conn in (plain, tls):
        _run(conn, "COMMIT")
        conn.close()


def test_capture_filter_applies_to_both_relays(proxy, certs, tmp_path):
    start_capture(proxy, tmp_path / "f", **{"class": "write"})
    for tls in (False, True):
        conn = _connect(proxy, certs, tls)
        _run(conn, "USE dptls", "SELECT x FROM t", "INSERT INTO t VALUES (2)", "SELECT COUNT(*) FROM t")
        conn.close()
    # COM_QUIT is recorded when a relay reads it; closing the client does not wait for that
    wait_for(lambda: health(proxy)["connections"] == 0, what="both connections to be closed")
    job = cancel_capture(proxy)
    assert not job["error"], job
    meta, records, _ = read_capture(tmp_path / "f")
    by_conn = {}
    for r in records:
        if r.kind == KIND_COMMAND:
            by_conn.setdefault(r.conn_id, []).append(r.payload[1:].decode(errors="replace"))
    assert len(by_conn) == 2
    plain_texts, tls_texts = by_conn.values()
    assert plain_texts == tls_texts
    assert "INSERT INTO t VALUES (2)" in plain_texts and not any(t.startswith("SELECT") for t in plain_texts)
    assert meta["filtered_by"] == {"class": 4}  # two SELECTs on each connection


def test_tls_connection_open_before_the_capture_is_rebuilt(proxy, certs, tmp_path):
    tls = _connect(proxy, certs, True)
    _run(tls, "USE dptls", "SET @carried = 42")
    start_capture(proxy, tmp_path / "c")
    _run(tls, "SELECT @carried")
    job = cancel_capture(proxy)
    tls.close()
    assert job["existing_connections"] == 1 and job["connections"] == 1
    _, records, _ = read_capture(tmp_path / "c")
    states = [json.loads(r.payload) for r in records if r.kind == KIND_CONN_STATE]
    assert len(states) == 1 and states[0]["db"] == "dptls"
    assert "42" in json.dumps(states[0])  # the user variable, read by the proxy's own query
    assert [r.payload[1:] for r in records if r.kind == KIND_COMMAND] == [b"SELECT @carried"]


def test_large_results_and_packets_cross_tls_in_the_data_plane(proxy, certs, mariadb):
    """Many TLS records per read and per answer (what OpenSSL holds after one read is read on without
    a readiness), a client packet over 16 MiB, and many small commands: the bytes are exact."""
    saved = mariadb.sql("SELECT @@global.max_allowed_packet").strip()
    mariadb.sql(f"SET GLOBAL max_allowed_packet = {64 << 20}")
    try:
        ca, _ = certs
        tls = pymysql.connect(**connect_kwargs(proxy.port, ssl={"ca": ca.pem.cert}, max_allowed_packet=64 << 20))
        cur = tls.cursor()
        cur.execute("SELECT REPEAT('ab', 3000000), 7")
        big, seven = cur.fetchone()
        assert len(big) == 6_000_000 and big[:4] == big[-4:] == "abab" and seven == 7
        blob = "xy" * (17 << 19)  # 17 MiB: a client packet split in two on the wire
        cur.execute("SELECT LENGTH(%s), RIGHT(%s, 3)", (blob, blob + "end"))
        assert cur.fetchone() == (len(blob), "end")
        for i in range(300):
            cur.execute("SELECT %s", (i,))
            assert cur.fetchone()[0] == i
        assert [c["relay"] for c in proxy.get("/api/debug/connections")] == [proxy.tls_relay]
        tls.close()
    finally:
        mariadb.sql(f"SET GLOBAL max_allowed_packet = {saved}")
