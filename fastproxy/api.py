"""HTTP API on `api.addr`, served by aiohttp on the proxy's own event loop.

Paths and form fields follow TiProxy's (`/api/traffic/capture`, `/api/traffic/replay`,
`/api/traffic/show`, `/api/traffic/cancel`), plus `/metrics` and `/api/debug/health`.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

from aiohttp import web

from fastproxy.errors import ConfigError, JobError
from fastproxy.metrics import render

if TYPE_CHECKING:
    from fastproxy.proxy.server import ProxyServer

SERVER_KEY = web.AppKey("server", object)


def _server(request: web.Request) -> "ProxyServer":
    return request.app[SERVER_KEY]


async def health(request: web.Request) -> web.Response:
    server = _server(request)
    backends = [{"addr": b.addr, "healthy": b.healthy, "connections": b.connections, "error": b.last_error}
                for b in server.pool.backends]
    status = "shutting-down" if server.shutting_down else "ok"
    body = {"status": status, "connections": len(server.connections), "backends": backends}
    return web.json_response(body, status=503 if server.shutting_down else 200)


async def connections(request: web.Request) -> web.Response:
    """What the proxy knows about each client connection (no secrets)."""
    conns = sorted(_server(request).connections, key=lambda c: c.session.conn_id)
    return web.json_response([conn.describe() for conn in conns])


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=render(_server(request).registry), content_type="text/plain", charset="utf-8")


def _job_error(e: Exception) -> web.Response:
    status = 409 if isinstance(e, JobError) and getattr(e, "conflict", False) else 400
    return web.Response(status=status, text=str(e) + "\n")


async def capture(request: web.Request) -> web.Response:
    form = await request.post()
    try:
        job = await _server(request).jobs.start_capture(dict(form))
    except (JobError, ConfigError) as e:
        return _job_error(e)
    return web.Response(text=f"capture started: {job.output}\n")


async def replay(request: web.Request) -> web.Response:
    form = await request.post()
    try:
        job = await _server(request).jobs.start_replay(dict(form))
    except (JobError, ConfigError) as e:
        return _job_error(e)
    return web.Response(text=f"replay started: {job.input}\n")


async def show(request: web.Request) -> web.Response:
    return web.Response(text=json.dumps(_server(request).jobs.show(), indent=2) + "\n",
                        content_type="application/json")


async def cancel(request: web.Request) -> web.Response:
    form = await request.post()
    kind = form.get("type", "") or request.query.get("type", "")
    graceful = str(form.get("graceful", request.query.get("graceful", "false"))).lower() in ("1", "true", "yes")
    if kind not in ("", "capture", "replay"):
        return web.Response(status=400, text=f"type: expected capture or replay, got {kind!r}\n")
    canceled = await _server(request).jobs.cancel(kind or None, graceful=graceful)
    return web.Response(text=(f"canceled: {', '.join(canceled)}" if canceled else "no job running") + "\n")


def make_app(server: "ProxyServer") -> web.Application:
    app = web.Application()
    app[SERVER_KEY] = server
    app.router.add_get("/api/debug/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/debug/connections", connections)
    app.router.add_post("/api/traffic/capture", capture)
    app.router.add_post("/api/traffic/replay", replay)
    app.router.add_get("/api/traffic/show", show)
    app.router.add_post("/api/traffic/cancel", cancel)
    return app


async def start_api(server: "ProxyServer", host: str, port: int):
    """Serve the API for `server` (whose `jobs` are set); returns the runner and the bound address."""
    runner = web.AppRunner(make_app(server), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    sock = site._server.sockets[0]  # the bound address (port 0 picks a free one)
    return runner, sock.getsockname()[:2]
