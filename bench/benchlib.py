"""Shared by the robustness benches (idle connections, fuzzers, flapping): a `fastproxy serve`
subprocess, process memory, open-file limits, and a minimal asyncio MySQL client (login with
mysql_native_password, COM_QUERY, COM_QUIT) that keeps nothing per connection but its streams."""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import resource
import struct
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from fastproxy.scratch_db import free_port  # noqa: E402


def raise_nofile() -> int:
    """Soft open-files limit up to the hard one (children inherit it); returns the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def load_average() -> float:
    return os.getloadavg()[0]


def machine() -> dict:
    model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    mem = next((int(ln.split()[1]) // 1024 for ln in open("/proc/meminfo") if ln.startswith("MemTotal")), 0)
    return {"nproc": os.cpu_count(), "cpu": model, "mem_mib": mem, "kernel": os.uname().release,
            "python": sys.version.split()[0], "nofile_hard": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
            "load_avg_1m_at_start": round(load_average(), 2)}


class Proxy:
    """`python -m fastproxy serve` on free loopback ports; log in a file, checked for tracebacks."""

    def __init__(self, backends: list[str], *flags: str, name: str = "bench") -> None:
        self.port, self.api_port = free_port(), free_port()
        self.log_path = f"/tmp/fastproxy-{name}-{self.port}.log"
        self.args = [sys.executable, "-m", "fastproxy", "serve", f"--proxy.addr=127.0.0.1:{self.port}",
                     f"--api.addr=127.0.0.1:{self.api_port}", f"--proxy.backends={','.join(backends)}",
                     "--log.level=warn", *flags]
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> "Proxy":
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT, cwd=str(ROOT))
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fastproxy exited {self.proc.returncode}: {self.log()[-2000:]}")
            try:
                self.health()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def get(self, path: str, timeout: float = 30):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}{path}", timeout=timeout) as r:
            return json.loads(r.read())

    def health(self) -> dict:
        return self.get("/api/debug/health", timeout=10)

    def post(self, path: str, form: dict, timeout: float = 30) -> str:
        data = urllib.parse.urlencode(form).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.api_port}{path}", data=data)
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.read().decode()

    def wait_connections(self, n: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.health()["connections"] != n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"proxy holds {self.health()['connections']} connections, waited for {n}")
            time.sleep(0.1)

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> int:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


# ---- a minimal asyncio MySQL client ------------------------------------------------------------

def _scramble(password: bytes, nonce: bytes) -> bytes:
    if not password:
        return b""
    h1 = hashlib.sha1(password).digest()
    h2 = hashlib.sha1(h1).digest()
    h3 = hashlib.sha1(nonce[:20] + h2).digest()
    return bytes(a ^ b for a, b in zip(h1, h3))


def packet(seq: int, payload: bytes) -> bytes:
    return struct.pack("<I", len(payload))[:3] + bytes((seq & 0xFF,)) + payload


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    header = await reader.readexactly(4)
    return header[3], await reader.readexactly(int.from_bytes(header[:3], "little"))


class LoginFailed(Exception):
    pass


# LONG_PASSWORD | PROTOCOL_41 | TRANSACTIONS | SECURE_CONNECTION | PLUGIN_AUTH
CAPS = 1 | (1 << 9) | (1 << 13) | (1 << 15) | (1 << 19)


async def login(host: str, port: int, user: str, password: str, database: str | None = None,
                timeout: float = 30) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A logged-in connection (mysql_native_password, auth switch to it handled)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        seq, greeting = await asyncio.wait_for(read_packet(reader), timeout)
        if greeting[:1] == b"\xff":
            raise LoginFailed(f"ERR greeting: {greeting[3:].decode(errors='replace')}")
        pos = greeting.index(b"\x00", 1) + 1
        nonce = greeting[pos + 4:pos + 12]
        pos += 4 + 8 + 1 + 2 + 1 + 2 + 2 + 1 + 10
        nonce += greeting[pos:pos + 12]
        caps = CAPS | ((1 << 3) if database else 0)
        auth = _scramble(password.encode(), nonce)
        body = struct.pack("<IIB", caps, 1 << 24, 45) + bytes(23) + user.encode() + b"\x00" + bytes((len(auth),)) + auth
        if database:
            body += database.encode() + b"\x00"
        writer.write(packet(seq + 1, body + b"mysql_native_password\x00"))
        seq, reply = await asyncio.wait_for(read_packet(reader), timeout)
        if reply[:1] == b"\xfe":
            end = reply.index(b"\x00", 1)
            writer.write(packet(seq + 1, _scramble(password.encode(), reply[end + 1:])))
            seq, reply = await asyncio.wait_for(read_packet(reader), timeout)
        if reply[:1] != b"\x00":
            raise LoginFailed(f"login refused: {reply[3:].decode(errors='replace')}")
        return reader, writer
    except BaseException:
        writer.close()
        raise


async def query_scalar(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sql: str,
                       timeout: float = 30) -> bytes | None:
    """COM_QUERY of a one-row one-column SELECT; the value as text bytes (None for NULL)."""
    writer.write(packet(0, b"\x03" + sql.encode()))

    async def run():
        _, first = await read_packet(reader)
        if first[:1] == b"\xff":
            raise LoginFailed(f"query failed: {first[3:].decode(errors='replace')}")
        await read_packet(reader)  # column definition
        _, eof = await read_packet(reader)  # EOF (no DEPRECATE_EOF asked)
        _, row = await read_packet(reader)
        value = None if row[:1] == b"\xfb" else row[1:1 + row[0]] if row[0] < 0xfb else row[3:]
        while True:
            _, pkt = await read_packet(reader)
            if pkt[:1] == b"\xfe" and len(pkt) < 9:
                return value
    return await asyncio.wait_for(run(), timeout)


def quit_and_close(writer: asyncio.StreamWriter) -> None:
    try:
        writer.write(packet(0, b"\x01"))
    finally:
        writer.close()
