"""The verdict on the command line: `fastproxy traffic report DIR [--html FILE]`, and the options
that `traffic replay` and `replay` share for it (`--baseline`, the thresholds of "slower")."""
from __future__ import annotations

import functools
import os

import click

# option name -> API form field (fastproxy/report/verdict.py VERDICT_FIELDS, and baseline)
_FIELDS = {"baseline": "baseline", "slower_ratio": "slower-ratio", "slower_min_diff_ms": "slower-min-diff-ms",
           "slower_min_count": "slower-min-count", "max_digests": "max-digests", "explain_top": "explain-top"}


def verdict_options(f):
    """--baseline and the verdict thresholds; the command receives them as one dict, `verdict`."""

    @functools.wraps(f)
    def command(*args, **kwargs):
        return f(*args, verdict={name: kwargs.pop(name, None) for name in _FIELDS}, **kwargs)

    opts = [
        click.option("--baseline", default=None, metavar="HOST:PORT",
                     help="A/B: also replay against this server at the same time (the old version, restored from "
                          "the same backup) and compare errors, results and latency with it instead of production"),
        click.option("--slower-ratio", type=float, default=None,
                     help="a statement is slower when its p99 grew at least this factor [default: 1.5]"),
        click.option("--slower-min-diff-ms", type=float, default=None,
                     help="... and by at least this many ms [default: 1]"),
        click.option("--slower-min-count", type=int, default=None,
                     help="... over at least this many executions [default: 10]"),
        click.option("--max-digests", type=int, default=None,
                     help="latency histograms kept (3.6 KiB each); later digests share one 'other' row [default: 2000]"),
        click.option("--explain-top", type=int, default=None,
                     help="EXPLAIN FORMAT=JSON the slowest this many statements on the target [default: 20]"),
    ]
    for o in reversed(opts):
        command = o(command)
    return command


def verdict_form(kwargs: dict) -> dict:
    """The verdict options given on the command line, as API form fields (absent ones left out)."""
    return {field: str(kwargs[name]) for name, field in _FIELDS.items() if kwargs.get(name) is not None}


@click.command("report")
@click.argument("report_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--html", "html_path", default=None, type=click.Path(dir_okay=False),
              help="write the HTML page here [default: next to the replay's summary, replay-<time>.html]")
@click.option("--replay", "stamp", default=None, metavar="TIME",
              help="which replay of the directory (the <time> of replay-<time>.json; a shard of a sharded "
                   "replay: <time>-shard<i>of<N>) [default: the newest]")
def report(report_dir: str, html_path: str | None, stamp: str | None) -> None:
    """Print the verdict of a replay and (re)write its HTML page, from the files the replay wrote."""
    from fastproxy.errors import FastproxyError
    from fastproxy.report.files import format_verdict, load
    from fastproxy.report.html import render_report

    try:
        r = load(report_dir, stamp)
    except FastproxyError as e:
        raise click.ClickException(str(e)) from None
    out = html_path or r["paths"]["html"]
    _say_shard(r["paths"])
    if r["verdict"] is None:
        click.echo(format_verdict(r["summary"], None, r["failures"]), nl=False)
        raise click.ClickException(f"{r['paths']['summary']}: this replay has no verdict file (made by an older "
                                   f"fastproxy): no HTML page")
    try:
        page = render_report(r["summary"], r["verdict"], r["failures"], r["other_errors"])
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)  # rewritten: the page again
        with os.fdopen(fd, "w") as f:
            f.write(page)
    except OSError as e:
        raise click.ClickException(f"cannot write {out}: {e}") from None
    click.echo(format_verdict(r["summary"], r["verdict"], r["failures"], os.path.abspath(out)), nl=False)


def _say_shard(paths: dict) -> None:
    """A shard's verdict covers its share of the capture only: say which shard this is, and the others."""
    from fastproxy.report.files import SHARD_RE

    m = SHARD_RE.search(paths["stamp"])
    if not m:
        return
    i, n = int(m.group(1)), int(m.group(2))
    others = [s for s in paths["shards"] if s != paths["stamp"]]
    click.echo(f"replay {paths['stamp']}: shard {i}/{n} (--shard {i}/{n}) of a sharded replay: this verdict covers "
               f"that shard's share of the capture only; {len(paths['shards'])} of its {n} shards are here"
               + (": " + ", ".join(f"--replay {s}" for s in others) + " shows the others" if others else ""))
