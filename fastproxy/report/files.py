"""The verdict as data: built from a finished Verdict, saved next to the replay's summary files
(`replay-<time>-verdict.jsonl`: one JSON object on one line — `replay-*.json` stays the summaries
alone), loaded back by `fastproxy traffic report DIR`, and printed."""
from __future__ import annotations

import glob
import json
import os
import re

import struct

from fastproxy.capture.record import FILE_HEADER, META_NAME
from fastproxy.errors import FastproxyError
from fastproxy.report.explain import scans
from fastproxy.report.verdict import AFFECTED_ROWS, KINDS, ROWS, Verdict


def _leaves(source) -> list:
    """The sources under filters and merges (fastproxy.inputs, replay/filters.py)."""
    if hasattr(source, "source"):
        return _leaves(source.source)
    if hasattr(source, "sources"):
        return [leaf for s in source.sources for leaf in _leaves(s)]
    return [source]


def _native_version(source) -> int:
    meta = getattr(source, "meta", {}) or {}
    if meta.get("format_version"):
        return int(meta["format_version"])
    # a cut-off capture (no meta): its first file's header says
    directory = getattr(source, "input_dir", None)
    files = getattr(source, "files", None) or []
    if isinstance(directory, str) and files and os.path.isdir(directory):
        try:
            with open(os.path.join(directory, files[0]), "rb") as f:
                return FILE_HEADER.unpack(f.read(FILE_HEADER.size))[1]
        except (OSError, ValueError, struct.error):
            pass
    return 2


def compared_kinds(source) -> frozenset:
    """What the input recorded of each command's result, hence what can be compared: a capture of format
    2 everything, format 1 rows and affected rows, a slow log with error numbers rows and affected rows,
    a TiProxy capture affected rows, a general log nothing (a mixed input: what all parts have)."""
    kinds = None
    for leaf in _leaves(source):
        fmt = getattr(leaf, "format", "native")
        meta = getattr(leaf, "meta", {}) or {}
        if fmt == "native":
            k = set(KINDS) if _native_version(leaf) >= 2 else {ROWS, AFFECTED_ROWS}
        elif fmt == "slow-log":
            k = {ROWS, AFFECTED_ROWS} if meta.get("outcomes_recorded") else set()
        elif fmt == "tiproxy":
            k = {AFFECTED_ROWS}
        else:
            k = set()
        kinds = k if kinds is None else kinds & k
    return frozenset(kinds or ())


def verdict_data(verdict: Verdict, latency_rows: list[dict], timeline: dict, extra: dict | None = None) -> dict:
    """Everything the text verdict and the HTML page need, JSON-ready."""
    o = verdict.opt
    mismatches = sorted(verdict.mismatches.values(), key=lambda m: -m.count)
    nondet = sorted(verdict.nondeterministic.values(), key=lambda n: (-n.differed, -n.executions))
    data = {
        "reference": verdict.reference,
        "compared": sorted(verdict.kinds),
        "thresholds": {"slower_ratio": o.slower_ratio, "slower_min_diff_ms": o.slower_min_diff_ms,
                       "slower_min_count": o.slower_min_count, "max_digests": o.max_digests,
                       "explain_top": o.explain_top},
        "compared_commands": verdict.compared,
        "mismatched_commands": verdict.mismatch_count,
        "mismatch_kinds": verdict.mismatch_kinds,
        "mismatches": [{k: v for k, v in m.__dict__.items() if k != "unflushed"} for m in mismatches],
        "nondeterministic": [{"cmd_type": n.cmd_type, "digest": n.digest, "reasons": n.reasons,
                              "sample_stmt": n.sample_stmt, "executions": n.executions, "differed": n.differed,
                              "kinds": n.kinds} for n in nondet],
        "nondeterministic_differed": verdict.nondeterministic_differed,
        "latency": latency_rows,
        "latency_digests": len(verdict.digests),
        "latency_other_commands": verdict.other_commands,
        "latency_histogram_bytes": verdict.latency.bytes_allocated,
        "groups_dropped": verdict.groups_dropped,
        "mismatched_commands_not_rebuilt": verdict.mismatch_not_rebuilt,
        "mismatched_commands_order_unknown": verdict.mismatch_order_unknown,
        "mismatched_commands_order_unread": verdict.mismatch_order_unread,
        "order_unknown": [{"cmd_type": t, "digest": d, "sample_stmt": stmt, "count": n}
                          for (t, d), (stmt, n) in sorted(verdict.order_unknown.items(), key=lambda kv: -kv[1][1])],
        "timeline": timeline,
    }
    data.update(extra or {})
    return data


def incomplete_reasons(summary: dict) -> list[str]:
    """Why the replay did not replay all it read or read all of its input (empty: it did): such a replay
    proves nothing about what it did not send, so its verdict cannot be "no new failures"."""
    out = []
    n = summary.get("commands_not_replayed", 0)
    if n:
        types = {k: v for k, v in (summary.get("other_error_types") or {}).items()
                 if k in ("connect failed", "login failed", "i/o timeout") or k.startswith("login refused")}
        out.append(f"{_n(n, 'command')} not replayed: their connections could not connect or log in to the "
                   f"target ({', '.join(f'{k}: {v}' for k, v in types.items()) or 'see other errors'})")
    if summary.get("input_error"):
        total, read = summary.get("commands_in_capture", 0), summary.get("commands_read", 0)
        unread = f" ({total - read} of {total} captured commands not read)" if total > read else ""
        out.append(f"the input could not be read to its end{unread}: {summary['input_error']}")
    return out


def verdict_summary(data: dict, summary: dict, failures: list[dict]) -> dict:
    """The few numbers that decide an upgrade, for the summary JSON and `show`."""
    slower = [r for r in data["latency"] if r["slower"]]
    return {
        "reference": data["reference"],
        "new_failures": sum(f["count"] for f in failures),
        "failing_statements": len(failures),
        "mismatched_commands": data["mismatched_commands"],
        "mismatched_statements": len({(m["cmd_type"], m["digest"]) for m in data["mismatches"]}),
        "mismatch_kinds": data["mismatch_kinds"],
        "slower_statements": len(slower),
        "nondeterministic_statements": len(data["nondeterministic"]),
        "nondeterministic_differed": data["nondeterministic_differed"],
        "lag_p99_ms": summary.get("lag", {}).get("p99_ms"),
        "mismatched_commands_not_rebuilt": data.get("mismatched_commands_not_rebuilt", 0),
        "mismatched_commands_order_unknown": data.get("mismatched_commands_order_unknown", 0),
        "mismatched_commands_order_unread": data.get("mismatched_commands_order_unread", 0),
        # not empty: the replay is incomplete (the verdict says so instead of a clean result)
        "incomplete": incomplete_reasons(summary),
    }


# ---- files ------------------------------------------------------------------------------------

SHARD_RE = re.compile(r"-shard(\d+)of(\d+)$")


def replay_files(report_dir: str, stamp: str | None = None) -> dict:
    """Paths of one replay's files in `report_dir` (the newest, or the one of `stamp`), its `stamp`,
    and `shards`: the stamps of every shard of its run (shards write replay-<time>-shard<i>of<N>.json,
    see fastproxy/replay/job.py summary_base; [] for a replay not sharded). A `stamp` without the shard
    part that names a sharded run picks one shard only when the run has one here: else an error names
    each to choose."""
    every = sorted(os.path.basename(p)[len("replay-"):-len(".json")]
                   for p in glob.glob(os.path.join(report_dir, "replay-*.json")))
    stamps = [s for s in every if stamp is None or s == stamp or SHARD_RE.sub("", s) == stamp]
    if not stamps:
        what = f"replay {stamp}" if stamp else "replay summary (replay-<time>.json)"
        hint = "" if os.path.exists(os.path.join(report_dir, META_NAME)) else " (is this a capture or report directory?)"
        raise FastproxyError(f"{report_dir}: no {what} here{hint}")
    if stamp is not None and stamp not in stamps and len(stamps) > 1:
        raise FastproxyError(f"{report_dir}: replay {stamp} was sharded: give one of "
                             + ", ".join(f"--replay {s}" for s in stamps))
    chosen = max(stamps)  # names sort by time
    run = SHARD_RE.sub("", chosen)
    shards = [s for s in every if SHARD_RE.sub("", s) == run and s != run] if SHARD_RE.search(chosen) else []
    base = os.path.join(report_dir, f"replay-{chosen}")
    return {"summary": base + ".json", "verdict": base + "-verdict.jsonl", "fail": base + "-fail.jsonl",
            "other_errors": base + "-other_errors.jsonl", "html": base + ".html", "stamp": chosen,
            "shards": shards}


def _jsonl(path: str) -> list[dict]:
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def load(report_dir: str, stamp: str | None = None) -> dict:
    """{"paths", "summary", "verdict" (None for a replay made before verdicts), "failures", "other_errors"}."""
    paths = replay_files(report_dir, stamp)
    try:
        with open(paths["summary"]) as f:
            summary = json.load(f)
    except (OSError, ValueError) as e:
        raise FastproxyError(f"{paths['summary']}: cannot read the replay summary: {e}") from None
    verdict = None
    if os.path.exists(paths["verdict"]):
        try:
            with open(paths["verdict"]) as f:
                verdict = json.loads(f.readline())
        except (OSError, ValueError) as e:
            raise FastproxyError(f"{paths['verdict']}: cannot read the verdict: {e}") from None
    return {"paths": paths, "summary": summary, "verdict": verdict, "failures": _jsonl(paths["fail"]),
            "other_errors": _jsonl(paths["other_errors"])}


# ---- text -------------------------------------------------------------------------------------

def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _plan_note(plan: str) -> str:
    if not plan:
        return ""
    if plan.startswith("EXPLAIN failed"):
        return f" [{plan[:100]}]"
    full = scans(plan)
    return f" [plan: full scan of {', '.join(dict.fromkeys(full))}]" if full else " [plan kept]"


def format_verdict(summary: dict, data: dict | None, failures: list[dict] | None = None, html_path: str = "",
                   top: int = 5) -> str:
    """The verdict in a few lines: what failed, what returned different results, what got slower."""
    failures = failures if failures is not None else summary.get("top_failures", [])
    if data is None:
        return (f"VERDICT: {summary.get('commands_failed', 0)} new failures "
                f"(this replay predates result and latency comparison)\n"
                + "".join(f"  INCOMPLETE: {why}\n" for why in incomplete_reasons(summary)))
    ref = data["reference"]
    v = verdict_summary(data, summary, failures)
    lag = summary.get("lag", {})
    incomplete = incomplete_reasons(summary)
    lines = [
        f"VERDICT (replay on {summary.get('target', '?')} compared with the {ref})"
        + (": INCOMPLETE, the numbers below cover only what was replayed" if incomplete else ""),
        *[f"  incomplete:          {why}" for why in incomplete],
        f"  new failures:        {_n(v['new_failures'], 'command')} in {_n(len(failures), 'statement')}",
        f"  result mismatches:   {_n(v['mismatched_commands'], 'command')} in {_n(v['mismatched_statements'], 'statement')}"
        + (f" ({', '.join(f'{k} {n}' for k, n in sorted(v['mismatch_kinds'].items()))})" if v["mismatch_kinds"] else ""),
        f"  slower statements:   {v['slower_statements']} (p99 >= {data['thresholds']['slower_ratio']}x and "
        f"+{data['thresholds']['slower_min_diff_ms']} ms, >= {data['thresholds']['slower_min_count']} executions)",
        f"  nondeterministic:    {_n(v['nondeterministic_statements'], 'statement')}, "
        f"{_n(v['nondeterministic_differed'], 'execution')} differed (expected; not mismatches)",
        f"  lag:                 p99 {lag.get('p99_ms', 0)} ms, max {lag.get('max_ms', 0)} ms",
    ]
    if data.get("mismatched_commands_not_rebuilt"):
        lines.append(f"  on sessions not rebuilt: {_n(data['mismatched_commands_not_rebuilt'], 'command')} returned "
                     f"different results (counted apart, not mismatches: their session was not as in production; "
                     f"see other errors)")
    if data.get("mismatched_commands_order_unknown"):
        lines.append(f"  order unknown:       {_n(data['mismatched_commands_order_unknown'], 'read')} in "
                     f"{_n(len(data.get('order_unknown', [])), 'statement')} differed where a commit of their tables "
                     f"overlapped them in production (which came first is unknown: counted apart, not mismatches)")
        if data.get("mismatched_commands_order_unread"):
            lines.append(f"                       of which {_n(data['mismatched_commands_order_unread'], 'read')}: "
                         f"the replay stopped before reading the commits that would tell")
    missing = [k for k in KINDS if k not in data.get("compared", KINDS)]
    if missing:
        lines.append(f"  (the input did not record them, so not compared: {', '.join(missing)})")
    if failures:
        lines.append("  top new failures:")
        for f in sorted(failures, key=lambda f: -f["count"])[:top]:
            lines.append(f"    {f['count']:>7}  {f['cmd_type']:<12} {f['sample_stmt'][:90]!r}")
            lines.append(f"             -> {f['sample_err_msg'][:110]}")
    if data["mismatches"]:
        lines.append("  top result mismatches:")
        for m in data["mismatches"][:top]:
            lines.append(f"    {m['count']:>7}  {m['kind']:<13} {m['cmd_type']:<12} {m['sample_stmt'][:80]!r}"
                         + (f" params={m['sample_params'][:40]}" if m["sample_params"] else ""))
            lines.append(f"             {ref}: {m['sample_capture_value'][:60]}  replay: {m['sample_replay_value'][:60]}")
    slower = [r for r in data["latency"] if r["slower"]]
    if slower:
        lines.append("  slower statements (p99):")
        for r in slower[:top]:
            ratio = r["replay_p99_us"] / r["capture_p99_us"] if r["capture_p99_us"] else float("inf")
            lines.append(f"    {r['capture_p99_us'] / 1000:>8.2f} -> {r['replay_p99_us'] / 1000:.2f} ms (x{ratio:.1f}, "
                         f"{r['count']} runs)  {r['cmd_type']:<12} {r['sample_stmt'][:70]!r}{_plan_note(r['plan'])}")
    if data["nondeterministic"]:
        lines.append("  nondeterministic statements (counted apart):")
        for n in data["nondeterministic"][:top]:
            lines.append(f"    {n['differed']:>7} of {n['executions']:<7} differed  {n['reasons']:<28} "
                         f"{n['sample_stmt'][:70]!r}")
    if html_path:
        lines.append(f"  report: {html_path}")
    return "\n".join(lines) + "\n"
