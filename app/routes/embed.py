"""Embeddings."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.deps import EngineDep
from app.errors import COMMON_ERRORS
from app.routing import JsonRoute
from app.schemas import EmbedRequest, EmbedResponse

router = APIRouter(tags=["embeddings"], route_class=JsonRoute, responses=COMMON_ERRORS)


@router.post("/embed", response_model=EmbedResponse)
async def embed(body: EmbedRequest, engine: EngineDep) -> dict[str, Any]:
    """L2-normalized embeddings of questions, in request order."""
    vectors = await engine.encode(body.questions)
    return {"embeddings": vectors.tolist(), "dim": int(vectors.shape[1]), "model": engine.model_name}
