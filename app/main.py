"""The app factory: ``create_app(settings)`` builds the FastAPI app whose lifespan starts and
stops the engine. Nothing is built at import time."""

from __future__ import annotations

import asyncio
import functools
import gc
import hmac
import logging
import math
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from app.batching import Overloaded
from app.engine import Engine, NotReady, StartupError
from app.fastpath import (
    ASGIApp,
    FastSimilarity,
    Message,
    Receive,
    Scope,
    Send,
    internal_error_response,
    not_ready_response,
    overloaded_response,
)
from app.metrics import Metrics
from app.routes import duplicates, embed, ops, questions, similarity
from app.schemas import ErrorBody
from app.settings import Settings

logger = logging.getLogger(__name__)
access = logging.getLogger("dupq.access")


OPEN_PATHS = frozenset({"/health", "/ready"})  # never behind the API key (probes)
COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or wrong API key"},
    413: {"model": ErrorBody, "description": "request body over max_body_bytes"},
    503: {"model": ErrorBody, "description": "not ready yet, or overloaded (see Retry-After)"},
}


class _BodyTooLarge(HTTPException):
    """Raised while the body streams in; FastAPI passes HTTPExceptions from the body through."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes")


async def _send_json(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = JSONResponse({"detail": detail}).body
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Gate:
    """Pure ASGI middleware, first in line: API key, body size cap, metrics and the access log;
    then the lean path for valid ``/similarity`` requests (``fast``), or the FastAPI app."""

    def __init__(
        self,
        app: ASGIApp,
        settings: Settings,
        metrics: Metrics,
        fast: FastSimilarity | None = None,
    ) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.fast = fast
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}  # metric children by label
        key = settings.api_key.get_secret_value() if settings.api_key else ""
        self.key = key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]
        sent = [False]

        async def send_tracked(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                sent[0] = True
            await send(message)

        try:
            await self._handle(scope, receive, send_tracked)
        except _BodyTooLarge as err:
            if not sent[0]:
                await _send_json(send_tracked, 413, str(err.detail))
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            elapsed = time.perf_counter() - started
            key = (label, scope["method"], status[0])
            children = self._children.get(key)
            if children is None:  # prometheus_client's labels() lookup costs more than the update
                children = self._children[key] = (
                    self.metrics.requests.labels(label, scope["method"], str(status[0])),
                    self.metrics.latency.labels(label),
                )
            children[0].inc()
            children[1].observe(elapsed)
            # 5xx are worth a warning, except /ready saying "not yet", which probes ask all along.
            failed = status[0] >= 500 and label != "/ready"
            if failed or access.isEnabledFor(logging.DEBUG):
                access.log(
                    logging.WARNING if failed else logging.DEBUG,
                    "%s %s %d",
                    scope["method"],
                    scope["path"],
                    status[0],
                    extra={"fields": {"status": status[0], "ms": round(elapsed * 1000, 2), "route": label}},
                )

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"])
        if self.key and scope["path"] not in OPEN_PATHS:
            # "Bearer <key>"; the scheme is case-insensitive (RFC 9110, 11.1), the key is not.
            scheme, _, given = headers.get(b"authorization", b"").strip().partition(b" ")
            if not (scheme.lower() == b"bearer" and hmac.compare_digest(given.lstrip(b" "), self.key)):
                await _send_json(
                    send,
                    401,
                    "missing or wrong API key (Authorization: Bearer <key>)",
                    [(b"www-authenticate", b"Bearer")],
                )
                return
        limit = self.settings.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _send_json(send, 413, f"request body of {int(declared)} bytes is over {limit} bytes")
            return
        seen = 0

        async def receive_capped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _BodyTooLarge(limit)
            return message

        if self.fast is not None and self.fast.takes(scope, headers):
            await self.fast(scope, receive_capped, send, self.app)
            return
        await self.app(scope, receive_capped, send)


class Service(FastAPI):
    """The FastAPI app with :class:`Gate` in front of everything, FastAPI's and Starlette's own
    middleware included: the lean path then skips every layer it does not need."""

    gate: Gate | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.gate is None:
            await super().__call__(scope, receive, send)
        else:
            await self.gate(scope, receive, send)


def _register_errors(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            # FastAPI's answer to a body that json.loads failed on other than by a syntax error
            # (not UTF-8, nested too deep, a number too long); the contract calls that invalid input.
            detail = [{"type": "json_invalid", "loc": ["body"], "msg": _unreadable(exc.__cause__), "input": None}]
            return JSONResponse({"detail": detail}, status_code=422)
        headers = exc.headers
        if exc.status_code == 405:
            # Starlette names the methods of the first route that matched the path; a path served
            # by several routes (GET and DELETE /questions/{id}) allows all of theirs.
            headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own answer, except that an input of NaN or Infinity (Python's json module
        # reads them) is written as a string, JSON having no such numbers, and a lone surrogate
        # (JSON's "\ud800") as its escape, UTF-8 having no such character: rendering either failed.
        errors = exc.errors()
        if any(tuple(e["loc"]) == ("body",) and isinstance(e.get("input"), bytes) for e in errors):
            # FastAPI hands the body over unread when the request does not say it is JSON: its
            # own message ("Input should be a valid dictionary") would not say why.
            content_type = request.headers.get("content-type")
            errors = [
                {
                    "type": "content_type",
                    "loc": ["header", "content-type"],
                    "msg": f"Content-Type must be application/json, not {content_type!r}"
                    if content_type
                    else "Content-Type must be application/json; the header is missing",
                    "input": content_type,
                }
            ]
        return JSONResponse({"detail": _json_safe(jsonable_encoder(errors))}, status_code=422)

    @app.exception_handler(NotReady)
    async def not_ready(request: Request, exc: NotReady) -> JSONResponse:
        return not_ready_response(exc)

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        return overloaded_response(exc)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return internal_error_response()


def _allowed_methods(request: Request) -> list[str]:
    """The methods some route fully matches for this request's path (asked of each route, with
    each method, through the routes' public ``matches``)."""
    routes = request.app.router.routes
    scope = request.scope
    return [
        method
        for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
        if any(route.matches({**scope, "method": method})[0] == Match.FULL for route in routes)
    ]


def _unreadable(cause: BaseException | None) -> str:
    """Why ``json.loads`` could not read a request body, in a client's words."""
    if isinstance(cause, UnicodeDecodeError):
        return f"request body is not valid UTF-8 (byte 0x{cause.object[cause.start]:02x} at offset {cause.start})"
    if isinstance(cause, RecursionError):
        return "request body is not valid JSON: nested too deeply"
    if isinstance(cause, ValueError) and "integer string conversion" in str(cause):
        return f"request body is not valid JSON: a number of more than {sys.get_int_max_str_digits()} digits"
    return "request body is not valid UTF-8 JSON"


def _json_safe(value: Any) -> Any:
    """``value`` with every float that JSON cannot hold (NaN, Infinity) replaced by its name and
    every string that UTF-8 cannot hold (a lone surrogate) by its backslash escape."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
        return value
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {_json_safe(k): _json_safe(v) for k, v in value.items()}
    return value


def _openapi_with_limits(app: FastAPI, settings: Settings) -> Callable[[], dict[str, Any]]:
    """FastAPI's OpenAPI document, with the limits set at run time written into it."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        for component in schema.get("components", {}).get("schemas", {}).values():
            for name, prop in component.get("properties", {}).items():
                if prop.get("description", "").startswith("a question"):
                    prop["maxLength"] = settings.max_question_chars
                if prop.get("type") == "array" and name in ("pairs", "questions"):
                    prop["maxItems"] = settings.max_batch
                    items = prop.get("items", {})
                    if items.get("description", "").startswith("a question"):
                        items["maxLength"] = settings.max_question_chars
        app.openapi_schema = schema
        return schema

    return openapi


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service. The lifespan loads the model (a bad model directory fails start-up
    with its reason), then loads the index in the background: /health answers at once, /ready
    once everything is loaded."""
    settings = settings or Settings()
    metrics = Metrics()
    engine = Engine(settings, on_batch=metrics.batch_size.observe)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await asyncio.to_thread(engine.load_model)
        except StartupError as err:
            logger.critical("cannot start: %s", err)
            raise
        await engine.start()

        def open_engine() -> None:
            try:
                engine.open()
                # Everything loaded so far lives as long as the process: keep it out of the
                # garbage collector's full passes, which otherwise walk it all (tens of ms).
                gc.freeze()
            except Exception as err:
                engine.load_error = f"start-up failed: {err}"
                logger.exception("start-up failed")

        loading = asyncio.create_task(asyncio.to_thread(open_engine))
        try:
            yield
        finally:
            await loading
            await engine.stop()

    app = Service(
        title="dupq",
        version="1",
        summary="Tells whether two questions mean the same thing and finds the duplicates of a new question.",
        description="Contract version 1. Errors are JSON objects with a `detail` field.",
        lifespan=lifespan,
        # "/health/" is not "/health": a 404 in JSON, not a redirect to a URL the gateway may not serve.
        redirect_slashes=False,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.metrics = metrics
    for module in (similarity, embed, questions, duplicates):
        app.include_router(module.router, responses=COMMON_ERRORS)
    app.include_router(ops.router)
    _register_errors(app)
    app.openapi = _openapi_with_limits(app, settings)  # type: ignore[method-assign]
    fast = FastSimilarity(engine, settings) if settings.fast_path else None
    app.gate = Gate(functools.partial(FastAPI.__call__, app), settings=settings, metrics=metrics, fast=fast)
    return app
