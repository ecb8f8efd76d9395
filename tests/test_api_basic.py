"""The HTTP API's health and metrics endpoints."""
from __future__ import annotations

import re

import pymysql

from conftest import connect_kwargs
from proxy_util import health, wait_for


def test_health_follows_the_backend(proxy_factory, mariadb_private):
    # login-mode checks notice an idle backend dying (passive mode: tests/test_backend_health.py)
    mariadb_private.sql("CREATE USER 'fastproxy_check'@'127.0.0.1'", use_socket=True)
    p = proxy_factory([mariadb_private], "--proxy.health-check-user=fastproxy_check")
    h = p.get("/api/debug/health")
    assert h["status"] == "ok" and h["connections"] == 0
    assert h["health_check"] == {"mode": "login", "user": "fastproxy_check", "interval": 0.5,
                                 "rounds": h["health_check"]["rounds"], "tls": False, "require_tls": False}
    b = h["backends"][0]
    assert b["checks"] >= 1 and b["last_check"] and len(h["backends"]) == 1
    assert {k: b[k] for k in ("addr", "healthy", "connections", "error", "check_failures")} == \
        {"addr": mariadb_private.addr, "healthy": True, "connections": 0, "error": "", "check_failures": 0}
    conn = pymysql.connect(**connect_kwargs(p.port))
    h = health(p)
    assert h["connections"] == 1 and h["backends"][0]["connections"] == 1
    conn.close()
    mariadb_private.kill()
    h = wait_for(lambda: (h := health(p)) and not h["backends"][0]["healthy"] and h, what="backend down")
    assert h["backends"][0]["error"]  # says why
    assert p.metric("fastproxy_backend_healthy", f'backend="{mariadb_private.addr}"') == 0
    mariadb_private.restart()
    wait_for(lambda: health(p)["backends"][0]["healthy"], what="backend up again")
    assert p.metric("fastproxy_backend_healthy", f'backend="{mariadb_private.addr}"') == 1
    conn = pymysql.connect(**connect_kwargs(p.port))
    conn.close()


def test_metrics_families(proxy_factory, mariadb):
    p = proxy_factory([mariadb])
    conn = pymysql.connect(**connect_kwargs(p.port))
    with conn.cursor() as cur:
        cur.execute("SELECT REPEAT('x', 10000)")
        cur.fetchall()
        try:
            cur.execute("SELECT * FROM no_such_db.no_such_table")
        except pymysql.err.ProgrammingError:
            pass
    text = p.get("/metrics")
    assert isinstance(text, str)

    def value(sample: str) -> float:
        m = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.M)
        assert m, f"{sample} missing from /metrics:\n{text}"
        return float(m.group(1))

    assert value("fastproxy_connections") == 1
    assert value("fastproxy_connections_total") >= 1
    assert value('fastproxy_commands_total{type="COM_QUERY"}') >= 2
    assert value('fastproxy_command_errors_total{type="COM_QUERY"}') == 1
    assert value("fastproxy_command_duration_seconds_count") >= 2
    assert value('fastproxy_command_duration_seconds_bucket{le="+Inf"}') == value("fastproxy_command_duration_seconds_count")
    assert value("fastproxy_command_duration_seconds_sum") > 0
    assert value("fastproxy_received_bytes_total") > 30
    assert value("fastproxy_sent_bytes_total") > 10000
    assert value(f'fastproxy_backend_healthy{{backend="{mariadb.addr}"}}') == 1
    assert value(f'fastproxy_backend_connections{{backend="{mariadb.addr}"}}') == 1
    assert "# TYPE fastproxy_command_duration_seconds histogram" in text
    conn.close()
    wait_for(lambda: p.metric("fastproxy_connections") == 0, what="the connection gauge to drop")
