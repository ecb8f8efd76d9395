"""Connection-phase packets: the greeting rewrite keeps everything but the stripped capabilities."""
import socket

from fastproxy._packet import PacketFramer
from fastproxy.constants import CLIENT
from fastproxy.protocol import Greeting


def _real_greeting(db) -> bytes:
    with socket.create_connection((db.host, db.port)) as s:
        framer = PacketFramer()
        while (pkt := framer.next_packet()) is None:
            framer.feed(s.recv(4096))
        return bytes(pkt[1])


def test_rewritten_greeting_strips_only_what_it_should(mariadb):
    raw = _real_greeting(mariadb)
    g = Greeting.parse(raw)
    assert g.mariadb and g.capabilities >> 32, "MariaDB announces extended capabilities"
    # pretend the server also offered MySQL 8 features: they must disappear too
    offered = g.capabilities | CLIENT.QUERY_ATTRIBUTES | CLIENT.ZSTD_COMPRESSION_ALGORITHM | CLIENT.SSL
    advertised = offered & ~CLIENT.PROXY_STRIPPED
    again = Greeting.parse(g.with_capabilities(advertised))
    assert again.capabilities == advertised
    assert not again.capabilities & (CLIENT.QUERY_ATTRIBUTES | CLIENT.ZSTD_COMPRESSION_ALGORITHM | CLIENT.SSL
                                     | CLIENT.COMPRESS)
    assert again.capabilities >> 32 == 0
    # nothing else moved: status, charset, version, plugin, connection id
    assert (again.status, again.charset, again.server_version, again.auth_plugin, again.connection_id) == \
        (g.status, g.charset, g.server_version, g.auth_plugin, g.connection_id)
    assert again.capabilities & CLIENT.PROTOCOL_41 and again.capabilities & CLIENT.PLUGIN_AUTH
