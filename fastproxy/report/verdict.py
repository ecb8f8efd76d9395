"""The verdict of one replay: per command, its reference outcome (the capture, or the baseline replay
of an A/B run) against the replay under test.

- result comparison: rows, content (unordered fingerprint, or ordered when the statement has a
  top-level ORDER BY, then `order` if only the order differs), affected rows, warnings; grouped
  into mismatches by (cmd_type, digest, kind) with a first sample;
- nondeterministic statements (fastproxy/report/classify.py) are counted apart per digest with
  their reasons and how many executions differed — never as mismatches;
- latency per (cmd_type, digest) in C histograms (fastproxy/report/_latency.pyx), bounded by
  `max_digests`: past it, commands go to one "other" row (counted);
- a digest is *slower* when its p99 ratio, p99 difference and count all pass the thresholds.

Everything here runs on the event loop once per command and only touches dictionaries and the C
histograms; the report writer thread and the HTML page read the results afterwards.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import math
from collections import deque
from dataclasses import dataclass, field

from fastproxy._digest import normalize
from fastproxy.errors import ConfigError
from fastproxy.report._latency import REFERENCE, REPLAY, LatencyTable
from fastproxy.report._verdict import VerdictCore
from fastproxy.report.classify import nondeterministic_reasons, ordered_result

OUTCOME_OK = 0
OUTCOME_ERR = 1

ROWS, CONTENT, ORDER, AFFECTED_ROWS, WARNINGS = "rows", "content", "order", "affected_rows", "warnings"
KINDS = (ROWS, CONTENT, ORDER, AFFECTED_ROWS, WARNINGS)
OTHER_DIGEST = "other"  # the latency row of the commands past max_digests
SAMPLE_VALUES = 1000  # characters of a sample value kept


@dataclass
class VerdictOptions:
    slower_ratio: float = 1.5       # replay p99 / reference p99 at least this
    slower_min_diff_ms: float = 1.0  # and replay p99 - reference p99 at least this
    slower_min_count: int = 10      # over at least this many executions
    max_digests: int = 2000         # latency histograms kept (3.6 KiB each); past it: the "other" row
    explain_top: int = 20           # EXPLAIN FORMAT=JSON of the slowest this many digests
    max_groups: int = 20000         # mismatch / nondeterministic groups kept; past it counted only


# the verdict's thresholds as API form fields (fastproxy/job_form.py) and command-line options
VERDICT_FIELDS = {"slower-ratio": ("slower_ratio", float), "slower-min-diff-ms": ("slower_min_diff_ms", float),
                  "slower-min-count": ("slower_min_count", int), "max-digests": ("max_digests", int),
                  "explain-top": ("explain_top", int)}


def verdict_options_from(form: dict) -> VerdictOptions:
    """VerdictOptions from form fields (absent or empty: the default); a bad value names its field."""
    kw = {}
    for key, (attr, conv) in VERDICT_FIELDS.items():
        value = str(form.get(key, "") or "").strip()
        if not value:
            continue
        try:
            v = conv(value)
            if not math.isfinite(v):
                raise ValueError(value)
        except ValueError:
            raise ConfigError(f"{key}: expected {'a number' if conv is float else 'an integer'}, got {value!r}") from None
        if v < (1 if attr in ("max_digests", "slower_ratio") else 0):
            raise ConfigError(f"{key}: must be at least {1 if attr in ('max_digests', 'slower_ratio') else 0}, got {value}")
        kw[attr] = v
    return VerdictOptions(**kw)


@dataclass(slots=True)
class Side:
    """How one side (reference or replay) ended a command."""

    outcome: int
    err_code: int = 0
    rows: int = 0
    columns: int = 0
    hash_ordered: int = 0
    hash_unordered: int = 0
    affected_rows: int = 0
    warnings: int = 0
    latency_ns: int = -1  # -1: unknown
    wall_ns: int = 0      # when it ran (for samples)
    err_msg: str = ""


@dataclass
class DigestInfo:
    cmd_type: str
    digest: str
    sample_stmt: str
    reasons: list[str]       # why its results may differ legitimately (empty: deterministic)
    ordered: bool            # top-level ORDER BY: compare the ordered fingerprint
    slot: int                # latency histogram
    sample_params: str = ""
    sample_values: list | None = None  # decoded parameters of the sample (for EXPLAIN)
    db: str | None = None    # database of the sample's connection (for EXPLAIN)
    explainable: bool = False
    sampled: bool = False    # sample_params / sample_values / db filled in (by the caller, once)


@dataclass
class Mismatch:
    cmd_type: str
    digest: str
    kind: str
    sample_stmt: str
    sample_params: str
    sample_capture_value: str
    sample_replay_value: str
    sample_capture_ns: int
    sample_replay_ns: int
    count: int = 0
    unflushed: int = 0


@dataclass
class Nondeterministic:
    cmd_type: str
    digest: str
    reasons: str
    sample_stmt: str
    executions: int = 0
    differed: int = 0
    kinds: dict = field(default_factory=dict)  # kind -> executions that differed that way
    unflushed: bool = True


_EXPLAINABLE = ("select", "with", "update", "delete", "insert", "replace", "(")


def _short(v) -> str:
    s = str(v)
    return s if len(s) <= SAMPLE_VALUES else s[:SAMPLE_VALUES] + "..."


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def compare_sides(ref: Side, new: Side, ordered: bool, kinds=frozenset(KINDS)) -> list[tuple[str, str, str]]:
    """[(kind, reference value, replay value)] where two successful executions differ, among `kinds` (what
    the reference recorded: everything for a capture of format 2 or a replay, less for other inputs)."""
    out = []
    has_result = ref.columns or new.columns or ref.hash_unordered or new.hash_unordered
    if ROWS in kinds and ref.rows != new.rows:
        out.append((ROWS, _n(ref.rows, "row"), _n(new.rows, "row")))
    elif CONTENT in kinds and has_result:
        if ref.columns != new.columns:
            out.append((CONTENT, f"{_n(ref.rows, 'row')} of {_n(ref.columns, 'column')}",
                        f"{_n(new.rows, 'row')} of {_n(new.columns, 'column')}"))
        elif ref.hash_unordered != new.hash_unordered:
            out.append((CONTENT, f"{_n(ref.rows, 'row')}, fingerprint {ref.hash_unordered:016x}",
                        f"{_n(new.rows, 'row')}, fingerprint {new.hash_unordered:016x}"))
        elif ordered and ref.hash_ordered != new.hash_ordered:
            out.append((ORDER, f"{_n(ref.rows, 'row')}, ordered fingerprint {ref.hash_ordered:016x}",
                        f"the same rows, ordered fingerprint {new.hash_ordered:016x}"))
    if AFFECTED_ROWS in kinds and not has_result and ref.affected_rows != new.affected_rows:
        out.append((AFFECTED_ROWS, _n(ref.affected_rows, "affected row"), _n(new.affected_rows, "affected row")))
    if WARNINGS in kinds and ref.warnings != new.warnings:
        out.append((WARNINGS, _n(ref.warnings, "warning"), _n(new.warnings, "warning")))
    return out


class Verdict(VerdictCore):
    """Accumulates comparisons of (reference, replay) per statement; `reference` names the reference
    side ("capture" or "baseline HOST:PORT"). The counters the per-command hook adds to are
    VerdictCore's C fields (fastproxy/report/_verdict.pyx)."""

    def __init__(self, options: VerdictOptions | None = None, reference: str = "capture",
                 kinds=frozenset(KINDS)) -> None:
        self.opt = options or VerdictOptions()
        self.reference = reference
        self.kinds = frozenset(kinds)  # what is compared (files.compared_kinds: what the input recorded)
        self.latency = LatencyTable(self.opt.max_digests + 1)  # and the "other" row
        self.digests: dict[tuple[str, str], DigestInfo] = {}
        self._by_text: dict[tuple[int, str], DigestInfo] = {}  # (cmd, SQL text) -> info: digests once per text
        self._by_norm: dict[tuple[str, str], DigestInfo] = {}  # (cmd_type, normalized SQL) -> info
        self.other_slot = self.latency.add_slot()
        self.other_commands = 0  # commands whose digest came past max_digests
        self.mismatches: dict[tuple[str, str, str], Mismatch] = {}
        self.nondeterministic: dict[tuple[str, str], Nondeterministic] = {}
        self.mismatch_count = 0        # commands with at least one mismatch
        self.mismatch_kinds: dict[str, int] = {}
        self.groups_dropped = 0        # mismatch/nondeterministic groups past max_groups (counted only)
        self.compared = 0              # commands compared (both sides succeeded)
        self.nondeterministic_differed = 0
        self.mismatch_not_rebuilt = 0  # commands that differed on sessions not rebuilt in full: apart
        # reads that differed where a commit of their tables overlapped them (their snapshot) in production:
        # which came first is unknown (fastproxy/replay/_causal.pyx, ORDER_UNKNOWN), so apart, per statement
        self.order_unknown: dict[tuple[str, str], list] = {}  # (cmd_type, digest) -> [sample_stmt, count]
        self.mismatch_order_unknown = 0
        # of those, judged so because the replay stopped before it read the commits that would tell
        self.mismatch_order_unread = 0
        self._pending: deque = deque()  # differences whose order is not known yet (add, settle)
        self.on_late_mismatch = None
        self._state_cache: dict[int, tuple] = {}  # slot -> (counts, saved histograms): state() every second

    # ---- statements ----------------------------------------------------------------------------
    def info(self, cmd: int, cmd_type: str, sql: str, cache_text: bool = False) -> DigestInfo:
        """The DigestInfo of a statement. `cache_text`: the same text recurs (a prepared statement's
        SQL), remember it so that it is normalized once."""
        key = (cmd, sql)
        if cache_text:
            info = self._by_text.get(key)
            if info is not None:
                return info
        norm = normalize(sql)
        info = self._by_norm.get((cmd_type, norm))  # literals differ, the shape recurs: no SHA-256 then
        if info is not None:
            return info
        digest = hashlib.sha256(norm.encode("utf-8")).hexdigest()  # = fastproxy._digest.digest(sql)
        info = self.digests.get((cmd_type, digest))
        if info is None:
            slot = self.latency.add_slot() if len(self.digests) < self.opt.max_digests else -1
            if slot < 0:  # past the cap: classified as usual, latency in the "other" row, not remembered
                return DigestInfo(cmd_type, digest, sql, nondeterministic_reasons(norm), ordered_result(norm),
                                  self.other_slot, sampled=True)
            info = DigestInfo(cmd_type, digest, sql, nondeterministic_reasons(norm), ordered_result(norm),
                              slot, explainable=norm.startswith(_EXPLAINABLE))
            self.digests[(cmd_type, digest)] = info
        if cache_text and len(self._by_text) < 4 * self.opt.max_digests:
            self._by_text[key] = info
        if len(self._by_norm) < 4 * self.opt.max_digests:
            self._by_norm[(cmd_type, norm)] = info
        return info

    # ---- per command ---------------------------------------------------------------------------
    def add(self, info: DigestInfo, ref: Side, new: Side, params=None, apart: bool = False,
            order_unknown=False, replay_sec: int = 0) -> list[str]:
        """One command on both sides; returns the mismatch kinds reported (empty if none).
        `params()` renders the parameters of the sample, called only when a sample is kept. `apart`: its
        session was not rebuilt in full, so a difference is counted in mismatch_not_rebuilt, not reported.
        `order_unknown`: a read a commit overlapped in production, so a difference is counted in
        mismatch_order_unknown (and per statement), not reported; or a function `check(force)` that
        says so (True/False), or None while it is not known yet (a commit still to be read may have
        overlapped it): a difference is then judged later (`settle`), and `on_late_mismatch(replay_sec)`
        is called for it if it is one."""
        if ref.outcome != OUTCOME_OK or new.outcome != OUTCOME_OK:
            return []
        self.compared += 1
        if info.slot == self.other_slot:
            self.other_commands += 1
        self.latency.record(info.slot, ref.latency_ns, new.latency_ns)
        diffs = compare_sides(ref, new, info.ordered, self.kinds)
        if info.reasons:
            self._nondeterministic(info, diffs)
            return []
        if not diffs:
            return []
        if apart:  # the session differed from production's before this command: no regression
            self.mismatch_not_rebuilt += 1
            return []
        if callable(order_unknown):
            known = order_unknown(False)
            if known is None:
                self._pending.append((order_unknown, info, diffs, params() if params else "", ref.wall_ns,
                                      new.wall_ns, replay_sec))
                return []
            order_unknown = known
        return self._judge(info, diffs, params, ref.wall_ns, new.wall_ns, order_unknown)

    def settle(self, force: bool = False, unread_unknown: bool = False) -> None:
        """Judge the differences held while their order was not known, as far as it is now (`force`:
        all of them, as known now: at the end, and before the state is saved). `unread_unknown` (at the
        end of a replay that did not read its whole input: canceled, or the input broke): what the
        commits read cannot settle is judged order unknown (a commit never read may have overlapped it
        in production), counted in mismatch_order_unread too, not as a mismatch."""
        pending = self._pending
        while pending:
            check, info, diffs, params, ref_wall, new_wall, replay_sec = pending[0]
            known = check(force and not unread_unknown)
            if known is None:
                if not unread_unknown:
                    return
                known = True
                self.mismatch_order_unread += 1
            pending.popleft()
            if self._judge(info, diffs, lambda: params, ref_wall, new_wall, known) and self.on_late_mismatch:
                self.on_late_mismatch(replay_sec)

    def _judge(self, info: DigestInfo, diffs: list, params, ref_wall: int, new_wall: int,
               order_unknown: bool) -> list[str]:
        if order_unknown:  # production may have run the overlapping commit first: no regression either
            self.mismatch_order_unknown += 1
            key = (info.cmd_type, info.digest)
            group = self.order_unknown.get(key)
            if group is None:
                if len(self.order_unknown) >= self.opt.max_groups:
                    self.groups_dropped += 1
                    return []
                group = self.order_unknown[key] = [info.sample_stmt, 0]
            group[1] += 1
            return []
        self.mismatch_count += 1
        for kind, ref_value, new_value in diffs:
            self.mismatch_kinds[kind] = self.mismatch_kinds.get(kind, 0) + 1
            key = (info.cmd_type, info.digest, kind)
            m = self.mismatches.get(key)
            if m is None:
                if len(self.mismatches) >= self.opt.max_groups:
                    self.groups_dropped += 1
                    continue
                p = params() if params else ""
                m = self.mismatches[key] = Mismatch(info.cmd_type, info.digest, kind, info.sample_stmt, p or "",
                                                    _short(ref_value), _short(new_value), ref_wall, new_wall)
            m.count += 1
            m.unflushed += 1
        return [d[0] for d in diffs]

    def _nondeterministic(self, info: DigestInfo, diffs) -> None:
        key = (info.cmd_type, info.digest)
        nd = self.nondeterministic.get(key)
        if nd is None:
            if len(self.nondeterministic) >= self.opt.max_groups:
                self.groups_dropped += 1
                return
            nd = self.nondeterministic[key] = Nondeterministic(info.cmd_type, info.digest, ", ".join(info.reasons),
                                                               info.sample_stmt)
        nd.executions += 1
        nd.unflushed = True
        if diffs:
            nd.differed += 1
            self.nondeterministic_differed += 1
            for kind, _, _ in diffs:
                nd.kinds[kind] = nd.kinds.get(kind, 0) + 1

    # ---- checkpoint and resume (fastproxy/replay/checkpoint.py) ----------------------------------
    def state(self, late: list | None = None, unread_unknown: bool = False) -> dict:
        """Everything accumulated so far, JSON-ready: bounded by max_digests histograms and max_groups
        groups. `restore` on a fresh Verdict with the same options gives the same results. Differences
        still waiting for their order are saved judged as it is known now (their check cannot be saved;
        `unread_unknown`: the replay stopped reading before the commits that would tell, see settle),
        and stay waiting here; the replay seconds of those saved as mismatches are added to `late`."""
        if not self._pending:
            return self._state()
        kept = (self.mismatches, self.mismatch_kinds, self.mismatch_count, self.order_unknown,
                self.mismatch_order_unknown, self.mismatch_order_unread, self.groups_dropped, self._pending,
                self.on_late_mismatch)
        try:
            self.mismatches = {k: dataclasses.replace(m) for k, m in self.mismatches.items()}
            self.mismatch_kinds = dict(self.mismatch_kinds)
            self.order_unknown = {k: list(v) for k, v in self.order_unknown.items()}
            self._pending = deque(self._pending)
            self.on_late_mismatch = late.append if late is not None else None
            self.settle(force=True, unread_unknown=unread_unknown)
            return self._state()
        finally:
            (self.mismatches, self.mismatch_kinds, self.mismatch_count, self.order_unknown,
             self.mismatch_order_unknown, self.mismatch_order_unread, self.groups_dropped, self._pending,
             self.on_late_mismatch) = kept

    def _state(self) -> dict:
        t = self.latency
        cache = self._state_cache

        def hist(slot: int) -> list:
            counts = (t.count(slot, REFERENCE), t.count(slot, REPLAY))
            cached = cache.get(slot)
            if cached is not None and cached[0] == counts:  # unchanged since the last snapshot
                return cached[1]
            out = []
            for side in (REFERENCE, REPLAY):
                count, sum_ns, max_ns, packed = t.side_state(slot, side)
                out.append([count, sum_ns, max_ns, base64.b64encode(packed).decode()])
            cache[slot] = (counts, out)
            return out

        return {
            "digests": [[i.cmd_type, i.digest, i.sample_stmt, i.reasons, i.ordered, i.sample_params, i.db,
                         i.explainable, hist(i.slot)] for i in sorted(self.digests.values(), key=lambda i: i.slot)],
            "other": hist(self.other_slot),
            "other_commands": self.other_commands,
            "mismatches": [{k: v for k, v in m.__dict__.items() if k != "unflushed"} for m in self.mismatches.values()],
            "nondeterministic": [{k: v for k, v in n.__dict__.items() if k != "unflushed"}
                                 for n in self.nondeterministic.values()],
            "mismatch_count": self.mismatch_count,
            "mismatch_kinds": self.mismatch_kinds,
            "groups_dropped": self.groups_dropped,
            "compared": self.compared,
            "nondeterministic_differed": self.nondeterministic_differed,
            "mismatch_not_rebuilt": self.mismatch_not_rebuilt,
            "mismatch_order_unknown": self.mismatch_order_unknown,
            "mismatch_order_unread": self.mismatch_order_unread,
            "order_unknown": [[t, d, stmt, n] for (t, d), (stmt, n) in self.order_unknown.items()],
        }

    def restore(self, state: dict) -> None:
        """Put back what `state()` saved (on a Verdict that has seen nothing yet). Rows restored count as
        not yet written to the report tables (the resumed run writes them whole)."""
        if self.digests or self.compared:
            raise ValueError("verdict: restore into a verdict that already has results")
        t = self.latency

        def load(slot: int, sides: list, add: bool = False) -> None:
            for side, (count, sum_ns, max_ns, packed) in zip((REFERENCE, REPLAY), sides):
                t.load_side(slot, side, count, sum_ns, max_ns, base64.b64decode(packed), add)

        load(self.other_slot, state["other"])
        self.other_commands = state["other_commands"]
        for cmd_type, digest, stmt, reasons, ordered, params, db, explainable, sides in state["digests"]:
            if len(self.digests) >= self.opt.max_digests:  # a smaller max-digests now: the rest joins "other"
                load(self.other_slot, sides, add=True)
                self.other_commands += min(sides[0][0], sides[1][0])
                continue
            slot = t.add_slot()
            load(slot, sides)
            # a sample with parameters is taken again from the next execution (their decoded values,
            # which EXPLAIN needs, are not saved)
            self.digests[(cmd_type, digest)] = DigestInfo(cmd_type, digest, stmt, list(reasons), ordered, slot,
                                                          params, None, db, explainable, sampled=not params)
        for m in state["mismatches"]:
            self.mismatches[(m["cmd_type"], m["digest"], m["kind"])] = Mismatch(**m, unflushed=m["count"])
        for n in state["nondeterministic"]:
            self.nondeterministic[(n["cmd_type"], n["digest"])] = Nondeterministic(**n, unflushed=True)
        self.mismatch_count = state["mismatch_count"]
        self.mismatch_kinds = dict(state["mismatch_kinds"])
        self.groups_dropped = state["groups_dropped"]
        self.compared = state["compared"]
        self.nondeterministic_differed = state["nondeterministic_differed"]
        self.mismatch_not_rebuilt = state.get("mismatch_not_rebuilt", 0)  # older checkpoints lack it
        self.mismatch_order_unknown = state.get("mismatch_order_unknown", 0)  # (these three as well)
        self.mismatch_order_unread = state.get("mismatch_order_unread", 0)
        self.order_unknown = {(t, d): [stmt, n] for t, d, stmt, n in state.get("order_unknown", [])}

    # ---- results -------------------------------------------------------------------------------
    def take_mismatch_delta(self) -> list[Mismatch]:
        self.settle()
        out = []
        for m in self.mismatches.values():
            if m.unflushed:
                out.append(Mismatch(**{**m.__dict__, "count": m.unflushed}))
                m.unflushed = 0
        return out

    def latency_rows(self) -> list[dict]:
        """One row per digest with latencies on both sides, worst p99 regression first."""
        rows = []
        t = self.latency
        items = [(info.cmd_type, info.digest, info) for info in self.digests.values()]
        if t.count(self.other_slot, REPLAY):
            items.append(("Other", OTHER_DIGEST, None))
        for cmd_type, digest, info in items:
            slot = info.slot if info else self.other_slot
            n = min(t.count(slot, REFERENCE), t.count(slot, REPLAY))
            if n == 0:
                continue
            row = {"cmd_type": cmd_type, "digest": digest,
                   "sample_stmt": info.sample_stmt if info else f"({self.other_commands} commands of digests past "
                                                                f"the {self.opt.max_digests} kept)",
                   "sample_params": info.sample_params if info else "", "count": n}
            for side, name in ((REFERENCE, "capture"), (REPLAY, "replay")):
                row[f"{name}_p50_us"] = round(t.quantile_ns(slot, side, 0.5) / 1e3, 1)
                row[f"{name}_p99_us"] = round(t.quantile_ns(slot, side, 0.99) / 1e3, 1)
                row[f"{name}_max_us"] = round(t.max_ns(slot, side) / 1e3, 1)
                row[f"{name}_avg_us"] = round(t.sum_ns(slot, side) / max(1, t.count(slot, side)) / 1e3, 1)
                row[f"{name}_buckets"] = t.buckets(slot, side)
            row["slower"] = info is not None and self.is_slower(row)
            row["plan"] = ""
            row["baseline_plan"] = ""
            rows.append(row)
        rows.sort(key=lambda r: (not r["slower"], -(r["replay_p99_us"] - r["capture_p99_us"])))
        return rows

    def is_slower(self, row: dict) -> bool:
        o = self.opt
        ref, new = row["capture_p99_us"], row["replay_p99_us"]
        return (row["count"] >= o.slower_min_count and new - ref >= o.slower_min_diff_ms * 1000
                and new >= o.slower_ratio * ref)

    def explain_candidates(self, rows: list[dict]) -> list[DigestInfo]:
        """The digests whose plans are worth keeping: the slower ones first, then the highest replay p99."""
        ranked = sorted(rows, key=lambda r: (not r["slower"], -r["replay_p99_us"]))
        out = []
        for r in ranked:
            info = self.digests.get((r["cmd_type"], r["digest"]))
            if info is not None and info.explainable:
                out.append(info)
            if len(out) >= self.opt.explain_top:
                break
        return out
