"""Fixtures: real MariaDB servers and real `fastproxy serve` processes on free loopback ports.

FASTPROXY_TEST_MARIADB=host:port:user:password points the `mariadb` fixture at a running server
instead of starting one (the other fixtures still start their own).
FASTPROXY_TEST_WORKERS=N runs every proxy the tests start with `proxy.workers = N` (default 1), and
FASTPROXY_TEST_IO with `proxy.io` (default auto: io_uring where the kernel allows it);
scripts/test.sh runs the proxy-facing tests a second time with 4 workers on epoll.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from fastproxy.scratch_db import PORT_RANGE_ENV, ROOT_PASSWORD, ScratchMariaDB, free_port

# Parallel test processes (pytest-xdist: gw0, gw1, ...) each take ports from a range of their own, below
# the kernel's ephemeral ports: guessed from the same pool, two processes once took the same port and one
# test reached the other's proxy. Child processes (proxies, replays) inherit the range.
_XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if _XDIST_WORKER.startswith("gw") and PORT_RANGE_ENV not in os.environ:
    _low = 10000 + 4000 * int(_XDIST_WORKER[2:])
    os.environ[PORT_RANGE_ENV] = f"{_low}-{_low + 3999}"


def pytest_collection_modifyitems(items):
    """Mark the tests that start a proxy `proxy`: scripts/test.sh runs them again with 4 workers."""
    for item in items:
        # (replay_util.capture_workers starts one too)
        if {"proxy", "proxy_factory"} & set(getattr(item, "fixturenames", ())) or \
                getattr(item.module, "start_proxy", None) is start_proxy or hasattr(item.module, "capture_workers"):
            item.add_marker(pytest.mark.proxy)


@pytest.fixture(scope="session")
def mariadb():
    """The "production" server, shared by the session."""
    with ScratchMariaDB(name="prod") as db:
        yield db


@pytest.fixture(scope="session")
def mariadb_test():
    """A second server (the "test" side of a replay)."""
    with ScratchMariaDB(name="test") as db:
        yield db


@pytest.fixture
def mariadb_private():
    """A server of the test's own (for tests that kill or restart it)."""
    with ScratchMariaDB(name="private") as db:
        yield db


TEST_WORKERS = int(os.environ.get("FASTPROXY_TEST_WORKERS", "1"))
TEST_IO = os.environ.get("FASTPROXY_TEST_IO", "auto")


class ProxyProcess:
    """`python -m fastproxy serve` in a subprocess, stopped at teardown."""

    def __init__(self, backends: list[str], *args: str, config: str | None = None, preexec_fn=None) -> None:
        self.port = free_port()
        self.api_port = free_port()
        self.args = [sys.executable, "-m", "fastproxy", "serve", f"--proxy.addr=127.0.0.1:{self.port}",
                     f"--api.addr=127.0.0.1:{self.api_port}", f"--proxy.backends={','.join(backends)}",
                     "--proxy.health-check-interval=0.5s", f"--proxy.workers={TEST_WORKERS}",
                     f"--proxy.io={TEST_IO}", *args]
        if config:
            self.args += ["--config", config]
        self.log_path = f"/tmp/fastproxy-test-{self.port}.log"
        self.preexec_fn = preexec_fn  # e.g. lower a resource limit of the proxy process
        self.proc: subprocess.Popen | None = None

    def _new_ports(self) -> None:
        old = (f"--proxy.addr=127.0.0.1:{self.port}", f"--api.addr=127.0.0.1:{self.api_port}")
        self.port, self.api_port = free_port(), free_port()
        new = (f"--proxy.addr=127.0.0.1:{self.port}", f"--api.addr=127.0.0.1:{self.api_port}")
        self.args = [dict(zip(old, new)).get(a, a) for a in self.args]
        self.log.close()
        self.log_path = f"/tmp/fastproxy-test-{self.port}.log"

    @property
    def api(self) -> str:
        return f"127.0.0.1:{self.api_port}"

    def start(self, timeout: float = 20, attempts: int = 3) -> "ProxyProcess":
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=self.preexec_fn)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = self.read_log()
                if "address already in use" in log and attempts > 1:
                    # free_port() is a guess: another process on the machine took the port meanwhile
                    self._new_ports()
                    return self.start(timeout, attempts - 1)
                raise RuntimeError(f"fastproxy exited {self.proc.returncode}: {log}")
            try:
                self.get("/api/debug/health")
                return self
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"fastproxy not ready: {self.read_log()}")

    def get(self, path: str, timeout: float = 10):
        with urllib.request.urlopen(f"http://{self.api}{path}", timeout=timeout) as r:
            body = r.read().decode()
            return json.loads(body) if r.headers.get_content_type() == "application/json" else body

    def post(self, path: str, form: dict, timeout: float = 30) -> tuple[int, str]:
        import urllib.error
        import urllib.parse

        data = urllib.parse.urlencode(form).encode()
        try:
            with urllib.request.urlopen(urllib.request.Request(f"http://{self.api}{path}", data=data),
                                        timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def metric(self, name: str, labels: str = "") -> float:
        """Value of one sample in /metrics, e.g. metric('fastproxy_commands_total', 'type="COM_QUERY"')."""
        want = f"{name}{{{labels}}}" if labels else name
        for line in self.get("/metrics").splitlines():
            if line.startswith(want + " "):
                return float(line.split()[-1])
        return 0.0

    def read_log(self) -> str:
        try:
            with open(self.log_path) as f:
                return f.read()
        except OSError:
            return ""

    def terminate(self, timeout: float = 60) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else 0

    def stop(self) -> None:
        self.terminate(timeout=30)
        if self.log:
            self.log.close()


def start_proxy(backends, *args: str, config: str | None = None) -> ProxyProcess:
    """A running proxy in front of `backends` (ScratchMariaDB objects or "host:port")."""
    return ProxyProcess([b.addr if hasattr(b, "addr") else b for b in backends], *args, config=config).start()


def stop_proxy(p: ProxyProcess) -> None:
    p.stop()
    # a proxy must never log an unhandled exception: that is a bug even if the test passed
    log = p.read_log()
    assert "Traceback" not in log, f"fastproxy logged an exception:\n{log[-4000:]}"


@pytest.fixture
def proxy_factory():
    started: list[ProxyProcess] = []

    def make(backends, *args: str, config: str | None = None) -> ProxyProcess:
        p = start_proxy(backends, *args, config=config)
        started.append(p)
        return p

    yield make
    for p in started:
        stop_proxy(p)


@pytest.fixture
def proxy(proxy_factory, mariadb):
    """A proxy in front of the session's MariaDB."""
    return proxy_factory([mariadb])


def connect_kwargs(port: int, **extra) -> dict:
    return dict(host="127.0.0.1", port=port, user="root", password=ROOT_PASSWORD, **extra)


@pytest.fixture(scope="module")
def s3_server():
    """A local S3-compatible server (moto) with boto3's environment pointing at it (tests/s3_util.py)."""
    from s3_util import s3_server_fixture

    yield from s3_server_fixture()
