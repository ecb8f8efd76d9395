"""Capture and replay-summary files: never through a planted symlink, never over an existing file, only
in a directory that belongs to the proxy's user and that no one else can write into, never at a
relative path.

The planted links point at a "victim" file outside the directory: the proxy must leave it untouched.
"""
from __future__ import annotations

import os
import time

import MySQLdb
import pytest

from capture_util import cancel_capture, read_capture, run_cli, start_capture, wait_for
from conftest import connect_kwargs
from fastproxy._ringbuf import RingBuffer
from fastproxy.capture.record import KIND_COMMAND
from fastproxy.capture.writer import CaptureWriter
from replay_util import Capture, replay_inprocess

pytestmark = pytest.mark.timeout(150)

FOREIGN_UID = 12345  # no such user here: a directory of "someone else"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user (chown) needs root")


@pytest.fixture
def victim(tmp_path):
    path = tmp_path / "victim"
    path.write_bytes(b"precious, not the proxy's\n")
    return path


def untouched(victim) -> bool:
    return victim.read_bytes() == b"precious, not the proxy's\n"


def private_dir(path):
    path.mkdir(mode=0o700)
    os.chmod(path, 0o700)
    return path


def query(proxy, sql: str = "SELECT 1") -> None:
    conn = MySQLdb.connect(**connect_kwargs(proxy.port), autocommit=True)
    cur = conn.cursor()
    cur.execute(sql)
    cur.fetchall()
    conn.close()


# ---- planted symlinks ----------------------------------------------------------------------------
def test_planted_meta_tmp_link_is_not_followed(mariadb, proxy_factory, tmp_path, victim):
    proxy = proxy_factory([mariadb])
    out = private_dir(tmp_path / "cap")
    os.symlink(victim, out / "meta.tmp")
    status, body = proxy.post("/api/traffic/capture", {"output": str(out), "duration": "10m"})
    if status == 200:  # (the defect: the capture ran and its meta went through the link)
        query(proxy)
        cancel_capture(proxy)
    assert untouched(victim)
    assert status == 400, body
    assert "File exists" in body and str(out / "meta.tmp") in body, body
    assert os.path.islink(out / "meta.tmp") and not os.path.lexists(out / "meta")
    query(proxy)  # the proxy serves on


def test_planted_meta_link_is_replaced_not_followed(mariadb, proxy_factory, tmp_path, victim):
    proxy = proxy_factory([mariadb])
    out = tmp_path / "cap"
    start_capture(proxy, out, "10m")
    query(proxy, "SELECT 'captured'")
    os.symlink(victim, out / "meta")  # planted while the capture runs
    job = cancel_capture(proxy)
    assert job["status"] == "canceled" and not job["error"], job
    assert untouched(victim)
    assert not os.path.islink(out / "meta") and not os.path.exists(out / "meta.tmp")
    meta, records, _ = read_capture(out)  # meta is the capture's, a regular file
    assert meta["commands"] == job["commands"] == sum(r.kind == KIND_COMMAND for r in records) >= 1


class PinnedNames(CaptureWriter):
    """The writer with the name of its next file known in advance, as an attacker would guess it
    (names are a timestamp and a sequence number); pinned here instead of racing the clock."""

    NAME = "traffic-20300101T000000.000Z-000001.bin"

    def _file_name(self) -> str:
        return self.NAME


def test_planted_traffic_file_link_is_not_followed(tmp_path, victim):
    out = private_dir(tmp_path / "cap")
    rb = RingBuffer(1 << 20)
    w = PinnedNames(rb, out, compress=False)
    w.start()
    os.symlink(victim, out / PinnedNames.NAME)
    assert rb.append_command(1, 1, 2, 0, 0, 0, 0, b"\x03SELECT 1")
    meta = w.stop({})
    assert untouched(victim)
    assert w.error == f"cannot write traffic file: File exists: {out / PinnedNames.NAME}", w.error
    assert meta["files"] == [] and meta["records"] == 0 and meta["writer_error"] == w.error
    assert os.path.islink(out / PinnedNames.NAME)


def test_meta_tmp_swapped_mid_capture_is_not_renamed_into_meta(tmp_path, victim):
    out = private_dir(tmp_path / "cap")
    rb = RingBuffer(1 << 20)
    w = CaptureWriter(rb, out, compress=False)
    w.start()
    assert rb.append_command(1, 1, 2, 0, 0, 0, 0, b"\x03SELECT 1")
    os.unlink(out / "meta.tmp")  # the writer's (space-reserving) meta.tmp, replaced by a link
    os.symlink(victim, out / "meta.tmp")
    meta = w.stop({})
    assert untouched(victim)
    assert w.error == f"cannot write meta: replaced by another file during the capture: {out / 'meta.tmp'}"
    assert meta["error"] == w.error and meta["records"] == 1
    assert not os.path.lexists(out / "meta") and os.path.islink(out / "meta.tmp")  # someone else's: left alone


def test_planted_summary_file_links_are_not_followed(mariadb, mariadb_test, proxy_factory, tmp_path, victim):
    from fastproxy.replay.job import summary_base

    proxy = proxy_factory([mariadb])
    cap = str(tmp_path / "cap")
    with Capture(proxy, cap):
        query(proxy, "SELECT 'first'")
        time.sleep(1.5)  # the replay (speed 1) lasts this long: time to plant the links
        query(proxy, "SELECT 'second'")
    reports = private_dir(tmp_path / "reports")
    suffixes = (".json", ".txt", "-fail.jsonl", "-other_errors.jsonl", "-verdict.jsonl", ".html")

    def plant(engine):
        wait_for(lambda: engine.replay_start_ns, what="the replay to start")
        base = summary_base(engine.replay_start_ns)
        for suffix in suffixes:
            os.symlink(victim, reports / (base + suffix))

    summary, engine = replay_inprocess(mariadb_test.host, mariadb_test.port, cap, report_dir=str(reports),
                                       during=plant)
    assert untouched(victim)
    assert summary["commands_replayed"] >= 2 and summary["summary_files"] == []
    base = summary_base(engine.replay_start_ns)
    for suffix in suffixes:
        assert f"cannot write {reports / (base + suffix)}: File exists" in summary["summary_files_error"]
        assert os.path.islink(reports / (base + suffix))


def test_output_dir_swapped_for_a_link_mid_capture(mariadb, proxy_factory, tmp_path):
    """The writer keeps its directory: new files never land where a swapped-in symlink points."""
    proxy = proxy_factory([mariadb], "--capture.file-size=4KiB")
    out, moved, elsewhere = tmp_path / "cap", tmp_path / "cap-moved", private_dir(tmp_path / "elsewhere")
    start_capture(proxy, out, "10m", compress="false")
    conn = MySQLdb.connect(**connect_kwargs(proxy.port), autocommit=True)
    cur = conn.cursor()
    cur.execute("SELECT 'before the swap'")
    wait_for(lambda: [n for n in os.listdir(out) if n.startswith("traffic-")], what="the first traffic file")
    os.rename(out, moved)
    os.symlink(elsewhere, out)
    for i in range(100):  # several rotations: new files
        cur.execute(f"SELECT {i}, '{'x' * 200}'")
        cur.fetchall()
    conn.close()
    job = cancel_capture(proxy)
    assert job["status"] == "canceled" and not job["error"], job
    assert os.listdir(elsewhere) == []
    meta, records, _ = read_capture(moved)
    assert len(meta["files"]) > 2
    selects = [r.payload for r in records if r.kind == KIND_COMMAND and r.payload.startswith(b"\x03SELECT")]
    assert selects[0] == b"\x03SELECT 'before the swap'" and len(selects) == 101


# ---- unsafe directories and relative paths ---------------------------------------------------------
def test_capture_refuses_a_directory_others_can_write(mariadb, proxy_factory, tmp_path):
    proxy = proxy_factory([mariadb])
    for mode, who in ((0o777, "its group and all users"), (0o720, "its group"), (0o1703, "all users")):
        out = tmp_path / f"shared-{mode:o}"
        out.mkdir()
        os.chmod(out, mode)
        status, body = proxy.post("/api/traffic/capture", {"output": str(out), "duration": "10m"})
        assert status == 400, body
        assert body.startswith(f"output: {out} is writable by {who} (mode {mode:04o})"), body
        assert os.listdir(out) == []
    query(proxy)


@needs_root
def test_capture_and_replay_refuse_a_directory_of_another_user(mariadb, proxy_factory, tmp_path):
    proxy = proxy_factory([mariadb])
    theirs = private_dir(tmp_path / "theirs")
    os.chown(theirs, FOREIGN_UID, FOREIGN_UID)
    status, body = proxy.post("/api/traffic/capture", {"output": str(theirs), "duration": "10m"})
    assert status == 400 and body.startswith(f"output: {theirs} belongs to uid {FOREIGN_UID}, not to the proxy's "
                                             f"user root (uid 0)"), body
    cap = str(tmp_path / "cap")
    with Capture(proxy, cap):
        query(proxy)
    status, body = proxy.post("/api/traffic/replay", {"input": cap, "username": "root", "report-dir": str(theirs)})
    assert status == 400 and body.startswith(f"report-dir: {theirs} belongs to uid {FOREIGN_UID}"), body
    assert os.listdir(theirs) == []


def test_relative_and_linked_paths_are_refused(mariadb, proxy_factory, tmp_path):
    proxy = proxy_factory([mariadb])
    status, body = proxy.post("/api/traffic/capture", {"output": "traffic/here", "duration": "10m"})
    assert status == 400 and body.startswith("output: must be an absolute path, got 'traffic/here'"), body
    real = private_dir(tmp_path / "real")
    os.symlink(real, tmp_path / "link")
    status, body = proxy.post("/api/traffic/capture", {"output": str(tmp_path / "link"), "duration": "10m"})
    assert status == 400 and body.startswith(f"output: {tmp_path / 'link'} is a symbolic link"), body
    assert os.listdir(real) == []

    cap = str(tmp_path / "cap")
    with Capture(proxy, cap):
        query(proxy)
    status, body = proxy.post("/api/traffic/replay", {"input": cap, "username": "root", "report-dir": "reports"})
    assert status == 400 and body.startswith("report-dir: must be an absolute path, got 'reports'"), body
    # the default report directory is the input directory: it must be private too
    os.chmod(cap, 0o770)
    status, body = proxy.post("/api/traffic/replay", {"input": cap, "username": "root"})
    assert status == 400 and body.startswith(f"report-dir (by default the input's directory): {cap} is writable by "
                                             f"its group"), body
    assert all(j["type"] == "capture" for j in proxy.get("/api/traffic/show"))  # no replay ever started


def test_standalone_replay_refuses_a_relative_report_dir(tmp_path):
    res = run_cli("replay", "--target", "127.0.0.1:1", "--input", str(tmp_path), "--username", "u",
                  "--password", "p", "--report-dir", "reports")
    assert res.returncode != 0
    assert "report-dir: must be an absolute path, got 'reports'" in res.stderr, res.stderr
