"""What a replay keeps: each filter on a known capture keeps exactly the expected commands; shards
partition the connections and, started together, produce the same data as one replayer; the captures
of several proxies replay as one workload."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import MySQLdb
import pytest

from fastproxy._digest import digest
from fastproxy.capture.record import KIND_COMMAND, KIND_CONN_CLOSE, KIND_CONN_OPEN, Record
from fastproxy.errors import ConfigError
from fastproxy.inputs import open_input, open_inputs
from fastproxy.inputs.convert import convert
from fastproxy.replay.filters import Filters, FilteredSource, statement_class
from fastproxy.scratch_db import ROOT_PASSWORD
from replay_util import Capture, checksums

T0 = 1_700_000_000_000_000_000
S = 1_000_000_000


class ListSource:
    format = "native"

    def __init__(self, records):
        self.records = records
        self.meta = {"start_ns": T0}
        self.stats = {}

    def __iter__(self):
        return iter(self.records)


def _open(conn, user, db, t):
    body = {"user": user, "db": db, "capabilities": 0, "charset": 45, "client_addr": "127.0.0.1:1"}
    return Record(KIND_CONN_OPEN, conn, t, 0, 0, 0, 0, 0, json.dumps(body).encode())


def _q(conn, t, sql, affected=0):
    return Record(KIND_COMMAND, conn, t, t + 1000, 0, 0, affected, 0, b"\x03" + sql.encode())


def _cmd(conn, t, payload, affected=0):
    return Record(KIND_COMMAND, conn, t, t + 1000, 0, 0, affected, 0, payload)


KNOWN = [
    _open(1, "app", "shop", T0),
    _q(1, T0 + 1 * S, "SET NAMES utf8mb4"),
    _q(1, T0 + 2 * S, "SELECT * FROM orders WHERE id = 1"),
    _q(1, T0 + 3 * S, "UPDATE orders SET n = n + 1 WHERE id = 1"),
    _q(1, T0 + 4 * S, "USE crm"),
    _q(1, T0 + 5 * S, "SELECT * FROM leads WHERE id = 2"),
    _q(1, T0 + 6 * S, "CREATE TABLE x (id INT)"),
    _cmd(1, T0 + 7 * S, b"\x16SELECT * FROM leads WHERE id = ?", affected=5),
    _cmd(1, T0 + 8 * S, b"\x17" + (5).to_bytes(4, "little") + b"\x00\x01\x00\x00\x00"),
    _cmd(1, T0 + 9 * S, b"\x19" + (5).to_bytes(4, "little")),
    Record(KIND_CONN_CLOSE, 1, T0 + 10 * S, 0, 0, 0, 0, 0, b""),
    _open(2, "report", "shop", T0 + 11 * S),
    _q(2, T0 + 12 * S, "SELECT COUNT(*) FROM orders"),
    _q(2, T0 + 13 * S, "DELETE FROM orders WHERE id = 9"),
    Record(KIND_CONN_CLOSE, 2, T0 + 14 * S, 0, 0, 0, 0, 0, b""),
]


def kept(**kw) -> list[str]:
    src = FilteredSource(ListSource(KNOWN), Filters.parse(**kw))
    out = []
    for r in src:
        if r.kind == KIND_COMMAND:
            out.append(f"{r.conn_id}:" + r.payload[1:].decode("latin-1") if r.payload[0] in (3, 0x16)
                       else f"{r.conn_id}:cmd{r.payload[0]:#x}")
    return out


def test_statement_classes():
    assert [statement_class(s) for s in ("SELECT 1", "select * from t for update", "INSERT INTO t VALUES (1)",
                                         "CREATE TABLE t (a INT)", "SET NAMES utf8", "/* c */ BEGIN", "DO 1",
                                         "GRANT SELECT ON *.* TO u", "SET GLOBAL x = 1")] == \
        ["read", "write", "write", "ddl", "session", "session", "write", "ddl", "other"]


def test_each_filter_keeps_exactly_the_expected_commands():
    assert kept(schema="crm") == ["1:SET NAMES utf8mb4", "1:USE crm", "1:SELECT * FROM leads WHERE id = 2",
                                  "1:CREATE TABLE x (id INT)", "1:SELECT * FROM leads WHERE id = ?", "1:cmd0x17",
                                  "1:cmd0x19"]
    assert kept(user="report") == ["2:SELECT COUNT(*) FROM orders", "2:DELETE FROM orders WHERE id = 9"]
    assert kept(cmd_type="Query") == [k for k in kept() if k != "1:cmd0x17"]
    assert kept(statement_class="read") == ["1:SET NAMES utf8mb4", "1:SELECT * FROM orders WHERE id = 1",
                                            "1:USE crm", "1:SELECT * FROM leads WHERE id = 2",
                                            "1:SELECT * FROM leads WHERE id = ?", "1:cmd0x17", "1:cmd0x19",
                                            "2:SELECT COUNT(*) FROM orders"]
    # a dropped prepare takes its execute along (its close too: nothing was prepared)
    assert kept(statement_class="write,ddl") == ["1:SET NAMES utf8mb4", "1:UPDATE orders SET n = n + 1 WHERE id = 1",
                                                 "1:USE crm", "1:CREATE TABLE x (id INT)",
                                                 "2:DELETE FROM orders WHERE id = 9"]
    d = digest("SELECT * FROM orders WHERE id = 1")
    assert kept(digest=d) == ["1:SET NAMES utf8mb4", "1:SELECT * FROM orders WHERE id = 1", "1:USE crm"]
    assert "1:SELECT * FROM orders WHERE id = 1" not in kept(exclude_digest=d) and len(kept(exclude_digest=d)) == 10
    # window: session statements before it are kept, the rest dropped
    assert kept(start_time="4s", end_time="7s") == ["1:SET NAMES utf8mb4", "1:USE crm",
                                                    "1:SELECT * FROM leads WHERE id = 2", "1:CREATE TABLE x (id INT)"]


def test_filters_count_what_they_dropped():
    src = FilteredSource(ListSource(KNOWN), Filters.parse(user="app", statement_class="read"))
    list(src)
    assert src.dropped == {"user (connections)": 1, "user": 2, "class": 2}


def test_sample_and_shards_partition_whole_connections():
    records = []
    for c in range(1, 401):
        records += [_open(c, "u", "d", T0 + c), _q(c, T0 + c + 1, f"SELECT {c}"),
                    Record(KIND_CONN_CLOSE, c, T0 + c + 2, 0, 0, 0, 0, 0, b"")]
    shards = [{r.conn_id for r in FilteredSource(ListSource(records), Filters.parse(shard=f"{i}/3"))}
              for i in range(3)]
    assert set().union(*shards) == set(range(1, 401)) and sum(map(len, shards)) == 400
    assert all(100 < len(s) < 170 for s in shards)  # spread, not by ranges
    sample = FilteredSource(ListSource(records), Filters.parse(sample="10%"))
    got = list(sample)
    conns = {r.conn_id for r in got}
    assert 15 < len(conns) < 70
    # whole connections: each kept connection has its open, its query and its close
    assert all(sum(1 for r in got if r.conn_id == c) == 3 for c in conns)


@pytest.mark.parametrize("bad", [dict(statement_class="reads"), dict(cmd_type="Select"), dict(sample="0%"),
                                 dict(sample="ten"), dict(shard="3/3"), dict(shard="1"), dict(digest="abc")])
def test_bad_filters_are_refused_with_the_field_named(bad):
    with pytest.raises(ConfigError):
        Filters.parse(**bad)


def test_several_captures_merge_in_completion_order(tmp_path):
    a = [_open(1, "u", "d", T0), _q(1, T0 + 10, "SELECT 'a1'"), _q(1, T0 + 30, "SELECT 'a2'")]
    b = [_open(1, "u", "d", T0 + 5), _q(1, T0 + 20, "SELECT 'b1'")]
    for name, recs in (("a", a), ("b", b)):
        convert(ListSource(recs), str(tmp_path / name))
    merged = list(open_inputs([str(tmp_path / "a"), str(tmp_path / "b")]))
    assert [r.payload for r in merged if r.kind == KIND_COMMAND] == [b"\x03SELECT 'a1'", b"\x03SELECT 'b1'",
                                                                     b"\x03SELECT 'a2'"]
    assert len({r.conn_id for r in merged}) == 2  # both inputs' connection 1 stay apart


@pytest.fixture(scope="module")
def independent_capture(mariadb, tmp_path_factory):
    """A capture of 12 connections that never touch each other's rows (so any interleaving of them
    gives the same data), through a real proxy."""
    from conftest import start_proxy, stop_proxy

    out = str(tmp_path_factory.mktemp("shards") / "cap")
    mariadb.sql("DROP DATABASE IF EXISTS sh; CREATE DATABASE sh; "
                "CREATE TABLE sh.t (conn INT, i INT, v VARCHAR(40), PRIMARY KEY (conn, i))")
    proxy = start_proxy([mariadb])
    try:
        with Capture(proxy, out):
            def work(k):
                c = MySQLdb.connect(host="127.0.0.1", port=proxy.port, user="root", password=ROOT_PASSWORD,
                                    db="sh", autocommit=True)
                cur = c.cursor()
                for i in range(30):
                    cur.execute("INSERT INTO t VALUES (%s, %s, %s)", (k, i, f"v{k}-{i}"))
                    cur.execute("UPDATE t SET v = CONCAT(v, '!') WHERE conn = %s AND i = %s", (k, i // 2))
                c.close()

            threads = [threading.Thread(target=work, args=(k,)) for k in range(12)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        stop_proxy(proxy)
    return out, checksums(mariadb, "sh")


def test_three_shards_started_together_equal_one_replayer(mariadb_test, independent_capture, tmp_path):
    cap, source_sums = independent_capture
    mariadb_test.sql("DROP DATABASE IF EXISTS sh; CREATE DATABASE sh; "
                     "CREATE TABLE sh.t (conn INT, i INT, v VARCHAR(40), PRIMARY KEY (conn, i))")
    start_at = str(time.time() + 3)
    procs = [subprocess.Popen([sys.executable, "-m", "fastproxy", "replay", "--target", mariadb_test.addr,
                               "--input", cap, "--username", "root", "--password", ROOT_PASSWORD, "--speed", "0",
                               "--shard", f"{i}/3", "--start-at", start_at, "--no-report-tables",
                               "--report-dir", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for i in range(3)]
    outs = [p.communicate(timeout=180)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    summaries = [json.load(open(f)) for f in sorted(tmp_path.glob("replay-*.json"))]
    assert len(summaries) == 3
    assert sum(s["commands_replayed"] for s in summaries) == len([r for r in open_input(cap)
                                                                  if r.kind == KIND_COMMAND])
    assert all(s["commands_failed"] == 0 for s in summaries)
    assert checksums(mariadb_test, "sh") == source_sums

    # `traffic report` of the directory says which shard's verdict it shows, and names the others
    def report(*args):
        res = subprocess.run([sys.executable, "-m", "fastproxy", "traffic", "report", str(tmp_path), *args],
                             capture_output=True, text=True, timeout=120)
        return res.returncode, res.stdout + res.stderr

    stamps = sorted(f.name[len("replay-"):-len(".json")] for f in tmp_path.glob("replay-*.json"))
    time_part = stamps[0][:-len("-shard0of3")]
    assert stamps == [f"{time_part}-shard{i}of3" for i in range(3)], stamps
    rc, out = report()
    assert rc == 0 and "Traceback" not in out, out
    assert f"replay {stamps[2]}: shard 2/3 (--shard 2/3) of a sharded replay" in out, out
    assert f"3 of its 3 shards are here: --replay {stamps[0]}, --replay {stamps[1]} shows the others" in out, out
    assert "VERDICT" in out
    # --replay <time>, as the help says: the run's shards to choose from
    rc, out = report("--replay", time_part)
    assert rc == 1 and "Traceback" not in out, out
    assert f"replay {time_part} was sharded: give one of --replay {stamps[0]}, --replay {stamps[1]}, " \
           f"--replay {stamps[2]}" in out, out
    rc, out = report("--replay", stamps[1])
    assert rc == 0 and "shard 1/3 (--shard 1/3)" in out and "VERDICT" in out, out


def test_the_same_input_twice_is_refused(tmp_path):
    """`--input cap --input cap` (or cap/, or a link to it) would replay every command twice: refused."""
    from click.testing import CliRunner

    from fastproxy.cli import main

    convert(ListSource([_open(1, "u", "d", T0), _q(1, T0 + 10, "SELECT 1")]), str(tmp_path / "a"))
    convert(ListSource([_open(1, "u", "d", T0), _q(1, T0 + 10, "SELECT 2")]), str(tmp_path / "b"))
    (tmp_path / "link").symlink_to(tmp_path / "a")
    a = str(tmp_path / "a")
    for second in (a, a + "/", str(tmp_path / "link")):
        res = CliRunner().invoke(main, ["replay", "--dry-run", "--username", "root", "--input", a, "--input", second,
                                        "--report-dir", str(tmp_path)])
        assert res.exit_code == 1 and "Traceback" not in res.output, res.output
        assert f"input: {second} and {a} are the same location" in res.output, res.output
    res = CliRunner().invoke(main, ["replay", "--dry-run", "--username", "root", "--input", a,
                                    "--input", str(tmp_path / "b"), "--report-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
