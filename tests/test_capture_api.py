"""The capture's surface: HTTP API, `fastproxy traffic capture|show|cancel|inspect`, encryption."""
from __future__ import annotations

import json
import os
import re
import shutil

import MySQLdb
import pytest

from capture_rawclient import ps_client
from capture_util import (cancel_capture, captures, cmd, last_capture, read_capture, run_cli, start_capture,
                          wait_for, wait_for_capture_end)
from conftest import connect_kwargs
from fastproxy.capture.crypto import generate_key_file
from fastproxy.capture.reader import TrafficReader, list_traffic_files
from fastproxy.errors import TrafficFormatError
from fastproxy.scratch_db import ROOT_PASSWORD, free_port

pytestmark = pytest.mark.timeout(120)

SHOW_FIELDS = {"type", "status", "start_time", "end_time", "duration", "progress", "error", "output",
               "commands", "connections", "bytes_written"}


def _queries(proxy, *sqls):
    conn = MySQLdb.connect(**connect_kwargs(proxy.port), autocommit=True)
    cur = conn.cursor()
    for sql in sqls:
        cur.execute(sql)
        cur.fetchall()
    conn.close()


# ---- 5. encryption round trip ---------------------------------------------------------------------
def test_encrypted_capture_round_trip(mariadb, proxy_factory, tmp_path):
    keyfile = tmp_path / "key"
    key = generate_key_file(keyfile)
    proxy = proxy_factory([mariadb], f"--security.encryption-key-path={keyfile}")
    out = tmp_path / "enc"
    # uncompressed, so that without encryption the SQL would be in the files as is
    start_capture(proxy, out, "60s", compress="false", **{"encryption-method": "aes256-ctr"})
    _queries(proxy, "SELECT 'marker-enc-1'", "SELECT 'marker-enc-2'")
    job = cancel_capture(proxy)
    assert job["encryption_method"] == "aes256-ctr" and job["error"] == ""

    files = list_traffic_files(out)
    assert files and all(f.endswith(".bin.enc") for f in files), files
    for f in files:
        assert b"marker-enc" not in (out / f).read_bytes()
    with pytest.raises(TrafficFormatError, match="encrypt"):
        list(TrafficReader(out))
    with pytest.raises(TrafficFormatError, match="wrong encryption key"):
        list(TrafficReader(out, bytes(32)))
    meta, records, _ = read_capture(out, key)
    assert meta["encryption"] == "aes-256-ctr" and meta["encryption_method"] == "aes256-ctr"
    sqls = [r.payload[1:] for r in records if cmd(r) == "COM_QUERY"]
    assert b"SELECT 'marker-enc-1'" in sqls and b"SELECT 'marker-enc-2'" in sqls

    ok = run_cli("traffic", "inspect", str(out), "--encryption-key-path", str(keyfile))
    assert ok.returncode == 0, ok.stderr
    assert "SELECT 'marker-enc-2'" in ok.stdout
    nokey = run_cli("traffic", "inspect", str(out))
    assert nokey.returncode != 0 and "Traceback" not in nokey.stderr
    assert "key" in nokey.stderr and files[0] in nokey.stderr, nokey.stderr

    # a proxy without a key refuses, naming the key setting; nothing is created
    plain = proxy_factory([mariadb])
    status, body = plain.post("/api/traffic/capture", {"output": str(tmp_path / "enc2"), "duration": "10s",
                                                       "encryption-method": "aes256-ctr"})
    assert status == 400 and "encryption-key-path" in body, (status, body)
    assert not (tmp_path / "enc2").exists()
    assert captures(plain) == []
    cli = run_cli("traffic", "capture", "--curls", plain.api, "--output", str(tmp_path / "enc3"),
                  "--duration", "10s", "--encryption-method", "aes256-ctr")
    assert cli.returncode != 0 and "encryption-key-path" in cli.stderr, cli.stderr


# ---- 6. inspect output ------------------------------------------------------------------------------
def test_inspect_known_workload(mariadb, proxy_factory, tmp_path):
    proxy = proxy_factory([mariadb])
    out = tmp_path / "insp"
    start_capture(proxy, out)
    raw = ps_client(proxy.port, "root", ROOT_PASSWORD)
    assert raw.query("SELECT 1").rows == 1
    assert raw.query("SELECT 'a' UNION ALL SELECT 'b'").rows == 2
    bad = raw.query("SELECT no_such_column")
    assert bad.err_code == 1054
    raw.quit()
    wait_for(lambda: last_capture(proxy)["commands"] >= 4, what="the COM_QUIT to be captured")
    cancel_capture(proxy)

    text = run_cli("traffic", "inspect", str(out))
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    recs = [ln for ln in lines if re.match(r"^\d{4}-\d\d-\d\dT", ln)]
    assert len(recs) == 6, text.stdout
    assert re.search(r"conn=\d+ CONN_OPEN user=root client_addr=127\.0\.0\.1:\d+ backend_conn_id=\d+$", recs[0]), \
        recs[0]
    assert re.search(r" COM_QUERY OK affected=0 rows=1 \d+us SELECT 1$", recs[1]), recs[1]
    assert re.search(r" COM_QUERY OK affected=0 rows=2 \d+us SELECT 'a' UNION ALL SELECT 'b'$", recs[2]), recs[2]
    assert re.search(r" COM_QUERY ERR err=1054 affected=0 rows=0 \d+us SELECT no_such_column$", recs[3]), recs[3]
    assert " COM_QUIT NO_RESPONSE " in recs[4], recs[4]
    assert recs[5].endswith(" CONN_CLOSE by=client"), recs[5]
    conn_ids = {re.search(r"conn=(\d+)", ln).group(1) for ln in recs}
    assert len(conn_ids) == 1
    summary = "\n".join(lines[lines.index("summary:"):])
    for expected in ["records: 6 in 1 file(s)", "connections: 1 (opened 1, already open 0, closed 1)",
                     "commands: 4", "COM_QUERY: 3", "COM_QUIT: 1", "errors: 1", "code 1054: 1"]:
        assert expected in summary, summary
    assert "incomplete" not in summary

    js = run_cli("traffic", "inspect", "--json", str(out))
    assert js.returncode == 0, js.stderr
    objs = [json.loads(ln) for ln in js.stdout.splitlines()]
    assert [o.get("kind") for o in objs[:-1]] == ["CONN_OPEN", "COMMAND", "COMMAND", "COMMAND", "COMMAND",
                                                 "CONN_CLOSE"]
    q = objs[1:4]
    assert [o["sql"] for o in q] == ["SELECT 1", "SELECT 'a' UNION ALL SELECT 'b'", "SELECT no_such_column"]
    assert [o["outcome"] for o in q] == ["OK", "OK", "ERR"] and q[2]["err_code"] == 1054
    assert [o["rows"] for o in q] == [1, 2, 0]
    assert objs[0]["info"]["user"] == "root"
    s = objs[-1]["summary"]
    assert (s["records"], s["commands"], s["connections"], s["errors"]) == (6, 4, 1, 1)
    assert s["commands_by_type"] == {"COM_QUERY": 3, "COM_QUIT": 1} and s["errors_by_code"] == {"1054": 1}
    assert s["complete"] is True

    limited = run_cli("traffic", "inspect", "--json", "--limit", "2", str(out))
    objs = [json.loads(ln) for ln in limited.stdout.splitlines()]
    assert len(objs) == 3 and objs[-1]["summary"]["records"] == 6

    # a corrupt file: non-zero exit, one message naming the file, no traceback
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    name = list_traffic_files(broken)[0]
    data = bytearray((broken / name).read_bytes())
    for i in range(20, min(len(data), 60)):
        data[i] ^= 0x5A
    (broken / name).write_bytes(bytes(data))
    bad = run_cli("traffic", "inspect", str(broken))
    assert bad.returncode != 0
    assert name in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    # and a cut-off file while meta says the capture is complete
    (broken / name).write_bytes((out / name).read_bytes()[:-7])
    cut = run_cli("traffic", "inspect", str(broken))
    assert cut.returncode != 0 and name in cut.stderr and "Traceback" not in cut.stderr, cut.stderr


# ---- 7. API and CLI -----------------------------------------------------------------------------------
def _show_cli(api: str) -> list[dict]:
    r = run_cli("traffic", "show", "--curls", api)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_api_and_cli(mariadb, proxy_factory, tmp_path):
    proxy = proxy_factory([mariadb])
    out1 = tmp_path / "one"
    # bad input first: nothing starts
    for form, word in [({"output": str(out1), "duration": "soon"}, "duration"),
                       ({"output": str(out1), "duration": "0s"}, "duration"),
                       ({"output": str(out1)}, "duration"),
                       ({"duration": "10s"}, "output"),
                       ({"output": str(out1), "duration": "10s", "compress": "maybe"}, "compress"),
                       ({"output": str(out1), "duration": "10s", "encryption-method": "rot13"},
                        "encryption-method")]:
        status, body = proxy.post("/api/traffic/capture", form)
        assert status == 400 and word in body, (form, status, body)
    assert captures(proxy) == []
    bad = run_cli("traffic", "capture", "--curls", proxy.api, "--output", str(out1), "--duration", "soon")
    assert bad.returncode != 0 and "duration" in bad.stderr and "Traceback" not in bad.stderr

    r = run_cli("traffic", "capture", "--curls", proxy.api, "--output", str(out1), "--duration", "1h")
    assert r.returncode == 0 and "capture started" in r.stdout, r.stdout + r.stderr
    _queries(proxy, "SELECT 1")
    [job] = _show_cli(proxy.api)
    assert SHOW_FIELDS <= set(job), job
    assert (job["type"], job["status"], job["error"], job["end_time"]) == ("capture", "running", "", "")
    assert re.fullmatch(r"\d{1,3}%", job["progress"]) and job["output"] == str(out1)
    assert job["start_time"] and job["duration"]
    assert job["commands"] >= 1 and job["connections"] >= 1

    # one job at a time: 409, and the CLI says so and exits non-zero
    status, body = proxy.post("/api/traffic/capture", {"output": str(tmp_path / "two"), "duration": "10s"})
    assert status == 409 and "already running" in body, (status, body)
    second = run_cli("traffic", "capture", "--curls", proxy.api, "--output", str(tmp_path / "two"),
                     "--duration", "10s")
    assert second.returncode != 0 and "409" in second.stderr and "already running" in second.stderr
    assert not (tmp_path / "two").exists()

    c = run_cli("traffic", "cancel", "--curls", proxy.api)
    assert c.returncode == 0 and "capture" in c.stdout, c.stdout + c.stderr
    job = wait_for_capture_end(proxy)
    assert job["status"] == "canceled" and job["end_time"] and job["error"] == ""
    assert re.fullmatch(r"\d{1,3}%", job["progress"])
    meta, records, _ = read_capture(out1)
    assert meta["commands"] == job["commands"] and meta["connections"] == job["connections"]
    assert meta["bytes_written"] == job["bytes_written"]
    again = run_cli("traffic", "cancel", "--curls", proxy.api)
    assert again.returncode == 0 and "no job running" in again.stdout

    # a directory that holds a finished capture is refused, and left alone
    before = sorted(os.listdir(out1))
    status, body = proxy.post("/api/traffic/capture", {"output": str(out1), "duration": "10s"})
    assert status == 400 and "already holds a finished capture" in body, (status, body)
    assert sorted(os.listdir(out1)) == before

    # a capture that runs out its duration is "done" at 100%
    out3 = tmp_path / "three"
    start_capture(proxy, out3, "1s")
    job = wait_for_capture_end(proxy)
    assert (job["status"], job["progress"], job["error"]) == ("done", "100%", "")
    assert [j["status"] for j in _show_cli(proxy.api)] == ["canceled", "done"]


def test_cli_several_proxies_and_unreachable(mariadb, proxy_factory, tmp_path):
    p1 = proxy_factory([mariadb])
    p2 = proxy_factory([mariadb])
    both = f"{p1.api},{p2.api}"
    start_capture(p1, tmp_path / "p1")
    # p1 is busy, p2 is free: the CLI acts on each, reports p1's refusal and exits non-zero
    r = run_cli("traffic", "capture", "--curls", both, "--output", str(tmp_path / "p2"), "--duration", "1h")
    assert r.returncode != 0
    assert f"{p1.api}: error (HTTP 409)" in r.stderr, r.stderr
    assert f"{p2.api}: capture started" in r.stdout, r.stdout
    assert last_capture(p2)["status"] == "running" and last_capture(p2)["output"] == str(tmp_path / "p2")

    shown = run_cli("traffic", "show", "--curls", both)
    assert shown.returncode == 0
    assert shown.stdout.count('"status": "running"') == 2
    assert shown.stdout.startswith(f"{p1.api}: [") and f"\n{p2.api}: [" in shown.stdout

    c = run_cli("traffic", "cancel", "--curls", both, "--type", "capture")
    assert c.returncode == 0, c.stderr
    assert wait_for_capture_end(p1)["status"] == wait_for_capture_end(p2)["status"] == "canceled"

    dead = f"127.0.0.1:{free_port()}"
    for args in (["show"], ["cancel"], ["capture", "--output", str(tmp_path / "x"), "--duration", "1s"]):
        r = run_cli("traffic", *args, "--curls", dead)
        assert r.returncode != 0, args
        err = r.stderr.strip()
        assert "\n" not in err and dead in err and "Traceback" not in err, err
        assert r.stdout == ""
