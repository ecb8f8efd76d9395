"""Replay connections behave like the captured clients: multi-statements and collation are mirrored."""
import pymysql
from pymysql.constants import CLIENT

from conftest import connect_kwargs
from fastproxy.capture.record import KIND_CONN_OPEN
from replay_util import Capture, records, replay_inprocess


def test_multi_statements_and_charset_follow_the_captured_client(proxy, mariadb, tmp_path):
    out = str(tmp_path / "cap")
    with Capture(proxy, out):
        plain = pymysql.connect(**connect_kwargs(proxy.port), charset="latin1")
        multi = pymysql.connect(**connect_kwargs(proxy.port), client_flag=CLIENT.MULTI_STATEMENTS)
        with plain.cursor() as cur:
            try:
                cur.execute("SELECT 1; SELECT 2")  # no multi-statements: a syntax error in production
                raise AssertionError("expected a syntax error")
            except pymysql.err.ProgrammingError as e:
                assert e.args[0] == 1064
            # succeeds only with a latin1 client: fails on replay unless the collation is mirrored
            cur.execute("SELECT IF(@@character_set_client = 'latin1', 1, (SELECT 1 UNION SELECT 2))")
            assert cur.fetchone()[0] == 1
        with multi.cursor() as cur:
            cur.execute("SELECT 1; SELECT 2")
            assert cur.nextset()
        plain.close()
        multi.close()
    opened = [r for r in records(out) if r.kind == KIND_CONN_OPEN]
    assert len(opened) == 2
    summary, _ = replay_inprocess(mariadb.host, mariadb.port, out, speed=0)
    # the same syntax error on replay is not a failure; the multi-statement succeeds again
    assert summary["commands_failed"] == 0 and summary["commands_fixed"] == 0, summary
    assert summary["commands_failed_same_as_capture"] == 1, summary
