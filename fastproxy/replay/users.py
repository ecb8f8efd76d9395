"""Who each replay connection logs in as, with which password; and the passwords of statements the
capture recorded with their secrets redacted.

- `--users-file` (TOML, ``user = "password"`` per line) gives the password of each captured user;
  it must not be readable or writable by group or others (like an ssh key). A user it does not list
  replays as the `--username`/`--password` user (the single-user mode of TiProxy).
- The capture writes a statement that carried a secret (``CREATE USER ... IDENTIFIED BY``, ``ALTER
  USER``, ``SET PASSWORD FOR``, ``GRANT ... IDENTIFIED BY``) with each secret string replaced by
  ``'__fastproxy_redacted__'``. Replay puts back the password of the user the statement names: the
  users file's, else a random one it remembers, so that the user exists with a password replay
  knows for what follows (GRANT, DROP USER, logins as that user). Where the statement wants a hash
  (``IDENTIFIED BY PASSWORD '...'``, ``USING '...'``, ``AS '...'``) the hash of that password goes
  in (mysql_native_password, or MariaDB's ed25519 public key).
- Only where a password goes: after ``IDENTIFIED BY`` (``PASSWORD``), ``IDENTIFIED VIA|WITH plugin
  USING|AS``, ``SET PASSWORD [FOR user] =``, or as the argument of ``PASSWORD()``/``OLD_PASSWORD()``
  there. A client can send the placeholder string itself (``SET @x='__fastproxy_redacted__'``, ``CREATE
  TABLE t AS SELECT '__fastproxy_redacted__'``, ``ELT(2, 'u', '__fastproxy_redacted__')``), and the capture
  records what clients send: put back anywhere else, a password would end up in a variable, a table or
  an error message that production traffic chose.
"""
from __future__ import annotations

import base64
import hashlib
import os
import secrets
import stat
import tomllib

from fastproxy.errors import ConfigError
from fastproxy.sqltext import NAME, SCAN_LIMIT, STRING, WORD, statements

PLACEHOLDER = "__fastproxy_redacted__"
PLACEHOLDER_BYTES = PLACEHOLDER.encode()


def load_users_file(path: str) -> dict[str, str]:
    """{user: password} from a TOML file that only its owner can read."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise ConfigError(f"users-file {path}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"users-file {path}: not a regular file")
    if st.st_mode & 0o077:
        raise ConfigError(f"users-file {path}: it holds passwords and is accessible by group or others "
                          f"(mode {stat.S_IMODE(st.st_mode):04o}); chmod 600 it")
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"users-file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"users-file {path}: not TOML: {e}") from None
    for user, password in data.items():
        if not isinstance(password, str):  # never echo the value: it may be a password
            raise ConfigError(f"users-file {path}: the password of {user!r} must be a string "
                              f"(user = \"password\")")
    return data


def native_password_hash(password: str) -> str:
    """What mysql_native_password stores: '*' + hex(SHA1(SHA1(password)))."""
    return "*" + hashlib.sha1(hashlib.sha1(password.encode()).digest()).hexdigest().upper()


def ed25519_password_hash(password: str) -> str:
    """What MariaDB's ed25519 plugin stores: base64 of the public key the password derives."""
    from fastproxy.replay.auth import ed25519_public_key

    return base64.b64encode(ed25519_public_key(password.encode())).decode().rstrip("=")


def _sql_string(value: str) -> str:
    # quotes doubled, backslashes escaped (the default sql_mode; NO_BACKSLASH_ESCAPES is not assumed)
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


# the statements whose secrets the capture redacts
_SECRET_STATEMENTS = frozenset({"create", "alter", "set", "grant"})
_PASSWORD_FUNCTIONS = frozenset({"password", "old_password"})
# after these words (or a comma in their list) the next name is a user
_USER_BEFORE = frozenset({"user", "exists", "for", "to"})


class Credentials:
    def __init__(self, users: dict[str, str], default_user: str, default_password: str) -> None:
        self.users = users
        self.default_user = default_user
        self.default_password = default_password
        self.generated: dict[str, str] = {}  # random passwords replay gave users the capture created
        self.substituted = 0  # statements whose redacted secrets were put back
        self._put_back: set[str] = set()  # every secret put into a statement, as SQL ('pw') and as is
        self.from_users_file = 0  # secrets that came from the users file
        self.replay_user = 0  # secrets that were the --username user's own --password (not in the users file)
        self.random = 0  # secrets replay made up

    def login(self, user: str) -> tuple[str, str]:
        """(user, password) a replay connection of captured `user` logs in as."""
        if user in self.users:
            return user, self.users[user]
        if user in self.generated:
            return user, self.generated[user]
        return self.default_user, self.default_password

    def password_for(self, user: str) -> str:
        if user in self.users:
            self.from_users_file += 1
            return self.users[user]
        if user == self.default_user:  # never lock the replay's own user out
            self.replay_user += 1
            return self.default_password
        if user not in self.generated:
            self.generated[user] = secrets.token_urlsafe(18)
        self.random += 1
        return self.generated[user]

    def substitute(self, sql: bytes, current_user: str) -> bytes:
        """`sql` with each redacted secret of a user-management statement replaced by the password of
        the user it belongs to (the placeholder elsewhere, e.g. inside a BLOB, is data: left alone)."""
        if len(sql) > SCAN_LIMIT:  # statements that carry passwords are short
            return sql
        out = []
        pos = 0
        for st in statements(sql):
            toks = st.tokens
            if not toks or toks[0].kind != WORD or toks[0].text not in _SECRET_STATEMENTS:
                continue
            places = _password_places(toks)
            if not places:
                continue
            user = None
            wants_hash_plugin = "ed25519" if any(t.kind == WORD and t.text == "ed25519" for t in toks) else ""
            for i, tok in enumerate(toks):
                prev = toks[i - 1] if i else None
                if (prev is not None and tok.kind in (WORD, NAME, STRING) and tok.text != PLACEHOLDER
                        and ((prev.kind == WORD and prev.text in _USER_BEFORE) or prev.text == ",")):
                    # a user name (its @host part is not needed: passwords go by name); words are
                    # lower-cased by the lexer, user names are not
                    user = sql[tok.start:tok.end].decode("utf-8", "replace") if tok.kind == WORD else tok.text
                if i not in places:
                    continue
                password = self.password_for(user if user is not None else current_user)
                if places[i]:  # the statement wants the hash of the password
                    literal = ed25519_password_hash(password) if wants_hash_plugin else native_password_hash(password)
                else:
                    literal = password
                quoted = _sql_string(literal)
                self._put_back.update((quoted, literal))
                out.append(sql[pos:tok.start])
                out.append(quoted.encode())
                pos = tok.end
        if pos == 0:
            return sql
        self.substituted += 1
        out.append(sql[pos:])
        return b"".join(out)

    def scrub(self, text: str) -> str:
        """`text` (a server's error message) without the secrets replay put into statements: a message
        may quote the statement near an error (a syntax error after an upgrade), whole or cut short
        (`near '... IDENTIFIED BY 'Test-p' at line 1`: the server quotes 80 characters)."""
        if not self._put_back or not text:
            return text
        for secret in sorted(self._put_back, key=len, reverse=True):
            if len(secret) >= 4 and secret in text:    # a short one alone would blank ordinary words
                text = text.replace(secret, PLACEHOLDER)
        for secret in self._put_back:
            if secret.startswith("'"):
                for k in range(len(secret) - 1, 1, -1):     # its beginning, then the quote that ends the quote
                    cut = secret[:k] + "'"
                    if cut in text:
                        text = text.replace(cut, "'" + PLACEHOLDER + "'")
                        break
        return text


def _is_word(toks: list, i: int, *words: str) -> bool:
    return 0 <= i < len(toks) and toks[i].kind == WORD and toks[i].text in words


def _password_places(toks: list) -> dict[int, bool]:
    """The placeholders of a user-management statement that stand where a password goes (their
    token index -> whether a hash goes there). Empty for any other statement."""
    first = toks[0].text
    if first == "set":
        if not _is_word(toks, 1, "password"):
            return {}
    elif first in ("create", "alter"):
        # CREATE [OR REPLACE] USER, ALTER USER
        if not (_is_word(toks, 1, "user") or (_is_word(toks, 1, "or") and _is_word(toks, 3, "user"))):
            return {}
    elif first != "grant":
        return {}
    places: dict[int, bool] = {}
    identified = False  # an IDENTIFIED came before: USING / AS then give a plugin's hash
    for i, tok in enumerate(toks):
        if _is_word(toks, i, "identified"):
            identified = True
        if tok.kind != STRING or tok.text != PLACEHOLDER:
            continue
        if _is_word(toks, i - 1, "by") and _is_word(toks, i - 2, "identified"):
            places[i] = False  # IDENTIFIED BY 'password'
        elif _is_word(toks, i - 1, "password") and _is_word(toks, i - 2, "by") and _is_word(toks, i - 3, "identified"):
            places[i] = True  # IDENTIFIED BY PASSWORD 'hash'
        elif identified and _is_word(toks, i - 1, "using", "as"):
            places[i] = True  # IDENTIFIED VIA|WITH plugin USING|AS 'hash'
        elif first == "set" and toks[i - 1].text == "=":
            places[i] = True  # SET PASSWORD [FOR user] = 'hash'
        elif (toks[i - 1].text == "(" and _is_word(toks, i - 2, *_PASSWORD_FUNCTIONS)
              and i + 1 < len(toks) and toks[i + 1].text == ")"
              and ((identified and _is_word(toks, i - 3, "using", "as"))
                   or (first == "set" and toks[i - 3].text == "="))):
            places[i] = False  # USING PASSWORD('password'), SET PASSWORD = PASSWORD('password')
    return places
