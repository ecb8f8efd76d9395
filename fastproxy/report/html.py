"""One self-contained HTML page per replay: the verdict on top, then the plots (matplotlib, inline
SVG with text as paths: no fonts, scripts or images to fetch) and the tables.

`render_report(summary, verdict data, failures, other errors)` returns the page; it reads only what
the replay wrote to its files, so `fastproxy traffic report DIR` renders the same page again later.
"""
from __future__ import annotations

import html
import io
import re

from fastproxy.report._latency import bucket_lower_ns, bucket_upper_ns
from fastproxy.report.explain import scans
from fastproxy.report.files import incomplete_reasons

TOP = 25  # rows per table

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2430;background:#f5f6f8}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:32px 0 8px;border-bottom:1px solid #d8dce3;padding-bottom:4px}
.meta{color:#5b6575;margin-bottom:16px}
.verdict{font-size:17px;font-weight:600;padding:12px 16px;border-radius:8px;margin:12px 0}
.verdict.bad{background:#fde8e8;color:#8a1c1c}.verdict.good{background:#e5f6ea;color:#17602f}
.verdict.incomplete{background:#fff4d6;color:#7a5200}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:12px}
.card{background:#fff;border-radius:8px;padding:12px 14px;box-shadow:0 1px 2px rgba(0,0,0,.08);border-top:4px solid #9aa4b2}
.card.bad{border-top-color:#d33}.card.good{border-top-color:#2a9d4b}.card.info{border-top-color:#d9a400}
.card .n{font-size:28px;font-weight:700}.card .l{color:#5b6575}.card .d{font-size:12px;color:#5b6575}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:12px}
figure.chart{background:#fff;margin:0;padding:8px;border-radius:8px;box-shadow:0 1px 2px rgba(0,0,0,.08)}
figure.chart svg{width:100%;height:auto;display:block}figure.chart figcaption{color:#5b6575;font-size:12px;padding:0 6px}
table{border-collapse:collapse;width:100%;background:#fff;box-shadow:0 1px 2px rgba(0,0,0,.08);font-size:13px}
th,td{padding:6px 8px;border-bottom:1px solid #eceef2;text-align:left;vertical-align:top}
th{background:#f0f2f5;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
code,pre{font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,monospace}td code{word-break:break-all}
pre{white-space:pre-wrap;max-height:420px;overflow:auto;background:#f7f8fa;padding:8px;border-radius:6px}
.tag{display:inline-block;padding:0 6px;border-radius:4px;background:#eef0f4;font-size:12px}
.tag.slower,.tag.rows,.tag.content{background:#fde8e8;color:#8a1c1c}.tag.order,.tag.warnings,.tag.affected_rows{background:#fff4d6}
.empty{color:#5b6575;font-style:italic;padding:8px 0}
"""


def _e(v) -> str:
    return html.escape(str(v), quote=True)


def _num(v) -> str:
    return f"{v:,.1f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else _e(v)


def _ms(us) -> str:
    return f"{us / 1000:,.2f}" if us is not None else ""


# ---- charts ----------------------------------------------------------------------------------

def _figure(width: float = 6.4, height: float = 2.8):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.grid(True, color="#e3e6eb", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig, ax


_ID = re.compile(r'\bid="([^"]+)"')


def _svg(fig, prefix: str) -> str:
    """The figure as an inline <svg>: no XML prolog, and every id prefixed so that several plots on one
    page never share an id (clip paths and markers are referenced by id)."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": prefix}):
        fig.savefig(buf, format="svg", metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    ids = set(_ID.findall(svg))
    for i in sorted(ids, key=len, reverse=True):
        svg = svg.replace(f'id="{i}"', f'id="{prefix}-{i}"').replace(f"#{i})", f"#{prefix}-{i})").replace(
            f'"#{i}"', f'"#{prefix}-{i}"')
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    return svg


def _series(ax, xs, ys, gid: str, label: str, **kw):
    (line,) = ax.plot(xs, ys, label=label, linewidth=1.6, **kw)
    line.set_gid(gid)
    return line


def _chart(name: str, title: str, caption: str, points: int, svg: str) -> str:
    return (f'<figure class="chart" data-chart="{_e(name)}" data-points="{points}">{svg}'
            f"<figcaption><b>{_e(title)}</b> — {_e(caption)}</figcaption></figure>")


def _per_second(pairs: list) -> tuple[list, list]:
    if not pairs:
        return [], []
    d = {int(k): v for k, v in pairs}
    xs = list(range(0, max(d) + 1))
    return xs, [d.get(x, 0) for x in xs]


def qps_chart(timeline: dict, speed: float) -> str:
    fig, ax = _figure()
    cx, cy = _per_second(timeline.get("captured_per_second", []))
    rx, ry = _per_second(timeline.get("replayed_per_second", []))
    if speed and speed > 0 and speed != 1:
        cx = [x / speed for x in cx]  # captured seconds on the replay's clock
    _series(ax, cx, cy, "series-captured", "captured", color="#5b6575", drawstyle="steps-post")
    _series(ax, rx, ry, "series-replayed", "replayed", color="#2f6fd6", drawstyle="steps-post")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("commands / s")
    ax.legend(loc="upper right", frameon=False)
    ax.set_ylim(bottom=0)
    return _chart("qps", "QPS over time", "commands per second, captured (on the replay's clock) and replayed",
                  len(rx), _svg(fig, "qps"))


def lag_chart(timeline: dict) -> str:
    fig, ax = _figure()
    mx, my = _per_second(timeline.get("lag_max_ms", []))
    ax_, ay = _per_second(timeline.get("lag_avg_ms", []))
    _series(ax, mx, my, "series-lag-max", "max", color="#d33")
    _series(ax, ax_, ay, "series-lag-avg", "average", color="#2f6fd6")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("lag (ms)")
    ax.legend(loc="upper right", frameon=False)
    ax.set_ylim(bottom=0)
    return _chart("lag", "Lag over time", "how late commands went out, per second of the replay", len(mx),
                  _svg(fig, "lag"))


def _cdf(buckets: dict) -> tuple[list, list]:
    items = sorted((int(k), v) for k, v in buckets.items())
    total = sum(v for _, v in items)
    xs, ys, acc = [], [], 0
    for k, v in items:
        if not xs:
            xs.append(max(1.0, bucket_lower_ns(k) / 1e3))
            ys.append(0.0)
        acc += v
        xs.append(bucket_upper_ns(k) / 1e3)
        ys.append(acc / total)
    return xs, ys


def _merged(rows: list[dict], key: str) -> dict:
    out: dict = {}
    for r in rows:
        for k, v in (r.get(key) or {}).items():
            out[int(k)] = out.get(int(k), 0) + v
    return out


def _plain_log_formatter(**kw):
    """matplotlib's choice of which log-axis ticks get a label, each written as a plain number."""
    from matplotlib.ticker import LogFormatter

    class PlainLogFormatter(LogFormatter):
        def __call__(self, x, pos=None):
            if not super().__call__(x, pos):
                return ""
            return f"{x:,.0f}" if x >= 1 else f"{x:g}"

    return PlainLogFormatter(**kw)


def latency_chart(name: str, title: str, caption: str, ref_buckets: dict, new_buckets: dict, reference: str) -> str:
    fig, ax = _figure()
    rx, ry = _cdf(ref_buckets)
    nx, ny = _cdf(new_buckets)
    _series(ax, rx, ry, "series-reference", reference, color="#5b6575", drawstyle="steps-post")
    _series(ax, nx, ny, "series-replay", "replay", color="#2f6fd6", drawstyle="steps-post")
    ax.set_xscale("log")
    # plain numbers: matplotlib's default 10^n labels go through its TeX-like parser (12% of the
    # time a report took to write)
    ax.xaxis.set_major_formatter(_plain_log_formatter())
    ax.xaxis.set_minor_formatter(_plain_log_formatter(labelOnlyBase=False))  # (labelled below two decades)
    ax.set_xlabel("latency (µs, log scale)")
    ax.set_ylabel("fraction of commands")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower right", frameon=False)
    return _chart(name, title, caption, len(nx), _svg(fig, name))


def p99_chart(rows: list[dict], reference: str) -> str:
    top = [r for r in rows if r["digest"] != "other"][:12]
    fig, ax = _figure(6.4, 0.6 + 0.32 * max(1, len(top)))
    labels = [f"{r['cmd_type']} {r['digest'][:8]}" for r in top]
    ys = list(range(len(top)))
    ref = ax.barh([y + 0.2 for y in ys], [r["capture_p99_us"] / 1000 for r in top], height=0.38, color="#9aa4b2",
                  label=reference)
    new = ax.barh([y - 0.2 for y in ys], [r["replay_p99_us"] / 1000 for r in top], height=0.38,
                  color=["#d33" if r["slower"] else "#2f6fd6" for r in top], label="replay")
    for i, (a, b) in enumerate(zip(ref, new)):
        a.set_gid(f"series-reference-{i}")
        b.set_gid(f"series-replay-{i}")
    ax.set_yticks(ys, labels)
    ax.invert_yaxis()
    ax.set_xlabel("p99 latency (ms)")
    ax.legend(loc="lower right", frameon=False)
    return _chart("p99", "p99 per statement", "the statements with the largest p99 increase (red: slower)",
                  len(top), _svg(fig, "p99"))


# ---- tables ----------------------------------------------------------------------------------

def _table(name: str, headers: list[str], rows: list[list[str]], empty: str) -> str:
    if not rows:
        return f'<p class="empty" data-table="{_e(name)}">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(rows_i) + "</tr>" for rows_i in rows)
    return f'<table data-table="{_e(name)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _td(v, num: bool = False) -> str:
    return f'<td class="num">{_num(v)}</td>' if num else f"<td>{_e(v)}</td>"


def _code(v, limit: int = 600) -> str:
    s = str(v)
    return f"<td><code>{_e(s[:limit])}{'…' if len(s) > limit else ''}</code></td>"


def _digest(r: dict) -> str:
    return f'<td><code title="{_e(r["digest"])}" data-digest="{_e(r["digest"])}">{_e(r["digest"][:12])}</code></td>'


def _plan(plan: str) -> str:
    if not plan:
        return "<td></td>"
    full = scans(plan)
    label = ("full scan of " + ", ".join(dict.fromkeys(full))) if full else (
        "EXPLAIN failed" if plan.startswith("EXPLAIN failed") else "plan")
    return f"<td><details><summary>{_e(label)}</summary><pre>{_e(plan)}</pre></details></td>"


def _ratio(r: dict) -> str:
    return f"×{r['replay_p99_us'] / r['capture_p99_us']:.1f}" if r["capture_p99_us"] else "–"


def _p99_cell(r: dict) -> str:
    tag = ' <span class="tag slower">slower</span>' if r["slower"] else ""
    return f'<td class="num">{_ratio(r)}{tag}</td>'


# ---- page ------------------------------------------------------------------------------------

def _card(n, label: str, detail: str, state: str) -> str:
    return (f'<div class="card {state}" data-card="{_e(label)}"><div class="n">{_num(n)}</div>'
            f'<div class="l">{_e(label)}</div><div class="d">{_e(detail)}</div></div>')


def render_report(summary: dict, data: dict, failures: list[dict], other_errors: list[dict]) -> str:
    ref = data["reference"]
    lat = data["latency"]
    slower = [r for r in lat if r["slower"]]
    mismatches = data["mismatches"]
    nondet = data["nondeterministic"]
    n_fail = summary.get("commands_failed", 0)
    n_mis = data["mismatched_commands"]
    mis_statements = len({(m["cmd_type"], m["digest"]) for m in mismatches})
    lag = summary.get("lag", {})
    problems = []
    if failures:
        problems.append(f"{len(failures)} statement{'s' * (len(failures) != 1)} fail")
    if mis_statements:
        problems.append(f"{mis_statements} return{'s' * (mis_statements == 1)} different results")
    if slower:
        problems.append(f"{len(slower)} got slower")
    verdict = (f'<div class="verdict bad">Regressions against the {_e(ref)}: {_e(", ".join(problems))}.</div>'
               if problems else f'<div class="verdict good">No new failures, no result mismatches and no slower '
                                f'statements against the {_e(ref)}.</div>')
    incomplete = incomplete_reasons(summary)
    if incomplete:  # what was not replayed proves nothing: never a clean verdict
        verdict = (f'<div class="verdict incomplete">Replay incomplete: {_e("; ".join(incomplete))}. '
                   f'The results below cover only what was replayed.</div>' + (verdict if problems else ""))
    cards = "".join([
        _card(n_fail, "new failures", f"commands in {len(failures)} statement{'s' * (len(failures) != 1)}",
              "bad" if n_fail else "good"),
        _card(n_mis, "result mismatches", f"commands in {mis_statements} statement{'s' * (mis_statements != 1)}",
              "bad" if n_mis else "good"),
        _card(len(slower), "slower statements", f"p99 ≥ {data['thresholds']['slower_ratio']}× and "
              f"+{data['thresholds']['slower_min_diff_ms']} ms", "bad" if slower else "good"),
        _card(len(nondet), "nondeterministic", f"statements; {data['nondeterministic_differed']} executions "
              "differed (not mismatches)", "info" if nondet else "good"),
        _card(lag.get("p99_ms", 0), "lag p99 (ms)", f"max {lag.get('max_ms', 0)} ms", "info"),
    ])
    tl = data.get("timeline", {})
    charts = [qps_chart(tl, summary.get("speed") or 0)]
    if tl.get("lag_max_ms"):
        charts.append(lag_chart(tl))
    if lat:
        charts.append(latency_chart("latency-all", "Latency distribution, all statements",
                                    f"cumulative share of commands under a latency, {ref} vs replay",
                                    _merged(lat, "capture_buckets"), _merged(lat, "replay_buckets"), ref))
        charts.append(p99_chart(lat, ref))
        for i, r in enumerate(slower[:4]):
            charts.append(latency_chart(f"latency-slower-{i + 1}", f"Slower: {r['cmd_type']} {r['digest'][:12]}",
                                        r["sample_stmt"][:90], r["capture_buckets"], r["replay_buckets"], ref))
    fail_rows = [[_td(f["count"], True), _td(f["cmd_type"]), _digest(f), _code(f["sample_stmt"]),
                  _code(f["sample_err_msg"], 300)] for f in sorted(failures, key=lambda f: -f["count"])[:TOP]]
    mis_rows = [[_td(m["count"], True), f'<td><span class="tag {_e(m["kind"])}">{_e(m["kind"])}</span></td>',
                 _td(m["cmd_type"]), _digest(m), _code(m["sample_stmt"]), _code(m["sample_params"], 300),
                 _code(m["sample_capture_value"], 200), _code(m["sample_replay_value"], 200)] for m in mismatches[:TOP]]
    lat_rows = [[_td(r["count"], True), _td(r["cmd_type"]), _digest(r), _code(r["sample_stmt"]),
                 _code(r.get("sample_params", ""), 200),
                 f'<td class="num">{_ms(r["capture_p50_us"])} / {_ms(r["capture_p99_us"])} / {_ms(r["capture_max_us"])}</td>',
                 f'<td class="num">{_ms(r["replay_p50_us"])} / {_ms(r["replay_p99_us"])} / {_ms(r["replay_max_us"])}</td>',
                 _p99_cell(r),
                 _plan(r.get("plan", ""))] + ([_plan(r.get("baseline_plan", ""))] if ref != "capture" else [])
                for r in lat[:TOP]]
    nd_rows = [[_td(n["differed"], True), _td(n["executions"], True), _td(n["reasons"]), _td(n["cmd_type"]),
                _digest(n), _code(n["sample_stmt"]), _td(", ".join(f"{k} {v}" for k, v in sorted(n["kinds"].items())))]
               for n in nondet[:TOP]]
    other_rows = [[_td(e["count"], True), _td(e["err_type"]), _code(e["sample_err_msg"], 300)]
                  for e in sorted(other_errors, key=lambda e: -e["count"])]
    lat_headers = ["runs", "type", "digest", "sample", "params", f"{ref} p50/p99/max ms", "replay p50/p99/max ms",
                   "p99", "plan on target"] + (["plan on baseline"] if ref != "capture" else [])
    meta = (f"{_e(summary.get('input', ''))} → {_e(summary.get('target', ''))} · started {_e(summary.get('replay_start', ''))}"
            f" · {summary.get('elapsed_seconds', 0)} s · speed {_e(summary.get('speed') or 'max')}"
            f"{' · read-only' if summary.get('readonly') else ''}{' · CANCELED' if summary.get('canceled') else ''}"
            f" · {summary.get('commands_replayed', 0):,} commands replayed of {summary.get('commands_in_capture', 0):,}"
            f" · compared with the {_e(ref)}")
    notes = []
    missing = [k for k in ("rows", "content", "order", "affected_rows", "warnings") if k not in data.get("compared", [k])]
    if missing:
        notes.append(f"The input did not record them, so these were not compared: {', '.join(missing)}.")
    if data.get("latency_other_commands"):
        notes.append(f"{data['latency_other_commands']:,} commands belong to digests past the "
                     f"{data['thresholds']['max_digests']:,} kept: their latency is in the row “other”.")
    if data.get("mismatched_commands_not_rebuilt"):
        notes.append(f"{data['mismatched_commands_not_rebuilt']:,} commands on sessions replay could not rebuild in "
                     f"full returned different results: counted apart (see other errors), not as mismatches.")
    if data.get("mismatched_commands_order_unknown"):
        top = "; ".join(f"{o['count']:,} × {o['sample_stmt'][:80]}" for o in data.get("order_unknown", [])[:3])
        n = data["mismatched_commands_order_unknown"]
        notes.append(f"{n:,} read{'s' * (n != 1)} returned different results where a commit "
                     f"of their tables overlapped them (or their transaction's snapshot) in production: which came "
                     f"first is unknown, so they are counted apart, not as mismatches ({top}).")
        unread = data.get("mismatched_commands_order_unread", 0)
        if unread:
            notes.append(f"Of those, {unread:,} because the replay stopped before it read the commits that could "
                         f"have overlapped {'them' if unread != 1 else 'it'} in production (canceled, its input "
                         f"broken, or stopped by an error).")
    missed = (summary.get("causal") or {}).get("order_unknown_missed")
    if missed:
        notes.append(f"{missed:,} commit{'s' * (missed != 1)} may have overlapped reads no longer kept (commits "
                     f"longer than the reads' keep window, or more reads than kept): a read one of them changed "
                     f"may count as a mismatch here.")
    if data.get("groups_dropped"):
        notes.append(f"{data['groups_dropped']:,} groups (mismatch, nondeterministic or order unknown) past the cap "
                     f"were counted only.")
    note_html = "".join(f'<p class="meta">{_e(n)}</p>' for n in notes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>fastproxy replay report — {_e(summary.get('replay_start', ''))}</title><style>{CSS}</style></head>
<body><main>
<h1>fastproxy replay report</h1><div class="meta">{meta}</div>
{verdict}<div class="cards">{cards}</div>{note_html}
<h2>Over time and latency</h2><div class="charts">{''.join(charts)}</div>
<h2>New failures</h2>{_table("failures", ["count", "type", "digest", "sample", "error"], fail_rows,
                              "No statement failed on replay that succeeded in production.")}
<h2>Result mismatches</h2>{_table("mismatches", ["count", "kind", "type", "digest", "sample", "params",
                                                 ref, "replay"], mis_rows, "No result differed.")}
<h2>Latency per statement</h2>{_table("latency", lat_headers, lat_rows, "No latency compared.")}
<h2>Nondeterministic statements</h2>{_table("nondeterministic", ["differed", "runs", "reasons", "type", "digest",
                                                                "sample", "how"], nd_rows,
                                            "No statement depends on time, randomness or the session.")}
<h2>Other errors</h2>{_table("other_errors", ["count", "type", "sample"], other_rows, "None.")}
</main></body></html>
"""
