"""Embeddings."""

from __future__ import annotations

from fastapi import APIRouter

from app import limits
from app.deps import EngineDep, SettingsDep
from app.schemas import EmbedRequest, EmbedResponse

router = APIRouter(tags=["embeddings"])


@router.post("/embed", response_model=EmbedResponse)
async def embed(body: EmbedRequest, engine: EngineDep, settings: SettingsDep) -> EmbedResponse:
    """L2-normalized embeddings of questions, in request order."""
    limits.check(
        settings, [(("questions", i), q) for i, q in enumerate(body.questions)], [("questions", len(body.questions))]
    )
    vectors = await engine.encode(body.questions)
    return EmbedResponse(embeddings=vectors.tolist(), dim=int(vectors.shape[1]), model=engine.model_name)
