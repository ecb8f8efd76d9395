"""Captures on S3-compatible object storage, against a local S3 server started by the test: replay
and inspect stream them from s3://bucket/prefix (fastproxy's captures and TiProxy's)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fastproxy.capture.record import KIND_COMMAND, KIND_CONN_CLOSE, KIND_CONN_OPEN, Record
from fastproxy.errors import TrafficFormatError
from fastproxy.inputs import detect_format, open_input
from fastproxy.inputs.convert import convert
from replay_util import replay_cli
from s3_util import upload_dir
from tiproxy_format import encode_command, write_capture

T0 = 1_700_000_000_000_000_000


class _Source:
    format = "native"

    def __init__(self, records):
        self.records, self.meta, self.stats = records, {"start_ns": T0}, {}

    def __iter__(self):
        return iter(self.records)


def _capture(path: str, n: int = 300) -> list[Record]:
    body = json.dumps({"user": "root", "db": None, "capabilities": 0, "charset": 45, "client_addr": ""}).encode()
    recs = [Record(KIND_CONN_OPEN, 1, T0, 0, 0, 0, 0, 0, body),
            Record(KIND_COMMAND, 1, T0 + 10, T0 + 20, 0, 0, 1, 0, b"\x03CREATE DATABASE IF NOT EXISTS s3db"),
            Record(KIND_COMMAND, 1, T0 + 30, T0 + 40, 0, 0, 0, 0, b"\x03CREATE TABLE IF NOT EXISTS s3db.t (i INT)")]
    for i in range(n):
        recs.append(Record(KIND_COMMAND, 1, T0 + 100 + i * 1000, T0 + 600 + i * 1000, 0, 0, 1, 0,
                           f"\x03INSERT INTO s3db.t VALUES ({i})".encode()))
    recs.append(Record(KIND_CONN_CLOSE, 1, T0 + 10_000_000, 0, 0, 0, 0, 0, b""))
    convert(_Source(recs), path, file_size=4096)  # several files
    return recs


def test_replay_and_inspect_a_capture_on_s3(s3_server, mariadb_test, tmp_path):
    _, client = s3_server
    client.create_bucket(Bucket="traffic")
    local = str(tmp_path / "cap")
    recs = _capture(local)
    assert len([n for n in os.listdir(local) if n.startswith("traffic-")]) > 1
    upload_dir(client, local, "traffic", "prod/2026-12-03")
    url = "s3://traffic/prod/2026-12-03"
    assert detect_format(url) == "native"
    got = list(open_input(url))
    assert [(r.kind, r.payload) for r in got] == [(r.kind, r.payload) for r in recs]
    res = subprocess.run([sys.executable, "-m", "fastproxy", "traffic", "inspect", url, "--json", "--limit", "0"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.splitlines()[-1])["summary"]["commands"] == len(recs) - 2
    mariadb_test.sql("DROP DATABASE IF EXISTS s3db")
    _, summary = replay_cli(mariadb_test.addr, url, "--speed", "0", "--report-dir", str(tmp_path),
                            "--no-report-tables")
    assert summary["commands_failed"] == 0 and summary["commands_replayed"] == len(recs) - 2
    assert mariadb_test.sql("SELECT COUNT(*) FROM s3db.t").strip() == "300"


def test_tiproxy_capture_on_s3(s3_server, tmp_path):
    _, client = s3_server
    client.create_bucket(Bucket="tiproxy")
    import datetime

    t = datetime.datetime(2024, 12, 3, 11, 5, 1, tzinfo=datetime.timezone.utc)
    write_capture(str(tmp_path / "tp"), [encode_command(t, 5, b"\x02db") + encode_command(t, 5, b"\x03SELECT 1")])
    upload_dir(client, str(tmp_path / "tp"), "tiproxy", "cap")
    assert detect_format("s3://tiproxy/cap") == "tiproxy"
    cmds = [r for r in open_input("s3://tiproxy/cap") if r.kind == KIND_COMMAND]
    assert [r.payload for r in cmds] == [b"\x03SELECT 1"]


def test_missing_prefix_and_bucket_are_clear_errors(s3_server):
    with pytest.raises(TrafficFormatError, match="s3://traffic/nothing-here"):
        open_input("s3://traffic/nothing-here", "native")
    with pytest.raises(TrafficFormatError, match="NoSuchBucket|cannot list"):
        open_input("s3://no-such-bucket/x", "native")


def test_capture_through_the_proxy_to_s3_then_replay_from_it(s3_server, mariadb, mariadb_test, proxy, tmp_path):
    """`traffic capture --output s3://...`: files are uploaded as they complete (meta last), the spool
    is removed, and the capture replays from the bucket."""
    import MySQLdb

    from fastproxy.scratch_db import ROOT_PASSWORD
    from replay_util import wait_job

    _, client = s3_server
    client.create_bucket(Bucket="captures")
    url = "s3://captures/prod/run1"
    mariadb.sql("DROP DATABASE IF EXISTS s3cap; CREATE DATABASE s3cap; CREATE TABLE s3cap.t (i INT)")
    status, body = proxy.post("/api/traffic/capture", {"output": url, "duration": "10m"})
    assert status == 200, body
    c = MySQLdb.connect(host="127.0.0.1", port=proxy.port, user="root", password=ROOT_PASSWORD, db="s3cap",
                        autocommit=True)
    for i in range(200):
        c.cursor().execute("INSERT INTO t VALUES (%s)", (i,))
    c.close()
    assert proxy.post("/api/traffic/cancel", {"type": "capture"})[0] == 200
    job = wait_job(proxy, "capture")
    assert job["error"] == "" and job["output"] == url, job
    names = [o["Key"] for o in client.list_objects_v2(Bucket="captures", Prefix="prod/run1/")["Contents"]]
    assert "prod/run1/meta" in names and any(n.startswith("prod/run1/traffic-") for n in names)
    assert not [d for d in os.listdir("/tmp") if d.startswith("fastproxy-spool-")
                and os.path.getmtime(f"/tmp/{d}") > os.path.getmtime(str(tmp_path))]  # spool gone
    # the same prefix is refused for a second capture
    status, body = proxy.post("/api/traffic/capture", {"output": url, "duration": "10m"})
    assert status == 400 and "already holds" in body
    mariadb_test.sql("DROP DATABASE IF EXISTS s3cap; CREATE DATABASE s3cap; CREATE TABLE s3cap.t (i INT)")
    _, summary = replay_cli(mariadb_test.addr, url, "--speed", "0", "--report-dir", str(tmp_path),
                            "--no-report-tables")
    assert summary["commands_failed"] == 0
    assert mariadb_test.sql("SELECT COUNT(*) FROM s3cap.t").strip() == "200"
