"""What replay can read besides fastproxy's own captures: MySQL/MariaDB slow and general query
logs, and TiProxy's traffic captures. Each source streams the same `Record`s a capture holds, so the
replay engine, `traffic inspect` and `traffic convert` treat every input alike.

A source has `meta` (the keys a capture's meta has, plus what the input does not know:
`outcomes_recorded`, `status_flags_recorded`, `last_insert_id_recorded`, `rows_recorded`, ...:
common.RECORDED_KEYS), `format`, `stats`
(entries skipped, and why) and iterates Records in the order the input holds them.
"""
from __future__ import annotations

import os

from fastproxy.errors import ConfigError, TrafficFormatError

FORMATS = ("native", "slow-log", "general-log", "tiproxy")


def detect_format(path: str) -> str:
    """The input format of `path`, when unambiguous; TrafficFormatError otherwise."""
    from fastproxy.capture.record import FILE_RE, META_NAME

    from fastproxy.storage import is_s3, open_storage

    if is_s3(path) or os.path.isdir(path):
        names = open_storage(path).listdir()
        if any(FILE_RE.match(n) for n in names):
            return "native"
        from fastproxy.inputs.tiproxy import TIPROXY_FILE_RE

        if any(TIPROXY_FILE_RE.match(n) for n in names):
            return "tiproxy"
        if META_NAME in names:
            return "native"
        raise TrafficFormatError(f"{path}: neither a fastproxy capture nor a TiProxy capture "
                                 f"(no traffic-* files); give --format")
    if not os.path.isfile(path):
        raise TrafficFormatError(f"{path}: no such file or directory")
    with open(path, "rb") as f:
        head = f.read(64 * 1024)
    from fastproxy.inputs.generallog import looks_like_general_log
    from fastproxy.inputs.slowlog import looks_like_slow_log

    slow, general = looks_like_slow_log(head), looks_like_general_log(head)
    if slow and not general:
        return "slow-log"
    if general and not slow:
        return "general-log"
    raise TrafficFormatError(f"{path}: cannot tell whether this is a slow log or a general log; "
                             f"give --format slow-log or --format general-log")


def open_input(path: str, fmt: str = "auto", encryption_key: bytes | None = None):
    """A Record source for `path` in format `fmt` ("auto" detects it)."""
    path = os.fspath(path)
    if fmt in ("", "auto", None):
        fmt = detect_format(path)
    if fmt not in FORMATS:
        raise ConfigError(f"format: expected one of {', '.join(FORMATS)} or auto, got {fmt!r}")
    if fmt == "native":
        from fastproxy.capture.reader import TrafficReader

        reader = TrafficReader(path, encryption_key)
        reader.check_key()  # an encrypted capture without its key: refused before anything is replayed
        reader.format = "native"
        reader.stats = {}
        return reader
    if fmt == "tiproxy":
        from fastproxy.inputs.tiproxy import TiProxySource

        return TiProxySource(path, encryption_key)
    if os.path.isdir(path) or path.startswith("s3://"):
        raise TrafficFormatError(f"{path}: a {fmt} input is a local file, not a directory or an object prefix")
    if fmt == "slow-log":
        from fastproxy.inputs.slowlog import SlowLogSource

        _check_entries(path, fmt)
        return SlowLogSource(path)
    from fastproxy.inputs.generallog import GeneralLogSource

    _check_entries(path, fmt)
    return GeneralLogSource(path)


def _check_entries(path: str, fmt: str) -> None:
    """A log given with --format must hold at least one entry of that format: a wrong --format would
    read as an empty log (0 commands, nothing said)."""
    from fastproxy.inputs.generallog import looks_like_general_log
    from fastproxy.inputs.slowlog import looks_like_slow_log

    if not os.path.isfile(path):
        raise TrafficFormatError(f"{path}: no such file")
    looks = looks_like_slow_log if fmt == "slow-log" else looks_like_general_log
    with open(path, "rb") as f:
        for line in f:  # up to the first entry of the format
            if looks(line.rstrip(b"\r\n")):
                return
    raise TrafficFormatError(f"no {fmt} entries found in {path} (is it a {fmt}? give the right --format, "
                             f"or --format auto)")


def open_inputs(paths, fmt: str = "auto", encryption_key: bytes | None = None):
    """One source for several inputs (e.g. the captures of several proxies, one directory each),
    replayed together as one workload."""
    if isinstance(paths, str):
        paths = [paths]
    sources = [open_input(p, fmt, encryption_key) for p in paths]
    if len(sources) == 1:
        return sources[0]
    from fastproxy.inputs.merge import MergedSource

    return MergedSource(sources)
