"""Configuration: defaults < TOML file < command-line flags; a bad value gets a message naming its
key, from the library and from `fastproxy serve` (non-zero exit, no traceback)."""
from __future__ import annotations

import subprocess
import sys

import pymysql
import pytest

from conftest import connect_kwargs
from fastproxy.config import KEYS, Config, parse_duration, parse_size
from fastproxy.errors import ConfigError
from fastproxy.scratch_db import free_port


def write(tmp_path, text: str, name: str = "fastproxy.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults_file_and_flags_precedence(tmp_path):
    path = write(tmp_path, """
[proxy]
addr = "127.0.0.1:7000"
max-connections = 10
backends = ["10.0.0.1:3306", "10.0.0.2:3307"]
graceful-close-conn-timeout = "30s"

[log]
level = "debug"
""")
    cfg = Config.load(path, {"proxy.max-connections": "20", "log.level": None, "api.addr": "0.0.0.0:9090"})
    assert cfg["proxy.addr"] == ("127.0.0.1", 7000)  # file over default
    assert cfg["proxy.max-connections"] == 20  # flag over file
    assert cfg["log.level"] == "debug"  # a flag not given leaves the file's value
    assert cfg["api.addr"] == ("0.0.0.0", 9090)  # flag over default
    assert cfg["proxy.backends"] == [("10.0.0.1", 3306), ("10.0.0.2", 3307)]
    assert cfg["proxy.graceful-close-conn-timeout"] == 30.0
    assert cfg["proxy.max-packet-size"] == 1 << 30  # default
    assert Config.load(None, {"proxy.backends": "a:1,b:2"})["proxy.backends"] == [("a", 1), ("b", 2)]


def test_every_key_has_a_usable_default():
    cfg = Config()
    assert set(cfg.as_dict()) == {k.name for k in KEYS}


@pytest.mark.parametrize("value,seconds", [(30, 30.0), ("30s", 30.0), ("10m", 600.0), ("1h30m", 5400.0),
                                           ("250ms", 0.25), ("1.5s", 1.5)])
def test_durations(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value,size", [(1048576, 1 << 20), ("64MiB", 64 << 20), ("300MB", 300 << 20),
                                        ("1g", 1 << 30), ("512", 512)])
def test_sizes(value, size):
    assert parse_size(value) == size


BAD = [
    ('[proxy]\nmax-connections = "x"\n', "proxy.max-connections"),
    ("[proxy]\nmax-connections = -1\n", "proxy.max-connections"),
    ("[proxy]\nbogus = 1\n", "proxy.bogus"),
    ('[proxy]\naddr = "no-port"\n', "proxy.addr"),
    ('[proxy]\nbackends = "127.0.0.1:99999"\n', "proxy.backends"),
    ('[proxy]\ngraceful-close-conn-timeout = "soon"\n', "proxy.graceful-close-conn-timeout"),
    ('[proxy]\nmax-packet-size = "12 parsecs"\n', "proxy.max-packet-size"),
    ('[log]\nlevel = "loud"\n', "log.level"),
    ("[security]\nencryption-key-path = 5\n", "security.encryption-key-path"),
    ("[proxy\naddr = 1\n", "fastproxy.toml"),  # not TOML: the message names the file
]


@pytest.mark.parametrize("text,key", BAD, ids=[k for _, k in BAD])
def test_bad_file_values_name_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as ei:
        Config.load(write(tmp_path, text))
    assert key in str(ei.value)


def test_bad_flag_value_names_the_key():
    with pytest.raises(ConfigError, match="proxy.max-connections"):
        Config.load(None, {"proxy.max-connections": "x"})


def serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastproxy", "serve", *args], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("text,key", BAD[:4], ids=[k for _, k in BAD[:4]])
def test_cli_bad_config_file(tmp_path, text, key):
    res = serve("--config", write(tmp_path, text), f"--proxy.addr=127.0.0.1:{free_port()}",
                f"--api.addr=127.0.0.1:{free_port()}")
    assert res.returncode != 0
    assert key in res.stderr
    assert "Traceback" not in res.stderr + res.stdout


def test_cli_bad_flag_and_missing_file(tmp_path):
    res = serve("--proxy.max-connections=lots")
    assert res.returncode != 0 and "proxy.max-connections" in res.stderr and "Traceback" not in res.stderr
    missing = str(tmp_path / "nope.toml")
    res = serve("--config", missing)
    assert res.returncode != 0 and "nope.toml" in res.stderr and "Traceback" not in res.stderr


def test_cli_port_in_use_is_a_clear_error(mariadb):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        res = serve(f"--proxy.addr=127.0.0.1:{s.getsockname()[1]}", f"--api.addr=127.0.0.1:{free_port()}",
                    f"--proxy.backends={mariadb.addr}")
    assert res.returncode != 0 and "already in use" in res.stderr and "Traceback" not in res.stderr + res.stdout


def test_served_proxy_applies_file_then_flags(tmp_path, proxy_factory, mariadb):
    """The file says max-connections = 1; a flag raises it to 2 (the conftest passes addr and backends
    as flags, so those override anything the file says)."""
    path = write(tmp_path, '[proxy]\nmax-connections = 1\naddr = "127.0.0.1:1"\n')
    p = proxy_factory([mariadb], config=path)  # file only: 1 connection
    a = pymysql.connect(**connect_kwargs(p.port))
    with pytest.raises(pymysql.err.OperationalError) as ei:
        pymysql.connect(**connect_kwargs(p.port))
    assert ei.value.args[0] == 1040
    a.close()
    p2 = proxy_factory([mariadb], "--proxy.max-connections=2", config=path)  # the flag wins
    conns = [pymysql.connect(**connect_kwargs(p2.port)) for _ in range(2)]
    with pytest.raises(pymysql.err.OperationalError):
        pymysql.connect(**connect_kwargs(p2.port))
    for c in conns:
        c.close()


@pytest.mark.parametrize("key,value", [
    ("capture.buffer-size", "0"), ("capture.buffer-size", "10b"), ("capture.file-size", "0"),
    ("proxy.max-packet-size", "0"), ("proxy.backends", ","), ("proxy.health-check-interval", "0"),
    ("proxy.connect-timeout", "0s"),
])
def test_values_that_cannot_work_are_refused(key, value):
    with pytest.raises(ConfigError) as e:
        Config({key: value})
    assert str(e.value).startswith(key + ":")
