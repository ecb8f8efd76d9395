"""The checkpoint's journal: what a replay did since its last checkpoint, one entry per command sent
(fastproxy/replay/checkpoint.py).

A file mapped into memory (MAP_SHARED): an entry is a store into the page cache, no system call on
the replay's per-command path, and a killed process loses none of it (the pages belong to the
file, not to the process; a crash of the machine can lose them: no fsync). The file's space is
allocated when it is created, so a full disk is an error then, never a SIGBUS later.

Layout: a header (magic, generation of the checkpoint it follows), then entries until a zero byte:
`S` conn_id seq in_transaction thread (fixed size), `R` the result of a done command (what the
verdict, the failures and the summary's counters took from it: fixed fields, then the error's
SQLSTATE and message), `N` conn_id seq (a done command that had no result: consumed without one),
or `F` / `O` u32 length + JSON (a failure / an other error of the report). An entry's tag is
written last, once the rest of it is there: a kill inside an entry leaves the journal's end, not a
torn entry.
"""
from __future__ import annotations

import mmap
import os
import struct
from typing import Iterator

from fastproxy.replay._journal import JournalWriter

MAGIC = b"FPJ1"
HEADER = struct.Struct("<4sQ")
SENT = struct.Struct("<cQqBI")
TEXT = struct.Struct("<cI")
# tag, conn_id, seq, outcome, err_code, rows, columns, hash_ordered, hash_unordered, affected_rows,
# warnings, latency_ns, replay second, lag_ns (NO_LAG: none), sql_state, message length
RESULT = struct.Struct("<cQqBIqiQQqiqIq5sH")
NO_LAG = -(1 << 63)
MESSAGE_MAX = 1024  # bytes of an error message kept in an `R` entry (the report clips samples anyway)
SIZE = 4 << 20
_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class Journal(JournalWriter):
    """The per-command entries (sent, result, no_result) are written by JournalWriter, in C; the
    `_*_struct` methods here are their reference, and take the values that do not fit a field."""

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
        self._attach(self._map, SIZE)
        self.pos = HEADER.size
        self.unjournaled = 0  # results that could not be written (a kill before the next snapshot loses them)

    def _sent_struct(self, conn_id: int, seq: int, in_txn: bool, thread: int) -> bool:
        pos = self.pos
        if pos + SENT.size >= SIZE:
            return False
        SENT.pack_into(self._map, pos, b"\0", conn_id, seq, in_txn, thread)
        self._map[pos] = ord("S")  # the tag last: a kill inside the entry leaves the journal's end, not half of it
        self.pos = pos + SENT.size
        return True

    def _result_struct(self, conn_id: int, seq: int, r, latency_ns: int, second: int, lag_ns: int | None) -> bool:
        msg = r.err_msg.encode("utf-8", "replace")[:MESSAGE_MAX] if r.err_msg else b""
        pos = self.pos
        end = pos + RESULT.size + len(msg)
        if end >= SIZE:
            return False
        try:
            RESULT.pack_into(self._map, pos, b"\0", conn_id, seq, r.outcome, r.err_code, r.rows, r.columns,
                             r.hash_ordered, r.hash_unordered, r.affected_rows, r.warnings, max(0, latency_ns),
                             max(0, second), NO_LAG if lag_ns is None else lag_ns,
                             (r.sql_state or "").encode()[:5], len(msg))
        except struct.error:  # a value out of its field's range (never seen): this one result is not kept
            self._map[pos:pos + RESULT.size] = bytes(RESULT.size)  # what pack_into wrote before it stopped
            self.unjournaled += 1
            return True
        self._map[pos + RESULT.size:end] = msg
        self._map[pos] = ord("R")  # the tag last
        self.pos = end
        return True

    def _no_result_struct(self, conn_id: int, seq: int) -> bool:
        pos = self.pos
        if pos + SENT.size >= SIZE:
            return False
        SENT.pack_into(self._map, pos, b"\0", conn_id, seq, 0, 0)
        self._map[pos] = ord("N")  # the tag last
        self.pos = pos + SENT.size
        return True

    def free(self) -> int:
        """Bytes left for entries."""
        return SIZE - 1 - self.pos

    def text(self, tag: bytes, data: bytes) -> bool:
        pos = self.pos
        end = pos + TEXT.size + len(data)
        if end >= SIZE:
            return False
        TEXT.pack_into(self._map, pos, b"\0", len(data))
        self._map[pos + TEXT.size:end] = data
        self._map[pos] = tag[0]  # the tag last: a kill before it leaves no entry with its data missing
        self.pos = end
        return True

    def restart(self, generation: int) -> None:
        """Empty, following the checkpoint `generation` (the header last: a journal cut short here
        still names the checkpoint before, and is ignored)."""
        self._map[HEADER.size:self.pos] = bytes(self.pos - HEADER.size)
        HEADER.pack_into(self._map, 0, MAGIC, generation)
        self.pos = HEADER.size

    def close(self) -> None:
        self._detach()
        self._map.close()
        os.close(self._fd)


def read_journal(path: str, generation: int) -> Iterator[tuple]:
    """The entries of the journal at `path` if it follows checkpoint `generation`, else none:
    ("S", conn_id, seq, in_txn, thread), ("R", conn_id, seq, fields (outcome, err_code, rows, columns,
    hash_ordered, hash_unordered, affected_rows, warnings, latency_ns, second, lag_ns or None, sql_state,
    err_msg)), ("N", conn_id, seq) or ("F" | "O", json bytes)."""
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
        elif tag == b"N" and pos + SENT.size <= len(data):
            _, conn_id, seq, _, _ = SENT.unpack_from(data, pos)
            yield "N", conn_id, seq
            pos += SENT.size
        elif tag == b"R" and pos + RESULT.size <= len(data):
            (_, conn_id, seq, outcome, err_code, rows, columns, h_ord, h_unord, affected, warnings, latency,
             second, lag, sql_state, n) = RESULT.unpack_from(data, pos)
            msg = data[pos + RESULT.size:pos + RESULT.size + n].decode("utf-8", "replace")
            yield "R", conn_id, seq, [outcome, err_code, rows, columns, h_ord, h_unord, affected, warnings, latency,
                                      second, None if lag == NO_LAG else lag,
                                      sql_state.rstrip(b"\0").decode("ascii", "replace"), msg]
            pos += RESULT.size + n
        elif tag in (b"F", b"O") and pos + TEXT.size <= len(data):
            _, n = TEXT.unpack_from(data, pos)
            yield tag.decode(), data[pos + TEXT.size:pos + TEXT.size + n]
            pos += TEXT.size + n
        else:
            return  # the end (zeros)
