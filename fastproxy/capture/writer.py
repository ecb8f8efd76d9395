"""CaptureWriter: the thread that drains the ring buffer into rotating traffic files.

Chain per chunk: drain whole records -> lz4 frame (streaming, one frame per file) -> AES-256-CTR
-> file. The network path only ever appends to the ring buffer; if this thread is slower than the
traffic, the buffer fills and the capture stops with a reason (see DESIGN.md, "Capture").
"""
from __future__ import annotations

import datetime
import json
import os
import threading
import time

import lz4.frame

from fastproxy.capture import crypto
from fastproxy.capture.record import (FILE_HEADER, FILE_RE, FILE_VERSION, FLAG_AES_CTR,
                                      FLAG_LZ4, FORMAT_VERSION, MAGIC, META_NAME, extension)
from fastproxy.errors import JobError

DRAIN_CHUNK = 4 * 1024 * 1024
IDLE_WAIT = 0.02  # seconds between polls of an empty ring buffer
# Below this much data per drain, the writer waits before draining again: one larger chunk per
# BATCH_WAIT instead of a tight loop of tiny ones (each costs an lz4 call, a write, a flush and GIL
# hand-offs with the event loop). Above it, the buffer is filling: drain again at once.
BATCH_MIN = 256 * 1024
BATCH_WAIT = 0.05


def output_dir_has_capture(path) -> bool:
    """True if path already holds a finished capture (a meta file)."""
    return os.path.isfile(os.path.join(path, META_NAME))


class CaptureWriter:
    def __init__(self, ringbuf, output_dir, *, file_size: int = 300 * 1024 * 1024,
                 compress: bool = True, encryption_key: bytes | None = None,
                 throttle_bytes_per_sec: float | None = None):
        if file_size <= 0:
            raise ValueError("file_size must be positive")
        self._rb = ringbuf
        self.output_dir = os.fspath(output_dir)
        self.file_size = file_size
        self.compress = compress
        self._key = crypto.check_key(encryption_key) if encryption_key is not None else None
        self._throttle = throttle_bytes_per_sec
        self.error: str | None = None
        self.bytes_written = 0      # on-disk bytes, headers included
        self.raw_bytes_written = 0  # encoded record bytes before compression
        self.records_written = 0
        self.files: list[str] = []
        self._seq = 0
        self._last_name_ts = ""
        self._f = None
        self._file_bytes = 0
        self._compressor = None
        self._cipher = None
        self._stop_evt = threading.Event()
        self._thread: threading.Thread | None = None
        self._meta: dict | None = None
        self._t0 = 0.0

    # -- caller side ---------------------------------------------------------------------------

    def start(self) -> None:
        """Create the output dir and start the thread. An OS error lands in self.error."""
        if self._thread is not None:
            raise JobError("capture writer already started")
        if os.path.isdir(self.output_dir) and any(
                n == META_NAME or FILE_RE.match(n) for n in os.listdir(self.output_dir)):
            raise JobError(f"output dir {self.output_dir} already holds a capture")
        try:
            if not os.path.isdir(self.output_dir):
                os.makedirs(self.output_dir, mode=0o700)
                os.chmod(self.output_dir, 0o700)  # makedirs' mode is reduced by the umask
        except OSError as e:
            self._fail("cannot create output dir", e)
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="fastproxy-capture-writer",
                                        daemon=True)
        self._thread.start()

    def stop(self, meta: dict) -> dict:
        """Flush the ring buffer, close the last file, write meta; return the written meta.

        The caller stops appending first: records appended after stop() are not written.
        """
        if self._meta is not None:
            return self._meta
        if self._thread is None:
            raise JobError("capture writer was never started")
        self._stop_evt.set()
        self._thread.join()
        merged = {"format_version": FORMAT_VERSION, **meta}
        merged.update({
            "files": list(self.files),
            "bytes_written": self.bytes_written,
            "raw_bytes": self.raw_bytes_written,
            "records": self.records_written,
            "compression": "lz4" if self.compress else "none",
            "encryption": "aes-256-ctr" if self._key is not None else "none",
        })
        if self.error is not None:
            merged["error"] = self.error
            merged["writer_error"] = self.error  # readers then accept a cut-off end of the last file
        try:
            # even after a disk error: the last file is closed now and meta is small, so it may fit,
            # and it tells a reader what happened
            self._write_meta(merged)
        except OSError as e:
            self._fail("cannot write meta", e)
            merged["error"] = self.error
        self._meta = merged
        return merged

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- writer thread -------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self.error is None:
                # Read the flag before draining: whatever was appended before stop() is seen.
                stopping = self._stop_evt.is_set()
                before = self._rb.records_drained
                data = self._rb.drain(min(DRAIN_CHUNK, self.file_size))
                if data:
                    self._write_chunk(data, self._rb.records_drained - before)
                    if len(data) < BATCH_MIN and not stopping:
                        self._stop_evt.wait(BATCH_WAIT)
                elif stopping:
                    break
                else:
                    self._stop_evt.wait(IDLE_WAIT)
            if self.error is None:
                self._close_file()
        except OSError as e:
            self._fail("cannot write traffic file", e)
        except Exception as e:  # never die silently: the capture must report why it stopped
            self._fail("capture writer failed", e)
        finally:
            if self.error is not None and self._f is not None:
                try:
                    self._f.close()
                except OSError:
                    pass
                self._f = None

    def _fail(self, what: str, e: BaseException) -> None:
        if self.error is None:
            detail = f"{e.strerror}: {e.filename}" if isinstance(e, OSError) and e.strerror else e
            self.error = f"{what}: {detail}"

    def _write_chunk(self, data: bytes, nrecords: int) -> None:
        if self._f is None:
            self._open_file()
        out = self._compressor.compress(data) if self._compressor is not None else data
        self._emit(out)
        self.raw_bytes_written += len(data)
        self.records_written += nrecords
        # Rotate between chunks only: a chunk holds whole records, so none is split.
        if self._file_bytes >= self.file_size:
            self._close_file()
        if self._throttle:
            due = self._t0 + self.bytes_written / self._throttle
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def _emit(self, out: bytes) -> None:
        if self._cipher is not None:
            out = self._cipher.update(out)
        self._f.write(out)
        # Flush per chunk: errors (disk full) surface now, and a capture cut off by a crash
        # keeps everything written so far readable.
        self._f.flush()
        self._file_bytes += len(out)
        self.bytes_written += len(out)

    def _file_name(self) -> str:
        now = datetime.datetime.now(datetime.timezone.utc)
        ts = now.strftime("%Y%m%dT%H%M%S.") + f"{now.microsecond // 1000:03d}Z"
        # Names must sort in write order even if the wall clock steps back.
        ts = max(ts, self._last_name_ts)
        self._last_name_ts = ts
        self._seq += 1
        return f"traffic-{ts}-{self._seq:06d}.{extension(self.compress, self._key is not None)}"

    def _open_file(self) -> None:
        name = self._file_name()
        fd = os.open(os.path.join(self.output_dir, name),
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._f = os.fdopen(fd, "wb")
        self.files.append(name)
        self._file_bytes = 0
        flags = (FLAG_LZ4 if self.compress else 0) | (FLAG_AES_CTR if self._key is not None else 0)
        header = FILE_HEADER.pack(MAGIC, FILE_VERSION, flags, 0)
        if self._key is not None:
            iv = crypto.new_iv()
            header += iv + crypto.key_check_value(self._key, iv)
            self._cipher = crypto.ctr_cipher(self._key, iv)
        else:
            self._cipher = None
        self._f.write(header)
        self._file_bytes += len(header)
        self.bytes_written += len(header)
        if self.compress:
            # auto_flush: each chunk becomes complete lz4 blocks on disk right away, so the
            # on-disk size is exact for rotation and a cut-off file is readable up to its end.
            self._compressor = lz4.frame.LZ4FrameCompressor(
                content_checksum=True, block_checksum=True, auto_flush=True)
            self._emit(self._compressor.begin())
        else:
            self._compressor = None

    def _close_file(self) -> None:
        if self._f is None:
            return
        if self._compressor is not None:
            self._emit(self._compressor.flush())  # end mark + content checksum
            self._compressor = None
        self._f.close()
        self._f = None
        self._cipher = None

    def _write_meta(self, meta: dict) -> None:
        path = os.path.join(self.output_dir, META_NAME)
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)  # readers never see a half-written meta
