"""Every error of the capture reader names the file and the offset, also for a damaged file header
(found by bench/fuzz_capture_reader.py: those named the file only), and bytes after the end of a
file's lz4 frame are an error (found by the same fuzzer: when they came in the same read as the
frame's end, they were silently ignored)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from fastproxy.capture.reader import TrafficReader
from fastproxy.capture.record import FILE_HEADER
from fastproxy.errors import TrafficFormatError
from test_capture_store import KEY, capture, make_records


def _one_file(tmp_path, compress=True, key=None):
    out = tmp_path / "cap"
    w = capture(str(out), make_records(200), compress=compress, encryption_key=key)
    assert w.error is None
    (name,) = [n for n in os.listdir(out) if n.startswith("traffic-")]
    return out, out / name


def _error(out, key=None) -> str:
    with pytest.raises(TrafficFormatError) as ei:
        for _ in TrafficReader(str(out), key):
            pass
    return str(ei.value)


def _patch(path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


@pytest.mark.parametrize("damage, key, expect", [
    ("magic", None, r"bad magic at offset 0"),
    ("version", None, r"unsupported traffic file version 99 at offset 4"),
    ("truncated", None, r"truncated file header at offset 3\b"),
    ("encrypted-no-key", None, r"encrypted \(flags at offset 5\)"),
    ("key-check", KEY, r"wrong encryption key \(or a corrupt IV / key check at offset 8\)"),
])
def test_file_header_errors_name_file_and_offset(tmp_path, damage, key, expect):
    out, path = _one_file(tmp_path, key=KEY if damage in ("encrypted-no-key", "key-check") else None)
    if damage == "magic":
        _patch(path, 0, b"XXXX")
    elif damage == "version":
        _patch(path, 4, bytes((99,)))
    elif damage == "truncated":
        with open(path, "r+b") as f:
            f.truncate(3)
    elif damage == "key-check":
        _patch(path, FILE_HEADER.size + 3, b"\x00\x00\x00\x00")
    msg = _error(out, key)
    assert str(path) in msg and re.search(expect, msg), msg


def test_data_after_the_lz4_frame_names_its_offset(tmp_path):
    out, path = _one_file(tmp_path)
    size = os.path.getsize(path)
    with open(path, "ab") as f:
        f.write(b"trailing garbage")
    msg = _error(out)
    assert str(path) in msg and f"unexpected data after the lz4 frame at offset {size}" in msg, msg


def test_a_missing_file_in_the_middle_is_an_error_naming_it(tmp_path):
    """A traffic file the meta lists but that is gone is not skipped: reading stops there with an
    error naming it, and the reader (and `traffic inspect`) say the capture is not complete."""
    from click.testing import CliRunner

    from fastproxy.cli import main

    out = tmp_path / "cap"
    w = capture(str(out), make_records(3000), file_size=20 << 10)
    assert w.error is None and len(w.files) >= 4, w.files
    gone = w.files[2]
    os.unlink(out / gone)
    reader = TrafficReader(str(out))
    assert not reader.complete and reader.missing == [gone]
    msg = _error(out)
    assert str(out / gone) in msg and "missing" in msg, msg
    res = CliRunner().invoke(main, ["traffic", "inspect", str(out), "--json", "--limit", "0"])
    assert res.exit_code != 0 and gone in res.output and "missing" in res.output, res.output
    # replay: a read error, as for a damaged file (not a replay of the rest that says nothing)
    rep = tmp_path / "rep"
    proc = subprocess.run([sys.executable, "-m", "fastproxy", "replay", "--input", str(out), "--username", "root",
                           "--speed", "0", "--dry-run", "--report-dir", str(rep)], capture_output=True, text=True,
                          timeout=120)
    [path] = rep.glob("replay-*.json")
    summary = json.loads(path.read_text())
    assert summary["other_error_types"].get("read error") == 1, proc.stdout + proc.stderr
