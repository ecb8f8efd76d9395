#!/usr/bin/env python3
"""The capture writer's user CPU per MB of records and its compression ratio, for one checkout.

    python bench/writer_compression.py [--root /path/to/checkout] [--mb 32] [--runs 7]

Fills a ring with the writer bench's sysbench-like records (bench/test_bench_capture.py), writes
them with CaptureWriter (lz4, no encryption) and prints the median user CPU per MB and the ratio
of raw to written bytes. To compare two builds (e.g. an lz4 setting), run it once per checkout,
interleaved, each with `--root` pointing at a tree whose extensions are built."""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=str(Path(__file__).resolve().parent.parent))
    ap.add_argument("--mb", type=int, default=32)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    sys.path[:0] = [args.root, f"{args.root}/bench"]
    from fastproxy._ringbuf import RingBuffer
    from fastproxy.capture.writer import CaptureWriter
    from test_bench_capture import _fill_sysbench

    cpu, ratio = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            rb = RingBuffer((args.mb + 1) << 20)
            _fill_sysbench(rb, args.mb << 20)
            nbytes = rb.used
            w = CaptureWriter(rb, f"{tmp}/{i}", compress=True, encryption_key=None, file_size=256 << 20)
            u0 = resource.getrusage(resource.RUSAGE_SELF).ru_utime
            w.start()
            meta = w.stop({})
            cpu.append((resource.getrusage(resource.RUSAGE_SELF).ru_utime - u0) / (nbytes / 2**20) * 1e3)
            ratio.append(meta["raw_bytes"] / meta["bytes_written"])
    print(f"{args.root}: user CPU {statistics.median(cpu):.2f} ms per MB (runs: "
          f"{', '.join(f'{c:.2f}' for c in sorted(cpu))}), compression ratio {statistics.median(ratio):.3f}")


if __name__ == "__main__":
    main()
