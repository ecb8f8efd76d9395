"""MySQL and MariaDB general query logs (file output) as a replay source.

    261203 11:13:53	     5 Connect	app@10.0.0.5 on shop using TCP/IP      (MariaDB: time only when the second changes)
    		     5 Query	SELECT 1
    2024-12-03T11:05:01.123456Z	    8 Query	SELECT 1          (MySQL: every line, microseconds)

The server writes a line when a command arrives, before running it, so entries are in start
order; a statement spanning lines continues until the next entry line. Prepared statements are
logged as `Prepare` (with `?`) and `Execute` (with the values in place): the `Execute` text is
replayed as a query, `Prepare`/`Close stmt` are counted and skipped — parameter types are not in
the log. The log has no outcomes and no durations: replay reports every error it meets, and the
latency comparison has nothing to compare with. MariaDB's times are the server's local time to the
second (read in this machine's time zone: set TZ to the server's if they differ); the statements of
one second are spread evenly across it in log order.
"""
from __future__ import annotations

import datetime
import os
import re
from typing import Iterator

from fastproxy.capture.record import Record
from fastproxy.constants import COMMAND
from fastproxy.errors import TrafficFormatError
from fastproxy.inputs.common import (LogConnections, SkipCounter, init_db_payload, query_payload,
                                     secret_filter, spread_within_seconds)

_LINE = re.compile(
    rb"^(?:(?P<maria>\d{6}\s+\d{1,2}:\d\d:\d\d)|(?P<mysql>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)?))?"
    rb"\t+\s*(?P<id>\d+) (?P<cmd>[A-Z][A-Za-z]*(?: [A-Za-z]+)?)\t(?P<arg>.*)$")
_SERVER_BANNER = re.compile(rb"^\S.*, Version: .* started with:$")
_CONNECT = re.compile(rb"^(?P<user>[^@\s]*)@(?P<host>\S*) on (?P<db>\S*)(?: using .*)?$")
COMMANDS = {b"Connect", b"Quit", b"Query", b"Init DB", b"Field List", b"Prepare", b"Execute", b"Close stmt",
            b"Reset stmt", b"Change user", b"Ping", b"Statistics", b"Processlist", b"Kill", b"Long Data",
            b"Fetch", b"Set option", b"Refresh", b"Shutdown", b"Debug", b"Binlog Dump", b"Register Slave",
            b"Daemon", b"Sleep", b"Time", b"Delayed insert", b"Table Dump", b"Connect Out", b"Error",
            b"Reset connection", b"Bulk execute", b"Slave worker", b"Slave IO", b"Slave SQL"}


def looks_like_general_log(head: bytes) -> bool:
    return any((m := _LINE.match(line)) and m.group("cmd") in COMMANDS for line in head.split(b"\n")[:200])


class _Entry:
    __slots__ = ("second", "ns", "thread_id", "cmd", "arg")

    def __init__(self, second, ns, thread_id, cmd, arg) -> None:
        self.second, self.ns, self.thread_id, self.cmd, self.arg = second, ns, thread_id, cmd, arg


class GeneralLogSource:
    format = "general-log"

    def __init__(self, path: str) -> None:
        self.path = path
        if not os.path.isfile(path):
            raise TrafficFormatError(f"{path}: no such file")
        self.stats = SkipCounter()
        self.redacted = 0  # statements kept with their secret literals replaced by the placeholder
        self.conns = LogConnections()
        self.size = os.path.getsize(path)
        self.bytes_read = 0  # of the file, by the iteration under way (progress while the count is unknown)
        self.commands = 0
        self.meta = {
            "format": self.format, "source": os.path.abspath(path), "commands": None,
            "outcomes_recorded": False, "status_flags_recorded": False, "last_insert_id_recorded": False,
            "latency_recorded": False, "rows_recorded": False, "start_ns": 0,
        }

    @property
    def fraction_read(self) -> float:
        return self.bytes_read / self.size if self.size else 1.0

    def _entries(self) -> Iterator:
        entry: _Entry | None = None
        second = None
        skip_banner = 0
        with open(self.path, "rb") as f:
            for raw in f:
                self.bytes_read += len(raw)
                line = raw.rstrip(b"\n").rstrip(b"\r")
                if skip_banner:
                    skip_banner -= 1
                    continue
                if _SERVER_BANNER.match(line):
                    if entry is not None:
                        yield entry
                        entry = None
                    yield "restart"
                    skip_banner = 2
                    continue
                m = _LINE.match(line)
                if m and m.group("cmd") in COMMANDS:
                    if entry is not None:
                        yield entry
                    ns = None
                    if m.group("maria"):
                        t = datetime.datetime.strptime(m.group("maria").decode().replace("  ", " "), "%y%m%d %H:%M:%S")
                        second = int(t.timestamp())
                    elif m.group("mysql"):
                        ns = _iso_ns(m.group("mysql").decode())
                    entry = _Entry(second if ns is None else None, ns, int(m.group("id")), m.group("cmd"),
                                   [m.group("arg")])
                elif entry is not None:
                    entry.arg.append(line)  # a statement spanning lines
        if entry is not None:
            yield entry

    def __iter__(self) -> Iterator[Record]:
        placed = spread_within_seconds(self._entries(), _second_of, _place)
        last = 0
        for e in placed:
            if isinstance(e, str):
                yield from self.conns.close_all(last)
                continue
            if e.ns is None:
                self.stats["entry before the first time stamp"] += 1
                continue
            last = max(last, e.ns)
            if not self.meta["start_ns"]:
                self.meta["start_ns"] = e.ns
            yield from self._entry(e)
        yield from self.conns.close_all(last + 1)
        self.meta["commands"] = self.commands

    def _entry(self, e: _Entry) -> Iterator[Record]:
        arg = b"\n".join(e.arg)
        cmd = e.cmd
        tid = e.thread_id
        if cmd == b"Connect":
            m = _CONNECT.match(arg)
            if not m:  # "Access denied for user ...": the login failed, nothing ran
                self.stats["failed login"] += 1
                return
            yield from self.conns.close(tid, e.ns - 1)  # a thread id reused without a Quit in the log
            yield from self.conns.open(tid, e.ns, m.group("user").decode("utf-8", "replace"),
                                       m.group("db").decode("utf-8", "surrogateescape") or None,
                                       m.group("host").decode("utf-8", "replace"))
            return
        if cmd == b"Quit":
            yield from self.conns.close(tid, e.ns)
            return
        if self.conns.conn_id(tid) is None:
            # opened before the log started: replayed as the default user, in no database
            self.stats["connection opened before the log started"] += 1
            yield from self.conns.open(tid, e.ns - 1)
        payload = None
        if cmd in (b"Query", b"Execute"):
            payload = secret_filter(query_payload(arg), self)
            if payload is None:
                return
        elif cmd == b"Init DB":
            payload = init_db_payload(arg.decode("utf-8", "surrogateescape"))
        elif cmd == b"Ping":
            payload = bytes((COMMAND.COM_PING,))
        elif cmd == b"Statistics":
            payload = bytes((COMMAND.COM_STATISTICS,))
        elif cmd == b"Field List":
            payload = bytes((COMMAND.COM_FIELD_LIST,)) + arg + b"\x00"
        elif cmd == b"Reset connection":
            payload = bytes((COMMAND.COM_RESET_CONNECTION,))
        if payload is None:
            self.stats[f"{cmd.decode()} (not replayable from a general log)"] += 1
            return
        self.commands += 1
        yield self.conns.command(tid, e.ns, e.ns, payload)


def _second_of(e):
    return None if isinstance(e, str) else e.second


def _place(e, ns: int):
    e.ns = ns
    return e


def _iso_ns(text: str) -> int:
    t = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=datetime.timezone.utc)
    return int(t.timestamp() * 1_000_000) * 1000


