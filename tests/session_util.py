"""Helpers of the session-fidelity tests: the same setup on both servers, the data compared table
by table, a users file."""
from __future__ import annotations

import json
import os
import stat

from replay_util import checksums


def on_both(servers, sql: str) -> None:
    for db in servers:
        db.sql(sql)


def same_data(prod, test, database: str) -> None:
    a, b = checksums(prod, database), checksums(test, database)
    if a != b:
        rows = {t: (prod.sql(f"SELECT * FROM {t} LIMIT 20"), test.sql(f"SELECT * FROM {t} LIMIT 20"))
                for t in a if a[t] != b.get(t)}
        raise AssertionError(f"{database}: production {a} != replay {b}; rows (production, replay): {rows}")


def users_file(path, users: dict[str, str], mode: int = 0o600) -> str:
    with open(path, "w") as f:
        for user, password in users.items():
            f.write(f"{json.dumps(user)} = {json.dumps(password)}\n")  # TOML basic strings: JSON escapes
    os.chmod(path, mode)
    assert stat.S_IMODE(os.stat(path).st_mode) == mode
    return str(path)
