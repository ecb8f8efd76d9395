# cython: language_level=3
from libc.stdint cimport int64_t

from fastproxy._packet cimport CommandResult
from fastproxy.replay._causal cimport Planner
from fastproxy.replay._checkpoint cimport CheckpointHooks
from fastproxy.replay._client cimport ClientCore
from fastproxy.replay._conn cimport Conn
from fastproxy.replay._scheduler cimport Scheduler, Ticket


cdef class StatsCore:
    cdef public int64_t read
    cdef public int64_t replayed
    cdef public int64_t failed
    cdef public int64_t same_errors
    cdef public int64_t fixed
    cdef public int64_t skipped
    cdef public int64_t peak_queued
    cdef public int64_t captured_ns
    cdef public int64_t replayed_ns
    cdef public dict per_second
    cdef public int64_t causal_waits
    cdef public int64_t causal_wait_ns
    cdef public int64_t pipelined
    cdef public int64_t pipelined_in_txn


cdef class EngineCore:
    # False: every command takes Replayer's Python path (the reference; tests run both)
    cdef public bint FAST_PATH
    # commands a connection may have in flight (--pipeline; 1: each waits for the previous one's response)
    cdef public int pipeline
    cdef public CheckpointHooks checkpoint  # fastproxy.replay.checkpoint.Checkpoint or None (hooks called in C)
    cdef public object observer  # callback(conn, rec, result, now) per replayed command: the verdict (fastproxy/report)
    cdef public Planner planner  # causal.Planner: note() and its order are called from C
    cdef public StatsCore stats
    cdef public object opt
    cdef public list _released  # parked connections whose requirement a completion met
    cdef public bint _draining
    cdef public int64_t queued  # records read and not yet finished
    cdef public int64_t _start_mono  # monotonic ns the replay's schedule starts at
    cdef public int64_t capture_start_ns  # the capture's start (its commands' times are relative to it)
    cdef public Scheduler heap  # connections waiting for their head command's time, by due time
    cdef public object _timer  # the loop's timer for the earliest of them (asyncio.TimerHandle) or None
    cdef public int64_t _timer_due
    cdef public dict conns  # captured connection id -> Conn
    cdef public dict by_idx  # Conn.idx -> Conn (the keys causal order parks and releases)
    cdef public int64_t _read_ns  # the latest end time read (KILLs wait for their target's)
    cdef public int64_t first_command_ns  # captured span, for the captured QPS
    cdef public int64_t last_command_ns

    cdef bint _result_fast(self, client, CommandResult result) except -1
    cdef int _compare_now_c(self, conn, rec, CommandResult result, int64_t now) except -1
    cdef bint _consume_c(self, Conn conn) except -1
    cdef int _finish_c(self, Conn conn, Ticket ticket) except -1
    cdef int _schedule_c(self, Conn conn) except -1
    cdef int _drain_released_c(self) except -1
    cdef int _gate_c(self, Conn conn, int64_t now) except -1
    cdef bint _fire_c(self, Conn conn, int64_t now) except -1
    cdef int _started_c(self, Conn conn, rec, int64_t now) except -1
    cdef object _remap_c(self, Conn conn, captured_id, replay_id, payload)
    cdef int _send_c(self, Conn conn, payload) except -1
    cdef int _send_pinned_c(self, Conn conn, payload, int flags) except -1
    cdef int _fill_pipeline_c(self, Conn conn, int64_t now) except -1
    cdef int _fill_c(self, Conn conn, ClientCore client, int64_t now) except -1
    cdef bint _pipelinable_c(self, Conn conn, Py_ssize_t i, bint head) except -1
    cdef int _keep_and_send_c(self, Conn conn, payload, prefix, int flags) except -1
