"""Traffic jobs of one proxy: one job (capture or replay) at a time, as in TiProxy; the last 10 are shown."""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from fastproxy.config import parse_duration
from fastproxy.errors import ConfigError, JobError
from fastproxy.jobs_base import parse_bool

if TYPE_CHECKING:
    from fastproxy.proxy.server import ProxyServer

log = logging.getLogger("fastproxy.jobs")


class JobConflict(JobError):
    conflict = True


class JobManager:
    def __init__(self, server: "ProxyServer") -> None:
        self.server = server
        self.history: list = []

    def running(self, kind: str | None = None) -> list:
        return [j for j in self.history if j.running and (kind is None or j.kind == kind)]

    def _check_free(self, kind: str) -> None:
        busy = self.running()
        if busy:
            raise JobConflict(f"a {busy[0].kind} job is already running (started {busy[0].describe_base()['start_time']}); "
                              f"cancel it first or wait for it to finish")

    async def start_capture(self, form: dict):
        from fastproxy.capture.crypto import load_key
        from fastproxy.capture.job import CaptureJob
        from fastproxy.capture.writer import output_dir_has_capture
        from fastproxy.private_files import check_output_path
        from fastproxy.storage import is_s3

        self._check_free("capture")
        output = str(form.get("output", "")).strip()
        if not output:
            raise ConfigError("output: required (directory for the traffic files)")
        if not is_s3(output):  # an s3:// output is checked by the capture job (bucket reachable, no capture there)
            output = check_output_path(output, "output")
            if output_dir_has_capture(output):
                raise JobError(f"output: {output} already holds a finished capture; choose another directory")
        if "duration" not in form or not str(form["duration"]).strip():
            raise ConfigError("duration: required, e.g. 30s, 10m, 1h")
        duration = parse_duration(form["duration"], "duration")
        if duration <= 0:
            raise ConfigError("duration: must be positive")
        compress = parse_bool(form, "compress", True)
        method = str(form.get("encryption-method", "")).strip().lower()
        key = None
        if method not in ("", "aes256-ctr", "aes-256-ctr"):
            raise ConfigError(f"encryption-method: expected '' or aes256-ctr, got {method!r}")
        if method:
            path = self.server.config["security.encryption-key-path"]
            if not path:
                raise ConfigError("encryption-method aes256-ctr needs security.encryption-key-path in the proxy's config")
            key = load_key(path)
        from fastproxy.traffic_filter import CAPTURE_FILTER_FIELDS, capture_filters_from

        filters = capture_filters_from({name: str(form.get(name, "") or "") for name, _ in CAPTURE_FILTER_FIELDS})
        throttle = os.environ.get("FASTPROXY_CAPTURE_THROTTLE_BPS")  # test hook: simulate a slow disk
        job = CaptureJob(self.server, output, duration, compress=compress, encryption_key=key,
                         buffer_size=self.server.config["capture.buffer-size"],
                         large_record_buffer_size=self.server.config["capture.large-record-buffer-size"],
                         file_size=self.server.config["capture.file-size"],
                         throttle_bytes_per_sec=float(throttle) if throttle else None,
                         local_infile=self.server.config["capture.local-infile"],
                         local_infile_max_size=self.server.config["capture.local-infile-max-size"],
                         filters=filters)
        job.start()
        self._add(job)
        # every worker has installed the capture before the API answers: a command the client
        # sends after that answer is captured (or parked for its session's state first)
        await self.server.sync()
        return job

    async def start_replay(self, form: dict):
        from fastproxy.replay.job import ReplayJob

        self._check_free("replay")
        report_dir = str(form.get("report-dir", "")).strip()
        if report_dir and os.path.lexists(report_dir) and not os.path.isdir(report_dir):
            raise ConfigError(f"report-dir: {report_dir} exists and is not a directory")
        job = ReplayJob.from_form(self.server, form)
        await job.start()
        self._add(job)
        return job

    def _add(self, job) -> None:
        self.history.append(job)
        del self.history[:-10]

    def show(self) -> list[dict]:
        return [job.describe() for job in self.history]

    async def cancel(self, kind: str | None, graceful: bool = False) -> list[str]:
        canceled = []
        for job in self.running(kind):
            if job.kind == "replay":
                await job.stop(canceled=True, graceful=graceful)
            else:
                await job.stop(canceled=True)
            canceled.append(job.kind)
        return canceled

    async def shutdown(self) -> None:
        for job in self.running():
            await job.stop(error="the proxy shut down")
