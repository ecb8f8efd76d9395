"""A realistic multi-client workload and the harness that proves a replay faithful.

Two identical servers ("production" and "test"): the workload runs against production through a
proxy while a capture records it; the starting data (dumped before the workload) is restored on
test; the capture is replayed there (at each speed asked for, restoring the data before each); then
``CHECKSUM TABLE`` of every table must match production's, and the replay must report no failure.
On identical servers every failure and every differing table is an artifact of the replay.

The workload (``Shop``) has what breaks per-connection-only replay, each in its own threads and
connections (mysqlclient text protocol and MariaDB Connector/Python server-side prepared
statements):

- orders with auto-increment ids read back (``lastrowid``) and reused as literals, in the same and
  in *other* connections (handed over through a Python queue: a cross-connection dependency);
  child rows under foreign keys; DEFAULT / ON UPDATE CURRENT_TIMESTAMP columns;
- a job queue picked with ``SELECT ... FOR UPDATE SKIP LOCKED``;
- counters (``UPDATE ... n = n + 1``, ``INSERT ... ON DUPLICATE KEY UPDATE``);
- savepoints with ``ROLLBACK TO SAVEPOINT`` and whole rollbacks;
- a table created by one connection, then read and written by another;
- NOW() written into rows; plain readers.

Other tests reuse ``run_faithful`` with workloads of their own (anything with ``setup_sql`` and
``run(port)``).
"""
from __future__ import annotations

import datetime
import queue
import random
import re
import threading
import time
from dataclasses import dataclass, field

import MySQLdb

from fastproxy.scratch_db import ROOT_PASSWORD
from replay_util import Capture, checksums, dump, replay_cli


@dataclass
class ReplayOutcome:
    speed: float
    summary: dict
    production: dict[str, str]
    test: dict[str, str]
    starting_data: str = ""  # mariadb-dump of the database before the capture
    row_diffs: list = field(default_factory=list)  # a few (production row, test row) of differing tables
    time_skewed: dict = field(default_factory=dict)  # table -> rows equal but for a time one second off

    @property
    def mismatched_tables(self) -> list[str]:
        """Tables whose CHECKSUM differs, except those whose only differences are times one second
        apart (see `compare_rows`)."""
        return sorted(t for t in self.production if self.production[t] != self.test.get(t)
                      and t not in self.time_skewed)

    @property
    def failures(self) -> int:
        return self.summary["commands_failed"]

    def describe(self) -> str:
        s = self.summary
        return (f"speed {self.speed}: {s['commands_failed']} failures, {len(self.mismatched_tables)} of "
                f"{len(self.production)} tables differ {self.mismatched_tables} {self.row_diffs}; rows with a "
                f"time one second off {self.time_skewed}; other errors "
                f"{s['other_error_types']}; top failures {[(f['count'], f['sample_stmt'][:80], f['sample_err_msg'][:80]) for f in s['top_failures']]}; "
                f"causal {s.get('causal')}; transactions {s.get('transactions')}")


_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")


def compare_rows(prod, test, table: str) -> int | None:
    """How many rows of `table` differ only in DATETIME/TIMESTAMP values exactly one second apart;
    None if any other difference. Pinned time is production's to the second unless a second boundary
    fell between the proxy receiving the statement and the server running it: on a busy machine
    that happens to about one row in a thousand (README, "Pinned time and ids")."""
    a = prod.sql(f"SELECT * FROM {table} ORDER BY 1").splitlines()
    b = test.sql(f"SELECT * FROM {table} ORDER BY 1").splitlines()
    if len(a) != len(b):
        return None
    skewed = 0
    for x, y in zip(a, b):
        if x == y:
            continue
        for u, v in zip(x.split("\t"), y.split("\t")):
            if u == v:
                continue
            if not (_TIME.match(u) and _TIME.match(v)):
                return None
            t = [datetime.datetime.strptime(w, "%Y-%m-%d %H:%M:%S") for w in (u, v)]
            if abs((t[0] - t[1]).total_seconds()) != 1:
                return None
        skewed += 1
    return skewed


def row_diff(prod, test, table: str, limit: int = 3) -> list[tuple]:
    """The first rows of `table` (db.name) that differ between the two servers."""
    a = prod.sql(f"SELECT * FROM {table} ORDER BY 1").splitlines()
    b = test.sql(f"SELECT * FROM {table} ORDER BY 1").splitlines()
    out = [(x, y) for x, y in zip(a, b) if x != y][:limit]
    if len(a) != len(b):
        out.append((f"{len(a)} rows", f"{len(b)} rows"))
    return out


def run_faithful(prod, test, proxy, workload, out_dir: str, speeds=(1.0, 0.0), replay_args=(),
                 before_capture=None) -> list[ReplayOutcome]:
    """Set up, capture the workload through `proxy` (in front of `prod`), replay it on `test` at each
    speed from the same starting data, and return what each replay left behind.
    `before_capture(port)` may open connections that stay open across the capture start."""
    prod.sql(workload.setup_sql)
    start = dump(prod, workload.database)
    early = before_capture(proxy.port) if before_capture else None
    with Capture(proxy, out_dir):
        workload.run(proxy.port, early)
    production = checksums(prod, workload.database)
    outcomes = []
    for speed in speeds:
        test.sql(f"DROP DATABASE IF EXISTS {workload.database};\n" + start)
        _, summary = replay_cli(test.addr, out_dir, "--speed", str(speed), "--no-report-tables", *replay_args,
                                timeout=300)
        outcome = ReplayOutcome(speed, summary, production, checksums(test, workload.database), start)
        for table in outcome.mismatched_tables:
            skewed = compare_rows(prod, test, table)
            if skewed is not None:
                outcome.time_skewed[table] = skewed
            else:
                outcome.row_diffs += row_diff(prod, test, table)
        outcomes.append(outcome)
    return outcomes


# ---- the workload -------------------------------------------------------------------------------

def _error_code(e: Exception) -> int | None:
    code = getattr(e, "errno", None)  # MariaDB Connector/Python
    if code is None and e.args and isinstance(e.args[0], int):  # mysqlclient
        code = e.args[0]
    return code


def crossed_updates(conn, first: int, second: int, mult: int, k: int, barrier: threading.Barrier, delay: float,
                    then=(), on_deadlock=lambda: None) -> int:
    """One of two transactions that update `acct` rows `first` and `second` in opposite order: the
    first attempt waits at `barrier`, then `delay` s, so the two cross and one gets 1213; it rolls
    back and does its transaction again, as applications do (`then`: statements before COMMIT).
    The updates do not commute, so the data shows the order. Returns the attempt that committed."""
    cur = conn.cursor()
    for attempt in range(5):
        try:
            cur.execute("BEGIN")
            cur.execute(f"UPDATE acct SET v = v * {mult} + {k} WHERE id = {first}")
            if attempt == 0:
                barrier.wait()
                time.sleep(delay)
            cur.execute(f"UPDATE acct SET v = v * {mult} + {k} WHERE id = {second}")
            for sql in then:
                cur.execute(sql)
            cur.execute("COMMIT")
            return attempt
        except MySQLdb.OperationalError as e:
            if e.args[0] != 1213:
                raise
            cur.execute("ROLLBACK")
            on_deadlock()
            time.sleep(0.05)
    raise AssertionError("no progress")


def _connect(port: int, database: str):
    return MySQLdb.connect(host="127.0.0.1", port=port, user="root", password=ROOT_PASSWORD, database=database,
                           autocommit=True)


def _connect_ps(port: int, database: str):
    import mariadb

    return mariadb.connect(host="127.0.0.1", port=port, user="root", password=ROOT_PASSWORD, database=database,
                           autocommit=True)


@dataclass
class Shop:
    """Orders, a job queue, counters, savepoints, DDL across connections; a few dozen connections."""

    seconds: float = 3.0
    writers: int = 8          # text-protocol order writers
    ps_writers: int = 4       # prepared-statement order writers (MariaDB Connector/Python)
    processors: int = 6       # pay orders written by other connections
    producers: int = 3        # put jobs on the queue
    workers: int = 8          # take jobs with FOR UPDATE SKIP LOCKED
    counters: int = 6
    savepointers: int = 4
    readers: int = 4
    clocks: int = 2           # write NOW() into rows
    ddl_pairs: int = 2        # one connection creates a table, another reads and writes it
    pause: tuple = (0.002, 0.02)  # think time between operations (s)
    seed: int = 1
    database: str = "shop"
    errors: list = field(default_factory=list)
    done: dict = field(default_factory=dict)

    @property
    def connections(self) -> int:
        return (self.writers + self.ps_writers + self.processors + self.producers + self.workers + self.counters
                + self.savepointers + self.readers + self.clocks + 2 * self.ddl_pairs)

    @property
    def setup_sql(self) -> str:
        customers = ", ".join(f"({i}, 'c{i}', '2024-01-01 00:00:{i:02d}')" for i in range(1, 11))
        return f"""DROP DATABASE IF EXISTS {self.database}; CREATE DATABASE {self.database}; USE {self.database};
CREATE TABLE customers (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(64) NOT NULL,
  created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE orders (id INT AUTO_INCREMENT PRIMARY KEY, customer_id INT NOT NULL,
  status VARCHAR(16) NOT NULL DEFAULT 'new', total DECIMAL(10,2) NOT NULL DEFAULT 0,
  created_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
  updated_at TIMESTAMP NULL DEFAULT NULL ON UPDATE CURRENT_TIMESTAMP,
  FOREIGN KEY (customer_id) REFERENCES customers (id));
CREATE TABLE order_items (id INT AUTO_INCREMENT PRIMARY KEY, order_id INT NOT NULL, sku VARCHAR(16) NOT NULL,
  qty INT NOT NULL, FOREIGN KEY (order_id) REFERENCES orders (id) ON DELETE CASCADE);
CREATE TABLE jobs (id INT AUTO_INCREMENT PRIMARY KEY, payload VARCHAR(64) NOT NULL,
  status ENUM('new', 'taken') NOT NULL DEFAULT 'new', worker INT NULL, taken_at DATETIME NULL, KEY (status, id));
CREATE TABLE counters (name VARCHAR(32) PRIMARY KEY, n BIGINT NOT NULL);
CREATE TABLE ledger (id INT AUTO_INCREMENT PRIMARY KEY, account INT NOT NULL, amount INT NOT NULL,
  note VARCHAR(32) NOT NULL, at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, KEY (account));
CREATE TABLE events (id BIGINT AUTO_INCREMENT PRIMARY KEY, kind VARCHAR(16) NOT NULL, ref INT NOT NULL,
  at DATETIME NOT NULL DEFAULT NOW());
INSERT INTO customers VALUES {customers};
INSERT INTO counters VALUES ('a', 0), ('b', 0), ('c', 0), ('paid', 0);
INSERT INTO jobs (payload) SELECT CONCAT('seed', seq) FROM seq_1_to_40;
"""

    # each role: one connection, a loop until the deadline
    def run(self, port: int, _early=None) -> None:
        self.errors.clear()
        self.done.clear()
        self._orders: queue.Queue = queue.Queue()
        self._tables: queue.Queue = queue.Queue()
        self._deadline = time.monotonic() + self.seconds
        roles = ([self._writer] * self.writers + [self._ps_writer] * self.ps_writers
                 + [self._processor] * self.processors + [self._producer] * self.producers
                 + [self._worker] * self.workers + [self._counter] * self.counters
                 + [self._savepointer] * self.savepointers + [self._reader] * self.readers
                 + [self._clock] * self.clocks + [self._ddl_creator, self._ddl_user] * self.ddl_pairs)
        threads = [threading.Thread(target=self._role, args=(role, port, i)) for i, role in enumerate(roles)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not self.errors, self.errors[:5]

    def _role(self, role, port: int, i: int) -> None:
        rnd = random.Random(self.seed * 1000 + i)
        try:
            conn = self._open(role, port, i)
            try:
                while time.monotonic() < self._deadline:
                    try:
                        role(conn, rnd, i)
                        self.done[role.__name__] = self.done.get(role.__name__, 0) + 1
                    except Exception as e:  # noqa: BLE001 - what an application does on a deadlock
                        if _error_code(e) not in (1213, 1205):
                            raise
                        conn.rollback()
                        self.done["deadlocks"] = self.done.get("deadlocks", 0) + 1
                    time.sleep(rnd.uniform(*self.pause))
            finally:
                conn.close()
        except BaseException as e:  # noqa: BLE001 - reported by run()
            self.errors.append(f"{role.__name__} {i}: {e!r}")

    def _open(self, role, port: int, i: int):
        """The connection role `role` (thread `i`) works on."""
        return (_connect_ps if role == self._ps_writer else _connect)(port, self.database)

    def _writer(self, conn, rnd, i) -> None:
        cur = conn.cursor()
        if rnd.random() < 0.3:
            cur.execute("INSERT INTO customers (name) VALUES (%s)", (f"w{i}",))
            customer = cur.lastrowid
        else:
            customer = rnd.randint(1, 10)
        cur.execute("BEGIN")
        cur.execute("INSERT INTO orders (customer_id, total) VALUES (%s, %s)", (customer, rnd.randint(1, 999)))
        order = cur.lastrowid
        for _ in range(rnd.randint(1, 3)):
            cur.execute("INSERT INTO order_items (order_id, sku, qty) VALUES (%s, %s, %s)",
                        (order, f"sku{rnd.randint(1, 50)}", rnd.randint(1, 5)))
        cur.execute("COMMIT")
        self._orders.put(order)

    def _ps_writer(self, conn, rnd, i) -> None:
        # one cursor per statement: Connector/Python keeps one server-side statement per cursor
        order_ins, item_ins, order_upd = (conn.cursor(prepared=True) for _ in range(3))
        conn.begin()
        order_ins.execute("INSERT INTO orders (customer_id, total) VALUES (?, ?)",
                          (rnd.randint(1, 10), rnd.randint(1, 99)))
        order = order_ins.lastrowid
        item_ins.execute("INSERT INTO order_items (order_id, sku, qty) VALUES (?, ?, ?)", (order, f"ps{i}", 1))
        order_upd.execute("UPDATE orders SET total = total + ? WHERE id = ?", (1, order))
        conn.commit()
        for c in (order_ins, item_ins, order_upd):
            c.close()
        self._orders.put(order)

    def _processor(self, conn, rnd, i) -> None:
        try:
            order = self._orders.get(timeout=0.05)
        except queue.Empty:
            return
        cur = conn.cursor()
        cur.execute("BEGIN")
        cur.execute(f"SELECT status, total FROM orders WHERE id = {order} FOR UPDATE")
        row = cur.fetchone()
        assert row is not None, f"order {order} not visible"
        cur.execute(f"UPDATE orders SET status = 'paid', total = total * 2 WHERE id = {order}")
        cur.execute(f"INSERT INTO events (kind, ref) VALUES ('paid', {order})")
        cur.execute("UPDATE counters SET n = n + 1 WHERE name = 'paid'")
        cur.execute("COMMIT")

    def _producer(self, conn, rnd, i) -> None:
        conn.cursor().execute("INSERT INTO jobs (payload) VALUES (%s)", (f"p{i}-{rnd.random():.6f}",))

    def _worker(self, conn, rnd, i) -> None:
        cur = conn.cursor()
        cur.execute("BEGIN")
        cur.execute("SELECT id FROM jobs WHERE status = 'new' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED")
        row = cur.fetchone()
        if row is not None:
            cur.execute(f"UPDATE jobs SET status = 'taken', worker = {i}, taken_at = NOW() WHERE id = {row[0]}")
        cur.execute("COMMIT")

    def _counter(self, conn, rnd, i) -> None:
        cur = conn.cursor()
        name = rnd.choice("abc")
        if rnd.random() < 0.7:
            cur.execute(f"UPDATE counters SET n = n + {i} WHERE name = '{name}'")
        else:
            cur.execute(f"INSERT INTO counters VALUES ('k{rnd.randint(1, 5)}', 1) ON DUPLICATE KEY UPDATE n = n + {i}")

    def _savepointer(self, conn, rnd, i) -> None:
        cur = conn.cursor()
        cur.execute("BEGIN")
        cur.execute(f"INSERT INTO ledger (account, amount, note) VALUES ({i}, 10, 'first')")
        cur.execute("SAVEPOINT s1")
        cur.execute(f"INSERT INTO ledger (account, amount, note) VALUES ({i}, 20, 'second')")
        if rnd.random() < 0.5:
            cur.execute("ROLLBACK TO SAVEPOINT s1")
        cur.execute(f"UPDATE ledger SET amount = amount + 1 WHERE account = {i}")
        cur.execute("COMMIT" if rnd.random() < 0.8 else "ROLLBACK")

    def _reader(self, conn, rnd, i) -> None:
        cur = conn.cursor()
        cur.execute("SELECT COUNT(*), SUM(total) FROM orders WHERE status = 'paid'")
        cur.fetchall()
        cur.execute(f"SELECT * FROM jobs WHERE id = {rnd.randint(1, 60)}")
        cur.fetchall()

    def _clock(self, conn, rnd, i) -> None:
        cur = conn.cursor()
        cur.execute(f"UPDATE customers SET name = 'seen by {i}', created_at = NOW() WHERE id = {rnd.randint(1, 10)}")
        cur.execute(f"INSERT INTO events (kind, ref, at) VALUES ('tick', {i}, NOW())")

    def _ddl_creator(self, conn, rnd, i) -> None:
        cur = conn.cursor()
        n = self.done.get(f"created{i}", 0)
        if n >= 3:
            return
        self.done[f"created{i}"] = n + 1
        table = f"report_{i}_{n}"
        cur.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, v INT NOT NULL)")
        cur.execute(f"INSERT INTO {table} VALUES (1, {rnd.randint(1, 100)})")
        self._tables.put(table)

    def _ddl_user(self, conn, rnd, i) -> None:
        try:
            table = self._tables.get(timeout=0.05)
        except queue.Empty:
            return
        cur = conn.cursor()
        cur.execute(f"SELECT v FROM {table} WHERE id = 1")
        (v,) = cur.fetchone()
        cur.execute(f"INSERT INTO {table} VALUES (2, {v + 1})")
