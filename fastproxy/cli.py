"""The `fastproxy` command: serve, traffic capture|replay|show|cancel|inspect, replay, demo."""
from __future__ import annotations

import sys

import click

from fastproxy.config import KEYS, Config
from fastproxy.errors import ConfigError, FastproxyError


def _config_options(fn):
    # one --section.key flag per configuration key, generated from the same table as the TOML keys
    for key in reversed(KEYS):
        dest = key.name.replace(".", "__").replace("-", "_")
        fn = click.option(f"--{key.name}", dest, default=None, help=f"{key.help} [default: {key.default}]")(fn)
    return fn


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="fastproxy")
def main() -> None:
    """fastproxy: a MySQL-protocol proxy that captures production traffic and replays it on a test cluster."""


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML configuration file")
@_config_options
def serve(config_path: str | None, **flags) -> None:
    """Run the proxy (clients connect to proxy.addr instead of the database)."""
    overrides = {k.name: flags[k.name.replace(".", "__").replace("-", "_")] for k in KEYS}
    try:
        config = Config.load(config_path, overrides)
    except ConfigError as e:
        raise click.ClickException(f"bad configuration: {e}") from None
    from fastproxy.app import run

    try:
        run(config)
    except OSError as e:
        raise click.ClickException(f"cannot start: {e}") from None


from fastproxy import cli_traffic  # noqa: E402  (registers `traffic`, `replay`, `demo`)

cli_traffic.register(main)


def entry() -> None:
    try:
        main()
    except FastproxyError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
