"""Job requests are checked field by field before any job starts: a body that is not UTF-8, a NUL
or another control character in any field, an unknown or repeated field, a relative path, or a
body that is not form-encoded (a multipart upload) gets 400 naming the field; no job starts, no
directory is created, a secret's value is never echoed."""
from __future__ import annotations

import http.client
import os
import secrets
import urllib.parse

import pytest

from conftest import start_proxy, stop_proxy
from replay_util import Capture

pytestmark = pytest.mark.timeout(180)

FORM = "application/x-www-form-urlencoded"
PASSWORD = "Pw-" + secrets.token_hex(8)


@pytest.fixture(scope="module")
def small_capture(mariadb, tmp_path_factory):
    """A real capture to replay, so that a bad replay request would otherwise start."""
    import pymysql

    from conftest import connect_kwargs

    out = str(tmp_path_factory.mktemp("forms") / "capture")
    proxy = start_proxy([mariadb])
    try:
        with Capture(proxy, out):
            conn = pymysql.connect(**connect_kwargs(proxy.port))
            with conn.cursor() as cur:
                for i in range(20):
                    cur.execute(f"SELECT {i}")
            conn.close()
    finally:
        stop_proxy(proxy)
    return out


@pytest.fixture(scope="module")
def api_proxy(mariadb):
    p = start_proxy([mariadb])
    yield p
    stop_proxy(p)


def raw_post(api: str, path: str, body: bytes, content_type: str | None = FORM) -> tuple[int, str]:
    host, port = api.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": content_type} if content_type else {})
        r = conn.getresponse()
        return r.status, r.read().decode("utf-8", "replace")
    finally:
        conn.close()


def post_form(api: str, path: str, form: dict) -> tuple[int, str]:
    return raw_post(api, path, urllib.parse.urlencode(form).encode())


def assert_refused(p, status: int, body: str, field: str, workdir) -> None:
    assert status == 400, (status, body)
    assert body.startswith(f"{field}:"), body
    assert "Traceback" not in body
    assert p.get("/api/traffic/show") == []  # no job started
    assert os.listdir(workdir) == []  # and nothing was created


def test_non_utf8_form_body(api_proxy, tmp_path):
    out = tmp_path / "out"
    for body in (f"output={out}\xff&duration=10s".encode("latin-1"), f"output={out}%FF&duration=10s".encode()):
        status, text = raw_post(api_proxy.api, "/api/traffic/capture", body)
        assert_refused(api_proxy, status, text, "output", tmp_path)
        assert "UTF-8" in text
    status, text = raw_post(api_proxy.api, "/api/traffic/capture", f"output={out}&dura\xfftion=10s".encode("latin-1"))
    assert status == 400 and "UTF-8" in text and "form body" in text, text
    assert api_proxy.get("/api/traffic/show") == []


CAPTURE_FIELDS = ["output", "duration", "compress", "encryption-method"]
REPLAY_FIELDS = ["input", "username", "password", "speed", "readonly", "encryption-key-path", "report-dir"]


def _valid_capture(tmp_path) -> dict:
    return {"output": str(tmp_path / "out"), "duration": "10s", "compress": "true", "encryption-method": ""}


def _valid_replay(capture: str, tmp_path) -> dict:
    return {"input": capture, "username": "root", "password": PASSWORD, "speed": "0", "readonly": "true",
            "encryption-key-path": "", "report-dir": str(tmp_path / "reports")}


@pytest.mark.parametrize("bad", ["\x00", "\n", "\x1b[31m", "\x7f", "\u2028"], ids=["nul", "lf", "esc", "del", "ls"])
@pytest.mark.parametrize("field", CAPTURE_FIELDS)
def test_control_characters_in_capture_fields(api_proxy, tmp_path, field, bad):
    form = _valid_capture(tmp_path)
    form[field] = (form[field] or "/tmp/k") + bad + "x"
    status, text = post_form(api_proxy.api, "/api/traffic/capture", form)
    assert_refused(api_proxy, status, text, field, tmp_path)
    assert "control character" in text


@pytest.mark.parametrize("bad", ["\x00", "\r\n", "\x08"], ids=["nul", "crlf", "bs"])
@pytest.mark.parametrize("field", REPLAY_FIELDS)
def test_control_characters_in_replay_fields(api_proxy, small_capture, tmp_path, field, bad):
    workdir = tmp_path / "work"
    workdir.mkdir()
    form = _valid_replay(small_capture, workdir)
    form[field] = (form[field] or "/tmp/k") + bad + "x"
    status, text = post_form(api_proxy.api, "/api/traffic/replay", form)
    assert_refused(api_proxy, status, text, field, workdir)
    assert "control character" in text
    assert PASSWORD not in text  # a secret is never echoed, not even a broken one
    assert PASSWORD not in api_proxy.read_log()


def test_nul_in_report_dir_is_refused_before_the_replay_runs(api_proxy, small_capture, tmp_path):
    before = sorted(os.listdir(small_capture))
    form = _valid_replay(small_capture, tmp_path)
    form["report-dir"] = str(tmp_path / "rep\x00orts")
    status, text = post_form(api_proxy.api, "/api/traffic/replay", form)
    assert_refused(api_proxy, status, text, "report-dir", tmp_path)
    assert sorted(os.listdir(small_capture)) == before  # no summary written anywhere


def test_report_dir_that_is_a_file(api_proxy, small_capture, tmp_path):
    (tmp_path / "afile").write_text("x")
    form = _valid_replay(small_capture, tmp_path)
    form["report-dir"] = str(tmp_path / "afile")
    status, text = post_form(api_proxy.api, "/api/traffic/replay", form)
    assert status == 400 and text.startswith("report-dir:") and "not a directory" in text, text
    assert api_proxy.get("/api/traffic/show") == []


@pytest.mark.parametrize("path,form,field", [
    ("/api/traffic/capture", {"outptu": "/tmp/x", "duration": "10s"}, "outptu"),
    ("/api/traffic/replay", {"speeed": "2"}, "speeed"),
    ("/api/traffic/cancel", {"tpye": "capture"}, "tpye"),
    ("/api/traffic/capture", {"out\x00put": "/tmp/x"}, "out\\x00put"),
], ids=["capture", "replay", "cancel", "nul-in-name"])
def test_unknown_fields(api_proxy, small_capture, tmp_path, path, form, field):
    full = (_valid_capture(tmp_path) if path.endswith("capture") else
            _valid_replay(small_capture, tmp_path) if path.endswith("replay") else {})
    full.update(form)
    status, text = post_form(api_proxy.api, path, full)
    assert_refused(api_proxy, status, text, field, tmp_path)
    assert "unknown field" in text


def test_repeated_field_and_relative_path(api_proxy, tmp_path):
    body = f"output={tmp_path / 'a'}&output={tmp_path / 'b'}&duration=10s".encode()
    status, text = raw_post(api_proxy.api, "/api/traffic/capture", body)
    assert_refused(api_proxy, status, text, "output", tmp_path)
    assert "more than once" in text
    status, text = post_form(api_proxy.api, "/api/traffic/capture", {"output": "relative/dir", "duration": "10s"})
    assert_refused(api_proxy, status, text, "output", tmp_path)
    assert "absolute" in text
    assert not os.path.exists("relative")


def _multipart(fields: dict[str, tuple[str | None, str]]) -> tuple[bytes, str]:
    boundary = "fastproxy" + secrets.token_hex(8)
    parts = []
    for name, (filename, value) in fields.items():
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        parts.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n{value}\r\n")
    return ("".join(parts) + f"--{boundary}--\r\n").encode(), f"multipart/form-data; boundary={boundary}"


def test_multipart_upload_is_refused(api_proxy, tmp_path):
    cwd_before = set(os.listdir("."))  # the proxy runs in this directory: a repr-named dir would land here
    for fields in ({"output": ("x.txt", str(tmp_path / "up")), "duration": (None, "10s")},
                   {"output": (None, str(tmp_path / "up")), "duration": (None, "10s")}):
        body, ctype = _multipart(fields)
        status, text = raw_post(api_proxy.api, "/api/traffic/capture", body, ctype)
        assert status == 400 and text.startswith("Content-Type:") and FORM in text, text
        assert api_proxy.get("/api/traffic/show") == []
    assert os.listdir(tmp_path) == []
    assert set(os.listdir(".")) == cwd_before
    status, text = raw_post(api_proxy.api, "/api/traffic/capture", b'{"output": "/tmp/x"}', "application/json")
    assert status == 400 and text.startswith("Content-Type:"), text


def test_fields_in_the_query_string(proxy_factory, mariadb, tmp_path):
    api_proxy = proxy_factory([mariadb])  # its own: this one starts a job
    out = tmp_path / "q"
    query = urllib.parse.urlencode({"output": str(out), "duration": "1h"})
    status, text = raw_post(api_proxy.api, f"/api/traffic/capture?{query}", b"", None)
    assert status == 200, text
    [job] = api_proxy.get("/api/traffic/show")
    assert job["type"] == "capture" and job["status"] == "running" and job["output"] == str(out)
    # the same field in the query and in the body is given twice
    status, text = raw_post(api_proxy.api, "/api/traffic/cancel?type=capture", b"type=replay")
    assert status == 400 and text.startswith("type:"), text
    status, text = raw_post(api_proxy.api, "/api/traffic/cancel?type=capture", b"", None)
    assert status == 200 and "capture" in text, text
    status, text = raw_post(api_proxy.api, "/api/traffic/cancel", b"graceful=perhaps")
    assert status == 400 and text.startswith("graceful:"), text


def test_a_password_in_the_url_is_refused_unread(api_proxy, small_capture, tmp_path):
    """URLs end up in access logs and shell histories: the password goes in the body only, and the
    answer that refuses it does not repeat it."""
    form = _valid_replay(small_capture, tmp_path)
    secret = form.pop("password") + "-in-url-7Q"
    query = urllib.parse.urlencode({"password": secret})
    status, text = raw_post(api_proxy.api, f"/api/traffic/replay?{query}",
                            urllib.parse.urlencode(form).encode())
    assert status == 400 and text.startswith("password:") and "form body" in text, text
    assert secret not in text
    assert not [j for j in api_proxy.get("/api/traffic/show") if j["type"] == "replay" and j["status"] == "running"]


def test_every_replay_option_is_a_known_field(api_proxy, small_capture, tmp_path):
    from fastproxy.replay.selection import FILTER_FIELDS

    for name in ["format", "tls", "tls-ca", "tls-skip-verify", "pipeline"] + [n for n, _ in FILTER_FIELDS]:
        form = _valid_replay(small_capture, tmp_path)
        form.update({name: "/x", "username": ""})  # a missing username: refused after the fields passed
        status, text = post_form(api_proxy.api, "/api/traffic/replay", form)
        assert status == 400 and text.startswith("username:"), (name, text)
    # an S3 location is an input as good as an absolute path
    form = _valid_replay(small_capture, tmp_path)
    form.update({"input": f"{small_capture},s3://bucket/prefix", "username": ""})
    status, text = post_form(api_proxy.api, "/api/traffic/replay", form)
    assert status == 400 and text.startswith("username:"), text
    # several inputs, each absolute
    form = _valid_replay(small_capture, tmp_path)
    form["input"] = f"{small_capture},relative/capture"
    status, text = post_form(api_proxy.api, "/api/traffic/replay", form)
    assert_refused(api_proxy, status, text, "input", tmp_path)
    assert "'relative/capture'" in text
