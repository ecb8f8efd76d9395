# cython: language_level=3
from fastproxy._packet cimport ResponseTracker

# the checkpoint's: journal the `S` entries of `track` (fastproxy/replay/_checkpoint.pyx)
ctypedef int (*out_fn)(object owner, object track) except -1


cdef class ClientCore:
    cdef public object transport
    cdef public ResponseTracker tracker
    cdef public object on_result  # callback(client, CommandResult) per command sent with `send`
    cdef public bint ready  # logged in: what the server sends is command responses
    cdef public bint _exchange  # a COM_CHANGE_USER exchange reads packets itself (as login does)
    cdef public object _rows  # the reader of a query_rows in progress, or None
    cdef public long long _infile_seen  # LOCAL INFILE requests of the server answered so far
    # read by the engine's C chain for every command (set from Python as before)
    cdef public object owner  # the engine's Conn this client replays
    cdef public bint closed
    cdef public object infiles  # LOCAL INFILE files for the command in flight (client.py)
    cdef public object connection_id  # the replay session's thread id on the server

    # a duplicate of the socket's descriptor, written by `write` (-1: the transport writes);
    # _queued: something went to the transport since, which must leave first
    cdef int _fd
    cdef bint _queued
    cdef bytearray _corked  # between cork() and uncork(): what is written waits here (else None)
    # the checkpoint's entries of this connection's command (`out_track`): journaled as sent when its
    # bytes go to the socket, not before (a kill in between must not count it as run). out_state: 0
    # none, 1 waiting for the command's own send, 2 in what the next write hands to the socket
    cdef object out_track
    cdef object out_owner
    cdef out_fn out_flush
    cdef int out_state

    cpdef send(self, payload, tag=*)
    cpdef write(self, bytes data)
    cpdef bint cork(self) except -1
    cpdef uncork(self)
    cdef int _deliver_c(self) except -1
