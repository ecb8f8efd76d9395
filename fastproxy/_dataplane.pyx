# cython: language_level=3
"""The data plane, seen from Python: worker threads that relay authenticated connections in C
(fastproxy/csrc/dp.c) without the GIL, and the few calls the control plane needs.

- DataPlane(workers, latency_bounds_ns): start() the threads; add() a connection once its
  handshake is done (both sockets, plus the bytes already read); poll_events() when `event_fd` is
  readable (closed / parked connections, capture refused, sync answers).
- Connection: Python's handle on one relayed connection: snapshot() of its session state; while it
  is parked (EV_PARKED), the client bytes it holds, the answer to the proxy's own query, and
  set_db() / own_query() / resume().
- Capture: capture_start(ring, ...) installs the ring in every worker; capture_stop() removes it;
  sync() asks every worker to answer once it has handled everything posted before.
- Hooks into Python, called by a worker with the GIL, for what is rare: the capture's policy on a
  statement the secret classifier's scan flagged (`owner.on_capture_statement`), the session's on a
  statement that may PREPARE, create a temporary table or USE (`owner.on_session_statement`).

See docs/dataplane.md for the design.
"""
import os
import threading
import time

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING
from cpython.object cimport PyObject
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, strlen

from fastproxy._ringbuf cimport RING_ORDERED, RING_REFUSED_LARGE_LIMIT, RING_REFUSED_NONE, RecordHead, RingBuffer, ring
from fastproxy._sqlscan cimport needs_policy


cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)


cdef extern from "dp.h" nogil:
    enum:
        DP_LATENCY_BOUNDS
        DP_CAP_OFF
        DP_CAP_WAIT
        DP_CAP_ON
        DP_CAP_PENDING
        DP_PARK_OWN_QUERY
        DP_PARK_OWN_ANSWER
        DP_RESUME_SET_CAPTURE
        DP_CLEAN
        DP_REDACTED
        DP_DROPPED
        DP_SQL_DROPPED
        DP_HOOK_QUERY
        DP_HOOK_FORGET
        DP_EV_CLOSED
        DP_EV_PARKED
        DP_EV_CAPTURE_REFUSED
        DP_EV_SYNC
        DP_MSG_ADD
        DP_MSG_RESUME
        DP_MSG_OWN_QUERY
        DP_MSG_CAPTURE
        DP_MSG_DRAIN
        DP_MSG_CLOSE_ALL
        DP_MSG_SYNC
        DP_MSG_STOP

    ctypedef struct dp_stats:
        uint64_t bytes_from_clients
        uint64_t bytes_to_clients
        uint64_t latency_sum_ns
        uint64_t protocol_errors
        uint64_t connections
        uint64_t commands[256]
        uint64_t command_errors[256]
        uint64_t latency_buckets[17]

    ctypedef struct dp_capture:
        ring *ring
        int64_t start_ns
        uint64_t large_min
        void *large_ctx
        uint64_t filtered
        uint64_t existing
        uint64_t waited_txn
        uint8_t local_infile
        uint64_t local_infile_limit
        uint64_t infile_files
        uint64_t infile_bytes
        uint64_t infile_too_large
        int full_reported
        int refusal
        uint8_t refused_kind
        uint8_t refused_cmd
        uint64_t refused_conn_id
        uint64_t refused_size
        int64_t refused_at_ns
        uint8_t select

    ctypedef struct dp_stmt:
        uint32_t id
        uint16_t num_params
        uint8_t used
        uint8_t filtered
        char *sql
        uint32_t sql_len
        uint8_t *types

    ctypedef struct dp_session:
        char *user
        char *db
        uint64_t capabilities
        uint16_t status_flags
        uint8_t txn_wrote
        uint8_t db_stale
        uint8_t multi_statements
        dp_stmt *stmts
        uint32_t stmts_cap
        uint64_t commands
        uint8_t last_cmd
        uint8_t last_outcome
        uint16_t last_err_code
        uint8_t has_last
        int64_t last_start_ns
        int64_t last_end_ns

    ctypedef struct tracker:
        uint8_t deprecate_eof
        uint8_t session_track

    ctypedef struct dp_worker:
        dp_stats stats
        uint64_t nconns
        uint8_t started

    ctypedef struct dp_conn:
        dp_worker *w
        uint64_t conn_id
        void *py_handle
        tracker trk
        dp_session s
        pthread_mutex_t lock
        uint8_t cap_state
        uint8_t close_reason
        uint8_t closed_captured
        uint8_t parked
        uint8_t dbcs
        uint8_t *held
        size_t held_len
        uint8_t own_lost
        uint8_t *own_ans
        size_t own_len
        uint16_t unsol_err_code
        char unsol_err_msg[200]
        char close_message[200]
        char backend_addr[64]

    ctypedef struct dp_bytes:
        uint8_t *client_in
        size_t client_in_len
        uint8_t *backend_in
        size_t backend_in_len

    ctypedef struct dp_event:
        int type
        dp_conn *conn
        uint64_t arg

    ctypedef struct trk_result:
        uint8_t cmd
        uint8_t outcome
        uint8_t schema_set
        long long stmt_id

    ctypedef int (*dp_append_large)(void *ctx, const RecordHead *h, const uint8_t *payload, size_t n) noexcept
    ctypedef int (*dp_secret_quick)(const uint8_t *sql, size_t n) noexcept nogil
    ctypedef int (*dp_capture_hook)(void *conn, const uint8_t *payload, size_t n, const trk_result *r, uint8_t **out,
                                    size_t *out_n) noexcept
    ctypedef int (*dp_session_hook)(void *conn, int kind, const uint8_t *payload, size_t n, const trk_result *r,
                                    int flags) noexcept
    ctypedef int (*dp_select_hook)(void *conn, const uint8_t *payload, size_t n, const trk_result *r) noexcept
    ctypedef struct dp_queue:
        int efd

    ctypedef struct dp:
        int nworkers
        dp_worker *workers
        dp_queue events
        dp_secret_quick secret_quick
        dp_capture_hook capture_hook
        dp_session_hook session_hook
        dp_append_large append_large
        dp_select_hook select_hook

    enum: DP_IO_AUTO, DP_IO_EPOLL, DP_IO_URING
    int dp_init(dp *d, int nworkers, const int64_t *latency_bounds, int io)
    int dp_worker_io(const dp_worker *w)
    int dp_worker_started(const dp_worker *w)
    void dp_destroy(dp *d)
    void dp_worker_run(dp_worker *w)
    dp_conn *dp_conn_new(uint64_t conn_id, int client_fd, int backend_fd, uint64_t max_packet_size)
    void dp_conn_free(dp_conn *c)
    int dp_conn_set_initial(dp_conn *c, const uint8_t *client_out, size_t n_out)
    void dp_conn_set_tls(dp_conn *c, void *client_ssl, void *backend_ssl)
    int dp_tls_check(void *ssl, int server_side, const char *version)
    int dp_post(dp_worker *w, int type, dp_conn *c, void *ptr, uint64_t arg)
    size_t dp_take_events(dp *d, dp_event **out)
    unsigned int trk_pending(const tracker *t)
    int dp_used_database(const uint8_t *p, size_t n, const uint8_t **name, size_t *name_len, int *quoted)
    int64_t dp_bench_commands(const uint8_t *cmd, size_t cmd_len, const uint8_t *resp, size_t resp_len, long iters,
                              ring *r, int deprecate_eof, dp_secret_quick quick)


EV_CLOSED = DP_EV_CLOSED
EV_PARKED = DP_EV_PARKED
EV_CAPTURE_REFUSED = DP_EV_CAPTURE_REFUSED
EV_SYNC = DP_EV_SYNC
PARK_OWN_QUERY = DP_PARK_OWN_QUERY
PARK_OWN_ANSWER = DP_PARK_OWN_ANSWER
CAPTURE_STATES = {DP_CAP_OFF: None, DP_CAP_WAIT: "wait-txn", DP_CAP_ON: "on", DP_CAP_PENDING: "pending"}
_CAPTURE_STATE_CODES = {v: k for k, v in CAPTURE_STATES.items()}
CLEAN, REDACTED, DROPPED = DP_CLEAN, DP_REDACTED, DP_DROPPED
HOOK_QUERY, HOOK_FORGET = DP_HOOK_QUERY, DP_HOOK_FORGET
# dp_close_reason (dp.h), by name
CLOSE_REASONS = ("none", "client_quit", "client_gone", "backend_gone", "backend_lost", "client_protocol",
                 "backend_protocol", "drain", "forced", "no_memory")


def used_database(payload):
    """The database a COM_QUERY payload (command byte included) switches to with `USE db`, else None:
    the parser the workers run on every COM_QUERY that may be one (fastproxy/csrc/dp_session.c)."""
    cdef Py_buffer buf
    cdef const uint8_t *name
    cdef size_t n
    cdef int quoted, found
    PyObject_GetBuffer(payload, &buf, PyBUF_SIMPLE)
    try:
        found = dp_used_database(<const uint8_t *>buf.buf, buf.len, &name, &n, &quoted)
        if not found:
            return None
        db = name[:n].decode("utf-8", "replace")
    finally:
        PyBuffer_Release(&buf)
    return db.replace("``", "`") if quoted else db


def secret_scan_needed(payload):
    """The workers' test before they ask the capture's secret policy about a COM_QUERY /
    COM_STMT_PREPARE payload (command byte first): True unless secret_sql.classify would find it
    CLEAN without its policy (tests check the two agree)."""
    cdef bytes b = bytes(payload)
    if len(b) < 1:
        return False
    return bool(_secret_quick(<const uint8_t *>PyBytes_AS_STRING(b) + 1, len(b) - 1))


def bench_commands(bytes command, bytes response, long iters, RingBuffer rb=None, bint deprecate_eof=False):
    """Nanoseconds to run `iters` commands (one command packet, its whole response) through the
    workers' per-command work without sockets: framing, tracking, session, counters, and the capture
    append when a ring `rb` is given (bench/test_bench_dataplane.py)."""
    cdef int64_t ns
    cdef ring *r = &rb._r if rb is not None else NULL
    cdef const uint8_t *c = <const uint8_t *>PyBytes_AS_STRING(command)
    cdef const uint8_t *p = <const uint8_t *>PyBytes_AS_STRING(response)
    cdef size_t cn = len(command), pn = len(response)
    with nogil:
        ns = dp_bench_commands(c, cn, p, pn, iters, r, deprecate_eof, _secret_quick)
    if ns < 0:
        raise ValueError("the command and response did not run cleanly through the data plane")
    return ns


cdef int _secret_quick(const uint8_t *sql, size_t n) noexcept nogil:
    # the secret classifier's own scan (fastproxy/_sqlscan.pyx), run by the workers without the GIL
    return needs_policy(sql, n)


cdef int _capture_hook(void *conn, const uint8_t *payload, size_t n, const trk_result *r, uint8_t **out,
                       size_t *out_n) noexcept with gil:
    # a captured COM_QUERY / COM_STMT_PREPARE the scan flagged: the capture's policy decides
    cdef bytes recorded
    try:
        verdict, recorded, sql_dropped = (<Connection>conn).owner.on_capture_statement(
            (<const char *>payload)[:n], r.outcome, r.stmt_id)
        if verdict == DP_REDACTED:
            out[0] = <uint8_t *>malloc(len(recorded))
            if out[0] == NULL:
                return DP_DROPPED | (DP_SQL_DROPPED if sql_dropped else 0)
            memcpy(out[0], PyBytes_AS_STRING(recorded), len(recorded))
            out_n[0] = len(recorded)
        return verdict | (DP_SQL_DROPPED if sql_dropped else 0)
    except BaseException:  # noqa: B036 - in doubt, the statement is not written
        import logging
        logging.getLogger("fastproxy.capture").exception("capture policy failed: statement not recorded")
        return DP_DROPPED


cdef int _select_hook(void *conn, const uint8_t *payload, size_t n, const trk_result *r) noexcept with gil:
    # a capture filter is set: whether it keeps this command of a captured connection
    try:
        return 1 if (<Connection>conn).owner.on_capture_select((<const char *>payload)[:n], r.stmt_id) else 0
    except BaseException:  # noqa: B036 - in doubt, the command is not written
        import logging
        logging.getLogger("fastproxy.capture").exception("capture filter failed: command not recorded")
        return 0


cdef int _session_hook(void *conn, int kind, const uint8_t *payload, size_t n, const trk_result *r,
                       int flags) noexcept with gil:
    # a statement whose effect on the session Python follows (SQL PREPAREs, temporary tables, USE);
    # flags: 1 a `;` beyond the bytes given, 2 multi-statements are on
    cdef Connection c = <Connection>conn
    try:
        db = c.c.s.db.decode("utf-8", "replace") if c.c.s.db != NULL else None
        return 1 if c.owner.on_session_statement(kind, (<const char *>payload)[:n], r.outcome, bool(r.schema_set),
                                                 bool(flags & 1), bool(flags & 2), db) else 0
    except BaseException:  # noqa: B036 - the database may have changed: asked at the next command
        import logging
        logging.getLogger("fastproxy.conn").exception("session bookkeeping failed")
        return 1


cdef int _append_large(void *ctx, const RecordHead *h, const uint8_t *payload, size_t n) noexcept with gil:
    # a worker's record too large for the ring: its side path keeps the payload (copied, since the
    # worker reuses its buffer); the marker takes its place in the ring, in completion order
    cdef RingBuffer rb = <RingBuffer>ctx
    try:
        if rb.append_large(h, (<const char *>payload)[:n], n, RING_ORDERED):
            return RING_REFUSED_NONE
        return rb._refusal
    except MemoryError:
        return RING_REFUSED_LARGE_LIMIT


cdef char *_cstr(object text) except? NULL:
    """A malloc'd NUL-terminated UTF-8 copy (NULL for None)."""
    if text is None:
        return NULL
    cdef bytes b = text.encode("utf-8", "surrogateescape")
    cdef char *out = <char *>malloc(len(b) + 1)
    if out == NULL:
        raise MemoryError()
    memcpy(out, PyBytes_AS_STRING(b), len(b))
    out[len(b)] = 0
    return out


cdef uint8_t *_copy(bytes b) except? NULL:
    if not b:
        return NULL
    cdef uint8_t *out = <uint8_t *>malloc(len(b))
    if out == NULL:
        raise MemoryError()
    memcpy(out, PyBytes_AS_STRING(b), len(b))
    return out


cdef void *_ssl_pointer(object tls):
    """The OpenSSL SSL of an ssl.SSLObject: CPython's _ssl._SSLSocket is {PyObject_HEAD; PyObject
    *Socket; SSL *ssl; ...} (Modules/_ssl.c, 3.11). Checked by dp_tls_check before any use."""
    sock = getattr(tls, "_sslobj", None)
    if sock is None or type(sock).__name__ != "_SSLSocket":
        return NULL
    return (<void **>((<char *><PyObject *>sock) + sizeof(PyObject) + sizeof(void *)))[0]


def tls_relayable(tls, bint server_side):
    """Whether the data plane can relay a side whose TLS is this ssl.SSLObject (uvloop's TLS
    protocol over memory BIOs, its handshake done; `server_side`: the proxy's end is the server)."""
    cdef void *ssl
    version = tls.version() if tls is not None else None
    if not version:
        return False
    ssl = _ssl_pointer(tls)
    return ssl != NULL and dp_tls_check(ssl, server_side, version.encode()) == 1


cdef class Connection:
    """Python's handle on a connection relayed by a worker. `owner` is the proxy's object for it."""

    cdef dp_conn *c
    cdef object tls_objects  # the ssl.SSLObjects whose SSL the worker uses: alive until it is done
    cdef readonly object owner
    cdef readonly uint64_t conn_id
    cdef readonly int worker
    cdef readonly str close_reason
    cdef readonly str close_message
    cdef readonly bint closed_captured       # it was captured when it closed
    cdef readonly int unsolicited_err_code   # the server's last word on it (e.g. 1927 killed), 0 if none
    cdef readonly str unsolicited_err_msg

    def __dealloc__(self):
        # only reached for a connection the workers no longer hold (closed, or never added)
        if self.c != NULL:
            dp_conn_free(self.c)
            self.c = NULL

    @property
    def closed(self):
        return self.c == NULL

    cdef _closed(self, int reason):
        self.close_reason = CLOSE_REASONS[reason] if reason < len(CLOSE_REASONS) else str(reason)
        self.close_message = (<bytes>self.c.close_message).decode("utf-8", "replace")
        self.closed_captured = self.c.closed_captured
        self.unsolicited_err_code = self.c.unsol_err_code
        self.unsolicited_err_msg = (<bytes>self.c.unsol_err_msg).decode("utf-8", "replace")
        dp_conn_free(self.c)
        self.c = NULL
        self.tls_objects = None  # the worker is done with them

    # ---- while parked (Python's: the worker leaves it alone until resume) ------------------------
    @property
    def held(self):
        """The client bytes held back while the proxy asks the server first (not yet forwarded)."""
        return b"" if self.c == NULL or self.c.held == NULL else (<const char *>self.c.held)[:self.c.held_len]

    @property
    def answer(self):
        """The server's whole answer to the proxy's own query (not forwarded to the client)."""
        return b"" if self.c == NULL or self.c.own_ans == NULL else (<const char *>self.c.own_ans)[:self.c.own_len]

    @property
    def own_query_failed(self):
        """The backend went away (or broke the protocol) during the proxy's own query."""
        return self.c != NULL and bool(self.c.own_lost)

    @property
    def capture_state(self):
        return None if self.c == NULL else CAPTURE_STATES.get(self.c.cap_state)

    def set_db(self, db):
        """The current database, as the server said it (the proxy's own SELECT DATABASE())."""
        cdef dp_conn *c = self.c
        cdef char *value = _cstr(db)
        if c == NULL or not c.parked:
            free(value)
            raise RuntimeError("the connection is not parked")
        with nogil:
            pthread_mutex_lock(&c.lock)
        free(c.s.db)
        c.s.db = value
        pthread_mutex_unlock(&c.lock)
        c.s.db_stale = 0

    def snapshot(self):
        """The session state as the worker knows it now (None once closed). Strings and statements
        are read under the connection's lock; counters as they are."""
        cdef dp_conn *c = self.c
        cdef dp_session *s
        cdef dp_stmt *e
        cdef uint32_t i
        if c == NULL:
            return None
        s = &c.s
        prepared = {}
        params = {}
        types = {}
        filtered = []
        with nogil:
            pthread_mutex_lock(&c.lock)
        try:
            user = s.user.decode("utf-8", "replace") if s.user != NULL else ""
            db = s.db.decode("utf-8", "replace") if s.db != NULL else None
            for i in range(s.stmts_cap):
                e = &s.stmts[i]
                if e.used != 1:
                    continue
                prepared[e.id] = e.sql[:e.sql_len].decode("utf-8", "replace") if e.sql != NULL else ""
                params[e.id] = e.num_params
                if e.types != NULL:
                    types[e.id] = e.types[:2 * e.num_params]
                if e.filtered:
                    filtered.append(e.id)
        finally:
            pthread_mutex_unlock(&c.lock)
        last = None
        if s.has_last:
            last = (s.last_cmd, s.last_start_ns, s.last_end_ns, s.last_outcome, s.last_err_code)
        return {
            "user": user, "db": db, "db_stale": bool(s.db_stale), "capabilities": s.capabilities,
            "status_flags": s.status_flags, "txn_wrote": bool(s.txn_wrote), "multi_statements": bool(s.multi_statements),
            "prepared": prepared, "prepared_params": params, "prepared_types": types, "filtered": filtered,
            "commands": s.commands, "pending_commands": trk_pending(&c.trk),
            "capture": CAPTURE_STATES.get(c.cap_state), "last_command": last,
        }

    def mark_filtered(self, stmt_ids):
        """Statements (of a parked connection) whose SQL may carry a secret: none of their commands
        is captured."""
        cdef dp_conn *c = self.c
        cdef dp_stmt *e
        cdef uint32_t i
        if c == NULL:
            return
        wanted = set(stmt_ids)
        with nogil:
            pthread_mutex_lock(&c.lock)
        try:
            for i in range(c.s.stmts_cap):
                e = &c.s.stmts[i]
                if e.used == 1 and e.id in wanted:
                    e.filtered = 1
        finally:
            pthread_mutex_unlock(&c.lock)


IO_MODES = {"auto": DP_IO_AUTO, "epoll": DP_IO_EPOLL, "io_uring": DP_IO_URING}


cdef class DataPlane:
    """DataPlane(workers, latency_bounds_ns, io="auto"): `workers` threads, latency histogram bounds
    (metrics.py), their I/O: "io_uring" where the kernel and the process's seccomp profile allow it,
    else "epoll" ("auto"), or one of them ("io_uring" raises OSError where it is not allowed)."""

    cdef dp d
    cdef bint _inited
    cdef list _threads
    cdef dict _live              # address of the C connection -> Connection, while a worker holds it
    cdef list _assigned          # connections given to each worker and not yet closed
    cdef dp_capture *_cap
    cdef object _cap_ring        # the RingBuffer the workers append to (kept alive while installed)
    cdef readonly int workers

    def __cinit__(self, int workers, latency_bounds_ns, str io="auto"):
        cdef int64_t bounds[DP_LATENCY_BOUNDS]
        cdef int i, rc
        if io not in IO_MODES:
            raise ValueError(f"io: one of {', '.join(IO_MODES)}, got {io!r}")
        if workers < 1:
            raise ValueError("the data plane needs at least one worker")
        if len(latency_bounds_ns) != DP_LATENCY_BOUNDS:
            raise ValueError(f"expected {DP_LATENCY_BOUNDS} latency bounds")
        for i in range(DP_LATENCY_BOUNDS):
            bounds[i] = latency_bounds_ns[i]
        self._live = {}
        self._threads = []
        self._assigned = [0] * workers
        self.workers = workers
        rc = dp_init(&self.d, workers, bounds, IO_MODES[io])
        if rc != 0:
            dp_destroy(&self.d)
            if rc < -1:
                raise OSError(-rc, f"io_uring is not available here ({os.strerror(-rc)}): use proxy.io = auto or epoll")
            raise OSError("cannot set up the data plane (epoll, eventfd or memory)")
        self._inited = True
        self.d.session_hook = _session_hook  # the session's policy runs with or without a capture

    def __dealloc__(self):
        if self._inited and not self._threads:
            dp_destroy(&self.d)
        if self._cap != NULL:
            free(self._cap)

    # ---- threads -----------------------------------------------------------------------------
    def start(self):
        """Start the threads; returns once each has chosen its I/O (see `io`)."""
        for i in range(self.workers):
            t = threading.Thread(target=self._run, args=(i,), name=f"fastproxy-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        for i in range(self.workers):
            while not dp_worker_started(&self.d.workers[i]):
                time.sleep(0.001)

    @property
    def io(self):
        """What each started worker runs on: "io_uring" or "epoll"."""
        return ["io_uring" if dp_worker_io(&self.d.workers[i]) == DP_IO_URING else "epoll"
                for i in range(len(self._threads))]

    def _run(self, int i):
        cdef dp_worker *w = &self.d.workers[i]
        with nogil:
            dp_worker_run(w)

    def stop(self):
        """Stop the workers (once every connection is closed) and wait for them."""
        cdef int i
        for i in range(self.workers):
            dp_post(&self.d.workers[i], DP_MSG_STOP, NULL, NULL, 0)
        for t in self._threads:
            t.join()
        self._threads = []
        dp_destroy(&self.d)
        self._inited = False

    # ---- connections -----------------------------------------------------------------------------
    def add(self, owner, int client_fd, int backend_fd, uint64_t conn_id, *, str user, db, uint64_t capabilities,
            bint deprecate_eof, bint session_track, bint multi_statements, bint dbcs, uint16_t status_flags,
            str backend_addr, uint64_t max_packet_size, bint capture, bytes client_out=b"", bytes client_in=b"",
            bytes backend_in=b"", client_tls=None, backend_tls=None):
        """Hand a connection whose handshake is done to the least busy worker. The worker owns both
        sockets from now on (and closes them). `client_out`: bytes still to send to the client (the
        server's OK); `client_in`/`backend_in`: bytes already read from either side after the handshake.
        `client_tls`/`backend_tls`: the ssl.SSLObject of a TLS side (tls_relayable said yes); nothing
        else may use it from now on (the worker reads what it still holds first)."""
        cdef dp_conn *c = dp_conn_new(conn_id, client_fd, backend_fd, max_packet_size)
        cdef dp_bytes *b = NULL
        cdef Connection conn
        cdef int i, best = 0
        if c == NULL:
            raise MemoryError()
        conn = Connection.__new__(Connection)
        conn.c = c
        conn.owner = owner
        conn.conn_id = conn_id
        try:
            if client_tls is not None or backend_tls is not None:
                for tls, server_side in ((client_tls, True), (backend_tls, False)):
                    if tls is not None and not tls_relayable(tls, server_side):
                        raise ValueError("a TLS side the data plane cannot relay")
                conn.tls_objects = (client_tls, backend_tls)
                dp_conn_set_tls(c, _ssl_pointer(client_tls) if client_tls is not None else NULL,
                                _ssl_pointer(backend_tls) if backend_tls is not None else NULL)
            c.s.user = _cstr(user)
            c.s.db = _cstr(db)
            c.s.capabilities = capabilities
            c.s.status_flags = status_flags
            c.trk.deprecate_eof = deprecate_eof
            c.trk.session_track = session_track
            c.s.multi_statements = multi_statements
            c.dbcs = dbcs
            addr = backend_addr.encode()[:63]
            memcpy(c.backend_addr, PyBytes_AS_STRING(addr), len(addr))
            if dp_conn_set_initial(c, <const uint8_t *>PyBytes_AS_STRING(client_out), len(client_out)) != 0:
                raise MemoryError()
            if client_in or backend_in:
                b = <dp_bytes *>calloc(1, sizeof(dp_bytes))
                if b == NULL:
                    raise MemoryError()
                b.client_in = _copy(client_in)
                b.client_in_len = len(client_in)
                b.backend_in = _copy(backend_in)
                b.backend_in_len = len(backend_in)
        except BaseException:
            if b != NULL:
                free(b.client_in)
                free(b.backend_in)
                free(b)
            raise  # conn's __dealloc__ frees c; the caller still owns (and closes) the sockets
        c.py_handle = <void *>conn
        # the least loaded by Python's own count: a burst of new connections is placed before any
        # worker has taken one in
        assigned = self._assigned
        for i in range(1, self.workers):
            if assigned[i] < assigned[best]:
                best = i
        self._live[<size_t>c] = conn
        if dp_post(&self.d.workers[best], DP_MSG_ADD, c, b, DP_CAP_ON if capture else DP_CAP_OFF) != 0:
            del self._live[<size_t>c]
            raise MemoryError()
        conn.worker = best
        assigned[best] += 1
        return conn

    def resume(self, Connection conn, capture_state="keep"):
        """Give a parked connection back to its worker (its held bytes go on), setting its part in
        the capture (None, "on", "pending", "wait-txn") unless "keep"."""
        cdef dp_conn *c = conn.c
        cdef uint64_t arg = 0
        if c == NULL:
            return
        if capture_state != "keep":
            arg = DP_RESUME_SET_CAPTURE | _CAPTURE_STATE_CODES[capture_state]
        while dp_post(c.w, DP_MSG_RESUME, c, NULL, arg) != 0:
            pass

    def own_query(self, Connection conn, sql):
        """Send the proxy's own COM_QUERY on a parked connection's backend; EV_PARKED
        (PARK_OWN_ANSWER) says when `conn.answer` holds the whole answer."""
        cdef dp_conn *c = conn.c
        cdef bytes payload = b"\x03" + (sql.encode() if isinstance(sql, str) else sql)
        cdef size_t n = len(payload)
        cdef uint8_t *packet
        if c == NULL:
            return
        if n >= 0xFFFFFF:
            raise ValueError("the proxy's own query is too long")
        packet = <uint8_t *>malloc(n + 4)
        if packet == NULL:
            raise MemoryError()
        packet[0] = n & 0xFF
        packet[1] = (n >> 8) & 0xFF
        packet[2] = (n >> 16) & 0xFF
        packet[3] = 0
        memcpy(packet + 4, PyBytes_AS_STRING(payload), n)
        while dp_post(c.w, DP_MSG_OWN_QUERY, c, packet, n + 4) != 0:
            pass

    @property
    def event_fd(self):
        """Readable when poll_events() has something."""
        return self.d.events.efd

    def poll_events(self):
        """[(EV_*, Connection or None, arg)]; a Connection in EV_CLOSED is closed and freed."""
        cdef dp_event *evs
        cdef size_t n = dp_take_events(&self.d, &evs), i
        cdef Connection conn
        out = []
        try:
            for i in range(n):
                if evs[i].type == DP_EV_CLOSED:
                    conn = self._live.pop(<size_t>evs[i].conn)
                    conn._closed(<int>evs[i].arg)
                    self._assigned[conn.worker] -= 1
                    out.append((EV_CLOSED, conn, evs[i].arg))
                elif evs[i].type == DP_EV_PARKED:
                    out.append((EV_PARKED, self._live[<size_t>evs[i].conn], evs[i].arg))
                else:
                    out.append((evs[i].type, None, evs[i].arg))
        finally:
            free(evs)
        return out

    def connections(self):
        return list(self._live.values())

    # ---- control of every worker -------------------------------------------------------------------
    cdef _post_all(self, int msg, void *ptr, uint64_t arg):
        cdef int i
        for i in range(self.workers):
            while dp_post(&self.d.workers[i], msg, NULL, ptr, arg) != 0:
                pass

    def drain(self):
        """Shutdown: every connection closes at its next transaction boundary."""
        self._post_all(DP_MSG_DRAIN, NULL, 0)

    def close_all(self):
        self._post_all(DP_MSG_CLOSE_ALL, NULL, 0)

    def sync(self, uint64_t token):
        """Every worker answers EV_SYNC(token) once it has handled all that was posted before."""
        self._post_all(DP_MSG_SYNC, NULL, token)

    # ---- capture ---------------------------------------------------------------------------------------
    def capture_start(self, RingBuffer rb, int64_t start_ns, bint local_infile=False,
                      uint64_t local_infile_limit=0, bint select=False):
        """Install a capture in every worker: new commands of captured connections go to `rb`;
        connections already open are parked at their next command (EV_PARKED, PARK_OWN_QUERY) for
        Python to read and record their state first. The capture's policy on flagged statements is
        the connections' owners' on_capture_statement (with the GIL); with `select` (a capture
        filter is set), every captured command asks their on_capture_select first."""
        if self._cap != NULL:
            raise RuntimeError("a capture is already installed")
        self.d.secret_quick = _secret_quick
        self.d.capture_hook = _capture_hook
        self.d.append_large = _append_large
        self.d.select_hook = _select_hook
        self._cap = <dp_capture *>calloc(1, sizeof(dp_capture))
        if self._cap == NULL:
            raise MemoryError()
        self._cap.ring = &rb._r
        self._cap.start_ns = start_ns
        self._cap.large_min = rb._large_min
        self._cap.large_ctx = <void *>rb
        self._cap.local_infile = local_infile
        self._cap.local_infile_limit = local_infile_limit
        self._cap.select = select
        self._cap_ring = rb
        self._post_all(DP_MSG_CAPTURE, self._cap, 0)

    def capture_stop(self):
        """Remove the capture from every worker (then sync() before capture_release())."""
        self._post_all(DP_MSG_CAPTURE, NULL, 0)

    def capture_release(self):
        """Free the capture once every worker has answered a sync() posted after capture_stop()."""
        if self._cap != NULL:
            free(self._cap)
            self._cap = NULL
        self._cap_ring = None
        self.d.capture_hook = NULL
        self.d.append_large = NULL

    def capture_counts(self):
        if self._cap == NULL:
            return {"filtered": 0, "existing": 0, "waited_for_transaction": 0, "local_infile_files": 0,
                    "local_infile_bytes": 0, "local_infile_too_large": 0}
        c = self._cap
        return {"filtered": c.filtered, "existing": c.existing, "waited_for_transaction": c.waited_txn,
                "local_infile_files": c.infile_files, "local_infile_bytes": c.infile_bytes,
                "local_infile_too_large": c.infile_too_large}

    def capture_refused(self):
        """After EV_CAPTURE_REFUSED: (refusal, kind, command byte, conn_id, payload size, start_ns)
        of the record the ring refused (the workers append nothing after it)."""
        if self._cap == NULL or not self._cap.full_reported:
            return None
        c = self._cap
        return (c.refusal, c.refused_kind, c.refused_cmd, c.refused_conn_id, c.refused_size, c.refused_at_ns)

    # ---- metrics ----------------------------------------------------------------------------------------
    def stats(self):
        """Every worker's counters, summed (read without stopping them: each is a plain word)."""
        cdef int i, k
        cdef dp_stats *st
        commands = [0] * 256
        errors = [0] * 256
        buckets = [0] * (DP_LATENCY_BOUNDS + 1)
        totals = {"bytes_from_clients": 0, "bytes_to_clients": 0, "latency_sum_ns": 0, "protocol_errors": 0}
        per_worker = []
        for i in range(self.workers):
            st = &self.d.workers[i].stats
            totals["bytes_from_clients"] += st.bytes_from_clients
            totals["bytes_to_clients"] += st.bytes_to_clients
            totals["latency_sum_ns"] += st.latency_sum_ns
            totals["protocol_errors"] += st.protocol_errors
            per_worker.append(st.connections)
            for k in range(256):
                commands[k] += st.commands[k]
                errors[k] += st.command_errors[k]
            for k in range(DP_LATENCY_BOUNDS + 1):
                buckets[k] += st.latency_buckets[k]
        totals.update(commands=commands, command_errors=errors, latency_buckets=buckets,
                      worker_connections=per_worker)
        return totals
