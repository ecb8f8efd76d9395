# cython: language_level=3
"""MySQL packet framing and the response state machine, shared by the proxy and the replay client.

Spec: https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_basic_packets.html
      https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_command_phase.html

Two pieces:
- PacketFramer cuts a byte stream into whole logical packets (16 MiB continuations joined). It
  keeps the received chunks and hands out memoryview slices of them: a packet that lies inside one
  chunk is never copied.
- ResponseTracker follows server responses packet by packet *without* keeping them: it scans the
  4-byte headers, copies at most HEAD_MAX bytes of each packet for parsing, and says when each
  command's response is complete and how it ended. It wraps the C tracker of
  fastproxy/csrc/tracker.c, the one the data plane runs per connection: one state machine for the
  proxy and the replay client.
"""
from collections import deque

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.string cimport memcpy

from fastproxy.errors import PacketTooLarge, ProtocolError



OK = OUTCOME_OK
ERR = OUTCOME_ERR
NO_RESPONSE = OUTCOME_NO_RESPONSE
UNKNOWN = OUTCOME_UNKNOWN
BACKEND_LOST = OUTCOME_BACKEND_LOST
OUTCOME_NAMES = ("ok", "err", "no_response", "unknown", "backend_lost")


cpdef bint expects_response(int cmd):
    """False for the commands the server never answers."""
    return trk_expects_response(cmd)


cpdef Py_ssize_t execute_flag_at(Py_ssize_t num_params):
    """Offset of new_params_bound_flag in a COM_STMT_EXECUTE payload of a statement with
    `num_params` (> 0) parameters: command, statement id, flags, iteration count, NULL bitmap."""
    return 10 + (num_params + 7) // 8


cpdef Py_ssize_t execute_types_at(payload, dict num_params) except -1:
    """Offset of the parameter types in a COM_STMT_EXECUTE payload that binds new ones
    (new_params_bound_flag = 1), else 0. `num_params` maps statement id -> number of parameters.
    On the proxy's per-command path, hence here and not in Python."""
    cdef Py_buffer buf
    cdef const unsigned char* p
    cdef Py_ssize_t n, flag_at, size
    cdef unsigned long stmt_id
    PyObject_GetBuffer(payload, &buf, PyBUF_SIMPLE)
    try:
        p = <const unsigned char*>buf.buf
        size = buf.len
        if size < 11:
            return 0
        stmt_id = p[1] | (p[2] << 8) | (p[3] << 16) | (<unsigned long>p[4] << 24)
        count = num_params.get(stmt_id)
        if not count:
            return 0
        n = count
        flag_at = execute_flag_at(n)
        if size <= flag_at or p[flag_at] != 1:
            return 0
        return flag_at + 1
    finally:
        PyBuffer_Release(&buf)


cpdef uint32_t stmt_id_of(bytes payload) except? 0xFFFFFFFF:
    """The statement id of a COM_STMT_* command (bytes 1-4, little-endian; what there is of them in a
    shorter one, as int.from_bytes(payload[1:5]) reads it), without slicing."""
    cdef Py_ssize_t i, n = min(len(payload), 5)
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(payload)
    cdef uint32_t v = 0
    for i in range(n - 1, 0, -1):
        v = (v << 8) | p[i]
    return v


cpdef bytes with_stmt_id(bytes payload, uint32_t stmt_id):
    """`payload` with another statement id in bytes 1-4: one copy (it was three slices and two joins)."""
    if len(payload) < 5:
        return payload[:1] + stmt_id.to_bytes(4, "little")
    cdef bytes out = PyBytes_FromStringAndSize(PyBytes_AS_STRING(payload), len(payload))
    cdef unsigned char *p = <unsigned char *>PyBytes_AS_STRING(out)  # not yet seen by anyone: ours to fill
    p[1] = stmt_id & 0xFF
    p[2] = (stmt_id >> 8) & 0xFF
    p[3] = (stmt_id >> 16) & 0xFF
    p[4] = stmt_id >> 24
    return out


cdef inline int _byte_at(payload, Py_ssize_t i) except -1:
    """payload[i] (i < len): read in place from bytes, what the replay sends; else by indexing."""
    if type(payload) is bytes:
        return (<const unsigned char *>PyBytes_AS_STRING(payload))[i]
    return payload[i]


cpdef bytes build_packet(int seq, payload):
    """Frame `payload` as one or more packets (split at 16 MiB - 1), starting at sequence `seq`."""
    cdef Py_ssize_t n = len(payload), pos = 0, part
    cdef bytes one
    cdef unsigned char *p
    if type(payload) is bytes and n < MAX_PAYLOAD:  # one packet (every command the replayer sends): one copy
        one = PyBytes_FromStringAndSize(NULL, n + 4)
        p = <unsigned char *>PyBytes_AS_STRING(one)  # not yet seen by anyone: ours to fill
        p[0] = n & 0xFF
        p[1] = (n >> 8) & 0xFF
        p[2] = n >> 16
        p[3] = seq & 0xFF
        memcpy(p + 4, PyBytes_AS_STRING(payload), n)
        return one
    out = bytearray()
    while True:
        part = min(n - pos, MAX_PAYLOAD)
        out += bytes((part & 0xFF, (part >> 8) & 0xFF, part >> 16, seq & 0xFF))
        out += payload[pos:pos + part]
        pos += part
        seq += 1
        if part < MAX_PAYLOAD:
            return bytes(out)


cdef class PacketFramer:
    """Whole logical packets out of a byte stream: feed(data), then next_packet() until None."""

    def __cinit__(self, Py_ssize_t max_packet_size=1 << 30):
        self._chunks = deque()
        self._avail = 0
        self._offset = 0
        self.max_packet_size = max_packet_size
        self._scan_off = 0
        self._scan_total = 0
        self._scan_len = -1

    @property
    def buffered(self):
        return self._avail

    def feed(self, data):
        if len(data):
            self._chunks.append(data if type(data) is bytes else bytes(data))
            self._avail += len(data)

    cdef int _byte_at(self, Py_ssize_t pos):
        """Byte `pos` past the read offset, across chunks (the caller checked _avail)."""
        cdef Py_ssize_t i = 0
        cdef bytes chunk
        pos += self._offset
        while True:
            chunk = <bytes>self._chunks[i]
            if pos < len(chunk):
                return (<const unsigned char*><char*>chunk)[pos]
            pos -= len(chunk)
            i += 1

    cdef Py_ssize_t _need(self) except -2:
        """Bytes (headers included) of the next logical packet, or -1 if not all here yet. Resumes
        where the last call stopped: each physical header is read once, however many chunks."""
        cdef Py_ssize_t off = self._scan_off, length
        while True:
            if self._scan_len < 0:
                if self._avail < off + 4:
                    self._scan_off = off
                    return -1
                length = self._byte_at(off) | (self._byte_at(off + 1) << 8) | (self._byte_at(off + 2) << 16)
                self._scan_total += length
                if self._scan_total > self.max_packet_size:
                    raise PacketTooLarge(f"packet of at least {self._scan_total} bytes exceeds the limit of "
                                         f"{self.max_packet_size}")
                self._scan_len = length
            length = self._scan_len
            if self._avail < off + 4 + length:
                self._scan_off = off
                return -1
            if length < MAX_PAYLOAD:
                self._scan_off = 0
                self._scan_total = 0
                self._scan_len = -1
                return off + 4 + length
            off += 4 + length
            self._scan_len = -1

    cdef int _take_into(self, Py_ssize_t n, list parts) except -1:
        """Consume n bytes, appending views of them to `parts` (no copy yet)."""
        cdef bytes chunk
        cdef Py_ssize_t k
        while n > 0:
            chunk = <bytes>self._chunks[0]
            k = min(n, len(chunk) - self._offset)
            parts.append(memoryview(chunk)[self._offset:self._offset + k])
            n -= k
            self._avail -= k
            self._offset += k
            if self._offset == len(chunk):
                self._chunks.popleft()
                self._offset = 0
        return 0

    cdef bytes _take(self, Py_ssize_t n):
        # Only used when a packet spans chunks: one join.
        cdef list parts = []
        self._take_into(n, parts)
        return b"".join(parts)

    def next_packet(self):
        """(sequence id, payload) of the next complete packet, or None. The payload is a memoryview
        into the received data when the packet arrived inside one chunk (no copy), else bytes."""
        cdef Py_ssize_t need = self._need(), length, pos
        cdef bytes chunk
        cdef int seq
        if need < 0:
            return None
        seq = self._byte_at(3)
        chunk = <bytes>self._chunks[0]
        if need <= len(chunk) - self._offset and need - 4 < MAX_PAYLOAD:
            pos = self._offset
            payload = memoryview(chunk)[pos + 4:pos + need]
            self._offset += need
            self._avail -= need
            if self._offset == len(chunk):
                self._chunks.popleft()
                self._offset = 0
            return seq, payload
        # spans chunks, or 16 MiB continuations: the payload parts are joined with a single copy
        parts = []
        pos = 0
        while pos < need:
            header = self._take(4)
            length = header[0] | (header[1] << 8) | (header[2] << 16)
            self._take_into(length, parts)
            pos += 4 + length
        return seq, b"".join(parts)

    def take_all(self):
        """Everything buffered, as bytes (e.g. to forward raw once framing is no longer needed)."""
        self._scan_off = 0
        self._scan_total = 0
        self._scan_len = -1
        return self._take(self._avail)


cdef class CommandResult:
    """How one command's response ended (filled in by the ResponseTracker)."""

    def __cinit__(self, int cmd=0, object tag=None):
        self.cmd = cmd
        self.tag = tag
        self.outcome = OUTCOME_UNKNOWN
        self.err_code = 0
        self.sql_state = ""
        self.err_msg = ""
        self.stmt_id = -1
        self.schema = None

    @property
    def ok(self):
        return self.outcome == OUTCOME_OK or self.outcome == OUTCOME_NO_RESPONSE

    @property
    def outcome_name(self):
        return OUTCOME_NAMES[self.outcome]

    def __repr__(self):
        if self.outcome == OUTCOME_ERR:
            detail = f"err={self.err_code} ({self.sql_state}) {self.err_msg!r}"
        else:
            detail = f"affected={self.affected_rows} rows={self.rows} result_sets={self.result_sets}"
        return f"<CommandResult cmd={self.cmd:#04x} {self.outcome_name} {detail} status={self.status_flags:#06x}>"


cdef void _on_result(void *ctx, const trk_result *r) noexcept:
    (<ResponseTracker>ctx)._deliver(r)


cdef class ResponseTracker:
    """Follows the server's side of the command phase.

    begin(payload, tag) for every command the client sends (in order; pipelining is fine), feed()
    with every chunk the server sends. Both return how many commands are complete; take_completed()
    hands out their CommandResults (with the caller's tag) in command order. The state machine is
    the C one of fastproxy/csrc/tracker.c, which the data plane runs per connection.
    """

    def __cinit__(self, bint deprecate_eof=False):
        trk_init(&self._t, deprecate_eof, _on_result, <void *>self)
        self._tags = []
        self._tags_head = 0
        self._completed = []
        self.last_unsolicited_error = None

    def __dealloc__(self):
        trk_free(&self._t)

    @property
    def deprecate_eof(self):
        return bool(self._t.deprecate_eof)

    @deprecate_eof.setter
    def deprecate_eof(self, value):
        self._t.deprecate_eof = 1 if value else 0

    @property
    def fingerprints(self):
        """Whether result fingerprints are computed (fastproxy/csrc/fingerprint.h); on by default."""
        return bool(self._t.fingerprints)

    @fingerprints.setter
    def fingerprints(self, value):
        self._t.fingerprints = 1 if value else 0

    @property
    def session_track(self):
        """CLIENT_SESSION_TRACK was negotiated: OK packets carry session state (CommandResult.schema)."""
        return bool(self._t.session_track)

    @session_track.setter
    def session_track(self, value):
        self._t.session_track = 1 if value else 0

    @property
    def packets(self):
        return self._t.packets

    @property
    def unsolicited(self):
        return self._t.unsolicited

    @property
    def local_infile_requests(self):
        return self._t.local_infile_requests

    @property
    def pending(self):
        """Commands sent and not yet answered."""
        return trk_pending(&self._t)

    @property
    def idle(self):
        return bool(trk_idle(&self._t))

    @property
    def next_seq(self):
        """Sequence id the next server packet of the current response would carry."""
        return trk_next_seq(&self._t)

    @property
    def at_packet_boundary(self):
        return bool(trk_at_packet_boundary(&self._t))

    cdef object _pop_tag(self):
        """The oldest command's tag (IndexError if none, as from deque.popleft)."""
        cdef list tags = self._tags
        cdef Py_ssize_t head = self._tags_head
        tag = tags[head]
        tags[head] = None
        head += 1
        if head == len(tags):
            del tags[:]
            head = 0
        elif head >= 64 and 2 * head >= len(tags):  # commands pipelined: drop the taken ones now and then
            del tags[:head]
            head = 0
        self._tags_head = head
        return tag

    cdef void _deliver(self, const trk_result *r) noexcept:
        cdef CommandResult res = CommandResult.__new__(CommandResult)  # no argument tuple to build
        res.cmd = r.cmd
        res.outcome = r.outcome
        res.affected_rows = r.affected_rows
        res.last_insert_id = r.last_insert_id
        res.rows = r.rows
        res.status_flags = r.status_flags
        res.warnings = r.warnings
        res.result_sets = r.result_sets
        res.columns = r.columns
        res.stmt_id = r.stmt_id
        res.num_params = r.num_params
        res.num_columns = r.num_columns
        res.local_infile = r.local_infile
        res.hash_ordered = r.hash_ordered
        res.hash_unordered = r.hash_unordered
        if r.schema_set:
            res.schema = r.schema[:r.schema_len].decode("utf-8", "replace")
        res.schema_cut = r.schema_cut
        if r.outcome == OUTCOME_ERR:
            res.err_code = r.err_code
            res.sql_state = (<char *>r.sql_state).decode("ascii", "replace")
            res.err_msg = r.err_msg[:r.err_msg_len].decode("utf-8", "replace")
        if r.unsolicited:
            self.last_unsolicited_error = res
            return
        res.tag = self._pop_tag()
        self._completed.append(res)

    cpdef Py_ssize_t begin(self, payload, tag=None) except -1:
        """Register a command the client sent (payload starts with the command byte)."""
        cdef int cmd
        cdef bint cursor = False
        cdef Py_ssize_t n = len(payload)
        if n == 0:
            raise ProtocolError("empty command packet")
        cmd = _byte_at(payload, 0)
        if cmd == COM_STMT_EXECUTE and n >= 6:
            cursor = _byte_at(payload, 5) != 0
        self._tags.append(tag)
        if trk_begin(&self._t, cmd, cursor) < 0:
            self._tags.pop()
            raise MemoryError("response tracker queue")
        return len(self._completed)

    cpdef Py_ssize_t feed(self, data) except -1:
        """Scan server bytes; returns how many commands are complete and not yet taken."""
        cdef Py_buffer buf
        cdef int rc
        if type(data) is bytes:  # what the event loop hands over: no buffer to take and release
            rc = trk_feed(&self._t, <const unsigned char *>PyBytes_AS_STRING(data), len(<bytes>data))
        else:
            PyObject_GetBuffer(data, &buf, PyBUF_SIMPLE)
            try:
                rc = trk_feed(&self._t, <const unsigned char *>buf.buf, buf.len)
            finally:
                PyBuffer_Release(&buf)
        if rc < 0:
            raise ProtocolError(self._t.error.decode("ascii", "replace"))
        return len(self._completed)

    cpdef list take_completed(self):
        done = self._completed
        self._completed = []
        return done

    def abort(self, int outcome=OUTCOME_UNKNOWN):
        """The server side is gone: every pending command ends with `outcome`."""
        trk_abort(&self._t, outcome)
        return len(self._completed)
