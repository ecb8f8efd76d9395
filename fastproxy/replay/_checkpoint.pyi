from collections import deque

class Track:
    pending: deque[int]
    consumed: int
    done: int
    inflight: int
    inflight_txn: bool
    thread: int
    answered: bool
    held: list | None
    def __init__(self) -> None: ...

class CheckpointHooks:
    engine: object
    seq: int
    tracks: dict[int, Track]
    results: dict
    def on_read(self, rec: object) -> bool: ...
    def sent(self, conn: object) -> None: ...
    def result(self, conn: object, rec: object, result: object, now: int) -> None: ...
    def _count(self, conn: object, rec: object, result: object, now: int, seq: int = ...) -> None: ...
    def consumed(self, conn: object, ticket: object) -> None: ...

class HeldConn:
    conn_id: int
    not_rebuilt: list[str]
    sent_ns: int
    due_ns: int
    db: str | None
    stmt_sql: dict[int, str]
    stmt_types: dict[int, bytes]
    stmt_params: dict[int, int]
    ticket: object  # the command's causal Ticket (None: it had none), read by the verdict
    def __init__(self, conn: object, rec: object) -> None: ...

def result_copy(r: object) -> object: ...
