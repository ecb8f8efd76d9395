"""Replay from other sources: MariaDB slow and general query logs written by a real server for a known
workload, TiProxy captures built from TiProxy's documented layout, and `traffic convert`."""
from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import threading
import time

import MySQLdb
import pytest

from fastproxy.capture.record import KIND_COMMAND, KIND_CONN_CLOSE, KIND_CONN_OPEN, OUTCOME_ERR
from fastproxy.errors import TrafficFormatError
from fastproxy.inputs import detect_format, open_input
from fastproxy.scratch_db import ROOT_PASSWORD, ScratchMariaDB
from replay_util import checksums, records, replay_cli
from tiproxy_format import encode_command, flushed_prefix, write_capture

THREADS = 4
PER_THREAD = 25


def _logged_server(tmp, name):
    return ScratchMariaDB(name=name, extra_args=[
        "--slow-query-log=1", "--long-query-time=0", f"--slow-query-log-file={tmp}/{name}-slow.log",
        "--general-log=1", f"--general-log-file={tmp}/{name}-general.log"])


@pytest.fixture(scope="module")
def workload_logs(tmp_path_factory):
    """A real server's slow and general logs of a known multi-connection workload: the statements each
    connection sent, by server thread id."""
    tmp = str(tmp_path_factory.mktemp("logs"))
    with _logged_server(tmp, "src") as db:
        setup = MySQLdb.connect(host=db.host, port=db.port, user="root", password=ROOT_PASSWORD, autocommit=True)
        cur = setup.cursor()
        cur.execute("CREATE DATABASE w")
        cur.execute("CREATE TABLE w.t (id INT PRIMARY KEY, owner INT, v VARCHAR(64), n INT NOT NULL DEFAULT 0)")
        setup.close()
        time.sleep(1.1)  # the workload starts in a later second than the schema (logs keep whole seconds)
        sent: dict[int, list[str]] = {}

        def worker(k: int) -> None:
            c = MySQLdb.connect(host=db.host, port=db.port, user="root", password=ROOT_PASSWORD, autocommit=True,
                                db="w")
            cur = c.cursor()
            cur.execute("SELECT CONNECTION_ID()")
            tid = cur.fetchone()[0]
            mine = sent.setdefault(tid, [])
            for i in range(PER_THREAD):
                row = k * 1000 + i
                stmts = [f"INSERT INTO t (id, owner, v) VALUES ({row}, {k}, 'line\\nbreak {i}; not a split')",
                         f"UPDATE t SET n = n + {i} WHERE id = {row}",
                         f"SELECT v, n FROM t WHERE owner = {k} ORDER BY id"]
                for s in stmts:
                    cur.execute(s)
                    cur.fetchall()
                    mine.append(s)
            c.close()

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sums = checksums(db, "w")
    return {"slow": f"{tmp}/src-slow.log", "general": f"{tmp}/src-general.log", "sent": sent, "checksums": sums,
            "tmp": tmp}


def _per_thread(source) -> dict[int, list[str]]:
    """COM_QUERY texts per server thread id (CONN_OPEN's backend_conn_id)."""
    tid_of: dict[int, int] = {}
    out: dict[int, list[str]] = {}
    for r in source:
        if r.kind == KIND_CONN_OPEN:
            tid_of[r.conn_id] = json.loads(r.payload).get("backend_conn_id", -r.conn_id)
        elif r.kind == KIND_COMMAND and r.payload[:1] == b"\x03":
            out.setdefault(tid_of[r.conn_id], []).append(r.payload[1:].decode())
    return out


@pytest.mark.parametrize("kind", ["slow", "general"])
def test_logs_hold_each_connections_statements_in_order(workload_logs, kind):
    path = workload_logs[kind]
    assert detect_format(path) == ("slow-log" if kind == "slow" else "general-log")
    source = open_input(path)
    got = _per_thread(source)
    for tid, statements in workload_logs["sent"].items():
        mine = [s for s in got[tid] if not s.startswith(("SET ", "SELECT CONNECTION_ID()"))]
        assert mine == statements, f"thread {tid}"
    # the server logged the root password of its own setup in clear; it never leaves the source
    assert source.redacted >= 1
    assert not any(ROOT_PASSWORD in s for stmts in got.values() for s in stmts)
    assert any("IDENTIFIED BY '__fastproxy_redacted__'" in s for stmts in got.values() for s in stmts)
    starts = {}
    for r in open_input(path):
        if r.kind == KIND_COMMAND:
            assert r.start_ns > starts.get(r.conn_id, 0)  # per connection, strictly in order
            starts[r.conn_id] = r.start_ns


@pytest.mark.parametrize("kind", ["slow", "general"])
def test_log_replays_same_statements_in_same_per_thread_order(workload_logs, kind, tmp_path):
    """Replayed onto an empty server that logs what it runs: each connection's statements arrive in
    the same order, and the data ends equal."""
    with _logged_server(str(tmp_path), "dst") as dst:
        _, summary = replay_cli(dst.addr, workload_logs[kind], "--report-dir", str(tmp_path), "--no-report-tables")
        assert summary["input_format"] == ("slow-log" if kind == "slow" else "general-log")
        assert summary["outcomes_recorded"] is False
        # each failure's statement and error in short (a long repr is cut before the error message)
        assert summary["commands_failed"] == 0, [(f["sample_stmt"][:60], f["sample_err_msg"])
                                                 for f in summary["top_failures"]]
        assert checksums(dst, "w") == workload_logs["checksums"]
        replayed = _per_thread(open_input(f"{tmp_path}/dst-general.log"))
    wanted = list(workload_logs["sent"].values())
    streams = [[s for s in stmts if s.split()[0] in ("INSERT", "UPDATE", "SELECT") and "CONNECTION_ID" not in s]
               for stmts in replayed.values()]
    for statements in wanted:
        assert statements in streams


def test_convert_keeps_every_record_and_no_secret(workload_logs, tmp_path):
    out = tmp_path / "converted"
    res = subprocess.run([sys.executable, "-m", "fastproxy", "traffic", "convert", "--input", workload_logs["slow"],
                          "--output", str(out)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert detect_format(str(out)) == "native"
    converted = records(str(out))
    original = list(open_input(workload_logs["slow"]))
    assert [(r.kind, r.conn_id, r.start_ns, r.end_ns, r.payload) for r in converted] == \
           [(r.kind, r.conn_id, r.start_ns, r.end_ns, r.payload) for r in original]
    with open(out / "meta") as f:
        meta = json.load(f)
    assert meta["converted_from"] == "slow-log" and meta["outcomes_recorded"] is False
    for name in os.listdir(out):
        with open(out / name, "rb") as f:
            assert ROOT_PASSWORD.encode() not in f.read()
    assert ROOT_PASSWORD not in res.stdout


# ---- TiProxy captures ----------------------------------------------------------------------------

def _tiproxy_commands():
    t = datetime.datetime(2024, 12, 3, 11, 5, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=8)))
    ms = lambda n: t + datetime.timedelta(milliseconds=n)  # noqa: E731
    a, b = 11, 12
    file1 = b"".join([
        encode_command(ms(0), a, b"\x02tp"),  # InitConn: the connection's database
        encode_command(ms(1), a, b"\x03CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(40))"),
        encode_command(ms(5), a, "\x03INSERT INTO t VALUES (1, 'multi\nline é')".encode()),
        encode_command(ms(6), a, b"\x03INSERT INTO t VALUES (1, 'dup')", success=False),  # failed in production
        encode_command(ms(600), b, b"\x02tp"),  # well after the CREATE TABLE: replay orders per connection
        encode_command(ms(601), b, b"\x16INSERT INTO t VALUES (?, 'prepared')", ps_id=7),
    ])
    execute = b"\x17" + (7).to_bytes(4, "little") + b"\x00" + (1).to_bytes(4, "little") + b"\x00\x01" + \
        b"\x08\x00" + (2).to_bytes(8, "little")
    file2 = b"".join([
        encode_command(ms(1010), b, execute, ps_id=7, prepared="INSERT INTO t VALUES (?, 'prepared')"),
        encode_command(ms(1011), b, b"\x19" + (7).to_bytes(4, "little"), ps_id=7),
        encode_command(ms(1012), a, b"\x03SET SESSION_STATES '{}'"),
        encode_command(ms(1013), a, b"\x01"),
        encode_command(ms(1014), b, b"\x01"),
    ])
    return [file1, file2]


@pytest.mark.parametrize("encrypted", [False, True], ids=["gzip", "gzip+aes"])
def test_tiproxy_capture_replays(mariadb_test, tmp_path, encrypted):
    key = os.urandom(32) if encrypted else None
    cap = tmp_path / "tiproxy"
    write_capture(str(cap), _tiproxy_commands(), key=key, cmds=11)
    assert detect_format(str(cap)) == "tiproxy"
    src = open_input(str(cap), encryption_key=key)
    recs = list(src)
    cmds = [r for r in recs if r.kind == KIND_COMMAND]
    assert [r.payload[:1] for r in cmds] == [b"\x03", b"\x03", b"\x03", b"\x16", b"\x17", b"\x19"]
    assert cmds[1].payload == "\x03INSERT INTO t VALUES (1, 'multi\nline é')".encode()
    assert cmds[2].outcome == OUTCOME_ERR and cmds[2].err_code == 0
    assert cmds[3].affected_rows == 7  # the PREPARE's captured statement id
    assert src.stats["TiDB session states (connection open before the capture; TiDB only)"] == 1
    mariadb_test.sql("DROP DATABASE IF EXISTS tp; CREATE DATABASE tp")
    args = ["--format", "tiproxy", "--report-dir", str(tmp_path), "--no-report-tables"]
    if key:
        keyfile = tmp_path / "key"
        keyfile.write_bytes(key)
        args += ["--encryption-key-path", str(keyfile)]
    _, summary = replay_cli(mariadb_test.addr, str(cap), *args)
    assert summary["outcomes_recorded"] is True and summary["error_codes_recorded"] is False
    # the duplicate key failed in production too: not a new failure
    assert summary["commands_failed"] == 0 and summary["commands_failed_same_as_capture"] == 1, summary
    assert mariadb_test.sql("SELECT id, v FROM tp.t ORDER BY id").splitlines() == ["1\tmulti\\nline é",
                                                                                    "2\tprepared"]


def test_tiproxy_errors_name_file_and_line(tmp_path):
    cap = tmp_path / "tiproxy"
    key = os.urandom(32)
    write_capture(str(cap), _tiproxy_commands(), key=key)
    with pytest.raises(TrafficFormatError, match="encrypted"):
        open_input(str(cap), "tiproxy")
    plain = tmp_path / "plain"
    names = write_capture(str(plain), [b"# Time: 2024-12-03T11:05:01Z\n# Conn_ID: 1\nnot a key line\n"],
                          compress=False)
    with pytest.raises(TrafficFormatError, match=rf"{names[0]}: line 3"):
        list(open_input(str(plain)))
    cut = tmp_path / "cut"
    names = write_capture(str(cut), [b"# Time: 2024-12-03T11:05:01Z\n# Conn_ID: 1\n# Payload_len: 50\nSELECT"],
                          compress=False)
    with pytest.raises(TrafficFormatError, match=rf"{names[0]}.*truncated"):
        list(open_input(str(cut)))


@pytest.mark.parametrize("variant", ["plain", "gzip", "gzip+aes"])
def test_a_tiproxy_capture_still_being_written_replays_its_whole_commands(mariadb_test, tmp_path, variant):
    """TiProxy writes its meta when the capture ends: without it, the last file may end mid-command
    (it is still being written). Its whole commands replay, the cut one does not, and the summary says
    the input is unfinished (it raised "truncated" and replayed nothing). Finished, the same cut is an
    error, and so is a cut in a file before the last."""
    key = os.urandom(32) if variant == "gzip+aes" else None
    compress = variant != "plain"
    whole = tmp_path / "whole"
    write_capture(str(whole), _tiproxy_commands(), key=key, compress=compress)
    expected = [r.payload for r in open_input(str(whole), encryption_key=key) if r.kind == KIND_COMMAND]
    cap = tmp_path / "being-written"
    files = _tiproxy_commands()
    names = write_capture(str(cap), files, key=key, compress=compress)
    cut = files[-1].index(b"# Cmd_type: StmtClose") + 10  # inside the last command of the last file
    (cap / names[-1]).write_bytes(flushed_prefix(files[-1], cut, key=key, compress=compress))

    with pytest.raises(TrafficFormatError, match=rf"{names[-1]}.*truncated"):
        list(open_input(str(cap), encryption_key=key))  # its meta says it ended: a cut is damage
    os.unlink(cap / "meta")
    src = open_input(str(cap), encryption_key=key)
    got = [r.payload for r in src if r.kind == KIND_COMMAND]
    assert src.unfinished and src.truncated_at is not None and src.truncated_at[0] == names[-1]
    if key is None:  # no meta says whether it is encrypted: a key given says it is, and a wrong guess is named
        with pytest.raises(TrafficFormatError, match="no meta to say whether it is encrypted"):
            list(open_input(str(cap), encryption_key=os.urandom(32)))
    assert got == expected[:-1] and expected[-1][:1] == b"\x19", (got, expected)  # all but the cut COM_STMT_CLOSE

    mariadb_test.sql("DROP DATABASE IF EXISTS tp; CREATE DATABASE tp")
    args = ["--format", "tiproxy", "--report-dir", str(tmp_path / "report"), "--no-report-tables", "--speed", "0"]
    if key:
        (tmp_path / "key").write_bytes(key)
        args += ["--encryption-key-path", str(tmp_path / "key")]
    res, summary = replay_cli(mariadb_test.addr, str(cap), *args)
    assert summary["input_unfinished"] is True and "a capture without its meta" in res.stdout, summary
    assert summary["commands_replayed"] == len(got), summary
    assert mariadb_test.sql("SELECT id FROM tp.t ORDER BY id").split() == ["1", "2"]  # the execute before the cut ran

    # a file just started, read with the wrong idea of its encryption (no meta says it): an error naming
    # that, not an input quietly empty (its few bytes taken for a cut)
    tiny = tmp_path / "tiny"
    names = write_capture(str(tiny), files[:1], key=key, compress=compress)
    os.unlink(tiny / "meta")
    (tiny / names[0]).write_bytes(flushed_prefix(files[0], 20, key=key, compress=compress))
    with pytest.raises(TrafficFormatError, match="no meta to say whether it is encrypted"):
        list(open_input(str(tiny), "tiproxy", encryption_key=None if key else os.urandom(32)))
    assert len(list(open_input(str(tiny), "tiproxy", encryption_key=key))) == 0  # the right key: a cut

    first_cut = tmp_path / "first-file-cut"
    names = write_capture(str(first_cut), files, key=key, compress=compress)
    os.unlink(first_cut / "meta")
    (first_cut / names[0]).write_bytes(flushed_prefix(files[0], len(files[0]) - 5, key=key, compress=compress))
    with pytest.raises(TrafficFormatError, match=rf"{names[0]}.*truncated"):
        list(open_input(str(first_cut), encryption_key=key))  # only the file being written may end early


def test_ambiguous_or_missing_input_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty.log"
    empty.write_text("nothing here\n")
    with pytest.raises(TrafficFormatError, match="give --format"):
        detect_format(str(empty))
    with pytest.raises(TrafficFormatError, match="no such file"):
        open_input(str(tmp_path / "missing.log"))


def test_convert_keeps_a_statement_larger_than_its_buffer(tmp_path):
    """A 20 MiB statement in a general log (larger than the conversion's 16 MiB ring) is converted whole."""
    big = "INSERT INTO t VALUES ('" + "x" * (20 << 20) + "')"
    log = tmp_path / "general.log"
    log.write_text("/usr/sbin/mariadbd, Version: 10.11 (Debian). started with:\nTcp port: 1  Unix socket: s\n"
                   "Time\t\t    Id Command\tArgument\n"
                   "261203 11:13:53\t     5 Connect\troot@127.0.0.1 on d using TCP/IP\n"
                   f"\t\t     5 Query\t{big}\n\t\t     5 Query\tSELECT 1\n\t\t     5 Quit\t\n")
    from fastproxy.inputs.convert import convert

    out = tmp_path / "cap"
    convert(open_input(str(log)), str(out))
    payloads = [r.payload for r in records(str(out)) if r.kind == KIND_COMMAND]
    assert payloads == [b"\x03" + big.encode(), b"\x03SELECT 1"]


SLOW_LOG = ("/usr/sbin/mariadbd, Version: 10.11 (Debian). started with:\nTcp port: 1  Unix socket: s\n"
            "Time\t\t    Id Command\tArgument\n"
            "# Time: 241203 11:05:01\n# User@Host: app[app] @  [10.0.0.5]\n"
            "# Thread_id: 8  Schema: shop  QC_hit: No\n"
            "# Query_time: 0.000123  Lock_time: 0.000045  Rows_sent: 1  Rows_examined: 1\n"
            "# Rows_affected: 0  Bytes_sent: 87\nSET timestamp=1733223901;\nSELECT 1;\n")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastproxy", *args], capture_output=True, text=True, timeout=120)


def test_a_forced_format_the_input_does_not_match_is_an_error(tmp_path):
    """--format slow-log / general-log on a file with no entry of that format: an error naming the
    format and the file, exit != 0 (was: 0 records, 0 commands replayed, an empty capture, exit 0)."""
    slow = tmp_path / "slow.log"
    slow.write_text(SLOW_LOG)
    text = tmp_path / "notalog.txt"
    text.write_text("hello\nthis is not a log\n")
    with pytest.raises(TrafficFormatError, match=f"no general-log entries found in {slow}"):
        open_input(str(slow), "general-log")
    assert sum(r.kind == KIND_COMMAND for r in open_input(str(slow), "slow-log")) == 1  # the right one still reads

    res = _cli("traffic", "inspect", str(slow), "--format", "general-log")
    assert res.returncode != 0 and f"no general-log entries found in {slow}" in res.stderr, res
    res = _cli("replay", "--input", str(text), "--format", "slow-log", "--username", "root", "--dry-run",
               "--report-dir", str(tmp_path / "rep"))
    assert res.returncode != 0 and f"no slow-log entries found in {text}" in res.stdout + res.stderr, res
    out = tmp_path / "cap"
    res = _cli("traffic", "convert", "--input", str(text), "--format", "general-log", "--output", str(out))
    assert res.returncode != 0 and f"no general-log entries found in {text}" in res.stderr, res
    assert not out.exists()


def test_a_failed_convert_leaves_nothing_and_can_be_retried(tmp_path):
    """Converting a damaged capture fails; it leaves no meta.tmp and no traffic file in the output
    (a leftover meta.tmp made every later convert there fail with 'File exists')."""
    from fastproxy.capture.writer import CaptureWriter
    from fastproxy._ringbuf import RingBuffer
    from fastproxy.capture.record import KIND_CONN_OPEN
    from fastproxy.inputs.convert import convert

    src = tmp_path / "src"
    rb = RingBuffer(1 << 20)
    w = CaptureWriter(rb, str(src), file_size=8 << 10, compress=False)
    w.start()
    rb.append_event(KIND_CONN_OPEN, 1, 1, json.dumps({"user": "root", "db": None}).encode())
    for i in range(2000):
        while not rb.append_command(1, 10 + i, 11 + i, 0, 0, 0, 0, b"\x03SELECT %d" % i):
            time.sleep(0.001)
    w.stop({"commands": 2000})
    assert len(w.files) >= 3
    with open(src / w.files[1], "r+b") as f:  # the second file cut mid-record
        f.truncate(f.seek(0, 2) - 5)
    out = tmp_path / "out"
    with pytest.raises(TrafficFormatError, match="truncated"):
        convert(open_input(str(src)), str(out))
    assert os.listdir(out) == []
    res = _cli("traffic", "convert", "--input", str(src), "--output", str(out))
    assert res.returncode != 0 and "truncated" in res.stderr and "File exists" not in res.stderr, res
    assert os.listdir(out) == []
    log = tmp_path / "slow.log"
    log.write_text(SLOW_LOG)
    res = _cli("traffic", "convert", "--input", str(log), "--output", str(out))  # a retry into the same directory
    assert res.returncode == 0, res
    assert sum(r.kind == KIND_COMMAND for r in records(str(out))) == 1


def _most_open(source) -> int:
    open_now = most = 0
    for r in source:
        if r.kind == KIND_CONN_OPEN:
            open_now += 1
            most = max(most, open_now)
        elif r.kind == KIND_CONN_CLOSE:
            open_now -= 1
    return most


def test_log_connections_end_after_their_last_statement(tmp_path):
    """120 short connections one after another, logged by a real server: a slow log has no
    disconnects, so each connection ends after its last statement (it was held open to the log's
    end: replayed on a server with max_connections=40, 80 connections failed to log in); a general
    log ends them at their Quit lines."""
    with _logged_server(str(tmp_path), "seq") as db:
        db.sql("CREATE DATABASE d; CREATE TABLE d.t (v INT)")
        for i in range(120):
            c = MySQLdb.connect(host=db.host, port=db.port, user="root", password=ROOT_PASSWORD, autocommit=True)
            c.cursor().execute(f"INSERT INTO d.t (v) VALUES ({i})")
            c.close()
        slow, general = f"{tmp_path}/seq-slow.log", f"{tmp_path}/seq-general.log"
        assert _most_open(open_input(slow)) <= 2
        assert _most_open(open_input(general)) <= 2
        db.sql("SET GLOBAL max_connections = 40")
        try:
            _, summary = replay_cli(db.addr, slow, "--report-dir", str(tmp_path), "--no-report-tables")
        finally:
            db.sql("SET GLOBAL max_connections = 151")
        assert summary["other_errors"] == 0, summary["other_error_types"]
        assert db.sql("SELECT COUNT(*) FROM d.t").strip() == "240"


def test_a_capture_without_its_meta_replays_what_it_holds_and_says_so(mariadb_test, tmp_path):
    """A capture still being written (or whose proxy did not stop it) has no meta yet: replayed, it
    gives what its files hold, and the summary says it is unfinished (it said nothing)."""
    from replay_util import write_capture as write_native

    t0 = time.time_ns() - 10**9
    cmds = [((1, t0 + i * 1_000_000, t0 + i * 1_000_000 + 500, 0, 0, 0, 1, b"\x03SELECT %d" % i),
             {"status_flags": 2}) for i in range(5)]
    done, unfinished, disk_full = str(tmp_path / "done"), str(tmp_path / "unfinished"), str(tmp_path / "disk_full")
    for path in (done, unfinished, disk_full):
        write_native(path, "mysql", [1], cmds, t0)
    os.unlink(os.path.join(unfinished, "meta"))
    with open(os.path.join(disk_full, "meta")) as f:  # stopped by a writer error: its meta is there
        meta = json.load(f)
    with open(os.path.join(disk_full, "meta"), "w") as f:
        json.dump({**meta, "writer_error": "No space left on device"}, f)
    for path, said in ((done, False), (unfinished, True), (disk_full, False)):
        res, summary = replay_cli(mariadb_test.addr, path, "--speed", "0", "--no-report-tables",
                                  "--report-dir", str(tmp_path / f"report-{os.path.basename(path)}"))
        assert summary["commands_replayed"] == 5 and summary["input_unfinished"] is said, summary
        assert ("a capture without its meta" in res.stdout) is said, res.stdout
    # two proxies' captures replayed together, one unfinished: the summary and the text name that one
    res, summary = replay_cli(mariadb_test.addr, done, "--input", unfinished, "--speed", "0", "--no-report-tables",
                              "--report-dir", str(tmp_path / "report-merged"))
    assert summary["commands_replayed"] == 10 and summary["input_unfinished"] is True, summary
    assert summary["input_unfinished_inputs"] == [unfinished], summary
    assert f"replayed what its files held when read ({unfinished})" in res.stdout, res.stdout


def test_inspect_shows_rows_only_where_the_input_records_them(workload_logs):
    """A general log records no row counts: `inspect` shows none (it showed rows=0 for every
    statement, the records' default); a slow log does, and `inspect` shows them."""
    shown = {}
    for kind in ("general", "slow"):
        res = _cli("traffic", "inspect", workload_logs[kind], "--json", "--limit", "100000")
        assert res.returncode == 0, res.stderr
        lines = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{") and '"kind": "COMMAND"' in x]
        selects = [d for d in lines if d.get("sql", "").startswith("SELECT v, n FROM t")]
        assert selects, res.stdout[:2000]
        shown[kind] = selects
        text = _cli("traffic", "inspect", workload_logs[kind], "--limit", "100000").stdout
        select_lines = [x for x in text.splitlines() if "SELECT v, n FROM t" in x]
        assert select_lines and all(("rows=" in x) == (kind == "slow") for x in select_lines), select_lines[:3]
    assert all(d["rows"] is None and d["affected_rows"] is None for d in shown["general"])
    assert any(d["rows"] > 0 for d in shown["slow"])  # each connection reads back the rows it wrote
