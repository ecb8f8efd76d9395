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
  command's response is complete and how it ended. The proxy forwards the bytes untouched; the
  tracker only watches.
"""
from collections import deque

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from libc.string cimport memcpy

from fastproxy._fingerprint cimport (fp_init, fp_free, fp_reset, fp_row_begin, fp_row_bytes, fp_row_end,
                                     fp_result_end, fp_ordered, fp_unordered)
from fastproxy.errors import PacketTooLarge, ProtocolError



cdef enum:
    COM_QUIT = 0x01
    COM_QUERY = 0x03
    COM_FIELD_LIST = 0x04
    COM_STATISTICS = 0x09
    COM_PROCESS_INFO = 0x0A
    COM_CHANGE_USER = 0x11
    COM_STMT_PREPARE = 0x16
    COM_STMT_EXECUTE = 0x17
    COM_STMT_SEND_LONG_DATA = 0x18
    COM_STMT_CLOSE = 0x19
    COM_STMT_FETCH = 0x1C
    COM_STMT_BULK_EXECUTE = 0xFA
    STATUS_MORE_RESULTS = 0x0008
    STATUS_CURSOR_EXISTS = 0x0040


OK = OUTCOME_OK
ERR = OUTCOME_ERR
NO_RESPONSE = OUTCOME_NO_RESPONSE
UNKNOWN = OUTCOME_UNKNOWN
OUTCOME_NAMES = ("ok", "err", "no_response", "unknown")


cpdef bint expects_response(int cmd):
    """False for the commands the server never answers."""
    return not (cmd == COM_QUIT or cmd == COM_STMT_CLOSE or cmd == COM_STMT_SEND_LONG_DATA)


cpdef Py_ssize_t execute_flag_at(Py_ssize_t num_params):
    """Offset of new_params_bound_flag in a COM_STMT_EXECUTE payload of a statement with
    `num_params` (> 0) parameters: command, statement id, flags, iteration count, NULL bitmap."""
    return 10 + (num_params + 7) // 8


def execute_types_at(payload, dict num_params):
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


def build_packet(int seq, payload):
    """Frame `payload` as one or more packets (split at 16 MiB - 1), starting at sequence `seq`."""
    cdef Py_ssize_t n = len(payload), pos = 0, part
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


cdef inline long long _lenenc(const unsigned char* p, Py_ssize_t avail, Py_ssize_t* used):
    """Length-encoded integer; used[0] = bytes consumed (0 if truncated)."""
    cdef unsigned char first
    if avail < 1:
        used[0] = 0
        return 0
    first = p[0]
    if first < 0xFB:
        used[0] = 1
        return first
    if first == 0xFC and avail >= 3:
        used[0] = 3
        return p[1] | (p[2] << 8)
    if first == 0xFD and avail >= 4:
        used[0] = 4
        return p[1] | (p[2] << 8) | (p[3] << 16)
    if first == 0xFE and avail >= 9:
        used[0] = 9
        return (<long long>p[1] | (<long long>p[2] << 8) | (<long long>p[3] << 16) | (<long long>p[4] << 24)
                | (<long long>p[5] << 32) | (<long long>p[6] << 40) | (<long long>p[7] << 48) | (<long long>p[8] << 56))
    used[0] = 0
    return 0


cdef class ResponseTracker:
    """Follows the server's side of the command phase.

    begin(payload, tag) for every command the client sends (in order; pipelining is fine), feed()
    with every chunk the server sends. Both return how many commands are complete; take_completed()
    hands out their CommandResults (with the caller's tag) in command order.
    """

    def __cinit__(self, bint deprecate_eof=False):
        self.deprecate_eof = deprecate_eof
        self._queue = deque()
        self._completed = []
        self._cur = None
        self._state = ST_IDLE
        self._hdr_have = 0
        self._pkt_remaining = 0
        self._head_len = 0
        self._prev_max = False
        self._continuation = False
        self.fingerprints = True
        fp_init(&self._fp)

    def __dealloc__(self):
        fp_free(&self._fp)

    @property
    def pending(self):
        """Commands sent and not yet answered."""
        return (self._cur is not None) + len(self._queue)

    @property
    def idle(self):
        return self._cur is None and not self._queue

    @property
    def next_seq(self):
        """Sequence id the next server packet of the current response would carry."""
        if self._resp_packets == 0:
            return 1
        return (self._hdr[3] + 1) & 0xFF

    @property
    def at_packet_boundary(self):
        return self._hdr_have == 0 and self._pkt_remaining == 0

    def begin(self, payload, tag=None):
        """Register a command the client sent (payload starts with the command byte)."""
        cdef int cmd
        cdef bint cursor = False
        if len(payload) == 0:
            raise ProtocolError("empty command packet")
        cmd = payload[0]
        if cmd == COM_STMT_EXECUTE and len(payload) >= 6:
            cursor = payload[5] != 0
        self._queue.append((cmd, cursor, tag))
        if self._cur is None:
            self._start_next()
        return len(self._completed)

    def feed(self, data):
        """Scan server bytes; returns how many commands are complete and not yet taken."""
        cdef Py_buffer buf
        cdef const unsigned char* p
        cdef Py_ssize_t n, pos = 0, take, c
        PyObject_GetBuffer(data, &buf, PyBUF_SIMPLE)
        try:
            p = <const unsigned char*>buf.buf
            n = buf.len
            while True:
                if self._hdr_have < 4:
                    while self._hdr_have < 4 and pos < n:
                        self._hdr[self._hdr_have] = p[pos]
                        self._hdr_have += 1
                        pos += 1
                    if self._hdr_have < 4:
                        break
                    self._pkt_len = self._hdr[0] | (self._hdr[1] << 8) | (self._hdr[2] << 16)
                    self._pkt_remaining = self._pkt_len
                    self._continuation = self._prev_max
                    self._prev_max = self._pkt_len == MAX_PAYLOAD
                    self._head_len = 0
                    if not self._continuation:  # fingerprint: a packet in a row section may be a row
                        self._fp_on = self.fingerprints and self._state == ST_ROWS
                        if self._fp_on:
                            fp_row_begin(&self._fp, self._pkt_len if self._pkt_len < MAX_PAYLOAD else -1)
                take = min(self._pkt_remaining, n - pos)
                if take > 0:
                    if not self._continuation and self._head_len < HEAD_MAX:
                        c = min(take, HEAD_MAX - self._head_len)
                        memcpy(&self._head[self._head_len], p + pos, c)
                        self._head_len += c
                    if self._fp_on and fp_row_bytes(&self._fp, p + pos, take) < 0:  # fingerprint
                        raise MemoryError()
                    pos += take
                    self._pkt_remaining -= take
                if self._pkt_remaining:
                    break
                self._hdr_have = 0
                if not self._continuation:
                    self.packets += 1
                    self._resp_packets += 1
                    self._on_packet()
                if self._fp_row and not self._prev_max:  # fingerprint: the row's last byte has passed
                    fp_row_end(&self._fp)
                    self._fp_row = False
        finally:
            PyBuffer_Release(&buf)
        return len(self._completed)

    def take_completed(self):
        done = self._completed
        self._completed = []
        return done

    def abort(self, int outcome=OUTCOME_UNKNOWN):
        """The server side is gone: every pending command ends with `outcome`."""
        while self._cur is not None:
            self._finish(outcome)
        self._hdr_have = 0
        self._pkt_remaining = 0
        self._prev_max = False
        return len(self._completed)

    cdef int _start_next(self) except -1:
        cdef int cmd
        cdef bint cursor
        self._resp_packets = 0
        fp_reset(&self._fp)  # fingerprint
        while self._queue:
            cmd, cursor, tag = self._queue.popleft()
            self._cur = CommandResult(cmd, tag)
            self._cursor = cursor
            self._count = 0
            if cmd == COM_QUERY or cmd == COM_STMT_EXECUTE or cmd == COM_PROCESS_INFO or cmd == COM_STMT_BULK_EXECUTE:
                self._state = ST_FIRST
            elif cmd == COM_STMT_FETCH:
                self._state = ST_ROWS
            elif cmd == COM_STMT_PREPARE:
                self._state = ST_PREPARE_FIRST
            elif cmd == COM_FIELD_LIST:
                self._state = ST_FIELD_LIST
            elif cmd == COM_STATISTICS:
                self._state = ST_STATISTICS
            elif cmd == COM_CHANGE_USER:
                self._state = ST_AUTH
            elif not expects_response(cmd):
                self._cur.outcome = OUTCOME_NO_RESPONSE
                self._completed.append(self._cur)
                continue
            else:
                self._state = ST_SIMPLE
            return 0
        self._cur = None
        self._state = ST_IDLE
        return 0

    cdef int _finish(self, int outcome) except -1:
        self._cur.outcome = outcome
        self._cur.hash_ordered = fp_ordered(&self._fp)  # fingerprint
        self._cur.hash_unordered = fp_unordered(&self._fp)
        self._completed.append(self._cur)
        self._start_next()
        return 0

    cdef int _end_of_result(self) except -1:
        if self._cur.status_flags & STATUS_MORE_RESULTS:
            self._state = ST_FIRST
        else:
            self._finish(OUTCOME_OK)
        return 0

    cdef int _parse_ok(self, Py_ssize_t start) except -1:
        cdef Py_ssize_t used, pos = start
        cdef long long v
        v = _lenenc(&self._head[pos], self._head_len - pos, &used)
        if not used:
            return 0
        self._cur.affected_rows += v
        pos += used
        v = _lenenc(&self._head[pos], self._head_len - pos, &used)
        if not used:
            return 0
        if v:
            self._cur.last_insert_id = v
        pos += used
        if self._head_len >= pos + 4:
            self._cur.status_flags = self._head[pos] | (self._head[pos + 1] << 8)
            self._cur.warnings = self._head[pos + 2] | (self._head[pos + 3] << 8)
        return 0

    cdef int _parse_eof(self) except -1:
        if self._head_len >= 5:
            self._cur.warnings = self._head[1] | (self._head[2] << 8)
            self._cur.status_flags = self._head[3] | (self._head[4] << 8)
        return 0

    cdef int _parse_err(self) except -1:
        cdef CommandResult r = self._cur
        cdef bytes head = self._head[:self._head_len]
        if r is None:
            r = CommandResult(0, None)
        if len(head) >= 3:
            r.err_code = head[1] | (head[2] << 8)
        if len(head) >= 9 and head[3] == 0x23:  # '#' then the 5-byte SQL state
            r.sql_state = head[4:9].decode("ascii", "replace")
            r.err_msg = head[9:].decode("utf-8", "replace")
        else:
            r.err_msg = head[3:].decode("utf-8", "replace")
        if self._cur is None:
            self.last_unsolicited_error = r
        return 0

    cdef int _on_packet(self) except -1:
        cdef int first = self._head[0] if self._head_len else -1
        cdef TrackState st = self._state
        cdef Py_ssize_t used
        cdef long long v
        cdef bint terminator
        if st == ST_IDLE:
            # e.g. an ERR the server sends before closing an idle connection (KILL, shutdown)
            self.unsolicited += 1
            if first == 0xFF:
                self._parse_err()
            return 0
        if first == 0xFF and st != ST_STATISTICS:
            self._parse_err()
            return self._finish(OUTCOME_ERR)
        if st == ST_ROWS:
            if self.deprecate_eof:
                terminator = first == 0xFE and self._pkt_len < MAX_PAYLOAD
            else:
                terminator = first == 0xFE and self._pkt_len < 9
            if not terminator:
                self._cur.rows += 1
                self._fp_row = self._fp_on  # fingerprint
                return 0
            if self.deprecate_eof:
                self._parse_ok(1)
            else:
                self._parse_eof()
            # fingerprint: a result set ended (not a cursor's metadata: its rows come with the fetches)
            if self._fp_on and not (self._cursor and self._cur.status_flags & STATUS_CURSOR_EXISTS):
                fp_result_end(&self._fp)
            return self._end_of_result()
        if st == ST_FIRST:
            if first == 0x00:
                self._parse_ok(1)
                return self._end_of_result()
            if first == 0xFB:
                self._cur.local_infile = True  # the client now sends the file; OK/ERR follows
                self.local_infile_requests += 1
                return 0
            v = _lenenc(self._head, self._head_len, &used)
            if not used or v == 0:
                raise ProtocolError(f"bad column count in response to command {self._cur.cmd:#04x}")
            self._cur.result_sets += 1
            if self._cur.columns == 0:
                self._cur.columns = <int>v
            self._count = v
            self._state = ST_COLUMNS
            return 0
        if st == ST_COLUMNS:
            self._count -= 1
            if self._count == 0:
                self._state = ST_ROWS if self.deprecate_eof else ST_COLUMNS_EOF
            return 0
        if st == ST_COLUMNS_EOF:
            self._parse_eof()
            if self._cursor and self._cur.status_flags & STATUS_CURSOR_EXISTS:
                # COM_STMT_EXECUTE that opened a cursor: rows come later, through COM_STMT_FETCH
                return self._end_of_result()
            self._state = ST_ROWS
            return 0
        if st == ST_SIMPLE:
            if first == 0x00:
                self._parse_ok(1)
            elif first == 0xFE:
                if self._pkt_len < 9:
                    self._parse_eof()
                else:
                    self._parse_ok(1)
            return self._finish(OUTCOME_OK)
        if st == ST_STATISTICS:
            return self._finish(OUTCOME_OK)
        if st == ST_AUTH:
            if first == 0x00:
                self._parse_ok(1)
                return self._finish(OUTCOME_OK)
            return 0  # 0xFE auth switch / 0x01 more data: the client answers, the exchange goes on
        if st == ST_FIELD_LIST:
            if first == 0xFE and self._pkt_len < MAX_PAYLOAD:
                return self._finish(OUTCOME_OK)
            self._cur.columns += 1
            return 0
        if st == ST_PREPARE_FIRST:
            if first != 0x00 or self._head_len < 12:
                raise ProtocolError("bad COM_STMT_PREPARE response")
            self._cur.stmt_id = (<long long>self._head[1] | (<long long>self._head[2] << 8)
                                 | (<long long>self._head[3] << 16) | (<long long>self._head[4] << 24))
            self._cur.num_columns = self._head[5] | (self._head[6] << 8)
            self._cur.num_params = self._head[7] | (self._head[8] << 8)
            self._cur.warnings = self._head[10] | (self._head[11] << 8)
            self._prep_columns = self._cur.num_columns
            if self._cur.num_params:
                self._count = self._cur.num_params
                self._state = ST_PREPARE_PARAMS
                return 0
            return self._prepare_columns()
        if st == ST_PREPARE_PARAMS:
            self._count -= 1
            if self._count == 0:
                if self.deprecate_eof:
                    return self._prepare_columns()
                self._state = ST_PREPARE_PARAMS_EOF
            return 0
        if st == ST_PREPARE_PARAMS_EOF:
            return self._prepare_columns()
        if st == ST_PREPARE_COLUMNS:
            self._count -= 1
            if self._count == 0:
                if self.deprecate_eof:
                    return self._finish(OUTCOME_OK)
                self._state = ST_PREPARE_COLUMNS_EOF
            return 0
        if st == ST_PREPARE_COLUMNS_EOF:
            return self._finish(OUTCOME_OK)
        raise ProtocolError(f"response tracker in unknown state {st}")

    cdef int _prepare_columns(self) except -1:
        if self._prep_columns:
            self._count = self._prep_columns
            self._state = ST_PREPARE_COLUMNS
            return 0
        return self._finish(OUTCOME_OK)
