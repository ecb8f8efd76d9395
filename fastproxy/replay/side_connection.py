"""The replayer's own connections to the target, beside the replay connections: the report writer,
the schema reader, the lock-wait reader, EXPLAIN, resume's check for a stopped replay's sessions.

They log in as the replay's user and speak TLS exactly when the replay does (`--tls`, `--tls-ca`,
`--tls-skip-verify`): a target with `require_secure_transport=ON` refuses a plain side connection,
and each of them would then fail on its own (no schema knowledge, no lock waits, no report tables).
"""
from __future__ import annotations


def tls_params(tls: bool, tls_ca: str, tls_skip_verify: bool) -> dict:
    """mysqlclient's TLS arguments for the replay's TLS options ({} when the replay is plain)."""
    if tls_ca and not tls_skip_verify:
        return {"ssl_mode": "VERIFY_CA", "ssl": {"ca": tls_ca}}
    if tls or tls_ca or tls_skip_verify:
        return {"ssl_mode": "REQUIRED"}
    return {}


def target_params(opt, **extra) -> dict:
    """mysqlclient's arguments for a side connection to the target of ReplayOptions `opt`."""
    params = dict(host=opt.host, port=opt.port, user=opt.username, password=opt.password, charset="utf8mb4",
                  connect_timeout=max(1, int(getattr(opt, "connect_timeout", 10))))
    params.update(extra)
    params.update(tls_params(getattr(opt, "tls", False), getattr(opt, "tls_ca", ""),
                             getattr(opt, "tls_skip_verify", False)))
    return params


def connect_target(opt, **extra):
    """A blocking mysqlclient connection to the target of `opt` (run it in a thread)."""
    import MySQLdb

    return MySQLdb.connect(**target_params(opt, **extra))
