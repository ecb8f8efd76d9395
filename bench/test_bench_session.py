"""Per-command cost of the session bookkeeping's first test: which COM_QUERY payloads may change the
session (USE, PREPARE, temporary tables), decided without copying them. The data plane runs the C
twin of this test in every worker (measured with everything else by test_bench_dataplane.py);
`sqltext.worth_scanning` is the Python one, which `Session.apply_query` runs again on what the C
test let through."""
import pytest

from fastproxy.sqltext import worth_scanning

STATEMENTS = [
    b"\x03SELECT c FROM sbtest1 WHERE id = 4242",
    b"\x03UPDATE sbtest1 SET k = k + 1 WHERE id = 4242",
    b"\x03DELETE FROM sbtest1 WHERE id = 4242",
    b"\x03INSERT INTO sbtest1 (id, k, c, pad) VALUES (4242, 1, 'x', 'y')",
    b"\x03COMMIT",
    b"\x03/* app:orders */ SELECT * FROM orders WHERE id = 7",  # a leading comment takes the regex path
]


@pytest.mark.parametrize("multi", [False, True], ids=["single", "multi-statements"])
def test_worth_scanning_common_queries(benchmark, multi):
    payloads = [memoryview(p) for p in STATEMENTS]

    def run():
        for p in payloads:
            worth_scanning(p, multi)

    benchmark(run)
    assert not any(worth_scanning(p, multi) for p in payloads)


def test_worth_scanning_large_insert(benchmark):
    """A 1 MiB INSERT on a multi-statements connection: one search for ';' over it, no copy."""
    payload = memoryview(b"\x03INSERT INTO t VALUES " + b"(1, 'abcdefgh'), " * 60_000 + b"(2, 'x')")
    assert not worth_scanning(payload, True)
    benchmark(worth_scanning, payload, True)
