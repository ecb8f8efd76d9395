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
