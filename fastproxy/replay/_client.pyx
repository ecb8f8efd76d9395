# cython: language_level=3
"""The replay client's per-command path in C (fastproxy/replay/client.py, ReplayClient's base class):
send a command, feed what the server sends to the response tracker, hand out the completed results.
Login, COM_CHANGE_USER exchanges, the replay's own row queries and LOCAL INFILE files stay in
client.py (`_data_received_slow`, `_send_infile`).

The attributes are ReplayClient's, set and read from Python as before.
"""
from fastproxy._packet cimport CommandResult, ResponseTracker, build_packet

from fastproxy.errors import ProtocolError


cdef class Internal:
    """Tag of the client's own commands: their result resolves a future instead of on_result."""

    cdef public object future

    def __init__(self, future):
        self.future = future


cdef class ClientCore:
    # the attributes are declared in _client.pxd (the engine's C chain reads them)

    cpdef send(self, payload, tag=None):
        """Send one command; on_result(self, result) fires when its response is complete."""
        self.transport.write(build_packet(0, payload))
        if self.tracker.begin(payload, tag):
            self._deliver_c()

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
        if n:
            self._deliver_c()
