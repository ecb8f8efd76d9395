"""The secret classifier on the capture's path (it runs on the proxy's event loop, once per COM_QUERY /
COM_STMT_PREPARE). Run: python -m pytest bench/test_bench_sqlscan.py -q --benchmark-only

- a 70 MiB INSERT of a BLOB, as mysqlclient escapes it (backslashes: a second reading, without
  backslash escapes, is scanned too), and as a hex literal (one reading);
- 70 MiB of prose with escaped quotes: the worst case, where the second reading sees words;
- short statements: the per-command cost (ns in extra_info), beside the old regex filter.

GB/s (input bytes / median) is in extra_info.
"""
import os
import re

import MySQLdb
import pytest

from fastproxy.secret_sql import CLEAN, classify

BLOB = os.urandom(70 << 20)
SHORT = [b"\x03SELECT c FROM sbtest1 WHERE id=4711", b"\x03UPDATE sbtest1 SET k=k+1 WHERE id=17",
         b"\x03INSERT INTO sbtest1 (id, k, c, pad) VALUES (0, 5, '83868641912-28773972837', '67847967377-48000963322')",
         b"\x03SELECT 'it\\'s' FROM t"]
# what the capture filtered with before (issue 7: bypassable, and blind after 64 KiB)
_OLD_RE = re.compile(
    rb"\b(?:identified\b|set\s+password\b|password\s*\("
    rb"|(?:create|alter|rename)\s+(?:or\s+replace\s+)?(?:user|role|server)\b"
    rb"|change\s+(?:master|replication\s+source)\b|master_password|source_password)", re.I)


def _big(kind: str) -> bytes:
    if kind == "escaped-blob":
        return b"\x03INSERT INTO t (id, b) VALUES (1, '" + MySQLdb._mysql.escape_string(BLOB) + b"')"
    if kind == "hex-blob":
        return b"\x03INSERT INTO t (id, b) VALUES (1, X'" + BLOB[:35 << 20].hex().encode() + b"')"
    line = b"Lorem ipsum dolor sit amet, it\\'s consectetur adipiscing elit; sed do eiusmod. "
    return b"\x03INSERT INTO t (id, doc) VALUES (1, '" + line * ((70 << 20) // len(line)) + b"')"


@pytest.mark.parametrize("kind", ["escaped-blob", "hex-blob", "prose"])
def test_classify_70mib_insert(benchmark, kind):
    sql = _big(kind)
    verdict, _ = benchmark.pedantic(classify, (sql, 1), rounds=5, iterations=1)
    assert verdict == CLEAN
    benchmark.extra_info["bytes"] = len(sql)
    benchmark.extra_info["GB_per_s"] = round(len(sql) / benchmark.stats.stats.median / 1e9, 2)


def test_classify_short_statements(benchmark):
    def run():
        for _ in range(2500):
            for sql in SHORT:
                classify(sql, 1)

    benchmark(run)
    benchmark.extra_info["ns_per_statement"] = round(benchmark.stats.stats.median / 10_000 * 1e9)


def test_old_regex_short_statements_baseline(benchmark):
    def run():
        for _ in range(2500):
            for sql in SHORT:
                _OLD_RE.search(sql, 0, 64 * 1024)

    benchmark(run)
    benchmark.extra_info["ns_per_statement"] = round(benchmark.stats.stats.median / 10_000 * 1e9)
