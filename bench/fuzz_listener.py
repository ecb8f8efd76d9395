#!/usr/bin/env python3
"""Socket-level fuzzer of the proxy's listener: mutated client streams against a real proxy in
front of a real MariaDB, while well-behaved connections run beside them.

    python bench/fuzz_corpus.py --out /tmp/fastproxy-fuzz-corpus        # once: the seed corpus
    python bench/fuzz_listener.py --corpus /tmp/fastproxy-fuzz-corpus --streams 1000000 [--json out.json]
    python bench/fuzz_listener.py --corpus ... --replay 123456           # one stream again, by index

Each stream i is derived, reproducibly from (--seed, i), from one or two recorded real sessions
(bench/fuzz_corpus.py) by 1-3 mutations: bit flips (biased to packet headers and command bytes),
interesting byte values, truncation, length-field corruption, sequence-id corruption, a
replaced command byte, splicing two sessions, duplicated / dropped / swapped packets, inserted
random bytes, a header announcing a large packet that never comes. It is sent in random pieces
(one write, a few, or byte by byte at first), then the client half-closes and reads to the end,
or reads until the proxy is quiet and closes, or resets the connection.

Checked all along and reported (exit status 1 if any fails):
- the proxy never dies and logs no traceback (it runs with --log.level=error);
- canaries: 4 connections logged in through the same proxy run `SELECT '<id>:<n>'` in a loop and
  must always get their own answer (no desync, no error) — a fuzz stream never hurts another
  connection;
- a half-closed fuzz connection is always closed by the proxy (no hang);
- memory: the proxy's RSS at quiet points (no fuzz connection open) after a warm-up is the
  baseline; RSS at later quiet points and at the end is compared with it.

The server runs with max_statement_time=2 and short lock waits, and the streams log in as `fuzz`
(privileges on the `fuzz` database only), so that what a mutation turns into (SHUTDOWN, KILL, a
long SLEEP) cannot take the server or the canaries down.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import struct
import sys
import time

from benchlib import Proxy, load_average, login, machine, query_scalar, quit_and_close
from fuzz_corpus import FUZZ_DB, SETUP, cut_at_packet, load_streams

from fastproxy.scratch_db import ROOT_PASSWORD, ScratchMariaDB

CANARIES = 4
INTERESTING = (0x00, 0x01, 0x03, 0x7F, 0x80, 0xFA, 0xFB, 0xFC, 0xFD, 0xFE, 0xFF)
COMMANDS = list(range(0x00, 0x20)) + [0xFE, 0xFF]


def split_packets(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos + 4 <= len(data):
        n = 4 + int.from_bytes(data[pos:pos + 3], "little")
        out.append(data[pos:pos + n])
        pos += n
    if pos < len(data):
        out.append(data[pos:])
    return out


class Mutator:
    def __init__(self, streams: list[bytes]) -> None:
        self.streams = streams
        self.ops = [self.bit_flips, self.interesting_byte, self.truncate, self.length_field, self.sequence_id,
                    self.command_byte, self.splice, self.packet_shuffle, self.insert_bytes, self.large_announced]

    def stream(self, rnd: random.Random) -> tuple[bytes, list[str]]:
        data = bytearray(rnd.choice(self.streams))
        names = []
        for _ in range(rnd.choice((1, 1, 2, 3))):
            op = rnd.choice(self.ops)
            names.append(op.__name__)
            data = op(data, rnd)
        return bytes(data), names

    @staticmethod
    def _header_positions(data: bytearray) -> list[int]:
        pos, out = 0, []
        while pos + 4 <= len(data):
            out.append(pos)
            pos += 4 + int.from_bytes(data[pos:pos + 3], "little")
        return out

    def bit_flips(self, data, rnd):
        if not data:
            return data
        heads = self._header_positions(data)
        for _ in range(rnd.randint(1, 8)):
            if heads and rnd.random() < 0.5:
                i = min(len(data) - 1, rnd.choice(heads) + rnd.randrange(5))
            else:
                i = rnd.randrange(len(data))
            data[i] ^= 1 << rnd.randrange(8)
        return data

    def interesting_byte(self, data, rnd):
        if data:
            heads = self._header_positions(data)
            i = (min(len(data) - 1, rnd.choice(heads) + rnd.randrange(8)) if heads and rnd.random() < 0.5
                 else rnd.randrange(len(data)))
            data[i] = rnd.choice(INTERESTING)
        return data

    def truncate(self, data, rnd):
        return data[:rnd.randrange(len(data) + 1)]

    def length_field(self, data, rnd):
        heads = self._header_positions(data)
        if not heads:
            return data
        i = rnd.choice(heads)
        n = int.from_bytes(data[i:i + 3], "little")
        new = rnd.choice((0, 1, 2, 3, 4, max(0, n - 1), n + 1, n * 2, 0xFFFFFF, 0xFFFFFE, rnd.randrange(1 << 24)))
        data[i:i + 3] = (new & 0xFFFFFF).to_bytes(3, "little")
        return data

    def sequence_id(self, data, rnd):
        heads = self._header_positions(data)
        if heads:
            i = rnd.choice(heads) + 3
            if i < len(data):
                data[i] = rnd.choice((0, 1, 2, 255, rnd.randrange(256)))
        return data

    def command_byte(self, data, rnd):
        heads = [h for h in self._header_positions(data) if h + 4 < len(data)]
        if heads:
            data[rnd.choice(heads) + 4] = rnd.choice(COMMANDS)
        return data

    def splice(self, data, rnd):
        other = rnd.choice(self.streams)
        if rnd.random() < 0.5:
            a, b = split_packets(bytes(data)), split_packets(other)
            return bytearray(b"".join(a[:rnd.randint(0, len(a))] + b[rnd.randint(0, len(b)):]))
        return data[:rnd.randint(0, len(data))] + bytearray(other[rnd.randint(0, len(other)):])

    def packet_shuffle(self, data, rnd):
        pkts = split_packets(bytes(data))
        if len(pkts) < 2:
            return data
        i, j = rnd.randrange(len(pkts)), rnd.randrange(len(pkts))
        kind = rnd.randrange(3)
        if kind == 0:
            pkts.insert(i, pkts[j])
        elif kind == 1:
            del pkts[i]
        else:
            pkts[i], pkts[j] = pkts[j], pkts[i]
        return bytearray(b"".join(pkts))

    def insert_bytes(self, data, rnd):
        i = rnd.randint(0, len(data))
        return data[:i] + bytearray(rnd.randbytes(rnd.randint(1, 64))) + data[i:]

    def large_announced(self, data, rnd):
        heads = self._header_positions(data)
        cut = rnd.choice(heads) if heads else len(data)
        n = rnd.choice((1 << 20, (1 << 24) - 1, rnd.randrange(1 << 16, 1 << 24)))
        return data[:cut] + bytearray(struct.pack("<I", n)[:3] + bytes((rnd.choice((0, 1)),)))
        + bytearray(rnd.randbytes(rnd.randint(0, 512)))


def pieces(data: bytes, rnd: random.Random) -> list[bytes]:
    r = rnd.random()
    if r < 0.5 or len(data) < 2:
        return [data]
    if r < 0.8:
        cuts = sorted(rnd.sample(range(1, len(data)), min(len(data) - 1, rnd.randint(1, 20))))
        return [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
    head = min(len(data), rnd.randint(1, 200))
    return [data[i:i + 1] for i in range(head)] + ([data[head:]] if head < len(data) else [])


class Fuzzer:
    def __init__(self, proxy: Proxy, mutator: Mutator, seed: int, concurrency: int, findings: list) -> None:
        self.proxy = proxy
        self.mutator = mutator
        self.seed = seed
        self.concurrency = concurrency
        self.findings = findings
        self.done = 0
        self.in_flight: set[int] = set()
        self.outcomes = {"eof": 0, "quiet": 0, "reset": 0, "connect_failed": 0}
        self.bytes_back = 0
        self.canary_queries = 0
        self.stop = False

    def finding(self, kind: str, detail: str, index: int | None = None) -> None:
        self.findings.append({"kind": kind, "detail": detail, "stream": index, "time": time.time(),
                              "in_flight": sorted(self.in_flight)[:200] if kind == "proxy died" else None})
        print(f"FINDING {kind}: {detail} (stream {index})", flush=True)

    def rnd(self, i: int) -> random.Random:
        return random.Random(self.seed * 1_000_003 + i)

    async def one(self, i: int) -> None:
        rnd = self.rnd(i)
        data, _ = self.mutator.stream(rnd)
        chunks = pieces(data, rnd)
        ending = rnd.random()
        self.in_flight.add(i)
        try:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.proxy.port), 20)
            except (OSError, asyncio.TimeoutError) as e:
                self.outcomes["connect_failed"] += 1
                self.finding("connect failed", f"{type(e).__name__}: {e}", i)
                return
            try:
                for c in chunks:
                    if writer.transport.is_closing():
                        break
                    writer.write(c)
                    if len(chunks) > 1 and rnd.random() < 0.2:
                        await writer.drain()
                        await asyncio.sleep(0)
                if ending < 0.5:
                    writer.write_eof()
                    try:
                        await asyncio.wait_for(self._drain(reader), 20)
                    except asyncio.TimeoutError:
                        self.finding("hang", "the proxy kept a half-closed connection open for 20 s", i)
                    self.outcomes["eof"] += 1
                elif ending < 0.85:
                    await self._until_quiet(reader, 0.05, 5)
                    self.outcomes["quiet"] += 1
                else:
                    self.outcomes["reset"] += 1
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:  # the proxy closed it first (reset, or not connected any more for write_eof)
                self.outcomes["reset"] += 1
            finally:
                writer.close()
        finally:
            self.in_flight.discard(i)
            self.done += 1

    async def _drain(self, reader) -> None:
        try:
            while data := await reader.read(65536):
                self.bytes_back += len(data)
        except (ConnectionResetError, BrokenPipeError):
            pass

    async def _until_quiet(self, reader, quiet: float, limit: float) -> None:
        deadline = time.monotonic() + limit
        try:
            while time.monotonic() < deadline:
                data = await asyncio.wait_for(reader.read(65536), quiet)
                if not data:
                    return
                self.bytes_back += len(data)
        except (asyncio.TimeoutError, ConnectionResetError, BrokenPipeError):
            pass

    async def run_range(self, start: int, stop: int) -> None:
        it = iter(range(start, stop))

        async def worker():
            for i in it:
                if self.stop:
                    return
                await self.one(i)

        await asyncio.gather(*(worker() for _ in range(self.concurrency)))

    async def canary(self, k: int) -> None:
        n = 0
        while not self.stop:
            try:
                reader, writer = await login("127.0.0.1", self.proxy.port, "root", ROOT_PASSWORD)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, Exception) as e:
                self.finding("canary login failed", f"{type(e).__name__}: {e}")
                await asyncio.sleep(1)
                continue
            try:
                while not self.stop:
                    n += 1
                    want = f"{k}:{n}".encode()
                    got = await query_scalar(reader, writer, f"SELECT '{k}:{n}'")
                    self.canary_queries += 1
                    if got != want:
                        self.finding("canary desync", f"canary {k} asked for {want!r}, got {got!r}")
                        break
                    await asyncio.sleep(0.005)
                else:
                    quit_and_close(writer)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, Exception) as e:
                self.finding("canary error", f"canary {k}: {type(e).__name__}: {e}")
                writer.close()

    async def watch(self) -> None:
        while not self.stop:
            if not self.proxy.alive():
                self.finding("proxy died", f"exit status {self.proxy.proc.returncode}")
                self.stop = True
                return
            await asyncio.sleep(1)

    async def quiet_rss(self) -> int:
        """RSS once no fuzz connection is open (only the canaries)."""
        deadline = time.monotonic() + 120
        while True:
            h = await asyncio.to_thread(self.proxy.health)
            if h["connections"] <= CANARIES:
                return self.proxy.rss_kib()
            if time.monotonic() > deadline:
                self.finding("connections left open", f"{h['connections'] - CANARIES} fuzz connections 120 s after the last stream")
                return self.proxy.rss_kib()
            await asyncio.sleep(0.2)


async def fuzz(proxy: Proxy, mutator: Mutator, args, findings: list) -> dict:
    f = Fuzzer(proxy, mutator, args.seed, args.concurrency, findings)
    canaries = [asyncio.create_task(f.canary(k)) for k in range(CANARIES)]
    watcher = asyncio.create_task(f.watch())
    t0 = time.monotonic()
    warmup = min(args.warmup, args.streams)
    await f.run_range(0, warmup)
    baseline = await f.quiet_rss()
    series = [(warmup, baseline)]
    print(f"{warmup} streams (warm-up), baseline RSS {baseline} KiB", flush=True)
    pos = warmup
    while pos < args.streams and not f.stop:
        nxt = min(args.streams, pos + args.checkpoint)
        await f.run_range(pos, nxt)
        pos = nxt
        rss = await f.quiet_rss()
        series.append((pos, rss))
        rate = f.done / (time.monotonic() - t0)
        print(f"{pos} streams, RSS {rss} KiB, {rate:.0f} streams/s, canary queries {f.canary_queries}, "
              f"load {load_average():.1f}, findings {len(findings)}", flush=True)
    elapsed = time.monotonic() - t0
    f.stop = True
    for t in canaries + [watcher]:
        t.cancel()
    await asyncio.gather(*canaries, watcher, return_exceptions=True)
    return {"streams": f.done, "seconds": round(elapsed, 1), "streams_per_s": round(f.done / elapsed, 1),
            "outcomes": f.outcomes, "bytes_back": f.bytes_back, "canary_queries": f.canary_queries,
            "rss_baseline_kib": baseline, "rss_final_kib": series[-1][1], "rss_series_kib": series}


def replay_one(proxy: Proxy, mutator: Mutator, seed: int, index: int) -> None:
    f = Fuzzer(proxy, mutator, seed, 1, [])
    data, ops = mutator.stream(f.rnd(index))
    print(f"stream {index}: {len(data)} bytes, mutations {ops}\n{data[:400]!r}")
    import uvloop
    uvloop.run(f.one(index))
    print(f"outcomes {f.outcomes}, {f.bytes_back} bytes back; proxy alive: {proxy.alive()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="/tmp/fastproxy-fuzz-corpus")
    ap.add_argument("--streams", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=20_000, help="streams before the RSS baseline")
    ap.add_argument("--checkpoint", type=int, default=100_000, help="streams between quiet RSS readings")
    ap.add_argument("--max-seed-bytes", type=int, default=8192,
                    help="seed sessions are cut (at a packet boundary) to this many bytes: the mutations act on the "
                         "login and the first commands; what follows is only more ordinary traffic")
    ap.add_argument("--replay", type=int, help="send only this stream (by index) and show it")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    from benchlib import raise_nofile
    raise_nofile()
    import logging
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # "socket.send() raised exception": the proxy closed first
    streams = [cut_at_packet(s, args.max_seed_bytes) for _, s in load_streams(args.corpus)]
    mutator = Mutator(streams)
    out: dict = {"machine": machine(), "seed": args.seed, "corpus_streams": len(streams)}
    print(f"machine: {out['machine']}; {len(streams)} seed streams", flush=True)
    extra = ["--max-statement-time=2", "--lock-wait-timeout=5", "--innodb-lock-wait-timeout=2", "--log-warnings=1",
             "--max-connections=3000", "--max-connect-errors=4000000000"]
    findings: list = []
    with ScratchMariaDB(name="fuzz", extra_args=extra) as db:
        db.sql(SETUP, use_socket=True)
        import subprocess
        subprocess.run(["sysbench", "oltp_read_write", "--db-driver=mysql", "--mysql-host=127.0.0.1",
                        f"--mysql-port={db.port}", "--mysql-user=root", f"--mysql-password={ROOT_PASSWORD}",
                        f"--mysql-db={FUZZ_DB}", "--tables=1", "--table-size=100", "prepare"],
                       capture_output=True, check=True)
        proxy = Proxy([db.addr], "--log.level=error", name="fuzz").start()
        try:
            if args.replay is not None:
                replay_one(proxy, mutator, args.seed, args.replay)
                return
            import uvloop
            out.update(uvloop.run(fuzz(proxy, mutator, args, findings)))
            out["proxy_alive"] = proxy.alive()
            out["server_alive"] = db.proc.poll() is None
        finally:
            proxy.stop()
        log = proxy.log()
        out["proxy_log_traceback"] = "Traceback" in log
        out["proxy_log_error_lines"] = sum(" ERROR " in line for line in log.splitlines())
        if out["proxy_log_traceback"]:
            out["proxy_log_tail"] = log[-4000:]
    out["findings"] = findings
    out["load_avg_1m_at_end"] = round(load_average(), 2)
    print(json.dumps({k: v for k, v in out.items() if k != "rss_series_kib"}, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    bad = findings or not out.get("proxy_alive") or out.get("proxy_log_traceback")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
