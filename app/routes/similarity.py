"""Pairwise similarity."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.deps import EngineDep
from app.errors import COMMON_ERRORS
from app.routing import JsonRoute
from app.schemas import SimilarityBatchRequest, SimilarityBatchResponse, SimilarityRequest, SimilarityResponse

router = APIRouter(tags=["similarity"], route_class=JsonRoute, responses=COMMON_ERRORS)


@router.post("/similarity", response_model=SimilarityResponse)
async def similarity(body: SimilarityRequest, engine: EngineDep) -> dict[str, Any]:
    """Cosine similarity of two questions, whether they are duplicates, and the calibrated probability."""
    sims = await engine.similarity([(body.question1, body.question2)])
    tau = engine.threshold if body.threshold is None else body.threshold
    s = float(sims[0])
    probability = float(engine.probability(sims)[0])
    return {
        "similarity": s,
        "is_duplicate": s >= tau,
        "probability": probability,
        "threshold": tau,
        "model": engine.model_name,
    }


@router.post("/similarity/batch", response_model=SimilarityBatchResponse)
async def similarity_batch(body: SimilarityBatchRequest, engine: EngineDep) -> dict[str, Any]:
    """Similarity of many pairs at once, in request order."""
    sims = await engine.similarity([(p.question1, p.question2) for p in body.pairs])
    tau = engine.threshold if body.threshold is None else body.threshold
    results = [
        {"similarity": float(s), "is_duplicate": bool(s >= tau), "probability": float(p)}
        for s, p in zip(sims, engine.probability(sims), strict=True)
    ]
    return {"results": results, "threshold": tau, "model": engine.model_name}
