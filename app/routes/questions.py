"""The indexed questions: add (upsert), read, delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Response, status

from app.deps import EngineDep
from app.errors import COMMON_ERRORS
from app.routing import JsonRoute
from app.schemas import AddQuestionsRequest, AddQuestionsResponse, ErrorBody, StoredQuestionOut

router = APIRouter(prefix="/questions", tags=["questions"], route_class=JsonRoute, responses=COMMON_ERRORS)

IdPath = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$", description="question id")]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody, "description": "no question with this id"}}


@router.post("", status_code=status.HTTP_201_CREATED, response_model=AddQuestionsResponse)
async def add_questions(body: AddQuestionsRequest, engine: EngineDep) -> dict[str, Any]:
    """Add questions to the index, or replace those whose id exists; durable once answered."""
    ids, size = await engine.add([(q.id, q.text) for q in body.questions])
    return {"ids": ids, "index_size": size}


@router.get("/{question_id}", response_model=StoredQuestionOut, responses=NOT_FOUND)
async def get_question(question_id: IdPath, engine: EngineDep) -> StoredQuestionOut:
    """One indexed question."""
    found = await engine.get(question_id)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no question with id {question_id!r}")
    return StoredQuestionOut(id=found[0], text=found[1])


@router.delete("/{question_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response, responses=NOT_FOUND)
async def delete_question(question_id: IdPath, engine: EngineDep) -> Response:
    """Remove a question; it never appears in results again."""
    if not await engine.delete(question_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no question with id {question_id!r}")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
