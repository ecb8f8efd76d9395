"""TiProxy's own traffic captures (`tiproxyctl traffic capture`, pkg/sqlreplay/store and cmd/native.go
in pingcap/tiproxy) as a replay source, so a TiProxy user replays an existing capture unchanged.

A capture directory holds `meta` (JSON: Version, Duration, Cmds, FilteredCmds, EncryptMethod) and
files `traffic-<local time 2006-01-02T15-04-05.999>.log[.gz]`. A file is gzip (when compressed) of
[16-byte IV, AES-256-CTR of the body] (when encrypted) of the body: commands, each

    # Time: 2024-12-03T11:05:01.123456789+08:00      (the command's start)
    # Conn_ID: 42
    # Cmd_type: StmtExecute                          (absent for Query)
    # Success: false                                 (absent when it succeeded)
    # Captured_ps_id: 3                              (statement commands)
    # Prepared_stmt: "SELECT ... ?"                   (Go-quoted; the SQL behind an execute)
    # Payload_len: 17                                 (payload bytes after the command byte)
    <payload>\n

TiProxy records no connection events: a connection starts at its first command (a COM_INIT_DB
with its database, or TiDB's `SET SESSION_STATES '...'` for connections open before the capture —
TiDB-only, skipped and counted) and ends at COM_QUIT; COM_CHANGE_USER was recorded as
COM_RESET_CONNECTION. Outcomes are known only as success/failure (no error code) and durations not
at all. Every connection replays as the replay user, as in TiProxy.
"""
from __future__ import annotations

import codecs
import datetime
import gzip
import json
import os
import re
import zlib
from typing import Iterator

from fastproxy.capture import crypto
from fastproxy.capture.record import (KIND_COMMAND, KIND_CONN_CLOSE, KIND_CONN_OPEN, KIND_CONN_STATE, OUTCOME_ERR,
                                      OUTCOME_OK, Record)
from fastproxy.constants import COMMAND, COMMAND_NAMES
from fastproxy.errors import TrafficFormatError
from fastproxy.inputs.common import DROPPED_STAT, UTF8MB4, SkipCounter, secret_filter
from fastproxy.storage import open_storage

TIPROXY_FILE_RE = re.compile(r"^traffic(?:-(?P<ts>[0-9T:.-]+))?\.log(?P<gz>\.gz)?$")
_KEY_PREFIX = b"# "
# commands that name a prepared statement by id (payload bytes 1-4): those of a prepare the secret
# filter dropped are dropped too (an execute's bound values may be the secret)
_STMT_ID_COMMANDS = frozenset((COMMAND.COM_STMT_EXECUTE, COMMAND.COM_STMT_SEND_LONG_DATA, COMMAND.COM_STMT_CLOSE,
                               COMMAND.COM_STMT_RESET, COMMAND.COM_STMT_FETCH, COMMAND.COM_STMT_BULK_EXECUTE))
_KEY_SUFFIX = b": "
_COMMAND_START = b"# Time: "  # every command's first line
# TiProxy's Cmd_type strings are pnet.Command.String(): "StmtExecute", "InitDB", ...
_TYPE_BY_NAME = {"".join(p.capitalize() for p in name[4:].split("_")): code
                 for code, name in COMMAND_NAMES.items() if name.startswith("COM_")}
_TYPE_BY_NAME.update({"InitDB": COMMAND.COM_INIT_DB, "StmtFetch": COMMAND.COM_STMT_FETCH})
READ_SIZE = 1 << 20


def _file_order(name: str):
    m = TIPROXY_FILE_RE.match(name)
    ts = m.group("ts") if m else None
    if ts:
        for layout in ("%Y-%m-%dT%H-%M-%S.%f", "%Y-%m-%dT%H-%M-%S"):
            try:
                return (0, datetime.datetime.strptime(ts, layout), name)
            except ValueError:
                pass
        if ts.isdigit():  # older TiProxy: traffic-1.log, traffic-2.log, ...
            return (0, datetime.datetime.min + datetime.timedelta(seconds=int(ts)), name)
    return (1, datetime.datetime.min, name)


class _Cut(TrafficFormatError):
    """The file ends early: fatal, except at the end of the last file of a capture still being written
    (no meta yet), where it ends the input after the last whole command."""


class _Gunzip:
    """A gzip file read in pieces, its data handed out as it is inflated. gzip.GzipFile drops the data
    of a read that meets the end of a stream cut off (the file TiProxy is still writing): here that
    data comes first, then EOFError; data before corrupt bytes comes first too, then gzip.BadGzipFile.
    Members follow one another (zeros between them: padding, as gzip allows). At most READ_SIZE bytes
    are inflated at a time, however well the data compresses."""

    def __init__(self, raw) -> None:
        self._raw = raw
        self._inflate = zlib.decompressobj(wbits=31)  # 31: a gzip header and trailer (CRC-32 checked)
        self._input = b""  # compressed bytes read and not yet inflated
        self._out = bytearray()
        self._fresh = True  # between members: nothing of the next one fed yet
        self._in_member = False  # bytes of a member fed and its end not reached
        self._ended = False
        self._error: Exception | None = None

    def read(self, n: int) -> bytes:
        while len(self._out) < n and not self._ended:
            self._inflate_more()
        if not self._out:
            if self._error is not None:
                raise self._error
            if self._in_member:
                raise EOFError("the gzip stream ends before its end marker (cut off)")
        out = bytes(self._out[:n])
        del self._out[:n]
        return out

    def _inflate_more(self) -> None:
        data, self._input = self._input or self._raw.read(READ_SIZE), b""
        if not data:
            self._ended = True
            return
        if self._fresh:
            data = data.lstrip(b"\0")
            if not data:
                return
            self._fresh = False
        try:
            self._out += self._inflate.decompress(data, READ_SIZE)
        except zlib.error as e:
            self._error, self._ended = gzip.BadGzipFile(str(e)), True  # raised once what came before is read
            return
        if self._inflate.eof:  # the member ends: what follows starts the next one
            self._input = self._inflate.unused_data
            self._inflate = zlib.decompressobj(wbits=31)
            self._fresh, self._in_member = True, False
        else:
            self._input = self._inflate.unconsumed_tail  # held back by the READ_SIZE bound
            self._in_member = True

    def close(self) -> None:
        pass  # (the raw file is closed by its _Stream)


class _Stream:
    """Bytes of one traffic file, decompressed and decrypted, read in pieces."""

    def __init__(self, storage, name: str, compressed: bool, key: bytes | None) -> None:
        self.path = path = storage.path(name)
        raw = storage.open(name)
        self._f = _Gunzip(raw) if compressed else raw
        self._raw = raw
        self._cipher = None
        if key is not None:
            try:
                iv = self._read_exact(crypto.IV_SIZE, plain=True)
                if len(iv) < crypto.IV_SIZE:
                    raise _Cut(f"{path}: truncated before its IV")
            except TrafficFormatError:
                self.close()
                raise
            self._cipher = crypto.ctr_cipher(key, iv)
        self.buf = bytearray()
        self.offset = 0  # of buf[0] in the decoded stream
        self.eof = False
        self.line = 0

    def _read_exact(self, n: int, plain: bool = False) -> bytes:
        out = b""
        while len(out) < n:
            try:
                piece = self._f.read(n - len(out))
            except EOFError as e:  # a gzip stream without its end: cut off
                raise _Cut(f"{self.path}: truncated gzip data: {e}") from e
            except (OSError, gzip.BadGzipFile) as e:
                raise TrafficFormatError(f"{self.path}: corrupt gzip data: {e}") from e
            if not piece:
                break
            out += piece
        return out

    def _fill(self) -> bool:
        if self.eof:
            return False
        try:
            piece = self._f.read(READ_SIZE)
        except EOFError as e:  # a gzip stream without its end: cut off
            raise _Cut(f"{self.path}: truncated gzip data near offset {self.offset + len(self.buf)}: {e}") from e
        except (OSError, gzip.BadGzipFile) as e:
            raise TrafficFormatError(f"{self.path}: corrupt gzip data near offset {self.offset + len(self.buf)}: {e}") \
                from e
        if not piece:
            self.eof = True
            return False
        if self._cipher is not None:
            piece = self._cipher.update(piece)
        self.buf += piece
        return True

    def readline(self) -> bytes | None:
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[:i + 1]
                self.offset += i + 1
                self.line += 1
                return line
            if not self._fill():
                if self.buf:
                    raise _Cut(f"{self.path}: line {self.line + 1}: truncated (no end of line)")
                return None

    def may_be_commands(self) -> bool:
        """Whether what was read can be TiProxy commands: past the first line, or a first line cut
        short that starts as every command does."""
        return self.line > 0 or _COMMAND_START.startswith(bytes(self.buf[:len(_COMMAND_START)]))

    def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise _Cut(f"{self.path}: line {self.line}: payload truncated "
                                         f"({len(self.buf)} of {n} bytes)")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        self.offset += n
        return out

    def close(self) -> None:
        self._f.close()
        self._raw.close()


class TiProxySource:
    format = "tiproxy"

    def __init__(self, path: str, encryption_key: bytes | None = None) -> None:
        self.path = path
        self.storage = open_storage(path)  # a directory, or s3://bucket/prefix (TiProxy writes to S3 too)
        if not self.storage.exists():
            raise TrafficFormatError(f"{path}: a TiProxy capture is a directory (or an S3 prefix)")
        self.files = sorted((n for n in self.storage.listdir() if TIPROXY_FILE_RE.match(n)), key=_file_order)
        if not self.files:
            raise TrafficFormatError(f"{path}: no TiProxy traffic files (traffic-*.log[.gz])")
        tmeta = self._load_meta()
        method = str(tmeta.get("EncryptMethod", "") or "").lower()
        if not tmeta and encryption_key is not None:
            method = "aes256-ctr"  # no meta yet (still being written) to say so: the key given does
        if method not in ("", "plaintext", "aes256-ctr"):
            raise TrafficFormatError(f"{path}/meta: unsupported EncryptMethod {method!r}")
        self.encrypted = method == "aes256-ctr"
        if self.encrypted and encryption_key is None:
            raise TrafficFormatError(f"{path}: the capture is encrypted (aes256-ctr); give the key file "
                                     f"(--encryption-key-path)")
        self.key = crypto.check_key(encryption_key) if self.encrypted else None
        self.stats = SkipCounter()
        self.redacted = 0  # statements kept with their secret literals replaced by the placeholder
        self.commands = 0
        duration = tmeta.get("Duration")
        self.meta = {
            "format": self.format, "source": path if path.startswith("s3://") else os.path.abspath(path),
            "commands": tmeta.get("Cmds"),
            "filtered_commands": tmeta.get("FilteredCmds", 0),
            "duration": duration / 1e9 if isinstance(duration, (int, float)) else None,
            "tiproxy_meta": tmeta, "outcomes_recorded": True, "error_codes_recorded": False,
            "status_flags_recorded": False, "last_insert_id_recorded": False, "latency_recorded": False,
            "rows_recorded": False, "start_ns": 0,
        }
        self.complete = bool(tmeta)
        self.unfinished = not tmeta  # TiProxy writes its meta when the capture ends
        # (file, offset in its decoded bytes) where a cut-off last file ended, as the native reader's
        self.truncated_at: tuple[str, int] | None = None

    def _key_hint(self) -> str:
        if self.complete:
            return ""
        if self.encrypted:
            return " (decrypted with the key given: the capture has no meta to say whether it is encrypted)"
        return " (the capture has no meta to say whether it is encrypted: if it is, give its key)"

    def _load_meta(self) -> dict:
        p = self.storage.path("meta")
        raw = self.storage.read("meta")
        if raw is None:
            return {}
        try:
            meta = json.loads(raw)
        except ValueError as e:
            raise TrafficFormatError(f"{p}: unreadable meta: {e}") from e
        if not isinstance(meta, dict):
            raise TrafficFormatError(f"{p}: meta is not a JSON object")
        return meta

    # ---- decoding --------------------------------------------------------------------------
    def _commands(self) -> Iterator[dict]:
        for i, name in enumerate(self.files):
            m = TIPROXY_FILE_RE.match(name)
            # the file TiProxy is still writing (no meta yet) may end mid-command: its whole commands
            # are replayed, the cut one is not (as our own reader does with a capture cut off)
            tolerate_cut = self.unfinished and i == len(self.files) - 1
            stream = None
            try:
                stream = _Stream(self.storage, name, bool(m.group("gz")), self.key)
                yield from self._file_commands(stream)
            except _Cut:
                if stream is not None and not stream.may_be_commands():  # the wrong key (or none): not a cut
                    raise TrafficFormatError(f"{stream.path}: line 1: not a TiProxy command: "
                                             f"{bytes(stream.buf[:40])!r}{self._key_hint()}") from None
                if not tolerate_cut:
                    raise
                self.truncated_at = (name, stream.offset if stream is not None else 0)
            finally:
                if stream is not None:
                    stream.close()

    def _file_commands(self, s: _Stream) -> Iterator[dict]:
        c: dict = {}
        while True:
            line = s.readline()
            if line is None:
                if c:
                    raise _Cut(f"{s.path}: line {s.line}: command cut off before its payload")
                return
            where = f"{s.path}: line {s.line}"
            if not line.startswith(_KEY_PREFIX) or _KEY_SUFFIX not in line:
                raise TrafficFormatError(f"{where}: not a '# Key: value' line: {line[:80]!r}{self._key_hint()}")
            key, _, value = line[2:].partition(_KEY_SUFFIX)
            if not value:
                raise TrafficFormatError(f"{where}: empty value for {key.decode(errors='replace')}")
            try:
                if key == b"Time":
                    c["start_ns"] = _rfc3339_ns(value.decode())
                elif key == b"Conn_ID":
                    c["conn"] = int(value)
                elif key == b"Cmd_type":
                    name = value.decode()
                    if name not in _TYPE_BY_NAME:
                        raise TrafficFormatError(f"{where}: unknown Cmd_type {name!r}")
                    c["type"] = _TYPE_BY_NAME[name]
                elif key == b"Success":
                    c["success"] = value == b"true"
                elif key == b"Captured_ps_id":
                    c["ps_id"] = int(value)
                elif key == b"Prepared_stmt":
                    c["prepared"] = _go_unquote(value.decode("utf-8", "surrogateescape"))
                elif key == b"Payload_len":
                    n = int(value)
                    body = s.read(n) if n else b""
                    if s.read(1) != b"\n":
                        raise TrafficFormatError(f"{where}: payload not followed by a new line")
                    c["payload"] = bytes((c.get("type", COMMAND.COM_QUERY),)) + body
                    if "start_ns" not in c or not c.get("conn"):
                        raise TrafficFormatError(f"{where}: command without Time or Conn_ID")
                    yield c
                    c = {}
                # other keys (newer TiProxy versions) are ignored
            except ValueError as e:
                raise TrafficFormatError(f"{where}: bad value for {key.decode(errors='replace')}: {e}") from None

    # ---- records ---------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Record]:
        # TiProxy connection id -> {"db", "prepared", "dropped" (statement ids the secret filter dropped), "last"}
        live: dict[int, dict] = {}
        last_ns = 0
        for c in self._commands():
            conn, start, payload = c["conn"], c["start_ns"], c["payload"]
            cmd = payload[0]
            last_ns = max(last_ns, start)
            if not self.meta["start_ns"]:
                self.meta["start_ns"] = start
            st = live.get(conn)
            if st is None:
                if cmd == COMMAND.COM_QUIT:
                    continue
                st = live[conn] = {"db": None, "prepared": {}, "dropped": set(), "last": 0}
                db = payload[1:].decode("utf-8", "surrogateescape") if cmd == COMMAND.COM_INIT_DB else None
                st["db"] = db
                body = {"user": "", "db": db, "capabilities": 0, "charset": UTF8MB4, "client_addr": ""}
                yield Record(KIND_CONN_OPEN, conn, start - 1, 0, 0, 0, 0, 0, json.dumps(body).encode())
                if db is not None:
                    continue  # InitConn's COM_INIT_DB only carried the connection's database
            if start <= st["last"]:
                start = st["last"] + 1
            st["last"] = start
            if cmd == COMMAND.COM_QUIT:
                del live[conn]
                yield Record(KIND_CONN_CLOSE, conn, start, 0, 0, 0, 0, 0, b"")
                continue
            if cmd == COMMAND.COM_QUERY and payload[1:].lstrip()[:18].upper() == b"SET SESSION_STATES":
                self.stats["TiDB session states (connection open before the capture; TiDB only)"] += 1
                continue
            if cmd in (COMMAND.COM_QUERY, COMMAND.COM_STMT_PREPARE):
                kept = secret_filter(payload, self)
                if kept is None:
                    if cmd == COMMAND.COM_STMT_PREPARE and c.get("ps_id"):
                        st["dropped"].add(c["ps_id"])   # its executes carry the secret: dropped too
                    continue
                payload = kept
            ps_id = c.get("ps_id", 0)
            if cmd in _STMT_ID_COMMANDS:
                ps_id = ps_id or (int.from_bytes(payload[1:5], "little") if len(payload) >= 5 else 0)
                if ps_id and ps_id not in st["prepared"] and ps_id not in st["dropped"] and c.get("prepared"):
                    # prepared before the capture: its text goes through the same filter as a prepare
                    kept = secret_filter(bytes((COMMAND.COM_STMT_PREPARE,)) + c["prepared"].encode(
                        "utf-8", "surrogateescape"), self)
                    if kept is None:
                        st["dropped"].add(ps_id)
                    else:
                        c["prepared"] = kept[1:].decode("utf-8", "surrogateescape")
                if ps_id in st["dropped"]:
                    self.stats[DROPPED_STAT] += 1   # an execute (close, reset) of a dropped prepare
                    continue
            if cmd == COMMAND.COM_INIT_DB:
                st["db"] = payload[1:].decode("utf-8", "surrogateescape")
            affected = 0
            if cmd == COMMAND.COM_STMT_PREPARE and ps_id:
                affected = ps_id  # our format: a PREPARE's affected_rows holds the captured statement id
                st["prepared"][ps_id] = payload[1:].decode("utf-8", "surrogateescape")
                st["dropped"].discard(ps_id)
            elif ps_id and c.get("prepared") and ps_id not in st["prepared"]:
                # prepared before the capture: tell replay the SQL so it can prepare it first
                st["prepared"][ps_id] = c["prepared"]
                state = {"user": "", "db": st["db"], "capabilities": 0, "charset": UTF8MB4, "client_addr": "",
                         "prepared": [[ps_id, c["prepared"]]]}
                yield Record(KIND_CONN_STATE, conn, start - 1, 0, 0, 0, 0, 0, json.dumps(state).encode())
            outcome = OUTCOME_OK if c.get("success", True) else OUTCOME_ERR
            self.commands += 1
            yield Record(KIND_COMMAND, conn, start, start, outcome, 0, affected, 0, payload)
        for conn in list(live):
            yield Record(KIND_CONN_CLOSE, conn, last_ns + 1, 0, 0, 0, 0, 0, b"")
        self.meta["commands"] = self.commands


def _rfc3339_ns(text: str) -> int:
    """Go's time.RFC3339Nano ("2006-01-02T15:04:05.999999999Z07:00") to Unix ns, nanoseconds kept."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)", text)
    if not m:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    base = datetime.datetime.fromisoformat(m.group(1) + (m.group(3).replace("Z", "+00:00")))
    frac = int((m.group(2) or "").ljust(9, "0"))
    return int(base.timestamp()) * 1_000_000_000 + frac


def _go_unquote(text: str) -> str:
    """strconv.Quote's output back to the string (Go escapes: \\n, \\t, \\", \\\\, \\xNN, \\uNNNN, ...)."""
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        raise ValueError(f"not a quoted string: {text[:40]!r}")
    body = text[1:-1]
    # Go's escapes are a subset of Python's unicode_escape ones, except that \xNN is a byte there.
    raw = codecs.decode(body.encode("latin-1", "backslashreplace"), "unicode_escape")
    try:
        return raw.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return raw
