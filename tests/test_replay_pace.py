"""Replay keeps the captured pace: a workload with a known rate profile (~100 commands/s for 4 s, then
~400/s for 4 s, over 4 connections with think time) is captured; replayed at speed 1 its per-second
command counts match the capture's own per-second counts (mean over the steady seconds of each phase,
within 5%); at speed 2 it takes about half the captured span; at speed 0 it replays everything.

This is the one replay test that checks rates: pacing is the feature under test."""
from __future__ import annotations

import math
from collections import Counter

import pytest

from conftest import start_proxy, stop_proxy
from replay_util import Capture, commands, paced_workload, read_meta, replay_inprocess

# paced: the rates it checks need the CPU the replayer asks for; scripts/test.sh runs it on its own,
# not beside the other tests' process
pytestmark = [pytest.mark.timeout(180), pytest.mark.paced]

PHASES = [(4.0, 100.0), (4.0, 400.0)]  # (seconds, commands/s over all connections)
CONNS = 4


@pytest.fixture(scope="module")
def paced_capture(mariadb, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("pace") / "capture")
    proxy = start_proxy([mariadb])
    try:
        with Capture(proxy, out):
            t0, t_end, sent = paced_workload(proxy.port, PHASES, CONNS)
    finally:
        stop_proxy(proxy)
    return out, t0, sent


def _steady_seconds(cap_start_ns: int, t0_ns: int) -> list[list[int]]:
    """For each phase, the capture-relative seconds that lie wholly inside it."""
    out, begin = [], (t0_ns - cap_start_ns) / 1e9
    for seconds, _ in PHASES:
        first, last = math.ceil(begin), math.floor(begin + seconds) - 1
        out.append(list(range(first, last + 1)))
        begin += seconds
    return out


def test_replay_speed_1_keeps_per_second_rates(paced_capture, mariadb_test):
    out, t0, sent = paced_capture
    meta = read_meta(out)
    cmds = commands(out)
    assert len(cmds) >= sum(sent)
    captured = Counter((r.start_ns - meta["start_ns"]) // 1_000_000_000 for r in cmds)

    summary, engine = replay_inprocess(mariadb_test.host, mariadb_test.port, out, speed=1)
    assert summary["commands_failed"] == 0 and summary["other_errors"] == 0, summary
    assert summary["commands_replayed"] == len(cmds), summary
    replayed = engine.stats.per_second

    figures = []
    for (seconds, rate), secs in zip(PHASES, _steady_seconds(meta["start_ns"], t0)):
        assert len(secs) >= 2, secs
        cap = sum(captured[s] for s in secs) / len(secs)
        rep = sum(replayed.get(s, 0) for s in secs) / len(secs)
        figures.append((rate, secs, [captured[s] for s in secs], [replayed.get(s, 0) for s in secs], cap, rep))
        # the workload did what it meant to (loosely), and replay matched the capture (tightly)
        assert abs(cap - rate) <= 0.1 * rate, figures
        assert abs(rep - cap) <= 0.05 * cap, figures
    print("pace figures (target rate, seconds, captured/s, replayed/s, captured mean, replayed mean):")
    for f in figures:
        print("  ", f)
    print("lag", summary["lag"])


def test_replay_speed_2_takes_half_the_span(paced_capture, mariadb_test):
    out, _, _ = paced_capture
    meta = read_meta(out)
    cmds = commands(out)
    span = (max(r.start_ns for r in cmds) - meta["start_ns"]) / 1e9  # what replay has to cover
    summary, _ = replay_inprocess(mariadb_test.host, mariadb_test.port, out, speed=2)
    assert summary["commands_replayed"] == len(cmds) and summary["commands_failed"] == 0, summary
    ratio = summary["elapsed_seconds"] / span
    print(f"speed 2: captured span {span:.2f}s, replay took {summary['elapsed_seconds']}s, ratio {ratio:.3f}")
    assert 0.4 <= ratio <= 0.65, (span, summary["elapsed_seconds"])


def test_replay_speed_0_replays_everything_fast(paced_capture, mariadb_test):
    out, _, _ = paced_capture
    meta = read_meta(out)
    cmds = commands(out)
    span = (max(r.start_ns for r in cmds) - meta["start_ns"]) / 1e9
    summary, _ = replay_inprocess(mariadb_test.host, mariadb_test.port, out, speed=0)
    assert summary["commands_replayed"] == len(cmds), summary
    assert summary["commands_failed"] == 0 and summary["commands_skipped"] == 0, summary
    print(f"speed 0: {len(cmds)} commands in {summary['elapsed_seconds']}s (captured span {span:.2f}s)")
    assert summary["elapsed_seconds"] < span / 2, summary  # not paced
