"""Dry run: the whole replay — decode, filter, plan (causal order), schedule at the requested speed —
without connecting to the target or sending anything, to measure what the replayer itself can
sustain and to see what a replay would send.

`DryClient` stands in for `ReplayClient` (fastproxy/replay/client.py) with the same methods: it
counts each command the engine hands it and answers with what production answered (the captured
outcome, a statement id for a prepare), on the next turn of the event loop as a server's answer
would arrive. The engine runs unchanged on top of it, so its counts are a real replay's
(commands replayed, filtered, skipped, connections), except where a real replay would differ from
production (new failures, transaction retries): a dry run knows nothing about the target.
"""
from __future__ import annotations

import asyncio
import itertools

from fastproxy._packet import CommandResult, expects_response
from fastproxy.capture.record import OUTCOME_ERR, OUTCOME_OK
from fastproxy.constants import COMMAND
from fastproxy.report.explain import placeholders_to_format
from fastproxy.textresult import TextResult

_connection_ids = itertools.count(1)


class DryRunCounters:
    """What a dry run would have sent (the summary's `dry_run` section)."""

    __slots__ = ("commands", "bytes", "own_statements", "logins")

    def __init__(self) -> None:
        self.commands = 0  # commands of the capture that would have been sent
        self.bytes = 0  # their payload bytes and the replayer's own statements' (pins, rollbacks), headers included
        self.own_statements = 0  # the replayer's own: pins, re-prepares, rollbacks, session rebuilds
        self.logins = 0  # connections that would have been opened (reconnects included)

    def as_dict(self) -> dict:
        return {"commands_would_send": self.commands, "bytes_would_send": self.bytes,
                "own_statements_would_send": self.own_statements, "connections_would_open": self.logins}


def count_placeholders(sql: str) -> int:
    """`?` parameters of a statement to prepare (outside quotes and comments): what the server
    would answer as num_params."""
    return placeholders_to_format(sql).replace("%%", "").count("%s")


class _Tracker:
    session_track = True  # the answers say nothing about the current database: never asked


class DryClient:
    """A replay connection that sends nothing (see the module's docstring)."""

    ready = True
    tls = False
    server_version = "dry-run"

    def __init__(self, on_result, on_lost, owner, counters: DryRunCounters) -> None:
        self.on_result = on_result
        self.on_lost = on_lost
        self.owner = owner
        self.counters = counters
        self.closed = False
        self.connection_id = next(_connection_ids)
        self.tracker = _Tracker()
        self.infiles = None
        self.on_infile = None
        self._next_stmt_id = 1
        self._loop = asyncio.get_running_loop()

    @classmethod
    async def connect(cls, host: str, port: int, user: str, password: str, database: str | None, *,
                      on_result, on_lost, owner=None, counters: DryRunCounters, **_ignored) -> "DryClient":
        counters.logins += 1
        return cls(on_result, on_lost, owner, counters)

    # ---- the ReplayClient interface the engine uses ---------------------------------------------
    def send(self, payload: bytes, tag=None) -> None:
        self._count(payload, tag)
        result = self._answer(payload, tag)
        if self.infiles:  # the files production's server asked for
            for content in self.infiles:
                if self.on_infile is not None:
                    self.on_infile(content is not None)
            self.infiles = None
        self._loop.call_soon(self._deliver, result)

    def send_only(self, payload: bytes) -> None:
        self._count(payload, None)

    def cork(self) -> None:  # ReplayClient holds writes back to send them together: nothing to hold here
        pass

    def uncork(self) -> None:
        pass

    async def query(self, sql) -> CommandResult:
        self.counters.own_statements += 1
        return self._ok(COMMAND.COM_QUERY, None)

    async def query_rows(self, sql: str) -> TextResult:
        self.counters.own_statements += 1
        # no server to ask: an error, so the engine keeps the database it knows
        return TextResult(err_code=1, err_msg="dry run: no server")

    async def change_user(self, user: str, password: str, database: str | None) -> CommandResult:
        self.counters.own_statements += 1
        return self._ok(COMMAND.COM_CHANGE_USER, None)

    def close(self, quit_first: bool = True) -> None:
        self.closed = True

    # ---- answers ---------------------------------------------------------------------------------
    def _count(self, payload: bytes, tag) -> None:
        c = self.counters
        if tag is None:
            c.commands += 1
        else:
            c.own_statements += 1
        c.bytes += len(payload) + 4 * (1 + len(payload) // 0xFFFFFF)

    def _deliver(self, result: CommandResult) -> None:
        if not self.closed:
            self.on_result(self, result)

    def _ok(self, cmd: int, tag) -> CommandResult:
        r = CommandResult(cmd, tag)
        r.outcome = OUTCOME_OK
        return r

    def _answer(self, payload: bytes, tag) -> CommandResult:
        """Production's answer to the head command; OK for the replayer's own statements."""
        cmd = payload[0]
        r = self._ok(cmd, tag)
        if cmd == COMMAND.COM_STMT_PREPARE:
            r.stmt_id = self._next_stmt_id
            self._next_stmt_id += 1
            r.num_params = count_placeholders(payload[1:].decode("utf-8", "replace"))
        rec = self.owner.inflight if tag is None and self.owner is not None else None
        if rec is None or not expects_response(cmd):
            return r
        if rec.outcome == OUTCOME_ERR:
            r.outcome = OUTCOME_ERR
            r.err_code = rec.err_code
            r.sql_state = "HY000"
            r.err_msg = "dry run: failed as in the capture"
        elif cmd != COMMAND.COM_STMT_PREPARE:
            r.affected_rows = rec.affected_rows
        r.last_insert_id = rec.last_insert_id
        r.rows = rec.rows
        r.columns = rec.columns
        r.warnings = rec.warnings
        r.status_flags = rec.status_flags
        r.hash_ordered = rec.hash_ordered
        r.hash_unordered = rec.hash_unordered
        return r


class NoVerdict:
    """A dry run's verdict: nothing was replayed, so nothing is compared (same interface as
    fastproxy.report.session.VerdictSession, as ReplayRun uses it)."""

    verdict = None

    def flush(self, writer) -> None:
        pass

    async def finish(self, writer) -> None:
        pass

    def contents(self, base: str, summary: dict) -> dict:
        return {}

    def not_written(self, suffix: str, summary: dict, err: OSError) -> None:
        pass

    def text(self, summary: dict) -> str:
        return ""
