"""The checkpoint's journal: what a replay did since its last checkpoint, one entry per command sent
(fastproxy/replay/checkpoint.py).

A file mapped into memory (MAP_SHARED): an entry is a store into the page cache, no system call on
the replay's per-command path, and a killed process loses none of it (the pages belong to the
file, not to the process; a crash of the machine can lose them: no fsync). The file's space is
allocated when it is created, so a full disk is an error then, never a SIGBUS later.

Layout: a header (magic, generation of the checkpoint it follows), then entries until a zero byte:
`S` conn_id seq in_transaction thread (fixed size), or `F` / `O` u32 length + JSON (a failure / an
other error of the report).
"""
from __future__ import annotations

import mmap
import os
import struct
from typing import Iterator

MAGIC = b"FPJ1"
HEADER = struct.Struct("<4sQ")
SENT = struct.Struct("<cQqBI")
TEXT = struct.Struct("<cI")
SIZE = 4 << 20
_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class Journal:
    def __init__(self, dir_fd: int, name: str) -> None:
        try:
            os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        fd = os.open(name, _FLAGS, 0o600, dir_fd=dir_fd)
        try:
            os.posix_fallocate(fd, 0, SIZE)
            self._map = mmap.mmap(fd, SIZE)
        except OSError:
            os.close(fd)
            os.unlink(name, dir_fd=dir_fd)
            raise
        self._fd = fd
        self.pos = HEADER.size

    def sent(self, conn_id: int, seq: int, in_txn: bool, thread: int) -> bool:
        """False if the journal is full (the caller writes a checkpoint, which empties it)."""
        pos = self.pos
        if pos + SENT.size >= SIZE:
            return False
        SENT.pack_into(self._map, pos, b"S", conn_id, seq, in_txn, thread)
        self.pos = pos + SENT.size
        return True

    def text(self, tag: bytes, data: bytes) -> bool:
        pos = self.pos
        end = pos + TEXT.size + len(data)
        if end >= SIZE:
            return False
        TEXT.pack_into(self._map, pos, tag, len(data))
        self._map[pos + TEXT.size:end] = data
        self.pos = end
        return True

    def restart(self, generation: int) -> None:
        """Empty, following the checkpoint `generation` (the header last: a journal cut short here
        still names the checkpoint before, and is ignored)."""
        self._map[HEADER.size:self.pos] = bytes(self.pos - HEADER.size)
        HEADER.pack_into(self._map, 0, MAGIC, generation)
        self.pos = HEADER.size

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)


def read_journal(path: str, generation: int) -> Iterator[tuple]:
    """The entries of the journal at `path` if it follows checkpoint `generation`, else none:
    ("S", conn_id, seq, in_txn, thread) or ("F" | "O", json bytes)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return
    if len(data) < HEADER.size or HEADER.unpack_from(data, 0) != (MAGIC, generation):
        return
    pos = HEADER.size
    while pos < len(data):
        tag = data[pos:pos + 1]
        if tag == b"S" and pos + SENT.size <= len(data):
            _, conn_id, seq, in_txn, thread = SENT.unpack_from(data, pos)
            yield "S", conn_id, seq, bool(in_txn), thread
            pos += SENT.size
        elif tag in (b"F", b"O") and pos + TEXT.size <= len(data):
            _, n = TEXT.unpack_from(data, pos)
            yield tag.decode(), data[pos + TEXT.size:pos + TEXT.size + n]
            pos += TEXT.size + n
        else:
            return  # the end (zeros)
