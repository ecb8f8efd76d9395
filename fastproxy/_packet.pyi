from typing import Any

OK: int
ERR: int
NO_RESPONSE: int
UNKNOWN: int
BACKEND_LOST: int
OUTCOME_NAMES: tuple[str, ...]

def expects_response(cmd: int) -> bool: ...
def execute_flag_at(num_params: int) -> int: ...
def execute_types_at(payload: bytes | memoryview, num_params: dict[int, int]) -> int: ...
def build_packet(seq: int, payload: bytes | bytearray | memoryview) -> bytes: ...

class PacketFramer:
    max_packet_size: int
    def __init__(self, max_packet_size: int = ...) -> None: ...
    @property
    def buffered(self) -> int: ...
    def feed(self, data: bytes | bytearray | memoryview) -> None: ...
    def next_packet(self) -> tuple[int, bytes | memoryview] | None: ...
    def take_all(self) -> bytes: ...

class CommandResult:
    cmd: int
    outcome: int
    err_code: int
    sql_state: str
    err_msg: str
    affected_rows: int
    last_insert_id: int
    rows: int
    status_flags: int
    warnings: int
    result_sets: int
    columns: int
    stmt_id: int
    num_params: int
    num_columns: int
    local_infile: bool
    hash_ordered: int
    hash_unordered: int
    tag: Any
    schema: str | None
    schema_cut: bool
    def __init__(self, cmd: int = ..., tag: Any = ...) -> None: ...
    @property
    def ok(self) -> bool: ...
    @property
    def outcome_name(self) -> str: ...

class ResponseTracker:
    deprecate_eof: bool
    fingerprints: bool
    session_track: bool
    packets: int
    unsolicited: int
    local_infile_requests: int
    last_unsolicited_error: CommandResult | None
    def __init__(self, deprecate_eof: bool = ...) -> None: ...
    @property
    def pending(self) -> int: ...
    @property
    def idle(self) -> bool: ...
    @property
    def next_seq(self) -> int: ...
    @property
    def at_packet_boundary(self) -> bool: ...
    def begin(self, payload: bytes | memoryview, tag: Any = ...) -> int: ...
    def feed(self, data: bytes | bytearray | memoryview) -> int: ...
    def take_completed(self) -> list[CommandResult]: ...
    def abort(self, outcome: int = ...) -> int: ...
