"""`fastproxy replay` (standalone, no proxy needed) and `fastproxy demo`."""
from __future__ import annotations

import asyncio
import sys

import click

from fastproxy.cli_password import password_options, resolve_password
from fastproxy.cli_report import verdict_form, verdict_options
from fastproxy.config import parse_addr
from fastproxy.errors import FastproxyError
from fastproxy.replay.selection import PIPELINE_HELP, RESUME_HELP, selection_options


@click.command("replay")
@click.option("--target", default=None,
              help="HOST:PORT of the test server (or of a proxy in front of it); not needed with --dry-run")
@click.option("--input", "input_dir", required=True, multiple=True,
              help="capture directory (or s3://bucket/prefix), TiProxy capture directory, or a slow/general query "
                   "log file; repeat it to replay the captures of several proxies together")
@click.option("--format", "input_format", type=click.Choice(["auto", "native", "slow-log", "general-log", "tiproxy"]),
              default="auto", show_default=True, help="input format")
@click.option("--username", required=True, help="user the replay logs in as")
@password_options
@click.option("--speed", type=float, default=1.0, show_default=True, help="replay speed; 0 = as fast as possible")
@click.option("--pipeline", type=int, default=1, show_default=True, help=PIPELINE_HELP)
@click.option("--read-only", "read_only", is_flag=True, help="replay only statements that do not write")
@click.option("--order", type=click.Choice(["causal", "connection"]), default="causal", show_default=True,
              help="causal: a statement waits for what other connections had committed (and locked) before it "
                   "started in production; connection: per-connection order only")
@click.option("--progress", is_flag=True, help="show a progress bar")
@click.option("--report-dir", default=None, help="where the summary files go [default: the input directory]")
@click.option("--no-report-tables", is_flag=True, help="do not write tiproxy_traffic_report tables on the target")
@click.option("--resume", is_flag=True, help=RESUME_HELP)
@click.option("--encryption-key-path", default=None, help="key file for an encrypted capture")
@click.option("--users-file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="TOML file of `user = \"password\"`: each connection replays as its captured user (mode 0600); "
                   "users not in it replay as --username")
@click.option("--replay-unknown", is_flag=True,
              help="also send the commands that were in flight when production's backend died")
@click.option("--dry-run", is_flag=True,
              help="decode, filter, plan and schedule at --speed, but connect to nothing and send nothing: what the "
                   "replayer sustains and what it would send")
@click.option("--tls", is_flag=True, help="connect to the target with TLS (as MySQL clients' ssl-mode=REQUIRED)")
@click.option("--tls-ca", default="", help="CA bundle the target's certificate must chain to (implies --tls)")
@click.option("--tls-skip-verify", is_flag=True, help="TLS without verifying the target's certificate")
@selection_options
@verdict_options
def replay_standalone(target: str | None, input_dir: tuple[str, ...], username: str, password: str | None,
                      password_file: str | None, speed: float, pipeline: int, read_only: bool, order: str, progress: bool,
                      report_dir: str | None,
                      no_report_tables: bool, encryption_key_path: str | None, input_format: str,
                      users_file: str | None, replay_unknown: bool, dry_run: bool, tls: bool, tls_ca: str,
                      tls_skip_verify: bool, resume: bool, verdict: dict, **selection) -> None:
    """Replay a capture directly against a test server and print a summary and the verdict."""
    from fastproxy.capture.crypto import load_key
    from fastproxy.replay.engine import ReplayOptions
    from fastproxy.replay.job import ReplayRun, check_pipeline, check_speed, format_summary
    from fastproxy.report.verdict import verdict_options_from
    from fastproxy.replay.selection import cli_values, filters_from, parse_start_at

    if not target and not dry_run:
        raise click.UsageError("Missing option '--target' (only a --dry-run needs none).")
    password = resolve_password(password, password_file) if not dry_run or password or password_file else ""
    try:
        host, port = parse_addr(target, "--target") if target else ("127.0.0.1", 0)
        key = load_key(encryption_key_path) if encryption_key_path else None
        values = cli_values(selection)
        options = ReplayOptions(host=host, port=port, username=username, password=password,
                                speed=check_speed(speed), pipeline=check_pipeline(pipeline, speed),
                                readonly=read_only, encryption_key=key,
                                input_format=input_format, filters=filters_from(values),
                                start_at=parse_start_at(values["start-at"]), tls=tls, tls_ca=tls_ca,
                                tls_skip_verify=tls_skip_verify, replay_unknown=replay_unknown, order=order,
                                dry_run=dry_run)
        if users_file:
            from fastproxy.replay.users import load_users_file

            options.users = load_users_file(users_file)
        inputs = list(input_dir)
        form = verdict_form(verdict)
        run = ReplayRun(inputs if len(inputs) > 1 else inputs[0], options, report_dir,
                        write_tables=not no_report_tables and not dry_run, verdict_options=verdict_options_from(form),
                        baseline=parse_addr(form["baseline"], "--baseline") if "baseline" in form else None,
                        resume=resume)
    except FastproxyError as e:
        raise click.ClickException(str(e)) from None
    import uvloop

    try:
        summary = uvloop.run(_run_with_progress(run, progress))
    except FastproxyError as e:  # e.g. the target refused the replay's own user: nothing was replayed
        raise click.ClickException(str(e)) from None
    click.echo(format_summary(summary), nl=False)
    click.echo(run.verdict.text(summary), nl=False)
    for path in summary.get("summary_files", []):
        click.echo(f"  wrote {path}")
    if summary.get("summary_files_error"):
        click.echo(f"warning: summary files: {summary['summary_files_error']}", err=True)
    if summary.get("report_tables_error"):
        click.echo(f"warning: report tables not written: {summary['report_tables_error']}", err=True)
    from fastproxy.report.files import incomplete_reasons

    if incomplete_reasons(summary):
        sys.exit(EXIT_INCOMPLETE)  # commands were not replayed: the verdict cannot be trusted as clean


EXIT_INCOMPLETE = 3  # the replay ran, but commands could not be replayed or the input not read (README)


async def _run_with_progress(run, progress: bool) -> dict:
    if not progress:
        return await run.run()
    task = asyncio.get_running_loop().create_task(run.run())
    # the input's commands, before filters (a log that does not know its count yet: per mille read)
    known = run.engine.stats.commands_total
    total = known or 1000
    with click.progressbar(length=total, label="replaying", file=sys.stderr, show_pos=bool(known),
                           item_show_func=lambda _: f"lag p99 {run.engine.lag.as_dict()['p99_ms']} ms") as bar:
        shown = 0
        while not task.done():
            await asyncio.sleep(0.2)
            now = min(total, int(run.engine.progress() * total))
            bar.update(now - shown, now)
            shown = now
        if not run.engine.canceled:
            bar.update(total - shown)
    return task.result()


@click.command("demo")
@click.option("--workload-seconds", type=click.FloatRange(min=0, min_open=True), default=8.0, show_default=True,
              help="length of the captured workload")
@click.option("--keep", is_flag=True, help="keep the servers running until Ctrl-C")
@click.option("--output", default=None, help="capture directory [default: a temporary one]")
def demo(workload_seconds: float, keep: bool, output: str | None) -> None:
    """The whole story on scratch MariaDB servers: proxy, workload, capture, replay, report."""
    from fastproxy.demo import run_demo

    sys.exit(run_demo(workload_seconds, keep, output))
