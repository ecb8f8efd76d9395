"""A statement prepared and bound before the capture: its later executes carry no parameter types,
yet replay (which must re-prepare it) gets the types from the capture and runs them."""
import struct

from capture_rawclient import ps_client
from fastproxy.capture.record import KIND_CONN_STATE
from fastproxy.scratch_db import ROOT_PASSWORD
from proxy_rawclient import packet
from replay_util import Capture, records, replay_inprocess


def _execute(ps, stmt_id: int, value: int, with_types: bool):
    payload = b"\x17" + struct.pack("<IBI", stmt_id, 0, 1) + b"\x00"
    payload += (b"\x01\x08\x00" if with_types else b"\x00") + struct.pack("<q", value)
    ps.send(packet(0, payload))
    return ps._result()


def test_executes_of_a_statement_bound_before_the_capture(proxy, mariadb, mariadb_test, tmp_path):
    for db in (mariadb, mariadb_test):
        db.sql("CREATE DATABASE IF NOT EXISTS openstmt; CREATE OR REPLACE TABLE openstmt.t (v BIGINT)")
    ps = ps_client(proxy.port, "root", ROOT_PASSWORD)
    assert ps.init_db("openstmt").kind == "ok"
    sid = ps.prepare("INSERT INTO t VALUES (?)")
    assert _execute(ps, sid, 1, with_types=True).kind == "ok"  # types bound before the capture
    out = str(tmp_path / "cap")
    with Capture(proxy, out):
        for v in (10, 20, 30):
            assert _execute(ps, sid, v, with_types=False).kind == "ok"
    ps.quit()
    state = [r for r in records(out) if r.kind == KIND_CONN_STATE]
    assert len(state) == 1 and b'"types"' in state[0].payload

    summary, _ = replay_inprocess(mariadb_test.host, mariadb_test.port, out, speed=0)
    assert summary["commands_failed"] == summary["commands_skipped"] == summary["other_errors"] == 0, summary
    assert mariadb_test.sql("SELECT GROUP_CONCAT(v ORDER BY v) FROM openstmt.t").strip() == "10,20,30"
