"""Pairwise similarity."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app import limits
from app.deps import EngineDep, SettingsDep
from app.schemas import SimilarityBatchRequest, SimilarityBatchResponse, SimilarityRequest, SimilarityResponse

router = APIRouter(tags=["similarity"])


@router.post("/similarity", response_model=SimilarityResponse)
async def similarity(body: SimilarityRequest, engine: EngineDep, settings: SettingsDep) -> JSONResponse:
    """Cosine similarity of two questions, whether they are duplicates, and the calibrated probability."""
    limits.check(settings, [(("question1",), body.question1), (("question2",), body.question2)])
    sims = await engine.similarity([(body.question1, body.question2)])
    tau = engine.threshold if body.threshold is None else body.threshold
    s = float(sims[0])
    # Returned as built (the fields of SimilarityResponse): validating our own output again
    # would cost more than computing it.
    return JSONResponse(
        {
            "similarity": s,
            "is_duplicate": s >= tau,
            "probability": float(engine.probability(sims)[0]),
            "threshold": tau,
            "model": engine.model_name,
        }
    )


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
