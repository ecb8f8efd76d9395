"""The checkpoint's on_read in C (fastproxy/replay/_checkpoint.pyx) keeps the same position as its Python
reference (Checkpoint.on_read_resuming, which a resumed replay goes through up to its position): the
same records, read through each by a real Replayer's checkpoint, give the same seqs and the same
records pending per connection."""
from __future__ import annotations

import asyncio
import json
import os
import sys

from hypothesis import HealthCheck, given, settings, strategies as st

sys.path.insert(0, os.path.dirname(__file__))

from fastproxy.capture.record import (KIND_COMMAND, KIND_CONN_CLOSE, KIND_CONN_OPEN, KIND_CONN_STATE,  # noqa: E402
                                      KIND_LOCAL_INFILE, Record)
from fastproxy.inputs.convert import convert  # noqa: E402
from fastproxy.replay.checkpoint import Checkpoint, identity  # noqa: E402
from fastproxy.replay.engine import Replayer, ReplayOptions  # noqa: E402
from test_replay_selection import T0, ListSource  # noqa: E402


def checkpoint(tmp_path, name: str) -> Checkpoint:
    cap = str(tmp_path / f"cap-{name}")
    convert(ListSource([Record(KIND_CONN_OPEN, 1, T0, 0, 0, 0, 0, 0,
                               json.dumps({"user": "u", "db": "d"}).encode())]), cap)
    engine = Replayer(cap, ReplayOptions(host="127.0.0.1", port=9, username="u"))
    cp = Checkpoint(str(tmp_path / f"report-{name}"), "report-dir", "replay.checkpoint", identity([cap], engine), False)
    cp.attach(engine)
    asyncio.run(cp.begin(0))
    return cp


records = st.lists(st.tuples(st.sampled_from([KIND_COMMAND, KIND_COMMAND, KIND_CONN_CLOSE, KIND_CONN_OPEN,
                                               KIND_CONN_STATE, KIND_LOCAL_INFILE, 9]), st.integers(1, 4)),
                   max_size=30)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records)
def test_on_read_keeps_the_position_its_reference_keeps(tmp_path_factory, recs):
    tmp = tmp_path_factory.mktemp("hooks")
    c, ref = checkpoint(tmp, "c"), checkpoint(tmp, "ref")
    try:
        for i, (kind, conn_id) in enumerate(recs):
            rec = Record(kind, conn_id, T0 + i, T0 + i + 1, 0, 0, 0, 0, b"\x03SELECT 1" if kind == KIND_COMMAND else b"")
            assert c.on_read(rec) == ref.on_read_resuming(rec)
        assert c.seq == ref.seq == len(recs)
        assert {k: list(t.pending) for k, t in c.tracks.items()} == {k: list(t.pending) for k, t in ref.tracks.items()}
    finally:
        c.finish(False)
        ref.finish(False)


def test_a_held_result_keeps_what_it_was_when_it_arrived(tmp_path):
    """Inside a transaction a result is counted later: a copy of the result, and of the connection's
    state for its own statement, as they were when it arrived."""
    from fastproxy._packet import CommandResult
    from fastproxy.replay._checkpoint import HeldConn, result_copy

    cp = checkpoint(tmp_path, "held")
    try:
        conn = cp.engine._conn(1)
        conn.stmt_sql.update({7: "SELECT ?", 8: "SELECT 2"})
        conn.stmt_params.update({7: 1, 8: 0})
        conn.stmt_types[7] = b"\x03\x00"
        conn.not_rebuilt.append("sql_mode")
        conn.sent_ns, conn.due_ns, conn.db = 5, 4, "d"
        held = HeldConn(conn, Record(KIND_COMMAND, 1, T0, T0 + 1, 0, 0, 0, 0, b"\x17\x07\x00\x00\x00\x00"))
        conn.not_rebuilt.clear()
        conn.stmt_sql[7] = "changed"
        conn.sent_ns = 6
        assert (held.conn_id, held.not_rebuilt, held.sent_ns, held.due_ns, held.db) == (1, ["sql_mode"], 5, 4, "d")
        assert (held.stmt_sql, held.stmt_params, held.stmt_types) == ({7: "SELECT ?"}, {7: 1}, {7: b"\x03\x00"})
        plain = HeldConn(conn, Record(KIND_COMMAND, 1, T0, T0 + 1, 0, 0, 0, 0, b"\x03SELECT 1"))
        assert (plain.stmt_sql, plain.stmt_params, plain.stmt_types) == ({}, {}, {})

        r = CommandResult(0x17)
        (r.outcome, r.err_code, r.sql_state, r.err_msg, r.rows, r.columns, r.hash_ordered, r.hash_unordered,
         r.affected_rows, r.warnings, r.stmt_id) = 1, 1213, "40001", "Deadlock", 3, 2, 1 << 63, 9, -1, 4, 77
        c = result_copy(r)
        r.outcome, r.err_msg = 0, ""
        assert (c.cmd, c.outcome, c.err_code, c.sql_state, c.err_msg, c.rows, c.columns, c.hash_ordered,
                c.hash_unordered, c.affected_rows, c.warnings) == (0x17, 1, 1213, "40001", "Deadlock", 3, 2, 1 << 63,
                                                                   9, -1, 4)
    finally:
        cp.finish(False)
