"""What the proxy knows per connection (GET /api/debug/connections), and backend choice."""
import MySQLdb
import pytest

from capture_rawclient import ps_client
from conftest import connect_kwargs
from fastproxy.scratch_db import ROOT_PASSWORD, ScratchMariaDB


def _sessions(proxy):
    return {s["conn_id"]: s for s in proxy.get("/api/debug/connections")}


def _only_new(proxy, before):
    new = [s for cid, s in _sessions(proxy).items() if cid not in before]
    assert len(new) == 1, new
    return new[0]


def test_session_state_follows_the_connection(proxy, mariadb):
    mariadb.sql("CREATE DATABASE IF NOT EXISTS sess_a; CREATE DATABASE IF NOT EXISTS sess_b;"
                "CREATE TABLE IF NOT EXISTS sess_b.t (x INT)")
    before = _sessions(proxy)
    conn = MySQLdb.connect(**connect_kwargs(proxy.port, database="sess_a"))
    cur = conn.cursor()
    s = _only_new(proxy, before)
    assert (s["user"], s["db"], s["in_transaction"]) == ("root", "sess_a", False)

    conn.select_db("sess_b")  # COM_INIT_DB
    assert _sessions(proxy)[s["conn_id"]]["db"] == "sess_b"
    cur.execute("USE `sess_a`")  # USE in a COM_QUERY
    assert _sessions(proxy)[s["conn_id"]]["db"] == "sess_a"

    cur.execute("BEGIN")
    cur.execute("INSERT INTO sess_b.t VALUES (1)")
    now = _sessions(proxy)[s["conn_id"]]
    assert now["in_transaction"] is True
    assert now["last_command"]["type"] == "COM_QUERY" and now["last_command"]["outcome"] == "ok"
    assert now["last_command"]["end_ns"] >= now["last_command"]["start_ns"] > 0
    cur.execute("COMMIT")
    assert _sessions(proxy)[s["conn_id"]]["in_transaction"] is False

    with pytest.raises(MySQLdb.Error):
        cur.execute("SELECT * FROM no_such_table")
    last = _sessions(proxy)[s["conn_id"]]["last_command"]
    assert (last["outcome"], last["err_code"]) == ("err", 1146)
    conn.close()


def test_prepared_statements_are_tracked(proxy):
    before = _sessions(proxy)
    ps = ps_client(proxy.port, "root", ROOT_PASSWORD)  # raw client: statements stay open
    s = _only_new(proxy, before)
    a = ps.prepare("SELECT ? + 1")
    b = ps.prepare("SELECT 2")
    assert _sessions(proxy)[s["conn_id"]]["prepared"] == {str(a): "SELECT ? + 1", str(b): "SELECT 2"}
    ps.close_stmt(a)  # no response: a following command makes sure the proxy has seen it
    assert ps.query("SELECT 1").kind == "rows"
    assert _sessions(proxy)[s["conn_id"]]["prepared"] == {str(b): "SELECT 2"}
    ps.quit()


def test_new_connections_go_to_the_least_loaded_backend(proxy_factory, mariadb):
    with ScratchMariaDB(name="second") as second:
        proxy = proxy_factory([mariadb, second])

        def backend_port(conn):
            cur = conn.cursor()
            cur.execute("SELECT @@port")
            return cur.fetchone()[0]

        conns = [MySQLdb.connect(**connect_kwargs(proxy.port)) for _ in range(6)]
        ports = [backend_port(c) for c in conns]
        assert ports.count(mariadb.port) == ports.count(second.port) == 3
        # two connections of the first backend go away: the next two new ones go there
        gone = [i for i, p in enumerate(ports) if p == mariadb.port][:2]
        for i in gone:
            conns[i].close()
        _wait_backend_connections(proxy, mariadb.addr, 1)
        extra = [MySQLdb.connect(**connect_kwargs(proxy.port)) for _ in range(2)]
        assert [backend_port(c) for c in extra] == [mariadb.port, mariadb.port]
        for c in extra + [c for i, c in enumerate(conns) if i not in gone]:
            c.close()


def _wait_backend_connections(proxy, addr, n, timeout=10.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        by_addr = {b["addr"]: b["connections"] for b in proxy.get("/api/debug/health")["backends"]}
        if by_addr[addr] == n:
            return
        time.sleep(0.05)
    raise AssertionError(f"{addr} still has {by_addr[addr]} connections, expected {n}")
