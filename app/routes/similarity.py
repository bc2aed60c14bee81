"""Pairwise similarity."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app import limits
from app.deps import EngineDep, SettingsDep
from app.engine import Engine
from app.schemas import SimilarityBatchRequest, SimilarityBatchResponse, SimilarityRequest, SimilarityResponse
from app.settings import Settings

router = APIRouter(tags=["similarity"])


def check_limits(settings: Settings, body: SimilarityRequest) -> None:
    limits.check(settings, [(("question1",), body.question1), (("question2",), body.question2)])


async def answer(body: SimilarityRequest, engine: Engine) -> dict[str, Any]:
    """The response's fields (those of SimilarityResponse). Returned as built: validating our own
    output again would cost more than computing it."""
    sims = await engine.similarity([(body.question1, body.question2)])
    tau = engine.threshold if body.threshold is None else body.threshold
    s = float(sims[0])
    return {
        "similarity": s,
        "is_duplicate": s >= tau,
        "probability": float(engine.probability(sims)[0]),
        "threshold": tau,
        "model": engine.model_name,
    }


@router.post("/similarity", response_model=SimilarityResponse)
async def similarity(body: SimilarityRequest, engine: EngineDep, settings: SettingsDep) -> JSONResponse:
    """Cosine similarity of two questions, whether they are duplicates, and the calibrated probability."""
    # Valid requests usually take the lean path in app.fastpath, which calls the same two functions.
    check_limits(settings, body)
    return JSONResponse(await answer(body, engine))


@router.post("/similarity/batch", response_model=SimilarityBatchResponse)
async def similarity_batch(body: SimilarityBatchRequest, engine: EngineDep, settings: SettingsDep) -> JSONResponse:
    """Similarity of many pairs at once, in request order."""
    limits.check(
        settings,
        [(("pairs", i, f), getattr(p, f)) for i, p in enumerate(body.pairs) for f in ("question1", "question2")],
        [("pairs", len(body.pairs))],
    )
    sims = await engine.similarity([(p.question1, p.question2) for p in body.pairs])
    probs = engine.probability(sims)
    tau = engine.threshold if body.threshold is None else body.threshold
    results = [
        {"similarity": float(s), "is_duplicate": bool(s >= tau), "probability": float(p)}
        for s, p in zip(sims, probs, strict=True)
    ]
    return JSONResponse({"results": results, "threshold": tau, "model": engine.model_name})
