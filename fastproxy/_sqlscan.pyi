READ_SQ_NOESC: int
READ_DQ_NOESC: int
READ_DBCS_MASK: int
READ_DBCS_GBK: int
READ_DBCS_BIG5: int
READ_DBCS_SJIS: int
READ_FLAT_EXEC: int
F_UNTERMINATED: int
F_BS_IN_SQ: int
F_BS_IN_DQ: int
F_NESTED_IN_EXEC: int
SIG_AUTH: int
SIG_MYSQLDB: int
SIG_DYNAMIC: int
SIG_VARASSIGN: int
SIG_CONNECTION: int
SIG_CRYPTO: int
T_WORD: int
T_QIDENT: int
T_STR: int
T_LIT: int
T_VAR: int
T_SYSVAR: int
T_OP: int
T_OPEN: int

def scan(data: bytes | bytearray | memoryview, start: int = 0,
         reading: int = 0) -> tuple[int, int, tuple[tuple[int, int, int], ...]]: ...
def tokens(data: bytes | bytearray | memoryview, start: int, end: int, reading: int = 0,
           exec_depth: int = 0, max_tokens: int = ...) -> list[tuple[int, int, int]] | None: ...
