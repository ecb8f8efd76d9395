"""The hand-off of a TLS connection to the data plane (fastproxy/proxy/connection.py, _hand_off). The
backend's OK reaches the proxy inside uvloop's TLS protocol callback, and once that callback returns,
uvloop sends what the connection's write BIO holds. The data-plane worker owns the BIO from the
hand-off on, and may already have encrypted the client's first command into it: handed off inside
the callback, that command was taken by uvloop and written to a closed transport, lost (a client
waited for an answer for ever; seen once in CI with four workers, TLS on both legs). The proxy runs
in this process here so that the worker's write can be made at the worst moment: at once."""
from __future__ import annotations

import asyncio
import ssl
import threading

import pymysql
import uvloop

from fastproxy.config import Config
from fastproxy.proxy.server import ProxyServer
from fastproxy.scratch_db import ROOT_PASSWORD
from tls_certs import secure_transport_mariadb


def test_what_the_worker_encrypts_at_once_after_the_hand_off_stays_in_its_bio(tmp_path):
    db, ca = secure_transport_mariadb(str(tmp_path), "handoff", "handoff-ca")
    outgoing = {}  # id(SSLObject) -> its write BIO

    class Recorded(ssl.SSLObject):
        @classmethod
        def _create(cls, incoming, outgoing_bio, *args, **kwargs):
            obj = super()._create(incoming, outgoing_bio, *args, **kwargs)
            outgoing[id(obj)] = outgoing_bio
            return obj

    async def main():
        loop = asyncio.get_running_loop()
        server = ProxyServer(Config.load(None, {"proxy.addr": "127.0.0.1:0", "proxy.backends": [db.addr],
                                                "security.sql-tls.ca": ca.pem.cert}))
        server.tls.backend_ctx.sslobject_class = Recorded
        await server.start()
        seen = loop.create_future()

        class FastWorker:
            """The data plane, but for add(): a worker that encrypts the client's first command into the
            backend's write BIO as soon as it has the connection, then (here) stops there."""

            def __init__(self, real) -> None:
                self._real = real

            def __getattr__(self, name):
                return getattr(self._real, name)

            def add(self, owner, client_fd, backend_fd, conn_id, *, backend_tls=None, **kwargs):
                backend_tls.write(b"\x05\x00\x00\x00\x03DO 1")
                bio = outgoing[id(backend_tls)]
                before = bio.pending
                loop.call_soon(lambda: seen.done() or seen.set_result((before, bio.pending)))
                raise ValueError("not relayed: the test ends here")  # (the proxy closes the connection)

        server.dataplane = FastWorker(server.dataplane)
        host, port = server.listen_addr

        def client():
            try:
                pymysql.connect(host=host, port=port, user="root", password=ROOT_PASSWORD, ssl_disabled=True,
                                connect_timeout=10, read_timeout=10).close()
            except pymysql.err.MySQLError:
                pass  # the connection ends at the hand-off
        t = threading.Thread(target=client, daemon=True)
        t.start()
        try:
            return await asyncio.wait_for(seen, 30)
        finally:
            server.dataplane = server.dataplane._real
            await server.shutdown(timeout=1)
            await asyncio.get_running_loop().run_in_executor(None, t.join, 15)

    with db:
        before, after = uvloop.run(main())
    assert before > 0, "the worker's record was not in the BIO"
    assert after == before, f"{before} bytes of the worker's record in the BIO, {after} once uvloop's callback returned"
