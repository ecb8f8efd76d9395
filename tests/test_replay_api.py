"""Replay through the HTTP API of a proxy in front of the test server: start, `show` while it runs,
409 on a second start, cancel (immediate and graceful), form errors naming the field, the password
kept out of the log, `show` and the summary files, and `fastproxy traffic replay|show|cancel --curls`
(prompting for the password when it is not given)."""
from __future__ import annotations

import glob
import json
import os
import secrets

import pytest
from click.testing import CliRunner

from fastproxy.cli import main as cli_main

from replay_util import capture_for_replay_user, commands, last_job, wait_for, wait_job

pytestmark = pytest.mark.timeout(180)

USER = "replay_api_user"
PASSWORD = "Pw-" + secrets.token_hex(10)


@pytest.fixture(scope="module")
def api_capture(mariadb, mariadb_test, tmp_path_factory):
    """About 4 s of steady traffic (100 commands/s on 2 connections), and a replay user on the test server."""
    return capture_for_replay_user(mariadb, mariadb_test, str(tmp_path_factory.mktemp("api") / "capture"),
                                   [(4.0, 100.0)], 2, USER, PASSWORD)


def _summaries(report_dir: str) -> list[dict]:
    out = []
    for path in sorted(glob.glob(os.path.join(report_dir, "replay-*.json")), key=os.path.getmtime):
        with open(path) as f:
            out.append(json.load(f))
    return out


def _start(proxy, capture: str, report_dir: str, **extra) -> tuple[int, str]:
    form = {"input": capture, "username": USER, "password": PASSWORD, "speed": "1", "report-dir": report_dir}
    form.update(extra)
    return proxy.post("/api/traffic/replay", form)


def test_replay_api_show_conflict_cancel(proxy_factory, mariadb_test, api_capture, tmp_path):
    proxy = proxy_factory([mariadb_test])
    report_dir = str(tmp_path / "reports")
    n_cmds = len(commands(api_capture))

    status, body = _start(proxy, api_capture, report_dir)
    assert status == 200, body
    job = wait_for(lambda: (j := last_job(proxy, "replay")) and j["replayed"] >= 50 and j, 20, what="progress")
    assert job["status"] == "running", job
    assert job["username"] == USER and job["target"] == mariadb_test.addr, job
    assert job["failed"] == 0 and job["other_errors"] == 0, job
    assert job["lag"]["samples"] > 0 and "p99_ms" in job["lag"], job
    assert job["progress"].endswith("%") and 0 < int(job["progress"][:-1]) < 100, job
    assert job["commands_in_capture"] == n_cmds

    status, body = _start(proxy, api_capture, report_dir)  # one replay at a time
    assert status == 409, body
    assert "already running" in body

    status, body = proxy.post("/api/traffic/cancel", {"type": "replay"})
    assert status == 200 and "replay" in body, body
    job = last_job(proxy, "replay")
    assert job["status"] == "canceled", job
    [s1] = _summaries(report_dir)
    assert s1["canceled"] and s1["commands_replayed"] < n_cmds, s1
    # immediate cancel drops what was read ahead (about 2 s of commands at speed 1)
    assert s1["commands_replayed"] < s1["commands_read"], s1

    # graceful: stop reading, let every command already read finish
    status, body = _start(proxy, api_capture, report_dir)
    assert status == 200, body
    wait_for(lambda: last_job(proxy, "replay")["replayed"] >= 50, 20, what="progress")
    status, body = proxy.post("/api/traffic/cancel", {"type": "replay", "graceful": "true"})
    assert status == 200, body
    job = last_job(proxy, "replay")
    assert job["status"] == "canceled", job
    s2 = _summaries(report_dir)[-1]
    assert s2["canceled"], s2
    assert s2["commands_replayed"] + s2["commands_filtered"] + s2["commands_skipped"] == s2["commands_read"], s2

    # a third run goes to the end
    status, body = _start(proxy, api_capture, report_dir, speed="0")
    assert status == 200, body
    job = wait_job(proxy, "replay")
    assert job["status"] == "done" and job["progress"] == "100%", job
    assert job["replayed"] == n_cmds and job["failed"] == 0 and job["other_errors"] == 0, job
    assert len(job["summary_files"]) == 6  # json, txt, fail, other_errors, the verdict and its HTML page
    assert job["report_html"] in job["summary_files"] and job["verdict"]["new_failures"] == 0

    # the password is nowhere: proxy log, show, summary files
    assert PASSWORD not in proxy.read_log()
    assert PASSWORD not in json.dumps(proxy.get("/api/traffic/show"))
    files = glob.glob(os.path.join(report_dir, "*"))
    assert len(files) == 19  # 3 runs of 6 summary files, and the checkpoint (its journal goes at the end)
    for path in files:
        with open(path) as f:
            assert PASSWORD not in f.read(), path


def test_replay_api_form_errors(proxy_factory, mariadb_test, api_capture, tmp_path):
    proxy = proxy_factory([mariadb_test])
    for extra, field in [({"speed": "fast"}, "speed"), ({"speed": "1000"}, "speed"), ({"speed": "-1"}, "speed"),
                         ({"username": ""}, "username"), ({"input": ""}, "input"),
                         ({"readonly": "maybe"}, "readonly")]:
        status, body = _start(proxy, api_capture, str(tmp_path), **extra)
        assert status == 400, (extra, status, body)
        assert body.startswith(field + ":") or field in body, (extra, body)
    form = {"input": api_capture, "password": PASSWORD}  # no username field at all
    status, body = proxy.post("/api/traffic/replay", form)
    assert status == 400 and "username" in body, body
    assert last_job(proxy, "replay") is None  # nothing started
    assert PASSWORD not in proxy.read_log()


def test_traffic_cli_replay_prompts_for_password(proxy_factory, mariadb_test, api_capture, tmp_path):
    proxy = proxy_factory([mariadb_test])
    runner = CliRunner()
    n_cmds = len(commands(api_capture))
    res = runner.invoke(cli_main, ["traffic", "replay", "--curls", proxy.api, "--input", api_capture,
                                   "--username", USER, "--speed", "0"], input=PASSWORD + "\n")
    assert res.exit_code == 0, res.output
    assert "Password" in res.output and "replay started" in res.output, res.output
    assert PASSWORD not in res.output
    job = wait_job(proxy, "replay")
    # logged in with the prompted password: every command replayed, no login failure
    assert job["status"] == "done" and job["other_errors"] == 0 and job["replayed"] == n_cmds, job

    res = runner.invoke(cli_main, ["traffic", "show", "--curls", proxy.api])
    assert res.exit_code == 0, res.output
    shown = [j for j in json.loads(res.output) if j["type"] == "replay"]
    assert shown[-1]["replayed"] == n_cmds and shown[-1]["failed"] == 0 and "lag" in shown[-1]
    assert PASSWORD not in res.output

    # the password on the command line works too; a wrong one stops the replay at its first login
    summaries = set(glob.glob(os.path.join(api_capture, "replay-*.json")))
    res = runner.invoke(cli_main, ["traffic", "replay", "--curls", proxy.api, "--input", api_capture,
                                   "--username", USER, "--password", "wrong", "--speed", "0"])
    assert res.exit_code == 0, res.output
    job = wait_job(proxy, "replay")
    # nothing reaches the server, and the job says why instead of skipping every command
    assert job["replayed"] == 0 and job["skipped"] == 0 and job["failed"] == 0, job
    assert job["status"] == "canceled" and "cannot log in: 1045" in job["error"], job
    assert set(glob.glob(os.path.join(api_capture, "replay-*.json"))) == summaries  # no summary of nothing

    res = runner.invoke(cli_main, ["traffic", "cancel", "--curls", proxy.api, "--type", "replay"])
    assert res.exit_code == 0 and "no job running" in res.output, res.output
    res = runner.invoke(cli_main, ["traffic", "replay", "--curls", proxy.api, "--input", api_capture,
                                   "--username", USER, "--password", PASSWORD, "--speed", "abc"])
    assert res.exit_code != 0 and "speed" in res.output, res.output
    # the summary files are in the capture directory (no report-dir given), without the password
    for path in glob.glob(os.path.join(api_capture, "replay-*")):
        with open(path) as f:
            assert PASSWORD not in f.read(), path
    assert PASSWORD not in proxy.read_log()
