"""A command whose backend dies before answering is captured as BACKEND_LOST (production may not
have run it), not UNKNOWN (the client left; the server did run it). Found by bench/flapping.py:
the proxy recorded every command in flight at a backend kill as UNKNOWN, which replay sends."""
from __future__ import annotations

import socket
import struct

import pytest

from capture_util import cancel_capture, read_capture, start_capture
from fastproxy.capture.record import KIND_COMMAND, OUTCOME_BACKEND_LOST, OUTCOME_UNKNOWN
from fastproxy.scratch_db import ROOT_PASSWORD
from proxy_rawclient import RawClient, packet
from proxy_util import health, sleep_in_flight, wait_for


def _sleep_records(records):
    return [r for r in records if r.kind == KIND_COMMAND and b"SLEEP(" in r.payload]


def test_command_in_flight_when_the_backend_dies_is_backend_lost(proxy_factory, mariadb_private, tmp_path):
    p = proxy_factory([mariadb_private])
    out = tmp_path / "cap"
    start_capture(p, out, "5m")
    t, failure = sleep_in_flight(p)
    mariadb_private.kill()
    t.join(30)
    assert failure, "the client must see the lost backend"
    wait_for(lambda: health(p)["connections"] == 0, what="the proxy to close the connection")
    job = cancel_capture(p)
    assert job["error"] == "", job
    _, records, _ = read_capture(out)
    (rec,) = _sleep_records(records)
    assert rec.outcome == OUTCOME_BACKEND_LOST, rec


@pytest.mark.parametrize("how", ["close", "reset"])
def test_client_that_leaves_mid_command_is_still_unknown(proxy_factory, mariadb, tmp_path, how):
    p = proxy_factory([mariadb])
    out = tmp_path / "cap"
    start_capture(p, out, "5m")
    c = RawClient(p.port)
    c.login("root", ROOT_PASSWORD)
    c.send(packet(0, b"\x03SELECT SLEEP(2)"))
    wait_for(lambda: any(x["pending_commands"] for x in p.get("/api/debug/connections")), what="the SLEEP to run")
    if how == "reset":
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    wait_for(lambda: health(p)["connections"] == 0, what="the proxy to close the connection")
    job = cancel_capture(p)
    assert job["error"] == "", job
    _, records, _ = read_capture(out)
    (rec,) = _sleep_records(records)
    assert rec.outcome == OUTCOME_UNKNOWN, rec
