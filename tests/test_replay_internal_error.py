"""A defect of the replayer itself (a callback that raises) stops the replay with an error that says
so, in the job and the summary, instead of leaving its connection busy and the replay stalled."""
from __future__ import annotations

import pymysql
import pytest
import uvloop

from conftest import connect_kwargs
from fastproxy.replay.engine import ReplayOptions
from fastproxy.replay.job import ReplayRun
from fastproxy.scratch_db import ROOT_PASSWORD
from replay_util import Capture


def test_a_raising_result_callback_stops_the_replay_saying_why(mariadb, mariadb_test, proxy, tmp_path):
    for db in (mariadb, mariadb_test):
        db.sql("DROP DATABASE IF EXISTS rie; CREATE DATABASE rie")
    out = str(tmp_path / "cap")
    with Capture(proxy, out):
        c = pymysql.connect(**connect_kwargs(proxy.port, database="rie"), autocommit=True)
        for i in range(200):
            c.cursor().execute(f"SELECT {i}")
        c.close()

    opts = ReplayOptions(host=mariadb_test.host, port=mariadb_test.port, username="root", password=ROOT_PASSWORD,
                         speed=0)
    run = ReplayRun(out, opts, str(tmp_path / "report"), write_tables=False)
    seen = []

    def broken_observer(conn, rec, result, now):
        seen.append(rec)
        if len(seen) == 50:
            raise TypeError("a defect in the verdict")

    run.engine.observer = broken_observer
    with pytest.raises(RuntimeError, match="internal error: TypeError: a defect in the verdict"):
        uvloop.run(run.run())
    assert len(seen) == 50  # stopped there, not carried on (nor stalled: the call returned)
    assert run.summary is not None and run.summary["other_error_types"].get("internal error") == 1, run.summary
