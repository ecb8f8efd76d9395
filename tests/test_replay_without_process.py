"""A replay user without the PROCESS privilege (README, "causal order": a replay never hangs on it).

Causal order breaks the wait cycles the replay alone has (a row lock held by a transaction whose
next command waits for the blocked one) by reading InnoDB's lock waits, which needs PROCESS. Without
it the replayer cannot see who blocks whom; it must still finish, and stay faithful, instead of
waiting for innodb_lock_wait_timeout on every cycle (before the fallback: more than 10 minutes for
this 2-second capture, against seconds as root).
"""
from __future__ import annotations

import pytest

from workload import Shop, run_faithful

pytestmark = pytest.mark.timeout(400)


def test_the_shop_replays_faithfully_as_a_user_without_process(mariadb, mariadb_test, proxy_factory, tmp_path):
    mariadb_test.sql("CREATE OR REPLACE USER noprocess@'127.0.0.1' IDENTIFIED BY 'Np-pw-5';"
                     "GRANT ALL ON shop.* TO noprocess@'127.0.0.1';")
    shop = Shop(seconds=2.0)
    (o,) = run_faithful(mariadb, mariadb_test, proxy_factory([mariadb]), shop, str(tmp_path / "capture"),
                        speeds=(1.0,), replay_args=("--username", "noprocess", "--password", "Np-pw-5"))
    assert o.failures == 0 and not o.mismatched_tables, o.describe()
    assert o.summary["other_errors"] == 0, o.describe()
    assert o.summary["connections"] >= shop.connections, o.describe()
    unreadable = o.summary["causal"]["lock_waits_unreadable"]
    assert unreadable == "" or "PROCESS" in unreadable, o.describe()  # tried, and said why it could not
