"""TrafficReader: streams the records of a capture directory, file after file.

Memory stays bounded: files are read in 1 MiB pieces and decompressed at most 4 MiB at a time.
"""
from __future__ import annotations

import json
import os
from itertools import chain
from typing import Iterator

import lz4.frame

from fastproxy.capture import crypto
from fastproxy.capture._records import decode_records  # the C twin of record.decode_records
from fastproxy.capture.record import (FILE_HEADER, FILE_RE, FILE_VERSION_HEADERS, FLAG_AES_CTR,
                                      FLAG_LZ4, FORMAT_VERSION, MAGIC, META_NAME,
                                      READABLE_FORMAT_VERSIONS, Record)
from fastproxy.capture.reorder import in_completion_order
from fastproxy.errors import TrafficFormatError
from fastproxy.storage import open_storage

__all__ = ["TrafficReader", "Record", "list_traffic_files"]

READ_SIZE = 1024 * 1024
UNKNOWN_REORDER_WINDOW_NS = 1_000_000_000  # seen so far: up to 18 ms with 4 workers on 2 busy cores
MAX_DECOMPRESS = 4 * 1024 * 1024


def list_traffic_files(input_dir, names: list[str] | None = None) -> list[str]:
    """Traffic file names of a capture in write order (by sequence number, not by clock)."""
    found = []
    for name in (os.listdir(input_dir) if names is None else names):
        m = FILE_RE.match(name)
        if m:
            found.append((int(m.group(2)), name))
    return [name for _, name in sorted(found)]


class TrafficReader:
    """TrafficReader(input_dir, encryption_key=None); iterate it for Records.

    meta is {} and complete is False for a capture that was cut off before its meta was written;
    its last file may then end mid-record, which ends the iteration instead of raising.
    """

    def __init__(self, input_dir, encryption_key: bytes | None = None):
        self.input_dir = os.fspath(input_dir)
        self._key = crypto.check_key(encryption_key) if encryption_key is not None else None
        self.storage = open_storage(self.input_dir)  # a directory, or s3://bucket/prefix
        if not self.storage.exists():
            raise TrafficFormatError(f"{self.input_dir}: not a capture directory")
        self.files = list_traffic_files(self.input_dir, self.storage.listdir())
        self.meta = self._load_meta()
        # a capture stopped by a writer error (disk full) has meta, but its last file may be cut
        self.complete = bool(self.meta) and "writer_error" not in self.meta
        self.unfinished = not self.meta  # no meta: still being written, or its proxy did not stop it
        self._cut_off = not self.complete  # its last file may end mid-record
        if not self.complete and not self.files:
            raise TrafficFormatError(
                f"{self.input_dir}: no capture here (no meta, no traffic files)")
        # files the meta lists that are gone: reading stops with an error where the first one was
        listed = self.meta.get("files") if isinstance(self.meta.get("files"), list) else []
        present = set(self.files)
        self.missing = [n for n in listed if isinstance(n, str) and n not in present]
        if self.missing:
            self.complete = False
            self.files = list_traffic_files(self.input_dir, self.files + self.missing)
        self.truncated_at: tuple[str, int] | None = None  # (file, offset) of a cut-off tail

    def _load_meta(self) -> dict:
        path = self.storage.path(META_NAME)
        raw = self.storage.read(META_NAME)
        if raw is None:
            return {}
        try:
            meta = json.loads(raw)
        except ValueError as e:
            raise TrafficFormatError(f"{path}: unreadable meta: {e}") from e
        if not isinstance(meta, dict):
            raise TrafficFormatError(f"{path}: meta is not a JSON object")
        version = meta.get("format_version")
        if version not in READABLE_FORMAT_VERSIONS:
            raise TrafficFormatError(f"{path}: unsupported traffic format version {version!r} "
                                     f"(this fastproxy reads versions "
                                     f"{', '.join(map(str, READABLE_FORMAT_VERSIONS))}; it writes {FORMAT_VERSION})")
        return meta

    def check_key(self) -> None:
        """TrafficFormatError now, not once the records are read, if the capture is encrypted and no key
        was given: its meta says so, or (a capture cut off before its meta) its first file's header."""
        if self._key is not None:
            return
        encrypted = bool(self.meta.get("encryption_method"))
        if not encrypted and self.files:
            try:
                with self.storage.open(self.files[0]) as f:
                    head = f.read(FILE_HEADER.size)
            except OSError:
                head = b""
            encrypted = len(head) == FILE_HEADER.size and bool(FILE_HEADER.unpack(head)[2] & FLAG_AES_CTR)
        if encrypted:
            where = self.storage.path(self.files[0]) if self.files else self.input_dir
            raise TrafficFormatError(f"{where}: the capture is encrypted; an encryption key is required "
                                     f"(--encryption-key-path, or encryption-key-path in the API)")

    @property
    def reorder_window_ns(self) -> int:
        """The window __iter__ puts records back in completion order within (0: as written)."""
        # no meta (a capture cut off before it stopped): its window is unknown, so a generous one
        window = self.meta.get("reorder_window_ns", 0) if self.meta else UNKNOWN_REORDER_WINDOW_NS
        return window if isinstance(window, int) and window > 0 else 0

    def __iter__(self) -> Iterator[Record]:
        """The records in completion order (records appended out of it by several workers are
        put back in it within the window the capture measured)."""
        window = self.reorder_window_ns
        return in_completion_order(self._as_written(), window) if window else self._as_written()

    def _as_written(self) -> Iterator[Record]:
        # the records of each decoded batch are handed out by chain, in C: no generator frame a record
        return chain.from_iterable(self._batches())

    def _batches(self) -> Iterator[list[Record]]:
        for i, name in enumerate(self.files):
            if name in self.missing:
                raise TrafficFormatError(f"{self.storage.path(name)}: missing (the capture's meta lists it; "
                                         f"{len(self.missing)} of its {len(self.files)} files are missing)")
            last = i == len(self.files) - 1
            yield from self._read_file(name, tolerate_cut=last and self._cut_off)

    def _chunks(self, name: str, f, version_out: list):
        """Yield the file's decrypted, decompressed byte stream in bounded pieces (the file's
        version is put in version_out before the first piece)."""
        path = self.storage.path(name)
        head = f.read(FILE_HEADER.size)
        if len(head) < FILE_HEADER.size:
            raise TrafficFormatError(f"{path}: truncated file header at offset {len(head)}")
        magic, version, flags, _ = FILE_HEADER.unpack(head)
        # header fields: magic at offset 0, version at 4, flags at 5 (docs/traffic-format.md)
        if magic != MAGIC:
            raise TrafficFormatError(f"{path}: not a fastproxy traffic file (bad magic at offset 0)")
        if version not in FILE_VERSION_HEADERS:
            raise TrafficFormatError(f"{path}: unsupported traffic file version {version} at offset 4 "
                                     f"(this fastproxy reads versions "
                                     f"{', '.join(map(str, FILE_VERSION_HEADERS))})")
        version_out.append(version)
        cipher = None
        if flags & FLAG_AES_CTR:
            if self._key is None:
                raise TrafficFormatError(
                    f"{path}: file is encrypted (flags at offset 5); an encryption key is required")
            extra = f.read(crypto.IV_SIZE + crypto.KEY_CHECK_SIZE)
            if len(extra) < crypto.IV_SIZE + crypto.KEY_CHECK_SIZE:
                raise TrafficFormatError(f"{path}: truncated file header at offset {FILE_HEADER.size + len(extra)}")
            iv, check = extra[:crypto.IV_SIZE], extra[crypto.IV_SIZE:]
            if check != crypto.key_check_value(self._key, iv):
                raise TrafficFormatError(f"{path}: wrong encryption key (or a corrupt IV / key check at offset "
                                         f"{FILE_HEADER.size})")
            cipher = crypto.ctr_cipher(self._key, iv)
        dec = lz4.frame.LZ4FrameDecompressor() if flags & FLAG_LZ4 else None
        out_offset = 0
        # file offset after what was read so far (storage streams need not have tell())
        in_offset = FILE_HEADER.size + (crypto.IV_SIZE + crypto.KEY_CHECK_SIZE if cipher is not None else 0)
        while True:
            raw = f.read(READ_SIZE)
            if not raw:
                break
            in_offset += len(raw)
            if cipher is not None:
                raw = cipher.update(raw)
            if dec is None:
                yield raw
                continue
            while True:
                if dec.eof:
                    if raw or dec.unused_data:
                        extra_at = in_offset - len(raw) - len(dec.unused_data)
                        raise TrafficFormatError(f"{path}: unexpected data after the lz4 frame at offset {extra_at}")
                    break
                try:
                    piece = dec.decompress(raw, max_length=MAX_DECOMPRESS)
                except RuntimeError as e:  # python-lz4 reports corrupt frames as RuntimeError
                    raise TrafficFormatError(f"{path}: corrupt lz4 data near decompressed "
                                             f"offset {out_offset}: {e}") from e
                raw = b""
                out_offset += len(piece)
                if piece:
                    yield piece
                if dec.needs_input and not dec.eof:  # at the frame's end: loop once more to see what follows it
                    break
        if dec is not None and not dec.eof:
            raise _Cut(f"{path}: truncated lz4 frame at decompressed offset {out_offset}")

    def _read_file(self, name: str, tolerate_cut: bool) -> Iterator[list[Record]]:
        path = self.storage.path(name)
        f = self.storage.open(name)
        with f:
            buf = bytearray()
            offset = 0  # of buf[0] in the decompressed stream
            version: list = []
            try:
                for piece in self._chunks(name, f, version):
                    buf += piece
                    recs, used = decode_records(buf, offset, path, FILE_VERSION_HEADERS[version[0]])
                    if used:
                        del buf[:used]
                        offset += used
                    yield recs
                if buf:
                    raise _Cut(f"{path}: truncated record at offset {offset}")
            except _Cut as e:
                if not tolerate_cut:
                    raise TrafficFormatError(str(e)) from None
                self.truncated_at = (name, offset)
            except OSError as e:
                raise TrafficFormatError(f"{path}: {e.strerror}") from e


class _Cut(Exception):
    """The stream ends early: fatal, except at the end of a capture that was cut off."""
