# Contracts of the packet layer, for other Cython modules to cimport.
from fastproxy._fingerprint cimport fp_state

cdef enum:
    HEAD_MAX = 1024          # bytes of each server packet kept for parsing (ERR messages are <= 512)
    MAX_PAYLOAD = 0xFFFFFF   # a physical payload of this size continues in the next packet

cdef enum Outcome:
    OUTCOME_OK = 0
    OUTCOME_ERR = 1
    OUTCOME_NO_RESPONSE = 2
    OUTCOME_UNKNOWN = 3

cdef enum TrackState:
    ST_IDLE = 0
    ST_FIRST = 1           # first packet of a (next) result: OK / ERR / LOCAL INFILE / column count
    ST_COLUMNS = 2         # column definitions of a result set
    ST_COLUMNS_EOF = 3     # EOF after column definitions (CLIENT_DEPRECATE_EOF off)
    ST_ROWS = 4            # rows until EOF/OK terminator or ERR
    ST_SIMPLE = 5          # one OK / EOF / ERR packet
    ST_STATISTICS = 6      # one plain-text packet
    ST_AUTH = 7            # COM_CHANGE_USER: auth switch / more data until OK or ERR
    ST_FIELD_LIST = 8      # column definitions until EOF / ERR
    ST_PREPARE_FIRST = 9
    ST_PREPARE_PARAMS = 10
    ST_PREPARE_PARAMS_EOF = 11
    ST_PREPARE_COLUMNS = 12
    ST_PREPARE_COLUMNS_EOF = 13


cdef class PacketFramer:
    cdef object _chunks         # deque of received data not yet consumed (bytes objects)
    cdef Py_ssize_t _avail      # bytes available across _chunks (after _offset)
    cdef Py_ssize_t _offset     # read offset into _chunks[0]
    # where _need() stopped, so that a large packet arriving in many chunks is scanned once
    cdef Py_ssize_t _scan_off   # offset (past the read position) of the physical header to look at
    cdef Py_ssize_t _scan_total # payload bytes of the logical packet counted so far
    cdef Py_ssize_t _scan_len   # length of the physical packet at _scan_off, -1 if its header is unread
    cdef public Py_ssize_t max_packet_size
    cdef Py_ssize_t _need(self) except -2
    cdef bytes _take(self, Py_ssize_t n)
    cdef int _take_into(self, Py_ssize_t n, list parts) except -1
    cdef int _byte_at(self, Py_ssize_t pos)


cdef class CommandResult:
    cdef public int cmd
    cdef public int outcome
    cdef public int err_code
    cdef public str sql_state
    cdef public str err_msg
    cdef public long long affected_rows
    cdef public long long last_insert_id
    cdef public long long rows
    cdef public int status_flags
    cdef public int warnings
    cdef public int result_sets
    cdef public int columns
    cdef public long long stmt_id
    cdef public int num_params
    cdef public int num_columns
    cdef public bint local_infile
    cdef public unsigned long long hash_ordered     # result fingerprint (fingerprint.h), 0 without a result set
    cdef public unsigned long long hash_unordered
    cdef public object tag


cdef class ResponseTracker:
    cdef public bint deprecate_eof
    cdef object _queue           # deque of (cmd, cursor, tag) waiting behind the current command
    cdef list _completed
    cdef CommandResult _cur
    cdef TrackState _state
    cdef long long _count        # column / param definitions still expected
    cdef long long _prep_columns
    cdef bint _cursor
    # packet scanning state (a physical packet may span feed() calls)
    cdef unsigned char _hdr[4]
    cdef int _hdr_have
    cdef Py_ssize_t _pkt_remaining
    cdef Py_ssize_t _pkt_len
    cdef bint _continuation     # current physical packet continues a 16 MiB logical packet
    cdef bint _prev_max
    cdef unsigned char _head[HEAD_MAX]
    cdef Py_ssize_t _head_len
    cdef public long long packets
    cdef long long _resp_packets
    cdef public long long unsolicited
    cdef public long long local_infile_requests
    cdef public object last_unsolicited_error
    # result fingerprint (fingerprint.h): the hook is the lines marked "fingerprint" in _packet.pyx
    cdef public bint fingerprints  # compute them (default True)
    cdef fp_state _fp
    cdef bint _fp_on               # the current packet may be a row: its bytes are hashed
    cdef bint _fp_row              # _on_packet found it is a row: fold it in at its last byte

    cdef int _on_packet(self) except -1
    cdef int _start_next(self) except -1
    cdef int _finish(self, int outcome) except -1
    cdef int _parse_ok(self, Py_ssize_t start) except -1
    cdef int _parse_eof(self) except -1
    cdef int _parse_err(self) except -1
    cdef int _end_of_result(self) except -1
    cdef int _prepare_columns(self) except -1
