"""A/B replay: the same capture replayed at the same time against a target and a baseline (restored
from the same backup: the old version and the new), compared with each other rather than with
production — the fair comparison when the test hardware is not production's.

No fork of the engine: two ordinary `Replayer`s (each with its own reader, connections and clock,
started together so both follow the captured schedule), each with an `ABObserver` as its hook. The
`Pairer` matches their results per captured command (connection id, captured start time) in a
bounded window: the first side to finish a command waits there for the other; past `window`
waiting commands the oldest is dropped and counted as unpaired (as are the ones left at the end,
e.g. when one side could not connect). Each pair goes through the same Verdict as a capture
comparison, with the baseline as the reference: errors only on the target are its new failures
(table `fail`), results and latency are compared between the two.
"""
from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

from fastproxy.capture.record import OUTCOME_ERR, OUTCOME_OK, Record
from fastproxy.replay.report import Report
from fastproxy.report.explain import PlanRequest, collect_plans
from fastproxy.report.observe import (Timeline, cmd_type_name, execute_params, is_failure, replay_side, sample,
                                      statement_text)
from fastproxy.report.session import VerdictSession
from fastproxy.report.verdict import Verdict, VerdictOptions

TARGET, BASELINE = 0, 1
DEFAULT_WINDOW = 100_000
_PREPARE = 0x16


class Pairer:
    def __init__(self, verdict: Verdict, failures: Report, timelines: tuple[Timeline, Timeline],
                 window: int = DEFAULT_WINDOW) -> None:
        self.verdict = verdict
        self.failures = failures  # errors on the target where the baseline succeeded (or failed otherwise)
        self.timelines = timelines
        self.window = window
        self.pending: OrderedDict = OrderedDict()  # (conn_id, start_ns) -> (side, Side, conn, rec, replay_sec)
        self.paired = 0
        self.unpaired = 0       # dropped from the window, or left waiting at the end
        self.fixed = 0          # failed on the baseline, succeeded on the target
        self.same_errors = 0    # failed the same way on both

    def observe(self, side: int, conn, rec: Record, result, now: int, replay_sec: int) -> None:
        key = (rec.conn_id, rec.start_ns)
        mine = replay_side(result, now - conn.sent_ns, time.time_ns())
        other = self.pending.pop(key, None)
        if other is None:
            self.pending[key] = (side, mine, conn, rec, replay_sec)
            if len(self.pending) > self.window:
                self.pending.popitem(last=False)
                self.unpaired += 1
            return
        self.paired += 1
        if side == TARGET:
            target, tconn, tsec, base = mine, conn, replay_sec, other[1]
        else:
            target, tconn, tsec, base = other[1], other[2], other[4], mine
        self._compare(tconn, rec, base, target, tsec)

    def _compare(self, conn, rec: Record, base, target, replay_sec: int) -> None:
        cmd = rec.payload[0]
        tl = self.timelines[TARGET]
        if is_failure(base, target):
            sql, recurs = statement_text(conn, rec)
            info = self.verdict.info(cmd, cmd_type_name(cmd), sql, recurs)
            stmt = info.sample_stmt
            if cmd == 0x17:
                stmt += " params=" + execute_params(conn, rec)[1]
            base_note = (f"; baseline: {base.err_code} {base.err_msg}" if base.outcome == OUTCOME_ERR else "")
            self.failures.add_failure(info.cmd_type, info.digest, stmt,
                                      f"{target.err_code}: {target.err_msg}{base_note}", target.err_code,
                                      rec.conn_id, rec.start_ns, target.wall_ns)
            tl.count(tl.failures, replay_sec)
            return
        if base.outcome == OUTCOME_ERR:
            if target.outcome == OUTCOME_ERR:
                self.same_errors += 1
            elif target.outcome == OUTCOME_OK:
                self.fixed += 1
            return
        if base.outcome != OUTCOME_OK or target.outcome != OUTCOME_OK or cmd == _PREPARE:
            return
        sql, recurs = statement_text(conn, rec)
        info = self.verdict.info(cmd, cmd_type_name(cmd), sql, recurs)
        if not info.sampled:
            sample(info, conn, rec)
        if self.verdict.add(info, base, target, lambda: execute_params(conn, rec)[1]):
            tl.count(tl.mismatches, replay_sec)

    def finish(self) -> None:
        self.unpaired += len(self.pending)
        self.pending.clear()


class ABObserver:
    """One engine's hook: its results go to the pairer, its pace to its own timeline."""

    def __init__(self, engine, side: int, pairer: Pairer, timeline: Timeline) -> None:
        self.engine = engine
        self.side = side
        self.pairer = pairer
        self.timeline = timeline

    def __call__(self, conn, rec: Record, result, now: int) -> None:
        e = self.engine
        replay_sec = max(0, now - e._start_mono) // 1_000_000_000
        self.timeline.add((rec.start_ns - e.capture_start_ns) // 1_000_000_000, replay_sec,
                          conn.sent_ns - conn.due_ns if e.opt.speed > 0 else None)
        self.pairer.observe(self.side, conn, rec, result, now, replay_sec)


class ABSession(VerdictSession):
    """The verdict of an A/B run: `engine` is the target (the new version), `baseline` the old one."""

    def __init__(self, engine, baseline, options: VerdictOptions | None = None, window: int = DEFAULT_WINDOW) -> None:
        self.engine = engine
        self.baseline = baseline
        self.verdict = Verdict(options, f"baseline {baseline.opt.host}:{baseline.opt.port}")  # compares everything
        self.timeline = Timeline()
        self.baseline_timeline = Timeline()
        self.ab_failures = Report()
        self.pairer = Pairer(self.verdict, self.ab_failures, (self.timeline, self.baseline_timeline), window)
        engine.observer = ABObserver(engine, TARGET, self.pairer, self.timeline)
        baseline.observer = ABObserver(baseline, BASELINE, self.pairer, self.baseline_timeline)
        self.latency_rows = []
        self.data = None
        self.html_path = ""

    def failure_report(self) -> Report:
        return self.ab_failures

    async def finish(self, writer) -> None:
        self.pairer.finish()
        await super().finish(writer)

    async def _explain(self) -> None:
        reqs = [PlanRequest((i.cmd_type, i.digest), i.db, i.sample_stmt, i.sample_values)
                for i in self.verdict.explain_candidates(self.latency_rows)]
        if not reqs:
            return
        loop = asyncio.get_running_loop()
        plans, base_plans = await asyncio.gather(
            loop.run_in_executor(None, collect_plans, self.engine.opt, reqs),
            loop.run_in_executor(None, collect_plans, self.baseline.opt, reqs))
        for r in self.latency_rows:
            key = (r["cmd_type"], r["digest"])
            r["plan"] = plans.get(key, "")
            r["baseline_plan"] = base_plans.get(key, "")

    def other_errors(self) -> list[dict]:
        out = super().other_errors()
        out += [{"err_type": f"baseline: {e.err_type}", "count": e.count, "sample_err_msg": e.sample_err_msg,
                 "sample_replay_time_ns": e.sample_replay_ns} for e in self.baseline.report.other_errors.values()]
        return out

    def _baseline_others(self) -> list:
        """The baseline's other errors since the last flush, as rows of the target's other_errors table."""
        others = self.baseline.report.take_delta()[1]
        for e in others:
            e.err_type = f"baseline: {e.err_type}"
        return others

    def extra_data(self) -> dict:
        return {"ab": {"paired": self.pairer.paired, "unpaired": self.pairer.unpaired, "window": self.pairer.window,
                       "fixed_on_target": self.pairer.fixed, "failed_the_same_on_both": self.pairer.same_errors},
                "baseline_timeline": self.baseline_timeline.as_dict()}

    def add_baseline_summary(self, summary: dict) -> None:
        b = self.baseline.summary()
        summary["baseline"] = {k: b[k] for k in ("target", "commands_replayed", "commands_failed", "commands_skipped",
                                                 "other_errors", "qps_replayed", "avg_latency_replayed_ms", "lag")}
        summary["commands_failed_vs_baseline"] = sum(f.count for f in self.ab_failures.failures.values())
