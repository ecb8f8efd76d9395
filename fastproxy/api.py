"""HTTP API on `api.addr`, served by aiohttp on the proxy's own event loop.

Paths and form fields follow TiProxy's (`/api/traffic/capture`, `/api/traffic/replay`,
`/api/traffic/show`, `/api/traffic/cancel`), plus `/metrics` and `/api/debug/health`.

Locked down like a database port: connections come through a guarded accept loop
(`api_listener`: a cap and a file-descriptor reserve), headers and bodies must arrive within
their timeouts, bodies are bounded, every request but the health check needs the bearer token
when `api.token-file` is set (`api_security`), and job fields are checked before a job starts
(`job_form`).
"""
from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

from aiohttp import web

from fastproxy.api_listener import GuardedListener, bind
from fastproxy.api_security import ApiSecurity
from fastproxy.errors import ConfigError, JobError
from fastproxy.job_form import parse_form
from fastproxy.metrics import render

if TYPE_CHECKING:
    from fastproxy.proxy.server import ProxyServer

SERVER_KEY = web.AppKey("server", object)
SECURITY_KEY = web.AppKey("security", ApiSecurity)
BODY_TIMEOUT_KEY = web.AppKey("body_timeout", float)
HEALTH_PATH = "/api/debug/health"
AUTHORIZED = "fastproxy.authorized"  # request key: the request carried the token (or none is configured)


def _server(request: web.Request) -> "ProxyServer":
    return request.app[SERVER_KEY]


def _refuse(status: int, text: str, **headers: str) -> web.Response:
    resp = web.Response(status=status, text=text + "\n", headers=headers)
    if status in (400, 408, 413):
        resp.force_close()  # the rest of that body is not worth reading
    return resp


@web.middleware
async def guard(request: web.Request, handler) -> web.StreamResponse:
    """The token first (nothing of an unauthenticated request is read), then the body, bounded in
    size and in time, so that no handler ever waits on a slow or endless body."""
    authorized = request.app[SECURITY_KEY].authorized(request.headers.get("Authorization"))
    request[AUTHORIZED] = authorized
    if not authorized and request.path != HEALTH_PATH:
        error = ', error="invalid_token"' if "Authorization" in request.headers else ""
        return _refuse(401, "unauthorized: send Authorization: Bearer <the token in api.token-file>",
                       **{"WWW-Authenticate": f'Bearer realm="fastproxy"{error}'})
    if request.body_exists:
        if request.headers.get("Content-Encoding", "identity").lower() != "identity":
            return _refuse(400, "Content-Encoding: not accepted; send the body uncompressed")
        limit = request.client_max_size
        if request.content_length is not None and request.content_length > limit:
            return _refuse(413, f"request body larger than {limit} bytes (api.max-body-size)")
        try:
            async with asyncio.timeout(request.app[BODY_TIMEOUT_KEY]):
                await request.read()  # kept by aiohttp for the handler
        except TimeoutError:
            return _refuse(408, "request body not received in time (api.read-body-timeout)")
        except web.HTTPRequestEntityTooLarge:
            return _refuse(413, f"request body larger than {limit} bytes (api.max-body-size)")
        except (ConnectionError, web.RequestPayloadError) as e:  # the client went away, or bad chunked framing
            return _refuse(400, f"request body: {e}")
    return await handler(request)


async def _form(request: web.Request, kind: str) -> dict[str, str]:
    return parse_form(kind, request.rel_url.raw_query_string, await request.read(), request.content_type,
                      request.charset)


async def health(request: web.Request) -> web.Response:
    server = _server(request)
    status = "shutting-down" if server.shutting_down else "ok"
    code = 503 if server.shutting_down else 200
    if not request[AUTHORIZED]:  # probes without the token learn up or down, nothing about the backends
        return web.json_response({"status": status}, status=code)
    body = {"status": status, "connections": len(server.connections), "health_check": server.pool.status(),
            "backends": [b.status() for b in server.pool.backends]}
    return web.json_response(body, status=code)


async def connections(request: web.Request) -> web.Response:
    """What the proxy knows about each client connection (no secrets: a prepared statement that holds
    one is shown redacted, or as null when it cannot be redacted with certainty)."""
    conns = sorted(_server(request).connections, key=lambda c: c.session.conn_id)
    return web.json_response([conn.describe() for conn in conns])


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=render(_server(request).registry), content_type="text/plain", charset="utf-8")


def _job_error(e: Exception) -> web.Response:
    status = 409 if isinstance(e, JobError) and getattr(e, "conflict", False) else 400
    return web.Response(status=status, text=str(e) + "\n")


async def capture(request: web.Request) -> web.Response:
    try:
        job = await _server(request).jobs.start_capture(await _form(request, "capture"))
    except (JobError, ConfigError) as e:
        return _job_error(e)
    return web.Response(text=f"capture started: {job.output}\n")


async def replay(request: web.Request) -> web.Response:
    try:
        job = await _server(request).jobs.start_replay(await _form(request, "replay"))
    except (JobError, ConfigError) as e:
        return _job_error(e)
    return web.Response(text=f"replay started: {job.input}\n")


async def show(request: web.Request) -> web.Response:
    return web.Response(text=json.dumps(_server(request).jobs.show(), indent=2) + "\n",
                        content_type="application/json")


async def cancel(request: web.Request) -> web.Response:
    from fastproxy.jobs_base import parse_bool

    try:
        form = await _form(request, "cancel")
        graceful = parse_bool(form, "graceful", False)
    except ConfigError as e:
        return _job_error(e)
    kind = form.get("type", "").strip()
    if kind not in ("", "capture", "replay"):
        return web.Response(status=400, text=f"type: expected capture or replay, got {kind!r}\n")
    canceled = await _server(request).jobs.cancel(kind or None, graceful=graceful)
    return web.Response(text=(f"canceled: {', '.join(canceled)}" if canceled else "no job running") + "\n")


def make_app(server: "ProxyServer", security: ApiSecurity) -> web.Application:
    app = web.Application(middlewares=[guard], client_max_size=server.config["api.max-body-size"])
    app[SERVER_KEY] = server
    app[SECURITY_KEY] = security
    app[BODY_TIMEOUT_KEY] = server.config["api.read-body-timeout"]
    app.router.add_get(HEALTH_PATH, health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/debug/connections", connections)
    app.router.add_post("/api/traffic/capture", capture)
    app.router.add_post("/api/traffic/replay", replay)
    app.router.add_get("/api/traffic/show", show)
    app.router.add_post("/api/traffic/cancel", cancel)
    return app


class ApiService:
    """The running API: aiohttp's request handling behind the guarded accept loop."""

    def __init__(self, runner: web.AppRunner, listener: GuardedListener) -> None:
        self.runner = runner
        self.listener = listener
        self.addr = listener.sock.getsockname()[:2]  # the bound address (port 0 picks a free one)

    async def stop(self) -> None:
        self.listener.close()
        await self.runner.cleanup()


async def start_api(server: "ProxyServer", host: str, port: int, security: ApiSecurity) -> ApiService:
    """Serve the API for `server` (whose `jobs` are set) on host:port."""
    config = server.config
    header_timeout = config["api.read-header-timeout"]
    # aiohttp's keep-alive timer runs from the connection's start (and from the end of each response)
    # until a request's headers are complete: it is the header timeout, and the idle timeout too
    runner = web.AppRunner(make_app(server, security), access_log=None, keepalive_timeout=header_timeout,
                           lingering_time=min(2.0, config["api.read-body-timeout"]), auto_decompress=False)
    await runner.setup()
    web_server = runner.server
    sock = bind(host, port)
    listener = GuardedListener(sock, web_server, lambda: len(web_server.connections),
                               max_connections=config["api.max-connections"], fd_reserve=config["api.fd-reserve"],
                               ssl_context=security.ssl_context, handshake_timeout=header_timeout)
    listener.start()
    return ApiService(runner, listener)
