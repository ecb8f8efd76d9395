"""`fastproxy demo`: the whole story on an embedded default.

Two scratch MariaDB servers ("production" and "test"), `fastproxy serve` in front of each, a
workload through the production proxy while a capture runs, the starting data copied to "test"
with one table changed so that some statements fail there, `fastproxy traffic replay`, and the
report. Every fastproxy step is run as the command a user would type, and printed.
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
# what changes on the "test" server: the upgrade under test dropped a column the application uses
TEST_SIDE_CHANGE = "ALTER TABLE shop.orders DROP COLUMN coupon"


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
    n = errors = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        action = rnd.random()
        try:
            if action < 0.45:
                cur.execute("SELECT name, email FROM customers WHERE id = %s", (rnd.randint(1, 200),))
                cur.fetchall()
            elif action < 0.65:
                cur.execute("SELECT p.title, SUM(o.qty) FROM orders o JOIN products p ON p.id = o.product_id "
                            "WHERE o.customer_id = %s GROUP BY p.title", (rnd.randint(1, 200),))
                cur.fetchall()
            elif action < 0.80:
                cur.execute("BEGIN")
                cur.execute("UPDATE products SET stock = stock - 1 WHERE id = %s", (rnd.randint(1, 50),))
                cur.execute("INSERT INTO orders (customer_id, product_id, qty) VALUES (%s, %s, %s)",
                            (rnd.randint(1, 200), rnd.randint(1, 50), rnd.randint(1, 3)))
                cur.execute("COMMIT")
            elif action < 0.90:
                # uses the column the test side dropped: these fail only on replay
                cur.execute("INSERT INTO orders (customer_id, product_id, qty, coupon) VALUES (%s, %s, 1, %s)",
                            (rnd.randint(1, 200), rnd.randint(1, 50), rnd.choice(["SPRING", "VIP10", "NEW5"])))
            elif action < 0.95:
                cur.execute("SELECT COUNT(*) FROM orders WHERE coupon = %s", (rnd.choice(["SPRING", "VIP10"]),))
                cur.fetchall()
            else:
                # fails in production too (duplicate key): not a replay failure
                cur.execute("INSERT INTO customers (id, name) VALUES (%s, 'dup')", (rnd.randint(1, 200),))
        except MySQLdb.Error:
            errors += 1
        n += 1
        time.sleep(rnd.uniform(0.001, 0.01))  # think time, so the capture has a real pace
    conn.close()
    with lock:
        counts["statements"] += n
        counts["errors"] += errors


def _load_data(db: ScratchMariaDB) -> None:
    rows = ",".join(f"({i}, 'customer {i}', 'c{i}@example.com', {int(i % 10 == 0)})" for i in range(1, 201))
    prods = ",".join(f"({i}, 'product {i}', {i * 1.5:.2f}, 1000)" for i in range(1, 51))
    db.sql(SCHEMA + f"INSERT INTO customers VALUES {rows}; INSERT INTO products VALUES {prods};")


def run_demo(workload_seconds: float = 8.0, keep: bool = False, output: str | None = None) -> int:
    workdir = tempfile.mkdtemp(prefix="fastproxy-demo-")
    output = output or os.path.join(workdir, "traffic")
    fp = [sys.executable, "-m", "fastproxy"]
    prod = test = prod_proxy = test_proxy = None
    try:
        _say("starting two scratch MariaDB servers: 'production' and 'test'")
        prod, test = ScratchMariaDB(name="prod").start(), ScratchMariaDB(name="test").start()
        print(f"production: {prod.addr}   test: {test.addr}")
        _load_data(prod)
        dump = subprocess.run(["mariadb-dump", "--no-defaults", "-h127.0.0.1", f"-P{prod.port}", "-uroot",
                               f"-p{ROOT_PASSWORD}", "--databases", "shop"], capture_output=True, text=True, check=True)
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
        print(f"workload: {counts['statements']} statements on 4 connections "
              f"({counts['errors']} failed in production: duplicate keys)")
        _wait(fp, prod_proxy.api, "capture")
        _run(fp + ["traffic", "show", "--curls", prod_proxy.api])
        _run(fp + ["traffic", "inspect", output, "--limit", "8"])

        _say("restore the starting data on 'test', then change it like the upgrade under test did")
        test.sql(dump.stdout)
        test.sql(TEST_SIDE_CHANGE)
        print(TEST_SIDE_CHANGE)

        _say("replay the capture against 'test' through its proxy")
        _run(fp + ["traffic", "replay", "--curls", test_proxy.api, "--input", output, "--username", "root",
                   "--password", ROOT_PASSWORD, "--speed", "1"])
        _wait(fp, test_proxy.api, "replay")
        _run(fp + ["traffic", "show", "--curls", test_proxy.api])

        _say("the report, in the test cluster")
        print(test.sql("SELECT cmd_type, count, LEFT(sample_stmt, 90) AS sample_stmt, sample_err_msg "
                       "FROM tiproxy_traffic_report.fail ORDER BY count DESC").rstrip() or "(no failures)")
        print(test.sql("SELECT err_type, count, sample_err_msg FROM tiproxy_traffic_report.other_errors")
              .rstrip() or "(no other errors)")
        summaries = sorted(f for f in os.listdir(output) if f.startswith("replay-") and f.endswith(".txt"))
        if summaries:
            _say(f"summary file {os.path.join(output, summaries[-1])}")
            with open(os.path.join(output, summaries[-1])) as f:
                print(f.read().rstrip())
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
