# cython: language_level=3, cdivision=False
"""The verdict's per-command hook in C (fastproxy/report/observe.py, CaptureObserver): the timeline's
counters, the failure test, and a command that came out as captured (its latency recorded) without
a Python frame of its own. Anything else — a mismatch, a value out of the 64-bit ranges, an input
that is not a plain Record — goes to the Python reference, CaptureObserver.observe, before anything
is counted (tests/test_replay_observer.py drives both with the same commands).

cdivision is off on purpose: seconds before the capture's origin floor-divide as in Python.
"""
from fastproxy._packet cimport OUTCOME_ERR, OUTCOME_OK, CommandResult, names_statement, stmt_id_of
from fastproxy.capture.record_fields cimport R_END, R_ERR_CODE, R_OUTCOME, R_PAYLOAD, R_START
from fastproxy.replay._conn cimport Conn
from fastproxy.replay._engine cimport EngineCore
from fastproxy.report._compare cimport same_as_captured_c
from fastproxy.report._latency cimport LatencyTable
from fastproxy.report._verdict cimport VerdictCore

from fastproxy.capture.record import Record

cdef extern from "mysql_constants.h":
    enum:
        COM_QUERY
        COM_STMT_PREPARE

cdef object _Record = Record
cdef long long SECOND = 1_000_000_000


cdef inline int _bump(dict series, key) except -1:
    series[key] = series.get(key, 0) + 1
    return 0


cdef class TimelineCore:
    """The base of observe.Timeline (fields: _observe.pxd)."""


cdef class ObserverCore:
    """The base of CaptureObserver; its attributes are CaptureObserver's (set from Python as before;
    declared in _observe.pxd)."""

    cpdef replay_second(self, now):
        """The replay's second at `now` (monotonic ns); a resumed replay's follow the stopped run's."""
        cdef long long c_now, start_mono = self.engine._start_mono
        if type(now) is int:
            try:
                c_now = now
            except OverflowError:
                c_now = 1LL << 62  # not fits62: Python's ints below
            if fits62(c_now) and fits62(start_mono):
                return self.second_offset + ((c_now - start_mono if c_now > start_mono else 0) // SECOND
                                             if start_mono else 0)
        return self.second_offset + (max(0, now - start_mono) // 1_000_000_000 if start_mono else 0)

    def __call__(self, conn, rec, result, now):
        return self.call_c(conn, rec, result, now)

    cdef object call_c(self, conn, rec, result, now):
        """__call__, for the engine's C chain (no argument tuple). A subclass changes `observe`, the
        reference, not this."""
        cdef long long c_now, start_mono = 0, origin, start_ns, end_ns, lag = 0, sent_ns, due_ns, replay_sec = 0
        cdef bint has_lag
        cdef double ms
        cdef int cmd, ref_outcome, new_outcome
        cdef unsigned int captured_id = 0
        cdef bytes payload
        cdef CommandResult r
        cdef VerdictCore v
        cdef dict captured, replayed, lag_max, lag_sum, failures
        # everything read and converted first: what does not fit goes to the reference whole
        if type(rec) is not _Record or type(result) is not CommandResult:
            return self.observe(conn, rec, result, now)
        r = <CommandResult>result
        raw = (<tuple>rec)[R_PAYLOAD]
        if type(raw) is not bytes or len(<bytes>raw) == 0:
            return self.observe(conn, rec, result, now)
        payload = <bytes>raw
        cmd = <unsigned char>payload[0]
        cdef EngineCore engine = self.engine
        tl = self.timeline
        if not isinstance(tl, TimelineCore):
            return self.observe(conn, rec, result, now)
        captured = (<TimelineCore>tl).captured
        replayed = (<TimelineCore>tl).replayed
        lag_max = (<TimelineCore>tl).lag_max_ms
        lag_sum = (<TimelineCore>tl).lag_sum_ms
        failures = (<TimelineCore>tl).failures
        if captured is None or replayed is None or lag_max is None or lag_sum is None or failures is None:
            return self.observe(conn, rec, result, now)
        if not isinstance(self.verdict, VerdictCore):
            return self.observe(conn, rec, result, now)
        v = <VerdictCore>self.verdict
        if v._by_text is None or v.latency is None:
            return self.observe(conn, rec, result, now)
        at_second = self.at_second
        try:
            c_now = now
            start_ns = (<tuple>rec)[R_START]
            end_ns = (<tuple>rec)[R_END]
            ref_outcome = (<tuple>rec)[R_OUTCOME]
            origin_obj = self.capture_origin_ns  # the engine's times are int64 fields: no look-up
            origin = origin_obj if origin_obj else engine.capture_start_ns
            if at_second is None:
                start_mono = engine._start_mono
            has_lag = engine.opt.speed > 0
            if type(conn) is Conn:  # its times are int64 fields: read without a conversion
                sent_ns = (<Conn>conn).sent_ns
                if has_lag:
                    due_ns = (<Conn>conn).due_ns
                    # a difference that does not fit: OverflowError, as from Python's ints below
                    lag = sent_ns - due_ns if fits62(sent_ns) and fits62(due_ns) else <object>sent_ns - <object>due_ns
            else:
                if has_lag:
                    lag = conn.sent_ns - conn.due_ns
                sent_ns = conn.sent_ns
        except (OverflowError, TypeError):
            return self.observe(conn, rec, result, now)
        if not (fits62(c_now) and fits62(start_ns) and fits62(end_ns) and fits62(origin) and fits62(start_mono)
                and fits62(sent_ns)):
            return self.observe(conn, rec, result, now)  # a difference could overflow: Python's ints
        if at_second is None:
            try:
                replay_sec = self.second_offset + ((c_now - start_mono if c_now > start_mono else 0) // SECOND)
            except (OverflowError, TypeError):
                return self.observe(conn, rec, result, now)
            replay_key = replay_sec
        else:
            replay_key = at_second
        # Timeline.add
        _bump(captured, (start_ns - origin) // SECOND)
        _bump(replayed, replay_key)
        if has_lag:
            ms = (lag if lag > 0 else 0) / 1e6
            if ms > lag_max.get(replay_key, -1.0):
                lag_max[replay_key] = ms
            lag_sum[replay_key] = lag_sum.get(replay_key, 0.0) + ms
        # observe.is_failure
        new_outcome = r.outcome
        if new_outcome == OUTCOME_ERR and (ref_outcome == OUTCOME_OK or ref_outcome == OUTCOME_ERR) and not (
                ref_outcome == OUTCOME_ERR and (<tuple>rec)[R_ERR_CODE] in (r.err_code, 0)):
            _bump(failures, replay_key)
            return
        if ref_outcome != OUTCOME_OK or new_outcome != OUTCOME_OK or cmd == COM_STMT_PREPARE:
            return  # a prepare's "affected rows" field holds the statement id: nothing to compare
        sql = None
        if cmd == COM_QUERY:
            sql, recurs = payload[1:].decode("utf-8", "replace"), False
        elif names_statement(cmd):
            captured_id = stmt_id_of(payload)
            stmt_sql = (<Conn>conn).stmt_sql if type(conn) is Conn else conn.stmt_sql
            sql, recurs = (<dict>stmt_sql).get(captured_id) if type(stmt_sql) is dict else stmt_sql.get(captured_id), True
        if sql is None:
            sql, recurs = self._statement_text(conn, rec)
        # Verdict.info's first step for a recurring text, without its frame
        info = v._by_text.get((cmd, sql)) if recurs else None
        if info is None:
            info = v.info(cmd, self._cmd_type_name(cmd), sql, recurs)
        if not info.sampled:
            self._sample(info, conn, rec)
        if not info.reasons and same_as_captured_c(<tuple>rec, r):
            # what Verdict.add does when compare_sides finds nothing (checked in C)
            v.compared += 1
            slot = info.slot
            if slot == v.other_slot:
                v.other_commands += 1
            v.latency.record_c(slot, end_ns - start_ns if end_ns > start_ns else -1, c_now - sent_ns)
            return
        self._differs(conn, rec, r, now, info, replay_key)
