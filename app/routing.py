"""How a route with a JSON body is answered: one path for every such route, written once.

FastAPI documents these routes (body model, response model, errors) like any other, but its own
per-request machinery cost more than the model: the body read as a dict and then validated, the
dependencies solved, a ``Request``, a ``Response`` and an exception wrapper made for each request
(about 240 us a request here, where the encoder spends about 0.7 ms on the two questions of a
/similarity). So the ASGI app of a :class:`JsonRoute` is its own:

1. the body must be there, say it is JSON (``Content-Type: application/json`` or ``*/*+json``)
   and be UTF-8;
2. pydantic parses and validates it in one pass (``TypeAdapter.validate_json``), with the run-time
   limits (:class:`app.schemas.Limits`) in the validation context; a failure is the same 422 as
   any other validation error, each error's ``loc`` starting with ``"body"``;
3. the endpoint is called with the body and the engine (the dependency it declares,
   :func:`app.deps.get_engine`: a 503 until the engine is built), and returns the response's
   fields as plain data;
4. the answer is serialized by orjson and sent.

Errors raised on the way go up to the app's exception middleware, which answers them with the
handlers of :mod:`app.errors`, as for any route.
"""

from __future__ import annotations

import inspect
from typing import Any

import orjson
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import TypeAdapter, ValidationError
from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from app.deps import ServiceState, get_engine

JSON_HEADER = (b"content-type", b"application/json")


def is_json(content_type: str | None) -> bool:
    """``application/json`` or a ``+json`` type, with or without parameters, as FastAPI reads them."""
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    main, _, sub = media.partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


def content_type_error(content_type: str | None) -> dict[str, Any]:
    msg = (
        f"Content-Type must be application/json, not {content_type!r}"
        if content_type
        else "Content-Type must be application/json; the header is missing"
    )
    return {"type": "content_type", "loc": ["header", "content-type"], "msg": msg, "input": content_type}


def not_utf8_error(err: UnicodeDecodeError) -> dict[str, Any]:
    byte = err.object[err.start]
    msg = f"request body is not valid UTF-8 (byte 0x{byte:02x} at offset {err.start})"
    return {"type": "json_invalid", "loc": ["body"], "msg": msg}


def body_errors(err: ValidationError) -> list[dict[str, Any]]:
    """Pydantic's errors about a request body, located in it as FastAPI locates them."""
    return [_explained({**error, "loc": ["body", *error["loc"]]}) for error in err.errors(include_url=False)]


def _explained(error: dict[str, Any]) -> dict[str, Any]:
    if error["type"] != "json_invalid":
        return error
    error.pop("input", None)  # the body itself: not echoed back
    # pydantic's JSON parser refuses a lone UTF-16 surrogate ("\ud800", which some JSON writers
    # let through from a string cut in the middle of an emoji) in words that do not always say so.
    if "hex escape" in error["msg"] or "unicode code point" in error["msg"]:
        error["msg"] += " (a \\ud800 to \\udfff escape must be half of a surrogate pair; alone it is no character)"
    return error


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None if the client went away before sending it."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


class JsonRoute(APIRoute):
    """A route with a JSON body: its endpoint takes the validated body and the engine, ``(body,
    engine)``, and returns the response's fields, answered as the module docstring says. A route of
    the same router without a body (GET, DELETE) is FastAPI's own."""

    def __init__(self, path: str, endpoint: Any, **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        if self.body_field is not None:
            self.app = self._json_app()

    def _json_app(self) -> Any:
        body_name, engine_name, body_type = self._parameters()
        adapter: TypeAdapter[Any] = TypeAdapter(body_type)
        endpoint, status = self.endpoint, self.status_code or 200

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            raw = await read_body(receive)
            if raw is None:
                return  # nobody to answer
            if not raw:
                raise RequestValidationError([{"type": "missing", "loc": ["body"], "msg": "Field required"}])
            content_type = Headers(scope=scope).get("content-type")
            if not is_json(content_type):
                raise RequestValidationError([content_type_error(content_type)])
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise RequestValidationError([not_utf8_error(err)]) from None
            state: ServiceState = scope["app"].state.service
            try:
                body = adapter.validate_json(text, context=state.limits)
            except ValidationError as err:
                raise RequestValidationError(body_errors(err)) from None
            content = await endpoint(**{body_name: body, engine_name: state.ready_engine()})
            answer = orjson.dumps(content)
            headers = [JSON_HEADER, (b"content-length", str(len(answer)).encode())]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": answer})

        return app

    def _parameters(self) -> tuple[str, str, Any]:
        """The endpoint's two parameters, a body model then the engine (``EngineDep``), and the
        body's type. A route of another shape is a mistake in this code, refused when the app is
        built."""
        names = list(inspect.signature(self.endpoint).parameters)
        bodies = [p for p in self.dependant.body_params if p.field_info.annotation is not None]
        engines = [d.name for d in self.dependant.dependencies if d.call is get_engine]
        if len(names) != 2 or [p.name for p in bodies] != names[:1] or engines != names[1:]:
            raise TypeError(f"{self.path}: a JsonRoute endpoint takes (body, engine: EngineDep), not {names}")
        return names[0], names[1], bodies[0].field_info.annotation
