"""CaptureWriter -> files -> TrafficReader/inspect, with real files in tmp_path."""
import io
import json
import os
import random
import resource
import shutil
import signal
import stat
import subprocess

import pytest

from fastproxy._ringbuf import RingBuffer
from fastproxy.capture import crypto
from fastproxy.capture.inspect import inspect_capture
from fastproxy.capture.reader import UNKNOWN_REORDER_WINDOW_NS, Record, TrafficReader
from fastproxy.capture.record import (FORMAT_VERSION, HEADER_SIZE, KIND_COMMAND, KIND_CONN_CLOSE, KIND_CONN_OPEN,
                                      KIND_CONN_STATE, OUTCOME_ERR, OUTCOME_NO_RESPONSE,
                                      OUTCOME_OK)
from fastproxy.capture.reorder import in_completion_order
from fastproxy.capture.writer import WRITEBACK_STEP, CaptureWriter, output_dir_has_capture
from fastproxy.errors import ConfigError, JobError, TrafficFormatError

KEY = bytes(range(32))
T0 = 1_700_000_000_000_000_000


def make_records(n, seed=1):
    rnd = random.Random(seed)
    recs = []
    for i in range(n):
        conn = i % 17
        if i % 50 == 0:
            body = json.dumps({"user": "app", "db": "shop", "capabilities": 0xA685,
                               "client_addr": f"10.0.0.{conn}:4000"}).encode()
            recs.append(Record(KIND_CONN_OPEN, conn, T0 + i, 0, 0, 0, 0, 0, body))
            continue
        sql = f"SELECT * FROM t{rnd.randrange(100)} WHERE id = {rnd.randrange(10**9)}"
        payload = b"\x03" + sql.encode() + os.urandom(rnd.randrange(0, 64))
        recs.append(Record(KIND_COMMAND, conn, T0 + i * 1000, T0 + i * 1000 + 700,
                           OUTCOME_OK, 0, rnd.randrange(5), rnd.randrange(100), payload))
    return recs


def append(rb, r):
    if r.kind == KIND_COMMAND:
        return rb.append_command(r.conn_id, r.start_ns, r.end_ns, r.outcome, r.err_code,
                                 r.affected_rows, r.rows, r.payload)
    return rb.append_event(r.kind, r.conn_id, r.start_ns, r.payload)


def capture(out, recs, rb_size=1 << 20, meta=None, **kw):
    """Append while the writer thread runs (as the proxy does); return the stopped writer."""
    rb = RingBuffer(rb_size)
    w = CaptureWriter(rb, out, **kw)
    w.start()
    for r in recs:
        while not append(rb, r):  # the test producer may wait; the proxy never does
            assert w.error is None
            rb_wait(w)
    w.stop(meta or {"commands": len(recs)})
    return w


def rb_wait(w):
    w._stop_evt.wait(0.001)


@pytest.mark.parametrize("compress", [True, False], ids=["lz4", "raw"])
@pytest.mark.parametrize("key", [None, KEY], ids=["plain", "aes"])
def test_round_trip(tmp_path, compress, key):
    recs = make_records(20_000)
    out = tmp_path / "cap"
    w = capture(out, recs, compress=compress, encryption_key=key,
                meta={"start": "2024-01-01T00:00:00Z", "commands": 19_600, "server_version": "8.0"})
    assert w.error is None
    assert w.records_written == len(recs)
    r = TrafficReader(out, key)
    assert r.complete
    assert r.meta["format_version"] == FORMAT_VERSION
    assert r.meta["server_version"] == "8.0" and r.meta["commands"] == 19_600
    assert r.meta["records"] == len(recs)
    assert r.meta["files"] == w.files == r.files
    assert r.meta["bytes_written"] == sum(os.path.getsize(out / f) for f in w.files)
    assert r.meta["compression"] == ("lz4" if compress else "none")
    assert r.meta["encryption"] == ("aes-256-ctr" if key else "none")
    ext = ("lz4" if compress else "bin") + (".enc" if key else "")
    assert all(f.endswith("." + ext) for f in w.files)
    assert list(r) == recs
    # stop() is idempotent
    assert w.stop({"other": 1}) == r.meta


def test_encrypted_files_do_not_hold_plaintext(tmp_path):
    recs = [Record(KIND_COMMAND, 1, T0, T0, 0, 0, 0, 0, b"\x03SELECT secret_column FROM t")] * 10
    w = capture(tmp_path / "cap", recs, compress=False, encryption_key=KEY)
    data = (tmp_path / "cap" / w.files[0]).read_bytes()
    assert b"secret_column" not in data


def test_rotation_keeps_order_and_whole_records(tmp_path):
    recs = make_records(30_000, seed=2)
    out = tmp_path / "cap"
    w = capture(out, recs, file_size=64 * 1024, compress=True)
    assert len(w.files) >= 5
    assert sorted(w.files) == w.files  # names sort in write order
    assert sorted(n for n in os.listdir(out) if n != "meta") == w.files
    assert list(TrafficReader(out)) == recs
    # Each file is a complete, independently readable stream (no record split across files).
    for name in w.files:
        single = tmp_path / name
        single.mkdir()
        shutil.copy(out / name, single / name)
        assert list(TrafficReader(single))


def test_permissions(tmp_path):
    out = tmp_path / "cap"
    w = capture(out, make_records(100), file_size=1024)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o700
    for name in w.files + ["meta"]:
        assert stat.S_IMODE(os.stat(out / name).st_mode) == 0o600


def test_overflow_refuses_appends_and_keeps_files_valid(tmp_path):
    out = tmp_path / "cap"
    rb = RingBuffer(64 * 1024)
    w = CaptureWriter(rb, out, compress=False, throttle_bytes_per_sec=200_000)
    w.start()
    accepted = []
    for r in make_records(50_000, seed=3):
        if not append(rb, r):
            break  # the caller stops the capture at the first refusal
        accepted.append(r)
    else:
        pytest.fail("a throttled writer kept up with an unbounded producer")
    meta = w.stop({"error": "ring buffer full"})
    assert w.error is None
    assert meta["records"] == len(accepted)
    assert list(TrafficReader(out)) == accepted  # nothing accepted was dropped


def test_output_dir_under_proc_sets_error(tmp_path):
    w = CaptureWriter(RingBuffer(4096), "/proc/fastproxy-no-such-dir/cap")
    w.start()  # must not raise
    meta = w.stop({})
    assert w.error and "/proc/fastproxy-no-such-dir" in w.error
    assert meta["error"] == w.error


def test_output_dir_removed_after_start_sets_error(tmp_path):
    out = tmp_path / "cap"
    rb = RingBuffer(1 << 16)
    w = CaptureWriter(rb, out)
    w.start()
    shutil.rmtree(out)
    assert rb.append_command(1, T0, T0, 0, 0, 0, 0, b"\x0e")
    meta = w.stop({})
    assert w.error and "cannot write traffic file" in w.error
    assert meta["error"] == w.error
    # The thread stopped draining: the buffer fills and the proxy sees refusals.
    while rb.append_command(1, T0, T0, 0, 0, 0, 0, b"\x03" * 1000):
        pass
    assert rb.used > 0


def test_write_error_mid_file_sets_error(tmp_path):
    """A file size limit makes write() fail with EFBIG, as a full disk fails with ENOSPC."""
    out = tmp_path / "cap"
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, old_limit[1]))
    try:
        rb = RingBuffer(1 << 20)
        w = CaptureWriter(rb, out, compress=False)
        w.start()
        for r in make_records(5_000):
            if not append(rb, r) or w.error:
                break
        meta = w.stop({})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert w.error and "cannot write traffic file" in w.error
    assert meta["error"] == w.error
    # meta is written anyway (it says what happened), and a reader takes the files up to the cut
    assert output_dir_has_capture(out)
    reader = TrafficReader(out)
    assert reader.meta["writer_error"] == w.error and not reader.complete
    got = list(reader)
    assert 0 < len(got) < 5_000


def test_refuses_dir_with_capture(tmp_path):
    out = tmp_path / "cap"
    assert not output_dir_has_capture(out)
    capture(out, make_records(10))
    assert output_dir_has_capture(out)
    with pytest.raises(JobError):
        CaptureWriter(RingBuffer(4096), out).start()
    empty = tmp_path / "empty"
    empty.mkdir()
    capture(empty, make_records(10))  # an existing empty dir is fine


def test_corrupt_compressed_file(tmp_path):
    out = tmp_path / "cap"
    w = capture(out, make_records(5_000), compress=True)
    path = out / w.files[0]
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 16):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    with pytest.raises(TrafficFormatError, match=w.files[0]):
        list(TrafficReader(out))


def test_corrupt_raw_file_names_offset(tmp_path):
    out = tmp_path / "cap"
    recs = make_records(10)
    w = capture(out, recs, compress=False)
    path = out / w.files[0]
    data = bytearray(path.read_bytes())
    second = HEADER_SIZE + len(recs[0].payload)  # stream offset of the second record
    data[8 + second + 4] = 99           # its kind byte (after the 8-byte file header)
    path.write_bytes(bytes(data))
    with pytest.raises(TrafficFormatError, match=rf"{w.files[0]}.*offset {second}\b"):
        list(TrafficReader(out))


@pytest.mark.parametrize("compress", [True, False], ids=["lz4", "raw"])
def test_truncated_file(tmp_path, compress):
    out = tmp_path / "cap"
    recs = make_records(3_000)
    w = capture(out, recs, compress=compress)
    path = out / w.files[-1]
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(TrafficFormatError, match="truncated"):
        list(TrafficReader(out))
    # Without meta (a capture cut off by a crash) the records before the cut are readable.
    os.unlink(out / "meta")
    r = TrafficReader(out)
    assert not r.complete and r.meta == {}
    got = list(r)
    # the records before the cut, in completion order within the window of a capture without meta
    assert 0 < len(got) < len(recs)
    assert got == list(in_completion_order(recs[:len(got)], UNKNOWN_REORDER_WINDOW_NS))
    assert r.truncated_at[0] == w.files[-1]


def test_meta_errors(tmp_path):
    out = tmp_path / "cap"
    capture(out, make_records(10))
    meta = json.loads((out / "meta").read_text())
    (out / "meta").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(TrafficFormatError, match="version 99"):
        TrafficReader(out)
    (out / "meta").write_text("{not json")
    with pytest.raises(TrafficFormatError, match="meta"):
        TrafficReader(out)
    with pytest.raises(TrafficFormatError):
        TrafficReader(tmp_path / "nowhere")
    with pytest.raises(TrafficFormatError, match="no capture"):
        TrafficReader(tmp_path)


def test_keys(tmp_path):
    out = tmp_path / "cap"
    capture(out, make_records(100), encryption_key=KEY)
    with pytest.raises(TrafficFormatError, match="wrong encryption key"):
        list(TrafficReader(out, bytes(32)))
    with pytest.raises(TrafficFormatError, match="key is required"):
        list(TrafficReader(out))
    key_path = tmp_path / "key"
    key = crypto.generate_key_file(key_path)
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    assert crypto.load_key(key_path) == key and len(key) == 32
    with pytest.raises(FileExistsError):
        crypto.generate_key_file(key_path)
    long_key = tmp_path / "long"
    long_key.write_bytes(KEY + b"\n")
    assert crypto.load_key(long_key) == KEY
    short = tmp_path / "short"
    short.write_bytes(b"x" * 31)
    with pytest.raises(ConfigError, match="31 bytes"):
        crypto.load_key(short)
    with pytest.raises(ConfigError):
        crypto.load_key(tmp_path / "missing")
    with pytest.raises(ConfigError):
        CaptureWriter(RingBuffer(4096), out, encryption_key=b"short")


def test_inspect(tmp_path):
    out = tmp_path / "cap"
    recs = [
        Record(KIND_CONN_STATE, 5, T0, 0, 0, 0, 0, 0,
               json.dumps({"user": "app", "db": "shop", "capabilities": 1,
                           "prepared": [[1, "SELECT ?"]]}).encode()),
        Record(KIND_CONN_OPEN, 6, T0 + 1000, 0, 0, 0, 0, 0,
               json.dumps({"user": "bob", "db": None, "capabilities": 1,
                           "client_addr": "10.1.2.3:5555"}).encode()),
        Record(KIND_COMMAND, 6, T0 + 2000, T0 + 5000, OUTCOME_OK, 0, 3, 0,
               b"\x03UPDATE t\n   SET a = 1"),
        Record(KIND_COMMAND, 5, T0 + 3000, T0 + 4000, OUTCOME_ERR, 1146, 0, 0,
               b"\x17\x01\x00\x00\x00\x00\x01\x00\x00\x00"),
        Record(KIND_COMMAND, 5, T0 + 6000, T0 + 6000, OUTCOME_NO_RESPONSE, 0, 0, 0,
               b"\x19\x01\x00\x00\x00"),
        Record(KIND_COMMAND, 6, T0 + 7000, T0 + 9000, OUTCOME_OK, 0, 0, 42,
               b"\x03SELECT '" + "é".encode() * 300 + b"'"),
        Record(KIND_CONN_CLOSE, 6, T0 + 10_000, 0, 0, 0, 0, 0, b""),
    ]
    capture(out, recs)
    buf = io.StringIO()
    summary = inspect_capture(out, out=buf)
    lines = buf.getvalue().splitlines()
    assert lines[0] == "2023-11-14T22:13:20.000000Z conn=5 CONN_STATE user=app db=shop prepared=1"
    assert lines[1] == "2023-11-14T22:13:20.000001Z conn=6 CONN_OPEN user=bob client_addr=10.1.2.3:5555"
    assert lines[2] == "2023-11-14T22:13:20.000002Z conn=6 COM_QUERY OK affected=3 rows=0 3us UPDATE t SET a = 1"
    assert lines[3] == ("2023-11-14T22:13:20.000003Z conn=5 COM_STMT_EXECUTE ERR err=1146 "
                        "affected=0 rows=0 1us stmt_id=1")
    assert lines[4].endswith("COM_STMT_CLOSE NO_RESPONSE affected=0 rows=0 0us stmt_id=1")
    assert "rows=42" in lines[5] and lines[5].endswith("...") and len(lines[5]) < 300
    assert lines[6].endswith("conn=6 CONN_CLOSE")
    assert "summary:" in lines and "    COM_QUERY: 2" in lines and "    code 1146: 1" in lines
    assert summary["records"] == 7 and summary["commands"] == 4
    assert summary["commands_by_type"] == {"COM_QUERY": 2, "COM_STMT_EXECUTE": 1, "COM_STMT_CLOSE": 1}
    assert summary["connections"] == 2 and summary["conn_state"] == 1 and summary["conn_open"] == 1
    assert summary["errors"] == 1 and summary["errors_by_code"] == {"1146": 1}
    assert summary["span_seconds"] == pytest.approx(10e-6)
    assert summary["complete"]

    buf = io.StringIO()
    inspect_capture(out, out=buf, as_json=True, limit=3)
    rows = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert len(rows) == 4 and rows[-1]["summary"]["records"] == 7
    assert rows[2]["sql"] == "UPDATE t\n   SET a = 1" and rows[2]["duration_us"] == 3
    assert rows[0]["info"]["prepared"] == [[1, "SELECT ?"]]


def test_inspect_says_outcome_unknown_for_logs_and_a_prepares_statement_id(tmp_path):
    """A general or slow log does not record whether a statement succeeded: inspect says the outcome is
    unknown (not OK). A prepare's record keeps its statement id where others keep affected rows."""
    general = tmp_path / "general.log"
    general.write_text("/usr/sbin/mariadbd, Version: 10.11 (Debian). started with:\nTcp port: 1  Unix socket: s\n"
                       "Time\t\t    Id Command\tArgument\n"
                       "261203 11:13:53\t     5 Connect\troot@127.0.0.1 on d using TCP/IP\n"
                       "\t\t     5 Query\tSELECT nothing FROM nowhere\n\t\t     5 Quit\t\n")
    slow = tmp_path / "slow.log"
    slow.write_text("# Time: 241203 11:05:01\n# User@Host: root[root] @ localhost []\n# Thread_id: 7  Schema: d\n"
                    "# Query_time: 0.5  Lock_time: 0.0  Rows_sent: 3  Rows_examined: 9\n"
                    "SET timestamp=1733223901;\nSELECT a FROM t;\n")
    for log, sql in ((general, "SELECT nothing FROM nowhere"), (slow, "SELECT a FROM t")):
        buf = io.StringIO()
        inspect_capture(str(log), out=buf)
        line = next(x for x in buf.getvalue().splitlines() if x.endswith(sql))
        assert " COM_QUERY outcome unknown " in line and " OK " not in line, line
        buf = io.StringIO()
        inspect_capture(str(log), out=buf, as_json=True)
        row = next(json.loads(x) for x in buf.getvalue().splitlines() if sql in x)
        assert row["outcome"] is None, row
    assert "rows=3" in line  # the slow log's Rows_sent

    out = tmp_path / "cap"
    capture(out, [Record(KIND_COMMAND, 5, T0, T0 + 1000, OUTCOME_OK, 0, 7, 0, b"\x16SELECT ?"),
                  Record(KIND_COMMAND, 5, T0 + 2000, T0 + 3000, OUTCOME_OK, 0, 0, 1,
                         b"\x17\x07\x00\x00\x00\x00\x01\x00\x00\x00")])
    buf = io.StringIO()
    inspect_capture(out, out=buf)
    lines = buf.getvalue().splitlines()
    assert lines[0] == "2023-11-14T22:13:20.000000Z conn=5 COM_STMT_PREPARE OK rows=0 1us stmt_id=7 SELECT ?"
    assert lines[1].endswith("COM_STMT_EXECUTE OK affected=0 rows=1 1us stmt_id=7")


def test_version_1_capture_still_reads(tmp_path):
    """Captures written before format version 2 (48-byte record headers) still read and replay."""
    from fastproxy.capture.record import FILE_HEADER, HEADER_V1, MAGIC

    out = tmp_path / "v1"
    out.mkdir()
    recs = [Record(KIND_CONN_OPEN, 3, T0, 0, 0, 0, 0, 0, b'{"user": "u"}'),
            Record(KIND_COMMAND, 3, T0 + 1, T0 + 9, OUTCOME_OK, 0, 4, 2, b"\x03SELECT 1"),
            Record(KIND_COMMAND, 3, T0 + 10, T0 + 19, OUTCOME_ERR, 1064, 0, 0, b"\x03SELEC")]
    body = b"".join(HEADER_V1.pack(HEADER_V1.size + len(r.payload), r.kind, r.outcome, r.err_code, r.conn_id,
                                   r.start_ns, r.end_ns, r.affected_rows, r.rows) + r.payload for r in recs)
    name = "traffic-20240101T000000.000Z-000001.bin"
    (out / name).write_bytes(FILE_HEADER.pack(MAGIC, 1, 0, 0) + body)
    (out / "meta").write_text(json.dumps({"format_version": 1, "files": [name], "records": 3}))
    got = list(TrafficReader(out))
    assert got == recs
    assert got[1].last_insert_id == 0 and got[1].hash_ordered == 0  # version 2 fields read as 0


def test_a_long_capture_does_not_stay_in_the_page_cache(tmp_path):
    """The writer starts the writeback of what it wrote every WRITEBACK_STEP and drops what was
    written back before: a capture of many MB leaves little of itself in the page cache (the
    database's), and no seconds of dirty data for the filesystem's periodic commit."""
    if not shutil.which("fincore"):
        pytest.skip("fincore (util-linux) not installed")
    if _fs_type(tmp_path) in ("tmpfs", "ramfs"):
        pytest.skip("a memory file system has no writeback")
    out = tmp_path / "cap"
    w = capture(out, make_records(150_000), compress=False)
    assert w.error is None
    (name,) = [f for f in os.listdir(out) if f.startswith("traffic-")]
    path = out / name
    size = os.path.getsize(path)
    assert size > 20 * WRITEBACK_STEP
    res = subprocess.run(["fincore", "-b", "-n", "-o", "RES", str(path)], capture_output=True, text=True,
                         check=True).stdout.split()
    cached = int(res[0])
    assert cached < size / 4, f"{cached} of {size} bytes still in the page cache"
    assert [r.conn_id for r in TrafficReader(out)][:3] == [0, 1, 2]  # and it reads back from the disk


def _fs_type(path) -> str:
    """The file system type of path's mount (longest matching mount point in /proc/mounts)."""
    best, kind = "", ""
    real = os.path.realpath(path)
    with open("/proc/mounts") as f:
        for line in f:
            fields = line.split()
            mnt = fields[1]
            if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
                best, kind = mnt, fields[2]
    return kind


# -- the lz4 frame (fastproxy/capture/_encoder.pyx) -------------------------------------------

LZ4_MAGIC = b"\x04\x22\x4d\x18"


def frame_descriptor(path, key=None):
    """The FLG and BD bytes of a traffic file's lz4 frame."""
    data = path.read_bytes()
    body = data[8:]
    if key is not None:
        iv = data[8:8 + crypto.IV_SIZE]
        body = crypto.ctr_cipher(key, iv).update(data[8 + crypto.IV_SIZE + crypto.KEY_CHECK_SIZE:])
    assert body[:4] == LZ4_MAGIC
    return body[4], body[5]


@pytest.mark.parametrize("key", [None, KEY], ids=["plain", "aes"])
def test_lz4_frames_have_block_checksums_and_no_content_checksum(tmp_path, key):
    """The format (docs/traffic-format.md): independent 64 KiB blocks, each with its checksum; no
    content checksum since the writer compresses in C (the block checksums cover every byte)."""
    w = capture(tmp_path / "cap", make_records(5_000), encryption_key=key, file_size=64 * 1024)
    assert len(w.files) > 1
    for name in w.files:
        flg, bd = frame_descriptor(tmp_path / "cap" / name, key)
        assert flg >> 6 == 1                      # frame format version 01
        assert flg & 0x20 and flg & 0x10           # independent blocks, block checksums
        assert not flg & 0x04                      # no content checksum
        assert (bd >> 4) & 7 == 4                  # 64 KiB blocks


def test_a_flipped_byte_anywhere_in_a_compressed_file_is_detected(tmp_path):
    """Without a content checksum, the block checksums alone must catch corruption of any block."""
    out = tmp_path / "cap"
    w = capture(out, make_records(5_000))
    path = out / w.files[0]
    good = path.read_bytes()
    rnd = random.Random(5)
    for at in [8 + 7, len(good) - 5] + rnd.sample(range(8 + 7, len(good) - 4), 40):  # past the frame header
        bad = bytearray(good)
        bad[at] ^= 1 << rnd.randrange(8)
        path.write_bytes(bytes(bad))
        with pytest.raises(TrafficFormatError, match=w.files[0]):
            list(TrafficReader(out))


def write_old_lz4_capture(out, recs, key=None):
    """A capture as the writer made it before its frames lost the content checksum (python-lz4,
    content and block checksums, one flush per chunk of records)."""
    import lz4.frame

    from fastproxy.capture.record import FILE_HEADER, MAGIC, encode

    out.mkdir()
    comp = lz4.frame.LZ4FrameCompressor(content_checksum=True, block_checksum=True, auto_flush=True,
                                        block_linked=False)
    body = comp.begin()
    for i in range(0, len(recs), 700):
        body += comp.compress(b"".join(encode(r) for r in recs[i:i + 700]))
    body += comp.flush()
    head = FILE_HEADER.pack(MAGIC, 2, 0x01 | (0x02 if key else 0), 0)
    if key is not None:
        iv = crypto.new_iv()
        head += iv + crypto.key_check_value(key, iv)
        body = crypto.ctr_cipher(key, iv).update(body)
    name = "traffic-20261201T000000.000Z-000001." + ("lz4.enc" if key else "lz4")
    (out / name).write_bytes(head + body)
    (out / "meta").write_text(json.dumps({"format_version": 2, "files": [name], "records": len(recs)}))
    return out / name


@pytest.mark.parametrize("key", [None, KEY], ids=["plain", "aes"])
def test_captures_with_content_checksums_still_read_and_are_checked(tmp_path, key):
    recs = make_records(3_000)
    path = write_old_lz4_capture(tmp_path / "old", recs, key)
    assert frame_descriptor(path, key)[0] & 0x04  # it has one
    assert list(TrafficReader(tmp_path / "old", key)) == recs
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x40  # the content checksum (CTR: the same bit of the plaintext flips)
    path.write_bytes(bytes(data))
    with pytest.raises(TrafficFormatError, match=path.name):
        list(TrafficReader(tmp_path / "old", key))


@pytest.mark.parametrize("compress", [True, False], ids=["lz4", "raw"])
def test_chunks_that_wrap_around_the_ring(tmp_path, compress):
    """The writer compresses records where they lie in the ring: also a chunk split by its end."""
    recs = make_records(2_000)
    rb = RingBuffer(64 * 1024)
    i = 0
    while rb.used < 48 * 1024:
        assert append(rb, recs[i])
        i += 1
    tail = len(rb.drain(40 * 1024))  # the tail moves on; what was drained is not captured
    gone, n = 0, tail
    while n > 0:
        n -= HEADER_SIZE + len(recs[gone].payload)
        gone += 1
    while append(rb, recs[i]):  # past the end of the buffer: the records wrap
        i += 1
    assert tail + rb.used > 64 * 1024
    w = CaptureWriter(rb, tmp_path / "cap", compress=compress)
    w.start()
    w.stop({})
    assert w.error is None and w.records_written == i - gone
    assert list(TrafficReader(tmp_path / "cap")) == recs[gone:i]
    assert rb.records_drained == i and rb.commands_drained == sum(r.kind == KIND_COMMAND for r in recs[:i])


def test_a_flipped_stored_raw_flag_is_detected(tmp_path):
    """A block's 4-byte size field (with its "stored uncompressed" bit) is outside the block
    checksum. A flip of that bit hands the reader the block's bytes undecoded, of another length
    than the records they hold: the record checks that follow catch it (no content checksum to do
    it since the writer's frames lost theirs)."""
    out = tmp_path / "cap"
    w = capture(out, make_records(5_000))
    path = out / w.files[0]
    good = path.read_bytes()
    pos, blocks = 8 + 7, []  # the file header, then the frame header (magic, FLG, BD, HC)
    while (size := int.from_bytes(good[pos:pos + 4], "little")) != 0:
        blocks.append(pos)
        pos += 4 + (size & 0x7FFFFFFF) + 4  # size field, data, block checksum
    assert len(blocks) > 3
    for at in blocks:
        bad = bytearray(good)
        bad[at + 3] ^= 0x80
        path.write_bytes(bytes(bad))
        with pytest.raises(TrafficFormatError, match=w.files[0]):
            list(TrafficReader(out))


def test_a_stopped_writer_lets_go_of_the_ring(tmp_path):
    """The ring's memory (64 MiB by default) is freed with the capture, not with the writer object
    (the job keeps that for its meta)."""
    import sys

    rb = RingBuffer(1 << 20)
    before = sys.getrefcount(rb)
    w = CaptureWriter(rb, tmp_path / "cap")
    w.start()
    for r in make_records(100):
        assert append(rb, r)
    w.stop({})
    assert w.records_written == 100
    assert sys.getrefcount(rb) == before
