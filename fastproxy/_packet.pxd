# Contracts of the packet layer, for other Cython modules to cimport.

from libc.stdint cimport uint32_t

cdef enum:
    HEAD_MAX = 1024          # bytes of each server packet kept for parsing (ERR messages are <= 512)
    MAX_PAYLOAD = 0xFFFFFF   # a physical payload of this size continues in the next packet

cdef enum Outcome:
    OUTCOME_OK = 0
    OUTCOME_ERR = 1
    OUTCOME_NO_RESPONSE = 2
    OUTCOME_UNKNOWN = 3
    OUTCOME_BACKEND_LOST = 4  # the server side died before the response completed

cdef extern from "tracker.h":
    ctypedef struct trk_result:
        long long affected_rows
        long long last_insert_id
        long long rows
        long long stmt_id
        int result_sets
        int columns
        unsigned short status_flags
        unsigned short warnings
        unsigned short err_code
        unsigned short num_params
        unsigned short num_columns
        unsigned char cmd
        unsigned char outcome
        unsigned char local_infile
        unsigned char unsolicited
        char sql_state[6]
        const char *err_msg
        unsigned int err_msg_len
        unsigned long long hash_ordered
        unsigned long long hash_unordered
        unsigned char schema_set
        unsigned char schema_cut
        unsigned short schema_len
        char schema[257]
    ctypedef void (*trk_callback)(void *ctx, const trk_result *r) noexcept
    ctypedef struct tracker:
        unsigned char deprecate_eof
        unsigned char session_track
        unsigned char hdr[4]
        long long packets
        long long unsolicited
        long long local_infile_requests
        char error[112]
        unsigned char fingerprints
    void trk_init(tracker *t, int deprecate_eof, trk_callback cb, void *ctx)
    void trk_free(tracker *t)
    int trk_begin(tracker *t, unsigned char cmd, int cursor)
    int trk_feed(tracker *t, const unsigned char *p, size_t n)
    void trk_abort(tracker *t, int outcome)
    unsigned int trk_pending(const tracker *t)
    int trk_idle(const tracker *t)
    int trk_at_packet_boundary(const tracker *t)
    int trk_next_seq(const tracker *t)
    int trk_expects_response(int cmd)


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
    # SESSION_TRACK_SCHEMA from an OK packet (CLIENT_SESSION_TRACK): the new current database
    # (None: no change reported; "": none selected); schema_cut: a state change was flagged but the
    # OK packet was longer than HEAD_MAX, so what changed is unknown
    cdef public object schema
    cdef public bint schema_cut


cdef extern from "mysql_constants.h":  # generated from fastproxy/constants.py by setup.py
    enum:
        COM_STMT_EXECUTE
        COM_STMT_SEND_LONG_DATA
        COM_STMT_CLOSE
        COM_STMT_RESET
        COM_STMT_FETCH


cdef inline bint names_statement(int cmd) noexcept:
    """A COM_STMT_* command whose bytes 1-4 are a prepared statement's id (stmt_id_of reads them)."""
    return (cmd == COM_STMT_EXECUTE or cmd == COM_STMT_SEND_LONG_DATA or cmd == COM_STMT_CLOSE
            or cmd == COM_STMT_RESET or cmd == COM_STMT_FETCH)


cpdef bytes build_packet(int seq, payload)
cpdef uint32_t stmt_id_of(bytes payload) except? 0xFFFFFFFF
cpdef Py_ssize_t execute_flag_at(Py_ssize_t num_params)
cpdef Py_ssize_t execute_types_at(payload, dict num_params) except -1
cpdef bytes with_stmt_id(bytes payload, uint32_t stmt_id)


cdef class ResponseTracker:
    # The C tracker (fastproxy/csrc/tracker.c, shared with the data plane) does the work; this
    # wrapper keeps each command's tag and hands out CommandResult objects.
    cdef tracker _t
    cdef list _tags              # the tag of every command begun and not yet completed, from _tags_head on
    cdef Py_ssize_t _tags_head   # (a list and an index: no deque method calls per command)
    cdef list _completed
    cdef public object last_unsolicited_error

    cdef object _pop_tag(self)
    cdef void _deliver(self, const trk_result *r) noexcept
    # the replay client's per-command calls (fastproxy/replay/_client.pyx), without a Python call
    cpdef Py_ssize_t begin(self, payload, tag=*) except -1
    cpdef Py_ssize_t feed(self, data) except -1
    cpdef list take_completed(self)
