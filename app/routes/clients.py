"""What existing clients speak: OpenAI's embeddings route, moderators' feedback, the playground."""

from __future__ import annotations

import base64
from importlib.resources import files
from typing import Any

from fastapi import APIRouter, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse

from app.deps import EngineDep
from app.errors import COMMON_ERRORS, WRITE_ERRORS
from app.routing import JsonRoute
from app.schemas import ErrorBody, FeedbackRequest, FeedbackResponse, OpenAIEmbeddingsRequest, OpenAIEmbeddingsResponse
from app.store import Feedback

router = APIRouter(route_class=JsonRoute, responses=COMMON_ERRORS)


@router.post("/v1/embeddings", response_model=OpenAIEmbeddingsResponse, tags=["embeddings"])
async def openai_embeddings(body: OpenAIEmbeddingsRequest, engine: EngineDep) -> dict[str, Any]:
    """OpenAI-compatible embeddings (for LangChain's ``OpenAIEmbeddings`` with
    ``check_embedding_ctx_length=False``, LlamaIndex's ``OpenAIEmbedding``, the ``openai``
    client): the same unit vectors as ``/embed``, floats or base64 of float32."""
    texts = body.input
    if body.dimensions is not None and body.dimensions != engine.encoder.dim:
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ["body", "dimensions"],
                    "msg": f"this model's embeddings have {engine.encoder.dim} dimensions, not {body.dimensions}",
                    "input": body.dimensions,
                }
            ]
        )
    vectors = await engine.encode(texts)
    if body.encoding_format == "base64":
        rows: list[Any] = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
    else:
        rows = vectors.tolist()
    tokens = sum(engine.token_counts(texts))
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)],
        "model": engine.model_name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


@router.post(
    "/feedback",
    status_code=status.HTTP_201_CREATED,
    response_model=FeedbackResponse,
    responses={**WRITE_ERRORS, 404: {"model": ErrorBody, "description": "an id names no stored question"}},
    tags=["feedback"],
)
async def feedback(body: FeedbackRequest, engine: EngineDep) -> dict[str, Any]:
    """Moderators' decisions on pairs (texts, or ids of stored questions), kept durably with the
    time and the model version; ``dupq feedback`` writes them out as a training file."""
    pairs = [Feedback(p.question1 or "", p.question2 or "", p.is_duplicate, p.id1, p.id2) for p in body.pairs]
    return {"stored": await engine.add_feedback(pairs)}


@router.get("/", response_class=HTMLResponse, tags=["playground"])
async def playground() -> HTMLResponse:
    """The playground: a page to try similarity and duplicates in a browser."""
    return HTMLResponse(PLAYGROUND)


PLAYGROUND = files("app").joinpath("static/playground.html").read_text(encoding="utf-8")
