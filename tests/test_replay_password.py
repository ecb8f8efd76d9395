"""The replay user's password on `fastproxy replay` and `fastproxy traffic replay`: from the command line
(then no longer visible in `ps` / /proc/PID/cmdline of the running process), from FASTPROXY_PASSWORD,
from --password-file (refused unless only its owner can read it), or from the prompt."""
from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys

import pytest
from click.testing import CliRunner

from conftest import start_proxy, stop_proxy
from fastproxy.cli import main as cli_main
from replay_util import capture_for_replay_user, commands, newest_summary, wait_for, wait_job

pytestmark = pytest.mark.timeout(180)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER = "h7_pw_user"
PASSWORD = "Pw-cli-" + secrets.token_hex(8)


@pytest.fixture(scope="module")
def pw_capture(mariadb, mariadb_test, tmp_path_factory):
    """About 3 s of traffic on one connection (a replay at speed 1 runs that long), and the replay
    user on the test server."""
    return capture_for_replay_user(mariadb, mariadb_test, str(tmp_path_factory.mktemp("pw") / "capture"),
                                   [(3.0, 10.0)], 1, USER, PASSWORD)


def _fastproxy(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fastproxy", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _cmdline(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read()


def _replay_args(target: str, capture: str, report_dir: str, *extra: str) -> list[str]:
    return ["replay", "--target", target, "--input", capture, "--username", USER, "--no-report-tables",
            "--report-dir", report_dir, *extra]


def _connected(db) -> bool:
    return db.sql(f"SELECT COUNT(*) FROM information_schema.processlist WHERE user = '{USER}'").split() != ["0"]


def test_standalone_replay_hides_password_from_ps(mariadb_test, pw_capture, tmp_path):
    proc = _fastproxy(*_replay_args(mariadb_test.addr, pw_capture, str(tmp_path), "--speed", "1",
                                    "--password", PASSWORD))
    try:
        # logged in on the target: the arguments were read long before
        wait_for(lambda: _connected(mariadb_test) or proc.poll() is not None, 30, what="the replay to log in")
        assert proc.poll() is None, proc.communicate()
        cmdline = _cmdline(proc.pid)
        assert PASSWORD.encode() not in cmdline, cmdline
        assert b"\0--password\0" + b"x" * len(PASSWORD) + b"\0" in cmdline, cmdline
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    summary = newest_summary(str(tmp_path))
    assert summary["commands_replayed"] == len(commands(pw_capture)) and summary["other_errors"] == 0, summary


def test_standalone_replay_password_from_env_and_file(mariadb_test, pw_capture, tmp_path):
    n = len(commands(pw_capture))
    env = dict(os.environ, FASTPROXY_PASSWORD=PASSWORD)
    proc = _fastproxy(*_replay_args(mariadb_test.addr, pw_capture, str(tmp_path / "env"), "--speed", "0"), env=env)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "Password" not in out + err, out + err   # not prompted
    summary = newest_summary(str(tmp_path / "env"))
    assert summary["commands_replayed"] == n and summary["other_errors"] == 0, summary

    pw_file = tmp_path / "pw"
    pw_file.write_text(PASSWORD + "\n")
    pw_file.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if k != "FASTPROXY_PASSWORD"}
    proc = _fastproxy(*_replay_args(mariadb_test.addr, pw_capture, str(tmp_path / "file"), "--speed", "0",
                                    "--password-file", str(pw_file)), env=env, stdin=subprocess.DEVNULL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    summary = newest_summary(str(tmp_path / "file"))
    assert summary["commands_replayed"] == n and summary["other_errors"] == 0, summary

    # a file others can read is refused, as is giving the password twice
    pw_file.chmod(0o644)
    proc = _fastproxy(*_replay_args(mariadb_test.addr, pw_capture, str(tmp_path), "--password-file", str(pw_file)),
                      env=env, stdin=subprocess.DEVNULL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "--password-file" in err and "chmod 600" in err, err
    assert PASSWORD not in out + err
    pw_file.chmod(0o600)
    proc = _fastproxy(*_replay_args(mariadb_test.addr, pw_capture, str(tmp_path), "--password-file", str(pw_file),
                                    "--password", PASSWORD), env=env, stdin=subprocess.DEVNULL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "not both" in err, err


def test_standalone_replay_prompts_for_the_password(mariadb_test, pw_capture, tmp_path):
    """Neither --password, --password-file nor FASTPROXY_PASSWORD: `fastproxy replay` asks, and the
    answer is not echoed."""
    env = {k: v for k, v in os.environ.items() if k != "FASTPROXY_PASSWORD"}
    proc = _fastproxy(*_replay_args(mariadb_test.addr, pw_capture, str(tmp_path), "--speed", "0"), env=env,
                      stdin=subprocess.PIPE)
    out, err = proc.communicate(PASSWORD + "\n", timeout=60)
    assert proc.returncode == 0, out + err
    assert "Password" in out + err and PASSWORD not in out + err, out + err
    summary = newest_summary(str(tmp_path))  # logged in with the answer: everything replayed
    assert summary["commands_replayed"] == len(commands(pw_capture)) and summary["other_errors"] == 0, summary


def test_traffic_replay_hides_password_from_ps(tmp_path):
    """`fastproxy traffic replay` waits on the API's answer; while it waits, its command line must not
    show the password. The API here is a loopback socket that accepts and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        proc = _fastproxy("traffic", "replay", "--curls", f"127.0.0.1:{port}", "--input", str(tmp_path),
                          "--username", USER, f"--password={PASSWORD}")
        try:
            listener.settimeout(30)
            conn, _ = listener.accept()     # the request is on its way: the options were read before
            with conn:
                cmdline = _cmdline(proc.pid)
                assert PASSWORD.encode() not in cmdline, cmdline
                assert b"\0--password=" + b"x" * len(PASSWORD) + b"\0" in cmdline, cmdline
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()


def test_traffic_replay_password_from_env_and_file(mariadb_test, pw_capture, tmp_path):
    proxy = start_proxy([mariadb_test])
    try:
        n = len(commands(pw_capture))
        runner = CliRunner()
        base = ["traffic", "replay", "--curls", proxy.api, "--input", pw_capture, "--username", USER, "--speed", "0"]
        res = runner.invoke(cli_main, base, env={"FASTPROXY_PASSWORD": PASSWORD})
        assert res.exit_code == 0 and "Password" not in res.output, res.output
        job = wait_job(proxy, "replay")
        assert job["replayed"] == n and job["other_errors"] == 0, job

        pw_file = tmp_path / "pw"
        pw_file.write_text(PASSWORD)    # no trailing newline this time
        pw_file.chmod(0o600)
        res = runner.invoke(cli_main, base + ["--password-file", str(pw_file)], env={"FASTPROXY_PASSWORD": "wrong"})
        assert res.exit_code == 0, res.output          # the file wins over the environment
        job = wait_job(proxy, "replay")
        assert job["replayed"] == n and job["other_errors"] == 0, job
        assert PASSWORD not in proxy.read_log()
    finally:
        stop_proxy(proxy)
