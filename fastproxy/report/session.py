"""The verdict of one replay run, from the engine's hook to the files: what `ReplayRun` (replay/job.py)
calls — flush() every second, finish() once the engine stopped (latency rows, EXPLAIN of the
slowest digests on the target), contents() for the files next to the summary (verdict data, HTML)."""
from __future__ import annotations

import asyncio
import json
import logging

from fastproxy.report.explain import PlanRequest, collect_plans
from fastproxy.report.files import compared_kinds, format_verdict, verdict_data, verdict_summary
from fastproxy.report.observe import CaptureObserver, Timeline
from fastproxy.report.verdict import Verdict, VerdictOptions

log = logging.getLogger("fastproxy.report")


class VerdictSession:
    """The verdict of a replay against the capture (A/B runs use ABSession, fastproxy/report/ab.py)."""

    def __init__(self, engine, options: VerdictOptions | None = None) -> None:
        self.engine = engine
        self.verdict = Verdict(options, "capture", compared_kinds(engine.reader))
        self.timeline = Timeline()
        engine.observer = CaptureObserver(engine, self.verdict, self.timeline)
        self.latency_rows: list[dict] = []
        self.data: dict | None = None
        self.html_path = ""

    def failure_report(self):
        """The Report whose failures are this verdict's new failures (the engine's: against the capture)."""
        return self.engine.report

    def extra_data(self) -> dict:
        return {}

    def add_baseline_summary(self, summary: dict) -> None:
        pass

    # ---- while the replay runs -----------------------------------------------------------------
    def flush(self, writer) -> None:
        """Every second and at the end: the new rows of every report table."""
        if writer is None:
            return
        fails, others = self.engine.report.take_delta()
        if self.failure_report() is not self.engine.report:  # A/B: failures against the baseline
            fails = self.failure_report().take_delta()[0]
            others = others + self._baseline_others()
        writer.submit((fails, others))
        writer.submit_verdict("mismatch", self.verdict.take_mismatch_delta())
        nd = [n for n in self.verdict.nondeterministic.values() if n.unflushed]
        for n in nd:
            n.unflushed = False
        writer.submit_verdict("nondeterministic", nd)

    # ---- at the end ----------------------------------------------------------------------------
    async def finish(self, writer) -> None:
        """Latency rows and plans; the last rows of the verdict tables. Never raises (the replay's
        summary must still be written)."""
        try:
            # the input is all read: every order is known; else what it did not read leaves some unknown
            self.verdict.settle(force=True, unread_unknown=getattr(self.engine, "read_stopped_early", False))
            self.latency_rows = self.verdict.latency_rows()
            await self._explain()
        except Exception as e:  # noqa: BLE001
            log.exception("replay verdict: latency or plans failed")
            self._error = f"{type(e).__name__}: {e}"
        self.flush(writer)
        if writer is not None:
            writer.submit_verdict("latency", self.latency_rows)

    _error = ""

    async def _explain(self) -> None:
        opt = self.engine.opt
        reqs = [PlanRequest((i.cmd_type, i.digest), i.db, i.sample_stmt, i.sample_values)
                for i in self.verdict.explain_candidates(self.latency_rows)]
        if not reqs:
            return
        plans = await asyncio.get_running_loop().run_in_executor(None, collect_plans, opt, reqs)
        for r in self.latency_rows:
            r["plan"] = plans.get((r["cmd_type"], r["digest"]), "")

    def _baseline_others(self) -> list:
        return []

    def _data(self, summary: dict) -> dict:
        if self.data is None:
            extra = self.extra_data()
            if self._error:
                extra["error"] = self._error
            self.data = verdict_data(self.verdict, self.latency_rows, self.timeline.as_dict(), extra)
        return self.data

    def failures(self) -> list[dict]:
        return [{"cmd_type": f.cmd_type, "digest": f.digest, "count": f.count, "sample_stmt": f.sample_stmt,
                 "sample_err_msg": f.sample_err_msg, "sample_conn_id": f.sample_conn_id,
                 "sample_capture_time_ns": f.sample_capture_ns, "sample_replay_time_ns": f.sample_replay_ns}
                for f in self.failure_report().failures.values()]

    def other_errors(self) -> list[dict]:
        return [{"err_type": e.err_type, "count": e.count, "sample_err_msg": e.sample_err_msg,
                 "sample_replay_time_ns": e.sample_replay_ns} for e in self.engine.report.other_errors.values()]

    def contents(self, base: str, summary: dict) -> dict:
        """The verdict's files, {suffix: () -> text} for ReplayRun._write_files (which writes them privately,
        before the summary): `-verdict.jsonl` and, if it renders, `.html`. Adds the verdict and the page's
        path (`base` + ".html") to `summary`."""
        data = self._data(summary)
        self.add_baseline_summary(summary)
        summary["verdict"] = verdict_summary(data, summary, self.failures())
        files = {"-verdict.jsonl": lambda: json.dumps(data) + "\n"}
        try:
            from fastproxy.report.html import render_report

            page = render_report(summary, data, self.failures(), self.other_errors())
        except Exception as e:  # noqa: BLE001 - the page must never cost the replay its summary
            log.exception("cannot render the replay's HTML report")
            summary["report_html_error"] = f"{type(e).__name__}: {e}"
            return files
        files[".html"] = lambda: page
        self.html_path = summary["report_html"] = base + ".html"
        return files

    def not_written(self, suffix: str, summary: dict, err: OSError) -> None:
        """One of the files could not be written (the caller says why in summary_files_error)."""
        if suffix == ".html":
            summary.pop("report_html", None)
            summary["report_html_error"] = f"cannot write the page: {err.strerror}"
            self.html_path = ""

    def text(self, summary: dict) -> str:
        return format_verdict(summary, self._data(summary), self.failures(), self.html_path)
