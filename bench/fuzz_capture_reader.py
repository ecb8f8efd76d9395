#!/usr/bin/env python3
"""Fuzzer of the capture reader: mutated capture directories, read to the end.

    python bench/fuzz_corpus.py --out /tmp/fastproxy-fuzz-corpus     # once: seeds (real captures)
    python bench/fuzz_capture_reader.py --corpus /tmp/fastproxy-fuzz-corpus --cases 100000 [--json out.json]
    python bench/fuzz_capture_reader.py --corpus ... --replay 1234    # one case again, with its traceback

The seeds are the real captures bench/fuzz_corpus.py made through a proxy (lz4, uncompressed,
lz4 + aes256-ctr; 4 KiB files, so each capture has tens of files). Case i (reproducible from
--seed and i) mutates one thing of one capture:
- a traffic file's bytes: bit flips, truncation, appended / inserted garbage, a zeroed range,
  its file header (magic, version, flags), bytes of another file spliced in;
- a traffic file's records (lz4 and uncompressed files: decompressed, mutated, compressed again,
  so the record decoder sees it rather than lz4's checksums): bit flips in record headers, a
  length field set to 0, to less than a header, to a huge value, records cut or spliced;
- the directory: a file removed, a file copied under a later sequence number;
- meta: a key removed or given another type, a format version changed, truncated or invalid
  JSON, bytes that are not UTF-8.

Then TrafficReader iterates the capture to the end (and, with --inspect, `fastproxy traffic
inspect`'s code too). Every error must be a TrafficFormatError whose message names the file and,
for a traffic file, the offset (meta is JSON: its errors name the key, or JSON's own position). Anything else that escapes is a finding, printed
with the case number and traceback.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
import traceback

import lz4.frame

from benchlib import load_average, machine

from fastproxy.capture.reader import TrafficReader, list_traffic_files
from fastproxy.capture.record import FILE_HEADER, FLAG_AES_CTR, FLAG_LZ4, HEADER, META_NAME
from fastproxy.errors import TrafficFormatError

OFFSET_RE = re.compile(r"offset \d+")


class Seed:
    """One capture directory, copied to a scratch directory the cases mutate and restore."""

    def __init__(self, src: str, key: bytes | None, workdir: str, max_files: int) -> None:
        self.name = os.path.basename(src)
        self.key = key
        self.dir = os.path.join(workdir, self.name)
        os.makedirs(self.dir)
        # the first files only: every case reads the whole capture, a few files keep cases fast
        self.files = list_traffic_files(src)[:max_files]
        for name in self.files + [META_NAME]:
            shutil.copyfile(os.path.join(src, name), os.path.join(self.dir, name))
        self.original = {n: open(os.path.join(self.dir, n), "rb").read() for n in self.files + [META_NAME]}

    def restore(self, touched: list[str]) -> None:
        for name in touched:
            path = os.path.join(self.dir, name)
            if name in self.original:
                with open(path, "wb") as f:
                    f.write(self.original[name])
            elif os.path.exists(path):
                os.unlink(path)


def _bit_flips(b: bytearray, rnd: random.Random, lo: int = 0) -> bytearray:
    if len(b) > lo:
        for _ in range(rnd.randint(1, 8)):
            b[rnd.randrange(lo, len(b))] ^= 1 << rnd.randrange(8)
    return b


def mutate_bytes(data: bytes, rnd: random.Random, other: bytes) -> tuple[bytes, str]:
    b = bytearray(data)
    op = rnd.randrange(7)
    if op == 0:
        return bytes(_bit_flips(b, rnd)), "bit flips"
    if op == 1:
        return bytes(b[:rnd.randrange(len(b) + 1)]), "truncated"
    if op == 2:
        return bytes(b + rnd.randbytes(rnd.randint(1, 300))), "garbage appended"
    if op == 3:
        i = rnd.randint(0, len(b))
        return bytes(b[:i] + rnd.randbytes(rnd.randint(1, 64)) + b[i:]), "garbage inserted"
    if op == 4:
        i = rnd.randint(0, len(b))
        j = min(len(b), i + rnd.randint(1, 512))
        b[i:j] = bytes(j - i)
        return bytes(b), "range zeroed"
    if op == 5:
        i = rnd.randrange(FILE_HEADER.size) if len(b) >= FILE_HEADER.size else 0
        if b:
            b[min(i, len(b) - 1)] = rnd.randrange(256)
        return bytes(b), "file header byte"
    i, j = rnd.randint(0, len(b)), rnd.randint(0, len(other))
    return bytes(b[:i] + other[j:]), "spliced with another file"


def mutate_records(data: bytes, rnd: random.Random, key: bytes | None) -> tuple[bytes, str] | None:
    """Mutate the decompressed record stream of an unencrypted file and re-encode it."""
    magic, version, flags, _ = FILE_HEADER.unpack_from(data)
    if flags & FLAG_AES_CTR:
        return None
    body = data[FILE_HEADER.size:]
    stream = bytearray(lz4.frame.decompress(body) if flags & FLAG_LZ4 else body)
    starts, pos = [], 0
    while pos + HEADER.size <= len(stream):
        starts.append(pos)
        n = int.from_bytes(stream[pos:pos + 4], "little")
        if n < HEADER.size:
            break
        pos += n
    op = rnd.randrange(4)
    if op == 0 and starts:
        s = rnd.choice(starts)
        _bit_flips(stream, rnd, s) if rnd.random() < 0.3 else None
        for _ in range(rnd.randint(1, 4)):
            i = s + rnd.randrange(min(HEADER.size, len(stream) - s))
            stream[i] ^= 1 << rnd.randrange(8)
        what = "record header bit flips"
    elif op == 1 and starts:
        s = rnd.choice(starts)
        value = rnd.choice((0, 1, HEADER.size - 1, HEADER.size, 1 << 31, 0xFFFFFFFF, rnd.randrange(1 << 32)))
        stream[s:s + 4] = value.to_bytes(4, "little")
        what = f"record length {value}"
    elif op == 2 and starts:
        s = rnd.choice(starts)
        stream = stream[:s + rnd.randrange(HEADER.size)]
        what = "record cut inside its header"
    else:
        i = rnd.choice(starts) if starts else 0
        j = rnd.choice(starts) if starts else 0
        stream = stream[:i] + stream[j:]
        what = "records spliced"
    body = lz4.frame.compress(bytes(stream)) if flags & FLAG_LZ4 else bytes(stream)
    return data[:FILE_HEADER.size] + body, what


META_VALUES = (None, -1, 0, 3, 2 ** 70, 1e308, "x", "", [], {}, True, "\udcff")


def mutate_meta(data: bytes, rnd: random.Random) -> tuple[bytes, str]:
    op = rnd.randrange(5)
    if op == 0:
        return data[:rnd.randrange(len(data) + 1)], "meta truncated"
    if op == 1:
        return bytes(_bit_flips(bytearray(data), rnd)), "meta bit flips"
    if op == 2:
        return b"\xff\xfe" + data, "meta not UTF-8"
    meta = json.loads(data)
    if op == 3 and meta:
        k = rnd.choice(sorted(meta))
        del meta[k]
        return json.dumps(meta).encode(), f"meta without {k}"
    k = rnd.choice(sorted(meta) + ["format_version"])
    meta[k] = rnd.choice(META_VALUES)
    return json.dumps(meta).encode("utf-8", "surrogatepass"), f"meta {k} = {meta[k]!r}"


def make_case(seed: Seed, seeds: list[Seed], rnd: random.Random) -> tuple[str, list[str]]:
    """Apply one mutation to `seed` on disk; return what was done and the names it touched."""
    r = rnd.random()
    if r < 0.15:
        data, what = mutate_meta(seed.original[META_NAME], rnd)
        with open(os.path.join(seed.dir, META_NAME), "wb") as f:
            f.write(data)
        return what, [META_NAME]
    name = rnd.choice(seed.files)
    path = os.path.join(seed.dir, name)
    if r < 0.2:
        if rnd.random() < 0.5:
            os.unlink(path)
            return f"{name} removed", [name]
        m = re.match(r"^(traffic-.*-)(\d+)(\..*)$", seed.files[-1])
        copy = f"{m.group(1)}{int(m.group(2)) + 1:06d}{m.group(3)}"
        shutil.copyfile(path, os.path.join(seed.dir, copy))
        return f"{name} copied as {copy}", [copy]
    res = mutate_records(seed.original[name], rnd, seed.key) if r < 0.55 else None
    if res is None:
        other = rnd.choice(list(rnd.choice(seeds).original.values()))
        res = mutate_bytes(seed.original[name], rnd, other)
    data, what = res
    with open(path, "wb") as f:
        f.write(data)
    return f"{name}: {what}", [name]


def read_all(seed: Seed, inspect: bool) -> int:
    n = sum(1 for _ in TrafficReader(seed.dir, seed.key))
    if inspect:
        from fastproxy.capture.inspect import inspect_capture
        inspect_capture(seed.dir, key=seed.key, out=io.StringIO())
    return n


def classify(msg: str, seed: Seed) -> str:
    if seed.dir not in msg:
        return "no file named"
    if f"/{META_NAME}:" in msg:  # meta is JSON: its errors name the key or JSON's own position
        return "meta named"
    return "file and offset" if OFFSET_RE.search(msg) else "file, no offset"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="/tmp/fastproxy-fuzz-corpus")
    ap.add_argument("--cases", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-files", type=int, default=6, help="traffic files kept of each seed capture")
    ap.add_argument("--inspect", action="store_true", help="also run `traffic inspect`'s code on each case")
    ap.add_argument("--replay", type=int, help="run only this case and show what happened")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    key = open(os.path.join(args.corpus, "traffic.key"), "rb").read()
    workdir = tempfile.mkdtemp(prefix="fastproxy-fuzz-reader-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    caps = os.path.join(args.corpus, "captures")
    seeds = [Seed(os.path.join(caps, d), key if d.endswith("enc") else None, workdir, args.max_files)
             for d in sorted(os.listdir(caps))]
    for s in seeds:  # the seeds themselves read cleanly
        read_all(s, args.inspect)
    counts: dict[str, int] = {"read fine": 0, "file and offset": 0, "meta named": 0, "file, no offset": 0,
                              "no file named": 0, "other exception": 0}
    samples: dict[str, list] = {}
    findings = []
    cases = [args.replay] if args.replay is not None else range(args.cases)
    t0 = time.monotonic()
    try:
        for i in cases:
            rnd = random.Random(args.seed * 1_000_003 + i)
            seed = rnd.choice(seeds)
            what, touched = make_case(seed, seeds, rnd)
            try:
                read_all(seed, args.inspect)
                kind = "read fine"
            except TrafficFormatError as e:
                kind = classify(str(e), seed)
                samples.setdefault(kind, [])
                if len(samples[kind]) < 5:
                    samples[kind].append({"case": i, "mutation": what, "error": str(e).replace(workdir, "<dir>")})
            except Exception as e:  # noqa: BLE001 - what the fuzzer looks for
                kind = "other exception"
                findings.append({"case": i, "capture": seed.name, "mutation": what,
                                 "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]})
                if len(findings) <= 20:
                    print(f"FINDING case {i} ({seed.name}, {what}): {type(e).__name__}: {e}", flush=True)
            counts[kind] += 1
            if args.replay is not None:
                print(f"case {i}: {seed.name}: {what} -> {kind}")
                if findings:
                    print(findings[-1]["traceback"])
            seed.restore(touched)
            if i and i % 50_000 == 0:
                print(f"{i} cases, {i / (time.monotonic() - t0):.0f}/s, {counts}", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    out = {"machine": machine(), "cases": len(cases), "seconds": round(time.monotonic() - t0, 1), "counts": counts,
           "samples": samples, "findings_by_error": {}, "load_avg_1m_at_end": round(load_average(), 2)}
    for f in findings:
        out["findings_by_error"].setdefault(f["error"].split(":")[0], []).append(f["case"])
    print(json.dumps({k: v for k, v in out.items()}, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({**out, "findings": findings[:200]}, fh, indent=2)
    sys.exit(1 if findings or counts["no file named"] or counts["file, no offset"] else 0)


if __name__ == "__main__":
    main()
