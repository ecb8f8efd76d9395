"""The verdict through a proxy's HTTP API: `fastproxy traffic replay --curls ... --baseline ...
--slower-ratio ...` reaches the job (an A/B replay against the proxy's backend and a baseline),
`show` then holds the verdict, the baseline and the report's path; a bad threshold is refused with
400 naming its field, before anything runs."""
from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from fastproxy.cli import main as cli_main
from fastproxy.scratch_db import ROOT_PASSWORD

from conftest import start_proxy, stop_proxy
from replay_util import Capture, wait_job

pytestmark = pytest.mark.timeout(180)

DB = "verdict_api"


@pytest.fixture(scope="module")
def small_capture(mariadb, tmp_path_factory):
    mariadb.sql(f"DROP DATABASE IF EXISTS {DB}; CREATE DATABASE {DB}; USE {DB};"
                "CREATE TABLE t (id INT PRIMARY KEY, v INT); INSERT INTO t VALUES (1, 10), (2, 20);")
    out = str(tmp_path_factory.mktemp("vapi") / "capture")
    proxy = start_proxy([mariadb])
    try:
        with Capture(proxy, out):
            import MySQLdb

            conn = MySQLdb.connect(host="127.0.0.1", port=proxy.port, user="root", password=ROOT_PASSWORD,
                                   database=DB, autocommit=True)
            cur = conn.cursor()
            for i in range(5):
                cur.execute("SELECT v FROM t WHERE id = %s", (1 + i % 2,))
                cur.fetchall()
            conn.close()
    finally:
        stop_proxy(proxy)
    return out


def test_ab_replay_through_the_api_reports_its_verdict(small_capture, mariadb, mariadb_test, proxy_factory):
    mariadb_test.sql(f"DROP DATABASE IF EXISTS {DB}; CREATE DATABASE {DB}; USE {DB};"
                     "CREATE TABLE t (id INT PRIMARY KEY, v INT); INSERT INTO t VALUES (1, 10), (2, 21);")
    proxy = proxy_factory([mariadb_test])
    res = CliRunner().invoke(cli_main, ["traffic", "replay", "--curls", proxy.api, "--input", small_capture,
                                        "--username", "root", "--password", ROOT_PASSWORD, "--speed", "0",
                                        "--baseline", mariadb.addr, "--slower-ratio", "2", "--explain-top", "3"])
    assert res.exit_code == 0, res.output
    job = wait_job(proxy, "replay")
    assert job["status"] == "done", job
    verdict = job["verdict"]
    assert verdict["reference"] == f"baseline {mariadb.addr}"  # compared with the baseline, not production
    assert verdict["mismatched_commands"] == 2 and verdict["mismatch_kinds"] == {"content": 2}  # id 2: 20 vs 21
    assert job["baseline"]["target"] == mariadb.addr and job["baseline"]["replayed"] == job["replayed"]
    assert os.path.isfile(job["report_html"]) and job["report_html"] in job["summary_files"]


@pytest.mark.parametrize("field,value", [("slower-ratio", "0.5"), ("max-digests", "0"), ("slower-min-count", "ten"),
                                         ("baseline", "not-an-address")])
def test_bad_verdict_fields_are_refused_naming_them(small_capture, mariadb_test, proxy_factory, field, value):
    proxy = proxy_factory([mariadb_test])
    status, body = proxy.post("/api/traffic/replay", {"input": small_capture, "username": "root",
                                                      "password": ROOT_PASSWORD, field: value})
    assert status == 400 and body.startswith(f"{field}: "), (status, body)
    assert proxy.get("/api/traffic/show") == []
