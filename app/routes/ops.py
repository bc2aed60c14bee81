"""Operations: liveness, readiness, model information, Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.deps import EngineDep, SettingsDep, StateDep
from app.engine import NotReady
from app.errors import COMMON_ERRORS
from app.schemas import ErrorBody, Info, ReadyStatus, Status

router = APIRouter(tags=["operations"])


@router.get("/health", response_model=Status)
async def health() -> Status:
    """Liveness: 200 while the process is alive."""
    return Status(status="ok")


# Some load balancers probe with HEAD: the same status, no body (the server drops it). Left out
# of the OpenAPI document, which describes the GET.
router.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)


@router.get(
    "/ready",
    response_model=ReadyStatus,
    responses={
        503: {
            "model": ErrorBody,
            "description": "still loading (see Retry-After; detail says how far a re-embedding, an index rebuild or "
            "the seeding is), loading failed, or (a replica on PostgreSQL) behind the store's change feed for more "
            "than max_lag_s",
        }
    },
)
async def ready(state: StateDep) -> ReadyStatus:
    """Readiness: 200 once the model and the index are loaded and the model answers; for a replica
    of a PostgreSQL store, while it is level with the store's change feed within max_lag_s."""
    engine = state.ready_engine()
    lag = engine.feed_lag()
    if lag is not None and lag > state.settings.max_lag_s:
        why = engine.follower.stalled if engine.follower and engine.follower.stalled else "still applying"
        raise NotReady(f"behind the store's change feed for {lag:.1f} s ({why})")
    return ReadyStatus(status="ready", index_size=engine.index_size())


router.add_api_route("/ready", ready, methods=["HEAD"], response_model=ReadyStatus, include_in_schema=False)


@router.get("/info", response_model=Info, responses={503: COMMON_ERRORS[503]})
async def info(engine: EngineDep, settings: SettingsDep) -> Info:
    """The loaded model, its threshold and dimensions, the limits, and the index."""
    encoder = engine.encoder
    return Info(
        name=encoder.name,
        version=encoder.version,
        model=encoder.full_name,
        dim=encoder.dim,
        threshold=engine.threshold,
        max_tokens=encoder.max_tokens,
        max_question_chars=settings.max_question_chars,
        max_batch=settings.max_batch,
        max_body_bytes=settings.max_body_bytes,
        index_kind=settings.index_kind,
        index_size=engine.index_size(),
        index_structures=engine.index.structures(),
        namespaces=len(engine.index.spaces),
        encoder_backend="onnx",
        threads=engine.threads,
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def metrics(request: Request, state: StateDep) -> Response:
    """Prometheus metrics: requests and latency per route, encoder batch sizes, queue depth, index
    size, namespaces searched exactly (flat) or approximately (hnsw), and for a replica on
    PostgreSQL its lag behind the store's change feed and its position in it."""
    m = request.app.state.metrics
    m.queue_depth.set(state.engine.queue_depth if state.engine else 0)
    m.index_size.set(state.engine.index_size() if state.engine else 0)
    structures = state.engine.index.structures() if state.engine else {"flat": 0, "hnsw": 0}
    for structure, count in structures.items():
        m.index_namespaces.labels(structure).set(count)
    follower = state.engine.follower if state.engine else None
    if follower is not None:
        m.feed_lag.set(follower.lag())
        m.feed_position.set(follower.position)
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
