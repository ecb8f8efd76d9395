"""CaptureWriter: the thread that drains the ring buffer into rotating traffic files.

Chain per chunk: whole records compressed straight out of the ring (fastproxy/capture/_encoder.pyx,
in C without the GIL; one lz4 frame per file) -> AES-256-CTR -> file; only then are the records
released from the ring. The network path only ever appends to the ring buffer; if this thread is
slower than the traffic, the buffer fills and the capture stops with a reason (see DESIGN.md,
"Capture"). Records too large for the ring come through its side path and are written in their
place in sequence.

Every file is created under the output directory's descriptor with O_EXCL|O_NOFOLLOW
(fastproxy/private_files.py). What the counters and `meta` say is what the files hold: a chunk
the disk refused part of is cut off again, so a disk-full stop leaves whole records only.
"""
from __future__ import annotations

import datetime
import json
import os
import select
import threading
import time

from fastproxy.capture import crypto
from fastproxy.capture._encoder import ChunkEncoder
from fastproxy.capture.record import (FILE_HEADER, FILE_RE, FILE_VERSION, FLAG_AES_CTR,
                                      FLAG_LZ4, FORMAT_VERSION, KIND_COMMAND, MAGIC, META_NAME,
                                      extension)
from fastproxy.errors import JobError
from fastproxy.private_files import create_private_file, open_private_dir, write_all

DRAIN_CHUNK = 4 * 1024 * 1024
LARGE_SLICE = 4 * 1024 * 1024  # a large record is compressed and written this much at a time
IDLE_WAIT = 0.02  # seconds between polls of an empty ring buffer
# Below this much data per drain, the writer waits before draining again: one larger chunk per
# BATCH_WAIT instead of a tight loop of tiny ones (each costs an lz4 call, a write, a flush and GIL
# hand-offs with the event loop). Above it, the buffer is filling: drain again at once.
# Each wait is a wake-up of the thread, ~50-90 µs of CPU on the 2-core VM of BENCHMARKS.md
# whatever the chunk: at 0.05 s that was a third of the writer's CPU under sysbench
# oltp_read_write (18k records/s); 0.1 s halves it, and the ring (64 MiB by default) holds 0.1 s
# of far more traffic than a proxy relays.
BATCH_MIN = 256 * 1024
BATCH_WAIT = 0.1
# The kernel is asked to write back what the writer wrote every this many bytes (and to drop what
# it wrote back before): without it, dirty pages pile up until the filesystem's periodic commit
# (ext4: every 5 s) writes seconds of capture at once, and that burst takes the CPU the relay
# needs (seen as a 1-s dip of the proxied QPS every few seconds on a 2-core box).
WRITEBACK_STEP = 256 * 1024
# After a refused write, the chunk's records are written again this much at a time until one
# does not fit: the files keep every whole record the disk can hold.
SALVAGE_PIECE = 16 * 1024
META_TMP = META_NAME + ".tmp"
# meta.tmp is created at the start with this much space, so that meta still fits when the
# capture stops because the disk is full (it is rewritten in place, then renamed to meta).
META_RESERVE = 64 * 1024


def output_dir_has_capture(path) -> bool:
    """True if path already holds a finished capture (a meta file)."""
    return os.path.isfile(os.path.join(path, META_NAME))


class CaptureWriter:
    def __init__(self, ringbuf, output_dir, *, file_size: int = 300 * 1024 * 1024,
                 compress: bool = True, encryption_key: bytes | None = None,
                 throttle_bytes_per_sec: float | None = None, upload_to=None):
        """`upload_to` (fastproxy.storage.S3Storage): output_dir is then a local spool; each traffic
        file is uploaded once complete and removed from the spool, meta last."""
        if file_size <= 0:
            raise ValueError("file_size must be positive")
        self._rb = ringbuf
        self.output_dir = os.fspath(output_dir)
        self.file_size = file_size
        self.compress = compress
        self._key = crypto.check_key(encryption_key) if encryption_key is not None else None
        self._throttle = throttle_bytes_per_sec
        self._upload_to = upload_to
        self.error: str | None = None
        # What the files hold, counted once the bytes are written (on-disk bytes, headers included).
        self.bytes_written = 0
        self.raw_bytes_written = 0  # encoded record bytes before compression
        self.records_written = 0
        self.commands_written = 0
        self.files: list[str] = []
        self._seq = 0
        self._last_name_ts = ""
        self._dir_fd: int | None = None
        self._meta_fd: int | None = None
        self._fd: int | None = None       # the traffic file being written
        self._path = ""                    # its path, for messages
        self._file_bytes = 0
        self._writeback = (0, 0)  # the range last asked to be written back (start, end)
        self._file_records = 0
        self._enc: ChunkEncoder | None = None
        self._cipher = None
        self._iv = b""
        self._body_start = 0
        self._stop_evt = threading.Event()
        # stop() also wakes the thread's waits through this eventfd: a poll() on it costs about
        # half the CPU of an Event.wait(timeout) (bench/test_bench_capture.py, the steady rate)
        self._wake_fd: int | None = None
        self._wake = select.poll()
        self._thread: threading.Thread | None = None
        self._meta: dict | None = None
        self._t0 = 0.0

    # -- caller side ---------------------------------------------------------------------------

    def start(self) -> None:
        """Open (or create, mode 0700) the output dir and start the thread.

        JobError if the directory is unsafe (a symlink, not ours, writable by others) or already
        holds a capture; an OS error lands in self.error and the thread is not started.
        """
        if self._thread is not None or self._dir_fd is not None:
            raise JobError("capture writer already started")
        if not os.path.isabs(self.output_dir):
            raise JobError(f"output: must be an absolute path, got {self.output_dir!r}")
        try:
            self._dir_fd = open_private_dir(self.output_dir, "output", create=True)
        except OSError as e:
            self._fail("cannot create output dir", e, e.filename or self.output_dir)  # the part that failed
            return
        try:
            if any(n == META_NAME or FILE_RE.match(n) for n in os.listdir(self._dir_fd)):
                raise JobError(f"output: {self.output_dir} already holds a capture")
            self._reserve_meta()
        except JobError:
            self._close_dir()
            raise
        except OSError as e:
            self._fail("cannot create the meta file", e, os.path.join(self.output_dir, META_TMP))
            self._close_dir()
            return
        self._t0 = time.monotonic()
        self._wake_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._wake.register(self._wake_fd, select.POLLIN)
        self._thread = threading.Thread(target=self._run, name="fastproxy-capture-writer",
                                        daemon=True)
        self._thread.start()

    def stop(self, meta: dict) -> dict:
        """Flush the ring buffer, close the last file, write meta; return the written meta.

        The caller stops appending first: records appended after stop() are not written. A
        `commands` count in `meta` is what was captured; the written meta's `commands` is what
        the files hold, and `commands_not_written` the difference (after a disk error).
        """
        if self._meta is not None:
            return self._meta
        if self._thread is None and self.error is None:
            raise JobError("capture writer was never started")
        self._stop_evt.set()
        if self._wake_fd is not None:
            os.eventfd_write(self._wake_fd, 1)  # left unread: every later wait returns at once
        if self._thread is not None:
            self._thread.join()
        if self._wake_fd is not None:
            os.close(self._wake_fd)
            self._wake_fd = None
        self._rb = self._enc = None  # done with them: what the ring still holds (after an error) is freed with it
        merged = {"format_version": FORMAT_VERSION, **meta}
        captured = merged.get("commands", self.commands_written)
        merged.update({
            "files": list(self.files),
            "bytes_written": self.bytes_written,
            "raw_bytes": self.raw_bytes_written,
            "records": self.records_written,
            "commands": self.commands_written,
            "compression": "lz4" if self.compress else "none",
            "encryption": "aes-256-ctr" if self._key is not None else "none",
        })
        if captured > self.commands_written:
            merged["commands_not_written"] = captured - self.commands_written
        if self.error is not None:
            merged.setdefault("error", self.error)  # the caller's wording of it, if it has one
            merged["writer_error"] = self.error  # readers then accept a cut-off end of the last file
        if self._meta_fd is not None:
            try:
                # even after a disk error: the last file is closed now and meta.tmp had its space
                # reserved at the start, and it tells a reader what happened
                self._write_meta(merged)
                if self._upload_to is not None:
                    self._upload(META_NAME)
                    os.rmdir(self.output_dir)  # the spool, now empty
            except OSError as e:
                meta_error = _describe("cannot write meta", e, os.path.join(self.output_dir, META_TMP))
                merged["error"] = "; ".join(x for x in (merged.get("error"), meta_error) if x)
                self.error = f"{self.error}; {meta_error}" if self.error else meta_error
        self._close_dir()
        self._meta = merged
        return merged

    def abort(self) -> None:
        """Stop without a capture: the thread ends, and the traffic files and meta.tmp it wrote are
        removed (a conversion that failed part way leaves nothing that blocks a retry)."""
        self._stop_evt.set()
        if self._wake_fd is not None:
            os.eventfd_write(self._wake_fd, 1)
        if self._thread is not None:
            self._thread.join()
        if self._wake_fd is not None:
            os.close(self._wake_fd)
            self._wake_fd = None
        self._rb = self._enc = None
        if self._dir_fd is not None:
            for name in self.files:
                try:
                    os.unlink(name, dir_fd=self._dir_fd)
                except OSError:
                    pass
        self.files = []
        self._close_dir()
        self._meta = {}

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- writer thread -------------------------------------------------------------------------

    def _run(self) -> None:
        rb = self._rb
        chunk = min(DRAIN_CHUNK, self.file_size)
        try:
            self._enc = enc = ChunkEncoder(rb, self.compress)
            while self.error is None:
                # Read the flag before draining: whatever was appended before stop() is seen.
                stopping = self._stop_evt.is_set()
                if self._fd is None and rb.used:
                    self._open_file()  # before take(): its records go into this file's lz4 frame
                out = enc.take(chunk)
                if out is not None:
                    nraw = enc.taken
                    self._write_chunk(out)
                    if nraw < BATCH_MIN and not stopping and not rb.large_pending:
                        self._wake.poll(BATCH_WAIT * 1000)
                elif (large := rb.next_large()) is not None:
                    self._write_large(*large)
                    rb.pop_large()  # only now: a record the disk refused is not counted as written
                elif stopping:
                    break
                else:
                    self._wake.poll(IDLE_WAIT * 1000)
            if self.error is None:
                self._close_file()
        except OSError as e:
            self._fail("cannot write traffic file", e, self._path)
        except Exception as e:  # never die silently: the capture must report why it stopped
            self._fail("capture writer failed", e)
        finally:
            if self._fd is not None:
                try:
                    os.close(self._fd)
                except OSError:
                    pass
                self._fd = None

    def _fail(self, what: str, e: BaseException, path: str = "") -> None:
        if self.error is None:
            self.error = _describe(what, e, path)

    def _write_large(self, head: bytes, payload: bytes) -> None:
        view = memoryview(payload)
        pieces = [head] + [view[i:i + LARGE_SLICE] for i in range(0, len(payload), LARGE_SLICE)]
        self._write_records(pieces, 1, int(head[4] == KIND_COMMAND), len(head) + len(payload))

    def _write_chunk(self, out) -> None:
        """Write the chunk the encoder took (`out`: its encoded bytes); it leaves the ring and is
        counted only once every byte of it is on disk."""
        enc = self._enc
        good = self._file_bytes
        try:
            self._emit(out)
        except OSError:
            self._cut_back(good)
            if enc.taken_records > 1:
                self._salvage(enc.raw())
            self._drop_if_empty()
            raise
        nraw, nrecords, ncommands = enc.taken, enc.taken_records, enc.commands
        enc.release()
        self._written(nrecords, ncommands, nraw)

    def _write_records(self, pieces, nrecords: int, ncommands: int, nraw: int) -> None:
        """Write whole records (in pieces); counted only once every byte of them is on disk."""
        if self._fd is None:
            self._open_file()
        good = self._file_bytes
        try:
            for piece in pieces:
                self._emit(self._enc.encode(piece))
        except OSError:
            self._cut_back(good)
            self._drop_if_empty()
            raise
        self._written(nrecords, ncommands, nraw)

    def _written(self, nrecords: int, ncommands: int, nraw: int) -> None:
        """Whole records are on disk: count them, then write back, rotate and throttle."""
        self._count(nrecords, ncommands, nraw)
        if self._file_bytes - self._writeback[1] >= WRITEBACK_STEP:
            self._write_back()
        # Rotate between records only, so none is split.
        if self._file_bytes >= self.file_size:
            self._close_file()
        if self._throttle:
            due = self._t0 + self.bytes_written / self._throttle
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def _write_back(self) -> None:
        """Start writing back the bytes written since the last call (asynchronously: DONTNEED
        starts the writeback of dirty pages and does not wait), and drop the pages of the range
        before, which is written back by now. Advice only: an error changes nothing."""
        start, end = self._writeback
        try:
            os.posix_fadvise(self._fd, start, self._file_bytes - start, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass
        self._writeback = (end, self._file_bytes)

    def _count(self, nrecords: int, ncommands: int, nraw: int) -> None:
        self.raw_bytes_written += nraw
        self.records_written += nrecords
        self.commands_written += ncommands
        self._file_records += nrecords

    def _emit(self, out) -> None:
        if self._cipher is not None:
            out = self._cipher.update(out)
        # Unbuffered: errors (disk full) surface now, and a capture cut off by a crash keeps
        # everything written so far readable.
        write_all(self._fd, out)
        self._file_bytes += len(out)
        self.bytes_written += len(out)

    def _cut_back(self, good: int) -> None:
        """After a refused write: drop its partial bytes, so the file ends after whole records."""
        fd = self._fd
        try:
            os.ftruncate(fd, good)
        except OSError:
            pass
        try:
            size = os.fstat(fd).st_size
            os.lseek(fd, size, os.SEEK_SET)  # truncation leaves the offset where the write stopped
        except OSError:
            size = good
        self.bytes_written += size - self._file_bytes
        self._file_bytes = size
        if self._cipher is not None and size >= self._body_start:
            # the keystream went on with the refused bytes: resume it where the file ends
            self._cipher = crypto.ctr_cipher_at(self._key, self._iv, size - self._body_start)

    def _salvage(self, data: bytes) -> None:
        """The disk refused a chunk: write as many of its whole records as still fit.

        lz4 blocks are independent (block_linked=False), so the frame goes on after the cut.
        """
        pos = 0
        while pos < len(data):
            start, nrec, ncmd = pos, 0, 0
            while pos < len(data) and (nrec == 0 or pos - start < SALVAGE_PIECE):
                nrec += 1
                ncmd += data[pos + 4] == KIND_COMMAND
                pos += int.from_bytes(data[pos:pos + 4], "little")
            good = self._file_bytes
            try:
                self._emit(self._enc.encode(data[start:pos]))
            except OSError:
                self._cut_back(good)
                return
            self._count(nrec, ncmd, pos - start)

    def _drop_if_empty(self) -> None:
        """A file the disk refused before it held a record is removed: no empty file is left."""
        if self._file_records == 0 and self.files:
            try:
                os.unlink(self.files[-1], dir_fd=self._dir_fd)
            except OSError:
                return
            self.bytes_written -= self._file_bytes
            self._file_bytes = 0
            self.files.pop()

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
        self._path = os.path.join(self.output_dir, name)
        self._fd = create_private_file(self._dir_fd, name)
        self.files.append(name)
        self._file_bytes = 0
        self._file_records = 0
        self._writeback = (0, 0)
        flags = (FLAG_LZ4 if self.compress else 0) | (FLAG_AES_CTR if self._key is not None else 0)
        header = FILE_HEADER.pack(MAGIC, FILE_VERSION, flags, 0)
        if self._key is not None:
            self._iv = crypto.new_iv()
            header += self._iv + crypto.key_check_value(self._key, self._iv)
            self._cipher = crypto.ctr_cipher(self._key, self._iv)
        else:
            self._cipher = None
        self._body_start = len(header)
        # lz4 (the encoder's frame): each chunk becomes complete blocks on disk right away, so the
        # on-disk size is exact for rotation and a cut-off file is readable up to its end;
        # independent blocks, so after a refused write the frame can go on (see _salvage).
        begin = self._enc.begin()
        try:
            write_all(self._fd, header)
            self._file_bytes += len(header)
            self.bytes_written += len(header)
            if begin:
                self._emit(begin)
        except OSError:
            self._cut_back(0)  # a file without a whole header is no traffic file
            self._drop_if_empty()
            raise

    def _close_file(self) -> None:
        if self._fd is None:
            return
        end = self._enc.end()  # the lz4 frame's end mark
        if end:
            self._emit(end)
        os.close(self._fd)
        self._fd = None
        self._cipher = None
        if self._upload_to is not None:
            self._upload(self.files[-1])

    def _upload(self, name: str) -> None:
        """Copy a finished file to object storage, then free its spool space. Runs on the writer
        thread: a slow upload fills the ring buffer and stops the capture with that reason, it
        never slows a client."""
        try:
            self._upload_to.upload(os.path.join(self.output_dir, name), name)
        except Exception as e:  # noqa: BLE001 - botocore's errors share no useful base
            raise OSError(0, f"cannot upload to {self._upload_to.path(name)}: {type(e).__name__}: {e}") from None
        os.unlink(name, dir_fd=self._dir_fd)

    # -- meta ----------------------------------------------------------------------------------

    def _reserve_meta(self) -> None:
        fd = create_private_file(self._dir_fd, META_TMP)
        self._meta_fd = fd
        try:
            write_all(fd, bytes(META_RESERVE))
        except OSError:
            self._drop_meta_tmp()
            raise

    def _write_meta(self, meta: dict) -> None:
        data = (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode()
        fd, dfd = self._meta_fd, self._dir_fd
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            write_all(fd, data)  # within the reserved space: no new blocks needed
            os.ftruncate(fd, len(data))
            # rename only the file written above, not whatever else now bears its name
            here = os.stat(META_TMP, dir_fd=dfd, follow_symlinks=False)
            mine = os.fstat(fd)
            if (here.st_dev, here.st_ino) != (mine.st_dev, mine.st_ino):
                raise FileExistsError(17, "replaced by another file during the capture",
                                      os.path.join(self.output_dir, META_TMP))
            os.replace(META_TMP, META_NAME, src_dir_fd=dfd, dst_dir_fd=dfd)  # readers never see half a meta
        except OSError:
            self._drop_meta_tmp()
            raise
        os.close(fd)
        self._meta_fd = None

    def _drop_meta_tmp(self) -> None:
        """Remove our meta.tmp (never another file under that name) and close it."""
        fd, self._meta_fd = self._meta_fd, None
        try:
            here = os.stat(META_TMP, dir_fd=self._dir_fd, follow_symlinks=False)
            mine = os.fstat(fd)
            if (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino):
                os.unlink(META_TMP, dir_fd=self._dir_fd)
        except OSError:
            pass
        os.close(fd)

    def _close_dir(self) -> None:
        if self._meta_fd is not None:
            self._drop_meta_tmp()
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None


def _describe(what: str, e: BaseException, path: str = "") -> str:
    """"what: OS error: path" (path: the full one we worked on, or the one the error names)."""
    if isinstance(e, OSError) and e.strerror:
        # operations under the directory's descriptor report relative names: prefer ours
        where = path or e.filename
        return f"{what}: {e.strerror}: {where}" if where else f"{what}: {e.strerror}"
    return f"{what}: {type(e).__name__}: {e}"
