"""Start throw-away MariaDB servers: temporary datadir, free loopback port, torn down after.

Used by the test fixtures, the benchmarks and the demo (`fastproxy demo`). Never a mock: it is
the real `mariadbd`, initialised with `mariadb-install-db`.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

ROOT_PASSWORD = "rootpw"


# "LOW-HIGH": this process takes its ports from this range only (tests/conftest.py gives each parallel
# test process its own: two processes guessing from the kernel's ephemeral ports could pick the same
# port before either bound it)
PORT_RANGE_ENV = "FASTPROXY_FREE_PORTS"
_next_in_range: dict[str, int] = {}


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (a guess until the caller binds it)."""
    span = os.environ.get(PORT_RANGE_ENV)
    if not span:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            return s.getsockname()[1]
    low, high = (int(x) for x in span.split("-"))
    port = _next_in_range.get(span, low)
    for _ in range(high - low + 1):  # in turn through the range: a port just given out is not guessed again soon
        candidate, port = port, (port + 1 if port < high else low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, candidate))
            except OSError:
                continue
        _next_in_range[span] = port
        return candidate
    raise OSError(f"no free port in {PORT_RANGE_ENV}={span}")


def _which(*names: str) -> str:
    for name in names:
        for d in (None, "/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"):
            path = shutil.which(name, path=d) if d else shutil.which(name)
            if path:
                return path
    raise FileNotFoundError(f"none of {names} found; install mariadb-server (see README)")


@dataclass
class ScratchMariaDB:
    """One mariadbd on 127.0.0.1:<free port> with a root user `root`/`rootpw` over TCP."""

    name: str = "db"
    extra_args: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 0
    basedir: str = ""
    proc: subprocess.Popen | None = None
    tls_ca: str = ""  # the server speaks TLS with a certificate from this CA: the CLI verifies against it
    _option_files: dict = field(default_factory=dict, repr=False)  # password -> its client option file

    @property
    def datadir(self) -> str:
        return os.path.join(self.basedir, "data")

    @property
    def socket_path(self) -> str:
        return os.path.join(self.basedir, "mysqld.sock")

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> "ScratchMariaDB":
        self.basedir = tempfile.mkdtemp(prefix=f"fastproxy-{self.name}-")
        self.port = self.port or free_port(self.host)
        install = _which("mariadb-install-db", "mysql_install_db")
        # a private tmpdir: concurrent bootstraps sharing /tmp collide on their temporary tables
        # ("Unknown table 'mysql.tmp_user_sys'"), which made server starts fail now and then
        tmpdir = os.path.join(self.basedir, "tmp")
        os.mkdir(tmpdir)
        cmd = [install, "--no-defaults", f"--datadir={self.datadir}", "--auth-root-authentication-method=normal",
               "--skip-test-db", "--user=root" if os.geteuid() == 0 else f"--user={os.getlogin()}",
               f"--tmpdir={tmpdir}"]
        for attempt in (1, 2):
            res = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if res.returncode == 0:
                break
            # seen once on a machine loaded far beyond its cores: the bootstrap server gave up;
            # a second try on an empty datadir is cheap, and the error below says why if it fails too
            shutil.rmtree(self.datadir, ignore_errors=True)
            if attempt == 2:
                raise RuntimeError(f"mariadb-install-db failed ({res.returncode}): {res.stderr.strip()[-2000:]}")
        mariadbd = _which("mariadbd", "mysqld")
        args = [
            mariadbd, "--no-defaults", f"--datadir={self.datadir}", f"--port={self.port}",
            f"--bind-address={self.host}", f"--socket={self.socket_path}",
            f"--pid-file={os.path.join(self.basedir, 'mysqld.pid')}",
            f"--log-error={os.path.join(self.basedir, 'error.log')}", f"--tmpdir={tmpdir}",
            "--skip-name-resolve", "--max-connections=2000", "--max-allowed-packet=256M",
            "--innodb-buffer-pool-size=256M", "--innodb-log-file-size=256M",
            "--innodb-flush-log-at-trx-commit=0", "--sync-binlog=0", "--local-infile=1",
            "--plugin-load-add=auth_ed25519", "--performance-schema=OFF",
            *self.extra_args,
        ]
        if os.geteuid() == 0:
            args.append("--user=root")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ready(timeout)
        # root over TCP with a password, so clients that must authenticate (sysbench, replay) can.
        self.sql(f"ALTER USER root@localhost IDENTIFIED BY '{ROOT_PASSWORD}';"
                 f"CREATE OR REPLACE USER root@'127.0.0.1' IDENTIFIED BY '{ROOT_PASSWORD}';"
                 "GRANT ALL ON *.* TO root@'127.0.0.1' WITH GRANT OPTION;", use_socket=True, password="")
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mariadbd exited with {self.proc.returncode}: {self.error_log()[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                    if s.recv(1):
                        return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"mariadbd on {self.addr} not ready after {timeout}s: {self.error_log()[-2000:]}")

    def error_log(self) -> str:
        try:
            with open(os.path.join(self.basedir, "error.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def client_args(self, use_socket: bool = False, password: str | None = None) -> list[str]:
        """The `mariadb` client's command line (args[1:] serve mariadb-dump too). The password is in an
        option file only its owner reads, named first (read instead of every other option file): a
        command line is every local user's to read."""
        pw = ROOT_PASSWORD if password is None else password
        conn = [f"--socket={self.socket_path}"] if use_socket else [f"--host={self.host}", f"--port={self.port}", "--protocol=TCP"]
        if self.tls_ca and not use_socket:
            conn.append(f"--ssl-ca={self.tls_ca}")
        return [_which("mariadb", "mysql"), f"--defaults-file={self.password_option_file(pw)}", "-uroot", *conn]

    def password_option_file(self, password: str = ROOT_PASSWORD) -> str:
        """A client option file ([client] password=...) in the server's scratch directory, mode 0600."""
        path = self._option_files.get(password)
        if path is None:
            path = self._option_files[password] = os.path.join(self.basedir, f"client-{len(self._option_files)}.cnf")
            quoted = password.replace("\\", "\\\\").replace('"', '\\"')
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(f'[client]\npassword="{quoted}"\n')
        return path

    def password_file(self) -> str:
        """The root password alone in a file, mode 0600 (fastproxy's --password-file)."""
        path = os.path.join(self.basedir, "root.password")
        if not os.path.exists(path):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(ROOT_PASSWORD)
        return path

    def sql(self, statements: str, use_socket: bool = False, password: str | None = None,
            database: str | None = None) -> str:
        """Run statements with the `mariadb` CLI; returns tab-separated output (no headers)."""
        args = self.client_args(use_socket, password) + ["-N", "-B"]
        if database:
            args.append(f"--database={database}")
        res = subprocess.run(args, input=statements, text=True, capture_output=True)
        if res.returncode != 0:
            raise RuntimeError(f"mariadb on {self.addr} failed: {res.stderr.strip()}")
        return res.stdout

    def status(self, name: str) -> int:
        out = self.sql(f"SHOW GLOBAL STATUS LIKE '{name}'")
        return int(out.split()[1])

    def kill(self) -> None:
        """SIGKILL the server (fault tests); `restart()` brings it back on the same port."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def restart(self, timeout: float = 60.0) -> None:
        self.kill()
        mariadbd = self.proc.args
        self.proc = subprocess.Popen(mariadbd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ready(timeout)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.basedir:
            shutil.rmtree(self.basedir, ignore_errors=True)

    def __enter__(self) -> "ScratchMariaDB":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
