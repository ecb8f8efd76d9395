"""`fastproxy traffic ...`: talks to running proxies over their HTTP API, like `tiproxyctl traffic`."""
from __future__ import annotations

import http.client
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request

import click

from fastproxy.cli_password import password_options, resolve_password
from fastproxy.cli_report import report, verdict_form, verdict_options
from fastproxy.replay.selection import PIPELINE_HELP, RESUME_HELP, cli_values, selection_options
from fastproxy.traffic_filter import CAPTURE_FILTER_FIELDS

API_CONTEXT = "fastproxy.api"  # click context meta: how to reach and authenticate to the API


def _addrs(curls: str) -> list[str]:
    addrs = [a.strip() for a in curls.split(",") if a.strip()]
    if not addrs:
        raise click.UsageError("--curls: give at least one HOST:PORT")
    return addrs


def _remember(ctx: click.Context, param: click.Parameter, value):
    ctx.meta.setdefault(API_CONTEXT, {})[param.name] = value
    return value


def api_options(fn):
    """--token-file and the TLS options (as tiproxyctl's) of every command that calls the API; they go
    to the click context, not into each command's arguments."""
    context = dict(expose_value=False, callback=_remember)
    options = [
        click.option("--token-file", type=click.Path(dir_okay=False), envvar="FASTPROXY_API_TOKEN_FILE", **context,
                     help="file holding the API's bearer token (the proxy's api.token-file); "
                          "env FASTPROXY_API_TOKEN_FILE"),
        click.option("--ca", type=click.Path(dir_okay=False), **context,
                     help="CA (PEM) to verify the API's certificate; implies https"),
        click.option("--cert", type=click.Path(dir_okay=False), **context,
                     help="client certificate (PEM) for mutual TLS; implies https"),
        click.option("--key", type=click.Path(dir_okay=False), **context, help="private key (PEM) of --cert"),
        click.option("-k", "--insecure", is_flag=True, **context, help="https without verifying the API's certificate"),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


class _Api:
    """How to reach the API: scheme, TLS context, Authorization header."""

    def __init__(self, settings: dict) -> None:
        from fastproxy.api_security import read_token_file
        from fastproxy.errors import ConfigError

        ca, cert, key, insecure = (settings.get(k) for k in ("ca", "cert", "key", "insecure"))
        self.headers = {}
        if settings.get("token_file"):
            try:
                token = read_token_file(settings["token_file"], "--token-file")
            except ConfigError as e:
                raise click.ClickException(str(e)) from None
            self.headers["Authorization"] = "Bearer " + token.decode("ascii")
        self.tls = _client_tls(ca, cert, key, bool(insecure)) if (ca or cert or key or insecure) else None
        self.scheme = "https" if self.tls else "http"


def _client_tls(ca: str | None, cert: str | None, key: str | None, insecure: bool) -> ssl.SSLContext:
    if key and not cert:
        raise click.UsageError("--key needs --cert")
    try:
        if insecure:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        else:
            ctx = ssl.create_default_context(cafile=ca or None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if cert:
            ctx.load_cert_chain(cert, key or None)
    except (OSError, ssl.SSLError) as e:
        raise click.ClickException(f"--ca/--cert/--key: {getattr(e, 'strerror', None) or e}") from None
    return ctx


def _call(api: _Api, addr: str, method: str, path: str, form: dict | None = None,
          timeout: float = 30.0) -> tuple[int, str]:
    data = urllib.parse.urlencode({k: v for k, v in (form or {}).items() if v is not None}).encode() if form else None
    req = urllib.request.Request(f"{api.scheme}://{addr}{path}", data=data, method=method, headers=api.headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=api.tls) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", None) or f"{type(e).__name__}: {e}"
        hint = "" if api.tls else " (if the API speaks https, give --ca, or -k to skip verification)"
        raise click.ClickException(f"cannot reach the fastproxy API at {api.scheme}://{addr}: {reason}{hint}") from None


def _each(curls: str, method: str, path: str, form: dict | None = None, timeout: float = 30.0) -> None:
    failed = False
    addrs = _addrs(curls)
    api = _Api(click.get_current_context().meta.get(API_CONTEXT, {}))
    for addr in addrs:
        status, body = _call(api, addr, method, path, form, timeout)
        prefix = f"{addr}: " if len(addrs) > 1 else ""
        if status >= 400:
            failed = True
            click.echo(f"{prefix}error (HTTP {status}): {body.strip()}", err=True)
        else:
            click.echo(f"{prefix}{body.rstrip()}")
    if failed:
        sys.exit(1)


curls_option = click.option("--curls", default="127.0.0.1:3080", show_default=True,
                            help="API address(es) of running fastproxy instances, comma-separated")


def capture_filter_options(fn):
    """--schema, --only-user, ... (fastproxy/traffic_filter.py CAPTURE_FILTER_FIELDS)."""
    for name, help_text in reversed(CAPTURE_FILTER_FIELDS):
        fn = click.option(f"--{name}", name.replace("-", "_"), default=None, help=help_text)(fn)
    return fn


@click.group()
def traffic() -> None:
    """Capture and replay traffic through running proxies (HTTP API)."""


@traffic.command()
@curls_option
@api_options
@click.option("--output", required=True, help="directory (on the proxy's machine) for the traffic files")
@click.option("--duration", required=True, help="how long to capture, e.g. 30s, 10m, 1h")
@click.option("--compress/--no-compress", default=True, show_default=True, help="lz4-compress the traffic files")
@click.option("--encryption-method", type=click.Choice(["", "aes256-ctr"]), default="", show_default=True,
              help="encrypt the files with the key at security.encryption-key-path")
@capture_filter_options
def capture(curls: str, output: str, duration: str, compress: bool, encryption_method: str, **filters) -> None:
    """Start capturing every connection's traffic (or what the filters keep of it)."""
    _each(curls, "POST", "/api/traffic/capture", {"output": output, "duration": duration,
                                                   "compress": str(compress).lower(),
                                                   "encryption-method": encryption_method,
                                                   **{name: filters.pop(name.replace("-", "_"), None)
                                                      for name, _ in CAPTURE_FILTER_FIELDS}})


@traffic.command()
@curls_option
@api_options
@click.option("--input", "input_dir", required=True,
              help="capture directory, or a slow/general log file (on the proxy's machine)")
@click.option("--username", required=True, help="user the replay logs in as")
@password_options
@click.option("--speed", type=float, default=1.0, show_default=True, help="replay speed (0 = as fast as possible)")
@click.option("--pipeline", type=int, default=1, show_default=True, help=PIPELINE_HELP)
@click.option("--read-only", "read_only", is_flag=True, help="replay only statements that do not write")
@click.option("--order", type=click.Choice(["causal", "connection"]), default="causal", show_default=True,
              help="causal: a statement waits for what other connections had committed (and locked) before it "
                   "started in production; connection: per-connection order only")
@click.option("--encryption-key-path", default=None, help="key file for an encrypted capture")
@click.option("--format", "input_format", type=click.Choice(["auto", "native", "slow-log", "general-log", "tiproxy"]),
              default="auto", show_default=True, help="input format (a capture directory, or a log file)")
@click.option("--tls", is_flag=True, help="replay connections use TLS")
@click.option("--tls-ca", default="", help="CA bundle (on the proxy's machine) the target's certificate must chain to")
@click.option("--tls-skip-verify", is_flag=True, help="TLS without verifying the target's certificate")
@click.option("--users-file", default=None,
              help="path, on the proxy's machine, of a TOML file of `user = \"password\"` (mode 0600): each "
                   "connection replays as its captured user; users not in it replay as --username")
@click.option("--replay-unknown", is_flag=True,
              help="also send the commands that were in flight when production's backend died")
@click.option("--dry-run", is_flag=True,
              help="decode, filter, plan and schedule at --speed, but send nothing: what the replayer sustains")
@click.option("--report-dir", default=None,
              help="directory (on the proxy's machine) for the summary files and the checkpoint "
                   "[default: the input directory]")
@click.option("--resume", is_flag=True, help=RESUME_HELP)
@selection_options
@verdict_options
def replay(curls: str, input_dir: str, username: str, password: str | None, password_file: str | None, speed: float,
           pipeline: int, read_only: bool, order: str, encryption_key_path: str | None, input_format: str, tls: bool, tls_ca: str,
           tls_skip_verify: bool, users_file: str | None, replay_unknown: bool, dry_run: bool,
           report_dir: str | None, resume: bool, verdict: dict, **selection) -> None:
    """Replay a capture against the proxy's backends."""
    password = resolve_password(password, password_file)
    _each(curls, "POST", "/api/traffic/replay", {"input": input_dir, "username": username, "password": password,
                                                  "speed": repr(speed), "pipeline": str(pipeline),
                                                  "readonly": str(read_only).lower(),
                                                  "order": order, "encryption-key-path": encryption_key_path,
                                                  "format": input_format, "tls": str(tls).lower(),
                                                  "tls-ca": tls_ca, "tls-skip-verify": str(tls_skip_verify).lower(),
                                                  "users-file": users_file, "replay-unknown": str(replay_unknown).lower(),
                                                  "dry-run": str(dry_run).lower(),
                                                  "report-dir": report_dir, "resume": str(resume).lower(),
                                                  **cli_values(selection), **verdict_form(verdict)})


@traffic.command()
@curls_option
@api_options
def show(curls: str) -> None:
    """Show the last traffic jobs (JSON)."""
    _each(curls, "GET", "/api/traffic/show")


@traffic.command()
@curls_option
@api_options
@click.option("--type", "kind", type=click.Choice(["", "capture", "replay"]), default="",
              help="which job to cancel (default: both)")
@click.option("--graceful", is_flag=True, help="replay: stop reading, let queued commands finish")
def cancel(curls: str, kind: str, graceful: bool) -> None:
    """Cancel the running capture and/or replay."""
    # a graceful replay cancel returns once the queued commands are done: allow for it
    _each(curls, "POST", "/api/traffic/cancel", {"type": kind, "graceful": str(graceful).lower()},
          timeout=3600 if graceful else 60)


format_option = click.option(
    "--format", "input_format", type=click.Choice(["auto", "native", "slow-log", "general-log", "tiproxy"]),
    default="auto", show_default=True,
    help="input format: a fastproxy capture, a MySQL/MariaDB slow or general query log, or a TiProxy capture")


@traffic.command()
@click.argument("input_dir")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of readable lines")
@click.option("--limit", type=int, default=None, help="print at most this many records (the summary counts all)")
@click.option("--encryption-key-path", default=None, help="key file for an encrypted capture")
@format_option
def inspect(input_dir: str, as_json: bool, limit: int | None, encryption_key_path: str | None,
            input_format: str) -> None:
    """Print a capture's (or a log's) records and a summary."""
    from fastproxy.capture.crypto import load_key
    from fastproxy.capture.inspect import inspect_capture
    from fastproxy.errors import FastproxyError

    try:
        key = load_key(encryption_key_path) if encryption_key_path else None
        inspect_capture(input_dir, key=key, as_json=as_json, limit=limit, fmt=input_format)
    except FastproxyError as e:
        raise click.ClickException(str(e)) from None


@traffic.command()
@click.option("--input", "input_path", required=True,
              help="a slow log, a general log, a TiProxy capture directory (or a fastproxy capture)")
@click.option("--output", required=True, type=click.Path(), help="new directory for the fastproxy capture")
@format_option
@click.option("--encryption-key-path", default=None,
              help="key file: decrypts an encrypted input, and encrypts the output with --encrypt")
@click.option("--encrypt", is_flag=True, help="encrypt the output (aes256-ctr) with --encryption-key-path")
@click.option("--compress/--no-compress", default=True, show_default=True, help="lz4-compress the output")
def convert(input_path: str, output: str, input_format: str, encryption_key_path: str | None, encrypt: bool,
            compress: bool) -> None:
    """Write any replayable input as a fastproxy capture (secrets filtered as in a capture)."""
    import os

    from fastproxy.capture.crypto import load_key
    from fastproxy.errors import FastproxyError
    from fastproxy.inputs import open_input
    from fastproxy.inputs.convert import convert as run_convert

    try:
        key = load_key(encryption_key_path) if encryption_key_path else None
        if encrypt and key is None:
            raise click.UsageError("--encrypt needs --encryption-key-path")
        source = open_input(input_path, input_format, key)
        meta = run_convert(source, os.path.abspath(output), compress=compress,
                           encryption_key=key if encrypt else None)
    except FastproxyError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"converted {source.format} {input_path} -> {output}: {meta['commands']} commands, "
               f"{meta['connections']} connections, {len(meta['files'])} file(s)")
    for why, n in meta.get("input_skipped", {}).items():
        click.echo(f"  not converted: {why}: {n}")


def register(main: click.Group) -> None:
    from fastproxy.cli_replay import demo, replay_standalone

    traffic.add_command(report)
    main.add_command(traffic)
    main.add_command(replay_standalone, "replay")
    main.add_command(demo, "demo")
