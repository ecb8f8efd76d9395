# cython: language_level=3
"""The data plane, seen from Python: worker threads that relay authenticated connections in C
(fastproxy/csrc/dp.c) without the GIL, and the few calls the control plane needs.

- DataPlane(workers, latency_bounds_ns, secret_check): start() the threads; add() a connection
  once its handshake is done (both sockets, plus the bytes already read); poll_events() when
  `event_fd` is readable (closed / parked connections, capture ring full, sync answers).
- Connection: Python's handle on one relayed connection: snapshot() of its session state,
  mark_filtered() of statements whose SQL may carry a secret.
- Capture: capture_start(ring, start_ns) installs the ring in every worker; capture_stop() removes
  it; sync() asks every worker to answer once it has handled everything posted before.

See docs/dataplane.md for the design.
"""
import threading

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, strlen

from fastproxy._ringbuf cimport RING_ORDERED, RING_REFUSED_LARGE_LIMIT, RING_REFUSED_NONE, RecordHead, RingBuffer, ring


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
        DP_EV_CLOSED
        DP_EV_PARKED
        DP_EV_CAPTURE_REFUSED
        DP_EV_SYNC
        DP_MSG_ADD
        DP_MSG_RESUME
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
        int full_reported
        int refusal
        uint8_t refused_kind
        uint8_t refused_cmd
        uint64_t refused_conn_id
        uint64_t refused_size
        int64_t refused_at_ns

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

    ctypedef struct dp_worker:
        dp_stats stats
        uint64_t nconns

    ctypedef struct dp_conn:
        dp_worker *w
        uint64_t conn_id
        void *py_handle
        tracker trk
        dp_session s
        pthread_mutex_t lock
        uint8_t cap_state
        uint8_t close_reason
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

    ctypedef int (*dp_secret_check)(void *ctx, const char *sql, size_t n) noexcept
    ctypedef int (*dp_append_large)(void *ctx, const RecordHead *h, const uint8_t *payload, size_t n) noexcept
    ctypedef struct dp_queue:
        int efd

    ctypedef struct dp:
        int nworkers
        dp_worker *workers
        dp_queue events
        dp_secret_check secret_check
        void *secret_ctx
        size_t secret_scan_max
        dp_append_large append_large

    int dp_init(dp *d, int nworkers, const int64_t *latency_bounds)
    void dp_destroy(dp *d)
    void dp_worker_run(dp_worker *w)
    dp_conn *dp_conn_new(uint64_t conn_id, int client_fd, int backend_fd, uint64_t max_packet_size)
    void dp_conn_free(dp_conn *c)
    int dp_conn_set_initial(dp_conn *c, const uint8_t *client_out, size_t n_out)
    int dp_post(dp_worker *w, int type, dp_conn *c, void *ptr, uint64_t arg)
    size_t dp_take_events(dp *d, dp_event **out)
    unsigned int trk_pending(const tracker *t)
    int dp_used_database(const uint8_t *p, size_t n, const uint8_t **name, size_t *name_len, int *quoted)
    int dp_may_carry_secret(const uint8_t *p, size_t n)
    int64_t dp_bench_commands(const uint8_t *cmd, size_t cmd_len, const uint8_t *resp, size_t resp_len, long iters,
                              ring *r, int deprecate_eof)


EV_CLOSED = DP_EV_CLOSED
EV_PARKED = DP_EV_PARKED
EV_CAPTURE_REFUSED = DP_EV_CAPTURE_REFUSED
EV_SYNC = DP_EV_SYNC
CAPTURE_STATES = {DP_CAP_OFF: None, DP_CAP_WAIT: "wait-txn", DP_CAP_ON: "on"}
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


def may_carry_secret(sql):
    """The workers' cheap pre-check of the secret filter (True for everything the full filter,
    fastproxy.capture.job.carries_secret, may flag): only these statements take the GIL."""
    cdef Py_buffer buf
    PyObject_GetBuffer(sql, &buf, PyBUF_SIMPLE)
    try:
        return bool(dp_may_carry_secret(<const uint8_t *>buf.buf, buf.len))
    finally:
        PyBuffer_Release(&buf)


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
        ns = dp_bench_commands(c, cn, p, pn, iters, r, deprecate_eof)
    if ns < 0:
        raise ValueError("the command and response did not run cleanly through the data plane")
    return ns


cdef int _secret_check(void *ctx, const char *sql, size_t n) noexcept with gil:
    # called by a worker (the GIL taken here) only when the C pre-check found a trigger word
    try:
        return 1 if (<object>ctx)(sql[:n]) else 0
    except BaseException:  # noqa: B036 - in doubt, the statement is not written
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


cdef class Connection:
    """Python's handle on a connection relayed by a worker. `owner` is the proxy's object for it."""

    cdef dp_conn *c
    cdef readonly object owner
    cdef readonly uint64_t conn_id
    cdef readonly int worker
    cdef readonly str close_reason
    cdef readonly str close_message

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
        dp_conn_free(self.c)
        self.c = NULL

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
            "user": user, "db": db, "capabilities": s.capabilities, "status_flags": s.status_flags,
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


cdef class DataPlane:
    """DataPlane(workers, latency_bounds_ns): `workers` threads, latency histogram bounds (metrics.py)."""

    cdef dp d
    cdef bint _inited
    cdef list _threads
    cdef dict _live              # address of the C connection -> Connection, while a worker holds it
    cdef list _assigned          # connections given to each worker and not yet closed
    cdef dp_capture *_cap
    cdef object _cap_ring        # the RingBuffer the workers append to (kept alive while installed)
    cdef object _secret_check
    cdef readonly int workers

    def __cinit__(self, int workers, latency_bounds_ns):
        cdef int64_t bounds[DP_LATENCY_BOUNDS]
        cdef int i
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
        if dp_init(&self.d, workers, bounds) != 0:
            dp_destroy(&self.d)
            raise OSError("cannot set up the data plane (epoll, eventfd or memory)")
        self._inited = True

    def __dealloc__(self):
        if self._inited and not self._threads:
            dp_destroy(&self.d)
        if self._cap != NULL:
            free(self._cap)

    # ---- threads -----------------------------------------------------------------------------
    def start(self):
        for i in range(self.workers):
            t = threading.Thread(target=self._run, args=(i,), name=f"fastproxy-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)

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
            bint deprecate_eof, uint16_t status_flags, str backend_addr, uint64_t max_packet_size, bint capture,
            bytes client_out=b"", bytes client_in=b"", bytes backend_in=b""):
        """Hand a connection whose handshake is done to the least busy worker. The worker owns both
        sockets from now on (and closes them). `client_out`: bytes still to send to the client (the
        server's OK); `client_in`/`backend_in`: bytes already read from either side after the handshake."""
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
            c.s.user = _cstr(user)
            c.s.db = _cstr(db)
            c.s.capabilities = capabilities
            c.s.status_flags = status_flags
            c.trk.deprecate_eof = deprecate_eof
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

    def resume(self, Connection conn, bint capture):
        """Give a parked connection back to its worker, captured or not."""
        cdef dp_conn *c = conn.c
        if c == NULL:
            return
        while dp_post(c.w, DP_MSG_RESUME, c, NULL, DP_CAP_ON if capture else DP_CAP_OFF) != 0:
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
    def capture_start(self, RingBuffer rb, int64_t start_ns, secret_check, size_t secret_scan_max):
        """Install a capture in every worker: new commands of captured connections go to `rb`;
        connections already open are captured from a command boundary, after they were parked
        (EV_PARKED) for Python to record their state. `secret_check(sql) -> bool` is the full
        secret filter, called (with the GIL) on the statements the C pre-check flags, over the
        first `secret_scan_max` bytes."""
        if self._cap != NULL:
            raise RuntimeError("a capture is already installed")
        self._secret_check = secret_check
        self.d.secret_check = _secret_check
        self.d.secret_ctx = <void *>secret_check
        self.d.secret_scan_max = secret_scan_max
        self.d.append_large = _append_large
        self._cap = <dp_capture *>calloc(1, sizeof(dp_capture))
        if self._cap == NULL:
            raise MemoryError()
        self._cap.ring = &rb._r
        self._cap.start_ns = start_ns
        self._cap.large_min = rb._large_min
        self._cap.large_ctx = <void *>rb
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
        self.d.secret_check = NULL
        self.d.secret_ctx = NULL
        self.d.append_large = NULL
        self._secret_check = None

    def capture_counts(self):
        if self._cap == NULL:
            return {"filtered": 0, "existing": 0, "waited_for_transaction": 0}
        return {"filtered": self._cap.filtered, "existing": self._cap.existing,
                "waited_for_transaction": self._cap.waited_txn}

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
