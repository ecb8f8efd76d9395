"""Locking the HTTP API down: the bearer token of `api.token-file` (401 without it or with a wrong
one; the health check stays open but says only up or down), the token file's permissions, TLS and
mutual TLS (`security.server-http-tls`) reached by `fastproxy traffic --ca/--cert/--key/-k`, and the
refusal to serve an unauthenticated API beyond loopback."""
from __future__ import annotations

import json
import os
import secrets
import ssl
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from click.testing import CliRunner

from conftest import ProxyProcess, stop_proxy
from fastproxy.api_security import ApiSecurity
from fastproxy.cli import main as cli_main
from fastproxy.config import Config
from fastproxy.errors import ConfigError
from fastproxy.scratch_db import free_port
from tls_certs import CertAuthority

pytestmark = pytest.mark.timeout(180)

TOKEN = "tok-" + secrets.token_hex(16)


def write_token(tmp_path, token: str = TOKEN, mode: int = 0o600, name: str = "api.token") -> str:
    path = tmp_path / name
    path.write_text(token + "\n")
    os.chmod(path, mode)
    return str(path)


def call(url: str, token: str | None = None, method: str = "GET", data: bytes | None = None,
         ctx: ssl.SSLContext | None = None, auth: str | None = None) -> tuple[int, str, dict]:
    headers = {"Authorization": auth or f"Bearer {token}"} if (token or auth) else {}
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            return r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), dict(e.headers)


def serve_fails(*flags: str) -> subprocess.CompletedProcess:
    """`fastproxy serve` that must refuse to start: it exits by itself, non-zero."""
    res = subprocess.run([sys.executable, "-m", "fastproxy", "serve", f"--proxy.addr=127.0.0.1:{free_port()}",
                          "--proxy.backends=127.0.0.1:1", *flags], capture_output=True, text=True, timeout=60)
    assert res.returncode != 0, res.stdout + res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    return res


def test_keys_from_toml_tables_and_flags(tmp_path):
    path = tmp_path / "fastproxy.toml"
    path.write_text("""
[api]
token-file = "/etc/fastproxy/api.token"
allow-insecure = true
max-connections = 8
read-header-timeout = "3s"
max-body-size = "16KiB"

[security.server-http-tls]
cert = "/etc/fastproxy/api.pem"
key = "/etc/fastproxy/api-key.pem"
ca = "/etc/fastproxy/ca.pem"
""")
    cfg = Config.load(str(path), {"security.server-http-tls.ca": "/other/ca.pem", "api.allow-insecure": "false"})
    assert cfg["api.token-file"] == "/etc/fastproxy/api.token"
    assert cfg["security.server-http-tls.cert"] == "/etc/fastproxy/api.pem"
    assert cfg["security.server-http-tls.key"] == "/etc/fastproxy/api-key.pem"
    assert cfg["security.server-http-tls.ca"] == "/other/ca.pem"  # the flag over the file
    assert cfg["api.allow-insecure"] is False
    assert (cfg["api.max-connections"], cfg["api.read-header-timeout"], cfg["api.max-body-size"]) == (8, 3.0, 16384)
    # an inline table flattens the same way
    path.write_text('[security]\nserver-http-tls = { cert = "/c.pem", key = "/k.pem" }\n')
    assert Config.load(str(path))["security.server-http-tls.key"] == "/k.pem"
    for text, key in [('[api]\nallow-insecure = "maybe"\n', "api.allow-insecure"),
                      ("[api]\nmax-connections = 0\n", "api.max-connections"),
                      ('[security.server-http-tls]\ncrt = "/c.pem"\n', "security.server-http-tls.crt")]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            Config.load(str(path))
    # the command-line flags exist and reach the TLS setup (which names the keys when the files are missing)
    res = serve_fails("--security.server-http-tls.cert=/nonexistent/api.pem",
                      "--security.server-http-tls.key=/nonexistent/api-key.pem")
    assert "security.server-http-tls.cert" in res.stderr and "/nonexistent/api.pem" in res.stderr, res.stderr


@pytest.fixture
def token_proxy(proxy_factory, mariadb, tmp_path):
    return proxy_factory([mariadb], f"--api.token-file={write_token(tmp_path)}")


def test_bearer_token(token_proxy, tmp_path):
    p = token_proxy
    base = f"http://{p.api}"
    for path in ("/api/traffic/show", "/metrics", "/api/debug/connections"):
        status, body, headers = call(base + path)
        assert status == 401 and "Bearer" in body, (path, status, body)
        assert headers["WWW-Authenticate"].startswith("Bearer"), headers
        status, body, headers = call(base + path, token=TOKEN[:-1] + ("x" if TOKEN[-1] != "x" else "y"))
        assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"], (path, status)
        for auth in (f"Basic {TOKEN}", f"Bearer {TOKEN}extra", "Bearer", f"Bearer {TOKEN[:8]}"):
            assert call(base + path, auth=auth)[0] == 401, (path, auth)
        status, body, _ = call(base + path, token=TOKEN)
        assert status == 200, (path, status, body)
    assert call(base + "/api/traffic/show", auth=f"bearer  {TOKEN} ")[0] == 200  # scheme is case-insensitive

    # a job request without the token starts nothing, whatever its body
    out = tmp_path / "cap"
    form = f"output={out}&duration=1h".encode()
    assert call(base + "/api/traffic/capture", method="POST", data=form)[0] == 401
    assert not out.exists()
    assert json.loads(call(base + "/api/traffic/show", token=TOKEN)[1]) == []
    status, body, _ = call(base + "/api/traffic/capture", token=TOKEN, method="POST", data=form)
    assert status == 200, body
    assert call(base + "/api/traffic/cancel", token=TOKEN, method="POST", data=b"type=capture")[0] == 200

    # health stays open for probes that cannot send a token, and then tells only up or down
    status, body, _ = call(base + "/api/debug/health")
    assert status == 200 and json.loads(body) == {"status": "ok"}, body
    status, body, _ = call(base + "/api/debug/health", token="wrong-token-wrong-token")
    assert status == 200 and json.loads(body) == {"status": "ok"}, body
    status, body, _ = call(base + "/api/debug/health", token=TOKEN)
    assert status == 200 and json.loads(body)["backends"][0]["healthy"], body

    assert TOKEN not in p.read_log()


def test_cli_sends_the_token(token_proxy, tmp_path, monkeypatch):
    p = token_proxy
    runner = CliRunner()
    res = runner.invoke(cli_main, ["traffic", "show", "--curls", p.api])
    assert res.exit_code == 1 and "HTTP 401" in res.output, res.output
    token_file = write_token(tmp_path, name="client.token")
    res = runner.invoke(cli_main, ["traffic", "show", "--curls", p.api, "--token-file", token_file])
    assert res.exit_code == 0 and json.loads(res.output) == [], res.output
    res = runner.invoke(cli_main, ["traffic", "cancel", "--curls", p.api], env={"FASTPROXY_API_TOKEN_FILE": token_file})
    assert res.exit_code == 0 and "no job running" in res.output, res.output
    assert TOKEN not in res.output
    # the client refuses a token file others can read, as the server does
    os.chmod(token_file, 0o644)
    res = runner.invoke(cli_main, ["traffic", "show", "--curls", p.api, "--token-file", token_file])
    assert res.exit_code != 0 and "--token-file" in res.output and "chmod 600" in res.output, res.output
    assert TOKEN not in res.output


def test_token_file_must_be_private_and_sound(tmp_path):
    for mode in (0o644, 0o640, 0o604, 0o620):
        path = write_token(tmp_path, mode=mode, name=f"t{mode:o}")
        res = serve_fails(f"--api.token-file={path}")
        assert "api.token-file" in res.stderr and "chmod 600" in res.stderr and f"{mode:04o}" in res.stderr, res.stderr
        assert TOKEN not in res.stdout + res.stderr
    res = serve_fails(f"--api.token-file={write_token(tmp_path, token='short', name='short')}")
    assert "api.token-file" in res.stderr and "at least 16" in res.stderr, res.stderr
    res = serve_fails(f"--api.token-file={write_token(tmp_path, token='has a space in the token', name='sp')}")
    assert "printable ASCII" in res.stderr, res.stderr
    res = serve_fails(f"--api.token-file={tmp_path / 'missing'}")
    assert "api.token-file" in res.stderr and "No such file" in res.stderr, res.stderr


def test_non_loopback_api_needs_authentication(tmp_path):
    port = free_port()
    res = serve_fails(f"--api.addr=0.0.0.0:{port}")
    for key in ("api.token-file", "security.server-http-tls", "api.allow-insecure"):
        assert key in res.stderr, res.stderr
    ca = CertAuthority(str(tmp_path), "ca")
    server = ca.issue("server", server=True)
    token = write_token(tmp_path)

    def security(addr: str, **extra) -> ApiSecurity:
        return ApiSecurity.from_config(Config({"api.addr": addr, **extra}))

    tls = {"security.server-http-tls.cert": server.cert, "security.server-http-tls.key": server.key}
    for addr in ("127.0.0.1:3080", "127.0.0.2:3080", "[::1]:3080", "localhost:3080"):
        assert security(addr).token is None  # loopback: open is allowed
    for addr in ("0.0.0.0:3080", "10.1.2.3:3080", "[::]:3080", "db-proxy.example:3080"):
        with pytest.raises(ConfigError, match="api.allow-insecure"):
            security(addr)
        # TLS alone encrypts but lets anyone in: still refused
        with pytest.raises(ConfigError, match="security.server-http-tls.ca"):
            security(addr, **tls)
        assert security(addr, **{"api.allow-insecure": "true"}).token is None
        assert security(addr, **{"api.token-file": token}).token == TOKEN.encode()
        assert security(addr, **tls, **{"security.server-http-tls.ca": ca.pem.cert}).client_certs
    with pytest.raises(ConfigError, match="cert and key"):
        security("127.0.0.1:3080", **{"security.server-http-tls.cert": server.cert})


class TlsProxy(ProxyProcess):
    """A proxy whose API speaks https; `get` (and so `start`) use the given client context."""

    def __init__(self, backends, *args: str, ctx: ssl.SSLContext) -> None:
        super().__init__(backends, *args)
        self.ctx = ctx

    def get(self, path: str, timeout: float = 10):
        with urllib.request.urlopen(f"https://{self.api}{path}", timeout=timeout, context=self.ctx) as r:
            body = r.read().decode()
            return json.loads(body) if r.headers.get_content_type() == "application/json" else body


@pytest.fixture
def pki(tmp_path):
    ca = CertAuthority(str(tmp_path), "ca")
    rogue = CertAuthority(str(tmp_path), "rogue-ca")
    return {"ca": ca, "server": ca.issue("server", server=True), "client": ca.issue("client", server=False),
            "rogue_client": rogue.issue("rogue-client", server=False), "rogue": rogue}


def _client_ctx(ca: str, cert=None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    if cert:
        ctx.load_cert_chain(cert.cert, cert.key)
    return ctx


def test_tls_api(mariadb, pki):
    ca, server = pki["ca"], pki["server"]
    p = TlsProxy([mariadb.addr], f"--security.server-http-tls.cert={server.cert}",
                 f"--security.server-http-tls.key={server.key}", ctx=_client_ctx(ca.pem.cert)).start()
    try:
        assert p.get("/api/debug/health")["status"] == "ok"
        runner = CliRunner()
        res = runner.invoke(cli_main, ["traffic", "show", "--curls", p.api, "--ca", ca.pem.cert])
        assert res.exit_code == 0 and json.loads(res.output) == [], res.output
        res = runner.invoke(cli_main, ["traffic", "show", "--curls", p.api, "-k"])
        assert res.exit_code == 0 and json.loads(res.output) == [], res.output
        res = runner.invoke(cli_main, ["traffic", "show", "--curls", p.api])  # plain http to a TLS port
        assert res.exit_code == 1 and "cannot reach the fastproxy API" in res.output and "--ca" in res.output, res.output
        res = runner.invoke(cli_main, ["traffic", "show", "--curls", p.api, "--ca", pki["rogue"].pem.cert])
        assert res.exit_code == 1 and "CERTIFICATE_VERIFY_FAILED" in res.output, res.output
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://{p.api}/api/debug/health", timeout=10).read()
    finally:
        stop_proxy(p)


def test_mutual_tls_api(mariadb, pki):
    ca, server, client = pki["ca"], pki["server"], pki["client"]
    p = TlsProxy([mariadb.addr], f"--security.server-http-tls.cert={server.cert}",
                 f"--security.server-http-tls.key={server.key}", f"--security.server-http-tls.ca={ca.pem.cert}",
                 ctx=_client_ctx(ca.pem.cert, client)).start()
    try:
        runner = CliRunner()
        base = ["traffic", "show", "--curls", p.api, "--ca", ca.pem.cert]
        res = runner.invoke(cli_main, base + ["--cert", client.cert, "--key", client.key])
        assert res.exit_code == 0 and json.loads(res.output) == [], res.output
        res = runner.invoke(cli_main, base)  # no client certificate
        assert res.exit_code == 1 and "cannot reach the fastproxy API" in res.output, res.output
        rogue = pki["rogue_client"]  # a certificate from a CA the proxy does not trust
        res = runner.invoke(cli_main, base + ["--cert", rogue.cert, "--key", rogue.key])
        assert res.exit_code == 1 and "cannot reach the fastproxy API" in res.output, res.output
        res = runner.invoke(cli_main, base + ["--key", client.key])
        assert res.exit_code != 0 and "--key needs --cert" in res.output, res.output
        assert p.get("/api/debug/health")["backends"][0]["healthy"]
    finally:
        stop_proxy(p)
