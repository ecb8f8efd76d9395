"""Replay puts a password back only where a password goes. The capture records what clients send,
so a client can send the placeholder string itself; put back anywhere else, the replay's passwords
would land in a variable, a table or an error message that production traffic chose."""
from __future__ import annotations

import pytest

from fastproxy.replay.users import PLACEHOLDER, Credentials, ed25519_password_hash, native_password_hash

PH = f"'{PLACEHOLDER}'"
USERS = {"u": "Users-file-pw-1"}
REPLAY_PASSWORD = "Replay-pw-2"


def _creds() -> Credentials:
    return Credentials(dict(USERS), "replayer", REPLAY_PASSWORD)


@pytest.mark.parametrize("sql, expected", [
    (f"CREATE USER u IDENTIFIED BY {PH}", "CREATE USER u IDENTIFIED BY 'Users-file-pw-1'"),
    (f"CREATE OR REPLACE USER 'u'@'%' IDENTIFIED BY {PH}", "CREATE OR REPLACE USER 'u'@'%' IDENTIFIED BY 'Users-file-pw-1'"),
    (f"ALTER USER u IDENTIFIED BY PASSWORD {PH}",
     f"ALTER USER u IDENTIFIED BY PASSWORD '{native_password_hash('Users-file-pw-1')}'"),
    (f"CREATE USER u IDENTIFIED VIA ed25519 USING PASSWORD({PH})",
     "CREATE USER u IDENTIFIED VIA ed25519 USING PASSWORD('Users-file-pw-1')"),
    (f"CREATE USER u IDENTIFIED VIA ed25519 USING {PH}",
     f"CREATE USER u IDENTIFIED VIA ed25519 USING '{ed25519_password_hash('Users-file-pw-1')}'"),
    (f"SET PASSWORD FOR u = PASSWORD({PH})", "SET PASSWORD FOR u = PASSWORD('Users-file-pw-1')"),
    (f"SET PASSWORD = {PH}", f"SET PASSWORD = '{native_password_hash(REPLAY_PASSWORD)}'"),
    (f"GRANT SELECT ON db.* TO u IDENTIFIED BY {PH}", "GRANT SELECT ON db.* TO u IDENTIFIED BY 'Users-file-pw-1'"),
    # only the password of a statement that has one in its place
    (f"CREATE USER u IDENTIFIED BY {PH} COMMENT {PH}", f"CREATE USER u IDENTIFIED BY 'Users-file-pw-1' COMMENT {PH}"),
])
def test_a_password_goes_back_where_a_password_goes(sql, expected):
    creds = _creds()
    assert creds.substitute(sql.encode(), "replayer").decode() == expected
    assert creds.substituted == 1


@pytest.mark.parametrize("sql", [
    f"SET @x = {PH}",
    f"SET @x = ELT(2, 'u', {PH})",
    f"SET sql_mode = IF(@x = {PH}, @@sql_mode, REVERSE(@x))",
    f"CREATE TABLE exfil AS SELECT {PH} AS p",
    f"CREATE TABLE t (c VARCHAR(40) DEFAULT {PH})",
    f"ALTER TABLE t COMMENT = {PH}",
    f"ALTER USER u IDENTIFIED BY CONCAT({PH})",
    f"SET PASSWORD = IF(1, {PH}, '')",
    f"SET PASSWORD FOR u = CONCAT(PASSWORD({PH}))",
    f"GRANT SELECT ON db.* TO u; SET @y = {PH}",
    f"CREATE USER u COMMENT {PH}",
    f"SELECT {PH}",
])
def test_the_placeholder_a_client_sent_stays_what_it_was(sql):
    creds = _creds()
    assert creds.substitute(sql.encode(), "replayer") == sql.encode()
    assert creds.substituted == 0
    assert creds.generated == {}
