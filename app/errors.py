"""Every error as a JSON object with a ``detail`` field: the exception handlers, in one place.

Validation errors (422), HTTP errors (404, 405, ...), "not ready", "overloaded" and "store
unavailable" (503 with ``Retry-After``), "store full" (507) and anything unexpected (500, logged,
no stack trace in the answer) are mapped to their status here; the middleware
(:mod:`app.middleware`) answers 401 and 413 itself.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse
from starlette.routing import Match

from app.batching import Overloaded
from app.engine import NotReady, UnknownIds
from app.pgstore import ModelChanged, StoreUnavailable
from app.schemas import ErrorBody
from app.store import StoreFull

logger = logging.getLogger(__name__)

# The errors every route of the API may answer, for the OpenAPI document; the 401 is added there
# to every path that needs the key (app.main), as the middleware asks for it.
COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorBody, "description": "request body over max_body_bytes"},
    503: {"model": ErrorBody, "description": "not ready yet, or overloaded (see Retry-After)"},
}

# And those of a route that writes.
WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorBody, "description": "the read-only key cannot write"},
    507: {"model": ErrorBody, "description": "no room left on the store's disk: nothing was written"},
}

NOT_READY_RETRY_S = 5
OVERLOADED_RETRY_S = 1
STORE_RETRY_S = 2


def error_response(status: int, detail: Any, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def register_errors(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, [_renderable(error) for error in exc.errors()])

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = exc.headers
        if exc.status_code == 405:
            # Starlette names the methods of the first route that matched the path; a path served
            # by several routes (GET and DELETE /questions/{id}) allows all of theirs.
            headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
        return error_response(exc.status_code, exc.detail, headers)

    @app.exception_handler(UnknownIds)
    async def unknown_ids(request: Request, exc: UnknownIds) -> JSONResponse:
        where = "; ".join(f"{'.'.join(map(str, loc))}: no stored question with id {qid!r}" for loc, qid in exc.where)
        return error_response(404, where)

    @app.exception_handler(NotReady)
    async def not_ready(request: Request, exc: NotReady) -> JSONResponse:
        return error_response(503, f"not ready: {exc}", {"Retry-After": str(NOT_READY_RETRY_S)})

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        return error_response(503, f"overloaded: {exc}; retry later", {"Retry-After": str(OVERLOADED_RETRY_S)})

    @app.exception_handler(StoreUnavailable)
    async def store_unavailable(request: Request, exc: StoreUnavailable) -> JSONResponse:
        # A write that met it was not acknowledged, and may or may not have been committed: an
        # upsert by id, retried, is the same either way.
        return error_response(
            503, f"the question store is unavailable: {exc}; retry later", {"Retry-After": str(STORE_RETRY_S)}
        )

    @app.exception_handler(StoreFull)
    async def store_full(request: Request, exc: StoreFull) -> JSONResponse:
        # Rolled back whole, so a retry once there is room is safe; no Retry-After: room is made by
        # the operator (or by deletes), not by time.
        logger.error("a write was refused: %s", exc)
        return error_response(507, f"{exc}; nothing was written: retry once the store has room again")

    @app.exception_handler(ModelChanged)
    async def model_changed(request: Request, exc: ModelChanged) -> JSONResponse:
        return error_response(503, f"not ready: {exc}", {"Retry-After": str(NOT_READY_RETRY_S)})

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal server error; the service log has the details")


def _renderable(error: dict[str, Any]) -> dict[str, Any]:
    """One validation error as JSON can hold it: a long input text cut short, exceptions in
    ``ctx`` as their message, a float JSON has no number for (NaN, Infinity) as its name, a lone
    surrogate as its backslash escape."""
    error = dict(error)
    value = error.get("input")
    if isinstance(value, str) and len(value) > 80:
        error["input"] = value[:40] + "..."
    if "ctx" in error:
        error["ctx"] = {k: str(v) if isinstance(v, Exception) else v for k, v in error["ctx"].items()}
    error.pop("url", None)
    return _json_safe(jsonable_encoder(error))


def _json_safe(value: Any) -> Any:
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
