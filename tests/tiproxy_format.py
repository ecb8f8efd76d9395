"""Writes TiProxy traffic captures from TiProxy's documented layout (pkg/sqlreplay/cmd/native.go,
pkg/sqlreplay/store: rotate -> encrypt -> compress -> file, meta JSON), independently of fastproxy's
reader, so the reader is checked against the layout and not against itself."""
from __future__ import annotations

import datetime
import gzip
import json
import os
import zlib

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

# pnet.Command.String() names for the commands tests use
TYPE_NAMES = {0x02: "InitDB", 0x03: "Query", 0x01: "Quit", 0x16: "StmtPrepare", 0x17: "StmtExecute",
              0x19: "StmtClose", 0x0e: "Ping"}


def go_quote(s: str) -> str:
    out = ['"']
    for ch in s:
        out.append({'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(ch, ch))
    out.append('"')
    return "".join(out)


def encode_command(start: datetime.datetime, conn_id: int, payload: bytes, *, success: bool = True,
                   ps_id: int = 0, prepared: str = "") -> bytes:
    lines = [f"# Time: {start.isoformat()}", f"# Conn_ID: {conn_id}"]
    if payload[0] != 0x03:
        lines.append(f"# Cmd_type: {TYPE_NAMES[payload[0]]}")
    if not success:
        lines.append("# Success: false")
    if ps_id:
        lines.append(f"# Captured_ps_id: {ps_id}")
    if prepared:
        lines.append(f"# Prepared_stmt: {go_quote(prepared)}")
    lines.append(f"# Payload_len: {len(payload) - 1}")
    return ("\n".join(lines) + "\n").encode() + payload[1:] + b"\n"


def encrypt(body: bytes, key: bytes) -> bytes:
    """encryptWriter: the IV, then the AES-256-CTR stream."""
    iv = os.urandom(16)
    enc = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    return iv + enc.update(body) + enc.finalize()


def flushed_prefix(body: bytes, cut: int, *, compress: bool = True, key: bytes | None = None) -> bytes:
    """What the file being written holds when TiProxy has flushed the first `cut` bytes of `body` through
    its writers: the (encrypted, gzip) stream up to there, without its end."""
    data = encrypt(body, key)[:16 + cut] if key is not None else body[:cut]
    if not compress:
        return data
    gz = zlib.compressobj(wbits=31)  # a gzip stream, flushed (as gzip.Writer.Flush does) and not closed
    return gz.compress(data) + gz.flush(zlib.Z_SYNC_FLUSH)


def write_capture(directory: str, files: list[bytes], *, compress: bool = True, key: bytes | None = None,
                  cmds: int = 0) -> list[str]:
    os.makedirs(directory, exist_ok=True)
    names = []
    t0 = datetime.datetime(2024, 12, 3, 11, 5, 1)
    for i, body in enumerate(files):
        data = body
        if key is not None:  # encryptWriter writes the IV, then the CTR stream
            data = encrypt(body, key)
        if compress:  # compressWriter wraps the file: gzip outermost
            data = gzip.compress(data)
        ts = (t0 + datetime.timedelta(seconds=i, milliseconds=500)).strftime("%Y-%m-%dT%H-%M-%S.%f")[:-3]
        name = f"traffic-{ts}.log" + (".gz" if compress else "")
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)
        names.append(name)
    meta = {"Version": "v1", "Duration": 10_000_000_000, "Cmds": cmds, "FilteredCmds": 0}
    if key is not None:
        meta["EncryptMethod"] = "aes256-ctr"
    with open(os.path.join(directory, "meta"), "w") as f:
        json.dump(meta, f)
    return names
