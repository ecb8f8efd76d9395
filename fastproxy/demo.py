"""`fastproxy demo`: the whole story on an embedded default.

Two scratch MariaDB servers ("production" and "test"), `fastproxy serve` in front of each, a
workload through the production proxy while a capture runs, the starting data copied to "test"
and "upgraded" there the way real upgrades hurt — a dropped column (statements that now fail), a
dropped index (a statement that got slower: its plan shows the full scan) and a changed collation
(statements that return different results without any error) — then `fastproxy traffic replay`,
the report tables, the verdict and the HTML report. Every fastproxy step is run as the command a
user would type, and printed.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from fastproxy.scratch_db import ROOT_PASSWORD, ScratchMariaDB, free_port

SCHEMA = """
CREATE DATABASE shop;
USE shop;
CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(64) NOT NULL, email VARCHAR(128), vip TINYINT NOT NULL DEFAULT 0);
CREATE TABLE products (id INT PRIMARY KEY, title VARCHAR(128) NOT NULL, price DECIMAL(10,2) NOT NULL, stock INT NOT NULL);
CREATE TABLE orders (id INT AUTO_INCREMENT PRIMARY KEY, customer_id INT NOT NULL, product_id INT NOT NULL,
                     qty INT NOT NULL, coupon VARCHAR(16), created_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
                     KEY (customer_id));
"""
ORDERS_AT_START = 150_000  # enough that a lookup without its index is a visible full scan
# what changes on the "test" server, the upgrade under test:
TEST_SIDE_CHANGES = [
    "ALTER TABLE shop.orders DROP COLUMN coupon",  # a column the application uses: new failures
    "ALTER TABLE shop.orders DROP INDEX customer_id",  # a plan regression: the per-customer report scans
    # a new default collation: comparisons turn case-sensitive, results change without any error
    "ALTER TABLE shop.customers MODIFY name VARCHAR(64) COLLATE utf8mb4_bin NOT NULL",
]
DEMO_OUTPUT = "demo-output"  # (relative to the current directory) where the HTML report is kept
SLOWER_MIN_DIFF_MS = 20  # "slower" needs +20 ms at p99 here (default 1 ms): a demo box is often busy, and on
# a quiet one the full scan of the dropped index takes only ~30-60 ms


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _run(args: list[str], check: bool = True) -> str:
    shown = " ".join(a if " " not in a else repr(a) for a in args)
    print(f"$ {shown.replace(sys.executable + ' -m fastproxy', 'fastproxy')}", flush=True)
    res = subprocess.run(args, capture_output=True, text=True)
    out = (res.stdout + res.stderr).strip()
    if out:
        print(out, flush=True)
    if check and res.returncode != 0:
        raise RuntimeError(f"command failed ({res.returncode}): {shown}")
    return res.stdout


class Proxy:
    def __init__(self, name: str, backend: ScratchMariaDB, workdir: str) -> None:
        self.port, self.api_port = free_port(), free_port()
        self.log = open(os.path.join(workdir, f"fastproxy-{name}.log"), "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fastproxy", "serve", f"--proxy.addr=127.0.0.1:{self.port}",
             f"--api.addr=127.0.0.1:{self.api_port}", f"--proxy.backends={backend.addr}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.api = f"127.0.0.1:{self.api_port}"
        import urllib.request

        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://{self.api}/api/debug/health", timeout=1).read()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"fastproxy {name} did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


def _workload(port: int, seconds: float, seed: int, counts: dict, lock: threading.Lock) -> None:
    import MySQLdb

    rnd = random.Random(seed)
    conn = MySQLdb.connect(host="127.0.0.1", port=port, user="root", password=ROOT_PASSWORD, database="shop",
                           autocommit=True)
    cur = conn.cursor()
    sent = errors = 0

    def execute(sql: str, args: tuple | None = None) -> None:
        nonlocal sent
        sent += 1  # each statement sent (a transaction is 4), failed or not: what the capture holds
        cur.execute(sql, args)

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        action = rnd.random()
        try:
            if action < 0.55:
                execute("SELECT name, email FROM customers WHERE id = %s", (rnd.randint(1, 200),))
                cur.fetchall()
            elif action < 0.57:
                # a customer's statement of last year's orders: needs the index the test side dropped
                execute("SELECT p.title, SUM(o.qty) FROM orders o JOIN products p ON p.id = o.product_id "
                        "WHERE o.customer_id = %s AND o.created_at < '2025-01-01' GROUP BY p.title",
                        (rnd.randint(1, 200),))
                cur.fetchall()
            elif action < 0.75:
                execute("BEGIN")
                execute("UPDATE products SET stock = stock - 1 WHERE id = %s", (rnd.randint(1, 50),))
                execute("INSERT INTO orders (customer_id, product_id, qty) VALUES (%s, %s, %s)",
                        (rnd.randint(1, 200), rnd.randint(1, 50), rnd.randint(1, 3)))
                execute("COMMIT")
            elif action < 0.85:
                # uses the column the test side dropped: these fail only on replay
                execute("INSERT INTO orders (customer_id, product_id, qty, coupon) VALUES (%s, %s, 1, %s)",
                        (rnd.randint(1, 200), rnd.randint(1, 50), rnd.choice(["SPRING", "VIP10", "NEW5"])))
            elif action < 0.90:
                execute("SELECT COUNT(*) FROM orders WHERE coupon = %s", (rnd.choice(["SPRING", "VIP10"]),))
                cur.fetchall()
            elif action < 0.96:
                # the support screen's case-insensitive name lookup: a collation change alters its result
                execute("SELECT COUNT(*) FROM customers WHERE name = %s", (f"Customer {rnd.randint(1, 200)}",))
                cur.fetchall()
            else:
                # fails in production too (duplicate key): not a replay failure
                execute("INSERT INTO customers (id, name) VALUES (%s, 'dup')", (rnd.randint(1, 200),))
        except MySQLdb.Error:
            errors += 1
        time.sleep(rnd.uniform(0.001, 0.01))  # think time, so the capture has a real pace
    conn.close()
    with lock:
        counts["statements"] += sent
        counts["errors"] += errors


def _load_data(db: ScratchMariaDB) -> None:
    rows = ",".join(f"({i}, 'customer {i}', 'c{i}@example.com', {int(i % 10 == 0)})" for i in range(1, 201))
    prods = ",".join(f"({i}, 'product {i}', {i * 1.5:.2f}, 1000)" for i in range(1, 51))
    db.sql(SCHEMA + f"INSERT INTO customers VALUES {rows}; INSERT INTO products VALUES {prods};"
           f"INSERT INTO orders (customer_id, product_id, qty, created_at) SELECT seq % 200 + 1, seq % 50 + 1, "
           f"1 + seq % 3, '2024-01-01' + INTERVAL seq MINUTE FROM seq_1_to_{ORDERS_AT_START};")


def run_demo(workload_seconds: float = 8.0, keep: bool = False, output: str | None = None) -> int:
    workdir = tempfile.mkdtemp(prefix="fastproxy-demo-")
    keep_output = output is not None
    # the capture API wants an absolute path: a relative --output is the current directory's
    output = os.path.abspath(output) if output else os.path.join(workdir, "traffic")
    fp = [sys.executable, "-m", "fastproxy"]
    prod = test = prod_proxy = test_proxy = None
    try:
        _say("starting two scratch MariaDB servers: 'production' and 'test'")
        prod, test = ScratchMariaDB(name="prod").start(), ScratchMariaDB(name="test").start()
        print(f"production: {prod.addr}   test: {test.addr}")
        _load_data(prod)
        dump = subprocess.run(["mariadb-dump", *prod.client_args()[1:], "--databases", "shop"],
                              capture_output=True, text=True, check=True)
        _say("fastproxy serve in front of each")
        prod_proxy, test_proxy = Proxy("prod", prod, workdir), Proxy("test", test, workdir)
        print(f"production proxy: 127.0.0.1:{prod_proxy.port} (API {prod_proxy.api})   "
              f"test proxy: 127.0.0.1:{test_proxy.port} (API {test_proxy.api})")

        _say(f"capture production traffic while a {workload_seconds:.0f}s workload runs through the proxy")
        _run(fp + ["traffic", "capture", "--curls", prod_proxy.api, "--output", output,
                   "--duration", f"{workload_seconds + 1:.0f}s"])
        counts, lock = {"statements": 0, "errors": 0}, threading.Lock()
        threads = [threading.Thread(target=_workload, args=(prod_proxy.port, workload_seconds, i, counts, lock))
                   for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(f"workload: {counts['statements']} statements sent on 4 connections (a transaction counts its "
              f"BEGIN, UPDATE, INSERT and COMMIT); {counts['errors']} failed in production: duplicate keys")
        _wait(fp, prod_proxy.api, "capture")
        _run(fp + ["traffic", "show", "--curls", prod_proxy.api])
        _run(fp + ["traffic", "inspect", output, "--limit", "8"])

        _say("restore the starting data on 'test', then change it like the upgrade under test did")
        test.sql(dump.stdout)
        for change in TEST_SIDE_CHANGES:
            test.sql(change)
            print(change)
        test.sql("ANALYZE TABLE shop.customers, shop.products, shop.orders")

        _say("replay the capture against 'test' through its proxy")
        _run(fp + ["traffic", "replay", "--curls", test_proxy.api, "--input", output, "--username", "root",
                   "--password-file", test.password_file(), "--speed", "1",
                   "--slower-min-diff-ms", str(SLOWER_MIN_DIFF_MS)])
        _wait(fp, test_proxy.api, "replay")
        _run(fp + ["traffic", "show", "--curls", test_proxy.api])

        _say("the report, in the test cluster")
        print(test.sql("SELECT cmd_type, count, LEFT(sample_stmt, 90) AS sample_stmt, sample_err_msg "
                       "FROM tiproxy_traffic_report.fail ORDER BY count DESC").rstrip() or "(no failures)")
        print(test.sql("SELECT kind, count, LEFT(sample_stmt, 70) AS sample_stmt, sample_capture_value, "
                       "sample_replay_value FROM tiproxy_traffic_report.mismatch ORDER BY count DESC").rstrip()
              or "(no result mismatches)")
        print(test.sql("SELECT count, capture_p99_us, replay_p99_us, LEFT(sample_stmt, 70) AS sample_stmt "
                       "FROM tiproxy_traffic_report.latency WHERE slower ORDER BY replay_p99_us DESC").rstrip()
              or "(no slower statements)")
        print(test.sql("SELECT err_type, count, sample_err_msg FROM tiproxy_traffic_report.other_errors")
              .rstrip() or "(no other errors)")

        _say("the verdict, and the HTML report (one self-contained file: open it in a browser)")
        if keep_output:
            _run(fp + ["traffic", "report", output])
        else:  # the capture goes away with the scratch servers; the page is kept
            os.makedirs(DEMO_OUTPUT, exist_ok=True)
            page = os.path.join(DEMO_OUTPUT, time.strftime("report-%Y%m%dT%H%M%S.html"))
            _run(fp + ["traffic", "report", output, "--html", page])
        if keep:
            print("\nservers and proxies keep running; Ctrl-C to stop")
            while True:
                time.sleep(3600)
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        for p in (prod_proxy, test_proxy):
            if p:
                p.stop()
        for db in (prod, test):
            if db:
                db.stop()
        shutil.rmtree(workdir, ignore_errors=True)  # a --output given by the user lies outside and stays


def _wait(fp: list[str], api: str, kind: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        res = subprocess.run(fp + ["traffic", "show", "--curls", api], capture_output=True, text=True)
        jobs = [j for j in json.loads(res.stdout or "[]") if j["type"] == kind]
        if jobs and jobs[-1]["status"] != "running":
            return
        time.sleep(0.5)
    raise RuntimeError(f"{kind} did not finish in {timeout}s")
