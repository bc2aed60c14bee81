"""The app factory: ``create_app(settings)`` builds the FastAPI app whose lifespan builds, starts and
stops the engine. Nothing is built at import time."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from app.deps import ServiceState
from app.engine import Engine, StartupError, open_model_and_store
from app.errors import register_errors
from app.metrics import Metrics
from app.middleware import ApiKey, BodyLimit, Telemetry
from app.routes import duplicates, embed, ops, questions, similarity
from app.schemas import Limits
from app.settings import Settings
from app.store import QuestionStore
from model.encoder import QuestionEncoder

logger = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None, opened: tuple[QuestionEncoder, QuestionStore] | None = None
) -> FastAPI:
    """Build the service. The lifespan opens the model and the store (a bad model directory fails
    start-up with its reason), unless ``opened`` brings them (``dupq serve`` opens them first, to
    fail in one line); then it builds the engine in the background: /health answers at once,
    /ready once everything is loaded."""
    settings = settings or Settings()
    metrics = Metrics()
    state = ServiceState(settings, Limits(settings.max_question_chars, settings.max_batch))

    async def build(encoder: QuestionEncoder, store: QuestionStore) -> None:
        try:
            engine = await asyncio.to_thread(Engine.build, settings, encoder, store, metrics.batch_size.observe)
            await engine.start()
        except Exception as err:
            state.load_error = f"start-up failed: {err}"
            logger.exception("start-up failed")
            store.close()
            return
        # Everything loaded so far lives as long as the process: keep it out of the garbage
        # collector's full passes, which otherwise walk it all (tens of ms).
        gc.freeze()
        state.engine = engine

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            encoder, store = opened if opened is not None else await asyncio.to_thread(open_model_and_store, settings)
        except StartupError as err:
            logger.critical("cannot start: %s", err)
            raise
        building = asyncio.create_task(build(encoder, store))
        try:
            yield
        finally:
            await building
            if state.engine is not None:
                await state.engine.stop()

    app = FastAPI(
        title="dupq",
        version="1",
        summary="Tells whether two questions mean the same thing and finds the duplicates of a new question.",
        description="Contract version 1. Errors are JSON objects with a `detail` field.",
        lifespan=lifespan,
        # "/health/" is not "/health": a 404 in JSON, not a redirect to a URL the gateway may not serve.
        redirect_slashes=False,
        # The service keeps its own Prometheus metrics (/metrics). FastAPI's OpenTelemetry hooks,
        # unused, asked the environment for providers on every request (about 20 us of ~130).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.service = state
    app.state.metrics = metrics
    # The routers' routes themselves, not include_router: FastAPI answers an included route
    # through request_response(route.get_route_handler()), which would put back, for every JSON
    # request, what JsonRoute leaves out (app/routing.py). They go ahead of FastAPI's own
    # documentation routes, so that a request to the API is matched first.
    app.router.routes[:0] = [
        route for module in (similarity, embed, questions, duplicates, ops) for route in module.router.routes
    ]
    register_errors(app)
    # Added innermost first: a request meets Telemetry, then ApiKey, then BodyLimit.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    if settings.api_key is not None and settings.api_key.get_secret_value():
        app.add_middleware(ApiKey, key=settings.api_key.get_secret_value())
    app.add_middleware(Telemetry, metrics=metrics)
    app.openapi = _openapi_with_limits(app, settings)  # type: ignore[method-assign]
    return app


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
