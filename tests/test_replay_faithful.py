"""Faithful replay on two identical servers: a realistic multi-client workload (tests/workload.py)
replayed at speed 1 and as fast as possible reports zero failures and leaves every table with the
same CHECKSUM as production."""
from __future__ import annotations

import pytest

from workload import Shop, run_faithful

pytest.importorskip("mariadb")  # MariaDB Connector/Python: server-side prepared statements

pytestmark = pytest.mark.timeout(300)


def test_shop_workload_replays_without_false_failures(mariadb, mariadb_test, proxy_factory, tmp_path):
    shop = Shop()
    proxy = proxy_factory([mariadb])
    outcomes = run_faithful(mariadb, mariadb_test, proxy, shop, str(tmp_path / "capture"))
    for o in outcomes:
        print(o.describe())
    for o in outcomes:
        assert o.failures == 0 and not o.mismatched_tables, o.describe()
