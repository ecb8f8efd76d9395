"""`fastproxy serve`: the process composed from the top down — the proxy, its traffic jobs, the HTTP
API — so that each layer only imports the ones below it (packet layer → data plane → proxy →
capture / replay → jobs → api → here)."""
from __future__ import annotations

import logging

from fastproxy.api import start_api
from fastproxy.config import Config
from fastproxy.jobs import JobManager
from fastproxy.proxy.server import ProxyServer

log = logging.getLogger("fastproxy.server")


async def serve(config: Config) -> None:
    server = ProxyServer(config)
    await server.start()
    jobs = server.jobs = JobManager(server)
    server.on_shutdown.append(jobs.shutdown)
    runner, api_addr = await start_api(server, *config["api.addr"])
    server.on_shutdown.append(runner.cleanup)
    log.info("fastproxy listening on %s:%d, API on %s:%d, backends %s", *server.listen_addr, *api_addr,
             ", ".join(b.addr for b in server.pool.backends))
    server.install_signal_handlers()
    await server.stopped.wait()


def run(config: Config) -> None:
    import uvloop

    logging.basicConfig(level=config["log.level"].upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvloop.run(serve(config))
