"""The trading service's FastAPI app: API (/api/v1), login (/login, /logout), /metrics, the dashboard.

`create_app(service, keys)` wires:
- `app.state.service` (`LiveService`, started and stopped by the app's lifespan) and `app.state.auth`;
- `quantlm.service.auth.router` (POST /login, POST /logout) and `quantlm.service.api.router`;
- `/metrics` from `quantlm.service.metrics.render(service) -> (bytes, content_type)` when that module
  exists (404 otherwise): an async `render` is awaited on the event loop (it reads the engine through
  `service.call`); a plain function runs on the engine's worker thread. No auth, but only loopback
  clients unless `metrics_public=True`;
- the dashboard: `quantlm.service.dashboard.mount(app)` when the module has it, else its `router`;
- a request body cap (`max_body` bytes, 413 beyond it) and clear JSON errors: ServiceError -> its status,
  JournalError -> 503 (the order is not acknowledged), engine ValueErrors marked user-facing -> 409.
"""

from __future__ import annotations

import inspect
import ipaddress
import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from quantlm.service.auth import Auth, KeyStore, client_ip
from quantlm.service.state import LiveService, ServiceError

log = logging.getLogger("quantlm.service")
MAX_BODY = 2 * 1024 * 1024


class BodyLimit:
    """ASGI middleware: refuse request bodies over `limit` bytes with 413 (declared or streamed)."""

    def __init__(self, app, limit: int = MAX_BODY) -> None:
        self.app, self.limit = app, int(limit)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        too_big = JSONResponse({"detail": f"request body over {self.limit} bytes"}, status_code=413)
        if declared is not None:
            try:
                if int(declared) > self.limit:
                    return await too_big(scope, receive, send)
            except ValueError:
                return await JSONResponse({"detail": "bad Content-Length"}, status_code=400)(scope, receive, send)
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooBig()
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooBig:
            if not started:
                await too_big(scope, receive, send)


class _TooBig(Exception):
    pass


def _is_loopback(host: str) -> bool:
    if host == "testclient":  # Starlette's in-process test transport, not a network peer
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def create_app(service: LiveService, keys: KeyStore | str | Path, secret: bytes | None = None,
               metrics_public: bool = False, max_body: int = MAX_BODY, login_limit: int = 5,
               key_fail_limit: int = 60) -> FastAPI:
    """The app around `service` (started by the app's lifespan) with the API keys in `keys`."""
    from quantlm.live.journal import InvalidTransition, JournalError, UnknownOrder
    from quantlm.service import api, auth

    store = keys if isinstance(keys, KeyStore) else KeyStore(keys)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="quantlm trading service", version="1", lifespan=lifespan,
                  description="The live engine behind an API: orders through the risk manager, the review "
                              "queue, risk controls, models. Authenticate with `Authorization: Bearer <key>` "
                              "or `X-API-Key` (keys from `quantlm keys add`).")
    app.state.service = service
    app.state.auth = Auth(store, secret=secret, login_limit=login_limit, key_fail_limit=key_fail_limit)
    app.state.metrics_public = metrics_public
    from quantlm.service import metrics as _metrics

    _metrics.attach(service)  # the decision latency histogram is fed after every operation, not only at scrapes
    app.add_middleware(BodyLimit, limit=max_body)

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, e: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": e.message}, status_code=e.status)

    @app.exception_handler(JournalError)
    async def _journal_error(request: Request, e: JournalError) -> JSONResponse:
        log.error("journal error on %s %s: %s", request.method, request.url.path, e)
        return JSONResponse({"detail": f"journal unavailable, nothing was acknowledged: {e}"}, status_code=503)

    @app.exception_handler(UnknownOrder)
    async def _unknown(request: Request, e: UnknownOrder) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=404)

    @app.exception_handler(InvalidTransition)
    async def _transition(request: Request, e: InvalidTransition) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=409)

    app.include_router(auth.router)
    app.include_router(api.router)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        if not (request.app.state.metrics_public or _is_loopback(client_ip(request))):
            return JSONResponse({"detail": "metrics are served to localhost only"}, status_code=403)
        try:
            from quantlm.service.metrics import render
        except ModuleNotFoundError as e:
            if e.name != "quantlm.service.metrics":
                raise
            return JSONResponse({"detail": "metrics are not available"}, status_code=404)
        if inspect.iscoroutinefunction(render):
            body, content_type = await render(service)  # takes its own snapshot on the worker thread
        else:
            body, content_type = await service.call(render, service)
        return Response(body, media_type=content_type)

    _mount_dashboard(app)
    return app


def _mount_dashboard(app: FastAPI) -> None:
    try:
        from quantlm.service import dashboard
    except ModuleNotFoundError as e:
        if e.name != "quantlm.service.dashboard":
            raise
        return
    if hasattr(dashboard, "mount"):
        dashboard.mount(app)
    elif hasattr(dashboard, "router"):
        app.include_router(dashboard.router)
