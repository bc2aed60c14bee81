"""The stored corpus as a whole: export it, find the duplicate groups inside it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from app.deps import EngineDep
from app.errors import COMMON_ERRORS
from app.routes.duplicates import conditions
from app.routes.questions import question_out
from app.routing import JsonRoute
from app.schemas import ID_PATTERN, GroupsRequest, GroupsResponse

router = APIRouter(tags=["corpus"], route_class=JsonRoute, responses=COMMON_ERRORS)

EXPORT_PAGE = 1000  # questions read from the store at a time: the memory an export holds


@router.get(
    "/export",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}}, "description": "one stored question per line"}},
)
async def export(
    engine: EngineDep,
    namespace: Annotated[
        str | None, Query(min_length=1, max_length=128, pattern=ID_PATTERN, description="omit for every namespace")
    ] = None,
) -> StreamingResponse:
    """Every stored question (of one namespace, or all) as newline-delimited JSON, ``{"id",
    "text", "namespace", "metadata"}`` per line, streamed a page at a time: the memory it takes
    does not grow with the store."""

    async def lines() -> AsyncIterator[bytes]:
        after = None
        while True:
            page = await engine.page(namespace, after, EXPORT_PAGE)
            if not page:
                return
            yield b"".join(orjson.dumps(question_out(q), option=orjson.OPT_APPEND_NEWLINE) for q, _ in page)
            last, seq = page[-1]
            after = (last.namespace, seq)

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@router.post("/groups", response_model=GroupsResponse)
async def groups(body: GroupsRequest, engine: EngineDep) -> dict[str, Any]:
    """Disjoint groups of duplicates among the stored questions of a namespace, largest first:
    every member at least the threshold (tau when null) from its group's representative. Found
    from a nearest-neighbour pass over the namespace's vectors (seconds for 100,000 questions)."""
    tau = engine.threshold if body.threshold is None else body.threshold
    found = await engine.groups(body.namespace, tau, body.min_size, conditions(body.filter))
    return {
        "groups": [{"representative": g.representative, "ids": g.ids, "size": len(g.ids)} for g in found],
        "threshold": tau,
        "namespace": body.namespace,
        "model": engine.model_name,
    }
