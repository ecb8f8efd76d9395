# cython: language_level=3
"""A replay connection's state (engine.py's `Conn`, with its transaction log `TxnLog`) as C structs: the per-command chain in C
(_engine.pyx, the checkpoint's and the verdict's hooks) reads its fields without an attribute
lookup. Its Python API is the slotted class it was: the same attributes, set and read as before
(an attribute that is not one of them is an AttributeError, as with __slots__)."""
from collections import deque


cdef class TxnLog:
    """What one replay connection sent for the production transaction in progress
    (fastproxy/replay/transactions.py)."""

    def __init__(self):
        self.entries = []   # (record, payload sent, pin SET sent before it or None, ticket flags)
        self.aborted = False  # given up: skip the rest of the production transaction
        self.retry = None  # a retry in progress (transactions.Retry)
        self.attempts = 0
        self.undone = False  # rolled back while held back by causal order: redo before going on

    def reset(self):
        self.reset_c()

    cdef int reset_c(self) except -1:
        if self.entries:
            del self.entries[:]
        self.attempts = 0
        self.undone = False
        return 0

    def can_undo(self):
        """Whether the transaction in progress can be rolled back now and sent again later: its
        start is in the log with a statement after it (a bare BEGIN holds no lock), nothing of it
        is being sent again, and it was not undone already."""
        from fastproxy.replay.causal import TXN_BEGIN  # here: causal's imports come back to this module

        return (len(self.entries) > 1 and bool(self.entries[0][3] & TXN_BEGIN) and self.retry is None
                and not self.undone)


cdef class Conn:
    """One captured connection and its replay connection."""

    def __init__(self, idx, conn_id):
        self.idx = idx
        self.conn_id = conn_id
        self.user = ""
        self.db = None
        self.capabilities = 0
        self.charset = 0
        self.queue = deque()  # deque[Record]
        self.client = None  # ReplayClient | None
        self.busy = False
        self.connecting = False
        self.stmt_map = {}  # captured statement id -> replay statement id
        self.stmt_sql = {}  # captured statement id -> SQL (to re-prepare)
        self.stmt_params = {}  # captured statement id -> number of parameters
        self.stmt_types = {}  # captured statement id -> last bound parameter types (raw)
        self.types_bound = set()  # captured ids whose types the replay server already has
        self.filtered_stmts = set()
        self.inflight = None  # Record | None
        self.sent_ns = 0
        self.due_ns = 0
        self.closed = False
        self.pending_payload = None  # the real command waiting behind an internal re-prepare
        self.ever_connected = False
        self.backend = ""  # production backend and thread id (KILL targets)
        self.thread_id = 0
        self.state = None  # CONN_STATE: rebuilt after the first login
        self.not_rebuilt = []  # what of its session replay could not rebuild
        self.infiles = {}  # command start_ns -> its LOCAL INFILE files (bytes or None)
        self.lost_idle = ""  # the server closed it while idle: reported unless a server close follows
        # faithful replay: the head command's ticket is tickets[0] (aligned with queue)
        self.tickets = deque()  # deque[Ticket | None]: per queued record: causal order, pins, transaction role
        self.parked = False  # waiting for another connection's command (CausalOrder)
        self.parked_ns = 0
        self.pin_dirty = False  # an earlier SET left timestamp / insert_id pinned on the replay session
        self.txn = TxnLog()
        self.sent = None  # the head command as sent (payload, pin SET)
        self.again = None  # the command last sent again after overlapping writes
        # commands of `queue` sent and not yet answered: 1 (the head, `inflight`), more when pipelined
        self.nsent = 0
