class ObserverCore:
    engine: object
    verdict: object
    timeline: object
    second_offset: int
    capture_origin_ns: int
    at_second: int | None
    def replay_second(self, now: int) -> int: ...
    def __call__(self, conn: object, rec: object, result: object, now: int) -> None: ...
