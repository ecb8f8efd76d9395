"""Health checks leave no trace on the backend: no aborted connect, no handshake error in the host
cache, no line in the error log (issue 7, item 10). Both modes: `login` (proxy.health-check-user)
and `passive` (no user). MariaDB runs with --log-warnings=4, its most talkative level, so that
any connection it considers aborted shows up in its error log."""
from __future__ import annotations

import asyncio
import socket

import pymysql
import pytest

from conftest import connect_kwargs
from fastproxy.config import Config
from fastproxy.errors import ConfigError
from fastproxy.proxy.backend import BackendPool
from fastproxy.scratch_db import ScratchMariaDB, free_port
from proxy_util import health, sleep_in_flight, wait_for

CHECK_USER = "fastproxy_check"
COUNTERS = ("Aborted_connects", "Aborted_connects_preauth", "Aborted_clients", "Access_denied_errors",
            "Connection_errors_peer_address")
CHECKS = 30
FAST = "--proxy.health-check-interval=50ms"


def server_counters(db: ScratchMariaDB) -> dict[str, int]:
    names = ",".join(f"'{n}'" for n in COUNTERS)
    out = db.sql(f"SHOW GLOBAL STATUS WHERE Variable_name IN ({names})", use_socket=True)
    return {name: int(value) for name, value in (line.split("\t") for line in out.splitlines())}


def host_cache(db: ScratchMariaDB) -> list[str]:
    """Every error column of every host the server holds in its host cache."""
    return db.sql("SELECT IP, SUM_CONNECT_ERRORS, COUNT_HANDSHAKE_ERRORS, COUNT_AUTHENTICATION_ERRORS, "
                  "COUNT_HOST_BLOCKED_ERRORS FROM performance_schema.host_cache ORDER BY IP",
                  use_socket=True).splitlines()


def warnings_since(db: ScratchMariaDB, offset: int) -> list[str]:
    return [line for line in db.error_log()[offset:].splitlines() if "[Warning]" in line or "[ERROR]" in line]


def backend_status(p) -> dict:
    return health(p)["backends"][0]


@pytest.fixture
def checked_db():
    """A server of the test's own that reports every aborted connection, with the check account."""
    with ScratchMariaDB(name="health", extra_args=["--performance-schema=ON", "--log-warnings=4"]) as db:
        db.sql(f"CREATE USER '{CHECK_USER}'@'127.0.0.1';", use_socket=True)
        yield db


def test_login_checks_leave_no_aborted_connect_and_no_warning(proxy_factory, checked_db):
    db = checked_db
    p = proxy_factory([db], f"--proxy.health-check-user={CHECK_USER}", FAST)
    start = wait_for(lambda: (b := backend_status(p))["checks"] >= 1 and b, what="the first check")
    counters, cache, log_at = server_counters(db), host_cache(db), len(db.error_log())
    wait_for(lambda: backend_status(p)["checks"] >= start["checks"] + CHECKS, what=f"{CHECKS} more checks")
    b = backend_status(p)
    assert b["healthy"] and b["check_failures"] == 0 and b["error"] == "", b
    assert server_counters(db) == counters
    assert host_cache(db) == cache
    assert warnings_since(db, log_at) == []
    assert health(p)["health_check"]["mode"] == "login"
    # and it still proxies
    conn = pymysql.connect(**connect_kwargs(p.port))
    conn.close()


def test_login_check_from_another_host_leaves_host_cache_clean():
    """The host cache only holds non-loopback peers, and only when names are resolved: the checks
    come from 127.0.0.2 (MariaDB treats only 127.0.0.1 and ::1 as loopback), name resolution on.
    The control at the end shows the cache does record what the old greeting-only check did — up
    to blocking the host, the outage the issue describes."""
    extra = ["--performance-schema=ON", "--disable-skip-name-resolve", "--max-connect-errors=3", "--log-warnings=4"]
    with ScratchMariaDB(name="hostcache", extra_args=extra) as db:
        db.sql(f"CREATE USER '{CHECK_USER}'@'127.0.0.2';", use_socket=True)
        counters, log_at = server_counters(db), len(db.error_log())

        async def checks(user: str, n: int) -> list[str]:
            pool = BackendPool([(db.host, db.port)], timeout=10, user=user, local_addr=("127.0.0.2", 0))
            errors = []
            for _ in range(n):
                ok = await pool.check(pool.backends[0])
                errors.append("" if ok else pool.backends[0].last_error)
            return errors

        assert asyncio.run(checks(CHECK_USER, CHECKS)) == [""] * CHECKS
        assert host_cache(db) == ["127.0.0.2\t0\t0\t0\t0"]
        assert server_counters(db) == counters
        # the one warning is the server's own: 127.0.0.2 has no name (reverse DNS), logged once
        assert [w for w in warnings_since(db, log_at) if "could not be resolved" not in w] == []

        # control: a greeting-only probe (passive mode's probe of a down backend) from the same host
        # (the server counts the error when its thread sees the probe's close: waited for, not assumed)
        assert asyncio.run(checks("", 1)) == [""]
        wait_for(lambda: host_cache(db) == ["127.0.0.2\t1\t1\t0\t0"], what="the probe's handshake error")
        assert server_counters(db)["Aborted_connects"] == counters["Aborted_connects"] + 1
        asyncio.run(checks("", 2))  # max-connect-errors=3 reached: blocked
        wait_for(lambda: host_cache(db) == ["127.0.0.2\t3\t3\t0\t0"], what="3 handshake errors")
        errors = asyncio.run(checks(CHECK_USER, 1))
        assert "1129" in errors[0] and "blocked" in errors[0], errors


def test_failed_login_fails_the_check_with_the_server_error(proxy_factory, checked_db):
    db = checked_db
    p = proxy_factory([db], "--proxy.health-check-user=fastproxy_nobody", FAST)
    b = wait_for(lambda: (b := backend_status(p))["check_failures"] >= 1 and not b["healthy"] and b,
                 what="a failed check")
    assert "login as 'fastproxy_nobody' failed: 1045" in b["error"] and "Access denied" in b["error"], b
    assert p.metric("fastproxy_backend_health_check_failures_total", f'backend="{db.addr}"') >= 1
    db.sql("CREATE USER 'fastproxy_nobody'@'127.0.0.1';", use_socket=True)
    b = wait_for(lambda: (b := backend_status(p))["healthy"] and b, what="the backend up once the user exists")
    assert b["error"] == ""
    assert "backend %s is now healthy" % db.addr in p.read_log()


def test_passive_mode_sends_nothing_to_a_healthy_backend(proxy_factory, checked_db):
    db = checked_db
    p = proxy_factory([db], FAST)
    assert health(p)["health_check"]["mode"] == "passive"
    counters, cache, log_at = server_counters(db), host_cache(db), len(db.error_log())
    rounds = health(p)["health_check"]["rounds"]
    conn = pymysql.connect(**connect_kwargs(p.port))  # real traffic is the evidence
    conn.close()
    wait_for(lambda: health(p)["health_check"]["rounds"] >= rounds + CHECKS, what=f"{CHECKS} rounds")
    b = backend_status(p)
    assert b["healthy"] and b["checks"] == 0, b
    assert server_counters(db) == counters
    assert host_cache(db) == cache
    assert warnings_since(db, log_at) == []


def test_passive_mode_finds_a_dead_backend_and_its_return(proxy_factory, mariadb_private):
    db = mariadb_private
    p = proxy_factory([db], FAST)
    db.kill()
    with pytest.raises(pymysql.err.OperationalError) as ei:  # the first connection finds out ...
        pymysql.connect(**connect_kwargs(p.port))
    assert db.addr in str(ei.value.args[1])
    assert not backend_status(p)["healthy"]
    assert f"backend {db.addr} is now unhealthy (connect failed" in p.read_log()
    # ... then the down backend is probed (refused connects: nothing reaches a server)
    wait_for(lambda: backend_status(p)["check_failures"] >= 3, what="probes of the dead backend")
    db.restart()
    b = wait_for(lambda: (b := backend_status(p))["healthy"] and b, what="the backend back up")
    probes = b["checks"]
    # the restarted server's aborted connects: ScratchMariaDB's readiness probe and the probe that
    # found it back (the one per outage, README) — counted once the server sees their close
    wait_for(lambda: server_counters(db)["Aborted_connects"] >= 2, what="the two aborted connects")
    counters = server_counters(db)
    assert counters["Aborted_connects"] == 2, counters
    rounds = health(p)["health_check"]["rounds"]
    wait_for(lambda: health(p)["health_check"]["rounds"] >= rounds + CHECKS, what=f"{CHECKS} rounds")
    assert backend_status(p)["checks"] == probes  # healthy again: no more probes
    assert server_counters(db) == counters
    conn = pymysql.connect(**connect_kwargs(p.port))
    conn.close()


def _silent_listener() -> socket.socket:
    """A port that accepts TCP connections (the kernel does) and never says a word: a hung server."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    return s


@pytest.mark.parametrize("user", [CHECK_USER, ""], ids=["login", "passive"])
def test_check_timeout_and_refused(user):
    hung = _silent_listener()
    dead_port = free_port()
    try:
        async def run():
            pool = BackendPool([hung.getsockname(), ("127.0.0.1", dead_port)], timeout=0.3, user=user)
            return [(await pool.check(b), b.last_error) for b in pool.backends]

        (hung_ok, hung_error), (dead_ok, dead_error) = asyncio.run(run())
    finally:
        hung.close()
    assert not hung_ok and hung_error == "no answer within 0.3s"
    assert not dead_ok and "ConnectionRefusedError" in dead_error


def test_health_check_user_config():
    assert Config()["proxy.health-check-user"] == ""
    assert Config({"proxy.health-check-user": CHECK_USER})["proxy.health-check-user"] == CHECK_USER
    for bad in ("a\x00b", "x" * 129, 5):
        with pytest.raises(ConfigError, match="proxy.health-check-user"):
            Config({"proxy.health-check-user": bad})


def test_backend_lost_mid_command_is_checked_at_once(proxy_factory, mariadb_private):
    """Passive mode probes nothing healthy; a backend that drops a relayed connection in the middle
    of a command is suspected and probed at once (no new client has to fail first)."""
    db = mariadb_private
    p = proxy_factory([db])
    t, failure = sleep_in_flight(p)
    assert backend_status(p)["healthy"]
    db.kill()
    t.join(30)
    assert failure, "the client must see the lost backend"
    wait_for(lambda: not backend_status(p)["healthy"], what="the suspected backend to be found down")
    assert backend_status(p)["checks"] >= 1
