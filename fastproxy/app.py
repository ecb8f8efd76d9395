"""`fastproxy serve`: the process composed from the top down — the proxy, its traffic jobs, the HTTP
API — so that each layer only imports the ones below it (packet layer → data plane → proxy →
capture / replay → jobs → api → here)."""
from __future__ import annotations

import logging

from fastproxy.api import start_api
from fastproxy.api_security import ApiSecurity
from fastproxy.config import Config
from fastproxy.jobs import JobManager
from fastproxy.proxy.server import ProxyServer

log = logging.getLogger("fastproxy.server")


async def serve(config: Config) -> None:
    # before anything listens: a token file others can read, bad TLS files or an unauthenticated API
    # beyond loopback stop the start with a message naming the key
    api_security = ApiSecurity.from_config(config)
    server = ProxyServer(config)
    await server.start()
    jobs = server.jobs = JobManager(server)
    server.on_shutdown.append(jobs.shutdown)
    api = await start_api(server, *config["api.addr"], api_security)
    server.on_shutdown.append(api.stop)
    log.info("fastproxy listening on %s:%d, API on %s://%s:%d%s, backends %s", *server.listen_addr,
             api_security.scheme, *api.addr, " (token required)" if api_security.token else "",
             ", ".join(b.addr for b in server.pool.backends))
    server.install_signal_handlers()
    await server.stopped.wait()


def run(config: Config) -> None:
    import uvloop

    logging.basicConfig(level=config["log.level"].upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvloop.run(serve(config))
