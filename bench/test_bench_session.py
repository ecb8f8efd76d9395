"""Per-command cost of the proxy's session bookkeeping: which COM_QUERY payloads it keeps to learn
what they do to the session (USE, PREPARE, temporary tables), decided without copying them."""
import pytest

from fastproxy.proxy.session import Session

STATEMENTS = [
    b"\x03SELECT c FROM sbtest1 WHERE id = 4242",
    b"\x03UPDATE sbtest1 SET k = k + 1 WHERE id = 4242",
    b"\x03DELETE FROM sbtest1 WHERE id = 4242",
    b"\x03INSERT INTO sbtest1 (id, k, c, pad) VALUES (4242, 1, 'x', 'y')",
    b"\x03COMMIT",
    b"\x03/* app:orders */ SELECT * FROM orders WHERE id = 7",  # a leading comment takes the regex path
]


@pytest.mark.parametrize("multi", [False, True], ids=["single", "multi-statements"])
def test_needs_payload_common_queries(benchmark, multi):
    session = Session(1, "127.0.0.1:1")
    session.multi_statements = multi
    payloads = [memoryview(p) for p in STATEMENTS]

    def run():
        for p in payloads:
            session.needs_payload(3, p)

    benchmark(run)
    assert not any(session.needs_payload(3, p) for p in payloads)


def test_needs_payload_large_insert(benchmark):
    """A 1 MiB INSERT on a multi-statements connection: one search for ';' over it, no copy."""
    session = Session(1, "127.0.0.1:1")
    session.multi_statements = True
    payload = memoryview(b"\x03INSERT INTO t VALUES " + b"(1, 'abcdefgh'), " * 60_000 + b"(2, 'x')")
    assert not session.needs_payload(3, payload)
    benchmark(session.needs_payload, 3, payload)
