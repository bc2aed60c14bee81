"""Nearest duplicates of new questions among the stored ones, within a namespace."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter

from app.deps import EngineDep
from app.engine import Conditions, Match, Scope
from app.errors import COMMON_ERRORS
from app.routing import JsonRoute
from app.schemas import (
    DuplicatesBatchRequest,
    DuplicatesBatchResponse,
    DuplicatesRequest,
    DuplicatesResponse,
    SearchOptions,
)
from app.store import term_value

router = APIRouter(prefix="/duplicates", tags=["duplicates"], route_class=JsonRoute, responses=COMMON_ERRORS)


def conditions(filter_: dict[str, tuple[object, ...]] | None) -> Conditions | None:
    """A validated filter as the store's conditions: each key with the values it accepts."""
    if filter_ is None:
        return None
    return tuple((name, tuple(term_value(v) for v in values)) for name, values in filter_.items())


def scope_of(options: SearchOptions) -> Scope:
    return Scope(options.namespace, conditions(options.filter), tuple(options.exclude_ids))


def matches_out(found: list[Match], tau: float, min_similarity: float | None) -> list[dict[str, Any]]:
    """MatchOut fields of each match at or above ``min_similarity``; the stored metadata goes into
    the answer as the JSON text it is stored as, not parsed and written again."""
    return [
        {
            "id": m.id,
            "question": m.question,
            "similarity": m.similarity,
            "is_duplicate": m.similarity >= tau,
            "namespace": m.namespace,
            "metadata": orjson.Fragment(m.metadata),
        }
        for m in found
        if min_similarity is None or m.similarity >= min_similarity
    ]


@router.post("", response_model=DuplicatesResponse)
async def duplicates(body: DuplicatesRequest, engine: EngineDep) -> dict[str, Any]:
    """The k stored questions of a namespace most similar to a question, most similar first; with
    a filter, only those whose metadata meets it (k of them when k do)."""
    (found,) = await engine.duplicates([body.question], body.k, scope_of(body))
    tau = engine.threshold if body.threshold is None else body.threshold
    return {
        "matches": matches_out(found, tau, body.min_similarity),
        "threshold": tau,
        "index_size": engine.index_size(),
        "model": engine.model_name,
        "namespace": body.namespace,
    }


@router.post("/batch", response_model=DuplicatesBatchResponse)
async def duplicates_batch(body: DuplicatesBatchRequest, engine: EngineDep) -> dict[str, Any]:
    """Nearest duplicates of many questions, in request order, with the same options for all."""
    found = await engine.duplicates(body.questions, body.k, scope_of(body))
    tau = engine.threshold if body.threshold is None else body.threshold
    return {
        "results": [{"matches": matches_out(f, tau, body.min_similarity)} for f in found],
        "threshold": tau,
        "index_size": engine.index_size(),
        "model": engine.model_name,
        "namespace": body.namespace,
    }
