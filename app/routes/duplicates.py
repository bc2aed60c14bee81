"""Nearest duplicates of new questions among the indexed ones."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.deps import EngineDep
from app.engine import Match
from app.errors import COMMON_ERRORS
from app.routing import JsonRoute
from app.schemas import DuplicatesBatchRequest, DuplicatesBatchResponse, DuplicatesRequest, DuplicatesResponse

router = APIRouter(prefix="/duplicates", tags=["duplicates"], route_class=JsonRoute, responses=COMMON_ERRORS)


def _matches(found: list[Match], tau: float, min_similarity: float | None) -> list[dict[str, Any]]:
    """MatchOut fields of each match at or above ``min_similarity``."""
    return [
        {"id": m.id, "question": m.question, "similarity": m.similarity, "is_duplicate": m.similarity >= tau}
        for m in found
        if min_similarity is None or m.similarity >= min_similarity
    ]


@router.post("", response_model=DuplicatesResponse)
async def duplicates(body: DuplicatesRequest, engine: EngineDep) -> dict[str, Any]:
    """The k indexed questions most similar to a question, most similar first."""
    (found,) = await engine.duplicates([body.question], body.k)
    tau = engine.threshold if body.threshold is None else body.threshold
    matches = _matches(found, tau, body.min_similarity)
    return {"matches": matches, "threshold": tau, "index_size": engine.index_size(), "model": engine.model_name}


@router.post("/batch", response_model=DuplicatesBatchResponse)
async def duplicates_batch(body: DuplicatesBatchRequest, engine: EngineDep) -> dict[str, Any]:
    """Nearest duplicates of many questions, in request order."""
    found = await engine.duplicates(body.questions, body.k)
    tau = engine.threshold if body.threshold is None else body.threshold
    results = [{"matches": _matches(f, tau, body.min_similarity)} for f in found]
    return {"results": results, "threshold": tau, "index_size": engine.index_size(), "model": engine.model_name}
