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
