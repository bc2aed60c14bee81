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
from starlette.middleware.cors import CORSMiddleware

from app.deps import ServiceState
from app.engine import Engine, StartupError, StartupStopped, Stores, damaged_store, open_model_and_store
from app.errors import register_errors
from app.metrics import Metrics
from app.middleware import OPEN_PATHS, ApiKey, BodyLimit, Telemetry
from app.pgstore import StoreUnavailable
from app.routes import clients, corpus, docs, duplicates, embed, ops, questions, similarity
from app.schemas import Limits
from app.settings import Settings
from model.encoder import QuestionEncoder
from model.model_dir import read_json

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, opened: tuple[QuestionEncoder, Stores] | None = None) -> FastAPI:
    """Build the service. The lifespan opens the model and the store (a bad model directory fails
    start-up with its reason), unless ``opened`` brings them (``dupq serve`` opens them first, to
    fail in one line); then it builds the engine in the background: /health answers at once,
    /ready once everything is loaded."""
    settings = settings or Settings()
    metrics = Metrics()
    state = ServiceState(settings, Limits(settings.max_question_chars, settings.max_batch))

    async def build(encoder: QuestionEncoder, store: Stores) -> None:
        try:
            engine = await asyncio.to_thread(
                Engine.build,
                settings,
                encoder,
                store,
                metrics.batch_size.observe,
                status=state.loading_step,
                stopping=state.stopping,
            )
            await engine.start()
        except StartupStopped as stopped:
            logger.warning("start-up stopped: %s; the next start takes it up again", stopped)
            store.close()
            return
        except Exception as err:
            err = damaged_store(err) or err  # a reason too, and what to do
            state.load_error = f"start-up failed: {err}"
            if isinstance(err, StartupError | StoreUnavailable):  # a reason, in one line
                logger.error("start-up failed: %s", err)
            else:
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
            state.stopping.set()  # a start-up still re-embedding or indexing ends at its next step
            await building
            if state.engine is not None:
                await state.engine.stop()

    app = FastAPI(
        title="dupq",
        version="1.1",
        summary="Tells whether two questions mean the same thing and finds the duplicates of a new question.",
        description="Contract version 1.1. Errors are JSON objects with a `detail` field. The playground is at `/`.",
        lifespan=lifespan,
        # "/health/" is not "/health": a 404 in JSON, not a redirect to a URL the gateway may not serve.
        redirect_slashes=False,
        # /docs and /redoc are app/routes/docs.py's: FastAPI's load Swagger UI and ReDoc from a CDN.
        docs_url=None,
        redoc_url=None,
        # The service keeps its own Prometheus metrics (/metrics). FastAPI's OpenTelemetry hooks,
        # unused, asked the environment for providers on every request (about 20 us of ~130).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.service = state
    app.state.metrics = metrics
    # The routers' routes themselves, not include_router: FastAPI answers an included route
    # through request_response(route.get_route_handler()), which would put back, for every JSON
    # request, what JsonRoute leaves out (app/routing.py). They go ahead of FastAPI's own route
    # (/openapi.json), so that a request to the API is matched first.
    app.router.routes[:0] = [
        route
        for module in (similarity, embed, questions, duplicates, corpus, clients, ops, docs)
        for route in module.router.routes
    ]
    register_errors(app)
    # Added innermost first: a request meets Telemetry, then CORS (whose answers to preflight
    # requests need no key, and which adds its headers to every answer, a 401 too), then ApiKey,
    # then BodyLimit.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    key, read_key = settings.keys()
    if key is not None:
        app.add_middleware(ApiKey, key=key, read_key=read_key)
    if settings.cors_origin_list():
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list(),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )
    app.add_middleware(Telemetry, metrics=metrics)
    app.openapi = _openapi_with_limits(app, settings)  # type: ignore[method-assign]
    return app


def _openapi_with_limits(app: FastAPI, settings: Settings) -> Callable[[], dict[str, Any]]:
    """FastAPI's OpenAPI document, with the limits set at run time written into it, the 401 on
    every route but the open ones, and the Bearer scheme declared (and required by those routes
    when a key is set), so that Swagger's "Authorize" button sends the key."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        for name, component in schema.get("components", {}).get("schemas", {}).items():
            for field, prop in component.get("properties", {}).items():
                # The batches of a request (not the lists of an answer): 1 to max_batch items.
                for variant in [prop, *prop.get("anyOf", [])]:
                    if variant.get("description", "").startswith("a question"):
                        variant["maxLength"] = settings.max_question_chars
                    if name.endswith("Request") and variant.get("type") == "array" and field != "exclude_ids":
                        variant["maxItems"] = settings.max_batch
                        items = variant.get("items", {})
                        if items.get("description", "").startswith("a question"):
                            items["maxLength"] = settings.max_question_chars
        try:  # the model's dim, the one `dimensions` of /v1/embeddings may ask for
            dim = int(read_json(settings.model_dir)["dim"])
            embeddings = schema["components"]["schemas"]["OpenAIEmbeddingsRequest"]["properties"]
            embeddings["dimensions"]["anyOf"][0]["enum"] = [dim]
        except (OSError, ValueError, KeyError):
            pass  # a model that cannot be read: start-up says why
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "DUPQ_API_KEY, or DUPQ_READ_API_KEY to read"}
        }
        # Every path but the open ones may answer 401, as the middleware does once a key is set.
        unauthorized = {
            "description": "missing or wrong API key (when DUPQ_API_KEY is set)",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
        }
        for path, operations in schema["paths"].items():
            if path not in OPEN_PATHS:
                for operation in operations.values():
                    operation["responses"] = dict(sorted({**operation["responses"], "401": unauthorized}.items()))
                    if settings.keys()[0] is not None:
                        operation["security"] = [{"bearer": []}]
        app.openapi_schema = schema
        return schema

    return openapi
