"""A replay run: engine + report writer + summary files; as an API job or from the standalone CLI."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import time
from typing import TYPE_CHECKING

from fastproxy.config import parse_addr
from fastproxy.errors import ConfigError, JobError, TrafficFormatError
from fastproxy.jobs_base import Job, parse_bool
from fastproxy.private_files import check_output_path, create_private_file, open_private_dir
from fastproxy.storage import is_s3
from fastproxy.replay.checkpoint import Checkpoint, checkpoint_name, identity
from fastproxy.replay.engine import Replayer, ReplayOptions
from fastproxy.replay.report import ReportWriter
from fastproxy.report.ab import ABSession
from fastproxy.report.session import VerdictSession
from fastproxy.report.verdict import VerdictOptions, verdict_options_from

if TYPE_CHECKING:
    from fastproxy.proxy.server import ProxyServer

log = logging.getLogger("fastproxy.replay")
ORDERS = ("causal", "connection")  # see fastproxy/replay/causal.py


class ReplayRun:
    """Engine, report writer and the summary files of one replay."""

    def __init__(self, input_dir: str | list[str], options: ReplayOptions, report_dir: str | None = None,
                 write_tables: bool = True, verdict_options: VerdictOptions | None = None,
                 baseline: tuple[str, int] | None = None, resume: bool = False) -> None:
        if report_dir is not None:
            report_dir = check_output_path(report_dir, "report-dir")
        inputs = [input_dir] if isinstance(input_dir, str) else list(input_dir)
        seen: dict[str, str] = {}
        for path in inputs:
            if not is_s3(path) and not os.path.exists(path):
                raise JobError(f"input: {path}: no such file or directory")
            # the same location twice would replay each of its commands twice
            where = path.rstrip("/") if is_s3(path) else os.path.realpath(path)
            if where in seen:
                raise ConfigError(f"input: {path} and {seen[where]} are the same location: give each capture once")
            seen[where] = path
        if not report_dir and is_s3(inputs[0]):
            raise ConfigError("report-dir: required when the input is on S3 (the summary files are written locally)")
        if options.dry_run and baseline is not None:
            raise ConfigError("dry-run: cannot be combined with baseline (a dry run sends nothing to compare)")
        try:
            self.engine = Replayer(input_dir, options)
        except TrafficFormatError as e:
            raise JobError(f"input: {e}") from None
        self.options = options
        first = inputs[0]
        self.report_dir = report_dir or os.path.abspath(first if os.path.isdir(first) else os.path.dirname(first) or ".")
        self._report_field = "report-dir" if report_dir else "report-dir (by default the input's directory)"
        _check_report_dir(self.report_dir, self._report_field)  # refused now, not after the replay ran
        self.writer: ReportWriter | None = None
        self.write_tables = write_tables and not options.dry_run  # a dry run touches no server
        self.summary: dict | None = None
        self.files: list[str] = []
        # the verdict: results and latency compared with the capture, EXPLAIN, the HTML page; or, with a
        # baseline, a second engine replaying the same capture at the same time, compared with the first
        self.baseline_engine: Replayer | None = None
        if options.dry_run:
            from fastproxy.replay.dryrun import NoVerdict

            self.verdict = NoVerdict()
        elif baseline is not None:
            self.baseline_engine = Replayer(input_dir, dataclasses.replace(options, host=baseline[0],
                                                                           port=baseline[1]))
            self.verdict = ABSession(self.engine, self.baseline_engine, verdict_options)
        else:
            self.verdict = VerdictSession(self.engine, verdict_options)
        self.report_html = ""
        # checkpoints every second, next to the summary files (fastproxy/replay/checkpoint.py)
        self.checkpoint: Checkpoint | None = None
        if baseline is not None or options.dry_run:  # a dry run sends nothing: nothing to resume
            if resume:
                raise ConfigError("resume: an A/B replay (baseline) cannot be resumed" if baseline is not None
                                  else "resume: a dry run has nothing to resume (it sends nothing)")
        else:
            self.checkpoint = Checkpoint(self.report_dir, self._report_field,
                                         checkpoint_name(getattr(options.filters, "shard", None)),
                                         identity(inputs, self.engine), resume)
            self.checkpoint.attach(self.engine)

    async def run(self) -> dict:
        engine = self.engine
        cp = self.checkpoint
        # a target that refuses the replay's own user: a clear error before anything is written
        await engine.check_target()
        if self.baseline_engine is not None:
            await self.baseline_engine.check_target()
        report_start_ns = time.time_ns()
        periodic = None
        if cp is not None:
            await cp.begin(report_start_ns)
            report_start_ns = cp.report_start_ns  # a resumed replay carries on the rows of the one it continues
            periodic = asyncio.get_running_loop().create_task(cp.run_periodically())
        if self.write_tables:
            o = self.options
            self.writer = ReportWriter(o.host, o.port, o.username, o.password, report_start_ns, tls=o.tls,
                                       tls_ca=o.tls_ca, tls_skip_verify=o.tls_skip_verify)
            if cp is not None and cp.restored is not None:
                self.writer.restart_counts(verdict=cp.verdict_restored)
            self.writer.start()
            self.writer.reference = self.verdict.verdict.reference
            engine.on_flush = self._flush
        try:
            if self.baseline_engine is None:
                await engine.run()
            else:  # both at once: each follows the captured schedule from (about) the same start
                for res in await asyncio.gather(engine.run(), self.baseline_engine.run(), return_exceptions=True):
                    if isinstance(res, BaseException):
                        raise res
        finally:
            if cp is not None:
                periodic.cancel()
                cp.finish(finished=not engine.canceled and engine._done.is_set())
            await self.verdict.finish(self.writer)  # latency, plans (EXPLAIN on the target), last rows
            if self.writer:
                await asyncio.get_running_loop().run_in_executor(None, self.writer.close)
            self.summary = engine.summary()
            if cp is not None:
                self.summary["resume"] = cp.summary()
            if self.writer:
                self.summary["report_replay_start_time"] = self.writer.replay_start.isoformat(sep=" ")
                self.summary["report_tables_error"] = self.writer.error or ""
            # off the event loop: the HTML page's plots take a while, and a proxy's clients share the loop
            await asyncio.get_running_loop().run_in_executor(None, self._write_files)
        return self.summary

    def cancel(self, graceful: bool = False) -> None:
        self.engine.cancel(graceful=graceful)
        if self.baseline_engine is not None:
            self.baseline_engine.cancel(graceful=graceful)

    def _flush(self, report) -> None:
        self.verdict.flush(self.writer)  # the failures and other errors too

    def _write_files(self) -> None:
        filters = self.engine.opt.filters
        shard = getattr(filters, "shard", None)
        start_ns = self.engine.replay_start_ns
        start_at = self.engine.opt.start_at
        if shard and start_at is not None:
            # the shards of one run share --start-at: named by it, their names share the time (each
            # one's clock read after its wait differs by a millisecond or so, by seconds for a late one)
            start_ns = int(start_at * 1e9)
        base = summary_base(start_ns, shard)
        report = self.engine.report
        # the verdict first: its numbers and the HTML page's path belong in the summary written after it
        contents = self.verdict.contents(os.path.join(self.report_dir, base), self.summary)
        contents.update({
            ".json": lambda: json.dumps(self.summary, indent=2),
            ".txt": lambda: format_summary(self.summary) + self.verdict.text(self.summary),
            "-fail.jsonl": lambda: "".join(
                json.dumps({"cmd_type": fl.cmd_type, "digest": fl.digest, "count": fl.count,
                            "sample_stmt": fl.sample_stmt, "sample_err_msg": fl.sample_err_msg,
                            "sample_conn_id": fl.sample_conn_id, "sample_capture_time_ns": fl.sample_capture_ns,
                            "sample_replay_time_ns": fl.sample_replay_ns}) + "\n"
                for fl in report.failures.values()),
            "-other_errors.jsonl": lambda: "".join(
                json.dumps({"err_type": e.err_type, "count": e.count, "sample_err_msg": e.sample_err_msg,
                            "sample_replay_time_ns": e.sample_replay_ns}) + "\n"
                for e in report.other_errors.values()),
        })
        errors = []
        try:
            dir_fd = open_private_dir(self.report_dir, self._report_field, create=True)
        except OSError as e:
            errors.append(f"cannot create the report directory: {e.strerror}: {e.filename or self.report_dir}")
        except JobError as e:
            errors.append(str(e))
        else:
            try:
                for suffix, content in contents.items():
                    path = os.path.join(self.report_dir, base + suffix)
                    try:
                        _write_private(dir_fd, base + suffix, content())
                    except OSError as e:
                        errors.append(f"cannot write {path}: {e.strerror}")
                        self.verdict.not_written(suffix, self.summary, e)
                    else:
                        self.files.append(path)
            finally:
                os.close(dir_fd)
        self.summary["summary_files"] = self.files
        self.report_html = self.summary.get("report_html", "")
        if errors:
            log.error("replay summary: %s", "; ".join(errors))
            self.summary["summary_files_error"] = "; ".join(errors)


def summary_base(replay_start_ns: int, shard: tuple[int, int] | None = None) -> str:
    """replay-<UTC time>[-shard<i>of<N>]: the summary files' name without suffix. Milliseconds: two
    runs in one second must not collide (a name that exists is never overwritten, see _write_private);
    shards started together (--start-at, given as `replay_start_ns`) share it, so their number is in the name."""
    t = replay_start_ns
    base = "replay-" + time.strftime("%Y%m%dT%H%M%S", time.gmtime(t / 1e9)) + f".{t // 1_000_000 % 1000:03d}Z"
    return base + (f"-shard{shard[0]}of{shard[1]}" if shard else "")


def _check_report_dir(path: str, field: str) -> None:
    """JobError unless `path` is a private directory of ours, or missing and created now (mode 0700):
    one that cannot be created is refused before the replay, not after it ran."""
    try:
        os.close(open_private_dir(path, field, create=False))
    except FileNotFoundError:
        try:
            os.close(open_private_dir(path, field, create=True))
        except OSError as e:
            raise JobError(f"{field}: cannot create {e.filename or path}: {e.strerror}") from None
    except OSError as e:
        raise JobError(f"{field}: cannot open {path}: {e.strerror}") from None


def _write_private(dir_fd: int, name: str, text: str) -> None:
    """Create `name` (0600, never through a symlink, never over a file) under dir_fd and write text;
    a file the disk refused part of is removed."""
    fd = create_private_file(dir_fd, name)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
    except OSError:
        try:
            os.unlink(name, dir_fd=dir_fd)
        except OSError:
            pass
        raise


def format_summary(s: dict) -> str:
    lag = s["lag"]
    lines = [
        f"replay of {s['input']} against {s['target']} (speed {s['speed'] or 'max'}"
        f"{', read-only' if s['readonly'] else ''}){' - CANCELED' if s.get('canceled') else ''}",
        f"  started {s['replay_start']}, took {s['elapsed_seconds']}s",
        f"  commands: {s['commands_replayed']} replayed of {s['commands_in_capture']} captured, "
        f"{s['commands_filtered']} filtered"
        + (f" (+ {s['commands_dropped_by_filters']} dropped by the filters)" if s.get("commands_dropped_by_filters")
           else "") + f", {s['commands_skipped']} skipped",
        *([f"  filters {s['filters']}: dropped {s.get('filtered_by') or 'nothing'}"] if s.get("filters") else []),
        *([f"  after the window's end: {s['commands_after_end_time_ending_transactions']} commands replayed to end "
           f"the transactions open at it"] if s.get("commands_after_end_time_ending_transactions") else []),
        f"  failures (new on replay): {s['commands_failed']}; failed the same as in production: "
        f"{s['commands_failed_same_as_capture']}; failed in production but not on replay: {s['commands_fixed']}",
        f"  other errors: {s['other_errors']} {s['other_error_types'] or ''}",
        *([f"  input: {s['input_format']}; it records no outcomes, so every error on replay is reported"]
          if not s.get("outcomes_recorded", True) else []),
        *([f"  input: {s['input_format']}; it records which statements failed but not their error codes"]
          if s.get("outcomes_recorded", True) and not s.get("error_codes_recorded", True) else []),
        *([f"  input entries not replayed: {s['input_skipped']}"] if s.get("input_skipped") else []),
        *(["  input: a capture without its meta (still being written, or its proxy did not stop it): "
           "replayed what its files held when read" + _unfinished_names(s)] if s.get("input_unfinished") else []),
        f"  connections: {s['connections']} (reconnects {s['reconnects']})",
        *_session_lines(s),
        f"  QPS: captured {s['qps_captured']}, replayed {s['qps_replayed']}",
        *([f"  pipeline: up to {s['pipeline']} commands in flight per connection; {s['commands_pipelined']} sent "
           f"before the answer to the one before them ({s.get('commands_pipelined_in_transactions', 0)} inside "
           f"transactions)"] if s.get("pipeline", 1) > 1 else []),
        f"  avg latency: captured {s['avg_latency_captured_ms']} ms, replayed {s['avg_latency_replayed_ms']} ms",
        f"  lag: p99 {lag['p99_ms']} ms, max {lag['max_ms']} ms, avg {lag['avg_ms']} ms",
    ]
    lines += _faithful_lines(s)
    d = s.get("dry_run")
    if d:
        lines.insert(1, f"  DRY RUN: nothing was sent; the replayer sustained {d['commands_per_second']:,} commands/s "
                        f"({d['commands_per_cpu_second'] or 0:,} per CPU-second) and would have sent "
                        f"{d['commands_would_send']} commands ({d['bytes_would_send']:,} bytes) and "
                        f"{d['own_statements_would_send']} statements of its own over {d['connections_would_open']} "
                        f"connections")
    r = s.get("resume") or {}
    if r.get("resumes"):
        lines.append(f"  resumed ({r['resumes']}x, checkpoint of {r['resumed_from']}): {r['records_done_before']} "
                     f"records done before; {r['sent_after_last_checkpoint']} commands sent after the last checkpoint "
                     f"counted as run; {r['session_statements_sent_again']} session statements sent again "
                     f"({r['session_statements_failed']} failed)")
        if r.get("results_unknown"):
            lines.append(f"  {r['results_unknown']} commands sent before the stop had no result yet: counted as run, "
                         f"not in the verdict")
        if r.get("verdict_note"):
            lines.append(f"  note: {r['verdict_note']}")
    if r.get("checkpoint_error"):
        lines.append(f"  checkpoint: {r['checkpoint_error']}")
    if s["top_failures"]:
        lines.append("  top failing statements:")
        for f in s["top_failures"]:
            lines.append(f"    {f['count']:>7}  {f['cmd_type']:<12} {f['sample_stmt'][:100]!r}")
            lines.append(f"             -> {f['sample_err_msg'][:120]}")
    return "\n".join(lines) + "\n"


def _faithful_lines(s: dict) -> list[str]:
    out = [f"  order: {s.get('order', 'connection')}"]
    c = s.get("causal")
    if c:
        out[0] += (f" ({c['scope']}; {c['commands_waited']} commands waited {c['wait_ms']} ms in all for other "
                   f"connections; let go early: {c['released_to_break_cycles']} to break wait cycles with row "
                   f"locks, {c['released_by_valve']} by the timeout valve; transactions rolled back while held "
                   f"back and sent again: {c.get('undone_to_break_cycles', 0)}; writes that changed no row sent "
                   f"again after writes that overlapped them: {c.get('sent_again_after_overlapping_writes', 0)}, of which "
                   f"before those had all run: {c.get('sent_again_before_they_ran', 0)}; reads a commit of their "
                   f"tables overlapped in production, which came first unknown: {c.get('reads_order_unknown', 0)})")
        if c.get("order_unknown_missed"):
            n = c["order_unknown_missed"]
            out.append(f"  order: {n} commit{'s' * (n != 1)} may have overlapped reads no longer kept (long "
                       f"commits, or more reads than kept): a read one of them changed may count as a mismatch")
        if c.get("lock_waits_unreadable"):  # older summaries (resume) lack it
            out.append(f"  lock waits: {c['lock_waits_unreadable']}")
    p = s.get("pinned")
    if p:
        out.append(f"  pinned: time on {p['time']} statements, auto-increment id on {p['insert_id']}")
    t = s.get("transactions")
    if t and any(t.values()):
        out.append(f"  transactions: {t['retried']} retried ({t['retried_ok']} then succeeded), {t['aborted']} "
                   f"aborted ({t['commands_skipped']} of their commands not sent); "
                   f"{t['production_lock_errors_not_replayed']} statements production lost to deadlocks or lock "
                   f"wait timeouts not sent")
    return out


def _unfinished_names(s: dict) -> str:
    """Of several inputs replayed together, which were unfinished (one input: it is the one given)."""
    names = s.get("input_unfinished_inputs") or []
    return f" ({', '.join(names)})" if names else ""


def _session_lines(s: dict) -> list[str]:
    """What replay did to keep sessions as production had them (only what happened)."""
    out = []
    if s.get("sessions_rebuilt") or s.get("sessions_not_rebuilt"):
        out.append(f"  sessions open before the capture: {s['sessions_rebuilt']} rebuilt, "
                   f"{s['sessions_not_rebuilt']} not in full; failures on those (reported apart, in "
                   f"other_errors): {s['commands_failed_on_sessions_not_rebuilt']}")
        for item in s.get("not_rebuilt", [])[:5]:
            out.append(f"    connection {item['conn_id']}: {'; '.join(item['not_rebuilt'])[:200]}")
    if s.get("kills_mapped") or s.get("kills_not_mapped"):
        out.append(f"  KILL: {s['kills_mapped']} sent to the replay connection of their target, "
                   f"{s['kills_not_mapped']} not mapped (reported, not sent)")
    if s.get("change_users"):
        out.append(f"  COM_CHANGE_USER: {s['change_users']} replayed as a change of user")
    if s.get("secrets_substituted"):
        out.append(f"  redacted secrets put back: {s['secrets_substituted']} statement(s) "
                   f"({s['secrets_from_users_file']} password(s) from the users file, "
                   f"{s.get('secrets_replay_user', 0)} the --username user's own, {s['secrets_random']} random)")
    if s.get("commands_not_executed_in_production"):
        out.append(f"  not sent: {s['commands_not_executed_in_production']} command(s) in flight when production's "
                   f"backend died (--replay-unknown sends them)")
    if s.get("server_closes_as_captured"):
        out.append(f"  connections closed by the server as in production: {s['server_closes_as_captured']}")
    if s.get("local_infile_files_sent") or s.get("local_infile_files_empty"):
        out.append(f"  LOAD DATA LOCAL INFILE: {s['local_infile_files_sent']} file(s) sent as captured, "
                   f"{s['local_infile_files_empty']} answered with an empty file (content not in the capture: "
                   f"capture.local-infile off, or the file was too large)")
    return out


def _float(form: dict, key: str, default: float) -> float:
    value = str(form.get(key, "") or "").strip()
    if not value:
        return default
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"{key}: expected a number, got {value!r}") from None


def check_order(order: str) -> str:
    if order not in ORDERS:
        raise ConfigError(f"order: expected one of {', '.join(ORDERS)}, got {order!r}")
    return order


def check_speed(speed: float) -> float:
    if speed != 0 and not 0.1 <= speed <= 100:
        raise ConfigError(f"speed: expected 0 (as fast as possible) or 0.1 .. 100, got {speed}")
    return speed


PIPELINE_MAX = 64


def check_pipeline(value: object, speed: float) -> int:
    """--pipeline N: 1 .. PIPELINE_MAX, more than 1 only at speed 0 (paced commands go at their
    captured times, each after the answer to the one before, as the captured client sent them)."""
    text = str(value).strip()
    try:
        n = int(text)
    except ValueError:
        raise ConfigError(f"pipeline: expected a whole number 1 .. {PIPELINE_MAX}, got {text!r}") from None
    if not 1 <= n <= PIPELINE_MAX:
        raise ConfigError(f"pipeline: expected 1 .. {PIPELINE_MAX} commands in flight per connection, got {n}")
    if n > 1 and speed != 0:
        raise ConfigError(f"pipeline: {n} commands in flight needs speed 0 (as fast as possible), got speed {speed}")
    return n


class ReplayJob(Job):
    kind = "replay"

    def __init__(self, server: "ProxyServer", run: ReplayRun) -> None:
        super().__init__()
        self.server = server
        self.run = run
        self.input = run.engine.input_dir
        self._task: asyncio.Task | None = None
        self._stop_error: str | None = None

    @classmethod
    def from_form(cls, server: "ProxyServer", form: dict) -> "ReplayJob":
        from fastproxy.capture.crypto import load_key

        from fastproxy.replay.selection import FILTER_FIELDS, filters_from, parse_start_at, split_inputs

        inputs = split_inputs(form.get("input", ""))
        if not inputs:
            raise ConfigError("input: required (a capture directory)")
        input_dir = inputs if len(inputs) > 1 else inputs[0]
        selection = {name: str(form.get(name, "") or "") for name, _ in FILTER_FIELDS}
        username = str(form.get("username", "")).strip()
        if not username:
            raise ConfigError("username: required (the user replay logs in as)")
        key_path = str(form.get("encryption-key-path", "") or "").strip() or server.config["security.encryption-key-path"]
        key = load_key(key_path) if key_path else None
        backend = server.pool.pick() or server.pool.backends[0]
        speed = check_speed(_float(form, "speed", 1.0))
        options = ReplayOptions(host=backend.host, port=backend.port, username=username,
                                password=str(form.get("password", "")), speed=speed,
                                pipeline=check_pipeline(str(form.get("pipeline", "") or "1"), speed),
                                readonly=parse_bool(form, "readonly", False), encryption_key=key,
                                input_format=str(form.get("format", "") or "auto").strip() or "auto",
                                filters=filters_from(selection), start_at=parse_start_at(selection["start-at"]),
                                tls=parse_bool(form, "tls", False), tls_ca=str(form.get("tls-ca", "") or "").strip(),
                                tls_skip_verify=parse_bool(form, "tls-skip-verify", False),
                                order=check_order(str(form.get("order", "") or "causal").strip()),
                                dry_run=parse_bool(form, "dry-run", False))
        users_file = str(form.get("users-file", "") or "").strip()
        if users_file:  # a path on this proxy's machine; the passwords never travel through the API
            from fastproxy.replay.users import load_users_file

            options.users = load_users_file(users_file)
        options.replay_unknown = parse_bool(form, "replay-unknown", False)
        report_dir = str(form.get("report-dir", "") or "").strip() or None
        baseline = str(form.get("baseline", "") or "").strip()
        return cls(server, ReplayRun(input_dir, options, report_dir, verdict_options=verdict_options_from(form),
                                     baseline=parse_addr(baseline, "baseline") if baseline else None,
                                     resume=parse_bool(form, "resume", False)))

    async def start(self) -> None:
        self.mark_started()
        self._task = asyncio.get_running_loop().create_task(self._run())
        self.server.metric_sources.append(self._metrics)

    async def _run(self) -> None:
        try:
            summary = await self.run.run()
            err = self._stop_error or summary.get("report_tables_error") or None
            self.finish(error=err, canceled=self.run.engine.canceled)
        except JobError as e:  # it could not start (the target refused the replay's user): said as is
            log.error("replay: %s", e)
            self.finish(error=str(e))
        except Exception as e:  # noqa: BLE001
            log.exception("replay failed")
            self.finish(error=f"{type(e).__name__}: {e}")
        finally:
            if self._metrics in self.server.metric_sources:
                self.server.metric_sources.remove(self._metrics)

    async def stop(self, canceled: bool = True, graceful: bool = False, error: str | None = None) -> None:
        self.run.cancel(graceful=graceful)
        if error:
            self._stop_error = error  # why it stopped (e.g. the proxy shut down): kept for `show`
        if self._task:
            await asyncio.shield(self._task)

    def progress(self) -> float:
        return self.run.engine.progress()

    def describe(self) -> dict:
        d = self.describe_base()
        e = self.run.engine
        st = e.stats
        d.update({
            "input": self.input,
            "target": f"{e.opt.host}:{e.opt.port}",
            "username": e.opt.username,
            "speed": e.opt.speed,
            "readonly": e.opt.readonly,
            "order": e.opt.order,
            "dry_run": e.opt.dry_run,
            "pipeline": e.pipeline,
            "commands_pipelined": st.pipelined,
            "commands_pipelined_in_transactions": st.pipelined_in_txn,
            "commands_in_capture": st.commands_total or int(e.meta.get("commands") or 0),
            "replayed": st.replayed,
            "filtered": st.filtered,
            "dropped_by_filters": getattr(e.reader, "commands_dropped", 0),
            "failed": st.failed,
            "skipped": st.skipped,
            "other_errors": sum(x.count for x in e.report.other_errors.values()),
            "connections": st.connections,
            "sessions_rebuilt": st.sessions_rebuilt,
            "sessions_not_rebuilt": e.sessions_not_rebuilt,
            "kills_mapped": st.kills_mapped,
            "kills_not_mapped": st.kills_not_mapped,
            "secrets_substituted": e.credentials.substituted,
            "lag": e.lag.as_dict(),
            "filtered_by": dict(getattr(e.reader, "dropped", {}) or {}),
        })
        cp = self.run.checkpoint
        if cp is not None and cp.restored is not None:
            d["resume"] = cp.summary()
        if self.run.files:
            d["summary_files"] = self.run.files
        if self.run.baseline_engine is not None:
            b = self.run.baseline_engine
            d["baseline"] = {"target": f"{b.opt.host}:{b.opt.port}", "replayed": b.stats.replayed,
                             "failed": b.stats.failed, "lag": b.lag.as_dict()}
        if self.run.report_html:
            d["report_html"] = self.run.report_html
        if self.run.summary and "verdict" in self.run.summary:
            d["verdict"] = self.run.summary["verdict"]
        return d

    def _metrics(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        e = self.run.engine
        lag = e.lag
        yield CounterMetricFamily("fastproxy_replay_commands", "Commands replayed by the running replay",
                                  value=e.stats.replayed)
        yield CounterMetricFamily("fastproxy_replay_failures", "New failures of the running replay",
                                  value=e.stats.failed)
        g = GaugeMetricFamily("fastproxy_replay_lag_seconds", "How late replayed commands went out", labels=["stat"])
        g.add_metric(["current"], lag.current_ns / 1e9)
        g.add_metric(["p99"], lag.quantile(0.99) / 1e9)
        g.add_metric(["max"], lag.max_ns / 1e9)
        yield g
