class TimelineCore:
    captured: dict[int, int]
    replayed: dict[int, int]
    lag_max_ms: dict[int, float]
    lag_sum_ms: dict[int, float]
    failures: dict[int, int]
    mismatches: dict[int, int]

class ObserverCore:
    engine: object
    verdict: object
    timeline: object
    second_offset: int
    capture_origin_ns: int
    at_second: int | None
    def replay_second(self, now: int) -> int: ...
    def __call__(self, conn: object, rec: object, result: object, now: int) -> None: ...
