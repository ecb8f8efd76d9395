"""The fields of a traffic-job request, decoded and checked before any job starts.

Fields come form-encoded in the body (`application/x-www-form-urlencoded`) or in the query string,
as TiProxy's API takes them (a secret — the replay's password — only in the body: a URL is logged); other bodies (multipart uploads, JSON) are refused. Each field must be
known for its request, given once, valid UTF-8 and free of control characters; paths must be
absolute (they name places on the proxy's machine, not the caller's); the capture's output and
the replay's inputs may also be `s3://bucket/prefix` locations (the job decides what it supports). A bad field raises
ConfigError naming it (the API answers 400); a secret's value is never part of the message.
"""
from __future__ import annotations

import os
import unicodedata
from urllib.parse import unquote_to_bytes

from fastproxy.errors import ConfigError
from fastproxy.replay.selection import FILTER_FIELDS
from fastproxy.report.verdict import VERDICT_FIELDS
from fastproxy.storage import is_s3
from fastproxy.traffic_filter import CAPTURE_FILTER_FIELDS

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
MAX_FIELD_CHARS = 4096

TEXT, PATH, SECRET = "text", "path", "secret"
LOCATION = "location"  # an absolute path or s3://bucket/prefix
INPUTS = "inputs"  # comma-separated locations

# request -> field -> kind. A field a job learns to take must be added here, or the API refuses it
# (the replay's selection fields and the verdict's thresholds come from their own tables).
FIELDS: dict[str, dict[str, str]] = {
    "capture": {"output": LOCATION, "duration": TEXT, "compress": TEXT, "encryption-method": TEXT,
                **{name: TEXT for name, _ in CAPTURE_FILTER_FIELDS}},
    "replay": {"input": INPUTS, "username": TEXT, "password": SECRET, "speed": TEXT, "pipeline": TEXT, "readonly": TEXT,
               "order": TEXT, "encryption-key-path": PATH, "report-dir": PATH, "format": TEXT,
               "tls": TEXT, "tls-ca": PATH, "tls-skip-verify": TEXT, "users-file": PATH, "replay-unknown": TEXT,
               "dry-run": TEXT,
               "resume": TEXT,
               **{name: TEXT for name, _ in FILTER_FIELDS},
               "baseline": TEXT, **{name: TEXT for name in VERDICT_FIELDS}},
    "cancel": {"type": TEXT, "graceful": TEXT},
}

# line and paragraph separators end a log line as surely as "\n" does
_LINE_BREAKERS = {"\u2028", "\u2029", "\u0085"}


def parse_form(request_kind: str, query: str, body: bytes, content_type: str, charset: str | None = None) -> dict[str, str]:
    """The checked fields of one request: `query` is the raw (still percent-encoded) query string,
    `body` the raw body with its media type (without parameters) and charset."""
    fields = FIELDS[request_kind]
    if body:
        if content_type != FORM_CONTENT_TYPE:
            raise ConfigError(f"Content-Type: {content_type or 'none'} is not accepted; send the fields "
                              f"form-encoded ({FORM_CONTENT_TYPE}) or in the query string")
        if charset and charset.lower().replace("-", "") != "utf8":
            raise ConfigError(f"Content-Type: charset {charset} is not accepted; the fields must be UTF-8")
    in_query = _pairs(query.encode("utf-8", "surrogateescape"), "query string")
    for name, _ in in_query:
        if fields.get(name) == SECRET:  # a URL ends up in access logs, proxies' logs and shell histories
            raise ConfigError(f"{name}: send it in the form body ({FORM_CONTENT_TYPE}), not in the URL")
    pairs = in_query + _pairs(body, "form body")
    form: dict[str, str] = {}
    for name, value in pairs:
        kind = fields.get(name)
        if kind is None:
            raise ConfigError(f"{_shown(name)}: unknown field for {request_kind} (known: {', '.join(fields)})")
        if name in form:
            raise ConfigError(f"{name}: given more than once")
        _check(name, value, kind)
        form[name] = value
    return form


def _pairs(raw: bytes, where: str) -> list[tuple[str, str]]:
    out = []
    for piece in raw.split(b"&"):
        if not piece:
            continue
        raw_name, _, raw_value = piece.partition(b"=")
        try:
            name = unquote_to_bytes(raw_name.replace(b"+", b" ")).decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{where}: a field name is not valid UTF-8") from None
        try:
            value = unquote_to_bytes(raw_value.replace(b"+", b" ")).decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{_shown(name)}: not valid UTF-8") from None
        out.append((name, value))
    return out


def _shown(name: str) -> str:
    """A field name fit for a one-line message (a name may be anything a client sent)."""
    return ascii(name)[1:-1][:100]


def _check(name: str, value: str, kind: str) -> None:
    if len(value) > MAX_FIELD_CHARS:
        raise ConfigError(f"{_shown(name)}: longer than {MAX_FIELD_CHARS} characters")
    for i, ch in enumerate(value):
        if unicodedata.category(ch) == "Cc" or ch in _LINE_BREAKERS:
            where = "" if kind == SECRET else f" at position {i}"
            raise ConfigError(f"{_shown(name)}: contains the control character U+{ord(ch):04X}{where}")
    places = {PATH: [value], LOCATION: [value], INPUTS: value.split(",")}.get(kind, [])
    for path in (p.strip() for p in places):
        if path and not os.path.isabs(path) and not (kind != PATH and is_s3(path)):
            raise ConfigError(f"{name}: must be an absolute path, got {path!r} (it names a place on the proxy's "
                              f"machine, not the caller's)")
