"""Capture under faults: a writer slower than the traffic (buffer full), a disk that refuses writes.

Whatever happens to the capture, clients never see an error and the proxy keeps serving.
"""
from __future__ import annotations

import os
import re
import shutil
import threading
from collections import Counter, defaultdict

import MySQLdb
import pytest

from capture_util import captures, last_capture, read_capture, start_capture, wait_for, wait_for_capture_end
from conftest import connect_kwargs
from fastproxy.capture.record import KIND_COMMAND, KIND_CONN_OPEN, KIND_CONN_STATE

pytestmark = pytest.mark.timeout(150)


def _select_one(proxy) -> None:
    conn = MySQLdb.connect(**connect_kwargs(proxy.port), autocommit=True)
    cur = conn.cursor()
    cur.execute("SELECT 1")
    assert cur.fetchall() == ((1,),)
    conn.close()


# ---- 8. the writer cannot keep up ------------------------------------------------------------------
def test_buffer_full_stops_capture_not_clients(mariadb, proxy_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("FASTPROXY_CAPTURE_THROTTLE_BPS", "20000")  # a slow disk, in the proxy's env
    proxy = proxy_factory([mariadb], "--capture.buffer-size=256KiB")
    threads_n, per_thread = 4, 5000
    conns = [MySQLdb.connect(**connect_kwargs(proxy.port), autocommit=True) for _ in range(threads_n)]
    out = tmp_path / "full"
    start_capture(proxy, out, "10m")
    errors: list[BaseException] = []
    done = Counter()

    def work(k: int) -> None:
        cur = conns[k].cursor()
        try:
            for i in range(per_thread):
                cur.execute(f"SELECT {k}, {i}")
                assert cur.fetchall() == ((k, i),)
                done[k] += 1
        except BaseException as e:  # any client-visible failure fails the test
            errors.append(e)

    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads_n)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(120)
    assert not errors, errors[:3]
    assert sum(done.values()) == threads_n * per_thread

    job = wait_for_capture_end(proxy, timeout=90)  # the stop flushes the buffer at the slow pace
    assert job["status"] == "canceled", job
    assert "buffer full" in job["error"], job["error"]
    # the cause, with figures: the writer's pace against the traffic's
    assert re.search(r"the writer could not keep up .*: it wrote \d+\.\d\d MB/s of records \(\d+\.\d\d MB/s to disk\) "
                     r"while the proxy captured \d+\.\d\d MB/s over \d+\.\d s", job["error"]), job["error"]
    _select_one(proxy)  # still serving
    for c in conns:
        c.close()

    meta, records, reader = read_capture(out)
    assert reader.complete and "buffer full" in meta["error"]
    kinds = Counter(r.kind for r in records)
    assert len(records) == meta["records"]
    assert kinds[KIND_COMMAND] == meta["commands"] == job["commands"] > 0
    assert meta["commands"] < threads_n * per_thread  # it did stop early
    assert kinds[KIND_CONN_STATE] == threads_n and kinds[KIND_CONN_OPEN] == 0
    # nothing dropped in the middle: per connection, a gap-free prefix of its queries
    seqs = defaultdict(list)
    for r in records:
        if r.kind == KIND_COMMAND:
            m = re.fullmatch(rb"\x03SELECT (\d+), (\d+)", r.payload)
            assert m, r.payload
            seqs[r.conn_id].append(int(m.group(2)))
    for conn_id, seq in seqs.items():
        assert seq == list(range(len(seq))), f"conn {conn_id}: captured queries are not a gap-free prefix"


# ---- 9. the disk refuses --------------------------------------------------------------------------------
def test_output_dir_cannot_be_created(mariadb, proxy_factory, tmp_path):
    proxy = proxy_factory([mariadb])
    plain_file = tmp_path / "a-file"
    plain_file.write_text("not a directory\n")
    for target in (plain_file / "capture", "/proc/fastproxy-capture-test/x"):
        status, body = proxy.post("/api/traffic/capture", {"output": str(target), "duration": "10s"})
        assert status == 400 and "cannot" in body, (status, body)
        # the OS error names the path it failed on: the target or the part of it that cannot exist
        assert re.search(r": (/\S+)", body).group(1).rstrip() in str(target), body
        assert re.search(r"Not a directory|No such file|Permission denied|Read-only", body), body
        _select_one(proxy)
    assert all(j["status"] != "running" for j in captures(proxy))
    # nothing is left running: a good capture starts right away
    start_capture(proxy, tmp_path / "good", "1s")
    _select_one(proxy)
    assert wait_for_capture_end(proxy)["status"] == "done"


def test_output_dir_removed_while_capturing(mariadb, proxy_factory, tmp_path):
    proxy = proxy_factory([mariadb], "--capture.file-size=4KiB")
    out = tmp_path / "gone"
    start_capture(proxy, out, "10m", compress="false")
    conn = MySQLdb.connect(**connect_kwargs(proxy.port), autocommit=True)
    cur = conn.cursor()
    cur.execute("SELECT 'first file'")
    wait_for(lambda: [n for n in os.listdir(out) if n.startswith("traffic-")], what="the first traffic file")
    shutil.rmtree(out)  # the next rotation cannot create its file

    def stopped():
        cur.execute(f"SELECT '{'x' * 200}'")  # the client keeps working throughout
        assert cur.fetchall()
        job = last_capture(proxy)
        return job if job["status"] != "running" else None

    job = wait_for(stopped, timeout=60, interval=0.01, what="the capture to stop with an OS error")
    assert job["status"] == "canceled"
    assert "No such file or directory" in job["error"] and str(out) in job["error"], job["error"]
    cur.execute("SELECT 2")
    assert cur.fetchall() == ((2,),)
    conn.close()
    _select_one(proxy)
    assert not os.path.exists(out / "meta")
    start_capture(proxy, tmp_path / "after", "1s")  # the failed job does not block the next one
    assert wait_for_capture_end(proxy)["status"] == "done"
