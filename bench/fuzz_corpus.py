#!/usr/bin/env python3
"""Record the fuzzers' seed corpus: real client sessions through a real proxy.

    python bench/fuzz_corpus.py --out /tmp/fastproxy-fuzz-corpus

A scratch MariaDB and a `fastproxy serve` are started; a recording TCP relay sits in front of the
proxy and keeps every byte each client sent. The clients are real: the `mariadb` CLI (text
queries, multi-statements, SQL PREPARE, LOAD DATA LOCAL INFILE, errors), PyMySQL (text protocol,
executemany, a 20 KB value), mysqlclient (COM_INIT_DB, COM_PING, COM_CHANGE_USER, COM_STATISTICS),
MariaDB Connector/Python (binary protocol: COM_STMT_PREPARE / EXECUTE / CLOSE, NULLs, blobs) and
sysbench (prepared statements, transactions). They log in as `fuzz`, an account with no password,
so that a recorded stream logs in again whatever the server's nonce (an empty password's auth
data is empty) — a replayed stream reaches the command phase.

Written to --out: `streams/NNN-<client>.bin` (client bytes of one connection, at most 64 KiB,
cut at a packet boundary), `captures/{lz4,bin,lz4-enc}` (fastproxy captures of the same sessions,
4 KiB files, the last one encrypted with `traffic.key`: the seeds of the capture-reader fuzzer).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from benchlib import Proxy, packet, read_packet

from fastproxy.scratch_db import ScratchMariaDB, free_port

FUZZ_USER = "fuzz"
FUZZ_DB = "fuzz"
MAX_STREAM = 64 * 1024

SETUP = f"""
CREATE DATABASE IF NOT EXISTS {FUZZ_DB};
CREATE USER IF NOT EXISTS '{FUZZ_USER}'@'127.0.0.1';
GRANT ALL ON {FUZZ_DB}.* TO '{FUZZ_USER}'@'127.0.0.1';
CREATE TABLE IF NOT EXISTS {FUZZ_DB}.t (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(100), b MEDIUMBLOB, d DATETIME);
INSERT INTO {FUZZ_DB}.t (v, b, d) VALUES ('a', 'x', NOW()), ('b', NULL, NULL), ('c', REPEAT('y', 300), NOW());
"""

CLI_SCRIPT = """
SELECT 1;
SELECT * FROM t ORDER BY id;
INSERT INTO t (v) VALUES ('cli');
SELECT v, LENGTH(b) FROM t WHERE id > 1; SELECT COUNT(*) FROM t;
SELECT * FROM no_such_table;
PREPARE s FROM 'SELECT v FROM t WHERE id = ?'; SET @i = 1; EXECUTE s USING @i; DEALLOCATE PREPARE s;
BEGIN; UPDATE t SET v = 'u' WHERE id = 2; ROLLBACK;
SHOW TABLES; SHOW VARIABLES LIKE 'max_allowed_packet';
SET NAMES utf8mb4; SELECT 'ü€', _binary 0x00ff;
DO SLEEP(0);
"""

CONNECTOR_SCRIPT = f"""
import sys, mariadb
c = mariadb.connect(host="127.0.0.1", port=int(sys.argv[1]), user="{FUZZ_USER}", password="", database="{FUZZ_DB}")
cur = c.cursor(prepared=True)
cur.execute("SELECT id, v, b, d FROM t WHERE id > ? AND v <> ?", (0, "nope"))
cur.fetchall()
cur.execute("INSERT INTO t (v, b, d) VALUES (?, ?, ?)", ("bin", b"\\x00\\xfe\\xff", None))
cur.execute("SELECT ? + 1, ?", (41, 2.5))
cur.fetchall()
c.commit()
cur.close()
c.close()
"""


class Recorder:
    """A TCP relay in front of the proxy that keeps what each client sent."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.streams: list[tuple[str, bytearray]] = []
        self.label = "?"
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> "Recorder":
        threading.Thread(target=self._run, daemon=True).start()
        self._ready.wait(10)
        return self

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(asyncio.start_server(self._relay, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()

    async def _relay(self, creader, cwriter) -> None:
        sent = bytearray()
        self.streams.append((self.label, sent))
        sreader, swriter = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pump(r, w, keep):
            try:
                while data := await r.read(65536):
                    if keep is not None:
                        keep += data
                    w.write(data)
                    await w.drain()
            except OSError:
                pass
            finally:
                w.close()

        await asyncio.gather(pump(creader, swriter, sent), pump(sreader, cwriter, None))


def cut_at_packet(data: bytes, limit: int) -> bytes:
    pos = 0
    while pos + 4 <= len(data):
        n = 4 + int.from_bytes(data[pos:pos + 3], "little")
        if pos + n > limit:
            break
        pos += n
    return bytes(data[:pos])


def run_clients(port: int, workdir: str, rec: Recorder) -> None:
    import MySQLdb
    import pymysql

    rec.label = "cli"
    print("  client:", rec.label, flush=True)
    cli = ["mariadb", "--no-defaults", "-h127.0.0.1", f"-P{port}", "--protocol=TCP", f"-u{FUZZ_USER}",
           f"--database={FUZZ_DB}", "--local-infile=1"]
    subprocess.run(cli + ["--force"], input=CLI_SCRIPT.encode(), capture_output=True, check=False)
    infile = os.path.join(workdir, "rows.tsv")
    with open(infile, "w") as f:
        f.write("".join(f"file{i}\n" for i in range(50)))
    rec.label = "cli-infile"
    print("  client:", rec.label, flush=True)
    subprocess.run(cli + ["-e", f"LOAD DATA LOCAL INFILE '{infile}' INTO TABLE t (v)"], capture_output=True)

    rec.label = "pymysql"
    print("  client:", rec.label, flush=True)
    c = pymysql.connect(host="127.0.0.1", port=port, user=FUZZ_USER, password="", database=FUZZ_DB,
                        client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS)
    with c.cursor() as cur:
        cur.execute("SELECT id, v FROM t WHERE v LIKE %s", ("%a%",))
        cur.fetchall()
        cur.executemany("INSERT INTO t (v, b) VALUES (%s, %s)", [("pm", b"\x00\x01"), ("pm2", b"\xff" * 40)])
        cur.execute("SELECT 1; SELECT 2")
        while cur.nextset():
            pass
        cur.execute("INSERT INTO t (v, b) VALUES ('big', %s)", (b"z" * 20_000,))
        c.commit()
    c.close()

    rec.label = "mysqlclient"
    print("  client:", rec.label, flush=True)
    c = MySQLdb.connect(host="127.0.0.1", port=port, user=FUZZ_USER, passwd="", db=FUZZ_DB)
    c.ping()
    c.select_db(FUZZ_DB)
    cur = c.cursor()
    cur.execute("SELECT COUNT(*) FROM t")
    cur.fetchall()
    c.stat()
    c.change_user(FUZZ_USER, "", FUZZ_DB) if hasattr(c, "change_user") else None
    cur = c.cursor()
    cur.execute("SELECT CURRENT_USER()")
    cur.fetchall()
    c.close()

    rec.label = "mariadb-connector"
    print("  client:", rec.label, flush=True)
    # in a child process: Connector/Python keeps the GIL while it waits for the server, which
    # would stall the relay thread of this one
    subprocess.run([sys.executable, "-c", CONNECTOR_SCRIPT, str(port)], check=True, timeout=120)

    rec.label = "sysbench"
    print("  client:", rec.label, flush=True)
    sb = ["sysbench", "--db-driver=mysql", "--mysql-host=127.0.0.1", f"--mysql-port={port}", f"--mysql-user={FUZZ_USER}",
          "--mysql-password=", f"--mysql-db={FUZZ_DB}", "--tables=1", "--table-size=100"]
    subprocess.run(sb + ["oltp_read_write", "--threads=2", "--time=2", "--db-ps-mode=auto", "run"],
                   capture_output=True, check=False)
    subprocess.run(sb + ["oltp_point_select", "--threads=1", "--time=1", "--db-ps-mode=disable", "run"],
                   capture_output=True, check=False)


def replayable(port: int, stream: bytes) -> bool:
    """The stream, sent as is, logs in (greeting, then an OK to its handshake response)."""
    async def run():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(stream[:4 + int.from_bytes(stream[:3], "little")])
            await read_packet(reader)
            _, reply = await asyncio.wait_for(read_packet(reader), 10)
            return reply[:1] == b"\x00"
        finally:
            writer.write(packet(0, b"\x01"))
            writer.close()
    try:
        return asyncio.run(run())
    except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
        return False


def record(out: str) -> dict:
    streams_dir = os.path.join(out, "streams")
    captures_dir = os.path.join(out, "captures")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(streams_dir)
    os.makedirs(captures_dir)
    workdir = tempfile.mkdtemp(prefix="fastproxy-fuzz-corpus-")
    with ScratchMariaDB(name="corpus") as db:
        db.sql(SETUP, use_socket=True)
        subprocess.run(["sysbench", "oltp_read_write", "--db-driver=mysql", "--mysql-host=127.0.0.1",
                        f"--mysql-port={db.port}", "--mysql-user=root", "--mysql-password=rootpw",
                        f"--mysql-db={FUZZ_DB}", "--tables=1", "--table-size=100", "prepare"],
                       capture_output=True, check=True)
        key_path = os.path.join(out, "traffic.key")
        with open(os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(os.urandom(32))
        # small files: every capture rotates through several
        proxy = Proxy([db.addr], "--capture.file-size=4KiB", f"--security.encryption-key-path={key_path}",
                      name="corpus").start()
        try:
            rec = Recorder(proxy.port).start()
            for kind in ("lz4", "bin", "lz4-enc"):
                target = os.path.join(captures_dir, kind)
                proxy.post("/api/traffic/capture", {
                    "output": target, "duration": "10m", "compress": "false" if kind == "bin" else "true",
                    "encryption-method": "aes256-ctr" if kind.endswith("enc") else ""})
                run_clients(rec.port, workdir, rec)
                proxy.post("/api/traffic/cancel", {"type": "capture"})
                deadline = time.monotonic() + 60
                while proxy.get("/api/traffic/show")[-1]["status"] == "running" and time.monotonic() < deadline:
                    time.sleep(0.2)
            time.sleep(0.5)  # the relay's last bytes
            kept = 0
            for i, (label, data) in enumerate(rec.streams):
                stream = cut_at_packet(bytes(data), MAX_STREAM)
                print(f"  recorded {label}: {len(data)} bytes, kept {len(stream)}", flush=True)
                if len(stream) < 36 or not replayable(proxy.port, stream):
                    continue
                with open(os.path.join(streams_dir, f"{i:03d}-{label}.bin"), "wb") as f:
                    f.write(stream)
                kept += 1
        finally:
            proxy.stop()
    shutil.rmtree(workdir, ignore_errors=True)
    return {"connections": len(rec.streams), "streams": kept}


def load_streams(corpus: str) -> list[tuple[str, bytes]]:
    d = os.path.join(corpus, "streams")
    out = []
    for name in sorted(os.listdir(d)):
        with open(os.path.join(d, name), "rb") as f:
            out.append((name, f.read()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/fastproxy-fuzz-corpus")
    args = ap.parse_args()
    print(record(args.out))
    for name, data in load_streams(args.out):
        print(f"  {name}: {len(data)} bytes")


if __name__ == "__main__":
    sys.exit(main())
