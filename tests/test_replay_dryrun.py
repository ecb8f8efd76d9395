"""Dry run (`--dry-run`, API field `dry-run`): the replay decodes, filters, plans and schedules but
sends nothing — a real server's Com_* counters and connection count do not move — and it counts
what it would have sent exactly as a real replay of the same capture counts what it sent."""
from __future__ import annotations

import json
import subprocess
import sys
import threading

import MySQLdb
import pytest

from fastproxy.replay.dryrun import count_placeholders
from fastproxy.scratch_db import ROOT_PASSWORD

from conftest import start_proxy, stop_proxy
from replay_util import Capture, commands, dump_restore, replay_cli, wait_job
from test_replay_e2e import CONNS, DB, _schema, _workload

pytestmark = pytest.mark.timeout(240)

# what both runs must agree on (the summary's counts)
SAME = ("commands_read", "commands_replayed", "commands_filtered", "commands_skipped", "connections",
        "reconnects", "other_errors", "filtered_by")


class ServerCounters:
    """Com_* counters and Connections of a server, read over one connection kept open (reading them
    moves only Com_show_status)."""

    def __init__(self, db) -> None:
        self.conn = MySQLdb.connect(host=db.host, port=db.port, user="root", password=ROOT_PASSWORD)

    def read(self) -> dict[str, int]:
        cur = self.conn.cursor()
        cur.execute("SHOW GLOBAL STATUS WHERE Variable_name LIKE 'Com\\_%' OR Variable_name IN "
                    "('Connections', 'Aborted_connects', 'Handler_write', 'Handler_update', 'Handler_delete')")
        return {k: int(v) for k, v in cur.fetchall() if k != "Com_show_status"}

    def close(self) -> None:
        self.conn.close()


@pytest.fixture(scope="module")
def rw_capture(mariadb, mariadb_test, tmp_path_factory):
    """A read/write workload on 4 connections (text and prepared statements, transactions), captured;
    the test server holds the data it started from."""
    _schema(mariadb)
    dump_restore(mariadb, mariadb_test, DB)
    out = str(tmp_path_factory.mktemp("dryrun") / "capture")
    proxy = start_proxy([mariadb])
    try:
        stats = {"commit": 0, "rollback": 0}
        errors: list = []
        with Capture(proxy, out):
            threads = [threading.Thread(target=_workload, args=(proxy.port, i, stats, errors)) for i in range(CONNS)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
        assert not errors, errors
    finally:
        stop_proxy(proxy)
    _STARTING[out] = _dump(mariadb_test)
    return out


_STARTING: dict[str, str] = {}


def _dump(db) -> str:
    return subprocess.run(["mariadb-dump", "--no-defaults", "-h127.0.0.1", f"-P{db.port}", "-uroot",
                           f"-p{ROOT_PASSWORD}", "--databases", DB], capture_output=True, text=True, check=True).stdout


def starting_data(db, capture: str) -> None:
    db.sql(f"DROP DATABASE IF EXISTS {DB};\n" + _STARTING[capture])


@pytest.mark.parametrize("extra", [(), ("--read-only",), ("--order", "connection", "--class", "write")],
                         ids=["all", "read-only", "writes-only"])
def test_dry_run_sends_nothing_and_counts_as_a_real_replay(mariadb, mariadb_test, rw_capture, tmp_path, extra):
    starting_data(mariadb_test, rw_capture)  # the real replay starts from the capture's starting data
    counters = ServerCounters(mariadb_test)
    try:
        before = counters.read()
        _, dry = replay_cli(mariadb_test.addr, rw_capture, "--speed", "0", "--dry-run", "--report-dir",
                            str(tmp_path / "dry"), *extra)
        after_dry = counters.read()
        _, real = replay_cli(mariadb_test.addr, rw_capture, "--speed", "0", "--no-report-tables", "--report-dir",
                             str(tmp_path / "real"), *extra)
        after_real = counters.read()
    finally:
        counters.close()

    moved = {k: (before[k], after_dry[k]) for k in before if before[k] != after_dry[k]}
    assert not moved, f"the dry run reached the server: {moved}"
    # the same reading sees a real replay (so an unchanged reading means something)
    assert after_real["Connections"] > after_dry["Connections"]
    assert sum(after_real[k] - after_dry[k] for k in after_real if k.startswith("Com_")) > 0

    assert dry["dry_run"] and real["dry_run"] is None
    assert {k: dry[k] for k in SAME} == {k: real[k] for k in SAME}, (dry, real)
    assert dry["commands_replayed"] > 0
    if extra:  # something was left out (read-only: writes filtered; a class filter: dropped at the input)
        assert dry["commands_filtered"] + sum(dry["filtered_by"].values()) > 0, dry
    d = dry["dry_run"]
    assert d["connections_would_open"] == real["connections"]
    # what it would have sent: every replayed command but the quits (a close, not a command)
    quits = sum(1 for r in commands(rw_capture) if r.payload[:1] == b"\x01")
    assert d["commands_would_send"] == dry["commands_replayed"] - quits
    assert d["bytes_would_send"] >= 5 * d["commands_would_send"]
    assert d["commands_per_second"] > 0 and d["commands_per_cpu_second"] > 0
    assert real["commands_failed"] == 0 and dry["commands_failed"] == 0, (dry, real)
    assert dry["target"] == mariadb_test.addr
    if "--order" not in extra:
        assert dry["pinned"] == real["pinned"], (dry["pinned"], real["pinned"])


def test_dry_run_needs_no_target(rw_capture, tmp_path):
    report_dir = tmp_path / "reports"
    res = subprocess.run([sys.executable, "-m", "fastproxy", "replay", "--input", rw_capture, "--username", "root",
                          "--speed", "0", "--dry-run", "--report-dir", str(report_dir)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "DRY RUN: nothing was sent" in res.stdout
    [path] = report_dir.glob("replay-*.json")
    summary = json.loads(path.read_text())
    assert summary["target"] == "none (dry run)"
    assert summary["commands_replayed"] == len(commands(rw_capture))

    res = subprocess.run([sys.executable, "-m", "fastproxy", "replay", "--input", rw_capture, "--username", "root",
                          "--password", "x", "--speed", "0"], capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "--target" in res.stderr


def test_dry_run_through_the_api(proxy_factory, mariadb_test, rw_capture, tmp_path):
    proxy = proxy_factory([mariadb_test])
    counters = ServerCounters(mariadb_test)
    try:
        before = counters.read()
        status, body = proxy.post("/api/traffic/replay", {"input": rw_capture, "username": "root",
                                                          "password": ROOT_PASSWORD, "speed": "0", "dry-run": "true",
                                                          "report-dir": str(tmp_path / "reports")})
        assert status == 200, body
        job = wait_job(proxy, "replay")
        after = counters.read()
    finally:
        counters.close()
    assert job["status"] == "done" and job["dry_run"] is True, job
    assert job["replayed"] == len(commands(rw_capture)) and job["failed"] == 0, job
    # the proxy's health checks log in as their own user; nothing of the replay's reached the server
    replays_would_move = [k for k in before if k.startswith("Com_stmt")] + [
        "Com_insert", "Com_update", "Com_delete", "Com_begin", "Com_commit", "Com_rollback"]
    moved = {k: (before[k], after[k]) for k in replays_would_move if before[k] != after[k]}
    assert not moved, moved

    status, body = proxy.post("/api/traffic/replay", {"input": rw_capture, "username": "root", "dry-run": "maybe",
                                                      "report-dir": str(tmp_path / "reports")})
    assert status == 400 and "dry-run" in body, body

    # `fastproxy traffic replay --dry-run`: a wrong password changes nothing, since nobody logs in
    from click.testing import CliRunner

    from fastproxy.cli import main as cli_main

    res = CliRunner().invoke(cli_main, ["traffic", "replay", "--curls", proxy.api, "--input", rw_capture,
                                        "--username", "root", "--password", "wrong", "--speed", "0", "--dry-run"])
    assert res.exit_code == 0, res.output
    job = wait_job(proxy, "replay")
    assert job["dry_run"] is True and job["status"] == "done", job
    assert job["replayed"] == len(commands(rw_capture)) and job["other_errors"] == 0 and job["skipped"] == 0, job


def test_dry_run_refuses_a_baseline(mariadb_test, rw_capture, tmp_path):
    res = subprocess.run([sys.executable, "-m", "fastproxy", "replay", "--target", mariadb_test.addr, "--input",
                          rw_capture, "--username", "root", "--password", ROOT_PASSWORD, "--dry-run", "--baseline",
                          mariadb_test.addr, "--report-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "dry-run: cannot be combined with baseline" in res.stderr, res.stderr


@pytest.mark.parametrize("sql,n", [
    ("SELECT c FROM t WHERE id = ?", 1),
    ("INSERT INTO t VALUES (?, ?, '?', \"?\", `?`) -- ?\n", 2),
    ("SELECT /* ? */ ? + ?, '%s?' # ?", 2),
    ("SELECT 1", 0),
])
def test_count_placeholders(sql, n):
    assert count_placeholders(sql) == n



def test_dry_run_in_process_puts_the_collector_settings_back(rw_capture):
    """A replay raises the collector's youngest-generation threshold while it runs (fewer collections
    per command) and puts the process's setting back (a `serve` process outlives its replays)."""
    import gc

    from replay_util import replay_inprocess

    before = gc.get_threshold()
    gc.set_threshold(1234, *before[1:])
    try:
        summary, _ = replay_inprocess("127.0.0.1", 0, rw_capture, speed=0, dry_run=True)
        assert gc.get_threshold() == (1234, *before[1:])
    finally:
        gc.set_threshold(*before)
    assert summary["commands_replayed"] == len(commands(rw_capture))
    assert summary["dry_run"]["commands_would_send"] > 0 and summary["replayer_cpu_seconds"] > 0
