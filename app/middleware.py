"""Plain ASGI middleware over Starlette's types, in the order a request meets them:
:class:`Telemetry` (metrics and the access log, for every answer), Starlette's CORS middleware
(when ``DUPQ_CORS_ORIGINS`` is set, :func:`app.main.create_app`), :class:`ApiKey` (401 without a
key, 403 for a write with the read-only key), :class:`BodyLimit` (413 over ``max_body_bytes``).
Their answers are JSON, as every error.
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import error_response
from app.metrics import Metrics
from app.routes.docs import ASSETS as SWAGGER_UI_FILES

access = logging.getLogger("dupq.access")

# Never behind the API key: the probes, and the pages a browser loads before it can send a key
# (the playground, and Swagger's, whose "Authorize" button then sends it), with their files.
OPEN_PATHS = frozenset(
    {"/health", "/ready", "/", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
    | {f"/docs/{name}" for name in SWAGGER_UI_FILES}
)


def is_write(method: str, path: str) -> bool:
    """Whether a request changes what is stored: what the read-only key may not do."""
    if method == "DELETE":
        return True
    return method == "POST" and path in ("/questions", "/questions/delete", "/feedback")


class Telemetry:
    """Counts each answer and its latency by route template, method and status, and logs it:
    5xx as warnings (but /ready saying "not yet", which probes ask all along), the rest at
    DEBUG."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}  # metric children by label

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless an answer starts

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            self._record(scope, status, time.perf_counter() - started)

    def _record(self, scope: Scope, status: int, elapsed: float) -> None:
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        key = (route, scope["method"], status)
        children = self._children.get(key)
        if children is None:  # prometheus_client's labels() lookup costs more than the update
            children = self._children[key] = (
                self.metrics.requests.labels(route, scope["method"], str(status)),
                self.metrics.latency.labels(route),
            )
        children[0].inc()
        children[1].observe(elapsed)
        failed = status >= 500 and route != "/ready"
        if failed or access.isEnabledFor(logging.DEBUG):
            access.log(
                logging.WARNING if failed else logging.DEBUG,
                "%s %s %d",
                scope["method"],
                scope["path"],
                status,
                extra={"fields": {"status": status, "ms": round(elapsed * 1000, 2), "route": route}},
            )


class ApiKey:
    """``Authorization: Bearer <key>`` on every path but :data:`OPEN_PATHS`: the full key may do
    everything, the read-only key (if one is set) everything but writes (403). The scheme is
    case-insensitive (RFC 9110, 11.1), the key is not; the given key is compared with both keys,
    always, in constant time."""

    def __init__(self, app: ASGIApp, key: str, read_key: str | None = None) -> None:
        self.app = app
        self.key = key.encode()
        self.read_key = read_key.encode() if read_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS and scope["method"] != "OPTIONS":
            scheme, _, given = (Headers(scope=scope).get("authorization") or "").strip().partition(" ")
            token = given.lstrip(" ").encode()
            bearer = scheme.lower() == "bearer"
            full = hmac.compare_digest(token, self.key)
            read = self.read_key is not None and hmac.compare_digest(token, self.read_key)
            if not (bearer and (full or read)):
                detail = "missing or wrong API key (Authorization: Bearer <key>)"
                await error_response(401, detail, {"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
            if not full and is_write(scope["method"], scope["path"]):
                detail = "the read-only API key cannot change what is stored; use the full key (DUPQ_API_KEY)"
                await error_response(403, detail)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """A request body over ``max_bytes`` is a 413: at once when its ``Content-Length`` says so,
    else as soon as the bytes received pass the limit, as the HTTP error
    :func:`app.errors.register_errors` answers (a route reads its body before it answers)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            detail = f"request body of {int(declared)} bytes is over max_body_bytes = {self.max_bytes} bytes"
            await error_response(413, detail)(scope, receive, send)
            return
        seen = 0

        async def receive_counting() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise HTTPException(413, f"request body over max_body_bytes = {self.max_bytes} bytes")
            return message

        await self.app(scope, receive_counting, send)
