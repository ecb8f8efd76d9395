"""A capture on a disk that fills up (a real one: a 256 KiB tmpfs) stops with the file and the OS error
in its message, and afterwards `show`, meta and the files agree: the commands and bytes they report
are the ones the files hold, no temporary or empty file is left, and the files read back to the cut.
"""
from __future__ import annotations

import os
import random
import re
import subprocess
from collections import Counter

import MySQLdb
import pytest

from capture_util import last_capture, read_capture, start_capture, wait_for
from conftest import connect_kwargs
from fastproxy._ringbuf import RingBuffer
from fastproxy.capture.reader import list_traffic_files
from fastproxy.capture.record import KIND_COMMAND
from fastproxy.capture.writer import CaptureWriter

pytestmark = pytest.mark.timeout(150)


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs: writes beyond it fail with ENOSPC, as on a full disk."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small-disk"
    mnt.mkdir(mode=0o700)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if res.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)


def on_disk(out) -> int:
    return sum(os.path.getsize(os.path.join(out, n)) for n in list_traffic_files(out))


def test_disk_full_stop_show_and_meta_state_what_the_files_hold(mariadb, proxy_factory, small_disk):
    proxy = proxy_factory([mariadb], "--capture.file-size=64KiB")
    out = small_disk / "cap"
    start_capture(proxy, out, "10m", compress="false")
    conn = MySQLdb.connect(**connect_kwargs(proxy.port), autocommit=True)
    cur = conn.cursor()
    sent = 0

    def stopped():
        nonlocal sent
        for _ in range(20):  # the client never notices the capture's trouble
            cur.execute(f"SELECT {sent}, '{'d' * 400}'")
            assert cur.fetchall()[0][0] == sent
            sent += 1
        job = last_capture(proxy)
        return job if job["status"] != "running" else None

    job = wait_for(stopped, timeout=60, interval=0, what="the capture to stop on a full disk")
    cur.execute("SELECT 'still served'")
    conn.close()

    assert job["status"] == "canceled"
    error = job["error"]
    m = re.fullmatch(r"capture writer failed: cannot write traffic file: No space left on device: (\S+)", error)
    assert m and os.path.dirname(m.group(1)) == str(out), error  # names the file and the OS error

    names = os.listdir(out)
    assert "meta" in names and "meta.tmp" not in names  # meta fits (its space was reserved), no temp file left
    meta, records, reader = read_capture(out)
    assert not reader.complete and meta["error"] == error and error.endswith(meta["writer_error"])
    assert meta["files"] == list_traffic_files(out) and all(os.path.getsize(out / n) > 8 for n in meta["files"])
    # what show and meta say is what the files hold
    commands = [r for r in records if r.kind == KIND_COMMAND]
    assert job["commands"] == meta["commands"] == len(commands)
    assert meta["records"] == len(records)
    assert job["bytes_written"] == meta["bytes_written"] == on_disk(out) > 128 * 1024
    assert job["commands_not_written"] == meta["commands_not_written"] >= 1  # at least the refused one
    # whole records, a gap-free prefix of what the client sent
    selects = [int(re.match(rb"\x03SELECT (\d+), ", r.payload).group(1)) for r in commands
               if r.payload.startswith(b"\x03SELECT ")]
    assert selects == list(range(len(selects))) and len(selects) < sent


@pytest.mark.parametrize("compress,key", [(False, None), (True, None), (True, bytes(range(32))),
                                          (False, bytes(range(32)))], ids=["raw", "lz4", "lz4+aes", "raw+aes"])
def test_disk_full_keeps_every_whole_record_that_fits(small_disk, compress, key):
    """The chunk the disk refused is written again record by record: what fits is kept, readable,
    counted; lz4 frames and the AES-CTR stream go on after the cut."""
    rnd = random.Random(6)
    out = small_disk / "cap"
    rb = RingBuffer(4 << 20)
    w = CaptureWriter(rb, out, compress=compress, encryption_key=key)
    w.start()
    payloads = [b"\x03" + rnd.randbytes(rnd.randrange(100, 3000)) for _ in range(2000)]  # ~3 MiB: never fits
    for i, p in enumerate(payloads):  # one chunk, far larger than the free space
        assert rb.append_command(i % 3, i, i + 1, 0, 0, 0, 0, p)
    meta = w.stop({"commands": len(payloads)})
    assert w.error.startswith("cannot write traffic file: No space left on device: " + str(out / "traffic-")), w.error
    meta_read, records, reader = read_capture(out, key)
    assert meta_read == meta and not reader.complete
    assert [r.payload for r in records] == payloads[:len(records)]
    assert meta["records"] == meta["commands"] == len(records) and meta["commands_not_written"] == 2000 - len(records)
    assert meta["bytes_written"] == on_disk(out) == w.bytes_written
    # what fits is kept: of the 192 KiB left beside meta's reserved 64 KiB, at most one salvage piece
    # (16 KiB of records) and one record are missing
    assert meta["bytes_written"] > (192 - 16 - 4) * 1024, meta["bytes_written"]
    assert Counter(r.conn_id for r in records) == Counter(i % 3 for i in range(len(records)))
    assert sorted(os.listdir(out)) == sorted(["meta", *meta["files"]])
