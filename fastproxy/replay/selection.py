"""The replay options that choose what is replayed and when — filters, shard, start time, several
inputs — parsed once for the command line (`fastproxy replay`, `fastproxy traffic replay`) and for the
API's form fields (same names without the dashes' leading `--`)."""
from __future__ import annotations

import datetime
import time

import click

from fastproxy.errors import ConfigError
from fastproxy.replay.filters import Filters

RESUME_HELP = ("continue the replay from its checkpoint (in the report directory) after a crash or a cancel; "
               "give the same input, shard and options (fastproxy/replay/checkpoint.py)")
PIPELINE_HELP = ("with --speed 0: up to N commands in flight per connection. Reads outside transactions go "
                 "behind the one in flight without waiting for its answer (the server still runs each "
                 "connection's commands in order); their latencies count from the previous answer")

# (API field / CLI flag, help)
FILTER_FIELDS = [
    ("schema", "replay only statements run in these databases (comma-separated); session statements are kept"),
    ("only-user", "replay only the connections of these users (comma-separated)"),
    ("cmd-type", "replay only these command types, e.g. Query,StmtExecute"),
    ("class", "replay only these statement classes: read, write, ddl, other (comma-separated)"),
    ("digest", "replay only statements with these SQL digests (comma-separated)"),
    ("exclude-digest", "do not replay statements with these SQL digests (comma-separated)"),
    ("start-time", "replay from this time of the capture: ISO 8601, or a duration after its start (10m)"),
    ("end-time", "replay until this time of the capture: ISO 8601, or a duration after its start"),
    ("sample", "replay this share of the connections, whole (e.g. 10%)"),
    ("shard", "replay shard i of N (i/N): the connections with hash(conn) % N == i"),
    ("start-at", "wall-clock time to start at (ISO 8601 or Unix seconds), shared by the shards of one replay"),
]


def filters_from(values: dict) -> Filters:
    """Filters from a dict keyed by the field names above (missing or empty: no filter)."""
    g = lambda k: values.get(k) or ""  # noqa: E731
    return Filters.parse(schema=g("schema"), user=g("only-user"), cmd_type=g("cmd-type"),
                         statement_class=g("class"), digest=g("digest"), exclude_digest=g("exclude-digest"),
                         start_time=g("start-time"), end_time=g("end-time"), sample=g("sample"), shard=g("shard"))


MAX_START_AT_AGO = 86400.0  # a --start-at further in the past is a mistake, not a late shard


def parse_start_at(value) -> float | None:
    """Unix time to start at. One in the past anchors the schedule there (a late shard is late by
    that much); more than a day ago is refused."""
    text = str(value or "").strip()
    if not text:
        return None
    try:
        at = float(text)
    except ValueError:
        try:
            t = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(f"start-at: expected an ISO 8601 time or Unix seconds, got {text!r}") from None
        if t.tzinfo is None:
            t = t.replace(tzinfo=datetime.timezone.utc)
        at = t.timestamp()
    if at < time.time() - MAX_START_AT_AGO:
        raise ConfigError(f"start-at: {text!r} is more than a day ago "
                          f"({datetime.datetime.fromtimestamp(at, datetime.timezone.utc).isoformat()}); "
                          f"give the time all shards start at")
    return at


def split_inputs(value) -> list[str]:
    """Several inputs: a list (repeated --input) or one comma-separated field."""
    items = value if isinstance(value, (list, tuple)) else str(value or "").split(",")
    return [str(v).strip() for v in items if str(v).strip()]


def selection_options(fn):
    """click options for every field of FILTER_FIELDS (dest: the field name with _ for -)."""
    for name, help_text in reversed(FILTER_FIELDS):
        fn = click.option(f"--{name}", name.replace("-", "_"), default=None, help=help_text)(fn)
    return fn


def cli_values(kwargs: dict) -> dict:
    """Pop the selection options out of a click command's kwargs, keyed by field name."""
    return {name: kwargs.pop(name.replace("-", "_"), None) for name, _ in FILTER_FIELDS}
