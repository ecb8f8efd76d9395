"""The replay engine's hook into the verdict: `Replayer.observer(conn, rec, result, now)` is called
once per replayed command that got a response. `CaptureObserver` compares it with the captured
outcome; for an A/B run, fastproxy/report/ab.py pairs the two engines' results instead.

Also keeps the timelines of the HTML page (per second: commands captured and replayed, lag, new
failures), bounded by the replay's length in seconds.
"""
from __future__ import annotations

import time

from fastproxy.capture.record import OUTCOME_ERR, OUTCOME_OK, Record
from fastproxy.constants import COMMAND, command_name
from fastproxy.replay._checkpoint import HeldConn
from fastproxy.replay.causal import ORDER_UNKNOWN, READ_EVENT, head_ticket
from fastproxy.report._compare import same_as_captured
from fastproxy.report._observe import ObserverCore, TimelineCore
from fastproxy.report.verdict import DigestInfo, Side, Verdict, compare_sides

_QUERY = COMMAND.COM_QUERY
_PREPARE = COMMAND.COM_STMT_PREPARE
_EXECUTE = COMMAND.COM_STMT_EXECUTE
STMT_COMMANDS = (COMMAND.COM_STMT_EXECUTE, COMMAND.COM_STMT_SEND_LONG_DATA, COMMAND.COM_STMT_CLOSE,
                 COMMAND.COM_STMT_RESET, COMMAND.COM_STMT_FETCH)


_CMD_TYPES: dict[int, str] = {}


def cmd_type_name(cmd: int) -> str:
    """TiProxy-style command type: COM_STMT_EXECUTE -> StmtExecute (as in the fail table)."""
    t = _CMD_TYPES.get(cmd)
    if t is None:
        name = command_name(cmd)
        t = _CMD_TYPES[cmd] = ("".join(p.capitalize() for p in name[4:].split("_")) if name.startswith("COM_")
                               else name)
    return t


def statement_text(conn, rec: Record) -> tuple[str, bool]:
    """(SQL the digest is taken of, whether that text recurs) — as the fail table groups them."""
    payload = rec.payload
    cmd = payload[0]
    if cmd == _QUERY or cmd == _PREPARE:
        return payload[1:].decode("utf-8", "replace"), False
    if cmd in STMT_COMMANDS:
        captured_id = int.from_bytes(payload[1:5], "little")
        sql = conn.stmt_sql.get(captured_id)
        return (sql, True) if sql is not None else (f"<statement {captured_id}>", True)
    return command_name(cmd) + (" " + payload[1:].decode("utf-8", "replace") if len(payload) > 1 else ""), False


def execute_params(conn, rec: Record) -> tuple[list | None, str]:
    """(decoded values, rendered text) of a COM_STMT_EXECUTE's parameters; (None, "") otherwise."""
    from fastproxy.replay.params import decode_execute_params, format_params

    if rec.payload[0] != _EXECUTE:
        return None, ""
    captured_id = int.from_bytes(rec.payload[1:5], "little")
    try:
        raw = conn.stmt_types.get(captured_id)  # u16 per parameter: type | flags << 8
        prev = [raw[i] | raw[i + 1] << 8 for i in range(0, len(raw) - 1, 2)] if raw else None
        values, _ = decode_execute_params(rec.payload, conn.stmt_params.get(captured_id, 0), prev)
        return values, format_params(values)
    except Exception as e:  # noqa: BLE001 - a sample is best-effort
        return None, f"<undecodable: {e}>"


def capture_side(rec: Record) -> Side:
    latency = rec.end_ns - rec.start_ns if rec.end_ns > rec.start_ns else -1
    return Side(rec.outcome, rec.err_code, rec.rows, rec.columns, rec.hash_ordered, rec.hash_unordered,
                rec.affected_rows, rec.warnings, latency, rec.start_ns)


def replay_side(result, latency_ns: int, wall_ns: int) -> Side:
    return Side(result.outcome, result.err_code, result.rows, result.columns, result.hash_ordered,
                result.hash_unordered, result.affected_rows, result.warnings, latency_ns, wall_ns,
                result.err_msg)


def sample(info: DigestInfo, conn, rec: Record) -> None:
    """Fill the digest's sample (parameters, database) from its first command."""
    if info.sampled:
        return
    info.sampled = True
    info.sample_values, info.sample_params = execute_params(conn, rec)
    info.db = conn.db


class Timeline(TimelineCore):
    """Per-second series for the report: replayed commands, lag and new failures by replay second,
    captured commands by capture second (both from the start of each). The series are TimelineCore's
    fields: ObserverCore adds to them in C."""

    def __init__(self) -> None:
        self.captured: dict[int, int] = {}
        self.replayed: dict[int, int] = {}
        self.lag_max_ms: dict[int, float] = {}
        self.lag_sum_ms: dict[int, float] = {}
        self.failures: dict[int, int] = {}
        self.mismatches: dict[int, int] = {}

    def add(self, capture_sec: int, replay_sec: int, lag_ns: int | None) -> None:
        self.captured[capture_sec] = self.captured.get(capture_sec, 0) + 1
        self.replayed[replay_sec] = self.replayed.get(replay_sec, 0) + 1
        if lag_ns is not None:
            ms = max(0, lag_ns) / 1e6
            if ms > self.lag_max_ms.get(replay_sec, -1.0):
                self.lag_max_ms[replay_sec] = ms
            self.lag_sum_ms[replay_sec] = self.lag_sum_ms.get(replay_sec, 0.0) + ms

    def count(self, series: dict, sec: int) -> None:
        series[sec] = series.get(sec, 0) + 1

    _SERIES = ("captured", "replayed", "lag_max_ms", "lag_sum_ms", "failures", "mismatches")

    def state(self) -> dict:
        """For a checkpoint (one entry per second of the replay and of the capture)."""
        return {name: [[k, v] for k, v in getattr(self, name).items()] for name in self._SERIES}

    def restore(self, state: dict) -> None:
        for name in self._SERIES:
            setattr(self, name, {int(k): v for k, v in state.get(name) or []})

    def as_dict(self) -> dict:
        def seq(d: dict) -> list:
            return [[k, round(v, 3) if isinstance(v, float) else v] for k, v in sorted(d.items())]

        lag_avg = {s: self.lag_sum_ms[s] / self.replayed[s] for s in self.lag_sum_ms if self.replayed.get(s)}
        return {"captured_per_second": seq(self.captured), "replayed_per_second": seq(self.replayed),
                "lag_max_ms": seq(self.lag_max_ms), "lag_avg_ms": seq(lag_avg),
                "failures_per_second": seq(self.failures), "mismatches_per_second": seq(self.mismatches)}


def is_failure(ref: Side, new: Side) -> bool:
    # err_code 0: the input knew that it failed, not how (TiProxy captures), as the engine judges it
    return new.outcome == OUTCOME_ERR and ref.outcome in (OUTCOME_OK, OUTCOME_ERR) and not (
        ref.outcome == OUTCOME_ERR and ref.err_code in (new.err_code, 0))


class CaptureObserver(ObserverCore):
    """Compares each replayed command with its captured outcome (the single-target replay).

    Called per command: ObserverCore.__call__ (C, fastproxy/report/_observe.pyx) does what `observe`
    does for the commands that match their capture, and hands the others to it."""

    def __init__(self, engine, verdict: Verdict, timeline: Timeline | None = None) -> None:
        self.engine = engine
        self.verdict = verdict
        self.timeline = timeline or Timeline()
        # a difference judged after its command (its order was not known yet) counts in its own second
        verdict.on_late_mismatch = lambda sec: self.timeline.count(self.timeline.mismatches, sec)
        # a resumed replay (fastproxy/replay/checkpoint.py): its seconds follow the stopped run's, the
        # capture's seconds count from the capture's start as before, and a result of the stopped run
        # counted again has its own second
        self.second_offset = 0
        self.capture_origin_ns = 0
        self.at_second: int | None = None

    def state(self) -> dict:
        """The verdict and the timeline so far (a checkpoint's)."""
        late: list[int] = []  # mismatches the saved verdict judged ahead of the live one
        # the last checkpoint of a replay canceled (or whose input broke): judged as its end judges them
        # (Verdict.settle's unread_unknown), which a resumed run carries on
        verdict = self.verdict.state(late, unread_unknown=self.engine.read_stopped_early)
        timeline = self.timeline.state()
        if late:
            counts = dict(timeline["mismatches"])
            for sec in late:
                counts[sec] = counts.get(sec, 0) + 1
            timeline["mismatches"] = [[k, v] for k, v in counts.items()]
        return {"verdict": verdict, "timeline": timeline,
                "capture_origin_ns": self.capture_origin_ns or self.engine.capture_start_ns}

    def restore(self, state: dict) -> None:
        self.verdict.restore(state["verdict"])
        self.timeline.restore(state["timeline"])
        self.capture_origin_ns = int(state["capture_origin_ns"])

    def observe(self, conn, rec: Record, result, now: int) -> None:
        """The reference of ObserverCore.__call__, and what it hands over."""
        engine = self.engine
        cmd = rec.payload[0]
        replay_sec = (self.at_second if self.at_second is not None
                      else self.second_offset + max(0, now - engine._start_mono) // 1_000_000_000)
        tl = self.timeline
        tl.add((rec.start_ns - (self.capture_origin_ns or engine.capture_start_ns)) // 1_000_000_000, replay_sec,
               conn.sent_ns - conn.due_ns if engine.opt.speed > 0 else None)
        # is_failure and the outcome test below, without building the two Sides (every command passes here)
        ref_outcome, new_outcome = rec.outcome, result.outcome
        if new_outcome == OUTCOME_ERR and ref_outcome in (OUTCOME_OK, OUTCOME_ERR) and not (
                ref_outcome == OUTCOME_ERR and rec.err_code in (result.err_code, 0)):
            tl.count(tl.failures, replay_sec)
            return
        if ref_outcome != OUTCOME_OK or new_outcome != OUTCOME_OK or cmd == _PREPARE:
            return  # a prepare's "affected rows" field holds the statement id: nothing to compare
        sql, recurs = statement_text(conn, rec)
        verdict = self.verdict
        info = verdict.info(cmd, cmd_type_name(cmd), sql, recurs)
        if not info.sampled:
            sample(info, conn, rec)
        if not info.reasons and same_as_captured(rec, result):
            # what Verdict.add does when compare_sides finds nothing (checked in C)
            verdict.compared += 1
            if info.slot == verdict.other_slot:
                verdict.other_commands += 1
            verdict.latency.record(info.slot, rec.end_ns - rec.start_ns if rec.end_ns > rec.start_ns else -1,
                                   now - conn.sent_ns)
            return
        self._differs(conn, rec, result, now, info, replay_sec)

    def _differs(self, conn, rec: Record, result, now: int, info: DigestInfo, replay_sec: int) -> None:
        """A command both sides ran, not plainly the same as captured: the full comparison."""
        new = replay_side(result, now - conn.sent_ns, time.time_ns())
        apart = bool(conn.not_rebuilt)  # as failures there (_add_failure_not_rebuilt): set apart, said once each
        before = self.verdict.mismatch_not_rebuilt
        ticket = conn.ticket if type(conn) is HeldConn else head_ticket(conn, rec)
        verdict = self.verdict
        verdict.settle()
        if verdict.add(info, capture_side(rec), new, lambda: execute_params(conn, rec)[1], apart=apart,
                       order_unknown=self._order_check(ticket, rec.end_ns), replay_sec=replay_sec):
            self.timeline.count(self.timeline.mismatches, replay_sec)
        elif self.verdict.mismatch_not_rebuilt != before:
            ref = capture_side(rec)
            diffs = "; ".join(f"{k}: capture {a}, replay {b}" for k, a, b in
                              compare_sides(ref, new, info.ordered, self.verdict.kinds))
            self.engine.report.add_other("mismatch on a session not rebuilt",
                                         f"connection {conn.conn_id} ({'; '.join(conn.not_rebuilt)[:300]}): "
                                         f"{info.sample_stmt[:300]}: {diffs[:300]}", time.time_ns())

    def _order_check(self, ticket, end_ns: int):
        """For Verdict.add: whether a read's order against the commits it overlapped is unknown (its
        planner flag), or None while a commit still to be read may flag it."""
        if ticket is None or not ticket.flags & READ_EVENT:
            return bool(ticket is not None and ticket.flags & ORDER_UNKNOWN)
        engine = self.engine

        def check(force: bool):
            if ticket.flags & ORDER_UNKNOWN:
                return True
            # known once the commits that could have overlapped it are read: all of them at the input's
            # end; a replay canceled (or an input broken) before that leaves it unknown
            if force or engine._read_whole or engine.planner.settled(end_ns):
                return False
            return None
        return check

    # the Python helpers ObserverCore calls
    _statement_text = staticmethod(statement_text)
    _cmd_type_name = staticmethod(cmd_type_name)
    _sample = staticmethod(sample)
