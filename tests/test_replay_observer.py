"""The verdict's per-command hook in C (fastproxy/report/_observe.pyx, CaptureObserver.__call__) counts
exactly what its Python reference (CaptureObserver.observe) counts: the same commands — successes,
failures, errors on both sides, mismatches, prepared statements known and not, nondeterministic
statements, values out of the 64-bit ranges, paced and resumed replays — through both give the same
verdict and the same timeline."""
from __future__ import annotations

import json
import os
import sys

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

sys.path.insert(0, os.path.dirname(__file__))

from fastproxy._packet import CommandResult  # noqa: E402
from fastproxy.capture.record import KIND_COMMAND, KIND_CONN_OPEN, OUTCOME_ERR, OUTCOME_OK, Record  # noqa: E402
from fastproxy.inputs.convert import convert  # noqa: E402
from fastproxy.replay.engine import Replayer, ReplayOptions  # noqa: E402
from fastproxy.report.observe import CaptureObserver, Timeline  # noqa: E402
from fastproxy.report.verdict import Verdict  # noqa: E402
from test_replay_selection import T0, ListSource  # noqa: E402

# statement ids 0-599 and 2**32-1 prepared (each its own text: a wrong id finds another), 70000 not
STATEMENTS = {i: f"SELECT c{i} FROM t WHERE id = ?" for i in range(600)} | {
    2: "SELECT NOW()", 3: "UPDATE t SET c = ? WHERE id = ?", 2**32 - 1: "SELECT 2"}
QUERIES = [b"SELECT 1", b"SELECT * FROM t ORDER BY id", b"SELECT RAND()", b"INSERT INTO t VALUES (1)",
           "SELECT 'é'".encode(), b"SELECT \xff broken utf-8"]
BIG = st.sampled_from([-(1 << 63), (1 << 63) - 1, 1 << 64, -(1 << 62) - 1, 1 << 62])


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """Two real Replayers (one per observer) over a one-connection capture."""
    cap = str(tmp_path_factory.mktemp("obs") / "cap")
    convert(ListSource([Record(KIND_CONN_OPEN, 1, T0, 0, 0, 0, 0, 0,
                               json.dumps({"user": "u", "db": "d"}).encode())]), cap)
    return [Replayer(cap, ReplayOptions(host="127.0.0.1", port=9, username="u")) for _ in range(2)]


def payloads():
    stmt = st.builds(lambda cmd, sid, tail: bytes([cmd]) + sid.to_bytes(4, "little") + tail,
                     st.sampled_from([0x17, 0x18, 0x19, 0x1a, 0x1c]), st.sampled_from([0, 1, 2, 3, 5, 258, 513, 70000, 2**32 - 1]),
                     st.binary(max_size=4))
    return st.one_of(st.sampled_from(QUERIES).map(lambda q: b"\x03" + q), stmt,
                     st.sampled_from([b"\x16SELECT 1", b"\x0e", b"\x02d", b"\x17\x01", b"\x17\x02\x01", b"\x17"]))


counts = st.integers(0, 3) | BIG
commands = st.tuples(
    payloads(), st.sampled_from([OUTCOME_OK, OUTCOME_OK, OUTCOME_ERR, 3, 4]), st.sampled_from([0, 1146, 1062]),
    st.sampled_from([OUTCOME_OK, OUTCOME_OK, OUTCOME_ERR, 2]), st.sampled_from([0, 1146, 1213]),
    counts, counts, st.integers(0, 2), st.integers(0, 2),  # rows / affected rows: capture, replay
    st.integers(-3 * 10**9, 5 * 10**9) | BIG,  # start_ns offset from T0
    st.integers(0, 3 * 10**9),  # latency
    st.integers(0, 4 * 10**9) | BIG)  # now offset from the replay's start


def without_wall_clock(state: dict) -> dict:
    for m in state["verdict"]["mismatches"]:
        m.pop("sample_replay_ns")  # when the replay's sample was taken (time.time_ns)
    return state


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(commands, max_size=12), st.sampled_from([0, 1.0]), st.none() | st.integers(0, 5),
       st.integers(0, 3), st.integers(0, 2 * 10**9) | BIG)
def test_the_c_hook_counts_what_the_reference_counts(engines, cmds, speed, at_second, second_offset, lag):
    observers = []
    lag = min(lag, (1 << 63) - 1 - 10**12)  # a Conn's times are int64 (a monotonic clock's ns)
    for engine in engines:
        engine.opt.speed = speed
        engine._start_mono = 10**12
        engine.capture_start_ns = T0
        conn = engine._conn(1)
        conn.stmt_sql = dict(STATEMENTS)
        conn.due_ns, conn.sent_ns = 10**12, 10**12 + lag
        obs = CaptureObserver(engine, Verdict(), Timeline())
        obs.at_second, obs.second_offset = at_second, second_offset
        observers.append((obs, conn))
    for (payload, ref_out, ref_err, new_out, new_err, ref_rows, ref_aff, rows, aff, start, latency, now) in cmds:
        rec = Record(KIND_COMMAND, 1, T0 + start, T0 + start + latency, ref_out, ref_err, ref_aff, ref_rows,
                     payload, 0, 7, 8, 1, 0, 2)
        raised = []
        for (obs, conn), call in zip(observers, ("c", "reference")):
            r = CommandResult(payload[0])
            r.outcome, r.err_code, r.rows, r.affected_rows = new_out, new_err, rows, aff
            r.hash_ordered, r.hash_unordered, r.columns = 7, 8 + (rows == 2), 1
            try:
                (obs if call == "c" else obs.observe)(conn, rec, r, 10**12 + now)
                raised.append(None)
            except OverflowError as e:  # a latency past the histograms' 64 bits (LatencyTable.record)
                raised.append(str(e))
        assert raised[0] == raised[1]
    (c, _), (ref, _) = observers
    assert without_wall_clock(c.state()) == without_wall_clock(ref.state())
    assert c.verdict.compared == ref.verdict.compared and c.verdict.mismatch_count == ref.verdict.mismatch_count
    assert c.timeline.as_dict() == ref.timeline.as_dict()


def test_replay_second_counts_whole_seconds_from_the_replay_start_after_a_resumed_runs(engines):
    engine = engines[0]
    obs = CaptureObserver(engine, Verdict(), Timeline())
    engine._start_mono = 0  # not started: every result is in the first second (after the stopped run's)
    obs.second_offset = 4
    assert obs.replay_second(10**12) == 4
    engine._start_mono = 10**12
    assert [obs.replay_second(10**12 + d) for d in (-1, 0, 10**9 - 1, 10**9, 25 * 10**8, 1 << 70)] == [
        4, 4, 4, 5, 6, 4 + ((1 << 70) // 10**9)]
