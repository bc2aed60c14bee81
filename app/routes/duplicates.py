"""Nearest duplicates of new questions among the indexed ones."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app import limits
from app.deps import EngineDep, SettingsDep
from app.engine import Match
from app.schemas import DuplicatesBatchRequest, DuplicatesBatchResponse, DuplicatesRequest, DuplicatesResponse

router = APIRouter(prefix="/duplicates", tags=["duplicates"])


def _matches(found: list[Match], tau: float, min_similarity: float | None) -> list[dict[str, object]]:
    """MatchOut fields of each match at or above ``min_similarity``."""
    return [
        {"id": m.id, "question": m.question, "similarity": m.similarity, "is_duplicate": m.similarity >= tau}
        for m in found
        if min_similarity is None or m.similarity >= min_similarity
    ]


@router.post("", response_model=DuplicatesResponse)
async def duplicates(body: DuplicatesRequest, engine: EngineDep, settings: SettingsDep) -> JSONResponse:
    """The k indexed questions most similar to a question, most similar first."""
    limits.check(settings, [(("question",), body.question)])
    (found,) = await engine.duplicates([body.question], body.k)
    tau = engine.threshold if body.threshold is None else body.threshold
    return JSONResponse(
        {
            "matches": _matches(found, tau, body.min_similarity),
            "threshold": tau,
            "index_size": engine.index_size(),
            "model": engine.model_name,
        }
    )


@router.post("/batch", response_model=DuplicatesBatchResponse)
async def duplicates_batch(body: DuplicatesBatchRequest, engine: EngineDep, settings: SettingsDep) -> JSONResponse:
    """Nearest duplicates of many questions, in request order."""
    limits.check(
        settings, [(("questions", i), q) for i, q in enumerate(body.questions)], [("questions", len(body.questions))]
    )
    found = await engine.duplicates(body.questions, body.k)
    tau = engine.threshold if body.threshold is None else body.threshold
    return JSONResponse(
        {
            "results": [{"matches": _matches(f, tau, body.min_similarity)} for f in found],
            "threshold": tau,
            "index_size": engine.index_size(),
            "model": engine.model_name,
        }
    )
