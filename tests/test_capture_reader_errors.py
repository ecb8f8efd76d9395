"""Every error of the capture reader names the file and the offset, also for a damaged file header
(found by bench/fuzz_capture_reader.py: those named the file only), and bytes after the end of a
file's lz4 frame are an error (found by the same fuzzer: when they came in the same read as the
frame's end, they were silently ignored)."""
from __future__ import annotations

import os
import re

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
