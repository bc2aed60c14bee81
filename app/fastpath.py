"""A lean path for ``POST /similarity``, the call clients make most.

FastAPI spends more of the event loop on a request (routing, dependency solving, its own body
handling) than the model spends encoding it, and the event loop is what limits a small host. A
valid request to ``/similarity`` is therefore answered here, inside the first middleware: the
body is parsed and validated as FastAPI would (``json.loads``, then the same pydantic model and
the same run-time limits) and answered by the same function as the route. Anything else, any body
that fails to parse or validate included, goes on to FastAPI with the body replayed, so every
error keeps FastAPI's exact shape. The route stays registered for the OpenAPI document.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi.responses import JSONResponse

from app.batching import Overloaded
from app.engine import Engine, NotReady
from app.routes import similarity
from app.schemas import SimilarityRequest
from app.settings import Settings

# ASGI types, shared with app.main.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

logger = logging.getLogger(__name__)

PATH = "/similarity"


def not_ready_response(exc: NotReady) -> JSONResponse:
    return JSONResponse({"detail": f"not ready: {exc}"}, status_code=503, headers={"Retry-After": "5"})


def overloaded_response(exc: Overloaded) -> JSONResponse:
    return JSONResponse({"detail": f"overloaded: {exc}; retry later"}, status_code=503, headers={"Retry-After": "1"})


def internal_error_response() -> JSONResponse:
    return JSONResponse({"detail": "internal server error; the service log has the details"}, status_code=500)


def _is_json(content_type: bytes | None) -> bool:
    """``application/json``, with or without parameters: FastAPI parses such a body as JSON (it
    refuses a body without a content type). Anything else takes FastAPI's own path."""
    if content_type is None:
        return False
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json"


class FastSimilarity:
    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        # The route's own object, as FastAPI would put it in the scope (the metrics label).
        self.route = next(r for r in similarity.router.routes if getattr(r, "path", None) == PATH)

    @staticmethod
    def takes(scope: Scope, headers: dict[bytes, bytes]) -> bool:
        return scope["path"] == PATH and scope["method"] == "POST" and _is_json(headers.get(b"content-type"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send, app: ASGIApp) -> None:
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending the whole body
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            request = SimilarityRequest.model_validate(json.loads(body))
            similarity.check_limits(self.settings, request)
        except Exception:  # FastAPI answers it, with the error it always gives
            await app(scope, _replay(body, receive), send)
            return
        scope["route"] = self.route
        response: JSONResponse
        try:
            content = await similarity.answer(request, self.engine)
        except NotReady as err:
            response = not_ready_response(err)
        except Overloaded as err:
            response = overloaded_response(err)
        except Exception:  # Starlette's error middleware is not in front of this path
            logger.exception("unhandled error on POST %s", PATH)
            response = internal_error_response()
        else:
            # What JSONResponse would send, without building one.
            body = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
            headers = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await response(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the body already read, then whatever the client sends next."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
