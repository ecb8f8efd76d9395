"""A few libmariadb (Connector/C) calls through ctypes, for the commands no Python driver exposes
(COM_FIELD_LIST via mysql_list_fields, COM_CHANGE_USER, COM_RESET_CONNECTION)."""
from __future__ import annotations

import ctypes
import ctypes.util

_lib = ctypes.CDLL(ctypes.util.find_library("mariadb") or "libmariadb.so.3")

_P = ctypes.c_void_p
_S = ctypes.c_char_p
for name, restype, argtypes in [
    ("mysql_init", _P, [_P]),
    ("mysql_real_connect", _P, [_P, _S, _S, _S, _S, ctypes.c_uint, _S, ctypes.c_ulong]),
    ("mysql_query", ctypes.c_int, [_P, _S]),
    ("mysql_store_result", _P, [_P]),
    ("mysql_num_fields", ctypes.c_uint, [_P]),
    ("mysql_fetch_row", ctypes.POINTER(_S), [_P]),
    ("mysql_fetch_field_direct", _P, [_P, ctypes.c_uint]),
    ("mysql_free_result", None, [_P]),
    ("mysql_list_fields", _P, [_P, _S, _S]),
    ("mysql_change_user", ctypes.c_char, [_P, _S, _S, _S]),
    ("mysql_reset_connection", ctypes.c_int, [_P]),
    ("mysql_ping", ctypes.c_int, [_P]),
    ("mysql_errno", ctypes.c_uint, [_P]),
    ("mysql_error", _S, [_P]),
    ("mysql_close", None, [_P]),
]:
    fn = getattr(_lib, name)
    fn.restype = restype
    fn.argtypes = argtypes


class CapiError(Exception):
    def __init__(self, errno: int, msg: str) -> None:
        super().__init__(errno, msg)
        self.errno = errno


class MYSQL_FIELD_HEAD(ctypes.Structure):
    # the first members of MYSQL_FIELD (stable across Connector/C 3.x): name, org_name, table, ...
    _fields_ = [("name", _S), ("org_name", _S), ("table", _S), ("org_table", _S), ("db", _S)]


class CapiConnection:
    def __init__(self, host: str, port: int, user: str, password: str, db: str | None = None) -> None:
        self.h = _lib.mysql_init(None)
        if not _lib.mysql_real_connect(self.h, host.encode(), user.encode(), password.encode(),
                                       db.encode() if db else None, port, None, 0):
            err = self._error()
            _lib.mysql_close(self.h)
            raise err

    def _error(self) -> CapiError:
        return CapiError(_lib.mysql_errno(self.h), (_lib.mysql_error(self.h) or b"").decode())

    def _rows(self, res) -> list[tuple]:
        n = _lib.mysql_num_fields(res)
        rows = []
        while row := _lib.mysql_fetch_row(res):
            rows.append(tuple(row[i].decode() if row[i] is not None else None for i in range(n)))
        _lib.mysql_free_result(res)
        return rows

    def query(self, sql: str) -> list[tuple]:
        if _lib.mysql_query(self.h, sql.encode()):
            raise self._error()
        res = _lib.mysql_store_result(self.h)
        return self._rows(res) if res else []

    def list_fields(self, table: str, wild: str | None = None) -> list[str]:
        """COM_FIELD_LIST: the column names of `table`."""
        res = _lib.mysql_list_fields(self.h, table.encode(), wild.encode() if wild else None)
        if not res:
            raise self._error()
        names = []
        for i in range(_lib.mysql_num_fields(res)):
            f = ctypes.cast(_lib.mysql_fetch_field_direct(res, i), ctypes.POINTER(MYSQL_FIELD_HEAD)).contents
            names.append(f.name.decode())
        _lib.mysql_free_result(res)
        return names

    def change_user(self, user: str, password: str, db: str | None) -> None:
        if _lib.mysql_change_user(self.h, user.encode(), password.encode(), db.encode() if db else None) != b"\x00":
            raise self._error()

    def reset(self) -> None:
        if _lib.mysql_reset_connection(self.h):
            raise self._error()

    def ping(self) -> None:
        if _lib.mysql_ping(self.h):
            raise self._error()

    def close(self) -> None:
        if self.h:
            _lib.mysql_close(self.h)
            self.h = None

    def __enter__(self) -> "CapiConnection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
