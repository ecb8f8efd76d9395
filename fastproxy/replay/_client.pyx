# cython: language_level=3
"""The replay client's per-command path in C (fastproxy/replay/client.py, ReplayClient's base class):
send a command, feed what the server sends to the response tracker, hand out the completed results.
Login, COM_CHANGE_USER exchanges, the replay's own row queries and LOCAL INFILE files stay in
client.py (`_data_received_slow`, `_send_infile`).

The attributes are ReplayClient's, set and read from Python as before.

Once logged in on plain TCP, a command goes straight to the socket with one send(2)
(`write`): no event-loop bookkeeping per command. Whatever the socket does not take at once goes to
the transport, and from then on everything does, until the transport's buffer is empty again, so
the bytes stay in order. The socket is written through a duplicate of the transport's descriptor
(`attach_socket`), closed when the connection is: a number the event loop has closed and another
socket has reused is never written to.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.errno cimport EINTR, errno
from posix.unistd cimport close as c_close

cdef extern from "<sys/socket.h>" nogil:
    ssize_t c_send "send"(int fd, const void *buf, size_t n, int flags)
    int MSG_NOSIGNAL

from fastproxy._packet cimport CommandResult, ResponseTracker, build_packet

import os

from fastproxy.errors import ProtocolError


cdef class Internal:
    """Tag of the client's own commands: their result resolves a future instead of on_result."""

    cdef public object future

    def __init__(self, future):
        self.future = future


cdef class ClientCore:
    # the attributes are declared in _client.pxd (the engine's C chain reads them)

    def __cinit__(self, *args, **kwargs):
        self._fd = -1

    def __dealloc__(self):
        if self._fd >= 0:
            c_close(self._fd)

    cpdef send(self, payload, tag=None):
        """Send one command; on_result(self, result) fires when its response is complete."""
        if tag is None and self.out_state == 1:  # the replayed command itself (not a pin, a re-prepare...)
            self.out_state = 2
        self.write(build_packet(0, payload))
        if self.tracker.begin(payload, tag):
            self._deliver_c()

    def send_only(self, payload):
        """Send a command the server never answers (COM_STMT_CLOSE, COM_STMT_SEND_LONG_DATA)."""
        if self.out_state == 1:  # the replayed command itself
            self.out_state = 2
        self.write(build_packet(0, payload))

    cpdef write(self, bytes data):
        """Send bytes after login: straight to the socket when nothing waits in the transport."""
        if data is None:
            raise TypeError("write() takes bytes, not None")
        cdef Py_ssize_t size = PyBytes_GET_SIZE(data), n = 0
        if self._corked is not None:
            self._corked += data
            return
        if self.out_state == 2:
            self.out_state = 0
            self.out_flush(self.out_owner, self.out_track)
        if self._fd < 0 or (self._queued and self.transport.get_write_buffer_size()):
            self.transport.write(data)
            return
        self._queued = False
        while True:
            n = c_send(self._fd, PyBytes_AS_STRING(data), size, MSG_NOSIGNAL)  # a closed peer: EPIPE, not SIGPIPE
            if n >= 0 or errno != EINTR:
                break
        if n == size:
            return
        # a full socket buffer (or an error: the transport's own write reports it as it always did)
        self._queued = True
        self.transport.write(data[n:] if n > 0 else data)

    cpdef bint cork(self) except -1:
        """Hold what is written until `uncork`: commands sent back to back (a pin's SET and its
        command, pipelined commands) leave in one system call. False if it was corked already (the
        one who corked first uncorks)."""
        if self._corked is None:
            self._corked = bytearray()
            return True
        return False

    cpdef uncork(self):
        corked, self._corked = self._corked, None
        if corked:
            self.write(bytes(corked))

    def attach_socket(self):
        """Write commands straight to the socket from now on (plain TCP, logged in)."""
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is not None and self._fd < 0:
            self._fd = os.dup(sock.fileno())

    def detach_socket(self):
        """Back to the transport for everything (closing, or TLS)."""
        if self._fd >= 0:
            c_close(self._fd)
            self._fd = -1

    def _deliver(self):
        self._deliver_c()

    cdef int _deliver_c(self) except -1:
        for result in self.tracker.take_completed():
            tag = (<CommandResult>result).tag
            if type(tag) is Internal:
                future = (<Internal>tag).future
                if not future.done():
                    future.set_result(result)
                continue
            self.on_result(self, result)
        return 0

    def data_received(self, data):
        if self._rows is not None or not self.ready or self._exchange:
            self._data_received_slow(data)
            return
        try:
            n = self.tracker.feed(data)
        except ProtocolError as e:
            self.close()
            self.on_lost(self, e)
            return
        requests = self.tracker._t.local_infile_requests
        if requests != self._infile_seen:
            self._infile_seen = requests
            self._send_infile()
        if n > 1:
            # several answers in one read (pipelined commands): the commands they let go leave
            # together, in one send
            corked = self.cork()
            try:
                self._deliver_c()
            finally:
                if corked:
                    self.uncork()
        elif n:
            self._deliver_c()
